//! The CUDA backend: a device context ([`Gpu`]) that loads the embedded fatbins lazily and
//! launches a [`Launch`] description, and the safe [`AttnPlan::run_cuda`] on top of it.
//!
//! Layers (as in cudarc): [`Gpu::launch`] is the one `unsafe` entry (raw params with device
//! pointers); [`AttnPlan::run_cuda`] validates every length and the element type, takes the
//! device pointers from cudarc buffers and keeps their guards alive across the launch, so
//! stream ordering protects the memory.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute, CUresult};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr,
    DevicePtrMut, DeviceRepr, DeviceSlice, DriverError, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use crate::attention::{
    AttnPlan, Element, LseLayout, MetaAddrs, PagedAddrs, PagedLayout, PlanMeta, TensorAddrs,
    TensorLayout,
};
use crate::error::{Error, Result};
use crate::kernels::{KernelDesc, Launch};
use crate::shape::SeqLens;

/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_MAX_DYNAMIC_SMEM: u32 = 48 * 1024;

/// Whether the CUDA driver library can be loaded. cudarc panics on first use without it, so
/// this is checked before anything touches the driver.
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| super::library_present("cuda"))
}

/// Number of CUDA devices; [`Error::NoDevice`] without a driver.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(Error::NoDevice(
            "the CUDA driver library (libcuda) is not installed".into(),
        ));
    }
    let n = CudaContext::device_count()
        .map_err(|e| Error::NoDevice(format!("the CUDA driver found no usable device ({e:?})")))?;
    Ok(n.max(0) as usize)
}

#[derive(Default)]
struct Cache {
    modules: HashMap<&'static str, Arc<CudaModule>>,
    /// Loaded functions with the dynamic shared memory limit set on them so far.
    functions: HashMap<&'static str, (CudaFunction, u32)>,
}

/// A CUDA device context and the stream this crate's work is queued on.
///
/// Fatbin modules are loaded on first use and cached per module (and functions per kernel);
/// clones and [`Gpu::with_stream`] share the cache.
#[derive(Clone)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    cache: Arc<Mutex<Cache>>,
    compute_capability: (i32, i32),
    max_dynamic_smem: u32,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ctx.ordinal())
            .field("compute_capability", &self.compute_capability)
            .field("max_dynamic_smem", &self.max_dynamic_smem)
            .finish()
    }
}

impl Gpu {
    /// Opens device `ordinal` (its primary context and default stream).
    ///
    /// [`Error::NoDevice`] when there is no driver or no such device; [`Error::Unsupported`]
    /// when the device is older than sm_80.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        let n = device_count()?;
        if n == 0 {
            return Err(Error::NoDevice("no CUDA device present".into()));
        }
        if ordinal >= n {
            return Err(Error::NoDevice(format!(
                "device {ordinal} requested but only {n} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| {
            Error::NoDevice(format!(
                "could not create a context on device {ordinal}: {e:?}"
            ))
        })?;
        Gpu::from_stream(ctx.default_stream())
    }

    /// Uses an engine's existing stream (for example candle's or mistral.rs's), so this
    /// crate's kernels are ordered with the engine's work.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Gpu> {
        let ctx = stream.context().clone();
        let compute_capability = ctx.compute_capability()?;
        if compute_capability.0 < 8 {
            return Err(Error::Unsupported(format!(
                "compute capability {}.{}: the kernels need sm_80 or newer",
                compute_capability.0, compute_capability.1
            )));
        }
        let optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        Ok(Gpu {
            ctx,
            stream,
            cache: Arc::default(),
            compute_capability,
            max_dynamic_smem: optin.max(0) as u32,
        })
    }

    /// The same device and module cache with another stream of the same context.
    pub fn with_stream(&self, stream: Arc<CudaStream>) -> Result<Gpu> {
        if stream.context() != &self.ctx {
            return Err(Error::WrongDevice(
                "the stream belongs to another CUDA context".into(),
            ));
        }
        Ok(Gpu {
            stream,
            ..self.clone()
        })
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream launches are queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }
    /// The device name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> Result<String> {
        Ok(self.ctx.name()?)
    }

    fn module(&self, cache: &mut Cache, stem: &'static str) -> Result<Arc<CudaModule>> {
        if let Some(m) = cache.modules.get(stem) {
            return Ok(m.clone());
        }
        let build = super::cuda_build();
        let bytes = super::fatbin(stem).ok_or_else(|| {
            Error::KernelsNotBuilt(if build.built {
                format!("no fatbin for kernels/{stem}.cu in this build")
            } else {
                build.skip_reason.to_string()
            })
        })?;
        let module = self
            .ctx
            .load_module(Ptx::from_binary(bytes.to_vec()))
            .map_err(|e| self.load_error(e, stem))?;
        cache.modules.insert(stem, module.clone());
        Ok(module)
    }

    fn load_error(&self, e: DriverError, stem: &str) -> Error {
        let (major, minor) = self.compute_capability;
        let targets = super::cuda_build().targets;
        match e.0 {
            CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU => Error::Unsupported(format!(
                "kernels/{stem}.cu has no code for sm_{major}{minor} (built for {targets}); \
                 rebuild with SPARSE_ATTN_CUDA_ARCHS including {major}{minor}"
            )),
            CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => Error::Unsupported(format!(
                "the driver is too old to JIT the PTX of kernels/{stem}.cu for sm_{major}{minor} \
                 (built for {targets}); update the driver or add SASS for this GPU"
            )),
            _ => Error::Driver(e),
        }
    }

    /// The kernel's function, with the dynamic shared memory limit raised to `smem` if needed.
    ///
    /// Binds the context to the calling thread first: module loads and function look-ups go
    /// through the driver's current context, which is per thread, so a `Gpu` created on one
    /// thread and used on another (a worker pool, a test harness thread) must not depend on
    /// whatever that thread had current.
    fn function(&self, k: &'static KernelDesc, smem: u32) -> Result<CudaFunction> {
        self.ctx.bind_to_thread()?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !cache.functions.contains_key(k.name) {
            let module = self.module(&mut cache, k.module.stem())?;
            let f = module.load_function(k.name)?;
            cache
                .functions
                .insert(k.name, (f, DEFAULT_MAX_DYNAMIC_SMEM));
        }
        let (f, limit) = cache.functions.get_mut(k.name).expect("inserted above");
        if smem > *limit {
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )?;
            *limit = smem;
        }
        Ok(f.clone())
    }

    /// Checks a launch's geometry against the hardware limits, so a bad description is an
    /// error rather than a failed or silently skipped launch.
    fn check_geometry<P: Copy>(&self, l: &Launch<P>) -> Result<()> {
        let threads = l.block.iter().map(|&b| b as u64).product::<u64>();
        if threads == 0 || threads > 1024 {
            return Err(Error::Unsupported(format!(
                "{}: block {:?} has {threads} threads (1..=1024)",
                l.kernel.name, l.block
            )));
        }
        let [gx, gy, gz] = l.grid;
        if gx == 0
            || gx > i32::MAX as u32
            || !(1..=65535).contains(&gy)
            || !(1..=65535).contains(&gz)
        {
            return Err(Error::Unsupported(format!(
                "{}: grid {:?} exceeds the limits (x < 2^31, y and z <= 65535, all >= 1)",
                l.kernel.name, l.grid
            )));
        }
        if l.dynamic_smem_bytes > self.max_dynamic_smem.max(DEFAULT_MAX_DYNAMIC_SMEM) {
            return Err(Error::Unsupported(format!(
                "{}: needs {} bytes of shared memory, the device allows {}",
                l.kernel.name, l.dynamic_smem_bytes, self.max_dynamic_smem
            )));
        }
        Ok(())
    }

    /// Queues `l` on this Gpu's stream (asynchronously; errors of the kernel itself surface at
    /// the next synchronisation).
    ///
    /// # Safety
    /// - `P` must be exactly the params struct the kernel `l.kernel` takes (same `#[repr(C)]`
    ///   layout), and the launch geometry must be the one the kernel was written for.
    /// - Every device pointer in `l.params` must be null where the kernel allows it, or point
    ///   into memory of this Gpu's context that is large enough for every access the kernel
    ///   makes with these params and geometry.
    /// - That memory must stay allocated until the kernel has finished (stream order), and no
    ///   work on another stream may access it concurrently unless ordered by events (cudarc's
    ///   `device_ptr` guards do this for `CudaSlice`s).
    pub unsafe fn launch<P: DeviceRepr + Copy>(&self, l: &Launch<P>) -> Result<()> {
        self.check_geometry(l)?;
        let f = self.function(l.kernel, l.dynamic_smem_bytes)?;
        let cfg = LaunchConfig {
            grid_dim: (l.grid[0], l.grid[1], l.grid[2]),
            block_dim: (l.block[0], l.block[1], l.block[2]),
            shared_mem_bytes: l.dynamic_smem_bytes,
        };
        let mut builder = self.stream.launch_builder(&f);
        builder.arg(&l.params);
        builder.launch(cfg)?;
        Ok(())
    }

    /// Waits for all work queued on this Gpu's stream.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }
}

/// Checks that a buffer lives on `gpu`'s context and has the expected length.
fn check_buffer<T, B: DeviceSlice<T>>(gpu: &Gpu, name: &str, buf: &B, want: usize) -> Result<()> {
    check_context(gpu, name, buf)?;
    if buf.len() != want {
        return Err(Error::Shape(format!(
            "{name} has {} elements, the problem needs {want}",
            buf.len()
        )));
    }
    Ok(())
}

/// Checks that a view (any cudarc device slice) lives on `gpu`'s context.
fn check_context<T, B: DeviceSlice<T>>(gpu: &Gpu, name: &str, buf: &B) -> Result<()> {
    if buf.stream().context() != gpu.context() {
        return Err(Error::WrongDevice(format!(
            "{name} lives on CUDA device {} but the Gpu is device {}",
            buf.stream().context().ordinal(),
            gpu.context().ordinal()
        )));
    }
    Ok(())
}

/// Checks a device address for the kernels' 16-byte row copies.
fn check_aligned(name: &'static str, ptr: u64) -> Result<()> {
    if ptr % 16 != 0 {
        return Err(Error::Layout {
            tensor: name,
            message: format!("starts at device address {ptr:#x}, not 16-byte aligned"),
        });
    }
    Ok(())
}

impl AttnPlan {
    /// Runs the forward pass on the GPU, queued on `gpu`'s stream. `q`, `k`, `v` and `out`
    /// are laid out as in [`AttnPlan::run_emulated`]; `lse` is `[batch, num_heads, q_len]`
    /// (varlen: `[num_heads, total_q]`). Every length and the element type are checked
    /// before anything is launched. Returns once the work is queued (cudarc orders later
    /// reads of `out` and `lse` after it).
    pub fn run_cuda<T: Element + DeviceRepr>(
        &self,
        gpu: &Gpu,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        v: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.upload(gpu)?.run(q, k, v, out, lse)
    }

    /// Uploads the plan's block-sparse metadata (and varlen `cu_seqlens`) to `gpu` once, for
    /// any number of [`GpuPlan::run`] calls: plan once, upload once, run many (every decode
    /// step of a layer, every layer that shares the plan).
    pub fn upload(&self, gpu: &Gpu) -> Result<GpuPlan<'_>> {
        GpuPlan::new(Cow::Borrowed(self), gpu)
    }

    /// [`AttnPlan::upload`] into a GPU plan that owns this plan: no borrowed lifetime, so an
    /// engine (or a driver that builds its plan before its device state) keeps it beside its
    /// other device buffers and runs every step through it.
    pub fn into_gpu(self, gpu: &Gpu) -> Result<GpuPlan<'static>> {
        GpuPlan::new(Cow::Owned(self), gpu)
    }

    /// [`AttnPlan::run_cuda`] from and to host memory: uploads q, k, v, runs, and returns
    /// `(out, lse)` after synchronising.
    pub fn run_cuda_host<T: Element + DeviceRepr + ValidAsZeroBits>(
        &self,
        gpu: &Gpu,
        q: &[T],
        k: &[T],
        v: &[T],
    ) -> Result<(Vec<T>, Vec<f32>)> {
        self.check_lens::<T>(q.len(), k.len(), v.len())?;
        let p = self.problem();
        if p.q_elems() == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        if p.kv_elems() == 0 {
            // No sequence has a key (and cudarc cannot allocate zero bytes): every row is
            // empty, so out = 0 and lse = -inf by definition.
            return Ok(empty_kv_result(self));
        }
        let stream = gpu.stream();
        let qd = stream.clone_htod(q)?;
        let kd = stream.clone_htod(k)?;
        let vd = stream.clone_htod(v)?;
        let mut out = stream.alloc_zeros::<T>(p.q_elems())?;
        let mut lse = stream.alloc_zeros::<f32>(p.lse_elems())?;
        self.run_cuda(gpu, &qd, &kd, &vd, &mut out, &mut lse)?;
        let out_h = stream.clone_dtoh(&out)?;
        let lse_h = stream.clone_dtoh(&lse)?;
        stream.synchronize()?;
        Ok((out_h, lse_h))
    }
}

/// The result when no sequence has a key: every row is empty (out = 0, lse = -inf, or the
/// head's sink logit when the plan has them).
fn empty_kv_result<T: Element>(plan: &AttnPlan) -> (Vec<T>, Vec<f32>) {
    let p = plan.problem();
    let lse = match plan.sink_logits() {
        None => vec![f32::NEG_INFINITY; p.lse_elems()],
        // lse is [batch, num_heads, q_len] (varlen: [num_heads, total_q]): head-major runs.
        Some(sinks) => {
            let (rows, h) = (p.seqs().totals().0, p.num_heads());
            let varlen = matches!(p.seqs(), SeqLens::Varlen { .. });
            (0..p.lse_elems())
                .map(|idx| {
                    let head = if varlen {
                        idx / rows.max(1)
                    } else {
                        idx / p.seqs().max_lens().0.max(1) % h
                    };
                    sinks[head]
                })
                .collect()
        }
    };
    (vec![T::from_f32(0.0); p.q_elems()], lse)
}

/// A paged KV cache on the GPU for [`GpuPlan::run_paged`] (the device twin of
/// [`crate::attention::PagedKv`]).
#[derive(Clone, Copy)]
pub struct DevicePagedKv<'a, T> {
    /// `[num_pages, num_kv_heads, page_size, head_dim]`
    pub k_pages: &'a CudaSlice<T>,
    /// Same shape as `k_pages`.
    pub v_pages: &'a CudaSlice<T>,
    /// Host copy of the `[batch, layout.block_table_stride]` block table.
    pub block_table: &'a [i32],
    /// Page size, pool shape and ring of the cache.
    pub layout: PagedLayout,
}

/// What one step of a run-time plan reads that an engine owns on the device and updates
/// between steps ([`GpuPlan::launch_step`]): the lengths and the paged cache with its block
/// table. Sized for the plan's capacity, never reallocated.
#[derive(Clone, Copy)]
pub struct DeviceStep<'a, T> {
    /// int32 `[batch + 1]`: prefix sums of the step's query lengths.
    pub cu_seqlens_q: &'a CudaSlice<i32>,
    /// int32 `[batch + 1]`: prefix sums of the step's key lengths (tokens in the cache).
    pub cu_seqlens_k: &'a CudaSlice<i32>,
    /// `[num_pages, num_kv_heads, page_size, head_dim]`
    pub k_pages: &'a CudaSlice<T>,
    /// Same shape as `k_pages`.
    pub v_pages: &'a CudaSlice<T>,
    /// int32 `[batch, layout.block_table_stride]`, on the device.
    pub block_table: &'a CudaSlice<i32>,
    /// Page size, pool shape and ring of the cache.
    pub layout: PagedLayout,
}

/// The lengths of one step of a run-time plan that an engine owns on the device and rewrites
/// between steps ([`GpuPlan::launch_contiguous_step`]): sized once for the plan's batch,
/// never reallocated.
#[derive(Clone, Copy)]
pub struct DeviceLens<'a> {
    /// int32 `[batch + 1]`: prefix sums of the step's query lengths.
    pub cu_seqlens_q: &'a CudaSlice<i32>,
    /// int32 `[batch + 1]`: prefix sums of the step's key lengths.
    pub cu_seqlens_k: &'a CudaSlice<i32>,
}

/// Where a GPU call reads K/V from.
enum KvSlices<'a, T> {
    Contiguous {
        k: CudaView<'a, T>,
        v: CudaView<'a, T>,
    },
    Paged {
        k: &'a CudaSlice<T>,
        v: &'a CudaSlice<T>,
        table: &'a CudaSlice<i32>,
        layout: PagedLayout,
    },
    /// Contiguous K/V whose device addresses the caller took (and whose guards it holds).
    Raw((u64, u64)),
}

/// An [`AttnPlan`] whose metadata lives on one GPU (see [`AttnPlan::upload`] and
/// [`AttnPlan::into_gpu`]).
pub struct GpuPlan<'p> {
    /// Borrowed ([`AttnPlan::upload`]) or owned ([`AttnPlan::into_gpu`]).
    plan: Cow<'p, AttnPlan>,
    gpu: Gpu,
    /// The arrays of [`crate::attention::PlanMeta::arrays`], in order.
    meta: Vec<CudaSlice<i32>>,
    cu: Option<(CudaSlice<i32>, CudaSlice<i32>)>,
    /// Split-KV partial outputs and LSEs (see [`AttnPlan::split_workspace`]).
    workspace: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
    /// The plan's sink logits and ALiBi slopes ([`AttnPlan::head_vectors`]), when it has them.
    head_vectors: [Option<CudaSlice<f32>>; 2],
    /// The plan's step plan ([`AttnPlan::step_plan`]), uploaded beside it.
    step: Option<Box<GpuPlan<'static>>>,
}

impl<'p> GpuPlan<'p> {
    /// Uploads `plan`'s metadata, lengths, per-head vectors and split workspace to `gpu`.
    fn new(plan: Cow<'p, AttnPlan>, gpu: &Gpu) -> Result<Self> {
        let this: &AttnPlan = &plan;
        let stream = gpu.stream();
        let meta = this
            .meta()
            .arrays()
            .iter()
            .map(|(_, a)| stream.clone_htod(a.as_slice()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // Run-time walks read the lengths from cu_seqlens (here the plan's maxima; an
        // engine's own device lengths per step are issue 12's engine API).
        let runtime = this.walk().runtime_lengths();
        let cu = match &this.problem().seqs() {
            SeqLens::Varlen { cu_q, cu_k } => {
                Some((stream.clone_htod(cu_q)?, stream.clone_htod(cu_k)?))
            }
            seqs @ SeqLens::Uniform { .. } if runtime => {
                let (cq, ck) = seqs.cu_seqlens();
                Some((stream.clone_htod(&cq)?, stream.clone_htod(&ck)?))
            }
            SeqLens::Uniform { .. } => None,
        };
        let [sinks, slopes] = this
            .head_vectors()
            .map(|(_, v)| v.map(|v| stream.clone_htod(v)).transpose());
        let head_vectors = [sinks?, slopes?];
        let (o_ws, lse_ws) = this.split_workspace();
        let workspace = if o_ws > 0 {
            Some((
                stream.alloc_zeros::<f32>(o_ws)?,
                stream.alloc_zeros::<f32>(lse_ws)?,
            ))
        } else {
            None
        };
        let step = match this.step_plan() {
            Some(s) => Some(Box::new(GpuPlan::new(Cow::Owned(s.clone()), gpu)?)),
            None => None,
        };
        Ok(GpuPlan {
            plan,
            gpu: gpu.clone(),
            meta,
            cu,
            workspace,
            head_vectors,
            step,
        })
    }
}

impl GpuPlan<'_> {
    /// The plan this was uploaded from.
    pub fn plan(&self) -> &AttnPlan {
        &self.plan
    }

    /// The GPU the plan lives on.
    pub(crate) fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The uploaded plan a step whose longest query has `max_q_len` tokens launches
    /// ([`AttnPlan::plan_for_rows`]): the step plan when it fits, else this.
    fn for_rows(&self, max_q_len: usize) -> &GpuPlan<'_> {
        match &self.step {
            Some(s) if !std::ptr::eq(self.plan.plan_for_rows(max_q_len), self.plan()) => s,
            _ => self,
        }
    }

    /// Device addresses of the uploaded metadata arrays ([`crate::attention::PlanMeta::arrays`]
    /// order), for the launches that write them before a forward launch on the same stream
    /// (adaptive plans: selection bits, lists, views, components).
    pub(crate) fn meta_addrs(&self) -> MetaAddrs {
        let stream = self.gpu.stream();
        let mut m = MetaAddrs::default();
        for (slot, b) in m.0.iter_mut().zip(&self.meta) {
            let (ptr, _guard) = b.device_ptr(stream);
            *slot = ptr;
        }
        m
    }

    /// The uploaded metadata array `i`.
    pub(crate) fn meta_buffer(&self, i: usize) -> &CudaSlice<i32> {
        &self.meta[i]
    }

    /// Runs the forward pass, queued on the GPU's stream; see [`AttnPlan::run_cuda`]. Every
    /// length and the element type are checked before anything is launched.
    pub fn run<T: Element + DeviceRepr>(
        &self,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        v: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.plan.check_lens::<T>(q.len(), k.len(), v.len())?;
        let p = self.plan.problem();
        check_buffer(&self.gpu, "k", k, p.kv_elems())?;
        check_buffer(&self.gpu, "v", v, p.kv_elems())?;
        self.run_with(
            q,
            KvSlices::Contiguous {
                k: k.as_view(),
                v: v.as_view(),
            },
            out,
            lse,
        )
    }

    /// Runs with K/V read from a paged cache on the GPU (see
    /// [`crate::attention::PagedLayout`]); the layout, every block-table entry a launch can
    /// read, and the ring's residency are checked on the host first (`block_table` is the
    /// host copy; it is uploaded for the launch).
    pub fn run_paged<T: Element + DeviceRepr>(
        &self,
        q: &CudaSlice<T>,
        kv: &DevicePagedKv<'_, T>,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (k_pages, v_pages, block_table, layout) =
            (kv.k_pages, kv.v_pages, kv.block_table, &kv.layout);
        let p = self.plan.problem();
        self.plan
            .check_lens::<T>(q.len(), p.kv_elems(), p.kv_elems())?;
        self.plan
            .check_paged(k_pages.len(), v_pages.len(), block_table, layout)?;
        check_buffer(&self.gpu, "k_pages", k_pages, k_pages.len())?;
        check_buffer(&self.gpu, "v_pages", v_pages, v_pages.len())?;
        let table = self.gpu.stream().clone_htod(block_table)?;
        self.run_with(
            q,
            KvSlices::Paged {
                k: k_pages,
                v: v_pages,
                table: &table,
                layout: *layout,
            },
            out,
            lse,
        )
    }

    /// One step of a run-time plan ([`AttnPlan::for_max_lengths`]) at the lengths `seqs`,
    /// K/V read from a paged cache: q and out `[total_q, num_heads, head_dim]` of the step,
    /// lse `[num_heads, batch x max q_len]` (the plan's capacity; the step's rows first in
    /// each head's row). The step's `cu_seqlens` are uploaded for the launch (the plan and its
    /// metadata are not: they serve every step); lengths, the layout and every block-table
    /// entry the step can read are checked on the host first. A step whose sequences fit the
    /// plan's step plan ([`AttnPlan::step_plan`]: decode steps) runs the step tile's kernel.
    pub fn run_paged_step<T: Element + DeviceRepr>(
        &self,
        seqs: &SeqLens,
        q: &CudaSlice<T>,
        kv: &DevicePagedKv<'_, T>,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let plan: &AttnPlan = &self.plan;
        plan.check_step::<T>(seqs)?;
        plan.check_paged_for(
            seqs,
            kv.k_pages.len(),
            kv.v_pages.len(),
            kv.block_table,
            &kv.layout,
        )?;
        check_buffer(&self.gpu, "k_pages", kv.k_pages, kv.k_pages.len())?;
        check_buffer(&self.gpu, "v_pages", kv.v_pages, kv.v_pages.len())?;
        let stream = self.gpu.stream();
        let (cq, ck) = seqs.cu_seqlens();
        let lens = (stream.clone_htod(&cq)?, stream.clone_htod(&ck)?);
        let table = stream.clone_htod(kv.block_table)?;
        let p = plan.problem();
        let q_elems = seqs.totals().0 * p.num_heads() * p.head_dim().get() as usize;
        let lse_elems = p.seqs().totals().0 * p.num_heads();
        self.check_packed(q, out, lse, (q_elems, lse_elems))?;
        self.for_rows(seqs.max_lens().0).launch_with(
            q,
            KvSlices::Paged {
                k: kv.k_pages,
                v: kv.v_pages,
                table: &table,
                layout: kv.layout,
            },
            out,
            Some(lse.as_view_mut()),
            Some((&lens.0, &lens.1)),
            &plan.packed_layout(),
        )
    }

    /// One step of a run-time plan at the lengths `seqs`, K/V contiguous, every tensor at
    /// explicit strides: q, k, v and out are views (for example `fused.slice(k_offset..)` of
    /// one fused QKV buffer, [`TensorLayout::fused_qkv`], or a padded activation tensor)
    /// holding the step's `[total_q, num_heads, head_dim]` and `[total_k, num_kv_heads,
    /// head_dim]` at `layout`'s strides, each starting at its tensor's first element (16-byte
    /// aligned). Only out's elements of the step are written. `lse` (a view: of a whole
    /// buffer, `as_view_mut()`, or of part of one, `slice_mut(offset..)`) at `layout.lse`:
    /// [`LseLayout::Plan`] is `[num_heads, batch x max q_len]` (the plan's capacity),
    /// [`LseLayout::Strided`] the step's `total_q` tokens at the caller's strides; `None`
    /// skips the LSE store. Lengths, layouts (`Error::Layout`) and contexts are checked
    /// first. The emulator twin is [`AttnPlan::run_emulated_step_into`]. Like
    /// [`GpuPlan::run_paged_step`], a step that fits the plan's step plan runs its kernel
    /// (so its bits match [`GpuPlan::launch_contiguous_step`] only where the plan has no
    /// step plan).
    ///
    /// A convenience, **not CUDA-graph-capture-safe**: the step's `cu_seqlens` are built on
    /// the host and uploaded (two small allocations and host-to-device copies per call). An
    /// engine that captures its steps keeps the lengths on the device and calls
    /// [`GpuPlan::launch_contiguous_step`], which queues the launches and nothing else.
    #[allow(clippy::too_many_arguments)]
    pub fn run_step_strided<T, Q, K, O>(
        &self,
        seqs: &SeqLens,
        q: &Q,
        k: &K,
        v: &K,
        out: &mut O,
        lse: Option<CudaViewMut<'_, f32>>,
        layout: &TensorLayout,
    ) -> Result<()>
    where
        T: Element + DeviceRepr,
        Q: DevicePtr<T> + DeviceSlice<T>,
        K: DevicePtr<T> + DeviceSlice<T>,
        O: DevicePtrMut<T> + DeviceSlice<T>,
    {
        let plan: &AttnPlan = &self.plan;
        plan.check_step::<T>(seqs)?;
        let (tq, tk) = seqs.totals();
        self.check_contiguous_step((tq, tk), q, k, v, out, lse.as_ref(), layout)?;
        let stream = self.gpu.stream();
        let (cq, ck) = seqs.cu_seqlens();
        let lens = (stream.clone_htod(&cq)?, stream.clone_htod(&ck)?);
        self.for_rows(seqs.max_lens().0).launch_contiguous(
            q,
            k,
            v,
            out,
            lse,
            (&lens.0, &lens.1),
            layout,
        )
    }

    /// [`GpuPlan::run_step_strided`] in the capture-safe form: the step's lengths are the
    /// engine's, on the device (`lens`, rewritten between steps, never reallocated), and this
    /// queues the forward (and, split-KV, the combine) launch on the plan's stream and
    /// nothing else: no allocation, no host-to-device copy, no synchronisation, no host read
    /// of device data, so it can be captured in a CUDA graph and replayed while the engine
    /// rewrites the lengths and the tensors between replays (the contiguous twin of
    /// [`GpuPlan::launch_step_strided`], which reads K/V from pages).
    ///
    /// The host does not know the step's lengths, so every tensor is sized for the plan's
    /// capacity: q and out hold `batch x max q_len` tokens at `layout.q` and `layout.out`, k
    /// and v `batch x max kv_len` tokens at `layout.k` and `layout.v` (the step's rows
    /// first, `cu_seqlens` rows in; only the step's rows are read and written); `lse` (a
    /// view, of a whole buffer or at an offset into one) at `layout.lse` for `batch x max
    /// q_len` tokens ([`LseLayout::Plan`]: `[num_heads, batch
    /// x max q_len]`), or `None` to skip the LSE store. Checked here: the plan's walk and
    /// element type, every extent against `layout` (`Error::Layout`), the lengths' buffers
    /// (`batch + 1` each), contexts and alignment. The lengths themselves are device data:
    /// they must be prefix sums from 0 within the plan's capacity (the offsets are trusted); a
    /// sequence longer than the plan's maxima is not read and its rows are left unwritten.
    #[allow(clippy::too_many_arguments)]
    pub fn launch_contiguous_step<T, Q, K, O>(
        &self,
        lens: &DeviceLens<'_>,
        q: &Q,
        k: &K,
        v: &K,
        out: &mut O,
        lse: Option<CudaViewMut<'_, f32>>,
        layout: &TensorLayout,
    ) -> Result<()>
    where
        T: Element + DeviceRepr,
        Q: DevicePtr<T> + DeviceSlice<T>,
        K: DevicePtr<T> + DeviceSlice<T>,
        O: DevicePtrMut<T> + DeviceSlice<T>,
    {
        self.check_runtime_plan::<T>("launch_contiguous_step")?;
        self.check_lens_buffers(lens.cu_seqlens_q, lens.cu_seqlens_k)?;
        let capacity = self.plan.problem().seqs().totals();
        self.check_contiguous_step(capacity, q, k, v, out, lse.as_ref(), layout)?;
        let lens = (lens.cu_seqlens_q, lens.cu_seqlens_k);
        self.launch_contiguous(q, k, v, out, lse, lens, layout)
    }

    /// The layout, context and LSE checks of a contiguous strided step of `rows` = (query
    /// tokens, key tokens).
    #[allow(clippy::too_many_arguments)]
    fn check_contiguous_step<T, Q, K, O>(
        &self,
        rows: (usize, usize),
        q: &Q,
        k: &K,
        v: &K,
        out: &O,
        lse: Option<&CudaViewMut<'_, f32>>,
        layout: &TensorLayout,
    ) -> Result<()>
    where
        Q: DeviceSlice<T>,
        K: DeviceSlice<T>,
        O: DeviceSlice<T>,
    {
        let p = self.plan.problem();
        let (tq, tk) = rows;
        let (h, hk, d) = (p.num_heads(), p.num_kv_heads(), p.head_dim().get() as usize);
        layout.q.check("q", tq, h, d, q.len())?;
        layout.k.check("k", tk, hk, d, k.len())?;
        layout.v.check("v", tk, hk, d, v.len())?;
        layout.out.check("out", tq, h, d, out.len())?;
        check_context(&self.gpu, "k", k)?;
        check_context(&self.gpu, "v", v)?;
        self.check_step_outputs(q, out, lse, layout, tq)
    }

    /// Queues a contiguous strided step (checked by the caller) with the lengths `lens`.
    #[allow(clippy::too_many_arguments)]
    fn launch_contiguous<T, Q, K, O>(
        &self,
        q: &Q,
        k: &K,
        v: &K,
        out: &mut O,
        lse: Option<CudaViewMut<'_, f32>>,
        lens: (&CudaSlice<i32>, &CudaSlice<i32>),
        layout: &TensorLayout,
    ) -> Result<()>
    where
        T: Element + DeviceRepr,
        Q: DevicePtr<T> + DeviceSlice<T>,
        K: DevicePtr<T> + DeviceSlice<T>,
        O: DevicePtrMut<T> + DeviceSlice<T>,
    {
        let stream = self.gpu.stream();
        // Views of the whole of k and v: the kernels read them at the layout's strides.
        let (k_ptr, _kg) = k.device_ptr(stream);
        let (v_ptr, _vg) = v.device_ptr(stream);
        check_aligned("k", k_ptr)?;
        check_aligned("v", v_ptr)?;
        self.launch_with(
            q,
            KvSlices::Raw((k_ptr, v_ptr)),
            out,
            lse,
            Some(lens),
            layout,
        )
    }

    /// The context, element count and alignment checks of a strided step's q, out and lse
    /// (`lse` at `layout.lse` for `rows` query tokens; [`LseLayout::Plan`]: the plan's
    /// capacity, `[num_heads, batch x max q_len]`, exactly).
    fn check_step_outputs<T, Q, O>(
        &self,
        q: &Q,
        out: &O,
        lse: Option<&CudaViewMut<'_, f32>>,
        layout: &TensorLayout,
        rows: usize,
    ) -> Result<()>
    where
        Q: DeviceSlice<T>,
        O: DeviceSlice<T>,
    {
        check_context(&self.gpu, "q", q)?;
        check_context(&self.gpu, "out", out)?;
        if let Some(l) = lse {
            let p = self.plan.problem();
            match layout.lse {
                LseLayout::Plan => {
                    check_buffer(&self.gpu, "lse", l, p.seqs().totals().0 * p.num_heads())?
                }
                LseLayout::Strided(s) => {
                    check_context(&self.gpu, "lse", l)?;
                    s.check(rows, p.num_heads(), l.len())?;
                }
            }
        }
        Ok(())
    }

    /// q, out and lse of a packed call: exactly `elems` = (q and out elements, lse elements).
    fn check_packed<T>(
        &self,
        q: &CudaSlice<T>,
        out: &CudaSlice<T>,
        lse: &CudaSlice<f32>,
        elems: (usize, usize),
    ) -> Result<()> {
        check_buffer(&self.gpu, "q", q, elems.0)?;
        check_buffer(&self.gpu, "out", out, elems.0)?;
        check_buffer(&self.gpu, "lse", lse, elems.1)
    }

    /// Queues one step of a run-time plan ([`AttnPlan::for_max_lengths`]) on the plan's
    /// stream and nothing else: no allocation, no host-to-device copy, no synchronisation,
    /// no host read of device data, so it can be captured in a CUDA graph and replayed while
    /// the engine rewrites the lengths, the block table and the pages between replays. q and
    /// out are `[batch x max q_len, num_heads, head_dim]` (the plan's capacity; the step's
    /// rows packed first), lse `[num_heads, batch x max q_len]`. What is checked here is only
    /// what the host knows: buffer sizes and contexts, the layout against the plan's pool.
    /// Device data is the engine's: a sequence longer than the plan's maxima is not read and a
    /// block-table entry outside the pool reads nothing (the kernels' checked no-read path;
    /// the affected rows are unspecified, the cache is never written). It queues the plan's
    /// own kernel; [`GpuPlan::launch_step_rows`] takes the step tile for decode steps.
    pub fn launch_step<T: Element + DeviceRepr>(
        &self,
        step: &DeviceStep<'_, T>,
        q: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_packed_step(None, step, q, out, lse)
    }

    /// [`GpuPlan::launch_step`] for an engine that knows on the host that no sequence of the
    /// step has more than `max_q_len` query tokens (say 1: a decode step), while the lengths
    /// themselves stay device data: when `max_q_len` fits the plan's step plan
    /// ([`AttnPlan::step_plan`]) the step tile's kernel is queued, else the plan's own, over
    /// the same buffers (the plan's capacity). A step that breaks the promise reads and
    /// writes nothing out of bounds: a sequence longer than the step plan's maximum is not
    /// read, and split-KV partials of rows past the step plan's capacity (`batch x` its
    /// maximum q_len: what its workspace holds) are dropped by the kernels (`split_rows`,
    /// kernels/include/sparse_attn/split_kv.cuh); those rows are unspecified. Capture-safe
    /// like `launch_step`: a graph captured with `max_q_len` 1 replays the step kernel.
    pub fn launch_step_rows<T: Element + DeviceRepr>(
        &self,
        max_q_len: usize,
        step: &DeviceStep<'_, T>,
        q: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.launch_packed_step(Some(max_q_len), step, q, out, lse)
    }

    /// `launch_step` (`max_q_len` None: the plan's own kernel) and `launch_step_rows`.
    fn launch_packed_step<T: Element + DeviceRepr>(
        &self,
        max_q_len: Option<usize>,
        step: &DeviceStep<'_, T>,
        q: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.check_device_step(step)?;
        let p = self.plan.problem();
        let capacity = p.seqs().totals().0;
        let elems = (
            capacity * p.num_heads() * p.head_dim().get() as usize,
            capacity * p.num_heads(),
        );
        self.check_packed(q, out, lse, elems)?;
        let target = max_q_len.map_or(self, |rows| self.for_rows(rows));
        target.launch_device_step(
            step,
            q,
            out,
            Some(lse.as_view_mut()),
            &self.plan.packed_layout(),
        )
    }

    /// [`GpuPlan::launch_step`] with q and out at explicit strides and the LSE optional: q and
    /// out are views (say of a fused QKV buffer and of a padded activation tensor, see
    /// [`TensorLayout`]) of the plan's capacity, `batch x max q_len` tokens at `layout.q` and
    /// `layout.out` (the step's rows first; only the rows of the step are written); `lse` (a
    /// view, of a whole buffer or at an offset into one) at `layout.lse` for `batch x max
    /// q_len` tokens ([`LseLayout::Plan`]: `[num_heads, batch x
    /// max q_len]`; [`LseLayout::Strided`]: say token-major), or `None` to skip the LSE store
    /// (a null pointer in the params). K/V come from the step's pages (`layout.k` and `layout.v` are unused).
    /// Queues launches only, like `launch_step`; layouts are checked first (`Error::Layout`).
    pub fn launch_step_strided<T, Q, O>(
        &self,
        step: &DeviceStep<'_, T>,
        q: &Q,
        out: &mut O,
        lse: Option<CudaViewMut<'_, f32>>,
        layout: &TensorLayout,
    ) -> Result<()>
    where
        T: Element + DeviceRepr,
        Q: DevicePtr<T> + DeviceSlice<T>,
        O: DevicePtrMut<T> + DeviceSlice<T>,
    {
        self.check_device_step(step)?;
        let p = self.plan.problem();
        let (h, d) = (p.num_heads(), p.head_dim().get() as usize);
        let capacity = p.seqs().totals().0;
        layout.q.check("q", capacity, h, d, q.len())?;
        layout.out.check("out", capacity, h, d, out.len())?;
        self.check_step_outputs(q, out, lse.as_ref(), layout, capacity)?;
        self.launch_device_step(step, q, out, lse, layout)
    }

    fn launch_device_step<T, Q, O>(
        &self,
        step: &DeviceStep<'_, T>,
        q: &Q,
        out: &mut O,
        lse: Option<CudaViewMut<'_, f32>>,
        layout: &TensorLayout,
    ) -> Result<()>
    where
        T: Element + DeviceRepr,
        Q: DevicePtr<T> + DeviceSlice<T>,
        O: DevicePtrMut<T> + DeviceSlice<T>,
    {
        self.launch_with(
            q,
            KvSlices::Paged {
                k: step.k_pages,
                v: step.v_pages,
                table: step.block_table,
                layout: step.layout,
            },
            out,
            lse,
            Some((step.cu_seqlens_q, step.cu_seqlens_k)),
            layout,
        )
    }

    /// What the host can check of a device step: the plan's walk and element type, the page
    /// layout against the pool, the lengths' and the table's buffers.
    fn check_device_step<T: Element>(&self, step: &DeviceStep<'_, T>) -> Result<()> {
        self.check_runtime_plan::<T>("launch_step")?;
        let p = self.plan.problem();
        let batch = p.seqs().batch();
        let l = &step.layout;
        let page_elems = l.page_size * p.num_kv_heads() * p.head_dim().get() as usize;
        if !(8..=256).contains(&l.page_size) || !l.page_size.is_power_of_two() {
            return Err(Error::Cache(format!(
                "page size {} is not a power of two in 8..=256",
                l.page_size
            )));
        }
        if step.k_pages.len() != step.v_pages.len() || step.k_pages.len() % page_elems != 0 {
            return Err(Error::Cache(format!(
                "k/v pages have {}/{} elements, not the same multiple of {page_elems}",
                step.k_pages.len(),
                step.v_pages.len()
            )));
        }
        self.check_lens_buffers(step.cu_seqlens_q, step.cu_seqlens_k)?;
        let table_len = batch * l.block_table_stride;
        check_buffer(&self.gpu, "block_table", step.block_table, table_len)?;
        check_buffer(&self.gpu, "k_pages", step.k_pages, step.k_pages.len())?;
        check_buffer(&self.gpu, "v_pages", step.v_pages, step.v_pages.len())?;
        Ok(())
    }

    /// A step launch (`what`) of device lengths needs a run-time plan of the element type.
    fn check_runtime_plan<T: Element>(&self, what: &str) -> Result<()> {
        let plan: &AttnPlan = &self.plan;
        if !plan.walk().runtime_lengths() {
            return Err(Error::Unsupported(format!(
                "{what} needs a run-time plan (AttnPlan::for_max_lengths)"
            )));
        }
        if T::DTYPE != plan.problem().dtype() {
            return Err(Error::Shape(format!(
                "element type {} does not match the plan's {}",
                T::DTYPE.name(),
                plan.problem().dtype().name()
            )));
        }
        Ok(())
    }

    /// The device lengths of a step: `batch + 1` prefix sums each, on the plan's context.
    fn check_lens_buffers(&self, cu_q: &CudaSlice<i32>, cu_k: &CudaSlice<i32>) -> Result<()> {
        let batch = self.plan.problem().seqs().batch();
        check_buffer(&self.gpu, "cu_seqlens_q", cu_q, batch + 1)?;
        check_buffer(&self.gpu, "cu_seqlens_k", cu_k, batch + 1)
    }

    fn run_with<T: Element + DeviceRepr>(
        &self,
        q: &CudaSlice<T>,
        kv: KvSlices<'_, T>,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let p = self.plan.problem();
        self.check_packed(q, out, lse, (p.q_elems(), p.lse_elems()))?;
        self.launch_with(
            q,
            kv,
            out,
            Some(lse.as_view_mut()),
            None,
            &self.plan.packed_layout(),
        )
    }

    /// The launches over q, K/V, out and lse (`None`: not written) at `layout`'s strides,
    /// with the plan's cu_seqlens or a step's (`lens`). The callers have checked every
    /// tensor's extent against `layout` (or, packed, its exact length) and its context; the
    /// device addresses' alignment is checked here.
    #[allow(clippy::too_many_arguments)]
    fn launch_with<T, Q, O>(
        &self,
        q: &Q,
        kv: KvSlices<'_, T>,
        out: &mut O,
        mut lse: Option<CudaViewMut<'_, f32>>,
        lens: Option<(&CudaSlice<i32>, &CudaSlice<i32>)>,
        layout: &TensorLayout,
    ) -> Result<()>
    where
        T: Element + DeviceRepr,
        Q: DevicePtr<T> + DeviceSlice<T>,
        O: DevicePtrMut<T> + DeviceSlice<T>,
    {
        let (plan, gpu): (&AttnPlan, _) = (&self.plan, &self.gpu);
        if q.len() == 0 || out.len() == 0 {
            return Ok(());
        }
        let stream = gpu.stream();
        // The guards record the kernel's reads and writes on the buffers' events when dropped,
        // at the end of this function, after the launch is queued.
        let (q_ptr, _q_guard) = q.device_ptr(stream);
        let (kv_ptrs, _k_guard, _v_guard, table_ptr) = match &kv {
            KvSlices::Contiguous { k, v } => {
                let (kp, kg) = k.device_ptr(stream);
                let (vp, vg) = v.device_ptr(stream);
                ((kp, vp), Some(kg), Some(vg), None)
            }
            KvSlices::Raw(ptrs) => (*ptrs, None, None, None),
            KvSlices::Paged { k, v, table, .. } => {
                let (kp, kg) = k.device_ptr(stream);
                let (vp, vg) = v.device_ptr(stream);
                ((kp, vp), Some(kg), Some(vg), Some(table.device_ptr(stream)))
            }
        };
        let (k_ptr, v_ptr) = kv_ptrs;
        let paged = match (&kv, &table_ptr) {
            (KvSlices::Paged { layout, k, .. }, Some((t, _))) => PagedAddrs {
                k_pages: k_ptr,
                v_pages: v_ptr,
                block_table: *t,
                layout: *layout,
                num_pages: crate::attention::pool_pages(k.len(), plan.problem(), layout),
            },
            _ => PagedAddrs::default(),
        };
        let (k_ptr, v_ptr) = if table_ptr.is_some() {
            (0, 0)
        } else {
            (k_ptr, v_ptr)
        };
        let (out_ptr, _out_guard) = out.device_ptr_mut(stream);
        check_aligned("q", q_ptr)?;
        check_aligned("out", out_ptr)?;
        let lse_ptrs = lse.as_mut().map(|l| l.device_ptr_mut(stream));
        let lse_ptr = lse_ptrs.as_ref().map_or(0, |(p, _)| *p);
        let cu_ptrs = lens
            .or(self.cu.as_ref().map(|(q, k)| (q, k)))
            .map(|(cq, ck)| (cq.device_ptr(stream), ck.device_ptr(stream)));
        let (cu_q, cu_k) = cu_ptrs
            .as_ref()
            .map_or((0, 0), |((cq, _), (ck, _))| (*cq, *ck));
        // A fixed array of guards, not a Vec: a step allocates nothing, on the host either.
        let meta_ptrs: [_; PlanMeta::NUM_ARRAYS] =
            std::array::from_fn(|i| self.meta.get(i).map(|b| b.device_ptr(stream)));
        let ws_ptrs = self
            .workspace
            .as_ref()
            .map(|(o, l)| (o.device_ptr(stream), l.device_ptr(stream)));
        let (o_partial, lse_partial) = ws_ptrs.as_ref().map_or((0, 0), |((o, _), (l, _))| (*o, *l));
        let mut meta = MetaAddrs::default();
        for (slot, p) in meta.0.iter_mut().zip(&meta_ptrs) {
            *slot = p.as_ref().map_or(0, |(ptr, _)| *ptr);
        }
        let head_ptrs = self
            .head_vectors
            .each_ref()
            .map(|b| b.as_ref().map(|b| b.device_ptr(stream)));
        let [sink_logits, alibi_slopes] = head_ptrs
            .each_ref()
            .map(|p| p.as_ref().map_or(0, |(p, _)| *p));
        let addrs = TensorAddrs {
            meta,
            paged,
            q: q_ptr,
            k: k_ptr,
            v: v_ptr,
            out: out_ptr,
            lse: lse_ptr,
            cu_q,
            cu_k,
            tiles_visited: 0,
            o_partial,
            lse_partial,
            sink_logits,
            alibi_slopes,
        };
        // SAFETY: the launches come from this plan (kernels and params agree); q, k, v, out and
        // lse were checked to be on this context with exactly the lengths the validated
        // problem (or the validated step, within the plan's maxima) needs, or, at explicit
        // strides, to hold every element `layout` reaches for those rows, 16-byte aligned (a
        // missing lse is null, which the kernels never write); cu_seqlens, the
        // metadata, the per-head vectors and the split workspace were uploaded or allocated
        // from the validated plan on this context; all guards live until after the
        // launches are queued (in order, on one stream) and cudarc's events order the
        // buffers' other uses.
        unsafe {
            gpu.launch(&plan.launch_with_layout(&addrs, layout))?;
            if let Some(combine) = plan.combine_launch_with_layout(&addrs, layout) {
                gpu.launch(&combine)?;
            }
        }
        Ok(())
    }
}
