// Moving tiles between global and shared memory: the swizzled shared layout, cp.async tile
// loads with zero-filled tails, and the output / LSE epilogue stores.
#pragma once

#include "sparse_attn/arch.cuh"

namespace sa {

// Elements per shared-memory row of a [rows, D] tile: D rounded up to the 8-chunk swizzle
// span (64 elements). head_dim 96 is stored at a 128-element (256-byte) pitch, its last 32
// columns never written or read: the swizzle below stays the one of head_dim 128 (conflict
// free, offsets from compile-time constants, so padding costs no instruction), and the 12 KB
// it adds per 64-row block (48 KB instead of 36 KB) binds no occupancy: registers hold the
// block at 2 CTAs per SM, and 2 x 48 KB fits sm_80's 163 KB and sm_90's 227 KB. A 64-byte
// swizzle atom (FlashAttention-2's layout for 96) would save the 12 KB at the price of a
// second offset form in every loader and ldmatrix.
template <int D>
SA_HOST_DEVICE constexpr int smem_pitch() {
  return (D + 63) / 64 * 64;
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a [rows, D] tile of 16-bit elements.
// Chunks are XOR-swizzled with the low 3 bits of the row, so the 8 row addresses of one
// ldmatrix 8x8 matrix (same logical chunk, 8 consecutive rows) hit 8 different bank groups:
// without it every ldmatrix of a 128- or 256-byte-pitch tile is an 8-way bank conflict.
template <int D>
SA_HOST_DEVICE int swizzle_offset(int row, int chunk) {
  return row * (smem_pitch<D>() * 2) + ((chunk ^ (row & 7)) << 4);
}

// Which chunks of a [ROWS, D] tile one of THREADS threads copies: chunks chunk + j * kLanes
// (j < kColPasses; 16 bytes each) of rows row0 + i * kRowStep, i < kRowsPerThread. kLanes
// threads share a row: all of its chunks when they divide THREADS (head_dim 64 to 512, one
// column pass), else 4 threads of 64 contiguous bytes each pass (head_dim 96: 12 chunks in 3
// passes, still 6 copies per thread of a 64-row tile, each warp instruction 8 rows x 64
// bytes). When kRowStep is a multiple of 8 (head_dim up to 128) a thread's rows share their
// swizzle (row & 7) and its destinations are one offset apart; wider rows (head_dim 256:
// 4 rows per pass) alternate between swizzle phases, and each destination is computed from
// its row (constants folded per i).
template <int ROWS, int D, int THREADS>
struct TileCopy {
  static constexpr int kChunksPerRow = D / 8;  // 8 elements = 16 bytes
  static constexpr int kLanes = THREADS % kChunksPerRow == 0 ? kChunksPerRow : 4;
  static constexpr int kColPasses = kChunksPerRow / kLanes;
  static constexpr int kRowStep = THREADS / kLanes;
  static constexpr int kRowsPerThread = ROWS / kRowStep;
  static constexpr int kCopies = kRowsPerThread * kColPasses;
  static constexpr bool kSharedSwizzle = kRowStep % 8 == 0;
  static_assert(kChunksPerRow % kLanes == 0 && THREADS % kLanes == 0, "whole rows per pass");
  static_assert(ROWS % kRowStep == 0, "tile rows split evenly over the block");
  static constexpr int kDstStep = kRowStep * smem_pitch<D>() * 2;  // bytes between a thread's rows

  int row0, chunk;
  SA_DEVICE explicit TileCopy(int tid) : row0(tid / kLanes), chunk(tid % kLanes) {}
  // Row and column pass of copy n (n < kCopies).
  SA_HOST_DEVICE static constexpr int pass_row(int n) { return n / kColPasses; }
  SA_HOST_DEVICE static constexpr int pass_col(int n) { return n % kColPasses; }
  SA_DEVICE int row(int n) const { return row0 + pass_row(n) * kRowStep; }
  // Elements from a tile's first row to this thread's first source, rows `pitch` apart.
  SA_DEVICE int64_t offset(int64_t pitch) const { return row0 * pitch + chunk * 8; }
  // Elements from this thread's row source to copy n's (its column pass).
  SA_HOST_DEVICE static constexpr int col_offset(int n) { return pass_col(n) * kLanes * 8; }
  // This thread's destination of copy n in `tile`.
  SA_DEVICE Smem dst(Smem tile, int n) const {
    const int c = chunk + pass_col(n) * kLanes;
    if constexpr (kSharedSwizzle) {
      return tile + (swizzle_offset<D>(row0, c) + pass_row(n) * kDstStep);
    } else {
      return tile + swizzle_offset<D>(row(n), c);
    }
  }
};

// The type of a thread's element offset into a strided run: 64-bit, or 32-bit for a loader
// that saves the register (its caller keeps offsets of 2^31 elements off the strided path).
template <bool kNarrow>
struct LoaderOffset {
  using type = int64_t;
};
template <>
struct LoaderOffset<true> {
  using type = int;
};

// Issues cp.async copies of a [ROWS, D] tile whose rows lie at a constant pitch, every row
// present: the fast path of the K/V loader (contiguous or in-page keys, affine views, full
// tiles). `src` is this thread's first source (row row0, chunk `chunk`: the tile's first row
// plus TileCopy::offset, computed once per block) and `src_step` the distance between its
// rows (kRowStep * pitch), so each copy costs one 64-bit add. Does not commit.
template <int ROWS, int D, int THREADS, typename T>
SA_DEVICE void load_tile_strided(Smem smem_tile, const T* src, int64_t src_step, int tid) {
  using Copy = TileCopy<ROWS, D, THREADS>;
  const Copy c(tid);
  SA_UNROLL
  for (int n = 0; n < Copy::kCopies; ++n) {
    arch::cp_async_cg16(c.dst(smem_tile, n), src + (Copy::pass_row(n) * src_step + Copy::col_offset(n)));
  }
}

// Issues cp.async copies of a [ROWS, D] tile whose row r starts at `row_src(r)` (nullptr:
// the row is zero-filled with src-size 0, naming `idle_src`, an aligned address inside the
// tensor such as its base, as the never-read source). Each of the THREADS threads copies
// every THREADS-th 16-byte chunk. Does not commit. kRolled keeps the row loop rolled (one
// row's lookup and copies at a time): unrolled, the compiler issues every row's lookup first
// and holds its results, which head_dim 512's kernel has no registers for (FwdTraits::
// kLeanLoader).
template <int ROWS, int D, int THREADS, bool kRolled = false, typename T, typename RowSrc>
SA_DEVICE void load_tile_async(Smem smem_tile, const RowSrc& row_src, const T* idle_src,
                               int tid) {
  using Copy = TileCopy<ROWS, D, THREADS>;
  const Copy c(tid);
  auto copy_row = [&](int i) {
    const T* src = row_src(c.row(i * Copy::kColPasses));  // one row lookup per row
    SA_UNROLL
    for (int j = 0; j < Copy::kColPasses; ++j) {
      const int n = i * Copy::kColPasses + j;
      arch::cp_async_cg16(c.dst(smem_tile, n),
                          src != nullptr ? src + (c.chunk * 8 + Copy::col_offset(n)) : idle_src,
                          src != nullptr ? 16 : 0);
    }
  };
  if constexpr (kRolled) {
    SA_NO_UNROLL
    for (int i = 0; i < Copy::kRowsPerThread; ++i) copy_row(i);
  } else {
    SA_UNROLL
    for (int i = 0; i < Copy::kRowsPerThread; ++i) copy_row(i);
  }
}

}  // namespace sa
