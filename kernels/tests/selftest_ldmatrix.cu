// Emulator self-test: ldmatrix x1/x2/x4, with and without .trans (docs/emulator.md §2 and §6).
//
// One warp stores the 16x16 tile S[r][c] = 64r + c (16-bit, row-major, 32-byte rows) in
// shared memory, then every lane passes a row address and the registers are written to
// `out[lane][0..num)`. Lanes that supply no row (x1: 8-31, x2: 16-31) pass a garbage pointer,
// which must never be dereferenced.
#include "sparse_attn/arch.cuh"

struct SaSelftestLdmatrixParams {
  uint32_t* out;  // [32][4]
  int32_t num;    // 1, 2 or 4 matrices
  int32_t trans;  // 0 or 1
  int32_t mode;   // SelftestLdmatrixMode
  int32_t pad;
};
static_assert(sizeof(SaSelftestLdmatrixParams) == 24, "mirrored in src/emu/selftest.rs");

enum SelftestLdmatrixMode : int32_t {
  kLdsmStandard = 0,    // lane L: &S[L % 16][(L / 16) * 8]
  kLdsmPermuted = 1,    // lanes of each matrix supply its rows in reverse order
  kLdsmMisaligned = 2,  // lane 3 passes an 8-byte aligned address: must trap
  kLdsmOutOfSmem = 3,   // lane 5 passes the end of shared memory: must be reported
};

namespace {

constexpr int kRowBytes = 32;

SA_DEVICE sa::Smem natural_row(sa::Smem s, unsigned lane) {
  return s + (lane % 16) * kRowBytes + (lane / 16) * 16;
}

}  // namespace

SA_KERNEL(sa_selftest_ldmatrix, SaSelftestLdmatrixParams, 32) {
  const SaSelftestLdmatrixParams& p = params;
  const unsigned lane = sa::arch::lane_id();
  const sa::Smem s = sa::dynamic_smem();
  for (int i = 0; i < 8; ++i) {
    const int r = lane / 2, c = (lane % 2) * 8 + i;
    sa::arch::sts(s + 2 * (r * 16 + c), static_cast<uint16_t>(64 * r + c));
  }
  __syncthreads();

  const unsigned m = lane / 8, r = lane % 8;
  sa::Smem addr = natural_row(s, lane);
  if (p.mode == kLdsmPermuted) addr = natural_row(s, 8 * m + (7 - r));
  if (p.mode == kLdsmMisaligned && lane == 3) addr += 8;
  if (p.mode == kLdsmOutOfSmem && lane == 5) addr = s + 16 * kRowBytes;
  if (lane >= 8 * static_cast<unsigned>(p.num)) {
    // Never read (self-tests may forge addresses through SmemAccess).
    addr = sa::arch::SmemAccess::wrap(reinterpret_cast<char*>(static_cast<uintptr_t>(0xdead0003u)));
  }

  uint32_t regs[4] = {0, 0, 0, 0};
  if (p.trans != 0) {
    if (p.num == 1) sa::arch::ldmatrix_x1_trans(regs, addr);
    if (p.num == 2) sa::arch::ldmatrix_x2_trans(regs, addr);
    if (p.num == 4) sa::arch::ldmatrix_x4_trans(regs, addr);
  } else {
    if (p.num == 1) sa::arch::ldmatrix_x1(regs, addr);
    if (p.num == 2) sa::arch::ldmatrix_x2(regs, addr);
    if (p.num == 4) sa::arch::ldmatrix_x4(regs, addr);
  }
  for (int i = 0; i < p.num; ++i) p.out[lane * 4 + i] = regs[i];
}
