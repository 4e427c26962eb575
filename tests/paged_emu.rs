//! The forward kernel reading K/V through a paged cache (block tables, shuffled pages, ring
//! buffers for windowed patterns) on the CPU emulator: bit-identical to the contiguous layout,
//! equal to the f64 reference, and evicted pages are never read.

mod common;

use common::paged::build_pool;
use common::{
    assert_matches, assert_same_bits, base_seed, random_qkv, reference_for, tol, Bits, Rng,
};
use half::{bf16, f16};
use sparse_attn::attention::{PagedKv, PagedLayout};
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, Element, EmuRun, Error, SeqLens};

const HK: usize = 2;
const D: usize = 64;

fn check_paged<T: Element + Bits>(
    pattern: &str,
    seqs: SeqLens,
    page: usize,
    sink_pages: usize,
    ring_pages: usize,
    seed: u64,
) {
    let problem = AttnProblem::new(seqs.clone(), 4, HK, D as u32, T::DTYPE).unwrap();
    let patterns = HeadPatterns::from_json(pattern).unwrap();
    let plan = AttnPlan::with_patterns(&problem, &patterns, &AttnOptions::default()).unwrap();
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<T>(&mut rng, &problem, 1.0, 1.0);
    let pool = build_pool(&mut rng, &seqs, HK, D, &k, &v, page, sink_pages, ring_pages);
    let kv = PagedKv {
        k_pages: &pool.k,
        v_pages: &pool.v,
        block_table: &pool.table,
        layout: pool.layout,
    };
    let (out, lse) = plan
        .run_emulated_paged(&q, &kv, &crate::common::emu_run())
        .unwrap();
    let what = format!(
        "{} page {page} sinks {sink_pages} ring {ring_pages} {pattern} {seqs:?} seed {seed}",
        T::DTYPE.name()
    );
    let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
    assert_matches(&what, &problem, &out, &lse, &want, tol(T::DTYPE));
    if ring_pages == 0 {
        // Same kernel, same keys, same order: paging must not change a single bit.
        let (c_out, c_lse) = plan
            .run_emulated(&q, &k, &v, &crate::common::emu_run())
            .unwrap();
        assert_same_bits(&format!("{what}: paged vs contiguous"), &out, &c_out);
        assert_same_bits(&format!("{what}: lse paged vs contiguous"), &lse, &c_lse);
    }
}

#[test]
fn shuffled_pages_match_contiguous_bit_for_bit_at_every_page_size() {
    let seed = base_seed();
    let seqs = SeqLens::varlen_from_lens(&[(1, 300), (70, 70), (5, 1), (33, 260)]).unwrap();
    for (n, page) in [8, 16, 32, 64, 128, 256].into_iter().enumerate() {
        check_paged::<f16>(
            r#"{"causal": true, "components": []}"#,
            seqs.clone(),
            page,
            0,
            0,
            seed + n as u64,
        );
    }
    check_paged::<bf16>(
        r#"{"causal": false, "components": [{"sliding_window": {"left": 40, "right": 9}}]}"#,
        seqs,
        16,
        0,
        0,
        seed,
    );
}

#[test]
fn ring_buffer_decode_after_many_wraps() {
    // 4 sinks + a 256-token window, page 16: one sink page and a ring of 17 pages holds every
    // key a decode query (q_len 1) may attend, though the ring has wrapped many times; the
    // evicted pages are NaN and never read.
    let seed = base_seed();
    let pattern = r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 256}}]}"#;
    let seqs = SeqLens::varlen_from_lens(&[(1, 5000), (1, 4099), (1, 300), (1, 17)]).unwrap();
    check_paged::<f16>(pattern, seqs.clone(), 16, 1, 17, seed);
    check_paged::<bf16>(pattern, seqs, 16, 1, 17, seed + 1);
}

#[test]
fn ring_buffer_chunked_prefill() {
    // A chunk of 37 queries at the end of the sequence needs the last 256 + 36 keys: a ring
    // of ceil(291 / 32) + 1 = 11 pages of 32.
    let seed = base_seed();
    let pattern = r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 256}}]}"#;
    let seqs = SeqLens::varlen_from_lens(&[(37, 2000), (37, 37), (20, 1500)]).unwrap();
    check_paged::<f16>(pattern, seqs, 32, 1, 11, seed);
}

#[test]
fn bad_paged_inputs_are_cache_errors() {
    let problem = AttnProblem::new(
        SeqLens::varlen_from_lens(&[(1, 600)]).unwrap(),
        4,
        HK,
        D as u32,
        f16::DTYPE,
    )
    .unwrap();
    let window = HeadPatterns::from_json(
        r#"{"causal": true, "components": [{"sliding_window": {"size": 256}}]}"#,
    )
    .unwrap();
    let plan = AttnPlan::with_patterns(&problem, &window, &AttnOptions::default()).unwrap();
    let q = vec![f16::ZERO; problem.q_elems()];
    let page = 16;
    let pages = vec![f16::ZERO; 40 * HK * page * D];
    let good = PagedLayout {
        page_size: page,
        block_table_stride: 38,
        sink_pages: 0,
        ring_pages: 0,
    };
    let table: Vec<i32> = (0..38).collect();
    let run = |table: &[i32], layout: PagedLayout, k: &[f16]| {
        plan.run_emulated_paged(
            &q,
            &PagedKv {
                k_pages: k,
                v_pages: k,
                block_table: table,
                layout,
            },
            &crate::common::emu_run(),
        )
    };
    assert!(run(&table, good, &pages).is_ok());
    // Page size not a power of two / out of range.
    for ps in [12, 4, 512] {
        assert!(matches!(
            run(
                &table,
                PagedLayout {
                    page_size: ps,
                    ..good
                },
                &pages
            ),
            Err(Error::Cache(_))
        ));
    }
    // Pool not a whole number of pages.
    assert!(matches!(
        run(&table, good, &pages[1..]),
        Err(Error::Cache(_))
    ));
    // Entry outside the pool, negative entry.
    let mut t = table.clone();
    t[3] = 40;
    assert!(matches!(run(&t, good, &pages), Err(Error::Cache(_))));
    t[3] = -1;
    assert!(matches!(run(&t, good, &pages), Err(Error::Cache(_))));
    // Stride too small for the sequence, table of the wrong length.
    assert!(matches!(
        run(
            &table[..30],
            PagedLayout {
                block_table_stride: 30,
                ..good
            },
            &pages
        ),
        Err(Error::Cache(_))
    ));
    assert!(matches!(
        run(&table[..37], good, &pages),
        Err(Error::Cache(_))
    ));
    // A ring too small for the window: keys the pattern allows would have been evicted.
    let small_ring = PagedLayout {
        sink_pages: 0,
        ring_pages: 8,
        block_table_stride: 8,
        ..good
    };
    let r = run(&table[..8], small_ring, &pages);
    assert!(
        matches!(&r, Err(Error::Cache(m)) if m.contains("evicted")),
        "{r:?}"
    );
    // A big enough ring passes.
    let ring = PagedLayout {
        sink_pages: 0,
        ring_pages: 17,
        block_table_stride: 17,
        ..good
    };
    assert!(run(&table[..17], ring, &pages).is_ok());
}

#[test]
fn split_kv_on_and_off_agree() {
    // Decode-shaped batches get split-KV by default; forcing 1, the default, and more parts
    // than tiles (empty parts) must agree within rounding, contiguous and paged.
    let seed = base_seed();
    let seqs = SeqLens::varlen_from_lens(&[(1, 3000), (1, 700), (3, 64), (1, 1)]).unwrap();
    let problem = AttnProblem::new(seqs.clone(), 4, HK, D as u32, f16::DTYPE).unwrap();
    for pattern in [
        r#"{"causal": true, "components": []}"#,
        r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 256}}]}"#,
    ] {
        let set = HeadPatterns::from_json(pattern).unwrap();
        let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
        assert!(
            plan.num_splits() > 1,
            "a decode batch should split by default"
        );
        let mut rng = Rng::new(seed);
        let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
        let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
        let pool = build_pool(&mut rng, &seqs, HK, D, &k, &v, 16, 0, 0);
        let kv = PagedKv {
            k_pages: &pool.k,
            v_pages: &pool.v,
            block_table: &pool.table,
            layout: pool.layout,
        };
        let mut outs = Vec::new();
        for splits in [1, plan.num_splits(), 7, 64] {
            let p = plan.clone().with_num_splits(splits).unwrap();
            let counter = std::cell::Cell::new(0);
            let run = EmuRun {
                tiles_visited: Some(&counter),
                ..crate::common::emu_run()
            };
            let (out, lse) = p.run_emulated(&q, &k, &v, &run).unwrap();
            assert_eq!(
                counter.get(),
                p.meta().tiles_visited(),
                "splits {splits}: work"
            );
            let what = format!("splits {splits} {pattern} seed {seed}");
            assert_matches(&what, &problem, &out, &lse, &want, tol(f16::DTYPE));
            let (pout, plse) = p
                .run_emulated_paged(&q, &kv, &crate::common::emu_run())
                .unwrap();
            assert_same_bits(&format!("{what}: paged"), &pout, &out);
            assert_same_bits(&format!("{what}: paged lse"), &plse, &lse);
            outs.push(out);
        }
        // Splitting changes only the summation order: within a few f16 ulps of the unsplit run.
        for out in &outs[1..] {
            let want: Vec<f64> = outs[0].iter().map(|x| x.to_f64()).collect();
            let err = common::rel_error(out, &want);
            assert!(err <= 2e-3, "split vs unsplit: {err:.3e}");
        }
    }
    assert!(matches!(
        AttnPlan::new(&problem, &AttnOptions::default())
            .unwrap()
            .with_num_splits(0),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn gqa_packing_reads_each_kv_tile_once_per_group() {
    // Decode and short chunks with 8 query heads per kv head: packing puts a group's heads in
    // one block (one K/V read per group instead of eight) and must give the same result.
    let seed = base_seed();
    let seqs = SeqLens::varlen_from_lens(&[(1, 900), (5, 300), (9, 64), (1, 10)]).unwrap();
    let problem = AttnProblem::new(seqs.clone(), 16, HK, D as u32, bf16::DTYPE).unwrap();
    for pattern in [
        r#"{"causal": true, "components": []}"#,
        r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 100}}]}"#,
        r#"{"causal": false, "components": [{"dilated": {"stride": 3}}, {"global": {"tokens": [0, 5]}}]}"#,
    ] {
        let set = HeadPatterns::from_json(pattern).unwrap();
        let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
        assert_eq!(plan.gqa_pack(), 8, "short queries with GQA pack by default");
        let unpacked = plan.clone().with_gqa_packing(false).unwrap();
        assert_eq!(unpacked.gqa_pack(), 1);
        let mut rng = Rng::new(seed);
        let (q, k, v) = random_qkv::<bf16>(&mut rng, &problem, 1.0, 1.0);
        let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
        let mut visited = Vec::new();
        for (name, p) in [("packed", &plan), ("unpacked", &unpacked)] {
            for splits in [1, 5] {
                let p = p.clone().with_num_splits(splits).unwrap();
                let counter = std::cell::Cell::new(0);
                let run = EmuRun {
                    tiles_visited: Some(&counter),
                    ..crate::common::emu_run()
                };
                let (out, lse) = p.run_emulated(&q, &k, &v, &run).unwrap();
                let what = format!("{name} splits {splits} {pattern} seed {seed}");
                assert_matches(&what, &problem, &out, &lse, &want, tol(bf16::DTYPE));
                assert_eq!(counter.get(), p.meta().tiles_visited(), "{what}: work");
                visited.push(counter.get());
            }
        }
        // Packed blocks serve eight heads: at most an eighth of the unpacked tile loads
        // (fewer: a packed query tile spans fewer tokens).
        assert!(
            visited[0] * 8 <= visited[2] * 2,
            "packed {} vs unpacked {}",
            visited[0],
            visited[2]
        );
    }
    // BigBird draws per head: heads of a group differ, so packing is refused.
    let bigbird = HeadPatterns::from_json(
        r#"{"causal": false, "components": [{"bigbird": {"block": 16, "window_blocks": 1, "global_blocks": 1, "random_blocks": 1, "seed": 2}}]}"#,
    )
    .unwrap();
    let plan = AttnPlan::with_patterns(&problem, &bigbird, &AttnOptions::default()).unwrap();
    assert_eq!(plan.gqa_pack(), 1);
    assert!(matches!(
        plan.with_gqa_packing(true),
        Err(Error::Unsupported(_))
    ));
}
