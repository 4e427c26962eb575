//! The components of the pattern language (docs/patterns.md, "Components"), their JSON form and
//! their token predicates.
//!
//! Every component type has private fields and a validating constructor; deserialization goes
//! through the same constructor, so a component value is always valid and its predicate never
//! panics. Integer parameters are limited to `0..=i32::MAX` so they upload to the GPU as `i32`.

use serde::{Deserialize, Serialize};

use super::rng::BlockRng;
use crate::error::{Error, Result};

/// The largest value any integer parameter may take (parameters travel to kernels as `i32`).
pub const MAX_PARAM: i64 = i32::MAX as i64;

/// `v` if it lies in `min..=MAX_PARAM`, else an `Error::Pattern` naming `what`.
pub(crate) fn bounded(what: &str, v: i64, min: i64) -> Result<i64> {
    if v < min {
        Err(Error::Pattern(format!(
            "{what} must be at least {min} (got {v})"
        )))
    } else if v > MAX_PARAM {
        Err(Error::Pattern(format!(
            "{what} must be at most {MAX_PARAM} (got {v})"
        )))
    } else {
        Ok(v)
    }
}

/// The message of a pattern error, for serde's `try_from` (which adds its own location).
fn message(e: Error) -> String {
    match e {
        Error::Pattern(m) => m,
        other => other.to_string(),
    }
}

// ---- dense ---------------------------------------------------------------------------------

/// Every key is allowed. JSON: `{"dense": {}}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dense {}

// ---- sliding window --------------------------------------------------------------------------

/// Keys `p - left <= j <= p + right`. JSON: `{"left": L, "right": R}` or the shorthand
/// `{"size": W}` (`left = W - 1, right = 0`: the W most recent tokens including the query's own
/// position). Both bounds are non-negative, so the query's own position is always inside.
/// Equality compares `left` and `right` only; the JSON form used is remembered for
/// round-trips.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(try_from = "RawWindow", into = "RawWindow")]
pub struct SlidingWindow {
    left: i64,
    right: i64,
    size_form: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    #[serde(skip_serializing_if = "Option::is_none")]
    left: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    right: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<i64>,
}

impl TryFrom<RawWindow> for SlidingWindow {
    type Error = String;
    fn try_from(r: RawWindow) -> std::result::Result<Self, String> {
        match (r.left, r.right, r.size) {
            (None, None, Some(w)) => SlidingWindow::of_size(w).map_err(message),
            (Some(l), Some(r), None) => SlidingWindow::new(l, r).map_err(message),
            (_, _, Some(_)) => Err(
                "sliding_window takes either \"size\" or \"left\" and \"right\", not both".into(),
            ),
            _ => Err(
                "sliding_window needs both \"left\" and \"right\" (or the \"size\" shorthand)"
                    .into(),
            ),
        }
    }
}

impl From<SlidingWindow> for RawWindow {
    fn from(w: SlidingWindow) -> Self {
        if w.size_form {
            RawWindow {
                left: None,
                right: None,
                size: Some(w.left + 1),
            }
        } else {
            RawWindow {
                left: Some(w.left),
                right: Some(w.right),
                size: None,
            }
        }
    }
}

impl PartialEq for SlidingWindow {
    fn eq(&self, other: &Self) -> bool {
        (self.left, self.right) == (other.left, other.right)
    }
}
impl Eq for SlidingWindow {}

impl SlidingWindow {
    /// Keys `p - left ..= p + right`; both must be `>= 0`.
    pub fn new(left: i64, right: i64) -> Result<Self> {
        Ok(SlidingWindow {
            left: bounded("sliding_window left", left, 0)?,
            right: bounded("sliding_window right", right, 0)?,
            size_form: false,
        })
    }

    /// The `size` shorthand: the `size` most recent tokens including the query's own position
    /// (`left = size - 1, right = 0`). `size` must be at least 1.
    pub fn of_size(size: i64) -> Result<Self> {
        let size = bounded("sliding_window size", size, 1)?;
        Ok(SlidingWindow {
            left: size - 1,
            right: 0,
            size_form: true,
        })
    }

    /// Keys this far before the query are allowed.
    pub fn left(&self) -> i64 {
        self.left
    }

    /// Keys this far after the query are allowed.
    pub fn right(&self) -> i64 {
        self.right
    }

    /// `p - left <= j <= p + right`.
    pub fn admits(&self, p: i64, j: i64) -> bool {
        p.saturating_sub(self.left) <= j && j <= p.saturating_add(self.right)
    }
}

// ---- sinks ------------------------------------------------------------------------------------

/// The first `count` keys (attention sinks, StreamingLLM). JSON: `{"count": S}`, `S >= 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawSinks")]
pub struct Sinks {
    count: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSinks {
    count: i64,
}

impl TryFrom<RawSinks> for Sinks {
    type Error = String;
    fn try_from(r: RawSinks) -> std::result::Result<Self, String> {
        Sinks::new(r.count).map_err(message)
    }
}

impl Sinks {
    /// The first `count` keys; `count >= 1`.
    pub fn new(count: i64) -> Result<Self> {
        Ok(Sinks {
            count: bounded("sinks count", count, 1)?,
        })
    }

    /// Number of sink keys.
    pub fn count(&self) -> i64 {
        self.count
    }

    /// `j < count`.
    pub fn admits(&self, j: i64) -> bool {
        j < self.count
    }
}

// ---- global tokens ----------------------------------------------------------------------------

/// Global tokens `G`: they attend to every key and every query attends to them
/// (`j ∈ G or p ∈ G`). JSON: `{"tokens": [t0, t1, ...]}`, a non-empty list of key positions;
/// order and duplicates do not matter (the list is kept sorted and deduplicated).
///
/// Range: every token must be a key position, `t < kv_len`; the compiler and the renderers
/// reject a pattern naming a token outside the keys of the problem ([`GlobalTokens::check_range`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawGlobal")]
pub struct GlobalTokens {
    tokens: Vec<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    tokens: Vec<i64>,
}

impl TryFrom<RawGlobal> for GlobalTokens {
    type Error = String;
    fn try_from(r: RawGlobal) -> std::result::Result<Self, String> {
        GlobalTokens::new(r.tokens).map_err(message)
    }
}

impl GlobalTokens {
    /// A non-empty set of non-negative token positions.
    pub fn new(mut tokens: Vec<i64>) -> Result<Self> {
        if tokens.is_empty() {
            return Err(Error::Pattern("global tokens list is empty".into()));
        }
        for &t in &tokens {
            bounded("global token", t, 0)?;
        }
        tokens.sort_unstable();
        tokens.dedup();
        Ok(GlobalTokens { tokens })
    }

    /// The global positions, ascending and distinct.
    pub fn tokens(&self) -> &[i64] {
        &self.tokens
    }

    /// Whether `x` is a global position.
    pub fn contains(&self, x: i64) -> bool {
        self.tokens.binary_search(&x).is_ok()
    }

    /// `j ∈ G or p ∈ G`.
    pub fn admits(&self, p: i64, j: i64) -> bool {
        self.contains(j) || self.contains(p)
    }

    /// Every token must be a key of a sequence with `kv_len` keys.
    pub fn check_range(&self, kv_len: usize) -> Result<()> {
        let last = *self.tokens.last().expect("non-empty by construction");
        if last >= kv_len as i64 {
            return Err(Error::Pattern(format!(
                "global token {last} is outside the keys 0..{kv_len} (kv_len {kv_len})"
            )));
        }
        Ok(())
    }
}

// ---- dilated ----------------------------------------------------------------------------------

/// Every `stride`-th key counted from the query position: `(p - j) mod stride == 0`
/// (mathematical mod, so it also holds for keys after the query and for negative `p`).
/// JSON: `{"stride": K}`, `K >= 1`; stride 1 is dense.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawDilated")]
pub struct Dilated {
    stride: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDilated {
    stride: i64,
}

impl TryFrom<RawDilated> for Dilated {
    type Error = String;
    fn try_from(r: RawDilated) -> std::result::Result<Self, String> {
        Dilated::new(r.stride).map_err(message)
    }
}

impl Dilated {
    /// Stride `>= 1`.
    pub fn new(stride: i64) -> Result<Self> {
        Ok(Dilated {
            stride: bounded("dilated stride", stride, 1)?,
        })
    }

    /// The stride `K`.
    pub fn stride(&self) -> i64 {
        self.stride
    }

    /// `(p - j) mod K == 0`.
    pub fn admits(&self, p: i64, j: i64) -> bool {
        (p as i128 - j as i128).rem_euclid(self.stride as i128) == 0
    }
}

// ---- chunked ----------------------------------------------------------------------------------

/// Chunked local attention (Llama 4's `attention_chunk_size`): the sequence is cut into chunks
/// of `size` positions from position 0 and a query sees the keys of its own chunk,
/// `floor(p / size) == floor(j / size)` (block-diagonal; with causality keys
/// `floor(p / size) * size ..= p`). Negative query positions (`q_len > kv_len`) lie in negative
/// chunks, which hold no key. JSON: `{"size": C}`, `C >= 1`; size 1 allows only `j == p`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawChunked")]
pub struct Chunked {
    size: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChunked {
    size: i64,
}

impl TryFrom<RawChunked> for Chunked {
    type Error = String;
    fn try_from(r: RawChunked) -> std::result::Result<Self, String> {
        Chunked::new(r.size).map_err(message)
    }
}

impl Chunked {
    /// Chunks of `size >= 1` positions.
    pub fn new(size: i64) -> Result<Self> {
        Ok(Chunked {
            size: bounded("chunked size", size, 1)?,
        })
    }

    /// Positions per chunk, `C`.
    pub fn size(&self) -> i64 {
        self.size
    }

    /// The first position of the chunk holding position `x` (`floor(x / C) * C`).
    pub fn chunk_start(&self, x: i64) -> i64 {
        x.div_euclid(self.size) * self.size
    }

    /// `floor(p / C) == floor(j / C)`.
    pub fn admits(&self, p: i64, j: i64) -> bool {
        p.div_euclid(self.size) == j.div_euclid(self.size)
    }
}

// ---- block mask -------------------------------------------------------------------------------

/// A block-level mask: `mask[floor(p / block_q)][floor(j / block_k)] == 1`. Query blocks
/// outside the mask's rows (including negative positions) and key blocks outside its columns
/// are not allowed. JSON: `{"block_q": BQ, "block_k": BK, "mask": [[0, 1, ...], ...]}` with
/// at least one row, every row the same non-zero length, entries 0 or 1.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "RawBlockMask")]
pub struct BlockMask {
    block_q: i64,
    block_k: i64,
    rows: usize,
    cols: usize,
    /// Row-major `rows * cols` entries, each 0 or 1.
    bits: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlockMask {
    block_q: i64,
    block_k: i64,
    mask: Vec<Vec<i64>>,
}

#[derive(Serialize)]
struct RawBlockMaskRef<'a> {
    block_q: i64,
    block_k: i64,
    mask: Vec<&'a [u8]>,
}

impl TryFrom<RawBlockMask> for BlockMask {
    type Error = String;
    fn try_from(r: RawBlockMask) -> std::result::Result<Self, String> {
        let rows = r
            .mask
            .iter()
            .map(|row| {
                row.iter()
                    .map(|&v| u8::try_from(v).unwrap_or(u8::MAX))
                    .collect()
            })
            .collect();
        BlockMask::new(r.block_q, r.block_k, rows).map_err(message)
    }
}

impl Serialize for BlockMask {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        RawBlockMaskRef {
            block_q: self.block_q,
            block_k: self.block_k,
            mask: self.bits.chunks(self.cols).collect(),
        }
        .serialize(s)
    }
}

impl BlockMask {
    /// A mask of `mask.len()` query blocks of `block_q` positions by `mask[0].len()` key blocks
    /// of `block_k` keys. Rows must be non-empty and equally long, entries 0 or 1.
    pub fn new(block_q: i64, block_k: i64, mask: Vec<Vec<u8>>) -> Result<Self> {
        let block_q = bounded("block_mask block_q", block_q, 1)?;
        let block_k = bounded("block_mask block_k", block_k, 1)?;
        let rows = mask.len();
        let cols = mask.first().map_or(0, Vec::len);
        if rows == 0 || cols == 0 {
            return Err(Error::Pattern(
                "block_mask mask needs at least one row and one column".into(),
            ));
        }
        let mut bits = Vec::with_capacity(rows * cols);
        for (r, row) in mask.iter().enumerate() {
            if row.len() != cols {
                return Err(Error::Pattern(format!(
                    "block_mask rows are ragged: row 0 has {cols} entries, row {r} has {}",
                    row.len()
                )));
            }
            if let Some(c) = row.iter().position(|&v| v > 1) {
                return Err(Error::Pattern(format!(
                    "block_mask entries must be 0 or 1 (mask[{r}][{c}] is not)"
                )));
            }
            bits.extend_from_slice(row);
        }
        if rows as i64 > MAX_PARAM || cols as i64 > MAX_PARAM {
            return Err(Error::Pattern("block_mask is too large".into()));
        }
        Ok(BlockMask {
            block_q,
            block_k,
            rows,
            cols,
            bits,
        })
    }

    /// Query positions per mask row.
    pub fn block_q(&self) -> i64 {
        self.block_q
    }

    /// Keys per mask column.
    pub fn block_k(&self) -> i64 {
        self.block_k
    }

    /// Number of mask rows (query blocks).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of mask columns (key blocks).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Entry `(P, J)`; `false` outside the mask.
    pub fn get(&self, qb: i64, kb: i64) -> bool {
        qb >= 0
            && kb >= 0
            && (qb as u64) < self.rows as u64
            && (kb as u64) < self.cols as u64
            && self.bits[qb as usize * self.cols + kb as usize] == 1
    }

    /// One mask row as 0/1 bytes; `None` outside the mask.
    pub fn row(&self, qb: i64) -> Option<&[u8]> {
        if qb < 0 || qb as u64 >= self.rows as u64 {
            return None;
        }
        Some(&self.bits[qb as usize * self.cols..][..self.cols])
    }

    /// `mask[floor(p / block_q)][floor(j / block_k)] == 1`.
    pub fn admits(&self, p: i64, j: i64) -> bool {
        self.get(p.div_euclid(self.block_q), j.div_euclid(self.block_k))
    }
}

// ---- BigBird ----------------------------------------------------------------------------------

/// BigBird (Zaheer et al. 2020) at block granularity `B`: with `P = floor(p / B)` and
/// `J = floor(j / B)`, allowed when `|P - J| <= window_blocks / 2`, or `P < global_blocks`,
/// or `J < global_blocks`, or `J ∈ rand(h, P)`.
///
/// `rand(h, P)` ([`BigBird::rand_blocks`]) is `random_blocks` distinct key blocks among the
/// candidates not already allowed by the window and global parts: blocks `0..ceil(kv_len / B)`
/// (with `causal`, only `J <= P`), drawn by the generator of [`super::rng`] from
/// `(seed, h, P)`; all candidates when there are at most `random_blocks`. Without `causal` the
/// candidate range depends on `kv_len`, so the sets are a function of the sequence length.
///
/// Note the contract's `P < global_blocks` literally: query positions before the first key
/// (negative `p` when `q_len > kv_len`) fall in negative blocks and are global rows whenever
/// `global_blocks >= 1`.
///
/// JSON: `{"block": B, "window_blocks": W, "global_blocks": G, "random_blocks": R, "seed": S}`,
/// `B >= 1`, the counts `>= 0`, `seed` any unsigned 64-bit integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawBigBird")]
pub struct BigBird {
    block: i64,
    window_blocks: i64,
    global_blocks: i64,
    random_blocks: i64,
    seed: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBigBird {
    block: i64,
    window_blocks: i64,
    global_blocks: i64,
    random_blocks: i64,
    seed: u64,
}

impl TryFrom<RawBigBird> for BigBird {
    type Error = String;
    fn try_from(r: RawBigBird) -> std::result::Result<Self, String> {
        BigBird::new(
            r.block,
            r.window_blocks,
            r.global_blocks,
            r.random_blocks,
            r.seed,
        )
        .map_err(message)
    }
}

impl BigBird {
    /// Block size `>= 1`; window, global and random block counts `>= 0`.
    pub fn new(
        block: i64,
        window_blocks: i64,
        global_blocks: i64,
        random_blocks: i64,
        seed: u64,
    ) -> Result<Self> {
        Ok(BigBird {
            block: bounded("bigbird block", block, 1)?,
            window_blocks: bounded("bigbird window_blocks", window_blocks, 0)?,
            global_blocks: bounded("bigbird global_blocks", global_blocks, 0)?,
            random_blocks: bounded("bigbird random_blocks", random_blocks, 0)?,
            seed,
        })
    }

    /// Block size `B` (query and key blocks alike).
    pub fn block(&self) -> i64 {
        self.block
    }

    /// `W`: blocks with `|P - J| <= W / 2` are allowed.
    pub fn window_blocks(&self) -> i64 {
        self.window_blocks
    }

    /// Half-width of the block window, `W / 2` (integer division).
    pub fn window_half(&self) -> i64 {
        self.window_blocks / 2
    }

    /// `G`: the first `G` query blocks and key blocks are global.
    pub fn global_blocks(&self) -> i64 {
        self.global_blocks
    }

    /// `R`: random key blocks per query block.
    pub fn random_blocks(&self) -> i64 {
        self.random_blocks
    }

    /// The generator seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of key blocks of a sequence of `kv_len` keys.
    pub fn key_blocks(&self, kv_len: usize) -> i64 {
        (kv_len as i64 + self.block - 1) / self.block
    }

    /// Block-level predicate without the random part.
    pub fn fixed_admits(&self, qb: i64, kb: i64) -> bool {
        (qb - kb).abs() <= self.window_half() || qb < self.global_blocks || kb < self.global_blocks
    }

    /// The candidates of `rand(h, P)` as two ascending half-open block ranges (the blocks left
    /// and right of the window, past the global blocks, within the key blocks and, with
    /// `causal`, not after `P`).
    fn candidates(&self, qb: i64, kv_len: usize, causal: bool) -> [(i64, i64); 2] {
        if qb < self.global_blocks {
            return [(0, 0); 2];
        }
        let nkb = self.key_blocks(kv_len);
        let end = if causal { nkb.min(qb + 1) } else { nkb };
        let w = self.window_half();
        let g = self.global_blocks;
        let a = (g, (qb - w).min(end).max(g));
        let b0 = (qb + w + 1).max(g);
        let b = (b0, end.max(b0));
        [a, b]
    }

    /// `rand(h, P)`: the random key blocks of query block `qb` for head `head`, ascending,
    /// written into `out` (cleared first). `scratch` is reused working memory. See the type's
    /// documentation and [`super::rng`] for the exact draw.
    pub fn rand_blocks_into(
        &self,
        head: usize,
        qb: i64,
        kv_len: usize,
        causal: bool,
        out: &mut Vec<i64>,
        scratch: &mut Vec<u64>,
    ) {
        out.clear();
        if self.random_blocks == 0 {
            return;
        }
        let [a, b] = self.candidates(qb, kv_len, causal);
        let na = (a.1 - a.0) as u64;
        let n = na + (b.1 - b.0) as u64;
        if n == 0 {
            return;
        }
        BlockRng::new(self.seed, head as u64, qb).choose(n, self.random_blocks as u64, scratch);
        out.extend(scratch.iter().map(|&t| {
            if t < na {
                a.0 + t as i64
            } else {
                b.0 + (t - na) as i64
            }
        }));
    }

    /// `rand(h, P)` as a new vector (see [`BigBird::rand_blocks_into`]).
    pub fn rand_blocks(&self, head: usize, qb: i64, kv_len: usize, causal: bool) -> Vec<i64> {
        let mut out = Vec::new();
        self.rand_blocks_into(head, qb, kv_len, causal, &mut out, &mut Vec::new());
        out
    }

    /// The full predicate for head `head` (the random part depends on `kv_len` and `causal`).
    pub fn admits(&self, head: usize, p: i64, j: i64, kv_len: usize, causal: bool) -> bool {
        let (qb, kb) = (p.div_euclid(self.block), j.div_euclid(self.block));
        self.fixed_admits(qb, kb)
            || self
                .rand_blocks(head, qb, kv_len, causal)
                .binary_search(&kb)
                .is_ok()
    }
}

// ---- the union type ---------------------------------------------------------------------------

/// One component of a pattern. JSON: an object with exactly one key naming the component,
/// e.g. `{"sliding_window": {"size": 1024}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// `{"dense": {}}`
    Dense(Dense),
    /// `{"sliding_window": {"left": L, "right": R}}` or `{"sliding_window": {"size": W}}`
    SlidingWindow(SlidingWindow),
    /// `{"sinks": {"count": S}}`
    Sinks(Sinks),
    /// `{"global": {"tokens": [...]}}`
    Global(GlobalTokens),
    /// `{"dilated": {"stride": K}}`
    Dilated(Dilated),
    /// `{"chunked": {"size": C}}`
    Chunked(Chunked),
    /// `{"block_mask": {"block_q": BQ, "block_k": BK, "mask": [[...], ...]}}`
    BlockMask(BlockMask),
    /// `{"bigbird": {"block": B, "window_blocks": W, "global_blocks": G, "random_blocks": R, "seed": S}}`
    #[serde(rename = "bigbird")]
    BigBird(BigBird),
}

impl Component {
    /// `{"dense": {}}`.
    pub fn dense() -> Self {
        Component::Dense(Dense {})
    }

    /// A `left`/`right` sliding window.
    pub fn window(left: i64, right: i64) -> Result<Self> {
        SlidingWindow::new(left, right).map(Component::SlidingWindow)
    }

    /// A `size` sliding window (the `size` most recent tokens including itself).
    pub fn window_size(size: i64) -> Result<Self> {
        SlidingWindow::of_size(size).map(Component::SlidingWindow)
    }

    /// The first `count` keys.
    pub fn sinks(count: i64) -> Result<Self> {
        Sinks::new(count).map(Component::Sinks)
    }

    /// Global tokens.
    pub fn global(tokens: Vec<i64>) -> Result<Self> {
        GlobalTokens::new(tokens).map(Component::Global)
    }

    /// Dilated with `stride`.
    pub fn dilated(stride: i64) -> Result<Self> {
        Dilated::new(stride).map(Component::Dilated)
    }

    /// Chunks of `size` positions.
    pub fn chunked(size: i64) -> Result<Self> {
        Chunked::new(size).map(Component::Chunked)
    }

    /// Whether this component admits key `j` for query head `head` at position `p`. `kv_len`
    /// and `causal` only matter for BigBird's random blocks. Does not check `j < kv_len` or
    /// causality; [`super::Pattern::allowed`] does.
    pub fn admits(&self, head: usize, p: i64, j: i64, kv_len: usize, causal: bool) -> bool {
        match self {
            Component::Dense(_) => true,
            Component::SlidingWindow(w) => w.admits(p, j),
            Component::Sinks(s) => s.admits(j),
            Component::Global(g) => g.admits(p, j),
            Component::Dilated(d) => d.admits(p, j),
            Component::Chunked(c) => c.admits(p, j),
            Component::BlockMask(m) => m.admits(p, j),
            Component::BigBird(b) => b.admits(head, p, j, kv_len, causal),
        }
    }

    /// Whether the predicate depends on the head (BigBird with random blocks).
    pub fn is_head_dependent(&self) -> bool {
        matches!(self, Component::BigBird(b) if b.random_blocks > 0)
    }

    /// Checks what depends on the problem's shape (global tokens must be keys).
    pub fn check_shape(&self, kv_len: usize) -> Result<()> {
        match self {
            Component::Global(g) => g.check_range(kv_len),
            _ => Ok(()),
        }
    }
}
