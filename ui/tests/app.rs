//! The app's main interactions, driven through its accessibility tree (egui_kittest), and a
//! snapshot image of the strategy editor rendered on the CPU (wgpu on Mesa's lavapipe).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use pangu_ui::tabs::training::Request;
use pangu_ui::{App, Tab};

fn harness(app: App) -> Harness<'static, App> {
    Harness::builder()
        .with_size(egui::vec2(1280.0, 860.0))
        .build_state(|ctx, app: &mut App| app.ui(ctx), app)
}

/// Steps the app until `done` holds (background work finishes), at most `secs`.
fn wait(h: &mut Harness<'static, App>, secs: u64, done: impl Fn(&App) -> bool) {
    let t = Instant::now();
    while !done(h.state()) {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out");
        std::thread::sleep(Duration::from_millis(50));
        h.step();
    }
    h.step();
    h.step();
}

fn small() -> App {
    App::new("pangu-alpha-2.6b", "ascend910", 64)
}

#[test]
fn an_invalid_strategy_shows_why() {
    let mut h = harness(small());
    h.run_ok();
    assert!(h.query_by_label_contains("valid: dp").is_some());
    h.state_mut().editor.tp = 3;
    h.run_ok();
    assert!(h.query_by_label_contains("invalid:").is_some());
    // The reason, in the editor and the status bar: tp 3 does not divide the heads.
    assert!(h.query_all_by_label_contains("tp 3").count() >= 1);
    // The Simulate button is disabled while the strategy is invalid.
    h.get_by_label("Simulate").click();
    h.run_ok();
    assert!(h.state().sim_job.is_none());
}

#[test]
fn simulate_shows_results_and_the_timeline() {
    let mut h = harness(small());
    h.run_ok();
    h.get_by_label("Simulate").click();
    h.step();
    wait(&mut h, 120, |a| a.results.is_some());
    assert_eq!(h.state().tab, Tab::Results);
    assert!(h.query_by_label_contains("step time").is_some());
    assert!(h
        .query_by_label_contains("memory per device by stage")
        .is_some());
    h.get_by_label("Timeline").click();
    h.run_ok();
    assert!(h.query_by_label_contains("shown").is_some());
    let out = h.state().results.as_ref().unwrap().as_ref().unwrap();
    assert!(!out.timeline.spans.is_empty() && !out.timeline.rows.is_empty());
}

#[test]
fn clicking_a_search_row_loads_its_strategy() {
    let mut h = harness(small());
    h.run_ok();
    h.get_by_label("Search").click();
    h.run_ok();
    h.get_by_label("Run search").click();
    h.step();
    wait(&mut h, 300, |a| a.tabs.search.result.is_some());
    let best = match &h.state().tabs.search.result {
        Some(Ok(s)) => s.ranked[0].clone(),
        other => panic!("{:?}", other.as_ref().map(|_| ())),
    };
    h.get_by_label_contains(" 1  ").click();
    h.run_ok();
    let app = h.state();
    assert_eq!(app.tab, Tab::Strategy);
    assert_eq!(
        (app.editor.dp, app.editor.tp, app.editor.pp),
        (best.strategy.dp, best.strategy.tp, best.strategy.pp)
    );
    assert_eq!(
        app.validation.as_ref().unwrap().strategy.summary(),
        best.summary
    );
}

#[test]
fn the_search_tab_searches_the_space_typed_into_it() {
    let mut app = small();
    app.tab = Tab::Search;
    app.tabs.search.space = "tp=2; pp=4,".into();
    let mut h = harness(app);
    h.run_ok();
    // A bad entry is shown, and the search cannot start.
    assert!(h.query_by_label_contains("empty value").is_some());
    h.get_by_label("Run search").click();
    h.run_ok();
    assert!(h.state().search_job.is_none());
    h.state_mut().tabs.search.space = "tp=2 pp=4".into();
    h.state_mut().tabs.search.memory_fraction = 0.9;
    h.run_ok();
    h.get_by_label("Run search").click();
    h.step();
    wait(&mut h, 300, |a| a.tabs.search.result.is_some());
    let r = match &h.state().tabs.search.result {
        Some(Ok(s)) => s.clone(),
        other => panic!("{:?}", other.as_ref().map(|_| ())),
    };
    assert!(!r.ranked.is_empty());
    assert!(r
        .ranked
        .iter()
        .all(|c| c.strategy.tp == 2 && c.strategy.pp == 4));
    assert!(h.query_by_label_contains("space: tp=2 removed").is_some());
    assert!(h
        .query_by_label_contains("memory fraction 0.9 removed")
        .is_some());
}

#[test]
fn the_2048_chip_view_draws_within_a_frame_budget() {
    let mut app = App::default();
    app.tab = Tab::Cluster;
    let mut h = harness(app);
    h.run_ok();
    let mut ms: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            h.step();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    eprintln!(
        "2048-chip cluster view: median frame {median:.2} ms (UI code {:.2} ms)",
        h.state().frame_ms
    );
    assert!(median < 33.0, "median frame {median:.1} ms");
    assert!(h.query_by_label_contains("2048 chips").is_some());
}

#[test]
fn strategy_editor_snapshot() {
    let mut app = small();
    app.show_frame_ms = false;
    let mut h = harness(app);
    h.run_ok();
    h.snapshot("strategy_editor");
}

/// The app on the Training tab, its run (as `edit` sets it up) started by the button.
fn start_training(edit: impl FnOnce(&mut Request)) -> Harness<'static, App> {
    let mut app = small();
    app.tab = Tab::Training;
    edit(&mut app.tabs.training.request);
    let mut h = harness(app);
    h.run_ok();
    assert!(h.query_by_label_contains("deadline").is_some());
    h.get_by_label("Train pangu-alpha-tiny").click();
    h.step();
    h
}

fn training_done(a: &App) -> bool {
    a.training.as_ref().is_some_and(|t| !t.running())
}

#[test]
fn the_training_monitor_plots_a_falling_loss_live() {
    let mut h = start_training(|r| r.eval_every = 2);
    wait(&mut h, 300, |a| {
        a.tabs.training.losses.len() >= 4 && !a.tabs.training.evals.is_empty()
    });
    let losses: Vec<f64> = h.state().tabs.training.losses.iter().map(|l| l.1).collect();
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(
        losses.last().unwrap() < losses.first().unwrap(),
        "{losses:?}"
    );
    assert!(h.query_by_label_contains("step ").is_some());
    // Evaluated on held-out text every 2 steps.
    let evals = h.state().tabs.training.evals.clone();
    assert!(
        evals.iter().all(|e| e.0 % 2 == 0 && e.1.is_finite()),
        "{evals:?}"
    );
    h.get_by_label("Stop").click();
    h.step();
    // The session stops after its step and evaluates once more on all held-out samples.
    wait(&mut h, 120, training_done);
    let status = h.state().tabs.training.status.clone().unwrap();
    assert!(status.starts_with("stopped at step"), "{status}");
    assert!(h.query_by_label_contains("held-out loss").is_some());
    assert!(h.query_by_label("Train pangu-alpha-tiny").is_some());
}

#[test]
fn the_training_monitor_stops_at_its_deadline() {
    // 60 ms of training: the first step outlasts it.
    let mut h = start_training(|r| r.minutes = 0.001);
    wait(&mut h, 300, training_done);
    let tab = &h.state().tabs.training;
    let status = tab.status.clone().unwrap();
    assert!(status.starts_with("stopped at the deadline"), "{status}");
    assert!(!tab.losses.is_empty() && tab.losses.len() < 2000);
    assert_eq!(tab.evals.len(), 1, "the final evaluation only");
}
