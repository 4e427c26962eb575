//! `run` with an adaptive pattern (docs/adaptive.md): `{"causal": .., "components": [one of
//! top_k, top_p, top_rel]}`. The selection is made on the device for the input's q and k
//! (summaries, scores, selection kernels; or from the input's `scores` tensor for `score:
//! given`), then one adaptive plan runs; all on the emulator so far;
//! `--mask-out` writes the selection that was applied, per sequence (adaptive masks depend on
//! the contents, so every sequence has its own): U8 `[batch, num_heads, q_len, kv_len]`.

use std::path::Path;
use std::time::Instant;

use half::{bf16, f16};
use sparse_attn::adaptive::{
    density_bounds_with, AdaptiveComponent, AdaptivePattern, AdaptivePlan, GivenScores, Grouping,
};
use sparse_attn::{AttnOptions, DType, EmuRun, Error, SeqLens};

use crate::io::{self, OutTensor, Staged, Storage};
use crate::{input_err, BackendArg, CliError};

/// Most bytes `--mask-out` writes.
const MAX_MASK_BYTES: usize = 1 << 30;

/// What `run` was asked, for an adaptive pattern.
pub struct AdaptiveRunArgs<'a> {
    pub pattern: AdaptivePattern,
    pub input: &'a Path,
    pub output: &'a Path,
    pub backend: BackendArg,
    pub scale: Option<f32>,
    pub softcap: Option<f32>,
    pub mask_out: Option<&'a Path>,
}

/// Reads `path` as an adaptive pattern when it is one (`None`: a static pattern).
pub fn read_pattern(path: &Path) -> Result<Option<AdaptivePattern>, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| input_err(path, format!("cannot read ({e})")))?;
    if serde_json::from_str::<serde_json::Value>(&text).is_err() {
        return Ok(None); // malformed JSON: the pattern reader says how
    }
    AdaptivePattern::from_json(&text).map_err(|e| input_err(path, crate::pattern::message(e)))
}

pub fn run(a: &AdaptiveRunArgs<'_>) -> Result<(), CliError> {
    let AdaptiveComponent::Select(sel) = a.pattern.component else {
        return Err(CliError::NotYet(
            "running lsh patterns (the bucket reference exists: sparse_attn::adaptive::lsh)".into(),
        ));
    };
    if a.backend == BackendArg::Cuda {
        return Err(CliError::NotYet(
            "adaptive patterns on the CUDA backend (use --backend emulator)".into(),
        ));
    }
    let bytes =
        std::fs::read(a.input).map_err(|e| input_err(a.input, format!("cannot read ({e})")))?;
    let inputs = io::read_inputs(&bytes).map_err(|e| input_err(a.input, e))?;
    let [batch, q_len, num_heads, head_dim] = inputs.q_shape;
    let [_, kv_len, num_kv_heads, _] = inputs.kv_shape;
    let problem = crate::input_problem(a.input, &inputs)?;
    let opts = AttnOptions {
        causal: a.pattern.causal,
        scale: a.scale,
        softcap: a.softcap,
        sink_logits: inputs.sinks.clone(),
        alibi_slopes: inputs.alibi_slopes.clone(),
    };
    let plan =
        AdaptivePlan::with_union(&problem, &sel, &a.pattern.statics, Grouping::Prefill, &opts)?;
    let mask_elems = batch * num_heads * q_len * kv_len;
    if a.mask_out.is_some() && mask_elems > MAX_MASK_BYTES {
        return Err(CliError::Arg(format!(
            "--mask-out would write {mask_elems} bytes (more than {MAX_MASK_BYTES})"
        )));
    }
    let seqs = SeqLens::varlen_from_lens(&vec![(q_len, kv_len); batch])?;
    let given = inputs.scores.as_ref().map(|(shape, values)| GivenScores {
        scores: values,
        heads: shape[1],
    });
    let start = Instant::now();
    let (out, lse, bits) = match inputs.dtype {
        DType::F16 => call::<f16>(&plan, &seqs, &inputs, given)?,
        DType::BF16 => call::<bf16>(&plan, &seqs, &inputs, given)?,
    };
    let elapsed = start.elapsed();
    // [num_heads, total_q] -> [batch, num_heads, q_len]
    let total_q = batch * q_len;
    let lse: Vec<f32> = (0..batch)
        .flat_map(|b| (0..num_heads).map(move |h| (b, h)))
        .flat_map(|(b, h)| lse[h * total_q + b * q_len..][..q_len].to_vec())
        .collect();
    let lse_t = OutTensor::from_f32("lse", vec![batch, num_heads, q_len], &lse);
    let mut allowed = 0usize;
    let mut mask = Vec::with_capacity(if a.mask_out.is_some() { mask_elems } else { 0 });
    for b in 0..batch {
        for h in 0..num_heads {
            for i in 0..q_len {
                for j in 0..kv_len {
                    let m = plan.allowed_by_bits(&bits, &seqs, b, h, i, j);
                    allowed += m as usize;
                    if a.mask_out.is_some() {
                        mask.push(m as u8);
                    }
                }
            }
        }
    }
    let staged_out = Staged::write(a.output, &[out, lse_t]).map_err(CliError::Output)?;
    let staged_mask = match a.mask_out {
        Some(path) => {
            let t = OutTensor::from_u8("mask", vec![batch, num_heads, q_len, kv_len], mask);
            Some(Staged::write(path, &[t]).map_err(CliError::Output)?)
        }
        None => None,
    };
    staged_out.commit().map_err(CliError::Output)?;
    if let Some(s) = staged_mask {
        s.commit().map_err(CliError::Output)?;
    }
    let causal_pairs: usize = (0..q_len)
        .map(|i| {
            let p = i as i64 + kv_len as i64 - q_len as i64;
            if a.pattern.causal {
                (p + 1).clamp(0, kv_len as i64) as usize
            } else {
                kv_len
            }
        })
        .sum::<usize>()
        * batch
        * num_heads;
    println!(
        "sparse-attn: adaptive {}{}; {} q [{batch}, {q_len}, {num_heads}, {head_dim}] x kv \
         [{batch}, {kv_len}, {num_kv_heads}, {head_dim}]; density {:.2}% of the {}; on \
         emulator in {:.3} s -> {}",
        a.pattern.describe(),
        if a.pattern.causal { " (causal)" } else { "" },
        inputs.dtype.name(),
        100.0 * allowed as f64 / causal_pairs.max(1) as f64,
        if a.pattern.causal {
            "causal pairs"
        } else {
            "pairs"
        },
        elapsed.as_secs_f64(),
        a.output.display()
    );
    Ok(())
}

/// One call of the plan on typed inputs: (out tensor, lse `[num_heads, total_q]`, bits).
fn call<T: Storage>(
    plan: &AdaptivePlan,
    seqs: &SeqLens,
    inputs: &io::Inputs,
    given: Option<GivenScores<'_>>,
) -> Result<(OutTensor, Vec<f32>, Vec<i32>), Error> {
    let q = io::Inputs::typed::<T>(&inputs.q);
    let k = io::Inputs::typed::<T>(&inputs.k);
    let v = io::Inputs::typed::<T>(&inputs.v);
    let r = plan.run_emulated(seqs, &q, &k, &v, given, &EmuRun::default())?;
    Ok((
        OutTensor::from_elems("out", inputs.q_shape.to_vec(), &r.out),
        r.lse,
        r.bits,
    ))
}

/// `plan --pattern`: the densities an adaptive pattern's budget allows for a prefill of `n`
/// tokens (per head; every head has the same bounds).
pub fn plan(path: &Path, n: usize, json: bool) -> Result<(), CliError> {
    let pattern = read_pattern(path)?.ok_or_else(|| {
        input_err(
            path,
            "is not an adaptive pattern (plan --pattern takes top_k, top_p or top_rel; a static \
             pattern's density is in `viz` and in plan --model)",
        )
    })?;
    let AdaptiveComponent::Select(sel) = pattern.component else {
        return Err(CliError::NotYet(
            "density bounds of lsh patterns (they depend on the contents alone)".into(),
        ));
    };
    let b = density_bounds_with(&sel, &pattern.statics, n, n, pattern.causal)?;
    let (lo, hi) = b.density();
    if json {
        let v = serde_json::json!({
            "pattern": pattern.component.to_json(),
            "statics": pattern.statics,
            "causal": pattern.causal,
            "seq_len": n,
            "allowed_pairs_min": b.lo,
            "allowed_pairs_max": b.hi,
            "dense_pairs": b.pairs,
            "density_min": lo,
            "density_max": hi,
        });
        println!("{v:#}");
    } else {
        println!(
            "{}{} at {n} tokens: density {} of the {} pairs per head ({} .. {} of {})",
            pattern.describe(),
            if pattern.causal { " (causal)" } else { "" },
            if b.lo == b.hi {
                format!("{:.2}%", 100.0 * lo)
            } else {
                format!("{:.2}% .. {:.2}%", 100.0 * lo, 100.0 * hi)
            },
            if pattern.causal { "causal" } else { "dense" },
            b.lo,
            b.hi,
            b.pairs
        );
    }
    Ok(())
}

/// What `decode` was asked, for an adaptive pattern.
pub struct AdaptiveDecodeArgs<'a> {
    pub pattern: AdaptivePattern,
    pub input: &'a Path,
    pub output: &'a Path,
    pub prefill: usize,
    pub page_size: usize,
    pub backend: BackendArg,
}

/// `decode` with an adaptive pattern: the first `prefill` tokens of every sequence attend as a
/// prefill (prefill grouping, `AdaptivePlan`) and are appended to a paged cache that keeps
/// the key block summaries; then every later token is one decode step (`AdaptiveDecode`:
/// append, scores from the summaries, selection, paged forward; its rows are singleton
/// groups, so the output equals the reference evaluated step by step, not `run` over all
/// tokens). Emulator only so far.
pub fn decode(a: &AdaptiveDecodeArgs<'_>) -> Result<(), CliError> {
    let AdaptiveComponent::Select(sel) = a.pattern.component else {
        return Err(CliError::NotYet("decoding lsh patterns".into()));
    };
    if a.backend == BackendArg::Cuda {
        return Err(CliError::NotYet(
            "adaptive patterns on the CUDA backend (use --backend emulator)".into(),
        ));
    }
    if !a.pattern.causal {
        return Err(input_err(
            a.input,
            "decode needs a causal pattern (a decode step sees no later token)",
        ));
    }
    let bytes =
        std::fs::read(a.input).map_err(|e| input_err(a.input, format!("cannot read ({e})")))?;
    let inputs = io::read_inputs(&bytes).map_err(|e| input_err(a.input, e))?;
    let problem = crate::input_problem(a.input, &inputs)?;
    let (t, kv_len) = problem.seqs().max_lens();
    if t != kv_len || t == 0 || a.prefill > t {
        return Err(input_err(
            a.input,
            format!(
                "decode needs q_len == kv_len > 0 and --prefill <= T (q {t}, kv {kv_len}, \
                 prefill {})",
                a.prefill
            ),
        ));
    }
    let start = Instant::now();
    let (out, lse) = match inputs.dtype {
        DType::F16 => decode_typed::<f16>(a, &sel, &problem, &inputs)?,
        DType::BF16 => decode_typed::<bf16>(a, &sel, &problem, &inputs)?,
    };
    let elapsed = start.elapsed();
    let [batch, _, num_heads, _] = inputs.q_shape;
    let lse_t = OutTensor::from_f32("lse", vec![batch, num_heads, t], &lse);
    Staged::write(a.output, &[out, lse_t])
        .and_then(Staged::commit)
        .map_err(CliError::Output)?;
    println!(
        "sparse-attn decode: adaptive {} (causal); {} q [{batch}, {t}, {num_heads}, {}]; \
         prefill {} + {} decode steps, one plan each; on emulator in {:.3} s -> {}",
        a.pattern.describe(),
        inputs.dtype.name(),
        inputs.q_shape[3],
        a.prefill,
        t - a.prefill,
        elapsed.as_secs_f64(),
        a.output.display()
    );
    Ok(())
}

/// The prefill and decode steps on typed inputs: (out tensor, lse `[batch, heads, T]`).
fn decode_typed<T: Storage>(
    a: &AdaptiveDecodeArgs<'_>,
    sel: &sparse_attn::adaptive::BlockSelect,
    problem: &sparse_attn::AttnProblem,
    inputs: &io::Inputs,
) -> Result<(OutTensor, Vec<f32>), CliError> {
    use sparse_attn::adaptive::AdaptiveDecode;
    use sparse_attn::kv_cache::{HostKvStorage, KvCache, KvCacheConfig, LayerCapacity, PoolSize};

    let [batch, t, h, d] = inputs.q_shape;
    let hk = inputs.kv_shape[2];
    let q = io::Inputs::typed::<T>(&inputs.q);
    let k = io::Inputs::typed::<T>(&inputs.k);
    let v = io::Inputs::typed::<T>(&inputs.v);
    let opts = AttnOptions {
        causal: true,
        scale: None,
        softcap: None,
        sink_logits: inputs.sinks.clone(),
        alibi_slopes: inputs.alibi_slopes.clone(),
    };
    let mut out = vec![T::from_f32(0.0); batch * t * h * d];
    let mut lse = vec![0.0f32; batch * h * t];
    let n = a.prefill;
    // Token i of sequence b: rows of q (h heads) and of k, v (hk heads).
    let rows = |x: &[T], b: usize, r: std::ops::Range<usize>, heads: usize| -> Vec<T> {
        x[(b * t + r.start) * heads * d..(b * t + r.end) * heads * d].to_vec()
    };
    if n > 0 {
        let seqs = SeqLens::varlen_from_lens(&vec![(n, n); batch])?;
        let pre = sparse_attn::AttnProblem::new(seqs.clone(), h, hk, d as u32, problem.dtype())?;
        let plan =
            AdaptivePlan::with_union(&pre, sel, &a.pattern.statics, Grouping::Prefill, &opts)?;
        let cat = |x: &[T], heads: usize| -> Vec<T> {
            (0..batch).flat_map(|b| rows(x, b, 0..n, heads)).collect()
        };
        let r = plan.run_emulated(
            &seqs,
            &cat(&q, h),
            &cat(&k, hk),
            &cat(&v, hk),
            None,
            &EmuRun::default(),
        )?;
        for b in 0..batch {
            out[b * t * h * d..][..n * h * d].copy_from_slice(&r.out[b * n * h * d..][..n * h * d]);
            for hh in 0..h {
                for i in 0..n {
                    lse[(b * h + hh) * t + i] = r.lse[hh * batch * n + b * n + i];
                }
            }
        }
    }
    let mut cache = KvCache::new(
        KvCacheConfig {
            num_layers: 1,
            num_kv_heads: hk,
            head_dim: d,
            dtype: problem.dtype(),
            page_size: a.page_size,
            max_seq_len: t,
            max_chunk: 64,
            pool: PoolSize::Sequences(batch),
        },
        vec![LayerCapacity::Full],
    )?
    .with_summaries(sel.block() as usize)?;
    let mut store = HostKvStorage::<T>::new(&cache)?;
    let ids: Vec<_> = (0..batch).map(|_| cache.add_sequence()).collect();
    for (b, &id) in ids.iter().enumerate() {
        let mut at = 0;
        while at < n {
            let m = (n - at).min(64);
            let pl = cache.reserve_append(id, m)?;
            store.append_emulated(
                0,
                &[&pl],
                &rows(&k, b, at..at + m, hk),
                &rows(&v, b, at..at + m, hk),
            )?;
            at += m;
        }
    }
    if n < t {
        let dprob = sparse_attn::AttnProblem::new(
            SeqLens::Uniform {
                batch,
                q_len: 1,
                kv_len: t,
            },
            h,
            hk,
            d as u32,
            problem.dtype(),
        )?;
        let mut dec = AdaptiveDecode::with_union(&dprob, sel, &a.pattern.statics, &opts)?;
        for i in n..t {
            let step_rows = |x: &[T], heads: usize| -> Vec<T> {
                (0..batch)
                    .flat_map(|b| rows(x, b, i..i + 1, heads))
                    .collect()
            };
            let s = dec.step_emulated(
                &mut cache,
                &mut store,
                0,
                &ids,
                &step_rows(&q, h),
                &step_rows(&k, hk),
                &step_rows(&v, hk),
                &EmuRun::default(),
            )?;
            for b in 0..batch {
                out[(b * t + i) * h * d..][..h * d].copy_from_slice(&s.out[b * h * d..][..h * d]);
                for hh in 0..h {
                    lse[(b * h + hh) * t + i] = s.lse[hh * batch + b];
                }
            }
        }
    }
    Ok((
        OutTensor::from_elems("out", inputs.q_shape.to_vec(), &out),
        lse,
    ))
}
