//! A Hugging Face `config.json` as `plan` and `viz --model` need it: the library's
//! `HfAttentionConfig` (layer plan and attention shapes) with the command-line overrides.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sparse_attn::pattern::plans::HfAttentionConfig;
use sparse_attn::pattern::LayerPlan;
use sparse_attn::DType;

use crate::pattern::message;
use crate::{input_err, CliError, DTypeArg};

/// Command-line values that replace (or supply) the config's.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overrides {
    pub num_heads: Option<usize>,
    pub num_kv_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub dtype: Option<DTypeArg>,
}

/// What a config says about attention.
#[derive(Clone, Debug)]
pub struct Model {
    pub path: PathBuf,
    pub model_type: Option<String>,
    pub plan: LayerPlan,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: DTypeArg,
}

/// Reads `path` (`HfAttentionConfig::from_json`, which also resolves a nested `text_config`)
/// and applies the overrides. Heads come from `--num-heads` or `num_attention_heads`, kv heads
/// from `--num-kv-heads` or `num_key_value_heads` (absent: as many as query heads, Hugging
/// Face's default), head_dim from `--head-dim`, `head_dim` or `hidden_size / heads`, the dtype
/// from `--dtype` or `torch_dtype`/`dtype` (f16 or bf16; anything else reads as bf16). With
/// `need_shapes` false, missing head counts and head_dim default to 1 (pictures need only the
/// layer plan).
pub fn load(path: &Path, o: &Overrides, need_shapes: bool) -> Result<Model, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| input_err(path, format!("cannot read ({e})")))?;
    let root: Value = serde_json::from_str(&text)
        .map_err(|e| input_err(path, format!("malformed JSON ({e})")))?;
    let cfg = HfAttentionConfig::from_json(&root).map_err(|e| {
        let m = message(e);
        input_err(path, m.strip_prefix("config.json: ").unwrap_or(&m))
    })?;
    let missing =
        |what: &str, flag: &str| input_err(path, format!("has no \"{what}\"; pass {flag}"));
    let num_heads = match (o.num_heads, cfg.num_attention_heads) {
        (Some(h), _) | (None, Some(h)) => h,
        (None, None) if !need_shapes => 1,
        (None, None) => return Err(missing("num_attention_heads", "--num-heads")),
    };
    let num_kv_heads = o
        .num_kv_heads
        .or(cfg.num_key_value_heads)
        .unwrap_or(num_heads);
    if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(input_err(
            path,
            format!(
                "num_heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})"
            ),
        ));
    }
    let head_dim = match (o.head_dim, cfg.head_dim_for(num_heads)) {
        (Some(d), _) | (None, Some(d)) => d,
        (None, None) if !need_shapes => 1,
        (None, None) => match cfg.hidden_size {
            Some(hidden) => {
                return Err(input_err(
                    path,
                    format!(
                        "hidden_size {hidden} is not a multiple of num_attention_heads \
                         {num_heads}; pass --head-dim"
                    ),
                ))
            }
            None => return Err(missing("head_dim\" or \"hidden_size", "--head-dim")),
        },
    };
    if head_dim == 0 {
        return Err(input_err(path, "head_dim must be positive"));
    }
    let dtype = o.dtype.unwrap_or(match cfg.dtype {
        Some(DType::F16) => DTypeArg::F16,
        _ => DTypeArg::Bf16,
    });
    Ok(Model {
        path: path.to_path_buf(),
        model_type: cfg.model_type,
        plan: cfg.plan,
        num_heads,
        num_kv_heads,
        head_dim,
        dtype,
    })
}
