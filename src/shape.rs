//! Typed problem descriptions: element types, head dimensions, batch layouts. Everything a
//! launcher needs to know is validated here, once, before any memory is touched.

use crate::error::{Error, Result};

/// Element type of q, k, v and out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

/// A head dimension the kernels are instantiated for ([`HeadDim::SUPPORTED`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeadDim(u32);

impl HeadDim {
    /// Head dimensions with a compiled kernel.
    pub const SUPPORTED: [u32; 5] = [64, 96, 128, 256, 512];

    /// The head dimension `d`, or `Error::Unsupported`.
    pub fn new(d: u32) -> Result<Self> {
        if Self::SUPPORTED.contains(&d) {
            Ok(HeadDim(d))
        } else {
            Err(Error::Unsupported(format!(
                "head_dim {d} (supported: {:?})",
                Self::SUPPORTED
            )))
        }
    }

    /// The value.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Sequence lengths of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeqLens {
    /// Every sequence has the same lengths; tensors are `[batch, len, heads, head_dim]`.
    Uniform {
        /// Sequences.
        batch: usize,
        /// Query rows per sequence.
        q_len: usize,
        /// Keys per sequence.
        kv_len: usize,
    },
    /// Sequences of different lengths packed back to back (FlashAttention's `cu_seqlens`):
    /// q is `[total_q, heads, head_dim]`, sequence `b` owns rows `cu_q[b]..cu_q[b+1]`.
    Varlen {
        /// `[batch + 1]` prefix sums of the query lengths (`cu_seqlens_q`).
        cu_q: Vec<i32>,
        /// `[batch + 1]` prefix sums of the key lengths (`cu_seqlens_k`).
        cu_k: Vec<i32>,
    },
}

impl SeqLens {
    /// Varlen layout from per-sequence (q_len, kv_len) pairs.
    pub fn varlen_from_lens(lens: &[(usize, usize)]) -> Result<Self> {
        let mut cu_q = vec![0i32];
        let mut cu_k = vec![0i32];
        for &(q, k) in lens {
            let nq = *cu_q.last().unwrap() as i64 + q as i64;
            let nk = *cu_k.last().unwrap() as i64 + k as i64;
            if nq > i32::MAX as i64 || nk > i32::MAX as i64 {
                return Err(Error::Shape("total sequence length exceeds i32".into()));
            }
            cu_q.push(nq as i32);
            cu_k.push(nk as i32);
        }
        let s = SeqLens::Varlen { cu_q, cu_k };
        s.validate()?;
        Ok(s)
    }

    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        match self {
            SeqLens::Uniform { batch, .. } => *batch,
            SeqLens::Varlen { cu_q, .. } => cu_q.len().saturating_sub(1),
        }
    }

    /// (q_len, kv_len) of sequence `b`.
    pub fn lens(&self, b: usize) -> (usize, usize) {
        match self {
            SeqLens::Uniform { q_len, kv_len, .. } => (*q_len, *kv_len),
            SeqLens::Varlen { cu_q, cu_k } => (
                (cu_q[b + 1] - cu_q[b]) as usize,
                (cu_k[b + 1] - cu_k[b]) as usize,
            ),
        }
    }

    /// Row offset of sequence `b`'s first query / key in the packed (or padded) tensors.
    pub fn offsets(&self, b: usize) -> (usize, usize) {
        match self {
            SeqLens::Uniform { q_len, kv_len, .. } => (b * q_len, b * kv_len),
            SeqLens::Varlen { cu_q, cu_k } => (cu_q[b] as usize, cu_k[b] as usize),
        }
    }

    /// Total query rows and key rows over the batch.
    pub fn totals(&self) -> (usize, usize) {
        match self {
            SeqLens::Uniform {
                batch,
                q_len,
                kv_len,
            } => (batch * q_len, batch * kv_len),
            SeqLens::Varlen { cu_q, cu_k } => (
                *cu_q.last().unwrap_or(&0) as usize,
                *cu_k.last().unwrap_or(&0) as usize,
            ),
        }
    }

    /// The `cu_seqlens_q` and `cu_seqlens_k` prefix sums (`batch + 1` entries each) of these
    /// lengths, as a varlen launch reads them (lengths validated: they fit i32).
    pub fn cu_seqlens(&self) -> (Vec<i32>, Vec<i32>) {
        match self {
            SeqLens::Varlen { cu_q, cu_k } => (cu_q.clone(), cu_k.clone()),
            SeqLens::Uniform { .. } => (0..=self.batch())
                .map(|b| {
                    let (q, k) = self.offsets(b);
                    (q as i32, k as i32)
                })
                .unzip(),
        }
    }

    /// Longest (q_len, kv_len) over the batch.
    pub fn max_lens(&self) -> (usize, usize) {
        (0..self.batch()).fold((0, 0), |(mq, mk), b| {
            let (q, k) = self.lens(b);
            (mq.max(q), mk.max(k))
        })
    }

    /// Checks the lengths (non-empty batch, i32 ranges, monotone prefix sums).
    pub fn validate(&self) -> Result<()> {
        match self {
            SeqLens::Uniform {
                batch,
                q_len,
                kv_len,
            } => {
                if *batch == 0 {
                    return Err(Error::Shape("batch must be at least 1".into()));
                }
                let max = i32::MAX as usize;
                if *q_len > max || *kv_len > max || batch * q_len.max(kv_len) > max {
                    return Err(Error::Shape("sequence lengths exceed i32".into()));
                }
            }
            SeqLens::Varlen { cu_q, cu_k } => {
                if cu_q.len() < 2 || cu_q.len() != cu_k.len() {
                    return Err(Error::Shape(format!(
                        "cu_seqlens_q and cu_seqlens_k need batch + 1 >= 2 entries each (got {} and {})",
                        cu_q.len(),
                        cu_k.len()
                    )));
                }
                for (name, cu) in [("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)] {
                    if cu[0] != 0 {
                        return Err(Error::Shape(format!("{name}[0] must be 0")));
                    }
                    if let Some(i) = cu.windows(2).position(|w| w[1] < w[0]) {
                        return Err(Error::Shape(format!(
                            "{name} must be non-decreasing ({name}[{}] = {} > {name}[{}] = {})",
                            i,
                            cu[i],
                            i + 1,
                            cu[i + 1]
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// One attention problem: shapes, heads and element type. Construct with [`AttnProblem::new`],
/// which validates everything a kernel relies on.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnProblem {
    seqs: SeqLens,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: HeadDim,
    dtype: DType,
}

impl AttnProblem {
    /// Validates a problem: lengths, positive head counts with `num_heads % num_kv_heads == 0`, a
    /// supported head_dim, and the grid limits.
    pub fn new(
        seqs: SeqLens,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: u32,
        dtype: DType,
    ) -> Result<Self> {
        seqs.validate()?;
        let head_dim = HeadDim::new(head_dim)?;
        if num_heads == 0 || num_kv_heads == 0 {
            return Err(Error::Shape(
                "num_heads and num_kv_heads must be positive".into(),
            ));
        }
        if num_heads % num_kv_heads != 0 {
            return Err(Error::Shape(format!(
                "num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
            )));
        }
        if num_heads > 65535 || seqs.batch() > 65535 {
            return Err(Error::Shape(
                "num_heads and batch must be at most 65535 (grid limits)".into(),
            ));
        }
        Ok(AttnProblem {
            seqs,
            num_heads,
            num_kv_heads,
            head_dim,
            dtype,
        })
    }

    /// The batch's sequence lengths.
    pub fn seqs(&self) -> &SeqLens {
        &self.seqs
    }

    /// Query heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// Key/value heads (`num_heads` is a multiple of it).
    pub fn num_kv_heads(&self) -> usize {
        self.num_kv_heads
    }

    /// The head dimension (one with a compiled kernel).
    pub fn head_dim(&self) -> HeadDim {
        self.head_dim
    }

    /// Element type of q, k, v and out.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Element counts of q, k (= v) and out, and of lse.
    pub fn q_elems(&self) -> usize {
        self.seqs.totals().0 * self.num_heads * self.head_dim.get() as usize
    }
    /// Elements of k (and of v).
    pub fn kv_elems(&self) -> usize {
        self.seqs.totals().1 * self.num_kv_heads * self.head_dim.get() as usize
    }
    /// Elements of lse.
    pub fn lse_elems(&self) -> usize {
        self.seqs.totals().0 * self.num_heads
    }

    /// Query heads per kv head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

/// Options of one forward call. `scale` defaults to `1/sqrt(head_dim)`.
///
/// The scores of query row `i` (position `p`, docs/patterns.md "Positions") of head `h` and
/// key `j` are, in this order (FlashAttention-2's):
///
/// 1. `s = scale * q_i . k_j`;
/// 2. with a softcap `c`: `s = c * tanh(s / c)`;
/// 3. with ALiBi slopes: `s -= alibi_slopes[h] * |p - j|` (the bias is not capped);
/// 4. the pattern's mask (`-inf` where a key is not allowed).
///
/// With sink logits the softmax of row `i` is `exp(s_ij) / (exp(sink_logits[h]) +
/// sum_j exp(s_ij))` and `lse` includes the sink term, so a row with no allowed key has
/// `out = 0` and `lse = sink_logits[h]` (not `-inf`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttnOptions {
    /// Bottom-right aligned causal masking.
    pub causal: bool,
    /// Score scale (`None`: `1/sqrt(head_dim)`).
    pub scale: Option<f32>,
    /// Tanh soft-capping of the scores: `s = c * tanh(s / c)`; `None` or 0 disables it.
    pub softcap: Option<f32>,
    /// Learnable sink logits, one per query head (gpt-oss's `sinks`), in natural-log units:
    /// each row's softmax denominator gains `exp(sink_logits[h])` once. Independent of the
    /// `sinks` pattern component (StreamingLLM's sink *tokens*). `None`: no sink term.
    pub sink_logits: Option<Vec<f32>>,
    /// ALiBi slopes, one per query head (BLOOM, MPT; [`alibi_slopes`] gives the standard
    /// ones): the bias `-slope * |p - j|` is added to the (capped) scores before masking.
    /// `None`: no position bias.
    pub alibi_slopes: Option<Vec<f32>>,
}

impl AttnOptions {
    /// Causal attention with the default scale.
    pub fn causal() -> Self {
        AttnOptions {
            causal: true,
            ..Default::default()
        }
    }

    /// The effective scale and softcap, validated.
    pub fn resolve(&self, head_dim: HeadDim) -> Result<(f32, f32)> {
        let scale = self.scale.unwrap_or(1.0 / (head_dim.get() as f32).sqrt());
        if !scale.is_finite() {
            return Err(Error::Shape(format!("scale must be finite (got {scale})")));
        }
        let softcap = self.softcap.unwrap_or(0.0);
        if !softcap.is_finite() || softcap < 0.0 {
            return Err(Error::Shape(format!(
                "softcap must be finite and >= 0 (got {softcap})"
            )));
        }
        Ok((scale, softcap))
    }

    /// Checks the per-head vectors against a problem with `num_heads` query heads: the sink
    /// logits and the ALiBi slopes must each hold exactly `num_heads` finite values
    /// (`Error::Shape` naming the vector, the head and the value otherwise).
    pub fn check_head_vectors(&self, num_heads: usize) -> Result<()> {
        for (name, v) in [
            ("sink_logits", &self.sink_logits),
            ("alibi_slopes", &self.alibi_slopes),
        ] {
            let Some(v) = v else { continue };
            if v.len() != num_heads {
                return Err(Error::Shape(format!(
                    "{name} has {} values, the problem has {num_heads} query heads (one each)",
                    v.len()
                )));
            }
            if let Some((h, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                return Err(Error::Shape(format!(
                    "{name}[{h}] must be finite (got {x})"
                )));
            }
        }
        Ok(())
    }
}

/// The standard ALiBi slopes of `num_heads` heads (Press et al., "Train Short, Test Long",
/// and its reference code, as BLOOM and MPT use them): for a power of two `n`, head `h` has
/// slope `2^(-8 (h + 1) / n)`, a geometric sequence from `2^(-8/n)` down to `2^-8`. For
/// other head counts, with `n` the largest power of two below `num_heads`: the `n` slopes of
/// `n` heads, then the first `num_heads - n` of the even-indexed (0, 2, 4, ...) slopes of
/// `2n` heads. Empty for 0 heads.
///
/// ```
/// let s = sparse_attn::shape::alibi_slopes(8);
/// assert_eq!(s, [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]);
/// ```
pub fn alibi_slopes(num_heads: usize) -> Vec<f32> {
    fn power_of_two(n: usize) -> impl Iterator<Item = f64> {
        (1..=n).map(move |h| (-8.0 * h as f64 / n as f64).exp2())
    }
    if num_heads == 0 {
        return Vec::new();
    }
    let n = 1usize << num_heads.ilog2();
    power_of_two(n)
        .chain(power_of_two(2 * n).step_by(2).take(num_heads - n))
        .map(|x| x as f32)
        .collect()
}
