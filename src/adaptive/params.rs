//! The adaptive components' parameters: typed values, their JSON form and validation.
//!
//! Every type has private fields and a validating constructor; deserialization goes through
//! the same constructor, so a value that exists is valid.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pattern::MAX_PARAM;

/// `v` if it lies in `min..=MAX_PARAM`, else an `Error::Pattern` naming `what`.
fn bounded(what: &str, v: i64, min: i64) -> Result<i64> {
    if v < min || v > MAX_PARAM {
        Err(Error::Pattern(format!(
            "{what} must be in {min}..={MAX_PARAM} (got {v})"
        )))
    } else {
        Ok(v)
    }
}

/// A fraction in `(0, 1]` (NaN rejected), else an `Error::Pattern` naming `what`.
fn fraction(what: &str, v: f64) -> Result<f64> {
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(Error::Pattern(format!(
            "{what} must be in (0, 1] (got {v})"
        )))
    }
}

/// The message of a pattern error, for serde's `try_from`.
fn message(e: Error) -> String {
    match e {
        Error::Pattern(m) => m,
        other => other.to_string(),
    }
}

/// The smallest block size `B` a selection component accepts.
pub const MIN_BLOCK: i64 = 16;
/// The largest block size `B` a selection component accepts.
pub const MAX_BLOCK: i64 = 4096;

/// How key blocks are scored (docs/adaptive.md, "Scores"). All scores are natural-log domain
/// energies. JSON: `"mean_k"`, `"pooled_qk"`, `"minmax"`, `"given"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Score {
    /// `ln Σ_{i∈G, J·B <= p_i} exp(scale·q_i·k̄_J + o_J)`: the group's total energy on the block
    /// mean (FlashPrefill). A mass-like score.
    MeanK,
    /// `scale·q̄_G·k̄_J + o_J`: the mean query against the mean key (MoBA, SpargeAttn,
    /// MInference). Treated as mass-like (a logit) under `share: kv_group`.
    PooledQk,
    /// `max_{i∈G} scale·Σ_c max(q_ic·m_Jc, q_ic·M_Jc)`: an upper bound of every row's logit
    /// over the block from its channel minima `m` and maxima `M` (Quest). Under
    /// `share: kv_group` heads combine by maximum.
    Minmax,
    /// Read from a caller tensor ([`GivenScores`](super::GivenScores)), one f32 per
    /// (sequence, head, query group, key block). Treated as mass-like (a logit) under
    /// `share: kv_group` when given per query head.
    Given,
}

impl Score {
    /// Whether heads of a kv group combine by `ln Σ exp` (mass-like) rather than by maximum.
    pub fn is_mass_like(self) -> bool {
        !matches!(self, Score::Minmax)
    }
}

/// Which query heads share one selection. JSON: `"head"` (the default) or `"kv_group"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Share {
    /// One selection per query head.
    #[default]
    Head,
    /// One selection for all query heads of a kv head (NSA, FlashPrefill under GQA): the
    /// heads' scores are combined per block ([`Score::is_mass_like`]) before choosing.
    KvGroup,
}

/// How the blocks of `C \ F` are chosen from the total order (docs/adaptive.md, "Choice").
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Choice {
    /// `top_k`: the first `k` blocks of `C \ F` in the order.
    TopK {
        /// Blocks chosen by content beyond the forced ones.
        k: i64,
    },
    /// `top_p`: blocks are appended in order until the cumulative softmax mass over `C`,
    /// `F`'s mass included, reaches `p` (the crossing block is kept); the count is then
    /// clamped to `[min_k, max_k]`. In the reference the masses are f64 and summed in this
    /// order: `F` ascending, then the appended blocks in rank order; NaN scores weigh 0 (see
    /// [`masses`](super::masses)). A `p` of 1 may, through rounding, keep every candidate.
    TopP {
        /// The mass to reach, in `(0, 1]`.
        p: f64,
        /// Lower clamp of the content-chosen count.
        min_k: i64,
        /// Upper clamp of the content-chosen count.
        max_k: i64,
    },
    /// `top_rel`: `J ∈ C \ F` is chosen when `s_J >= ln(alpha) + max_C s`; the count is
    /// clamped to `[min_k, max_k]` following the order.
    TopRel {
        /// The threshold relative to the best block, in `(0, 1]`.
        alpha: f64,
        /// Lower clamp of the content-chosen count.
        min_k: i64,
        /// Upper clamp of the content-chosen count.
        max_k: i64,
    },
}

impl Choice {
    /// The most blocks this rule can choose by content (`k`, or `max_k`).
    pub fn max_count(&self) -> i64 {
        match *self {
            Choice::TopK { k } => k,
            Choice::TopP { max_k, .. } | Choice::TopRel { max_k, .. } => max_k,
        }
    }

    /// The component's JSON name: `top_k`, `top_p` or `top_rel`.
    pub fn name(&self) -> &'static str {
        match self {
            Choice::TopK { .. } => "top_k",
            Choice::TopP { .. } => "top_p",
            Choice::TopRel { .. } => "top_rel",
        }
    }
}

/// A block-selection component: `top_k`, `top_p` or `top_rel` (docs/adaptive.md, "Selection
/// components"). Construct with [`BlockSelect::new`] and the `with_*` setters, or parse the
/// JSON form with [`AdaptiveComponent::from_json`].
///
/// Defaults where the contract gives none: `keep_sinks` and `keep_local` 0, `score`
/// `mean_k`, `share` `head`, `reselect_every` 1, `q_block` `B`, `min_k` 0 and `max_k`
/// unbounded ([`MAX_PARAM`]).
///
/// Validation: `B` a power of two in `16..=4096`; `q_block`, `reselect_every` at least 1;
/// `k`, `keep_sinks`, `keep_local`, `min_k`, `max_k` non-negative; `p`, `alpha` in
/// `(0, 1]`; `min_k <= max_k`; and a component that could never select a block (nothing
/// forced and `k = 0` or `max_k = 0`) is rejected. Errors are [`Error::Pattern`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockSelect {
    block: i64,
    q_block: i64,
    choice: Choice,
    keep_sinks: i64,
    keep_local: i64,
    score: Score,
    share: Share,
    reselect_every: i64,
}

impl BlockSelect {
    /// A component with block size `block` choosing by `choice`, scoring `score`, nothing
    /// forced, `q_block = block`, `share: head`, `reselect_every` 1.
    pub fn new(block: i64, choice: Choice, score: Score) -> Result<Self> {
        Self::build(block, None, choice, 0, 0, score, Share::Head, 1)
    }

    /// The same component forcing the first `keep_sinks` blocks and the `keep_local` blocks
    /// ending at the query's own block.
    pub fn with_forced(self, keep_sinks: i64, keep_local: i64) -> Result<Self> {
        Self::build(
            self.block,
            Some(self.q_block),
            self.choice,
            keep_sinks,
            keep_local,
            self.score,
            self.share,
            self.reselect_every,
        )
    }

    /// The same component scoring query rows in groups of `q_block` (prefill).
    pub fn with_q_block(self, q_block: i64) -> Result<Self> {
        Self::build(
            self.block,
            Some(q_block),
            self.choice,
            self.keep_sinks,
            self.keep_local,
            self.score,
            self.share,
            self.reselect_every,
        )
    }

    /// The same component with another sharing mode.
    pub fn with_share(self, share: Share) -> Self {
        BlockSelect { share, ..self }
    }

    /// The same component reusing a decode selection for `n >= 1` steps.
    pub fn with_reselect_every(self, n: i64) -> Result<Self> {
        Self::build(
            self.block,
            Some(self.q_block),
            self.choice,
            self.keep_sinks,
            self.keep_local,
            self.score,
            self.share,
            n,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        block: i64,
        q_block: Option<i64>,
        choice: Choice,
        keep_sinks: i64,
        keep_local: i64,
        score: Score,
        share: Share,
        reselect_every: i64,
    ) -> Result<Self> {
        let name = choice.name();
        if !(MIN_BLOCK..=MAX_BLOCK).contains(&block) || !(block as u64).is_power_of_two() {
            return Err(Error::Pattern(format!(
                "{name} block must be a power of two in {MIN_BLOCK}..={MAX_BLOCK} (got {block})"
            )));
        }
        let q_block = bounded(&format!("{name} q_block"), q_block.unwrap_or(block), 1)?;
        let keep_sinks = bounded(&format!("{name} keep_sinks"), keep_sinks, 0)?;
        let keep_local = bounded(&format!("{name} keep_local"), keep_local, 0)?;
        let reselect_every = bounded(&format!("{name} reselect_every"), reselect_every, 1)?;
        let choice = match choice {
            Choice::TopK { k } => Choice::TopK {
                k: bounded("top_k k", k, 0)?,
            },
            Choice::TopP { p, min_k, max_k } => {
                let (min_k, max_k) = clamps(name, min_k, max_k)?;
                Choice::TopP {
                    p: fraction("top_p p", p)?,
                    min_k,
                    max_k,
                }
            }
            Choice::TopRel {
                alpha,
                min_k,
                max_k,
            } => {
                let (min_k, max_k) = clamps(name, min_k, max_k)?;
                Choice::TopRel {
                    alpha: fraction("top_rel alpha", alpha)?,
                    min_k,
                    max_k,
                }
            }
        };
        if choice.max_count() == 0 && keep_sinks == 0 && keep_local == 0 {
            let field = if matches!(choice, Choice::TopK { .. }) {
                "k"
            } else {
                "max_k"
            };
            return Err(Error::Pattern(format!(
                "{name} selects nothing: {field} is 0 and no block is forced \
                 (keep_sinks and keep_local are 0)"
            )));
        }
        Ok(BlockSelect {
            block,
            q_block,
            choice,
            keep_sinks,
            keep_local,
            score,
            share,
            reselect_every,
        })
    }

    /// The key block size `B`.
    pub fn block(&self) -> i64 {
        self.block
    }

    /// Query rows per group in a prefill call (rows with equal `floor(p / q_block)`).
    pub fn q_block(&self) -> i64 {
        self.q_block
    }

    /// The choice rule and its parameters.
    pub fn choice(&self) -> Choice {
        self.choice
    }

    /// Leading blocks forced into every selection.
    pub fn keep_sinks(&self) -> i64 {
        self.keep_sinks
    }

    /// Blocks forced that end at (and include) the group's last block.
    pub fn keep_local(&self) -> i64 {
        self.keep_local
    }

    /// The block score.
    pub fn score(&self) -> Score {
        self.score
    }

    /// Which heads share a selection.
    pub fn share(&self) -> Share {
        self.share
    }

    /// Decode steps a selection is reused for. The reference evaluates one step, so this is
    /// validated and carried, not applied, here; [`super::AdaptiveDecode`] applies it (the rule:
    /// [`super::decode`]).
    pub fn reselect_every(&self) -> i64 {
        self.reselect_every
    }

    /// The candidate blocks `C(G) = {J : J·B <= max_p, J·B < kv_len}` of a group whose last
    /// row sits at position `max_p`, as the range `0..n` (empty when `max_p < 0`).
    pub fn candidates(&self, max_p: i64, kv_len: usize) -> std::ops::Range<i64> {
        if max_p < 0 || kv_len == 0 {
            return 0..0;
        }
        let by_position = max_p.div_euclid(self.block) + 1;
        let by_keys = (kv_len as i64 + self.block - 1) / self.block;
        0..by_position.min(by_keys)
    }

    /// The forced blocks `F(G) = {J < keep_sinks} ∪ {Jmax − keep_local < J <= Jmax}`,
    /// `Jmax = floor(max_p / B)`, restricted to the candidates (a forced block never lies
    /// past the group's last position or the keys), ascending.
    pub fn forced(&self, max_p: i64, kv_len: usize) -> Vec<i64> {
        let c = self.candidates(max_p, kv_len);
        let j_max = max_p.div_euclid(self.block);
        c.filter(|&j| j < self.keep_sinks || (j_max - self.keep_local < j && j <= j_max))
            .collect()
    }
}

fn clamps(name: &str, min_k: i64, max_k: i64) -> Result<(i64, i64)> {
    let min_k = bounded(&format!("{name} min_k"), min_k, 0)?;
    let max_k = bounded(&format!("{name} max_k"), max_k, 0)?;
    if min_k > max_k {
        return Err(Error::Pattern(format!(
            "{name} min_k ({min_k}) is larger than max_k ({max_k})"
        )));
    }
    Ok((min_k, max_k))
}

/// Reformer's hash buckets (docs/adaptive.md, "Hash buckets"). JSON:
/// `{"lsh": {"buckets": 16, "rounds": 2, "seed": 7, "chunk": 64}}`; `buckets` even and at
/// least 2, `rounds` and `chunk` at least 1 (`chunk` defaults to 64), `seed` any `u64`.
/// See [`super::lsh`] for the matrices and buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lsh {
    buckets: i64,
    rounds: i64,
    seed: u64,
    chunk: i64,
}

impl Lsh {
    /// Validates the parameters (errors are [`Error::Pattern`]).
    pub fn new(buckets: i64, rounds: i64, seed: u64, chunk: i64) -> Result<Self> {
        if buckets < 2 || buckets % 2 != 0 || buckets > MAX_PARAM {
            return Err(Error::Pattern(format!(
                "lsh buckets must be even and at least 2 (got {buckets})"
            )));
        }
        Ok(Lsh {
            buckets,
            rounds: bounded("lsh rounds", rounds, 1)?,
            seed,
            chunk: bounded("lsh chunk", chunk, 1)?,
        })
    }

    /// Buckets per round (the hash matrices have `buckets / 2` columns).
    pub fn buckets(&self) -> i64 {
        self.buckets
    }

    /// Hash rounds; a pair is allowed when any round matches.
    pub fn rounds(&self) -> i64 {
        self.rounds
    }

    /// The generator seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The execution hint (tokens per gathered tile); never changes the meaning.
    pub fn chunk(&self) -> i64 {
        self.chunk
    }
}

/// One adaptive component in its JSON form: `{"top_k": {..}}`, `{"top_p": {..}}`,
/// `{"top_rel": {..}}` or `{"lsh": {..}}`. Unknown fields are rejected; `top_k` takes no
/// `min_k`/`max_k`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawAdaptive", into = "RawAdaptive")]
pub enum AdaptiveComponent {
    /// `top_k`, `top_p` or `top_rel`.
    Select(BlockSelect),
    /// `lsh`.
    Lsh(Lsh),
}

impl AdaptiveComponent {
    /// Parses and validates one component; errors are [`Error::Pattern`].
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Pattern(e.to_string()))
    }

    /// The JSON form (`from_json` of it gives the same value back).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("adaptive components always serialize")
    }
}

fn default_score() -> Score {
    Score::MeanK
}

fn default_one() -> i64 {
    1
}

fn default_chunk() -> i64 {
    64
}

/// The fields of `top_k`, `top_p` and `top_rel` in one struct; which of `k`, `p`, `alpha`,
/// `min_k`, `max_k` a component takes is checked in `select_from_raw`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelect {
    block: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    q_block: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_k: Option<i64>,
    #[serde(default)]
    keep_sinks: i64,
    #[serde(default)]
    keep_local: i64,
    #[serde(default = "default_score")]
    score: Score,
    #[serde(default)]
    share: Share,
    #[serde(default = "default_one")]
    reselect_every: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLsh {
    buckets: i64,
    rounds: i64,
    seed: u64,
    #[serde(default = "default_chunk")]
    chunk: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawAdaptive {
    TopK(RawSelect),
    TopP(RawSelect),
    TopRel(RawSelect),
    Lsh(RawLsh),
}

/// `Some(v)` when present, else an error naming the missing field.
fn need<T>(name: &str, field: &str, v: Option<T>) -> Result<T> {
    v.ok_or_else(|| Error::Pattern(format!("{name} needs \"{field}\"")))
}

/// An error when a field the component does not take is present.
fn refuse<T>(name: &str, field: &str, v: &Option<T>) -> Result<()> {
    match v {
        Some(_) => Err(Error::Pattern(format!("{name} takes no \"{field}\""))),
        None => Ok(()),
    }
}

fn select_from_raw(kind: &str, r: RawSelect) -> Result<BlockSelect> {
    let choice = match kind {
        "top_k" => {
            refuse(kind, "p", &r.p)?;
            refuse(kind, "alpha", &r.alpha)?;
            refuse(kind, "min_k", &r.min_k)?;
            refuse(kind, "max_k", &r.max_k)?;
            Choice::TopK {
                k: need(kind, "k", r.k)?,
            }
        }
        "top_p" => {
            refuse(kind, "k", &r.k)?;
            refuse(kind, "alpha", &r.alpha)?;
            Choice::TopP {
                p: need(kind, "p", r.p)?,
                min_k: r.min_k.unwrap_or(0),
                max_k: r.max_k.unwrap_or(MAX_PARAM),
            }
        }
        _ => {
            refuse(kind, "k", &r.k)?;
            refuse(kind, "p", &r.p)?;
            Choice::TopRel {
                alpha: need(kind, "alpha", r.alpha)?,
                min_k: r.min_k.unwrap_or(0),
                max_k: r.max_k.unwrap_or(MAX_PARAM),
            }
        }
    };
    BlockSelect::build(
        r.block,
        r.q_block,
        choice,
        r.keep_sinks,
        r.keep_local,
        r.score,
        r.share,
        r.reselect_every,
    )
}

impl TryFrom<RawAdaptive> for AdaptiveComponent {
    type Error = String;
    fn try_from(r: RawAdaptive) -> std::result::Result<Self, String> {
        let sel = match r {
            RawAdaptive::TopK(t) => select_from_raw("top_k", t),
            RawAdaptive::TopP(t) => select_from_raw("top_p", t),
            RawAdaptive::TopRel(t) => select_from_raw("top_rel", t),
            RawAdaptive::Lsh(l) => {
                return Lsh::new(l.buckets, l.rounds, l.seed, l.chunk)
                    .map(AdaptiveComponent::Lsh)
                    .map_err(message)
            }
        };
        sel.map(AdaptiveComponent::Select).map_err(message)
    }
}

impl From<AdaptiveComponent> for RawAdaptive {
    fn from(c: AdaptiveComponent) -> Self {
        let s = match c {
            AdaptiveComponent::Lsh(l) => {
                return RawAdaptive::Lsh(RawLsh {
                    buckets: l.buckets,
                    rounds: l.rounds,
                    seed: l.seed,
                    chunk: l.chunk,
                })
            }
            AdaptiveComponent::Select(s) => s,
        };
        let (k, p, alpha, min_k, max_k) = match s.choice {
            Choice::TopK { k } => (Some(k), None, None, None, None),
            Choice::TopP { p, min_k, max_k } => (None, Some(p), None, Some(min_k), Some(max_k)),
            Choice::TopRel {
                alpha,
                min_k,
                max_k,
            } => (None, None, Some(alpha), Some(min_k), Some(max_k)),
        };
        let raw = RawSelect {
            block: s.block,
            q_block: (s.q_block != s.block).then_some(s.q_block),
            k,
            p,
            alpha,
            min_k,
            max_k,
            keep_sinks: s.keep_sinks,
            keep_local: s.keep_local,
            score: s.score,
            share: s.share,
            reselect_every: s.reselect_every,
        };
        match s.choice {
            Choice::TopK { .. } => RawAdaptive::TopK(raw),
            Choice::TopP { .. } => RawAdaptive::TopP(raw),
            Choice::TopRel { .. } => RawAdaptive::TopRel(raw),
        }
    }
}
