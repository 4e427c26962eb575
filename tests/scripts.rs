//! scripts/gpu-run.sh without a GPU: argument handling, the cuBLAS / driver / sanitizer
//! search over fake trees (the CUDA 13 wheels' `nvidia/cu13/lib` layout among them), the
//! no-GPU exit, `--dry-run`, and whole runs against fake binaries (a passing, a panicking and a
//! hanging test, a failing sanitizer tool), so the first real GPU run is not where its bugs are
//! found. Each run is hermetic: fake `python3` and `nvidia-smi`, search roots inside a temp dir.

#[allow(dead_code)]
#[path = "common/tempdir.rs"]
mod tempdir;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempdir::TempDir;

/// A fake repository root (scripts/gpu-run.sh, .gpu-carry/), tool folder and site-packages.
struct Fake {
    dir: TempDir,
}

fn write_exe(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn touch(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"").unwrap();
}

/// A fake libtest binary: lists its tests; `a_pass` passes, `b_fail` panics, `c_hang` hangs,
/// the rest pass. Each run leaves a marker file (for --dry-run checks).
const FAKE_TEST: &str = r#"
if [ "$1" = --list ]; then
  printf 'a_pass: test\nb_fail: test\nc_hang: test\nsmall_forward_split_kv_against_f64: test\nsmall_decode_cuda_against_f64: test\n'
  exit 0
fi
touch "$(dirname "$0")/../ran-$(basename "$0")-$1"
echo "running $1 blocking=${CUDA_LAUNCH_BLOCKING:-0} require=${SPARSE_ATTN_REQUIRE_GPU:-0}"
case $1 in
  b_fail)
    echo "thread 'b_fail' panicked at tests/x.rs:1:1:"
    echo "assertion failed: the panic message gpu-run must keep"
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 4 filtered out"
    exit 101 ;;
  c_hang) sleep 60 ;;
esac
echo "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 4 filtered out"
"#;

const FAKE_BENCH: &str = r#"
touch "$(dirname "$0")/../ran-$(basename "$0")"
echo "$(basename "$0") quick=${SPARSE_ATTN_BENCH_QUICK:-0} args=$*"
echo "dense  f16  hd64  seq   512: sparse-attn    0.010 ms"
if [ "$1" = --bench ]; then mkdir -p "$CARGO_TARGET_DIR/criterion/x" && echo 1 > "$CARGO_TARGET_DIR/criterion/x/data"; fi
"#;

/// racecheck reports a hazard; the other tools pass the test's own status through.
const FAKE_SANITIZER: &str = r#"
tool=$2
shift 6
echo "========= COMPUTE-SANITIZER"
"$@"
rc=$?
if [ "$tool" = racecheck ]; then
  echo "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)"
  exit 99
fi
echo "========= ERROR SUMMARY: 0 errors"
exit $rc
"#;

impl Fake {
    fn new() -> Fake {
        let dir = TempDir::new();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-run.sh");
        let dst = dir.path("repo/scripts/gpu-run.sh");
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(script, dst).unwrap();
        let fake = Fake { dir };
        // python3 that reports the fake site-packages as its only search path.
        let site = fake.p("site");
        std::fs::create_dir_all(&site).unwrap();
        write_exe(
            &fake.p("bin/python3"),
            &format!("cat >/dev/null\necho '{}'", site.display()),
        );
        std::fs::create_dir_all(fake.p("roots")).unwrap();
        std::fs::create_dir_all(fake.p("out")).unwrap();
        fake
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path(rel)
    }

    fn with_gpu(&self) -> &Self {
        write_exe(
            &self.p("bin/nvidia-smi"),
            r#"if [ "$1" = -L ]; then echo "GPU 0: NVIDIA H200 (UUID: GPU-fake)"; else echo "fake nvidia-smi $*"; fi"#,
        );
        self
    }

    fn with_carry(&self, bench_binaries: bool) -> &Self {
        let c = "repo/.gpu-carry";
        write_exe(&self.p(&format!("{c}/test-attention_gpu")), FAKE_TEST);
        write_exe(&self.p(&format!("{c}/test-emulator_gpu")), FAKE_TEST);
        write_exe(&self.p(&format!("{c}/test-adaptive_gpu")), FAKE_TEST);
        write_exe(
            &self.p(&format!("{c}/sparse-attn")),
            "echo \"kernel report $*\"",
        );
        if bench_binaries {
            write_exe(&self.p(&format!("{c}/bench-attention")), FAKE_BENCH);
            write_exe(&self.p(&format!("{c}/bench-decode")), FAKE_BENCH);
        }
        std::fs::write(self.p(&format!("{c}/COMMIT")), "0123abc\n").unwrap();
        self
    }

    fn with_sanitizer(&self) -> &Self {
        write_exe(&self.p("roots/cuda/bin/compute-sanitizer"), FAKE_SANITIZER);
        self
    }

    fn run(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let path = format!("{}:/usr/bin:/bin", self.p("bin").display());
        let mut cmd = Command::new("bash");
        cmd.arg(self.p("repo/scripts/gpu-run.sh"))
            .args(args)
            .env("PATH", path)
            .env("PYTHON", self.p("bin/python3"))
            .env("SPARSE_ATTN_GPU_NVIDIA_SMI", self.p("bin/nvidia-smi"))
            .env("SPARSE_ATTN_GPU_SEARCH_ROOTS", self.p("roots"))
            .env("OUT", self.p("out"))
            .env("TMPDIR", self.dir.0.clone())
            .env_remove("SPARSE_ATTN_GPU_SANITIZER")
            .env_remove("SPARSE_ATTN_GPU_BUDGET_S")
            .env_remove("LD_LIBRARY_PATH");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.output().expect("run bash scripts/gpu-run.sh")
    }

    fn results(&self) -> String {
        std::fs::read_to_string(self.p("out/gpu-results.md")).unwrap_or_default()
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn help_and_bad_arguments() {
    let f = Fake::new();
    let o = f.run(&["help"], &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).0.contains("usage: bash scripts/gpu-run.sh"));
    let bad: [&[&str]; 7] = [
        &["bogus"],
        &["bench"],
        &["bench", "nosuch"],
        &["bench", "attention", "decode"],
        &["first", "extra"],
        &["--frobnicate"],
        &["find-libs", "x"],
    ];
    for args in bad {
        let o = f.run(args, &[]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}{err}");
        assert!(
            err.contains("usage: bash scripts/gpu-run.sh"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn cublas_is_found_in_the_cuda13_wheel_layout() {
    let f = Fake::new();
    touch(&f.p("site/nvidia/cu13/lib/libcublas.so.13"));
    touch(&f.p("site/nvidia/cu13/lib/libcublasLt.so.13"));
    let o = f.run(&["find-libs"], &[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    let lib = f.p("site/nvidia/cu13/lib");
    assert!(
        out.contains(&format!(
            "cuBLAS: found {}/libcublas.so.13 (libcublasLt.so.13 beside it)",
            lib.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("LD_LIBRARY_PATH={}", lib.display())),
        "{out}"
    );
}

#[test]
fn cublas_is_found_in_a_toolkit_folder_and_missing_lt_is_flagged() {
    let f = Fake::new();
    touch(&f.p("roots/cuda/lib64/libcublas.so.13"));
    touch(&f.p("roots/drv/lib64/libcuda.so.1"));
    let (out, _) = text(&f.run(&["find-libs"], &[]));
    assert!(
        out.contains(&format!(
            "cuBLAS: found {}",
            f.p("roots/cuda/lib64/libcublas.so.13").display()
        )),
        "{out}"
    );
    assert!(out.contains("WARNING: no libcublasLt.so.13"), "{out}");
    assert!(
        out.contains(&format!(
            "CUDA driver: found {}",
            f.p("roots/drv/lib64/libcuda.so.1").display()
        )),
        "{out}"
    );
}

#[test]
fn missing_cublas_is_reported_with_where_it_was_searched() {
    let f = Fake::new();
    // The CUDA 12 wheel layout holds the wrong major version: not taken for CUDA 13.
    touch(&f.p("site/nvidia/cublas/lib/libcublas.so.12"));
    let (out, _) = text(&f.run(&["find-libs"], &[]));
    assert!(out.contains("cuBLAS: NOT FOUND"), "{out}");
    assert!(
        out.contains(&f.p("site/nvidia").display().to_string()),
        "{out}"
    );
    assert!(out.contains("compute-sanitizer: NOT FOUND"), "{out}");
}

#[test]
fn without_a_gpu_it_says_so_and_exits_0() {
    let f = Fake::new();
    f.with_carry(true);
    let o = f.run(&[], &[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("no GPU"), "{out}");
    assert!(f.results().contains("no GPU"), "{}", f.results());
    assert!(!f.p("repo/ran-test-attention_gpu-a_pass").exists());
}

#[test]
fn dry_run_prints_every_step_and_runs_none() {
    let f = Fake::new();
    f.with_gpu().with_carry(true).with_sanitizer();
    touch(&f.p("site/nvidia/cu13/lib/libcublas.so.13"));
    let o = f.run(&["--dry-run"], &[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    for needle in [
        "mode: first",
        "cuBLAS: found",
        "CUDA_LAUNCH_BLOCKING=1",
        "test-emulator_gpu: 5 tests, each in its own process",
        "test-attention_gpu c_hang --exact --nocapture --test-threads=1",
        "--tool memcheck",
        "--tool racecheck",
        "--tool synccheck",
        "--tool initcheck",
        "small_decode_cuda_against_f64",
        "SPARSE_ATTN_BENCH_QUICK=1",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    let ran: Vec<_> = std::fs::read_dir(f.p("repo"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ran-"))
        .collect();
    assert!(ran.is_empty(), "--dry-run ran {ran:?}");
    let (out, _) = text(&f.run(&["--dry-run", "bench", "attention"], &[]));
    assert!(out.contains("bench-attention --bench"), "{out}");
}

#[test]
fn a_first_run_keeps_every_failure_and_ends_within_its_budget() {
    let f = Fake::new();
    f.with_gpu().with_carry(true).with_sanitizer();
    touch(&f.p("site/nvidia/cu13/lib/libcublas.so.13"));
    let t0 = std::time::Instant::now();
    let o = f.run(
        &["first"],
        &[
            ("SPARSE_ATTN_GPU_BUDGET_S", "60"),
            ("SPARSE_ATTN_GPU_TEST_TIMEOUT_S", "2"),
            ("SPARSE_ATTN_GPU_SAN_TIMEOUT_S", "5"),
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(t0.elapsed().as_secs() < 60, "ran past its budget");
    let r = f.results();
    for needle in [
        "commit 0123abc",
        "## Summary",
        "| 1 | `a_pass` | PASS |",
        "| 2 | `b_fail` | FAIL(101) |",
        "| 3 | `c_hang` | TIMEOUT |",
        // The panic message of the failing test, in full.
        "assertion failed: the panic message gpu-run must keep",
        "| memcheck | `small_forward_split_kv_against_f64` | PASS |",
        "| racecheck | `small_forward_split_kv_against_f64` | FAIL(99) |",
        "RACECHECK SUMMARY: 1 hazard",
        "bench-attention quick=1",
        "bench-decode quick=1",
        "kernel report kernels",
    ] {
        assert!(
            r.contains(needle),
            "{needle:?} missing from gpu-results.md:\n{r}"
        );
    }
    // The first test ran alone with synchronous launches.
    assert!(
        r.contains("running small_forward_split_kv_against_f64 blocking=1 require=1"),
        "{r}"
    );
    let files: Vec<_> = std::fs::read_dir(f.p("out")).unwrap().collect();
    assert!(files.len() <= 8, "{} files in $OUT", files.len());
    let tar = Command::new("tar")
        .arg("tzf")
        .arg(f.p("out/gpu-logs.tar.gz"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&tar.stdout);
    for log in [
        "logs/test-attention_gpu/b_fail.log",
        "logs/test-emulator_gpu/c_hang.log",
        "logs/sanitizer/racecheck-small_decode_cuda_against_f64.log",
        "logs/first-test-blocking.log",
        "logs/gpu-results.md",
    ] {
        assert!(
            listing.contains(log),
            "{log} missing from the tarball:\n{listing}"
        );
    }
}

#[test]
fn a_bench_run_brings_criterion_data_back_and_missing_binaries_are_named() {
    let f = Fake::new();
    f.with_gpu().with_carry(true);
    let o = f.run(&["bench", "decode"], &[("SPARSE_ATTN_GPU_BUDGET_S", "30")]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    let r = f.results();
    assert!(r.contains("bench-decode quick=0 args=--bench"), "{r}");
    assert!(f.p("out/criterion-decode.tar.gz").exists());

    let g = Fake::new();
    g.with_gpu().with_carry(false);
    let o = g.run(
        &["bench", "attention"],
        &[("SPARSE_ATTN_GPU_BUDGET_S", "30")],
    );
    assert_eq!(o.status.code(), Some(0));
    assert!(g.results().contains("MISSING: .gpu-carry/bench-attention"));
}

/// gpu-pack.sh packs exactly what gpu-run.sh runs.
#[test]
fn gpu_pack_packs_every_binary_gpu_run_needs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = std::fs::read_to_string(root.join("scripts/gpu-run.sh")).unwrap();
    let pack = std::fs::read_to_string(root.join("scripts/gpu-pack.sh")).unwrap();
    let list = run
        .lines()
        .find_map(|l| l.strip_prefix("GPU_BINARIES=("))
        .and_then(|l| l.strip_suffix(')'))
        .expect("GPU_BINARIES=(...) in gpu-run.sh");
    let wanted = pack
        .lines()
        .find_map(|l| l.strip_prefix("wanted=\""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("wanted=\"...\" in gpu-pack.sh");
    let mut packed: Vec<String> = wanted
        .split_whitespace()
        .map(|w| match w.split_once(':') {
            Some(("bin", name)) => name.to_string(),
            Some((kind, name)) => format!("{kind}-{name}"),
            None => panic!("bad entry {w}"),
        })
        .collect();
    let mut needed: Vec<String> = list.split_whitespace().map(String::from).collect();
    packed.sort();
    needed.sort();
    assert_eq!(packed, needed);
    // Every packed test or bench target exists in this crate.
    for w in wanted.split_whitespace() {
        let (kind, name) = w.split_once(':').unwrap();
        let file = match kind {
            "test" => root.join(format!("tests/{name}.rs")),
            "bench" => root.join(format!("benches/{name}.rs")),
            _ => root.join("src/bin").join(name),
        };
        assert!(
            file.exists(),
            "{} (packed by gpu-pack.sh) is missing",
            file.display()
        );
    }
}

/// The tests gpu-run.sh names (the first test, the sanitizer cases) exist where it looks.
#[test]
fn gpu_run_names_existing_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = std::fs::read_to_string(root.join("scripts/gpu-run.sh")).unwrap();
    let value = |key: &str| {
        run.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in gpu-run.sh"))
            .to_string()
    };
    let mut cases = vec![(value("FIRST_BIN="), value("FIRST_TEST="))];
    for l in run.lines().filter(|l| l.contains("\"test-attention_gpu ")) {
        let case = l.split('"').nth(1).unwrap();
        let (bin, test) = case.split_once(' ').unwrap();
        cases.push((bin.to_string(), test.to_string()));
    }
    assert!(cases.len() >= 3, "{cases:?}");
    for (bin, test) in cases {
        let name = bin.strip_prefix("test-").expect("a test binary");
        let src = std::fs::read_to_string(root.join(format!("tests/{name}.rs"))).unwrap();
        assert!(
            src.contains(&format!("fn {test}()")),
            "gpu-run.sh runs {test} of tests/{name}.rs, which has no such test"
        );
    }
}

// ---- gpu-run.sh torch and scripts/bench-torch.py ---------------------------------------------

/// A fake interpreter for bench-torch.py: records its arguments, writes the two reports into
/// --out-dir and prints a progress line, as the real script does.
const FAKE_TORCH_PYTHON: &str = r#"
out=
for a in "$@"; do
  [ "$prev" = --out-dir ] && out=$a
  prev=$a
done
echo "$*" > "$(dirname "$0")/../torch-args"
echo "[   1s] causal-8k-d128  sparse-attn 1.000 ms  FA2 2.000 ms  Flex 3.000 ms  err 1.0e-03"
printf '# fake bench-torch table\n\n| case | x FA2 |\n| --- | --- |\n| causal-8k-d128 | 2.00 |\n' > "$out/bench-torch.md"
echo '{"results": []}' > "$out/bench-torch.json"
"#;

#[test]
fn torch_mode_arguments() {
    let f = Fake::new();
    let bad: [&[&str]; 5] = [
        &["torch", "extra"],
        &["--quick"],
        &["first", "--quick"],
        &["bench", "attention", "--quick"],
        &["torch", "--quick", "x"],
    ];
    for args in bad {
        let o = f.run(args, &[]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}{err}");
        assert!(
            err.contains("usage: bash scripts/gpu-run.sh"),
            "{args:?}: {err}"
        );
    }
    let (out, _) = text(&f.run(&["help"], &[]));
    assert!(out.contains("torch [--quick]"), "{out}");
    // Without a GPU the torch mode stops like the others.
    f.with_carry(false);
    let o = f.run(&["torch"], &[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("no GPU"), "{out}");
    assert!(!f.p("torch-args").exists());
}

/// Carries only the CLI binary, as `gpu-pack.sh torch` packs it.
fn carry_cli_only(f: &Fake) {
    write_exe(
        &f.p("repo/.gpu-carry/sparse-attn"),
        "echo \"kernel report $*\"",
    );
    std::fs::write(f.p("repo/.gpu-carry/COMMIT"), "0123abc\n").unwrap();
}

#[test]
fn torch_dry_run_lists_the_bench_and_runs_nothing() {
    let f = Fake::new();
    f.with_gpu();
    carry_cli_only(&f);
    write_exe(&f.p("bin/torch-python"), FAKE_TORCH_PYTHON);
    let py = f.p("bin/torch-python");
    let o = f.run(
        &["--dry-run", "torch", "--quick"],
        &[("SPARSE_ATTN_TORCH_PYTHON", py.to_str().unwrap())],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    for needle in [
        "mode: torch --quick; budget 420s",
        "scripts/bench-torch.py --binary",
        ".gpu-carry/sparse-attn --out-dir",
        "--budget",
        "--quick",
        "PYTHONUNBUFFERED=1",
        "sparse-attn kernels",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    // Only the CLI binary is needed in this mode.
    assert!(!out.contains("missing from .gpu-carry"), "{out}");
    assert!(!f.p("torch-args").exists(), "--dry-run ran the bench");
}

#[test]
fn a_torch_run_brings_back_its_tables_within_its_budget() {
    let f = Fake::new();
    f.with_gpu();
    carry_cli_only(&f);
    write_exe(&f.p("bin/torch-python"), FAKE_TORCH_PYTHON);
    let py = f.p("bin/torch-python");
    let o = f.run(
        &["torch", "--quick"],
        &[
            ("SPARSE_ATTN_TORCH_PYTHON", py.to_str().unwrap()),
            ("SPARSE_ATTN_GPU_BUDGET_S", "60"),
            ("SPARSE_ATTN_TORCH_ARGS", "--patterns causal --iters 7"),
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    let args = std::fs::read_to_string(f.p("torch-args")).unwrap();
    for needle in [
        "scripts/bench-torch.py",
        "--binary",
        ".gpu-carry/sparse-attn",
        "--quick",
        "--patterns causal --iters 7",
    ] {
        assert!(args.contains(needle), "{needle:?} missing from {args}");
    }
    let budget: u64 = args
        .split_whitespace()
        .skip_while(|a| *a != "--budget")
        .nth(1)
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no --budget in {args}"));
    assert!(budget > 0 && budget < 60, "--budget {budget} of a 60 s run");
    let r = f.results();
    for needle in [
        "# GPU run (torch --quick)",
        "commit 0123abc",
        "## Summary",
        "| bench-torch.py --quick --patterns causal --iters 7 | PASS |",
        "# fake bench-torch table",
        "| causal-8k-d128 | 2.00 |",
        "causal-8k-d128  sparse-attn 1.000 ms",
        "kernel report kernels",
    ] {
        assert!(
            r.contains(needle),
            "{needle:?} missing from gpu-results.md:\n{r}"
        );
    }
    let mut files: Vec<String> = std::fs::read_dir(f.p("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "bench-torch.json",
            "bench-torch.md",
            "gpu-logs.tar.gz",
            "gpu-results.md"
        ]
    );
    let tar = Command::new("tar")
        .arg("tzf")
        .arg(f.p("out/gpu-logs.tar.gz"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&tar.stdout);
    for log in [
        "logs/bench-torch.log",
        "logs/bench-torch.md",
        "logs/gpu-results.md",
    ] {
        assert!(listing.contains(log), "{log} missing from:\n{listing}");
    }
}

/// The Python that runs the real bench-torch.py here, or None (the test says so and passes).
fn real_python() -> Option<PathBuf> {
    let o = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    p.is_file().then_some(p)
}

/// A folder holding a fake `torch` package: `missing` raises ImportError on import, otherwise
/// a torch whose CUDA is not available.
fn fake_torch(dir: &Path, missing: bool) -> PathBuf {
    let body = if missing {
        "raise ImportError('fake: no torch here')\n"
    } else {
        "__version__ = '0.0-fake'\nclass cuda:\n    @staticmethod\n    def is_available():\n        return False\n"
    };
    let p = dir.join(if missing { "no-torch" } else { "cpu-torch" });
    std::fs::create_dir_all(p.join("torch")).unwrap();
    std::fs::write(p.join("torch/__init__.py"), body).unwrap();
    p
}

fn bench_torch(py: &Path, args: &[&str], pythonpath: Option<&Path>) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-torch.py");
    let mut cmd = Command::new(py);
    cmd.arg(script).args(args).env_remove("OUT");
    match pythonpath {
        Some(p) => cmd.env("PYTHONPATH", p),
        None => cmd.env_remove("PYTHONPATH"),
    };
    cmd.output().expect("run python3 scripts/bench-torch.py")
}

macro_rules! python_or_skip {
    () => {
        match real_python() {
            Some(p) => p,
            None => {
                eprintln!("skipped: no python3 here to run scripts/bench-torch.py");
                return;
            }
        }
    };
}

#[test]
fn bench_torch_self_test_and_arguments() {
    let py = python_or_skip!();
    let o = bench_torch(&py, &["--self-test"], None);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("self-test: ok (40 cases"), "{out}");
    let o = bench_torch(&py, &["--help"], None);
    assert_eq!(o.status.code(), Some(0));
    let bad: [&[&str]; 10] = [
        &["--seq", "0"],
        &["--seq", "4k"],
        &["--patterns", "nosuch"],
        &["--head-dims", "96"],
        &["--budget", "0"],
        &["--iters", "0"],
        &["--warmup", "-1"],
        &["--frobnicate"],
        &["--list", "--self-test"],
        &["--json"],
    ];
    for args in bad {
        let o = bench_torch(&py, args, None);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}{err}");
        assert!(err.contains("usage: bench-torch.py"), "{args:?}: {err}");
    }
    let (out, _) = text(&bench_torch(&py, &["--list", "--quick"], None));
    assert!(out.starts_with("10 cases"), "{out}");
    for name in [
        "dense-8k-d128",
        "mix-32k-d128",
        "sinks4-window4096-32k-d128",
    ] {
        assert!(out.contains(name), "{name} missing from:\n{out}");
    }
    let (out, _) = text(&bench_torch(&py, &["--list"], None));
    assert!(out.starts_with("40 cases"), "{out}");
}

/// The pairs bench-torch.py counts for TFLOP/s are the pairs sparse-attn counts, and its
/// pattern files are ones `sparse-attn bench` takes, for every case of the full matrix.
#[test]
fn bench_torch_cases_count_what_sparse_attn_counts() {
    let py = python_or_skip!();
    let o = bench_torch(&py, &["--list", "--json"], None);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(cases.len(), 40);
    let dir = TempDir::new();
    for c in &cases {
        let name = c["case"].as_str().unwrap();
        let pattern = dir.path(&format!("{name}.json"));
        std::fs::write(&pattern, c["pattern"].to_string()).unwrap();
        let n = |k: &str| c[k].as_u64().unwrap().to_string();
        let o = Command::new(env!("CARGO_BIN_EXE_sparse-attn"))
            .args(["bench", "--pattern", pattern.to_str().unwrap(), "--dry-run"])
            .args(["--batch", &n("batch"), "--seq-len", &n("q_len")])
            .args(["--kv-len", &n("kv_len"), "--heads", &n("heads")])
            .args(["--kv-heads", &n("kv_heads"), "--head-dim", &n("head_dim")])
            .args(["--dtype", c["dtype"].as_str().unwrap()])
            .output()
            .unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "{name}: {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["allowed_pairs"], c["allowed_pairs"], "{name}");
    }
}

#[test]
fn bench_torch_without_torch_or_without_a_gpu_says_so_and_exits_0() {
    let py = python_or_skip!();
    let dir = TempDir::new();
    for (missing, needle) in [(true, "no torch"), (false, "no GPU")] {
        let fake = fake_torch(&dir.0, missing);
        let out_dir = dir.path(if missing { "out-a" } else { "out-b" });
        let o = bench_torch(
            &py,
            &["--quick", "--out-dir", out_dir.to_str().unwrap()],
            Some(&fake),
        );
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{out}{err}");
        assert!(out.contains(needle), "{needle}: {out}");
        let md = std::fs::read_to_string(out_dir.join("bench-torch.md")).unwrap();
        assert!(md.contains(needle), "{md}");
        let mut files: Vec<String> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["bench-torch.json", "bench-torch.md"]);
    }
}

/// gpu-run.sh torch with the real script and a Python without torch: it says so, exits 0 and
/// brings the report back.
#[test]
fn a_torch_run_without_torch_reports_it() {
    let py = python_or_skip!();
    let f = Fake::new();
    f.with_gpu();
    carry_cli_only(&f);
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-torch.py"),
        f.p("repo/scripts/bench-torch.py"),
    )
    .unwrap();
    let fake = fake_torch(&f.p("py"), true);
    let o = f.run(
        &["torch"],
        &[
            ("SPARSE_ATTN_TORCH_PYTHON", py.to_str().unwrap()),
            ("PYTHONPATH", fake.to_str().unwrap()),
            ("SPARSE_ATTN_GPU_BUDGET_S", "60"),
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    let r = f.results();
    assert!(r.contains("| bench-torch.py | PASS |"), "{r}");
    assert!(
        r.contains("no torch (ImportError: fake: no torch here)"),
        "{r}"
    );
    assert!(f.p("out/bench-torch.md").exists());
}

/// The report writer on a results file: every column, TFLOP/s on allowed pairs, the ratios,
/// n/a for what is missing, FAIL for what failed, `*` for FA2 standing in with causal.
#[test]
fn bench_torch_formats_results() {
    let py = python_or_skip!();
    let dir = TempDir::new();
    let allowed: u64 = 16 * 8192 * 8193 / 2;
    let doc = serde_json::json!({
        "meta": {"date": "2030-01-02T03:04Z", "gpu": "NVIDIA H200", "torch": "2.11.0",
                 "commit": "abc123", "warmup": 5, "iters": 20, "seed": 0},
        "results": [
            {"case": "causal-8k-d128", "description": "causal", "q_len": 8192, "kv_len": 8192,
             "head_dim": 128, "heads": 16, "batch": 1, "allowed_pairs": allowed,
             "density": 0.5, "flops": 4 * allowed * 128,
             "sparse_attn": {"ms": 2.0, "ms_min": 1.9, "tiles_visited": 300, "tiles_dense": 600,
                             "plan_ms": 0.3},
             "fa2": {"ms": 3.0, "same_pattern": true},
             "flex": {"ms": 5.0, "mask_ms": 1.25, "compile_s": 12.0, "mask_first_ms": 900.0},
             "err_out": 0.004, "err_lse": 0.00002, "err_out_fa2": 0.003, "wall_s": 20.5},
            {"case": "window4096-8k-d128", "description": "causal window 4096", "q_len": 8192,
             "kv_len": 8192, "head_dim": 128, "heads": 16, "batch": 1, "allowed_pairs": allowed,
             "density": 0.375, "flops": 4 * allowed * 128,
             "sparse_attn": {"error": "exit 1: error: boom"},
             "fa2": {"ms": 3.0, "same_pattern": false},
             "flex": {"ms": 4.0}}
        ],
        "not_run": ["dense-32k-d128"],
        "stopped": "budget: 400 s of 400 s used"
    });
    let json = dir.write("r.json", doc.to_string());
    let out_dir = dir.path("md");
    let o = bench_torch(
        &py,
        &[
            "--format-only",
            json.to_str().unwrap(),
            "--out-dir",
            out_dir.to_str().unwrap(),
        ],
        None,
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    let md = std::fs::read_to_string(out_dir.join("bench-torch.md")).unwrap();
    assert_eq!(md, out, "the table printed is the table written");
    let tflops = |ms: f64| format!("{:.1}", (4 * allowed * 128) as f64 / (ms * 1e-3) / 1e12);
    for needle in [
        "# sparse-attn vs PyTorch FA2 (SDPA flash) and FlexAttention: 2030-01-02T03:04Z",
        "- GPU: NVIDIA H200",
        "- commit (.gpu-carry/COMMIT): abc123",
        "| case | pattern | seq | d | density | sparse-attn ms | TFLOP/s | FA2 ms | TFLOP/s | Flex ms | TFLOP/s | Flex mask ms | x FA2 | x Flex | err | lse err | check | tiles visited / dense |",
        &format!(
            "| causal-8k-d128 | causal | 8192 | 128 | 0.500 | 2.000 | {} | 3.000 | {} | 5.000 | {} | 1.25 | 1.50 | 2.50 | 4.00e-03 | 2.00e-05 | ok | 300 / 600 (0.500) |",
            tflops(2.0),
            tflops(3.0),
            tflops(5.0)
        ),
        "| window4096-8k-d128 | causal window 4096 | 8192 | 128 | 0.375 | FAIL | n/a | 3.000* |",
        "| n/a | n/a | n/a | n/a |",
        "- window4096-8k-d128, sparse-attn: exit 1: error: boom",
        "| causal-8k-d128 | 1.900 | 3.00e-03 | 12.0 | 900.0 | 0.30 | 20.5 |",
        "Not run (budget: 400 s of 400 s used): dense-32k-d128",
    ] {
        assert!(md.contains(needle), "{needle:?} missing from:\n{md}");
    }
    // Not JSON, or not a results document: status 1, one message.
    let junk = dir.write("junk.json", "[1, 2");
    let o = bench_torch(&py, &["--format-only", junk.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1));
}
