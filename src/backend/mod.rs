//! Execution backends for a [`crate::kernels::Launch`], and what the build embedded for them.
//!
//! - [`cuda`]: the GPU through cudarc's driver API ([`Gpu`]), and the safe
//!   [`crate::AttnPlan::run_cuda`].
//! - [`cublas`]: the dense cuBLAS oracle that GPU tests and benchmarks compare against.
//! - [`ref_softmax`]: the oracle's softmax kernel (`kernels/ref_softmax.cu`), which also runs
//!   on the emulator so the oracle itself is checked against the f64 reference.
//!
//! The CPU emulator backend is [`crate::emu`] (see [`crate::AttnPlan::run_emulated`]).
//!
//! `build.rs` compiles every `kernels/*.cu` (and, for this crate's own tests, the
//! `kernels/tests/*.cu` of the `test-kernels` feature) with nvcc into a fatbin that is
//! embedded here ([`fatbin`]); without nvcc there are none, and the CUDA backend
//! reports [`crate::Error::KernelsNotBuilt`].

pub mod cublas;
pub mod cuda;
pub mod ref_softmax;

pub use cuda::{DeviceLens, DevicePagedKv, DeviceStep, Gpu, GpuPlan};

/// Whether the CUDA library `lib` (`"cuda"`, `"cublas"`) can be loaded under one of its usual
/// file names (`libcuda.so.1`, `libcublas.so.13`, `cublas64_13.dll`, `nvcuda.dll`, ...).
/// Checked with our own `dlopen` rather than cudarc's `is_culib_present`, which exists only
/// when cudarc loads its libraries dynamically: an engine that links them (candle's `cuda`
/// feature turns on cudarc's `dynamic-linking`, and features unify) would otherwise not
/// compile this crate.
pub(crate) fn library_present(lib: &str) -> bool {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let mut names = vec![
        format!("{DLL_PREFIX}{lib}{DLL_SUFFIX}"),
        format!("{DLL_PREFIX}{lib}{DLL_SUFFIX}.1"),
    ];
    for major in [13, 12, 11] {
        names.push(format!("{DLL_PREFIX}{lib}{DLL_SUFFIX}.{major}"));
        names.push(format!("{DLL_PREFIX}{lib}64_{major}{DLL_SUFFIX}"));
    }
    if lib == "cuda" {
        names.push("nvcuda.dll".into());
    }
    names.into_iter().any(|name| {
        // SAFETY: loading a CUDA library runs its initialisers only; it is closed again at once.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

mod generated {
    include!(concat!(env!("OUT_DIR"), "/fatbins.rs"));
}

/// The embedded fatbin of `kernels/<stem>.cu` (or, with the `test-kernels` feature,
/// `kernels/tests/<stem>.cu`), if nvcc built it.
pub fn fatbin(stem: &str) -> Option<&'static [u8]> {
    generated::FATBINS
        .iter()
        .find(|(s, _)| *s == stem)
        .map(|(_, bytes)| *bytes)
}

/// What the build did for the GPU.
#[derive(Clone, Copy, Debug)]
pub struct CudaBuild {
    /// Whether nvcc compiled the kernels (fatbins are embedded).
    pub built: bool,
    /// Why not, when `built` is false.
    pub skip_reason: &'static str,
    /// nvcc's `release ...` line.
    pub nvcc_version: &'static str,
    /// The SASS and PTX targets, e.g. `sm_80, sm_90, compute_90 (PTX)`.
    pub targets: &'static str,
    /// Stems of the embedded fatbins.
    pub modules: &'static [(&'static str, &'static [u8])],
}

/// The GPU side of this build.
pub fn cuda_build() -> CudaBuild {
    CudaBuild {
        built: generated::CUDA_BUILT,
        skip_reason: generated::CUDA_SKIP_REASON,
        nvcc_version: generated::NVCC_VERSION,
        targets: generated::CUDA_TARGETS,
        modules: generated::FATBINS,
    }
}

/// ptxas's `-v` output for every kernel file, as captured by build.rs (`None` when the CUDA
/// build was skipped). Parse it with [`parse_ptxas_report`].
pub fn ptxas_report() -> Option<&'static str> {
    generated::CUDA_BUILT.then_some(generated::PTXAS_REPORT)
}

/// Resource usage of one kernel for one target, from the ptxas report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    /// The `.cu` file, relative to the crate root.
    pub source: String,
    /// The kernel's entry-point name.
    pub kernel: String,
    /// `sm_80`, `sm_90`, ...
    pub arch: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory (dynamic shared memory is a launch parameter, not in the report).
    pub static_smem_bytes: u32,
    /// Stack frame per thread, in bytes.
    pub stack_frame_bytes: u32,
    /// Spill stores, in bytes (0: no spills).
    pub spill_store_bytes: u32,
    /// Spill loads, in bytes.
    pub spill_load_bytes: u32,
}

/// Number directly before `unit` in `line` (`"Used 168 registers"`, `"registers"` -> 168).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .find(|w| w[1].starts_with(unit))
        .and_then(|w| w[0].parse().ok())
}

/// Parses ptxas `-v` output (as stored by build.rs) into one entry per kernel and target.
pub fn parse_ptxas_report(text: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    let mut source = String::new();
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("## ") {
            source = s.trim().to_string();
        } else if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let kernel = parts.next().unwrap_or_default().to_string();
            let arch = parts.nth(1).unwrap_or_default().to_string();
            out.push(KernelResources {
                source: source.clone(),
                kernel,
                arch,
                ..Default::default()
            });
        } else if let Some(cur) = out.last_mut() {
            if line.contains("stack frame") {
                cur.stack_frame_bytes = number_before(line, "bytes").unwrap_or(0);
                cur.spill_store_bytes = spill_bytes(line, "stores");
                cur.spill_load_bytes = spill_bytes(line, "loads");
            } else if line.contains("registers") {
                cur.registers = number_before(line, "registers").unwrap_or(0);
                cur.static_smem_bytes = line
                    .split(',')
                    .find(|part| part.contains("bytes smem"))
                    .and_then(|part| number_before(part, "bytes"))
                    .unwrap_or(0);
            }
        }
    }
    out
}

/// `"0 bytes stack frame, 8 bytes spill stores, 16 bytes spill loads"`, `"stores"` -> 8.
fn spill_bytes(line: &str, kind: &str) -> u32 {
    line.split(',')
        .find(|part| part.contains("spill") && part.contains(kind))
        .and_then(|part| number_before(part, "bytes"))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# ptxas resource report (Cuda compilation tools, release 13.0, V13.0.88; targets sm_80)

## kernels/attention_fwd_hd64.cu
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'sa_attn_fwd_f16_hd64' for 'sm_80'
ptxas info    : Function properties for sa_attn_fwd_f16_hd64
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 568 bytes cmem[0]
ptxas info    : Compile time = 111.710 ms

## kernels/ref_softmax.cu
ptxas info    : Compiling entry function 'sa_ref_softmax_f16' for 'sm_90'
ptxas info    : Function properties for sa_ref_softmax_f16
    8 bytes stack frame, 8 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 32 registers, 1024 bytes smem, used 1 barriers, 8 bytes cumulative stack size
";

    #[test]
    fn parses_registers_smem_and_spills() {
        let r = parse_ptxas_report(SAMPLE);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelResources {
                source: "kernels/attention_fwd_hd64.cu".into(),
                kernel: "sa_attn_fwd_f16_hd64".into(),
                arch: "sm_80".into(),
                registers: 168,
                ..Default::default()
            }
        );
        assert_eq!(r[1].source, "kernels/ref_softmax.cu");
        assert_eq!(r[1].arch, "sm_90");
        assert_eq!(r[1].registers, 32);
        assert_eq!(r[1].static_smem_bytes, 1024);
        assert_eq!(r[1].stack_frame_bytes, 8);
        assert_eq!(r[1].spill_store_bytes, 8);
        assert_eq!(r[1].spill_load_bytes, 16);
    }

    #[test]
    fn build_info_is_consistent() {
        let b = cuda_build();
        if b.built {
            assert!(b.skip_reason.is_empty());
            for f in crate::kernels::FwdFile::ALL {
                assert!(fatbin(f.stem()).is_some(), "{}", f.stem());
            }
            assert!(fatbin("ref_softmax").is_some());
            let report = parse_ptxas_report(ptxas_report().unwrap());
            assert!(report
                .iter()
                .any(|k| k.kernel == "sa_attn_fwd_f16_hd64_m128"));
            assert!(report.iter().all(|k| k.spill_store_bytes == 0));
        } else {
            assert!(b.modules.is_empty() && ptxas_report().is_none());
            assert!(fatbin(crate::kernels::FwdFile::Hd64.stem()).is_none());
            assert!(!b.skip_reason.is_empty());
        }
    }
}
