//! Layer plans read from the model configs of `tests/data/` (see its README): the layer kinds
//! (full, sliding window, chunked, not softmax attention), per-layer head_dim, kv heads, scale,
//! softcap, learnable sinks and ALiBi of every family, the shapes, compiling the plans, and a
//! paged KV cache that gives layers that are not softmax attention no pages.

use std::path::Path;

use serde_json::Value;
use sparse_attn::kv_cache::{KvCache, KvCacheConfig, LayerCapacity, PoolSize};
use sparse_attn::pattern::plans::HfAttentionConfig;
use sparse_attn::pattern::{
    AttentionLayer, Component, HeadPatterns, Layer, LayerPlan, SparseShape,
};
use sparse_attn::{AttnProblem, DType, Error, SeqLens};

fn load(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn config(name: &str) -> HfAttentionConfig {
    let v = load(name);
    let c = HfAttentionConfig::from_json(&v).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        LayerPlan::from_hf_config(&v).unwrap(),
        c.plan,
        "{name}: the two readers agree"
    );
    c
}

/// One letter per layer: `D` dense causal, `W` causal window, `C` causal chunk, `-` not
/// softmax attention.
fn kinds(plan: &LayerPlan) -> String {
    plan.layers
        .iter()
        .map(|layer| match layer.patterns() {
            None => '-',
            Some(HeadPatterns::All(p)) => {
                assert!(p.causal, "config plans are causal");
                match p.components.as_slice() {
                    [] => 'D',
                    [Component::SlidingWindow(_)] => 'W',
                    [Component::Chunked(_)] => 'C',
                    other => panic!("unexpected components {other:?}"),
                }
            }
            Some(HeadPatterns::PerHead(_)) => panic!("config plans share one pattern per layer"),
        })
        .collect()
}

/// `period` repeated to `n` layers.
fn repeat(period: &str, n: usize) -> String {
    period.chars().cycle().take(n).collect()
}

fn window(plan: &LayerPlan, l: usize) -> i64 {
    match plan.layers[l].patterns() {
        Some(HeadPatterns::All(p)) => match p.components.as_slice() {
            [Component::SlidingWindow(w)] => w.left() + 1,
            [Component::Chunked(c)] => c.size(),
            other => panic!("layer {l}: {other:?}"),
        },
        other => panic!("layer {l}: {other:?}"),
    }
}

/// Every attention layer's settings besides the patterns equal `want`'s.
fn settings_all(plan: &LayerPlan, f: impl Fn(usize, &AttentionLayer)) {
    for (l, a) in plan.attention_layers() {
        f(l, a);
    }
}

fn plain(l: usize, a: &AttentionLayer) {
    assert_eq!(
        (
            a.head_dim,
            a.num_kv_heads,
            a.scale,
            a.softcap,
            a.learnable_sinks,
            a.alibi
        ),
        (None, None, None, None, false, false),
        "layer {l}"
    );
}

#[test]
fn llama4_scout_three_chunked_layers_per_global() {
    let c = config("llama-4-scout-17b-16e.json");
    assert_eq!(c.model_type.as_deref(), Some("llama4_text"));
    assert_eq!(kinds(&c.plan), repeat("CCCD", 48));
    assert_eq!(window(&c.plan, 0), 8192);
    settings_all(&c.plan, plain);
    assert_eq!(
        (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim_for(40)
        ),
        (Some(40), Some(8), Some(128))
    );
    assert_eq!(c.dtype, Some(DType::BF16));
    // The chunked and the global layers compile to two metadata sets.
    let compiled = c
        .plan
        .compile(SparseShape {
            num_heads: 40,
            q_len: 20000,
            kv_len: 20000,
            block_m: 128,
            block_n: 64,
        })
        .unwrap();
    assert_eq!(compiled.metas.len(), 2);
    // A KV cache keeps a ring of one chunk in the chunked layers (8192 / 16 = 512 pages for
    // decode), every page in the global ones.
    let cache = KvCache::for_plan(cache_config(48, 8, 128, 1 << 20), &c.plan).unwrap();
    assert_eq!(
        cache.capacity(0).unwrap(),
        LayerCapacity::Windowed {
            sink_pages: 0,
            ring_pages: 512
        }
    );
    assert_eq!(cache.capacity(3).unwrap(), LayerCapacity::Full);
}

fn cache_config(
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    max_seq_len: usize,
) -> KvCacheConfig {
    KvCacheConfig {
        num_layers: layers,
        num_kv_heads: kv_heads,
        head_dim,
        dtype: DType::BF16,
        page_size: 16,
        max_seq_len,
        max_chunk: 1,
        pool: PoolSize::Sequences(1),
    }
}

#[test]
fn jamba_one_attention_layer_in_eight() {
    let c = config("jamba-v0.1.json");
    assert_eq!(kinds(&c.plan), repeat("----D---", 32));
    assert_eq!(c.plan.layers[0], Layer::non_attention("mamba").unwrap());
    settings_all(&c.plan, plain);
    assert_eq!(c.head_dim_for(32), Some(128));
    // Pages only for the four attention layers.
    let cache = KvCache::for_plan(cache_config(32, 8, 128, 4096), &c.plan).unwrap();
    for l in 0..32 {
        let want = if l % 8 == 4 { 4096 / 16 } else { 0 };
        assert_eq!(cache.num_pages(l).unwrap(), want, "layer {l}");
        if want == 0 {
            assert_eq!(cache.capacity(l).unwrap(), LayerCapacity::NoKv);
        }
    }
}

#[test]
fn minimax_softmax_every_eighth_layer() {
    let c = config("minimax-text-01.json");
    assert_eq!(kinds(&c.plan), repeat("-------D", 80));
    assert_eq!(
        c.plan.layers[0],
        Layer::non_attention("linear_attention").unwrap()
    );
    assert_eq!(
        (c.head_dim_for(64), c.num_key_value_heads),
        (Some(128), Some(8))
    );
    assert_eq!(c.plan.attention_layers().count(), 10);
    // attn_type_list of the wrong length names the field.
    let mut v = load("minimax-text-01.json");
    v["attn_type_list"].as_array_mut().unwrap().pop();
    match LayerPlan::from_hf_config(&v) {
        Err(Error::Config { field, message }) => {
            assert_eq!(field, "attn_type_list");
            assert!(message.contains("has 79 entries"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn qwen3_next_full_attention_every_fourth_layer() {
    let c = config("qwen3-next-80b-a3b.json");
    assert_eq!(kinds(&c.plan), repeat("---D", 48));
    assert_eq!(
        c.plan.layers[0],
        Layer::non_attention("linear_attention").unwrap()
    );
    // head_dim 256 is recorded (the kernels' head_dims are another matter).
    assert_eq!((c.head_dim, c.num_key_value_heads), (Some(256), Some(2)));
    // The plan's JSON keeps the layers that are not attention.
    let json = c.plan.to_json();
    assert!(
        json.contains("{\"non_attention\":{\"kind\":\"linear_attention\"}}"),
        "{json}"
    );
    assert_eq!(LayerPlan::from_json(&json).unwrap(), c.plan);
}

#[test]
fn dense_and_windowed_families() {
    let c = config("llama-3.1-8b.json");
    assert_eq!(kinds(&c.plan), "D".repeat(32));
    assert_eq!(
        (c.head_dim_for(32), c.num_key_value_heads),
        (Some(128), Some(8))
    );
    settings_all(&c.plan, plain);

    let c = config("mistral-7b-v0.1.json");
    assert_eq!(kinds(&c.plan), "W".repeat(32));
    assert_eq!(window(&c.plan, 31), 4096);

    let c = config("mixtral-8x7b-v0.1.json");
    assert_eq!(kinds(&c.plan), "D".repeat(32));

    let c = config("qwen2.5-7b.json");
    assert_eq!(kinds(&c.plan), "D".repeat(28));
    assert_eq!(
        (c.head_dim_for(28), c.num_key_value_heads),
        (Some(128), Some(4))
    );
    // Switching Qwen2's window on windows the layers from max_window_layers (28: none).
    let mut v = load("qwen2.5-7b.json");
    v["use_sliding_window"] = Value::Bool(true);
    v["max_window_layers"] = 20.into();
    assert_eq!(
        kinds(&LayerPlan::from_hf_config(&v).unwrap()),
        format!("{}{}", "D".repeat(20), "W".repeat(8))
    );

    let c = config("phi-3-mini-4k-instruct.json");
    assert_eq!(kinds(&c.plan), "W".repeat(32));
    assert_eq!(window(&c.plan, 0), 2047);
    assert_eq!(c.head_dim_for(32), Some(96));
}

#[test]
fn gemma_2_3_and_4() {
    let c = config("gemma-2-9b.json");
    assert_eq!(kinds(&c.plan), repeat("WD", 42));
    assert_eq!(window(&c.plan, 0), 4096);
    settings_all(&c.plan, |l, a| {
        assert_eq!(
            (a.scale, a.softcap),
            (Some(1.0 / 16.0), Some(50.0)),
            "layer {l}"
        );
    });
    assert_eq!(
        (c.head_dim, c.dtype, c.dtype_name.as_deref()),
        (Some(256), None, Some("float32"))
    );

    let c = config("gemma-3-27b.json");
    assert_eq!(c.model_type.as_deref(), Some("gemma3_text"));
    assert_eq!(kinds(&c.plan), repeat("WWWWWD", 62));
    assert_eq!(window(&c.plan, 0), 1024);
    settings_all(&c.plan, |l, a| {
        assert_eq!(a.scale, Some((1.0 / 168f64.sqrt()) as f32), "layer {l}");
        assert_eq!((a.softcap, a.head_dim), (None, None), "layer {l}");
    });

    let c = config("gemma-4-31b.json");
    assert_eq!(kinds(&c.plan), repeat("WWWWWD", 60));
    assert_eq!((c.head_dim, c.num_key_value_heads), (Some(256), Some(16)));
    settings_all(&c.plan, |l, a| {
        let global = l % 6 == 5;
        assert_eq!(a.head_dim, global.then_some(512), "layer {l}");
        assert_eq!(a.num_kv_heads, global.then_some(4), "layer {l}");
        assert_eq!(a.scale, Some(1.0), "layer {l}");
    });
    // One cache holds both: each layer's pages take its own head_dim and kv heads.
    let cache = KvCache::for_plan(cache_config(60, 16, 256, 4096), &c.plan).unwrap();
    for l in [0, 4, 5, 59] {
        let p = cache.layout(l).unwrap();
        let want = if l % 6 == 5 { (4, 512) } else { (16, 256) };
        assert_eq!((p.num_kv_heads, p.head_dim), want, "layer {l}");
    }
}

#[test]
fn gpt_oss_and_command_r7b() {
    let c = config("gpt-oss-20b.json");
    assert_eq!(kinds(&c.plan), repeat("WD", 24));
    assert_eq!(window(&c.plan, 0), 128);
    settings_all(&c.plan, |l, a| assert!(a.learnable_sinks, "layer {l}"));
    assert_eq!((c.head_dim, c.num_key_value_heads), (Some(64), Some(8)));

    let c = config("command-r7b.json");
    assert_eq!(kinds(&c.plan), repeat("WWWD", 32));
    assert_eq!(window(&c.plan, 0), 4096);
    settings_all(&c.plan, plain);
}

#[test]
fn alibi_families() {
    let c = config("mpt-7b.json");
    assert_eq!(kinds(&c.plan), "D".repeat(32));
    settings_all(&c.plan, |l, a| {
        assert!(a.alibi && a.scale.is_none(), "layer {l}")
    });
    assert_eq!(
        (c.num_attention_heads, c.head_dim_for(32)),
        (Some(32), Some(128))
    );

    let c = config("bloom-560m.json");
    assert_eq!(kinds(&c.plan), "D".repeat(24));
    settings_all(&c.plan, |l, a| assert!(a.alibi, "layer {l}"));
    assert_eq!(c.head_dim_for(16), Some(64));

    let c = config("falcon-7b.json");
    assert_eq!(kinds(&c.plan), "D".repeat(32));
    settings_all(&c.plan, plain);
    assert_eq!(
        (c.num_key_value_heads, c.head_dim_for(71)),
        (Some(1), Some(64))
    );
}

#[test]
fn recorded_head_dims_do_not_bypass_the_kernels_checks() {
    // A plan may record any head_dim; a problem of a head_dim the kernels lack is still the
    // typed error of the problem's validation.
    let v: Value = serde_json::json!({"layers": [
        {"attention": {"patterns": {"causal": true}, "head_dim": 72}}
    ]});
    let plan = LayerPlan::from_json(&v.to_string()).unwrap();
    let d = plan.attention(0).unwrap().head_dim.unwrap();
    let seqs = SeqLens::Uniform {
        batch: 1,
        q_len: 8,
        kv_len: 8,
    };
    let r = AttnProblem::new(seqs, 2, 2, d as u32, DType::F16);
    assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
}

#[test]
fn every_config_compiles_and_round_trips() {
    for name in [
        "llama-4-scout-17b-16e.json",
        "jamba-v0.1.json",
        "minimax-text-01.json",
        "qwen3-next-80b-a3b.json",
        "llama-3.1-8b.json",
        "mistral-7b-v0.1.json",
        "mixtral-8x7b-v0.1.json",
        "qwen2.5-7b.json",
        "phi-3-mini-4k-instruct.json",
        "gemma-2-9b.json",
        "gemma-3-27b.json",
        "gemma-4-31b.json",
        "gpt-oss-20b.json",
        "command-r7b.json",
        "mpt-7b.json",
        "bloom-560m.json",
        "falcon-7b.json",
    ] {
        let c = config(name);
        let heads = c.num_attention_heads.unwrap();
        c.plan.validate(heads, 5000).unwrap();
        let compiled = c
            .plan
            .compile(SparseShape {
                num_heads: heads,
                q_len: 5000,
                kv_len: 5000,
                block_m: 128,
                block_n: 64,
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for (l, layer) in c.plan.layers.iter().enumerate() {
            assert_eq!(
                compiled.layer(l).is_some(),
                layer.is_attention(),
                "{name} layer {l}"
            );
        }
        assert_eq!(
            LayerPlan::from_json(&c.plan.to_json()).unwrap(),
            c.plan,
            "{name}"
        );
    }
}
