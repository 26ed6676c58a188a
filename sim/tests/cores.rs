//! Virtual devices that share a host's cores (`server.shared_cores`): processor sharing.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_sim::simulate;
use pangu_strategies::{resolve_inputs, Plan, StrategySpec};

/// One host of `chips` virtual devices, each with one core's rates, sharing `cores` cores
/// (none: each device has a core of its own).
fn host(chips: u32, cores: Option<f64>, gflops: f64) -> Cluster {
    let shared = cores.map_or(String::new(), |c| format!("shared_cores = {c}\n"));
    let text = format!(
        "name = \"host\"\nchips = {chips}\ncollective_library = \"nccl\"\n\
         [chip]\nname = \"core\"\nfp16 = \"{gflops} GFLOP/s\"\nfp32 = \"{gflops} GFLOP/s\"\n\
         hbm = \"4 GiB\"\nhbm_bandwidth = \"{bw} GB/s\"\nreserved = \"256 MiB\"\n\
         [server]\nchips = {chips}\nislands = 1\n{shared}\
         [server.island]\nkind = \"switch\"\nbandwidth = \"10 GB/s\"\nlatency = \"20 us\"\n\
         [network]\nnics_per_server = 0\nnic = {{ bandwidth = \"1 GB/s\", latency = \"50 us\" }}\n\
         host_link = {{ bandwidth = \"10 GB/s\", latency = \"0 us\" }}\nservers_per_rack = 1\n\
         spine_oversubscription = 1.0\nspine_latency = \"0 us\"\n",
        bw = 20.0 * gflops / 100.0
    );
    Cluster::from_toml(&text, "test host", None).unwrap()
}

fn plan(cluster: Cluster, strategy: &str) -> Plan {
    let m = ModelConfig::preset("pangu-alpha-tiny").unwrap();
    let user = StrategySpec::from_toml(
        &format!("{strategy}\nprecision = \"fp32\"\nglobal_batch = 8"),
        "test",
    )
    .unwrap();
    let r = resolve_inputs(&m, Some(cluster), &user).unwrap();
    Plan::build(&r.model, &r.cluster, &r.strategy).unwrap()
}

fn step(cluster: Cluster, strategy: &str) -> pangu_strategies::StepReport {
    simulate(&plan(cluster, strategy)).unwrap().report
}

#[test]
fn enough_cores_change_nothing() {
    for s in ["dp = 4", "tp = 2\npp = 2\nmicro_batches = 4"] {
        let own = step(host(4, None, 100.0), s);
        let shared = step(host(4, Some(4.0), 100.0), s);
        assert_eq!(own.step_time_s, shared.step_time_s, "{s}");
    }
}

#[test]
fn devices_that_all_compute_share_the_cores_equally() {
    // dp 4 on 2 cores: the four replicas compute at the same moments, each at half a core,
    // exactly like four devices of half the rate and bandwidth with cores of their own.
    let shared = step(host(4, Some(2.0), 100.0), "dp = 4");
    let half = step(host(4, None, 50.0), "dp = 4");
    let own = step(host(4, None, 100.0), "dp = 4");
    let c = |r: &pangu_strategies::StepReport| r.breakdown.compute;
    assert!(
        (c(&shared) / c(&half) - 1.0).abs() < 0.01,
        "{} vs {}",
        c(&shared),
        c(&half)
    );
    assert!((c(&shared) / c(&own) - 2.0).abs() < 0.02);
}

#[test]
fn a_pipeline_bubble_hands_its_cores_to_the_busy_stages() {
    // pp 4 on 2 cores: while the pipeline fills and drains fewer than four stages compute,
    // and those run faster than an equal static share of the cores would let them.
    let s = "pp = 4\nmicro_batches = 4\nschedule = \"1f1b\"";
    let shared = step(host(4, Some(2.0), 100.0), s).step_time_s;
    let static_share = step(host(4, None, 50.0), s).step_time_s;
    let own = step(host(4, None, 100.0), s).step_time_s;
    assert!(
        shared < 0.95 * static_share,
        "shared {shared} vs static {static_share}"
    );
    assert!(shared > 1.05 * own, "shared {shared} vs own cores {own}");
}

#[test]
fn shared_cores_are_deterministic_and_account_every_second() {
    let p = plan(
        host(4, Some(1.5), 100.0),
        "tp = 2\npp = 2\nmicro_batches = 4",
    );
    let a = simulate(&p).unwrap().report;
    let b = simulate(&p).unwrap().report;
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    for d in &a.devices {
        let sum: f64 = pangu_strategies::Category::ALL
            .iter()
            .map(|&c| d.breakdown.get(c))
            .sum();
        assert!(
            (sum / a.step_time_s - 1.0).abs() < 1e-6,
            "device {}",
            d.rank
        );
    }
}

#[test]
fn impossible_core_counts_are_refused() {
    for bad in ["0", "-1", "nan", "inf"] {
        let text = pangu_hardware::preset_toml("cpu-host")
            .unwrap()
            .replace("shared_cores = 2", &format!("shared_cores = {bad}"));
        let e = Cluster::from_toml(&text, "bad host", None).unwrap_err();
        assert!(e.to_string().contains("shared_cores"), "{bad}: {e}");
    }
}

#[test]
fn the_analytic_ranking_model_prices_shared_cores_too() {
    use pangu_sim::analytic::Analytic;
    use pangu_strategies::search::CostModel;
    // dp 4 on 2 cores: the search's closed form and the simulator both see half a core each.
    let shared = plan(host(4, Some(2.0), 100.0), "dp = 4");
    let own = plan(host(4, None, 100.0), "dp = 4");
    let (a_shared, a_own) = (
        Analytic.step_time(&shared).unwrap(),
        Analytic.step_time(&own).unwrap(),
    );
    assert!(a_shared > 1.8 * a_own, "{a_shared} vs {a_own}");
    let d = simulate(&shared).unwrap().report.step_time_s;
    assert!(
        (a_shared - d).abs() / d < 0.25,
        "analytic {a_shared} vs simulated {d}"
    );
}
