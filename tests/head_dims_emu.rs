//! head_dim 96 (Phi-3) and 512 (Gemma 4 global layers) on the CPU emulator against the f64
//! reference. Per head_dim: every pattern component (causal, window, sinks, global tokens,
//! dilated, block mask, BigBird, chunked, per-head patterns), GQA, varlen, both dtypes,
//! split-KV with its combine, GQA-packed decode read through shuffled pages and through a
//! wrapped ring, the decode driver (run-time walk), sink logits and ALiBi; and one clear error
//! for a head_dim without kernels. Shapes stay small: head_dim 512 is slow in the emulator.

mod common;

use common::paged::build_pool;
use common::{
    assert_matches, assert_same_bits, base_seed, emu_run, random_qkv, reference_for, tol, Rng,
};
use half::{bf16, f16};
use sparse_attn::attention::PagedKv;
use sparse_attn::emu::TargetArch;
use sparse_attn::kv_cache::{decode_emulated, DecodeConfig};
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::shape::alibi_slopes;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, Element, EmuRun, Error, SeqLens};

const CAUSAL: &str = r#"{"causal": true, "components": []}"#;
const DENSE: &str = r#"{"causal": false, "components": []}"#;
const STREAMING: &str = r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 40}}]}"#;

fn uniform(batch: usize, q_len: usize, kv_len: usize) -> SeqLens {
    SeqLens::Uniform {
        batch,
        q_len,
        kv_len,
    }
}

/// Runs `pattern` at head_dim `d` on the emulator (contiguous K/V, `splits` split-KV parts or
/// the default) and checks it against the reference; returns the plan.
fn check<T: Element>(
    d: u32,
    pattern: &str,
    seqs: SeqLens,
    heads: (usize, usize),
    opts: &AttnOptions,
    splits: Option<u32>,
    seed: u64,
) -> AttnPlan {
    let problem = AttnProblem::new(seqs.clone(), heads.0, heads.1, d, T::DTYPE).unwrap();
    let set = HeadPatterns::from_json(pattern).unwrap();
    let mut plan = AttnPlan::with_patterns(&problem, &set, opts).unwrap();
    if let Some(s) = splits {
        plan = plan.with_num_splits(s).unwrap();
    }
    assert_eq!(plan.tiles().head_dim, d);
    // head_dim 512: two blocks per query tile, each owning half of the output columns.
    assert_eq!(plan.tiles().col_splits, if d == 512 { 2 } else { 1 });
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<T>(&mut rng, &problem, 1.0, 1.0);
    let (out, lse) = plan.run_emulated(&q, &k, &v, &emu_run()).unwrap();
    let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
    let what = format!(
        "{} hd{d} {pattern} {seqs:?} splits {} seed {seed}",
        T::DTYPE.name(),
        plan.num_splits()
    );
    assert_matches(&what, &problem, &out, &lse, &want, tol(T::DTYPE));
    plan
}

/// Every pattern component at least once, on GQA and varlen problems, both dtypes.
fn every_pattern_component(d: u32, q_scale: usize) {
    let seed = base_seed() + u64::from(d);
    let none = AttnOptions::default();
    let n = |x: usize| x * q_scale / 4;
    let varlen = SeqLens::varlen_from_lens(&[(n(260), n(280)), (3, n(180))]).unwrap();
    check::<f16>(d, CAUSAL, uniform(1, 65, 130), (2, 1), &none, None, seed);
    check::<bf16>(d, DENSE, uniform(1, 17, 94), (2, 2), &none, None, seed + 1);
    for (m, json) in [
        STREAMING,
        r#"{"causal": true, "components": [{"dilated": {"stride": 3}}, {"global": {"tokens": [5, 70]}}]}"#,
        r#"{"causal": false, "components": [{"block_mask": {"block_q": 64, "block_k": 64, "mask": [[0,1,0],[1,0,1],[0,0,1]]}}, {"sliding_window": {"size": 3}}]}"#,
        r#"{"causal": true, "components": [{"bigbird": {"block": 32, "window_blocks": 1, "global_blocks": 1, "random_blocks": 1, "seed": 7}}]}"#,
        r#"{"causal": true, "components": [{"chunked": {"size": 48}}]}"#,
        r#"{"heads": [{"causal": true, "components": [{"sliding_window": {"size": 20}}]}, {"causal": false, "components": []}, {"causal": true, "components": []}, {"causal": true, "components": [{"sinks": {"count": 2}}, {"sliding_window": {"size": 9}}]}]}"#,
    ]
    .into_iter()
    .enumerate()
    {
        if m % 2 == 0 {
            check::<bf16>(d, json, varlen.clone(), (4, 2), &none, None, seed + 10 + m as u64);
        } else {
            check::<f16>(d, json, varlen.clone(), (4, 2), &none, None, seed + 10 + m as u64);
        }
    }
}

/// Split-KV on and off with sink logits and ALiBi (the sink term entering once, in the
/// combine), then GQA-packed decode rows against longer caches through shuffled pages (bit
/// for bit the contiguous result) and through a wrapped ring (sinks + window), then the
/// decode driver (chunked prefill and single tokens through a ring-buffered cache, run-time
/// walk).
fn split_kv_paged_ring_and_decode(d: u32, kv: usize) {
    let seed = base_seed() + 1000 + u64::from(d);
    let heads = 4;
    let mut rng = Rng::new(seed);
    let sinks: Vec<f32> = (0..heads).map(|_| 3.0 * rng.unit()).collect();
    let mods = AttnOptions {
        sink_logits: Some(sinks.clone()),
        alibi_slopes: Some(alibi_slopes(heads)),
        ..Default::default()
    };
    for splits in [1u32, 3] {
        let p = check::<f16>(
            d,
            STREAMING,
            uniform(1, 20, kv),
            (heads, 2),
            &mods,
            Some(splits),
            seed,
        );
        assert_eq!(p.num_splits(), splits);
    }

    let seqs = SeqLens::varlen_from_lens(&[(1, kv), (1, 65), (2, kv / 2)]).unwrap();
    let problem = AttnProblem::new(seqs.clone(), heads, 2, d, DType::BF16).unwrap();
    let set = HeadPatterns::from_json(STREAMING).unwrap();
    let plan = AttnPlan::with_patterns(&problem, &set, &mods)
        .unwrap()
        .with_num_splits(2)
        .unwrap();
    assert!(plan.gqa_pack() > 1, "GQA-packed decode");
    let (q, k, v) = random_qkv::<bf16>(&mut rng, &problem, 1.0, 1.0);
    let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
    let (out, lse) = plan.run_emulated(&q, &k, &v, &emu_run()).unwrap();
    assert_matches("decode", &problem, &out, &lse, &want, tol(DType::BF16));
    for (sink_pages, ring_pages) in [(0, 0), (1, 5)] {
        let pool = build_pool(
            &mut rng, &seqs, 2, d as usize, &k, &v, 16, sink_pages, ring_pages,
        );
        let kvp = PagedKv {
            k_pages: &pool.k,
            v_pages: &pool.v,
            block_table: &pool.table,
            layout: pool.layout,
        };
        let (pout, plse) = plan.run_emulated_paged(&q, &kvp, &emu_run()).unwrap();
        let what = format!("hd{d} paged, ring {ring_pages}");
        if ring_pages == 0 {
            assert_same_bits(&what, &pout, &out);
            assert_same_bits(&format!("{what} lse"), &plse, &lse);
        } else {
            assert_matches(&what, &problem, &pout, &plse, &want, tol(DType::BF16));
        }
    }

    let t = 40;
    let problem = AttnProblem::new(uniform(1, t, t), heads, 2, d, DType::F16).unwrap();
    let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
    let config = DecodeConfig {
        page_size: 8,
        prefill: 21,
        chunk: Some(10),
        sink_logits: Some(sinks.clone()),
        alibi_slopes: Some(alibi_slopes(heads)),
        ..Default::default()
    };
    let got = decode_emulated(&problem, &set, &config, &q, &k, &v, &emu_run()).unwrap();
    let full = AttnPlan::with_patterns(&problem, &set, &mods).unwrap();
    let want = reference_for(&full, &q, &k, &v, |b, h, i, j| full.allowed(b, h, i, j));
    assert_matches(
        &format!("decode driver hd{d}"),
        &problem,
        &got.out,
        &got.lse,
        &want,
        tol(DType::F16),
    );
}

#[test]
fn hd96_every_pattern_component() {
    every_pattern_component(96, 4);
}

#[test]
fn hd96_split_kv_paged_ring_and_decode() {
    split_kv_paged_ring_and_decode(96, 300);
}

#[test]
fn hd512_every_pattern_component() {
    every_pattern_component(512, 2);
}

#[test]
fn hd512_split_kv_paged_ring_and_decode() {
    split_kv_paged_ring_and_decode(512, 150);
}

#[test]
fn hd512_fits_sm80_and_sm90_not_sm86() {
    // 160 KB per block: within sm_80's 163 KB and sm_90's 227 KB; sm_86 / sm_89 (99 KB)
    // refuse the launch (the CUDA backend checks the device's limit the same way).
    let problem = AttnProblem::new(uniform(1, 3, 70), 2, 1, 512, DType::F16).unwrap();
    let set = HeadPatterns::from_json(CAUSAL).unwrap();
    let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
    assert_eq!(plan.tiles().smem_bytes, 160 * 1024);
    let mut rng = Rng::new(base_seed());
    let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
    let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
    // The two column blocks of a query tile count its kv tiles once: as many as head_dim
    // 256's one block (the same 64-row tiles, packing and splits).
    let hd256 = AttnProblem::new(uniform(1, 3, 70), 2, 1, 256, DType::F16).unwrap();
    let plan256 = AttnPlan::with_patterns(&hd256, &set, &AttnOptions::default()).unwrap();
    let (q2, k2, v2) = random_qkv::<f16>(&mut rng, &hd256, 1.0, 1.0);
    let visited256 = std::cell::Cell::new(0);
    let run256 = EmuRun {
        tiles_visited: Some(&visited256),
        ..emu_run()
    };
    plan256.run_emulated(&q2, &k2, &v2, &run256).unwrap();
    assert!(visited256.get() > 0);
    for arch in [TargetArch::Sm80, TargetArch::Sm90] {
        let visited = std::cell::Cell::new(0);
        let run = EmuRun {
            arch,
            tiles_visited: Some(&visited),
            ..emu_run()
        };
        let (out, lse) = plan.run_emulated(&q, &k, &v, &run).unwrap();
        assert_eq!(
            visited.get(),
            visited256.get(),
            "{arch:?}: kv tiles visited"
        );
        assert_matches(
            &format!("{arch:?}"),
            &problem,
            &out,
            &lse,
            &want,
            tol(DType::F16),
        );
    }
    for arch in [TargetArch::Sm86, TargetArch::Sm89] {
        let run = EmuRun { arch, ..emu_run() };
        let err = plan.run_emulated(&q, &k, &v, &run).unwrap_err();
        assert!(matches!(err, Error::Emulator(_)), "{arch:?}: {err:?}");
        assert!(err.to_string().contains("99 KB"), "{arch:?}: {err}");
    }
}

#[test]
fn unsupported_head_dim_is_one_typed_error() {
    let err = AttnProblem::new(uniform(1, 8, 8), 2, 2, 80, DType::BF16).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("head_dim 80") && msg.contains("96"), "{msg}");
}
