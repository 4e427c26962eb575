//! The contract's token predicate (PATTERNS.md) as key intervals, one query row at a time.
//!
//! `plan` and `viz` work at model sequence lengths (32k to 1M tokens), where asking
//! `Pattern::allowed` for every (query, key) pair is 10^9 to 10^12 calls. Every component but
//! `dilated` allows a handful of key intervals per query row, so a row costs a few interval
//! operations instead of `kv_len` predicate calls. The unit tests below check these spans
//! against `Pattern::allowed`, token by token, for every component kind.

use sparse_attn::pattern::{Component, Pattern};

/// A half-open key interval `[start, end)`.
pub type Span = (i64, i64);

/// Sorts `spans`, clips them to `[0, end)`, and merges overlapping or touching ones.
fn normalize(spans: &mut Vec<Span>, end: i64) {
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

/// The keys among the first `n` that the query at position `n - 1` or any later query may
/// still attend: what a KV cache at sequence length `n` must keep for this head. A window keeps
/// its last `left + 1` keys, sinks their first `count`, global tokens themselves, a block mask
/// the columns of its remaining rows; dense, dilated (every residue recurs) and BigBird with
/// random blocks (any earlier block may be drawn) keep everything.
pub fn kv_reach(pattern: &Pattern, n: usize) -> Vec<Span> {
    let n = n as i64;
    let last = n - 1;
    let mut spans = Vec::new();
    if n == 0 {
        return spans;
    }
    if pattern.components.is_empty() {
        return vec![(0, n)];
    }
    for c in &pattern.components {
        match c {
            Component::Dense(_) | Component::Dilated(_) => spans.push((0, n)),
            Component::SlidingWindow(w) => spans.push((last.saturating_sub(w.left()), n)),
            Component::Sinks(s) => spans.push((0, s.count())),
            Component::Global(g) => {
                if g.contains(last) {
                    spans.push((0, n));
                } else {
                    spans.extend(g.tokens().iter().map(|&t| (t, t + 1)));
                }
            }
            Component::BlockMask(m) => {
                let first = last.div_euclid(m.block_q()).max(0);
                for r in first..m.rows() as i64 {
                    if let Some(row) = m.row(r) {
                        mask_row_spans(row, m.block_k(), &mut spans);
                    }
                }
            }
            Component::BigBird(b) => {
                let qb = last.div_euclid(b.block());
                if b.random_blocks() > 0 || qb < b.global_blocks() {
                    spans.push((0, n));
                } else {
                    spans.push((0, b.global_blocks().saturating_mul(b.block())));
                    spans.push((
                        qb.saturating_sub(b.window_half()).saturating_mul(b.block()),
                        n,
                    ));
                }
            }
        }
    }
    normalize(&mut spans, n);
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparse_attn::pattern::{BigBird, BlockMask};

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

    #[test]
    fn kv_reach_covers_every_later_query() {
        for pattern in patterns() {
            for n in [1usize, 6, 13, 24] {
                if pattern.check_shape(n).is_err() {
                    continue;
                }
                let reach = kv_reach(&pattern, n);
                // Queries at positions n-1 .. n+40 over a sequence that keeps growing: every
                // key below n any of them may attend must be kept.
                for p in n as i64 - 1..n as i64 + 40 {
                    for j in 0..n as i64 {
                        if pattern.allowed(0, p, j, p as usize + 1) {
                            assert!(
                                reach.iter().any(|s| s.0 <= j && j < s.1),
                                "{}: key {j} needed by query {p} but not kept (n {n}): {reach:?}",
                                pattern.to_json()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn kv_reach_of_windows_and_sinks_is_exact() {
        let streaming = Pattern::streaming(4, 1024).unwrap();
        assert_eq!(kv_reach(&streaming, 32768), vec![(0, 4), (31744, 32768)]);
        assert_eq!(kv_reach(&streaming, 100), vec![(0, 100)]);
        assert_eq!(kv_reach(&Pattern::causal(), 77), vec![(0, 77)]);
        let w = Pattern::causal_window(4096).unwrap();
        assert_eq!(span_len(&kv_reach(&w, 32768)), 4096);
    }
}
