// Tile configuration of the forward kernel: what is computed per block, per warp, per step.
// The host twin is `src/kernels.rs: fwd_tiles`, a pure function of (head_dim, phase); both
// read the constants of params.h and the static_asserts below keep them equal.
#pragma once

#include "sparse_attn/arch.cuh"
#include "sparse_attn/params.h"
#include "sparse_attn/tile_io.cuh"

namespace sa {

// One forward instantiation: element type T (f16 / bf16), head dimension D, the query rows
// each warp owns, WARP_ROWS = 16 or 32, and the warps per block, WARPS = 4 or 1: the prefill
// shape (4 x 32 rows, 128-row blocks, FlashAttention-2's geometry), the decode shape (4 x 16,
// 64-row blocks) and the step shape (1 x 16: a decode step's packed query heads, where the
// launch is bound by K/V bandwidth and small blocks keep more tiles in flight per SM).
//
// A warp's rows are WARP_ROWS / 16 m16 MMA tiles, so softmax statistics never leave the warp,
// and with two of them every K and V fragment loaded from shared memory feeds two MMAs (the
// shared-memory traffic per MMA drops from 320 to ~190 bytes at head_dim 128). K/V stream
// through shared memory in BLOCK_N = 64-key tiles, one buffer each (the staged step shape:
// two, below): V's load overlaps Q.K^T and the next K's load overlaps P.V.
template <typename T, int D, int WARP_ROWS, int WARPS = 4>
struct FwdTraits {
  using Elem = T;
  static constexpr int kHeadDim = D;
  static constexpr int kWarps = WARPS;
  static constexpr int kThreads = 32 * WARPS;
  static_assert(kThreads == (WARPS == 1 ? SA_FWD_THREADS_STEP : SA_FWD_THREADS),
                "block threads as params.h says");
  static constexpr int kWarpRows = WARP_ROWS;
  static constexpr int kMTiles = WARP_ROWS / 16;  // m16 tiles per warp
  static constexpr int kBlockM = kWarps * WARP_ROWS;
  static constexpr int kBlockN = SA_FWD_BLOCK_N;
  static_assert(WARP_ROWS == 16 || WARP_ROWS == 32, "one or two m16 tiles per warp");
  // Which of params.h's shapes this is (the step shape: one warp).
  static constexpr int kShapeRows = WARPS == 1      ? SA_FWD_BLOCK_M_STEP
                                    : kMTiles == 2 ? SA_FWD_BLOCK_M_PREFILL
                                                   : SA_FWD_BLOCK_M_DECODE;
  // K/V buffers: one of each (V's load overlaps Q.K^T, the next K's P.V), or in the staged
  // step shape (up to head_dim SA_FWD_STAGED_MAX_D) kStages of each, loads running kStages
  // tiles ahead: 2 kStages - 1 tile loads in flight while a tile is computed. A decode step is
  // bound by those bytes; the other shapes keep one stage (their shared memory and registers
  // set their occupancy, and they compute enough per tile to hide one load).
  static constexpr int kStages =
      WARPS == 1 && D <= SA_FWD_STAGED_MAX_D ? SA_FWD_KV_STAGES_STEP : 1;
  static_assert(kStages == 1 || kStages == 2, "the mainloop's tile ring holds two indices");
  static constexpr int kShapeSmemRows = WARPS == 1      ? (kStages > 1 ? SA_FWD_SMEM_ROWS_STEP_STAGED
                                                                      : SA_FWD_SMEM_ROWS_STEP)
                                        : kMTiles == 2 ? SA_FWD_SMEM_ROWS_PREFILL
                                                       : SA_FWD_SMEM_ROWS_DECODE;
  static_assert(WARPS == 4 || (WARPS == 1 && WARP_ROWS == 16), "shapes of params.h");
  static_assert(kBlockM == kShapeRows, "block rows as params.h says");
  static_assert(D % 32 == 0, "head_dim a multiple of 32 (rows padded to the 64-element swizzle)");
  static_assert(sizeof(T) == 2, "16-bit elements");

  // Q's A fragments stay in registers when they fit beside the accumulators: [MT][D/16][4]
  // is at most 32 registers (head_dim 64, or one m16 tile per warp up to head_dim 128); at 64
  // (two m16 tiles at head_dim 128, or head_dim 256) O and S already take most of the 255 and
  // Q is re-read from shared memory at every k step (FlashAttention-2 does the same).
  static constexpr bool kQInRegs = kMTiles * (D / 16) * 4 <= 32;

  // The partial-tile mask (its program and this lane's rows' allowed-key intervals) is built
  // once per block when it fits: 2 rows x 5 registers beside a 16-row warp tile; with 32 rows
  // the accumulators leave no room and it is rebuilt on each partial tile.
  static constexpr bool kHoistMask = kMTiles == 1 && D <= 128;

  // MMA trip counts.
  static constexpr int kKSteps = D / 16;          // k16 steps of Q.K^T
  static constexpr int kSTiles = kBlockN / 8;     // n8 tiles of S per m16 tile  [16, BLOCK_N]
  static constexpr int kPvKSteps = kBlockN / 16;  // k16 steps of P.V

  // The output columns one block owns. A 16-row warp tile of O holds 16 x D / 32 f32 per
  // lane: 128 registers at head_dim 256, 256 at 512 (over the 255 a thread has). At 512 the
  // columns are split over kColSplits = 2 blocks (adjacent in the grid, so Q and K tiles are
  // shared in L2): each computes the full S = Q.K^T (the softmax of both is bit-identical)
  // and O for its half of V's columns, holding a 128-register O like head_dim 256. The
  // second S costs 1/3 of the block's tensor-core work (S: 256 HMMA per warp and tile, P.V:
  // 128); what it buys: no exchange of partial S between warps (no extra barrier or shared
  // buffer in the mainloop), one mainloop for every head_dim, and 160 KB of shared memory
  // per block (Q and K 64 KB each, V's half 32 KB), within sm_80's 163 KB.
  static constexpr int kOCols = D <= 256 ? D : D / 2;
  static constexpr int kColSplits = D / kOCols;
  static constexpr int kOTiles = kOCols / 8;      // n8 tiles of O per m16 tile  [16, kOCols]
  // The lean loader of head_dim 512, whose Q.K^T of 32 k16 steps and 128-register O leave
  // the block's bookkeeping no slack (each item below removed a spill of 4-40 bytes, sm_80 or
  // sm_90): the row-by-row path (tails, gathered tiles, small pages) copies one row at a time
  // (unrolled, its lookups are issued together and held); the thread's run offsets and the
  // row strides are 32-bit (a run whose offsets reach 2^31 elements is copied row by row;
  // row strides are num_kv_heads x head_dim or head_dim, below 2^31); the kv tiles are
  // counted before the mainloop rather than after it.
  static constexpr bool kLeanLoader = kColSplits > 1;
  // Whether the K/V loader's row-by-row path copies one row at a time (rolled): the lean
  // loader, and the step shape, whose 32 threads copy 4x the rows each (unrolled, head_dim
  // 256's 64 row lookups per thread spill 100-136 bytes).
  static constexpr bool kRolledRows = kLeanLoader || WARPS == 1;

  // Shared memory: Q [BLOCK_M, D], kStages x K [BLOCK_N, D], kStages x V [BLOCK_N, D],
  // 16-bit, swizzled, rows at smem_pitch<D>() elements (head_dim 96: 128, see tile_io.cuh).
  static constexpr int kRowBytes = smem_pitch<D>() * 2;
  static constexpr int kQBytes = kBlockM * kRowBytes;
  static constexpr int kKvTileBytes = kBlockN * kRowBytes;
  static constexpr int kVRowBytes = smem_pitch<kOCols>() * 2;  // V: this block's columns
  static constexpr int kVTileBytes = kBlockN * kVRowBytes;
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQOffset + kQBytes;
  static constexpr int kVOffset = kKOffset + kStages * kKvTileBytes;
  static constexpr int kSmemBytes = kVOffset + kStages * kVTileBytes;
  // The Rust planner sizes the launch from the same params.h rows (src/kernels.rs).
  static_assert(kSmemBytes == (kShapeSmemRows - kStages * kBlockN) * kRowBytes +
                                  kStages * kBlockN * kVRowBytes,
                "shared-memory layout (src/kernels.rs: smem_pitch, fwd_tiles)");
};

}  // namespace sa
