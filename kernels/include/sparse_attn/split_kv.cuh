// The split-KV workspace layout, one definition for its writer (the forward kernel's
// write_partial) and its reader (the combine kernel): partial outputs [num_splits, rows,
// num_heads, D] and partial LSEs [num_splits, rows, num_heads], f32, where rows is the call's
// query rows (cu_seqlens_q[batch] for varlen and run-time calls, batch * q_len otherwise).
#pragma once

#include "sparse_attn/arch.cuh"
#include "sparse_attn/params.h"

namespace sa {

// The rows of the call's split layout, clamped to the plan's capacity (batch * q_len, q_len
// the plan's maximum): the host sizes the workspace for that capacity, so device lengths whose
// total exceeds it (not trusted here) cannot move a slot out of it. Rows at or past the result
// have no slot; the writer and reader both skip them.
SA_DEVICE int64_t split_rows(const SaAttnFwdParams& p) {
  const int64_t capacity = int64_t(p.batch) * p.q_len;
  if (p.cu_seqlens_q == nullptr) return capacity;
  const int64_t rows = p.cu_seqlens_q[p.batch];
  return rows < capacity ? rows : capacity;
}

// The slot of (split, row, head) in the workspace of `rows` rows per split.
SA_DEVICE int64_t split_slot(const SaAttnFwdParams& p, int64_t rows, int split, int64_t row, int h) {
  return (split * rows + row) * p.num_heads + h;
}

}  // namespace sa
