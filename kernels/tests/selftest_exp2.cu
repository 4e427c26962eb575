// Emulator self-test: sa::arch::fast_exp2 (ex2.approx.ftz.f32) under the launch's numerics
// mode (exact or pessimistic, docs/emulator.md §7). Thread i computes out[i] = 2^in[i].
#include "sparse_attn/arch.cuh"

struct SaSelftestExp2Params {
  const float* in;  // [n]
  float* out;       // [n]
  int32_t n;
  int32_t pad;
};
static_assert(sizeof(SaSelftestExp2Params) == 24, "mirrored in tests/emulator_checks.rs");

SA_KERNEL(sa_selftest_exp2, SaSelftestExp2Params, 128) {
  const SaSelftestExp2Params& p = params;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < p.n) p.out[i] = sa::arch::fast_exp2(p.in[i]);
}
