//! The device selection kernel (kernels/adaptive_select.cu) on the emulator against the f64
//! reference of src/adaptive: random f32 scores for every rule, sharing mode, grouping and
//! varlen; planted ties, signed zeros, NaN and infinities; the contract's properties; stale
//! buffers; over-capacity sequences; typed errors; and the three canaries.

mod common;

use common::select;

use common::{base_seed, Rng};
use sparse_attn::adaptive::device::{
    select_given_emulated, DeviceSelect, ScoreLayout, SelectAddrs, SelectCapacity, SelectLens,
    SelectionBits,
};
use sparse_attn::adaptive::{
    choose, given_shape, group_of, masses, num_groups, rank, AdaptiveComponent, BlockSelect,
    Choice, GivenScores, Grouping, SelectInputs, Selection, Share,
};
use sparse_attn::emu::{EmuOptions, GuardedBuffer, Schedule};
use sparse_attn::kernels::test_kernels as tk;
use sparse_attn::kernels::KernelDesc;
use sparse_attn::reference::query_position;
use sparse_attn::{AttnProblem, DType, Error, SeqLens};

const D: u32 = 64;

/// Groups where the device differed from the reference within the margin rule (printed).
static MARGIN_CASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn problem(seqs: SeqLens, heads: usize, kv_heads: usize) -> AttnProblem {
    AttnProblem::new(seqs, heads, kv_heads, D, DType::F16).unwrap()
}

/// Scores for a `[batch, heads, groups, blocks]` tensor: a third from a coarse grid (exact
/// ties), the rest uniform in [-4, 4).
fn random_scores(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            if rng.below(3) == 0 {
                rng.int_in(-4, 4) as f32 * 0.5
            } else {
                rng.unit() * 4.0
            }
        })
        .collect()
}

/// The reference's choice for `given` scores (`Selection::compute`).
fn reference(
    p: &AttnProblem,
    sel: &BlockSelect,
    grouping: Grouping,
    scores: &[f32],
    heads: usize,
) -> Selection {
    let q = vec![0.0f32; p.q_elems()];
    let k = vec![0.0f32; p.kv_elems()];
    let x = SelectInputs {
        q: &q,
        k: &k,
        scale: 1.0,
        grouping,
        given: Some(GivenScores { scores, heads }),
    };
    Selection::compute(p, sel, &x).unwrap()
}

/// The last position of group `g` of a sequence.
fn max_pos(sel: &BlockSelect, grouping: Grouping, g: usize, q_len: usize, kv_len: usize) -> i64 {
    let last = (0..q_len)
        .rev()
        .find(|&i| group_of(sel, grouping, i, q_len, kv_len) == g)
        .expect("a group has rows");
    query_position(last, q_len, kv_len)
}

/// Where the device may differ from the reference (docs/adaptive.md, margin rule): only on
/// blocks whose score lies within 1e-3 (|s| + 1) of the deciding score, and for top_p on
/// counts whose cumulative mass lies within 1e-4 of p.
fn within_margin(choice: Choice, s: &[f64], forced: &[i64], want: &[i64], got: &[i64]) -> bool {
    let mut rest: Vec<(i64, f64)> = (0..s.len() as i64)
        .filter(|j| forced.binary_search(j).is_err())
        .map(|j| (j, s[j as usize]))
        .collect();
    rest.sort_by(|&a, &b| rank(a, b));
    if forced.iter().any(|j| got.binary_search(j).is_err()) {
        return false;
    }
    let n_ref = want.len() - forced.len();
    let n_dev = got.len() - forced.len();
    if let Choice::TopP { p, .. } = choice {
        let m = masses(s);
        let mut cum: f64 = forced.iter().map(|&j| m[j as usize]).sum();
        let mut cums = vec![cum];
        for &(j, _) in &rest {
            cum += m[j as usize];
            cums.push(cum);
        }
        let (lo, hi) = (n_ref.min(n_dev), n_ref.max(n_dev));
        if (lo..hi).any(|i| (cums[i] - p).abs() > 1e-4) {
            return false;
        }
    } else if n_ref != n_dev {
        return false;
    }
    // The device's rest blocks must be the first n_dev in order, up to near-ties at the cut.
    let Some(&(_, deciding)) = rest.get(n_dev.saturating_sub(1)) else {
        return n_dev == 0;
    };
    let near = |x: f64| (x - deciding).abs() <= 1e-3 * (deciding.abs() + 1.0);
    rest.iter().enumerate().all(|(i, &(j, sj))| {
        let in_dev = got.binary_search(&j).is_ok();
        in_dev == (i < n_dev) || near(sj)
    })
}

/// Compares the device's bits with the reference selection for every (b, h, g), the counts,
/// and the zeros of groups past each sequence's own. `exact`: no margin allowed.
fn compare(
    r: &Selection,
    dev: &SelectionBits,
    p: &AttnProblem,
    sel: &BlockSelect,
    grouping: Grouping,
    exact: bool,
) -> Result<(), String> {
    let group = p.num_heads() / p.num_kv_heads();
    for b in 0..p.seqs().batch() {
        let (q_len, kv_len) = p.seqs().lens(b);
        let groups = num_groups(sel, grouping, q_len, kv_len);
        for u in 0..dev.units() {
            for g in 0..dev.capacity().max_groups {
                let got = dev.blocks(b, u, g);
                if g >= groups {
                    if !got.is_empty() || dev.count(b, u, g) != 0 {
                        return Err(format!("b {b} u {u} g {g}: past the groups, got {got:?}"));
                    }
                    continue;
                }
                let h = match sel.share() {
                    Share::Head => u,
                    Share::KvGroup => u * group,
                };
                let want = r.blocks(b, h, g);
                if dev.count(b, u, g) as usize != got.len() {
                    return Err(format!(
                        "b {b} u {u} g {g}: count {} but {} bits",
                        dev.count(b, u, g),
                        got.len()
                    ));
                }
                if got == want {
                    continue;
                }
                let max_p = max_pos(sel, grouping, g, q_len, kv_len);
                let forced = sel.forced(max_p, kv_len);
                MARGIN_CASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if exact || !within_margin(sel.choice(), r.scores(b, h, g), &forced, want, &got) {
                    return Err(format!(
                        "b {b} u {u} g {g} ({q_len} rows over {kv_len} keys): device {got:?}, \
                         reference {want:?}, scores {:?}",
                        r.scores(b, h, g)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// One random case: device (through `kernel`, or the production kernel) against the
/// reference.
#[allow(clippy::too_many_arguments)]
fn check_case(
    rng: &mut Rng,
    sel: &BlockSelect,
    grouping: Grouping,
    seqs: SeqLens,
    heads: usize,
    kv_heads: usize,
    score_heads: usize,
    kernel: Option<&'static KernelDesc>,
) -> Result<(), String> {
    let p = problem(seqs, heads, kv_heads);
    let [groups, blocks] = given_shape(sel, &p, grouping);
    let scores = random_scores(rng, p.seqs().batch() * score_heads * groups * blocks);
    let r = reference(&p, sel, grouping, &scores, score_heads);
    let dev = match kernel {
        None => select_given_emulated(
            &p,
            sel,
            grouping,
            GivenScores {
                scores: &scores,
                heads: score_heads,
            },
        )
        .map_err(|e| e.to_string())?,
        Some(k) => {
            let cap = SelectCapacity::for_problem(sel, &p, grouping);
            let ds = DeviceSelect::new(
                sel,
                grouping,
                p.seqs().batch(),
                heads,
                kv_heads,
                cap,
                ScoreLayout::contiguous(score_heads, &cap),
            )
            .unwrap();
            // SAFETY: the canaries take SaAdaptSelectParams with the production geometry.
            let ds = unsafe { ds.with_kernel(k) };
            let mut bits = vec![0; ds.bits_len()];
            let mut counts = vec![0; ds.counts_len()];
            ds.run_emulated(
                p.seqs(),
                &scores,
                &mut bits,
                Some(&mut counts),
                &EmuOptions::default(),
            )
            .map_err(|e| e.to_string())?;
            SelectionBits::new(ds.units(), cap, bits, counts).unwrap()
        }
    };
    // Exact unless top_p (fixed-point masses) or heads combined in f32.
    let combined = sel.share() == Share::KvGroup && score_heads != kv_heads;
    let exact = !combined && !matches!(sel.choice(), Choice::TopP { .. });
    compare(&r, &dev, &p, sel, grouping, exact)
}

fn varlen(lens: &[(usize, usize)]) -> SeqLens {
    SeqLens::varlen_from_lens(lens).unwrap()
}

const RULES: [&str; 3] = [
    r#""top_k": {"block": 16, "q_block": 16, "k": 3, "keep_sinks": 1, "keep_local": 1"#,
    r#""top_p": {"block": 16, "q_block": 16, "p": 0.7, "min_k": 1, "max_k": 6, "keep_sinks": 1, "keep_local": 2"#,
    r#""top_rel": {"block": 16, "q_block": 16, "alpha": 0.2, "max_k": 5, "keep_local": 1"#,
];

fn component(rule: &str, share: &str) -> BlockSelect {
    select(&format!(
        r#"{{{rule}, "score": "given", "share": "{share}"}}}}"#
    ))
}

/// Every rule x sharing mode x grouping x uniform / varlen lengths equals the reference for
/// the same f32 scores (exactly, but for top_p and f32-combined kv groups: margin rule).
#[test]
fn device_selection_equals_the_reference() {
    let seed = base_seed();
    let mut rng = Rng::new(seed);
    let shares = [("head", 4), ("kv_group", 2), ("kv_group", 4)];
    for rule in RULES {
        for (share, score_heads) in shares {
            let sel = component(rule, share);
            for grouping in [Grouping::Prefill, Grouping::Decode] {
                let (q_a, q_b) = match grouping {
                    Grouping::Prefill => (37, 20),
                    Grouping::Decode => (3, 2),
                };
                // Groups ending on a block's first key (position 32, 64) and short sequences.
                let cases = [
                    SeqLens::Uniform {
                        batch: 2,
                        q_len: q_a,
                        kv_len: 129,
                    },
                    // Also: rows over no key, and more rows than keys (negative positions).
                    varlen(&[(q_b, 97), (0, 40), (q_a, q_a), (1, 65), (2, 0), (q_b, 5)]),
                ];
                for seqs in cases {
                    let what = format!("{rule} share {share}/{score_heads} {grouping:?} {seqs:?}");
                    check_case(&mut rng, &sel, grouping, seqs, 4, 2, score_heads, None)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                }
            }
        }
    }
    eprintln!(
        "groups decided differently within the margin rule: {}",
        MARGIN_CASES.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// The most candidates the issue names: 8192 blocks (128K keys at B = 16, the last block
/// partial), 64 per thread of the block's 128 and 13 index bits, for all three rules.
#[test]
fn many_blocks_loop_over_the_threads() {
    let mut rng = Rng::new(base_seed());
    for rule in [
        r#""top_k": {"block": 16, "k": 40, "keep_sinks": 2, "keep_local": 3"#,
        r#""top_p": {"block": 16, "p": 0.9, "keep_sinks": 2, "keep_local": 3"#,
        r#""top_rel": {"block": 16, "alpha": 0.05, "keep_local": 3"#,
    ] {
        let sel = component(rule, "head");
        let seqs = SeqLens::Uniform {
            batch: 1,
            q_len: 2,
            kv_len: 16 * 8192 - 5,
        };
        check_case(&mut rng, &sel, Grouping::Decode, seqs, 1, 1, 1, None)
            .unwrap_or_else(|e| panic!("{rule}: {e}"));
    }
}

/// Runs the production kernel over raw scores (any f32 values) with the contiguous layout of
/// `cap`, returning the bits.
fn run_raw(ds: &DeviceSelect, seqs: &SeqLens, scores: &[f32], opts: &EmuOptions) -> SelectionBits {
    let mut bits = vec![0; ds.bits_len()];
    let mut counts = vec![0; ds.counts_len()];
    ds.run_emulated(seqs, scores, &mut bits, Some(&mut counts), opts)
        .unwrap();
    SelectionBits::new(ds.units(), ds.capacity(), bits, counts).unwrap()
}

/// A decode selection of one sequence, one head: the device's `S` for each row's scores.
fn decode_one(sel: &BlockSelect, q_len: usize, kv_len: usize, scores: &[f32]) -> SelectionBits {
    let seqs = SeqLens::Uniform {
        batch: 1,
        q_len,
        kv_len,
    };
    let cap = SelectCapacity::for_max_lens(sel, Grouping::Decode, q_len, kv_len);
    let ds = DeviceSelect::new(
        sel,
        Grouping::Decode,
        1,
        1,
        1,
        cap,
        ScoreLayout::contiguous(1, &cap),
    )
    .unwrap();
    run_raw(&ds, &seqs, scores, &EmuOptions::default())
}

/// The reference for one group from raw f64 scores: F ∪ choose(C \ F).
fn expected(sel: &BlockSelect, max_p: i64, kv_len: usize, s: &[f64]) -> Vec<i64> {
    let forced = sel.forced(max_p, kv_len);
    let mut out = choose(sel.choice(), s, &forced);
    out.extend_from_slice(&forced);
    out.sort_unstable();
    out
}

/// Exact ties go to the larger block; -0.0 equals +0.0; top_rel with alpha 1 keeps every
/// block tied at the best score.
#[test]
fn ties_and_signed_zeros_follow_the_order() {
    // One decode row at position 127 over 128 keys: 8 candidate blocks, nothing forced.
    let scores = [1.0f32, 2.0, 2.0, -0.0, 0.0, 2.0, -0.0, 1.0];
    let k3 = select(r#"{"top_k": {"block": 16, "k": 3, "score": "given"}}"#);
    assert_eq!(
        decode_one(&k3, 1, 128, &scores).blocks(0, 0, 0),
        vec![1, 2, 5]
    );
    let k2 = select(r#"{"top_k": {"block": 16, "k": 2, "score": "given"}}"#);
    assert_eq!(decode_one(&k2, 1, 128, &scores).blocks(0, 0, 0), vec![2, 5]);
    // Beyond the 2.0s and the 1.0s (larger J first: 7, then 0) come the zeros, 6 first.
    let k6 = select(r#"{"top_k": {"block": 16, "k": 6, "score": "given"}}"#);
    assert_eq!(
        decode_one(&k6, 1, 128, &scores).blocks(0, 0, 0),
        vec![0, 1, 2, 5, 6, 7]
    );
    let zeros = [-0.0f32, 0.0, -0.0, 0.0, -0.0, -0.0, 0.0, -0.0];
    let k3z = decode_one(&k3, 1, 128, &zeros).blocks(0, 0, 0);
    assert_eq!(k3z, vec![5, 6, 7], "signed zeros tie, larger J wins");
    let rel1 = select(r#"{"top_rel": {"block": 16, "alpha": 1.0, "score": "given"}}"#);
    assert_eq!(
        decode_one(&rel1, 1, 128, &scores).blocks(0, 0, 0),
        vec![1, 2, 5]
    );
    let s64: Vec<f64> = scores.iter().map(|&v| v as f64).collect();
    for sel in [k3, k2, k6, rel1] {
        assert_eq!(
            decode_one(&sel, 1, 128, &scores).blocks(0, 0, 0),
            expected(&sel, 127, 128, &s64)
        );
    }
}

/// NaN ranks below -inf and weighs nothing; +inf ranks first and, in top_p, takes all mass.
/// Given scores must be finite, so this goes through the raw launch path.
#[test]
fn nan_and_infinities_follow_the_order() {
    let nan = f32::NAN;
    let (inf, ninf) = (f32::INFINITY, f32::NEG_INFINITY);
    let rows: [[f32; 8]; 4] = [
        [nan, ninf, 0.5, nan, ninf, -3.0, nan, 1.0],
        [nan, nan, nan, nan, ninf, nan, ninf, nan],
        [0.5, inf, nan, 2.0, inf, ninf, -1.0, nan],
        [nan; 8],
    ];
    let comps = [
        r#"{"top_k": {"block": 16, "k": 5, "score": "given"}}"#,
        r#"{"top_k": {"block": 16, "k": 7, "keep_sinks": 1, "score": "given"}}"#,
        r#"{"top_p": {"block": 16, "p": 0.99, "score": "given"}}"#,
        r#"{"top_p": {"block": 16, "p": 0.5, "min_k": 1, "keep_local": 1, "score": "given"}}"#,
        r#"{"top_rel": {"block": 16, "alpha": 0.01, "score": "given"}}"#,
        r#"{"top_rel": {"block": 16, "alpha": 1.0, "min_k": 2, "score": "given"}}"#,
    ];
    for json in comps {
        let sel = select(json);
        for row in &rows {
            let s64: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            let got = decode_one(&sel, 1, 128, row).blocks(0, 0, 0);
            assert_eq!(got, expected(&sel, 127, 128, &s64), "{json} over {row:?}");
        }
    }
    // Spelled out: NaN after -inf (larger J first among equals).
    let k5 = select(comps[0]);
    assert_eq!(
        decode_one(&k5, 1, 128, &rows[0]).blocks(0, 0, 0),
        vec![1, 2, 4, 5, 7]
    );
}

/// `share: kv_group` with minmax scores per query head combines by maximum, exactly.
#[test]
fn kv_group_minmax_combines_by_maximum() {
    let mut rng = Rng::new(base_seed());
    let sel = select(
        r#"{"top_k": {"block": 16, "k": 2, "keep_local": 1, "score": "minmax", "share": "kv_group"}}"#,
    );
    let (heads, kv_heads, q_len, kv_len) = (4, 2, 3, 90);
    let seqs = SeqLens::Uniform {
        batch: 1,
        q_len,
        kv_len,
    };
    let cap = SelectCapacity::for_max_lens(&sel, Grouping::Decode, q_len, kv_len);
    let layout = ScoreLayout::contiguous(heads, &cap);
    let ds = DeviceSelect::new(&sel, Grouping::Decode, 1, heads, kv_heads, cap, layout).unwrap();
    let scores = random_scores(&mut rng, ds.scores_len());
    let dev = run_raw(&ds, &seqs, &scores, &EmuOptions::default());
    for u in 0..kv_heads {
        for g in 0..q_len {
            let max_p = query_position(g, q_len, kv_len);
            let n = sel.candidates(max_p, kv_len).end as usize;
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    (u * 2..u * 2 + 2)
                        .map(|h| scores[(h * cap.max_groups + g) * cap.max_blocks + j] as f64)
                        .fold(f64::NEG_INFINITY, f64::max)
                })
                .collect();
            assert_eq!(dev.blocks(0, u, g), expected(&sel, max_p, kv_len, &s));
        }
    }
}

/// The contract's properties on one set of scores: top_k nested in k and |S| = |F| +
/// min(k, |C \ F|); top_p monotone in p; F ⊆ S; nothing past the group's last block.
#[test]
fn properties_hold() {
    let mut rng = Rng::new(base_seed());
    let seqs = varlen(&[(40, 150), (17, 17), (1, 33)]);
    let p = problem(seqs.clone(), 2, 2);
    let scores_for = |sel: &BlockSelect, rng: &mut Rng| {
        let [g, n] = given_shape(sel, &p, Grouping::Prefill);
        random_scores(rng, 3 * 2 * g * n)
    };
    let base = select(
        r#"{"top_k": {"block": 16, "k": 1, "keep_sinks": 1, "keep_local": 1, "score": "given"}}"#,
    );
    let scores = scores_for(&base, &mut rng);
    let run = |json: &str| {
        let sel = select(json);
        let given = GivenScores {
            scores: &scores,
            heads: 2,
        };
        (
            sel,
            select_given_emulated(&p, &sel, Grouping::Prefill, given).unwrap(),
        )
    };
    let check_forced = |sel: &BlockSelect, s: &SelectionBits| {
        for b in 0..3 {
            let (q_len, kv_len) = seqs.lens(b);
            for g in 0..num_groups(sel, Grouping::Prefill, q_len, kv_len) {
                let max_p = max_pos(sel, Grouping::Prefill, g, q_len, kv_len);
                for u in 0..2 {
                    let got = s.blocks(b, u, g);
                    assert!(sel.forced(max_p, kv_len).iter().all(|j| got.contains(j)));
                    assert!(
                        got.iter().all(|&j| j * 16 <= max_p),
                        "past the causal limit"
                    );
                }
            }
        }
    };
    let mut prev: Option<SelectionBits> = None;
    for k in [1, 2, 4, 9] {
        let (sel, s) = run(&format!(
            r#"{{"top_k": {{"block": 16, "k": {k}, "keep_sinks": 1, "keep_local": 1, "score": "given"}}}}"#
        ));
        check_forced(&sel, &s);
        for b in 0..3 {
            let (q_len, kv_len) = seqs.lens(b);
            for g in 0..num_groups(&sel, Grouping::Prefill, q_len, kv_len) {
                let max_p = max_pos(&sel, Grouping::Prefill, g, q_len, kv_len);
                let c = sel.candidates(max_p, kv_len).end as usize;
                let f = sel.forced(max_p, kv_len).len();
                for u in 0..2 {
                    assert_eq!(s.blocks(b, u, g).len(), f + (k as usize).min(c - f));
                    assert_eq!(s.count(b, u, g) as usize, f + (k as usize).min(c - f));
                    if let Some(prev) = &prev {
                        let small = prev.blocks(b, u, g);
                        assert!(small.iter().all(|j| s.blocks(b, u, g).contains(j)));
                    }
                }
            }
        }
        prev = Some(s);
    }
    // k >= |C|: every candidate, i.e. the dense causal block set of the group.
    let (sel, s) = run(r#"{"top_k": {"block": 16, "k": 1000, "score": "given"}}"#);
    for b in 0..3 {
        let (q_len, kv_len) = seqs.lens(b);
        for g in 0..num_groups(&sel, Grouping::Prefill, q_len, kv_len) {
            let max_p = max_pos(&sel, Grouping::Prefill, g, q_len, kv_len);
            let all: Vec<i64> = sel.candidates(max_p, kv_len).collect();
            assert_eq!(s.blocks(b, 0, g), all);
            assert_eq!(s.blocks(b, 1, g), all);
        }
    }
    let mut prev: Option<SelectionBits> = None;
    for pp in [0.2, 0.5, 0.8, 0.95, 1.0] {
        let (sel, s) = run(&format!(
            r#"{{"top_p": {{"block": 16, "p": {pp}, "keep_sinks": 1, "keep_local": 1, "score": "given"}}}}"#
        ));
        check_forced(&sel, &s);
        if let Some(prev) = &prev {
            for b in 0..3 {
                for u in 0..2 {
                    for g in 0..s.capacity().max_groups {
                        let small = prev.blocks(b, u, g);
                        assert!(small.iter().all(|j| s.blocks(b, u, g).contains(j)));
                    }
                }
            }
        }
        prev = Some(s);
    }
}

/// A call over long sequences, then one over short ones into the same buffers: the second
/// result equals a fresh run into poisoned buffers and the reference; nothing of the first
/// survives. The same through several schedules.
#[test]
fn nothing_stale_survives_and_every_schedule_agrees() {
    let mut rng = Rng::new(base_seed());
    let sel = component(RULES[0], "head");
    let (heads, kv_heads) = (2, 1);
    let cap = SelectCapacity::for_max_lens(&sel, Grouping::Prefill, 64, 200);
    let layout = ScoreLayout::contiguous(heads, &cap);
    let ds = DeviceSelect::new(&sel, Grouping::Prefill, 2, heads, kv_heads, cap, layout).unwrap();
    let long = varlen(&[(64, 200), (48, 180)]);
    let short = varlen(&[(5, 40), (0, 0)]);
    let scores_long = random_scores(&mut rng, ds.scores_len());
    let scores_short = random_scores(&mut rng, ds.scores_len());
    let opts = EmuOptions::default();
    let mut bits = vec![0; ds.bits_len()];
    let mut counts = vec![0; ds.counts_len()];
    ds.run_emulated(&long, &scores_long, &mut bits, Some(&mut counts), &opts)
        .unwrap();
    assert!(bits.iter().filter(|&&w| w != 0).count() > 10);
    ds.run_emulated(&short, &scores_short, &mut bits, Some(&mut counts), &opts)
        .unwrap();
    let mut fresh = vec![0x5a5a_5a5a; ds.bits_len()];
    let mut fresh_counts = vec![-7; ds.counts_len()];
    ds.run_emulated(
        &short,
        &scores_short,
        &mut fresh,
        Some(&mut fresh_counts),
        &opts,
    )
    .unwrap();
    assert_eq!(bits, fresh);
    assert_eq!(counts, fresh_counts);
    // Only sequence 0's single group (5 rows at positions 35..39) selects anything.
    let s = SelectionBits::new(2, cap, bits.clone(), counts).unwrap();
    for b in 0..2 {
        for u in 0..heads {
            for g in 0..cap.max_groups {
                if (b, g) != (0, 0) {
                    assert!(
                        s.blocks(b, u, g).is_empty(),
                        "stale bits at b {b} u {u} g {g}"
                    );
                    assert_eq!(s.count(b, u, g), 0);
                }
            }
            // Candidates 0..=2 of 3, k = 3: all of them.
            assert_eq!(s.blocks(0, u, 0), vec![0, 1, 2]);
        }
    }
    for schedule in [Schedule::Reverse, Schedule::Random(7)] {
        let o = EmuOptions {
            schedule,
            ..Default::default()
        };
        let mut again = vec![-1; ds.bits_len()];
        ds.run_emulated(&long, &scores_long, &mut again, None, &o)
            .unwrap();
        let mut fwd = vec![-1; ds.bits_len()];
        ds.run_emulated(&long, &scores_long, &mut fwd, None, &opts)
            .unwrap();
        assert_eq!(again, fwd, "{schedule:?}");
    }
}

/// A sequence whose device lengths exceed the capacity is not read: its bits are 0 and its
/// counts -1, the other sequences unaffected. (Host-known lengths are refused instead.)
#[test]
fn over_capacity_sequences_select_nothing() {
    let sel = component(RULES[0], "head");
    let cap = SelectCapacity::for_max_lens(&sel, Grouping::Decode, 2, 64);
    let ds = DeviceSelect::new(
        &sel,
        Grouping::Decode,
        2,
        1,
        1,
        cap,
        ScoreLayout::contiguous(1, &cap),
    )
    .unwrap();
    let over = varlen(&[(2, 64), (1, 65)]);
    let mut bits = vec![0; ds.bits_len()];
    let refused = ds.run_emulated(&over, &[0.0; 16], &mut bits, None, &EmuOptions::default());
    assert!(matches!(refused, Err(Error::Shape(_))), "{refused:?}");

    let (cu_q, cu_k) = over.cu_seqlens();
    let scores: Vec<f32> = (0..ds.scores_len()).map(|i| i as f32).collect();
    let sb = GuardedBuffer::from_slice(&scores, "scores").unwrap();
    let mut bb = GuardedBuffer::filled(ds.bits_len(), -1i32, "bits").unwrap();
    let mut cb = GuardedBuffer::filled(ds.counts_len(), 99i32, "counts").unwrap();
    let qb = GuardedBuffer::from_slice(&cu_q, "cu_q").unwrap();
    let kb = GuardedBuffer::from_slice(&cu_k, "cu_k").unwrap();
    let launch = ds
        .launch(
            SelectLens::Varlen {
                cu_seqlens_q: qb.as_ptr() as u64,
                cu_seqlens_k: kb.as_ptr() as u64,
            },
            &SelectAddrs {
                scores: sb.as_ptr() as u64,
                bits: bb.as_mut_ptr() as u64,
                counts: cb.as_mut_ptr() as u64,
            },
        )
        .unwrap();
    // SAFETY: guarded buffers of the sizes the configuration names; cu_seqlens batch + 1.
    unsafe { launch.run_emulated(&EmuOptions::default()).unwrap() };
    let s = SelectionBits::new(1, cap, bb.to_vec(), cb.to_vec()).unwrap();
    // Sequence 0: rows at 62 and 63, blocks 0..=3, k = 3 plus sink 0 and local 3.
    assert_eq!(s.count(0, 0, 0), 4);
    assert_eq!(s.count(0, 0, 1), 4);
    assert_eq!((s.count(1, 0, 0), s.count(1, 0, 1)), (-1, -1));
    assert!(s.blocks(1, 0, 0).is_empty() && s.blocks(1, 0, 1).is_empty());
}

#[test]
fn bad_input_is_a_typed_error_before_any_launch() {
    let p = problem(
        SeqLens::Uniform {
            batch: 1,
            q_len: 4,
            kv_len: 64,
        },
        4,
        2,
    );
    let sel = component(RULES[0], "head");
    let [g, n] = given_shape(&sel, &p, Grouping::Decode);
    let good = vec![0.5f32; 4 * g * n];
    let run = |sel: &BlockSelect, scores: &[f32], heads: usize| {
        select_given_emulated(&p, sel, Grouping::Decode, GivenScores { scores, heads })
    };
    assert!(run(&sel, &good, 4).is_ok());
    assert!(matches!(run(&sel, &good[1..], 4), Err(Error::Shape(_))));
    assert!(matches!(
        run(&sel, &good[..2 * g * n], 2),
        Err(Error::Shape(_))
    ));
    let kv = component(RULES[0], "kv_group");
    assert!(run(&kv, &good[..2 * g * n], 2).is_ok());
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut s = good.clone();
        s[5] = bad;
        assert!(matches!(run(&sel, &s, 4), Err(Error::Pattern(_))), "{bad}");
    }
    let mean_k = select(r#"{"top_k": {"block": 16, "k": 3, "score": "mean_k"}}"#);
    assert!(matches!(run(&mean_k, &good, 4), Err(Error::Pattern(_))));
    // Components that cannot exist: k = 0 with nothing forced, p outside (0, 1], a block that
    // is not a power of two.
    for json in [
        r#"{"top_k": {"block": 16, "k": 0, "score": "given"}}"#,
        r#"{"top_p": {"block": 16, "p": 0.0, "score": "given"}}"#,
        r#"{"top_p": {"block": 16, "p": 1.5, "score": "given"}}"#,
        r#"{"top_k": {"block": 48, "k": 2, "score": "given"}}"#,
    ] {
        assert!(AdaptiveComponent::from_json(json).is_err(), "{json}");
    }
    // Configurations: heads, buffers, shared memory.
    let cap = SelectCapacity {
        max_groups: 4,
        max_blocks: 4,
    };
    let layout = ScoreLayout::contiguous(3, &cap);
    let r = DeviceSelect::new(&sel, Grouping::Decode, 1, 4, 2, cap, layout);
    assert!(matches!(r, Err(Error::Shape(_))));
    let huge = SelectCapacity {
        max_groups: 1,
        max_blocks: 60_000,
    };
    let r = DeviceSelect::new(
        &sel,
        Grouping::Decode,
        1,
        4,
        2,
        huge,
        ScoreLayout::contiguous(4, &huge),
    );
    assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
    let ds = DeviceSelect::new(
        &sel,
        Grouping::Decode,
        1,
        4,
        2,
        cap,
        ScoreLayout::contiguous(4, &cap),
    )
    .unwrap();
    let seqs = p.seqs().clone();
    let mut bits = vec![0; ds.bits_len() + 1];
    let e = ds.run_emulated(&seqs, &good, &mut bits, None, &EmuOptions::default());
    assert!(matches!(e, Err(Error::Shape(_))));
    let mut bits = vec![0; ds.bits_len()];
    let e = ds.run_emulated(&seqs, &good[..3], &mut bits, None, &EmuOptions::default());
    assert!(matches!(e, Err(Error::Shape(_))));
    let null = SelectLens::Varlen {
        cu_seqlens_q: 0,
        cu_seqlens_k: 64,
    };
    assert!(matches!(
        ds.launch(null, &SelectAddrs::default()),
        Err(Error::Shape(_))
    ));
    let over = SelectLens::Uniform {
        q_len: 4,
        kv_len: 65,
    };
    assert!(matches!(
        ds.launch(over, &SelectAddrs::default()),
        Err(Error::Shape(_))
    ));
}

/// The canaries: each broken kernel fails the reference comparison on cases built for it,
/// while the production kernel passes the same cases.
#[test]
fn canaries_fail() {
    let seed = base_seed();
    let cases: [(&KernelDesc, &str, Grouping, SeqLens); 3] = [
        // Decode rows at positions 31..=33: the row at 32 starts block 2.
        (
            &tk::SELECT_STRICT_CANDIDATES,
            r#""top_k": {"block": 16, "k": 1, "keep_local": 1"#,
            Grouping::Decode,
            SeqLens::Uniform {
                batch: 1,
                q_len: 3,
                kv_len: 34,
            },
        ),
        (
            &tk::SELECT_LOCAL_OFF_BY_ONE,
            r#""top_k": {"block": 16, "k": 1, "keep_local": 2"#,
            Grouping::Decode,
            SeqLens::Uniform {
                batch: 1,
                q_len: 2,
                kv_len: 160,
            },
        ),
        (
            &tk::SELECT_DROP_CROSSING,
            r#""top_p": {"block": 16, "p": 0.6"#,
            Grouping::Decode,
            SeqLens::Uniform {
                batch: 1,
                q_len: 2,
                kv_len: 160,
            },
        ),
    ];
    for (kernel, rule, grouping, seqs) in cases {
        let sel = component(rule, "head");
        let mut rng = Rng::new(seed);
        check_case(&mut rng, &sel, grouping, seqs.clone(), 2, 1, 2, None)
            .unwrap_or_else(|e| panic!("production kernel, {rule}: {e}"));
        let mut rng = Rng::new(seed);
        match check_case(&mut rng, &sel, grouping, seqs, 2, 1, 2, Some(kernel)) {
            Ok(()) => panic!("canary {} passed", kernel.name),
            // A mismatch with the reference, not a failed launch.
            Err(e) => assert!(e.contains("reference"), "canary {}: {e}", kernel.name),
        }
    }
}

/// top_rel's threshold `ln(alpha) + max s` is an f64 value; a score is kept iff it is at
/// least that value, which for f32 scores means at least the smallest f32 above it (not
/// the nearest f32, which may lie below).
#[test]
fn top_rel_threshold_is_exact() {
    let mut tried = 0;
    for alpha in [0.3f64, 0.7, 0.1, 0.45, 0.9, 0.05, 0.6, 0.35] {
        let t = alpha.ln();
        let near = t as f32;
        if near as f64 >= t {
            continue;
        }
        tried += 1;
        // Block 0 scores 0 (the best); block 1 the nearest f32 to t (below t: not kept);
        // block 2 the next f32 up (above t: kept); block 3 far below.
        let above = f32::from_bits(if near > 0.0 {
            near.to_bits() + 1
        } else {
            near.to_bits() - 1
        });
        let scores = [0.0f32, near, above, -50.0];
        let sel = select(&format!(
            r#"{{"top_rel": {{"block": 16, "alpha": {alpha}, "score": "given"}}}}"#
        ));
        let got = decode_one(&sel, 1, 64, &scores).blocks(0, 0, 0);
        assert_eq!(got, vec![0, 2], "alpha {alpha}");
        let s64: Vec<f64> = scores.iter().map(|&v| v as f64).collect();
        assert_eq!(got, expected(&sel, 63, 64, &s64));
    }
    assert!(tried > 0, "no alpha whose ln rounds down in f32");
}

/// On a GPU (skipped without one, unless `SPARSE_ATTN_REQUIRE_GPU=1`): the CUDA launch path
/// gives the reference's selection for every rule and sharing mode, varlen prefill and
/// decode, and for a 128K-key decode step with 8192 candidate blocks.
#[test]
fn gpu_selection_equals_the_reference() {
    let Some(gpu) = common::gpu("gpu_selection_equals_the_reference") else {
        return;
    };
    let mut rng = Rng::new(base_seed());
    for rule in RULES {
        for (share, score_heads) in [("head", 4), ("kv_group", 2), ("kv_group", 4)] {
            let sel = component(rule, share);
            for (grouping, seqs) in [
                (Grouping::Prefill, varlen(&[(20, 97), (0, 40), (37, 37)])),
                (Grouping::Decode, varlen(&[(3, 129), (1, 65)])),
            ] {
                let p = problem(seqs, 4, 2);
                let [g, n] = given_shape(&sel, &p, grouping);
                let scores = random_scores(&mut rng, p.seqs().batch() * score_heads * g * n);
                let r = reference(&p, &sel, grouping, &scores, score_heads);
                let given = GivenScores {
                    scores: &scores,
                    heads: score_heads,
                };
                let dev = sparse_attn::adaptive::device::select_given_cuda(
                    &gpu, &p, &sel, grouping, given,
                )
                .unwrap();
                let combined = share == "kv_group" && score_heads == 4;
                let exact = !combined && !matches!(sel.choice(), Choice::TopP { .. });
                compare(&r, &dev, &p, &sel, grouping, exact)
                    .unwrap_or_else(|e| panic!("{rule} {share}/{score_heads} {grouping:?}: {e}"));
            }
        }
    }
    for rule in [
        r#""top_k": {"block": 16, "k": 512, "keep_sinks": 1, "keep_local": 4"#,
        r#""top_p": {"block": 16, "p": 0.95, "keep_sinks": 1, "keep_local": 4"#,
    ] {
        let sel = component(rule, "head");
        let seqs = SeqLens::Uniform {
            batch: 1,
            q_len: 2,
            kv_len: 128 * 1024,
        };
        let p = problem(seqs, 2, 2);
        let [g, n] = given_shape(&sel, &p, Grouping::Decode);
        assert_eq!(n, 8192);
        let scores = random_scores(&mut rng, 2 * g * n);
        let r = reference(&p, &sel, Grouping::Decode, &scores, 2);
        let given = GivenScores {
            scores: &scores,
            heads: 2,
        };
        let dev = sparse_attn::adaptive::device::select_given_cuda(
            &gpu,
            &p,
            &sel,
            Grouping::Decode,
            given,
        )
        .unwrap();
        let exact = !matches!(sel.choice(), Choice::TopP { .. });
        compare(&r, &dev, &p, &sel, Grouping::Decode, exact)
            .unwrap_or_else(|e| panic!("{rule} at 128K: {}", &e[..e.len().min(400)]));
    }
}

/// `SelectCapacity::for_max_lens` bounds the groups of every call up to its lengths, and is
/// reached; the registry names the kernel.
#[test]
fn capacity_covers_every_shorter_call() {
    let sel = select(r#"{"top_k": {"block": 16, "q_block": 8, "k": 2, "score": "given"}}"#);
    for grouping in [Grouping::Prefill, Grouping::Decode] {
        for max_q in 0..30usize {
            let cap = SelectCapacity::for_max_lens(&sel, grouping, max_q, 60);
            assert_eq!(cap.max_blocks, 4);
            let mut reached = max_q == 0;
            for q in 0..=max_q {
                for kv in 0..=60 {
                    let g = num_groups(&sel, grouping, q, kv);
                    assert!(
                        g <= cap.max_groups,
                        "{grouping:?} q {q} kv {kv}: {g} groups"
                    );
                    reached |= g == cap.max_groups;
                }
            }
            assert!(reached, "{grouping:?} max_q {max_q}: bound never reached");
        }
    }
    assert_eq!(
        sparse_attn::kernels::adaptive_select().name,
        "sa_adaptive_select"
    );
}
