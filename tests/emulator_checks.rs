//! The emulator's checks that close what it used to miss (docs/emulator.md §7), each with a
//! canary that must trip it and, where there is one, the correct twin that must pass:
//! poisoned outputs, plain shared-memory races, uninitialised shared memory, misaligned vector
//! accesses, per-architecture launch limits, pessimistic numerics, src-size-0 sources. Exits
//! past a barrier are in tests/emulator.rs (`exit_past_a_barrier_is_reported_in_either_order`).

mod common;

use common::{assert_matches, base_seed, random_qkv, reference_for, tol, Rng};
use half::f16;
use sparse_attn::emu::selftest::{
    sa_selftest_cp_async, sa_selftest_memory, sa_selftest_mma, CpAsyncParams, MemoryParams,
    MmaParams,
};
use sparse_attn::emu::{
    self, EmuError, GuardedBuffer, KernelFn, LaunchConfig, Numerics, Plain, Schedule, TargetArch,
};
use sparse_attn::kernels::test_kernels::canary_skip_empty_rows;
use sparse_attn::reference::causal_allowed;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, EmuRun, SeqLens};

fn run<P: Copy>(kernel: KernelFn, name: &str, cfg: &LaunchConfig, p: &P) -> Result<(), EmuError> {
    // SAFETY: each caller passes the kernel's own params struct (layouts asserted in
    // src/emu/selftest.rs and the .cu files) with guarded buffers of the sizes it indexes.
    unsafe { emu::launch(kernel, name, cfg, p) }
}

fn buf<T: Plain>(data: &[T], label: &str) -> GuardedBuffer<T> {
    GuardedBuffer::from_slice(data, label).unwrap()
}

/// A causal f16 plan over one sequence (q_len x kv_len, heads / kv heads, head_dim) with
/// random q, k, v of amplitude `qk` (v: 1).
fn causal_case(
    (q_len, kv_len): (usize, usize),
    (heads, kv_heads): (usize, usize),
    head_dim: u32,
    qk: f32,
) -> (AttnPlan, Vec<f16>, Vec<f16>, Vec<f16>) {
    let seqs = SeqLens::Uniform {
        batch: 1,
        q_len,
        kv_len,
    };
    let problem = AttnProblem::new(seqs, heads, kv_heads, head_dim, DType::F16).unwrap();
    let plan = AttnPlan::new(&problem, &AttnOptions::causal()).unwrap();
    let mut rng = Rng::new(base_seed());
    let (q, k, v) = random_qkv::<f16>(&mut rng, &problem, qk, 1.0);
    (plan, q, k, v)
}

/// Checks a causal run of `plan` against the f64 reference at the dtype's tolerance.
fn check_causal(plan: &AttnPlan, q: &[f16], k: &[f16], v: &[f16], out: &[f16], lse: &[f32]) {
    let (q_len, kv_len) = plan.problem().seqs().max_lens();
    let want = reference_for(plan, q, k, v, |_, _, i, j| {
        causal_allowed(i, j, q_len, kv_len)
    });
    assert_matches("causal", plan.problem(), out, lse, &want, tol(DType::F16));
}

/// Asserts `r` failed with the given `EmuError` variant and a message containing `needles`.
macro_rules! assert_fault {
    ($r:expr, $variant:ident, [$($needle:expr),* $(,)?]) => {{
        match $r {
            Err(e @ EmuError::$variant(_)) => {
                for needle in [$($needle),*] {
                    assert!(e.message().contains(needle), "{needle:?} not in:\n{}", e.message());
                }
                e
            }
            other => panic!(concat!("expected EmuError::", stringify!($variant), ", got {:?}"), other),
        }
    }};
}

// ---- poisoned outputs --------------------------------------------------------------------

#[test]
fn unwritten_outputs_are_poisoned_not_zero() {
    // Causal with q_len > kv_len: rows 0..32 sit before the first key (p < 0) and are empty,
    // so the contract wants out = 0 and lse = -inf there.
    let (plan, q, k, v) = causal_case((96, 64), (2, 1), 64, 1.0);
    let run = EmuRun::default();
    // The production kernel writes every row, empty ones as exact zeros.
    let (out, lse) = plan.run_emulated(&q, &k, &v, &run).unwrap();
    check_causal(&plan, &q, &k, &v, &out, &lse);
    assert!(out[..32 * 2 * 64].iter().all(|x| x.to_bits() == 0));
    // The canary's empty rows keep the poison: NaN, not the zero a zeroed buffer would show.
    // SAFETY: the canary is this plan's f16/hd64 forward kernel, in its tile shape, with one
    // store dropped.
    let canary = unsafe {
        plan.clone()
            .with_kernel(canary_skip_empty_rows(plan.tiles()))
    };
    let (out, lse) = canary.run_emulated(&q, &k, &v, &run).unwrap();
    assert!(out[..32 * 2 * 64].iter().all(|x| x.is_nan()));
    assert!(out[32 * 2 * 64..].iter().all(|x| !x.is_nan()));
    assert!(lse[..32].iter().all(|&l| l == f32::NEG_INFINITY));
    // The step tile's canary: 12 rows before the first of 4 keys, 16 rows (one step block).
    let (plan, q, k, v) = causal_case((16, 4), (1, 1), 64, 1.0);
    assert_eq!(plan.tiles().block_m, 16);
    let (out, lse) = plan.run_emulated(&q, &k, &v, &run).unwrap();
    check_causal(&plan, &q, &k, &v, &out, &lse);
    // SAFETY: as above, in the step shape.
    let canary = unsafe {
        plan.clone()
            .with_kernel(canary_skip_empty_rows(plan.tiles()))
    };
    let (out, _) = canary.run_emulated(&q, &k, &v, &run).unwrap();
    assert!(out[..12 * 64].iter().all(|x| x.is_nan()));
    assert!(out[12 * 64..].iter().all(|x| !x.is_nan()));
}

// ---- plain shared-memory races, uninitialised and misaligned accesses ---------------------

/// Modes of kernels/tests/selftest_memory.cu added for these checks.
mod mode {
    pub const STORE_LOAD_RACE: i32 = 9;
    pub const SAME_WARP_RACE: i32 = 10;
    pub const SYNCWARP_ORDERS: i32 = 11;
    pub const BARRIER_ORDERS: i32 = 12;
    pub const WRITE_AFTER_READ: i32 = 13;
    pub const WRITE_WRITE: i32 = 14;
    pub const UNINITIALIZED_LOAD: i32 = 15;
    pub const MISALIGNED_SHARED: i32 = 16;
    pub const MISALIGNED_GLOBAL: i32 = 17;
    pub const SHFL_IS_NO_FENCE: i32 = 18;
}

/// selftest_memory with 64 threads and 64 bytes of shared memory under `schedule`; returns dst.
fn memory(mode: i32, schedule: Schedule) -> Result<Vec<f32>, EmuError> {
    let src = buf(&[0f32; 8], "src");
    let dst = buf(&[0f32; 8], "dst");
    let p = MemoryParams {
        src: src.as_ptr(),
        dst: dst.as_ptr() as *mut f32,
        n: 8,
        mode,
    };
    let mut cfg = LaunchConfig::new([1, 1, 1], [64, 1, 1], 64);
    cfg.schedule = schedule;
    run(sa_selftest_memory, "sa_selftest_memory", &cfg, &p)?;
    Ok(dst.to_vec())
}

const SCHEDULES: [Schedule; 3] = [Schedule::Forward, Schedule::Reverse, Schedule::Random(5)];

#[test]
fn a_store_read_by_another_thread_without_a_barrier_is_a_race() {
    for s in SCHEDULES {
        assert_fault!(
            memory(mode::STORE_LOAD_RACE, s),
            Race,
            ["stored by", "no __syncthreads", "selftest_memory.cu"]
        );
    }
}

#[test]
fn within_a_warp_a_store_needs_a_syncwarp() {
    for s in SCHEDULES {
        assert_fault!(
            memory(mode::SAME_WARP_RACE, s),
            Race,
            ["no __syncwarp by the storing thread"]
        );
        // A shuffle is a rendezvous, not a memory fence: still a race.
        assert_fault!(memory(mode::SHFL_IS_NO_FENCE, s), Race, ["stored by"]);
        // The correct twins: __syncwarp, or __syncthreads, orders the store before the load.
        assert_eq!(memory(mode::SYNCWARP_ORDERS, s).unwrap()[0], 7.0);
        assert_eq!(memory(mode::BARRIER_ORDERS, s).unwrap()[0], 7.0);
    }
}

#[test]
fn stores_racing_with_loads_or_stores_are_reported() {
    for s in SCHEDULES {
        // Thread 32 loads, thread 0 overwrites with no barrier: reported whichever runs first
        // (as a write-after-read, or as a load of another thread's unsynchronised store).
        assert_fault!(memory(mode::WRITE_AFTER_READ, s), Race, ["shared byte"]);
        assert_fault!(memory(mode::WRITE_WRITE, s), Race, ["stored by"]);
    }
}

#[test]
fn loads_of_shared_memory_nobody_wrote_are_reported() {
    assert_fault!(
        memory(mode::UNINITIALIZED_LOAD, Schedule::Forward),
        Uninitialized,
        [
            "no thread of the block has written byte 4",
            "selftest_memory.cu"
        ]
    );
}

#[test]
fn misaligned_vector_accesses_are_reported() {
    assert_fault!(
        memory(mode::MISALIGNED_SHARED, Schedule::Forward),
        Misaligned,
        ["shared memory load of 4 bytes at byte offset 2"]
    );
    assert_fault!(
        memory(mode::MISALIGNED_GLOBAL, Schedule::Forward),
        Misaligned,
        ["global vector access of 16 bytes", "buffer 'dst'"]
    );
}

// ---- cp.async with src-size 0 --------------------------------------------------------------

fn cp_async(mode: i32) -> Result<(), EmuError> {
    let src = buf(&[7u8; 64], "cp_src");
    let out = buf(&[0u8; 64], "cp_out");
    let p = CpAsyncParams {
        src: src.as_ptr(),
        out: out.as_ptr() as *mut u8,
        src_len: 64,
        mode,
    };
    run(
        sa_selftest_cp_async,
        "sa_selftest_cp_async",
        &LaunchConfig::new([1, 1, 1], [64, 1, 1], 64),
        &p,
    )
}

#[test]
fn src_size_zero_still_needs_a_valid_aligned_source() {
    // Modes of selftest_cp_async.cu: a null source and one far outside every buffer.
    assert_fault!(cp_async(19), OutOfBounds, ["src-size 0", "not nullptr"]);
    assert_fault!(cp_async(20), OutOfBounds, ["src-size 0"]);
    // The buffer's end (mode 2) is fine: never read, inside the buffer's range.
    cp_async(2).unwrap();
}

// ---- launch limits per architecture ----------------------------------------------------------

#[test]
fn shared_memory_limits_follow_the_target_architecture() {
    let src = buf(&[1f32; 4], "src");
    let dst = buf(&[0f32; 4], "dst");
    let p = MemoryParams {
        src: src.as_ptr(),
        dst: dst.as_ptr() as *mut f32,
        n: 4,
        mode: 0,
    };
    let launch = |arch: TargetArch, smem_kb: u32| {
        let mut cfg = LaunchConfig::new([1, 1, 1], [32, 1, 1], smem_kb * 1024);
        cfg.arch = arch;
        run(sa_selftest_memory, "sa_selftest_memory", &cfg, &p)
    };
    // 100 KB: too much for sm_86 / sm_89 (99 KB), fine on A100 and H100.
    for arch in [TargetArch::Sm86, TargetArch::Sm89] {
        assert_fault!(launch(arch, 100), Config, ["101376-byte (99 KB)"]);
        launch(arch, 99).unwrap();
    }
    launch(TargetArch::Sm80, 100).unwrap();
    // 164 KB: too much for A100 (163 KB), fine on H100 (227 KB).
    assert_fault!(
        launch(TargetArch::Sm80, 164),
        Config,
        ["(163 KB) limit", "sm_80"]
    );
    launch(TargetArch::Sm90, 164).unwrap();
    assert_fault!(launch(TargetArch::Sm90, 228), Config, ["(227 KB)"]);
    for arch in TargetArch::ALL {
        assert_eq!(arch.max_dynamic_smem() % 1024, 0);
    }
}

#[test]
fn every_shipped_launch_fits_every_target() {
    // The forward kernel's largest tile (head_dim 128) on the strictest targets.
    for arch in TargetArch::ALL {
        let (plan, q, k, v) = causal_case((80, 80), (2, 2), 128, 1.0);
        let run = EmuRun {
            arch,
            ..Default::default()
        };
        let (out, lse) = plan.run_emulated(&q, &k, &v, &run).unwrap();
        check_causal(&plan, &q, &k, &v, &out, &lse);
    }
}

// ---- pessimistic numerics ---------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy)]
struct Exp2Params {
    input: *const f32,
    out: *mut f32,
    n: i32,
    pad: i32,
}
const _: () = assert!(std::mem::size_of::<Exp2Params>() == 24);

extern "C" {
    fn sa_selftest_exp2(p: *const std::ffi::c_void);
}

fn exp2_under(numerics: Numerics, input: &[f32]) -> Vec<f32> {
    let ib = buf(input, "exp2_in");
    let ob = buf(&vec![0f32; input.len()], "exp2_out");
    let p = Exp2Params {
        input: ib.as_ptr(),
        out: ob.as_ptr() as *mut f32,
        n: input.len() as i32,
        pad: 0,
    };
    let mut cfg = LaunchConfig::new([(input.len() as u32).div_ceil(128), 1, 1], [128, 1, 1], 0);
    cfg.numerics = numerics;
    run(sa_selftest_exp2, "sa_selftest_exp2", &cfg, &p).unwrap();
    ob.to_vec()
}

/// Distance in ulps between two positive finite floats.
fn ulps(a: f32, b: f32) -> u32 {
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
fn pessimistic_exp2_flushes_subnormals_and_errs_by_at_most_two_ulp() {
    let input: Vec<f32> = (0..512).map(|i| -20.0 + i as f32 * 0.0731).collect();
    let exact = exp2_under(Numerics::Exact, &input);
    let rough = exp2_under(Numerics::Pessimistic, &input);
    assert_eq!((exact.len(), rough.len()), (512, 512));
    for ((&x, &e), &r) in input.iter().zip(&exact).zip(&rough) {
        assert_eq!(e, x.exp2(), "exact mode is the libm value at {x}");
        assert!(ulps(e, r) <= 2, "{x}: {r} is {} ulp from {e}", ulps(e, r));
    }
    let moved = exact.iter().zip(&rough).filter(|(e, r)| e != r).count();
    assert!(moved > 200, "only {moved} of 512 values perturbed");
    // ftz: a subnormal input is 0 (2^0 = 1); a subnormal result is 0.
    let edge = [f32::from_bits(1), -130.0, f32::NEG_INFINITY];
    let exact = exp2_under(Numerics::Exact, &edge);
    let rough = exp2_under(Numerics::Pessimistic, &edge);
    assert!(exact[1] > 0.0 && exact[1] < f32::MIN_POSITIVE);
    assert!(ulps(rough[0], 1.0) <= 2, "2^(subnormal) = {}", rough[0]);
    assert_eq!(&rough[1..], &[0.0, 0.0]);
    assert_eq!(exact[2], 0.0);
}

fn mma_under(numerics: Numerics, a: &[f32], b: &[f32], c: &[f32]) -> Vec<f32> {
    let bits = |v: &[f32]| {
        v.iter()
            .map(|&x| f16::from_f32(x).to_bits())
            .collect::<Vec<_>>()
    };
    let (ab, bb, b2) = (
        buf(&bits(a), "a"),
        buf(&bits(b), "b"),
        buf(&[0u16; 128], "b2"),
    );
    let cb = buf(c, "c");
    let d = buf(&[0f32; 128], "d");
    let frags = buf(&[0u32; 32 * 16], "frags");
    let p = MmaParams {
        a: ab.as_ptr(),
        b: bb.as_ptr(),
        b2: b2.as_ptr(),
        c: cb.as_ptr(),
        d: d.as_ptr() as *mut f32,
        frags: frags.as_ptr() as *mut u32,
        k: 16,
        bf16: 0,
        mode: 0,
        pad: 0,
    };
    let mut cfg = LaunchConfig::new([1, 1, 1], [32, 1, 1], 0);
    cfg.numerics = numerics;
    run(sa_selftest_mma, "sa_selftest_mma", &cfg, &p).unwrap();
    d.to_vec()
}

#[test]
fn pessimistic_mma_truncates_its_partial_sums() {
    let mut rng = Rng::new(base_seed());
    // f16-exact inputs whose products need all of f32's bits, so rounding shows.
    let a: Vec<f32> = (0..256)
        .map(|_| f16::from_f32(rng.unit() * 3.0).to_f32())
        .collect();
    let b: Vec<f32> = (0..128)
        .map(|_| f16::from_f32(rng.unit() * 3.0).to_f32())
        .collect();
    let c: Vec<f32> = (0..128).map(|_| rng.unit() * 1000.0).collect();
    let exact = mma_under(Numerics::Exact, &a, &b, &c);
    let rough = mma_under(Numerics::Pessimistic, &a, &b, &c);
    assert_eq!((exact.len(), rough.len()), (128, 128));
    let mut moved = 0;
    for m in 0..16 {
        for n in 0..8 {
            let want: f64 = c[m * 8 + n] as f64
                + (0..16)
                    .map(|k| a[m * 16 + k] as f64 * b[k * 8 + n] as f64)
                    .sum::<f64>();
            let (e, r) = (exact[m * 8 + n] as f64, rough[m * 8 + n] as f64);
            // 17 additions, each within one f32 ulp of the running magnitude.
            let bound = 17.0 * f32::EPSILON as f64 * 1100.0;
            assert!(
                (e - want).abs() <= bound && (r - want).abs() <= bound,
                "({m}, {n})"
            );
            moved += usize::from(e != r);
        }
    }
    assert!(
        moved > 32,
        "only {moved} of 128 sums differ between the modes"
    );
}

#[test]
fn attention_passes_its_tolerances_under_pessimistic_numerics() {
    // The suites run under both modes (CI sets SPARSE_ATTN_EMU_NUMERICS=pessimistic for a
    // second run); here one case checks that the mode reaches the attention kernels at all.
    let (plan, q, k, v) = causal_case((130, 130), (2, 1), 64, 2.0);
    let exact = plan.run_emulated(&q, &k, &v, &EmuRun::default()).unwrap();
    let run = EmuRun {
        numerics: Numerics::Pessimistic,
        ..Default::default()
    };
    let rough = plan.run_emulated(&q, &k, &v, &run).unwrap();
    check_causal(&plan, &q, &k, &v, &rough.0, &rough.1);
    assert_ne!(exact.1, rough.1, "pessimistic numerics changed no LSE");
}
