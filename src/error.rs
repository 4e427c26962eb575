//! The crate's one error type. Every public entry point validates its input at the boundary
//! and returns one of these instead of panicking or launching a kernel on bad data.

use thiserror::Error;

/// Everything that can go wrong in sparse-attn.
#[derive(Debug, Error)]
pub enum Error {
    /// A tensor, length or head count does not fit the problem description.
    #[error("shape error: {0}")]
    Shape(String),
    /// A valid request the kernels do not implement (for example head_dim 96).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An attention pattern whose parameters are invalid or do not fit the shapes.
    #[error("invalid pattern: {0}")]
    Pattern(String),
    /// A model configuration (a Hugging Face `config.json`) with a field that is malformed or
    /// missing, or that asks for something this crate cannot honour; `field` names it
    /// (`layer_types[3]` for one entry of a list), and so does `message`.
    #[error("config.json: {message}")]
    Config {
        /// The field, as the config spells it.
        field: String,
        /// What is wrong with it, naming the field.
        message: String,
    },
    /// A tensor layout the kernels cannot read or write safely (strides that overlap
    /// elements, are not whole 16-byte chunks, or reach past the buffer); `tensor` names the
    /// tensor (`q`, `k`, `v`, `out`, `lse`) and so does the message.
    #[error("layout of {tensor}: {message}")]
    Layout {
        /// The tensor.
        tensor: &'static str,
        /// What is wrong with its layout.
        message: String,
    },
    /// A paged KV cache operation that cannot be done (pool exhausted, sequence unknown,
    /// capacity exceeded, malformed block table); the cache is unchanged after it.
    #[error("KV cache: {0}")]
    Cache(String),
    /// The CPU emulator reported a kernel fault (out-of-bounds access, barrier divergence, ...).
    #[error("emulator: {0}")]
    Emulator(#[from] crate::emu::EmuError),
    /// A buffer or stream that belongs to another device or CUDA context than the [`Gpu`]
    /// it was passed with.
    ///
    /// [`Gpu`]: crate::backend::Gpu
    #[error("wrong device: {0}")]
    WrongDevice(String),
    /// No usable CUDA driver or device.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// The crate was built without nvcc, so there are no GPU kernels to load.
    #[error("GPU kernels not built: {0}")]
    KernelsNotBuilt(String),
    /// An error from the CUDA driver API.
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// An error from cuBLAS (dense reference path).
    #[error("cuBLAS: {0}")]
    Cublas(#[from] cudarc::cublas::result::CublasError),
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
