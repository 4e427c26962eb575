//! Running a plan on the CPU emulator: the kernels' own source, one fiber per CUDA thread,
//! over guarded copies of the inputs.

use super::paged::{PagedAddrs, PagedKv, PagedLayout};
use super::{AttnPlan, Element, Result, SeqLens, TensorAddrs};
use crate::emu::{self, GuardedBuffer};
use crate::kernels::KernelDesc;

impl AttnPlan {
    /// This plan with its forward kernel replaced by `kernel`: for the canary kernels of
    /// `kernels/tests/` (deliberately broken variants that the tests must see fail through
    /// the production run paths, on the emulator and on the GPU).
    ///
    /// # Safety
    /// `kernel` must take `SaAttnFwdParams` and be written for this plan's launch geometry
    /// (grid, block, dynamic shared memory), as the plan's own forward kernel is.
    #[doc(hidden)]
    pub unsafe fn with_kernel(mut self, kernel: &'static KernelDesc) -> Self {
        self.kernel = kernel;
        self
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
        self.emulate(q, KvInput::Contiguous { k, v }, run)
    }

    /// Like [`AttnPlan::run_emulated`], with K/V read from a paged cache (the problem's
    /// kv lengths are the sequences' lengths in the cache). The layout, every block-table
    /// entry a launch can read, and that no allowed key has been evicted from a ring are
    /// checked before anything runs.
    pub fn run_emulated_paged<T: Element>(
        &self,
        q: &[T],
        kv: &PagedKv<'_, T>,
        run: &EmuRun,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        self.check_lens::<T>(q.len(), self.problem.kv_elems(), self.problem.kv_elems())?;
        self.check_paged(
            kv.k_pages.len(),
            kv.v_pages.len(),
            kv.block_table,
            &kv.layout,
        )?;
        self.emulate(q, KvInput::Paged(kv), run)
    }

    fn emulate<T: Element>(
        &self,
        q: &[T],
        kv: KvInput<'_, T>,
        run: &EmuRun,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        let p = &self.problem;
        let qb = GuardedBuffer::from_slice(q, "q")?;
        let (k, v, table, layout) = match kv {
            KvInput::Contiguous { k, v } => (k, v, None, PagedLayout::default()),
            KvInput::Paged(c) => (c.k_pages, c.v_pages, Some(c.block_table), c.layout),
        };
        let (k_label, v_label) = if table.is_some() {
            ("k_pages", "v_pages")
        } else {
            ("k", "v")
        };
        let kb = GuardedBuffer::from_slice(k, k_label)?;
        let vb = GuardedBuffer::from_slice(v, v_label)?;
        let tb = table
            .map(|t| GuardedBuffer::from_slice(t, "block_table"))
            .transpose()?;
        // Outputs start poisoned (NaN), so an element the kernels forget to write cannot pass
        // for an empty row's out = 0 (or for anything else).
        let ob = GuardedBuffer::filled(p.q_elems(), T::from_f32(f32::NAN), "out")?;
        let lb = GuardedBuffer::filled(p.lse_elems(), f32::NAN, "lse")?;
        let counter = GuardedBuffer::<u64>::zeroed(1, "tiles_visited")?;
        let (cu_q, cu_k) = match &p.seqs() {
            SeqLens::Varlen { cu_q, cu_k } => (
                Some(GuardedBuffer::from_slice(cu_q, "cu_seqlens_q")?),
                Some(GuardedBuffer::from_slice(cu_k, "cu_seqlens_k")?),
            ),
            SeqLens::Uniform { .. } => (None, None),
        };
        let meta = self.meta.upload_emulated()?;
        let (o_ws, lse_ws) = self.split_workspace();
        let o_part = GuardedBuffer::filled(o_ws, f32::NAN, "o_partial")?;
        let lse_part = GuardedBuffer::filled(lse_ws, f32::NAN, "lse_partial")?;
        // The plan's sink logits and ALiBi slopes (absent ones stay null in the params).
        let [sinks, slopes] = self
            .head_vectors()
            .map(|(name, v)| v.map(|v| GuardedBuffer::from_slice(v, name)).transpose());
        let (sinks, slopes) = (sinks?, slopes?);
        let addr = |b: &Option<GuardedBuffer<f32>>| b.as_ref().map_or(0, |b| b.as_ptr() as u64);
        let (contig_k, contig_v) = if tb.is_some() {
            (0, 0)
        } else {
            (kb.as_ptr() as u64, vb.as_ptr() as u64)
        };
        let paged = match &tb {
            Some(t) => PagedAddrs {
                k_pages: kb.as_ptr() as u64,
                v_pages: vb.as_ptr() as u64,
                block_table: t.as_ptr() as u64,
                layout,
            },
            None => PagedAddrs::default(),
        };
        let addrs = TensorAddrs {
            meta: meta.addrs(),
            paged,
            q: qb.as_ptr() as u64,
            k: contig_k,
            v: contig_v,
            out: ob.as_ptr() as u64,
            lse: lb.as_ptr() as u64,
            cu_q: cu_q.as_ref().map_or(0, |b| b.as_ptr() as u64),
            cu_k: cu_k.as_ref().map_or(0, |b| b.as_ptr() as u64),
            tiles_visited: counter.as_ptr() as u64,
            o_partial: if o_ws > 0 { o_part.as_ptr() as u64 } else { 0 },
            lse_partial: if lse_ws > 0 {
                lse_part.as_ptr() as u64
            } else {
                0
            },
            sink_logits: addr(&sinks),
            alibi_slopes: addr(&slopes),
        };
        // SAFETY: every pointer in the params refers to a live guarded buffer sized exactly as
        // the validated problem (and, when paged, the validated page layout; when split, the
        // plan's workspace; the per-head vectors, num_heads values) requires; the kernels
        // match the params type.
        unsafe {
            self.launch(&addrs).run_emulated(&run.options())?;
            if let Some(combine) = self.combine_launch(&addrs) {
                combine.run_emulated(&run.options())?;
            }
        }
        if let Some(slot) = run.tiles_visited {
            slot.set(counter.to_vec()[0]);
        }
        Ok((ob.to_vec(), lb.to_vec()))
    }
}

/// Where an emulated call reads K/V from.
enum KvInput<'a, T> {
    Contiguous { k: &'a [T], v: &'a [T] },
    Paged(&'a PagedKv<'a, T>),
}

/// Emulator run options (scheduling order, cp.async mode, workers) and optional work counter.
#[derive(Clone, Debug, Default)]
pub struct EmuRun<'a> {
    /// Order in which the emulator resumes threads.
    pub schedule: emu::Schedule,
    /// Copy at issue instead of landing at the wait (for diffing).
    pub eager_cp_async: bool,
    /// Worker threads (0 = all cores).
    pub workers: u32,
    /// The GPU whose launch limits the launches must respect (default: sm_80).
    pub arch: emu::TargetArch,
    /// Exact or pessimistic tensor-core and `ex2` arithmetic.
    pub numerics: emu::Numerics,
    /// Receives the number of kv tiles the kernel visited.
    pub tiles_visited: Option<&'a std::cell::Cell<u64>>,
}

impl EmuRun<'_> {
    fn options(&self) -> emu::EmuOptions {
        emu::EmuOptions {
            schedule: self.schedule,
            eager_cp_async: self.eager_cp_async,
            workers: self.workers,
            arch: self.arch,
            numerics: self.numerics,
        }
    }
}
