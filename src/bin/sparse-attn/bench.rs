//! `sparse-attn bench`: times the forward kernel on the GPU for one case (a pattern file and
//! either q/k/v from a safetensors file or random inputs of a given shape) and prints one JSON
//! line: the shape, the pattern, the median and minimum time over `--iters` launches timed
//! with CUDA events, the allowed (query, key) pairs and TFLOP/s counted on them, and the kv
//! tiles visited against a dense plan's. scripts/bench-torch.py drives it to compare against
//! PyTorch on the same tensors (`--input`, `--output`).
//!
//! The plan is compiled and uploaded once, outside the timed loop (plan once, run many); the
//! launches are queued back to back on one stream with an event between consecutive launches,
//! after `--warmup` untimed launches. Without a GPU or without built kernels it fails with one
//! line (exit status 1), like `run --backend cuda`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use half::{bf16, f16};
use serde::Serialize;
use sparse_attn::backend::{self, Gpu};
use sparse_attn::cudarc::driver::sys::CUevent_flags;
use sparse_attn::pattern::rng::SplitMix64;
use sparse_attn::pattern::spans::allowed_pairs;
use sparse_attn::pattern::{HeadPatterns, Pattern};
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, Error, SeqLens};

use super::io::{self, OutTensor, Staged, Storage};
use super::{fit_problem, input_err, pattern, CliError, DTypeArg};

/// The shape flags, which describe random inputs: they cannot go with `--input`.
const SHAPE_FLAGS: [&str; 8] = [
    "batch", "seq_len", "kv_len", "heads", "kv_heads", "head_dim", "dtype", "seed",
];

#[derive(Args)]
pub struct BenchArgs {
    /// A pattern or head pattern set (JSON), as `run` takes.
    #[arg(long, value_name = "P.json")]
    pattern: PathBuf,
    /// q, k, v ([batch, len, heads, head_dim], F16 or BF16) to time on; without it the
    /// inputs are random values in [-1, 1) of the shape the flags below give.
    #[arg(long, value_name = "IN.safetensors", conflicts_with_all = SHAPE_FLAGS)]
    input: Option<PathBuf>,
    /// Writes `out` and `lse` of the last timed launch (as `run` does).
    #[arg(long, value_name = "OUT.safetensors")]
    output: Option<PathBuf>,
    /// A label for the JSON line (default: the pattern file's name without extension).
    #[arg(long, value_name = "NAME")]
    case: Option<String>,
    /// Sequences (random inputs).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Query length, and key length unless --kv-len is given (random inputs).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    seq_len: u32,
    /// Key/value length (random inputs; default --seq-len).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    kv_len: Option<u32>,
    /// Query heads (random inputs).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    heads: u32,
    /// KV heads (random inputs; default --heads).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    kv_heads: Option<u32>,
    /// Head dimension, 64 or 128 (random inputs).
    #[arg(long, default_value = "128", value_parser = ["64", "128"])]
    head_dim: String,
    /// Element type (random inputs).
    #[arg(long, value_enum, default_value_t = DTypeArg::Bf16)]
    dtype: DTypeArg,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Untimed launches before the timed ones (module loading, caches).
    #[arg(long, value_name = "N", default_value_t = 5)]
    warmup: u32,
    /// Timed launches; the median and minimum are reported.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    iters: u32,
    /// Plan and print the JSON line without a GPU (times null); for tests.
    #[arg(long, hide = true)]
    dry_run: bool,
}

/// The JSON line `bench` prints.
#[derive(Debug, Serialize)]
struct Report {
    case: String,
    /// The set in the CLI's compact text (`causal sinks(4) + window(4096)`).
    pattern: String,
    /// The set as docs/patterns.md JSON.
    patterns: serde_json::Value,
    pattern_file: String,
    /// The input file, or null for random inputs.
    input: Option<String>,
    /// The seed of random inputs, or null with `--input`.
    seed: Option<u64>,
    dtype: &'static str,
    batch: usize,
    q_len: usize,
    kv_len: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Allowed (query, key) pairs summed over sequences and query heads.
    allowed_pairs: u128,
    /// `batch * heads * q_len * kv_len`.
    dense_pairs: u128,
    density: f64,
    /// `4 * allowed_pairs * head_dim` (QK^T and PV, two FLOPs per multiply-add).
    flops: u128,
    /// kv tiles the kernel visits (full and partial), over the batch and all heads.
    tiles_visited: u64,
    /// The same count for a dense (non-causal) plan of the same shape.
    tiles_dense: u64,
    tiles_ratio: f64,
    num_splits: u32,
    /// Compiling the plan (host), in ms.
    plan_ms: f64,
    /// The GPU's name, null in a dry run.
    device: Option<String>,
    warmup: u32,
    iters: u32,
    ms_median: Option<f64>,
    ms_min: Option<f64>,
    ms_max: Option<f64>,
    /// TFLOP/s on the allowed pairs at the median time.
    tflops: Option<f64>,
    /// TFLOP/s at the minimum time.
    tflops_max: Option<f64>,
    /// Where `out` and `lse` were written, or null.
    output: Option<String>,
    dry_run: bool,
}

/// Where the inputs come from.
enum Data {
    File(Box<io::Inputs>),
    Random(u64),
}

/// Allowed pairs of one sequence summed over the heads (head-independent patterns counted
/// once per distinct pattern).
fn set_allowed(set: &HeadPatterns, heads: usize, q_len: usize, kv_len: usize) -> u128 {
    let mut seen: Vec<(&Pattern, u128)> = Vec::new();
    let mut total = 0u128;
    for h in 0..heads {
        let p = set.pattern(h).expect("validated against num_heads");
        if p.is_head_dependent() {
            total += allowed_pairs(p, h, q_len, kv_len);
            continue;
        }
        let a = match seen.iter().find(|(q, _)| *q == p) {
            Some((_, a)) => *a,
            None => {
                let a = allowed_pairs(p, h, q_len, kv_len);
                seen.push((p, a));
                a
            }
        };
        total += a;
    }
    total
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

/// The problem of random inputs from the shape flags.
fn flag_problem(a: &BenchArgs) -> Result<AttnProblem, CliError> {
    let q_len = a.seq_len as usize;
    let kv_len = a.kv_len.map_or(q_len, |k| k as usize);
    let heads = a.heads as usize;
    let kv_heads = a.kv_heads.map_or(heads, |k| k as usize);
    let head_dim: u32 = a.head_dim.parse().expect("clap checked");
    let dtype = match a.dtype {
        DTypeArg::F16 => DType::F16,
        DTypeArg::Bf16 => DType::BF16,
    };
    AttnProblem::new(
        SeqLens::Uniform {
            batch: a.batch as usize,
            q_len,
            kv_len,
        },
        heads,
        kv_heads,
        head_dim,
        dtype,
    )
    .map_err(|e| CliError::Arg(format!("the shape flags: {e}")))
}

/// The GPU, or a one-line error saying why there is none.
fn open_gpu() -> Result<Gpu, CliError> {
    let build = backend::cuda_build();
    let e = if !build.built {
        Error::KernelsNotBuilt(build.skip_reason.to_string())
    } else {
        match Gpu::new(0) {
            Ok(g) => return Ok(g),
            Err(e) => e,
        }
    };
    Err(CliError::Arg(format!(
        "sparse-attn bench times the CUDA kernels and needs a GPU: {e}"
    )))
}

pub fn cmd_bench(a: &BenchArgs) -> Result<(), CliError> {
    let set = pattern::read_head_patterns(&a.pattern)?;
    let (problem, data) = match &a.input {
        Some(path) => {
            let bytes =
                std::fs::read(path).map_err(|e| input_err(path, format!("cannot read ({e})")))?;
            let inputs = io::read_inputs(&bytes).map_err(|e| input_err(path, e))?;
            let problem = fit_problem(path, &a.pattern, &inputs, &set)?;
            if problem.q_elems() == 0 || problem.kv_elems() == 0 {
                return Err(input_err(path, "has no tokens to time"));
            }
            (problem, Data::File(Box::new(inputs)))
        }
        None => {
            let problem = flag_problem(a)?;
            let kv_len = problem.seqs().lens(0).1;
            set.validate(problem.num_heads(), kv_len).map_err(|e| {
                input_err(
                    &a.pattern,
                    format!(
                        "does not fit the shape ({} heads, kv_len {kv_len}): {}",
                        problem.num_heads(),
                        pattern::message(e)
                    ),
                )
            })?;
            (problem, Data::Random(a.seed))
        }
    };
    // Uniform batches: every sequence has sequence 0's lengths.
    let (q_len, kv_len) = problem.seqs().lens(0);
    let batch = problem.seqs().batch();
    let (heads, head_dim) = (problem.num_heads(), problem.head_dim().get() as usize);
    // Causality is the pattern's own (as in `run`); an input file's sink logits and ALiBi
    // slopes apply as they do there.
    let opts = match &data {
        Data::File(inputs) => AttnOptions {
            sink_logits: inputs.sinks.clone(),
            alibi_slopes: inputs.alibi_slopes.clone(),
            ..AttnOptions::default()
        },
        Data::Random(_) => AttnOptions::default(),
    };
    let t0 = Instant::now();
    let plan = AttnPlan::with_patterns(&problem, &set, &opts)?;
    let plan_ms = t0.elapsed().as_secs_f64() * 1e3;
    let tiles_dense = AttnPlan::new(&problem, &AttnOptions::default())?
        .meta()
        .tiles_visited();
    let allowed = batch as u128 * set_allowed(plan.patterns(), heads, q_len, kv_len);
    let dense_pairs = (batch * heads) as u128 * q_len as u128 * kv_len as u128;
    let flops = 4 * allowed * head_dim as u128;
    let tiles_visited = plan.meta().tiles_visited();
    let mut report = Report {
        case: a.case.clone().unwrap_or_else(|| {
            a.pattern
                .file_stem()
                .map_or_else(|| "bench".into(), |s| s.to_string_lossy().into_owned())
        }),
        pattern: pattern::set_text(plan.patterns()),
        patterns: serde_json::to_value(plan.patterns()).unwrap_or(serde_json::Value::Null),
        pattern_file: a.pattern.display().to_string(),
        input: a.input.as_ref().map(|p| p.display().to_string()),
        seed: match data {
            Data::Random(s) => Some(s),
            Data::File(_) => None,
        },
        dtype: problem.dtype().name(),
        batch,
        q_len,
        kv_len,
        heads,
        kv_heads: problem.num_kv_heads(),
        head_dim,
        allowed_pairs: allowed,
        dense_pairs,
        density: ratio(allowed as f64, dense_pairs as f64),
        flops,
        tiles_visited,
        tiles_dense,
        tiles_ratio: ratio(tiles_visited as f64, tiles_dense as f64),
        num_splits: plan.num_splits(),
        plan_ms,
        device: None,
        warmup: a.warmup,
        iters: a.iters,
        ms_median: None,
        ms_min: None,
        ms_max: None,
        tflops: None,
        tflops_max: None,
        output: None,
        dry_run: a.dry_run,
    };
    if !a.dry_run {
        let gpu = open_gpu()?;
        report.device = Some(gpu.name().unwrap_or_else(|_| "GPU".into()));
        let mut times = match problem.dtype() {
            DType::F16 => time_typed::<f16>(&gpu, &plan, &data, a)?,
            DType::BF16 => time_typed::<bf16>(&gpu, &plan, &data, a)?,
        };
        times.sort_by(f64::total_cmp);
        let median = median(&times);
        let (min, max) = (times[0], times[times.len() - 1]);
        let tflops = |ms: f64| flops as f64 / (ms * 1e-3) / 1e12;
        report.ms_median = Some(median);
        report.ms_min = Some(min);
        report.ms_max = Some(max);
        report.tflops = Some(tflops(median));
        report.tflops_max = Some(tflops(min));
        report.output = a.output.as_ref().map(|p| p.display().to_string());
    }
    let line = serde_json::to_string(&report)
        .map_err(|e| CliError::Output(format!("cannot serialise the report: {e}")))?;
    println!("{line}");
    Ok(())
}

/// The median of sorted, non-empty `x`.
fn median(x: &[f64]) -> f64 {
    let n = x.len();
    if n % 2 == 1 {
        x[n / 2]
    } else {
        (x[n / 2 - 1] + x[n / 2]) / 2.0
    }
}

/// `n` values uniform in [-1, 1) from `rng`.
fn random<T: Storage>(rng: &mut SplitMix64, n: usize) -> Vec<T> {
    (0..n).map(|_| T::from_f32(rng.unit())).collect()
}

/// Uploads the inputs, runs `--warmup` then `--iters` launches; returns each timed launch's
/// milliseconds (CUDA events between consecutive launches) and writes `--output`.
fn time_typed<T: Storage>(
    gpu: &Gpu,
    plan: &AttnPlan,
    data: &Data,
    a: &BenchArgs,
) -> Result<Vec<f64>, CliError> {
    let p = plan.problem();
    let (q, k, v): (Vec<T>, Vec<T>, Vec<T>) = match data {
        Data::File(inputs) => (
            io::Inputs::typed(&inputs.q),
            io::Inputs::typed(&inputs.k),
            io::Inputs::typed(&inputs.v),
        ),
        Data::Random(seed) => {
            let mut rng = SplitMix64::new(*seed);
            let q = random(&mut rng, p.q_elems());
            let k = random(&mut rng, p.kv_elems());
            let v = random(&mut rng, p.kv_elems());
            (q, k, v)
        }
    };
    let s = gpu.stream();
    let driver = |e| CliError::Lib(Error::Driver(e));
    let qd = s.clone_htod(&q).map_err(driver)?;
    let kd = s.clone_htod(&k).map_err(driver)?;
    let vd = s.clone_htod(&v).map_err(driver)?;
    drop((q, k, v));
    let mut out = s.alloc_zeros::<T>(p.q_elems()).map_err(driver)?;
    let mut lse = s.alloc_zeros::<f32>(p.lse_elems()).map_err(driver)?;
    let gplan = plan.upload(gpu)?;
    for _ in 0..a.warmup {
        gplan.run(&qd, &kd, &vd, &mut out, &mut lse)?;
    }
    gpu.synchronize()?;
    let event = || {
        s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver)
    };
    let mut events = Vec::with_capacity(a.iters as usize + 1);
    events.push(event()?);
    for _ in 0..a.iters {
        gplan.run(&qd, &kd, &vd, &mut out, &mut lse)?;
        events.push(event()?);
    }
    events
        .last()
        .expect("at least one event")
        .synchronize()
        .map_err(driver)?;
    let times = events
        .windows(2)
        .map(|w| w[0].elapsed_ms(&w[1]).map(|ms| ms as f64))
        .collect::<Result<Vec<f64>, _>>()
        .map_err(driver)?;
    if let Some(path) = &a.output {
        let out_h = s.clone_dtoh(&out).map_err(driver)?;
        let lse_h = s.clone_dtoh(&lse).map_err(driver)?;
        s.synchronize().map_err(driver)?;
        write_output(path, p, &out_h, &lse_h)?;
    }
    Ok(times)
}

/// `out` (q's layout and dtype) and `lse` (F32, [batch, num_heads, q_len]), as `run` writes.
fn write_output<T: Storage>(
    path: &Path,
    p: &AttnProblem,
    out: &[T],
    lse: &[f32],
) -> Result<(), CliError> {
    let (batch, q_len) = (p.seqs().batch(), p.seqs().lens(0).0);
    let (heads, d) = (p.num_heads(), p.head_dim().get() as usize);
    let tensors = [
        OutTensor::from_elems("out", vec![batch, q_len, heads, d], out),
        OutTensor::from_f32("lse", vec![batch, heads, q_len], lse),
    ];
    Staged::write(path, &tensors)
        .and_then(Staged::commit)
        .map_err(CliError::Output)
}
