//! `sparse-attn decode` end to end: its output equals `sparse-attn run` over all T tokens with
//! the same pattern, it prints the cache's pages and bytes, and bad input gives one line on
//! stderr, exit status 1, and no output file.

mod common;

use common::cli::{random_qkv, read_output, safetensors_bytes, Fixture};
use common::{assert_lse_close, base_seed, max_abs, max_abs_diff};
use safetensors::tensor::Dtype;

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
    let [b, t, _, d] = shape;
    let input = random_qkv(dtype, shape, [b, t, kv_heads, d], base_seed());
    let f = Fixture::new(&safetensors_bytes(&input), pattern);
    let (dec, full) = (f.dir.path("dec.safetensors"), f.dir.path("run.safetensors"));
    let stdout = f.succeed("decode", &dec, extra);
    f.succeed("run", &full, &[]);
    let (d, r) = (read_output(&dec, dtype), read_output(&full, dtype));
    assert_eq!(d.out_shape, shape.to_vec());
    assert_eq!((&d.out_shape, &d.lse_shape), (&r.out_shape, &r.lse_shape));
    let (err, max_ref) = (max_abs_diff(&d.out, &r.out), max_abs(&r.out));
    let tol = if dtype == Dtype::BF16 { 1e-2 } else { 4e-3 };
    assert!(
        err <= tol * max_ref,
        "{pattern}: decode vs run: {err} > {tol} * {max_ref}"
    );
    assert_lse_close(&format!("{pattern}: decode vs run"), &d.lse, &r.lse, 1e-3);
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
    let input = safetensors_bytes(&random_qkv(Dtype::F16, q, kv, 1));
    Fixture::new(&input, pattern).expect_failure("decode", extra, needle);
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
