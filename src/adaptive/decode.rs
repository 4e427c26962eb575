//! Adaptive decode: the per-step driver of one adaptive layer over the paged KV cache
//! (issue 15; docs/adaptive.md, "Decode steps").
//!
//! Every step appends one token to each sequence of a batch and attends it over the
//! sequence's keys, in four launches over buffers sized once:
//!
//! 1. **append** (`kernels/kv_append.cu`): the new K/V rows go into the cache's pages and the
//!    append kernel folds the keys into the block summaries beside them
//!    ([`crate::kv_cache::summary`]);
//! 2. **score** (`kernels/adaptive_score.cu`): `mean_k`, `pooled_qk` or `minmax` of the new
//!    query row against every candidate block, from the summaries through the block table;
//! 3. **select** (`kernels/adaptive_select.cu`, [`DeviceSelect`]): the scores to selection
//!    bits, per query head or, under `share: kv_group`, per kv head (the heads' scores
//!    combined by the selection kernel);
//! 4. **forward**: the compaction kernel and the forward kernel of one [`AdaptivePlan`]
//!    (built once for the maxima: the batch, one query row, the longest key sequence) run
//!    with K/V read through the block table ([`StepKv::Paged`]) under the bits.
//!
//! A decode row is a group of its own ([`Grouping::Decode`]), so each step equals the f64
//! reference evaluated as its own call: `q_len` 1 over the `p + 1` keys present at that step
//! (the summaries are those of exactly these keys).
//!
//! # `reselect_every`
//!
//! With `reselect_every = N` a sequence's selection is made on its first decode step and
//! then every `N` steps (steps `0, N, 2N, ..` of the sequence in this driver); on the
//! `N - 1` steps between, no fresh selection is applied to it (the scoring and selection
//! launches run only on steps where some sequence of the batch reselects) and the applied
//! set at position `p` is
//!
//! `F(p) ∪ R ∪ {J : J(p0) < J <= J(p)}`
//!
//! where `R = S(p0) \ F(p0)` are the blocks the last selection (made at position `p0`)
//! chose *by content*, `F(p)` the forced blocks of the current position (`keep_sinks` and the
//! `keep_local` blocks ending at the current block: they move with the position, so they are
//! re-applied every step), and the last term the blocks begun since the selection was made
//! (`J(x) = floor(x / B)`; with `N <= B` at most the token's own block): they were not
//! candidates then, so the selection has no say on them, and leaving them out would hide the
//! newest keys whatever their content for up to `N - 1` steps. A block that existed at `p0`
//! and was not chosen stays out, as it was in `S(p0)` (with `keep_local = 0` the token's own
//! block can then be out, exactly as in a fresh selection; with `keep_local >= 1` it is
//! always forced). On a reselection step the applied set is the fresh `S(p)` unchanged.
//! Every block of `R` stays a candidate (its keys are still present: see the next section),
//! so the reuse never names a key that is not there. With `N = 1` every step selects
//! afresh.
//!
//! The reuse state lives per sequence id, so a sequence keeps its phase when the batch's
//! order or other members change; [`AdaptiveDecode::forget`] drops a finished sequence's.
//! The merge of step 4's bits for reused sequences runs on the host in this emulated driver
//! (a CUDA driver needs a small kernel for it: `bits = R | F(p) | J(p)` per row).
//!
//! # Rings are refused
//!
//! An adaptive selection must never pick an evicted block. A ring layer
//! ([`LayerCapacity::Windowed`]) evicts old pages, whose blocks the scoring kernel scores
//! `-inf` but which `top_k` (or the `min_k` clamp) would still pick when too few resident
//! blocks remain, and a reused selection could name a block evicted since. Ring layers are
//! therefore refused (`Error::Unsupported`) before anything is appended; a windowed layer that
//! wants content selection keeps its pages ([`LayerCapacity::Full`]) and forces its local
//! blocks instead.

use std::collections::HashMap;

use super::device::{DeviceSelect, ScoreLayout, SelectCapacity};
use super::params::{BlockSelect, Score};
use super::plan::{AdaptivePlan, SelectionLayout};
use super::scoring::{score_emulated_at, ScoreExtents, SummaryIndex, SummaryInput};
use super::select::Grouping;
use crate::attention::{Element, EmuRun, StepKv};
use crate::error::{Error, Result};
use crate::ffi::SA_SCORE_CHANNELS;
use crate::kv_cache::{HostKvStorage, KvCache, LayerCapacity, Placement, SeqId};
use crate::pattern::Component;
use crate::shape::{AttnOptions, AttnProblem, SeqLens};

/// Deliberately broken drivers, which the tests must catch (never for use).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeCanary {
    /// The production driver.
    #[default]
    None,
    /// A reused selection is applied as it was made: the forced blocks are not re-applied at
    /// the current position and the blocks begun since are not added.
    NoReforce,
    /// The appends leave the summaries as they were (scores read stale summaries).
    StaleSummaries,
}

/// What one [`AdaptiveDecode::step_emulated`] gives back.
#[derive(Clone, Debug)]
pub struct DecodeStep<T> {
    /// The step's lengths: sequence `b` has 1 query row over its `p_b + 1` keys.
    pub seqs: SeqLens,
    /// Output, `[batch, num_heads, head_dim]`.
    pub out: Vec<T>,
    /// Row LSE, `[num_heads, batch]`.
    pub lse: Vec<f32>,
    /// The selection bits the forward pass applied ([`SelectionLayout`]; read them with
    /// [`AdaptivePlan::allowed_by_bits`]).
    pub bits: Vec<i32>,
    /// Per sequence: whether this step selected afresh (else it reused a selection).
    pub reselected: Vec<bool>,
    /// The selection kernel's own bits of this step (the layout of `bits`; rows of reusing
    /// sequences are those the kernel wrote, but not applied), or `None` when no sequence
    /// selected.
    pub selected: Option<Vec<i32>>,
}

/// The reuse state of one sequence.
#[derive(Clone, Debug)]
struct Reuse {
    /// Steps the current selection has served (1 on the step that made it).
    served: i64,
    /// `S(p0) \ F(p0)` per unit: `[units, words]`.
    chosen: Vec<i32>,
    /// `S(p0)` per unit (for the canary only).
    selected: Vec<i32>,
    /// `J(p0)`: the block of the row the selection was made for.
    block0: i64,
}

/// The decode driver of one adaptive layer: see the [module documentation](self) (the four
/// launches of a step, the `reselect_every` rule, rings refused).
#[derive(Clone, Debug)]
pub struct AdaptiveDecode {
    plan: AdaptivePlan,
    select: DeviceSelect,
    extents: ScoreExtents,
    reuse: HashMap<SeqId, Reuse>,
    canary: DecodeCanary,
}

impl AdaptiveDecode {
    /// A driver for decode steps of `sel` over the maxima of `problem`: its batch, at most one
    /// query row per sequence and at most its longest key length (`problem`'s lengths are
    /// maxima, as for [`AdaptivePlan::new`]); `opts` as for any plan (scale, softcap, sink
    /// logits, ALiBi; a decode row sees every key `j <= p`, so `causal` changes nothing).
    ///
    /// Errors, before anything runs: more than one query row in `problem`, or a head_dim the
    /// scoring kernel does not take (a multiple of 16 up to 512; `Error::Shape` /
    /// `Error::Unsupported`); `score: given` (`Error::Unsupported`: this driver scores each
    /// step itself); and those of [`AdaptivePlan::new`] and [`DeviceSelect::new`].
    pub fn new(problem: &AttnProblem, sel: &BlockSelect, opts: &AttnOptions) -> Result<Self> {
        Self::with_union(problem, sel, &[], opts)
    }

    /// A driver for `sel` joined to the static components `statics` (a token window, sink
    /// tokens: what [`AdaptivePlan::with_union`] takes), otherwise as [`AdaptiveDecode::new`].
    /// The selection is made and reused exactly as without them; each step's tile lists and
    /// token mask add the components' keys.
    pub fn with_union(
        problem: &AttnProblem,
        sel: &BlockSelect,
        statics: &[Component],
        opts: &AttnOptions,
    ) -> Result<Self> {
        problem.seqs().validate()?;
        let (max_q, _) = problem.seqs().max_lens();
        if max_q > 1 {
            return Err(Error::Shape(format!(
                "adaptive decode: one query row per sequence and step (the problem has {max_q})"
            )));
        }
        if sel.score() == Score::Given {
            return Err(Error::Unsupported(
                "adaptive decode scores each step itself: score \"given\" has no per-step \
                 scores here (select from them with adaptive::device)"
                    .into(),
            ));
        }
        let d = problem.head_dim().get() as usize;
        if d % SA_SCORE_CHANNELS as usize != 0 || d > 512 {
            return Err(Error::Unsupported(format!(
                "adaptive decode: head_dim {d} (the scoring kernel takes a multiple of \
                 {SA_SCORE_CHANNELS} up to 512)"
            )));
        }
        let plan = AdaptivePlan::with_union(problem, sel, statics, Grouping::Decode, opts)?;
        let l = *plan.layout();
        let cap = SelectCapacity {
            max_groups: l.max_groups,
            max_blocks: l.max_blocks,
        };
        let select = DeviceSelect::new(
            sel,
            Grouping::Decode,
            l.batch,
            problem.num_heads(),
            problem.num_kv_heads(),
            cap,
            ScoreLayout::contiguous(problem.num_heads(), &cap),
        )?;
        if select.bits_len() != l.bits_len() || select.units() != l.units {
            return Err(Error::Shape(format!(
                "adaptive decode: selection bits of {} words for a plan of {}",
                select.bits_len(),
                l.bits_len()
            )));
        }
        Ok(AdaptiveDecode {
            plan,
            select,
            extents: ScoreExtents {
                max_groups: l.max_groups,
                max_blocks: l.max_blocks,
            },
            reuse: HashMap::new(),
            canary: DecodeCanary::None,
        })
    }

    /// The same driver, deliberately broken (the canaries of the tests).
    #[doc(hidden)]
    pub fn with_canary(mut self, canary: DecodeCanary) -> Self {
        self.canary = canary;
        self
    }

    /// The one forward plan every step runs.
    pub fn plan(&self) -> &AdaptivePlan {
        &self.plan
    }

    /// The selection component.
    pub fn component(&self) -> &BlockSelect {
        self.plan.component()
    }

    /// The sizes of the selection bits.
    pub fn layout(&self) -> &SelectionLayout {
        self.plan.layout()
    }

    /// Drops the reuse state of `seq` (a finished sequence); its next step, if any, selects
    /// afresh.
    pub fn forget(&mut self, seq: SeqId) {
        self.reuse.remove(&seq);
    }

    /// One decode step of `layer` on the emulator: for the sequences `seqs` (the plan's batch,
    /// distinct), appends the new K/V rows (`k_new`, `v_new`: `[batch, num_kv_heads,
    /// head_dim]`) to `cache` and `store` with the append kernel, scores and selects for the
    /// query rows `q` (`[batch, num_heads, head_dim]`, one row per sequence at its new
    /// position) unless every sequence reuses its selection (`reselect_every`, module
    /// documentation), and runs the plan's forward pass over the cache under the bits.
    ///
    /// Errors, before anything is appended (the cache and the storage are then unchanged):
    /// a layer whose pages are a ring (`Error::Unsupported`, module documentation) or that
    /// has no KV or no summaries (`Error::Cache`), summaries or pages of another shape than
    /// the plan's or whose granularity does not divide `B`, tensors of the wrong length or
    /// type, a batch of another size or with a repeated sequence, a sequence that would
    /// outgrow the plan's longest key length (`Error::Shape`); an unknown sequence or an
    /// exhausted pool (`Error::Cache`). A launch that fails after the append (an emulator
    /// fault) leaves the tokens appended.
    #[allow(clippy::too_many_arguments)]
    pub fn step_emulated<T: Element>(
        &mut self,
        cache: &mut KvCache,
        store: &mut HostKvStorage<T>,
        layer: usize,
        seqs: &[SeqId],
        q: &[T],
        k_new: &[T],
        v_new: &[T],
        run: &EmuRun,
    ) -> Result<DecodeStep<T>> {
        self.check_step(cache, store, layer, seqs, q, k_new, v_new)?;
        // Append: reserve every sequence's position (all or nothing over the batch), then
        // one append launch for the batch.
        let before = cache.clone();
        let appended = (|| -> Result<Vec<Placement>> {
            let placements = seqs
                .iter()
                .map(|&s| cache.reserve_append(s, 1))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&Placement> = placements.iter().collect();
            store.append_emulated_keeping(
                layer,
                &refs,
                k_new,
                v_new,
                self.canary != DecodeCanary::StaleSummaries,
            )?;
            Ok(placements)
        })();
        if let Err(e) = appended {
            *cache = before;
            return Err(e);
        }
        let table = cache.block_table(layer, seqs)?;
        let lens: Vec<(usize, usize)> = table.kv_lens.iter().map(|&n| (1, n as usize)).collect();
        let step = SeqLens::varlen_from_lens(&lens)?;
        let problem = {
            let p = self.plan.attn().problem();
            AttnProblem::new(
                step.clone(),
                p.num_heads(),
                p.num_kv_heads(),
                p.head_dim().get(),
                p.dtype(),
            )?
        };
        let every = self.component().reselect_every();
        let reselected: Vec<bool> = seqs
            .iter()
            .map(|s| self.reuse.get(s).map_or(true, |r| r.served >= every))
            .collect();

        // Score and select (skipped when every sequence reuses its selection).
        let selected = if reselected.iter().any(|&f| f) {
            let (summ, pool) = store.summaries(layer).ok_or_else(no_summaries)?;
            let scores = score_emulated_at(
                &problem,
                self.component(),
                Grouping::Decode,
                self.plan.attn().scale(),
                q,
                SummaryInput {
                    layout: summ,
                    pool,
                    index: SummaryIndex::Paged {
                        table: &table,
                        num_pages: cache.num_pages(layer)?,
                    },
                },
                self.extents,
            )?;
            let mut bits = vec![0i32; self.select.bits_len()];
            self.select
                .run_emulated(&step, &scores.data, &mut bits, None, &run.options())?;
            Some(bits)
        } else {
            None
        };

        // The applied bits: fresh rows as selected, reused rows re-forced at the position.
        let l = *self.layout();
        let mut bits = vec![0i32; l.bits_len()];
        for (b, &seq) in seqs.iter().enumerate() {
            let p = lens[b].1 as i64 - 1;
            let block0 = match self.reuse.get(&seq) {
                Some(r) if !reselected[b] => r.block0,
                _ => p.div_euclid(self.component().block()),
            };
            let fixed = self.fixed_blocks(p, lens[b].1, block0);
            let rows = |bits: &[i32]| -> Vec<i32> {
                (0..l.units)
                    .flat_map(|u| bits[l.row_offset(b, u, 0)..][..l.words].to_vec())
                    .collect()
            };
            let applied: Vec<i32> = if reselected[b] {
                let fresh = rows(selected.as_deref().expect("a sequence reselected"));
                let chosen = fresh
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| w & !fixed.forced[i % l.words])
                    .collect();
                self.reuse.insert(
                    seq,
                    Reuse {
                        served: 1,
                        chosen,
                        selected: fresh.clone(),
                        block0,
                    },
                );
                fresh
            } else {
                let r = self
                    .reuse
                    .get_mut(&seq)
                    .expect("a reusing sequence has state");
                r.served += 1;
                if self.canary == DecodeCanary::NoReforce {
                    r.selected.clone()
                } else {
                    r.chosen
                        .iter()
                        .enumerate()
                        .map(|(i, &w)| w | fixed.forced[i % l.words] | fixed.new[i % l.words])
                        .collect()
                }
            };
            for u in 0..l.units {
                bits[l.row_offset(b, u, 0)..][..l.words]
                    .copy_from_slice(&applied[u * l.words..][..l.words]);
            }
        }

        let paged = store.paged_kv(layer, &table)?;
        let (out, lse) =
            self.plan
                .run_emulated_with_bits(&step, q, StepKv::Paged(&paged), &bits, run)?;
        Ok(DecodeStep {
            seqs: step,
            out,
            lse,
            bits,
            reselected,
            selected,
        })
    }

    /// The forced blocks `F(p)` of a row at position `p` over `kv_len` keys and the blocks
    /// begun after block `block0` up to the row's own, as words of a selection row.
    fn fixed_blocks(&self, p: i64, kv_len: usize, block0: i64) -> Fixed {
        let words = self.layout().words;
        let sel = self.component();
        let mut f = Fixed {
            forced: vec![0; words],
            new: vec![0; words],
        };
        let set = |row: &mut [i32], j: i64| row[j as usize / 32] |= (1u32 << (j % 32)) as i32;
        for j in sel.forced(p, kv_len) {
            set(&mut f.forced, j);
        }
        for j in block0 + 1..=p.div_euclid(sel.block()) {
            set(&mut f.new, j);
        }
        f
    }

    /// Everything [`AdaptiveDecode::step_emulated`] checks before it appends.
    #[allow(clippy::too_many_arguments)]
    fn check_step<T: Element>(
        &self,
        cache: &KvCache,
        store: &HostKvStorage<T>,
        layer: usize,
        seqs: &[SeqId],
        q: &[T],
        k_new: &[T],
        v_new: &[T],
    ) -> Result<()> {
        let p = self.plan.attn().problem();
        let (h, hk, d) = (p.num_heads(), p.num_kv_heads(), p.head_dim().get() as usize);
        let batch = self.layout().batch;
        let (_, max_kv) = p.seqs().max_lens();
        match cache.capacity(layer)? {
            LayerCapacity::Windowed { .. } => {
                return Err(Error::Unsupported(format!(
                    "adaptive decode: layer {layer} keeps a ring of pages, and a selection \
                     must never pick an evicted block (keep the layer's pages, force local \
                     blocks instead)"
                )))
            }
            LayerCapacity::NoKv => {
                return Err(Error::Cache(format!(
                    "adaptive decode: layer {layer} keeps no KV cache"
                )))
            }
            LayerCapacity::Full => {}
        }
        if T::DTYPE != p.dtype() || cache.config().dtype != p.dtype() {
            return Err(Error::Shape(format!(
                "adaptive decode: {} tensors and a {} cache for a {} plan",
                T::DTYPE.name(),
                cache.config().dtype.name(),
                p.dtype().name()
            )));
        }
        let page = cache.layout(layer)?;
        if page.num_kv_heads != hk || page.head_dim != d || store.layout(layer)? != page {
            return Err(Error::Shape(format!(
                "adaptive decode: layer {layer}'s pages ({} kv heads x {}) or storage do not \
                 match the plan's {hk} x {d}",
                page.num_kv_heads, page.head_dim
            )));
        }
        let (summ, pool) = store.summaries(layer).ok_or_else(no_summaries)?;
        let block = self.component().block() as usize;
        if cache.summary_layout(layer)?.as_ref() != Some(summ)
            || block % summ.block != 0
            || pool.len() != cache.num_pages(layer)? * summ.page_stride()
        {
            return Err(Error::Shape(format!(
                "adaptive decode: the storage's summaries ({summ:?}) are not the cache's, or \
                 their blocks do not divide B = {block}"
            )));
        }
        if seqs.len() != batch {
            return Err(Error::Shape(format!(
                "adaptive decode: {} sequences for a plan of batch {batch}",
                seqs.len()
            )));
        }
        for (b, s) in seqs.iter().enumerate() {
            if seqs[..b].contains(s) {
                return Err(Error::Shape(format!(
                    "adaptive decode: sequence {} appears twice in the batch",
                    s.0
                )));
            }
            let len = cache.seq_len(*s)?;
            if len + 1 > max_kv {
                return Err(Error::Shape(format!(
                    "adaptive decode: sequence {} would hold {} keys, the plan at most {max_kv}",
                    s.0,
                    len + 1
                )));
            }
        }
        for (name, got, want) in [
            ("q", q.len(), batch * h * d),
            ("k_new", k_new.len(), batch * hk * d),
            ("v_new", v_new.len(), batch * hk * d),
        ] {
            if got != want {
                return Err(Error::Shape(format!(
                    "adaptive decode: {name} has {got} elements, a step needs {want}"
                )));
            }
        }
        Ok(())
    }
}

/// The forced words of one row and those of the blocks begun since its selection.
struct Fixed {
    forced: Vec<i32>,
    new: Vec<i32>,
}

fn no_summaries() -> Error {
    Error::Cache(
        "adaptive decode: the cache keeps no block summaries (KvCache::with_summaries)".into(),
    )
}
