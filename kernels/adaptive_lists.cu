// Compaction of an adaptive selection into the forward kernel's full and partial tile lists
// (see SaAdaptListsParams in params.h): one warp per CSR row (query tile of one sequence and
// selection unit). Lane l classifies kv tiles l, l + 32, ... from the selection bits of the
// query groups the tile's rows belong to, and a shuffle scan places them, ascending, in the
// row's lists. A tile is full when every row of the tile may see every existing key of it
// (each of its groups selected all of the tile's key blocks and, causal, the tile ends at or
// before the first row's position); partial when some row may see some key of it; otherwise
// it is not listed. The forward kernel's token mask reads the same bits (the program's block
// mask component, written here for the call), so the two can never disagree about a token.
// A layer may join static interval components (windows, sinks, chunks) to the selection: the
// program then holds them before the block mask, and their tiles come from the run-time walk
// of the forward kernel (tile_walk.cuh, from the call's lengths); the union lists a tile when
// either side touches it and marks it full when either side allows all of it.
#include "sparse_attn/arch.cuh"
#include "sparse_attn/block_iter.cuh"
#include "sparse_attn/mask.cuh"
#include "sparse_attn/params.h"
#include "sparse_attn/params_layout.h"  // layout asserted against the Rust mirror
#include "sparse_attn/tile_walk.cuh"

namespace {

// floor(a / b) for b > 0.
SA_DEVICE int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

SA_DEVICE int min_i(int a, int b) { return a < b ? a : b; }
SA_DEVICE int max_i(int a, int b) { return a > b ? a : b; }

// Index of the lowest set bit of x != 0.
SA_DEVICE int lowest_bit(uint32_t x) {
  int n = 0;
  while (!(x & 1u)) {
    x >>= 1;
    ++n;
  }
  return n;
}

// The positions [lo, hi] of group g's rows among the positions [p_first, p_last] of a tile.
struct GroupRows {
  int lo, hi;
};

SA_DEVICE GroupRows group_rows(int g, int p0, int q_block, int p_first, int p_last) {
  const int start = (floor_div(p0, q_block) + g) * q_block;
  return GroupRows{max_i(start, p_first), min_i(start + q_block - 1, p_last)};
}

}  // namespace

SA_KERNEL(sa_adapt_lists, SaAdaptListsParams, 32) {
  constexpr int BN = SA_FWD_BLOCK_N;
  const int m = blockIdx.x, u = blockIdx.y, b = blockIdx.z;
  if (m >= params.q_tiles || u >= params.units || b >= params.batch) return;
  const int lane = static_cast<int>(sa::arch::lane_id());
  const int id = b * params.units + u;
  const int row = id * params.q_tiles + m;
  const int base = row * params.cap;

  const int q_len = params.cu_seqlens_q[b + 1] - params.cu_seqlens_q[b];
  const int kv_len = params.cu_seqlens_k[b + 1] - params.cu_seqlens_k[b];
  // A sequence beyond the plan's maxima gets empty rows: nothing is read or written for it.
  const bool fits = q_len >= 0 && kv_len >= 0 && q_len <= params.max_q && kv_len <= params.max_kv;
  const int first = m * params.block_m;
  const int count = fits ? max_i(min_i(q_len - first, params.block_m), 0) : 0;
  if (lane == 0) {
    params.tile_views[row] = SaTileView{first, 1, count, 0, 0, 1, count > 0 ? kv_len : 0, 0, 0, 0};
  }
  // The program's token mask: a block mask over the unit's bits whose rows are absolute query
  // blocks floor(p / q_block); the call's first group g0 is row 0 of the bits, so the table
  // starts g0 rows before them (positions below the call's first row never occur) and holds
  // g0 + max_groups rows.
  const int n_comp = params.num_static + 1;  // the program's components: statics, then this
  if (m == 0 && lane == 0) {
    const int g0 = fits ? floor_div(kv_len - q_len, params.q_block) : 0;
    const int table = params.max_groups * params.words;
    SaMaskComponent c{};
    c.kind = SA_MASK_BLOCK_MASK;
    c.block_q = params.q_block;
    c.block_k = params.block;
    c.mask_rows = fits ? g0 + params.max_groups : 0;  // a sequence that does not fit: nothing
    c.mask_cols = params.max_blocks;
    c.data_offset = id * table - g0 * params.words;
    c.data_len = table;
    params.components[id * n_comp + params.num_static] = c;
  }

  int n_full = 0, n_part = 0;
  if (count > 0 && kv_len > 0) {
    const int p0 = kv_len - q_len;  // position of the call's row 0
    const int p_first = first + p0, p_last = p_first + count - 1;
    const int q_block = params.q_block;
    // Groups count from the call's first row (decode: q_block 1, each row its own group).
    const int g0 = floor_div(p0, q_block);
    const int g_lo = floor_div(p_first, q_block) - g0;
    const int g_hi_raw = floor_div(p_last, q_block) - g0;
    const int g_hi = min_i(g_hi_raw, params.max_groups - 1);  // the plan sizes rows for this
    const int32_t* sel = params.bits + int64_t(id) * params.max_groups * params.words;
    const int kv_tiles = (kv_len + BN - 1) / BN;
    const int B = params.block;
    // The static components' walk of this query tile (none: an empty walk).
    sa::IntervalWalk fixed{0, 0, 0, 0, {1, 1}, {0, 0}};
    if (params.num_static > 0) {
      const SaMaskProgram statics{params.causal, id * n_comp, params.num_static, 0};
      const sa::TokenMask tm =
          sa::TokenMask::make(&statics, params.components, nullptr, q_len, kv_len);
      const sa::KeyMap keys{nullptr, 0, 1, kv_len, 0};
      fixed = sa::IntervalWalk::make(tm, first, first + count - 1, keys);
    }
    for (int t0 = 0; t0 < kv_tiles; t0 += 32) {
      const int t = t0 + lane;
      bool touched = false, full = false;
      if (t < kv_tiles) {
        const int j_lo = t * BN, j_hi = min_i(j_lo + BN - 1, kv_len - 1);
        // The tile's key blocks lie in one word: B >= BN gives one block, a smaller B (a
        // power of two) BN / B aligned ones.
        const int jb_lo = j_lo / B, jb_hi = j_hi / B;
        const int n = jb_hi - jb_lo + 1;
        const uint32_t want = (n >= 32 ? ~0u : ((1u << n) - 1u)) << (jb_lo % 32);
        full = true;
        for (int g = g_lo; g <= g_hi; ++g) {
          const uint32_t x = static_cast<uint32_t>(sel[g * params.words + jb_lo / 32]) & want;
          const GroupRows r = group_rows(g, p0, q_block, p_first, p_last);
          if (x != 0u) {
            // The group's first allowed key in the tile, against its last row (causal).
            const int j_first = max_i((jb_lo + lowest_bit(x >> (jb_lo % 32))) * B, j_lo);
            touched = touched || !params.causal || j_first <= r.hi;
          }
          full = full && x == want && (!params.causal || j_hi <= r.lo);
        }
        full = full && g_hi == g_hi_raw;
        const bool fixed_touched = (t >= fixed.seg0 && t < fixed.seg0 + fixed.n0) ||
                                   (t >= fixed.seg1 && t < fixed.seg1 + fixed.n1);
        full = full || (fixed_touched && !fixed.partial(0, t));
        touched = touched || full || fixed_touched;
      }
      // Inclusive scan of (partial, full) flags over the lanes, packed in one word.
      const int flags = (touched && !full ? 1 : 0) | (full ? 1 << 16 : 0);
      int scan = flags;
      for (int d = 1; d < 32; d <<= 1) {
        const int up = sa::arch::shfl_up(sa::arch::kFullMask, scan, static_cast<unsigned>(d));
        if (lane >= d) scan += up;
      }
      if (touched && !full) params.partial_tiles[base + n_part + (scan & 0xffff) - 1] = t;
      if (full) params.full_tiles[base + n_full + (scan >> 16) - 1] = t;
      const int total = sa::arch::shfl_idx(sa::arch::kFullMask, scan, 31);
      n_part += total & 0xffff;
      n_full += total >> 16;
    }
  }
  if (lane == 0) {
    params.full_row_end[row] = base + n_full;
    params.partial_row_end[row] = base + n_part;
  }
}
