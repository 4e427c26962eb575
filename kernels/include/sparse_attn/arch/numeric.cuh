// 16-bit float storage types, round-to-nearest-even conversions, pair packing, fast exp2.
//
// The kernels never include CUDA's cuda_fp16.h / cuda_bf16.h: those headers do not exist for
// the host compiler. `sa::f16` and `sa::bf16` are plain 16-bit storage types; arithmetic is
// done in f32 after `to_float`, as tensor-core kernels do anyway.
#pragma once

#include "sparse_attn/arch/platform.cuh"

#if !defined(SA_DEVICE_PASS)
#include <math.h>
#include <string.h>
#endif

namespace sa {

struct f16 {
  uint16_t bits;
};
struct bf16 {
  uint16_t bits;
};

namespace arch {

SA_HOST_DEVICE uint32_t float_bits(float x) {
#if defined(SA_DEVICE_PASS)
  return __float_as_uint(x);
#else
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
#endif
}

SA_HOST_DEVICE float bits_float(uint32_t u) {
#if defined(SA_DEVICE_PASS)
  return __uint_as_float(u);
#else
  float x;
  memcpy(&x, &u, 4);
  return x;
#endif
}

#if !defined(SA_DEVICE_PASS)
// Software round-to-nearest-even f32 -> f16 (IEEE binary16), matching `cvt.rn.f16.f32`:
// overflow goes to infinity, subnormals are produced (not flushed), NaN becomes 0x7fff.
inline uint16_t f32_to_f16_bits_rne(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7fffu;                        // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (a >= 0x38800000u) {                                     // normal f16 range
    const uint32_t r = a - 0x38000000u;                       // rebias exponent 127 -> 15
    uint32_t h = r >> 13;
    const uint32_t rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;   // carries into the exponent
    return static_cast<uint16_t>(sign | h);
  }
  if (a <= 0x33000000u) return static_cast<uint16_t>(sign);   // <= 2^-25 rounds to zero
  const uint32_t e = a >> 23;                                 // 102..112
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;                            // 14..24
  uint32_t h = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

inline float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    // Subnormal or zero: mant * 2^-24, exact in f32.
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Software round-to-nearest-even f32 -> bf16, matching `cvt.rn.bf16.f32` (NaN -> 0x7fff).
inline uint16_t f32_to_bf16_bits_rne(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#endif

template <typename T>
SA_HOST_DEVICE T from_float(float x);

template <>
SA_HOST_DEVICE f16 from_float<f16>(float x) {
#if defined(SA_DEVICE_PASS)
  uint16_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
  return f16{h};
#else
  return f16{f32_to_f16_bits_rne(x)};
#endif
}

template <>
SA_HOST_DEVICE bf16 from_float<bf16>(float x) {
#if defined(SA_DEVICE_PASS)
  uint16_t h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
  return bf16{h};
#else
  return bf16{f32_to_bf16_bits_rne(x)};
#endif
}

SA_HOST_DEVICE float to_float(f16 x) {
#if defined(SA_DEVICE_PASS)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
#else
  return f16_bits_to_f32(x.bits);
#endif
}

SA_HOST_DEVICE float to_float(bf16 x) { return bits_float(static_cast<uint32_t>(x.bits) << 16); }

// Packs two floats into one 32-bit register of two 16-bit values, `lo` in bits 0..15 and
// `hi` in bits 16..31, rounding to nearest even. On the GPU this is
// `cvt.rn.{f16x2,bf16x2}.f32 d, hi, lo` (PTX puts its *first* source in the upper half).
template <typename T>
SA_HOST_DEVICE uint32_t pack2(float lo, float hi);

template <>
SA_HOST_DEVICE uint32_t pack2<f16>(float lo, float hi) {
#if defined(SA_DEVICE_PASS)
  uint32_t d;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  return d;
#else
  return static_cast<uint32_t>(f32_to_f16_bits_rne(lo)) |
         (static_cast<uint32_t>(f32_to_f16_bits_rne(hi)) << 16);
#endif
}

template <>
SA_HOST_DEVICE uint32_t pack2<bf16>(float lo, float hi) {
#if defined(SA_DEVICE_PASS)
  uint32_t d;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  return d;
#else
  return static_cast<uint32_t>(f32_to_bf16_bits_rne(lo)) |
         (static_cast<uint32_t>(f32_to_bf16_bits_rne(hi)) << 16);
#endif
}

// Low / high element of a packed pair, widened to f32.
template <typename T>
SA_HOST_DEVICE float unpack_lo(uint32_t r) {
  return to_float(T{static_cast<uint16_t>(r & 0xffffu)});
}
template <typename T>
SA_HOST_DEVICE float unpack_hi(uint32_t r) {
  return to_float(T{static_cast<uint16_t>(r >> 16)});
}

// a * b as a 64-bit product of two 32-bit factors (`mul.wide.s32`: one IMAD.WIDE where the
// compiler would otherwise multiply in 64 bits).
SA_HOST_DEVICE int64_t mul_wide(int a, int b) {
#if defined(SA_DEVICE_PASS)
  int64_t d;
  asm("mul.wide.s32 %0, %1, %2;" : "=l"(d) : "r"(a), "r"(b));
  return d;
#else
  return static_cast<int64_t>(a) * b;
#endif
}

// a << n with the shift clamped as PTX's shl.b32 does (n >= 32: 0), which a C++ shift by 32
// or more is not.
SA_HOST_DEVICE uint32_t shl_clamped(uint32_t a, uint32_t n) {
#if defined(SA_DEVICE_PASS)
  uint32_t d;
  asm("shl.b32 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(n));
  return d;
#else
  return n >= 32 ? 0u : a << n;
#endif
}

// 2^x. On the GPU `ex2.approx.ftz.f32` (max 2 ulp error, subnormal inputs and results
// flushed to zero); in the emulator the exact value, or in its pessimistic numerics mode a
// flushed value perturbed by up to 2 ulp; in nvcc's host pass the libm value.
// ex2.approx(-inf) = +0 everywhere.
SA_HOST_DEVICE float fast_exp2(float x) {
#if defined(SA_DEVICE_PASS)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#elif defined(SA_EMULATED)
  return ::sa::emu::ex2_approx(x);
#else
  return exp2f(x);
#endif
}

}  // namespace arch
}  // namespace sa
