//! `sparse-attn bench` without a GPU: command-line misuse exits 2 (clap), bad input 1 with one
//! line naming it, a machine without a GPU (or without built kernels) gets one line saying so
//! and no output file, and the hidden `--dry-run` plans and prints the JSON line the GPU run
//! prints, with every count checked against the library (allowed pairs pair by pair through
//! the contract's predicate, tiles through the compiled plans). On a machine with a GPU the
//! no-GPU test instead checks a real timed run and its output file.

mod common;

use common::cli::{assert_fails, bin, random_qkv, read_output, s, safetensors_bytes, stderr};
use common::tempdir::TempDir;
use safetensors::tensor::Dtype;
use serde_json::Value;
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, SeqLens};

const CAUSAL: &str = r#"{"causal": true, "components": []}"#;
const STREAMING: &str = r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 48}}]}"#;

/// A per-head set: heads 0-1 causal, 2-3 sinks 2 + window 16.
fn mix() -> String {
    let sw = r#"{"causal": true, "components": [{"sinks": {"count": 2}}, {"sliding_window": {"size": 16}}]}"#;
    format!(r#"{{"heads": [{CAUSAL}, {CAUSAL}, {sw}, {sw}]}}"#)
}

fn gpu_available() -> bool {
    sparse_attn::backend::cuda_build().built && sparse_attn::backend::Gpu::new(0).is_ok()
}

/// Runs `bench` and returns (exit code, stdout, stderr).
fn bench(args: &[&str]) -> (Option<i32>, String, String) {
    let o = bin(&[&["bench"], args].concat());
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr(&o),
    )
}

/// The one JSON line of a successful run.
fn json_line(stdout: &str) -> Value {
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stdout}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
}

/// Allowed pairs, pair by pair through the plan's predicate, and the tiles of the pattern's
/// plan and of a dense plan.
fn expected(
    pattern: &str,
    seqs: (usize, usize, usize),
    heads: (usize, usize),
    d: u32,
    dtype: DType,
) -> (u64, u64, u64) {
    let (batch, q_len, kv_len) = seqs;
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch,
            q_len,
            kv_len,
        },
        heads.0,
        heads.1,
        d,
        dtype,
    )
    .unwrap();
    let set = HeadPatterns::from_json(pattern).unwrap();
    let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
    let mut allowed = 0u64;
    for b in 0..batch {
        for h in 0..heads.0 {
            for i in 0..q_len {
                allowed += (0..kv_len).filter(|&j| plan.allowed(b, h, i, j)).count() as u64;
            }
        }
    }
    let dense = AttnPlan::new(&problem, &AttnOptions::default()).unwrap();
    (
        allowed,
        plan.meta().tiles_visited(),
        dense.meta().tiles_visited(),
    )
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not an integer in {v}"))
}

#[test]
fn command_line_misuse_exits_2() {
    let dir = TempDir::new();
    let p = dir.write("p.json", CAUSAL);
    let input = dir.write("in.safetensors", b"unused");
    let p = s(&p);
    let bad: [&[&str]; 9] = [
        &[],
        &["--pattern"],
        &["--pattern", p, "--input", s(&input), "--seq-len", "64"],
        &["--pattern", p, "--input", s(&input), "--heads", "2"],
        &["--pattern", p, "--dtype", "f32"],
        &["--pattern", p, "--head-dim", "96"],
        &["--pattern", p, "--iters", "0"],
        &["--pattern", p, "--seq-len", "0"],
        &["--pattern", p, "--frobnicate"],
    ];
    for args in bad {
        let (code, out, err) = bench(args);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(err.contains("error:"), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed {out}");
    }
    let (code, out, _) = bench(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("--warmup") && out.contains("--iters") && out.contains("--output"));
    assert!(
        !out.contains("--dry-run"),
        "--dry-run is for tests only: {out}"
    );
}

#[test]
fn bad_input_exits_1_with_one_line() {
    let dir = TempDir::new();
    let missing = dir.path("nope.json");
    let o = bin(&["bench", "--pattern", s(&missing), "--dry-run"]);
    assert_fails(&o, 1, "nope.json");
    let set = dir.write("set.json", mix());
    let o = bin(&["bench", "--pattern", s(&set), "--heads", "2", "--dry-run"]);
    assert_fails(&o, 1, "does not fit");
    let p = dir.write("p.json", CAUSAL);
    let o = bin(&[
        "bench",
        "--pattern",
        s(&p),
        "--heads",
        "4",
        "--kv-heads",
        "3",
        "--dry-run",
    ]);
    assert_fails(&o, 1, "multiple of num_kv_heads");
    let junk = dir.write("junk.safetensors", b"not safetensors");
    let o = bin(&[
        "bench",
        "--pattern",
        s(&p),
        "--input",
        s(&junk),
        "--dry-run",
    ]);
    assert_fails(&o, 1, "not a valid safetensors file");
}

/// Without a GPU: status 1, one line saying so, no output file. With one: a timed run.
#[test]
fn without_a_gpu_it_says_so() {
    let dir = TempDir::new();
    let p = dir.write("causal.json", CAUSAL);
    let out = dir.path("out.safetensors");
    let args = [
        "bench",
        "--pattern",
        s(&p),
        "--seq-len",
        "256",
        "--heads",
        "2",
        "--head-dim",
        "64",
        "--warmup",
        "1",
        "--iters",
        "3",
        "--output",
        s(&out),
    ];
    let o = bin(&args);
    if gpu_available() {
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{}", stderr(&o));
        let v = json_line(&stdout);
        let (median, min) = (v["ms_median"].as_f64(), v["ms_min"].as_f64());
        assert!(median.is_some_and(|m| m > 0.0), "{v}");
        assert!(min.unwrap() <= median.unwrap(), "{v}");
        assert!(v["tflops"].as_f64().is_some_and(|t| t > 0.0), "{v}");
        assert!(v["device"].is_string(), "{v}");
        let r = read_output(&out, Dtype::BF16);
        assert_eq!(r.out_shape, [1, 256, 2, 64]);
        assert_eq!(r.lse_shape, [1, 2, 256]);
        assert!(r.out.iter().all(|x| x.is_finite()) && r.lse.iter().all(|x| x.is_finite()));
        return;
    }
    let err = assert_fails(&o, 1, "needs a GPU");
    assert!(
        err.contains("no CUDA device") || err.contains("GPU kernels not built"),
        "{err}"
    );
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(!out.exists(), "an output file was written without a GPU");
}

#[test]
fn dry_run_prints_the_json_line_with_the_counts() {
    let dir = TempDir::new();
    let cases = [
        (
            "dense",
            r#"{"causal": false, "components": []}"#.to_string(),
            "dense",
        ),
        ("causal", CAUSAL.to_string(), "causal dense"),
        (
            "streaming",
            STREAMING.to_string(),
            "causal sinks(4) + window(48)",
        ),
        (
            "mix",
            mix(),
            "heads 0-1: causal dense; heads 2-3: causal sinks(2) + window(16)",
        ),
    ];
    // q_len != kv_len: positions are aligned at the bottom right.
    let (batch, q_len, kv_len, heads, kv_heads, d) = (2, 150, 200, 4, 2, 128);
    for (name, json, text) in &cases {
        let p = dir.write(&format!("{name}.json"), json);
        let (code, out, err) = bench(&[
            "--pattern",
            s(&p),
            "--batch",
            "2",
            "--seq-len",
            "150",
            "--kv-len",
            "200",
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--dtype",
            "f16",
            "--seed",
            "7",
            "--iters",
            "9",
            "--dry-run",
        ]);
        assert_eq!(code, Some(0), "{name}: {err}");
        let v = json_line(&out);
        assert_eq!(v["case"], *name, "the case defaults to the file's stem");
        assert_eq!(v["pattern"], *text);
        assert_eq!(
            v["patterns"],
            serde_json::from_str::<Value>(json).unwrap(),
            "{name}"
        );
        assert_eq!(v["dtype"], "f16");
        assert_eq!(v["input"], Value::Null);
        assert_eq!(v["seed"], 7);
        assert_eq!(v["iters"], 9);
        assert_eq!(v["warmup"], 5);
        for (key, want) in [
            ("batch", batch),
            ("q_len", q_len),
            ("kv_len", kv_len),
            ("heads", heads),
            ("kv_heads", kv_heads),
            ("head_dim", d),
        ] {
            assert_eq!(num(&v, key), want as u64, "{name}: {key}");
        }
        let (allowed, tiles, tiles_dense) = expected(
            json,
            (batch, q_len, kv_len),
            (heads, kv_heads),
            d as u32,
            DType::F16,
        );
        assert_eq!(num(&v, "allowed_pairs"), allowed, "{name}");
        let dense = (batch * heads * q_len * kv_len) as u64;
        assert_eq!(num(&v, "dense_pairs"), dense);
        assert!((v["density"].as_f64().unwrap() - allowed as f64 / dense as f64).abs() < 1e-12);
        assert_eq!(num(&v, "flops"), 4 * allowed * d as u64);
        assert_eq!(num(&v, "tiles_visited"), tiles, "{name}");
        assert_eq!(num(&v, "tiles_dense"), tiles_dense, "{name}");
        assert!(tiles <= tiles_dense, "{name}");
        for key in [
            "ms_median",
            "ms_min",
            "ms_max",
            "tflops",
            "device",
            "output",
        ] {
            assert_eq!(v[key], Value::Null, "{name}: {key} in a dry run");
        }
        assert_eq!(v["dry_run"], true);
        assert!(v["plan_ms"].as_f64().is_some());
        assert!(num(&v, "num_splits") >= 1);
    }
    // Known numbers: causal over 150 queries and 200 keys, rows p = 50..199 see p + 1 keys.
    let p = dir.write("c.json", CAUSAL);
    let (_, out, _) = bench(&[
        "--pattern",
        s(&p),
        "--seq-len",
        "150",
        "--kv-len",
        "200",
        "--heads",
        "1",
        "--case",
        "label",
        "--dry-run",
    ]);
    let v = json_line(&out);
    assert_eq!(v["case"], "label");
    assert_eq!(num(&v, "allowed_pairs"), (51..=200).sum::<u64>());
    assert_eq!(v["dtype"], "bf16", "bf16 is the default");
    assert_eq!(num(&v, "head_dim"), 128, "head_dim 128 is the default");
}

#[test]
fn dry_run_with_input_takes_the_shape_from_the_file() {
    let dir = TempDir::new();
    let input = dir.write(
        "qkv.safetensors",
        safetensors_bytes(&random_qkv(Dtype::BF16, [2, 96, 4, 64], [2, 160, 2, 64], 3)),
    );
    let p = dir.write("s.json", STREAMING);
    let out = dir.path("out.safetensors");
    let (code, stdout, err) = bench(&[
        "--pattern",
        s(&p),
        "--input",
        s(&input),
        "--output",
        s(&out),
        "--dry-run",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v = json_line(&stdout);
    for (key, want) in [
        ("batch", 2),
        ("q_len", 96),
        ("kv_len", 160),
        ("heads", 4),
        ("kv_heads", 2),
        ("head_dim", 64),
    ] {
        assert_eq!(num(&v, key), want, "{key}");
    }
    assert_eq!(v["dtype"], "bf16");
    assert_eq!(v["input"], s(&input));
    assert_eq!(v["seed"], Value::Null);
    let (allowed, _, _) = expected(STREAMING, (2, 96, 160), (4, 2), 64, DType::BF16);
    assert_eq!(num(&v, "allowed_pairs"), allowed);
    assert!(!out.exists(), "a dry run writes no output");
}
