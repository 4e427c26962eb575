// The architecture layer: the only place in the project with inline PTX. Every function has a
// GPU body (sm_80+) and an emulated host body; kernels include this header and nothing of
// CUDA's own.
#pragma once

#include "sparse_attn/arch/platform.cuh"
#include "sparse_attn/arch/numeric.cuh"
#include "sparse_attn/arch/memory.cuh"
#include "sparse_attn/arch/mma.cuh"
#include "sparse_attn/arch/ldmatrix.cuh"
#include "sparse_attn/arch/cp_async.cuh"
#include "sparse_attn/arch/warp.cuh"
#include "sparse_attn/kernel.cuh"
