//! The `sparse-attn` binary as the CLI tests drive it: running it, its one-line failures, and
//! the safetensors files it reads (q, k, v) and writes (out, lse, mask).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sparse_attn::Element;

use super::tempdir::TempDir;
use super::{random_tensor, Rng};

pub const BIN: &str = env!("CARGO_BIN_EXE_sparse-attn");

/// Runs the binary with `args`.
pub fn bin(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the command succeeded (showing its stderr if not); returns its stdout.
pub fn assert_success(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}", stderr(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts the command exited with `code` and one line on stderr containing `needle`;
/// returns that stderr.
pub fn assert_fails(o: &Output, code: i32, needle: &str) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "`{needle}`: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected one line on stderr, got:\n{err}"
    );
    assert!(
        err.contains(needle),
        "stderr does not mention `{needle}`: {err}"
    );
    err
}

/// The names of the files in `dir`, sorted.
pub fn file_names(dir: &TempDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts no temporary file of an atomic write was left in `dir`.
pub fn assert_no_temp_files(dir: &TempDir) {
    let names = file_names(dir);
    assert!(
        !names.iter().any(|n| n.contains(".tmp-")),
        "temporary files left behind: {names:?}"
    );
}

/// A pattern and an input file in a fresh directory, for `run` and `decode`.
pub struct Fixture {
    pub dir: TempDir,
    pub input: PathBuf,
    pub pattern: PathBuf,
}

impl Fixture {
    pub fn new(input: &[u8], pattern: &str) -> Fixture {
        let dir = TempDir::new();
        let input = dir.write("in.safetensors", input);
        let pattern = dir.write("p.json", pattern);
        Fixture {
            dir,
            input,
            pattern,
        }
    }

    /// `sparse-attn <cmd> --pattern .. --input .. --output <output> <extra..>`.
    pub fn command(&self, cmd: &str, output: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            cmd,
            "--pattern",
            s(&self.pattern),
            "--input",
            s(&self.input),
            "--output",
            s(output),
        ];
        args.extend_from_slice(extra);
        bin(&args)
    }

    /// Runs `cmd` into `output` on the emulator, asserting success; returns stdout.
    pub fn succeed(&self, cmd: &str, output: &Path, extra: &[&str]) -> String {
        let o = self.command(cmd, output, &[&["--backend", "emulator"], extra].concat());
        assert_success(&o, cmd)
    }

    /// `cmd` with `extra` fails with exit status 1 and one line containing `needle`, leaves an
    /// existing output file as it was and writes no other file (no temporary, no mask).
    pub fn expect_failure(&self, cmd: &str, extra: &[&str], needle: &str) {
        let output = self.dir.write("out.safetensors", b"previous contents");
        let o = self.command(cmd, &output, extra);
        assert_fails(&o, 1, needle);
        assert_eq!(std::fs::read(&output).unwrap(), b"previous contents");
        assert_eq!(
            file_names(&self.dir),
            ["in.safetensors", "out.safetensors", "p.json"],
            "`{needle}`: files written despite the failure"
        );
    }
}

// ---- safetensors -----------------------------------------------------------------------------

/// One tensor of a safetensors file.
pub struct Tensor {
    pub name: &'static str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// `x` rounded to `dtype` (F16 or BF16), little-endian.
pub fn tensor<E: Element>(name: &'static str, shape: &[usize], x: &[E], dtype: Dtype) -> Tensor {
    let bytes = x
        .iter()
        .flat_map(|v| {
            let bits: u16 = match dtype {
                Dtype::BF16 => bf16::from_f32(v.to_f32()).to_bits(),
                _ => f16::from_f32(v.to_f32()).to_bits(),
            };
            bits.to_le_bytes()
        })
        .collect();
    Tensor {
        name,
        dtype,
        shape: shape.to_vec(),
        bytes,
    }
}

/// All-zero bytes of `dtype`'s size.
pub fn zeros(name: &'static str, shape: &[usize], dtype: Dtype) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor {
        name,
        dtype,
        shape: shape.to_vec(),
        bytes: vec![0; n * dtype.bitsize() / 8],
    }
}

/// q `[b, tq, h, d]`, k and v `[b, tk, hk, d]` of random values (q and k of amplitude 2, v
/// of 1) in `dtype` (F16 or BF16).
pub fn random_qkv(dtype: Dtype, q: [usize; 4], kv: [usize; 4], seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    let mut draw = |name, shape: [usize; 4], amp| {
        let n = shape.iter().product();
        match dtype {
            Dtype::BF16 => tensor(
                name,
                &shape,
                &random_tensor::<bf16>(&mut rng, n, amp),
                dtype,
            ),
            _ => tensor(name, &shape, &random_tensor::<f16>(&mut rng, n, amp), dtype),
        }
    };
    vec![draw("q", q, 2.0), draw("k", kv, 2.0), draw("v", kv, 1.0)]
}

pub fn safetensors_bytes(tensors: &[Tensor]) -> Vec<u8> {
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

/// A safetensors tensor's (dtype, shape, raw bytes).
pub fn read_tensor(bytes: &[u8], name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("tensor `{name}`: {e}"));
    (t.dtype(), t.shape().to_vec(), t.data().to_vec())
}

/// The `out` and `lse` tensors of a `run` or `decode` output file.
pub struct RunOutput {
    pub out_shape: Vec<usize>,
    /// Widened to f32.
    pub out: Vec<f32>,
    pub lse_shape: Vec<usize>,
    pub lse: Vec<f32>,
}

/// Reads an output file, asserting `out` is of `dtype` and `lse` of F32.
pub fn read_output(path: &Path, dtype: Dtype) -> RunOutput {
    let bytes = std::fs::read(path).unwrap();
    let (out_dtype, out_shape, out) = read_tensor(&bytes, "out");
    assert_eq!(out_dtype, dtype, "out dtype");
    let (lse_dtype, lse_shape, lse) = read_tensor(&bytes, "lse");
    assert_eq!(lse_dtype, Dtype::F32, "lse dtype");
    let out = out
        .chunks_exact(2)
        .map(|c| {
            let w = u16::from_le_bytes([c[0], c[1]]);
            match dtype {
                Dtype::BF16 => bf16::from_bits(w).to_f32(),
                _ => f16::from_bits(w).to_f32(),
            }
        })
        .collect();
    let lse = lse
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    RunOutput {
        out_shape,
        out,
        lse_shape,
        lse,
    }
}

// ---- viz pictures ----------------------------------------------------------------------------

/// A decoded `viz` PNG (RGB) and its `Description` text.
pub struct Picture {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
    pub description: String,
}

impl Picture {
    /// Decodes the PNG at `path` (palette expanded to RGB).
    pub fn read(path: &Path) -> Picture {
        let bytes = std::fs::read(path).unwrap();
        let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
        dec.set_transformations(png::Transformations::EXPAND);
        let mut reader = dec.read_info().unwrap();
        let description = reader
            .info()
            .uncompressed_latin1_text
            .iter()
            .find(|t| t.keyword == "Description")
            .map(|t| t.text.clone())
            .unwrap_or_default();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        Picture {
            width: info.width as usize,
            height: info.height as usize,
            rgb: buf,
            description,
        }
    }

    /// The colour of pixel (x, y).
    pub fn at(&self, x: usize, y: usize) -> [u8; 3] {
        let k = (y * self.width + x) * 3;
        [self.rgb[k], self.rgb[k + 1], self.rgb[k + 2]]
    }
}
