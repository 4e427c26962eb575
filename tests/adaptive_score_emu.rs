//! Block summaries and adaptive block scores on the CPU emulator (issue 15): the append
//! kernel's summaries against their f32 twin and against summaries recomputed from the
//! gathered keys (a ring that wraps and reuses its slots), the summarize kernel (contiguous
//! and paged), the scoring kernel against the f64 reference `Selection::scores` on
//! exact-arithmetic inputs, canaries (max read as min, the wrong block) and typed errors.

mod common;

use common::select;

use common::assert_same_bits;
use half::f16;
use sparse_attn::adaptive::scoring::{
    score_emulated, score_emulated_with, SummaryIndex, SummaryInput,
};
use sparse_attn::adaptive::{BlockSelect, Grouping, Score, SelectInputs, Selection};
use sparse_attn::kernels::test_kernels::{SCORE_MAX_AS_MIN, SCORE_WRONG_BLOCK};
use sparse_attn::kernels::KernelDesc;
use sparse_attn::kv_cache::append::{append_emulated_with, check_summary_runs, placement_slots};
use sparse_attn::kv_cache::summary::{
    paged_offset, summarize_emulated, summarize_paged_emulated, summarize_twin,
};
use sparse_attn::kv_cache::{
    BlockSummary, HostKvStorage, KvCache, KvCacheConfig, LayerCapacity, PoolSize, SummaryLayout,
};
use sparse_attn::pattern::rng::SplitMix64;
use sparse_attn::{AttnProblem, DType, Error, SeqLens};

/// Values from {-2, -1, 0, 1, 2} / 4 (exact in f16, every sum, mean and product exact in f32).
fn exact(n: usize, seed: u64) -> Vec<f16> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| f16::from_f32(r.int_in(-2, 2) as f32 / 4.0))
        .collect()
}

fn widen(x: &[f16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

fn cache(page: usize, caps: Vec<LayerCapacity>, block: usize, heads: usize, d: usize) -> KvCache {
    let config = KvCacheConfig {
        num_layers: caps.len(),
        num_kv_heads: heads,
        head_dim: d,
        dtype: DType::F16,
        page_size: page,
        max_seq_len: 4096,
        max_chunk: 7,
        pool: PoolSize::Sequences(2),
    };
    KvCache::new(config, caps)
        .unwrap()
        .with_summaries(block)
        .unwrap()
}

/// The summary of keys `range` of head `head` recomputed from contiguous keys.
fn summary_of(
    k: &[f16],
    heads: usize,
    d: usize,
    head: usize,
    range: std::ops::Range<usize>,
) -> BlockSummary {
    let mut s = BlockSummary::empty(d);
    for j in range {
        s.add(&widen(&k[(j * heads + head) * d..][..d]));
    }
    s
}

#[test]
fn appended_summaries_match_twin_and_gathered_keys() {
    // Pages of 32, B = 16: two summary blocks per page. Layer 1 keeps a sink page and a ring
    // of two pages, so it wraps several times and resets reused summary blocks.
    let (heads, d, page) = (2, 64, 32);
    let caps = vec![
        LayerCapacity::Full,
        LayerCapacity::Windowed {
            sink_pages: 1,
            ring_pages: 2,
        },
    ];
    let mut cache = cache(page, caps, 16, heads, d);
    let mut host = HostKvStorage::<f16>::new(&cache).unwrap();
    let mut pools: Vec<(Vec<f16>, Vec<f16>, Vec<f32>)> = (0..2)
        .map(|l| {
            let p = host.layer(l).unwrap();
            let (_, s) = host.summaries(l).unwrap();
            (p.k.clone(), p.v.clone(), s.to_vec())
        })
        .collect();
    let seqs = [cache.add_sequence(), cache.add_sequence()];
    let mut checked_ring_reuse = false;
    for step in 0..72 {
        let seq = seqs[step % 2];
        let n = 1 + (step * 5) % 7;
        let placement = cache.reserve_append(seq, n).unwrap();
        let k = exact(n * heads * d, 100 + step as u64);
        let v = exact(n * heads * d, 200 + step as u64);
        host.write_kv(0, &placement, &k, &v).unwrap();
        host.write_kv(1, &placement, &k, &v).unwrap();
        for (layer, (kp, vp, sp)) in pools.iter_mut().enumerate() {
            let layout = cache.layout(layer).unwrap();
            let slots =
                placement_slots(&placement, layer, &layout, cache.num_pages(layer).unwrap())
                    .unwrap();
            let summ = cache.summary_layout(layer).unwrap().unwrap();
            append_emulated_with(&layout, kp, vp, Some((&summ, sp)), &slots, &k, &v).unwrap();
            let (_, want) = host.summaries(layer).unwrap();
            assert_same_bits(&format!("step {step} layer {layer}: summaries"), sp, want);
        }
    }
    // The twin (now known to equal the kernel) against the meaning: every held summary block
    // of every sequence is the summary of exactly its present keys.
    for &seq in &seqs {
        for layer in 0..2 {
            let (k, _) = host.gather_contiguous(&cache, layer, seq).unwrap();
            let table = cache.block_table(layer, &[seq]).unwrap();
            let kv_len = cache.seq_len(seq).unwrap();
            let (summ, pool) = host.summaries(layer).unwrap();
            for s in (0..kv_len).step_by(16) {
                let Some(_) = table.page_of(0, s) else {
                    checked_ring_reuse |= layer == 1;
                    continue;
                };
                for head in 0..heads {
                    let at = paged_offset(summ, &table, 0, head, s).unwrap();
                    let want = summary_of(&k, heads, d, head, s..(s + 16).min(kv_len));
                    assert_eq!(
                        BlockSummary::read(pool, at, d),
                        want,
                        "layer {layer} block at {s}"
                    );
                }
            }
        }
    }
    assert!(
        checked_ring_reuse,
        "the ring layer must have evicted (and reused) pages"
    );
}

#[test]
fn summarize_kernel_matches_twin_contiguous_and_paged() {
    let (heads, d) = (2, 64);
    // Contiguous, varlen with a partial and an empty sequence; blocks of 16.
    let seqs = SeqLens::varlen_from_lens(&[(1, 37), (1, 0), (1, 64)]).unwrap();
    let k = exact(seqs.totals().1 * heads * d, 7);
    let layout = SummaryLayout::identity(heads, d, 16).unwrap();
    let got = summarize_emulated(&layout, &seqs, &k).unwrap();
    let want = summarize_twin(&layout, &seqs, &k);
    assert_eq!(got.1, want.1);
    assert_same_bits("contiguous summaries", &got.0, &want.0);
    // Paged: a cache filled without the kernel's summaries, summarized in one pass, equals
    // the twin the host storage kept while appending (on every held block).
    let mut cache = cache(16, vec![LayerCapacity::Full], 32, heads, d);
    let mut host = HostKvStorage::<f16>::new(&cache).unwrap();
    let seq = cache.add_sequence();
    for step in 0..9 {
        let p = cache.reserve_append(seq, 1 + step % 7).unwrap();
        let k = exact(p.len * heads * d, 40 + step as u64);
        host.write_kv(0, &p, &k, &k).unwrap();
    }
    let table = cache.block_table(0, &[seq]).unwrap();
    let (summ, twin) = host.summaries(0).unwrap();
    let mut pool = summ.empty_pool(cache.num_pages(0).unwrap());
    let page = cache.layout(0).unwrap();
    summarize_paged_emulated(&page, summ, &host.layer(0).unwrap().k, &table, &mut pool).unwrap();
    let kv_len = cache.seq_len(seq).unwrap();
    for s in (0..kv_len).step_by(summ.block) {
        for head in 0..heads {
            let at = paged_offset(summ, &table, 0, head, s).unwrap();
            assert_same_bits(
                &format!("paged block at {s}"),
                &pool[at..at + 3 * d],
                &twin[at..at + 3 * d],
            );
        }
    }
}

/// Runs scoring and the reference on one problem and compares: candidates exactly where the
/// contract makes them exact (full blocks; pooled_qk also needs a power-of-two group), else
/// within `tol` relative; non-candidates -inf.
#[allow(clippy::too_many_arguments)]
fn check_scores(
    what: &str,
    p: &AttnProblem,
    sel: &BlockSelect,
    grouping: Grouping,
    q: &[f16],
    k: &[f16],
    input: SummaryInput<'_>,
    tol: f64,
) {
    check_scores_with(what, p, sel, grouping, q, k, input, tol, None)
}

/// [`check_scores`] running `kernel` (a canary) instead of the production kernel.
#[allow(clippy::too_many_arguments)]
fn check_scores_with(
    what: &str,
    p: &AttnProblem,
    sel: &BlockSelect,
    grouping: Grouping,
    q: &[f16],
    k: &[f16],
    input: SummaryInput<'_>,
    tol: f64,
    kernel: Option<&'static KernelDesc>,
) {
    let scale = 1.0 / 16.0;
    let got = score_emulated_with(p, sel, grouping, scale, q, input, kernel).unwrap();
    let (qf, kf) = (widen(q), widen(k));
    let x = SelectInputs {
        q: &qf,
        k: &kf,
        scale,
        grouping,
        given: None,
    };
    let want = Selection::compute(p, sel, &x).unwrap();
    let bsz = sel.block() as usize;
    let mut exact_seen = 0;
    for b in 0..p.seqs().batch() {
        let (q_len, kv_len) = p.seqs().lens(b);
        for h in 0..p.num_heads() {
            for g in 0..got.extents.max_groups {
                let row = got.scores(b, h, g);
                let reference: &[f64] = if g < want.num_groups(b) {
                    want.scores(b, h, g)
                } else {
                    &[]
                };
                let rows = (0..q_len)
                    .filter(|&i| g < want.num_groups(b) && want.group_of(b, i) == g)
                    .count();
                for (j, &s) in row.iter().enumerate() {
                    let at = format!("{what}: b {b} h {h} g {g} J {j}");
                    match reference.get(j) {
                        None => assert_eq!(s, f32::NEG_INFINITY, "{at}: not a candidate"),
                        Some(&r) => {
                            let full = (j + 1) * bsz <= kv_len;
                            // Exact where no rounding happens: full blocks (o = 0) and, for
                            // mean_k a single row, for pooled_qk a power-of-two row count.
                            let exact = match sel.score() {
                                Score::MeanK => rows == 1,
                                Score::PooledQk => rows.is_power_of_two(),
                                _ => true,
                            };
                            if full && exact {
                                assert_eq!(s, r as f32, "{at}: exact");
                                exact_seen += 1;
                            } else {
                                assert!(
                                    (s as f64 - r).abs() <= tol * (1.0 + r.abs()),
                                    "{at}: {s} vs {r}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    let multi_row_mean = sel.score() == Score::MeanK && grouping == Grouping::Prefill;
    assert!(
        exact_seen > 0 || multi_row_mean,
        "{what}: nothing compared exactly"
    );
}

fn problem(lens: &[(usize, usize)], heads: usize, kv_heads: usize, d: u32) -> AttnProblem {
    AttnProblem::new(
        SeqLens::varlen_from_lens(lens).unwrap(),
        heads,
        kv_heads,
        d,
        DType::F16,
    )
    .unwrap()
}

#[test]
fn scores_match_reference_from_contiguous_summaries() {
    let (heads, kv_heads, d) = (4, 2, 64);
    // A partial first group (positions not aligned to q_block), a partial last block, q_len
    // > kv_len impossible here; 24 rows over 70 keys and 16 over 64.
    let p = problem(&[(24, 70), (16, 64)], heads, kv_heads, d as u32);
    let (total_q, total_k) = p.seqs().totals();
    let q = exact(total_q * heads * d, 11);
    let k = exact(total_k * kv_heads * d, 12);
    let layout = SummaryLayout::identity(kv_heads, d, 16).unwrap();
    let (pool, seq_blocks) = summarize_emulated(&layout, p.seqs(), &k).unwrap();
    let input = SummaryInput {
        layout: &layout,
        pool: &pool,
        index: SummaryIndex::Identity { seq_blocks },
    };
    for score in ["pooled_qk", "minmax", "mean_k"] {
        // B = 32 over summary blocks of 16: each block combines two summaries.
        let sel = select(&format!(
            r#"{{"top_k": {{"block": 32, "q_block": 16, "k": 1, "score": "{score}"}}}}"#
        ));
        check_scores(
            &format!("{score} prefill"),
            &p,
            &sel,
            Grouping::Prefill,
            &q,
            &k,
            input,
            2e-6,
        );
        // Decode grouping: every row alone, so mean_k is exact too.
        let sel16 = select(&format!(
            r#"{{"top_k": {{"block": 16, "k": 1, "score": "{score}"}}}}"#
        ));
        check_scores(
            &format!("{score} decode"),
            &p,
            &sel16,
            Grouping::Decode,
            &q,
            &k,
            input,
            2e-6,
        );
    }
}

#[test]
fn scores_match_reference_uniform_batch() {
    // Uniform lengths (no prefix sums on the device): batch strides instead of cu_seqlens.
    let (heads, d) = (2, 96);
    let seqs = SeqLens::Uniform {
        batch: 2,
        q_len: 20,
        kv_len: 48,
    };
    let p = AttnProblem::new(seqs.clone(), heads, 1, d as u32, DType::F16).unwrap();
    let q = exact(40 * heads * d, 61);
    let k = exact(96 * d, 62);
    let layout = SummaryLayout::identity(1, d, 16).unwrap();
    let (pool, seq_blocks) = summarize_emulated(&layout, &seqs, &k).unwrap();
    assert_same_bits(
        "uniform summaries",
        &pool,
        &summarize_twin(&layout, &seqs, &k).0,
    );
    let input = SummaryInput {
        layout: &layout,
        pool: &pool,
        index: SummaryIndex::Identity { seq_blocks },
    };
    for score in ["minmax", "mean_k", "pooled_qk"] {
        let sel = select(&format!(
            r#"{{"top_k": {{"block": 16, "q_block": 8, "k": 1, "score": "{score}"}}}}"#
        ));
        check_scores(
            &format!("uniform {score}"),
            &p,
            &sel,
            Grouping::Prefill,
            &q,
            &k,
            input,
            2e-6,
        );
    }
}

#[test]
fn scores_match_reference_from_paged_summaries() {
    // A cache with pages of 16 and B = 64 (four summary blocks per adaptive block, across
    // four pages), two sequences appended in chunks; scoring reads the summaries through the
    // block table. head_dim 128, GQA 2.
    let (heads, kv_heads, d) = (4, 2, 128);
    let mut cache = cache(16, vec![LayerCapacity::Full], 64, kv_heads, d);
    let mut host = HostKvStorage::<f16>::new(&cache).unwrap();
    let seqs = [cache.add_sequence(), cache.add_sequence()];
    let targets = [150usize, 131];
    for (i, &seq) in seqs.iter().enumerate() {
        let mut step = 0;
        while cache.seq_len(seq).unwrap() < targets[i] {
            let n = (targets[i] - cache.seq_len(seq).unwrap()).min(7);
            let pl = cache.reserve_append(seq, n).unwrap();
            let k = exact(n * kv_heads * d, 1000 * i as u64 + step);
            host.write_kv(0, &pl, &k, &k).unwrap();
            step += 1;
        }
    }
    let table = cache.block_table(0, &seqs).unwrap();
    let mut k_all = Vec::new();
    for &seq in &seqs {
        k_all.extend(host.gather_contiguous(&cache, 0, seq).unwrap().0);
    }
    let (summ, pool) = host.summaries(0).unwrap();
    let input = SummaryInput {
        layout: summ,
        pool,
        index: SummaryIndex::Paged {
            table: &table,
            num_pages: cache.num_pages(0).unwrap(),
        },
    };
    // The last 3 rows of each sequence, decode grouping (singleton groups: exact mean_k).
    let p = problem(&[(3, 150), (3, 131)], heads, kv_heads, d as u32);
    let q = exact(6 * heads * d, 99);
    for score in ["mean_k", "minmax", "pooled_qk"] {
        let sel = select(&format!(
            r#"{{"top_k": {{"block": 64, "k": 1, "score": "{score}"}}}}"#
        ));
        check_scores(
            &format!("paged {score}"),
            &p,
            &sel,
            Grouping::Decode,
            &q,
            &k_all,
            input,
            2e-6,
        );
    }
    // A prefill chunk of the last 40 rows of each sequence, groups of q_block 16 (the first
    // ones partial).
    let p = problem(&[(40, 150), (40, 131)], heads, kv_heads, d as u32);
    let q = exact(80 * heads * d, 98);
    for score in ["mean_k", "minmax", "pooled_qk"] {
        let sel = select(&format!(
            r#"{{"top_k": {{"block": 64, "q_block": 16, "k": 1, "score": "{score}"}}}}"#
        ));
        let what = format!("paged prefill {score}");
        check_scores(&what, &p, &sel, Grouping::Prefill, &q, &k_all, input, 2e-6);
    }
}

#[test]
fn canaries_are_caught() {
    // Broken kernels (kernels/tests/adaptive_score_canary.cu) and corrupted summaries must
    // move minmax / mean_k scores away from the reference: block J scored from J + 1, the
    // maxima read as the minima (min and max merely swapped would not do: max(q m, q M) is
    // symmetric in them).
    let (heads, d) = (1, 64);
    let p = problem(&[(2, 64)], heads, heads, d as u32);
    let q = exact(2 * d, 5);
    let k = exact(64 * d, 6);
    let layout = SummaryLayout::identity(heads, d, 16).unwrap();
    let (pool, seq_blocks) = summarize_emulated(&layout, p.seqs(), &k).unwrap();
    let mut max_as_min = pool.clone();
    for s in max_as_min.chunks_mut(3 * d) {
        let (min, max) = s[d..].split_at_mut(d);
        min.copy_from_slice(max);
    }
    let mut shifted = pool.clone();
    shifted.rotate_left(3 * d);
    let run = |pool: &[f32], score: &str, kernel: Option<&'static KernelDesc>| {
        let sel = select(&format!(
            r#"{{"top_k": {{"block": 16, "k": 1, "score": "{score}"}}}}"#
        ));
        let input = SummaryInput {
            layout: &layout,
            pool,
            index: SummaryIndex::Identity { seq_blocks },
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_scores_with(
                score,
                &p,
                &sel,
                Grouping::Decode,
                &q,
                &k,
                input,
                2e-6,
                kernel,
            )
        }))
        .is_ok()
    };
    assert!(
        run(&pool, "minmax", None) && run(&pool, "mean_k", None),
        "the true summaries pass"
    );
    assert!(
        !run(&max_as_min, "minmax", None),
        "max read for min must fail"
    );
    assert!(
        !run(&shifted, "mean_k", None),
        "the wrong block's summary must fail"
    );
    assert!(
        !run(&pool, "minmax", Some(&SCORE_MAX_AS_MIN)),
        "the max-as-min kernel must fail"
    );
    assert!(
        !run(&pool, "mean_k", Some(&SCORE_WRONG_BLOCK)),
        "the wrong-block kernel must fail"
    );
    assert!(
        !run(&pool, "minmax", Some(&SCORE_WRONG_BLOCK)),
        "the wrong-block kernel must fail minmax too"
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    let (heads, d) = (2, 64);
    let p = problem(&[(4, 64)], heads, 1, d as u32);
    let q = exact(4 * heads * d, 1);
    let layout = SummaryLayout::identity(1, d, 16).unwrap();
    let pool = layout.empty_pool(4);
    let input = SummaryInput {
        layout: &layout,
        pool: &pool,
        index: SummaryIndex::Identity { seq_blocks: 4 },
    };
    let run = |sel: &str, input: SummaryInput<'_>, q: &[f16]| {
        score_emulated(&p, &select(sel), Grouping::Prefill, 0.125, q, input)
    };
    let ok = r#"{"top_k": {"block": 16, "k": 1, "score": "minmax"}}"#;
    assert!(run(ok, input, &q).is_ok());
    assert!(matches!(
        run(
            r#"{"top_k": {"block": 16, "k": 1, "score": "given"}}"#,
            input,
            &q
        ),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(run(ok, input, &q[1..]), Err(Error::Shape(_))));
    // Summary blocks of 32 cannot make blocks of 16.
    let coarse = SummaryLayout::identity(1, d, 32).unwrap();
    let coarse_pool = coarse.empty_pool(2);
    let bad = SummaryInput {
        layout: &coarse,
        pool: &coarse_pool,
        index: SummaryIndex::Identity { seq_blocks: 2 },
    };
    assert!(matches!(run(ok, bad, &q), Err(Error::Shape(_))));
    // Summaries of another head count; too few blocks per sequence.
    let two = SummaryLayout::identity(2, d, 16).unwrap();
    let two_pool = two.empty_pool(4);
    let bad = SummaryInput {
        layout: &two,
        pool: &two_pool,
        index: SummaryIndex::Identity { seq_blocks: 4 },
    };
    assert!(matches!(run(ok, bad, &q), Err(Error::Shape(_))));
    let short = layout.empty_pool(3);
    let bad = SummaryInput {
        layout: &layout,
        pool: &short,
        index: SummaryIndex::Identity { seq_blocks: 3 },
    };
    assert!(matches!(run(ok, bad, &q), Err(Error::Shape(_))));
    assert!(SummaryLayout::identity(1, d, 24).is_err());
    // Caches: a block that is not a power of two; summaries chosen after sequences exist.
    let mk = || {
        KvCache::new(
            KvCacheConfig {
                num_layers: 1,
                num_kv_heads: 1,
                head_dim: d,
                dtype: DType::F16,
                page_size: 16,
                max_seq_len: 256,
                max_chunk: 4,
                pool: PoolSize::Sequences(1),
            },
            vec![LayerCapacity::Full],
        )
        .unwrap()
    };
    assert!(matches!(mk().with_summaries(48), Err(Error::Pattern(_))));
    let mut c = mk();
    c.add_sequence();
    assert!(matches!(c.with_summaries(64), Err(Error::Cache(_))));
    // Appends whose tokens of one summary block are not consecutive, or repeat a slot.
    assert!(check_summary_runs(&[0, 0, 0, 1, 1, 0, 0, 2], 16).is_err());
    assert!(check_summary_runs(&[0, 0, 0, 0], 16).is_err());
    assert!(check_summary_runs(&[0, 0, 0, 1, 1, 0, 1, 1], 16).is_ok());
}

#[test]
fn bf16_paths_read_bf16() {
    // The same exact values in bf16: the append kernel's run-time dtype, the summarize and
    // scoring instantiations must give the f16 results bit for bit.
    use half::bf16;
    let (heads, d, page) = (1, 64, 16);
    let to_bf = |x: &[f16]| -> Vec<bf16> { x.iter().map(|v| bf16::from_f32(v.to_f32())).collect() };
    let k16 = exact(40 * heads * d, 77);
    let kbf = to_bf(&k16);
    let layout = SummaryLayout::identity(heads, d, 16).unwrap();
    let seqs = SeqLens::varlen_from_lens(&[(8, 40)]).unwrap();
    let (s16, n) = summarize_emulated(&layout, &seqs, &k16).unwrap();
    let (sbf, _) = summarize_emulated(&layout, &seqs, &kbf).unwrap();
    assert_same_bits("bf16 summarize", &sbf, &s16);
    // Appends of 40 keys into pages of 16 (B = 16), bf16 pools.
    let page_layout = sparse_attn::kv_cache::PageLayout {
        num_kv_heads: heads,
        page_size: sparse_attn::kv_cache::PageSize::new(page).unwrap(),
        head_dim: d,
    };
    let summ = SummaryLayout::paged(&page_layout, 16).unwrap();
    let mut kp = vec![bf16::ZERO; 3 * page_layout.page_stride()];
    let mut vp = kp.clone();
    let mut pool = summ.empty_pool(3);
    let slots: Vec<i32> = (0..40).flat_map(|j| [j / 16, j % 16]).collect();
    append_emulated_with(
        &page_layout,
        &mut kp,
        &mut vp,
        Some((&summ, &mut pool)),
        &slots,
        &kbf,
        &kbf,
    )
    .unwrap();
    // Identity block s of the one sequence is paged block s (page s, one block per page).
    assert_same_bits(
        "bf16 appended summaries",
        &pool,
        &s16[..3 * summ.page_stride()],
    );
    let p16 = problem(&[(8, 40)], 2, 1, d as u32);
    let pbf = AttnProblem::new(p16.seqs().clone(), 2, 1, d as u32, DType::BF16).unwrap();
    let q16 = exact(8 * 2 * d, 78);
    let sel = select(r#"{"top_k": {"block": 16, "q_block": 8, "k": 1, "score": "mean_k"}}"#);
    let input = SummaryInput {
        layout: &layout,
        pool: &s16,
        index: SummaryIndex::Identity { seq_blocks: n },
    };
    let a = score_emulated(&p16, &sel, Grouping::Prefill, 0.0625, &q16, input).unwrap();
    let b = score_emulated(&pbf, &sel, Grouping::Prefill, 0.0625, &to_bf(&q16), input).unwrap();
    assert_same_bits("bf16 scores", &b.data, &a.data);
}

#[test]
fn evicted_blocks_score_minus_infinity() {
    // A ring layer (one sink page, a ring of two pages of 16) over 100 keys holds positions
    // 0..16 and 80..100: blocks 1..=4 (B = 16) are gone and score -inf; the others are the
    // reference's scores (from all keys: a held block's keys are the same).
    let (heads, d) = (1, 64);
    let caps = vec![LayerCapacity::Windowed {
        sink_pages: 1,
        ring_pages: 2,
    }];
    let mut cache = cache(16, caps, 16, heads, d);
    let mut host = HostKvStorage::<f16>::new(&cache).unwrap();
    let seq = cache.add_sequence();
    let k = exact(100 * heads * d, 31);
    for start in (0..100).step_by(5) {
        let pl = cache.reserve_append(seq, 5).unwrap();
        let rows = &k[start * heads * d..(start + 5) * heads * d];
        host.write_kv(0, &pl, rows, rows).unwrap();
    }
    let table = cache.block_table(0, &[seq]).unwrap();
    let (summ, pool) = host.summaries(0).unwrap();
    let input = SummaryInput {
        layout: summ,
        pool,
        index: SummaryIndex::Paged {
            table: &table,
            num_pages: cache.num_pages(0).unwrap(),
        },
    };
    let p = problem(&[(1, 100)], heads, heads, d as u32);
    let q = exact(d, 32);
    let sel = select(r#"{"top_k": {"block": 16, "k": 1, "score": "minmax"}}"#);
    let got = score_emulated(&p, &sel, Grouping::Decode, 0.0625, &q, input).unwrap();
    let (qf, kf) = (widen(&q), widen(&k));
    let x = SelectInputs {
        q: &qf,
        k: &kf,
        scale: 0.0625,
        grouping: Grouping::Decode,
        given: None,
    };
    let want = Selection::compute(&p, &sel, &x).unwrap();
    let row = got.scores(0, 0, 0);
    for (j, &r) in want.scores(0, 0, 0).iter().enumerate() {
        if (1..=4).contains(&j) {
            assert_eq!(row[j], f32::NEG_INFINITY, "evicted block {j}");
        } else {
            assert_eq!(row[j], r as f32, "held block {j}");
        }
    }
}
