// Split-KV combine: merges the partial outputs of the num_splits blocks that shared one query
// tile's kv walk (see write_partial in attention_fwd.cuh) through their LSE with
// SoftmaxRows::merge, the same operation that folds kv tiles: each partial is the state
// (m = lse, l = 1) of a normalised output, so out = sum_s w_s O_s / sum_s w_s with
// w_s = exp(lse_s - max lse) and lse = max lse + ln(sum_s w_s). Splits that saw no allowed
// key have lse = -inf and weight 0; a row no split saw gets out = 0, lse = -inf (with sink
// logits: out = 0, lse = the head's sink logit, the one term its denominator then holds).
#pragma once

#include "sparse_attn/arch.cuh"
#include "sparse_attn/online_softmax.cuh"
#include "sparse_attn/params.h"
#include "sparse_attn/split_kv.cuh"

namespace sa {

constexpr int kCombineThreads = SA_COMBINE_THREADS;  // one warp per (row, head) pair

template <typename T, int D>
SA_DEVICE void attn_combine(const SaAttnFwdParams& p) {
  static_assert(D % 32 == 0, "each lane owns D / 32 columns");
  const int warp = threadIdx.x / 32, lane = static_cast<int>(arch::lane_id());
  const bool varlen = p.cu_seqlens_q != nullptr;
  const int64_t total_rows = split_rows(p);
  const int64_t pair = int64_t(blockIdx.x) * (kCombineThreads / 32) + warp;
  if (pair >= total_rows * p.num_heads) return;
  const int64_t row = pair / p.num_heads;
  const int h = static_cast<int>(pair % p.num_heads);

  // The row's whole state first: lane i folds the LSEs of splits i, i + 32, ... and a
  // butterfly of merges gives every lane the sum (ceil(num_splits / 32) loads in a chain
  // instead of num_splits). Then out = sum_s w_s O_s with w_s the weight merge gives split s
  // against that state, kSplitsInFlight splits per step with all their loads issued before
  // any is used (guarded: a step past the last split loads nothing and weighs 0).
  SoftmaxRows<1> state;
  state.init();
  SA_NO_UNROLL
  for (int s = lane; s < p.num_splits; s += 32) {
    const float lse_s[1] = {p.lse_partial[split_slot(p, total_rows, s, row, h)]};
    float keep[1], add[1];
    state.merge(SoftmaxRows<1>::from_lse(lse_s), keep, add);
  }
  state.reduce_warp();
  constexpr int kSplitsInFlight = D <= 128 ? 8 : 4;  // D / 32 loads each: up to 32 per lane
  float acc[D / 32];
  SA_UNROLL
  for (int c = 0; c < D / 32; ++c) acc[c] = 0.f;
  SA_NO_UNROLL
  for (int s0 = 0; s0 < p.num_splits; s0 += kSplitsInFlight) {
    float lse_s[kSplitsInFlight][1], part[kSplitsInFlight][D / 32];
    SA_UNROLL
    for (int k = 0; k < kSplitsInFlight; ++k) {
      const bool live = s0 + k < p.num_splits;
      const int64_t slot = split_slot(p, total_rows, s0 + k, row, h);
      lse_s[k][0] = live ? p.lse_partial[slot] : kNegInf;
      const float* o = p.o_partial + slot * D;
      SA_UNROLL
      for (int c = 0; c < D / 32; ++c) part[k][c] = live ? o[lane + 32 * c] : 0.f;
    }
    SA_UNROLL
    for (int k = 0; k < kSplitsInFlight; ++k) {
      float w[1];
      state.scales_of(SoftmaxRows<1>::from_lse(lse_s[k]), w);
      SA_UNROLL
      for (int c = 0; c < D / 32; ++c) acc[c] = fmaf(w[0], part[k][c], acc[c]);
    }
  }
  // Learnable sink logits enter here, once per row (the partials exclude them).
  float inv_l[1], lse[1];
  if (p.sink_logits != nullptr) {
    const float sink[1] = {p.sink_logits[h]};
    state.normalizers(sink, inv_l, lse);
  } else {
    state.normalizers(inv_l, lse);
  }

  int64_t o_off, lse_off;
  if (varlen) {
    o_off = row * p.o_row_stride;
    lse_off = h * p.lse_head_stride + row * p.lse_row_stride;
  } else {
    const int64_t b = row / p.q_len, i = row % p.q_len;
    o_off = b * p.o_batch_stride + i * p.o_row_stride;
    lse_off = b * p.lse_batch_stride + h * p.lse_head_stride + i * p.lse_row_stride;
  }
  T* out = static_cast<T*>(p.out) + o_off + h * p.o_head_stride;
  SA_UNROLL
  for (int c = 0; c < D / 32; ++c) out[lane + 32 * c] = arch::from_float<T>(acc[c] * inv_l[0]);
  if (lane == 0 && p.lse != nullptr) p.lse[lse_off] = lse[0];
}

}  // namespace sa
