//! A Hugging Face `config.json` as `plan` and `viz --model` need it: the layer plan
//! (`LayerPlan::from_hf_config`) and the attention shapes.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sparse_attn::pattern::LayerPlan;

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

/// A non-negative integer field; `None` when absent or null.
fn uint(cfg: &Map<String, Value>, key: &str, path: &Path) -> Result<Option<usize>, CliError> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| {
                input_err(
                    path,
                    format!("\"{key}\" must be a non-negative integer (got {v})"),
                )
            }),
    }
}

/// Reads `path`. Heads come from `num_attention_heads` (or `--num-heads`), kv heads from
/// `num_key_value_heads` (absent: as many as query heads, Hugging Face's default), head_dim from
/// `head_dim` or `hidden_size / num_attention_heads`, the dtype from `torch_dtype`/`dtype`
/// (f16 or bf16; anything else reads as bf16). A language model nested under `text_config` is
/// read from there, as `LayerPlan::from_hf_config` does. With `need_shapes` false, missing head
/// counts and head_dim default to 1 (pictures need only the layer plan).
pub fn load(path: &Path, o: &Overrides, need_shapes: bool) -> Result<Model, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| input_err(path, format!("cannot read ({e})")))?;
    let root: Value = serde_json::from_str(&text)
        .map_err(|e| input_err(path, format!("malformed JSON ({e})")))?;
    let plan = LayerPlan::from_hf_config(&root).map_err(|e| {
        let m = message(e);
        input_err(path, m.strip_prefix("config.json: ").unwrap_or(&m))
    })?;
    let obj = root
        .as_object()
        .ok_or_else(|| input_err(path, "not a JSON object"))?;
    let cfg = match obj.get("text_config") {
        Some(Value::Object(t)) if !obj.contains_key("num_hidden_layers") => t,
        _ => obj,
    };
    let missing =
        |what: &str, flag: &str| input_err(path, format!("has no \"{what}\"; pass {flag}"));
    let num_heads = match (o.num_heads, uint(cfg, "num_attention_heads", path)?) {
        (Some(h), _) | (None, Some(h)) => h,
        (None, None) if !need_shapes => 1,
        (None, None) => return Err(missing("num_attention_heads", "--num-heads")),
    };
    let num_kv_heads = match o.num_kv_heads {
        Some(h) => h,
        None => uint(cfg, "num_key_value_heads", path)?.unwrap_or(num_heads),
    };
    if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(input_err(
            path,
            format!(
                "num_heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})"
            ),
        ));
    }
    let head_dim = match (o.head_dim, uint(cfg, "head_dim", path)?) {
        (Some(d), _) | (None, Some(d)) => d,
        (None, None) => match uint(cfg, "hidden_size", path)? {
            Some(hidden) if hidden % num_heads == 0 && hidden > 0 => hidden / num_heads,
            Some(hidden) if need_shapes => {
                return Err(input_err(
                    path,
                    format!(
                        "hidden_size {hidden} is not a multiple of num_attention_heads \
                         {num_heads}; pass --head-dim"
                    ),
                ))
            }
            _ if need_shapes => return Err(missing("head_dim\" or \"hidden_size", "--head-dim")),
            _ => 1,
        },
    };
    if head_dim == 0 {
        return Err(input_err(path, "head_dim must be positive"));
    }
    let dtype = o.dtype.unwrap_or_else(|| {
        let named = cfg
            .get("torch_dtype")
            .or_else(|| cfg.get("dtype"))
            .or_else(|| obj.get("torch_dtype"))
            .and_then(Value::as_str);
        match named {
            Some("float16") => DTypeArg::F16,
            _ => DTypeArg::Bf16,
        }
    });
    let model_type = cfg
        .get("model_type")
        .or_else(|| obj.get("model_type"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Model {
        path: path.to_path_buf(),
        model_type,
        plan,
        num_heads,
        num_kv_heads,
        head_dim,
        dtype,
    })
}
