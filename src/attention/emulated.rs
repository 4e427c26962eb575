//! Running a plan on the CPU emulator: the kernels' own source, one fiber per CUDA thread,
//! over guarded copies of the inputs.

use super::layout::{LseLayout, TensorLayout};
use super::paged::{PagedAddrs, PagedKv, PagedLayout};
use super::{AttnPlan, Element, Result, SeqLens, TensorAddrs};
use crate::emu::{self, GuardedBuffer};
use crate::error::Error;
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

    /// Runs one step of a run-time plan ([`AttnPlan::for_max_lengths`]) on the emulator:
    /// `seqs` are the step's lengths (the plan's batch, each sequence within the plan's
    /// maxima), q and k/v packed as varlen tensors of those lengths (`[total_q, num_heads,
    /// head_dim]`, `[total_k, num_kv_heads, head_dim]`). Returns `(out, lse)` laid out as
    /// varlen (`[total_q, num_heads, head_dim]`, `[num_heads, total_q]`). The plan and its
    /// metadata are the same for every step; only the lengths change. A step whose sequences
    /// fit the plan's step plan ([`AttnPlan::step_plan`]) runs the step tile's kernel, as
    /// every host-length step call does (the paged and strided ones too).
    pub fn run_emulated_step<T: Element>(
        &self,
        seqs: &SeqLens,
        q: &[T],
        k: &[T],
        v: &[T],
        run: &EmuRun,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        self.check_step::<T>(seqs)?;
        let p = &self.problem;
        let (tq, tk) = seqs.totals();
        let (h, hk, d) = (p.num_heads(), p.num_kv_heads(), p.head_dim().get() as usize);
        for (name, got, want) in [
            ("q", q.len(), tq * h * d),
            ("k", k.len(), tk * hk * d),
            ("v", v.len(), tk * hk * d),
        ] {
            if got != want {
                return Err(Error::Shape(format!(
                    "{name} has {got} elements, the step's lengths need {want}"
                )));
            }
        }
        self.emulate_for(seqs, q, KvInput::Contiguous { k, v }, run, None)
    }

    /// [`AttnPlan::run_emulated_step`] with K/V read from a paged cache holding each
    /// sequence's `kv_len` keys of `seqs`; the layout and every block-table entry the step
    /// can read are checked first, and that no key the pattern allows has left a ring.
    pub fn run_emulated_paged_step<T: Element>(
        &self,
        seqs: &SeqLens,
        q: &[T],
        kv: &PagedKv<'_, T>,
        run: &EmuRun,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        self.check_step::<T>(seqs)?;
        let p = &self.problem;
        let want = seqs.totals().0 * p.num_heads() * p.head_dim().get() as usize;
        if q.len() != want {
            return Err(Error::Shape(format!(
                "q has {} elements, the step's lengths need {want}",
                q.len()
            )));
        }
        self.check_paged_for(
            seqs,
            kv.k_pages.len(),
            kv.v_pages.len(),
            kv.block_table,
            &kv.layout,
        )?;
        self.emulate_for(seqs, q, KvInput::Paged(kv), run, None)
    }

    /// One step of a run-time plan ([`AttnPlan::for_max_lengths`]) at the lengths `seqs`
    /// over tensors at explicit strides, written into the caller's buffers: the emulator twin
    /// of [`crate::backend::GpuPlan::launch_step_strided`],
    /// [`crate::backend::GpuPlan::launch_contiguous_step`] and
    /// [`crate::backend::GpuPlan::run_step_strided`].
    ///
    /// `q`, `out` (and, for [`StepKv::Contiguous`], `k` and `v`) start at their tensor's
    /// first element and hold the step's `[total_q, num_heads, head_dim]` (`[total_k,
    /// num_kv_heads, head_dim]`) at `layout`'s strides: slices of one fused QKV buffer
    /// ([`TensorLayout::fused_qkv`]) or of a padded activation tensor. Only `out`'s elements
    /// of the step are written; everything else in `out` is left as it was. `lse`, when
    /// given, is at `layout.lse`: [`LseLayout::Plan`] is `[num_heads, batch x max q_len]`
    /// (the plan's capacity, exactly; the step's rows first in each head's row),
    /// [`LseLayout::Strided`] the step's `total_q` tokens at the caller's strides (say
    /// token-major `[total_q, num_heads]`); only the step's elements are written, the rest
    /// is left as it was. `None` skips the LSE store altogether (a null pointer in the
    /// params). Lengths, layouts ([`super::TensorStrides::check`],
    /// [`super::LseStrides::check`]) and, paged, the cache are checked before anything runs.
    #[allow(clippy::too_many_arguments)]
    pub fn run_emulated_step_into<T: Element>(
        &self,
        seqs: &SeqLens,
        q: &[T],
        kv: StepKv<'_, T>,
        layout: &TensorLayout,
        out: &mut [T],
        lse: Option<&mut [f32]>,
        run: &EmuRun,
    ) -> Result<()> {
        let input = self.step_input(seqs, q, kv, layout)?;
        let p = &self.problem;
        let (h, d) = (p.num_heads(), p.head_dim().get() as usize);
        layout.out.check("out", seqs.totals().0, h, d, out.len())?;
        let lse_len = p.seqs().totals().0 * h;
        if let (Some(l), LseLayout::Strided(s)) = (&lse, layout.lse) {
            s.check(seqs.totals().0, h, l.len())?;
        } else if let Some(l) = &lse {
            if l.len() != lse_len {
                return Err(Error::Layout {
                    tensor: "lse",
                    message: format!(
                        "{} elements, the plan's capacity needs num_heads x batch x max q_len = \
                         {lse_len}",
                        l.len()
                    ),
                });
            }
        }
        let ob = GuardedBuffer::from_slice(out, "out")?;
        let lb = match &lse {
            Some(l) => Some(GuardedBuffer::from_slice(l, "lse")?),
            None => None,
        };
        self.emulate_into(seqs, q, input, layout, &ob, lb.as_ref(), run, None)?;
        out.copy_from_slice(ob.as_slice());
        if let (Some(dst), Some(b)) = (lse, &lb) {
            dst.copy_from_slice(b.as_slice());
        }
        Ok(())
    }

    /// A step's lengths against a run-time plan: the plan's batch, every sequence within the
    /// maxima it was compiled for, the plan's element type.
    pub(crate) fn check_step<T: Element>(&self, seqs: &SeqLens) -> Result<()> {
        let p = &self.problem;
        if T::DTYPE != p.dtype() {
            return Err(Error::Shape(format!(
                "element type {} does not match the plan's {}",
                T::DTYPE.name(),
                p.dtype().name()
            )));
        }
        self.check_step_lens(seqs)
    }

    /// A step's lengths against a run-time plan (batch, maxima).
    pub(crate) fn check_step_lens(&self, seqs: &SeqLens) -> Result<()> {
        if !self.walk().runtime_lengths() {
            return Err(Error::Unsupported(
                "steps of other lengths need a run-time plan (AttnPlan::for_max_lengths)".into(),
            ));
        }
        let p = &self.problem;
        seqs.validate()?;
        if seqs.batch() != p.seqs().batch() {
            return Err(Error::Shape(format!(
                "the step has {} sequences, the plan {} (pad with empty sequences)",
                seqs.batch(),
                p.seqs().batch()
            )));
        }
        let (max_q, max_k) = p.seqs().max_lens();
        for b in 0..seqs.batch() {
            let (q, k) = seqs.lens(b);
            if q > max_q || k > max_k {
                return Err(Error::Shape(format!(
                    "sequence {b} has {q} queries and {k} keys, above the plan's maxima \
                     ({max_q}, {max_k})"
                )));
            }
        }
        Ok(())
    }

    fn emulate<T: Element>(
        &self,
        q: &[T],
        kv: KvInput<'_, T>,
        run: &EmuRun,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        self.emulate_for(self.problem.seqs(), q, kv, run, None)
    }

    /// [`AttnPlan::run_emulated_step`] (contiguous K/V) or
    /// [`AttnPlan::run_emulated_paged_step`] (`paged`) with `prepare` run on the uploaded
    /// metadata and lengths before the forward launch: how a plan whose lists are written on
    /// the device ([`FwdWalk::Device`]) runs its selection and compaction kernels first.
    pub(crate) fn run_emulated_step_prepared<T: Element>(
        &self,
        seqs: &SeqLens,
        q: &[T],
        kv: StepKv<'_, T>,
        run: &EmuRun,
        prepare: &Prepare<'_>,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        let input = self.step_input(seqs, q, kv, &self.packed_layout())?;
        self.emulate_for(seqs, q, input, run, Some(prepare))
    }

    /// A step's lengths and inputs checked against the plan (its walk, element type, maxima)
    /// and `layout` (q, and K/V when contiguous; the cache when paged).
    fn step_input<'a, T: Element>(
        &self,
        seqs: &SeqLens,
        q: &[T],
        kv: StepKv<'a, T>,
        layout: &TensorLayout,
    ) -> Result<KvInput<'a, T>> {
        self.check_step::<T>(seqs)?;
        let p = &self.problem;
        let (tq, tk) = seqs.totals();
        let (h, hk, d) = (p.num_heads(), p.num_kv_heads(), p.head_dim().get() as usize);
        layout.q.check("q", tq, h, d, q.len())?;
        Ok(match kv {
            StepKv::Contiguous { k, v } => {
                layout.k.check("k", tk, hk, d, k.len())?;
                layout.v.check("v", tk, hk, d, v.len())?;
                KvInput::Contiguous { k, v }
            }
            StepKv::Paged(c) => {
                self.check_paged_for(
                    seqs,
                    c.k_pages.len(),
                    c.v_pages.len(),
                    c.block_table,
                    &c.layout,
                )?;
                KvInput::Paged(c)
            }
        })
    }

    /// One emulated launch for the sequences `seqs` (the problem's, or a run-time step's),
    /// packed tensors, into fresh outputs.
    fn emulate_for<T: Element>(
        &self,
        seqs: &SeqLens,
        q: &[T],
        kv: KvInput<'_, T>,
        run: &EmuRun,
        prepare: Option<&Prepare<'_>>,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        let p = &self.problem;
        let runtime = self.walk().runtime_lengths();
        // Outputs start poisoned (NaN), so an element the kernels forget to write cannot pass
        // for an empty row's out = 0 (or for anything else).
        // A run-time plan's LSE rows are laid out for its capacity (batch x max q_len) and
        // compacted to the step's rows below.
        let (total_q, _) = seqs.totals();
        let capacity = self.capacity_rows;
        let out_elems = total_q * p.num_heads() * p.head_dim().get() as usize;
        let lse_elems = if runtime {
            capacity * p.num_heads()
        } else {
            p.lse_elems()
        };
        let ob = GuardedBuffer::filled(out_elems, T::from_f32(f32::NAN), "out")?;
        let lb = GuardedBuffer::filled(lse_elems, f32::NAN, "lse")?;
        self.emulate_into(
            seqs,
            q,
            kv,
            &self.packed_layout(),
            &ob,
            Some(&lb),
            run,
            prepare,
        )?;
        let mut lse = lb.to_vec();
        if runtime {
            // [num_heads, capacity] -> [num_heads, total_q]
            lse = lse
                .chunks(capacity.max(1))
                .flat_map(|row| row[..total_q].iter().copied())
                .collect();
        }
        Ok((ob.to_vec(), lse))
    }

    /// The launches of one emulated call into the output buffers `ob` and `lb` (`None`: no
    /// LSE), q, k, v and out at `layout`'s strides (checked by the caller).
    #[allow(clippy::too_many_arguments)]
    fn emulate_into<T: Element>(
        &self,
        seqs: &SeqLens,
        q: &[T],
        kv: KvInput<'_, T>,
        layout: &TensorLayout,
        ob: &GuardedBuffer<T>,
        lb: Option<&GuardedBuffer<f32>>,
        run: &EmuRun,
        prepare: Option<&Prepare<'_>>,
    ) -> Result<()> {
        // A step whose rows fit the step tile runs the step plan (its own metadata, the same
        // capacity layout); its checks were this plan's.
        let plan = self.plan_for_step(seqs);
        if !std::ptr::eq(plan, self) {
            return plan.emulate_into(seqs, q, kv, layout, ob, lb, run, prepare);
        }
        let p = &self.problem;
        let runtime = self.walk().runtime_lengths();
        let qb = GuardedBuffer::from_slice(q, "q")?;
        let (k, v, table, page_layout) = match kv {
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
        let counter = GuardedBuffer::<u64>::zeroed(1, "tiles_visited")?;
        // Run-time plans always read the lengths from cu_seqlens.
        let (cu_q, cu_k) = match (seqs, runtime) {
            (SeqLens::Varlen { cu_q, cu_k }, _) => (
                Some(GuardedBuffer::from_slice(cu_q, "cu_seqlens_q")?),
                Some(GuardedBuffer::from_slice(cu_k, "cu_seqlens_k")?),
            ),
            (SeqLens::Uniform { .. }, true) => {
                let (cq, ck) = seqs.cu_seqlens();
                (
                    Some(GuardedBuffer::from_slice(&cq, "cu_seqlens_q")?),
                    Some(GuardedBuffer::from_slice(&ck, "cu_seqlens_k")?),
                )
            }
            (SeqLens::Uniform { .. }, false) => (None, None),
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
                layout: page_layout,
                num_pages: pool_pages(kb.len(), p, &page_layout),
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
            lse: lb.map_or(0, |b| b.as_ptr() as u64),
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
        if let Some(prepare) = prepare {
            prepare(&PreparedCall {
                meta: addrs.meta,
                cu_q: addrs.cu_q,
                cu_k: addrs.cu_k,
                options: run.options(),
            })?;
        }
        // SAFETY: every pointer in the params refers to a live guarded buffer that holds every
        // element the launch touches: q, k, v and out at `layout`'s strides, checked against
        // their lengths by the caller (packed: sized exactly as the validated problem), the
        // LSE of the plan's rows or none (null), when paged the validated page layout, when
        // split the plan's workspace, the per-head vectors num_heads values; the kernels match
        // the params type.
        unsafe {
            let launch = self.launch_with_layout(&addrs, layout);
            if let Some(slot) = run.kernel {
                slot.set(launch.kernel.name);
            }
            launch.run_emulated(&run.options())?;
            if let Some(combine) = self.combine_launch_with_layout(&addrs, layout) {
                combine.run_emulated(&run.options())?;
            }
        }
        if let Some(slot) = run.tiles_visited {
            slot.set(counter.to_vec()[0]);
        }
        Ok(())
    }
}

/// What [`AttnPlan::run_emulated_step_prepared`]'s `prepare` gets: the device addresses of
/// the call's uploaded metadata and lengths (always set: the plan's walk reads run-time
/// lengths), and the emulator options of the call.
pub(crate) struct PreparedCall {
    /// The plan's metadata arrays ([`super::PlanMeta::arrays`]), uploaded for this call.
    pub meta: super::MetaAddrs,
    /// `cu_seqlens_q` of the call.
    pub cu_q: u64,
    /// `cu_seqlens_k` of the call.
    pub cu_k: u64,
    /// The emulator options of the call.
    pub options: emu::EmuOptions,
}

/// Launches run before a call's forward kernel, on its uploaded metadata.
pub(crate) type Prepare<'a> = dyn Fn(&PreparedCall) -> Result<()> + 'a;

/// Where an emulated call reads K/V from.
enum KvInput<'a, T> {
    Contiguous { k: &'a [T], v: &'a [T] },
    Paged(&'a PagedKv<'a, T>),
}

/// Where one step of [`AttnPlan::run_emulated_step_into`] reads K/V from.
#[derive(Clone, Copy, Debug)]
pub enum StepKv<'a, T> {
    /// The step's keys and values, each starting at its tensor's first element, at the
    /// layout's `k` and `v` strides (for example two parts of a fused QKV buffer).
    Contiguous {
        /// Keys.
        k: &'a [T],
        /// Values.
        v: &'a [T],
    },
    /// A paged cache (the layout's `k` and `v` strides are unused).
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
    /// Receives the name of the forward kernel the call launched (which tile shape ran).
    pub kernel: Option<&'a std::cell::Cell<&'static str>>,
}

impl EmuRun<'_> {
    /// The emulator options of these run options (for launches an engine drives itself).
    pub fn options(&self) -> emu::EmuOptions {
        emu::EmuOptions {
            schedule: self.schedule,
            eager_cp_async: self.eager_cp_async,
            workers: self.workers,
            arch: self.arch,
            numerics: self.numerics,
        }
    }
}

/// Pages in a pool of `elems` elements of `problem`'s kv heads and head_dim at `layout`'s page
/// size (0 for a degenerate layout: the host checks reject it first).
pub(crate) fn pool_pages(
    elems: usize,
    problem: &crate::AttnProblem,
    layout: &PagedLayout,
) -> usize {
    let page = layout.page_size * problem.num_kv_heads() * problem.head_dim().get() as usize;
    elems.checked_div(page).unwrap_or(0)
}
