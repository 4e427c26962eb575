//! `sparse-attn viz`: pictures of patterns as PNG files.
//!
//! A picture is a grid of panels (one per head, or one per layer with `--model`), read left to
//! right, top to bottom, on a grey background with [`GAP`]-pixel margins. Every panel has query
//! rows top to bottom and keys left to right:
//!
//! - token level: an allowed (query, key) pair is a dark pixel, anything else white;
//! - tile level: the compiled block-sparse metadata (`BlockSparseMeta::compile`): full tiles
//!   blue, partial tiles orange, skipped tiles white, with a white line on tile borders when a
//!   tile is at least [`MIN_TILE_PX_FOR_LINES`] pixels;
//! - both: the two side by side (tokens left).
//!
//! With `--model`, a layer that is not softmax attention (Mamba, linear attention) is a panel
//! filled with [`OTHER`] (lavender): no pattern, no tiles. An adaptive pattern is drawn by
//! [`crate::viz_adaptive`] from the selection the device makes for given (or synthetic) q and
//! k: content-chosen blocks dark, forced ones [`FORCED`] (green), tiles as the compaction
//! kernel lists them.
//!
//! Panels larger than `--max-px` are max-pooled: one pixel covers `pool x pool` tokens and is
//! dark when any of them is allowed (at tile level: blue when every tile it touches is full,
//! white when none is listed, orange otherwise). Small panels are enlarged to about 256 pixels
//! (`zoom` pixels per token, at most 16). The scale is stated in the PNG's `Description` text
//! chunk and printed.

use std::path::Path;

use sparse_attn::pattern::{BlockSparseMeta, HeadPatterns, Layer, SparseShape};

use crate::io::Staged;
use crate::model::{self, Model};
use crate::pattern::{message, read_head_patterns, set_text};
use crate::{input_err, CliError, HeadSel, LevelArg, VizArgs};
use sparse_attn::pattern::spans::RowSpans;

/// Palette indices.
pub const WHITE: u8 = 0;
pub const DARK: u8 = 1;
pub const FULL: u8 = 2;
pub const PARTIAL: u8 = 3;
pub const BACKGROUND: u8 = 4;
/// A layer that is not softmax attention (`--model`).
pub const OTHER: u8 = 5;
/// An adaptive pattern's forced block (`keep_sinks`, `keep_local`) at token level; a
/// content-chosen one is [`DARK`].
pub const FORCED: u8 = 6;
/// RGB of each palette index, in index order.
pub const PALETTE: [[u8; 3]; 7] = [
    [255, 255, 255],
    [32, 32, 32],
    [49, 104, 189],
    [243, 156, 18],
    [200, 200, 200],
    [214, 196, 232],
    [46, 160, 67],
];
/// Margin around and between panels, in pixels.
pub const GAP: usize = 4;
/// Tile borders are drawn when a tile spans at least this many pixels.
pub const MIN_TILE_PX_FOR_LINES: usize = 8;
/// Panels are enlarged towards this many pixels when small.
const ZOOM_TARGET_PX: usize = 256;
const MAX_ZOOM: usize = 16;
/// Tiles of a static pattern's tile level unless --block-m / --block-n say otherwise: the
/// forward kernel's 64-row tile (that of decode and of head_dim 128) and its key tile.
const DEFAULT_BLOCK_M: usize = sparse_attn::ffi::SA_FWD_BLOCK_M_DECODE as usize;
const DEFAULT_BLOCK_N: usize = sparse_attn::ffi::SA_FWD_BLOCK_N as usize;
/// At most this many tiles per head are compiled for a tile-level picture (64 MiB of lists at
/// worst).
const MAX_TILES: usize = 1 << 24;

/// How tokens map to pixels: `pool x pool` tokens per cell, `zoom x zoom` pixels per cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    pub pool: usize,
    pub zoom: usize,
}

impl Scale {
    /// Max-pool when the longer side exceeds `max_px`, else enlarge towards 256 pixels.
    pub fn new(q_len: usize, kv_len: usize, max_px: usize) -> Scale {
        let m = q_len.max(kv_len).max(1);
        if m > max_px {
            Scale {
                pool: m.div_ceil(max_px),
                zoom: 1,
            }
        } else {
            Scale {
                pool: 1,
                zoom: (ZOOM_TARGET_PX.min(max_px) / m).clamp(1, MAX_ZOOM),
            }
        }
    }

    pub fn text(&self) -> String {
        if self.pool > 1 {
            format!(
                "1 px = {p}x{p} tokens, max-pooled (dark if any of them is allowed)",
                p = self.pool
            )
        } else if self.zoom > 1 {
            format!("1 token = {z}x{z} px", z = self.zoom)
        } else {
            "1 token = 1 px".into()
        }
    }
}

/// A panel before zooming: one palette index per cell.
#[derive(Clone)]
pub struct Raster {
    pub w: usize,
    pub h: usize,
    pub cells: Vec<u8>,
    /// Tile borders to draw after zooming: (cell rows, cell columns) where a tile starts.
    pub lines: Option<(Vec<usize>, Vec<usize>)>,
}

impl Raster {
    pub fn new(h: usize, w: usize) -> Raster {
        Raster {
            w,
            h,
            cells: vec![WHITE; w * h],
            lines: None,
        }
    }
}

/// The token mask of one head, max-pooled by `pool`, from the contract's predicate (as key
/// spans per query row).
fn token_raster(
    set: &HeadPatterns,
    head: usize,
    q_len: usize,
    kv_len: usize,
    pool: usize,
) -> Raster {
    let mut r = Raster::new(q_len.div_ceil(pool), kv_len.div_ceil(pool));
    let Some(pattern) = set.pattern(head) else {
        return r;
    };
    let mut rows = RowSpans::new(pattern, head, kv_len);
    let shift = kv_len as i64 - q_len as i64;
    for i in 0..q_len {
        let line = &mut r.cells[(i / pool) * r.w..][..r.w];
        for &(a, b) in rows.row(i as i64 + shift) {
            line[a as usize / pool..=(b as usize - 1) / pool].fill(DARK);
        }
    }
    r
}

/// Visited tokens above which a panel of view tiles is refused (see [`view_raster`]).
const MAX_VIEW_TOKENS: usize = 1 << 28;

/// The tile classes of one head from compiled metadata, at token scale, max-pooled by `pool`.
/// Heads whose tiles are not all natural (dilated and global patterns, see
/// `sparse_attn::pattern::view`) are drawn by [`view_raster`].
fn tile_raster(meta: &BlockSparseMeta, head: usize, scale: Scale) -> Result<Raster, CliError> {
    let natural = |m: usize| {
        let v = meta.view(head, m);
        v.row_step == 1 && v.key_step == 1 && v.gather_count == 0
    };
    if !(0..meta.num_tiles(head)).all(natural) {
        return view_raster(meta, head, scale);
    }
    let s = *meta.shape();
    let (nqt, nkt) = (meta.num_tiles(head), meta.num_kv_tiles());
    let mut class = vec![WHITE; nqt * nkt];
    for m in 0..nqt {
        for &n in meta.full(head, m) {
            class[m * nkt + n as usize] = FULL;
        }
        for &n in meta.partial(head, m) {
            class[m * nkt + n as usize] = PARTIAL;
        }
    }
    Ok(class_raster(&class, nkt, &s, scale))
}

/// A panel of tile classes (`class`: `[q tiles, nkt]` of [`FULL`], [`PARTIAL`] or [`WHITE`])
/// at token scale, max-pooled by `scale.pool`: a cell is blue when every tile it touches is
/// full, white when none is listed, orange otherwise; tile borders when tiles are large enough.
pub fn class_raster(class: &[u8], nkt: usize, s: &SparseShape, scale: Scale) -> Raster {
    let pool = scale.pool;
    let mut r = Raster::new(s.q_len.div_ceil(pool), s.kv_len.div_ceil(pool));
    // Tiles a cell touches: token range of the cell, divided by the tile size.
    let tiles = |c: usize, len: usize, block: usize| {
        let first = c * pool;
        let last = ((c + 1) * pool).min(len) - 1;
        first / block..=last / block
    };
    for ci in 0..r.h {
        let trows = tiles(ci, s.q_len, s.block_m);
        for cj in 0..r.w {
            let tcols = tiles(cj, s.kv_len, s.block_n);
            let (mut any_full, mut any_partial, mut any_skipped) = (false, false, false);
            for m in trows.clone() {
                for n in tcols.clone() {
                    match class[m * nkt + n] {
                        FULL => any_full = true,
                        PARTIAL => any_partial = true,
                        _ => any_skipped = true,
                    }
                }
            }
            r.cells[ci * r.w + cj] = match (any_full, any_partial, any_skipped) {
                (true, false, false) => FULL,
                (false, false, true) => WHITE,
                _ => PARTIAL,
            };
        }
    }
    let tile_px = s.block_m.min(s.block_n) * scale.zoom / pool;
    if tile_px >= MIN_TILE_PX_FOR_LINES {
        let starts = |len: usize, block: usize| -> Vec<usize> {
            (1..len.div_ceil(block)).map(|t| t * block / pool).collect()
        };
        r.lines = Some((starts(s.q_len, s.block_m), starts(s.kv_len, s.block_n)));
    }
    r
}

/// Tile classes of a head with view tiles (strided residue classes, gathered rows and keys),
/// whose tiles are not rectangles of the token grid: every token a visit covers is drawn in
/// that visit's class, a pooled pixel orange when any partial visit touches it, else blue when
/// a full one does, else white. Costs the visited tokens, refused above [`MAX_VIEW_TOKENS`].
fn view_raster(meta: &BlockSparseMeta, head: usize, scale: Scale) -> Result<Raster, CliError> {
    let s = *meta.shape();
    let pool = scale.pool;
    let mut r = Raster::new(s.q_len.div_ceil(pool), s.kv_len.div_ceil(pool));
    let mut budget = MAX_VIEW_TOKENS;
    for m in 0..meta.num_tiles(head) {
        for (rows, keys, full) in meta.visits(head, m) {
            budget = budget.checked_sub(rows.len() * keys.len()).ok_or_else(|| {
                CliError::Usage(format!(
                    "the tiles of head {head} cover more than {MAX_VIEW_TOKENS} tokens; use \
                     --level token or a shorter --seq-len"
                ))
            })?;
            for &i in &rows {
                let line = &mut r.cells[(i / pool) * r.w..][..r.w];
                for &j in &keys {
                    let cell = &mut line[j / pool];
                    if !full {
                        *cell = PARTIAL;
                    } else if *cell == WHITE {
                        *cell = FULL;
                    }
                }
            }
        }
    }
    Ok(r)
}

/// One grid cell: the panels of one head or layer (`set` is `None` for a layer that is not
/// softmax attention).
struct Panel {
    set: Option<HeadPatterns>,
    head: usize,
}

/// What to draw: panels of one shape, at one scale and level.
struct Picture {
    panels: Vec<Panel>,
    num_heads: usize,
    q_len: usize,
    kv_len: usize,
    level: LevelArg,
    block_m: usize,
    block_n: usize,
    scale: Scale,
    columns: usize,
}

/// Compiles `set` for the tile level, refusing tile grids too large to hold.
fn compile(set: &HeadPatterns, pic: &Picture) -> Result<BlockSparseMeta, CliError> {
    let shape = SparseShape {
        num_heads: pic.num_heads,
        q_len: pic.q_len,
        kv_len: pic.kv_len,
        block_m: pic.block_m,
        block_n: pic.block_n,
    };
    let tiles = shape.num_q_tiles().saturating_mul(shape.num_kv_tiles());
    if tiles > MAX_TILES {
        return Err(CliError::Usage(format!(
            "{} x {} tokens is {} x {} tiles of {}x{} (more than {MAX_TILES}); pass larger \
             --block-m/--block-n or use --level token",
            pic.q_len,
            pic.kv_len,
            shape.num_q_tiles(),
            shape.num_kv_tiles(),
            pic.block_m,
            pic.block_n
        )));
    }
    BlockSparseMeta::compile(set, shape).map_err(|e| CliError::Usage(message(e)))
}

/// Rasterises every panel and lays them out; returns (width, height, palette indices).
fn render(pic: &Picture) -> Result<(usize, usize, Vec<u8>), CliError> {
    let mut metas: Vec<(HeadPatterns, BlockSparseMeta)> = Vec::new();
    let mut cells: Vec<Vec<Raster>> = Vec::with_capacity(pic.panels.len());
    let levels = match pic.level {
        LevelArg::Token | LevelArg::Tile => 1,
        LevelArg::Both => 2,
    };
    for panel in &pic.panels {
        let Some(set) = &panel.set else {
            let pool = pic.scale.pool;
            let mut r = Raster::new(pic.q_len.div_ceil(pool), pic.kv_len.div_ceil(pool));
            r.cells.fill(OTHER);
            cells.push((0..levels).map(|_| r.clone()).collect());
            continue;
        };
        let mut row = Vec::new();
        if matches!(pic.level, LevelArg::Token | LevelArg::Both) {
            row.push(token_raster(
                set,
                panel.head,
                pic.q_len,
                pic.kv_len,
                pic.scale.pool,
            ));
        }
        if matches!(pic.level, LevelArg::Tile | LevelArg::Both) {
            let idx = match metas.iter().position(|(s, _)| s == set) {
                Some(i) => i,
                None => {
                    metas.push((set.clone(), compile(set, pic)?));
                    metas.len() - 1
                }
            };
            row.push(tile_raster(&metas[idx].1, panel.head, pic.scale)?);
        }
        cells.push(row);
    }
    Ok(compose(&cells, pic.scale.zoom, pic.columns))
}

/// Lays out grid cells of equal panels (each cell's panels side by side, `columns` cells per
/// row), every cell `z` pixels per raster cell; returns (width, height, palette indices).
pub fn compose(cells: &[Vec<Raster>], z: usize, columns: usize) -> (usize, usize, Vec<u8>) {
    let (ph, pw) = (cells[0][0].h * z, cells[0][0].w * z);
    let per_cell = cells[0].len();
    let cell_w = per_cell * pw + (per_cell - 1) * GAP;
    let cols = columns.min(cells.len()).max(1);
    let rows = cells.len().div_ceil(cols);
    let width = GAP + cols * (cell_w + GAP);
    let height = GAP + rows * (ph + GAP);
    let mut img = vec![BACKGROUND; width * height];
    for (k, cell) in cells.iter().enumerate() {
        let y0 = GAP + (k / cols) * (ph + GAP);
        for (s, r) in cell.iter().enumerate() {
            let x0 = GAP + (k % cols) * (cell_w + GAP) + s * (pw + GAP);
            for y in 0..ph {
                let src = &r.cells[(y / z) * r.w..][..r.w];
                let dst = &mut img[(y0 + y) * width + x0..][..pw];
                for (x, px) in dst.iter_mut().enumerate() {
                    *px = src[x / z];
                }
            }
            if let Some((hl, vl)) = &r.lines {
                for &c in hl {
                    img[(y0 + c * z) * width + x0..][..pw].fill(WHITE);
                }
                for &c in vl {
                    for y in 0..ph {
                        img[(y0 + y) * width + x0 + c * z] = WHITE;
                    }
                }
            }
        }
    }
    (width, height, img)
}

/// An 8-bit indexed PNG with `Title` and `Description` text chunks.
fn encode_png(
    width: usize,
    height: usize,
    pixels: &[u8],
    description: &str,
) -> Result<Vec<u8>, String> {
    let err = |e: png::EncodingError| format!("cannot encode the PNG: {e}");
    let (w, h) = (
        u32::try_from(width).map_err(|_| "picture too wide".to_string())?,
        u32::try_from(height).map_err(|_| "picture too tall".to_string())?,
    );
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, w, h);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_palette(PALETTE.concat());
    enc.set_compression(png::Compression::High);
    enc.add_text_chunk("Title".into(), "sparse-attn viz".into())
        .map_err(err)?;
    // tEXt is Latin-1: anything else (a file name, say) becomes '?'.
    let ascii: String = description
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect();
    enc.add_text_chunk("Description".into(), ascii)
        .map_err(err)?;
    let mut writer = enc.write_header().map_err(err)?;
    writer.write_image_data(pixels).map_err(err)?;
    writer.finish().map_err(err)?;
    Ok(bytes)
}

fn level_text(pic: &Picture) -> String {
    let tiles = format!(
        "tile level ({}x{} tiles): blue = full, orange = partial, white = skipped",
        pic.block_m, pic.block_n
    );
    match pic.level {
        LevelArg::Token => "token level: dark = allowed".into(),
        LevelArg::Tile => tiles,
        LevelArg::Both => format!("left: token level (dark = allowed); right: {tiles}"),
    }
}

/// The pattern-file picture: one panel per selected head.
fn pattern_picture(a: &VizArgs, path: &Path) -> Result<(Picture, String), CliError> {
    let set = read_head_patterns(path)?;
    let q_len = a
        .q_len
        .ok_or_else(|| CliError::Usage("--pattern needs --q-len".into()))?;
    let kv_len = a.kv_len.unwrap_or(q_len);
    let num_heads = match (&set, a.num_heads) {
        (_, Some(0)) => return Err(CliError::Usage("--num-heads must be positive".into())),
        (_, Some(h)) => h,
        (HeadPatterns::PerHead(v), None) => v.len(),
        (HeadPatterns::All(_), None) => 1,
    };
    check_lengths(q_len, kv_len)?;
    set.validate(num_heads, kv_len).map_err(|e| {
        input_err(
            path,
            format!(
                "does not fit q_len {q_len}, kv_len {kv_len}, {num_heads} head(s): {}",
                message(e)
            ),
        )
    })?;
    let varies = match &set {
        HeadPatterns::PerHead(v) => v.iter().any(|p| p != &v[0] || p.is_head_dependent()),
        HeadPatterns::All(p) => p.is_head_dependent(),
    };
    let heads: Vec<usize> = match a.head {
        Some(HeadSel::One(h)) if h >= num_heads => {
            return Err(CliError::Usage(format!(
                "--head {h} is out of range ({num_heads} heads)"
            )))
        }
        Some(HeadSel::One(h)) => vec![h],
        Some(HeadSel::All) => (0..num_heads).collect(),
        None if varies => (0..num_heads).collect(),
        None => vec![0],
    };
    let max_px = a.max_px.unwrap_or(1024);
    let panels = heads.len();
    let heads_text = if panels == 1 {
        format!("head {}", heads[0])
    } else {
        format!("heads 0-{} left to right, top to bottom", num_heads - 1)
    };
    let pic = Picture {
        panels: heads
            .into_iter()
            .map(|head| Panel {
                set: Some(set.clone()),
                head,
            })
            .collect(),
        num_heads,
        q_len,
        kv_len,
        level: a.level,
        block_m: a.block_m.unwrap_or(DEFAULT_BLOCK_M),
        block_n: a.block_n.unwrap_or(DEFAULT_BLOCK_N),
        scale: Scale::new(q_len, kv_len, max_px),
        columns: a
            .columns
            .unwrap_or_else(|| (panels as f64).sqrt().ceil() as usize),
    };
    let caption = format!(
        "{}; q_len {q_len}, kv_len {kv_len}, {num_heads} head{}; {heads_text}; {}; {}",
        set_text(&set),
        if num_heads == 1 { "" } else { "s" },
        level_text(&pic),
        pic.scale.text()
    );
    Ok((pic, caption))
}

/// The model picture: one panel per layer (one head), at `q_len = kv_len = seq_len`.
fn model_picture(a: &VizArgs, path: &Path) -> Result<(Picture, String), CliError> {
    let overrides = model::Overrides {
        num_heads: a.num_heads,
        ..Default::default()
    };
    let m: Model = model::load(path, &overrides, false)?;
    let n = a
        .seq_len
        .ok_or_else(|| CliError::Usage("--model needs --seq-len".into()))?;
    check_lengths(n, n)?;
    m.plan
        .validate(m.num_heads, n)
        .map_err(|e| input_err(path, message(e)))?;
    let head = match a.head {
        None => 0,
        Some(HeadSel::One(h)) if h < m.num_heads => h,
        Some(HeadSel::One(h)) => {
            return Err(CliError::Usage(format!(
                "--head {h} is out of range ({} heads)",
                m.num_heads
            )))
        }
        Some(HeadSel::All) => {
            return Err(CliError::Usage(
                "--head all draws the heads of one pattern; with --model pick one head".into(),
            ))
        }
    };
    let layers = m.plan.layers.len();
    let pic = Picture {
        panels: m
            .plan
            .layers
            .iter()
            .map(|layer| Panel {
                set: layer.patterns().cloned(),
                head,
            })
            .collect(),
        num_heads: m.num_heads,
        q_len: n,
        kv_len: n,
        level: a.level,
        block_m: a.block_m.unwrap_or(DEFAULT_BLOCK_M),
        block_n: a.block_n.unwrap_or(DEFAULT_BLOCK_N),
        scale: Scale::new(n, n, a.max_px.unwrap_or(128)),
        columns: a.columns.unwrap_or(layers.min(16)),
    };
    // Each distinct layer once, with its head_dim (Gemma 4's global layers have their own).
    let mut kinds: Vec<String> = Vec::new();
    for layer in &m.plan.layers {
        let t = match layer {
            Layer::Attention(a) => match m.layer_head_dim(a) {
                Some(d) => format!("{} [head_dim {d}]", set_text(&a.patterns)),
                None => set_text(&a.patterns),
            },
            Layer::NonAttention(o) => format!("{}: not softmax attention, lavender", o.kind),
        };
        if !kinds.contains(&t) {
            kinds.push(t);
        }
    }
    let caption = format!(
        "{}{}: {layers} layers left to right, top to bottom (patterns: {}); seq-len {n} \
         (q_len = kv_len = {n}); head {head}; {}; {}",
        path.display(),
        m.model_type
            .as_deref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default(),
        kinds.join(" | "),
        level_text(&pic),
        pic.scale.text()
    );
    Ok((pic, caption))
}

pub fn check_lengths(q_len: usize, kv_len: usize) -> Result<(), CliError> {
    if q_len == 0 || kv_len == 0 {
        return Err(CliError::Usage(format!(
            "lengths must be positive (got q_len {q_len}, kv_len {kv_len})"
        )));
    }
    if q_len.saturating_add(kv_len) > i32::MAX as usize {
        return Err(CliError::Usage(format!(
            "q_len + kv_len must fit in i32 (got {q_len} + {kv_len})"
        )));
    }
    Ok(())
}

pub fn cmd_viz(a: &VizArgs) -> Result<(), CliError> {
    if a.block_m == Some(0) || a.block_n == Some(0) || a.max_px == Some(0) || a.columns == Some(0) {
        return Err(CliError::Usage(
            "--block-m, --block-n, --max-px and --columns must be positive".into(),
        ));
    }
    let adaptive = match &a.pattern {
        Some(p) => crate::adaptive::read_pattern(p)?,
        None => None,
    };
    let (w, h, pixels, caption) = match (&a.pattern, &a.model, adaptive) {
        (Some(p), None, Some(pattern)) => crate::viz_adaptive::draw(a, p, pattern)?,
        (Some(_), None, None) | (None, Some(_), None) => {
            let adaptive_only = [
                (a.input.is_some(), "--input"),
                (a.batch_index.is_some(), "--batch-index"),
                (a.seed.is_some(), "--seed"),
                (a.head_dim.is_some(), "--head-dim"),
                (a.scale.is_some(), "--scale"),
            ];
            if let Some((_, flag)) = adaptive_only.iter().find(|(given, _)| *given) {
                return Err(CliError::Usage(format!(
                    "{flag} draws an adaptive pattern's selection; a static pattern does not \
                     depend on q and k"
                )));
            }
            let (pic, caption) = match (&a.pattern, &a.model) {
                (Some(p), _) => pattern_picture(a, p)?,
                (None, Some(m)) => model_picture(a, m)?,
                (None, None) => unreachable!("matched above"),
            };
            let (w, h, pixels) = render(&pic)?;
            (w, h, pixels, caption)
        }
        _ => {
            return Err(CliError::Usage(
                "give exactly one of --pattern and --model".into(),
            ))
        }
    };
    let png = encode_png(w, h, &pixels, &caption).map_err(CliError::Output)?;
    Staged::write_bytes(&a.out, &png)
        .and_then(Staged::commit)
        .map_err(CliError::Output)?;
    println!("wrote {} ({w}x{h} px): {caption}", a.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparse_attn::pattern::render_token_mask;

    #[test]
    fn token_raster_is_the_rendered_mask() {
        let set = HeadPatterns::from_json(
            r#"{"heads": [
                {"causal": true, "components": [{"sinks": {"count": 3}}, {"sliding_window": {"size": 9}}]},
                {"causal": false, "components": [{"dilated": {"stride": 3}}, {"global": {"tokens": [4, 30]}}]},
                {"causal": true, "components": [{"bigbird": {"block": 8, "window_blocks": 1, "global_blocks": 1, "random_blocks": 2, "seed": 4}}]}
            ]}"#,
        )
        .unwrap();
        for (q, kv) in [(40, 40), (17, 45), (45, 33)] {
            let mask = render_token_mask(&set, 3, q, kv).unwrap();
            for h in 0..3 {
                let r = token_raster(&set, h, q, kv, 1);
                let want: Vec<u8> = mask[h * q * kv..][..q * kv]
                    .iter()
                    .map(|&m| if m == 1 { DARK } else { WHITE })
                    .collect();
                assert_eq!(r.cells, want, "head {h}, {q}x{kv}");
                // Pooling is the max over each cell.
                let pooled = token_raster(&set, h, q, kv, 4);
                for ci in 0..pooled.h {
                    for cj in 0..pooled.w {
                        let any = (ci * 4..(ci * 4 + 4).min(q)).any(|i| {
                            (cj * 4..(cj * 4 + 4).min(kv)).any(|j| mask[(h * q + i) * kv + j] == 1)
                        });
                        assert_eq!(pooled.cells[ci * pooled.w + cj] == DARK, any);
                    }
                }
            }
        }
    }

    #[test]
    fn scales() {
        assert_eq!(Scale::new(8, 8, 1024), Scale { pool: 1, zoom: 16 });
        assert_eq!(Scale::new(100, 300, 1024), Scale { pool: 1, zoom: 1 });
        assert_eq!(Scale::new(2048, 100, 1024), Scale { pool: 2, zoom: 1 });
        assert_eq!(Scale::new(32768, 32768, 128), Scale { pool: 256, zoom: 1 });
        assert_eq!(Scale::new(64, 64, 128), Scale { pool: 1, zoom: 2 });
    }
}
