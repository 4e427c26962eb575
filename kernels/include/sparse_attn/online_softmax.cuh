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
// How far (log2 units) a row's max may grow before the running max and the output are
// rescaled (SoftmaxRows::update): probabilities stay below 2^8 = 256.
constexpr float kRescaleSlack = 8.f;

// The running state of ROWS query rows. The forward kernel's lanes hold two rows per m16
// tile (SoftmaxState below); the split-KV combine holds one row per warp, every lane a copy.
template <int ROWS>
struct SoftmaxRows {
  static constexpr int kRows = ROWS;
  float m[kRows];  // running max of each row (log2 units; -inf = nothing seen)
  float l[kRows];  // running sum of exp2(s - m) (in the forward kernel: this lane's columns)

  SA_HOST_DEVICE void init() {
    SA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      m[r] = kNegInf;
      l[r] = 0.f;
    }
  }

  // The state of rows whose keys are already summed up in a normalised output and its
  // natural-log LSE (a split-KV partial): m = lse * log2(e), l = 1; lse = -inf (no key seen)
  // gives the empty state.
  SA_HOST_DEVICE static SoftmaxRows from_lse(const float (&lse)[kRows]) {
    SoftmaxRows st;
    SA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const bool empty = lse[r] == kNegInf;
      st.m[r] = empty ? kNegInf : lse[r] * kLog2e;
      st.l[r] = empty ? 0.f : 1.f;
    }
    return st;
  }

  // Folds one tile of scores into the state. `s` ([MT][NT][4] accumulator layout of MT m16
  // tiles, masked entries -inf; row 2 * mt + h is row g + 8h of m16 tile mt) holds raw scores
  // and `mul` > 0 turns them into log2 units (scale * log2(e), folded into the exponent's
  // FFMA: exp2(s * mul - m)), or `s` is already in log2 units and `mul` is 1. Rewrites `s` in
  // place as unnormalised probabilities. Fragment layout only (kRows == 2 * MT).
  //
  // The running max moves only when some row of this lane grows by more than
  // kRescaleSlack (log2 units; FlashAttention-4's conditional rescaling): otherwise the stale
  // max stays the exponent base, probabilities stay below 2^kRescaleSlack (exact in f16 and
  // bf16 P fragments, no f32 overflow in O or l), and the output needs no rescaling -- the
  // steady state of long rows, where the max rarely moves. Returns whether it moved; then
  // `alpha` holds the factor by which each row's previous output accumulator must be
  // rescaled. The quad's four lanes see the same row maxima, so they decide alike.
  template <int MT, int NT>
  SA_DEVICE bool update(float (&s)[MT][NT][4], float mul, float (&alpha)[kRows]) {
    static_assert(kRows == 2 * MT, "the m16n8 accumulator layout gives each lane two rows per tile");
    float m_new[kRows];
    bool grow = false;
    SA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const int mt = r / 2, c = 2 * (r % 2);  // this row's m16 tile and accumulator columns
      float mx = kNegInf;
      SA_UNROLL
      for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][c], s[mt][nt][c + 1]));
      mx = fmaxf(mx, arch::shfl_xor(arch::kFullMask, mx, 1));
      mx = fmaxf(mx, arch::shfl_xor(arch::kFullMask, mx, 2));
      m_new[r] = fmaxf(m[r], mx * mul);
      // -inf - (-inf) is NaN, and NaN > x is false: a row that is still empty never grows.
      grow |= m_new[r] - m[r] > kRescaleSlack;
    }
    SA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const int mt = r / 2, c = 2 * (r % 2);
      if (grow) {
        // A row that has seen only masked keys keeps m = -inf; subtract 0 instead so that
        // exp2(-inf - (-inf)) never produces NaN (its probabilities are then exactly 0).
        const float base = m_new[r] == kNegInf ? 0.f : m_new[r];
        alpha[r] = arch::fast_exp2(m[r] - base);
        m[r] = m_new[r];
      }
      const float base = m[r] == kNegInf ? 0.f : m[r];
      float sum = 0.f;
      SA_UNROLL
      for (int nt = 0; nt < NT; ++nt) {
        s[mt][nt][c] = arch::fast_exp2(fmaf(s[mt][nt][c], mul, -base));
        s[mt][nt][c + 1] = arch::fast_exp2(fmaf(s[mt][nt][c + 1], mul, -base));
        sum += s[mt][nt][c] + s[mt][nt][c + 1];
      }
      l[r] = grow ? l[r] * alpha[r] + sum : l[r] + sum;
    }
    return grow;
  }

  // Combines this state with another over disjoint key sets (split-KV partials). Returns the
  // factors to rescale this and the other output accumulator by. Two empty rows stay empty
  // (both factors 0, never NaN).
  SA_HOST_DEVICE void merge(const SoftmaxRows& o, float (&self_scale)[kRows],
                            float (&other_scale)[kRows]) {
    SA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float mx = fmaxf(m[r], o.m[r]);
      const float base = mx == kNegInf ? 0.f : mx;
      self_scale[r] = arch::fast_exp2(m[r] - base);
      other_scale[r] = arch::fast_exp2(o.m[r] - base);
      l[r] = l[r] * self_scale[r] + o.l[r] * other_scale[r];
      m[r] = mx;
    }
  }

  // The factor by which a part's output enters the output of this state when this state
  // already holds the part (a completed merge): merge's `other_scale` against this max, 0 for
  // an empty part.
  SA_HOST_DEVICE void scales_of(const SoftmaxRows& part, float (&scale)[kRows]) const {
    SA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float base = m[r] == kNegInf ? 0.f : m[r];
      scale[r] = arch::fast_exp2(part.m[r] - base);
    }
  }

  // Merges the states of all 32 lanes (a butterfly of merges: every lane ends with the
  // warp's whole state). The split-KV combine: lane i holds the splits i, i + 32, ...
  SA_DEVICE void reduce_warp() {
    SA_UNROLL
    for (int offset = 16; offset > 0; offset >>= 1) {
      SoftmaxRows other;
      SA_UNROLL
      for (int r = 0; r < kRows; ++r) {
        other.m[r] = arch::shfl_xor(arch::kFullMask, m[r], offset);
        other.l[r] = arch::shfl_xor(arch::kFullMask, l[r], offset);
      }
      float self_scale[kRows], other_scale[kRows];
      merge(other, self_scale, other_scale);
    }
  }

  // Per row, the factor that normalises the output (0 for an empty row, so its output is
  // exactly 0) and the natural-log LSE (-inf for an empty row). `l` must be complete.
  SA_HOST_DEVICE void normalizers(float (&inv_l)[kRows], float (&lse)[kRows]) const {
    SA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const bool empty = !(l[r] > 0.f);
      inv_l[r] = empty ? 0.f : 1.f / l[r];
      lse[r] = empty ? kNegInf : (m[r] * kLn2 + logf(l[r]));
    }
  }

  // The one definition of learnable sink logits (gpt-oss; docs/patterns.md "Sink logits"):
  // each row's softmax denominator gains exp(sink) once, i.e. the row sees one more key with
  // logit `sink` (natural log, finite) and value 0. Folded in as a merge with that key's
  // state (m = sink * log2(e), l = 1), so a sink far above the row's max cannot overflow.
  // `l` must be complete (after the quad reduction), and the term must enter once per row:
  // split-KV partials leave it to the combine. `o_scale` receives the factor by which the
  // output accumulator must be rescaled (the base may move); an empty row gets 0, so its
  // output stays exactly 0 and its LSE becomes `sink`.
  SA_HOST_DEVICE void add_sinks(const float (&sink)[kRows], float (&o_scale)[kRows]) {
    float unused[kRows];  // the sink key's value is 0: nothing to rescale
    merge(from_lse(sink), o_scale, unused);
  }

  // normalizers() of rows whose denominators also hold their sink terms (add_sinks): inv_l
  // includes the accumulator's rescale factor.
  SA_HOST_DEVICE void normalizers(const float (&sink)[kRows], float (&inv_l)[kRows],
                                  float (&lse)[kRows]) {
    float o_scale[kRows];
    add_sinks(sink, o_scale);
    normalizers(inv_l, lse);
    SA_UNROLL
    for (int r = 0; r < kRows; ++r) inv_l[r] *= o_scale[r];
  }

  // Completes the row sums across the quad (the four lanes sharing a row in the fragment
  // layout).
  SA_DEVICE void reduce_quads() {
    SA_UNROLL
    for (int r = 0; r < kRows; ++r) {
      l[r] += arch::shfl_xor(arch::kFullMask, l[r], 1);
      l[r] += arch::shfl_xor(arch::kFullMask, l[r], 2);
    }
  }

  // Completes the row sums across the quad, then gives the normalizers.
  SA_DEVICE void finalize(float (&inv_l)[kRows], float (&lse)[kRows]) {
    reduce_quads();
    normalizers(inv_l, lse);
  }

  // finalize() with each row's sink logit in its denominator (add_sinks).
  SA_DEVICE void finalize(const float (&sink)[kRows], float (&inv_l)[kRows], float (&lse)[kRows]) {
    reduce_quads();
    normalizers(sink, inv_l, lse);
  }
};

// The forward kernel's per-lane state: rows g and g + 8 of each of the warp's MT m16 tiles.
template <int MT>
using SoftmaxState = SoftmaxRows<2 * MT>;

}  // namespace sa
