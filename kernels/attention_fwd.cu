// Forward attention entry points: one per (dtype, head_dim). Causal, windows and patterns are
// runtime data, so this is the whole instantiation set of the forward pass.
#include "sparse_attn/attention_fwd.cuh"

SA_KERNEL(sa_attn_fwd_f16_hd64, SaAttnFwdParams, SA_FWD_THREADS) {
  sa::attn_fwd<sa::f16, 64>(params);
}
SA_KERNEL(sa_attn_fwd_f16_hd128, SaAttnFwdParams, SA_FWD_THREADS) {
  sa::attn_fwd<sa::f16, 128>(params);
}
SA_KERNEL(sa_attn_fwd_bf16_hd64, SaAttnFwdParams, SA_FWD_THREADS) {
  sa::attn_fwd<sa::bf16, 64>(params);
}
SA_KERNEL(sa_attn_fwd_bf16_hd128, SaAttnFwdParams, SA_FWD_THREADS) {
  sa::attn_fwd<sa::bf16, 128>(params);
}
