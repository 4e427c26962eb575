// Forward attention entry points: one per (dtype, head_dim, tile shape). The shapes are the
// prefill tile (128 query rows per block, 32 per warp: each K/V fragment feeds two MMAs) and
// the decode tile (64 rows, 16 per warp: short queries and GQA-packed decode waste no rows).
// head_dim 128 runs the 64-row tile in both phases for now: with 32 rows per warp its
// accumulators (O 128 + S 64 registers) and the kernel's state still spill 92 bytes at 255
// registers on sm_90 (36 on sm_80), down from 168 before the split swizzle of tile_mma.cuh
// and the lean KvRows. src/kernels.rs (fwd_tiles) picks the shape; causal, windows and patterns are
// runtime data, so this is the whole instantiation set of the forward pass.
#include "sparse_attn/attention_fwd.cuh"

#define SA_FWD_ENTRY(name, T, D, WARP_ROWS)                   \
  SA_KERNEL(name, SaAttnFwdParams, SA_FWD_THREADS) {          \
    sa::attn_fwd<sa::FwdTraits<sa::T, D, WARP_ROWS>>(params); \
  }

SA_FWD_ENTRY(sa_attn_fwd_f16_hd64_m128, f16, 64, 32)
SA_FWD_ENTRY(sa_attn_fwd_bf16_hd64_m128, bf16, 64, 32)
SA_FWD_ENTRY(sa_attn_fwd_f16_hd64_m64, f16, 64, 16)
SA_FWD_ENTRY(sa_attn_fwd_bf16_hd64_m64, bf16, 64, 16)
SA_FWD_ENTRY(sa_attn_fwd_f16_hd128_m64, f16, 128, 16)
SA_FWD_ENTRY(sa_attn_fwd_bf16_hd128_m64, bf16, 128, 16)
SA_FWD_ENTRY(sa_attn_fwd_f16_hd256_m64, f16, 256, 16)
SA_FWD_ENTRY(sa_attn_fwd_bf16_hd256_m64, bf16, 256, 16)
