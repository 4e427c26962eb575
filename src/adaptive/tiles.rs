//! An adaptive call's selection and tile lists without its forward launch: what
//! [`AdaptivePlan::run_emulated`] would apply, for pictures (the CLI's `viz`) and tests.
//!
//! [`AdaptivePlan::select_emulated`] runs the device selection of one call (summaries,
//! scoring, selection kernels; or the selection from the caller's `given` scores) and
//! returns the selection bits; [`AdaptivePlan::tiles_emulated`] runs the compaction kernel
//! (`kernels/adaptive_lists.cu`) on bits and reads back the full and partial kv tile lists of
//! every CSR row, the walk the forward kernel would make. Together they cost the scoring (for
//! `mean_k`, 1/B of QKᵀ), not the attention.

use super::params::Share;
use super::plan::{AdaptivePlan, SelectionLayout};
use super::select::GivenScores;
use crate::attention::EmuRun;
use crate::emu::GuardedBuffer;
use crate::error::Result;
use crate::shape::SeqLens;
use crate::Element;

/// Indices of the arrays the compaction writes, in the order of
/// [`crate::attention::PlanMeta::arrays`].
const FULL_TILES: usize = 4;
const PARTIAL_TILES: usize = 6;
const MASK_DATA: usize = 9;
const FULL_ROW_END: usize = 12;
const PARTIAL_ROW_END: usize = 13;

/// The full and partial kv tile lists of one call as the compaction kernel wrote them
/// ([`AdaptivePlan::tiles_emulated`]): per sequence, query head and query tile of the
/// forward kernel's `block_m` rows (counted from the call's first row), the kv tiles of
/// `block_n` keys the forward kernel walks, ascending. A *full* tile needs no token mask (every
/// row may see every key of it); a *partial* one is walked under the token mask; any other
/// tile is skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdaptiveTiles {
    layout: SelectionLayout,
    /// Query heads per selection unit (1, or the kv group size under `share: kv_group`).
    heads_per_unit: usize,
    block_m: usize,
    block_n: usize,
    /// `[rows, cap]`, row `r` holding its lists from `r * cap` to its end.
    full: Vec<i32>,
    partial: Vec<i32>,
    full_end: Vec<i32>,
    partial_end: Vec<i32>,
}

impl AdaptiveTiles {
    /// Query rows per tile (the forward kernel's).
    pub fn block_m(&self) -> usize {
        self.block_m
    }

    /// Keys per tile.
    pub fn block_n(&self) -> usize {
        self.block_n
    }

    /// Query tiles per (sequence, unit) row set: those of the plan's longest query; a shorter
    /// call's later tiles have empty lists.
    pub fn q_tiles(&self) -> usize {
        self.layout.q_tiles
    }

    /// The full kv tiles of query tile `m` of sequence `b`, query head `h` (empty out of
    /// range).
    pub fn full(&self, b: usize, h: usize, m: usize) -> &[i32] {
        self.list(&self.full, &self.full_end, b, h, m)
    }

    /// The partial kv tiles of query tile `m` of sequence `b`, query head `h` (empty out of
    /// range).
    pub fn partial(&self, b: usize, h: usize, m: usize) -> &[i32] {
        self.list(&self.partial, &self.partial_end, b, h, m)
    }

    fn list<'a>(&self, tiles: &'a [i32], ends: &[i32], b: usize, h: usize, m: usize) -> &'a [i32] {
        let l = &self.layout;
        let u = h / self.heads_per_unit;
        if b >= l.batch || u >= l.units || m >= l.q_tiles {
            return &[];
        }
        let row = (b * l.units + u) * l.q_tiles + m;
        let base = row * l.cap;
        // The kernel writes ends within the row's capacity; clamped all the same, so a
        // broken kernel shows as wrong lists, never as an out-of-range slice.
        let end = usize::try_from(ends[row]).unwrap_or(base);
        &tiles[base..end.clamp(base, base + l.cap)]
    }
}

impl AdaptivePlan {
    /// The selection bits one call at the lengths `seqs` would apply, made on the device
    /// (emulator) as [`AdaptivePlan::run_emulated`] makes them (key block summaries, the
    /// scoring kernel or the caller's `given` scores, the selection kernel), without the
    /// compaction or the forward launch. q and k are packed varlen tensors of the call.
    /// [`AdaptivePlan::allowed_by_bits`] reads the result, [`AdaptivePlan::tiles_emulated`]
    /// compacts it. Errors: lengths beyond the plan's maxima or batch, an element type other
    /// than the plan's, q or k of the wrong size (`Error::Shape`), given scores missing,
    /// superfluous or malformed.
    pub fn select_emulated<T: Element>(
        &self,
        seqs: &SeqLens,
        q: &[T],
        k: &[T],
        given: Option<GivenScores<'_>>,
        run: &EmuRun,
    ) -> Result<Vec<i32>> {
        self.attn().check_step::<T>(seqs)?;
        self.select_bits(seqs, q, k, given, run)
    }

    /// The tile lists the compaction kernel writes for one call at the lengths `seqs` under
    /// the selection `bits` (of [`SelectionLayout::bits_len`] words), on the emulator,
    /// without the forward launch: exactly the lists [`AdaptivePlan::run_emulated_with_bits`]
    /// hands to the forward kernel. Errors: lengths beyond the plan's maxima or batch, bits
    /// of the wrong size (`Error::Shape`).
    pub fn tiles_emulated(
        &self,
        seqs: &SeqLens,
        bits: &[i32],
        run: &EmuRun,
    ) -> Result<AdaptiveTiles> {
        self.attn().check_step_lens(seqs)?;
        let l = *self.layout();
        self.check_bits(bits)?;
        let mut meta = self.attn().meta().upload_emulated()?;
        meta.array_mut(MASK_DATA)[..bits.len()].copy_from_slice(bits);
        let (cu_q, cu_k) = seqs.cu_seqlens();
        let cqb = GuardedBuffer::from_slice(&cu_q, "cu_seqlens_q")?;
        let ckb = GuardedBuffer::from_slice(&cu_k, "cu_seqlens_k")?;
        // SAFETY: the params name the uploaded metadata of this plan (every array at the
        // capacity the plan gave it) and the call's cu_seqlens (batch + 1 entries, the
        // lengths checked against the plan's maxima); the kernel writes only inside them.
        unsafe {
            self.lists_launch(&meta.addrs(), cqb.as_ptr() as u64, ckb.as_ptr() as u64)
                .run_emulated(&run.options())?;
        }
        let rows = l.batch * l.units * l.q_tiles;
        let take = |i: usize, n: usize| meta.array(i)[..n].to_vec();
        let tiles = self.attn().tiles();
        Ok(AdaptiveTiles {
            layout: l,
            heads_per_unit: match self.component().share() {
                Share::Head => 1,
                Share::KvGroup => self.attn().problem().group_size(),
            },
            block_m: tiles.block_m as usize,
            block_n: tiles.block_n as usize,
            full: take(FULL_TILES, rows * l.cap),
            partial: take(PARTIAL_TILES, rows * l.cap),
            full_end: take(FULL_ROW_END, rows),
            partial_end: take(PARTIAL_ROW_END, rows),
        })
    }
}
