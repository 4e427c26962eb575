// Split-KV combine entry points: one per (dtype, head_dim), like the forward kernel.
#include "sparse_attn/attention_combine.cuh"
#include "sparse_attn/params_layout.h"  // layout asserted against the Rust mirror

SA_KERNEL(sa_attn_combine_f16_hd64, SaAttnFwdParams, sa::kCombineThreads) {
  sa::attn_combine<sa::f16, 64>(params);
}
SA_KERNEL(sa_attn_combine_f16_hd96, SaAttnFwdParams, sa::kCombineThreads) {
  sa::attn_combine<sa::f16, 96>(params);
}
SA_KERNEL(sa_attn_combine_f16_hd128, SaAttnFwdParams, sa::kCombineThreads) {
  sa::attn_combine<sa::f16, 128>(params);
}
SA_KERNEL(sa_attn_combine_f16_hd256, SaAttnFwdParams, sa::kCombineThreads) {
  sa::attn_combine<sa::f16, 256>(params);
}
SA_KERNEL(sa_attn_combine_f16_hd512, SaAttnFwdParams, sa::kCombineThreads) {
  sa::attn_combine<sa::f16, 512>(params);
}
SA_KERNEL(sa_attn_combine_bf16_hd64, SaAttnFwdParams, sa::kCombineThreads) {
  sa::attn_combine<sa::bf16, 64>(params);
}
SA_KERNEL(sa_attn_combine_bf16_hd96, SaAttnFwdParams, sa::kCombineThreads) {
  sa::attn_combine<sa::bf16, 96>(params);
}
SA_KERNEL(sa_attn_combine_bf16_hd128, SaAttnFwdParams, sa::kCombineThreads) {
  sa::attn_combine<sa::bf16, 128>(params);
}
SA_KERNEL(sa_attn_combine_bf16_hd256, SaAttnFwdParams, sa::kCombineThreads) {
  sa::attn_combine<sa::bf16, 256>(params);
}
SA_KERNEL(sa_attn_combine_bf16_hd512, SaAttnFwdParams, sa::kCombineThreads) {
  sa::attn_combine<sa::bf16, 512>(params);
}
