//! Learnable sink logits (gpt-oss) and ALiBi (BLOOM, MPT) on the CPU emulator against the f64
//! reference: each alone and together, with causal masks, windows, sink tokens, block masks
//! and the tile views of dilated and global patterns, softcap, varlen, GQA packing, split-KV
//! (the sink term entering once, in the combine), paged decode, head_dim 64, 128 and 256, f16
//! and bf16; empty rows (out 0, lse = the sink logit); bad inputs; and the top-left ALiBi
//! canary.

mod common;

use common::paged::build_pool;
use common::{
    assert_matches, assert_same_bits, base_seed, emu_run, random_qkv, reference_for, tol, Rng,
};
use half::{bf16, f16};
use sparse_attn::attention::PagedKv;
use sparse_attn::emu::Schedule;
use sparse_attn::kv_cache::{decode_emulated, DecodeConfig};
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::reference::RefOutput;
use sparse_attn::shape::alibi_slopes;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, Element, EmuRun, Error, SeqLens};

const CAUSAL: &str = r#"{"causal": true, "components": []}"#;
const DENSE: &str = r#"{"causal": false, "components": []}"#;
const WINDOW: &str = r#"{"causal": true, "components": [{"sliding_window": {"size": 48}}]}"#;
const STREAMING: &str = r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 40}}]}"#;
const BLOCK_MASK: &str = r#"{"causal": false, "components": [{"block_mask": {"block_q": 32, "block_k": 48, "mask": [[1,0,1],[0,1,0],[1,1,0],[0,0,1]]}}]}"#;

fn uniform(batch: usize, q_len: usize, kv_len: usize) -> SeqLens {
    SeqLens::Uniform {
        batch,
        q_len,
        kv_len,
    }
}

/// `n` sink logits in [-3, 3): some below, some above the rows' typical LSE.
fn random_sinks(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| 3.0 * rng.unit()).collect()
}

/// Options with sink logits and/or ALiBi slopes.
fn opts(sinks: Option<Vec<f32>>, slopes: Option<Vec<f32>>) -> AttnOptions {
    AttnOptions {
        sink_logits: sinks,
        alibi_slopes: slopes,
        ..Default::default()
    }
}

/// Whether row `i` of head `h`, sequence `b` has no allowed key.
fn is_empty(plan: &AttnPlan, b: usize, h: usize, i: usize) -> bool {
    let (_, kv_len) = plan.problem().seqs().lens(b);
    !(0..kv_len).any(|j| plan.allowed(b, h, i, j))
}

/// The lse index of (b, h, i) (uniform `[batch, heads, q_len]`, varlen `[heads, total_q]`).
fn lse_index(problem: &AttnProblem, b: usize, h: usize, i: usize) -> usize {
    let (q_len, _) = problem.seqs().lens(b);
    let (q0, _) = problem.seqs().offsets(b);
    match problem.seqs() {
        SeqLens::Varlen { .. } => h * problem.seqs().totals().0 + q0 + i,
        SeqLens::Uniform { .. } => (b * problem.num_heads() + h) * q_len + i,
    }
}

/// Checks the empty rows of a plan with sink logits: out exactly 0, lse the head's sink.
/// Returns how many there were.
fn check_empty_rows<T: Element>(what: &str, plan: &AttnPlan, out: &[T], lse: &[f32]) -> usize {
    let p = plan.problem();
    let sinks = plan.sink_logits().expect("a plan with sink logits");
    let (hq, d) = (p.num_heads(), p.head_dim().get() as usize);
    let mut n = 0;
    for b in 0..p.seqs().batch() {
        let (q_len, _) = p.seqs().lens(b);
        let (q0, _) = p.seqs().offsets(b);
        for h in 0..hq {
            for i in 0..q_len {
                if !is_empty(plan, b, h, i) {
                    continue;
                }
                n += 1;
                let row = &out[((q0 + i) * hq + h) * d..][..d];
                assert!(
                    row.iter().all(|x| x.to_f32() == 0.0),
                    "{what}: empty row (b {b}, h {h}, i {i}) is not exactly zero"
                );
                let got = lse[lse_index(p, b, h, i)];
                assert!(
                    (got - sinks[h]).abs() <= 1e-5 * sinks[h].abs().max(1.0),
                    "{what}: empty row (b {b}, h {h}, i {i}) has lse {got}, want the sink {}",
                    sinks[h]
                );
            }
        }
    }
    n
}

/// Runs `plan` on random inputs and checks it against the reference (amplitude `amp` of q
/// and k); returns the inputs' reference and the outputs.
fn check_plan<T: Element>(
    what: &str,
    plan: &AttnPlan,
    seed: u64,
    amp: f32,
) -> (RefOutput, Vec<T>, Vec<f32>) {
    let problem = plan.problem();
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<T>(&mut rng, problem, amp, 1.0);
    let (out, lse) = plan
        .run_emulated(&q, &k, &v, &emu_run())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let want = reference_for(plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
    let what = format!("{what} ({}, seed {seed})", T::DTYPE.name());
    assert_matches(&what, problem, &out, &lse, &want, tol(T::DTYPE));
    if plan.sink_logits().is_some() {
        check_empty_rows(&what, plan, &out, &lse);
    }
    (want, out, lse)
}

fn plan(
    seqs: SeqLens,
    heads: (usize, usize),
    head_dim: u32,
    dtype: sparse_attn::DType,
    pattern: &str,
    o: &AttnOptions,
) -> AttnPlan {
    let problem = AttnProblem::new(seqs, heads.0, heads.1, head_dim, dtype).unwrap();
    let set = HeadPatterns::from_json(pattern).unwrap();
    AttnPlan::with_patterns(&problem, &set, o).unwrap()
}

#[test]
fn sink_logits_with_and_without_split_kv_every_head_dim() {
    let seed = base_seed();
    for (n, (hd, seqs)) in [
        (64, uniform(2, 70, 300)),
        (128, uniform(1, 40, 330)),
        (256, uniform(1, 20, 200)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = Rng::new(seed + n as u64);
        let sinks = random_sinks(&mut rng, 4);
        for dtype in [sparse_attn::DType::F16, sparse_attn::DType::BF16] {
            let p = plan(
                seqs.clone(),
                (4, 2),
                hd,
                dtype,
                CAUSAL,
                &opts(Some(sinks.clone()), None),
            );
            for splits in [1, 3] {
                let p = p.clone().with_num_splits(splits).unwrap();
                let what = format!("sinks hd{hd} {seqs:?} splits {splits}");
                match dtype {
                    sparse_attn::DType::F16 => {
                        check_plan::<f16>(&what, &p, seed + 7, 1.0);
                    }
                    sparse_attn::DType::BF16 => {
                        check_plan::<bf16>(&what, &p, seed + 7, 1.0);
                    }
                }
            }
        }
    }
}

#[test]
fn split_and_unsplit_runs_agree_and_the_sink_enters_once() {
    // Many splits over a long row: a term added per split instead of once would change the
    // output and the lse by a factor the tolerance cannot hide (5 extra sink terms).
    let seed = base_seed();
    let sinks = vec![1.5, -0.5];
    let p = plan(
        uniform(1, 3, 600),
        (2, 2),
        64,
        sparse_attn::DType::F16,
        DENSE,
        &opts(Some(sinks), None),
    );
    let (want, one, one_lse) = check_plan::<f16>("unsplit", &p, seed, 0.3);
    let split = p.clone().with_num_splits(6).unwrap();
    let (_, six, six_lse) = check_plan::<f16>("6 splits", &split, seed, 0.3);
    assert!(common::rel_error(&six, &want.out) <= tol(sparse_attn::DType::F16));
    assert!(common::max_abs_diff(&six_lse, &one_lse) <= 1e-4);
    assert!(common::max_abs_diff(&six, &one) <= 2e-3);
}

#[test]
fn empty_rows_get_zero_output_and_the_sink_as_lse() {
    // Causal with q_len > kv_len: the first rows see no key; a block mask leaves whole query
    // blocks and heads' rows empty. With and without splits, unpacked and GQA-packed.
    let seed = base_seed();
    let mut rng = Rng::new(seed);
    let sinks = random_sinks(&mut rng, 4);
    for (pattern, seqs) in [
        (CAUSAL, uniform(2, 150, 40)),
        (BLOCK_MASK, uniform(1, 130, 150)),
    ] {
        for splits in [1, 2] {
            let p = plan(
                seqs.clone(),
                (4, 1),
                64,
                sparse_attn::DType::F16,
                pattern,
                &opts(Some(sinks.clone()), None),
            )
            .with_num_splits(splits)
            .unwrap();
            let what = format!("{pattern} {seqs:?} splits {splits}");
            let mut r = Rng::new(seed + 1);
            let problem = p.problem().clone();
            let (q, k, v) = random_qkv::<f16>(&mut r, &problem, 1.0, 1.0);
            let (out, lse) = p.run_emulated(&q, &k, &v, &emu_run()).unwrap();
            let n = check_empty_rows(&what, &p, &out, &lse);
            assert!(n > 0, "{what}: the case has no empty row");
            let want = reference_for(&p, &q, &k, &v, |b, h, i, j| p.allowed(b, h, i, j));
            assert_matches(&what, &problem, &out, &lse, &want, tol(problem.dtype()));
        }
    }
    // Decode rows that see nothing (an all-zero block mask), GQA-packed, split.
    let none = r#"{"causal": true, "components": [{"block_mask": {"block_q": 64, "block_k": 64, "mask": [[0]]}}]}"#;
    let p = plan(
        uniform(2, 1, 200),
        (4, 1),
        128,
        sparse_attn::DType::BF16,
        none,
        &opts(Some(sinks.clone()), None),
    );
    assert!(p.gqa_pack() > 1);
    for splits in [1, 4] {
        let p = p.clone().with_num_splits(splits).unwrap();
        let mut r = Rng::new(seed + 2);
        let (q, k, v) = random_qkv::<bf16>(&mut r, p.problem(), 1.0, 1.0);
        let (out, lse) = p.run_emulated(&q, &k, &v, &emu_run()).unwrap();
        assert_eq!(check_empty_rows("all empty", &p, &out, &lse), 8);
    }
}

#[test]
fn sink_logits_far_above_and_below_the_scores() {
    // A sink of 40 swamps every row (out ~ 0, lse ~ 40) without overflowing; one of -40
    // changes nothing measurable. Both through the forward kernel and the combine.
    let seed = base_seed();
    for splits in [1, 3] {
        let p = plan(
            uniform(1, 90, 260),
            (2, 1),
            64,
            sparse_attn::DType::F16,
            CAUSAL,
            &opts(Some(vec![40.0, -40.0]), None),
        )
        .with_num_splits(splits)
        .unwrap();
        let (want, out, lse) = check_plan::<f16>("extreme sinks", &p, seed, 1.0);
        assert!(out.iter().all(|x| x.to_f32().is_finite()));
        let q_len = 90;
        assert!(lse[..q_len]
            .iter()
            .all(|&l| (l - 40.0).abs() < 1e-3 && l.is_finite()));
        assert!(common::max_abs(&want.out[..64]) < 1e-12);
    }
}

#[test]
fn alibi_with_causal_masks_and_bottom_right_positions_every_head_dim() {
    // q_len < kv_len (chunked prefill, decode) puts the queries at the end: the distances
    // are to p = i + kv_len - q_len, not to i. The standard slopes, and steep ones.
    let seed = base_seed();
    for (n, (hd, seqs, heads)) in [
        (64, uniform(1, 150, 190), (4, 2)),
        (64, uniform(2, 7, 130), (4, 4)),
        (128, uniform(1, 70, 140), (4, 1)),
        (256, uniform(1, 33, 100), (2, 2)),
    ]
    .into_iter()
    .enumerate()
    {
        for (m, slopes) in [alibi_slopes(heads.0), vec![0.9; heads.0]]
            .into_iter()
            .enumerate()
        {
            let o = opts(None, Some(slopes));
            let what = format!("alibi hd{hd} {seqs:?}");
            let s = seed + (10 * n + m) as u64;
            let p = plan(seqs.clone(), heads, hd, sparse_attn::DType::F16, CAUSAL, &o);
            check_plan::<f16>(&what, &p, s, 1.0);
            let p = plan(seqs.clone(), heads, hd, sparse_attn::DType::BF16, DENSE, &o);
            check_plan::<bf16>(&what, &p, s, 1.0);
        }
    }
}

#[test]
fn alibi_with_windows_sinks_and_sink_logits() {
    let seed = base_seed();
    let heads = 8;
    for (n, pattern) in [WINDOW, STREAMING].into_iter().enumerate() {
        for (m, hd) in [64u32, 128].into_iter().enumerate() {
            let mut rng = Rng::new(seed + n as u64);
            let both = opts(
                Some(random_sinks(&mut rng, heads)),
                Some(alibi_slopes(heads)),
            );
            let p = plan(
                uniform(1, 160, 200),
                (heads, 2),
                hd,
                sparse_attn::DType::BF16,
                pattern,
                &both,
            );
            check_plan::<bf16>(pattern, &p, seed + (2 * n + m) as u64, 1.0);
        }
    }
}

#[test]
fn alibi_with_a_block_mask_and_every_tile_view() {
    // Block masks run the interpreted mask; dilated heads strided rows and keys; global tokens
    // gathered rows and gathered key tiles; chunked and BigBird their own tiles. Varlen, so
    // each sequence has its own position offset.
    let seed = base_seed();
    let seqs = SeqLens::varlen_from_lens(&[(130, 150), (20, 90)]).unwrap();
    let heads = 4;
    for (n, pattern) in [
        BLOCK_MASK,
        r#"{"causal": true, "components": [{"dilated": {"stride": 3}}]}"#,
        r#"{"causal": true, "components": [{"dilated": {"stride": 2}}, {"sinks": {"count": 2}}, {"global": {"tokens": [5, 70]}}]}"#,
        r#"{"causal": false, "components": [{"sliding_window": {"left": 8, "right": 8}}, {"global": {"tokens": [0, 1, 77]}}]}"#,
        r#"{"causal": true, "components": [{"chunked": {"size": 40}}]}"#,
        r#"{"causal": false, "components": [{"bigbird": {"block": 16, "window_blocks": 3, "global_blocks": 1, "random_blocks": 2, "seed": 7}}]}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = Rng::new(seed + n as u64);
        let o = opts(
            Some(random_sinks(&mut rng, heads)),
            Some(alibi_slopes(heads)),
        );
        let p = plan(seqs.clone(), (heads, 2), 64, sparse_attn::DType::F16, pattern, &o);
        check_plan::<f16>(pattern, &p, seed + n as u64, 1.0);
    }
}

#[test]
fn alibi_after_the_softcap() {
    // Large logits make the cap bite: the bias is added to c * tanh(s / c) (FlashAttention-2's
    // order), not capped with the scores; the reference follows that definition, so an
    // ordering bug shows as an error far above the tolerance.
    let seed = base_seed();
    for (hd, dtype) in [
        (64u32, sparse_attn::DType::F16),
        (128, sparse_attn::DType::BF16),
    ] {
        let o = AttnOptions {
            softcap: Some(5.0),
            scale: Some(0.5),
            ..opts(None, Some(vec![0.5, 0.25, 0.125, 0.0625]))
        };
        let p = plan(uniform(1, 100, 120), (4, 2), hd, dtype, CAUSAL, &o);
        match dtype {
            sparse_attn::DType::F16 => {
                check_plan::<f16>("softcap + alibi", &p, seed, 4.0);
            }
            sparse_attn::DType::BF16 => {
                check_plan::<bf16>("softcap + alibi", &p, seed, 4.0);
            }
        }
    }
}

#[test]
fn gqa_packed_decode_with_sinks_and_alibi() {
    // Decode rows of 8 heads over 2 kv heads: each packed block holds 4 heads, each with its
    // own sink logit and slope (row r is head h0 + r % 4).
    let seed = base_seed();
    let mut rng = Rng::new(seed);
    let heads = 8;
    let o = opts(
        Some(random_sinks(&mut rng, heads)),
        Some(alibi_slopes(heads)),
    );
    for (hd, seqs) in [
        (64u32, uniform(3, 1, 300)),
        (
            128,
            SeqLens::varlen_from_lens(&[(2, 150), (1, 400)]).unwrap(),
        ),
        (256, uniform(1, 3, 250)),
    ] {
        for pattern in [CAUSAL, STREAMING] {
            let p = plan(
                seqs.clone(),
                (heads, 2),
                hd,
                sparse_attn::DType::F16,
                pattern,
                &o,
            );
            assert_eq!(p.gqa_pack(), 4, "decode packs the group");
            check_plan::<f16>(&format!("packed hd{hd} {pattern}"), &p, seed + 1, 1.0);
            let unpacked = p.clone().with_gqa_packing(false).unwrap();
            check_plan::<f16>(
                &format!("unpacked hd{hd} {pattern}"),
                &unpacked,
                seed + 1,
                1.0,
            );
        }
    }
}

#[test]
fn paged_reads_change_no_bit() {
    // The same plan through a shuffled paged pool and through contiguous K/V.
    let seed = base_seed();
    let seqs = SeqLens::varlen_from_lens(&[(1, 300), (2, 77)]).unwrap();
    let heads = 4;
    let mut rng = Rng::new(seed);
    let o = opts(
        Some(random_sinks(&mut rng, heads)),
        Some(alibi_slopes(heads)),
    );
    for hd in [64u32, 128, 256] {
        let p = plan(
            seqs.clone(),
            (heads, 1),
            hd,
            sparse_attn::DType::BF16,
            CAUSAL,
            &o,
        );
        assert!(p.num_splits() > 1, "split by default");
        let (_, out, lse) = check_plan::<bf16>("paged", &p, seed, 1.0);
        let mut r = Rng::new(seed);
        let (q, k, v) = random_qkv::<bf16>(&mut r, p.problem(), 1.0, 1.0);
        let pool = build_pool(&mut rng, &seqs, 1, hd as usize, &k, &v, 16, 0, 0);
        let kv = PagedKv {
            k_pages: &pool.k,
            v_pages: &pool.v,
            block_table: &pool.table,
            layout: pool.layout,
        };
        let (pout, plse) = p.run_emulated_paged(&q, &kv, &emu_run()).unwrap();
        assert_same_bits(&format!("hd{hd} paged out"), &pout, &out);
        assert_same_bits(&format!("hd{hd} paged lse"), &plse, &lse);
    }
}

#[test]
fn paged_decode_driver_equals_the_reference() {
    // Chunked prefill then one token at a time through a ring-buffered cache (sinks + window):
    // every step's plan carries the layer's sink logits and slopes.
    let seed = base_seed();
    let (heads, kv_heads, t) = (4usize, 2usize, 90usize);
    for hd in [64u32, 128] {
        let problem = AttnProblem::new(
            uniform(2, t, t),
            heads,
            kv_heads,
            hd,
            sparse_attn::DType::F16,
        )
        .unwrap();
        let mut rng = Rng::new(seed + hd as u64);
        let sinks = random_sinks(&mut rng, heads);
        let slopes = alibi_slopes(heads);
        let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
        let set = HeadPatterns::from_json(STREAMING).unwrap();
        let config = DecodeConfig {
            page_size: 8,
            prefill: 50,
            chunk: Some(20),
            sink_logits: Some(sinks.clone()),
            alibi_slopes: Some(slopes.clone()),
            ..Default::default()
        };
        let got = decode_emulated(&problem, &set, &config, &q, &k, &v, &emu_run()).unwrap();
        let full =
            AttnPlan::with_patterns(&problem, &set, &opts(Some(sinks), Some(slopes))).unwrap();
        let want = reference_for(&full, &q, &k, &v, |b, h, i, j| full.allowed(b, h, i, j));
        assert_matches(
            &format!("decode hd{hd}"),
            &problem,
            &got.out,
            &got.lse,
            &want,
            tol(problem.dtype()),
        );
    }
}

#[test]
fn every_schedule_gives_identical_bits() {
    let seed = base_seed();
    let mut rng = Rng::new(seed);
    let o = opts(Some(random_sinks(&mut rng, 2)), Some(alibi_slopes(2)));
    let p = plan(
        uniform(1, 70, 200),
        (2, 1),
        64,
        sparse_attn::DType::F16,
        r#"{"causal": true, "components": [{"dilated": {"stride": 2}}, {"global": {"tokens": [3, 150]}}]}"#,
        &o,
    )
    .with_num_splits(2)
    .unwrap();
    let (q, k, v) = random_qkv::<f16>(&mut rng, p.problem(), 1.0, 1.0);
    let base = p.run_emulated(&q, &k, &v, &emu_run()).unwrap();
    for run in [
        EmuRun {
            schedule: Schedule::Reverse,
            ..emu_run()
        },
        EmuRun {
            schedule: Schedule::Random(seed),
            eager_cp_async: true,
            ..emu_run()
        },
    ] {
        let got = p.run_emulated(&q, &k, &v, &run).unwrap();
        assert_same_bits(&format!("out under {run:?}"), &got.0, &base.0);
        assert_same_bits(&format!("lse under {run:?}"), &got.1, &base.1);
    }
}

#[test]
fn top_left_alibi_canary_fails_only_when_q_len_differs_from_kv_len() {
    use sparse_attn::kernels::test_kernels::canary_alibi_top_left;
    let seed = base_seed();
    // 8 query tokens of 2 packed heads run the 16-row step tile, 64 the 64-row tile, 200 the
    // 128-row tile: every shape's canary.
    for q_len in [8, 64, 200] {
        for (kv_len, should_fail) in [(q_len, false), (q_len + 70, true)] {
            let p = plan(
                uniform(1, q_len, kv_len),
                (2, 1),
                64,
                sparse_attn::DType::F16,
                DENSE,
                &opts(None, Some(alibi_slopes(2))),
            );
            let mut rng = Rng::new(seed);
            let (q, k, v) = random_qkv::<f16>(&mut rng, p.problem(), 1.0, 1.0);
            let want = reference_for(&p, &q, &k, &v, |_, _, _, _| true);
            // SAFETY: the canary is this plan's f16/hd64 kernel, in its shape, with top-left
            // ALiBi positions: same params and launch geometry.
            let canary = unsafe { p.clone().with_kernel(canary_alibi_top_left(p.tiles())) };
            let (bad, _) = canary.run_emulated(&q, &k, &v, &emu_run()).unwrap();
            let err = common::rel_error(&bad, &want.out);
            assert_eq!(
                err > tol(sparse_attn::DType::F16),
                should_fail,
                "q_len {q_len}, kv_len {kv_len}: the top-left canary's error is {err:.3e}"
            );
            let (out, _) = p.run_emulated(&q, &k, &v, &emu_run()).unwrap();
            assert!(common::rel_error(&out, &want.out) <= tol(sparse_attn::DType::F16));
        }
    }
}

#[test]
fn bad_sink_logits_and_slopes_are_typed_errors() {
    let problem = AttnProblem::new(uniform(1, 8, 8), 4, 2, 64, sparse_attn::DType::F16).unwrap();
    let shape_error = |o: AttnOptions, needle: &str| match AttnPlan::new(&problem, &o) {
        Err(Error::Shape(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("{needle}: expected a shape error, got {other:?}"),
    };
    shape_error(opts(Some(vec![0.0; 3]), None), "sink_logits has 3 values");
    shape_error(opts(Some(vec![0.0; 5]), None), "4 query heads");
    shape_error(opts(None, Some(vec![])), "alibi_slopes has 0 values");
    shape_error(
        opts(Some(vec![0.0, f32::NAN, 0.0, 0.0]), None),
        "sink_logits[1] must be finite",
    );
    shape_error(
        opts(None, Some(vec![0.5, 0.25, f32::INFINITY, 1.0])),
        "alibi_slopes[2] must be finite",
    );
    shape_error(
        opts(Some(vec![f32::NEG_INFINITY; 4]), None),
        "sink_logits[0] must be finite",
    );
    // The decode driver checks them before it builds a cache.
    let set = HeadPatterns::from_json(CAUSAL).unwrap();
    let q = vec![f16::ZERO; problem.q_elems()];
    let kv = vec![f16::ZERO; problem.kv_elems()];
    let config = DecodeConfig {
        page_size: 8,
        prefill: 4,
        alibi_slopes: Some(vec![1.0; 2]),
        ..Default::default()
    };
    assert!(matches!(
        decode_emulated(&problem, &set, &config, &q, &kv, &kv, &emu_run()),
        Err(Error::Shape(m)) if m.contains("alibi_slopes")
    ));
}

#[test]
fn standard_slopes_follow_the_alibi_paper() {
    // Powers of two: 2^(-8 (h + 1) / n).
    assert_eq!(alibi_slopes(1), [2f32.powi(-8)]);
    assert_eq!(alibi_slopes(4), [0.25, 0.0625, 0.015625, 0.00390625]);
    let s16 = alibi_slopes(16);
    assert_eq!(s16[0], 0.5f32.sqrt());
    assert_eq!(s16[15], 2f32.powi(-8));
    // Other counts: the 8 slopes of 8 heads, then every other slope of 16 heads.
    let s12 = alibi_slopes(12);
    assert_eq!(&s12[..8], &alibi_slopes(8)[..]);
    assert_eq!(&s12[8..], &[s16[0], s16[2], s16[4], s16[6]]);
    assert_eq!(
        alibi_slopes(6),
        [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]
    );
    assert!(alibi_slopes(0).is_empty());
    // BLOOM-176B's 112 heads: 64 + 48, all in (0, 1), decreasing within each run.
    let s112 = alibi_slopes(112);
    assert_eq!(s112.len(), 112);
    assert!(s112.iter().all(|&x| x > 0.0 && x < 1.0));
    assert!(s112[..64].windows(2).all(|w| w[0] > w[1]));
    assert!(s112[64..].windows(2).all(|w| w[0] > w[1]));
}
