//! Property tests of the pattern compiler against the token-level predicate (the compiler
//! against a rendered dense mask, docs/patterns.md).
//!
//! For random patterns (every component, unions, causal or not, per-head sets; chunked
//! attention alone and with sinks or a window, the interval forms of the kernel mask) and random
//! shapes (q_len and kv_len 1..300 either way round, tiles 16/32/64/128):
//! (a) the metadata renders to exactly the predicate's token mask;
//! (b) every full tile is really full; (c) every partial tile has an allowed and a disallowed
//! existing token; unlisted tiles have no allowed token;
//! (d) CSR lists are ascending, disjoint and in range;
//! (e) the kernel's mask interpreter (run on the emulator) and the host's mask tables agree
//! with the predicate on every token;
//! and JSON round-trips every pattern.

use proptest::prelude::*;
use sparse_attn::emu::{self, selftest, GuardedBuffer, LaunchConfig};
use sparse_attn::pattern::{
    render_from_meta, render_token_mask, BigBird, BlockMask, BlockSparseMeta, Component,
    HeadPatterns, Pattern, SparseShape,
};

const TILES: [usize; 4] = [16, 32, 64, 128];

fn component(kv_len: usize) -> impl Strategy<Value = Component> {
    let kv = kv_len as i64;
    prop_oneof![
        Just(Component::dense()),
        (0i64..90, 0i64..90).prop_map(|(l, r)| Component::window(l, r).unwrap()),
        (0i64..400, 0i64..400).prop_map(|(l, r)| Component::window(l, r).unwrap()),
        (1i64..130).prop_map(|w| Component::window_size(w).unwrap()),
        (1i64..70).prop_map(|s| Component::sinks(s).unwrap()),
        prop::collection::vec(0..kv, 1..6).prop_map(|t| Component::global(t).unwrap()),
        prop_oneof![1i64..13, 14i64..200].prop_map(|k| Component::dilated(k).unwrap()),
        chunk_size().prop_map(|c| Component::chunked(c).unwrap()),
        (
            prop_oneof![1i64..9, Just(16i64), Just(32), Just(64), 9i64..100],
            prop_oneof![1i64..9, Just(16i64), Just(32), Just(64), 9i64..100],
            (1usize..10, 1usize..10).prop_flat_map(|(r, c)| {
                prop::collection::vec(prop::collection::vec(0u8..=1, c), r)
            }),
        )
            .prop_map(|(bq, bk, mask)| Component::BlockMask(BlockMask::new(bq, bk, mask).unwrap())),
        (
            prop_oneof![1i64..9, Just(16i64), Just(32), Just(64), 9i64..80],
            0i64..6,
            0i64..3,
            0i64..5,
            any::<u64>(),
        )
            .prop_map(|(b, w, g, r, seed)| Component::BigBird(
                BigBird::new(b, w, g, r, seed).unwrap()
            )),
    ]
}

/// Chunk sizes: below, at and above the tile sizes, and odd ones whose edges fall inside tiles.
fn chunk_size() -> impl Strategy<Value = i64> {
    prop_oneof![
        1i64..9,
        Just(16i64),
        Just(32),
        Just(64),
        Just(128),
        9i64..300
    ]
}

/// Chunked attention alone or with one more interval component (the kernel's two-interval
/// form): rare among random unions of up to four components.
fn chunk_pattern() -> impl Strategy<Value = Pattern> {
    (
        any::<bool>(),
        chunk_size(),
        prop_oneof![
            Just(None),
            (1i64..70).prop_map(|s| Some(Component::sinks(s).unwrap())),
            (1i64..130).prop_map(|w| Some(Component::window_size(w).unwrap())),
            Just(Some(Component::dense())),
        ],
        any::<bool>(),
    )
        .prop_map(|(causal, size, other, first)| {
            let chunk = Component::chunked(size).unwrap();
            let c = match other {
                None => vec![chunk],
                Some(o) if first => vec![o, chunk],
                Some(o) => vec![chunk, o],
            };
            Pattern::new(causal, c)
        })
}

/// A dilated stride with or without sinks and global tokens: the shapes that run through tile
/// views (residue classes, gathered rows and keys), rare among random unions.
fn view_pattern(kv_len: usize) -> impl Strategy<Value = Pattern> {
    let kv = kv_len as i64;
    (
        any::<bool>(),
        2i64..20,
        prop::option::of(1i64..70),
        prop::option::of(prop::collection::vec(0..kv, 1..90)),
    )
        .prop_map(|(causal, stride, sinks, global)| {
            let mut c = vec![Component::dilated(stride).unwrap()];
            c.extend(sinks.map(|s| Component::sinks(s).unwrap()));
            c.extend(global.map(|g| Component::global(g).unwrap()));
            Pattern::new(causal, c)
        })
}

fn pattern(kv_len: usize) -> impl Strategy<Value = Pattern> {
    let union = (
        any::<bool>(),
        prop::collection::vec(component(kv_len), 0..4),
    )
        .prop_map(|(causal, components)| Pattern::new(causal, components));
    prop_oneof![3 => union, 1 => view_pattern(kv_len), 1 => chunk_pattern()]
}

fn head_set(num_heads: usize, kv_len: usize) -> impl Strategy<Value = HeadPatterns> {
    prop_oneof![
        pattern(kv_len).prop_map(HeadPatterns::All),
        // Few distinct patterns spread over the heads, so some heads share rows.
        (
            prop::collection::vec(pattern(kv_len), 1..3),
            prop::collection::vec(0usize..2, num_heads)
        )
            .prop_map(|(pats, pick)| HeadPatterns::PerHead(
                pick.iter().map(|&i| pats[i % pats.len()].clone()).collect()
            )),
    ]
}

fn case() -> impl Strategy<Value = (HeadPatterns, SparseShape)> {
    (
        1usize..4,
        1usize..300,
        1usize..300,
        prop::sample::select(TILES.to_vec()),
        prop::sample::select(TILES.to_vec()),
    )
        .prop_flat_map(|(num_heads, q_len, kv_len, block_m, block_n)| {
            let shape = SparseShape {
                num_heads,
                q_len,
                kv_len,
                block_m,
                block_n,
            };
            (head_set(num_heads, kv_len), Just(shape))
        })
}

/// (d): ascending, disjoint, in range, framed by the row pointers; views own every row once
/// and never gather a key twice (`BlockSparseMeta::check`).
fn check_csr(meta: &BlockSparseMeta) -> Result<(), TestCaseError> {
    meta.check()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for h in 0..meta.shape().num_heads {
        for m in 0..meta.num_tiles(h) {
            let (f, p) = (meta.full(h, m), meta.partial(h, m));
            for list in [f, p] {
                prop_assert!(
                    list.windows(2).all(|w| w[0] < w[1]),
                    "not ascending: {list:?}"
                );
            }
            prop_assert!(
                f.iter().all(|t| !p.contains(t)),
                "full {f:?} and partial {p:?} overlap"
            );
        }
    }
    Ok(())
}

/// (b), (c), from the truth mask: every visit listed as full allows all its tokens, every
/// partial visit some but not all, through the tile views (strided classes, row lists with
/// gaps where global rows were taken out, gathered keys). Unlisted allowed tokens are caught by
/// rendering (`render_from_meta` equals the truth).
fn check_tiles(meta: &BlockSparseMeta, truth: &[u8]) -> Result<(), TestCaseError> {
    let s = *meta.shape();
    for h in 0..s.num_heads {
        for m in 0..meta.num_tiles(h) {
            for (rows, keys, full) in meta.visits(h, m) {
                let (mut allowed, mut denied) = (0usize, 0usize);
                for &i in &rows {
                    for &j in &keys {
                        if truth[(h * s.q_len + i) * s.kv_len + j] == 1 {
                            allowed += 1;
                        } else {
                            denied += 1;
                        }
                    }
                }
                let what = format!(
                    "head {h} q tile {m} ({:?}) keys {keys:?}: {allowed} allowed, {denied} denied",
                    meta.view(h, m)
                );
                if full {
                    prop_assert_eq!(denied, 0, "full tile with a denied token: {}", what);
                } else {
                    prop_assert!(allowed > 0 && denied > 0, "bad partial tile: {}", what);
                }
            }
        }
    }
    Ok(())
}

/// The kernel's own mask predicate (`kernels/include/sparse_attn/mask.cuh`) over every (row,
/// key) of row set `set`, run on the emulator: bit 0 the interpreter (`TokenMask::allowed`),
/// bit 1 the interval form's lane bits (`TokenMask::interval_row_bits`), bit 2 the
/// table-driven kinds' lane bits (`TokenMask::row_tile_bits`).
fn kernel_mask(meta: &BlockSparseMeta, set: usize) -> Result<Vec<u8>, TestCaseError> {
    let s = *meta.shape();
    let fail = |e: sparse_attn::emu::EmuError| TestCaseError::fail(e.to_string());
    let m = meta.mask();
    let programs = GuardedBuffer::from_slice(m.programs(), "mask_programs").map_err(fail)?;
    let components = GuardedBuffer::from_slice(m.components(), "mask_components").map_err(fail)?;
    // An empty table still needs a valid address (the kernel never reads it then).
    let data = if m.data().is_empty() {
        &[0][..]
    } else {
        m.data()
    };
    let data = GuardedBuffer::from_slice(data, "mask_data").map_err(fail)?;
    let mut allowed = GuardedBuffer::<u8>::zeroed(s.q_len * s.kv_len, "allowed").map_err(fail)?;
    allowed.as_mut_slice().fill(0xAA); // every entry must be written
    let p = selftest::MaskProbeParams {
        programs: programs.as_ptr().cast(),
        components: components.as_ptr().cast(),
        data: data.as_ptr(),
        allowed: allowed.as_mut_ptr(),
        set: set as i32,
        q_len: s.q_len as i32,
        kv_len: s.kv_len as i32,
        pad: 0,
    };
    let blocks = (s.q_len * s.kv_len).div_ceil(128).min(64) as u32;
    let cfg = LaunchConfig::new([blocks, 1, 1], [128, 1, 1], 0);
    // SAFETY: the params struct is the kernel's (layout asserted on both sides); every
    // pointer is a live guarded buffer of the size the kernel indexes.
    unsafe { emu::launch(selftest::sa_test_mask_probe, "sa_test_mask_probe", &cfg, &p) }
        .map_err(fail)?;
    Ok(allowed.to_vec())
}

/// (e): the kernel's mask interpreter (on the emulator) and the host's mask tables equal the
/// pattern predicate token by token.
fn check_mask_tables(meta: &BlockSparseMeta, truth: &[u8]) -> Result<(), TestCaseError> {
    let s = *meta.shape();
    let shift = s.kv_len as i64 - s.q_len as i64;
    let mut kernel: Vec<Option<Vec<u8>>> = vec![None; meta.num_sets()];
    for h in 0..s.num_heads {
        let set = meta.head_set()[h] as usize;
        if kernel[set].is_none() {
            kernel[set] = Some(kernel_mask(meta, set)?);
        }
        let device = kernel[set].as_deref().unwrap_or_default();
        prop_assert_eq!(device.len(), s.q_len * s.kv_len);
        for i in 0..s.q_len {
            for j in 0..s.kv_len {
                let want = truth[(h * s.q_len + i) * s.kv_len + j];
                let got = device[i * s.kv_len + j];
                prop_assert_eq!(
                    got & 1,
                    want,
                    "kernel mask interpreter differs at head {} row {} key {}",
                    h,
                    i,
                    j
                );
                prop_assert_eq!(
                    (got >> 1) & 1,
                    want,
                    "kernel interval form differs at head {} row {} key {}",
                    h,
                    i,
                    j
                );
                prop_assert_eq!(
                    got >> 2,
                    want,
                    "kernel table-driven bits differ at head {} row {} key {}",
                    h,
                    i,
                    j
                );
                let host = meta
                    .mask()
                    .allowed(set, i as i64 + shift, j as i64, s.kv_len);
                prop_assert_eq!(
                    host,
                    want == 1,
                    "host mask tables differ at head {} row {} key {}",
                    h,
                    i,
                    j
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn metadata_matches_the_predicate((set, shape) in case()) {
        let meta = BlockSparseMeta::compile(&set, shape)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let truth = render_token_mask(&set, shape.num_heads, shape.q_len, shape.kv_len)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_csr(&meta)?;
        check_tiles(&meta, &truth)?;
        let rendered = render_from_meta(&meta).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(rendered == truth, "(a) render_from_meta differs from the predicate");
        check_mask_tables(&meta, &truth)?;
    }

    #[test]
    fn json_round_trips((set, _shape) in case()) {
        let back = HeadPatterns::from_json(&set.to_json())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, set);
    }
}
