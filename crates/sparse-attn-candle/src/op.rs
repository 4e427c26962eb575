//! The attention op over candle tensors ([`SparseAttn`]) and the candle-flash-attn-shaped
//! functions on top of it.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, WithDType};

use super::{elem_dtype, to_candle};
use sparse_attn::attention::{AttnPlan, Element, EmuRun};
use sparse_attn::pattern::{
    AttentionLayer, Component, HeadPatterns, Pattern, SlidingWindow, MAX_PARAM,
};
use sparse_attn::shape::{alibi_slopes, AttnOptions, AttnProblem, SeqLens};
use sparse_attn::Error;

type CResult<T> = candle_core::Result<T>;

/// A varlen batch (FlashAttention's `cu_seqlens`): sequences of different lengths packed back
/// to back, q `[total_q, num_heads, head_dim]`, k and v `[total_k, num_kv_heads, head_dim]`.
///
/// `cu_seqlens_q` and `cu_seqlens_k` are rank-1 tensors of `batch + 1` prefix sums (u32 as
/// candle-flash-attn takes them, or i32 / i64) on any device; they are read to the host when
/// the op runs (the plan compiles each sequence's lengths). No sequence may be longer than
/// `max_seqlen_q` / `max_seqlen_k`.
#[derive(Clone, Debug)]
pub struct Varlen {
    /// `[batch + 1]` prefix sums of the query lengths.
    pub cu_seqlens_q: Tensor,
    /// `[batch + 1]` prefix sums of the key lengths.
    pub cu_seqlens_k: Tensor,
    /// The longest query sequence of the batch (an upper bound is fine).
    pub max_seqlen_q: usize,
    /// The longest key sequence of the batch (an upper bound is fine).
    pub max_seqlen_k: usize,
}

/// Sparse attention as a candle op: `softmax(mask(score_mods(scale * q kᵀ))) v` with the
/// mask of a head pattern set (docs/patterns.md), bottom-right aligned like FlashAttention
/// (query row `i` of a sequence with `q_len` queries and `kv_len` keys sits at position
/// `i + kv_len - q_len`).
///
/// q is `[batch, q_len, num_heads, head_dim]`, k and v `[batch, kv_len, num_kv_heads,
/// head_dim]` (candle's and candle-flash-attn's layout; GQA when `num_kv_heads` divides
/// `num_heads`), f16 or bf16, with any strides; with [`SparseAttn::varlen`] they are
/// `[total_tokens, heads, head_dim]`. The output has q's shape and dtype, contiguous.
///
/// ```
/// # fn main() -> candle_core::Result<()> {
/// use candle_core::{DType, Device, Tensor};
/// use sparse_attn_candle::SparseAttn;
/// use sparse_attn::pattern::Pattern;
///
/// let dev = Device::Cpu; // the emulator: exact and slow, for tests
/// let q = Tensor::randn(0f32, 1.0, (1, 16, 4, 64), &dev)?.to_dtype(DType::F16)?;
/// let kv = Tensor::randn(0f32, 1.0, (1, 16, 2, 64), &dev)?.to_dtype(DType::F16)?;
/// let window = Pattern::causal_window(8).map_err(candle_core::Error::wrap)?;
/// let out = SparseAttn::new(window).forward(&q, &kv, &kv)?;
/// assert_eq!(out.dims(), &[1, 16, 4, 64]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SparseAttn {
    /// The mask: one pattern for every head, or one per query head.
    pub patterns: HeadPatterns,
    /// Score scale (`None`: `1 / sqrt(head_dim)`).
    pub scale: Option<f32>,
    /// Tanh soft-capping of the scores (`None` or 0: off).
    pub softcap: Option<f32>,
    /// Learnable sink logits, one per query head (gpt-oss; [`AttnOptions::sink_logits`]).
    pub sink_logits: Option<Vec<f32>>,
    /// ALiBi slopes, one per query head ([`AttnOptions::alibi_slopes`]).
    pub alibi_slopes: Option<Vec<f32>>,
    /// Varlen batch layout (`None`: uniform `[batch, seq, heads, head_dim]`).
    pub varlen: Option<Varlen>,
}

impl SparseAttn {
    /// The op for `patterns` with the default scale and no score modifiers.
    pub fn new(patterns: impl Into<HeadPatterns>) -> Self {
        SparseAttn {
            patterns: patterns.into(),
            scale: None,
            softcap: None,
            sink_logits: None,
            alibi_slopes: None,
            varlen: None,
        }
    }

    /// The op of one layer of a [`sparse_attn::pattern::LayerPlan`] (for example from
    /// [`sparse_attn::pattern::LayerPlan::from_hf_config`]): its patterns, scale and softcap; the
    /// standard ALiBi slopes of `num_heads` heads when the layer declares ALiBi; `sink_logits`
    /// (the layer's weights) exactly when it declares learnable sinks. A layer's own head_dim
    /// or kv heads are checked against the tensors when the op runs.
    ///
    /// Errors (`Error::Shape`): sink logits missing for a layer with learnable sinks, or given
    /// for a layer without them.
    pub fn from_layer(
        layer: &AttentionLayer,
        num_heads: usize,
        sink_logits: Option<Vec<f32>>,
    ) -> sparse_attn::Result<Self> {
        match (layer.learnable_sinks, &sink_logits) {
            (true, None) => {
                return Err(Error::Shape(
                    "the layer declares learnable sinks: pass its sink logits (one per query \
                     head)"
                        .into(),
                ))
            }
            (false, Some(_)) => {
                return Err(Error::Shape(
                    "sink logits given for a layer that declares no learnable sinks".into(),
                ))
            }
            _ => {}
        }
        layer.check_settings()?;
        Ok(SparseAttn {
            patterns: layer.patterns.clone(),
            scale: layer.scale,
            softcap: layer.softcap,
            sink_logits,
            alibi_slopes: layer.alibi.then(|| alibi_slopes(num_heads)),
            varlen: None,
        })
    }

    /// With this score scale.
    pub fn with_scale(mut self, scale: f32) -> Self {
        self.scale = Some(scale);
        self
    }

    /// With tanh soft-capping at `softcap` (0: off).
    pub fn with_softcap(mut self, softcap: f32) -> Self {
        self.softcap = Some(softcap);
        self
    }

    /// With learnable sink logits, one per query head.
    pub fn with_sink_logits(mut self, sink_logits: Vec<f32>) -> Self {
        self.sink_logits = Some(sink_logits);
        self
    }

    /// With ALiBi slopes, one per query head ([`alibi_slopes`] gives the standard ones).
    pub fn with_alibi_slopes(mut self, slopes: Vec<f32>) -> Self {
        self.alibi_slopes = Some(slopes);
        self
    }

    /// With a varlen batch layout.
    pub fn with_varlen(mut self, varlen: Varlen) -> Self {
        self.varlen = Some(varlen);
        self
    }

    /// The score options of a plan.
    pub(crate) fn options(&self) -> AttnOptions {
        AttnOptions {
            causal: false,
            scale: self.scale,
            softcap: self.softcap,
            sink_logits: self.sink_logits.clone(),
            alibi_slopes: self.alibi_slopes.clone(),
        }
    }

    /// Runs the op: checks the tensors (element type, rank, device; see the module docs), then
    /// applies it as a [`CustomOp3`] (no backward pass).
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> CResult<Tensor> {
        check_devices(&[("q", q), ("k", k), ("v", v)])?;
        for (name, t) in [("q", q), ("k", k), ("v", v)] {
            elem_dtype(name, t.dtype()).map_err(to_candle)?;
        }
        q.apply_op3_no_bwd(k, v, self)
    }

    /// The validated problem of q, k and v with these dims (and the varlen lengths, read to
    /// the host), then the plan for it.
    pub(crate) fn plan(
        &self,
        dtype: candle_core::DType,
        q: &[usize],
        k: &[usize],
        v: &[usize],
    ) -> CResult<AttnPlan> {
        let dtype = elem_dtype("q", dtype).map_err(to_candle)?;
        let problem = self.problem(dtype, q, k, v)?;
        AttnPlan::with_patterns(&problem, &self.patterns, &self.options()).map_err(to_candle)
    }

    fn problem(
        &self,
        dtype: sparse_attn::DType,
        q: &[usize],
        k: &[usize],
        v: &[usize],
    ) -> CResult<AttnProblem> {
        let shape = |m: String| to_candle(Error::Shape(m));
        let rank = if self.varlen.is_some() { 3 } else { 4 };
        let layout = if rank == 3 {
            "[total_tokens, heads, head_dim] (varlen)"
        } else {
            "[batch, seq, heads, head_dim]"
        };
        for (name, dims) in [("q", q), ("k", k), ("v", v)] {
            if dims.len() != rank {
                return Err(shape(format!(
                    "{name} has rank {} (shape {dims:?}); sparse attention takes rank {rank}, \
                     {layout}",
                    dims.len()
                )));
            }
        }
        if k != v {
            return Err(shape(format!(
                "k has shape {k:?} but v {v:?}; they must be equal"
            )));
        }
        let (h, hk, d) = (q[rank - 2], k[rank - 2], q[rank - 1]);
        if k[rank - 1] != d {
            return Err(shape(format!(
                "q has head_dim {d}, k and v {}; they must be equal",
                k[rank - 1]
            )));
        }
        let seqs = match &self.varlen {
            None => {
                if q[0] != k[0] {
                    return Err(shape(format!(
                        "q has batch {}, k and v {}; they must be equal",
                        q[0], k[0]
                    )));
                }
                SeqLens::Uniform {
                    batch: q[0],
                    q_len: q[1],
                    kv_len: k[1],
                }
            }
            Some(var) => var.seqlens(q[0], k[0])?,
        };
        let head_dim = u32::try_from(d).map_err(|_| shape(format!("head_dim {d} too large")))?;
        AttnProblem::new(seqs, h, hk, head_dim, dtype).map_err(to_candle)
    }
}

impl Varlen {
    /// The sequence lengths of the batch, checked against the packed tensors' `total_q` and
    /// `total_k` rows and the maxima.
    fn seqlens(&self, total_q: usize, total_k: usize) -> CResult<SeqLens> {
        let shape = |m: String| to_candle(Error::Shape(m));
        let cu_q = read_cu("cu_seqlens_q", &self.cu_seqlens_q)?;
        let cu_k = read_cu("cu_seqlens_k", &self.cu_seqlens_k)?;
        if cu_q.len() != cu_k.len() {
            return Err(shape(format!(
                "cu_seqlens_q has {} entries, cu_seqlens_k {}; both must be batch + 1",
                cu_q.len(),
                cu_k.len()
            )));
        }
        for (name, cu, total, what) in [
            ("cu_seqlens_q", &cu_q, total_q, "q"),
            ("cu_seqlens_k", &cu_k, total_k, "k and v"),
        ] {
            if cu.first() != Some(&0) || cu.last().map(|&x| x as usize) != Some(total) {
                return Err(shape(format!(
                    "{name} must run from 0 to the {total} rows of {what} (got {:?} .. {:?})",
                    cu.first(),
                    cu.last()
                )));
            }
        }
        let seqs = SeqLens::Varlen { cu_q, cu_k };
        seqs.validate().map_err(to_candle)?;
        let (max_q, max_k) = seqs.max_lens();
        if max_q > self.max_seqlen_q || max_k > self.max_seqlen_k {
            return Err(shape(format!(
                "a sequence has {max_q} queries and {max_k} keys, above max_seqlen_q {} / \
                 max_seqlen_k {}",
                self.max_seqlen_q, self.max_seqlen_k
            )));
        }
        Ok(seqs)
    }
}

/// A rank-1 `cu_seqlens` tensor (u32, i32 or i64) as i32 prefix sums.
fn read_cu(name: &str, t: &Tensor) -> CResult<Vec<i32>> {
    use candle_core::DType as D;
    if t.rank() != 1 || !matches!(t.dtype(), D::U32 | D::I32 | D::I64) {
        return Err(to_candle(Error::Shape(format!(
            "{name} must be a rank-1 u32, i32 or i64 tensor (got {:?} of shape {:?})",
            t.dtype(),
            t.dims()
        ))));
    }
    t.to_dtype(D::I64)?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|x| {
            i32::try_from(x).map_err(|_| {
                to_candle(Error::Shape(format!(
                    "{name} entry {x} does not fit the kernels' i32"
                )))
            })
        })
        .collect()
}

/// A rank-1 f32 tensor of per-head values (sink logits, ALiBi slopes), read to the host.
fn read_head_vector(name: &str, t: &Tensor) -> CResult<Vec<f32>> {
    if t.rank() != 1 || t.dtype() != candle_core::DType::F32 {
        return Err(to_candle(Error::Shape(format!(
            "{name} must be a rank-1 f32 tensor, one value per query head (got {:?} of shape \
             {:?})",
            t.dtype(),
            t.dims()
        ))));
    }
    t.to_vec1::<f32>()
}

/// Every tensor on the first one's device, else an error naming both.
fn check_devices(ts: &[(&str, &Tensor)]) -> CResult<()> {
    let (first, t0) = ts[0];
    for &(name, t) in &ts[1..] {
        if !t.device().same_device(t0.device()) {
            return Err(to_candle(Error::WrongDevice(format!(
                "{first} is on {:?} but {name} on {:?}; q, k and v must share one device",
                t0.device().location(),
                t.device().location()
            ))));
        }
    }
    Ok(())
}

/// `data` (of a tensor with layout `l`) in row-major order: a copy of the range when the
/// layout is contiguous, else a strided gather.
pub(crate) fn gather<T: Copy>(data: &[T], l: &Layout) -> Vec<T> {
    if let Some((start, end)) = l.contiguous_offsets() {
        return data[start..end].to_vec();
    }
    let (dims, stride) = (l.dims(), l.stride());
    let n: usize = dims.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; dims.len()];
    for _ in 0..n {
        let off = l.start_offset() + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.push(data[off]);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

impl SparseAttn {
    fn cpu_run<T: Element + WithDType>(
        &self,
        (q, lq): (&[T], &Layout),
        (k, lk): (&[T], &Layout),
        (v, lv): (&[T], &Layout),
    ) -> CResult<(CpuStorage, Shape)> {
        let plan = self.plan(<T as WithDType>::DTYPE, lq.dims(), lk.dims(), lv.dims())?;
        let (q, k, v) = (gather(q, lq), gather(k, lk), gather(v, lv));
        let (out, _lse) = plan
            .run_emulated(&q, &k, &v, &EmuRun::default())
            .map_err(to_candle)?;
        Ok((T::to_cpu_storage_owned(out), lq.shape().clone()))
    }
}

impl CustomOp3 for SparseAttn {
    fn name(&self) -> &'static str {
        "sparse-attn"
    }

    /// The emulator: the CUDA kernels' own source run on the CPU (exact, slow; the testing
    /// path). Strided inputs are gathered into contiguous buffers first.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage as _;
        use CpuStorage as S;
        match (s1, s2, s3) {
            (S::F16(q), S::F16(k), S::F16(v)) => self.cpu_run((q, l1), (k, l2), (v, l3)),
            (S::BF16(q), S::BF16(k), S::BF16(v)) => self.cpu_run((q, l1), (k, l2), (v, l3)),
            _ => Err(dtype_error(s1.dtype(), s2.dtype(), s3.dtype())),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        super::cuda::forward(self, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// The error for q, k, v element types that are not one of f16 / bf16 for all three.
pub(crate) fn dtype_error(
    q: candle_core::DType,
    k: candle_core::DType,
    v: candle_core::DType,
) -> candle_core::Error {
    for (name, dt) in [("q", q), ("k", k), ("v", v)] {
        if let Err(e) = elem_dtype(name, dt) {
            return to_candle(e);
        }
    }
    to_candle(Error::Shape(format!(
        "q, k and v must share one element type (got {q:?}, {k:?}, {v:?})"
    )))
}

// ---- candle-flash-attn's functions ------------------------------------------------------------

/// The pattern of FlashAttention's `window_size_left` / `window_size_right` (`None`: no limit
/// on that side): keys `p - left ..= p + right`. `(None, Some(0))` is causal, `(None, None)`
/// dense, `(Some(l), Some(0))` the causal window of the `l + 1` most recent keys.
pub fn window_pattern(left: Option<usize>, right: Option<usize>) -> sparse_attn::Result<Pattern> {
    let bound = |x: usize| x.min(MAX_PARAM as usize) as i64;
    Ok(match (left, right) {
        (None, None) => Pattern::dense(),
        (None, Some(0)) => Pattern::causal(),
        (Some(l), Some(0)) => Pattern::new(
            true,
            vec![Component::SlidingWindow(SlidingWindow::new(bound(l), 0)?)],
        ),
        (l, r) => Pattern::new(
            false,
            vec![Component::SlidingWindow(SlidingWindow::new(
                bound(l.unwrap_or(usize::MAX)),
                bound(r.unwrap_or(usize::MAX)),
            )?)],
        ),
    })
}

fn windowed(left: Option<usize>, right: Option<usize>, scale: f32) -> CResult<SparseAttn> {
    Ok(SparseAttn::new(window_pattern(left, right).map_err(to_candle)?).with_scale(scale))
}

fn causal_left(causal: bool) -> (Option<usize>, Option<usize>) {
    (None, causal.then_some(0))
}

fn varlen(
    seqlens_q: &Tensor,
    seqlens_k: &Tensor,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
) -> Varlen {
    Varlen {
        cu_seqlens_q: seqlens_q.clone(),
        cu_seqlens_k: seqlens_k.clone(),
        max_seqlen_q,
        max_seqlen_k,
    }
}

/// candle-flash-attn's `flash_attn`: dense or (bottom-right) causal attention, q `[batch,
/// seq_q, heads, head_dim]`, k and v `[batch, seq_k, kv_heads, head_dim]`.
pub fn flash_attn(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    softmax_scale: f32,
    causal: bool,
) -> CResult<Tensor> {
    let (l, r) = causal_left(causal);
    windowed(l, r, softmax_scale)?.forward(q, k, v)
}

/// candle-flash-attn's `flash_attn_windowed`: keys `p - left ..= p + right` ([`window_pattern`]).
pub fn flash_attn_windowed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
) -> CResult<Tensor> {
    windowed(window_size_left, window_size_right, softmax_scale)?.forward(q, k, v)
}

/// candle-flash-attn's `flash_attn_alibi`: [`flash_attn`] with ALiBi slopes (rank-1 f32,
/// one per query head; read to the host).
pub fn flash_attn_alibi(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: &Tensor,
    softmax_scale: f32,
    causal: bool,
) -> CResult<Tensor> {
    let (l, r) = causal_left(causal);
    flash_attn_alibi_windowed(q, k, v, alibi_slopes, softmax_scale, l, r)
}

/// candle-flash-attn's `flash_attn_alibi_windowed`.
pub fn flash_attn_alibi_windowed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: &Tensor,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
) -> CResult<Tensor> {
    windowed(window_size_left, window_size_right, softmax_scale)?
        .with_alibi_slopes(read_head_vector("alibi_slopes", alibi_slopes)?)
        .forward(q, k, v)
}

/// candle-flash-attn's `flash_attn_alibi_windowed_softcap` (`softcap` 0: off).
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_alibi_windowed_softcap(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: Option<&Tensor>,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
    softcap: f32,
) -> CResult<Tensor> {
    let mut op =
        windowed(window_size_left, window_size_right, softmax_scale)?.with_softcap(softcap);
    if let Some(s) = alibi_slopes {
        op = op.with_alibi_slopes(read_head_vector("alibi_slopes", s)?);
    }
    op.forward(q, k, v)
}

/// candle-flash-attn's `flash_attn_varlen`: q `[total_q, heads, head_dim]`, k and v
/// `[total_k, kv_heads, head_dim]`, `seqlens_q` / `seqlens_k` the `batch + 1` prefix sums
/// ([`Varlen`]).
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_varlen(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seqlens_q: &Tensor,
    seqlens_k: &Tensor,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    softmax_scale: f32,
    causal: bool,
) -> CResult<Tensor> {
    let (l, r) = causal_left(causal);
    flash_attn_varlen_windowed(
        q,
        k,
        v,
        seqlens_q,
        seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        softmax_scale,
        l,
        r,
    )
}

/// candle-flash-attn's `flash_attn_varlen_windowed`.
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_varlen_windowed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seqlens_q: &Tensor,
    seqlens_k: &Tensor,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
) -> CResult<Tensor> {
    windowed(window_size_left, window_size_right, softmax_scale)?
        .with_varlen(varlen(seqlens_q, seqlens_k, max_seqlen_q, max_seqlen_k))
        .forward(q, k, v)
}

/// candle-flash-attn's `flash_attn_varlen_alibi`.
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_varlen_alibi(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: &Tensor,
    seqlens_q: &Tensor,
    seqlens_k: &Tensor,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    softmax_scale: f32,
    causal: bool,
) -> CResult<Tensor> {
    let (l, r) = causal_left(causal);
    flash_attn_varlen_alibi_windowed(
        q,
        k,
        v,
        alibi_slopes,
        seqlens_q,
        seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        softmax_scale,
        l,
        r,
    )
}

/// candle-flash-attn's `flash_attn_varlen_alibi_windowed`.
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_varlen_alibi_windowed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: &Tensor,
    seqlens_q: &Tensor,
    seqlens_k: &Tensor,
    max_seqlen_q: usize,
    max_seqlen_k: usize,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
) -> CResult<Tensor> {
    windowed(window_size_left, window_size_right, softmax_scale)?
        .with_alibi_slopes(read_head_vector("alibi_slopes", alibi_slopes)?)
        .with_varlen(varlen(seqlens_q, seqlens_k, max_seqlen_q, max_seqlen_k))
        .forward(q, k, v)
}
