//! `sparse-attn decode`: prefill then token-by-token decode through a paged KV cache, exactly
//! per docs/patterns.md ("CLI file formats"). The output equals `run`'s over all T tokens.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use half::{bf16, f16};
use sparse_attn::kv_cache::{check_causal, decode_cuda, decode_emulated, DecodeConfig, PageSize};
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::{AttnProblem, DType, EmuRun};

use super::io::{self, OutTensor, Staged, Storage};
use super::setup::SourceArgs;
use super::{fit_problem, input_err, pattern, Backend, BackendArg, CliError};

#[derive(Args)]
pub struct DecodeArgs {
    /// The pattern (causal on every head) or the model layer, as for `run`.
    #[command(flatten)]
    source: SourceArgs,
    /// q, k, v: [batch, T, heads, head_dim], F16 or BF16, with q_len == kv_len == T;
    /// optional `sinks` and `alibi_slopes`, each F32 [num_heads].
    #[arg(long, value_name = "IN.safetensors")]
    input: PathBuf,
    /// Receives `out` ([batch, T, num_heads, head_dim]) and `lse` (F32, [batch, num_heads, T]).
    #[arg(long, value_name = "OUT.safetensors")]
    output: PathBuf,
    /// Tokens prefilled into the cache before decoding one token at a time (0..=T).
    #[arg(long, value_name = "N")]
    prefill: usize,
    /// Tokens per cache page: a power of two in 8..=256.
    #[arg(long, value_name = "S")]
    page_size: usize,
    /// Where the work runs: decode runs on the emulator for now (auto picks it).
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Most tokens one prefill step appends and attends (default: the whole prefill at once).
    #[arg(long, value_name = "C")]
    chunk: Option<usize>,
}

pub fn cmd_decode(a: &DecodeArgs) -> Result<(), CliError> {
    PageSize::new(a.page_size).map_err(|e| CliError::Arg(format!("--page-size: {e}")))?;
    if a.chunk == Some(0) {
        return Err(CliError::Arg("--chunk must be at least 1".into()));
    }
    if let Some(path) = &a.source.pattern {
        if let Some(pattern) = super::adaptive::read_pattern(path)? {
            return super::adaptive::decode(&super::adaptive::AdaptiveDecodeArgs {
                pattern,
                input: &a.input,
                output: &a.output,
                prefill: a.prefill,
                page_size: a.page_size,
                backend: a.backend,
            });
        }
    }
    let patterns = a.source.patterns()?;
    check_causal(&patterns.0).map_err(|e| input_err(a.source.path(), pattern::message(e)))?;
    let bytes =
        std::fs::read(&a.input).map_err(|e| input_err(&a.input, format!("cannot read ({e})")))?;
    let inputs = io::read_inputs(&bytes).map_err(|e| input_err(&a.input, e))?;
    let [batch, t, num_heads, head_dim] = inputs.q_shape;
    let [_, kv_len, num_kv_heads, _] = inputs.kv_shape;
    if t != kv_len {
        return Err(input_err(
            &a.input,
            format!("decode needs q_len == kv_len (q has {t} tokens, k and v {kv_len})"),
        ));
    }
    if t == 0 {
        return Err(input_err(&a.input, "the sequences have no tokens"));
    }
    if a.prefill > t {
        return Err(input_err(
            &a.input,
            format!(
                "--prefill {} is longer than the sequences ({t} tokens)",
                a.prefill
            ),
        ));
    }
    let setup = a.source.setup(patterns, None, None, &a.input, &inputs)?;
    let set = &setup.set;
    let problem = fit_problem(&a.input, &setup.source, &inputs, set)?;
    let config = DecodeConfig {
        page_size: a.page_size,
        prefill: a.prefill,
        chunk: a.chunk,
        scale: setup.opts.scale,
        softcap: setup.opts.softcap,
        sink_logits: setup.opts.sink_logits.clone(),
        alibi_slopes: setup.opts.alibi_slopes.clone(),
    };
    let backend = Backend::select(a.backend)?;
    let start = Instant::now();
    let r = match inputs.dtype {
        DType::F16 => decode_to_tensors::<f16>(&backend, &problem, set, &config, &inputs)?,
        DType::BF16 => decode_to_tensors::<bf16>(&backend, &problem, set, &config, &inputs)?,
    };
    let elapsed = start.elapsed();
    let lse = OutTensor::from_f32("lse", vec![batch, num_heads, t], &r.lse);
    Staged::write(&a.output, &[r.out, lse])
        .and_then(Staged::commit)
        .map_err(CliError::Output)?;
    let chunk = a.chunk.unwrap_or(a.prefill).max(1);
    println!(
        "sparse-attn decode: {}{}{}; {} q [{batch}, {t}, {num_heads}, {head_dim}], {num_kv_heads} \
         kv heads; prefill {} ({} chunks of <= {chunk}) + {} decode steps, {} plans; on {} \
         in {:.3} s -> {}",
        setup.label,
        pattern::set_text(set),
        setup.notes(),
        inputs.dtype.name(),
        a.prefill,
        a.prefill.div_ceil(chunk),
        t - a.prefill,
        r.plans_built,
        backend.describe(),
        elapsed.as_secs_f64(),
        a.output.display()
    );
    let pct = if r.dense_bytes == 0 {
        0.0
    } else {
        100.0 * r.bytes_used as f64 / r.dense_bytes as f64
    };
    println!(
        "kv cache: {} pages used ({} tokens each), {} bytes used; dense equivalent {} bytes \
         ({pct:.1}%)",
        r.pages_used, a.page_size, r.bytes_used, r.dense_bytes
    );
    Ok(())
}

struct Decoded {
    out: OutTensor,
    lse: Vec<f32>,
    pages_used: usize,
    bytes_used: u64,
    dense_bytes: u64,
    plans_built: usize,
}

fn decode_to_tensors<T: Storage>(
    backend: &Backend,
    problem: &AttnProblem,
    set: &HeadPatterns,
    config: &DecodeConfig,
    inputs: &io::Inputs,
) -> Result<Decoded, CliError> {
    let q = io::Inputs::typed::<T>(&inputs.q);
    let k = io::Inputs::typed::<T>(&inputs.k);
    let v = io::Inputs::typed::<T>(&inputs.v);
    let r = match backend {
        Backend::Cuda(gpu) => decode_cuda(gpu, problem, set, config, &q, &k, &v)?,
        Backend::Emulator => decode_emulated(problem, set, config, &q, &k, &v, &EmuRun::default())?,
    };
    Ok(Decoded {
        out: OutTensor::from_elems("out", inputs.q_shape.to_vec(), &r.out),
        lse: r.lse,
        pages_used: r.pages_used,
        bytes_used: r.bytes_used,
        dense_bytes: r.dense_bytes,
        plans_built: r.plans_built,
    })
}
