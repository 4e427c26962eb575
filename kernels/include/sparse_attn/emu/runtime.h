// Emulator runtime: the host-side operations behind the arch layer and the CUDA shim.
//
// Implemented in kernels/emu/*.cpp. Every function here is called from inside a fiber (one
// emulated CUDA thread) while a launch runs; calling one outside a launch reports an error.
// Functions that name a `Site` may switch fibers (they are synchronisation points); an error
// they detect ends the launch with a report naming kernel, block, thread and call site.
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace sa {
namespace emu {

// Where an emulated operation was called from (file, line). Captured through default
// arguments so kernels never pass it explicitly.
struct Site {
  const char* file;
  int line;
  static constexpr Site current(const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return Site{f, l};
  }
};

struct Dim3 {
  unsigned x, y, z;
};

// Per-fiber state of one emulated CUDA thread.
struct ThreadState {
  Dim3 thread_idx;
  Dim3 block_idx;
  Dim3 block_dim;
  Dim3 grid_dim;
  unsigned linear_tid;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  unsigned lane;        // linear_tid % 32
  unsigned warp;        // linear_tid / 32
};

// The state of the fiber running on this OS thread. Valid only inside a launch.
const ThreadState& this_thread();

// Base of the current block's dynamic shared memory (16-byte aligned, guard-paged).
char* dynamic_smem();
// Size in bytes of the current block's dynamic shared memory.
size_t dynamic_smem_size();

// ---- block and warp synchronisation -----------------------------------------------------
void syncthreads(Site site);
void syncwarp(unsigned mask, Site site);

// ---- warp collectives ------------------------------------------------------------------
enum class ShflMode : int { Idx = 0, Up = 1, Down = 2, Bfly = 3 };
// One 32-bit shuffle with the PTX `shfl.sync` semantics; `c` is the packed clamp/segment
// operand exactly as PTX takes it (see docs/emulator.md §4).
uint32_t shfl(ShflMode mode, unsigned mask, uint32_t value, int b, int c, Site site);

enum class MmaType : int { F16 = 0, BF16 = 1 };
// D = A*B + C, m16n8k16 (a: 4 regs, b: 2 regs) or m16n8k8 (a: 2 regs, b: 1 reg).
void mma(MmaType type, int k, float d[4], const uint32_t* a, const uint32_t* b,
         const float c[4], Site site);

// ldmatrix.m8n8.{x1,x2,x4}{.trans}.b16: `num` in {1, 2, 4}; `row_addr` is this lane's row
// address (shared memory, 16-byte aligned); `regs` receives `num` registers.
void ldmatrix(int num, bool trans, uint32_t* regs, const void* row_addr, Site site);

// ---- cp.async --------------------------------------------------------------------------
enum class CacheOp : int { CA = 0, CG = 1 };
void cp_async(CacheOp op, void* smem_dst, const void* gmem_src, int cp_size, int src_size,
              Site site);
void cp_async_commit(Site site);
void cp_async_wait(int n, Site site);

// ---- checked memory accesses (arch/memory.cuh) -----------------------------------------
// A plain load (`write` false) or store of `bytes` at `addr` in the block's shared memory,
// which must be `align`-aligned and inside it. Reports, with the other thread's call site
// where there is one: a read of bytes whose cp.async has not landed, or landed in another
// thread's wait with no __syncthreads since; a read of bytes no thread wrote since the block
// started (uninitialised); a load or store of bytes another thread stored since the last
// __syncthreads with no barrier (or, within a warp, no __syncwarp) between them; a store
// over bytes in flight from a cp.async, or read by another warp since the last barrier.
void shared_access(const void* addr, size_t bytes, size_t align, bool write, Site site);
// A vector access of `bytes` to global memory at `addr`: reports a misaligned address.
void global_access(const void* addr, size_t bytes, size_t align, Site site);

// ---- numerics ---------------------------------------------------------------------------
// ex2.approx.ftz.f32 as the launch's numerics mode models it: exact 2^x, or (pessimistic)
// subnormal inputs and results flushed to zero and the result off by up to 2 ulp.
float ex2_approx(float x);

// Reports a kernel-detected failure (device-side assert equivalent) and ends the launch.
[[noreturn]] void trap(const char* message, Site site);

}  // namespace emu
}  // namespace sa
