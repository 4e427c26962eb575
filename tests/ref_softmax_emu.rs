//! The dense oracle's softmax kernel (kernels/ref_softmax.cu) on the CPU emulator, checked
//! against the f64 reference: S is computed on the host, the kernel turns it into P and the
//! LSE, and O = P V (host, f64) must match `reference::attention` for the same mask. This is
//! what makes the cuBLAS oracle of the GPU tests trustworthy without a GPU.

mod common;

use common::{assert_lse_close, max_abs, max_abs_diff, random_qkv, widen, Rng};
use half::{bf16, f16};
use sparse_attn::backend::ref_softmax::{self, RefSoftmax};
use sparse_attn::emu::{EmuOptions, Schedule};
use sparse_attn::reference::{self, RefInputs};
use sparse_attn::{AttnProblem, Element, Error, SeqLens};

struct Case {
    batch: usize,
    q_len: usize,
    kv_len: usize,
    heads: usize,
    kv_heads: usize,
    causal: bool,
    softcap: f32,
    /// Random token mask (`[heads, q_len, kv_len]`), with query row 0 fully masked.
    masked: bool,
}

fn check<T: Element>(c: &Case, seed: u64) {
    let what = format!(
        "{} b{} q{} kv{} h{}/{} causal={} softcap={} masked={} seed={seed}",
        T::DTYPE.name(),
        c.batch,
        c.q_len,
        c.kv_len,
        c.heads,
        c.kv_heads,
        c.causal,
        c.softcap,
        c.masked
    );
    let d = 64usize;
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: c.batch,
            q_len: c.q_len,
            kv_len: c.kv_len,
        },
        c.heads,
        c.kv_heads,
        d as u32,
        T::DTYPE,
    )
    .unwrap();
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<T>(&mut rng, &problem, 2.0, 1.0);
    let (qf, kf, vf) = (widen(&q), widen(&k), widen(&v));
    let mask: Option<Vec<u8>> = c.masked.then(|| {
        (0..c.heads * c.q_len * c.kv_len)
            .map(|idx| {
                let row = (idx / c.kv_len) % c.q_len;
                (row != 0 && rng.next_u64() % 4 != 0) as u8
            })
            .collect()
    });
    let scale = 1.0 / (d as f32).sqrt();
    let group = c.heads / c.kv_heads;
    let (hq, hk) = (c.heads, c.kv_heads);

    let mut out = vec![0.0f64; problem.q_elems()];
    let mut lse = vec![0.0f32; problem.lse_elems()];
    for h in 0..hq {
        let kvh = h / group;
        // S for this head, [batch, q_len, kv_len], exactly as the first GEMM would give it.
        let mut s = Vec::with_capacity(c.batch * c.q_len * c.kv_len);
        for b in 0..c.batch {
            for i in 0..c.q_len {
                let qrow = &qf[((b * c.q_len + i) * hq + h) * d..][..d];
                for j in 0..c.kv_len {
                    let krow = &kf[((b * c.kv_len + j) * hk + kvh) * d..][..d];
                    let dot: f64 = qrow
                        .iter()
                        .zip(krow)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    s.push((scale as f64 * dot) as f32);
                }
            }
        }
        let shape = RefSoftmax {
            dtype: T::DTYPE,
            batch: c.batch,
            q_len: c.q_len,
            kv_len: c.kv_len,
            causal: c.causal,
            softcap: c.softcap,
        };
        let head_mask = mask
            .as_ref()
            .map(|m| &m[h * c.q_len * c.kv_len..][..c.q_len * c.kv_len]);
        let opts = EmuOptions {
            schedule: Schedule::Random(seed ^ h as u64),
            ..Default::default()
        };
        let (p, l): (Vec<T>, Vec<f32>) =
            ref_softmax::run_emulated(&shape, &s, head_mask, &opts).unwrap();
        // O = P V on the host; LSE into the kernels' [batch, heads, q_len] layout.
        for b in 0..c.batch {
            for i in 0..c.q_len {
                let prow = &p[(b * c.q_len + i) * c.kv_len..][..c.kv_len];
                let empty = l[b * c.q_len + i] == f32::NEG_INFINITY;
                if empty {
                    assert!(
                        prow.iter().all(|x| x.to_f32() == 0.0),
                        "{what}: P of an empty row is not zero"
                    );
                } else {
                    let sum: f32 = prow.iter().map(|x| x.to_f32()).sum();
                    assert!((sum - 1.0).abs() < 2e-2, "{what}: P row sums to {sum}");
                }
                lse[(b * hq + h) * c.q_len + i] = l[b * c.q_len + i];
                let orow = &mut out[((b * c.q_len + i) * hq + h) * d..][..d];
                for (j, pj) in prow.iter().enumerate() {
                    let vrow = &vf[((b * c.kv_len + j) * hk + kvh) * d..][..d];
                    for (o, &vv) in orow.iter_mut().zip(vrow) {
                        *o += pj.to_f32() as f64 * vv as f64;
                    }
                }
            }
        }
    }

    let want = reference::attention(
        &problem,
        &RefInputs {
            q: &qf,
            k: &kf,
            v: &vf,
            scale,
            softcap: c.softcap,
            sink_logits: None,
            alibi_slopes: None,
        },
        |_, h, i, j| {
            (!c.causal || reference::causal_allowed(i, j, c.q_len, c.kv_len))
                && mask
                    .as_ref()
                    .map_or(true, |m| m[(h * c.q_len + i) * c.kv_len + j] == 1)
        },
    );
    let (max_err, max_ref) = (max_abs_diff(&out, &want.out), max_abs(&want.out));
    // P is rounded to the element type (bf16: 8 significant bits), O is not.
    let tol = match T::DTYPE {
        sparse_attn::DType::F16 => 2e-3,
        sparse_attn::DType::BF16 => 1e-2,
    };
    assert!(
        max_err <= tol * max_ref.max(1e-6),
        "{what}: out error {max_err:.3e} vs max |out| {max_ref:.3e}"
    );
    assert_lse_close(&what, &lse, &want.lse, 1e-5);
}

fn sweep<T: Element>() {
    let seed = common::base_seed();
    let cases = [
        // Plain, with a kv length that leaves a partial 128-thread stride.
        (1, 37, 300, 2, 2, false, 0.0, false),
        (2, 64, 64, 4, 2, true, 0.0, false),
        // q_len > kv_len with causal: the first rows have no key at all.
        (1, 50, 20, 2, 1, true, 0.0, false),
        // q_len < kv_len (decode-like bottom-right alignment).
        (2, 3, 129, 4, 1, true, 0.0, false),
        // Token mask with a fully masked row, plus softcap.
        (2, 19, 45, 2, 2, false, 5.0, true),
        (1, 33, 33, 4, 2, true, 0.0, true),
    ];
    for (i, &(batch, q_len, kv_len, heads, kv_heads, causal, softcap, masked)) in
        cases.iter().enumerate()
    {
        let case = Case {
            batch,
            q_len,
            kv_len,
            heads,
            kv_heads,
            causal,
            softcap,
            masked,
        };
        check::<T>(&case, seed.wrapping_add(i as u64));
    }
}

#[test]
fn f16_matches_the_f64_reference() {
    sweep::<f16>();
}

#[test]
fn bf16_matches_the_f64_reference() {
    sweep::<bf16>();
}

#[test]
fn bad_shapes_are_typed_errors() {
    let shape = RefSoftmax {
        dtype: sparse_attn::DType::F16,
        batch: 1,
        q_len: 2,
        kv_len: 3,
        causal: false,
        softcap: 0.0,
    };
    let opts = EmuOptions::default();
    let s = vec![0.0f32; 6];
    let r = ref_softmax::run_emulated::<f16>(&shape, &s[..5], None, &opts);
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
    let r = ref_softmax::run_emulated::<bf16>(&shape, &s, None, &opts);
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
    let r = ref_softmax::run_emulated::<f16>(&shape, &s, Some(&[1u8; 5]), &opts);
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
    let bad_cap = RefSoftmax {
        softcap: f32::NAN,
        ..shape
    };
    let r = ref_softmax::run_emulated::<f16>(&bad_cap, &s, None, &opts);
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
}
