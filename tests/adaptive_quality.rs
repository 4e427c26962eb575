//! The needle-field generator and the quality metrics of `sparse_attn::adaptive::needle`
//! (docs/adaptive.md, "How quality is measured") on cases with known answers, at 1K-2K
//! tokens: dense selections recall everything, the oracle is its own best, a planted needle
//! is found when its block can be chosen and missed when it cannot, and the per-group
//! evaluation equals a whole prefill's selection.

use sparse_attn::adaptive::needle::{
    evaluate, row_metrics, selected_blocks, DenseRow, FieldSpec, HeadKind, Method, NeedleField,
    RowMetrics, Sample, Summary,
};
use sparse_attn::adaptive::{
    AdaptiveComponent, BlockSelect, Choice, Grouping, Score, SelectInputs, Selection,
};

const B: usize = 64;

fn field(t: usize, seed: u64) -> NeedleField {
    NeedleField::generate(&FieldSpec::new(t, 64, seed)).expect("valid field")
}

fn sample(strata: usize) -> Sample {
    Sample {
        strata,
        rows_per_stratum: 4,
        decode_from: 0.5,
        seed: 11,
    }
}

fn method(name: &str, choice: Choice, score: Score, forced: (i64, i64), g: Grouping) -> Method {
    Method {
        name: name.into(),
        select: BlockSelect::new(B as i64, choice, score)
            .and_then(|s| s.with_forced(forced.0, forced.1))
            .expect("valid component"),
        grouping: g,
    }
}

#[test]
fn generator_is_seeded_and_needles_hold_their_mass() {
    let a = field(2048, 3);
    let b = field(2048, 3);
    let c = field(2048, 4);
    assert_eq!(a.q(), b.q());
    assert_eq!(a.k(), b.k());
    assert_eq!(a.v(), b.v());
    assert_ne!(a.k(), c.k());
    assert_eq!(a.needles(0).len(), 8);
    assert!(a.needles(2).is_empty(), "the diffuse head has no needles");
    for h in 0..2 {
        for n in a.needles(h) {
            assert!(n.key >= 64 && n.key < 1024);
            for (&p, &m) in n.queries.iter().zip(&n.mass) {
                assert!(p >= 1024 && p >= n.key + 256, "query {p} of key {}", n.key);
                assert!((0.1..1.0).contains(&m), "needle mass {m}");
                // The f32 inputs hold the mass the generator solved for (f64) to ~1e-4.
                let row = DenseRow::compute(&a, h, p);
                assert!(
                    (row.a[n.key] - m).abs() < 1e-3 * m.max(0.1),
                    "{} vs {m}",
                    row.a[n.key]
                );
                assert_eq!(a.needle_of(h, p), Some(n.key));
            }
        }
    }
    // Bad specs are typed errors.
    assert!(NeedleField::generate(&FieldSpec::new(512, 64, 1)).is_err());
    let narrow = FieldSpec {
        local_dims: 60,
        ..FieldSpec::new(2048, 64, 1)
    };
    assert!(NeedleField::generate(&narrow).is_err());
}

#[test]
fn dense_selection_recalls_everything() {
    let f = field(1024, 5);
    let all = (1024 / B) as i64;
    let methods = [
        method(
            "dense prefill",
            Choice::TopK { k: all },
            Score::MeanK,
            (0, 0),
            Grouping::Prefill,
        ),
        method(
            "dense decode",
            Choice::TopK { k: all },
            Score::Minmax,
            (1, 1),
            Grouping::Decode,
        ),
    ];
    let (reports, stats) = evaluate(&f, &methods, &sample(8), 2).expect("evaluation");
    for r in &reports {
        for s in [&r.field, &r.diffuse] {
            assert!(s.rows > 0, "{}", r.name);
            assert!(
                (s.mean_recall - 1.0).abs() < 1e-12,
                "{}: {}",
                r.name,
                s.mean_recall
            );
            assert!((s.min_recall - 1.0).abs() < 1e-12);
            assert!(
                (s.density - 1.0).abs() < 1e-15,
                "{}: density {}",
                r.name,
                s.density
            );
            assert!(s.l1 < 1e-12, "{}: L1 {}", r.name, s.l1);
            assert!((s.oracle_efficiency - 1.0).abs() < 1e-12);
        }
        assert_eq!(r.field.needle_recall, 1.0);
        assert_eq!(
            r.field.needle_rows, 64,
            "every needle query of the two field heads"
        );
    }
    assert!(stats.sink > 0.0 && stats.local > 0.0 && stats.needle >= 0.1);
}

#[test]
fn oracle_is_its_own_best_and_worse_choices_are_not() {
    let f = field(2048, 6);
    let row = DenseRow::compute(&f, 0, 1500);
    assert!((row.a.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    let mass = row.block_mass(B);
    let mut order: Vec<i64> = (0..mass.len() as i64).collect();
    order.sort_by(|&a, &b| mass[b as usize].total_cmp(&mass[a as usize]));
    let n = 4;
    let best = row_metrics(&f, &row, &order[..n], B, None);
    assert_eq!(best.recall, best.oracle);
    let best_sum: f64 = order[..n].iter().map(|&j| mass[j as usize]).sum();
    assert!((best.recall - best_sum).abs() < 1e-15);
    let worst = row_metrics(&f, &row, &order[order.len() - n..], B, None);
    assert!(worst.recall < 0.5 * worst.oracle, "{worst:?}");
    assert_eq!(worst.oracle, best.oracle);
    // Pair counts: block 0 and the row's own partial block (1500 = 23·64 + 28).
    let m = row_metrics(&f, &row, &[0, 23, 23, 99], B, None);
    assert_eq!(m.allowed, 64 + 29);
    assert_eq!(m.causal, 1501);
    // Nothing allowed: recall 0, the whole output is the error.
    let none = row_metrics(&f, &row, &[], B, None);
    assert_eq!(none.recall, 0.0);
    assert_eq!(none.allowed, 0);
    assert_eq!(none.l1_err, none.out_norm);
    assert!(none.out_norm > 0.0);
    // Summary of hand-made rows.
    let r = |recall: f64, needle: Option<bool>| RowMetrics {
        recall,
        oracle: 1.0,
        allowed: 1,
        causal: 4,
        l1_err: 1.0 - recall,
        out_norm: 1.0,
        needle,
    };
    let s = Summary::of(&[
        r(1.0, None),
        r(0.5, Some(false)),
        r(0.9, Some(true)),
        r(0.6, Some(true)),
    ]);
    assert_eq!(s.rows, 4);
    assert!((s.mean_recall - 0.75).abs() < 1e-15);
    assert_eq!(s.min_recall, 0.5);
    assert_eq!(s.p1_recall, 0.5);
    assert_eq!(s.needle_rows, 3);
    assert!((s.needle_recall - 2.0 / 3.0).abs() < 1e-15);
    assert_eq!(s.density, 0.25);
    assert!((s.oracle_efficiency - 0.75).abs() < 1e-15);
    assert!((s.l1 - 0.25).abs() < 1e-15);
}

/// A field head without needles, then one planted so strongly that the block mean sees it:
/// the key is the query's direction scaled up, so `q·k̄` of its block dwarfs every other.
fn planted() -> (NeedleField, usize, usize) {
    let spec = FieldSpec {
        needles: 0,
        heads: vec![HeadKind::Field],
        ..FieldSpec::new(2048, 64, 8)
    };
    let mut f = NeedleField::generate(&spec).expect("valid field");
    let (key, p) = (300, 1900);
    let d = 64;
    let q: Vec<f32> = f.q()[p * d..][..d].to_vec();
    let norm = q.iter().map(|x| x * x).sum::<f32>().sqrt();
    let k: Vec<f32> = q.iter().map(|x| x / norm * 4000.0).collect();
    f.set_key(0, key, &k);
    f.add_needle(0, key, p);
    (f, key, p)
}

/// `top_k` with `k = 0`: only the sink block and the two local blocks.
fn forced_only() -> Method {
    let c = AdaptiveComponent::from_json(
        r#"{"top_k": {"block": 64, "k": 0, "keep_sinks": 1, "keep_local": 2}}"#,
    )
    .expect("valid component");
    let AdaptiveComponent::Select(select) = c else {
        panic!("a selection component")
    };
    Method {
        name: "forced only".into(),
        select,
        grouping: Grouping::Prefill,
    }
}

#[test]
fn planted_needle_is_found_when_its_block_can_be_chosen() {
    let (f, key, p) = planted();
    let row = DenseRow::compute(&f, 0, p);
    assert!(
        row.a[key] > 0.99,
        "the planted key dominates its row ({})",
        row.a[key]
    );
    let methods = [
        method(
            "top_k 1",
            Choice::TopK { k: 1 },
            Score::MeanK,
            (1, 2),
            Grouping::Prefill,
        ),
        method(
            "decode top_k 1",
            Choice::TopK { k: 1 },
            Score::Minmax,
            (1, 2),
            Grouping::Decode,
        ),
        forced_only(),
    ];
    let (reports, _) = evaluate(&f, &methods, &sample(4), 2).expect("evaluation");
    assert_eq!(reports[0].field.needle_rows, 1);
    assert_eq!(
        reports[0].field.needle_recall, 1.0,
        "{:?}",
        reports[0].field
    );
    assert_eq!(
        reports[1].field.needle_recall, 1.0,
        "{:?}",
        reports[1].field
    );
    // With only sinks and local blocks its block (4) is never chosen.
    assert_eq!(reports[2].field.needle_rows, 1);
    assert_eq!(reports[2].field.needle_recall, 0.0);
    assert!(reports[2].field.min_recall < 0.01);
    // The same by hand: a selection without the needle's block misses it and its mass.
    let with = row_metrics(&f, &row, &[0, 4, 28, 29], B, Some(key));
    let without = row_metrics(&f, &row, &[0, 28, 29], B, Some(key));
    assert_eq!(with.needle, Some(true));
    assert_eq!(without.needle, Some(false));
    assert!(with.recall - without.recall >= row.a[key] - 1e-12);
    assert!(without.l1_err / without.out_norm > 10.0 * with.l1_err / with.out_norm);
}

#[test]
fn per_group_calls_equal_the_whole_prefill() {
    let f = field(1024, 9);
    let problem = f.problem().expect("problem");
    let m = method(
        "top_p",
        Choice::TopP {
            p: 0.9,
            min_k: 1,
            max_k: 16,
        },
        Score::MeanK,
        (1, 1),
        Grouping::Prefill,
    );
    let whole = Selection::compute(
        &problem,
        &m.select,
        &SelectInputs {
            q: f.q(),
            k: f.k(),
            scale: f.scale(),
            grouping: Grouping::Prefill,
            given: None,
        },
    )
    .expect("selection");
    let rows: Vec<Vec<usize>> = (0..3).map(|_| (0..1024).step_by(37).collect()).collect();
    let per_group = selected_blocks(&f, &m, &rows, 2).expect("per-group selection");
    let mut differs = false;
    for h in 0..3 {
        for (ri, &p) in rows[h].iter().enumerate() {
            assert_eq!(
                per_group[h][ri],
                whole.blocks(0, h, p / B),
                "head {h} row {p}"
            );
            differs |= per_group[h][ri] != per_group[(h + 1) % 3][ri];
        }
    }
    assert!(differs, "heads select differently");
    // Decode rows: one call of q_len 1 over p + 1 keys each, so the row's own block is the
    // last one and is forced (keep_local 1); nothing past it is named.
    let dec = method(
        "decode",
        Choice::TopK { k: 2 },
        Score::Minmax,
        (1, 1),
        Grouping::Decode,
    );
    let drows: Vec<Vec<usize>> = (0..3).map(|_| vec![63, 127, 128, 500, 1023]).collect();
    let per_row = selected_blocks(&f, &dec, &drows, 2).expect("decode selection");
    for h in 0..3 {
        for (ri, &p) in drows[h].iter().enumerate() {
            let s = &per_row[h][ri];
            assert_eq!(
                *s.last().expect("non-empty"),
                (p / B) as i64,
                "head {h} row {p}: {s:?}"
            );
            assert_eq!(s.len(), (p / B + 1).min(4), "head {h} row {p}: {s:?}");
        }
    }
    // q_block not a multiple of the block cannot be evaluated group by group.
    let odd = Method {
        select: m.select.with_q_block(48).expect("valid"),
        ..m
    };
    assert!(selected_blocks(&f, &odd, &rows, 1).is_err());
}
