//! The rules for kernel authors (kernels/README.md) that a text scan can enforce: what only
//! the architecture layer may do. Everything else is enforced by types (shared memory is an
//! `sa::Smem` nobody can dereference) or by the emulator at run time.

use std::path::{Path, PathBuf};

/// Every kernel source: `kernels/**/*.{cu,cuh,h}` outside the emulator's own runtime.
fn kernel_sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "emu") {
                    walk(&path, out);
                }
            } else if path
                .extension()
                .is_some_and(|e| e == "cu" || e == "cuh" || e == "h")
            {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels"),
        &mut out,
    );
    out.sort();
    assert!(out.len() > 20, "found only {} kernel sources", out.len());
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Lines of code (comments stripped) of every source for which `allowed(path)` is false that
/// contain one of `needles`.
fn offenders(needles: &[&str], allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for path in kernel_sources() {
        let name = rel(&path);
        if allowed(&name) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if needles.iter().any(|needle| code.contains(needle)) {
                found.push(format!("{name}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    found
}

fn in_arch(name: &str) -> bool {
    name.starts_with("kernels/include/sparse_attn/arch/")
}

#[test]
fn inline_ptx_lives_only_in_the_arch_layer() {
    let bad = offenders(&["asm(", "asm volatile"], in_arch);
    assert!(
        bad.is_empty(),
        "inline PTX outside arch/:\n{}",
        bad.join("\n")
    );
}

#[test]
fn shared_memory_is_reached_only_through_the_arch_layer() {
    // SmemAccess turns an Smem into a pointer: the arch layer, kernel.cuh (dynamic_smem) and
    // the self-tests (which misuse memory on purpose) alone may name it.
    let bad = offenders(&["SmemAccess"], |n| {
        in_arch(n)
            || n == "kernels/include/sparse_attn/kernel.cuh"
            || n.starts_with("kernels/tests/")
    });
    assert!(
        bad.is_empty(),
        "raw shared memory outside arch/:\n{}",
        bad.join("\n")
    );
    let bad = offenders(&["__shared__"], |n| {
        n == "kernels/include/sparse_attn/kernel.cuh"
    });
    assert!(bad.is_empty(), "static shared memory:\n{}", bad.join("\n"));
}

#[test]
fn no_backend_conditionals_outside_the_platform_layers() {
    let bad = offenders(
        &[
            "SA_GPU",
            "SA_EMULATED",
            "__CUDA_ARCH__",
            "__CUDACC__",
            "SA_DEVICE_PASS",
        ],
        |n| {
            in_arch(n)
                || n == "kernels/include/sparse_attn/kernel.cuh"
                || n.starts_with("kernels/include/sparse_attn/emu/")
                || n.starts_with("kernels/tests/")
        },
    );
    assert!(
        bad.is_empty(),
        "backend conditionals in kernels:\n{}",
        bad.join("\n")
    );
}

#[test]
fn lane_ids_come_from_the_arch_layer() {
    // threadIdx.x % 32 is not the hardware lane for blocks whose x extent is not a multiple
    // of 32; sa::arch::lane_id() reads %laneid.
    let bad = offenders(
        &[
            "threadIdx.x % 32",
            "threadIdx.x & 31",
            "tid % 32",
            "tid & 31",
        ],
        in_arch,
    );
    assert!(bad.is_empty(), "hand-made lane ids:\n{}", bad.join("\n"));
}
