//! Executing adaptive selections on the emulator (issue 15): an `AdaptivePlan` built once for
//! maximum lengths runs calls of other lengths; the selection bits (here the f64 reference's
//! own selection) go where the device selection writes them, the compaction kernel builds the
//! tile lists and views, and the forward kernel's output must equal the f64 reference
//! evaluated with that very selection (the contract's rule: selection and arithmetic checked
//! apart). The work is checked too: the kernel visits exactly the kv tiles holding an allowed
//! pair, per query tile.

mod common;

use common::select;

use common::{assert_matches, base_seed, random_tensor, tol, widen, Rng};
use half::{bf16, f16};
use sparse_attn::adaptive::{AdaptivePlan, BlockSelect, Grouping, SelectInputs, Selection};
use sparse_attn::attention::StepKv;
use sparse_attn::pattern::Component;
use sparse_attn::reference::{attention, RefInputs};
use sparse_attn::{AttnOptions, AttnProblem, Element, EmuRun, Error, SeqLens};

struct Heads {
    heads: usize,
    kv_heads: usize,
    head_dim: u32,
}

fn plan<T: Element>(
    sel: &BlockSelect,
    grouping: Grouping,
    max: SeqLens,
    s: &Heads,
    causal: bool,
) -> AdaptivePlan {
    union_plan::<T>(sel, &[], grouping, max, s, causal)
}

/// A plan for `sel` joined to the static components `statics`.
fn union_plan<T: Element>(
    sel: &BlockSelect,
    statics: &[Component],
    grouping: Grouping,
    max: SeqLens,
    s: &Heads,
    causal: bool,
) -> AdaptivePlan {
    let problem = AttnProblem::new(max, s.heads, s.kv_heads, s.head_dim, T::DTYPE).unwrap();
    let opts = AttnOptions {
        causal,
        ..AttnOptions::default()
    };
    AdaptivePlan::with_union(&problem, sel, statics, grouping, &opts).unwrap()
}

/// One call of `plan` at `lens`: the reference selection from the call's q and k, its bits,
/// the emulated run checked against the reference under that selection, and the kv tiles
/// visited checked against those holding an allowed pair.
fn call<T: Element>(plan: &AdaptivePlan, lens: &[(usize, usize)], s: &Heads, seed: u64) {
    let seqs = SeqLens::varlen_from_lens(lens).unwrap();
    let problem =
        AttnProblem::new(seqs.clone(), s.heads, s.kv_heads, s.head_dim, T::DTYPE).unwrap();
    let mut rng = Rng::new(seed);
    let q: Vec<T> = random_tensor(&mut rng, problem.q_elems(), 1.0);
    let k: Vec<T> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
    let v: Vec<T> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
    let (qf, kf, vf) = (widen(&q), widen(&k), widen(&v));
    let scale = plan.attn().scale();
    let selection = Selection::compute(
        &problem,
        plan.component(),
        &SelectInputs {
            q: &qf,
            k: &kf,
            scale,
            grouping: plan.grouping(),
            given: None,
        },
    )
    .unwrap();
    let bits = plan.bits_of(&selection).unwrap();
    let counter = std::cell::Cell::new(0);
    let run = EmuRun {
        tiles_visited: Some(&counter),
        ..common::emu_run()
    };
    let (out, lse) = plan
        .run_emulated_with_bits(&seqs, &q, StepKv::Contiguous { k: &k, v: &v }, &bits, &run)
        .unwrap();
    let allowed = selection.allowed_with(plan.causal(), plan.statics());
    // The host twin of the applied mask (what --mask-out exports) is the reference's.
    for (b, &(q_len, kv_len)) in lens.iter().enumerate() {
        for h in 0..s.heads {
            for i in 0..q_len {
                for j in 0..kv_len {
                    assert_eq!(
                        plan.allowed_by_bits(&bits, &seqs, b, h, i, j),
                        allowed(b, h, i, j),
                        "b {b} h {h} i {i} j {j}"
                    );
                }
            }
        }
    }
    let want = attention(
        &problem,
        &RefInputs {
            q: &qf,
            k: &kf,
            v: &vf,
            scale,
            softcap: 0.0,
            sink_logits: None,
            alibi_slopes: None,
        },
        &allowed,
    );
    let what = format!("{} {lens:?} seed {seed}", T::DTYPE.name());
    assert_matches(&what, &problem, &out, &lse, &want, tol(T::DTYPE));

    // Work: per (sequence, head, query tile) the kv tiles with an allowed pair.
    let bm = plan.attn().tiles().block_m as usize;
    let bn = plan.attn().tiles().block_n as usize;
    let mut expect = 0u64;
    for (b, &(q_len, kv_len)) in lens.iter().enumerate() {
        for h in 0..s.heads {
            for m in 0..q_len.div_ceil(bm) {
                let rows = m * bm..((m + 1) * bm).min(q_len);
                for t in 0..kv_len.div_ceil(bn) {
                    let keys = t * bn..((t + 1) * bn).min(kv_len);
                    let hit = rows
                        .clone()
                        .any(|i| keys.clone().any(|j| allowed(b, h, i, j)));
                    expect += hit as u64;
                }
            }
        }
    }
    assert_eq!(counter.get(), expect, "{what}: kv tiles visited");
}

#[test]
fn prefill_top_k_mean_k_chunks_of_one_plan() {
    let s = Heads {
        heads: 2,
        kv_heads: 1,
        head_dim: 64,
    };
    let sel = select(
        r#"{"top_k": {"block": 32, "k": 2, "keep_sinks": 2, "keep_local": 1, "score": "mean_k"}}"#,
    );
    let max = SeqLens::Uniform {
        batch: 1,
        q_len: 256,
        kv_len: 256,
    };
    let p = plan::<f16>(&sel, Grouping::Prefill, max, &s, true);
    let seed = base_seed();
    // A whole prefill, then chunks that start inside a q_block (one whose first row sits one
    // key before the end of a kv tile: that tile is partial) and a tiny one.
    call::<f16>(&p, &[(200, 200)], &s, seed);
    call::<f16>(&p, &[(130, 250)], &s, seed + 1);
    call::<f16>(&p, &[(100, 162)], &s, seed + 2);
    call::<f16>(&p, &[(3, 67)], &s, seed + 3);
}

#[test]
fn decode_kv_group_top_p_varlen_steps() {
    let s = Heads {
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
    };
    let sel = select(
        r#"{"top_p": {"block": 64, "p": 0.6, "min_k": 1, "max_k": 4, "keep_sinks": 1,
             "keep_local": 1, "score": "pooled_qk", "share": "kv_group"}}"#,
    );
    let max = SeqLens::Uniform {
        batch: 2,
        q_len: 2,
        kv_len: 640,
    };
    let p = plan::<bf16>(&sel, Grouping::Decode, max, &s, true);
    let seed = base_seed() + 10;
    call::<bf16>(&p, &[(1, 577), (2, 300)], &s, seed);
    // The same plan, shorter sequences: nothing of the first call may remain.
    call::<bf16>(&p, &[(1, 64), (1, 1)], &s, seed + 1);
}

#[test]
fn small_blocks_without_causality_top_rel() {
    // Blocks of 16 keys (four per kv tile) and groups of 16 rows: tiles whose blocks are
    // partly selected, groups of one tile selecting differently.
    let s = Heads {
        heads: 1,
        kv_heads: 1,
        head_dim: 64,
    };
    let sel = select(
        r#"{"top_rel": {"block": 16, "alpha": 0.5, "min_k": 1, "max_k": 6, "keep_sinks": 0,
             "keep_local": 1, "score": "mean_k"}}"#,
    );
    let max = SeqLens::Uniform {
        batch: 1,
        q_len: 160,
        kv_len: 224,
    };
    let p = plan::<f16>(&sel, Grouping::Prefill, max, &s, false);
    call::<f16>(&p, &[(160, 224)], &s, base_seed() + 20);
}

/// A selection joined to static interval components: a token window and sink tokens beside
/// sparse `top_k` blocks (windows ending inside kv tiles, sinks straddling none), a
/// non-causal window with a chunk, and decode rows with a window. The output is the
/// reference's under the union, the tiles visited exactly those with an allowed pair.
#[test]
fn unions_with_windows_sinks_and_chunks() {
    let s = Heads {
        heads: 2,
        kv_heads: 1,
        head_dim: 64,
    };
    let sel = select(r#"{"top_k": {"block": 32, "k": 1, "score": "mean_k"}}"#);
    let statics = [
        Component::window_size(40).unwrap(),
        Component::sinks(5).unwrap(),
    ];
    let max = SeqLens::Uniform {
        batch: 1,
        q_len: 256,
        kv_len: 256,
    };
    let p = union_plan::<f16>(&sel, &statics, Grouping::Prefill, max, &s, true);
    let seed = base_seed() + 40;
    call::<f16>(&p, &[(200, 200)], &s, seed);
    call::<f16>(&p, &[(130, 250)], &s, seed + 1);
    call::<f16>(&p, &[(3, 67)], &s, seed + 2);

    let sel = select(
        r#"{"top_rel": {"block": 16, "alpha": 0.5, "max_k": 2, "keep_local": 0, "score": "pooled_qk"}}"#,
    );
    let statics = [
        Component::window(20, 9).unwrap(),
        Component::chunked(48).unwrap(),
    ];
    let max = SeqLens::Uniform {
        batch: 1,
        q_len: 160,
        kv_len: 224,
    };
    let p = union_plan::<bf16>(&sel, &statics, Grouping::Prefill, max, &s, false);
    call::<bf16>(&p, &[(160, 224)], &s, seed + 3);

    let sel = select(r#"{"top_k": {"block": 64, "k": 1, "keep_local": 0, "score": "minmax"}}"#);
    let statics = [Component::window_size(70).unwrap()];
    let max = SeqLens::Uniform {
        batch: 2,
        q_len: 2,
        kv_len: 640,
    };
    let p = union_plan::<f16>(&sel, &statics, Grouping::Decode, max, &s, true);
    call::<f16>(&p, &[(1, 577), (2, 300)], &s, seed + 4);
}

#[test]
fn unions_the_compaction_cannot_walk_are_refused() {
    let sel = select(r#"{"top_k": {"block": 64, "k": 1, "score": "mean_k"}}"#);
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: 1,
            q_len: 64,
            kv_len: 64,
        },
        1,
        1,
        64,
        sparse_attn::DType::F16,
    )
    .unwrap();
    let opts = AttnOptions::default();
    let w = Component::window_size(8).unwrap();
    for statics in [
        vec![w.clone(), w.clone(), w.clone()],
        vec![Component::global(vec![0, 3]).unwrap()],
        vec![Component::dilated(2).unwrap()],
    ] {
        let e = AdaptivePlan::with_union(&problem, &sel, &statics, Grouping::Prefill, &opts)
            .unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{statics:?}: {e}");
    }
}

#[test]
fn bad_calls_are_typed_errors() {
    let s = Heads {
        heads: 2,
        kv_heads: 2,
        head_dim: 64,
    };
    let sel = select(r#"{"top_k": {"block": 64, "k": 1, "score": "mean_k"}}"#);
    let max = SeqLens::Uniform {
        batch: 1,
        q_len: 64,
        kv_len: 128,
    };
    let p = plan::<f16>(&sel, Grouping::Prefill, max, &s, true);
    let seqs = SeqLens::varlen_from_lens(&[(64, 128)]).unwrap();
    let q = vec![f16::ZERO; 64 * 2 * 64];
    let k = vec![f16::ZERO; 128 * 2 * 64];
    let kv = StepKv::Contiguous { k: &k, v: &k };
    let run = common::emu_run();
    // Bits of the wrong size.
    let short = vec![0; p.layout().bits_len() - 1];
    assert!(matches!(
        p.run_emulated_with_bits(&seqs, &q, kv, &short, &run),
        Err(Error::Shape(_))
    ));
    // A call beyond the plan's maxima.
    let long = SeqLens::varlen_from_lens(&[(64, 129)]).unwrap();
    let k2 = vec![f16::ZERO; 129 * 2 * 64];
    let bits = vec![0; p.layout().bits_len()];
    assert!(p
        .run_emulated_with_bits(
            &long,
            &q,
            StepKv::Contiguous { k: &k2, v: &k2 },
            &bits,
            &run
        )
        .is_err());
    // A selection made for another component.
    let other = select(r#"{"top_k": {"block": 64, "k": 2, "score": "mean_k"}}"#);
    let problem = AttnProblem::new(seqs, 2, 2, 64, sparse_attn::DType::F16).unwrap();
    let zeros = vec![0.0f32; 64 * 2 * 64];
    let kz = vec![0.0f32; 128 * 2 * 64];
    let s2 = Selection::compute(
        &problem,
        &other,
        &SelectInputs {
            q: &zeros,
            k: &kz,
            scale: 0.125,
            grouping: Grouping::Prefill,
            given: None,
        },
    )
    .unwrap();
    assert!(matches!(p.bits_of(&s2), Err(Error::Pattern(_))));
}

/// The whole pipeline on the device (summaries, scores, selection, compaction, forward): on
/// exact-arithmetic inputs the device's selection equals the f64 reference's bit for bit, and
/// the output the reference under it.
#[test]
fn device_pipeline_selects_exactly_as_the_reference() {
    let s = Heads {
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
    };
    for (json, grouping, lens) in [
        (
            r#"{"top_k": {"block": 32, "k": 2, "keep_sinks": 1, "keep_local": 1, "score": "pooled_qk"}}"#,
            Grouping::Prefill,
            vec![(160usize, 200usize), (64, 64)],
        ),
        (
            r#"{"top_k": {"block": 16, "k": 3, "keep_local": 1, "score": "minmax", "share": "kv_group"}}"#,
            Grouping::Prefill,
            vec![(96, 130), (1, 40)],
        ),
        (
            r#"{"top_rel": {"block": 64, "alpha": 0.3, "max_k": 3, "keep_sinks": 1, "score": "mean_k"}}"#,
            Grouping::Decode,
            vec![(2, 300), (1, 129)],
        ),
    ] {
        let sel = select(json);
        let max = SeqLens::Uniform {
            batch: 2,
            q_len: 160,
            kv_len: 320,
        };
        let problem_max =
            AttnProblem::new(max, s.heads, s.kv_heads, s.head_dim, f16::DTYPE).unwrap();
        let opts = AttnOptions {
            causal: true,
            scale: Some(1.0 / 16.0),
            ..AttnOptions::default()
        };
        let plan = AdaptivePlan::new(&problem_max, &sel, grouping, &opts).unwrap();
        let seqs = SeqLens::varlen_from_lens(&lens).unwrap();
        let problem =
            AttnProblem::new(seqs.clone(), s.heads, s.kv_heads, s.head_dim, f16::DTYPE).unwrap();
        let mut rng = Rng::new(base_seed() + 30);
        let q: Vec<f16> = common::exact_tensor(&mut rng, problem.q_elems());
        let k: Vec<f16> = common::exact_tensor(&mut rng, problem.kv_elems());
        let v: Vec<f16> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
        let (qf, kf, vf) = (widen(&q), widen(&k), widen(&v));
        let selection = Selection::compute(
            &problem,
            &sel,
            &SelectInputs {
                q: &qf,
                k: &kf,
                scale: 1.0 / 16.0,
                grouping,
                given: None,
            },
        )
        .unwrap();
        let r = plan
            .run_emulated(&seqs, &q, &k, &v, None, &common::emu_run())
            .unwrap();
        assert_eq!(
            r.bits,
            plan.bits_of(&selection).unwrap(),
            "{json}: device selection"
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

/// The selection and the tile lists of a call without its forward launch
/// (`select_emulated`, `tiles_emulated`, what `sparse-attn viz` draws): the bits are those
/// `run_emulated` applies, and per (sequence, head, query tile) the lists hold, ascending,
/// the kv tiles every existing pair of which is allowed (full) and those with some allowed
/// pair (partial), nothing past the call's rows; bad calls are typed errors.
#[test]
fn selection_and_tile_lists_without_the_forward() {
    let s = Heads {
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
    };
    let lens = [(160usize, 200usize), (40, 320)];
    let mut seen_full = false;
    for json in [
        r#"{"top_k": {"block": 32, "k": 2, "keep_sinks": 1, "keep_local": 1, "score": "pooled_qk", "share": "kv_group"}}"#,
        r#"{"top_k": {"block": 64, "k": 1, "keep_local": 1, "score": "mean_k"}}"#,
        // Every candidate: full tiles below the diagonal, whatever the seed.
        r#"{"top_k": {"block": 16, "k": 20, "score": "mean_k"}}"#,
    ] {
        let max = SeqLens::Uniform {
            batch: 2,
            q_len: 160,
            kv_len: 320,
        };
        let plan = plan::<f16>(&select(json), Grouping::Prefill, max, &s, true);
        let seqs = SeqLens::varlen_from_lens(&lens).unwrap();
        let problem =
            AttnProblem::new(seqs.clone(), s.heads, s.kv_heads, s.head_dim, f16::DTYPE).unwrap();
        let mut rng = Rng::new(base_seed() + 40);
        let q: Vec<f16> = random_tensor(&mut rng, problem.q_elems(), 1.0);
        let k: Vec<f16> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
        let v: Vec<f16> = random_tensor(&mut rng, problem.kv_elems(), 1.0);
        let run = common::emu_run();
        let bits = plan.select_emulated(&seqs, &q, &k, None, &run).unwrap();
        let applied = plan.run_emulated(&seqs, &q, &k, &v, None, &run).unwrap();
        assert_eq!(bits, applied.bits, "{json}: the bits run_emulated applies");
        let tiles = plan.tiles_emulated(&seqs, &bits, &run).unwrap();
        let (bm, bn) = (tiles.block_m(), tiles.block_n());
        assert_eq!(bm, plan.attn().tiles().block_m as usize);
        assert_eq!(bn, plan.attn().tiles().block_n as usize);
        let (mut n_full, mut n_partial) = (0, 0);
        for (b, &(q_len, kv_len)) in lens.iter().enumerate() {
            for h in 0..s.heads {
                for m in 0..tiles.q_tiles() {
                    let rows = m * bm..((m + 1) * bm).min(q_len);
                    let (mut full, mut partial) = (Vec::new(), Vec::new());
                    for t in 0..kv_len.div_ceil(bn) {
                        let keys = t * bn..((t + 1) * bn).min(kv_len);
                        let pairs: Vec<bool> = rows
                            .clone()
                            .flat_map(|i| keys.clone().map(move |j| (i, j)))
                            .map(|(i, j)| plan.allowed_by_bits(&bits, &seqs, b, h, i, j))
                            .collect();
                        if !pairs.is_empty() && pairs.iter().all(|&a| a) {
                            full.push(t as i32);
                        } else if pairs.iter().any(|&a| a) {
                            partial.push(t as i32);
                        }
                    }
                    let at = format!("{json}: b {b} h {h} tile {m}");
                    assert_eq!(tiles.full(b, h, m), &full[..], "{at}: full");
                    assert_eq!(tiles.partial(b, h, m), &partial[..], "{at}: partial");
                    n_full += full.len();
                    n_partial += partial.len();
                }
            }
        }
        assert!(n_partial > 0, "{json}: no partial tiles");
        seen_full |= n_full > 0;
        // Out of range: empty.
        assert!(tiles.full(2, 0, 0).is_empty() && tiles.partial(0, 0, 99).is_empty());

        // Typed errors before any launch.
        let err = plan.tiles_emulated(&seqs, &bits[1..], &run).unwrap_err();
        assert!(matches!(err, Error::Shape(_)), "{err}");
        let three = SeqLens::varlen_from_lens(&[(1, 1); 3]).unwrap();
        assert!(plan.tiles_emulated(&three, &bits, &run).is_err());
        let long = SeqLens::varlen_from_lens(&[(161, 200), (1, 1)]).unwrap();
        assert!(plan.tiles_emulated(&long, &bits, &run).is_err());
        let qb: Vec<bf16> = q.iter().map(|x| bf16::from_f32(x.to_f32())).collect();
        let kb: Vec<bf16> = k.iter().map(|x| bf16::from_f32(x.to_f32())).collect();
        let err = plan
            .select_emulated(&seqs, &qb, &kb, None, &run)
            .unwrap_err();
        assert!(matches!(err, Error::Shape(_)), "{err}");
        let err = plan
            .select_emulated(&seqs, &q[1..], &k, None, &run)
            .unwrap_err();
        assert!(matches!(err, Error::Shape(_)), "{err}");
    }
    assert!(seen_full, "no case listed a full tile");
}
