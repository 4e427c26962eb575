// Where key position j of a sequence lives: contiguous K/V tensors or a paged cache (see
// SaPagedKv in params.h). Paging is the same indirection as sparsity: the block-sparse walk
// names logical kv tiles, and this maps each key of a tile to its physical row, so the
// mainloop never knows which layout it reads.
#pragma once

#include "sparse_attn/arch.cuh"
#include "sparse_attn/params.h"

namespace sa {

// Logical page -> block-table slot: sink pages keep their own slots, later pages cycle
// through a ring of `ring_pages` slots (ring_pages == 0: no ring). Shared with the Rust
// twin in src/kv_cache/layout.rs.
SA_HOST_DEVICE int paged_slot(int logical_page, int sink_pages, int ring_pages) {
  if (ring_pages == 0 || logical_page < sink_pages) return logical_page;
  return sink_pages + (logical_page - sink_pages) % ring_pages;
}

// Whether position j of a sequence of kv_len keys is still held: sink pages always; with a
// ring, the last ring_pages logical pages (up to the page of kv_len - 1).
SA_HOST_DEVICE bool paged_resident(int j, int kv_len, int log2_page, int sink_pages,
                                   int ring_pages) {
  if (j < 0 || j >= kv_len) return false;
  const int page = j >> log2_page;
  if (ring_pages == 0 || page < sink_pages) return true;
  const int last_page = (kv_len - 1) >> log2_page;
  return page > last_page - ring_pages;
}

// Row sources of one kv head of one sequence, for load_tile_async.
template <typename T>
struct KvRows {
  const T* k;  // contiguous: row 0 of this (sequence, kv head); paged: the page pool
  const T* v;
  int64_t k_row_stride, v_row_stride;  // contiguous layout
  const int32_t* block_table;          // paged layout: this sequence's row, else nullptr
  int64_t page_stride, head_offset;    // paged: elements per page, this head's offset
  int log2_page, sink_pages, ring_pages;
  int kv_len;

  // Physical row of key j in `base` (k or v), or nullptr when j is not readable (j < 0 is
  // a column with no key).
  SA_DEVICE const T* row(const T* base, int64_t row_stride, int j) const {
    if (block_table == nullptr) return j >= 0 && j < kv_len ? base + j * row_stride : nullptr;
    if (!paged_resident(j, kv_len, log2_page, sink_pages, ring_pages)) return nullptr;
    const int page = block_table[paged_slot(j >> log2_page, sink_pages, ring_pages)];
    const int in_page = j & ((1 << log2_page) - 1);
    return base + page * page_stride + head_offset + int64_t(in_page) * row_stride;
  }

  // Keys j0, j0 + step, ... (`rows` of them) as one strided run of rows, when they are one:
  // all inside the sequence and, paged, all in one resident page (step 1). Returns the first
  // row and sets `pitch` (elements between rows), or nullptr, and the loader then maps key by
  // key. One block-table read per tile.
  SA_DEVICE const T* strided_run(const T* base, int64_t row_stride, int j0, int step, int rows,
                                 int64_t& pitch) const {
    const int j_last = j0 + (rows - 1) * step;
    if (j0 < 0 || j_last >= kv_len) return nullptr;
    if (block_table == nullptr) {
      pitch = step * row_stride;
      return base + j0 * row_stride;
    }
    if (step != 1 || (j0 >> log2_page) != (j_last >> log2_page)) return nullptr;
    pitch = row_stride;
    return row(base, row_stride, j0);  // nullptr when the page was evicted
  }
};

}  // namespace sa
