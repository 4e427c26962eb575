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

// The interval form of one query row's allowed keys, in view-key coordinates (key position =
// KeyMap::first + v * KeyMap::step): v in [lo[0], hi[0]] or [lo[1], hi[1]] (an empty interval
// has lo > hi). Computed once per row per block; a regular kv tile t then tests column c as
// lo <= c + t * BLOCK_N <= hi: two compares per interval and a select per element.
struct RowKeys {
  int lo[2], hi[2];
};

struct TokenMask {
  const SaMaskProgram* program;
  const SaMaskComponent* components;
  const int32_t* data;
  int q_len;
  int kv_len;
  // Read once per block from the program: whether the predicate has the interval form (at
  // most two components, each dense, a window, sinks or a chunk) and how many intervals it has.
  int intervals;  // 0: not interval form (the general interpreter runs), else 1 or 2

  SA_DEVICE static TokenMask make(const SaMaskProgram* program, const SaMaskComponent* comps,
                                  const int32_t* data, int q_len, int kv_len) {
    TokenMask m{program, comps, data, q_len, kv_len, 0};
    const int n = program->num_components;
    int intervals = n;
    for (int i = 0; i < n && i < 2; ++i) {
      const int kind = comps[program->first_component + i].kind;
      if (kind != SA_MASK_DENSE && kind != SA_MASK_WINDOW && kind != SA_MASK_SINKS &&
          kind != SA_MASK_CHUNKED) {
        intervals = 0;
      }
    }
    m.intervals = n <= 2 ? intervals : 0;
    return m;
  }

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
      case SA_MASK_CHUNKED: {
        // floor(p / C) == floor(j / C): with r = p mod C (in [0, C)), j - p lies in
        // [-r, C - 1 - r]; compared as differences so nothing leaves int32.
        int r = p % c.block_q;
        if (r < 0) r += c.block_q;
        return j - p >= -r && j - p <= c.block_q - 1 - r;
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

  // The interval form of query row `row` (-1: padding, nothing allowed) over the view keys of
  // `keys` (meaningful only when `intervals` > 0). Positions are clipped to the existing keys
  // (j < kv_len, v < key_count) and, causal, to j <= p.
  SA_DEVICE RowKeys row_keys(int row, const KeyMap& keys) const {
    RowKeys rk{{1, 1}, {0, 0}};
    if (intervals == 0 || row < 0) return rk;
    const int p = row + (kv_len - q_len);
    const int j_max = program->causal ? (p < kv_len - 1 ? p : kv_len - 1) : kv_len - 1;
    SA_UNROLL
    for (int i = 0; i < 2; ++i) {  // unrolled: rk's indices are constants (no local memory)
      if (i >= intervals) break;
      const SaMaskComponent& c = components[program->first_component + i];
      // Key interval [lo, hi] of the component, clipped to [0, j_max] without leaving int32
      // (p - left and p + right may).
      int lo = 0, hi = j_max;
      if (c.kind == SA_MASK_WINDOW) {
        lo = p > c.window_left ? p - c.window_left : 0;
        hi = c.window_right < j_max - p ? p + c.window_right : j_max;
      } else if (c.kind == SA_MASK_SINKS) {
        hi = c.sink_count - 1 < j_max ? c.sink_count - 1 : j_max;
      } else if (c.kind == SA_MASK_CHUNKED) {
        // The query's chunk [p - r, p - r + C - 1], r = p mod C in [0, C): one interval (with
        // causality [p - r, p]); a negative p's chunk holds no key (p - r + C - 1 < 0).
        int r = p % c.block_q;
        if (r < 0) r += c.block_q;
        const int after = c.block_q - 1 - r;  // chunk keys after p
        lo = p > r ? p - r : 0;
        hi = after < j_max - p ? p + after : j_max;
      }
      // To view keys: key = first + v * step, v < count (step 1 is the natural order and
      // needs no division).
      int vlo = lo - keys.first, vhi = hi - keys.first;
      if (keys.step != 1) {
        vlo = vlo <= 0 ? 0 : (vlo + keys.step - 1) / keys.step;
        vhi = vhi < 0 ? -1 : vhi / keys.step;
      } else if (vlo < 0) {
        vlo = 0;
      }
      if (vhi > keys.count - 1) vhi = keys.count - 1;
      if (lo > hi || vlo > vhi) vlo = 1, vhi = 0;
      rk.lo[i] = vlo;
      rk.hi[i] = vhi;
    }
    return rk;
  }

  // The interval test of `apply`: `rk[r]` bounds fragment row r (row g + 8h of m16 tile mt for
  // r = 2 * mt + h) and `off` is the view key of this lane's column 0 (its columns are
  // off + nt * 8 + i), so each element compares a constant against per-row bounds.
  template <bool kTwo, int MT, int NT>
  SA_DEVICE static void apply_intervals(float (&s)[MT][NT][4], const RowKeys (&rk)[2 * MT],
                                        int off) {
    SA_UNROLL
    for (int r = 0; r < 2 * MT; ++r) apply_interval_row<kTwo>(s, r, rk[r], off);
  }

  // The interval test of fragment row r alone (its bounds `rk`): callers that fetch the
  // bounds row by row keep one row's in registers at a time.
  template <bool kTwo, int MT, int NT>
  SA_DEVICE static void apply_interval_row(float (&s)[MT][NT][4], int r, const RowKeys& rk,
                                           int off) {
    const int lo0 = rk.lo[0] - off, hi0 = rk.hi[0] - off;
    const int lo1 = rk.lo[1] - off, hi1 = rk.hi[1] - off;
    SA_UNROLL
    for (int nt = 0; nt < NT; ++nt) {
      SA_UNROLL
      for (int i = 0; i < 2; ++i) {
        const int c = nt * 8 + i;
        bool keep = c >= lo0 && c <= hi0;
        if (kTwo) keep = keep || (c >= lo1 && c <= hi1);
        if (!keep) s[r / 2][nt][2 * (r % 2) + i] = kNegInf;
      }
    }
  }

  // Sets masked entries of this warp's S fragments ([MT][NT][4] accumulator layout) to -inf.
  // `row_tok[2 * mt + h]` is the query row of fragment row g + 8h of m16 tile mt (-1 for
  // padding); `keys` maps column c of kv tile `tile` to its key. Regular tiles of an
  // interval-form predicate cost, per row, its interval form (a few loads of the program,
  // on partial tiles only: kept out of the mainloop's registers) and two compares per
  // interval and a select per element. Otherwise the predicate is interpreted in a rolled
  // loop into a bit set per m16 tile first: evaluated inline, fully unrolled over the 32
  // entries, it spilled registers (260 B on hd64); the rolled loop leaves S untouched until
  // one cheap unrolled select.
  template <int MT, int NT>
  SA_DEVICE void apply(float (&s)[MT][NT][4], const int (&row_tok)[2 * MT], const KeyMap& keys,
                       int tile, int lane) const {
    RowKeys rk[2 * MT];
    if (intervals > 0) {
      SA_UNROLL
      for (int r = 0; r < 2 * MT; ++r) rk[r] = row_keys(row_tok[r], keys);
    }
    apply(s, row_tok, rk, keys, tile, lane);
  }

  // `apply` with the rows' interval forms already computed (`rk`, meaningful when `intervals`
  // > 0): kernels whose registers allow it build them once per block.
  template <int MT, int NT>
  SA_DEVICE void apply(float (&s)[MT][NT][4], const int (&row_tok)[2 * MT],
                       const RowKeys (&rk)[2 * MT], const KeyMap& keys, int tile, int lane) const {
    static_assert(NT * 4 <= 32, "one bit per fragment entry");
    const int t = lane & 3;
    if (intervals > 0 && tile >= 0) {
      const int off = tile * SA_FWD_BLOCK_N + 2 * t;
      if (intervals == 1) {
        apply_intervals<false>(s, rk, off);
      } else {
        apply_intervals<true>(s, rk, off);
      }
      return;
    }
    apply_interpreted(s, row_tok, keys, tile, lane);
  }

  // The general interpreter of `apply`: every entry's predicate evaluated (any program, any
  // tile, gathered ones included).
  template <int MT, int NT>
  SA_DEVICE void apply_interpreted(float (&s)[MT][NT][4], const int (&row_tok)[2 * MT],
                                   const KeyMap& keys, int tile, int lane) const {
    static_assert(NT * 4 <= 32, "one bit per fragment entry");
    const int t = lane & 3;
    SA_UNROLL
    for (int mt = 0; mt < MT; ++mt) {
      const int row_g = row_tok[2 * mt], row_g8 = row_tok[2 * mt + 1];
      uint32_t keep = 0;
      SA_NO_UNROLL
      for (int e = 0; e < NT * 4; ++e) {
        const int nt = e >> 2, i = e & 3;
        const int row = (i >> 1) ? row_g8 : row_g;  // a select: no local array
        const int key = keys.key(tile, nt * 8 + 2 * t + (i & 1));
        keep |= static_cast<uint32_t>(row >= 0 && allowed(row, key)) << e;
      }
      SA_UNROLL
      for (int nt = 0; nt < NT; ++nt) {
        SA_UNROLL
        for (int i = 0; i < 4; ++i) {
          if (!((keep >> (nt * 4 + i)) & 1u)) s[mt][nt][i] = kNegInf;
        }
      }
    }
  }
};

// Masks the columns >= `valid` of a full tile: the metadata calls a tile full when every
// *existing* token is allowed, so the zero-filled columns past the end of a view (the last
// tile of the keys, or of a gathered list) must still be excluded here; the test is one
// compare per entry.
template <int MT, int NT>
SA_DEVICE void mask_kv_tail(float (&s)[MT][NT][4], int valid, int lane) {
  const int t = lane & 3;
  SA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    SA_UNROLL
    for (int nt = 0; nt < NT; ++nt) {
      SA_UNROLL
      for (int i = 0; i < 4; ++i) {
        if (nt * 8 + 2 * t + (i & 1) >= valid) s[mt][nt][i] = kNegInf;
      }
    }
  }
}

}  // namespace sa
