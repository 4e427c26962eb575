// The forward kernels of head_dim 512: tile shape m64 (two column blocks per query tile), f16
// and bf16, each with the compiled lists and (suffix _rt) the run-time walk. The instantiation
// set and its macros: kernels/include/sparse_attn/attention_fwd_entry.cuh; the registry:
// src/kernels.rs.
#include "sparse_attn/attention_fwd_entry.cuh"

SA_FWD_ENTRY(sa_attn_fwd_f16_hd512_m64, f16, 512, 16)
SA_FWD_ENTRY(sa_attn_fwd_bf16_hd512_m64, bf16, 512, 16)
