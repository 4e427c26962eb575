// The adaptive scoring kernel's body (SaAdaptiveScoreParams in params.h; entry points in
// kernels/adaptive_score.cu, deliberately broken variants in
// kernels/tests/adaptive_score_canary.cu). The f64 reference is
// sparse_attn::adaptive::Selection. Block (group, query head, sequence). CUDA cores, f32:
// each thread owns one kv block J of a tile of SA_SCORE_THREADS blocks and holds
// SA_SCORE_CHANNELS channels of its summary in registers; the group's query rows are staged
// in shared memory the same channels at a time, kRows rows per step, and read by every thread
// as broadcasts, so each register of the summary feeds kRows multiply-adds. Scores fold over
// the rows in ascending order in each thread: no atomics, bit-identical under every schedule.
#pragma once

#include "sparse_attn/arch.cuh"
#include "sparse_attn/kv_summary.cuh"
#include "sparse_attn/params.h"
#include "sparse_attn/params_layout.h"  // layout asserted against the Rust mirror

namespace sa {
namespace score {

// Deliberate bugs for the tests (kernels/tests/adaptive_score_canary.cu), None in production.
enum class ScoreCanary {
  None,
  // Block J reads the summaries of block J + 1.
  WrongBlock,
  // minmax reads the channel maxima where it means the minima.
  MaxAsMin,
};

constexpr int kThreads = SA_SCORE_THREADS;
constexpr int kChannels = SA_SCORE_CHANNELS;
// Shared memory: the query tile [kChannels][rows] (f32, at most SA_SCORE_ROWS_PREFILL rows),
// then the pooled query mean [head_dim] (f32, head_dim <= 512).
constexpr int kTileBytes = kChannels * SA_SCORE_ROWS_PREFILL * 4;
constexpr int kMaxHeadDim = 512;
static_assert(SA_SCORE_SMEM_BYTES == kTileBytes + 4 * kMaxHeadDim, "scoring smem layout");

// floor(a / b) for b > 0 (positions are negative when q_len > kv_len).
SA_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Query rows lo .. hi (inclusive) of group g; lo > hi when the group does not exist.
SA_HOST_DEVICE void group_rows(int grouping, int q_block, int q_len, int kv_len, int g, int& lo,
                               int& hi) {
  if (grouping == SA_GROUPING_DECODE) {
    lo = g;
    hi = g < q_len ? g : g - 1;
    return;
  }
  const int64_t off = int64_t(kv_len) - q_len;  // p_i = i + off
  const int64_t first = (floor_div(off, q_block) + g) * q_block - off;
  const int64_t last = first + q_block - 1;
  lo = int(first < 0 ? 0 : first);
  hi = int(last < q_len - 1 ? last : q_len - 1);
  if (first >= q_len) hi = lo - 1;
}

// What one (sequence, head, group) block reads.
struct Group {
  const uint16_t* q;         // row 0 of this head's queries (as 16-bit storage)
  int64_t row_stride;
  int lo, hi;                // the group's rows
  int64_t pos_offset;        // p_i = i + pos_offset
  int kv_len;
  int n_cand;                // candidates: J < n_cand
  const int32_t* table_row;  // paged: the sequence's block-table row; identity: nullptr
  int b, kv_head;
};

// Stages channels c0 .. c0 + kChannels of rows r0 .. r0 + kRows (zero past the group) as
// tile[c][r]; pooled: the mean query from `qbar`. Between two barriers of the caller.
template <typename T, int kRows>
SA_DEVICE void stage_queries(const Group& gr, bool pooled, int r0, int c0, Smem tile, Smem qbar) {
  for (int e = threadIdx.x; e < kChannels * kRows; e += kThreads) {
    const int r = e / kChannels, c = e % kChannels;
    float v;
    if (pooled) {
      v = arch::lds<float>(qbar + 4 * (c0 + c));
    } else {
      const int i = gr.lo + r0 + r;
      v = i <= gr.hi ? arch::to_float(T{gr.q[int64_t(i) * gr.row_stride + c0 + c]}) : 0.f;
    }
    arch::sts(tile + 4 * (c * kRows + r), v);
  }
}

// Channels c0 .. c0 + kChannels of block J's summary, combined over its summary blocks:
// mean (a) for mean_k / pooled_qk, or min (a) and max (m) for minmax. n: present keys.
template <ScoreCanary kCanary>
SA_DEVICE void load_block(const SaAdaptiveScoreParams& p, const Group& gr, int J, int c0,
                          bool minmax, float (&a)[kChannels], float (&m)[kChannels], int& n) {
  const SaKvSummaries& s = p.summaries;
  const int d = p.head_dim;
  SA_UNROLL
  for (int c = 0; c < kChannels; ++c) {
    a[c] = minmax ? kSummaryPosInf : 0.f;
    m[c] = kSummaryNegInf;
  }
  n = 0;
  const int first = (kCanary == ScoreCanary::WrongBlock ? J + 1 : J) << p.log2_block;
  SA_NO_UNROLL
  for (int pos = first; pos < first + p.block && pos < gr.kv_len; pos += s.block) {
    const int64_t at = summary_offset(s, p.paged, gr.table_row, gr.b, gr.kv_head, d, pos, gr.kv_len);
    if (at < 0) continue;  // evicted: not part of what the block holds
    const int rest = gr.kv_len - pos;
    n += rest < s.block ? rest : s.block;
    const float* base = s.data + at + c0;
    SA_UNROLL
    for (int c = 0; c < kChannels; c += 4) {
      if (minmax) {
        const int min_at = kCanary == ScoreCanary::MaxAsMin ? 2 * d : d;
        const float4 lo = arch::ldg(reinterpret_cast<const float4*>(base + min_at + c));
        const float4 hi = arch::ldg(reinterpret_cast<const float4*>(base + 2 * d + c));
        a[c] = fminf(a[c], lo.x), a[c + 1] = fminf(a[c + 1], lo.y);
        a[c + 2] = fminf(a[c + 2], lo.z), a[c + 3] = fminf(a[c + 3], lo.w);
        m[c] = fmaxf(m[c], hi.x), m[c + 1] = fmaxf(m[c + 1], hi.y);
        m[c + 2] = fmaxf(m[c + 2], hi.z), m[c + 3] = fmaxf(m[c + 3], hi.w);
      } else {
        const float4 sum = arch::ldg(reinterpret_cast<const float4*>(base + c));
        a[c] += sum.x, a[c + 1] += sum.y, a[c + 2] += sum.z, a[c + 3] += sum.w;
      }
    }
  }
  if (!minmax && n > 0) {
    const float inv_n = float(n);
    SA_UNROLL
    for (int c = 0; c < kChannels; ++c) a[c] = a[c] / inv_n;  // exact when n is a power of two
  }
}

// acc[r] += q_r . a (kMinmax: sum_c max(q_rc a_c, q_rc m_c)) over the staged channels; the
// rows of a channel are read as float4 broadcasts.
template <int kRows, bool kMinmax>
SA_DEVICE void accumulate(Smem tile, const float (&a)[kChannels], const float (&m)[kChannels],
                          float (&acc)[kRows]) {
  SA_UNROLL
  for (int c = 0; c < kChannels; ++c) {
    float q[kRows];
    if constexpr (kRows % 4 == 0) {
      SA_UNROLL
      for (int r = 0; r < kRows; r += 4) {
        const float4 v = arch::lds<float4>(tile + 4 * (c * kRows + r));
        q[r] = v.x, q[r + 1] = v.y, q[r + 2] = v.z, q[r + 3] = v.w;
      }
    } else {
      SA_UNROLL
      for (int r = 0; r < kRows; ++r) q[r] = arch::lds<float>(tile + 4 * (c * kRows + r));
    }
    SA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      acc[r] += kMinmax ? fmaxf(q[r] * a[c], q[r] * m[c]) : q[r] * a[c];
    }
  }
}

template <typename T, int kRows, ScoreCanary kCanary = ScoreCanary::None>
SA_DEVICE void score_group(const SaAdaptiveScoreParams& p) {
  const int g = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const bool varlen = p.cu_seqlens_q != nullptr;
  const int q_len = varlen ? p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b] : p.q_len;
  const int kv_len = varlen ? p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b] : p.kv_len;
  const int d = p.head_dim;
  const bool minmax = p.score == SA_SCORE_MINMAX, pooled = p.score == SA_SCORE_POOLED_QK;

  Group gr;
  group_rows(p.grouping, p.q_block, q_len, kv_len, g, gr.lo, gr.hi);
  gr.pos_offset = int64_t(kv_len) - q_len;
  gr.kv_len = kv_len;
  const int64_t max_p = int64_t(gr.hi) + gr.pos_offset;
  const int64_t by_keys = (int64_t(kv_len) + p.block - 1) >> p.log2_block;
  const int64_t by_pos = gr.lo <= gr.hi && max_p >= 0 ? (max_p >> p.log2_block) + 1 : 0;
  gr.n_cand = int(by_pos < by_keys ? by_pos : by_keys);
  const int64_t q_seq = varlen ? int64_t(p.cu_seqlens_q[b]) * p.q_row_stride
                               : int64_t(b) * p.q_batch_stride;
  gr.q = static_cast<const uint16_t*>(p.q) + q_seq + int64_t(h) * p.q_head_stride;
  gr.row_stride = p.q_row_stride;
  gr.table_row = p.paged.block_table != nullptr
                     ? p.paged.block_table + int64_t(b) * p.paged.block_table_stride
                     : nullptr;
  gr.b = b;
  gr.kv_head = h / (p.num_heads / p.num_kv_heads);
  float* out = p.scores + int64_t(b) * p.score_batch_stride + int64_t(h) * p.score_head_stride +
               int64_t(g) * p.score_group_stride;

  const Smem tile = dynamic_smem();
  const Smem qbar = tile + kTileBytes;
  if (pooled && gr.n_cand > 0) {
    // The group's mean query, folded over the rows in ascending order.
    const float rows = float(gr.hi - gr.lo + 1);
    for (int c = threadIdx.x; c < d; c += kThreads) {
      float sum = 0.f;
      for (int i = gr.lo; i <= gr.hi; ++i) {
        sum += arch::to_float(T{gr.q[int64_t(i) * gr.row_stride + c]});
      }
      arch::sts(qbar + 4 * c, sum / rows);
    }
    __syncthreads();
  }
  const int row_steps = pooled ? 1 : (gr.hi - gr.lo + kRows) / kRows;

  for (int j0 = 0; j0 < p.max_blocks; j0 += kThreads) {
    const int J = j0 + int(threadIdx.x);
    const bool active = J < gr.n_cand;
    float best = kSummaryNegInf;  // minmax: the row maximum; mean_k: the running max
    float total = 0.f;            // mean_k: sum of exp(x - best)
    float result = kSummaryNegInf;
    int n = 0;
    if (j0 < gr.n_cand) {  // uniform: some thread of the tile has a candidate
      for (int step = 0; step < row_steps; ++step) {
        float acc[kRows];
        SA_UNROLL
        for (int r = 0; r < kRows; ++r) acc[r] = 0.f;
        for (int c0 = 0; c0 < d; c0 += kChannels) {
          __syncthreads();  // the previous tile's readers are done
          stage_queries<T, kRows>(gr, pooled, step * kRows, c0, tile, qbar);
          __syncthreads();
          if (!active) continue;
          float a[kChannels], m[kChannels];
          load_block<kCanary>(p, gr, J, c0, minmax, a, m, n);
          if (minmax) {
            accumulate<kRows, true>(tile, a, m, acc);
          } else {
            accumulate<kRows, false>(tile, a, m, acc);
          }
        }
        if (!active || n == 0) continue;
        const float o = logf(float(n) / float(p.block));  // 0 for a full block
        SA_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const int i = gr.lo + step * kRows + r;
          if (pooled) {
            if (r == 0) result = p.scale * acc[0] + o;
            continue;
          }
          if (i > gr.hi) continue;
          const float x = p.scale * acc[r];
          if (minmax) {
            best = fmaxf(best, x);
          } else if ((int64_t(J) << p.log2_block) <= int64_t(i) + gr.pos_offset) {
            const float e = x + o;  // online log-sum-exp over the rows that see the block
            if (e > best) {
              total = total * expf(best - e) + 1.f;
              best = e;
            } else {
              total += expf(e - best);
            }
          }
        }
      }
      if (active && n > 0 && !pooled) {
        result = minmax ? best : (total > 0.f ? best + logf(total) : kSummaryNegInf);
      }
    }
    if (J < p.max_blocks) out[J] = result;
  }
}

}  // namespace score
}  // namespace sa

