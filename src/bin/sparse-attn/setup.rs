//! What `run` and `decode` attend with: the head patterns and the score settings (scale,
//! softcap, sink logits, ALiBi slopes), either from `--pattern` and the input file's optional
//! `sinks` / `alibi_slopes` tensors, or from one layer of a Hugging Face config (`--model`,
//! `--layer`), checked against the input.

use std::path::{Path, PathBuf};

use clap::Args;
use sparse_attn::pattern::plans::HfAttentionConfig;
use sparse_attn::pattern::{AttentionLayer, HeadPatterns, Layer};
use sparse_attn::shape::alibi_slopes;
use sparse_attn::AttnOptions;

use crate::io::Inputs;
use crate::{input_err, model, pattern, CliError};

/// Where the pattern and the score settings come from (shared by `run` and `decode`).
#[derive(Args)]
pub struct SourceArgs {
    /// A pattern or head pattern set (JSON); or give --model.
    #[arg(
        long,
        value_name = "P.json",
        required_unless_present = "model",
        conflicts_with = "model"
    )]
    pub pattern: Option<PathBuf>,
    /// A Hugging Face config.json: attend as its layer --layer does (its window or other
    /// pattern, scale, softcap, learnable sink logits, ALiBi) instead of --pattern.
    #[arg(long, value_name = "config.json")]
    pub model: Option<PathBuf>,
    /// The layer of --model to run (default 0).
    #[arg(long, value_name = "L")]
    pub layer: Option<usize>,
}

/// A layer of a config, with the config it came from.
pub struct ModelLayer {
    layer: AttentionLayer,
    cfg: HfAttentionConfig,
}

/// The patterns and options a command runs, and the file they came from (for messages).
pub struct Setup {
    pub set: HeadPatterns,
    pub opts: AttnOptions,
    /// The pattern file or the config.
    pub source: PathBuf,
    /// `layer L of config.json: ` (empty with --pattern), to prefix the summary line.
    pub label: String,
}

impl SourceArgs {
    /// The source file (the pattern, else the config).
    pub fn path(&self) -> &Path {
        self.pattern
            .as_deref()
            .or(self.model.as_deref())
            .expect("clap requires --pattern or --model")
    }

    /// The head patterns, before the input is read (so a bad pattern file fails first):
    /// the pattern file's, or the model layer's.
    pub fn patterns(&self) -> Result<(HeadPatterns, Option<ModelLayer>), CliError> {
        if self.layer.is_some() && self.model.is_none() {
            return Err(CliError::Usage(
                "--layer picks a layer of --model; give --model config.json".into(),
            ));
        }
        match (&self.pattern, &self.model) {
            (Some(p), _) => Ok((pattern::read_head_patterns(p)?, None)),
            (None, Some(m)) => {
                let ml = model_layer(m, self.layer.unwrap_or(0))?;
                Ok((ml.layer.patterns.clone(), Some(ml)))
            }
            (None, None) => unreachable!("clap requires --pattern or --model"),
        }
    }

    /// The setup for `inputs` (read from `input`): with --pattern, the input's sinks and
    /// slopes as given; with --model, the layer's settings, the input's shapes checked
    /// against the config's, sink logits required exactly when the layer has them, slopes
    /// allowed only when it has ALiBi (the standard ones when the input has none).
    /// `scale` and `softcap` are `run`'s flags (they conflict with --model).
    pub fn setup(
        &self,
        patterns: (HeadPatterns, Option<ModelLayer>),
        scale: Option<f32>,
        softcap: Option<f32>,
        input: &Path,
        inputs: &Inputs,
    ) -> Result<Setup, CliError> {
        let (set, ml) = patterns;
        let Some(ModelLayer { layer, cfg }) = ml else {
            return Ok(Setup {
                set,
                opts: AttnOptions {
                    causal: false,
                    scale,
                    softcap,
                    sink_logits: inputs.sinks.clone(),
                    alibi_slopes: inputs.alibi_slopes.clone(),
                },
                source: self.path().to_path_buf(),
                label: String::new(),
            });
        };
        let model = self.model.as_deref().expect("a layer comes from --model");
        let l = self.layer.unwrap_or(0);
        check_shapes(model, &cfg, l, &layer, inputs)?;
        let at = format!("layer {l} of {}", model.display());
        let sink_logits = match (layer.learnable_sinks, &inputs.sinks) {
            (true, Some(s)) => Some(s.clone()),
            (true, None) => {
                return Err(input_err(
                    input,
                    format!(
                        "has no `sinks` tensor, but {at} has learnable sink logits (gpt-oss): \
                         give them as `sinks`, F32 [num_heads]"
                    ),
                ))
            }
            (false, Some(_)) => {
                return Err(input_err(
                    input,
                    format!("has a `sinks` tensor, but {at} has no learnable sink logits"),
                ))
            }
            (false, None) => None,
        };
        let slopes = match (layer.alibi, &inputs.alibi_slopes) {
            (true, Some(s)) => Some(s.clone()),
            (true, None) => Some(alibi_slopes(inputs.q_shape[2])),
            (false, Some(_)) => {
                return Err(input_err(
                    input,
                    format!("has an `alibi_slopes` tensor, but {at} declares no ALiBi"),
                ))
            }
            (false, None) => None,
        };
        Ok(Setup {
            set,
            opts: AttnOptions {
                causal: false,
                scale: layer.scale,
                softcap: layer.softcap,
                sink_logits,
                alibi_slopes: slopes,
            },
            source: model.to_path_buf(),
            label: format!("{at}: "),
        })
    }
}

impl Setup {
    /// The score settings beyond the pattern, for the summary line (empty when none).
    pub fn notes(&self) -> String {
        let o = &self.opts;
        let mut v = Vec::new();
        if let Some(s) = o.scale {
            v.push(format!("scale {s}"));
        }
        if let Some(c) = o.softcap.filter(|&c| c > 0.0) {
            v.push(format!("softcap {c}"));
        }
        if o.sink_logits.is_some() {
            v.push("sink logits".to_string());
        }
        if o.alibi_slopes.is_some() {
            v.push("ALiBi".to_string());
        }
        if v.is_empty() {
            String::new()
        } else {
            format!(" ({})", v.join(", "))
        }
    }
}

/// Layer `l` of the config at `path`, which must be softmax attention.
fn model_layer(path: &Path, l: usize) -> Result<ModelLayer, CliError> {
    let cfg = model::read_config(path)?;
    let n = cfg.plan.layers.len();
    let layer = match cfg.plan.layers.get(l) {
        None => Err(input_err(
            path,
            format!("has {n} layers; --layer {l} does not exist"),
        )),
        Some(Layer::NonAttention(k)) => Err(input_err(
            path,
            format!(
                "layer {l} is not softmax attention ({}); it runs no attention kernel",
                k.kind
            ),
        )),
        Some(Layer::Attention(a)) => Ok(a.clone()),
    }?;
    Ok(ModelLayer { layer, cfg })
}

/// The input's head counts and head_dim against those the config gives layer `l`: the
/// patterns, the default scale and the standard ALiBi slopes depend on them.
fn check_shapes(
    path: &Path,
    cfg: &HfAttentionConfig,
    l: usize,
    layer: &AttentionLayer,
    inputs: &Inputs,
) -> Result<(), CliError> {
    let [_, _, heads, head_dim] = inputs.q_shape;
    let kv_heads = inputs.kv_shape[2];
    let mismatch = |what: &str, want: usize, got: usize| {
        input_err(
            path,
            format!("layer {l} has {what} {want}, but the input has {got}"),
        )
    };
    if let Some(h) = cfg.num_attention_heads.filter(|&h| h != heads) {
        return Err(mismatch("num_attention_heads", h, heads));
    }
    let cfg_heads = cfg.num_attention_heads.unwrap_or(heads);
    let want_kv = layer
        .num_kv_heads
        .or(cfg.num_key_value_heads)
        .unwrap_or(cfg_heads);
    if want_kv != kv_heads {
        return Err(mismatch("num_key_value_heads", want_kv, kv_heads));
    }
    if let Some(d) = layer
        .head_dim
        .or_else(|| cfg.head_dim_for(cfg_heads))
        .filter(|&d| d != head_dim)
    {
        return Err(mismatch("head_dim", d, head_dim));
    }
    Ok(())
}
