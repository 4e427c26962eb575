//! The expected vectors and inputs of the emulator's self-test kernels
//! (`kernels/tests/selftest_*.cu`), written out by hand from docs/emulator.md §6 (never derived
//! from the emulator's own layout tables). One copy serves both sides:
//! `tests/emulator.rs` runs the kernels on the CPU emulator, `tests/emulator_gpu.rs` runs the
//! same kernels on a GPU, so the emulator's model is checked against the hardware with the
//! same numbers. Included with `#[path = "common/selftest_vectors.rs"] mod selftest_vectors;`.
#![allow(dead_code)]

use half::{bf16, f16};
use sparse_attn::pattern::rng::SplitMix64 as Rng;

/// f32 -> f16 or bf16 bits (round to nearest even).
pub fn to_bits(x: f32, is_bf16: bool) -> u16 {
    if is_bf16 {
        bf16::from_f32(x).to_bits()
    } else {
        f16::from_f32(x).to_bits()
    }
}

/// f16 or bf16 bits -> f32 (exact).
pub fn from_bits(h: u16, is_bf16: bool) -> f32 {
    if is_bf16 {
        bf16::from_bits(h).to_f32()
    } else {
        f16::from_bits(h).to_f32()
    }
}

// ---- mma ----------------------------------------------------------------------------------------

/// What `sa_selftest_mma` writes back.
#[derive(Debug)]
pub struct MmaOut {
    /// [32][16] per lane: a regs 0-3, b regs 4-5, d bits 6-9, P regs 10-13.
    pub frags: Vec<u32>,
    /// [16][8] row-major D.
    pub d: Vec<f32>,
}

impl MmaOut {
    /// The 16-bit elements a0..a7 (k16) of lane `l`, widened.
    pub fn a(&self, l: usize, is_bf16: bool) -> Vec<f32> {
        self.halves(l * 16, 8, is_bf16)
    }
    /// The 16-bit elements b0..b3 (k16) of lane `l`, widened.
    pub fn b(&self, l: usize, is_bf16: bool) -> Vec<f32> {
        self.halves(l * 16 + 4, 4, is_bf16)
    }
    /// `n` 16-bit elements packed two per register from `frags[first..]`, low half first.
    pub fn halves(&self, first: usize, n: usize, is_bf16: bool) -> Vec<f32> {
        (0..n)
            .map(|i| {
                from_bits(
                    (self.frags[first + i / 2] >> (16 * (i % 2))) as u16,
                    is_bf16,
                )
            })
            .collect()
    }
    /// The D fragment c0..c3 of lane `l`.
    pub fn d_lane(&self, l: usize) -> [f32; 4] {
        std::array::from_fn(|i| f32::from_bits(self.frags[l * 16 + 6 + i]))
    }
    /// The packed P registers (mode CHAIN) of lane `l`.
    pub fn p_lane(&self, l: usize) -> &[u32] {
        &self.frags[l * 16 + 10..l * 16 + 14]
    }
}

/// 128 zeros: a zero B, C or B2.
pub const ZERO: [f32; 128] = [0.0; 128];

/// A[m][k] = 16m + k, B[k][n] = 8k + n (docs/emulator.md §6; exact in f16 and bf16).
pub fn spec_ab() -> (Vec<f32>, Vec<f32>) {
    let a = (0..256).map(|i| i as f32).collect();
    let b = (0..128).map(|i| i as f32).collect();
    (a, b)
}

/// A fragments a0..a7 of lanes 0, 1, 4, 31 for [`spec_ab`].
pub const MMA_EXPECT_A: [(usize, [f32; 8]); 4] = [
    (0, [0., 1., 128., 129., 8., 9., 136., 137.]),
    (1, [2., 3., 130., 131., 10., 11., 138., 139.]),
    (4, [16., 17., 144., 145., 24., 25., 152., 153.]),
    (31, [118., 119., 246., 247., 126., 127., 254., 255.]),
];

/// B fragments b0..b3 of lanes 0, 1, 4, 31 for [`spec_ab`].
pub const MMA_EXPECT_B: [(usize, [f32; 4]); 4] = [
    (0, [0., 8., 64., 72.]),
    (1, [16., 24., 80., 88.]),
    (4, [1., 9., 65., 73.]),
    (31, [55., 63., 119., 127.]),
];

/// The 16×16 identity.
pub fn identity16() -> Vec<f32> {
    let mut eye = vec![0.0f32; 256];
    for i in 0..16 {
        eye[i * 16 + i] = 1.0;
    }
    eye
}

/// D fragments of lanes 0, 1, 4, 31 for I · B ([`spec_ab`]'s B).
pub const MMA_IDENTITY_EXPECT_D: [(usize, [f32; 4]); 4] = [
    (0, [0., 1., 64., 65.]),
    (1, [2., 3., 66., 67.]),
    (4, [8., 9., 72., 73.]),
    (31, [62., 63., 126., 127.]),
];

/// A C with subnormals, huge values and odd mantissas, passed through a zero product.
pub fn passthrough_c() -> Vec<f32> {
    (0..128)
        .map(|i| match i % 4 {
            0 => 1.5e-40 * (i + 1) as f32, // subnormal
            1 => -3.0e38 / (i + 1) as f32,
            2 => f32::from_bits(0x3f80_0001 + i as u32),
            _ => -(i as f32) - 0.25,
        })
        .collect()
}

/// B[k][n] = k: with A = ones, every D entry is 0 + 1 + ... + 15 = 120.
pub fn b_equals_k() -> Vec<f32> {
    (0..128).map(|i| (i / 8) as f32).collect()
}

/// One random integer mma case.
pub struct MmaCase {
    /// 16 or 8.
    pub k: usize,
    /// bf16 (else f16).
    pub is_bf16: bool,
    /// [16][16] row-major (only k < `k` used).
    pub a: Vec<f32>,
    /// [16][8] row-major.
    pub b: Vec<f32>,
    /// [16][8] row-major.
    pub c: Vec<f32>,
}

/// Random integers in [-4, 4]: 4 cases each of k16/k8 × f16/bf16 (seed fixed).
pub fn mma_random_cases() -> Vec<MmaCase> {
    let mut rng = Rng::new(0x5eed_1234_abcd_0001);
    let mut cases = Vec::new();
    for k in [16usize, 8] {
        for is_bf16 in [false, true] {
            for _ in 0..4 {
                let a = (0..256).map(|_| rng.int_in(-4, 4) as f32).collect();
                let b = (0..128).map(|_| rng.int_in(-4, 4) as f32).collect();
                let c = (0..128).map(|_| rng.int_in(-4, 4) as f32).collect();
                cases.push(MmaCase {
                    k,
                    is_bf16,
                    a,
                    b,
                    c,
                });
            }
        }
    }
    cases
}

/// Asserts an mma's row-major D (16 x 8) equals the exact triple loop over a, b, c (integers:
/// exact in f32 on every backend).
pub fn assert_mma_exact(d: &[f32], a: &[f32], b: &[f32], c: &[f32], k: usize, is_bf16: bool) {
    let want = mma_triple_loop(a, b, c, k);
    assert_eq!(d.len(), want.len(), "D length");
    for m in 0..16 {
        for n in 0..8 {
            assert_eq!(
                d[m * 8 + n],
                want[m * 8 + n],
                "k{k} bf16={is_bf16} D[{m}][{n}]"
            );
        }
    }
}

/// D = A[:, :k] · B[:k, :] + C, exact (integer data), [16][8] row-major.
pub fn mma_triple_loop(a: &[f32], b: &[f32], c: &[f32], k: usize) -> Vec<f32> {
    let mut d = vec![0.0f32; 128];
    for m in 0..16 {
        for n in 0..8 {
            d[m * 8 + n] =
                (0..k).map(|kk| a[m * 16 + kk] * b[kk * 8 + n]).sum::<f32>() + c[m * 8 + n];
        }
    }
    d
}

/// m16n8k8 with [`spec_ab`]: lane 1's a0..a3 (g 0, t 1: (0,2)(0,3)(8,2)(8,3)).
pub const MMA_K8_LANE1_A: [f32; 4] = [2., 3., 130., 131.];
/// m16n8k8 with [`spec_ab`]: lane 1's b0, b1 ((2,0)(3,0)).
pub const MMA_K8_LANE1_B: [f32; 2] = [16., 24.];

/// m16n8k8 with [`spec_ab`]: D[0][0] = sum_{k<8} A[0][k] B[k][0] = sum k * 8k.
pub fn mma_k8_d00() -> f32 {
    (0..8).map(|k| (k * 8 * k) as f32).sum::<f32>()
}

/// One case of the C->A reuse chain (mode CHAIN): S = A · B1, P = S as 16 bits, O = P · B2 + C.
pub struct ChainCase {
    /// bf16 (else f16).
    pub is_bf16: bool,
    /// [16][16].
    pub a: Vec<f32>,
    /// [16][16].
    pub b1: Vec<f32>,
    /// [16][8].
    pub b2: Vec<f32>,
    /// [16][8].
    pub c: Vec<f32>,
}

impl ChainCase {
    /// S[m][n] = sum_k A[m][k] B1[k][n].
    pub fn s(&self, m: usize, n: usize) -> f32 {
        (0..16)
            .map(|k| self.a[m * 16 + k] * self.b1[k * 16 + n])
            .sum::<f32>()
    }

    /// P register `j` of `lane`: {S[g + 8*(j&1)][2t + 8*(j>>1)], the next column}.
    pub fn p_reg(&self, lane: usize, j: usize) -> u32 {
        let (g, t) = (lane / 4, lane % 4);
        let (row, col) = (g + 8 * (j & 1), 2 * t + 8 * (j >> 1));
        to_bits(self.s(row, col), self.is_bf16) as u32
            | (to_bits(self.s(row, col + 1), self.is_bf16) as u32) << 16
    }

    /// O[m][n] = sum_k S[m][k] B2[k][n] + C[m][n] (exact).
    pub fn o(&self, m: usize, n: usize) -> f32 {
        (0..16)
            .map(|k| self.s(m, k) * self.b2[k * 8 + n])
            .sum::<f32>()
            + self.c[m * 8 + n]
    }
}

/// docs/emulator.md §6 C->A reuse: one case per dtype (seed fixed).
pub fn mma_chain_cases() -> Vec<ChainCase> {
    let mut rng = Rng::new(77);
    [false, true]
        .into_iter()
        .map(|is_bf16| ChainCase {
            is_bf16,
            a: (0..256).map(|_| rng.int_in(-2, 2) as f32).collect(),
            b1: (0..256).map(|_| rng.int_in(-2, 2) as f32).collect(),
            b2: (0..128).map(|_| rng.int_in(-3, 3) as f32).collect(),
            c: (0..128).map(|_| rng.int_in(-5, 5) as f32).collect(),
        })
        .collect()
}

// ---- ldmatrix ------------------------------------------------------------------------------------

/// ldmatrix x4 (no .trans): lane 0's four registers.
pub const LDSM_X4_LANE0: [u32; 4] = [0x0001_0000, 0x0201_0200, 0x0009_0008, 0x0209_0208];
/// ldmatrix x4: lane 1's register 0.
pub const LDSM_X4_LANE1_REG0: u32 = 0x0003_0002;
/// ldmatrix x4: lane 31's four registers.
pub const LDSM_X4_LANE31: [u32; 4] = [0x01C7_01C6, 0x03C7_03C6, 0x01CF_01CE, 0x03CF_03CE];
/// ldmatrix x4 .trans: lane 0's four registers.
pub const LDSM_X4T_LANE0: [u32; 4] = [0x0040_0000, 0x0240_0200, 0x0048_0008, 0x0248_0208];
/// ldmatrix x4 .trans: lane 1's register 0.
pub const LDSM_X4T_LANE1_REG0: u32 = 0x00C0_0080;
/// ldmatrix x4 .trans: lane 4's register 0.
pub const LDSM_X4T_LANE4_REG0: u32 = 0x0041_0001;
/// ldmatrix x4 .trans: lane 31 (g 7, t 3): {S[6][7], S[7][7]}, ..., {S[14][15], S[15][15]}.
pub const LDSM_X4T_LANE31: [u32; 4] = [0x01C7_0187, 0x03C7_0387, 0x01CF_018F, 0x03CF_038F];
/// x1: lane 0 and lane 31.
pub const LDSM_X1_LANE0: [u32; 4] = [0x0001_0000, 0, 0, 0];
/// x1: lane 31.
pub const LDSM_X1_LANE31: [u32; 4] = [0x01C7_01C6, 0, 0, 0];
/// x2: lane 0.
pub const LDSM_X2_LANE0: [u32; 4] = [0x0001_0000, 0x0201_0200, 0, 0];
/// x2: lane 31.
pub const LDSM_X2_LANE31: [u32; 4] = [0x01C7_01C6, 0x03C7_03C6, 0, 0];
/// x1 .trans: lane 1.
pub const LDSM_X1T_LANE1: [u32; 4] = [0x00C0_0080, 0, 0, 0];
/// x2 .trans: lane 0.
pub const LDSM_X2T_LANE0: [u32; 4] = [0x0040_0000, 0x0240_0200, 0, 0];
/// Permuted rows (lane 8m + r supplies row 7 - r of matrix m): (index into out, value).
/// Lane 0: row 0 of matrix 0 is S[7]; of matrix 1, S[15]. Lane 31 (row 7 of each matrix =
/// natural row 0): {S[0][6], S[0][7]}, {S[8][14], S[8][15]}.
pub const LDSM_PERMUTED: [(usize, u32); 4] = [
    (0, 0x01C1_01C0),
    (1, 0x03C1_03C0),
    (31 * 4, 0x0007_0006),
    (31 * 4 + 3, 0x020F_020E),
];

/// The four registers of `lane` in the ldmatrix output ([32][4]).
pub fn lane_regs(out: &[u32], lane: usize) -> [u32; 4] {
    std::array::from_fn(|i| out[lane * 4 + i])
}

// ---- shuffles -----------------------------------------------------------------------------------

/// What the emulator returns for a shuffle whose source is outside the mask or has exited.
pub const POISON: u32 = 0xffff_ffff;

/// Mode BUTTERFLY_SUM: out[L] for L < 32.
pub const SHFL_BUTTERFLY_SUM: [u32; 32] = [3696; 32];

/// Mode XOR16_WIDTH16: out[L].
pub fn shfl_xor16_width16() -> Vec<u32> {
    (0..32u32)
        .map(|l| if l < 16 { 100 + l } else { 100 + l - 16 })
        .collect()
}

/// Mode IDX10_WIDTH8: out[L].
pub fn shfl_idx10_width8() -> Vec<u32> {
    (0..32).map(|l| [102, 110, 118, 126][l / 8]).collect()
}

/// Mode DOWN16: out[L].
pub fn shfl_down16() -> Vec<u32> {
    (0..32u32)
        .map(|l| if l < 16 { 116 + l } else { 100 + l })
        .collect()
}

/// Mode UP1_WIDTH8: out[L].
pub fn shfl_up1_width8() -> Vec<u32> {
    (0..32u32)
        .map(|l| if l % 8 == 0 { 100 + l } else { 99 + l })
        .collect()
}

/// Mode SHFL64: out[0..64] (lo, hi of lane L ^ 5's value).
pub fn shfl_64() -> Vec<u32> {
    (0..32u32)
        .flat_map(|l| {
            let j = l ^ 5;
            [0xabc0_0000 + j, j + 1]
        })
        .collect()
}

/// Mode QUAD_MAX: x(L) = (11 L mod 32) + 0.5; the maxima of the 8 quads, worked out by hand.
pub const SHFL_QUAD_MAX: [f32; 8] = [22.5, 23.5, 25.5, 26.5, 27.5, 29.5, 30.5, 31.5];

/// Mode PARTIAL_MASKS: (out[L], out[32 + L]); `None` where the source lies outside the mask
/// (the emulator returns [`POISON`]; undefined on the GPU).
pub fn shfl_partial_masks(l: usize) -> (Option<u32>, Option<u32>) {
    if l < 16 {
        (None, Some(103))
    } else {
        (Some(117), None)
    }
}

/// Mode EXITED_LANES, lanes 0..16: out[32 + L] (out[L] read an exited lane: [`POISON`] in the
/// emulator, undefined on the GPU).
pub fn shfl_exited_lanes_second(l: u32) -> u32 {
    100 + (l ^ 1)
}

/// Mode SYNCWARP_EXITED: out[..16].
pub const SYNCWARP_EXITED: [u32; 16] = [1; 16];

/// Mode INDICES launch shape: grid, block.
pub const INDICES_GRID: [u32; 3] = [2, 3, 2];
/// Mode INDICES block shape.
pub const INDICES_BLOCK: [u32; 3] = [4, 2, 3];

/// Mode INDICES: out[4 * (block * 24 + tid) ..][..4] = thread, block, blockDim, gridDim packed
/// as x | y << 8 | z << 16, for grid [2, 3, 2] and block [4, 2, 3] (576 words).
pub fn indices_3d() -> Vec<u32> {
    let pack = |x: u32, y: u32, z: u32| x | (y << 8) | (z << 16);
    let mut out = vec![0u32; 4 * 12 * 24];
    for (bz, by, bx) in zyx(2, 3, 2) {
        for (tz, ty, tx) in zyx(3, 2, 4) {
            let block = bx + 2 * (by + 3 * bz);
            let tid = tx + 4 * (ty + 2 * tz);
            out[4 * (block * 24 + tid) as usize..][..4].copy_from_slice(&[
                pack(tx, ty, tz),
                pack(bx, by, bz),
                pack(4, 2, 3),
                pack(2, 3, 2),
            ]);
        }
    }
    out
}

/// All (z, y, x) with z < nz, y < ny, x < nx.
pub fn zyx(nz: u32, ny: u32, nx: u32) -> impl Iterator<Item = (u32, u32, u32)> {
    (0..nz).flat_map(move |z| (0..ny).flat_map(move |y| (0..nx).map(move |x| (z, y, x))))
}

// ---- numeric conversions --------------------------------------------------------------------------

/// (input, f16 bits, bf16 bits) of f32 -> 16-bit round-to-nearest-even (a function: the
/// crate's MSRV has no `f32::from_bits` in constants).
pub fn convert_cases() -> [(f32, u16, u16); 24] {
    [
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
    ]
}

/// 16-bit patterns to widen: (bits, as f16, as bf16) as f32 bit patterns.
pub const WIDEN_CASES: [(u16, u32, u32); 24] = [
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

/// Checks what `sa_selftest_convert` wrote (f16, bf16, packed f16, packed bf16, widened f16,
/// widened bf16) against [`convert_cases`] and [`WIDEN_CASES`]; `pack2(lo, hi)` puts case
/// `i` in bits 0..15 and case `i + 1` in bits 16..31.
pub fn check_convert(
    f16s: &[u16],
    bf16s: &[u16],
    pfs: &[u32],
    pbs: &[u32],
    wfs: &[f32],
    wbs: &[f32],
) {
    let cases = convert_cases();
    let n = cases.len();
    for (i, &(x, h, b)) in cases.iter().enumerate() {
        assert_eq!(f16s[i], h, "f16 of {x:e} ({:#010x})", x.to_bits());
        assert_eq!(bf16s[i], b, "bf16 of {x:e} ({:#010x})", x.to_bits());
        // pack2(lo, hi): lo in bits 0..15.
        let (hn, bn) = (cases[(i + 1) % n].1, cases[(i + 1) % n].2);
        assert_eq!(pfs[i], h as u32 | (hn as u32) << 16, "pack2<f16> #{i}");
        assert_eq!(pbs[i], b as u32 | (bn as u32) << 16, "pack2<bf16> #{i}");
    }
    for (i, &(h, as_f16, as_bf16)) in WIDEN_CASES.iter().enumerate() {
        assert_eq!(wfs[i].to_bits(), as_f16, "f16 {h:#06x} widened");
        assert_eq!(wbs[i].to_bits(), as_bf16, "bf16 {h:#06x} widened");
    }
}
