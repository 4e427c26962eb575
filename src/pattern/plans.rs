//! Builders for the layer plans real models use, and reading them from a Hugging Face
//! `config.json`.
//!
//! | model | plan |
//! |---|---|
//! | Llama 3.x, Mixtral, Qwen2.5/3 (window off) | [`LayerPlan::uniform`]: causal dense on every layer |
//! | Mistral 7B v0.1, Phi-3 mini | [`LayerPlan::uniform`]: a causal window (4096, 2047) on every layer |
//! | Gemma 2, gpt-oss | [`LayerPlan::interleaved`] with 1 local per global: 4096 (128) window, dense, ... |
//! | Gemma 3, Gemma 4 | [`LayerPlan::interleaved`] with 5 locals per global: five 1024-window layers, then dense |
//! | Cohere Command R7B | [`LayerPlan::interleaved`] with 3 locals per global (4096 window) |
//! | Qwen2 (`use_sliding_window`) | dense below `max_window_layers`, windowed above |
//! | Llama 4 | three causal chunked (8192) layers per dense layer |
//! | Jamba | one attention layer in 8 ([`LayerPlan::periodic`]), Mamba layers between |
//! | MiniMax-01 | softmax attention every 8th layer, linear (lightning) attention between |
//! | Qwen3-Next | full attention every 4th layer, linear attention (Gated DeltaNet) between |

use serde_json::{Map, Value};

use super::layer::{AttentionLayer, Layer, LayerPlan};
use super::set::{strip, HeadPatterns, Pattern};
use crate::error::{Error, Result};
use crate::shape::DType;

/// `Error::Config` naming `field`: the message is `"field" ` and `what`.
fn field_error(field: impl Into<String>, what: impl std::fmt::Display) -> Error {
    let field = field.into();
    Error::Config {
        message: format!("\"{field}\" {what}"),
        field,
    }
}

/// The JSON text of a value, shortened for messages.
fn shown(v: &Value) -> String {
    let t = v.to_string();
    if t.chars().count() > 40 {
        format!("{}...", t.chars().take(40).collect::<String>())
    } else {
        t
    }
}

/// The fields the layer count may be spelled as (BLOOM `n_layer`, MPT `n_layers`).
const LAYER_KEYS: [&str; 3] = ["num_hidden_layers", "n_layer", "n_layers"];

/// A config's fields: the root, and the object holding the language model's fields (the root,
/// or a nested `text_config` when the root has no layer count, as in Gemma 3 4B and up, Gemma 4
/// and Llama 4). Null fields read as absent.
struct Cfg<'a> {
    root: &'a Map<String, Value>,
    text: &'a Map<String, Value>,
}

impl<'a> Cfg<'a> {
    fn new(config: &'a Value) -> Result<Self> {
        let root = config.as_object().ok_or_else(|| Error::Config {
            field: String::new(),
            message: "not a JSON object".into(),
        })?;
        let text = match root.get("text_config") {
            Some(Value::Object(t)) if !LAYER_KEYS.iter().any(|k| root.contains_key(*k)) => t,
            _ => root,
        };
        Ok(Cfg { root, text })
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.text.get(key).filter(|v| !v.is_null())
    }

    /// `model_type` of the language model, else of the root.
    fn model_type(&self) -> Option<&'a str> {
        self.get("model_type")
            .or_else(|| self.root.get("model_type"))
            .and_then(Value::as_str)
    }

    fn uint_in(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<usize>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    field_error(
                        field,
                        format!("must be a non-negative integer (got {})", shown(v)),
                    )
                }),
        }
    }

    fn uint(&self, key: &str) -> Result<Option<usize>> {
        Cfg::uint_in(self.text, key, key)
    }

    /// The first of `keys` present, with its value.
    fn first_uint(&self, keys: &[&'static str]) -> Result<Option<(&'static str, usize)>> {
        for &k in keys {
            if let Some(v) = self.uint(k)? {
                return Ok(Some((k, v)));
            }
        }
        Ok(None)
    }

    fn bool_in(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<bool>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(field_error(
                field,
                format!("must be true or false (got {})", shown(v)),
            )),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        Cfg::bool_in(self.text, key, key)
    }

    fn positive_float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .map(Some)
                .ok_or_else(|| {
                    field_error(key, format!("must be a positive number (got {})", shown(v)))
                }),
        }
    }

    /// MPT's nested `attn_config` (empty when absent).
    fn attn_config(&self) -> Result<Map<String, Value>> {
        match self.get("attn_config") {
            None => Ok(Map::new()),
            Some(Value::Object(o)) => Ok(o.clone()),
            Some(v) => Err(field_error(
                "attn_config",
                format!("must be an object (got {})", shown(v)),
            )),
        }
    }
}

/// What a config's layer is, before it becomes a [`Layer`].
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Full,
    Sliding,
    Chunked,
    Other(String),
}

/// Where the layer kinds came from (the hybrid rules leave no room for a `sliding_window`).
#[derive(Clone, Copy, PartialEq)]
enum Source {
    LayerTypes,
    Hybrid(&'static str),
    Llama4,
    Windows,
}

/// Hugging Face's `sliding_window_pattern` default of model types whose config may omit it.
fn default_window_pattern(model_type: Option<&str>) -> Option<usize> {
    match model_type? {
        "gemma3" | "gemma3_text" | "gemma4" | "gemma4_text" => Some(6),
        "cohere2" => Some(4),
        _ => None,
    }
}

fn is_llama4(model_type: Option<&str>) -> bool {
    model_type.is_some_and(|t| t.starts_with("llama4"))
}

/// A list field of exactly `n` entries.
fn list_of<'v>(v: &'v Value, key: &str, n: usize, what: &str) -> Result<&'v [Value]> {
    let list = v
        .as_array()
        .ok_or_else(|| field_error(key, format!("must be a list of {what}")))?;
    if list.len() != n {
        return Err(field_error(
            key,
            format!(
                "has {} entries but \"num_hidden_layers\" is {n}",
                list.len()
            ),
        ));
    }
    Ok(list)
}

/// The kind of every layer, from the first rule that applies (see
/// [`LayerPlan::from_hf_config`]).
fn layer_kinds(c: &Cfg<'_>, n: usize, chunk: Option<usize>) -> Result<(Vec<Kind>, Source)> {
    let mt = c.model_type();
    if let Some(v) = c.get("layer_types") {
        let kinds = list_of(v, "layer_types", n, "layer type names")?
            .iter()
            .enumerate()
            .map(|(l, t)| match t.as_str() {
                Some("full_attention" | "attention") => Ok(Kind::Full),
                Some("sliding_attention") => Ok(Kind::Sliding),
                Some("chunked_attention") => Ok(Kind::Chunked),
                Some(k @ ("linear_attention" | "mamba")) => Ok(Kind::Other(k.to_string())),
                _ => Err(field_error(
                    format!("layer_types[{l}]"),
                    format!(
                        "is {}, a layer type this crate does not know (known: full_attention, \
                         attention, sliding_attention, chunked_attention, linear_attention, mamba)",
                        shown(t)
                    ),
                )),
            })
            .collect::<Result<_>>()?;
        return Ok((kinds, Source::LayerTypes));
    }
    if let Some(v) = c.get("attn_type_list") {
        let kinds = list_of(
            v,
            "attn_type_list",
            n,
            "0 (linear attention) or 1 (softmax)",
        )?
        .iter()
        .enumerate()
        .map(|(l, t)| match t.as_u64() {
            Some(1) => Ok(Kind::Full),
            Some(0) => Ok(Kind::Other("linear_attention".into())),
            _ => Err(field_error(
                format!("attn_type_list[{l}]"),
                format!(
                    "is {}, expected 1 (softmax attention) or 0 (linear attention)",
                    shown(t)
                ),
            )),
        })
        .collect::<Result<_>>()?;
        return Ok((kinds, Source::Hybrid("attn_type_list")));
    }
    if let Some(v) = c.get("layers_block_type") {
        let kinds = list_of(v, "layers_block_type", n, "\"attention\" or \"mamba\"")?
            .iter()
            .enumerate()
            .map(|(l, t)| match t.as_str() {
                Some("attention") => Ok(Kind::Full),
                Some("mamba") => Ok(Kind::Other("mamba".into())),
                _ => Err(field_error(
                    format!("layers_block_type[{l}]"),
                    format!("is {}, expected \"attention\" or \"mamba\"", shown(t)),
                )),
            })
            .collect::<Result<_>>()?;
        return Ok((kinds, Source::Hybrid("layers_block_type")));
    }
    let (period, offset) = (c.uint("attn_layer_period")?, c.uint("attn_layer_offset")?);
    if period.is_some() || offset.is_some() {
        // Jamba; Hugging Face's defaults are period 8, offset 4.
        let (period, offset) = (period.unwrap_or(8), offset.unwrap_or(4));
        if period == 0 {
            return Err(field_error("attn_layer_period", "must be at least 1"));
        }
        if offset >= period {
            return Err(field_error(
                "attn_layer_offset",
                format!("({offset}) must be less than \"attn_layer_period\" ({period})"),
            ));
        }
        let kinds = (0..n)
            .map(|l| {
                if l % period == offset {
                    Kind::Full
                } else {
                    Kind::Other("mamba".into())
                }
            })
            .collect();
        return Ok((kinds, Source::Hybrid("attn_layer_period")));
    }
    if let Some(k) = c.uint("full_attention_interval")? {
        if k == 0 {
            return Err(field_error("full_attention_interval", "must be at least 1"));
        }
        let kinds = (0..n)
            .map(|l| {
                if (l + 1) % k == 0 {
                    Kind::Full
                } else {
                    Kind::Other("linear_attention".into())
                }
            })
            .collect();
        return Ok((kinds, Source::Hybrid("full_attention_interval")));
    }
    if is_llama4(mt) {
        // `no_rope_layers[l] == 1`: a RoPE layer, chunked; 0: a NoPE layer, global. Empty or
        // absent: a NoPE layer every `no_rope_layer_interval` (4) layers. No chunk size: the
        // RoPE layers are global too (Hugging Face's Llama 4).
        let rope: Vec<bool> = match c.get("no_rope_layers") {
            Some(Value::Array(a)) if !a.is_empty() => {
                if a.len() < n {
                    return Err(field_error(
                        "no_rope_layers",
                        format!("has {} entries but \"num_hidden_layers\" is {n}", a.len()),
                    ));
                }
                a[..n]
                    .iter()
                    .enumerate()
                    .map(|(l, v)| match v.as_u64() {
                        Some(0) => Ok(false),
                        Some(1) => Ok(true),
                        _ => Err(field_error(
                            format!("no_rope_layers[{l}]"),
                            format!("is {}, expected 0 or 1", shown(v)),
                        )),
                    })
                    .collect::<Result<_>>()?
            }
            Some(Value::Array(_)) | None => {
                let k = c.uint("no_rope_layer_interval")?.unwrap_or(4);
                if k == 0 {
                    return Err(field_error("no_rope_layer_interval", "must be at least 1"));
                }
                (0..n).map(|l| (l + 1) % k != 0).collect()
            }
            Some(v) => {
                return Err(field_error(
                    "no_rope_layers",
                    format!("must be a list of 0 and 1 (got {})", shown(v)),
                ))
            }
        };
        let kinds = rope
            .into_iter()
            .map(|r| {
                if r && chunk.is_some() {
                    Kind::Chunked
                } else {
                    Kind::Full
                }
            })
            .collect();
        return Ok((kinds, Source::Llama4));
    }

    // Sliding windows or none.
    let window = c.uint("sliding_window")?;
    let all = |k: Kind| Ok((vec![k; n], Source::Windows));
    if let Some(use_sw) = c.bool("use_sliding_window")? {
        if !use_sw || window.is_none() {
            return all(Kind::Full);
        }
        let first_windowed = match c.uint("max_window_layers")? {
            Some(m) => m,
            // Hugging Face's default for the Qwen2/Qwen3 families.
            None if mt.is_some_and(|t| t.starts_with("qwen2") || t.starts_with("qwen3")) => 28,
            None => {
                return Err(field_error(
                    "max_window_layers",
                    "is missing: with \"use_sliding_window\" true it says which layers are \
                     windowed",
                ))
            }
        };
        let kinds = (0..n)
            .map(|l| {
                if l >= first_windowed {
                    Kind::Sliding
                } else {
                    Kind::Full
                }
            })
            .collect();
        return Ok((kinds, Source::Windows));
    }
    if window.is_none() {
        return all(Kind::Full);
    }
    if let Some(order) = c.get("order_of_interleaved_layers") {
        // Cohere2: local layers first in each group (the only order Hugging Face implements).
        if order.as_str() != Some("local_attn_first") {
            return Err(field_error(
                "order_of_interleaved_layers",
                format!(
                    "is {}; only \"local_attn_first\" is supported",
                    shown(order)
                ),
            ));
        }
    }
    let pattern = match c.uint("sliding_window_pattern")? {
        Some(p) => Some(p),
        None => default_window_pattern(mt),
    };
    if let Some(p) = pattern {
        if p == 0 {
            return Err(field_error("sliding_window_pattern", "must be at least 1"));
        }
        let kinds = (0..n)
            .map(|l| {
                if (l + 1) % p != 0 {
                    Kind::Sliding
                } else {
                    Kind::Full
                }
            })
            .collect();
        return Ok((kinds, Source::Windows));
    }
    if matches!(mt, Some("gemma2" | "gpt_oss")) {
        let kinds = (0..n)
            .map(|l| {
                if l % 2 == 0 {
                    Kind::Sliding
                } else {
                    Kind::Full
                }
            })
            .collect();
        return Ok((kinds, Source::Windows));
    }
    all(Kind::Sliding)
}

/// Fields this crate cannot honour: an error naming the first one present.
fn refuse_unsupported(c: &Cfg<'_>) -> Result<()> {
    if let Some(v) = c.get("use_bidirectional_attention") {
        if v != &Value::Bool(false) {
            return Err(field_error(
                "use_bidirectional_attention",
                format!(
                    "is {}: bidirectional attention over parts of the input is not supported \
                     (layer plans from a config are causal decoders)",
                    shown(v)
                ),
            ));
        }
    }
    if let Some(k) = c.uint("num_kv_shared_layers")?.filter(|&k| k > 0) {
        return Err(field_error(
            "num_kv_shared_layers",
            format!(
                "is {k}: layers that reuse another layer's KV cache are not supported (their KV \
                 bytes and pages would be counted twice)"
            ),
        ));
    }
    Ok(())
}

/// The per-layer settings a config's attention layers share.
#[derive(Clone, Copy, Debug, Default)]
struct Settings {
    scale: Option<f32>,
    softcap: Option<f32>,
    learnable_sinks: bool,
    alibi: bool,
}

/// Scale, softcap, sink logits and ALiBi from the config (see [`LayerPlan::from_hf_config`]).
fn settings(c: &Cfg<'_>) -> Result<Settings> {
    let mt = c.model_type();
    let mut s = Settings::default();
    if let Some(q) = c.positive_float("query_pre_attn_scalar")? {
        s.scale = Some((1.0 / q.sqrt()) as f32);
    } else if matches!(mt, Some("gemma4" | "gemma4_text")) {
        // Gemma 4 scores are q . k unscaled (Hugging Face's attention sets scaling = 1; the
        // q and k norms keep them in range).
        s.scale = Some(1.0);
    }
    if let Some(cap) = c.positive_float("attn_logit_softcapping")? {
        s.softcap = Some(cap as f32);
    }
    // gpt-oss: every attention layer has learnable per-head sink logits (no config field).
    s.learnable_sinks = mt == Some("gpt_oss");
    match mt {
        Some("bloom") => s.alibi = true,
        // Hugging Face's Falcon adds the bias before the 1 / sqrt(head_dim) scale, so its
        // slopes are the standard ones divided by sqrt(head_dim).
        Some("falcon" | "RefinedWeb" | "RefinedWebModel") if c.bool("alibi")? == Some(true) => {
            return Err(field_error(
                "alibi",
                "is true: Falcon's ALiBi bias is scaled with the scores (slopes / \
                 sqrt(head_dim)), not the standard slopes on the scaled scores",
            ));
        }
        Some("mpt") => {
            let a = c.attn_config()?;
            let field = |k: &str| format!("attn_config.{k}");
            if Cfg::bool_in(&a, "prefix_lm", &field("prefix_lm"))? == Some(true) {
                return Err(field_error(
                    field("prefix_lm"),
                    "is true: prefix-LM attention (bidirectional over the prefix) is not supported",
                ));
            }
            if let Some(w) = a.get("sliding_window_size").filter(|v| !v.is_null()) {
                if w.as_i64() != Some(-1) {
                    return Err(field_error(
                        field("sliding_window_size"),
                        format!("is {}: MPT sliding windows are not supported", shown(w)),
                    ));
                }
            }
            s.alibi = Cfg::bool_in(&a, "alibi", &field("alibi"))?.unwrap_or(false);
            if s.alibi {
                if let Some(m) = a.get("alibi_bias_max").filter(|v| !v.is_null()) {
                    if m.as_f64() != Some(8.0) {
                        return Err(field_error(
                            field("alibi_bias_max"),
                            format!(
                                "is {}: only the standard ALiBi slopes (alibi_bias_max 8) are \
                                 supported",
                                shown(m)
                            ),
                        ));
                    }
                }
            }
            match a.get("softmax_scale").filter(|v| !v.is_null()) {
                None => {}
                Some(v) => {
                    let x = v
                        .as_f64()
                        .filter(|x| x.is_finite() && *x > 0.0)
                        .ok_or_else(|| {
                            field_error(
                                field("softmax_scale"),
                                format!("must be a positive number (got {})", shown(v)),
                            )
                        })?;
                    s.scale = Some(x as f32);
                }
            }
        }
        _ => {}
    }
    Ok(s)
}

/// Key/value heads of the model: `num_key_value_heads`, Falcon's `multi_query` /
/// `new_decoder_architecture` / `num_kv_heads`, MPT's `attn_config.attn_type`; `None` when the
/// config leaves them to the query head count.
fn kv_heads(c: &Cfg<'_>) -> Result<Option<usize>> {
    match c.model_type() {
        Some("falcon" | "RefinedWeb" | "RefinedWebModel") => {
            // Hugging Face's Falcon: the new architecture reads num_kv_heads; the old one has
            // one kv head when multi_query (the default), else one per query head.
            if c.bool("new_decoder_architecture")?.unwrap_or(false)
                || !c.bool("multi_query")?.unwrap_or(true)
            {
                c.uint("num_kv_heads")
            } else {
                Ok(Some(1))
            }
        }
        Some("mpt") => {
            let a = c.attn_config()?;
            match a.get("attn_type").filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(t) => match t.as_str() {
                    Some("multihead_attention") => Ok(None),
                    Some("multiquery_attention") => Ok(Some(1)),
                    Some("grouped_query_attention") => {
                        Cfg::uint_in(&a, "kv_n_heads", "attn_config.kv_n_heads")?
                            .map(Some)
                            .ok_or_else(|| {
                                field_error(
                                    "attn_config.kv_n_heads",
                                    "is missing (grouped_query_attention needs it)",
                                )
                            })
                    }
                    _ => Err(field_error(
                        "attn_config.attn_type",
                        format!(
                            "is {}, expected multihead_attention, multiquery_attention or \
                             grouped_query_attention",
                            shown(t)
                        ),
                    )),
                },
            }
        }
        _ => c.uint("num_key_value_heads"),
    }
}

/// What a Hugging Face `config.json` says about attention: the layer plan and the attention
/// shapes, as an engine (or the CLI's `plan` and `viz`) needs them. Fields are read from the
/// language model's object (the root, or `text_config`, see [`LayerPlan::from_hf_config`]);
/// absent shape fields are `None` so the caller decides the defaults. Per-layer shapes that
/// differ from these (Gemma 4's global layers) are in the plan's [`AttentionLayer`]s.
#[derive(Clone, Debug, PartialEq)]
pub struct HfAttentionConfig {
    /// `model_type` (of the language model, else of the root).
    pub model_type: Option<String>,
    /// The plan [`LayerPlan::from_hf_config`] reads.
    pub plan: LayerPlan,
    /// `num_attention_heads` (BLOOM `n_head`, MPT `n_heads`).
    pub num_attention_heads: Option<usize>,
    /// `num_key_value_heads` (Falcon: 1 with `multi_query`, else `num_kv_heads`; MPT: from
    /// `attn_config.attn_type`); `None`: as many as query heads (Hugging Face's default).
    pub num_key_value_heads: Option<usize>,
    /// `head_dim`.
    pub head_dim: Option<usize>,
    /// `hidden_size` (MPT `d_model`).
    pub hidden_size: Option<usize>,
    /// `torch_dtype` (or `dtype`; of the language model, else of the root): `float16` and
    /// `bfloat16` are the element types the kernels run; any other value is `None` (see
    /// [`HfAttentionConfig::dtype_name`]).
    pub dtype: Option<DType>,
    /// The `torch_dtype` / `dtype` text as the config spells it, if any.
    pub dtype_name: Option<String>,
}

impl HfAttentionConfig {
    /// Reads a parsed `config.json`: the errors of [`LayerPlan::from_hf_config`], and a shape
    /// field that is not a non-negative integer (`Error::Config` naming the field).
    pub fn from_json(config: &Value) -> Result<Self> {
        let c = Cfg::new(config)?;
        let plan = read_plan(&c)?;
        let dtype_name = c
            .get("torch_dtype")
            .or_else(|| c.get("dtype"))
            .or_else(|| c.root.get("torch_dtype"))
            .or_else(|| c.root.get("dtype"))
            .and_then(Value::as_str);
        let dtype = match dtype_name {
            Some("float16") => Some(DType::F16),
            Some("bfloat16") => Some(DType::BF16),
            _ => None,
        };
        Ok(HfAttentionConfig {
            model_type: c.model_type().map(str::to_string),
            plan,
            num_attention_heads: c
                .first_uint(&["num_attention_heads", "n_head", "n_heads"])?
                .map(|(_, v)| v),
            num_key_value_heads: kv_heads(&c)?,
            head_dim: c.uint("head_dim")?,
            hidden_size: c
                .first_uint(&["hidden_size", "d_model", "n_embed"])?
                .map(|(_, v)| v),
            dtype,
            dtype_name: dtype_name.map(str::to_string),
        })
    }

    /// The head dimension for `num_heads` query heads: `head_dim`, else `hidden_size /
    /// num_heads` when it divides evenly (`None` when neither gives one).
    pub fn head_dim_for(&self, num_heads: usize) -> Option<usize> {
        self.head_dim.or_else(|| {
            self.hidden_size
                .filter(|&h| num_heads > 0 && h > 0 && h % num_heads == 0)
                .map(|h| h / num_heads)
        })
    }
}

/// The plan of a config (see [`LayerPlan::from_hf_config`]).
fn read_plan(c: &Cfg<'_>) -> Result<LayerPlan> {
    let mt = c.model_type();
    let (key, n) = c.first_uint(&LAYER_KEYS)?.ok_or_else(|| Error::Config {
        field: "num_hidden_layers".into(),
        message: "missing \"num_hidden_layers\"".into(),
    })?;
    if n == 0 {
        return Err(field_error(key, "is 0"));
    }
    refuse_unsupported(c)?;
    let chunk = match c.text.get("attention_chunk_size") {
        // Hugging Face's Llama 4 default.
        None if is_llama4(mt) => Some(8192),
        None | Some(Value::Null) => None,
        Some(_) => c.uint("attention_chunk_size")?,
    };
    let (kinds, source) = layer_kinds(c, n, chunk)?;
    let window = c.uint("sliding_window")?;
    let rule = match source {
        Source::Hybrid(r) => Some(r),
        Source::Llama4 => Some("no_rope_layers"),
        Source::LayerTypes | Source::Windows => None,
    };
    if let (Some(w), Some(rule)) = (window, rule) {
        return Err(field_error(
            "sliding_window",
            format!(
                "is {w}, but the layers come from \"{rule}\", which does not say which of them \
                 are windowed"
            ),
        ));
    }
    if chunk.is_some() && source != Source::LayerTypes && !is_llama4(mt) {
        return Err(field_error(
            "attention_chunk_size",
            "is set, but the config has no \"layer_types\" saying which layers are chunked",
        ));
    }
    let s = settings(c)?;
    let global_head_dim = c.uint("global_head_dim")?;
    let global_kv_heads = if c.bool("attention_k_eq_v")?.unwrap_or(false) {
        c.uint("num_global_key_value_heads")?
    } else {
        None
    };

    let mut dense: Option<HeadPatterns> = None;
    let mut local: Option<HeadPatterns> = None;
    let mut chunked: Option<HeadPatterns> = None;
    let mut layers = Vec::with_capacity(n);
    for kind in &kinds {
        let patterns = match kind {
            Kind::Other(k) => {
                layers.push(Layer::non_attention(k.clone())?);
                continue;
            }
            Kind::Full => dense
                .get_or_insert_with(|| HeadPatterns::All(Pattern::causal()))
                .clone(),
            Kind::Sliding => match &local {
                Some(p) => p.clone(),
                None => {
                    let w = window.ok_or_else(|| {
                        field_error(
                            "sliding_window",
                            "is missing: the sliding_attention layers need it",
                        )
                    })?;
                    let p = Pattern::causal_window(i64::try_from(w).unwrap_or(i64::MAX))
                        .map_err(|e| field_error("sliding_window", size_message(e)))?;
                    local.insert(HeadPatterns::All(p)).clone()
                }
            },
            Kind::Chunked => match &chunked {
                Some(p) => p.clone(),
                None => {
                    let size = chunk.ok_or_else(|| {
                        field_error(
                            "attention_chunk_size",
                            "is missing: the chunked_attention layers need it",
                        )
                    })?;
                    let p = Pattern::causal_chunked(i64::try_from(size).unwrap_or(i64::MAX))
                        .map_err(|e| field_error("attention_chunk_size", size_message(e)))?;
                    chunked.insert(HeadPatterns::All(p)).clone()
                }
            },
        };
        let global = *kind == Kind::Full;
        let layer = AttentionLayer {
            patterns,
            head_dim: global_head_dim.filter(|_| global),
            num_kv_heads: global_kv_heads.filter(|_| global),
            scale: s.scale,
            softcap: s.softcap,
            learnable_sinks: s.learnable_sinks,
            alibi: s.alibi,
        };
        layer.check_settings()?;
        layers.push(Layer::Attention(layer));
    }
    Ok(LayerPlan { layers })
}

/// "must be at least 1 (got 0)" from a component's size error.
fn size_message(e: Error) -> String {
    let m = strip(e);
    match m.find("must") {
        Some(i) => m[i..].to_string(),
        None => m,
    }
}

fn need_layers(num_layers: usize) -> Result<()> {
    if num_layers == 0 {
        return Err(Error::Pattern(
            "a layer plan needs at least one layer".into(),
        ));
    }
    Ok(())
}

impl LayerPlan {
    /// The same layer on every one of `num_layers` layers.
    pub fn uniform(num_layers: usize, layer: impl Into<Layer>) -> Result<Self> {
        need_layers(num_layers)?;
        Ok(LayerPlan {
            layers: vec![layer.into(); num_layers],
        })
    }

    /// Local:global interleave: `locals_per_global` layers of `local`, then one of `global`,
    /// repeating; layer `l` is global iff `(l + 1) % (locals_per_global + 1) == 0`.
    /// Gemma 2 is `locals_per_global = 1` (even layers local), Gemma 3 is 5, Llama 4 is 3
    /// (chunked locals).
    pub fn interleaved(
        num_layers: usize,
        local: impl Into<Layer>,
        global: impl Into<Layer>,
        locals_per_global: usize,
    ) -> Result<Self> {
        let period = locals_per_global + 1;
        LayerPlan::periodic(num_layers, local, global, period, period - 1)
    }

    /// `dense` on layers `l` with `l % period == offset`, `sparse` elsewhere (dense layers
    /// among sparse ones, or attention layers among Mamba layers as in Jamba: period 8, offset
    /// 4). `period >= 1`, `offset < period`.
    pub fn periodic(
        num_layers: usize,
        sparse: impl Into<Layer>,
        dense: impl Into<Layer>,
        period: usize,
        offset: usize,
    ) -> Result<Self> {
        need_layers(num_layers)?;
        if period == 0 || offset >= period {
            return Err(Error::Pattern(format!(
                "periodic plan needs period >= 1 and offset < period (got period {period}, offset {offset})"
            )));
        }
        let (sparse, dense) = (sparse.into(), dense.into());
        Ok(LayerPlan {
            layers: (0..num_layers)
                .map(|l| {
                    if l % period == offset {
                        dense.clone()
                    } else {
                        sparse.clone()
                    }
                })
                .collect(),
        })
    }

    /// The plan of a Hugging Face decoder from its `config.json` (parsed). Attention patterns
    /// are causal; Hugging Face's `sliding_window: W` is the `size` window (the W most recent
    /// tokens including the query's own, docs/patterns.md) and `attention_chunk_size: C` the
    /// `chunked` component. The layer kinds come from the first rule that applies:
    ///
    /// 1. `layer_types`, one per layer: `full_attention` (or `attention`), `sliding_attention`
    ///    (needs `sliding_window`), `chunked_attention` (needs `attention_chunk_size`; Llama 4
    ///    defaults it to 8192), or a layer that is not softmax attention, `linear_attention` or
    ///    `mamba`. Any other type is an error naming the entry.
    /// 2. `attn_type_list` (MiniMax-01), one per layer: 1 softmax attention, 0 linear attention.
    /// 3. `layers_block_type`, one per layer: `attention` or `mamba`.
    /// 4. `attn_layer_period` / `attn_layer_offset` (Jamba, defaults 8 and 4): layer `l` is
    ///    attention iff `l % period == offset`, else `mamba`.
    /// 5. `full_attention_interval: K` (Qwen3-Next): layer `l` is attention iff
    ///    `(l + 1) % K == 0`, else linear attention.
    /// 6. `model_type` `llama4*`: `no_rope_layers` (1: a RoPE layer, chunked; 0: global) or,
    ///    empty or absent, a global layer every `no_rope_layer_interval` (4) layers; with
    ///    `attention_chunk_size` null no layer is chunked.
    /// 7. `use_sliding_window` (Qwen2/3): `false` → every layer dense; `true` → layers
    ///    `l >= max_window_layers` (Hugging Face's default 28 for Qwen) windowed.
    /// 8. `sliding_window` null or absent → every layer dense.
    /// 9. `sliding_window_pattern: N` (Gemma 3/4 default 6, Cohere2 default 4): layer `l`
    ///    windowed iff `(l + 1) % N != 0`.
    /// 10. `model_type` `gemma2` or `gpt_oss`: even layers windowed, odd layers dense.
    /// 11. otherwise (Mistral, Phi-3): every layer windowed.
    ///
    /// Per-layer settings: `query_pre_attn_scalar: Q` (Gemma 2/3) sets the scale `Q^-1/2`,
    /// Gemma 4 scores are unscaled (scale 1), MPT's `attn_config.softmax_scale` is the scale;
    /// `attn_logit_softcapping` (Gemma 2) the softcap; Gemma 4's `global_head_dim` and, with
    /// `attention_k_eq_v`, `num_global_key_value_heads` the head_dim and kv heads of the full
    /// layers; `model_type: gpt_oss` sets learnable sinks (the logits themselves are weights,
    /// given to the kernels as [`crate::AttnOptions::sink_logits`]), BLOOM and MPT's
    /// `attn_config.alibi` set ALiBi with the standard slopes
    /// ([`crate::shape::alibi_slopes`]). Fields the engine applies outside the attention
    /// kernel (RoPE and NoPE, QK norms, Llama 4's temperature tuning, output gates, shared K/V
    /// projections) are not read.
    ///
    /// Errors (`Error::Config` naming the field): a missing or zero `num_hidden_layers`
    /// (BLOOM `n_layer`, MPT `n_layers`), a list of the wrong length, an unknown layer type,
    /// a window or chunk size of 0, and fields this crate cannot honour:
    /// `use_bidirectional_attention`, `num_kv_shared_layers > 0`, a `sliding_window` on a
    /// hybrid whose rule does not place it, an `attention_chunk_size` with no rule placing it,
    /// Cohere2's `order_of_interleaved_layers` other than `local_attn_first`, MPT's
    /// `prefix_lm`, `sliding_window_size` or non-standard `alibi_bias_max`, and Falcon's
    /// `alibi` (its bias is scaled with the scores, so its slopes are not the standard ones).
    ///
    /// Multimodal configs that nest the language model under `text_config` (Gemma 3 4B and
    /// up, Gemma 4, Llama 4) are read from there.
    pub fn from_hf_config(config: &Value) -> Result<Self> {
        read_plan(&Cfg::new(config)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::Component;
    use serde_json::json;

    /// One letter per layer: `D` dense, `W` window, `C` chunked, `H` per-head, `-` not
    /// softmax attention.
    fn kinds(plan: &LayerPlan) -> String {
        plan.layers
            .iter()
            .map(|layer| match layer.patterns() {
                None => '-',
                Some(HeadPatterns::All(p)) if p.is_dense() => 'D',
                Some(HeadPatterns::All(p)) => match p.components.as_slice() {
                    [Component::Chunked(_)] => 'C',
                    _ => 'W',
                },
                Some(HeadPatterns::PerHead(_)) => 'H',
            })
            .collect()
    }

    fn window_of(plan: &LayerPlan, l: usize) -> (i64, i64) {
        match plan.layers[l].patterns() {
            Some(HeadPatterns::All(p)) => match &p.components[..] {
                [Component::SlidingWindow(w)] => (w.left(), w.right()),
                other => panic!("layer {l} is not a single window: {other:?}"),
            },
            other => panic!("layer {l}: {other:?}"),
        }
    }

    fn plan(cfg: &Value) -> LayerPlan {
        LayerPlan::from_hf_config(cfg).unwrap_or_else(|e| panic!("{cfg}: {e}"))
    }

    /// The config error's field, or a panic.
    fn bad_field(cfg: &Value) -> (String, String) {
        match LayerPlan::from_hf_config(cfg) {
            Err(Error::Config { field, message }) => (field, message),
            other => panic!("{cfg}: expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn mistral_every_layer_windowed() {
        let cfg = json!({"model_type": "mistral", "num_hidden_layers": 4, "sliding_window": 4096});
        let plan = plan(&cfg);
        assert_eq!(kinds(&plan), "WWWW");
        // HF windows are size windows: 4096 most recent tokens including itself.
        assert_eq!(window_of(&plan, 0), (4095, 0));
        assert!(plan
            .layers
            .iter()
            .all(|l| l.patterns().unwrap().causal() == Some(true)));
        // Mistral v0.2+ drops the window: dense everywhere.
        let cfg = json!({"model_type": "mistral", "num_hidden_layers": 3, "sliding_window": null});
        assert_eq!(kinds(&LayerPlan::from_hf_config(&cfg).unwrap()), "DDD");
    }

    #[test]
    fn gemma2_alternates_with_its_scale_and_softcap() {
        let old = json!({"model_type": "gemma2", "num_hidden_layers": 6, "sliding_window": 4096,
                         "query_pre_attn_scalar": 144, "attn_logit_softcapping": 50.0});
        let p = plan(&old);
        assert_eq!(kinds(&p), "WDWDWD");
        for (_, a) in p.attention_layers() {
            assert_eq!(a.scale, Some((1.0 / 12.0f64) as f32));
            assert_eq!(a.softcap, Some(50.0));
            assert_eq!(
                (a.head_dim, a.learnable_sinks, a.alibi),
                (None, false, false)
            );
        }
        let new = json!({
            "model_type": "gemma2", "num_hidden_layers": 4, "sliding_window": 4096,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
        });
        assert_eq!(
            LayerPlan::from_hf_config(&new).unwrap(),
            LayerPlan::interleaved(
                4,
                Pattern::causal_window(4096).unwrap(),
                Pattern::causal(),
                1
            )
            .unwrap()
        );
    }

    #[test]
    fn gemma3_five_locals_per_global_also_nested() {
        let cfg = json!({"model_type": "gemma3_text", "num_hidden_layers": 13,
                         "sliding_window": 1024, "sliding_window_pattern": 6});
        let p = plan(&cfg);
        assert_eq!(kinds(&p), "WWWWWDWWWWWDW");
        assert_eq!(window_of(&p, 0), (1023, 0));
        let nested = json!({"model_type": "gemma3", "text_config": cfg});
        assert_eq!(plan(&nested), p);
        // Gemma 3 configs may leave the pattern to Hugging Face's default, 6.
        let implicit = json!({"model_type": "gemma3_text", "num_hidden_layers": 13,
                              "sliding_window": 1024});
        assert_eq!(plan(&implicit), p);
    }

    #[test]
    fn gemma4_global_layers_have_their_own_head_dim_and_kv_heads() {
        let layer_types: Vec<&str> = (0..12)
            .map(|l| {
                if l % 6 == 5 {
                    "full_attention"
                } else {
                    "sliding_attention"
                }
            })
            .collect();
        let text = json!({"model_type": "gemma4_text", "num_hidden_layers": 12,
                          "sliding_window": 1024, "layer_types": layer_types,
                          "head_dim": 256, "global_head_dim": 512, "num_key_value_heads": 16,
                          "num_global_key_value_heads": 4, "attention_k_eq_v": true});
        let p = plan(&json!({"model_type": "gemma4", "text_config": text}));
        assert_eq!(kinds(&p), "WWWWWDWWWWWD");
        for (l, a) in p.attention_layers() {
            let global = l % 6 == 5;
            assert_eq!(a.head_dim, global.then_some(512), "layer {l}");
            assert_eq!(a.num_kv_heads, global.then_some(4), "layer {l}");
            assert_eq!(a.scale, Some(1.0), "Gemma 4 scores are unscaled");
        }
        // Without k = v the global layers keep the model's kv heads.
        let mut text2 = text.clone();
        text2["attention_k_eq_v"] = json!(false);
        let p2 = plan(&text2);
        assert!(p2.attention_layers().all(|(_, a)| a.num_kv_heads.is_none()));
        // Shared KV layers and bidirectional attention cannot be honoured.
        let mut shared = text.clone();
        shared["num_kv_shared_layers"] = json!(4);
        assert_eq!(bad_field(&shared).0, "num_kv_shared_layers");
        let mut bidi = text;
        bidi["use_bidirectional_attention"] = json!("vision");
        let (field, message) = bad_field(&bidi);
        assert_eq!(field, "use_bidirectional_attention");
        assert!(message.contains("\"vision\""), "{message}");
    }

    #[test]
    fn gpt_oss_alternates_and_records_sink_logits() {
        let types: Vec<&str> = (0..6)
            .map(|l| {
                if l % 2 == 0 {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        let cfg = json!({"model_type": "gpt_oss", "num_hidden_layers": 6, "sliding_window": 128,
                         "layer_types": types, "head_dim": 64});
        let p = plan(&cfg);
        assert_eq!(kinds(&p), "WDWDWD");
        assert_eq!(window_of(&p, 0), (127, 0));
        assert!(p.attention_layers().all(|(_, a)| a.learnable_sinks));
        // Without layer_types: Hugging Face's default, even layers windowed.
        let bare = json!({"model_type": "gpt_oss", "num_hidden_layers": 6, "sliding_window": 128});
        assert_eq!(plan(&bare), p);
        // The flag travels through the plan's JSON.
        let json = p.to_json();
        assert!(json.contains("\"learnable_sinks\":true"), "{json}");
        assert_eq!(LayerPlan::from_json(&json).unwrap(), p);
    }

    #[test]
    fn cohere2_three_locals_per_global() {
        let cfg = json!({"model_type": "cohere2", "num_hidden_layers": 8, "sliding_window": 4096,
                         "sliding_window_pattern": 4, "order_of_interleaved_layers": "local_attn_first"});
        assert_eq!(kinds(&plan(&cfg)), "WWWDWWWD");
        let implicit =
            json!({"model_type": "cohere2", "num_hidden_layers": 8, "sliding_window": 4096});
        assert_eq!(kinds(&plan(&implicit)), "WWWDWWWD");
        let mut other = cfg;
        other["order_of_interleaved_layers"] = json!("global_attn_first");
        assert_eq!(bad_field(&other).0, "order_of_interleaved_layers");
    }

    #[test]
    fn llama4_chunked_layers() {
        // No layer_types: a NoPE global layer every 4th layer, the others chunked.
        let text = json!({"model_type": "llama4_text", "num_hidden_layers": 8,
                          "attention_chunk_size": 8192, "no_rope_layers": []});
        let p = plan(&json!({"model_type": "llama4", "text_config": text}));
        assert_eq!(kinds(&p), "CCCDCCCD");
        let chunk = Pattern::causal_chunked(8192).unwrap();
        assert_eq!(
            p.layers[0].patterns(),
            Some(&HeadPatterns::All(chunk.clone()))
        );
        // layer_types, and an explicit no_rope_layers list, say the same.
        let types = json!({"model_type": "llama4_text", "num_hidden_layers": 4,
                           "attention_chunk_size": 8192,
                           "layer_types": ["chunked_attention", "chunked_attention", "full_attention", "chunked_attention"]});
        assert_eq!(kinds(&plan(&types)), "CCDC");
        let list = json!({"model_type": "llama4_text", "num_hidden_layers": 4,
                          "attention_chunk_size": 8192, "no_rope_layers": [1, 1, 0, 1]});
        assert_eq!(plan(&list), plan(&types));
        // Hugging Face's defaults: chunk 8192, interval 4; a null chunk size chunks nothing.
        let defaults = json!({"model_type": "llama4_text", "num_hidden_layers": 4});
        assert_eq!(
            plan(&defaults).layers[0].patterns(),
            Some(&HeadPatterns::All(chunk))
        );
        let none = json!({"model_type": "llama4_text", "num_hidden_layers": 4,
                          "attention_chunk_size": null});
        assert_eq!(kinds(&plan(&none)), "DDDD");
        let interval = json!({"model_type": "llama4_text", "num_hidden_layers": 4,
                              "no_rope_layer_interval": 2});
        assert_eq!(kinds(&plan(&interval)), "CDCD");
    }

    #[test]
    fn hybrids_mark_layers_that_are_not_attention() {
        let jamba = json!({"model_type": "jamba", "num_hidden_layers": 16,
                           "attn_layer_period": 8, "attn_layer_offset": 4, "sliding_window": null});
        let p = plan(&jamba);
        assert_eq!(kinds(&p), "----D-------D---");
        assert_eq!(
            p.layers[0],
            Layer::non_attention("mamba").unwrap(),
            "Jamba's other layers are Mamba"
        );
        let mut list = vec![0; 16];
        list[7] = 1;
        list[15] = 1;
        let minimax = json!({"model_type": "minimax_text_01", "num_hidden_layers": 16,
                             "attn_type_list": list});
        let p = plan(&minimax);
        assert_eq!(kinds(&p), "-------D-------D");
        assert_eq!(
            p.layers[0],
            Layer::non_attention("linear_attention").unwrap()
        );
        let qwen3_next = json!({"model_type": "qwen3_next", "num_hidden_layers": 8,
                                "full_attention_interval": 4});
        assert_eq!(kinds(&plan(&qwen3_next)), "---D---D");
        let types = json!({"model_type": "qwen3_next", "num_hidden_layers": 4,
                           "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"]});
        assert_eq!(kinds(&plan(&types)), "---D");
        let blocks =
            json!({"num_hidden_layers": 3, "layers_block_type": ["mamba", "attention", "mamba"]});
        assert_eq!(kinds(&plan(&blocks)), "-D-");
        // A hybrid plan compiles its attention layers only.
        let p = plan(&qwen3_next);
        let compiled = p
            .compile(crate::pattern::SparseShape {
                num_heads: 2,
                q_len: 100,
                kv_len: 100,
                block_m: 64,
                block_n: 64,
            })
            .unwrap();
        assert_eq!(compiled.metas.len(), 1);
        assert_eq!(compiled.layer_meta[0], None);
        assert!(compiled.layer(0).is_none() && compiled.layer(3).is_some());
    }

    #[test]
    fn older_models_with_alibi_and_other_field_names() {
        let bloom = json!({"model_type": "bloom", "n_layer": 3, "n_head": 16, "hidden_size": 1024});
        let c = HfAttentionConfig::from_json(&bloom).unwrap();
        assert_eq!(kinds(&c.plan), "DDD");
        assert!(c.plan.attention_layers().all(|(_, a)| a.alibi));
        assert_eq!(
            (c.num_attention_heads, c.head_dim_for(16)),
            (Some(16), Some(64))
        );
        let mpt = json!({"model_type": "mpt", "n_layers": 2, "n_heads": 32, "d_model": 4096,
                         "attn_config": {"alibi": true, "alibi_bias_max": 8, "prefix_lm": false,
                                         "attn_type": "multihead_attention", "softmax_scale": null}});
        let c = HfAttentionConfig::from_json(&mpt).unwrap();
        assert!(c
            .plan
            .attention_layers()
            .all(|(_, a)| a.alibi && a.scale.is_none()));
        assert_eq!(
            (c.num_key_value_heads, c.head_dim_for(32)),
            (None, Some(128))
        );
        let mut gqa = mpt.clone();
        gqa["attn_config"]["attn_type"] = json!("grouped_query_attention");
        gqa["attn_config"]["kv_n_heads"] = json!(8);
        gqa["attn_config"]["softmax_scale"] = json!(0.125);
        let c = HfAttentionConfig::from_json(&gqa).unwrap();
        assert_eq!(c.num_key_value_heads, Some(8));
        assert!(c
            .plan
            .attention_layers()
            .all(|(_, a)| a.scale == Some(0.125)));
        for (key, value, field) in [
            ("prefix_lm", json!(true), "attn_config.prefix_lm"),
            ("alibi_bias_max", json!(16), "attn_config.alibi_bias_max"),
            (
                "sliding_window_size",
                json!(512),
                "attn_config.sliding_window_size",
            ),
        ] {
            let mut bad = mpt.clone();
            bad["attn_config"][key] = value;
            assert_eq!(bad_field(&bad).0, field);
        }
        // Falcon: one kv head with multi_query (its default), num_kv_heads with the new
        // decoder architecture; ALiBi only when the config says so.
        let falcon7 = json!({"model_type": "falcon", "num_hidden_layers": 2,
                             "num_attention_heads": 71, "hidden_size": 4544, "alibi": false,
                             "multi_query": true, "new_decoder_architecture": false});
        let c = HfAttentionConfig::from_json(&falcon7).unwrap();
        assert_eq!(
            (c.num_key_value_heads, c.head_dim_for(71)),
            (Some(1), Some(64))
        );
        assert!(c.plan.attention_layers().all(|(_, a)| !a.alibi));
        let falcon40 = json!({"model_type": "falcon", "num_hidden_layers": 2,
                              "num_attention_heads": 128, "num_kv_heads": 8,
                              "new_decoder_architecture": true});
        assert_eq!(
            HfAttentionConfig::from_json(&falcon40)
                .unwrap()
                .num_key_value_heads,
            Some(8)
        );
        let rw = json!({"model_type": "falcon", "num_hidden_layers": 2, "alibi": false,
                        "multi_query": false, "num_attention_heads": 32});
        assert_eq!(
            HfAttentionConfig::from_json(&rw)
                .unwrap()
                .num_key_value_heads,
            None
        );
        // Falcon's ALiBi (Falcon-RW) scales the bias with the scores: not the standard slopes.
        let mut alibi = rw;
        alibi["alibi"] = json!(true);
        assert_eq!(bad_field(&alibi).0, "alibi");
    }

    #[test]
    fn attention_config_reads_shapes_from_the_language_model() {
        let text = json!({"model_type": "gemma3_text", "num_hidden_layers": 6,
                          "sliding_window": 1024, "sliding_window_pattern": 6,
                          "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                          "hidden_size": 2560, "torch_dtype": "bfloat16"});
        let nested = json!({"model_type": "gemma3", "text_config": text, "torch_dtype": "float16"});
        let c = HfAttentionConfig::from_json(&nested).unwrap();
        assert_eq!(c.model_type.as_deref(), Some("gemma3_text"));
        assert_eq!(c.plan, LayerPlan::from_hf_config(&nested).unwrap());
        assert_eq!(
            (c.num_attention_heads, c.num_key_value_heads),
            (Some(8), Some(4))
        );
        assert_eq!((c.head_dim_for(8), c.dtype), (Some(256), Some(DType::BF16)));

        // No head_dim: hidden_size / heads when it divides; the root's dtype as a fallback.
        let llama = json!({"num_hidden_layers": 2, "num_attention_heads": 32,
                           "hidden_size": 4096, "dtype": "float16"});
        let c = HfAttentionConfig::from_json(&llama).unwrap();
        assert_eq!((c.head_dim_for(32), c.head_dim_for(24)), (Some(128), None));
        assert_eq!((c.num_key_value_heads, c.dtype), (None, Some(DType::F16)));
        let f32_cfg = json!({"num_hidden_layers": 1, "torch_dtype": "float32"});
        let c = HfAttentionConfig::from_json(&f32_cfg).unwrap();
        assert_eq!((c.dtype, c.dtype_name.as_deref()), (None, Some("float32")));

        let bad = json!({"num_hidden_layers": 1, "num_attention_heads": "eight"});
        let e = HfAttentionConfig::from_json(&bad).unwrap_err().to_string();
        assert!(
            e.contains("\"num_attention_heads\" must be a non-negative integer"),
            "{e}"
        );
    }

    #[test]
    fn qwen2_max_window_layers() {
        let off = json!({"model_type": "qwen2", "num_hidden_layers": 4, "sliding_window": 32768,
                         "use_sliding_window": false, "max_window_layers": 2});
        assert_eq!(kinds(&LayerPlan::from_hf_config(&off).unwrap()), "DDDD");
        let on = json!({"model_type": "qwen2", "num_hidden_layers": 5, "sliding_window": 32768,
                        "use_sliding_window": true, "max_window_layers": 3});
        let p = plan(&on);
        assert_eq!(kinds(&p), "DDDWW");
        assert_eq!(window_of(&p, 4), (32767, 0));
        // Hugging Face's Qwen default is 28 windowless layers; other models must say.
        let default = json!({"model_type": "qwen2", "num_hidden_layers": 30, "sliding_window": 64,
                             "use_sliding_window": true});
        assert_eq!(kinds(&plan(&default)), format!("{}WW", "D".repeat(28)));
        let unknown =
            json!({"num_hidden_layers": 3, "sliding_window": 64, "use_sliding_window": true});
        assert_eq!(bad_field(&unknown).0, "max_window_layers");
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (cfg, field, needle) in [
            (json!([1, 2]), "", "not a JSON object"),
            (json!({"sliding_window": 4}), "num_hidden_layers", "missing"),
            (json!({"num_hidden_layers": 0}), "num_hidden_layers", "is 0"),
            (
                json!({"num_hidden_layers": 2, "sliding_window": 0}),
                "sliding_window",
                "must be at least 1",
            ),
            (
                json!({"num_hidden_layers": 2, "sliding_window": -3}),
                "sliding_window",
                "non-negative integer",
            ),
            (
                json!({"num_hidden_layers": 2, "layer_types": ["full_attention"]}),
                "layer_types",
                "has 1 entries",
            ),
            (
                json!({"num_hidden_layers": 1, "layer_types": ["sliding_attention"]}),
                "sliding_window",
                "sliding_attention layers need it",
            ),
            (
                json!({"num_hidden_layers": 2, "layer_types": ["full_attention", "hyena"]}),
                "layer_types[1]",
                "\"hyena\"",
            ),
            (
                json!({"num_hidden_layers": 1, "sliding_window": 8, "layer_types": ["chunked_attention"]}),
                "attention_chunk_size",
                "chunked_attention layers need it",
            ),
            (
                json!({"num_hidden_layers": 1, "attention_chunk_size": 0, "layer_types": ["chunked_attention"]}),
                "attention_chunk_size",
                "must be at least 1",
            ),
            (
                json!({"num_hidden_layers": 2, "attention_chunk_size": 64}),
                "attention_chunk_size",
                "no \"layer_types\"",
            ),
            (
                json!({"num_hidden_layers": 3, "attn_type_list": [1, 0]}),
                "attn_type_list",
                "has 2 entries but \"num_hidden_layers\" is 3",
            ),
            (
                json!({"num_hidden_layers": 2, "attn_type_list": [1, 2]}),
                "attn_type_list[1]",
                "is 2",
            ),
            (
                json!({"num_hidden_layers": 8, "attn_layer_period": 4, "attn_layer_offset": 4}),
                "attn_layer_offset",
                "less than",
            ),
            (
                json!({"num_hidden_layers": 8, "full_attention_interval": 0}),
                "full_attention_interval",
                "at least 1",
            ),
            (
                json!({"num_hidden_layers": 8, "full_attention_interval": 4, "sliding_window": 512}),
                "sliding_window",
                "full_attention_interval",
            ),
            (
                json!({"model_type": "llama4_text", "num_hidden_layers": 4, "no_rope_layers": [1, 0]}),
                "no_rope_layers",
                "has 2 entries",
            ),
            (
                json!({"num_hidden_layers": 2, "sliding_window": 8, "sliding_window_pattern": 0}),
                "sliding_window_pattern",
                "at least 1",
            ),
            (
                json!({"num_hidden_layers": 2, "query_pre_attn_scalar": 0}),
                "query_pre_attn_scalar",
                "positive number",
            ),
            (
                json!({"num_hidden_layers": 2, "attn_logit_softcapping": "high"}),
                "attn_logit_softcapping",
                "positive number",
            ),
        ] {
            let e = LayerPlan::from_hf_config(&cfg).unwrap_err();
            let text = e.to_string();
            match e {
                Error::Config { field: f, message } => {
                    assert_eq!(f, field, "{cfg}: {text}");
                    assert!(message.contains(needle), "{cfg}: {text}");
                }
                other => panic!("{cfg}: not a config error: {other}"),
            }
            assert!(text.starts_with("config.json: "), "{text}");
            assert!(
                field.is_empty() || text.contains(&format!("\"{field}\"")),
                "{text}"
            );
        }
    }

    #[test]
    fn builders() {
        let w = Pattern::causal_window(8).unwrap();
        assert_eq!(kinds(&LayerPlan::uniform(3, w.clone()).unwrap()), "WWW");
        assert_eq!(
            kinds(&LayerPlan::periodic(8, w.clone(), Pattern::causal(), 4, 3).unwrap()),
            "WWWDWWWD"
        );
        assert_eq!(
            kinds(&LayerPlan::interleaved(7, w.clone(), Pattern::causal(), 2).unwrap()),
            "WWDWWDW"
        );
        let mamba = Layer::non_attention("mamba").unwrap();
        assert_eq!(
            kinds(&LayerPlan::periodic(8, mamba, Pattern::causal(), 8, 4).unwrap()),
            "----D---"
        );
        assert!(LayerPlan::uniform(0, w.clone()).is_err());
        assert!(LayerPlan::periodic(4, w.clone(), Pattern::causal(), 0, 0).is_err());
        assert!(LayerPlan::periodic(4, w, Pattern::causal(), 2, 2).is_err());
        assert!(Layer::non_attention("").is_err());
    }
}
