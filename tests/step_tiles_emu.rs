//! The step tile shape (one warp of 16 rows, kernels `_m16`): decode steps whose blocks hold
//! at most 16 rows (a token's packed query heads) run it at head_dim 64, 96, 128 and 256, on
//! the CPU emulator against the f64 reference: every mask path of the kernel (interval masks,
//! table-driven kinds on regular tiles, gathered tiles), split-KV, sink logits, both walks;
//! and the K/V a packed step reads: each kv tile once per kv group, splits included.

mod common;

use std::cell::Cell;

use common::{assert_matches, base_seed, emu_run, random_qkv, reference_for, tol, Rng};
use half::{bf16, f16};
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, Element, EmuRun, SeqLens};

const CAUSAL: &str = r#"{"causal": true, "components": []}"#;
/// Sinks straddling a tile edge beside a window: the interval mask with two intervals.
const STREAMING: &str = r#"{"causal": true, "components": [{"sinks": {"count": 70}}, {"sliding_window": {"size": 40}}]}"#;
/// Global key columns and a dilated view: gathered kv tiles (the global keys) and strided
/// regular tiles through the table path.
const GATHERED: &str = r#"{"causal": true, "components": [{"dilated": {"stride": 3}}, {"global": {"tokens": [5, 40, 63]}}]}"#;
/// A block mask beside a window: the table-driven kinds on regular tiles.
const BLOCK_MASK: &str = r#"{"causal": false, "components": [{"block_mask": {"block_q": 64, "block_k": 32, "mask": [[1,0,0,1,0,1,0,0,1,0]]}}, {"sliding_window": {"size": 17}}]}"#;

/// Decode rows against caches of different lengths: one token per sequence (two for the
/// last), so 8 query heads over 2 kv heads pack 4 (or 8) rows into a block.
fn decode_lens() -> SeqLens {
    SeqLens::varlen_from_lens(&[(1, 300), (1, 65), (2, 129)]).unwrap()
}

/// How a plan of `check` is built beside its pattern and options.
#[derive(Clone, Copy)]
struct Build {
    splits: Option<u32>,
    /// The run-time walk (one plan for every length up to the maxima) instead of the lists.
    runtime_walk: bool,
    /// GQA packing (the default); off, each block holds one query head's rows.
    packed: bool,
}

const fn build(splits: u32, runtime_walk: bool) -> Build {
    Build {
        splits: Some(splits),
        runtime_walk,
        packed: true,
    }
}

/// Runs `pattern` on the plan `how` describes and checks it against the reference; returns
/// the kv tiles the kernel visited.
fn check<T: Element>(d: u32, pattern: &str, opts: &AttnOptions, how: Build, seed: u64) -> u64 {
    let Build {
        splits,
        runtime_walk,
        packed,
    } = how;
    let problem = AttnProblem::new(decode_lens(), 8, 2, d, T::DTYPE).unwrap();
    let set = HeadPatterns::from_json(pattern).unwrap();
    // The compiled plan of these lengths (and the reference's layout and pattern), or one
    // plan for every length up to their maxima run at these lengths.
    let lists = AttnPlan::with_patterns(&problem, &set, opts).unwrap();
    let mut plan = if runtime_walk {
        AttnPlan::for_max_lengths(&problem, &set, opts).unwrap()
    } else {
        lists.clone()
    };
    if !packed {
        plan = plan.with_gqa_packing(false).unwrap();
    }
    if let Some(s) = splits {
        plan = plan.with_num_splits(s).unwrap();
    }
    let t = plan.tiles();
    assert_eq!((t.block_m, t.threads, t.head_dim), (16, 32, d), "{pattern}");
    assert_eq!(plan.gqa_pack(), if packed { 4 } else { 1 });
    assert!(
        plan.kernel().name.contains("_m16"),
        "{}",
        plan.kernel().name
    );
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<T>(&mut rng, &problem, 1.0, 1.0);
    let visited = Cell::new(0);
    let run = EmuRun {
        tiles_visited: Some(&visited),
        ..emu_run()
    };
    let (out, lse) = if runtime_walk {
        plan.run_emulated_step(&decode_lens(), &q, &k, &v, &run)
    } else {
        plan.run_emulated(&q, &k, &v, &run)
    }
    .unwrap();
    let want = reference_for(&lists, &q, &k, &v, |b, h, i, j| lists.allowed(b, h, i, j));
    let what = format!(
        "{} hd{d} {pattern} splits {} runtime {runtime_walk} packed {packed} seed {seed}",
        T::DTYPE.name(),
        plan.num_splits()
    );
    assert_matches(&what, &problem, &out, &lse, &want, tol(T::DTYPE));
    visited.get()
}

/// Every mask path, split-KV on and off, both walks and both dtypes at head_dim `d`.
fn every_path(d: u32) {
    let seed = base_seed() + 7000 + u64::from(d);
    let none = AttnOptions::default();
    let sinks = AttnOptions {
        sink_logits: Some((0..8).map(|h| 0.5 * h as f32 - 1.0).collect()),
        ..Default::default()
    };
    for (i, pattern) in [CAUSAL, STREAMING, GATHERED, BLOCK_MASK]
        .into_iter()
        .enumerate()
    {
        let s = seed + 10 * i as u64;
        check::<f16>(d, pattern, &none, build(1, false), s);
        check::<bf16>(d, pattern, &sinks, build(3, false), s + 1);
    }
    // The run-time walk (one plan for every length up to its maxima): interval patterns.
    check::<bf16>(d, STREAMING, &none, build(1, true), seed + 100);
    check::<f16>(d, CAUSAL, &sinks, build(2, true), seed + 101);
}

#[test]
fn step_tiles_hd64() {
    every_path(64);
}

#[test]
fn step_tiles_hd96() {
    every_path(96);
}

#[test]
fn step_tiles_hd128() {
    every_path(128);
}

#[test]
fn step_tiles_hd256() {
    every_path(256);
}

/// A packed decode step reads each kv tile once per kv group, however the walk is split: the
/// K/V bytes of a step are those of the cache read once (to the tile: whole 64-key tiles),
/// where unpacked blocks read them once per query head.
#[test]
fn packed_steps_read_each_kv_tile_once_per_group() {
    let seed = base_seed() + 7500;
    let none = AttnOptions::default();
    let kv_heads = 2u64;
    // Dense causal: every key of the cache is visible to the decode rows.
    let once: u64 = [300u64, 65, 129]
        .iter()
        .map(|kv| kv.div_ceil(64))
        .sum::<u64>()
        * kv_heads;
    for splits in [1, 2, 5] {
        let s = seed + u64::from(splits);
        let visited = check::<f16>(128, CAUSAL, &none, build(splits, false), s);
        assert_eq!(visited, once, "splits {splits}");
        let visited = check::<f16>(128, CAUSAL, &none, build(splits, true), s);
        assert_eq!(visited, once, "run-time walk, splits {splits}");
    }
    // Unpacked, the same rows cost a read per query head (group 4).
    let unpacked = Build {
        packed: false,
        ..build(1, false)
    };
    assert_eq!(check::<f16>(128, CAUSAL, &none, unpacked, seed), 4 * once);
}

/// Which blocks a plan picks: the step shape while a block's rows (tokens x packed heads) fit
/// 16, the 64-row decode shape above that and at head_dim 512, the 128-row prefill shape for
/// long queries at head_dim 64.
#[test]
fn the_step_shape_serves_blocks_of_at_most_16_rows() {
    let none = AttnOptions::default();
    let causal = HeadPatterns::from_json(CAUSAL).unwrap();
    let shape = |q_len: usize, heads: usize, kv_heads: usize, d: u32| {
        let seqs = SeqLens::Uniform {
            batch: 2,
            q_len,
            kv_len: 200,
        };
        let problem = AttnProblem::new(seqs, heads, kv_heads, d, DType::BF16).unwrap();
        let plan = AttnPlan::with_patterns(&problem, &causal, &none).unwrap();
        (plan.tiles().block_m, plan.gqa_pack())
    };
    assert_eq!(shape(1, 32, 8, 128), (16, 4)); // Llama 3 8B decode
    assert_eq!(shape(2, 64, 8, 128), (16, 8)); // 70B, two tokens (speculative)
    assert_eq!(shape(3, 64, 8, 128), (64, 8)); // 24 rows
    assert_eq!(shape(1, 32, 1, 128), (64, 32)); // MQA: a group of 32
    assert_eq!(shape(16, 4, 4, 64), (16, 1)); // MHA, 16 tokens
    assert_eq!(shape(17, 4, 4, 64), (64, 1));
    assert_eq!(shape(1, 8, 2, 512), (64, 4)); // head_dim 512 keeps the decode shape
    assert_eq!(shape(1, 8, 2, 256), (16, 4));
    assert_eq!(shape(100, 4, 4, 64), (128, 1));
}

/// One run-time plan for chunked prefill and decode (max q_len 32, group 4: 64-row decode
/// blocks) keeps a step plan of the step tile and runs every step whose rows fit 16 (at most
/// 4 tokens per sequence) with it, the longer ones with its own kernel; both against the f64
/// reference, LSE in the plan's capacity layout, split-KV forced on both.
#[test]
fn a_runtime_plan_runs_decode_steps_at_the_step_shape() {
    let seed = base_seed() + 7700;
    let max = SeqLens::Uniform {
        batch: 3,
        q_len: 32,
        kv_len: 300,
    };
    let problem = AttnProblem::new(max, 8, 2, 128, DType::BF16).unwrap();
    let set = HeadPatterns::from_json(STREAMING).unwrap();
    for splits in [None, Some(3)] {
        let mut plan = AttnPlan::for_max_lengths(&problem, &set, &AttnOptions::default()).unwrap();
        if let Some(s) = splits {
            plan = plan.with_num_splits(s).unwrap();
        }
        assert_eq!((plan.tiles().block_m, plan.gqa_pack()), (64, 4));
        let step = plan
            .step_plan()
            .expect("a step plan beside the 64-row kernel");
        assert_eq!((step.tiles().block_m, step.gqa_pack()), (16, 4));
        assert_eq!(step.problem().seqs().max_lens(), (4, 300));
        if let Some(s) = splits {
            assert_eq!(step.num_splits(), s);
        }
        for (i, lens) in [
            vec![(1, 300), (1, 65), (1, 129)], // decode
            vec![(4, 200), (2, 9), (3, 77)],   // speculative: 16 rows at most
            vec![(5, 200), (1, 9), (3, 77)],   // 20 rows: the plan's own kernel
            vec![(32, 300), (17, 17), (0, 0)], // prefill chunks and an idle slot
        ]
        .into_iter()
        .enumerate()
        {
            let seqs = SeqLens::varlen_from_lens(&lens).unwrap();
            let want_step = lens.iter().all(|&(q, _)| q <= 4);
            let chosen = plan.plan_for_step(&seqs);
            assert_eq!(std::ptr::eq(chosen, step), want_step, "{lens:?}");
            let one_shot = AttnProblem::new(seqs.clone(), 8, 2, 128, DType::BF16).unwrap();
            let lists = AttnPlan::with_patterns(&one_shot, &set, &AttnOptions::default()).unwrap();
            let mut rng = Rng::new(seed + i as u64);
            let (q, k, v) = random_qkv::<bf16>(&mut rng, &one_shot, 1.0, 1.0);
            let kernel = Cell::new("");
            let run = EmuRun {
                kernel: Some(&kernel),
                ..emu_run()
            };
            let (out, lse) = plan.run_emulated_step(&seqs, &q, &k, &v, &run).unwrap();
            let shape = if want_step { "_m16_rt" } else { "_m64_rt" };
            assert!(
                kernel.get().ends_with(shape),
                "{lens:?}: ran {}",
                kernel.get()
            );
            let want = reference_for(&lists, &q, &k, &v, |b, h, i, j| lists.allowed(b, h, i, j));
            let what = format!("{lens:?} splits {splits:?}");
            assert_matches(&what, &one_shot, &out, &lse, &want, tol(DType::BF16));
        }
    }
    // No step plan where the step tile does not apply, nor beside a plan of that shape.
    let plan_of = |q_len: usize, heads: usize, kv_heads: usize, d: u32| {
        let seqs = SeqLens::Uniform {
            batch: 2,
            q_len,
            kv_len: 100,
        };
        let p = AttnProblem::new(seqs, heads, kv_heads, d, DType::F16).unwrap();
        AttnPlan::for_max_lengths(&p, &set, &AttnOptions::default()).unwrap()
    };
    assert!(plan_of(32, 8, 2, 512).step_plan().is_none()); // head_dim 512
    assert!(plan_of(32, 32, 1, 128).step_plan().is_none()); // a group of 32
    assert!(plan_of(2, 8, 2, 128).step_plan().is_none()); // already the step shape
    let mha = plan_of(200, 4, 4, 64); // 128-row prefill blocks, unpacked: 16-token steps
    assert_eq!(
        mha.step_plan().unwrap().problem().seqs().max_lens(),
        (16, 100)
    );
    // Plans with compiled lists have none either.
    let p = AttnProblem::new(decode_lens(), 8, 2, 128, DType::F16).unwrap();
    let lists = AttnPlan::with_patterns(&p, &set, &AttnOptions::default()).unwrap();
    assert!(lists.step_plan().is_none());
}

/// The paged decode driver plans once for prefill chunks of 24 tokens and decode steps: the
/// chunks run the 64-row kernel, every decode step the step tile, through the cache's block
/// table; the whole sequence matches the f64 reference.
#[test]
fn the_decode_driver_runs_decode_steps_at_the_step_shape() {
    use sparse_attn::kv_cache::{decode_emulated, DecodeConfig};
    let t = 60;
    let seqs = SeqLens::Uniform {
        batch: 2,
        q_len: t,
        kv_len: t,
    };
    let problem = AttnProblem::new(seqs, 8, 2, 64, DType::F16).unwrap();
    let set = HeadPatterns::from_json(STREAMING).unwrap();
    let config = DecodeConfig {
        page_size: 16,
        prefill: 48,
        chunk: Some(24),
        ..Default::default()
    };
    let mut rng = Rng::new(base_seed() + 7800);
    let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
    let kernel = Cell::new("");
    let run = EmuRun {
        kernel: Some(&kernel),
        ..emu_run()
    };
    let got = decode_emulated(&problem, &set, &config, &q, &k, &v, &run).unwrap();
    assert_eq!((got.steps, got.plans_built), (2 + 12, 1));
    // The last launch was a decode step.
    assert_eq!(kernel.get(), "sa_attn_fwd_f16_hd64_m16_rt");
    let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
    let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
    assert_matches(
        "decode driver",
        &problem,
        &got.out,
        &got.lse,
        &want,
        tol(DType::F16),
    );
}

/// The staged step block (two K/V stages, head_dim up to 128) with its waits one load short:
/// the K or V tile is read while its cp.async may still be landing. The emulator lands a copy
/// only at a wait that covers it, so the read must fault; the production kernel on the same
/// data matches the reference.
#[test]
fn the_staged_pipeline_waiting_one_load_short_is_caught() {
    use sparse_attn::kernels::test_kernels::canary_early_wait;
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: 1,
            q_len: 1,
            kv_len: 300,
        },
        4,
        1,
        64,
        DType::F16,
    )
    .unwrap();
    let plan = AttnPlan::new(&problem, &AttnOptions::default()).unwrap();
    assert_eq!((plan.tiles().block_m, plan.tiles().kv_stages), (16, 2));
    let mut rng = Rng::new(base_seed());
    let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
    // SAFETY: the canary is this plan's f16/hd64 staged step kernel with its waits changed:
    // same params and launch geometry.
    let canary = unsafe { plan.clone().with_kernel(canary_early_wait(plan.tiles())) };
    let err = canary
        .run_emulated(&q, &k, &v, &emu_run())
        .expect_err("a tile read before its cp.async landed went unnoticed");
    assert!(err.to_string().contains("in flight"), "{err}");
    let (out, lse) = plan.run_emulated(&q, &k, &v, &emu_run()).unwrap();
    let want = reference_for(&plan, &q, &k, &v, |_, _, _, _| true);
    assert_matches("staged step", &problem, &out, &lse, &want, tol(DType::F16));
}
