//! The candle op ([`sparse_attn_candle::SparseAttn`], the candle-flash-attn-shaped functions)
//! and the paged cache over candle tensors ([`sparse_attn_candle::CandleKvCache`]), on the
//! CPU emulator, against candle's own masked softmax attention (matmul, a mask tensor built
//! from the pattern, a softmax written with candle ops) in f32. The GPU test at the end runs
//! the same op on candle's CUDA tensors and skips without one (feature `cuda`).

use candle_core::{DType, Device, IndexOp, Tensor, D};
use sparse_attn::kv_cache::{KvCacheConfig, LayerCapacity, PoolSize};
use sparse_attn::pattern::{HeadPatterns, LayerPlan, Pattern};
use sparse_attn_candle::{
    flash_attn, flash_attn_alibi, flash_attn_alibi_windowed_softcap, flash_attn_varlen,
    flash_attn_varlen_windowed, flash_attn_windowed, window_pattern, CandleKvCache, SparseAttn,
    Varlen,
};

type R<T = ()> = candle_core::Result<T>;

/// Deterministic N(0, 1)-ish values (sum of uniforms) as an f32 tensor of `shape` cast to `dt`.
fn randn(shape: &[usize], seed: u64, dt: DType) -> R<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let v: Vec<f32> = (0..n)
        .map(|_| (0..4).map(|_| uniform()).sum::<f32>() - 2.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dt)
}

/// Score modifiers of the reference (the op's options).
#[derive(Default, Clone)]
struct Mods {
    scale: Option<f32>,
    softcap: Option<f32>,
    sinks: Option<Vec<f32>>,
    slopes: Option<Vec<f32>>,
}

/// candle's masked softmax attention in f32: q `[b, sq, h, d]`, k and v `[b, sk, hk, d]`,
/// returns `[b, sq, h, d]`. The mask is built from the pattern's token predicate
/// (bottom-right aligned), an empty row gives 0, sink logits join each row's denominator.
fn reference(q: &Tensor, k: &Tensor, v: &Tensor, set: &HeadPatterns, m: &Mods) -> R<Tensor> {
    let (b, sq, h, d) = q.dims4()?;
    let (_, sk, hk, _) = k.dims4()?;
    let g = h / hk;
    let f = |t: &Tensor| t.to_dtype(DType::F32);
    let q = f(q)?.transpose(1, 2)?.contiguous()?; // [b, h, sq, d]
    let rep = |t: &Tensor| -> R<Tensor> {
        f(t)?
            .transpose(1, 2)? // [b, hk, sk, d]
            .unsqueeze(2)?
            .expand((b, hk, g, sk, d))?
            .reshape((b, h, sk, d))
    };
    let (k, v) = (rep(k)?, rep(v)?);
    let scale = m.scale.unwrap_or(1.0 / (d as f32).sqrt()) as f64;
    let mut s = (q.matmul(&k.t()?)? * scale)?; // [b, h, sq, sk]
    if let Some(c) = m.softcap.filter(|&c| c > 0.0) {
        s = ((s / c as f64)?.tanh()? * c as f64)?;
    }
    let pos = |i: usize| i as i64 + sk as i64 - sq as i64;
    if let Some(slopes) = &m.slopes {
        let bias: Vec<f32> = (0..h * sq * sk)
            .map(|x| {
                let (hh, i, j) = (x / (sq * sk), x / sk % sq, x % sk);
                -slopes[hh] * (pos(i) - j as i64).unsigned_abs() as f32
            })
            .collect();
        s = s.broadcast_add(&Tensor::from_vec(bias, (1, h, sq, sk), &Device::Cpu)?)?;
    }
    let mask: Vec<f32> = (0..h * sq * sk)
        .map(|x| {
            let (hh, i, j) = (x / (sq * sk), x / sk % sq, x % sk);
            set.allowed(hh, pos(i), j as i64, sk) as u8 as f32
        })
        .collect();
    let mask = Tensor::from_vec(mask, (1, h, sq, sk), &Device::Cpu)?;
    let not = (1.0 - &mask)?;
    // Masked scores are -1e30: finite, so an empty row has max -1e30 and exp(0) * 0 = 0.
    let s = s.broadcast_mul(&mask)?.broadcast_add(&(not * -1e30)?)?;
    let mut mx = s.max_keepdim(D::Minus1)?; // [b, h, sq, 1]
    let sink = match &m.sinks {
        Some(v) => Some(Tensor::from_vec(v.clone(), (1, h, 1, 1), &Device::Cpu)?),
        None => None,
    };
    if let Some(t) = &sink {
        mx = mx.broadcast_maximum(t)?;
    }
    let e = s.broadcast_sub(&mx)?.exp()?.broadcast_mul(&mask)?;
    let mut den = e.sum_keepdim(D::Minus1)?;
    if let Some(t) = &sink {
        den = (den + t.broadcast_sub(&mx)?.exp()?)?;
    }
    let den = den.maximum(1e-30)?;
    e.matmul(&v)?
        .broadcast_div(&den)?
        .transpose(1, 2)?
        .contiguous()
}

/// Largest |a - b| over all elements (both cast to f32).
fn max_diff(a: &Tensor, b: &Tensor) -> R<f32> {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()
}

fn tol(dt: DType) -> f32 {
    if dt == DType::BF16 {
        3e-2
    } else {
        6e-3
    }
}

/// The op on (q, k, v) against the reference, within the dtype's tolerance; returns the output.
fn check(op: &SparseAttn, q: &Tensor, k: &Tensor, v: &Tensor, m: &Mods, what: &str) -> R<Tensor> {
    let out = op.forward(q, k, v)?;
    assert_eq!(out.dims(), q.dims(), "{what}");
    assert_eq!(out.dtype(), q.dtype(), "{what}");
    let want = reference(q, k, v, &op.patterns, m)?;
    let diff = max_diff(&out, &want)?;
    assert!(diff <= tol(q.dtype()), "{what}: max |op - candle| = {diff}");
    // Not vacuous: the rows carry signal.
    let mag = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    assert!(mag > 0.05, "{what}: reference output is all ~0 ({mag})");
    Ok(out)
}

fn pattern(json: &str) -> HeadPatterns {
    HeadPatterns::from_json(json).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn qkv(
    b: usize,
    sq: usize,
    sk: usize,
    h: usize,
    hk: usize,
    d: usize,
    dt: DType,
    seed: u64,
) -> R<(Tensor, Tensor, Tensor)> {
    Ok((
        randn(&[b, sq, h, d], seed, dt)?,
        randn(&[b, sk, hk, d], seed + 1, dt)?,
        randn(&[b, sk, hk, d], seed + 2, dt)?,
    ))
}

#[test]
fn every_pattern_kind_matches_candle_masked_softmax() -> R {
    // GQA 4:2, head_dim 64, 80 queries over 112 keys (bottom-right aligned, partial tiles).
    let (q, k, v) = qkv(1, 80, 112, 4, 2, 64, DType::F16, 11)?;
    let cases = [
        ("dense", r#"{"causal": false}"#),
        ("causal", r#"{"causal": true}"#),
        (
            "window",
            r#"{"causal": true, "components": [{"sliding_window": {"size": 24}}]}"#,
        ),
        (
            "sinks",
            r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 16}}]}"#,
        ),
        (
            "global",
            r#"{"causal": false, "components": [{"global": {"tokens": [3, 50, 100]}}, {"sliding_window": {"left": 8, "right": 8}}]}"#,
        ),
        (
            "dilated",
            r#"{"causal": true, "components": [{"dilated": {"stride": 3}}]}"#,
        ),
        (
            "block_mask",
            r#"{"causal": false, "components": [{"block_mask": {"block_q": 16, "block_k": 16, "mask": [[1,0,0,0,0,0,1],[0,1,0,1,0,0,0],[1,1,1,0,0,0,0],[0,0,0,0,1,1,0],[1,0,1,0,1,0,1]]}}]}"#,
        ),
        (
            "bigbird",
            r#"{"causal": false, "components": [{"bigbird": {"block": 16, "window_blocks": 3, "global_blocks": 1, "random_blocks": 2, "seed": 7}}]}"#,
        ),
        (
            "chunked",
            r#"{"causal": true, "components": [{"chunked": {"size": 32}}]}"#,
        ),
        (
            "per-head",
            r#"{"heads": [{"causal": true}, {"causal": true, "components": [{"sliding_window": {"size": 8}}]}, {"causal": false, "components": [{"dilated": {"stride": 2}}]}, {"causal": true, "components": [{"sinks": {"count": 2}}]}]}"#,
        ),
    ];
    for (name, json) in cases {
        check(
            &SparseAttn::new(pattern(json)),
            &q,
            &k,
            &v,
            &Mods::default(),
            name,
        )?;
    }
    Ok(())
}

#[test]
fn score_mods_match_candle() -> R {
    let (q, k, v) = qkv(2, 33, 70, 4, 4, 64, DType::BF16, 21)?;
    let sinks = vec![0.5f32, -1.0, 2.0, 0.0];
    let slopes = sparse_attn::shape::alibi_slopes(4);
    let window = pattern(r#"{"causal": true, "components": [{"sliding_window": {"size": 20}}]}"#);
    let cases = [
        (
            "scale",
            Mods {
                scale: Some(0.3),
                ..Mods::default()
            },
        ),
        (
            "softcap",
            Mods {
                scale: Some(1.0),
                softcap: Some(5.0),
                ..Mods::default()
            },
        ),
        (
            "sink logits",
            Mods {
                sinks: Some(sinks.clone()),
                ..Mods::default()
            },
        ),
        (
            "alibi",
            Mods {
                slopes: Some(slopes.clone()),
                ..Mods::default()
            },
        ),
        (
            "all",
            Mods {
                scale: Some(0.2),
                softcap: Some(3.0),
                sinks: Some(sinks),
                slopes: Some(slopes),
            },
        ),
    ];
    for (name, m) in cases {
        let op = SparseAttn {
            patterns: window.clone(),
            scale: m.scale,
            softcap: m.softcap,
            sink_logits: m.sinks.clone(),
            alibi_slopes: m.slopes.clone(),
            varlen: None,
        };
        check(&op, &q, &k, &v, &m, name)?;
    }
    Ok(())
}

#[test]
fn strided_inputs_give_the_contiguous_result() -> R {
    let (b, s, h, hk, d) = (2, 48, 4, 2, 64);
    let op = SparseAttn::new(Pattern::causal_window(20).unwrap());
    // q as the transpose of a [b, h, s, d] tensor; k and v narrowed out of one fused
    // [b, s, 2 * hk + 2, d] buffer (a fused KV projection with padding heads).
    let q_bhsd = randn(&[b, h, s, d], 31, DType::F16)?;
    let q = q_bhsd.transpose(1, 2)?;
    assert!(!q.is_contiguous());
    let fused = randn(&[b, s, 2 * hk + 2, d], 32, DType::F16)?;
    let k = fused.narrow(2, 1, hk)?;
    let v = fused.narrow(2, 1 + hk, hk)?;
    assert!(!k.is_contiguous() && !v.is_contiguous());
    let out = check(&op, &q, &k, &v, &Mods::default(), "strided")?;
    let dense = op.forward(&q.contiguous()?, &k.contiguous()?, &v.contiguous()?)?;
    assert_eq!(
        max_diff(&out, &dense)?,
        0.0,
        "strided and contiguous runs differ"
    );
    // A contiguous view with an offset (a narrowed batch).
    let (q1, k1, v1) = (
        q.contiguous()?.narrow(0, 1, 1)?,
        k.contiguous()?.narrow(0, 1, 1)?,
        v.contiguous()?.narrow(0, 1, 1)?,
    );
    let one = op.forward(&q1, &k1, &v1)?;
    assert_eq!(max_diff(&one, &dense.narrow(0, 1, 1)?)?, 0.0, "offset view");
    Ok(())
}

const DILATED: &str =
    r#"{"causal": true, "components": [{"dilated": {"stride": 3}}, {"sinks": {"count": 2}}]}"#;

#[test]
fn varlen_matches_each_sequence_alone() -> R {
    // Three sequences: a prefill chunk over a longer history, a short prompt, one decode row.
    let lens = [(20usize, 50usize), (37, 37), (1, 29)];
    let (h, hk, d) = (4, 1, 64);
    let (tq, tk) = lens.iter().fold((0, 0), |(a, b), &(q, k)| (a + q, b + k));
    let q = randn(&[tq, h, d], 41, DType::F16)?;
    let k = randn(&[tk, hk, d], 42, DType::F16)?;
    let v = randn(&[tk, hk, d], 43, DType::F16)?;
    let mut cu_q = vec![0u32];
    let mut cu_k = vec![0u32];
    for &(a, b) in &lens {
        cu_q.push(cu_q.last().unwrap() + a as u32);
        cu_k.push(cu_k.last().unwrap() + b as u32);
    }
    let cu_q = Tensor::new(cu_q.as_slice(), &Device::Cpu)?;
    let cu_k = Tensor::new(cu_k.as_slice(), &Device::Cpu)?;
    let scale = 0.125;
    let window = window_pattern(Some(15), Some(0)).unwrap();
    let outs = [
        (
            "causal",
            flash_attn_varlen(&q, &k, &v, &cu_q, &cu_k, 37, 50, scale, true)?,
            Pattern::causal(),
        ),
        (
            "window",
            flash_attn_varlen_windowed(&q, &k, &v, &cu_q, &cu_k, 37, 50, scale, Some(15), Some(0))?,
            window,
        ),
        (
            "dilated (beyond flash-attn)",
            SparseAttn::new(Pattern::from_json(DILATED).unwrap())
                .with_scale(scale)
                .with_varlen(Varlen {
                    cu_seqlens_q: cu_q.to_dtype(DType::I64)?,
                    cu_seqlens_k: cu_k.clone(),
                    max_seqlen_q: 40,
                    max_seqlen_k: 64,
                })
                .forward(&q, &k, &v)?,
            Pattern::from_json(DILATED).unwrap(),
        ),
    ];
    for (name, out, pat) in outs {
        assert_eq!(out.dims(), &[tq, h, d]);
        let (mut oq, mut ok) = (0, 0);
        for &(a, b) in &lens {
            let q1 = q.narrow(0, oq, a)?.unsqueeze(0)?;
            let k1 = k.narrow(0, ok, b)?.unsqueeze(0)?;
            let v1 = v.narrow(0, ok, b)?.unsqueeze(0)?;
            let m = Mods {
                scale: Some(scale),
                ..Mods::default()
            };
            let want = reference(&q1, &k1, &v1, &pat.clone().into(), &m)?;
            let got = out.narrow(0, oq, a)?.unsqueeze(0)?;
            let diff = max_diff(&got, &want)?;
            assert!(
                diff <= tol(DType::F16),
                "{name} sequence ({a}, {b}): {diff}"
            );
            oq += a;
            ok += b;
        }
    }
    Ok(())
}

#[test]
fn flash_attn_functions_are_drop_in() -> R {
    let (q, k, v) = qkv(1, 40, 72, 4, 2, 64, DType::F16, 51)?;
    let m = Mods {
        scale: Some(0.1),
        ..Mods::default()
    };
    let cases: Vec<(&str, Tensor, Pattern, Mods)> = vec![
        (
            "flash_attn causal",
            flash_attn(&q, &k, &v, 0.1, true)?,
            Pattern::causal(),
            m.clone(),
        ),
        (
            "flash_attn dense",
            flash_attn(&q, &k, &v, 0.1, false)?,
            Pattern::dense(),
            m.clone(),
        ),
        (
            "windowed (10, 0)",
            flash_attn_windowed(&q, &k, &v, 0.1, Some(10), Some(0))?,
            Pattern::causal_window(11).unwrap(),
            m.clone(),
        ),
        (
            "windowed (6, 5)",
            flash_attn_windowed(&q, &k, &v, 0.1, Some(6), Some(5))?,
            window_pattern(Some(6), Some(5)).unwrap(),
            m.clone(),
        ),
        (
            "windowed (None, 3)",
            flash_attn_windowed(&q, &k, &v, 0.1, None, Some(3))?,
            window_pattern(None, Some(3)).unwrap(),
            m.clone(),
        ),
    ];
    let slopes = sparse_attn::shape::alibi_slopes(4);
    let slopes_t = Tensor::new(slopes.as_slice(), &Device::Cpu)?;
    let am = Mods {
        slopes: Some(slopes.clone()),
        ..m.clone()
    };
    let mut cases = cases;
    cases.push((
        "alibi causal",
        flash_attn_alibi(&q, &k, &v, &slopes_t, 0.1, true)?,
        Pattern::causal(),
        am.clone(),
    ));
    cases.push((
        "alibi windowed softcap",
        flash_attn_alibi_windowed_softcap(
            &q,
            &k,
            &v,
            Some(&slopes_t),
            0.1,
            Some(12),
            Some(0),
            2.0,
        )?,
        Pattern::causal_window(13).unwrap(),
        Mods {
            softcap: Some(2.0),
            ..am
        },
    ));
    for (name, out, pat, m) in cases {
        let want = reference(&q, &k, &v, &pat.into(), &m)?;
        let diff = max_diff(&out, &want)?;
        assert!(diff <= tol(DType::F16), "{name}: {diff}");
    }
    // The windows map onto the pattern language as FlashAttention defines them.
    assert_eq!(window_pattern(None, None).unwrap(), Pattern::dense());
    assert_eq!(window_pattern(None, Some(0)).unwrap(), Pattern::causal());
    Ok(())
}

/// The error message of a failed call.
fn err<T: std::fmt::Debug>(r: R<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn bad_inputs_are_errors_naming_them() -> R {
    let op = SparseAttn::new(Pattern::causal());
    let (q, k, v) = qkv(1, 8, 8, 2, 1, 64, DType::F16, 61)?;
    let q32 = q.to_dtype(DType::F32)?;
    let e = err(op.forward(&q32, &k, &v));
    assert!(e.contains("F32") && e.contains("f16 or bf16"), "{e}");
    let e = err(op.forward(&q.to_dtype(DType::F64)?, &k, &v));
    assert!(e.contains("F64"), "{e}");
    let e = err(op.forward(&q, &k.to_dtype(DType::BF16)?, &v));
    assert!(e.contains("element type"), "{e}");
    let e = err(op.forward(&q.squeeze(0)?, &k, &v));
    assert!(
        e.contains("rank 3") && e.contains("[batch, seq, heads, head_dim]"),
        "{e}"
    );
    let (q80, k80, v80) = qkv(1, 8, 8, 2, 1, 80, DType::F16, 62)?;
    let e = err(op.forward(&q80, &k80, &v80));
    assert!(e.contains("head_dim 80"), "{e}");
    let (_, k3, v3) = qkv(1, 8, 8, 2, 3, 64, DType::F16, 63)?;
    let e = err(op.forward(&q, &k3, &v3));
    assert!(e.contains("kv"), "{e}");
    let e = err(op.forward(&q, &k, &v.narrow(1, 0, 4)?));
    assert!(e.contains("v [1, 4, 1, 64]") || e.contains("but v"), "{e}");
    // Score vectors of the wrong length.
    let e = err(op
        .clone()
        .with_sink_logits(vec![0.0; 3])
        .forward(&q, &k, &v));
    assert!(e.contains("sink_logits"), "{e}");
    // Varlen: cu_seqlens that do not cover the rows, f32 cu_seqlens, a length above the max.
    let (qv, kv_) = (q.squeeze(0)?, k.squeeze(0)?);
    let vv = v.squeeze(0)?;
    let cu = Tensor::new(&[0u32, 5], &Device::Cpu)?;
    let e = err(flash_attn_varlen(&qv, &kv_, &vv, &cu, &cu, 8, 8, 0.1, true));
    assert!(e.contains("cu_seqlens_q") && e.contains("8 rows"), "{e}");
    let cuf = Tensor::new(&[0f32, 8.0], &Device::Cpu)?;
    let e = err(flash_attn_varlen(
        &qv, &kv_, &vv, &cuf, &cuf, 8, 8, 0.1, true,
    ));
    assert!(e.contains("u32, i32 or i64"), "{e}");
    let cu8 = Tensor::new(&[0u32, 8], &Device::Cpu)?;
    let e = err(flash_attn_varlen(
        &qv, &kv_, &vv, &cu8, &cu8, 4, 8, 0.1, true,
    ));
    assert!(e.contains("max_seqlen_q"), "{e}");
    let e = err(flash_attn_alibi(
        &q,
        &k,
        &v,
        &Tensor::new(&[1u32, 2], &Device::Cpu)?,
        0.1,
        true,
    ));
    assert!(e.contains("alibi_slopes") && e.contains("f32"), "{e}");
    Ok(())
}

/// A two-layer model's cache: a windowed layer (16 most recent keys, a ring of pages) and a
/// global causal layer with sinks-free dense history; two sequences with different prompts.
#[test]
#[allow(clippy::needless_range_loop)]
fn generation_through_the_paged_cache_equals_recomputation() -> R {
    let (h, hk, d, page) = (4, 2, 64, 8);
    let window = Pattern::causal_window(16).unwrap();
    let plan = LayerPlan::from_sets([window.clone(), Pattern::causal()]);
    let config = KvCacheConfig {
        num_layers: 2,
        num_kv_heads: hk,
        head_dim: d,
        dtype: sparse_attn::DType::F16,
        page_size: page,
        max_seq_len: 64,
        max_chunk: 8,
        pool: PoolSize::Sequences(2),
    };
    let mut cache = CandleKvCache::new(config, plan.clone(), h, &Device::Cpu)?;
    assert!(matches!(
        cache.cache().capacity(0).unwrap(),
        LayerCapacity::Windowed { .. }
    ));
    assert_eq!(cache.cache().capacity(1).unwrap(), LayerCapacity::Full);
    let seqs = [cache.add_sequence(), cache.add_sequence()];
    // Per sequence and layer, every token's q, k, v so far ([1, len, heads, d]).
    let mut hist: Vec<Vec<Option<(Tensor, Tensor, Tensor)>>> = vec![vec![None, None]; 2];
    let prompts = [8usize, 5];
    let decode_steps = 40;
    let mut seed = 100;
    for step_i in 0..=decode_steps {
        let news: Vec<usize> = if step_i == 0 {
            prompts.to_vec()
        } else {
            vec![1, 1]
        };
        let step = cache.begin_step(&[(seqs[0], news[0]), (seqs[1], news[1])])?;
        let total: usize = news.iter().sum();
        for layer in 0..2 {
            seed += 3;
            let q = randn(&[total, h, d], seed, DType::F16)?;
            let k = randn(&[total, hk, d], seed + 1, DType::F16)?;
            let v = randn(&[total, hk, d], seed + 2, DType::F16)?;
            let out = cache.append_attend(&step, layer, &q, &k, &v)?;
            assert_eq!(out.dims(), &[total, h, d]);
            let mut at = 0;
            for b in 0..2 {
                let n = news[b];
                let part = |t: &Tensor| t.narrow(0, at, n)?.unsqueeze(0);
                let (qn, kn, vn) = (part(&q)?, part(&k)?, part(&v)?);
                let slot = &mut hist[b][layer];
                let cat = |old: &Tensor, new: &Tensor| Tensor::cat(&[old, new], 1);
                *slot = Some(match slot.take() {
                    None => (qn.clone(), kn, vn),
                    Some((oq, ok, ov)) => (cat(&oq, &qn)?, cat(&ok, &kn)?, cat(&ov, &vn)?),
                });
                let (_, kall, vall) = slot.as_ref().unwrap();
                assert_eq!(kall.dim(1)?, step.seq_len(b));
                // Full recomputation: the new queries against every key so far, with the
                // layer's pattern, by the op (contiguous K/V) and by candle's reference.
                let set: HeadPatterns = plan.layers[layer].patterns().unwrap().clone();
                let full = SparseAttn::new(set.clone()).forward(&qn, kall, vall)?;
                let got = out.narrow(0, at, n)?.unsqueeze(0)?;
                let diff = max_diff(&got, &full)?;
                assert!(
                    diff <= 2e-3,
                    "step {step_i} seq {b} layer {layer}: cache vs op {diff}"
                );
                let want = reference(&qn, kall, vall, &set, &Mods::default())?;
                let diff = max_diff(&got, &want)?;
                assert!(
                    diff <= tol(DType::F16),
                    "step {step_i} seq {b} layer {layer}: {diff}"
                );
                at += n;
            }
        }
    }
    // 48 and 45 tokens: the windowed layer's rings (4 pages of 8 each) wrapped, the global
    // layer holds every page, and the cache holds less than a dense one.
    assert_eq!(cache.cache().seq_len(seqs[0]).unwrap(), 8 + decode_steps);
    let pages = |l| cache.cache().pages_used(l).unwrap();
    assert_eq!((pages(0), pages(1)), (8, 12));
    assert!(cache.bytes_used() < cache.dense_bytes(8 + 5 + 2 * decode_steps));
    Ok(())
}

#[test]
fn cache_rejects_bad_steps_and_leaves_state_unchanged() -> R {
    let plan = LayerPlan::from_sets([Pattern::causal()]);
    let config = KvCacheConfig {
        num_layers: 1,
        num_kv_heads: 1,
        head_dim: 64,
        dtype: sparse_attn::DType::BF16,
        page_size: 8,
        max_seq_len: 16,
        max_chunk: 8,
        pool: PoolSize::Sequences(1),
    };
    let e = err(CandleKvCache::new(
        config.clone(),
        LayerPlan::from_sets([Pattern::dense()]),
        2,
        &Device::Cpu,
    ));
    assert!(e.contains("causal"), "{e}");
    let mut cache = CandleKvCache::new(config, plan, 2, &Device::Cpu)?;
    let s = cache.add_sequence();
    let e = err(cache.begin_step(&[(s, 9)]));
    assert!(e.contains("max_chunk"), "{e}");
    let e = err(cache.begin_step(&[(s, 1), (s, 1)]));
    assert!(e.contains("twice"), "{e}");
    assert_eq!(cache.cache().seq_len(s).unwrap(), 0);
    let step = cache.begin_step(&[(s, 2)])?;
    let q = randn(&[2, 2, 64], 1, DType::BF16)?;
    let kv = randn(&[2, 1, 64], 2, DType::BF16)?;
    let e = err(cache.append_attend(&step, 0, &q.to_dtype(DType::F16)?, &kv, &kv));
    assert!(e.contains("bf16"), "{e}");
    let e = err(cache.append_attend(&step, 0, &q.i(0..1)?, &kv, &kv));
    assert!(e.contains("[2, 2, 64]"), "{e}");
    let e = err(cache.append_attend(&step, 1, &q, &kv, &kv));
    assert!(e.contains("layer 1"), "{e}");
    let out = cache.append_attend(&step, 0, &q, &kv, &kv)?;
    assert_eq!(out.dims(), &[2, 2, 64]);
    Ok(())
}

/// The README's "Use it from candle" example, line for line (the README's block is not a
/// doctest: the root crate's doctests build without candle). The test also checks that the two
/// texts agree, so neither can drift.
#[test]
fn readme_candle_example() -> Result<(), Box<dyn std::error::Error>> {
    // README begin
    use candle_core::{DType, Device, Tensor};
    use sparse_attn::kv_cache::{KvCacheConfig, PoolSize};
    use sparse_attn::pattern::{LayerPlan, Pattern};
    use sparse_attn_candle::{flash_attn, CandleKvCache, SparseAttn};

    let dev = Device::Cpu; // the emulator: exact, slow; Device::new_cuda(0)? with feature `cuda`
    let q = Tensor::randn(0f32, 1.0, (1, 64, 8, 64), &dev)?.to_dtype(DType::BF16)?;
    let k = Tensor::randn(0f32, 1.0, (1, 64, 2, 64), &dev)?.to_dtype(DType::BF16)?;
    let v = Tensor::randn(0f32, 1.0, (1, 64, 2, 64), &dev)?.to_dtype(DType::BF16)?;
    let out = flash_attn(&q, &k, &v, 0.125, true)?; // was candle_flash_attn::flash_attn
    assert_eq!(out.dims(), q.dims());

    // Any pattern of docs/patterns.md (per head if needed) with the model's score settings.
    let streaming = SparseAttn::new(Pattern::streaming(4, 32)?).with_softcap(30.0);
    let out = streaming.forward(&q, &k, &v)?;
    assert_eq!(out.dtype(), DType::BF16);

    // A paged cache for a layer plan (two window layers, one global): rings for the windows.
    let plan = LayerPlan::interleaved(3, Pattern::causal_window(32)?, Pattern::causal(), 2)?;
    let config = KvCacheConfig {
        num_layers: 3,
        num_kv_heads: 2,
        head_dim: 64,
        dtype: sparse_attn::DType::BF16,
        page_size: 16,
        max_seq_len: 256,
        max_chunk: 64,
        pool: PoolSize::Sequences(1),
    };
    let mut cache = CandleKvCache::new(config, plan, 8, &dev)?;
    let seq = cache.add_sequence();
    let step = cache.begin_step(&[(seq, 64)])?; // this step's 64 positions, every layer
    for layer in 0..3 {
        let out = cache.append_attend(&step, layer, &q, &k, &v)?;
        assert_eq!(out.dims(), &[1, 64, 8, 64]);
    }
    // README end
    let strip = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    };
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("// Mirrored by readme_candle_example")
        .expect("README block");
    let block = &readme[start..];
    let block = &block[block.find('\n').unwrap() + 1..block.find("```").unwrap()];
    let me = include_str!("candle_op.rs");
    let (b, e) = (
        me.find("    // README begin\n").unwrap(),
        me.find("    // README end").unwrap(),
    );
    let mine = &me[b + "    // README begin\n".len()..e];
    assert_eq!(
        strip(block),
        strip(mine),
        "README and readme_candle_example differ"
    );
    Ok(())
}

/// A layer of a real config through [`SparseAttn::from_layer`]: Gemma 2's window, softcap and
/// `query_pre_attn_scalar` scale; gpt-oss's window with learnable sink logits (required, and
/// refused on a layer without them). head_dim 256 and 128 on the way.
#[test]
fn from_layer_applies_real_configs() -> Result<(), Box<dyn std::error::Error>> {
    let gemma2 = serde_like(
        r#"{"model_type": "gemma2", "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 256, "sliding_window": 24,
            "query_pre_attn_scalar": 144, "attn_logit_softcapping": 50.0}"#,
    );
    let plan = LayerPlan::from_hf_config(&gemma2)?;
    let (q, k, v) = qkv(1, 40, 40, 4, 2, 256, DType::BF16, 81)?;
    for l in 0..2 {
        let layer = plan.attention(l).unwrap();
        assert_eq!((layer.scale, layer.softcap), (Some(1.0 / 12.0), Some(50.0)));
        let op = SparseAttn::from_layer(layer, 4, None)?;
        let m = Mods {
            scale: layer.scale,
            softcap: layer.softcap,
            ..Mods::default()
        };
        check(&op, &q, &k, &v, &m, &format!("gemma2 layer {l}"))?;
    }
    let gpt_oss = serde_like(
        r#"{"model_type": "gpt_oss", "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 1, "head_dim": 128, "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"]}"#,
    );
    let plan = LayerPlan::from_hf_config(&gpt_oss)?;
    let sinks = vec![1.0f32, -0.5, 0.25, 3.0];
    let (q, k, v) = qkv(1, 30, 45, 4, 1, 128, DType::F16, 82)?;
    for l in 0..2 {
        let layer = plan.attention(l).unwrap();
        assert!(layer.learnable_sinks);
        let e = SparseAttn::from_layer(layer, 4, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("learnable sinks"), "{e}");
        let op = SparseAttn::from_layer(layer, 4, Some(sinks.clone()))?;
        let m = Mods {
            sinks: Some(sinks.clone()),
            ..Mods::default()
        };
        check(&op, &q, &k, &v, &m, &format!("gpt-oss layer {l}"))?;
    }
    let plain = LayerPlan::from_sets([Pattern::causal()]);
    let e = SparseAttn::from_layer(plain.attention(0).unwrap(), 4, Some(sinks)).unwrap_err();
    assert!(e.to_string().contains("no learnable sinks"), "{e}");
    Ok(())
}

fn serde_like(json: &str) -> serde_json::Value {
    serde_json::from_str(json).unwrap()
}

/// The cache with a layer that declares learnable sinks (gpt-oss) and one with ALiBi (BLOOM):
/// each step's output equals the op with the same settings over the whole history.
#[test]
fn cache_layers_with_sink_logits_and_alibi() -> R {
    use sparse_attn::pattern::{AttentionLayer, Layer};
    let (h, hk, d) = (4, 2, 64);
    let mut sinky = AttentionLayer::new(Pattern::causal_window(12).unwrap());
    sinky.learnable_sinks = true;
    let mut alibi = AttentionLayer::new(Pattern::causal());
    alibi.alibi = true;
    let plan = LayerPlan {
        layers: vec![Layer::from(sinky), Layer::from(alibi)],
    };
    let config = KvCacheConfig {
        num_layers: 2,
        num_kv_heads: hk,
        head_dim: d,
        dtype: sparse_attn::DType::F16,
        page_size: 8,
        max_seq_len: 40,
        max_chunk: 6,
        pool: PoolSize::Sequences(1),
    };
    let mut cache = CandleKvCache::new(config, plan, h, &Device::Cpu)?;
    let seq = cache.add_sequence();
    let step = cache.begin_step(&[(seq, 6)])?;
    let qkv0 = qkv(1, 6, 6, h, hk, d, DType::F16, 90)?;
    let e = err(cache.append_attend(&step, 0, &qkv0.0, &qkv0.1, &qkv0.2));
    assert!(e.contains("set_sink_logits"), "{e}");
    let e = err(cache.set_sink_logits(1, vec![0.0; 4]));
    assert!(e.contains("no learnable sinks"), "{e}");
    let sinks = vec![0.5f32, 2.0, -1.0, 0.0];
    cache.set_sink_logits(0, sinks.clone())?;
    let ops = [
        SparseAttn::new(Pattern::causal_window(12).unwrap()).with_sink_logits(sinks),
        SparseAttn::new(Pattern::causal()).with_alibi_slopes(sparse_attn::shape::alibi_slopes(h)),
    ];
    let mut hist: Vec<Option<(Tensor, Tensor)>> = vec![None, None];
    let mut step = Some(step);
    for i in 0..20u64 {
        let n = if i == 0 { 6 } else { 1 };
        let step = match step.take() {
            Some(s) => s,
            None => cache.begin_step(&[(seq, n)])?,
        };
        for (layer, op) in ops.iter().enumerate() {
            let (q, k, v) = qkv(1, n, n, h, hk, d, DType::F16, 200 + 7 * i + layer as u64)?;
            let out = cache.append_attend(&step, layer, &q, &k, &v)?;
            let (ka, va) = match hist[layer].take() {
                None => (k, v),
                Some((ok, ov)) => (Tensor::cat(&[&ok, &k], 1)?, Tensor::cat(&[&ov, &v], 1)?),
            };
            let full = op.forward(&q, &ka, &va)?;
            let diff = max_diff(&out, &full)?;
            assert!(diff <= 2e-3, "step {i} layer {layer}: {diff}");
            hist[layer] = Some((ka, va));
        }
    }
    Ok(())
}

/// Empty sequences: a varlen batch with a sequence of no queries and one of no keys (its rows
/// have out 0), and a uniform batch of no keys at all.
#[test]
fn empty_sequences_give_zero_rows() -> R {
    let (h, d) = (2, 64);
    let lens = [(5usize, 9usize), (0, 7), (3, 0), (4, 4)];
    let (tq, tk) = lens.iter().fold((0, 0), |(a, b), &(q, k)| (a + q, b + k));
    let q = randn(&[tq, h, d], 91, DType::F16)?;
    let k = randn(&[tk, 1, d], 92, DType::F16)?;
    let v = randn(&[tk, 1, d], 93, DType::F16)?;
    let cu = |f: fn(&(usize, usize)) -> usize| -> R<Tensor> {
        let mut c = vec![0u32];
        for l in &lens {
            c.push(c.last().unwrap() + f(l) as u32);
        }
        Tensor::new(c.as_slice(), &Device::Cpu)
    };
    let out = flash_attn_varlen(&q, &k, &v, &cu(|l| l.0)?, &cu(|l| l.1)?, 5, 9, 0.125, true)?;
    assert_eq!(out.dims(), &[tq, h, d]);
    let rows = out.narrow(0, 5, 3)?; // the sequence without keys
    assert_eq!(
        rows.abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?,
        0.0
    );
    let want = reference(
        &q.narrow(0, 8, 4)?.unsqueeze(0)?,
        &k.narrow(0, 16, 4)?.unsqueeze(0)?,
        &v.narrow(0, 16, 4)?.unsqueeze(0)?,
        &Pattern::causal().into(),
        &Mods {
            scale: Some(0.125),
            ..Mods::default()
        },
    )?;
    assert!(max_diff(&out.narrow(0, 8, 4)?.unsqueeze(0)?, &want)? <= tol(DType::F16));
    let (q, k, v) = qkv(1, 4, 0, h, 1, d, DType::F16, 94)?;
    let out = SparseAttn::new(Pattern::dense()).forward(&q, &k, &v)?;
    assert_eq!(
        out.abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?,
        0.0
    );
    Ok(())
}

/// The op on candle's CUDA tensors against the same op on CPU (the emulator). Skips without a
/// GPU unless `SPARSE_ATTN_REQUIRE_GPU=1`.
#[cfg(feature = "cuda")]
#[test]
fn cuda_tensors_match_the_emulator() -> R {
    let require = std::env::var("SPARSE_ATTN_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let build = sparse_attn::backend::cuda_build();
    let dev = match (build.built, Device::new_cuda(0)) {
        (true, Ok(dev)) => dev,
        (built, r) => {
            let why = if built {
                format!("{:?}", r.err())
            } else {
                build.skip_reason.to_string()
            };
            assert!(!require, "SPARSE_ATTN_REQUIRE_GPU=1 but {why}");
            eprintln!("cuda_tensors_match_the_emulator: skipped, no GPU: {why}");
            return Ok(());
        }
    };
    let (q, k, v) = qkv(2, 96, 96, 8, 2, 128, DType::BF16, 71)?;
    let op = SparseAttn::new(Pattern::streaming(4, 32).unwrap());
    let cpu = op.forward(&q, &k, &v)?;
    let (qd, kd, vd) = (q.to_device(&dev)?, k.to_device(&dev)?, v.to_device(&dev)?);
    let gpu = op.forward(&qd, &kd, &vd)?.to_device(&Device::Cpu)?;
    assert!(max_diff(&gpu, &cpu)? <= 1e-2);
    // Strided on the device (copied there, not through the host).
    let gpu_t = op.forward(
        &qd.transpose(1, 2)?.contiguous()?.transpose(1, 2)?,
        &kd,
        &vd,
    )?;
    assert_eq!(max_diff(&gpu_t.to_device(&Device::Cpu)?, &gpu)?, 0.0);
    // Device mix is named.
    let e = err(op.forward(&qd, &k, &v));
    assert!(e.contains("device"), "{e}");
    Ok(())
}
