//! Adaptive decode steps on the emulator (issue 15): `AdaptiveDecode` appends each token to a
//! paged cache with summaries (append kernel), scores (scoring kernel), selects (selection
//! kernel) and runs one `AdaptivePlan` through the block table, for a batch of varlen
//! sequences after a short prefill. Every step is checked against the f64 reference
//! evaluated as its own call (q_len 1 over the p + 1 keys present): the selection the device
//! made equals the reference's exactly on exact-arithmetic inputs (minmax, pooled_qk; float
//! inputs: the margin rule), the applied bits follow the `reselect_every` rule (fresh
//! selection, or the reused content-chosen blocks with the forced blocks of the current
//! position and the blocks begun since the selection), and the output equals the reference under the
//! applied selection. Canaries (a reuse that does not re-force, stale summaries) must fail.

mod common;

use common::select;

use common::{assert_matches, base_seed, random_tensor, tol, widen, Rng};
use half::f16;
use sparse_attn::adaptive::{
    choose, masses, rank, AdaptiveDecode, BlockSelect, Choice, DecodeCanary, Grouping,
    SelectInputs, Selection, Share,
};
use sparse_attn::kv_cache::{HostKvStorage, KvCache, KvCacheConfig, LayerCapacity, PoolSize};
use sparse_attn::pattern::Component;
use sparse_attn::reference::{attention, RefInputs};
use sparse_attn::{AttnOptions, AttnProblem, DType, Error, SeqLens};

const D: usize = 64;
const PAGE: usize = 16;
/// Scale 1/16: with values in {-2..2}/4 every score is exact in f32.
const SCALE: f32 = 1.0 / 16.0;

#[derive(Clone, Copy, PartialEq)]
enum Data {
    /// Exact arithmetic: the device selection must equal the reference's.
    Exact,
    /// Gaussian-ish floats: the margin rule.
    Float,
}

struct Case {
    heads: usize,
    kv_heads: usize,
    prefill: Vec<usize>,
    steps: usize,
    data: Data,
    /// Before step `.0`, the driver forgets sequence `.1`'s selection (it then selects on its
    /// own phase, so steps mix fresh and reused sequences).
    forget: Option<(usize, usize)>,
    /// Static components joined to the selection (a token window, sink tokens).
    statics: Vec<Component>,
}

fn cache(case: &Case, caps: LayerCapacity, block: usize) -> KvCache {
    let max = case.prefill.iter().max().unwrap() + case.steps;
    KvCache::new(
        KvCacheConfig {
            num_layers: 1,
            num_kv_heads: case.kv_heads,
            head_dim: D,
            dtype: DType::F16,
            page_size: PAGE,
            max_seq_len: max,
            max_chunk: 16,
            pool: PoolSize::Sequences(case.prefill.len()),
        },
        vec![caps],
    )
    .unwrap()
    .with_summaries(block)
    .unwrap()
}

fn driver(case: &Case, sel: &BlockSelect) -> AdaptiveDecode {
    let max = case.prefill.iter().max().unwrap() + case.steps;
    let problem = AttnProblem::new(
        SeqLens::Uniform {
            batch: case.prefill.len(),
            q_len: 1,
            kv_len: max,
        },
        case.heads,
        case.kv_heads,
        D as u32,
        DType::F16,
    )
    .unwrap();
    let opts = AttnOptions {
        causal: true,
        scale: Some(SCALE),
        ..AttnOptions::default()
    };
    AdaptiveDecode::with_union(&problem, sel, &case.statics, &opts).unwrap()
}

/// The blocks of a selection row (`words` int32 words), ascending.
fn blocks_of(row: &[i32]) -> Vec<i64> {
    (0..row.len() * 32)
        .filter(|&j| (row[j / 32] as u32 >> (j % 32)) & 1 == 1)
        .map(|j| j as i64)
        .collect()
}

/// Runs the case's prefill and decode steps through `dec`, checking every step. Returns the
/// first selection mismatch as an error (what a canary must produce); output mismatches
/// panic. Returns the number of steps that reused a selection on success.
fn run_case(
    case: &Case,
    sel: &BlockSelect,
    canary: DecodeCanary,
    seed: u64,
) -> Result<usize, String> {
    let (h, hk) = (case.heads, case.kv_heads);
    let group = h / hk;
    let bsz = sel.block() as usize;
    let mut dec = driver(case, sel).with_canary(canary);
    let mut cache = cache(case, LayerCapacity::Full, bsz);
    let mut store = HostKvStorage::<f16>::new(&cache).unwrap();
    let seqs: Vec<_> = case.prefill.iter().map(|_| cache.add_sequence()).collect();
    let mut rng = Rng::new(seed);
    let gen = |rng: &mut Rng, n: usize| match case.data {
        Data::Exact => common::exact_tensor::<f16>(rng, n),
        Data::Float => random_tensor::<f16>(rng, n, 1.0),
    };
    // Every key, value and query of each sequence: [T_b, heads, D].
    let totals: Vec<usize> = case.prefill.iter().map(|&p| p + case.steps).collect();
    let ks: Vec<Vec<f16>> = totals.iter().map(|&t| gen(&mut rng, t * hk * D)).collect();
    let vs: Vec<Vec<f16>> = totals.iter().map(|&t| gen(&mut rng, t * hk * D)).collect();
    let qs: Vec<Vec<f16>> = totals.iter().map(|&t| gen(&mut rng, t * h * D)).collect();
    // Prefill through the append kernel, in chunks.
    for (b, &seq) in seqs.iter().enumerate() {
        let mut at = 0;
        while at < case.prefill[b] {
            let n = (case.prefill[b] - at).min(16);
            let pl = cache.reserve_append(seq, n).unwrap();
            let rows = at * hk * D..(at + n) * hk * D;
            store
                .append_emulated(0, &[&pl], &ks[b][rows.clone()], &vs[b][rows])
                .unwrap();
            at += n;
        }
    }
    let every = sel.reselect_every() as usize;
    let l = *dec.layout();
    // Per sequence: the content-chosen blocks of its last selection, per unit.
    let mut chosen: Vec<Vec<Vec<i64>>> = vec![vec![Vec::new(); l.units]; seqs.len()];
    // Per sequence: steps its selection has served (0: none yet).
    let mut served = vec![0usize; seqs.len()];
    // Per sequence: the block of its last selection's row.
    let mut block0 = vec![0i64; seqs.len()];
    let mut reused = 0;
    // Whether some step left a candidate out (the checks are not of a dense run).
    let mut sparse = false;
    let run = common::emu_run();
    for s in 0..case.steps {
        let pos: Vec<usize> = case.prefill.iter().map(|&p| p + s).collect();
        let row = |x: &Vec<f16>, p: usize, n: usize| x[p * n * D..(p + 1) * n * D].to_vec();
        let q: Vec<f16> = (0..seqs.len())
            .flat_map(|b| row(&qs[b], pos[b], h))
            .collect();
        let k: Vec<f16> = (0..seqs.len())
            .flat_map(|b| row(&ks[b], pos[b], hk))
            .collect();
        let v: Vec<f16> = (0..seqs.len())
            .flat_map(|b| row(&vs[b], pos[b], hk))
            .collect();
        if let Some((at, b)) = case.forget {
            if at == s {
                dec.forget(seqs[b]);
                served[b] = 0;
            }
        }
        let step = dec
            .step_emulated(&mut cache, &mut store, 0, &seqs, &q, &k, &v, &run)
            .unwrap();

        // The reference of this step as its own call: q_len 1 over p + 1 keys.
        let lens: Vec<(usize, usize)> = pos.iter().map(|&p| (1, p + 1)).collect();
        let seqlens = SeqLens::varlen_from_lens(&lens).unwrap();
        assert_eq!(step.seqs, seqlens, "step {s}: lengths");
        let problem = AttnProblem::new(seqlens.clone(), h, hk, D as u32, DType::F16).unwrap();
        let (qf, kf, vf) = (
            widen(&q),
            (0..seqs.len())
                .flat_map(|b| widen(&ks[b][..(pos[b] + 1) * hk * D]))
                .collect::<Vec<f32>>(),
            (0..seqs.len())
                .flat_map(|b| widen(&vs[b][..(pos[b] + 1) * hk * D]))
                .collect::<Vec<f32>>(),
        );
        let want_sel = Selection::compute(
            &problem,
            sel,
            &SelectInputs {
                q: &qf,
                k: &kf,
                scale: SCALE,
                grouping: Grouping::Decode,
                given: None,
            },
        )
        .unwrap();
        // The applied set per (sequence, unit).
        let mut applied: Vec<Vec<Vec<i64>>> = vec![vec![Vec::new(); l.units]; seqs.len()];
        for b in 0..seqs.len() {
            let p = pos[b] as i64;
            let fresh = served[b] == 0 || served[b] == every;
            served[b] = if fresh { 1 } else { served[b] + 1 };
            if step.reselected[b] != fresh {
                return Err(format!(
                    "step {s} seq {b}: reselected {}",
                    step.reselected[b]
                ));
            }
            reused += (!fresh) as usize;
            let forced = sel.forced(p, pos[b] + 1);
            for u in 0..l.units {
                let head = match sel.share() {
                    Share::Head => u,
                    Share::KvGroup => u * group,
                };
                let expect: Vec<i64> = if fresh {
                    let bits = step.selected.as_ref().expect("a fresh step selects");
                    let got = blocks_of(&bits[l.row_offset(b, u, 0)..][..l.words]);
                    let want = want_sel.blocks(b, head, 0);
                    match case.data {
                        Data::Exact => {
                            if got != want {
                                return Err(format!(
                                    "step {s} seq {b} unit {u}: device selected {got:?}, the \
                                     reference {want:?}"
                                ));
                            }
                        }
                        Data::Float => margin_rule(sel, &want_sel, b, head, &forced, &got)
                            .map_err(|e| format!("step {s} seq {b} unit {u}: {e}"))?,
                    }
                    chosen[b][u] = got
                        .iter()
                        .copied()
                        .filter(|j| !forced.contains(j))
                        .collect();
                    block0[b] = p / bsz as i64;
                    got
                } else {
                    let mut e: Vec<i64> = forced.clone();
                    e.extend(&chosen[b][u]);
                    // The blocks begun since the selection.
                    e.extend(block0[b] + 1..=p / bsz as i64);
                    e.sort_unstable();
                    e.dedup();
                    e
                };
                let got = blocks_of(&step.bits[l.row_offset(b, u, 0)..][..l.words]);
                if got != expect {
                    return Err(format!(
                        "step {s} seq {b} unit {u}: applied {got:?}, expected {expect:?}"
                    ));
                }
                sparse |= expect.len() < (pos[b] + 1).div_ceil(bsz);
                applied[b][u] = expect;
            }
        }
        let unit = |hq: usize| match sel.share() {
            Share::Head => hq,
            Share::KvGroup => hq / group,
        };
        let allowed = |b: usize, hq: usize, _i: usize, j: usize| {
            let p = pos[b] as i64;
            j <= pos[b]
                && (applied[b][unit(hq)].contains(&((j / bsz) as i64))
                    || case
                        .statics
                        .iter()
                        .any(|c| c.admits(hq, p, j as i64, p as usize + 1, true)))
        };
        // The plan's host twin of the applied mask reads the same bits.
        for (b, &p) in pos.iter().enumerate() {
            for hq in 0..h {
                for j in 0..=p {
                    assert_eq!(
                        dec.plan()
                            .allowed_by_bits(&step.bits, &seqlens, b, hq, 0, j),
                        allowed(b, hq, 0, j),
                        "step {s}: allowed_by_bits b {b} h {hq} j {j}"
                    );
                }
            }
        }
        let want = attention(
            &problem,
            &RefInputs {
                q: &qf,
                k: &kf,
                v: &vf,
                scale: SCALE,
                softcap: 0.0,
                sink_logits: None,
                alibi_slopes: None,
            },
            allowed,
        );
        let what = format!("step {s} positions {pos:?} seed {seed}");
        assert_matches(
            &what,
            &problem,
            &step.out,
            &step.lse,
            &want,
            tol(DType::F16),
        );
    }
    assert!(
        sparse,
        "every step selected every block: the case tests nothing"
    );
    Ok(reused)
}

/// The margin rule of docs/adaptive.md: the device's selection holds the forced blocks and
/// may differ from the reference's only on blocks whose reference score lies within
/// `1e-3·(|s_k| + 1)` of the deciding score `s_k` (the last block the reference chose by
/// content) or, for `top_p`, whose cumulative mass in the reference order (before or after
/// the block) lies within `1e-4` of `p`; `top_k` chooses exactly as many blocks.
fn margin_rule(
    sel: &BlockSelect,
    want: &Selection,
    b: usize,
    head: usize,
    forced: &[i64],
    got: &[i64],
) -> Result<(), String> {
    let ref_blocks = want.blocks(b, head, 0);
    let same_count = got.len() == ref_blocks.len();
    if !forced.iter().all(|j| got.contains(j))
        || (matches!(sel.choice(), Choice::TopK { .. }) && !same_count)
    {
        return Err(format!("device {got:?} vs reference {ref_blocks:?}"));
    }
    let scores = want.scores(b, head, 0);
    let s_k = choose(sel.choice(), scores, forced)
        .last()
        .map(|&j| scores[j as usize]);
    // Cumulative masses around each block of C \ F in the reference order.
    let m = masses(scores);
    let mut rest: Vec<(i64, f64)> = (0..scores.len() as i64)
        .filter(|j| !forced.contains(j))
        .map(|j| (j, scores[j as usize]))
        .collect();
    rest.sort_by(|&x, &y| rank(x, y));
    let mut cum: f64 = forced.iter().map(|&j| m[j as usize]).sum();
    let mut around = vec![(0.0, 0.0); scores.len()];
    for &(j, _) in &rest {
        around[j as usize] = (cum, cum + m[j as usize]);
        cum += m[j as usize];
    }
    let near = |j: i64| {
        let s = scores[j as usize];
        let by_score = s_k.is_some_and(|sk| (s - sk).abs() <= 1e-3 * (sk.abs() + 1.0));
        let by_mass = match sel.choice() {
            Choice::TopP { p, .. } => {
                let (before, after) = around[j as usize];
                (before - p).abs() <= 1e-4 || (after - p).abs() <= 1e-4
            }
            _ => false,
        };
        by_score || by_mass
    };
    let differ = got
        .iter()
        .filter(|j| !ref_blocks.contains(j))
        .chain(ref_blocks.iter().filter(|j| !got.contains(j)));
    for &j in differ {
        if !near(j) {
            return Err(format!(
                "device {got:?} vs reference {ref_blocks:?}: block {j} (score {}) is outside \
                 the margin (deciding score {s_k:?})",
                scores[j as usize]
            ));
        }
    }
    Ok(())
}

fn exact_case(heads: usize, kv_heads: usize) -> Case {
    Case {
        heads,
        kv_heads,
        prefill: vec![37, 70],
        steps: 40,
        data: Data::Exact,
        forget: None,
        statics: vec![],
    }
}

#[test]
fn minmax_top_k_every_step_exact() {
    let sel = select(
        r#"{"top_k": {"block": 16, "k": 2, "keep_sinks": 1, "keep_local": 1, "score": "minmax"}}"#,
    );
    let reused = run_case(&exact_case(2, 1), &sel, DecodeCanary::None, base_seed()).unwrap();
    assert_eq!(reused, 0);
}

#[test]
fn pooled_qk_reselect_every_4_exact() {
    // keep_local 2: the forced window slides while a selection is reused.
    let sel = select(
        r#"{"top_k": {"block": 16, "k": 2, "keep_sinks": 1, "keep_local": 2,
             "score": "pooled_qk", "reselect_every": 4}}"#,
    );
    let reused = run_case(&exact_case(2, 1), &sel, DecodeCanary::None, base_seed() + 1).unwrap();
    assert_eq!(reused, 2 * 30);
}

#[test]
fn minmax_kv_group_reselect_every_4_new_blocks_exact() {
    // One selection per kv head (the max over its query heads); nothing local is forced, so
    // a reused selection must add the blocks begun since it was made (and only those: the
    // token's own block stays out while it is the block the selection was made in).
    let sel = select(
        r#"{"top_k": {"block": 16, "k": 3, "keep_sinks": 0, "keep_local": 0,
             "score": "minmax", "share": "kv_group", "reselect_every": 4}}"#,
    );
    // Sequence 1's selection is forgotten before step 6: from then on the two sequences
    // reselect on different steps (6, 10, .. and 8, 12, ..), each step mixing a fresh and a
    // reused selection.
    let case = Case {
        forget: Some((6, 1)),
        ..exact_case(4, 2)
    };
    let reused = run_case(&case, &sel, DecodeCanary::None, base_seed() + 2).unwrap();
    assert_eq!(reused, 30 + 29);
}

#[test]
fn mean_k_kv_group_float_margin_rule() {
    let sel = select(
        r#"{"top_k": {"block": 16, "k": 2, "keep_sinks": 1, "keep_local": 1,
             "score": "mean_k", "share": "kv_group"}}"#,
    );
    let case = Case {
        heads: 4,
        kv_heads: 2,
        prefill: vec![50, 21],
        steps: 20,
        data: Data::Float,
        forget: None,
        statics: vec![],
    };
    run_case(&case, &sel, DecodeCanary::None, base_seed() + 3).unwrap();
}

#[test]
fn mean_k_top_p_float_reselect_every_2() {
    let sel = select(
        r#"{"top_p": {"block": 16, "p": 0.7, "min_k": 1, "max_k": 3, "keep_sinks": 1,
             "keep_local": 1, "score": "mean_k", "reselect_every": 2}}"#,
    );
    let case = Case {
        heads: 2,
        kv_heads: 1,
        prefill: vec![45, 90],
        steps: 16,
        data: Data::Float,
        forget: None,
        statics: vec![],
    };
    let reused = run_case(&case, &sel, DecodeCanary::None, base_seed() + 5).unwrap();
    assert_eq!(reused, 2 * 8);
}

#[test]
fn union_with_a_token_window_and_sinks_exact() {
    // k 1 over blocks of 16 beside a 20-token window and 3 sink tokens: the window's keys
    // start inside a block and cross kv tiles as the steps move it.
    let sel = select(r#"{"top_k": {"block": 16, "k": 1, "score": "minmax"}}"#);
    let case = Case {
        statics: vec![
            Component::window_size(20).unwrap(),
            Component::sinks(3).unwrap(),
        ],
        ..exact_case(2, 1)
    };
    let reused = run_case(&case, &sel, DecodeCanary::None, base_seed() + 6).unwrap();
    assert_eq!(reused, 0);
}

#[test]
fn canaries_fail() {
    // A reused selection applied as it was made (no re-forcing, no new blocks).
    let sel = select(
        r#"{"top_k": {"block": 16, "k": 2, "keep_sinks": 1, "keep_local": 2,
             "score": "pooled_qk", "reselect_every": 4}}"#,
    );
    let case = Case {
        steps: 20,
        ..exact_case(2, 1)
    };
    let seed = base_seed() + 4;
    let err = run_case(&case, &sel, DecodeCanary::NoReforce, seed).unwrap_err();
    assert!(err.contains("applied"), "{err}");
    // Appends that leave the summaries stale: the device selection leaves the reference.
    let sel = select(
        r#"{"top_k": {"block": 16, "k": 2, "keep_sinks": 1, "keep_local": 1, "score": "minmax"}}"#,
    );
    let err = run_case(&case, &sel, DecodeCanary::StaleSummaries, seed).unwrap_err();
    assert!(err.contains("device selected"), "{err}");
}

#[test]
fn bad_steps_are_typed_errors_and_change_nothing() {
    let sel = select(r#"{"top_k": {"block": 16, "k": 1, "keep_local": 1, "score": "minmax"}}"#);
    let case = Case {
        heads: 2,
        kv_heads: 1,
        prefill: vec![3, 5],
        steps: 4,
        data: Data::Exact,
        forget: None,
        statics: vec![],
    };
    let mut dec = driver(&case, &sel);
    let run = common::emu_run();
    let q = vec![f16::ZERO; 2 * 2 * D];
    let k = vec![f16::ZERO; 2 * D];

    // A ring layer: refused before anything is appended.
    let mut ring = KvCache::new(
        KvCacheConfig {
            max_seq_len: 4096,
            ..cache(&case, LayerCapacity::Full, 16).config().clone()
        },
        vec![LayerCapacity::Windowed {
            sink_pages: 0,
            ring_pages: 1,
        }],
    )
    .unwrap()
    .with_summaries(16)
    .unwrap();
    let mut ring_store = HostKvStorage::<f16>::new(&ring).unwrap();
    let rs = [ring.add_sequence(), ring.add_sequence()];
    let before = ring.clone();
    assert!(matches!(
        dec.step_emulated(&mut ring, &mut ring_store, 0, &rs, &q, &k, &k, &run),
        Err(Error::Unsupported(_))
    ));
    assert_eq!(ring, before);

    let mut c = cache(&case, LayerCapacity::Full, 16);
    let mut store = HostKvStorage::<f16>::new(&c).unwrap();
    let seqs = [c.add_sequence(), c.add_sequence()];
    let before = (c.clone(), store.clone());
    let mut check = |c: &mut KvCache,
                     store: &mut HostKvStorage<f16>,
                     seqs: &[sparse_attn::kv_cache::SeqId],
                     q: &[f16],
                     k: &[f16]| {
        dec.step_emulated(c, store, 0, seqs, q, k, k, &run)
            .map(|_| ())
    };
    // Wrong tensor sizes, batch size, a repeated sequence.
    assert!(matches!(
        check(&mut c, &mut store, &seqs, &q[1..], &k),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        check(&mut c, &mut store, &seqs, &q, &k[1..]),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        check(&mut c, &mut store, &seqs[..1], &q, &k),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        check(&mut c, &mut store, &[seqs[0], seqs[0]], &q, &k),
        Err(Error::Shape(_))
    ));
    // An unknown sequence.
    let mut other = cache(&case, LayerCapacity::Full, 16);
    let stranger = [
        other.add_sequence(),
        other.add_sequence(),
        other.add_sequence(),
    ][2];
    assert!(matches!(
        check(&mut c, &mut store, &[seqs[0], stranger], &q, &k),
        Err(Error::Cache(_))
    ));
    assert_eq!((&c, &store), (&before.0, &before.1));
    // A cache without summaries.
    let mut bare = KvCache::new(c.config().clone(), vec![LayerCapacity::Full]).unwrap();
    let mut bare_store = HostKvStorage::<f16>::new(&bare).unwrap();
    let bs = [bare.add_sequence(), bare.add_sequence()];
    assert!(matches!(
        check(&mut bare, &mut bare_store, &bs, &q, &k),
        Err(Error::Cache(_))
    ));
    // Past the plan's longest key sequence (prefill 3 and 5 + 4 steps: max 9 keys).
    let pl = c.reserve_append(seqs[1], 9).unwrap();
    let rows = vec![f16::ZERO; 9 * D];
    store.append_emulated(0, &[&pl], &rows, &rows).unwrap();
    assert!(matches!(
        check(&mut c, &mut store, &seqs, &q, &k),
        Err(Error::Shape(_))
    ));
    // A good step still runs after the refusals.
    let mut c2 = cache(&case, LayerCapacity::Full, 16);
    let mut s2 = HostKvStorage::<f16>::new(&c2).unwrap();
    let q2 = [c2.add_sequence(), c2.add_sequence()];
    check(&mut c2, &mut s2, &q2, &q, &k).unwrap();
    assert_eq!(c2.seq_len(q2[0]).unwrap(), 1);

    // Driver construction: more than one query row, `given` scores.
    let two_rows = AttnProblem::new(
        SeqLens::Uniform {
            batch: 1,
            q_len: 2,
            kv_len: 64,
        },
        2,
        1,
        D as u32,
        DType::F16,
    )
    .unwrap();
    assert!(matches!(
        AdaptiveDecode::new(&two_rows, &sel, &AttnOptions::default()),
        Err(Error::Shape(_))
    ));
    let given = select(r#"{"top_k": {"block": 16, "k": 1, "score": "given"}}"#);
    let one = AttnProblem::new(
        SeqLens::Uniform {
            batch: 1,
            q_len: 1,
            kv_len: 64,
        },
        2,
        1,
        D as u32,
        DType::F16,
    )
    .unwrap();
    assert!(matches!(
        AdaptiveDecode::new(&one, &given, &AttnOptions::default()),
        Err(Error::Unsupported(_))
    ));
}
