//! The safe forward-attention API: plan once (validate, pick the kernel, compute the launch
//! geometry), then run on a backend as many times as needed.
//!
//! ```no_run
//! use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, SeqLens};
//! let problem = AttnProblem::new(
//!     SeqLens::Uniform { batch: 1, q_len: 128, kv_len: 128 }, 8, 2, 64, DType::F16)?;
//! let plan = AttnPlan::new(&problem, &AttnOptions::causal())?;
//! let n = problem.q_elems();
//! let q = vec![half::f16::from_f32(0.1); n];
//! let kv = vec![half::f16::from_f32(0.1); problem.kv_elems()];
//! let (out, lse) = plan.run_emulated(&q, &kv, &kv, &Default::default())?;
//! # Ok::<(), sparse_attn::Error>(())
//! ```

use std::ffi::c_void;

use crate::emu::{self, GuardedBuffer};
use crate::error::{Error, Result};
use crate::ffi::SaAttnFwdParams;
use crate::kernels::{self, FwdTiles, KernelDesc, Launch};
use crate::shape::{AttnOptions, AttnProblem, DType, SeqLens};

/// A 16-bit element type the kernels accept.
pub trait Element: Copy + Default + Send + Sync + 'static {
    const DTYPE: DType;
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        half::f16::from_f32(x)
    }
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
}

/// Device addresses of one call's tensors (raw: the backends fill them from buffers they own).
#[derive(Clone, Copy, Debug)]
pub struct TensorAddrs {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub out: u64,
    pub lse: u64,
    /// `cu_seqlens` arrays on the device (0 for uniform batches).
    pub cu_q: u64,
    pub cu_k: u64,
    /// Optional work counter (0 = none).
    pub tiles_visited: u64,
}

/// A validated forward-attention plan.
#[derive(Clone, Debug)]
pub struct AttnPlan {
    problem: AttnProblem,
    scale: f32,
    softcap: f32,
    causal: bool,
    kernel: &'static KernelDesc,
    tiles: FwdTiles,
}

impl AttnPlan {
    pub fn new(problem: &AttnProblem, opts: &AttnOptions) -> Result<Self> {
        let (scale, softcap) = opts.resolve(problem.head_dim)?;
        problem.seqs.validate()?;
        Ok(AttnPlan {
            problem: problem.clone(),
            scale,
            softcap,
            causal: opts.causal,
            kernel: kernels::attn_fwd(problem.dtype, problem.head_dim),
            tiles: kernels::fwd_tiles(problem.head_dim),
        })
    }

    pub fn problem(&self) -> &AttnProblem {
        &self.problem
    }
    pub fn kernel(&self) -> &'static KernelDesc {
        self.kernel
    }
    pub fn scale(&self) -> f32 {
        self.scale
    }
    pub fn softcap(&self) -> f32 {
        self.softcap
    }
    pub fn causal(&self) -> bool {
        self.causal
    }

    /// The launch for given tensor addresses. Pure: no memory is touched.
    pub fn launch(&self, a: &TensorAddrs) -> Launch<SaAttnFwdParams> {
        let p = &self.problem;
        let d = p.head_dim.get() as i64;
        let (h, hk) = (p.num_heads as i64, p.num_kv_heads as i64);
        let (max_q, max_k) = p.seqs.max_lens();
        let (total_q, _) = p.seqs.totals();
        let (q_len, kv_len) = match &p.seqs {
            SeqLens::Uniform { q_len, kv_len, .. } => (*q_len, *kv_len),
            SeqLens::Varlen { .. } => (max_q, max_k),
        };
        let varlen = matches!(p.seqs, SeqLens::Varlen { .. });
        let params = SaAttnFwdParams {
            q: a.q as *const c_void,
            k: a.k as *const c_void,
            v: a.v as *const c_void,
            out: a.out as *mut c_void,
            lse: a.lse as *mut f32,
            q_batch_stride: q_len as i64 * h * d,
            q_row_stride: h * d,
            q_head_stride: d,
            k_batch_stride: kv_len as i64 * hk * d,
            k_row_stride: hk * d,
            k_head_stride: d,
            v_batch_stride: kv_len as i64 * hk * d,
            v_row_stride: hk * d,
            v_head_stride: d,
            o_batch_stride: q_len as i64 * h * d,
            o_row_stride: h * d,
            o_head_stride: d,
            lse_batch_stride: if varlen { 0 } else { h * q_len as i64 },
            lse_head_stride: if varlen { total_q as i64 } else { q_len as i64 },
            cu_seqlens_q: a.cu_q as *const i32,
            cu_seqlens_k: a.cu_k as *const i32,
            batch: p.seqs.batch() as i32,
            num_heads: h as i32,
            num_kv_heads: hk as i32,
            head_dim: d as i32,
            q_len: q_len as i32,
            kv_len: kv_len as i32,
            scale: self.scale,
            softcap: self.softcap,
            causal: self.causal as i32,
            _pad0: 0,
            tiles_visited: a.tiles_visited as *mut _,
        };
        let m_blocks = q_len.div_ceil(self.tiles.block_m as usize).max(1) as u32;
        Launch {
            kernel: self.kernel,
            grid: [m_blocks, h as u32, p.seqs.batch() as u32],
            block: [self.tiles.threads, 1, 1],
            dynamic_smem_bytes: self.tiles.smem_bytes,
            params,
        }
    }

    pub(crate) fn check_lens<T: Element>(&self, q: usize, k: usize, v: usize) -> Result<()> {
        let p = &self.problem;
        if T::DTYPE != p.dtype {
            return Err(Error::Shape(format!(
                "element type {} does not match the problem's {}",
                T::DTYPE.name(),
                p.dtype.name()
            )));
        }
        for (name, got, want) in [
            ("q", q, p.q_elems()),
            ("k", k, p.kv_elems()),
            ("v", v, p.kv_elems()),
        ] {
            if got != want {
                return Err(Error::Shape(format!(
                    "{name} has {got} elements, the problem needs {want}"
                )));
            }
        }
        Ok(())
    }

    /// Runs the forward pass on the CPU emulator (the very kernel source of the GPU path).
    /// Returns `(out, lse)`, laid out like q and `[batch, num_heads, q_len]` (varlen:
    /// `[num_heads, total_q]`).
    pub fn run_emulated<T: Element>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        run: &EmuRun,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        self.check_lens::<T>(q.len(), k.len(), v.len())?;
        let p = &self.problem;
        let qb = GuardedBuffer::from_slice(q, "q")?;
        let kb = GuardedBuffer::from_slice(k, "k")?;
        let vb = GuardedBuffer::from_slice(v, "v")?;
        let ob = GuardedBuffer::<T>::zeroed(p.q_elems(), "out")?;
        let lb = GuardedBuffer::<f32>::zeroed(p.lse_elems(), "lse")?;
        let counter = GuardedBuffer::<u64>::zeroed(1, "tiles_visited")?;
        let (cu_q, cu_k) = match &p.seqs {
            SeqLens::Varlen { cu_q, cu_k } => (
                Some(GuardedBuffer::from_slice(cu_q, "cu_seqlens_q")?),
                Some(GuardedBuffer::from_slice(cu_k, "cu_seqlens_k")?),
            ),
            SeqLens::Uniform { .. } => (None, None),
        };
        let addrs = TensorAddrs {
            q: qb.as_ptr() as u64,
            k: kb.as_ptr() as u64,
            v: vb.as_ptr() as u64,
            out: ob.as_ptr() as u64,
            lse: lb.as_ptr() as u64,
            cu_q: cu_q.as_ref().map_or(0, |b| b.as_ptr() as u64),
            cu_k: cu_k.as_ref().map_or(0, |b| b.as_ptr() as u64),
            tiles_visited: counter.as_ptr() as u64,
        };
        let launch = self.launch(&addrs);
        // SAFETY: every pointer in the params refers to a live guarded buffer sized exactly as
        // the validated problem requires; the kernel matches the params type.
        unsafe { emu::launch_desc(&launch, &run.options())? };
        if let Some(slot) = run.tiles_visited {
            slot.set(counter.to_vec()[0]);
        }
        Ok((ob.to_vec(), lb.to_vec()))
    }
}

/// Emulator run options (scheduling order, cp.async mode, workers) and optional work counter.
#[derive(Clone, Debug, Default)]
pub struct EmuRun<'a> {
    pub schedule: emu::Schedule,
    pub eager_cp_async: bool,
    /// Worker threads (0 = all cores).
    pub workers: u32,
    /// Receives the number of kv tiles the kernel visited.
    pub tiles_visited: Option<&'a std::cell::Cell<u64>>,
}

impl EmuRun<'_> {
    fn options(&self) -> emu::EmuOptions {
        emu::EmuOptions {
            schedule: self.schedule,
            eager_cp_async: self.eager_cp_async,
            workers: self.workers,
        }
    }
}
