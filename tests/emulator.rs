//! The CPU emulator against the hard-coded vectors of docs/emulator.md §6, plus deliberately broken
//! kernels it must catch. Kernels: `kernels/tests/selftest_*.cu`; expected values are written
//! out by hand from the spec (never derived from the emulator's own layout tables).

// Lane-indexed loops read most naturally as `for lane in 0..32`.
#![allow(clippy::needless_range_loop)]

#[path = "common/selftest_vectors.rs"]
mod selftest_vectors;

use selftest_vectors::*;
use sparse_attn::emu::selftest::*;
use sparse_attn::emu::{launch, EmuError, GuardedBuffer, KernelFn, LaunchConfig, Schedule};
use sparse_attn::pattern::rng::SplitMix64 as Rng;

// ---- helpers ----------------------------------------------------------------------------------

fn cfg(grid: u32, block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig::new([grid, 1, 1], [block, 1, 1], smem)
}

fn buf<T: sparse_attn::emu::Plain>(data: &[T], label: &str) -> GuardedBuffer<T> {
    GuardedBuffer::from_slice(data, label).unwrap()
}

fn zeros<T: sparse_attn::emu::Plain>(len: usize, label: &str) -> GuardedBuffer<T> {
    GuardedBuffer::zeroed(len, label).unwrap()
}

/// Launches a self-test kernel.
fn run<P: Copy>(kernel: KernelFn, name: &str, cfg: &LaunchConfig, p: &P) -> Result<(), EmuError> {
    // SAFETY: every self-test params struct mirrors its kernel's (sizes asserted on both
    // sides) and the tests pass live guarded buffers sized for the kernel's accesses.
    unsafe { launch(kernel, name, cfg, p) }
}

/// Asserts the launch failed with `EmuError::$variant` and that the message names each needle.
macro_rules! assert_fault {
    ($result:expr, $variant:ident, [$($needle:expr),* $(,)?]) => {{
        let err: EmuError = $result.expect_err("the emulator must report this kernel");
        assert!(
            matches!(err, EmuError::$variant(_)),
            "expected EmuError::{}, got {err:?}",
            stringify!($variant)
        );
        for needle in [$($needle),*] {
            assert!(
                err.message().contains(needle),
                "the report does not mention {needle:?}:\n{}",
                err.message()
            );
        }
        err
    }};
}

// ---- mma ----------------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn run_mma(
    a: &[f32],
    b: &[f32],
    b2: &[f32],
    c: &[f32],
    k: i32,
    is_bf16: bool,
    mode: i32,
) -> Result<MmaOut, EmuError> {
    let bits = |v: &[f32]| v.iter().map(|&x| to_bits(x, is_bf16)).collect::<Vec<u16>>();
    let (ab, bb, b2b, cb) = (
        buf(&bits(a), "a"),
        buf(&bits(b), "b"),
        buf(&bits(b2), "b2"),
        buf(c, "c"),
    );
    let d = zeros::<f32>(128, "d");
    let frags = zeros::<u32>(32 * 16, "frags");
    let p = MmaParams {
        a: ab.as_ptr(),
        b: bb.as_ptr(),
        b2: b2b.as_ptr(),
        c: cb.as_ptr(),
        d: d.as_ptr() as *mut f32,
        frags: frags.as_ptr() as *mut u32,
        k,
        bf16: i32::from(is_bf16),
        mode,
        pad: 0,
    };
    run(sa_selftest_mma, "sa_selftest_mma", &cfg(1, 32, 0), &p)?;
    Ok(MmaOut {
        frags: frags.to_vec(),
        d: d.to_vec(),
    })
}

/// A plain d = a.b + c.
fn mma_plain(a: &[f32], b: &[f32], c: &[f32], k: i32, is_bf16: bool) -> MmaOut {
    run_mma(a, b, &ZERO, c, k, is_bf16, mma_mode::PLAIN).unwrap()
}

#[test]
fn mma_fragment_vectors_of_the_spec() {
    let (a, b) = spec_ab();
    for is_bf16 in [false, true] {
        let out = mma_plain(&a, &b, &ZERO, 16, is_bf16);
        for (lane, want) in MMA_EXPECT_A {
            assert_eq!(out.a(lane, is_bf16), want, "A fragment of lane {lane}");
        }
        for (lane, want) in MMA_EXPECT_B {
            assert_eq!(out.b(lane, is_bf16), want, "B fragment of lane {lane}");
        }
    }
}

#[test]
fn mma_identity_gives_b() {
    let (_, b) = spec_ab();
    let eye = identity16();
    for is_bf16 in [false, true] {
        let out = mma_plain(&eye, &b, &ZERO, 16, is_bf16);
        for (lane, want) in MMA_IDENTITY_EXPECT_D {
            assert_eq!(out.d_lane(lane), want, "D fragment of lane {lane}");
        }
        assert_eq!(out.d, b, "D = I . B = B");
    }
}

#[test]
fn mma_zero_product_passes_c_through_bit_for_bit() {
    let c = passthrough_c();
    for is_bf16 in [false, true] {
        let out = mma_plain(&[0.0; 256], &ZERO, &c, 16, is_bf16);
        let got: Vec<u32> = out.d.iter().map(|x| x.to_bits()).collect();
        let want: Vec<u32> = c.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, want);
        // Lane 0 holds C[0][0], C[0][1], C[8][0], C[8][1].
        let lane0: Vec<u32> = out.d_lane(0).iter().map(|x| x.to_bits()).collect();
        assert_eq!(lane0, [c[0], c[1], c[64], c[65]].map(f32::to_bits));
    }
}

#[test]
fn mma_ones_times_k_is_120_everywhere() {
    let ones = vec![1.0f32; 256];
    let b = b_equals_k(); // B[k][n] = k
    for is_bf16 in [false, true] {
        let out = mma_plain(&ones, &b, &ZERO, 16, is_bf16);
        assert!(out.d.iter().all(|&x| x == 120.0), "{:?}", out.d);
    }
}

/// Random integers in [-4, 4] against an exact triple loop, for m16n8k16 and m16n8k8.
#[test]
fn mma_random_integers_match_triple_loop() {
    for MmaCase {
        k,
        is_bf16,
        a,
        b,
        c,
    } in mma_random_cases()
    {
        let out = mma_plain(&a, &b, &c, k as i32, is_bf16);
        assert_mma_exact(&out.d, &a, &b, &c, k, is_bf16);
    }
}

/// m16n8k8: A is two registers (a0,a1 at row g; a2,a3 at row g + 8), B one register.
#[test]
fn mma_k8_fragment_vectors() {
    let (a, b) = spec_ab();
    let out = mma_plain(&a, &b, &ZERO, 8, false);
    // Lane 1 (g 0, t 1): a = (0,2)(0,3)(8,2)(8,3); b = (2,0)(3,0).
    assert_eq!(&out.a(1, false)[..4], &MMA_K8_LANE1_A);
    assert_eq!(&out.b(1, false)[..2], &MMA_K8_LANE1_B);
    assert_eq!(out.frags[16 + 2], 0, "a4..a7 unused for k8");
    // D[0][0] = sum_{k<8} A[0][k] B[k][0] = sum k * 8k.
    assert_eq!(out.d[0], mma_k8_d00());
}

/// docs/emulator.md §6 C->A reuse: D of two adjacent n8 tiles, converted to 16 bits, is the A
/// fragment of the next product: a0a1 = D0[0..1], a2a3 = D0[2..3], a4a5 = D1[0..1],
/// a6a7 = D1[2..3].
#[test]
fn mma_accumulator_reused_as_a_fragment() {
    for case in mma_chain_cases() {
        let (a, b1, b2, c) = (&case.a, &case.b1, &case.b2, &case.c);
        let out = run_mma(a, b1, b2, c, 16, case.is_bf16, mma_mode::CHAIN).unwrap();
        for lane in 0..32 {
            // Register j = {S[g + 8*(j&1)][2t + 8*(j>>1)], the next column}.
            for (j, &reg) in out.p_lane(lane).iter().enumerate() {
                assert_eq!(reg, case.p_reg(lane, j), "lane {lane} P register {j}");
            }
        }
        for m in 0..16 {
            for n in 0..8 {
                assert_eq!(out.d[m * 8 + n], case.o(m, n), "O[{m}][{n}]");
            }
        }
    }
}

#[test]
fn mma_with_an_exited_lane_is_reported() {
    let (a, b) = spec_ab();
    let err = assert_fault!(
        run_mma(&a, &b, &ZERO, &ZERO, 16, false, mma_mode::MISSING_LANE),
        Warp,
        [
            "lane 31",
            "mma.m16n8k16",
            "selftest_mma.cu",
            "sa_selftest_mma"
        ]
    );
    assert_eq!(err.thread(), [31, 0, 0]);
}

// ---- pipelined GEMM: schedules, eager cp.async, broken variants --------------------------------

struct Gemm {
    m: usize,
    k: usize,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl Gemm {
    fn new(m: usize, k: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let a = (0..m * k).map(|_| rng.int_in(-3, 3) as f32).collect();
        let b = (0..k * 16).map(|_| rng.int_in(-3, 3) as f32).collect();
        Gemm { m, k, a, b }
    }

    fn reference(&self) -> Vec<f32> {
        let mut c = vec![0.0f32; self.m * 16];
        for i in 0..self.m {
            for j in 0..16 {
                c[i * 16 + j] = (0..self.k)
                    .map(|kk| self.a[i * self.k + kk] * self.b[kk * 16 + j])
                    .sum();
            }
        }
        c
    }

    /// Returns (C, row maxima).
    fn run(
        &self,
        is_bf16: bool,
        mode: i32,
        lc: &LaunchConfig,
    ) -> Result<(Vec<f32>, Vec<f32>), EmuError> {
        let bits = |v: &[f32]| v.iter().map(|&x| to_bits(x, is_bf16)).collect::<Vec<u16>>();
        let (ab, bb) = (buf(&bits(&self.a), "gemm_a"), buf(&bits(&self.b), "gemm_b"));
        let c = zeros::<f32>(self.m * 16, "gemm_c");
        let rmax = zeros::<f32>(self.m, "gemm_row_max");
        let p = GemmParams {
            a: ab.as_ptr(),
            b: bb.as_ptr(),
            c: c.as_ptr() as *mut f32,
            row_max: rmax.as_ptr() as *mut f32,
            m: self.m as i32,
            k: self.k as i32,
            bf16: i32::from(is_bf16),
            mode,
        };
        run(sa_selftest_gemm, "sa_selftest_gemm", lc, &p)?;
        Ok((c.to_vec(), rmax.to_vec()))
    }

    fn config(&self) -> LaunchConfig {
        cfg((self.m / 64) as u32, 128, 2 * (2048 + 512))
    }
}

#[test]
fn gemm_pipeline_matches_exact_reference() {
    let g = Gemm::new(128, 64, 11);
    let want = g.reference();
    for is_bf16 in [false, true] {
        let (c, rmax) = g.run(is_bf16, gemm_mode::CORRECT, &g.config()).unwrap();
        assert_eq!(c, want);
        for (i, &mx) in rmax.iter().enumerate() {
            let row_max = want[i * 16..i * 16 + 16]
                .iter()
                .cloned()
                .fold(f32::MIN, f32::max);
            assert_eq!(mx, row_max, "row {i}");
        }
    }
}

/// Barriers, shuffles and a cp.async pipeline: bit-identical under every order and worker
/// count.
#[test]
fn gemm_is_identical_under_every_schedule() {
    let g = Gemm::new(256, 64, 12);
    let base = g.run(false, gemm_mode::CORRECT, &g.config()).unwrap();
    assert_eq!(base.0, g.reference());
    let schedules = [
        Schedule::Reverse,
        Schedule::Random(1),
        Schedule::Random(2),
        Schedule::Random(0xdead_beef),
    ];
    for (i, schedule) in schedules.into_iter().enumerate() {
        let mut lc = g.config();
        lc.schedule = schedule;
        lc.workers = 1 + (i as u32 % 2);
        let got = g.run(false, gemm_mode::CORRECT, &lc).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got.0), bits(&base.0), "{schedule:?}");
        assert_eq!(bits(&got.1), bits(&base.1), "{schedule:?}");
    }
}

#[test]
fn gemm_eager_and_adversarial_cp_async_agree() {
    let g = Gemm::new(128, 96, 13);
    let adversarial = g.run(true, gemm_mode::CORRECT, &g.config()).unwrap();
    let mut lc = g.config();
    lc.eager_cp_async = true;
    let eager = g.run(true, gemm_mode::CORRECT, &lc).unwrap();
    assert_eq!(adversarial, eager);
    assert_eq!(eager.0, g.reference());
}

#[test]
fn gemm_missing_wait_is_reported() {
    let g = Gemm::new(64, 64, 14);
    assert_fault!(
        g.run(false, gemm_mode::MISSING_WAIT, &g.config()),
        CpAsync,
        [
            "before its wait_group",
            "ldmatrix",
            "selftest_gemm.cu",
            "sa_selftest_gemm"
        ]
    );
}

#[test]
fn gemm_missing_barrier_after_wait_is_reported() {
    let g = Gemm::new(64, 64, 15);
    for schedule in [Schedule::Forward, Schedule::Reverse, Schedule::Random(5)] {
        let mut lc = g.config();
        lc.schedule = schedule;
        assert_fault!(
            g.run(false, gemm_mode::MISSING_BARRIER_AFTER_WAIT, &lc),
            CpAsync,
            [
                "missing __syncthreads after cp.async wait",
                "selftest_gemm.cu"
            ]
        );
    }
}

/// A prefetch that refills a stage other warps may still be reading (no barrier between):
/// caught as a write-after-read or as a read of an in-flight destination, in every order.
#[test]
fn gemm_missing_barrier_before_refill_is_reported() {
    let g = Gemm::new(64, 64, 16);
    for schedule in [Schedule::Forward, Schedule::Reverse, Schedule::Random(9)] {
        let mut lc = g.config();
        lc.schedule = schedule;
        let err = assert_fault!(
            g.run(false, gemm_mode::MISSING_BARRIER_BEFORE_REFILL, &lc),
            CpAsync,
            ["selftest_gemm.cu"]
        );
        let msg = err.message();
        assert!(
            msg.contains("write-after-read") || msg.contains("before its wait_group"),
            "{msg}"
        );
    }
}

#[test]
fn gemm_with_swapped_fragment_registers_is_wrong() {
    let g = Gemm::new(64, 32, 17);
    let (c, _) = g
        .run(false, gemm_mode::SWAPPED_FRAGMENTS, &g.config())
        .unwrap();
    let want = g.reference();
    assert_eq!(c.len(), want.len());
    let wrong = c.iter().zip(&want).filter(|(x, y)| x != y).count();
    assert!(
        wrong > 512,
        "only {wrong} of 1024 entries differ: a layout bug would pass"
    );
}

// ---- ldmatrix ------------------------------------------------------------------------------------

fn run_ldmatrix(num: i32, trans: bool, mode: i32) -> Result<Vec<u32>, EmuError> {
    let out = zeros::<u32>(128, "ldsm_out");
    let p = LdmatrixParams {
        out: out.as_ptr() as *mut u32,
        num,
        trans: i32::from(trans),
        mode,
        pad: 0,
    };
    run(
        sa_selftest_ldmatrix,
        "sa_selftest_ldmatrix",
        &cfg(1, 32, 512),
        &p,
    )?;
    Ok(out.to_vec())
}

#[test]
fn ldmatrix_x4_vectors_of_the_spec() {
    let out = run_ldmatrix(4, false, ldmatrix_mode::STANDARD).unwrap();
    assert_eq!(lane_regs(&out, 0), LDSM_X4_LANE0);
    assert_eq!(out[4], LDSM_X4_LANE1_REG0);
    assert_eq!(lane_regs(&out, 31), LDSM_X4_LANE31);
}

#[test]
fn ldmatrix_x4_trans_vectors_of_the_spec() {
    let out = run_ldmatrix(4, true, ldmatrix_mode::STANDARD).unwrap();
    assert_eq!(lane_regs(&out, 0), LDSM_X4T_LANE0);
    assert_eq!(out[4], LDSM_X4T_LANE1_REG0);
    assert_eq!(out[4 * 4], LDSM_X4T_LANE4_REG0);
    // Lane 31 (g 7, t 3): {S[6][7], S[7][7]}, ..., {S[14][15], S[15][15]}.
    assert_eq!(lane_regs(&out, 31), LDSM_X4T_LANE31);
}

#[test]
fn ldmatrix_x1_x2_ignore_garbage_addresses_of_unused_lanes() {
    let x1 = run_ldmatrix(1, false, 0).unwrap();
    assert_eq!(lane_regs(&x1, 0), LDSM_X1_LANE0);
    assert_eq!(lane_regs(&x1, 31), LDSM_X1_LANE31);
    let x2 = run_ldmatrix(2, false, 0).unwrap();
    assert_eq!(lane_regs(&x2, 0), LDSM_X2_LANE0);
    assert_eq!(lane_regs(&x2, 31), LDSM_X2_LANE31);
    let x1t = run_ldmatrix(1, true, 0).unwrap();
    assert_eq!(lane_regs(&x1t, 1), LDSM_X1T_LANE1);
    let x2t = run_ldmatrix(2, true, 0).unwrap();
    assert_eq!(lane_regs(&x2t, 0), LDSM_X2T_LANE0);
}

#[test]
fn ldmatrix_honours_permuted_row_addresses() {
    // Lane 8m + r supplies row 7 - r of matrix m.
    let out = run_ldmatrix(4, false, ldmatrix_mode::PERMUTED).unwrap();
    for (i, want) in LDSM_PERMUTED {
        assert_eq!(out[i], want, "out[{i}]");
    }
}

#[test]
fn ldmatrix_misaligned_address_traps() {
    let err = assert_fault!(
        run_ldmatrix(4, false, ldmatrix_mode::MISALIGNED),
        Misaligned,
        ["lane 3", "16-byte aligned", "selftest_ldmatrix.cu"]
    );
    assert_eq!(err.thread(), [3, 0, 0]);
}

#[test]
fn ldmatrix_outside_shared_memory_is_reported() {
    assert_fault!(
        run_ldmatrix(2, true, ldmatrix_mode::OUT_OF_SMEM),
        OutOfBounds,
        ["lane 5", "dynamic shared memory", "selftest_ldmatrix.cu"]
    );
}

// ---- cp.async ------------------------------------------------------------------------------------

fn cp_src() -> Vec<u8> {
    (0..64u32).map(|i| (i * 7 + 3) as u8).collect()
}

fn run_cp_async(mode: i32, block: u32, lc: Option<LaunchConfig>) -> Result<Vec<u8>, EmuError> {
    let src = buf(&cp_src(), "cp_src");
    let out = zeros::<u8>(256, "cp_out");
    let p = CpAsyncParams {
        src: src.as_ptr(),
        out: out.as_ptr() as *mut u8,
        src_len: 64,
        mode,
    };
    let lc = lc.unwrap_or_else(|| cfg(1, block, 64));
    run(sa_selftest_cp_async, "sa_selftest_cp_async", &lc, &p)?;
    Ok(out.to_vec())
}

#[test]
fn cp_async_16_byte_round_trip() {
    let out = run_cp_async(cp_async_mode::ROUND_TRIP, 32, None).unwrap();
    assert_eq!(&out[..16], &cp_src()[..16]);
}

#[test]
fn cp_async_src_size_8_zero_fills() {
    let out = run_cp_async(cp_async_mode::SRC_SIZE_8, 32, None).unwrap();
    assert_eq!(&out[..8], &cp_src()[..8]);
    assert_eq!(&out[8..16], &[0u8; 8]);
}

#[test]
fn cp_async_src_size_0_never_reads_the_source() {
    // The source pointer is one past the end of "cp_src", i.e. in its guard page.
    let out = run_cp_async(cp_async_mode::SRC_SIZE_0, 32, None).unwrap();
    assert_eq!(&out[..16], &[0u8; 16]);
}

#[test]
fn cp_async_wait_group_lands_only_the_oldest_groups() {
    let src = cp_src();
    let out = run_cp_async(cp_async_mode::THREE_GROUPS, 32, None).unwrap();
    let poison = [0xffu8; 16];
    // After wait<2>: only buffer 0.
    assert_eq!(&out[0..16], &src[0..16]);
    assert_eq!(&out[16..32], &poison);
    assert_eq!(&out[32..48], &poison);
    // After wait<1>: buffers 0 and 1.
    assert_eq!(&out[48..80], &src[0..32]);
    assert_eq!(&out[80..96], &poison);
    // After wait<0>: all three.
    assert_eq!(&out[96..144], &src[0..48]);
}

#[test]
fn cp_async_eager_mode_copies_at_issue() {
    let mut lc = cfg(1, 32, 64);
    lc.eager_cp_async = true;
    let src = cp_src();
    let out = run_cp_async(cp_async_mode::THREE_GROUPS, 32, Some(lc)).unwrap();
    for snapshot in 0..3 {
        assert_eq!(&out[48 * snapshot..48 * snapshot + 48], &src[0..48]);
    }
}

#[test]
fn cp_async_empty_commit_counts_as_a_group() {
    let out = run_cp_async(cp_async_mode::EMPTY_GROUP, 32, None).unwrap();
    assert_eq!(&out[..32], &cp_src()[..32]);
}

#[test]
fn cp_async_ca_sizes_and_partial_sources() {
    let src = cp_src();
    let out = run_cp_async(cp_async_mode::SIZES, 32, None).unwrap();
    assert_eq!(&out[0..4], &src[0..4]);
    assert_eq!(
        &out[4..8],
        &[0xff; 4],
        "never written: shared memory starts poisoned"
    );
    assert_eq!(&out[8..13], &src[8..13]);
    assert_eq!(&out[13..16], &[0; 3]);
    assert_eq!(&out[16..28], &src[16..28]);
    assert_eq!(&out[28..32], &[0; 4]);
}

#[test]
fn cp_async_syncwarp_publishes_within_the_warp() {
    let out = run_cp_async(cp_async_mode::SYNCWARP_PUBLISHES, 32, None).unwrap();
    assert_eq!(&out[..16], &cp_src()[..16]);
}

#[test]
fn cp_async_read_before_wait_is_reported() {
    let err = assert_fault!(
        run_cp_async(cp_async_mode::READ_BEFORE_WAIT, 32, None),
        CpAsync,
        [
            "before its wait_group",
            "selftest_cp_async.cu",
            "sa_selftest_cp_async"
        ]
    );
    assert!(!err.message().contains("__syncthreads"));
}

#[test]
fn cp_async_cg_with_8_bytes_is_reported() {
    assert_fault!(
        run_cp_async(cp_async_mode::CG8, 32, None),
        CpAsync,
        ["cp.async.cg", "cp-size 8", "selftest_cp_async.cu"]
    );
}

#[test]
fn cp_async_pending_at_exit_is_reported() {
    assert_fault!(
        run_cp_async(cp_async_mode::PENDING_AT_EXIT, 32, None),
        CpAsync,
        ["still pending", "never waited for", "selftest_cp_async.cu"]
    );
    assert_fault!(
        run_cp_async(cp_async_mode::NEVER_COMMITTED, 32, None),
        CpAsync,
        ["still pending", "never committed"]
    );
}

#[test]
fn cp_async_overlapping_destinations_are_reported() {
    assert_fault!(
        run_cp_async(cp_async_mode::OVERLAP, 32, None),
        CpAsync,
        ["overlapping cp.async destinations", "selftest_cp_async.cu"]
    );
}

#[test]
fn cp_async_source_out_of_bounds_names_the_buffer() {
    assert_fault!(
        run_cp_async(cp_async_mode::SRC_OUT_OF_BOUNDS, 32, None),
        OutOfBounds,
        [
            "'cp_src'",
            "past the end",
            "byte offset 79",
            "selftest_cp_async.cu"
        ]
    );
}

#[test]
fn cp_async_misaligned_destination_is_reported() {
    assert_fault!(
        run_cp_async(cp_async_mode::MISALIGNED_DST, 32, None),
        Misaligned,
        ["16-byte aligned", "selftest_cp_async.cu"]
    );
}

#[test]
fn cp_async_missing_barrier_after_wait_is_reported() {
    let err = assert_fault!(
        run_cp_async(cp_async_mode::MISSING_BARRIER, 64, None),
        CpAsync,
        [
            "missing __syncthreads after cp.async wait",
            "selftest_cp_async.cu"
        ]
    );
    assert_eq!(err.thread(), [32, 0, 0]);
}

#[test]
fn cp_async_write_after_read_is_reported() {
    let mut lc = cfg(1, 64, 64);
    lc.schedule = Schedule::Reverse; // either order: thread 32 reads before thread 0 refills
    assert_fault!(
        run_cp_async(cp_async_mode::WRITE_AFTER_READ, 64, Some(lc)),
        CpAsync,
        ["write-after-read", "warp 1", "selftest_cp_async.cu"]
    );
    assert_fault!(
        run_cp_async(cp_async_mode::WRITE_AFTER_READ, 64, None),
        CpAsync,
        ["write-after-read", "warp 1"]
    );
}

// ---- shuffles, __syncwarp, __syncthreads ------------------------------------------------------

fn run_warp(mode: i32, lc: &LaunchConfig, out_len: usize) -> Result<Vec<u32>, EmuError> {
    let out = zeros::<u32>(out_len, "warp_out");
    let p = WarpParams {
        out: out.as_ptr() as *mut u32,
        mode,
        pad: 0,
    };
    run(sa_selftest_warp, "sa_selftest_warp", lc, &p)?;
    Ok(out.to_vec())
}

fn warp32(mode: i32) -> Result<Vec<u32>, EmuError> {
    run_warp(mode, &cfg(1, 32, 0), 64)
}

#[test]
fn shfl_xor_butterfly_sum() {
    assert_eq!(
        warp32(warp_mode::BUTTERFLY_SUM).unwrap()[..32],
        SHFL_BUTTERFLY_SUM
    );
}

#[test]
fn shfl_xor_16_width_16() {
    let out = warp32(warp_mode::XOR16_WIDTH16).unwrap();
    for (l, want) in shfl_xor16_width16().into_iter().enumerate() {
        assert_eq!(out[l], want, "lane {l}");
    }
}

#[test]
fn shfl_idx_10_width_8() {
    let out = warp32(warp_mode::IDX10_WIDTH8).unwrap();
    for (l, want) in shfl_idx10_width8().into_iter().enumerate() {
        assert_eq!(out[l], want, "lane {l}");
    }
}

#[test]
fn shfl_down_16() {
    let out = warp32(warp_mode::DOWN16).unwrap();
    for (l, want) in shfl_down16().into_iter().enumerate() {
        assert_eq!(out[l], want, "lane {l}");
    }
}

#[test]
fn shfl_up_1_width_8() {
    let out = warp32(warp_mode::UP1_WIDTH8).unwrap();
    for (l, want) in shfl_up1_width8().into_iter().enumerate() {
        assert_eq!(out[l], want, "lane {l}");
    }
}

#[test]
fn shfl_64_bit() {
    let out = warp32(warp_mode::SHFL64).unwrap();
    let want = shfl_64();
    for l in 0..32 {
        assert_eq!(out[2 * l], want[2 * l], "lane {l} low word");
        assert_eq!(out[2 * l + 1], want[2 * l + 1], "lane {l} high word");
    }
}

#[test]
fn shfl_quad_max() {
    // x(L) = (11 L mod 32) + 0.5; the maxima of the 8 quads, worked out by hand.
    let out = warp32(warp_mode::QUAD_MAX).unwrap();
    for l in 0..32 {
        assert_eq!(f32::from_bits(out[l]), SHFL_QUAD_MAX[l / 4], "lane {l}");
    }
}

#[test]
fn shfl_partial_masks_and_sources_outside_the_mask() {
    let out = warp32(warp_mode::PARTIAL_MASKS).unwrap();
    for l in 0..32 {
        let (first, second) = shfl_partial_masks(l);
        let want = (first.unwrap_or(POISON), second.unwrap_or(POISON));
        assert_eq!((out[l], out[32 + l]), want, "lane {l}");
    }
}

#[test]
fn shfl_does_not_wait_for_exited_lanes() {
    let out = warp32(warp_mode::EXITED_LANES).unwrap();
    for l in 0..16u32 {
        assert_eq!(out[l as usize], POISON, "lane {l} read an exited lane");
        assert_eq!(
            out[32 + l as usize],
            shfl_exited_lanes_second(l),
            "lane {l}"
        );
    }
    assert!(out[16..32].iter().all(|&x| x == 0));
}

#[test]
fn syncwarp_does_not_wait_for_exited_lanes() {
    let out = warp32(warp_mode::SYNCWARP_EXITED).unwrap();
    assert_eq!(out[..16], SYNCWARP_EXITED);
}

#[test]
fn exit_past_a_barrier_is_reported_in_either_order() {
    // Warp 1 returns early; warp 0 waits at a barrier warp 1 never reaches. Forward: warp 0
    // waits first and warp 1's exit is reported; reverse: warp 1 exits first and warp 0's
    // arrival is reported.
    let mut lc = cfg(1, 64, 128);
    assert_fault!(
        run_warp(warp_mode::BARRIER_EXITED, &lc, 64),
        Barrier,
        ["thread exited while 32 threads", "selftest_warp.cu"]
    );
    lc.schedule = Schedule::Reverse;
    assert_fault!(
        run_warp(warp_mode::BARRIER_EXITED, &lc, 64),
        Barrier,
        ["__syncthreads reached after", "exited", "selftest_warp.cu"]
    );
}

#[test]
fn thread_and_block_indices_in_3d() {
    let lc = LaunchConfig::new(INDICES_GRID, INDICES_BLOCK, 0);
    let out = run_warp(warp_mode::INDICES, &lc, 4 * 12 * 24).unwrap();
    assert_eq!(out, indices_3d());
}

#[test]
fn shfl_lane_outside_its_own_mask_is_reported() {
    let err = assert_fault!(
        warp32(warp_mode::NOT_IN_MASK),
        Warp,
        ["not in its own mask", "selftest_warp.cu"]
    );
    assert_eq!(err.thread(), [0, 0, 0]);
}

#[test]
fn shfl_mismatched_call_sites_are_reported() {
    assert_fault!(
        warp32(warp_mode::MISMATCH),
        Warp,
        [
            "mismatched warp collectives",
            "shfl.sync.bfly",
            "selftest_warp.cu"
        ]
    );
}

#[test]
fn shfl_invalid_width_is_reported() {
    assert_fault!(warp32(warp_mode::BAD_WIDTH), Warp, ["width 12"]);
}

#[test]
fn divergent_syncthreads_is_reported_not_hung() {
    for schedule in [Schedule::Forward, Schedule::Reverse, Schedule::Random(3)] {
        let mut lc = cfg(1, 64, 0);
        lc.schedule = schedule;
        assert_fault!(
            run_warp(warp_mode::DIVERGENT_BARRIER, &lc, 64),
            Barrier,
            [
                "divergent __syncthreads",
                "selftest_warp.cu",
                "sa_selftest_warp"
            ]
        );
    }
}

/// The orders really differ: the divergence is reported by the first thread that reaches the
/// second barrier site, which depends on the schedule (forward: thread 32, reverse: 31).
#[test]
fn schedules_produce_different_interleavings() {
    let reporter = |schedule| {
        let mut lc = cfg(1, 64, 0);
        lc.schedule = schedule;
        run_warp(warp_mode::DIVERGENT_BARRIER, &lc, 64)
            .unwrap_err()
            .thread()
    };
    assert_eq!(reporter(Schedule::Forward), [32, 0, 0]);
    assert_eq!(reporter(Schedule::Reverse), [31, 0, 0]);
    let random: std::collections::BTreeSet<u32> =
        (0..8).map(|s| reporter(Schedule::Random(s))[0]).collect();
    assert!(
        random.len() >= 4,
        "random schedules barely differ: {random:?}"
    );
    // Same seed, same schedule.
    assert_eq!(reporter(Schedule::Random(5)), reporter(Schedule::Random(5)));
}

#[test]
fn deadlock_lists_every_blocked_call_site() {
    assert_fault!(
        run_warp(warp_mode::DEADLOCK, &cfg(1, 64, 0), 64),
        Barrier,
        [
            "deadlock",
            "__syncthreads",
            "shfl.sync.bfly",
            "linear thread ids 32-47",
            "linear thread ids 0-31, 48-63",
        ]
    );
}

#[test]
fn kernel_trap_is_reported() {
    let err = assert_fault!(
        warp32(warp_mode::TRAP),
        Trap,
        ["lane 5 trapped", "selftest_warp.cu"]
    );
    assert_eq!(err.thread(), [5, 0, 0]);
}

// ---- memory: guard pages, poison, faults -------------------------------------------------------

fn run_memory(mode: i32, n: i32, lc: &LaunchConfig) -> Result<Vec<f32>, EmuError> {
    let src: Vec<f32> = (0..n.max(0)).map(|i| i as f32 * 0.5).collect();
    let src = buf(&src, "src");
    let dst_len = if mode == memory_mode::SMEM_POISON {
        lc.block[0] as usize
    } else {
        n.max(1) as usize
    };
    let dst = zeros::<f32>(dst_len, "dst");
    let p = MemoryParams {
        src: if mode == memory_mode::NULL_READ {
            std::ptr::null()
        } else {
            src.as_ptr()
        },
        dst: dst.as_ptr() as *mut f32,
        n,
        mode,
    };
    run(sa_selftest_memory, "sa_selftest_memory", lc, &p)?;
    Ok(dst.to_vec())
}

#[test]
fn global_memory_across_blocks() {
    let out = run_memory(memory_mode::COPY, 1000, &cfg(3, 128, 0)).unwrap();
    for (i, &x) in out.iter().enumerate() {
        assert_eq!(x, i as f32, "element {i}");
    }
}

#[test]
fn shared_memory_starts_poisoned() {
    let out = run_memory(memory_mode::SMEM_POISON, 128, &cfg(1, 128, 512)).unwrap();
    assert!(out.iter().all(|x| x.to_bits() == 0xffff_ffff));
}

#[test]
fn global_out_of_bounds_read_names_buffer_block_and_thread() {
    let err = assert_fault!(
        run_memory(memory_mode::GLOBAL_OOB_READ, 100, &cfg(2, 128, 0)),
        OutOfBounds,
        [
            "global memory read",
            "past the end of buffer 'src'",
            "sa_selftest_memory"
        ]
    );
    assert_eq!(err.block(), [1, 0, 0]);
    assert_eq!(err.thread(), [3, 0, 0]);
}

#[test]
fn global_out_of_bounds_write_names_the_buffer() {
    assert_fault!(
        run_memory(memory_mode::GLOBAL_OOB_WRITE, 100, &cfg(1, 32, 0)),
        OutOfBounds,
        ["global memory write", "buffer 'dst' (400 bytes"]
    );
}

#[test]
fn shared_out_of_bounds_checked_read_is_reported() {
    assert_fault!(
        run_memory(memory_mode::SHARED_OOB_CHECKED, 100, &cfg(1, 32, 100)),
        OutOfBounds,
        [
            "shared memory load",
            "byte offset 100",
            "selftest_memory.cu"
        ]
    );
}

#[test]
fn shared_out_of_bounds_plain_read_hits_the_guard_page() {
    assert_fault!(
        run_memory(memory_mode::SHARED_OOB_PLAIN, 256, &cfg(1, 32, 256)),
        OutOfBounds,
        ["shared memory read", "guard page"]
    );
}

#[test]
fn fiber_stack_overflow_is_reported() {
    let err = assert_fault!(
        run_memory(memory_mode::STACK_OVERFLOW, 100, &cfg(1, 32, 0)),
        Internal,
        ["stack overflow"]
    );
    assert_eq!(err.thread(), [7, 0, 0]);
}

#[test]
fn null_pointer_read_is_reported() {
    assert_fault!(
        run_memory(memory_mode::NULL_READ, 100, &cfg(1, 32, 0)),
        OutOfBounds,
        ["not inside any sa_emu_alloc buffer"]
    );
}

#[test]
fn integer_division_by_zero_is_reported() {
    assert_fault!(
        run_memory(memory_mode::DIV_BY_ZERO, 0, &cfg(1, 32, 0)),
        Trap,
        ["SIGFPE"]
    );
}

/// Child-process half of the two tests below: installs the emulator's fault handler with a
/// launch, then faults outside any kernel as `SA_EMU_CHILD_FAULT` says.
fn fault_outside_kernel_child() {
    let Ok(kind) = std::env::var("SA_EMU_CHILD_FAULT") else {
        return;
    };
    run_memory(memory_mode::COPY, 10, &cfg(1, 32, 0)).unwrap();
    if kind == "overflow" {
        fn recurse(n: u64) -> u64 {
            let frame = std::hint::black_box([n; 64]);
            if std::hint::black_box(n) == u64::MAX {
                return 0;
            }
            recurse(n + 1) + frame[3]
        }
        std::hint::black_box(recurse(0));
    } else {
        // SAFETY: deliberately faults (address 8 is never mapped); this child process dies.
        unsafe { std::ptr::read_volatile(std::hint::black_box(8usize) as *const u64) };
    }
    unreachable!("the fault did not happen");
}

/// Runs this test binary's `test` in a child with `SA_EMU_CHILD_FAULT=kind`.
fn run_fault_child(test: &str, kind: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("SA_EMU_CHILD_FAULT", kind)
        .output()
        .unwrap()
}

/// A stack overflow on a Rust thread still reaches Rust's handler after the emulator installed
/// its own (the emulator's handler chains to the previous one for faults outside kernels).
#[test]
fn fault_handler_chains_rust_stack_overflow() {
    fault_outside_kernel_child();
    let out = run_fault_child("fault_handler_chains_rust_stack_overflow", "overflow");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("has overflowed its stack"), "{stderr}");
}

/// Any other fault outside a kernel kills the process with the default action (SIGSEGV).
#[test]
fn fault_outside_kernels_keeps_the_default_action() {
    use std::os::unix::process::ExitStatusExt;
    fault_outside_kernel_child();
    let out = run_fault_child("fault_outside_kernels_keeps_the_default_action", "segv");
    assert_eq!(out.status.signal(), Some(11), "{out:?}");
}

#[test]
fn invalid_launch_configurations_are_rejected() {
    let bad = [
        LaunchConfig::new([1, 1, 1], [1025, 1, 1], 0),
        LaunchConfig::new([1, 1, 1], [32, 32, 2], 0),
        LaunchConfig::new([0, 1, 1], [32, 1, 1], 0),
        LaunchConfig::new([1, 1, 1], [32, 1, 1], 300 * 1024),
    ];
    for lc in bad {
        assert_fault!(
            run_memory(memory_mode::COPY, 10, &lc),
            Config,
            ["sa_selftest_memory"]
        );
    }
}

/// Launches from several threads at once, faulting and correct ones mixed: each gets its own
/// result, and a fault in one does not disturb the others.
#[test]
fn concurrent_launches_are_independent() {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|i| {
                s.spawn(move || {
                    if i == 2 {
                        let r = run_memory(memory_mode::GLOBAL_OOB_READ, 50, &cfg(2, 128, 0));
                        assert!(matches!(r, Err(EmuError::OutOfBounds(_))));
                    } else {
                        let g = Gemm::new(128, 48, 100 + i);
                        let mut lc = g.config();
                        lc.schedule = Schedule::Random(i);
                        assert_eq!(g.run(i % 2 == 1, 0, &lc).unwrap().0, g.reference());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

// ---- numeric conversions --------------------------------------------------------------------------

/// f32 -> f16 / bf16 round-to-nearest-even and widening, against hand-computed bit patterns.
#[test]
fn f16_and_bf16_conversions_round_to_nearest_even() {
    let (cases, widen) = (convert_cases(), WIDEN_CASES);
    let n = cases.len();
    let input: Vec<f32> = cases.iter().map(|c| c.0).collect();
    let bits16: Vec<u16> = widen.iter().map(|w| w.0).collect();
    let inb = buf(&input, "in");
    let bitsb = buf(&bits16, "bits16");
    let (f16o, bf16o) = (zeros::<u16>(n, "f16"), zeros::<u16>(n, "bf16"));
    let (pf, pb) = (
        zeros::<u32>(n, "packed_f16"),
        zeros::<u32>(n, "packed_bf16"),
    );
    let (wf, wb) = (
        zeros::<f32>(n, "widened_f16"),
        zeros::<f32>(n, "widened_bf16"),
    );
    let p = ConvertParams {
        input: inb.as_ptr(),
        bits16: bitsb.as_ptr(),
        f16: f16o.as_ptr() as *mut u16,
        bf16: bf16o.as_ptr() as *mut u16,
        packed_f16: pf.as_ptr() as *mut u32,
        packed_bf16: pb.as_ptr() as *mut u32,
        widened_f16: wf.as_ptr() as *mut f32,
        widened_bf16: wb.as_ptr() as *mut f32,
        n: n as i32,
        pad: 0,
    };
    run(
        sa_selftest_convert,
        "sa_selftest_convert",
        &cfg(1, 32, 0),
        &p,
    )
    .unwrap();
    check_convert(
        &f16o.to_vec(),
        &bf16o.to_vec(),
        &pf.to_vec(),
        &pb.to_vec(),
        &wf.to_vec(),
        &wb.to_vec(),
    );
}
