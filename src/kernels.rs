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
    /// `kernels/attention_fwd_hd<D>.cu`: the forward kernels of one head dimension (a file
    /// each, so nvcc compiles them side by side).
    AttnFwd(FwdFile),
    /// `kernels/attention_combine.cu`
    AttnCombine,
    /// `kernels/kv_append.cu`
    KvAppend,
    /// `kernels/ref_softmax.cu` (the softmax of the dense cuBLAS oracle)
    RefSoftmax,
    /// `kernels/kv_summarize.cu` (block summaries of a prefill's keys)
    KvSummarize,
    /// `kernels/adaptive_score.cu` (adaptive block scores from the summaries)
    AdaptiveScore,
    /// `kernels/adaptive_select.cu` (adaptive block selection: scores to selection bits)
    AdaptiveSelect,
    /// `kernels/adaptive_lists.cu` (an adaptive selection compacted into tile lists)
    AdaptLists,
    /// A test-only kernel file `kernels/tests/<stem>.cu` (emulator self-tests, canaries).
    Test(&'static str),
}

impl Module {
    /// File stem of the `.cu` source and of its fatbin.
    pub fn stem(self) -> &'static str {
        match self {
            Module::AttnFwd(f) => f.stem(),
            Module::AttnCombine => "attention_combine",
            Module::KvAppend => "kv_append",
            Module::RefSoftmax => "ref_softmax",
            Module::KvSummarize => "kv_summarize",
            Module::AdaptiveScore => "adaptive_score",
            Module::AdaptiveSelect => "adaptive_select",
            Module::AdaptLists => "adaptive_lists",
            Module::Test(stem) => stem,
        }
    }
}

/// The file of a head dimension's forward kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FwdFile {
    /// `kernels/attention_fwd_hd64.cu`
    Hd64,
    /// `kernels/attention_fwd_hd96.cu`
    Hd96,
    /// `kernels/attention_fwd_hd128.cu`
    Hd128,
    /// `kernels/attention_fwd_hd256.cu`
    Hd256,
    /// `kernels/attention_fwd_hd512.cu`
    Hd512,
}

impl FwdFile {
    /// Every file, in head-dimension order.
    pub const ALL: [FwdFile; 5] = [
        FwdFile::Hd64,
        FwdFile::Hd96,
        FwdFile::Hd128,
        FwdFile::Hd256,
        FwdFile::Hd512,
    ];

    /// The file of head dimension `d`.
    pub fn of(d: HeadDim) -> FwdFile {
        match d.get() {
            64 => FwdFile::Hd64,
            96 => FwdFile::Hd96,
            128 => FwdFile::Hd128,
            256 => FwdFile::Hd256,
            _ => FwdFile::Hd512,
        }
    }

    /// File stem of the `.cu` source and of its fatbin.
    pub fn stem(self) -> &'static str {
        match self {
            FwdFile::Hd64 => "attention_fwd_hd64",
            FwdFile::Hd96 => "attention_fwd_hd96",
            FwdFile::Hd128 => "attention_fwd_hd128",
            FwdFile::Hd256 => "attention_fwd_hd256",
            FwdFile::Hd512 => "attention_fwd_hd512",
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
        pub fn sa_attn_fwd_f16_hd64_m128(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd64_m128(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd64_m64(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd64_m64(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd96_m64(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd96_m64(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd128_m64(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd128_m64(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd256_m64(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd256_m64(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd512_m64(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd512_m64(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd64_m16(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd64_m16(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd96_m16(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd96_m16(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd128_m16(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd128_m16(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd256_m16(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd256_m16(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd64_m128_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd64_m128_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd64_m64_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd64_m64_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd96_m64_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd96_m64_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd128_m64_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd128_m64_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd256_m64_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd256_m64_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd512_m64_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd512_m64_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd64_m16_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd64_m16_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd96_m16_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd96_m16_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd128_m16_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd128_m16_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_f16_hd256_m16_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_fwd_bf16_hd256_m16_rt(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_f16_hd64(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_f16_hd96(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_f16_hd128(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_f16_hd256(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_f16_hd512(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_bf16_hd64(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_bf16_hd96(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_bf16_hd128(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_bf16_hd256(p: *const std::ffi::c_void);
        pub fn sa_attn_combine_bf16_hd512(p: *const std::ffi::c_void);
        pub fn sa_kv_append(p: *const std::ffi::c_void);
        pub fn sa_kv_summarize_f16(p: *const std::ffi::c_void);
        pub fn sa_kv_summarize_bf16(p: *const std::ffi::c_void);
        pub fn sa_adaptive_score_f16_r1(p: *const std::ffi::c_void);
        pub fn sa_adaptive_score_bf16_r1(p: *const std::ffi::c_void);
        pub fn sa_adaptive_score_f16_r16(p: *const std::ffi::c_void);
        pub fn sa_adaptive_score_bf16_r16(p: *const std::ffi::c_void);
        pub fn sa_adaptive_select(p: *const std::ffi::c_void);
        pub fn sa_adapt_lists(p: *const std::ffi::c_void);
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

/// A forward entry point of `kernels/attention_fwd_hd<D>.cu` (`FwdFile::$file`).
macro_rules! fwd {
    ($name:ident, $file:ident) => {
        kernel!($name, Module::AttnFwd(FwdFile::$file))
    };
}

/// Every kernel instantiation: the forward pass per (dtype, head_dim, tile shape) — see
/// [`fwd_tiles`] — the split-KV combine per (dtype, head_dim), the K/V append, the block
/// summaries per dtype, the adaptive block scores per (dtype, rows per step), the adaptive
/// block selection and the adaptive-list compaction.
pub static KERNELS: [KernelDesc; 59] = [
    fwd!(sa_attn_fwd_f16_hd64_m128, Hd64),
    fwd!(sa_attn_fwd_bf16_hd64_m128, Hd64),
    fwd!(sa_attn_fwd_f16_hd64_m64, Hd64),
    fwd!(sa_attn_fwd_bf16_hd64_m64, Hd64),
    fwd!(sa_attn_fwd_f16_hd96_m64, Hd96),
    fwd!(sa_attn_fwd_bf16_hd96_m64, Hd96),
    fwd!(sa_attn_fwd_f16_hd128_m64, Hd128),
    fwd!(sa_attn_fwd_bf16_hd128_m64, Hd128),
    fwd!(sa_attn_fwd_f16_hd256_m64, Hd256),
    fwd!(sa_attn_fwd_bf16_hd256_m64, Hd256),
    fwd!(sa_attn_fwd_f16_hd512_m64, Hd512),
    fwd!(sa_attn_fwd_bf16_hd512_m64, Hd512),
    fwd!(sa_attn_fwd_f16_hd64_m16, Hd64),
    fwd!(sa_attn_fwd_bf16_hd64_m16, Hd64),
    fwd!(sa_attn_fwd_f16_hd96_m16, Hd96),
    fwd!(sa_attn_fwd_bf16_hd96_m16, Hd96),
    fwd!(sa_attn_fwd_f16_hd128_m16, Hd128),
    fwd!(sa_attn_fwd_bf16_hd128_m16, Hd128),
    fwd!(sa_attn_fwd_f16_hd256_m16, Hd256),
    fwd!(sa_attn_fwd_bf16_hd256_m16, Hd256),
    fwd!(sa_attn_fwd_f16_hd64_m128_rt, Hd64),
    fwd!(sa_attn_fwd_bf16_hd64_m128_rt, Hd64),
    fwd!(sa_attn_fwd_f16_hd64_m64_rt, Hd64),
    fwd!(sa_attn_fwd_bf16_hd64_m64_rt, Hd64),
    fwd!(sa_attn_fwd_f16_hd96_m64_rt, Hd96),
    fwd!(sa_attn_fwd_bf16_hd96_m64_rt, Hd96),
    fwd!(sa_attn_fwd_f16_hd128_m64_rt, Hd128),
    fwd!(sa_attn_fwd_bf16_hd128_m64_rt, Hd128),
    fwd!(sa_attn_fwd_f16_hd256_m64_rt, Hd256),
    fwd!(sa_attn_fwd_bf16_hd256_m64_rt, Hd256),
    fwd!(sa_attn_fwd_f16_hd512_m64_rt, Hd512),
    fwd!(sa_attn_fwd_bf16_hd512_m64_rt, Hd512),
    fwd!(sa_attn_fwd_f16_hd64_m16_rt, Hd64),
    fwd!(sa_attn_fwd_bf16_hd64_m16_rt, Hd64),
    fwd!(sa_attn_fwd_f16_hd96_m16_rt, Hd96),
    fwd!(sa_attn_fwd_bf16_hd96_m16_rt, Hd96),
    fwd!(sa_attn_fwd_f16_hd128_m16_rt, Hd128),
    fwd!(sa_attn_fwd_bf16_hd128_m16_rt, Hd128),
    fwd!(sa_attn_fwd_f16_hd256_m16_rt, Hd256),
    fwd!(sa_attn_fwd_bf16_hd256_m16_rt, Hd256),
    kernel!(sa_attn_combine_f16_hd64, Module::AttnCombine),
    kernel!(sa_attn_combine_f16_hd96, Module::AttnCombine),
    kernel!(sa_attn_combine_f16_hd128, Module::AttnCombine),
    kernel!(sa_attn_combine_f16_hd256, Module::AttnCombine),
    kernel!(sa_attn_combine_f16_hd512, Module::AttnCombine),
    kernel!(sa_attn_combine_bf16_hd64, Module::AttnCombine),
    kernel!(sa_attn_combine_bf16_hd96, Module::AttnCombine),
    kernel!(sa_attn_combine_bf16_hd128, Module::AttnCombine),
    kernel!(sa_attn_combine_bf16_hd256, Module::AttnCombine),
    kernel!(sa_attn_combine_bf16_hd512, Module::AttnCombine),
    kernel!(sa_kv_append, Module::KvAppend),
    kernel!(sa_kv_summarize_f16, Module::KvSummarize),
    kernel!(sa_kv_summarize_bf16, Module::KvSummarize),
    kernel!(sa_adaptive_score_f16_r1, Module::AdaptiveScore),
    kernel!(sa_adaptive_score_bf16_r1, Module::AdaptiveScore),
    kernel!(sa_adaptive_score_f16_r16, Module::AdaptiveScore),
    kernel!(sa_adaptive_score_bf16_r16, Module::AdaptiveScore),
    kernel!(sa_adaptive_select, Module::AdaptiveSelect),
    kernel!(sa_adapt_lists, Module::AdaptLists),
];

/// Forward tile shapes (head_dim, block rows), in [`KERNELS`]' order: each has an f16 and a
/// bf16 kernel per walk.
const FWD_SHAPES: [(u32, u32); 10] = [
    (64, 128),
    (64, 64),
    (96, 64),
    (128, 64),
    (256, 64),
    (512, 64),
    (64, 16),
    (96, 16),
    (128, 16),
    (256, 16),
];

/// Where the summarize kernels start in [`KERNELS`]: after the append kernel.
const SUMMARIZE_BASE: usize = COMBINE_BASE + 2 * HeadDim::SUPPORTED.len() + 1;

/// The block-summary kernel of a prefill's keys (`kernels/kv_summarize.cu`) for a dtype.
pub fn kv_summarize(dtype: DType) -> &'static KernelDesc {
    &KERNELS[SUMMARIZE_BASE + usize::from(dtype == DType::BF16)]
}

/// The adaptive scoring kernel (`kernels/adaptive_score.cu`) for a dtype, staging one query
/// row per step (`prefill_rows == false`: decode and `pooled_qk`) or
/// `SA_SCORE_ROWS_PREFILL` rows (prefill groups of `mean_k` and `minmax`).
pub fn adaptive_score(dtype: DType, prefill_rows: bool) -> &'static KernelDesc {
    &KERNELS[SUMMARIZE_BASE + 2 + 2 * usize::from(prefill_rows) + usize::from(dtype == DType::BF16)]
}

/// Where the combine kernels start in [`KERNELS`]: after both walks' forward kernels.
const COMBINE_BASE: usize = 2 * 2 * FWD_SHAPES.len();

/// The K/V append kernel (copies bits: every dtype and head_dim).
pub fn kv_append() -> &'static KernelDesc {
    &KERNELS[COMBINE_BASE + 2 * HeadDim::SUPPORTED.len()]
}

/// The adaptive block-selection kernel (scores to selection bits; one kernel for every rule,
/// grouping and sharing mode, which are run-time data in `SaAdaptSelectParams`).
pub fn adaptive_select() -> &'static KernelDesc {
    &KERNELS[SUMMARIZE_BASE + 6]
}

/// The compaction of an adaptive selection into the forward kernel's tile lists
/// (`kernels/adaptive_lists.cu`; every dtype and head_dim).
pub fn adapt_lists() -> &'static KernelDesc {
    &KERNELS[SUMMARIZE_BASE + 7]
}

/// Where the forward kernel's kv-tile walk comes from (`SaWalk` of params.h;
/// kernels/include/sparse_attn/tile_walk.cuh). Each (dtype, tile configuration) has a kernel
/// per walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FwdWalk {
    /// The block-sparse lists compiled on the host for the plan's lengths.
    Lists,
    /// Derived on the device from the run-time lengths: one plan serves every length up to
    /// its maxima (suffix `_rt`).
    Runtime,
    /// Lists written on the device for each call from the run-time lengths (adaptive
    /// selection, [`crate::adaptive::AdaptivePlan`]): the list kernels, with the run-time
    /// walk's length handling (lengths from `cu_seqlens`, one plan for every length up to its
    /// maxima).
    Device,
}

impl FwdWalk {
    /// The `SaWalk` value of the params.
    pub fn code(self) -> i32 {
        match self {
            FwdWalk::Lists | FwdWalk::Device => ffi::SA_WALK_LISTS as i32,
            FwdWalk::Runtime => ffi::SA_WALK_RUNTIME as i32,
        }
    }

    /// Whether a plan of this walk serves every length up to its maxima (the lengths come
    /// from `cu_seqlens` at run time) rather than the lengths it was compiled for.
    pub fn runtime_lengths(self) -> bool {
        self != FwdWalk::Lists
    }
}

/// The forward kernel for a dtype, tile configuration (from [`fwd_tiles`]) and walk.
/// Exhaustive: `HeadDim` only holds supported values and `fwd_tiles` only supported shapes.
pub fn attn_fwd_walk(dtype: DType, tiles: &FwdTiles, walk: FwdWalk) -> &'static KernelDesc {
    // The run-time kernels follow the list kernels in the same order.
    let base = if walk == FwdWalk::Runtime {
        2 * FWD_SHAPES.len()
    } else {
        0
    };
    &KERNELS[base + fwd_index(dtype, tiles)]
}

/// The forward kernel (compiled lists) for a dtype and tile configuration (from
/// [`fwd_tiles`]).
pub fn attn_fwd(dtype: DType, tiles: &FwdTiles) -> &'static KernelDesc {
    &KERNELS[fwd_index(dtype, tiles)]
}

/// Position of a (dtype, tile configuration) among the forward kernels of one walk.
/// Exhaustive: `HeadDim` only holds supported values and `fwd_tiles` only supported shapes.
fn fwd_index(dtype: DType, tiles: &FwdTiles) -> usize {
    let bf16 = usize::from(dtype == DType::BF16);
    let key = (tiles.head_dim, tiles.block_m);
    let Some(shape) = FWD_SHAPES.iter().position(|&s| s == key) else {
        unreachable!(
            "fwd_tiles yields no {}-row tile at head_dim {}",
            key.1, key.0
        )
    };
    2 * shape + bf16
}

/// The split-KV combine kernel for a dtype and head dimension.
pub fn attn_combine(dtype: DType, head_dim: HeadDim) -> &'static KernelDesc {
    &KERNELS[COMBINE_BASE + instance(dtype, head_dim)]
}

/// Position of a (dtype, head_dim) combine instantiation in [`KERNELS`]' combine family.
/// Exhaustive: `HeadDim` only holds supported values.
fn instance(dtype: DType, head_dim: HeadDim) -> usize {
    let d = head_dim.get();
    let Some(i) = HeadDim::SUPPORTED.iter().position(|&s| s == d) else {
        unreachable!("HeadDim admits only supported values, got {d}")
    };
    let bf16 = usize::from(dtype == DType::BF16);
    bf16 * HeadDim::SUPPORTED.len() + i
}

/// Elements per shared-memory row of a tile of `head_dim` columns: rounded up to the 64
/// elements the swizzle spans (`smem_pitch` of tile_io.cuh; head_dim 96 is stored at 128,
/// its padding never read).
pub fn smem_pitch(head_dim: u32) -> u32 {
    head_dim.div_ceil(64) * 64
}

/// Threads per block of the combine kernel (one warp per (row, head)): `SA_COMBINE_THREADS`
/// of `params.h`.
pub const COMBINE_THREADS: u32 = ffi::SA_COMBINE_THREADS;

/// What a forward launch is for: long query tiles (prefill, chunked prefill) or short ones
/// (decode steps and GQA-packed blocks), which pick different tile shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FwdPhase {
    /// Query tiles of many rows.
    Prefill,
    /// A few query rows per (sequence, head), or GQA packing.
    Decode,
    /// A decode step of at most [`ffi::SA_FWD_BLOCK_M_STEP`] (16) rows per block: a token's
    /// packed query heads (groups up to 16), or up to 16 tokens of one head. Bound by K/V
    /// bandwidth: one-warp blocks keep more K/V tiles in flight per SM.
    Step,
}

/// Tile configuration of the forward kernel: the launch constants of
/// `kernels/include/sparse_attn/params.h`, which `kernel_traits.cuh` reads too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwdTiles {
    /// The head dimension the tiles are for.
    pub head_dim: u32,
    /// Query rows per block: 128 (4 warps x 32 rows), 64 (4 warps x 16 rows) or 16 (one warp:
    /// the step shape).
    pub block_m: u32,
    /// Keys per kv tile.
    pub block_n: u32,
    /// Threads per block.
    pub threads: u32,
    /// Blocks that share one query tile, each owning `head_dim / col_splits` output columns
    /// (`FwdTraits::kColSplits`): 2 at head_dim 512, else 1. They are neighbours in the
    /// grid's x dimension, which this multiplies.
    pub col_splits: u32,
    /// K and V tile buffers (`FwdTraits::kStages`): 2 in the step shape up to head_dim
    /// `SA_FWD_STAGED_MAX_D` (128), whose loads then run two tiles ahead (3 K/V tile loads in
    /// flight while a tile is computed instead of 1), else 1.
    pub kv_stages: u32,
    /// Dynamic shared memory: the Q tile, `kv_stages` K tiles of `head_dim` columns and as
    /// many V tiles of `head_dim / col_splits` columns, 16-bit elements, rows of
    /// [`smem_pitch`] elements (`SA_FWD_SMEM_ROWS_*` rows when `col_splits` is 1).
    pub smem_bytes: u32,
}

/// The forward tiles for a head dimension and phase: a pure function, mirrored by
/// `FwdTraits` (kernel_traits.cuh) through params.h's constants.
///
/// - Prefill at head_dim 64: 128-row blocks, 32 rows per warp, so every K/V fragment read
///   from shared memory feeds two MMAs (FlashAttention-2's geometry).
/// - Decode (and head_dim 96, 128 and 256): 64-row blocks, 16 rows per warp. At head_dim 128 the
///   32-row warp tile needs O (128) and S (64) registers beside the kernel's state and still
///   spills 92 bytes at the 255-register limit on sm_90; at head_dim 256 a 16-row warp tile
///   already holds a 128-register O, with Q re-read from shared memory (96 KB per block:
///   2 CTAs per SM on sm_90, 1 on sm_80). head_dim 96 (Phi-3) is the 128 tile with 6 k16
///   steps and 12 n8 output tiles, its shared rows padded to 128 elements ([`smem_pitch`]).
/// - Step (decode steps of at most 16 rows per block, head_dim up to 256): one warp of 16 rows,
///   32 threads. A decode step reads every K/V byte once per kv group and computes little, so
///   its speed is the K/V bytes in flight per SM: the 4-warp decode block is held to 2 CTAs per
///   SM by its 255 registers per thread (one 16 KB K or V tile in flight each at head_dim 128),
///   while one-warp blocks fit 2-8 per SM. Up to head_dim 128 they are staged
///   (`kv_stages` 2: two K and two V buffers, loads two tiles ahead, so 3 tile loads are in
///   flight while a tile is computed instead of 1): 68 KB at head_dim 128, 3 blocks per SM on
///   sm_90 with 3 loads each against 6 with 1 before. head_dim 256 keeps one stage (two would
///   take 136 KB). head_dim 512 keeps the decode shape (its column split already halves each
///   block's work).
/// - head_dim 512 (Gemma 4 global layers): a 16-row warp tile of O would need 256 f32
///   registers per lane, so two blocks share each query tile, each computing the whole
///   S = Q.K^T and the output for its half of V's columns (a head_dim-256-sized O); 160 KB of
///   shared memory per block (Q and K 64 KB each, V's half 32 KB): 1 CTA per SM on sm_80
///   (163 KB) and sm_90, and above the 99-100 KB of sm_86/sm_89, where the launch is an
///   `Error::Unsupported` (the CUDA backend checks the device's opt-in limit).
pub fn fwd_tiles(head_dim: HeadDim, phase: FwdPhase) -> FwdTiles {
    let d = head_dim.get();
    let (block_m, rows, threads, kv_stages) = match (phase, d) {
        (FwdPhase::Prefill, 64) => (
            ffi::SA_FWD_BLOCK_M_PREFILL,
            ffi::SA_FWD_SMEM_ROWS_PREFILL,
            ffi::SA_FWD_THREADS,
            1,
        ),
        (FwdPhase::Step, ..=ffi::SA_FWD_STAGED_MAX_D) => (
            ffi::SA_FWD_BLOCK_M_STEP,
            ffi::SA_FWD_SMEM_ROWS_STEP_STAGED,
            ffi::SA_FWD_THREADS_STEP,
            ffi::SA_FWD_KV_STAGES_STEP,
        ),
        (FwdPhase::Step, ..=256) => (
            ffi::SA_FWD_BLOCK_M_STEP,
            ffi::SA_FWD_SMEM_ROWS_STEP,
            ffi::SA_FWD_THREADS_STEP,
            1,
        ),
        _ => (
            ffi::SA_FWD_BLOCK_M_DECODE,
            ffi::SA_FWD_SMEM_ROWS_DECODE,
            ffi::SA_FWD_THREADS,
            1,
        ),
    };
    let block_n = ffi::SA_FWD_BLOCK_N;
    let col_splits = if d > 256 { 2 } else { 1 };
    let kv_rows = kv_stages * block_n;
    FwdTiles {
        head_dim: d,
        block_m,
        block_n,
        threads,
        col_splits,
        kv_stages,
        smem_bytes: (rows - kv_rows) * smem_pitch(d) * 2 + kv_rows * smem_pitch(d / col_splits) * 2,
    }
}

/// Launch descriptions of the test-only kernels (`kernels/tests/`, feature `test-kernels`):
/// the emulator self-tests, for running them on a GPU against the emulator's vectors, and the
/// canaries, deliberately broken forward kernels the tests must see fail
/// (`AttnPlan::with_kernel`).
#[cfg(feature = "test-kernels")]
#[doc(hidden)]
pub mod test_kernels {
    use super::{FwdTiles, KernelDesc, Module};
    use crate::emu::selftest as st;

    macro_rules! test_kernel {
        ($static:ident, $name:ident, $stem:literal) => {
            /// The launchable description of this test kernel (GPU or emulator).
            pub static $static: KernelDesc = KernelDesc {
                name: stringify!($name),
                module: Module::Test($stem),
                emu_entry: st::$name,
            };
        };
    }

    test_kernel!(MMA_KERNEL, sa_selftest_mma, "selftest_mma");
    test_kernel!(GEMM_KERNEL, sa_selftest_gemm, "selftest_gemm");
    test_kernel!(LDMATRIX_KERNEL, sa_selftest_ldmatrix, "selftest_ldmatrix");
    test_kernel!(CP_ASYNC_KERNEL, sa_selftest_cp_async, "selftest_cp_async");
    test_kernel!(WARP_KERNEL, sa_selftest_warp, "selftest_warp");
    test_kernel!(CONVERT_KERNEL, sa_selftest_convert, "selftest_convert");
    test_kernel!(
        CANARY_SWAP_M128,
        sa_test_attn_fwd_canary_f16_hd64_m128,
        "attention_canary"
    );
    test_kernel!(
        CANARY_SWAP_M64,
        sa_test_attn_fwd_canary_f16_hd64_m64,
        "attention_canary"
    );
    test_kernel!(
        CANARY_SKIP_M128,
        sa_test_attn_fwd_skip_empty_rows_f16_hd64_m128,
        "attention_canary"
    );
    test_kernel!(
        CANARY_SKIP_M64,
        sa_test_attn_fwd_skip_empty_rows_f16_hd64_m64,
        "attention_canary"
    );
    test_kernel!(
        CANARY_RESCALE_M128,
        sa_test_attn_fwd_skip_rescale_f16_hd64_m128,
        "attention_canary"
    );
    test_kernel!(
        CANARY_RESCALE_M64,
        sa_test_attn_fwd_skip_rescale_f16_hd64_m64,
        "attention_canary"
    );
    test_kernel!(
        CANARY_ALIBI_M128,
        sa_test_attn_fwd_alibi_top_left_f16_hd64_m128,
        "attention_canary"
    );
    test_kernel!(
        CANARY_ALIBI_M64,
        sa_test_attn_fwd_alibi_top_left_f16_hd64_m64,
        "attention_canary"
    );
    test_kernel!(
        CANARY_SWAP_M16,
        sa_test_attn_fwd_canary_f16_hd64_m16,
        "attention_canary"
    );
    test_kernel!(
        CANARY_SKIP_M16,
        sa_test_attn_fwd_skip_empty_rows_f16_hd64_m16,
        "attention_canary"
    );
    test_kernel!(
        CANARY_RESCALE_M16,
        sa_test_attn_fwd_skip_rescale_f16_hd64_m16,
        "attention_canary"
    );
    test_kernel!(
        CANARY_ALIBI_M16,
        sa_test_attn_fwd_alibi_top_left_f16_hd64_m16,
        "attention_canary"
    );
    test_kernel!(
        CANARY_EARLY_WAIT_M16,
        sa_test_attn_fwd_early_wait_f16_hd64_m16,
        "attention_canary"
    );

    test_kernel!(
        SCORE_WRONG_BLOCK,
        sa_test_adaptive_score_wrong_block_f16_r1,
        "adaptive_score_canary"
    );
    test_kernel!(
        SCORE_MAX_AS_MIN,
        sa_test_adaptive_score_max_as_min_f16_r1,
        "adaptive_score_canary"
    );
    /// The selection kernel with candidates `J·B < max_p` instead of `J·B <= max_p`.
    pub static SELECT_STRICT_CANDIDATES: KernelDesc = KernelDesc {
        name: "sa_test_adaptive_select_strict_candidates",
        module: Module::Test("adaptive_select_canary"),
        emu_entry: select_entries::sa_test_adaptive_select_strict_candidates,
    };
    /// The selection kernel forcing one `keep_local` block too many.
    pub static SELECT_LOCAL_OFF_BY_ONE: KernelDesc = KernelDesc {
        name: "sa_test_adaptive_select_local_off_by_one",
        module: Module::Test("adaptive_select_canary"),
        emu_entry: select_entries::sa_test_adaptive_select_local_off_by_one,
    };
    /// The selection kernel whose `top_p` drops the crossing block.
    pub static SELECT_DROP_CROSSING: KernelDesc = KernelDesc {
        name: "sa_test_adaptive_select_drop_crossing",
        module: Module::Test("adaptive_select_canary"),
        emu_entry: select_entries::sa_test_adaptive_select_drop_crossing,
    };

    mod select_entries {
        extern "C" {
            pub fn sa_test_adaptive_select_strict_candidates(p: *const std::ffi::c_void);
            pub fn sa_test_adaptive_select_local_off_by_one(p: *const std::ffi::c_void);
            pub fn sa_test_adaptive_select_drop_crossing(p: *const std::ffi::c_void);
        }
    }

    /// The f16/hd64 forward kernel with P's a2 and a4 swapped, in the shape of `tiles` (the
    /// plan's [`FwdTiles`], head_dim 64).
    pub fn canary_swap_a2a4(tiles: &FwdTiles) -> &'static KernelDesc {
        assert_eq!(tiles.head_dim, 64, "the canaries are f16/hd64 kernels");
        match tiles.block_m {
            128 => &CANARY_SWAP_M128,
            64 => &CANARY_SWAP_M64,
            _ => &CANARY_SWAP_M16,
        }
    }

    /// The f16/hd64 forward kernel that does not rescale the output when a row's running max
    /// moves, in the shape of `tiles` (head_dim 64).
    pub fn canary_skip_rescale(tiles: &FwdTiles) -> &'static KernelDesc {
        assert_eq!(tiles.head_dim, 64, "the canaries are f16/hd64 kernels");
        match tiles.block_m {
            128 => &CANARY_RESCALE_M128,
            64 => &CANARY_RESCALE_M64,
            _ => &CANARY_RESCALE_M16,
        }
    }

    /// The f16/hd64 staged step kernel whose mainloop waits leave one K/V load too many in
    /// flight (a tile read before its copy landed); `tiles` must be the staged step shape
    /// (head_dim 64, 16 rows, two stages).
    pub fn canary_early_wait(tiles: &FwdTiles) -> &'static KernelDesc {
        assert_eq!(
            (tiles.head_dim, tiles.block_m, tiles.kv_stages),
            (64, 16, 2),
            "the early-wait canary is the f16/hd64 staged step kernel"
        );
        &CANARY_EARLY_WAIT_M16
    }

    /// The f16/hd64 forward kernel whose ALiBi distances use top-left aligned query
    /// positions (the row index) instead of bottom-right aligned ones, in the shape of
    /// `tiles` (head_dim 64).
    pub fn canary_alibi_top_left(tiles: &FwdTiles) -> &'static KernelDesc {
        assert_eq!(tiles.head_dim, 64, "the canaries are f16/hd64 kernels");
        match tiles.block_m {
            128 => &CANARY_ALIBI_M128,
            64 => &CANARY_ALIBI_M64,
            _ => &CANARY_ALIBI_M16,
        }
    }

    /// The f16/hd64 forward kernel that skips the output store of empty rows, in the shape
    /// of `tiles` (head_dim 64).
    pub fn canary_skip_empty_rows(tiles: &FwdTiles) -> &'static KernelDesc {
        assert_eq!(tiles.head_dim, 64, "the canaries are f16/hd64 kernels");
        match tiles.block_m {
            128 => &CANARY_SKIP_M128,
            64 => &CANARY_SKIP_M64,
            _ => &CANARY_SKIP_M16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_a_pure_function_of_head_dim_and_phase() {
        for d in HeadDim::SUPPORTED {
            let hd = HeadDim::new(d).unwrap();
            for phase in [FwdPhase::Prefill, FwdPhase::Decode, FwdPhase::Step] {
                let t = fwd_tiles(hd, phase);
                assert_eq!(t, fwd_tiles(hd, phase));
                let threads = if t.block_m == 16 { 32 } else { 128 };
                assert_eq!((t.head_dim, t.block_n, t.threads), (d, 64, threads));
                assert_eq!(
                    t.block_m,
                    t.threads / 32 * if t.block_m == 128 { 32 } else { 16 }
                );
                // Q tile + kv_stages K and V tiles of 16-bit elements: two in the step shape
                // up to head_dim 128.
                let v_cols = d / t.col_splits;
                let staged = phase == FwdPhase::Step && d <= 128;
                assert_eq!(t.kv_stages, if staged { 2 } else { 1 }, "hd{d} {phase:?}");
                let kv_rows = t.kv_stages * t.block_n;
                assert_eq!(
                    t.smem_bytes,
                    (t.block_m + kv_rows) * smem_pitch(d) * 2 + kv_rows * smem_pitch(v_cols) * 2
                );
                assert_eq!(t.col_splits, if d == 512 { 2 } else { 1 });
                for dtype in [DType::F16, DType::BF16] {
                    let k = attn_fwd(dtype, &t);
                    let dt = if dtype == DType::F16 { "f16" } else { "bf16" };
                    assert_eq!(k.name, format!("sa_attn_fwd_{dt}_hd{d}_m{}", t.block_m));
                    assert!(std::ptr::eq(k, attn_fwd_walk(dtype, &t, FwdWalk::Lists)));
                    let rt = attn_fwd_walk(dtype, &t, FwdWalk::Runtime);
                    assert_eq!(rt.name, format!("{}_rt", k.name));
                    // Both walks live in the head dimension's file, which defines the pair
                    // with one entry line.
                    let file = Module::AttnFwd(FwdFile::of(hd));
                    assert_eq!((k.module, rt.module), (file, file), "{}", k.name);
                    let src = std::fs::read_to_string(format!(
                        "{}/kernels/{}.cu",
                        env!("CARGO_MANIFEST_DIR"),
                        file.stem()
                    ))
                    .unwrap();
                    assert_eq!(
                        src.matches(&format!("({},", k.name)).count(),
                        1,
                        "{}",
                        k.name
                    );
                }
            }
        }
        let hd64 = HeadDim::new(64).unwrap();
        assert_eq!(fwd_tiles(hd64, FwdPhase::Prefill).block_m, 128);
        assert_eq!(fwd_tiles(hd64, FwdPhase::Decode).block_m, 64);
        for d in [64, 96, 128, 256] {
            let t = fwd_tiles(HeadDim::new(d).unwrap(), FwdPhase::Step);
            assert_eq!((t.block_m, t.threads), (16, 32), "hd{d}");
        }
        let hd512 = HeadDim::new(512).unwrap();
        assert_eq!(
            fwd_tiles(hd512, FwdPhase::Step),
            fwd_tiles(hd512, FwdPhase::Decode)
        );
        // Every tile up to head_dim 256 fits the smallest per-block shared memory of the
        // targets (99 KB, sm_86/sm_89); head_dim 512 fits sm_80's 163 KB.
        for d in HeadDim::SUPPORTED {
            let hd = HeadDim::new(d).unwrap();
            for phase in [FwdPhase::Prefill, FwdPhase::Decode, FwdPhase::Step] {
                let limit = if d <= 256 { 99 } else { 163 };
                assert!(
                    fwd_tiles(hd, phase).smem_bytes <= limit * 1024,
                    "hd{d} {phase:?}"
                );
            }
        }
        for (dtype, dt) in [(DType::F16, "f16"), (DType::BF16, "bf16")] {
            assert_eq!(kv_summarize(dtype).name, format!("sa_kv_summarize_{dt}"));
            assert_eq!(
                adaptive_score(dtype, false).name,
                format!("sa_adaptive_score_{dt}_r1")
            );
            assert_eq!(
                adaptive_score(dtype, true).name,
                format!("sa_adaptive_score_{dt}_r{}", ffi::SA_SCORE_ROWS_PREFILL)
            );
        }
        assert_eq!(kv_append().name, "sa_kv_append");
        assert_eq!(fwd_tiles(hd512, FwdPhase::Prefill).smem_bytes, 160 * 1024);
    }
}
