//! The reference of Reformer's hash buckets (docs/adaptive.md, "Hash buckets").
//!
//! # The matrices, bit for bit
//!
//! For query head `h` and round `r` the matrix `R_r` has shape `[head_dim, buckets / 2]`,
//! row-major, and is drawn from BigBird's generator ([`crate::pattern::rng::BlockRng`])
//! seeded with `(seed, h, r)` in place of `(seed, h, query block)`. Its entries are standard
//! normals taken in pairs by the Box–Muller transform, in row-major order (the first of a
//! pair, then the second; an odd count drops the last second):
//!
//! ```text
//! u1 = ((next() >> 11) + 1) · 2^-53        in (0, 1]
//! u2 =  (next() >> 11)      · 2^-53        in [0, 1)
//! z0 = sqrt(-2 ln u1) · cos(2π u2),   z1 = sqrt(-2 ln u1) · sin(2π u2)
//! ```
//!
//! computed in f64 and rounded to f32. The f32 matrix is the one every backend uses (a
//! kernel receives it from the host), so one seed gives the same matrices everywhere.
//!
//! # Buckets
//!
//! `bucket_r(x)` is the index of the largest entry of `[x·R_r, −x·R_r]` (`buckets` values,
//! projections in f64), the lowest index on ties; NaN loses to every number.

use super::params::Lsh;
use crate::error::{Error, Result};
use crate::pattern::rng::BlockRng;
use crate::shape::AttnProblem;

/// 2^-53, the spacing of 53-bit uniforms.
const TWO_POW_M53: f64 = 1.0 / (1u64 << 53) as f64;

/// The hash matrix `R_r` of query head `head`, round `round`: `head_dim * buckets / 2`
/// values, row-major `[head_dim, buckets / 2]` (see the module documentation).
pub fn matrix(lsh: &Lsh, head: usize, round: usize, head_dim: usize) -> Vec<f32> {
    let n = head_dim * (lsh.buckets() as usize / 2);
    let mut rng = BlockRng::new(lsh.seed(), head as u64, round as i64);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = ((rng.next_u64() >> 11) + 1) as f64 * TWO_POW_M53;
        let u2 = (rng.next_u64() >> 11) as f64 * TWO_POW_M53;
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// `bucket(x)` for the matrix `r` (`[x.len(), half]` row-major): the argmax of
/// `[x·R, −x·R]`, lowest index on ties, NaN below every number.
pub fn bucket(x: &[f32], r: &[f32]) -> usize {
    let half = r.len() / x.len().max(1);
    let mut proj = vec![0.0f64; half];
    for (c, &v) in x.iter().enumerate() {
        for (p, &m) in proj.iter_mut().zip(&r[c * half..][..half]) {
            *p += v as f64 * m as f64;
        }
    }
    let value = |i: usize| {
        if i < half {
            proj[i]
        } else {
            -proj[i - half]
        }
    };
    let mut best = 0;
    for i in 1..2 * half {
        let (v, w) = (value(i), value(best));
        if !v.is_nan() && (w.is_nan() || v > w) {
            best = i;
        }
    }
    best
}

/// The buckets of every query row and key of a problem, per query head and round.
#[derive(Clone, Debug)]
pub struct LshBuckets {
    rounds: usize,
    num_heads: usize,
    /// Per sequence `(q_len, kv_len)`, and `(q0, k0)` offsets.
    lens: Vec<(usize, usize)>,
    offsets: Vec<(usize, usize)>,
    /// `[(row of the batch) * heads + h] * rounds + r`.
    q: Vec<u32>,
    /// `[(key of the batch) * heads + h] * rounds + r` (keys hashed with query head `h`'s
    /// matrices; under GQA a key is hashed once per query head of its kv group).
    k: Vec<u32>,
}

impl LshBuckets {
    /// Hashes `q` and `k` (layouts as in [`crate::reference::attention`]); `Error::Shape`
    /// when their lengths do not fit `problem`.
    pub fn compute(problem: &AttnProblem, lsh: &Lsh, q: &[f32], k: &[f32]) -> Result<Self> {
        if q.len() != problem.q_elems() || k.len() != problem.kv_elems() {
            return Err(Error::Shape(format!(
                "lsh: q has {} elements and k {} (the problem needs {} and {})",
                q.len(),
                k.len(),
                problem.q_elems(),
                problem.kv_elems()
            )));
        }
        let d = problem.head_dim().get() as usize;
        let (h_q, h_kv) = (problem.num_heads(), problem.num_kv_heads());
        let group = problem.group_size();
        let rounds = lsh.rounds() as usize;
        let mats: Vec<Vec<f32>> = (0..h_q)
            .flat_map(|h| (0..rounds).map(move |r| matrix(lsh, h, r, d)))
            .collect();
        let (total_q, total_k) = problem.seqs().totals();
        let mut qb = Vec::with_capacity(total_q * h_q * rounds);
        for t in 0..total_q {
            for h in 0..h_q {
                let row = &q[(t * h_q + h) * d..][..d];
                for r in 0..rounds {
                    qb.push(bucket(row, &mats[h * rounds + r]) as u32);
                }
            }
        }
        let mut kb = Vec::with_capacity(total_k * h_q * rounds);
        for t in 0..total_k {
            for h in 0..h_q {
                let row = &k[(t * h_kv + h / group) * d..][..d];
                for r in 0..rounds {
                    kb.push(bucket(row, &mats[h * rounds + r]) as u32);
                }
            }
        }
        let seqs = problem.seqs();
        Ok(LshBuckets {
            rounds,
            num_heads: h_q,
            lens: (0..seqs.batch()).map(|b| seqs.lens(b)).collect(),
            offsets: (0..seqs.batch()).map(|b| seqs.offsets(b)).collect(),
            q: qb,
            k: kb,
        })
    }

    /// The bucket of query row `i` of sequence `b`, head `h`, in round `r`.
    pub fn query_bucket(&self, b: usize, h: usize, i: usize, r: usize) -> u32 {
        self.q[((self.offsets[b].0 + i) * self.num_heads + h) * self.rounds + r]
    }

    /// The bucket of key `j` of sequence `b` under head `h`'s matrices, in round `r`.
    pub fn key_bucket(&self, b: usize, h: usize, j: usize, r: usize) -> u32 {
        self.k[((self.offsets[b].1 + j) * self.num_heads + h) * self.rounds + r]
    }

    /// The component's predicate: `j < kv_len` and some round puts query row `i` and key `j`
    /// in the same bucket (no causal mask; AND it with
    /// [`crate::reference::causal_allowed`] for a causal pattern).
    pub fn admits(&self, b: usize, h: usize, i: usize, j: usize) -> bool {
        j < self.lens[b].1
            && (0..self.rounds)
                .any(|r| self.query_bucket(b, h, i, r) == self.key_bucket(b, h, j, r))
    }
}
