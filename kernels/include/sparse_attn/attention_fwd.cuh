// Forward attention, FlashAttention-2 style, as named phases. One block = BLOCK_M query rows
// of one (batch, head) (128 rows, 32 per warp, for prefill; 64 for decode); K and V tiles
// stream through one shared buffer each with cp.async, their loads interleaved with the two
// GEMMs; S = Q.K^T and O += P.V run on tensor cores with P kept in registers; the online
// softmax lives in registers (online_softmax.cuh); the tile walk is an iteration policy
// (block_iter.cuh), so sparsity never forks this mainloop.
#pragma once

#include "sparse_attn/arch.cuh"
#include "sparse_attn/block_iter.cuh"
#include "sparse_attn/kernel_traits.cuh"
#include "sparse_attn/mask.cuh"
#include "sparse_attn/online_softmax.cuh"
#include "sparse_attn/paged_kv.cuh"
#include "sparse_attn/params.h"
#include "sparse_attn/split_kv.cuh"
#include "sparse_attn/params_layout.h"  // layout asserted against the Rust mirror
#include "sparse_attn/tile_io.cuh"
#include "sparse_attn/tile_mma.cuh"
#include "sparse_attn/tile_walk.cuh"

namespace sa {

// Deliberately broken variants of the forward kernel, instantiated only in
// kernels/tests/attention_canary.cu: each is a bug the emulator tests must catch.
enum class Canary {
  None,
  // P's A fragment with a2 and a4 swapped (a broken fragment layout).
  SwapA2A4,
  // Empty rows (no allowed key) get their LSE but no output store: passes if outputs start
  // zeroed, fails once the emulator poisons them.
  SkipEmptyRowStore,
  // The output accumulator not rescaled when a row's running max moves: passes while maxima
  // stay within the rescale slack after the first tile (small random logits), fails once
  // they grow mid-row.
  SkipRescale,
  // ALiBi distances from top-left aligned query positions (p = i, the row index, instead of
  // i + kv_len - q_len): passes while q_len == kv_len, fails for decode and chunked prefill.
  AlibiTopLeft,
  // The staged mainloop's waits leave one K/V load more in flight than the tile they read
  // allows: K_i or V_i is read while its cp.async may still be landing. Passes wherever copies
  // land at once; the emulator's adversarial cp.async (data lands only at a wait that covers
  // it) must catch it.
  EarlyWait,
};

// Where one (batch, head) lives in the q/out/lse tensors (uniform or varlen) and where its
// keys live (contiguous k/v or a paged cache).
template <typename T>
struct SeqSlice {
  int q_len, kv_len;
  int64_t row0;  // row of this sequence's first query in out (b * q_len, or cu_seqlens_q[b])
  const T* q;    // [q_len, D] rows, pitch q_row_stride
  T* out;        // [q_len, D]
  int64_t lse0;  // offset in p.lse of this (sequence, head)'s first query (when p.lse)
  KvRows<T> kv;  // key j of this sequence and kv head

  SA_DEVICE static SeqSlice make(const SaAttnFwdParams& p, int b, int h) {
    const int hk = h / (p.num_heads / p.num_kv_heads);
    SeqSlice s;
    int64_t q_row0, k_row0;  // first row of the sequence (varlen) or 0
    int64_t q_batch, k_batch, v_batch, o_batch, lse_off;
    if (p.cu_seqlens_q != nullptr) {
      q_row0 = p.cu_seqlens_q[b];
      k_row0 = p.cu_seqlens_k[b];
      s.q_len = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
      s.kv_len = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
      q_batch = k_batch = v_batch = o_batch = 0;
      lse_off = h * p.lse_head_stride + q_row0 * p.lse_row_stride;
    } else {
      q_row0 = k_row0 = 0;
      s.q_len = p.q_len;
      s.kv_len = p.kv_len;
      q_batch = b * p.q_batch_stride;
      k_batch = b * p.k_batch_stride;
      v_batch = b * p.v_batch_stride;
      o_batch = b * p.o_batch_stride;
      lse_off = b * p.lse_batch_stride + h * p.lse_head_stride;
    }
    s.row0 = p.cu_seqlens_q != nullptr ? q_row0 : int64_t(b) * p.q_len;
    s.q = static_cast<const T*>(p.q) + q_batch + q_row0 * p.q_row_stride + h * p.q_head_stride;
    s.out = static_cast<T*>(p.out) + o_batch + q_row0 * p.o_row_stride + h * p.o_head_stride;
    s.lse0 = lse_off;
    s.kv.kv_len = s.kv_len;
    if (p.paged.block_table != nullptr) {
      const int64_t head_offset = hk * p.paged.page_head_stride;
      s.kv.k = static_cast<const T*>(p.paged.k_pages) + head_offset;
      s.kv.v = static_cast<const T*>(p.paged.v_pages) + head_offset;
      s.kv.block_table = p.paged.block_table + int64_t(b) * p.paged.block_table_stride;
    } else {
      s.kv.k = static_cast<const T*>(p.k) + k_batch + k_row0 * p.k_row_stride + hk * p.k_head_stride;
      s.kv.v = static_cast<const T*>(p.v) + v_batch + k_row0 * p.v_row_stride + hk * p.v_head_stride;
      s.kv.block_table = nullptr;
    }
    return s;
  }
};

// Scales raw Q.K^T accumulators into log2 units, with optional tanh softcap (docs/patterns.md:
// s = c * tanh(s / c), applied before masking). Only for softcap, a non-positive scale or
// ALiBi (whose bias adds to scaled scores): otherwise the scale is folded into the softmax's
// exp2 FFMA (SoftmaxRows::update).
template <int MT, int NT>
SA_DEVICE void scale_scores(float (&s)[MT][NT][4], float scale, float softcap) {
  const bool cap = softcap > 0.f;
  const float pre = cap ? scale / softcap : scale * kLog2e, post = softcap * kLog2e;
  SA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    SA_UNROLL
    for (int nt = 0; nt < NT; ++nt) {
      SA_UNROLL
      for (int i = 0; i < 4; ++i) {
        s[mt][nt][i] = cap ? tanhf(s[mt][nt][i] * pre) * post : s[mt][nt][i] * pre;
      }
    }
  }
}

// Rescales this warp's output rows by the online-softmax correction factors (row 2 * mt + h
// is row g + 8h of m16 tile mt).
template <int MT, int NT>
SA_DEVICE void rescale_o(float (&o)[MT][NT][4], const float (&alpha)[2 * MT]) {
  SA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    SA_UNROLL
    for (int nt = 0; nt < NT; ++nt) {
      o[mt][nt][0] *= alpha[2 * mt];
      o[mt][nt][1] *= alpha[2 * mt];
      o[mt][nt][2] *= alpha[2 * mt + 1];
      o[mt][nt][3] *= alpha[2 * mt + 1];
    }
  }
}

// The block row of this lane's fragment row r (= 2 * mt + h: row g + 8h of m16 tile mt).
SA_DEVICE int fragment_row(int warp_row0, int r, int lane) {
  return warp_row0 + (r / 2) * 16 + (lane >> 2) + 8 * (r % 2);
}

// Query row i of sequence b sits at position p = i + shift, shift = kv_len - q_len (bottom-right
// aligned, docs/patterns.md "Positions").
SA_DEVICE int position_shift(const SaAttnFwdParams& p, int b) {
  if (p.cu_seqlens_q == nullptr) return p.kv_len - p.q_len;
  return (p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b]) - (p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b]);
}

// Adds the ALiBi bias -slope_h * |p - j| to this warp's scores of kv tile `tile`, p the
// position of the fragment row's query (`row_tok[r]`: query row of fragment row r, -1 for
// padding) and j the column's key; h is the row's query head (the block's first head `h0`
// plus the row's packing offset). Called after scale_scores, so `s` is in log2 units (the
// bias is scaled by log2(e)) and capped: FlashAttention-2's order,
// s = c * tanh(scale * q.k / c) - slope * |p - j|, then the mask (masked entries become -inf
// whatever their bias). Recomputed per tile from params, the rows' tokens and keys rather
// than held in registers across the mainloop: only layers with slopes pay. Columns past the
// keys get a finite bias and are masked afterwards like every missing column.
template <bool kTopLeft, int MT, int NT>
SA_DEVICE void add_alibi(float (&s)[MT][NT][4], const SaAttnFwdParams& p, int b, int h0,
                         const int (&row_tok)[2 * MT], const RowMap& rows, const KeyMap& keys,
                         int tile, int warp_row0, int lane) {
  const int t = lane & 3;
  const int shift = kTopLeft ? 0 : position_shift(p, b);
  if (tile >= 0) {
    // Regular tile: column c = nt * 8 + 2t + i holds key j0 + (nt * 8 + i) * step, so per
    // element the distance is one FFMA off the row's distance to the lane's first column
    // (exact in f32 below 2^24 positions).
    const int j0 = keys.first + (tile * SA_FWD_BLOCK_N + 2 * t) * keys.step;
    const float step = static_cast<float>(keys.step);
    SA_UNROLL
    for (int r = 0; r < 2 * MT; ++r) {
      const int local = fragment_row(warp_row0, r, lane);
      const float d0 = static_cast<float>(row_tok[r] + shift - j0);
      const float coef = -p.alibi_slopes[h0 + rows.head_offset(local)] * kLog2e;
      SA_UNROLL
      for (int nt = 0; nt < NT; ++nt) {
        SA_UNROLL
        for (int i = 0; i < 2; ++i) {
          float& x = s[r / 2][nt][2 * (r % 2) + i];
          x = fmaf(fabsf(fmaf(-step, static_cast<float>(nt * 8 + i), d0)), coef, x);
        }
      }
    }
  } else {
    // Gathered tile (global key columns): each column's key from the view's list.
    float pos[2 * MT], coef[2 * MT];
    SA_UNROLL
    for (int r = 0; r < 2 * MT; ++r) {
      const int local = fragment_row(warp_row0, r, lane);
      pos[r] = static_cast<float>(row_tok[r] + shift);
      coef[r] = -p.alibi_slopes[h0 + rows.head_offset(local)] * kLog2e;
    }
    SA_UNROLL
    for (int nt = 0; nt < NT; ++nt) {
      SA_UNROLL
      for (int i = 0; i < 2; ++i) {
        const float j = static_cast<float>(keys.key(tile, nt * 8 + 2 * t + i));
        SA_UNROLL
        for (int r = 0; r < 2 * MT; ++r) {
          float& x = s[r / 2][nt][2 * (r % 2) + i];
          x = fmaf(fabsf(pos[r] - j), coef[r], x);
        }
      }
    }
  }
}

// The interval mask bits of a partial tile from this lane's row views stored in shared memory
// (its RowCols, 16 bytes per fragment row: upto_hi[0], below_lo[0], upto_hi[1], below_lo[1]),
// one row's in registers at a time.
template <bool kTwo, int NT, int MT>
SA_DEVICE void stored_interval_bits(uint32_t (&keep)[MT], Smem views, int tile) {
  SA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    keep[mt] = 0u;
    SA_UNROLL
    for (int h = 0; h < 2; ++h) {
      const uint4 b = arch::lds<uint4>(views + (2 * mt + h) * 16);
      const RowCols rc{{int(b.x), int(b.z)}, {int(b.y), int(b.w)}};
      keep[mt] |= TokenMask::interval_row_bits<kTwo, NT>(rc, h, tile);
    }
  }
}

// What the mask of a partial tile needs for this lane's fragment rows: the predicate, the
// rows' query tokens and (make_with_keys) the lane's view of their interval forms.
template <typename T, int MT>
struct PartialMask {
  TokenMask mask;
  int row_tok[2 * MT];
  RowCols cols[2 * MT];

  SA_DEVICE static PartialMask make(const SaAttnFwdParams& p, int set, const SeqSlice<T>& seq,
                                    const RowMap& rows, int warp_row0, int lane) {
    PartialMask m;
    m.mask = TokenMask::make(p.mask_programs + set, p.mask_components, p.mask_data, seq.q_len,
                             seq.kv_len);
    SA_UNROLL
    for (int r = 0; r < 2 * MT; ++r) m.row_tok[r] = rows.token(fragment_row(warp_row0, r, lane));
    return m;
  }

  SA_DEVICE static PartialMask make_with_keys(const SaAttnFwdParams& p, int set,
                                              const SeqSlice<T>& seq, const RowMap& rows,
                                              const KeyMap& keys, int warp_row0, int lane) {
    PartialMask m = make(p, set, seq, rows, warp_row0, lane);
    m.mask.rows_cols(m.cols, m.row_tok, keys, lane);
    return m;
  }
};

// Normalises and stores this warp's output rows (padding rows are dropped) and their LSE.
// `warp_row0` is the warp's first row in the block, mapped to (token, head offset from the
// block's first head h) by `rows`. Learnable sink logits, when the layer has them, enter the
// denominators here (SoftmaxRows::add_sinks). The block owns output columns
// [col0, col0 + DO) (FwdTraits::kOCols); the first column block stores the LSE.
template <typename T, int DO, int MT, Canary kCanary>
SA_DEVICE void write_o_lse(const SaAttnFwdParams& p, const SeqSlice<T>& seq, const RowMap& rows,
                           int h, int warp_row0, int col0, float (&o)[MT][DO / 8][4],
                           SoftmaxState<MT>& state, int lane) {
  float inv_l[2 * MT], lse[2 * MT];
  if (p.sink_logits != nullptr) {
    float sink[2 * MT];
    SA_UNROLL
    for (int r = 0; r < 2 * MT; ++r) {
      sink[r] = p.sink_logits[h + rows.head_offset(fragment_row(warp_row0, r, lane))];
    }
    state.finalize(sink, inv_l, lse);
  } else {
    state.finalize(inv_l, lse);
  }
  const int t = lane & 3;
  SA_UNROLL
  for (int r = 0; r < 2 * MT; ++r) {
    const int local = fragment_row(warp_row0, r, lane);
    const int token = rows.token(local), dh = rows.head_offset(local);
    if (token < 0) continue;
    // No LSE buffer (null): the caller did not ask for it. The first column block stores it.
    if (t == 0 && col0 == 0 && p.lse != nullptr) {
      p.lse[seq.lse0 + dh * p.lse_head_stride + token * p.lse_row_stride] = lse[r];
    }
    if (kCanary == Canary::SkipEmptyRowStore && inv_l[r] == 0.f) continue;
    uint32_t* dst = reinterpret_cast<uint32_t*>(seq.out + token * p.o_row_stride +
                                                dh * p.o_head_stride + col0 + 2 * t);
    const float(&acc)[DO / 8][4] = o[r / 2];
    const int c = 2 * (r % 2);
    SA_UNROLL
    for (int nt = 0; nt < DO / 8; ++nt) {
      arch::stg(dst + nt * 4, arch::pack2<T>(acc[nt][c] * inv_l[r], acc[nt][c + 1] * inv_l[r]));
    }
  }
}

// Split-KV epilogue: stores this warp's normalised partial output rows and their LSE (f32)
// for the combine kernel (attention_combine.cuh), which alone adds sink logits. Partial rows
// are D floats apart; the block owns columns [col0, col0 + DO), the first column block
// stores the LSE.
template <typename T, int D, int DO, int MT>
SA_DEVICE void write_partial(const SaAttnFwdParams& p, const SeqSlice<T>& seq, const RowMap& rows,
                             int h, int split, int warp_row0, int col0,
                             float (&o)[MT][DO / 8][4], SoftmaxState<MT>& state, int lane) {
  float inv_l[2 * MT], lse[2 * MT];
  state.finalize(inv_l, lse);
  const int t = lane & 3;
  const int64_t total_rows = split_rows(p);
  // A sequence past the layout's rows (device lengths above the capacity) has no slots.
  if (seq.row0 + seq.q_len > total_rows) return;
  SA_UNROLL
  for (int r = 0; r < 2 * MT; ++r) {
    const int local = fragment_row(warp_row0, r, lane);
    const int token = rows.token(local);
    if (token < 0) continue;
    const int64_t slot =
        split_slot(p, total_rows, split, seq.row0 + token, h + rows.head_offset(local));
    float2* dst = reinterpret_cast<float2*>(p.o_partial + slot * D + col0 + 2 * t);
    const float(&acc)[DO / 8][4] = o[r / 2];
    const int c = 2 * (r % 2);
    SA_UNROLL
    for (int nt = 0; nt < DO / 8; ++nt) {
      arch::stg(dst + nt * 4, make_float2(acc[nt][c] * inv_l[r], acc[nt][c + 1] * inv_l[r]));
    }
    if (t == 0 && col0 == 0) p.lse_partial[slot] = lse[r];
  }
}

// The forward kernel of one instantiation (Tr = FwdTraits<T, D, WARP_ROWS>). The mainloop, per
// kv tile, as FlashAttention-2 interleaves it with one K and one V buffer:
//   wait for K_i; barrier (K_i visible, everyone done with V_{i-1});  load V_i
//   S = Q . K_i^T; mask; online softmax (O rescaled only when a row's max moved); P in registers
//   wait for V_i; barrier (V_i visible, everyone done with K_i);      load K_{i+1}
//   O += P . V_i
// so V_i's load overlaps Q.K_i^T and the softmax, and K_{i+1}'s overlaps P.V_i.
template <typename Tr, Canary kCanary = Canary::None, typename Walk = ListWalk>
SA_DEVICE void attn_fwd(const SaAttnFwdParams& params) {
  using T = typename Tr::Elem;
  constexpr int D = Tr::kHeadDim, MT = Tr::kMTiles;
  const int num_splits = params.num_splits > 1 ? params.num_splits : 1;
  const int pack = params.gqa_pack > 1 ? params.gqa_pack : 1;
  // blockIdx.x = (m_block * num_splits + split) * kColSplits + column block: the column
  // blocks of one query tile and split are neighbours in the grid.
  const unsigned bx = blockIdx.x / Tr::kColSplits;
  const int m_block = bx / num_splits, split = bx % num_splits;
  const int h = blockIdx.y * pack, b = blockIdx.z;  // packed: first head of the kv group
  const int tid = threadIdx.x, warp = tid / 32, lane = static_cast<int>(arch::lane_id());

  // This block's query tile, the last first: tiles are in query order, so with causal
  // patterns the heaviest are scheduled first and the light ones fill the tail of the grid.
  // The grid covers the longest (sequence, set), so others exit here (whole block: uniform
  // exit, no barrier yet). Compiled walk: the m_block-th CSR row from the end of the set's;
  // run-time walk: the m_block-th query tile from the end of the sequence's, natural rows and
  // keys.
  // An instantiation serves one walk (params.walk, which the launcher sets with the kernel).
  if (params.walk != (Walk::kRuntime ? SA_WALK_RUNTIME : SA_WALK_LISTS)) return;
  const int set = params.seq_program_base[b] + params.head_set[h];
  const SeqSlice<T> seq = SeqSlice<T>::make(params, b, h);
  int row = 0;
  SaTileView view;
  if constexpr (Walk::kRuntime) {
    // A sequence past the plan's maxima is not read (its rows stay unwritten).
    if (seq.q_len > params.q_len || seq.kv_len > params.kv_len) return;
    const int per_tile = Tr::kBlockM / pack;  // query tokens per tile
    const int m = (seq.q_len + per_tile - 1) / per_tile - 1 - m_block;
    if (m < 0) return;
    const int first = m * per_tile;
    const int count = seq.q_len - first < per_tile ? seq.q_len - first : per_tile;
    view = SaTileView{first, 1, count, 0, 0, 1, seq.kv_len, 0, 0, 0};
  } else {
    row = params.set_row_ptr[set + 1] - 1 - m_block;
    if (row < params.set_row_ptr[set]) return;
    view = params.tile_views[row];
  }
  const RowMap rows = RowMap::make(view, params.view_data, pack);
  const KeyMap keys = KeyMap::make(view, params.view_data);
  const Walk tiles = [&] {
    if constexpr (Walk::kRuntime) {
      const TokenMask m = TokenMask::make(params.mask_programs + set, params.mask_components,
                                          params.mask_data, seq.q_len, seq.kv_len);
      return Walk::make(m, view.row_first, view.row_first + view.row_count - 1, keys);
    } else {
      return Walk::make(params, row);
    }
  }();

  const Smem smem = dynamic_smem();
  const Smem sQ = smem + Tr::kQOffset;
  // K and V of the walk's j-th tile live in stage j % kStages (one stage: always the same).
  auto sK = [&](int j) {
    return smem + (Tr::kKOffset + (Tr::kStages > 1 ? j % Tr::kStages : 0) * Tr::kKvTileBytes);
  };
  auto sV = [&](int j) {
    return smem + (Tr::kVOffset + (Tr::kStages > 1 ? j % Tr::kStages : 0) * Tr::kVTileBytes);
  };

  // This block's share of the walk: split `split` of `num_splits` contiguous parts.
  const int i_begin = static_cast<int>(int64_t(tiles.count()) * split / num_splits);
  const int i_end = static_cast<int>(int64_t(tiles.count()) * (split + 1) / num_splits);

  // Phase: produce Q (one cp.async group) and the first K tile (the next).
  load_tile_async<Tr::kBlockM, D, Tr::kThreads, false, T>(
      sQ,
      [&](int r) -> const T* {
        const int token = rows.token(r);
        return token >= 0 ? seq.q + token * params.q_row_stride +
                                       rows.head_offset(r) * params.q_head_stride
                                 : nullptr;
      },
      static_cast<const T*>(params.q), tid);
  arch::cp_async_commit();
  const bool paged = params.paged.block_table != nullptr;
  // Phase: produce the K and V rows of kv tile `tile`. Chosen once per tile, outside the
  // chunk loop, and for K and V together (when K is produced): a full regular tile whose keys
  // are one strided run (contiguous K/V, an affine view, one resident page) is copied from
  // addresses computed once; anything else (a tail, a gathered tile, pages smaller than a
  // tile, evicted keys) maps key by key. The strided path's per-thread offset and row step
  // are fixed for the block (a view's key step, the row strides and the page geometry do not
  // change between tiles): computed once. The never-read source of zero-filled rows is the
  // tensor's base.
  const KvRows<T>& kv = seq.kv;
  // V's rows from this block's first output column on (kColSplits > 1: head_dim 512).
  const T* const v_base =
      kv.v + (Tr::kColSplits > 1 ? (blockIdx.x % Tr::kColSplits) * Tr::kOCols : 0);
  using Copy = TileCopy<Tr::kBlockN, D, Tr::kThreads>;
  using VCopy = TileCopy<Tr::kBlockN, Tr::kOCols, Tr::kThreads>;
  const int64_t k_stride = KvRows<T>::pitch(params, params.k_row_stride, paged);
  const int64_t v_stride = KvRows<T>::pitch(params, params.v_row_stride, paged);
  const int64_t k_pitch = paged ? D : keys.step * k_stride;
  const int64_t v_pitch = paged ? D : keys.step * v_stride;
  // The row-by-row path's strides: the lean loader (head_dim 512) reuses the 32-bit ones of
  // the run path (k_row, v_row below: one register each instead of two; without it sm_80
  // spills 12 bytes).
  auto row_stride = [](int64_t wide) -> int64_t {
    return Tr::kLeanLoader ? int64_t(static_cast<int>(wide)) : wide;
  };
  // This thread's offsets in a strided run, held across the mainloop: 32-bit in the lean
  // loader (head_dim 512, where their high words spilled), which then copies a layout whose
  // offsets reach 2^31 elements row by row (no run tiles, below).
  using ThreadOffset = typename LoaderOffset<Tr::kLeanLoader>::type;
  const int64_t k_thread64 = Copy(tid).offset(k_pitch), v_thread64 = VCopy(tid).offset(v_pitch);
  const ThreadOffset k_thread = static_cast<ThreadOffset>(k_thread64);
  const ThreadOffset v_thread = static_cast<ThreadOffset>(v_thread64);
  const bool offsets_fit = !Tr::kLeanLoader ||
                           (Copy::kRowStep * k_pitch <= int64_t(0x7fffffff) &&
                            VCopy::kRowStep * v_pitch <= int64_t(0x7fffffff));
  auto produce_k_rows = [&](int tile, Smem dst) {
    const void* idle = paged ? params.paged.k_pages : params.k;
    load_tile_async<Tr::kBlockN, D, Tr::kThreads, Tr::kRolledRows, T>(
        dst,
        [&](int r) {
          return kv.template row<Walk::kRuntime>(params, kv.k, row_stride(k_stride),
                                                 keys.key(tile, r));
        },
        static_cast<const T*>(idle), tid);
  };
  auto produce_v_rows = [&](int tile, Smem dst) {
    const void* idle = paged ? params.paged.v_pages : params.v;
    load_tile_async<Tr::kBlockN, Tr::kOCols, Tr::kThreads, Tr::kRolledRows, T>(
        dst,
        [&](int r) {
          return kv.template row<Walk::kRuntime>(params, v_base, row_stride(v_stride),
                                                 keys.key(tile, r));
        },
        static_cast<const T*>(idle), tid);
  };
  // Regular tiles [0, run_tiles) are strided runs (KvRows::run_tiles: decided once here).
  const int run_tiles =
      offsets_fit ? kv.run_tiles(params, keys.first, keys.step, keys.count, Tr::kBlockN) : 0;
  const int k_row = static_cast<int>(k_stride), v_row = static_cast<int>(v_stride);
  // This thread's first V source of the tile whose K was produced last (nullptr: row by row):
  // loads alternate K_j, V_j, K_j+1, ..., so V always follows its own tile's K.
  const T* v_run = nullptr;
  // K of the walk's j-th tile (kv tile `tile`) into its stage.
  auto produce_k = [&](int tile, int j) {
    const Smem dst = sK(j);
    int64_t k_off = 0, v_off = 0;
    const bool run = static_cast<unsigned>(tile) < static_cast<unsigned>(run_tiles) &&
                     kv.template run_offsets<Walk::kRuntime>(params, k_row, v_row, keys.first + tile * Tr::kBlockN * keys.step,
                                    k_off, v_off);
    v_run = run ? v_base + (v_off + v_thread) : nullptr;
    if (run) {
      load_tile_strided<Tr::kBlockN, D, Tr::kThreads, T>(dst, kv.k + (k_off + k_thread),
                                                         Copy::kRowStep * k_pitch, tid);
    } else {
      produce_k_rows(tile, dst);
    }
  };
  // V of the walk's j-th tile (the one whose K was produced last).
  auto produce_v = [&](int tile, int j) {
    const Smem dst = sV(j);
    if (v_run != nullptr) {
      load_tile_strided<Tr::kBlockN, Tr::kOCols, Tr::kThreads, T>(
          dst, v_run, VCopy::kRowStep * v_pitch, tid);
    } else {
      produce_v_rows(tile, dst);
    }
  };
  // Each tile index is read once: the prefetch reads it, the iterations reuse it. `tile` is
  // the current tile's; staged, `ahead` is the next one's (its K is in flight).
  int tile = i_begin < i_end ? tiles.tile(i_begin) : 0;
  if (i_begin < i_end) produce_k(tile, i_begin);
  arch::cp_async_commit();
  [[maybe_unused]] int ahead = 0;
  if constexpr (Tr::kStages > 1) {
    // Staged: V_0 and K_1 too, so every wait below leaves 2 kStages - 2 = 2 loads in flight.
    if (i_begin < i_end) produce_v(tile, i_begin);
    arch::cp_async_commit();
    ahead = i_begin + 1 < i_end ? tiles.tile(i_begin + 1) : 0;
    if (i_begin + 1 < i_end) produce_k(ahead, i_begin + 1);
    arch::cp_async_commit();
  }
  // Loads in flight after each wait of the mainloop: the ones issued after the tile it waits
  // for (one stage: none).
  constexpr int kInFlight = 2 * Tr::kStages - 2 + (kCanary == Canary::EarlyWait ? 1 : 0);

  float o[MT][Tr::kOTiles][4];  // [MT x 16, kOCols] output accumulator of this warp
  SA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    SA_UNROLL
    for (int nt = 0; nt < Tr::kOTiles; ++nt) {
      SA_UNROLL
      for (int i = 0; i < 4; ++i) o[mt][nt][i] = 0.f;
    }
  }
  SoftmaxState<MT> state;
  state.init();
  const int warp_row0 = warp * Tr::kWarpRows;  // this warp's first row in the block
  // The mask of partial tiles: built once here where registers allow (64-row tiles). With
  // 32-row warp tiles whose Q lives in registers, the rows' interval forms are built once
  // here too, into the warp's own rows of the Q buffer (dead once the Q fragments are read):
  // each lane stores its rows' bounds and alone reads them back, at 16 bytes per row, so a
  // partial tile costs 2 * MT shared loads instead of the program's global loads and the
  // bounds arithmetic. Otherwise the mask is rebuilt on each partial tile.
  using MaskRows = PartialMask<T, MT>;
  // Whether the walk may list gathered kv tiles (the compiled lists; the run-time walk lists
  // none, so its kernels leave the gathered mask out). head_dim 512's run-time kernel keeps
  // it: without it ptxas allocates that kernel's registers differently and spills 8 bytes on
  // sm_90.
  constexpr bool kMayGather = !Walk::kRuntime || Tr::kLeanLoader;
  constexpr bool kMaskInSmem = !Tr::kHoistMask && Tr::kQInRegs;
  static_assert(!kMaskInSmem || 32 * (2 * MT * 16 + 4) <= Tr::kWarpRows * Tr::kRowBytes,
                "a lane's row bounds fit in its warp's rows of the Q buffer");
  const MaskRows hoisted =
      Tr::kHoistMask ? MaskRows::make_with_keys(params, set, seq, rows, keys, warp_row0, lane)
                     : MaskRows{};
  // This lane's row bounds (kMaskInSmem), a fixed slot: recomputed at use, not held.
  auto s_bounds = [&] { return sQ + (warp_row0 * Tr::kRowBytes + lane * 2 * MT * 16); };
  // The interval count of the block's mask (kMaskInSmem), after the warp's bounds: read
  // back on partial tiles rather than held in a register across the mainloop.
  auto s_intervals = [&] { return sQ + (warp_row0 * Tr::kRowBytes + 32 * 2 * MT * 16 + lane * 4); };
  // Built before the Q fragments are loaded (fewer live registers), stored after.
  const MaskRows built =
      kMaskInSmem ? MaskRows::make_with_keys(params, set, seq, rows, keys, warp_row0, lane)
                  : MaskRows{};
  // Q A-fragments, loaded once before the mainloop when they fit in registers (else re-read
  // per k step): Q is its own cp.async group, so this waits for Q only, not for K_0.
  uint32_t qf[Tr::kQInRegs ? MT : 1][Tr::kQInRegs ? Tr::kKSteps : 1][4];
  if constexpr (Tr::kQInRegs) {
    arch::cp_async_wait<kInFlight + 1>();  // Q landed; K_0 (and staged, V_0, K_1) may not
    __syncthreads();
    load_q_frags<D, MT>(qf, sQ, warp_row0, lane);
  }
  if constexpr (kMaskInSmem) {
    arch::syncwarp();  // every lane's ldmatrix of the warp's Q rows is done
    arch::sts(s_intervals(), built.mask.intervals);
    SA_UNROLL
    for (int r = 0; r < 2 * MT; ++r) {
      const RowCols& c = built.cols[r];
      arch::sts(s_bounds() + r * 16,
                make_uint4(c.upto_hi[0], c.below_lo[0], c.upto_hi[1], c.below_lo[1]));
    }
  }
  // The score scale folds into the exp2 FFMA unless softcap (or a non-positive scale) needs
  // the scores scaled first, or ALiBi adds its bias to scaled scores (so the dense path still
  // tests one flag per tile).
  const bool fold_scale =
      params.softcap == 0.f && params.scale > 0.f && params.alibi_slopes == nullptr;
  const float exp2_mul = fold_scale ? params.scale * kLog2e : 1.f;

  // Tiles are counted once per query tile and split (by its first column block): here in the
  // lean kernel (head_dim 512, whose registers cannot hold i_begin across the mainloop on
  // sm_80), after the epilogue elsewhere.
  if constexpr (Tr::kLeanLoader) {
    if (tid == 0 && blockIdx.x % Tr::kColSplits == 0 && params.tiles_visited != nullptr) {
      arch::atomic_add(params.tiles_visited, static_cast<unsigned long long>(i_end - i_begin));
    }
  }

  for (int i = i_begin; i < i_end; ++i) {
    // Phase: K_i (and, first, Q) landed; the barrier publishes it and frees the V buffer of
    // tile i - 1 (P.V done). Into it: V_i (one stage), or staged V_i+1.
    arch::cp_async_wait<kInFlight>();
    __syncthreads();
    if constexpr (Tr::kStages > 1) {
      if (i + 1 < i_end) produce_v(ahead, i + 1);
    } else {
      produce_v(tile, i);
    }
    arch::cp_async_commit();

    // A partial tile's mask, as bits computed before its scores exist (S is not live yet).
    const bool partial = tiles.partial(i, tile);
    uint32_t keep[MT];
    if (partial) {
      if constexpr (Tr::kHoistMask) {
        hoisted.mask.template bits<Tr::kSTiles, kMayGather>(keep, hoisted.row_tok,
                                                                 hoisted.cols, keys, tile, lane);
      } else if (kMaskInSmem && (!kMayGather || tile >= 0) &&
                 arch::lds<int>(s_intervals()) > 0) {
        // Row by row from the stored views, with the interval count tested once per tile.
        if (arch::lds<int>(s_intervals()) == 1) {
          stored_interval_bits<false, Tr::kSTiles>(keep, s_bounds(), tile);
        } else {
          stored_interval_bits<true, Tr::kSTiles>(keep, s_bounds(), tile);
        }
      } else if (kMaskInSmem) {
        // Table-driven kinds on regular tiles (the interval form: above) and gathered tiles:
        // the rows' tokens one at a time, the predicate built here (partial tiles only)
        // rather than held across the mainloop.
        const TokenMask mask = TokenMask::make(params.mask_programs + set, params.mask_components,
                                               params.mask_data, seq.q_len, seq.kv_len);
        auto token_of = [&](int r) { return rows.token(fragment_row(warp_row0, r, lane)); };
        if (!kMayGather || tile >= 0) {
          mask.table_bits<Tr::kSTiles>(keep, token_of, keys, tile, lane);
        } else {
          mask.gathered_bits<Tr::kSTiles>(keep, token_of, keys, tile, lane);
        }
      } else {
        const MaskRows mr = MaskRows::make(params, set, seq, rows, warp_row0, lane);
        mr.mask.template bits<Tr::kSTiles, kMayGather>(keep, mr.row_tok, keys, tile, lane);
      }
    }

    // Phase: S = Q . K^T  [MT x 16, BLOCK_N] per warp, masked on partial tiles.
    float s[MT][Tr::kSTiles][4];
    qk_gemm<T, D, Tr::kBlockN, MT, Tr::kQInRegs>(s, qf, sQ, warp_row0, sK(i), lane);
    if (!fold_scale) {
      scale_scores(s, params.scale, params.softcap);
      if (params.alibi_slopes != nullptr) {
        // The rows' query tokens: the hoisted mask holds them where registers allow.
        int tok[2 * MT];
        SA_UNROLL
        for (int r = 0; r < 2 * MT; ++r) {
          if constexpr (Tr::kHoistMask) {
            tok[r] = hoisted.row_tok[r];
          } else {
            tok[r] = rows.token(fragment_row(warp_row0, r, lane));
          }
        }
        add_alibi<kCanary == Canary::AlibiTopLeft>(s, params, b, h, tok, rows, keys, tile,
                                                   warp_row0, lane);
      }
    }
    if (partial) {
      TokenMask::select(s, keep);
    } else if (static_cast<unsigned>(tile) >= static_cast<unsigned>(run_tiles)) {
      // Run tiles have every column; others may end inside the tile.
      const int valid = keys.valid(tile);
      if (valid < Tr::kBlockN) mask_kv_tail(s, valid, lane);
    }

    // Phase: online softmax; S becomes P, packed into A fragments in registers.
    float alpha[2 * MT];
    if (state.update(s, exp2_mul, alpha) && kCanary != Canary::SkipRescale) rescale_o(o, alpha);
    uint32_t pf[MT][Tr::kPvKSteps][4];
    p_to_a_frags<T, Tr::kBlockN, MT, kCanary == Canary::SwapA2A4>(pf, s);

    // Phase: V_i landed; the barrier publishes it and frees K_i's buffer for tile
    // i + kStages.
    arch::cp_async_wait<kInFlight>();
    __syncthreads();
    const int j = i + Tr::kStages;
    const int next = j < i_end ? tiles.tile(j) : 0;
    if (j < i_end) produce_k(next, j);
    arch::cp_async_commit();

    // Phase: O += P . V with P reused from registers.
    pv_gemm<T, Tr::kOCols, Tr::kBlockN, MT>(o, pf, sV(i), lane);
    if constexpr (Tr::kStages > 1) {
      tile = ahead;
      ahead = next;
    } else {
      tile = next;
    }
  }
  arch::cp_async_wait<0>();  // nothing may be in flight at exit (only empty groups remain)

  // Phase: epilogue. The sequence's output pointers are derived again here rather than held
  // across the mainloop (at head_dim 256 the accumulators leave no register for them).
  const SeqSlice<T> out_seq = SeqSlice<T>::make(params, b, h);
  const int col_block = Tr::kColSplits > 1 ? static_cast<int>(blockIdx.x) % Tr::kColSplits : 0;
  const int col0 = col_block * Tr::kOCols;
  if (num_splits > 1) {
    write_partial<T, D, Tr::kOCols, MT>(params, out_seq, rows, h, split, warp_row0, col0, o,
                                        state, lane);
  } else {
    write_o_lse<T, Tr::kOCols, MT, kCanary>(params, out_seq, rows, h, warp_row0, col0, o, state,
                                            lane);
  }
  if constexpr (!Tr::kLeanLoader) {
    if (tid == 0 && params.tiles_visited != nullptr) {
      arch::atomic_add(params.tiles_visited, static_cast<unsigned long long>(i_end - i_begin));
    }
  }
}

}  // namespace sa
