//! Chunked attention (Llama 4, `{"chunked": {"size": C}}`) through the forward kernel on the
//! CPU emulator, against the f64 reference with the chunk predicate written out independently
//! (`reference::chunked_allowed`): chunk edges on tile edges, inside query and key tiles,
//! chunks smaller than a tile and larger than several, causal and not, q_len below and above
//! kv_len, GQA, both dtypes and head dims, unions with sinks and windows, every schedule; then
//! paged K/V through a ring sized for the chunk, and decode across chunk boundaries.

mod common;

use common::paged::build_pool;
use common::{
    assert_matches, assert_same_bits, base_seed, random_qkv, reference_for, tol, Bits, Rng,
};
use half::{bf16, f16};
use sparse_attn::attention::PagedKv;
use sparse_attn::emu::Schedule;
use sparse_attn::kv_cache::{decode_emulated, DecodeConfig, LayerCapacity, PageSize};
use sparse_attn::pattern::{Component, HeadPatterns, Pattern};
use sparse_attn::reference::chunked_allowed;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, Element, EmuRun, Error, SeqLens};

fn uniform(q_len: usize, kv_len: usize) -> SeqLens {
    SeqLens::Uniform {
        batch: 1,
        q_len,
        kv_len,
    }
}

fn chunk(size: usize, causal: bool) -> HeadPatterns {
    Pattern::new(causal, vec![Component::chunked(size as i64).unwrap()]).into()
}

/// Runs the chunk pattern on the emulator and checks it against the reference with the
/// independent chunk predicate; checks the work accounting; returns the outputs.
fn run_chunk<T: Element>(
    size: usize,
    causal: bool,
    seqs: SeqLens,
    heads: (usize, usize),
    head_dim: u32,
    seed: u64,
    run: &EmuRun<'_>,
) -> (Vec<T>, Vec<f32>) {
    let problem = AttnProblem::new(seqs, heads.0, heads.1, head_dim, T::DTYPE).unwrap();
    let plan =
        AttnPlan::with_patterns(&problem, &chunk(size, causal), &AttnOptions::default()).unwrap();
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<T>(&mut rng, &problem, 1.0, 1.0);
    let counter = std::cell::Cell::new(0);
    let counted = EmuRun {
        tiles_visited: Some(&counter),
        ..run.clone()
    };
    let (out, lse) = plan.run_emulated(&q, &k, &v, &counted).unwrap();
    let seqs = problem.seqs().clone();
    let want = reference_for(&plan, &q, &k, &v, |b, _h, i, j| {
        let (q_len, kv_len) = seqs.lens(b);
        chunked_allowed(i, j, q_len, kv_len, size, causal)
    });
    let what = format!(
        "{} hd{head_dim} chunk {size} causal {causal} {:?} heads {heads:?} seed {seed}",
        T::DTYPE.name(),
        problem.seqs()
    );
    assert_matches(&what, &problem, &out, &lse, &want, tol(T::DTYPE));
    assert_eq!(
        counter.get(),
        plan.meta().tiles_visited(),
        "{what}: tiles visited"
    );
    (out, lse)
}

#[test]
fn chunk_edges_on_inside_and_across_tiles() {
    let seed = base_seed();
    let run = common::emu_run();
    // Kernel tiles: 64 keys per kv tile, 128 (or 64) query rows per block. Chunks of 64 and 128
    // end on tile edges; 100 and 96 end inside key tiles and query tiles; 30 is smaller than a
    // tile (several chunk edges per tile); 200 spans several tiles.
    for (n, size) in [64usize, 128, 100, 96, 30, 200, 1].into_iter().enumerate() {
        for causal in [true, false] {
            for (q_len, kv_len) in [(300, 300), (90, 333), (333, 250)] {
                let s = seed ^ ((n as u64) << 20) ^ (q_len as u64 * 31 + causal as u64);
                run_chunk::<f16>(size, causal, uniform(q_len, kv_len), (2, 1), 64, s, &run);
            }
        }
    }
}

#[test]
fn chunked_with_gqa_bf16_head_dim_128_and_varlen() {
    let seed = base_seed();
    let run = common::emu_run();
    run_chunk::<bf16>(96, true, uniform(260, 260), (8, 2), 128, seed, &run);
    run_chunk::<f16>(70, true, uniform(200, 260), (4, 1), 128, seed + 1, &run);
    // The head_dim 256 tile (64 rows, Q re-read from shared memory) masks chunks the same way.
    run_chunk::<bf16>(100, true, uniform(150, 210), (2, 1), 256, seed + 4, &run);
    // Every sequence of a varlen batch has its own chunk positions (bottom-right aligned).
    let seqs = SeqLens::varlen_from_lens(&[(130, 130), (7, 300), (64, 65), (1, 1)]).unwrap();
    run_chunk::<f16>(50, true, seqs.clone(), (4, 2), 64, seed + 2, &run);
    run_chunk::<bf16>(64, false, seqs, (2, 2), 64, seed + 3, &run);
}

#[test]
fn every_schedule_gives_identical_bits() {
    let seed = base_seed();
    let base = common::emu_run();
    let (out, lse) = run_chunk::<f16>(100, true, uniform(200, 200), (2, 1), 64, seed, &base);
    for (name, run) in [
        (
            "reverse",
            EmuRun {
                schedule: Schedule::Reverse,
                ..base.clone()
            },
        ),
        (
            "random",
            EmuRun {
                schedule: Schedule::Random(seed),
                ..base.clone()
            },
        ),
        (
            "eager cp.async",
            EmuRun {
                eager_cp_async: true,
                ..base.clone()
            },
        ),
    ] {
        let (o, l) = run_chunk::<f16>(100, true, uniform(200, 200), (2, 1), 64, seed, &run);
        assert_same_bits(&format!("chunk 100 out, {name} schedule"), &o, &out);
        assert_same_bits(&format!("chunk 100 lse, {name} schedule"), &l, &lse);
    }
}

#[test]
fn chunks_in_unions() {
    // Chunk + sinks and chunk + window are the kernel's two-interval mask; chunk + global
    // tokens runs through gathered rows and keys.
    let seed = base_seed();
    let run = common::emu_run();
    for (n, (extra, allowed)) in [
        (
            Component::sinks(5).unwrap(),
            Box::new(|_p: i64, j: i64| j < 5) as Box<dyn Fn(i64, i64) -> bool + Sync>,
        ),
        (
            Component::window_size(40).unwrap(),
            Box::new(|p: i64, j: i64| j > p - 40),
        ),
        (
            Component::global(vec![0, 150]).unwrap(),
            Box::new(|p: i64, j: i64| j == 0 || j == 150 || p == 0 || p == 150),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let set: HeadPatterns =
            Pattern::new(true, vec![Component::chunked(72).unwrap(), extra]).into();
        let problem = AttnProblem::new(uniform(230, 260), 2, 2, 64, f16::DTYPE).unwrap();
        let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
        let mut rng = Rng::new(seed + n as u64);
        let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
        let (out, lse) = plan.run_emulated(&q, &k, &v, &run).unwrap();
        let want = reference_for(&plan, &q, &k, &v, |_, _, i, j| {
            let p = i as i64 + 30;
            j as i64 <= p && (chunked_allowed(i, j, 230, 260, 72, true) || allowed(p, j as i64))
        });
        assert_matches(
            &format!("chunk 72 + {} seed {seed}", set.to_json()),
            &problem,
            &out,
            &lse,
            &want,
            tol(f16::DTYPE),
        );
    }
}

/// The last `q_len` tokens of a `kv_len`-token sequence read through pages with a ring sized
/// by `LayerCapacity::from_patterns` for steps of `q_len` tokens (the pages the kernel must not
/// need are NaN), against the reference and the contiguous run.
fn paged_chunk<T: Element + Bits>(
    size: usize,
    page: usize,
    q_len: usize,
    kv_len: usize,
    seed: u64,
) {
    let set = chunk(size, true);
    let ps = PageSize::new(page).unwrap();
    let LayerCapacity::Windowed {
        sink_pages,
        ring_pages,
    } = LayerCapacity::from_patterns(&set, ps, q_len).unwrap()
    else {
        panic!("a chunk layer keeps a ring")
    };
    let seqs = uniform(q_len, kv_len);
    let problem = AttnProblem::new(seqs.clone(), 4, 2, 64, T::DTYPE).unwrap();
    let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<T>(&mut rng, &problem, 1.0, 1.0);
    let pool = build_pool(&mut rng, &seqs, 2, 64, &k, &v, page, sink_pages, ring_pages);
    let kv = PagedKv {
        k_pages: &pool.k,
        v_pages: &pool.v,
        block_table: &pool.table,
        layout: pool.layout,
    };
    let what = format!(
        "{} chunk {size} page {page} ring {ring_pages} q_len {q_len} kv_len {kv_len} seed {seed}",
        T::DTYPE.name()
    );
    let (out, lse) = plan
        .run_emulated_paged(&q, &kv, &common::emu_run())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let want = reference_for(&plan, &q, &k, &v, |_, _, i, j| {
        chunked_allowed(i, j, q_len, kv_len, size, true)
    });
    assert_matches(&what, &problem, &out, &lse, &want, tol(T::DTYPE));
    let (c_out, c_lse) = plan.run_emulated(&q, &k, &v, &common::emu_run()).unwrap();
    assert_same_bits(&format!("{what}: paged vs contiguous"), &out, &c_out);
    assert_same_bits(&format!("{what}: lse paged vs contiguous"), &lse, &c_lse);

    // One ring page fewer: refused exactly when the step's keys (from its first query's chunk
    // start to the last key) span more pages than that ring holds, else the same result.
    if ring_pages >= 2 {
        let first = (kv_len - q_len) / size * size;
        let spanned = (kv_len - 1) / page - first / page + 1;
        let short = build_pool(&mut rng, &seqs, 2, 64, &k, &v, page, 0, ring_pages - 1);
        let kv = PagedKv {
            k_pages: &short.k,
            v_pages: &short.v,
            block_table: &short.table,
            layout: short.layout,
        };
        match plan.run_emulated_paged(&q, &kv, &common::emu_run()) {
            Err(Error::Cache(m)) if spanned >= ring_pages => {
                assert!(m.contains("evicted"), "{what}: {m}")
            }
            Ok((o, _)) if spanned < ring_pages => {
                assert_same_bits(&format!("{what}: short ring"), &o, &c_out)
            }
            other => panic!(
                "{what}: {spanned} pages spanned, ring of {}: {:?}",
                ring_pages - 1,
                other.err()
            ),
        }
    }
}

#[test]
fn paged_ring_holds_the_chunk() {
    let seed = base_seed();
    // Steps that start mid-chunk and end past a chunk edge; chunks aligned to pages or not.
    paged_chunk::<f16>(64, 16, 1, 1000, seed);
    paged_chunk::<f16>(64, 16, 1, 1024, seed + 5);
    paged_chunk::<f16>(64, 16, 9, 200, seed + 1);
    paged_chunk::<bf16>(48, 16, 20, 250, seed + 2);
    paged_chunk::<f16>(40, 16, 13, 211, seed + 3);
    paged_chunk::<f16>(100, 8, 1, 399, seed + 4);
}

#[test]
fn decode_across_chunk_boundaries() {
    let seed = base_seed();
    for (n, (size, page, t, prefill, step)) in [
        // Pages divide the chunks: the ring is the chunk's own pages plus the step's spill.
        (48usize, 16usize, 200usize, 40usize, 16usize),
        // Chunk edges inside pages.
        (40, 16, 170, 33, 7),
        // Prefill ends exactly on a chunk edge; decode crosses the next ones.
        (32, 8, 140, 64, 32),
    ]
    .into_iter()
    .enumerate()
    {
        let set = chunk(size, true);
        let problem = AttnProblem::new(uniform(t, t), 4, 2, 64, f16::DTYPE).unwrap();
        let mut rng = Rng::new(seed + n as u64);
        let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 2.0, 1.0);
        let config = DecodeConfig {
            page_size: page,
            prefill,
            chunk: Some(step),
            ..Default::default()
        };
        let what = format!("decode chunk {size} page {page} T {t} prefill {prefill}/{step}");
        let got = decode_emulated(&problem, &set, &config, &q, &k, &v, &common::emu_run())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
        let want = reference_for(&plan, &q, &k, &v, |_, _, i, j| {
            chunked_allowed(i, j, t, t, size, true)
        });
        assert_matches(&what, &problem, &got.out, &got.lse, &want, tol(f16::DTYPE));
        // The cache held a ring, not the whole sequence.
        let ps = PageSize::new(page).unwrap();
        let cap = LayerCapacity::from_patterns(&set, ps, step).unwrap();
        let (_, ring) = cap.sink_ring();
        assert!(ring > 0 && ring < ps.pages_for(t), "{what}: ring {ring}");
        assert_eq!(got.pages_used, ring, "{what}: pages used");
    }
}
