//! The emulator's self-test kernels (`kernels/tests/selftest_*.cu`): entry points and params
//! mirrors. `tests/emulator.rs` runs them on the emulator and `tests/emulator_gpu.rs` on a GPU
//! (through the `KernelDesc`s of `kernels::test_kernels` and `Gpu::launch`), against the same
//! expected vectors;
//! the layouts are asserted on both sides.
//!
//! Each params struct documents its fields in the `.cu` file; `mode` values are the enums
//! defined there (the constants below repeat them). On the GPU the pointer fields hold device
//! addresses.

use std::ffi::c_void;

extern "C" {
    pub fn sa_selftest_mma(p: *const c_void);
    pub fn sa_selftest_gemm(p: *const c_void);
    pub fn sa_selftest_ldmatrix(p: *const c_void);
    pub fn sa_selftest_cp_async(p: *const c_void);
    pub fn sa_selftest_warp(p: *const c_void);
    pub fn sa_selftest_memory(p: *const c_void);
    pub fn sa_selftest_convert(p: *const c_void);
    pub fn sa_test_mask_probe(p: *const c_void);
    pub fn sa_test_attn_fwd_canary_f16_hd64_m128(p: *const c_void);
    pub fn sa_test_attn_fwd_canary_f16_hd64_m64(p: *const c_void);
    pub fn sa_test_attn_fwd_skip_empty_rows_f16_hd64_m128(p: *const c_void);
    pub fn sa_test_attn_fwd_skip_empty_rows_f16_hd64_m64(p: *const c_void);
    pub fn sa_test_attn_fwd_skip_rescale_f16_hd64_m128(p: *const c_void);
    pub fn sa_test_attn_fwd_skip_rescale_f16_hd64_m64(p: *const c_void);
    pub fn sa_test_attn_fwd_alibi_top_left_f16_hd64_m128(p: *const c_void);
    pub fn sa_test_attn_fwd_alibi_top_left_f16_hd64_m64(p: *const c_void);
    pub fn sa_test_attn_fwd_canary_f16_hd64_m16(p: *const c_void);
    pub fn sa_test_attn_fwd_skip_empty_rows_f16_hd64_m16(p: *const c_void);
    pub fn sa_test_attn_fwd_skip_rescale_f16_hd64_m16(p: *const c_void);
    pub fn sa_test_attn_fwd_alibi_top_left_f16_hd64_m16(p: *const c_void);
    pub fn sa_test_attn_fwd_early_wait_f16_hd64_m16(p: *const c_void);
    pub fn sa_test_adaptive_score_wrong_block_f16_r1(p: *const c_void);
    pub fn sa_test_adaptive_score_max_as_min_f16_r1(p: *const c_void);
}

// SAFETY: plain #[repr(C)] structs of pointers and integers, passed by value as the kernel's
// one parameter (sizes asserted against the C structs below).
unsafe impl cudarc::driver::DeviceRepr for MmaParams {}
unsafe impl cudarc::driver::DeviceRepr for GemmParams {}
unsafe impl cudarc::driver::DeviceRepr for LdmatrixParams {}
unsafe impl cudarc::driver::DeviceRepr for CpAsyncParams {}
unsafe impl cudarc::driver::DeviceRepr for WarpParams {}
unsafe impl cudarc::driver::DeviceRepr for ConvertParams {}

/// `SaSelftestMmaParams` (selftest_mma.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MmaParams {
    pub a: *const u16,
    pub b: *const u16,
    pub b2: *const u16,
    pub c: *const f32,
    pub d: *mut f32,
    pub frags: *mut u32,
    pub k: i32,
    pub bf16: i32,
    pub mode: i32,
    pub pad: i32,
}
pub mod mma_mode {
    pub const PLAIN: i32 = 0;
    pub const MISSING_LANE: i32 = 1;
    pub const CHAIN: i32 = 2;
}

/// `SaSelftestGemmParams` (selftest_gemm.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GemmParams {
    pub a: *const u16,
    pub b: *const u16,
    pub c: *mut f32,
    pub row_max: *mut f32,
    pub m: i32,
    pub k: i32,
    pub bf16: i32,
    pub mode: i32,
}
pub mod gemm_mode {
    pub const CORRECT: i32 = 0;
    pub const MISSING_WAIT: i32 = 1;
    pub const MISSING_BARRIER_AFTER_WAIT: i32 = 2;
    pub const MISSING_BARRIER_BEFORE_REFILL: i32 = 3;
    pub const SWAPPED_FRAGMENTS: i32 = 4;
}

/// `SaSelftestLdmatrixParams` (selftest_ldmatrix.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LdmatrixParams {
    pub out: *mut u32,
    pub num: i32,
    pub trans: i32,
    pub mode: i32,
    pub pad: i32,
}
pub mod ldmatrix_mode {
    pub const STANDARD: i32 = 0;
    pub const PERMUTED: i32 = 1;
    pub const MISALIGNED: i32 = 2;
    pub const OUT_OF_SMEM: i32 = 3;
}

/// `SaSelftestCpAsyncParams` (selftest_cp_async.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpAsyncParams {
    pub src: *const u8,
    pub out: *mut u8,
    pub src_len: i32,
    pub mode: i32,
}
pub mod cp_async_mode {
    pub const ROUND_TRIP: i32 = 0;
    pub const SRC_SIZE_8: i32 = 1;
    pub const SRC_SIZE_0: i32 = 2;
    pub const THREE_GROUPS: i32 = 3;
    pub const EMPTY_GROUP: i32 = 4;
    pub const SIZES: i32 = 5;
    pub const SYNCWARP_PUBLISHES: i32 = 6;
    pub const READ_BEFORE_WAIT: i32 = 10;
    pub const CG8: i32 = 11;
    pub const PENDING_AT_EXIT: i32 = 12;
    pub const OVERLAP: i32 = 13;
    pub const SRC_OUT_OF_BOUNDS: i32 = 14;
    pub const MISALIGNED_DST: i32 = 15;
    pub const MISSING_BARRIER: i32 = 16;
    pub const WRITE_AFTER_READ: i32 = 17;
    pub const NEVER_COMMITTED: i32 = 18;
}

/// `SaSelftestWarpParams` (selftest_warp.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WarpParams {
    pub out: *mut u32,
    pub mode: i32,
    pub pad: i32,
}
pub mod warp_mode {
    pub const BUTTERFLY_SUM: i32 = 0;
    pub const XOR16_WIDTH16: i32 = 1;
    pub const IDX10_WIDTH8: i32 = 2;
    pub const DOWN16: i32 = 3;
    pub const UP1_WIDTH8: i32 = 4;
    pub const SHFL64: i32 = 5;
    pub const QUAD_MAX: i32 = 6;
    pub const PARTIAL_MASKS: i32 = 7;
    pub const EXITED_LANES: i32 = 8;
    pub const SYNCWARP_EXITED: i32 = 9;
    pub const BARRIER_EXITED: i32 = 10;
    pub const INDICES: i32 = 11;
    pub const NOT_IN_MASK: i32 = 20;
    pub const MISMATCH: i32 = 21;
    pub const DIVERGENT_BARRIER: i32 = 22;
    pub const DEADLOCK: i32 = 23;
    pub const TRAP: i32 = 24;
    pub const BAD_WIDTH: i32 = 25;
}

/// `SaSelftestMemoryParams` (selftest_memory.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemoryParams {
    pub src: *const f32,
    pub dst: *mut f32,
    pub n: i32,
    pub mode: i32,
}
pub mod memory_mode {
    pub const COPY: i32 = 0;
    pub const SMEM_POISON: i32 = 1;
    pub const GLOBAL_OOB_READ: i32 = 2;
    pub const GLOBAL_OOB_WRITE: i32 = 3;
    pub const SHARED_OOB_CHECKED: i32 = 4;
    pub const SHARED_OOB_PLAIN: i32 = 5;
    pub const STACK_OVERFLOW: i32 = 6;
    pub const NULL_READ: i32 = 7;
    pub const DIV_BY_ZERO: i32 = 8;
}

/// `SaSelftestConvertParams` (selftest_convert.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConvertParams {
    pub input: *const f32,
    pub bits16: *const u16,
    pub f16: *mut u16,
    pub bf16: *mut u16,
    pub packed_f16: *mut u32,
    pub packed_bf16: *mut u32,
    pub widened_f16: *mut f32,
    pub widened_bf16: *mut f32,
    pub n: i32,
    pub pad: i32,
}

/// `SaMaskProbeParams` (mask_probe.cu): the forward kernel's mask predicate over every
/// (query row, key) of one row set.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MaskProbeParams {
    /// `SaMaskProgram [sets]` (kept untyped so the emulator depends on nothing).
    pub programs: *const c_void,
    /// `SaMaskComponent []`.
    pub components: *const c_void,
    pub data: *const i32,
    pub allowed: *mut u8,
    pub set: i32,
    pub q_len: i32,
    pub kv_len: i32,
    pub pad: i32,
}

// Same sizes as the C `static_assert`s in kernels/tests/selftest_*.cu (64-bit targets).
#[cfg(target_pointer_width = "64")]
const _: () = {
    use std::mem::size_of;
    assert!(size_of::<MmaParams>() == 64);
    assert!(size_of::<GemmParams>() == 48);
    assert!(size_of::<LdmatrixParams>() == 24);
    assert!(size_of::<CpAsyncParams>() == 24);
    assert!(size_of::<WarpParams>() == 16);
    assert!(size_of::<MemoryParams>() == 24);
    assert!(size_of::<ConvertParams>() == 72);
    assert!(size_of::<MaskProbeParams>() == 48);
};
