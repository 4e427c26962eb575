//! The `sparse-attn` binary end to end: every kind of bad input exits non-zero with one line
//! naming the problem and leaves `--output` untouched; good input gives the documented files,
//! matching the f64 reference (on the emulator, so this runs on any machine).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{random_tensor, widen, Rng};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sparse_attn::reference::{self, RefInputs};
use sparse_attn::{AttnProblem, Element, SeqLens};

const BIN: &str = env!("CARGO_BIN_EXE_sparse-attn");

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sparse-attn-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One input tensor for a safetensors file.
struct T {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn tensor<E: Element>(name: &'static str, shape: &[usize], x: &[E], dtype: Dtype) -> T {
    let bytes = x
        .iter()
        .flat_map(|v| {
            let bits: u16 = match dtype {
                Dtype::BF16 => half::bf16::from_f32(v.to_f32()).to_bits(),
                _ => half::f16::from_f32(v.to_f32()).to_bits(),
            };
            bits.to_le_bytes()
        })
        .collect();
    T {
        name,
        dtype,
        shape: shape.to_vec(),
        bytes,
    }
}

fn zeros(name: &'static str, shape: &[usize], dtype: Dtype) -> T {
    let n: usize = shape.iter().product();
    T {
        name,
        dtype,
        shape: shape.to_vec(),
        bytes: vec![0; n * dtype.bitsize() / 8],
    }
}

fn safetensors_bytes(tensors: &[T]) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name,
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize(views, None).unwrap()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const DENSE: &str = r#"{"causal": false, "components": []}"#;

/// Runs `run` on the given input tensors and pattern, expecting failure with one stderr line
/// containing `needle`; checks a pre-existing output file is left as it was.
fn expect_failure(tensors: &[T], pattern: &str, extra: &[&str], needle: &str) {
    let dir = TempDir::new();
    let input = dir.write("in.safetensors", safetensors_bytes(tensors));
    let pat = dir.write("p.json", pattern);
    let output = dir.write("out.safetensors", b"previous contents");
    let mask = dir.path("mask.safetensors");
    let mut args = vec![
        "run",
        "--pattern",
        s(&pat),
        "--input",
        s(&input),
        "--output",
        s(&output),
        "--mask-out",
        s(&mask),
        "--backend",
        "emulator",
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected failure for `{needle}`, got success"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "expected one line on stderr, got:\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "stderr does not mention `{needle}`: {stderr}"
    );
    assert_eq!(std::fs::read(&output).unwrap(), b"previous contents");
    assert!(!mask.exists(), "mask written despite the failure");
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
}

fn qkv(dtype: Dtype, q: [usize; 4], kv: [usize; 4]) -> Vec<T> {
    vec![
        zeros("q", &q, dtype),
        zeros("k", &kv, dtype),
        zeros("v", &kv, dtype),
    ]
}

#[test]
fn missing_tensor() {
    let mut t = qkv(Dtype::F16, [1, 8, 2, 64], [1, 8, 2, 64]);
    t.pop();
    expect_failure(&t, DENSE, &[], "missing tensor `v`");
}

#[test]
fn wrong_rank() {
    let t = vec![
        zeros("q", &[8, 2, 64], Dtype::F16),
        zeros("k", &[1, 8, 2, 64], Dtype::F16),
        zeros("v", &[1, 8, 2, 64], Dtype::F16),
    ];
    expect_failure(&t, DENSE, &[], "tensor `q` has rank 3");
}

#[test]
fn mismatched_dtypes() {
    let t = vec![
        zeros("q", &[1, 8, 2, 64], Dtype::F16),
        zeros("k", &[1, 8, 2, 64], Dtype::BF16),
        zeros("v", &[1, 8, 2, 64], Dtype::BF16),
    ];
    expect_failure(&t, DENSE, &[], "dtype mismatch");
}

#[test]
fn unsupported_dtype() {
    let t = qkv(Dtype::F32, [1, 8, 2, 64], [1, 8, 2, 64]);
    expect_failure(&t, DENSE, &[], "expected F16 or BF16");
}

#[test]
fn heads_that_do_not_divide() {
    let t = qkv(Dtype::BF16, [1, 8, 3, 64], [1, 8, 2, 64]);
    expect_failure(&t, DENSE, &[], "must be a multiple of num_kv_heads");
}

#[test]
fn unsupported_head_dim() {
    let t = qkv(Dtype::F16, [1, 8, 2, 96], [1, 8, 2, 96]);
    expect_failure(&t, DENSE, &[], "head_dim 96");
}

#[test]
fn mismatched_k_and_v() {
    let t = vec![
        zeros("q", &[1, 8, 2, 64], Dtype::F16),
        zeros("k", &[1, 8, 2, 64], Dtype::F16),
        zeros("v", &[1, 9, 2, 64], Dtype::F16),
    ];
    expect_failure(&t, DENSE, &[], "k has shape");
}

#[test]
fn mismatched_batch_and_head_dim() {
    let t = qkv(Dtype::F16, [2, 8, 2, 64], [1, 8, 2, 64]);
    expect_failure(&t, DENSE, &[], "batch mismatch");
    let t = qkv(Dtype::F16, [1, 8, 2, 64], [1, 8, 2, 128]);
    expect_failure(&t, DENSE, &[], "head_dim mismatch");
}

#[test]
fn not_a_safetensors_file() {
    let dir = TempDir::new();
    let input = dir.write("in.safetensors", b"definitely not safetensors");
    let pat = dir.write("p.json", DENSE);
    let out = dir.path("out.safetensors");
    let o = run(&[
        "run",
        "--pattern",
        s(&pat),
        "--input",
        s(&input),
        "--output",
        s(&out),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a valid safetensors file"));
    assert!(!out.exists());
}

#[test]
fn missing_input_file() {
    let dir = TempDir::new();
    let pat = dir.write("p.json", DENSE);
    let out = dir.path("out.safetensors");
    let o = run(&[
        "run",
        "--pattern",
        s(&pat),
        "--input",
        s(&dir.path("nope.safetensors")),
        "--output",
        s(&out),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));
    assert!(!out.exists());
}

#[test]
fn malformed_pattern_json() {
    let t = qkv(Dtype::F16, [1, 8, 2, 64], [1, 8, 2, 64]);
    expect_failure(
        &t,
        r#"{"causal": true, "components": ["#,
        &[],
        "malformed JSON",
    );
    expect_failure(&t, r#"{"causal": 1}"#, &[], "invalid type");
    expect_failure(&t, r#"{"components": []}"#, &[], "missing field `causal`");
    expect_failure(
        &t,
        r#"{"causal": false, "components": [{"windowed": {}}]}"#,
        &[],
        "unknown variant `windowed`",
    );
    expect_failure(
        &t,
        r#"{"causal": false, "components": [{"sliding_window": {"size": 4, "left": 2}}]}"#,
        &[],
        "sliding_window takes either",
    );
    expect_failure(&t, r#"{"layers": []}"#, &[], "layer plan");
}

#[test]
fn pattern_that_does_not_fit() {
    let t = qkv(Dtype::F16, [1, 8, 4, 64], [1, 8, 2, 64]);
    let three = r#"{"heads": [{"causal": true}, {"causal": true}, {"causal": true}]}"#;
    expect_failure(&t, three, &[], "has 3 entries but q has 4 heads");
}

#[test]
fn components_not_yet_supported() {
    let t = qkv(Dtype::F16, [1, 8, 2, 64], [1, 8, 2, 64]);
    for (json, name) in [
        (r#"{"sliding_window": {"size": 4}}"#, "sliding_window"),
        (r#"{"sinks": {"count": 4}}"#, "sinks"),
        (r#"{"global": {"tokens": [0]}}"#, "global"),
        (r#"{"dilated": {"stride": 2}}"#, "dilated"),
        (
            r#"{"block_mask": {"block_q": 4, "block_k": 4, "mask": [[1, 1], [0, 1]]}}"#,
            "block_mask",
        ),
        (
            r#"{"bigbird": {"block": 4, "window_blocks": 1, "global_blocks": 1, "random_blocks": 1, "seed": 3}}"#,
            "bigbird",
        ),
    ] {
        let pattern = format!(r#"{{"causal": true, "components": [{{"dense": {{}}}}, {json}]}}"#);
        expect_failure(&t, &pattern, &[], &format!("not yet supported: {name}"));
    }
}

#[test]
fn bad_scale_and_softcap() {
    let t = qkv(Dtype::F16, [1, 8, 2, 64], [1, 8, 2, 64]);
    expect_failure(&t, DENSE, &["--softcap", "-1"], "softcap");
    expect_failure(&t, DENSE, &["--scale", "inf"], "scale");
}

#[test]
fn kernels_report_runs_with_or_without_nvcc() {
    let o = run(&["kernels"]);
    assert!(o.status.success());
    let stdout = String::from_utf8_lossy(&o.stdout);
    if sparse_attn::backend::cuda_build().built {
        assert!(stdout.contains("sa_attn_fwd_f16_hd64"), "{stdout}");
        assert!(stdout.contains("regs"), "{stdout}");
    } else {
        assert!(stdout.contains("CUDA build was skipped"), "{stdout}");
    }
}

/// Reads a safetensors output into (dtype, shape, raw bytes) per tensor name.
fn read_tensor(bytes: &[u8], name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap();
    (t.dtype(), t.shape().to_vec(), t.data().to_vec())
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
}

/// Runs `run` on random inputs and checks out/lse against the f64 reference.
fn happy_path<E: Element>(dtype: Dtype, causal: bool, q_len: usize, kv_len: usize, head_dim: u32) {
    let (batch, heads, kv_heads) = (2, 4, 2);
    let d = head_dim as usize;
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch,
            q_len,
            kv_len,
        },
        heads,
        kv_heads,
        head_dim,
        E::DTYPE,
    )
    .unwrap();
    let mut rng = Rng::new(common::base_seed());
    let q: Vec<E> = random_tensor(&mut rng, problem.q_elems(), 1.0);
    let k: Vec<E> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
    let v: Vec<E> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
    let dir = TempDir::new();
    let input = dir.write(
        "in.safetensors",
        safetensors_bytes(&[
            tensor("q", &[batch, q_len, heads, d], &q, dtype),
            tensor("k", &[batch, kv_len, kv_heads, d], &k, dtype),
            tensor("v", &[batch, kv_len, kv_heads, d], &v, dtype),
        ]),
    );
    let pattern = if causal {
        // A head pattern set whose entries are all the same pattern.
        r#"{"heads": [{"causal": true, "components": [{"dense": {}}]}, {"causal": true},
                      {"causal": true}, {"causal": true, "components": []}]}"#
    } else {
        DENSE
    };
    let pat = dir.write("p.json", pattern);
    let output = dir.path("out.safetensors");
    let mask_path = dir.path("mask.safetensors");
    let o = run(&[
        "run",
        "--pattern",
        s(&pat),
        "--input",
        s(&input),
        "--output",
        s(&output),
        "--mask-out",
        s(&mask_path),
        "--backend",
        "emulator",
    ]);
    assert!(
        o.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let bytes = std::fs::read(&output).unwrap();
    let (out_dtype, out_shape, out_bytes) = read_tensor(&bytes, "out");
    assert_eq!(out_dtype, dtype);
    assert_eq!(out_shape, vec![batch, q_len, heads, d]);
    let (lse_dtype, lse_shape, lse_bytes) = read_tensor(&bytes, "lse");
    assert_eq!(lse_dtype, Dtype::F32);
    assert_eq!(lse_shape, vec![batch, heads, q_len]);
    let out: Vec<f32> = words(&out_bytes)
        .map(|w| match dtype {
            Dtype::BF16 => bf16::from_bits(w).to_f32(),
            _ => f16::from_bits(w).to_f32(),
        })
        .collect();
    let lse: Vec<f32> = lse_bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();

    let (qf, kf, vf) = (widen(&q), widen(&k), widen(&v));
    let want = reference::attention(
        &problem,
        &RefInputs {
            q: &qf,
            k: &kf,
            v: &vf,
            scale: 1.0 / (head_dim as f32).sqrt(),
            softcap: 0.0,
        },
        |_, _, i, j| !causal || reference::causal_allowed(i, j, q_len, kv_len),
    );
    let max_ref = want.out.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let max_err = out
        .iter()
        .zip(&want.out)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
    assert!(
        max_err <= 1e-2 * max_ref,
        "out error {max_err:.3e} vs max |out| {max_ref:.3e}"
    );
    for (&g, &w) in lse.iter().zip(&want.lse) {
        if w == f64::NEG_INFINITY {
            assert_eq!(g, f32::NEG_INFINITY);
        } else {
            assert!(
                (g as f64 - w).abs() <= 1e-2 * w.abs().max(1.0),
                "lse {g} vs {w}"
            );
        }
    }

    let mask_bytes = std::fs::read(&mask_path).unwrap();
    let (mask_dtype, mask_shape, mask) = read_tensor(&mask_bytes, "mask");
    assert_eq!(mask_dtype, Dtype::U8);
    assert_eq!(mask_shape, vec![heads, q_len, kv_len]);
    for h in 0..heads {
        for i in 0..q_len {
            for j in 0..kv_len {
                let allowed = !causal || reference::causal_allowed(i, j, q_len, kv_len);
                assert_eq!(mask[(h * q_len + i) * kv_len + j], allowed as u8);
            }
        }
    }
}

#[test]
fn run_dense_f16_matches_reference() {
    happy_path::<f16>(Dtype::F16, false, 70, 70, 64);
}

#[test]
fn run_causal_bf16_matches_reference() {
    happy_path::<bf16>(Dtype::BF16, true, 40, 96, 128);
}

#[test]
fn run_causal_f16_more_queries_than_keys() {
    // The first rows see no key: out 0, lse -inf.
    happy_path::<f16>(Dtype::F16, true, 80, 50, 128);
}

#[test]
fn demo_runs_on_the_emulator() {
    let o = run(&[
        "demo",
        "--backend",
        "emulator",
        "--seq-len",
        "130",
        "--seed",
        "7",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "demo failed: {stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("seed 7"), "{stdout}");
    assert!(stdout.contains("causal"), "{stdout}");
    assert!(stdout.contains("OK"), "{stdout}");
}
