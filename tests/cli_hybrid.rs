//! `sparse-attn plan` and `viz --model` on the model configs of `tests/data/`: chunked layers
//! (Llama 4), layers that are not softmax attention (Jamba, MiniMax-01, Qwen3-Next) listed as
//! such and left out of FLOPs and KV bytes, per-layer head_dim (Gemma 4), layer settings (Gemma
//! 2's scale and softcap, gpt-oss's sink logits), and the config errors that name their field.

mod common;

use std::path::{Path, PathBuf};

use common::cli::{assert_fails, assert_success, bin as run, s, Picture};
use common::tempdir::TempDir;
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// `plan --json` of a config file.
fn plan_json(path: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["plan", "--model", s(path), "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&assert_success(&run(&args), "plan")).unwrap()
}

fn u(v: &Value) -> u128 {
    v.as_u64().map(u128::from).unwrap_or_else(|| {
        v.to_string()
            .parse()
            .unwrap_or_else(|_| panic!("not an integer: {v}"))
    })
}

/// Allowed pairs of one causal head with chunks of `c` over `n` tokens.
fn chunk_pairs(c: u128, n: u128) -> u128 {
    let full = n / c;
    let rest = n % c;
    full * c * (c + 1) / 2 + rest * (rest + 1) / 2
}

#[test]
fn plan_llama4_counts_chunks() {
    let n = 20000u128;
    let r = plan_json(&data("llama-4-scout-17b-16e.json"), &["--seq-len", "20000"]);
    assert_eq!(
        (r["num_layers"].as_u64(), r["attention_layers"].as_u64()),
        (Some(48), Some(48))
    );
    let per_token = 2 * 8 * 128 * 2;
    for (l, layer) in r["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(layer["kind"], "attention");
        assert_eq!(layer["head_dim"], 128);
        if l % 4 == 3 {
            assert_eq!(layer["pattern"], "causal dense", "layer {l}");
            assert_eq!(u(&layer["kv_bytes"]), n * per_token);
        } else {
            assert_eq!(layer["pattern"], "causal chunked(8192)", "layer {l}");
            assert_eq!(
                u(&layer["allowed_pairs"]),
                40 * chunk_pairs(8192, n),
                "layer {l}"
            );
            assert_eq!(u(&layer["flops"]), 4 * u(&layer["allowed_pairs"]) * 128);
            // The last query (19999) is in the chunk from 16384: 3616 keys kept.
            assert_eq!(
                layer["kv_tokens_per_kv_head"],
                serde_json::json!(vec![3616; 8])
            );
            assert_eq!(u(&layer["kv_bytes"]), 3616 * per_token);
        }
    }
}

#[test]
fn plan_hybrids_count_only_their_attention_layers() {
    for (name, every, kind, seq) in [
        ("jamba-v0.1.json", 8usize, "mamba", 4096u128),
        ("minimax-text-01.json", 8, "linear_attention", 4096),
        ("qwen3-next-80b-a3b.json", 4, "linear_attention", 4096),
    ] {
        let r = plan_json(&data(name), &["--seq-len", "4096"]);
        let layers = r["layers"].as_array().unwrap();
        let attention: Vec<usize> = layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l["kind"] == "attention")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            r["attention_layers"].as_u64(),
            Some(attention.len() as u64),
            "{name}"
        );
        assert_eq!(attention.len(), layers.len() / every, "{name}");
        let (mut flops, mut kv) = (0u128, 0u128);
        for (i, l) in layers.iter().enumerate() {
            if l["kind"] == "attention" {
                assert_eq!(l["pattern"], "causal dense", "{name} layer {i}");
                flops += u(&l["flops"]);
                kv += u(&l["kv_bytes"]);
                let d = u(&l["head_dim"]);
                let hk = u(&l["num_kv_heads"]);
                assert_eq!(u(&l["kv_bytes"]), seq * hk * 2 * d * 2, "{name} layer {i}");
            } else {
                assert_eq!(l["kind"], kind, "{name} layer {i}");
                assert_eq!(l["pattern"], format!("{kind} (not softmax attention)"));
                assert!(l["patterns"].is_null() && l["head_dim"].is_null());
                assert_eq!((u(&l["flops"]), u(&l["kv_bytes"])), (0, 0));
                assert_eq!(u(&l["dense_flops"]) + u(&l["dense_kv_bytes"]), 0);
            }
        }
        assert_eq!(u(&r["totals"]["flops"]), flops, "{name}");
        assert_eq!(u(&r["totals"]["kv_bytes"]), kv, "{name}");
        assert_eq!(
            u(&r["totals"]["dense_kv_bytes"]),
            kv,
            "{name}: dense layers are dense"
        );
    }
    // The table marks them too.
    let o = run(&[
        "plan",
        "--model",
        s(&data("jamba-v0.1.json")),
        "--seq-len",
        "1024",
    ]);
    let table = assert_success(&o, "plan");
    assert!(
        table.contains("32 layers (4 softmax attention, 28 not: no FLOPs or KV counted for them)"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some("0"))
        .unwrap();
    assert!(row.contains("mamba (not softmax attention)"), "{row}");
    assert!(row.trim_end().ends_with('-'), "{row}");
}

#[test]
fn plan_shows_per_layer_head_dim_and_settings() {
    let r = plan_json(&data("gemma-4-31b.json"), &["--seq-len", "8192"]);
    for (l, layer) in r["layers"].as_array().unwrap().iter().enumerate() {
        let global = l % 6 == 5;
        let (d, hk) = if global { (512, 4) } else { (256, 16) };
        assert_eq!(
            (u(&layer["head_dim"]), u(&layer["num_kv_heads"])),
            (d, hk),
            "layer {l}"
        );
        assert_eq!(u(&layer["flops"]), 4 * u(&layer["allowed_pairs"]) * d);
        assert_eq!(layer["scale"].as_f64(), Some(1.0));
        let kept = if global { 8192 } else { 1024 };
        assert_eq!(u(&layer["kv_bytes"]), kept * hk * 2 * d * 2, "layer {l}");
    }
    let o = run(&[
        "plan",
        "--model",
        s(&data("gemma-4-31b.json")),
        "--seq-len",
        "8192",
    ]);
    let table = assert_success(&o, "plan");
    assert!(
        table.contains("head_dim 256 (per layer: 256, 512)"),
        "{table}"
    );
    let row5 = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some("5"))
        .unwrap();
    assert!(
        row5.contains("causal dense") && row5.contains(" 512 "),
        "{row5}"
    );
    // --head-dim replaces every layer's.
    let r = plan_json(
        &data("gemma-4-31b.json"),
        &["--seq-len", "64", "--head-dim", "128"],
    );
    assert!(r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["head_dim"] == 128));

    // Gemma 2: the config's dtype is float32, which the kernels do not run.
    let gemma2 = data("gemma-2-9b.json");
    let o = run(&["plan", "--model", s(&gemma2), "--seq-len", "64"]);
    assert_fails(&o, 1, "\"torch_dtype\" is \"float32\"");
    let o = run(&[
        "plan",
        "--model",
        s(&gemma2),
        "--seq-len",
        "64",
        "--dtype",
        "bf16",
    ]);
    let table = assert_success(&o, "plan");
    let row0 = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some("0"))
        .unwrap();
    assert!(row0.ends_with("scale 0.0625, softcap 50"), "{row0}");

    let o = run(&[
        "plan",
        "--model",
        s(&data("gpt-oss-20b.json")),
        "--seq-len",
        "512",
    ]);
    let table = assert_success(&o, "plan");
    let row1 = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap();
    assert!(row1.ends_with("sink logits"), "{row1}");
    let r = plan_json(&data("mpt-7b.json"), &["--seq-len", "64"]);
    assert_eq!(r["layers"][0]["alibi"], true);
}

#[test]
fn plan_config_errors_name_the_field() {
    let dir = TempDir::new();
    for (cfg, needle) in [
        (
            r#"{"num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 64,
                "layer_types": ["full_attention", "hyena"]}"#,
            "\"layer_types[1]\" is \"hyena\"",
        ),
        (
            r#"{"num_hidden_layers": 3, "num_attention_heads": 4, "head_dim": 64,
                "attn_type_list": [0, 1]}"#,
            "\"attn_type_list\" has 2 entries but \"num_hidden_layers\" is 3",
        ),
        (
            r#"{"num_hidden_layers": 1, "num_attention_heads": 4, "head_dim": 64,
                "attention_chunk_size": 0, "layer_types": ["chunked_attention"]}"#,
            "\"attention_chunk_size\" must be at least 1 (got 0)",
        ),
        (
            r#"{"model_type": "gemma4_text", "num_hidden_layers": 2, "num_attention_heads": 4,
                "head_dim": 64, "num_kv_shared_layers": 1}"#,
            "\"num_kv_shared_layers\" is 1",
        ),
        (
            r#"{"num_hidden_layers": 2, "num_attention_heads": 8, "head_dim": 64,
                "global_head_dim": 128, "attention_k_eq_v": true, "num_global_key_value_heads": 3,
                "num_key_value_heads": 4}"#,
            "the kv heads of layer 0 (3)",
        ),
    ] {
        let path = dir.write("config.json", cfg);
        let o = run(&["plan", "--model", s(&path), "--seq-len", "64"]);
        let err = assert_fails(&o, 1, needle);
        assert!(err.contains("config.json"), "{err}");
        assert!(o.stdout.is_empty(), "{cfg}: output on stdout");
    }
}

fn viz_model(path: &Path, args: &[&str]) -> Picture {
    let dir = TempDir::new();
    let out = dir.path("p.png");
    let mut a = vec!["viz", "--out", s(&out), "--model", s(path)];
    a.extend_from_slice(args);
    assert_success(&run(&a), "viz");
    Picture::read(&out)
}

const GAP: usize = 4;
const DARK: [u8; 3] = [32, 32, 32];
const WHITE: [u8; 3] = [255, 255, 255];
const OTHER: [u8; 3] = [214, 196, 232];

#[test]
fn viz_draws_layers_that_are_not_attention_as_their_own_panels() {
    // Jamba at 256 tokens: 32 panels of 64 px (4 x 4 tokens per pixel), 16 per row.
    let pic = viz_model(
        &data("jamba-v0.1.json"),
        &["--seq-len", "256", "--max-px", "64"],
    );
    assert!(
        pic.description
            .contains("mamba: not softmax attention, lavender"),
        "{}",
        pic.description
    );
    assert!(
        pic.description.contains("causal dense [head_dim 128]"),
        "{}",
        pic.description
    );
    for l in 0..32 {
        let (x0, y0) = (GAP + (l % 16) * (64 + GAP), GAP + (l / 16) * (64 + GAP));
        if l % 8 == 4 {
            assert_eq!(pic.at(x0, y0 + 63), DARK, "layer {l}: dense reaches back");
            assert_eq!(pic.at(x0 + 63, y0), WHITE, "layer {l}: causal");
        } else {
            for (x, y) in [(0, 0), (63, 0), (0, 63), (31, 40)] {
                assert_eq!(pic.at(x0 + x, y0 + y), OTHER, "layer {l} at {x},{y}");
            }
        }
    }
    // Both levels: the tile panel of a Mamba layer is lavender too.
    let pic = viz_model(
        &data("jamba-v0.1.json"),
        &[
            "--seq-len",
            "256",
            "--max-px",
            "64",
            "--level",
            "both",
            "--columns",
            "8",
        ],
    );
    let cell = 2 * 64 + GAP;
    assert_eq!(
        pic.at(GAP + 64 + GAP + 10, GAP + 10),
        OTHER,
        "layer 0, tile level"
    );
    assert_ne!(
        pic.at(GAP + 4 * (cell + GAP) + 64 + GAP + 60, GAP + 60),
        OTHER,
        "layer 4"
    );
}

#[test]
fn viz_draws_chunks_block_diagonal() {
    // A Llama-4-shaped config with chunks of 64 at 256 tokens, one token per pixel.
    let dir = TempDir::new();
    let cfg = dir.write(
        "config.json",
        r#"{"model_type": "llama4", "text_config": {"model_type": "llama4_text",
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 1,
            "head_dim": 128, "attention_chunk_size": 64, "no_rope_layers": []}}"#,
    );
    let pic = viz_model(&cfg, &["--seq-len", "256", "--max-px", "256"]);
    assert!(
        pic.description.contains("causal chunked(64)"),
        "{}",
        pic.description
    );
    for l in 0..4 {
        let x0 = GAP + l * (256 + GAP);
        let chunked = l != 3;
        // Row 200 (chunk 3: keys 192..200): key 191 is the previous chunk.
        assert_eq!(pic.at(x0 + 192, GAP + 200), DARK, "layer {l}");
        assert_eq!(pic.at(x0 + 200, GAP + 200), DARK, "layer {l}");
        let before = if chunked { WHITE } else { DARK };
        assert_eq!(pic.at(x0 + 191, GAP + 200), before, "layer {l}");
        assert_eq!(pic.at(x0, GAP + 255), before, "layer {l}");
        assert_eq!(pic.at(x0 + 201, GAP + 200), WHITE, "layer {l}: causal");
    }
}
