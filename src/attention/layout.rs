//! Explicit strides of q, k, v and out (issue 12): each may be a view into a larger buffer (a
//! fused QKV projection, an activation tensor with padding), described by its row (token)
//! and head strides, validated here once before any launch. The kernels take these strides
//! as they are (`SaAttnFwdParams::{q,k,v,o}_{row,head}_stride`); they only enter each tile's
//! base addresses.

use crate::error::{Error, Result};

/// Element strides of one `[tokens, heads, head_dim]` tensor whose `head_dim` elements of a
/// (token, head) are contiguous: element `(t, h, e)` is at `t * row + h * head + e` from the
/// tensor's first element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorStrides {
    /// Elements between consecutive tokens.
    pub row: usize,
    /// Elements between consecutive heads of a token.
    pub head: usize,
}

impl TensorStrides {
    /// The packed layout of `heads` heads of `head_dim`: `row = heads * head_dim`,
    /// `head = head_dim`.
    pub fn packed(heads: usize, head_dim: usize) -> Self {
        TensorStrides {
            row: heads * head_dim,
            head: head_dim,
        }
    }

    /// Checks this tensor (`name`) of `rows` tokens and `heads` heads of `head_dim` against a
    /// buffer of `len` elements starting at its first element: strides in whole 16-byte
    /// chunks (multiples of 8 elements: the kernels copy rows with 16-byte `cp.async`), no two
    /// elements at the same place (heads inside a row or rows inside a head, in either
    /// order), row strides that fit the kernels' 32-bit row offsets, and every element inside
    /// the buffer. [`Error::Layout`] names the tensor and what is wrong.
    pub fn check(
        &self,
        name: &'static str,
        rows: usize,
        heads: usize,
        head_dim: usize,
        len: usize,
    ) -> Result<()> {
        let bad = |message: String| {
            Err(Error::Layout {
                tensor: name,
                message,
            })
        };
        if self.row % 8 != 0 || self.head % 8 != 0 {
            return bad(format!(
                "strides (row {}, head {}) must be multiples of 8 elements (16-byte rows)",
                self.row, self.head
            ));
        }
        if self.row > i32::MAX as usize || self.head > i32::MAX as usize {
            return bad(format!(
                "strides (row {}, head {}) exceed i32::MAX elements",
                self.row, self.head
            ));
        }
        // No overlap: the dimensions with more than one index, innermost (smallest stride)
        // first, each stride at least the extent of everything inside it.
        let mut dims: Vec<(usize, usize, &str)> =
            [(self.head, heads, "head"), (self.row, rows, "row")]
                .into_iter()
                .filter(|&(_, n, _)| n > 1)
                .collect();
        dims.sort_by_key(|&(s, _, _)| s);
        let mut inner = head_dim;
        for &(stride, n, what) in &dims {
            if stride < inner {
                return bad(format!(
                    "{what} stride {stride} is below the {inner} elements each {what} spans \
                     (row {}, head {}, {heads} heads of {head_dim}): elements overlap",
                    self.row, self.head
                ));
            }
            inner = stride * n;
        }
        if rows == 0 || heads == 0 {
            return Ok(());
        }
        let end = (rows as u128 - 1) * self.row as u128
            + (heads as u128 - 1) * self.head as u128
            + head_dim as u128;
        if end > len as u128 {
            return bad(format!(
                "{rows} tokens of {heads} heads of {head_dim} at strides (row {}, head {}) reach \
                 element {end}, past the buffer's {len}",
                self.row, self.head
            ));
        }
        Ok(())
    }
}

/// Element strides of a `[tokens, heads]` f32 LSE tensor in an engine's own layout: the LSE
/// of query token `t` (its row in q: `b * q_len + i` for a uniform batch, `cu_seqlens_q[b] +
/// i` for a varlen batch or a step) and head `h` is at `t * row + h * head` from the
/// tensor's first element. Token-major `[tokens, num_heads]` is `{ row: num_heads, head: 1 }`,
/// head-major `[num_heads, tokens]` is `{ row: 1, head: tokens }`; either may carry padding
/// or be a slice of a larger buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LseStrides {
    /// Elements between consecutive query tokens.
    pub row: usize,
    /// Elements between consecutive heads of a token.
    pub head: usize,
}

impl LseStrides {
    /// Token-major `[tokens, heads]` without gaps: `row = heads`, `head = 1`.
    pub fn token_major(heads: usize) -> Self {
        LseStrides {
            row: heads,
            head: 1,
        }
    }

    /// Checks an LSE of `rows` tokens and `heads` heads against a buffer of `len` f32
    /// elements starting at its first element: no two (token, head) pairs at the same
    /// element, strides that fit the kernels' 64-bit offsets, every element inside the
    /// buffer. [`Error::Layout`] (tensor `"lse"`) says what is wrong.
    pub fn check(&self, rows: usize, heads: usize, len: usize) -> Result<()> {
        let bad = |message: String| {
            Err(Error::Layout {
                tensor: "lse",
                message,
            })
        };
        if self.row > i64::MAX as usize || self.head > i64::MAX as usize {
            return bad(format!(
                "strides (row {}, head {}) exceed i64::MAX elements",
                self.row, self.head
            ));
        }
        if rows == 0 || heads == 0 {
            return Ok(());
        }
        let used = |n: usize| n > 1;
        match (used(rows), used(heads)) {
            (true, true) => {
                // Innermost (smaller stride) first; the outer stride must clear its extent.
                let (inner, n_inner, outer, what) = if self.head <= self.row {
                    (self.head, heads, self.row, "row")
                } else {
                    (self.row, rows, self.head, "head")
                };
                if inner == 0 || (outer as u128) < inner as u128 * n_inner as u128 {
                    return bad(format!(
                        "strides (row {}, head {}) over {rows} tokens of {heads} heads: elements \
                         overlap ({what} stride too small)",
                        self.row, self.head
                    ));
                }
            }
            (true, false) if self.row == 0 => {
                return bad(format!("row stride 0 over {rows} tokens: elements overlap"));
            }
            (false, true) if self.head == 0 => {
                return bad(format!(
                    "head stride 0 over {heads} heads: elements overlap"
                ));
            }
            _ => {}
        }
        let end =
            (rows as u128 - 1) * self.row as u128 + (heads as u128 - 1) * self.head as u128 + 1;
        if end > len as u128 {
            return bad(format!(
                "{rows} tokens of {heads} heads at strides (row {}, head {}) reach element \
                 {end}, past the buffer's {len}",
                self.row, self.head
            ));
        }
        Ok(())
    }
}

/// Where a call writes its row LSE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LseLayout {
    /// The plan's own layout, what [`crate::AttnPlan::launch`] writes: `[batch, num_heads,
    /// q_len]` for a uniform batch, `[num_heads, total_q]` for a varlen batch and `[num_heads,
    /// batch x max q_len]` (the plan's capacity) for a run-time plan's steps.
    #[default]
    Plan,
    /// The engine's own layout at these strides.
    Strided(LseStrides),
}

/// The layout of one call's q, k, v, out and LSE (k and v are unused when K/V come from a
/// paged cache). `packed` is what [`crate::AttnPlan::launch`] assumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorLayout {
    /// Queries `[tokens, num_heads, head_dim]`.
    pub q: TensorStrides,
    /// Keys `[tokens, num_kv_heads, head_dim]` (contiguous K/V only).
    pub k: TensorStrides,
    /// Values, like `k`.
    pub v: TensorStrides,
    /// Output `[tokens, num_heads, head_dim]` (only its elements are written).
    pub out: TensorStrides,
    /// Row LSE (f32, only its elements are written).
    pub lse: LseLayout,
}

impl TensorLayout {
    /// Every tensor packed (`[tokens, heads, head_dim]` without gaps), the LSE in the plan's
    /// layout.
    pub fn packed(num_heads: usize, num_kv_heads: usize, head_dim: usize) -> Self {
        let (q, kv) = (
            TensorStrides::packed(num_heads, head_dim),
            TensorStrides::packed(num_kv_heads, head_dim),
        );
        TensorLayout {
            q,
            k: kv,
            v: kv,
            out: q,
            lse: LseLayout::Plan,
        }
    }

    /// q, k and v as the three parts of one fused QKV projection `[tokens, (num_heads + 2 *
    /// num_kv_heads) * head_dim]`: each token's row holds its query heads, then its key
    /// heads, then its value heads, so q starts at element 0 of the buffer, k at `num_heads *
    /// head_dim` and v at `(num_heads + num_kv_heads) * head_dim` ([`Self::fused_offsets`]);
    /// out packed, the LSE in the plan's layout.
    pub fn fused_qkv(num_heads: usize, num_kv_heads: usize, head_dim: usize) -> Self {
        let row = (num_heads + 2 * num_kv_heads) * head_dim;
        let s = TensorStrides {
            row,
            head: head_dim,
        };
        TensorLayout {
            q: s,
            k: s,
            v: s,
            out: TensorStrides::packed(num_heads, head_dim),
            lse: LseLayout::Plan,
        }
    }

    /// Where q, k and v start in a fused QKV buffer ([`Self::fused_qkv`]), in elements.
    pub fn fused_offsets(num_heads: usize, num_kv_heads: usize, head_dim: usize) -> [usize; 3] {
        [
            0,
            num_heads * head_dim,
            (num_heads + num_kv_heads) * head_dim,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout_err(r: Result<()>) -> String {
        match r {
            Err(Error::Layout { tensor, message }) => format!("{tensor}: {message}"),
            other => panic!("expected Error::Layout, got {other:?}"),
        }
    }

    #[test]
    fn packed_fused_and_padded_layouts_pass() {
        let p = TensorStrides::packed(4, 64);
        p.check("q", 10, 4, 64, 10 * 256).unwrap();
        // Fused QKV of 4 + 2 * 2 heads: q's 4 heads, k's 2 and v's 2 fit from their offsets.
        let f = TensorLayout::fused_qkv(4, 2, 64);
        let [_, k_off, v_off] = TensorLayout::fused_offsets(4, 2, 64);
        let len = 10 * 512;
        f.q.check("q", 10, 4, 64, len).unwrap();
        f.k.check("k", 10, 2, 64, len - k_off).unwrap();
        f.v.check("v", 10, 2, 64, len - v_off).unwrap();
        // Head-major (heads outside rows) and a padded row.
        TensorStrides { row: 64, head: 640 }
            .check("out", 10, 4, 64, 4 * 640)
            .unwrap();
        TensorStrides { row: 264, head: 64 }
            .check("out", 10, 4, 64, 9 * 264 + 256)
            .unwrap();
        // One token or one head: the other stride is free (but aligned).
        TensorStrides { row: 8, head: 64 }
            .check("q", 1, 4, 64, 256)
            .unwrap();
    }

    #[test]
    fn lse_strides_pass_when_disjoint_and_inside() {
        // Token-major, head-major, padded rows, one token or one head (the other stride free).
        LseStrides::token_major(4).check(10, 4, 40).unwrap();
        LseStrides { row: 1, head: 10 }.check(10, 4, 40).unwrap();
        LseStrides { row: 6, head: 1 }.check(10, 4, 58).unwrap();
        LseStrides { row: 0, head: 1 }.check(1, 4, 4).unwrap();
        LseStrides { row: 3, head: 0 }.check(5, 1, 13).unwrap();
        LseStrides { row: 0, head: 0 }.check(0, 4, 0).unwrap();
    }

    #[test]
    fn overlapping_and_oversized_lse_strides_are_named() {
        let e = layout_err(LseStrides { row: 3, head: 1 }.check(10, 4, 1000));
        assert!(e.starts_with("lse:") && e.contains("overlap"), "{e}");
        let e = layout_err(LseStrides { row: 1, head: 9 }.check(10, 4, 1000));
        assert!(e.contains("overlap"), "{e}");
        let e = layout_err(LseStrides { row: 4, head: 4 }.check(2, 2, 1000));
        assert!(e.contains("overlap"), "{e}");
        let e = layout_err(LseStrides { row: 0, head: 1 }.check(2, 1, 1000));
        assert!(e.contains("overlap"), "{e}");
        let e = layout_err(LseStrides { row: 5, head: 0 }.check(1, 3, 1000));
        assert!(e.contains("overlap"), "{e}");
        let e = layout_err(LseStrides::token_major(4).check(10, 4, 39));
        assert!(e.contains("element 40, past the buffer's 39"), "{e}");
        let e = layout_err(
            LseStrides {
                row: usize::MAX,
                head: 1,
            }
            .check(1, 1, 1),
        );
        assert!(e.contains("i64::MAX"), "{e}");
    }

    #[test]
    fn overlapping_misaligned_and_oversized_layouts_are_named() {
        let e = layout_err(TensorStrides { row: 256, head: 32 }.check("q", 2, 4, 64, 512));
        assert!(
            e.starts_with("q: head stride 32") && e.contains("overlap"),
            "{e}"
        );
        let e = layout_err(TensorStrides { row: 128, head: 64 }.check("k", 3, 4, 64, 1024));
        assert!(
            e.starts_with("k: row stride 128") && e.contains("overlap"),
            "{e}"
        );
        let e = layout_err(TensorStrides { row: 260, head: 64 }.check("v", 2, 4, 64, 1024));
        assert!(e.contains("multiples of 8"), "{e}");
        let e = layout_err(TensorStrides::packed(4, 64).check("out", 3, 4, 64, 3 * 256 - 1));
        assert!(
            e.starts_with("out:") && e.contains("past the buffer"),
            "{e}"
        );
        let e = layout_err(
            TensorStrides {
                row: 1 << 32,
                head: 64,
            }
            .check("k", 2, 1, 64, usize::MAX),
        );
        assert!(e.contains("i32::MAX"), "{e}");
    }
}
