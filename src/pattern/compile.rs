//! The pattern compiler: a head pattern set and a tiling become [`BlockSparseMeta`], per
//! (row set, query tile) CSR lists of *full* kv tiles (every existing token allowed: no mask
//! work) and *partial* kv tiles (some but not all allowed: the token-exact mask of
//! [`MaskTables`] applies).
//!
//! # How
//!
//! For one query tile (positions `p0..=p1`) each component lists the key intervals it touches,
//! analytically (a window is one interval, sinks the leading keys, causality a bound, global
//! query rows the whole row and global keys their columns, a dilated stride either every tile
//! or one interval per multiple of the stride, block masks and BigBird their allowed cells).
//! The intervals become kv-tile intervals, are sorted and merged, and only those tiles are
//! classified. Each component classifies a tile's token rectangle exactly and in O(1)
//! (O(cells) for block-level components): windows and dilation through the range of `j - p`,
//! sinks and causality through corner tests, global tokens by counting the sorted list. Dense,
//! window and sink components also name the run of tiles they cover fully, which is appended
//! in bulk without per-tile work. A tile is full when one component covers it; when two or
//! more cover it partially, their union is checked row by row with bitsets (rare: window
//! edges, sink/window overlaps). Cost is
//! therefore proportional to the tiles listed plus the size of the pattern's own data, never
//! to `q_len * kv_len`.
//!
//! Dilated and global patterns are compiled exactly but execute as mostly *partial* tiles: a
//! stride below the tile width admits keys in every tile. Running them efficiently (strided
//! views of K/V, gathered global columns) is a later, kernel-side step; the metadata stays
//! correct meanwhile.

use super::component::{BigBird, BlockMask, Component};
use super::mask::{MaskComponent, MaskKind, MaskProgram, MaskTables};
use super::set::{HeadPatterns, LayerPlan, Pattern};
use crate::error::{Error, Result};

/// The problem and tiling a pattern set is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SparseShape {
    /// Query heads.
    pub num_heads: usize,
    /// Query rows; row `i` has position `i + kv_len - q_len`.
    pub q_len: usize,
    /// Keys.
    pub kv_len: usize,
    /// Query rows per tile (the kernel's `BLOCK_M`).
    pub block_m: usize,
    /// Keys per tile (the kernel's `BLOCK_N`).
    pub block_n: usize,
}

impl SparseShape {
    /// Checks the shape: at least one head, non-zero tiles, and `q_len + kv_len` within `i32`
    /// (so every position difference a kernel computes fits an `int`).
    pub fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || self.num_heads > i32::MAX as usize {
            return Err(Error::Shape(format!(
                "num_heads must be in 1..=2^31-1 (got {})",
                self.num_heads
            )));
        }
        if self.block_m == 0 || self.block_n == 0 {
            return Err(Error::Shape(format!(
                "tile sizes must be positive (got block_m {}, block_n {})",
                self.block_m, self.block_n
            )));
        }
        if self.q_len.saturating_add(self.kv_len) > i32::MAX as usize {
            return Err(Error::Shape(format!(
                "q_len + kv_len must fit in i32 (got {} + {})",
                self.q_len, self.kv_len
            )));
        }
        Ok(())
    }

    /// Number of query tiles, `ceil(q_len / block_m)`.
    pub fn num_q_tiles(&self) -> usize {
        self.q_len.div_ceil(self.block_m)
    }

    /// Number of kv tiles, `ceil(kv_len / block_n)`.
    pub fn num_kv_tiles(&self) -> usize {
        self.kv_len.div_ceil(self.block_n)
    }
}

/// Block-sparse metadata of one head pattern set for one [`SparseShape`].
///
/// Heads with identical (head-independent) patterns share a *row set*: `head_set[h]` is the
/// set of head `h`, and query tile `m` of set `s` is CSR row `s * num_q_tiles + m`. Its full
/// tiles are `full_tiles[full_row_ptr[row] .. full_row_ptr[row + 1]]`, its partial tiles
/// likewise; both lists are ascending, disjoint and in `0..num_kv_tiles`, with no sentinels
/// and no flag bits. A tile is *full* when every existing token of it (rows `< q_len`, keys
/// `< kv_len`) is allowed and *partial* when at least one is allowed and at least one is not;
/// tiles with no allowed token are not listed. Everything is `i32` so it uploads as is.
/// [`BlockSparseMeta::mask`] carries the token predicate for partial tiles, one program per
/// row set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSparseMeta {
    shape: SparseShape,
    head_set: Vec<i32>,
    full_row_ptr: Vec<i32>,
    full_tiles: Vec<i32>,
    partial_row_ptr: Vec<i32>,
    partial_tiles: Vec<i32>,
    mask: MaskTables,
}

impl BlockSparseMeta {
    /// Compiles `patterns` for `shape` (validating both).
    pub fn compile(patterns: &HeadPatterns, shape: SparseShape) -> Result<Self> {
        shape.validate()?;
        patterns.validate(shape.num_heads, shape.kv_len)?;

        // Row sets: heads whose patterns are equal and head-independent share one.
        let mut reps: Vec<usize> = Vec::new();
        let mut head_set = Vec::with_capacity(shape.num_heads);
        for h in 0..shape.num_heads {
            let pat = pattern_of(patterns, h);
            let shared = match patterns {
                HeadPatterns::All(p) if !p.is_head_dependent() => (h > 0).then_some(0),
                HeadPatterns::All(_) => None,
                HeadPatterns::PerHead(_) => reps.iter().position(|&r| {
                    let rp = pattern_of(patterns, r);
                    !pat.is_head_dependent() && !rp.is_head_dependent() && rp == pat
                }),
            };
            match shared {
                Some(s) => head_set.push(s as i32),
                None => {
                    head_set.push(reps.len() as i32);
                    reps.push(h);
                }
            }
        }

        let nqt = shape.num_q_tiles();
        let rows = reps.len() * nqt;
        let mut meta = BlockSparseMeta {
            shape,
            head_set,
            full_row_ptr: Vec::with_capacity(rows + 1),
            full_tiles: Vec::new(),
            partial_row_ptr: Vec::with_capacity(rows + 1),
            partial_tiles: Vec::new(),
            mask: MaskTables::default(),
        };
        meta.full_row_ptr.push(0);
        meta.partial_row_ptr.push(0);
        let mut work = Work::default();
        for &rep in &reps {
            let prep = Prepared::new(pattern_of(patterns, rep), rep, &shape);
            prep.compile_rows(&shape, &mut meta, &mut work)?;
            meta.mask.push_program(&prep);
        }
        Ok(meta)
    }

    /// The shape this metadata was compiled for.
    pub fn shape(&self) -> &SparseShape {
        &self.shape
    }

    /// Number of query tiles.
    pub fn num_q_tiles(&self) -> usize {
        self.shape.num_q_tiles()
    }

    /// Number of kv tiles.
    pub fn num_kv_tiles(&self) -> usize {
        self.shape.num_kv_tiles()
    }

    /// Number of distinct row sets.
    pub fn num_sets(&self) -> usize {
        self.mask.programs.len()
    }

    /// Row set of each query head, `[num_heads]`.
    pub fn head_set(&self) -> &[i32] {
        &self.head_set
    }

    /// CSR row pointers of the full lists, `[num_sets * num_q_tiles + 1]`.
    pub fn full_row_ptr(&self) -> &[i32] {
        &self.full_row_ptr
    }

    /// Full kv-tile indices, all rows back to back.
    pub fn full_tiles(&self) -> &[i32] {
        &self.full_tiles
    }

    /// CSR row pointers of the partial lists, `[num_sets * num_q_tiles + 1]`.
    pub fn partial_row_ptr(&self) -> &[i32] {
        &self.partial_row_ptr
    }

    /// Partial kv-tile indices, all rows back to back.
    pub fn partial_tiles(&self) -> &[i32] {
        &self.partial_tiles
    }

    /// The token predicate of partial tiles, one program per row set.
    pub fn mask(&self) -> &MaskTables {
        &self.mask
    }

    fn row(&self, head: usize, q_tile: usize) -> usize {
        self.head_set[head] as usize * self.num_q_tiles() + q_tile
    }

    /// Full kv tiles of query tile `q_tile` of head `head`, ascending.
    ///
    /// # Panics
    ///
    /// If `head >= num_heads` or `q_tile >= num_q_tiles` (like slice indexing).
    pub fn full(&self, head: usize, q_tile: usize) -> &[i32] {
        let r = self.row(head, q_tile);
        &self.full_tiles[self.full_row_ptr[r] as usize..self.full_row_ptr[r + 1] as usize]
    }

    /// Partial kv tiles of query tile `q_tile` of head `head`, ascending.
    ///
    /// # Panics
    ///
    /// If `head >= num_heads` or `q_tile >= num_q_tiles` (like slice indexing).
    pub fn partial(&self, head: usize, q_tile: usize) -> &[i32] {
        let r = self.row(head, q_tile);
        &self.partial_tiles[self.partial_row_ptr[r] as usize..self.partial_row_ptr[r + 1] as usize]
    }

    /// Tiles listed (full + partial) over all row sets.
    pub fn tiles_listed(&self) -> usize {
        self.full_tiles.len() + self.partial_tiles.len()
    }

    /// Tiles a kernel visits over all heads (shared rows counted once per head).
    pub fn tiles_visited(&self) -> usize {
        (0..self.shape.num_heads)
            .flat_map(|h| (0..self.num_q_tiles()).map(move |m| (h, m)))
            .map(|(h, m)| self.full(h, m).len() + self.partial(h, m).len())
            .sum()
    }

    /// Checks the structural invariants a kernel relies on: row pointers start at 0, never
    /// decrease and end at the list lengths; every list is strictly ascending and in range;
    /// the full and partial lists of a row are disjoint; every head names an existing set.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Pattern(format!("metadata invariant: {m}")));
        let nqt = self.num_q_tiles();
        let nkt = self.num_kv_tiles() as i32;
        let sets = self.num_sets();
        if self.head_set.len() != self.shape.num_heads {
            return bad("head_set length differs from num_heads".into());
        }
        if let Some(h) = self
            .head_set
            .iter()
            .position(|&s| s < 0 || s as usize >= sets)
        {
            return bad(format!("head {h} names a missing row set"));
        }
        for (name, ptr, idx) in [
            ("full", &self.full_row_ptr, &self.full_tiles),
            ("partial", &self.partial_row_ptr, &self.partial_tiles),
        ] {
            if ptr.len() != sets * nqt + 1
                || ptr[0] != 0
                || *ptr.last().unwrap() as usize != idx.len()
            {
                return bad(format!("{name} row pointers do not frame the index list"));
            }
            for (r, w) in ptr.windows(2).enumerate() {
                if w[1] < w[0] {
                    return bad(format!("{name} row pointers decrease at row {r}"));
                }
                let row = &idx[w[0] as usize..w[1] as usize];
                if row.iter().any(|&t| t < 0 || t >= nkt) {
                    return bad(format!("{name} row {r} has a tile out of range"));
                }
                if row.windows(2).any(|t| t[1] <= t[0]) {
                    return bad(format!("{name} row {r} is not strictly ascending"));
                }
            }
        }
        for r in 0..sets * nqt {
            let f =
                &self.full_tiles[self.full_row_ptr[r] as usize..self.full_row_ptr[r + 1] as usize];
            let p = &self.partial_tiles
                [self.partial_row_ptr[r] as usize..self.partial_row_ptr[r + 1] as usize];
            if f.iter().any(|t| p.binary_search(t).is_ok()) {
                return bad(format!("row {r} lists a tile as both full and partial"));
            }
        }
        Ok(())
    }
}

fn pattern_of(patterns: &HeadPatterns, head: usize) -> &Pattern {
    patterns
        .pattern(head)
        .expect("validated: one pattern per head")
}

/// A layer plan compiled for one shape: one [`BlockSparseMeta`] per distinct head pattern set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPlan {
    /// Distinct metadata, in order of first use.
    pub metas: Vec<BlockSparseMeta>,
    /// Index into `metas` of each layer.
    pub layer_meta: Vec<usize>,
}

impl CompiledPlan {
    /// The metadata of layer `layer`.
    pub fn layer(&self, layer: usize) -> Option<&BlockSparseMeta> {
        self.layer_meta.get(layer).map(|&i| &self.metas[i])
    }
}

impl LayerPlan {
    /// Compiles every distinct layer once (Gemma 3's 62 layers compile to two metadata sets).
    pub fn compile(&self, shape: SparseShape) -> Result<CompiledPlan> {
        self.validate(shape.num_heads, shape.kv_len)?;
        let mut distinct: Vec<usize> = Vec::new();
        let mut plan = CompiledPlan {
            metas: Vec::new(),
            layer_meta: Vec::with_capacity(self.layers.len()),
        };
        for (l, set) in self.layers.iter().enumerate() {
            if let Some(i) = distinct.iter().position(|&d| self.layers[d] == *set) {
                plan.layer_meta.push(i);
            } else {
                plan.layer_meta.push(plan.metas.len());
                distinct.push(l);
                plan.metas.push(BlockSparseMeta::compile(set, shape)?);
            }
        }
        Ok(plan)
    }
}

// ---- per-set compilation --------------------------------------------------------------------

/// How a component (intersected with causality) covers a tile's existing tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cover {
    None,
    Partial,
    Full,
}

/// A tile's existing tokens: positions `p0..=p1`, keys `k0..=k1` (non-empty).
#[derive(Clone, Copy, Debug)]
struct Rect {
    p0: i64,
    p1: i64,
    k0: i64,
    k1: i64,
}

impl Rect {
    fn fully_causal(&self) -> bool {
        self.k1 <= self.p0
    }
}

/// BigBird's random blocks for every query block of the shape, as CSR.
#[derive(Clone, Debug, Default)]
pub(crate) struct RandTable {
    /// Query block of row 0.
    pub first_block: i64,
    /// `[rows + 1]` offsets into `blocks`.
    pub row_ptr: Vec<usize>,
    /// Ascending key blocks per row.
    pub blocks: Vec<i64>,
}

impl RandTable {
    fn build(bb: &BigBird, head: usize, shape: &SparseShape, causal: bool) -> Self {
        let mut t = RandTable {
            row_ptr: vec![0],
            ..Default::default()
        };
        if shape.q_len == 0 || bb.random_blocks() == 0 {
            return t;
        }
        let shift = shape.kv_len as i64 - shape.q_len as i64;
        let first = shift.div_euclid(bb.block());
        let last = (shift + shape.q_len as i64 - 1).div_euclid(bb.block());
        t.first_block = first;
        let (mut row, mut scratch) = (Vec::new(), Vec::new());
        for qb in first..=last {
            bb.rand_blocks_into(head, qb, shape.kv_len, causal, &mut row, &mut scratch);
            t.blocks.extend_from_slice(&row);
            t.row_ptr.push(t.blocks.len());
        }
        t
    }

    /// `rand(h, qb)` (empty outside the table).
    pub fn get(&self, qb: i64) -> &[i64] {
        let r = qb - self.first_block;
        if r < 0 || r as usize + 1 >= self.row_ptr.len() {
            return &[];
        }
        let r = r as usize;
        &self.blocks[self.row_ptr[r]..self.row_ptr[r + 1]]
    }

    /// Number of query blocks in the table.
    pub fn rows(&self) -> usize {
        self.row_ptr.len() - 1
    }
}

/// A component resolved against a shape.
pub(crate) enum Prep<'a> {
    Dense,
    /// `right` already 0 under causality (a causal window never reaches past the query).
    Window {
        left: i64,
        right: i64,
    },
    Sinks {
        count: i64,
    },
    Global {
        tokens: &'a [i64],
    },
    Dilated {
        stride: i64,
    },
    BlockMask(&'a BlockMask),
    BigBird {
        bb: &'a BigBird,
        rand: RandTable,
    },
}

/// A pattern resolved against a shape for one row set.
pub(crate) struct Prepared<'a> {
    pub causal: bool,
    pub comps: Vec<Prep<'a>>,
}

/// Reused buffers of the compile loop.
#[derive(Default)]
struct Work {
    /// Touched kv-tile intervals (inclusive) of the current query tile.
    tiles: Vec<(i64, i64)>,
    /// One row of a tile as bits (union check).
    bits: Vec<u64>,
    /// Tile runs (inclusive) that one component covers fully, for the current query tile.
    runs: Vec<(i64, i64)>,
}

impl<'a> Prepared<'a> {
    pub fn new(pattern: &'a Pattern, head: usize, shape: &SparseShape) -> Self {
        let causal = pattern.causal;
        let comps = if pattern.is_dense() {
            vec![Prep::Dense]
        } else {
            pattern
                .components
                .iter()
                .map(|c| match c {
                    Component::Dense(_) => Prep::Dense,
                    Component::SlidingWindow(w) => Prep::Window {
                        left: w.left(),
                        right: if causal { 0 } else { w.right() },
                    },
                    Component::Sinks(s) => Prep::Sinks { count: s.count() },
                    Component::Global(g) => Prep::Global { tokens: g.tokens() },
                    Component::Dilated(d) => Prep::Dilated { stride: d.stride() },
                    Component::BlockMask(m) => Prep::BlockMask(m),
                    Component::BigBird(b) => Prep::BigBird {
                        bb: b,
                        rand: RandTable::build(b, head, shape, causal),
                    },
                })
                .collect()
        };
        Prepared { causal, comps }
    }

    fn compile_rows(
        &self,
        shape: &SparseShape,
        meta: &mut BlockSparseMeta,
        work: &mut Work,
    ) -> Result<()> {
        let (bm, bn) = (shape.block_m as i64, shape.block_n as i64);
        let (q_len, kv_len) = (shape.q_len as i64, shape.kv_len as i64);
        let shift = kv_len - q_len;
        for m in 0..shape.num_q_tiles() as i64 {
            let p0 = m * bm + shift;
            let p1 = (m * bm + bm).min(q_len) - 1 + shift;
            work.tiles.clear();
            for c in &self.comps {
                c.touched(p0, p1, self.causal, kv_len, bn, &mut work.tiles);
            }
            work.tiles.sort_unstable();
            // Runs of tiles some simple component covers entirely: appended in bulk.
            work.runs.clear();
            work.runs.extend(
                self.comps
                    .iter()
                    .filter_map(|c| c.full_run(p0, p1, self.causal, kv_len, bn)),
            );
            work.runs.sort_unstable();
            let mut run = 0;
            let mut next = 0; // first tile not yet classified (merges overlapping intervals)
            for i in 0..work.tiles.len() {
                let (a, b) = work.tiles[i];
                let mut n = a.max(next);
                while n <= b {
                    while run < work.runs.len() && work.runs[run].1 < n {
                        run += 1;
                    }
                    if let Some(&(s, e)) = work.runs.get(run).filter(|r| r.0 <= n) {
                        debug_assert!(s <= n);
                        let end = e.min(b);
                        meta.full_tiles.extend(n as i32..=end as i32);
                        n = end + 1;
                        continue;
                    }
                    let k0 = n * bn;
                    let rect = Rect {
                        p0,
                        p1,
                        k0,
                        k1: (k0 + bn).min(kv_len) - 1,
                    };
                    match self.classify(&rect, &mut work.bits) {
                        Cover::Full => meta.full_tiles.push(n as i32),
                        Cover::Partial => meta.partial_tiles.push(n as i32),
                        Cover::None => {}
                    }
                    n += 1;
                }
                next = next.max(b + 1);
            }
            for (ptr, len) in [
                (&mut meta.full_row_ptr, meta.full_tiles.len()),
                (&mut meta.partial_row_ptr, meta.partial_tiles.len()),
            ] {
                ptr.push(i32::try_from(len).map_err(|_| {
                    Error::Shape("block-sparse metadata exceeds 2^31 tiles".into())
                })?);
            }
        }
        Ok(())
    }

    /// Exact classification of a tile for the whole pattern.
    fn classify(&self, r: &Rect, bits: &mut Vec<u64>) -> Cover {
        let mut partials = 0;
        for c in &self.comps {
            match c.classify(r, self.causal) {
                Cover::Full => return Cover::Full,
                Cover::Partial => partials += 1,
                Cover::None => {}
            }
        }
        match partials {
            0 => Cover::None,
            1 => Cover::Partial,
            // Several partial covers may still add up to a full tile.
            _ if (!self.causal || r.fully_causal()) && self.union_full(r, bits) => Cover::Full,
            _ => Cover::Partial,
        }
    }

    /// Whether the union of the components allows every token of `r` (causality is not
    /// checked: callers only ask for tiles entirely at or below the diagonal).
    fn union_full(&self, r: &Rect, bits: &mut Vec<u64>) -> bool {
        let width = (r.k1 - r.k0 + 1) as usize;
        let words = width.div_ceil(64);
        for p in r.p0..=r.p1 {
            bits.clear();
            bits.resize(words, 0);
            let row_full = self.comps.iter().any(|c| c.fill_row(p, r.k0, r.k1, bits));
            if !row_full && !bits_full(bits, width) {
                return false;
            }
        }
        true
    }
}

/// Sets bits `lo..=hi` (offsets within the row).
fn set_bits(bits: &mut [u64], lo: usize, hi: usize) {
    let (wlo, whi) = (lo / 64, hi / 64);
    for (w, word) in bits.iter_mut().enumerate().take(whi + 1).skip(wlo) {
        let first = if w == wlo { lo % 64 } else { 0 };
        let last = if w == whi { hi % 64 } else { 63 };
        *word |= (u64::MAX >> (63 - last)) & (u64::MAX << first);
    }
}

fn bits_full(bits: &[u64], width: usize) -> bool {
    let (whole, rest) = (width / 64, width % 64);
    bits[..whole].iter().all(|&w| w == u64::MAX)
        && (rest == 0 || bits[whole] == u64::MAX >> (64 - rest))
}

/// Cover of a tile by a block-level predicate `cell(P, J)` on `bq x bk` cells, with causality.
fn classify_cells(
    r: &Rect,
    causal: bool,
    bq: i64,
    bk: i64,
    cell: impl Fn(i64, i64) -> bool,
) -> Cover {
    let (mut any, mut all) = (false, true);
    for qb in r.p0.div_euclid(bq)..=r.p1.div_euclid(bq) {
        let cell_p1 = r.p1.min(qb * bq + bq - 1);
        for kb in r.k0.div_euclid(bk)..=r.k1.div_euclid(bk) {
            if cell(qb, kb) {
                // The cell's smallest key is visible to its last row?
                any |= !causal || r.k0.max(kb * bk) <= cell_p1;
            } else {
                all = false;
            }
            if any && !all {
                return Cover::Partial;
            }
        }
    }
    if all && (!causal || r.fully_causal()) {
        Cover::Full
    } else if any {
        Cover::Partial
    } else {
        Cover::None
    }
}

/// Pushes kv-tile interval of keys `a..=b` (clipped to `0..=last`) if non-empty.
fn push_keys(out: &mut Vec<(i64, i64)>, a: i64, b: i64, last: i64, bn: i64) {
    let (a, b) = (a.max(0), b.min(last));
    if a <= b {
        out.push((a / bn, b / bn));
    }
}

impl Prep<'_> {
    /// Pushes the kv-tile intervals holding keys this component (with causality) allows to
    /// some position of `p0..=p1`; exact at tile granularity.
    fn touched(
        &self,
        p0: i64,
        p1: i64,
        causal: bool,
        kv_len: i64,
        bn: i64,
        out: &mut Vec<(i64, i64)>,
    ) {
        // Last key any row of the tile may see.
        let kmax = if causal {
            p1.min(kv_len - 1)
        } else {
            kv_len - 1
        };
        if kmax < 0 {
            return;
        }
        match *self {
            Prep::Dense => push_keys(out, 0, kmax, kmax, bn),
            Prep::Window { left, right } => push_keys(out, p0 - left, p1 + right, kmax, bn),
            Prep::Sinks { count } => push_keys(out, 0, count - 1, kmax, bn),
            Prep::Global { tokens } => {
                // Global query rows see every key (up to themselves under causality).
                let below = tokens.partition_point(|&g| g <= p1);
                if below > 0 && tokens[below - 1] >= p0 {
                    let g = tokens[below - 1];
                    push_keys(out, 0, if causal { g } else { kmax }, kmax, bn);
                }
                for &g in tokens.iter().take_while(|&&g| g <= kmax) {
                    push_keys(out, g, g, kmax, bn);
                }
            }
            Prep::Dilated { stride } => {
                let rows = p1 - p0 + 1;
                if stride <= rows || stride == 1 {
                    return push_keys(out, 0, kmax, kmax, bn);
                }
                // Keys a..a+rows-1 for every a ≡ p0 (mod stride); under causality a <= p0.
                let first = (1 - rows) + (p0 - (1 - rows)).rem_euclid(stride);
                let lim = if causal { p0.min(kmax) } else { kmax };
                let last = lim - (lim - p0).rem_euclid(stride);
                if first > last {
                    return;
                }
                if stride - rows < bn {
                    // Gaps narrower than a tile: every tile in between is touched.
                    return push_keys(out, first, last + rows - 1, kmax, bn);
                }
                let mut a = first;
                while a <= last {
                    push_keys(out, a, a + rows - 1, kmax, bn);
                    a += stride;
                }
            }
            Prep::BlockMask(m) => {
                let (bq, bk) = (m.block_q(), m.block_k());
                let qb_first = p0.div_euclid(bq).max(0);
                let qb_last = p1.div_euclid(bq).min(m.rows() as i64 - 1);
                for qb in qb_first..=qb_last {
                    let klim = if causal {
                        kmax.min(qb * bq + bq - 1)
                    } else {
                        kmax
                    };
                    let Some(row) = m.row(qb) else { continue };
                    if klim < 0 {
                        continue;
                    }
                    let kb_last = (klim / bk).min(m.cols() as i64 - 1) as usize;
                    let mut kb = 0;
                    while kb <= kb_last {
                        if row[kb] == 0 {
                            kb += 1;
                            continue;
                        }
                        let start = kb;
                        while kb <= kb_last && row[kb] == 1 {
                            kb += 1;
                        }
                        push_keys(out, start as i64 * bk, kb as i64 * bk - 1, klim, bn);
                    }
                }
            }
            Prep::BigBird { bb, ref rand } => {
                let b = bb.block();
                let (w, g) = (bb.window_half(), bb.global_blocks());
                for qb in p0.div_euclid(b)..=p1.div_euclid(b) {
                    let klim = if causal {
                        kmax.min(qb * b + b - 1)
                    } else {
                        kmax
                    };
                    if klim < 0 {
                        continue;
                    }
                    if qb < g {
                        push_keys(out, 0, klim, klim, bn);
                        continue;
                    }
                    let lo = (qb - w).max(0);
                    push_keys(out, lo * b, (qb + w) * b + b - 1, klim, bn);
                    if g > 0 {
                        push_keys(out, 0, g * b - 1, klim, bn);
                    }
                    for &kb in rand.get(qb) {
                        push_keys(out, kb * b, kb * b + b - 1, klim, bn);
                    }
                }
            }
        }
    }

    /// For components whose fully covered tiles form one run (dense, windows, sinks), that
    /// run of kv tiles for query positions `p0..=p1`, if non-empty. Every tile of it is one
    /// [`Prep::classify`] would call full; this only saves classifying them one by one.
    fn full_run(&self, p0: i64, p1: i64, causal: bool, kv_len: i64, bn: i64) -> Option<(i64, i64)> {
        let last_key = kv_len - 1;
        let (lo, hi) = match *self {
            Prep::Dense => (0, if causal { p0 } else { last_key }),
            // `right` is already 0 under causality.
            Prep::Window { left, right } => (p1 - left, p0 + right),
            Prep::Sinks { count } => (0, (count - 1).min(if causal { p0 } else { last_key })),
            _ => return None,
        };
        // Tiles whose existing keys all lie in lo..=hi.
        let first = if lo <= 0 { 0 } else { (lo + bn - 1) / bn };
        let last = if hi >= last_key {
            (kv_len + bn - 1) / bn - 1
        } else {
            (hi + 1).div_euclid(bn) - 1
        };
        (first <= last).then_some((first, last))
    }

    /// Exact cover of tile `r` by this component intersected with causality.
    fn classify(&self, r: &Rect, causal: bool) -> Cover {
        let fully_causal = !causal || r.fully_causal();
        let some_causal = !causal || r.k0 <= r.p1;
        match *self {
            Prep::Dense => cover(fully_causal, some_causal),
            Prep::Window { left, right } => {
                // j - p spans [k0 - p1, k1 - p0]; allowed is [-left, right].
                let (lo, hi) = (r.k0 - r.p1, r.k1 - r.p0);
                cover(lo >= -left && hi <= right, hi >= -left && lo <= right)
            }
            Prep::Sinks { count } => {
                cover(r.k1 < count && fully_causal, r.k0 < count && some_causal)
            }
            Prep::Global { tokens } => {
                let count = |a: i64, b: i64| {
                    tokens.partition_point(|&g| g <= b) - tokens.partition_point(|&g| g < a)
                };
                let all_rows = count(r.p0, r.p1) as i64 == r.p1 - r.p0 + 1;
                let all_keys = count(r.k0, r.k1) as i64 == r.k1 - r.k0 + 1;
                // A global row sees some key of the tile if it is at or after k0 (causal).
                let below = tokens.partition_point(|&g| g <= r.p1);
                let row_hit = below > 0 && {
                    let g = tokens[below - 1];
                    g >= r.p0 && (!causal || g >= r.k0)
                };
                // A global key is seen by some row if it is at or before p1 (causal).
                let from = tokens.partition_point(|&g| g < r.k0);
                let key_hit = tokens
                    .get(from)
                    .is_some_and(|&g| g <= r.k1 && (!causal || g <= r.p1));
                cover(fully_causal && (all_rows || all_keys), row_hit || key_hit)
            }
            Prep::Dilated { stride } => {
                // p - j spans [p0 - k1, p1 - k0]; causality keeps p - j >= 0.
                let hi = r.p1 - r.k0;
                let lo = if causal {
                    (r.p0 - r.k1).max(0)
                } else {
                    r.p0 - r.k1
                };
                let hit = lo <= hi && lo + (-lo).rem_euclid(stride) <= hi;
                cover(hit && fully_causal && (stride == 1 || lo == hi), hit)
            }
            Prep::BlockMask(m) => {
                classify_cells(r, causal, m.block_q(), m.block_k(), |qb, kb| m.get(qb, kb))
            }
            Prep::BigBird { bb, ref rand } => {
                classify_cells(r, causal, bb.block(), bb.block(), |qb, kb| {
                    bb.fixed_admits(qb, kb) || rand.get(qb).binary_search(&kb).is_ok()
                })
            }
        }
    }

    /// ORs this component's allowed keys of row `p` within `k0..=k1` into `bits` (bit 0 is
    /// key `k0`); returns `true` when it allows the whole span (bits then unspecified).
    fn fill_row(&self, p: i64, k0: i64, k1: i64, bits: &mut [u64]) -> bool {
        let mut span = |a: i64, b: i64| {
            let (a, b) = (a.max(k0), b.min(k1));
            if a <= b {
                set_bits(bits, (a - k0) as usize, (b - k0) as usize);
            }
        };
        match *self {
            Prep::Dense => return true,
            Prep::Window { left, right } => span(p - left, p + right),
            Prep::Sinks { count } => span(0, count - 1),
            Prep::Global { tokens } => {
                if tokens.binary_search(&p).is_ok() {
                    return true;
                }
                let from = tokens.partition_point(|&g| g < k0);
                for &g in tokens[from..].iter().take_while(|&&g| g <= k1) {
                    span(g, g);
                }
            }
            Prep::Dilated { stride } => {
                let mut j = k0 + (p - k0).rem_euclid(stride);
                while j <= k1 {
                    span(j, j);
                    j += stride;
                }
            }
            Prep::BlockMask(m) => {
                let (qb, bk) = (p.div_euclid(m.block_q()), m.block_k());
                for kb in k0 / bk..=k1 / bk {
                    if m.get(qb, kb) {
                        span(kb * bk, kb * bk + bk - 1);
                    }
                }
            }
            Prep::BigBird { bb, ref rand } => {
                let (qb, b) = (p.div_euclid(bb.block()), bb.block());
                if qb < bb.global_blocks() {
                    return true;
                }
                for kb in k0 / b..=k1 / b {
                    if bb.fixed_admits(qb, kb) || rand.get(qb).binary_search(&kb).is_ok() {
                        span(kb * b, kb * b + b - 1);
                    }
                }
            }
        }
        false
    }

    /// The kernel-side description of this component (see [`MaskComponent`]); data tables
    /// are appended to `data`.
    pub(crate) fn describe(&self, data: &mut Vec<i32>) -> MaskComponent {
        let mut c = MaskComponent {
            data_offset: data.len() as i32,
            ..Default::default()
        };
        match *self {
            Prep::Dense => c.kind = MaskKind::Dense as i32,
            Prep::Window { left, right } => {
                c.kind = MaskKind::Window as i32;
                c.window_left = left as i32;
                c.window_right = right as i32;
            }
            Prep::Sinks { count } => {
                c.kind = MaskKind::Sinks as i32;
                c.sink_count = count as i32;
            }
            Prep::Global { tokens } => {
                c.kind = MaskKind::Global as i32;
                data.extend(tokens.iter().map(|&t| t as i32));
            }
            Prep::Dilated { stride } => {
                c.kind = MaskKind::Dilated as i32;
                c.dilation_stride = stride as i32;
            }
            Prep::BlockMask(m) => {
                c.kind = MaskKind::BlockMask as i32;
                c.block_q = m.block_q() as i32;
                c.block_k = m.block_k() as i32;
                c.mask_rows = m.rows() as i32;
                c.mask_cols = m.cols() as i32;
                let words = m.cols().div_ceil(32);
                for qb in 0..m.rows() as i64 {
                    let row = m.row(qb).expect("in range");
                    let start = data.len();
                    data.resize(start + words, 0);
                    for (kb, _) in row.iter().enumerate().filter(|(_, &v)| v == 1) {
                        data[start + kb / 32] |= (1u32 << (kb % 32)) as i32;
                    }
                }
            }
            Prep::BigBird { bb, ref rand } => {
                c.kind = MaskKind::BigBird as i32;
                c.block_q = bb.block() as i32;
                c.block_k = bb.block() as i32;
                c.bigbird_window_half = bb.window_half() as i32;
                c.bigbird_global_blocks = bb.global_blocks() as i32;
                c.rand_first_q_block = rand.first_block as i32;
                c.rand_q_blocks = rand.rows() as i32;
                data.extend(rand.row_ptr.iter().map(|&o| o as i32));
                data.extend(rand.blocks.iter().map(|&b| b as i32));
            }
        }
        c.data_len = data.len() as i32 - c.data_offset;
        c
    }
}

fn cover(full: bool, some: bool) -> Cover {
    if full {
        Cover::Full
    } else if some {
        Cover::Partial
    } else {
        Cover::None
    }
}

impl MaskTables {
    /// Appends the program of one row set.
    fn push_program(&mut self, prep: &Prepared<'_>) {
        let first = self.components.len();
        for c in &prep.comps {
            let desc = c.describe(&mut self.data);
            self.components.push(desc);
        }
        self.programs.push(MaskProgram {
            causal: prep.causal as i32,
            first_component: first as i32,
            num_components: (self.components.len() - first) as i32,
            _reserved: 0,
        });
    }
}
