//! `sparse-attn`: the command line of the crate.
//!
//! - `run`: attention over q/k/v from a safetensors file with any pattern or head pattern set,
//!   exactly per docs/patterns.md "CLI file formats" (`--mask-out` writes the applied token
//!   mask), or as one layer of a Hugging Face model attends (`--model`, `--layer`), with the
//!   input's optional sink logits and ALiBi slopes.
//! - `decode`: prefill then token-by-token decode through a paged KV cache (GPU or emulator);
//!   the output equals `run`'s over all tokens, and the cache's pages and bytes are printed.
//! - `plan`: a Hugging Face model's layer plan at a sequence length: per-layer pattern,
//!   head_dim, density, attention FLOPs and KV-cache bytes against dense (table or `--json`);
//!   layers that are not softmax attention are listed and count nothing.
//! - `viz`: PNG pictures of a pattern (token and/or tile level, per head) or of a model's
//!   layer plan (one panel per layer; layers that are not softmax attention in lavender); an
//!   adaptive pattern's selection for an input's q and k or for seeded synthetic heads, made
//!   on the device (emulator) as `run` makes it (forced blocks green).
//! - `demo`: random inputs, dense and causal attention on a backend, checked against the f64
//!   reference (works on any machine through the CPU emulator).
//! - `kernels`: the ptxas resource report build.rs captured.
//!
//! Bad input exits with status 1 and one line on stderr naming the problem (bad command-line
//! usage: status 2, as clap does); output files are only ever replaced by complete files
//! (written next to them, then renamed), so nothing is written on failure.

mod adaptive;
mod bench;
mod decode;
mod io;
mod model;
mod pattern;
mod plan;
mod setup;
mod viz;
mod viz_adaptive;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use half::{bf16, f16};
use sparse_attn::backend::{self, Gpu};
use sparse_attn::pattern::render_token_mask;
use sparse_attn::reference::{self, RefInputs};
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, EmuRun, Error, SeqLens};

use io::{OutTensor, Staged, Storage};

#[derive(Parser)]
#[command(
    name = "sparse-attn",
    version,
    about = "Block-sparse flash attention: run patterns on safetensors files, plan and picture model layer plans, demo, kernel report"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attention over q, k, v from a safetensors file with a pattern file (see docs/patterns.md).
    Run(RunArgs),
    /// Prefill then token-by-token decode through a paged KV cache (see docs/patterns.md).
    Decode(decode::DecodeArgs),
    /// Times the forward kernel on the GPU for one case; prints one JSON line.
    Bench(bench::BenchArgs),
    /// Per-layer pattern, density, attention FLOPs and KV-cache bytes of a Hugging Face model.
    Plan(PlanArgs),
    /// PNG pictures of a pattern (token and tile level, per head) or of a model's layers; an
    /// adaptive pattern's selection for --input q/k or seeded synthetic heads.
    Viz(VizArgs),
    /// Random q, k, v; dense and causal attention checked against the f64 reference.
    Demo(DemoArgs),
    /// Registers, shared memory and spills of every compiled GPU kernel (ptxas report).
    Kernels(KernelsArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// CUDA when a GPU and the compiled kernels are available, else the emulator.
    Auto,
    /// The GPU (fails if there is none or the kernels were not built).
    Cuda,
    /// The CPU emulator running the same kernel source.
    Emulator,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F16,
    Bf16,
}

impl DTypeArg {
    pub fn name(self) -> &'static str {
        match self {
            DTypeArg::F16 => "f16",
            DTypeArg::Bf16 => "bf16",
        }
    }
    pub fn bytes(self) -> usize {
        2
    }
}

/// What `viz` draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LevelArg {
    /// Allowed (query, key) pairs: dark pixels (an adaptive pattern's forced blocks green).
    Token,
    /// The compiled metadata: full tiles blue, partial orange, skipped white.
    Tile,
    /// Token level and tile level side by side.
    Both,
}

/// `--head H` or `--head all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadSel {
    All,
    One(usize),
}

fn parse_head(s: &str) -> Result<HeadSel, String> {
    if s == "all" {
        return Ok(HeadSel::All);
    }
    s.parse()
        .map(HeadSel::One)
        .map_err(|_| format!("expected a head index or `all`, got `{s}`"))
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    source: setup::SourceArgs,
    /// q, k, v: [batch, len, heads, head_dim], F16 or BF16; optional `sinks` (learnable sink
    /// logits) and `alibi_slopes`, each F32 [num_heads].
    #[arg(long, value_name = "IN.safetensors")]
    input: PathBuf,
    /// Receives `out` (dtype of q) and `lse` (F32, [batch, num_heads, q_len]).
    #[arg(long, value_name = "OUT.safetensors")]
    output: PathBuf,
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Score scale (default 1/sqrt(head_dim); with --model, the layer's).
    #[arg(
        long,
        value_name = "S",
        allow_negative_numbers = true,
        conflicts_with = "model"
    )]
    scale: Option<f32>,
    /// Tanh soft-capping of the scores, s = C * tanh(s / C) (default off; with --model, the
    /// layer's).
    #[arg(
        long,
        value_name = "C",
        allow_negative_numbers = true,
        conflicts_with = "model"
    )]
    softcap: Option<f32>,
    /// Also write the token mask that was applied: `mask`, U8 [num_heads, q_len, kv_len],
    /// 1 = allowed. Every sequence of a batch has the same shape, hence the same mask (an
    /// adaptive pattern's depends on the contents: U8 [batch, num_heads, q_len, kv_len]).
    #[arg(long, value_name = "FILE")]
    mask_out: Option<PathBuf>,
}

#[derive(Args)]
struct PlanArgs {
    /// A Hugging Face config.json (a `text_config` inside is read when present).
    #[arg(
        long,
        value_name = "config.json",
        required_unless_present = "pattern",
        conflicts_with = "pattern"
    )]
    model: Option<PathBuf>,
    /// Instead of --model: an adaptive pattern (docs/adaptive.md), whose budget fixes the
    /// range of densities a prefill of N tokens can have, whatever the contents.
    #[arg(long, value_name = "P.json")]
    pattern: Option<PathBuf>,
    /// Sequence length N (prefill of N tokens: q_len = kv_len = N).
    #[arg(long, value_name = "N")]
    seq_len: usize,
    /// Query heads (default: num_attention_heads of the config).
    #[arg(long, value_name = "H")]
    num_heads: Option<usize>,
    /// KV heads of every layer (default: num_key_value_heads, else as many as query heads; a
    /// layer's own, as in Gemma 4's global layers, where the config gives one).
    #[arg(long, value_name = "HK")]
    num_kv_heads: Option<usize>,
    /// Head dimension of every layer (default: head_dim, else hidden_size /
    /// num_attention_heads; a layer's own where the config gives one).
    #[arg(long, value_name = "D")]
    head_dim: Option<usize>,
    /// KV-cache element type (default: torch_dtype of the config, f16 or bf16; bf16 when the
    /// config has none; any other torch_dtype needs this flag).
    #[arg(long, value_enum)]
    dtype: Option<DTypeArg>,
    /// Machine-readable JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct VizArgs {
    /// A pattern or head pattern set (JSON); needs --q-len. An adaptive pattern (top_k, top_p,
    /// top_rel) draws the device's selection for --input's q and k, or without --input for the
    /// seeded synthetic needle-field heads: content-chosen blocks dark, forced blocks
    /// (keep_sinks / keep_local) green; tiles as the compaction kernel lists them.
    #[arg(
        long,
        value_name = "P.json",
        conflicts_with = "model",
        required_unless_present = "model"
    )]
    pub pattern: Option<PathBuf>,
    /// A Hugging Face config.json: one panel per layer; needs --seq-len.
    #[arg(long, value_name = "config.json")]
    pub model: Option<PathBuf>,
    /// Query length (with --pattern; with an adaptive pattern's --input, the input's).
    #[arg(long, value_name = "N", requires = "pattern")]
    pub q_len: Option<usize>,
    /// Key length (with --pattern; default --q-len, or the input's).
    #[arg(long, value_name = "M", requires = "pattern")]
    pub kv_len: Option<usize>,
    /// Sequence length (with --model): q_len = kv_len = N.
    #[arg(long, value_name = "N", requires = "model")]
    pub seq_len: Option<usize>,
    /// Query heads (default: the entries of a {"heads": [...]} set, the config's
    /// num_attention_heads, an adaptive pattern's input's, 3 synthetic heads, else 1).
    #[arg(long, value_name = "H")]
    pub num_heads: Option<usize>,
    /// The head to draw, or `all` for a grid of heads (default: all when heads differ, else 0).
    #[arg(long, value_name = "H|all", value_parser = parse_head)]
    pub head: Option<HeadSel>,
    #[arg(long, value_enum, default_value_t = LevelArg::Token)]
    pub level: LevelArg,
    /// Query rows per tile (tile level; default: the forward kernel's 64-row tile, that of
    /// decode and of head_dim 128; head_dim 64 prefill runs 128-row tiles). Not with an
    /// adaptive pattern, whose tiles are its plan's.
    #[arg(long, value_name = "N")]
    pub block_m: Option<usize>,
    /// Keys per tile (tile level; default: the forward kernel's). Not with an adaptive
    /// pattern.
    #[arg(long, value_name = "N")]
    pub block_n: Option<usize>,
    /// Adaptive pattern: the q and k whose selection is drawn (as `run --input`: [batch, len,
    /// heads, head_dim] F16 or BF16, `scores` for `score: given`); without it, the seeded
    /// synthetic needle-field heads of docs/adaptive.md.
    #[arg(long, value_name = "IN.safetensors", requires = "pattern")]
    pub input: Option<PathBuf>,
    /// Adaptive pattern with --input: the sequence of the batch to draw (default 0).
    #[arg(long, value_name = "I", requires = "input")]
    pub batch_index: Option<usize>,
    /// Adaptive pattern without --input: the seed of the needle field (default 1).
    #[arg(long, value_name = "S", conflicts_with = "input")]
    pub seed: Option<u64>,
    /// Adaptive pattern without --input: head_dim of the needle field (default 64).
    #[arg(long, value_name = "D", conflicts_with = "input")]
    pub head_dim: Option<usize>,
    /// Adaptive pattern: the score scale, as `run --scale` (default 1/sqrt(head_dim)).
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub scale: Option<f32>,
    /// Largest panel side in pixels; longer sides are max-pooled (default 1024, 128 with
    /// --model).
    #[arg(long, value_name = "PX")]
    pub max_px: Option<usize>,
    /// Panels per row (default: a square grid of heads; up to 16 layers per row).
    #[arg(long)]
    pub columns: Option<usize>,
    /// The PNG file to write.
    #[arg(long, value_name = "FILE.png")]
    pub out: PathBuf,
}

#[derive(Args)]
struct DemoArgs {
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Query length (and key length unless --kv-len is given).
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Key/value length (default: --seq-len).
    #[arg(long)]
    kv_len: Option<usize>,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    #[arg(long, default_value_t = 64)]
    head_dim: u32,
    #[arg(long, value_enum, default_value_t = DTypeArg::F16)]
    dtype: DTypeArg,
    /// Seed of the random inputs (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Largest accepted error, relative to the largest reference value.
    #[arg(long, default_value_t = 1e-2)]
    tolerance: f64,
}

#[derive(Args)]
struct KernelsArgs {
    /// Print ptxas's output as captured, instead of the table.
    #[arg(long)]
    raw: bool,
}

/// Everything the CLI reports as a failure; each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Lib(#[from] Error),
    /// A problem with a named input file.
    #[error("{}: {msg}", file.display())]
    Input { file: PathBuf, msg: String },
    /// Command-line values that cannot work together (exit status 2, like clap's).
    #[error("{0}")]
    Usage(String),
    /// A command-line value that cannot work with the input (exit status 1).
    #[error("{0}")]
    Arg(String),
    /// A request this build cannot serve yet.
    #[error("not yet supported: {0}")]
    NotYet(String),
    /// An output file could not be produced.
    #[error("{0}")]
    Output(String),
    /// The demo's result is outside the tolerance.
    #[error("{0}")]
    Check(String),
}

pub fn input_err(file: &Path, msg: impl std::fmt::Display) -> CliError {
    CliError::Input {
        file: file.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// Where the work runs.
enum Backend {
    Cuda(Gpu),
    Emulator,
}

impl Backend {
    fn select(arg: BackendArg) -> Result<Backend, CliError> {
        match arg {
            BackendArg::Emulator => Ok(Backend::Emulator),
            BackendArg::Cuda => {
                let build = backend::cuda_build();
                if !build.built {
                    return Err(Error::KernelsNotBuilt(build.skip_reason.to_string()).into());
                }
                Ok(Backend::Cuda(Gpu::new(0)?))
            }
            BackendArg::Auto => {
                if backend::cuda_build().built {
                    if let Ok(gpu) = Gpu::new(0) {
                        return Ok(Backend::Cuda(gpu));
                    }
                }
                Ok(Backend::Emulator)
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Backend::Cuda(g) => format!("cuda ({})", g.name().unwrap_or_else(|_| "GPU".into())),
            Backend::Emulator => "emulator".into(),
        }
    }

    fn run<T: Storage>(
        &self,
        plan: &AttnPlan,
        q: &[T],
        k: &[T],
        v: &[T],
    ) -> Result<(Vec<T>, Vec<f32>), Error> {
        match self {
            Backend::Cuda(gpu) => plan.run_cuda_host(gpu, q, k, v),
            Backend::Emulator => plan.run_emulated(q, k, v, &EmuRun::default()),
        }
    }
}

/// The problem the inputs describe, with the pattern set checked against it (one-line
/// errors naming the input or the pattern file).
fn fit_problem(
    input: &std::path::Path,
    pattern_path: &std::path::Path,
    inputs: &io::Inputs,
    set: &sparse_attn::pattern::HeadPatterns,
) -> Result<AttnProblem, CliError> {
    let problem = input_problem(input, inputs)?;
    let (num_heads, (q_len, kv_len)) = (problem.num_heads(), problem.seqs().max_lens());
    set.validate(num_heads, kv_len).map_err(|e| {
        input_err(
            pattern_path,
            format!(
                "does not fit the input (q_len {q_len}, kv_len {kv_len}, {num_heads} heads): {}",
                pattern::message(e)
            ),
        )
    })?;
    Ok(problem)
}

/// The problem of an input file's q, k and v (`[batch, len, heads, head_dim]`), errors naming
/// the file.
pub fn input_problem(input: &Path, inputs: &io::Inputs) -> Result<AttnProblem, CliError> {
    let [batch, q_len, num_heads, head_dim] = inputs.q_shape;
    let [_, kv_len, num_kv_heads, _] = inputs.kv_shape;
    let head_dim = u32::try_from(head_dim)
        .map_err(|_| input_err(input, format!("head_dim {head_dim} is not supported")))?;
    AttnProblem::new(
        SeqLens::Uniform {
            batch,
            q_len,
            kv_len,
        },
        num_heads,
        num_kv_heads,
        head_dim,
        inputs.dtype,
    )
    .map_err(|e| input_err(input, e))
}

fn cmd_run(a: &RunArgs) -> Result<(), CliError> {
    if let Some(path) = &a.source.pattern {
        if let Some(pattern) = adaptive::read_pattern(path)? {
            return adaptive::run(&adaptive::AdaptiveRunArgs {
                pattern,
                input: &a.input,
                output: &a.output,
                backend: a.backend,
                scale: a.scale,
                softcap: a.softcap,
                mask_out: a.mask_out.as_deref(),
            });
        }
    }
    let patterns = a.source.patterns()?;
    let bytes =
        std::fs::read(&a.input).map_err(|e| input_err(&a.input, format!("cannot read ({e})")))?;
    let inputs = io::read_inputs(&bytes).map_err(|e| input_err(&a.input, e))?;
    let [batch, q_len, num_heads, head_dim] = inputs.q_shape;
    let [_, kv_len, num_kv_heads, _] = inputs.kv_shape;
    // Causality is the pattern's own (the setup's options leave AttnOptions::causal off,
    // which would add it to every head).
    let setup = a
        .source
        .setup(patterns, a.scale, a.softcap, &a.input, &inputs)?;
    let problem = fit_problem(&a.input, &setup.source, &inputs, &setup.set)?;
    let plan = AttnPlan::with_patterns(&problem, &setup.set, &setup.opts)?;
    // Rendered before anything runs or is written: a mask too large to hold is an error, not
    // a half-written output.
    let mask = match &a.mask_out {
        Some(_) => Some(render_token_mask(
            plan.patterns(),
            num_heads,
            q_len,
            kv_len,
        )?),
        None => None,
    };
    let backend = Backend::select(a.backend)?;
    let start = Instant::now();
    let (out, lse) = match inputs.dtype {
        DType::F16 => run_to_tensors::<f16>(&backend, &plan, &inputs)?,
        DType::BF16 => run_to_tensors::<bf16>(&backend, &plan, &inputs)?,
    };
    let elapsed = start.elapsed();
    let lse_t = OutTensor::from_f32("lse", vec![batch, num_heads, q_len], &lse);
    let staged_out = Staged::write(&a.output, &[out, lse_t]).map_err(CliError::Output)?;
    let staged_mask = match (&a.mask_out, mask) {
        (Some(path), Some(mask)) => {
            let t = OutTensor::from_u8("mask", vec![num_heads, q_len, kv_len], mask);
            Some(Staged::write(path, &[t]).map_err(CliError::Output)?)
        }
        _ => None,
    };
    staged_out.commit().map_err(CliError::Output)?;
    if let Some(s) = staged_mask {
        s.commit().map_err(CliError::Output)?;
    }
    println!(
        "sparse-attn: {}{}{}; {} q [{batch}, {q_len}, {num_heads}, {head_dim}] x kv [{batch}, \
         {kv_len}, {num_kv_heads}, {head_dim}]; {} kv tiles visited; on {} in {:.3} s -> {}",
        setup.label,
        pattern::set_text(plan.patterns()),
        setup.notes(),
        inputs.dtype.name(),
        plan.meta().tiles_visited(),
        backend.describe(),
        elapsed.as_secs_f64(),
        a.output.display()
    );
    Ok(())
}

fn cmd_plan(a: &PlanArgs) -> Result<(), CliError> {
    let overrides = model::Overrides {
        num_heads: a.num_heads,
        num_kv_heads: a.num_kv_heads,
        head_dim: a.head_dim,
        dtype: a.dtype,
    };
    if let Some(path) = &a.pattern {
        return adaptive::plan(path, a.seq_len, a.json);
    }
    let model = a
        .model
        .as_ref()
        .expect("clap requires --model or --pattern");
    let m = model::load(model, &overrides, true)?;
    let report = plan::report(&m, a.seq_len)?;
    if a.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::Output(format!("cannot serialise the report: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", plan::table(&report));
    }
    Ok(())
}

fn run_to_tensors<T: Storage>(
    backend: &Backend,
    plan: &AttnPlan,
    inputs: &io::Inputs,
) -> Result<(OutTensor, Vec<f32>), CliError> {
    let q = io::Inputs::typed::<T>(&inputs.q);
    let k = io::Inputs::typed::<T>(&inputs.k);
    let v = io::Inputs::typed::<T>(&inputs.v);
    let (out, lse) = backend.run(plan, &q, &k, &v)?;
    Ok((
        OutTensor::from_elems("out", inputs.q_shape.to_vec(), &out),
        lse,
    ))
}

/// Max |got - want| / max |want| (the absolute error when the reference is all zero);
/// infinite when the lengths differ, so a short result never passes.
fn rel_error(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let max_ref = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let max_err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
    if max_ref > 0.0 {
        max_err / max_ref
    } else {
        max_err
    }
}

/// Max LSE error relative to max(|lse|, 1); matching infinities count as exact, differing
/// lengths as an infinite error.
fn lse_error(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter().zip(want).fold(0.0f64, |m, (&g, &w)| {
        let e = if g as f64 == w {
            0.0
        } else {
            (g as f64 - w).abs() / w.abs().max(1.0)
        };
        m.max(if e.is_nan() { f64::INFINITY } else { e })
    })
}

fn cmd_demo(a: &DemoArgs) -> Result<(), CliError> {
    match a.dtype {
        DTypeArg::F16 => demo_typed::<f16>(a),
        DTypeArg::Bf16 => demo_typed::<bf16>(a),
    }
}

fn demo_typed<T: Storage>(a: &DemoArgs) -> Result<(), CliError> {
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let kv_len = a.kv_len.unwrap_or(a.seq_len);
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: a.batch,
            q_len: a.seq_len,
            kv_len,
        },
        a.heads,
        a.kv_heads,
        a.head_dim,
        T::DTYPE,
    )?;
    let backend = Backend::select(a.backend)?;
    println!(
        "sparse-attn demo: {} on {}, batch {}, q_len {}, kv_len {kv_len}, heads {} (kv heads {}), \
         head_dim {}; seed {seed} (rerun with --seed {seed})",
        T::DTYPE.name(),
        backend.describe(),
        a.batch,
        a.seq_len,
        a.heads,
        a.kv_heads,
        a.head_dim
    );
    let mut rng = sparse_attn::pattern::rng::SplitMix64::new(seed);
    let mut random = |n: usize| -> Vec<T> { (0..n).map(|_| T::from_f32(rng.unit())).collect() };
    let q = random(problem.q_elems());
    let k = random(problem.kv_elems());
    let v = random(problem.kv_elems());
    let wide = |x: &[T]| x.iter().map(|e| e.to_f32()).collect::<Vec<f32>>();
    let (qf, kf, vf) = (wide(&q), wide(&k), wide(&v));

    let mut worst = 0.0f64;
    for causal in [false, true] {
        let opts = AttnOptions {
            causal,
            ..Default::default()
        };
        let plan = AttnPlan::new(&problem, &opts)?;
        let start = Instant::now();
        let (out, lse) = backend.run(&plan, &q, &k, &v)?;
        let elapsed = start.elapsed();
        let want = reference::attention(
            &problem,
            &RefInputs {
                q: &qf,
                k: &kf,
                v: &vf,
                scale: plan.scale(),
                softcap: plan.softcap(),
                sink_logits: plan.sink_logits(),
                alibi_slopes: plan.alibi_slopes(),
            },
            |_, _, i, j| !causal || reference::causal_allowed(i, j, a.seq_len, kv_len),
        );
        let out_err = rel_error(&wide(&out), &want.out);
        let lse_err = lse_error(&lse, &want.lse);
        worst = worst.max(out_err).max(lse_err);
        println!(
            "  {:<6}  max error: out {out_err:.2e} (relative to max |out|), lse {lse_err:.2e}   \
             time {:.1} ms",
            if causal { "causal" } else { "dense" },
            elapsed.as_secs_f64() * 1e3
        );
    }
    // Content-adaptive: top-k block selection made on the device (summaries, scores,
    // selection, compaction), checked against the reference under the selection it applied.
    if matches!(backend, Backend::Emulator) {
        let sel = match sparse_attn::adaptive::AdaptiveComponent::from_json(
            r#"{"top_k": {"block": 64, "k": 2, "keep_sinks": 1, "keep_local": 1, "score": "mean_k"}}"#,
        )? {
            sparse_attn::adaptive::AdaptiveComponent::Select(sel) => sel,
            sparse_attn::adaptive::AdaptiveComponent::Lsh(_) => unreachable!("a top_k component"),
        };
        let opts = AttnOptions {
            causal: true,
            ..Default::default()
        };
        let plan = sparse_attn::adaptive::AdaptivePlan::new(
            &problem,
            &sel,
            sparse_attn::adaptive::Grouping::Prefill,
            &opts,
        )?;
        let seqs = SeqLens::varlen_from_lens(&vec![(a.seq_len, kv_len); a.batch])?;
        let start = Instant::now();
        let r = plan.run_emulated(&seqs, &q, &k, &v, None, &EmuRun::default())?;
        let elapsed = start.elapsed();
        let allowed = |b: usize, h: usize, i: usize, j: usize| {
            plan.allowed_by_bits(&r.bits, &seqs, b, h, i, j)
        };
        let varlen = AttnProblem::new(seqs.clone(), a.heads, a.kv_heads, a.head_dim, T::DTYPE)?;
        let want = reference::attention(
            &varlen,
            &RefInputs {
                q: &qf,
                k: &kf,
                v: &vf,
                scale: plan.attn().scale(),
                softcap: 0.0,
                sink_logits: None,
                alibi_slopes: None,
            },
            allowed,
        );
        let out_err = rel_error(&wide(&r.out), &want.out);
        let lse_err = lse_error(&r.lse, &want.lse);
        worst = worst.max(out_err).max(lse_err);
        let seen = (0..a.batch * a.heads * a.seq_len * kv_len)
            .filter(|&x| {
                let (j, x) = (x % kv_len, x / kv_len);
                let (i, x) = (x % a.seq_len, x / a.seq_len);
                allowed(x / a.heads, x % a.heads, i, j)
            })
            .count();
        let causal_pairs: usize = (0..a.seq_len)
            .map(|i| (i + kv_len + 1).saturating_sub(a.seq_len).min(kv_len))
            .sum::<usize>()
            * a.batch
            * a.heads;
        println!(
            "  {:<6}  max error: out {out_err:.2e} (relative to max |out|), lse {lse_err:.2e}   \
             time {:.1} ms   (top_k 2 of 64-key blocks + sink + local, selected on the device: \
             {:.1}% of the causal pairs)",
            "top_k",
            elapsed.as_secs_f64() * 1e3,
            100.0 * seen as f64 / causal_pairs.max(1) as f64
        );
    }
    if worst > a.tolerance {
        return Err(CliError::Check(format!(
            "max error {worst:.2e} exceeds the tolerance {:.1e} (seed {seed})",
            a.tolerance
        )));
    }
    println!("OK: within tolerance {:.1e}", a.tolerance);
    Ok(())
}

fn cmd_kernels(a: &KernelsArgs) -> Result<(), CliError> {
    let build = backend::cuda_build();
    let Some(report) = backend::ptxas_report() else {
        println!(
            "The CUDA build was skipped, so there are no GPU kernels: {}",
            build.skip_reason
        );
        println!("Install nvcc (bash scripts/install-cuda.sh) and rebuild to get them.");
        return Ok(());
    };
    if a.raw {
        print!("{report}");
        return Ok(());
    }
    println!("{}; targets {}", build.nvcc_version, build.targets);
    let kernels = backend::parse_ptxas_report(report);
    let width = kernels
        .iter()
        .map(|k| k.kernel.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<width$}  {:<6}  {:>4}  {:>11}  {:>11}  {:>12}  {:>11}  source",
        "kernel", "arch", "regs", "static smem", "stack frame", "spill stores", "spill loads"
    );
    for k in &kernels {
        println!(
            "{:<width$}  {:<6}  {:>4}  {:>11}  {:>11}  {:>12}  {:>11}  {}",
            k.kernel,
            k.arch,
            k.registers,
            k.static_smem_bytes,
            k.stack_frame_bytes,
            k.spill_store_bytes,
            k.spill_load_bytes,
            k.source
        );
    }
    let tiles: Vec<String> = sparse_attn::HeadDim::SUPPORTED
        .iter()
        .filter_map(|&d| sparse_attn::HeadDim::new(d).ok())
        .flat_map(|d| {
            use sparse_attn::kernels::{fwd_tiles, FwdPhase};
            [FwdPhase::Prefill, FwdPhase::Decode, FwdPhase::Step].map(|phase| {
                let t = fwd_tiles(d, phase);
                format!(
                    "head_dim {} {phase:?}: {}-row blocks of {} threads, {} bytes ({} K/V stage{})",
                    d.get(),
                    t.block_m,
                    t.threads,
                    t.smem_bytes,
                    t.kv_stages,
                    if t.kv_stages == 1 { "" } else { "s" }
                )
            })
        })
        .collect();
    println!(
        "Dynamic shared memory of the forward kernels (set at launch): {}",
        tiles.join(", ")
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Decode(a) => decode::cmd_decode(a),
        Command::Bench(a) => bench::cmd_bench(a),
        Command::Plan(a) => cmd_plan(a),
        Command::Viz(a) => viz::cmd_viz(a),
        Command::Demo(a) => cmd_demo(a),
        Command::Kernels(a) => cmd_kernels(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                CliError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
