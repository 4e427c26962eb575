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
// has lo > hi). Computed once per row per block and turned into the lane's view, RowCols.
struct RowKeys {
  int lo[2], hi[2];
};

// A row's interval form as one lane sees it (TokenMask::row_cols): per interval, the prefix
// lengths (TokenMask::cols_count) of the lane's bits of kv tile 0 at or below its upper bound
// and below its lower bound.
struct RowCols {
  int upto_hi[2], below_lo[2];
};

struct TokenMask {
  const SaMaskProgram* program;
  const SaMaskComponent* components;
  const int32_t* data;
  int q_len;
  int kv_len;
  // Read once per block from the program: whether the predicate has the interval form (at
  // most two components, each dense, a window, sinks or a chunk) and how many intervals it has.
  int intervals;  // 0: not interval form (table_bits / gathered_bits run), else 1 or 2

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

  // The last key query position p may see: the last existing key, and with causality p.
  SA_DEVICE int last_key(int p) const {
    return program->causal ? (p < kv_len - 1 ? p : kv_len - 1) : kv_len - 1;
  }

  // The key interval [lo, hi] of an interval-kind component (dense, window, sinks, chunk) for
  // query position p, clipped to [0, j_max] without leaving int32 (p - left and p + right
  // may); empty when lo > hi.
  SA_DEVICE static void key_interval(const SaMaskComponent& c, int p, int j_max, int& lo,
                                     int& hi) {
    lo = 0;
    hi = j_max;
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
  }

  // Key interval [lo, hi] to view keys [vlo, vhi] of `keys` (key = first + v * step, v <
  // count; step 1 is the natural order and needs no division); empty as (1, 0).
  SA_DEVICE static void view_interval(int lo, int hi, const KeyMap& keys, int& vlo, int& vhi) {
    vlo = lo - keys.first;
    vhi = hi - keys.first;
    if (keys.step != 1) {
      vlo = vlo <= 0 ? 0 : (vlo + keys.step - 1) / keys.step;
      vhi = vhi < 0 ? -1 : vhi / keys.step;
    } else if (vlo < 0) {
      vlo = 0;
    }
    if (vhi > keys.count - 1) vhi = keys.count - 1;
    if (lo > hi || vlo > vhi) vlo = 1, vhi = 0;
  }

  // The interval form of query row `row` (-1: padding, nothing allowed) over the view keys of
  // `keys` (meaningful only when `intervals` > 0). Positions are clipped to the existing keys
  // (j < kv_len, v < key_count) and, causal, to j <= p.
  SA_DEVICE RowKeys row_keys(int row, const KeyMap& keys) const {
    RowKeys rk{{1, 1}, {0, 0}};
    if (intervals == 0 || row < 0) return rk;
    const int p = row + (kv_len - q_len);
    const int j_max = last_key(p);
    SA_UNROLL
    for (int i = 0; i < 2; ++i) {  // unrolled: rk's indices are constants (no local memory)
      if (i >= intervals) break;
      int lo, hi;
      key_interval(components[program->first_component + i], p, j_max, lo, hi);
      view_interval(lo, hi, keys, rk.lo[i], rk.hi[i]);
    }
    return rk;
  }

  // A tile's mask as bits in fragment order: bit 4 * nt + i of keep[mt] is entry s[mt][nt][i]
  // of this lane's S fragments -- row g (i = 0, 1) or g + 8 (i = 2, 3) and column
  // 2t + 8 * nt + (i & 1), t = lane % 4. A row's own bits ("row bits") sit at 4 * nt + c for
  // its columns c = 0, 1 (mask 0x33333333); row g + 8's are shifted up by 2. The row bits of
  // the columns at or below a bound are then the first m bits, masked: for x = bound - 2t (the
  // bound relative to the lane's column 0 of kv tile 0) and y = x + 8, n0 = floor(y / 8)
  // columns 8 * nt <= x and n1 = floor((y - 1) / 8) columns 8 * nt + 1 <= x (n1 = n0 or
  // n0 - 1), so m = 4 * n1 + (n0 - n1) -- at most 0 means none. In kv tile `tile` the bound
  // moves down by tile * BLOCK_N keys, a multiple of 8: n0 and n1 by tile * NT, m by exactly
  // tile * 4 * NT.
  SA_DEVICE static int cols_count(int x) {
    const int y = x + 8;  // cannot overflow: bounds lie below kv_len
    const int n0 = y >> 3, n1 = (y - 1) >> 3;
    return 3 * n1 + n0;
  }

  // The row-bit positions: column c = 0, 1 of n8 tile nt.
  static constexpr uint32_t kRowBits = 0x33333333u;

  // The interval form of a row as this lane sees it, built once per row (`rows_cols`): for
  // each interval, the count of the lane's columns of kv tile 0 at or below its upper bound
  // and below its lower bound (cols_count). A partial tile's bits then cost an add, a clip and
  // a shift per bound (prefix_bits), and each element a bit test and a select, which ptxas
  // turns into one R2P per few elements and a select each.
  SA_DEVICE static RowCols row_cols(const RowKeys& rk, int lane) {
    const int c0 = 2 * (lane & 3);
    RowCols rc;
    SA_UNROLL
    for (int i = 0; i < 2; ++i) {
      rc.upto_hi[i] = cols_count(rk.hi[i] - c0);
      rc.below_lo[i] = cols_count(rk.lo[i] - 1 - c0);  // empty (lo > hi): the same count
    }
    return rc;
  }

  // The first n bits (none when n <= 0, all 32 from 32 on).
  SA_DEVICE static uint32_t count_bits(int n) {
    return ~arch::shl_clamped(~0u, static_cast<uint32_t>(n > 0 ? n : 0));
  }

  // The first `count0 - tile * 4 * NT` bits: a RowCols count moved to kv tile `tile` (row
  // bits where masked with kRowBits).
  template <int NT>
  SA_DEVICE static uint32_t prefix_bits(int count0, int tile) {
    static_assert(4 * NT <= 32, "one bit per fragment entry");
    return count_bits(count0 - tile * (4 * NT));
  }

  // This lane's row bits of the tile columns [lo, hi] (relative to the tile's column 0, any
  // ints that do not overflow when 8 is added; none when lo > hi).
  SA_DEVICE static uint32_t lane_cols(int lo, int hi, int lane) {
    const int c0 = 2 * (lane & 3);
    return count_bits(cols_count(hi - c0)) & ~count_bits(cols_count(lo - 1 - c0)) & kRowBits;
  }

  // The tile column of this lane's k-th column (k = 2 * nt + c) and its row bit.
  SA_DEVICE static int lane_col(int k, int lane) { return 2 * (lane & 3) + 8 * (k >> 1) + (k & 1); }
  SA_DEVICE static uint32_t row_bit(int k) { return 1u << (4 * (k >> 1) + (k & 1)); }

  // Sets the entries of S whose bit in keep (fragment order, above) is clear to -inf: a bit
  // test and a select each, which ptxas turns into one R2P per few entries and an FSEL each.
  template <int MT, int NT>
  SA_DEVICE static void select(float (&s)[MT][NT][4], const uint32_t (&keep)[MT]) {
    static_assert(4 * NT <= 32, "one bit per fragment entry");
    SA_UNROLL
    for (int mt = 0; mt < MT; ++mt) {
      SA_UNROLL
      for (int nt = 0; nt < NT; ++nt) {
        SA_UNROLL
        for (int i = 0; i < 4; ++i) {
          if (!((keep[mt] >> (4 * nt + i)) & 1u)) s[mt][nt][i] = kNegInf;
        }
      }
    }
  }

  // The bits of fragment row r (row g + 8h of m16 tile mt for r = 2 * mt + h) in kv tile
  // `tile` from its lane view `rc` (interval form), placed at the row's entries of keep[mt].
  template <bool kTwo, int NT>
  SA_DEVICE static uint32_t interval_row_bits(const RowCols& rc, int r, int tile) {
    uint32_t b = prefix_bits<NT>(rc.upto_hi[0], tile) & ~prefix_bits<NT>(rc.below_lo[0], tile);
    if (kTwo) b |= prefix_bits<NT>(rc.upto_hi[1], tile) & ~prefix_bits<NT>(rc.below_lo[1], tile);
    return (b & kRowBits) << (2 * (r & 1));
  }

  // The interval form's bits of every fragment row of this lane.
  template <bool kTwo, int NT, int MT>
  SA_DEVICE static void interval_bits(uint32_t (&keep)[MT], const RowCols (&rc)[2 * MT],
                                      int tile) {
    SA_UNROLL
    for (int mt = 0; mt < MT; ++mt) {
      keep[mt] = interval_row_bits<kTwo, NT>(rc[2 * mt], 0, tile) |
                 interval_row_bits<kTwo, NT>(rc[2 * mt + 1], 1, tile);
    }
  }

  // This lane's view of its fragment rows' interval forms (meaningful when `intervals` > 0).
  template <int R>
  SA_DEVICE void rows_cols(RowCols (&rc)[R], const int (&row_tok)[R], const KeyMap& keys,
                           int lane) const {
    SA_UNROLL
    for (int r = 0; r < R; ++r) rc[r] = row_cols(row_keys(row_tok[r], keys), lane);
  }

  // The columns component `c` admits for query position p (last visible key j_max) in the
  // regular kv tile whose column 0 is view key v0, as this lane's bits: an interval kind its
  // interval; with the natural key order (step 1) a block-granular kind one interval per
  // admitted key block of the tile (one table word each) and global tokens the listed keys
  // inside the tile (one binary search per tile); otherwise (dilation, strided views of the
  // table kinds) the lane's columns one by one.
  template <int NT>
  SA_DEVICE uint32_t component_bits(const SaMaskComponent& c, int p, int j_max,
                                    const KeyMap& keys, int v0, int lane) const {
    const int kind = c.kind;
    if (kind == SA_MASK_DENSE) return ~0u;
    if (kind == SA_MASK_WINDOW || kind == SA_MASK_SINKS || kind == SA_MASK_CHUNKED) {
      int lo, hi, vlo, vhi;
      key_interval(c, p, j_max, lo, hi);
      view_interval(lo, hi, keys, vlo, vhi);
      return lane_cols(vlo - v0, vhi - v0, lane);
    }
    if (keys.step == 1) {
      const int j0 = keys.first + v0;  // the key of the tile's column 0 (>= 0)
      const int j_end = j0 + SA_FWD_BLOCK_N;
      if (kind == SA_MASK_GLOBAL) {
        const int32_t* t = data + c.data_offset;
        if (p >= 0 && contains_sorted(t, c.data_len, p)) return ~0u;  // a global query
        int lo = 0, hi = c.data_len;  // the first listed key >= j0
        while (lo < hi) {
          const int mid = (lo + hi) >> 1;
          if (t[mid] < j0) lo = mid + 1; else hi = mid;
        }
        uint32_t bits = 0u;
        SA_NO_UNROLL
        for (int i = lo; i < c.data_len && t[i] < j_end; ++i) {
          const int col = t[i] - j0;
          if (((col >> 1) & 3) == (lane & 3)) bits |= row_bit(2 * (col >> 3) + (col & 1));
        }
        return bits;
      }
      if (kind == SA_MASK_BLOCK_MASK) {
        const int qb = floor_div(p, c.block_q);
        if (qb < 0 || qb >= c.mask_rows) return 0u;
        const int32_t* words = data + (c.data_offset + qb * ((c.mask_cols + 31) / 32));
        const int kb_last = (j_end - 1) / c.block_k;
        uint32_t bits = 0u;
        SA_NO_UNROLL
        for (int kb = j0 / c.block_k; kb <= kb_last && kb < c.mask_cols; ++kb) {
          if ((static_cast<uint32_t>(words[kb / 32]) >> (kb % 32)) & 1u) {
            bits |= lane_cols(kb * c.block_k - j0, kb * c.block_k + c.block_k - 1 - j0, lane);
          }
        }
        return bits;
      }
      if (kind == SA_MASK_BIGBIRD) {
        const int bq = c.block_q;
        const int qb = floor_div(p, bq);
        if (qb < c.bigbird_global_blocks) return ~0u;  // a global query block
        const int32_t* t = data + c.data_offset;
        const int rrow = qb - c.rand_first_q_block;
        const bool drawn = rrow >= 0 && rrow < c.rand_q_blocks;
        const int32_t* blocks = t + c.rand_q_blocks + 1;
        uint32_t bits = 0u;
        SA_NO_UNROLL
        for (int kb = j0 / bq; kb <= (j_end - 1) / bq; ++kb) {
          const int dq = qb - kb;
          bool ok = (dq < 0 ? -dq : dq) <= c.bigbird_window_half || kb < c.bigbird_global_blocks;
          if (!ok && drawn) {
            SA_NO_UNROLL
            for (int i = t[rrow]; i < t[rrow + 1]; ++i) ok = ok || blocks[i] == kb;
          }
          if (ok) bits |= lane_cols(kb * bq - j0, kb * bq + bq - 1 - j0, lane);
        }
        return bits;
      }
    }
    uint32_t bits = 0u;
    SA_NO_UNROLL
    for (int k = 0; k < 2 * NT; ++k) {
      const int j = keys.first + (v0 + lane_col(k, lane)) * keys.step;
      if (admits(c, p, j)) bits |= row_bit(k);
    }
    return bits;
  }

  // Query row `row` (-1: padding) in the regular kv tile `tile` of any program: this lane's
  // keep bits, the union of the components' bits (component_bits) bounded by the keys that
  // exist and, causal, precede the query.
  template <int NT>
  SA_DEVICE uint32_t row_tile_bits(int row, const KeyMap& keys, int tile, int lane) const {
    if (row < 0) return 0u;
    const int p = row + (kv_len - q_len);
    const int j_max = last_key(p);
    const int v0 = tile * SA_FWD_BLOCK_N;
    int vlo, vhi;
    view_interval(0, j_max, keys, vlo, vhi);
    const uint32_t exists = lane_cols(vlo - v0, vhi - v0, lane);
    uint32_t any = 0u;
    SA_NO_UNROLL
    for (int i = 0; i < program->num_components && (any & exists) != exists; ++i) {
      any |= component_bits<NT>(components[program->first_component + i], p, j_max, keys, v0,
                                lane);
    }
    return any & exists;
  }

  // The bits of a regular tile (tile >= 0) the interval form does not cover (programs with
  // table-driven kinds): each row's bit set (row_tile_bits), in a rolled loop over the rows
  // (one copy of the row's code), packed two rows to a register. `token_of(r)` is fragment
  // row r's query row.
  template <int NT, int MT, typename TokenOf>
  SA_DEVICE void table_bits(uint32_t (&keep)[MT], const TokenOf& token_of, const KeyMap& keys,
                            int tile, int lane) const {
    static_assert(MT <= 2, "two registers of bits");
    uint32_t keep01 = 0u, keep23 = 0u;
    SA_NO_UNROLL
    for (int r = 0; r < 2 * MT; ++r) {
      const uint32_t bits = (row_tile_bits<NT>(token_of(r), keys, tile, lane) & kRowBits)
                            << (2 * (r & 1));
      if (r < 2) keep01 |= bits; else keep23 |= bits;
    }
    keep[0] = keep01;
    if (MT > 1) keep[MT - 1] = keep23;
  }

  // The bits of a tile the interval form does not cover: a regular tile's from table_bits, a
  // gathered one's from gathered_bits. kGathered = false compiles the gathered path out (the
  // run-time walk lists no gathered tile).
  template <int NT, bool kGathered, int MT>
  SA_DEVICE void general_bits(uint32_t (&keep)[MT], const int (&row_tok)[2 * MT],
                              const KeyMap& keys, int tile, int lane) const {
    auto token_of = [&](int r) {
      int tok = row_tok[0];
      SA_UNROLL
      for (int q = 1; q < 2 * MT; ++q) tok = r == q ? row_tok[q] : tok;  // no local array
      return tok;
    };
    if (tile >= 0) {
      table_bits<NT>(keep, token_of, keys, tile, lane);
    } else if (kGathered) {
      gathered_bits<NT>(keep, token_of, keys, tile, lane);
    } else {
      SA_UNROLL
      for (int mt = 0; mt < MT; ++mt) keep[mt] = 0u;  // never listed (kGathered = false)
    }
  }

  // The mask of a partial tile as bits (`select` applies them), computed before the tile's
  // scores exist (fewer live registers). `row_tok[2 * mt + h]` is the query row of fragment
  // row g + 8h of m16 tile mt (-1 for padding); `keys` maps column c of kv tile `tile` to its
  // key. Regular tiles of an interval-form predicate cost, per row, its interval form (a few
  // loads of the program, on partial tiles only: kept out of the mainloop's registers) and
  // its bits (an add, a clip and a shift per bound). Regular tiles of other predicates build
  // each row's bits component by component (table_bits: rolled loops over rows, components,
  // key blocks and listed keys). Gathered tiles take a prefix of their ascending keys
  // (gathered_bits; kGathered = false: the walk lists none).
  template <int NT, bool kGathered = true, int MT>
  SA_DEVICE void bits(uint32_t (&keep)[MT], const int (&row_tok)[2 * MT], const KeyMap& keys,
                      int tile, int lane) const {
    RowCols rc[2 * MT];
    if (intervals > 0) rows_cols(rc, row_tok, keys, lane);
    bits<NT, kGathered>(keep, row_tok, rc, keys, tile, lane);
  }

  // `bits` with this lane's view of the rows' interval forms already built (`rc`, meaningful
  // when `intervals` > 0): kernels whose registers allow it build them once per block.
  template <int NT, bool kGathered = true, int MT>
  SA_DEVICE void bits(uint32_t (&keep)[MT], const int (&row_tok)[2 * MT],
                      const RowCols (&rc)[2 * MT], const KeyMap& keys, int tile,
                      int lane) const {
    if (intervals > 0 && tile >= 0) {
      if (intervals == 1) {
        interval_bits<false, NT>(keep, rc, tile);
      } else {
        interval_bits<true, NT>(keep, rc, tile);
      }
      return;
    }
    general_bits<NT, kGathered>(keep, row_tok, keys, tile, lane);
  }

  // A gathered kv tile's bits (tile < 0). The compiler gathers only keys that its row set's
  // program admits for every row up to causality -- global key columns, and the sinks of a
  // residue-class view -- in ascending order, and pads each list to whole tiles with INT32_MAX
  // (BlockSparseMeta::check verifies all three), so a row's allowed columns are the first n:
  // the tile's keys at or before the query (every existing one without causality). n comes
  // from a branchless binary search over the tile's 64 entries (7 steps of a load and a
  // compare, no bounds test: the padding is never at or before a query), then the row's bits
  // like an interval's: a compare and a select per element in `select`, instead of the
  // program interpreted entry by entry.
  // `token_of(r)` is fragment row r's query row (-1: padding).
  template <int NT, int MT, typename TokenOf>
  SA_DEVICE void gathered_bits(uint32_t (&keep)[MT], const TokenOf& token_of, const KeyMap& keys,
                               int tile, int lane) const {
    static_assert(NT * 8 == SA_FWD_BLOCK_N && SA_FWD_BLOCK_N == 64, "7 search steps");
    const int valid0 = keys.valid(tile);
    const int valid = valid0 < SA_FWD_BLOCK_N ? valid0 : SA_FWD_BLOCK_N;
    const int32_t* list = keys.gather + (-tile - 1) * SA_FWD_BLOCK_N;
    const bool causal = program->causal != 0;
    // A rolled loop over the lane's fragment rows, as table_bits (unrolled, the searches'
    // live ranges spill on head_dim 64's 128-row tile and head_dim 512).
    uint32_t keep01 = 0u, keep23 = 0u;
    SA_NO_UNROLL
    for (int r = 0; r < 2 * MT; ++r) {
      const int row = token_of(r);
      const int p = row + (kv_len - q_len);
      int n = valid;
      if (causal) {
        // The count of the tile's keys <= p: grown by halving steps over 63 entries, then the
        // 64th. Unsigned and added to the pointer before the step, so each probe's `step - 1`
        // is the load's constant offset (a signed `c + step - 1` is added, then sign-extended:
        // 9 instructions per step instead of 8 on sm_90 hd64 m128).
        uint32_t c = 0u;
        SA_UNROLL
        for (int step = SA_FWD_BLOCK_N / 2; step > 0; step >>= 1) {
          if ((list + c)[step - 1] <= p) c += step;
        }
        if (list[c] <= p) ++c;
        n = static_cast<int>(c);
      }
      if (row < 0) n = 0;
      // The row bits of columns 0 .. n - 1 (lane_cols with its lower bound folded away).
      const uint32_t bits = (count_bits(cols_count(n - 1 - 2 * (lane & 3))) & kRowBits)
                            << (2 * (r & 1));
      if (r < 2) keep01 |= bits; else keep23 |= bits;
    }
    keep[0] = keep01;
    if (MT > 1) keep[MT - 1] = keep23;
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
