/* Parameters of the dense reference softmax (kernels/ref_softmax.cu), the middle step of the
 * cuBLAS oracle that GPU tests and benchmarks compare the attention kernels against:
 *
 *   S = scale * Q K^T   (cuBLAS, f32)   ->   P = softmax(mask(softcap(S)))   ->   O = P V (cuBLAS)
 *
 * One launch covers one query head of a uniform batch: grid (q_len, batch), one block of
 * SA_REF_SOFTMAX_THREADS threads per query row. Plain C (stdint only) so bindgen mirrors it
 * into src/ffi/ref_softmax_params.rs; layout asserts are in ref_softmax_params_layout.h. */
#ifndef SPARSE_ATTN_REF_SOFTMAX_PARAMS_H
#define SPARSE_ATTN_REF_SOFTMAX_PARAMS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Launch constants of the reference softmax (named, so its bindgen type does not collide
 * with params.h's). */
enum SaRefSoftmaxConsts {
  /** Threads per block: 4 warps per query row. */
  SA_REF_SOFTMAX_THREADS = 128
};

/** The reference softmax of one query head over a uniform batch. */
typedef struct SaRefSoftmaxParams {
  /** f32 `[batch, q_len, kv_len]` scores, already multiplied by the scale. */
  const float* s;
  /** `[batch, q_len, kv_len]` probabilities in the kernel's element type (f16 or bf16); rows
   * with no allowed key are written as zeros. */
  void* p;
  /** Element (b, i) at b * lse_batch_stride + i; natural log; -inf for empty rows. */
  float* lse;
  /** NULL, or u8 `[q_len, kv_len]` for this head (1 = allowed), shared by the whole batch. */
  const uint8_t* mask;

  /** s: elements between sequences. */
  int64_t s_batch_stride;
  /** p: elements between sequences. */
  int64_t p_batch_stride;
  /** lse: elements between sequences. */
  int64_t lse_batch_stride;

  /** Sequences. */
  int32_t batch;
  /** Query rows per sequence. */
  int32_t q_len;
  /** Keys per sequence. */
  int32_t kv_len;
  /** > 0: s = softcap * tanh(s / softcap) before masking; 0: off. */
  float softcap;
  /** 1: key j allowed only if j <= i + kv_len - q_len (bottom-right). */
  int32_t causal;
  /** Keeps the struct's size a multiple of 8; always 0. */
  int32_t _pad0;
} SaRefSoftmaxParams;

#ifdef __cplusplus
}
#endif

#endif /* SPARSE_ATTN_REF_SOFTMAX_PARAMS_H */
