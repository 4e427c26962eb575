//! Forward attention on the GPU: the sparse-attn kernel against the dense cuBLAS path
//! (S = QKᵀ GEMM, softmax kernel, PV GEMM), dense and causal, f16 and bf16, head_dim 64 and
//! 128, sequence lengths 512..16384 with batch · heads fixed at 16.
//!
//!   cargo bench --bench attention                 # everything
//!   cargo bench --bench attention -- causal/f16   # a subset (criterion filter)
//!   SPARSE_ATTN_BENCH_QUICK=1 cargo bench --bench attention   # the tables only, no criterion
//!
//! Times come from CUDA events around the launches (`iter_custom`); allocation, module
//! loading and a warm-up launch happen outside the timed loop. Throughput is reported as
//! effective FLOP/s, `4 · batch · heads · head_dim · (allowed query-key pairs)`, the same
//! count for both paths (the dense path computes the masked half of a causal problem anyway).
//!
//! A second group times sparse patterns at one length against causal attention and the dense
//! path: dilated strides (run per residue class) and global tokens (gathered rows and key
//! columns) should cost in proportion to the tiles they visit, which is printed with them.
//! Without a GPU the binary says so and exits successfully (`cargo test --all-targets` runs
//! it); outside `cargo bench` only the two shortest lengths run, once, as a smoke test.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use half::{bf16, f16};
use sparse_attn::backend::cublas::DenseReference;
use sparse_attn::backend::Gpu;
use sparse_attn::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, Element, SeqLens};

mod common;
use common::{gpu_or_skip, quick_mode, random_host, time_gpu};

const BATCH: usize = 2;
const HEADS: usize = 8;
const SEQ_LENS: [usize; 6] = [512, 1024, 2048, 4096, 8192, 16384];

/// Useful FLOPs of one forward pass: two GEMMs of 2 FLOPs per multiply-add over the allowed
/// query-key pairs.
fn flops(seq: usize, head_dim: usize, causal: bool) -> u64 {
    let pairs = if causal {
        seq * (seq + 1) / 2
    } else {
        seq * seq
    };
    4 * (BATCH * HEADS * head_dim * pairs) as u64
}

/// BATCH sequences of `seq` queries and keys, HEADS heads (no GQA).
fn square_problem(seq: usize, head_dim: u32, dtype: sparse_attn::DType) -> AttnProblem {
    let seqs = SeqLens::Uniform {
        batch: BATCH,
        q_len: seq,
        kv_len: seq,
    };
    AttnProblem::new(seqs, HEADS, HEADS, head_dim, dtype).expect("problem")
}

struct Buffers<T> {
    q: CudaSlice<T>,
    k: CudaSlice<T>,
    v: CudaSlice<T>,
    out: CudaSlice<T>,
    out_f32: CudaSlice<f32>,
    lse: CudaSlice<f32>,
}

fn buffers<T: Element + DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, p: &AttnProblem) -> Buffers<T> {
    let s = gpu.stream();
    let fill = |n: usize, seed: u64| -> CudaSlice<T> {
        s.clone_htod(&random_host::<T>(n, seed)).expect("upload")
    };
    Buffers {
        q: fill(p.q_elems(), 1),
        k: fill(p.kv_elems(), 2),
        v: fill(p.kv_elems(), 3),
        out: s.alloc_zeros(p.q_elems()).expect("alloc"),
        out_f32: s.alloc_zeros(p.q_elems()).expect("alloc"),
        lse: s.alloc_zeros(p.lse_elems()).expect("alloc"),
    }
}

/// A criterion group with this file's sampling settings (`None` in quick mode).
fn group<'a>(
    c: &'a mut Option<Criterion>,
    name: String,
) -> Option<criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>> {
    let mut group = c.as_mut()?.benchmark_group(name);
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    Some(group)
}

fn bench_config<T: Element + DeviceRepr + ValidAsZeroBits>(
    c: &mut Option<Criterion>,
    gpu: &Gpu,
    head_dim: u32,
    causal: bool,
    seq_lens: &[usize],
) {
    let mask = if causal { "causal" } else { "dense" };
    let mut group = group(c, format!("{mask}/{}/hd{head_dim}", T::DTYPE.name()));
    for &seq in seq_lens {
        let problem = square_problem(seq, head_dim, T::DTYPE);
        let opts = AttnOptions {
            causal,
            ..Default::default()
        };
        let plan = AttnPlan::new(&problem, &opts).expect("plan");
        // Metadata on the device once, outside every timed loop (plan once, run many).
        let gplan = plan.upload(gpu).expect("upload plan");
        let mut dense = DenseReference::<T>::new(gpu, &problem, &opts).expect("cuBLAS path");
        let mut b = buffers::<T>(gpu, &problem);
        // Warm-up outside any timing: loads the modules, sets attributes, creates handles.
        gplan
            .run(&b.q, &b.k, &b.v, &mut b.out, &mut b.lse)
            .expect("sparse-attn");
        dense
            .run(&b.q, &b.k, &b.v, None, &mut b.out_f32, &mut b.lse)
            .expect("cuBLAS path");
        gpu.synchronize().expect("synchronize");

        let fl = flops(seq, head_dim as usize, causal);
        let ours = time_gpu(gpu, 10, || {
            gplan
                .run(&b.q, &b.k, &b.v, &mut b.out, &mut b.lse)
                .expect("sparse-attn")
        }) / 10;
        let theirs = time_gpu(gpu, 3, || {
            dense
                .run(&b.q, &b.k, &b.v, None, &mut b.out_f32, &mut b.lse)
                .expect("cuBLAS path")
        }) / 3;
        let tflops = |d: Duration| fl as f64 / d.as_secs_f64() / 1e12;
        println!(
            "{mask:<6} {:<4} hd{head_dim:<3} seq {seq:>5}: sparse-attn {:>8.3} ms ({:>6.1} TFLOP/s)   \
             cuBLAS dense {:>8.3} ms ({:>6.1} TFLOP/s)",
            T::DTYPE.name(),
            ours.as_secs_f64() * 1e3,
            tflops(ours),
            theirs.as_secs_f64() * 1e3,
            tflops(theirs)
        );

        let Some(group) = group.as_mut() else {
            continue;
        };
        group.throughput(Throughput::Elements(fl));
        group.bench_function(BenchmarkId::new("sparse-attn", seq), |bench| {
            bench.iter_custom(|iters| {
                time_gpu(gpu, iters, || {
                    gplan
                        .run(&b.q, &b.k, &b.v, &mut b.out, &mut b.lse)
                        .expect("sparse-attn")
                })
            })
        });
        group.bench_function(BenchmarkId::new("cublas-dense", seq), |bench| {
            bench.iter_custom(|iters| {
                time_gpu(gpu, iters, || {
                    dense
                        .run(&b.q, &b.k, &b.v, None, &mut b.out_f32, &mut b.lse)
                        .expect("cuBLAS path")
                })
            })
        });
    }
    if let Some(group) = group {
        group.finish();
    }
}

/// Sparse patterns at one length (f16, hd128, causal): time against causal attention and the
/// cuBLAS dense path, next to the fraction of causal attention's kv tiles each visits.
fn bench_patterns(c: &mut Option<Criterion>, gpu: &Gpu, seq: usize) {
    let globals: Vec<String> = (0..32).map(|g| (g * seq / 32 + 3).to_string()).collect();
    let globals = globals.join(",");
    let patterns = [
        (
            "causal",
            r#"{"causal": true, "components": []}"#.to_string(),
        ),
        (
            "dilated-2",
            r#"{"causal": true, "components": [{"dilated": {"stride": 2}}]}"#.into(),
        ),
        (
            "dilated-8",
            r#"{"causal": true, "components": [{"dilated": {"stride": 8}}]}"#.into(),
        ),
        (
            "global-32",
            format!(
                r#"{{"causal": true, "components": [{{"global": {{"tokens": [{globals}]}}}}]}}"#
            ),
        ),
        (
            "longformer-512+32",
            format!(
                r#"{{"causal": true, "components": [{{"sliding_window": {{"size": 512}}}}, {{"global": {{"tokens": [{globals}]}}}}]}}"#
            ),
        ),
    ];
    let problem = square_problem(seq, 128, sparse_attn::DType::F16);
    let mut b = buffers::<f16>(gpu, &problem);
    let opts = AttnOptions {
        causal: true,
        ..Default::default()
    };
    let mut dense = DenseReference::<f16>::new(gpu, &problem, &opts).expect("cuBLAS path");
    dense
        .run(&b.q, &b.k, &b.v, None, &mut b.out_f32, &mut b.lse)
        .expect("cuBLAS path");
    gpu.synchronize().expect("synchronize");
    let theirs = time_gpu(gpu, 3, || {
        dense
            .run(&b.q, &b.k, &b.v, None, &mut b.out_f32, &mut b.lse)
            .expect("cuBLAS path")
    }) / 3;
    let mut group = group(c, format!("patterns/f16/hd128/seq{seq}"));
    let mut causal_tiles = 0u64;
    let mut causal_time = Duration::ZERO;
    for (name, json) in &patterns {
        let set = sparse_attn::pattern::HeadPatterns::from_json(json).expect("pattern");
        let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).expect("plan");
        let gplan = plan.upload(gpu).expect("upload plan");
        gplan
            .run(&b.q, &b.k, &b.v, &mut b.out, &mut b.lse)
            .expect("sparse-attn");
        gpu.synchronize().expect("synchronize");
        let ours = time_gpu(gpu, 10, || {
            gplan
                .run(&b.q, &b.k, &b.v, &mut b.out, &mut b.lse)
                .expect("sparse-attn")
        }) / 10;
        let tiles = plan.meta().tiles_visited();
        if *name == "causal" {
            (causal_tiles, causal_time) = (tiles, ours);
        }
        println!(
            "pattern {name:<18} seq {seq}: sparse-attn {:>8.3} ms = {:>5.3} x causal time, \
             {:>5.3} x causal tiles; cuBLAS dense {:>8.3} ms",
            ours.as_secs_f64() * 1e3,
            ours.as_secs_f64() / causal_time.as_secs_f64(),
            tiles as f64 / causal_tiles as f64,
            theirs.as_secs_f64() * 1e3
        );
        let Some(group) = group.as_mut() else {
            continue;
        };
        group.bench_function(BenchmarkId::new(*name, seq), |bench| {
            bench.iter_custom(|iters| {
                time_gpu(gpu, iters, || {
                    gplan
                        .run(&b.q, &b.k, &b.v, &mut b.out, &mut b.lse)
                        .expect("sparse-attn")
                })
            })
        });
    }
    if let Some(group) = group {
        group.finish();
    }
}

fn main() {
    let Some(gpu) = gpu_or_skip("attention") else {
        return;
    };
    // `cargo bench` passes --bench; anything else (cargo test) is a quick smoke run. Quick
    // mode times every case of a full run without criterion.
    let quick = quick_mode();
    let full = quick || std::env::args().any(|a| a == "--bench");
    let seq_lens: &[usize] = if full { &SEQ_LENS } else { &SEQ_LENS[..2] };
    println!(
        "benches/attention on {} (sm_{}{}), batch {BATCH} x heads {HEADS}; throughput counts \
         useful FLOPs (\"elem/s\" below = FLOP/s){}",
        gpu.name().unwrap_or_default(),
        gpu.compute_capability().0,
        gpu.compute_capability().1,
        if quick {
            "; quick mode: fixed iterations, no criterion sampling"
        } else {
            ""
        }
    );
    let mut c = (!quick).then(|| Criterion::default().configure_from_args());
    for causal in [false, true] {
        for head_dim in [64, 128] {
            bench_config::<f16>(&mut c, &gpu, head_dim, causal, seq_lens);
            bench_config::<bf16>(&mut c, &gpu, head_dim, causal, seq_lens);
        }
    }
    bench_patterns(&mut c, &gpu, if full { 8192 } else { 1024 });
    if let Some(c) = c {
        c.final_summary();
    }
}
