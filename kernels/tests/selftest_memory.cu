// Emulator self-test: global and shared memory bounds, shared-memory poison, faults, plain
// shared-memory races, uninitialised and misaligned accesses (docs/emulator.md §3 and §7).
// Modes 2-10 and 13-18 are accesses the emulator must report with kernel, block, thread and
// the buffer or the other thread involved; modes 11 and 12 are their correct twins.
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
  // Plain shared-memory stores and loads (sts / lds) between threads; n = 64 threads.
  kMemStoreLoadRace = 9,      // thread 0 stores a word, thread 32 loads it, no barrier
  kMemSameWarpRace = 10,      // lane 0 stores, lane 1 loads, no __syncwarp between
  kMemSyncwarpOrders = 11,    // lane 0 stores, __syncwarp, lane 1 loads: dst[0] = 7
  kMemBarrierOrders = 12,     // thread 0 stores, __syncthreads, thread 32 loads: dst[0] = 7
  kMemWriteAfterRead = 13,    // thread 32 loads, thread 0 overwrites, no barrier between
  kMemWriteWrite = 14,        // threads 0 and 32 store the same word, no barrier
  kMemUninitializedLoad = 15, // a load of shared bytes nobody wrote
  kMemMisalignedShared = 16,  // a 4-byte load at shared byte offset 2
  kMemMisalignedGlobal = 17,  // a 16-byte global store 4 bytes past a 16-byte boundary
  kMemShflIsNoFence = 18,     // lane 0 stores, a full-warp shuffle, lane 1 loads: still a race
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
  const sa::Smem smem = sa::dynamic_smem();
  const char* raw = sa::arch::SmemAccess::raw(smem);  // unchecked, for the poison modes only
  switch (p.mode) {
    case kMemCopy: {
      const int stride = gridDim.x * blockDim.x;
      for (int i = blockIdx.x * blockDim.x + tid; i < p.n; i += stride) p.dst[i] = 2.f * p.src[i];
      break;
    }
    case kMemSmemPoison:
      reinterpret_cast<uint32_t*>(p.dst)[tid] = reinterpret_cast<const uint32_t*>(raw)[tid];
      break;
    case kMemGlobalOobRead:
      if (blockIdx.x == 1 && tid == 3) p.dst[0] = p.src[p.n];
      break;
    case kMemGlobalOobWrite:
      if (tid == 0) p.dst[p.n] = 1.f;
      break;
    case kMemSharedOobChecked:
      if (tid == 0) p.dst[0] = sa::arch::lds<float>(smem + p.n);
      break;
    case kMemSharedOobPlain:
      if (tid == 0) p.dst[0] = *reinterpret_cast<const volatile float*>(raw + p.n);
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
    case kMemStoreLoadRace:
    case kMemSameWarpRace:
    case kMemShflIsNoFence: {
      // The word starts published; then one thread stores and another loads it with nothing
      // ordering the two, reported whichever runs first (a load of an unsynchronised store,
      // or a store over an unsynchronised load).
      if (tid == 0) sa::arch::sts(smem, 1.f);
      __syncthreads();
      const int reader = p.mode == kMemStoreLoadRace ? 32 : 1;
      if (tid == 0) sa::arch::sts(smem, 7.f);
      int v = 0;
      if (p.mode == kMemShflIsNoFence && tid < 32) {
        v = sa::arch::shfl_xor(sa::arch::kFullMask, tid, 1);  // a rendezvous, not a fence
      }
      if (tid == reader) p.dst[0] = sa::arch::lds<float>(smem) + static_cast<float>(v & 0);
      break;
    }
    case kMemSyncwarpOrders:
      if (tid < 32) {
        if (tid == 0) sa::arch::sts(smem, 7.f);
        sa::arch::syncwarp();
        if (tid == 1) p.dst[0] = sa::arch::lds<float>(smem);
      }
      break;
    case kMemBarrierOrders:
      if (tid == 0) sa::arch::sts(smem, 7.f);
      __syncthreads();
      if (tid == 32) p.dst[0] = sa::arch::lds<float>(smem);
      break;
    case kMemWriteAfterRead:
      if (tid == 0) sa::arch::sts(smem, 7.f);
      __syncthreads();
      if (tid == 32) p.dst[0] = sa::arch::lds<float>(smem);
      if (tid == 0) sa::arch::sts(smem, 8.f);
      break;
    case kMemWriteWrite:
      if (tid == 0 || tid == 32) sa::arch::sts(smem, static_cast<float>(tid));
      break;
    case kMemUninitializedLoad:
      if (tid == 0) sa::arch::sts(smem, 7.f);
      __syncthreads();
      if (tid == 5) p.dst[0] = sa::arch::lds<float>(smem + 4);
      break;
    case kMemMisalignedShared:
      if (tid == 0) p.dst[0] = sa::arch::lds<float>(smem + 2);
      break;
    case kMemMisalignedGlobal:
      if (tid == 0) sa::arch::stg(reinterpret_cast<uint4*>(p.dst + 1), make_uint4(1, 2, 3, 4));
      break;
    default:
      break;
  }
}
