// Deliberately broken selection kernels (sa::SelectCanary in adaptive_select.cuh), one bug
// each, that tests/adaptive_select_emu.rs must see fail through the production launch path
// (DeviceSelect::with_kernel):
// - candidates J * B < max_p instead of J * B <= max_p: a group ending on a block's first key
//   loses that block;
// - keep_local one block too wide;
// - top_p without the crossing block.
#include "sparse_attn/adaptive_select.cuh"
#include "sparse_attn/params_layout.h"

SA_KERNEL(sa_test_adaptive_select_strict_candidates, SaAdaptSelectParams, sa::kSelectThreads) {
  sa::adaptive_select<sa::SelectCanary::StrictCandidates>(params);
}
SA_KERNEL(sa_test_adaptive_select_local_off_by_one, SaAdaptSelectParams, sa::kSelectThreads) {
  sa::adaptive_select<sa::SelectCanary::LocalOffByOne>(params);
}
SA_KERNEL(sa_test_adaptive_select_drop_crossing, SaAdaptSelectParams, sa::kSelectThreads) {
  sa::adaptive_select<sa::SelectCanary::DropCrossing>(params);
}
