//! Block selection on the device: the launch of `kernels/adaptive_select.cu`, its emulated run
//! on host buffers, its CUDA run on device buffers, and the `given` entry points that select
//! from a caller's block scores.
//!
//! The kernel reads the SCORES layout and writes the SELECTION BITS layout of
//! docs/adaptive.md ("Device buffers"): for every sequence `b`, unit `u` (a query head, or a
//! kv head under `share: kv_group`) and group `g < max_groups`, `words = ceil(max_blocks / 32)`
//! int32 words whose bit `J % 32` of word `J / 32` is set iff `J ∈ S(u, g)`. Every word is
//! written on every call (groups past a sequence's own and blocks outside its candidates are
//! 0), so nothing of an earlier call survives in a reused buffer. The result equals the f64
//! reference ([`Selection::compute`](super::Selection::compute)) for the same f32 scores:
//! exactly for `top_k` and `top_rel` and for scores used as they are; `top_p` decides with
//! fixed-point masses (a crossing whose cumulative mass lies within about `|C|·2^-31` of `p`
//! may be decided differently; at `p = 1` blocks lighter than `2^-31` of the heaviest are not
//! appended, which the reference may do), and `share: kv_group` over per-query-head scores combines
//! them in f32 (`ln Σ exp`, or the maximum for `minmax`), so near-ties of the combined
//! scores may order differently; both stay inside the margin rule of docs/adaptive.md. The
//! algorithms and the exact rules are in the header of
//! `kernels/include/sparse_attn/adaptive_select.cuh`.
//!
//! Scores the caller hands over on the host are checked (finite, by [`select_given_emulated`]
//! and [`select_given_cuda`]); scores already on the device (the scoring kernels' output, or
//! [`DeviceSelect::run_cuda`]'s input) are not: the kernel's total order defines a result for
//! every value (`-0.0 == +0.0`, NaN below `-inf` and weighing 0 in `top_p`).

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::params::{BlockSelect, Choice, Score, Share};
use super::select::{given_shape, num_groups, GivenScores, Grouping};
use crate::backend::Gpu;
use crate::emu::{EmuOptions, GuardedBuffer};
use crate::error::{Error, Result};
use crate::ffi::{self, SaAdaptSelectParams};
use crate::kernels::{self, KernelDesc, Launch};
use crate::shape::{AttnProblem, SeqLens};

/// The largest dynamic shared memory any target gives one block (sm_90: 227 KB); a selection
/// needing more is `Error::Unsupported` before any launch (the CUDA backend also checks the
/// device's own limit, the emulator that of its `TargetArch`).
pub const MAX_SELECT_SMEM: u32 = 227 * 1024;

/// The plan-time extents of the selection buffers: groups per (sequence, unit) and key blocks
/// per group (docs/adaptive.md: `max_groups`, `max_blocks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectCapacity {
    /// Groups per (sequence, unit) in the bits and counts (at least the most groups of any
    /// sequence of a call).
    pub max_groups: usize,
    /// Key blocks per group (at least `ceil(kv_len / B)` of every sequence of a call).
    pub max_blocks: usize,
}

impl SelectCapacity {
    /// The capacity of exactly `problem`'s lengths: [`given_shape`].
    pub fn for_problem(sel: &BlockSelect, problem: &AttnProblem, grouping: Grouping) -> Self {
        let [max_groups, max_blocks] = given_shape(sel, problem, grouping);
        SelectCapacity {
            max_groups,
            max_blocks,
        }
    }

    /// A capacity that serves every call with at most `max_q_len` query rows over at most
    /// `max_kv_len` keys per sequence: `max_q_len` groups in a decode step, and in a prefill
    /// `min(max_q_len, ceil((max_q_len - 1) / q_block) + 1)` (rows that straddle a group
    /// boundary add one); `ceil(max_kv_len / B)` blocks.
    pub fn for_max_lens(
        sel: &BlockSelect,
        grouping: Grouping,
        max_q_len: usize,
        max_kv_len: usize,
    ) -> Self {
        let q_block = sel.q_block() as usize;
        let max_groups = match grouping {
            Grouping::Decode => max_q_len,
            Grouping::Prefill if max_q_len == 0 => 0,
            Grouping::Prefill => max_q_len.min((max_q_len - 1).div_ceil(q_block) + 1),
        };
        SelectCapacity {
            max_groups,
            max_blocks: max_kv_len.div_ceil(sel.block() as usize),
        }
    }

    /// int32 words per group: `ceil(max_blocks / 32)`.
    pub fn words(&self) -> usize {
        self.max_blocks.div_ceil(32)
    }
}

/// Where the scores of (sequence `b`, score head `hs`, group `g`, block `J`) live:
/// `b * batch_stride + hs * head_stride + g * group_stride + J` (elements; `J` contiguous).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScoreLayout {
    /// Score heads: the query heads, or (only with `share: kv_group`) the kv heads, whose
    /// scores are then used as they are. Per-query-head scores under `kv_group` are combined
    /// per kv head (`ln Σ exp` for mass-like scores, the maximum for `minmax`).
    pub heads: usize,
    /// Elements between sequences.
    pub batch_stride: usize,
    /// Elements between score heads.
    pub head_stride: usize,
    /// Elements between groups.
    pub group_stride: usize,
}

impl ScoreLayout {
    /// The dense `[batch, heads, max_groups, max_blocks]` layout of a capacity (that of
    /// [`GivenScores`] when the capacity is [`SelectCapacity::for_problem`]).
    pub fn contiguous(heads: usize, cap: &SelectCapacity) -> Self {
        ScoreLayout {
            heads,
            batch_stride: heads * cap.max_groups * cap.max_blocks,
            head_stride: cap.max_groups * cap.max_blocks,
            group_stride: cap.max_blocks,
        }
    }

    /// Elements a buffer must hold for `batch` sequences at `cap`: one past the last element
    /// the kernel may read (0 when nothing is read).
    pub fn min_len(&self, batch: usize, cap: &SelectCapacity) -> Option<usize> {
        if batch == 0 || self.heads == 0 || cap.max_groups == 0 || cap.max_blocks == 0 {
            return Some(0);
        }
        let last = (batch - 1)
            .checked_mul(self.batch_stride)?
            .checked_add((self.heads - 1).checked_mul(self.head_stride)?)?
            .checked_add((cap.max_groups - 1).checked_mul(self.group_stride)?)?
            .checked_add(cap.max_blocks - 1)?;
        last.checked_add(1)
    }
}

/// The sequence lengths of one launch: uniform, or device `cu_seqlens` read at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectLens {
    /// Every sequence has `q_len` rows over `kv_len` keys.
    Uniform {
        /// Query rows per sequence.
        q_len: usize,
        /// Keys per sequence.
        kv_len: usize,
    },
    /// int32 `[batch + 1]` prefix sums at these device (or guarded host) addresses.
    Varlen {
        /// `cu_seqlens_q`.
        cu_seqlens_q: u64,
        /// `cu_seqlens_k`.
        cu_seqlens_k: u64,
    },
}

/// Device (or guarded host) addresses of one selection launch.
#[derive(Clone, Copy, Debug, Default)]
pub struct SelectAddrs {
    /// f32 scores in the [`ScoreLayout`].
    pub scores: u64,
    /// int32 bits `[batch, units, max_groups, words]`.
    pub bits: u64,
    /// int32 counts `[batch, units, max_groups]`, or 0 for none.
    pub counts: u64,
}

/// Lengths of a CUDA launch: uniform, or device `cu_seqlens` (`[batch + 1]` each; their
/// values are read by the kernel at run time, and a sequence over the capacity selects
/// nothing and counts -1).
#[derive(Clone, Copy, Debug)]
pub enum DeviceLens<'a> {
    /// Every sequence has `q_len` rows over `kv_len` keys (checked against the capacity).
    Uniform {
        /// Query rows per sequence.
        q_len: usize,
        /// Keys per sequence.
        kv_len: usize,
    },
    /// Prefix sums on the device.
    Varlen {
        /// `cu_seqlens_q`, int32 `[batch + 1]`.
        cu_seqlens_q: &'a CudaSlice<i32>,
        /// `cu_seqlens_k`, int32 `[batch + 1]`.
        cu_seqlens_k: &'a CudaSlice<i32>,
    },
}

/// A validated selection launch configuration: component, grouping, heads, batch, capacity
/// and score layout. Construct with [`DeviceSelect::new`]; run with
/// [`DeviceSelect::run_emulated`] or [`DeviceSelect::run_cuda`].
#[derive(Clone, Copy, Debug)]
pub struct DeviceSelect {
    sel: BlockSelect,
    grouping: Grouping,
    batch: usize,
    num_heads: usize,
    num_kv_heads: usize,
    cap: SelectCapacity,
    layout: ScoreLayout,
    combine: u32,
    kernel: &'static KernelDesc,
}

/// `v` as i32, or an `Error::Shape` naming `what`.
fn to_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Shape(format!("{what} ({v}) must fit i32")))
}

/// `v` as i64, or an `Error::Shape` naming `what`.
fn to_i64(what: &str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Shape(format!("{what} ({v}) must fit i64")))
}

impl DeviceSelect {
    /// Validates a selection of `sel` over `batch` sequences of `num_heads` query heads and
    /// `num_kv_heads` kv heads, buffers of capacity `cap`, scores laid out as `layout`.
    ///
    /// Errors: `Error::Shape` for head counts that are zero or not multiples, a batch or head
    /// count over the grid limits (65535), extents that do not fit i32, score heads other
    /// than `num_heads` (or `num_kv_heads` under `share: kv_group`); `Error::Unsupported` when
    /// [`DeviceSelect::smem_bytes`] (`8·max_blocks`, `12·max_blocks` for `top_p`) exceeds
    /// [`MAX_SELECT_SMEM`]. The component itself is valid by construction ([`BlockSelect`]
    /// rejects blocks that are not powers of two, `k = 0` with nothing forced, `p` or `alpha`
    /// outside (0, 1]).
    pub fn new(
        sel: &BlockSelect,
        grouping: Grouping,
        batch: usize,
        num_heads: usize,
        num_kv_heads: usize,
        cap: SelectCapacity,
        layout: ScoreLayout,
    ) -> Result<Self> {
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(Error::Shape(format!(
                "selection: num_heads ({num_heads}) must be a positive multiple of num_kv_heads \
                 ({num_kv_heads})"
            )));
        }
        if !(1..=65535).contains(&batch) || num_heads > 65535 {
            return Err(Error::Shape(format!(
                "selection: batch ({batch}) must be in 1..=65535 and num_heads ({num_heads}) at \
                 most 65535 (grid limits)"
            )));
        }
        to_i32("selection: max_groups", cap.max_groups)?;
        to_i32("selection: max_blocks", cap.max_blocks)?;
        let combine = match sel.share() {
            Share::Head if layout.heads == num_heads => ffi::SA_SELECT_COMBINE_NONE,
            Share::KvGroup if layout.heads == num_kv_heads => ffi::SA_SELECT_COMBINE_NONE,
            Share::KvGroup if layout.heads == num_heads => {
                if sel.score().is_mass_like() {
                    ffi::SA_SELECT_COMBINE_LSE
                } else {
                    ffi::SA_SELECT_COMBINE_MAX
                }
            }
            share => {
                let want = match share {
                    Share::Head => format!("{num_heads}"),
                    Share::KvGroup => format!("{num_kv_heads} or {num_heads}"),
                };
                return Err(Error::Shape(format!(
                    "selection scores have {} heads; share {share:?} needs {want}",
                    layout.heads
                )));
            }
        };
        for (what, v) in [
            ("batch_stride", layout.batch_stride),
            ("head_stride", layout.head_stride),
            ("group_stride", layout.group_stride),
        ] {
            to_i64(&format!("selection scores: {what}"), v)?;
        }
        if layout.min_len(batch, &cap).is_none() {
            return Err(Error::Shape(
                "selection scores: the layout's extent overflows usize".into(),
            ));
        }
        let this = DeviceSelect {
            sel: *sel,
            grouping,
            batch,
            num_heads,
            num_kv_heads,
            cap,
            layout,
            combine,
            kernel: kernels::adaptive_select(),
        };
        let smem = this.smem_bytes();
        if smem > MAX_SELECT_SMEM as u64 {
            return Err(Error::Unsupported(format!(
                "selection over {} key blocks needs {smem} bytes of shared memory (at most {} \
                 on any target)",
                cap.max_blocks, MAX_SELECT_SMEM
            )));
        }
        Ok(this)
    }

    /// The same configuration launching `kernel` instead: for the canary kernels of
    /// `kernels/tests/adaptive_select_canary.cu`, which the tests must see fail through this
    /// run path.
    ///
    /// # Safety
    /// `kernel` must take `SaAdaptSelectParams` with this launch geometry, as
    /// `sa_adaptive_select` does.
    #[doc(hidden)]
    pub unsafe fn with_kernel(mut self, kernel: &'static KernelDesc) -> Self {
        self.kernel = kernel;
        self
    }

    /// The component.
    pub fn component(&self) -> &BlockSelect {
        &self.sel
    }

    /// The capacity.
    pub fn capacity(&self) -> SelectCapacity {
        self.cap
    }

    /// The score layout.
    pub fn layout(&self) -> ScoreLayout {
        self.layout
    }

    /// Units: query heads (`share: head`) or kv heads (`share: kv_group`).
    pub fn units(&self) -> usize {
        match self.sel.share() {
            Share::Head => self.num_heads,
            Share::KvGroup => self.num_kv_heads,
        }
    }

    /// int32 elements of the bits buffer: `batch * units * max_groups * words`.
    pub fn bits_len(&self) -> usize {
        self.counts_len() * self.cap.words()
    }

    /// int32 elements of the counts buffer: `batch * units * max_groups`.
    pub fn counts_len(&self) -> usize {
        self.batch * self.units() * self.cap.max_groups
    }

    /// f32 elements the scores buffer must hold at least.
    pub fn scores_len(&self) -> usize {
        self.layout.min_len(self.batch, &self.cap).unwrap_or(0)
    }

    /// Dynamic shared memory per block: the reduction scratch, and per key block a u32 key
    /// and a u32 slot of the radix select's work list (and a u32 mass for `top_p`).
    pub fn smem_bytes(&self) -> u64 {
        let per_block = if matches!(self.sel.choice(), Choice::TopP { .. }) {
            12
        } else {
            8
        };
        ffi::SA_SELECT_SCRATCH_BYTES as u64 + per_block * self.cap.max_blocks as u64
    }

    /// Checks host-known lengths against the batch and the capacity (`Error::Shape`).
    fn check_seqs(&self, seqs: &SeqLens) -> Result<()> {
        seqs.validate()?;
        if seqs.batch() != self.batch {
            return Err(Error::Shape(format!(
                "selection: {} sequences, the configuration has {}",
                seqs.batch(),
                self.batch
            )));
        }
        let b = self.sel.block() as usize;
        for s in 0..seqs.batch() {
            let (q_len, kv_len) = seqs.lens(s);
            let groups = num_groups(&self.sel, self.grouping, q_len, kv_len);
            if groups > self.cap.max_groups || kv_len.div_ceil(b) > self.cap.max_blocks {
                return Err(Error::Shape(format!(
                    "selection: sequence {s} ({q_len} rows over {kv_len} keys) has {groups} \
                     groups and {} key blocks, over the capacity ({} groups, {} blocks)",
                    kv_len.div_ceil(b),
                    self.cap.max_groups,
                    self.cap.max_blocks
                )));
            }
        }
        Ok(())
    }

    /// The launch for `lens` and the buffers at `a` (nothing is validated against the
    /// buffers here: the run paths do that). Uniform lengths are checked against the
    /// capacity, varlen addresses for null (`Error::Shape`).
    pub fn launch(&self, lens: SelectLens, a: &SelectAddrs) -> Result<Launch<SaAdaptSelectParams>> {
        let (q_len, kv_len, cu_q, cu_k) = match lens {
            SelectLens::Uniform { q_len, kv_len } => {
                self.check_seqs(&SeqLens::Uniform {
                    batch: self.batch,
                    q_len,
                    kv_len,
                })?;
                (q_len, kv_len, 0, 0)
            }
            SelectLens::Varlen {
                cu_seqlens_q,
                cu_seqlens_k,
            } => (0, 0, cu_seqlens_q, cu_seqlens_k),
        };
        if matches!(lens, SelectLens::Varlen { .. }) && (cu_q == 0 || cu_k == 0) {
            return Err(Error::Shape(
                "selection: varlen needs both cu_seqlens_q and cu_seqlens_k (got a null address)"
                    .into(),
            ));
        }
        let (p, min_k, max_k, ln_alpha, k) = match self.sel.choice() {
            Choice::TopK { k } => (1.0, 0, 0, 0.0, k),
            Choice::TopP { p, min_k, max_k } => (p, min_k, max_k, 0.0, 0),
            Choice::TopRel {
                alpha,
                min_k,
                max_k,
            } => (1.0, min_k, max_k, alpha.ln(), 0),
        };
        let choice = match self.sel.choice() {
            Choice::TopK { .. } => ffi::SA_SELECT_TOP_K,
            Choice::TopP { .. } => ffi::SA_SELECT_TOP_P,
            Choice::TopRel { .. } => ffi::SA_SELECT_TOP_REL,
        };
        let grouping = match self.grouping {
            Grouping::Prefill => ffi::SA_SELECT_PREFILL,
            Grouping::Decode => ffi::SA_SELECT_DECODE,
        };
        let share = match self.sel.share() {
            Share::Head => ffi::SA_SELECT_SHARE_HEAD,
            Share::KvGroup => ffi::SA_SELECT_SHARE_KV_GROUP,
        };
        // Component parameters are validated to fit i32 (MAX_PARAM) by BlockSelect.
        let narrow = |v: i64| v as i32;
        Ok(Launch {
            kernel: self.kernel,
            grid: [
                self.cap.max_groups as u32,
                self.units() as u32,
                self.batch as u32,
            ],
            block: [ffi::SA_SELECT_THREADS, 1, 1],
            dynamic_smem_bytes: self.smem_bytes() as u32,
            params: SaAdaptSelectParams {
                scores: a.scores as *const f32,
                bits: a.bits as *mut i32,
                counts: a.counts as *mut i32,
                cu_seqlens_q: cu_q as *const i32,
                cu_seqlens_k: cu_k as *const i32,
                score_batch_stride: self.layout.batch_stride as i64,
                score_head_stride: self.layout.head_stride as i64,
                score_group_stride: self.layout.group_stride as i64,
                p,
                ln_alpha,
                batch: self.batch as i32,
                num_heads: self.num_heads as i32,
                num_kv_heads: self.num_kv_heads as i32,
                score_heads: self.layout.heads as i32,
                q_len: to_i32("selection: q_len", q_len)?,
                kv_len: to_i32("selection: kv_len", kv_len)?,
                max_groups: self.cap.max_groups as i32,
                max_blocks: self.cap.max_blocks as i32,
                block: narrow(self.sel.block()),
                q_block: narrow(self.sel.q_block()),
                grouping: grouping as i32,
                share: share as i32,
                combine: self.combine as i32,
                choice: choice as i32,
                k: narrow(k),
                min_k: narrow(min_k),
                max_k: narrow(max_k),
                keep_sinks: narrow(self.sel.keep_sinks()),
                keep_local: narrow(self.sel.keep_local()),
                _reserved: 0,
            },
        })
    }

    /// Checks the host buffers' lengths.
    fn check_host(&self, scores: usize, bits: usize, counts: Option<usize>) -> Result<()> {
        if scores < self.scores_len() {
            return Err(Error::Shape(format!(
                "selection scores: {scores} elements, the layout reads up to {}",
                self.scores_len()
            )));
        }
        if bits != self.bits_len() || counts.is_some_and(|c| c != self.counts_len()) {
            return Err(Error::Shape(format!(
                "selection: bits need {} and counts {} elements (got {bits} and {counts:?})",
                self.bits_len(),
                self.counts_len()
            )));
        }
        Ok(())
    }

    /// Runs the kernel on the CPU emulator over host buffers: `scores` in the layout (any
    /// f32 values: they are not checked), `bits` and `counts` overwritten in full (their old
    /// contents are handed to the kernel, so a stale value it failed to overwrite would show).
    /// Lengths are validated against the capacity first (`Error::Shape`).
    pub fn run_emulated(
        &self,
        seqs: &SeqLens,
        scores: &[f32],
        bits: &mut [i32],
        counts: Option<&mut [i32]>,
        opts: &EmuOptions,
    ) -> Result<()> {
        self.check_seqs(seqs)?;
        self.check_host(scores.len(), bits.len(), counts.as_ref().map(|c| c.len()))?;
        if self.bits_len() == 0 {
            // No group, or no key block anywhere: every group selects nothing.
            if let Some(c) = counts {
                c.fill(0);
            }
            return Ok(());
        }
        let sb = GuardedBuffer::from_slice(&scores[..self.scores_len().max(1)], "scores")?;
        let mut bb = GuardedBuffer::from_slice(bits, "bits")?;
        let mut cb = match &counts {
            Some(c) => Some(GuardedBuffer::from_slice(c, "counts")?),
            None => None,
        };
        let (cu_q, cu_k) = seqs.cu_seqlens();
        let cuq = GuardedBuffer::from_slice(&cu_q, "cu_seqlens_q")?;
        let cuk = GuardedBuffer::from_slice(&cu_k, "cu_seqlens_k")?;
        let lens = match seqs {
            SeqLens::Uniform { q_len, kv_len, .. } => SelectLens::Uniform {
                q_len: *q_len,
                kv_len: *kv_len,
            },
            SeqLens::Varlen { .. } => SelectLens::Varlen {
                cu_seqlens_q: cuq.as_ptr() as u64,
                cu_seqlens_k: cuk.as_ptr() as u64,
            },
        };
        let launch = self.launch(
            lens,
            &SelectAddrs {
                scores: sb.as_ptr() as u64,
                bits: bb.as_mut_ptr() as u64,
                counts: cb.as_mut().map_or(0, |c| c.as_mut_ptr() as u64),
            },
        )?;
        // SAFETY: every buffer is guarded and sized as validated above (scores up to the
        // layout's last element, bits and counts exactly, cu_seqlens batch + 1).
        unsafe { launch.run_emulated(opts)? };
        bits.copy_from_slice(bb.as_slice());
        if let (Some(c), Some(cb)) = (counts, cb) {
            c.copy_from_slice(cb.as_slice());
        }
        Ok(())
    }

    /// Queues the kernel on `gpu`'s stream over device buffers (scores not checked; see the
    /// module docs). Lengths, contexts and buffer sizes are checked first.
    pub fn run_cuda(
        &self,
        gpu: &Gpu,
        lens: DeviceLens<'_>,
        scores: &CudaSlice<f32>,
        bits: &mut CudaSlice<i32>,
        counts: Option<&mut CudaSlice<i32>>,
    ) -> Result<()> {
        let same = |ctx: &std::sync::Arc<cudarc::driver::CudaContext>, name: &str| {
            if ctx != gpu.context() {
                Err(Error::WrongDevice(format!(
                    "selection {name} lives on another CUDA context than the Gpu"
                )))
            } else {
                Ok(())
            }
        };
        same(scores.context(), "scores")?;
        same(bits.context(), "bits")?;
        if let Some(c) = &counts {
            same(c.context(), "counts")?;
        }
        self.check_host(scores.len(), bits.len(), counts.as_ref().map(|c| c.len()))?;
        if self.bits_len() == 0 {
            // No group, or no key block anywhere: every group selects nothing.
            if let Some(c) = counts.filter(|c| !c.is_empty()) {
                gpu.stream().memset_zeros(c)?;
            }
            return Ok(());
        }
        let stream = gpu.stream().clone();
        let mut guards = Vec::new();
        let lens = match lens {
            DeviceLens::Uniform { q_len, kv_len } => SelectLens::Uniform { q_len, kv_len },
            DeviceLens::Varlen {
                cu_seqlens_q,
                cu_seqlens_k,
            } => {
                same(cu_seqlens_q.context(), "cu_seqlens_q")?;
                same(cu_seqlens_k.context(), "cu_seqlens_k")?;
                if cu_seqlens_q.len() != self.batch + 1 || cu_seqlens_k.len() != self.batch + 1 {
                    return Err(Error::Shape(format!(
                        "selection: cu_seqlens need batch + 1 = {} entries (got {} and {})",
                        self.batch + 1,
                        cu_seqlens_q.len(),
                        cu_seqlens_k.len()
                    )));
                }
                let (qp, gq) = cu_seqlens_q.device_ptr(&stream);
                let (kp, gk) = cu_seqlens_k.device_ptr(&stream);
                guards.push(gq);
                guards.push(gk);
                SelectLens::Varlen {
                    cu_seqlens_q: qp,
                    cu_seqlens_k: kp,
                }
            }
        };
        let (sp, _gs) = scores.device_ptr(&stream);
        let (bp, _gb) = bits.device_ptr_mut(&stream);
        let mut counts = counts;
        let (cp, _gc) = match counts.as_mut() {
            Some(c) => {
                let (p, g) = c.device_ptr_mut(&stream);
                (p, Some(g))
            }
            None => (0, None),
        };
        let launch = self.launch(
            lens,
            &SelectAddrs {
                scores: sp,
                bits: bp,
                counts: cp,
            },
        )?;
        // SAFETY: every buffer is on the Gpu's context and sized as checked above (cu_seqlens
        // batch + 1 entries; their values are guarded in the kernel); the guards keep them
        // alive until the launch is queued.
        unsafe { gpu.launch(&launch) }
    }
}

/// The selection bits and counts of one call, copied to the host, with accessors by
/// (sequence, unit, group); the accessors panic on indices outside the buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectionBits {
    units: usize,
    cap: SelectCapacity,
    bits: Vec<i32>,
    counts: Vec<i32>,
}

impl SelectionBits {
    /// Wraps a bits buffer `[batch, units, max_groups, words]` and its counts
    /// `[batch, units, max_groups]` (`Error::Shape` when they do not fit together).
    pub fn new(
        units: usize,
        cap: SelectCapacity,
        bits: Vec<i32>,
        counts: Vec<i32>,
    ) -> Result<Self> {
        let slots = units * cap.max_groups;
        let fits = if slots == 0 {
            bits.is_empty() && counts.is_empty()
        } else {
            counts.len() % slots == 0 && bits.len() == counts.len() * cap.words()
        };
        if !fits {
            return Err(Error::Shape(format!(
                "selection bits ({}) and counts ({}) do not fit {units} units of {} groups of \
                 {} words",
                bits.len(),
                counts.len(),
                cap.max_groups,
                cap.words()
            )));
        }
        Ok(SelectionBits {
            units,
            cap,
            bits,
            counts,
        })
    }

    /// The raw words `[batch, units, max_groups, words]`.
    pub fn words(&self) -> &[i32] {
        &self.bits
    }

    /// The raw counts `[batch, units, max_groups]`.
    pub fn counts(&self) -> &[i32] {
        &self.counts
    }

    /// Units per sequence.
    pub fn units(&self) -> usize {
        self.units
    }

    /// The capacity the buffers were laid out for.
    pub fn capacity(&self) -> SelectCapacity {
        self.cap
    }

    fn slot(&self, b: usize, u: usize, g: usize) -> usize {
        (b * self.units + u) * self.cap.max_groups + g
    }

    /// `|S(u, g)|` of sequence `b` as the kernel counted it (-1: over the capacity).
    pub fn count(&self, b: usize, u: usize, g: usize) -> i32 {
        self.counts[self.slot(b, u, g)]
    }

    /// `S(u, g)` of sequence `b`: the set bits, ascending.
    pub fn blocks(&self, b: usize, u: usize, g: usize) -> Vec<i64> {
        let w = self.cap.words();
        let at = self.slot(b, u, g) * w;
        (0..w)
            .flat_map(|i| {
                let word = self.bits[at + i] as u32;
                (0..32)
                    .filter_map(move |bit| (word >> bit & 1 == 1).then_some((32 * i + bit) as i64))
            })
            .collect()
    }
}

/// Validates `given` against `problem` and `sel` like the reference: `score: given`, heads
/// `num_heads` (or `num_kv_heads` under `kv_group`), `[batch, heads, groups, blocks]` values
/// of [`given_shape`], all finite.
pub(crate) fn given_select(
    problem: &AttnProblem,
    sel: &BlockSelect,
    grouping: Grouping,
    given: &GivenScores<'_>,
) -> Result<DeviceSelect> {
    if sel.score() != Score::Given {
        return Err(Error::Pattern(format!(
            "given scores were passed but the score is {:?}, not \"given\"",
            sel.score()
        )));
    }
    let cap = SelectCapacity::for_problem(sel, problem, grouping);
    let batch = problem.seqs().batch();
    let heads_ok = given.heads == problem.num_heads()
        || (sel.share() == Share::KvGroup && given.heads == problem.num_kv_heads());
    let want = batch * given.heads * cap.max_groups * cap.max_blocks;
    if !heads_ok || given.scores.len() != want {
        return Err(Error::Shape(format!(
            "given scores: expected [batch {batch}, heads {}, groups {}, blocks {}], got {} \
             heads and {} values",
            match sel.share() {
                Share::Head => format!("{}", problem.num_heads()),
                Share::KvGroup => format!("{} or {}", problem.num_kv_heads(), problem.num_heads()),
            },
            cap.max_groups,
            cap.max_blocks,
            given.heads,
            given.scores.len()
        )));
    }
    if let Some(at) = given.scores.iter().position(|v| !v.is_finite()) {
        return Err(Error::Pattern(format!(
            "given scores must be finite (value {} at flat index {at})",
            given.scores[at]
        )));
    }
    DeviceSelect::new(
        sel,
        grouping,
        batch,
        problem.num_heads(),
        problem.num_kv_heads(),
        cap,
        ScoreLayout::contiguous(given.heads, &cap),
    )
}

/// Selection from a caller's block scores (`score: given`), on the CPU emulator: the
/// selection bits of [`problem`](AttnProblem)'s call, at the capacity of exactly its lengths
/// ([`SelectCapacity::for_problem`]). Errors, before any launch: `Error::Pattern` when the
/// component's score is not `given` or a score is not finite, `Error::Shape` when the tensor
/// is not `[batch, heads, groups, blocks]` as [`GivenScores`] describes.
pub fn select_given_emulated(
    problem: &AttnProblem,
    sel: &BlockSelect,
    grouping: Grouping,
    given: GivenScores<'_>,
) -> Result<SelectionBits> {
    let ds = given_select(problem, sel, grouping, &given)?;
    let mut bits = vec![0i32; ds.bits_len()];
    let mut counts = vec![0i32; ds.counts_len()];
    ds.run_emulated(
        problem.seqs(),
        given.scores,
        &mut bits,
        Some(&mut counts),
        &EmuOptions::default(),
    )?;
    SelectionBits::new(ds.units(), ds.capacity(), bits, counts)
}

/// [`select_given_emulated`] on a GPU: uploads the scores (and varlen lengths), runs the
/// kernel on `gpu`'s stream and copies the bits back (synchronising). Same errors, plus the
/// driver's.
pub fn select_given_cuda(
    gpu: &Gpu,
    problem: &AttnProblem,
    sel: &BlockSelect,
    grouping: Grouping,
    given: GivenScores<'_>,
) -> Result<SelectionBits> {
    let ds = given_select(problem, sel, grouping, &given)?;
    if ds.bits_len() == 0 {
        // No group, or no key block anywhere: every group selects nothing.
        let counts = vec![0; ds.counts_len()];
        return SelectionBits::new(ds.units(), ds.capacity(), Vec::new(), counts);
    }
    let stream = gpu.stream().clone();
    let scores = stream.clone_htod(given.scores)?;
    let mut bits = stream.alloc_zeros::<i32>(ds.bits_len())?;
    let mut counts = stream.alloc_zeros::<i32>(ds.counts_len())?;
    let (cu_q, cu_k) = problem.seqs().cu_seqlens();
    let cuq = stream.clone_htod(&cu_q)?;
    let cuk = stream.clone_htod(&cu_k)?;
    let lens = match problem.seqs() {
        SeqLens::Uniform { q_len, kv_len, .. } => DeviceLens::Uniform {
            q_len: *q_len,
            kv_len: *kv_len,
        },
        SeqLens::Varlen { .. } => DeviceLens::Varlen {
            cu_seqlens_q: &cuq,
            cu_seqlens_k: &cuk,
        },
    };
    ds.run_cuda(gpu, lens, &scores, &mut bits, Some(&mut counts))?;
    let bits_h = stream.clone_dtoh(&bits)?;
    let counts_h = stream.clone_dtoh(&counts)?;
    stream.synchronize()?;
    SelectionBits::new(ds.units(), ds.capacity(), bits_h, counts_h)
}
