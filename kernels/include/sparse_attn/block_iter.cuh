// Which kv tiles a query block visits: the sparsity of the forward kernel as an iteration
// policy over the compiled block-sparse metadata (src/pattern/compile.rs). The mainloop walks
// `count()` tiles; tile i is `tile(i)`, and `partial(i)` says whether it needs the token-exact
// mask (partial) or none (full). Dense, causal and every sparse pattern are just different
// lists: the mainloop never forks.
#pragma once

#include "sparse_attn/arch/platform.cuh"
#include "sparse_attn/params.h"

namespace sa {

// Which query (token, head) each of a block's BLOCK_M rows is. Unpacked (pack == 1), row r is
// token token0 + r of the block's head. With GQA packing, row r is token token0 + r / pack of
// head head0 + r % pack: the query heads of one kv head share the tile, and so every K/V
// load. The walk below is then compiled for BLOCK_M / pack tokens per query tile.
// `pack` is a power of two (the planner guarantees it), so the mapping is shifts and masks: a
// runtime integer division here cost a call and a spill on hd64.
struct RowMap {
  int token0;
  int log2_pack;
  SA_DEVICE static RowMap make(int token0, int pack) {
    int shift = 0;
    while ((1 << shift) < pack) ++shift;
    return RowMap{token0, shift};
  }
  SA_DEVICE int token(int r) const { return token0 + (r >> log2_pack); }
  SA_DEVICE int head_offset(int r) const { return r & ((1 << log2_pack) - 1); }
};

struct SparseTiles {
  const int32_t* full_list;     // ascending kv tile indices, no mask work
  const int32_t* partial_list;  // ascending kv tile indices, token-exact mask
  int n_full;
  int n_partial;

  // The CSR row of query tile `m_block` (of `tile_tokens` tokens) of head `h` in sequence `b`
  // (q_len tokens).
  SA_DEVICE static SparseTiles make(const SaAttnFwdParams& p, int b, int h, int m_block,
                                    int tile_tokens, int q_len) {
    const int q_tiles = (q_len + tile_tokens - 1) / tile_tokens;
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
