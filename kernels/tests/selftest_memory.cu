// Emulator self-test: global and shared memory bounds, shared-memory poison, faults
// (docs/emulator.md §3 and §7). Modes >= 2 are accesses the emulator must report
// with kernel, block, thread and the buffer involved.
#include "sparse_attn/arch.cuh"

struct SaSelftestMemoryParams {
  const float* src;  // [n] (the tests label it "src")
  float* dst;        // [n] ("dst")
  int32_t n;         // elements of src and dst; bytes of dynamic shared memory for modes 4, 5
  int32_t mode;      // SelftestMemoryMode
};
static_assert(sizeof(SaSelftestMemoryParams) == 24, "mirrored in src/emu/selftest.rs");

enum SelftestMemoryMode : int32_t {
  kMemCopy = 0,          // dst[i] = 2 * src[i], grid-stride over all blocks
  kMemSmemPoison = 1,    // dst[tid] = shared word tid as left by the emulator (bit pattern)
  kMemGlobalOobRead = 2,   // block 1, thread 3 reads src[n]
  kMemGlobalOobWrite = 3,  // thread 0 writes dst[n]
  kMemSharedOobChecked = 4,  // lds one float past the end of dynamic shared memory
  kMemSharedOobPlain = 5,    // plain load just past the (16-byte padded) end
  kMemStackOverflow = 6,     // runaway recursion (emulated only)
  kMemNullRead = 7,          // src is null
  kMemDivByZero = 8,         // integer division by n = 0 (emulated: SIGFPE is reported)
};

namespace {

#if defined(SA_EMULATED)
__attribute__((noinline)) int recurse(int depth, volatile char* prev) {
  volatile char frame[1024];
  frame[0] = static_cast<char>(depth);
  frame[1023] = prev != nullptr ? prev[0] : 0;
  if (depth > (1 << 24)) return frame[0];
  return recurse(depth + 1, frame) + frame[1023];
}
#endif

}  // namespace

SA_KERNEL(sa_selftest_memory, SaSelftestMemoryParams, 128) {
  const SaSelftestMemoryParams& p = params;
  const int tid = threadIdx.x;
  const char* smem = sa::dynamic_smem();
  switch (p.mode) {
    case kMemCopy: {
      const int stride = gridDim.x * blockDim.x;
      for (int i = blockIdx.x * blockDim.x + tid; i < p.n; i += stride) p.dst[i] = 2.f * p.src[i];
      break;
    }
    case kMemSmemPoison:
      reinterpret_cast<uint32_t*>(p.dst)[tid] = reinterpret_cast<const uint32_t*>(smem)[tid];
      break;
    case kMemGlobalOobRead:
      if (blockIdx.x == 1 && tid == 3) p.dst[0] = p.src[p.n];
      break;
    case kMemGlobalOobWrite:
      if (tid == 0) p.dst[p.n] = 1.f;
      break;
    case kMemSharedOobChecked:
      if (tid == 0) p.dst[0] = sa::arch::lds(reinterpret_cast<const float*>(smem + p.n));
      break;
    case kMemSharedOobPlain:
      if (tid == 0) p.dst[0] = *reinterpret_cast<const volatile float*>(smem + p.n);
      break;
    case kMemStackOverflow:
#if defined(SA_EMULATED)
      if (tid == 7) p.dst[0] = static_cast<float>(recurse(0, nullptr));
#endif
      break;
    case kMemNullRead:
      if (tid == 0) p.dst[0] = p.src[tid];
      break;
    case kMemDivByZero:
      if (tid == 0) p.dst[0] = static_cast<float>(1000 / p.n);
      break;
    default:
      break;
  }
}
