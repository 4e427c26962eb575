// Tensor-core matrix multiply-accumulate: mma.sync.aligned.m16n8k{16,8}.row.col.f32.
//
// Fragment layouts (per lane L, g = L >> 2, t = L % 4; PTX ISA "warp-level matrix fragments"):
//   A (16x16, row-major) a_i, i = 0..7: row g + 8*((i>>1)&1), col 2t + (i&1) + 8*(i>>2);
//     register j holds {a_2j (low half), a_2j+1 (high half)}.
//   B (16x8, "col")       b_i, i = 0..3: k 2t + (i&1) + 8*(i>>1), n g.
//   C/D (16x8, f32)       c_i, i = 0..3: row g + 8*(i>>1), col 2t + (i&1).
// All 32 lanes must execute the same mma (`.sync.aligned`); the emulator rendezvous them and
// reports a missing lane.
#pragma once

#include "sparse_attn/arch/numeric.cuh"

namespace sa {
namespace arch {

// Which tensor-core input type a storage type maps to.
template <typename T>
struct MmaInput;
template <>
struct MmaInput<f16> {
  static constexpr bool kIsBf16 = false;
};
template <>
struct MmaInput<bf16> {
  static constexpr bool kIsBf16 = true;
};

// d = a * b + c for one 16x8x16 tile. `d` may alias `c`.
template <typename T>
SA_DEVICE void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2],
                            const float c[4] SA_SITE_PARAM) {
#if defined(SA_GPU)
  if constexpr (MmaInput<T>::kIsBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
  }
#else
  ::sa::emu::mma(MmaInput<T>::kIsBf16 ? ::sa::emu::MmaType::BF16 : ::sa::emu::MmaType::F16, 16,
                 d, a, b, c, site);
#endif
}

// d = a * b + c for one 16x8x8 tile (A: 2 registers, B: 1 register; the k < 8 half of the
// m16n8k16 grid).
template <typename T>
SA_DEVICE void mma_m16n8k8(float d[4], const uint32_t a[2], const uint32_t b[1],
                           const float c[4] SA_SITE_PARAM) {
#if defined(SA_GPU)
  if constexpr (MmaInput<T>::kIsBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%7,%8,%9,%10};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(b[0]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%7,%8,%9,%10};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(b[0]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  }
#else
  ::sa::emu::mma(MmaInput<T>::kIsBf16 ? ::sa::emu::MmaType::BF16 : ::sa::emu::MmaType::F16, 8,
                 d, a, b, c, site);
#endif
}

}  // namespace arch
}  // namespace sa
