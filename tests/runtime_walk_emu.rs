//! One plan for every step (issue 12): a plan compiled once for maximum lengths
//! (`AttnPlan::for_max_lengths`) whose kernels derive each query tile's kv-tile walk on the
//! device from the step's run-time lengths (kernels/include/sparse_attn/tile_walk.cuh), on
//! the CPU emulator. Every step is checked against the f64 reference of its own lengths, and
//! its work against the lists compiled for exactly those lengths: for interval-form patterns
//! the run-time walk visits the very same number of kv tiles.

mod common;

use common::paged::build_pool;
use common::{assert_matches, base_seed, random_tensor, reference_for, tol, Rng};
use half::{bf16, f16};
use sparse_attn::attention::PagedKv;
use sparse_attn::kernels::FwdWalk;
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, Element, EmuRun, Error, SeqLens};

const CAUSAL: &str = r#"{"causal": true, "components": []}"#;
const DENSE: &str = r#"{"causal": false, "components": []}"#;
const STREAMING: &str = r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 100}}]}"#;
const WINDOW: &str =
    r#"{"causal": false, "components": [{"sliding_window": {"left": 70, "right": 9}}]}"#;
const CHUNKED: &str = r#"{"causal": true, "components": [{"chunked": {"size": 96}}]}"#;
// Not interval form: exact through the token mask on every tile.
const DILATED: &str =
    r#"{"causal": true, "components": [{"dilated": {"stride": 3}}, {"sinks": {"count": 2}}]}"#;

struct Shape {
    heads: usize,
    kv_heads: usize,
    head_dim: u32,
}

/// The run-time plan for `max` (batch and maxima), its patterns.
fn runtime_plan<T: Element>(pattern: &str, max: SeqLens, s: &Shape) -> AttnPlan {
    let problem = AttnProblem::new(max, s.heads, s.kv_heads, s.head_dim, T::DTYPE).unwrap();
    let set = HeadPatterns::from_json(pattern).unwrap();
    let plan = AttnPlan::for_max_lengths(&problem, &set, &AttnOptions::default()).unwrap();
    assert_eq!(plan.walk(), FwdWalk::Runtime);
    assert!(
        plan.kernel().name.ends_with("_rt"),
        "{}",
        plan.kernel().name
    );
    plan
}

/// Runs one step of `plan` at `seqs` and checks it against the reference of those lengths;
/// returns (kv tiles the run-time walk visited, the tiles the walk should visit: per block of
/// the plan's tiling, the kv tiles holding an allowed pair, or for a pattern without the
/// interval form every tile of the keys).
fn step<T: Element>(
    plan: &AttnPlan,
    pattern: &str,
    seqs: &SeqLens,
    s: &Shape,
    seed: u64,
) -> (u64, u64) {
    let problem =
        AttnProblem::new(seqs.clone(), s.heads, s.kv_heads, s.head_dim, T::DTYPE).unwrap();
    let set = HeadPatterns::from_json(pattern).unwrap();
    let lists = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
    let mut rng = Rng::new(seed);
    let q: Vec<T> = random_tensor(&mut rng, problem.q_elems(), 1.0);
    let k: Vec<T> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
    let v: Vec<T> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
    let counter = std::cell::Cell::new(0);
    let run = EmuRun {
        tiles_visited: Some(&counter),
        ..common::emu_run()
    };
    let (out, lse) = plan.run_emulated_step(seqs, &q, &k, &v, &run).unwrap();
    let want = reference_for(&lists, &q, &k, &v, |b, h, i, j| lists.allowed(b, h, i, j));
    let what = format!(
        "{} hd{} {pattern} {seqs:?} seed {seed}",
        T::DTYPE.name(),
        s.head_dim
    );
    assert_matches(&what, &problem, &out, &lse, &want, tol(T::DTYPE));
    (
        counter.get(),
        ideal_tiles(plan, &lists, seqs, pattern != DILATED),
    )
}

/// The kv tiles the run-time walk of `plan` must visit at `seqs` (see `step`); `lists` is a
/// plan of those lengths, for the predicate.
fn ideal_tiles(plan: &AttnPlan, lists: &AttnPlan, seqs: &SeqLens, interval: bool) -> u64 {
    let pack = plan.gqa_pack() as usize;
    let per_tile = plan.tiles().block_m as usize / pack;
    let bn = plan.tiles().block_n as usize;
    let heads = plan.problem().num_heads();
    let mut n = 0;
    for b in 0..seqs.batch() {
        let (ql, kl) = seqs.lens(b);
        for g in (0..heads).step_by(pack) {
            for m in 0..ql.div_ceil(per_tile) {
                let rows = m * per_tile..((m + 1) * per_tile).min(ql);
                for t in 0..kl.div_ceil(bn) {
                    let cols = t * bn..((t + 1) * bn).min(kl);
                    let hit = !interval
                        || (g..g + pack).any(|h| {
                            rows.clone()
                                .any(|i| cols.clone().any(|j| lists.allowed(b, h, i, j)))
                        });
                    n += u64::from(hit);
                }
            }
        }
    }
    n
}

fn varlen(lens: &[(usize, usize)]) -> SeqLens {
    SeqLens::varlen_from_lens(lens).unwrap()
}

#[test]
fn one_plan_for_4096_tokens_runs_every_length() {
    let seed = base_seed();
    let s = Shape {
        heads: 2,
        kv_heads: 1,
        head_dim: 64,
    };
    for (n, pattern) in [CAUSAL, DENSE, STREAMING, WINDOW, CHUNKED]
        .into_iter()
        .enumerate()
    {
        let plan = runtime_plan::<f16>(pattern, varlen(&[(4096, 4096)]), &s);
        let before = format!("{:?}", plan.meta().arrays());
        for (m, lens) in [
            (1, 1),
            (63, 63),
            (64, 64),
            (65, 65),
            (1, 4095),
            (65, 4095),
            (200, 700),
        ]
        .into_iter()
        .enumerate()
        {
            let (got, lists) = step::<f16>(
                &plan,
                pattern,
                &varlen(&[lens]),
                &s,
                seed + (10 * n + m) as u64,
            );
            assert_eq!(
                got, lists,
                "{pattern} at {lens:?}: run-time walk vs compiled lists"
            );
        }
        // The plan (its metadata) never changed between steps.
        assert_eq!(before, format!("{:?}", plan.meta().arrays()));
    }
}

#[test]
fn mixed_decode_and_prefill_rows_in_one_launch() {
    // Decode rows, prefill chunks and an idle (empty) slot in one batch, GQA 4:2, bf16 and
    // head_dim 128; then the same plan for the next step's lengths.
    let seed = base_seed();
    let s = Shape {
        heads: 4,
        kv_heads: 2,
        head_dim: 128,
    };
    for (n, pattern) in [CAUSAL, STREAMING, CHUNKED].into_iter().enumerate() {
        let plan = runtime_plan::<bf16>(pattern, varlen(&[(256, 2048); 4]), &s);
        for (m, lens) in [
            [(1, 1500), (130, 130), (0, 0), (17, 900)],
            [(1, 1501), (64, 194), (5, 5), (1, 901)],
        ]
        .into_iter()
        .enumerate()
        {
            let (got, lists) = step::<bf16>(
                &plan,
                pattern,
                &varlen(&lens),
                &s,
                seed + (10 * n + m) as u64,
            );
            assert_eq!(got, lists, "{pattern} {lens:?}");
        }
    }
}

#[test]
fn decode_steps_with_gqa_packing_and_split_kv() {
    // A decode plan (one query per sequence: GQA-packed, split-KV) stepped through growing
    // caches; the combine merges the splits of each step.
    let seed = base_seed();
    let s = Shape {
        heads: 8,
        kv_heads: 2,
        head_dim: 64,
    };
    for pattern in [CAUSAL, STREAMING] {
        let plan = runtime_plan::<f16>(pattern, varlen(&[(1, 3000), (1, 3000)]), &s)
            .with_num_splits(5)
            .unwrap();
        assert!(plan.gqa_pack() > 1, "decode shape");
        for (m, kv) in [1usize, 64, 65, 700, 2999, 3000].into_iter().enumerate() {
            let lens = [(1, kv), (1, (kv * 7) % 3000 + 1)];
            let (got, lists) = step::<f16>(&plan, pattern, &varlen(&lens), &s, seed + m as u64);
            assert_eq!(got, lists, "{pattern} {lens:?}");
        }
    }
}

#[test]
fn patterns_without_interval_form_stay_exact() {
    let seed = base_seed();
    let s = Shape {
        heads: 2,
        kv_heads: 2,
        head_dim: 64,
    };
    let plan = runtime_plan::<f16>(DILATED, varlen(&[(300, 300)]), &s);
    for (m, lens) in [(1, 1), (65, 130), (300, 300)].into_iter().enumerate() {
        let (got, lists) = step::<f16>(&plan, DILATED, &varlen(&[lens]), &s, seed + m as u64);
        // Every tile of the keys, through the token mask: exact, more work than the lists.
        assert_eq!(got, lists, "{lens:?}");
    }
}

#[test]
fn paged_steps_through_a_wrapping_ring() {
    // Sinks + window over a paged cache with 1 sink page and a ring of 16-token pages: steps
    // before and after the ring wraps, one plan.
    let seed = base_seed();
    let s = Shape {
        heads: 2,
        kv_heads: 1,
        head_dim: 64,
    };
    let plan = runtime_plan::<f16>(STREAMING, varlen(&[(64, 1024)]), &s);
    for (m, lens) in [(1, 50), (64, 200), (1, 300), (1, 1000), (17, 1024)]
        .into_iter()
        .enumerate()
    {
        let seqs = varlen(&[lens]);
        let problem = AttnProblem::new(seqs.clone(), 2, 1, 64, f16::DTYPE).unwrap();
        let set = HeadPatterns::from_json(STREAMING).unwrap();
        let lists = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
        let mut rng = Rng::new(seed + m as u64);
        let q: Vec<f16> = random_tensor(&mut rng, problem.q_elems(), 1.0);
        let k: Vec<f16> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
        let v: Vec<f16> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
        // 1 sink page + 9 ring pages of 16 hold the window (100 + 64 queries) and the sinks.
        let pool = build_pool(&mut rng, &seqs, 1, 64, &k, &v, 16, 1, 12);
        let kv = PagedKv {
            k_pages: &pool.k,
            v_pages: &pool.v,
            block_table: &pool.table,
            layout: pool.layout,
        };
        let (out, lse) = plan
            .run_emulated_paged_step(&seqs, &q, &kv, &common::emu_run())
            .unwrap();
        let want = reference_for(&lists, &q, &k, &v, |b, h, i, j| lists.allowed(b, h, i, j));
        assert_matches(
            &format!("paged {lens:?}"),
            &problem,
            &out,
            &lse,
            &want,
            tol(f16::DTYPE),
        );
    }
    // A ring too small for the window is refused before the launch.
    let seqs = varlen(&[(1, 1000)]);
    let problem = AttnProblem::new(seqs.clone(), 2, 1, 64, f16::DTYPE).unwrap();
    let mut rng = Rng::new(seed);
    let q: Vec<f16> = random_tensor(&mut rng, problem.q_elems(), 1.0);
    let k: Vec<f16> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
    let pool = build_pool(&mut rng, &seqs, 1, 64, &k, &k, 16, 1, 3);
    let kv = PagedKv {
        k_pages: &pool.k,
        v_pages: &pool.v,
        block_table: &pool.table,
        layout: pool.layout,
    };
    let err = plan.run_emulated_paged_step(&seqs, &q, &kv, &common::emu_run());
    assert!(matches!(err, Err(Error::Cache(_))), "{err:?}");
}

#[test]
fn bad_steps_are_typed_errors() {
    let s = Shape {
        heads: 2,
        kv_heads: 1,
        head_dim: 64,
    };
    let plan = runtime_plan::<f16>(CAUSAL, varlen(&[(64, 512), (64, 512)]), &s);
    let run = common::emu_run();
    let none: Vec<f16> = Vec::new();
    let shape_err =
        |r: sparse_attn::Result<(Vec<f16>, Vec<f32>)>| matches!(r, Err(Error::Shape(_)));
    // Above the plan's maxima, another batch, tensors of other lengths.
    assert!(shape_err(plan.run_emulated_step(
        &varlen(&[(65, 65), (1, 1)]),
        &none,
        &none,
        &none,
        &run
    )));
    assert!(shape_err(plan.run_emulated_step(
        &varlen(&[(1, 513), (1, 1)]),
        &none,
        &none,
        &none,
        &run
    )));
    assert!(shape_err(plan.run_emulated_step(
        &varlen(&[(1, 1)]),
        &none,
        &none,
        &none,
        &run
    )));
    assert!(shape_err(plan.run_emulated_step(
        &varlen(&[(1, 1), (1, 1)]),
        &none,
        &none,
        &none,
        &run
    )));
    // A plan compiled for its lengths takes no steps of others.
    let problem = AttnProblem::new(varlen(&[(1, 1), (1, 1)]), 2, 1, 64, f16::DTYPE).unwrap();
    let lists = AttnPlan::new(&problem, &AttnOptions::default()).unwrap();
    let r = lists.run_emulated_step(&varlen(&[(1, 1), (1, 1)]), &none, &none, &none, &run);
    assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
}

/// The graph-safety property on the emulator: the forward and combine launches of a run-time
/// plan are built ONCE over buffers sized for the plan's capacity, then replayed step after
/// step while only the buffers' contents change -- the lengths (cu_seqlens), the block table,
/// the pages (a ring that wraps) and q -- as a captured CUDA graph replays its kernels with
/// the same parameters. Every step matches the reference of its own lengths.
#[test]
fn launches_built_once_replay_over_changing_lengths_and_tables() {
    use sparse_attn::attention::{PagedAddrs, TensorAddrs};
    use sparse_attn::emu::GuardedBuffer;
    use sparse_attn::kv_cache::{
        HostKvStorage, KvCache, KvCacheConfig, LayerCapacity, PageSize, PoolSize,
    };
    let seed = base_seed();
    let (batch, heads, kv_heads, d, max_kv) = (2usize, 4usize, 2usize, 64usize, 400usize);
    let set = HeadPatterns::from_json(STREAMING).unwrap();
    let max = SeqLens::Uniform {
        batch,
        q_len: 1,
        kv_len: max_kv,
    };
    let problem = AttnProblem::new(max, heads, kv_heads, d as u32, f16::DTYPE).unwrap();
    let plan = AttnPlan::for_max_lengths(&problem, &set, &AttnOptions::default())
        .unwrap()
        .with_num_splits(3)
        .unwrap();
    // The cache: one sink page and a ring of 16-token pages for the 100-token window.
    let page = PageSize::new(16).unwrap();
    let capacity = LayerCapacity::from_patterns(&set, page, 1).unwrap();
    let mut cache = KvCache::new(
        KvCacheConfig {
            num_layers: 1,
            num_kv_heads: kv_heads,
            head_dim: d,
            dtype: f16::DTYPE,
            page_size: 16,
            max_seq_len: max_kv,
            max_chunk: 1,
            pool: PoolSize::Sequences(batch),
        },
        vec![capacity],
    )
    .unwrap();
    let mut store = HostKvStorage::<f16>::new(&cache).unwrap();
    let ids: Vec<_> = (0..batch).map(|_| cache.add_sequence()).collect();

    // "Device" buffers at capacity, written in place between steps.
    let stride = cache.stride(0).unwrap();
    let pool = cache.num_pages(0).unwrap() * cache.layout(0).unwrap().page_stride();
    let mut qb = GuardedBuffer::<f16>::zeroed(batch * heads * d, "q").unwrap();
    let ob = GuardedBuffer::<f16>::zeroed(batch * heads * d, "out").unwrap();
    let lb = GuardedBuffer::<f32>::zeroed(batch * heads, "lse").unwrap();
    let mut cu_q = GuardedBuffer::<i32>::zeroed(batch + 1, "cu_seqlens_q").unwrap();
    let mut cu_k = GuardedBuffer::<i32>::zeroed(batch + 1, "cu_seqlens_k").unwrap();
    let mut table_b = GuardedBuffer::<i32>::zeroed(batch * stride, "block_table").unwrap();
    let mut kp = GuardedBuffer::<f16>::zeroed(pool, "k_pages").unwrap();
    let mut vp = GuardedBuffer::<f16>::zeroed(pool, "v_pages").unwrap();
    let (o_ws, l_ws) = plan.split_workspace();
    let ow = GuardedBuffer::<f32>::zeroed(o_ws, "o_partial").unwrap();
    let lw = GuardedBuffer::<f32>::zeroed(l_ws, "lse_partial").unwrap();
    let meta = plan.meta().upload_emulated().unwrap();
    let layout = cache.block_table(0, &ids).unwrap().paged_layout();
    let addrs = TensorAddrs {
        meta: meta.addrs(),
        paged: PagedAddrs {
            k_pages: kp.as_ptr() as u64,
            v_pages: vp.as_ptr() as u64,
            block_table: table_b.as_ptr() as u64,
            layout,
            num_pages: cache.num_pages(0).unwrap(),
        },
        q: qb.as_ptr() as u64,
        k: 0,
        v: 0,
        out: ob.as_ptr() as u64,
        lse: lb.as_ptr() as u64,
        cu_q: cu_q.as_ptr() as u64,
        cu_k: cu_k.as_ptr() as u64,
        tiles_visited: 0,
        o_partial: ow.as_ptr() as u64,
        lse_partial: lw.as_ptr() as u64,
        sink_logits: 0,
        alibi_slopes: 0,
    };
    // Built once, replayed every step.
    let fwd = plan.launch(&addrs);
    let combine = plan.combine_launch(&addrs).expect("a split plan combines");
    let opts = common::emu_run().options();

    // Each sequence's whole K/V history (for the reference), one new token per step; the
    // second sequence idles (no new token) every third step.
    let mut rng = Rng::new(seed);
    let mut hist: Vec<(Vec<f16>, Vec<f16>)> = vec![(Vec::new(), Vec::new()); batch];
    let mut lens = vec![0usize; batch];
    for step in 0..330 {
        for b in 0..batch {
            if b == 1 && step % 3 == 2 && lens[b] > 0 {
                continue;
            }
            let k_row: Vec<f16> = random_tensor(&mut rng, kv_heads * d, 1.0);
            let v_row: Vec<f16> = random_tensor(&mut rng, kv_heads * d, 1.0);
            let placement = cache.reserve_append(ids[b], 1).unwrap();
            store.write_kv(0, &placement, &k_row, &v_row).unwrap();
            hist[b].0.extend_from_slice(&k_row);
            hist[b].1.extend_from_slice(&v_row);
            lens[b] += 1;
        }
        // Checking every step costs the reference; the replay runs at each, checks at some.
        let table = cache.block_table(0, &ids).unwrap();
        let q: Vec<f16> = random_tensor(&mut rng, batch * heads * d, 1.0);
        // The step's "device" writes: lengths, table, pages, q.
        let seqs = varlen(&lens.iter().map(|&k| (1, k)).collect::<Vec<_>>());
        let (cq, ck) = seqs.cu_seqlens();
        cu_q.as_mut_slice().copy_from_slice(&cq);
        cu_k.as_mut_slice().copy_from_slice(&ck);
        table_b.as_mut_slice().copy_from_slice(&table.table);
        let kv = store.paged_kv(0, &table).unwrap();
        kp.as_mut_slice().copy_from_slice(kv.k_pages);
        vp.as_mut_slice().copy_from_slice(kv.v_pages);
        qb.as_mut_slice().copy_from_slice(&q);
        // SAFETY: every address in the launches points at a live guarded buffer of the plan's
        // capacity (q, out, lse for batch x 1 rows, the pool, the table, the split workspace,
        // the uploaded metadata); the step's lengths are within the plan's maxima.
        unsafe {
            fwd.run_emulated(&opts).unwrap();
            combine.run_emulated(&opts).unwrap();
        }
        if step % 29 != 0 && step < 320 {
            continue;
        }
        let step_problem =
            AttnProblem::new(seqs.clone(), heads, kv_heads, d as u32, f16::DTYPE).unwrap();
        let lists = AttnPlan::with_patterns(&step_problem, &set, &AttnOptions::default()).unwrap();
        let (k_all, v_all): (Vec<f16>, Vec<f16>) = (
            hist.iter().flat_map(|h| h.0.iter().copied()).collect(),
            hist.iter().flat_map(|h| h.1.iter().copied()).collect(),
        );
        let want = reference_for(&lists, &q, &k_all, &v_all, |b, h, i, j| {
            lists.allowed(b, h, i, j)
        });
        assert_matches(
            &format!("replayed step {step} at {lens:?}"),
            &step_problem,
            &ob.to_vec(),
            &lb.to_vec(),
            &want,
            tol(f16::DTYPE),
        );
    }
    assert!(lens[0] > 116 + 100, "the ring wrapped");

    // Bad data already on the device: a block-table entry outside the pool. The launch reads
    // no page outside it (the emulator faults on any access past a guarded buffer): it runs,
    // sequence 0 is untouched, and the keys of the bad page count as zero-filled rows.
    let good = table_b.to_vec();
    let mut bad = good.clone();
    bad[stride + 1] = 1 << 20;
    table_b.as_mut_slice().copy_from_slice(&bad);
    let before = ob.to_vec();
    // SAFETY: as above; the table holds one entry outside the pool, which the run-time walk's
    // kernels never follow.
    unsafe {
        fwd.run_emulated(&opts).unwrap();
        combine.run_emulated(&opts).unwrap();
    }
    let after = ob.to_vec();
    let row = heads * d;
    assert_eq!(
        after[..row].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        before[..row]
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>(),
        "sequence 0 does not depend on sequence 1's table"
    );
    assert!(after[row..].iter().all(|x| x.is_finite()));
}

#[test]
fn sink_logits_and_alibi_under_the_run_time_walk() {
    // gpt-oss-style sink logits and ALiBi slopes through one run-time plan, decode and
    // prefill steps, against the reference of each step with the same options.
    let seed = base_seed();
    let (heads, kv_heads, d) = (4usize, 2usize, 64u32);
    let opts = AttnOptions {
        sink_logits: Some(vec![0.5, -1.0, 2.0, 0.0]),
        alibi_slopes: Some(sparse_attn::shape::alibi_slopes(heads)),
        ..AttnOptions::default()
    };
    let set = HeadPatterns::from_json(STREAMING).unwrap();
    let max = varlen(&[(128, 900), (128, 900)]);
    let problem = AttnProblem::new(max, heads, kv_heads, d, f16::DTYPE).unwrap();
    let plan = AttnPlan::for_max_lengths(&problem, &set, &opts).unwrap();
    for (m, lens) in [
        [(1, 1), (1, 300)],
        [(100, 500), (0, 0)],
        [(65, 65), (1, 900)],
    ]
    .into_iter()
    .enumerate()
    {
        let seqs = varlen(&lens);
        let step = AttnProblem::new(seqs.clone(), heads, kv_heads, d, f16::DTYPE).unwrap();
        let lists = AttnPlan::with_patterns(&step, &set, &opts).unwrap();
        let mut rng = Rng::new(seed + m as u64);
        let q: Vec<f16> = random_tensor(&mut rng, step.q_elems(), 1.0);
        let k: Vec<f16> = random_tensor(&mut rng, step.kv_elems(), 1.0);
        let v: Vec<f16> = random_tensor(&mut rng, step.kv_elems(), 1.0);
        let (out, lse) = plan
            .run_emulated_step(&seqs, &q, &k, &v, &common::emu_run())
            .unwrap();
        let want = reference_for(&lists, &q, &k, &v, |b, h, i, j| lists.allowed(b, h, i, j));
        assert_matches(
            &format!("{lens:?}"),
            &step,
            &out,
            &lse,
            &want,
            tol(f16::DTYPE),
        );
    }
}

/// A batch mixing prefill chunks, decode rows and idle slots of different sequences through
/// launches built ONCE over buffers of the plan's capacity (the emulator twin of
/// `GpuPlan::launch_step`: q and out `[batch x max q_len, heads, head_dim]` with the step's
/// rows packed first, lse `[heads, batch x max q_len]`), GQA-packed and split: only the
/// buffers' contents change between steps, and each step matches the reference of its own
/// lengths.
#[test]
fn mixed_rows_through_launches_built_once() {
    use sparse_attn::attention::{PagedAddrs, TensorAddrs};
    use sparse_attn::emu::GuardedBuffer;
    let seed = base_seed();
    let (batch, heads, kv_heads, d) = (3usize, 4usize, 2usize, 64usize);
    let (max_q, max_kv) = (24usize, 300usize);
    let set = HeadPatterns::from_json(STREAMING).unwrap();
    let max = SeqLens::Uniform {
        batch,
        q_len: max_q,
        kv_len: max_kv,
    };
    let problem = AttnProblem::new(max, heads, kv_heads, d as u32, f16::DTYPE).unwrap();
    let plan = AttnPlan::for_max_lengths(&problem, &set, &AttnOptions::default())
        .unwrap()
        .with_num_splits(3)
        .unwrap();
    assert!(plan.gqa_pack() > 1, "short queries pack");
    let rows = batch * max_q;
    let mut qb = GuardedBuffer::<f16>::zeroed(rows * heads * d, "q").unwrap();
    let mut kb = GuardedBuffer::<f16>::zeroed(batch * max_kv * kv_heads * d, "k").unwrap();
    let mut vb = GuardedBuffer::<f16>::zeroed(batch * max_kv * kv_heads * d, "v").unwrap();
    let ob = GuardedBuffer::<f16>::zeroed(rows * heads * d, "out").unwrap();
    let lb = GuardedBuffer::<f32>::zeroed(rows * heads, "lse").unwrap();
    let mut cu_q = GuardedBuffer::<i32>::zeroed(batch + 1, "cu_seqlens_q").unwrap();
    let mut cu_k = GuardedBuffer::<i32>::zeroed(batch + 1, "cu_seqlens_k").unwrap();
    let (o_ws, l_ws) = plan.split_workspace();
    let ow = GuardedBuffer::<f32>::zeroed(o_ws, "o_partial").unwrap();
    let lw = GuardedBuffer::<f32>::zeroed(l_ws, "lse_partial").unwrap();
    let meta = plan.meta().upload_emulated().unwrap();
    let addrs = TensorAddrs {
        meta: meta.addrs(),
        paged: PagedAddrs::default(),
        q: qb.as_ptr() as u64,
        k: kb.as_ptr() as u64,
        v: vb.as_ptr() as u64,
        out: ob.as_ptr() as u64,
        lse: lb.as_ptr() as u64,
        cu_q: cu_q.as_ptr() as u64,
        cu_k: cu_k.as_ptr() as u64,
        tiles_visited: 0,
        o_partial: ow.as_ptr() as u64,
        lse_partial: lw.as_ptr() as u64,
        sink_logits: 0,
        alibi_slopes: 0,
    };
    let fwd = plan.launch(&addrs);
    let combine = plan.combine_launch(&addrs).expect("a split plan combines");
    let opts = common::emu_run().options();
    for (m, lens) in [
        [(24, 24), (1, 200), (0, 0)],
        [(1, 25), (24, 224), (5, 5)],
        [(17, 300), (0, 0), (1, 6)],
        [(1, 1), (1, 225), (24, 30)],
    ]
    .into_iter()
    .enumerate()
    {
        let seqs = varlen(&lens);
        let step = AttnProblem::new(seqs.clone(), heads, kv_heads, d as u32, f16::DTYPE).unwrap();
        let lists = AttnPlan::with_patterns(&step, &set, &AttnOptions::default()).unwrap();
        let mut rng = Rng::new(seed + m as u64);
        let q: Vec<f16> = random_tensor(&mut rng, step.q_elems(), 1.0);
        let k: Vec<f16> = random_tensor(&mut rng, step.kv_elems(), 1.0);
        let v: Vec<f16> = random_tensor(&mut rng, step.kv_elems(), 1.0);
        let (cq, ck) = seqs.cu_seqlens();
        cu_q.as_mut_slice().copy_from_slice(&cq);
        cu_k.as_mut_slice().copy_from_slice(&ck);
        qb.as_mut_slice()[..q.len()].copy_from_slice(&q);
        kb.as_mut_slice()[..k.len()].copy_from_slice(&k);
        vb.as_mut_slice()[..v.len()].copy_from_slice(&v);
        // SAFETY: every address in the launches points at a live guarded buffer of the plan's
        // capacity; the step's lengths are within the plan's maxima and batch.
        unsafe {
            fwd.run_emulated(&opts).unwrap();
            combine.run_emulated(&opts).unwrap();
        }
        let total_q = seqs.totals().0;
        let out = ob.to_vec()[..q.len()].to_vec();
        let lse: Vec<f32> = lb
            .to_vec()
            .chunks(rows)
            .flat_map(|row| row[..total_q].to_vec())
            .collect();
        let want = reference_for(&lists, &q, &k, &v, |b, h, i, j| lists.allowed(b, h, i, j));
        assert_matches(
            &format!("mixed step {lens:?}"),
            &step,
            &out,
            &lse,
            &want,
            tol(f16::DTYPE),
        );
    }
}

/// A step plan launched over device lengths ([`AttnPlan::step_plan`]; on a GPU
/// `GpuPlan::launch_step_rows`) on the parent plan's buffers: a decode step gives the
/// reference's rows and LSE in the parent's capacity layout, and lengths that break the
/// step's promise (two 10-token sequences before a decode row: 21 rows against the step
/// plan's 3 x 4) touch nothing outside the buffers -- the split-KV partials of rows past the
/// step plan's capacity are dropped by the kernels (split_kv.cuh), where they would land past
/// its workspace, which the emulator faults on.
#[test]
fn a_step_plan_over_device_lengths_stays_in_its_workspace() {
    use sparse_attn::attention::TensorAddrs;
    use sparse_attn::emu::GuardedBuffer;
    let (batch, heads, kv_heads, d, max_q, max_kv) = (3usize, 8, 2, 64usize, 32usize, 300usize);
    let set = HeadPatterns::from_json(STREAMING).unwrap();
    let max = SeqLens::Uniform {
        batch,
        q_len: max_q,
        kv_len: max_kv,
    };
    let problem = AttnProblem::new(max, heads, kv_heads, d as u32, f16::DTYPE).unwrap();
    let plan = AttnPlan::for_max_lengths(&problem, &set, &AttnOptions::default())
        .unwrap()
        .with_num_splits(3)
        .unwrap();
    let step = plan.step_plan().expect("a step plan");
    assert_eq!(
        (step.problem().seqs().max_lens().0, step.num_splits()),
        (4, 3)
    );
    // Buffers of the parent's capacity; the step plan's own workspace and metadata.
    let (rows, keys) = (batch * max_q, batch * max_kv);
    let mut qb = GuardedBuffer::<f16>::zeroed(rows * heads * d, "q").unwrap();
    let ob =
        GuardedBuffer::<f16>::filled(rows * heads * d, f16::from_f32(f32::NAN), "out").unwrap();
    let lb = GuardedBuffer::<f32>::filled(rows * heads, f32::NAN, "lse").unwrap();
    let mut kb = GuardedBuffer::<f16>::zeroed(keys * kv_heads * d, "k").unwrap();
    let mut vb = GuardedBuffer::<f16>::zeroed(keys * kv_heads * d, "v").unwrap();
    let mut cu_q = GuardedBuffer::<i32>::zeroed(batch + 1, "cu_seqlens_q").unwrap();
    let mut cu_k = GuardedBuffer::<i32>::zeroed(batch + 1, "cu_seqlens_k").unwrap();
    let (o_ws, l_ws) = step.split_workspace();
    assert_eq!(l_ws, 3 * batch * 4 * heads, "the step plan's own capacity");
    let ow = GuardedBuffer::<f32>::zeroed(o_ws, "o_partial").unwrap();
    let lw = GuardedBuffer::<f32>::zeroed(l_ws, "lse_partial").unwrap();
    let meta = step.meta().upload_emulated().unwrap();
    let addrs = TensorAddrs {
        meta: meta.addrs(),
        q: qb.as_ptr() as u64,
        k: kb.as_ptr() as u64,
        v: vb.as_ptr() as u64,
        out: ob.as_ptr() as u64,
        lse: lb.as_ptr() as u64,
        cu_q: cu_q.as_ptr() as u64,
        cu_k: cu_k.as_ptr() as u64,
        o_partial: ow.as_ptr() as u64,
        lse_partial: lw.as_ptr() as u64,
        ..Default::default()
    };
    let fwd = step.launch(&addrs);
    assert!(fwd.kernel.name.ends_with("_m16_rt"), "{}", fwd.kernel.name);
    let combine = step.combine_launch(&addrs).expect("a split plan combines");
    let opts = common::emu_run().options();

    // A decode step within the promise.
    let lens = [(1, 300), (1, 65), (1, 129)];
    let seqs = varlen(&lens);
    let one_shot = AttnProblem::new(seqs.clone(), heads, kv_heads, d as u32, f16::DTYPE).unwrap();
    let mut rng = Rng::new(base_seed() + 900);
    let q: Vec<f16> = random_tensor(&mut rng, 3 * heads * d, 1.0);
    let k: Vec<f16> = random_tensor(&mut rng, 494 * kv_heads * d, 1.0);
    let v: Vec<f16> = random_tensor(&mut rng, 494 * kv_heads * d, 1.0);
    let (cq, ck) = seqs.cu_seqlens();
    cu_q.as_mut_slice().copy_from_slice(&cq);
    cu_k.as_mut_slice().copy_from_slice(&ck);
    qb.as_mut_slice()[..q.len()].copy_from_slice(&q);
    kb.as_mut_slice()[..k.len()].copy_from_slice(&k);
    vb.as_mut_slice()[..v.len()].copy_from_slice(&v);
    // SAFETY: every address points at a live guarded buffer of the parent plan's capacity
    // (q, out, lse, k, v), the step plan's workspace and uploaded metadata, and the lengths.
    unsafe {
        fwd.run_emulated(&opts).unwrap();
        combine.run_emulated(&opts).unwrap();
    }
    // LSE rows in the parent's layout: [heads, batch x max q], the step's 3 rows first.
    let lse_all = lb.to_vec();
    let lse: Vec<f32> = lse_all.chunks(rows).flat_map(|r| r[..3].to_vec()).collect();
    let lists = AttnPlan::with_patterns(&one_shot, &set, &AttnOptions::default()).unwrap();
    let want = reference_for(&lists, &q, &k, &v, |b, h, i, j| lists.allowed(b, h, i, j));
    let out = ob.to_vec()[..q.len()].to_vec();
    assert_matches(
        "step plan, device lengths",
        &one_shot,
        &out,
        &lse,
        &want,
        tol(f16::DTYPE),
    );

    // A broken promise: 21 rows, the decode row 20 rows in.
    cu_q.as_mut_slice().copy_from_slice(&[0, 10, 20, 21]);
    cu_k.as_mut_slice().copy_from_slice(&[0, 100, 200, 300]);
    // SAFETY: as above; the lengths break the step plan's maxima, which the kernels check.
    let ran = unsafe {
        fwd.run_emulated(&opts)
            .and_then(|_| combine.run_emulated(&opts))
    };
    assert!(ran.is_ok(), "{ran:?}");
}
