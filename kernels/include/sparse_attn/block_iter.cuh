// Which query rows a block owns and which kv tiles it visits: the sparsity of the forward
// kernel as an iteration policy over the compiled block-sparse metadata
// (src/pattern/compile/). A block is one CSR row: its SaTileView names its query rows
// (RowMap) and its keys (KeyMap); the mainloop walks `count()` tiles, tile i is `tile(i)`, and
// `partial(i)` says whether it needs the token-exact mask (partial) or none (full). Dense,
// causal, windowed, dilated (strided views) and global (gathered rows and keys) patterns are
// just different lists and views: the mainloop never forks.
#pragma once

#include "sparse_attn/arch/platform.cuh"
#include "sparse_attn/kernel_traits.cuh"
#include "sparse_attn/params.h"

namespace sa {

// Which query (token, head) each of a block's BLOCK_M rows is. Row r is view slot
// r >> log2_pack of head head0 + (r & (pack - 1)): with GQA packing (pack > 1) the query heads
// of one kv head share the tile, and so every K/V load. Slot s is token first + s * step, or
// list[s] for gathered rows (global query tokens); slots >= count are padding, token -1.
// `pack` is a power of two (the planner guarantees it), so the mapping is shifts and masks.
struct RowMap {
  const int32_t* list;  // nullptr: affine slots
  int first, step, count;
  int log2_pack;

  SA_DEVICE static RowMap make(const SaTileView& v, const int32_t* view_data, int pack) {
    int shift = 0;
    while ((1 << shift) < pack) ++shift;
    return RowMap{v.row_step == 0 ? view_data + v.row_list : nullptr, v.row_first, v.row_step,
                  v.row_count, shift};
  }
  SA_DEVICE int token(int r) const {
    const int slot = r >> log2_pack;
    if (slot >= count) return -1;
    return list != nullptr ? list[slot] : first + slot * step;
  }
  SA_DEVICE int head_offset(int r) const { return r & ((1 << log2_pack) - 1); }
};

// Key position of column c of a listed kv tile (see SaTileView): view keys of regular tiles
// (t >= 0) are affine (natural order, or one residue class of a dilated head), gathered tiles
// (t < 0) read a key list (global key columns).
struct KeyMap {
  const int32_t* gather;
  int first, step, count;
  int gather_count;

  SA_DEVICE static KeyMap make(const SaTileView& v, const int32_t* view_data) {
    return KeyMap{view_data + v.gather_list, v.key_first, v.key_step, v.key_count,
                  v.gather_count};
  }
  // Columns [0, valid(t)) of tile t exist (may exceed BLOCK_N: then all do).
  SA_DEVICE int valid(int t) const {
    return t >= 0 ? count - t * SA_FWD_BLOCK_N : gather_count - (-t - 1) * SA_FWD_BLOCK_N;
  }
  // The key of column c of tile t, or -1 when it does not exist.
  SA_DEVICE int key(int t, int c) const {
    if (c >= valid(t)) return -1;
    return t >= 0 ? first + (t * SA_FWD_BLOCK_N + c) * step
                  : gather[(-t - 1) * SA_FWD_BLOCK_N + c];
  }
};

struct SparseTiles {
  // Tile i of the walk is partial_tiles[partial_first + i] for i < n_partial (ascending kv
  // tile indices, token-exact mask) and full_tiles[full_first + i] after (ascending, no mask
  // work): full_first is offset by -n_partial, so either is one indexed load from a selected
  // base.
  const int32_t* partial_tiles;
  const int32_t* full_tiles;
  int partial_first, full_first;
  int n_full;
  int n_partial;

  // The tiles of CSR row `row`.
  SA_DEVICE static SparseTiles make(const SaAttnFwdParams& p, int row) {
    SparseTiles t;
    const int f0 = p.full_row_ptr[row], p0 = p.partial_row_ptr[row];
    t.partial_tiles = p.partial_tiles;
    t.full_tiles = p.full_tiles;
    t.n_full = p.full_row_end[row] - f0;
    t.n_partial = p.partial_row_end[row] - p0;
    t.partial_first = p0;
    t.full_first = f0 - t.n_partial;
    return t;
  }

  SA_DEVICE int count() const { return n_partial + n_full; }
  // Partial tiles first: the masked work happens while the row max is being established.
  SA_DEVICE bool partial(int i) const { return i < n_partial; }
  SA_DEVICE int tile(int i) const {
    const bool part = partial(i);
    return (part ? partial_tiles : full_tiles)[(part ? partial_first : full_first) + i];
  }
};

}  // namespace sa
