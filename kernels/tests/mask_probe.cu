// Test kernel: the forward kernel's partial-tile predicate (mask.cuh) evaluated for every
// (query row, key) of one row set, every way the kernel evaluates it, over the natural key
// order: bit 0 is the general interpreter (TokenMask::allowed, gathered tiles), bit 1 the
// interval form's lane bits (row_keys -> row_cols -> interval_row_bits; equal to bit 0 when
// the program has no interval form), bit 2 the table-driven kinds' lane bits (row_tile_bits,
// any program). Key j is column c = j % BLOCK_N of kv tile j / BLOCK_N, held by the lane with
// lane % 4 = (c / 2) % 4 as bit 4 * (c / 8) + c % 2 of fragment row g (mask.cuh's layout).
// tests/pattern_props.rs runs it on the emulator and compares both bits token by token with
// the pattern contract, so the property test checks the code the kernel runs.
#include "sparse_attn/mask.cuh"

struct SaMaskProbeParams {
  const SaMaskProgram* programs;      // [sets] (BlockSparseMeta::mask().programs())
  const SaMaskComponent* components;  // every set's components
  const int32_t* data;                // the components' tables
  uint8_t* allowed;                   // [q_len, kv_len]: bits 0-2, see above
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
    constexpr int kNT = SA_FWD_BLOCK_N / 8;
    const int tile = key / SA_FWD_BLOCK_N, c = key % SA_FWD_BLOCK_N;
    const int lane = (c >> 1) & 3, bit = 4 * (c >> 3) + (c & 1);  // row g's entry
    const bool general = mask.allowed(row, key);
    bool fast = general;
    if (mask.intervals > 0) {
      const sa::RowCols rc = sa::TokenMask::row_cols(mask.row_keys(row, natural), lane);
      const uint32_t bits = mask.intervals == 1
                                ? sa::TokenMask::interval_row_bits<false, kNT>(rc, 0, tile)
                                : sa::TokenMask::interval_row_bits<true, kNT>(rc, 0, tile);
      fast = (bits >> bit) & 1u;
    }
    const bool table = (mask.row_tile_bits<kNT>(row, natural, tile, lane) >> bit) & 1u;
    p.allowed[e] = static_cast<uint8_t>((general ? 1 : 0) | (fast ? 2 : 0) | (table ? 4 : 0));
  }
}
