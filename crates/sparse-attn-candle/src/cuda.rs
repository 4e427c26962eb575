//! The op and the cache's pages on candle's CUDA tensors (feature `cuda`): the kernels
//! run on candle's own stream, on candle's own buffers, with no host round trip for q, k, v or
//! the output.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, Layout, Shape, Storage, Tensor, WithDType};
use sparse_attn::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

use super::cache::CacheStep;
use super::op::{dtype_error, SparseAttn};
use super::to_candle;
use sparse_attn::attention::{AttnPlan, Element};
use sparse_attn::backend::Gpu;
use sparse_attn::kv_cache::{BlockTable, DeviceKvStorage, KvCache};
use sparse_attn::Error;

type CResult<T> = candle_core::Result<T>;

/// The crate's [`Gpu`] on candle's stream of `dev`, one per stream for the process: the
/// kernel modules load once, not on every call.
fn gpu_for(dev: &CudaDevice) -> CResult<Gpu> {
    static GPUS: OnceLock<Mutex<HashMap<usize, Gpu>>> = OnceLock::new();
    let stream = dev.cuda_stream();
    let key = stream.cu_stream() as usize;
    let mut gpus = GPUS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(g) = gpus.get(&key) {
        return Ok(g.clone());
    }
    let g = Gpu::from_stream(stream).map_err(to_candle)?;
    gpus.insert(key, g.clone());
    Ok(g)
}

/// A tensor's elements as one whole, contiguous device buffer: candle's own buffer when the
/// layout covers it exactly, else a copy made on the device (candle's strided copy).
enum Whole<'a> {
    Borrowed(&'a CudaStorage),
    Owned(CudaStorage),
}

impl Whole<'_> {
    fn of<'a, T: CudaDType + DeviceRepr>(s: &'a CudaStorage, l: &Layout) -> CResult<Whole<'a>> {
        let len = s.as_cuda_slice::<T>()?.len();
        if l.contiguous_offsets() == Some((0, len)) {
            return Ok(Whole::Borrowed(s));
        }
        let n = l.shape().elem_count();
        // SAFETY: every element is written by the strided copy below before any read.
        let dst = unsafe { s.device.alloc::<T>(n)? };
        let mut dst = CudaStorage::wrap_cuda_slice(dst, s.device.clone());
        s.copy_strided_src(&mut dst, 0, l)?;
        Ok(Whole::Owned(dst))
    }

    fn slice<T: CudaDType>(&self) -> CResult<&CudaSlice<T>> {
        match self {
            Whole::Borrowed(s) => s.as_cuda_slice::<T>(),
            Whole::Owned(s) => s.as_cuda_slice::<T>(),
        }
    }
}

/// `cuda_fwd` of [`SparseAttn`].
pub(super) fn forward(
    op: &SparseAttn,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
) -> CResult<(CudaStorage, Shape)> {
    use candle_core::DType as D;
    match (s1.dtype(), s2.dtype(), s3.dtype()) {
        (D::F16, D::F16, D::F16) => run::<half::f16>(op, (s1, l1), (s2, l2), (s3, l3)),
        (D::BF16, D::BF16, D::BF16) => run::<half::bf16>(op, (s1, l1), (s2, l2), (s3, l3)),
        (q, k, v) => Err(dtype_error(q, k, v)),
    }
}

fn run<T: Element + WithDType + CudaDType + DeviceRepr + ValidAsZeroBits>(
    op: &SparseAttn,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
) -> CResult<(CudaStorage, Shape)> {
    let plan = op.plan(<T as WithDType>::DTYPE, l1.dims(), l2.dims(), l3.dims())?;
    let dev = &s1.device;
    let gpu = gpu_for(dev)?;
    let p = plan.problem();
    let mut out = dev.alloc_zeros::<T>(p.q_elems())?;
    if p.kv_elems() > 0 && p.q_elems() > 0 {
        let (q, k, v) = (
            Whole::of::<T>(s1, l1)?,
            Whole::of::<T>(s2, l2)?,
            Whole::of::<T>(s3, l3)?,
        );
        let mut lse = dev.alloc_zeros::<f32>(p.lse_elems())?;
        plan.run_cuda(&gpu, q.slice()?, k.slice()?, v.slice()?, &mut out, &mut lse)
            .map_err(to_candle)?;
    }
    // No keys at all: every row is empty and its output 0 (what alloc_zeros holds).
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        l1.shape().clone(),
    ))
}

/// The cache's pages on candle's CUDA device (written by the append kernel on candle's
/// stream).
pub(super) struct CudaPages<T> {
    store: DeviceKvStorage<T>,
    gpu: Gpu,
    dev: CudaDevice,
}

impl<T: crate::Elem> CudaPages<T> {
    pub(super) fn new(cache: &KvCache, dev: &CudaDevice) -> CResult<Self> {
        let gpu = gpu_for(dev)?;
        Ok(CudaPages {
            store: DeviceKvStorage::new(&gpu, cache).map_err(to_candle)?,
            gpu,
            dev: dev.clone(),
        })
    }

    /// Runs `f` on the tensor's elements as one whole device buffer.
    fn with_slice<R>(t: &Tensor, f: impl FnOnce(&CudaSlice<T>) -> CResult<R>) -> CResult<R> {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else {
            return Err(to_candle(Error::WrongDevice(format!(
                "a tensor on {:?} for a cache on CUDA",
                t.device().location()
            ))));
        };
        let whole = Whole::of::<T>(s, layout)?;
        f(whole.slice()?)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn append_attend(
        &mut self,
        plan: &AttnPlan,
        step: &CacheStep,
        layer: usize,
        table: &BlockTable,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> CResult<Tensor> {
        let row = k.elem_count() / step.total_new().max(1);
        Self::with_slice(k, |ks| {
            Self::with_slice(v, |vs| {
                let (dev, store) = (&self.dev, &mut self.store);
                let mut at = 0;
                for p in step.placements().iter().filter(|p| p.len > 0) {
                    let kr = rows(dev, ks, at * row, p.len * row)?;
                    let vr = rows(dev, vs, at * row, p.len * row)?;
                    store.write_kv(layer, p, &kr, &vr).map_err(to_candle)?;
                    at += p.len;
                }
                Ok(())
            })
        })?;
        let pr = plan.problem();
        let mut out = self.dev.alloc_zeros::<T>(q.elem_count())?;
        let mut lse = self
            .dev
            .alloc_zeros::<f32>(pr.seqs().totals().0 * pr.num_heads())?;
        let kv = self.store.paged(layer, table).map_err(to_candle)?;
        Self::with_slice(q, |qs| {
            plan.upload(&self.gpu)
                .and_then(|g| g.run_paged_step(step.lens(), qs, &kv, &mut out, &mut lse))
                .map_err(to_candle)
        })?;
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(out, self.dev.clone()));
        Ok(Tensor::from_storage(
            storage,
            q.shape().clone(),
            BackpropOp::none(),
            false,
        ))
    }
}

/// Elements `[at, at + n)` of a device buffer, as their own buffer (a device-to-device copy).
fn rows<T: DeviceRepr>(
    dev: &CudaDevice,
    src: &CudaSlice<T>,
    at: usize,
    n: usize,
) -> CResult<CudaSlice<T>> {
    // SAFETY: the copy below writes every element before any read.
    let mut dst = unsafe { dev.alloc::<T>(n)? };
    dev.memcpy_dtod(&src.slice(at..at + n), &mut dst)?;
    Ok(dst)
}
