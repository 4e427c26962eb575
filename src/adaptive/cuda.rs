//! Adaptive plans on a GPU: the launches of [`AdaptivePlan::run_emulated`] (summaries, scores,
//! selection, compaction, forward) queued on one stream, into the plan's uploaded buffers.
//!
//! Untested on hardware so far (no GPU has been lent to this project): the GPU test
//! (tests/adaptive_gpu.rs) compares this path with the emulator's and skips without a GPU.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};

use super::device::{DeviceSelect, ScoreLayout, SelectAddrs, SelectCapacity, SelectLens};
use super::plan::{AdaptivePlan, AdaptiveRun};
use super::scoring::{self, ScoreAddrs, ScoreExtents, SummaryIndex};
use super::select::GivenScores;
use crate::attention::Element;
use crate::backend::cuda::{Gpu, GpuPlan};
use crate::error::{Error, Result};
use crate::kv_cache::summary::{self, KeySource, SummaryLayout};
use crate::shape::{AttnProblem, SeqLens};

/// An [`AdaptivePlan`] whose metadata lives on one GPU ([`AdaptivePlan::into_gpu`]).
pub struct GpuAdaptivePlan {
    plan: AdaptivePlan,
    fwd: GpuPlan<'static>,
}

impl AdaptivePlan {
    /// Uploads the plan's forward metadata (at capacity) to `gpu`.
    pub fn into_gpu(self, gpu: &Gpu) -> Result<GpuAdaptivePlan> {
        let fwd = self.attn().clone().into_gpu(gpu)?;
        Ok(GpuAdaptivePlan { plan: self, fwd })
    }
}

impl GpuAdaptivePlan {
    /// The plan this was uploaded from.
    pub fn plan(&self) -> &AdaptivePlan {
        &self.plan
    }

    /// One call from and to host memory, as [`AdaptivePlan::run_emulated`] on the emulator:
    /// uploads q, k, v (packed varlen tensors of `seqs`), the lengths and `given` scores, queues
    /// the summarize, scoring, selection, compaction and forward launches on the GPU's stream,
    /// and copies out, lse and the applied selection bits back (synchronising). Every length and
    /// the given scores are checked first.
    pub fn run_host<T: Element + DeviceRepr + ValidAsZeroBits>(
        &self,
        seqs: &SeqLens,
        q: &[T],
        k: &[T],
        v: &[T],
        given: Option<GivenScores<'_>>,
    ) -> Result<AdaptiveRun<T>> {
        let plan = &self.plan;
        let attn = plan.attn();
        attn.check_step::<T>(seqs)?;
        let p = attn.problem();
        let (h, hk, d) = (p.num_heads(), p.num_kv_heads(), p.head_dim().get());
        let problem = AttnProblem::new(seqs.clone(), h, hk, d, p.dtype())?;
        if q.len() != problem.q_elems() || k.len() != problem.kv_elems() || v.len() != k.len() {
            return Err(Error::Shape(format!(
                "adaptive call: q, k, v have {}, {}, {} elements; the lengths need {} and {}",
                q.len(),
                k.len(),
                v.len(),
                problem.q_elems(),
                problem.kv_elems()
            )));
        }
        let sel = plan.component();
        let l = plan.layout();
        let cap = SelectCapacity {
            max_groups: l.max_groups,
            max_blocks: l.max_blocks,
        };
        let gpu = self.fwd.gpu();
        let stream = gpu.stream();
        let (cu_q, cu_k) = seqs.cu_seqlens();
        let (qb, kb, vb) = (
            stream.clone_htod(q)?,
            stream.clone_htod(k)?,
            stream.clone_htod(v)?,
        );
        let (cqb, ckb) = (stream.clone_htod(&cu_q)?, stream.clone_htod(&cu_k)?);
        let (q_ptr, _gq) = qb.device_ptr(stream);
        let (k_ptr, _gk) = kb.device_ptr(stream);
        let (cq_ptr, _gcq) = cqb.device_ptr(stream);
        let (ck_ptr, _gck) = ckb.device_ptr(stream);
        let meta = self.fwd.meta_addrs();
        // Scores in the plan's capacity: the caller's placed there, or computed on the device.
        let (scores, score_heads): (CudaSlice<f32>, usize) =
            match plan.given_scores(&problem, given)? {
                Some((placed, heads)) => (stream.clone_htod(&placed)?, heads),
                None => {
                    let (_, max_kv) = p.seqs().max_lens();
                    let layout = SummaryLayout::identity(hk, d as usize, sel.block() as usize)?;
                    let seq_blocks = max_kv.div_ceil(layout.block).max(1);
                    let mut pool = stream.clone_htod(&layout.empty_pool(l.batch * seq_blocks))?;
                    let mut out =
                        stream.alloc_zeros::<f32>(l.batch * h * cap.max_groups * cap.max_blocks)?;
                    {
                        let (pool_ptr, _gp) = pool.device_ptr_mut(stream);
                        let summarize = summary::summarize_launch(
                            p.dtype(),
                            &layout,
                            pool_ptr,
                            seq_blocks,
                            l.batch,
                            max_kv,
                            false,
                            KeySource::Contiguous {
                                k: k_ptr,
                                cu_seqlens_k: ck_ptr,
                            },
                        )?;
                        let (out_ptr, _go) = out.device_ptr_mut(stream);
                        let score = scoring::score_launch(
                            &problem,
                            sel,
                            plan.grouping(),
                            attn.scale(),
                            &layout,
                            SummaryIndex::Identity { seq_blocks },
                            ScoreExtents {
                                max_groups: cap.max_groups,
                                max_blocks: cap.max_blocks,
                            },
                            &ScoreAddrs {
                                q: q_ptr,
                                scores: out_ptr,
                                cu_seqlens_q: cq_ptr,
                                cu_seqlens_k: ck_ptr,
                                summaries: pool_ptr,
                                block_table: 0,
                            },
                        )?;
                        // SAFETY: keys, lengths and the pool are this call's device buffers, sized
                        // for the validated lengths (the pool for `seq_blocks` summary blocks of
                        // every sequence); the scores hold the plan's capacity.
                        unsafe {
                            gpu.launch(&summarize)?;
                            gpu.launch(&score)?;
                        }
                    }
                    (out, h)
                }
            };
        let ds = DeviceSelect::new(
            sel,
            plan.grouping(),
            l.batch,
            h,
            hk,
            cap,
            ScoreLayout::contiguous(score_heads, &cap),
        )?;
        let (scores_ptr, _gs) = scores.device_ptr(stream);
        let select = ds.launch(
            SelectLens::Varlen {
                cu_seqlens_q: cq_ptr,
                cu_seqlens_k: ck_ptr,
            },
            &SelectAddrs {
                scores: scores_ptr,
                bits: meta.0[9],
                counts: 0,
            },
        )?;
        let lists = plan.lists_launch(&meta, cq_ptr, ck_ptr);
        // SAFETY: the selection writes the plan's bits (its mask data, `bits_len` words, the
        // layout DeviceSelect was sized for) from scores of the plan's capacity; the
        // compaction writes the plan's lists, views, ends and components at the capacity
        // their arrays were uploaded with, reading this call's lengths.
        unsafe {
            gpu.launch(&select)?;
            gpu.launch(&lists)?;
        }
        let total_q = seqs.totals().0;
        let capacity = p.seqs().totals().0;
        let mut out = stream.alloc_zeros::<T>(total_q * h * d as usize)?;
        let mut lse = stream.alloc_zeros::<f32>(capacity * h)?;
        self.fwd.run_step_strided(
            seqs,
            &qb,
            &kb,
            &vb,
            &mut out,
            Some(lse.as_view_mut()),
            &attn.packed_layout(),
        )?;
        let out_h = stream.clone_dtoh(&out)?;
        let lse_h = stream.clone_dtoh(&lse)?;
        let bits = stream.clone_dtoh(self.fwd.meta_buffer(9))?;
        stream.synchronize()?;
        // [num_heads, capacity] -> [num_heads, total_q], as the emulated run returns it.
        let lse = lse_h
            .chunks(capacity.max(1))
            .flat_map(|row| row[..total_q].iter().copied())
            .collect();
        Ok(AdaptiveRun {
            out: out_h,
            lse,
            bits: bits[..l.bits_len()].to_vec(),
        })
    }
}
