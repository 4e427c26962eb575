// Appends new tokens' K/V rows to a paged cache (see SaKvAppendParams in params.h): block
// (token, kv head) copies that head's two rows into the page slot the host allocated and,
// when the cache keeps block summaries, the first block of each run of tokens in one summary
// block folds the run's keys into that summary (one writer per summary: exact and
// deterministic whatever the schedule; O(head_dim) per token).
#include "sparse_attn/arch.cuh"
#include "sparse_attn/kv_summary.cuh"
#include "sparse_attn/params.h"
#include "sparse_attn/params_layout.h"  // layout asserted against the Rust mirror

namespace sa {
namespace kv_append {

// Whether token t + 1 continues token t's run: the next row of the same page, inside the same
// summary block (`mask` = block - 1).
SA_DEVICE bool continues(const SaKvAppendParams& p, int t, int mask) {
  if (t + 1 >= p.n_tokens) return false;
  const int page = p.slots[2 * t], row = p.slots[2 * t + 1];
  return p.slots[2 * t + 2] == page && p.slots[2 * t + 3] == row + 1 && ((row + 1) & mask) != 0;
}

// Token t's part of the summary update (t's slot already validated): nothing unless t leads
// its run; the leader folds tokens t .. end - 1 of kv head h, channel by channel.
SA_DEVICE void update_summary(const SaKvAppendParams& p, int t, int h, int page, int row) {
  const SaKvSummaries& s = p.summaries;
  const int mask = s.block - 1;
  if (t > 0 && continues(p, t - 1, mask)) return;
  int end = t + 1;
  while (continues(p, end - 1, mask)) ++end;
  const int d = p.head_dim;
  float* at = s.data + int64_t(page) * s.page_stride + int64_t(h) * s.head_stride +
              int64_t(row >> s.log2_block) * 3 * d;
  const bool starts_block = (row & mask) == 0;  // a reused slot: forget the old keys
  for (int c = threadIdx.x; c < d; c += 32) {
    ChannelSummary acc = starts_block ? ChannelSummary::empty() : ChannelSummary::load(at, d, c);
    for (int u = t; u < end; ++u) {
      acc.add(load_dtype(p.k_new, (int64_t(u) * p.num_kv_heads + h) * d + c, p.dtype));
    }
    acc.store(at, d, c);
  }
}

}  // namespace kv_append
}  // namespace sa

SA_KERNEL(sa_kv_append, SaKvAppendParams, 32) {
  const int t = blockIdx.x, h = blockIdx.y;
  if (t >= params.n_tokens || h >= params.num_kv_heads) return;
  const int page = params.slots[2 * t], row = params.slots[2 * t + 1];
  // The host validated every slot; a bad one is dropped rather than written out of bounds.
  if (page < 0 || page >= params.num_pages || row < 0 || row >= params.page_size) return;
  const int chunks = params.head_dim / 8;  // 16-byte chunks per row
  const int64_t src = (int64_t(t) * params.num_kv_heads + h) * params.head_dim;
  const int64_t dst =
      page * params.page_stride + h * params.page_head_stride + int64_t(row) * params.head_dim;
  for (int c = threadIdx.x; c < 2 * chunks; c += 32) {
    const bool is_v = c >= chunks;
    const int cc = is_v ? c - chunks : c;
    const uint4* from = reinterpret_cast<const uint4*>(
        static_cast<const uint16_t*>(is_v ? params.v_new : params.k_new) + src) + cc;
    uint4* to = reinterpret_cast<uint4*>(
        static_cast<uint16_t*>(is_v ? params.v_pages : params.k_pages) + dst) + cc;
    sa::arch::stg(to, sa::arch::ldg(from));
  }
  if (params.summaries.data != nullptr) sa::kv_append::update_summary(params, t, h, page, row);
}
