// Block summaries of the keys (SaKvSummaries in params.h): where the summary of a key
// position lives, and the fold that builds one. Shared by the append, summarize and scoring
// kernels; src/kv_cache/summary.rs is the Rust twin.
#pragma once

#include "sparse_attn/arch.cuh"
#include "sparse_attn/paged_kv.cuh"
#include "sparse_attn/params.h"

namespace sa {

constexpr float kSummaryPosInf = __builtin_huge_valf();
constexpr float kSummaryNegInf = -__builtin_huge_valf();

// Element offset in SaKvSummaries::data of the summary block holding key position `pos` of
// kv head `head` in sequence `b` (kv_len keys), or -1 when it is not held: a position the
// ring evicted, or a table entry outside the pool. `table_row` is the sequence's row of the
// block table, or nullptr for identity paging. A summary block never straddles a page
// (block divides page_size), so one table read serves all its keys.
SA_HOST_DEVICE int64_t summary_offset(const SaKvSummaries& s, const SaPagedKv& pg,
                                      const int32_t* table_row, int b, int head, int head_dim,
                                      int pos, int kv_len) {
  if (table_row == nullptr) {
    return (int64_t(b) * s.seq_blocks + (pos >> s.log2_block)) * s.page_stride +
           int64_t(head) * s.head_stride;
  }
  if (!paged_resident(pos, kv_len, pg.log2_page_size, pg.sink_pages, pg.ring_pages)) return -1;
  const int page = table_row[paged_slot(pos >> pg.log2_page_size, pg.sink_pages, pg.ring_pages)];
  if (page < 0 || (pg.num_pages > 0 && page >= pg.num_pages)) return -1;
  const int in_page = (pos & ((1 << pg.log2_page_size) - 1)) >> s.log2_block;
  return int64_t(page) * s.page_stride + int64_t(head) * s.head_stride +
         int64_t(in_page) * 3 * head_dim;
}

// One channel of a summary: the f32 sum (folded in ascending position order), min and max.
struct ChannelSummary {
  float sum;
  float mn;
  float mx;

  SA_DEVICE static ChannelSummary empty() { return {0.f, kSummaryPosInf, kSummaryNegInf}; }
  SA_DEVICE void add(float v) {
    sum += v;
    mn = fminf(mn, v);
    mx = fmaxf(mx, v);
  }
  // Channel c of the summary at `at` (head_dim elements per vector).
  SA_DEVICE static ChannelSummary load(const float* at, int head_dim, int c) {
    return {at[c], at[head_dim + c], at[2 * head_dim + c]};
  }
  SA_DEVICE void store(float* at, int head_dim, int c) const {
    at[c] = sum;
    at[head_dim + c] = mn;
    at[2 * head_dim + c] = mx;
  }
};

// Element `i` of a 16-bit tensor of the run-time type `dtype` (SaDType), widened to f32.
SA_DEVICE float load_dtype(const void* base, int64_t i, int dtype) {
  const uint16_t bits = static_cast<const uint16_t*>(base)[i];
  return dtype == SA_DTYPE_BF16 ? arch::to_float(bf16{bits}) : arch::to_float(f16{bits});
}

}  // namespace sa
