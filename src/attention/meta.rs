//! A plan's block-sparse metadata: compiled once per plan for every sequence of the batch,
//! flattened into `i32` arrays in the order the kernel's params name them.

use super::{AttnProblem, FwdTiles, HeadPatterns, Result, SeqLens};
use crate::emu::GuardedBuffer;
use crate::error::Error;
use crate::pattern::{BlockSparseMeta, MaskComponent, MaskProgram, SparseShape, TileView};

/// Device addresses of a plan's metadata arrays, in the order of [`PlanMeta::arrays`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MetaAddrs(pub [u64; PlanMeta::NUM_ARRAYS]);

/// The block-sparse metadata of a plan, compiled on the host once: per-sequence CSR lists of
/// full and partial kv tiles (dense and causal included), tile views and the partial-tile mask
/// programs (one compilation for a uniform batch, one per sequence for varlen).
/// [`PlanMeta::arrays`] concatenates them over the batch into the flat `i32` arrays the kernel
/// reads, when they are uploaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanMeta {
    metas: Vec<BlockSparseMeta>,
    /// The compilation of each sequence.
    seq_meta: Vec<usize>,
    tiles_visited: u64,
    /// Most query tiles of any (sequence, row set): the grid's x extent.
    max_tiles: usize,
    /// Longest tile walk of any (head set, query tile) row.
    max_row_tiles: usize,
    /// Arrays given whole ([`PlanMeta::device`]): the metadata of a plan whose lists, views
    /// and mask tables are written on the device for each call.
    device: Option<Box<[Vec<i32>; PlanMeta::NUM_ARRAYS]>>,
}

const PROGRAM_WORDS: usize = std::mem::size_of::<MaskProgram>() / 4;
const COMPONENT_WORDS: usize = std::mem::size_of::<MaskComponent>() / 4;
const VIEW_WORDS: usize = std::mem::size_of::<TileView>() / 4;

impl PlanMeta {
    /// Number of arrays in [`PlanMeta::arrays`].
    pub const NUM_ARRAYS: usize = 14;

    /// Compiles `patterns` for every sequence of `problem` with the forward kernel's tiles.
    /// `gqa_pack` > 1 compiles for GQA-packed blocks (see [`super::AttnPlan::gqa_pack`]): query tiles
    /// of `block_m / gqa_pack` tokens, and work counted per kv group.
    pub fn compile(
        problem: &AttnProblem,
        patterns: &HeadPatterns,
        tiles: &FwdTiles,
        gqa_pack: u32,
    ) -> Result<Self> {
        let batch = problem.seqs().batch();
        let shape_of = |q_len: usize, kv_len: usize| SparseShape {
            num_heads: problem.num_heads(),
            q_len,
            kv_len,
            block_m: (tiles.block_m / gqa_pack.max(1)) as usize,
            block_n: tiles.block_n as usize,
        };
        // Uniform batches share one compilation; varlen sequences each get their own.
        let (metas, seq_meta, copies): (Vec<BlockSparseMeta>, Vec<usize>, u64) =
            match &problem.seqs() {
                SeqLens::Uniform { q_len, kv_len, .. } => (
                    vec![BlockSparseMeta::compile(
                        patterns,
                        shape_of(*q_len, *kv_len),
                    )?],
                    vec![0; batch],
                    batch as u64,
                ),
                SeqLens::Varlen { .. } => (
                    (0..batch)
                        .map(|b| {
                            let (q, k) = problem.seqs().lens(b);
                            BlockSparseMeta::compile(patterns, shape_of(q, k))
                        })
                        .collect::<Result<_>>()?,
                    (0..batch).collect(),
                    1,
                ),
            };
        if metas.iter().any(|m| m.head_set() != metas[0].head_set()) {
            return Err(Error::Pattern(
                "head sharing differs between sequences".into(),
            ));
        }
        // The concatenated arrays index each other with i32: check their sizes here, once.
        let total = |f: &dyn Fn(&BlockSparseMeta) -> usize| metas.iter().map(f).sum::<usize>();
        for (what, n) in [
            ("rows", total(&|m| m.views().len()) + 1),
            (
                "tile lists",
                total(&|m| m.full_tiles().len().max(m.partial_tiles().len())),
            ),
            ("components", total(&|m| m.mask().components().len())),
            ("mask data", total(&|m| m.mask().data().len())),
            ("view data", total(&|m| m.view_data().len())),
        ] {
            if i32::try_from(n).is_err() {
                return Err(Error::Shape(format!(
                    "block-sparse metadata: {what} exceed i32"
                )));
            }
        }
        let max_row_tiles = metas
            .iter()
            .flat_map(|m| {
                let (f, p) = (m.full_row_ptr(), m.partial_row_ptr());
                (0..m.views().len()).map(move |r| (f[r + 1] - f[r] + p[r + 1] - p[r]) as usize)
            })
            .max()
            .unwrap_or(0);
        Ok(PlanMeta {
            // A uniform batch shares one compilation: every sequence visits its tiles. Packed
            // blocks serve gqa_pack heads (with identical rows) at once.
            tiles_visited: metas
                .iter()
                .map(|m| m.tiles_visited() as u64 * copies / gqa_pack.max(1) as u64)
                .sum(),
            max_tiles: metas.iter().map(|m| m.max_tiles()).max().unwrap_or(0),
            max_row_tiles,
            metas,
            seq_meta,
            device: None,
        })
    }

    /// The metadata of a run-time walk ([`super::AttnPlan::for_max_lengths`]): row sets and
    /// mask programs only (no tile lists: the kernels derive the walk from the lengths), one
    /// compilation for the batch, tables drawn for every query position up to `max_kv`. The
    /// grid covers `max_q` query tokens per sequence; tiles visited depend on each step's
    /// lengths (reported as 0 here).
    pub fn compile_runtime(
        problem: &AttnProblem,
        patterns: &HeadPatterns,
        tiles: &FwdTiles,
        gqa_pack: u32,
    ) -> Result<Self> {
        let (max_q, max_kv) = problem.seqs().max_lens();
        let shape = SparseShape {
            num_heads: problem.num_heads(),
            q_len: max_kv,
            kv_len: max_kv,
            block_m: (tiles.block_m / gqa_pack.max(1)) as usize,
            block_n: tiles.block_n as usize,
        };
        let meta = BlockSparseMeta::compile_masks(patterns, shape)?;
        let per_tile = (tiles.block_m / gqa_pack.max(1)) as usize;
        Ok(PlanMeta {
            metas: vec![meta],
            seq_meta: vec![0; problem.seqs().batch()],
            tiles_visited: 0,
            max_tiles: max_q.div_ceil(per_tile),
            max_row_tiles: max_kv.div_ceil(tiles.block_n as usize),
            device: None,
        })
    }

    /// The metadata of a plan whose tile lists, tile views and mask tables are written on the
    /// device for each call ([`crate::kernels::FwdWalk::Device`]; the adaptive plans of
    /// [`crate::adaptive`]): `arrays` in the order of [`PlanMeta::arrays`], at capacity, with
    /// what does not change between calls filled in. `max_tiles` query tiles per (sequence,
    /// set) make the grid; `max_row_tiles` bounds a row's walk.
    pub(crate) fn device(
        arrays: [Vec<i32>; Self::NUM_ARRAYS],
        max_tiles: usize,
        max_row_tiles: usize,
    ) -> Self {
        PlanMeta {
            metas: Vec::new(),
            seq_meta: Vec::new(),
            tiles_visited: 0,
            max_tiles,
            max_row_tiles,
            device: Some(Box::new(arrays)),
        }
    }

    /// The arrays to upload, in the order of [`MetaAddrs`]: head_set, set_row_ptr,
    /// seq_program_base, full_row_ptr, full_tiles, partial_row_ptr, partial_tiles,
    /// mask_programs, mask_components, mask_data, tile_views, view_data, full_row_end,
    /// partial_row_end: the compilations concatenated (offsets rebased), each sequence
    /// pointing at its own through seq_program_base; a row's lists end where the next row's
    /// start (`*_row_end[r] = *_row_ptr[r + 1]`). None is empty (an unused slot holds one 0),
    /// so every backend can allocate them.
    pub fn arrays(&self) -> [(&'static str, Vec<i32>); Self::NUM_ARRAYS] {
        if let Some(arrays) = &self.device {
            return std::array::from_fn(|i| {
                let mut v = arrays[i].clone();
                if v.is_empty() {
                    v.push(0);
                }
                (Self::ARRAY_NAMES[i], v)
            });
        }
        let mut a: [Vec<i32>; Self::NUM_ARRAYS] = Default::default();
        let [head_set, set_row_ptr, seq_program_base, full_row_ptr, full_tiles, partial_row_ptr, partial_tiles, programs, components, data, views, view_data, full_row_end, partial_row_end] =
            &mut a;
        head_set.extend_from_slice(self.metas[0].head_set());
        set_row_ptr.push(0);
        full_row_ptr.push(0);
        partial_row_ptr.push(0);
        let mut program_base = Vec::with_capacity(self.metas.len());
        // Sizes were checked at compile time: every sum below fits i32.
        for meta in &self.metas {
            program_base.push(programs.len() / PROGRAM_WORDS);
            let rows = (full_row_ptr.len() - 1) as i32;
            set_row_ptr.extend(meta.set_row_ptr()[1..].iter().map(|&r| rows + r));
            for (ptr, tiles, src_ptr, src_tiles) in [
                (
                    &mut *full_row_ptr,
                    &mut *full_tiles,
                    meta.full_row_ptr(),
                    meta.full_tiles(),
                ),
                (
                    &mut *partial_row_ptr,
                    &mut *partial_tiles,
                    meta.partial_row_ptr(),
                    meta.partial_tiles(),
                ),
            ] {
                let base = tiles.len() as i32;
                ptr.extend(src_ptr[1..].iter().map(|&r| base + r));
                tiles.extend_from_slice(src_tiles);
            }
            let view_base = view_data.len() as i32;
            for v in meta.views() {
                views.extend_from_slice(&view_words(&TileView {
                    row_list: v.row_list + view_base,
                    gather_list: v.gather_list + view_base,
                    ..*v
                }));
            }
            view_data.extend_from_slice(meta.view_data());
            let comp_base = (components.len() / COMPONENT_WORDS) as i32;
            let data_base = data.len() as i32;
            let mask = meta.mask();
            for prog in mask.programs() {
                programs.extend_from_slice(&[
                    prog.causal,
                    prog.first_component + comp_base,
                    prog.num_components,
                    prog._reserved,
                ]);
            }
            for c in mask.components() {
                components.extend_from_slice(&component_words(&MaskComponent {
                    data_offset: c.data_offset + data_base,
                    ..*c
                }));
            }
            data.extend_from_slice(mask.data());
        }
        seq_program_base.extend(self.seq_meta.iter().map(|&m| program_base[m] as i32));
        full_row_end.extend_from_slice(&full_row_ptr[1..]);
        partial_row_end.extend_from_slice(&partial_row_ptr[1..]);
        std::array::from_fn(|i| {
            let mut v = std::mem::take(&mut a[i]);
            if v.is_empty() {
                v.push(0);
            }
            (Self::ARRAY_NAMES[i], v)
        })
    }

    /// The names of [`PlanMeta::arrays`], in order.
    pub const ARRAY_NAMES: [&'static str; Self::NUM_ARRAYS] = [
        "head_set",
        "set_row_ptr",
        "seq_program_base",
        "full_row_ptr",
        "full_tiles",
        "partial_row_ptr",
        "partial_tiles",
        "mask_programs",
        "mask_components",
        "mask_data",
        "tile_views",
        "view_data",
        "full_row_end",
        "partial_row_end",
    ];

    /// The longest tile walk of any (head set, query tile) row.
    pub(crate) fn max_row_tiles(&self) -> usize {
        self.max_row_tiles
    }

    /// The most query tiles of any (sequence, row set): the launch grid's x extent.
    pub(crate) fn max_tiles(&self) -> usize {
        self.max_tiles
    }

    /// The compiled metadata of sequence `b`.
    pub(crate) fn of_sequence(&self, b: usize) -> &BlockSparseMeta {
        &self.metas[self.seq_meta[b]]
    }

    /// kv tiles the kernel visits over the whole batch and all heads (the work accounting
    /// the kernel's counter must reproduce).
    pub fn tiles_visited(&self) -> u64 {
        self.tiles_visited
    }
}

/// A plan's metadata in guarded emulator memory (see [`PlanMeta::upload_emulated`]).
pub struct EmuMeta {
    bufs: Vec<GuardedBuffer<i32>>,
}

impl EmuMeta {
    /// Addresses to put in [`super::TensorAddrs::meta`]; valid while `self` lives.
    pub fn addrs(&self) -> MetaAddrs {
        let mut a = MetaAddrs::default();
        for (slot, buf) in a.0.iter_mut().zip(&self.bufs) {
            *slot = buf.as_ptr() as u64;
        }
        a
    }

    /// Array `i` (the order of [`PlanMeta::arrays`]) as uploaded, or as a launch left it.
    pub(crate) fn array(&self, i: usize) -> &[i32] {
        self.bufs[i].as_slice()
    }

    /// Array `i`, mutably: where a plan whose metadata is written on the device puts what a
    /// call's kernels would have written (the selection bits of an adaptive call).
    pub(crate) fn array_mut(&mut self, i: usize) -> &mut [i32] {
        self.bufs[i].as_mut_slice()
    }
}

impl PlanMeta {
    /// Copies the metadata into guarded buffers for an emulated launch.
    pub fn upload_emulated(&self) -> Result<EmuMeta> {
        let bufs = self
            .arrays()
            .iter()
            .map(|(name, a)| GuardedBuffer::from_slice(a, name))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EmuMeta { bufs })
    }
}

/// The words of a tile view in C field order (the layout `SaTileView` asserts).
fn view_words(v: &TileView) -> [i32; VIEW_WORDS] {
    [
        v.row_first,
        v.row_step,
        v.row_count,
        v.row_list,
        v.key_first,
        v.key_step,
        v.key_count,
        v.gather_list,
        v.gather_count,
        v._reserved,
    ]
}

/// The words of a mask component in C field order (the layout `SaMaskComponent` asserts).
pub(crate) fn component_words(c: &MaskComponent) -> [i32; COMPONENT_WORDS] {
    [
        c.kind,
        c.window_left,
        c.window_right,
        c.sink_count,
        c.dilation_stride,
        c.block_q,
        c.block_k,
        c.mask_rows,
        c.mask_cols,
        c.bigbird_window_half,
        c.bigbird_global_blocks,
        c.rand_first_q_block,
        c.rand_q_blocks,
        c.data_offset,
        c.data_len,
        c._reserved,
    ]
}
