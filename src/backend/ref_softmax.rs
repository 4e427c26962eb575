//! The dense reference softmax kernel (`kernels/ref_softmax.cu`): the middle step of the
//! cuBLAS oracle ([`super::cublas`]). It is an ordinary kernel of this crate, so it runs on the
//! GPU through [`super::Gpu::launch`] and on the CPU emulator through [`run_emulated`], where
//! `tests/ref_softmax_emu.rs` checks it against the f64 reference: the oracle is itself tested.

use crate::emu::{EmuOptions, GuardedBuffer};
use crate::error::{Error, Result};
use crate::ffi::{self, SaRefSoftmaxParams};
use crate::kernels::{KernelDesc, Launch, Module};
use crate::shape::DType;
use crate::Element;

mod entries {
    extern "C" {
        pub fn sa_ref_softmax_f16(p: *const std::ffi::c_void);
        pub fn sa_ref_softmax_bf16(p: *const std::ffi::c_void);
    }
}

/// The two instantiations, one per element type of P.
pub static REF_SOFTMAX_KERNELS: [KernelDesc; 2] = [
    KernelDesc {
        name: "sa_ref_softmax_f16",
        module: Module::RefSoftmax,
        emu_entry: entries::sa_ref_softmax_f16,
    },
    KernelDesc {
        name: "sa_ref_softmax_bf16",
        module: Module::RefSoftmax,
        emu_entry: entries::sa_ref_softmax_bf16,
    },
];

/// The instantiation writing P in `dtype`.
pub fn kernel(dtype: DType) -> &'static KernelDesc {
    match dtype {
        DType::F16 => &REF_SOFTMAX_KERNELS[0],
        DType::BF16 => &REF_SOFTMAX_KERNELS[1],
    }
}

/// One softmax launch: one query head of a uniform batch of `batch` sequences.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefSoftmax {
    /// Element type of the probabilities.
    pub dtype: DType,
    /// Sequences.
    pub batch: usize,
    /// Query rows per sequence.
    pub q_len: usize,
    /// Keys per sequence.
    pub kv_len: usize,
    /// Bottom-right aligned causal mask.
    pub causal: bool,
    /// 0 = off.
    pub softcap: f32,
}

/// Device (or guarded host) addresses of one launch's buffers.
#[derive(Clone, Copy, Debug)]
pub struct RefSoftmaxAddrs {
    /// f32 `[batch, q_len, kv_len]`.
    pub s: u64,
    /// `[batch, q_len, kv_len]` in the element type.
    pub p: u64,
    /// f32; element `(b, i)` at `b * lse_batch_stride + i`.
    pub lse: u64,
    /// Elements between sequences in `lse`.
    pub lse_batch_stride: i64,
    /// u8 `[q_len, kv_len]` or 0.
    pub mask: u64,
}

impl RefSoftmax {
    /// Checks what the kernel relies on (grid limits, finite softcap).
    pub fn validate(&self) -> Result<()> {
        if self.batch > 65535 {
            return Err(Error::Shape(format!(
                "batch {} exceeds the grid limit 65535",
                self.batch
            )));
        }
        if self.q_len > i32::MAX as usize || self.kv_len > i32::MAX as usize {
            return Err(Error::Shape("sequence lengths exceed i32".into()));
        }
        if !self.softcap.is_finite() || self.softcap < 0.0 {
            return Err(Error::Shape(format!(
                "softcap must be finite and >= 0 (got {})",
                self.softcap
            )));
        }
        Ok(())
    }

    /// Elements of S and of P.
    pub fn scores_len(&self) -> usize {
        self.batch * self.q_len * self.kv_len
    }

    /// Whether there is anything to launch (a grid dimension of zero is invalid).
    pub fn is_empty(&self) -> bool {
        self.batch == 0 || self.q_len == 0
    }

    /// The launch description. Pure: no memory is touched.
    pub fn launch(&self, a: &RefSoftmaxAddrs) -> Launch<SaRefSoftmaxParams> {
        let row_stride = (self.q_len * self.kv_len) as i64;
        let threads = ffi::SA_REF_SOFTMAX_THREADS;
        Launch {
            kernel: kernel(self.dtype),
            grid: [self.q_len as u32, self.batch as u32, 1],
            block: [threads, 1, 1],
            // Two reduction slots (max, sum) per warp.
            dynamic_smem_bytes: 2 * (threads / 32) * 4,
            params: SaRefSoftmaxParams {
                s: a.s as *const f32,
                p: a.p as *mut std::ffi::c_void,
                lse: a.lse as *mut f32,
                mask: a.mask as *const u8,
                s_batch_stride: row_stride,
                p_batch_stride: row_stride,
                lse_batch_stride: a.lse_batch_stride,
                batch: self.batch as i32,
                q_len: self.q_len as i32,
                kv_len: self.kv_len as i32,
                softcap: self.softcap,
                causal: self.causal as i32,
                _pad0: 0,
            },
        }
    }
}

/// A guarded copy of `data`, at least one element long (the emulator cannot allocate zero).
fn guarded<T: crate::emu::Plain + Default>(data: &[T], label: &str) -> Result<GuardedBuffer<T>> {
    if data.is_empty() {
        return Ok(GuardedBuffer::zeroed(1, label)?);
    }
    Ok(GuardedBuffer::from_slice(data, label)?)
}

/// Runs the softmax on the CPU emulator: `s` is f32 `[batch, q_len, kv_len]`, `mask` u8
/// `[q_len, kv_len]`. Returns P `[batch, q_len, kv_len]` and the LSE `[batch, q_len]`.
pub fn run_emulated<T: Element>(
    shape: &RefSoftmax,
    s: &[f32],
    mask: Option<&[u8]>,
    opts: &EmuOptions,
) -> Result<(Vec<T>, Vec<f32>)> {
    shape.validate()?;
    if T::DTYPE != shape.dtype {
        return Err(Error::Shape(format!(
            "element type {} does not match the softmax's {}",
            T::DTYPE.name(),
            shape.dtype.name()
        )));
    }
    if s.len() != shape.scores_len() {
        return Err(Error::Shape(format!(
            "scores have {} elements, the shape needs {}",
            s.len(),
            shape.scores_len()
        )));
    }
    if let Some(m) = mask {
        if m.len() != shape.q_len * shape.kv_len {
            return Err(Error::Shape(format!(
                "mask has {} elements, the shape needs {}",
                m.len(),
                shape.q_len * shape.kv_len
            )));
        }
    }
    let lse_len = shape.batch * shape.q_len;
    if shape.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let sb = guarded(s, "s")?;
    // Outputs start poisoned, so an element the kernel forgets to write shows.
    let pb = GuardedBuffer::filled(shape.scores_len().max(1), T::from_f32(f32::NAN), "p")?;
    let lb = GuardedBuffer::filled(lse_len, f32::NAN, "lse")?;
    let mb = mask.map(|m| guarded(m, "mask")).transpose()?;
    let launch = shape.launch(&RefSoftmaxAddrs {
        s: sb.as_ptr() as u64,
        p: pb.as_ptr() as u64,
        lse: lb.as_ptr() as u64,
        lse_batch_stride: shape.q_len as i64,
        mask: mb.as_ref().map_or(0, |b| b.as_ptr() as u64),
    });
    // SAFETY: the params are SaRefSoftmaxParams as the kernel takes; s, p, lse and mask are
    // live guarded buffers sized for this validated shape (the kernel reads
    // batch * q_len * kv_len scores and mask entries q_len * kv_len, and writes as many
    // probabilities and batch * q_len LSE values).
    unsafe { launch.run_emulated(opts)? };
    let mut p = pb.to_vec();
    p.truncate(shape.scores_len());
    Ok((p, lb.to_vec()))
}
