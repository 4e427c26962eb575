//! Explicit strides and optional LSE (issue 12): q, k and v as the three parts of one fused
//! QKV buffer, out written into a padded (or head-major) buffer, the LSE store skipped when
//! no buffer is given; through one run-time plan on the emulator
//! (`AttnPlan::run_emulated_step_into`). Strided runs must give the very bits of packed runs
//! (the strides only move each tile's base address) and leave everything outside their
//! tensor untouched; the LSE likewise at the engine's strides (token-major, padded), from the
//! forward epilogue and from the split-KV combine; bad layouts are `Error::Layout` before
//! anything runs.

mod common;

use common::paged::build_pool;
use common::{assert_matches, assert_same_bits, base_seed, random_tensor, reference_for, tol, Rng};
use half::{bf16, f16};
use sparse_attn::attention::{LseLayout, LseStrides, PagedKv, StepKv, TensorLayout, TensorStrides};
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, Element, Error, SeqLens};

const STREAMING: &str = r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 100}}]}"#;
const CAUSAL: &str = r#"{"causal": true, "components": []}"#;

struct Case {
    heads: usize,
    kv_heads: usize,
    d: usize,
    max: Vec<(usize, usize)>,
    steps: Vec<Vec<(usize, usize)>>,
    splits: u32,
}

fn plan_for<T: Element>(pattern: &str, c: &Case) -> AttnPlan {
    let max = SeqLens::varlen_from_lens(&c.max).unwrap();
    let problem = AttnProblem::new(max, c.heads, c.kv_heads, c.d as u32, T::DTYPE).unwrap();
    let set = HeadPatterns::from_json(pattern).unwrap();
    AttnPlan::for_max_lengths(&problem, &set, &AttnOptions::default())
        .unwrap()
        .with_num_splits(c.splits)
        .unwrap()
}

/// The step's packed q, k, v copied into one fused `[tokens, (h + 2 hk) d]` buffer: token t's
/// queries, then its keys and values (rows beyond total_k carry no K/V: left random).
fn fuse<T: Element>(rng: &mut Rng, q: &[T], k: &[T], v: &[T], c: &Case, rows: usize) -> Vec<T> {
    let (h, hk, d) = (c.heads, c.kv_heads, c.d);
    let row = (h + 2 * hk) * d;
    let mut fused: Vec<T> = random_tensor(rng, rows * row, 1.0);
    for t in 0..rows {
        if t < q.len() / (h * d) {
            fused[t * row..][..h * d].copy_from_slice(&q[t * h * d..][..h * d]);
        }
        if t < k.len() / (hk * d) {
            fused[t * row + h * d..][..hk * d].copy_from_slice(&k[t * hk * d..][..hk * d]);
            fused[t * row + (h + hk) * d..][..hk * d].copy_from_slice(&v[t * hk * d..][..hk * d]);
        }
    }
    fused
}

fn check_case<T: Element + common::Bits>(pattern: &str, c: &Case, seed: u64) {
    let plan = plan_for::<T>(pattern, c);
    let set = HeadPatterns::from_json(pattern).unwrap();
    let (h, hk, d) = (c.heads, c.kv_heads, c.d);
    let capacity = plan.problem().seqs().totals().0;
    let run = common::emu_run();
    for (m, lens) in c.steps.iter().enumerate() {
        let seqs = SeqLens::varlen_from_lens(lens).unwrap();
        let step = AttnProblem::new(seqs.clone(), h, hk, d as u32, T::DTYPE).unwrap();
        let lists = AttnPlan::with_patterns(&step, &set, &AttnOptions::default()).unwrap();
        let mut rng = Rng::new(seed + m as u64);
        let q: Vec<T> = random_tensor(&mut rng, step.q_elems(), 1.0);
        let k: Vec<T> = random_tensor(&mut rng, step.kv_elems(), 1.0);
        let v: Vec<T> = random_tensor(&mut rng, step.kv_elems(), 1.0);
        let (total_q, total_k) = seqs.totals();
        let (packed_out, packed_lse) = plan.run_emulated_step(&seqs, &q, &k, &v, &run).unwrap();
        let want = reference_for(&lists, &q, &k, &v, |b, hh, i, j| lists.allowed(b, hh, i, j));
        let what = format!("{} hd{d} {lens:?}", T::DTYPE.name());
        assert_matches(&what, &step, &packed_out, &packed_lse, &want, tol(T::DTYPE));

        // Fused QKV in, out into a buffer with 16 elements of padding after every token.
        let rows = total_q.max(total_k);
        let fused = fuse(&mut rng, &q, &k, &v, c, rows);
        let [_, k_off, v_off] = TensorLayout::fused_offsets(h, hk, d);
        let pad_row = h * d + 16;
        let layout = TensorLayout {
            out: TensorStrides {
                row: pad_row,
                head: d,
            },
            ..TensorLayout::fused_qkv(h, hk, d)
        };
        let sentinel = T::from_f32(-7.0);
        let mut out = vec![sentinel; total_q * pad_row];
        let mut lse = vec![f32::NAN; h * capacity];
        let kv = StepKv::Contiguous {
            k: &fused[k_off..],
            v: &fused[v_off..],
        };
        plan.run_emulated_step_into(&seqs, &fused, kv, &layout, &mut out, Some(&mut lse), &run)
            .unwrap();
        let unpadded: Vec<T> = out
            .chunks(pad_row)
            .flat_map(|r| r[..h * d].to_vec())
            .collect();
        assert_same_bits(&format!("{what}: fused/padded out"), &unpadded, &packed_out);
        let pads: Vec<T> = out
            .chunks(pad_row)
            .flat_map(|r| r[h * d..].to_vec())
            .collect();
        assert_same_bits(
            &format!("{what}: padding"),
            &pads,
            &vec![sentinel; pads.len()],
        );
        let step_lse: Vec<f32> = lse
            .chunks(capacity)
            .flat_map(|r| r[..total_q].to_vec())
            .collect();
        assert_same_bits(&format!("{what}: lse"), &step_lse, &packed_lse);
        assert!(
            lse.chunks(capacity)
                .all(|r| r[total_q..].iter().all(|x| x.is_nan())),
            "{what}: lse rows past the step untouched"
        );

        // Head-major out ([heads, capacity, d]) and no LSE: the same bits, no LSE store.
        let head_major = TensorLayout {
            out: TensorStrides {
                row: d,
                head: capacity * d,
            },
            ..layout
        };
        let mut out_hm = vec![sentinel; h * capacity * d];
        let kv = StepKv::Contiguous {
            k: &fused[k_off..],
            v: &fused[v_off..],
        };
        plan.run_emulated_step_into(&seqs, &fused, kv, &head_major, &mut out_hm, None, &run)
            .unwrap();
        let token_major: Vec<T> = (0..total_q)
            .flat_map(|t| (0..h).flat_map(move |hh| (0..d).map(move |e| (t, hh, e))))
            .map(|(t, hh, e)| out_hm[hh * capacity * d + t * d + e])
            .collect();
        assert_same_bits(
            &format!("{what}: head-major out"),
            &token_major,
            &packed_out,
        );
        assert!(
            (0..h).all(
                |hh| out_hm[hh * capacity * d + total_q * d..(hh + 1) * capacity * d]
                    .iter()
                    .all(|x| x.to_f32() == -7.0)
            ),
            "{what}: head-major rows past the step untouched"
        );
    }
}

#[test]
fn fused_qkv_and_padded_out_give_the_packed_bits() {
    let seed = base_seed();
    // Decode-shaped: GQA-packed rows (Q's head offsets at the fused head stride), split-KV
    // (the combine writes out and lse at the strides), mixed decode and prefill rows.
    check_case::<f16>(
        STREAMING,
        &Case {
            heads: 4,
            kv_heads: 2,
            d: 64,
            max: vec![(24, 400); 3],
            steps: vec![
                vec![(1, 300), (24, 24), (0, 0)],
                vec![(5, 5), (1, 400), (17, 200)],
            ],
            splits: 2,
        },
        seed,
    );
    // Prefill-shaped at head_dim 128: unpacked 64-row tiles, no split.
    check_case::<bf16>(
        CAUSAL,
        &Case {
            heads: 2,
            kv_heads: 1,
            d: 128,
            max: vec![(130, 300); 2],
            steps: vec![vec![(130, 300), (65, 65)]],
            splits: 1,
        },
        seed + 100,
    );
}

#[test]
fn paged_steps_with_a_padded_out_and_no_lse() {
    let seed = base_seed();
    let c = Case {
        heads: 2,
        kv_heads: 1,
        d: 64,
        max: vec![(64, 1024)],
        steps: vec![],
        splits: 3,
    };
    let plan = plan_for::<f16>(STREAMING, &c);
    let run = common::emu_run();
    for (m, lens) in [(1usize, 300usize), (40, 1000)].into_iter().enumerate() {
        let seqs = SeqLens::varlen_from_lens(&[lens]).unwrap();
        let step = AttnProblem::new(seqs.clone(), 2, 1, 64, f16::DTYPE).unwrap();
        let mut rng = Rng::new(seed + m as u64);
        let q: Vec<f16> = random_tensor(&mut rng, step.q_elems(), 1.0);
        let k: Vec<f16> = random_tensor(&mut rng, step.kv_elems(), 1.0);
        let v: Vec<f16> = random_tensor(&mut rng, step.kv_elems(), 1.0);
        let pool = build_pool(&mut rng, &seqs, 1, 64, &k, &v, 16, 1, 12);
        let kv = PagedKv {
            k_pages: &pool.k,
            v_pages: &pool.v,
            block_table: &pool.table,
            layout: pool.layout,
        };
        let (want, _) = plan.run_emulated_paged_step(&seqs, &q, &kv, &run).unwrap();
        let layout = TensorLayout {
            out: TensorStrides { row: 136, head: 64 },
            ..TensorLayout::packed(2, 1, 64)
        };
        let mut out = vec![f16::from_f32(3.0); lens.0 * 136];
        plan.run_emulated_step_into(&seqs, &q, StepKv::Paged(&kv), &layout, &mut out, None, &run)
            .unwrap();
        let got: Vec<f16> = out.chunks(136).flat_map(|r| r[..128].to_vec()).collect();
        assert_same_bits(&format!("paged {lens:?}"), &got, &want);
        assert!(out
            .chunks(136)
            .all(|r| r[128..].iter().all(|x| x.to_f32() == 3.0)));
    }
}

#[test]
fn bad_layouts_are_typed_errors_before_any_launch() {
    let c = Case {
        heads: 4,
        kv_heads: 2,
        d: 64,
        max: vec![(16, 128); 2],
        steps: vec![],
        splits: 1,
    };
    let plan = plan_for::<f16>(CAUSAL, &c);
    let seqs = SeqLens::varlen_from_lens(&[(3, 10), (2, 2)]).unwrap();
    let (h, hk, d) = (4, 2, 64);
    let fused = vec![f16::from_f32(0.0); 12 * (h + 2 * hk) * d];
    let [_, k_off, v_off] = TensorLayout::fused_offsets(h, hk, d);
    let fused_layout = TensorLayout::fused_qkv(h, hk, d);
    let run = common::emu_run();
    let try_run = |layout: &TensorLayout, fused: &[f16], out_len: usize, lse_len: Option<usize>| {
        let mut out = vec![f16::from_f32(0.0); out_len];
        let mut lse = lse_len.map(|n| vec![0.0f32; n]);
        let kv = StepKv::Contiguous {
            k: &fused[k_off.min(fused.len())..],
            v: &fused[v_off.min(fused.len())..],
        };
        plan.run_emulated_step_into(&seqs, fused, kv, layout, &mut out, lse.as_deref_mut(), &run)
    };
    let tensor_of = |r: sparse_attn::Result<()>| match r {
        Err(Error::Layout { tensor, .. }) => tensor,
        other => panic!("expected Error::Layout, got {other:?}"),
    };
    // The valid call runs.
    try_run(&fused_layout, &fused, 5 * h * d, Some(32 * h)).unwrap();
    // Heads overlapping in q, rows overlapping in out, a misaligned k stride.
    let overlap_q = TensorLayout {
        q: TensorStrides { row: 512, head: 32 },
        ..fused_layout
    };
    assert_eq!(tensor_of(try_run(&overlap_q, &fused, 5 * h * d, None)), "q");
    let overlap_out = TensorLayout {
        out: TensorStrides { row: 128, head: 64 },
        ..fused_layout
    };
    assert_eq!(
        tensor_of(try_run(&overlap_out, &fused, 5 * h * d, None)),
        "out"
    );
    let odd_k = TensorLayout {
        k: TensorStrides { row: 516, head: 64 },
        ..fused_layout
    };
    assert_eq!(tensor_of(try_run(&odd_k, &fused, 5 * h * d, None)), "k");
    // A fused buffer one token short for v's last row; an out buffer one element short; an
    // LSE buffer of the step's rows instead of the plan's capacity.
    let short = &fused[..11 * (h + 2 * hk) * d + (h + hk) * d + hk * d - 1];
    assert_eq!(
        tensor_of(try_run(&fused_layout, short, 5 * h * d, None)),
        "v"
    );
    assert_eq!(
        tensor_of(try_run(&fused_layout, &fused, 5 * h * d - 1, None)),
        "out"
    );
    assert_eq!(
        tensor_of(try_run(&fused_layout, &fused, 5 * h * d, Some(5 * h))),
        "lse"
    );
}

/// The LSE at an engine's strides: token-major `[total_q, num_heads]`, token-major rows
/// padded to `num_heads + 3` inside a larger buffer, and head-major with a padded head
/// stride, each against the plan's own layout bit for bit, with every element outside the
/// step's (token, head) pairs left as it was. Single-pass (the forward epilogue writes the
/// LSE: GQA-packed blocks, whose rows span heads, and unpacked ones) and split-KV (the combine
/// kernel does), varlen steps with decode and prefill rows.
#[test]
fn lse_at_engine_strides_gives_the_plan_layout_bits() {
    let seed = base_seed();
    let (h, hk, d) = (4usize, 2usize, 64usize);
    let sentinel = -1234.5f32;
    let set = HeadPatterns::from_json(STREAMING).unwrap();
    let max = SeqLens::varlen_from_lens(&[(20, 200); 2]).unwrap();
    let problem = AttnProblem::new(max, h, hk, d as u32, f16::DTYPE).unwrap();
    for (splits, pack) in [(1u32, true), (1, false), (2, true)] {
        let plan = AttnPlan::for_max_lengths(&problem, &set, &AttnOptions::default())
            .unwrap()
            .with_gqa_packing(pack)
            .unwrap()
            .with_num_splits(splits)
            .unwrap();
        assert_eq!((plan.num_splits(), plan.gqa_pack() > 1), (splits, pack));
        let capacity = plan.problem().seqs().totals().0;
        let run = common::emu_run();
        for (m, lens) in [vec![(1, 150), (20, 20)], vec![(7, 200), (0, 0)]]
            .iter()
            .enumerate()
        {
            let seqs = SeqLens::varlen_from_lens(lens).unwrap();
            let step = AttnProblem::new(seqs.clone(), h, hk, d as u32, f16::DTYPE).unwrap();
            let mut rng = Rng::new(seed + 10 * splits as u64 + 5 * pack as u64 + m as u64);
            let q: Vec<f16> = random_tensor(&mut rng, step.q_elems(), 1.0);
            let k: Vec<f16> = random_tensor(&mut rng, step.kv_elems(), 1.0);
            let v: Vec<f16> = random_tensor(&mut rng, step.kv_elems(), 1.0);
            let tq = seqs.totals().0;
            let packed = plan.packed_layout();
            let what = format!("splits {splits} packed {pack} {lens:?}");
            let run_into = |layout: &TensorLayout, lse: &mut [f32]| {
                let mut out = vec![f16::from_f32(0.0); tq * h * d];
                let kv = StepKv::Contiguous { k: &k, v: &v };
                plan.run_emulated_step_into(&seqs, &q, kv, layout, &mut out, Some(lse), &run)
                    .unwrap();
                out
            };
            // The plan's layout: [num_heads, capacity], the step's rows first.
            let mut plan_lse = vec![sentinel; h * capacity];
            let want_out = run_into(&packed, &mut plan_lse);
            // ... which is right (a store that ignored a stride everywhere would pass the
            // comparisons below on its own): against the reference, and nothing left unset.
            let lists = AttnPlan::with_patterns(&step, &set, &AttnOptions::default()).unwrap();
            let reference =
                reference_for(&lists, &q, &k, &v, |b, hh, i, j| lists.allowed(b, hh, i, j));
            let step_lse: Vec<f32> = plan_lse
                .chunks(capacity)
                .flat_map(|r| r[..tq].to_vec())
                .collect();
            assert!(step_lse.iter().all(|&x| x != sentinel), "{what}: lse unset");
            assert_matches(
                &what,
                &step,
                &want_out,
                &step_lse,
                &reference,
                tol(f16::DTYPE),
            );
            let want = |t: usize, hh: usize| plan_lse[hh * capacity + t];
            // (strides, buffer length) of each engine layout.
            let layouts = [
                (LseStrides::token_major(h), tq * h),
                (
                    LseStrides {
                        row: h + 3,
                        head: 1,
                    },
                    (tq + 2) * (h + 3),
                ),
                (
                    LseStrides {
                        row: 1,
                        head: tq + 5,
                    },
                    h * (tq + 5),
                ),
            ];
            for (strides, len) in layouts {
                let layout = TensorLayout {
                    lse: LseLayout::Strided(strides),
                    ..packed
                };
                let mut lse = vec![sentinel; len];
                let out = run_into(&layout, &mut lse);
                assert_same_bits(&format!("{what} {strides:?}: out"), &out, &want_out);
                let mut expect = vec![sentinel; len];
                for t in 0..tq {
                    for hh in 0..h {
                        expect[t * strides.row + hh * strides.head] = want(t, hh);
                    }
                }
                assert_same_bits(&format!("{what} {strides:?}: lse"), &lse, &expect);
            }
            // A buffer one element short of the last (token, head) is a typed error.
            let short = TensorLayout {
                lse: LseLayout::Strided(LseStrides::token_major(h)),
                ..packed
            };
            let mut lse = vec![0.0; tq * h - 1];
            let mut out = vec![f16::from_f32(0.0); tq * h * d];
            let kv = StepKv::Contiguous { k: &k, v: &v };
            let r =
                plan.run_emulated_step_into(&seqs, &q, kv, &short, &mut out, Some(&mut lse), &run);
            assert!(
                matches!(r, Err(Error::Layout { tensor: "lse", .. })),
                "{what}: {r:?}"
            );
        }
    }
}
