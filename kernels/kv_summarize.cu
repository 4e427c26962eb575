// Block summaries of a prefill's keys in one pass (see SaKvSummarizeParams in params.h):
// block (summary block, kv head, sequence); each thread folds its channels over the block's
// keys in ascending order, the same f32 fold as the append kernel's, so a cache summarized
// here and one filled token by token hold the same bits.
#include "sparse_attn/arch.cuh"
#include "sparse_attn/kv_summary.cuh"
#include "sparse_attn/params.h"
#include "sparse_attn/params_layout.h"  // layout asserted against the Rust mirror

namespace sa {
namespace kv_summarize {

template <typename T>
SA_DEVICE void summarize(const SaKvSummarizeParams& p) {
  const int sblock = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const SaKvSummaries& s = p.summaries;
  const bool varlen = p.cu_seqlens_k != nullptr;
  const int kv_len = varlen ? p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b] : p.kv_len;
  const bool paged = p.paged.block_table != nullptr;
  const int first = sblock << s.log2_block;
  if (paged ? first >= kv_len : sblock >= s.seq_blocks) return;
  const int32_t* table_row =
      paged ? p.paged.block_table + int64_t(b) * p.paged.block_table_stride : nullptr;
  const int d = p.head_dim;
  const int64_t at = summary_offset(s, p.paged, table_row, b, h, d, first, kv_len);
  if (at < 0) return;  // evicted: nothing of it is held
  const int remaining = kv_len - first;
  const int n = remaining < 0 ? 0 : (remaining < s.block ? remaining : s.block);
  // Row 0 of this block's keys and the distance between rows.
  const T* rows;
  int64_t pitch;
  if (paged) {
    const SaPagedKv& pg = p.paged;
    const int page = table_row[paged_slot(first >> pg.log2_page_size, pg.sink_pages, pg.ring_pages)];
    rows = static_cast<const T*>(pg.k_pages) + int64_t(page) * pg.page_stride +
           int64_t(h) * pg.page_head_stride +
           int64_t(first & ((1 << pg.log2_page_size) - 1)) * d;
    pitch = d;
  } else {
    const int64_t seq = varlen ? int64_t(p.cu_seqlens_k[b]) * p.k_row_stride
                               : int64_t(b) * p.k_batch_stride;
    rows = static_cast<const T*>(p.k) + seq + int64_t(first) * p.k_row_stride +
           int64_t(h) * p.k_head_stride;
    pitch = p.k_row_stride;
  }
  float* out = s.data + at;
  for (int c = threadIdx.x; c < d; c += SA_SUMMARIZE_THREADS) {
    ChannelSummary acc = ChannelSummary::empty();
    for (int r = 0; r < n; ++r) acc.add(arch::to_float(rows[r * pitch + c]));
    acc.store(out, d, c);
  }
}

}  // namespace kv_summarize
}  // namespace sa

SA_KERNEL(sa_kv_summarize_f16, SaKvSummarizeParams, SA_SUMMARIZE_THREADS) {
  sa::kv_summarize::summarize<sa::f16>(params);
}
SA_KERNEL(sa_kv_summarize_bf16, SaKvSummarizeParams, SA_SUMMARIZE_THREADS) {
  sa::kv_summarize::summarize<sa::bf16>(params);
}
