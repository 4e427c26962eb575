// Emulator self-test: mma.sync fragment layouts and numerics (docs/emulator.md §1 and §6).
//
// One warp builds its A/B/C fragments from row-major tiles with the PTX layout formulas,
// runs one mma and writes both the raw per-lane registers (so tests can compare individual
// lanes with the hard-coded vectors of the spec) and D scattered back to row-major (for the
// exact triple-loop comparison). Driven by tests/emulator.rs.
#include "sparse_attn/arch.cuh"

struct SaSelftestMmaParams {
  const uint16_t* a;   // [16][16] A[m][k], 16-bit patterns
  const uint16_t* b;   // [16][8] B[k][n]; chain mode: [16][16] (two n8 tiles)
  const uint16_t* b2;  // chain mode: [16][8], the B of the second product
  const float* c;      // [16][8]
  float* d;            // [16][8] row-major result
  uint32_t* frags;     // [32][16] per lane: a regs 0-3, b regs 4-5, d bits 6-9, P regs 10-13
  int32_t k;           // 16 (m16n8k16) or 8 (m16n8k8)
  int32_t bf16;        // 0: f16 inputs, 1: bf16 inputs
  int32_t mode;        // SelftestMmaMode
  int32_t pad;
};
static_assert(sizeof(SaSelftestMmaParams) == 64, "mirrored in src/emu/selftest.rs");

enum SelftestMmaMode : int32_t {
  kMmaPlain = 0,        // d = a.b + c
  kMmaMissingLane = 1,  // lane 31 exits before the mma: must be reported
  kMmaChain = 2,        // C->A reuse: O = pack(A.B1) . B2 + C, P fragments from two D tiles
};

namespace {

constexpr int kFragWords = 16;

// A fragment of a row-major 16x16 tile: a_i at row g + 8*((i>>1)&1), col 2t + (i&1) + 8*(i>>2).
SA_DEVICE void load_a_frag(uint32_t (&a)[4], const uint16_t* A, int k, unsigned lane) {
  const unsigned g = lane >> 2, t = lane & 3;
  for (int r = 0; r < 4; ++r) a[r] = 0;
  for (unsigned i = 0; i < static_cast<unsigned>(k / 2); ++i) {
    const unsigned row = g + 8 * ((i >> 1) & 1), col = 2 * t + (i & 1) + 8 * (i >> 2);
    a[i >> 1] |= static_cast<uint32_t>(A[row * 16 + col]) << (16 * (i & 1));
  }
}

// B fragment of n8 tile starting at column n0 of a row-major [k][ldb] array:
// b_i at k = 2t + (i&1) + 8*(i>>1), n = n0 + g.
SA_DEVICE void load_b_frag(uint32_t (&b)[2], const uint16_t* B, int ldb, int n0, int k,
                           unsigned lane) {
  const unsigned g = lane >> 2, t = lane & 3;
  b[0] = 0;
  b[1] = 0;
  for (unsigned i = 0; i < static_cast<unsigned>(k / 4); ++i) {
    const unsigned kk = 2 * t + (i & 1) + 8 * (i >> 1);
    b[i >> 1] |= static_cast<uint32_t>(B[kk * ldb + n0 + g]) << (16 * (i & 1));
  }
}

template <typename T>
SA_DEVICE void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                   const float (&c)[4], int k) {
  if (k == 16) {
    sa::arch::mma_m16n8k16<T>(d, a, b, c);
  } else {
    sa::arch::mma_m16n8k8<T>(d, a, b, c);
  }
}

template <typename T>
SA_DEVICE void run(const SaSelftestMmaParams& p) {
  const unsigned lane = sa::arch::lane_id();
  const unsigned g = lane >> 2, t = lane & 3;
  uint32_t* out = p.frags + lane * kFragWords;
  uint32_t a[4], b[2];
  float c[4], d[4];
  load_a_frag(a, p.a, p.k, lane);
  for (int i = 0; i < 4; ++i) c[i] = p.c[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];

  if (p.mode == kMmaChain) {
    // S = A . B1 as two adjacent n8 tiles, then P (16-bit) reused as the A operand.
    const float zero[4] = {0.f, 0.f, 0.f, 0.f};
    float s0[4], s1[4];
    load_b_frag(b, p.b, 16, 0, 16, lane);
    mma<T>(s0, a, b, zero, 16);
    load_b_frag(b, p.b, 16, 8, 16, lane);
    mma<T>(s1, a, b, zero, 16);
    uint32_t pf[4];
    pf[0] = sa::arch::pack2<T>(s0[0], s0[1]);  // a0a1: row g,     k 2t
    pf[1] = sa::arch::pack2<T>(s0[2], s0[3]);  // a2a3: row g + 8, k 2t
    pf[2] = sa::arch::pack2<T>(s1[0], s1[1]);  // a4a5: row g,     k 2t + 8
    pf[3] = sa::arch::pack2<T>(s1[2], s1[3]);  // a6a7: row g + 8, k 2t + 8
    load_b_frag(b, p.b2, 8, 0, 16, lane);
    mma<T>(d, pf, b, c, 16);
    for (int i = 0; i < 4; ++i) out[10 + i] = pf[i];
  } else {
    load_b_frag(b, p.b, 8, 0, p.k, lane);
    if (p.mode == kMmaMissingLane && lane == 31) return;
    mma<T>(d, a, b, c, p.k);
  }
  for (int i = 0; i < 4; ++i) out[i] = a[i];
  out[4] = b[0];
  out[5] = b[1];
  for (int i = 0; i < 4; ++i) {
    out[6 + i] = sa::arch::float_bits(d[i]);
    p.d[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = d[i];
  }
}

}  // namespace

SA_KERNEL(sa_selftest_mma, SaSelftestMmaParams, 32) {
  if (params.bf16 != 0) {
    run<sa::bf16>(params);
  } else {
    run<sa::f16>(params);
  }
}
