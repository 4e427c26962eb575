// Test kernel: the forward kernel's partial-tile predicate (mask.cuh) evaluated for every
// (query row, key) of one row set, both ways the kernel evaluates it: bit 0 is the general
// interpreter (TokenMask::allowed), bit 1 the interval form (TokenMask::row_keys over the
// natural key order; equal to bit 0 when the program has no interval form).
// tests/pattern_props.rs runs it on the emulator and compares both bits token by token with
// the pattern contract, so the property test checks the code the kernel runs.
#include "sparse_attn/mask.cuh"

struct SaMaskProbeParams {
  const SaMaskProgram* programs;      // [sets] (BlockSparseMeta::mask().programs())
  const SaMaskComponent* components;  // every set's components
  const int32_t* data;                // the components' tables
  uint8_t* allowed;                   // [q_len, kv_len]: bit 0 interpreter, bit 1 intervals
  int32_t set;                        // the row set whose program is evaluated
  int32_t q_len;
  int32_t kv_len;
  int32_t pad;
};
static_assert(sizeof(SaMaskProbeParams) == 48, "mirrored in src/emu/selftest.rs");

SA_KERNEL(sa_test_mask_probe, SaMaskProbeParams, 128) {
  const SaMaskProbeParams& p = params;
  const sa::TokenMask mask =
      sa::TokenMask::make(p.programs + p.set, p.components, p.data, p.q_len, p.kv_len);
  const int64_t n = int64_t(p.q_len) * p.kv_len;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const sa::KeyMap natural{nullptr, 0, 1, p.kv_len, 0};  // view key v = key v
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int row = static_cast<int>(e / p.kv_len), key = static_cast<int>(e % p.kv_len);
    const bool general = mask.allowed(row, key);
    bool fast = general;
    if (mask.intervals > 0) {
      const sa::RowKeys rk = mask.row_keys(row, natural);
      fast = (key >= rk.lo[0] && key <= rk.hi[0]) || (key >= rk.lo[1] && key <= rk.hi[1]);
    }
    p.allowed[e] = static_cast<uint8_t>((general ? 1 : 0) | (fast ? 2 : 0));
  }
}
