//! The K/V append kernel on the CPU emulator against the host storage's writes, through a
//! dense layer and a ring layer that wraps.

mod common;

use common::{assert_same_bits, base_seed, random_tensor, Rng};
use half::f16;
use sparse_attn::kv_cache::append::{append_emulated, placement_slots};
use sparse_attn::kv_cache::{HostKvStorage, KvCache, KvCacheConfig, LayerCapacity, PoolSize};
use sparse_attn::{DType, Error};

#[test]
fn append_kernel_matches_host_writes() {
    let seed = base_seed();
    let (heads, dim, page) = (2, 64, 16);
    let config = KvCacheConfig {
        num_layers: 2,
        num_kv_heads: heads,
        head_dim: dim,
        dtype: DType::F16,
        page_size: page,
        max_seq_len: 4096,
        max_chunk: 8,
        pool: PoolSize::Sequences(2),
    };
    let caps = vec![
        LayerCapacity::Full,
        LayerCapacity::Windowed {
            sink_pages: 1,
            ring_pages: 5,
        },
    ];
    let mut cache = KvCache::new(config, caps).unwrap();
    let mut host = HostKvStorage::<f16>::new(&cache).unwrap();
    let layout = cache.layout(0).unwrap();
    // The kernel's copy of each layer's pools.
    let mut pools: Vec<(Vec<f16>, Vec<f16>)> = (0..2)
        .map(|l| {
            let p = host.layer(l).unwrap();
            (p.k.clone(), p.v.clone())
        })
        .collect();
    let mut rng = Rng::new(seed);
    let seqs = [cache.add_sequence(), cache.add_sequence()];
    for step in 0..60 {
        let seq = seqs[step % 2];
        let n = 1 + step % 8;
        let placement = cache.reserve_append(seq, n).unwrap();
        let k: Vec<f16> = random_tensor(&mut rng, n * heads * dim, 1.0);
        let v: Vec<f16> = random_tensor(&mut rng, n * heads * dim, 1.0);
        for (layer, (kp, vp)) in pools.iter_mut().enumerate() {
            host.write_kv(layer, &placement, &k, &v).unwrap();
            let slots =
                placement_slots(&placement, layer, &layout, cache.num_pages(layer).unwrap())
                    .unwrap();
            append_emulated(&layout, kp, vp, &slots, &k, &v).unwrap();
            let want = host.layer(layer).unwrap();
            let what =
                format!("step {step} layer {layer} (seed {seed}): kernel pages vs host writes");
            assert_same_bits(&format!("{what}: k"), kp, &want.k);
            assert_same_bits(&format!("{what}: v"), vp, &want.v);
        }
    }
}

#[test]
fn append_rejects_slots_outside_the_pool() {
    let config = KvCacheConfig {
        num_layers: 1,
        num_kv_heads: 1,
        head_dim: 64,
        dtype: DType::F16,
        page_size: 8,
        max_seq_len: 64,
        max_chunk: 1,
        pool: PoolSize::Sequences(1),
    };
    let cache = KvCache::new(config, vec![LayerCapacity::Full]).unwrap();
    let layout = cache.layout(0).unwrap();
    let n = cache.num_pages(0).unwrap() * layout.page_stride();
    let (mut k, mut v) = (vec![f16::ZERO; n], vec![f16::ZERO; n]);
    let row = vec![f16::ONE; 64];
    let pages = cache.num_pages(0).unwrap() as i32;
    for bad in [[pages, 0], [-1, 0], [0, 8], [0, -1]] {
        let r = append_emulated(&layout, &mut k, &mut v, &bad, &row, &row);
        assert!(matches!(r, Err(Error::Cache(_))), "{bad:?}: {r:?}");
    }
    assert!(
        k.iter().all(|x| *x == f16::ZERO),
        "nothing written on error"
    );
    let r = append_emulated(&layout, &mut k, &mut v, &[0, 0], &row[..32], &row);
    assert!(matches!(r, Err(Error::Shape(_))));
}
