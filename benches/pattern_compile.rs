//! Pattern compile time at long context: 131072 tokens x 32 heads, 64 x 64 tiles (the forward
//! kernel's). Metadata must cost far less than the attention it drives (FlexAttention's block
//! mask construction is ~10x the attention time, attention-gym #149).
//!
//! Cases: a causal 4096 window (Mistral), 4 sinks + a 4096 window (StreamingLLM), causal dense,
//! 32 heads with 32 different windows (no row sharing: the per-head cost), dilated strides 1..8
//! per head (residue-class views), and Longformer (a 512 window + 64 global tokens: gathered
//! rows and keys).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sparse_attn::pattern::{BlockSparseMeta, Component, HeadPatterns, Pattern, SparseShape};

const TOKENS: usize = 131_072;
const HEADS: usize = 32;

fn cases() -> Vec<(&'static str, HeadPatterns)> {
    let per_head = (0..HEADS as i64)
        .map(|h| Pattern::causal_window(2048 + 64 * h).expect("valid window"))
        .collect();
    vec![
        (
            "window4096",
            Pattern::causal_window(4096).expect("valid").into(),
        ),
        (
            "sinks4+window4096",
            Pattern::streaming(4, 4096).expect("valid").into(),
        ),
        ("causal_dense", Pattern::causal().into()),
        ("32_distinct_windows", HeadPatterns::PerHead(per_head)),
        (
            "dilated_1_2_4_8",
            HeadPatterns::PerHead(
                (0..HEADS as i64)
                    .map(|h| Pattern::new(true, vec![Component::dilated(1 << (h % 4)).unwrap()]))
                    .collect(),
            ),
        ),
        (
            "longformer512+64global",
            Pattern::new(
                true,
                vec![
                    Component::window(511, 0).unwrap(),
                    Component::global((0..64).map(|g| g * 2048 + 1).collect()).unwrap(),
                ],
            )
            .into(),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let shape = SparseShape {
        num_heads: HEADS,
        q_len: TOKENS,
        kv_len: TOKENS,
        block_m: 64,
        block_n: 64,
    };
    let mut group = c.benchmark_group("pattern_compile_131072x32");
    group.sample_size(20);
    for (name, set) in cases() {
        let meta = BlockSparseMeta::compile(&set, shape).expect("compiles");
        println!(
            "{name}: {} row sets, {} tiles listed ({} full, {} partial)",
            meta.num_sets(),
            meta.tiles_listed(),
            meta.full_tiles().len(),
            meta.partial_tiles().len()
        );
        group.bench_with_input(BenchmarkId::from_parameter(name), &set, |b, set| {
            b.iter(|| BlockSparseMeta::compile(set, shape).expect("compiles"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
