//! Host work of one decode step (issue #12, item 5), on the CPU: what `kv_cache::decode_cuda`
//! does on the host for every token of every sequence today, with the device calls left out.
//! One query token per sequence against a paged cache (page 16, `max_chunk` 1: pure decode),
//! 32 query / 8 kv heads, head_dim 128, bf16; dense causal and StreamingLLM (4 sinks + a
//! 4096-token window, whose cache is a ring); batches of 1, 64 and 256 sequences with 4096,
//! 32768 and 131072 keys.
//!
//!   cargo bench --bench host_overhead
//!   SPARSE_ATTN_BENCH_QUICK=1 cargo bench --bench host_overhead   # the table only, no criterion
//!
//! A step is the driver's decode step (src/kv_cache/decode.rs, `decode_with` with `n = 1`),
//! stage by stage:
//!
//! 1. **append**: per sequence, `KvCache::reserve_append(seq, 1)` and the host half of
//!    `DeviceKvStorage::write_kv` (`placement_slots`, `append_launch`);
//! 2. **plan**: `AttnProblem::new` for the step's `kv_len`, the step's patterns (`for_keys`: a
//!    clone for patterns without global tokens, as here) and `AttnPlan::with_patterns`;
//! 3. **block table**: `KvCache::block_table`;
//! 4. **meta arrays**: `PlanMeta::arrays` and `split_workspace`, what `AttnPlan::upload`
//!    flattens before its copies;
//! 5. **paged check**: `AttnPlan::check_paged`, the validation `GpuPlan::run_paged` runs before
//!    it uploads the table;
//! 6. **launch params**: `AttnPlan::launch` and `combine_launch` (pure).
//!
//! The `..., one plan` rows are the same steps with the decode driver as it is now: one
//! run-time plan ([`AttnPlan::for_max_lengths`], built once outside the timing) serves every
//! step, so stages 2 and 4 are gone (the step's `SeqLens` only), stage 5 is
//! `AttnPlan::check_paged_step` (the step's lengths against the plan, then the block table
//! and, for a ring, the evicted keys against each row's allowed spans), stage 6 the launch
//! params with the step's cu_seqlens.
//!
//! Left out: every copy, allocation and launch on the device (the q/k/v row uploads, the
//! metadata, table and slot uploads, `alloc_zeros` of out, lse and the split workspace, the
//! append, forward and combine launches with their driver calls), and the driver's host-side
//! gather of q and scatter of out/lse (an engine keeps those on the device). Everything a stage
//! allocates is dropped inside the step, as in the driver.
//!
//! Each case starts from a cache whose sequences hold `kv_len - 1` tokens, so the first step
//! attends `kv_len` keys; after `HEADROOM` steps the cache is restored from that copy, outside
//! the timed region (the timed steps attend `kv_len .. kv_len + HEADROOM` keys).
//!
//! Reported: criterion's time per step, then a table of µs per step (the median over rounds
//! of `HEADROOM` steps) and of each stage (a second pass with a clock read between stages;
//! each stage's median per-round mean, so the stages need not add up exactly). `cargo test
//! --all-targets` runs this binary without `--bench`: it then runs only the batch-1, 4096-key
//! cases, one round each and criterion's single test iteration, as a smoke test.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use sparse_attn::attention::{MetaAddrs, PagedAddrs, PagedLayout, PlanMeta, TensorAddrs};
use sparse_attn::kv_cache::append::{append_launch, placement_slots, AppendAddrs};
use sparse_attn::kv_cache::{
    KvCache, KvCacheConfig, LayerCapacity, PageLayout, PageSize, PoolSize, SeqId,
};
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, SeqLens};

// Only `quick_mode` is used: this bench needs no GPU.
#[allow(dead_code)]
mod common;
use common::quick_mode;

const HEADS: usize = 32;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const PAGE: usize = 16;
/// Steps taken from one starting cache before it is restored.
const HEADROOM: usize = 64;

/// The stages of a step, in order (see the module docs).
const STAGES: [&str; 6] = [
    "append",
    "plan",
    "block table",
    "meta arrays",
    "paged check",
    "launch params",
];

/// Called after each stage of a step with the stage's index.
trait Marks {
    fn mark(&mut self, stage: usize);
}

/// No clock: the step as the engine runs it.
struct NoMarks;

impl Marks for NoMarks {
    #[inline(always)]
    fn mark(&mut self, _: usize) {}
}

/// Sums the time of each stage over the steps it sees.
struct StageClock {
    last: Instant,
    spent: [Duration; STAGES.len()],
}

impl StageClock {
    fn new() -> Self {
        StageClock {
            last: Instant::now(),
            spent: [Duration::ZERO; STAGES.len()],
        }
    }
    fn start(&mut self) {
        self.last = Instant::now();
    }
}

impl Marks for StageClock {
    fn mark(&mut self, stage: usize) {
        let now = Instant::now();
        self.spent[stage] += now - self.last;
        self.last = now;
    }
}

/// One case: a cache of `batch` sequences at `kv_len - 1` tokens and the state of the steps.
struct Engine {
    patterns: HeadPatterns,
    opts: AttnOptions,
    batch: usize,
    layout: PageLayout,
    num_pages: usize,
    /// Every sequence at `kv_len - 1` tokens.
    start: KvCache,
    cache: KvCache,
    seqs: Vec<SeqId>,
    /// Steps left before `cache` must be restored.
    room: usize,
    /// `Some`: the run-time plan ([`AttnPlan::for_max_lengths`]) every step reuses, built once
    /// for the largest kv_len the steps see; `None`: a plan per step, as the decode driver did.
    one_plan: Option<AttnPlan>,
}

impl Engine {
    fn new(patterns: &HeadPatterns, batch: usize, kv_len: usize, one_plan: bool) -> Self {
        let capacity =
            LayerCapacity::from_patterns(patterns, PageSize::new(PAGE).expect("page size"), 1)
                .expect("capacity");
        let mut cache = KvCache::new(
            KvCacheConfig {
                num_layers: 1,
                num_kv_heads: KV_HEADS,
                head_dim: HEAD_DIM,
                dtype: DType::BF16,
                page_size: PAGE,
                max_seq_len: kv_len - 1 + HEADROOM,
                max_chunk: 1,
                pool: PoolSize::Sequences(batch),
            },
            vec![capacity],
        )
        .expect("cache");
        let seqs: Vec<SeqId> = (0..batch).map(|_| cache.add_sequence()).collect();
        // Decode-only cache (max_chunk 1): the earlier tokens go in one at a time.
        for &seq in &seqs {
            for _ in 0..kv_len - 1 {
                cache.reserve_append(seq, 1).expect("prefill");
            }
        }
        let one_plan = one_plan.then(|| {
            let max = decode_problem(batch, kv_len - 1 + HEADROOM);
            AttnPlan::for_max_lengths(&max, patterns, &AttnOptions::default()).expect("plan")
        });
        Engine {
            one_plan,
            patterns: patterns.clone(),
            opts: AttnOptions::default(),
            batch,
            layout: cache.layout(0).expect("layer 0"),
            num_pages: cache.num_pages(0).expect("layer 0"),
            start: cache.clone(),
            cache,
            seqs,
            room: HEADROOM,
        }
    }

    /// Restores the starting cache: the next step attends `kv_len` keys again.
    fn restore(&mut self) {
        self.cache = self.start.clone();
        self.room = HEADROOM;
    }

    /// Restores the starting cache once `HEADROOM` steps were taken (call outside timing);
    /// returns the steps that can be taken now.
    fn make_room(&mut self) -> usize {
        if self.room == 0 {
            self.restore();
        }
        self.room
    }

    /// One decode step's host work; returns a value derived from every stage's output.
    fn step(&mut self, marks: &mut impl Marks) -> usize {
        assert!(self.room > 0, "make_room before stepping");
        self.room -= 1;
        let mut sum = 0usize;

        // 1. append: reserve the new position, then the host half of the append launch.
        for &seq in &self.seqs {
            let placement = self.cache.reserve_append(seq, 1).expect("reserve");
            let slots =
                placement_slots(&placement, 0, &self.layout, self.num_pages).expect("slots");
            let launch = append_launch(&self.layout, self.num_pages, placement.len, &FAKE_APPEND)
                .expect("append launch");
            sum += slots[0] as usize + black_box(&launch).grid[0] as usize;
        }
        marks.mark(0);

        let kv_len = self.cache.seq_len(self.seqs[0]).expect("seq");
        if let Some(plan) = &self.one_plan {
            return sum + self.step_one_plan(plan, kv_len, marks);
        }
        // 2. plan for this step's kv_len.
        let problem = decode_problem(self.batch, kv_len);
        let step_set = self.patterns.clone();
        let plan = AttnPlan::with_patterns(&problem, &step_set, &self.opts).expect("plan");
        marks.mark(1);

        // 3. block table.
        let table = self.cache.block_table(0, &self.seqs).expect("table");
        marks.mark(2);

        // 4. metadata arrays (upload's host half).
        let arrays = plan.meta().arrays();
        let workspace = plan.split_workspace();
        sum += arrays.iter().map(|(_, a)| a.len()).sum::<usize>() + workspace.0;
        marks.mark(3);

        // 5. paged check (run_paged's host validation).
        let pool = self.num_pages * self.layout.page_stride();
        plan.check_paged(pool, pool, &table.table, &table.paged_layout())
            .expect("paged check");
        marks.mark(4);

        // 6. launch params.
        let addrs = TensorAddrs {
            paged: PagedAddrs {
                layout: table.paged_layout(),
                ..FAKE.paged
            },
            ..FAKE
        };
        let launch = plan.launch(&addrs);
        let combine = plan.combine_launch(&addrs);
        sum += black_box(&launch).grid[0] as usize + black_box(&combine).is_some() as usize;
        sum += black_box(&table).table.len();
        drop((arrays, table, plan, step_set, problem));
        marks.mark(5);
        sum
    }

    /// Stages 2-6 of a step with the one run-time plan: no plan and no metadata per step;
    /// the step's lengths, the paged check at those lengths, the launch params.
    fn step_one_plan(&self, plan: &AttnPlan, kv_len: usize, marks: &mut impl Marks) -> usize {
        let seqs = SeqLens::Uniform {
            batch: self.batch,
            q_len: 1,
            kv_len,
        };
        marks.mark(1);
        let table = self.cache.block_table(0, &self.seqs).expect("table");
        marks.mark(2);
        marks.mark(3);
        let pool = self.num_pages * self.layout.page_stride();
        plan.check_paged_step(&seqs, pool, pool, &table.table, &table.paged_layout())
            .expect("paged check");
        marks.mark(4);
        let addrs = TensorAddrs {
            paged: PagedAddrs {
                layout: table.paged_layout(),
                ..FAKE.paged
            },
            cu_q: 0xa000,
            cu_k: 0xb000,
            ..FAKE
        };
        let launch = plan.launch(&addrs);
        let combine = plan.combine_launch(&addrs);
        let sum = black_box(&launch).grid[0] as usize
            + black_box(&combine).is_some() as usize
            + black_box(&table).table.len();
        marks.mark(5);
        sum
    }

    /// The plan of a step with `kv_len` keys, for the table: (kv tiles it visits, block-table
    /// entries, metadata words, splits).
    fn info(&self, kv_len: usize) -> (u64, usize, usize, u32) {
        let problem = decode_problem(self.batch, kv_len);
        let plan = AttnPlan::with_patterns(&problem, &self.patterns, &self.opts).expect("plan");
        let words = plan.meta().arrays().iter().map(|(_, a)| a.len()).sum();
        let stride = self.cache.stride(0).expect("layer 0");
        (
            plan.meta().tiles_visited(),
            self.batch * stride,
            words,
            plan.num_splits(),
        )
    }

    /// Time of `iters` steps (restoring the cache outside the timed spans).
    fn time_steps(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters as usize;
        while left > 0 {
            let n = self.make_room().min(left);
            let t = Instant::now();
            for _ in 0..n {
                black_box(self.step(&mut NoMarks));
            }
            total += t.elapsed();
            left -= n;
        }
        total
    }
}

/// A decode step's problem: one query per sequence, `kv_len` keys, the bench's heads and dtype.
fn decode_problem(batch: usize, kv_len: usize) -> AttnProblem {
    AttnProblem::new(
        SeqLens::Uniform {
            batch,
            q_len: 1,
            kv_len,
        },
        HEADS,
        KV_HEADS,
        HEAD_DIM as u32,
        DType::BF16,
    )
    .expect("problem")
}

/// Stand-in device addresses: the launch descriptions are built from them, nothing reads them.
const FAKE: TensorAddrs = TensorAddrs {
    q: 0x1000,
    k: 0,
    v: 0,
    out: 0x2000,
    lse: 0x3000,
    cu_q: 0,
    cu_k: 0,
    tiles_visited: 0,
    meta: MetaAddrs([0x4000; PlanMeta::NUM_ARRAYS]),
    paged: PagedAddrs {
        k_pages: 0x5000,
        v_pages: 0x6000,
        block_table: 0x7000,
        layout: PagedLayout {
            page_size: 0,
            block_table_stride: 0,
            sink_pages: 0,
            ring_pages: 0,
        },
        num_pages: 0,
    },
    o_partial: 0x8000,
    lse_partial: 0x9000,
    sink_logits: 0,
    alibi_slopes: 0,
};

const FAKE_APPEND: AppendAddrs = AppendAddrs {
    k_new: 0x1000,
    v_new: 0x2000,
    k_pages: 0x3000,
    v_pages: 0x4000,
    slots: 0x5000,
    summaries: 0,
};

/// One row of the printed table.
struct Row {
    name: &'static str,
    batch: usize,
    kv_len: usize,
    step_us: f64,
    stage_us: [f64; STAGES.len()],
    info: (u64, usize, usize, u32),
}

/// The median of `v` (not empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// µs per step: the median over `rounds` rounds of `HEADROOM` steps, each from the starting
/// cache (a median, so a round the OS preempted does not count); then, over another `rounds`
/// rounds with the stage clock, each stage's median per-round mean.
fn table_row(engine: &mut Engine, name: &'static str, kv_len: usize, rounds: usize) -> Row {
    let info = engine.info(kv_len);
    let per_step = |d: Duration| d.as_secs_f64() * 1e6 / HEADROOM as f64;
    let step_us = median(
        (0..rounds)
            .map(|_| {
                engine.restore();
                per_step(engine.time_steps(HEADROOM as u64))
            })
            .collect(),
    );
    let mut stages: [Vec<f64>; STAGES.len()] = Default::default();
    for _ in 0..rounds {
        engine.restore();
        let mut clock = StageClock::new();
        for _ in 0..HEADROOM {
            clock.start();
            black_box(engine.step(&mut clock));
        }
        for (v, d) in stages.iter_mut().zip(clock.spent) {
            v.push(per_step(d));
        }
    }
    Row {
        name,
        batch: engine.batch,
        kv_len,
        step_us,
        stage_us: stages.map(median),
        info,
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| pattern | batch | kv_len | step µs | {} | kv tiles | table entries | meta i32s | splits |",
        STAGES.join(" | ")
    );
    println!(
        "|---|---:|---:|---:|{}---:|---:|---:|---:|",
        "---:|".repeat(STAGES.len())
    );
    for r in rows {
        let stages: Vec<String> = r.stage_us.iter().map(|s| format!("{s:.1}")).collect();
        let (tiles, entries, words, splits) = r.info;
        println!(
            "| {} | {} | {} | {:.1} | {} | {tiles} | {entries} | {words} | {splits} |",
            r.name,
            r.batch,
            r.kv_len,
            r.step_us,
            stages.join(" | ")
        );
    }
}

fn main() {
    let quick = quick_mode();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: smoke-test only.
    let full = quick || std::env::args().any(|a| a == "--bench");
    if quick {
        println!("benches/host_overhead: quick mode, fixed rounds, no criterion sampling");
    }
    let mut c = (!quick).then(|| {
        Criterion::default()
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .configure_from_args()
    });
    let dense = r#"{"causal": true, "components": []}"#;
    let streaming = r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 4096}}]}"#;
    let batches: &[usize] = if full { &[1, 64, 256] } else { &[1] };
    let kv_lens: &[usize] = if full {
        &[4096, 32768, 131072]
    } else {
        &[4096]
    };
    let rounds = if !full {
        1
    } else if quick {
        3
    } else {
        11
    };
    let mut rows = Vec::new();
    for &batch in batches {
        for &kv_len in kv_lens {
            for (name, json, one_plan) in [
                ("dense causal", dense, false),
                ("4 sinks + window 4096", streaming, false),
                ("dense causal, one plan", dense, true),
                ("4 sinks + window, one plan", streaming, true),
            ] {
                let set = HeadPatterns::from_json(json).expect("pattern");
                let mut engine = Engine::new(&set, batch, kv_len, one_plan);
                if let Some(c) = c.as_mut() {
                    let short = match (json == dense, one_plan) {
                        (true, false) => "dense",
                        (false, false) => "streaming",
                        (true, true) => "dense-one-plan",
                        (false, true) => "streaming-one-plan",
                    };
                    let mut group =
                        c.benchmark_group(format!("host_overhead/{short}/batch{batch}"));
                    group.bench_function(BenchmarkId::new("step", kv_len), |b| {
                        b.iter_custom(|iters| engine.time_steps(iters))
                    });
                    group.finish();
                }
                let row = table_row(&mut engine, name, kv_len, rounds);
                println!(
                    "{name:<26} batch {batch:>3} kv_len {kv_len:>6}: {:>9.1} µs/step",
                    row.step_us
                );
                rows.push(row);
            }
        }
    }
    print_table(&rows);
    if let Some(c) = c {
        c.final_summary();
    }
}
