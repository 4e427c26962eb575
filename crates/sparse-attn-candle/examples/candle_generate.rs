//! A small decoder in candle, prefilling prompts and generating tokens through sparse-attn's
//! candle op and paged KV cache.
//!
//! The model has random weights in the shape of a Gemma 3 text model, scaled down so the CPU
//! emulator runs it in seconds: RMSNorm, RoPE (base 10,000 on local layers, 1,000,000 on
//! global ones), grouped-query attention (4 query heads, 1 kv head, head_dim 64), a gated MLP
//! and 5 sliding-window layers to each global one. The layer plan comes from a Gemma-3-style
//! `config.json` through [`LayerPlan::from_hf_config`], so the windowed layers keep only a ring
//! of pages in the cache.
//!
//! Two sequences with prompts of different lengths are prefilled in chunks (`--chunk`, 8
//! tokens) and decode together, one token each per step; a step mixes one sequence's prompt
//! chunk with the other's decode row once their prompts end at different steps. The run prints tokens/s and the cache's memory against a
//! dense cache; `--check` recomputes every generated position without the cache (the op over
//! each whole sequence) and compares the logits.
//!
//! ```text
//! cargo run --release -p sparse-attn-candle --example candle_generate -- [--tokens N] [--chunk N] [--check]
//! cargo run --release -p sparse-attn-candle --features cuda --example candle_generate  # on a GPU
//! ```

use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Result, Tensor, D};
use sparse_attn::kv_cache::{KvCacheConfig, PoolSize};
use sparse_attn::pattern::{HeadPatterns, LayerPlan, Pattern};
use sparse_attn_candle::{CandleKvCache, SparseAttn};

/// The model's config.json, in Gemma 3's field names (Gemma-3-1B's head counts and ratios at
/// a fraction of its widths and depth).
const CONFIG: &str = r#"{
  "model_type": "gemma3_text",
  "vocab_size": 512,
  "hidden_size": 256,
  "intermediate_size": 512,
  "num_hidden_layers": 6,
  "num_attention_heads": 4,
  "num_key_value_heads": 1,
  "head_dim": 64,
  "query_pre_attn_scalar": 64,
  "sliding_window": 32,
  "sliding_window_pattern": 6,
  "rope_theta": 1000000.0,
  "rope_local_base_freq": 10000.0,
  "rms_norm_eps": 1e-6
}"#;

/// What the example reads from the config.
struct Config {
    vocab: usize,
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rope_global: f64,
    rope_local: f64,
    eps: f64,
}

impl Config {
    fn from_json(v: &serde_json::Value) -> Config {
        let u = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("config: {k}")) as usize;
        let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("config: {k}"));
        Config {
            vocab: u("vocab_size"),
            hidden: u("hidden_size"),
            inter: u("intermediate_size"),
            layers: u("num_hidden_layers"),
            heads: u("num_attention_heads"),
            kv_heads: u("num_key_value_heads"),
            head_dim: u("head_dim"),
            rope_global: f("rope_theta"),
            rope_local: f("rope_local_base_freq"),
            eps: f("rms_norm_eps"),
        }
    }
}

/// One decoder layer's weights (`x.matmul(w)` orientation, `[in, out]`).
struct Block {
    attn_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    mlp_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
    /// RoPE base of this layer (local or global).
    rope_base: f64,
}

struct Model {
    cfg: Config,
    embed: Tensor,
    /// `[hidden, vocab]` (untied: tied random embeddings make a model that repeats its input).
    lm_head: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
}

/// Deterministic random weights: N(0, 1 / fan_in) so activations keep their scale.
fn weight(rows: usize, cols: usize, seed: u64, dev: &Device) -> Result<Tensor> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let std = (1.0 / rows as f64).sqrt() as f32;
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let mut u = 0.0;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                u += (s >> 40) as f32 / (1u64 << 24) as f32;
            }
            (u - 2.0) * std * 1.73
        })
        .collect();
    Tensor::from_vec(v, (rows, cols), dev)
}

impl Model {
    fn new(cfg: Config, plan: &LayerPlan, dev: &Device) -> Result<Model> {
        let (h, hk, d, e) = (cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.hidden);
        let ones = Tensor::ones(e, DType::F32, dev)?;
        let global = HeadPatterns::All(Pattern::causal());
        let blocks = (0..cfg.layers)
            .map(|l| {
                let seed = 1000 * (l as u64 + 1);
                Ok(Block {
                    attn_norm: ones.clone(),
                    wq: weight(e, h * d, seed + 1, dev)?,
                    wk: weight(e, hk * d, seed + 2, dev)?,
                    wv: weight(e, hk * d, seed + 3, dev)?,
                    wo: weight(h * d, e, seed + 4, dev)?,
                    mlp_norm: ones.clone(),
                    gate: weight(e, cfg.inter, seed + 5, dev)?,
                    up: weight(e, cfg.inter, seed + 6, dev)?,
                    down: weight(cfg.inter, e, seed + 7, dev)?,
                    rope_base: if plan.layers[l].patterns() == Some(&global) {
                        cfg.rope_global
                    } else {
                        cfg.rope_local
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(Model {
            embed: (weight(cfg.vocab, e, 7, dev)? * (e as f64).sqrt())?,
            lm_head: weight(e, cfg.vocab, 8, dev)?,
            norm: ones,
            blocks,
            cfg,
        })
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(ms + self.cfg.eps)?.sqrt()?)?
            .broadcast_mul(w)
    }

    /// Rotary embedding of `x` `[tokens, heads, head_dim]` at `positions` (rotate-half form).
    fn rope(&self, x: &Tensor, positions: &[u32], base: f64) -> Result<Tensor> {
        let d = self.cfg.head_dim;
        let half = d / 2;
        let angles: Vec<f32> = positions
            .iter()
            .flat_map(|&p| {
                (0..half).map(move |i| (p as f64 * base.powf(-2.0 * i as f64 / d as f64)) as f32)
            })
            .collect();
        let angles = Tensor::from_vec(angles, (positions.len(), 1, half), x.device())?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let (x1, x2) = (
            x.narrow(D::Minus1, 0, half)?,
            x.narrow(D::Minus1, half, half)?,
        );
        let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let r2 = (x1.broadcast_mul(&sin)? + x2.broadcast_mul(&cos)?)?;
        Tensor::cat(&[r1, r2], D::Minus1)
    }

    /// Logits `[tokens, vocab]` of `tokens` (the step's new tokens of every sequence, packed)
    /// at `positions`; `attend(layer, q, k, v)` is the attention of one layer over
    /// `[tokens, heads, head_dim]` bf16 tensors.
    fn forward(
        &self,
        tokens: &[u32],
        positions: &[u32],
        attend: &mut dyn FnMut(usize, &Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let n = tokens.len();
        let ids = Tensor::new(tokens, self.embed.device())?;
        let mut x = self.embed.index_select(&ids, 0)?;
        for (l, b) in self.blocks.iter().enumerate() {
            let a = self.rms_norm(&x, &b.attn_norm)?;
            let q = a.matmul(&b.wq)?.reshape((n, c.heads, c.head_dim))?;
            let k = a.matmul(&b.wk)?.reshape((n, c.kv_heads, c.head_dim))?;
            let v = a.matmul(&b.wv)?.reshape((n, c.kv_heads, c.head_dim))?;
            let q = self.rope(&q, positions, b.rope_base)?;
            let k = self.rope(&k, positions, b.rope_base)?;
            let bf = |t: Tensor| t.to_dtype(DType::BF16);
            let o = attend(l, &bf(q)?, &bf(k)?, &bf(v)?)?
                .to_dtype(DType::F32)?
                .reshape((n, c.heads * c.head_dim))?;
            x = (x + o.matmul(&b.wo)?)?;
            let m = self.rms_norm(&x, &b.mlp_norm)?;
            let g = m.matmul(&b.gate)?.silu()?;
            x = (x + (g * m.matmul(&b.up)?)?.matmul(&b.down)?)?;
        }
        self.rms_norm(&x, &self.norm)?.matmul(&self.lm_head)
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .map(|i| args.get(i + 1).cloned().unwrap_or_default())
}

fn device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return Ok(d);
    }
    Ok(Device::Cpu)
}

fn main() -> Result<()> {
    let gen: usize = arg("--tokens").map_or(64, |s| s.parse().expect("--tokens N"));
    let chunk: usize = arg("--chunk").map_or(8, |s| s.parse().expect("--chunk N"));
    let check = std::env::args().any(|a| a == "--check");
    let dev = device()?;
    let json: serde_json::Value = serde_json::from_str(CONFIG).map_err(candle_core::Error::wrap)?;
    let plan = LayerPlan::from_hf_config(&json).map_err(candle_core::Error::wrap)?;
    let cfg = Config::from_json(&json);
    let (heads, layers) = (cfg.heads, cfg.layers);
    let prompts: [Vec<u32>; 2] = [
        (0..24).map(|i| (i * 37 + 11) % 512).collect(),
        (0..17).map(|i| (i * 53 + 5) % 512).collect(),
    ];
    let max_len = prompts[0].len().max(prompts[1].len()) + gen;
    let config = KvCacheConfig {
        num_layers: layers,
        num_kv_heads: cfg.kv_heads,
        head_dim: cfg.head_dim,
        dtype: sparse_attn::DType::BF16,
        page_size: 8,
        max_seq_len: max_len,
        max_chunk: chunk,
        pool: PoolSize::Sequences(2),
    };
    let model = Model::new(cfg, &plan, &dev)?;
    let mut cache = CandleKvCache::new(config, plan.clone(), heads, &dev)?;
    let seqs = [cache.add_sequence(), cache.add_sequence()];
    println!(
        "candle_generate: {layers} layers (windows: {}), {heads} heads / {} kv heads, \
         head_dim {}, bf16 attention on {:?}",
        (0..layers)
            .map(|l| if model.blocks[l].rope_base == model.cfg.rope_global {
                'G'
            } else {
                'W'
            })
            .collect::<String>(),
        model.cfg.kv_heads,
        model.cfg.head_dim,
        dev.location()
    );

    let mut texts: [Vec<u32>; 2] = prompts.clone();
    // Tokens of each sequence already in the cache, and the logits of each generated token.
    let mut fed = [0usize; 2];
    let mut seen: [Vec<Tensor>; 2] = [Vec::new(), Vec::new()];
    let (mut steps, mut rows) = (0usize, 0usize);
    let started = Instant::now();
    loop {
        // Sequences still generating, each with its next prompt chunk or its last token: a
        // step may mix prefill chunks and decode rows.
        let active: Vec<(usize, usize)> = (0..2)
            .filter(|&b| seen[b].len() < gen)
            .map(|b| (b, (texts[b].len() - fed[b]).min(chunk)))
            .collect();
        if active.is_empty() {
            break;
        }
        let step_seqs: Vec<_> = active.iter().map(|&(b, n)| (seqs[b], n)).collect();
        let step = cache.begin_step(&step_seqs)?;
        let (mut tokens, mut positions) = (Vec::new(), Vec::new());
        for &(b, n) in &active {
            tokens.extend_from_slice(&texts[b][fed[b]..fed[b] + n]);
            positions.extend(fed[b] as u32..(fed[b] + n) as u32);
        }
        let logits = model.forward(&tokens, &positions, &mut |l, q, k, v| {
            cache.append_attend(&step, l, q, k, v)
        })?;
        let mut at = 0;
        for &(b, n) in &active {
            at += n;
            fed[b] += n;
            if fed[b] == texts[b].len() {
                let last = logits.i(at - 1)?;
                texts[b].push(last.argmax(0)?.to_scalar::<u32>()?);
                seen[b].push(last);
            }
        }
        steps += 1;
        rows += tokens.len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} prompt tokens, {} generated, in {steps} steps of at most {chunk} tokens per \
         sequence: {secs:.2} s, {:.1} generated tokens/s, {:.1} tokens/s through the model \
         (batch 2{})",
        prompts[0].len() + prompts[1].len(),
        2 * gen,
        (2 * gen) as f64 / secs,
        rows as f64 / secs,
        if dev.is_cpu() {
            ", CPU emulator: exact, not fast"
        } else {
            ""
        }
    );
    for (b, t) in texts.iter().enumerate() {
        println!(
            "sequence {b}: {} tokens, generated {:?}",
            t.len(),
            &t[prompts[b].len()..]
        );
    }
    let tokens = texts[0].len() + texts[1].len() - 2;
    println!(
        "KV cache: {} KiB in pages held ({} KiB pool) vs {} KiB for a dense cache of the same \
         {tokens} tokens",
        cache.bytes_used() / 1024,
        cache.pool_bytes() / 1024,
        cache.dense_bytes(tokens) / 1024
    );

    if check {
        let mut worst = 0f32;
        for b in 0..2 {
            // Everything but the last token (its logits were never computed), in one pass per
            // layer through the op with the layer's settings.
            let text = &texts[b][..texts[b].len() - 1];
            let positions: Vec<u32> = (0..text.len() as u32).collect();
            let full = model.forward(text, &positions, &mut |l, q, k, v| {
                let layer = plan.attention(l).expect("attention layer");
                let op = SparseAttn::new(layer.patterns.clone());
                let op = SparseAttn {
                    scale: layer.scale,
                    softcap: layer.softcap,
                    ..op
                };
                op.forward(&q.unsqueeze(0)?, &k.unsqueeze(0)?, &v.unsqueeze(0)?)?
                    .squeeze(0)
            })?;
            let first = prompts[b].len() - 1;
            let scale = full.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            for (i, got) in seen[b].iter().enumerate() {
                let want = full.i(first + i)?;
                let diff = (got - &want)?.abs()?.max(0)?.to_scalar::<f32>()?;
                worst = worst.max(diff / scale);
            }
        }
        println!("check: cached generation vs full recomputation, max |logit diff| / max |logit| = {worst:.2e}");
        if worst > 2e-2 {
            return Err(candle_core::Error::Msg(format!(
                "cached and recomputed logits differ by {worst} (relative)"
            )));
        }
    }
    Ok(())
}
