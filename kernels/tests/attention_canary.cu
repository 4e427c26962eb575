// Deliberately broken forward kernels (sa::Canary in attention_fwd.cuh), one bug each, that the
// emulator tests must catch end to end through the library's own run path
// (tests/attention_emu.rs):
// - a2/a4 swapped in P's A fragment: the exact fragment layouts make the output wrong;
// - empty rows left unwritten: the poisoned outputs of an emulated launch expose them.
#include "sparse_attn/attention_fwd.cuh"

SA_KERNEL(sa_test_attn_fwd_canary_f16_hd64, SaAttnFwdParams, SA_FWD_THREADS) {
  sa::attn_fwd<sa::f16, 64, sa::Canary::SwapA2A4>(params);
}
SA_KERNEL(sa_test_attn_fwd_skip_empty_rows_f16_hd64, SaAttnFwdParams, SA_FWD_THREADS) {
  sa::attn_fwd<sa::f16, 64, sa::Canary::SkipEmptyRowStore>(params);
}
