// Warp shuffles, __syncwarp, the lane id, and atomics.
//
// Shuffles follow `shfl.sync` (PTX ISA): every calling lane is in `mask`, all non-exited lanes
// of `mask` call the same shuffle; an out-of-segment source leaves the lane's own value.
// `width` is a power of two <= 32 and splits the warp into independent segments.
#pragma once

#include "sparse_attn/arch/numeric.cuh"

namespace sa {
namespace arch {

constexpr unsigned kFullMask = 0xffffffffu;

// The lane of this thread in its warp: %laneid on the GPU (threadIdx.x & 31 is wrong for
// blocks whose x extent is not a multiple of 32), linear thread id % 32 in the emulator, which
// forms warps from linear ids as the hardware does.
SA_DEVICE unsigned lane_id() {
#if defined(SA_GPU)
  unsigned lane;
  asm("mov.u32 %0, %%laneid;" : "=r"(lane));
  return lane;
#else
  return ::sa::emu::this_thread().lane;
#endif
}

SA_DEVICE void syncwarp(unsigned mask = kFullMask SA_SITE_PARAM) {
#if defined(SA_GPU)
  __syncwarp(mask);
#else
  ::sa::emu::syncwarp(mask, site);
#endif
}

// 32-bit shuffles on raw bits. The packed `c` operand is built exactly as CUDA's
// sm_30_intrinsics.hpp builds it.
SA_DEVICE uint32_t shfl_xor_u32(unsigned mask, uint32_t v, int lane_mask, int width = 32 SA_SITE_PARAM) {
#if defined(SA_GPU)
  return __shfl_xor_sync(mask, v, lane_mask, width);
#else
  return ::sa::emu::shfl(::sa::emu::ShflMode::Bfly, mask, v, lane_mask, ((32 - width) << 8) | 0x1f, site);
#endif
}
SA_DEVICE uint32_t shfl_idx_u32(unsigned mask, uint32_t v, int src_lane, int width = 32 SA_SITE_PARAM) {
#if defined(SA_GPU)
  return __shfl_sync(mask, v, src_lane, width);
#else
  return ::sa::emu::shfl(::sa::emu::ShflMode::Idx, mask, v, src_lane, ((32 - width) << 8) | 0x1f, site);
#endif
}
SA_DEVICE uint32_t shfl_down_u32(unsigned mask, uint32_t v, unsigned delta, int width = 32 SA_SITE_PARAM) {
#if defined(SA_GPU)
  return __shfl_down_sync(mask, v, delta, width);
#else
  return ::sa::emu::shfl(::sa::emu::ShflMode::Down, mask, v, static_cast<int>(delta), ((32 - width) << 8) | 0x1f, site);
#endif
}
SA_DEVICE uint32_t shfl_up_u32(unsigned mask, uint32_t v, unsigned delta, int width = 32 SA_SITE_PARAM) {
#if defined(SA_GPU)
  return __shfl_up_sync(mask, v, delta, width);
#else
  return ::sa::emu::shfl(::sa::emu::ShflMode::Up, mask, v, static_cast<int>(delta), (32 - width) << 8, site);
#endif
}

// Typed front ends: float, int and 64-bit values (64-bit = two 32-bit shuffles, as CUDA does).
#define SA_SHFL_TYPED(NAME, ARG)                                                              \
  SA_DEVICE float NAME(unsigned mask, float v, ARG, int width = 32 SA_SITE_PARAM) {            \
    return bits_float(NAME##_u32(mask, float_bits(v), arg, width SA_SITE_FWD));               \
  }                                                                                           \
  SA_DEVICE int NAME(unsigned mask, int v, ARG, int width = 32 SA_SITE_PARAM) {                \
    return static_cast<int>(NAME##_u32(mask, static_cast<uint32_t>(v), arg, width SA_SITE_FWD)); \
  }                                                                                           \
  SA_DEVICE uint32_t NAME(unsigned mask, uint32_t v, ARG, int width = 32 SA_SITE_PARAM) {      \
    return NAME##_u32(mask, v, arg, width SA_SITE_FWD);                                       \
  }                                                                                           \
  SA_DEVICE uint64_t NAME(unsigned mask, uint64_t v, ARG, int width = 32 SA_SITE_PARAM) {      \
    const uint32_t lo = NAME##_u32(mask, static_cast<uint32_t>(v), arg, width SA_SITE_FWD);   \
    const uint32_t hi = NAME##_u32(mask, static_cast<uint32_t>(v >> 32), arg, width SA_SITE_FWD); \
    return static_cast<uint64_t>(lo) | (static_cast<uint64_t>(hi) << 32);                     \
  }

#if defined(SA_EMULATED)
#define SA_SITE_FWD , site
#else
#define SA_SITE_FWD
#endif

SA_SHFL_TYPED(shfl_xor, int arg)
SA_SHFL_TYPED(shfl_idx, int arg)
SA_SHFL_TYPED(shfl_down, unsigned arg)
SA_SHFL_TYPED(shfl_up, unsigned arg)

#undef SA_SHFL_TYPED

// Atomic add on global memory (used by work counters).
SA_DEVICE unsigned long long atomic_add(unsigned long long* p, unsigned long long v) {
#if defined(SA_GPU)
  return atomicAdd(p, v);
#else
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
#endif
}

}  // namespace arch
}  // namespace sa
