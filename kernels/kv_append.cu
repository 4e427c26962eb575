// Appends new tokens' K/V rows to a paged cache (see SaKvAppendParams in params.h): block
// (token, kv head) copies that head's two rows into the page slot the host allocated.
#include "sparse_attn/arch.cuh"
#include "sparse_attn/params.h"
#include "sparse_attn/params_layout.h"  // layout asserted against the Rust mirror

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
}
