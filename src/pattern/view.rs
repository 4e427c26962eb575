//! Tile views: how one query tile (one CSR row of [`super::BlockSparseMeta`]) names its query
//! rows and its keys. The C struct `SaTileView` of `kernels/include/sparse_attn/params.h` is
//! the definition (mirrored by bindgen); the kernel's `RowMap`/`KeyMap` (block_iter.cuh) and
//! the methods here are the two readings of it.
//!
//! - *Natural* tiles own rows `row_first ..` in order and index keys `0 .. kv_len` directly:
//!   dense, causal, windows, sinks, block masks and BigBird run this way.
//! - A dilated head (stride `K`) runs one residue class at a time: a tile owns rows of one
//!   class `c` (`row_step = K`) and its regular kv tiles index the keys of that class
//!   (`key_first = c`, `key_step = K`), so within the view the pattern is plain dense or
//!   causal attention and costs `1/K` of dense, not a masked sweep of every tile. Sinks next to
//!   the stride are gathered like global keys (below) where the class does not hold them.
//! - Global query rows (`p ∈ G`) are gathered into their own tiles (`row_step = 0`, a row
//!   list), which see every key; the other tiles skip them. Global key columns a tile's
//!   regular kv tiles do not already cover are gathered into extra kv tiles (negative entries
//!   in the CSR lists, naming slices of the tile's gather list).

/// One query tile's view (the C struct `SaTileView`).
pub type TileView = crate::ffi::SaTileView;

impl TileView {
    /// A natural tile: rows `first .. first + count`, keys `0 .. kv_len`, nothing gathered.
    pub(crate) fn natural(first: i64, count: i64, kv_len: i64) -> Self {
        TileView {
            row_first: first as i32,
            row_step: 1,
            row_count: count as i32,
            key_first: 0,
            key_step: 1,
            key_count: kv_len as i32,
            ..Default::default()
        }
    }

    /// The query row of slot `s < row_count`.
    pub fn row(&self, view_data: &[i32], s: usize) -> usize {
        if self.row_step == 0 {
            view_data[self.row_list as usize + s] as usize
        } else {
            (self.row_first as i64 + s as i64 * self.row_step as i64) as usize
        }
    }

    /// The query rows this tile owns, in slot order.
    pub fn rows<'a>(&'a self, view_data: &'a [i32]) -> impl Iterator<Item = usize> + 'a {
        (0..self.row_count.max(0) as usize).map(move |s| self.row(view_data, s))
    }

    /// The keys of kv-tile entry `t` of this tile's CSR lists (tiles of `block_n` keys): view
    /// keys for `t >= 0`, gathered keys for `t < 0`; only keys that exist.
    pub fn keys<'a>(
        &'a self,
        view_data: &'a [i32],
        t: i32,
        block_n: usize,
    ) -> impl Iterator<Item = usize> + 'a {
        let (first, count) = if t >= 0 {
            (t as i64 * block_n as i64, self.key_count as i64)
        } else {
            ((-(t as i64) - 1) * block_n as i64, self.gather_count as i64)
        };
        let n = (count - first).clamp(0, block_n as i64);
        (first..first + n).map(move |v| {
            if t >= 0 {
                (self.key_first as i64 + v * self.key_step as i64) as usize
            } else {
                view_data[(self.gather_list as i64 + v) as usize] as usize
            }
        })
    }

    /// The gathered keys.
    pub fn gathered<'a>(&self, view_data: &'a [i32]) -> &'a [i32] {
        &view_data[self.gather_list as usize..][..self.gather_count as usize]
    }
}

/// Appends the tiles of one group of query rows (ascending): row `rows[n]` goes to tile
/// `slot(n, rows[n]) / block_m`. For regular rows `slot` numbers them as if no row had been
/// taken out (the row itself in natural order, its index within its residue class in a
/// dilated view), so tiles stay aligned with the kv tiles where global rows leave gaps; for
/// gathered rows it is `n`, packing them densely. A tile whose rows are
/// evenly spaced gets an affine view (`row_step` > 0), any other a row list in `view_data`.
/// The key fields are left natural (`0`, `1`, `kv_len`) for the caller.
pub(crate) fn chunk_rows(
    rows: &[i64],
    slot: impl Fn(usize, i64) -> i64,
    block_m: usize,
    kv_len: i64,
    view_data: &mut Vec<i32>,
    out: &mut Vec<(TileView, std::ops::Range<usize>)>,
) {
    let bm = block_m as i64;
    let mut start = 0;
    while start < rows.len() {
        let tile = slot(start, rows[start]) / bm;
        let len = (start..rows.len())
            .take_while(|&n| slot(n, rows[n]) / bm == tile)
            .count();
        let chunk = &rows[start..start + len];
        let mut v = TileView::natural(chunk[0], chunk.len() as i64, kv_len);
        let step = if chunk.len() > 1 {
            chunk[1] - chunk[0]
        } else {
            1
        };
        if chunk.windows(2).all(|w| w[1] - w[0] == step) {
            v.row_step = step as i32;
        } else {
            v.row_step = 0;
            v.row_list = view_data.len() as i32;
            view_data.extend(chunk.iter().map(|&r| r as i32));
        }
        out.push((v, start..start + len));
        start += len;
    }
}
