//! What a selection's budget fixes before any content is seen: the range of the density a
//! prefill can have (the CLI's `plan --pattern`).

use super::params::{BlockSelect, Choice};
use super::plan::check_statics;
use crate::error::Result;
use crate::pattern::Component;
use crate::reference::query_position;

/// The allowed (query, key) pairs a selection can give one head of a prefill of `q_len` rows
/// over `kv_len` keys, whatever the contents: `lo ..= hi`, against the `pairs` a dense layer of
/// the same causality allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DensityBounds {
    /// Fewest allowed pairs.
    pub lo: u64,
    /// Most allowed pairs.
    pub hi: u64,
    /// Pairs of dense attention (causal: those with `j <= p`).
    pub pairs: u64,
}

impl DensityBounds {
    /// `lo / pairs` and `hi / pairs` (0 when there are no pairs).
    pub fn density(&self) -> (f64, f64) {
        if self.pairs == 0 {
            return (0.0, 0.0);
        }
        (
            self.lo as f64 / self.pairs as f64,
            self.hi as f64 / self.pairs as f64,
        )
    }
}

/// The bounds for `sel` (prefill grouping; `causal` intersected). Per group, the forced blocks
/// count as they are; the content chooses `n` more blocks among the other candidates, with
/// `n = min(k, |C \ F|)` for `top_k` and `n` in `[min(min_k, |C \ F|), min(max_k, |C \ F|)]`
/// for `top_p` and `top_rel` (whose count the scores decide); the fewest (most) pairs take the
/// `n` candidates whose keys the group's rows see least (most). Exact: both bounds are
/// reached by some scores. Cost: O(groups x candidates).
pub fn density_bounds(
    sel: &BlockSelect,
    q_len: usize,
    kv_len: usize,
    causal: bool,
) -> DensityBounds {
    bounds(sel, &[], q_len, kv_len, causal)
}

/// [`density_bounds`] of a selection joined to static components (as
/// [`super::AdaptivePlan::with_union`] takes them): the components' pairs count as they are,
/// and a block adds only the pairs they do not already allow. Still exact. Errors:
/// `Error::Unsupported` for the components `with_union` refuses.
pub fn density_bounds_with(
    sel: &BlockSelect,
    statics: &[Component],
    q_len: usize,
    kv_len: usize,
    causal: bool,
) -> Result<DensityBounds> {
    check_statics(statics)?;
    Ok(bounds(sel, statics, q_len, kv_len, causal))
}

/// Keys in `[lo, hi]` (0 when empty).
fn span(lo: i64, hi: i64) -> i64 {
    (hi - lo + 1).max(0)
}

/// The keys an interval-form component allows query position `p` before clipping to the
/// existing keys (`check_statics` admitted it).
fn interval(c: &Component, p: i64, causal: bool) -> (i64, i64) {
    match c {
        Component::SlidingWindow(w) => (p - w.left(), if causal { p } else { p + w.right() }),
        Component::Sinks(s) => (0, s.count() - 1),
        Component::Chunked(k) => {
            let start = k.chunk_start(p);
            (start, start + k.size() - 1)
        }
        _ => (i64::MIN / 4, i64::MAX / 4),
    }
}

fn bounds(
    sel: &BlockSelect,
    statics: &[Component],
    q_len: usize,
    kv_len: usize,
    causal: bool,
) -> DensityBounds {
    let b = sel.block();
    let pos = |i: usize| query_position(i, q_len, kv_len);
    let last_key = |p: i64| {
        if causal {
            p.min(kv_len as i64 - 1)
        } else {
            kv_len as i64 - 1
        }
    };
    // Keys in [x0, x1] (within the keys position p sees) that no static component allows:
    // inclusion-exclusion over at most two intervals.
    let fresh = |x0: i64, x1: i64, p: i64| -> i64 {
        let x1 = x1.min(last_key(p));
        let mut n = span(x0, x1);
        let iv: Vec<(i64, i64)> = statics.iter().map(|c| interval(c, p, causal)).collect();
        for &(lo, hi) in &iv {
            n -= span(lo.max(x0), hi.min(x1));
        }
        if let [(a0, a1), (b0, b1)] = iv[..] {
            n += span(a0.max(b0).max(x0), a1.min(b1).min(x1));
        }
        n
    };
    // Keys of block J that row position p sees and no static component allows.
    let seen = |jb: i64, p: i64| -> i64 { fresh(jb * b, (jb + 1) * b - 1, p) };
    // Pairs the static components allow.
    let fixed_pairs: u64 = (0..q_len)
        .map(|i| {
            let p = pos(i);
            (span(0, last_key(p)) - fresh(0, kv_len as i64 - 1, p)) as u64
        })
        .sum();
    let pairs: u64 = (0..q_len)
        .map(|i| {
            let p = pos(i);
            if causal {
                (p + 1).clamp(0, kv_len as i64) as u64
            } else {
                kv_len as u64
            }
        })
        .sum();
    let (mut lo, mut hi) = (fixed_pairs, fixed_pairs);
    let mut i = 0;
    while i < q_len {
        // The group of row i: rows with the same floor(p / q_block).
        let g = pos(i).div_euclid(sel.q_block());
        let mut end = i + 1;
        while end < q_len && pos(end).div_euclid(sel.q_block()) == g {
            end += 1;
        }
        let max_p = pos(end - 1);
        let forced = sel.forced(max_p, kv_len);
        let per_block = |jb: i64| -> u64 { (i..end).map(|r| seen(jb, pos(r)) as u64).sum() };
        let fixed: u64 = forced.iter().map(|&jb| per_block(jb)).sum();
        let mut others: Vec<u64> = sel
            .candidates(max_p, kv_len)
            .filter(|j| forced.binary_search(j).is_err())
            .map(per_block)
            .collect();
        others.sort_unstable();
        let free = others.len();
        let (n_lo, n_hi) = match sel.choice() {
            Choice::TopK { k } => {
                let n = (k as usize).min(free);
                (n, n)
            }
            Choice::TopP { min_k, max_k, .. } | Choice::TopRel { min_k, max_k, .. } => {
                ((min_k as usize).min(free), (max_k as usize).min(free))
            }
        };
        lo += fixed + others[..n_lo].iter().sum::<u64>();
        hi += fixed + others[free - n_hi..].iter().sum::<u64>();
        i = end;
    }
    DensityBounds { lo, hi, pairs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adaptive::AdaptiveComponent;

    fn select(json: &str) -> BlockSelect {
        match AdaptiveComponent::from_json(json).unwrap() {
            AdaptiveComponent::Select(s) => s,
            _ => unreachable!(),
        }
    }

    #[test]
    fn top_k_with_local_blocks_is_exact_and_counts_by_hand() {
        // 256 causal rows over 256 keys, blocks of 64, groups of 64 rows: group G (rows
        // 64G .. 64G + 63) sees its own diagonal block (forced local: 64 * 65 / 2 pairs),
        // block 0 as a sink when G > 0 (64 * 64), and k = 1 more full block when one is left
        // (G >= 2).
        let sel = select(r#"{"top_k": {"block": 64, "k": 1, "keep_sinks": 1, "keep_local": 1}}"#);
        let d = density_bounds(&sel, 256, 256, true);
        let diag = 64 * 65 / 2;
        let full = 64 * 64;
        let want = 4 * diag + 3 * full + 2 * full;
        assert_eq!((d.lo, d.hi), (want, want));
        assert_eq!(d.pairs, 256 * 257 / 2);
    }

    #[test]
    fn bounds_hold_the_density_of_real_selections() {
        use crate::adaptive::{Grouping, SelectInputs, Selection};
        use crate::pattern::rng::SplitMix64;
        use crate::{AttnProblem, DType, SeqLens};
        let (q_len, kv_len) = (200, 330);
        let problem = AttnProblem::new(
            SeqLens::Uniform {
                batch: 1,
                q_len,
                kv_len,
            },
            1,
            1,
            64,
            DType::F16,
        )
        .unwrap();
        let mut r = SplitMix64::new(5);
        let q: Vec<f32> = (0..q_len * 64)
            .map(|_| r.int_in(-8, 8) as f32 / 8.0)
            .collect();
        let k: Vec<f32> = (0..kv_len * 64)
            .map(|_| r.int_in(-8, 8) as f32 / 8.0)
            .collect();
        for json in [
            r#"{"top_k": {"block": 32, "k": 3, "keep_sinks": 1, "q_block": 48}}"#,
            r#"{"top_p": {"block": 16, "p": 0.7, "min_k": 1, "max_k": 6, "keep_local": 2}}"#,
            r#"{"top_rel": {"block": 64, "alpha": 0.2, "max_k": 2, "score": "pooled_qk"}}"#,
        ] {
            let sel = select(json);
            for causal in [true, false] {
                let s = Selection::compute(
                    &problem,
                    &sel,
                    &SelectInputs {
                        q: &q,
                        k: &k,
                        scale: 0.125,
                        grouping: Grouping::Prefill,
                        given: None,
                    },
                )
                .unwrap();
                let allowed = s.allowed(causal);
                let n = (0..q_len)
                    .flat_map(|i| (0..kv_len).map(move |j| (i, j)))
                    .filter(|&(i, j)| allowed(0, 0, i, j))
                    .count() as u64;
                let b = density_bounds(&sel, q_len, kv_len, causal);
                assert!(
                    b.lo <= n && n <= b.hi,
                    "{json} causal {causal}: {n} not in {b:?}"
                );
                for statics in [
                    vec![
                        Component::window_size(40).unwrap(),
                        Component::sinks(3).unwrap(),
                    ],
                    vec![
                        Component::window(20, 9).unwrap(),
                        Component::chunked(48).unwrap(),
                    ],
                ] {
                    let allowed = s.allowed_with(causal, &statics);
                    let n = (0..q_len)
                        .flat_map(|i| (0..kv_len).map(move |j| (i, j)))
                        .filter(|&(i, j)| allowed(0, 0, i, j))
                        .count() as u64;
                    let u = density_bounds_with(&sel, &statics, q_len, kv_len, causal).unwrap();
                    assert!(
                        u.lo <= n && n <= u.hi && b.lo <= u.lo && b.hi <= u.hi,
                        "{json} causal {causal} {statics:?}: {n} not in {u:?} (alone {b:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn unions_count_static_pairs_once() {
        // Every block chosen: the union is the dense causal layer, whatever the statics.
        let all = select(r#"{"top_k": {"block": 16, "k": 1000}}"#);
        let statics = [
            Component::window_size(37).unwrap(),
            Component::sinks(5).unwrap(),
        ];
        let d = density_bounds_with(&all, &statics, 150, 210, true).unwrap();
        assert_eq!((d.lo, d.hi), (d.pairs, d.pairs));
        // One forced local block of 64 beside a window of 8 inside it: the window adds nothing
        // to rows at least 7 keys into their block, 7 - r pairs to row r < 7 of block 1+.
        let local = select(r#"{"top_k": {"block": 64, "k": 0, "keep_local": 1}}"#);
        let w = [Component::window_size(8).unwrap()];
        let alone = density_bounds(&local, 128, 128, true);
        let d = density_bounds_with(&local, &w, 128, 128, true).unwrap();
        assert_eq!((d.lo, d.hi), (alone.lo + 28, alone.hi + 28));
        assert!(matches!(
            density_bounds_with(&local, &[Component::dilated(2).unwrap()], 8, 8, true),
            Err(crate::Error::Unsupported(_))
        ));
    }

    #[test]
    fn top_p_ranges_from_min_k_to_max_k_and_dense_budgets_are_dense() {
        let sel = select(
            r#"{"top_p": {"block": 32, "p": 0.9, "min_k": 0, "max_k": 1000, "keep_sinks": 0, "keep_local": 1}}"#,
        );
        let d = density_bounds(&sel, 300, 500, true);
        assert_eq!(d.hi, d.pairs, "max_k covering every block: dense");
        assert!(d.lo < d.hi);
        // Not causal: rows see whole blocks.
        let k = select(r#"{"top_k": {"block": 16, "k": 2, "keep_local": 1}}"#);
        let d = density_bounds(&k, 16, 160, false);
        assert_eq!((d.lo, d.hi, d.pairs), (16 * 48, 16 * 48, 16 * 160));
    }
}
