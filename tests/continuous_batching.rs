//! The continuous-batching example's core (`sparse_attn::kv_cache::batching`, issue 12) on the
//! emulator: requests join and leave 3 slots, prefill chunks share launches with decode rows
//! and idle slots, a Gemma 3 style 5:1 cache with rings for the windowed layers; every layer
//! of every step against the f64 reference.

mod common;

use common::{base_seed, tol};
use half::bf16;
use sparse_attn::kv_cache::batching::{self, BatchingConfig, ReferenceCheck, Request};
use sparse_attn::kv_cache::LayerCapacity;
use sparse_attn::{DType, Error};

#[test]
fn every_step_of_every_layer_matches_the_reference() {
    let seed = base_seed();
    let config = BatchingConfig {
        seed,
        ..BatchingConfig::gemma3_small().unwrap()
    };
    // More requests than slots (sequences leave and others take their pages), one arriving
    // after a gap (idle steps), prompts of one token to several chunks, a prompt of five
    // chunks that outgrows the windowed layers' rings (96 tokens).
    let requests = [
        Request {
            arrival: 0,
            prompt: 100,
            generate: 3,
        },
        Request {
            arrival: 0,
            prompt: 1,
            generate: 30,
        },
        Request {
            arrival: 1,
            prompt: 24,
            generate: 1,
        },
        Request {
            arrival: 2,
            prompt: 50,
            generate: 6,
        },
        Request {
            arrival: 3,
            prompt: 5,
            generate: 4,
        },
        Request {
            arrival: 200,
            prompt: 30,
            generate: 2,
        },
    ];
    let mut check = ReferenceCheck::new();
    let mut steps_with_idle_slot = 0usize;
    let mut last = usize::MAX;
    let report = batching::run_emulated::<bf16>(&config, &requests, &common::emu_run(), |s| {
        let e = check.check(s).unwrap();
        assert!(
            e.out <= tol(DType::BF16) && e.lse <= 1e-3,
            "seed {seed} step {} layer {} lens {:?}: {e:?}",
            s.step,
            s.layer,
            s.seqs
        );
        if s.step != last {
            last = s.step;
            steps_with_idle_slot += usize::from(s.requests.iter().any(Option::is_none));
        }
    })
    .unwrap();
    let layers = config.layers.layers.len();
    assert_eq!(report.plans_built(), 2, "{:?}", report.plans);
    assert_eq!(report.plans[0].layers, vec![0, 1, 2, 3, 4]);
    assert_eq!(report.plans[1].layers, vec![5]);
    assert_eq!(report.launches, report.steps * layers);
    assert_eq!(check.checked, report.launches);
    assert_eq!(report.joined, requests.len());
    assert_eq!(report.finished, requests.len());
    let prompts: usize = requests.iter().map(|r| r.prompt).sum();
    let decoded: usize = requests.iter().map(|r| r.generate - 1).sum();
    assert_eq!(report.prefill_tokens, prompts);
    assert_eq!(report.decode_tokens, decoded);
    assert!(report.mixed_steps >= 5, "{report:?}");
    assert!(
        report.idle_steps > 0 && steps_with_idle_slot > 0,
        "{report:?}"
    );
    assert_eq!(report.max_in_flight, config.slots);
    // The windowed layers' rings wrapped (the longest sequence outgrew them) while the global
    // layer kept every page.
    let LayerCapacity::Windowed {
        sink_pages,
        ring_pages,
    } = report.capacities[0]
    else {
        panic!("layer 0 should be windowed: {:?}", report.capacities[0]);
    };
    assert!(report.longest > (sink_pages + ring_pages) * config.page_size);
    assert_eq!(report.capacities[5], LayerCapacity::Full);
    assert!(report.peak_pages <= report.pool_pages);
}

#[test]
fn bad_requests_and_layers_are_typed_errors() {
    let config = BatchingConfig::gemma3_small().unwrap();
    let run = common::emu_run();
    let never = |_: &batching::LayerStep<'_, bf16>| panic!("nothing may run");
    for r in [
        Request {
            arrival: 0,
            prompt: 0,
            generate: 1,
        },
        Request {
            arrival: 0,
            prompt: 300,
            generate: 30,
        },
    ] {
        let e = batching::run_emulated::<bf16>(&config, &[r], &run, never).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{e:?}");
    }
    // A non-causal layer cannot serve a growing cache.
    let mut bad = config.clone();
    bad.layers =
        sparse_attn::pattern::LayerPlan::uniform(2, sparse_attn::pattern::Pattern::dense())
            .unwrap();
    let ok = Request {
        arrival: 0,
        prompt: 3,
        generate: 2,
    };
    let e = batching::run_emulated::<bf16>(&bad, &[ok], &run, never).unwrap_err();
    assert!(matches!(e, Error::Pattern(_)), "{e:?}");
}
