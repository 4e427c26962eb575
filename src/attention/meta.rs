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
/// programs, concatenated over the batch (varlen sequences each get their own rows), as flat
/// `i32` arrays ready to upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanMeta {
    /// The compilations (one for a uniform batch, one per sequence for varlen) and the one of
    /// each sequence, for host-side questions (which keys a launch reads).
    metas: Vec<BlockSparseMeta>,
    seq_meta: Vec<usize>,
    head_set: Vec<i32>,
    /// First CSR row of each (sequence, row set) program, `[programs + 1]`.
    set_row_ptr: Vec<i32>,
    seq_program_base: Vec<i32>,
    full_row_ptr: Vec<i32>,
    full_tiles: Vec<i32>,
    partial_row_ptr: Vec<i32>,
    partial_tiles: Vec<i32>,
    /// `MaskProgram`s as raw words (4 per program).
    programs: Vec<i32>,
    /// `MaskComponent`s as raw words (16 per component).
    components: Vec<i32>,
    data: Vec<i32>,
    /// `TileView`s as raw words (10 per view).
    views: Vec<i32>,
    view_data: Vec<i32>,
    tiles_visited: u64,
    /// Most query tiles of any (sequence, row set): the grid's x extent.
    max_tiles: usize,
    /// Longest tile walk of any (head set, query tile) row.
    max_row_tiles: usize,
}

const PROGRAM_WORDS: usize = std::mem::size_of::<MaskProgram>() / 4;
const COMPONENT_WORDS: usize = std::mem::size_of::<MaskComponent>() / 4;
const VIEW_WORDS: usize = std::mem::size_of::<TileView>() / 4;

impl PlanMeta {
    /// Number of arrays in [`PlanMeta::arrays`].
    pub const NUM_ARRAYS: usize = 12;

    /// Compiles `patterns` for every sequence of `problem` with the forward kernel's tiles.
    /// `gqa_pack` > 1 compiles for GQA-packed blocks (see [`super::AttnPlan::gqa_pack`]): query tiles
    /// of `block_m / gqa_pack` tokens, and work counted per kv group.
    pub fn compile(
        problem: &AttnProblem,
        patterns: &HeadPatterns,
        tiles: &FwdTiles,
        gqa_pack: u32,
    ) -> Result<Self> {
        let batch = problem.seqs.batch();
        let shape_of = |q_len: usize, kv_len: usize| SparseShape {
            num_heads: problem.num_heads,
            q_len,
            kv_len,
            block_m: (tiles.block_m / gqa_pack.max(1)) as usize,
            block_n: tiles.block_n as usize,
        };
        // Uniform batches share one compilation; varlen sequences each get their own.
        let metas: Vec<BlockSparseMeta> = match &problem.seqs {
            SeqLens::Uniform { q_len, kv_len, .. } => {
                vec![BlockSparseMeta::compile(
                    patterns,
                    shape_of(*q_len, *kv_len),
                )?]
            }
            SeqLens::Varlen { .. } => (0..batch)
                .map(|b| {
                    let (q, k) = problem.seqs.lens(b);
                    BlockSparseMeta::compile(patterns, shape_of(q, k))
                })
                .collect::<Result<_>>()?,
        };
        let mut m = PlanMeta {
            metas: Vec::new(),
            seq_meta: Vec::with_capacity(batch),
            head_set: metas[0].head_set().to_vec(),
            set_row_ptr: vec![0],
            seq_program_base: Vec::with_capacity(batch),
            full_row_ptr: vec![0],
            full_tiles: Vec::new(),
            partial_row_ptr: vec![0],
            partial_tiles: Vec::new(),
            programs: Vec::new(),
            components: Vec::new(),
            data: Vec::new(),
            views: Vec::new(),
            view_data: Vec::new(),
            tiles_visited: 0,
            max_tiles: 0,
            max_row_tiles: 0,
        };
        let to_i32 = |x: usize, what: &str| {
            i32::try_from(x)
                .map_err(|_| Error::Shape(format!("block-sparse metadata: {what} exceeds i32")))
        };
        for meta in &metas {
            if meta.head_set() != m.head_set.as_slice() {
                return Err(Error::Pattern(
                    "head sharing differs between sequences".into(),
                ));
            }
            // A uniform batch shares one compilation: every sequence visits its tiles.
            let copies = match &problem.seqs {
                SeqLens::Uniform { .. } => batch as u64,
                SeqLens::Varlen { .. } => 1,
            };
            // Packed blocks serve gqa_pack heads (with identical rows) at once.
            m.tiles_visited += meta.tiles_visited() as u64 * copies / gqa_pack.max(1) as u64;
            let row_base = to_i32(m.full_row_ptr.len() - 1, "row count")?;
            for &r in &meta.set_row_ptr()[1..] {
                m.set_row_ptr.push(row_base + r);
            }
            m.max_tiles = m.max_tiles.max(meta.max_tiles());
            let view_base = to_i32(m.view_data.len(), "view data")?;
            for v in meta.views() {
                let v = TileView {
                    row_list: v.row_list + view_base,
                    gather_list: v.gather_list + view_base,
                    ..*v
                };
                m.views.extend_from_slice(&view_words(&v));
            }
            m.view_data.extend_from_slice(meta.view_data());
            let program_base = to_i32(m.programs.len() / PROGRAM_WORDS, "program count")?;
            for (ptr, tiles, src_ptr, src_tiles) in [
                (
                    &mut m.full_row_ptr,
                    &mut m.full_tiles,
                    meta.full_row_ptr(),
                    meta.full_tiles(),
                ),
                (
                    &mut m.partial_row_ptr,
                    &mut m.partial_tiles,
                    meta.partial_row_ptr(),
                    meta.partial_tiles(),
                ),
            ] {
                let base = to_i32(tiles.len(), "tile list")?;
                for &r in &src_ptr[1..] {
                    ptr.push(
                        base.checked_add(r).ok_or_else(|| {
                            Error::Shape("block-sparse metadata exceeds i32".into())
                        })?,
                    );
                }
                tiles.extend_from_slice(src_tiles);
            }
            let comp_base = to_i32(m.components.len() / COMPONENT_WORDS, "component count")?;
            let data_base = to_i32(m.data.len(), "mask data")?;
            let mask = meta.mask();
            for prog in mask.programs() {
                let p = MaskProgram {
                    first_component: prog.first_component + comp_base,
                    ..*prog
                };
                m.programs.extend_from_slice(&[
                    p.causal,
                    p.first_component,
                    p.num_components,
                    p._reserved,
                ]);
            }
            for c in mask.components() {
                let c = MaskComponent {
                    data_offset: c.data_offset + data_base,
                    ..*c
                };
                m.components.extend_from_slice(&component_words(&c));
            }
            m.data.extend_from_slice(mask.data());
            let rows = meta.full_row_ptr().len() - 1;
            m.max_row_tiles = (0..rows)
                .map(|r| {
                    (meta.full_row_ptr()[r + 1] - meta.full_row_ptr()[r]
                        + meta.partial_row_ptr()[r + 1]
                        - meta.partial_row_ptr()[r]) as usize
                })
                .fold(m.max_row_tiles, usize::max);
            for _ in 0..copies {
                m.seq_program_base.push(program_base);
                m.seq_meta.push(m.metas.len());
            }
        }
        m.metas = metas;
        Ok(m)
    }

    /// The arrays to upload, in the order of [`MetaAddrs`]: head_set, set_row_ptr,
    /// seq_program_base, full_row_ptr, full_tiles, partial_row_ptr, partial_tiles,
    /// mask_programs, mask_components, mask_data, tile_views, view_data. None is empty (an unused slot holds one 0),
    /// so every backend can allocate them.
    pub fn arrays(&self) -> [(&'static str, std::borrow::Cow<'_, [i32]>); Self::NUM_ARRAYS] {
        use std::borrow::Cow;
        fn nz(v: &[i32]) -> Cow<'_, [i32]> {
            if v.is_empty() {
                Cow::Owned(vec![0])
            } else {
                Cow::Borrowed(v)
            }
        }
        [
            ("head_set", nz(&self.head_set)),
            ("set_row_ptr", nz(&self.set_row_ptr)),
            ("seq_program_base", nz(&self.seq_program_base)),
            ("full_row_ptr", nz(&self.full_row_ptr)),
            ("full_tiles", nz(&self.full_tiles)),
            ("partial_row_ptr", nz(&self.partial_row_ptr)),
            ("partial_tiles", nz(&self.partial_tiles)),
            ("mask_programs", nz(&self.programs)),
            ("mask_components", nz(&self.components)),
            ("mask_data", nz(&self.data)),
            ("tile_views", nz(&self.views)),
            ("view_data", nz(&self.view_data)),
        ]
    }

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
fn component_words(c: &MaskComponent) -> [i32; COMPONENT_WORDS] {
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
