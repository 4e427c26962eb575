// Deliberately broken forward kernels (sa::Canary in attention_fwd.cuh), one bug each, that the
// tests must catch end to end through the library's own run paths (AttnPlan::with_kernel):
// - a2/a4 swapped in P's A fragment: the exact fragment layouts make the output wrong;
// - empty rows left unwritten: the poisoned outputs of an emulated launch expose them;
// - the output not rescaled when a row's max moves: logits that grow along the keys expose it;
// - ALiBi distances from top-left aligned query positions: decode rows (q_len < kv_len)
//   expose it;
// - the staged step block's waits one K/V load short (step shape only, the one with stages):
//   the emulator's adversarial cp.async exposes the tile read before it landed.
// f16, head_dim 64, in every tile shape (128-row prefill blocks, 64-row decode blocks, 16-row
// one-warp step blocks).
#include "sparse_attn/attention_fwd.cuh"

#define SA_CANARY_SHAPE(name, WARP_ROWS, WARPS, CANARY)                                     \
  SA_KERNEL(name, SaAttnFwdParams, 32 * WARPS) {                                             \
    sa::attn_fwd<sa::FwdTraits<sa::f16, 64, WARP_ROWS, WARPS>, sa::Canary::CANARY>(params); \
  }
#define SA_CANARY_ENTRY(name, WARP_ROWS, CANARY) SA_CANARY_SHAPE(name, WARP_ROWS, 4, CANARY)
#define SA_CANARY_STEP(name, CANARY) SA_CANARY_SHAPE(name, 16, 1, CANARY)

SA_CANARY_ENTRY(sa_test_attn_fwd_canary_f16_hd64_m128, 32, SwapA2A4)
SA_CANARY_ENTRY(sa_test_attn_fwd_canary_f16_hd64_m64, 16, SwapA2A4)
SA_CANARY_ENTRY(sa_test_attn_fwd_skip_empty_rows_f16_hd64_m128, 32, SkipEmptyRowStore)
SA_CANARY_ENTRY(sa_test_attn_fwd_skip_empty_rows_f16_hd64_m64, 16, SkipEmptyRowStore)
SA_CANARY_ENTRY(sa_test_attn_fwd_skip_rescale_f16_hd64_m128, 32, SkipRescale)
SA_CANARY_ENTRY(sa_test_attn_fwd_skip_rescale_f16_hd64_m64, 16, SkipRescale)
SA_CANARY_ENTRY(sa_test_attn_fwd_alibi_top_left_f16_hd64_m128, 32, AlibiTopLeft)
SA_CANARY_ENTRY(sa_test_attn_fwd_alibi_top_left_f16_hd64_m64, 16, AlibiTopLeft)
SA_CANARY_STEP(sa_test_attn_fwd_canary_f16_hd64_m16, SwapA2A4)
SA_CANARY_STEP(sa_test_attn_fwd_skip_empty_rows_f16_hd64_m16, SkipEmptyRowStore)
SA_CANARY_STEP(sa_test_attn_fwd_skip_rescale_f16_hd64_m16, SkipRescale)
SA_CANARY_STEP(sa_test_attn_fwd_alibi_top_left_f16_hd64_m16, AlibiTopLeft)
SA_CANARY_STEP(sa_test_attn_fwd_early_wait_f16_hd64_m16, EarlyWait)
