//! The token predicate a kernel evaluates on *partial* tiles, as plain `#[repr(C)]` data.
//!
//! One [`MaskProgram`] per row set (see [`super::BlockSparseMeta`]) names a slice of
//! [`MaskComponent`]s; a key is allowed when it exists (`0 <= j < kv_len`), passes causality
//! if the program is causal (`j <= p`), and some component admits it. Components that need
//! tables (global tokens, block-mask bits, BigBird's random blocks) point into one shared
//! `int32` array, [`MaskTables::data`]. Every field is `int32`; positions and differences of
//! positions fit because [`super::SparseShape::validate`] bounds `q_len + kv_len` by `2^31 - 1`.
//!
//! These structs are mirrored field for field in `kernels/include/sparse_attn/params.h`
//! (C layout: 4-byte fields, no padding; `MaskProgram` is 16 bytes, `MaskComponent` 64).
//! [`MaskTables::allowed`] is the host twin of the device predicate (`TokenMask::allowed` in
//! `kernels/include/sparse_attn/mask.cuh`), written the way the kernel evaluates it from the
//! flat arrays; the property tests check both (the kernel's through the emulator) against the
//! pattern predicate.

use crate::ffi;

/// Component kinds of [`MaskComponent::kind`]: the `SaMaskKind` tags of `params.h`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskKind {
    /// Every key.
    Dense = ffi::SA_MASK_DENSE as i32,
    /// `-window_left <= j - p <= window_right`.
    Window = ffi::SA_MASK_WINDOW as i32,
    /// `j < sink_count`.
    Sinks = ffi::SA_MASK_SINKS as i32,
    /// `j` or `p` in the sorted token list `data[data_offset .. data_offset + data_len]`.
    Global = ffi::SA_MASK_GLOBAL as i32,
    /// `(p - j) mod dilation_stride == 0` (mathematical mod).
    Dilated = ffi::SA_MASK_DILATED as i32,
    /// Bit `J % 32` of word `data[data_offset + P * ceil(mask_cols / 32) + J / 32]`, with
    /// `P = floor(p / block_q)` in `0..mask_rows` and `J = floor(j / block_k)` in `0..mask_cols`.
    BlockMask = ffi::SA_MASK_BLOCK_MASK as i32,
    /// BigBird with `block_q == block_k == B`: `|P - J| <= bigbird_window_half`, or
    /// `P < bigbird_global_blocks`, or `J < bigbird_global_blocks`, or `J` in the random blocks
    /// of `P` (a CSR table at `data_offset`: `rand_q_blocks + 1` row offsets, then the blocks;
    /// row `P - rand_first_q_block`).
    BigBird = ffi::SA_MASK_BIGBIRD as i32,
    /// `floor(p / block_q) == floor(j / block_q)`: keys of the query's chunk of `block_q`
    /// positions (Llama 4's chunked attention).
    Chunked = ffi::SA_MASK_CHUNKED as i32,
}

impl MaskKind {
    /// Every kind, in tag order.
    pub const ALL: [MaskKind; 8] = [
        MaskKind::Dense,
        MaskKind::Window,
        MaskKind::Sinks,
        MaskKind::Global,
        MaskKind::Dilated,
        MaskKind::BlockMask,
        MaskKind::BigBird,
        MaskKind::Chunked,
    ];

    /// The kind of a raw tag, `None` for an unknown one.
    pub fn from_i32(v: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as i32 == v)
    }
}

/// One pattern component as kernel data: the C struct `SaMaskComponent` of
/// `kernels/include/sparse_attn/params.h` (fields a kind does not use are 0).
pub type MaskComponent = crate::ffi::SaMaskComponent;

/// The predicate of one row set, `components[first_component ..][.. num_components]`: the C
/// struct `SaMaskProgram`.
pub type MaskProgram = crate::ffi::SaMaskProgram;

/// Programs, components and their tables for every row set of a [`super::BlockSparseMeta`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaskTables {
    pub(crate) programs: Vec<MaskProgram>,
    pub(crate) components: Vec<MaskComponent>,
    pub(crate) data: Vec<i32>,
}

impl MaskTables {
    /// One program per row set, indexed by the set.
    pub fn programs(&self) -> &[MaskProgram] {
        &self.programs
    }

    /// All components, program by program.
    pub fn components(&self) -> &[MaskComponent] {
        &self.components
    }

    /// Shared tables (global tokens, block-mask bits, BigBird random blocks).
    pub fn data(&self) -> &[i32] {
        &self.data
    }

    /// The predicate of row set `set` for query position `p` and key `j` of a sequence of
    /// `kv_len` keys, evaluated from the flat arrays exactly as a kernel would. `false` for a
    /// set that does not exist.
    pub fn allowed(&self, set: usize, p: i64, j: i64, kv_len: usize) -> bool {
        let Some(prog) = self.programs.get(set) else {
            return false;
        };
        if j < 0 || j >= kv_len as i64 || (prog.causal != 0 && j > p) {
            return false;
        }
        let first = prog.first_component as usize;
        self.components[first..first + prog.num_components as usize]
            .iter()
            .any(|c| self.admits(c, p, j))
    }

    fn table(&self, c: &MaskComponent) -> &[i32] {
        &self.data[c.data_offset as usize..][..c.data_len as usize]
    }

    fn admits(&self, c: &MaskComponent, p: i64, j: i64) -> bool {
        let Some(kind) = MaskKind::from_i32(c.kind) else {
            return false;
        };
        match kind {
            MaskKind::Dense => true,
            MaskKind::Window => {
                let d = j - p;
                -(c.window_left as i64) <= d && d <= c.window_right as i64
            }
            MaskKind::Sinks => j < c.sink_count as i64,
            MaskKind::Global => {
                let t = self.table(c);
                t.binary_search(&(j as i32)).is_ok()
                    || (p >= 0 && t.binary_search(&(p as i32)).is_ok())
            }
            MaskKind::Dilated => (p - j).rem_euclid(c.dilation_stride as i64) == 0,
            MaskKind::BlockMask => {
                let qb = p.div_euclid(c.block_q as i64);
                let kb = j / c.block_k as i64;
                if qb < 0 || qb >= c.mask_rows as i64 || kb >= c.mask_cols as i64 {
                    return false;
                }
                let words = (c.mask_cols as i64 + 31) / 32;
                let word = self.table(c)[(qb * words + kb / 32) as usize] as u32;
                (word >> (kb % 32)) & 1 == 1
            }
            MaskKind::Chunked => {
                let size = c.block_q as i64;
                p.div_euclid(size) == j.div_euclid(size)
            }
            MaskKind::BigBird => {
                let b = c.block_q as i64;
                let (qb, kb) = (p.div_euclid(b), j / b);
                let g = c.bigbird_global_blocks as i64;
                if (qb - kb).abs() <= c.bigbird_window_half as i64 || qb < g || kb < g {
                    return true;
                }
                let row = qb - c.rand_first_q_block as i64;
                if row < 0 || row >= c.rand_q_blocks as i64 {
                    return false;
                }
                let t = self.table(c);
                let base = c.rand_q_blocks as usize + 1;
                let (s, e) = (t[row as usize] as usize, t[row as usize + 1] as usize);
                t[base + s..base + e].iter().any(|&x| x as i64 == kb)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_layout_sizes() {
        assert_eq!(std::mem::size_of::<MaskComponent>(), 64);
        assert_eq!(std::mem::align_of::<MaskComponent>(), 4);
        assert_eq!(std::mem::size_of::<MaskProgram>(), 16);
    }

    #[test]
    fn kind_tags_round_trip() {
        for k in 0..8 {
            assert_eq!(MaskKind::from_i32(k).map(|k| k as i32), Some(k));
        }
        assert_eq!(MaskKind::from_i32(8), None);
        assert_eq!(MaskKind::BigBird as i32, crate::ffi::SA_MASK_BIGBIRD as i32);
        assert_eq!(MaskKind::Chunked as i32, crate::ffi::SA_MASK_CHUNKED as i32);
    }
}
