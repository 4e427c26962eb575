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

// Row sources of one kv head of one sequence, for the K/V loaders. Only what differs per
// (sequence, kv head) is held (in registers, across the mainloop); strides and the page
// geometry are read from the params at use (constant memory, no registers).
template <typename T>
struct KvRows {
  const T* k;                   // contiguous: row 0 of this (sequence, kv head); paged: the
  const T* v;                   //   page pool, offset to this kv head's rows within a page
  const int32_t* block_table;   // paged: this sequence's row of the block table, else nullptr
  int kv_len;

  // The row stride of a pitch `row_stride` tensor: contiguous layouts pass theirs; pages
  // hold a head's rows contiguously (head_dim apart).
  SA_DEVICE static int64_t pitch(const SaAttnFwdParams& p, int64_t row_stride, bool paged) {
    return paged ? p.head_dim : row_stride;
  }

  // Physical row of key j in `base` (k or v, of stride `row_stride` when contiguous), or
  // nullptr when j is not readable (j < 0 is a column with no key).
  SA_DEVICE const T* row(const SaAttnFwdParams& p, const T* base, int64_t row_stride,
                         int j) const {
    if (block_table == nullptr) return j >= 0 && j < kv_len ? base + j * row_stride : nullptr;
    const SaPagedKv& pg = p.paged;
    if (!paged_resident(j, kv_len, pg.log2_page_size, pg.sink_pages, pg.ring_pages)) {
      return nullptr;
    }
    const int page = block_table[paged_slot(j >> pg.log2_page_size, pg.sink_pages, pg.ring_pages)];
    const int in_page = j & ((1 << pg.log2_page_size) - 1);
    return base + page * pg.page_stride + int64_t(in_page) * p.head_dim;
  }

  // Keys j0, j0 + step, ... (`rows` of them) as one strided run of rows, when they are one:
  // all inside the sequence and, paged, all in one resident page (step 1). Returns the first
  // row, or nullptr, and the loader then maps key by key. The run's pitch is fixed for the
  // block: step * row_stride when contiguous, head_dim in a page. One block-table read per
  // tile.
  SA_DEVICE const T* strided_run(const SaAttnFwdParams& p, const T* base, int64_t row_stride,
                                 int j0, int step, int rows) const {
    const int j_last = j0 + (rows - 1) * step;
    if (j0 < 0 || j_last >= kv_len) return nullptr;
    if (block_table == nullptr) return base + j0 * row_stride;
    const int log2_page = p.paged.log2_page_size;
    if (step != 1 || (j0 >> log2_page) != (j_last >> log2_page)) return nullptr;
    return row(p, base, row_stride, j0);  // nullptr when the page was evicted
  }
};

}  // namespace sa
