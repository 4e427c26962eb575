// Emulator self-test: f32 -> f16 / bf16 round-to-nearest-even, pair packing and widening
// (numeric.cuh; docs/emulator.md §1 "Packing"). Thread i converts element i.
#include "sparse_attn/arch.cuh"

struct SaSelftestConvertParams {
  const float* in;        // [n]
  const uint16_t* bits16; // [n] 16-bit patterns to widen
  uint16_t* f16;          // [n] from_float<f16>(in[i]).bits
  uint16_t* bf16;         // [n] from_float<bf16>(in[i]).bits
  uint32_t* packed_f16;   // [n] pack2<f16>(lo = in[i], hi = in[(i + 1) % n])
  uint32_t* packed_bf16;  // [n] pack2<bf16>(likewise)
  float* widened_f16;     // [n] to_float(f16{bits16[i]})
  float* widened_bf16;    // [n] to_float(bf16{bits16[i]})
  int32_t n;
  int32_t pad;
};
static_assert(sizeof(SaSelftestConvertParams) == 72, "mirrored in src/emu/selftest.rs");

SA_KERNEL(sa_selftest_convert, SaSelftestConvertParams, 64) {
  const SaSelftestConvertParams& p = params;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  const float lo = p.in[i], hi = p.in[(i + 1) % p.n];
  p.f16[i] = sa::arch::from_float<sa::f16>(lo).bits;
  p.bf16[i] = sa::arch::from_float<sa::bf16>(lo).bits;
  p.packed_f16[i] = sa::arch::pack2<sa::f16>(lo, hi);
  p.packed_bf16[i] = sa::arch::pack2<sa::bf16>(lo, hi);
  p.widened_f16[i] = sa::arch::to_float(sa::f16{p.bits16[i]});
  p.widened_bf16[i] = sa::arch::to_float(sa::bf16{p.bits16[i]});
}
