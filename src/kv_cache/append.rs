//! Writing new tokens' K/V into the pages: the launch of `kernels/kv_append.cu`, its
//! emulated run on host pages, and the GPU storage of a cache's pages that uses it.

use std::ffi::c_void;

use cudarc::driver::{
    CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice, ValidAsZeroBits,
};

use super::cache::{KvCache, Placement};
use super::layout::PageLayout;
use super::summary::SummaryLayout;
use super::table::BlockTable;
use crate::attention::Element;
use crate::backend::{DevicePagedKv, Gpu};
use crate::emu::GuardedBuffer;
use crate::error::{Error, Result};
use crate::ffi::{SaKvAppendParams, SA_DTYPE_BF16, SA_DTYPE_F16};
use crate::kernels::{self, Launch};
use crate::shape::DType;

/// Device (or guarded host) addresses of one append.
#[derive(Clone, Copy, Debug, Default)]
pub struct AppendAddrs {
    /// `[n_tokens, num_kv_heads, head_dim]` new keys.
    pub k_new: u64,
    /// Same shape, new values.
    pub v_new: u64,
    /// The layer's key pool, `[num_pages, num_kv_heads, page_size, head_dim]`.
    pub k_pages: u64,
    /// The layer's value pool.
    pub v_pages: u64,
    /// `[n_tokens][2]` (page, row) pairs from [`placement_slots`].
    pub slots: u64,
    /// The layer's summary pool ([`SummaryLayout`]), or 0 when the cache keeps none.
    pub summaries: u64,
}

/// The kernel's `[n_tokens][2]` (physical page, row in page) array for `layer` of a
/// placement, checked against the pool (`Error::Cache`) before any launch.
pub fn placement_slots(
    placement: &Placement,
    layer: usize,
    layout: &PageLayout,
    num_pages: usize,
) -> Result<Vec<i32>> {
    let slots = placement.layers.get(layer).ok_or_else(|| {
        Error::Shape(format!(
            "placement has no layer {layer} ({} layers)",
            placement.layers.len()
        ))
    })?;
    let mut out = Vec::with_capacity(2 * slots.len());
    for s in slots {
        if s.page as usize >= num_pages || s.offset as usize >= layout.page_size.get() {
            return Err(Error::Cache(format!(
                "slot (page {}, row {}) outside a pool of {num_pages} pages of {} rows",
                s.page,
                s.offset,
                layout.page_size.get()
            )));
        }
        out.extend_from_slice(&[s.page as i32, s.offset as i32]);
    }
    Ok(out)
}

/// Checks that the kernel's one-writer-per-summary rule holds for `slots` (`[n][2]` page,
/// row): the tokens landing in one summary block of `block` rows appear consecutively, on
/// consecutive rows, and no (page, row) twice. `Error::Cache` otherwise (a placement from
/// [`KvCache::reserve_append`] always passes).
pub fn check_summary_runs(slots: &[i32], block: usize) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut runs = std::collections::HashSet::new();
    let pairs: Vec<(i32, i32)> = slots.chunks(2).map(|s| (s[0], s[1])).collect();
    for (t, &(page, row)) in pairs.iter().enumerate() {
        if !seen.insert((page, row)) {
            return Err(Error::Cache(format!(
                "append: slot (page {page}, row {row}) appears twice"
            )));
        }
        let continues = t > 0 && pairs[t - 1] == (page, row - 1) && row % block as i32 != 0;
        if !continues && !runs.insert((page, row / block as i32)) {
            return Err(Error::Cache(format!(
                "append: the tokens of summary block {} of page {page} are not consecutive",
                row / block as i32
            )));
        }
    }
    Ok(())
}

/// The append launch for `n_tokens` rows into a pool of `num_pages` pages; with
/// `summaries` (the layer's [`SummaryLayout`]; `a.summaries` its pool) the kernel keeps the
/// summaries current too, reading the keys as `dtype`.
pub fn append_launch(
    layout: &PageLayout,
    num_pages: usize,
    n_tokens: usize,
    a: &AppendAddrs,
) -> Result<Launch<SaKvAppendParams>> {
    append_launch_with(layout, num_pages, n_tokens, a, DType::F16, None)
}

/// [`append_launch`] keeping the summaries of `summaries` (pool at `a.summaries`) current,
/// the keys read as `dtype`. Errors: summaries of another shape than the pages, or a block
/// that does not divide the page (`Error::Shape`).
pub fn append_launch_with(
    layout: &PageLayout,
    num_pages: usize,
    n_tokens: usize,
    a: &AppendAddrs,
    dtype: DType,
    summaries: Option<&SummaryLayout>,
) -> Result<Launch<SaKvAppendParams>> {
    if layout.head_dim % 8 != 0 || n_tokens > i32::MAX as usize || num_pages > i32::MAX as usize {
        return Err(Error::Shape(format!(
            "append: head_dim {} must be a multiple of 8; {n_tokens} tokens and {num_pages} \
             pages must fit i32",
            layout.head_dim
        )));
    }
    let summaries = match summaries {
        None => SummaryLayout::identity(1, 0, 1)?.ffi(0, 0)?,
        Some(s) => {
            let ps = layout.page_size.get();
            if s.num_kv_heads != layout.num_kv_heads
                || s.head_dim != layout.head_dim
                || ps % s.block != 0
                || s.blocks_per_page != ps / s.block
                || a.summaries == 0
            {
                return Err(Error::Shape(format!(
                    "append: summaries {s:?} do not fit pages {layout:?} (or have no pool)"
                )));
            }
            s.ffi(a.summaries, 0)?
        }
    };
    Ok(Launch {
        kernel: kernels::kv_append(),
        grid: [n_tokens.max(1) as u32, layout.num_kv_heads as u32, 1],
        block: [32, 1, 1],
        dynamic_smem_bytes: 0,
        params: SaKvAppendParams {
            k_new: a.k_new as *const c_void,
            v_new: a.v_new as *const c_void,
            k_pages: a.k_pages as *mut c_void,
            v_pages: a.v_pages as *mut c_void,
            slots: a.slots as *const i32,
            page_stride: layout.page_stride() as i64,
            page_head_stride: layout.page_head_stride() as i64,
            n_tokens: n_tokens as i32,
            num_kv_heads: layout.num_kv_heads as i32,
            head_dim: layout.head_dim as i32,
            num_pages: num_pages as i32,
            page_size: layout.page_size.get() as i32,
            dtype: match dtype {
                DType::F16 => SA_DTYPE_F16 as i32,
                DType::BF16 => SA_DTYPE_BF16 as i32,
            },
            summaries,
        },
    })
}

fn check_rows(layout: &PageLayout, n_tokens: usize, k: usize, v: usize) -> Result<()> {
    let want = n_tokens * layout.num_kv_heads * layout.head_dim;
    if k != want || v != want {
        return Err(Error::Shape(format!(
            "append: {n_tokens} tokens need {want} elements each of k and v (got {k} and {v})"
        )));
    }
    Ok(())
}

/// Runs the append kernel on the CPU emulator over host pools (`k_pages`, `v_pages`:
/// `[num_pages, num_kv_heads, page_size, head_dim]`). The oracle of this path is
/// [`super::HostKvStorage::write_kv`].
pub fn append_emulated<T: Element>(
    layout: &PageLayout,
    k_pages: &mut [T],
    v_pages: &mut [T],
    slots: &[i32],
    k_new: &[T],
    v_new: &[T],
) -> Result<()> {
    append_emulated_with(layout, k_pages, v_pages, None, slots, k_new, v_new)
}

/// [`append_emulated`] that also keeps `summaries` (a layout and its pool of
/// `num_pages` pages) current. The oracle of the summaries is
/// [`append_twin`](super::summary::append_twin). Errors: those of [`append_emulated`]; a
/// pool of the wrong size or a layout that does not fit the pages (`Error::Shape`); slots
/// that break the one-writer rule ([`check_summary_runs`], `Error::Cache`).
pub fn append_emulated_with<T: Element>(
    layout: &PageLayout,
    k_pages: &mut [T],
    v_pages: &mut [T],
    summaries: Option<(&SummaryLayout, &mut [f32])>,
    slots: &[i32],
    k_new: &[T],
    v_new: &[T],
) -> Result<()> {
    let n_tokens = slots.len() / 2;
    check_rows(layout, n_tokens, k_new.len(), v_new.len())?;
    let page = layout.page_stride();
    if k_pages.len() != v_pages.len() || page == 0 || k_pages.len() % page != 0 {
        return Err(Error::Cache(format!(
            "append: pools of {} / {} elements are not whole pages of {page}",
            k_pages.len(),
            v_pages.len()
        )));
    }
    let num_pages = k_pages.len() / page;
    let ps = layout.page_size.get() as i32;
    if slots.len() % 2 != 0
        || slots
            .chunks(2)
            .any(|s| s[0] < 0 || s[0] as usize >= num_pages || s[1] < 0 || s[1] >= ps)
    {
        return Err(Error::Cache("append: a slot lies outside the pool".into()));
    }
    if let Some((s, pool)) = &summaries {
        if pool.len() != num_pages * s.page_stride() {
            return Err(Error::Shape(format!(
                "append: a summary pool of {} f32 for {num_pages} pages of {}",
                pool.len(),
                s.page_stride()
            )));
        }
        check_summary_runs(slots, s.block)?;
    }
    if n_tokens == 0 {
        return Ok(());
    }
    let kb = GuardedBuffer::from_slice(k_pages, "k_pages")?;
    let mut summ = match &summaries {
        Some((_, pool)) => Some(GuardedBuffer::from_slice(pool, "summaries")?),
        None => None,
    };
    let vb = GuardedBuffer::from_slice(v_pages, "v_pages")?;
    let kn = GuardedBuffer::from_slice(k_new, "k_new")?;
    let vn = GuardedBuffer::from_slice(v_new, "v_new")?;
    let sb = GuardedBuffer::from_slice(slots, "slots")?;
    let launch = append_launch_with(
        layout,
        num_pages,
        n_tokens,
        &AppendAddrs {
            k_new: kn.as_ptr() as u64,
            v_new: vn.as_ptr() as u64,
            k_pages: kb.as_ptr() as u64,
            v_pages: vb.as_ptr() as u64,
            slots: sb.as_ptr() as u64,
            summaries: summ.as_mut().map_or(0, |b| b.as_mut_ptr() as u64),
        },
        T::DTYPE,
        summaries.as_ref().map(|(s, _)| *s),
    )?;
    // SAFETY: all buffers are guarded and sized as the validated layout and slots require.
    unsafe { launch.run_emulated(&Default::default())? };
    k_pages.copy_from_slice(kb.as_slice());
    v_pages.copy_from_slice(vb.as_slice());
    if let (Some((_, pool)), Some(b)) = (summaries, summ) {
        pool.copy_from_slice(b.as_slice());
    }
    Ok(())
}

/// The K/V pages of every layer of a [`KvCache`] on a GPU (zero-initialised), written by the
/// append kernel and read by [`crate::backend::GpuPlan::run_paged`].
pub struct DeviceKvStorage<T> {
    /// Per layer: its page shape (pools in `layers`).
    layouts: Vec<PageLayout>,
    gpu: Gpu,
    layers: Vec<(CudaSlice<T>, CudaSlice<T>)>,
    /// Per layer: the block summaries when the cache keeps them.
    summaries: Vec<Option<(SummaryLayout, CudaSlice<f32>)>>,
    /// The append kernel's slots (`[max_chunk][2]` int32 (page, row): one append's
    /// positions in one layer), allocated once and rewritten by each
    /// [`DeviceKvStorage::write_kv`].
    slots: CudaSlice<i32>,
}

impl<T: Element + DeviceRepr + ValidAsZeroBits> DeviceKvStorage<T> {
    /// Pools sized like `cache`'s on `gpu`. `T` must be the cache's dtype (`Error::Shape`).
    pub fn new(gpu: &Gpu, cache: &KvCache) -> Result<Self> {
        super::host::check_dtype::<T>(cache)?;
        let layouts = (0..cache.num_layers())
            .map(|l| cache.layout(l))
            .collect::<Result<Vec<_>>>()?;
        let stream = gpu.stream();
        let layers = (0..cache.num_layers())
            .map(|l| {
                let n = cache.num_pages(l)? * layouts[l].page_stride();
                Ok((stream.alloc_zeros::<T>(n)?, stream.alloc_zeros::<T>(n)?))
            })
            .collect::<Result<_>>()?;
        let summaries = (0..cache.num_layers())
            .map(|l| match cache.summary_layout(l)? {
                None => Ok(None),
                Some(s) => Ok(Some((
                    s,
                    stream.clone_htod(&s.empty_pool(cache.num_pages(l)?))?,
                ))),
            })
            .collect::<Result<_>>()?;
        // placement_slots gives a (page, row) pair per position of an append in one layer,
        // and an append holds at most max_chunk positions (KvCache::reserve_append).
        let slots_len = 2 * cache.config().max_chunk.max(1);
        Ok(DeviceKvStorage {
            layouts,
            gpu: gpu.clone(),
            layers,
            summaries,
            slots: stream.alloc_zeros::<i32>(slots_len)?,
        })
    }

    /// The block summaries of `layer` (`None` when the cache keeps none): their layout and
    /// their pool, for the scoring kernel.
    pub fn summaries(&self, layer: usize) -> Option<(&SummaryLayout, &CudaSlice<f32>)> {
        self.summaries
            .get(layer)
            .and_then(|s| s.as_ref().map(|(l, p)| (l, p)))
    }

    fn pools(&self, layer: usize) -> Result<&(CudaSlice<T>, CudaSlice<T>)> {
        self.layers.get(layer).ok_or_else(|| {
            Error::Shape(format!(
                "layer {layer} out of range (the storage has {})",
                self.layers.len()
            ))
        })
    }

    /// Writes `placement`'s new K/V rows (`[placement.len, num_kv_heads, head_dim]` on the
    /// device: buffers or views, say the first rows of a staging buffer sized once) into
    /// `layer`, queued on the GPU's stream. Slots and lengths are checked first. The slots
    /// go through a buffer this storage allocated once (one small host-to-device copy, no
    /// allocation).
    pub fn write_kv<K>(
        &mut self,
        layer: usize,
        placement: &Placement,
        k_rows: &K,
        v_rows: &K,
    ) -> Result<()>
    where
        K: DevicePtr<T> + DeviceSlice<T>,
    {
        let layout = self.layouts.get(layer).copied().ok_or_else(|| {
            Error::Shape(format!(
                "layer {layer} out of range (the storage has {})",
                self.layouts.len()
            ))
        })?;
        check_rows(&layout, placement.len, k_rows.len(), v_rows.len())?;
        let num_pages = self.pools(layer)?.0.len() / layout.page_stride();
        let slots = placement_slots(placement, layer, &layout, num_pages)?;
        if placement.len == 0 {
            return Ok(());
        }
        let stream = self.gpu.stream().clone();
        if slots.len() > self.slots.len() {
            return Err(Error::Cache(format!(
                "an append of {} positions needs {} slots, above the {} sized for max_chunk",
                placement.len,
                slots.len(),
                self.slots.len()
            )));
        }
        let mut slots_d = self.slots.slice_mut(..slots.len());
        stream.memcpy_htod(&slots, &mut slots_d)?;
        let (kp, vp) = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| Error::Shape(format!("layer {layer} out of range")))?;
        let (kn, _g1) = k_rows.device_ptr(&stream);
        let (vn, _g2) = v_rows.device_ptr(&stream);
        let (sp, _g3) = slots_d.device_ptr(&stream);
        let (kpp, _g4) = kp.device_ptr_mut(&stream);
        let (vpp, _g5) = vp.device_ptr_mut(&stream);
        let summaries = self.summaries.get_mut(layer).and_then(|s| s.as_mut());
        if let Some((s, _)) = &summaries {
            check_summary_runs(&slots, s.block)?;
        }
        let (summ_layout, summ_ptr) = match summaries {
            Some((s, pool)) => (Some(*s), Some(pool.device_ptr_mut(&stream))),
            None => (None, None),
        };
        let launch = append_launch_with(
            &layout,
            num_pages,
            placement.len,
            &AppendAddrs {
                k_new: kn,
                v_new: vn,
                k_pages: kpp,
                v_pages: vpp,
                slots: sp,
                summaries: summ_ptr.as_ref().map_or(0, |(p, _)| *p),
            },
            T::DTYPE,
            summ_layout.as_ref(),
        )?;
        // SAFETY: the pools, rows and slots are this storage's / checked above, on the Gpu's
        // context; the guards keep them alive until the launch is queued.
        unsafe { self.gpu.launch(&launch) }
    }

    /// The pages of `layer` with a block table, for [`crate::backend::GpuPlan::run_paged`].
    pub fn paged<'a>(
        &'a self,
        layer: usize,
        table: &'a BlockTable,
    ) -> Result<DevicePagedKv<'a, T>> {
        let (k, v) = self.pools(layer)?;
        Ok(DevicePagedKv {
            k_pages: k,
            v_pages: v,
            block_table: &table.table,
            layout: table.paged_layout(),
        })
    }
}
