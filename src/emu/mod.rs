//! The CPU emulator backend: runs the kernels' own CUDA C++ source on the host.
//!
//! The same `.cu` file is compiled twice: by nvcc for the GPU, and by the host C++ compiler
//! against a small shim (`kernels/include/sparse_attn/emu/`) whose runtime lives in
//! `kernels/emu/`. This module is the Rust face of that runtime: guarded buffers
//! ([`GuardedBuffer`]), the launch configuration ([`LaunchConfig`], [`Schedule`]), one launch
//! entry point ([`launch`]) and typed errors ([`EmuError`]).
//!
//! # How a launch runs
//!
//! - **Fibers.** Every CUDA thread is a user-space fiber with its own guard-paged 64 KiB stack;
//!   `threadIdx` and friends read the running fiber's state. Blocks are spread over worker OS
//!   threads ([`LaunchConfig::workers`]); a block runs entirely on one worker.
//! - **Scheduling.** Fibers switch only at synchronisation points (`__syncthreads`,
//!   `__syncwarp`, shuffles, mma, ldmatrix, `cp.async.wait_group`, thread exit), in the order
//!   [`Schedule`] selects: forward, reverse or a seeded random permutation redrawn at every
//!   scheduling round. A correct kernel is bit-identical under every order; a kernel that
//!   relies on implicit warp lock-step is not.
//! - **Rendezvous.** Warp collectives are keyed by (operation, call site, mask): the last lane
//!   to arrive computes for all, with the exact per-lane fragment layouts of PTX (mma
//!   m16n8k16/m16n8k8, ldmatrix x1/x2/x4 with and without `.trans`, `shfl.sync` with
//!   segments). Lanes outside their mask, mismatched collectives and lanes missing from an mma
//!   are reported. `__syncthreads` is keyed by call site; divergent barriers and deadlocks are
//!   reported with every blocked call site instead of hanging.
//! - **Adversarial cp.async.** A copy poisons its destination (all-ones bytes: NaN in f16,
//!   bf16 and f32) at issue and lands only when its group is retired by `cp_async_wait<N>`,
//!   which retires the *oldest* groups until at most N remain. Copies pending at thread exit,
//!   overlapping in-flight destinations and `.cg` copies other than 16 bytes are reported.
//!   [`LaunchConfig::eager_cp_async`] copies at issue instead, to diff the two.
//! - **Shadow memory.** Kernels reach shared memory only through `sa::Smem` and the arch
//!   layer, so every access is checked: loads (ldmatrix rows, `sa::arch::lds`) report bytes
//!   nobody wrote, bytes whose cp.async has not landed or landed in another thread's wait with
//!   no `__syncthreads` since, and bytes another thread stored with no barrier (inside a warp:
//!   no `__syncwarp`) since; stores (`sa::arch::sts`) and cp.async report overwriting bytes
//!   another thread read or stored since the last barrier ([`EmuError::Race`]).
//! - **Poisoned outputs, alignment, limits, numerics.** The attention run paths fill their
//!   outputs with NaN before a launch; vector accesses are checked for natural alignment;
//!   launches respect the shared-memory limit of their [`TargetArch`]; [`Numerics::Pessimistic`]
//!   truncates tensor-core sums and makes `ex2` flush and err by 2 ulp; a thread that exits
//!   past a barrier others wait at is reported.
//! - **Guard pages.** [`GuardedBuffer`]s end flush against an inaccessible page, dynamic shared
//!   memory (poisoned with 0xFF, never zero) too, and so does every fiber stack: a stray access
//!   is reported with kernel, block, thread, address and the buffer it overran.
//!
//! # Rules for host-runnable kernels
//!
//! The rules a kernel follows so that this emulator can run and check it are listed once, in
//! `kernels/README.md` ("Rules for kernel authors"); the semantics the emulator reproduces
//! are in `docs/emulator.md`.
//!
//! Global memory a kernel touches should come from [`GuardedBuffer`]: only those buffers are
//! bounds-checked, and a cp.async source must lie inside one.

use std::ffi::{c_void, CString};
use std::fmt;
use std::marker::PhantomData;

use thiserror::Error;

#[cfg(feature = "test-kernels")]
#[doc(hidden)]
pub mod selftest;

/// A kernel's host entry, as `SA_KERNEL` declares it.
pub type KernelFn = unsafe extern "C" fn(params: *const c_void);

/// Raw mirrors of `kernels/include/sparse_attn/emu/api.h` (hand-written; layouts asserted
/// here and by `static_assert`s in `kernels/emu/executor.cpp`).
pub mod sys {
    use std::ffi::{c_char, c_void};

    /// `sa_emu_launch_config`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct LaunchConfig {
        /// Blocks per grid dimension.
        pub grid: [u32; 3],
        /// Threads per block dimension.
        pub block: [u32; 3],
        /// Dynamic shared memory per block, in bytes.
        pub dynamic_smem_bytes: u32,
        /// `sa_emu_schedule`: 0 forward, 1 reverse, 2 random.
        pub schedule: u32,
        /// Seed of the random schedule.
        pub seed: u64,
        /// 1: copy at issue.
        pub eager_cp_async: u32,
        /// Worker OS threads (0 = all cores).
        pub workers: u32,
        /// Compute capability whose launch limits apply (`10 * major + minor`).
        pub arch: u32,
        /// `sa_emu_numerics`: 0 exact, 1 pessimistic.
        pub numerics: u32,
    }

    /// Length of [`Report::message`].
    pub const MESSAGE_LEN: usize = 2048;

    /// `sa_emu_report`.
    #[repr(C)]
    pub struct Report {
        /// `sa_emu_error_code`.
        pub code: i32,
        /// `blockIdx` of the failing thread.
        pub block: [u32; 3],
        /// `threadIdx` of the failing thread.
        pub thread: [u32; 3],
        /// NUL-terminated description of the fault.
        pub message: [c_char; MESSAGE_LEN],
    }

    /// `sa_emu_error_code` values.
    pub const OK: i32 = 0;
    /// Invalid launch configuration.
    pub const ERR_CONFIG: i32 = 1;
    /// Out-of-bounds access.
    pub const ERR_OUT_OF_BOUNDS: i32 = 2;
    /// Barrier divergence or deadlock.
    pub const ERR_BARRIER: i32 = 3;
    /// Warp collective misuse.
    pub const ERR_WARP: i32 = 4;
    /// cp.async misuse.
    pub const ERR_CP_ASYNC: i32 = 5;
    /// Misaligned address.
    pub const ERR_MISALIGNED: i32 = 6;
    /// Kernel trap.
    pub const ERR_TRAP: i32 = 7;
    /// Emulator failure.
    pub const ERR_INTERNAL: i32 = 8;
    /// Unsynchronised shared-memory access between threads.
    pub const ERR_RACE: i32 = 9;
    /// Read of shared memory no thread wrote.
    pub const ERR_UNINITIALIZED: i32 = 10;

    const _: () = assert!(std::mem::size_of::<LaunchConfig>() == 56);
    const _: () = assert!(std::mem::align_of::<LaunchConfig>() == 8);
    const _: () = assert!(std::mem::size_of::<Report>() == 2076);

    extern "C" {
        /// Runs `f` with `params` on every emulated thread; fills `report` on failure.
        pub fn sa_emu_launch(
            f: super::KernelFn,
            kernel_name: *const c_char,
            config: *const LaunchConfig,
            params: *const c_void,
            params_size: usize,
            report: *mut Report,
        ) -> i32;
        /// A guarded, zero-filled allocation of `bytes` (null on failure).
        pub fn sa_emu_alloc(bytes: usize, label: *const c_char) -> *mut c_void;
        /// Frees an allocation of `sa_emu_alloc`.
        pub fn sa_emu_free(ptr: *mut c_void);
    }
}

/// Order in which the emulator resumes runnable threads. A correct kernel gives identical
/// results under every order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Schedule {
    /// Ascending linear thread id (warp 0 lane 0 first).
    #[default]
    Forward,
    /// Descending linear thread id.
    Reverse,
    /// A seeded shuffle of warps and lanes, redrawn at every scheduling round (mixed with the
    /// block index, so a block's order does not depend on which worker runs it).
    Random(u64),
}

/// The GPU whose launch limits an emulated launch must respect: a launch that could not run
/// on it (too much dynamic shared memory per block) fails with [`EmuError::Config`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TargetArch {
    /// sm_80 (A100): 163 KB of dynamic shared memory per block. The default: the oldest
    /// architecture the kernels support.
    #[default]
    Sm80,
    /// sm_86 (RTX 30, A10, A40): 99 KB.
    Sm86,
    /// sm_89 (RTX 40, L4, L40): 99 KB.
    Sm89,
    /// sm_90 (H100, H200): 227 KB.
    Sm90,
}

impl TargetArch {
    /// Every target, oldest first.
    pub const ALL: [TargetArch; 4] = [
        TargetArch::Sm80,
        TargetArch::Sm86,
        TargetArch::Sm89,
        TargetArch::Sm90,
    ];

    /// The compute capability as `10 * major + minor`.
    pub fn compute_capability(self) -> u32 {
        match self {
            TargetArch::Sm80 => 80,
            TargetArch::Sm86 => 86,
            TargetArch::Sm89 => 89,
            TargetArch::Sm90 => 90,
        }
    }

    /// Largest dynamic shared memory per block (with the opt-in attribute), in bytes.
    pub fn max_dynamic_smem(self) -> u32 {
        match self {
            TargetArch::Sm80 => 163 * 1024,
            TargetArch::Sm86 | TargetArch::Sm89 => 99 * 1024,
            TargetArch::Sm90 => 227 * 1024,
        }
    }
}

/// The arithmetic of emulated tensor cores and `ex2.approx`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Numerics {
    /// mma sums its products in ascending k in f32 (round to nearest) and adds C last;
    /// `exp2` is exact.
    #[default]
    Exact,
    /// At least as bad as the hardware: mma adds C first, then the products in descending k,
    /// every partial sum truncated toward zero; `ex2.approx.ftz` flushes subnormal inputs and
    /// results to zero and errs by up to 2 ulp. Kernels must pass their tolerances under it.
    Pessimistic,
}

/// One emulated launch: geometry plus emulator options.
#[derive(Clone, Copy, Debug)]
pub struct LaunchConfig {
    /// Blocks per grid dimension.
    pub grid: [u32; 3],
    /// Threads per block dimension.
    pub block: [u32; 3],
    /// Dynamic shared memory per block, in bytes.
    pub dynamic_smem_bytes: u32,
    /// Order in which runnable threads resume.
    pub schedule: Schedule,
    /// Copy at issue instead of poisoning and landing at the wait (for diffing).
    pub eager_cp_async: bool,
    /// Worker OS threads for blocks (0 = all cores).
    pub workers: u32,
    /// The GPU whose launch limits apply.
    pub arch: TargetArch,
    /// Tensor-core and `ex2.approx` arithmetic.
    pub numerics: Numerics,
}

impl LaunchConfig {
    /// A launch with the default options: forward schedule, adversarial cp.async, all cores,
    /// sm_80 limits, exact numerics.
    pub fn new(grid: [u32; 3], block: [u32; 3], dynamic_smem_bytes: u32) -> Self {
        Self::with_options(grid, block, dynamic_smem_bytes, &EmuOptions::default())
    }

    fn raw(&self) -> sys::LaunchConfig {
        let (schedule, seed) = match self.schedule {
            Schedule::Forward => (0, 0),
            Schedule::Reverse => (1, 0),
            Schedule::Random(s) => (2, s),
        };
        sys::LaunchConfig {
            grid: self.grid,
            block: self.block,
            dynamic_smem_bytes: self.dynamic_smem_bytes,
            schedule,
            seed,
            eager_cp_async: u32::from(self.eager_cp_async),
            workers: self.workers,
            arch: self.arch.compute_capability(),
            numerics: match self.numerics {
                Numerics::Exact => 0,
                Numerics::Pessimistic => 1,
            },
        }
    }
}

/// Where and what: the emulator's report of one failed launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What went wrong, with kernel, block, thread and call sites (may span several lines).
    pub message: String,
    /// `blockIdx` of the failing thread (zeros when no thread is involved).
    pub block: [u32; 3],
    /// `threadIdx` of the failing thread.
    pub thread: [u32; 3],
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A fault the emulator detected in a launch: one variant per `sa_emu_error_code`.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum EmuError {
    /// Invalid launch configuration (zero or oversized geometry, too much shared memory...).
    #[error("invalid launch configuration: {0}")]
    Config(Fault),
    /// A global or shared memory access outside its buffer (guard page or bounds check).
    #[error("out-of-bounds access: {0}")]
    OutOfBounds(Fault),
    /// Divergent `__syncthreads` or a deadlock.
    #[error("barrier divergence or deadlock: {0}")]
    Barrier(Fault),
    /// A warp collective with a missing, exited or mismatched lane, or a bad mask.
    #[error("warp collective misuse: {0}")]
    Warp(Fault),
    /// cp.async misuse: read before the wait, missing barrier, overlap, bad size...
    #[error("cp.async misuse: {0}")]
    CpAsync(Fault),
    /// A misaligned ldmatrix row, cp.async, shared-memory or global vector access.
    #[error("misaligned address: {0}")]
    Misaligned(Fault),
    /// Threads access the same shared memory with no barrier (or `__syncwarp`) between.
    #[error("shared-memory race: {0}")]
    Race(Fault),
    /// A read of shared memory no thread of the block wrote.
    #[error("uninitialised shared memory: {0}")]
    Uninitialized(Fault),
    /// A kernel-side assertion (`sa::emu::trap`) or an arithmetic exception.
    #[error("kernel trap: {0}")]
    Trap(Fault),
    /// The emulator itself failed (out of memory, fiber stack overflow, ...).
    #[error("emulator internal error: {0}")]
    Internal(Fault),
    /// `sa_emu_alloc` could not map a guarded buffer of this many bytes.
    #[error("guarded allocation of {0} bytes failed")]
    Alloc(usize),
}

impl EmuError {
    fn from_report(report: &sys::Report) -> Self {
        let bytes: Vec<u8> = report
            .message
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let fault = Fault {
            message: String::from_utf8_lossy(&bytes).into_owned(),
            block: report.block,
            thread: report.thread,
        };
        match report.code {
            sys::ERR_CONFIG => EmuError::Config(fault),
            sys::ERR_OUT_OF_BOUNDS => EmuError::OutOfBounds(fault),
            sys::ERR_BARRIER => EmuError::Barrier(fault),
            sys::ERR_WARP => EmuError::Warp(fault),
            sys::ERR_CP_ASYNC => EmuError::CpAsync(fault),
            sys::ERR_MISALIGNED => EmuError::Misaligned(fault),
            sys::ERR_TRAP => EmuError::Trap(fault),
            sys::ERR_RACE => EmuError::Race(fault),
            sys::ERR_UNINITIALIZED => EmuError::Uninitialized(fault),
            _ => EmuError::Internal(fault),
        }
    }

    /// The emulator's report, unless this is an allocation failure.
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            EmuError::Config(f)
            | EmuError::OutOfBounds(f)
            | EmuError::Barrier(f)
            | EmuError::Warp(f)
            | EmuError::CpAsync(f)
            | EmuError::Misaligned(f)
            | EmuError::Race(f)
            | EmuError::Uninitialized(f)
            | EmuError::Trap(f)
            | EmuError::Internal(f) => Some(f),
            EmuError::Alloc(_) => None,
        }
    }

    /// The report's message ("" for allocation failures).
    pub fn message(&self) -> &str {
        self.fault().map_or("", |f| f.message.as_str())
    }

    /// `blockIdx` of the failing thread.
    pub fn block(&self) -> [u32; 3] {
        self.fault().map_or([0; 3], |f| f.block)
    }

    /// `threadIdx` of the failing thread.
    pub fn thread(&self) -> [u32; 3] {
        self.fault().map_or([0; 3], |f| f.thread)
    }
}

/// Plain data a kernel may read and write through a [`GuardedBuffer`]: `Copy`, no padding,
/// and every bit pattern a valid value (a kernel, or the emulator's poison, can write any
/// bytes). Like cudarc's `DeviceRepr + ValidAsZeroBits`, but for the emulator.
///
/// # Safety
/// Implement only for types with no padding bytes and no invalid bit patterns.
pub unsafe trait Plain: Copy + 'static {}

macro_rules! plain {
    ($($t:ty),*) => { $(
        // SAFETY: primitive numeric types: no padding, every bit pattern valid.
        unsafe impl Plain for $t {}
    )* };
}
plain!(
    u8,
    i8,
    u16,
    i16,
    u32,
    i32,
    u64,
    i64,
    f32,
    f64,
    half::f16,
    half::bf16
);

/// Host memory laid out like device memory for the emulator: flush against a guard page (and
/// behind another), registered under a label, so a kernel's out-of-bounds access is caught and
/// reported, naming the buffer, instead of corrupting memory.
///
/// The start is aligned to the largest power of two dividing the byte length (so the end can
/// touch the guard page exactly): a buffer of 16-byte rows is 16-byte aligned.
///
/// `T` must be plain data for which every bit pattern is valid (integers, floats, `half`
/// types, `#[repr(C)]` structs of those): kernels write arbitrary bits into the buffer.
pub struct GuardedBuffer<T: Plain> {
    ptr: *mut T,
    len: usize,
    _marker: PhantomData<T>,
}

// SAFETY: the buffer exclusively owns its mapping; T is plain data.
unsafe impl<T: Plain + Send> Send for GuardedBuffer<T> {}
// SAFETY: shared access only reads.
unsafe impl<T: Plain + Sync> Sync for GuardedBuffer<T> {}

impl<T: Plain> GuardedBuffer<T> {
    /// A zero-filled buffer of `len` elements; `label` names it in fault reports.
    pub fn zeroed(len: usize, label: &str) -> Result<Self, EmuError> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or(EmuError::Alloc(usize::MAX))?;
        let label = CString::new(label.replace('\0', " ")).unwrap_or_default();
        // SAFETY: plain C call with a valid NUL-terminated label; a null return is handled.
        let ptr = unsafe { sys::sa_emu_alloc(bytes, label.as_ptr()) } as *mut T;
        if ptr.is_null() {
            return Err(EmuError::Alloc(bytes));
        }
        Ok(GuardedBuffer {
            ptr,
            len,
            _marker: PhantomData,
        })
    }

    /// A buffer of `len` copies of `value`: outputs of emulated launches start poisoned
    /// (NaN, or a pattern for integers), so an element a kernel forgets to write shows.
    pub fn filled(len: usize, value: T, label: &str) -> Result<Self, EmuError> {
        let mut b = Self::zeroed(len, label)?;
        b.as_mut_slice().fill(value);
        Ok(b)
    }

    /// A buffer holding a copy of `data`; `label` names it in fault reports.
    pub fn from_slice(data: &[T], label: &str) -> Result<Self, EmuError> {
        let mut b = Self::zeroed(data.len(), label)?;
        b.as_mut_slice().copy_from_slice(data);
        Ok(b)
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Size in bytes.
    pub fn byte_len(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
    /// The address kernels receive (in a params struct).
    pub fn as_ptr(&self) -> *const T {
        self.ptr
    }
    /// The address kernels receive, for writing.
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.ptr
    }
    /// The contents.
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: ptr is valid for len elements (zero-initialised at allocation, then written
        // only with plain data) and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    /// The contents, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    /// A copy of the contents.
    pub fn to_vec(&self) -> Vec<T> {
        self.as_slice().to_vec()
    }
}

impl<T: Plain> fmt::Debug for GuardedBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedBuffer")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl<T: Plain> Drop for GuardedBuffer<T> {
    fn drop(&mut self) {
        // SAFETY: ptr came from sa_emu_alloc and is freed exactly once.
        unsafe { sys::sa_emu_free(self.ptr as *mut c_void) }
    }
}

/// Runs `kernel` on the CPU with `params` passed by value to every emulated thread; returns
/// once every block has finished, or with the first fault the emulator detected.
///
/// Launches are independent: several may run at once from different threads.
///
/// # Safety
/// - `kernel` must be an `SA_KERNEL` entry point whose params struct is exactly `P`
///   (`#[repr(C)]`, same size, field order and types).
/// - Every pointer inside `params` must be null where the kernel allows it, or point into
///   live memory (normally [`GuardedBuffer`]s) large enough for every access the kernel makes
///   with this geometry, and stay valid until this call returns. The emulator catches accesses
///   that hit a guard page, but an access that lands in unrelated host memory is undetectable.
/// - No other code may access that memory while the launch runs (kernels write it from the
///   emulator's worker threads).
pub unsafe fn launch<P: Copy>(
    kernel: KernelFn,
    name: &str,
    cfg: &LaunchConfig,
    params: &P,
) -> Result<(), EmuError> {
    let raw = cfg.raw();
    let cname = CString::new(name.replace('\0', " ")).unwrap_or_default();
    let mut report = sys::Report {
        code: 0,
        block: [0; 3],
        thread: [0; 3],
        message: [0; sys::MESSAGE_LEN],
    };
    // SAFETY: every pointer is valid for the call; the params contract is the caller's.
    let code = sys::sa_emu_launch(
        kernel,
        cname.as_ptr(),
        &raw,
        params as *const P as *const c_void,
        std::mem::size_of::<P>(),
        &mut report,
    );
    if code == sys::OK {
        Ok(())
    } else {
        Err(EmuError::from_report(&report))
    }
}

/// Emulator options independent of the launch geometry.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmuOptions {
    /// Order in which runnable threads resume.
    pub schedule: Schedule,
    /// Copy at issue instead of poisoning and landing at the wait.
    pub eager_cp_async: bool,
    /// Worker OS threads for blocks (0 = all cores).
    pub workers: u32,
    /// The GPU whose launch limits apply.
    pub arch: TargetArch,
    /// Tensor-core and `ex2.approx` arithmetic.
    pub numerics: Numerics,
}

impl LaunchConfig {
    /// A launch of this geometry with `opts`.
    pub fn with_options(
        grid: [u32; 3],
        block: [u32; 3],
        dynamic_smem_bytes: u32,
        opts: &EmuOptions,
    ) -> Self {
        LaunchConfig {
            grid,
            block,
            dynamic_smem_bytes,
            schedule: opts.schedule,
            eager_cp_async: opts.eager_cp_async,
            workers: opts.workers,
            arch: opts.arch,
            numerics: opts.numerics,
        }
    }
}
