// The kv-tile walk of one query tile, as an iteration policy with two sources:
// - compiled lists (SA_WALK_LISTS): the CSR full / partial lists of the block-sparse metadata
//   (SparseTiles, block_iter.cuh), compiled on the host for the plan's lengths;
// - run-time intervals (SA_WALK_RUNTIME): derived here, on the device, from the sequence's
//   lengths as the launch reads them (cu_seqlens) and the row set's mask program, so one plan
//   serves every length up to its maximum (issue 12). For an interval-form program (at most
//   two components among dense, windows, sinks and chunks, causal or not) every component's
//   allowed keys of a query row are one interval [lo(p), hi(p)] whose ends never decrease with
//   the query position p. So the tiles a query tile touches are, per component, the range
//   from the first row's lo to the last row's hi, and the tiles every row allows wholly are
//   those between the last row's lo and the first row's hi: two ranges of tiles to walk (the
//   components' ranges merged when they meet) and up to two ranges of full tiles. Any other
//   program walks every tile of the keys as partial: exact (the token mask decides each pair),
//   not fast -- table-driven kinds get their per-block tables in a later step.
// The mainloop is one template over the two policies (ListWalk, IntervalWalk): it asks
// count(), tile(i) and partial(i, tile) and never knows which source it has; the kernel picks
// the instantiation once from params.walk.
#pragma once

#include "sparse_attn/block_iter.cuh"
#include "sparse_attn/mask.cuh"
#include "sparse_attn/params.h"

namespace sa {

// The compiled walk: CSR row `row`'s lists.
struct ListWalk {
  static constexpr bool kRuntime = false;
  SparseTiles lists;

  SA_DEVICE static ListWalk make(const SaAttnFwdParams& p, int row) {
    return ListWalk{SparseTiles::make(p, row)};
  }
  SA_DEVICE int count() const { return lists.count(); }
  SA_DEVICE int tile(int i) const { return lists.tile(i); }
  // Whether step i (kv tile `t`) needs the token-exact mask.
  SA_DEVICE bool partial(int i, int /*t*/) const { return lists.partial(i); }
};

// The run-time walk: tiles seg0 .. seg0 + n0 - 1, then seg1 .. seg1 + n1 - 1 (ascending,
// disjoint); tile t is full when it lies in [full_lo[k], full_hi[k]] for some k.
struct IntervalWalk {
  static constexpr bool kRuntime = true;
  int seg0, n0, seg1, n1;
  int full_lo[2], full_hi[2];

  // The walk of the query tile whose rows are the query tokens tok_first .. tok_last (the
  // block's first and last real rows) over the natural keys `keys`, for the mask `m`.
  SA_DEVICE static IntervalWalk make(const TokenMask& m, int tok_first, int tok_last,
                                     const KeyMap& keys) {
    constexpr int BN = SA_FWD_BLOCK_N;
    IntervalWalk w;
    w.seg1 = w.n1 = 0;
    w.full_lo[0] = w.full_lo[1] = 1;
    w.full_hi[0] = w.full_hi[1] = 0;
    if (m.intervals == 0) {  // not interval form: every tile, every pair masked
      w.seg0 = 0;
      w.n0 = (keys.count + BN - 1) / BN;
      return w;
    }
    const RowKeys a = m.row_keys(tok_first, keys), z = m.row_keys(tok_last, keys);
    int lo[2] = {1, 1}, hi[2] = {0, 0};  // touched tile ranges (empty: lo > hi)
    SA_UNROLL
    for (int k = 0; k < 2; ++k) {
      if (k >= m.intervals || z.lo[k] > z.hi[k]) continue;  // no row sees this component
      // The first row may see nothing (a query before the keys): start at tile 0 then.
      const bool first_sees = a.lo[k] <= a.hi[k];
      lo[k] = (first_sees ? a.lo[k] : 0) / BN;
      hi[k] = z.hi[k] / BN;
      if (first_sees) {
        w.full_lo[k] = (z.lo[k] + BN - 1) / BN;
        w.full_hi[k] = (a.hi[k] + 1) / BN - 1;
      }
    }
    if (lo[0] <= hi[0] && lo[1] <= hi[1] && lo[1] <= hi[0] + 1 && lo[0] <= hi[1] + 1) {
      lo[0] = lo[0] < lo[1] ? lo[0] : lo[1];  // they meet: one range
      hi[0] = hi[0] > hi[1] ? hi[0] : hi[1];
      lo[1] = 1;
      hi[1] = 0;
    }
    // Ascending: the lower nonempty range first (selects, not a run-time index: no local
    // memory).
    const bool swap = lo[0] > hi[0] || (lo[1] <= hi[1] && lo[1] < lo[0]);
    const int l0 = swap ? lo[1] : lo[0], h0 = swap ? hi[1] : hi[0];
    const int l1 = swap ? lo[0] : lo[1], h1 = swap ? hi[0] : hi[1];
    w.seg0 = l0;
    w.n0 = h0 >= l0 ? h0 - l0 + 1 : 0;
    w.seg1 = l1;
    w.n1 = h1 >= l1 ? h1 - l1 + 1 : 0;
    return w;
  }

  SA_DEVICE int count() const { return n0 + n1; }
  SA_DEVICE int tile(int i) const { return i < n0 ? seg0 + i : seg1 + (i - n0); }
  SA_DEVICE bool partial(int /*i*/, int t) const {
    return !((t >= full_lo[0] && t <= full_hi[0]) || (t >= full_lo[1] && t <= full_hi[1]));
  }
};

}  // namespace sa
