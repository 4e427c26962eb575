//! head_dim 256 (Gemma 2/3, the local layers of Gemma 4) on the CPU emulator against the f64
//! reference: the 64-row tile with Q re-read from shared memory, its loader's alternating
//! swizzle phases (4 rows per pass), interval and interpreted masks, paging, GQA packing and
//! split-KV with its combine.

mod common;

use common::paged::build_pool;
use common::{assert_matches, assert_same_bits, base_seed, random_qkv, reference_for, tol, Rng};
use half::{bf16, f16};
use sparse_attn::attention::PagedKv;
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, Element, SeqLens};

const D: u32 = 256;

fn check<T: Element>(pattern: &str, seqs: SeqLens, heads: (usize, usize), seed: u64) -> AttnPlan {
    let problem = AttnProblem::new(seqs.clone(), heads.0, heads.1, D, T::DTYPE).unwrap();
    let set = HeadPatterns::from_json(pattern).unwrap();
    let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
    assert_eq!(plan.tiles().head_dim, D);
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<T>(&mut rng, &problem, 1.0, 1.0);
    let (out, lse) = plan
        .run_emulated(&q, &k, &v, &crate::common::emu_run())
        .unwrap();
    let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
    let what = format!("{} hd256 {pattern} {seqs:?} seed {seed}", T::DTYPE.name());
    assert_matches(&what, &problem, &out, &lse, &want, tol(T::DTYPE));
    plan
}

const CAUSAL: &str = r#"{"causal": true, "components": []}"#;
const DENSE: &str = r#"{"causal": false, "components": []}"#;

#[test]
fn dense_and_causal_at_tile_edges_both_dtypes() {
    let seed = base_seed();
    for (n, (q, kv)) in [(1, 1), (17, 94), (64, 64), (65, 130), (200, 200)]
        .into_iter()
        .enumerate()
    {
        let seqs = SeqLens::Uniform {
            batch: 1,
            q_len: q,
            kv_len: kv,
        };
        check::<f16>(CAUSAL, seqs.clone(), (2, 1), seed + n as u64);
        check::<bf16>(DENSE, seqs, (2, 2), seed + 100 + n as u64);
    }
}

#[test]
fn gemma_style_window_sinks_and_table_driven_masks() {
    let seed = base_seed();
    let seqs = SeqLens::varlen_from_lens(&[(150, 170), (3, 90)]).unwrap();
    for (n, json) in [
        // Gemma 2/3 local layer (window 4096 there; a window that ends inside tiles here).
        r#"{"causal": true, "components": [{"sliding_window": {"size": 40}}]}"#,
        // Two intervals: sinks + window.
        r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 33}}]}"#,
        // Interpreted: a block mask with a window.
        r#"{"causal": false, "components": [{"block_mask": {"block_q": 64, "block_k": 64, "mask": [[0,1,0],[1,0,1],[0,0,1]]}}, {"sliding_window": {"size": 3}}]}"#,
    ]
    .into_iter()
    .enumerate()
    {
        check::<bf16>(json, seqs.clone(), (4, 2), seed + n as u64);
    }
}

#[test]
fn paged_decode_with_gqa_packing_and_split_kv() {
    // Decode rows (GQA-packed, split by default) against long caches, read through shuffled
    // 16-token pages: equal to the reference, and paging changes no bit.
    let seed = base_seed();
    let seqs = SeqLens::varlen_from_lens(&[(1, 700), (1, 65), (2, 300)]).unwrap();
    let problem = AttnProblem::new(seqs.clone(), 8, 2, D, f16::DTYPE).unwrap();
    for (n, pattern) in [
        CAUSAL,
        r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 128}}]}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let set = HeadPatterns::from_json(pattern).unwrap();
        let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
        assert!(plan.gqa_pack() > 1 && plan.num_splits() > 1, "decode shape");
        let mut rng = Rng::new(seed + n as u64);
        let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
        let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
        let (out, lse) = plan
            .run_emulated(&q, &k, &v, &crate::common::emu_run())
            .unwrap();
        assert_matches(pattern, &problem, &out, &lse, &want, tol(f16::DTYPE));
        let pool = build_pool(&mut rng, &seqs, 2, D as usize, &k, &v, 16, 0, 0);
        let kv = PagedKv {
            k_pages: &pool.k,
            v_pages: &pool.v,
            block_table: &pool.table,
            layout: pool.layout,
        };
        let (pout, plse) = plan
            .run_emulated_paged(&q, &kv, &crate::common::emu_run())
            .unwrap();
        assert_same_bits(&format!("{pattern}: paged"), &pout, &out);
        assert_same_bits(&format!("{pattern}: paged lse"), &plse, &lse);
    }
}
