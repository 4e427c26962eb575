// Token-exact masking of one S tile, applied only on partial tiles (see block_iter.cuh).
//
// The predicate is a small program compiled on the host (src/pattern/mask.rs).
// TokenMask::allowed below is property-tested against the pattern contract of
// docs/patterns.md through the emulator (kernels/tests/mask_probe.cu, tests/pattern_props.rs),
// as is its host twin MaskTables::allowed.
#pragma once

#include "sparse_attn/arch.cuh"
#include "sparse_attn/block_iter.cuh"
#include "sparse_attn/online_softmax.cuh"
#include "sparse_attn/params.h"

namespace sa {

struct TokenMask {
  const SaMaskProgram* program;
  const SaMaskComponent* components;
  const int32_t* data;
  int q_len;
  int kv_len;

  // Whether x occurs in the ascending table t[0, n) (binary search).
  SA_DEVICE static bool contains_sorted(const int32_t* t, int n, int x) {
    int lo = 0, hi = n;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (t[mid] < x) lo = mid + 1; else hi = mid;
    }
    return lo < n && t[lo] == x;
  }

  // floor(a / b) for b > 0.
  SA_DEVICE static int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

  SA_DEVICE bool admits(const SaMaskComponent& c, int p, int j) const {
    switch (c.kind) {
      case SA_MASK_DENSE:
        return true;
      case SA_MASK_WINDOW:
        return j - p >= -c.window_left && j - p <= c.window_right;
      case SA_MASK_SINKS:
        return j < c.sink_count;
      case SA_MASK_GLOBAL: {
        const int32_t* t = data + c.data_offset;
        return contains_sorted(t, c.data_len, j) || (p >= 0 && contains_sorted(t, c.data_len, p));
      }
      case SA_MASK_DILATED: {
        const int r = (p - j) % c.dilation_stride;  // C remainder: sign of the dividend
        return r == 0;
      }
      case SA_MASK_BLOCK_MASK: {
        const int qb = floor_div(p, c.block_q), kb = j / c.block_k;
        if (qb < 0 || qb >= c.mask_rows || kb >= c.mask_cols) return false;
        const int words = (c.mask_cols + 31) / 32;
        const uint32_t w = static_cast<uint32_t>(data[c.data_offset + qb * words + kb / 32]);
        return (w >> (kb % 32)) & 1u;
      }
      case SA_MASK_BIGBIRD: {
        const int qb = floor_div(p, c.block_q), kb = j / c.block_q;
        const int dq = qb - kb;
        if ((dq < 0 ? -dq : dq) <= c.bigbird_window_half || qb < c.bigbird_global_blocks ||
            kb < c.bigbird_global_blocks) {
          return true;
        }
        const int row = qb - c.rand_first_q_block;
        if (row < 0 || row >= c.rand_q_blocks) return false;
        const int32_t* t = data + c.data_offset;
        const int32_t* blocks = t + c.rand_q_blocks + 1;
        for (int i = t[row]; i < t[row + 1]; ++i) {
          if (blocks[i] == kb) return true;
        }
        return false;
      }
      default:
        return false;
    }
  }

  // Query row `row` (position p = row + kv_len - q_len, bottom-right aligned) and key `key`.
  SA_DEVICE bool allowed(int row, int key) const {
    const int p = row + (kv_len - q_len);
    if (key < 0 || key >= kv_len || (program->causal && key > p)) return false;
    for (int i = 0; i < program->num_components; ++i) {
      if (admits(components[program->first_component + i], p, key)) return true;
    }
    return false;
  }

  // Sets masked entries of this warp's S fragment ([NT][4] accumulator layout) to -inf.
  // `row_tok` are the query rows of this lane's two fragment rows (g and g + 8 of the warp;
  // -1 for padding), `keys` maps column c of kv tile `tile` to its key. The predicate is
  // evaluated in a rolled loop into a bit set first: evaluated inline, fully unrolled over
  // the 32 entries, it spilled registers (260 B on hd64); the rolled loop leaves S untouched
  // until one cheap unrolled select at the end.
  template <int NT>
  SA_DEVICE void apply(float (&s)[NT][4], const int (&row_tok)[2], const KeyMap& keys, int tile,
                       int lane) const {
    static_assert(NT * 4 <= 32, "one bit per fragment entry");
    const int t = lane & 3;
    uint32_t keep = 0;
    SA_NO_UNROLL
    for (int e = 0; e < NT * 4; ++e) {
      const int nt = e >> 2, i = e & 3;
      const int row = (i >> 1) ? row_tok[1] : row_tok[0];  // a select: no local array
      const int key = keys.key(tile, nt * 8 + 2 * t + (i & 1));
      keep |= static_cast<uint32_t>(row >= 0 && allowed(row, key)) << e;
    }
    SA_UNROLL
    for (int nt = 0; nt < NT; ++nt) {
      SA_UNROLL
      for (int i = 0; i < 4; ++i) {
        if (!((keep >> (nt * 4 + i)) & 1u)) s[nt][i] = kNegInf;
      }
    }
  }
};

// Masks the columns >= `valid` of a full tile: the metadata calls a tile full when every
// *existing* token is allowed, so the zero-filled columns past the end of a view (the last
// tile of the keys, or of a gathered list) must still be excluded here; the test is one
// compare per entry.
template <int NT>
SA_DEVICE void mask_kv_tail(float (&s)[NT][4], int valid, int lane) {
  const int t = lane & 3;
  SA_UNROLL
  for (int nt = 0; nt < NT; ++nt) {
    SA_UNROLL
    for (int i = 0; i < 4; ++i) {
      if (nt * 8 + 2 * t + (i & 1) >= valid) s[nt][i] = kNegInf;
    }
  }
}

}  // namespace sa
