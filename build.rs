//! Build script: compiles the kernels twice from the same source.
//!
//! 1. Host (emulator): every `kernels/*.cu` and `kernels/emu/*.cpp` with the system C++
//!    compiler (through `cc`) into one static library, so Rust can run any kernel on the CPU.
//! 2. GPU: every `kernels/*.cu` with nvcc into a fatbin per file
//!    (SASS for sm_80 and sm_90 plus compute_90 PTX; `SPARSE_ATTN_CUDA_ARCHS` overrides),
//!    embedded through the generated `OUT_DIR/fatbins.rs`. ptxas's resource report goes to
//!    `OUT_DIR/ptxas-report.txt`. Fatbins are cached by a hash of their source, the headers,
//!    nvcc's version and flags in `<target>/sparse-attn-kernel-cache/` (see
//!    `kernel_cache_dir`), so the other profiles and feature sets of one target folder (check,
//!    doc, test, release) do not run nvcc again. Without nvcc the crate still builds (no fatbins; the CUDA
//!    backend returns `Error::KernelsNotBuilt`) unless `SPARSE_ATTN_REQUIRE_CUDA=1`.
//!
//! `kernels/tests/*.cu` (the emulator's self-test and canary kernels) join both stages only
//! with the `test-kernels` feature, which this crate's own tests switch on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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

/// The kernel sources of both stages: `kernels/*.cu`, plus `kernels/tests/*.cu` with the
/// `test-kernels` feature.
fn kernel_sources(kernels: &Path) -> Vec<PathBuf> {
    let mut files = sources(kernels, "cu");
    if std::env::var_os("CARGO_FEATURE_TEST_KERNELS").is_some() {
        files.extend(sources(&kernels.join("tests"), "cu"));
    }
    files
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
    let cu = kernel_sources(&kernels);
    if !cu.is_empty() {
        build.flag("-x").flag("c++");
        for f in &cu {
            build.file(f);
        }
    }
    build.compile("sparse_attn_emu");
    println!("cargo:rustc-link-lib=dylib=stdc++");
}

// ---- GPU stage -------------------------------------------------------------------------------

/// Environment variables the build reads (each one re-runs the build script when it changes).
const ENV_VARS: [&str; 6] = [
    "NVCC",
    "CUDA_HOME",
    "CUDA_PATH",
    "SPARSE_ATTN_CUDA_ARCHS",
    "SPARSE_ATTN_REQUIRE_CUDA",
    "SPARSE_ATTN_KERNEL_CACHE",
];

/// Where scripts/install-cuda.sh puts the pinned PyPI nvcc, relative to the crate root.
const LOCAL_NVCC: &str = ".toolchain/cuda/nvidia/cu13/bin/nvcc";

/// Default targets: SASS for Ampere (sm_80) and Hopper (sm_90), PTX for the newest of them.
const DEFAULT_ARCHS: &str = "80;90";

/// A located, working nvcc.
struct Nvcc {
    path: PathBuf,
    /// The `release X.Y, VX.Y.Z` line of `nvcc --version`.
    version: String,
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Finds nvcc: `$NVCC` (exclusively, when set), `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, `PATH`,
/// `/usr/local/cuda/bin`, then the project-local toolchain. Returns why not when absent.
fn find_nvcc(root: &Path) -> Result<Nvcc, String> {
    let path = if let Some(v) = std::env::var_os("NVCC").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&v);
        let found = if p.components().count() > 1 {
            Some(p).filter(|p| p.is_file())
        } else {
            search_path(&v.to_string_lossy())
        };
        found.ok_or_else(|| format!("NVCC={} is not an existing file", v.to_string_lossy()))?
    } else {
        let mut candidates: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
            .iter()
            .filter_map(|k| std::env::var_os(k).filter(|v| !v.is_empty()))
            .map(|d| PathBuf::from(d).join("bin").join("nvcc"))
            .collect();
        candidates.extend(search_path("nvcc"));
        candidates.push(PathBuf::from("/usr/local/cuda/bin/nvcc"));
        candidates.push(root.join(LOCAL_NVCC));
        candidates
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "nvcc not found (looked at $NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, PATH, \
                 /usr/local/cuda/bin and {LOCAL_NVCC}; run scripts/install-cuda.sh)"
                )
            })?
    };
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| format!("{} --version could not run: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or("unknown version")
        .trim()
        .to_string();
    Ok(Nvcc { path, version })
}

/// `-gencode` arguments from `SPARSE_ATTN_CUDA_ARCHS` ("80;90", "80,90a", ...): SASS for
/// every listed architecture plus PTX for the newest, so later GPUs can JIT it.
fn gencode_args() -> Result<(Vec<String>, String), String> {
    let spec = std::env::var("SPARSE_ATTN_CUDA_ARCHS")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ARCHS.to_string());
    let mut args = Vec::new();
    let mut targets = Vec::new();
    let mut newest = 0u32;
    for entry in spec.split([';', ',', ' ']).filter(|s| !s.is_empty()) {
        let entry = entry.trim_start_matches("sm_");
        let digits: String = entry.chars().take_while(|c| c.is_ascii_digit()).collect();
        let suffix = &entry[digits.len()..];
        let num: u32 = digits.parse().map_err(|_| {
            format!("SPARSE_ATTN_CUDA_ARCHS: `{entry}` is not an architecture like 80 or 90a")
        })?;
        if !matches!(suffix, "" | "a" | "f") {
            return Err(format!(
                "SPARSE_ATTN_CUDA_ARCHS: `{entry}` has an unknown suffix `{suffix}`"
            ));
        }
        // cp.async, ldmatrix and bf16 mma.sync need sm_80.
        if num < 80 {
            return Err(format!(
                "SPARSE_ATTN_CUDA_ARCHS: sm_{entry} is older than sm_80, which the kernels need"
            ));
        }
        args.push("-gencode".to_string());
        args.push(format!("arch=compute_{entry},code=sm_{entry}"));
        targets.push(format!("sm_{entry}"));
        newest = newest.max(num);
    }
    if newest == 0 {
        return Err(format!(
            "SPARSE_ATTN_CUDA_ARCHS=`{spec}` names no architecture"
        ));
    }
    args.push("-gencode".to_string());
    args.push(format!("arch=compute_{newest},code=compute_{newest}"));
    targets.push(format!("compute_{newest} (PTX)"));
    Ok((args, targets.join(", ")))
}

/// One `.cu` file's nvcc result.
struct Compiled {
    stem: String,
    source: PathBuf,
    fatbin: PathBuf,
    /// ptxas `-v` lines (registers, shared memory, spills per kernel and target).
    report: String,
}

/// FNV-1a, 64 bits: the content hash that names cached fatbins. Not cryptographic; a cache
/// key only has to change when its inputs do.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, data: &[u8]) {
        // The length first, so that consecutive fields cannot run into each other.
        for b in (data.len() as u64).to_le_bytes().iter().chain(data) {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Every file under `dir`, recursively, sorted (the headers a kernel file may include).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Where compiled fatbins are kept across build profiles and feature sets: each of
/// `cargo check`, `doc`, `build`, `test --release` runs this script in its own `OUT_DIR`, and
/// without a shared cache each would run nvcc on the same sources again (minutes for the
/// forward kernels). `SPARSE_ATTN_KERNEL_CACHE` names another folder, or `off` disables
/// it; by default it is `sparse-attn-kernel-cache/` in the target folder (the parent of the
/// profile folder `OUT_DIR` lies in), so `cargo clean` empties it.
fn kernel_cache_dir(out_dir: &Path) -> Option<PathBuf> {
    match std::env::var_os("SPARSE_ATTN_KERNEL_CACHE") {
        Some(v) if v == "off" || v == "0" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => {
            // OUT_DIR = <target>[/<triple>]/<profile>/build/<package>-<hash>/out
            let build = out_dir
                .ancestors()
                .find(|a| a.file_name() == Some("build".as_ref()))?;
            Some(build.parent()?.parent()?.join("sparse-attn-kernel-cache"))
        }
    }
}

/// The cache key of one kernel file: its bytes, every header under `kernels/include`, the
/// compiler's version and the arguments it gets.
fn cache_key(root: &Path, nvcc: &Nvcc, args: &[String], src: &Path) -> Result<String, String> {
    let mut h = Fnv::new();
    h.bytes(nvcc.version.as_bytes());
    for a in args {
        h.bytes(a.as_bytes());
    }
    let include = root.join("kernels").join("include");
    for f in std::iter::once(src.to_path_buf()).chain(files_under(&include)) {
        let rel = f.strip_prefix(root).unwrap_or(&f);
        h.bytes(rel.to_string_lossy().as_bytes());
        h.bytes(&std::fs::read(&f).map_err(|e| format!("read {}: {e}", f.display()))?);
    }
    Ok(format!("{:016x}", h.0))
}

/// Copies `from` to `to` through a temporary name, so that a concurrent build never reads a
/// half-written file.
fn copy_atomic(from: &Path, to: &Path) -> std::io::Result<()> {
    let tmp = to.with_extension(format!("tmp{}", std::process::id()));
    std::fs::copy(from, &tmp)?;
    std::fs::rename(&tmp, to)
}

fn compile_one(
    nvcc: &Nvcc,
    root: &Path,
    gencode: &[String],
    src: &Path,
    out_dir: &Path,
) -> Result<Compiled, String> {
    let stem = src
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: file name is not UTF-8", src.display()))?
        .to_string();
    let fatbin = out_dir.join(format!("{stem}.fatbin"));
    let report_file = out_dir.join(format!("{stem}.ptxas.txt"));
    let mut args: Vec<String> = ["-std=c++17", "-O3", "--fatbin"].map(String::from).to_vec();
    args.extend(gencode.iter().cloned());
    // The targets of one file compile in parallel (sm_80, sm_90 and the PTX are independent).
    args.extend(["--threads", "0"].map(String::from));
    // Register spills are build errors: a kernel that spills is a kernel to fix.
    args.extend(
        ["-Xptxas", "-v", "-Xptxas", "--warn-on-spills"]
            .into_iter()
            .chain(["-Xptxas", "--warning-as-error", "-Werror", "all-warnings"])
            .map(String::from),
    );
    let source = src.strip_prefix(root).unwrap_or(src).to_path_buf();
    let cached = match kernel_cache_dir(out_dir) {
        Some(dir) => {
            let key = cache_key(root, nvcc, &args, src)?;
            Some((
                dir.join(format!("{stem}-{key}.fatbin")),
                dir.join(format!("{stem}-{key}.ptxas.txt")),
            ))
        }
        None => None,
    };
    if let Some((bin, rep)) = &cached {
        if bin.is_file() && rep.is_file() {
            let copied = copy_atomic(bin, &fatbin).and_then(|_| std::fs::read_to_string(rep));
            if let Ok(report) = copied {
                return Ok(Compiled {
                    stem,
                    source,
                    fatbin,
                    report,
                });
            }
        }
    }
    let mut cmd = Command::new(&nvcc.path);
    cmd.args(&args)
        .arg("-I")
        .arg(root.join("kernels").join("include"))
        .arg("-o")
        .arg(&fatbin)
        .arg(src);
    let out = cmd
        .output()
        .map_err(|e| format!("could not run {}: {e}", nvcc.path.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "nvcc failed on {} ({}):\n{cmd:?}\n{stdout}{stderr}",
            src.display(),
            out.status
        ));
    }
    let report: String = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&report_file, &report)
        .map_err(|e| format!("write {}: {e}", report_file.display()))?;
    // A cache that cannot be written only costs the next build its time.
    if let Some((bin, rep)) = &cached {
        if let Some(dir) = bin.parent() {
            let _ = std::fs::create_dir_all(dir)
                .and_then(|_| copy_atomic(&report_file, rep))
                .and_then(|_| copy_atomic(&fatbin, bin));
        }
    }
    Ok(Compiled {
        stem,
        source,
        fatbin,
        report,
    })
}

/// The kernel files that take nvcc longest, slowest first (CPU seconds for sm_80 + sm_90 +
/// PTX, measured 2026-12-02: hd256 56, hd64 34, hd128 27, hd512 23, hd96 20; each other file a
/// few).
const SLOW_FILES: [&str; 5] = [
    "attention_fwd_hd256",
    "attention_fwd_hd64",
    "attention_fwd_hd128",
    "attention_fwd_hd512",
    "attention_fwd_hd96",
];

/// Compiles every kernel file in parallel (one nvcc process per file, at most `NUM_JOBS` at a
/// time). All failures are collected and reported together.
fn compile_all(
    nvcc: &Nvcc,
    root: &Path,
    gencode: &[String],
    files: &[PathBuf],
    out_dir: &Path,
) -> Result<Vec<Compiled>, String> {
    let jobs = std::env::var("NUM_JOBS")
        .ok()
        .and_then(|j| j.parse::<usize>().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(2)
        .clamp(1, files.len().max(1));
    // The slowest file first, so that the quick ones compile beside it rather than after: the
    // forward kernels' files by their measured nvcc time, then the rest by size.
    let mut order: Vec<usize> = (0..files.len()).collect();
    let size = |i: usize| std::fs::metadata(&files[i]).map(|m| m.len()).unwrap_or(0);
    let slow = |i: usize| {
        let stem = files[i].file_stem().and_then(|s| s.to_str()).unwrap_or("");
        SLOW_FILES
            .iter()
            .position(|&s| s == stem)
            .unwrap_or(SLOW_FILES.len())
    };
    order.sort_by_key(|&i| (slow(i), std::cmp::Reverse(size(i))));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<Compiled, String>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let src = &files[i];
                    let r = compile_one(nvcc, root, gencode, src, out_dir);
                    results.lock().unwrap().push((i, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (_, r) in results {
        match r {
            Ok(c) => ok.push(c),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(errors.join("\n\n"))
    }
}

/// Writes `OUT_DIR/fatbins.rs`, which `src/backend/mod.rs` includes.
fn write_generated(out_dir: &Path, built: Result<(&Nvcc, &str, &[Compiled]), &str>) {
    let mut s = String::from("// @generated by build.rs: the embedded GPU kernels.\n\n");
    match built {
        Ok((nvcc, targets, compiled)) => {
            let report_path = out_dir.join("ptxas-report.txt");
            let mut report = format!(
                "# ptxas resource report ({}; targets {targets})\n",
                nvcc.version
            );
            for c in compiled {
                report.push_str(&format!("\n## {}\n{}", c.source.display(), c.report));
            }
            std::fs::write(&report_path, report).expect("write ptxas-report.txt");
            s.push_str("pub const CUDA_BUILT: bool = true;\n");
            s.push_str("pub const CUDA_SKIP_REASON: &str = \"\";\n");
            s.push_str(&format!(
                "pub const NVCC_VERSION: &str = {:?};\n",
                nvcc.version
            ));
            s.push_str(&format!("pub const CUDA_TARGETS: &str = {targets:?};\n"));
            s.push_str(&format!(
                "pub const PTXAS_REPORT: &str = include_str!({:?});\n",
                report_path.display().to_string()
            ));
            s.push_str("pub static FATBINS: &[(&str, &[u8])] = &[\n");
            for c in compiled {
                s.push_str(&format!(
                    "    ({:?}, include_bytes!({:?})),\n",
                    c.stem,
                    c.fatbin.display().to_string()
                ));
            }
            s.push_str("];\n");
        }
        Err(reason) => {
            let _ = std::fs::remove_file(out_dir.join("ptxas-report.txt"));
            s.push_str("pub const CUDA_BUILT: bool = false;\n");
            s.push_str(&format!("pub const CUDA_SKIP_REASON: &str = {reason:?};\n"));
            s.push_str("pub const NVCC_VERSION: &str = \"\";\n");
            s.push_str("pub const CUDA_TARGETS: &str = \"\";\n");
            s.push_str("pub const PTXAS_REPORT: &str = \"\";\n");
            s.push_str("pub static FATBINS: &[(&str, &[u8])] = &[];\n");
        }
    }
    std::fs::write(out_dir.join("fatbins.rs"), s).expect("write fatbins.rs");
}

fn build_cuda(root: &Path, out_dir: &Path) {
    let require = std::env::var("SPARSE_ATTN_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let kernels = root.join("kernels");
    let files = kernel_sources(&kernels);
    let mut stems = std::collections::HashMap::new();
    for f in &files {
        if let Some(prev) = stems.insert(f.file_stem().map(|s| s.to_owned()), f) {
            panic!(
                "{} and {} share a file stem; fatbins are named by stem",
                prev.display(),
                f.display()
            );
        }
    }
    // A malformed architecture list is a mistake, not a missing tool: always an error.
    let (gencode, targets) = gencode_args().unwrap_or_else(|e| panic!("{e}"));
    let nvcc = match find_nvcc(root) {
        Ok(n) => n,
        Err(why) => {
            if require {
                panic!("SPARSE_ATTN_REQUIRE_CUDA=1 but {why}");
            }
            println!(
                "cargo:warning=sparse-attn: GPU kernels not built: {why}. The CPU emulator \
                 works; the CUDA backend will return Error::KernelsNotBuilt."
            );
            write_generated(out_dir, Err(&why));
            return;
        }
    };
    match compile_all(&nvcc, root, &gencode, &files, out_dir) {
        Ok(compiled) => write_generated(out_dir, Ok((&nvcc, &targets, &compiled))),
        // nvcc exists, so a failed compile is a bug in the kernels: always a build error.
        Err(e) => panic!(
            "nvcc ({}) failed to compile the kernels:\n{e}",
            nvcc.version
        ),
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=kernels");
    for var in ENV_VARS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    build_emulator(&root);
    build_cuda(&root, &out_dir);
}
