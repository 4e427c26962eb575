//! Unit tests: JSON forms, validation, each component's predicate at its boundaries, BigBird's
//! draws, and tile counts of block-aligned patterns. Random patterns and shapes are covered by
//! `tests/pattern_props.rs`.

use serde_json::{json, Value};

use super::*;
use crate::error::Error;

fn pat(v: Value) -> Pattern {
    Pattern::from_json(&v.to_string()).unwrap()
}

fn err(v: Value) -> String {
    match HeadPatterns::from_json(&v.to_string()) {
        Ok(p) => panic!("accepted {v}: {p:?}"),
        Err(Error::Pattern(m)) => m,
        Err(e) => panic!("wrong error kind: {e}"),
    }
}

fn allowed_keys(p: &Pattern, head: usize, pos: i64, kv_len: usize) -> Vec<i64> {
    (0..kv_len as i64)
        .filter(|&j| p.allowed(head, pos, j, kv_len))
        .collect()
}

// ---- JSON ------------------------------------------------------------------------------------

#[test]
fn contract_examples_round_trip() {
    // The contract's per-head example: dilated strides 1, 2, 4, 8 over 8 heads.
    let dilated_heads: Vec<Value> = [1, 2, 4, 8, 1, 2, 4, 8]
        .iter()
        .map(|k| json!({"causal": true, "components": [{"dilated": {"stride": k}}]}))
        .collect();
    let examples = [
        json!({"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 1024}}]}),
        json!({"causal": false, "components": [{"dense": {}}]}),
        json!({"causal": false, "components": [{"sliding_window": {"left": 3, "right": 2}}]}),
        json!({"causal": true, "components": [{"global": {"tokens": [0, 5, 9]}}]}),
        json!({"causal": false, "components": [{"dilated": {"stride": 4}}]}),
        json!({"causal": false, "components": [{"block_mask": {"block_q": 2, "block_k": 3, "mask": [[1, 0], [0, 1]]}}]}),
        json!({"causal": true, "components": [{"bigbird": {"block": 16, "window_blocks": 3, "global_blocks": 1, "random_blocks": 2, "seed": 42}}]}),
        json!({"causal": true, "components": []}),
        json!({"heads": dilated_heads}),
    ];
    for v in examples {
        let set = HeadPatterns::from_json(&v.to_string()).unwrap();
        let back: Value = serde_json::from_str(&set.to_json()).unwrap();
        assert_eq!(back, v);
        assert_eq!(HeadPatterns::from_json(&set.to_json()).unwrap(), set);
    }
    let plan = json!({"layers": [
        {"causal": true, "components": [{"sliding_window": {"size": 4096}}]},
        {"causal": true, "components": []},
    ]});
    let p = LayerPlan::from_json(&plan.to_string()).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&p.to_json()).unwrap(), plan);
    assert_eq!(
        p,
        LayerPlan::interleaved(
            2,
            Pattern::causal_window(4096).unwrap(),
            Pattern::causal(),
            1
        )
        .unwrap()
    );
}

#[test]
fn json_shorthands_and_defaults() {
    // `components` defaults to dense; the size shorthand equals left = W - 1, right = 0.
    assert_eq!(pat(json!({"causal": true})), Pattern::causal());
    assert_eq!(
        pat(json!({"causal": true, "components": [{"sliding_window": {"size": 5}}]})),
        pat(json!({"causal": true, "components": [{"sliding_window": {"left": 4, "right": 0}}]}))
    );
    // Global tokens are kept sorted and distinct.
    let g = pat(json!({"causal": false, "components": [{"global": {"tokens": [7, 2, 7]}}]}));
    assert_eq!(
        g.to_json(),
        r#"{"causal":false,"components":[{"global":{"tokens":[2,7]}}]}"#
    );
}

#[test]
fn malformed_json_is_rejected_with_a_clear_message() {
    let cases = [
        (json!({"causal": true, "extra": 1}), "unknown field"),
        (json!({"components": []}), "\"causal\""),
        (
            json!({"causal": true, "components": [{"tophat": {}}]}),
            "unknown variant",
        ),
        (
            json!({"causal": true, "components": [{"dense": {"x": 1}}]}),
            "unknown field",
        ),
        (
            json!({"causal": true, "components": [{"sliding_window": {"size": 3, "left": 1}}]}),
            "not both",
        ),
        (
            json!({"causal": true, "components": [{"sliding_window": {"left": 1}}]}),
            "both \"left\" and \"right\"",
        ),
        (
            json!({"causal": true, "components": [{"sliding_window": {"size": 3, "width": 1}}]}),
            "unknown field",
        ),
        (
            json!({"causal": true, "components": [{"sliding_window": {"size": 0}}]}),
            "size must be at least 1",
        ),
        (
            json!({"causal": true, "components": [{"sliding_window": {"left": -1, "right": 4}}]}),
            "left must be at least 0",
        ),
        (
            json!({"causal": true, "components": [{"sliding_window": {"left": 1, "right": -2}}]}),
            "right must be at least 0",
        ),
        (
            json!({"causal": true, "components": [{"sliding_window": {"size": 4294967296u64}}]}),
            "at most 2147483647",
        ),
        (
            json!({"causal": true, "components": [{"sinks": {"count": 0}}]}),
            "count must be at least 1",
        ),
        (
            json!({"causal": true, "components": [{"dilated": {"stride": 0}}]}),
            "stride must be at least 1",
        ),
        (
            json!({"causal": true, "components": [{"global": {"tokens": []}}]}),
            "empty",
        ),
        (
            json!({"causal": true, "components": [{"global": {"tokens": [-1]}}]}),
            "global token must be at least 0",
        ),
        (
            json!({"causal": true, "components": [{"block_mask": {"block_q": 0, "block_k": 1, "mask": [[1]]}}]}),
            "block_q must be at least 1",
        ),
        (
            json!({"causal": true, "components": [{"block_mask": {"block_q": 1, "block_k": 0, "mask": [[1]]}}]}),
            "block_k must be at least 1",
        ),
        (
            json!({"causal": true, "components": [{"block_mask": {"block_q": 1, "block_k": 1, "mask": [[1, 0], [1]]}}]}),
            "ragged",
        ),
        (
            json!({"causal": true, "components": [{"block_mask": {"block_q": 1, "block_k": 1, "mask": [[1, 2]]}}]}),
            "mask[0][1]",
        ),
        (
            json!({"causal": true, "components": [{"block_mask": {"block_q": 1, "block_k": 1, "mask": [[1, -1]]}}]}),
            "0 or 1",
        ),
        (
            json!({"causal": true, "components": [{"block_mask": {"block_q": 1, "block_k": 1, "mask": []}}]}),
            "at least one row",
        ),
        (
            json!({"causal": true, "components": [{"bigbird": {"block": 0, "window_blocks": 3, "global_blocks": 1, "random_blocks": 1, "seed": 1}}]}),
            "bigbird block must be at least 1",
        ),
        (
            json!({"causal": true, "components": [{"bigbird": {"block": 8, "window_blocks": 3, "global_blocks": -1, "random_blocks": 1, "seed": 1}}]}),
            "global_blocks",
        ),
        (
            json!({"causal": true, "components": [{"bigbird": {"block": 8, "window_blocks": 3, "global_blocks": 1, "seed": 1}}]}),
            "random_blocks",
        ),
        (json!({"heads": []}), "empty"),
        (
            json!({"heads": [{"causal": true}], "causal": true}),
            "not both",
        ),
    ];
    for (v, needle) in cases {
        let m = err(v.clone());
        assert!(m.contains(needle), "{v}: {m:?} lacks {needle:?}");
    }
}

#[test]
fn shape_validation() {
    let set = HeadPatterns::PerHead(vec![Pattern::causal(); 3]);
    let m = set.validate(4, 10).unwrap_err().to_string();
    assert!(
        m.contains("3 entries") && m.contains("4 query heads"),
        "{m}"
    );
    set.validate(3, 10).unwrap();

    let g = HeadPatterns::All(pat(
        json!({"causal": false, "components": [{"global": {"tokens": [3, 10]}}]}),
    ));
    let m = g.validate(1, 10).unwrap_err().to_string();
    assert!(
        m.contains("global token 10") && m.contains("kv_len 10"),
        "{m}"
    );
    g.validate(1, 11).unwrap();

    let shape = SparseShape {
        num_heads: 1,
        q_len: 8,
        kv_len: 8,
        block_m: 0,
        block_n: 16,
    };
    assert!(matches!(
        BlockSparseMeta::compile(&Pattern::causal().into(), shape),
        Err(Error::Shape(_))
    ));
    let shape = SparseShape {
        block_m: 16,
        ..shape
    };
    assert!(matches!(
        BlockSparseMeta::compile(&g, shape),
        Err(Error::Pattern(_))
    ));
    let plan = LayerPlan::uniform(2, set).unwrap();
    let m = plan.validate(4, 10).unwrap_err().to_string();
    assert!(m.contains("layer 0"), "{m}");
}

// ---- predicates at their boundaries -----------------------------------------------------------

#[test]
fn window_size_includes_exactly_w_tokens() {
    for w in [1, 2, 5, 16] {
        let p = Pattern::causal_window(w).unwrap();
        for pos in 0..40i64 {
            let keys = allowed_keys(&p, 0, pos, 40);
            let expect: Vec<i64> = ((pos - w + 1).max(0)..=pos).collect();
            assert_eq!(keys, expect, "size {w} at p {pos}");
        }
        // A full window away from the start holds exactly w tokens, the newest being p itself.
        assert_eq!(allowed_keys(&p, 0, 30, 40).len() as i64, w);
    }
}

#[test]
fn window_left_right_bounds() {
    let p =
        pat(json!({"causal": false, "components": [{"sliding_window": {"left": 2, "right": 3}}]}));
    assert_eq!(allowed_keys(&p, 0, 10, 20), vec![8, 9, 10, 11, 12, 13]);
    // Near the ends the window is cut by the key range.
    assert_eq!(allowed_keys(&p, 0, 0, 20), vec![0, 1, 2, 3]);
    assert_eq!(allowed_keys(&p, 0, 19, 20), vec![17, 18, 19]);
    // Negative positions (q_len > kv_len) see only what `right` reaches.
    assert_eq!(allowed_keys(&p, 0, -2, 20), vec![0, 1]);
    assert_eq!(allowed_keys(&p, 0, -4, 20), Vec::<i64>::new());
    // Causal cuts the right side: (left, right) = (2, 3) causal is the size-3 window.
    let c = Pattern::new(true, p.components.clone());
    assert_eq!(allowed_keys(&c, 0, 10, 20), vec![8, 9, 10]);
    // left = right = 0 is the diagonal only.
    let d =
        pat(json!({"causal": false, "components": [{"sliding_window": {"left": 0, "right": 0}}]}));
    assert_eq!(allowed_keys(&d, 0, 7, 20), vec![7]);
}

#[test]
fn sinks_global_and_kv_bound() {
    let s = Pattern::streaming(2, 3).unwrap();
    assert_eq!(allowed_keys(&s, 0, 10, 12), vec![0, 1, 8, 9, 10]);
    // Causality applies to sinks too: position 0 sees only key 0.
    assert_eq!(allowed_keys(&s, 0, 0, 12), vec![0]);
    let g = pat(json!({"causal": false, "components": [{"global": {"tokens": [1, 4]}}]}));
    assert_eq!(allowed_keys(&g, 0, 6, 8), vec![1, 4]);
    assert_eq!(allowed_keys(&g, 0, 4, 8), (0..8).collect::<Vec<_>>());
    // Keys beyond kv_len never exist; negative keys neither.
    assert!(!Pattern::dense().allowed(0, 3, 8, 8));
    assert!(!Pattern::dense().allowed(0, 3, -1, 8));
}

#[test]
fn dilated_uses_mathematical_mod() {
    let d = pat(json!({"causal": false, "components": [{"dilated": {"stride": 3}}]}));
    assert_eq!(allowed_keys(&d, 0, 7, 12), vec![1, 4, 7, 10]);
    // p = -2: (p - j) mod 3 == 0 for j = 1, 4, 7 (-2 - 1 = -3).
    assert_eq!(allowed_keys(&d, 0, -2, 10), vec![1, 4, 7]);
    assert_eq!(allowed_keys(&d, 0, -3, 10), vec![0, 3, 6, 9]);
    let c = Pattern::new(true, d.components.clone());
    assert_eq!(allowed_keys(&c, 0, 7, 12), vec![1, 4, 7]);
    assert_eq!(allowed_keys(&c, 0, -2, 10), Vec::<i64>::new());
}

#[test]
fn block_mask_rows_and_columns_beyond_the_mask() {
    let m = pat(json!({"causal": false, "components": [{"block_mask":
        {"block_q": 2, "block_k": 3, "mask": [[1, 0], [0, 1]]}}]}));
    assert_eq!(allowed_keys(&m, 0, 0, 9), vec![0, 1, 2]);
    assert_eq!(allowed_keys(&m, 0, 1, 9), vec![0, 1, 2]);
    assert_eq!(allowed_keys(&m, 0, 3, 9), vec![3, 4, 5]);
    // Rows beyond the mask (P = 2) and negative positions: nothing. Columns beyond: nothing.
    assert_eq!(allowed_keys(&m, 0, 4, 9), Vec::<i64>::new());
    assert_eq!(allowed_keys(&m, 0, -1, 9), Vec::<i64>::new());
    assert!(!m.allowed(0, 2, 6, 9));
}

fn bigbird(block: i64, w: i64, g: i64, r: i64, seed: u64) -> BigBird {
    BigBird::new(block, w, g, r, seed).unwrap()
}

#[test]
fn bigbird_fixed_part() {
    let b = bigbird(4, 3, 1, 0, 0);
    let p = Pattern::new(false, vec![Component::BigBird(b)]);
    // P = 3 (positions 12..15): window |P - J| <= 1 → blocks 2..4, global block 0.
    let keys = allowed_keys(&p, 0, 13, 24);
    let expect: Vec<i64> = (0..4).chain(8..20).collect();
    assert_eq!(keys, expect);
    // Global query block: everything.
    assert_eq!(allowed_keys(&p, 0, 2, 24).len(), 24);
    // Negative positions fall in negative blocks, which are global rows (P < G), per the contract.
    assert_eq!(allowed_keys(&p, 0, -3, 24).len(), 24);
}

#[test]
fn bigbird_random_blocks_are_deterministic_distinct_and_new() {
    let b = bigbird(8, 3, 1, 3, 1234);
    let kv_len = 8 * 40;
    for qb in 0..40 {
        let r = b.rand_blocks(0, qb, kv_len, false);
        assert_eq!(
            r,
            b.rand_blocks(0, qb, kv_len, false),
            "same inputs, same draw"
        );
        if qb >= 1 {
            assert_eq!(r.len(), 3);
        } else {
            assert!(r.is_empty(), "global query blocks draw nothing");
        }
        assert!(r.windows(2).all(|w| w[0] < w[1]));
        for &kb in &r {
            assert!((0..40).contains(&kb));
            assert!(
                !b.fixed_admits(qb, kb),
                "block {kb} already allowed for P {qb}"
            );
        }
    }
    // Pinned values: the generator is part of the contract; changing it changes every backend.
    // (Cross-checked against a separate Python transcription of the spec in `rng`.)
    assert_eq!(b.rand_blocks(0, 20, kv_len, false), vec![10, 15, 29]);
    assert_eq!(b.rand_blocks(1, 20, kv_len, false), vec![13, 30, 31]);
}

#[test]
fn bigbird_heads_draw_independently() {
    let b = bigbird(4, 1, 0, 2, 7);
    let kv_len = 4 * 64;
    let draws = |h| {
        (0..64)
            .map(|qb| b.rand_blocks(h, qb, kv_len, false))
            .collect::<Vec<_>>()
    };
    let (d0, d1) = (draws(0), draws(1));
    assert_eq!((d0.len(), d1.len()), (64, 64));
    assert!(
        d0.iter().all(|d| d.len() == 2),
        "two random blocks per query block"
    );
    let same = d0.iter().zip(&d1).filter(|(a, b)| a == b).count();
    assert!(same < 8, "heads 0 and 1 agree on {same} of 64 query blocks");
    // And another seed gives other sets.
    let c = bigbird(4, 1, 0, 2, 8);
    let other: Vec<_> = (0..64)
        .map(|qb| c.rand_blocks(0, qb, kv_len, false))
        .collect();
    assert_eq!(other.len(), 64);
    assert!(d0.iter().zip(&other).filter(|(a, b)| a == b).count() < 8);
}

#[test]
fn bigbird_causal_draws_only_earlier_blocks_and_takes_all_when_few() {
    let b = bigbird(4, 1, 1, 3, 99);
    let kv_len = 4 * 32;
    for qb in 0..32 {
        let r = b.rand_blocks(2, qb, kv_len, true);
        assert!(r.iter().all(|&kb| kb <= qb), "P {qb}: {r:?}");
        // Candidates are blocks 1..P (global block 0 and P itself excluded).
        let candidates = (qb - 1).max(0) as usize;
        assert_eq!(r.len(), candidates.min(3), "P {qb}: {r:?}");
        if candidates <= 3 {
            assert_eq!(r, (1..qb).collect::<Vec<_>>());
        }
    }
    // Causal draws do not depend on kv_len (decode-stable); non-causal ones may.
    assert_eq!(
        b.rand_blocks(0, 10, 44, true),
        b.rand_blocks(0, 10, 400, true)
    );
}

// ---- compiled metadata --------------------------------------------------------------------------

fn shape(num_heads: usize, q_len: usize, kv_len: usize, bm: usize, bn: usize) -> SparseShape {
    SparseShape {
        num_heads,
        q_len,
        kv_len,
        block_m: bm,
        block_n: bn,
    }
}

fn compile(set: impl Into<HeadPatterns>, s: SparseShape) -> BlockSparseMeta {
    let meta = BlockSparseMeta::compile(&set.into(), s).unwrap();
    meta.check().unwrap();
    meta
}

#[test]
fn causal_square_lists_the_ideal_triangle() {
    for (t, tile) in [(1, 64), (4, 64), (16, 32), (7, 128)] {
        let n = t * tile;
        let meta = compile(Pattern::causal(), shape(4, n, n, tile, tile));
        assert_eq!(meta.num_sets(), 1);
        assert_eq!(meta.tiles_listed(), t * (t + 1) / 2);
        assert_eq!(meta.partial_tiles().len(), t, "one diagonal tile per row");
        assert_eq!(meta.tiles_visited(), 4 * t * (t + 1) / 2);
        for m in 0..t {
            assert_eq!(meta.partial(3, m), &[m as i32]);
            assert_eq!(meta.full(3, m), (0..m as i32).collect::<Vec<_>>());
        }
    }
}

#[test]
fn aligned_windows_list_the_ideal_band() {
    // Causal size-128 window over 64-wide tiles: query tile m sees tile m - 1 completely
    // (j - p spans [-127, -1]), tile m - 2 only partly (the window edge crosses it) and its own
    // diagonal tile partly.
    let meta = compile(
        Pattern::causal_window(128).unwrap(),
        shape(1, 1024, 1024, 64, 64),
    );
    for m in 2..16 {
        assert_eq!(meta.full(0, m), &[m as i32 - 1]);
        assert_eq!(meta.partial(0, m), &[m as i32 - 2, m as i32]);
    }
    // Non-causal left = right = 64 at 64 x 64: the diagonal tile is full, its neighbours partial.
    let w = Pattern::new(false, vec![Component::window(64, 64).unwrap()]);
    let meta = compile(w, shape(1, 512, 512, 64, 64));
    assert_eq!(meta.partial(0, 3), &[2, 4]);
    assert_eq!(meta.full(0, 3), &[3]);
    // A window a whole number of tiles wide and a tile-aligned block mask are exact too.
    let bm = pat(json!({"causal": false, "components": [{"block_mask":
        {"block_q": 64, "block_k": 64, "mask": [[1, 0, 1], [0, 1, 1]]}}]}));
    let meta = compile(bm, shape(1, 128, 192, 32, 32));
    assert_eq!(meta.partial_tiles().len(), 0);
    // Query positions 64..191 (q_len 128 < kv_len 192): mask rows 1 and 2; row 2 is beyond.
    assert_eq!(meta.full(0, 0), &[2, 3, 4, 5]);
    assert_eq!(meta.full(0, 2), &[] as &[i32]);
}

#[test]
fn heads_with_equal_patterns_share_rows() {
    let w = Pattern::causal_window(64).unwrap();
    let set = HeadPatterns::PerHead(vec![
        w.clone(),
        Pattern::causal(),
        w.clone(),
        Pattern::causal(),
    ]);
    let meta = compile(set, shape(4, 256, 256, 64, 64));
    assert_eq!(meta.head_set(), &[0, 1, 0, 1]);
    assert_eq!(meta.mask().programs().len(), 2);
    // BigBird random blocks differ per head, so such heads never share.
    let bb = Pattern::new(true, vec![Component::BigBird(bigbird(16, 1, 1, 2, 5))]);
    let meta = compile(bb, shape(3, 256, 256, 64, 64));
    assert_eq!(meta.head_set(), &[0, 1, 2]);
}

#[test]
fn streaming_pattern_lists() {
    let meta = compile(
        Pattern::streaming(4, 1024).unwrap(),
        shape(8, 4096, 4096, 64, 64),
    );
    assert_eq!(meta.partial(5, 63), &[0, 47, 63]);
    assert_eq!(meta.full(5, 63), (48..63).collect::<Vec<_>>());
    // Early rows: the sinks are inside the window, tile 0 is the diagonal.
    assert_eq!(meta.partial(0, 0), &[0]);
    assert_eq!(meta.full(0, 0), &[] as &[i32]);
}

#[test]
fn union_of_partial_covers_can_be_full() {
    // Two half windows meeting at the diagonal: each covers tile 1 of row 1 only partly, the
    // union covers it fully.
    let set = Pattern::new(
        false,
        vec![
            Component::window(100, 0).unwrap(),
            Component::window(0, 100).unwrap(),
        ],
    );
    let meta = compile(set, shape(1, 256, 256, 32, 32));
    assert!(meta.full(0, 4).contains(&4));
    // Sinks + window covering tile 0 together.
    let set = Pattern::new(
        true,
        vec![
            Component::sinks(10).unwrap(),
            Component::window(70, 0).unwrap(),
        ],
    );
    let meta = compile(set, shape(1, 128, 128, 16, 16));
    // Query tile 4 (positions 64..79): the window reaches back to keys -6..9, the sinks
    // cover 0..9, so every row sees all of kv tile 0 though neither component does alone.
    assert_eq!(meta.full(0, 4)[0], 0);
}

#[test]
fn degenerate_shapes() {
    // q_len > kv_len: leading rows have negative positions and see nothing under causality.
    let meta = compile(Pattern::causal(), shape(1, 100, 10, 16, 16));
    for m in 0..5 {
        assert!(
            meta.full(0, m).is_empty() && meta.partial(0, m).is_empty(),
            "m {m}"
        );
    }
    assert_eq!(meta.partial(0, 5), &[0]);
    // Positions 6..9 against keys 0..9: the diagonal crosses the tile.
    assert_eq!(meta.partial(0, 6), &[0]);
    // Zero-length sequences compile to empty metadata.
    assert_eq!(
        compile(Pattern::causal(), shape(2, 0, 5, 16, 16)).tiles_listed(),
        0
    );
    assert_eq!(
        compile(Pattern::dense(), shape(2, 5, 0, 16, 16)).tiles_listed(),
        0
    );
}

#[test]
fn rendering_agrees_on_a_mixed_example() {
    let set = HeadPatterns::PerHead(vec![
        pat(
            json!({"causal": true, "components": [{"sinks": {"count": 3}}, {"dilated": {"stride": 5}}, {"global": {"tokens": [17, 40]}}]}),
        ),
        pat(
            json!({"causal": false, "components": [{"bigbird": {"block": 7, "window_blocks": 2, "global_blocks": 1, "random_blocks": 2, "seed": 3}}]}),
        ),
    ]);
    for (q, k) in [(50, 50), (20, 60), (70, 45)] {
        let meta = BlockSparseMeta::compile(&set, shape(2, q, k, 16, 32)).unwrap();
        meta.check().unwrap();
        let truth = render_token_mask(&set, 2, q, k).unwrap();
        assert_eq!(render_from_meta(&meta).unwrap(), truth, "q {q} kv {k}");
    }
}

#[test]
fn layer_plans_compile_each_distinct_layer_once() {
    let plan = LayerPlan::interleaved(
        12,
        Pattern::causal_window(1024).unwrap(),
        Pattern::causal(),
        5,
    )
    .unwrap();
    let c = plan.compile(shape(8, 2048, 2048, 64, 64)).unwrap();
    assert_eq!(c.metas.len(), 2);
    let ids: Vec<usize> = c.layer_meta.iter().map(|m| m.unwrap()).collect();
    assert_eq!(ids, vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
    assert_eq!(c.layer(5).unwrap().tiles_listed(), 32 * 33 / 2);
}

// ---- views: dilated and global work is proportional to what they allow -------------------------

/// Tokens the contract allows for head `h`.
fn allowed_tokens(set: &HeadPatterns, s: SparseShape, h: usize) -> usize {
    let shift = s.kv_len as i64 - s.q_len as i64;
    (0..s.q_len as i64)
        .map(|i| {
            (0..s.kv_len as i64)
                .filter(|&j| set.allowed(h, i + shift, j, s.kv_len))
                .count()
        })
        .sum()
}

#[test]
fn dilated_heads_run_per_residue_class() {
    // Stride K over N = 64 * K * t tokens: K classes of 64 t rows, each a t x t tile problem
    // (a triangle under causality); the keys of class c are c, c + K, ...
    for (k, t, causal) in [
        (2, 4, true),
        (4, 2, true),
        (8, 1, true),
        (4, 2, false),
        (3, 3, false),
    ] {
        let n = 64 * k * t;
        let set: HeadPatterns =
            Pattern::new(causal, vec![Component::dilated(k as i64).unwrap()]).into();
        let s = shape(2, n, n, 64, 64);
        let meta = compile(set.clone(), s);
        let per_class = if causal { t * (t + 1) / 2 } else { t * t };
        assert_eq!(meta.num_tiles(0), k * t, "K {k}");
        assert_eq!(
            meta.tiles_visited(),
            2 * k * per_class,
            "K {k} causal {causal}"
        );
        assert_eq!(
            meta.partial_tiles().len(),
            if causal { k * t } else { 0 },
            "only diagonal tiles are masked"
        );
        for m in 0..meta.num_tiles(0) {
            let v = meta.view(0, m);
            assert_eq!((v.row_step, v.key_step), (k as i32, k as i32));
            assert_eq!(
                v.key_first as i64,
                (v.row_first as i64).rem_euclid(k as i64)
            );
        }
        // Work: tiles x 64 x 64 is within the diagonal tiles' slack of the allowed tokens.
        let allowed = allowed_tokens(&set, s, 0);
        let work = meta.tiles_visited() / 2 * 64 * 64;
        let diag_slack = if causal { k * t * 64 * 63 / 2 } else { 0 };
        assert_eq!(work, allowed + diag_slack, "K {k} causal {causal}");
        assert_eq!(
            render_from_meta(&meta).unwrap(),
            render_token_mask(&set, 2, n, n).unwrap()
        );
    }
    // Decode (one query row) reads 1/K of the keys.
    let set: HeadPatterns = Pattern::new(true, vec![Component::dilated(8).unwrap()]).into();
    let meta = compile(set, shape(1, 1, 4096, 64, 64));
    assert_eq!(meta.tiles_visited(), 4096 / 8 / 64);
    // Unaligned lengths, q_len > kv_len (negative positions) and q_len < kv_len stay exact.
    for (q, kv, k) in [(300, 300, 3), (77, 500, 5), (140, 60, 4), (1, 9, 16)] {
        for causal in [true, false] {
            let set: HeadPatterns =
                Pattern::new(causal, vec![Component::dilated(k).unwrap()]).into();
            let meta = compile(set.clone(), shape(1, q, kv, 64, 64));
            let truth = render_token_mask(&set, 1, q, kv).unwrap();
            assert_eq!(
                render_from_meta(&meta).unwrap(),
                truth,
                "q {q} kv {kv} K {k}"
            );
        }
    }
}

#[test]
fn global_rows_and_keys_are_gathered() {
    // 16 global tokens spread over 2048: the 2032 other rows form 32 tiles, each visiting one
    // gathered tile of the 16 global keys; the 16 global rows form one tile seeing all 32 kv
    // tiles. 64 tiles in all, every one full (non-causal), instead of every tile touched.
    let tokens: Vec<i64> = (0..16).map(|g| 128 * g + 5).collect();
    let set: HeadPatterns =
        Pattern::new(false, vec![Component::global(tokens.clone()).unwrap()]).into();
    let s = shape(1, 2048, 2048, 64, 64);
    let meta = compile(set.clone(), s);
    assert_eq!(meta.num_tiles(0), 33);
    assert_eq!(meta.tiles_visited(), 32 + 32);
    assert_eq!(meta.partial_tiles().len(), 0);
    for m in 0..32 {
        assert_eq!(meta.full(0, m), &[-1]);
        let v = meta.view(0, m);
        assert_eq!(v.gathered(meta.view_data()).len(), 16);
        // Tiles stay aligned with the kv tiles: tile 2g lost global row 128g + 5.
        assert_eq!(v.row_count, if m % 2 == 0 { 63 } else { 64 });
    }
    let g = meta.view(0, 32);
    assert_eq!(
        g.row_step, 128,
        "global rows 5, 133, ... are evenly spaced: an affine view"
    );
    assert_eq!(meta.full(0, 32), (0..32).collect::<Vec<_>>());
    assert_eq!(
        render_from_meta(&meta).unwrap(),
        render_token_mask(&set, 1, 2048, 2048).unwrap()
    );
    // Causal: a tile gathers only the global keys at or before its last row, and masks the
    // ones after its first.
    let causal: HeadPatterns = Pattern::new(true, vec![Component::global(tokens).unwrap()]).into();
    let meta = compile(causal.clone(), s);
    assert_eq!(
        render_from_meta(&meta).unwrap(),
        render_token_mask(&causal, 1, 2048, 2048).unwrap()
    );
    let work = meta.tiles_visited();
    assert!(work <= 32 + 32, "{work}");
    // Longformer: a window plus global tokens. The window's own tiles are visited as before;
    // the global keys they contain are covered there, the others gathered in one extra tile.
    let window = Component::window(32, 32).unwrap();
    let longformer: HeadPatterns = Pattern::new(
        false,
        vec![window.clone(), Component::global(vec![0, 1, 700]).unwrap()],
    )
    .into();
    let s = shape(1, 1024, 1024, 64, 64);
    let meta = compile(longformer.clone(), s);
    let band = compile(Pattern::new(false, vec![window]), s).tiles_visited();
    // The band minus nothing (rows 0, 1, 700 leave their tiles, which keep the band), plus
    // one gathered tile per query tile, plus one global-row tile over all 16 kv tiles.
    assert!(
        meta.tiles_visited() <= band + 17 + 16,
        "{} vs band {band}",
        meta.tiles_visited()
    );
    assert_eq!(
        render_from_meta(&meta).unwrap(),
        render_token_mask(&longformer, 1, 1024, 1024).unwrap()
    );
}

#[test]
fn dilated_with_global_tokens_combines_both_views() {
    let set: HeadPatterns = Pattern::new(
        true,
        vec![
            Component::dilated(4).unwrap(),
            Component::global(vec![3, 64, 65, 400]).unwrap(),
        ],
    )
    .into();
    for (q, kv) in [(512, 512), (100, 450), (401, 401)] {
        let meta = compile(set.clone(), shape(2, q, kv, 64, 64));
        let truth = render_token_mask(&set, 2, q, kv).unwrap();
        assert_eq!(render_from_meta(&meta).unwrap(), truth, "q {q} kv {kv}");
    }
    let meta = compile(set, shape(1, 512, 512, 64, 64));
    // Residue classes of the 508 other rows: 8 tiles, two per class, a causal 2-tile triangle
    // each (3 visits), plus one more where a class lost a global row early (its first tile
    // then ends one row later, in the next key tile: classes 0, 1 and 3); at most one gathered
    // tile per query tile; one global-row tile over the kv tiles up to 400.
    assert_eq!(meta.num_tiles(0), 9);
    assert!(
        meta.tiles_visited() <= 4 * 3 + 3 + 8 + 7,
        "{}",
        meta.tiles_visited()
    );
}

#[test]
fn dilated_with_sinks_gathers_the_sinks_of_other_classes() {
    // Stride 4 + 4 sinks, causal, 1024 tokens: the class view of dilation, plus per query tile
    // the sinks of the other three classes (the class's own sink is in its first kv tile).
    let set: HeadPatterns = Pattern::new(
        true,
        vec![Component::sinks(4).unwrap(), Component::dilated(4).unwrap()],
    )
    .into();
    let s = shape(1, 1024, 1024, 64, 64);
    let meta = compile(set.clone(), s);
    assert_eq!(
        render_from_meta(&meta).unwrap(),
        render_token_mask(&set, 1, 1024, 1024).unwrap()
    );
    // 4 classes x a 4-tile causal triangle (10 visits), plus at most one gathered tile per
    // query tile: the other classes' sinks, up to causality.
    let t = 4;
    assert_eq!(meta.num_tiles(0), 4 * t);
    let gathered: usize = (0..meta.num_tiles(0))
        .map(|m| meta.view(0, m).gather_count as usize)
        .sum();
    assert!(gathered <= 3 * 4 * t, "{gathered}");
    assert!(
        meta.tiles_visited() <= 4 * t * (t + 1) / 2 + 4 * t,
        "{}",
        meta.tiles_visited()
    );
    for (q, kv) in [(300, 300), (50, 333), (200, 90)] {
        let meta = compile(set.clone(), shape(2, q, kv, 64, 64));
        let truth = render_token_mask(&set, 2, q, kv).unwrap();
        assert_eq!(render_from_meta(&meta).unwrap(), truth, "q {q} kv {kv}");
    }
}

// ---- chunked attention (Llama 4) -----------------------------------------------------------------

#[test]
fn chunked_predicate_is_block_diagonal_and_causal() {
    let c = pat(json!({"causal": false, "components": [{"chunked": {"size": 4}}]}));
    // Position 5 is in chunk 1 (positions 4..7).
    assert_eq!(allowed_keys(&c, 0, 5, 20), vec![4, 5, 6, 7]);
    assert_eq!(allowed_keys(&c, 0, 8, 20), vec![8, 9, 10, 11]);
    // The last chunk is cut by kv_len.
    assert_eq!(allowed_keys(&c, 0, 17, 18), vec![16, 17]);
    // Negative positions (q_len > kv_len) lie in chunks without keys.
    assert!(allowed_keys(&c, 0, -1, 20).is_empty());
    assert!(allowed_keys(&c, 0, -4, 20).is_empty());
    let causal = Pattern::causal_chunked(4).unwrap();
    assert_eq!(allowed_keys(&causal, 0, 5, 20), vec![4, 5]);
    assert_eq!(allowed_keys(&causal, 0, 4, 20), vec![4]);
    assert_eq!(allowed_keys(&causal, 0, 7, 20), vec![4, 5, 6, 7]);
    // Size 1: only the query's own key.
    let one = Pattern::causal_chunked(1).unwrap();
    assert_eq!(allowed_keys(&one, 0, 9, 20), vec![9]);
}

#[test]
fn chunked_json_and_bad_sizes() {
    let v = json!({"causal": true, "components": [{"chunked": {"size": 8192}}]});
    let p = pat(v.clone());
    assert_eq!(p, Pattern::causal_chunked(8192).unwrap());
    assert_eq!(serde_json::from_str::<Value>(&p.to_json()).unwrap(), v);
    for (bad, needle) in [
        (
            json!({"chunked": {"size": 0}}),
            "chunked size must be at least 1 (got 0)",
        ),
        (
            json!({"chunked": {"size": -3}}),
            "chunked size must be at least 1",
        ),
        (
            json!({"chunked": {"size": 4294967296i64}}),
            "chunked size must be at most",
        ),
        (json!({"chunked": {}}), "size"),
        (json!({"chunked": {"size": 4, "left": 1}}), "unknown field"),
    ] {
        let m = err(json!({"causal": true, "components": [bad]}));
        assert!(m.contains(needle), "{m}");
    }
    assert!(matches!(Component::chunked(0), Err(Error::Pattern(_))));
}

#[test]
fn chunked_tiles_inside_a_chunk_are_full_and_chunk_edges_partial() {
    // Chunks of 128 over 64 x 64 tiles, causal: query tile m sees its chunk's earlier tile
    // (full) and its diagonal tile (partial); nothing of the previous chunk.
    let meta = compile(
        Pattern::causal_chunked(128).unwrap(),
        shape(2, 1024, 1024, 64, 64),
    );
    for m in 0..16i32 {
        if m % 2 == 0 {
            assert_eq!(meta.full(0, m as usize), &[] as &[i32], "m {m}");
        } else {
            assert_eq!(meta.full(0, m as usize), &[m - 1], "m {m}");
        }
        assert_eq!(meta.partial(0, m as usize), &[m], "m {m}");
    }
    // Non-causal chunks of 128: both tiles of the chunk are full, nothing partial.
    let meta = compile(
        Pattern::new(false, vec![Component::chunked(128).unwrap()]),
        shape(1, 512, 512, 64, 64),
    );
    assert_eq!(meta.partial_tiles().len(), 0);
    assert_eq!(meta.full(0, 3), &[2, 3]);
    // A chunk edge inside a tile (chunks of 96): query tile 1 (positions 64..127) holds the
    // end of chunk 0 (keys 0..95) and the start of chunk 1 (keys 96..191), so each of its kv
    // tiles is seen by some rows only.
    let meta = compile(
        Pattern::new(false, vec![Component::chunked(96).unwrap()]),
        shape(1, 256, 256, 64, 64),
    );
    assert_eq!(meta.full(0, 1), &[] as &[i32]);
    assert_eq!(meta.partial(0, 1), &[0, 1, 2]);
    // Tile 2 (positions 128..191) lies in chunk 1 (96..191): keys 96..127 of tile 1 and all of
    // tile 2.
    assert_eq!(meta.full(0, 2), &[2]);
    assert_eq!(meta.partial(0, 2), &[1]);
    // Chunks smaller than a tile: only diagonal tiles, partial.
    let meta = compile(
        Pattern::causal_chunked(8).unwrap(),
        shape(1, 256, 256, 64, 64),
    );
    for m in 0..4 {
        assert_eq!(meta.partial(0, m), &[m as i32]);
        assert!(meta.full(0, m).is_empty());
    }
    // Every case renders to the predicate, including bottom-right alignment (q_len < kv_len
    // puts chunk edges at shifted rows) and a union with sinks.
    for (set, q, k) in [
        (Pattern::causal_chunked(96).unwrap(), 200, 333),
        (Pattern::causal_chunked(50).unwrap(), 333, 200),
        (
            Pattern::new(
                true,
                vec![
                    Component::sinks(5).unwrap(),
                    Component::chunked(40).unwrap(),
                ],
            ),
            150,
            150,
        ),
        (
            Pattern::new(
                false,
                vec![
                    Component::chunked(33).unwrap(),
                    Component::global(vec![3, 77]).unwrap(),
                ],
            ),
            100,
            120,
        ),
    ] {
        let set: HeadPatterns = set.into();
        let meta = BlockSparseMeta::compile(&set, shape(1, q, k, 32, 64)).unwrap();
        meta.check().unwrap();
        let truth = render_token_mask(&set, 1, q, k).unwrap();
        assert_eq!(
            render_from_meta(&meta).unwrap(),
            truth,
            "{} q {q} kv {k}",
            set.to_json()
        );
    }
}

#[test]
fn chunked_mask_program_and_host_twin() {
    let meta = compile(
        Pattern::causal_chunked(100).unwrap(),
        shape(1, 300, 300, 64, 64),
    );
    let m = meta.mask();
    assert_eq!(m.components().len(), 1);
    assert_eq!(m.components()[0].kind, MaskKind::Chunked as i32);
    assert_eq!(m.components()[0].block_q, 100);
    for p in -5..300i64 {
        for j in 0..300i64 {
            assert_eq!(
                m.allowed(0, p, j, 300),
                p >= 0 && j <= p && p / 100 == j / 100,
                "p {p} j {j}"
            );
        }
    }
}

#[test]
fn layer_plan_json_with_settings_and_other_layers() {
    let v = json!({"layers": [
        {"causal": true, "components": [{"chunked": {"size": 8192}}]},
        {"attention": {"patterns": {"causal": true, "components": []}, "head_dim": 512, "num_kv_heads": 4,
                       "scale": 1.0, "softcap": 50.0, "learnable_sinks": true, "alibi": true}},
        {"non_attention": {"kind": "mamba"}},
    ]});
    let p = LayerPlan::from_json(&v.to_string()).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&p.to_json()).unwrap(), v);
    assert_eq!(p.layers.len(), 3);
    let a = p.attention(1).unwrap();
    assert_eq!(
        (a.head_dim, a.num_kv_heads, a.scale, a.softcap),
        (Some(512), Some(4), Some(1.0), Some(50.0))
    );
    assert!(a.learnable_sinks && a.alibi);
    assert!(p.attention(2).is_none() && !p.layers[2].is_attention());
    assert_eq!(
        p.attention_layers().map(|(l, _)| l).collect::<Vec<_>>(),
        vec![0, 1]
    );
    // A plain attention entry serializes as its bare head pattern set.
    let plain =
        json!({"layers": [{"attention": {"patterns": {"causal": true, "components": []}}}]});
    let p = LayerPlan::from_json(&plain.to_string()).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&p.to_json()).unwrap(),
        json!({"layers": [{"causal": true, "components": []}]})
    );
    // A layer's kv heads must divide the query heads.
    let p = LayerPlan::from_json(
        &json!({"layers": [{"attention": {"patterns": {"causal": true}, "num_kv_heads": 3}}]})
            .to_string(),
    )
    .unwrap();
    let e = p.validate(8, 16).unwrap_err().to_string();
    assert!(e.contains("layer 0: 3 kv heads do not divide 8"), "{e}");
    for (bad, needle) in [
        (json!({"non_attention": {"kind": ""}}), "kind is empty"),
        (json!({"non_attention": {}}), "kind"),
        (
            json!({"non_attention": {"kind": "mamba", "state": 16}}),
            "unknown field",
        ),
        (json!({"attention": {"head_dim": 64}}), "patterns"),
        (
            json!({"attention": {"patterns": {"causal": true}, "head_dim": 0}}),
            "head_dim must be at least 1",
        ),
        (
            json!({"attention": {"patterns": {"causal": true}, "softcap": -1.0}}),
            "softcap",
        ),
        (
            json!({"attention": {"patterns": {"causal": true}, "bias": 1}}),
            "unknown field",
        ),
    ] {
        let e = LayerPlan::from_json(&json!({"layers": [bad]}).to_string()).unwrap_err();
        assert!(matches!(e, Error::Pattern(_)), "{e}");
        assert!(e.to_string().contains(needle), "{bad}: {e}");
    }
}
