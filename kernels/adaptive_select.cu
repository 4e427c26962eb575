// Adaptive block selection: scores -> the selection bits of every (group, unit, sequence)
// (see SaAdaptSelectParams in params.h and sparse_attn/adaptive_select.cuh).
#include "sparse_attn/adaptive_select.cuh"
#include "sparse_attn/params_layout.h"  // layout asserted against the Rust mirror

SA_KERNEL(sa_adaptive_select, SaAdaptSelectParams, sa::kSelectThreads) {
  sa::adaptive_select(params);
}
