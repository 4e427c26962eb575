// Token-exact masking of one S tile, applied only on partial tiles (see block_iter.cuh).
#pragma once

#include "sparse_attn/arch.cuh"
#include "sparse_attn/online_softmax.cuh"

namespace sa {

// The token-level predicate of the dense / causal pattern (PATTERNS.md): key j is visible to
// query row i iff j < kv_len and (not causal or j <= i + kv_len - q_len).
struct CausalMask {
  int q_len;
  int kv_len;
  bool causal;

  SA_HOST_DEVICE bool allowed(int row, int key) const {
    return key < kv_len && (!causal || key <= row + (kv_len - q_len));
  }

  // Sets masked entries of this warp's S fragment ([NT][4] accumulator layout) to -inf.
  // `row0` is the warp's first query row, `key0` the tile's first key.
  template <int NT>
  SA_DEVICE void apply(float (&s)[NT][4], int row0, int key0, int lane) const {
    const int g = lane >> 2, t = lane & 3;
    SA_UNROLL
    for (int nt = 0; nt < NT; ++nt) {
      SA_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int row = row0 + g + 8 * (i >> 1);
        const int key = key0 + nt * 8 + 2 * t + (i & 1);
        if (!allowed(row, key)) s[nt][i] = kNegInf;
      }
    }
  }
};

}  // namespace sa
