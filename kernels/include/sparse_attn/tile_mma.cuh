// Warp-level tensor-core GEMMs of the forward pass, on swizzled shared tiles.
//
// Each warp owns 16 query rows. Fragment layouts follow PTX m16n8k16 (see arch/mma.cuh):
// per lane, S and O accumulators hold rows g and g + 8 (g = lane / 4), columns 2t, 2t + 1
// (t = lane % 4) of each n8 tile.
#pragma once

#include "sparse_attn/arch.cuh"
#include "sparse_attn/tile_io.cuh"

namespace sa {

// Q A-fragments of this warp for every k16 step: [D/16][4] registers, loaded once per block
// and reused for every kv tile. Lane L addresses row L % 16, chunk 2*kk + L / 16, so x4 yields
// {a0a1, a2a3, a4a5, a6a7}.
template <int D>
SA_DEVICE void load_q_frags(uint32_t (&qf)[D / 16][4], Smem sQ, int warp, int lane) {
  const int row = warp * 16 + (lane & 15);
  SA_UNROLL
  for (int kk = 0; kk < D / 16; ++kk) {
    arch::ldmatrix_x4(qf[kk], sQ + swizzle_offset<D>(row, 2 * kk + (lane >> 4)));
  }
}

// S[16, BN] = Q[16, D] . K[BN, D]^T for this warp. K is row-major [key, dim] in smem, i.e.
// the "col" B operand: non-transposed ldmatrix. One x4 covers two n8 tiles x one k16 step:
// matrices (keys 0-7, k 0-7), (keys 0-7, k 8-15), (keys 8-15, k 0-7), (keys 8-15, k 8-15).
template <typename T, int D, int BN>
SA_DEVICE void qk_gemm(float (&s)[BN / 8][4], const uint32_t (&qf)[D / 16][4], Smem sK,
                       int lane) {
  SA_UNROLL
  for (int nt = 0; nt < BN / 8; ++nt) {
    SA_UNROLL
    for (int i = 0; i < 4; ++i) s[nt][i] = 0.f;
  }
  const int key_in_pair = (lane & 7) + ((lane >> 4) << 3);
  const int k_half = (lane >> 3) & 1;
  SA_UNROLL
  for (int kk = 0; kk < D / 16; ++kk) {
    SA_UNROLL
    for (int np = 0; np < BN / 16; ++np) {
      uint32_t b[4];
      arch::ldmatrix_x4(b, sK + swizzle_offset<D>(np * 16 + key_in_pair, 2 * kk + k_half));
      arch::mma_m16n8k16<T>(s[2 * np], qf[kk], b, s[2 * np]);
      arch::mma_m16n8k16<T>(s[2 * np + 1], qf[kk], b + 2, s[2 * np + 1]);
    }
  }
}

// Converts probabilities P (the S accumulator layout, f32) into A fragments for P.V, without
// leaving registers: the C layout of two adjacent n8 tiles is exactly the A layout of one
// k16 step. `kSwapA2A4Canary` deliberately swaps a2/a4 (a broken-layout canary that the
// emulator tests must catch); production instantiations never set it.
template <typename T, int BN, bool kSwapA2A4Canary = false>
SA_DEVICE void p_to_a_frags(uint32_t (&pf)[BN / 16][4], const float (&p)[BN / 8][4]) {
  SA_UNROLL
  for (int j = 0; j < BN / 16; ++j) {
    pf[j][0] = arch::pack2<T>(p[2 * j][0], p[2 * j][1]);          // a0a1: row g,     k 2t
    pf[j][1] = arch::pack2<T>(p[2 * j][2], p[2 * j][3]);          // a2a3: row g + 8, k 2t
    pf[j][2] = arch::pack2<T>(p[2 * j + 1][0], p[2 * j + 1][1]);  // a4a5: row g,     k 2t + 8
    pf[j][3] = arch::pack2<T>(p[2 * j + 1][2], p[2 * j + 1][3]);  // a6a7: row g + 8, k 2t + 8
    if constexpr (kSwapA2A4Canary) {
      const uint32_t a2 = pf[j][1] & 0xffffu, a4 = pf[j][2] & 0xffffu;
      pf[j][1] = (pf[j][1] & 0xffff0000u) | a4;
      pf[j][2] = (pf[j][2] & 0xffff0000u) | a2;
    }
  }
}

// O[16, D] += P[16, BN] . V[BN, D] for this warp. V is row-major [key, dim]: the B operand
// is K x N row-major, so ldmatrix .trans. One x4 covers one k16 step x two n8 tiles:
// matrices (keys 0-7, dims 0-7), (keys 8-15, dims 0-7), (keys 0-7, dims 8-15),
// (keys 8-15, dims 8-15).
template <typename T, int D, int BN>
SA_DEVICE void pv_gemm(float (&o)[D / 8][4], const uint32_t (&pf)[BN / 16][4], Smem sV,
                       int lane) {
  const int key_in_step = (lane & 7) + (((lane >> 3) & 1) << 3);
  const int d_half = lane >> 4;
  SA_UNROLL
  for (int j = 0; j < BN / 16; ++j) {
    SA_UNROLL
    for (int np = 0; np < D / 16; ++np) {
      uint32_t b[4];
      arch::ldmatrix_x4_trans(b, sV + swizzle_offset<D>(j * 16 + key_in_step, 2 * np + d_half));
      arch::mma_m16n8k16<T>(o[2 * np], pf[j], b, o[2 * np]);
      arch::mma_m16n8k16<T>(o[2 * np + 1], pf[j], b + 2, o[2 * np + 1]);
    }
  }
}

}  // namespace sa
