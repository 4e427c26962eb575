// Which kv tiles a query block visits: the sparsity of the forward kernel as an iteration
// policy. The mainloop walks `count()` tiles; tile i is `tile(i)`, and `partial(i)` says
// whether it needs the token-exact mask (partial) or none (full). The mainloop is the same
// for every pattern; only this policy changes.
//
// Pure integer code, __host__ __device__, so Rust-side tests and the emulator share it.
#pragma once

#include "sparse_attn/arch/platform.cuh"

namespace sa {

// Dense and causal iteration for query block `m_block` of a sequence (q_len, kv_len).
// Causal visibility is bottom-right aligned: row i sees keys j <= i + kv_len - q_len.
// Full tiles are [0, n_full); partial tiles [n_full, n_end) (the diagonal and the kv tail).
// Partial tiles come first in the walk, so the masked work happens while the row max is
// still being established, as in FlashAttention-2.
struct RangeTiles {
  int n_full;
  int n_end;

  SA_HOST_DEVICE static RangeTiles make(int m_block, int block_m, int block_n, int q_len,
                                        int kv_len, bool causal) {
    const int row_first = m_block * block_m;
    const int row_last = row_first + block_m - 1 < q_len - 1 ? row_first + block_m - 1 : q_len - 1;
    const int shift = kv_len - q_len;  // position p = row + shift
    // Keys visible to some row of the block: j < kv_len and (causal: j <= row_last + shift).
    int keys_end = kv_len;
    if (causal) {
      const int last_visible = row_last + shift;  // may be negative: nothing visible
      keys_end = last_visible + 1 < kv_len ? last_visible + 1 : kv_len;
    }
    if (keys_end < 0) keys_end = 0;
    // Keys visible to every row of the block (no mask needed on tiles below this bound).
    int keys_full = kv_len;
    if (causal) {
      const int first_visible = row_first + shift;
      keys_full = first_visible + 1 < kv_len ? first_visible + 1 : kv_len;
    }
    if (keys_full < 0) keys_full = 0;
    RangeTiles r;
    r.n_end = (keys_end + block_n - 1) / block_n;
    r.n_full = keys_full / block_n;  // tiles entirely below the bound
    if (r.n_full > r.n_end) r.n_full = r.n_end;
    return r;
  }

  SA_HOST_DEVICE int count() const { return n_end; }
  SA_HOST_DEVICE int num_partial() const { return n_end - n_full; }
  SA_HOST_DEVICE bool partial(int i) const { return i < num_partial(); }
  SA_HOST_DEVICE int tile(int i) const { return partial(i) ? n_full + i : i - num_partial(); }
};

}  // namespace sa
