//! Synthetic "needle field" heads and the quality metrics of docs/adaptive.md, "How quality
//! is measured": no model weights, seeded, exact (f64) dense softmax as the yardstick.
//!
//! # The heads
//!
//! [`NeedleField::generate`] builds one sequence of `seq_len` tokens with one kv head per
//! query head (`[1, seq_len, heads, head_dim]` like [`crate::reference::attention`]). A
//! [`HeadKind::Field`] head is written in a private orthonormal basis and then turned by a
//! seeded random rotation (so no structure is channel-aligned; dot products, block means and
//! therefore `mean_k` and `pooled_qk` do not see the rotation, `minmax` does). Coordinates,
//! with `scale = 1/sqrt(head_dim)` and every strength a *logit* (the value `scale·q·k` it adds):
//!
//! | coordinate | queries | keys | logit it adds |
//! |---|---|---|---|
//! | sink | 1 | `sink_logit·√d` on tokens `0..4` | `sink_logit` |
//! | columns | 1 | `column_logit·√d` on `columns` random tokens | `column_logit` |
//! | locality (`local_dims`) | `γ·w_i` | `γ·w_i` | `local_logit · w_i·w_j` |
//! | one per needle | `b_i` on its queries | `√d` on the needle key | `b_i` |
//! | the rest (noise) | Gaussian | Gaussian | std `noise_logit` |
//!
//! `w` is a smooth random walk shared by `q_i` and `k_i`: a mean-reverting walk (AR(1) with
//! correlation length `local_len` tokens) smoothed by a second AR(1) pass, normalised so
//! `|w_i|² ≈ 1` (`γ² = local_logit·√d`). Near tokens then add about `local_logit`, far ones a
//! slowly varying term of standard deviation `local_logit / sqrt(local_dims)` (a "semantic"
//! far field, smooth over `local_len` tokens). Each needle is a key drawn in `[B0, T/2)`
//! (`B0 = 64`) with `needle_queries` queries in `[max(key + 256, T/2), T)`; the query's
//! coefficient `b_i` is solved from its other logits so that the key holds a dense mass drawn
//! uniformly in `needle_mass` (10–50% by default; `b_i = 0` when the key already holds more).
//! A [`HeadKind::Diffuse`] head has isotropic Gaussian queries and keys, logit standard
//! deviation `diffuse_logit`, and nothing else. Values are standard normal for every head.
//!
//! The default strengths ([`FieldSpec::new`]) were fixed before any selection was measured,
//! from the description alone: a head whose mass at 32K is mostly local, with a sink, a few
//! columns and a far field, and needles at the contract's 10–50%.
//!
//! # The metrics
//!
//! [`DenseRow::compute`] is one exact causal softmax row `a_ij` (f64) with its output;
//! [`row_metrics`] scores a set of selected blocks against it: mass recall
//! `R = Σ_{allowed j} a_ij`, the oracle recall (the row's own best blocks by true mass, as
//! many as were selected), allowed and causal pair counts, the output L1 error
//! `|o' − o|₁ / |o|₁` of the renormalised sparse output `o'`, and whether the row's needle
//! key was allowed. [`Summary::of`] aggregates rows: mean, p1 and min of `R`, needle recall,
//! density `Σ allowed / Σ causal`, oracle efficiency `Σ R / Σ R_oracle` and mean L1.
//!
//! [`evaluate`] runs [`Method`]s through the f64 reference selection
//! ([`Selection::compute`](super::Selection::compute)) on a sample of rows ([`Sample`]) and
//! summarises each over the field heads and the diffuse heads separately. Each prefill
//! group is selected by its own call: the group's `q_block` rows over the keys `0..=e`, `e`
//! its last position. With `q_block` a multiple of `B` (checked) that is exactly the
//! group's selection in a whole prefill: the same candidates, forced blocks and complete
//! block summaries. Each decode row is its own call of `q_len` 1 over `p + 1` keys
//! ([`Grouping::Decode`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::params::BlockSelect;
use super::select::{Grouping, SelectInputs, Selection};
use crate::error::{Error, Result};
use crate::pattern::rng::{mix64, SplitMix64};
use crate::shape::{AttnProblem, DType, SeqLens};

/// Tokens whose keys carry the sink direction.
pub const SINK_TOKENS: usize = 4;
/// The smallest distance from a needle key to its queries, in tokens.
pub const NEEDLE_GAP: usize = 256;
/// Needle keys are drawn at or after this position.
pub const NEEDLE_FIRST_KEY: usize = 64;

/// What a head contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// Sink, locality, columns and needles over Gaussian noise.
    Field,
    /// Gaussian queries and keys only.
    Diffuse,
}

/// The parameters of a needle field (see the module documentation for their meaning).
#[derive(Clone, Debug, PartialEq)]
pub struct FieldSpec {
    /// Tokens `T`.
    pub seq_len: usize,
    /// `head_dim` (64 or 128 in the contract; any supported head_dim works).
    pub head_dim: usize,
    /// The heads, in order.
    pub heads: Vec<HeadKind>,
    /// The seed of every draw.
    pub seed: u64,
    /// Standard deviation of the noise logit of field heads.
    pub noise_logit: f64,
    /// The sink logit.
    pub sink_logit: f64,
    /// The logit of the vertical columns.
    pub column_logit: f64,
    /// How many vertical columns.
    pub columns: usize,
    /// The locality logit at distance 0.
    pub local_logit: f64,
    /// Dimensions of the locality walk.
    pub local_dims: usize,
    /// Correlation length of the walk, in tokens.
    pub local_len: f64,
    /// Needles per field head.
    pub needles: usize,
    /// Queries per needle.
    pub needle_queries: usize,
    /// The range the needle's dense mass is drawn from.
    pub needle_mass: (f64, f64),
    /// Standard deviation of the logits of diffuse heads.
    pub diffuse_logit: f64,
    /// Whether field heads are turned by a random rotation (so that no structure is
    /// channel-aligned); `false` leaves every structure direction on its own channel, which
    /// `minmax` (channel bounds) sees far more easily.
    pub rotate: bool,
}

impl FieldSpec {
    /// The default field: two field heads and one diffuse head; noise logit 1, sink 10,
    /// 4 columns at 8, locality 10 over 16 dimensions with a 128-token correlation length,
    /// 8 needles of 4 queries each at 10–50% of their mass, diffuse logit std 0.5, rotated.
    pub fn new(seq_len: usize, head_dim: usize, seed: u64) -> Self {
        FieldSpec {
            seq_len,
            head_dim,
            heads: vec![HeadKind::Field, HeadKind::Field, HeadKind::Diffuse],
            seed,
            noise_logit: 1.0,
            sink_logit: 10.0,
            column_logit: 8.0,
            columns: 4,
            local_logit: 10.0,
            local_dims: 16,
            local_len: 128.0,
            needles: 8,
            needle_queries: 4,
            needle_mass: (0.1, 0.5),
            diffuse_logit: 0.5,
            rotate: true,
        }
    }

    fn check(&self) -> Result<()> {
        let structure = 2 + self.local_dims + self.needles;
        let bad = |m: String| Err(Error::Shape(format!("needle field: {m}")));
        if self.heads.is_empty() {
            return bad("no heads".into());
        }
        if self.head_dim < structure + 4 {
            return bad(format!(
                "head_dim {} leaves fewer than 4 noise dimensions after {structure} structure ones",
                self.head_dim
            ));
        }
        if self.needles > 0 && self.seq_len < 2 * (NEEDLE_FIRST_KEY + NEEDLE_GAP) {
            return bad(format!(
                "seq_len {} too short for needles (at least {})",
                self.seq_len,
                2 * (NEEDLE_FIRST_KEY + NEEDLE_GAP)
            ));
        }
        if self.seq_len <= SINK_TOKENS + self.columns {
            return bad(format!("seq_len {} too short", self.seq_len));
        }
        let (lo, hi) = self.needle_mass;
        if !(lo > 0.0 && lo <= hi && hi < 1.0) {
            return bad(format!(
                "needle_mass ({lo}, {hi}) must satisfy 0 < lo <= hi < 1"
            ));
        }
        if self.local_len.is_nan() || self.local_len < 1.0 {
            return bad(format!("local_len {} must be at least 1", self.local_len));
        }
        Ok(())
    }
}

/// One needle: a key and the query positions that retrieve it.
#[derive(Clone, Debug, PartialEq)]
pub struct Needle {
    /// The needle key's position.
    pub key: usize,
    /// The query positions, ascending.
    pub queries: Vec<usize>,
    /// The dense mass the key holds for each query (the drawn target, or more when the key
    /// already held more without the needle direction).
    pub mass: Vec<f64>,
}

/// A generated sequence: queries, keys and values of every head, and where the structure is.
#[derive(Clone, Debug)]
pub struct NeedleField {
    spec: FieldSpec,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    needles: Vec<Vec<Needle>>,
    columns: Vec<Vec<usize>>,
}

/// Standard normal draws by Box–Muller (the second value of a pair is kept for the next call).
struct Normal {
    rng: SplitMix64,
    spare: Option<f64>,
}

impl Normal {
    fn new(seed: u64) -> Self {
        Normal {
            rng: SplitMix64::new(mix64(seed)),
            spare: None,
        }
    }

    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng.below(n as u64) as usize
    }
}

/// A seeded random orthogonal `d × d` matrix (Gram–Schmidt of Gaussian rows), row-major.
fn rotation(d: usize, rng: &mut Normal) -> Vec<f64> {
    let mut m: Vec<f64> = (0..d * d).map(|_| rng.next()).collect();
    for r in 0..d {
        for p in 0..r {
            let dot: f64 = (0..d).map(|c| m[r * d + c] * m[p * d + c]).sum();
            for c in 0..d {
                m[r * d + c] -= dot * m[p * d + c];
            }
        }
        let n = (0..d).map(|c| m[r * d + c].powi(2)).sum::<f64>().sqrt();
        for c in 0..d {
            m[r * d + c] /= n;
        }
    }
    m
}

impl NeedleField {
    /// Generates the field of `spec`. Errors: `Error::Shape` when the head_dim leaves too
    /// few noise dimensions, the sequence is too short for its needles or columns, or
    /// `needle_mass` is not within `(0, 1)`.
    pub fn generate(spec: &FieldSpec) -> Result<Self> {
        spec.check()?;
        let (t, d, nh) = (spec.seq_len, spec.head_dim, spec.heads.len());
        let mut q = vec![0.0f32; t * nh * d];
        let mut k = vec![0.0f32; t * nh * d];
        let mut v = vec![0.0f32; t * nh * d];
        let mut needles = Vec::with_capacity(nh);
        let mut columns = Vec::with_capacity(nh);
        for (h, &kind) in spec.heads.iter().enumerate() {
            let mut rng = Normal::new(spec.seed ^ mix64(h as u64 + 1));
            let (hq, hk, hn, hc) = match kind {
                HeadKind::Field => field_head(spec, &mut rng),
                HeadKind::Diffuse => {
                    let s = spec.diffuse_logit.sqrt();
                    let hq = (0..t * d).map(|_| s * rng.next()).collect();
                    let hk = (0..t * d).map(|_| s * rng.next()).collect();
                    (hq, hk, Vec::new(), Vec::new())
                }
            };
            for i in 0..t {
                let at = (i * nh + h) * d;
                for c in 0..d {
                    q[at + c] = hq[i * d + c] as f32;
                    k[at + c] = hk[i * d + c] as f32;
                    v[at + c] = rng.next() as f32;
                }
            }
            needles.push(hn);
            columns.push(hc);
        }
        Ok(NeedleField {
            spec: spec.clone(),
            q,
            k,
            v,
            needles,
            columns,
        })
    }

    /// The spec it was generated from.
    pub fn spec(&self) -> &FieldSpec {
        &self.spec
    }

    /// Queries, `[seq_len, heads, head_dim]`.
    pub fn q(&self) -> &[f32] {
        &self.q
    }

    /// Keys, `[seq_len, heads, head_dim]`.
    pub fn k(&self) -> &[f32] {
        &self.k
    }

    /// Values, `[seq_len, heads, head_dim]`.
    pub fn v(&self) -> &[f32] {
        &self.v
    }

    /// The attention scale, `1/sqrt(head_dim)`.
    pub fn scale(&self) -> f32 {
        1.0 / (self.spec.head_dim as f32).sqrt()
    }

    /// The needles of head `h` (empty for a diffuse head).
    pub fn needles(&self, h: usize) -> &[Needle] {
        &self.needles[h]
    }

    /// The vertical column positions of head `h`, ascending.
    pub fn columns(&self, h: usize) -> &[usize] {
        &self.columns[h]
    }

    /// The needle key that query position `p` of head `h` retrieves, if any.
    pub fn needle_of(&self, h: usize, p: usize) -> Option<usize> {
        self.needles[h]
            .iter()
            .find(|n| n.queries.binary_search(&p).is_ok())
            .map(|n| n.key)
    }

    /// Replaces the key of head `h` at position `j` (tests plant structure this way).
    pub fn set_key(&mut self, h: usize, j: usize, key: &[f32]) {
        let (nh, d) = (self.spec.heads.len(), self.spec.head_dim);
        self.k[(j * nh + h) * d..][..d].copy_from_slice(key);
    }

    /// Replaces the query of head `h` at position `i`.
    pub fn set_query(&mut self, h: usize, i: usize, query: &[f32]) {
        let (nh, d) = (self.spec.heads.len(), self.spec.head_dim);
        self.q[(i * nh + h) * d..][..d].copy_from_slice(query);
    }

    /// Declares that query position `p` of head `h` retrieves the key at `key` (tests).
    pub fn add_needle(&mut self, h: usize, key: usize, p: usize) {
        self.needles[h].push(Needle {
            key,
            queries: vec![p],
            mass: vec![f64::NAN],
        });
    }

    /// The problem of the whole sequence: one sequence, `T` rows over `T` keys.
    pub fn problem(&self) -> Result<AttnProblem> {
        self.call_problem(self.spec.seq_len, self.spec.seq_len)
    }

    fn call_problem(&self, q_len: usize, kv_len: usize) -> Result<AttnProblem> {
        let nh = self.spec.heads.len();
        let seqs = SeqLens::Uniform {
            batch: 1,
            q_len,
            kv_len,
        };
        AttnProblem::new(seqs, nh, nh, self.spec.head_dim as u32, DType::BF16)
    }
}

/// One field head in its own coordinates (rotated at the end): q, k `[T, d]` f64, its needles
/// and columns.
fn field_head(spec: &FieldSpec, rng: &mut Normal) -> (Vec<f64>, Vec<f64>, Vec<Needle>, Vec<usize>) {
    let (t, d) = (spec.seq_len, spec.head_dim);
    let sd = (d as f64).sqrt();
    let scale = 1.0 / sd;
    let (c_sink, c_col, c_loc) = (0, 1, 2);
    let c_needle = c_loc + spec.local_dims;
    let c_noise = c_needle + spec.needles;
    let noise_dims = d - c_noise;
    // scale·σ²·sqrt(noise_dims) = noise_logit.
    let sigma = (spec.noise_logit * sd / (noise_dims as f64).sqrt()).sqrt();
    let mut q = vec![0.0f64; t * d];
    let mut k = vec![0.0f64; t * d];
    for i in 0..t {
        for c in c_noise..d {
            q[i * d + c] = sigma * rng.next();
            k[i * d + c] = sigma * rng.next();
        }
        q[i * d + c_sink] = 1.0;
        q[i * d + c_col] = 1.0;
    }
    for j in 0..SINK_TOKENS {
        k[j * d + c_sink] = spec.sink_logit * sd;
    }
    let mut cols: Vec<usize> = Vec::new();
    while cols.len() < spec.columns {
        let c = SINK_TOKENS + rng.below(t - SINK_TOKENS);
        if !cols.contains(&c) {
            cols.push(c);
        }
    }
    cols.sort_unstable();
    for &c in &cols {
        k[c * d + c_col] = spec.column_logit * sd;
    }
    // The walk: AR(1) twice, each with rho = exp(-1/local_len), then normalised per dim.
    let rho = (-1.0 / spec.local_len).exp();
    let innov = (1.0 - rho * rho).sqrt();
    let gamma = (spec.local_logit * sd).sqrt();
    for c in 0..spec.local_dims {
        let (mut a, mut b) = (rng.next(), rng.next());
        let mut w = Vec::with_capacity(t);
        for _ in 0..t {
            a = rho * a + innov * rng.next();
            b = rho * b + innov * a;
            w.push(b);
        }
        let mean = w.iter().sum::<f64>() / t as f64;
        let var = w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / t as f64;
        let norm = 1.0 / (var * spec.local_dims as f64).sqrt();
        for (i, x) in w.iter().enumerate() {
            let y = gamma * (x - mean) * norm;
            q[i * d + c_loc + c] = y;
            k[i * d + c_loc + c] = y;
        }
    }
    // Needles: keys in [64, T/2), queries in [max(key + gap, T/2), T), all distinct.
    let mut needles = Vec::with_capacity(spec.needles);
    let mut used: Vec<usize> = Vec::new();
    for n in 0..spec.needles {
        let key = NEEDLE_FIRST_KEY + rng.below(t / 2 - NEEDLE_FIRST_KEY);
        k[key * d + c_needle + n] = sd;
        let lo = (key + NEEDLE_GAP).max(t / 2);
        let mut queries = Vec::with_capacity(spec.needle_queries);
        while queries.len() < spec.needle_queries {
            let p = lo + rng.below(t - lo);
            if !used.contains(&p) {
                used.push(p);
                queries.push(p);
            }
        }
        queries.sort_unstable();
        let mut mass = Vec::with_capacity(queries.len());
        for &p in &queries {
            let target =
                spec.needle_mass.0 + (spec.needle_mass.1 - spec.needle_mass.0) * rng.uniform();
            let qi = &q[p * d..][..d];
            let logits: Vec<f64> = (0..=p)
                .map(|j| {
                    scale
                        * qi.iter()
                            .zip(&k[j * d..][..d])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let rest: f64 = logits
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != key)
                .map(|(_, &l)| (l - m).exp())
                .sum();
            // exp(l_key + b) / (rest + exp(l_key + b)) = target, in units of exp(m).
            let boost = ((target / (1.0 - target) * rest).ln() - (logits[key] - m)).max(0.0);
            q[p * d + c_needle + n] = boost / (scale * sd);
            let e = (logits[key] - m + boost).exp();
            mass.push(e / (rest + e));
        }
        needles.push(Needle { key, queries, mass });
    }
    if !spec.rotate {
        return (q, k, needles, cols);
    }
    let rot = rotation(d, rng);
    let turn = |x: &mut Vec<f64>| {
        let mut row = vec![0.0f64; d];
        for i in 0..t {
            let src = &x[i * d..][..d];
            for (r, out) in row.iter_mut().enumerate() {
                *out = rot[r * d..][..d].iter().zip(src).map(|(a, b)| a * b).sum();
            }
            x[i * d..][..d].copy_from_slice(&row);
        }
    };
    turn(&mut q);
    turn(&mut k);
    (q, k, needles, cols)
}

/// One exact dense causal softmax row of head `h` at position `p` (f64 arithmetic on the f32
/// inputs), with its output.
#[derive(Clone, Debug)]
pub struct DenseRow {
    /// The head.
    pub head: usize,
    /// The query position.
    pub pos: usize,
    /// `a_pj` for `j = 0..=p`, summing to 1.
    pub a: Vec<f64>,
    /// The dense output `Σ_j a_pj v_j`.
    pub out: Vec<f64>,
}

impl DenseRow {
    /// The row of head `h` at position `p` (`p < seq_len`).
    pub fn compute(field: &NeedleField, h: usize, p: usize) -> Self {
        let (nh, d) = (field.spec.heads.len(), field.spec.head_dim);
        let scale = field.scale() as f64;
        let qi: Vec<f64> = field.q[(p * nh + h) * d..][..d]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let mut a: Vec<f64> = (0..=p)
            .map(|j| {
                let kj = &field.k[(j * nh + h) * d..][..d];
                scale * qi.iter().zip(kj).map(|(x, &y)| x * y as f64).sum::<f64>()
            })
            .collect();
        let m = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        a.iter_mut().for_each(|x| *x = (*x - m).exp());
        let z: f64 = a.iter().sum();
        a.iter_mut().for_each(|x| *x /= z);
        let mut out = vec![0.0f64; d];
        for (j, &w) in a.iter().enumerate() {
            let vj = &field.v[(j * nh + h) * d..][..d];
            for (o, &y) in out.iter_mut().zip(vj) {
                *o += w * y as f64;
            }
        }
        DenseRow {
            head: h,
            pos: p,
            a,
            out,
        }
    }

    /// The true mass of each block of `block` keys visible from the row (`0..=p / block`).
    pub fn block_mass(&self, block: usize) -> Vec<f64> {
        self.a.chunks(block).map(|c| c.iter().sum()).collect()
    }
}

/// What one row's selection achieves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowMetrics {
    /// Mass recall `R = Σ_{allowed j <= p} a_pj`.
    pub recall: f64,
    /// The recall of the row's own best blocks by true mass, as many as were selected.
    pub oracle: f64,
    /// Allowed causal pairs of the row.
    pub allowed: usize,
    /// Causal pairs of the row, `p + 1`.
    pub causal: usize,
    /// `|o' − o|₁`, `o'` the sparse output renormalised over the allowed keys (`o' = 0` when
    /// nothing is allowed).
    pub l1_err: f64,
    /// `|o|₁`, the dense output's L1 norm.
    pub out_norm: f64,
    /// For a needle query: whether its needle key was allowed.
    pub needle: Option<bool>,
}

/// Scores the selected `blocks` (of `block` keys, any order, duplicates ignored, blocks past
/// the row ignored) against the dense row; `needle` is the row's needle key, if any.
pub fn row_metrics(
    field: &NeedleField,
    row: &DenseRow,
    blocks: &[i64],
    block: usize,
    needle: Option<usize>,
) -> RowMetrics {
    let (nh, d) = (field.spec.heads.len(), field.spec.head_dim);
    let p = row.pos;
    let n_vis = p / block + 1;
    let mut chosen = vec![false; n_vis];
    for &b in blocks {
        if b >= 0 && (b as usize) < n_vis {
            chosen[b as usize] = true;
        }
    }
    let mass = row.block_mass(block);
    let recall: f64 = (0..n_vis).filter(|&b| chosen[b]).map(|b| mass[b]).sum();
    let count = chosen.iter().filter(|&&c| c).count();
    let mut sorted = mass.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let oracle: f64 = sorted[..count].iter().sum();
    let allowed: usize = (0..n_vis)
        .filter(|&b| chosen[b])
        .map(|b| ((b + 1) * block).min(p + 1) - b * block)
        .sum();
    let mut out = vec![0.0f64; d];
    if recall > 0.0 {
        for b in (0..n_vis).filter(|&b| chosen[b]) {
            for j in b * block..((b + 1) * block).min(p + 1) {
                let w = row.a[j] / recall;
                let vj = &field.v[(j * nh + row.head) * d..][..d];
                for (o, &y) in out.iter_mut().zip(vj) {
                    *o += w * y as f64;
                }
            }
        }
    }
    let l1_err: f64 = out.iter().zip(&row.out).map(|(a, b)| (a - b).abs()).sum();
    let out_norm: f64 = row.out.iter().map(|x| x.abs()).sum();
    RowMetrics {
        recall,
        oracle,
        allowed,
        causal: p + 1,
        l1_err,
        out_norm,
        needle: needle.map(|key| key <= p && chosen[key / block]),
    }
}

/// Metrics aggregated over rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Rows summarised.
    pub rows: usize,
    /// Mean mass recall.
    pub mean_recall: f64,
    /// The 1st percentile of the recall (the value at rank `floor(0.01·(rows − 1))` in
    /// ascending order).
    pub p1_recall: f64,
    /// The smallest recall.
    pub min_recall: f64,
    /// Needle queries among the rows.
    pub needle_rows: usize,
    /// Needle queries whose key was allowed, over `needle_rows` (NaN when there are none).
    pub needle_recall: f64,
    /// `Σ allowed / Σ causal` pairs.
    pub density: f64,
    /// `Σ R / Σ R_oracle`.
    pub oracle_efficiency: f64,
    /// The relative output L1 error of the rows together, `Σ |o' − o|₁ / Σ |o|₁`.
    pub l1: f64,
}

impl Summary {
    /// Aggregates `rows` (all NaN but `rows` when it is empty).
    pub fn of(rows: &[RowMetrics]) -> Self {
        let n = rows.len();
        let mut r: Vec<f64> = rows.iter().map(|m| m.recall).collect();
        r.sort_by(|a, b| a.total_cmp(b));
        let nf = n as f64;
        let needles: Vec<bool> = rows.iter().filter_map(|m| m.needle).collect();
        let sum = |f: fn(&RowMetrics) -> f64| rows.iter().map(f).sum::<f64>();
        Summary {
            rows: n,
            mean_recall: sum(|m| m.recall) / nf,
            p1_recall: r
                .get((0.01 * (n.max(1) - 1) as f64) as usize)
                .copied()
                .unwrap_or(f64::NAN),
            min_recall: r.first().copied().unwrap_or(f64::NAN),
            needle_rows: needles.len(),
            needle_recall: needles.iter().filter(|&&x| x).count() as f64 / needles.len() as f64,
            density: sum(|m| m.allowed as f64) / sum(|m| m.causal as f64),
            oracle_efficiency: sum(|m| m.recall) / sum(|m| m.oracle),
            l1: sum(|m| m.l1_err) / sum(|m| m.out_norm),
        }
    }
}

/// A selection method to evaluate: a component and the grouping it runs with.
#[derive(Clone, Debug)]
pub struct Method {
    /// A label for reports.
    pub name: String,
    /// The component.
    pub select: BlockSelect,
    /// Prefill groups or decode rows.
    pub grouping: Grouping,
}

/// Which rows are evaluated. Per head: `strata` random rows groups, one per equal stratum of
/// `[64, T)` (a random 64-aligned window of the stratum, `rows_per_stratum` distinct random
/// rows in it), plus every needle query of the head. Decode methods evaluate the sampled
/// rows at positions `>= decode_from · T` (needle queries lie in `[T/2, T)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Strata of the random rows.
    pub strata: usize,
    /// Random rows per stratum (at most 64).
    pub rows_per_stratum: usize,
    /// Decode rows start at this fraction of the sequence.
    pub decode_from: f64,
    /// The seed of the row draw.
    pub seed: u64,
}

impl Sample {
    /// The rows of head `h` of `field`, ascending and distinct.
    pub fn rows(&self, field: &NeedleField, h: usize) -> Vec<usize> {
        let t = field.spec.seq_len;
        let mut rng = SplitMix64::new(mix64(self.seed ^ 0x0005_a3b1e));
        let mut rows: Vec<usize> = Vec::new();
        let lo = 64.min(t - 1);
        let span = t - lo;
        for s in 0..self.strata {
            let a = lo + span * s / self.strata;
            let b = (lo + span * (s + 1) / self.strata).max(a + 1);
            let windows = (b - a).div_ceil(64);
            let w0 = a + 64 * rng.below(windows as u64) as usize;
            let w1 = (w0 + 64).min(b);
            let mut pick: Vec<usize> = (w0..w1).collect();
            for _ in 0..self.rows_per_stratum.min(pick.len()) {
                let at = rng.below(pick.len() as u64) as usize;
                rows.push(pick.swap_remove(at));
            }
        }
        for n in field.needles(h) {
            rows.extend_from_slice(&n.queries);
        }
        rows.sort_unstable();
        rows.dedup();
        rows
    }
}

/// One method's results: over the field heads and over the diffuse heads.
#[derive(Clone, Debug)]
pub struct MethodReport {
    /// The method's label.
    pub name: String,
    /// Field heads, rows pooled.
    pub field: Summary,
    /// Field heads, the rows that are not needle queries.
    pub field_plain: Summary,
    /// Diffuse heads, rows pooled.
    pub diffuse: Summary,
}

/// How the dense mass of the field heads' evaluated rows splits (a description of the
/// generated heads, for the report).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FieldStats {
    /// Mean mass on the sink tokens `0..4`.
    pub sink: f64,
    /// Mean mass on the 256 keys ending at the row (`p − 255..=p`).
    pub local: f64,
    /// Mean mass on the vertical columns.
    pub columns: f64,
    /// Mean mass of the needle key over its queries.
    pub needle: f64,
    /// The smallest and largest needle mass.
    pub needle_range: (f64, f64),
}

/// Runs `f` over `0..n` on `threads` threads (work taken in order), results in index order.
pub fn par_map<R: Send>(n: usize, threads: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    let parts: Vec<Vec<(usize, R)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break mine;
                        }
                        mine.push((i, f(i)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect()
    });
    for (i, r) in parts.into_iter().flatten() {
        out[i] = Some(r);
    }
    out.into_iter()
        .map(|r| r.expect("every index ran"))
        .collect()
}

/// The blocks `method` selects for the rows `rows[h]` (ascending positions) of every head
/// `h`: `[head][row index]`, ascending. Prefill rows are selected by one call per group
/// (its `q_block` rows over the keys up to the group's end: the whole prefill's selection
/// when `q_block` is a multiple of the block), decode rows by one call each (`q_len` 1 over
/// `p + 1` keys). Errors: those of [`Selection::compute`], and `Error::Pattern` for a
/// prefill method whose `q_block` is not a multiple of its block.
pub fn selected_blocks(
    field: &NeedleField,
    method: &Method,
    rows: &[Vec<usize>],
    threads: usize,
) -> Result<Vec<Vec<Vec<i64>>>> {
    let sel = &method.select;
    let (t, nh, d) = (
        field.spec.seq_len,
        field.spec.heads.len(),
        field.spec.head_dim,
    );
    let tok = nh * d;
    let scale = field.scale();
    // One call per distinct group (prefill) or position (decode), all heads at once.
    let key_of = |p: usize| -> usize {
        match method.grouping {
            Grouping::Prefill => p / sel.q_block() as usize,
            Grouping::Decode => p,
        }
    };
    if method.grouping == Grouping::Prefill && sel.q_block() % sel.block() != 0 {
        return Err(Error::Pattern(format!(
            "{}: per-group evaluation needs q_block ({}) a multiple of block ({})",
            method.name,
            sel.q_block(),
            sel.block()
        )));
    }
    let mut calls: Vec<usize> = rows.iter().flatten().map(|&p| key_of(p)).collect();
    calls.sort_unstable();
    calls.dedup();
    let results = par_map(calls.len(), threads, |c| -> Result<Vec<Vec<i64>>> {
        let (q0, q_len, kv_len) = match method.grouping {
            Grouping::Prefill => {
                let qb = sel.q_block() as usize;
                let q0 = calls[c] * qb;
                let end = (q0 + qb).min(t);
                (q0, end - q0, end)
            }
            Grouping::Decode => (calls[c], 1, calls[c] + 1),
        };
        let problem = field.call_problem(q_len, kv_len)?;
        let x = SelectInputs {
            q: &field.q[q0 * tok..(q0 + q_len) * tok],
            k: &field.k[..kv_len * tok],
            scale,
            grouping: method.grouping,
            given: None,
        };
        let s = Selection::compute(&problem, sel, &x)?;
        Ok((0..nh).map(|h| s.blocks(0, h, 0).to_vec()).collect())
    });
    let results: Vec<Vec<Vec<i64>>> = results.into_iter().collect::<Result<_>>()?;
    Ok((0..nh)
        .map(|h| {
            rows[h]
                .iter()
                .map(|&p| {
                    let c = calls
                        .binary_search(&key_of(p))
                        .expect("every row has a call");
                    results[c][h].clone()
                })
                .collect()
        })
        .collect())
}

/// Evaluates `methods` on `field` over the rows of `sample`, on `threads` threads; returns
/// one report per method (in order) and the field heads' mass split. Errors are those of
/// [`Selection::compute`] and a prefill method whose `q_block` is not a multiple of its
/// block.
pub fn evaluate(
    field: &NeedleField,
    methods: &[Method],
    sample: &Sample,
    threads: usize,
) -> Result<(Vec<MethodReport>, FieldStats)> {
    let nh = field.spec.heads.len();
    let t = field.spec.seq_len;
    let rows: Vec<Vec<usize>> = (0..nh).map(|h| sample.rows(field, h)).collect();
    let decode_lo = (sample.decode_from * t as f64) as usize;
    let decode_rows: Vec<Vec<usize>> = rows
        .iter()
        .map(|r| r.iter().copied().filter(|&p| p >= decode_lo).collect())
        .collect();
    let mut selections = Vec::with_capacity(methods.len());
    for m in methods {
        let rs = match m.grouping {
            Grouping::Prefill => &rows,
            Grouping::Decode => &decode_rows,
        };
        selections.push(selected_blocks(field, m, rs, threads)?);
    }
    // Every (head, row): the dense row once, then every method's metrics.
    let work: Vec<(usize, usize, usize)> = rows
        .iter()
        .enumerate()
        .flat_map(|(h, r)| r.iter().enumerate().map(move |(ri, &p)| (h, ri, p)))
        .collect();
    type Stat = [f64; 4];
    let per_row: Vec<(Vec<Option<RowMetrics>>, Option<Stat>)> = par_map(work.len(), threads, |w| {
        let (h, ri, p) = work[w];
        let row = DenseRow::compute(field, h, p);
        let needle = field.needle_of(h, p);
        let metrics = methods
            .iter()
            .zip(&selections)
            .map(|(m, s)| {
                let blocks = match m.grouping {
                    Grouping::Prefill => &s[h][ri],
                    Grouping::Decode => {
                        let at = decode_rows[h].binary_search(&p).ok()?;
                        &s[h][at]
                    }
                };
                Some(row_metrics(
                    field,
                    &row,
                    blocks,
                    m.select.block() as usize,
                    needle,
                ))
            })
            .collect();
        let stat = (field.spec.heads[h] == HeadKind::Field).then(|| {
            let sink: f64 = row.a.iter().take(SINK_TOKENS).sum();
            let local: f64 = row.a[p.saturating_sub(255)..].iter().sum();
            let cols: f64 = field
                .columns(h)
                .iter()
                .filter(|&&c| c <= p)
                .map(|&c| row.a[c])
                .sum();
            let nd = needle.map_or(f64::NAN, |key| row.a[key]);
            [sink, local, cols, nd]
        });
        (metrics, stat)
    });
    let reports = methods
        .iter()
        .enumerate()
        .map(|(mi, m)| {
            let pick = |kind: HeadKind, plain: bool| -> Vec<RowMetrics> {
                work.iter()
                    .zip(&per_row)
                    .filter(|((h, _, _), _)| field.spec.heads[*h] == kind)
                    .filter_map(|(_, (ms, _))| ms[mi])
                    .filter(|r| !plain || r.needle.is_none())
                    .collect()
            };
            MethodReport {
                name: m.name.clone(),
                field: Summary::of(&pick(HeadKind::Field, false)),
                field_plain: Summary::of(&pick(HeadKind::Field, true)),
                diffuse: Summary::of(&pick(HeadKind::Diffuse, false)),
            }
        })
        .collect();
    let stats: Vec<Stat> = per_row.iter().filter_map(|(_, s)| *s).collect();
    let mean = |i: usize| stats.iter().map(|s| s[i]).sum::<f64>() / stats.len() as f64;
    let nd: Vec<f64> = stats.iter().map(|s| s[3]).filter(|x| !x.is_nan()).collect();
    let stats = FieldStats {
        sink: mean(0),
        local: mean(1),
        columns: mean(2),
        needle: nd.iter().sum::<f64>() / nd.len() as f64,
        needle_range: (
            nd.iter().cloned().fold(f64::INFINITY, f64::min),
            nd.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        ),
    };
    Ok((reports, stats))
}
