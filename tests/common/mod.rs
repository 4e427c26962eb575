//! Shared helpers of the integration tests: seeded data, the f64 oracle, error metrics.
#![allow(dead_code)]

pub mod paged;
pub mod tempdir;

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

/// SplitMix64: tiny, seedable, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
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

pub fn random_tensor<T: Element>(rng: &mut Rng, n: usize, amplitude: f32) -> Vec<T> {
    (0..n)
        .map(|_| T::from_f32(rng.unit() * amplitude))
        .collect()
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
        },
        allowed,
    )
}

/// Max |got - want| / max |want| over the tensor (0 when both are all zero).
pub fn rel_error<T: Element>(got: &[T], want: &[f64]) -> f64 {
    let max_ref = want.iter().fold(0.0f64, |m, &w| m.max(w.abs()));
    let max_err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g.to_f32() as f64 - w).abs()));
    if max_ref == 0.0 {
        max_err
    } else {
        max_err / max_ref
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
    let d = problem.head_dim().get() as usize;
    for (idx, (&got, &w)) in lse.iter().zip(&want.lse).enumerate() {
        if w == f64::NEG_INFINITY {
            assert_eq!(got, f32::NEG_INFINITY, "{what}: lse[{idx}] of an empty row");
        } else {
            let e = (got as f64 - w).abs() / w.abs().max(1.0);
            assert!(e <= 1e-3, "{what}: lse[{idx}] = {got}, want {w}");
        }
    }
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
