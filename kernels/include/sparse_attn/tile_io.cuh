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

// Issues cp.async copies of a [ROWS, D] tile whose row r starts at `row_src(r)` (nullptr:
// the row is zero-filled with src-size 0, naming `idle_src`, an aligned address inside the
// tensor such as its base, as the never-read source). Each of the THREADS threads copies
// every THREADS-th 16-byte chunk. Does not commit.
template <int ROWS, int D, int THREADS, typename T, typename RowSrc>
SA_DEVICE void load_tile_async(Smem smem_tile, const RowSrc& row_src, const T* idle_src,
                               int tid) {
  constexpr int kChunksPerRow = D / 8;  // 8 elements = 16 bytes
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % THREADS == 0, "tile chunks split evenly over the block");
  SA_UNROLL
  for (int i = 0; i < kChunks / THREADS; ++i) {
    const int c = tid + i * THREADS;
    const int row = c / kChunksPerRow;
    const int chunk = c % kChunksPerRow;
    const T* src = row_src(row);
    arch::cp_async_cg16(smem_tile + swizzle_offset<D>(row, chunk),
                        src != nullptr ? src + chunk * 8 : idle_src, src != nullptr ? 16 : 0);
  }
}

}  // namespace sa
