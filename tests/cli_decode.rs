//! `sparse-attn decode` end to end: its output equals `sparse-attn run` over all T tokens with
//! the same pattern, it prints the cache's pages and bytes, and bad input gives one line on
//! stderr, exit status 1, and no output file.

mod common;

use common::tempdir::TempDir;

use std::path::Path;
use std::process::{Command, Output};

use common::{base_seed, random_tensor, Rng};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

const BIN: &str = env!("CARGO_BIN_EXE_sparse-attn");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn bin(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// q `[b, tq, h, d]`, k and v `[b, tk, hk, d]` of random values as a safetensors file.
fn input_file(dtype: Dtype, q: [usize; 4], kv: [usize; 4], seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut tensor = |shape: [usize; 4], amp: f32| -> Vec<u8> {
        let n = shape.iter().product();
        match dtype {
            Dtype::BF16 => random_tensor::<bf16>(&mut rng, n, amp)
                .iter()
                .flat_map(|x| x.to_bits().to_le_bytes())
                .collect(),
            _ => random_tensor::<f16>(&mut rng, n, amp)
                .iter()
                .flat_map(|x| x.to_bits().to_le_bytes())
                .collect(),
        }
    };
    let data = [tensor(q, 2.0), tensor(kv, 2.0), tensor(kv, 1.0)];
    let views: Vec<(&str, TensorView<'_>)> = ["q", "k", "v"]
        .iter()
        .zip([q, kv, kv])
        .zip(&data)
        .map(|((&name, shape), bytes)| {
            (name, TensorView::new(dtype, shape.to_vec(), bytes).unwrap())
        })
        .collect();
    safetensors::tensor::serialize(views, None).unwrap()
}

/// `out` widened to f32 and `lse`, with their shapes.
fn read_out(path: &Path, dtype: Dtype) -> (Vec<usize>, Vec<f32>, Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let out = st.tensor("out").unwrap();
    assert_eq!(out.dtype(), dtype);
    let o: Vec<f32> = out
        .data()
        .chunks_exact(2)
        .map(|c| {
            let w = u16::from_le_bytes([c[0], c[1]]);
            match dtype {
                Dtype::BF16 => bf16::from_bits(w).to_f32(),
                _ => f16::from_bits(w).to_f32(),
            }
        })
        .collect();
    let lse = st.tensor("lse").unwrap();
    assert_eq!(lse.dtype(), Dtype::F32);
    let l: Vec<f32> = lse
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (out.shape().to_vec(), o, lse.shape().to_vec(), l)
}

/// The number printed before `label` on the `kv cache:` line.
fn number_before(stdout: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("kv cache:"))
        .unwrap_or_else(|| panic!("no `kv cache:` line in {stdout}"));
    let at = line
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in {line}"));
    line[..at]
        .split_whitespace()
        .last()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number before `{label}` in {line}"))
}

/// Runs `decode` and `run` on the same random input and pattern; checks the outputs agree and
/// the printed accounting. Returns (pages used, bytes used, dense bytes).
fn decode_vs_run(
    dtype: Dtype,
    pattern: &str,
    shape: [usize; 4],
    kv_heads: usize,
    extra: &[&str],
) -> (u64, u64, u64) {
    let dir = TempDir::new();
    let [b, t, _, d] = shape;
    let input = dir.write(
        "in.safetensors",
        input_file(dtype, shape, [b, t, kv_heads, d], base_seed()),
    );
    let pat = dir.write("p.json", pattern);
    let (dec, full) = (dir.path("dec.safetensors"), dir.path("run.safetensors"));
    let mut args = vec![
        "decode",
        "--pattern",
        s(&pat),
        "--input",
        s(&input),
        "--output",
        s(&dec),
        "--backend",
        "emulator",
    ];
    args.extend_from_slice(extra);
    let o = bin(&args);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "decode failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = bin(&[
        "run",
        "--pattern",
        s(&pat),
        "--input",
        s(&input),
        "--output",
        s(&full),
        "--backend",
        "emulator",
    ]);
    assert!(
        o.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (ds, dout, dls, dlse) = read_out(&dec, dtype);
    let (rs, rout, rls, rlse) = read_out(&full, dtype);
    assert_eq!(ds, shape.to_vec());
    assert_eq!((&ds, &dls), (&rs, &rls));
    let max_ref = rout.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let err = dout
        .iter()
        .zip(&rout)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    let tol = if dtype == Dtype::BF16 { 1e-2 } else { 4e-3 };
    assert!(
        err <= tol * max_ref,
        "{pattern}: decode vs run: {err} > {tol} * {max_ref}"
    );
    for (i, (a, b)) in dlse.iter().zip(&rlse).enumerate() {
        if *b == f32::NEG_INFINITY {
            assert_eq!(a, b, "lse[{i}]");
        } else {
            assert!(
                (a - b).abs() <= 1e-3 * b.abs().max(1.0),
                "{pattern}: lse[{i}] {a} vs {b}"
            );
        }
    }
    (
        number_before(&stdout, "pages used"),
        number_before(&stdout, "bytes used"),
        number_before(&stdout, "bytes ("),
    )
}

#[test]
fn decode_matches_run_streaming() {
    let pattern = r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 32}}]}"#;
    let (pages, bytes, dense) = decode_vs_run(
        Dtype::F16,
        pattern,
        [1, 200, 4, 64],
        2,
        &["--prefill", "50", "--page-size", "16", "--chunk", "17"],
    );
    // One sink page and a ring of ceil((31 + 17 - 1) / 16) + 1 = 4 pages.
    assert_eq!(pages, 5);
    assert_eq!(bytes, 5 * 2 * 2 * 16 * 64 * 2);
    assert_eq!(dense, 2 * 200 * 2 * 64 * 2);
}

#[test]
fn decode_matches_run_dense_causal_bf16_batch_two() {
    let (pages, bytes, dense) = decode_vs_run(
        Dtype::BF16,
        r#"{"causal": true}"#,
        [2, 70, 4, 64],
        1,
        &["--prefill", "30", "--page-size", "8"],
    );
    // Every page kept: ceil(70 / 8) = 9 per sequence.
    assert_eq!(pages, 18);
    assert_eq!(bytes, 18 * 2 * 8 * 64 * 2);
    assert_eq!(dense, 2 * 2 * 70 * 64 * 2);
}

#[test]
fn decode_matches_run_per_head_windows() {
    let pattern = r#"{"heads": [
        {"causal": true, "components": [{"sliding_window": {"size": 8}}]},
        {"causal": true, "components": [{"sliding_window": {"size": 24}}]}]}"#;
    decode_vs_run(
        Dtype::F16,
        pattern,
        [1, 90, 2, 128],
        2,
        &["--prefill", "0", "--page-size", "32"],
    );
}

/// `decode` with these arguments fails with one line containing `needle`, exit status 1, and
/// leaves an existing output file as it was.
fn expect_failure(q: [usize; 4], kv: [usize; 4], pattern: &str, extra: &[&str], needle: &str) {
    let dir = TempDir::new();
    let input = dir.write("in.safetensors", input_file(Dtype::F16, q, kv, 1));
    let pat = dir.write("p.json", pattern);
    let output = dir.write("out.safetensors", b"previous contents");
    let mut args = vec![
        "decode",
        "--pattern",
        s(&pat),
        "--input",
        s(&input),
        "--output",
        s(&output),
    ];
    args.extend_from_slice(extra);
    let o = bin(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "`{needle}`: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(needle), "no `{needle}` in: {stderr}");
    assert_eq!(std::fs::read(&output).unwrap(), b"previous contents");
    let names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "stray files: {names:?}");
}

#[test]
fn decode_rejects_bad_input() {
    let causal = r#"{"causal": true}"#;
    let sq = [1, 32, 2, 64];
    let kv = [1, 32, 1, 64];
    let ok = ["--prefill", "8", "--page-size", "16"];
    expect_failure(
        [1, 16, 2, 64],
        kv,
        causal,
        &ok,
        "decode needs q_len == kv_len",
    );
    expect_failure(
        sq,
        kv,
        causal,
        &["--prefill", "33", "--page-size", "16"],
        "--prefill 33 is longer",
    );
    expect_failure(
        sq,
        kv,
        r#"{"causal": false, "components": [{"sliding_window": {"size": 4}}]}"#,
        &ok,
        "causal",
    );
    expect_failure(
        sq,
        kv,
        r#"{"heads": [{"causal": true}, {"causal": false}]}"#,
        &ok,
        "head 1 is not causal",
    );
    for ps in ["12", "4", "512"] {
        expect_failure(
            sq,
            kv,
            causal,
            &["--prefill", "8", "--page-size", ps],
            "--page-size",
        );
    }
    expect_failure(
        sq,
        kv,
        causal,
        &["--prefill", "8", "--page-size", "16", "--chunk", "0"],
        "--chunk",
    );
    // Without a GPU, asking for CUDA is a one-line error (with one, it would run).
    if sparse_attn::backend::Gpu::new(0).is_err() {
        let why = if sparse_attn::backend::cuda_build().built {
            "no CUDA device"
        } else {
            "GPU kernels not built"
        };
        expect_failure(
            sq,
            kv,
            causal,
            &["--prefill", "8", "--page-size", "16", "--backend", "cuda"],
            why,
        );
    }
    expect_failure(sq, [1, 32, 3, 64], causal, &ok, "must be a multiple");
}
