//! Executing an adaptive selection: one plan per (component, maxima) whose forward launch reads
//! tile lists, tile views and a token-mask table that are written on the device for each call,
//! so a prefill chunk or a decode step needs no new plan, no allocation and no host work
//! (issue 15; the pipeline of docs/adaptive.md, "score blocks -> keep forced blocks -> choose
//! the rest -> block-sparse attention").
//!
//! # What the device holds
//!
//! Per sequence `b` and *unit* `u` (a query head, or with `share: kv_group` a kv head whose
//! query heads share one selection) the plan has one row set of the forward kernel (program
//! `id = b * units + u`) with `q_tiles` CSR rows (one per query tile of the longest query) and
//! one block-mask component over that unit's *selection bits*: `max_groups` rows of `words`
//! int32 words, bit `J % 32` of word `J / 32` of row `g` set when key block `J` is selected for
//! the call's group `g` (groups count from the call's first row, as [`super::group_of`] does).
//! The bits are the forward launch's `mask_data`; the selection (the reference on the host, or
//! a device kernel) writes them, then the compaction kernel (`kernels/adaptive_lists.cu`)
//! turns them into each row's full and partial tile lists and its view, and points each
//! program's block mask at its bits for the call's positions (the table starts the call's
//! first group before them, so absolute query blocks `floor(p / q_block)` index the call's
//! rows); then the forward kernel runs its usual mainloop and token mask over them: no kernel
//! code is specific to adaptive layers. A row's lists have a fixed capacity (every kv tile of the longest key
//! sequence): `2 * rows * cap` int32 of list space, sized here.
//!
//! # Limits of this step
//!
//! - An adaptive layer is one selection component, optionally causal, joined to at most two
//!   static components of the interval forms (`dense`, `sliding_window`, `sinks`, `chunked`;
//!   [`AdaptivePlan::with_union`]): a token-level window or sink tokens beside `top_k`, as NSA
//!   runs a sliding window beside its selected blocks. Their tiles are derived on the device
//!   from each call's lengths (the compaction kernel runs the forward kernel's run-time walk
//!   for them), their components sit before the block mask in each program. Table-driven
//!   components (global tokens, dilated, block masks, BigBird) beside a selection are refused
//!   (`Error::Unsupported`).
//! - No GQA packing (heads of one block may select different keys); split-KV as the plan
//!   chooses for few query tiles.

use super::device::{self, DeviceSelect, ScoreLayout, SelectCapacity};
use super::params::{BlockSelect, Score, Share};
use super::scoring::{self, ScoreExtents, SummaryIndex, SummaryInput};
use super::select::{GivenScores, Grouping, Selection};
use crate::attention::component_words;
use crate::attention::{AttnPlan, EmuRun, PlanMeta, PreparedCall, StepKv};
use crate::emu::GuardedBuffer;
use crate::error::{Error, Result};
use crate::ffi::{self, SaAdaptListsParams};
use crate::kernels::{self, Launch};
use crate::kv_cache::summary::{self, SummaryLayout};
use crate::pattern::{Component, HeadPatterns, MaskKind, Pattern};
use crate::shape::{AttnOptions, AttnProblem, SeqLens};
use crate::Element;

/// Words of a tile view and of a mask component / program in the metadata arrays.
const VIEW_WORDS: usize = std::mem::size_of::<ffi::SaTileView>() / 4;
const COMPONENT_WORDS: usize = std::mem::size_of::<ffi::SaMaskComponent>() / 4;
const PROGRAM_WORDS: usize = std::mem::size_of::<ffi::SaMaskProgram>() / 4;

/// What one call of [`AdaptivePlan::run_emulated`] gives back.
#[derive(Clone, Debug)]
pub struct AdaptiveRun<T> {
    /// Output, `[total_q, num_heads, head_dim]`.
    pub out: Vec<T>,
    /// Row LSE, `[num_heads, total_q]`.
    pub lse: Vec<f32>,
    /// The selection bits the call applied ([`SelectionLayout`]).
    pub bits: Vec<i32>,
}

/// The sizes of an adaptive plan's device-written metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectionLayout {
    /// Sequences.
    pub batch: usize,
    /// Selection units per sequence: query heads, or kv heads under `share: kv_group`.
    pub units: usize,
    /// Rows of a unit's selection: the most groups of any call the plan serves.
    pub max_groups: usize,
    /// Key blocks of the longest key sequence, `ceil(max_kv / B)`.
    pub max_blocks: usize,
    /// Words per selection row, `ceil(max_blocks / 32)`.
    pub words: usize,
    /// Query tiles of the longest query (CSR rows per unit).
    pub q_tiles: usize,
    /// List capacity of a row: kv tiles of the longest key sequence.
    pub cap: usize,
}

impl SelectionLayout {
    /// int32 words of the selection bits of the whole batch.
    pub fn bits_len(&self) -> usize {
        self.batch * self.units * self.max_groups * self.words
    }

    /// Where `(b, u, g)`'s row of bits starts in the selection bits.
    pub fn row_offset(&self, b: usize, u: usize, g: usize) -> usize {
        ((b * self.units + u) * self.max_groups + g) * self.words
    }
}

/// A forward plan for one adaptive selection component, serving every call (prefill chunk or
/// decode step) up to its maxima: see the module documentation.
#[derive(Clone, Debug)]
pub struct AdaptivePlan {
    attn: AttnPlan,
    sel: BlockSelect,
    statics: Vec<Component>,
    grouping: Grouping,
    causal: bool,
    layout: SelectionLayout,
}

impl AdaptivePlan {
    /// A plan for `sel` over calls of at most the lengths of `problem` (its sequences' lengths
    /// are maxima, as for [`AttnPlan::for_max_lengths`]), grouped by `grouping`, with
    /// `opts.causal` intersected (and `opts`' scale, softcap, sink logits and ALiBi applied as
    /// in any plan). Errors: the problem's and the options' own, and `Error::Shape` when the
    /// metadata would not index with i32.
    pub fn new(
        problem: &AttnProblem,
        sel: &BlockSelect,
        grouping: Grouping,
        opts: &AttnOptions,
    ) -> Result<Self> {
        Self::with_union(problem, sel, &[], grouping, opts)
    }

    /// A plan for the union of `sel` and the static components `statics` (a pair is allowed
    /// when the selection or a component admits it; `opts.causal` and `j < kv_len` then
    /// intersect, as for every pattern), otherwise as [`AdaptivePlan::new`]. Errors: those of
    /// `new`, and `Error::Unsupported` for more than two static components or one that is not
    /// `dense`, `sliding_window`, `sinks` or `chunked`.
    pub fn with_union(
        problem: &AttnProblem,
        sel: &BlockSelect,
        statics: &[Component],
        grouping: Grouping,
        opts: &AttnOptions,
    ) -> Result<Self> {
        check_statics(statics)?;
        problem.seqs().validate()?;
        let (max_q, max_kv) = problem.seqs().max_lens();
        let batch = problem.seqs().batch();
        let units = match sel.share() {
            Share::Head => problem.num_heads(),
            Share::KvGroup => problem.num_kv_heads(),
        };
        let b = sel.block() as usize;
        let max_groups = match grouping {
            Grouping::Decode => max_q.max(1),
            // max_q consecutive positions meet at most ceil(max_q / q_block) + 1 groups.
            Grouping::Prefill => (max_q.div_ceil(sel.q_block() as usize) + 1).min(max_q.max(1)),
        };
        let max_blocks = max_kv.div_ceil(b).max(1);
        let words = max_blocks.div_ceil(32);
        let causal = opts.causal;
        let mut layout = SelectionLayout {
            batch,
            units,
            max_groups,
            max_blocks,
            words,
            q_tiles: 0,
            cap: 0,
        };
        let dense = HeadPatterns::All(Pattern::new(causal, vec![]));
        let mut built = None;
        let attn = AttnPlan::with_device_meta(problem, dense, opts, |tiles| {
            let block_m = tiles.block_m as usize;
            layout.q_tiles = max_q.div_ceil(block_m).max(1);
            layout.cap = max_kv.div_ceil(tiles.block_n as usize).max(1);
            let arrays = static_arrays(problem, sel, statics, grouping, causal, &layout)?;
            built = Some(layout);
            Ok(PlanMeta::device(arrays, layout.q_tiles, layout.cap))
        })?;
        let layout = built.expect("the metadata closure ran");
        Ok(AdaptivePlan {
            attn,
            sel: *sel,
            statics: statics.to_vec(),
            grouping,
            causal,
            layout,
        })
    }

    /// The forward plan (its problem holds the maxima).
    pub fn attn(&self) -> &AttnPlan {
        &self.attn
    }

    /// The selection component.
    pub fn component(&self) -> &BlockSelect {
        &self.sel
    }

    /// The static components joined to the selection ([`AdaptivePlan::with_union`]).
    pub fn statics(&self) -> &[Component] {
        &self.statics
    }

    /// The grouping of the calls.
    pub fn grouping(&self) -> Grouping {
        self.grouping
    }

    /// Whether keys after the query are excluded.
    pub fn causal(&self) -> bool {
        self.causal
    }

    /// The sizes of the device-written metadata.
    pub fn layout(&self) -> &SelectionLayout {
        &self.layout
    }

    /// The selection bits of a reference [`Selection`] (made for this plan's component and
    /// grouping, over a call within the plan's maxima): the table the forward launch reads.
    /// Under `share: kv_group` the heads of a group hold one selection; the group's first
    /// head's is taken.
    pub fn bits_of(&self, s: &Selection) -> Result<Vec<i32>> {
        if s.component() != &self.sel || s.grouping() != self.grouping {
            return Err(Error::Pattern(
                "the selection was made for another component or grouping".into(),
            ));
        }
        let l = &self.layout;
        let problem = self.attn.problem();
        let group = problem.group_size();
        let mut bits = vec![0i32; l.bits_len()];
        for b in 0..l.batch {
            let groups = s.num_groups(b);
            if groups > l.max_groups {
                return Err(Error::Shape(format!(
                    "sequence {b} has {groups} query groups, the plan {}",
                    l.max_groups
                )));
            }
            for u in 0..l.units {
                let h = match self.sel.share() {
                    Share::Head => u,
                    Share::KvGroup => u * group,
                };
                for g in 0..groups {
                    let row = &mut bits[l.row_offset(b, u, g)..][..l.words];
                    for &jb in s.blocks(b, h, g) {
                        let jb = jb as usize;
                        if jb >= l.max_blocks {
                            return Err(Error::Shape(format!(
                                "selected block {jb} beyond the plan's {} key blocks",
                                l.max_blocks
                            )));
                        }
                        row[jb / 32] |= (1u32 << (jb % 32)) as i32;
                    }
                }
            }
        }
        Ok(bits)
    }

    /// Runs one call at the lengths `seqs` on the emulator, selection and all: the block
    /// selection of the call's q and k (or of the caller's `given` scores, `score: given`),
    /// then the compaction and the forward kernel ([`AdaptivePlan::run_emulated_with_bits`]).
    /// q, k and v are packed varlen tensors of the call. Returns the outputs and the
    /// selection bits that were applied ([`AdaptivePlan::allowed_by_bits`] reads them).
    pub fn run_emulated<T: Element>(
        &self,
        seqs: &SeqLens,
        q: &[T],
        k: &[T],
        v: &[T],
        given: Option<GivenScores<'_>>,
        run: &EmuRun,
    ) -> Result<AdaptiveRun<T>> {
        self.attn.check_step_lens(seqs)?;
        let bits = self.select_bits(seqs, q, k, given, run)?;
        let (out, lse) =
            self.run_emulated_with_bits(seqs, q, StepKv::Contiguous { k, v }, &bits, run)?;
        Ok(AdaptiveRun { out, lse, bits })
    }

    /// The selection bits of one call, made on the device (emulator): the call's key block
    /// summaries (summarize kernel over the contiguous keys), the block scores (scoring
    /// kernel; or the caller's `given` scores), then the selection kernel into the plan's
    /// selection layout.
    pub(super) fn select_bits<T: Element>(
        &self,
        seqs: &SeqLens,
        q: &[T],
        k: &[T],
        given: Option<GivenScores<'_>>,
        run: &EmuRun,
    ) -> Result<Vec<i32>> {
        let p = self.attn.problem();
        let (h, hk, d) = (p.num_heads(), p.num_kv_heads(), p.head_dim().get());
        let problem = AttnProblem::new(seqs.clone(), h, hk, d, p.dtype())?;
        let l = &self.layout;
        let cap = SelectCapacity {
            max_groups: l.max_groups,
            max_blocks: l.max_blocks,
        };
        // Scores in the plan's capacity: computed there on the device, or the caller's
        // [batch, heads, groups, blocks] (the call's own extents) placed there.
        let (scores, score_heads) = match self.given_scores(&problem, given)? {
            Some(placed) => placed,
            None => {
                let layout = SummaryLayout::identity(hk, d as usize, self.sel.block() as usize)?;
                let (pool, seq_blocks) = summary::summarize_emulated(&layout, seqs, k)?;
                let s = scoring::score_emulated_at(
                    &problem,
                    &self.sel,
                    self.grouping,
                    self.attn.scale(),
                    q,
                    SummaryInput {
                        layout: &layout,
                        pool: &pool,
                        index: SummaryIndex::Identity { seq_blocks },
                    },
                    ScoreExtents {
                        max_groups: cap.max_groups,
                        max_blocks: cap.max_blocks,
                    },
                )?;
                (s.data, h)
            }
        };
        let ds = DeviceSelect::new(
            &self.sel,
            self.grouping,
            l.batch,
            h,
            hk,
            cap,
            ScoreLayout::contiguous(score_heads, &cap),
        )?;
        let mut bits = vec![0i32; l.bits_len()];
        ds.run_emulated(seqs, &scores, &mut bits, None, &run.options())?;
        Ok(bits)
    }

    /// The caller's `given` scores of a call (`problem`: its lengths) placed in the plan's
    /// score capacity (`-inf` elsewhere), with their head extent; `None` when the component
    /// computes its scores. Errors: given scores missing (`score: given`) or superfluous (any
    /// other score), or of the wrong shape, heads or values ([`device::given_select`]'s).
    pub(crate) fn given_scores(
        &self,
        problem: &AttnProblem,
        given: Option<GivenScores<'_>>,
    ) -> Result<Option<(Vec<f32>, usize)>> {
        match (self.sel.score(), given) {
            (Score::Given, Some(g)) => {
                device::given_select(problem, &self.sel, self.grouping, &g)?;
                let l = &self.layout;
                let call = ScoreExtents::for_problem(&self.sel, problem, self.grouping);
                let (groups, blocks) = (call.max_groups.max(1), call.max_blocks.max(1));
                let mut placed =
                    vec![f32::NEG_INFINITY; l.batch * g.heads * l.max_groups * l.max_blocks];
                for (row, src) in g.scores.chunks(blocks).enumerate() {
                    let at = ((row / groups) * l.max_groups + row % groups) * l.max_blocks;
                    placed[at..at + src.len()].copy_from_slice(src);
                }
                Ok(Some((placed, g.heads)))
            }
            (Score::Given, None) => Err(Error::Pattern(
                "score \"given\" needs the caller's scores".into(),
            )),
            (score, Some(_)) => Err(Error::Pattern(format!(
                "given scores were passed but the score is {score:?}, not \"given\""
            ))),
            (_, None) => Ok(None),
        }
    }

    /// Runs one call at the lengths `seqs` (the plan's batch, each within its maxima) on the
    /// emulator with the selection `bits` ([`AdaptivePlan::bits_of`], or any table of
    /// [`SelectionLayout::bits_len`] words): the bits are put where the device selection
    /// writes them, the compaction kernel builds the tile lists, and the forward kernel runs.
    /// q and K/V are packed varlen tensors of the call (as [`AttnPlan::run_emulated_step`]);
    /// returns `(out, lse)` laid out as varlen.
    pub fn run_emulated_with_bits<T: Element>(
        &self,
        seqs: &SeqLens,
        q: &[T],
        kv: StepKv<'_, T>,
        bits: &[i32],
        run: &EmuRun,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        self.check_bits(bits)?;
        let upload = GuardedBuffer::from_slice(bits, "selection_bits")?;
        let prepare = |call: &PreparedCall| -> Result<()> {
            // The device selection's place: the forward launch's mask data.
            // SAFETY: `meta.0[9]` is the uploaded mask data, `bits_len` words (the plan's
            // arrays, sized in `static_arrays`), and `upload` holds as many.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    upload.as_ptr(),
                    call.meta.0[9] as *mut i32,
                    self.layout.bits_len(),
                );
            }
            self.compact_emulated(call)
        };
        self.attn
            .run_emulated_step_prepared(seqs, q, kv, run, &prepare)
    }

    /// Whether row `i` of sequence `b`, query head `h`, may attend key `j` in a call at
    /// the lengths `seqs` under the selection `bits` (the layout of [`SelectionLayout`]): the
    /// token mask the kernels apply (its selected block or a static component, `j < kv_len`,
    /// and `j <= p` when the plan is causal), for `--mask-out` and tests.
    pub fn allowed_by_bits(
        &self,
        bits: &[i32],
        seqs: &SeqLens,
        b: usize,
        h: usize,
        i: usize,
        j: usize,
    ) -> bool {
        let (q_len, kv_len) = seqs.lens(b);
        if i >= q_len || j >= kv_len {
            return false;
        }
        let p = i as i64 + kv_len as i64 - q_len as i64;
        if self.causal && j as i64 > p {
            return false;
        }
        if self
            .statics
            .iter()
            .any(|c| c.admits(h, p, j as i64, kv_len, self.causal))
        {
            return true;
        }
        let qb = q_block(&self.sel, self.grouping) as i64;
        let g = p.div_euclid(qb) - (kv_len as i64 - q_len as i64).div_euclid(qb);
        let l = &self.layout;
        let u = match self.sel.share() {
            Share::Head => h,
            Share::KvGroup => h / self.attn.problem().group_size(),
        };
        let jb = j / self.sel.block() as usize;
        if g < 0 || g as usize >= l.max_groups || jb >= l.max_blocks || u >= l.units {
            return false;
        }
        let word = bits
            .get(l.row_offset(b, u, g as usize) + jb / 32)
            .copied()
            .unwrap_or(0) as u32;
        (word >> (jb % 32)) & 1 == 1
    }

    /// `bits` has the plan's selection layout's size (`Error::Shape` otherwise).
    pub(super) fn check_bits(&self, bits: &[i32]) -> Result<()> {
        if bits.len() != self.layout.bits_len() {
            return Err(Error::Shape(format!(
                "selection bits: {} words, the plan needs {}",
                bits.len(),
                self.layout.bits_len()
            )));
        }
        Ok(())
    }

    /// The compaction launch of a call (pure): addresses of the uploaded metadata and lengths.
    pub fn lists_launch(
        &self,
        meta: &crate::attention::MetaAddrs,
        cu_q: u64,
        cu_k: u64,
    ) -> Launch<SaAdaptListsParams> {
        let l = &self.layout;
        let (max_q, max_kv) = self.attn.problem().seqs().max_lens();
        let params = SaAdaptListsParams {
            bits: meta.0[9] as *const i32,
            cu_seqlens_q: cu_q as *const i32,
            cu_seqlens_k: cu_k as *const i32,
            full_tiles: meta.0[4] as *mut i32,
            partial_tiles: meta.0[6] as *mut i32,
            full_row_end: meta.0[12] as *mut i32,
            partial_row_end: meta.0[13] as *mut i32,
            tile_views: meta.0[10] as *mut ffi::SaTileView,
            components: meta.0[8] as *mut ffi::SaMaskComponent,
            batch: l.batch as i32,
            units: l.units as i32,
            q_tiles: l.q_tiles as i32,
            block_m: self.attn.tiles().block_m as i32,
            cap: l.cap as i32,
            max_groups: l.max_groups as i32,
            max_blocks: l.max_blocks as i32,
            words: l.words as i32,
            block: self.sel.block() as i32,
            q_block: q_block(&self.sel, self.grouping),
            causal: self.causal as i32,
            max_q: max_q as i32,
            max_kv: max_kv as i32,
            num_static: self.statics.len() as i32,
            _reserved: 0,
        };
        Launch {
            kernel: kernels::adapt_lists(),
            grid: [l.q_tiles as u32, l.units as u32, l.batch as u32],
            block: [32, 1, 1],
            dynamic_smem_bytes: 0,
            params,
        }
    }

    fn compact_emulated(&self, call: &PreparedCall) -> Result<()> {
        // SAFETY: the params name the call's uploaded metadata (every array at the capacity
        // `static_arrays` gives it: rows * cap list entries, rows views and ends, the bits)
        // and its cu_seqlens (batch + 1 entries); the kernel writes only inside them.
        unsafe {
            self.lists_launch(&call.meta, call.cu_q, call.cu_k)
                .run_emulated(&call.options)?;
        }
        Ok(())
    }
}

/// The static components a selection joins: at most two of the interval forms, whose tiles
/// the compaction kernel derives from the lengths (`Error::Unsupported` otherwise).
pub(crate) fn check_statics(statics: &[Component]) -> Result<()> {
    if statics.len() > 2 {
        return Err(Error::Unsupported(format!(
            "an adaptive component joins at most two static components (got {})",
            statics.len()
        )));
    }
    for c in statics {
        let refused = match c {
            Component::Dense(_)
            | Component::SlidingWindow(_)
            | Component::Sinks(_)
            | Component::Chunked(_) => continue,
            Component::Global(_) => "global",
            Component::Dilated(_) => "dilated",
            Component::BlockMask(_) => "block_mask",
            Component::BigBird(_) => "bigbird",
        };
        return Err(Error::Unsupported(format!(
            "a {refused} component beside an adaptive one (a selection joins dense, \
             sliding_window, sinks and chunked components)"
        )));
    }
    Ok(())
}

/// The kernel form of an interval-form static component (`check_statics` admitted it).
fn static_component(c: &Component, causal: bool) -> ffi::SaMaskComponent {
    let mut m = ffi::SaMaskComponent::default();
    match c {
        Component::SlidingWindow(w) => {
            m.kind = MaskKind::Window as i32;
            m.window_left = w.left() as i32;
            m.window_right = if causal { 0 } else { w.right() as i32 };
        }
        Component::Sinks(s) => {
            m.kind = MaskKind::Sinks as i32;
            m.sink_count = s.count() as i32;
        }
        Component::Chunked(k) => {
            m.kind = MaskKind::Chunked as i32;
            m.block_q = k.size() as i32;
        }
        _ => m.kind = MaskKind::Dense as i32,
    }
    m
}

/// Query positions per group as the kernels take them: `q_block` in a prefill, 1 in a decode
/// step (every row its own group).
fn q_block(sel: &BlockSelect, grouping: Grouping) -> i32 {
    match grouping {
        Grouping::Prefill => sel.q_block() as i32,
        Grouping::Decode => 1,
    }
}

/// The plan's metadata arrays (the order of [`PlanMeta::arrays`]) with everything that does
/// not change between calls filled in and the device-written ones zeroed at capacity.
fn static_arrays(
    problem: &AttnProblem,
    sel: &BlockSelect,
    statics: &[Component],
    grouping: Grouping,
    causal: bool,
    l: &SelectionLayout,
) -> Result<[Vec<i32>; PlanMeta::NUM_ARRAYS]> {
    let programs = l.batch * l.units;
    let rows = programs * l.q_tiles;
    let fits = |n: usize| i32::try_from(n).is_ok();
    // A block mask's data offsets move back by the call's first group (at most max_kv /
    // q_block rows of `words`): they must stay in i32 too.
    let (_, max_kv) = problem.seqs().max_lens();
    let shift = (max_kv / q_block(sel, grouping) as usize + l.max_groups).saturating_mul(l.words);
    if !fits(rows.saturating_mul(l.cap).saturating_add(1))
        || !fits(l.bits_len().saturating_add(shift))
    {
        return Err(Error::Shape(format!(
            "adaptive plan: {rows} rows x {} tiles of lists or {} selection words exceed i32",
            l.cap,
            l.bits_len()
        )));
    }
    let group = problem.group_size();
    let head_set: Vec<i32> = (0..problem.num_heads())
        .map(|h| match sel.share() {
            Share::Head => h as i32,
            Share::KvGroup => (h / group) as i32,
        })
        .collect();
    let set_row_ptr: Vec<i32> = (0..=programs).map(|id| (id * l.q_tiles) as i32).collect();
    let seq_program_base: Vec<i32> = (0..l.batch).map(|b| (b * l.units) as i32).collect();
    let row_ptr: Vec<i32> = (0..=rows).map(|r| (r * l.cap) as i32).collect();
    let n_comp = statics.len() + 1;
    let mut program_words = Vec::with_capacity(programs * PROGRAM_WORDS);
    let mut comp_words = Vec::with_capacity(programs * n_comp * COMPONENT_WORDS);
    let table = l.max_groups * l.words;
    let fixed: Vec<[i32; COMPONENT_WORDS]> = statics
        .iter()
        .map(|c| component_words(&static_component(c, causal)))
        .collect();
    for id in 0..programs {
        program_words.extend_from_slice(&[causal as i32, (id * n_comp) as i32, n_comp as i32, 0]);
        for words in &fixed {
            comp_words.extend_from_slice(words);
        }
        // Written for each call by the compaction kernel (the rows follow the call's
        // positions); until then nothing is allowed (no rows).
        let mut c = [0i32; COMPONENT_WORDS];
        c[0] = MaskKind::BlockMask as i32;
        c[5] = q_block(sel, grouping);
        c[6] = sel.block() as i32;
        c[8] = l.max_blocks as i32;
        c[13] = (id * table) as i32;
        c[14] = table as i32;
        comp_words.extend_from_slice(&c);
    }
    Ok([
        head_set,
        set_row_ptr,
        seq_program_base,
        row_ptr.clone(),
        vec![0; rows * l.cap],
        row_ptr.clone(),
        vec![0; rows * l.cap],
        program_words,
        comp_words,
        vec![0; l.bits_len()],
        vec![0; rows * VIEW_WORDS],
        vec![0],
        row_ptr[..rows].to_vec(),
        row_ptr[..rows].to_vec(),
    ])
}
