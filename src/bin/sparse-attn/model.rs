//! A Hugging Face `config.json` as `plan` and `viz --model` need it: the library's
//! `HfAttentionConfig` (layer plan and attention shapes) with the command-line overrides.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sparse_attn::pattern::plans::HfAttentionConfig;
use sparse_attn::pattern::{AttentionLayer, LayerPlan};
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
    /// The model's kv heads (a layer may have its own, [`Model::layer_kv_heads`]).
    pub num_kv_heads: usize,
    /// The model's head_dim (a layer may have its own, [`Model::layer_head_dim`]); `None` only
    /// when the config has none and the command does not need it (`viz`).
    pub head_dim: Option<usize>,
    pub dtype: DTypeArg,
    /// `--head-dim` and `--num-kv-heads`, which replace every layer's.
    head_dim_flag: Option<usize>,
    kv_heads_flag: Option<usize>,
}

impl Model {
    /// Layer `a`'s head_dim: `--head-dim`, else the layer's own, else the model's.
    pub fn layer_head_dim(&self, a: &AttentionLayer) -> Option<usize> {
        self.head_dim_flag.or(a.head_dim).or(self.head_dim)
    }

    /// Layer `a`'s kv heads: `--num-kv-heads`, else the layer's own, else the model's.
    pub fn layer_kv_heads(&self, a: &AttentionLayer) -> usize {
        self.kv_heads_flag
            .or(a.num_kv_heads)
            .unwrap_or(self.num_kv_heads)
    }
}

/// Reads `path` (`HfAttentionConfig::from_json`, which also resolves a nested `text_config`)
/// and applies the overrides. Heads come from `--num-heads` or `num_attention_heads`, kv heads
/// from `--num-kv-heads` or the config's (absent: as many as query heads, Hugging Face's
/// default), head_dim from `--head-dim`, `head_dim` or `hidden_size / heads` (a layer's own
/// head_dim and kv heads, Gemma 4's global layers, apply unless the flag is given), the dtype
/// from `--dtype` or `torch_dtype`/`dtype` (f16 or bf16; absent: bf16; any other value is an
/// error naming it unless `--dtype` is given, or unless `need_shapes` is false). With
/// `need_shapes` false, missing head counts
/// default to 1 and a missing head_dim stays unknown (pictures need only the layer plan).
pub fn load(path: &Path, o: &Overrides, need_shapes: bool) -> Result<Model, CliError> {
    let cfg = read_config(path)?;
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
    let check_heads = |hk: usize, what: String| {
        if num_heads == 0 || hk == 0 || num_heads % hk != 0 {
            Err(input_err(
                path,
                format!("num_heads ({num_heads}) must be a positive multiple of {what} ({hk})"),
            ))
        } else {
            Ok(())
        }
    };
    check_heads(num_kv_heads, "num_kv_heads".into())?;
    if o.num_kv_heads.is_none() {
        for (l, a) in cfg.plan.attention_layers() {
            if let Some(hk) = a.num_kv_heads {
                check_heads(hk, format!("the kv heads of layer {l}"))?;
            }
        }
    }
    let head_dim = match (o.head_dim, cfg.head_dim_for(num_heads)) {
        (Some(d), _) | (None, Some(d)) => Some(d),
        (None, None) if !need_shapes => None,
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
    if head_dim == Some(0) {
        return Err(input_err(path, "head_dim must be positive"));
    }
    let dtype = match (o.dtype, cfg.dtype, cfg.dtype_name.as_deref()) {
        (Some(d), _, _) => d,
        (None, Some(DType::F16), _) => DTypeArg::F16,
        (None, Some(DType::BF16), _) | (None, None, None) => DTypeArg::Bf16,
        // Pictures do not use the element type.
        (None, None, Some(_)) if !need_shapes => DTypeArg::Bf16,
        (None, None, Some(name)) => {
            return Err(input_err(
                path,
                format!(
                    "\"torch_dtype\" is \"{name}\", not an element type the kernels run (f16, \
                     bf16); pass --dtype"
                ),
            ))
        }
    };
    Ok(Model {
        path: path.to_path_buf(),
        model_type: cfg.model_type,
        plan: cfg.plan,
        num_heads,
        num_kv_heads,
        head_dim,
        dtype,
        head_dim_flag: o.head_dim,
        kv_heads_flag: o.num_kv_heads,
    })
}

/// Reads and parses `path` (`HfAttentionConfig::from_json`); every error names the file.
pub fn read_config(path: &Path) -> Result<HfAttentionConfig, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| input_err(path, format!("cannot read ({e})")))?;
    let root: Value = serde_json::from_str(&text)
        .map_err(|e| input_err(path, format!("malformed JSON ({e})")))?;
    HfAttentionConfig::from_json(&root).map_err(|e| {
        let m = message(e);
        input_err(path, m.strip_prefix("config.json: ").unwrap_or(&m))
    })
}
