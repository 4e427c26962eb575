//! `viz` of an adaptive pattern (docs/adaptive.md): the selection depends on the contents of
//! q and k, so a picture is of one sequence's selection, made as `run` makes it — on the
//! device (emulator): key block summaries, scores (or the input's `scores` for `score:
//! given`), selection kernel — and, at tile level, the compaction kernel's tile lists, which
//! are what the forward kernel walks. The forward kernel itself does not run.
//!
//! - With `--input`, q and k (and `scores`) are those of `run --input`, sequence
//!   `--batch-index` (default 0): the token panels equal that sequence's `run --mask-out`.
//! - Without, q and k are the contract's seeded synthetic needle field
//!   (`sparse_attn::adaptive::needle`) over `--kv-len` tokens, `--seed` (default 1),
//!   `--head-dim` (default 64), `--num-heads` (default 3) heads: heads 0 and 1 of every three
//!   field heads (sink, locality, columns, needles), head 2 diffuse; the queries are the last
//!   `--q-len` tokens. Needles need 640 tokens: a shorter field has none (the caption says so).
//!
//! Token level: a content-chosen block's allowed keys dark, a forced block's (`keep_sinks`,
//! `keep_local`) and a static component's keys (a union's window or sinks) green, the rest
//! white (a pooled pixel is dark when any of its tokens is
//! content-chosen, else green when any is forced). Tile level: the plan's tiles, full blue,
//! partial orange, skipped white. The caption and stdout give each drawn head's density
//! (allowed over causal pairs, or over all pairs when the pattern is not causal).

use std::path::Path;

use half::{bf16, f16};
use sparse_attn::adaptive::needle::{
    FieldSpec, HeadKind, NeedleField, NEEDLE_FIRST_KEY, NEEDLE_GAP, SINK_TOKENS,
};
use sparse_attn::adaptive::{
    group_of, AdaptiveComponent, AdaptivePattern, AdaptivePlan, AdaptiveTiles, BlockSelect,
    GivenScores, Grouping, Score,
};
use sparse_attn::pattern::SparseShape;
use sparse_attn::{AttnOptions, AttnProblem, DType, EmuRun, SeqLens};

use crate::io::{self, Storage};
use crate::viz::{self, Raster, Scale, DARK, FORCED, FULL, PARTIAL, WHITE};
use crate::{input_err, CliError, HeadSel, LevelArg, VizArgs};

/// Longest query or key sequence drawn: the selection runs on the emulator (the scoring
/// kernel costs about q_len x kv_len / B dot products per head).
pub const MAX_TOKENS: usize = 32768;
/// Default seed of the synthetic needle field.
const DEFAULT_SEED: u64 = 1;
/// Default head_dim of the synthetic needle field.
const DEFAULT_HEAD_DIM: usize = 64;
/// Default number of synthetic heads: two field heads and a diffuse one.
const DEFAULT_HEADS: usize = 3;

/// Where q and k come from.
enum Source {
    /// An input file's sequence.
    Input {
        inputs: io::Inputs,
        batch_index: usize,
    },
    /// The synthetic needle field.
    Field { field: NeedleField },
}

/// One sequence's q and k (as `[len, heads, head_dim]` storage words) and shape.
struct Sequence {
    dtype: DType,
    q_len: usize,
    kv_len: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    q: Vec<u16>,
    k: Vec<u16>,
    /// The sequence's given scores, `[heads, groups, blocks]`, and their heads.
    scores: Option<(Vec<f32>, usize)>,
}

/// Draws an adaptive pattern: (width, height, palette indices, caption).
pub fn draw(
    a: &VizArgs,
    path: &Path,
    pattern: AdaptivePattern,
) -> Result<(usize, usize, Vec<u8>, String), CliError> {
    let AdaptiveComponent::Select(sel) = pattern.component else {
        return Err(CliError::NotYet(
            "drawing lsh patterns (the bucket reference exists: sparse_attn::adaptive::lsh)".into(),
        ));
    };
    if a.block_m.is_some() || a.block_n.is_some() {
        return Err(CliError::Usage(
            "--block-m / --block-n: an adaptive pattern's tiles are those of its plan".into(),
        ));
    }
    let source = read_source(a, &sel)?;
    let seq = sequence(a, &source)?;
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: 1,
            q_len: seq.q_len,
            kv_len: seq.kv_len,
        },
        seq.num_heads,
        seq.num_kv_heads,
        u32::try_from(seq.head_dim).unwrap_or(u32::MAX),
        seq.dtype,
    )
    .map_err(|e| match &source {
        Source::Input { .. } => input_err(a.input.as_deref().unwrap_or(path), e),
        Source::Field { .. } => {
            CliError::Usage(format!("without --input, q and k are synthetic: {e}"))
        }
    })?;
    let opts = AttnOptions {
        causal: pattern.causal,
        scale: a.scale,
        ..Default::default()
    };
    let plan =
        AdaptivePlan::with_union(&problem, &sel, &pattern.statics, Grouping::Prefill, &opts)?;
    let seqs = SeqLens::varlen_from_lens(&[(seq.q_len, seq.kv_len)])?;
    let tile_level = matches!(a.level, LevelArg::Tile | LevelArg::Both);
    let (bits, tiles) = match seq.dtype {
        DType::F16 => select::<f16>(&plan, &seqs, &seq, tile_level)?,
        DType::BF16 => select::<bf16>(&plan, &seqs, &seq, tile_level)?,
    };

    let heads: Vec<usize> = match a.head {
        Some(HeadSel::One(h)) if h >= seq.num_heads => {
            return Err(CliError::Usage(format!(
                "--head {h} is out of range ({} heads)",
                seq.num_heads
            )))
        }
        Some(HeadSel::One(h)) => vec![h],
        Some(HeadSel::All) | None => (0..seq.num_heads).collect(),
    };
    let scale = Scale::new(seq.q_len, seq.kv_len, a.max_px.unwrap_or(1024));
    let shape = SparseShape {
        num_heads: seq.num_heads,
        q_len: seq.q_len,
        kv_len: seq.kv_len,
        block_m: plan.attn().tiles().block_m as usize,
        block_n: plan.attn().tiles().block_n as usize,
    };
    let forced = forced_blocks(&sel, seq.q_len, seq.kv_len);
    let mut cells = Vec::with_capacity(heads.len());
    let mut densities = Vec::with_capacity(heads.len());
    for &h in &heads {
        let (token, allowed) = token_raster(&plan, &bits, &seqs, h, &forced, scale.pool);
        densities.push(format!(
            "head {h} {:.2}%",
            100.0 * allowed as f64 / pairs(seq.q_len, seq.kv_len, pattern.causal).max(1) as f64
        ));
        let mut row = Vec::new();
        if matches!(a.level, LevelArg::Token | LevelArg::Both) {
            row.push(token);
        }
        if let Some(t) = &tiles {
            row.push(tile_raster(t, h, &shape, scale));
        }
        cells.push(row);
    }
    let columns = a
        .columns
        .unwrap_or_else(|| (heads.len() as f64).sqrt().ceil() as usize);
    let (w, h, pixels) = viz::compose(&cells, scale.zoom, columns);
    let heads_text = if heads.len() == 1 {
        format!("head {}", heads[0])
    } else {
        format!("heads 0-{} left to right, top to bottom", seq.num_heads - 1)
    };
    let caption = format!(
        "adaptive {}{}; selected on the device (emulator) for {}; q_len {}, kv_len {}, {} head{}, \
         head_dim {}; {heads_text}; density (allowed / {} pairs) {}; {}; {}",
        pattern.describe(),
        if pattern.causal { " (causal)" } else { "" },
        source_text(a, &source),
        seq.q_len,
        seq.kv_len,
        seq.num_heads,
        if seq.num_heads == 1 { "" } else { "s" },
        seq.head_dim,
        if pattern.causal { "causal" } else { "all" },
        densities.join(", "),
        level_text(a.level, &shape),
        scale.text()
    );
    Ok((w, h, pixels, caption))
}

/// Reads `--input`, or generates the needle field; the usage errors of each.
fn read_source(a: &VizArgs, sel: &BlockSelect) -> Result<Source, CliError> {
    let Some(input) = &a.input else {
        if sel.score() == Score::Given {
            return Err(CliError::Usage(
                "score \"given\" draws the selection of caller scores: pass --input with a \
                 `scores` tensor"
                    .into(),
            ));
        }
        return Ok(Source::Field {
            field: needle_field(a)?,
        });
    };
    let bytes = std::fs::read(input).map_err(|e| input_err(input, format!("cannot read ({e})")))?;
    let inputs = io::read_inputs(&bytes).map_err(|e| input_err(input, e))?;
    let [batch, q_len, num_heads, _] = inputs.q_shape;
    let kv_len = inputs.kv_shape[1];
    let batch_index = a.batch_index.unwrap_or(0);
    if batch_index >= batch {
        return Err(CliError::Arg(format!(
            "--batch-index {batch_index} is out of range: {} holds {batch} sequence{}",
            input.display(),
            if batch == 1 { "" } else { "s" }
        )));
    }
    for (flag, given, has) in [
        ("--q-len", a.q_len, q_len),
        ("--kv-len", a.kv_len, kv_len),
        ("--num-heads", a.num_heads, num_heads),
    ] {
        if let Some(n) = given.filter(|&n| n != has) {
            return Err(CliError::Arg(format!(
                "{flag} {n} does not match {} ({has})",
                input.display()
            )));
        }
    }
    check_lengths(q_len, kv_len)?;
    match (&inputs.scores, sel.score()) {
        (None, Score::Given) => {
            return Err(input_err(
                input,
                "score \"given\" needs the caller's block scores: a `scores` tensor (F32 \
                 [batch, heads, groups, blocks])",
            ))
        }
        (Some((shape, _)), _) if shape[0] != batch => {
            return Err(input_err(
                input,
                format!("tensor `scores` has {} sequences, q has {batch}", shape[0]),
            ))
        }
        _ => {}
    }
    Ok(Source::Input {
        inputs,
        batch_index,
    })
}

fn check_lengths(q_len: usize, kv_len: usize) -> Result<(), CliError> {
    viz::check_lengths(q_len, kv_len)?;
    if q_len > MAX_TOKENS || kv_len > MAX_TOKENS {
        return Err(CliError::Usage(format!(
            "an adaptive selection is drawn from the emulator's run: at most {MAX_TOKENS} \
             queries and keys (got q_len {q_len}, kv_len {kv_len})"
        )));
    }
    Ok(())
}

/// The needle field of `--kv-len` tokens (default --q-len), `--num-heads` heads.
fn needle_field(a: &VizArgs) -> Result<NeedleField, CliError> {
    let q_len = a.q_len.ok_or_else(|| {
        CliError::Usage("--pattern needs --q-len (or an adaptive pattern's --input)".into())
    })?;
    let kv_len = a.kv_len.unwrap_or(q_len);
    check_lengths(q_len, kv_len)?;
    if q_len > kv_len {
        return Err(CliError::Usage(format!(
            "without --input the queries are the last q_len tokens of the field: --q-len \
             {q_len} must be at most --kv-len {kv_len}"
        )));
    }
    let heads = match a.num_heads {
        Some(0) => return Err(CliError::Usage("--num-heads must be positive".into())),
        Some(h) => h,
        None => DEFAULT_HEADS,
    };
    let mut spec = FieldSpec::new(
        kv_len,
        a.head_dim.unwrap_or(DEFAULT_HEAD_DIM),
        a.seed.unwrap_or(DEFAULT_SEED),
    );
    spec.heads = (0..heads)
        .map(|h| {
            if h % 3 == 2 {
                HeadKind::Diffuse
            } else {
                HeadKind::Field
            }
        })
        .collect();
    if kv_len < needle_tokens() {
        spec.needles = 0;
    }
    spec.columns = spec.columns.min(kv_len.saturating_sub(SINK_TOKENS + 1));
    NeedleField::generate(&spec)
        .map_err(|e| CliError::Usage(format!("without --input, q and k are synthetic: {e}")))
}

/// Tokens a field needs for needles (a key after the first block, its queries 256 later, in
/// the second half).
fn needle_tokens() -> usize {
    2 * (NEEDLE_FIRST_KEY + NEEDLE_GAP)
}

/// The drawn sequence's q and k: the input's sequence, or the field's (the last q_len
/// queries, every key) in bf16.
fn sequence(a: &VizArgs, source: &Source) -> Result<Sequence, CliError> {
    match source {
        Source::Input {
            inputs,
            batch_index: b,
        } => {
            let [_, q_len, num_heads, head_dim] = inputs.q_shape;
            let [_, kv_len, num_kv_heads, _] = inputs.kv_shape;
            let (qn, kn) = (
                q_len * num_heads * head_dim,
                kv_len * num_kv_heads * head_dim,
            );
            let scores = inputs.scores.as_ref().map(|(shape, values)| {
                let per: usize = shape[1..].iter().product();
                (values[b * per..][..per].to_vec(), shape[1])
            });
            Ok(Sequence {
                dtype: inputs.dtype,
                q_len,
                kv_len,
                num_heads,
                num_kv_heads,
                head_dim,
                q: inputs.q[b * qn..][..qn].to_vec(),
                k: inputs.k[b * kn..][..kn].to_vec(),
                scores,
            })
        }
        Source::Field { field } => {
            let spec = field.spec();
            let (t, h, d) = (spec.seq_len, spec.heads.len(), spec.head_dim);
            let q_len = a.q_len.unwrap_or(t);
            let words = |x: &[f32]| -> Vec<u16> {
                x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect()
            };
            Ok(Sequence {
                dtype: DType::BF16,
                q_len,
                kv_len: t,
                num_heads: h,
                num_kv_heads: h,
                head_dim: d,
                q: words(&field.q()[(t - q_len) * h * d..]),
                k: words(field.k()),
                scores: None,
            })
        }
    }
}

/// The device selection of the sequence (and its tile lists when drawn).
fn select<T: Storage>(
    plan: &AdaptivePlan,
    seqs: &SeqLens,
    seq: &Sequence,
    tile_level: bool,
) -> Result<(Vec<i32>, Option<AdaptiveTiles>), CliError> {
    let q = io::Inputs::typed::<T>(&seq.q);
    let k = io::Inputs::typed::<T>(&seq.k);
    let given = seq.scores.as_ref().map(|(scores, heads)| GivenScores {
        scores,
        heads: *heads,
    });
    let run = EmuRun::default();
    let bits = plan.select_emulated(seqs, &q, &k, given, &run)?;
    let tiles = if tile_level {
        Some(plan.tiles_emulated(seqs, &bits, &run)?)
    } else {
        None
    };
    Ok((bits, tiles))
}

/// Per query row, the forced blocks of its group (those of the group's last row in the call,
/// as the selection makes them).
fn forced_blocks(sel: &BlockSelect, q_len: usize, kv_len: usize) -> Vec<Vec<i64>> {
    let group = |i: usize| group_of(sel, Grouping::Prefill, i, q_len, kv_len);
    let shift = kv_len as i64 - q_len as i64;
    let mut rows = Vec::with_capacity(q_len);
    let mut i = 0;
    while i < q_len {
        let mut last = i;
        while last + 1 < q_len && group(last + 1) == group(i) {
            last += 1;
        }
        let f = sel.forced(last as i64 + shift, kv_len);
        rows.extend(std::iter::repeat(f).take(last + 1 - i));
        i = last + 1;
    }
    rows
}

/// Head `h`'s token panel, max-pooled by `pool`, and its allowed pairs. The allowed keys are
/// [`AdaptivePlan::allowed_by_bits`]'s, the mask `run --mask-out` writes: within a key block
/// they are a prefix (the block's bit, then `j < kv_len` and causal), so each block is read
/// from its first key on while it allows; with static components in the union every key is
/// read, and those a static component allows are drawn like forced ones.
fn token_raster(
    plan: &AdaptivePlan,
    bits: &[i32],
    seqs: &SeqLens,
    h: usize,
    forced: &[Vec<i64>],
    pool: usize,
) -> (Raster, usize) {
    let (q_len, kv_len) = seqs.lens(0);
    let b = plan.component().block() as usize;
    let statics = plan.statics();
    let fixed = |i: usize, j: usize| {
        let p = i as i64 + kv_len as i64 - q_len as i64;
        statics
            .iter()
            .any(|c| c.admits(h, p, j as i64, kv_len, plan.causal()))
    };
    let mut r = Raster::new(q_len.div_ceil(pool), kv_len.div_ceil(pool));
    let mut allowed = 0;
    for (i, forced) in forced.iter().enumerate() {
        let line = &mut r.cells[(i / pool) * r.w..][..r.w];
        for jb in 0..kv_len.div_ceil(b) {
            let class = if forced.binary_search(&(jb as i64)).is_ok() {
                FORCED
            } else {
                DARK
            };
            for j in jb * b..((jb + 1) * b).min(kv_len) {
                if !plan.allowed_by_bits(bits, seqs, 0, h, i, j) {
                    if statics.is_empty() {
                        break;
                    }
                    continue;
                }
                allowed += 1;
                let class = if class == DARK && fixed(i, j) {
                    FORCED
                } else {
                    class
                };
                let cell = &mut line[j / pool];
                if *cell != DARK {
                    *cell = class;
                }
            }
        }
    }
    (r, allowed)
}

/// Head `h`'s tile panel from the compaction kernel's lists.
fn tile_raster(tiles: &AdaptiveTiles, h: usize, shape: &SparseShape, scale: Scale) -> Raster {
    let nqt = shape.q_len.div_ceil(shape.block_m);
    let nkt = shape.kv_len.div_ceil(shape.block_n);
    let mut class = vec![WHITE; nqt * nkt];
    for m in 0..nqt {
        for (list, c) in [
            (tiles.full(0, h, m), FULL),
            (tiles.partial(0, h, m), PARTIAL),
        ] {
            for &n in list {
                if let Some(cell) = usize::try_from(n).ok().filter(|&n| n < nkt) {
                    class[m * nkt + cell] = c;
                }
            }
        }
    }
    viz::class_raster(&class, nkt, shape, scale)
}

/// Pairs a head could attend: causal ones (bottom-right aligned) or all.
fn pairs(q_len: usize, kv_len: usize, causal: bool) -> usize {
    if !causal {
        return q_len * kv_len;
    }
    (0..q_len)
        .map(|i| (i + kv_len + 1).saturating_sub(q_len).min(kv_len))
        .sum()
}

fn source_text(a: &VizArgs, source: &Source) -> String {
    match source {
        Source::Input { batch_index, .. } => format!(
            "{}, sequence {batch_index}",
            a.input
                .as_deref()
                .map(Path::display)
                .map_or_else(String::new, |d| d.to_string())
        ),
        Source::Field { field } => {
            let spec = field.spec();
            let kinds: Vec<String> = spec
                .heads
                .iter()
                .enumerate()
                .map(|(h, k)| {
                    format!(
                        "{h} {}",
                        match k {
                            HeadKind::Field => "field",
                            HeadKind::Diffuse => "diffuse",
                        }
                    )
                })
                .collect();
            format!(
                "synthetic needle-field heads (seed {}, no input; heads {}{})",
                spec.seed,
                kinds.join(", "),
                if spec.needles == 0 {
                    format!("; no needles below {} tokens", needle_tokens())
                } else {
                    format!("; {} needles per field head", spec.needles)
                }
            )
        }
    }
}

fn level_text(level: LevelArg, shape: &SparseShape) -> String {
    let token = "token level: dark = key block chosen by content, green = forced block \
                 (keep_sinks / keep_local) or a static component's key, white = not allowed";
    let tiles = format!(
        "tile level (the plan's {}x{} tiles as the compaction kernel lists them): blue = full, \
         orange = partial, white = skipped",
        shape.block_m, shape.block_n
    );
    match level {
        LevelArg::Token => token.into(),
        LevelArg::Tile => tiles,
        LevelArg::Both => format!("left: {token}; right: {tiles}"),
    }
}
