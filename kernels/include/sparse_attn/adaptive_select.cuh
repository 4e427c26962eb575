// Adaptive block selection (docs/adaptive.md "Choice"; SaAdaptSelectParams in params.h): one
// block of SA_SELECT_THREADS threads turns the scores of one (group g, unit u, sequence b)
// into the bits of S(u, g) = F u choose(C \ F), exactly as the f64 reference of
// src/adaptive/select.rs does for the same f32 scores (top_p: see "top_p" below).
//
// The total order. Every candidate J gets a 64-bit key
//     key(J) = score_key(s_J) << jbits | J,      jbits = bits of the largest candidate index,
// where score_key is an order-preserving map of f32 onto u32 (-0.0 == +0.0, NaN = 0, below
// -inf). Keys are distinct and "J ranks before J'" iff key(J) > key(J'): score descending,
// the larger J first on exact ties. A rule's choice is therefore "the n rest blocks with the
// largest keys", i.e. key >= X for the n-th largest key X, and the result depends on the order
// alone.
//
// Finding X: radix select with one-bit digits, most significant first. Starting from x = 0,
// each of the 32 + jbits passes tries x | bit and keeps it when the rest blocks with key >= it
// still weigh at least `need` (a count, or a fixed-point mass for top_p); each pass ends in one
// block reduction. No sort and no histogram atomics (shared memory is reached only through
// lds/sts here). Candidates of any number (8192 at 128K keys and B = 16) are spread over the
// threads; each thread keeps the list of its own blocks still undecided: once x's bits above
// the current one are fixed, a block whose key differs from x there is above every later
// threshold (its weight joins a per-thread constant) or below all of them (dropped). Random
// scores leave few blocks undecided after the sign and exponent bits, so a group costs about
// |C| / SA_SELECT_THREADS * (a dozen) key tests per thread instead of |C| / ... * (32 + jbits).
//
// The rules:
// - top_k: n = min(k, |C \ F|).
// - top_rel: t = ln(alpha) + max_C s in f64, as the reference; s_J >= t holds for an f32 s_J
//   iff s_J >= the smallest f32 >= t (ceil_to_float), so the comparison is exact in f32.
//   n = clamp(|{J in C \ F : s_J >= t}|, min_k, max_k), at most |C \ F|.
// - top_p: masses e_J = exp(s_J - max_C s) in f32 (0 for NaN; with max +inf, 1 for the +inf
//   blocks and 0 for the rest), in fixed point E_J = floor(e_J * 2^31) (u32), summed in u64
//   (exact and independent of the order). The crossing block is the rest block with the
//   largest key x such that E(F) + E(rest blocks with key >= x) >= ceil(p * E(C)); n is the
//   number of rest blocks with key >= x (0 when E(F) already reaches the target, |C \ F| when
//   nothing does), then clamped. Where this can differ from the reference: the reference sums
//   f64 masses and compares with p; here each mass errs by at most ~2^-31 of the largest
//   (truncation) plus f32 rounding of exp (a few ulp, relative), so the cumulative mass at any
//   position differs from the reference's by about |C| * 2^-31 + 1e-6 relative, far inside
//   the contract's margin (1e-4 of p in cumulative position). Only a crossing whose
//   cumulative mass lies that close to p can be decided differently; in particular at p = 1
//   the device stops after the last block of nonzero fixed-point mass, where the f64
//   reference may go on through blocks lighter than 2^-31 of the largest (or, by rounding,
//   keep every candidate).
// - share kv_group over per-query-head scores: ln sum exp over the kv head's heads in f32
//   (mass-like scores) or their maximum (minmax); the reference combines in f64, so a
//   combined score may differ in its last f32 bits and near-ties can order differently
//   (the margin rule of docs/adaptive.md covers them). Scores per kv head are used as given.
#pragma once

#include "sparse_attn/arch.cuh"
#include "sparse_attn/params.h"

namespace sa {

constexpr int kSelectThreads = SA_SELECT_THREADS;
constexpr int kSelectWarps = kSelectThreads / 32;
constexpr int kSelectScratch = SA_SELECT_SCRATCH_BYTES;
static_assert(kSelectThreads % 32 == 0, "whole warps");
static_assert(kSelectScratch >= 2 * kSelectWarps * 16, "two phases of per-warp pairs");

// The deliberate bugs of the canary kernels (kernels/tests/adaptive_select_canary.cu), each of
// which a test must catch; production kernels use None.
enum class SelectCanary {
  None,
  // Candidates J * B < max_p instead of J * B <= max_p.
  StrictCandidates,
  // keep_local forces Jmax - keep_local too (one block more than asked).
  LocalOffByOne,
  // top_p keeps the blocks before the crossing block, not the crossing block itself.
  DropCrossing,
};

// ---- index math (host and device) -----------------------------------------------------------

// floor(a / b) for b > 0 (positions are negative when q_len > kv_len).
SA_HOST_DEVICE int64_t select_floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// Groups of a sequence with q_len rows over kv_len keys (group_of in src/adaptive/select.rs).
SA_HOST_DEVICE int64_t select_num_groups(int32_t grouping, int64_t q_block, int64_t q_len,
                                         int64_t kv_len) {
  if (q_len <= 0) return 0;
  if (grouping == SA_SELECT_DECODE) return q_len;
  const int64_t p0 = kv_len - q_len, p_last = kv_len - 1;
  return select_floor_div(p_last, q_block) - select_floor_div(p0, q_block) + 1;
}

// The position of the last row of group g (g < select_num_groups).
SA_HOST_DEVICE int64_t select_max_pos(int32_t grouping, int64_t q_block, int64_t q_len,
                                      int64_t kv_len, int64_t g) {
  const int64_t p0 = kv_len - q_len, p_last = kv_len - 1;
  if (grouping == SA_SELECT_DECODE) return p0 + g;
  const int64_t end = (select_floor_div(p0, q_block) + g + 1) * q_block - 1;
  return end < p_last ? end : p_last;
}

// |C| of a group whose last row sits at max_p: C = {J : J * B <= max_p, J * B < kv_len}.
template <SelectCanary C>
SA_HOST_DEVICE int64_t select_num_candidates(int64_t max_p, int64_t kv_len, int64_t block) {
  if (max_p < 0 || kv_len <= 0) return 0;
  int64_t by_pos = max_p / block + 1;
  if (C == SelectCanary::StrictCandidates) by_pos = (max_p + block - 1) / block;
  const int64_t by_keys = (kv_len + block - 1) / block;
  return by_pos < by_keys ? by_pos : by_keys;
}

// J in F: J < keep_sinks, or Jmax - keep_local < J <= Jmax (J a candidate).
template <SelectCanary C>
SA_HOST_DEVICE bool select_forced(int64_t j, int64_t j_max, int64_t keep_sinks,
                                  int64_t keep_local) {
  const int64_t lo = C == SelectCanary::LocalOffByOne ? j_max - keep_local - 1 : j_max - keep_local;
  return j < keep_sinks || (j > lo && j <= j_max);
}

// The order-preserving key of a score: larger scores get larger keys, -0.0 and +0.0 the same
// key, NaN the key 0, below -inf's 0x007fffff (no float maps to 0: ~bits = 0 is a NaN).
SA_HOST_DEVICE uint32_t score_key(float s) {
  if (s != s) return 0u;
  if (s == 0.f) s = 0.f;
  const uint32_t u = arch::float_bits(s);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The score of a key (key 0, NaN, reads as -inf: "no score").
SA_HOST_DEVICE float key_score(uint32_t k) {
  if (k == 0u) return -__builtin_huge_valf();
  return arch::bits_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The smallest f32 >= t (t not NaN): for an f32 s, s >= t iff s >= ceil_to_float(t).
SA_HOST_DEVICE float ceil_to_float(double t) {
  const float f = static_cast<float>(t);
  if (!(static_cast<double>(f) < t)) return f;
  if (f == 0.f) return arch::bits_float(1u);  // the smallest positive subnormal
  const uint32_t u = arch::float_bits(f);
  return arch::bits_float(f > 0.f ? u + 1u : u - 1u);
}

// ---- block reductions -----------------------------------------------------------------------

// Sums and maxima over the block's threads. Two phases of scratch alternate, so one barrier
// per reduction suffices: a thread writes phase i again only after passing reduction i + 1's
// barrier, which every thread reaches after reading phase i.
class SelectReduce {
 public:
  SA_DEVICE explicit SelectReduce(Smem scratch) : scratch_(scratch), phase_(0) {}

  // (a, b) <- their sums over the block.
  SA_DEVICE void sum2(uint64_t& a, uint64_t& b) {
    SA_UNROLL
    for (int o = 16; o > 0; o >>= 1) {
      a += arch::shfl_xor(arch::kFullMask, a, o);
      b += arch::shfl_xor(arch::kFullMask, b, o);
    }
    const Smem buf = scratch_ + phase_ * (kSelectWarps * 16);
    phase_ ^= 1;
    const int warp = threadIdx.x / 32;
    if (arch::lane_id() == 0) {
      arch::sts<uint64_t>(buf + warp * 16, a);
      arch::sts<uint64_t>(buf + warp * 16 + 8, b);
    }
    __syncthreads();
    a = 0;
    b = 0;
    SA_UNROLL
    for (int w = 0; w < kSelectWarps; ++w) {
      a += arch::lds<uint64_t>(buf + w * 16);
      b += arch::lds<uint64_t>(buf + w * 16 + 8);
    }
  }

  // The maximum of v over the block.
  SA_DEVICE uint32_t max(uint32_t v) {
    SA_UNROLL
    for (int o = 16; o > 0; o >>= 1) {
      const uint32_t other = arch::shfl_xor(arch::kFullMask, v, o);
      v = other > v ? other : v;
    }
    const Smem buf = scratch_ + phase_ * (kSelectWarps * 16);
    phase_ ^= 1;
    const int warp = threadIdx.x / 32;
    if (arch::lane_id() == 0) arch::sts<uint32_t>(buf + warp * 16, v);
    __syncthreads();
    v = 0;
    SA_UNROLL
    for (int w = 0; w < kSelectWarps; ++w) {
      const uint32_t x = arch::lds<uint32_t>(buf + w * 16);
      v = x > v ? x : v;
    }
    return v;
  }

 private:
  Smem scratch_;
  int phase_;
};

// ---- the selection of one (g, u, b) -----------------------------------------------------------

// What every pass over the candidates of one group needs.
struct SelectGroupView {
  Smem keys;         // u32 score keys [num_cand]
  Smem list;         // u32 block indices: each thread's undecided blocks, in its own slots
  Smem mass;         // u32 fixed-point masses [num_cand] (top_p only)
  int64_t num_cand;  // |C|
  int64_t j_max;     // floor(max_p / B)
  int64_t keep_sinks, keep_local;
  int jbits;         // bits of the largest candidate index

  SA_DEVICE uint64_t key(int64_t j) const {
    return (static_cast<uint64_t>(arch::lds<uint32_t>(keys + 4 * j)) << jbits) |
           static_cast<uint64_t>(j);
  }
};

// The unit's score of block j (see SaSelectCombine).
SA_DEVICE float select_load_score(const SaAdaptSelectParams& p, const float* row, int u,
                                  int64_t j) {
  if (p.combine == SA_SELECT_COMBINE_NONE) return row[u * p.score_head_stride + j];
  const int heads = p.num_heads / p.num_kv_heads;
  const float* at = row + int64_t(u) * heads * p.score_head_stride + j;
  float m = -__builtin_huge_valf();
  for (int i = 0; i < heads; ++i) m = fmaxf(m, at[i * p.score_head_stride]);
  if (p.combine == SA_SELECT_COMBINE_MAX) return m;
  if (m == __builtin_huge_valf() || m == -__builtin_huge_valf()) return m;
  float sum = 0.f;
  for (int i = 0; i < heads; ++i) sum += expf(at[i * p.score_head_stride] - m);
  return m + logf(sum);
}

// Radix select (see the header comment): the largest x such that the rest blocks with
// key >= x weigh at least `need` (> 0, and at most their total weight), each weighing 1
// (Mass false) or its fixed-point mass; `count` receives how many rest blocks have key >= x.
//
// Thread t's undecided blocks sit in list slots t, t + T, t + 2T, ... (T threads): the i-th of
// them came from block t + T * i' with i' >= i, so the slots stay below |C| and only thread t
// touches them (no barrier needed between its reads and rewrites).
template <SelectCanary C, bool Mass>
SA_DEVICE uint64_t select_descend(const SelectGroupView& v, SelectReduce& red, uint64_t need,
                                  int64_t n_rest, int64_t& count) {
  const int64_t t0 = threadIdx.x;
  int64_t m = 0;
  for (int64_t j = t0; j < v.num_cand; j += kSelectThreads) {
    if (select_forced<C>(j, v.j_max, v.keep_sinks, v.keep_local)) continue;
    arch::sts<uint32_t>(v.list + 4 * (t0 + kSelectThreads * m), static_cast<uint32_t>(j));
    ++m;
  }
  // Weight and count of this thread's blocks already known to lie above every later try.
  uint64_t above_w = 0, above_c = 0;
  uint64_t x = 0;
  count = n_rest;
  SA_NO_UNROLL
  for (int bit = 31 + v.jbits; bit >= 0; --bit) {
    const uint64_t t = x | (uint64_t(1) << bit);
    const uint64_t x_hi = x >> (bit + 1);  // x's bits above `bit` (fixed from here on)
    uint64_t w = 0, c = 0;
    int64_t kept = 0;
    for (int64_t i = 0; i < m; ++i) {
      const uint32_t j = arch::lds<uint32_t>(v.list + 4 * (t0 + kSelectThreads * i));
      const uint64_t key = v.key(j);
      const uint64_t hi = key >> (bit + 1);
      if (hi < x_hi) continue;  // below every try from here on
      const uint64_t wj = Mass ? arch::lds<uint32_t>(v.mass + 4 * int64_t(j)) : 1u;
      if (hi > x_hi) {  // above every try from here on
        above_w += wj;
        ++above_c;
        continue;
      }
      arch::sts<uint32_t>(v.list + 4 * (t0 + kSelectThreads * kept), j);
      ++kept;
      if (key >= t) {
        w += wj;
        ++c;
      }
    }
    m = kept;
    w += above_w;
    c += above_c;
    red.sum2(w, c);
    if (w >= need) {
      x = t;
      count = static_cast<int64_t>(c);
    }
  }
  return x;
}

template <SelectCanary C = SelectCanary::None>
SA_DEVICE void adaptive_select(const SaAdaptSelectParams& p) {
  const int g = blockIdx.x, u = blockIdx.y, b = blockIdx.z;
  const int units = p.share == SA_SELECT_SHARE_KV_GROUP ? p.num_kv_heads : p.num_heads;
  const int words = (p.max_blocks + 31) / 32;
  const int64_t slot = (int64_t(b) * units + u) * p.max_groups + g;
  int32_t* out = p.bits + slot * words;

  // The group's lengths, candidates and forced blocks (block-uniform).
  int64_t q_len = p.q_len, kv_len = p.kv_len;
  if (p.cu_seqlens_q != nullptr) {
    q_len = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
    kv_len = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
  }
  const int64_t groups = select_num_groups(p.grouping, p.q_block, q_len, kv_len);
  const bool over = groups > p.max_groups || (kv_len + p.block - 1) / p.block > p.max_blocks;
  int64_t num_cand = 0, j_max = -1;
  if (!over && g < groups) {
    const int64_t max_p = select_max_pos(p.grouping, p.q_block, q_len, kv_len, g);
    num_cand = select_num_candidates<C>(max_p, kv_len, p.block);
    j_max = max_p >= 0 ? max_p / p.block : -1;
  }
  if (num_cand == 0) {
    for (int w = threadIdx.x; w < words; w += kSelectThreads) out[w] = 0;
    if (threadIdx.x == 0 && p.counts != nullptr) p.counts[slot] = over ? -1 : 0;
    return;  // uniform: no thread of the block reaches a barrier
  }

  const Smem smem = dynamic_smem();
  SelectReduce red(smem);
  SelectGroupView v;
  v.keys = smem + kSelectScratch;
  v.list = v.keys + 4 * int64_t(p.max_blocks);
  v.mass = v.list + 4 * int64_t(p.max_blocks);
  v.num_cand = num_cand;
  v.j_max = j_max;
  v.keep_sinks = p.keep_sinks;
  v.keep_local = p.keep_local;
  v.jbits = 0;
  while ((int64_t(1) << v.jbits) < num_cand) ++v.jbits;

  // Pass 1: scores -> keys; |F| and the best key over C.
  const float* row = p.scores + int64_t(b) * p.score_batch_stride + int64_t(g) * p.score_group_stride;
  uint64_t n_forced = 0, unused = 0;
  uint32_t best_key = 0;
  for (int64_t j = threadIdx.x; j < num_cand; j += kSelectThreads) {
    const uint32_t k = score_key(select_load_score(p, row, u, j));
    arch::sts<uint32_t>(v.keys + 4 * j, k);
    best_key = k > best_key ? k : best_key;
    n_forced += select_forced<C>(j, j_max, p.keep_sinks, p.keep_local) ? 1u : 0u;
  }
  red.sum2(n_forced, unused);  // its barrier also publishes the keys
  const int64_t n_rest = num_cand - static_cast<int64_t>(n_forced);
  // The best score over C (top_p and top_rel; top_k needs no second reduction).
  const float best = p.choice == SA_SELECT_TOP_K ? 0.f : key_score(red.max(best_key));

  // How many rest blocks the rule chooses; `have_x`: x already is the n-th largest key.
  int64_t want = 0;
  uint64_t x = 0;
  bool have_x = false;
  if (p.choice == SA_SELECT_TOP_K) {
    want = p.k;
  } else if (p.choice == SA_SELECT_TOP_REL) {
    const uint32_t t = score_key(ceil_to_float(p.ln_alpha + static_cast<double>(best)));
    uint64_t c = 0;
    for (int64_t j = threadIdx.x; j < num_cand; j += kSelectThreads)
      c += (!select_forced<C>(j, j_max, p.keep_sinks, p.keep_local) &&
            arch::lds<uint32_t>(v.keys + 4 * j) >= t)
               ? 1u
               : 0u;
    red.sum2(c, unused);
    want = static_cast<int64_t>(c);
  } else if (best == -__builtin_huge_valf()) {
    want = n_rest;  // top_p, every mass 0: p is never reached
  } else {
    // top_p: fixed-point masses, their totals over C and F, then the crossing block.
    const bool inf_max = best == __builtin_huge_valf();
    uint64_t z = 0, f = 0;
    for (int64_t j = threadIdx.x; j < num_cand; j += kSelectThreads) {
      const float s = key_score(arch::lds<uint32_t>(v.keys + 4 * j));
      const float e = inf_max ? (s == best ? 1.f : 0.f) : expf(s - best);
      const uint32_t m = static_cast<uint32_t>(e * 2147483648.f);  // e <= 1: m <= 2^31
      arch::sts<uint32_t>(v.mass + 4 * j, m);
      z += m;
      if (select_forced<C>(j, j_max, p.keep_sinks, p.keep_local)) f += m;
    }
    red.sum2(z, f);  // its barrier also publishes the masses
    const uint64_t target = static_cast<uint64_t>(ceil(p.p * static_cast<double>(z)));
    if (f >= target) {
      want = 0;
    } else if (z - f < target - f) {
      want = n_rest;
    } else {
      int64_t count = 0;
      x = select_descend<C, true>(v, red, target - f, n_rest, count);
      want = C == SelectCanary::DropCrossing ? count - 1 : count;
      have_x = C != SelectCanary::DropCrossing;
    }
  }
  if (p.choice != SA_SELECT_TOP_K) {
    const int64_t clamped = want < p.min_k ? p.min_k : (want > p.max_k ? p.max_k : want);
    have_x = have_x && clamped == want;
    want = clamped;
  }
  const int64_t n = want < n_rest ? want : n_rest;
  if (n == n_rest) {
    x = 0;  // every rest block
  } else if (n > 0 && !have_x) {
    int64_t count = 0;
    x = select_descend<C, false>(v, red, static_cast<uint64_t>(n), n_rest, count);
  }

  // The bits: F, and the rest blocks with key >= x when any is chosen.
  for (int w = threadIdx.x; w < words; w += kSelectThreads) {
    uint32_t word = 0;
    for (int i = 0; i < 32; ++i) {
      const int64_t j = int64_t(w) * 32 + i;
      if (j >= num_cand) break;
      const bool sel = select_forced<C>(j, j_max, p.keep_sinks, p.keep_local) ||
                       (n > 0 && v.key(j) >= x);
      word |= sel ? (1u << i) : 0u;
    }
    out[w] = static_cast<int32_t>(word);
  }
  if (threadIdx.x == 0 && p.counts != nullptr)
    p.counts[slot] = static_cast<int32_t>(static_cast<int64_t>(n_forced) + n);
}

}  // namespace sa
