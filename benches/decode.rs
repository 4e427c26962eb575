//! Decode on the GPU: one query token per sequence against a paged KV cache (page 16), GQA
//! 32:8, head_dim 128, f16; dense causal and StreamingLLM (4 sinks + 4096-token window, whose
//! cache is a ring); batches of 1..32 sequences with contexts of 4096..32768 tokens.
//!
//!   cargo bench --bench decode
//!   SPARSE_ATTN_BENCH_QUICK=1 cargo bench --bench decode   # the table only, no criterion
//!
//! Reported per configuration: time per decode step (CUDA events around the launches: the
//! forward kernel, split-KV combine when the plan splits, and the per-step host work a real
//! engine also does: block-table validation and upload), tokens per second (batch / step
//! time) and achieved KV bandwidth (K and V bytes of the keys the pattern allows, divided by
//! the step time). Without a GPU the binary says so and exits successfully.

use criterion::{BenchmarkId, Criterion, Throughput};
use half::f16;
use sparse_attn::attention::PagedLayout;
use sparse_attn::backend::{DevicePagedKv, Gpu};
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, SeqLens};

mod common;
use common::{gpu_or_skip, quick_mode, random_host, time_gpu};

const HEADS: usize = 32;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const PAGE: usize = 16;

fn bench_decode(
    c: &mut Option<Criterion>,
    gpu: &Gpu,
    name: &str,
    pattern: &str,
    batch: usize,
    ctx: usize,
) {
    let set = HeadPatterns::from_json(pattern).expect("pattern");
    let (sink_pages, ring_pages, kept) = if name == "streaming" {
        // 4 sinks (one page) + a ring holding the 4096-token window of a q_len-1 step.
        (1, 4096usize.div_ceil(PAGE) + 1, 4 + 4096usize.min(ctx))
    } else {
        (0, 0, ctx)
    };
    let logical = ctx.div_ceil(PAGE);
    let slots = if ring_pages == 0 {
        logical
    } else {
        logical.min(sink_pages + ring_pages)
    };
    let num_pages = batch * slots;
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch,
            q_len: 1,
            kv_len: ctx,
        },
        HEADS,
        KV_HEADS,
        HEAD_DIM as u32,
        DType::F16,
    )
    .expect("problem");
    let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).expect("plan");
    let gplan = plan.upload(gpu).expect("upload plan");
    let stream = gpu.stream();
    let page_elems = KV_HEADS * PAGE * HEAD_DIM;
    let pages: Vec<f16> = random_host(num_pages * page_elems, 1);
    let k_pages = stream.clone_htod(&pages).expect("k pages");
    let v_pages = stream.clone_htod(&pages).expect("v pages");
    let table: Vec<i32> = (0..num_pages as i32).collect();
    let q = stream
        .clone_htod(&vec![f16::from_f32(0.1); problem.q_elems()])
        .expect("q");
    let mut out = stream.alloc_zeros::<f16>(problem.q_elems()).expect("out");
    let mut lse = stream.alloc_zeros::<f32>(problem.lse_elems()).expect("lse");
    let kv = DevicePagedKv {
        k_pages: &k_pages,
        v_pages: &v_pages,
        block_table: &table,
        layout: PagedLayout {
            page_size: PAGE,
            block_table_stride: slots,
            sink_pages,
            ring_pages,
        },
    };
    let mut step = || {
        gplan
            .run_paged(&q, &kv, &mut out, &mut lse)
            .expect("decode step")
    };
    step();
    gpu.synchronize().expect("synchronize");
    let t = time_gpu(gpu, 20, &mut step) / 20;
    let kv_bytes = (batch * kept * KV_HEADS * HEAD_DIM * 2 * 2) as f64;
    println!(
        "{name:<9} batch {batch:>2} ctx {ctx:>5}: {:>8.3} ms/step  {:>9.0} tok/s  {:>7.1} GB/s KV  \
         (splits {}, gqa pack {})",
        t.as_secs_f64() * 1e3,
        batch as f64 / t.as_secs_f64(),
        kv_bytes / t.as_secs_f64() / 1e9,
        plan.num_splits(),
        plan.gqa_pack()
    );
    let Some(c) = c.as_mut() else {
        return;
    };
    let mut group = c.benchmark_group(format!("decode/{name}/batch{batch}"));
    group.throughput(Throughput::Bytes(kv_bytes as u64));
    group.bench_function(BenchmarkId::new("sparse-attn", ctx), |b| {
        b.iter_custom(|iters| time_gpu(gpu, iters, &mut step))
    });
    group.finish();
}

fn main() {
    let Some(gpu) = gpu_or_skip("decode") else {
        return;
    };
    // Quick mode times every case of a full run without criterion.
    let quick = quick_mode();
    let full = quick || std::env::args().any(|a| a == "--bench");
    if quick {
        println!("benches/decode: quick mode, fixed iterations, no criterion sampling");
    }
    let mut c = (!quick).then(|| Criterion::default().configure_from_args());
    let dense = r#"{"causal": true, "components": []}"#;
    let streaming = r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 4096}}]}"#;
    let batches: &[usize] = if full { &[1, 8, 32] } else { &[1] };
    let ctxs: &[usize] = if full { &[4096, 32768] } else { &[4096] };
    for &batch in batches {
        for &ctx in ctxs {
            bench_decode(&mut c, &gpu, "dense", dense, batch, ctx);
            bench_decode(&mut c, &gpu, "streaming", streaming, batch, ctx);
        }
    }
    if let Some(c) = c {
        c.final_summary();
    }
}
