//! Continuous batching through one run-time plan per layer setting (issue 12).
//!
//! A small Gemma 3 style model (5 sliding-window layers to 1 global layer, rings of pages for
//! the windowed layers) serves a seeded stream of requests on 3 batch slots: requests join
//! when a slot frees, prefill in chunks while the others decode in the same launch, and
//! leave when done. Every layer of every step is checked against the f64 reference.
//!
//! ```text
//! cargo run --release --example continuous_batching                  # GPU if present, else emulator
//! cargo run --release --example continuous_batching -- --device emu  # the CPU emulator
//! cargo run --release --example continuous_batching -- --device cuda --requests 40
//! ```
//!
//! Options: `--device auto|emu|cuda`, `--requests N` (default 6), `--seed S` (default 1),
//! `--steps` (print every step's batch), `--no-check` (skip the reference).

use std::process::ExitCode;

use half::bf16;
use sparse_attn::backend::{self, Gpu};
use sparse_attn::kv_cache::batching::{self, BatchingConfig, LayerStep, ReferenceCheck};
use sparse_attn::EmuRun;

/// bf16 against the f64 reference: the crate's emulator-suite tolerance.
const TOL: f64 = 1e-2;

struct Args {
    device: String,
    requests: usize,
    seed: u64,
    steps: bool,
    check: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        device: "auto".into(),
        requests: 6,
        seed: 1,
        steps: false,
        check: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--device" => a.device = value("--device")?,
            "--requests" => {
                a.requests = value("--requests")?
                    .parse()
                    .map_err(|e| format!("--requests: {e}"))?
            }
            "--seed" => {
                a.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--steps" => a.steps = true,
            "--no-check" => a.check = false,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let args = parse()?;
    let config = BatchingConfig {
        seed: args.seed,
        ..BatchingConfig::gemma3_small()?
    };
    let requests = batching::demo_requests(args.requests, args.seed);
    let gpu = match args.device.as_str() {
        "emu" => None,
        "cuda" => Some(Gpu::new(0)?),
        "auto" if backend::cuda_build().built => Gpu::new(0).ok(),
        "auto" => None,
        other => return Err(format!("--device {other}: expected auto, emu or cuda").into()),
    };
    println!(
        "model: {} layers ({} heads, {} kv heads, head_dim {}), {} slots, prefill chunks of {}, \
         bf16, on {}",
        config.layers.layers.len(),
        config.num_heads,
        config.num_kv_heads,
        config.head_dim,
        config.slots,
        config.chunk,
        match &gpu {
            Some(g) => format!("CUDA ({})", g.name()?),
            None => "the CPU emulator".into(),
        }
    );
    for (i, r) in requests.iter().enumerate() {
        println!(
            "  request {i}: arrives at step {}, prompt {}, generates {}",
            r.arrival, r.prompt, r.generate
        );
    }
    let mut check = ReferenceCheck::new();
    let mut failure: Option<String> = None;
    let mut last_step = usize::MAX;
    let mut observe = |s: &LayerStep<'_, bf16>| {
        if args.steps && s.step != last_step {
            last_step = s.step;
            let batch: Vec<String> = (0..s.seqs.batch())
                .map(|b| match (s.requests[b], s.seqs.lens(b)) {
                    (None, _) => "-".into(),
                    (Some(r), (1, k)) => format!("r{r}:decode@{k}"),
                    (Some(r), (q, k)) => format!("r{r}:prefill {q}@{k}"),
                })
                .collect();
            println!("  step {:3}: {}", s.step, batch.join("  "));
        }
        if !args.check || failure.is_some() {
            return;
        }
        match check.check(s) {
            Ok(e) if e.out <= TOL && e.lse <= 1e-3 => {}
            Ok(e) => {
                failure = Some(format!(
                    "step {} layer {}: out error {:.2e}, lse error {:.2e}",
                    s.step, s.layer, e.out, e.lse
                ))
            }
            Err(e) => failure = Some(e.to_string()),
        }
    };
    let started = std::time::Instant::now();
    let report = match &gpu {
        Some(g) => batching::run_cuda(g, &config, &requests, &mut observe)?,
        None => batching::run_emulated(&config, &requests, &EmuRun::default(), &mut observe)?,
    };
    let secs = started.elapsed().as_secs_f64();
    println!("plans built: {} (for the whole run)", report.plans_built());
    for p in &report.plans {
        println!(
            "  layers {:?}: {} -> {} (gqa_pack {}, splits {})",
            p.layers, p.patterns, p.kernel, p.gqa_pack, p.num_splits
        );
    }
    println!(
        "{} steps ({} idle), {} launches in {secs:.2} s: {} prompt tokens prefilled, {} decoded; \
         {} steps mixed prefill chunks with decode rows; up to {} sequences in flight",
        report.steps,
        report.idle_steps,
        report.launches,
        report.prefill_tokens,
        report.decode_tokens,
        report.mixed_steps,
        report.max_in_flight
    );
    println!(
        "requests: {} joined, {} finished; longest sequence {} tokens; pages: peak {} of {}",
        report.joined, report.finished, report.longest, report.peak_pages, report.pool_pages
    );
    for (l, c) in report.capacities.iter().enumerate() {
        println!("  layer {l}: {c:?}");
    }
    if !args.check {
        return Ok(true);
    }
    match failure {
        Some(f) => {
            println!("reference check FAILED: {f}");
            Ok(false)
        }
        None => {
            println!(
                "reference check: {} (step, layer) pairs, {} rows, worst out error {:.2e}, \
                 worst lse error {:.2e} (bf16 tolerance {TOL:.0e})",
                check.checked, check.worst.rows, check.worst.out, check.worst.lse
            );
            Ok(true)
        }
    }
}
