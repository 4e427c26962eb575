//! Layer plans (docs/patterns.md, "Layer plan"): one entry per layer of a model, either softmax
//! attention with its head patterns and the per-layer settings real models use (head_dim, kv
//! heads, scale, softcap, learnable sinks, ALiBi), or a layer that is not softmax attention
//! (Mamba, linear attention), which this crate neither runs nor caches.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::set::{strip, HeadPatterns, Pattern};
use crate::error::{Error, Result};

/// A layer of softmax attention: its head pattern set and what a model sets per layer. `None`
/// and `false` mean "as the model's other layers" (the model's head_dim and kv heads, the
/// default scale `1 / sqrt(head_dim)`, no softcap, no sink logits, no position bias).
///
/// JSON: the head pattern set itself when every setting is the default, else
/// `{"attention": {"patterns": set, "head_dim": D, "num_kv_heads": HK, "scale": S,
/// "softcap": C, "learnable_sinks": true, "alibi": true}}` with any subset of the settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionLayer {
    /// The layer's head pattern set.
    pub patterns: HeadPatterns,
    /// Head dimension of this layer when it differs from the model's (Gemma 4's global
    /// layers: `global_head_dim`, 512). A plan may record any positive value; running a
    /// kernel with a head_dim the kernels lack is `Error::Unsupported` there.
    pub head_dim: Option<usize>,
    /// Key/value heads of this layer when they differ from the model's (Gemma 4's global
    /// layers: `num_global_key_value_heads`).
    pub num_kv_heads: Option<usize>,
    /// Score scale (`None`: `1 / sqrt(head_dim)`): Gemma 2/3's `query_pre_attn_scalar^-1/2`,
    /// Gemma 4's 1, MPT's `softmax_scale`.
    pub scale: Option<f32>,
    /// Tanh soft-capping of the scores, `c > 0` (Gemma 2's `attn_logit_softcapping`).
    pub softcap: Option<f32>,
    /// The layer has learnable per-head sink logits (gpt-oss): a row's softmax denominator
    /// gains `exp(sink_h)`. The logits are model weights: the engine passes them as
    /// [`crate::AttnOptions::sink_logits`].
    pub learnable_sinks: bool,
    /// The layer adds the ALiBi position bias with the standard slopes of its head count
    /// (BLOOM, MPT), added to the scaled scores: [`crate::AttnOptions::alibi_slopes`] with
    /// [`crate::shape::alibi_slopes`] of the layer's head count.
    pub alibi: bool,
}

/// A layer that is not softmax attention: no kernel, no KV pages (its own state, a Mamba or
/// linear-attention recurrence, is not this crate's). JSON: `{"non_attention": {"kind": K}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonAttentionLayer {
    /// What the layer is, as the model's config calls it: `mamba` (Jamba),
    /// `linear_attention` (MiniMax-01's lightning attention, Qwen3-Next's Gated DeltaNet).
    pub kind: String,
}

/// One layer of a [`LayerPlan`].
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// Softmax attention, run by this crate's kernels.
    Attention(AttentionLayer),
    /// Not softmax attention: no kernel, no KV cache.
    NonAttention(NonAttentionLayer),
}

impl AttentionLayer {
    /// A layer with `patterns` and every other setting the model's default.
    pub fn new(patterns: impl Into<HeadPatterns>) -> Self {
        AttentionLayer {
            patterns: patterns.into(),
            head_dim: None,
            num_kv_heads: None,
            scale: None,
            softcap: None,
            learnable_sinks: false,
            alibi: false,
        }
    }

    /// Whether every setting besides the patterns is the default (the layer's JSON is then
    /// the bare head pattern set).
    pub fn is_plain(&self) -> bool {
        *self == AttentionLayer::new(self.patterns.clone())
    }

    /// Checks the settings (the patterns are checked against a problem by
    /// [`LayerPlan::validate`]): head_dim and kv heads positive, a finite scale, a finite
    /// positive softcap. `Error::Pattern` naming the setting.
    pub fn check_settings(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Pattern(m));
        if self.head_dim == Some(0) {
            return bad("layer head_dim must be at least 1".into());
        }
        if self.num_kv_heads == Some(0) {
            return bad("layer num_kv_heads must be at least 1".into());
        }
        if let Some(s) = self.scale.filter(|s| !s.is_finite()) {
            return bad(format!("layer scale must be finite (got {s})"));
        }
        if let Some(c) = self.softcap.filter(|c| !c.is_finite() || *c <= 0.0) {
            return bad(format!(
                "layer softcap must be finite and positive (got {c})"
            ));
        }
        Ok(())
    }
}

impl Layer {
    /// A layer that is not softmax attention, of the named kind (non-empty).
    pub fn non_attention(kind: impl Into<String>) -> Result<Self> {
        let kind = kind.into();
        if kind.is_empty() {
            return Err(Error::Pattern("non_attention kind is empty".into()));
        }
        Ok(Layer::NonAttention(NonAttentionLayer { kind }))
    }

    /// The attention settings, `None` for a layer that is not softmax attention.
    pub fn attention(&self) -> Option<&AttentionLayer> {
        match self {
            Layer::Attention(a) => Some(a),
            Layer::NonAttention(_) => None,
        }
    }

    /// The head pattern set, `None` for a layer that is not softmax attention.
    pub fn patterns(&self) -> Option<&HeadPatterns> {
        self.attention().map(|a| &a.patterns)
    }

    /// Whether the layer is softmax attention.
    pub fn is_attention(&self) -> bool {
        matches!(self, Layer::Attention(_))
    }
}

impl From<AttentionLayer> for Layer {
    fn from(a: AttentionLayer) -> Self {
        Layer::Attention(a)
    }
}

impl From<HeadPatterns> for Layer {
    fn from(set: HeadPatterns) -> Self {
        Layer::Attention(AttentionLayer::new(set))
    }
}

impl From<Pattern> for Layer {
    fn from(p: Pattern) -> Self {
        Layer::Attention(AttentionLayer::new(p))
    }
}

// ---- JSON ------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttention {
    patterns: HeadPatterns,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    head_dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    num_kv_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    softcap: Option<f32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    learnable_sinks: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    alibi: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum RawLayerRef<'a> {
    Attention(RawAttention),
    NonAttention(&'a NonAttentionLayer),
}

impl Serialize for Layer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Layer::Attention(a) if a.is_plain() => a.patterns.serialize(s),
            Layer::Attention(a) => RawLayerRef::Attention(RawAttention {
                patterns: a.patterns.clone(),
                head_dim: a.head_dim,
                num_kv_heads: a.num_kv_heads,
                scale: a.scale,
                softcap: a.softcap,
                learnable_sinks: a.learnable_sinks,
                alibi: a.alibi,
            })
            .serialize(s),
            Layer::NonAttention(n) => RawLayerRef::NonAttention(n).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Layer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = Value::deserialize(d)?;
        let custom = |e: serde_json::Error| D::Error::custom(e.to_string());
        let keyed = |key: &str| {
            value
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.get(key))
                .cloned()
        };
        if let Some(inner) = keyed("non_attention") {
            let n: NonAttentionLayer = serde_json::from_value(inner).map_err(custom)?;
            return Layer::non_attention(n.kind).map_err(|e| D::Error::custom(strip(e)));
        }
        if let Some(inner) = keyed("attention") {
            let r: RawAttention = serde_json::from_value(inner).map_err(custom)?;
            let a = AttentionLayer {
                patterns: r.patterns,
                head_dim: r.head_dim,
                num_kv_heads: r.num_kv_heads,
                scale: r.scale,
                softcap: r.softcap,
                learnable_sinks: r.learnable_sinks,
                alibi: r.alibi,
            };
            a.check_settings().map_err(|e| D::Error::custom(strip(e)))?;
            return Ok(Layer::Attention(a));
        }
        let set: HeadPatterns = serde_json::from_value(value).map_err(custom)?;
        Ok(Layer::from(set))
    }
}

// ---- the plan --------------------------------------------------------------------------------

/// `{"layers": [layer, ...]}`: one [`Layer`] per layer, each a head pattern set (softmax
/// attention with the model's settings), `{"attention": {...}}` (with per-layer settings) or
/// `{"non_attention": {"kind": K}}`. Builders for the plans of real models, and the reader of
/// a Hugging Face `config.json`, live in [`super::plans`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerPlan {
    /// Layer `l` is entry `l`.
    pub layers: Vec<Layer>,
}

impl LayerPlan {
    /// One attention layer per head pattern set, with the model's settings.
    pub fn from_sets<S: Into<HeadPatterns>>(sets: impl IntoIterator<Item = S>) -> Self {
        LayerPlan {
            layers: sets.into_iter().map(|s| Layer::from(s.into())).collect(),
        }
    }

    /// The attention settings of layer `layer`; `None` when it does not exist or is not
    /// softmax attention.
    pub fn attention(&self, layer: usize) -> Option<&AttentionLayer> {
        self.layers.get(layer).and_then(Layer::attention)
    }

    /// The softmax-attention layers, with their indices.
    pub fn attention_layers(&self) -> impl Iterator<Item = (usize, &AttentionLayer)> + '_ {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(l, layer)| layer.attention().map(|a| (l, a)))
    }

    /// Checks every attention layer against a problem with `num_heads` query heads and
    /// `kv_len` keys (see [`HeadPatterns::validate`] and [`AttentionLayer::check_settings`];
    /// a layer's own kv heads must divide `num_heads`). The plan must have at least one layer;
    /// it may have no attention layer at all.
    pub fn validate(&self, num_heads: usize, kv_len: usize) -> Result<()> {
        if self.layers.is_empty() {
            return Err(Error::Pattern("layer plan has no layers".into()));
        }
        self.attention_layers().try_for_each(|(l, a)| {
            let at = |e: Error| Error::Pattern(format!("layer {l}: {}", strip(e)));
            a.check_settings().map_err(at)?;
            if let Some(hk) = a.num_kv_heads.filter(|&hk| num_heads % hk != 0) {
                return Err(Error::Pattern(format!(
                    "layer {l}: {hk} kv heads do not divide {num_heads} query heads"
                )));
            }
            a.patterns.validate(num_heads, kv_len).map_err(at)
        })
    }

    /// Parses a layer plan from JSON.
    pub fn from_json(s: &str) -> Result<Self> {
        let plan: LayerPlan = serde_json::from_str(s).map_err(|e| Error::Pattern(e.to_string()))?;
        if plan.layers.is_empty() {
            return Err(Error::Pattern("layer plan has no layers".into()));
        }
        Ok(plan)
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("patterns always serialize")
    }
}
