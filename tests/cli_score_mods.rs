//! `run` and `decode` with learnable sink logits and ALiBi: the optional `sinks` and
//! `alibi_slopes` tensors of the input file, and `--model config.json --layer L`, which applies
//! a layer's pattern (window), scale, softcap, sink logits and ALiBi (the standard slopes
//! unless the file gives its own); outputs against the f64 reference; every bad input exits 1
//! (command-line misuse 2) with one line and writes nothing.

mod common;

use std::path::{Path, PathBuf};

use common::cli::{
    assert_fails, assert_success, bin, read_output, s, safetensors_bytes, tensor, Tensor,
};
use common::tempdir::TempDir;
use common::{assert_lse_close, max_abs, max_abs_diff, random_qkv, reference_for, Rng};
use half::{bf16, f16};
use safetensors::tensor::Dtype;
use sparse_attn::pattern::HeadPatterns;
use sparse_attn::shape::alibi_slopes;
use sparse_attn::{AttnOptions, AttnPlan, AttnProblem, Element, SeqLens};

const CAUSAL: &str = r#"{"causal": true, "components": []}"#;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// An F32 tensor.
fn f32_tensor(name: &'static str, shape: &[usize], x: &[f32]) -> Tensor {
    Tensor {
        name,
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// The shapes of one case: `[batch, q_len, heads, head_dim]` and the kv side.
#[derive(Clone, Copy)]
struct Shape {
    batch: usize,
    q_len: usize,
    kv_len: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// Random q, k, v for `sh` in `E`'s dtype, as typed values and as safetensors tensors.
fn inputs<E: Element>(sh: Shape, seed: u64) -> (AttnProblem, [Vec<E>; 3], Vec<Tensor>) {
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: sh.batch,
            q_len: sh.q_len,
            kv_len: sh.kv_len,
        },
        sh.heads,
        sh.kv_heads,
        sh.head_dim as u32,
        E::DTYPE,
    )
    .unwrap();
    let mut rng = Rng::new(seed);
    let (q, k, v) = random_qkv::<E>(&mut rng, &problem, 1.0, 1.0);
    let dtype = match E::DTYPE {
        sparse_attn::DType::F16 => Dtype::F16,
        sparse_attn::DType::BF16 => Dtype::BF16,
    };
    let (qs, kvs) = (
        [sh.batch, sh.q_len, sh.heads, sh.head_dim],
        [sh.batch, sh.kv_len, sh.kv_heads, sh.head_dim],
    );
    let tensors = vec![
        tensor("q", &qs, &q, dtype),
        tensor("k", &kvs, &k, dtype),
        tensor("v", &kvs, &v, dtype),
    ];
    (problem, [q, k, v], tensors)
}

/// Runs the binary (on the emulator) with `args` into `out` and checks `out`/`lse` against
/// the reference of `set` under `opts`.
#[allow(clippy::too_many_arguments)]
fn run_and_check<E: Element>(
    what: &str,
    args: &[&str],
    out: &Path,
    problem: &AttnProblem,
    qkv: &[Vec<E>; 3],
    set: &HeadPatterns,
    opts: &AttnOptions,
) -> String {
    let stdout = assert_success(&bin(&[args, &["--backend", "emulator"]].concat()), what);
    let plan = AttnPlan::with_patterns(problem, set, opts).unwrap();
    let want = reference_for(&plan, &qkv[0], &qkv[1], &qkv[2], |b, h, i, j| {
        plan.allowed(b, h, i, j)
    });
    let dtype = match E::DTYPE {
        sparse_attn::DType::F16 => Dtype::F16,
        sparse_attn::DType::BF16 => Dtype::BF16,
    };
    let got = read_output(out, dtype);
    let (err, max_ref) = (max_abs_diff(&got.out, &want.out), max_abs(&want.out));
    assert!(
        err <= 1e-2 * max_ref,
        "{what}: out error {err:.3e} vs max |out| {max_ref:.3e}"
    );
    assert_lse_close(what, &got.lse, &want.lse, 1e-3);
    stdout
}

#[test]
fn run_and_decode_read_sinks_and_alibi_slopes_from_the_input() {
    let sh = Shape {
        batch: 2,
        q_len: 90,
        kv_len: 90,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
    };
    let (problem, qkv, mut tensors) = inputs::<f16>(sh, common::base_seed());
    let sinks = vec![0.5, -1.0, 2.5, 0.0];
    let slopes = vec![0.5, 0.1, 0.02, 0.0];
    tensors.push(f32_tensor("sinks", &[4], &sinks));
    tensors.push(f32_tensor("alibi_slopes", &[4], &slopes));
    let dir = TempDir::new();
    let input = dir.write("in.safetensors", safetensors_bytes(&tensors));
    let window = r#"{"causal": true, "components": [{"sinks": {"count": 2}}, {"sliding_window": {"size": 30}}]}"#;
    let pattern = dir.write("p.json", window);
    let set = HeadPatterns::from_json(window).unwrap();
    let opts = AttnOptions {
        sink_logits: Some(sinks),
        alibi_slopes: Some(slopes),
        ..Default::default()
    };
    let (run_out, dec_out) = (dir.path("run.safetensors"), dir.path("dec.safetensors"));
    let common = ["--pattern", s(&pattern), "--input", s(&input)];
    let stdout = run_and_check(
        "run",
        &[&["run"], &common[..], &["--output", s(&run_out)]].concat(),
        &run_out,
        &problem,
        &qkv,
        &set,
        &opts,
    );
    assert!(stdout.contains("sink logits, ALiBi"), "{stdout}");
    let decode = [
        &["decode"],
        &common[..],
        &[
            "--output",
            s(&dec_out),
            "--prefill",
            "40",
            "--page-size",
            "8",
        ],
    ]
    .concat();
    run_and_check("decode", &decode, &dec_out, &problem, &qkv, &set, &opts);
}

/// A gemma2-style config of 4 heads (2 kv heads) of head_dim 64: window 24 on even layers,
/// scale 1/sqrt(32), softcap 10.
const SMALL_GEMMA2: &str = r#"{"model_type": "gemma2", "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 64, "sliding_window": 24, "query_pre_attn_scalar": 32,
    "attn_logit_softcapping": 10.0}"#;

#[test]
fn model_layers_apply_their_window_scale_and_softcap() {
    let sh = Shape {
        batch: 1,
        q_len: 100,
        kv_len: 100,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
    };
    let (problem, qkv, tensors) = inputs::<bf16>(sh, common::base_seed());
    let dir = TempDir::new();
    let input = dir.write("in.safetensors", safetensors_bytes(&tensors));
    let cfg = dir.write("config.json", SMALL_GEMMA2);
    let scaled = AttnOptions {
        scale: Some((1.0 / 32f64.sqrt()) as f32),
        softcap: Some(10.0),
        ..Default::default()
    };
    for (layer, set) in [
        (
            "0",
            HeadPatterns::from_json(
                r#"{"causal": true, "components": [{"sliding_window": {"size": 24}}]}"#,
            )
            .unwrap(),
        ),
        ("1", HeadPatterns::from_json(CAUSAL).unwrap()),
    ] {
        for cmd in ["run", "decode"] {
            let out = dir.path(&format!("{cmd}{layer}.safetensors"));
            let mut args = vec![
                cmd,
                "--model",
                s(&cfg),
                "--layer",
                layer,
                "--input",
                s(&input),
                "--output",
                s(&out),
            ];
            if cmd == "decode" {
                args.extend(["--prefill", "60", "--page-size", "16", "--chunk", "25"]);
            }
            let what = format!("{cmd} --layer {layer}");
            let stdout = run_and_check(&what, &args, &out, &problem, &qkv, &set, &scaled);
            assert!(
                stdout.contains(&format!("layer {layer} of")) && stdout.contains("softcap 10"),
                "{stdout}"
            );
        }
    }
}

#[test]
fn gemma_2_config_runs_at_head_dim_256() {
    // The public Gemma 2 9B config: 16 heads, 8 kv heads, head_dim 256, scale 1/16,
    // softcap 50, window 4096 on layer 0.
    let sh = Shape {
        batch: 1,
        q_len: 40,
        kv_len: 40,
        heads: 16,
        kv_heads: 8,
        head_dim: 256,
    };
    let (problem, qkv, tensors) = inputs::<bf16>(sh, common::base_seed());
    let dir = TempDir::new();
    let input = dir.write("in.safetensors", safetensors_bytes(&tensors));
    let out = dir.path("out.safetensors");
    let set = HeadPatterns::from_json(
        r#"{"causal": true, "components": [{"sliding_window": {"size": 4096}}]}"#,
    )
    .unwrap();
    let opts = AttnOptions {
        scale: Some(1.0 / 16.0),
        softcap: Some(50.0),
        ..Default::default()
    };
    let cfg = data("gemma-2-9b.json");
    let args = [
        "run",
        "--model",
        s(&cfg),
        "--input",
        s(&input),
        "--output",
        s(&out),
    ];
    run_and_check("gemma-2", &args, &out, &problem, &qkv, &set, &opts);
}

#[test]
fn gpt_oss_config_needs_and_applies_sink_logits() {
    // gpt-oss-20b: 64 heads, 8 kv heads, head_dim 64, a 128-token window on even layers and
    // learnable sink logits on every layer. 150 tokens: the window matters.
    let sh = Shape {
        batch: 1,
        q_len: 150,
        kv_len: 150,
        heads: 64,
        kv_heads: 8,
        head_dim: 64,
    };
    let (problem, qkv, mut tensors) = inputs::<bf16>(sh, common::base_seed());
    let mut rng = Rng::new(3);
    let sinks: Vec<f32> = (0..64).map(|_| 2.0 * rng.unit()).collect();
    let dir = TempDir::new();
    let bare = dir.write("bare.safetensors", safetensors_bytes(&tensors));
    tensors.push(f32_tensor("sinks", &[64], &sinks));
    let input = dir.write("in.safetensors", safetensors_bytes(&tensors));
    let cfg = data("gpt-oss-20b.json");
    let opts = AttnOptions {
        sink_logits: Some(sinks),
        ..Default::default()
    };
    for (layer, pattern) in [
        (
            "0",
            r#"{"causal": true, "components": [{"sliding_window": {"size": 128}}]}"#,
        ),
        ("1", CAUSAL),
    ] {
        let out = dir.path(&format!("out{layer}.safetensors"));
        let args = [
            "run",
            "--model",
            s(&cfg),
            "--layer",
            layer,
            "--input",
            s(&input),
            "--output",
            s(&out),
        ];
        let set = HeadPatterns::from_json(pattern).unwrap();
        run_and_check("gpt-oss", &args, &out, &problem, &qkv, &set, &opts);
    }
    let out = dir.path("dec.safetensors");
    let args = [
        "decode",
        "--model",
        s(&cfg),
        "--input",
        s(&input),
        "--output",
        s(&out),
        "--prefill",
        "140",
        "--page-size",
        "32",
    ];
    let set = HeadPatterns::from_json(
        r#"{"causal": true, "components": [{"sliding_window": {"size": 128}}]}"#,
    )
    .unwrap();
    run_and_check("gpt-oss decode", &args, &out, &problem, &qkv, &set, &opts);
    // Without the tensor: one line naming what is missing, nothing written.
    let o = bin(&[
        "run",
        "--model",
        s(&cfg),
        "--input",
        s(&bare),
        "--output",
        s(&dir.path("none.safetensors")),
        "--backend",
        "emulator",
    ]);
    assert_fails(&o, 1, "has no `sinks` tensor, but layer 0 of");
    assert!(!dir.path("none.safetensors").exists());
}

#[test]
fn bloom_config_uses_the_standard_slopes_unless_the_file_gives_its_own() {
    // BLOOM-560m: 16 heads (as many kv heads), head_dim 1024 / 16 = 64, ALiBi, dense causal.
    let sh = Shape {
        batch: 1,
        q_len: 70,
        kv_len: 70,
        heads: 16,
        kv_heads: 16,
        head_dim: 64,
    };
    let (problem, qkv, mut tensors) = inputs::<f16>(sh, common::base_seed());
    let dir = TempDir::new();
    let bare = dir.write("bare.safetensors", safetensors_bytes(&tensors));
    let own: Vec<f32> = (0..16).map(|h| 0.05 * (h + 1) as f32).collect();
    tensors.push(f32_tensor("alibi_slopes", &[16], &own));
    let with_slopes = dir.write("slopes.safetensors", safetensors_bytes(&tensors));
    let cfg = data("bloom-560m.json");
    let set = HeadPatterns::from_json(CAUSAL).unwrap();
    for (input, slopes) in [(&bare, alibi_slopes(16)), (&with_slopes, own)] {
        let out = dir.path("out.safetensors");
        let args = [
            "run",
            "--model",
            s(&cfg),
            "--input",
            s(input),
            "--output",
            s(&out),
        ];
        let opts = AttnOptions {
            alibi_slopes: Some(slopes),
            ..Default::default()
        };
        let stdout = run_and_check("bloom", &args, &out, &problem, &qkv, &set, &opts);
        assert!(stdout.contains("(ALiBi)"), "{stdout}");
    }
}

/// A fresh directory with an input file (the given tensors) and a causal pattern file.
struct Bad {
    dir: TempDir,
    input: PathBuf,
    pattern: PathBuf,
}

impl Bad {
    fn new(tensors: &[Tensor]) -> Bad {
        let dir = TempDir::new();
        let input = dir.write("in.safetensors", safetensors_bytes(tensors));
        let pattern = dir.write("p.json", CAUSAL);
        Bad {
            dir,
            input,
            pattern,
        }
    }

    /// `cmd --input IN --output OUT source..` exits with `code` and (status 1) one line
    /// containing `needle`; an existing output is untouched and no other file appears.
    fn fails(&self, cmd: &str, source: &[&str], code: i32, needle: &str) {
        let out = self.dir.write("out.safetensors", b"previous contents");
        let mut before: Vec<_> = std::fs::read_dir(&self.dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        before.sort();
        let mut args = vec![
            cmd,
            "--input",
            s(&self.input),
            "--output",
            s(&out),
            "--backend",
            "emulator",
        ];
        if cmd == "decode" {
            args.extend(["--prefill", "2", "--page-size", "8"]);
        }
        args.extend_from_slice(source);
        let o = bin(&args);
        if code == 1 {
            assert_fails(&o, code, needle);
        } else {
            // Usage errors (status 2) come from the argument parser, with its own layout.
            let stderr = common::cli::stderr(&o);
            assert_eq!(o.status.code(), Some(code), "{args:?}: {stderr}");
            assert!(stderr.contains(needle), "{args:?}: {stderr}");
        }
        assert_eq!(std::fs::read(&out).unwrap(), b"previous contents");
        let mut after: Vec<_> = std::fs::read_dir(&self.dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        after.sort();
        assert_eq!(
            before, after,
            "`{needle}`: files written despite the failure"
        );
    }

    fn pattern(&self) -> [&str; 2] {
        ["--pattern", s(&self.pattern)]
    }
}

#[test]
fn bad_sinks_and_slopes_tensors_are_one_line_errors() {
    let sh = Shape {
        batch: 1,
        q_len: 8,
        kv_len: 8,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
    };
    let (_, _, qkv) = inputs::<f16>(sh, 1);
    let with = |extra: Tensor| {
        let mut t = inputs::<f16>(sh, 1).2;
        t.push(extra);
        t
    };
    let cases: Vec<(Vec<Tensor>, &str)> =
        vec![
        (
            with(f32_tensor("sinks", &[3], &[0.0; 3])),
            "tensor `sinks` has shape [3]; expected [4] (one sink logit per query head)",
        ),
        (
            with(f32_tensor("sinks", &[1, 4], &[0.0; 4])),
            "tensor `sinks` has shape [1, 4]",
        ),
        (
            with(tensor("sinks", &[4], &[f16::ZERO; 4], Dtype::F16)),
            "tensor `sinks` has dtype F16; expected F32",
        ),
        (
            with(f32_tensor("sinks", &[4], &[0.0, 1.0, f32::NAN, 0.0])),
            "tensor `sinks` holds NaN at [2]; every sink logit must be finite",
        ),
        (
            with(f32_tensor("alibi_slopes", &[5], &[0.1; 5])),
            "tensor `alibi_slopes` has shape [5]; expected [4] (one ALiBi slope per query head)",
        ),
        (
            with(f32_tensor("alibi_slopes", &[4], &[0.1, f32::INFINITY, 0.1, 0.1])),
            "tensor `alibi_slopes` holds inf at [1]",
        ),
    ];
    for (tensors, needle) in &cases {
        let b = Bad::new(tensors);
        for cmd in ["run", "decode"] {
            b.fails(cmd, &b.pattern(), 1, needle);
        }
    }
    // Against a model: slopes or sinks the layer does not declare, sinks it needs.
    let dir = TempDir::new();
    let gemma = dir.write("config.json", SMALL_GEMMA2);
    let gemma_args = ["--model", s(&gemma)];
    let b = Bad::new(&with(f32_tensor("alibi_slopes", &[4], &[0.1; 4])));
    b.fails(
        "run",
        &gemma_args,
        1,
        "has an `alibi_slopes` tensor, but layer 0 of",
    );
    let b = Bad::new(&with(f32_tensor("sinks", &[4], &[0.1; 4])));
    b.fails(
        "decode",
        &gemma_args,
        1,
        "has a `sinks` tensor, but layer 0 of",
    );
    // Shapes the config contradicts, layers that do not exist or are not attention.
    let b = Bad::new(&qkv);
    b.fails(
        "run",
        &["--model", s(&data("gpt-oss-20b.json"))],
        1,
        "layer 0 has num_attention_heads 64, but the input has 4",
    );
    let kv4 = dir.write(
        "kv4.json",
        SMALL_GEMMA2.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 4"),
    );
    b.fails(
        "run",
        &["--model", s(&kv4)],
        1,
        "layer 0 has num_key_value_heads 4, but the input has 2",
    );
    let hd128 = dir.write(
        "hd128.json",
        SMALL_GEMMA2.replace("\"head_dim\": 64", "\"head_dim\": 128"),
    );
    b.fails(
        "decode",
        &["--model", s(&hd128)],
        1,
        "layer 0 has head_dim 128, but the input has 64",
    );
    b.fails(
        "run",
        &["--model", s(&gemma), "--layer", "2"],
        1,
        "has 2 layers; --layer 2 does not exist",
    );
    b.fails(
        "run",
        &["--model", s(&data("jamba-v0.1.json")), "--layer", "0"],
        1,
        "layer 0 is not softmax attention (mamba)",
    );
    // Command-line misuse (status 2): --pattern with --model, --scale with --model, --layer
    // without --model, neither source.
    b.fails(
        "run",
        &["--model", s(&gemma), "--pattern", s(&b.pattern)],
        2,
        "cannot be used with",
    );
    b.fails(
        "run",
        &["--model", s(&gemma), "--scale", "0.5"],
        2,
        "cannot be used with",
    );
    b.fails(
        "decode",
        &["--pattern", s(&b.pattern), "--layer", "1"],
        2,
        "--model",
    );
    b.fails("run", &[], 2, "--pattern");
}
