//! Continuous batching over the paged cache (issue 12): the engine loop of
//! `examples/continuous_batching.rs`, here so its test can drive it step by step.
//!
//! A fixed number of batch *slots* (the run-time plans' batch) serve a stream of
//! [`Request`]s: a request joins a free slot when it arrives, prefills its prompt in chunks of
//! at most [`BatchingConfig::chunk`] tokens, then decodes one token per step, and leaves when
//! it has generated its tokens, freeing its slot and its pages for the next request. One
//! step therefore mixes, in one launch per layer, prefill chunks, decode rows and idle slots
//! (empty sequences). The model is a multi-layer [`LayerPlan`] (Gemma 3 style: windowed
//! layers and global ones); windowed layers keep a ring of pages, global ones every page
//! ([`LayerCapacity::from_plan`]). Every layer sharing an attention setting shares one
//! run-time plan ([`AttnPlan::for_max_lengths`]) built before the first step: the run builds
//! one plan per distinct layer setting and none per step.
//!
//! The activations are synthetic but flow like a model's: each new token starts from a
//! seeded embedding, every layer derives its queries, keys and values from the token's
//! hidden state and adds its attention output back (a residual stream), so layer `l + 1`
//! reads what layer `l` computed in the same step. Each (step, layer) is reported to an
//! observer ([`LayerStep`]); [`ReferenceCheck`] recomputes it with the f64 reference
//! ([`crate::reference`]) from the full, never evicted history of every sequence.

use std::collections::VecDeque;

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

use super::append::DeviceKvStorage;
use super::cache::{KvCache, KvCacheConfig, Placement, PoolSize, SeqId};
use super::capacity::LayerCapacity;
use super::host::HostKvStorage;
use super::table::BlockTable;
use crate::attention::{AttnPlan, Element, EmuRun};
use crate::backend::{DeviceStep, Gpu, GpuPlan};
use crate::error::{Error, Result};
use crate::pattern::rng::{mix64, SplitMix64};
use crate::pattern::{HeadPatterns, Layer, LayerPlan, Pattern};
use crate::reference::{self, RefInputs};
use crate::shape::{AttnOptions, AttnProblem, SeqLens};

/// One request of a continuous-batching workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The step at which it arrives (it joins the first free slot from then on).
    pub arrival: usize,
    /// Prompt tokens, prefilled in chunks (at least 1).
    pub prompt: usize,
    /// Tokens to generate (at least 1): the last prefill chunk yields the first, every
    /// decode step one more, so the sequence ends with `prompt + generate - 1` tokens cached.
    pub generate: usize,
}

/// The model and the engine's limits.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchingConfig {
    /// One entry per layer; every attention layer's head patterns must be causal. Layers
    /// that are not softmax attention pass the hidden state through.
    pub layers: LayerPlan,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (the cache's pages).
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Batch slots: the most sequences in flight (the plans' batch).
    pub slots: usize,
    /// Most prompt tokens one step prefills per sequence (the plans' maximum query length).
    pub chunk: usize,
    /// Longest sequence (tokens in the cache).
    pub max_seq_len: usize,
    /// Tokens per page.
    pub page_size: usize,
    /// Seed of the synthetic activations.
    pub seed: u64,
}

impl BatchingConfig {
    /// A small Gemma 3 style model: 6 layers, 5 causal sliding-window layers (window 48) to
    /// 1 global causal layer, 4 query heads over 2 kv heads of 64, 3 slots, prefill chunks of
    /// 24, sequences up to 320 tokens in 16-token pages.
    pub fn gemma3_small() -> Result<Self> {
        Ok(BatchingConfig {
            layers: LayerPlan::interleaved(6, Pattern::causal_window(48)?, Pattern::causal(), 5)?,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 64,
            slots: 3,
            chunk: 24,
            max_seq_len: 320,
            page_size: 16,
            seed: 1,
        })
    }
}

/// A seeded workload for [`BatchingConfig::gemma3_small`]-sized runs: `n` requests arriving
/// every few steps, prompts of 1 to 100 tokens (up to five chunks, some a single token) and 1
/// to 32 generated tokens (sequences up to 131 tokens: longer than the windowed layers' rings
/// of 96).
pub fn demo_requests(n: usize, seed: u64) -> Vec<Request> {
    let mut rng = SplitMix64::new(mix64(seed ^ 0x5eed));
    let mut arrival = 0;
    (0..n)
        .map(|_| {
            let r = Request {
                arrival,
                prompt: rng.int_in(1, 100) as usize,
                generate: rng.int_in(1, 32) as usize,
            };
            arrival += rng.below(6) as usize;
            r
        })
        .collect()
}

/// One run-time plan of a run and the layers it serves.
#[derive(Clone, Debug)]
pub struct PlanInfo {
    /// The layers that run this plan.
    pub layers: Vec<usize>,
    /// Their head patterns (JSON).
    pub patterns: String,
    /// The forward kernel.
    pub kernel: &'static str,
    /// Query heads packed per block.
    pub gqa_pack: u32,
    /// Split-KV parts.
    pub num_splits: u32,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct BatchingReport {
    /// Steps run (each one launch per attention layer).
    pub steps: usize,
    /// Steps with no sequence in flight (waiting for the next arrival).
    pub idle_steps: usize,
    /// The run's plans, one per distinct attention setting, built before the first step.
    pub plans: Vec<PlanInfo>,
    /// Attention launches (steps x attention layers).
    pub launches: usize,
    /// Prompt tokens prefilled.
    pub prefill_tokens: usize,
    /// Tokens decoded (one per decode row).
    pub decode_tokens: usize,
    /// Steps whose batch held a prefill chunk and a decode row together.
    pub mixed_steps: usize,
    /// Most sequences in flight in one step.
    pub max_in_flight: usize,
    /// Requests that joined a slot.
    pub joined: usize,
    /// Requests that finished (and left their slot).
    pub finished: usize,
    /// Longest sequence (tokens cached) seen.
    pub longest: usize,
    /// Each layer's capacity (windowed layers: sink and ring pages).
    pub capacities: Vec<LayerCapacity>,
    /// Most pages held over all layers at once.
    pub peak_pages: usize,
    /// Pages of all layers' pools.
    pub pool_pages: usize,
}

impl BatchingReport {
    /// Plans built by the run.
    pub fn plans_built(&self) -> usize {
        self.plans.len()
    }
}

/// One layer of one step, as the observer of a run sees it. Row `r` of the step's packed
/// tensors belongs to the slot whose query range of `seqs` holds it.
pub struct LayerStep<'a, T> {
    /// The step.
    pub step: usize,
    /// The layer.
    pub layer: usize,
    /// The plan the layer ran (its patterns and score settings).
    pub plan: &'a AttnPlan,
    /// The request in each slot (`None`: idle, an empty sequence of the batch).
    pub requests: &'a [Option<usize>],
    /// The step's lengths per slot: (new tokens, tokens cached after appending them).
    pub seqs: &'a SeqLens,
    /// Queries `[total_q, num_heads, head_dim]`.
    pub q: &'a [T],
    /// The new tokens' keys `[total_q, num_kv_heads, head_dim]` (appended before attending).
    pub k: &'a [T],
    /// Their values, like `k`.
    pub v: &'a [T],
    /// Output `[total_q, num_heads, head_dim]`.
    pub out: &'a [T],
    /// Row LSE `[num_heads, total_q]`.
    pub lse: &'a [f32],
}

/// Runs `requests` through `config`'s model on the CPU emulator (host pages,
/// [`AttnPlan::run_emulated_paged_step`]), calling `observe` after every layer of every step.
///
/// Errors: a request with no prompt or nothing to generate, or longer than `max_seq_len`
/// (`Error::Shape`); a layer that is not causal, has learnable sinks (weights this driver
/// lacks) or another head_dim or kv head count (`Error::Pattern`, `Error::Unsupported`,
/// `Error::Shape`); what the cache and the plans reject.
pub fn run_emulated<T: Element>(
    config: &BatchingConfig,
    requests: &[Request],
    run: &EmuRun,
    observe: impl FnMut(&LayerStep<'_, T>),
) -> Result<BatchingReport> {
    let mut setup = Setup::new::<T>(config, requests)?;
    let backend = EmuBackend {
        store: HostKvStorage::<T>::new(&setup.cache)?,
        run,
    };
    let plans = std::mem::take(&mut setup.plans);
    setup.drive(&plans, backend, observe)
}

/// [`run_emulated`] on a GPU: pages on the device written by the append kernel, each plan
/// uploaded once, and every layer of every step queued with [`GpuPlan::launch_step`] over
/// buffers allocated once for the plans' capacity (lengths, block tables, queries, outputs,
/// the append's K/V staging and slots at `max_chunk`); between steps only their contents are
/// copied in, nothing is allocated on the device.
pub fn run_cuda<T: Element + DeviceRepr + ValidAsZeroBits>(
    gpu: &Gpu,
    config: &BatchingConfig,
    requests: &[Request],
    observe: impl FnMut(&LayerStep<'_, T>),
) -> Result<BatchingReport> {
    let mut setup = Setup::new::<T>(config, requests)?;
    let plans = std::mem::take(&mut setup.plans);
    let uploaded = plans
        .iter()
        .map(|p| p.plan.upload(gpu))
        .collect::<Result<Vec<_>>>()?;
    let backend = CudaBackend::new(gpu, &setup.cache, uploaded)?;
    setup.drive(&plans, backend, observe)
}

/// Where a run keeps its pages and runs a layer's step.
trait Backend<T> {
    /// Writes one sequence's new K/V rows into `layer`.
    fn write(&mut self, layer: usize, placement: &Placement, k: &[T], v: &[T]) -> Result<()>;
    /// Runs plan `plan` (index into the run's plans) for `layer` at the step's lengths.
    fn attend(
        &mut self,
        plan: (usize, &AttnPlan),
        layer: usize,
        seqs: &SeqLens,
        q: &[T],
        table: &BlockTable,
    ) -> Result<(Vec<T>, Vec<f32>)>;
}

struct EmuBackend<'r, T> {
    store: HostKvStorage<T>,
    run: &'r EmuRun<'r>,
}

impl<T: Element> Backend<T> for EmuBackend<'_, T> {
    fn write(&mut self, layer: usize, placement: &Placement, k: &[T], v: &[T]) -> Result<()> {
        self.store.write_kv(layer, placement, k, v)
    }
    fn attend(
        &mut self,
        (_, plan): (usize, &AttnPlan),
        layer: usize,
        seqs: &SeqLens,
        q: &[T],
        table: &BlockTable,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        let kv = self.store.paged_kv(layer, table)?;
        plan.run_emulated_paged_step(seqs, q, &kv, self.run)
    }
}

/// The device side of a run: the pages, the uploaded plans, and the step buffers an engine
/// owns (sized once for the plans' capacity).
struct CudaBackend<'p, T> {
    gpu: Gpu,
    store: DeviceKvStorage<T>,
    plans: Vec<GpuPlan<'p>>,
    cu_q: CudaSlice<i32>,
    cu_k: CudaSlice<i32>,
    /// One block table per layer (`[slots, stride]`; empty for layers without KV).
    tables: Vec<Option<CudaSlice<i32>>>,
    q: CudaSlice<T>,
    out: CudaSlice<T>,
    lse: CudaSlice<f32>,
    /// Append staging for one sequence's new K and V rows (`[max_chunk, num_kv_heads,
    /// head_dim]` each), allocated once: each write copies its rows into the front.
    k_new: CudaSlice<T>,
    v_new: CudaSlice<T>,
}

impl<'p, T: Element + DeviceRepr + ValidAsZeroBits> CudaBackend<'p, T> {
    fn new(gpu: &Gpu, cache: &KvCache, plans: Vec<GpuPlan<'p>>) -> Result<Self> {
        let p = plans
            .first()
            .ok_or_else(|| Error::Shape("no attention layer to run".into()))?
            .plan()
            .problem()
            .clone();
        let stream = gpu.stream();
        let batch = p.seqs().batch();
        let rows = p.seqs().totals().0;
        let tables = (0..cache.num_layers())
            .map(|l| match cache.capacity(l)? {
                LayerCapacity::NoKv => Ok(None),
                _ => Ok(Some(stream.alloc_zeros::<i32>(batch * cache.stride(l)?)?)),
            })
            .collect::<Result<_>>()?;
        let qo = rows * p.num_heads() * p.head_dim().get() as usize;
        let c = cache.config();
        let staging = (c.max_chunk * c.num_kv_heads * c.head_dim).max(1);
        Ok(CudaBackend {
            gpu: gpu.clone(),
            store: DeviceKvStorage::new(gpu, cache)?,
            plans,
            cu_q: stream.alloc_zeros::<i32>(batch + 1)?,
            cu_k: stream.alloc_zeros::<i32>(batch + 1)?,
            tables,
            q: stream.alloc_zeros::<T>(qo.max(1))?,
            out: stream.alloc_zeros::<T>(qo.max(1))?,
            lse: stream.alloc_zeros::<f32>((rows * p.num_heads()).max(1))?,
            k_new: stream.alloc_zeros::<T>(staging)?,
            v_new: stream.alloc_zeros::<T>(staging)?,
        })
    }
}

impl<T: Element + DeviceRepr + ValidAsZeroBits> Backend<T> for CudaBackend<'_, T> {
    fn write(&mut self, layer: usize, placement: &Placement, k: &[T], v: &[T]) -> Result<()> {
        if placement.len == 0 {
            return Ok(());
        }
        if k.len() > self.k_new.len() || v.len() > self.v_new.len() {
            return Err(Error::Shape(format!(
                "{} / {} new K / V elements, above the {} staged for max_chunk",
                k.len(),
                v.len(),
                self.k_new.len()
            )));
        }
        // Stream order puts these copies after the previous append's reads of the staging.
        let stream = self.gpu.stream();
        let mut kd = self.k_new.slice_mut(..k.len());
        stream.memcpy_htod(k, &mut kd)?;
        let mut vd = self.v_new.slice_mut(..v.len());
        stream.memcpy_htod(v, &mut vd)?;
        self.store.write_kv(layer, placement, &kd, &vd)
    }

    fn attend(
        &mut self,
        (index, plan): (usize, &AttnPlan),
        layer: usize,
        seqs: &SeqLens,
        q: &[T],
        table: &BlockTable,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        let kv = self.store.paged(layer, table)?;
        // The host knows this step's lengths and table: check them, then write them where
        // the launch (graph-capturable, built over fixed buffers) reads them.
        plan.check_paged_step(
            seqs,
            kv.k_pages.len(),
            kv.v_pages.len(),
            &table.table,
            &kv.layout,
        )?;
        let stream = self.gpu.stream().clone();
        let (cq, ck) = seqs.cu_seqlens();
        stream.memcpy_htod(&cq, &mut self.cu_q)?;
        stream.memcpy_htod(&ck, &mut self.cu_k)?;
        let table_d = self.tables[layer]
            .as_mut()
            .ok_or_else(|| Error::Cache(format!("layer {layer} keeps no KV cache")))?;
        stream.memcpy_htod(&table.table, table_d)?;
        let total_q = seqs.totals().0;
        if !q.is_empty() {
            stream.memcpy_htod(q, &mut self.q.slice_mut(..q.len()))?;
        }
        let step = DeviceStep {
            cu_seqlens_q: &self.cu_q,
            cu_seqlens_k: &self.cu_k,
            k_pages: kv.k_pages,
            v_pages: kv.v_pages,
            block_table: table_d,
            layout: kv.layout,
        };
        // The host knows the step's longest query: decode-only steps run the step tile.
        let max_q = seqs.max_lens().0;
        self.plans[index].launch_step_rows(max_q, &step, &self.q, &mut self.out, &mut self.lse)?;
        let mut out = vec![T::default(); q.len()];
        if !out.is_empty() {
            stream.memcpy_dtoh(&self.out.slice(..q.len()), &mut out)?;
        }
        let lse_all = stream.clone_dtoh(&self.lse)?;
        self.gpu.synchronize()?;
        // [num_heads, capacity] -> [num_heads, total_q]
        let capacity = plan.problem().seqs().totals().0.max(1);
        let lse = lse_all
            .chunks(capacity)
            .flat_map(|row| row[..total_q].iter().copied())
            .collect();
        Ok((out, lse))
    }
}

/// One plan of the run and the layers that run it.
struct RunPlan {
    plan: AttnPlan,
    layers: Vec<usize>,
}

/// A sequence in flight.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    request: usize,
    seq: SeqId,
    /// Prompt tokens prefilled so far.
    prefilled: usize,
    /// Tokens generated so far.
    generated: usize,
    /// Tokens cached.
    len: usize,
}

struct Setup<'a> {
    config: &'a BatchingConfig,
    requests: &'a [Request],
    cache: KvCache,
    plans: Vec<RunPlan>,
    /// The plan of each layer (`None`: not softmax attention).
    layer_plan: Vec<Option<usize>>,
}

impl<'a> Setup<'a> {
    fn new<T: Element>(config: &'a BatchingConfig, requests: &'a [Request]) -> Result<Self> {
        let c = config;
        for (i, r) in requests.iter().enumerate() {
            if r.prompt == 0 || r.generate == 0 || r.prompt + r.generate - 1 > c.max_seq_len {
                return Err(Error::Shape(format!(
                    "request {i}: prompt {} and generate {} must be at least 1 and fit \
                     max_seq_len {} (prompt + generate - 1 tokens)",
                    r.prompt, r.generate, c.max_seq_len
                )));
            }
        }
        if c.slots == 0 || c.chunk == 0 {
            return Err(Error::Shape(
                "slots and chunk must be at least 1".to_string(),
            ));
        }
        c.layers.validate(c.num_heads, c.max_seq_len)?;
        let cache = KvCache::for_plan(
            KvCacheConfig {
                num_layers: c.layers.layers.len(),
                num_kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                dtype: T::DTYPE,
                page_size: c.page_size,
                max_seq_len: c.max_seq_len,
                max_chunk: c.chunk,
                pool: PoolSize::Sequences(c.slots),
            },
            &c.layers,
        )?;
        let max = AttnProblem::new(
            SeqLens::Uniform {
                batch: c.slots,
                q_len: c.chunk,
                kv_len: c.max_seq_len,
            },
            c.num_heads,
            c.num_kv_heads,
            c.head_dim as u32,
            T::DTYPE,
        )?;
        // One plan per distinct attention setting, shared by every layer that has it.
        let mut settings: Vec<&crate::pattern::AttentionLayer> = Vec::new();
        let mut plans: Vec<RunPlan> = Vec::new();
        let mut layer_plan = Vec::with_capacity(c.layers.layers.len());
        for (l, layer) in c.layers.layers.iter().enumerate() {
            let Layer::Attention(a) = layer else {
                layer_plan.push(None);
                continue;
            };
            if let Some(i) = settings.iter().position(|s| *s == a) {
                plans[i].layers.push(l);
                layer_plan.push(Some(i));
                continue;
            }
            super::decode::check_causal(&a.patterns)
                .map_err(|e| Error::Pattern(format!("layer {l}: {e}")))?;
            if a.learnable_sinks {
                return Err(Error::Unsupported(format!(
                    "layer {l} has learnable sinks: this driver has no sink weights"
                )));
            }
            let opts = AttnOptions {
                causal: false,
                scale: a.scale,
                softcap: a.softcap,
                sink_logits: None,
                alibi_slopes: a.alibi.then(|| crate::shape::alibi_slopes(c.num_heads)),
            };
            let plan = AttnPlan::for_max_lengths(&max, &a.patterns, &opts)?;
            layer_plan.push(Some(plans.len()));
            settings.push(a);
            plans.push(RunPlan {
                plan,
                layers: vec![l],
            });
        }
        Ok(Setup {
            config,
            requests,
            cache,
            plans,
            layer_plan,
        })
    }

    fn drive<T: Element, B: Backend<T>>(
        mut self,
        plans: &[RunPlan],
        mut backend: B,
        mut observe: impl FnMut(&LayerStep<'_, T>),
    ) -> Result<BatchingReport> {
        let c = self.config;
        let (h, hk, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let group = h / hk;
        let mut report = BatchingReport {
            plans: plans
                .iter()
                .map(|p| PlanInfo {
                    layers: p.layers.clone(),
                    patterns: p.plan.patterns().to_json(),
                    kernel: p.plan.kernel().name,
                    gqa_pack: p.plan.gqa_pack(),
                    num_splits: p.plan.num_splits(),
                })
                .collect(),
            capacities: (0..self.cache.num_layers())
                .map(|l| self.cache.capacity(l))
                .collect::<Result<_>>()?,
            pool_pages: (0..self.cache.num_layers())
                .map(|l| self.cache.num_pages(l))
                .sum::<Result<usize>>()?,
            ..BatchingReport::default()
        };
        let mut order: Vec<usize> = (0..self.requests.len()).collect();
        order.sort_by_key(|&i| self.requests[i].arrival);
        let mut waiting: VecDeque<usize> = order.into();
        let mut slots: Vec<Option<InFlight>> = vec![None; c.slots];
        let mut step = 0usize;
        while !waiting.is_empty() || slots.iter().any(Option::is_some) {
            // Join: arrived requests take free slots, first come first served.
            for slot in slots.iter_mut().filter(|s| s.is_none()) {
                match waiting.front() {
                    Some(&r) if self.requests[r].arrival <= step => {
                        waiting.pop_front();
                        *slot = Some(InFlight {
                            request: r,
                            seq: self.cache.add_sequence(),
                            prefilled: 0,
                            generated: 0,
                            len: 0,
                        });
                        report.joined += 1;
                    }
                    _ => break,
                }
            }
            if slots.iter().all(Option::is_none) {
                report.idle_steps += 1;
                step += 1;
                continue;
            }
            // Schedule: a prefill chunk or one decode token per sequence in flight.
            let news: Vec<usize> = slots
                .iter()
                .map(|s| {
                    s.map_or(0, |s| {
                        let prompt = self.requests[s.request].prompt;
                        if s.prefilled < prompt {
                            c.chunk.min(prompt - s.prefilled)
                        } else {
                            1
                        }
                    })
                })
                .collect();
            let prefilling = |s: &InFlight| s.prefilled < self.requests[s.request].prompt;
            let any_prefill = slots.iter().flatten().any(prefilling);
            let any_decode = slots.iter().flatten().any(|s| !prefilling(s));
            report.mixed_steps += usize::from(any_prefill && any_decode);
            let mut placements: Vec<Option<Placement>> = Vec::with_capacity(c.slots);
            for (s, &n) in slots.iter().zip(&news) {
                placements.push(match s {
                    Some(s) => Some(self.cache.reserve_append(s.seq, n)?),
                    None => None,
                });
            }
            let lens: Vec<(usize, usize)> = slots
                .iter()
                .zip(&news)
                .map(|(s, &n)| s.map_or((0, 0), |s| (n, s.len + n)))
                .collect();
            let seqs = SeqLens::varlen_from_lens(&lens)?;
            let requests: Vec<Option<usize>> = slots.iter().map(|s| s.map(|s| s.request)).collect();
            // The new tokens' hidden states [total_q, h * d], from their embeddings.
            let mut hidden: Vec<f32> = Vec::new();
            for (s, &n) in slots.iter().zip(&news) {
                if let Some(s) = s {
                    for pos in s.len..s.len + n {
                        hidden.extend(synth(c.seed, s.request, pos, usize::MAX, 0, h * d));
                    }
                }
            }
            let total_q = seqs.totals().0;
            for (l, plan_index) in self.layer_plan.iter().enumerate() {
                let Some(pi) = *plan_index else { continue };
                let plan = &plans[pi].plan;
                // Q, K, V of this layer from the hidden states (K and V mix in fresh noise).
                let mut q = Vec::with_capacity(total_q * h * d);
                let mut k = Vec::with_capacity(total_q * hk * d);
                let mut v = Vec::with_capacity(total_q * hk * d);
                let mut row = 0;
                for (s, &n) in slots.iter().zip(&news) {
                    let Some(s) = s else { continue };
                    for pos in s.len..s.len + n {
                        let x = &hidden[row * h * d..][..h * d];
                        q.extend(x.iter().map(|&e| T::from_f32(e)));
                        let (nk, nv) = (
                            synth(c.seed, s.request, pos, l, 1, hk * d),
                            synth(c.seed, s.request, pos, l, 2, hk * d),
                        );
                        for g in 0..hk {
                            let xk = &x[g * group * d..][..d];
                            let xv = &x[(g * group + group - 1) * d..][..d];
                            let nk = &nk[g * d..][..d];
                            let nv = &nv[g * d..][..d];
                            k.extend((0..d).map(|e| T::from_f32(0.5 * xk[e] + nk[e])));
                            v.extend((0..d).map(|e| T::from_f32(0.5 * xv[e] + nv[e])));
                        }
                        row += 1;
                    }
                }
                // Append the new tokens' K/V, then attend through the cache.
                let mut first = 0;
                for (p, &n) in placements.iter().zip(&news) {
                    if let Some(p) = p {
                        let rows = first * hk * d..(first + n) * hk * d;
                        backend.write(l, p, &k[rows.clone()], &v[rows])?;
                    }
                    first += n;
                }
                let table = self.padded_table(l, &slots)?;
                let (out, lse) = backend.attend((pi, plan), l, &seqs, &q, &table)?;
                observe(&LayerStep {
                    step,
                    layer: l,
                    plan,
                    requests: &requests,
                    seqs: &seqs,
                    q: &q,
                    k: &k,
                    v: &v,
                    out: &out,
                    lse: &lse,
                });
                // The residual stream: the next layer reads x + attention(x).
                for (x, o) in hidden.iter_mut().zip(&out) {
                    *x += o.to_f32();
                }
                report.launches += 1;
            }
            // Advance: prefill progress, generated tokens, and leaving.
            report.max_in_flight = report.max_in_flight.max(slots.iter().flatten().count());
            report.peak_pages = report.peak_pages.max(self.cache.total_pages_used());
            for (slot, &n) in slots.iter_mut().zip(&news) {
                let Some(s) = slot.as_mut() else { continue };
                let r = self.requests[s.request];
                s.len += n;
                report.longest = report.longest.max(s.len);
                if s.prefilled < r.prompt {
                    s.prefilled += n;
                    report.prefill_tokens += n;
                    if s.prefilled == r.prompt {
                        s.generated = 1; // the last prompt token's output
                    }
                } else {
                    s.generated += 1;
                    report.decode_tokens += 1;
                }
                if s.generated == r.generate {
                    self.cache.free_sequence(s.seq)?;
                    *slot = None;
                    report.finished += 1;
                }
            }
            report.steps += 1;
            step += 1;
        }
        Ok(report)
    }

    /// Layer `l`'s block table for every slot: the rows of the sequences in flight, and for
    /// idle slots empty rows (no keys, every slot `-1`).
    fn padded_table(&self, l: usize, slots: &[Option<InFlight>]) -> Result<BlockTable> {
        let ids: Vec<SeqId> = slots.iter().flatten().map(|s| s.seq).collect();
        let live = self.cache.block_table(l, &ids)?;
        let stride = live.stride;
        let mut table = vec![-1i32; slots.len() * stride];
        let mut kv_lens = vec![0i32; slots.len()];
        let mut row = 0;
        for (b, s) in slots.iter().enumerate() {
            if s.is_some() {
                table[b * stride..][..stride]
                    .copy_from_slice(&live.table[row * stride..][..stride]);
                kv_lens[b] = live.kv_lens[row];
                row += 1;
            }
        }
        Ok(BlockTable {
            table,
            kv_lens,
            ..live
        })
    }
}

/// `n` seeded values in [-1, 1) for (request, position, layer, what): the synthetic
/// activations (`layer == usize::MAX`: the token's embedding).
fn synth(seed: u64, request: usize, pos: usize, layer: usize, what: u64, n: usize) -> Vec<f32> {
    let key = [request as u64, pos as u64, layer as u64, what]
        .iter()
        .fold(mix64(seed), |acc, &x| mix64(acc ^ x));
    let mut rng = SplitMix64::new(key);
    (0..n).map(|_| rng.unit()).collect()
}

/// The worst errors of one checked (step, layer) against the f64 reference.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepError {
    /// max |out - ref| / max |ref| over the step (infinite if any output is NaN).
    pub out: f64,
    /// max |lse - ref| / max(|ref|, 1) over rows with keys (infinite if an empty row's
    /// LSE is not -inf, or the other way round).
    pub lse: f64,
    /// Rows checked.
    pub rows: usize,
}

/// The f64 reference of every (step, layer) of a run, from its own copy of every
/// sequence's full K/V history per layer (never evicted: a ring that dropped a key the
/// pattern allows would show as a mismatch).
#[derive(Clone, Debug, Default)]
pub struct ReferenceCheck {
    /// `history[(request, layer)]` = (keys, values), `[len, num_kv_heads, head_dim]` in f32.
    history: std::collections::HashMap<(usize, usize), (Vec<f32>, Vec<f32>)>,
    /// (step, layer) pairs checked.
    pub checked: usize,
    /// The worst errors over every checked pair.
    pub worst: StepError,
}

impl ReferenceCheck {
    /// A checker with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the step's new keys and values, recomputes the layer's step with
    /// [`reference::attention`] and returns its errors (also folded into [`Self::worst`]).
    pub fn check<T: Element>(&mut self, s: &LayerStep<'_, T>) -> Result<StepError> {
        let p = s.plan.problem();
        let (h, hk, d) = (p.num_heads(), p.num_kv_heads(), p.head_dim().get() as usize);
        let mut lens = Vec::with_capacity(s.requests.len());
        let (mut k_all, mut v_all) = (Vec::new(), Vec::new());
        for (b, r) in s.requests.iter().enumerate() {
            let (q_len, kv_len) = s.seqs.lens(b);
            let (q0, _) = s.seqs.offsets(b);
            let Some(r) = *r else {
                lens.push((0, 0));
                continue;
            };
            let hist = self.history.entry((r, s.layer)).or_default();
            let rows = q0 * hk * d..(q0 + q_len) * hk * d;
            hist.0.extend(s.k[rows.clone()].iter().map(|x| x.to_f32()));
            hist.1.extend(s.v[rows].iter().map(|x| x.to_f32()));
            if hist.0.len() != kv_len * hk * d {
                return Err(Error::Shape(format!(
                    "request {r} layer {}: {} cached keys in the history, the step says {kv_len}",
                    s.layer,
                    hist.0.len() / (hk * d)
                )));
            }
            k_all.extend_from_slice(&hist.0);
            v_all.extend_from_slice(&hist.1);
            lens.push((q_len, kv_len));
        }
        let seqs = SeqLens::varlen_from_lens(&lens)?;
        let problem = AttnProblem::new(seqs.clone(), h, hk, d as u32, p.dtype())?;
        let q: Vec<f32> = s.q.iter().map(|x| x.to_f32()).collect();
        let patterns: &HeadPatterns = s.plan.patterns();
        let want = reference::attention(
            &problem,
            &RefInputs {
                q: &q,
                k: &k_all,
                v: &v_all,
                scale: s.plan.scale(),
                softcap: s.plan.softcap(),
                sink_logits: s.plan.sink_logits(),
                alibi_slopes: s.plan.alibi_slopes(),
            },
            |b, head, i, j| {
                let (q_len, kv_len) = seqs.lens(b);
                let pos = i as i64 + kv_len as i64 - q_len as i64;
                patterns.allowed(head, pos, j as i64, kv_len)
            },
        );
        if s.out.len() != want.out.len() || s.lse.len() != want.lse.len() {
            return Err(Error::Shape(format!(
                "step {} layer {}: out/lse have {}/{} elements, the reference {}/{}",
                s.step,
                s.layer,
                s.out.len(),
                s.lse.len(),
                want.out.len(),
                want.lse.len()
            )));
        }
        let scale = want.out.iter().fold(0.0f64, |m, w| m.max(w.abs()));
        let mut e = StepError {
            rows: seqs.totals().0,
            ..StepError::default()
        };
        for (g, w) in s.out.iter().zip(&want.out) {
            let g = g.to_f32() as f64;
            let err = if g.is_nan() {
                f64::INFINITY
            } else {
                (g - w).abs()
            };
            e.out = e.out.max(if scale > 0.0 { err / scale } else { err });
        }
        for (&g, &w) in s.lse.iter().zip(&want.lse) {
            let g = g as f64;
            let err = if w == f64::NEG_INFINITY || g == f64::NEG_INFINITY {
                if g == w {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else if g.is_nan() {
                f64::INFINITY
            } else {
                (g - w).abs() / w.abs().max(1.0)
            };
            e.lse = e.lse.max(err);
        }
        self.checked += 1;
        self.worst.out = self.worst.out.max(e.out);
        self.worst.lse = self.worst.lse.max(e.lse);
        self.worst.rows += e.rows;
        Ok(e)
    }
}
