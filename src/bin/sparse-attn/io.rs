//! The CLI's safetensors files (docs/patterns.md, "CLI file formats"): reading q/k/v (and the
//! optional per-head `sinks` and `alibi_slopes`) with every check a user needs a clear
//! message for, and writing outputs atomically.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sparse_attn::{DType, Element};

/// A 16-bit element stored little-endian in safetensors.
pub trait Storage:
    Element + sparse_attn::cudarc::driver::DeviceRepr + sparse_attn::cudarc::driver::ValidAsZeroBits
{
    const SAFETENSORS: Dtype;
    fn from_bits(b: u16) -> Self;
    fn to_bits(self) -> u16;
}

impl Storage for f16 {
    const SAFETENSORS: Dtype = Dtype::F16;
    fn from_bits(b: u16) -> Self {
        f16::from_bits(b)
    }
    fn to_bits(self) -> u16 {
        f16::to_bits(self)
    }
}

impl Storage for bf16 {
    const SAFETENSORS: Dtype = Dtype::BF16;
    fn from_bits(b: u16) -> Self {
        bf16::from_bits(b)
    }
    fn to_bits(self) -> u16 {
        bf16::to_bits(self)
    }
}

/// q, k, v as read from the input file, still as raw 16-bit words.
pub struct Inputs {
    pub dtype: DType,
    /// `[batch, q_len, num_heads, head_dim]`
    pub q_shape: [usize; 4],
    /// `[batch, kv_len, num_kv_heads, head_dim]`
    pub kv_shape: [usize; 4],
    pub q: Vec<u16>,
    pub k: Vec<u16>,
    pub v: Vec<u16>,
    /// `sinks`: learnable sink logits, F32 `[num_heads]`, finite (absent: none).
    pub sinks: Option<Vec<f32>>,
    /// `alibi_slopes`: ALiBi slopes, F32 `[num_heads]`, finite (absent: none).
    pub alibi_slopes: Option<Vec<f32>>,
    /// `scores`: caller block scores of an adaptive pattern with `score: given`, F32 of rank
    /// 4 `[batch, heads, groups, blocks]` (shape and values checked by the plan).
    pub scores: Option<BlockScores>,
}

/// A `scores` tensor: its shape and values.
pub type BlockScores = (Vec<usize>, Vec<f32>);

impl Inputs {
    pub fn typed<T: Storage>(words: &[u16]) -> Vec<T> {
        words.iter().map(|&w| T::from_bits(w)).collect()
    }
}

fn dtype_of(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Reads and checks `q`, `k`, `v`. Errors are one line, without the file name (the caller
/// adds it).
pub fn read_inputs(bytes: &[u8]) -> Result<Inputs, String> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors file ({e})"))?;
    let mut views = Vec::with_capacity(3);
    for name in ["q", "k", "v"] {
        let t = st.tensor(name).map_err(|_| {
            let mut have: Vec<&str> = st.names();
            have.sort_unstable();
            format!("missing tensor `{name}` (need q, k, v; the file has {have:?})")
        })?;
        if t.shape().len() != 4 {
            return Err(format!(
                "tensor `{name}` has rank {} (shape {:?}); expected [batch, seq_len, heads, head_dim]",
                t.shape().len(),
                t.shape()
            ));
        }
        if dtype_of(t.dtype()).is_none() {
            return Err(format!(
                "tensor `{name}` has dtype {:?}; expected F16 or BF16",
                t.dtype()
            ));
        }
        views.push((name, t));
    }
    let (q, k, v) = (&views[0].1, &views[1].1, &views[2].1);
    for (name, t) in [("k", k), ("v", v)] {
        if t.dtype() != q.dtype() {
            return Err(format!(
                "dtype mismatch: q is {:?} but {name} is {:?}",
                q.dtype(),
                t.dtype()
            ));
        }
    }
    if k.shape() != v.shape() {
        return Err(format!(
            "k has shape {:?} but v has {:?}; they must match",
            k.shape(),
            v.shape()
        ));
    }
    let qs: [usize; 4] = q.shape().try_into().expect("rank checked");
    let ks: [usize; 4] = k.shape().try_into().expect("rank checked");
    if qs[0] != ks[0] {
        return Err(format!(
            "batch mismatch: q has {} sequences, k and v have {}",
            qs[0], ks[0]
        ));
    }
    if qs[3] != ks[3] {
        return Err(format!(
            "head_dim mismatch: q has {}, k and v have {}",
            qs[3], ks[3]
        ));
    }
    let words = |t: &TensorView<'_>| -> Vec<u16> {
        t.data()
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    };
    let num_heads = qs[2];
    Ok(Inputs {
        dtype: dtype_of(q.dtype()).expect("checked"),
        q_shape: qs,
        kv_shape: ks,
        q: words(q),
        k: words(k),
        v: words(v),
        sinks: per_head(&st, "sinks", "sink logit", num_heads)?,
        alibi_slopes: per_head(&st, "alibi_slopes", "ALiBi slope", num_heads)?,
        scores: block_scores(&st)?,
    })
}

/// The optional `scores` tensor (F32, rank 4) of an adaptive pattern's `given` scores.
fn block_scores(st: &SafeTensors<'_>) -> Result<Option<BlockScores>, String> {
    let Ok(t) = st.tensor("scores") else {
        return Ok(None);
    };
    if t.dtype() != Dtype::F32 || t.shape().len() != 4 {
        return Err(format!(
            "tensor `scores` is {:?} of shape {:?}; expected F32 [batch, heads, groups, blocks]",
            t.dtype(),
            t.shape()
        ));
    }
    let values = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Some((t.shape().to_vec(), values)))
}

/// The optional per-head tensor `name` (F32, `[num_heads]`, finite values); `what` names one
/// value in messages.
fn per_head(
    st: &SafeTensors<'_>,
    name: &str,
    what: &str,
    num_heads: usize,
) -> Result<Option<Vec<f32>>, String> {
    let Ok(t) = st.tensor(name) else {
        return Ok(None);
    };
    if t.dtype() != Dtype::F32 {
        return Err(format!(
            "tensor `{name}` has dtype {:?}; expected F32",
            t.dtype()
        ));
    }
    if t.shape() != [num_heads] {
        return Err(format!(
            "tensor `{name}` has shape {:?}; expected [{num_heads}] (one {what} per query head)",
            t.shape()
        ));
    }
    let values: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some((h, x)) = values.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(format!(
            "tensor `{name}` holds {x} at [{h}]; every {what} must be finite"
        ));
    }
    Ok(Some(values))
}

/// One output tensor: raw little-endian bytes with its safetensors dtype and shape.
pub struct OutTensor {
    pub name: &'static str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl OutTensor {
    pub fn from_elems<T: Storage>(name: &'static str, shape: Vec<usize>, x: &[T]) -> Self {
        OutTensor {
            name,
            dtype: T::SAFETENSORS,
            shape,
            bytes: x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        }
    }
    pub fn from_f32(name: &'static str, shape: Vec<usize>, x: &[f32]) -> Self {
        OutTensor {
            name,
            dtype: Dtype::F32,
            shape,
            bytes: x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
    pub fn from_u8(name: &'static str, shape: Vec<usize>, x: Vec<u8>) -> Self {
        OutTensor {
            name,
            dtype: Dtype::U8,
            shape,
            bytes: x,
        }
    }
}

/// A file written next to its destination and renamed into place by [`Staged::commit`]; it
/// is removed if dropped uncommitted, so a failed run leaves the destination untouched.
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Staged {
    /// Serialises `tensors` as safetensors and stages them for `dest`.
    pub fn write(dest: &Path, tensors: &[OutTensor]) -> Result<Staged, String> {
        let views = tensors
            .iter()
            .map(|t| {
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                    .map(|v| (t.name, v))
                    .map_err(|e| format!("internal error building tensor `{}`: {e}", t.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = safetensors::tensor::serialize(views, None)
            .map_err(|e| format!("cannot serialise {}: {e}", dest.display()))?;
        Staged::write_bytes(dest, &bytes)
    }

    /// Stages `bytes` for `dest`: written to a hidden file next to it.
    pub fn write_bytes(dest: &Path, bytes: &[u8]) -> Result<Staged, String> {
        let file_name = dest
            .file_name()
            .ok_or_else(|| format!("{} is not a file path", dest.display()))?;
        let tmp = dest.with_file_name(format!(
            ".{}.tmp-{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let staged = Staged {
            tmp,
            dest: dest.to_path_buf(),
            committed: false,
        };
        std::fs::write(&staged.tmp, bytes)
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
        Ok(staged)
    }

    pub fn commit(mut self) -> Result<(), String> {
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| {
            format!(
                "cannot move output into place at {}: {e}",
                self.dest.display()
            )
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
