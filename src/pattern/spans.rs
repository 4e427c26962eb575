//! The contract's token predicate (docs/patterns.md) as key intervals, one query row at a time.
//!
//! At model sequence lengths (32k to 1M tokens) asking [`Pattern::allowed`] for every
//! (query, key) pair is 10^9 to 10^12 calls. Every component but `dilated` allows a handful of
//! key intervals per query row, so a row costs a few interval operations instead of `kv_len`
//! predicate calls: this is how the CLI's `plan` counts work and `viz` draws model-sized
//! pictures, and how an engine can do the same. The unit tests check these spans against
//! [`Pattern::allowed`], token by token, for every component kind.

use super::{Component, Pattern};

/// A half-open key interval `[start, end)`.
pub type Span = (i64, i64);

/// Sorts `spans`, clips them to `[0, end)`, and merges overlapping or touching ones.
pub fn normalize(spans: &mut Vec<Span>, end: i64) {
    for s in spans.iter_mut() {
        *s = (s.0.max(0), s.1.min(end));
    }
    spans.retain(|s| s.0 < s.1);
    spans.sort_unstable();
    let mut out = 0;
    for k in 0..spans.len() {
        if out > 0 && spans[k].0 <= spans[out - 1].1 {
            spans[out - 1].1 = spans[out - 1].1.max(spans[k].1);
        } else {
            spans[out] = spans[k];
            out += 1;
        }
    }
    spans.truncate(out);
}

/// Total length of normalized spans.
pub fn span_len(spans: &[Span]) -> u64 {
    spans.iter().map(|s| (s.1 - s.0) as u64).sum()
}

/// The runs of ones of a block-mask row as key spans.
fn mask_row_spans(row: &[u8], block_k: i64, out: &mut Vec<Span>) {
    let mut c = 0;
    while c < row.len() {
        if row[c] == 1 {
            let start = c;
            while c < row.len() && row[c] == 1 {
                c += 1;
            }
            out.push((
                (start as i64).saturating_mul(block_k),
                (c as i64).saturating_mul(block_k),
            ));
        } else {
            c += 1;
        }
    }
}

/// Allowed (query, key) pairs of `head` under `pattern` for query rows at positions
/// `p = i + kv_len - q_len`, `0 <= i < q_len` (bottom-right aligned): interval arithmetic per
/// row, milliseconds even at a million tokens.
pub fn allowed_pairs(pattern: &Pattern, head: usize, q_len: usize, kv_len: usize) -> u128 {
    let mut rows = RowSpans::new(pattern, head, kv_len);
    let shift = kv_len as i64 - q_len as i64;
    (0..q_len as i64)
        .map(|i| span_len(rows.row(i + shift)) as u128)
        .sum()
}

/// Allowed keys of one query head, row by row: `row(p)` is the set
/// `{j : pattern.allowed(head, p, j, kv_len)}` as sorted, disjoint spans.
pub struct RowSpans<'a> {
    pattern: &'a Pattern,
    head: usize,
    kv_len: usize,
    spans: Vec<Span>,
    /// BigBird random blocks of the last query block asked for, per component index.
    rand_cache: Vec<Option<(i64, Vec<i64>)>>,
    scratch: Vec<u64>,
}

impl<'a> RowSpans<'a> {
    /// The rows of `head` under `pattern` over a sequence of `kv_len` keys.
    pub fn new(pattern: &'a Pattern, head: usize, kv_len: usize) -> Self {
        RowSpans {
            pattern,
            head,
            kv_len,
            spans: Vec::new(),
            rand_cache: vec![None; pattern.components.len()],
            scratch: Vec::new(),
        }
    }

    /// The allowed keys of the query at position `p` (may be negative).
    pub fn row(&mut self, p: i64) -> &[Span] {
        let kv = self.kv_len as i64;
        let end = if self.pattern.causal {
            kv.min(p.saturating_add(1))
        } else {
            kv
        };
        self.spans.clear();
        if end <= 0 {
            return &self.spans;
        }
        if self.pattern.components.is_empty() {
            self.spans.push((0, end));
            return &self.spans;
        }
        let causal = self.pattern.causal;
        for (k, c) in self.pattern.components.iter().enumerate() {
            let spans = &mut self.spans;
            match c {
                Component::Dense(_) => spans.push((0, end)),
                Component::SlidingWindow(w) => spans.push((
                    p.saturating_sub(w.left()),
                    p.saturating_add(w.right()).saturating_add(1),
                )),
                Component::Sinks(s) => spans.push((0, s.count())),
                Component::Global(g) => {
                    if g.contains(p) {
                        spans.push((0, end));
                    } else {
                        spans.extend(g.tokens().iter().map(|&t| (t, t + 1)));
                    }
                }
                Component::Dilated(d) => {
                    let k = d.stride();
                    let mut j = p.rem_euclid(k);
                    while j < end {
                        spans.push((j, j + 1));
                        j += k;
                    }
                }
                Component::Chunked(c) => {
                    let start = c.chunk_start(p);
                    spans.push((start, start.saturating_add(c.size())));
                }
                Component::BlockMask(m) => {
                    if let Some(row) = m.row(p.div_euclid(m.block_q())) {
                        mask_row_spans(row, m.block_k(), spans);
                    }
                }
                Component::BigBird(b) => {
                    let block = b.block();
                    let qb = p.div_euclid(block);
                    if qb < b.global_blocks() {
                        spans.push((0, end));
                        continue;
                    }
                    let w = b.window_half();
                    spans.push((
                        qb.saturating_sub(w).saturating_mul(block),
                        qb.saturating_add(w).saturating_add(1).saturating_mul(block),
                    ));
                    spans.push((0, b.global_blocks().saturating_mul(block)));
                    if b.random_blocks() > 0 {
                        let cached = matches!(&self.rand_cache[k], Some((q, _)) if *q == qb);
                        if !cached {
                            let mut blocks = Vec::new();
                            b.rand_blocks_into(
                                self.head,
                                qb,
                                self.kv_len,
                                causal,
                                &mut blocks,
                                &mut self.scratch,
                            );
                            self.rand_cache[k] = Some((qb, blocks));
                        }
                        if let Some((_, blocks)) = &self.rand_cache[k] {
                            spans.extend(
                                blocks
                                    .iter()
                                    .map(|&j| (j * block, j.saturating_add(1) * block)),
                            );
                        }
                    }
                }
            }
        }
        normalize(&mut self.spans, end);
        &self.spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::{BigBird, BlockMask};

    fn patterns() -> Vec<Pattern> {
        let mut comps: Vec<Vec<Component>> = vec![
            vec![],
            vec![Component::dense()],
            vec![Component::window(3, 2).unwrap()],
            vec![Component::window_size(5).unwrap()],
            vec![
                Component::sinks(2).unwrap(),
                Component::window_size(4).unwrap(),
            ],
            vec![Component::global(vec![0, 7, 19]).unwrap()],
            vec![
                Component::global(vec![3]).unwrap(),
                Component::window(1, 1).unwrap(),
            ],
            vec![Component::dilated(1).unwrap()],
            vec![Component::dilated(3).unwrap()],
            vec![
                Component::dilated(4).unwrap(),
                Component::window_size(3).unwrap(),
            ],
            vec![Component::chunked(1).unwrap()],
            vec![Component::chunked(4).unwrap()],
            vec![Component::chunked(7).unwrap()],
            vec![Component::chunked(8).unwrap(), Component::sinks(3).unwrap()],
            vec![
                Component::chunked(5).unwrap(),
                Component::window_size(3).unwrap(),
            ],
            vec![Component::BlockMask(
                BlockMask::new(
                    4,
                    3,
                    vec![vec![1, 0, 1, 1], vec![0, 1, 0, 0], vec![1, 1, 0, 1]],
                )
                .unwrap(),
            )],
        ];
        for (b, w, g, r, seed) in [
            (4, 3, 1, 2, 7),
            (3, 0, 0, 1, 1),
            (5, 2, 2, 0, 0),
            (4, 1, 0, 9, 3),
        ] {
            comps.push(vec![Component::BigBird(
                BigBird::new(b, w, g, r, seed).unwrap(),
            )]);
        }
        comps
            .into_iter()
            .flat_map(|c| [Pattern::new(false, c.clone()), Pattern::new(true, c)])
            .collect()
    }

    #[test]
    fn row_spans_equal_the_predicate() {
        for pattern in patterns() {
            for (q_len, kv_len) in [(21, 21), (9, 23), (23, 9), (1, 1), (30, 20)] {
                if pattern.check_shape(kv_len).is_err() {
                    continue;
                }
                for head in 0..3 {
                    let mut rs = RowSpans::new(&pattern, head, kv_len);
                    for i in 0..q_len {
                        let p = i as i64 + kv_len as i64 - q_len as i64;
                        let spans = rs.row(p).to_vec();
                        for j in 0..kv_len as i64 {
                            let inside = spans.iter().any(|s| s.0 <= j && j < s.1);
                            assert_eq!(
                                inside,
                                pattern.allowed(head, p, j, kv_len),
                                "{} head {head} p {p} j {j} (q_len {q_len}, kv_len {kv_len}): {spans:?}",
                                pattern.to_json()
                            );
                        }
                        assert!(spans.windows(2).all(|w| w[0].1 < w[1].0), "{spans:?}");
                    }
                }
            }
        }
    }
}
