//! Token-level masks `[num_heads, q_len, kv_len]` (`u8`, 1 = allowed): from the pattern
//! predicate (the ground truth, and what `--mask-out` writes) and from compiled metadata
//! (what a kernel executing that metadata applies). Tests compare the two.

use super::compile::BlockSparseMeta;
use super::set::HeadPatterns;
use crate::error::{Error, Result};

fn mask_len(num_heads: usize, q_len: usize, kv_len: usize) -> Result<usize> {
    num_heads
        .checked_mul(q_len)
        .and_then(|n| n.checked_mul(kv_len))
        .ok_or_else(|| {
            Error::Shape(format!(
                "token mask [{num_heads}, {q_len}, {kv_len}] does not fit in memory"
            ))
        })
}

/// The token mask the contract defines: entry `(h, i, j)` is `allowed(h, p, j)` with
/// `p = i + kv_len - q_len`. Validates the set against the shape first.
pub fn render_token_mask(
    patterns: &HeadPatterns,
    num_heads: usize,
    q_len: usize,
    kv_len: usize,
) -> Result<Vec<u8>> {
    patterns.validate(num_heads, kv_len)?;
    let mut out = vec![0u8; mask_len(num_heads, q_len, kv_len)?];
    if out.is_empty() {
        return Ok(out);
    }
    let shift = kv_len as i64 - q_len as i64;
    for (h, head) in out.chunks_mut(q_len * kv_len).enumerate() {
        for (i, row) in head.chunks_mut(kv_len).enumerate() {
            let p = i as i64 + shift;
            for (j, v) in row.iter_mut().enumerate() {
                *v = patterns.allowed(h, p, j as i64, kv_len) as u8;
            }
        }
    }
    Ok(out)
}

/// The token mask the metadata implies: ones over the existing tokens of full tiles, the
/// metadata's own partial-tile predicate ([`super::MaskTables::allowed`]) on partial tiles,
/// zeros elsewhere, each query row through the views of the tiles that own it. A token that
/// two visits name (which a kernel would count twice) is an error.
pub fn render_from_meta(meta: &BlockSparseMeta) -> Result<Vec<u8>> {
    let s = *meta.shape();
    let len = mask_len(s.num_heads, s.q_len, s.kv_len)?;
    let (mut out, mut seen) = (vec![0u8; len], vec![false; len]);
    let shift = s.kv_len as i64 - s.q_len as i64;
    for h in 0..s.num_heads {
        let set = meta.head_set()[h] as usize;
        for m in 0..meta.num_tiles(h) {
            for (rows, keys, full) in meta.visits(h, m) {
                for &i in &rows {
                    let p = i as i64 + shift;
                    for &j in &keys {
                        let at = (h * s.q_len + i) * s.kv_len + j;
                        if std::mem::replace(&mut seen[at], true) {
                            return Err(Error::Pattern(format!(
                                "metadata visits head {h} row {i} key {j} twice"
                            )));
                        }
                        out[at] = if full {
                            1
                        } else {
                            meta.mask().allowed(set, p, j as i64, s.kv_len) as u8
                        };
                    }
                }
            }
        }
    }
    Ok(out)
}
