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
//!
//! Where things are: `meta.rs` compiles a plan's block-sparse metadata (and uploads it to the
//! emulator), `paged.rs` describes and validates paged K/V, `emulated.rs` runs a plan on the
//! CPU emulator; the CUDA runs live in `crate::backend::cuda`.

use std::ffi::c_void;

use crate::emu;
use crate::error::{Error, Result};
use crate::ffi::SaAttnFwdParams;
use crate::kernels::{self, FwdTiles, FwdWalk, KernelDesc, Launch};
use crate::pattern::{HeadPatterns, Pattern};
use crate::shape::{AttnOptions, AttnProblem, DType, SeqLens};

mod emulated;
mod layout;
mod meta;
mod paged;

pub(crate) use emulated::{pool_pages, PreparedCall};
pub use emulated::{EmuRun, StepKv};
pub use layout::{LseLayout, LseStrides, TensorLayout, TensorStrides};
pub(crate) use meta::component_words;
pub use meta::{EmuMeta, MetaAddrs, PlanMeta};
pub use paged::{PagedAddrs, PagedKv, PagedLayout};

/// A 16-bit element type the kernels accept.
pub trait Element: emu::Plain + Default + Send + Sync {
    /// The element type's [`DType`].
    const DTYPE: DType;
    /// Widens to f32 (exact for f16 and bf16).
    fn to_f32(self) -> f32;
    /// Rounds an f32 to nearest even.
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
/// The default is every address 0 (null).
#[derive(Clone, Copy, Debug, Default)]
pub struct TensorAddrs {
    /// Queries.
    pub q: u64,
    /// Keys (when not paged).
    pub k: u64,
    /// Values (when not paged).
    pub v: u64,
    /// Output, laid out like `q`.
    pub out: u64,
    /// Row LSE (f32); 0: not written (the kernels skip the store).
    pub lse: u64,
    /// `cu_seqlens` arrays on the device (0 for uniform batches).
    pub cu_q: u64,
    /// See `cu_q`.
    pub cu_k: u64,
    /// Optional work counter (0 = none).
    pub tiles_visited: u64,
    /// The plan's block-sparse metadata on the device (see [`PlanMeta::arrays`]).
    pub meta: MetaAddrs,
    /// K/V from a paged cache instead of `k`/`v` (default: not paged).
    pub paged: PagedAddrs,
    /// Split-KV workspace (f32): `[num_splits, total_q, num_heads, head_dim]` partial outputs
    /// and `[num_splits, total_q, num_heads]` partial LSEs; 0 when the plan does not split.
    pub o_partial: u64,
    /// See `o_partial`.
    pub lse_partial: u64,
    /// The plan's sink logits (f32 `[num_heads]`, [`AttnPlan::sink_logits`]) on the device;
    /// 0 exactly when the plan has none.
    pub sink_logits: u64,
    /// The plan's ALiBi slopes (f32 `[num_heads]`, [`AttnPlan::alibi_slopes`]) on the device;
    /// 0 exactly when the plan has none.
    pub alibi_slopes: u64,
}

/// What a plan does to the scores besides the mask (see [`AttnOptions`]), validated.
#[derive(Clone, Debug, PartialEq)]
struct ScoreMods {
    scale: f32,
    softcap: f32,
    sink_logits: Option<Vec<f32>>,
    alibi_slopes: Option<Vec<f32>>,
}

impl ScoreMods {
    fn resolve(problem: &AttnProblem, opts: &AttnOptions) -> Result<Self> {
        let (scale, softcap) = opts.resolve(problem.head_dim())?;
        opts.check_head_vectors(problem.num_heads())?;
        Ok(ScoreMods {
            scale,
            softcap,
            sink_logits: opts.sink_logits.clone(),
            alibi_slopes: opts.alibi_slopes.clone(),
        })
    }
}

/// A validated forward-attention plan.
#[derive(Clone, Debug)]
pub struct AttnPlan {
    problem: AttnProblem,
    scores: ScoreMods,
    patterns: HeadPatterns,
    kernel: &'static KernelDesc,
    tiles: FwdTiles,
    meta: PlanMeta,
    num_splits: u32,
    gqa_pack: u32,
    walk: FwdWalk,
    /// Query rows per head of the plan's capacity layout (LSE rows per head, batch x max
    /// q_len): the problem's, or for a step plan its parent's.
    capacity_rows: usize,
    /// A run-time plan whose blocks are larger than the step tile keeps a second plan of the
    /// step shape for steps whose rows fit it ([`AttnPlan::step_plan`]).
    step: Option<Box<AttnPlan>>,
}

impl AttnPlan {
    /// A dense (or, with `opts.causal`, causal) plan.
    pub fn new(problem: &AttnProblem, opts: &AttnOptions) -> Result<Self> {
        Self::with_patterns(problem, &HeadPatterns::All(Pattern::dense()), opts)
    }

    /// A plan for any pattern set of docs/patterns.md (one pattern for all heads or one per
    /// head). `opts.causal = true` intersects every head's pattern with causal. The
    /// block-sparse metadata is compiled here, once, for every sequence of the batch.
    /// `opts`' scale, softcap, sink logits and ALiBi slopes are validated here
    /// (`Error::Shape`: a non-finite value, a per-head vector whose length is not
    /// `num_heads`).
    pub fn with_patterns(
        problem: &AttnProblem,
        patterns: &HeadPatterns,
        opts: &AttnOptions,
    ) -> Result<Self> {
        Self::with_patterns_walk(problem, patterns, opts, FwdWalk::Lists)
    }

    fn with_patterns_walk(
        problem: &AttnProblem,
        patterns: &HeadPatterns,
        opts: &AttnOptions,
        walk: FwdWalk,
    ) -> Result<Self> {
        let scores = ScoreMods::resolve(problem, opts)?;
        problem.seqs().validate()?;
        let patterns = if opts.causal {
            let causal = |p: &Pattern| Pattern::new(true, p.components.clone());
            match patterns {
                HeadPatterns::All(p) => HeadPatterns::All(causal(p)),
                HeadPatterns::PerHead(v) => HeadPatterns::PerHead(v.iter().map(causal).collect()),
            }
        } else {
            patterns.clone()
        };
        let pack = default_gqa_pack(problem, &patterns);
        Self::build(problem.clone(), patterns, scores, pack, walk)
    }

    /// A plan that serves every step up to the lengths of `problem`, which are maxima: batch
    /// sequences of at most `max_lens()` query and key tokens. Its kernels derive each query
    /// tile's kv-tile walk on the device from the lengths the step passes (run-time
    /// `cu_seqlens`, [`AttnPlan::run_emulated_step`]) and the mask programs compiled here, once
    /// (kernels/include/sparse_attn/tile_walk.cuh): no per-step compilation. Interval-form
    /// patterns (dense, causal, windows, sinks, chunks: at most two components) walk exactly
    /// the tiles they touch, full tiles unmasked; any other pattern is exact but walks every
    /// tile through the token mask (table-driven kinds indexed per block are the next step).
    pub fn for_max_lengths(
        problem: &AttnProblem,
        patterns: &HeadPatterns,
        opts: &AttnOptions,
    ) -> Result<Self> {
        let uniform = maxima(problem)?;
        Self::with_patterns_walk(&uniform, patterns, opts, FwdWalk::Runtime)
    }

    /// A plan whose tile lists, tile views and mask tables are written on the device before
    /// each call ([`FwdWalk::Device`]; the adaptive plans of [`crate::adaptive`]): lengths at
    /// run time up to the maxima of `problem` as with [`AttnPlan::for_max_lengths`], no GQA
    /// packing (heads of a block may select different keys), and the metadata built by `meta`
    /// for the plan's tile configuration. `patterns` is what [`AttnPlan::allowed`] and the
    /// host checks of a paged cache assume: a superset of what any call may allow.
    pub(crate) fn with_device_meta(
        problem: &AttnProblem,
        patterns: HeadPatterns,
        opts: &AttnOptions,
        meta: impl FnOnce(&FwdTiles) -> Result<PlanMeta>,
    ) -> Result<Self> {
        let scores = ScoreMods::resolve(problem, opts)?;
        let problem = maxima(problem)?;
        let tiles = kernels::fwd_tiles(problem.head_dim(), fwd_phase(&problem, 1));
        let meta = meta(&tiles)?;
        let num_splits = default_num_splits(&problem, 1, &meta, &tiles);
        let capacity_rows = problem.seqs().totals().0;
        let plan = AttnPlan {
            kernel: kernels::attn_fwd_walk(problem.dtype(), &tiles, FwdWalk::Device),
            problem,
            scores,
            patterns,
            tiles,
            meta,
            num_splits,
            gqa_pack: 1,
            walk: FwdWalk::Device,
            capacity_rows,
            step: None,
        };
        plan.check_grids()?;
        Ok(plan)
    }

    /// Where the plan's kv-tile walk comes from: compiled for its lengths, or derived at run
    /// time ([`AttnPlan::for_max_lengths`]).
    pub fn walk(&self) -> FwdWalk {
        self.walk
    }

    fn build(
        problem: AttnProblem,
        patterns: HeadPatterns,
        scores: ScoreMods,
        gqa_pack: u32,
        walk: FwdWalk,
    ) -> Result<Self> {
        let tiles = kernels::fwd_tiles(problem.head_dim(), fwd_phase(&problem, gqa_pack));
        let meta = match walk {
            FwdWalk::Lists => PlanMeta::compile(&problem, &patterns, &tiles, gqa_pack)?,
            FwdWalk::Runtime => PlanMeta::compile_runtime(&problem, &patterns, &tiles, gqa_pack)?,
            FwdWalk::Device => {
                return Err(Error::Unsupported(
                    "a plan with device-written lists is built by its owner (adaptive plans \
                     do not repack or recompile)"
                        .into(),
                ))
            }
        };
        let num_splits = default_num_splits(&problem, gqa_pack, &meta, &tiles);
        let step = match walk {
            FwdWalk::Runtime if tiles.block_m != crate::ffi::SA_FWD_BLOCK_M_STEP => {
                Self::build_step(&problem, &patterns, &scores, gqa_pack)?
            }
            _ => None,
        };
        let capacity_rows = problem.seqs().totals().0;
        let mut plan = AttnPlan {
            kernel: kernels::attn_fwd_walk(problem.dtype(), &tiles, walk),
            problem,
            scores,
            patterns,
            tiles,
            meta,
            num_splits,
            gqa_pack,
            walk,
            capacity_rows,
            step: None,
        };
        plan.check_grids()?;
        plan.step = step.map(|mut s| {
            s.capacity_rows = capacity_rows;
            Box::new(s)
        });
        Ok(plan)
    }

    /// The step plan of a run-time plan (see [`AttnPlan::step_plan`]): the same patterns,
    /// score settings and packing for at most `16 / gqa_pack` query tokens per sequence, when
    /// that is the step tile shape (not at head_dim 512, nor for groups above 16).
    fn build_step(
        problem: &AttnProblem,
        patterns: &HeadPatterns,
        scores: &ScoreMods,
        gqa_pack: u32,
    ) -> Result<Option<AttnPlan>> {
        let rows = (crate::ffi::SA_FWD_BLOCK_M_STEP / gqa_pack.max(1)) as usize;
        if rows == 0 {
            return Ok(None);
        }
        let (max_q, max_kv) = problem.seqs().max_lens();
        let small = AttnProblem::new(
            SeqLens::Uniform {
                batch: problem.seqs().batch(),
                q_len: rows.min(max_q),
                kv_len: max_kv,
            },
            problem.num_heads(),
            problem.num_kv_heads(),
            problem.head_dim().get(),
            problem.dtype(),
        )?;
        let tiles = kernels::fwd_tiles(small.head_dim(), fwd_phase(&small, gqa_pack));
        if tiles.block_m != crate::ffi::SA_FWD_BLOCK_M_STEP {
            return Ok(None);
        }
        Self::build(
            small,
            patterns.clone(),
            scores.clone(),
            gqa_pack,
            FwdWalk::Runtime,
        )
        .map(Some)
    }

    /// The plan of the step tile (one warp of 16 rows, `_m16` kernels) that a run-time plan
    /// ([`AttnPlan::for_max_lengths`]) with larger blocks keeps beside its own kernel: calls
    /// whose lengths the host passes (the emulated steps, `GpuPlan::run_paged_step` and
    /// `GpuPlan::run_step_strided`) run it when every sequence of the step has at most its
    /// maximum q_len (`16 / gqa_pack` tokens: decode steps), so one plan serves chunked
    /// prefill at the prefill or decode shape and decode at the bandwidth shape. Its LSE rows
    /// are laid out for this plan's capacity. `None` for other plans, for plans already of
    /// the step shape, and where the step shape does not apply (head_dim 512, groups of more
    /// than 16 packed heads). Launches over device lengths (`GpuPlan::launch_step`,
    /// `launch_step_strided`, `launch_contiguous_step`) run this plan's own kernel, since the
    /// host does not know their lengths, unless the engine states the step's longest query
    /// (`GpuPlan::launch_step_rows`).
    pub fn step_plan(&self) -> Option<&AttnPlan> {
        self.step.as_deref()
    }

    /// The plan a step of lengths `seqs` runs with: [`AttnPlan::step_plan`] when it has one
    /// and every sequence's q_len fits it, else this plan.
    pub fn plan_for_step(&self, seqs: &SeqLens) -> &AttnPlan {
        self.plan_for_rows(seqs.max_lens().0)
    }

    /// [`AttnPlan::plan_for_step`] of a step whose longest query has `max_q_len` tokens.
    pub fn plan_for_rows(&self, max_q_len: usize) -> &AttnPlan {
        match &self.step {
            Some(s) if max_q_len <= s.problem.seqs().max_lens().0 => s,
            _ => self,
        }
    }

    /// Rejects a plan whose forward launch (or split-KV combine launch) would exceed the CUDA
    /// grid limits, so it fails when it is built rather than at launch. The forward grid is
    /// (query tiles × splits × column blocks, heads or packed kv heads, batch);
    /// `AttnProblem::new` already
    /// bounds batch and heads by 65,535, and this check covers every plan path
    /// ([`AttnPlan::new`], [`AttnPlan::with_patterns`], GQA packing, split factors).
    fn check_grids(&self) -> Result<()> {
        let p = &self.problem;
        let m_blocks = self.meta.max_tiles().max(1) as u64;
        let heads = if self.gqa_pack > 1 {
            p.num_kv_heads()
        } else {
            p.num_heads()
        };
        let fwd = [
            m_blocks * self.num_splits as u64 * self.tiles.col_splits as u64,
            heads as u64,
            p.seqs().batch() as u64,
        ];
        check_grid("forward", fwd)?;
        if self.num_splits > 1 {
            let pairs = (p.seqs().totals().0 * p.num_heads()) as u64;
            let warps = (kernels::COMBINE_THREADS / 32) as u64;
            check_grid("split-KV combine", [pairs.div_ceil(warps), 1, 1])?;
        }
        Ok(())
    }

    /// Turns GQA packing on or off (recompiling the metadata). Packing puts the query heads of
    /// one kv head into the rows of one block, so each K/V tile is read once per group instead
    /// of once per query head: the decode layout (FlashAttention's "seqlen-q / ngroups swap").
    /// It needs a group size that is a power of two up to 64 and the same head-independent
    /// pattern on every head of a group; the default enables it for short queries (< 64
    /// tokens) when possible.
    pub fn with_gqa_packing(self, enabled: bool) -> Result<Self> {
        let g = self.problem.group_size() as u32;
        let pack = if enabled {
            if !gqa_packable(&self.problem, &self.patterns) {
                return Err(Error::Unsupported(format!(
                    "GQA packing needs a power-of-two group size <= 64 (got {g}) and one \
                     head-independent pattern per kv group"
                )));
            }
            g
        } else {
            1
        };
        Self::build(self.problem, self.patterns, self.scores, pack, self.walk)
    }

    /// Query heads packed into one block (1 = not packed).
    pub fn gqa_pack(&self) -> u32 {
        self.gqa_pack
    }

    /// Overrides the split-KV factor (1 = no split). Each query tile's kv walk is cut into
    /// `num_splits` parts run by separate blocks and merged by the combine kernel through
    /// their LSE; results agree with the unsplit run within rounding.
    pub fn with_num_splits(mut self, num_splits: u32) -> Result<Self> {
        if !(1..=MAX_SPLITS).contains(&num_splits) {
            return Err(Error::Unsupported(format!(
                "num_splits {num_splits} (supported: 1..={MAX_SPLITS})"
            )));
        }
        self.num_splits = num_splits;
        self.check_grids()?;
        if let Some(s) = self.step.take() {
            self.step = Some(Box::new(s.with_num_splits(num_splits)?));
        }
        Ok(self)
    }

    /// The split-KV factor of this plan (1 = no split).
    pub fn num_splits(&self) -> u32 {
        self.num_splits
    }

    /// f32 elements of the split-KV workspace: (partial outputs, partial LSEs); (0, 0) when
    /// the plan does not split.
    pub fn split_workspace(&self) -> (usize, usize) {
        if self.num_splits <= 1 {
            return (0, 0);
        }
        // A step plan's own capacity (its maxima), not its parent's: the partials are laid out
        // by the step's rows, which fit it whenever the step fits the step plan.
        let p = &self.problem;
        let rows = self.num_splits as usize * p.seqs().totals().0 * p.num_heads();
        (rows * p.head_dim().get() as usize, rows)
    }

    /// The combine launch that merges split-KV partials into `out` and `lse` (`None` when
    /// the plan does not split). Runs after [`AttnPlan::launch`] on the same addresses.
    pub fn combine_launch(&self, a: &TensorAddrs) -> Option<Launch<SaAttnFwdParams>> {
        self.combine_launch_with_layout(a, &self.packed_layout())
    }

    /// [`AttnPlan::combine_launch`] writing `out` and the LSE at `layout`'s strides (see
    /// [`AttnPlan::launch_with_layout`]).
    pub fn combine_launch_with_layout(
        &self,
        a: &TensorAddrs,
        layout: &TensorLayout,
    ) -> Option<Launch<SaAttnFwdParams>> {
        let total_q = self.problem.seqs().totals().0;
        if self.num_splits <= 1 || total_q == 0 {
            return None;
        }
        let mut l = self.launch_with_layout(a, layout);
        let warps = (kernels::COMBINE_THREADS / 32) as usize;
        let pairs = total_q * self.problem.num_heads();
        l.kernel = kernels::attn_combine(self.problem.dtype(), self.problem.head_dim());
        l.grid = [pairs.div_ceil(warps) as u32, 1, 1];
        l.block = [kernels::COMBINE_THREADS, 1, 1];
        l.dynamic_smem_bytes = 0;
        Some(l)
    }

    /// The validated problem.
    pub fn problem(&self) -> &AttnProblem {
        &self.problem
    }
    /// The forward kernel this plan launches.
    pub fn kernel(&self) -> &'static KernelDesc {
        self.kernel
    }

    /// The forward kernel's tile configuration (rows per block, keys per tile, threads,
    /// shared memory): [`kernels::fwd_tiles`] for this plan's head_dim and phase.
    pub fn tiles(&self) -> &FwdTiles {
        &self.tiles
    }
    /// The effective score scale.
    pub fn scale(&self) -> f32 {
        self.scores.scale
    }
    /// The effective softcap (0: off).
    pub fn softcap(&self) -> f32 {
        self.scores.softcap
    }
    /// The learnable sink logits, one per query head (`None`: no sink term).
    pub fn sink_logits(&self) -> Option<&[f32]> {
        self.scores.sink_logits.as_deref()
    }
    /// The ALiBi slopes, one per query head (`None`: no position bias).
    pub fn alibi_slopes(&self) -> Option<&[f32]> {
        self.scores.alibi_slopes.as_deref()
    }
    /// The per-head f32 vectors a launch reads, each with its name, for the backends to
    /// upload: `[sink_logits, alibi_slopes]`, as [`TensorAddrs`] names them.
    pub fn head_vectors(&self) -> [(&'static str, Option<&[f32]>); 2] {
        [
            ("sink_logits", self.sink_logits()),
            ("alibi_slopes", self.alibi_slopes()),
        ]
    }
    /// The head patterns this plan runs (after `opts.causal` was applied).
    pub fn patterns(&self) -> &HeadPatterns {
        &self.patterns
    }
    /// `Some(causal)` when every head is dense (no components beyond `dense`) with the same
    /// causality, i.e. the plan is plain dense or causal attention; `None` for sparse plans.
    pub fn dense_causal(&self) -> Option<bool> {
        let causal = self.patterns.causal()?;
        let dense = (0..self.problem.num_heads())
            .all(|h| self.patterns.pattern(h).is_some_and(|p| p.is_dense()));
        dense.then_some(causal)
    }
    /// The compiled block-sparse metadata.
    pub fn meta(&self) -> &PlanMeta {
        &self.meta
    }
    /// Whether query head `h` of sequence `b` may attend key `j` from row `i` (the contract's
    /// predicate, for references and mask rendering).
    pub fn allowed(&self, b: usize, h: usize, i: usize, j: usize) -> bool {
        let (q_len, kv_len) = self.problem.seqs().lens(b);
        let p = i as i64 + kv_len as i64 - q_len as i64;
        self.patterns.allowed(h, p, j as i64, kv_len)
    }

    /// The launch for given tensor addresses. Pure: no memory is touched. `a.sink_logits`
    /// and `a.alibi_slopes` must hold the plan's vectors ([`AttnPlan::head_vectors`]) when
    /// it has them and be 0 otherwise.
    pub fn launch(&self, a: &TensorAddrs) -> Launch<SaAttnFwdParams> {
        self.launch_with_layout(a, &self.packed_layout())
    }

    /// Every tensor of this plan's problem packed ([`TensorLayout::packed`]): what
    /// [`AttnPlan::launch`] assumes.
    pub fn packed_layout(&self) -> TensorLayout {
        let p = &self.problem;
        TensorLayout::packed(p.num_heads(), p.num_kv_heads(), p.head_dim().get() as usize)
    }

    /// [`AttnPlan::launch`] with q, k, v, out and the LSE at the strides of `layout` (k and v
    /// unused when K/V are paged); uniform batches put sequence `b`'s tokens `b * q_len` (`b *
    /// kv_len`) rows in. Pure, like `launch`: the caller validates the layout against its
    /// buffers first ([`TensorStrides::check`], [`LseStrides::check`]).
    pub fn launch_with_layout(
        &self,
        a: &TensorAddrs,
        layout: &TensorLayout,
    ) -> Launch<SaAttnFwdParams> {
        debug_assert_eq!(
            a.sink_logits != 0,
            self.sink_logits().is_some(),
            "sink_logits"
        );
        debug_assert_eq!(
            a.alibi_slopes != 0,
            self.alibi_slopes().is_some(),
            "alibi_slopes"
        );
        let p = &self.problem;
        let d = p.head_dim().get() as i64;
        let (h, hk) = (p.num_heads() as i64, p.num_kv_heads() as i64);
        let (max_q, max_k) = p.seqs().max_lens();
        let (q_len, kv_len) = match &p.seqs() {
            SeqLens::Uniform { q_len, kv_len, .. } => (*q_len, *kv_len),
            SeqLens::Varlen { .. } => (max_q, max_k),
        };
        // Run-time walks read every sequence's lengths from cu_seqlens (varlen layout); their
        // LSE rows are laid out for the plan's capacity (batch x max q_len), so nothing in the
        // params depends on a step's lengths.
        let runtime = self.walk.runtime_lengths();
        let varlen = runtime || matches!(p.seqs(), SeqLens::Varlen { .. });
        let [q_row, k_row, v_row, o_row] =
            [layout.q, layout.k, layout.v, layout.out].map(|s| s.row as i64);
        // The LSE's (batch, head, row) strides: the plan's head-major layout, or the caller's
        // (token, head) strides, sequence b's tokens b * q_len rows in for uniform batches.
        let (lse_batch_stride, lse_head_stride, lse_row_stride) = match layout.lse {
            LseLayout::Plan if varlen => (0, self.capacity_rows as i64, 1),
            LseLayout::Plan => (h * q_len as i64, q_len as i64, 1),
            LseLayout::Strided(s) => {
                let (row, head) = (s.row as i64, s.head as i64);
                (if varlen { 0 } else { q_len as i64 * row }, head, row)
            }
        };
        let params = SaAttnFwdParams {
            q: a.q as *const c_void,
            k: a.k as *const c_void,
            v: a.v as *const c_void,
            out: a.out as *mut c_void,
            lse: a.lse as *mut f32,
            q_batch_stride: if runtime { 0 } else { q_len as i64 * q_row },
            q_row_stride: q_row,
            q_head_stride: layout.q.head as i64,
            k_batch_stride: if runtime { 0 } else { kv_len as i64 * k_row },
            k_row_stride: k_row,
            k_head_stride: layout.k.head as i64,
            v_batch_stride: if runtime { 0 } else { kv_len as i64 * v_row },
            v_row_stride: v_row,
            v_head_stride: layout.v.head as i64,
            o_batch_stride: if runtime { 0 } else { q_len as i64 * o_row },
            o_row_stride: o_row,
            o_head_stride: layout.out.head as i64,
            lse_batch_stride,
            lse_head_stride,
            lse_row_stride,
            cu_seqlens_q: a.cu_q as *const i32,
            cu_seqlens_k: a.cu_k as *const i32,
            batch: p.seqs().batch() as i32,
            num_heads: h as i32,
            num_kv_heads: hk as i32,
            head_dim: d as i32,
            q_len: q_len as i32,
            kv_len: kv_len as i32,
            scale: self.scores.scale,
            softcap: self.scores.softcap,
            sink_logits: a.sink_logits as *const f32,
            alibi_slopes: a.alibi_slopes as *const f32,
            tiles_visited: a.tiles_visited as *mut _,
            paged: paged::paged_params(a, hk, d),
            num_splits: self.num_splits as i32,
            gqa_pack: self.gqa_pack as i32,
            walk: self.walk.code(),
            _reserved_walk: 0,
            o_partial: a.o_partial as *mut f32,
            lse_partial: a.lse_partial as *mut f32,
            head_set: a.meta.0[0] as *const i32,
            set_row_ptr: a.meta.0[1] as *const i32,
            seq_program_base: a.meta.0[2] as *const i32,
            full_row_ptr: a.meta.0[3] as *const i32,
            full_tiles: a.meta.0[4] as *const i32,
            partial_row_ptr: a.meta.0[5] as *const i32,
            partial_tiles: a.meta.0[6] as *const i32,
            full_row_end: a.meta.0[12] as *const i32,
            partial_row_end: a.meta.0[13] as *const i32,
            mask_programs: a.meta.0[7] as *const _,
            mask_components: a.meta.0[8] as *const _,
            mask_data: a.meta.0[9] as *const i32,
            tile_views: a.meta.0[10] as *const _,
            view_data: a.meta.0[11] as *const i32,
        };
        let m_blocks = self.meta.max_tiles().max(1) as u32;
        let heads = if self.gqa_pack > 1 { hk } else { h };
        Launch {
            kernel: self.kernel,
            grid: [
                m_blocks * self.num_splits * self.tiles.col_splits,
                heads as u32,
                p.seqs().batch() as u32,
            ],
            block: [self.tiles.threads, 1, 1],
            dynamic_smem_bytes: self.tiles.smem_bytes,
            params,
        }
    }

    pub(crate) fn check_lens<T: Element>(&self, q: usize, k: usize, v: usize) -> Result<()> {
        let p = &self.problem;
        if T::DTYPE != p.dtype() {
            return Err(Error::Shape(format!(
                "element type {} does not match the problem's {}",
                T::DTYPE.name(),
                p.dtype().name()
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
}

/// Most split-KV parts a plan may use.
pub const MAX_SPLITS: u32 = 64;

/// The CUDA grid limits: x below 2^31, y and z at most 65,535.
const GRID_MAX: [u64; 3] = [i32::MAX as u64, 65535, 65535];

/// `kernel`'s grid against [`GRID_MAX`], naming the dimension and what it counts.
fn check_grid(kernel: &str, grid: [u64; 3]) -> Result<()> {
    const WHAT: [&str; 3] = [
        "query tiles x splits (or rows)",
        "heads",
        "batch (sequences)",
    ];
    for (dim, ((&n, &max), what)) in grid.iter().zip(&GRID_MAX).zip(WHAT).enumerate() {
        if n > max {
            let axis = ["x", "y", "z"][dim];
            return Err(Error::Shape(format!(
                "the {kernel} launch needs a grid-{axis} of {n} ({what}), above the CUDA limit \
                 {max}"
            )));
        }
    }
    Ok(())
}

/// Blocks that fill a large GPU (132 SMs on H100/H200, one 4-warp forward block each at
/// these register counts); split-KV is worth its combine pass only below that.
const TARGET_BLOCKS: usize = 132;

/// The default split-KV factor: none when the unsplit grid already has the blocks that fill
/// the GPU (`TARGET_BLOCKS` 4-warp blocks, four times as many one-warp step blocks: the SM
/// holds 4-8 of those); otherwise enough parts to reach about two waves, keeping at least two
/// kv tiles per part. A heuristic (FlashAttention-2 uses a similar occupancy rule); not yet
/// tuned by measurement. `col_splits` blocks share each query tile (head_dim 512).
fn default_num_splits(
    problem: &AttnProblem,
    gqa_pack: u32,
    meta: &PlanMeta,
    tiles: &FwdTiles,
) -> u32 {
    let max_row_tiles = meta.max_row_tiles();
    let blocks = meta.max_tiles().max(1)
        * (problem.num_heads() / gqa_pack.max(1) as usize)
        * problem.seqs().batch()
        * tiles.col_splits as usize;
    let target = TARGET_BLOCKS * (crate::ffi::SA_FWD_THREADS / tiles.threads) as usize;
    if blocks >= target || max_row_tiles < 4 {
        return 1;
    }
    let want = (2 * target).div_ceil(blocks);
    want.min(max_row_tiles / 2).min(MAX_SPLITS as usize).max(1) as u32
}

/// The uniform problem of `problem`'s maxima (its batch, longest query and key sequence): what
/// a plan serving every length up to them is built for.
fn maxima(problem: &AttnProblem) -> Result<AttnProblem> {
    problem.seqs().validate()?;
    let (max_q, max_kv) = problem.seqs().max_lens();
    AttnProblem::new(
        SeqLens::Uniform {
            batch: problem.seqs().batch(),
            q_len: max_q,
            kv_len: max_kv,
        },
        problem.num_heads(),
        problem.num_kv_heads(),
        problem.head_dim().get(),
        problem.dtype(),
    )
}

/// The tile shape's phase: step blocks (one warp, 16 rows) when a query tile's rows -- the
/// longest query's tokens times the packed heads -- fit 16 (decode steps: bound by K/V
/// bandwidth, see [`kernels::fwd_tiles`]); decode blocks (64 rows) for other GQA packing and
/// for queries of at most 64 rows, where 128-row blocks would be half padding; prefill blocks
/// otherwise.
fn fwd_phase(problem: &AttnProblem, gqa_pack: u32) -> kernels::FwdPhase {
    let (max_q, _) = problem.seqs().max_lens();
    let rows = max_q.saturating_mul(gqa_pack.max(1) as usize);
    if rows <= crate::ffi::SA_FWD_BLOCK_M_STEP as usize {
        kernels::FwdPhase::Step
    } else if gqa_pack > 1 || max_q <= crate::ffi::SA_FWD_BLOCK_M_DECODE as usize {
        kernels::FwdPhase::Decode
    } else {
        kernels::FwdPhase::Prefill
    }
}

/// Whether the heads of every kv group can share packed blocks: a power-of-two group size up
/// to 64 and one head-independent pattern per group.
fn gqa_packable(problem: &AttnProblem, patterns: &HeadPatterns) -> bool {
    let g = problem.group_size();
    if g < 2 || !g.is_power_of_two() || g > 64 {
        return false;
    }
    (0..problem.num_kv_heads()).all(|kv| {
        let first = patterns.pattern(kv * g);
        first.is_some_and(|p| !p.is_head_dependent())
            && (1..g).all(|i| patterns.pattern(kv * g + i) == first)
    })
}

/// GQA packing by default for short queries (decode and small chunks), where unpacked blocks
/// would be mostly empty rows and every query head would re-read the same K/V.
fn default_gqa_pack(problem: &AttnProblem, patterns: &HeadPatterns) -> u32 {
    let (max_q, _) = problem.seqs().max_lens();
    if max_q < 64 && gqa_packable(problem, patterns) {
        problem.group_size() as u32
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(batch: usize, q_len: usize, kv_len: usize) -> SeqLens {
        SeqLens::Uniform {
            batch,
            q_len,
            kv_len,
        }
    }

    #[test]
    fn batch_above_the_grid_z_limit_is_rejected_before_any_plan() {
        for seqs in [
            uniform(65536, 1, 1),
            SeqLens::Varlen {
                cu_q: (0..=65536).collect(),
                cu_k: (0..=65536).collect(),
            },
        ] {
            let err = AttnProblem::new(seqs, 1, 1, 64, DType::F16).unwrap_err();
            assert!(matches!(err, Error::Shape(_)), "{err:?}");
            assert!(err.to_string().contains("65535"), "{err}");
        }
    }

    #[test]
    fn batch_at_the_grid_z_limit_plans_and_launches_within_it() {
        let problem = AttnProblem::new(uniform(65535, 1, 256), 2, 1, 64, DType::F16).unwrap();
        for plan in [
            AttnPlan::new(&problem, &AttnOptions::causal()).unwrap(),
            AttnPlan::new(&problem, &AttnOptions::default())
                .unwrap()
                .with_num_splits(2)
                .unwrap(),
            AttnPlan::new(&problem, &AttnOptions::default())
                .unwrap()
                .with_gqa_packing(true)
                .unwrap(),
        ] {
            let a = zero_addrs();
            let l = plan.launch(&a);
            assert_eq!(l.grid[2], 65535);
            assert!(l.grid[1] <= 65535);
            if let Some(c) = plan.combine_launch(&a) {
                assert!(c.grid.iter().skip(1).all(|&g| g == 1));
                assert!(c.grid[0] as u64 <= GRID_MAX[0]);
            }
        }
    }

    fn zero_addrs() -> TensorAddrs {
        TensorAddrs {
            q: 0,
            k: 0,
            v: 0,
            out: 0,
            lse: 0,
            cu_q: 0,
            cu_k: 0,
            tiles_visited: 0,
            meta: MetaAddrs::default(),
            paged: PagedAddrs::default(),
            o_partial: 0,
            lse_partial: 0,
            sink_logits: 0,
            alibi_slopes: 0,
        }
    }

    /// The LSE's (batch, head, row) strides in the forward and combine params: the plan's
    /// head-major layout by default, the caller's (token, head) strides otherwise, sequence b
    /// of a uniform batch b * q_len tokens in (so (b, h, i) lands at (b * q_len + i) * row +
    /// h * head).
    #[test]
    fn lse_strides_reach_the_forward_and_combine_params() {
        let strides = |l: &Launch<SaAttnFwdParams>| {
            let p = &l.params;
            (p.lse_batch_stride, p.lse_head_stride, p.lse_row_stride)
        };
        let padded = LseStrides { row: 7, head: 1 };
        let uniform = AttnProblem::new(uniform(3, 5, 300), 4, 2, 64, DType::F16).unwrap();
        let varlen = AttnProblem::new(
            SeqLens::varlen_from_lens(&[(5, 300), (2, 100)]).unwrap(),
            4,
            2,
            64,
            DType::F16,
        )
        .unwrap();
        for (problem, plan_strides, engine_strides) in [
            (&uniform, (4 * 5, 5, 1), (5 * 7, 1, 7)),
            (&varlen, (0, 7, 1), (0, 1, 7)),
        ] {
            let plan = AttnPlan::new(problem, &AttnOptions::default())
                .unwrap()
                .with_num_splits(2)
                .unwrap();
            let engine = TensorLayout {
                lse: LseLayout::Strided(padded),
                ..plan.packed_layout()
            };
            let a = zero_addrs();
            assert_eq!(strides(&plan.launch(&a)), plan_strides);
            assert_eq!(strides(&plan.combine_launch(&a).unwrap()), plan_strides);
            assert_eq!(
                strides(&plan.launch_with_layout(&a, &engine)),
                engine_strides
            );
            let combine = plan.combine_launch_with_layout(&a, &engine).unwrap();
            assert_eq!(strides(&combine), engine_strides);
        }
    }

    #[test]
    fn grids_above_the_limits_are_named() {
        assert!(check_grid("forward", [i32::MAX as u64, 65535, 65535]).is_ok());
        let z = check_grid("forward", [1, 1, 65536])
            .unwrap_err()
            .to_string();
        assert!(z.contains("grid-z") && z.contains("batch"), "{z}");
        let y = check_grid("forward", [1, 65536, 1])
            .unwrap_err()
            .to_string();
        assert!(y.contains("grid-y") && y.contains("heads"), "{y}");
        let x = check_grid("split-KV combine", [1 << 31, 1, 1])
            .unwrap_err()
            .to_string();
        assert!(x.contains("grid-x") && x.contains("combine"), "{x}");
    }
}
