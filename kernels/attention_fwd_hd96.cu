// The forward kernels of head_dim 96: tile shapes m64 and m16, f16 and bf16, each with the
// compiled lists and (suffix _rt) the run-time walk. The instantiation set and its macros:
// kernels/include/sparse_attn/attention_fwd_entry.cuh; the registry: src/kernels.rs.
#include "sparse_attn/attention_fwd_entry.cuh"

SA_FWD_ENTRY(sa_attn_fwd_f16_hd96_m64, f16, 96, 16)
SA_FWD_ENTRY(sa_attn_fwd_bf16_hd96_m64, bf16, 96, 16)
SA_FWD_STEP_ENTRY(sa_attn_fwd_f16_hd96_m16, f16, 96)
SA_FWD_STEP_ENTRY(sa_attn_fwd_bf16_hd96_m16, bf16, 96)
