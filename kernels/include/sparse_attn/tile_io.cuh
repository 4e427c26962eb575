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

// Which chunks of a [ROWS, D] tile one of THREADS threads copies: chunk `chunk` (16 bytes) of
// rows row0 + i * kRowStep, i < kRowsPerThread. When kRowStep is a multiple of 8 (head_dim up
// to 128) a thread's rows share their swizzle (row & 7) and its destinations are one offset
// apart; wider rows (head_dim 256: 4 rows per pass) alternate between swizzle phases, and
// each destination is computed from its row (constants folded per i).
template <int ROWS, int D, int THREADS>
struct TileCopy {
  static constexpr int kChunksPerRow = D / 8;  // 8 elements = 16 bytes
  static constexpr int kRowStep = THREADS / kChunksPerRow;
  static constexpr int kRowsPerThread = ROWS / kRowStep;
  static constexpr bool kSharedSwizzle = kRowStep % 8 == 0;
  static_assert(THREADS % kChunksPerRow == 0 && kRowStep >= 1, "whole rows per pass");
  static_assert(ROWS % kRowStep == 0, "tile rows split evenly over the block");
  static constexpr int kDstStep = kRowStep * D * 2;  // bytes between a thread's rows

  int row0, chunk;
  SA_DEVICE explicit TileCopy(int tid) : row0(tid / kChunksPerRow), chunk(tid % kChunksPerRow) {}
  SA_DEVICE int row(int i) const { return row0 + i * kRowStep; }
  // Elements from a tile's first row to this thread's first source, rows `pitch` apart.
  SA_DEVICE int64_t offset(int64_t pitch) const { return row0 * pitch + chunk * 8; }
  // This thread's destination of copy i in `tile`.
  SA_DEVICE Smem dst(Smem tile, int i) const {
    if constexpr (kSharedSwizzle) {
      return tile + (swizzle_offset<D>(row0, chunk) + i * kDstStep);
    } else {
      return tile + swizzle_offset<D>(row(i), chunk);
    }
  }
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
  for (int i = 0; i < Copy::kRowsPerThread; ++i) {
    arch::cp_async_cg16(c.dst(smem_tile, i), src + i * src_step);
  }
}

// Issues cp.async copies of a [ROWS, D] tile whose row r starts at `row_src(r)` (nullptr:
// the row is zero-filled with src-size 0, naming `idle_src`, an aligned address inside the
// tensor such as its base, as the never-read source). Each of the THREADS threads copies
// every THREADS-th 16-byte chunk. Does not commit.
template <int ROWS, int D, int THREADS, typename T, typename RowSrc>
SA_DEVICE void load_tile_async(Smem smem_tile, const RowSrc& row_src, const T* idle_src,
                               int tid) {
  using Copy = TileCopy<ROWS, D, THREADS>;
  const Copy c(tid);
  SA_UNROLL
  for (int i = 0; i < Copy::kRowsPerThread; ++i) {
    const T* src = row_src(c.row(i));
    arch::cp_async_cg16(c.dst(smem_tile, i), src != nullptr ? src + c.chunk * 8 : idle_src,
                        src != nullptr ? 16 : 0);
  }
}

}  // namespace sa
