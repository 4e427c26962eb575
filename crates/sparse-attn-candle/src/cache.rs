//! A paged KV cache with a step API over candle tensors: the bookkeeping of
//! [`sparse_attn::kv_cache::KvCache`] (per-layer pools sized from the layer plan, rings for windowed
//! layers), pages in [`sparse_attn::kv_cache::HostKvStorage`] on CPU (the emulator) or
//! [`sparse_attn::kv_cache::DeviceKvStorage`] on candle's CUDA stream, and one run-time plan per
//! (layer, batch size) that serves every step.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::{elem_dtype, to_candle};
use sparse_attn::attention::{AttnPlan, EmuRun};
use sparse_attn::kv_cache::{
    check_causal, HostKvStorage, KvCache, KvCacheConfig, Placement, SeqId,
};
use sparse_attn::pattern::LayerPlan;
use sparse_attn::shape::{alibi_slopes, AttnOptions, AttnProblem, DType, SeqLens};
use sparse_attn::Error;

type CResult<T> = candle_core::Result<T>;

/// The positions one step appends: which sequences, how many new tokens each, and where they
/// land in every layer ([`CandleKvCache::begin_step`]). A step's queries are its new tokens,
/// the last ones of each sequence.
#[derive(Clone, Debug)]
pub struct CacheStep {
    seqs: Vec<SeqId>,
    placements: Vec<Placement>,
    lens: SeqLens,
}

impl CacheStep {
    /// The step's sequences (row `b` of its tensors' batch).
    pub fn seqs(&self) -> &[SeqId] {
        &self.seqs
    }

    /// New tokens of sequence `b` of the step.
    pub fn new_tokens(&self, b: usize) -> usize {
        self.lens.lens(b).0
    }

    /// New tokens of all sequences together (the rows of a step's packed q, k and v).
    pub fn total_new(&self) -> usize {
        self.lens.totals().0
    }

    /// Sequence `b`'s length after the step (its keys when the step attends).
    pub fn seq_len(&self, b: usize) -> usize {
        self.lens.lens(b).1
    }

    /// The step's lengths (query rows = new tokens, keys = length after the step), as the
    /// run-time plans take them.
    pub fn lens(&self) -> &SeqLens {
        &self.lens
    }
}

/// The pages of every layer, on the cache's device.
enum Store<T> {
    Host(HostKvStorage<T>),
    #[cfg(feature = "cuda")]
    Cuda(super::cuda::CudaPages<T>),
}

enum Pages {
    F16(Store<half::f16>),
    BF16(Store<half::bf16>),
}

/// A paged KV cache for a model: one page pool per layer of a [`LayerPlan`] (windowed layers
/// keep their sinks and a ring, full layers every page, layers that are not softmax attention
/// nothing; [`sparse_attn::kv_cache::LayerCapacity::from_plan`]), appended to and attended through
/// with candle tensors.
///
/// A step is [`CandleKvCache::begin_step`] once (it reserves the new positions of every
/// sequence in every layer, all or nothing), then for each attention layer
/// [`CandleKvCache::append_attend`] with that layer's q, k and v of the new tokens: the K/V
/// rows go into the layer's pages and the queries attend every cached key their layer's
/// pattern allows, through the block table. Each layer's settings (scale, softcap, ALiBi,
/// learnable sinks) come from the plan.
///
/// On CPU the pages are host memory and attention runs on the emulator (the testing path); on
/// a CUDA device (feature `cuda`) the pages are device memory on candle's stream,
/// written by the append kernel.
pub struct CandleKvCache {
    cache: KvCache,
    plan: LayerPlan,
    num_heads: usize,
    device: Device,
    pages: Pages,
    sink_logits: Vec<Option<Vec<f32>>>,
    /// Run-time plans by (layer, batch size), built on first use and reused by every step.
    plans: HashMap<(usize, usize), AttnPlan>,
}

impl std::fmt::Debug for CandleKvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleKvCache")
            .field("cache", &self.cache)
            .field("num_heads", &self.num_heads)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl CandleKvCache {
    /// A cache for `plan` (one layer per cache layer) with `num_heads` query heads, its pages
    /// on `device`. Every attention layer's pattern must be causal on every head (keys arrive
    /// in order). `config.max_chunk` bounds the new tokens of one sequence per step (and sizes
    /// the rings); `config.max_seq_len` the sequences.
    ///
    /// Errors: those of [`KvCache::for_plan`]; a pattern that is not causal; a device other
    /// than CPU (or CUDA with feature `cuda`).
    pub fn new(
        config: KvCacheConfig,
        plan: LayerPlan,
        num_heads: usize,
        device: &Device,
    ) -> CResult<Self> {
        for (l, a) in plan.attention_layers() {
            check_causal(&a.patterns)
                .map_err(|e| to_candle(Error::Pattern(format!("layer {l}: {e}"))))?;
        }
        plan.validate(num_heads, config.max_seq_len)
            .map_err(to_candle)?;
        let cache = KvCache::for_plan(config, &plan).map_err(to_candle)?;
        let pages = match cache.config().dtype {
            DType::F16 => Pages::F16(Store::new(&cache, device)?),
            DType::BF16 => Pages::BF16(Store::new(&cache, device)?),
        };
        Ok(CandleKvCache {
            sink_logits: vec![None; plan.layers.len()],
            cache,
            plan,
            num_heads,
            device: device.clone(),
            pages,
            plans: HashMap::new(),
        })
    }

    /// The bookkeeping (pages, block tables, accounting).
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// The layer plan.
    pub fn plan(&self) -> &LayerPlan {
        &self.plan
    }

    /// The device the pages live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Sets the learnable sink logits of `layer` (one per query head), for a layer that
    /// declares them (gpt-oss); `Error::Shape` otherwise or for a wrong length.
    pub fn set_sink_logits(&mut self, layer: usize, sink_logits: Vec<f32>) -> CResult<()> {
        let a = self.attention(layer)?;
        if !a.learnable_sinks {
            return Err(to_candle(Error::Shape(format!(
                "layer {layer} declares no learnable sinks"
            ))));
        }
        AttnOptions {
            sink_logits: Some(sink_logits.clone()),
            ..Default::default()
        }
        .check_head_vectors(self.num_heads)
        .map_err(to_candle)?;
        self.sink_logits[layer] = Some(sink_logits);
        self.plans.retain(|&(l, _), _| l != layer);
        Ok(())
    }

    /// Starts an empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        self.cache.add_sequence()
    }

    /// Ends `seq`, returning its pages to the pools.
    pub fn free_sequence(&mut self, seq: SeqId) -> CResult<()> {
        self.cache.free_sequence(seq).map_err(to_candle)
    }

    /// Reserves `n` new positions of each `(seq, n)` in every layer. All or nothing: an
    /// unknown or repeated sequence, `n > max_chunk`, a length past `max_seq_len` or an
    /// exhausted pool leave the cache as it was.
    pub fn begin_step(&mut self, seqs: &[(SeqId, usize)]) -> CResult<CacheStep> {
        for (b, (s, _)) in seqs.iter().enumerate() {
            if seqs[..b].iter().any(|(t, _)| t == s) {
                return Err(to_candle(Error::Cache(format!(
                    "sequence {} appears twice in a step",
                    s.0
                ))));
            }
        }
        let before = self.cache.clone();
        let mut placements = Vec::with_capacity(seqs.len());
        for &(seq, n) in seqs {
            match self.cache.reserve_append(seq, n) {
                Ok(p) => placements.push(p),
                Err(e) => {
                    self.cache = before;
                    return Err(to_candle(e));
                }
            }
        }
        let lens: Vec<(usize, usize)> = placements
            .iter()
            .map(|p| (p.len, p.start + p.len))
            .collect();
        let lens = SeqLens::varlen_from_lens(&lens).map_err(to_candle)?;
        Ok(CacheStep {
            seqs: seqs.iter().map(|&(s, _)| s).collect(),
            placements,
            lens,
        })
    }

    /// Appends `layer`'s K/V of the step's new tokens and attends its queries against the
    /// layer's cached keys with the layer's pattern and settings. q is `[total_new,
    /// num_heads, head_dim]` (the sequences' new tokens packed in step order) or `[batch, n,
    /// num_heads, head_dim]` when every sequence adds `n`; k and v likewise with the cache's
    /// kv heads. Returns the attention output in q's shape.
    ///
    /// Errors (before anything is written): a layer that is not softmax attention or out of
    /// range, tensors of another shape, dtype or device than the cache's, a layer declaring
    /// learnable sinks without [`CandleKvCache::set_sink_logits`].
    pub fn append_attend(
        &mut self,
        step: &CacheStep,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> CResult<Tensor> {
        self.check_step_tensors(step, q, k, v)?;
        let batch = step.seqs.len();
        if !self.plans.contains_key(&(layer, batch)) {
            let plan = self.build_plan(layer, batch)?;
            self.plans.insert((layer, batch), plan);
        }
        let plan = &self.plans[&(layer, batch)];
        let table = self
            .cache
            .block_table(layer, &step.seqs)
            .map_err(to_candle)?;
        match &mut self.pages {
            Pages::F16(s) => s.append_attend(plan, step, layer, &table, q, k, v),
            Pages::BF16(s) => s.append_attend(plan, step, layer, &table, q, k, v),
        }
    }

    /// Bytes of K and V pages the live sequences hold, over all layers.
    pub fn bytes_used(&self) -> u64 {
        self.cache.total_bytes_used()
    }

    /// Bytes of every layer's whole pool (what the storage allocated).
    pub fn pool_bytes(&self) -> u64 {
        (0..self.cache.num_layers())
            .map(|l| self.cache.pool_bytes(l).unwrap_or(0))
            .sum()
    }

    /// Bytes a dense, unpaged cache of every layer would hold for `tokens` tokens (summed
    /// over sequences).
    pub fn dense_bytes(&self, tokens: usize) -> u64 {
        self.cache.dense_bytes(tokens)
    }

    fn attention(&self, layer: usize) -> CResult<&sparse_attn::pattern::AttentionLayer> {
        self.plan.attention(layer).ok_or_else(|| {
            to_candle(Error::Shape(format!(
                "layer {layer} is not a softmax-attention layer of the plan ({} layers)",
                self.plan.layers.len()
            )))
        })
    }

    /// The run-time plan of `layer` for steps of `batch` sequences: up to `max_chunk` new
    /// tokens each over up to `max_seq_len` keys.
    fn build_plan(&self, layer: usize, batch: usize) -> CResult<AttnPlan> {
        let a = self.attention(layer)?;
        let c = self.cache.config();
        let sink_logits = match (a.learnable_sinks, &self.sink_logits[layer]) {
            (true, None) => {
                return Err(to_candle(Error::Shape(format!(
                    "layer {layer} declares learnable sinks: set them with set_sink_logits"
                ))))
            }
            (_, s) => s.clone(),
        };
        let opts = AttnOptions {
            causal: false,
            scale: a.scale,
            softcap: a.softcap,
            sink_logits,
            alibi_slopes: a.alibi.then(|| alibi_slopes(self.num_heads)),
        };
        let problem = AttnProblem::new(
            SeqLens::Uniform {
                batch,
                q_len: c.max_chunk,
                kv_len: c.max_seq_len,
            },
            self.num_heads,
            c.num_kv_heads,
            c.head_dim as u32,
            c.dtype,
        )
        .map_err(to_candle)?;
        AttnPlan::for_max_lengths(&problem, &a.patterns, &opts).map_err(to_candle)
    }

    fn check_step_tensors(
        &self,
        step: &CacheStep,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> CResult<()> {
        let c = self.cache.config();
        let shape = |m: String| to_candle(Error::Shape(m));
        let total = step.total_new();
        for (name, t, heads) in [
            ("q", q, self.num_heads),
            ("k", k, c.num_kv_heads),
            ("v", v, c.num_kv_heads),
        ] {
            let dt = elem_dtype(name, t.dtype()).map_err(to_candle)?;
            if dt != c.dtype {
                return Err(shape(format!(
                    "{name} is {}, the cache holds {}",
                    dt.name(),
                    c.dtype.name()
                )));
            }
            if !t.device().same_device(&self.device) {
                return Err(to_candle(Error::WrongDevice(format!(
                    "{name} is on {:?}, the cache on {:?}",
                    t.device().location(),
                    self.device.location()
                ))));
            }
            let dims = t.dims();
            let ok = match *dims {
                [n, h, d] => n == total && h == heads && d == c.head_dim,
                [b, n, h, d] => {
                    b == step.seqs.len()
                        && (0..b).all(|i| step.new_tokens(i) == n)
                        && h == heads
                        && d == c.head_dim
                }
                _ => false,
            };
            if !ok {
                return Err(shape(format!(
                    "{name} has shape {dims:?}; the step needs [{total}, {heads}, {}] (or \
                     [batch, n, {heads}, {}] when every sequence adds n tokens)",
                    c.head_dim, c.head_dim
                )));
            }
        }
        Ok(())
    }
}

impl<T: crate::Elem> Store<T> {
    fn new(cache: &KvCache, device: &Device) -> CResult<Self> {
        match device {
            Device::Cpu => Ok(Store::Host(HostKvStorage::new(cache).map_err(to_candle)?)),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => Ok(Store::Cuda(super::cuda::CudaPages::new(cache, dev)?)),
            other => Err(to_candle(Error::Unsupported(format!(
                "a KV cache on {:?}: the pages live on the CPU (emulator) or, with feature \
                 cuda, on a CUDA device",
                other.location()
            )))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn append_attend(
        &mut self,
        plan: &AttnPlan,
        step: &CacheStep,
        layer: usize,
        table: &sparse_attn::kv_cache::BlockTable,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> CResult<Tensor> {
        match self {
            Store::Host(store) => {
                let rows = |t: &Tensor| t.flatten_all()?.to_vec1::<T>();
                let (qh, kh, vh) = (rows(q)?, rows(k)?, rows(v)?);
                let row = kh.len() / step.total_new().max(1);
                let mut at = 0;
                for p in &step.placements {
                    let r = at * row..(at + p.len) * row;
                    store
                        .write_kv(layer, p, &kh[r.clone()], &vh[r])
                        .map_err(to_candle)?;
                    at += p.len;
                }
                let kv = store.paged_kv(layer, table).map_err(to_candle)?;
                let (out, _lse) = plan
                    .run_emulated_paged_step(&step.lens, &qh, &kv, &EmuRun::default())
                    .map_err(to_candle)?;
                Tensor::from_vec(out, q.shape(), q.device())
            }
            #[cfg(feature = "cuda")]
            Store::Cuda(pages) => pages.append_attend(plan, step, layer, table, q, k, v),
        }
    }
}

#[cfg(feature = "cuda")]
impl CacheStep {
    /// The placements of the step, one per sequence.
    pub(crate) fn placements(&self) -> &[Placement] {
        &self.placements
    }
}
