//! `sparse-attn plan`: what a model's layer plan costs at a sequence length — per layer the
//! pattern, its head_dim, density, attention FLOPs and KV-cache bytes, against dense attention.
//! Layers that are not softmax attention (Mamba, linear attention) are listed as such and
//! count no FLOPs and no KV bytes: their state is not this crate's.

use serde::Serialize;
use sparse_attn::pattern::{AttentionLayer, Layer, Pattern};

use crate::model::Model;
use crate::pattern::{message, set_text};
use crate::CliError;
use sparse_attn::kv_cache::Retention;
use sparse_attn::pattern::spans::allowed_pairs;

/// Work and memory of one layer at prefill length `n` (`q_len = kv_len = n`).
#[derive(Clone, Debug, Serialize)]
pub struct LayerStats {
    pub layer: usize,
    /// `attention`, or what a layer that is not softmax attention is (`mamba`,
    /// `linear_attention`); such a layer has no pattern and counts nothing below.
    pub kind: String,
    /// The compact text of the layer's head pattern set (the kind for other layers).
    pub pattern: String,
    /// The set itself, as docs/patterns.md JSON (null for other layers).
    pub patterns: serde_json::Value,
    /// The layer's head_dim and kv heads (its own, or the model's).
    pub head_dim: Option<usize>,
    pub num_kv_heads: Option<usize>,
    /// The layer's score scale and softcap when the config sets them.
    pub scale: Option<f32>,
    pub softcap: Option<f32>,
    /// Learnable sink logits (gpt-oss) and ALiBi (run by `run` and `decode` with `--model`).
    pub learnable_sinks: bool,
    pub alibi: bool,
    /// Allowed (query, key) pairs, summed over query heads.
    pub allowed_pairs: u128,
    /// Pairs a dense layer of the same causality allows (`n(n+1)/2` causal, `n^2` not).
    pub dense_pairs: u128,
    pub density: f64,
    /// `4 * allowed_pairs * head_dim`.
    pub flops: u128,
    pub dense_flops: u128,
    /// Keys each kv head must keep ([`Retention::kept_tokens`] of the layer).
    pub kv_tokens_per_kv_head: Vec<u64>,
    pub kv_bytes: u128,
    pub dense_kv_bytes: u128,
}

#[derive(Debug, Serialize)]
pub struct Totals {
    pub allowed_pairs: u128,
    pub dense_pairs: u128,
    pub density: f64,
    pub flops: u128,
    pub dense_flops: u128,
    pub flops_ratio: f64,
    pub kv_bytes: u128,
    pub dense_kv_bytes: u128,
    pub kv_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub model: String,
    pub model_type: Option<String>,
    pub seq_len: usize,
    pub num_layers: usize,
    /// Layers that are softmax attention (the others count nothing).
    pub attention_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: &'static str,
    pub dtype_bytes: usize,
    pub layers: Vec<LayerStats>,
    pub totals: Totals,
}

/// Pairs one head of a dense layer of the given causality allows: `q_len * kv_len`, or with
/// `causal` row `p` sees `p + 1` keys, `p` from `kv_len - q_len` to `kv_len - 1` (rows with
/// `p < 0` see none).
fn dense_pairs(causal: bool, q_len: usize, kv_len: usize) -> u128 {
    let (q, kv) = (q_len as u128, kv_len as u128);
    if !causal {
        return q * kv;
    }
    // Sum of x for x = first..=kv, first = max(1, kv - q + 1).
    let first = (kv + 1).saturating_sub(q).max(1);
    (kv * (kv + 1) - (first - 1) * first) / 2
}

/// Per-head allowed counts of head-independent patterns, shared across layers (a model's plan
/// has two or three distinct patterns).
#[derive(Default)]
struct Cache {
    allowed: Vec<(Pattern, u128)>,
}

impl Cache {
    fn allowed(&mut self, pattern: &Pattern, head: usize, n: usize) -> u128 {
        if pattern.is_head_dependent() {
            return allowed_pairs(pattern, head, n, n);
        }
        if let Some((_, a)) = self.allowed.iter().find(|(p, _)| p == pattern) {
            return *a;
        }
        let a = allowed_pairs(pattern, head, n, n);
        self.allowed.push((pattern.clone(), a));
        a
    }
}

fn ratio(a: u128, b: u128) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// A layer that is not softmax attention: its kind, and nothing counted.
fn other_stats(layer: usize, kind: &str) -> LayerStats {
    LayerStats {
        layer,
        kind: kind.to_string(),
        pattern: format!("{kind} (not softmax attention)"),
        patterns: serde_json::Value::Null,
        head_dim: None,
        num_kv_heads: None,
        scale: None,
        softcap: None,
        learnable_sinks: false,
        alibi: false,
        allowed_pairs: 0,
        dense_pairs: 0,
        density: 0.0,
        flops: 0,
        dense_flops: 0,
        kv_tokens_per_kv_head: Vec::new(),
        kv_bytes: 0,
        dense_kv_bytes: 0,
    }
}

fn layer_stats(
    layer: usize,
    a: &AttentionLayer,
    m: &Model,
    n: usize,
    bytes: usize,
    cache: &mut Cache,
) -> Result<LayerStats, CliError> {
    let set = &a.patterns;
    let hd = m.layer_head_dim(a).ok_or_else(|| {
        crate::input_err(
            &m.path,
            format!("layer {layer} has no head_dim; pass --head-dim"),
        )
    })?;
    let (h, hk, d) = (m.num_heads, m.layer_kv_heads(a), hd as u128);
    let pattern = |head: usize| set.pattern(head).expect("validated against num_heads");
    let mut allowed = 0u128;
    let mut dense = 0u128;
    for head in 0..h {
        let p = pattern(head);
        allowed += cache.allowed(p, head, n);
        dense += dense_pairs(p.causal, n, n);
    }
    // The layer's set was validated against num_heads, so it is never empty.
    let kept = Retention::of(set).map_or(n, |r| r.kept_tokens(n)) as u64;
    let kv_tokens = vec![kept; hk];
    let per_token = 2 * d * bytes as u128;
    Ok(LayerStats {
        layer,
        kind: "attention".into(),
        pattern: set_text(set),
        patterns: serde_json::to_value(set).unwrap_or(serde_json::Value::Null),
        head_dim: Some(hd),
        num_kv_heads: Some(hk),
        scale: a.scale,
        softcap: a.softcap,
        learnable_sinks: a.learnable_sinks,
        alibi: a.alibi,
        allowed_pairs: allowed,
        dense_pairs: dense,
        density: ratio(allowed, dense),
        flops: 4 * allowed * d,
        dense_flops: 4 * dense * d,
        kv_bytes: kv_tokens.iter().map(|&t| t as u128).sum::<u128>() * per_token,
        dense_kv_bytes: n as u128 * hk as u128 * per_token,
        kv_tokens_per_kv_head: kv_tokens,
    })
}

/// The largest sequence length: positions and `q_len + kv_len` stay within the kernels' `i32`.
const MAX_SEQ_LEN: usize = i32::MAX as usize / 2;

pub fn report(m: &Model, n: usize) -> Result<PlanReport, CliError> {
    if n == 0 || n > MAX_SEQ_LEN {
        return Err(CliError::Usage(format!(
            "--seq-len must be in 1..={MAX_SEQ_LEN} (got {n})"
        )));
    }
    m.plan
        .validate(m.num_heads, n)
        .map_err(|e| crate::input_err(&m.path, message(e)))?;
    let bytes = m.dtype.bytes();
    let mut cache = Cache::default();
    let layers: Vec<LayerStats> = m
        .plan
        .layers
        .iter()
        .enumerate()
        .map(|(l, layer)| match layer {
            Layer::Attention(a) => layer_stats(l, a, m, n, bytes, &mut cache),
            Layer::NonAttention(o) => Ok(other_stats(l, &o.kind)),
        })
        .collect::<Result<_, _>>()?;
    let head_dim = m
        .head_dim
        .ok_or_else(|| crate::input_err(&m.path, "has no head_dim; pass --head-dim"))?;
    let sum = |f: fn(&LayerStats) -> u128| layers.iter().map(f).sum::<u128>();
    let totals = Totals {
        allowed_pairs: sum(|l| l.allowed_pairs),
        dense_pairs: sum(|l| l.dense_pairs),
        density: ratio(sum(|l| l.allowed_pairs), sum(|l| l.dense_pairs)),
        flops: sum(|l| l.flops),
        dense_flops: sum(|l| l.dense_flops),
        flops_ratio: ratio(sum(|l| l.flops), sum(|l| l.dense_flops)),
        kv_bytes: sum(|l| l.kv_bytes),
        dense_kv_bytes: sum(|l| l.dense_kv_bytes),
        kv_ratio: ratio(sum(|l| l.kv_bytes), sum(|l| l.dense_kv_bytes)),
    };
    Ok(PlanReport {
        model: m.path.display().to_string(),
        model_type: m.model_type.clone(),
        seq_len: n,
        num_layers: layers.len(),
        attention_layers: layers.iter().filter(|l| l.kind == "attention").count(),
        num_heads: m.num_heads,
        num_kv_heads: m.num_kv_heads,
        head_dim,
        dtype: m.dtype.name(),
        dtype_bytes: bytes,
        layers,
        totals,
    })
}

/// `12.3 GFLOP`.
fn flops_text(x: u128) -> String {
    let x = x as f64;
    for (scale, unit) in [
        (1e15, "PFLOP"),
        (1e12, "TFLOP"),
        (1e9, "GFLOP"),
        (1e6, "MFLOP"),
    ] {
        if x >= scale {
            return format!("{:.2} {unit}", x / scale);
        }
    }
    format!("{x:.0} FLOP")
}

/// `16.0 MiB`.
fn bytes_text(x: u128) -> String {
    let x = x as f64;
    for (scale, unit) in [
        (1u64 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ] {
        if x >= scale as f64 {
            return format!("{:.1} {unit}", x / scale as f64);
        }
    }
    format!("{x:.0} B")
}

/// The settings a layer's row notes: scale, softcap, sink logits, ALiBi.
fn notes(l: &LayerStats) -> String {
    let mut v = Vec::new();
    if let Some(x) = l.scale {
        v.push(format!("scale {x}"));
    }
    if let Some(c) = l.softcap {
        v.push(format!("softcap {c}"));
    }
    if l.learnable_sinks {
        v.push("sink logits".to_string());
    }
    if l.alibi {
        v.push("ALiBi".to_string());
    }
    v.join(", ")
}

/// The human-readable table.
pub fn table(r: &PlanReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mut dims: Vec<usize> = r.layers.iter().filter_map(|l| l.head_dim).collect();
    dims.sort_unstable();
    dims.dedup();
    let per_layer = if dims.len() > 1 || dims.first().is_some_and(|&d| d != r.head_dim) {
        let list: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        format!(" (per layer: {})", list.join(", "))
    } else {
        String::new()
    };
    let others = r.num_layers - r.attention_layers;
    let layers_text = if others > 0 {
        format!(
            "{} layers ({} softmax attention, {others} not: no FLOPs or KV counted for them)",
            r.num_layers, r.attention_layers
        )
    } else {
        format!("{} layers", r.num_layers)
    };
    let _ = writeln!(
        s,
        "{}{}: {layers_text}, {} query heads, {} kv heads, head_dim {}{per_layer}, {}; seq-len \
         N = {} (prefill: q_len = kv_len = N)",
        r.model,
        r.model_type
            .as_deref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default(),
        r.num_heads,
        r.num_kv_heads,
        r.head_dim,
        r.dtype,
        r.seq_len
    );
    let _ = writeln!(
        s,
        "  density  = allowed (query, key) pairs / those of a dense layer of the same causality \
         (causal: N(N+1)/2 per head, else N^2)"
    );
    let _ = writeln!(
        s,
        "  FLOPs    = 4 x allowed pairs x head_dim (QK^T and PV), summed over query heads; \
         x dense = FLOPs / dense layer's"
    );
    let _ = writeln!(
        s,
        "  KV cache = keys the last query (p = N-1) or any later one may attend, x 2 (K, V) x \
         head_dim x {} bytes, summed over kv heads; dense keeps all N",
        r.dtype_bytes
    );
    let width = r
        .layers
        .iter()
        .map(|l| l.pattern.chars().count())
        .max()
        .unwrap_or(0)
        .max(16);
    let _ = writeln!(
        s,
        "{:>5}  {:<width$}  {:>8}  {:>8}  {:>12}  {:>8}  {:>10}  {:>8}  notes",
        "layer", "pattern", "head_dim", "density", "FLOPs", "x dense", "KV cache", "x dense"
    );
    for l in &r.layers {
        if l.kind != "attention" {
            let _ = writeln!(
                s,
                "{:>5}  {:<width$}  {:>8}  {:>8}  {:>12}  {:>8}  {:>10}  {:>8}",
                l.layer, l.pattern, "-", "-", "-", "-", "-", "-"
            );
            continue;
        }
        let line = format!(
            "{:>5}  {:<width$}  {:>8}  {:>8.4}  {:>12}  {:>8.4}  {:>10}  {:>8.4}  {}",
            l.layer,
            l.pattern,
            l.head_dim.map_or("-".into(), |d| d.to_string()),
            l.density,
            flops_text(l.flops),
            ratio(l.flops, l.dense_flops),
            bytes_text(l.kv_bytes),
            ratio(l.kv_bytes, l.dense_kv_bytes),
            notes(l)
        );
        let _ = writeln!(s, "{}", line.trim_end());
    }
    let t = &r.totals;
    let _ = writeln!(
        s,
        "{:>5}  {:<width$}  {:>8}  {:>8.4}  {:>12}  {:>8.4}  {:>10}  {:>8.4}",
        "total",
        "all layers",
        "",
        t.density,
        flops_text(t.flops),
        t.flops_ratio,
        bytes_text(t.kv_bytes),
        t.kv_ratio
    );
    let _ = writeln!(
        s,
        "{:>5}  {:<width$}  {:>8}  {:>8.4}  {:>12}  {:>8.4}  {:>10}  {:>8.4}",
        "dense",
        "all layers dense",
        "",
        1.0,
        flops_text(t.dense_flops),
        1.0,
        bytes_text(t.dense_kv_bytes),
        1.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_the_predicate() {
        for json in [
            r#"{"causal": true}"#,
            r#"{"causal": false, "components": [{"sliding_window": {"left": 3, "right": 5}}]}"#,
            r#"{"causal": true, "components": [{"sinks": {"count": 3}}, {"dilated": {"stride": 4}}]}"#,
            r#"{"causal": true, "components": [{"bigbird": {"block": 4, "window_blocks": 3, "global_blocks": 1, "random_blocks": 2, "seed": 9}}]}"#,
        ] {
            let p = Pattern::from_json(json).unwrap();
            for (q, kv) in [(37, 37), (10, 40), (40, 10)] {
                for head in 0..2 {
                    let want: u128 = (0..q as i64)
                        .flat_map(|i| (0..kv as i64).map(move |j| (i, j)))
                        .filter(|&(i, j)| p.allowed(head, i + kv as i64 - q as i64, j, kv))
                        .count() as u128;
                    assert_eq!(allowed_pairs(&p, head, q, kv), want, "{json} {q}x{kv}");
                }
            }
        }
        for (q, kv) in [(10, 10), (3, 10), (10, 3), (1, 1), (0, 5)] {
            for causal in [false, true] {
                let p = Pattern::new(causal, Vec::new());
                assert_eq!(dense_pairs(causal, q, kv), allowed_pairs(&p, 0, q, kv));
            }
        }
        assert_eq!(dense_pairs(true, 10, 10), 55);
    }

    #[test]
    fn unit_texts() {
        assert_eq!(flops_text(1_500_000_000), "1.50 GFLOP");
        assert_eq!(bytes_text(16 << 20), "16.0 MiB");
        assert_eq!(bytes_text(12), "12 B");
    }
}
