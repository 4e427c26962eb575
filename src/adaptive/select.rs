//! The f64 reference of block selection: groups, candidates, forced blocks, the four scores,
//! the total order and the three choice rules of docs/adaptive.md.

use std::cmp::Ordering;

use super::params::{BlockSelect, Choice, Score, Share};
use crate::error::{Error, Result};
use crate::pattern::Component;
use crate::reference::{causal_allowed, query_position};
use crate::shape::AttnProblem;

/// How query rows form groups (docs/adaptive.md, "Token-level meaning").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    /// A prefill call: rows with equal `floor(p / q_block)` form a group (positions `p` are
    /// bottom-right aligned, so a chunked prefill groups rows like one whole prefill only
    /// when its chunk boundaries are multiples of `q_block`).
    Prefill,
    /// A decode step: every row is a group by itself. Evaluating the rows of a `run` this way
    /// gives what the decode path computes step by step, not what a prefill over the same
    /// rows computes. Block summaries (`k̄`, `n_J`, `m`, `M`) are those of the keys present in
    /// the call, so to reproduce one decode step exactly, evaluate it as its own call
    /// (`q_len` 1 over the `p + 1` keys in the cache at that step): a whole run evaluated with
    /// this grouping also counts the keys after `p` in the summary of `p`'s own block.
    Decode,
}

/// Caller-supplied block scores for `score: given`: an f32 tensor
/// `[batch, heads, groups, blocks]`, row-major, where `heads` is the number of query heads,
/// or with `share: kv_group` the number of kv heads (used as they are) or of query heads
/// (combined per kv group by `ln Σ exp`); `groups` and `blocks` are those of
/// [`given_shape`]. Every value must be finite.
#[derive(Clone, Copy, Debug)]
pub struct GivenScores<'a> {
    /// The scores, `batch * heads * groups * blocks` of them.
    pub scores: &'a [f32],
    /// The head extent of the tensor.
    pub heads: usize,
}

/// What the reference selection reads.
#[derive(Clone, Copy, Debug)]
pub struct SelectInputs<'a> {
    /// Queries, laid out as for [`crate::reference::attention`].
    pub q: &'a [f32],
    /// Keys, laid out as for [`crate::reference::attention`].
    pub k: &'a [f32],
    /// The score scale (the attention scale; scores use it as `scale·q·k`).
    pub scale: f32,
    /// Prefill or decode grouping.
    pub grouping: Grouping,
    /// The scores of `score: given` (required then, rejected otherwise).
    pub given: Option<GivenScores<'a>>,
}

/// The group of query row `i` of a sequence (`q_len` rows over `kv_len` keys), counted from
/// the call's first group: `floor(p_i / q_block) - floor(p_0 / q_block)` in a prefill, `i` in
/// a decode step.
pub fn group_of(
    sel: &BlockSelect,
    grouping: Grouping,
    i: usize,
    q_len: usize,
    kv_len: usize,
) -> usize {
    match grouping {
        Grouping::Decode => i,
        Grouping::Prefill => {
            let g = |p: i64| p.div_euclid(sel.q_block());
            (g(query_position(i, q_len, kv_len)) - g(query_position(0, q_len, kv_len))) as usize
        }
    }
}

/// The number of groups of a sequence with `q_len` rows over `kv_len` keys.
pub fn num_groups(sel: &BlockSelect, grouping: Grouping, q_len: usize, kv_len: usize) -> usize {
    if q_len == 0 {
        0
    } else {
        group_of(sel, grouping, q_len - 1, q_len, kv_len) + 1
    }
}

/// The `[groups, blocks]` extents of a `given` tensor for `problem`: the most groups of any
/// sequence and the most key blocks, `ceil(kv_len / B)`, of any sequence. Entries a shorter
/// sequence does not use are ignored (but must still be finite).
pub fn given_shape(sel: &BlockSelect, problem: &AttnProblem, grouping: Grouping) -> [usize; 2] {
    let seqs = problem.seqs();
    let b = sel.block() as usize;
    (0..seqs.batch()).fold([0, 0], |[g, n], s| {
        let (q_len, kv_len) = seqs.lens(s);
        [
            g.max(num_groups(sel, grouping, q_len, kv_len)),
            n.max(kv_len.div_ceil(b)),
        ]
    })
}

/// The total order of docs/adaptive.md, "Choice", on `(block, score)` pairs: `Less` means
/// `a` ranks first. Higher score first; on an exact tie (`-0.0 == +0.0`) the larger block
/// first; NaN ranks below `-inf` (NaNs among themselves by block).
pub fn rank(a: (i64, f64), b: (i64, f64)) -> Ordering {
    let by_score = match (a.1.is_nan(), b.1.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => b.1.partial_cmp(&a.1).expect("neither is NaN"),
    };
    by_score.then(b.0.cmp(&a.0))
}

/// Softmax masses of `s`; NaN counts as `-inf`. When the largest score is `+inf` the blocks
/// scoring `+inf` share the mass equally; when every score is `-inf` (or NaN) all masses
/// are 0.
pub fn masses(s: &[f64]) -> Vec<f64> {
    let m = s
        .iter()
        .filter(|x| !x.is_nan())
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    if m == f64::NEG_INFINITY {
        return vec![0.0; s.len()];
    }
    if m == f64::INFINITY {
        let n = s.iter().filter(|&&x| x == f64::INFINITY).count() as f64;
        return s
            .iter()
            .map(|&x| if x == f64::INFINITY { 1.0 / n } else { 0.0 })
            .collect();
    }
    let e: Vec<f64> = s
        .iter()
        .map(|&x| if x.is_nan() { 0.0 } else { (x - m).exp() })
        .collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// `ln Σ exp(x)`, `-inf` for an empty or all `-inf` input.
fn log_sum_exp(x: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = x.clone().fold(f64::NEG_INFINITY, f64::max);
    if m.is_infinite() {
        return m;
    }
    m + x.map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// Chooses from the candidates `0..scores.len()` (scores indexed by block) given the forced
/// set (ascending, each a candidate), by `choice`; returns the content-chosen blocks in
/// rank order ([`rank`]). `top_p` counts the forced blocks' mass; `top_rel`'s maximum runs
/// over all candidates, forced ones included.
pub fn choose(choice: Choice, scores: &[f64], forced: &[i64]) -> Vec<i64> {
    let mut rest: Vec<(i64, f64)> = (0..scores.len() as i64)
        .filter(|j| forced.binary_search(j).is_err())
        .map(|j| (j, scores[j as usize]))
        .collect();
    rest.sort_by(|&a, &b| rank(a, b));
    let count = match choice {
        Choice::TopK { k } => k as usize,
        Choice::TopP { p, min_k, max_k } => {
            let m = masses(scores);
            let mut cum: f64 = forced.iter().map(|&j| m[j as usize]).sum();
            let mut n = 0usize;
            for &(j, _) in &rest {
                if cum >= p {
                    break;
                }
                cum += m[j as usize];
                n += 1;
            }
            n.clamp(min_k as usize, max_k as usize)
        }
        Choice::TopRel {
            alpha,
            min_k,
            max_k,
        } => {
            let best = scores
                .iter()
                .filter(|x| !x.is_nan())
                .fold(f64::NEG_INFINITY, |m, &x| m.max(x));
            let t = alpha.ln() + best;
            let n = rest.iter().take_while(|&&(_, s)| s >= t).count();
            n.clamp(min_k as usize, max_k as usize)
        }
    };
    rest.truncate(count.min(rest.len()));
    rest.into_iter().map(|(j, _)| j).collect()
}

/// The reference selection of one call: for every sequence, query head and group, the
/// selected blocks `S(h, G) = F ∪ choose(score, C \ F)` and the scores they were chosen by.
#[derive(Clone, Debug)]
pub struct Selection {
    sel: BlockSelect,
    grouping: Grouping,
    /// Per sequence: `(q_len, kv_len)`.
    lens: Vec<(usize, usize)>,
    /// `[b][h][g]`: selected blocks, ascending.
    blocks: Vec<Vec<Vec<Vec<i64>>>>,
    /// `[b][h][g]`: the (combined, under `kv_group`) score of every candidate block.
    scores: Vec<Vec<Vec<Vec<f64>>>>,
}

/// Per-block summaries of one (sequence, kv head): mean, channel min and max, count.
struct Summary {
    mean: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
    n: usize,
}

/// Validates `x`'s lengths and `given` against `problem` and `sel`.
fn check_inputs(problem: &AttnProblem, sel: &BlockSelect, x: &SelectInputs<'_>) -> Result<()> {
    if x.q.len() != problem.q_elems() || x.k.len() != problem.kv_elems() {
        return Err(Error::Shape(format!(
            "adaptive selection: q has {} elements and k {} (the problem needs {} and {})",
            x.q.len(),
            x.k.len(),
            problem.q_elems(),
            problem.kv_elems()
        )));
    }
    if !x.scale.is_finite() {
        return Err(Error::Pattern(format!(
            "adaptive selection: scale must be finite (got {})",
            x.scale
        )));
    }
    match (sel.score(), x.given) {
        (Score::Given, None) => Err(Error::Pattern(
            "score \"given\" needs the caller's scores (SelectInputs::given)".into(),
        )),
        (Score::Given, Some(g)) => {
            let heads_ok = g.heads == problem.num_heads()
                || (sel.share() == Share::KvGroup && g.heads == problem.num_kv_heads());
            let [groups, blocks] = given_shape(sel, problem, x.grouping);
            let batch = problem.seqs().batch();
            if !heads_ok || g.scores.len() != batch * g.heads * groups * blocks {
                let heads = match sel.share() {
                    Share::Head => format!("{}", problem.num_heads()),
                    Share::KvGroup => {
                        format!("{} or {}", problem.num_kv_heads(), problem.num_heads())
                    }
                };
                return Err(Error::Shape(format!(
                    "given scores: expected [batch {batch}, heads {heads}, groups {groups}, \
                     blocks {blocks}], got {} heads and {} values",
                    g.heads,
                    g.scores.len()
                )));
            }
            if let Some(at) = g.scores.iter().position(|v| !v.is_finite()) {
                return Err(Error::Pattern(format!(
                    "given scores must be finite (value {} at flat index {at})",
                    g.scores[at]
                )));
            }
            Ok(())
        }
        (_, Some(_)) => Err(Error::Pattern(format!(
            "given scores were passed but the score is {:?}, not \"given\"",
            sel.score()
        ))),
        (_, None) => Ok(()),
    }
}

impl Selection {
    /// Runs the reference selection for `problem` (layouts as in
    /// [`crate::reference::attention`]). Errors: `Error::Shape` when `q`, `k` or the given
    /// scores do not fit the problem, `Error::Pattern` for non-finite given scores or scale,
    /// and for given scores missing (`score: given`) or superfluous (any other score).
    pub fn compute(problem: &AttnProblem, sel: &BlockSelect, x: &SelectInputs<'_>) -> Result<Self> {
        check_inputs(problem, sel, x)?;
        let d = problem.head_dim().get() as usize;
        let (h_q, h_kv) = (problem.num_heads(), problem.num_kv_heads());
        let group = problem.group_size();
        let bsz = sel.block() as usize;
        let scale = x.scale as f64;
        let seqs = problem.seqs();
        let [given_groups, given_blocks] = given_shape(sel, problem, x.grouping);
        let mut lens = Vec::new();
        let mut all_blocks = Vec::new();
        let mut all_scores = Vec::new();
        for b in 0..seqs.batch() {
            let (q_len, kv_len) = seqs.lens(b);
            let (q0, k0) = seqs.offsets(b);
            lens.push((q_len, kv_len));
            let n_blocks = kv_len.div_ceil(bsz);
            // Block summaries per kv head: [hk][J].
            let summaries: Vec<Vec<Summary>> = (0..h_kv)
                .map(|hk| {
                    (0..n_blocks)
                        .map(|jb| {
                            let keys = jb * bsz..((jb + 1) * bsz).min(kv_len);
                            let n = keys.len();
                            let mut s = Summary {
                                mean: vec![0.0; d],
                                min: vec![f64::INFINITY; d],
                                max: vec![f64::NEG_INFINITY; d],
                                n,
                            };
                            for j in keys {
                                let row = &x.k[((k0 + j) * h_kv + hk) * d..][..d];
                                for (c, &v) in row.iter().enumerate() {
                                    let v = v as f64;
                                    s.mean[c] += v;
                                    s.min[c] = s.min[c].min(v);
                                    s.max[c] = s.max[c].max(v);
                                }
                            }
                            s.mean.iter_mut().for_each(|m| *m /= n as f64);
                            s
                        })
                        .collect()
                })
                .collect();
            let n_groups = num_groups(sel, x.grouping, q_len, kv_len);
            // Rows of each group, ascending.
            let mut rows: Vec<Vec<usize>> = vec![Vec::new(); n_groups];
            for i in 0..q_len {
                rows[group_of(sel, x.grouping, i, q_len, kv_len)].push(i);
            }
            let qrow = |h: usize, i: usize| &x.q[((q0 + i) * h_q + h) * d..][..d];
            let dot = |a: &[f32], m: &[f64]| -> f64 {
                a.iter().zip(m).map(|(&u, &v)| u as f64 * v).sum::<f64>()
            };
            // The score of block `jb` for query head `h` over the rows `g_rows` of group `g`.
            let head_score = |h: usize, g: usize, g_rows: &[usize], jb: usize| -> f64 {
                let s = &summaries[h / group][jb];
                let o = (s.n as f64 / bsz as f64).ln();
                match sel.score() {
                    Score::MeanK => log_sum_exp(
                        g_rows
                            .iter()
                            .filter(|&&i| (jb * bsz) as i64 <= query_position(i, q_len, kv_len))
                            .map(|&i| scale * dot(qrow(h, i), &s.mean) + o),
                    ),
                    Score::PooledQk => {
                        let mut qbar = vec![0.0f64; d];
                        for &i in g_rows {
                            for (m, &v) in qbar.iter_mut().zip(qrow(h, i)) {
                                *m += v as f64;
                            }
                        }
                        qbar.iter_mut().for_each(|m| *m /= g_rows.len() as f64);
                        scale * qbar.iter().zip(&s.mean).map(|(&a, &c)| a * c).sum::<f64>() + o
                    }
                    Score::Minmax => g_rows
                        .iter()
                        .map(|&i| {
                            let q = qrow(h, i);
                            scale
                                * (0..d)
                                    .map(|c| {
                                        let v = q[c] as f64;
                                        (v * s.min[c]).max(v * s.max[c])
                                    })
                                    .sum::<f64>()
                        })
                        .fold(f64::NEG_INFINITY, f64::max),
                    Score::Given => {
                        let g_in = x.given.expect("checked");
                        let at = ((b * g_in.heads + h) * given_groups + g) * given_blocks + jb;
                        g_in.scores[at] as f64
                    }
                }
            };
            let mut seq_blocks = vec![vec![Vec::new(); n_groups]; h_q];
            let mut seq_scores = vec![vec![Vec::new(); n_groups]; h_q];
            for (g, g_rows) in rows.iter().enumerate() {
                let max_p =
                    query_position(*g_rows.last().expect("groups are non-empty"), q_len, kv_len);
                let cand = sel.candidates(max_p, kv_len);
                let forced = sel.forced(max_p, kv_len);
                let mut decide = |heads: std::ops::Range<usize>, scores: Vec<f64>| {
                    let mut chosen = choose(sel.choice(), &scores, &forced);
                    chosen.extend_from_slice(&forced);
                    chosen.sort_unstable();
                    for h in heads {
                        seq_blocks[h][g] = chosen.clone();
                        seq_scores[h][g] = scores.clone();
                    }
                };
                let blocks = cand.clone().map(|j| j as usize);
                match sel.share() {
                    Share::Head => {
                        for h in 0..h_q {
                            let s = blocks.clone().map(|jb| head_score(h, g, g_rows, jb));
                            decide(h..h + 1, s.collect());
                        }
                    }
                    Share::KvGroup => {
                        for hk in 0..h_kv {
                            let heads = hk * group..(hk + 1) * group;
                            let given_per_kv = sel.score() == Score::Given
                                && x.given.is_some_and(|g| g.heads == h_kv && h_kv != h_q);
                            let s = blocks.clone().map(|jb| {
                                if given_per_kv {
                                    head_score(hk, g, g_rows, jb)
                                } else if sel.score().is_mass_like() {
                                    log_sum_exp(heads.clone().map(|h| head_score(h, g, g_rows, jb)))
                                } else {
                                    heads
                                        .clone()
                                        .map(|h| head_score(h, g, g_rows, jb))
                                        .fold(f64::NEG_INFINITY, f64::max)
                                }
                            });
                            let s: Vec<f64> = s.collect();
                            decide(heads, s);
                        }
                    }
                }
            }
            all_blocks.push(seq_blocks);
            all_scores.push(seq_scores);
        }
        Ok(Selection {
            sel: *sel,
            grouping: x.grouping,
            lens,
            blocks: all_blocks,
            scores: all_scores,
        })
    }

    /// The component the selection was made for.
    pub fn component(&self) -> &BlockSelect {
        &self.sel
    }

    /// The grouping it was made with.
    pub fn grouping(&self) -> Grouping {
        self.grouping
    }

    /// Groups of sequence `b`.
    pub fn num_groups(&self, b: usize) -> usize {
        self.blocks[b].first().map_or(0, |h| h.len())
    }

    /// The group of query row `i` of sequence `b`.
    pub fn group_of(&self, b: usize, i: usize) -> usize {
        let (q_len, kv_len) = self.lens[b];
        group_of(&self.sel, self.grouping, i, q_len, kv_len)
    }

    /// `S(h, G)` of sequence `b`, query head `h`, group `g`: block indices, ascending.
    pub fn blocks(&self, b: usize, h: usize, g: usize) -> &[i64] {
        &self.blocks[b][h][g]
    }

    /// The scores `s_J` of the candidates `J = 0..|C|` the choice was made from (under
    /// `share: kv_group` the combined score, the same for every head of the group).
    pub fn scores(&self, b: usize, h: usize, g: usize) -> &[f64] {
        &self.scores[b][h][g]
    }

    /// The component's own predicate: `J(j) ∈ S(h, G(i))` and `j < kv_len` (no causal mask).
    pub fn admits(&self, b: usize, h: usize, i: usize, j: usize) -> bool {
        let (_, kv_len) = self.lens[b];
        j < kv_len
            && self.blocks[b][h][self.group_of(b, i)]
                .binary_search(&((j / self.sel.block() as usize) as i64))
                .is_ok()
    }

    /// [`Selection::admits`] intersected with `causal` (`j <= p`) when `causal` is set: the
    /// `allowed(b, h, i, j)` of a pattern made of this component alone, ready for
    /// [`crate::reference::attention`].
    pub fn allowed(&self, causal: bool) -> impl Fn(usize, usize, usize, usize) -> bool + Sync + '_ {
        self.allowed_with(causal, &[])
    }

    /// The `allowed(b, h, i, j)` of a layer joining this selection to static components
    /// (the union of PATTERNS.md: the selection admits the pair or some component does),
    /// then intersected with `j < kv_len` and, with `causal`, `j <= p`.
    pub fn allowed_with<'a>(
        &'a self,
        causal: bool,
        statics: &'a [Component],
    ) -> impl Fn(usize, usize, usize, usize) -> bool + Sync + 'a {
        move |b, h, i, j| {
            let (q_len, kv_len) = self.lens[b];
            if j >= kv_len || (causal && !causal_allowed(i, j, q_len, kv_len)) {
                return false;
            }
            let p = query_position(i, q_len, kv_len);
            self.admits(b, h, i, j)
                || statics
                    .iter()
                    .any(|c| c.admits(h, p, j as i64, kv_len, causal))
        }
    }
}
