//! # sparse-attn-candle
//!
//! [sparse-attn](sparse_attn)'s block-sparse attention kernels for candle: sparse attention as
//! a candle op over [`candle_core::Tensor`]s, and a paged KV cache whose steps take and return
//! candle tensors. A crate of its own, as candle-flash-attn is, so engines that do not use
//! candle never compile it.
//!
//! - [`SparseAttn`]: the op ([`candle_core::CustomOp3`]) with its options — any pattern, head
//!   set or layer ([`SparseAttn::from_layer`]), scale, softcap, learnable sink logits, ALiBi
//!   slopes, varlen batches through `cu_seqlens` tensors ([`Varlen`]). q, k and v are in
//!   candle's `[batch, seq, heads, head_dim]` layout (varlen: `[total_tokens, heads,
//!   head_dim]`), f16 or bf16, any strides.
//! - Drop-in functions with the signatures of candle-flash-attn ([`flash_attn`],
//!   [`flash_attn_windowed`], [`flash_attn_alibi`], [`flash_attn_alibi_windowed`],
//!   [`flash_attn_alibi_windowed_softcap`], [`flash_attn_varlen`],
//!   [`flash_attn_varlen_windowed`], [`flash_attn_varlen_alibi`],
//!   [`flash_attn_varlen_alibi_windowed`]): switching is a change of the `use` line.
//! - [`CandleKvCache`]: the paged cache of [`sparse_attn::kv_cache`] (per-layer capacities from the
//!   layer plan, rings for windowed layers) with a step API over candle tensors: reserve the
//!   step's positions once ([`CandleKvCache::begin_step`]), then per layer append its K/V and
//!   attend through the block table with the layer's pattern
//!   ([`CandleKvCache::append_attend`]).
//!
//! # Devices
//!
//! On a CPU device the op runs the very CUDA kernels on the crate's CPU **emulator**
//! ([`sparse_attn::emu`]): exact (same tiling, same fragment arithmetic as the GPU) but about a
//! thousand times slower than a GPU. It is the testing path — models written against candle
//! test their attention on CPU with the kernels they will run on the GPU. Inputs with strides
//! are gathered into contiguous host buffers first.
//!
//! With the feature `cuda` (candle's `cuda` feature; its kernels need nvcc), a tensor on
//! a CUDA device runs on candle's own stream (`CudaDevice::cuda_stream`) on candle's own
//! buffers: no host round trip for q, k, v or the output.
//! Inputs that are not one whole contiguous buffer are copied on the device first (candle's
//! strided copy); varlen `cu_seqlens`, sink logits and ALiBi slopes are read to the host
//! (a few integers or floats) because the plan compiles them.
//!
//! # Costs
//!
//! Each [`SparseAttn::forward`] builds an [`sparse_attn::AttnPlan`] for its shapes (compiles
//! the pattern's block-sparse metadata on the host: what `AttnPlan::with_patterns` costs,
//! which benches/host_overhead.rs measures) and, on CUDA, uploads it.
//! [`CandleKvCache`] builds one run-time plan per (layer, batch size) for all its steps; on
//! CUDA it still uploads that plan's metadata and the block table at every step (a device-side
//! plan kept across steps, [`sparse_attn::backend::GpuPlan::launch_step`], is the next step).
//!
//! # Errors
//!
//! Bad input is a candle error whose message names what is wrong before anything runs: an
//! element type other than f16/bf16 (f32 and f64 are not supported), a rank other than 4 (3
//! for varlen), tensors on different devices, a head_dim without a kernel, mismatched batch,
//! head or length dimensions. The crate's own [`sparse_attn::Error`] travels inside
//! ([`candle_core::Error::Wrapped`]).

#![warn(missing_docs)]

mod cache;
#[cfg(feature = "cuda")]
mod cuda;
mod op;

pub use cache::{CacheStep, CandleKvCache};
pub use op::{
    flash_attn, flash_attn_alibi, flash_attn_alibi_windowed, flash_attn_alibi_windowed_softcap,
    flash_attn_varlen, flash_attn_varlen_alibi, flash_attn_varlen_alibi_windowed,
    flash_attn_varlen_windowed, flash_attn_windowed, window_pattern, SparseAttn, Varlen,
};

/// The element types the cache stores (f16, bf16) with what each device path needs of them.
#[cfg(not(feature = "cuda"))]
pub(crate) trait Elem: sparse_attn::Element + candle_core::WithDType {}
#[cfg(not(feature = "cuda"))]
impl<T: sparse_attn::Element + candle_core::WithDType> Elem for T {}
/// The element types the cache stores (f16, bf16) with what each device path needs of them.
#[cfg(feature = "cuda")]
pub(crate) trait Elem:
    sparse_attn::Element
    + candle_core::WithDType
    + candle_core::cuda_backend::CudaDType
    + sparse_attn::cudarc::driver::DeviceRepr
    + sparse_attn::cudarc::driver::ValidAsZeroBits
{
}
#[cfg(feature = "cuda")]
impl<T> Elem for T where
    T: sparse_attn::Element
        + candle_core::WithDType
        + candle_core::cuda_backend::CudaDType
        + sparse_attn::cudarc::driver::DeviceRepr
        + sparse_attn::cudarc::driver::ValidAsZeroBits
{
}

/// This crate's error as a candle error (the message is kept; the value travels inside
/// [`candle_core::Error::Wrapped`]).
pub(crate) fn to_candle(e: sparse_attn::Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// The crate's element type of a candle dtype: f16 and bf16 only, else
/// `Error::Unsupported` naming the dtype and the tensor.
pub(crate) fn elem_dtype(
    name: &str,
    dt: candle_core::DType,
) -> sparse_attn::Result<sparse_attn::DType> {
    match dt {
        candle_core::DType::F16 => Ok(sparse_attn::DType::F16),
        candle_core::DType::BF16 => Ok(sparse_attn::DType::BF16),
        other => Err(sparse_attn::Error::Unsupported(format!(
            "{name} has dtype {other:?}; the kernels take f16 or bf16 (f32 and f64 are not \
             supported: cast with to_dtype)"
        ))),
    }
}
