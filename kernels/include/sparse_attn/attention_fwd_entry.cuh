// The forward kernels' entry points, one per (dtype, head_dim, tile shape, walk), and the
// macros that define them: each kernels/attention_fwd_hd<D>.cu instantiates one head_dim, so
// nvcc compiles the five files side by side. The shapes are the prefill tile (128 query rows
// per block, 32 per warp: each K/V fragment feeds two MMAs) and the decode tile (64 rows, 16
// per warp: short queries and GQA-packed decode waste no rows). head_dim 96, 128 and 256 run
// the 64-row tile in both phases for now: at 128 with 32 rows per warp the accumulators (O 128
// + S 64 registers) and the kernel's state still spill 92 bytes at 255 registers on sm_90 (36
// on sm_80). head_dim 512 runs the 64-row tile over two blocks per query tile, each owning half
// of the output columns (kernel_traits.cuh: kColSplits). The step tile (one warp of 16 rows,
// `_m16`) serves decode steps of at most 16 rows per block (a token's packed query heads, or up
// to 16 tokens of one head): a launch bound by K/V bandwidth, where a 36 KB, 32-thread block
// (head_dim 128) lets 4-6 blocks per SM keep their K/V tiles in flight instead of the decode
// tile's 2. src/kernels.rs (fwd_tiles) picks the shape and the walk; causal, windows and
// patterns are run-time data, so these files are the whole instantiation set of the forward
// pass.
#pragma once

#include "sparse_attn/attention_fwd.cuh"

// Each (dtype, head_dim, tile shape) in both walks (tile_walk.cuh): the compiled lists and,
// suffixed _rt, the run-time walk of one plan for every length.
#define SA_FWD_ENTRY_SHAPE(name, T, D, WARP_ROWS, WARPS)                                  \
  SA_KERNEL(name, SaAttnFwdParams, 32 * WARPS) {                                         \
    sa::attn_fwd<sa::FwdTraits<sa::T, D, WARP_ROWS, WARPS>>(params);                     \
  }                                                                                      \
  SA_KERNEL(name##_rt, SaAttnFwdParams, 32 * WARPS) {                                    \
    sa::attn_fwd<sa::FwdTraits<sa::T, D, WARP_ROWS, WARPS>, sa::Canary::None,            \
                 sa::IntervalWalk>(params);                                              \
  }
#define SA_FWD_ENTRY(name, T, D, WARP_ROWS) SA_FWD_ENTRY_SHAPE(name, T, D, WARP_ROWS, 4)
// The step shape: one warp of 16 rows (up to head_dim 256; 512 keeps the decode shape, whose
// column split already halves its blocks' work).
#define SA_FWD_STEP_ENTRY(name, T, D) SA_FWD_ENTRY_SHAPE(name, T, D, 16, 1)
