//! Leave-one-source-out cross-validation on a tiny synthetic runs file (the held-out source
//! never enters its own fold's fit), and the confidence lookup (nearest row, far warning).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_sim::validate::confidence::{self, distance, lookup, Regime};
use pangu_sim::validate::crossval::{cross_validate, Basis, Criterion, CvRow};
use pangu_sim::validate::{prepare_row, read_rows, Prepared};

const HEADER: &str = "row_id,source,model,layers,hidden,heads,ffn,vocab,seq_len,accelerator,n_chips,tp,pp,dp,micro_batch,global_batch_seqs,recompute,zero_stage,precision,tokens_per_s_per_chip,verification";

/// Two rows per source (A, B, C), tiny GPTs on 8 A100s with different tp/dp.
fn csv(published: &[f64]) -> String {
    let layouts = [(1, 8), (2, 4), (4, 2), (8, 1), (2, 4), (1, 8)];
    let mut out = format!("{HEADER}\n");
    for (i, (tp, dp)) in layouts.iter().enumerate() {
        let src = ["Source A", "Source B", "Source C"][i / 2];
        let hidden = if i % 2 == 0 { 1024 } else { 768 };
        out.push_str(&format!(
            "R{i},{src},GPT-tiny,2,{hidden},8,{},1024,512,A100-SXM4-80GB,8,{tp},1,{dp},4,{},none,0,fp16,{},verified: synthetic\n",
            4 * hidden,
            4 * dp,
            published[i]
        ));
    }
    out
}

fn prepared(published: &[f64]) -> Vec<Prepared> {
    read_rows(&csv(published), "synthetic.csv")
        .unwrap()
        .iter()
        .map(|r| prepare_row(r, None).unwrap())
        .collect()
}

fn at(p: &Prepared, plateau: f64) -> f64 {
    let mut cal = p.calibration.clone();
    cal.matmul.max_efficiency = plateau;
    p.predict(&cal).unwrap().0
}

#[test]
fn the_held_out_source_is_excluded_from_its_fit() {
    // Source A's rows "measured" as if the plateau were 0.9, B's and C's as if 0.6.
    let draft = prepared(&[1.0; 6]);
    let truth = [0.9, 0.9, 0.6, 0.6, 0.6, 0.6];
    let published: Vec<f64> = draft.iter().zip(truth).map(|(p, t)| at(p, t)).collect();
    let rows = prepared(&published);
    let cv = cross_validate(&rows, &[], Criterion::Worst, &mut |_, _| {});
    assert_eq!(cv.folds.len(), 3);
    for fold in &cv.folds {
        let fit = &fold.fits[0];
        assert_eq!(fit.basis, Basis::Refit);
        for id in &fold.rows {
            assert!(!fit.rows.contains(id), "{id} fitted in its own fold");
        }
        assert_eq!(fit.rows.len(), 4, "{:?}", fit.rows);
    }
    // Left out, A's rows are predicted with B's and C's plateau: 0.6, exactly what they imply.
    let a = &cv.folds[0].fits[0];
    assert!((a.plateau.unwrap() - 0.6).abs() < 0.003, "{a:?}");
    // With A held in (B or C left out), the fit moves towards A's 0.9.
    let b = &cv.folds[1].fits[0];
    assert!(b.plateau.unwrap() > 0.65, "{b:?}");
    // A's held-out error is what predicting its rows at 0.6 gives; in-sample is the shipped one.
    let r0 = cv.rows.iter().find(|r| r.row_id == "R0").unwrap();
    let expect = at(&rows[0], a.plateau.unwrap()) / published[0] - 1.0;
    assert!((r0.cv.unwrap() - expect).abs() < 1e-6, "{r0:?}");
    assert!(r0.cv.unwrap() < -0.05, "{r0:?}");
    let shipped = at(&rows[0], rows[0].calibration.matmul.max_efficiency);
    assert!((r0.in_sample - (shipped / published[0] - 1.0)).abs() < 1e-9);
    // The fit on every row uses all six.
    assert_eq!(cv.all_rows_fit[0].rows.len(), 6);
    // Summaries: gate rows are all six, cross-validated worse than a perfect in-sample source.
    let gate = &cv.scopes[0];
    assert_eq!((gate.n, gate.cv_n), (6, 6));
}

#[test]
fn a_family_without_held_in_rows_uses_its_prior() {
    let draft = prepared(&[1.0; 6]);
    let published: Vec<f64> = draft.iter().map(|p| at(p, 0.7)).collect();
    // One source only: leaving it out leaves the A100 family without rows.
    let text = csv(&published)
        .replace("Source B", "Source A")
        .replace("Source C", "Source A");
    let rows: Vec<Prepared> = read_rows(&text, "one.csv")
        .unwrap()
        .iter()
        .map(|r| prepare_row(r, None).unwrap())
        .collect();
    let cv = cross_validate(&rows, &[], Criterion::Median, &mut |_, _| {});
    assert_eq!(cv.folds.len(), 1);
    let fit = &cv.folds[0].fits[0];
    assert_eq!(fit.basis, Basis::Prior);
    assert!(fit.rows.is_empty());
    assert_eq!(fit.plateau, Some(0.85));
    // The fit on every row recovers the plateau the rows were made with.
    let all = cv.all_rows_fit[0].plateau.unwrap();
    assert!((all - 0.7).abs() < 0.003, "{all}");
}

fn row(id: &str, family: &str, params_b: f64, tp: u32, pp: u32, dp: u32, cv: f64) -> CvRow {
    CvRow {
        row_id: id.into(),
        source: "s".into(),
        gate: true,
        fit: true,
        regime: regime(family, params_b, tp, pp, dp),
        in_sample: 0.0,
        cv: Some(cv),
        plateau: Some(0.8),
        basis: Basis::Refit,
    }
}

fn regime(family: &str, params_b: f64, tp: u32, pp: u32, dp: u32) -> Regime {
    Regime {
        family: family.into(),
        params_b,
        tp,
        pp,
        dp,
        sharding: "none".into(),
        attention: "materialised".into(),
        fp8: false,
    }
}

#[test]
fn the_nearest_row_is_picked_and_far_plans_warn() {
    let table = vec![
        row("SMALL", "a100", 1.0, 1, 1, 8, 0.02),
        row("BIG", "a100", 175.0, 8, 8, 1, 0.06),
        row("BIG2", "a100", 170.0, 8, 16, 1, 0.10),
        row("H", "h100", 175.0, 8, 8, 1, 0.01),
    ];
    let c = lookup(&regime("a100", 200.0, 8, 8, 2), &table);
    assert_eq!(c.nearest[0].row_id, "BIG");
    assert!(c.warning.is_none(), "{}", c.line);
    assert_eq!(c.nearest.len(), 2, "{:?}", c.nearest);
    assert!(c.line.contains("cross-validated |err| 8 %"), "{}", c.line);
    assert!(c.line.contains("tp8·pp8·dp1"), "{}", c.line);
    // The other family's row, identical in shape, is never near.
    let far = lookup(&regime("a100", 30.0, 1, 1, 512), &table);
    assert!(far.warning.is_some(), "{}", far.line);
    assert!(
        far.line.contains("nearest: SMALL") && far.line.contains("±50 %"),
        "{}",
        far.line
    );
    // A family without cross-validated rows warns.
    let none = lookup(&regime("b200", 175.0, 8, 8, 1), &table);
    assert!(
        none.line.contains("no cross-validated run on b200"),
        "{}",
        none.line
    );
}

#[test]
fn distance_units() {
    let a = regime("a100", 10.0, 8, 1, 1);
    assert!((distance(&a, &regime("a100", 40.0, 8, 1, 1)) - 1.0).abs() < 1e-9);
    assert!((distance(&a, &regime("a100", 10.0, 1, 1, 1)) - 1.0).abs() < 1e-9);
    assert!((distance(&a, &regime("a100", 10.0, 8, 1, 16)) - 1.0).abs() < 1e-9);
    let mut z = a.clone();
    z.sharding = "zero3".into();
    assert!((distance(&a, &z) - 1.0).abs() < 1e-9);
    // The other attention kernel is a unit, fp8 against not three quarters of one.
    let mut flash = a.clone();
    flash.attention = "flash".into();
    assert!((distance(&a, &flash) - 1.0).abs() < 1e-9);
    let mut fp8 = a.clone();
    fp8.fp8 = true;
    assert!((distance(&a, &fp8) - 0.75).abs() < 1e-9);
    assert!(distance(&a, &regime("h100", 10.0, 8, 1, 1)).is_infinite());
}

#[test]
fn a_flash_plan_is_vouched_for_by_flash_rows_only() {
    // A shipped row fitted with materialised attention and a measured flash row of the same
    // shape: the flash plan gets the flash row's error, and its mix says flash.
    let mut sweep = row("SWEEP", "h100", 8.0, 1, 1, 8, 0.6);
    sweep.regime.attention = "flash".into();
    sweep.basis = Basis::Unfitted;
    let table = vec![row("SHIPPED", "h100", 8.0, 1, 1, 8, 0.03), sweep];
    let mut plan = regime("h100", 8.0, 1, 1, 8);
    plan.attention = "flash".into();
    let c = lookup(&plan, &table);
    assert_eq!(c.nearest.len(), 1, "{:?}", c.nearest);
    assert_eq!(c.nearest[0].row_id, "SWEEP");
    assert!(
        c.line.contains("60 %") && c.line.contains("dp8·flash"),
        "{}",
        c.line
    );
    let m = lookup(&regime("h100", 8.0, 1, 1, 8), &table);
    assert_eq!(m.nearest[0].row_id, "SHIPPED");
}

#[test]
fn the_shipped_table_parses() {
    let t = confidence::shipped().unwrap();
    assert!(t.iter().all(|r| !r.row_id.is_empty()));
}
