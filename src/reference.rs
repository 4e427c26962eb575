//! The f64 CPU reference: exact attention over any mask predicate. The oracle of every
//! emulator test; slow on purpose (no tiling, no approximations).

use crate::shape::{AttnProblem, SeqLens};

/// Inputs to the reference, widened to f32 (exactly representable from f16/bf16).
pub struct RefInputs<'a> {
    /// Queries.
    pub q: &'a [f32],
    /// Keys.
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
    /// Score scale.
    pub scale: f32,
    /// 0 = off.
    pub softcap: f32,
    /// Learnable sink logits, one per query head: each row's denominator gains
    /// `exp(sink_logits[h])` (`None`: no sink term).
    pub sink_logits: Option<&'a [f32]>,
    /// ALiBi slopes, one per query head: `s -= slope * |p - j|` after the softcap (`None`: no
    /// position bias).
    pub alibi_slopes: Option<&'a [f32]>,
}

/// Reference output: `out` laid out like q, `lse` like the kernel's
/// (`[batch, num_heads, q_len]`, varlen `[num_heads, total_q]`).
pub struct RefOutput {
    /// Output, laid out like q.
    pub out: Vec<f64>,
    /// Row LSE (natural log).
    pub lse: Vec<f64>,
}

/// Bottom-right aligned absolute position of query row `i` (docs/patterns.md "Positions").
pub fn query_position(i: usize, q_len: usize, kv_len: usize) -> i64 {
    i as i64 + kv_len as i64 - q_len as i64
}

/// The causal predicate: key `j` visible from query row `i` iff `j <= p`.
pub fn causal_allowed(i: usize, j: usize, q_len: usize, kv_len: usize) -> bool {
    (j as i64) <= query_position(i, q_len, kv_len)
}

/// The chunked predicate (docs/patterns.md, `chunked`): key `j` visible from query row `i`
/// iff the query position `p` and `j` lie in the same chunk of `size` positions counted from
/// position 0, `floor(p / size) == floor(j / size)`, and with `causal` also `j <= p`. A row
/// with a negative position sees nothing (its chunk holds no key). `size >= 1`.
pub fn chunked_allowed(
    i: usize,
    j: usize,
    q_len: usize,
    kv_len: usize,
    size: usize,
    causal: bool,
) -> bool {
    let p = query_position(i, q_len, kv_len);
    if p < 0 || (causal && j as i64 > p) {
        return false;
    }
    p as usize / size == j / size
}

/// Exact attention. `allowed(b, h, i, j)` says whether query row `i` of sequence `b`, head `h`
/// may attend to key `j` (indices local to the sequence). Scores are `scale * q.k`, capped
/// (`c * tanh(s / c)`), then biased (`- slope_h * |p - j|`, `p` the row's position), as
/// [`crate::AttnOptions`] defines them; with sink logits each row's softmax denominator
/// holds `exp(sink_h)` besides its keys' terms, and a row with no allowed key has
/// `out = 0` and `lse = sink_h` (without them: `-inf`).
pub fn attention<F>(problem: &AttnProblem, x: &RefInputs<'_>, allowed: F) -> RefOutput
where
    F: Fn(usize, usize, usize, usize) -> bool + Sync,
{
    let d = problem.head_dim().get() as usize;
    let (h_q, h_kv) = (problem.num_heads(), problem.num_kv_heads());
    let group = problem.group_size();
    let (total_q, _) = problem.seqs().totals();
    let varlen = matches!(problem.seqs(), SeqLens::Varlen { .. });
    let mut out = vec![0.0f64; problem.q_elems()];
    let mut lse = vec![0.0f64; problem.lse_elems()];
    let mut scores = Vec::new();
    for b in 0..problem.seqs().batch() {
        let (q_len, kv_len) = problem.seqs().lens(b);
        let (q0, k0) = problem.seqs().offsets(b);
        for h in 0..h_q {
            let hk = h / group;
            for i in 0..q_len {
                let qrow = &x.q[((q0 + i) * h_q + h) * d..][..d];
                scores.clear();
                for j in 0..kv_len {
                    if !allowed(b, h, i, j) {
                        continue;
                    }
                    let krow = &x.k[((k0 + j) * h_kv + hk) * d..][..d];
                    let dot: f64 = qrow
                        .iter()
                        .zip(krow)
                        .map(|(&a, &c)| a as f64 * c as f64)
                        .sum();
                    let mut s = x.scale as f64 * dot;
                    if x.softcap > 0.0 {
                        let c = x.softcap as f64;
                        s = c * (s / c).tanh();
                    }
                    if let Some(slopes) = x.alibi_slopes {
                        let p = query_position(i, q_len, kv_len);
                        s -= slopes[h] as f64 * (p - j as i64).abs() as f64;
                    }
                    scores.push((j, s));
                }
                let lse_idx = if varlen {
                    h * total_q + q0 + i
                } else {
                    (b * h_q + h) * q_len + i
                };
                let orow = &mut out[((q0 + i) * h_q + h) * d..][..d];
                let sink = x.sink_logits.map(|s| s[h] as f64);
                if scores.is_empty() {
                    lse[lse_idx] = sink.unwrap_or(f64::NEG_INFINITY);
                    continue;
                }
                let m = scores.iter().fold(f64::NEG_INFINITY, |m, &(_, s)| m.max(s));
                let m = sink.map_or(m, |k| m.max(k));
                // The sink term: a key of logit sink_h and value 0.
                let mut l = sink.map_or(0.0, |k| (k - m).exp());
                for &(j, s) in &scores {
                    let p = (s - m).exp();
                    l += p;
                    let vrow = &x.v[((k0 + j) * h_kv + hk) * d..][..d];
                    for (o, &vv) in orow.iter_mut().zip(vrow) {
                        *o += p * vv as f64;
                    }
                }
                for o in orow.iter_mut() {
                    *o /= l;
                }
                lse[lse_idx] = m + l.ln();
            }
        }
    }
    RefOutput { out, lse }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_logits_and_alibi_by_hand() {
        // One query (q = 0, so every dot product is 0) at position p = 1 over two keys whose
        // values are all 1 and all 3. Slope ln 2: key 0 (distance 1) gets e^-ln2 = 1/2, key 1
        // (distance 0) gets 1; the sink logit 0 adds e^0 = 1 to the denominator:
        // out = (1/2 * 1 + 1 * 3) / (1 + 1/2 + 1) = 1.4, lse = ln 2.5.
        let problem = crate::AttnProblem::new(
            SeqLens::Uniform {
                batch: 1,
                q_len: 1,
                kv_len: 2,
            },
            1,
            1,
            64,
            crate::DType::F16,
        )
        .unwrap();
        let (q, v) = (vec![0.0f32; 64], [vec![1.0f32; 64], vec![3.0; 64]].concat());
        let slopes = [std::f32::consts::LN_2];
        let x = RefInputs {
            q: &q,
            k: &v,
            v: &v,
            scale: 0.125,
            softcap: 0.0,
            sink_logits: Some(&[0.0]),
            alibi_slopes: Some(&slopes),
        };
        let r = attention(&problem, &x, |_, _, _, _| true);
        assert!(
            r.out.iter().all(|&o| (o - 1.4).abs() < 1e-6),
            "{:?}",
            &r.out[..2]
        );
        assert!((r.lse[0] - 2.5f64.ln()).abs() < 1e-6, "{}", r.lse[0]);
        // With no allowed key the row is out = 0 and lse = the sink logit.
        let x = RefInputs {
            sink_logits: Some(&[-1.5]),
            ..x
        };
        let r = attention(&problem, &x, |_, _, _, _| false);
        assert!(r.out.iter().all(|&o| o == 0.0));
        assert_eq!(r.lse[0], -1.5);
    }

    #[test]
    fn chunked_predicate_by_hand() {
        // Chunks of 4 over 10 keys, q_len == kv_len: row 5 sees keys 4 and 5 causally, 4..=7 not.
        let row = |i: usize, causal: bool| -> Vec<usize> {
            (0..10)
                .filter(|&j| chunked_allowed(i, j, 10, 10, 4, causal))
                .collect()
        };
        assert_eq!(row(5, true), vec![4, 5]);
        assert_eq!(row(5, false), vec![4, 5, 6, 7]);
        assert_eq!(row(9, false), vec![8, 9]);
        // q_len 3 > kv_len 2: row 0 sits at position -1 and sees nothing.
        assert!((0..2).all(|j| !chunked_allowed(0, j, 3, 2, 4, false)));
        assert!(chunked_allowed(2, 0, 3, 2, 4, true));
    }
}
