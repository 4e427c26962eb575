// Which kv tiles a query block visits: the sparsity of the forward kernel as an iteration
// policy over the compiled block-sparse metadata (src/pattern/compile.rs). The mainloop walks
// `count()` tiles; tile i is `tile(i)`, and `partial(i)` says whether it needs the token-exact
// mask (partial) or none (full). Dense, causal and every sparse pattern are just different
// lists: the mainloop never forks.
#pragma once

#include "sparse_attn/arch/platform.cuh"
#include "sparse_attn/params.h"

namespace sa {

struct SparseTiles {
  const int32_t* full_list;     // ascending kv tile indices, no mask work
  const int32_t* partial_list;  // ascending kv tile indices, token-exact mask
  int n_full;
  int n_partial;

  // The CSR row of query tile `m_block` of head `h` in sequence `b` (q_len rows).
  SA_DEVICE static SparseTiles make(const SaAttnFwdParams& p, int b, int h, int m_block,
                                    int block_m, int q_len) {
    const int q_tiles = (q_len + block_m - 1) / block_m;
    const int row = p.seq_row_base[b] + p.head_set[h] * q_tiles + m_block;
    SparseTiles t;
    const int f0 = p.full_row_ptr[row], p0 = p.partial_row_ptr[row];
    t.full_list = p.full_tiles + f0;
    t.partial_list = p.partial_tiles + p0;
    t.n_full = p.full_row_ptr[row + 1] - f0;
    t.n_partial = p.partial_row_ptr[row + 1] - p0;
    return t;
  }

  SA_DEVICE int count() const { return n_partial + n_full; }
  // Partial tiles first: the masked work happens while the row max is being established.
  SA_DEVICE bool partial(int i) const { return i < n_partial; }
  SA_DEVICE int tile(int i) const { return partial(i) ? partial_list[i] : full_list[i - n_partial]; }
};

}  // namespace sa
