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
//! Dilated and global patterns also cost work proportional to what they allow, through tile
//! views ([`super::view`]): a head whose only component (besides global tokens and sinks) is a
//! dilated stride `K` runs per residue class, as dense or causal attention over the strided
//! rows and keys of its class, with the sinks of other classes gathered; global query rows are gathered into their own tiles (they see every
//! key), and global key columns that a tile's regular kv tiles do not cover are gathered into
//! extra kv tiles, so no tile is visited for one allowed column.

use super::component::{BigBird, BlockMask, Component};
use super::mask::{MaskComponent, MaskKind, MaskProgram, MaskTables};
use super::set::{HeadPatterns, LayerPlan, Pattern};
use super::view::{chunk_rows, TileView};
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
/// set of head `h`, and set `s` owns the CSR rows `set_row_ptr[s] .. set_row_ptr[s + 1]`, one
/// per query tile (`ceil(q_len / block_m)` of them for natural sets; views may use a few more,
/// see [`super::view`]). Row `r` names its query rows and keys by `views[r]` ([`TileView`]);
/// its full tiles are `full_tiles[full_row_ptr[r] .. full_row_ptr[r + 1]]`, its partial tiles
/// likewise; both lists are ascending and disjoint, with no sentinels and no flag bits
/// (negative entries are gathered tiles, see [`TileView`]). A tile is *full* when every
/// existing token of it (owned rows, existing keys) is allowed and *partial* when at least one
/// is allowed and at least one is not; tiles with no allowed token are not listed. The tiles of
/// a set own every query row exactly once, and a row's tiles never name one key twice.
/// Everything is `i32` so it uploads as is. [`BlockSparseMeta::mask`] carries the token
/// predicate for partial tiles, one program per row set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSparseMeta {
    shape: SparseShape,
    head_set: Vec<i32>,
    set_row_ptr: Vec<i32>,
    views: Vec<TileView>,
    view_data: Vec<i32>,
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

        let rows = reps.len() * shape.num_q_tiles();
        let mut meta = BlockSparseMeta {
            shape,
            head_set,
            set_row_ptr: vec![0],
            views: Vec::with_capacity(rows),
            view_data: Vec::new(),
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
            prep.compile_set(&shape, &mut meta, &mut work)?;
            meta.set_row_ptr.push(to_i32(meta.views.len())?);
            meta.mask.push_program(&prep);
        }
        if meta.view_data.len() > i32::MAX as usize {
            return Err(Error::Shape(
                "block-sparse metadata: view data exceeds i32".into(),
            ));
        }
        Ok(meta)
    }

    /// Appends one CSR row: `view` and the lists in `work.full` / `work.partial`.
    fn push_row(&mut self, view: TileView, work: &Work) -> Result<()> {
        self.views.push(view);
        self.full_tiles.extend_from_slice(&work.full);
        self.partial_tiles.extend_from_slice(&work.partial);
        self.full_row_ptr.push(to_i32(self.full_tiles.len())?);
        self.partial_row_ptr.push(to_i32(self.partial_tiles.len())?);
        Ok(())
    }

    /// The shape this metadata was compiled for.
    pub fn shape(&self) -> &SparseShape {
        &self.shape
    }

    /// Query tiles (CSR rows) of head `head`'s row set.
    ///
    /// # Panics
    ///
    /// If `head >= num_heads` (like slice indexing).
    pub fn num_tiles(&self, head: usize) -> usize {
        let s = self.head_set[head] as usize;
        (self.set_row_ptr[s + 1] - self.set_row_ptr[s]) as usize
    }

    /// The most query tiles of any row set (the launch grid's extent).
    pub fn max_tiles(&self) -> usize {
        self.set_row_ptr
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0)
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

    /// First CSR row of each row set, `[num_sets + 1]`.
    pub fn set_row_ptr(&self) -> &[i32] {
        &self.set_row_ptr
    }

    /// The view of every CSR row.
    pub fn views(&self) -> &[TileView] {
        &self.views
    }

    /// Row lists and gathered keys the views point into.
    pub fn view_data(&self) -> &[i32] {
        &self.view_data
    }

    /// CSR row pointers of the full lists, `[rows + 1]`.
    pub fn full_row_ptr(&self) -> &[i32] {
        &self.full_row_ptr
    }

    /// Full kv-tile indices, all rows back to back.
    pub fn full_tiles(&self) -> &[i32] {
        &self.full_tiles
    }

    /// CSR row pointers of the partial lists, `[rows + 1]`.
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
        assert!(
            q_tile < self.num_tiles(head),
            "query tile {q_tile} out of range"
        );
        self.set_row_ptr[self.head_set[head] as usize] as usize + q_tile
    }

    /// The view of query tile `q_tile` of head `head`.
    ///
    /// # Panics
    ///
    /// If `head >= num_heads` or `q_tile >= num_tiles(head)` (like slice indexing).
    pub fn view(&self, head: usize, q_tile: usize) -> &TileView {
        &self.views[self.row(head, q_tile)]
    }

    /// Every (owned query rows, keys, full) visit of query tile `q_tile` of head `head`: one
    /// item per listed kv tile, its query rows and its existing keys.
    pub fn visits(
        &self,
        head: usize,
        q_tile: usize,
    ) -> impl Iterator<Item = (Vec<usize>, Vec<usize>, bool)> + '_ {
        let v = self.view(head, q_tile);
        let rows: Vec<usize> = v.rows(&self.view_data).collect();
        let bn = self.shape.block_n;
        let full = self.full(head, q_tile).iter().map(|&t| (t, true));
        let partial = self.partial(head, q_tile).iter().map(|&t| (t, false));
        full.chain(partial).map(move |(t, is_full)| {
            (
                rows.clone(),
                v.keys(&self.view_data, t, bn).collect(),
                is_full,
            )
        })
    }

    /// Full kv tiles of query tile `q_tile` of head `head`, ascending.
    ///
    /// # Panics
    ///
    /// If `head >= num_heads` or `q_tile >= num_tiles(head)` (like slice indexing).
    pub fn full(&self, head: usize, q_tile: usize) -> &[i32] {
        let r = self.row(head, q_tile);
        &self.full_tiles[self.full_row_ptr[r] as usize..self.full_row_ptr[r + 1] as usize]
    }

    /// Partial kv tiles of query tile `q_tile` of head `head`, ascending.
    ///
    /// # Panics
    ///
    /// If `head >= num_heads` or `q_tile >= num_tiles(head)` (like slice indexing).
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
        self.head_set
            .iter()
            .map(|&s| {
                let (a, b) = (
                    self.set_row_ptr[s as usize] as usize,
                    self.set_row_ptr[s as usize + 1] as usize,
                );
                (self.full_row_ptr[b] - self.full_row_ptr[a] + self.partial_row_ptr[b]
                    - self.partial_row_ptr[a]) as usize
            })
            .sum()
    }

    /// Checks the structural invariants a kernel relies on: row pointers start at 0, never
    /// decrease and end at the list lengths; every list is strictly ascending and names tiles
    /// its view has; the full and partial lists of a row are disjoint; every head names an
    /// existing set; views stay within the shape and `view_data`, hold at most `block_m`
    /// rows, own every query row of their set exactly once, and never gather a key a regular
    /// tile of the same row covers.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Pattern(format!("metadata invariant: {m}")));
        let s = &self.shape;
        let (bn, q_len, kv_len) = (s.block_n as i64, s.q_len as i64, s.kv_len as i64);
        let sets = self.num_sets();
        let rows = self.views.len();
        if self.head_set.len() != s.num_heads {
            return bad("head_set length differs from num_heads".into());
        }
        if let Some(h) = self
            .head_set
            .iter()
            .position(|&x| x < 0 || x as usize >= sets)
        {
            return bad(format!("head {h} names a missing row set"));
        }
        if self.set_row_ptr.len() != sets + 1
            || self.set_row_ptr[0] != 0
            || self.set_row_ptr.windows(2).any(|w| w[1] < w[0])
            || *self.set_row_ptr.last().unwrap() as usize != rows
        {
            return bad("set row pointers do not frame the rows".into());
        }
        for (name, ptr, idx) in [
            ("full", &self.full_row_ptr, &self.full_tiles),
            ("partial", &self.partial_row_ptr, &self.partial_tiles),
        ] {
            if ptr.len() != rows + 1 || ptr[0] != 0 || *ptr.last().unwrap() as usize != idx.len() {
                return bad(format!("{name} row pointers do not frame the index list"));
            }
            for (r, w) in ptr.windows(2).enumerate() {
                if w[1] < w[0] {
                    return bad(format!("{name} row pointers decrease at row {r}"));
                }
                let v = &self.views[r];
                let regular = (v.key_count as i64 + bn - 1) / bn;
                let gathered = (v.gather_count as i64 + bn - 1) / bn;
                let row = &idx[w[0] as usize..w[1] as usize];
                if row
                    .iter()
                    .any(|&t| t as i64 >= regular || -(t as i64) > gathered)
                {
                    return bad(format!("{name} row {r} has a tile out of range"));
                }
                if row.windows(2).any(|t| t[1] <= t[0]) {
                    return bad(format!("{name} row {r} is not strictly ascending"));
                }
            }
        }
        let data = self.view_data.len() as i64;
        let mut owner = vec![false; s.q_len];
        for set in 0..sets {
            owner.iter_mut().for_each(|o| *o = false);
            for r in self.set_row_ptr[set] as usize..self.set_row_ptr[set + 1] as usize {
                let v = &self.views[r];
                let f = &self.full_tiles
                    [self.full_row_ptr[r] as usize..self.full_row_ptr[r + 1] as usize];
                let p = &self.partial_tiles
                    [self.partial_row_ptr[r] as usize..self.partial_row_ptr[r + 1] as usize];
                if f.iter().any(|t| p.binary_search(t).is_ok()) {
                    return bad(format!("row {r} lists a tile as both full and partial"));
                }
                let (count, list) = (v.row_count as i64, v.row_list as i64);
                if count < 1 || count > s.block_m as i64 || v.row_step < 0 {
                    return bad(format!("row {r}: {count} query rows, step {}", v.row_step));
                }
                if v.row_step == 0 && (list < 0 || list + count > data) {
                    return bad(format!("row {r}: row list outside the view data"));
                }
                let last_key = v.key_first as i64 + (v.key_count as i64 - 1) * v.key_step as i64;
                if v.key_first < 0 || v.key_step < 1 || v.key_count < 0 || last_key >= kv_len {
                    return bad(format!("row {r}: key view outside 0..{kv_len}"));
                }
                let (g0, gn) = (v.gather_list as i64, v.gather_count as i64);
                if g0 < 0 || gn < 0 || g0 + gn > data {
                    return bad(format!("row {r}: gather list outside the view data"));
                }
                for i in v.rows(&self.view_data) {
                    if i as i64 >= q_len || std::mem::replace(&mut owner[i], true) {
                        return bad(format!(
                            "row {r}: query row {i} out of range or owned twice"
                        ));
                    }
                }
                let gathered = v.gathered(&self.view_data);
                if gathered.windows(2).any(|g| g[1] <= g[0])
                    || gathered.first().is_some_and(|&g| g < 0)
                    || gathered.last().is_some_and(|&g| g as i64 >= kv_len)
                {
                    return bad(format!("row {r}: gathered keys not ascending keys"));
                }
                for &g in gathered {
                    let off = g as i64 - v.key_first as i64;
                    let step = v.key_step as i64;
                    if off >= 0 && off % step == 0 && off / step < v.key_count as i64 {
                        let t = (off / step / bn) as i32;
                        if f.binary_search(&t).is_ok() || p.binary_search(&t).is_ok() {
                            return bad(format!("row {r}: gathered key {g} is also in tile {t}"));
                        }
                    }
                }
            }
            if let Some(i) = owner.iter().position(|&o| !o) {
                return bad(format!("set {set}: query row {i} has no tile"));
            }
        }
        Ok(())
    }
}

fn to_i32(x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| Error::Shape("block-sparse metadata exceeds 2^31 entries".into()))
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

/// How a group of query rows is laid out in tiles (see [`super::view`]).
#[derive(Clone, Copy)]
enum Rows {
    /// Regular rows in natural order, tiles aligned to row multiples of `block_m`.
    Natural,
    /// Regular rows of residue class `.0` of stride `.1`, keys of the same class.
    Class(i64, i64),
    /// Global query rows, packed densely.
    Gathered,
}

/// A component resolved against a shape.
#[derive(Clone)]
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
    /// The key columns of global tokens only (for classifying the regular tiles of a set
    /// whose global rows and uncovered global keys are gathered): touches no tile itself.
    GlobalKeys {
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
    /// The current query tile's full and partial kv tiles.
    full: Vec<i32>,
    partial: Vec<i32>,
    /// The current query tile's gathered keys.
    gather: Vec<i32>,
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
                    // Stride 1 admits every key: dense (so full tiles come in bulk runs).
                    Component::Dilated(d) if d.stride() == 1 => Prep::Dense,
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

    /// Compiles every query tile of this row set (see [`super::view`] for the layouts).
    fn compile_set(
        &self,
        shape: &SparseShape,
        meta: &mut BlockSparseMeta,
        work: &mut Work,
    ) -> Result<()> {
        let (bm, bn) = (shape.block_m as i64, shape.block_n as i64);
        let (q_len, kv_len) = (shape.q_len as i64, shape.kv_len as i64);
        let shift = kv_len - q_len;
        let mut global: Vec<i64> = self
            .comps
            .iter()
            .filter_map(|c| match c {
                Prep::Global { tokens } => Some(tokens.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        global.sort_unstable();
        global.dedup();
        // Regular tiles: every component but the global rows, whose keys are gathered
        // where no regular tile covers them (`GlobalKeys` only classifies, it touches none).
        let mut base = Prepared {
            causal: self.causal,
            comps: self
                .comps
                .iter()
                .filter(|c| !matches!(c, Prep::Global { .. }))
                .cloned()
                .collect(),
        };
        // A dilated stride alone (or with sinks, key columns like global keys) runs per
        // residue class; the sinks outside a tile's class are then gathered with the global
        // keys.
        let (stride, sinks) = match base.comps.as_slice() {
            [Prep::Dilated { stride }] if *stride > 1 => (Some(*stride), 0),
            [Prep::Dilated { stride }, Prep::Sinks { count }]
            | [Prep::Sinks { count }, Prep::Dilated { stride }]
                if *stride > 1 =>
            {
                (Some(*stride), (*count).min(kv_len))
            }
            _ => (None, 0),
        };
        if !global.is_empty() {
            base.comps.push(Prep::GlobalKeys { tokens: &global });
        }
        if global.is_empty() && stride.is_none() {
            // Natural tiles: rows m * bm .. in order, every key.
            for m in 0..shape.num_q_tiles() as i64 {
                let first = m * bm;
                let count = bm.min(q_len - first);
                self.compile_tile(first + shift, first + count - 1 + shift, kv_len, bn, work);
                meta.push_row(TileView::natural(first, count, kv_len), work)?;
            }
            return Ok(());
        }
        let is_global = |i: &i64| global.binary_search(&(i + shift)).is_ok();
        match stride {
            None => {
                let regular: Vec<i64> = (0..q_len).filter(|i| !is_global(i)).collect();
                base.compile_group(&regular, Rows::Natural, &global, shape, meta, work)?
            }
            Some(k) => {
                // One group per residue class of the query position: within it the dilated
                // pattern is dense (or causal) attention over the keys of the same class.
                let dense = Prepared {
                    causal: self.causal,
                    comps: vec![Prep::Dense],
                };
                let mut columns: Vec<i64> = (0..sinks).chain(global.iter().copied()).collect();
                columns.sort_unstable();
                columns.dedup();
                let mut rows = Vec::new();
                for i_c in 0..k.min(q_len) {
                    // Rows 0..k are the first rows of distinct classes; i_c's class c has
                    // rows i_c, i_c + k, ...
                    let c = (i_c + shift).rem_euclid(k);
                    rows.clear();
                    rows.extend((i_c..q_len).step_by(k as usize).filter(|i| !is_global(i)));
                    if !rows.is_empty() {
                        dense.compile_group(
                            &rows,
                            Rows::Class(c, k),
                            &columns,
                            shape,
                            meta,
                            work,
                        )?;
                    }
                }
            }
        }
        // Global query rows see every key (up to themselves under causality).
        let rows: Vec<i64> = global
            .iter()
            .map(|g| g - shift)
            .filter(|i| (0..q_len).contains(i))
            .collect();
        let dense = Prepared {
            causal: self.causal,
            comps: vec![Prep::Dense],
        };
        dense.compile_group(&rows, Rows::Gathered, &[], shape, meta, work)
    }

    /// Compiles one group of query rows (ascending) with this pattern: natural keys, or for
    /// `Rows::Class(c, k)` the keys of residue class `c` of stride `k` (this pattern then
    /// classifies in view coordinates: position `c + k * u` is `u`). Keys in `gather` (ones
    /// every row may see up to causality: global keys, and the sinks in a class view) that the
    /// regular tiles miss are gathered.
    fn compile_group(
        &self,
        rows: &[i64],
        layout: Rows,
        gather: &[i64],
        shape: &SparseShape,
        meta: &mut BlockSparseMeta,
        work: &mut Work,
    ) -> Result<()> {
        let bn = shape.block_n as i64;
        let kv_len = shape.kv_len as i64;
        let shift = kv_len - shape.q_len as i64;
        let mut views = Vec::new();
        // Natural rows are their own slots, class rows i_c + k * s (i_c < k) slot s, gathered
        // rows pack densely.
        let slot = |n: usize, r: i64| match layout {
            Rows::Natural => r,
            Rows::Class(_, k) => r / k,
            Rows::Gathered => n as i64,
        };
        chunk_rows(
            rows,
            slot,
            shape.block_m,
            kv_len,
            &mut meta.view_data,
            &mut views,
        );
        let mut last_gather: Option<(i32, usize)> = None;
        for (mut view, range) in views {
            let chunk = &rows[range];
            let (p_min, p_max) = (chunk[0] + shift, chunk[chunk.len() - 1] + shift);
            // The rows in this pattern's coordinates: positions, or u for position c + k * u.
            let (view_keys, to_u) = match layout {
                Rows::Natural | Rows::Gathered => (kv_len, (0, 1)),
                Rows::Class(c, k) => {
                    view.key_first = c as i32;
                    view.key_step = k as i32;
                    let n = if kv_len > c {
                        (kv_len - c + k - 1) / k
                    } else {
                        0
                    };
                    view.key_count = n as i32;
                    (n, (c, k))
                }
            };
            let u = |r: i64| (r + shift - to_u.0).div_euclid(to_u.1);
            if view.row_step == 0 {
                self.compile_runs(chunk, &u, view_keys, bn, work);
            } else {
                self.compile_tile(u(chunk[0]), u(chunk[chunk.len() - 1]), view_keys, bn, work);
            }
            // Global key columns the regular tiles of this row do not cover.
            work.gather.clear();
            for &g in gather {
                if g >= kv_len || (self.causal && g > p_max) {
                    break;
                }
                let tile = match layout {
                    Rows::Natural | Rows::Gathered => Some(g / bn),
                    Rows::Class(c, k) => ((g - c).rem_euclid(k) == 0).then(|| (g - c) / k / bn),
                };
                let covered = tile.is_some_and(|t| {
                    let t = t as i32;
                    work.full.binary_search(&t).is_ok() || work.partial.binary_search(&t).is_ok()
                });
                if !covered {
                    work.gather.push(g as i32);
                }
            }
            if !work.gather.is_empty() {
                let reuse = last_gather
                    .filter(|&(off, len)| meta.view_data[off as usize..][..len] == work.gather[..]);
                let off = match reuse {
                    Some((off, _)) => off,
                    None => {
                        let off = to_i32(meta.view_data.len())?;
                        meta.view_data.extend_from_slice(&work.gather);
                        off
                    }
                };
                last_gather = Some((off, work.gather.len()));
                view.gather_list = off;
                view.gather_count = work.gather.len() as i32;
                // Gathered tiles come first (entries -n .. -1 keep the lists ascending).
                let chunks: Vec<(i32, bool)> = work
                    .gather
                    .chunks(bn as usize)
                    .enumerate()
                    .rev()
                    .map(|(q, keys)| {
                        let full = !self.causal || *keys.last().unwrap() as i64 <= p_min;
                        (-(q as i32) - 1, full)
                    })
                    .collect();
                for (list, want_full) in [(&mut work.full, true), (&mut work.partial, false)] {
                    let mut merged: Vec<i32> = chunks
                        .iter()
                        .filter(|c| c.1 == want_full)
                        .map(|c| c.0)
                        .collect();
                    merged.extend_from_slice(list);
                    *list = merged;
                }
            }
            meta.push_row(view, work)?;
        }
        Ok(())
    }

    /// Classifies the kv tiles of a query tile whose rows (`u` of each, ascending) have gaps,
    /// exactly: each contiguous run is classified on its own, and a kv tile is full when every
    /// run finds it full, partial when some run lists it otherwise.
    fn compile_runs(
        &self,
        rows: &[i64],
        u: &impl Fn(i64) -> i64,
        kv_len: i64,
        bn: i64,
        work: &mut Work,
    ) {
        let mut listed: Vec<(i32, bool)> = Vec::new();
        let runs: Vec<&[i64]> = rows.chunk_by(|&a, &b| u(b) == u(a) + 1).collect();
        for run in &runs {
            self.compile_tile(u(run[0]), u(run[run.len() - 1]), kv_len, bn, work);
            listed.extend(work.full.iter().map(|&t| (t, true)));
            listed.extend(work.partial.iter().map(|&t| (t, false)));
        }
        listed.sort_unstable();
        work.full.clear();
        work.partial.clear();
        for same in listed.chunk_by(|a, b| a.0 == b.0) {
            let full = same.len() == runs.len() && same.iter().all(|&(_, f)| f);
            if full {
                work.full.push(same[0].0);
            } else {
                work.partial.push(same[0].0);
            }
        }
    }

    /// Classifies the kv tiles of one query tile (positions `p0..=p1`, keys `0..kv_len` in
    /// tiles of `bn`) into `work.full` and `work.partial`.
    fn compile_tile(&self, p0: i64, p1: i64, kv_len: i64, bn: i64, work: &mut Work) {
        work.full.clear();
        work.partial.clear();
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
                    work.full.extend(n as i32..=end as i32);
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
                    Cover::Full => work.full.push(n as i32),
                    Cover::Partial => work.partial.push(n as i32),
                    Cover::None => {}
                }
                n += 1;
            }
            next = next.max(b + 1);
        }
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
            Prep::GlobalKeys { .. } => {}
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
            Prep::GlobalKeys { tokens } => {
                let from = tokens.partition_point(|&g| g < r.k0);
                let to = tokens.partition_point(|&g| g <= r.k1);
                let all_keys = (to - from) as i64 == r.k1 - r.k0 + 1;
                let key_hit = to > from && (!causal || tokens[from] <= r.p1);
                cover(fully_causal && all_keys, key_hit)
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
            Prep::GlobalKeys { tokens } => {
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
            Prep::GlobalKeys { .. } => unreachable!(
                "GlobalKeys only classifies regular tiles; mask programs describe the pattern's \
                 own components"
            ),
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
