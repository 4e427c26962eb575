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

// Whether a block-table entry names a page of the pool (always, when the pool size is not
// given): bad device data reads nothing.
SA_DEVICE bool page_in_pool(const SaPagedKv& pg, int page) {
  return pg.num_pages <= 0 || static_cast<unsigned>(page) < static_cast<unsigned>(pg.num_pages);
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
  // kCheckPages: test the table entry against the pool (SaPagedKv::num_pages), for tables
  // the host has not checked (run-time walks read the engine's device data).
  template <bool kCheckPages>
  SA_DEVICE const T* row(const SaAttnFwdParams& p, const T* base, int64_t row_stride,
                         int j) const {
    if (block_table == nullptr) return j >= 0 && j < kv_len ? base + j * row_stride : nullptr;
    const SaPagedKv& pg = p.paged;
    if (!paged_resident(j, kv_len, pg.log2_page_size, pg.sink_pages, pg.ring_pages)) {
      return nullptr;
    }
    const int page = block_table[paged_slot(j >> pg.log2_page_size, pg.sink_pages, pg.ring_pages)];
    if (kCheckPages && !page_in_pool(pg, page)) return nullptr;
    const int in_page = j & ((1 << pg.log2_page_size) - 1);
    return base + page * pg.page_stride + int64_t(in_page) * p.head_dim;
  }

  // How many leading regular tiles of `rows` keys (key_first + (t * rows + c) * step,
  // c < rows, of a view with key_count keys) are each one strided run of rows: every key
  // exists (inside the view and the sequence) and, paged, the tile lies in one page, which for
  // every tile at once needs step 1, a tile-aligned first key and pages of at least a tile.
  // Computed once per block: the loader then tests a tile with one unsigned compare.
  SA_DEVICE int run_tiles(const SaAttnFwdParams& p, int key_first, int key_step, int key_count,
                          int rows) const {
    if (key_first < 0 || key_first >= kv_len) return 0;
    if (block_table != nullptr &&
        (key_step != 1 || (key_first & (rows - 1)) != 0 || (1 << p.paged.log2_page_size) < rows)) {
      return 0;
    }
    const int in_view = key_count / rows;                          // tiles with every column
    const int last = (kv_len - 1 - key_first) / key_step;          // last view key inside
    const int in_seq = last >= rows - 1 ? (last - (rows - 1)) / rows + 1 : 0;
    return in_view < in_seq ? in_view : in_seq;
  }

  // The element offsets from `k` and from `v` of the first row of run tile `tile` (one of
  // the run_tiles above; first key j0), decided for K and V together: one decision and, paged,
  // one residency test and one block-table read per tile. False when a ring has evicted the
  // page (then the loader maps key by key). Row strides fit in 32 bits (the host checks), so
  // each offset is one wide multiply.
  template <bool kCheckPages>
  SA_DEVICE bool run_offsets(const SaAttnFwdParams& p, int k_stride, int v_stride, int j0,
                             int64_t& k_off, int64_t& v_off) const {
    if (block_table == nullptr) {
      k_off = arch::mul_wide(j0, k_stride);
      v_off = arch::mul_wide(j0, v_stride);
      return true;
    }
    const SaPagedKv& pg = p.paged;
    if (!paged_resident(j0, kv_len, pg.log2_page_size, pg.sink_pages, pg.ring_pages)) return false;
    const int page = block_table[paged_slot(j0 >> pg.log2_page_size, pg.sink_pages, pg.ring_pages)];
    if (kCheckPages && !page_in_pool(pg, page)) return false;
    k_off = v_off = page * pg.page_stride + int64_t(j0 & ((1 << pg.log2_page_size) - 1)) * p.head_dim;
    return true;
  }
};

}  // namespace sa
