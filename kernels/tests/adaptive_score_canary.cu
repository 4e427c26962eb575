// Deliberately broken scoring kernels (sa::score::ScoreCanary in adaptive_score.cuh), one bug
// each, that tests/adaptive_score_emu.rs must catch against the f64 reference:
// - block J scored from the summaries of block J + 1;
// - minmax reading the channel maxima as the minima.
// f16, one query row per step (decode grouping).
#include "sparse_attn/adaptive_score.cuh"

SA_KERNEL(sa_test_adaptive_score_wrong_block_f16_r1, SaAdaptiveScoreParams, SA_SCORE_THREADS) {
  sa::score::score_group<sa::f16, 1, sa::score::ScoreCanary::WrongBlock>(params);
}
SA_KERNEL(sa_test_adaptive_score_max_as_min_f16_r1, SaAdaptiveScoreParams, SA_SCORE_THREADS) {
  sa::score::score_group<sa::f16, 1, sa::score::ScoreCanary::MaxAsMin>(params);
}
