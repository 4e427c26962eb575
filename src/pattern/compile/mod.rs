//! The pattern compiler: a head pattern set and a tiling become [`BlockSparseMeta`], per
//! (row set, query tile) CSR lists of *full* kv tiles (every existing token allowed: no mask
//! work) and *partial* kv tiles (some but not all allowed: the token-exact mask of
//! [`MaskTables`] applies).
//!
//! # How
//!
//! For one query tile (positions `p0..=p1`) each component lists the key intervals it touches,
//! analytically (a window is one interval, sinks the leading keys, chunks the keys of the chunks
//! the tile's rows lie in, causality a bound, global
//! query rows the whole row and global keys their columns, a dilated stride either every tile
//! or one interval per multiple of the stride, block masks and BigBird their allowed cells).
//! The intervals become kv-tile intervals, are sorted and merged, and only those tiles are
//! classified. Each component classifies a tile's token rectangle exactly and in O(1)
//! (O(cells) for block-level components): windows and dilation through the range of `j - p`,
//! sinks and causality through corner tests, chunks by the chunks of the tile's rows and keys,
//! global tokens by counting the sorted list. Dense, window, sink and chunk components also name
//! the run of tiles they cover fully, which is appended
//! in bulk without per-tile work. A tile is full when one component covers it; when two or
//! more cover it partially, their union is checked row by row with bitsets (rare: window
//! edges, sink/window overlaps). Cost is
//! therefore proportional to the tiles listed plus the size of the pattern's own data, never
//! to `q_len * kv_len`.
//!
//! Dilated and global patterns also cost work proportional to what they allow, through tile
//! views ([`super::view`]): a head whose only component (besides global tokens and sinks) is a
//! dilated stride `K` runs per residue class, as dense or causal attention over the strided
//! rows and keys of its class, with the sinks of other classes gathered; global query rows are
//! gathered into their own tiles (they see every key), and global key columns that a tile's
//! regular kv tiles do not cover are gathered into extra kv tiles, so no tile is visited for
//! one allowed column.
//!
//! Here: the shape and the metadata with its invariants; `prep.rs`: components resolved
//! against a shape and how each covers a tile; `layout.rs`: the tile layout of a row set and
//! the listing of each tile's kv tiles.

mod layout;
mod prep;

use self::layout::Work;
use self::prep::Prepared;
use super::layer::LayerPlan;
use super::mask::MaskTables;
use super::set::{HeadPatterns, Pattern};
use super::view::TileView;
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
        Self::compile_with(patterns, shape, true)
    }

    /// The row sets and mask programs of `patterns` alone, no tile lists or views: what a
    /// run-time tile walk (kernels/include/sparse_attn/tile_walk.cuh) reads. Every set owns
    /// zero CSR rows. `shape` is the maximum a plan serves; table-driven components whose
    /// tables follow the query positions (BigBird's random blocks) are drawn for query
    /// positions 0 .. kv_len, so compile with `q_len == kv_len` to cover every step.
    pub fn compile_masks(patterns: &HeadPatterns, shape: SparseShape) -> Result<Self> {
        Self::compile_with(patterns, shape, false)
    }

    fn compile_with(patterns: &HeadPatterns, shape: SparseShape, lists: bool) -> Result<Self> {
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
            if lists {
                prep.compile_set(&shape, &mut meta, &mut work)?;
            }
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
    /// rows, own every query row of their set exactly once, never gather a key a regular tile
    /// of the same row covers, and gather only keys every row of the view may see up to
    /// causality, padded to whole tiles with `i32::MAX` (the kernel masks a gathered tile by
    /// position alone, searching all of its entries).
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
                // Padded to whole tiles with i32::MAX (the kernel's search reads them).
                let padded = (gn + bn - 1) / bn * bn;
                if g0 + padded > data
                    || self.view_data[(g0 + gn) as usize..(g0 + padded) as usize]
                        .iter()
                        .any(|&x| x != i32::MAX)
                {
                    return bad(format!("row {r}: gather list not padded to whole tiles"));
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
                // The kernel masks a gathered tile as a prefix of its ascending keys
                // (TokenMask::gathered_bits): every row must see every gathered key up to
                // causality.
                let causal = self.mask.programs()[set].causal != 0;
                for i in v.rows(&self.view_data) {
                    let p = i as i64 + kv_len - q_len;
                    for &g in gathered.iter().take_while(|&&g| !causal || g as i64 <= p) {
                        if !self.mask.allowed(set, p, g as i64, s.kv_len) {
                            return bad(format!(
                                "row {r}: gathered key {g} is not allowed for query row {i}"
                            ));
                        }
                    }
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

/// A layer plan compiled for one shape: one [`BlockSparseMeta`] per distinct head pattern set
/// of its attention layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPlan {
    /// Distinct metadata, in order of first use.
    pub metas: Vec<BlockSparseMeta>,
    /// Index into `metas` of each layer; `None` for a layer that is not softmax attention.
    pub layer_meta: Vec<Option<usize>>,
}

impl CompiledPlan {
    /// The metadata of layer `layer`; `None` when it does not exist or is not softmax
    /// attention.
    pub fn layer(&self, layer: usize) -> Option<&BlockSparseMeta> {
        self.layer_meta
            .get(layer)
            .copied()
            .flatten()
            .map(|i| &self.metas[i])
    }
}

impl LayerPlan {
    /// Compiles every distinct attention layer once (Gemma 3's 62 layers compile to two
    /// metadata sets); layers that are not softmax attention get none.
    pub fn compile(&self, shape: SparseShape) -> Result<CompiledPlan> {
        self.validate(shape.num_heads, shape.kv_len)?;
        let mut distinct: Vec<&HeadPatterns> = Vec::new();
        let mut plan = CompiledPlan {
            metas: Vec::new(),
            layer_meta: Vec::with_capacity(self.layers.len()),
        };
        for layer in &self.layers {
            let Some(set) = layer.patterns() else {
                plan.layer_meta.push(None);
                continue;
            };
            if let Some(i) = distinct.iter().position(|d| *d == set) {
                plan.layer_meta.push(Some(i));
            } else {
                plan.layer_meta.push(Some(plan.metas.len()));
                distinct.push(set);
                plan.metas.push(BlockSparseMeta::compile(set, shape)?);
            }
        }
        Ok(plan)
    }
}
