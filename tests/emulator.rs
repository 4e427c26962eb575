//! The CPU emulator against the hard-coded vectors of docs/emulator.md §6, plus deliberately broken
//! kernels it must catch. Kernels: `kernels/tests/selftest_*.cu`; expected values are written
//! out by hand from the spec (never derived from the emulator's own layout tables).

// Lane-indexed loops read most naturally as `for lane in 0..32`.
#![allow(clippy::needless_range_loop)]

use half::{bf16, f16};
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

fn to_bits(x: f32, is_bf16: bool) -> u16 {
    if is_bf16 {
        bf16::from_f32(x).to_bits()
    } else {
        f16::from_f32(x).to_bits()
    }
}

fn from_bits(h: u16, is_bf16: bool) -> f32 {
    if is_bf16 {
        bf16::from_bits(h).to_f32()
    } else {
        f16::from_bits(h).to_f32()
    }
}

// ---- mma ----------------------------------------------------------------------------------------

#[derive(Debug)]
struct MmaOut {
    /// [32][16] per lane: a regs 0-3, b regs 4-5, d bits 6-9, P regs 10-13.
    frags: Vec<u32>,
    /// [16][8] row-major D.
    d: Vec<f32>,
}

impl MmaOut {
    /// The 16-bit elements a0..a7 (k16) of lane `l`, widened.
    fn a(&self, l: usize, is_bf16: bool) -> Vec<f32> {
        self.halves(l * 16, 8, is_bf16)
    }
    fn b(&self, l: usize, is_bf16: bool) -> Vec<f32> {
        self.halves(l * 16 + 4, 4, is_bf16)
    }
    /// `n` 16-bit elements packed two per register from `frags[first..]`, low half first.
    fn halves(&self, first: usize, n: usize, is_bf16: bool) -> Vec<f32> {
        (0..n)
            .map(|i| {
                from_bits(
                    (self.frags[first + i / 2] >> (16 * (i % 2))) as u16,
                    is_bf16,
                )
            })
            .collect()
    }
    fn d_lane(&self, l: usize) -> [f32; 4] {
        std::array::from_fn(|i| f32::from_bits(self.frags[l * 16 + 6 + i]))
    }
}

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

const ZERO: [f32; 128] = [0.0; 128];

/// A plain d = a.b + c.
fn mma_plain(a: &[f32], b: &[f32], c: &[f32], k: i32, is_bf16: bool) -> MmaOut {
    run_mma(a, b, &ZERO, c, k, is_bf16, mma_mode::PLAIN).unwrap()
}

/// A[m][k] = 16m + k, B[k][n] = 8k + n (docs/emulator.md §6; exact in f16 and bf16).
fn spec_ab() -> (Vec<f32>, Vec<f32>) {
    let a = (0..256).map(|i| i as f32).collect();
    let b = (0..128).map(|i| i as f32).collect();
    (a, b)
}

#[test]
fn mma_fragment_vectors_of_the_spec() {
    let (a, b) = spec_ab();
    let expect_a: [(usize, [f32; 8]); 4] = [
        (0, [0., 1., 128., 129., 8., 9., 136., 137.]),
        (1, [2., 3., 130., 131., 10., 11., 138., 139.]),
        (4, [16., 17., 144., 145., 24., 25., 152., 153.]),
        (31, [118., 119., 246., 247., 126., 127., 254., 255.]),
    ];
    let expect_b: [(usize, [f32; 4]); 4] = [
        (0, [0., 8., 64., 72.]),
        (1, [16., 24., 80., 88.]),
        (4, [1., 9., 65., 73.]),
        (31, [55., 63., 119., 127.]),
    ];
    for is_bf16 in [false, true] {
        let out = mma_plain(&a, &b, &ZERO, 16, is_bf16);
        for (lane, want) in expect_a {
            assert_eq!(out.a(lane, is_bf16), want, "A fragment of lane {lane}");
        }
        for (lane, want) in expect_b {
            assert_eq!(out.b(lane, is_bf16), want, "B fragment of lane {lane}");
        }
    }
}

#[test]
fn mma_identity_gives_b() {
    let (_, b) = spec_ab();
    let mut eye = vec![0.0f32; 256];
    for i in 0..16 {
        eye[i * 16 + i] = 1.0;
    }
    let expect: [(usize, [f32; 4]); 4] = [
        (0, [0., 1., 64., 65.]),
        (1, [2., 3., 66., 67.]),
        (4, [8., 9., 72., 73.]),
        (31, [62., 63., 126., 127.]),
    ];
    for is_bf16 in [false, true] {
        let out = mma_plain(&eye, &b, &ZERO, 16, is_bf16);
        for (lane, want) in expect {
            assert_eq!(out.d_lane(lane), want, "D fragment of lane {lane}");
        }
        assert_eq!(out.d, b, "D = I . B = B");
    }
}

#[test]
fn mma_zero_product_passes_c_through_bit_for_bit() {
    let c: Vec<f32> = (0..128)
        .map(|i| match i % 4 {
            0 => 1.5e-40 * (i + 1) as f32, // subnormal
            1 => -3.0e38 / (i + 1) as f32,
            2 => f32::from_bits(0x3f80_0001 + i as u32),
            _ => -(i as f32) - 0.25,
        })
        .collect();
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
    let b: Vec<f32> = (0..128).map(|i| (i / 8) as f32).collect(); // B[k][n] = k
    for is_bf16 in [false, true] {
        let out = mma_plain(&ones, &b, &ZERO, 16, is_bf16);
        assert!(out.d.iter().all(|&x| x == 120.0), "{:?}", out.d);
    }
}

/// Random integers in [-4, 4] against an exact triple loop, for m16n8k16 and m16n8k8.
#[test]
fn mma_random_integers_match_triple_loop() {
    let mut rng = Rng::new(0x5eed_1234_abcd_0001);
    for k in [16usize, 8] {
        for is_bf16 in [false, true] {
            for _ in 0..4 {
                let a: Vec<f32> = (0..256).map(|_| rng.int_in(-4, 4) as f32).collect();
                let b: Vec<f32> = (0..128).map(|_| rng.int_in(-4, 4) as f32).collect();
                let c: Vec<f32> = (0..128).map(|_| rng.int_in(-4, 4) as f32).collect();
                let out = mma_plain(&a, &b, &c, k as i32, is_bf16);
                for m in 0..16 {
                    for n in 0..8 {
                        let want = (0..k).map(|kk| a[m * 16 + kk] * b[kk * 8 + n]).sum::<f32>()
                            + c[m * 8 + n];
                        assert_eq!(out.d[m * 8 + n], want, "k{k} bf16={is_bf16} D[{m}][{n}]");
                    }
                }
            }
        }
    }
}

/// m16n8k8: A is two registers (a0,a1 at row g; a2,a3 at row g + 8), B one register.
#[test]
fn mma_k8_fragment_vectors() {
    let (a, b) = spec_ab();
    let out = mma_plain(&a, &b, &ZERO, 8, false);
    // Lane 1 (g 0, t 1): a = (0,2)(0,3)(8,2)(8,3); b = (2,0)(3,0).
    assert_eq!(&out.a(1, false)[..4], &[2., 3., 130., 131.]);
    assert_eq!(&out.b(1, false)[..2], &[16., 24.]);
    assert_eq!(out.frags[16 + 2], 0, "a4..a7 unused for k8");
    // D[0][0] = sum_{k<8} A[0][k] B[k][0] = sum k * 8k.
    assert_eq!(out.d[0], (0..8).map(|k| (k * 8 * k) as f32).sum::<f32>());
}

/// docs/emulator.md §6 C->A reuse: D of two adjacent n8 tiles, converted to 16 bits, is the A
/// fragment of the next product: a0a1 = D0[0..1], a2a3 = D0[2..3], a4a5 = D1[0..1],
/// a6a7 = D1[2..3].
#[test]
fn mma_accumulator_reused_as_a_fragment() {
    let mut rng = Rng::new(77);
    for is_bf16 in [false, true] {
        let a: Vec<f32> = (0..256).map(|_| rng.int_in(-2, 2) as f32).collect();
        let b1: Vec<f32> = (0..256).map(|_| rng.int_in(-2, 2) as f32).collect(); // [16][16]
        let b2: Vec<f32> = (0..128).map(|_| rng.int_in(-3, 3) as f32).collect(); // [16][8]
        let c: Vec<f32> = (0..128).map(|_| rng.int_in(-5, 5) as f32).collect();
        let out = run_mma(&a, &b1, &b2, &c, 16, is_bf16, mma_mode::CHAIN).unwrap();
        let s = |m: usize, n: usize| (0..16).map(|k| a[m * 16 + k] * b1[k * 16 + n]).sum::<f32>();
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            let p = &out.frags[lane * 16 + 10..lane * 16 + 14];
            // Register j = {S[g + 8*(j&1)][2t + 8*(j>>1)], the next column}.
            for (j, &reg) in p.iter().enumerate() {
                let (row, col) = (g + 8 * (j & 1), 2 * t + 8 * (j >> 1));
                let want = to_bits(s(row, col), is_bf16) as u32
                    | (to_bits(s(row, col + 1), is_bf16) as u32) << 16;
                assert_eq!(reg, want, "lane {lane} P register {j}");
            }
        }
        for m in 0..16 {
            for n in 0..8 {
                let want = (0..16).map(|k| s(m, k) * b2[k * 8 + n]).sum::<f32>() + c[m * 8 + n];
                assert_eq!(out.d[m * 8 + n], want, "O[{m}][{n}]");
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

fn lane_regs(out: &[u32], lane: usize) -> [u32; 4] {
    std::array::from_fn(|i| out[lane * 4 + i])
}

#[test]
fn ldmatrix_x4_vectors_of_the_spec() {
    let out = run_ldmatrix(4, false, ldmatrix_mode::STANDARD).unwrap();
    assert_eq!(
        lane_regs(&out, 0),
        [0x0001_0000, 0x0201_0200, 0x0009_0008, 0x0209_0208]
    );
    assert_eq!(out[4], 0x0003_0002);
    assert_eq!(
        lane_regs(&out, 31),
        [0x01C7_01C6, 0x03C7_03C6, 0x01CF_01CE, 0x03CF_03CE]
    );
}

#[test]
fn ldmatrix_x4_trans_vectors_of_the_spec() {
    let out = run_ldmatrix(4, true, ldmatrix_mode::STANDARD).unwrap();
    assert_eq!(
        lane_regs(&out, 0),
        [0x0040_0000, 0x0240_0200, 0x0048_0008, 0x0248_0208]
    );
    assert_eq!(out[4], 0x00C0_0080);
    assert_eq!(out[4 * 4], 0x0041_0001);
    // Lane 31 (g 7, t 3): {S[6][7], S[7][7]}, ..., {S[14][15], S[15][15]}.
    assert_eq!(
        lane_regs(&out, 31),
        [0x01C7_0187, 0x03C7_0387, 0x01CF_018F, 0x03CF_038F]
    );
}

#[test]
fn ldmatrix_x1_x2_ignore_garbage_addresses_of_unused_lanes() {
    let x1 = run_ldmatrix(1, false, 0).unwrap();
    assert_eq!(lane_regs(&x1, 0), [0x0001_0000, 0, 0, 0]);
    assert_eq!(lane_regs(&x1, 31), [0x01C7_01C6, 0, 0, 0]);
    let x2 = run_ldmatrix(2, false, 0).unwrap();
    assert_eq!(lane_regs(&x2, 0), [0x0001_0000, 0x0201_0200, 0, 0]);
    assert_eq!(lane_regs(&x2, 31), [0x01C7_01C6, 0x03C7_03C6, 0, 0]);
    let x1t = run_ldmatrix(1, true, 0).unwrap();
    assert_eq!(lane_regs(&x1t, 1), [0x00C0_0080, 0, 0, 0]);
    let x2t = run_ldmatrix(2, true, 0).unwrap();
    assert_eq!(lane_regs(&x2t, 0), [0x0040_0000, 0x0240_0200, 0, 0]);
}

#[test]
fn ldmatrix_honours_permuted_row_addresses() {
    // Lane 8m + r supplies row 7 - r of matrix m.
    let out = run_ldmatrix(4, false, ldmatrix_mode::PERMUTED).unwrap();
    // Lane 0: row 0 of matrix 0 is S[7]; of matrix 1, S[15].
    assert_eq!(out[0], 0x01C1_01C0);
    assert_eq!(out[1], 0x03C1_03C0);
    // Lane 31 (row 7 of each matrix = natural row 0): {S[0][6], S[0][7]}, {S[8][14], S[8][15]}.
    assert_eq!(out[31 * 4], 0x0007_0006);
    assert_eq!(out[31 * 4 + 3], 0x020F_020E);
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
    lc.schedule = Schedule::Reverse; // thread 32 reads before thread 0 refills
    assert_fault!(
        run_cp_async(cp_async_mode::WRITE_AFTER_READ, 64, Some(lc)),
        CpAsync,
        ["write-after-read", "warp 1", "selftest_cp_async.cu"]
    );
    // In forward order the refill lands first and the read is the unsynchronised one.
    assert_fault!(
        run_cp_async(cp_async_mode::WRITE_AFTER_READ, 64, None),
        CpAsync,
        ["missing __syncthreads"]
    );
}

// ---- shuffles, __syncwarp, __syncthreads ------------------------------------------------------

const POISON: u32 = 0xffff_ffff;

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
    assert_eq!(warp32(warp_mode::BUTTERFLY_SUM).unwrap()[..32], [3696; 32]);
}

#[test]
fn shfl_xor_16_width_16() {
    let out = warp32(warp_mode::XOR16_WIDTH16).unwrap();
    for l in 0..32u32 {
        let want = if l < 16 { 100 + l } else { 100 + l - 16 };
        assert_eq!(out[l as usize], want, "lane {l}");
    }
}

#[test]
fn shfl_idx_10_width_8() {
    let out = warp32(warp_mode::IDX10_WIDTH8).unwrap();
    for l in 0..32 {
        assert_eq!(out[l], [102, 110, 118, 126][l / 8], "lane {l}");
    }
}

#[test]
fn shfl_down_16() {
    let out = warp32(warp_mode::DOWN16).unwrap();
    for l in 0..32u32 {
        let want = if l < 16 { 116 + l } else { 100 + l };
        assert_eq!(out[l as usize], want, "lane {l}");
    }
}

#[test]
fn shfl_up_1_width_8() {
    let out = warp32(warp_mode::UP1_WIDTH8).unwrap();
    for l in 0..32u32 {
        let want = if l % 8 == 0 { 100 + l } else { 99 + l };
        assert_eq!(out[l as usize], want, "lane {l}");
    }
}

#[test]
fn shfl_64_bit() {
    let out = warp32(warp_mode::SHFL64).unwrap();
    for l in 0..32u32 {
        let j = l ^ 5;
        assert_eq!(out[2 * l as usize], 0xabc0_0000 + j, "lane {l} low word");
        assert_eq!(out[2 * l as usize + 1], j + 1, "lane {l} high word");
    }
}

#[test]
fn shfl_quad_max() {
    // x(L) = (11 L mod 32) + 0.5; the maxima of the 8 quads, worked out by hand.
    let quad_max = [22.5f32, 23.5, 25.5, 26.5, 27.5, 29.5, 30.5, 31.5];
    let out = warp32(warp_mode::QUAD_MAX).unwrap();
    for l in 0..32 {
        assert_eq!(f32::from_bits(out[l]), quad_max[l / 4], "lane {l}");
    }
}

#[test]
fn shfl_partial_masks_and_sources_outside_the_mask() {
    let out = warp32(warp_mode::PARTIAL_MASKS).unwrap();
    for l in 0..32 {
        if l < 16 {
            assert_eq!((out[l], out[32 + l]), (POISON, 103), "lane {l}");
        } else {
            assert_eq!((out[l], out[32 + l]), (117, POISON), "lane {l}");
        }
    }
}

#[test]
fn shfl_does_not_wait_for_exited_lanes() {
    let out = warp32(warp_mode::EXITED_LANES).unwrap();
    for l in 0..16u32 {
        assert_eq!(out[l as usize], POISON, "lane {l} read an exited lane");
        assert_eq!(out[32 + l as usize], 100 + (l ^ 1), "lane {l}");
    }
    assert!(out[16..32].iter().all(|&x| x == 0));
}

#[test]
fn syncwarp_does_not_wait_for_exited_lanes() {
    let out = warp32(warp_mode::SYNCWARP_EXITED).unwrap();
    assert_eq!(out[..16], [1; 16]);
}

#[test]
fn syncthreads_does_not_wait_for_exited_threads() {
    let out = run_warp(warp_mode::BARRIER_EXITED, &cfg(1, 64, 128), 64).unwrap();
    for l in 0..32 {
        assert_eq!(out[l], 3 * ((l as u32 + 3) % 32) + 1, "lane {l}");
    }
}

#[test]
fn thread_and_block_indices_in_3d() {
    let lc = LaunchConfig::new([2, 3, 2], [4, 2, 3], 0);
    let out = run_warp(warp_mode::INDICES, &lc, 4 * 12 * 24).unwrap();
    let pack = |x: u32, y: u32, z: u32| x | (y << 8) | (z << 16);
    for (bz, by, bx) in itertools(2, 3, 2) {
        for (tz, ty, tx) in itertools(3, 2, 4) {
            let block = bx + 2 * (by + 3 * bz);
            let tid = tx + 4 * (ty + 2 * tz);
            let o = &out[4 * (block * 24 + tid) as usize..][..4];
            assert_eq!(
                o,
                [
                    pack(tx, ty, tz),
                    pack(bx, by, bz),
                    pack(4, 2, 3),
                    pack(2, 3, 2)
                ]
            );
        }
    }
}

/// All (z, y, x) with z < nz, y < ny, x < nx.
fn itertools(nz: u32, ny: u32, nx: u32) -> impl Iterator<Item = (u32, u32, u32)> {
    (0..nz).flat_map(move |z| (0..ny).flat_map(move |y| (0..nx).map(move |x| (z, y, x))))
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
            "shared memory read",
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
    // (input, f16 bits, bf16 bits)
    let cases: [(f32, u16, u16); 24] = [
        (1.0, 0x3c00, 0x3f80),
        (-2.0, 0xc000, 0xc000),
        (f32::from_bits(0x3f80_1000), 0x3c00, 0x3f80), // 1 + 2^-11: f16 tie -> even
        (f32::from_bits(0x3f80_3000), 0x3c02, 0x3f80), // 1 + 3*2^-11: f16 tie -> even (up)
        (f32::from_bits(0x3f80_1001), 0x3c01, 0x3f80), // just above the f16 tie
        (f32::from_bits(0x3f80_8000), 0x3c04, 0x3f80), // 1 + 2^-8: bf16 tie -> even
        (f32::from_bits(0x3f81_8000), 0x3c0c, 0x3f82), // 1 + 3*2^-8: bf16 tie -> even (up)
        (f32::from_bits(0x3f80_8001), 0x3c04, 0x3f81), // just above the bf16 tie
        (65504.0, 0x7bff, 0x4780),                     // f16 max
        (65519.0, 0x7bff, 0x4780),                     // below the f16 overflow tie
        (65520.0, 0x7c00, 0x4780),                     // f16 tie at max: rounds to inf
        (1.0e6, 0x7c00, 0x4974),
        (-1.0e6, 0xfc00, 0xc974),
        (f32::MAX, 0x7c00, 0x7f80), // bf16 overflows to inf too
        (f32::from_bits(0x7f7f_0000), 0x7c00, 0x7f7f), // bf16 max
        (f32::from_bits(0x3380_0000), 0x0001, 0x3380), // 2^-24: smallest f16 subnormal
        (f32::from_bits(0x3300_0000), 0x0000, 0x3300), // 2^-25: tie -> even (0)
        (f32::from_bits(0x3340_0000), 0x0001, 0x3340), // 1.5 * 2^-25 -> 1 ulp
        (f32::from_bits(0x33c0_0000), 0x0002, 0x33c0), // 3 * 2^-25 = 1.5 ulp: tie -> even (2)
        (f32::from_bits(0x387f_c000), 0x03ff, 0x3880), // largest f16 subnormal
        (f32::from_bits(0x0001_8000), 0x0000, 0x0002), // f32 subnormal: bf16 tie -> even (2)
        (-0.0, 0x8000, 0x8000),
        (f32::INFINITY, 0x7c00, 0x7f80),
        (f32::NAN, 0x7fff, 0x7fff),
    ];
    // 16-bit patterns to widen: (bits, as f16, as bf16) as f32 bit patterns.
    let widen: [(u16, u32, u32); 24] = [
        (0x0001, 0x3380_0000, 0x0001_0000), // f16 min subnormal 2^-24
        (0x03ff, 0x387f_c000, 0x03ff_0000), // f16 max subnormal
        (0x0400, 0x3880_0000, 0x0400_0000), // f16 min normal 2^-14
        (0x3c00, 0x3f80_0000, 0x3c00_0000),
        (0x7bff, 0x477f_e000, 0x7bff_0000), // 65504
        (0x7c00, 0x7f80_0000, 0x7c00_0000), // f16 +inf
        (0xfc00, 0xff80_0000, 0xfc00_0000), // f16 -inf
        (0x7e00, 0x7fc0_0000, 0x7e00_0000), // f16 quiet NaN
        (0x8000, 0x8000_0000, 0x8000_0000), // -0
        (0xc000, 0xc000_0000, 0xc000_0000), // -2 in f16; bf16 -2.0
        (0x3f80, 0x3ff0_0000, 0x3f80_0000), // f16 1.875; bf16 1.0
        (0x7f80, 0x7ff0_0000, 0x7f80_0000), // f16 quiet NaN 0x380; bf16 +inf
        (0x8001, 0xb380_0000, 0x8001_0000),
        (0x3555, 0x3eaa_a000, 0x3555_0000),
        (0x0000, 0x0000_0000, 0x0000_0000),
        (0x0200, 0x3800_0000, 0x0200_0000), // f16 2^-15 (subnormal)
        (0x3c01, 0x3f80_2000, 0x3c01_0000),
        (0x4000, 0x4000_0000, 0x4000_0000),
        (0x5640, 0x42c8_0000, 0x5640_0000), // f16 100.0
        (0xfbff, 0xc77f_e000, 0xfbff_0000),
        (0x0010, 0x3580_0000, 0x0010_0000),
        (0x1400, 0x3a80_0000, 0x1400_0000), // f16 2^-10
        (0x7fff, 0x7fff_e000, 0x7fff_0000), // f16 NaN payload kept
        (0x3800, 0x3f00_0000, 0x3800_0000), // f16 0.5
    ];
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
    let (f16s, bf16s, pfs, pbs) = (f16o.to_vec(), bf16o.to_vec(), pf.to_vec(), pb.to_vec());
    for (i, &(x, h, b)) in cases.iter().enumerate() {
        assert_eq!(f16s[i], h, "f16 of {x:e} ({:#010x})", x.to_bits());
        assert_eq!(bf16s[i], b, "bf16 of {x:e} ({:#010x})", x.to_bits());
        // pack2(lo, hi): lo in bits 0..15.
        let (hn, bn) = (cases[(i + 1) % n].1, cases[(i + 1) % n].2);
        assert_eq!(pfs[i], h as u32 | (hn as u32) << 16, "pack2<f16> #{i}");
        assert_eq!(pbs[i], b as u32 | (bn as u32) << 16, "pack2<bf16> #{i}");
    }
    let (wfs, wbs) = (wf.to_vec(), wb.to_vec());
    for (i, &(h, as_f16, as_bf16)) in widen.iter().enumerate() {
        assert_eq!(wfs[i].to_bits(), as_f16, "f16 {h:#06x} widened");
        assert_eq!(wbs[i].to_bits(), as_bf16, "bf16 {h:#06x} widened");
    }
}
