//! The forward kernel on the CPU emulator against the f64 reference: the kernel source that
//! runs on the GPU, executed thread by thread with exact tensor-core fragment layouts.

mod common;

use common::{assert_matches, assert_same_bits, base_seed, random_qkv, reference_for, tol, Rng};
use half::{bf16, f16};
use sparse_attn::emu::Schedule;
use sparse_attn::reference::causal_allowed;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, Element, EmuRun, SeqLens};

struct Case {
    seqs: SeqLens,
    heads: usize,
    kv_heads: usize,
    head_dim: u32,
    opts: AttnOptions,
    amplitude: f32,
}

impl Case {
    fn uniform(q_len: usize, kv_len: usize, head_dim: u32, causal: bool) -> Self {
        Case {
            seqs: SeqLens::Uniform {
                batch: 1,
                q_len,
                kv_len,
            },
            heads: 2,
            kv_heads: 1,
            head_dim,
            opts: AttnOptions {
                causal,
                ..Default::default()
            },
            amplitude: 1.0,
        }
    }
}

/// Runs one case on the emulator and checks it; returns the number of kv tiles visited.
fn check<T: Element>(case: &Case, seed: u64, run: &EmuRun) -> u64 {
    let problem = AttnProblem::new(
        case.seqs.clone(),
        case.heads,
        case.kv_heads,
        case.head_dim,
        T::DTYPE,
    )
    .unwrap();
    let plan = AttnPlan::new(&problem, &case.opts).unwrap();
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<T>(&mut rng, &problem, case.amplitude, 1.0);
    let counter = std::cell::Cell::new(0);
    let run = EmuRun {
        tiles_visited: Some(&counter),
        ..run.clone()
    };
    let (out, lse) = plan.run_emulated(&q, &k, &v, &run).unwrap();
    let seqs = &problem.seqs();
    let causal = case.opts.causal;
    let want = reference_for(&plan, &q, &k, &v, |b, _h, i, j| {
        let (ql, kl) = seqs.lens(b);
        !causal || causal_allowed(i, j, ql, kl)
    });
    let what = format!(
        "{} hd{} {:?} heads {}/{} causal {} seed {seed}",
        T::DTYPE.name(),
        case.head_dim,
        case.seqs,
        case.heads,
        case.kv_heads,
        causal
    );
    assert_matches(&what, &problem, &out, &lse, &want, tol(T::DTYPE));
    assert_eq!(
        counter.get(),
        plan.meta().tiles_visited(),
        "{what}: kv tiles visited by the kernel vs listed by the metadata"
    );
    counter.get()
}

fn sweep<T: Element>(head_dim: u32) {
    let seed = base_seed();
    for (n, &q_len) in [1usize, 17, 64, 127, 128, 300].iter().enumerate() {
        for kv_len in [q_len, q_len + 77] {
            for causal in [false, true] {
                let case = Case::uniform(q_len, kv_len, head_dim, causal);
                check::<T>(
                    &case,
                    seed ^ (n as u64 * 1000 + kv_len as u64),
                    &crate::common::emu_run(),
                );
            }
        }
    }
}

#[test]
fn f16_hd64_lengths_causal_and_not() {
    sweep::<f16>(64);
}

#[test]
fn f16_hd128_lengths_causal_and_not() {
    sweep::<f16>(128);
}

#[test]
fn bf16_hd64_lengths_causal_and_not() {
    sweep::<bf16>(64);
}

#[test]
fn bf16_hd128_lengths_causal_and_not() {
    sweep::<bf16>(128);
}

#[test]
fn gqa_8_to_1_and_mqa() {
    let seed = base_seed();
    for (heads, kv_heads) in [(16, 2), (4, 1)] {
        for causal in [false, true] {
            let mut case = Case::uniform(70, 130, 64, causal);
            case.heads = heads;
            case.kv_heads = kv_heads;
            check::<f16>(&case, seed, &crate::common::emu_run());
            case.head_dim = 128;
            check::<bf16>(&case, seed + 1, &crate::common::emu_run());
        }
    }
}

#[test]
fn varlen_batch_of_unequal_lengths() {
    let seed = base_seed();
    let lens = [(1, 1), (17, 90), (130, 130), (64, 200), (0, 5), (40, 0)];
    for causal in [false, true] {
        let case = Case {
            seqs: SeqLens::varlen_from_lens(&lens).unwrap(),
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            opts: AttnOptions {
                causal,
                ..Default::default()
            },
            amplitude: 1.0,
        };
        check::<f16>(&case, seed, &crate::common::emu_run());
        check::<bf16>(&case, seed + 7, &crate::common::emu_run());
    }
}

#[test]
fn uniform_batch_of_several_sequences() {
    let seed = base_seed();
    let mut case = Case::uniform(33, 100, 128, true);
    case.seqs = SeqLens::Uniform {
        batch: 3,
        q_len: 33,
        kv_len: 100,
    };
    check::<f16>(&case, seed, &crate::common::emu_run());
}

#[test]
fn empty_rows_are_zero_with_neg_inf_lse() {
    // Causal with q_len > kv_len: rows with position p < 0 see no key at all.
    let seed = base_seed();
    for hd in [64, 128] {
        let case = Case::uniform(150, 40, hd, true);
        check::<f16>(&case, seed, &crate::common::emu_run());
        check::<bf16>(&case, seed, &crate::common::emu_run());
    }
}

#[test]
fn large_magnitude_logits_stay_finite_and_exact() {
    // |q|, |k| up to 12 with hd 128: logits of several hundred, far beyond exp's range,
    // so only a correct running-max subtraction passes.
    let seed = base_seed();
    let mut case = Case::uniform(100, 180, 128, false);
    case.amplitude = 12.0;
    check::<bf16>(&case, seed, &crate::common::emu_run());
    case.opts.causal = true;
    check::<f16>(&case, seed, &crate::common::emu_run());
}

#[test]
fn custom_scale_and_softcap() {
    let seed = base_seed();
    let mut case = Case::uniform(80, 80, 64, true);
    case.amplitude = 4.0;
    case.opts.scale = Some(0.3);
    case.opts.softcap = Some(20.0);
    check::<f16>(&case, seed, &crate::common::emu_run());
    case.opts.softcap = None;
    check::<bf16>(&case, seed, &crate::common::emu_run());
}

#[test]
fn every_schedule_gives_identical_bits() {
    let seed = base_seed();
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: 1,
            q_len: 130,
            kv_len: 150,
        },
        2,
        1,
        64,
        DType::F16,
    )
    .unwrap();
    // Causal attention, and a pattern that runs through tile views (residue classes with
    // strided rows and keys, gathered sinks and global keys, gathered global rows).
    let views = sparse_attn::pattern::HeadPatterns::from_json(
        r#"{"causal": true, "components": [{"dilated": {"stride": 3}}, {"sinks": {"count": 2}}, {"global": {"tokens": [5, 90]}}]}"#,
    )
    .unwrap();
    let plans = [
        AttnPlan::new(&problem, &AttnOptions::causal()).unwrap(),
        AttnPlan::with_patterns(&problem, &views, &AttnOptions::default()).unwrap(),
    ];
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
    for plan in &plans {
        let base = plan
            .run_emulated(&q, &k, &v, &crate::common::emu_run())
            .unwrap();
        let runs = [
            EmuRun {
                schedule: Schedule::Reverse,
                ..crate::common::emu_run()
            },
            EmuRun {
                schedule: Schedule::Random(seed),
                ..crate::common::emu_run()
            },
            EmuRun {
                schedule: Schedule::Random(seed.wrapping_add(1)),
                workers: 1,
                ..crate::common::emu_run()
            },
            EmuRun {
                eager_cp_async: true,
                ..crate::common::emu_run()
            },
        ];
        for run in &runs {
            let got = plan.run_emulated(&q, &k, &v, run).unwrap();
            assert_same_bits(&format!("out under {run:?}"), &got.0, &base.0);
            assert_same_bits(&format!("lse under {run:?}"), &got.1, &base.1);
        }
    }
}

#[test]
fn work_accounting_matches_the_ideal_tile_count() {
    // Dense: every query block visits every kv tile; causal with q_len == kv_len: a block of
    // `bm` rows ending at row r visits the ceil(r / 64) kv tiles up to its diagonal
    // (block-aligned lengths, so nothing beyond the ideal). Both tile shapes: head_dim 64
    // prefill runs 128-row blocks, head_dim 128 64-row blocks.
    let seed = base_seed();
    let heads = 2usize;
    for (head_dim, bm) in [(64u32, 128usize), (128, 64)] {
        let dense = check::<f16>(
            &Case::uniform(256, 320, head_dim, false),
            seed,
            &crate::common::emu_run(),
        );
        assert_eq!(dense, (heads * (256 / bm) * 5) as u64, "hd{head_dim} dense");
        let causal = check::<f16>(
            &Case::uniform(256, 256, head_dim, true),
            seed,
            &crate::common::emu_run(),
        );
        let ideal: usize = (1..=256 / bm).map(|m| m * bm / 64).sum();
        assert_eq!(causal, (heads * ideal) as u64, "hd{head_dim} causal");
    }
}

#[test]
fn a2_a4_fragment_swap_canary_fails_end_to_end() {
    use sparse_attn::kernels::test_kernels::canary_swap_a2a4;
    let seed = base_seed();
    // q_len 16 runs the 16-row (step) tile, 64 the 64-row (decode) tile, 200 the 128-row
    // (prefill) tile: every shape's canary.
    for q_len in [16, 64, 200] {
        let problem = AttnProblem::new(
            SeqLens::Uniform {
                batch: 1,
                q_len,
                kv_len: q_len,
            },
            1,
            1,
            64,
            DType::F16,
        )
        .unwrap();
        let plan = AttnPlan::new(&problem, &AttnOptions::default()).unwrap();
        let mut rng = Rng::new(seed);
        let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
        // SAFETY: the canary is this plan's f16/hd64 kernel, in its shape, with one fragment
        // swapped: same params and launch geometry.
        let canary = unsafe { plan.clone().with_kernel(canary_swap_a2a4(plan.tiles())) };
        let (bad, _) = canary
            .run_emulated(&q, &k, &v, &crate::common::emu_run())
            .unwrap();
        let want = reference_for(&plan, &q, &k, &v, |_, _, _, _| true);
        let err = common::rel_error(&bad, &want.out);
        assert!(
            err > 4e-3,
            "the a2/a4-swapped {}-row kernel passed the tolerance (error {err:.3e}): the \
             emulator's fragment layouts would not catch a layout bug",
            plan.tiles().block_m
        );
        // The production kernel on the same data passes.
        let (out, _) = plan
            .run_emulated(&q, &k, &v, &crate::common::emu_run())
            .unwrap();
        assert!(common::rel_error(&out, &want.out) <= 4e-3);
    }
}

#[test]
fn maxima_growing_along_the_keys_rescale_mid_row() {
    // Keys scaled by 2^(j / 24): each 64-key tile's logits outgrow the last by far more than
    // the rescale slack (2^8), so the running max moves on every tile, mid-row, after output
    // has accumulated. The production kernel matches the reference; the canary that skips the
    // rescale does not, though on plain random logits (max settled after the first tile) it
    // passes: the slack keeps it silent there.
    use sparse_attn::kernels::test_kernels::canary_skip_rescale;
    let seed = base_seed();
    // Every tile shape: 16 rows (step), 64 (decode), 200 (prefill).
    for q_len in [16, 64, 200] {
        let kv_len = 256;
        let problem = AttnProblem::new(
            SeqLens::Uniform {
                batch: 1,
                q_len,
                kv_len,
            },
            1,
            1,
            64,
            DType::F16,
        )
        .unwrap();
        let plan = AttnPlan::new(&problem, &AttnOptions::default()).unwrap();
        let mut rng = Rng::new(seed ^ q_len as u64);
        let (q, mut k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
        let plain = k.clone();
        for (j, row) in k.chunks_mut(64).enumerate() {
            let g = (j as f32 / 24.0).exp2() / 8.0;
            for x in row {
                *x = f16::from_f32(x.to_f32() * g);
            }
        }
        let run = crate::common::emu_run();
        // SAFETY: the canary is this plan's f16/hd64 kernel, in its shape, with the rescale
        // dropped: same params and launch geometry.
        let canary = unsafe { plan.clone().with_kernel(canary_skip_rescale(plan.tiles())) };
        let want = reference_for(&plan, &q, &k, &v, |_, _, _, _| true);
        let (out, _) = plan.run_emulated(&q, &k, &v, &run).unwrap();
        assert!(common::rel_error(&out, &want.out) <= 4e-3);
        let (bad, _) = canary.run_emulated(&q, &k, &v, &run).unwrap();
        let err = common::rel_error(&bad, &want.out);
        assert!(
            err > 4e-3,
            "the rescale-dropping {}-row kernel passed on growing maxima (error {err:.3e})",
            plan.tiles().block_m
        );
        let want = reference_for(&plan, &q, &plain, &v, |_, _, _, _| true);
        let (bad, _) = canary.run_emulated(&q, &plain, &v, &run).unwrap();
        assert!(common::rel_error(&bad, &want.out) <= 4e-3);
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    use sparse_attn::Error;
    let seqs = SeqLens::Uniform {
        batch: 1,
        q_len: 8,
        kv_len: 8,
    };
    assert!(matches!(
        AttnProblem::new(seqs.clone(), 8, 3, 64, DType::F16),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        AttnProblem::new(seqs.clone(), 8, 0, 64, DType::F16),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        AttnProblem::new(seqs.clone(), 8, 8, 80, DType::F16),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        AttnProblem::new(
            SeqLens::Uniform {
                batch: 0,
                q_len: 8,
                kv_len: 8
            },
            8,
            8,
            64,
            DType::F16
        ),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        AttnProblem::new(
            SeqLens::Varlen {
                cu_q: vec![0, 5, 3],
                cu_k: vec![0, 5, 9]
            },
            8,
            8,
            64,
            DType::F16
        ),
        Err(Error::Shape(_))
    ));
    let problem = AttnProblem::new(seqs, 2, 1, 64, DType::F16).unwrap();
    let bad_scale = AttnOptions {
        scale: Some(f32::NAN),
        ..Default::default()
    };
    assert!(matches!(
        AttnPlan::new(&problem, &bad_scale),
        Err(Error::Shape(_))
    ));
    let bad_cap = AttnOptions {
        softcap: Some(-1.0),
        ..Default::default()
    };
    assert!(matches!(
        AttnPlan::new(&problem, &bad_cap),
        Err(Error::Shape(_))
    ));
    let plan = AttnPlan::new(&problem, &AttnOptions::default()).unwrap();
    let q = vec![f16::ZERO; problem.q_elems()];
    let kv = vec![f16::ZERO; problem.kv_elems()];
    // Wrong lengths and wrong dtype are rejected before any launch.
    assert!(matches!(
        plan.run_emulated(&q[1..], &kv, &kv, &crate::common::emu_run()),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        plan.run_emulated(&q, &kv, &kv[..3], &crate::common::emu_run()),
        Err(Error::Shape(_))
    ));
    let qb = vec![bf16::ZERO; problem.q_elems()];
    let kvb = vec![bf16::ZERO; problem.kv_elems()];
    assert!(matches!(
        plan.run_emulated(&qb, &kvb, &kvb, &crate::common::emu_run()),
        Err(Error::Shape(_))
    ));
}
