// The online-softmax state as a value type (FlashAttention's running max / running sum).
//
// Scores arrive in log2 units (scale * log2(e) already folded in), so every exponential is
// one exp2. Each lane holds two rows of its warp's 16 (g and g + 8); the four lanes of a quad
// (same g) share a row, so row reductions are two xor-shuffles.
#pragma once

#include "sparse_attn/arch.cuh"

namespace sa {

constexpr float kLog2e = 1.4426950408889634f;  // log2(e): exp(x) = exp2(x * log2(e))
constexpr float kLn2 = 0.6931471805599453f;    // ln(2):   ln(x) = log2(x) * ln(2)
constexpr float kNegInf = -__builtin_huge_valf();

struct SoftmaxState {
  static constexpr int kRows = 2;
  float m[kRows];  // running max of this lane's rows (log2 units; -inf = nothing seen)
  float l[kRows];  // running sum of exp2(s - m), partial over this lane's columns

  SA_DEVICE void init() {
    SA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      m[r] = kNegInf;
      l[r] = 0.f;
    }
  }

  // Folds one tile of scores `s` ([NT][4] accumulator layout, masked entries = -inf) into the
  // state. Rewrites `s` in place as unnormalised probabilities exp2(s - m_new) and returns in
  // `alpha` the factor by which each row's previous output accumulator must be rescaled.
  template <int NT>
  SA_DEVICE void update(float (&s)[NT][4], float (&alpha)[kRows]) {
    SA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float mx = m[r];
      SA_UNROLL
      for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx = fmaxf(mx, arch::shfl_xor(arch::kFullMask, mx, 1));
      mx = fmaxf(mx, arch::shfl_xor(arch::kFullMask, mx, 2));
      // A row that has seen only masked keys keeps m = -inf; subtract 0 instead so that
      // exp2(-inf - (-inf)) never produces NaN (its probabilities are then exactly 0).
      const float base = mx == kNegInf ? 0.f : mx;
      alpha[r] = arch::fast_exp2(m[r] - base);
      m[r] = mx;
      float sum = 0.f;
      SA_UNROLL
      for (int nt = 0; nt < NT; ++nt) {
        s[nt][2 * r] = arch::fast_exp2(s[nt][2 * r] - base);
        s[nt][2 * r + 1] = arch::fast_exp2(s[nt][2 * r + 1] - base);
        sum += s[nt][2 * r] + s[nt][2 * r + 1];
      }
      l[r] = l[r] * alpha[r] + sum;
    }
  }

  // Combines this state with another over disjoint key sets (split-KV partials). Returns the
  // factors to rescale this and the other partial output by.
  SA_HOST_DEVICE void merge(const SoftmaxState& o, float (&self_scale)[kRows],
                            float (&other_scale)[kRows]) {
    for (int r = 0; r < kRows; ++r) {
      const float mx = fmaxf(m[r], o.m[r]);
      const float base = mx == kNegInf ? 0.f : mx;
      self_scale[r] = arch::fast_exp2(m[r] - base);
      other_scale[r] = arch::fast_exp2(o.m[r] - base);
      l[r] = l[r] * self_scale[r] + o.l[r] * other_scale[r];
      m[r] = mx;
    }
  }

  // Completes the row sums across the quad and returns, per row, the factor that normalises
  // the output (0 for an empty row, so its output is exactly 0) and the natural-log LSE
  // (-inf for an empty row).
  SA_DEVICE void finalize(float (&inv_l)[kRows], float (&lse)[kRows]) {
    SA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float sum = l[r];
      sum += arch::shfl_xor(arch::kFullMask, sum, 1);
      sum += arch::shfl_xor(arch::kFullMask, sum, 2);
      const bool empty = !(sum > 0.f);
      inv_l[r] = empty ? 0.f : 1.f / sum;
      lse[r] = empty ? kNegInf : (m[r] * kLn2 + logf(sum));
    }
  }
};

}  // namespace sa
