//! Adaptive plans on a GPU (skipped without one, like every GPU test): the device pipeline
//! (summaries, scores, selection, compaction, forward) on CUDA selects exactly as the f64
//! reference on the contract's exact-arithmetic inputs, and its output equals the reference
//! under that selection; caller scores too.

mod common;

use common::select;

use common::{assert_matches, random_tensor, tol, widen, Rng};
use half::f16;
use sparse_attn::adaptive::{
    given_shape, AdaptivePlan, GivenScores, Grouping, SelectInputs, Selection,
};
use sparse_attn::reference::{attention, RefInputs};
use sparse_attn::{AttnOptions, AttnProblem, Element, SeqLens};

#[test]
fn gpu_adaptive_pipeline_matches_the_reference() {
    let Some(gpu) = common::gpu("gpu_adaptive_pipeline_matches_the_reference") else {
        return;
    };
    let (heads, kv_heads, d) = (4usize, 2usize, 128u32);
    for (json, grouping, lens) in [
        (
            r#"{"top_k": {"block": 64, "k": 3, "keep_sinks": 1, "keep_local": 1, "score": "pooled_qk"}}"#,
            Grouping::Prefill,
            vec![(1000usize, 3000usize), (512, 512)],
        ),
        (
            r#"{"top_k": {"block": 32, "k": 8, "keep_local": 1, "score": "minmax", "share": "kv_group"}}"#,
            Grouping::Decode,
            vec![(1, 4000), (1, 77)],
        ),
        (
            r#"{"top_p": {"block": 64, "p": 0.8, "max_k": 8, "keep_local": 1, "score": "given"}}"#,
            Grouping::Prefill,
            vec![(700, 2000), (64, 64)],
        ),
    ] {
        let sel = select(json);
        let max = SeqLens::Uniform {
            batch: 2,
            q_len: 1024,
            kv_len: 4096,
        };
        let problem_max = AttnProblem::new(max, heads, kv_heads, d, f16::DTYPE).unwrap();
        let opts = AttnOptions {
            causal: true,
            scale: Some(1.0 / 16.0),
            ..AttnOptions::default()
        };
        let plan = AdaptivePlan::new(&problem_max, &sel, grouping, &opts).unwrap();
        let gplan = plan.clone().into_gpu(&gpu).unwrap();
        let seqs = SeqLens::varlen_from_lens(&lens).unwrap();
        let problem = AttnProblem::new(seqs.clone(), heads, kv_heads, d, f16::DTYPE).unwrap();
        let mut rng = Rng::new(common::base_seed());
        let q: Vec<f16> = common::exact_tensor(&mut rng, problem.q_elems());
        let k: Vec<f16> = common::exact_tensor(&mut rng, problem.kv_elems());
        let v: Vec<f16> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
        let [groups, blocks] = given_shape(&sel, &problem, grouping);
        let scores: Vec<f32> = (0..2 * heads * groups * blocks)
            .map(|i| ((i * 7919) % 1009) as f32 / 100.0)
            .collect();
        let given = json.contains("given").then_some(GivenScores {
            scores: &scores,
            heads,
        });
        let (qf, kf, vf) = (widen(&q), widen(&k), widen(&v));
        let selection = Selection::compute(
            &problem,
            &sel,
            &SelectInputs {
                q: &qf,
                k: &kf,
                scale: 1.0 / 16.0,
                grouping,
                given,
            },
        )
        .unwrap();
        let r = gplan.run_host(&seqs, &q, &k, &v, given).unwrap();
        assert_eq!(
            r.bits,
            plan.bits_of(&selection).unwrap(),
            "{json}: selection"
        );
        let want = attention(
            &problem,
            &RefInputs {
                q: &qf,
                k: &kf,
                v: &vf,
                scale: 1.0 / 16.0,
                softcap: 0.0,
                sink_logits: None,
                alibi_slopes: None,
            },
            selection.allowed(true),
        );
        assert_matches(json, &problem, &r.out, &r.lse, &want, tol(f16::DTYPE));
    }
}
