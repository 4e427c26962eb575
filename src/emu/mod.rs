//! The CPU emulator backend: runs the kernels' own CUDA C++ source on the host.
//!
//! `kernels/emu/` (C++) executes a launch with one fiber per CUDA thread, exact tensor-core
//! fragment layouts, adversarial `cp.async` and guard-paged buffers; this module is its safe
//! Rust face: guarded buffers ([`GuardedBuffer`]), the launch configuration and errors.

use std::ffi::{c_void, CString};
use std::marker::PhantomData;

use thiserror::Error;

/// A kernel's host entry, as `SA_KERNEL` declares it.
pub type KernelFn = unsafe extern "C" fn(params: *const c_void);

mod sys {
    use std::ffi::{c_char, c_void};

    #[repr(C)]
    pub struct LaunchConfig {
        pub grid: [u32; 3],
        pub block: [u32; 3],
        pub dynamic_smem_bytes: u32,
        pub schedule: u32,
        pub seed: u64,
        pub eager_cp_async: u32,
        pub workers: u32,
    }

    #[repr(C)]
    pub struct Report {
        pub code: i32,
        pub block: [u32; 3],
        pub thread: [u32; 3],
        pub message: [c_char; 2048],
    }

    extern "C" {
        pub fn sa_emu_launch(
            f: super::KernelFn,
            kernel_name: *const c_char,
            config: *const LaunchConfig,
            params: *const c_void,
            params_size: usize,
            report: *mut Report,
        ) -> i32;
        pub fn sa_emu_alloc(bytes: usize, label: *const c_char) -> *mut c_void;
        pub fn sa_emu_free(ptr: *mut c_void);
    }
}

/// Order in which the emulator resumes runnable threads. A correct kernel gives identical
/// results under every order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Schedule {
    #[default]
    Forward,
    Reverse,
    /// Seeded shuffle of warps and lanes at every scheduling step.
    Random(u64),
}

/// One emulated launch: geometry plus emulator options.
#[derive(Clone, Copy, Debug)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_smem_bytes: u32,
    pub schedule: Schedule,
    /// Copy at issue instead of poisoning and landing at the wait (for diffing).
    pub eager_cp_async: bool,
    /// Worker OS threads for blocks (0 = all cores).
    pub workers: u32,
}

/// A fault the emulator detected in a kernel.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum EmuError {
    #[error("invalid launch configuration: {0}")]
    Config(String),
    #[error("out-of-bounds access: {0}")]
    OutOfBounds(String),
    #[error("barrier divergence or deadlock: {0}")]
    Barrier(String),
    #[error("warp collective misuse: {0}")]
    Warp(String),
    #[error("cp.async misuse: {0}")]
    CpAsync(String),
    #[error("misaligned address: {0}")]
    Misaligned(String),
    #[error("kernel trap: {0}")]
    Trap(String),
    #[error("emulator internal error: {0}")]
    Internal(String),
    #[error("guarded allocation of {0} bytes failed")]
    Alloc(usize),
}

/// Host memory laid out like device memory for the emulator: flush against a guard page, so
/// a kernel's out-of-bounds access is caught and reported instead of corrupting memory.
pub struct GuardedBuffer<T: Copy> {
    ptr: *mut T,
    len: usize,
    _marker: PhantomData<T>,
}

// SAFETY: the buffer exclusively owns its allocation; T is plain data.
unsafe impl<T: Copy + Send> Send for GuardedBuffer<T> {}
unsafe impl<T: Copy + Sync> Sync for GuardedBuffer<T> {}

impl<T: Copy> GuardedBuffer<T> {
    /// A zero-filled buffer of `len` elements; `label` names it in fault reports.
    pub fn zeroed(len: usize, label: &str) -> Result<Self, EmuError> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or(EmuError::Alloc(usize::MAX))?;
        let label = CString::new(label.replace('\0', " ")).unwrap_or_default();
        // SAFETY: plain C call; a null return is handled.
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

    pub fn from_slice(data: &[T], label: &str) -> Result<Self, EmuError> {
        let mut b = Self::zeroed(data.len(), label)?;
        b.as_mut_slice().copy_from_slice(data);
        Ok(b)
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn as_ptr(&self) -> *const T {
        self.ptr
    }
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.ptr
    }
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: ptr is valid for len elements (zero-initialised at allocation).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    pub fn to_vec(&self) -> Vec<T> {
        self.as_slice().to_vec()
    }
}

impl<T: Copy> Drop for GuardedBuffer<T> {
    fn drop(&mut self) {
        // SAFETY: ptr came from sa_emu_alloc and is freed once.
        unsafe { sys::sa_emu_free(self.ptr as *mut c_void) }
    }
}

/// Runs `kernel` on the CPU with `params` passed by value to every emulated thread.
///
/// # Safety
/// - `P` must be exactly the params struct `kernel` takes (`#[repr(C)]`, same layout).
/// - Every pointer inside `params` must be null where the kernel allows it, or point into
///   live memory (normally [`GuardedBuffer`]s) large enough for every access the kernel makes
///   for this geometry; the emulator reports accesses that hit a guard page, but cannot
///   protect arbitrary host memory.
pub unsafe fn launch<P: Copy>(
    kernel: KernelFn,
    name: &str,
    cfg: &LaunchConfig,
    params: &P,
) -> Result<(), EmuError> {
    let (schedule, seed) = match cfg.schedule {
        Schedule::Forward => (0, 0),
        Schedule::Reverse => (1, 0),
        Schedule::Random(s) => (2, s),
    };
    let c = sys::LaunchConfig {
        grid: cfg.grid,
        block: cfg.block,
        dynamic_smem_bytes: cfg.dynamic_smem_bytes,
        schedule,
        seed,
        eager_cp_async: cfg.eager_cp_async as u32,
        workers: cfg.workers,
    };
    let cname = CString::new(name).unwrap_or_default();
    let mut report = sys::Report {
        code: 0,
        block: [0; 3],
        thread: [0; 3],
        message: [0; 2048],
    };
    let code = sys::sa_emu_launch(
        kernel,
        cname.as_ptr(),
        &c,
        params as *const P as *const c_void,
        std::mem::size_of::<P>(),
        &mut report,
    );
    if code == 0 {
        return Ok(());
    }
    let msg = {
        let bytes: Vec<u8> = report
            .message
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Err(match code {
        1 => EmuError::Config(msg),
        2 => EmuError::OutOfBounds(msg),
        3 => EmuError::Barrier(msg),
        4 => EmuError::Warp(msg),
        5 => EmuError::CpAsync(msg),
        6 => EmuError::Misaligned(msg),
        7 => EmuError::Trap(msg),
        _ => EmuError::Internal(msg),
    })
}

/// Runs a [`crate::kernels::Launch`] description on the emulator.
///
/// # Safety
/// As for [`launch`]: the params and the pointers inside them must match the kernel.
pub unsafe fn launch_desc<P: Copy>(
    l: &crate::kernels::Launch<P>,
    opts: &EmuOptions,
) -> Result<(), EmuError> {
    let cfg = LaunchConfig {
        grid: l.grid,
        block: l.block,
        dynamic_smem_bytes: l.dynamic_smem_bytes,
        schedule: opts.schedule,
        eager_cp_async: opts.eager_cp_async,
        workers: opts.workers,
    };
    launch(l.kernel.emu_entry, l.kernel.name, &cfg, &l.params)
}

/// Emulator options independent of the launch geometry.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmuOptions {
    pub schedule: Schedule,
    pub eager_cp_async: bool,
    pub workers: u32,
}


