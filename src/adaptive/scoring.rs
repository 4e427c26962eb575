//! The device scoring of block selection: the launch of `kernels/adaptive_score.cu`
//! (`SaAdaptiveScoreParams`), which writes `mean_k`, `pooled_qk` and `minmax` scores from the
//! queries and the key summaries ([`crate::kv_cache::summary`]) into the SCORES buffer the
//! selection kernel reads, and its emulated run.
//!
//! The SCORES buffer is f32 `[batch, num_heads, max_groups, max_blocks]` (J contiguous; the
//! launch takes any strides): for every sequence, query head and group `g < max_groups`,
//! entry `J` is the score of block `J` when `J` is a candidate of `g`, else `-inf` (so every
//! entry is written on every call). The kernel runs on CUDA cores in f32 (no tensor cores):
//! one block per (group, query head, sequence), one kv block per thread.
//!
//! Arithmetic: `k̄_J` is the f32 sum over the block's summary blocks divided by `n_J`,
//! `o_J = ln(n_J / B)` in f32, and a block whose keys were all evicted (ring) scores `-inf`.
//! On the exact-arithmetic inputs of docs/adaptive.md (values in `{-2..2}/4`, power-of-two
//! blocks and groups, scale 1/16) `pooled_qk`, `minmax` and singleton-group `mean_k` are the
//! f64 reference's values exactly wherever `o_J = 0`; multi-row `mean_k` is a log-sum-exp in
//! f32 (within a few ulp).

use std::ffi::c_void;

use super::params::{BlockSelect, Score};
use super::select::{given_shape, Grouping};
use crate::attention::Element;
use crate::emu::GuardedBuffer;
use crate::error::{Error, Result};
use crate::ffi::{
    SaAdaptiveScoreParams, SaKvSummaries, SaPagedKv, SA_GROUPING_DECODE, SA_GROUPING_PREFILL,
    SA_SCORE_CHANNELS, SA_SCORE_MEAN_K, SA_SCORE_MINMAX, SA_SCORE_POOLED_QK, SA_SCORE_SMEM_BYTES,
    SA_SCORE_THREADS,
};
use crate::kernels::{self, KernelDesc, Launch};
use crate::kv_cache::summary::SummaryLayout;
use crate::kv_cache::BlockTable;
use crate::shape::{AttnProblem, SeqLens};

/// The extents of a SCORES buffer: groups per (sequence, head) and blocks per group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScoreExtents {
    /// Groups per (sequence, head): at least the most groups of any sequence of a call.
    pub max_groups: usize,
    /// Blocks per group: at least `ceil(max kv_len / B)`.
    pub max_blocks: usize,
}

impl ScoreExtents {
    /// The smallest extents for `problem` ([`given_shape`]).
    pub fn for_problem(sel: &BlockSelect, problem: &AttnProblem, grouping: Grouping) -> Self {
        let [max_groups, max_blocks] = given_shape(sel, problem, grouping);
        ScoreExtents {
            max_groups,
            max_blocks,
        }
    }
}

/// The `SaScoreKind` of a score; `score: given` has no kernel (`Error::Unsupported`: the
/// caller's tensor is the SCORES buffer).
fn score_kind(score: Score) -> Result<i32> {
    Ok(match score {
        Score::MeanK => SA_SCORE_MEAN_K,
        Score::PooledQk => SA_SCORE_POOLED_QK,
        Score::Minmax => SA_SCORE_MINMAX,
        Score::Given => {
            return Err(Error::Unsupported(
                "score \"given\" is read from the caller's tensor, not computed".into(),
            ))
        }
    } as i32)
}

/// Device (or guarded host) addresses of one scoring launch.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScoreAddrs {
    /// Queries `[total_q, num_heads, head_dim]` (packed rows).
    pub q: u64,
    /// The SCORES buffer, `[batch, num_heads, max_groups, max_blocks]` f32.
    pub scores: u64,
    /// `[batch + 1]` query prefix sums (varlen) or 0.
    pub cu_seqlens_q: u64,
    /// `[batch + 1]` key prefix sums (varlen) or 0.
    pub cu_seqlens_k: u64,
    /// The summary pool.
    pub summaries: u64,
    /// The block table (paged) or 0 (identity summaries).
    pub block_table: u64,
}

/// How the summaries are indexed.
#[derive(Clone, Copy, Debug)]
pub enum SummaryIndex<'a> {
    /// Identity paging over contiguous keys, `seq_blocks` summary blocks per sequence.
    Identity {
        /// Summary blocks per sequence.
        seq_blocks: usize,
    },
    /// Page-indexed beside a cache, through this table (validated against `num_pages`).
    Paged {
        /// The layer's block table of the batch.
        table: &'a BlockTable,
        /// Pages in the pool.
        num_pages: usize,
    },
}

/// The scoring launch for `problem` (its lengths: the batch's maxima, read per sequence at
/// run time when varlen), the component `sel`, `grouping` and `scale`, into a SCORES buffer
/// of `extents`, from summaries of `layout` indexed as `index`.
///
/// Errors, before any launch: `score: given` (`Error::Unsupported`); summaries whose heads
/// or head_dim differ from the problem's, or whose granularity does not divide `B`
/// (`Error::Shape`); extents smaller than the problem needs, a non-finite scale, sizes past
/// i32 (`Error::Shape`); a table that does not validate, of another batch or lengths, or of
/// another page size (`Error::Cache` / `Error::Shape`).
#[allow(clippy::too_many_arguments)]
pub fn score_launch(
    problem: &AttnProblem,
    sel: &BlockSelect,
    grouping: Grouping,
    scale: f32,
    layout: &SummaryLayout,
    index: SummaryIndex<'_>,
    extents: ScoreExtents,
    a: &ScoreAddrs,
) -> Result<Launch<SaAdaptiveScoreParams>> {
    let kind = score_kind(sel.score())?;
    let d = problem.head_dim().get() as usize;
    let (h, hk) = (problem.num_heads(), problem.num_kv_heads());
    let bsz = sel.block() as usize;
    if layout.num_kv_heads != hk || layout.head_dim != d {
        return Err(Error::Shape(format!(
            "scores: summaries of {} kv heads x {} channels for a problem of {hk} x {d}",
            layout.num_kv_heads, layout.head_dim
        )));
    }
    if !layout.block.is_power_of_two() || bsz % layout.block != 0 {
        return Err(Error::Shape(format!(
            "scores: summary blocks of {} keys do not divide the adaptive block {bsz}",
            layout.block
        )));
    }
    if d % SA_SCORE_CHANNELS as usize != 0 || d > 512 {
        return Err(Error::Unsupported(format!(
            "scores: head_dim {d} (a multiple of {SA_SCORE_CHANNELS} up to 512 is needed)"
        )));
    }
    if !scale.is_finite() {
        return Err(Error::Shape(format!("scores: scale {scale} is not finite")));
    }
    let need = ScoreExtents::for_problem(sel, problem, grouping);
    if extents.max_groups < need.max_groups
        || extents.max_blocks < need.max_blocks
        || extents.max_groups > 65535
        || extents.max_blocks > i32::MAX as usize
        || sel.q_block() > i32::MAX as i64
    {
        return Err(Error::Shape(format!(
            "scores: a buffer of {} groups x {} blocks for a call needing {} x {} (groups at \
             most 65535)",
            extents.max_groups, extents.max_blocks, need.max_groups, need.max_blocks
        )));
    }
    let seqs = problem.seqs();
    let (max_q, max_kv) = seqs.max_lens();
    let (paged, seq_blocks) = match index {
        SummaryIndex::Identity { seq_blocks } => {
            if seq_blocks < max_kv.div_ceil(layout.block) || layout.blocks_per_page != 1 {
                return Err(Error::Shape(format!(
                    "scores: identity summaries of {seq_blocks} blocks per sequence for {max_kv} \
                     keys in blocks of {}",
                    layout.block
                )));
            }
            (SaPagedKv::default_null(), seq_blocks)
        }
        SummaryIndex::Paged { table, num_pages } => {
            table.validate(num_pages)?;
            let lens_match = table.batch() == seqs.batch()
                && (0..seqs.batch()).all(|b| table.kv_lens[b] as usize == seqs.lens(b).1);
            if !lens_match
                || table.page_size % layout.block != 0
                || layout.blocks_per_page != table.page_size / layout.block
            {
                return Err(Error::Shape(format!(
                    "scores: the block table (batch {}, pages of {}) does not match the problem's \
                     key lengths or summaries of {} keys",
                    table.batch(),
                    table.page_size,
                    layout.block
                )));
            }
            let page = crate::kv_cache::PageLayout {
                num_kv_heads: hk,
                page_size: crate::kv_cache::PageSize::new(table.page_size)?,
                head_dim: d,
            };
            let mut p = table.ffi_params(&page)?;
            p.block_table = a.block_table as *const i32;
            p.num_pages = num_pages as i32;
            (p, 0)
        }
    };
    let summaries: SaKvSummaries = layout.ffi(a.summaries, seq_blocks)?;
    let uniform = matches!(seqs, SeqLens::Uniform { .. });
    let prefill_rows = grouping == Grouping::Prefill && sel.score() != Score::PooledQk;
    let g = extents.max_groups;
    let nb = extents.max_blocks;
    Ok(Launch {
        kernel: kernels::adaptive_score(problem.dtype(), prefill_rows),
        grid: [g.max(1) as u32, h as u32, seqs.batch().max(1) as u32],
        block: [SA_SCORE_THREADS, 1, 1],
        dynamic_smem_bytes: SA_SCORE_SMEM_BYTES,
        params: SaAdaptiveScoreParams {
            q: a.q as *const c_void,
            scores: a.scores as *mut f32,
            q_batch_stride: (max_q * h * d) as i64,
            q_row_stride: (h * d) as i64,
            q_head_stride: d as i64,
            score_batch_stride: (h * g * nb) as i64,
            score_head_stride: (g * nb) as i64,
            score_group_stride: nb as i64,
            cu_seqlens_q: if uniform {
                std::ptr::null()
            } else {
                a.cu_seqlens_q as *const i32
            },
            cu_seqlens_k: if uniform {
                std::ptr::null()
            } else {
                a.cu_seqlens_k as *const i32
            },
            paged,
            summaries,
            batch: seqs.batch() as i32,
            num_heads: h as i32,
            num_kv_heads: hk as i32,
            head_dim: d as i32,
            q_len: max_q as i32,
            kv_len: max_kv as i32,
            score: kind,
            grouping: match grouping {
                Grouping::Prefill => SA_GROUPING_PREFILL,
                Grouping::Decode => SA_GROUPING_DECODE,
            } as i32,
            block: bsz as i32,
            log2_block: bsz.trailing_zeros() as i32,
            q_block: sel.q_block() as i32,
            max_groups: g as i32,
            max_blocks: nb as i32,
            scale,
        },
    })
}

/// A SCORES buffer read back to the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Scores {
    /// `[batch, heads, max_groups, max_blocks]` f32.
    pub data: Vec<f32>,
    /// Query heads.
    pub heads: usize,
    /// Its extents.
    pub extents: ScoreExtents,
}

impl Scores {
    /// The `max_blocks` scores of (sequence `b`, head `h`, group `g`).
    pub fn scores(&self, b: usize, h: usize, g: usize) -> &[f32] {
        let nb = self.extents.max_blocks;
        let at = ((b * self.heads + h) * self.extents.max_groups + g) * nb;
        &self.data[at..at + nb]
    }
}

/// The summaries a scoring run reads on the emulator: a pool of `layout` and its index.
#[derive(Clone, Copy, Debug)]
pub struct SummaryInput<'a> {
    /// The layout of `pool`.
    pub layout: &'a SummaryLayout,
    /// The pool (f32).
    pub pool: &'a [f32],
    /// How it is indexed.
    pub index: SummaryIndex<'a>,
}

/// Runs the scoring kernel on the emulator: queries `q` laid out as for
/// [`crate::reference::attention`] (`[total_q, num_heads, head_dim]`), summaries `input`,
/// into a SCORES buffer of the problem's smallest extents. The oracle is
/// [`super::Selection::compute`]'s `scores`. Errors: those of [`score_launch`]; `q` or the
/// pool of the wrong size (`Error::Shape`).
pub fn score_emulated<T: Element>(
    problem: &AttnProblem,
    sel: &BlockSelect,
    grouping: Grouping,
    scale: f32,
    q: &[T],
    input: SummaryInput<'_>,
) -> Result<Scores> {
    score_emulated_with(problem, sel, grouping, scale, q, input, None)
}

/// [`score_emulated`] running `kernel` instead of the production kernel (the canaries of
/// `kernels/tests/adaptive_score_canary.cu`; same params struct and geometry).
#[doc(hidden)]
pub fn score_emulated_with<T: Element>(
    problem: &AttnProblem,
    sel: &BlockSelect,
    grouping: Grouping,
    scale: f32,
    q: &[T],
    input: SummaryInput<'_>,
    kernel: Option<&'static KernelDesc>,
) -> Result<Scores> {
    let extents = ScoreExtents::for_problem(sel, problem, grouping);
    score_run(problem, sel, grouping, scale, q, input, extents, kernel)
}

/// [`score_emulated`] into a SCORES buffer of `extents` (at least the problem's own,
/// [`ScoreExtents::for_problem`]; `Error::Shape` otherwise): the plan-time buffer of a
/// decode run, whose selection capacity is fixed for the longest call while each step's
/// lengths vary. Entries past a sequence's candidates are `-inf`, as on the device.
#[allow(clippy::too_many_arguments)]
pub fn score_emulated_at<T: Element>(
    problem: &AttnProblem,
    sel: &BlockSelect,
    grouping: Grouping,
    scale: f32,
    q: &[T],
    input: SummaryInput<'_>,
    extents: ScoreExtents,
) -> Result<Scores> {
    score_run(problem, sel, grouping, scale, q, input, extents, None)
}

#[allow(clippy::too_many_arguments)]
fn score_run<T: Element>(
    problem: &AttnProblem,
    sel: &BlockSelect,
    grouping: Grouping,
    scale: f32,
    q: &[T],
    input: SummaryInput<'_>,
    extents: ScoreExtents,
    kernel: Option<&'static KernelDesc>,
) -> Result<Scores> {
    if T::DTYPE != problem.dtype() || q.len() != problem.q_elems() {
        return Err(Error::Shape(format!(
            "scores: q has {} {} elements, the problem needs {} {}",
            q.len(),
            T::DTYPE.name(),
            problem.q_elems(),
            problem.dtype().name()
        )));
    }
    let page = input.layout.page_stride();
    let pages = match input.index {
        SummaryIndex::Identity { seq_blocks } => problem.seqs().batch() * seq_blocks,
        SummaryIndex::Paged { num_pages, .. } => num_pages,
    };
    if input.pool.len() != pages * page || input.pool.is_empty() {
        return Err(Error::Shape(format!(
            "scores: a summary pool of {} f32, {pages} pages of {page} expected",
            input.pool.len()
        )));
    }
    let need = ScoreExtents::for_problem(sel, problem, grouping);
    if extents.max_groups < need.max_groups || extents.max_blocks < need.max_blocks {
        return Err(Error::Shape(format!(
            "scores: a buffer of {} groups x {} blocks for a call needing {} x {}",
            extents.max_groups, extents.max_blocks, need.max_groups, need.max_blocks
        )));
    }
    let heads = problem.num_heads();
    let n = problem.seqs().batch() * heads * extents.max_groups * extents.max_blocks;
    if n == 0 || q.is_empty() {
        score_kind(sel.score())?;
        return Ok(Scores {
            data: vec![f32::NEG_INFINITY; n],
            heads,
            extents,
        });
    }
    let qb = GuardedBuffer::from_slice(q, "q")?;
    let pb = GuardedBuffer::from_slice(input.pool, "summaries")?;
    let mut out = GuardedBuffer::<f32>::filled(n, f32::NAN, "scores")?;
    let (cu_q, cu_k) = problem.seqs().cu_seqlens();
    let cqb = GuardedBuffer::from_slice(&cu_q, "cu_seqlens_q")?;
    let ckb = GuardedBuffer::from_slice(&cu_k, "cu_seqlens_k")?;
    let table = match input.index {
        SummaryIndex::Paged { table, .. } => {
            Some(GuardedBuffer::from_slice(&table.table, "block_table")?)
        }
        SummaryIndex::Identity { .. } => None,
    };
    let mut launch = score_launch(
        problem,
        sel,
        grouping,
        scale,
        input.layout,
        input.index,
        extents,
        &ScoreAddrs {
            q: qb.as_ptr() as u64,
            scores: out.as_mut_ptr() as u64,
            cu_seqlens_q: cqb.as_ptr() as u64,
            cu_seqlens_k: ckb.as_ptr() as u64,
            summaries: pb.as_ptr() as u64,
            block_table: table.as_ref().map_or(0, |t| t.as_ptr() as u64),
        },
    )?;
    if let Some(k) = kernel {
        launch.kernel = k;
    }
    // SAFETY: q, the summaries, prefix sums, table (validated) and the scores are guarded
    // buffers of the sizes the validated problem, layout and extents require.
    unsafe { launch.run_emulated(&Default::default())? };
    Ok(Scores {
        data: out.to_vec(),
        heads,
        extents,
    })
}
