//! The `sparse-attn` binary end to end: every kind of bad input exits non-zero with one line
//! naming the problem and leaves `--output` untouched; good input gives the documented files:
//! `run` outputs matching the f64 reference and masks matching the contract for every kind of
//! pattern (on the emulator, so this runs on any machine), `plan` numbers that follow from the
//! definitions, and `viz` PNGs with the documented geometry and colours.

mod common;

use common::cli::{
    assert_fails, assert_no_temp_files, assert_success, bin as run, read_output, read_tensor, s,
    safetensors_bytes, tensor, zeros, Fixture, Picture, Tensor as T,
};
use common::tempdir::TempDir;
use common::{assert_lse_close, max_abs, max_abs_diff, random_qkv, reference_for, Rng};
use half::{bf16, f16};
use safetensors::tensor::Dtype;
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, Element, SeqLens};

const DENSE: &str = r#"{"causal": false, "components": []}"#;

/// Runs `run` on the given input tensors and pattern, expecting failure with one stderr line
/// containing `needle`; checks a pre-existing output file is left as it was and neither the
/// mask nor a temporary file was written.
fn expect_failure(tensors: &[T], pattern: &str, extra: &[&str], needle: &str) {
    let f = Fixture::new(&safetensors_bytes(tensors), pattern);
    let mask = f.dir.path("mask.safetensors");
    let args = [&["--mask-out", s(&mask), "--backend", "emulator"], extra].concat();
    f.expect_failure("run", &args, needle);
}

fn qkv(dtype: Dtype, q: [usize; 4], kv: [usize; 4]) -> Vec<T> {
    vec![
        zeros("q", &q, dtype),
        zeros("k", &kv, dtype),
        zeros("v", &kv, dtype),
    ]
}

#[test]
fn missing_tensor() {
    let mut t = qkv(Dtype::F16, [1, 8, 2, 64], [1, 8, 2, 64]);
    t.pop();
    expect_failure(&t, DENSE, &[], "missing tensor `v`");
}

#[test]
fn wrong_rank() {
    let t = vec![
        zeros("q", &[8, 2, 64], Dtype::F16),
        zeros("k", &[1, 8, 2, 64], Dtype::F16),
        zeros("v", &[1, 8, 2, 64], Dtype::F16),
    ];
    expect_failure(&t, DENSE, &[], "tensor `q` has rank 3");
}

#[test]
fn mismatched_dtypes() {
    let t = vec![
        zeros("q", &[1, 8, 2, 64], Dtype::F16),
        zeros("k", &[1, 8, 2, 64], Dtype::BF16),
        zeros("v", &[1, 8, 2, 64], Dtype::BF16),
    ];
    expect_failure(&t, DENSE, &[], "dtype mismatch");
}

#[test]
fn unsupported_dtype() {
    let t = qkv(Dtype::F32, [1, 8, 2, 64], [1, 8, 2, 64]);
    expect_failure(&t, DENSE, &[], "expected F16 or BF16");
}

#[test]
fn heads_that_do_not_divide() {
    let t = qkv(Dtype::BF16, [1, 8, 3, 64], [1, 8, 2, 64]);
    expect_failure(&t, DENSE, &[], "must be a multiple of num_kv_heads");
}

#[test]
fn unsupported_head_dim() {
    let t = qkv(Dtype::F16, [1, 8, 2, 80], [1, 8, 2, 80]);
    expect_failure(&t, DENSE, &[], "head_dim 80");
}

#[test]
fn mismatched_k_and_v() {
    let t = vec![
        zeros("q", &[1, 8, 2, 64], Dtype::F16),
        zeros("k", &[1, 8, 2, 64], Dtype::F16),
        zeros("v", &[1, 9, 2, 64], Dtype::F16),
    ];
    expect_failure(&t, DENSE, &[], "k has shape");
}

#[test]
fn mismatched_batch_and_head_dim() {
    let t = qkv(Dtype::F16, [2, 8, 2, 64], [1, 8, 2, 64]);
    expect_failure(&t, DENSE, &[], "batch mismatch");
    let t = qkv(Dtype::F16, [1, 8, 2, 64], [1, 8, 2, 128]);
    expect_failure(&t, DENSE, &[], "head_dim mismatch");
}

#[test]
fn not_a_safetensors_file() {
    let f = Fixture::new(b"definitely not safetensors", DENSE);
    f.expect_failure("run", &[], "not a valid safetensors file");
}

#[test]
fn missing_input_file() {
    let dir = TempDir::new();
    let pat = dir.write("p.json", DENSE);
    let out = dir.path("out.safetensors");
    let o = run(&[
        "run",
        "--pattern",
        s(&pat),
        "--input",
        s(&dir.path("nope.safetensors")),
        "--output",
        s(&out),
    ]);
    assert_fails(&o, 1, "cannot read");
    assert!(!out.exists());
}

#[test]
fn malformed_pattern_json() {
    let t = qkv(Dtype::F16, [1, 8, 2, 64], [1, 8, 2, 64]);
    expect_failure(
        &t,
        r#"{"causal": true, "components": ["#,
        &[],
        "malformed JSON",
    );
    expect_failure(&t, r#"{"causal": 1}"#, &[], "invalid type");
    expect_failure(&t, r#"{"components": []}"#, &[], "needs \"causal\"");
    expect_failure(
        &t,
        r#"{"causal": false, "components": [{"windowed": {}}]}"#,
        &[],
        "unknown variant `windowed`",
    );
    expect_failure(
        &t,
        r#"{"causal": false, "components": [{"sliding_window": {"size": 4, "left": 2}}]}"#,
        &[],
        "sliding_window takes either",
    );
    expect_failure(&t, r#"{"layers": []}"#, &[], "layer plan");
}

#[test]
fn pattern_that_does_not_fit() {
    let t = qkv(Dtype::F16, [1, 8, 4, 64], [1, 8, 2, 64]);
    let three = r#"{"heads": [{"causal": true}, {"causal": true}, {"causal": true}]}"#;
    expect_failure(
        &t,
        three,
        &[],
        "has 3 entries but the problem has 4 query heads",
    );
    let global = r#"{"causal": false, "components": [{"global": {"tokens": [2, 8]}}]}"#;
    expect_failure(&t, global, &[], "global token 8 is outside the keys 0..8");
    let per_head = r#"{"heads": [{"causal": true}, {"causal": true}, {"causal": true},
        {"causal": true, "components": [{"global": {"tokens": [9]}}]}]}"#;
    expect_failure(&t, per_head, &[], "head 3: global token 9");
}

#[test]
fn invalid_component_parameters() {
    let t = qkv(Dtype::F16, [1, 8, 2, 64], [1, 8, 2, 64]);
    for (json, needle) in [
        (
            r#"{"dilated": {"stride": 0}}"#,
            "dilated stride must be at least 1",
        ),
        (
            r#"{"sinks": {"count": -1}}"#,
            "sinks count must be at least 1",
        ),
        (
            r#"{"global": {"tokens": []}}"#,
            "global tokens list is empty",
        ),
        (
            r#"{"block_mask": {"block_q": 4, "block_k": 4, "mask": [[1, 0], [1]]}}"#,
            "ragged",
        ),
        (
            r#"{"bigbird": {"block": 0, "window_blocks": 1, "global_blocks": 1, "random_blocks": 1, "seed": 3}}"#,
            "bigbird block must be at least 1",
        ),
    ] {
        let pattern = format!(r#"{{"causal": true, "components": [{json}]}}"#);
        expect_failure(&t, &pattern, &[], needle);
    }
}

#[test]
fn bad_scale_and_softcap() {
    let t = qkv(Dtype::F16, [1, 8, 2, 64], [1, 8, 2, 64]);
    expect_failure(&t, DENSE, &["--softcap", "-1"], "softcap");
    expect_failure(&t, DENSE, &["--scale", "inf"], "scale");
}

#[test]
fn kernels_report_runs_with_or_without_nvcc() {
    let stdout = assert_success(&run(&["kernels"]), "kernels");
    if sparse_attn::backend::cuda_build().built {
        assert!(stdout.contains("sa_attn_fwd_f16_hd64_m128"), "{stdout}");
        assert!(stdout.contains("regs"), "{stdout}");
        // The step tiles keep two K/V stages up to head_dim 128, one above.
        assert!(
            stdout.contains("head_dim 128 Step: 16-row blocks of 32 threads")
                && stdout.contains("(2 K/V stages)")
                && stdout.contains("(1 K/V stage)"),
            "{stdout}"
        );
    } else {
        assert!(stdout.contains("CUDA build was skipped"), "{stdout}");
    }
}

/// The shape of a `run` test.
#[derive(Clone, Copy)]
struct Shape {
    batch: usize,
    q_len: usize,
    kv_len: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: u32,
}

impl Shape {
    fn square(len: usize) -> Shape {
        Shape {
            batch: 1,
            q_len: len,
            kv_len: len,
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
        }
    }
}

/// A predicate written down from docs/patterns.md: `(head, p, j) -> allowed`.
type Hand<'a> = &'a dyn Fn(usize, i64, i64) -> bool;

/// Runs `run --mask-out` on random inputs with `pattern` on the emulator and checks: `out` and
/// `lse` against the f64 reference under the plan's predicate, the mask against that predicate
/// and (when given) against a predicate written by hand from the contract, and that the mask
/// is as sparse as claimed (some pair masked unless the pattern is dense).
fn check_run<E: Element>(dtype: Dtype, pattern: &str, sh: Shape, hand: Option<Hand<'_>>) {
    let Shape {
        batch,
        q_len,
        kv_len,
        heads,
        kv_heads,
        head_dim,
    } = sh;
    let d = head_dim as usize;
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch,
            q_len,
            kv_len,
        },
        heads,
        kv_heads,
        head_dim,
        E::DTYPE,
    )
    .unwrap();
    let set = HeadPatterns::from_json(pattern).unwrap();
    let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
    // The binary's defaults, which the reference below takes from the plan.
    assert_eq!(plan.scale(), 1.0 / (head_dim as f32).sqrt());
    assert_eq!(plan.softcap(), 0.0);
    let mut rng = Rng::new(common::base_seed());
    let (q, k, v) = random_qkv::<E>(&mut rng, &problem, 1.0, 1.0);
    let input = safetensors_bytes(&[
        tensor("q", &[batch, q_len, heads, d], &q, dtype),
        tensor("k", &[batch, kv_len, kv_heads, d], &k, dtype),
        tensor("v", &[batch, kv_len, kv_heads, d], &v, dtype),
    ]);
    let f = Fixture::new(&input, pattern);
    let output = f.dir.path("out.safetensors");
    let mask_path = f.dir.path("mask.safetensors");
    f.succeed("run", &output, &["--mask-out", s(&mask_path)]);

    let got = read_output(&output, dtype);
    assert_eq!(got.out_shape, vec![batch, q_len, heads, d]);
    assert_eq!(got.lse_shape, vec![batch, heads, q_len]);
    let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
    let (max_err, max_ref) = (max_abs_diff(&got.out, &want.out), max_abs(&want.out));
    assert!(
        max_err <= 1e-2 * max_ref,
        "{pattern}: out error {max_err:.3e} vs max |out| {max_ref:.3e}"
    );
    assert_lse_close(pattern, &got.lse, &want.lse, 1e-2);

    let mask_bytes = std::fs::read(&mask_path).unwrap();
    let (mask_dtype, mask_shape, mask) = read_tensor(&mask_bytes, "mask");
    assert_eq!(mask_dtype, Dtype::U8);
    assert_eq!(mask_shape, vec![heads, q_len, kv_len]);
    for h in 0..heads {
        for i in 0..q_len {
            let p = i as i64 + kv_len as i64 - q_len as i64;
            for j in 0..kv_len {
                let m = mask[(h * q_len + i) * kv_len + j];
                assert_eq!(
                    m,
                    plan.allowed(0, h, i, j) as u8,
                    "{pattern}: h {h} i {i} j {j}"
                );
                if let Some(hand) = hand {
                    assert_eq!(
                        m,
                        hand(h, p, j as i64) as u8,
                        "{pattern}: h {h} p {p} j {j}"
                    );
                }
            }
        }
    }
    let dense = set.pattern(0).is_some_and(|p| p.is_dense() && !p.causal);
    assert_eq!(mask.contains(&0), !dense, "{pattern}: mask sparsity");
}

#[test]
fn run_dense_f16_matches_reference() {
    let sh = Shape {
        batch: 2,
        ..Shape::square(70)
    };
    check_run::<f16>(Dtype::F16, DENSE, sh, Some(&|_, _, _| true));
}

#[test]
fn run_causal_bf16_matches_reference() {
    // A head pattern set whose entries are all the same pattern.
    let pattern = r#"{"heads": [{"causal": true, "components": [{"dense": {}}]}, {"causal": true},
                                 {"causal": true}, {"causal": true, "components": []}]}"#;
    let sh = Shape {
        batch: 2,
        q_len: 40,
        kv_len: 96,
        head_dim: 128,
        ..Shape::square(0)
    };
    check_run::<bf16>(Dtype::BF16, pattern, sh, Some(&|_, p, j| j <= p));
}

#[test]
fn run_causal_f16_more_queries_than_keys() {
    // The first rows see no key: out 0, lse -inf.
    let sh = Shape {
        q_len: 80,
        kv_len: 50,
        head_dim: 128,
        ..Shape::square(0)
    };
    check_run::<f16>(
        Dtype::F16,
        r#"{"causal": true}"#,
        sh,
        Some(&|_, p, j| j <= p),
    );
}

#[test]
fn run_sliding_window() {
    let pattern =
        r#"{"causal": false, "components": [{"sliding_window": {"left": 5, "right": 3}}]}"#;
    let hand = |_, p: i64, j: i64| p - 5 <= j && j <= p + 3;
    check_run::<f16>(Dtype::F16, pattern, Shape::square(150), Some(&hand));
}

#[test]
fn run_streaming_sinks_and_window_chunked_prefill() {
    let pattern = r#"{"causal": true, "components": [{"sinks": {"count": 4}},
                                                    {"sliding_window": {"size": 16}}]}"#;
    let hand = |_, p: i64, j: i64| (j < 4 || j > p - 16) && j <= p;
    let sh = Shape {
        q_len: 100,
        kv_len: 180,
        head_dim: 128,
        ..Shape::square(0)
    };
    check_run::<bf16>(Dtype::BF16, pattern, sh, Some(&hand));
}

#[test]
fn run_global_tokens() {
    let pattern = r#"{"causal": false, "components": [{"global": {"tokens": [0, 70, 133]}},
                                                     {"sliding_window": {"size": 8}}]}"#;
    let g = [0i64, 70, 133];
    let hand = |_, p: i64, j: i64| g.contains(&j) || g.contains(&p) || (p - 7 <= j && j <= p);
    check_run::<f16>(Dtype::F16, pattern, Shape::square(140), Some(&hand));
}

#[test]
fn run_dilated_batch_of_two() {
    let pattern = r#"{"causal": true, "components": [{"dilated": {"stride": 3}}]}"#;
    let hand = |_, p: i64, j: i64| (p - j).rem_euclid(3) == 0 && j <= p;
    let sh = Shape {
        batch: 2,
        ..Shape::square(130)
    };
    check_run::<f16>(Dtype::F16, pattern, sh, Some(&hand));
}

#[test]
fn run_block_mask() {
    // 4 x 3 blocks of 32 x 48 tokens; query rows 128.. are beyond the mask: nothing allowed.
    let mask = [[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]];
    let pattern = r#"{"causal": false, "components": [{"block_mask": {"block_q": 32, "block_k": 48,
        "mask": [[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]]}}]}"#;
    let hand = |_, p: i64, j: i64| {
        let (r, c) = ((p / 32) as usize, (j / 48) as usize);
        r < 4 && c < 3 && mask[r][c] == 1
    };
    check_run::<bf16>(Dtype::BF16, pattern, Shape::square(150), Some(&hand));
}

#[test]
fn run_bigbird() {
    // Random blocks come from the contract's generator: the library predicate is the oracle.
    let pattern = r#"{"causal": true, "components": [{"bigbird": {"block": 16, "window_blocks": 3,
        "global_blocks": 1, "random_blocks": 2, "seed": 11}}]}"#;
    check_run::<f16>(Dtype::F16, pattern, Shape::square(160), None);
}

#[test]
fn run_per_head_dilated_set() {
    let pattern = r#"{"heads": [
        {"causal": true, "components": [{"dilated": {"stride": 1}}]},
        {"causal": true, "components": [{"dilated": {"stride": 2}}]},
        {"causal": true, "components": [{"dilated": {"stride": 4}}]},
        {"causal": true, "components": [{"dilated": {"stride": 8}}]}]}"#;
    let hand = |h: usize, p: i64, j: i64| (p - j).rem_euclid(1 << h) == 0 && j <= p;
    check_run::<bf16>(Dtype::BF16, pattern, Shape::square(120), Some(&hand));
}

#[test]
fn demo_runs_on_the_emulator() {
    let o = run(&[
        "demo",
        "--backend",
        "emulator",
        "--seq-len",
        "130",
        "--seed",
        "7",
    ]);
    let stdout = assert_success(&o, "demo");
    assert!(stdout.contains("seed 7"), "{stdout}");
    assert!(stdout.contains("causal"), "{stdout}");
    assert!(stdout.contains("OK"), "{stdout}");
}

// ---- plan ----------------------------------------------------------------------------------

/// Runs `plan --json` and parses the report.
fn plan_json(config: &str, extra: &[&str]) -> serde_json::Value {
    let dir = TempDir::new();
    let cfg = dir.write("config.json", config);
    let mut args = vec!["plan", "--model", s(&cfg), "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&assert_success(&run(&args), "plan")).unwrap()
}

fn u(v: &serde_json::Value) -> u128 {
    v.as_u64().map(u128::from).unwrap_or_else(|| {
        v.to_string()
            .parse()
            .unwrap_or_else(|_| panic!("not an integer: {v}"))
    })
}

/// Allowed pairs of one causal head with a `w`-token window over `n` tokens.
fn window_pairs(w: u128, n: u128) -> u128 {
    if n <= w {
        n * (n + 1) / 2
    } else {
        w * (w + 1) / 2 + (n - w) * w
    }
}

#[test]
fn plan_mistral_kv_cache_is_window_over_n() {
    // Mistral 7B v0.1: 32 layers, 32 heads, 8 kv heads, head_dim 4096 / 32, window 4096.
    let cfg = r#"{"model_type": "mistral", "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "hidden_size": 4096, "sliding_window": 4096,
        "torch_dtype": "bfloat16"}"#;
    let n = 32768u128;
    let r = plan_json(cfg, &["--seq-len", "32768"]);
    assert_eq!(r["head_dim"], 128);
    assert_eq!(r["dtype"], "bf16");
    let layers = r["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 32);
    let per_token = 2 * 8 * 128 * 2; // K and V, kv heads, head_dim, bytes
    for l in layers {
        assert_eq!(l["pattern"], "causal window(4096)");
        assert_eq!(u(&l["kv_bytes"]), 4096 * per_token);
        assert_eq!(u(&l["dense_kv_bytes"]), n * per_token);
        assert_eq!(u(&l["allowed_pairs"]), 32 * window_pairs(4096, n));
        assert_eq!(u(&l["dense_pairs"]), 32 * n * (n + 1) / 2);
        assert_eq!(u(&l["flops"]), 4 * u(&l["allowed_pairs"]) * 128);
        assert_eq!(l["kv_tokens_per_kv_head"], serde_json::json!(vec![4096; 8]));
    }
    assert_eq!(r["totals"]["kv_ratio"].as_f64().unwrap(), 4096.0 / 32768.0);
}

#[test]
fn plan_gemma2_alternates_window_and_dense() {
    let cfg = r#"{"model_type": "gemma2", "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 4, "head_dim": 256, "sliding_window": 4096}"#;
    let r = plan_json(cfg, &["--seq-len", "8192", "--dtype", "f16"]);
    assert_eq!(r["dtype"], "f16");
    let layers = r["layers"].as_array().unwrap();
    for (l, layer) in layers.iter().enumerate() {
        let (pattern, kv_tokens, density) = if l % 2 == 0 {
            (
                "causal window(4096)",
                4096,
                window_pairs(4096, 8192) as f64 / (8192.0 * 8193.0 / 2.0),
            )
        } else {
            ("causal dense", 8192, 1.0)
        };
        assert_eq!(layer["pattern"], pattern, "layer {l}");
        assert_eq!(
            layer["kv_tokens_per_kv_head"],
            serde_json::json!(vec![kv_tokens; 4])
        );
        assert!((layer["density"].as_f64().unwrap() - density).abs() < 1e-12);
    }
    assert_eq!(r["totals"]["kv_ratio"].as_f64().unwrap(), 0.75);
}

#[test]
fn plan_gemma3_nested_text_config_table() {
    // Five 1024-window layers per dense layer; the language model under text_config.
    let cfg = r#"{"model_type": "gemma3", "text_config": {"model_type": "gemma3_text",
        "num_hidden_layers": 12, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 256, "sliding_window": 1024, "sliding_window_pattern": 6}}"#;
    let dir = TempDir::new();
    let path = dir.write("config.json", cfg);
    let o = run(&["plan", "--model", s(&path), "--seq-len", "4096"]);
    let stdout = assert_success(&o, "plan");
    assert!(stdout.contains("12 layers, 8 query heads, 4 kv heads, head_dim 256"));
    assert!(stdout.contains("density  = allowed (query, key) pairs"));
    for l in 0..12 {
        let row = stdout
            .lines()
            .find(|line| line.split_whitespace().next() == Some(&l.to_string()))
            .unwrap_or_else(|| panic!("no row for layer {l}:\n{stdout}"));
        let want = if l % 6 == 5 {
            "causal dense"
        } else {
            "causal window(1024)"
        };
        assert!(row.contains(want), "layer {l}: {row}");
    }
    // 10 window layers keep 1024 of 4096 tokens, 2 dense layers all: (10/4 + 2) / 12.
    let total = stdout.lines().find(|l| l.starts_with("total")).unwrap();
    assert!(
        total.ends_with(&format!("{:.4}", (10.0 / 4.0 + 2.0) / 12.0)),
        "{total}"
    );
}

#[test]
fn plan_reads_shapes_from_flags_when_the_config_lacks_them() {
    let cfg = r#"{"num_hidden_layers": 3, "sliding_window": 16}"#;
    let dir = TempDir::new();
    let path = dir.write("config.json", cfg);
    let o = run(&["plan", "--model", s(&path), "--seq-len", "64"]);
    assert_fails(&o, 1, "has no \"num_attention_heads\"; pass --num-heads");
    let r = plan_json(
        cfg,
        &[
            "--seq-len",
            "64",
            "--num-heads",
            "4",
            "--num-kv-heads",
            "2",
            "--head-dim",
            "64",
        ],
    );
    assert_eq!(r["num_kv_heads"], 2);
    assert_eq!(u(&r["layers"][0]["kv_bytes"]), 16 * 2 * 2 * 64 * 2);
}

#[test]
fn plan_bad_input() {
    let dir = TempDir::new();
    for (cfg, args, code, needle) in [
        ("{not json", vec!["--seq-len", "8"], 1, "malformed JSON"),
        (
            r#"{"num_attention_heads": 4, "head_dim": 64}"#,
            vec!["--seq-len", "8"],
            1,
            "missing \"num_hidden_layers\"",
        ),
        (
            r#"{"num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 4, "head_dim": 64}"#,
            vec!["--seq-len", "8"],
            1,
            "multiple of num_kv_heads",
        ),
        (
            r#"{"num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 64}"#,
            vec!["--seq-len", "0"],
            2,
            "--seq-len must be in 1..=",
        ),
    ] {
        let path = dir.write("config.json", cfg);
        let mut a = vec!["plan", "--model", s(&path)];
        a.extend(args);
        let o = run(&a);
        assert_fails(&o, code, needle);
        assert!(o.stdout.is_empty(), "{cfg}: output on stdout");
    }
}

// ---- viz -----------------------------------------------------------------------------------

const GAP: usize = 4;
const WHITE: [u8; 3] = [255, 255, 255];
const DARK: [u8; 3] = [32, 32, 32];
const FULL: [u8; 3] = [49, 104, 189];
const PARTIAL: [u8; 3] = [243, 156, 18];
const BACKGROUND: [u8; 3] = [200, 200, 200];

/// Runs `viz` with `args` (plus `--out`) and decodes the picture.
fn viz(pattern: Option<&str>, args: &[&str]) -> (Picture, String) {
    let dir = TempDir::new();
    let out = dir.path("p.png");
    let mut a = vec!["viz", "--out", s(&out)];
    let pat;
    if let Some(p) = pattern {
        pat = dir.write("p.json", p);
        a.extend(["--pattern", s(&pat)]);
    }
    a.extend_from_slice(args);
    let stdout = assert_success(&run(&a), "viz");
    (Picture::read(&out), stdout)
}

#[test]
fn viz_token_level_of_a_small_window() {
    // 8 x 8 tokens, each drawn 16 x 16 px: a 128 px panel in a 4 px grey frame.
    let pattern = r#"{"causal": true, "components": [{"sliding_window": {"size": 2}}]}"#;
    let (pic, stdout) = viz(Some(pattern), &["--q-len", "8"]);
    assert_eq!((pic.width, pic.height), (136, 136));
    assert!(
        pic.description.contains("1 token = 16x16 px"),
        "{}",
        pic.description
    );
    assert!(stdout.contains("(136x136 px)"), "{stdout}");
    assert_eq!(pic.at(0, 0), BACKGROUND);
    assert_eq!(pic.at(135, 70), BACKGROUND);
    for i in 0..8 {
        for j in 0..8 {
            let want = if j <= i && j + 1 >= i { DARK } else { WHITE };
            assert_eq!(
                pic.at(GAP + j * 16 + 8, GAP + i * 16 + 8),
                want,
                "({i}, {j})"
            );
        }
    }
}

#[test]
fn viz_tile_level_and_both() {
    // A causal 6-token window on 8 x 8 tokens, tiles of 2 rows x 4 keys (4 x 2 tiles).
    let pattern = r#"{"causal": true, "components": [{"sliding_window": {"size": 6}}]}"#;
    let allowed = |i: usize, j: usize| j <= i && j + 5 >= i;
    let class = |m: usize, n: usize| {
        let n_allowed = (m * 2..m * 2 + 2)
            .flat_map(|i| (n * 4..n * 4 + 4).map(move |j| (i, j)))
            .filter(|&(i, j)| allowed(i, j))
            .count();
        match n_allowed {
            0 => WHITE,
            8 => FULL,
            _ => PARTIAL,
        }
    };
    let tiles = ["--q-len", "8", "--block-m", "2", "--block-n", "4"];
    let (pic, _) = viz(Some(pattern), &[&tiles[..], &["--level", "tile"]].concat());
    assert_eq!((pic.width, pic.height), (136, 136));
    assert!(pic.description.contains("2x4 tiles"), "{}", pic.description);
    let mut seen = Vec::new();
    for m in 0..4 {
        for n in 0..2 {
            // Tile (m, n) covers pixels from GAP + (m * 2, n * 4) * 16; look at its centre.
            let c = pic.at(GAP + n * 64 + 32, GAP + m * 32 + 16);
            assert_eq!(c, class(m, n), "tile ({m}, {n})");
            seen.push(c);
        }
    }
    assert!(seen.contains(&FULL) && seen.contains(&PARTIAL) && seen.contains(&WHITE));
    // Tile borders: a white line where tile row 1 starts, across a full or partial tile.
    assert_eq!(pic.at(GAP + 32, GAP + 32), WHITE);
    assert_eq!(pic.at(GAP + 32, GAP + 33), class(1, 0));

    let (both, _) = viz(Some(pattern), &[&tiles[..], &["--level", "both"]].concat());
    assert_eq!((both.width, both.height), (136 + 128 + GAP, 136));
    for i in 0..8 {
        for j in 0..8 {
            let token = both.at(GAP + j * 16 + 8, GAP + i * 16 + 8);
            assert_eq!(token, if allowed(i, j) { DARK } else { WHITE });
            let tile = both.at(2 * GAP + 128 + j * 16 + 8, GAP + i * 16 + 8);
            assert_eq!(tile, class(i / 2, j / 4));
        }
    }
}

#[test]
fn viz_tile_level_of_views_draws_the_visited_tokens() {
    // Causal dilated stride 2 on 16 x 16 tokens with 2 x 4 tiles: each residue class runs on its
    // own, so at tile level only tokens of a query's class (j = i mod 2) are drawn: blue where
    // a full tile covers them, orange on partial (diagonal) tiles, which may reach past the
    // diagonal; tokens of the other class are never visited and stay white.
    let pattern = r#"{"causal": true, "components": [{"dilated": {"stride": 2}}]}"#;
    let tiles = ["--q-len", "16", "--block-m", "2", "--block-n", "4"];
    let (pic, _) = viz(Some(pattern), &[&tiles[..], &["--level", "tile"]].concat());
    assert_eq!((pic.width, pic.height), (264, 264));
    let mut seen = Vec::new();
    for i in 0..16 {
        for j in 0..16 {
            let c = pic.at(GAP + j * 16 + 8, GAP + i * 16 + 8);
            if (i + j) % 2 == 1 {
                assert_eq!(c, WHITE, "token ({i}, {j}) of another class");
            } else if j <= i {
                assert!(c == FULL || c == PARTIAL, "token ({i}, {j}): {c:?}");
            } else {
                assert_ne!(c, FULL, "token ({i}, {j}) beyond the diagonal");
            }
            seen.push(c);
        }
    }
    assert!(seen.contains(&FULL) && seen.contains(&PARTIAL));
}

#[test]
fn viz_max_pools_large_patterns() {
    // 2048 tokens do not fit 1024 px: each pixel is 2 x 2 tokens, dark when any is allowed.
    let (pic, _) = viz(Some(r#"{"causal": true}"#), &["--q-len", "2048"]);
    assert_eq!((pic.width, pic.height), (1024 + 2 * GAP, 1024 + 2 * GAP));
    assert!(
        pic.description.contains("1 px = 2x2 tokens, max-pooled"),
        "{}",
        pic.description
    );
    for k in [0, 1, 500, 1023] {
        // Cell (k, k) holds rows 2k, 2k+1 and keys 2k, 2k+1: row 2k+1 sees key 2k.
        assert_eq!(pic.at(GAP + k, GAP + k), DARK);
        if k < 1023 {
            assert_eq!(pic.at(GAP + k + 1, GAP + k), WHITE);
        }
    }
    assert_eq!(pic.at(GAP, GAP + 1023), DARK);
    assert_eq!(pic.at(GAP + 1023, GAP), WHITE);
}

#[test]
fn viz_grid_of_heads() {
    let pattern = r#"{"heads": [
        {"causal": true, "components": [{"dilated": {"stride": 1}}]},
        {"causal": true, "components": [{"dilated": {"stride": 2}}]},
        {"causal": true, "components": [{"dilated": {"stride": 4}}]},
        {"causal": true, "components": [{"dilated": {"stride": 8}}]}]}"#;
    // 16 tokens at 16 px: 256 px panels, 2 x 2 heads (every head by default: they differ).
    let (pic, _) = viz(Some(pattern), &["--q-len", "16"]);
    let side = GAP + 2 * (256 + GAP);
    assert_eq!((pic.width, pic.height), (side, side));
    assert!(pic.description.contains("heads 0-3"), "{}", pic.description);
    for h in 0..4 {
        let (x0, y0) = (GAP + (h % 2) * (256 + GAP), GAP + (h / 2) * (256 + GAP));
        for i in 0..16 {
            for j in 0..16 {
                let want = j <= i && (i - j) % (1 << h) == 0;
                let got = pic.at(x0 + j * 16 + 8, y0 + i * 16 + 8);
                assert_eq!(got, if want { DARK } else { WHITE }, "head {h} ({i}, {j})");
            }
        }
    }
    // One head on request.
    let (one, _) = viz(Some(pattern), &["--q-len", "16", "--head", "3"]);
    assert_eq!((one.width, one.height), (256 + 2 * GAP, 256 + 2 * GAP));
    assert_eq!(one.at(GAP + 8, GAP + 8 * 16 + 8), DARK);
    assert_eq!(one.at(GAP + 8, GAP + 4 * 16 + 8), WHITE);
}

#[test]
fn viz_model_layer_strip() {
    // Gemma-3-like: five 32-token window layers per dense layer, 12 layers at 256 tokens;
    // panels of 64 px (4 x 4 tokens per pixel), one row of 12.
    let cfg = r#"{"model_type": "gemma3_text", "num_hidden_layers": 12, "num_attention_heads": 4,
        "head_dim": 64, "sliding_window": 32, "sliding_window_pattern": 6}"#;
    let dir = TempDir::new();
    let path = dir.write("config.json", cfg);
    let args = ["--model", s(&path), "--seq-len", "256", "--max-px", "64"];
    let (pic, _) = viz(None, &args);
    assert_eq!(
        (pic.width, pic.height),
        (GAP + 12 * (64 + GAP), 64 + 2 * GAP)
    );
    assert!(pic.description.contains("12 layers"), "{}", pic.description);
    for l in 0..12 {
        let x0 = GAP + l * (64 + GAP);
        // Bottom-left cell: rows 252..255, keys 0..3 — only a dense layer reaches back there.
        let want = if l % 6 == 5 { DARK } else { WHITE };
        assert_eq!(pic.at(x0, GAP + 63), want, "layer {l}");
        assert_eq!(pic.at(x0 + 63, GAP + 63), DARK, "layer {l} diagonal");
        assert_eq!(pic.at(x0 + 63, GAP), WHITE, "layer {l} above the diagonal");
    }
}

#[test]
fn viz_failures_write_nothing() {
    let dir = TempDir::new();
    let out = dir.path("p.png");
    let window = dir.write(
        "w.json",
        r#"{"causal": true, "components": [{"sliding_window": {"size": 4}}]}"#,
    );
    let global = dir.write(
        "g.json",
        r#"{"causal": false, "components": [{"global": {"tokens": [3, 64]}}]}"#,
    );
    let cfg = dir.write(
        "config.json",
        r#"{"num_hidden_layers": 2, "sliding_window": 4}"#,
    );
    for (args, code, needle) in [
        (
            vec!["--pattern", s(&global), "--q-len", "64"],
            1,
            "global token 64 is outside the keys",
        ),
        (
            vec![
                "--pattern",
                s(&window),
                "--q-len",
                "64",
                "--num-heads",
                "2",
                "--head",
                "2",
            ],
            2,
            "--head 2 is out of range (2 heads)",
        ),
        (
            vec!["--pattern", s(&window), "--q-len", "8", "--head", "x"],
            2,
            "expected a head index or `all`",
        ),
        (
            vec!["--model", s(&cfg), "--seq-len", "64", "--head", "all"],
            2,
            "with --model pick one head",
        ),
        (
            vec!["--pattern", s(&window), "--model", s(&cfg), "--q-len", "8"],
            2,
            "cannot be used with",
        ),
        (vec!["--q-len", "8"], 2, "--pattern"),
        (
            vec!["--pattern", s(&window), "--q-len", "0"],
            2,
            "lengths must be positive",
        ),
        (
            vec![
                "--pattern",
                s(&window),
                "--q-len",
                "8",
                "--level",
                "tile",
                "--block-m",
                "0",
            ],
            2,
            "must be positive",
        ),
    ] {
        let mut a = vec!["viz", "--out", s(&out)];
        a.extend(args);
        let o = run(&a);
        if code == 1 {
            assert_fails(&o, code, needle);
        } else {
            // Usage errors (status 2) come from the argument parser, with its own layout.
            let stderr = common::cli::stderr(&o);
            assert_eq!(o.status.code(), Some(code), "{a:?}: {stderr}");
            assert!(stderr.contains(needle), "{a:?}: {stderr}");
        }
        assert!(!out.exists(), "{a:?} wrote a picture");
        assert_no_temp_files(&dir);
    }
}
