// Test kernel: the forward kernel's partial-tile predicate (TokenMask::allowed in mask.cuh)
// evaluated for every (query row, key) of one row set. tests/pattern_props.rs runs it on the
// emulator and compares it token by token with the pattern contract, so the property test
// checks the interpreter the kernel runs, not a Rust copy of it.
#include "sparse_attn/mask.cuh"

struct SaMaskProbeParams {
  const SaMaskProgram* programs;      // [sets] (BlockSparseMeta::mask().programs())
  const SaMaskComponent* components;  // every set's components
  const int32_t* data;                // the components' tables
  uint8_t* allowed;                   // [q_len, kv_len]: 1 = allowed
  int32_t set;                        // the row set whose program is evaluated
  int32_t q_len;
  int32_t kv_len;
  int32_t pad;
};
static_assert(sizeof(SaMaskProbeParams) == 48, "mirrored in src/emu/selftest.rs");

SA_KERNEL(sa_test_mask_probe, SaMaskProbeParams, 128) {
  const SaMaskProbeParams& p = params;
  const sa::TokenMask mask{p.programs + p.set, p.components, p.data, p.q_len, p.kv_len};
  const int64_t n = int64_t(p.q_len) * p.kv_len;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int row = static_cast<int>(e / p.kv_len), key = static_cast<int>(e % p.kv_len);
    p.allowed[e] = mask.allowed(row, key) ? 1 : 0;
  }
}
