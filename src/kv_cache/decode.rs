//! A decode driver over the paged cache (issue #6): chunked prefill, then one token at a time,
//! every step appending its K/V to a [`KvCache`] and attending through the cache's block
//! table on the emulator ([`AttnPlan::run_emulated_paged`]).
//!
//! The result is, row for row, what one forward pass over all `T` tokens gives with the same
//! causal pattern (docs/patterns.md, "Positions": a step's queries are the last `q_len` tokens).

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

use super::append::DeviceKvStorage;
use super::cache::{KvCache, KvCacheConfig, Placement, PoolSize, SeqId};
use super::capacity::LayerCapacity;
use super::host::HostKvStorage;
use super::layout::PageSize;
use super::table::BlockTable;
use crate::attention::{AttnPlan, Element, EmuRun};
use crate::backend::{Gpu, GpuPlan};
use crate::error::{Error, Result};
use crate::pattern::HeadPatterns;
use crate::shape::{AttnOptions, AttnProblem, SeqLens};

/// How [`decode_emulated`] feeds the tokens to the cache, and the layer's score settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecodeConfig {
    /// Tokens per page: a power of two in `8..=256`.
    pub page_size: usize,
    /// Tokens of each sequence prefilled (in chunks) before decoding starts; `0..=T`.
    pub prefill: usize,
    /// Most tokens one prefill step appends and attends (the cache's `max_chunk`, which
    /// sizes the rings); `None`: the whole prefill in one step.
    pub chunk: Option<usize>,
    /// Score scale (default `1 / sqrt(head_dim)`).
    pub scale: Option<f32>,
    /// Tanh soft-capping of the scores (default off).
    pub softcap: Option<f32>,
    /// Learnable sink logits, one per query head ([`AttnOptions::sink_logits`]).
    pub sink_logits: Option<Vec<f32>>,
    /// ALiBi slopes, one per query head ([`AttnOptions::alibi_slopes`]).
    pub alibi_slopes: Option<Vec<f32>>,
}

/// What [`decode_emulated`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeOutput<T> {
    /// `[batch, T, num_heads, head_dim]`: prefill rows, then one row per decode step.
    pub out: Vec<T>,
    /// `[batch, num_heads, T]`.
    pub lse: Vec<f32>,
    /// Pages the sequences hold at the end.
    pub pages_used: usize,
    /// Bytes of K and V in those pages.
    pub bytes_used: u64,
    /// Bytes of the cache's whole pool (what a storage allocates).
    pub pool_bytes: u64,
    /// Bytes a dense, unpaged cache of the batch's `T` tokens would hold.
    pub dense_bytes: u64,
    /// Steps run (prefill chunks plus decode steps).
    pub steps: usize,
    /// Plans built: one per run ([`AttnPlan::for_max_lengths`]); every step reuses it.
    pub plans_built: usize,
}

/// Checks that every head's pattern is causal (a paged decode only ever has the keys up to
/// the newest query): `Error::Pattern` names the first head that is not.
pub fn check_causal(set: &HeadPatterns) -> Result<()> {
    let patterns = match set {
        HeadPatterns::All(p) => std::slice::from_ref(p),
        HeadPatterns::PerHead(v) => v.as_slice(),
    };
    match patterns.iter().position(|p| !p.causal) {
        None => Ok(()),
        Some(h) => Err(Error::Pattern(if matches!(set, HeadPatterns::All(_)) {
            "decode needs a causal pattern (\"causal\": true)".to_string()
        } else {
            format!("decode needs a causal pattern on every head; head {h} is not causal")
        })),
    }
}

/// Runs `problem` (uniform, `q_len == kv_len == T`) as a prefill of `config.prefill` tokens
/// in chunks of at most `config.chunk`, then `T - prefill` decode steps of one token, through
/// a fresh one-layer [`KvCache`] sized by [`LayerCapacity::from_patterns`] and a
/// [`HostKvStorage`], on the emulator. `q` is `[batch, T, num_heads, head_dim]`, `k` and `v`
/// `[batch, T, num_kv_heads, head_dim]`.
///
/// Each step appends the step's K/V rows for every sequence, then runs its queries against
/// the cache through one run-time plan ([`AttnPlan::for_max_lengths`], compiled once for the
/// longest step over all `T` keys) at the step's lengths (`q_len = step tokens`, `kv_len =
/// tokens so far`): no plan is built per step. The decode steps (one token) run the plan's
/// step plan ([`AttnPlan::step_plan`]: one-warp blocks of 16 rows) where the step tile
/// applies, the prefill chunks its own kernel.
///
/// Errors: a pattern that is not causal on every head, or does not fit the shapes
/// (`Error::Pattern`); a non-uniform problem, `q_len != kv_len`, `T == 0`, `prefill > T`,
/// wrong tensor lengths, a non-finite scale or softcap, sink logits or ALiBi slopes that are
/// not one finite value per query head (`Error::Shape`); a bad page size or chunk
/// (`Error::Cache`).
pub fn decode_emulated<T: Element>(
    problem: &AttnProblem,
    patterns: &HeadPatterns,
    config: &DecodeConfig,
    q: &[T],
    k: &[T],
    v: &[T],
    run: &EmuRun,
) -> Result<DecodeOutput<T>> {
    decode_with(problem, patterns, config, q, k, v, |cache| {
        Ok(EmuSteps {
            store: HostKvStorage::<T>::new(cache)?,
            run,
        })
    })
}

/// [`decode_emulated`] on a GPU: the K/V of each step go into the cache's pages with the
/// append kernel ([`super::DeviceKvStorage`]) and every step runs the forward kernel through
/// the block table with the run's one plan, uploaded once
/// ([`crate::backend::GpuPlan::run_paged_step`]).
pub fn decode_cuda<T: Element + DeviceRepr + ValidAsZeroBits>(
    gpu: &Gpu,
    problem: &AttnProblem,
    patterns: &HeadPatterns,
    config: &DecodeConfig,
    q: &[T],
    k: &[T],
    v: &[T],
) -> Result<DecodeOutput<T>> {
    decode_with(problem, patterns, config, q, k, v, |cache| {
        Ok(CudaSteps {
            store: DeviceKvStorage::<T>::new(gpu, cache)?,
            gpu,
            uploaded: None,
        })
    })
}

/// Where a decode run keeps its pages and runs its steps.
trait StepBackend<T> {
    /// Writes one sequence's new K/V rows (`[placement.len, kv_heads, head_dim]`).
    fn write(&mut self, placement: &Placement, k_rows: &[T], v_rows: &[T]) -> Result<()>;
    /// Runs one step's queries (lengths `seqs`) against the cache through `table` with the
    /// run's one plan; returns (out `[total_q, num_heads, head_dim]`, lse `[num_heads,
    /// total_q]`).
    fn attend(
        &mut self,
        plan: &AttnPlan,
        seqs: &SeqLens,
        q: &[T],
        table: &BlockTable,
    ) -> Result<(Vec<T>, Vec<f32>)>;
}

struct EmuSteps<'r, T> {
    store: HostKvStorage<T>,
    run: &'r EmuRun<'r>,
}

impl<T: Element> StepBackend<T> for EmuSteps<'_, T> {
    fn write(&mut self, placement: &Placement, k_rows: &[T], v_rows: &[T]) -> Result<()> {
        self.store.write_kv(0, placement, k_rows, v_rows)
    }
    fn attend(
        &mut self,
        plan: &AttnPlan,
        seqs: &SeqLens,
        q: &[T],
        table: &BlockTable,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        let kv = self.store.paged_kv(0, table)?;
        plan.run_emulated_paged_step(seqs, q, &kv, self.run)
    }
}

struct CudaSteps<'g, T> {
    store: DeviceKvStorage<T>,
    gpu: &'g Gpu,
    /// The run's one plan on the device, uploaded at the first step and reused by all.
    uploaded: Option<GpuPlan<'static>>,
}

impl<T: Element + DeviceRepr + ValidAsZeroBits> StepBackend<T> for CudaSteps<'_, T> {
    fn write(&mut self, placement: &Placement, k_rows: &[T], v_rows: &[T]) -> Result<()> {
        let stream = self.gpu.stream();
        let (kd, vd) = (stream.clone_htod(k_rows)?, stream.clone_htod(v_rows)?);
        self.store.write_kv(0, placement, &kd, &vd)
    }
    fn attend(
        &mut self,
        plan: &AttnPlan,
        seqs: &SeqLens,
        q: &[T],
        table: &BlockTable,
    ) -> Result<(Vec<T>, Vec<f32>)> {
        let stream = self.gpu.stream();
        let p = plan.problem();
        let total_q = seqs.totals().0;
        let capacity = p.seqs().totals().0;
        let qd = stream.clone_htod(q)?;
        let mut out = stream.alloc_zeros::<T>(q.len())?;
        let mut lse = stream.alloc_zeros::<f32>(capacity * p.num_heads())?;
        let kv = self.store.paged(0, table)?;
        // Every step of a run passes the run's one plan: its metadata goes to the device once.
        let gplan = match &mut self.uploaded {
            Some(g) => g,
            slot => slot.insert(plan.clone().into_gpu(self.gpu)?),
        };
        debug_assert_eq!(gplan.plan().kernel().name, plan.kernel().name);
        gplan.run_paged_step(seqs, &qd, &kv, &mut out, &mut lse)?;
        // [num_heads, capacity] -> [num_heads, total_q]
        let lse: Vec<f32> = stream
            .clone_dtoh(&lse)?
            .chunks(capacity.max(1))
            .flat_map(|row| row[..total_q].iter().copied())
            .collect();
        Ok((stream.clone_dtoh(&out)?, lse))
    }
}

fn decode_with<T: Element, B: StepBackend<T>>(
    problem: &AttnProblem,
    patterns: &HeadPatterns,
    config: &DecodeConfig,
    q: &[T],
    k: &[T],
    v: &[T],
    make_backend: impl FnOnce(&KvCache) -> Result<B>,
) -> Result<DecodeOutput<T>> {
    check_causal(patterns)?;
    let (batch, total) = match *problem.seqs() {
        SeqLens::Uniform {
            batch,
            q_len,
            kv_len,
        } if q_len == kv_len => (batch, q_len),
        SeqLens::Uniform { q_len, kv_len, .. } => {
            return Err(Error::Shape(format!(
                "decode needs q_len == kv_len (got q_len {q_len}, kv_len {kv_len})"
            )))
        }
        SeqLens::Varlen { .. } => {
            return Err(Error::Shape(
                "decode takes a uniform batch (every sequence T tokens)".into(),
            ))
        }
    };
    if total == 0 {
        return Err(Error::Shape("decode needs at least one token".into()));
    }
    if config.prefill > total {
        return Err(Error::Shape(format!(
            "prefill {} is longer than the sequence ({total} tokens)",
            config.prefill
        )));
    }
    let chunk = config.chunk.unwrap_or(config.prefill).max(1);
    if config.chunk == Some(0) {
        return Err(Error::Cache(
            "the prefill chunk must be at least 1 token".into(),
        ));
    }
    patterns.validate(problem.num_heads(), total)?;
    if T::DTYPE != problem.dtype() {
        return Err(Error::Shape(format!(
            "element type {} does not match the problem's {}",
            T::DTYPE.name(),
            problem.dtype().name()
        )));
    }
    let (h, hk, d) = (
        problem.num_heads(),
        problem.num_kv_heads(),
        problem.head_dim().get() as usize,
    );
    for (name, got, want) in [
        ("q", q.len(), problem.q_elems()),
        ("k", k.len(), problem.kv_elems()),
        ("v", v.len(), problem.kv_elems()),
    ] {
        if got != want {
            return Err(Error::Shape(format!(
                "{name} has {got} elements, the problem needs {want}"
            )));
        }
    }
    let opts = AttnOptions {
        causal: false,
        scale: config.scale,
        softcap: config.softcap,
        sink_logits: config.sink_logits.clone(),
        alibi_slopes: config.alibi_slopes.clone(),
    };
    // Checked here, before any cache exists, rather than by the first step's plan.
    opts.resolve(problem.head_dim())?;
    opts.check_head_vectors(h)?;

    let page_size = PageSize::new(config.page_size)?;
    let capacity = LayerCapacity::from_patterns(patterns, page_size, chunk)?;
    let mut cache = KvCache::new(
        KvCacheConfig {
            num_layers: 1,
            num_kv_heads: hk,
            head_dim: d,
            dtype: problem.dtype(),
            page_size: config.page_size,
            max_seq_len: total,
            max_chunk: chunk,
            pool: PoolSize::Sequences(batch),
        },
        vec![capacity],
    )?;
    let mut backend = make_backend(&cache)?;
    let seqs: Vec<SeqId> = (0..batch).map(|_| cache.add_sequence()).collect();

    let mut out = vec![T::default(); problem.q_elems()];
    let mut lse = vec![0.0f32; problem.lse_elems()];
    let (q_row, kv_row) = (h * d, hk * d);
    // One plan for the whole run: compiled for the longest step (a prefill chunk, or one
    // token) over all T keys; every step derives its tile walk from its own lengths.
    let max_step = chunk.min(config.prefill).max(1);
    let plan = AttnPlan::for_max_lengths(
        &AttnProblem::new(
            SeqLens::Uniform {
                batch,
                q_len: max_step,
                kv_len: total,
            },
            h,
            hk,
            d as u32,
            problem.dtype(),
        )?,
        patterns,
        &opts,
    )?;
    let mut steps = 0usize;
    let mut start = 0usize;
    while start < total {
        let n = if start < config.prefill {
            chunk.min(config.prefill - start)
        } else {
            1
        };
        let end = start + n;
        for (b, &seq) in seqs.iter().enumerate() {
            let placement = cache.reserve_append(seq, n)?;
            let rows = (b * total + start) * kv_row..(b * total + end) * kv_row;
            backend.write(&placement, &k[rows.clone()], &v[rows])?;
        }
        let step = SeqLens::Uniform {
            batch,
            q_len: n,
            kv_len: end,
        };
        let step_q: Vec<T> = (0..batch)
            .flat_map(|b| q[(b * total + start) * q_row..(b * total + end) * q_row].iter())
            .copied()
            .collect();
        let table = cache.block_table(0, &seqs)?;
        let (o, l) = backend.attend(&plan, &step, &step_q, &table)?;
        for b in 0..batch {
            out[(b * total + start) * q_row..(b * total + end) * q_row]
                .copy_from_slice(&o[b * n * q_row..(b + 1) * n * q_row]);
            for head in 0..h {
                // lse of the step: [num_heads, batch * n] (varlen rows).
                let dst = (b * h + head) * total + start;
                let src = head * batch * n + b * n;
                lse[dst..dst + n].copy_from_slice(&l[src..src + n]);
            }
        }
        steps += 1;
        start = end;
    }
    Ok(DecodeOutput {
        out,
        lse,
        pages_used: cache.total_pages_used(),
        bytes_used: cache.total_bytes_used(),
        pool_bytes: cache.pool_bytes(0)?,
        dense_bytes: cache.dense_bytes(total).saturating_mul(batch as u64),
        steps,
        plans_built: 1,
    })
}
