//! `run` with adaptive patterns (docs/adaptive.md) on the emulator, selection made on the
//! device: out and lse against the f64 reference under the selection the run applied (its
//! `--mask-out`, per sequence), which equals the reference's own selection exactly on
//! exact-arithmetic inputs and for caller `scores` (`score: given`); the refusals (lsh,
//! unions, CUDA, missing scores) as one-line errors that write nothing.

mod common;

use common::cli::{read_output, read_tensor, s, safetensors_bytes, tensor, Fixture, Tensor};
use common::{assert_lse_close, max_abs, max_abs_diff, random_qkv, widen, Rng};
use half::f16;
use safetensors::tensor::Dtype;
use sparse_attn::adaptive::{
    given_shape, AdaptiveComponent, AdaptivePattern, GivenScores, Grouping, SelectInputs, Selection,
};
use sparse_attn::reference::{attention, RefInputs};
use sparse_attn::{AttnProblem, DType, SeqLens};

const TOP_K: &str = r#"{"causal": true, "components": [{"top_k": {"block": 32, "k": 2,
    "keep_sinks": 1, "keep_local": 1, "score": "mean_k"}}]}"#;
const POOLED: &str = r#"{"causal": true, "components": [{"top_k": {"block": 32, "k": 2,
    "keep_sinks": 1, "keep_local": 1, "score": "pooled_qk", "share": "kv_group"}}]}"#;
const GIVEN: &str = r#"{"causal": true, "components": [{"top_p": {"block": 64, "p": 0.5,
    "max_k": 3, "keep_sinks": 0, "keep_local": 1, "score": "given"}}]}"#;

fn f32_tensor(name: &'static str, shape: &[usize], x: &[f32]) -> Tensor {
    Tensor {
        name,
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// How a case's inputs are drawn and its selection checked.
#[derive(Clone, Copy, PartialEq)]
enum Inputs {
    /// Random floats: the device's f32 scores may order near-ties differently from the f64
    /// reference (the contract's margin rule), so out and lse are checked against the
    /// reference under the selection the run applied (its `--mask-out`).
    Float,
    /// The contract's exact-arithmetic values and scale 1/16: the applied selection must
    /// equal the reference's exactly.
    Exact,
    /// Float inputs with caller scores: the selection is exact as well.
    Given,
}

/// Runs `pattern` through the binary (plus `scores` for given scores) and checks out, lse and
/// the mask against the reference.
fn check(pattern: &str, batch: usize, q_len: usize, kv_len: usize, inputs: Inputs) {
    let with_scores = inputs == Inputs::Given;
    let (heads, kv_heads, d) = (2usize, 1usize, 64usize);
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch,
            q_len,
            kv_len,
        },
        heads,
        kv_heads,
        d as u32,
        DType::F16,
    )
    .unwrap();
    let parsed = AdaptivePattern::from_json(pattern).unwrap().unwrap();
    let AdaptiveComponent::Select(sel) = parsed.component else {
        unreachable!()
    };
    let mut rng = Rng::new(common::base_seed());
    let (mut q, mut k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
    if inputs == Inputs::Exact {
        q = common::exact_tensor(&mut rng, q.len());
        k = common::exact_tensor(&mut rng, k.len());
    }
    let scale = if inputs == Inputs::Exact {
        1.0 / 16.0
    } else {
        1.0 / (d as f32).sqrt()
    };
    let [groups, blocks] = given_shape(&sel, &problem, Grouping::Prefill);
    let scores: Vec<f32> = (0..batch * heads * groups * blocks)
        .map(|i| ((i * 7919) % 101) as f32 / 10.0)
        .collect();
    let mut tensors = vec![
        tensor("q", &[batch, q_len, heads, d], &q, Dtype::F16),
        tensor("k", &[batch, kv_len, kv_heads, d], &k, Dtype::F16),
        tensor("v", &[batch, kv_len, kv_heads, d], &v, Dtype::F16),
    ];
    if with_scores {
        tensors.push(f32_tensor(
            "scores",
            &[batch, heads, groups, blocks],
            &scores,
        ));
    }
    let f = Fixture::new(&safetensors_bytes(&tensors), pattern);
    let output = f.dir.path("out.safetensors");
    let mask_path = f.dir.path("mask.safetensors");
    let scale_arg = scale.to_string();
    let stdout = f.succeed(
        "run",
        &output,
        &["--mask-out", s(&mask_path), "--scale", &scale_arg],
    );
    assert!(stdout.contains("density"), "{stdout}");

    let (qf, kf, vf) = (widen(&q), widen(&k), widen(&v));
    let selection = Selection::compute(
        &problem,
        &sel,
        &SelectInputs {
            q: &qf,
            k: &kf,
            scale,
            grouping: Grouping::Prefill,
            given: with_scores.then_some(GivenScores {
                scores: &scores,
                heads,
            }),
        },
    )
    .unwrap();
    let (dtype, shape, mask) = read_tensor(&std::fs::read(&mask_path).unwrap(), "mask");
    assert_eq!(dtype, Dtype::U8);
    assert_eq!(shape, vec![batch, heads, q_len, kv_len]);
    let applied = |b: usize, h: usize, i: usize, j: usize| {
        mask[((b * heads + h) * q_len + i) * kv_len + j] == 1
    };
    let reference = selection.allowed_with(true, &parsed.statics);
    let mut masked = 0;
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..q_len {
                for j in 0..kv_len {
                    let causal = j + q_len <= i + kv_len;
                    assert!(!applied(b, h, i, j) || causal, "beyond the causal limit");
                    if inputs != Inputs::Float {
                        assert_eq!(
                            applied(b, h, i, j),
                            reference(b, h, i, j),
                            "b {b} h {h} i {i} j {j}"
                        );
                    }
                    masked += (causal && !applied(b, h, i, j)) as usize;
                }
            }
        }
    }
    assert!(masked > 0, "the selection masked nothing");
    let want = attention(
        &problem,
        &RefInputs {
            q: &qf,
            k: &kf,
            v: &vf,
            scale,
            softcap: 0.0,
            sink_logits: None,
            alibi_slopes: None,
        },
        applied,
    );
    let got = read_output(&output, Dtype::F16);
    let (err, max_ref) = (max_abs_diff(&got.out, &want.out), max_abs(&want.out));
    assert!(
        err <= 1e-2 * max_ref,
        "out error {err:.3e} vs {max_ref:.3e}"
    );
    assert_lse_close("lse", &got.lse, &want.lse, 1e-2);
}

#[test]
fn run_top_k_mean_k_with_mask_out() {
    check(TOP_K, 2, 150, 150, Inputs::Float);
}

#[test]
fn run_pooled_qk_kv_group_selects_exactly() {
    check(POOLED, 2, 128, 192, Inputs::Exact);
}

/// A selection in a union with a token window and sink tokens: the applied mask is the
/// reference union's, exactly.
#[test]
fn run_union_with_a_window_and_sinks() {
    let union = r#"{"causal": true, "components": [{"sliding_window": {"size": 24}},
        {"top_k": {"block": 32, "k": 1, "keep_local": 0, "score": "minmax"}},
        {"sinks": {"count": 3}}]}"#;
    check(union, 1, 130, 200, Inputs::Exact);
}

#[test]
fn run_top_p_given_scores() {
    check(GIVEN, 1, 100, 260, Inputs::Given);
}

#[test]
fn refusals_are_one_line_errors() {
    let q = vec![f16::ZERO; 64 * 2 * 64];
    let kv = vec![f16::ZERO; 64 * 64];
    let input = safetensors_bytes(&[
        tensor("q", &[1, 64, 2, 64], &q, Dtype::F16),
        tensor("k", &[1, 64, 1, 64], &kv, Dtype::F16),
        tensor("v", &[1, 64, 1, 64], &kv, Dtype::F16),
    ]);
    for (pattern, extra, needle) in [
        (
            r#"{"causal": true, "components": [{"lsh": {"buckets": 4, "rounds": 1, "seed": 1}}]}"#,
            &["--backend", "emulator"][..],
            "not yet supported",
        ),
        (
            r#"{"causal": true, "components": [{"top_k": {"block": 64, "k": 1}}, {"dilated": {"stride": 4}}]}"#,
            &["--backend", "emulator"][..],
            "beside an adaptive one",
        ),
        (TOP_K, &["--backend", "cuda"][..], "not yet supported"),
        (GIVEN, &["--backend", "emulator"][..], "given"),
        (
            r#"{"causal": true, "components": [{"top_k": {"block": 48, "k": 1}}]}"#,
            &["--backend", "emulator"][..],
            "p.json",
        ),
    ] {
        let f = Fixture::new(&input, pattern);
        f.expect_failure("run", extra, needle);
    }
}

#[test]
fn plan_reports_the_density_a_budget_fixes() {
    let dir = common::tempdir::TempDir::new();
    let p = dir.write(
        "p.json",
        r#"{"causal": true, "components": [{"top_k": {"block": 64, "k": 1, "keep_sinks": 1, "keep_local": 1}}]}"#,
    );
    let o = common::cli::bin(&["plan", "--pattern", s(&p), "--seq-len", "256", "--json"]);
    let out = common::cli::assert_success(&o, "plan --pattern");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // As counted by hand in src/adaptive/budget.rs: 4 diagonal blocks, 5 full ones.
    let want = 4 * 64 * 65 / 2 + 5 * 64 * 64;
    assert_eq!(v["allowed_pairs_min"], want);
    assert_eq!(v["allowed_pairs_max"], want);
    assert_eq!(v["dense_pairs"], 256 * 257 / 2);
    let o = common::cli::bin(&["plan", "--pattern", s(&p), "--seq-len", "256"]);
    assert!(common::cli::assert_success(&o, "plan").contains("density"));
    // Beside a window of 8: groups 1 and 2 select every block already; group 3 chooses one
    // of blocks 1 and 2, and when it is block 1 the window adds 7 - r keys of block 2 to its
    // rows r = 0..6 (28 pairs), when it is block 2 nothing.
    let u = dir.write(
        "u.json",
        r#"{"causal": true, "components": [{"top_k": {"block": 64, "k": 1, "keep_sinks": 1, "keep_local": 1}}, {"sliding_window": {"size": 8}}]}"#,
    );
    let o = common::cli::bin(&["plan", "--pattern", s(&u), "--seq-len", "256", "--json"]);
    let v: serde_json::Value =
        serde_json::from_str(&common::cli::assert_success(&o, "plan --pattern union")).unwrap();
    assert_eq!(v["allowed_pairs_min"], want);
    assert_eq!(v["allowed_pairs_max"], want + 28);
    assert_eq!(v["statics"][0]["sliding_window"]["size"], 8);
    let stat = dir.write("s.json", r#"{"causal": true, "components": []}"#);
    let o = common::cli::bin(&["plan", "--pattern", s(&stat), "--seq-len", "256"]);
    common::cli::assert_fails(&o, 1, "not an adaptive pattern");
}

/// `decode` with an adaptive pattern: the prefill rows equal the reference of a prefill call
/// (prefill grouping), every later row the reference of its own decode call (`q_len` 1 over
/// `p + 1` keys, a singleton group), with the device's selections (exact inputs: they equal
/// the reference's).
#[test]
fn decode_matches_the_step_by_step_reference() {
    let pattern = r#"{"causal": true, "components": [{"top_k": {"block": 16, "k": 1,
        "keep_local": 1, "score": "minmax", "share": "kv_group"}}]}"#;
    let (batch, t, prefill, heads, kv_heads, d) =
        (2usize, 120usize, 80usize, 2usize, 1usize, 64usize);
    let mut rng = Rng::new(common::base_seed());
    let q: Vec<f16> = common::exact_tensor(&mut rng, batch * t * heads * d);
    let k: Vec<f16> = common::exact_tensor(&mut rng, batch * t * kv_heads * d);
    let v: Vec<f16> = common::random_tensor(&mut rng, batch * t * kv_heads * d, 1.0);
    let input = safetensors_bytes(&[
        tensor("q", &[batch, t, heads, d], &q, Dtype::F16),
        tensor("k", &[batch, t, kv_heads, d], &k, Dtype::F16),
        tensor("v", &[batch, t, kv_heads, d], &v, Dtype::F16),
    ]);
    let f = Fixture::new(&input, pattern);
    let output = f.dir.path("out.safetensors");
    let prefill_arg = prefill.to_string();
    f.succeed(
        "decode",
        &output,
        &["--prefill", &prefill_arg, "--page-size", "16"],
    );
    let got = read_output(&output, Dtype::F16);
    assert_eq!(got.out_shape, vec![batch, t, heads, d]);
    let value: serde_json::Value = serde_json::from_str(pattern).unwrap();
    let AdaptiveComponent::Select(sel) =
        AdaptiveComponent::from_json(&value["components"][0].to_string()).unwrap()
    else {
        unreachable!()
    };
    let scale = 1.0 / (d as f32).sqrt();
    // Sequence b's rows `rows` of x (`n` heads), widened.
    let part = |x: &[f16], b: usize, rows: std::ops::Range<usize>, n: usize| -> Vec<f32> {
        widen(&x[(b * t + rows.start) * n * d..(b * t + rows.end) * n * d])
    };
    // (call lengths per sequence, first row of the call, grouping)
    let mut calls = vec![(vec![(prefill, prefill); batch], 0usize, Grouping::Prefill)];
    for i in prefill..t {
        calls.push((vec![(1, i + 1); batch], i, Grouping::Decode));
    }
    for (lens, first, grouping) in calls {
        let seqs = SeqLens::varlen_from_lens(&lens).unwrap();
        let problem = AttnProblem::new(seqs, heads, kv_heads, d as u32, DType::F16).unwrap();
        let (q_len, kv_len) = lens[0];
        let qf: Vec<f32> = (0..batch)
            .flat_map(|b| part(&q, b, first..first + q_len, heads))
            .collect();
        let kf: Vec<f32> = (0..batch)
            .flat_map(|b| part(&k, b, 0..kv_len, kv_heads))
            .collect();
        let vf: Vec<f32> = (0..batch)
            .flat_map(|b| part(&v, b, 0..kv_len, kv_heads))
            .collect();
        let s = Selection::compute(
            &problem,
            &sel,
            &SelectInputs {
                q: &qf,
                k: &kf,
                scale,
                grouping,
                given: None,
            },
        )
        .unwrap();
        let want = attention(
            &problem,
            &RefInputs {
                q: &qf,
                k: &kf,
                v: &vf,
                scale,
                softcap: 0.0,
                sink_logits: None,
                alibi_slopes: None,
            },
            s.allowed(true),
        );
        let total = batch * q_len;
        for b in 0..batch {
            for i in 0..q_len {
                for h in 0..heads {
                    let at = ((b * t + first + i) * heads + h) * d;
                    let w = &want.out[((b * q_len + i) * heads + h) * d..][..d];
                    let err = got.out[at..at + d]
                        .iter()
                        .zip(w)
                        .fold(0.0f64, |m, (&g, &r)| m.max((g as f64 - r).abs()));
                    assert!(
                        err < 1e-2,
                        "row {} of sequence {b}, head {h}: error {err}",
                        first + i
                    );
                    let l = got.lse[(b * heads + h) * t + first + i] as f64;
                    let lw = want.lse[h * total + b * q_len + i];
                    assert!(
                        (l - lw).abs() < 1e-2 * lw.abs().max(1.0),
                        "lse row {}",
                        first + i
                    );
                }
            }
        }
    }
}
