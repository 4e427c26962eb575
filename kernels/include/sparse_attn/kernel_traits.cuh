// Tile configuration of the forward kernel: what is computed per block, per warp, per step.
#pragma once

#include "sparse_attn/arch.cuh"
#include "sparse_attn/params.h"

namespace sa {

// One forward instantiation: element type T (f16 / bf16) and head dimension D.
//
// A block of 4 warps owns BLOCK_M = 64 query rows of one (batch, head); warp w owns rows
// [16w, 16w + 16), exactly one m16 MMA tile, so softmax statistics never leave the warp.
// K/V stream through shared memory in BLOCK_N = 64-key tiles, double-buffered with cp.async.
template <typename T, int D>
struct FwdTraits {
  using Elem = T;
  static constexpr int kHeadDim = D;
  static constexpr int kBlockM = SA_FWD_BLOCK_M;
  static constexpr int kBlockN = SA_FWD_BLOCK_N;
  static constexpr int kThreads = SA_FWD_THREADS;
  static constexpr int kWarps = kThreads / 32;
  static_assert(kBlockM == 16 * kWarps, "one m16 row tile per warp");
  static_assert(D % 64 == 0, "head_dim must be a multiple of 64 (swizzle spans 8 chunks)");
  static_assert(sizeof(T) == 2, "16-bit elements");

  // MMA trip counts.
  static constexpr int kKSteps = D / 16;          // k16 steps of Q.K^T
  static constexpr int kSTiles = kBlockN / 8;     // n8 tiles of S per warp  [16, BLOCK_N]
  static constexpr int kPvKSteps = kBlockN / 16;  // k16 steps of P.V
  static constexpr int kOTiles = D / 8;           // n8 tiles of O per warp  [16, D]

  // Shared memory: Q [BLOCK_M, D], K [STAGES][BLOCK_N, D], V [STAGES][BLOCK_N, D], 16-bit,
  // swizzled.
  static constexpr int kStages = SA_FWD_KV_STAGES;
  static constexpr int kRowBytes = D * 2;
  static constexpr int kQBytes = kBlockM * kRowBytes;
  static constexpr int kKvTileBytes = kBlockN * kRowBytes;
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQOffset + kQBytes;
  static constexpr int kVOffset = kKOffset + kStages * kKvTileBytes;
  static constexpr int kSmemBytes = kVOffset + kStages * kKvTileBytes;
  // The Rust planner sizes the launch from SA_FWD_SMEM_ROWS (src/kernels.rs: fwd_tiles).
  static_assert(kSmemBytes == SA_FWD_SMEM_ROWS * kRowBytes, "shared-memory layout");
  static_assert(kStages == 2, "the mainloop double-buffers K and V (buffer = tile & 1)");
};

}  // namespace sa
