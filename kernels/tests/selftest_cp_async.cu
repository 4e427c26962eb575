// Emulator self-test: cp.async, commit_group, wait_group (docs/emulator.md §3 and §6).
//
// Thread 0 does the copies unless a mode says otherwise; `out` receives shared memory as seen
// at chosen points. Some modes deliberately snapshot bytes that are still in flight with
// plain (unchecked) loads to observe the emulator's poison: those expectations hold on the
// emulator only. Modes >= 10 are misuse the emulator must report.
#include "sparse_attn/arch.cuh"

struct SaSelftestCpAsyncParams {
  const uint8_t* src;  // source bytes, a guarded buffer (the tests label it "cp_src")
  uint8_t* out;        // snapshots of shared memory
  int32_t src_len;     // bytes in src (a multiple of 16)
  int32_t mode;        // SelftestCpAsyncMode
};
static_assert(sizeof(SaSelftestCpAsyncParams) == 24, "mirrored in src/emu/selftest.rs");

enum SelftestCpAsyncMode : int32_t {
  kCpRoundTrip = 0,         // 16 bytes src -> smem -> out
  kCpSrcSize8 = 1,          // src-size 8: 8 bytes + 8 zeros
  kCpSrcSize0 = 2,          // src-size 0 naming the buffer's end (never read): 16 zeros
  kCpThreeGroups = 3,       // snapshots after wait<2>, wait<1>, wait<0>
  kCpEmptyGroup = 4,        // an empty commit counts as a group
  kCpSizes = 5,             // .ca with 4, 8 (src-size 5) and 16 (src-size 12) bytes
  kCpSyncwarpPublishes = 6, // lane 0 loads, __syncwarp, lane 1 reads: allowed
  kCpReadBeforeWait = 10,
  kCpCg8 = 11,              // cp.async.cg with 8 bytes (emulated only: the arch API rejects it)
  kCpPendingAtExit = 12,    // committed, never waited for
  kCpOverlap = 13,          // two in-flight copies to overlapping destinations
  kCpSrcOutOfBounds = 14,   // source past the end of the buffer
  kCpMisalignedDst = 15,
  kCpMissingBarrier = 16,   // thread 0 loads and waits, thread 32 reads without a barrier
  kCpWriteAfterRead = 17,   // thread 32 reads, thread 0 refills without a barrier
  kCpNeverCommitted = 18,   // issued, never committed
  kCpSrcSize0Null = 19,     // src-size 0 with a null source
  kCpSrcSize0Outside = 20,  // src-size 0 with a source far outside every buffer
};

namespace {

// Unchecked loads (raw pointers, allowed in self-tests only) to observe the poison.
SA_DEVICE void snapshot(uint8_t* out, sa::Smem s, int n) {
  const char* raw = sa::arch::SmemAccess::raw(s);
  for (int i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(raw[i]);
}

SA_DEVICE void checked_copy(uint8_t* out, sa::Smem s, int n) {
  for (int i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(sa::arch::lds<char>(s + i));
}

}  // namespace

SA_KERNEL(sa_selftest_cp_async, SaSelftestCpAsyncParams, 64) {
  const SaSelftestCpAsyncParams& p = params;
  const int tid = threadIdx.x;
  const sa::Smem s = sa::dynamic_smem();

  if (p.mode == kCpSyncwarpPublishes) {
    if (tid >= 32) return;
    if (tid == 0) {
      sa::arch::cp_async_cg16(s, p.src);
      sa::arch::cp_async_commit();
      sa::arch::cp_async_wait<0>();
    }
    sa::arch::syncwarp();
    if (tid == 1) checked_copy(p.out, s, 16);
    return;
  }
  if (p.mode == kCpMissingBarrier) {
    if (tid == 0) {
      sa::arch::cp_async_cg16(s, p.src);
      sa::arch::cp_async_commit();
      sa::arch::cp_async_wait<0>();
    }
    if (tid == 32) p.out[0] = static_cast<uint8_t>(sa::arch::lds<char>(s));
    return;
  }
  if (p.mode == kCpWriteAfterRead) {
    // The buffer is filled and published, read by thread 32, then refilled by thread 0 with
    // no barrier after the read.
    if (tid == 0) {
      sa::arch::cp_async_cg16(s, p.src);
      sa::arch::cp_async_wait_all();
    }
    __syncthreads();
    if (tid == 32) p.out[0] = static_cast<uint8_t>(sa::arch::lds<char>(s));
    // A scheduling point for warp 0 (not a fence for warp 1): thread 32 reads first under
    // every schedule order.
    if (tid < 32) sa::arch::syncwarp();
    if (tid == 0) {
      sa::arch::cp_async_cg16(s, p.src + 16);
      sa::arch::cp_async_commit();
      sa::arch::cp_async_wait<0>();
    }
    return;
  }
  if (tid != 0) return;

  switch (p.mode) {
    case kCpRoundTrip:
      sa::arch::cp_async_cg16(s, p.src);
      sa::arch::cp_async_commit();
      sa::arch::cp_async_wait<0>();
      checked_copy(p.out, s, 16);
      break;
    case kCpSrcSize8:
      sa::arch::cp_async_cg16(s, p.src, 8);
      sa::arch::cp_async_wait_all();
      checked_copy(p.out, s, 16);
      break;
    case kCpSrcSize0:
      sa::arch::cp_async_cg16(s, p.src + p.src_len, 0);  // past the end: must not be read
      sa::arch::cp_async_wait_all();
      checked_copy(p.out, s, 16);
      break;
    case kCpThreeGroups:
      for (int g = 0; g < 3; ++g) {
        sa::arch::cp_async_cg16(s + 16 * g, p.src + 16 * g);
        sa::arch::cp_async_commit();
      }
      sa::arch::cp_async_wait<2>();
      snapshot(p.out, s, 48);
      sa::arch::cp_async_wait<1>();
      snapshot(p.out + 48, s, 48);
      sa::arch::cp_async_wait<0>();
      snapshot(p.out + 96, s, 48);
      break;
    case kCpEmptyGroup:
      sa::arch::cp_async_cg16(s, p.src);
      sa::arch::cp_async_commit();
      sa::arch::cp_async_cg16(s + 16, p.src + 16);
      sa::arch::cp_async_commit();
      sa::arch::cp_async_commit();  // empty group: now the most recent one
      sa::arch::cp_async_wait<1>();  // so both real groups must have landed
      checked_copy(p.out, s, 32);
      sa::arch::cp_async_wait<0>();
      break;
    case kCpSizes:
      sa::arch::cp_async_ca<4>(s, p.src);
      sa::arch::cp_async_ca<8>(s + 8, p.src + 8, 5);
      sa::arch::cp_async_ca<16>(s + 16, p.src + 16, 12);
      sa::arch::cp_async_commit();
      sa::arch::cp_async_wait<0>();
      checked_copy(p.out, s, 4);
      snapshot(p.out + 4, s + 4, 4);  // no copy wrote bytes 4..8: the block-start poison
      checked_copy(p.out + 8, s + 8, 24);
      break;
    case kCpReadBeforeWait:
      sa::arch::cp_async_cg16(s, p.src);
      sa::arch::cp_async_commit();
      p.out[0] = static_cast<uint8_t>(sa::arch::lds<char>(s));
      sa::arch::cp_async_wait<0>();
      break;
    case kCpCg8:
#if defined(SA_EMULATED)
      ::sa::emu::cp_async(::sa::emu::CacheOp::CG, sa::arch::SmemAccess::raw(s), p.src, 8, 8,
                          ::sa::emu::Site::current());
      sa::arch::cp_async_wait_all();
#endif
      break;
    case kCpPendingAtExit:
      sa::arch::cp_async_cg16(s, p.src);
      sa::arch::cp_async_commit();
      break;
    case kCpOverlap:
      sa::arch::cp_async_cg16(s, p.src);
      sa::arch::cp_async_ca<8>(s + 8, p.src + 16);
      sa::arch::cp_async_wait_all();
      break;
    case kCpSrcOutOfBounds:
      sa::arch::cp_async_cg16(s, p.src + p.src_len);
      sa::arch::cp_async_wait_all();
      break;
    case kCpMisalignedDst:
      sa::arch::cp_async_ca<16>(s + 8, p.src);
      sa::arch::cp_async_wait_all();
      break;
    case kCpNeverCommitted:
      sa::arch::cp_async_cg16(s, p.src);
      break;
    case kCpSrcSize0Null:
      sa::arch::cp_async_cg16(s, nullptr, 0);
      sa::arch::cp_async_wait_all();
      break;
    case kCpSrcSize0Outside:
      sa::arch::cp_async_cg16(s, p.src + p.src_len + (1 << 20), 0);
      sa::arch::cp_async_wait_all();
      break;
    default:
      break;
  }
}
