//! # sparse-attn
//!
//! Block-sparse flash attention for Rust inference engines: hand-written CUDA C++ tensor-core
//! kernels (`kernels/`), safe launchers over cudarc, and a CPU emulator that runs the very same
//! kernel source so everything is tested without a GPU.
//!
//! Layers, from raw to safe:
//! - [`ffi`]: the C params structs shared with the kernels (bindgen-generated).
//! - [`kernels`]: the registry of compiled instantiations and the [`kernels::Launch`]
//!   description both backends execute.
//! - [`emu`] (CPU emulator) and [`backend`] (CUDA via cudarc, cuBLAS dense reference).
//! - [`attention`]: validated plans ([`AttnPlan`]) and the safe forward API.
//! - [`mod@reference`]: the f64 CPU oracle used by the tests.
//! - [`adaptive`]: content-adaptive components (docs/adaptive.md): their parameters and
//!   f64 reference selection; not yet wired into patterns, kernels or the CLI.
//!
//! Beside them: [`pattern`] (the pattern language of docs/patterns.md and its compiler to
//! block-sparse metadata: where the sparsity is) and [`kv_cache`] (the paged cache, its rings
//! for windowed layers, the append kernel and the decode driver: where the memory is).
//!
//! For candle, the workspace crate `sparse-attn-candle` (crates/sparse-attn-candle) wraps the
//! kernels as a candle op and the paged cache in a step API over candle tensors.

#![warn(missing_docs)]

pub mod adaptive;
pub mod attention;
pub mod backend;
pub mod emu;
pub mod error;
pub mod ffi;
pub mod kernels;
pub mod kv_cache;
pub mod pattern;
pub mod reference;
pub mod shape;

pub use attention::{AttnPlan, Element, EmuRun};
pub use error::{Error, Result};
pub use shape::{AttnOptions, AttnProblem, DType, HeadDim, SeqLens};

/// The README's Rust example, compiled and run as a doctest so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Re-exported so engines built on cudarc 0.19 (candle, mistral.rs) pass their own
/// `CudaStream` / `CudaSlice` values straight in.
pub use cudarc;
