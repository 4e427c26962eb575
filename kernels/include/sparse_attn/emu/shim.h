// CUDA shim for the host compiler: just enough of CUDA's built-in vocabulary for a kernel
// `.cu` file to compile with g++ and run under the emulator. Included by
// `sparse_attn/arch/platform.cuh` only when not compiling with nvcc.
#pragma once

#if defined(__CUDACC__)
#error "sparse_attn/emu/shim.h is for host builds only"
#endif

#include <math.h>
#include <stdint.h>

#include "sparse_attn/emu/runtime.h"

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict

struct dim3 {
  unsigned x, y, z;
};

// Built-in index variables: read from the running fiber's state.
#define threadIdx (::sa::emu::this_thread().thread_idx)
#define blockIdx (::sa::emu::this_thread().block_idx)
#define blockDim (::sa::emu::this_thread().block_dim)
#define gridDim (::sa::emu::this_thread().grid_dim)

inline void __syncthreads(::sa::emu::Site site = ::sa::emu::Site::current()) {
  ::sa::emu::syncthreads(site);
}

// CUDA vector types used by kernels for 8- and 16-byte global accesses.
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) {
  return uint4{x, y, z, w};
}

// Device math functions with the names kernels use.
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
