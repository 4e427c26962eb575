// Warp-level tensor-core GEMMs of the forward pass, on swizzled shared tiles.
//
// Each warp owns MT m16 tiles of query rows (MT = 1 or 2). Fragment layouts follow PTX
// m16n8k16 (see arch/mma.cuh): per lane, S and O accumulators hold rows g and g + 8
// (g = lane / 4) of each m16 tile, columns 2t, 2t + 1 (t = lane % 4) of each n8 tile. Every
// K or V fragment read from shared memory feeds one MMA per m16 tile.
#pragma once

#include "sparse_attn/arch.cuh"
#include "sparse_attn/tile_io.cuh"

namespace sa {

// The swizzled offset of chunk 2 * step + half of `row` (swizzle_offset), split into a
// per-lane part and a per-step XOR: since 2 * step has a clear bit 0,
// (2 * step + half) ^ (row & 7) == (2 * step) ^ (half ^ (row & 7)), so the offset is
// lane_offset(row, half) ^ (step << 5), the XOR touching only bits below the row pitch. One
// LOP3 per ldmatrix instead of one register per step held across the mainloop: the
// registers that 32-row warp tiles need (head_dim 128 x 32 rows per warp: 104 spilled bytes
// instead of 168).
template <int D>
SA_HOST_DEVICE int lane_offset(int row, int half) {
  return row * (smem_pitch<D>() * 2) + ((half ^ (row & 7)) << 4);
}
template <int D>
SA_HOST_DEVICE int step_offset(int lane_off, int step) {
  // step < D / 16, so step << 5 < D * 2 <= the row pitch: the XOR stays inside the row.
  return lane_off ^ (step << 5);
}

// Q's A fragments of m16 tile `mt` and k16 step `kk` of this warp. Lane L addresses row
// L % 16, chunk 2 * kk + L / 16, so x4 yields {a0a1, a2a3, a4a5, a6a7}.
template <int D>
SA_DEVICE void load_q_frag(uint32_t (&a)[4], Smem sQ, int warp_row0, int mt, int kk, int lane) {
  const int lane_off = lane_offset<D>(warp_row0 + (lane & 15), lane >> 4);
  arch::ldmatrix_x4(a, sQ + (mt * 16 * smem_pitch<D>() * 2 + step_offset<D>(lane_off, kk)));
}

// All of this warp's Q fragments: [MT][D/16][4] registers, loaded once per block and reused
// for every kv tile (when FwdTraits::kQInRegs).
template <int D, int MT>
SA_DEVICE void load_q_frags(uint32_t (&qf)[MT][D / 16][4], Smem sQ, int warp_row0, int lane) {
  SA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    SA_UNROLL
    for (int kk = 0; kk < D / 16; ++kk) load_q_frag<D>(qf[mt][kk], sQ, warp_row0, mt, kk, lane);
  }
}

// S[MT x 16, BN] = Q . K^T for this warp. K is row-major [key, dim] in smem, i.e. the "col" B
// operand: non-transposed ldmatrix. One x4 covers two n8 tiles x one k16 step: matrices
// (keys 0-7, k 0-7), (keys 0-7, k 8-15), (keys 8-15, k 0-7), (keys 8-15, k 8-15), and feeds
// 2 * MT MMAs. Q comes from `qf` (kQInRegs) or is re-read from `sQ` at every k step.
// `qf` is uint32_t[MT][D / 16][4] with kQInRegs, else a placeholder that is never read.
template <typename T, int D, int BN, int MT, bool kQInRegs, typename QFrags>
SA_DEVICE void qk_gemm(float (&s)[MT][BN / 8][4], const QFrags& qf, Smem sQ, int warp_row0,
                       Smem sK, int lane) {
  SA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    SA_UNROLL
    for (int nt = 0; nt < BN / 8; ++nt) {
      SA_UNROLL
      for (int i = 0; i < 4; ++i) s[mt][nt][i] = 0.f;
    }
  }
  const int key_in_pair = (lane & 7) + ((lane >> 4) << 3);
  const int k_lane_off = lane_offset<D>(key_in_pair, (lane >> 3) & 1);
  SA_UNROLL
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[MT][4];
    SA_UNROLL
    for (int mt = 0; mt < MT; ++mt) {
      if constexpr (kQInRegs) {
        SA_UNROLL
        for (int r = 0; r < 4; ++r) a[mt][r] = qf[mt][kk][r];
      } else {
        load_q_frag<D>(a[mt], sQ, warp_row0, mt, kk, lane);
      }
    }
    SA_UNROLL
    for (int np = 0; np < BN / 16; ++np) {
      uint32_t b[4];
      arch::ldmatrix_x4(b, sK + (np * 16 * smem_pitch<D>() * 2 + step_offset<D>(k_lane_off, kk)));
      SA_UNROLL
      for (int mt = 0; mt < MT; ++mt) {
        arch::mma_m16n8k16<T>(s[mt][2 * np], a[mt], b, s[mt][2 * np]);
        arch::mma_m16n8k16<T>(s[mt][2 * np + 1], a[mt], b + 2, s[mt][2 * np + 1]);
      }
    }
  }
}

// Converts probabilities P (the S accumulator layout, f32) into A fragments for P.V, without
// leaving registers: the C layout of two adjacent n8 tiles is exactly the A layout of one
// k16 step. `kSwapA2A4Canary` deliberately swaps a2/a4 (a broken-layout canary that the
// emulator tests must catch); production instantiations never set it.
template <typename T, int BN, int MT, bool kSwapA2A4Canary = false>
SA_DEVICE void p_to_a_frags(uint32_t (&pf)[MT][BN / 16][4], const float (&p)[MT][BN / 8][4]) {
  SA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    SA_UNROLL
    for (int j = 0; j < BN / 16; ++j) {
      const float (&lo)[4] = p[mt][2 * j];
      const float (&hi)[4] = p[mt][2 * j + 1];
      pf[mt][j][0] = arch::pack2<T>(lo[0], lo[1]);  // a0a1: row g,     k 2t
      pf[mt][j][1] = arch::pack2<T>(lo[2], lo[3]);  // a2a3: row g + 8, k 2t
      pf[mt][j][2] = arch::pack2<T>(hi[0], hi[1]);  // a4a5: row g,     k 2t + 8
      pf[mt][j][3] = arch::pack2<T>(hi[2], hi[3]);  // a6a7: row g + 8, k 2t + 8
      if constexpr (kSwapA2A4Canary) {
        const uint32_t a2 = pf[mt][j][1] & 0xffffu, a4 = pf[mt][j][2] & 0xffffu;
        pf[mt][j][1] = (pf[mt][j][1] & 0xffff0000u) | a4;
        pf[mt][j][2] = (pf[mt][j][2] & 0xffff0000u) | a2;
      }
    }
  }
}

// O[MT x 16, D] += P . V for this warp. V is row-major [key, dim]: the B operand is K x N
// row-major, so ldmatrix .trans. One x4 covers one k16 step x two n8 tiles: matrices
// (keys 0-7, dims 0-7), (keys 8-15, dims 0-7), (keys 0-7, dims 8-15), (keys 8-15, dims 8-15),
// and feeds 2 * MT MMAs.
template <typename T, int D, int BN, int MT>
SA_DEVICE void pv_gemm(float (&o)[MT][D / 8][4], const uint32_t (&pf)[MT][BN / 16][4], Smem sV,
                       int lane) {
  const int key_in_step = (lane & 7) + (((lane >> 3) & 1) << 3);
  const int v_lane_off = lane_offset<D>(key_in_step, lane >> 4);
  SA_UNROLL
  for (int j = 0; j < BN / 16; ++j) {
    SA_UNROLL
    for (int np = 0; np < D / 16; ++np) {
      uint32_t b[4];
      arch::ldmatrix_x4_trans(b, sV + (j * 16 * smem_pitch<D>() * 2 + step_offset<D>(v_lane_off, np)));
      SA_UNROLL
      for (int mt = 0; mt < MT; ++mt) {
        arch::mma_m16n8k16<T>(o[mt][2 * np], pf[mt][j], b, o[mt][2 * np]);
        arch::mma_m16n8k16<T>(o[mt][2 * np + 1], pf[mt][j], b + 2, o[mt][2 * np + 1]);
      }
    }
  }
}

}  // namespace sa
