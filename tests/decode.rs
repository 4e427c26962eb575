//! The decode driver (`kv_cache::decode_emulated`): chunked prefill plus token-by-token
//! decode through a paged cache equals one emulated forward pass over all T tokens with the
//! same causal pattern, and the f64 reference.

mod common;

use common::{
    assert_lse_close, assert_matches, base_seed, random_qkv, reference_for, rel_error, tol, Rng,
};
use half::{bf16, f16};
use sparse_attn::kv_cache::{decode_emulated, DecodeConfig, DecodeOutput, LayerCapacity, PageSize};
use sparse_attn::pattern::{HeadPatterns, Pattern};
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, Element, Error, SeqLens};

#[derive(Clone)]
struct Case {
    name: &'static str,
    batch: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: u32,
    t: usize,
    patterns: HeadPatterns,
    config: DecodeConfig,
}

fn config(page_size: usize, prefill: usize, chunk: Option<usize>) -> DecodeConfig {
    DecodeConfig {
        page_size,
        prefill,
        chunk,
        ..Default::default()
    }
}

/// Runs the case through the decode driver and checks it against the one-shot emulated run
/// and the f64 reference; returns the driver's output.
fn check<T: Element>(c: &Case, seed: u64) -> DecodeOutput<T> {
    let what = format!("{} ({})", c.name, T::DTYPE.name());
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: c.batch,
            q_len: c.t,
            kv_len: c.t,
        },
        c.heads,
        c.kv_heads,
        c.head_dim,
        T::DTYPE,
    )
    .unwrap();
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<T>(&mut rng, &problem, 2.0, 1.0);
    let run = crate::common::emu_run();
    let got = decode_emulated(&problem, &c.patterns, &c.config, &q, &k, &v, &run)
        .unwrap_or_else(|e| panic!("{what}: {e}"));

    let plan = AttnPlan::with_patterns(&problem, &c.patterns, &AttnOptions::default()).unwrap();
    let (full_out, full_lse) = plan.run_emulated(&q, &k, &v, &run).unwrap();
    // Against the one-shot kernel run over all T tokens.
    let wide: Vec<f64> = full_out.iter().map(|x| x.to_f32() as f64).collect();
    let err = rel_error(&got.out, &wide);
    assert!(
        err <= tol(T::DTYPE),
        "{what}: decode vs run: relative error {err:.3e}"
    );
    assert_lse_close(&format!("{what}: decode vs run"), &got.lse, &full_lse, 1e-3);
    // Against the f64 reference with the plan's own predicate.
    let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
    assert_matches(&what, &problem, &got.out, &got.lse, &want, tol(T::DTYPE));

    // Steps: prefill chunks, then one per decoded token.
    let p = c.config.prefill;
    let chunk = c.config.chunk.unwrap_or(p).max(1);
    assert_eq!(got.steps, p.div_ceil(chunk) + (c.t - p), "{what}: steps");
    // One run-time plan serves every prefill chunk and decode step.
    assert_eq!(got.plans_built, 1, "{what}: plans");
    // Accounting: what the capacity allows, never more than a dense cache.
    let ps = PageSize::new(c.config.page_size).unwrap();
    let cap = LayerCapacity::from_patterns(&c.patterns, ps, chunk).unwrap();
    let per_seq = cap.pages_per_sequence(ps.pages_for(c.t));
    assert_eq!(got.pages_used, c.batch * per_seq, "{what}: pages used");
    let page_bytes = 2 * c.kv_heads * c.config.page_size * c.head_dim as usize * 2;
    assert_eq!(got.bytes_used, (got.pages_used * page_bytes) as u64);
    assert_eq!(
        got.dense_bytes,
        (2 * c.batch * c.t * c.kv_heads * c.head_dim as usize * 2) as u64
    );
    got
}

#[test]
fn dense_causal() {
    let seed = base_seed();
    let c = Case {
        name: "dense causal",
        batch: 1,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        t: 150,
        patterns: Pattern::causal().into(),
        config: config(16, 70, None),
    };
    check::<f16>(&c, seed);
    check::<bf16>(&c, seed + 1);
    // Prefill everything, or nothing.
    check::<f16>(
        &Case {
            config: config(16, 150, Some(64)),
            ..c.clone()
        },
        seed + 2,
    );
    let c = Case {
        name: "dense causal, decode only",
        t: 40,
        patterns: Pattern::causal().into(),
        config: config(8, 0, None),
        ..c
    };
    check::<f16>(&c, seed + 3);
}

#[test]
fn streaming_ring_wraps() {
    let seed = base_seed();
    let c = Case {
        name: "StreamingLLM 4 + 64, T 600, page 16",
        batch: 1,
        heads: 2,
        kv_heads: 1,
        head_dim: 64,
        t: 600,
        patterns: Pattern::streaming(4, 64).unwrap().into(),
        config: config(16, 40, Some(16)),
    };
    let got = check::<f16>(&c, seed);
    // One sink page and a ring of ceil((63 + 16 - 1) / 16) + 1 = 6 pages: 600 tokens (38
    // logical pages) wrap it several times.
    assert_eq!(got.pages_used, 7);
    assert!(got.bytes_used * 5 < got.dense_bytes);
    check::<bf16>(&c, seed + 1);
}

#[test]
fn sliding_window_awkward_chunks() {
    let seed = base_seed();
    for (i, (chunk, page)) in [(37usize, 16usize), (13, 8), (64, 32)]
        .into_iter()
        .enumerate()
    {
        let c = Case {
            name: "sliding window 48, chunked prefill",
            batch: 1,
            heads: 4,
            kv_heads: 4,
            head_dim: 64,
            t: 260,
            patterns: Pattern::causal_window(48).unwrap().into(),
            config: config(page, 200, Some(chunk)),
        };
        check::<f16>(&c, seed + i as u64);
    }
}

#[test]
fn gqa_and_mqa() {
    let seed = base_seed();
    let gqa = Case {
        name: "GQA 8:1, window 32",
        batch: 1,
        heads: 16,
        kv_heads: 2,
        head_dim: 128,
        t: 120,
        patterns: Pattern::causal_window(32).unwrap().into(),
        config: config(16, 50, Some(20)),
    };
    check::<bf16>(&gqa, seed);
    let mqa = Case {
        name: "MQA, sinks + window",
        batch: 1,
        heads: 8,
        kv_heads: 1,
        head_dim: 64,
        t: 130,
        patterns: Pattern::streaming(2, 24).unwrap().into(),
        config: config(8, 33, Some(11)),
    };
    check::<f16>(&mqa, seed + 1);
    let mqa_dense = Case {
        name: "MQA, dense causal",
        patterns: Pattern::causal().into(),
        ..mqa
    };
    check::<f16>(&mqa_dense, seed + 2);
}

#[test]
fn batch_of_two() {
    let seed = base_seed();
    for (i, page) in [8usize, 32].into_iter().enumerate() {
        let c = Case {
            name: "batch 2, per-head windows",
            batch: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            t: 140,
            patterns: HeadPatterns::PerHead(vec![
                Pattern::causal_window(16).unwrap(),
                Pattern::streaming(4, 40).unwrap(),
                Pattern::causal_window(8).unwrap(),
                Pattern::causal(),
            ]),
            config: config(page, 60, Some(25)),
        };
        check::<f16>(&c, seed + 2 * i as u64);
        let c = Case {
            name: "batch 2, streaming",
            patterns: Pattern::streaming(4, 30).unwrap().into(),
            ..c.clone()
        };
        check::<bf16>(&c, seed + 2 * i as u64 + 1);
    }
}

#[test]
fn rejects_bad_requests() {
    let problem = |q_len, kv_len| {
        AttnProblem::new(
            SeqLens::Uniform {
                batch: 1,
                q_len,
                kv_len,
            },
            2,
            1,
            64,
            f16::DTYPE,
        )
        .unwrap()
    };
    let p = problem(32, 32);
    let x = vec![f16::ZERO; p.q_elems()];
    let kv = vec![f16::ZERO; p.kv_elems()];
    let run = crate::common::emu_run();
    let go = |p: &AttnProblem, set: &HeadPatterns, cfg: DecodeConfig| {
        let q = vec![f16::ZERO; p.q_elems()];
        let k = vec![f16::ZERO; p.kv_elems()];
        decode_emulated(p, set, &cfg, &q, &k, &k, &run).map(|_| ())
    };
    let causal: HeadPatterns = Pattern::causal().into();
    // Not causal: on every head, or on one head.
    let r = go(&p, &Pattern::dense().into(), config(16, 8, None));
    assert!(matches!(r, Err(Error::Pattern(_))), "{r:?}");
    let mixed = HeadPatterns::PerHead(vec![Pattern::causal(), Pattern::dense()]);
    let r = go(&p, &mixed, config(16, 8, None));
    assert!(
        matches!(&r, Err(Error::Pattern(m)) if m.contains("head 1")),
        "{r:?}"
    );
    // q_len != kv_len, prefill past T, T = 0.
    let r = go(&problem(16, 32), &causal, config(16, 8, None));
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
    let r = go(&p, &causal, config(16, 33, None));
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
    let r = go(&problem(0, 0), &causal, config(16, 0, None));
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
    // Bad page sizes, a zero chunk.
    for ps in [0usize, 12, 4, 512] {
        let r = go(&p, &causal, config(ps, 8, None));
        assert!(
            matches!(r, Err(Error::Cache(_) | Error::Shape(_))),
            "{ps}: {r:?}"
        );
    }
    let r = go(&p, &causal, config(16, 8, Some(0)));
    assert!(matches!(r, Err(Error::Cache(_))), "{r:?}");
    // Wrong tensor lengths.
    let r = decode_emulated(&p, &causal, &config(16, 8, None), &x[1..], &kv, &kv, &run);
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
}

/// Patterns whose layers keep every page: global tokens (including ones past the prefill and
/// a pattern that is nothing but a late global token), dilation, block masks, BigBird.
#[test]
fn full_capacity_components() {
    let seed = base_seed();
    let cases = [
        (
            "sinks, window and late globals",
            r#"{"causal": true, "components": [{"sinks": {"count": 2}}, {"sliding_window": {"size": 16}}, {"global": {"tokens": [5, 90, 130]}}]}"#,
        ),
        (
            "one late global token only",
            r#"{"causal": true, "components": [{"global": {"tokens": [120]}}]}"#,
        ),
        (
            "dilated stride 3",
            r#"{"causal": true, "components": [{"dilated": {"stride": 3}}]}"#,
        ),
        (
            "dilated stride 4 with global tokens (residue-class views, gathered rows and keys)",
            r#"{"causal": true, "components": [{"dilated": {"stride": 4}}, {"global": {"tokens": [1, 64, 70, 149]}}]}"#,
        ),
        (
            "block mask",
            r#"{"causal": true, "components": [{"block_mask": {"block_q": 32, "block_k": 32, "mask": [[1,0,0,0,0],[0,1,0,0,0],[1,0,1,0,0],[0,0,1,1,0],[1,1,0,0,1]]}}]}"#,
        ),
        (
            "BigBird",
            r#"{"causal": true, "components": [{"bigbird": {"block": 16, "window_blocks": 3, "global_blocks": 1, "random_blocks": 2, "seed": 7}}]}"#,
        ),
    ];
    for (i, (name, json)) in cases.into_iter().enumerate() {
        let c = Case {
            name,
            batch: 1,
            heads: 2,
            kv_heads: 1,
            head_dim: 64,
            t: 150,
            patterns: HeadPatterns::from_json(json).unwrap(),
            config: config(16, 60, Some(23)),
        };
        check::<f16>(&c, seed + i as u64);
    }
}

#[test]
fn five_thousand_tokens_through_sinks_and_a_256_window() {
    // The issue's long stream: 5000 tokens through 4 sinks + a 256-token window, page 16.
    // Prefill 4500 in chunks of 300, then 500 single-token decode steps; the ring (1 sink page
    // + ceil((255 + 300 - 1) / 16) + 1 = 36 pages) wraps many times.
    let seed = base_seed();
    let c = Case {
        name: "StreamingLLM 4 + 256, T 5000, page 16",
        batch: 1,
        heads: 2,
        kv_heads: 1,
        head_dim: 64,
        t: 5000,
        patterns: Pattern::streaming(4, 256).unwrap().into(),
        config: config(16, 4500, Some(300)),
    };
    let got = check::<f16>(&c, seed);
    assert_eq!(got.pages_used, 1 + 36);
    assert!(got.bytes_used * 8 < got.dense_bytes);
}
