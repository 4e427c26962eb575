// Platform layer: the one switch between the GPU (nvcc) and the CPU emulator (g++).
//
// Every kernel header includes this first. Under nvcc (`__CUDACC__`) it is a no-op apart from
// a few macros; under a host compiler it pulls in the emulator shim, which provides
// `threadIdx`, `blockIdx`, `blockDim`, `gridDim`, `__syncthreads`, `dim3`, the CUDA vector
// types and empty `__device__`/`__global__` qualifiers, so a `.cu` file compiles unchanged.
//
// The rules a kernel follows to stay host-runnable are listed once, in kernels/README.md
// ("Rules for kernel authors").
#pragma once

#include <stdint.h>

// SA_GPU: compiled by nvcc (both of its passes). SA_DEVICE_PASS: nvcc's device pass, the only
// place inline PTX exists. SA_DEVICE functions exist only there, so they key their PTX bodies
// on SA_GPU; SA_HOST_DEVICE functions are also compiled by nvcc's host pass and must key
// theirs on SA_DEVICE_PASS, with a plain C++ body for the host pass. SA_EMULATED: the host
// compiler building the emulator.
#if defined(__CUDA_ARCH__)
#define SA_DEVICE_PASS 1
#endif

#if defined(__CUDACC__)
#define SA_GPU 1
#define SA_HOST_DEVICE __host__ __device__ __forceinline__
#define SA_DEVICE __device__ __forceinline__
#define SA_RESTRICT __restrict__
#else
#define SA_EMULATED 1
#include "sparse_attn/emu/shim.h"
#define SA_HOST_DEVICE inline
#define SA_DEVICE inline
#define SA_RESTRICT __restrict__
#endif

// Loop unrolling hint: nvcc's `#pragma unroll`; the host compiler gets a plain loop.
// SA_NO_UNROLL keeps a loop rolled (register pressure matters more than its trip overhead).
#if defined(SA_GPU)
#define SA_UNROLL _Pragma("unroll")
#define SA_NO_UNROLL _Pragma("unroll 1")
#else
#define SA_UNROLL
#define SA_NO_UNROLL
#endif

// Call-site capture for the emulator's reports. On the GPU the parameter does not exist; on
// the host every arch function takes a defaulted `Site` that records where it was called.
#if defined(SA_EMULATED)
#define SA_SITE_PARAM , ::sa::emu::Site site = ::sa::emu::Site::current()
#define SA_SITE_ONLY ::sa::emu::Site site = ::sa::emu::Site::current()
#else
#define SA_SITE_PARAM
#define SA_SITE_ONLY
#endif
