//! Components resolved against a shape, and how each covers a tile: the key intervals it
//! touches, the run of tiles it fills, its exact cover of a token rectangle, one row as bits,
//! and its kernel-side mask description.

use super::SparseShape;
use crate::pattern::component::{BigBird, BlockMask, Component};
use crate::pattern::mask::{MaskComponent, MaskKind, MaskProgram, MaskTables};
use crate::pattern::set::Pattern;

/// How a component (intersected with causality) covers a tile's existing tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cover {
    None,
    Partial,
    Full,
}

/// A tile's existing tokens: positions `p0..=p1`, keys `k0..=k1` (non-empty).
#[derive(Clone, Copy, Debug)]
pub(super) struct Rect {
    pub p0: i64,
    pub p1: i64,
    pub k0: i64,
    pub k1: i64,
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
    Chunked {
        size: i64,
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
                    Component::Chunked(c) => Prep::Chunked { size: c.size() },
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

    /// Exact classification of a tile for the whole pattern.
    pub(super) fn classify(&self, r: &Rect, bits: &mut Vec<u64>) -> Cover {
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
    pub(super) fn touched(
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
            Prep::Chunked { size } => {
                // Positions p0..=p1 cover consecutive chunks, whose keys are one interval.
                let (first, last) = (p0.div_euclid(size), p1.div_euclid(size));
                push_keys(out, first * size, last * size + size - 1, kmax, bn)
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

    /// For components whose fully covered tiles form one run (dense, windows, sinks, chunks), that
    /// run of kv tiles for query positions `p0..=p1`, if non-empty. Every tile of it is one
    /// [`Prep::classify`] would call full; this only saves classifying them one by one.
    pub(super) fn full_run(
        &self,
        p0: i64,
        p1: i64,
        causal: bool,
        kv_len: i64,
        bn: i64,
    ) -> Option<(i64, i64)> {
        let last_key = kv_len - 1;
        let (lo, hi) = match *self {
            Prep::Dense => (0, if causal { p0 } else { last_key }),
            // `right` is already 0 under causality.
            Prep::Window { left, right } => (p1 - left, p0 + right),
            Prep::Sinks { count } => (0, (count - 1).min(if causal { p0 } else { last_key })),
            // Rows of one chunk share its keys (up to the first row under causality); rows of
            // two chunks share none, so no tile is full.
            Prep::Chunked { size } => {
                let start = p0.div_euclid(size) * size;
                if p1.div_euclid(size) * size != start {
                    return None;
                }
                (start, if causal { p0 } else { start + size - 1 })
            }
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
    pub(super) fn classify(&self, r: &Rect, causal: bool) -> Cover {
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
            Prep::Chunked { size } => {
                let (q0, q1) = (r.p0.div_euclid(size), r.p1.div_euclid(size));
                let (c0, c1) = (r.k0.div_euclid(size), r.k1.div_euclid(size));
                // Full: rows and keys all in one chunk. Some: a chunk c holding rows and keys
                // (lo..=hi) whose first key of the tile is visible to its last row of the
                // tile; a chunk strictly inside lo..hi always is (all its rows and keys lie
                // inside the tile), so only the two ends need the test.
                let full = q0 == q1 && c0 == c1 && q0 == c0 && fully_causal;
                let (lo, hi) = (q0.max(c0), q1.min(c1));
                let sees = |c: i64| !causal || r.k0.max(c * size) <= r.p1.min(c * size + size - 1);
                cover(full, lo <= hi && (hi - lo >= 2 || sees(lo) || sees(hi)))
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
            Prep::Chunked { size } => {
                let start = p.div_euclid(size) * size;
                span(start, start + size - 1);
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
            Prep::Chunked { size } => {
                c.kind = MaskKind::Chunked as i32;
                c.block_q = size as i32;
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
    pub(super) fn push_program(&mut self, prep: &Prepared<'_>) {
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
