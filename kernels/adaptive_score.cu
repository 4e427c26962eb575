// Adaptive block scores from the key summaries (SaAdaptiveScoreParams in params.h; the body
// is kernels/include/sparse_attn/adaptive_score.cuh): one entry per (dtype, query rows per
// step): 1 for decode steps and pooled_qk, SA_SCORE_ROWS_PREFILL for prefill groups.
#include "sparse_attn/adaptive_score.cuh"

#define SA_SCORE_ENTRY(name, T, ROWS)                          \
  SA_KERNEL(name, SaAdaptiveScoreParams, SA_SCORE_THREADS) {   \
    sa::score::score_group<sa::T, ROWS>(params);               \
  }

SA_SCORE_ENTRY(sa_adaptive_score_f16_r1, f16, 1)
SA_SCORE_ENTRY(sa_adaptive_score_bf16_r1, bf16, 1)
SA_SCORE_ENTRY(sa_adaptive_score_f16_r16, f16, SA_SCORE_ROWS_PREFILL)
SA_SCORE_ENTRY(sa_adaptive_score_bf16_r16, bf16, SA_SCORE_ROWS_PREFILL)
