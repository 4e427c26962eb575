// Dense reference softmax: the middle step of the cuBLAS oracle that GPU tests and benchmarks
// compare the attention kernels with (src/backend/cublas.rs):
//
//   S = scale * Q K^T (cuBLAS, f32)  ->  P = softmax(mask(softcap(S))), lse  ->  O = P V (cuBLAS)
//
// Deliberately simple: CUDA cores, f32 throughout, precise expf/logf/tanhf, three passes over
// a row. One block of SA_REF_SOFTMAX_THREADS threads per query row; grid (q_len, batch) for
// one query head. It follows the host-runnable rules of arch/platform.cuh, so the emulator
// checks it against the f64 reference too (tests/ref_softmax_emu.rs).
#include "sparse_attn/arch.cuh"
#include "sparse_attn/ref_softmax_params.h"
#include "sparse_attn/ref_softmax_params_layout.h"

namespace sa {
namespace ref_softmax {

constexpr int kThreads = SA_REF_SOFTMAX_THREADS;
constexpr int kWarps = kThreads / 32;
constexpr float kNegInf = -__builtin_huge_valf();

// The masked, soft-capped score of key j, or -inf when the key is not allowed.
struct Row {
  const float* s;        // [kv_len] scores of this row
  const uint8_t* mask;   // [kv_len] or nullptr
  int64_t last_causal;   // keys j > last_causal are masked (causal); INT64_MAX otherwise
  float softcap;         // 0 = off
  float inv_softcap;     // 1 / softcap, hoisted: a division in the loop made ptxas spill

  SA_DEVICE float score(int j) const {
    if (j > last_causal || (mask != nullptr && mask[j] == 0)) return kNegInf;
    float x = s[j];
    if (softcap > 0.f) x = softcap * tanhf(x * inv_softcap);
    return x;
  }
};

// Block-wide reduction of one value per thread: a butterfly inside each warp, then every
// thread folds the kWarps warp results from shared memory. `slots` holds kWarps floats that
// no other reduction uses concurrently. Must be reached by every thread of the block.
template <bool kMax>
SA_DEVICE float block_reduce(float v, Smem slots) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const float o = arch::shfl_xor(arch::kFullMask, v, offset);
    v = kMax ? fmaxf(v, o) : v + o;
  }
  const unsigned warp = threadIdx.x / 32;
  if (arch::lane_id() == 0) arch::sts(slots + 4 * warp, v);
  __syncthreads();
  float r = arch::lds<float>(slots);
  for (int w = 1; w < kWarps; ++w) {
    const float o = arch::lds<float>(slots + 4 * w);
    r = kMax ? fmaxf(r, o) : r + o;
  }
  return r;
}

template <typename T>
SA_DEVICE void softmax_row(const SaRefSoftmaxParams& p) {
  const int i = static_cast<int>(blockIdx.x);
  const int b = static_cast<int>(blockIdx.y);
  const int tid = static_cast<int>(threadIdx.x);
  const int kv_len = p.kv_len;
  const int64_t row = static_cast<int64_t>(i) * kv_len;

  Row r;
  r.s = p.s + b * p.s_batch_stride + row;
  r.mask = p.mask != nullptr ? p.mask + row : nullptr;
  // Bottom-right alignment: query row i sits at absolute position i + kv_len - q_len.
  r.last_causal = p.causal ? static_cast<int64_t>(i) + kv_len - p.q_len : INT64_MAX;
  r.softcap = p.softcap;
  r.inv_softcap = p.softcap > 0.f ? 1.f / p.softcap : 0.f;
  T* out = static_cast<T*>(p.p) + b * p.p_batch_stride + row;
  const Smem slots = dynamic_smem();  // f32 [2][kWarps]: max, then sum

  float mx = kNegInf;
  for (int j = tid; j < kv_len; j += kThreads) mx = fmaxf(mx, r.score(j));
  mx = block_reduce<true>(mx, slots);

  // Uniform branch: every thread holds the same block maximum.
  if (mx == kNegInf) {
    // No allowed key: P = 0 exactly and lse = -inf (never NaN).
    for (int j = tid; j < kv_len; j += kThreads) out[j] = arch::from_float<T>(0.f);
    if (tid == 0) p.lse[b * p.lse_batch_stride + i] = kNegInf;
    return;
  }

  float sum = 0.f;
  for (int j = tid; j < kv_len; j += kThreads) sum += expf(r.score(j) - mx);  // exp(-inf) = 0
  sum = block_reduce<false>(sum, slots + 4 * kWarps);

  const float inv = 1.f / sum;
  for (int j = tid; j < kv_len; j += kThreads) {
    out[j] = arch::from_float<T>(expf(r.score(j) - mx) * inv);
  }
  if (tid == 0) p.lse[b * p.lse_batch_stride + i] = mx + logf(sum);
}

}  // namespace ref_softmax
}  // namespace sa

SA_KERNEL(sa_ref_softmax_f16, SaRefSoftmaxParams, SA_REF_SOFTMAX_THREADS) {
  sa::ref_softmax::softmax_row<sa::f16>(params);
}
SA_KERNEL(sa_ref_softmax_bf16, SaRefSoftmaxParams, SA_REF_SOFTMAX_THREADS) {
  sa::ref_softmax::softmax_row<sa::bf16>(params);
}
