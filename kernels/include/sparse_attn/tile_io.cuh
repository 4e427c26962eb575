// Moving tiles between global and shared memory: the swizzled shared layout, cp.async tile
// loads with zero-filled tails, and the output / LSE epilogue stores.
#pragma once

#include "sparse_attn/arch.cuh"

namespace sa {

// Byte offset of 16-byte chunk `chunk` of row `row` in a [rows, D] tile of 16-bit elements.
// Chunks are XOR-swizzled with the low 3 bits of the row, so the 8 row addresses of one
// ldmatrix 8x8 matrix (same logical chunk, 8 consecutive rows) hit 8 different bank groups:
// without it every ldmatrix of a 128- or 256-byte-pitch tile is an 8-way bank conflict.
template <int D>
SA_HOST_DEVICE int swizzle_offset(int row, int chunk) {
  return row * (D * 2) + ((chunk ^ (row & 7)) << 4);
}

// Issues cp.async copies of a [ROWS, D] tile: rows [0, rows_valid) from `src` (row pitch
// `row_stride` elements), zero-filling rows beyond (their source is never read). Each of the
// THREADS threads copies every THREADS-th 16-byte chunk. Does not commit.
template <int ROWS, int D, int THREADS, typename T>
SA_DEVICE void load_tile_async(char* smem_tile, const T* SA_RESTRICT src, int64_t row_stride,
                               int rows_valid, int tid) {
  constexpr int kChunksPerRow = D / 8;  // 8 elements = 16 bytes
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % THREADS == 0, "tile chunks split evenly over the block");
  SA_UNROLL
  for (int i = 0; i < kChunks / THREADS; ++i) {
    const int c = tid + i * THREADS;
    const int row = c / kChunksPerRow;
    const int chunk = c % kChunksPerRow;
    const bool valid = row < rows_valid;
    const T* g = valid ? src + row * row_stride + chunk * 8 : src;
    arch::cp_async_cg16(smem_tile + swizzle_offset<D>(row, chunk), g, valid ? 16 : 0);
  }
}

}  // namespace sa
