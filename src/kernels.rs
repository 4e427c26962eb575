//! The kernel registry and the launch description shared by both backends.
//!
//! Every compiled instantiation appears once in [`KERNELS`]: its entry-point name (the
//! `extern "C"` symbol in the fatbin and in the emulator library, which are built from the same
//! `.cu` file), the fatbin module it lives in, and its host entry for the emulator. A
//! [`Launch`] (kernel, grid, block, dynamic shared memory, params) is executed unchanged by the
//! CUDA backend or by the emulator, so a kernel cannot be runnable in one and not the other.

use crate::emu::{self, KernelFn};
use crate::ffi;
use crate::shape::{DType, HeadDim};

/// Which `kernels/*.cu` file (and so which embedded fatbin) a kernel lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    /// `kernels/attention_fwd.cu`
    AttnFwd,
    /// `kernels/attention_combine.cu`
    AttnCombine,
    /// `kernels/kv_append.cu`
    KvAppend,
    /// `kernels/ref_softmax.cu` (the softmax of the dense cuBLAS oracle)
    RefSoftmax,
    /// A test-only kernel file `kernels/tests/<stem>.cu` (emulator self-tests, canaries).
    Test(&'static str),
}

impl Module {
    /// File stem of the `.cu` source and of its fatbin.
    pub fn stem(self) -> &'static str {
        match self {
            Module::AttnFwd => "attention_fwd",
            Module::AttnCombine => "attention_combine",
            Module::KvAppend => "kv_append",
            Module::RefSoftmax => "ref_softmax",
            Module::Test(stem) => stem,
        }
    }
}

/// One compiled kernel instantiation.
#[derive(Clone, Copy, Debug)]
pub struct KernelDesc {
    /// Unmangled entry-point name (same on GPU and emulator).
    pub name: &'static str,
    /// The `.cu` file (and fatbin) it lives in.
    pub module: Module,
    /// Host entry for the emulator.
    pub emu_entry: KernelFn,
}

/// The launch description: what to run, with which geometry and parameters.
#[derive(Clone, Copy, Debug)]
pub struct Launch<P: Copy> {
    /// What to run.
    pub kernel: &'static KernelDesc,
    /// Blocks per grid dimension.
    pub grid: [u32; 3],
    /// Threads per block dimension.
    pub block: [u32; 3],
    /// Dynamic shared memory per block, in bytes.
    pub dynamic_smem_bytes: u32,
    /// The params struct, passed by value.
    pub params: P,
}

impl<P: Copy> Launch<P> {
    /// Runs this launch on the CPU emulator.
    ///
    /// # Safety
    /// As for [`emu::launch`]: `P` must be the kernel's params struct and every pointer in
    /// `params` must be valid for the accesses the kernel makes with this geometry.
    pub unsafe fn run_emulated(&self, opts: &emu::EmuOptions) -> Result<(), emu::EmuError> {
        let cfg =
            emu::LaunchConfig::with_options(self.grid, self.block, self.dynamic_smem_bytes, opts);
        emu::launch(self.kernel.emu_entry, self.kernel.name, &cfg, &self.params)
    }
}

mod entries {
    extern "C" {
        pub fn sa_attn_fwd_f16_hd64(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd128(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd64(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd128(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_f16_hd64(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_f16_hd128(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_bf16_hd64(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_bf16_hd128(p: *const std::ffi::c_void);
        pub fn sa_kv_append(p: *const std::ffi::c_void);
    }
}

macro_rules! kernel {
    ($name:ident, $module:expr) => {
        KernelDesc {
            name: stringify!($name),
            module: $module,
            emu_entry: entries::$name,
        }
    };
}

/// Every kernel instantiation: dtype x head_dim for the forward pass.
pub static KERNELS: [KernelDesc; 9] = [
    kernel!(sa_attn_fwd_f16_hd64, Module::AttnFwd),
    kernel!(sa_attn_fwd_f16_hd128, Module::AttnFwd),
    kernel!(sa_attn_fwd_bf16_hd64, Module::AttnFwd),
    kernel!(sa_attn_fwd_bf16_hd128, Module::AttnFwd),
    kernel!(sa_attn_combine_f16_hd64, Module::AttnCombine),
    kernel!(sa_attn_combine_f16_hd128, Module::AttnCombine),
    kernel!(sa_attn_combine_bf16_hd64, Module::AttnCombine),
    kernel!(sa_attn_combine_bf16_hd128, Module::AttnCombine),
    kernel!(sa_kv_append, Module::KvAppend),
];

/// The K/V append kernel (copies bits: every dtype and head_dim).
pub fn kv_append() -> &'static KernelDesc {
    &KERNELS[8]
}

/// The forward kernel for a dtype and head dimension. Exhaustive: `HeadDim` only holds
/// supported values.
pub fn attn_fwd(dtype: DType, head_dim: HeadDim) -> &'static KernelDesc {
    &KERNELS[instance(dtype, head_dim)]
}

/// The split-KV combine kernel for a dtype and head dimension.
pub fn attn_combine(dtype: DType, head_dim: HeadDim) -> &'static KernelDesc {
    &KERNELS[4 + instance(dtype, head_dim)]
}

/// Position of a (dtype, head_dim) instantiation within its kernel family in [`KERNELS`].
/// Exhaustive: `HeadDim` only holds supported values.
fn instance(dtype: DType, head_dim: HeadDim) -> usize {
    match (dtype, head_dim.get()) {
        (DType::F16, 64) => 0,
        (DType::F16, 128) => 1,
        (DType::BF16, 64) => 2,
        (DType::BF16, 128) => 3,
        (_, d) => unreachable!("HeadDim admits only supported values, got {d}"),
    }
}

/// Threads per block of the combine kernel (one warp per (row, head)): `SA_COMBINE_THREADS`
/// of `params.h`.
pub const COMBINE_THREADS: u32 = ffi::SA_COMBINE_THREADS;

/// Tile configuration of the forward kernel: the launch constants of
/// `kernels/include/sparse_attn/params.h`, which `kernel_traits.cuh` reads too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwdTiles {
    /// Query rows per block.
    pub block_m: u32,
    /// Keys per kv tile.
    pub block_n: u32,
    /// Threads per block.
    pub threads: u32,
    /// Dynamic shared memory: `SA_FWD_SMEM_ROWS` rows of `head_dim` 16-bit elements (the Q
    /// tile and the K and V stages).
    pub smem_bytes: u32,
}

/// Pure function choosing the forward tiles for a head dimension.
pub fn fwd_tiles(head_dim: HeadDim) -> FwdTiles {
    let (bm, bn) = (ffi::SA_FWD_BLOCK_M, ffi::SA_FWD_BLOCK_N);
    FwdTiles {
        block_m: bm,
        block_n: bn,
        threads: ffi::SA_FWD_THREADS,
        smem_bytes: ffi::SA_FWD_SMEM_ROWS * head_dim.get() * 2,
    }
}
