// cp.async: asynchronous global -> shared copies (sm_80+), grouped per thread.
//
// `src_bytes` < copy size zero-fills the rest of the destination; `src_bytes == 0` never reads
// the source, but the source must still be an aligned address inside the tensor (pass its
// base for a row that is predicated off, never nullptr or a pointer past its end): the
// emulator checks it. Groups complete
// in commit order; `cp_async_wait<N>()` returns when at most N of this thread's groups are
// still pending. Landed data is visible to other threads only after a `__syncthreads()`.
// The emulator poisons the destination at issue and lands it at the matching wait.
#pragma once

#include "sparse_attn/arch/platform.cuh"
#include "sparse_attn/arch/ldmatrix.cuh"

namespace sa {
namespace arch {

// cp.async.ca (L1-allocating), 4, 8 or 16 bytes.
template <int Bytes>
SA_DEVICE void cp_async_ca(Smem smem_dst, const void* gmem_src, int src_bytes = Bytes SA_SITE_PARAM) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(SA_GPU)
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_u32(smem_dst)),
               "l"(gmem_src), "n"(Bytes), "r"(src_bytes)
               : "memory");
#else
  ::sa::emu::cp_async(::sa::emu::CacheOp::CA, SmemAccess::raw(smem_dst), gmem_src, Bytes, src_bytes, site);
#endif
}

// cp.async.cg (L2 only, bypasses L1), 16 bytes: the form used for K/V tiles.
SA_DEVICE void cp_async_cg16(Smem smem_dst, const void* gmem_src, int src_bytes = 16 SA_SITE_PARAM) {
#if defined(SA_GPU)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem_dst)),
               "l"(gmem_src), "r"(src_bytes)
               : "memory");
#else
  ::sa::emu::cp_async(::sa::emu::CacheOp::CG, SmemAccess::raw(smem_dst), gmem_src, 16, src_bytes, site);
#endif
}

SA_DEVICE void cp_async_commit(SA_SITE_ONLY) {
#if defined(SA_GPU)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#else
  ::sa::emu::cp_async_commit(site);
#endif
}

template <int N>
SA_DEVICE void cp_async_wait(SA_SITE_ONLY) {
  static_assert(N >= 0 && N < 8, "wait_group takes a small non-negative immediate");
#if defined(SA_GPU)
  // "memory": no shared-memory access of this thread may move above the wait.
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#else
  ::sa::emu::cp_async_wait(N, site);
#endif
}

// commit + wait for everything this thread issued.
SA_DEVICE void cp_async_wait_all(SA_SITE_ONLY) {
#if defined(SA_GPU)
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#else
  ::sa::emu::cp_async_commit(site);
  ::sa::emu::cp_async_wait(0, site);
#endif
}

}  // namespace arch
}  // namespace sa
