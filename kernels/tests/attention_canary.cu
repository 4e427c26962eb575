// A deliberately broken forward kernel: the P fragment has a2 and a4 swapped. The emulator's
// exact fragment layouts must make it fail the end-to-end attention test (tests/attention_emu.rs),
// proving that a layout bug cannot pass on the CPU.
#include "sparse_attn/attention_fwd.cuh"

SA_KERNEL(sa_test_attn_fwd_canary_f16_hd64, SaAttnFwdParams, SA_FWD_THREADS) {
  sa::attn_fwd<sa::f16, 64, /*kSwapA2A4Canary=*/true>(params);
}
