//! The emulator's self-test kernels (`kernels/tests/selftest_{mma,ldmatrix,warp,convert}.cu`)
//! on a GPU, against the same expected vectors as `tests/emulator.rs`
//! (`tests/common/selftest_vectors.rs`): the one check of the emulator's model (fragment
//! layouts, shuffle semantics, conversions) against the hardware. Also the a2/a4 canary
//! (`kernels/tests/attention_canary.cu`), which must fail against the cuBLAS oracle on the GPU
//! as it does against the f64 reference on the emulator.
//!
//! Only well-defined uses run here: the misuse modes (exited lanes in a full-mask mma, misaligned
//! ldmatrix, ...) are undefined behaviour on the GPU. The exited-lane modes whose result the
//! emulator fixes although PTX leaves it open are in one test of their own, so a difference
//! there reads as "the model is stricter or looser than this GPU", not as a layout bug.
//!
//! Without a GPU (or without nvcc-built kernels) every test prints why it is skipped and
//! passes, unless `SPARSE_ATTN_REQUIRE_GPU=1`.

// Lane-indexed loops read most naturally as `for lane in 0..32`.
#![allow(clippy::needless_range_loop)]

mod common;
#[path = "common/selftest_vectors.rs"]
mod selftest_vectors;

use half::f16;
use selftest_vectors::*;
use sparse_attn::backend::cublas::dense_reference;
use sparse_attn::backend::{self, Gpu};
use sparse_attn::cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, ValidAsZeroBits};
use sparse_attn::emu::selftest::*;
use sparse_attn::kernels::test_kernels::*;
use sparse_attn::kernels::{KernelDesc, Launch};
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, DType, SeqLens};

use common::gpu;

fn up<T: DeviceRepr>(gpu: &Gpu, data: &[T]) -> CudaSlice<T> {
    gpu.stream().clone_htod(data).expect("upload")
}

fn zeros<T: DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, n: usize) -> CudaSlice<T> {
    gpu.stream().alloc_zeros(n).expect("alloc")
}

fn down<T: DeviceRepr + Default + Clone>(gpu: &Gpu, s: &CudaSlice<T>) -> Vec<T> {
    gpu.stream().clone_dtoh(s).expect("download")
}

/// The device address of `s` (the buffers stay alive across the launch and its
/// synchronisation in every caller; all work is on the Gpu's one stream).
fn addr<T>(gpu: &Gpu, s: &CudaSlice<T>) -> u64 {
    let (ptr, _guard) = s.device_ptr(gpu.stream());
    ptr
}

/// Launches a self-test kernel and waits for it, so a fault is reported by this launch.
fn launch<P: DeviceRepr + Copy>(
    gpu: &Gpu,
    kernel: &'static KernelDesc,
    grid: [u32; 3],
    block: [u32; 3],
    smem: u32,
    params: P,
) {
    let l = Launch {
        kernel,
        grid,
        block,
        dynamic_smem_bytes: smem,
        params,
    };
    // SAFETY: every self-test params struct mirrors its kernel's (sizes asserted on both
    // sides); the callers pass device buffers of this context sized for the kernel's accesses
    // with this geometry (the same sizes tests/emulator.rs uses with guarded buffers), alive
    // until after the synchronisation below.
    unsafe { gpu.launch(&l) }.unwrap_or_else(|e| panic!("{}: launch: {e}", kernel.name));
    gpu.synchronize()
        .unwrap_or_else(|e| panic!("{}: kernel failed: {e}", kernel.name));
}

/// Runs everywhere: with nvcc-built kernels, the self-test and canary kernels this file
/// launches are embedded (the `test-kernels` feature reached the build), so gpu-pack.sh carries
/// them to the GPU machine.
#[test]
fn self_test_kernels_are_embedded_when_the_kernels_are_built() {
    if !backend::cuda_build().built {
        eprintln!("the GPU kernels were not built: nothing to check");
        return;
    }
    for k in [
        &MMA_KERNEL,
        &LDMATRIX_KERNEL,
        &WARP_KERNEL,
        &CONVERT_KERNEL,
        &CANARY_SWAP_M64,
        &CANARY_SWAP_M128,
    ] {
        assert!(
            backend::fatbin(k.module.stem()).is_some(),
            "no fatbin for {} ({})",
            k.name,
            k.module.stem()
        );
    }
}

// ---- mma ----------------------------------------------------------------------------------------

fn run_mma(
    gpu: &Gpu,
    (a, b, b2, c): (&[f32], &[f32], &[f32], &[f32]),
    k: i32,
    is_bf16: bool,
    mode: i32,
) -> MmaOut {
    let bits = |v: &[f32]| v.iter().map(|&x| to_bits(x, is_bf16)).collect::<Vec<u16>>();
    let (ab, bb, b2b, cb) = (
        up(gpu, &bits(a)),
        up(gpu, &bits(b)),
        up(gpu, &bits(b2)),
        up(gpu, c),
    );
    let d = zeros::<f32>(gpu, 128);
    let frags = zeros::<u32>(gpu, 32 * 16);
    let p = MmaParams {
        a: addr(gpu, &ab) as *const u16,
        b: addr(gpu, &bb) as *const u16,
        b2: addr(gpu, &b2b) as *const u16,
        c: addr(gpu, &cb) as *const f32,
        d: addr(gpu, &d) as *mut f32,
        frags: addr(gpu, &frags) as *mut u32,
        k,
        bf16: i32::from(is_bf16),
        mode,
        pad: 0,
    };
    launch(gpu, &MMA_KERNEL, [1, 1, 1], [32, 1, 1], 0, p);
    MmaOut {
        frags: down(gpu, &frags),
        d: down(gpu, &d),
    }
}

fn mma_plain(gpu: &Gpu, a: &[f32], b: &[f32], c: &[f32], k: i32, is_bf16: bool) -> MmaOut {
    run_mma(gpu, (a, b, &ZERO, c), k, is_bf16, mma_mode::PLAIN)
}

#[test]
fn gpu_mma_fragment_vectors_of_the_spec() {
    let Some(gpu) = gpu("gpu_mma_fragment_vectors_of_the_spec") else {
        return;
    };
    let (a, b) = spec_ab();
    for is_bf16 in [false, true] {
        let out = mma_plain(&gpu, &a, &b, &ZERO, 16, is_bf16);
        for (lane, want) in MMA_EXPECT_A {
            assert_eq!(out.a(lane, is_bf16), want, "A fragment of lane {lane}");
        }
        for (lane, want) in MMA_EXPECT_B {
            assert_eq!(out.b(lane, is_bf16), want, "B fragment of lane {lane}");
        }
    }
}

#[test]
fn gpu_mma_identity_gives_b() {
    let Some(gpu) = gpu("gpu_mma_identity_gives_b") else {
        return;
    };
    let (_, b) = spec_ab();
    let eye = identity16();
    for is_bf16 in [false, true] {
        let out = mma_plain(&gpu, &eye, &b, &ZERO, 16, is_bf16);
        for (lane, want) in MMA_IDENTITY_EXPECT_D {
            assert_eq!(
                out.d_lane(lane),
                want,
                "D fragment of lane {lane} (bf16={is_bf16})"
            );
        }
        assert_eq!(out.d, b, "D = I . B = B (bf16={is_bf16})");
    }
}

/// The emulator adds C last and exactly; on the GPU a zero product must pass C through too
/// (subnormals included: a flush here would mean the emulator's model is too exact).
#[test]
fn gpu_mma_zero_product_passes_c_through_bit_for_bit() {
    let Some(gpu) = gpu("gpu_mma_zero_product_passes_c_through_bit_for_bit") else {
        return;
    };
    let c = passthrough_c();
    for is_bf16 in [false, true] {
        let out = mma_plain(&gpu, &[0.0; 256], &ZERO, &c, 16, is_bf16);
        let got: Vec<u32> = out.d.iter().map(|x| x.to_bits()).collect();
        let want: Vec<u32> = c.iter().map(|x| x.to_bits()).collect();
        let differ: Vec<_> = (0..128).filter(|&i| got[i] != want[i]).collect();
        assert!(
            differ.is_empty(),
            "bf16={is_bf16}: C not passed through at {} entries, e.g. #{}: {:#010x} -> {:#010x}",
            differ.len(),
            differ[0],
            want[differ[0]],
            got[differ[0]]
        );
        let lane0: Vec<u32> = out.d_lane(0).iter().map(|x| x.to_bits()).collect();
        assert_eq!(lane0, [c[0], c[1], c[64], c[65]].map(f32::to_bits));
    }
}

#[test]
fn gpu_mma_ones_times_k_is_120_everywhere() {
    let Some(gpu) = gpu("gpu_mma_ones_times_k_is_120_everywhere") else {
        return;
    };
    let ones = vec![1.0f32; 256];
    let b = b_equals_k();
    for is_bf16 in [false, true] {
        let out = mma_plain(&gpu, &ones, &b, &ZERO, 16, is_bf16);
        assert!(out.d.iter().all(|&x| x == 120.0), "{:?}", out.d);
    }
}

#[test]
fn gpu_mma_random_integers_match_triple_loop() {
    let Some(gpu) = gpu("gpu_mma_random_integers_match_triple_loop") else {
        return;
    };
    for MmaCase {
        k,
        is_bf16,
        a,
        b,
        c,
    } in mma_random_cases()
    {
        let out = mma_plain(&gpu, &a, &b, &c, k as i32, is_bf16);
        assert_mma_exact(&out.d, &a, &b, &c, k, is_bf16);
    }
}

#[test]
fn gpu_mma_k8_fragment_vectors() {
    let Some(gpu) = gpu("gpu_mma_k8_fragment_vectors") else {
        return;
    };
    let (a, b) = spec_ab();
    let out = mma_plain(&gpu, &a, &b, &ZERO, 8, false);
    assert_eq!(&out.a(1, false)[..4], &MMA_K8_LANE1_A);
    assert_eq!(&out.b(1, false)[..2], &MMA_K8_LANE1_B);
    assert_eq!(out.frags[16 + 2], 0, "a4..a7 unused for k8");
    assert_eq!(out.d[0], mma_k8_d00());
}

#[test]
fn gpu_mma_accumulator_reused_as_a_fragment() {
    let Some(gpu) = gpu("gpu_mma_accumulator_reused_as_a_fragment") else {
        return;
    };
    for case in mma_chain_cases() {
        let (a, b1, b2, c) = (&case.a, &case.b1, &case.b2, &case.c);
        let out = run_mma(&gpu, (a, b1, b2, c), 16, case.is_bf16, mma_mode::CHAIN);
        for lane in 0..32 {
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

// ---- ldmatrix ------------------------------------------------------------------------------------

fn run_ldmatrix(gpu: &Gpu, num: i32, trans: bool, mode: i32) -> Vec<u32> {
    let out = zeros::<u32>(gpu, 128);
    let p = LdmatrixParams {
        out: addr(gpu, &out) as *mut u32,
        num,
        trans: i32::from(trans),
        mode,
        pad: 0,
    };
    launch(gpu, &LDMATRIX_KERNEL, [1, 1, 1], [32, 1, 1], 512, p);
    down(gpu, &out)
}

#[test]
fn gpu_ldmatrix_x4_vectors_of_the_spec() {
    let Some(gpu) = gpu("gpu_ldmatrix_x4_vectors_of_the_spec") else {
        return;
    };
    let out = run_ldmatrix(&gpu, 4, false, ldmatrix_mode::STANDARD);
    assert_eq!(lane_regs(&out, 0), LDSM_X4_LANE0);
    assert_eq!(out[4], LDSM_X4_LANE1_REG0);
    assert_eq!(lane_regs(&out, 31), LDSM_X4_LANE31);
}

#[test]
fn gpu_ldmatrix_x4_trans_vectors_of_the_spec() {
    let Some(gpu) = gpu("gpu_ldmatrix_x4_trans_vectors_of_the_spec") else {
        return;
    };
    let out = run_ldmatrix(&gpu, 4, true, ldmatrix_mode::STANDARD);
    assert_eq!(lane_regs(&out, 0), LDSM_X4T_LANE0);
    assert_eq!(out[4], LDSM_X4T_LANE1_REG0);
    assert_eq!(out[4 * 4], LDSM_X4T_LANE4_REG0);
    assert_eq!(lane_regs(&out, 31), LDSM_X4T_LANE31);
}

#[test]
fn gpu_ldmatrix_x1_x2_ignore_the_addresses_of_unused_lanes() {
    let Some(gpu) = gpu("gpu_ldmatrix_x1_x2_ignore_the_addresses_of_unused_lanes") else {
        return;
    };
    let x1 = run_ldmatrix(&gpu, 1, false, ldmatrix_mode::STANDARD);
    assert_eq!(lane_regs(&x1, 0), LDSM_X1_LANE0);
    assert_eq!(lane_regs(&x1, 31), LDSM_X1_LANE31);
    let x2 = run_ldmatrix(&gpu, 2, false, ldmatrix_mode::STANDARD);
    assert_eq!(lane_regs(&x2, 0), LDSM_X2_LANE0);
    assert_eq!(lane_regs(&x2, 31), LDSM_X2_LANE31);
    let x1t = run_ldmatrix(&gpu, 1, true, ldmatrix_mode::STANDARD);
    assert_eq!(lane_regs(&x1t, 1), LDSM_X1T_LANE1);
    let x2t = run_ldmatrix(&gpu, 2, true, ldmatrix_mode::STANDARD);
    assert_eq!(lane_regs(&x2t, 0), LDSM_X2T_LANE0);
}

#[test]
fn gpu_ldmatrix_honours_permuted_row_addresses() {
    let Some(gpu) = gpu("gpu_ldmatrix_honours_permuted_row_addresses") else {
        return;
    };
    let out = run_ldmatrix(&gpu, 4, false, ldmatrix_mode::PERMUTED);
    for (i, want) in LDSM_PERMUTED {
        assert_eq!(out[i], want, "out[{i}]");
    }
}

// ---- shuffles, indices ------------------------------------------------------------------------

fn run_warp(
    gpu: &Gpu,
    mode: i32,
    grid: [u32; 3],
    block: [u32; 3],
    smem: u32,
    n: usize,
) -> Vec<u32> {
    let out = zeros::<u32>(gpu, n);
    let p = WarpParams {
        out: addr(gpu, &out) as *mut u32,
        mode,
        pad: 0,
    };
    launch(gpu, &WARP_KERNEL, grid, block, smem, p);
    down(gpu, &out)
}

fn warp32(gpu: &Gpu, mode: i32) -> Vec<u32> {
    run_warp(gpu, mode, [1, 1, 1], [32, 1, 1], 0, 64)
}

fn assert_lanes(what: &str, got: &[u32], want: &[u32]) {
    for (l, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "{what}: lane {l}");
    }
}

#[test]
fn gpu_shuffles_match_the_emulator_vectors() {
    let Some(gpu) = gpu("gpu_shuffles_match_the_emulator_vectors") else {
        return;
    };
    let butterfly = warp32(&gpu, warp_mode::BUTTERFLY_SUM);
    assert_lanes("xor butterfly sum", &butterfly[..32], &SHFL_BUTTERFLY_SUM);
    let cases: [(&str, i32, Vec<u32>); 4] = [
        (
            "xor 16 width 16",
            warp_mode::XOR16_WIDTH16,
            shfl_xor16_width16(),
        ),
        (
            "idx 10 width 8",
            warp_mode::IDX10_WIDTH8,
            shfl_idx10_width8(),
        ),
        ("down 16", warp_mode::DOWN16, shfl_down16()),
        ("up 1 width 8", warp_mode::UP1_WIDTH8, shfl_up1_width8()),
    ];
    for (what, mode, want) in cases {
        assert_lanes(what, &warp32(&gpu, mode)[..32], &want);
    }
    assert_eq!(warp32(&gpu, warp_mode::SHFL64), shfl_64(), "64-bit shuffle");
    let quad = warp32(&gpu, warp_mode::QUAD_MAX);
    for l in 0..32 {
        assert_eq!(
            f32::from_bits(quad[l]),
            SHFL_QUAD_MAX[l / 4],
            "quad max: lane {l}"
        );
    }
    // Two half-warp masks at different call sites; a source outside the mask is undefined
    // on the GPU (the emulator returns POISON), so only the defined halves are compared.
    let partial = warp32(&gpu, warp_mode::PARTIAL_MASKS);
    for l in 0..32 {
        let (first, second) = shfl_partial_masks(l);
        if let Some(w) = first {
            assert_eq!(partial[l], w, "partial masks: lane {l}");
        }
        if let Some(w) = second {
            assert_eq!(partial[32 + l], w, "partial masks: lane {l} (second)");
        }
    }
}

#[test]
fn gpu_thread_and_block_indices_in_3d() {
    let Some(gpu) = gpu("gpu_thread_and_block_indices_in_3d") else {
        return;
    };
    let out = run_warp(
        &gpu,
        warp_mode::INDICES,
        INDICES_GRID,
        INDICES_BLOCK,
        0,
        4 * 12 * 24,
    );
    assert_eq!(out, indices_3d());
}

/// Lanes that exit before a full-mask shuffle or `__syncwarp`: PTX leaves the outcome
/// undefined; the emulator's model is that these collectives do not wait for exited lanes. This checks that the model matches this GPU (where a read of an exited lane is
/// undefined, only the other lanes' results are compared).
#[test]
fn gpu_exited_lanes_behave_as_the_emulator_models() {
    let Some(gpu) = gpu("gpu_exited_lanes_behave_as_the_emulator_models") else {
        return;
    };
    let out = warp32(&gpu, warp_mode::EXITED_LANES);
    for l in 0..16u32 {
        assert_eq!(
            out[32 + l as usize],
            shfl_exited_lanes_second(l),
            "lane {l}"
        );
    }
    assert!(out[16..32].iter().all(|&x| x == 0), "exited lanes wrote");
    let out = warp32(&gpu, warp_mode::SYNCWARP_EXITED);
    assert_eq!(out[..16], SYNCWARP_EXITED);
    // A __syncthreads that exited threads skip is no model to check: the emulator reports it
    // as a bug (tests/emulator.rs, exit_past_a_barrier_is_reported_in_either_order).
}

// ---- numeric conversions ------------------------------------------------------------------------

#[test]
fn gpu_f16_and_bf16_conversions_round_to_nearest_even() {
    let Some(gpu) = gpu("gpu_f16_and_bf16_conversions_round_to_nearest_even") else {
        return;
    };
    let n = WIDEN_CASES.len();
    let input: Vec<f32> = convert_cases().iter().map(|c| c.0).collect();
    let bits16: Vec<u16> = WIDEN_CASES.iter().map(|w| w.0).collect();
    let (inb, bitsb) = (up(&gpu, &input), up(&gpu, &bits16));
    let (f16o, bf16o) = (zeros::<u16>(&gpu, n), zeros::<u16>(&gpu, n));
    let (pf, pb) = (zeros::<u32>(&gpu, n), zeros::<u32>(&gpu, n));
    let (wf, wb) = (zeros::<f32>(&gpu, n), zeros::<f32>(&gpu, n));
    let p = ConvertParams {
        input: addr(&gpu, &inb) as *const f32,
        bits16: addr(&gpu, &bitsb) as *const u16,
        f16: addr(&gpu, &f16o) as *mut u16,
        bf16: addr(&gpu, &bf16o) as *mut u16,
        packed_f16: addr(&gpu, &pf) as *mut u32,
        packed_bf16: addr(&gpu, &pb) as *mut u32,
        widened_f16: addr(&gpu, &wf) as *mut f32,
        widened_bf16: addr(&gpu, &wb) as *mut f32,
        n: n as i32,
        pad: 0,
    };
    launch(&gpu, &CONVERT_KERNEL, [1, 1, 1], [32, 1, 1], 0, p);
    check_convert(
        &down(&gpu, &f16o),
        &down(&gpu, &bf16o),
        &down(&gpu, &pf),
        &down(&gpu, &pb),
        &down(&gpu, &wf),
        &down(&gpu, &wb),
    );
}

// ---- the a2/a4 canary -----------------------------------------------------------------------------

/// The forward kernel with the P fragment's a2 and a4 swapped must fail against the cuBLAS
/// oracle on the GPU, while the production kernel passes on the same data: the GPU twin of
/// `a2_a4_fragment_swap_canary_fails_end_to_end` in tests/attention_emu.rs.
#[test]
fn gpu_a2_a4_fragment_swap_canary_differs_from_cublas() {
    let Some(gpu) = gpu("gpu_a2_a4_fragment_swap_canary_differs_from_cublas") else {
        return;
    };
    let seed = common::base_seed();
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: 1,
            q_len: 64,
            kv_len: 64,
        },
        1,
        1,
        64,
        DType::F16,
    )
    .unwrap();
    let opts = AttnOptions::default();
    let plan = AttnPlan::new(&problem, &opts).unwrap();
    let mut rng = common::Rng::new(seed);
    let (q, k, v) = common::random_qkv::<f16>(&mut rng, &problem, 1.0, 1.0);
    let (dense_out, _) = dense_reference(&gpu, &problem, &opts, None, &q, &k, &v).unwrap();
    let want: Vec<f64> = dense_out.iter().map(|&x| x as f64).collect();

    // SAFETY: the canary is the f16/hd64 forward kernel with one fragment swapped: same params
    // struct and launch geometry as this plan's kernel.
    let canary_plan = unsafe { plan.clone().with_kernel(canary_swap_a2a4(plan.tiles())) };
    let (canary, _) = canary_plan.run_cuda_host(&gpu, &q, &k, &v).unwrap();
    let err = common::rel_error(&canary, &want);
    assert!(
        err > 4e-3,
        "the a2/a4-swapped kernel passed against cuBLAS on the GPU (error {err:.3e}, seed \
         {seed}): the GPU tests would not catch a fragment layout bug"
    );
    let (good, _) = plan.run_cuda_host(&gpu, &q, &k, &v).unwrap();
    let good_err = common::rel_error(&good, &want);
    assert!(
        good_err <= 4e-3,
        "the production kernel fails on the canary's data: {good_err:.3e} (seed {seed})"
    );
    eprintln!("canary error {err:.3e} (production kernel {good_err:.3e})");
}
