//! Builders for the layer plans real models use, and reading them from a Hugging Face
//! `config.json`.
//!
//! | model | plan |
//! |---|---|
//! | Mistral 7B v0.1 | [`LayerPlan::uniform`]: a causal 4096 window on every layer |
//! | Gemma 2 | [`LayerPlan::interleaved`] with 1 local per global: 4096 window, dense, 4096, ... |
//! | Gemma 3 | [`LayerPlan::interleaved`] with 5 locals per global: five 1024-window layers, then dense |
//! | Qwen2 (`use_sliding_window`) | dense below `max_window_layers`, windowed above |
//! | MiniMax-01, Jamba-style hybrids | [`LayerPlan::periodic`]: a dense layer every `period` layers |

use serde_json::{Map, Value};

use super::set::{HeadPatterns, LayerPlan, Pattern};
use crate::error::{Error, Result};
use crate::shape::DType;

/// A config error: `Error::Pattern("config.json: ...")`.
fn config_error(m: impl std::fmt::Display) -> Error {
    Error::Pattern(format!("config.json: {m}"))
}

/// The object holding a config's language-model fields: the root, or a nested `text_config`
/// when the root has no `num_hidden_layers` (multimodal configs such as Gemma 3 4B and up).
fn text_config(root: &Map<String, Value>) -> &Map<String, Value> {
    match root.get("text_config") {
        Some(Value::Object(t)) if !root.contains_key("num_hidden_layers") => t,
        _ => root,
    }
}

/// A non-negative integer field of `cfg`; `None` when absent or null.
fn uint_field(cfg: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            config_error(format!(
                "\"{key}\" must be a non-negative integer (got {v})"
            ))
        }),
    }
}

fn usize_field(cfg: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    uint_field(cfg, key)?
        .map(|v| usize::try_from(v).map_err(|_| config_error(format!("\"{key}\" is too large"))))
        .transpose()
}

/// What a Hugging Face `config.json` says about attention: the layer plan and the attention
/// shapes, as an engine (or the CLI's `plan` and `viz`) needs them. Fields are read from the
/// language model's object (the root, or `text_config`, see [`LayerPlan::from_hf_config`]);
/// absent fields are `None` so the caller decides the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct HfAttentionConfig {
    /// `model_type` (of the language model, else of the root).
    pub model_type: Option<String>,
    /// The plan [`LayerPlan::from_hf_config`] reads.
    pub plan: LayerPlan,
    /// `num_attention_heads`.
    pub num_attention_heads: Option<usize>,
    /// `num_key_value_heads` (Hugging Face's default when absent: as many as query heads).
    pub num_key_value_heads: Option<usize>,
    /// `head_dim`.
    pub head_dim: Option<usize>,
    /// `hidden_size`.
    pub hidden_size: Option<usize>,
    /// `torch_dtype` (or `dtype`; of the language model, else of the root): `float16` and
    /// `bfloat16` are the element types the kernels run; any other value is `None`.
    pub dtype: Option<DType>,
}

impl HfAttentionConfig {
    /// Reads a parsed `config.json`. Errors (`Error::Pattern`, prefixed `config.json:`): those
    /// of [`LayerPlan::from_hf_config`], and a shape field that is not a non-negative integer.
    pub fn from_json(config: &Value) -> Result<Self> {
        let plan = LayerPlan::from_hf_config(config)?;
        let root = config
            .as_object()
            .ok_or_else(|| config_error("not a JSON object"))?;
        let cfg = text_config(root);
        let text = |key: &str| {
            cfg.get(key)
                .or_else(|| root.get(key))
                .and_then(Value::as_str)
        };
        let dtype = match cfg
            .get("torch_dtype")
            .or_else(|| cfg.get("dtype"))
            .or_else(|| root.get("torch_dtype"))
            .and_then(Value::as_str)
        {
            Some("float16") => Some(DType::F16),
            Some("bfloat16") => Some(DType::BF16),
            _ => None,
        };
        Ok(HfAttentionConfig {
            model_type: text("model_type").map(str::to_string),
            plan,
            num_attention_heads: usize_field(cfg, "num_attention_heads")?,
            num_key_value_heads: usize_field(cfg, "num_key_value_heads")?,
            head_dim: usize_field(cfg, "head_dim")?,
            hidden_size: usize_field(cfg, "hidden_size")?,
            dtype,
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

fn need_layers(num_layers: usize) -> Result<()> {
    if num_layers == 0 {
        return Err(Error::Pattern(
            "a layer plan needs at least one layer".into(),
        ));
    }
    Ok(())
}

impl LayerPlan {
    /// The same head pattern set on every one of `num_layers` layers.
    pub fn uniform(num_layers: usize, set: impl Into<HeadPatterns>) -> Result<Self> {
        need_layers(num_layers)?;
        Ok(LayerPlan {
            layers: vec![set.into(); num_layers],
        })
    }

    /// Local:global interleave: `locals_per_global` layers of `local`, then one of `global`,
    /// repeating; layer `l` is global iff `(l + 1) % (locals_per_global + 1) == 0`.
    /// Gemma 2 is `locals_per_global = 1` (even layers local), Gemma 3 is 5.
    pub fn interleaved(
        num_layers: usize,
        local: impl Into<HeadPatterns>,
        global: impl Into<HeadPatterns>,
        locals_per_global: usize,
    ) -> Result<Self> {
        let period = locals_per_global + 1;
        LayerPlan::periodic(num_layers, local, global, period, period - 1)
    }

    /// `dense` on layers `l` with `l % period == offset`, `sparse` elsewhere (dense layers
    /// among sparse ones, as in MiniMax-01 or Jamba-style hybrids). `period >= 1`,
    /// `offset < period`.
    pub fn periodic(
        num_layers: usize,
        sparse: impl Into<HeadPatterns>,
        dense: impl Into<HeadPatterns>,
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

    /// The plan of a Hugging Face decoder from its `config.json` (parsed). All patterns are
    /// causal; Hugging Face's `sliding_window: W` is the `size` window (the W most recent
    /// tokens including the query's own, docs/patterns.md). Read, in order of precedence:
    ///
    /// 1. `layer_types`: `"sliding_attention"` (needs `sliding_window`) or `"full_attention"`
    ///    per layer; any other type is an error naming it.
    /// 2. `use_sliding_window` (Qwen2): `false` → every layer dense; `true` → layers
    ///    `l >= max_window_layers` windowed (default 0), the others dense.
    /// 3. `sliding_window` null or absent → every layer dense.
    /// 4. `sliding_window_pattern: N` (Gemma 3): layer `l` windowed iff `(l + 1) % N != 0`.
    /// 5. `model_type: "gemma2"`: even layers windowed, odd layers dense.
    /// 6. otherwise (Mistral): every layer windowed.
    ///
    /// `num_hidden_layers` is required. Multimodal configs that nest the language model under
    /// `text_config` (Gemma 3 4B and up) are read from there.
    pub fn from_hf_config(config: &Value) -> Result<Self> {
        let bad = |m: String| config_error(m);
        let root = config
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let cfg = text_config(root);
        let uint = |key: &str| uint_field(cfg, key);
        let num_layers = uint("num_hidden_layers")?
            .ok_or_else(|| bad("missing \"num_hidden_layers\"".into()))?
            as usize;
        need_layers(num_layers).map_err(|_| bad("\"num_hidden_layers\" is 0".into()))?;
        let window = uint("sliding_window")?;
        let dense = HeadPatterns::All(Pattern::causal());
        let local = || -> Result<HeadPatterns> {
            let w = window
                .ok_or_else(|| bad("sliding layers need a numeric \"sliding_window\"".into()))?;
            let w = i64::try_from(w).unwrap_or(i64::MAX);
            Pattern::causal_window(w)
                .map(HeadPatterns::All)
                .map_err(|e| bad(super::set::strip(e)))
        };

        if let Some(types) = cfg.get("layer_types") {
            let types = types
                .as_array()
                .ok_or_else(|| bad("\"layer_types\" must be a list".into()))?;
            if types.len() != num_layers {
                return Err(bad(format!(
                    "\"layer_types\" has {} entries but \"num_hidden_layers\" is {num_layers}",
                    types.len()
                )));
            }
            let local = if types.iter().any(|t| t == "sliding_attention") {
                Some(local()?)
            } else {
                None
            };
            let layers = types
                .iter()
                .enumerate()
                .map(|(l, t)| match (t.as_str(), &local) {
                    (Some("sliding_attention"), Some(local)) => Ok(local.clone()),
                    (Some("full_attention"), _) => Ok(dense.clone()),
                    _ => Err(bad(format!(
                        "layer {l} has unsupported layer type {t} (expected \"sliding_attention\" or \"full_attention\")"
                    ))),
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(LayerPlan { layers });
        }

        if let Some(use_sw) = cfg.get("use_sliding_window") {
            let use_sw = use_sw
                .as_bool()
                .ok_or_else(|| bad("\"use_sliding_window\" must be true or false".into()))?;
            if !use_sw || window.is_none() {
                return LayerPlan::uniform(num_layers, dense);
            }
            let first_windowed = uint("max_window_layers")?.unwrap_or(0) as usize;
            let local = local()?;
            return Ok(LayerPlan {
                layers: (0..num_layers)
                    .map(|l| {
                        if l >= first_windowed {
                            local.clone()
                        } else {
                            dense.clone()
                        }
                    })
                    .collect(),
            });
        }

        if window.is_none() {
            return LayerPlan::uniform(num_layers, dense);
        }
        if let Some(n) = uint("sliding_window_pattern")? {
            if n == 0 {
                return Err(bad("\"sliding_window_pattern\" must be at least 1".into()));
            }
            return LayerPlan::interleaved(num_layers, local()?, dense, n as usize - 1);
        }
        if cfg.get("model_type").and_then(Value::as_str) == Some("gemma2") {
            return LayerPlan::interleaved(num_layers, local()?, dense, 1);
        }
        LayerPlan::uniform(num_layers, local()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kinds(plan: &LayerPlan) -> String {
        plan.layers
            .iter()
            .map(|s| match s {
                HeadPatterns::All(p) if p.is_dense() => 'D',
                HeadPatterns::All(_) => 'W',
                HeadPatterns::PerHead(_) => 'H',
            })
            .collect()
    }

    fn window_of(plan: &LayerPlan, l: usize) -> (i64, i64) {
        match &plan.layers[l] {
            HeadPatterns::All(p) => match &p.components[..] {
                [super::super::Component::SlidingWindow(w)] => (w.left(), w.right()),
                other => panic!("layer {l} is not a single window: {other:?}"),
            },
            other => panic!("layer {l}: {other:?}"),
        }
    }

    #[test]
    fn mistral_every_layer_windowed() {
        let cfg = json!({"model_type": "mistral", "num_hidden_layers": 4, "sliding_window": 4096});
        let plan = LayerPlan::from_hf_config(&cfg).unwrap();
        assert_eq!(kinds(&plan), "WWWW");
        // HF windows are size windows: 4096 most recent tokens including itself.
        assert_eq!(window_of(&plan, 0), (4095, 0));
        assert!(plan.layers.iter().all(|s| s.causal() == Some(true)));
        // Mistral v0.2+ drops the window: dense everywhere.
        let cfg = json!({"model_type": "mistral", "num_hidden_layers": 3, "sliding_window": null});
        assert_eq!(kinds(&LayerPlan::from_hf_config(&cfg).unwrap()), "DDD");
    }

    #[test]
    fn gemma2_alternates_from_model_type_or_layer_types() {
        let old = json!({"model_type": "gemma2", "num_hidden_layers": 6, "sliding_window": 4096});
        let plan = LayerPlan::from_hf_config(&old).unwrap();
        assert_eq!(kinds(&plan), "WDWDWD");
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
        let plan = LayerPlan::from_hf_config(&cfg).unwrap();
        assert_eq!(kinds(&plan), "WWWWWDWWWWWDW");
        assert_eq!(window_of(&plan, 0), (1023, 0));
        let nested = json!({"model_type": "gemma3", "text_config": cfg});
        assert_eq!(LayerPlan::from_hf_config(&nested).unwrap(), plan);
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
        assert_eq!(HfAttentionConfig::from_json(&f32_cfg).unwrap().dtype, None);

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
        let plan = LayerPlan::from_hf_config(&on).unwrap();
        assert_eq!(kinds(&plan), "DDDWW");
        assert_eq!(window_of(&plan, 4), (32767, 0));
    }

    #[test]
    fn bad_configs_are_pattern_errors() {
        for (cfg, needle) in [
            (json!([1, 2]), "not a JSON object"),
            (json!({"sliding_window": 4}), "num_hidden_layers"),
            (json!({"num_hidden_layers": 0}), "is 0"),
            (
                json!({"num_hidden_layers": 2, "sliding_window": 0}),
                "size must be at least 1",
            ),
            (
                json!({"num_hidden_layers": 2, "sliding_window": -3}),
                "non-negative integer",
            ),
            (
                json!({"num_hidden_layers": 2, "layer_types": ["full_attention"]}),
                "has 1 entries",
            ),
            (
                json!({"num_hidden_layers": 1, "layer_types": ["sliding_attention"]}),
                "sliding_window",
            ),
            (
                json!({"num_hidden_layers": 1, "sliding_window": 8, "layer_types": ["chunked_attention"]}),
                "chunked_attention",
            ),
            (
                json!({"num_hidden_layers": 2, "sliding_window": 8, "sliding_window_pattern": 0}),
                "at least 1",
            ),
        ] {
            let e = LayerPlan::from_hf_config(&cfg).unwrap_err();
            assert!(matches!(e, Error::Pattern(_)), "{e}");
            assert!(e.to_string().contains(needle), "{cfg}: {e}");
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
        assert!(LayerPlan::uniform(0, w.clone()).is_err());
        assert!(LayerPlan::periodic(4, w.clone(), Pattern::causal(), 0, 0).is_err());
        assert!(LayerPlan::periodic(4, w, Pattern::causal(), 2, 2).is_err());
    }
}
