//! The forward kernel on a GPU against the dense cuBLAS oracle (and, for small cases, the f64
//! reference). Without a GPU (or without nvcc-built kernels) every test prints why it is
//! skipped and passes, unless `SPARSE_ATTN_REQUIRE_GPU=1`, which turns absence into failure.

mod common;

use common::{
    assert_lse_close, assert_matches, base_seed, max_abs, max_abs_diff, random_qkv, random_tensor,
    reference_for, Rng,
};
use half::{bf16, f16};
use sparse_attn::backend::cublas::dense_reference;
use sparse_attn::backend::Gpu;
use sparse_attn::cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use sparse_attn::pattern::render_token_mask;
use sparse_attn::reference::causal_allowed;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, Element, Error, SeqLens};

use common::gpu;

/// Kernel vs oracle, relative to the largest reference value. Both round P to the element
/// type before P·V, at different points, and the kernel rounds its output.
fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 4e-3,
        DType::BF16 => 1.5e-2,
    }
}

/// The cuBLAS dense path for `plan`'s problem with its pattern materialised as a token mask
/// (`[num_heads, q_len, kv_len]`, uniform batches): the relative error of `out` against it,
/// and its LSE.
fn against_masked_dense<T: Element + DeviceRepr + ValidAsZeroBits>(
    gpu: &Gpu,
    plan: &AttnPlan,
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
) -> (f64, Vec<f32>) {
    let p = plan.problem();
    let (q_len, kv_len) = p.seqs().lens(0);
    let mask = render_token_mask(plan.patterns(), p.num_heads(), q_len, kv_len).unwrap();
    let (d_out, d_lse) =
        dense_reference(gpu, p, &AttnOptions::default(), Some(&mask), q, k, v).unwrap();
    let want: Vec<f64> = d_out.iter().map(|&x| x as f64).collect();
    (common::rel_error(out, &want), d_lse)
}

struct Case {
    seqs: SeqLens,
    heads: usize,
    kv_heads: usize,
    head_dim: u32,
    causal: bool,
    softcap: Option<f32>,
    /// Also compare with the f64 reference (small problems only: it is O(n^2 d) on one core).
    with_f64: bool,
}

impl Case {
    fn uniform(batch: usize, q_len: usize, kv_len: usize, head_dim: u32, causal: bool) -> Case {
        Case {
            seqs: SeqLens::Uniform {
                batch,
                q_len,
                kv_len,
            },
            heads: 4,
            kv_heads: 2,
            head_dim,
            causal,
            softcap: None,
            with_f64: q_len * kv_len <= 512 * 512,
        }
    }
}

fn check<T: Element + DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, case: &Case, seed: u64) {
    let what = format!(
        "{} {:?} heads {}/{} d{} causal={} softcap={:?} seed={seed}",
        T::DTYPE.name(),
        case.seqs,
        case.heads,
        case.kv_heads,
        case.head_dim,
        case.causal,
        case.softcap
    );
    let problem = AttnProblem::new(
        case.seqs.clone(),
        case.heads,
        case.kv_heads,
        case.head_dim,
        T::DTYPE,
    )
    .unwrap();
    let opts = AttnOptions {
        causal: case.causal,
        scale: None,
        softcap: case.softcap,
        ..Default::default()
    };
    let plan = AttnPlan::new(&problem, &opts).unwrap();
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<T>(&mut rng, &problem, 1.0, 1.0);

    let (out, lse) = plan.run_cuda_host(gpu, &q, &k, &v).unwrap();
    let (dense_out, dense_lse) = dense_reference(gpu, &problem, &opts, None, &q, &k, &v).unwrap();

    assert!(
        out.iter().all(|x| !x.to_f32().is_nan()),
        "{what}: NaN in out"
    );
    let want: Vec<f64> = dense_out.iter().map(|&x| x as f64).collect();
    let err = common::rel_error(&out, &want);
    assert!(err <= tol(T::DTYPE), "{what}: error vs cuBLAS {err:.3e}");
    assert_lse_close(&what, &lse, &dense_lse, 1e-3);
    if case.with_f64 {
        let seqs = problem.seqs().clone();
        let reference = reference_for(&plan, &q, &k, &v, |b, _, i, j| {
            let (ql, kl) = seqs.lens(b);
            !case.causal || causal_allowed(i, j, ql, kl)
        });
        assert_matches(&what, &problem, &out, &lse, &reference, tol(T::DTYPE));
        // The oracle itself against f64 (its output is f32, so tighter).
        let oracle_err = max_abs_diff(&reference.out, &dense_out);
        let max_ref = max_abs(&reference.out);
        assert!(
            oracle_err <= tol(T::DTYPE) * max_ref.max(1e-6),
            "{what}: cuBLAS oracle vs f64: {oracle_err:.3e}"
        );
    }
}

fn sweep<T: Element + DeviceRepr + ValidAsZeroBits>(test: &str, head_dim: u32) {
    let Some(gpu) = gpu(test) else { return };
    let seed = base_seed();
    let mut n = 0;
    for causal in [false, true] {
        for (batch, q_len, kv_len) in [
            (1, 1, 1),
            (2, 64, 64),
            (1, 100, 77),
            (1, 77, 300),
            (3, 128, 512),
            (1, 1, 1000),
            (2, 1024, 1024),
        ] {
            check::<T>(
                &gpu,
                &Case::uniform(batch, q_len, kv_len, head_dim, causal),
                seed + n,
            );
            n += 1;
        }
    }
}

#[test]
fn f16_hd64_against_cublas() {
    sweep::<f16>("f16_hd64_against_cublas", 64);
}

#[test]
fn f16_hd128_against_cublas() {
    sweep::<f16>("f16_hd128_against_cublas", 128);
}

#[test]
fn bf16_hd64_against_cublas() {
    sweep::<bf16>("bf16_hd64_against_cublas", 64);
}

#[test]
fn bf16_hd128_against_cublas() {
    sweep::<bf16>("bf16_hd128_against_cublas", 128);
}

#[test]
fn gqa_mqa_and_softcap() {
    let Some(gpu) = gpu("gqa_mqa_and_softcap") else {
        return;
    };
    let seed = base_seed();
    for (i, &(heads, kv_heads)) in [(8, 2), (8, 1), (6, 6)].iter().enumerate() {
        for causal in [false, true] {
            let case = Case {
                heads,
                kv_heads,
                softcap: (i == 1).then_some(5.0),
                ..Case::uniform(2, 96, 160, 64, causal)
            };
            check::<f16>(&gpu, &case, seed + i as u64);
            check::<bf16>(
                &gpu,
                &Case {
                    head_dim: 128,
                    ..case
                },
                seed + 10 + i as u64,
            );
        }
    }
}

#[test]
fn varlen_batch_of_unequal_lengths() {
    let Some(gpu) = gpu("varlen_batch_of_unequal_lengths") else {
        return;
    };
    let seed = base_seed();
    // Includes a sequence with more queries than keys (empty causal rows) and one with none.
    let seqs =
        SeqLens::varlen_from_lens(&[(17, 17), (64, 200), (130, 130), (40, 10), (0, 5), (1, 333)])
            .unwrap();
    for causal in [false, true] {
        for head_dim in [64, 128] {
            let case = Case {
                seqs: seqs.clone(),
                heads: 4,
                kv_heads: 2,
                head_dim,
                causal,
                softcap: None,
                with_f64: true,
            };
            check::<f16>(&gpu, &case, seed);
            check::<bf16>(&gpu, &case, seed + 1);
        }
    }
}

#[test]
fn run_cuda_rejects_bad_buffers_before_launching() {
    let Some(gpu) = gpu("run_cuda_rejects_bad_buffers_before_launching") else {
        return;
    };
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: 1,
            q_len: 8,
            kv_len: 8,
        },
        2,
        1,
        64,
        DType::F16,
    )
    .unwrap();
    let plan = AttnPlan::new(&problem, &AttnOptions::default()).unwrap();
    let s = gpu.stream();
    let q = s.alloc_zeros::<f16>(problem.q_elems()).unwrap();
    let kv = s.alloc_zeros::<f16>(problem.kv_elems()).unwrap();
    let short = s.alloc_zeros::<f16>(problem.kv_elems() - 1).unwrap();
    let mut out = s.alloc_zeros::<f16>(problem.q_elems()).unwrap();
    let mut lse = s.alloc_zeros::<f32>(problem.lse_elems()).unwrap();
    let mut short_lse = s.alloc_zeros::<f32>(problem.lse_elems() - 1).unwrap();
    assert!(matches!(
        plan.run_cuda(&gpu, &q, &kv, &short, &mut out, &mut lse),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        plan.run_cuda(&gpu, &q, &kv, &kv, &mut out, &mut short_lse),
        Err(Error::Shape(_))
    ));
    let qb = s.alloc_zeros::<bf16>(problem.q_elems()).unwrap();
    let kvb = s.alloc_zeros::<bf16>(problem.kv_elems()).unwrap();
    let mut outb = s.alloc_zeros::<bf16>(problem.q_elems()).unwrap();
    assert!(matches!(
        plan.run_cuda(&gpu, &qb, &kvb, &kvb, &mut outb, &mut lse),
        Err(Error::Shape(_))
    ));
    plan.run_cuda(&gpu, &q, &kv, &kv, &mut out, &mut lse)
        .unwrap();
    gpu.synchronize().unwrap();
}

#[test]
fn engine_stream_is_used_as_given() {
    let Some(gpu) = gpu("engine_stream_is_used_as_given") else {
        return;
    };
    // An engine hands us its own stream; results must be identical to the default stream's.
    let stream = gpu.context().new_stream().unwrap();
    let engine = Gpu::from_stream(stream).unwrap();
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: 2,
            q_len: 200,
            kv_len: 200,
        },
        4,
        4,
        128,
        DType::BF16,
    )
    .unwrap();
    let plan = AttnPlan::new(&problem, &AttnOptions::causal()).unwrap();
    let mut rng = Rng::new(base_seed());
    let (q, k, v) = random_qkv::<bf16>(&mut rng, &problem, 1.0, 1.0);
    let a = plan.run_cuda_host(&gpu, &q, &k, &v).unwrap();
    let b = plan.run_cuda_host(&engine, &q, &k, &v).unwrap();
    assert!(a.0 == b.0 && a.1 == b.1, "results differ between streams");
}

#[test]
fn missing_gpu_is_an_error_not_a_panic() {
    // Runs everywhere: without a driver or device this must be Err(NoDevice), never a panic.
    match Gpu::new(0) {
        Ok(_) | Err(Error::NoDevice(_)) | Err(Error::Unsupported(_)) => {}
        Err(e) => panic!("unexpected error: {e}"),
    }
    assert!(matches!(Gpu::new(4096), Err(Error::NoDevice(_))));
}

/// Block-sparse patterns on the GPU against the cuBLAS dense path with the pattern's token
/// mask materialised (`[num_heads, q_len, kv_len]`), per docs/patterns.md.
#[test]
fn sparse_patterns_against_cublas_with_materialised_mask() {
    let Some(gpu) = gpu("sparse_patterns_against_cublas_with_materialised_mask") else {
        return;
    };
    let seed = base_seed();
    let patterns = [
        r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 256}}]}"#,
        r#"{"causal": false, "components": [{"sliding_window": {"left": 100, "right": 50}}, {"global": {"tokens": [0, 7, 900]}}]}"#,
        r#"{"causal": true, "components": [{"dilated": {"stride": 3}}]}"#,
        r#"{"causal": true, "components": [{"global": {"tokens": [0, 5, 64, 299, 800]}}]}"#,
        r#"{"causal": false, "components": [{"dilated": {"stride": 4}}, {"global": {"tokens": [1, 130, 131, 777]}}]}"#,
        r#"{"causal": false, "components": [{"block_mask": {"block_q": 128, "block_k": 64, "mask": [[1,0,1,0],[0,1,0,1],[1,1,0,0]]}}]}"#,
        r#"{"causal": false, "components": [{"bigbird": {"block": 64, "window_blocks": 3, "global_blocks": 1, "random_blocks": 2, "seed": 1}}]}"#,
        r#"{"heads": [
            {"causal": true, "components": [{"dilated": {"stride": 2}}]},
            {"causal": true, "components": [{"sliding_window": {"size": 64}}]},
            {"causal": false, "components": []},
            {"causal": true, "components": [{"sinks": {"count": 1}}, {"sliding_window": {"size": 16}}]}
        ]}"#,
    ];
    for (n, json) in patterns.iter().enumerate() {
        for (q_len, kv_len) in [(1000, 1000), (300, 1100)] {
            let problem = AttnProblem::new(
                SeqLens::Uniform {
                    batch: 1,
                    q_len,
                    kv_len,
                },
                4,
                2,
                128,
                DType::BF16,
            )
            .unwrap();
            let set = sparse_attn::pattern::HeadPatterns::from_json(json).unwrap();
            let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
            let mut rng = Rng::new(seed ^ n as u64);
            let (q, k, v) = random_qkv::<bf16>(&mut rng, &problem, 1.0, 1.0);
            let (out, lse) = plan.run_cuda_host(&gpu, &q, &k, &v).unwrap();
            let (err, d_lse) = against_masked_dense(&gpu, &plan, &q, &k, &v, &out);
            let what = format!("pattern {n} q {q_len} kv {kv_len} seed {seed}");
            assert!(err <= tol(DType::BF16), "{what}: error vs cuBLAS {err:.3e}");
            assert_lse_close(&what, &lse, &d_lse, 1e-3);
        }
    }
}

/// K/V through a paged cache on the GPU (shuffled pages, page sizes 16 and 128, a ring for a
/// streaming pattern) against the cuBLAS path on the contiguous tensors.
#[test]
fn paged_kv_against_cublas() {
    use sparse_attn::attention::PagedLayout;
    use sparse_attn::backend::DevicePagedKv;
    let Some(gpu) = gpu("paged_kv_against_cublas") else {
        return;
    };
    let seed = base_seed();
    let streaming = r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 256}}]}"#;
    for (pattern, page, sink_pages, ring_pages) in [
        (r#"{"causal": true, "components": []}"#, 16, 0, 0),
        (r#"{"causal": true, "components": []}"#, 128, 0, 0),
        (streaming, 16, 1, 17),
    ] {
        let seqs = SeqLens::Uniform {
            batch: 3,
            q_len: 1,
            kv_len: 3000,
        };
        let problem = AttnProblem::new(seqs.clone(), 8, 2, 128, DType::F16).unwrap();
        let set = sparse_attn::pattern::HeadPatterns::from_json(pattern).unwrap();
        let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
        let mut rng = Rng::new(seed);
        let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
        let pool = common::paged::build_pool(
            &mut rng, &seqs, 2, 128, &k, &v, page, sink_pages, ring_pages,
        );
        let stream = gpu.stream();
        let (qd, kp, vp) = (
            stream.clone_htod(&q).unwrap(),
            stream.clone_htod(&pool.k).unwrap(),
            stream.clone_htod(&pool.v).unwrap(),
        );
        let mut out = stream.alloc_zeros::<f16>(problem.q_elems()).unwrap();
        let mut lse = stream.alloc_zeros::<f32>(problem.lse_elems()).unwrap();
        let layout: PagedLayout = pool.layout;
        let kv = DevicePagedKv {
            k_pages: &kp,
            v_pages: &vp,
            block_table: &pool.table,
            layout,
        };
        plan.upload(&gpu)
            .unwrap()
            .run_paged(&qd, &kv, &mut out, &mut lse)
            .unwrap();
        let out = stream.clone_dtoh(&out).unwrap();
        let (err, _) = against_masked_dense(&gpu, &plan, &q, &k, &v, &out);
        assert!(
            err <= tol(DType::F16),
            "page {page} ring {ring_pages}: error vs cuBLAS {err:.3e}"
        );
    }
}

/// A decode loop on the GPU through the paged cache's device storage: chunked prefill, then
/// token-by-token decode with the append kernel writing each token, a StreamingLLM ring that
/// wraps; the last step against the cuBLAS path on the contiguous K/V.
#[test]
fn device_kv_cache_decode_loop_against_cublas() {
    use sparse_attn::kv_cache::{DeviceKvStorage, KvCache, KvCacheConfig, LayerCapacity, PoolSize};
    let Some(gpu) = gpu("device_kv_cache_decode_loop_against_cublas") else {
        return;
    };
    let seed = base_seed();
    let (hq, hk, d, page, total, chunk) = (8usize, 2usize, 128usize, 16usize, 1200usize, 100usize);
    let pattern = r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 256}}]}"#;
    let set = sparse_attn::pattern::HeadPatterns::from_json(pattern).unwrap();
    let config = KvCacheConfig {
        num_layers: 1,
        num_kv_heads: hk,
        head_dim: d,
        dtype: DType::F16,
        page_size: page,
        max_seq_len: 4096,
        max_chunk: chunk,
        pool: PoolSize::Sequences(1),
    };
    let cap = LayerCapacity::from_patterns(
        &set,
        sparse_attn::kv_cache::PageSize::new(page).unwrap(),
        chunk,
    )
    .unwrap();
    let mut cache = KvCache::new(config, vec![cap]).unwrap();
    let mut store = DeviceKvStorage::<f16>::new(&gpu, &cache).unwrap();
    let seq = cache.add_sequence();
    let mut rng = Rng::new(seed);
    let q: Vec<f16> = random_tensor(&mut rng, total * hq * d, 1.0);
    let k: Vec<f16> = random_tensor(&mut rng, total * hk * d, 1.0);
    let v: Vec<f16> = random_tensor(&mut rng, total * hk * d, 1.0);
    let stream = gpu.stream().clone();
    let mut pos = 0;
    let mut last = Vec::new();
    while pos < total {
        let n = if pos < 1000 { chunk } else { 1 };
        let placement = cache.reserve_append(seq, n).unwrap();
        let kd = stream
            .clone_htod(&k[pos * hk * d..(pos + n) * hk * d])
            .unwrap();
        let vd = stream
            .clone_htod(&v[pos * hk * d..(pos + n) * hk * d])
            .unwrap();
        store.write_kv(0, &placement, &kd, &vd).unwrap();
        pos += n;
        let problem = AttnProblem::new(
            SeqLens::Uniform {
                batch: 1,
                q_len: n,
                kv_len: pos,
            },
            hq,
            hk,
            d as u32,
            DType::F16,
        )
        .unwrap();
        let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
        let table = cache.block_table(0, &[seq]).unwrap();
        let qd = stream
            .clone_htod(&q[(pos - n) * hq * d..pos * hq * d])
            .unwrap();
        let mut out = stream.alloc_zeros::<f16>(problem.q_elems()).unwrap();
        let mut lse = stream.alloc_zeros::<f32>(problem.lse_elems()).unwrap();
        let kv = store.paged(0, &table).unwrap();
        plan.upload(&gpu)
            .unwrap()
            .run_paged(&qd, &kv, &mut out, &mut lse)
            .unwrap();
        last = stream.clone_dtoh(&out).unwrap();
    }
    // The last step (query at position total - 1) against the dense path over all K/V.
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: 1,
            q_len: 1,
            kv_len: total,
        },
        hq,
        hk,
        d as u32,
        DType::F16,
    )
    .unwrap();
    let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
    let q_last = &q[(total - 1) * hq * d..];
    let (err, _) = against_masked_dense(&gpu, &plan, q_last, &k, &v, &last);
    assert!(
        err <= tol(DType::F16),
        "decode loop vs cuBLAS: {err:.3e} (seed {seed})"
    );
}

/// `decode_cuda` (append kernel + paged steps on the GPU) equals the one-shot GPU run over
/// all T tokens.
#[test]
fn decode_cuda_equals_one_shot_run() {
    use sparse_attn::kv_cache::{decode_cuda, DecodeConfig};
    let Some(gpu) = gpu("decode_cuda_equals_one_shot_run") else {
        return;
    };
    let seed = base_seed();
    let t = 700;
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: 2,
            q_len: t,
            kv_len: t,
        },
        8,
        2,
        128,
        DType::BF16,
    )
    .unwrap();
    let set = sparse_attn::pattern::HeadPatterns::from_json(
        r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 128}}]}"#,
    )
    .unwrap();
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<bf16>(&mut rng, &problem, 1.0, 1.0);
    let config = DecodeConfig {
        page_size: 16,
        prefill: 500,
        chunk: Some(100),
        ..Default::default()
    };
    let r = decode_cuda(&gpu, &problem, &set, &config, &q, &k, &v).unwrap();
    let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
    let (out, _) = plan.run_cuda_host(&gpu, &q, &k, &v).unwrap();
    let want: Vec<f64> = out.iter().map(|x| x.to_f64()).collect();
    let err = common::rel_error(&r.out, &want);
    assert!(
        err <= tol(DType::BF16),
        "decode_cuda vs one-shot: {err:.3e} (seed {seed})"
    );
}

/// A small forward pass through this crate's kernels only (no cuBLAS): f16, hd64, causal GQA
/// 4:2, unsplit and with split-KV forced (forward and combine kernels), against the f64
/// reference. scripts/gpu-run.sh runs it first, alone, with `CUDA_LAUNCH_BLOCKING=1`, and as
/// its compute-sanitizer forward case, so it must stay small.
#[test]
fn small_forward_split_kv_against_f64() {
    let Some(gpu) = gpu("small_forward_split_kv_against_f64") else {
        return;
    };
    let seed = base_seed();
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: 2,
            q_len: 100,
            kv_len: 300,
        },
        4,
        2,
        64,
        DType::F16,
    )
    .unwrap();
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
    for splits in [1, 3] {
        let plan = AttnPlan::new(&problem, &AttnOptions::causal())
            .unwrap()
            .with_num_splits(splits)
            .unwrap();
        let (out, lse) = plan.run_cuda_host(&gpu, &q, &k, &v).unwrap();
        let seqs = problem.seqs().clone();
        let reference = reference_for(&plan, &q, &k, &v, |b, _, i, j| {
            let (ql, kl) = seqs.lens(b);
            causal_allowed(i, j, ql, kl)
        });
        let what = format!("small causal forward, {splits} split(s), seed {seed}");
        assert_matches(&what, &problem, &out, &lse, &reference, tol(DType::F16));
    }
}

/// A small decode through this crate's kernels only (append, paged forward with GQA packing
/// and split-KV, combine; no cuBLAS): `decode_cuda` against the f64 reference of the whole
/// sequence. scripts/gpu-run.sh runs it as its compute-sanitizer decode case.
#[test]
fn small_decode_cuda_against_f64() {
    use sparse_attn::kv_cache::{decode_cuda, DecodeConfig};
    let Some(gpu) = gpu("small_decode_cuda_against_f64") else {
        return;
    };
    let seed = base_seed();
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: 2,
            q_len: 48,
            kv_len: 48,
        },
        4,
        2,
        64,
        DType::F16,
    )
    .unwrap();
    let set = sparse_attn::pattern::HeadPatterns::from_json(
        r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 16}}]}"#,
    )
    .unwrap();
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
    let config = DecodeConfig {
        page_size: 8,
        prefill: 24,
        chunk: Some(8),
        ..Default::default()
    };
    let r = decode_cuda(&gpu, &problem, &set, &config, &q, &k, &v).unwrap();
    let plan = AttnPlan::with_patterns(&problem, &set, &AttnOptions::default()).unwrap();
    let reference = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
    let what = format!("small decode (prefill 24 in chunks of 8, 24 steps), seed {seed}");
    assert_matches(&what, &problem, &r.out, &r.lse, &reference, tol(DType::F16));
}

/// Issue 12, item 3: one decode step of a run-time plan (attention + split-KV combine)
/// captured in a CUDA graph and replayed over many steps while the engine rewrites the
/// lengths, the block table and the pages between replays; every replay matches the same
/// step launched uncaptured, bit for bit. (The append runs outside the graph: its slot
/// upload is per step until the append takes its slots from device data too.)
#[test]
fn decode_step_captured_in_a_cuda_graph_replays_bit_for_bit() {
    use sparse_attn::backend::DeviceStep;
    use sparse_attn::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    use sparse_attn::kv_cache::{
        DeviceKvStorage, KvCache, KvCacheConfig, LayerCapacity, PageSize, PoolSize,
    };
    use sparse_attn::pattern::HeadPatterns;
    let Some(gpu) = gpu("decode_step_captured_in_a_cuda_graph_replays_bit_for_bit") else {
        return;
    };
    let (batch, heads, kv_heads, d, max_kv) = (4usize, 8usize, 2usize, 128usize, 2048usize);
    let set = HeadPatterns::from_json(
        r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 512}}]}"#,
    )
    .unwrap();
    let max = SeqLens::Uniform {
        batch,
        q_len: 1,
        kv_len: max_kv,
    };
    let problem = AttnProblem::new(max, heads, kv_heads, d as u32, DType::BF16).unwrap();
    let plan = AttnPlan::for_max_lengths(&problem, &set, &AttnOptions::default()).unwrap();
    let gplan = plan.upload(&gpu).unwrap();
    let capacity = LayerCapacity::from_patterns(&set, PageSize::new(16).unwrap(), 1).unwrap();
    let mut cache = KvCache::new(
        KvCacheConfig {
            num_layers: 1,
            num_kv_heads: kv_heads,
            head_dim: d,
            dtype: DType::BF16,
            page_size: 16,
            max_seq_len: max_kv,
            max_chunk: 1,
            pool: PoolSize::Sequences(batch),
        },
        vec![capacity],
    )
    .unwrap();
    let mut store = DeviceKvStorage::<bf16>::new(&gpu, &cache).unwrap();
    let ids: Vec<_> = (0..batch).map(|_| cache.add_sequence()).collect();
    let stream = gpu.stream();
    let stride = cache.stride(0).unwrap();
    let mut cu_q = stream.alloc_zeros::<i32>(batch + 1).unwrap();
    let mut cu_k = stream.alloc_zeros::<i32>(batch + 1).unwrap();
    let mut table_d = stream.alloc_zeros::<i32>(batch * stride).unwrap();
    let mut q = stream.alloc_zeros::<bf16>(batch * heads * d).unwrap();
    let mut out = stream.alloc_zeros::<bf16>(batch * heads * d).unwrap();
    let mut lse = stream.alloc_zeros::<f32>(batch * heads).unwrap();
    let mut out_ref = stream.alloc_zeros::<bf16>(batch * heads * d).unwrap();
    let mut lse_ref = stream.alloc_zeros::<f32>(batch * heads).unwrap();
    let mut rng = Rng::new(base_seed());
    let mut lens = vec![0usize; batch];
    let mut graph = None;
    for step in 0..1200 {
        // The engine's step: append (outside the graph), then rewrite lengths, table, q.
        for (b, &id) in ids.iter().enumerate() {
            if (step + b) % 5 == 4 && lens[b] > 0 {
                continue; // this sequence idles this step
            }
            let k: Vec<bf16> = random_tensor(&mut rng, kv_heads * d, 1.0);
            let v: Vec<bf16> = random_tensor(&mut rng, kv_heads * d, 1.0);
            let placement = cache.reserve_append(id, 1).unwrap();
            let (kd, vd) = (
                stream.clone_htod(&k).unwrap(),
                stream.clone_htod(&v).unwrap(),
            );
            store.write_kv(0, &placement, &kd, &vd).unwrap();
            lens[b] += 1;
        }
        let table = cache.block_table(0, &ids).unwrap();
        let seqs =
            SeqLens::varlen_from_lens(&lens.iter().map(|&k| (1, k)).collect::<Vec<_>>()).unwrap();
        let (cq, ck) = seqs.cu_seqlens();
        stream.memcpy_htod(&cq, &mut cu_q).unwrap();
        stream.memcpy_htod(&ck, &mut cu_k).unwrap();
        stream.memcpy_htod(&table.table, &mut table_d).unwrap();
        let qh: Vec<bf16> = random_tensor(&mut rng, batch * heads * d, 1.0);
        stream.memcpy_htod(&qh, &mut q).unwrap();
        let kv = store.paged(0, &table).unwrap();
        let dstep = DeviceStep {
            cu_seqlens_q: &cu_q,
            cu_seqlens_k: &cu_k,
            k_pages: kv.k_pages,
            v_pages: kv.v_pages,
            block_table: &table_d,
            layout: table.paged_layout(),
        };
        if graph.is_none() {
            stream.synchronize().unwrap();
            stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .unwrap();
            gplan.launch_step(&dstep, &q, &mut out, &mut lse).unwrap();
            graph = Some(
                stream
                    .end_capture(CUgraphInstantiate_flags(0))
                    .unwrap()
                    .expect("a captured graph"),
            );
        }
        graph.as_ref().unwrap().launch().unwrap();
        gplan
            .launch_step(&dstep, &q, &mut out_ref, &mut lse_ref)
            .unwrap();
        if step % 97 == 0 || step == 1199 {
            let (a, b) = (
                stream.clone_dtoh(&out).unwrap(),
                stream.clone_dtoh(&out_ref).unwrap(),
            );
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "step {step} ({lens:?}): graph replay vs uncaptured launch"
            );
            let (a, b) = (
                stream.clone_dtoh(&lse).unwrap(),
                stream.clone_dtoh(&lse_ref).unwrap(),
            );
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "step {step}: lse"
            );
        }
    }
    assert!(
        lens.iter().all(|&k| k > 16 + 512 + 16),
        "every ring wrapped"
    );
}

/// Issue 12, item 2: the contiguous strided step over device lengths
/// (`GpuPlan::launch_contiguous_step`: fused QKV of the plan's capacity, token-major LSE,
/// split-KV so the combine runs too) captured in a CUDA graph once and replayed while the
/// engine rewrites the lengths and the fused buffer between replays; every replay matches the
/// uncaptured launch bit for bit, and the host-length convenience (`run_step_strided`) gives
/// the same output bits for the step's rows.
#[test]
fn contiguous_strided_step_captured_in_a_cuda_graph_replays_bit_for_bit() {
    use sparse_attn::attention::{LseLayout, LseStrides, TensorLayout};
    use sparse_attn::backend::DeviceLens;
    use sparse_attn::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    use sparse_attn::pattern::HeadPatterns;
    let Some(gpu) = gpu("contiguous_strided_step_captured_in_a_cuda_graph_replays_bit_for_bit")
    else {
        return;
    };
    let (batch, heads, kv_heads, d, max_q, max_k) = (3usize, 4usize, 2usize, 64usize, 4, 512);
    let set = HeadPatterns::from_json(
        r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 100}}]}"#,
    )
    .unwrap();
    let max = SeqLens::varlen_from_lens(&vec![(max_q, max_k); batch]).unwrap();
    let problem = AttnProblem::new(max, heads, kv_heads, d as u32, DType::F16).unwrap();
    let plan = AttnPlan::for_max_lengths(&problem, &set, &AttnOptions::default())
        .unwrap()
        .with_num_splits(2)
        .unwrap();
    let gplan = plan.upload(&gpu).unwrap();
    let stream = gpu.stream();
    let (cap_q, cap_k) = problem.seqs().totals();
    let row = (heads + 2 * kv_heads) * d;
    let [_, k_off, v_off] = TensorLayout::fused_offsets(heads, kv_heads, d);
    let layout = TensorLayout {
        lse: LseLayout::Strided(LseStrides::token_major(heads)),
        ..TensorLayout::fused_qkv(heads, kv_heads, d)
    };
    let mut fused = stream.alloc_zeros::<f16>(cap_q.max(cap_k) * row).unwrap();
    let mut cu_q = stream.alloc_zeros::<i32>(batch + 1).unwrap();
    let mut cu_k = stream.alloc_zeros::<i32>(batch + 1).unwrap();
    let mut out = stream.alloc_zeros::<f16>(cap_q * heads * d).unwrap();
    let mut lse = stream.alloc_zeros::<f32>(cap_q * heads).unwrap();
    let mut out_ref = stream.alloc_zeros::<f16>(cap_q * heads * d).unwrap();
    let mut lse_ref = stream.alloc_zeros::<f32>(cap_q * heads).unwrap();
    let mut rng = Rng::new(base_seed());
    let mut graph = None;
    for step in 0..24 {
        // The engine's step: new lengths (decode rows, short prefill chunks, idle slots) and
        // new activations, written into the buffers the graph reads.
        let lens: Vec<(usize, usize)> = (0..batch)
            .map(|_| {
                let q = rng.below(max_q as u64 + 1) as usize;
                let k = q + rng.below((max_k - q) as u64 + 1) as usize;
                (q, k)
            })
            .collect();
        let seqs = SeqLens::varlen_from_lens(&lens).unwrap();
        let (cq, ck) = seqs.cu_seqlens();
        stream.memcpy_htod(&cq, &mut cu_q).unwrap();
        stream.memcpy_htod(&ck, &mut cu_k).unwrap();
        let fused_h: Vec<f16> = random_tensor(&mut rng, fused.len(), 1.0);
        stream.memcpy_htod(&fused_h, &mut fused).unwrap();
        let lens_d = DeviceLens {
            cu_seqlens_q: &cu_q,
            cu_seqlens_k: &cu_k,
        };
        let (qv, kv, vv) = (fused.slice(..), fused.slice(k_off..), fused.slice(v_off..));
        if graph.is_none() {
            stream.synchronize().unwrap();
            stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .unwrap();
            gplan
                .launch_contiguous_step(
                    &lens_d,
                    &qv,
                    &kv,
                    &vv,
                    &mut out,
                    Some(lse.as_view_mut()),
                    &layout,
                )
                .unwrap();
            graph = Some(
                stream
                    .end_capture(CUgraphInstantiate_flags(0))
                    .unwrap()
                    .expect("a captured graph"),
            );
        }
        graph.as_ref().unwrap().launch().unwrap();
        gplan
            .launch_contiguous_step(
                &lens_d,
                &qv,
                &kv,
                &vv,
                &mut out_ref,
                Some(lse_ref.as_view_mut()),
                &layout,
            )
            .unwrap();
        let total_q = seqs.totals().0;
        let (a, b) = (
            stream.clone_dtoh(&out).unwrap(),
            stream.clone_dtoh(&out_ref).unwrap(),
        );
        let rows = total_q * heads * d;
        assert!(
            a[..rows]
                .iter()
                .zip(&b[..rows])
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "step {step} ({lens:?}): graph replay vs uncaptured launch"
        );
        let (la, lb) = (
            stream.clone_dtoh(&lse).unwrap(),
            stream.clone_dtoh(&lse_ref).unwrap(),
        );
        let n = total_q * heads;
        assert!(
            la[..n]
                .iter()
                .zip(&lb[..n])
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "step {step}: lse"
        );
        if step % 8 == 0 {
            // The host-length convenience over step-sized views: the same output rows.
            let mut out_h = stream.alloc_zeros::<f16>(rows.max(1)).unwrap();
            gplan
                .run_step_strided(&seqs, &qv, &kv, &vv, &mut out_h, None, &layout)
                .unwrap();
            let c = stream.clone_dtoh(&out_h).unwrap();
            assert!(
                c[..rows]
                    .iter()
                    .zip(&b[..rows])
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "step {step}: run_step_strided vs launch_contiguous_step"
            );
        }
    }
}

#[test]
fn sink_logits_and_alibi_match_the_reference() {
    // Prefill (split and not), GQA-packed split decode rows, every head_dim; then the decode
    // driver with the append kernel: each against the f64 reference.
    use sparse_attn::kv_cache::{decode_cuda, DecodeConfig};
    let Some(gpu) = gpu("sink_logits_and_alibi_match_the_reference") else {
        return;
    };
    let seed = base_seed();
    let mut rng = Rng::new(seed);
    let heads = 8;
    let opts = AttnOptions {
        sink_logits: Some((0..heads).map(|_| 3.0 * rng.unit()).collect()),
        alibi_slopes: Some(sparse_attn::shape::alibi_slopes(heads)),
        ..Default::default()
    };
    let streaming = sparse_attn::pattern::HeadPatterns::from_json(
        r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 100}}]}"#,
    )
    .unwrap();
    for head_dim in sparse_attn::HeadDim::SUPPORTED {
        for (q_len, kv_len) in [(200, 260), (1, 700)] {
            let problem = AttnProblem::new(
                SeqLens::Uniform {
                    batch: 2,
                    q_len,
                    kv_len,
                },
                heads,
                2,
                head_dim,
                DType::BF16,
            )
            .unwrap();
            let plan = AttnPlan::with_patterns(&problem, &streaming, &opts).unwrap();
            let (q, k, v) = random_qkv::<bf16>(&mut rng, &problem, 1.0, 1.0);
            let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
            for splits in [1, 4] {
                let p = plan.clone().with_num_splits(splits).unwrap();
                let (out, lse) = p.run_cuda_host(&gpu, &q, &k, &v).unwrap();
                let what = format!("hd{head_dim} q {q_len} kv {kv_len} splits {splits}");
                assert_matches(&what, &problem, &out, &lse, &want, tol(DType::BF16));
            }
        }
    }
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: 2,
            q_len: 150,
            kv_len: 150,
        },
        heads,
        2,
        64,
        DType::F16,
    )
    .unwrap();
    let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
    let config = DecodeConfig {
        page_size: 16,
        prefill: 100,
        chunk: Some(40),
        sink_logits: opts.sink_logits.clone(),
        alibi_slopes: opts.alibi_slopes.clone(),
        ..Default::default()
    };
    let r = decode_cuda(&gpu, &problem, &streaming, &config, &q, &k, &v).unwrap();
    let plan = AttnPlan::with_patterns(&problem, &streaming, &opts).unwrap();
    let want = reference_for(&plan, &q, &k, &v, |b, h, i, j| plan.allowed(b, h, i, j));
    assert_matches(
        "decode driver",
        &problem,
        &r.out,
        &r.lse,
        &want,
        tol(DType::F16),
    );
}

/// Explicit strides and optional LSE on the GPU (issue 12): a mixed step from one fused QKV
/// buffer on the device into a padded out (`run_step_strided`, contiguous K/V) matches the
/// reference, running it again without an LSE buffer gives the same bits, a paged step
/// (`launch_step_strided`) over a sub-view of a larger q buffer writes only its rows, and the
/// capture-safe contiguous step (`launch_contiguous_step`, device lengths, buffers of the
/// plan's capacity) with a token-major LSE in a view at an offset of a larger buffer gives
/// the bits of the first run and writes nothing before the view.
#[test]
fn strided_steps_and_optional_lse_on_the_gpu() {
    use common::paged::build_pool;
    use sparse_attn::attention::{LseLayout, LseStrides, TensorLayout, TensorStrides};
    use sparse_attn::backend::{DeviceLens, DeviceStep};
    use sparse_attn::pattern::HeadPatterns;
    let Some(gpu) = gpu("strided_steps_and_optional_lse_on_the_gpu") else {
        return;
    };
    let (heads, kv_heads, d) = (4usize, 2usize, 64usize);
    let set = HeadPatterns::from_json(
        r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 100}}]}"#,
    )
    .unwrap();
    let max = SeqLens::varlen_from_lens(&[(24, 400); 3]).unwrap();
    let problem = AttnProblem::new(max, heads, kv_heads, d as u32, DType::F16).unwrap();
    let plan = AttnPlan::for_max_lengths(&problem, &set, &AttnOptions::default())
        .unwrap()
        .with_num_splits(2)
        .unwrap();
    let gplan = plan.upload(&gpu).unwrap();
    let stream = gpu.stream();
    let capacity = problem.seqs().totals().0;
    let seqs = SeqLens::varlen_from_lens(&[(1, 300), (24, 24), (0, 0)]).unwrap();
    let step = AttnProblem::new(seqs.clone(), heads, kv_heads, d as u32, DType::F16).unwrap();
    let lists = AttnPlan::with_patterns(&step, &set, &AttnOptions::default()).unwrap();
    let mut rng = Rng::new(base_seed());
    let (q, k, v) = random_qkv::<f16>(&mut rng, &step, 1.0, 1.0);
    let want = reference_for(&lists, &q, &k, &v, |b, h, i, j| lists.allowed(b, h, i, j));
    let (total_q, total_k) = seqs.totals();

    // Fused [tokens, (h + 2 hk) d] on the host, then on the device.
    let row = (heads + 2 * kv_heads) * d;
    let rows = total_q.max(total_k);
    let mut fused = vec![f16::from_f32(0.0); rows * row];
    for t in 0..total_q {
        fused[t * row..][..heads * d].copy_from_slice(&q[t * heads * d..][..heads * d]);
    }
    for t in 0..total_k {
        let kv_row = kv_heads * d;
        fused[t * row + heads * d..][..kv_row].copy_from_slice(&k[t * kv_row..][..kv_row]);
        fused[t * row + (heads + kv_heads) * d..][..kv_row]
            .copy_from_slice(&v[t * kv_row..][..kv_row]);
    }
    let fused_d = stream.clone_htod(&fused).unwrap();
    let [_, k_off, v_off] = TensorLayout::fused_offsets(heads, kv_heads, d);
    let pad_row = heads * d + 16;
    let layout = TensorLayout {
        out: TensorStrides {
            row: pad_row,
            head: d,
        },
        ..TensorLayout::fused_qkv(heads, kv_heads, d)
    };
    let mut out = stream
        .clone_htod(&vec![f16::from_f32(-7.0); total_q * pad_row])
        .unwrap();
    let mut lse = stream.alloc_zeros::<f32>(heads * capacity).unwrap();
    gplan
        .run_step_strided(
            &seqs,
            &fused_d.slice(..),
            &fused_d.slice(k_off..),
            &fused_d.slice(v_off..),
            &mut out,
            Some(lse.as_view_mut()),
            &layout,
        )
        .unwrap();
    let got = stream.clone_dtoh(&out).unwrap();
    let unpadded: Vec<f16> = got
        .chunks(pad_row)
        .flat_map(|r| r[..heads * d].to_vec())
        .collect();
    assert!(got
        .chunks(pad_row)
        .all(|r| r[heads * d..].iter().all(|x| x.to_f32() == -7.0)));
    let lse_h: Vec<f32> = stream
        .clone_dtoh(&lse)
        .unwrap()
        .chunks(capacity)
        .flat_map(|r| r[..total_q].to_vec())
        .collect();
    assert_matches(
        "fused/padded",
        &step,
        &unpadded,
        &lse_h,
        &want,
        tol(DType::F16),
    );
    // No LSE buffer: the same output bits.
    let mut out2 = stream
        .clone_htod(&vec![f16::from_f32(-7.0); total_q * pad_row])
        .unwrap();
    gplan
        .run_step_strided(
            &seqs,
            &fused_d.slice(..),
            &fused_d.slice(k_off..),
            &fused_d.slice(v_off..),
            &mut out2,
            None,
            &layout,
        )
        .unwrap();
    let got2 = stream.clone_dtoh(&out2).unwrap();
    assert!(got
        .iter()
        .zip(&got2)
        .all(|(a, b)| a.to_bits() == b.to_bits()));

    // Paged: q a view into a larger buffer, out packed, no LSE.
    let pool = build_pool(&mut rng, &seqs, kv_heads, d, &k, &v, 16, 1, 12);
    let (kp, vp) = (
        stream.clone_htod(&pool.k).unwrap(),
        stream.clone_htod(&pool.v).unwrap(),
    );
    let table = stream.clone_htod(&pool.table).unwrap();
    let (cq, ck) = seqs.cu_seqlens();
    let (cu_q, cu_k) = (
        stream.clone_htod(&cq).unwrap(),
        stream.clone_htod(&ck).unwrap(),
    );
    let mut q_big = vec![f16::from_f32(0.0); (capacity + 8) * heads * d];
    q_big[8 * heads * d..][..q.len()].copy_from_slice(&q);
    let q_big_d = stream.clone_htod(&q_big).unwrap();
    let mut out_p = stream.alloc_zeros::<f16>(capacity * heads * d).unwrap();
    let dstep = DeviceStep {
        cu_seqlens_q: &cu_q,
        cu_seqlens_k: &cu_k,
        k_pages: &kp,
        v_pages: &vp,
        block_table: &table,
        layout: pool.layout,
    };
    gplan
        .launch_step_strided(
            &dstep,
            &q_big_d.slice(8 * heads * d..),
            &mut out_p,
            None,
            &TensorLayout::packed(heads, kv_heads, d),
        )
        .unwrap();
    let got_p = stream.clone_dtoh(&out_p).unwrap();
    let err = common::rel_error(&got_p[..q.len()], &want.out);
    assert!(err <= tol(DType::F16), "paged strided: {err:.3e}");
    // A misaligned view is a typed error.
    let r = gplan.launch_step_strided(
        &dstep,
        &q_big_d.slice(1..),
        &mut out_p,
        None,
        &TensorLayout::packed(heads, kv_heads, d),
    );
    assert!(matches!(r, Err(Error::Layout { .. })), "{r:?}");

    // The capture-safe contiguous step: the same step over the device lengths above, the
    // fused buffer and the padded out sized for the plan's capacity, the LSE token-major
    // (`[capacity, heads]`): the bits of `run_step_strided`, nothing past the step written.
    let (cap_q, cap_k) = problem.seqs().totals();
    let mut fused_cap = vec![f16::from_f32(0.0); cap_q.max(cap_k) * row];
    fused_cap[..fused.len()].copy_from_slice(&fused);
    let fused_cap_d = stream.clone_htod(&fused_cap).unwrap();
    let mut out_c = stream
        .clone_htod(&vec![f16::from_f32(-7.0); cap_q * pad_row])
        .unwrap();
    // The LSE goes into a view 37 elements into a larger buffer (an engine's LSE arena).
    const LSE_AT: usize = 37;
    let mut lse_c = stream
        .clone_htod(&vec![-5.0f32; LSE_AT + cap_q * heads])
        .unwrap();
    let token_major = TensorLayout {
        lse: LseLayout::Strided(LseStrides::token_major(heads)),
        ..layout
    };
    let lens_d = DeviceLens {
        cu_seqlens_q: &cu_q,
        cu_seqlens_k: &cu_k,
    };
    gplan
        .launch_contiguous_step(
            &lens_d,
            &fused_cap_d.slice(..),
            &fused_cap_d.slice(k_off..),
            &fused_cap_d.slice(v_off..),
            &mut out_c,
            Some(lse_c.slice_mut(LSE_AT..)),
            &token_major,
        )
        .unwrap();
    let got_c = stream.clone_dtoh(&out_c).unwrap();
    assert!(got_c[..got.len()]
        .iter()
        .zip(&got)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(got_c[got.len()..].iter().all(|x| x.to_f32() == -7.0));
    let lse_plan = stream.clone_dtoh(&lse).unwrap();
    let lse_all = stream.clone_dtoh(&lse_c).unwrap();
    assert!(
        lse_all[..LSE_AT].iter().all(|x| *x == -5.0),
        "written before the LSE view"
    );
    let lse_tm = &lse_all[LSE_AT..];
    for t in 0..cap_q {
        for h in 0..heads {
            let seen = lse_tm[t * heads + h];
            let want = if t < total_q {
                lse_plan[h * capacity + t]
            } else {
                -5.0
            };
            assert_eq!(seen.to_bits(), want.to_bits(), "token-major lse ({t}, {h})");
        }
    }
    // Host-checkable bad input is typed: lengths of the wrong size, an LSE one short.
    let short_cu = stream.alloc_zeros::<i32>(seqs.batch()).unwrap();
    let r = gplan.launch_contiguous_step(
        &DeviceLens {
            cu_seqlens_q: &short_cu,
            cu_seqlens_k: &cu_k,
        },
        &fused_cap_d.slice(..),
        &fused_cap_d.slice(k_off..),
        &fused_cap_d.slice(v_off..),
        &mut out_c,
        None,
        &token_major,
    );
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
    let mut lse_short = stream.alloc_zeros::<f32>(cap_q * heads - 1).unwrap();
    let r = gplan.launch_contiguous_step(
        &lens_d,
        &fused_cap_d.slice(..),
        &fused_cap_d.slice(k_off..),
        &fused_cap_d.slice(v_off..),
        &mut out_c,
        Some(lse_short.as_view_mut()),
        &token_major,
    );
    assert!(
        matches!(r, Err(Error::Layout { tensor: "lse", .. })),
        "{r:?}"
    );
}

/// The continuous-batching example's CUDA path (`kv_cache::batching::run_cuda`: pages written
/// by the append kernel, each plan uploaded once, every layer of every step through
/// `GpuPlan::launch_step` over buffers sized once) against the f64 reference, layer by layer
/// and step by step, on the example's own workload.
#[test]
fn continuous_batching_on_the_gpu_matches_the_reference() {
    use sparse_attn::kv_cache::batching::{self, BatchingConfig, ReferenceCheck};
    let Some(gpu) = gpu("continuous_batching_on_the_gpu_matches_the_reference") else {
        return;
    };
    let seed = base_seed();
    let config = BatchingConfig {
        seed,
        ..BatchingConfig::gemma3_small().unwrap()
    };
    let requests = batching::demo_requests(8, seed);
    let mut check = ReferenceCheck::new();
    let report = batching::run_cuda::<bf16>(&gpu, &config, &requests, |s| {
        let e = check.check(s).unwrap();
        assert!(
            e.out <= tol(DType::BF16) && e.lse <= 1e-3,
            "seed {seed} step {} layer {} lens {:?}: {e:?}",
            s.step,
            s.layer,
            s.seqs
        );
    })
    .unwrap();
    assert_eq!(report.plans_built(), 2);
    assert_eq!(report.finished, requests.len());
    assert_eq!(check.checked, report.launches);
}
