// The emulated arithmetic of tensor cores and ex2.approx: exact, or pessimistic (see
// sa_emu_numerics in api.h). Real hardware truncates mma partial sums in an unspecified order
// and computes ex2.approx.ftz with up to 2 ulp of error, flushing subnormals; the pessimistic
// mode makes the emulator at least that bad, so kernels whose tolerances hold under it do not
// depend on the emulator's exact arithmetic.
#include <math.h>
#include <string.h>

#include "internal.h"

namespace sa {
namespace emu {
namespace detail {

float mma_add(float a, float b, bool pessimistic) {
  if (!pessimistic) return a + b;
  // The sum of two floats rounded to nearest in double, then toward zero to float.
  const double exact = static_cast<double>(a) + static_cast<double>(b);
  float r = static_cast<float>(exact);
  if (isfinite(r) && fabs(static_cast<double>(r)) > fabs(exact)) r = nextafterf(r, 0.f);
  return r;
}

}  // namespace detail

float ex2_approx(float x) {
  using namespace detail;
  const Fiber* f = current_fiber("ex2.approx");
  if (f->worker->launch->cfg.numerics != SA_EMU_NUMERICS_PESSIMISTIC) return exp2f(x);
  if (fpclassify(x) == FP_SUBNORMAL) x = copysignf(0.f, x);  // .ftz on the input
  float y = exp2f(x);
  if (fpclassify(y) == FP_SUBNORMAL) return 0.f;  // .ftz on the result
  if (!isfinite(y) || y == 0.f) return y;
  // Off by -2 .. +2 ulp, chosen by a hash of the input bits: deterministic, so every schedule
  // of a launch sees the same values.
  uint32_t u;
  memcpy(&u, &x, sizeof(u));
  u ^= u >> 16;
  u *= 0x7feb352du;
  u ^= u >> 15;
  const int ulps = static_cast<int>(u % 5u) - 2;
  for (int i = 0; i < (ulps < 0 ? -ulps : ulps); ++i) {
    y = nextafterf(y, ulps < 0 ? 0.f : INFINITY);
  }
  if (!isfinite(y)) return exp2f(x);
  return fpclassify(y) == FP_SUBNORMAL ? 0.f : y;
}

}  // namespace emu
}  // namespace sa
