//! How a row set's query tiles are laid out (natural, residue classes of a dilated stride,
//! gathered global rows; see [`crate::pattern::view`]) and how each tile's kv tiles are listed.

use super::prep::{Cover, Prep, Prepared, Rect};
use super::{to_i32, BlockSparseMeta, SparseShape};
use crate::error::Result;
use crate::pattern::view::{chunk_rows, TileView};

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

/// Reused buffers of the compile loop.
#[derive(Default)]
pub(super) struct Work {
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

impl Prepared<'_> {
    /// Compiles every query tile of this row set (see [`super::view`] for the layouts).
    pub(super) fn compile_set(
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
        // Within a residue class, and on global rows, every key is allowed up to causality.
        let dense = Prepared {
            causal: self.causal,
            comps: vec![Prep::Dense],
        };
        match stride {
            None => {
                let regular: Vec<i64> = (0..q_len).filter(|i| !is_global(i)).collect();
                base.compile_group(&regular, Rows::Natural, &global, shape, meta, work)?
            }
            Some(k) => {
                // One group per residue class of the query position: within it the dilated
                // pattern is dense (or causal) attention over the keys of the same class.
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
                        // Whole tiles: the kernel's search reads all 64 entries of a gathered
                        // tile (TokenMask::gathered_bits); the padding follows every key.
                        let pad = (bn as usize - work.gather.len() % bn as usize) % bn as usize;
                        meta.view_data.resize(meta.view_data.len() + pad, i32::MAX);
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
                    let gathered = chunks.iter().filter(|c| c.1 == want_full).map(|c| c.0);
                    list.splice(0..0, gathered);
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
}

impl BlockSparseMeta {
    /// Appends one CSR row: `view` and the lists in `work.full` / `work.partial`.
    fn push_row(&mut self, view: TileView, work: &Work) -> Result<()> {
        self.views.push(view);
        self.full_tiles.extend_from_slice(&work.full);
        self.partial_tiles.extend_from_slice(&work.partial);
        self.full_row_ptr.push(to_i32(self.full_tiles.len())?);
        self.partial_row_ptr.push(to_i32(self.partial_tiles.len())?);
        Ok(())
    }
}
