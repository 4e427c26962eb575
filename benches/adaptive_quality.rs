//! Quality of content-adaptive selection on synthetic needle-field heads (docs/adaptive.md,
//! "How quality is measured"; issue #15 item 7, the CPU half). No GPU: the f64 reference
//! selection ([`Selection::compute`](sparse_attn::adaptive::Selection::compute)) against the
//! exact dense causal softmax, on the heads of [`sparse_attn::adaptive::needle`].
//!
//! `cargo bench --bench adaptive_quality [-- OPTIONS]`:
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it is a smoke run: 2K tokens,
//! head_dim 64, 8 strata, unless options follow.
//!
//! - `--quick` (or `SPARSE_ATTN_BENCH_QUICK=1`): 8K tokens only;
//! - `--lens 8192,16384,...` and `--dims 64,128`: the cases (default 8K, 16K, 32K, 64K, and
//!   head_dim 64 and 128);
//! - `--strata N`, `--rows N`: the row sample (default 64 strata of 8 rows, plus every needle
//!   query); `--threads N` (default: available parallelism); `--seed N`;
//! - `--no-rotate`: leave the field heads' structure channel-aligned (a sensitivity run);
//! - `--out PREFIX`: also write `PREFIX.md` and `PREFIX.json`.
//!
//! Methods, all with block 64, one sink block and two local blocks forced unless named:
//! `top_p` p 0.9 and 0.95 (`mean_k`, `min_k` 4, `max_k` = every block: the contract example's
//! 512 would cap the diffuse head at 50% density at 64K); `top_k` with a total budget of
//! 1/16 and 1/8 of the context's blocks (forced ones included) by `mean_k` and `pooled_qk`;
//! the contract's `top_rel` example (block 128, alpha 0.1, max_k 1024, 2 sinks, 4 local);
//! decode `top_k` at 1/16 by `minmax` (Quest) and by singleton `mean_k`.

use std::fmt::Write as _;
use std::time::Instant;

use sparse_attn::adaptive::needle::{
    evaluate, FieldSpec, Method, MethodReport, NeedleField, Sample, Summary,
};
use sparse_attn::adaptive::{BlockSelect, Choice, Grouping, Score};

const BLOCK: i64 = 64;

struct Args {
    lens: Vec<usize>,
    dims: Vec<usize>,
    strata: usize,
    rows: usize,
    threads: usize,
    seed: u64,
    out: Option<String>,
    rotate: bool,
}

fn parse_list(s: &str) -> Vec<usize> {
    s.split(',')
        .map(|x| x.trim().parse().expect("a list of integers"))
        .collect()
}

fn args() -> Args {
    let mut a = Args {
        lens: vec![8192, 16384, 32768, 65536],
        dims: vec![64, 128],
        strata: 64,
        rows: 8,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        seed: 2026,
        out: None,
        rotate: true,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: a smoke run only.
    if !argv.iter().any(|x| x == "--bench") {
        a.lens = vec![2048];
        a.dims = vec![64];
        a.strata = 8;
    }
    if std::env::var("SPARSE_ATTN_BENCH_QUICK").is_ok_and(|v| v == "1") {
        a.lens = vec![8192];
    }
    let mut i = 0;
    while i < argv.len() {
        let val = || argv.get(i + 1).expect("option needs a value").clone();
        match argv[i].as_str() {
            "--quick" => a.lens = vec![8192],
            "--no-rotate" => a.rotate = false,
            "--lens" => {
                a.lens = parse_list(&val());
                i += 1;
            }
            "--dims" => {
                a.dims = parse_list(&val());
                i += 1;
            }
            "--strata" => {
                a.strata = val().parse().expect("--strata N");
                i += 1;
            }
            "--rows" => {
                a.rows = val().parse().expect("--rows N");
                i += 1;
            }
            "--threads" => {
                a.threads = val().parse().expect("--threads N");
                i += 1;
            }
            "--seed" => {
                a.seed = val().parse().expect("--seed N");
                i += 1;
            }
            "--out" => {
                a.out = Some(val());
                i += 1;
            }
            _ => {} // cargo's own `--bench` and anything else
        }
        i += 1;
    }
    a
}

/// The methods at context `t`.
fn methods(t: usize) -> Vec<Method> {
    let blocks = t as i64 / BLOCK;
    let forced = 3; // 1 sink + 2 local
    let k16 = (blocks / 16 - forced).max(1);
    let k8 = (blocks / 8 - forced).max(1);
    let mk = |name: String, block: i64, choice: Choice, score: Score, sinks, local, g| Method {
        name,
        select: BlockSelect::new(block, choice, score)
            .and_then(|s| s.with_forced(sinks, local))
            .expect("valid method"),
        grouping: g,
    };
    let top_p = |p: f64| Choice::TopP {
        p,
        min_k: 4,
        max_k: blocks,
    };
    let pre = Grouping::Prefill;
    vec![
        mk(
            "top_p 0.9 mean_k".into(),
            BLOCK,
            top_p(0.9),
            Score::MeanK,
            1,
            2,
            pre,
        ),
        mk(
            "top_p 0.95 mean_k".into(),
            BLOCK,
            top_p(0.95),
            Score::MeanK,
            1,
            2,
            pre,
        ),
        mk(
            format!("top_k 1/16 (k={k16}) mean_k"),
            BLOCK,
            Choice::TopK { k: k16 },
            Score::MeanK,
            1,
            2,
            pre,
        ),
        mk(
            format!("top_k 1/8 (k={k8}) mean_k"),
            BLOCK,
            Choice::TopK { k: k8 },
            Score::MeanK,
            1,
            2,
            pre,
        ),
        mk(
            format!("top_k 1/16 (k={k16}) pooled_qk"),
            BLOCK,
            Choice::TopK { k: k16 },
            Score::PooledQk,
            1,
            2,
            pre,
        ),
        mk(
            format!("top_k 1/8 (k={k8}) pooled_qk"),
            BLOCK,
            Choice::TopK { k: k8 },
            Score::PooledQk,
            1,
            2,
            pre,
        ),
        mk(
            "top_rel 0.1 mean_k (B 128)".into(),
            128,
            Choice::TopRel {
                alpha: 0.1,
                min_k: 0,
                max_k: 1024,
            },
            Score::MeanK,
            2,
            4,
            pre,
        ),
        mk(
            format!("decode top_k 1/16 (k={k16}) minmax"),
            BLOCK,
            Choice::TopK { k: k16 },
            Score::Minmax,
            1,
            2,
            Grouping::Decode,
        ),
        mk(
            format!("decode top_k 1/16 (k={k16}) mean_k"),
            BLOCK,
            Choice::TopK { k: k16 },
            Score::MeanK,
            1,
            2,
            Grouping::Decode,
        ),
    ]
}

/// A target: a label and whether it holds.
struct Check {
    what: String,
    pass: bool,
}

fn check(what: &str, value: f64, ok: bool) -> Check {
    Check {
        what: format!("{what} ({value:.4})"),
        pass: ok,
    }
}

/// The contract's targets that apply to `r` (they are stated for 32K–64K; shorter contexts
/// are marked for information).
fn targets(r: &MethodReport) -> Vec<Check> {
    let f = &r.field;
    let mut c = Vec::new();
    if r.name.starts_with("top_p 0.95 mean_k") {
        c.push(check(
            "mean R >= 0.93",
            f.mean_recall,
            f.mean_recall >= 0.93,
        ));
        c.push(check("p1 R >= 0.80", f.p1_recall, f.p1_recall >= 0.80));
        c.push(check(
            "needle recall 100%",
            f.needle_recall,
            f.needle_recall == 1.0,
        ));
        c.push(check("density <= 15%", f.density, f.density <= 0.15));
        c.push(check(
            "oracle eff >= 0.9",
            f.oracle_efficiency,
            f.oracle_efficiency >= 0.9,
        ));
        c.push(check("L1 <= 0.05", f.l1, f.l1 <= 0.05));
    }
    if r.name.starts_with("top_p") {
        let d = r.diffuse.density;
        c.push(check("diffuse density > 80%", d, d > 0.8));
    }
    if r.name.starts_with("decode top_k 1/16") && r.name.ends_with("minmax") {
        c.push(check(
            "needle recall 100%",
            f.needle_recall,
            f.needle_recall == 1.0,
        ));
        c.push(check(
            "mean R >= 0.90",
            f.mean_recall,
            f.mean_recall >= 0.90,
        ));
    }
    c
}

fn row(md: &mut String, name: &str, heads: &str, s: &Summary) {
    let needle = if s.needle_rows == 0 {
        "-".to_string()
    } else {
        format!("{:.1}% of {}", 100.0 * s.needle_recall, s.needle_rows)
    };
    writeln!(
        md,
        "| {name} | {heads} | {} | {:.4} | {:.4} | {:.4} | {needle} | {:.2}% | {:.4} | {:.4} |",
        s.rows,
        s.mean_recall,
        s.p1_recall,
        s.min_recall,
        100.0 * s.density,
        s.oracle_efficiency,
        s.l1
    )
    .unwrap();
}

fn json_summary(s: &Summary) -> serde_json::Value {
    let num = |x: f64| {
        if x.is_finite() {
            serde_json::json!(x)
        } else {
            serde_json::Value::Null
        }
    };
    serde_json::json!({
        "rows": s.rows,
        "mean_recall": num(s.mean_recall),
        "p1_recall": num(s.p1_recall),
        "min_recall": num(s.min_recall),
        "needle_rows": s.needle_rows,
        "needle_recall": num(s.needle_recall),
        "density": num(s.density),
        "oracle_efficiency": num(s.oracle_efficiency),
        "l1": num(s.l1),
    })
}

fn main() {
    let a = args();
    let sample = Sample {
        strata: a.strata,
        rows_per_stratum: a.rows,
        decode_from: 0.5,
        seed: a.seed,
    };
    let mut md = String::new();
    let mut all = String::new();
    let mut cases = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    let total = Instant::now();
    for &t in &a.lens {
        for &d in &a.dims {
            let spec = FieldSpec {
                rotate: a.rotate,
                ..FieldSpec::new(t, d, a.seed)
            };
            let t0 = Instant::now();
            let field = NeedleField::generate(&spec).expect("valid field");
            let gen_s = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let ms = methods(t);
            let (reports, stats) = evaluate(&field, &ms, &sample, a.threads).expect("evaluation");
            let eval_s = t1.elapsed().as_secs_f64();
            writeln!(md, "\n### {t} tokens, head_dim {d}\n").unwrap();
            writeln!(
                md,
                "Field heads' dense mass (mean over evaluated rows): sink {:.3}, last 256 keys {:.3}, \
                 columns {:.3}; needle key {:.3} (range {:.3}-{:.3}). Generation {gen_s:.1} s, \
                 selection and metrics {eval_s:.1} s.\n",
                stats.sink, stats.local, stats.columns, stats.needle, stats.needle_range.0, stats.needle_range.1
            )
            .unwrap();
            writeln!(md, "| method | heads | rows | mean R | p1 R | min R | needle recall | density | oracle eff | L1 |").unwrap();
            writeln!(md, "|---|---|---|---|---|---|---|---|---|---|").unwrap();
            let mut verdicts = String::new();
            let mut jm = Vec::new();
            for r in &reports {
                row(&mut md, &r.name, "field", &r.field);
                row(&mut md, "", "field, non-needle rows", &r.field_plain);
                row(&mut md, "", "diffuse", &r.diffuse);
                let checks = targets(r);
                for c in &checks {
                    let binding = t >= 32768;
                    if binding {
                        if c.pass {
                            passed += 1;
                        } else {
                            failed += 1;
                        }
                    }
                    writeln!(
                        verdicts,
                        "- {}: {} — **{}**{}",
                        r.name,
                        c.what,
                        if c.pass { "pass" } else { "FAIL" },
                        if binding {
                            ""
                        } else {
                            " (informational: the targets are stated for 32K-64K)"
                        }
                    )
                    .unwrap();
                }
                jm.push(serde_json::json!({
                    "method": r.name,
                    "field": json_summary(&r.field),
                    "field_non_needle": json_summary(&r.field_plain),
                    "diffuse": json_summary(&r.diffuse),
                    "targets": checks.iter().map(|c| serde_json::json!({"target": c.what, "pass": c.pass})).collect::<Vec<_>>(),
                }));
            }
            writeln!(md, "\nTargets:\n\n{verdicts}").unwrap();
            cases.push(serde_json::json!({
                "seq_len": t,
                "head_dim": d,
                "generation_s": gen_s,
                "evaluation_s": eval_s,
                "field_mass": {
                    "sink": stats.sink, "local_256": stats.local, "columns": stats.columns,
                    "needle": stats.needle, "needle_min": stats.needle_range.0, "needle_max": stats.needle_range.1,
                },
                "methods": jm,
            }));
            print!("{md}");
            all.push_str(&md);
            md.clear();
        }
    }
    let summary = format!(
        "\nBinding targets (32K-64K): {passed} pass, {failed} fail. Total {:.1} s on {} threads.\n",
        total.elapsed().as_secs_f64(),
        a.threads
    );
    print!("{summary}");
    all.push_str(&summary);
    if let Some(prefix) = &a.out {
        std::fs::write(format!("{prefix}.md"), &all).expect("write markdown");
        let doc = serde_json::json!({
            "sample": {"strata": a.strata, "rows_per_stratum": a.rows, "decode_from": 0.5, "seed": a.seed},
            "threads": a.threads,
            "rotate": a.rotate,
            "binding_pass": passed,
            "binding_fail": failed,
            "total_s": total.elapsed().as_secs_f64(),
            "cases": cases,
        });
        std::fs::write(
            format!("{prefix}.json"),
            serde_json::to_string_pretty(&doc).unwrap(),
        )
        .expect("write json");
    }
}
