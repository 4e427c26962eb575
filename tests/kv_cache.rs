//! The paged KV cache (issue #6): long ring streams against the true K/V, interleaved
//! sequences, page reuse, the memory bounds of Mistral-7B- and Gemma-3-shaped caches, and
//! every error path leaving the cache unchanged.

use std::collections::BTreeMap;

use half::f16;
use sparse_attn::kv_cache::{
    resident, BlockTable, HostKvStorage, KvCache, KvCacheConfig, LayerCapacity, PoolSize, SeqId,
};
use sparse_attn::pattern::rng::SplitMix64 as Rng;
use sparse_attn::pattern::{HeadPatterns, LayerPlan, Pattern};
use sparse_attn::{DType, Error};

const HEADS: usize = 2;
const DIM: usize = 8;
const ROW: usize = HEADS * DIM;

/// A finite f16 unique-ish to (seq, position, element, k/v): compared by bits.
fn value(seq: u64, pos: usize, e: usize, v: bool) -> f16 {
    let mut x = (seq as u32)
        .wrapping_mul(0x9E37_79B9)
        .wrapping_add(pos as u32 * 0x85EB_CA6B)
        .wrapping_add(e as u32 * 0xC2B2_AE35)
        .wrapping_add(v as u32);
    x ^= x >> 15;
    x = x.wrapping_mul(0x2C1B_3C6D);
    x ^= x >> 13;
    // Bit 10 cleared: the exponent is never all ones (no inf/NaN).
    f16::from_bits((x as u16) & !0x0400)
}

fn rows(seq: SeqId, start: usize, n: usize, v: bool) -> Vec<f16> {
    (start..start + n)
        .flat_map(|p| (0..ROW).map(move |e| value(seq.0, p, e, v)))
        .collect()
}

fn bits(x: &[f16]) -> Vec<u16> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn config(
    layers: usize,
    page: usize,
    max_seq_len: usize,
    max_chunk: usize,
    pool: PoolSize,
) -> KvCacheConfig {
    KvCacheConfig {
        num_layers: layers,
        num_kv_heads: HEADS,
        head_dim: DIM,
        dtype: DType::F16,
        page_size: page,
        max_seq_len,
        max_chunk,
        pool,
    }
}

/// A cache, its host pages, and the layer patterns it was built for.
struct Harness {
    cache: KvCache,
    store: HostKvStorage<f16>,
    plan: LayerPlan,
}

impl Harness {
    fn new(
        plan: LayerPlan,
        page: usize,
        max_seq_len: usize,
        max_chunk: usize,
        pool: PoolSize,
    ) -> Self {
        let cache = KvCache::for_plan(
            config(plan.layers.len(), page, max_seq_len, max_chunk, pool),
            &plan,
        )
        .unwrap();
        let store = HostKvStorage::new(&cache).unwrap();
        Harness { cache, store, plan }
    }

    /// Appends `n` tokens of `seq` and writes their K/V in every layer.
    fn append(&mut self, seq: SeqId, n: usize) {
        let start = self.cache.seq_len(seq).unwrap();
        let placement = self.cache.reserve_append(seq, n).unwrap();
        assert_eq!((placement.start, placement.len), (start, n));
        let (k, v) = (rows(seq, start, n, false), rows(seq, start, n, true));
        for l in 0..self.cache.num_layers() {
            if self.plan.layers[l].is_attention() {
                self.store.write_kv(l, &placement, &k, &v).unwrap();
            }
        }
    }

    /// After a step whose queries were the last `chunk` positions of `seq`: in every layer,
    /// resident positions hold the true K/V, evicted ones read as zero, and every key the
    /// layer's pattern allows those queries is resident.
    fn check(&self, seq: SeqId, chunk: usize) {
        let kv_len = self.cache.seq_len(seq).unwrap();
        let (true_k, true_v) = (rows(seq, 0, kv_len, false), rows(seq, 0, kv_len, true));
        for l in 0..self.cache.num_layers() {
            let Some(set) = self.plan.layers[l].patterns() else {
                continue; // not softmax attention: no pages (tests of their own below)
            };
            let (k, v) = self.store.gather_contiguous(&self.cache, l, seq).unwrap();
            let table = self.cache.block_table(l, &[seq]).unwrap();
            table.validate(self.cache.num_pages(l).unwrap()).unwrap();
            let ps = self.cache.page_size();
            for j in 0..kv_len {
                let r = j * ROW..(j + 1) * ROW;
                if resident(j, kv_len, ps, table.sink_pages, table.ring_pages) {
                    assert_eq!(
                        bits(&k[r.clone()]),
                        bits(&true_k[r.clone()]),
                        "layer {l} k at {j} of {kv_len}"
                    );
                    assert_eq!(
                        bits(&v[r.clone()]),
                        bits(&true_v[r]),
                        "layer {l} v at {j} of {kv_len}"
                    );
                } else {
                    assert!(
                        k[r.clone()].iter().chain(&v[r]).all(|x| x.to_bits() == 0),
                        "layer {l}: evicted {j} not zero"
                    );
                    for p in kv_len.saturating_sub(chunk)..kv_len {
                        assert!(
                            !set.allowed(0, p as i64, j as i64, kv_len),
                            "layer {l}: allowed key {j} of query {p} evicted (kv_len {kv_len})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn ring_stream_of_5000_tokens_keeps_sinks_and_window() {
    // 4 sinks + a 256-token window (page 16: 1 sink page, ring of 17), next to a dense layer.
    let plan = LayerPlan {
        layers: vec![
            Pattern::streaming(4, 256).unwrap().into(),
            Pattern::causal().into(),
        ],
    };
    let mut h = Harness::new(plan, 16, 5000, 1, PoolSize::Sequences(1));
    assert_eq!(
        h.cache.capacity(0).unwrap(),
        LayerCapacity::Windowed {
            sink_pages: 1,
            ring_pages: 17
        }
    );
    assert_eq!(h.cache.capacity(1).unwrap(), LayerCapacity::Full);
    let seq = h.cache.add_sequence();
    for t in 0..5000 {
        h.append(seq, 1);
        h.check(seq, 1);
        // The ring layer never holds more than its 18 pages; it wraps ~18 times.
        assert_eq!(h.cache.pages_used(0).unwrap(), (t / 16 + 1).min(18));
        assert_eq!(h.cache.pages_used(1).unwrap(), t / 16 + 1);
    }
}

#[test]
fn chunked_appends_through_a_ring() {
    // Chunks of 1..=7 tokens; queries of a chunk read 30 keys back plus 5 sinks (page 8).
    let plan = LayerPlan {
        layers: vec![Pattern::streaming(5, 31).unwrap().into()],
    };
    let mut h = Harness::new(plan, 8, 3000, 7, PoolSize::Sequences(1));
    assert_eq!(
        h.cache.capacity(0).unwrap(),
        LayerCapacity::Windowed {
            sink_pages: 1,
            ring_pages: 6
        }
    );
    let seq = h.cache.add_sequence();
    let mut rng = Rng::new(7);
    while h.cache.seq_len(seq).unwrap() + 7 <= 3000 {
        let n = 1 + rng.below(7) as usize;
        h.append(seq, n);
        h.check(seq, n);
    }
}

#[test]
fn page_sizes_8_16_32_256() {
    for page in [8, 16, 32, 256] {
        let plan = LayerPlan {
            layers: vec![
                Pattern::streaming(3, 100).unwrap().into(),
                Pattern::causal().into(),
            ],
        };
        let mut h = Harness::new(plan, page, 1600, 2, PoolSize::Sequences(2));
        let (a, b) = (h.cache.add_sequence(), h.cache.add_sequence());
        for t in 0..1600 / 2 {
            h.append(a, 2);
            h.append(b, 1 + t % 2);
            if t % 7 == 0 || t > 790 {
                h.check(a, 2);
                h.check(b, 1 + t % 2);
            }
        }
        let used = h.cache.pages_used(0).unwrap();
        let want = 2 * (1 + (99 + 2 - 1usize).div_ceil(page) + 1).min(1600usize.div_ceil(page));
        assert!(used <= want, "page {page}: {used} > {want}");
    }
}

#[test]
fn interleaved_sequences_of_different_lengths() {
    let plan = LayerPlan {
        layers: vec![
            Pattern::streaming(4, 64).unwrap().into(),
            Pattern::causal().into(),
            Pattern::causal_window(20).unwrap().into(),
        ],
    };
    let mut h = Harness::new(plan, 8, 700, 4, PoolSize::Sequences(5));
    let mut rng = Rng::new(11);
    let mut live: Vec<SeqId> = (0..4).map(|_| h.cache.add_sequence()).collect();
    let mut targets: BTreeMap<SeqId, usize> = live
        .iter()
        .map(|&s| (s, 50 + rng.below(650) as usize))
        .collect();
    for step in 0..1500 {
        let i = rng.below(live.len() as u64) as usize;
        let s = live[i];
        let len = h.cache.seq_len(s).unwrap();
        if len >= targets[&s] {
            // Finished: free it and start another in its place.
            h.cache.free_sequence(s).unwrap();
            let n = h.cache.add_sequence();
            targets.insert(n, 1 + rng.below(699) as usize);
            live[i] = n;
            continue;
        }
        let n = (1 + rng.below(4) as usize).min(targets[&s] - len);
        h.append(s, n);
        h.check(s, n);
        if step % 50 == 0 {
            // One batched table per layer over all live sequences: valid, no page shared.
            for l in 0..3 {
                let t = h.cache.block_table(l, &live).unwrap();
                t.validate(h.cache.num_pages(l).unwrap()).unwrap();
                for (b, &s) in live.iter().enumerate() {
                    assert_eq!(t.kv_lens[b] as usize, h.cache.seq_len(s).unwrap());
                    let (k, _) = h.store.gather_row(l, &t, b).unwrap();
                    let (k1, _) = h.store.gather_contiguous(&h.cache, l, s).unwrap();
                    assert_eq!(bits(&k), bits(&k1));
                }
            }
        }
    }
}

#[test]
fn pages_are_reused_and_never_leak() {
    let plan = LayerPlan {
        layers: vec![
            Pattern::streaming(2, 40).unwrap().into(),
            Pattern::causal().into(),
        ],
    };
    let mut h = Harness::new(plan, 16, 512, 3, PoolSize::Sequences(3));
    let initial: Vec<usize> = (0..2).map(|l| h.cache.free_pages(l).unwrap()).collect();
    assert_eq!(initial, [3 * 5, 3 * 32]);
    let mut rng = Rng::new(3);
    for _round in 0..30 {
        let seqs: Vec<SeqId> = (0..3).map(|_| h.cache.add_sequence()).collect();
        for &s in &seqs {
            let target = 1 + rng.below(511) as usize;
            while h.cache.seq_len(s).unwrap() < target {
                let n = (1 + rng.below(3) as usize).min(target - h.cache.seq_len(s).unwrap());
                h.append(s, n);
            }
            h.check(s, 1);
        }
        for &s in &seqs {
            h.cache.free_sequence(s).unwrap();
        }
        let free: Vec<usize> = (0..2).map(|l| h.cache.free_pages(l).unwrap()).collect();
        assert_eq!(free, initial);
        assert_eq!(h.cache.total_pages_used(), 0);
        assert_eq!(h.cache.total_bytes_used(), 0);
    }
    // Pages freed by one sequence are what the next one gets.
    let a = h.cache.add_sequence();
    h.append(a, 3);
    let first = h.cache.block_table(1, &[a]).unwrap().table[0];
    h.cache.free_sequence(a).unwrap();
    let b = h.cache.add_sequence();
    h.append(b, 3);
    assert_eq!(h.cache.block_table(1, &[b]).unwrap().table[0], first);
}

#[test]
fn mistral_7b_memory_bound() {
    // 32 layers, 8 kv heads, head_dim 128, window 4096, page 16, 32768 tokens, decode.
    let plan = LayerPlan::uniform(32, Pattern::causal_window(4096).unwrap()).unwrap();
    let config = KvCacheConfig {
        num_layers: 32,
        num_kv_heads: 8,
        head_dim: 128,
        dtype: DType::BF16,
        page_size: 16,
        max_seq_len: 32768,
        max_chunk: 1,
        pool: PoolSize::Sequences(1),
    };
    let mut cache = KvCache::for_plan(config, &plan).unwrap();
    assert_eq!(
        cache.capacity(0).unwrap(),
        LayerCapacity::Windowed {
            sink_pages: 0,
            ring_pages: 257
        }
    );
    assert_eq!(cache.bytes_per_page(0).unwrap(), 2 * 8 * 16 * 128 * 2);
    let seq = cache.add_sequence();
    for _ in 0..32768 {
        cache.reserve_append(seq, 1).unwrap();
    }
    let used = cache.total_bytes_used();
    let dense = cache.dense_bytes(32768);
    assert_eq!(dense, 32 * 2 * 32768 * 8 * 128 * 2);
    // bytes <= (4096 + 16) / 32768 of dense (here with equality: 257 pages of 16 tokens).
    assert!(used * 32768 <= dense * (4096 + 16), "{used} vs {dense}");
    assert_eq!(used, 32 * 257 * cache.bytes_per_page(0).unwrap());
    assert_eq!(
        cache.bytes_used(7).unwrap(),
        257 * cache.bytes_per_page(0).unwrap()
    );
    // The pools are sized for one sequence: the ring is all a layer ever has.
    assert_eq!(cache.num_pages(0).unwrap(), 257);
}

#[test]
fn gemma_3_local_global_saving() {
    // Gemma-3-like: five 1024-window layers per dense layer (6 layers), 1 kv head,
    // head_dim 256, page 16, decode, 32768 tokens.
    let plan = LayerPlan::interleaved(
        6,
        Pattern::causal_window(1024).unwrap(),
        Pattern::causal(),
        5,
    )
    .unwrap();
    let config = KvCacheConfig {
        num_layers: 6,
        num_kv_heads: 1,
        head_dim: 256,
        dtype: DType::BF16,
        page_size: 16,
        max_seq_len: 32768,
        max_chunk: 1,
        pool: PoolSize::Sequences(1),
    };
    let mut cache = KvCache::for_plan(config, &plan).unwrap();
    let seq = cache.add_sequence();
    for _ in 0..32768 {
        cache.reserve_append(seq, 1).unwrap();
    }
    // Local layers: a ring of ceil(1023 / 16) + 1 = 65 pages; the global layer: 2048 pages.
    for l in 0..5 {
        assert_eq!(cache.pages_used(l).unwrap(), 65);
    }
    assert_eq!(cache.pages_used(5).unwrap(), 2048);
    // Expected: (5 * 65 + 2048) / (6 * 2048) = 2373 / 12288 = 0.19312 of dense; the ideal
    // local:global ratio is (5 * 1024 + 32768) / (6 * 32768) = 0.19271 (the difference is
    // the one extra page per local ring).
    assert_eq!(cache.total_pages_used(), 2373);
    let (used, dense) = (cache.total_bytes_used(), cache.dense_bytes(32768));
    assert_eq!(used * 12288, dense * 2373);
    let ideal = (5.0 * 1024.0 + 32768.0) / (6.0 * 32768.0);
    assert!((used as f64 / dense as f64 - ideal).abs() < 5e-4);
}

/// Asserts `r` is `Error::Cache` (or `Error::Shape` when `shape`) and the cache unchanged.
fn rejected<T: std::fmt::Debug>(
    cache: &KvCache,
    before: &KvCache,
    r: Result<T, Error>,
    shape: bool,
) {
    match (&r, shape) {
        (Err(Error::Cache(_)), false) | (Err(Error::Shape(_)), true) => {}
        _ => panic!(
            "expected a {} error, got {r:?}",
            if shape { "shape" } else { "cache" }
        ),
    }
    assert_eq!(cache, before, "cache changed by a failed operation");
}

#[test]
fn exhausted_pools_leave_the_cache_unchanged() {
    // Layer 0 (window) has room; layer 1 (dense) runs out first: nothing may be allocated
    // in layer 0 either.
    let plan = LayerPlan {
        layers: vec![
            Pattern::causal_window(16).unwrap().into(),
            Pattern::causal().into(),
        ],
    };
    let mut cache = KvCache::for_plan(
        config(2, 8, 1000, 4, PoolSize::PerLayer(vec![20, 5])),
        &plan,
    )
    .unwrap();
    let (a, b) = (cache.add_sequence(), cache.add_sequence());
    for _ in 0..8 {
        cache.reserve_append(a, 4).unwrap(); // 32 tokens: 4 dense pages
    }
    cache.reserve_append(b, 4).unwrap(); // the fifth dense page
    cache.reserve_append(b, 4).unwrap(); // b: 8 tokens, still one page
    let before = cache.clone();
    let r = cache.reserve_append(b, 1);
    rejected(&cache, &before, r, false);
    // Freeing a returns its pages; b can go on.
    cache.free_sequence(a).unwrap();
    cache.reserve_append(b, 1).unwrap();
    assert_eq!(cache.pages_used(1).unwrap(), 2);

    // A pool too small for one ring.
    let mut small =
        KvCache::for_plan(config(2, 8, 1000, 4, PoolSize::PagesPerLayer(2)), &plan).unwrap();
    let s = small.add_sequence();
    for _ in 0..4 {
        small.reserve_append(s, 4).unwrap();
    }
    let before = small.clone();
    let r = small.reserve_append(s, 1);
    rejected(&small, &before, r, false);
}

#[test]
fn length_chunk_and_sequence_errors_leave_the_cache_unchanged() {
    let plan = LayerPlan {
        layers: vec![
            Pattern::streaming(4, 32).unwrap().into(),
            Pattern::causal().into(),
        ],
    };
    let mut cache = KvCache::for_plan(config(2, 8, 100, 8, PoolSize::Sequences(4)), &plan).unwrap();
    let a = cache.add_sequence();
    for _ in 0..12 {
        cache.reserve_append(a, 8).unwrap();
    }
    let freed = cache.add_sequence();
    cache.reserve_append(freed, 3).unwrap();
    cache.free_sequence(freed).unwrap();
    let before = cache.clone();

    // Past max_seq_len (96 + 5 > 100), more than max_chunk, unknown and freed sequences.
    let r = cache.reserve_append(a, 5);
    rejected(&cache, &before, r, false);
    let r = cache.reserve_append(a, 9);
    rejected(&cache, &before, r, false);
    for s in [freed, SeqId(99)] {
        let r = cache.reserve_append(s, 1);
        rejected(&cache, &before, r, false);
        let r = cache.free_sequence(s);
        rejected(&cache, &before, r, false);
        rejected(&cache, &before, cache.block_table(0, &[a, s]), false);
        rejected(&cache, &before, cache.seq_len(s), false);
    }
    // A sequence twice in a batch, a layer out of range.
    rejected(&cache, &before, cache.block_table(1, &[a, a]), false);
    rejected(&cache, &before, cache.block_table(2, &[a]), true);
    rejected(&cache, &before, cache.pages_used(2), true);
    // Exactly max_seq_len is fine; zero tokens is a no-op.
    cache.reserve_append(a, 4).unwrap();
    assert_eq!(cache.seq_len(a).unwrap(), 100);
    let p = cache.reserve_append(a, 0).unwrap();
    assert!(p.layers.iter().all(|l| l.is_empty()));
}

#[test]
fn malformed_block_tables_are_rejected() {
    let plan = LayerPlan {
        layers: vec![
            Pattern::streaming(4, 32).unwrap().into(),
            Pattern::causal().into(),
        ],
    };
    let mut cache = KvCache::for_plan(config(2, 8, 200, 8, PoolSize::Sequences(3)), &plan).unwrap();
    let (a, b) = (cache.add_sequence(), cache.add_sequence());
    for _ in 0..10 {
        cache.reserve_append(a, 8).unwrap();
        cache.reserve_append(b, 5).unwrap();
    }
    let store = HostKvStorage::<f16>::new(&cache).unwrap();
    for l in 0..2 {
        let pages = cache.num_pages(l).unwrap();
        let good = cache.block_table(l, &[a, b]).unwrap();
        good.validate(pages).unwrap();
        let stride = good.stride;
        let mut bad: Vec<(&str, BlockTable)> = vec![
            (
                "page out of range",
                BlockTable {
                    table: {
                        let mut t = good.table.clone();
                        t[0] = pages as i32;
                        t
                    },
                    ..good.clone()
                },
            ),
            (
                "negative page",
                BlockTable {
                    table: {
                        let mut t = good.table.clone();
                        t[1] = -1;
                        t
                    },
                    ..good.clone()
                },
            ),
            (
                "page twice across sequences",
                BlockTable {
                    table: {
                        let mut t = good.table.clone();
                        t[stride] = t[0];
                        t
                    },
                    ..good.clone()
                },
            ),
            (
                "stride too small",
                BlockTable {
                    stride: stride - 1,
                    table: good.table[..2 * (stride - 1)].to_vec(),
                    ..good.clone()
                },
            ),
            (
                "table length",
                BlockTable {
                    table: good.table[1..].to_vec(),
                    ..good.clone()
                },
            ),
            (
                "negative length",
                BlockTable {
                    kv_lens: vec![-3, good.kv_lens[1]],
                    ..good.clone()
                },
            ),
            (
                "page size",
                BlockTable {
                    page_size: 48,
                    ..good.clone()
                },
            ),
        ];
        if l == 1 {
            bad.push((
                "length beyond capacity",
                BlockTable {
                    kv_lens: vec![201, 50],
                    ..good.clone()
                },
            ));
        }
        for (what, t) in &bad {
            assert!(
                matches!(t.validate(pages), Err(Error::Cache(_))),
                "layer {l}: {what}"
            );
            assert!(
                matches!(store.gather_row(l, t, 0), Err(Error::Cache(_))),
                "layer {l}: {what}"
            );
        }
    }
}

#[test]
fn shape_errors() {
    let plan = LayerPlan {
        layers: vec![
            Pattern::causal_window(16).unwrap().into(),
            Pattern::causal().into(),
        ],
    };
    let ok = config(2, 8, 100, 4, PoolSize::Sequences(2));
    // Configs.
    let bad_page = KvCacheConfig {
        page_size: 12,
        ..ok.clone()
    };
    assert!(matches!(
        KvCache::for_plan(bad_page, &plan),
        Err(Error::Cache(_))
    ));
    let no_heads = KvCacheConfig {
        num_kv_heads: 0,
        ..ok.clone()
    };
    assert!(matches!(
        KvCache::for_plan(no_heads, &plan),
        Err(Error::Shape(_))
    ));
    let three = KvCacheConfig {
        num_layers: 3,
        ..ok.clone()
    };
    assert!(matches!(
        KvCache::for_plan(three, &plan),
        Err(Error::Shape(_))
    ));
    let pools = KvCacheConfig {
        pool: PoolSize::PerLayer(vec![4]),
        ..ok.clone()
    };
    assert!(matches!(
        KvCache::for_plan(pools, &plan),
        Err(Error::Shape(_))
    ));
    let chunk = KvCacheConfig {
        max_chunk: 0,
        ..ok.clone()
    };
    assert!(matches!(
        KvCache::for_plan(chunk, &plan),
        Err(Error::Cache(_))
    ));
    let long = KvCacheConfig {
        max_seq_len: 1 << 31,
        ..ok.clone()
    };
    assert!(matches!(
        KvCache::for_plan(long, &plan),
        Err(Error::Cache(_))
    ));
    let ring0 = vec![
        LayerCapacity::Windowed {
            sink_pages: 1,
            ring_pages: 0,
        },
        LayerCapacity::Full,
    ];
    assert!(matches!(
        KvCache::new(ok.clone(), ring0),
        Err(Error::Cache(_))
    ));

    // Storage: wrong dtype; write_kv with wrong row counts or layers leaves pages unchanged.
    let mut cache = KvCache::for_plan(ok, &plan).unwrap();
    assert!(matches!(
        HostKvStorage::<half::bf16>::new(&cache),
        Err(Error::Shape(_))
    ));
    let mut store = HostKvStorage::<f16>::new(&cache).unwrap();
    let s = cache.add_sequence();
    let p = cache.reserve_append(s, 3).unwrap();
    let (k, v) = (rows(s, 0, 3, false), rows(s, 0, 3, true));
    let before = store.clone();
    assert!(matches!(
        store.write_kv(0, &p, &k[..ROW * 2], &v),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        store.write_kv(0, &p, &k, &v[1..]),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        store.write_kv(2, &p, &k, &v),
        Err(Error::Shape(_))
    ));
    let mut forged = p.clone();
    forged.layers[0][2].page = 10_000;
    assert!(matches!(
        store.write_kv(0, &forged, &k, &v),
        Err(Error::Cache(_))
    ));
    assert_eq!(store, before);
    store.write_kv(0, &p, &k, &v).unwrap();
    let (gk, gv) = store.gather_contiguous(&cache, 0, s).unwrap();
    assert_eq!((bits(&gk), bits(&gv)), (bits(&k), bits(&v)));
}

/// The cache feeding the emulated forward kernel: chunked appends of three sequences of
/// different lengths, then one varlen step whose queries are each sequence's last chunk,
/// through the cache's block tables, against the same step on the true contiguous K/V.
#[test]
fn emulated_attention_reads_the_cache() {
    use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, Element, EmuRun, SeqLens};
    const HK: usize = 2;
    const D: usize = 64;
    let plan = LayerPlan {
        layers: vec![
            Pattern::streaming(4, 40).unwrap().into(),
            Pattern::causal().into(),
        ],
    };
    let cfg = KvCacheConfig {
        num_kv_heads: HK,
        head_dim: D,
        ..config(2, 16, 400, 8, PoolSize::Sequences(3))
    };
    let mut cache = KvCache::for_plan(cfg, &plan).unwrap();
    // Ring of ceil((39 + 8 - 1) / 16) + 1 = 4 pages after one sink page: 250 tokens wrap it.
    assert_eq!(
        cache.capacity(0).unwrap(),
        LayerCapacity::Windowed {
            sink_pages: 1,
            ring_pages: 4
        }
    );
    let mut store = HostKvStorage::<f16>::new(&cache).unwrap();
    let mut rng = Rng::new(5);
    let elem = |rng: &mut Rng| f16::from_f32(rng.below(2001) as f32 / 1000.0 - 1.0);
    let seqs: Vec<SeqId> = (0..3).map(|_| cache.add_sequence()).collect();
    let mut truth: Vec<(Vec<f16>, Vec<f16>)> = vec![(Vec::new(), Vec::new()); 3];
    let mut last_chunk = [0usize; 3];
    for (i, &target) in [250usize, 37, 131].iter().enumerate() {
        while cache.seq_len(seqs[i]).unwrap() < target {
            let n = (1 + rng.below(8) as usize).min(target - cache.seq_len(seqs[i]).unwrap());
            let k: Vec<f16> = (0..n * HK * D).map(|_| elem(&mut rng)).collect();
            let v: Vec<f16> = (0..n * HK * D).map(|_| elem(&mut rng)).collect();
            let p = cache.reserve_append(seqs[i], n).unwrap();
            for l in 0..2 {
                store.write_kv(l, &p, &k, &v).unwrap();
            }
            truth[i].0.extend(&k);
            truth[i].1.extend(&v);
            last_chunk[i] = n;
        }
    }
    let lens: Vec<(usize, usize)> = (0..3)
        .map(|i| (last_chunk[i], cache.seq_len(seqs[i]).unwrap()))
        .collect();
    let problem = AttnProblem::new(
        SeqLens::varlen_from_lens(&lens).unwrap(),
        4,
        HK,
        D as u32,
        f16::DTYPE,
    )
    .unwrap();
    let q: Vec<f16> = (0..problem.q_elems()).map(|_| elem(&mut rng)).collect();
    let k: Vec<f16> = truth.iter().flat_map(|t| t.0.iter().copied()).collect();
    let v: Vec<f16> = truth.iter().flat_map(|t| t.1.iter().copied()).collect();
    for l in 0..2 {
        let attn = AttnPlan::with_patterns(
            &problem,
            plan.layers[l].patterns().unwrap(),
            &AttnOptions::default(),
        )
        .unwrap();
        let table = cache.block_table(l, &seqs).unwrap();
        let kv = store.paged_kv(l, &table).unwrap();
        let (out, lse) = attn
            .run_emulated_paged(&q, &kv, &EmuRun::default())
            .unwrap();
        let (c_out, c_lse) = attn.run_emulated(&q, &k, &v, &EmuRun::default()).unwrap();
        // Same tiles, same order; masked keys contribute exact zeros either way.
        assert_eq!(bits(&out), bits(&c_out), "layer {l}: paged != contiguous");
        let lb = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(lb(&lse), lb(&c_lse), "layer {l}: lse");
    }
}

// ---- chunked layers and layers without KV (hybrids) -------------------------------------------

#[test]
fn chunked_layer_keeps_one_chunk_in_a_ring() {
    // Llama-4-like: a causal chunk of 64 (page 16) keeps a ring of 4 pages for decode, the
    // chunk's own; a dense layer keeps everything; a Mamba layer keeps nothing.
    let plan = LayerPlan {
        layers: vec![
            Pattern::causal_chunked(64).unwrap().into(),
            sparse_attn::pattern::Layer::non_attention("mamba").unwrap(),
            Pattern::causal().into(),
        ],
    };
    let mut h = Harness::new(plan, 16, 1000, 1, PoolSize::Sequences(1));
    assert_eq!(
        h.cache.capacity(0).unwrap(),
        LayerCapacity::Windowed {
            sink_pages: 0,
            ring_pages: 4
        }
    );
    assert_eq!(h.cache.capacity(1).unwrap(), LayerCapacity::NoKv);
    assert_eq!(h.cache.num_pages(1).unwrap(), 0);
    let seq = h.cache.add_sequence();
    for t in 0..1000 {
        h.append(seq, 1);
        h.check(seq, 1);
        assert_eq!(h.cache.pages_used(0).unwrap(), (t / 16 + 1).min(4));
        assert_eq!(h.cache.pages_used(1).unwrap(), 0);
        assert_eq!(h.cache.pages_used(2).unwrap(), t / 16 + 1);
    }
    // The Mamba layer has no block table and its placements are empty.
    let e = h.cache.block_table(1, &[seq]).unwrap_err();
    assert!(matches!(e, Error::Cache(_)), "{e}");
    assert!(e.to_string().contains("not softmax attention"), "{e}");
    h.cache.free_sequence(seq).unwrap();
    let seq2 = h.cache.add_sequence();
    let p = h.cache.reserve_append(seq2, 1).unwrap();
    assert!(p.layers[1].is_empty() && p.layers[0].len() == 1 && p.layers[2].len() == 1);
}

#[test]
fn chunked_prefill_across_chunk_boundaries() {
    // Chunks of 48 keys with pages of 16 (aligned) and of 40 keys (not aligned), prefill steps
    // of 1..=9 tokens that cross chunk edges: every allowed key stays resident (`check`).
    for (size, want_ring) in [
        (48usize, (48 + 9 - 2) / 16 + 1),
        (40, (40 - 1 + 9 - 1usize).div_ceil(16) + 1),
    ] {
        let plan = LayerPlan {
            layers: vec![Pattern::causal_chunked(size as i64).unwrap().into()],
        };
        let mut h = Harness::new(plan, 16, 2000, 9, PoolSize::Sequences(1));
        assert_eq!(
            h.cache.capacity(0).unwrap(),
            LayerCapacity::Windowed {
                sink_pages: 0,
                ring_pages: want_ring
            },
            "chunk {size}"
        );
        let seq = h.cache.add_sequence();
        let mut rng = Rng::new(size as u64);
        while h.cache.seq_len(seq).unwrap() + 9 <= 2000 {
            let n = 1 + rng.below(9) as usize;
            h.append(seq, n);
            h.check(seq, n);
        }
    }
}

#[test]
fn a_ring_one_page_short_loses_a_chunk_key() {
    // The chunk ring is tight: with one page fewer some step's query finds a key of its chunk
    // evicted. Page 8, chunk 32, steps of 1: the ring of 4 pages is exactly the chunk.
    let set: HeadPatterns = Pattern::causal_chunked(32).unwrap().into();
    let page = sparse_attn::kv_cache::PageSize::new(8).unwrap();
    let cap = LayerCapacity::from_patterns(&set, page, 1).unwrap();
    assert_eq!(
        cap,
        LayerCapacity::Windowed {
            sink_pages: 0,
            ring_pages: 4
        }
    );
    let lost = |ring: usize| {
        (1..200usize).any(|kv_len| {
            let p = kv_len as i64 - 1;
            (0..kv_len)
                .any(|j| set.allowed(0, p, j as i64, kv_len) && !resident(j, kv_len, page, 0, ring))
        })
    };
    assert!(!lost(4));
    assert!(lost(3));
}

#[test]
fn hybrid_plans_size_only_their_attention_layers() {
    // Jamba-shaped: one attention layer in 8, the rest Mamba; the pool holds pages for the
    // attention layers only.
    let plan = LayerPlan::periodic(
        16,
        sparse_attn::pattern::Layer::non_attention("mamba").unwrap(),
        Pattern::causal(),
        8,
        4,
    )
    .unwrap();
    let cache = KvCache::for_plan(config(16, 16, 4096, 1, PoolSize::Sequences(2)), &plan).unwrap();
    for l in 0..16 {
        let want = if l % 8 == 4 { 2 * 4096 / 16 } else { 0 };
        assert_eq!(cache.num_pages(l).unwrap(), want, "layer {l}");
    }
    // A layer's own page shape (head_dim, kv heads) sizes its pages; a zero is refused,
    // naming the layer.
    let mut wide = plan.clone();
    if let sparse_attn::pattern::Layer::Attention(a) = &mut wide.layers[4] {
        a.head_dim = Some(2 * DIM);
    }
    if let sparse_attn::pattern::Layer::Attention(a) = &mut wide.layers[12] {
        a.num_kv_heads = Some(1);
    }
    let cache = KvCache::for_plan(config(16, 16, 4096, 1, PoolSize::Sequences(2)), &wide).unwrap();
    let base = cache.layout(0).unwrap();
    let l4 = cache.layout(4).unwrap();
    let l12 = cache.layout(12).unwrap();
    assert_eq!((l4.num_kv_heads, l4.head_dim), (base.num_kv_heads, 2 * DIM));
    assert_eq!((l12.num_kv_heads, l12.head_dim), (1, DIM));
    // Page bytes scale with head_dim (layer 4) and kv heads (layer 12); the pool with both.
    let (b0, b4, b12) = (
        cache.bytes_per_page(0).unwrap(),
        cache.bytes_per_page(4).unwrap(),
        cache.bytes_per_page(12).unwrap(),
    );
    assert_eq!((b4, b12 * base.num_kv_heads as u64), (2 * b0, b0));
    assert_eq!(
        cache.pool_bytes(4).unwrap(),
        2 * cache.pool_bytes(12).unwrap() * HEADS as u64
    );
    let mut zero = plan;
    if let sparse_attn::pattern::Layer::Attention(a) = &mut zero.layers[12] {
        a.head_dim = Some(0);
    }
    let e = KvCache::for_plan(config(16, 16, 4096, 1, PoolSize::Sequences(2)), &zero).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{e}");
    assert!(e.to_string().contains("layer 12"), "{e}");
}

/// Gemma 4 (tests/data/gemma-4-31b.json): local layers of 16 kv heads x head_dim 256 and
/// global layers of 4 kv heads x head_dim 512 in one cache. `for_plan` gives each layer its
/// own page shape; the storage's pools, the rows `write_kv` takes and the byte accounting
/// follow it, and a row of the other shape is refused.
#[test]
fn gemma_4_layers_have_their_own_page_shapes() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gemma-4-31b.json"),
    )
    .unwrap();
    let plan = LayerPlan::from_hf_config(&serde_json::from_str(&text).unwrap()).unwrap();
    let config = KvCacheConfig {
        num_layers: plan.layers.len(),
        num_kv_heads: 16,
        head_dim: 256,
        dtype: DType::BF16,
        page_size: 16,
        max_seq_len: 4096,
        max_chunk: 8,
        pool: PoolSize::Sequences(1),
    };
    let mut cache = KvCache::for_plan(config, &plan).unwrap();
    let shapes: Vec<(usize, usize)> = (0..cache.num_layers())
        .map(|l| {
            let p = cache.layout(l).unwrap();
            (p.num_kv_heads, p.head_dim)
        })
        .collect();
    let global: Vec<usize> = plan
        .attention_layers()
        .filter(|(_, a)| a.head_dim == Some(512))
        .map(|(l, _)| l)
        .collect();
    assert!(!global.is_empty() && global.len() < cache.num_layers());
    for (l, &s) in shapes.iter().enumerate() {
        let want = if global.contains(&l) {
            (4, 512)
        } else {
            (16, 256)
        };
        assert_eq!(s, want, "layer {l}");
        assert_eq!(
            cache.bytes_per_page(l).unwrap(),
            2 * want.0 as u64 * 16 * want.1 as u64 * 2,
            "layer {l}"
        );
    }
    let dense: u64 = shapes
        .iter()
        .map(|&(hk, d)| 2 * 100 * (hk * d) as u64 * 2)
        .sum();
    assert_eq!(cache.dense_bytes(100), dense);

    // Positions 0..5 of one sequence through a host storage: each layer's rows have its own
    // width, and they come back through the block table's mapping.
    let mut store = HostKvStorage::<half::bf16>::new(&cache).unwrap();
    let seq = cache.add_sequence();
    let placement = cache.reserve_append(seq, 5).unwrap();
    for l in [0, global[0]] {
        let (hk, d) = shapes[l];
        let row = |t: usize, c: usize, x: f32| half::bf16::from_f32(x + (t * 1000 + c) as f32);
        let k: Vec<_> = (0..5 * hk * d)
            .map(|i| row(i / (hk * d), i % (hk * d), 0.0))
            .collect();
        let v: Vec<_> = (0..5 * hk * d)
            .map(|i| row(i / (hk * d), i % (hk * d), 0.5))
            .collect();
        let other = if l == 0 { shapes[global[0]] } else { shapes[0] };
        let wrong = vec![half::bf16::ZERO; 5 * other.0 * other.1];
        assert!(matches!(
            store.write_kv(l, &placement, &wrong, &wrong),
            Err(Error::Shape(_))
        ));
        store.write_kv(l, &placement, &k, &v).unwrap();
        let (gk, gv) = store.gather_contiguous(&cache, l, seq).unwrap();
        assert_eq!((gk, gv), (k, v), "layer {l}");
        assert_eq!(store.layout(l).unwrap(), cache.layout(l).unwrap());
    }
    assert_eq!(
        cache.total_bytes_used(),
        (0..cache.num_layers())
            .map(|l| cache.bytes_used(l).unwrap())
            .sum::<u64>()
    );
}
