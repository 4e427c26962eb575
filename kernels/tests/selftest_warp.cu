// Emulator self-test: shuffles, __syncwarp, __syncthreads and the thread/block indices
// (docs/emulator.md §4 and §6). Each `mode` is one scenario; v[L] = 100 + L is the value a lane
// contributes. Modes >= 20 are misuse the emulator must report.
#include "sparse_attn/arch.cuh"

struct SaSelftestWarpParams {
  uint32_t* out;  // results, indexed as each mode documents
  int32_t mode;   // SelftestWarpMode
  int32_t pad;
};
static_assert(sizeof(SaSelftestWarpParams) == 16, "mirrored in src/emu/selftest.rs");

enum SelftestWarpMode : int32_t {
  kButterflySum = 0,     // out[L]: xor 1, 2, 4, 8, 16 sum
  kXor16Width16 = 1,     // out[L]
  kIdx10Width8 = 2,      // out[L]
  kDown16 = 3,           // out[L]
  kUp1Width8 = 4,        // out[L]
  kShfl64 = 5,           // out[2L], out[2L+1]: lo, hi of the 64-bit xor-5 shuffle
  kQuadMax = 6,          // out[L]: f32 bits of the max over the lane's quad
  kPartialMasks = 7,     // two half-warp masks at different sites; out[L], out[32+L]
  kExitedLanes = 8,      // lanes 16-31 exit; out[L], out[32+L] for lanes 0-15
  kSyncwarpExited = 9,   // lanes 16-31 exit, the rest __syncwarp(full mask)
  kBarrierExited = 10,   // 64 threads, warp 1 exits, warp 0 barriers: reported
  kIndices = 11,         // out[4*global linear thread + 0..4]: thread, block, blockDim, gridDim
  kNotInMask = 20,
  kMismatch = 21,        // lanes 0-15 and 16-31 reach full-mask shuffles at different sites
  kDivergentBarrier = 22,  // 64 threads: warp 0 and warp 1 at different __syncthreads
  kDeadlock = 23,        // 64 threads: a barrier waits for lanes stuck in a shuffle
  kTrap = 24,            // lane 5 calls the kernel-side assertion
  kBadWidth = 25,        // shuffle width 12
};

namespace {

SA_DEVICE uint32_t pack3(unsigned x, unsigned y, unsigned z) { return x | (y << 8) | (z << 16); }

}  // namespace

SA_KERNEL(sa_selftest_warp, SaSelftestWarpParams, 64) {
  using sa::arch::kFullMask;
  const SaSelftestWarpParams& p = params;
  const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned lane = sa::arch::lane_id(), warp = tid / 32;
  const uint32_t v = 100 + lane;
  uint32_t* out = p.out;

  switch (p.mode) {
    case kButterflySum: {
      uint32_t x = v;
      for (int s = 1; s < 32; s <<= 1) x += sa::arch::shfl_xor(kFullMask, x, s);
      out[lane] = x;
      break;
    }
    case kXor16Width16: out[lane] = sa::arch::shfl_xor(kFullMask, v, 16, 16); break;
    case kIdx10Width8: out[lane] = sa::arch::shfl_idx(kFullMask, v, 10, 8); break;
    case kDown16: out[lane] = sa::arch::shfl_down(kFullMask, v, 16u); break;
    case kUp1Width8: out[lane] = sa::arch::shfl_up(kFullMask, v, 1u, 8); break;
    case kShfl64: {
      const uint64_t x = (static_cast<uint64_t>(lane + 1) << 32) | (0xabc00000u + lane);
      const uint64_t r = sa::arch::shfl_xor(kFullMask, x, 5);
      out[2 * lane] = static_cast<uint32_t>(r);
      out[2 * lane + 1] = static_cast<uint32_t>(r >> 32);
      break;
    }
    case kQuadMax: {
      float x = static_cast<float>((lane * 11) % 32) + 0.5f;
      x = fmaxf(x, sa::arch::shfl_xor(kFullMask, x, 1));
      x = fmaxf(x, sa::arch::shfl_xor(kFullMask, x, 2));
      out[lane] = sa::arch::float_bits(x);
      break;
    }
    case kPartialMasks:
      if (lane < 16) {
        out[lane] = sa::arch::shfl_idx(0x0000ffffu, v, 20);  // source outside the mask
        out[32 + lane] = sa::arch::shfl_idx(0x0000ffffu, v, 3);
      } else {
        out[lane] = sa::arch::shfl_idx(0xffff0000u, v, 17);
        out[32 + lane] = sa::arch::shfl_idx(0xffff0000u, v, 1);  // outside the mask
      }
      break;
    case kExitedLanes:
      if (lane >= 16) return;
      out[lane] = sa::arch::shfl_idx(kFullMask, v, static_cast<int>(lane) + 16);  // exited
      out[32 + lane] = sa::arch::shfl_xor(kFullMask, v, 1);
      break;
    case kSyncwarpExited:
      if (lane >= 16) return;
      sa::arch::syncwarp(kFullMask);
      out[lane] = 1;
      break;
    case kBarrierExited: {
      // Warp 1 returns early, skipping the barriers warp 0 waits at: a bug the emulator
      // reports (on the GPU the barrier's behaviour is then undefined).
      if (warp == 1) return;
      const sa::Smem s = sa::dynamic_smem();
      sa::arch::sts(s + 4 * lane, 3 * lane);
      __syncthreads();
      const uint32_t x = sa::arch::lds<uint32_t>(s + 4 * ((lane + 1) % 32));
      __syncthreads();
      sa::arch::sts(s + 4 * lane, x + 1);
      __syncthreads();
      out[lane] = sa::arch::lds<uint32_t>(s + 4 * ((lane + 2) % 32));
      break;
    }
    case kIndices: {
      const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
      const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
      uint32_t* o = out + 4 * (block * nthreads + tid);
      o[0] = pack3(threadIdx.x, threadIdx.y, threadIdx.z);
      o[1] = pack3(blockIdx.x, blockIdx.y, blockIdx.z);
      o[2] = pack3(blockDim.x, blockDim.y, blockDim.z);
      o[3] = pack3(gridDim.x, gridDim.y, gridDim.z);
      break;
    }
    case kNotInMask:
      out[lane] = sa::arch::shfl_xor(0xfffffffeu, v, 1);
      break;
    case kMismatch:
      if (lane < 16) {
        out[lane] = sa::arch::shfl_xor(kFullMask, v, 1);
      } else {
        out[lane] = sa::arch::shfl_xor(kFullMask, v, 2);
      }
      break;
    case kDivergentBarrier:
      if (warp == 0) {
        __syncthreads();
      } else {
        __syncthreads();
      }
      out[tid] = 1;
      break;
    case kDeadlock:
      if (warp == 1 && lane < 16) {
        out[tid] = sa::arch::shfl_xor(kFullMask, v, 1);
      } else {
        __syncthreads();
      }
      break;
    case kTrap:
      if (lane == 5) {
#if defined(SA_EMULATED)
        ::sa::emu::trap("selftest assertion: lane 5 trapped", ::sa::emu::Site::current());
#else
        __trap();
#endif
      }
      break;
    case kBadWidth:
      out[lane] = sa::arch::shfl_xor(kFullMask, v, 1, 12);
      break;
    default:
      break;
  }
}
