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

/// A uniform f16 problem of the tests' shapes.
fn problem(
    batch: usize,
    q_len: usize,
    kv_len: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
) -> AttnProblem {
    AttnProblem::new(
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
    .unwrap()
}

/// Runs `pattern` through the binary (plus `scores` for given scores) and checks out, lse and
/// the mask against the reference.
fn check(pattern: &str, batch: usize, q_len: usize, kv_len: usize, inputs: Inputs) {
    let with_scores = inputs == Inputs::Given;
    let (heads, kv_heads, d) = (2usize, 1usize, 64usize);
    let problem = problem(batch, q_len, kv_len, heads, kv_heads, d);
    let sel = component(pattern);
    let statics = AdaptivePattern::from_json(pattern)
        .unwrap()
        .unwrap()
        .statics;
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
    let reference = selection.allowed_with(true, &statics);
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

// ---- viz -----------------------------------------------------------------------------------

const GAP: usize = 4;
const WHITE: [u8; 3] = [255, 255, 255];
const DARK: [u8; 3] = [32, 32, 32];
const FORCED: [u8; 3] = [46, 160, 67];
const FULL: [u8; 3] = [49, 104, 189];
const PARTIAL: [u8; 3] = [243, 156, 18];

/// The selection component of an adaptive pattern's JSON.
fn component(pattern: &str) -> sparse_attn::adaptive::BlockSelect {
    match AdaptivePattern::from_json(pattern)
        .unwrap()
        .unwrap()
        .component
    {
        AdaptiveComponent::Select(sel) => sel,
        _ => unreachable!(),
    }
}

/// Per row of a prefill call, the forced blocks of its group (those of the group's last row).
fn forced_rows(pattern: &str, q_len: usize, kv_len: usize) -> Vec<Vec<i64>> {
    let sel = component(pattern);
    let group = |i| sparse_attn::adaptive::group_of(&sel, Grouping::Prefill, i, q_len, kv_len);
    (0..q_len)
        .map(|i| {
            let last = (i..q_len)
                .take_while(|&r| group(r) == group(i))
                .last()
                .unwrap();
            sel.forced((last + kv_len) as i64 - q_len as i64, kv_len)
        })
        .collect()
}

/// The forward tiles (block_m, block_n) of the adaptive plan for one sequence of this shape.
fn plan_tiles(
    pattern: &str,
    q_len: usize,
    kv_len: usize,
    heads: usize,
    kv_heads: usize,
) -> (usize, usize) {
    let problem = problem(1, q_len, kv_len, heads, kv_heads, 64);
    let opts = sparse_attn::AttnOptions {
        causal: true,
        ..Default::default()
    };
    let plan = sparse_attn::adaptive::AdaptivePlan::new(
        &problem,
        &component(pattern),
        Grouping::Prefill,
        &opts,
    )
    .unwrap();
    let t = plan.attn().tiles();
    (t.block_m as usize, t.block_n as usize)
}

/// Runs `viz` with `args` plus `--out`; returns the picture and stdout.
fn viz(dir: &common::tempdir::TempDir, args: &[&str]) -> (common::cli::Picture, String) {
    let out = dir.path("p.png");
    let _ = std::fs::remove_file(&out);
    let mut a = vec!["viz", "--out", s(&out)];
    a.extend_from_slice(args);
    let stdout = common::cli::assert_success(&common::cli::bin(&a), "viz");
    (common::cli::Picture::read(&out), stdout)
}

/// Checks a `viz --level both` picture of `heads` heads (two columns, 1 px per token) against
/// a token mask `[heads, q_len, kv_len]`: every token pixel non-white exactly where the mask
/// allows, green on forced blocks and dark elsewhere; every tile pixel (off the tile borders)
/// in the class the mask gives its tile (all allowed: full, some: partial, none: skipped).
/// Returns the tile classes seen.
#[allow(clippy::too_many_arguments)]
fn check_picture(
    pic: &common::cli::Picture,
    pattern: &str,
    mask: &dyn Fn(usize, usize, usize) -> bool,
    heads: usize,
    q_len: usize,
    kv_len: usize,
    (bm, bn): (usize, usize),
) -> Vec<[u8; 3]> {
    let cell_w = 2 * kv_len + GAP;
    let cols = heads.min(2);
    let rows = heads.div_ceil(2);
    assert_eq!(
        (pic.width, pic.height),
        (GAP + cols * (cell_w + GAP), GAP + rows * (q_len + GAP)),
        "{}",
        pic.description
    );
    let forced = forced_rows(pattern, q_len, kv_len);
    let b = component(pattern).block() as usize;
    let statics = AdaptivePattern::from_json(pattern)
        .unwrap()
        .unwrap()
        .statics;
    let fixed = |h: usize, i: usize, j: usize| {
        let p = (i + kv_len) as i64 - q_len as i64;
        statics
            .iter()
            .any(|c| c.admits(h, p, j as i64, kv_len, true))
    };
    let mut seen = Vec::new();
    for h in 0..heads {
        let (x0, y0) = (
            GAP + (h % 2) * (cell_w + GAP),
            GAP + (h / 2) * (q_len + GAP),
        );
        let class = |m: usize, n: usize| {
            let rows = m * bm..((m + 1) * bm).min(q_len);
            let keys = n * bn..((n + 1) * bn).min(kv_len);
            let total = rows.len() * keys.len();
            let n_allowed = rows
                .flat_map(|i| keys.clone().map(move |j| (i, j)))
                .filter(|&(i, j)| mask(h, i, j))
                .count();
            match n_allowed {
                0 => WHITE,
                n if n == total => FULL,
                _ => PARTIAL,
            }
        };
        for (i, forced) in forced.iter().enumerate() {
            for j in 0..kv_len {
                let want = if !mask(h, i, j) {
                    WHITE
                } else if forced.contains(&((j / b) as i64)) || fixed(h, i, j) {
                    FORCED
                } else {
                    DARK
                };
                assert_eq!(pic.at(x0 + j, y0 + i), want, "token: head {h} ({i}, {j})");
                if i % bm != 0 && j % bn != 0 {
                    let got = pic.at(x0 + kv_len + GAP + j, y0 + i);
                    assert_eq!(got, class(i / bm, j / bn), "tile: head {h} ({i}, {j})");
                    seen.push(got);
                }
            }
        }
    }
    seen
}

/// `viz --input` draws the selection `run` applies: its token pixels are `run --mask-out` of
/// the same sequence (forced blocks green), its tiles the classes that mask gives them.
#[test]
fn viz_input_draws_the_mask_run_applies() {
    let (batch, q_len, kv_len, heads, kv_heads, d) =
        (2usize, 160usize, 224usize, 2usize, 1usize, 64usize);
    let union = r#"{"causal": true, "components": [{"top_k": {"block": 32, "k": 1,
        "keep_local": 0, "score": "mean_k"}}, {"sliding_window": {"size": 20}}, {"sinks": {"count": 3}}]}"#;
    for pattern in [TOP_K, POOLED, GIVEN, union] {
        let problem = problem(batch, q_len, kv_len, heads, kv_heads, d);
        let mut rng = Rng::new(common::base_seed());
        let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
        let mut tensors = vec![
            tensor("q", &[batch, q_len, heads, d], &q, Dtype::F16),
            tensor("k", &[batch, kv_len, kv_heads, d], &k, Dtype::F16),
            tensor("v", &[batch, kv_len, kv_heads, d], &v, Dtype::F16),
        ];
        if pattern == GIVEN {
            // Caller scores, different for each sequence.
            let [groups, blocks] = given_shape(&component(pattern), &problem, Grouping::Prefill);
            let n = batch * heads * groups * blocks;
            let scores: Vec<f32> = (0..n).map(|i| ((i * 7919) % 101) as f32 / 10.0).collect();
            tensors.push(f32_tensor(
                "scores",
                &[batch, heads, groups, blocks],
                &scores,
            ));
        }
        let f = Fixture::new(&safetensors_bytes(&tensors), pattern);
        let mask_path = f.dir.path("mask.safetensors");
        f.succeed(
            "run",
            &f.dir.path("out.safetensors"),
            &["--mask-out", s(&mask_path)],
        );
        let (_, shape, mask) = read_tensor(&std::fs::read(&mask_path).unwrap(), "mask");
        assert_eq!(shape, vec![batch, heads, q_len, kv_len]);
        let tiles = plan_tiles(pattern, q_len, kv_len, heads, kv_heads);
        for b in 0..batch {
            let bi = b.to_string();
            let (pic, stdout) = viz(
                &f.dir,
                &[
                    "--pattern",
                    s(&f.pattern),
                    "--input",
                    s(&f.input),
                    "--batch-index",
                    &bi,
                    "--level",
                    "both",
                    "--max-px",
                    "224",
                ],
            );
            let allowed = |h: usize, i: usize, j: usize| {
                mask[((b * heads + h) * q_len + i) * kv_len + j] == 1
            };
            check_picture(&pic, pattern, &allowed, heads, q_len, kv_len, tiles);
            for h in 0..heads {
                let n = (0..q_len)
                    .flat_map(|i| (0..kv_len).map(move |j| (i, j)))
                    .filter(|&(i, j)| allowed(h, i, j))
                    .count();
                let causal: usize = (0..q_len).map(|i| i + kv_len - q_len + 1).sum();
                let text = format!("head {h} {:.2}%", 100.0 * n as f64 / causal as f64);
                assert!(stdout.contains(&text), "{text}: {stdout}");
            }
            assert!(
                pic.description.contains(&format!("sequence {b}")),
                "{}",
                pic.description
            );
        }
    }
}

/// A budget that keeps every candidate is the causal mask: full tiles below the diagonal,
/// partial ones on it, skipped ones above, as the compaction kernel lists them.
#[test]
fn viz_dense_budget_tiles_are_full_below_the_diagonal() {
    let pattern = r#"{"causal": true, "components": [{"top_k": {"block": 32, "k": 64,
        "keep_sinks": 1, "keep_local": 1, "score": "pooled_qk"}}]}"#;
    let (q_len, kv_len) = (192usize, 256usize);
    let dir = common::tempdir::TempDir::new();
    let p = dir.write("p.json", pattern);
    let kv = kv_len.to_string();
    let q = q_len.to_string();
    let (pic, _) = viz(
        &dir,
        &[
            "--pattern",
            s(&p),
            "--q-len",
            &q,
            "--kv-len",
            &kv,
            "--num-heads",
            "1",
            "--level",
            "both",
            "--max-px",
            &kv,
        ],
    );
    let causal = |_: usize, i: usize, j: usize| j <= i + kv_len - q_len;
    let tiles = plan_tiles(pattern, q_len, kv_len, 1, 1);
    let seen = check_picture(&pic, pattern, &causal, 1, q_len, kv_len, tiles);
    assert!([FULL, PARTIAL, WHITE].iter().all(|c| seen.contains(c)));
}

/// Without --input the q and k are the seeded needle field: the same seed draws the same
/// picture, another seed another one (k = 2 of up to 14 content candidates per group on the
/// diffuse head, whose q and k are fresh Gaussian draws), and the caption says so.
#[test]
fn viz_synthetic_field_is_seeded() {
    let pattern = r#"{"causal": true, "components": [{"top_k": {"block": 16, "k": 2,
        "keep_sinks": 1, "keep_local": 1, "score": "mean_k"}}]}"#;
    let dir = common::tempdir::TempDir::new();
    let p = dir.write("p.json", pattern);
    let draw = |seed: &str| {
        viz(
            &dir,
            &[
                "--pattern",
                s(&p),
                "--q-len",
                "256",
                "--seed",
                seed,
                "--max-px",
                "256",
            ],
        )
    };
    let (a, stdout) = draw("1");
    // Three heads (two field, one diffuse) in two columns, 256 px panels.
    assert_eq!(
        (a.width, a.height),
        (GAP + 2 * (256 + GAP), GAP + 2 * (256 + GAP))
    );
    for needle in ["synthetic needle-field", "seed 1", "2 diffuse", "head 2 "] {
        assert!(
            a.description.contains(needle),
            "{needle}: {}",
            a.description
        );
        assert!(stdout.contains(needle), "{needle}: {stdout}");
    }
    let (again, _) = draw("1");
    assert_eq!(a.rgb, again.rgb, "the same seed drew another picture");
    let (other, _) = draw("2");
    assert!(other.description.contains("seed 2"));
    // The diffuse head, bottom left.
    let panel = |pic: &common::cli::Picture| -> Vec<[u8; 3]> {
        (0..256)
            .flat_map(|i| (0..256).map(move |j| (i, j)))
            .map(|(i, j)| pic.at(GAP + j, 2 * GAP + 256 + i))
            .collect()
    };
    assert_ne!(
        panel(&a),
        panel(&other),
        "another seed drew the same diffuse head"
    );
    // Every row keeps its forced blocks: the sink block and its own (green).
    let forced = forced_rows(pattern, 256, 256);
    for pic in [&a, &other] {
        let px = panel(pic);
        for (i, f) in forced.iter().enumerate() {
            let g = (i / 16) as i64;
            assert_eq!(f, &if g == 0 { vec![0] } else { vec![0, g] });
            assert_eq!(px[i * 256], FORCED, "row {i}: sink");
            assert_eq!(px[i * 256 + i], FORCED, "row {i}: diagonal");
            let chosen = (0..256).filter(|&j| px[i * 256 + j] == DARK).count();
            assert!(chosen <= 2 * 16, "row {i}: {chosen} content-chosen keys");
        }
    }
}

/// Bad requests fail with one line and write no picture.
#[test]
fn viz_adaptive_refusals() {
    let q = vec![f16::ZERO; 2 * 64 * 2 * 64];
    let kv = vec![f16::ZERO; 2 * 64 * 64];
    let input = safetensors_bytes(&[
        tensor("q", &[2, 64, 2, 64], &q, Dtype::F16),
        tensor("k", &[2, 64, 1, 64], &kv, Dtype::F16),
        tensor("v", &[2, 64, 1, 64], &kv, Dtype::F16),
    ]);
    let f = Fixture::new(&input, TOP_K);
    let given = f.dir.write("given.json", GIVEN);
    let lsh = f.dir.write(
        "lsh.json",
        r#"{"causal": true, "components": [{"lsh": {"buckets": 4, "rounds": 1, "seed": 1}}]}"#,
    );
    let window = f.dir.write(
        "w.json",
        r#"{"causal": true, "components": [{"sliding_window": {"size": 4}}]}"#,
    );
    let (p, i) = (s(&f.pattern), s(&f.input));
    let out = f.dir.path("p.png");
    for (args, code, needle) in [
        (
            vec!["--pattern", s(&given), "--q-len", "64"],
            2,
            "pass --input",
        ),
        (
            vec!["--pattern", s(&given), "--input", i],
            1,
            "`scores` tensor",
        ),
        (
            vec!["--pattern", p, "--input", i, "--batch-index", "2"],
            1,
            "--batch-index 2 is out of range",
        ),
        (
            vec!["--pattern", p, "--input", i, "--q-len", "32"],
            1,
            "--q-len 32 does not match",
        ),
        (
            vec!["--pattern", p, "--input", i, "--num-heads", "3"],
            1,
            "--num-heads 3 does not match",
        ),
        (
            vec!["--pattern", p, "--input", i, "--head", "2"],
            2,
            "--head 2 is out of range",
        ),
        (
            vec!["--pattern", p, "--input", i, "--seed", "3"],
            2,
            "cannot be used with",
        ),
        (
            vec!["--pattern", p, "--q-len", "64", "--batch-index", "0"],
            2,
            "--input",
        ),
        (vec!["--pattern", p, "--q-len", "40000"], 2, "at most 32768"),
        (
            vec!["--pattern", p, "--q-len", "64", "--kv-len", "32"],
            2,
            "must be at most --kv-len",
        ),
        (
            vec!["--pattern", p, "--q-len", "64", "--block-m", "64"],
            2,
            "tiles are those of its plan",
        ),
        (
            vec!["--pattern", s(&window), "--q-len", "64", "--seed", "1"],
            2,
            "static pattern",
        ),
        (
            vec!["--pattern", s(&lsh), "--q-len", "64"],
            1,
            "not yet supported",
        ),
        (
            vec!["--pattern", p, "--q-len", "4"],
            2,
            "q and k are synthetic",
        ),
    ] {
        let mut a = vec!["viz", "--out", s(&out)];
        a.extend(&args);
        let o = common::cli::bin(&a);
        let stderr = common::cli::stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: `{needle}` not in {stderr}"
        );
        if code == 1 {
            assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        }
        assert!(!out.exists(), "{args:?} wrote a picture");
    }
}
