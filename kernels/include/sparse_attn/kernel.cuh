// Kernel entry points and dynamic shared memory, identical in source for nvcc and the emulator.
//
//   SA_KERNEL(sa_kv_append, SaKvAppendParams, 32) { ... params ... }
//
// declares, under nvcc, `extern "C" __global__ void sa_kv_append(const SaKvAppendParams
// params)`; on the host, `extern "C" void sa_kv_append(const void* params)`, which the
// emulator's executor calls once per emulated thread. Both take the params struct by value,
// so one launch description (grid, block, smem, params) drives both backends.
#pragma once

#include "sparse_attn/arch/memory.cuh"

#if defined(SA_GPU)
// The explicit minimum of one block per SM lets ptxas use all 255 registers: with the thread
// bound alone it capped the forward kernel at 168 registers on sm_80 and spilled 140 bytes.
#define SA_KERNEL(name, Params, max_threads) \
  extern "C" __global__ void __launch_bounds__(max_threads, 1) name(const Params params)
#else
#define SA_KERNEL(name, Params, max_threads)                                   \
  static void name##_body(const Params params);                                \
  extern "C" void name(const void* p) { name##_body(*static_cast<const Params*>(p)); } \
  static void name##_body(const Params params)
#endif

namespace sa {

// Base of the block's dynamic shared memory, 16-byte aligned: the only source of shared
// memory (no static __shared__ arrays), reached only through the arch layer (arch/memory.cuh).
SA_DEVICE Smem dynamic_smem() {
#if defined(SA_GPU)
  extern __shared__ __align__(16) char sa_dynamic_smem[];
  return arch::SmemAccess::wrap(sa_dynamic_smem);
#else
  return arch::SmemAccess::wrap(::sa::emu::dynamic_smem());
#endif
}

}  // namespace sa
