//! Block-sparse patterns on the CPU emulator against the f64 reference: every component of
//! docs/patterns.md alone and in unions, with and without causal, per-head mixtures, GQA, lengths
//! that are not tile multiples, q_len < kv_len and q_len > kv_len, rows left empty; and the
//! work accounting (kv tiles the kernel visits = tiles the metadata lists).

mod common;

use common::{
    assert_matches, assert_same_bits, base_seed, random_qkv, random_tensor, reference_for, tol, Rng,
};
use half::{bf16, f16};
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, Element, EmuRun, SeqLens};

/// Runs `pattern_json` on the emulator for the given shape and checks it against the
/// reference with the contract predicate; returns (tiles visited, tiles listed).
fn run<T: Element>(
    pattern_json: &str,
    seqs: SeqLens,
    heads: (usize, usize),
    head_dim: u32,
    seed: u64,
) -> (u64, u64) {
    let problem = AttnProblem::new(seqs, heads.0, heads.1, head_dim, T::DTYPE).unwrap();
    let patterns = HeadPatterns::from_json(pattern_json).unwrap();
    let plan = AttnPlan::with_patterns(&problem, &patterns, &AttnOptions::default()).unwrap();
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<T>(&mut rng, &problem, 1.0, 1.0);
    let counter = std::cell::Cell::new(0);
    let run = EmuRun {
        tiles_visited: Some(&counter),
        ..crate::common::emu_run()
    };
    let (out, lse) = plan.run_emulated(&q, &k, &v, &run).unwrap();
    let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
    let what = format!(
        "{} hd{head_dim} {:?} heads {heads:?} pattern {pattern_json} seed {seed}",
        T::DTYPE.name(),
        problem.seqs()
    );
    assert_matches(&what, &problem, &out, &lse, &want, tol(T::DTYPE));
    (counter.get(), plan.meta().tiles_visited())
}

fn uniform(q_len: usize, kv_len: usize) -> SeqLens {
    SeqLens::Uniform {
        batch: 1,
        q_len,
        kv_len,
    }
}

/// Each component alone, causal and not, at lengths that are not tile multiples, with
/// q_len == kv_len, q_len < kv_len and q_len > kv_len.
#[test]
fn every_component_alone() {
    let seed = base_seed();
    let components = [
        r#"{"dense": {}}"#,
        r#"{"sliding_window": {"size": 50}}"#,
        r#"{"sliding_window": {"left": 70, "right": 20}}"#,
        r#"{"sinks": {"count": 5}}"#,
        r#"{"global": {"tokens": [0, 3, 64, 100, 129]}}"#,
        r#"{"dilated": {"stride": 3}}"#,
        r#"{"block_mask": {"block_q": 32, "block_k": 48, "mask": [[1,0,1],[0,1,0],[1,1,0],[0,0,1],[1,0,0]]}}"#,
        r#"{"bigbird": {"block": 16, "window_blocks": 3, "global_blocks": 1, "random_blocks": 2, "seed": 7}}"#,
    ];
    for (n, c) in components.iter().enumerate() {
        for causal in [false, true] {
            let json = format!(r#"{{"causal": {causal}, "components": [{c}]}}"#);
            for (q_len, kv_len) in [(130, 130), (70, 150), (150, 130)] {
                let s = seed ^ (n as u64 * 7919 + q_len as u64);
                run::<f16>(&json, uniform(q_len, kv_len), (2, 1), 64, s);
            }
        }
    }
}

#[test]
fn unions_and_both_dtypes_and_head_dims() {
    let seed = base_seed();
    let unions = [
        // StreamingLLM: sinks + window.
        r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 40}}]}"#,
        // Longformer: window + global tokens.
        r#"{"causal": false, "components": [{"sliding_window": {"left": 16, "right": 16}}, {"global": {"tokens": [0, 1, 90]}}]}"#,
        // Dilated + window + sinks.
        r#"{"causal": true, "components": [{"dilated": {"stride": 4}}, {"sliding_window": {"size": 9}}, {"sinks": {"count": 2}}]}"#,
        // Block mask + window.
        r#"{"causal": false, "components": [{"block_mask": {"block_q": 64, "block_k": 64, "mask": [[0,1,0],[1,0,1],[0,0,1]]}}, {"sliding_window": {"size": 3}}]}"#,
    ];
    for (n, json) in unions.iter().enumerate() {
        let s = seed ^ n as u64;
        run::<f16>(json, uniform(150, 170), (2, 2), 64, s);
        run::<bf16>(json, uniform(150, 170), (2, 1), 128, s + 1);
    }
}

/// Gathered kv tiles whose mask is partial: a causal residue-class view (dilated stride 3
/// alone with sinks and global tokens) gathers the sinks outside each class and the global
/// keys; both straddle kv tiles (70 sinks, keys 65 and 200) and lie between the first and
/// last positions of a class tile's rows, so each row sees a different prefix of the gathered
/// keys. hd64 (the 128-row prefill tile and the 64-row decode tile) and hd128, varlen.
#[test]
fn gathered_tiles_with_partial_causal_prefixes() {
    let seed = base_seed() ^ 0x6a7;
    let json = r#"{"causal": true, "components": [{"dilated": {"stride": 3}}, {"sinks": {"count": 70}},
        {"global": {"tokens": [2, 65, 200, 201]}}]}"#;
    let lens = SeqLens::varlen_from_lens(&[(260, 300), (40, 250)]).unwrap();
    let (visited, listed) = run::<f16>(json, lens.clone(), (2, 1), 64, seed);
    assert_eq!(visited, listed);
    run::<bf16>(json, lens, (2, 2), 128, seed + 1);
    run::<f16>(json, uniform(20, 280), (4, 1), 64, seed + 2);
}

#[test]
fn per_head_mixture_with_gqa() {
    // Eight query heads over two kv heads, each head a different pattern (dilated strides,
    // streaming, dense, BigBird): heads of one kv group read different metadata rows.
    let seed = base_seed();
    let json = r#"{"heads": [
        {"causal": true, "components": [{"dilated": {"stride": 1}}]},
        {"causal": true, "components": [{"dilated": {"stride": 2}}]},
        {"causal": true, "components": [{"dilated": {"stride": 4}}]},
        {"causal": true, "components": [{"dilated": {"stride": 8}}]},
        {"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 32}}]},
        {"causal": false, "components": []},
        {"causal": true, "components": []},
        {"causal": false, "components": [{"bigbird": {"block": 32, "window_blocks": 1, "global_blocks": 1, "random_blocks": 1, "seed": 3}}]}
    ]}"#;
    run::<f16>(json, uniform(140, 140), (8, 2), 64, seed);
    run::<bf16>(json, uniform(100, 200), (8, 1), 128, seed + 1);
}

#[test]
fn varlen_batches_get_their_own_metadata() {
    let seed = base_seed();
    let seqs =
        SeqLens::varlen_from_lens(&[(50, 50), (130, 200), (1, 77), (0, 9), (64, 0)]).unwrap();
    let json = r#"{"causal": true, "components": [{"sinks": {"count": 3}}, {"sliding_window": {"size": 33}}]}"#;
    run::<f16>(json, seqs.clone(), (4, 2), 64, seed);
    let json = r#"{"causal": false, "components": [{"bigbird": {"block": 16, "window_blocks": 3, "global_blocks": 1, "random_blocks": 2, "seed": 11}}]}"#;
    run::<bf16>(json, seqs, (4, 2), 64, seed + 1);
}

#[test]
fn rows_left_empty_by_the_pattern() {
    // Causal window with q_len > kv_len: the first rows have negative positions and see
    // nothing; a block mask with empty rows leaves whole query blocks empty.
    let seed = base_seed();
    run::<f16>(
        r#"{"causal": true, "components": [{"sliding_window": {"size": 8}}]}"#,
        uniform(200, 90),
        (2, 1),
        64,
        seed,
    );
    run::<bf16>(
        r#"{"causal": false, "components": [{"block_mask": {"block_q": 64, "block_k": 64, "mask": [[1,1],[0,0],[0,1]]}}]}"#,
        uniform(180, 128),
        (2, 1),
        128,
        seed,
    );
}

#[test]
fn work_accounting_equals_metadata_and_the_ideal() {
    // head_dim 128: the 64-row tile the counts below are written for (head_dim 64 prefill
    // runs 128-row tiles; interval_masks_at_tile_edges checks its accounting).
    let seed = base_seed();
    // Block-aligned window of exactly one tile to the left (left = 63, right = 0, causal):
    // query tile m needs tiles m-1 and m (tile 0 only itself) = 2T - 1 per head.
    let t = 4u64;
    let (visited, listed) = run::<f16>(
        r#"{"causal": true, "components": [{"sliding_window": {"size": 64}}]}"#,
        uniform(256, 256),
        (2, 1),
        128,
        seed,
    );
    assert_eq!(visited, listed);
    assert_eq!(visited, 2 * (2 * t - 1));
    // A block mask aligned with the tiles lists exactly its ones.
    let (visited, listed) = run::<f16>(
        r#"{"causal": false, "components": [{"block_mask": {"block_q": 64, "block_k": 64, "mask": [[1,0,0,1],[0,1,0,0],[1,1,1,1],[0,0,0,1]]}}]}"#,
        uniform(256, 256),
        (2, 1),
        128,
        seed,
    );
    assert_eq!(visited, listed);
    assert_eq!(visited, 2 * 8);
}

#[test]
fn bigbird_is_deterministic_and_per_head() {
    // Same seed: bit-identical outputs across runs and schedules; heads draw independently,
    // so two heads with identical q/k/v still differ.
    let problem = AttnProblem::new(uniform(256, 256), 2, 1, 64, DType::F16).unwrap();
    let patterns = HeadPatterns::from_json(
        r#"{"causal": false, "components": [{"bigbird": {"block": 32, "window_blocks": 1, "global_blocks": 0, "random_blocks": 2, "seed": 5}}]}"#,
    )
    .unwrap();
    let plan = AttnPlan::with_patterns(&problem, &patterns, &AttnOptions::default()).unwrap();
    let mut rng = Rng::new(base_seed());
    // Both query heads get the same q rows.
    let q_one: Vec<f16> = random_tensor(&mut rng, 256 * 64, 1.0);
    let mut q = vec![f16::ZERO; problem.q_elems()];
    for i in 0..256 {
        for h in 0..2 {
            q[(i * 2 + h) * 64..][..64].copy_from_slice(&q_one[i * 64..][..64]);
        }
    }
    let k: Vec<f16> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
    let v: Vec<f16> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
    let a = plan
        .run_emulated(&q, &k, &v, &crate::common::emu_run())
        .unwrap();
    let b = plan
        .run_emulated(
            &q,
            &k,
            &v,
            &EmuRun {
                schedule: sparse_attn::emu::Schedule::Random(99),
                ..crate::common::emu_run()
            },
        )
        .unwrap();
    assert_same_bits("bigbird out under a random schedule", &b.0, &a.0);
    let differs = (0..256).any(|i| a.0[(i * 2) * 64..][..64] != a.0[(i * 2 + 1) * 64..][..64]);
    assert!(differs, "both heads drew the same random blocks");
    // A plan compiled again from the same JSON has identical metadata.
    let again = AttnPlan::with_patterns(&problem, &patterns, &AttnOptions::default()).unwrap();
    assert_eq!(plan.meta(), again.meta());
}

#[test]
fn invalid_patterns_are_typed_errors() {
    use sparse_attn::Error;
    let problem = AttnProblem::new(uniform(64, 64), 4, 2, 64, DType::F16).unwrap();
    for bad in [
        r#"{"causal": true, "components": [{"dilated": {"stride": 0}}]}"#,
        r#"{"causal": true, "components": [{"sliding_window": {"size": 0}}]}"#,
        r#"{"causal": true, "components": [{"block_mask": {"block_q": 16, "block_k": 16, "mask": [[1,0],[1]]}}]}"#,
        r#"{"causal": true, "components": [{"unknown": {}}]}"#,
        r#"{"heads": [{"causal": true, "components": []}]}"#,
        r#"{"causal": true, "components": [{"global": {"tokens": [64]}}]}"#,
    ] {
        let r = HeadPatterns::from_json(bad)
            .and_then(|p| AttnPlan::with_patterns(&problem, &p, &AttnOptions::default()));
        assert!(
            matches!(r, Err(Error::Pattern(_)) | Err(Error::Shape(_))),
            "{bad} gave {r:?}"
        );
    }
}

/// Dilated heads run per residue class and global tokens as gathered rows and key columns
/// (src/pattern/view.rs): the kernel visits exactly the tiles the metadata lists, and those
/// are proportional to what the pattern allows, not to q_len * kv_len.
#[test]
fn dilated_and_global_work_is_proportional_to_what_they_allow() {
    // head_dim 128: the 64-row tile the counts below are written for (head_dim 64 prefill
    // runs 128-row tiles; interval_masks_at_tile_edges checks its accounting).
    let seed = base_seed();
    // Stride 4, causal, 512 tokens: 4 classes of 128 rows, each a 2-tile causal triangle (3
    // visits): 12 per head instead of the 36 tiles of causal attention.
    let (visited, listed) = run::<f16>(
        r#"{"causal": true, "components": [{"dilated": {"stride": 4}}]}"#,
        uniform(512, 512),
        (2, 1),
        128,
        seed,
    );
    assert_eq!((visited, listed), (2 * 12, 2 * 12));
    // Non-causal stride 8 over 512: 8 classes of one tile each.
    let (visited, listed) = run::<bf16>(
        r#"{"causal": false, "components": [{"dilated": {"stride": 8}}]}"#,
        uniform(512, 512),
        (1, 1),
        128,
        seed + 1,
    );
    assert_eq!((visited, listed), (8, 8));
    // 8 global tokens over 1024 (non-causal): 16 tiles of other rows with one gathered key
    // tile each, one tile of global rows over the 16 kv tiles: 32, against 256 for dense.
    let (visited, listed) = run::<f16>(
        r#"{"causal": false, "components": [{"global": {"tokens": [3, 130, 260, 390, 520, 650, 780, 1000]}}]}"#,
        uniform(1024, 1024),
        (1, 1),
        128,
        seed + 2,
    );
    assert_eq!((visited, listed), (32, 32));
}

/// Views under every launch shape: unaligned lengths, q_len < kv_len and > kv_len, GQA with
/// and without packing (decode-shaped queries pack the heads of a kv group), split-KV, varlen,
/// both dtypes and head dims, unions of dilated and global tokens.
#[test]
fn views_under_every_launch_shape() {
    let seed = base_seed();
    let dilated = r#"{"causal": true, "components": [{"dilated": {"stride": 3}}]}"#;
    let global =
        r#"{"causal": true, "components": [{"global": {"tokens": [0, 7, 64, 65, 66, 150]}}]}"#;
    let both = r#"{"causal": false, "components": [{"dilated": {"stride": 5}}, {"global": {"tokens": [2, 99, 100]}}]}"#;
    let longformer = r#"{"causal": true, "components": [{"sliding_window": {"size": 20}}, {"global": {"tokens": [0, 1, 40, 120]}}]}"#;
    let sinks = r#"{"causal": true, "components": [{"sinks": {"count": 5}}, {"dilated": {"stride": 4}}, {"global": {"tokens": [77]}}]}"#;
    // 100 global tokens: gathered key lists longer than a tile (entries -2, -1).
    let tokens: Vec<String> = (0..300).step_by(3).map(|t| t.to_string()).collect();
    let many = format!(
        r#"{{"causal": true, "components": [{{"global": {{"tokens": [{}]}}}}]}}"#,
        tokens.join(",")
    );
    run::<f16>(&many, uniform(400, 400), (2, 1), 64, seed ^ 0x77);
    run::<bf16>(&many, uniform(3, 350), (2, 2), 128, seed ^ 0x78);
    for (n, json) in [dilated, global, both, longformer, sinks]
        .iter()
        .enumerate()
    {
        let s = seed ^ (n as u64) << 8;
        run::<f16>(json, uniform(190, 190), (4, 2), 64, s);
        run::<bf16>(json, uniform(70, 230), (2, 1), 128, s + 1);
        run::<f16>(json, uniform(5, 160), (8, 2), 64, s + 2);
        run::<bf16>(json, uniform(1, 1000), (4, 4), 64, s + 3);
        // Those two shapes do pack, and split where the walk is long enough (a decode row
        // of the global-only pattern visits one gathered tile):
        let plan = |seqs, heads: (usize, usize)| {
            let problem = AttnProblem::new(seqs, heads.0, heads.1, 64, DType::F16).unwrap();
            let set = HeadPatterns::from_json(json).unwrap();
            AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap()
        };
        assert_eq!(plan(uniform(5, 160), (8, 2)).gqa_pack(), 4);
        let walk = plan(uniform(1, 1000), (4, 4));
        assert_eq!(
            walk.num_splits() > 1,
            [dilated, both, sinks].contains(json),
            "{json}"
        );
        let seqs =
            SeqLens::varlen_from_lens(&[(151, 151), (3, 170), (0, 160), (200, 180)]).unwrap();
        run::<f16>(json, seqs, (2, 1), 64, s + 4);
    }
}

/// The forward kernel's interval masks at tile edges: windows that start or end inside a tile
/// or exactly on its edge, sinks that straddle a tile, unions of two intervals (sinks and a
/// window, two windows), three interval components (the general interpreter), windows in
/// views (dilated classes, gathered global keys), with query offsets both ways; every loader
/// path is taken along the way (full strided tiles, tails, gathered tiles).
#[test]
fn interval_masks_at_tile_edges() {
    let seed = base_seed();
    let patterns = [
        r#"{"causal": true, "components": [{"sliding_window": {"size": 1}}]}"#,
        r#"{"causal": true, "components": [{"sliding_window": {"size": 63}}]}"#,
        r#"{"causal": true, "components": [{"sliding_window": {"size": 64}}]}"#,
        r#"{"causal": true, "components": [{"sliding_window": {"size": 65}}]}"#,
        r#"{"causal": false, "components": [{"sliding_window": {"left": 127, "right": 1}}]}"#,
        r#"{"causal": false, "components": [{"sliding_window": {"left": 0, "right": 64}}]}"#,
        r#"{"causal": true, "components": [{"sinks": {"count": 63}}]}"#,
        r#"{"causal": false, "components": [{"sinks": {"count": 65}}]}"#,
        r#"{"causal": true, "components": [{"sinks": {"count": 70}}, {"sliding_window": {"size": 40}}]}"#,
        r#"{"causal": false, "components": [{"sliding_window": {"left": 5, "right": 0}}, {"sliding_window": {"left": 0, "right": 70}}]}"#,
        r#"{"causal": true, "components": [{"sinks": {"count": 3}}, {"sliding_window": {"size": 20}}, {"sliding_window": {"left": 100, "right": 0}}]}"#,
        r#"{"causal": true, "components": [{"dense": {}}, {"sinks": {"count": 1}}]}"#,
        r#"{"causal": true, "components": [{"dilated": {"stride": 3}}, {"sinks": {"count": 66}}]}"#,
        r#"{"causal": true, "components": [{"dilated": {"stride": 2}}, {"sliding_window": {"size": 90}}]}"#,
        r#"{"causal": false, "components": [{"global": {"tokens": [0, 65, 140]}}, {"sliding_window": {"left": 64, "right": 64}}]}"#,
    ];
    for (n, json) in patterns.iter().enumerate() {
        for (q_len, kv_len) in [(200, 200), (77, 200), (200, 150)] {
            let s = seed ^ (n as u64 * 104729 + q_len as u64);
            let (visited, listed) = run::<f16>(json, uniform(q_len, kv_len), (2, 1), 64, s);
            assert_eq!(visited, listed, "{json}: tiles visited");
        }
        run::<bf16>(json, uniform(190, 190), (2, 2), 128, seed ^ n as u64);
    }
}
