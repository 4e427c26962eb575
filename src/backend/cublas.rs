//! The dense cuBLAS oracle: the GPU reference the tests and benchmarks compare the attention
//! kernels with. Deliberately unfused and simple, one query head at a time:
//!
//! ```text
//! S = scale · Q_h K_hkᵀ        cuBLAS strided-batched GEMM over the batch, f16/bf16 in, f32 out
//! P, lse = softmax(mask(S))    kernels/ref_softmax.cu (f32, CUDA cores; also emulator-tested)
//! O_h = P V_hk                 cuBLAS strided-batched GEMM, P in the input type, f32 out
//! ```
//!
//! Query head `h` reads kv head `h / (num_heads / num_kv_heads)` (GQA). Varlen batches are
//! run one sequence at a time. The output stays in f32 so the oracle adds no final rounding.
//!
//! Row-major ↔ column-major: a row-major `[rows, cols]` matrix with leading dimension `ld` is
//! the column-major `[cols, rows]` matrix with the same `ld`. So row-major `S = Q Kᵀ` is the
//! column-major `Sᵀ = K Qᵀ` (`transa = T` on K's buffer, `transb = N` on Q's), and row-major
//! `O = P V` is column-major `Oᵀ = Vᵀ Pᵀ` (both `N`).

use std::ffi::c_void;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::cublas::{result as blas, CudaBlas};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};

use super::cuda::Gpu;
use super::ref_softmax::{RefSoftmax, RefSoftmaxAddrs};
use crate::attention::{AttnPlan, Element};
use crate::error::{Error, Result};
use crate::shape::{AttnOptions, AttnProblem, DType, SeqLens};

/// One uniform slice of the problem: the whole batch (uniform) or one sequence (varlen).
#[derive(Clone, Copy, Debug)]
struct Part {
    batch: usize,
    q_len: usize,
    kv_len: usize,
    /// First query / key row in the packed tensors.
    q0: usize,
    k0: usize,
    /// LSE element (b, h, i) of this part: `lse0 + h * lse_head_stride + b * lse_batch_stride + i`.
    lse0: usize,
    lse_head_stride: usize,
    lse_batch_stride: usize,
}

fn parts(problem: &AttnProblem) -> Vec<Part> {
    let h = problem.num_heads();
    match &problem.seqs() {
        SeqLens::Uniform {
            batch,
            q_len,
            kv_len,
        } => vec![Part {
            batch: *batch,
            q_len: *q_len,
            kv_len: *kv_len,
            q0: 0,
            k0: 0,
            lse0: 0,
            lse_head_stride: *q_len,
            lse_batch_stride: h * q_len,
        }],
        SeqLens::Varlen { .. } => {
            let (total_q, _) = problem.seqs().totals();
            (0..problem.seqs().batch())
                .map(|b| {
                    let (q_len, kv_len) = problem.seqs().lens(b);
                    let (q0, k0) = problem.seqs().offsets(b);
                    Part {
                        batch: 1,
                        q_len,
                        kv_len,
                        q0,
                        k0,
                        lse0: q0,
                        lse_head_stride: total_q,
                        lse_batch_stride: 0,
                    }
                })
                .collect()
        }
    }
}

fn cuda_type(dtype: DType) -> cudaDataType {
    match dtype {
        DType::F16 => cudaDataType::CUDA_R_16F,
        DType::BF16 => cudaDataType::CUDA_R_16BF,
    }
}

fn to_int(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| Error::Unsupported(format!("{what} = {x} exceeds cuBLAS's int")))
}

/// The dense oracle for one problem, with its workspaces (S and P of one head) allocated once,
/// so benchmarks can time [`DenseReference::run`] alone.
pub struct DenseReference<T> {
    gpu: Gpu,
    blas: CudaBlas,
    plan: AttnPlan,
    parts: Vec<Part>,
    /// f32 `[batch, q_len, kv_len]` of the largest part.
    s: CudaSlice<f32>,
    /// Same shape in the element type.
    p: CudaSlice<T>,
}

impl<T: Element + DeviceRepr + ValidAsZeroBits> DenseReference<T> {
    /// Validates the problem (as [`AttnPlan::new`] does) and allocates the workspaces. The
    /// oracle computes scale, softcap and mask only: sink logits or ALiBi slopes in `opts`
    /// are `Error::Unsupported` (the f64 reference, [`crate::reference`], covers them).
    pub fn new(gpu: &Gpu, problem: &AttnProblem, opts: &AttnOptions) -> Result<Self> {
        if opts.sink_logits.is_some() || opts.alibi_slopes.is_some() {
            return Err(Error::Unsupported(
                "the cuBLAS oracle has no sink logits or ALiBi; compare with the f64 reference"
                    .into(),
            ));
        }
        let plan = AttnPlan::new(problem, opts)?;
        if T::DTYPE != problem.dtype() {
            return Err(Error::Shape(format!(
                "element type {} does not match the problem's {}",
                T::DTYPE.name(),
                problem.dtype().name()
            )));
        }
        if !super::library_present("cublas") {
            return Err(Error::Unsupported(
                "the cuBLAS library (libcublas.so.13 and libcublasLt.so.13) is not installed"
                    .into(),
            ));
        }
        let parts = parts(problem);
        let workspace = parts
            .iter()
            .map(|p| p.batch * p.q_len * p.kv_len)
            .max()
            .unwrap_or(0)
            .max(1);
        let stream = gpu.stream();
        Ok(DenseReference {
            gpu: gpu.clone(),
            blas: CudaBlas::new(stream.clone())?,
            plan,
            parts,
            s: stream.alloc_zeros::<f32>(workspace)?,
            p: stream.alloc_zeros::<T>(workspace)?,
        })
    }

    /// Queues the dense attention on the Gpu's stream. `out` is f32 laid out like q; `lse` as
    /// the kernels'; `mask` (uniform batches only) is u8 `[num_heads, q_len, kv_len]`,
    /// 1 = allowed, applied together with the causal flag.
    pub fn run(
        &mut self,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        v: &CudaSlice<T>,
        mask: Option<&CudaSlice<u8>>,
        out: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let problem = self.plan.problem().clone();
        self.plan.check_lens::<T>(q.len(), k.len(), v.len())?;
        if out.len() != problem.q_elems() || lse.len() != problem.lse_elems() {
            return Err(Error::Shape(format!(
                "out / lse have {} / {} elements, the problem needs {} / {}",
                out.len(),
                lse.len(),
                problem.q_elems(),
                problem.lse_elems()
            )));
        }
        if let Some(m) = mask {
            let SeqLens::Uniform { q_len, kv_len, .. } = problem.seqs() else {
                return Err(Error::Unsupported(
                    "a token mask needs a uniform batch".into(),
                ));
            };
            let want = problem.num_heads() * q_len * kv_len;
            if m.len() != want {
                return Err(Error::Shape(format!(
                    "mask has {} elements, [num_heads, q_len, kv_len] needs {want}",
                    m.len()
                )));
            }
        }
        let stream = self.gpu.stream().clone();
        // Rows of parts without keys are never written by a GEMM; they must read 0.
        if self.parts.iter().any(|p| p.kv_len == 0) {
            stream.memset_zeros(out)?;
        }

        let d = problem.head_dim().get() as usize;
        let (hq, hk) = (problem.num_heads(), problem.num_kv_heads());
        let group = problem.group_size();
        let esize = std::mem::size_of::<T>() as u64;
        let (q_ptr, _q_guard) = q.device_ptr(&stream);
        let (k_ptr, _k_guard) = k.device_ptr(&stream);
        let (v_ptr, _v_guard) = v.device_ptr(&stream);
        let mask_ptrs = mask.map(|m| m.device_ptr(&stream));
        let mask_ptr = mask_ptrs.as_ref().map_or(0, |(p, _)| *p);
        let (out_ptr, _out_guard) = out.device_ptr_mut(&stream);
        let (lse_ptr, _lse_guard) = lse.device_ptr_mut(&stream);
        let (s_ptr, _s_guard) = self.s.device_ptr_mut(&stream);
        let (p_ptr, _p_guard) = self.p.device_ptr_mut(&stream);
        let handle = *self.blas.handle();
        let dt = cuda_type(T::DTYPE);
        let f32t = cudaDataType::CUDA_R_32F;
        let one = 1.0f32;
        let zero = 0.0f32;
        let scale = self.plan.scale();
        // Dense and causal plans need no mask; any other pattern must come materialised.
        let causal = match (self.plan.dense_causal(), mask.is_some()) {
            (Some(c), _) => c,
            (None, true) => false,
            (None, false) => {
                return Err(Error::Unsupported(
                    "the dense reference of a sparse plan needs its materialised token mask".into(),
                ))
            }
        };

        for part in &self.parts {
            if part.batch == 0 || part.q_len == 0 {
                continue;
            }
            let softmax = RefSoftmax {
                dtype: T::DTYPE,
                batch: part.batch,
                q_len: part.q_len,
                kv_len: part.kv_len,
                causal,
                softcap: self.plan.softcap(),
            };
            softmax.validate()?;
            let (m, n) = (to_int(part.kv_len, "kv_len")?, to_int(part.q_len, "q_len")?);
            let kd = to_int(d, "head_dim")?;
            let (ldq, ldk) = (
                to_int(hq * d, "q row stride")?,
                to_int(hk * d, "k row stride")?,
            );
            let batch = to_int(part.batch, "batch")?;
            let scores = (part.q_len * part.kv_len) as i64;
            let q_stride = (part.q_len * hq * d) as i64;
            let kv_stride = (part.kv_len * hk * d) as i64;
            for h in 0..hq {
                let kvh = h / group;
                let q_h = q_ptr + ((part.q0 * hq + h) * d) as u64 * esize;
                let k_h = k_ptr + ((part.k0 * hk + kvh) * d) as u64 * esize;
                let v_h = v_ptr + ((part.k0 * hk + kvh) * d) as u64 * esize;
                let o_h = out_ptr + ((part.q0 * hq + h) * d) as u64 * 4;
                if part.kv_len > 0 {
                    // Sᵀ (kv_len x q_len, column-major, ld kv_len) = scale · K Qᵀ.
                    // SAFETY: pointers and strides address q, k and the S workspace inside
                    // their allocations (lengths checked above; S holds batch*q_len*kv_len);
                    // the handle's stream is the Gpu's, where the guards order the buffers.
                    unsafe {
                        blas::gemm_strided_batched_ex(
                            handle,
                            cublasOperation_t::CUBLAS_OP_T,
                            cublasOperation_t::CUBLAS_OP_N,
                            m,
                            n,
                            kd,
                            &scale as *const f32 as *const c_void,
                            k_h as *const c_void,
                            dt,
                            ldk,
                            kv_stride,
                            q_h as *const c_void,
                            dt,
                            ldq,
                            q_stride,
                            &zero as *const f32 as *const c_void,
                            s_ptr as *mut c_void,
                            f32t,
                            m,
                            scores,
                            batch,
                            cublasComputeType_t::CUBLAS_COMPUTE_32F,
                            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                        )?;
                    }
                }
                let launch = softmax.launch(&RefSoftmaxAddrs {
                    s: s_ptr,
                    p: p_ptr,
                    lse: lse_ptr + ((part.lse0 + h * part.lse_head_stride) * 4) as u64,
                    lse_batch_stride: part.lse_batch_stride as i64,
                    mask: if mask_ptr == 0 {
                        0
                    } else {
                        mask_ptr + (h * part.q_len * part.kv_len) as u64
                    },
                });
                // SAFETY: SaRefSoftmaxParams is the kernel's params type; S and P hold
                // batch*q_len*kv_len elements, the LSE pointer addresses this head's rows
                // (element (b, i) at b*lse_batch_stride + i stays inside lse), and the mask
                // (checked length) has q_len*kv_len entries from this head's offset.
                unsafe { self.gpu.launch(&launch)? };
                if part.kv_len > 0 {
                    // Oᵀ (head_dim x q_len, column-major, ld num_heads*head_dim) = Vᵀ Pᵀ.
                    // SAFETY: as above for v, P and out (f32, like q).
                    unsafe {
                        blas::gemm_strided_batched_ex(
                            handle,
                            cublasOperation_t::CUBLAS_OP_N,
                            cublasOperation_t::CUBLAS_OP_N,
                            kd,
                            n,
                            m,
                            &one as *const f32 as *const c_void,
                            v_h as *const c_void,
                            dt,
                            ldk,
                            kv_stride,
                            p_ptr as *const c_void,
                            dt,
                            m,
                            scores,
                            &zero as *const f32 as *const c_void,
                            o_h as *mut c_void,
                            f32t,
                            ldq,
                            q_stride,
                            batch,
                            cublasComputeType_t::CUBLAS_COMPUTE_32F,
                            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Dense attention on the GPU through cuBLAS, from and to host memory: the oracle of the GPU
/// tests. `q`, `k`, `v` are laid out as for [`AttnPlan::run_cuda`]; `mask` (uniform batches
/// only) is u8 `[num_heads, q_len, kv_len]`, 1 = allowed, combined with `opts.causal`.
/// Returns `(out, lse)` in f32, laid out like the kernels' outputs.
pub fn dense_reference<T: Element + DeviceRepr + ValidAsZeroBits>(
    gpu: &Gpu,
    problem: &AttnProblem,
    opts: &AttnOptions,
    mask: Option<&[u8]>,
    q: &[T],
    k: &[T],
    v: &[T],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut dense = DenseReference::<T>::new(gpu, problem, opts)?;
    dense.plan.check_lens::<T>(q.len(), k.len(), v.len())?;
    if problem.q_elems() == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    if problem.kv_elems() == 0 {
        // No sequence has a key (and cudarc cannot allocate zero bytes): every row is empty,
        // so out = 0 and lse = -inf by definition.
        return Ok((
            vec![0.0; problem.q_elems()],
            vec![f32::NEG_INFINITY; problem.lse_elems()],
        ));
    }
    let stream = gpu.stream();
    let (qd, kd, vd) = (
        stream.clone_htod(q)?,
        stream.clone_htod(k)?,
        stream.clone_htod(v)?,
    );
    let md = mask.map(|m| stream.clone_htod(m)).transpose()?;
    let mut out = stream.alloc_zeros::<f32>(problem.q_elems())?;
    let mut lse = stream.alloc_zeros::<f32>(problem.lse_elems())?;
    dense.run(&qd, &kd, &vd, md.as_ref(), &mut out, &mut lse)?;
    let out_h = stream.clone_dtoh(&out)?;
    let lse_h = stream.clone_dtoh(&lse)?;
    stream.synchronize()?;
    Ok((out_h, lse_h))
}
