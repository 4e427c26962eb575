//! Shared helpers of the integration tests: seeded data, the f64 oracle, error metrics.
#![allow(dead_code)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod paged;
pub mod tempdir;

use std::fmt::Debug;

use half::{bf16, f16};
use sparse_attn::reference::{self, RefInputs, RefOutput};
use sparse_attn::{AttnPlan, AttnProblem, Element};

/// Tolerances of the kernels against the f64 reference: relative error <= 1e-2 (bf16),
/// <= 4e-3 (f16).
pub fn tol(dtype: sparse_attn::DType) -> f64 {
    match dtype {
        sparse_attn::DType::F16 => 4e-3,
        sparse_attn::DType::BF16 => 1e-2,
    }
}

/// The crate's one seedable generator (SplitMix64): `new(seed)`, `next_u64`, `below(n)`,
/// `unit()` in [-1, 1), `int_in(lo, hi)`.
pub use sparse_attn::pattern::rng::SplitMix64 as Rng;

/// The emulator run options of the attention suites: default, with the numerics mode named by
/// `SPARSE_ATTN_EMU_NUMERICS` (`exact`, the default, or `pessimistic`: truncated tensor-core
/// sums and a 2-ulp, flushing `ex2`, under which every suite must pass with the same
/// tolerances; CI runs them both ways).
pub fn emu_run() -> sparse_attn::EmuRun<'static> {
    let numerics = match std::env::var("SPARSE_ATTN_EMU_NUMERICS").as_deref() {
        Ok("pessimistic") => sparse_attn::emu::Numerics::Pessimistic,
        Ok("exact") | Err(_) => sparse_attn::emu::Numerics::Exact,
        Ok(other) => panic!("SPARSE_ATTN_EMU_NUMERICS={other}: expected exact or pessimistic"),
    };
    sparse_attn::EmuRun {
        numerics,
        ..Default::default()
    }
}

/// The run's base seed: `SPARSE_ATTN_SEED` if set, else fresh from the clock. Printed so a
/// failure can be replayed.
pub fn base_seed() -> u64 {
    let seed = std::env::var("SPARSE_ATTN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("test data seed: SPARSE_ATTN_SEED={seed}");
    seed
}

/// The contract's exact-arithmetic values, {-2, -1, 0, 1, 2} / 4 (docs/adaptive.md: every
/// product, block mean and dot product is exact in f16, bf16 and f32).
pub fn exact_tensor<T: Element>(rng: &mut Rng, n: usize) -> Vec<T> {
    (0..n)
        .map(|_| T::from_f32(rng.int_in(-2, 2) as f32 / 4.0))
        .collect()
}

/// An adaptive selection component (`top_k`, `top_p`, `top_rel`) from its JSON.
pub fn select(json: &str) -> sparse_attn::adaptive::BlockSelect {
    match sparse_attn::adaptive::AdaptiveComponent::from_json(json).unwrap() {
        sparse_attn::adaptive::AdaptiveComponent::Select(s) => s,
        other => panic!("not a selection: {other:?}"),
    }
}

pub fn random_tensor<T: Element>(rng: &mut Rng, n: usize, amplitude: f32) -> Vec<T> {
    (0..n)
        .map(|_| T::from_f32(rng.unit() * amplitude))
        .collect()
}

/// Random q, k, v for `problem` (drawn in that order): q and k of amplitude `qk`, v of `v`.
pub fn random_qkv<T: Element>(
    rng: &mut Rng,
    problem: &AttnProblem,
    qk: f32,
    v: f32,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let q = random_tensor(rng, problem.q_elems(), qk);
    let k = random_tensor(rng, problem.kv_elems(), qk);
    let v = random_tensor(rng, problem.kv_elems(), v);
    (q, k, v)
}

pub fn widen<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

/// Reference output for a plan's problem and options under a mask predicate
/// `allowed(b, h, i, j)`.
pub fn reference_for<T: Element, F>(
    plan: &AttnPlan,
    q: &[T],
    k: &[T],
    v: &[T],
    allowed: F,
) -> RefOutput
where
    F: Fn(usize, usize, usize, usize) -> bool + Sync,
{
    let (q, k, v) = (widen(q), widen(k), widen(v));
    reference::attention(
        plan.problem(),
        &RefInputs {
            q: &q,
            k: &k,
            v: &v,
            scale: plan.scale(),
            softcap: plan.softcap(),
            sink_logits: plan.sink_logits(),
            alibi_slopes: plan.alibi_slopes(),
        },
        allowed,
    )
}

/// Max |x| over a tensor (0 when empty).
pub fn max_abs<A: Copy + Into<f64>>(x: &[A]) -> f64 {
    x.iter().fold(0.0f64, |m, &a| m.max(a.into().abs()))
}

/// Max |got - want| over two tensors of the same length (asserted: a shorter side must not
/// hide the rest).
pub fn max_abs_diff<A: Copy + Into<f64>, B: Copy + Into<f64>>(got: &[A], want: &[B]) -> f64 {
    assert_eq!(got.len(), want.len(), "compared tensors differ in length");
    got.iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g.into() - w.into()).abs()))
}

/// Max |got - want| / max |want| over the tensor (0 when both are all zero); lengths must
/// agree.
pub fn rel_error<T: Element>(got: &[T], want: &[f64]) -> f64 {
    let got: Vec<f32> = widen(got);
    let (max_err, max_ref) = (max_abs_diff(&got, want), max_abs(want));
    if max_ref == 0.0 {
        max_err
    } else {
        max_err / max_ref
    }
}

/// Asserts two LSE tensors agree: same length, `-inf` exactly where `want` is `-inf` (an
/// empty row), else `|got - want| <= tol * max(|want|, 1)`.
pub fn assert_lse_close<A, B>(what: &str, got: &[A], want: &[B], tol: f64)
where
    A: Copy + Into<f64>,
    B: Copy + Into<f64>,
{
    assert_eq!(got.len(), want.len(), "{what}: lse length");
    for (idx, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.into(), w.into());
        if w == f64::NEG_INFINITY {
            assert_eq!(g, f64::NEG_INFINITY, "{what}: lse[{idx}] of an empty row");
        } else {
            let e = (g - w).abs() / w.abs().max(1.0);
            assert!(e <= tol, "{what}: lse[{idx}] = {g}, want {w}");
        }
    }
}

/// Values compared bit for bit (so `-0 != 0` and a NaN equals only the same NaN).
pub trait Bits: Copy + Debug {
    fn bits(self) -> u32;
}

impl Bits for f16 {
    fn bits(self) -> u32 {
        self.to_bits().into()
    }
}

impl Bits for bf16 {
    fn bits(self) -> u32 {
        self.to_bits().into()
    }
}

impl Bits for f32 {
    fn bits(self) -> u32 {
        self.to_bits()
    }
}

/// Asserts `got` and `want` have the same length and the same bits everywhere; names the
/// first difference.
pub fn assert_same_bits<T: Bits>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].bits() != want[i].bits()) {
        panic!(
            "{what}: first difference at [{i}]: {:?} vs {:?}",
            got[i], want[i]
        );
    }
}

/// Checks kernel output against the reference: relative error within `tol`, LSE within
/// 1e-3 relative, empty rows exactly zero with LSE = -inf, no NaN anywhere.
pub fn assert_matches<T: Element>(
    what: &str,
    problem: &AttnProblem,
    out: &[T],
    lse: &[f32],
    want: &RefOutput,
    tol: f64,
) {
    assert_eq!(out.len(), want.out.len(), "{what}: out length");
    assert_eq!(lse.len(), want.lse.len(), "{what}: lse length");
    assert!(
        out.iter().all(|x| !x.to_f32().is_nan()),
        "{what}: NaN in out"
    );
    let err = rel_error(out, &want.out);
    assert!(err <= tol, "{what}: relative error {err:.3e} > {tol:.1e}");
    assert_lse_close(what, lse, &want.lse, 1e-3);
    let d = problem.head_dim().get() as usize;
    // Empty rows: out exactly 0.
    let (total_q, _) = problem.seqs().totals();
    let varlen = matches!(problem.seqs(), sparse_attn::SeqLens::Varlen { .. });
    let hq = problem.num_heads();
    for b in 0..problem.seqs().batch() {
        let (q_len, _) = problem.seqs().lens(b);
        let (q0, _) = problem.seqs().offsets(b);
        for h in 0..hq {
            for i in 0..q_len {
                let li = if varlen {
                    h * total_q + q0 + i
                } else {
                    (b * hq + h) * q_len + i
                };
                if want.lse[li] == f64::NEG_INFINITY {
                    let row = &out[((q0 + i) * hq + h) * d..][..d];
                    assert!(
                        row.iter().all(|x| x.to_f32() == 0.0),
                        "{what}: empty row (b {b}, h {h}, i {i}) is not exactly zero"
                    );
                }
            }
        }
    }
}

/// A GPU for `test`, or `None` (printing why) when there is none or the kernels were not
/// built; with `SPARSE_ATTN_REQUIRE_GPU=1` that is a failure instead.
pub fn gpu(test: &str) -> Option<sparse_attn::backend::Gpu> {
    let require = std::env::var("SPARSE_ATTN_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let build = sparse_attn::backend::cuda_build();
    let why = if !build.built {
        format!("the GPU kernels were not built ({})", build.skip_reason)
    } else {
        match sparse_attn::backend::Gpu::new(0) {
            Ok(g) => return Some(g),
            Err(e) => e.to_string(),
        }
    };
    if require {
        panic!("{test}: SPARSE_ATTN_REQUIRE_GPU=1 but {why}");
    }
    eprintln!("{test}: skipped, no GPU: {why}");
    None
}
