// Emulator self-test: a small pipelined GEMM, C[M,16] = A[M,K] . B[K,16], plus the row maxima
// of C through quad shuffles. It exercises what attention kernels do (double-buffered
// cp.async with wait_group 1, ldmatrix / ldmatrix.trans, mma, barriers, shuffles), and its
// broken variants are the emulator's canaries: each `mode` removes one thing a correct kernel
// needs, and tests/emulator.rs asserts that the emulator reports (or, for the fragment swap,
// that the product comes out wrong).
//
// Block: 4 warps, 64 rows of A (16 per warp). Per k16 step, stage s of shared memory holds
// A [64][16] (2048 bytes) and B [16][16] (512 bytes), rows of 32 bytes.
#include "sparse_attn/arch.cuh"

struct SaSelftestGemmParams {
  const uint16_t* a;  // [m][k] row-major, 16-bit patterns
  const uint16_t* b;  // [k][16] row-major
  float* c;           // [m][16]
  float* row_max;     // [m]: max over each row of c
  int32_t m;          // multiple of 64 (one block per 64 rows)
  int32_t k;          // multiple of 16
  int32_t bf16;       // 0: f16, 1: bf16
  int32_t mode;       // SelftestGemmMode
};
static_assert(sizeof(SaSelftestGemmParams) == 48, "mirrored in src/emu/selftest.rs");

enum SelftestGemmMode : int32_t {
  kGemmCorrect = 0,
  kGemmMissingWait = 1,              // no cp_async_wait before reading a stage
  kGemmMissingBarrierAfterWait = 2,  // no __syncthreads between the wait and the reads
  kGemmMissingBarrierBeforeRefill = 3,  // no __syncthreads before a stage is refilled
  kGemmSwappedFragments = 4,         // A registers 1 and 2 (a2a3 <-> a4a5) swapped
};

namespace {

constexpr int kThreads = 128;
constexpr int kBlockM = 64;
constexpr int kN = 16;
constexpr int kKStep = 16;
constexpr int kRowBytes = kKStep * 2;                 // 32: one row of a stage tile
constexpr int kATileBytes = kBlockM * kRowBytes;      // [64][16]
constexpr int kStageBytes = kATileBytes + kKStep * kN * 2;  // + B [16][16]

// Issues the copies of k step `kt` into stage `stage`: thread tid copies half of A row
// tid / 2; warp 0 also copies B. Does not commit.
SA_DEVICE void load_stage(const SaSelftestGemmParams& p, sa::Smem smem, int stage, int kt,
                          int row0, int tid) {
  const sa::Smem sa_tile = smem + stage * kStageBytes;
  const sa::Smem sb_tile = sa_tile + kATileBytes;
  const int row = tid >> 1, half = tid & 1;
  sa::arch::cp_async_cg16(sa_tile + row * kRowBytes + half * 16,
                          p.a + static_cast<int64_t>(row0 + row) * p.k + kt * kKStep + half * 8);
  if (tid < 32) {
    sa::arch::cp_async_cg16(sb_tile + row * kRowBytes + half * 16,
                            p.b + static_cast<int64_t>(kt * kKStep + row) * kN + half * 8);
  }
}

template <typename T>
SA_DEVICE void gemm(const SaSelftestGemmParams& p) {
  const int tid = threadIdx.x, warp = tid / 32, lane = static_cast<int>(sa::arch::lane_id());
  const int row0 = blockIdx.x * kBlockM;
  const int steps = p.k / kKStep;
  const sa::Smem smem = sa::dynamic_smem();

  load_stage(p, smem, 0, 0, row0, tid);
  sa::arch::cp_async_commit();
  float acc[2][4];  // [16, 16] per warp: two n8 tiles
  for (int nt = 0; nt < 2; ++nt) {
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;
  }
  for (int kt = 0; kt < steps; ++kt) {
    if (kt + 1 < steps) load_stage(p, smem, (kt + 1) & 1, kt + 1, row0, tid);
    sa::arch::cp_async_commit();
    if (p.mode != kGemmMissingWait) sa::arch::cp_async_wait<1>();
    if (p.mode != kGemmMissingBarrierAfterWait) __syncthreads();

    const sa::Smem sa_tile = smem + (kt & 1) * kStageBytes;
    const sa::Smem sb_tile = sa_tile + kATileBytes;
    uint32_t a[4], b[4];
    // Lane L: A row L % 16 of this warp, columns (L / 16) * 8: {a0a1, a2a3, a4a5, a6a7}.
    sa::arch::ldmatrix_x4(a, sa_tile + (warp * 16 + (lane & 15)) * kRowBytes + (lane >> 4) * 16);
    if (p.mode == kGemmSwappedFragments) {
      const uint32_t tmp = a[1];
      a[1] = a[2];
      a[2] = tmp;
    }
    // B is K x N row-major: .trans; matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15),
    // (k 8-15, n 8-15), so {b[0], b[1]} feed n tile 0 and {b[2], b[3]} n tile 1.
    sa::arch::ldmatrix_x4_trans(b, sb_tile + (lane & 15) * kRowBytes + (lane >> 4) * 16);
    sa::arch::mma_m16n8k16<T>(acc[0], a, b, acc[0]);
    sa::arch::mma_m16n8k16<T>(acc[1], a, b + 2, acc[1]);
    if (p.mode != kGemmMissingBarrierBeforeRefill) __syncthreads();
  }
  sa::arch::cp_async_wait<0>();

  const int g = lane >> 2, t = lane & 3;
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + warp * 16 + g + 8 * r;
    float mx = acc[0][2 * r];
    for (int nt = 0; nt < 2; ++nt) {
      for (int i = 0; i < 2; ++i) {
        p.c[row * kN + nt * 8 + 2 * t + i] = acc[nt][2 * r + i];
        mx = fmaxf(mx, acc[nt][2 * r + i]);
      }
    }
    // The four lanes of a quad hold the 16 columns of the row.
    mx = fmaxf(mx, sa::arch::shfl_xor(sa::arch::kFullMask, mx, 1));
    mx = fmaxf(mx, sa::arch::shfl_xor(sa::arch::kFullMask, mx, 2));
    if (t == 0) p.row_max[row] = mx;
  }
}

}  // namespace

SA_KERNEL(sa_selftest_gemm, SaSelftestGemmParams, kThreads) {
  if (params.bf16 != 0) {
    gemm<sa::bf16>(params);
  } else {
    gemm<sa::f16>(params);
  }
}
