//! Faults: stragglers, degraded and failed links (rerouted or refused), two jobs sharing a
//! network.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_sim::faults::{Faults, LinkFault, Straggler};
use pangu_sim::{simulate, simulate_faulty, simulate_shared, Options};
use pangu_strategies::{resolve_inputs, Plan, StrategySpec};

fn plan_on(model: &str, cluster: Cluster, user: &str) -> Plan {
    let m = ModelConfig::preset(model).unwrap();
    let user = StrategySpec::from_toml(user, "test").unwrap();
    let r = resolve_inputs(&m, Some(cluster), &user).unwrap();
    Plan::build(&r.model, &r.cluster, &r.strategy).unwrap()
}

/// pangu-alpha-2.6b on two DGX A100 servers: tp 8 inside a server, dp 2 across them.
fn small() -> Plan {
    plan_on(
        "pangu-alpha-2.6b",
        Cluster::from_name("dgx-a100-40g:16").unwrap(),
        "tp = 8\nmicro_batch_size = 4\nglobal_batch = 16",
    )
}

fn link(from: &str, to: &str, factor: Option<f64>, failed: bool) -> LinkFault {
    LinkFault {
        from: from.into(),
        to: to.into(),
        bandwidth_factor: factor,
        failed,
        both_directions: true,
    }
}

#[test]
fn a_straggler_slows_its_own_compute_and_everyone_waits_for_it() {
    let p = small();
    let healthy = simulate(&p).unwrap().report;
    let faults = Faults {
        stragglers: vec![Straggler {
            device: 3,
            speed: 0.5,
        }],
        links: vec![],
    };
    let (run, _, _) = simulate_faulty(&p, &faults, Options::default()).unwrap();
    let r = run.report;
    assert!(
        r.step_time_s > 1.3 * healthy.step_time_s,
        "{} vs {}",
        r.step_time_s,
        healthy.step_time_s
    );
    let dev = |i: u32| r.devices.iter().find(|d| d.rank == i).unwrap().breakdown;
    // The straggler computes twice as long; its tensor-parallel peers wait the difference at
    // the collectives (charged to `idle`, waiting for a slower peer, without a pipeline).
    let (slow, peer) = (dev(3), dev(2));
    assert!(
        (slow.compute / peer.compute - 2.0).abs() < 0.01,
        "{slow:?} {peer:?}"
    );
    let extra = slow.compute + slow.recompute - peer.compute - peer.recompute;
    assert!(
        (peer.idle - extra).abs() < 0.01 * extra,
        "{slow:?} {peer:?}"
    );
    assert_eq!(slow.idle, 0.0);
    // Every device's categories still sum to the step.
    for d in &r.devices {
        let sum: f64 = pangu_strategies::Category::ALL
            .iter()
            .map(|&c| d.breakdown.get(c))
            .sum();
        assert!(
            (sum - r.step_time_s).abs() < 1e-6 * r.step_time_s,
            "rank {}",
            d.rank
        );
    }
}

#[test]
fn degraded_and_failed_links_slow_the_step_and_traffic_goes_around_a_failure() {
    let p = small();
    let healthy = simulate(&p).unwrap().report.step_time_s;
    // The data-parallel gradient all-reduce crosses the servers through chip 0's NIC.
    let degraded = Faults {
        stragglers: vec![],
        links: vec![link("nic:0:0", "tor:0", Some(0.1), false)],
    };
    let (d, _, _) = simulate_faulty(&p, &degraded, Options::default()).unwrap();
    assert!(
        d.report.step_time_s > healthy,
        "{} vs {healthy}",
        d.report.step_time_s
    );
    // A failed NIC uplink: chip 0 relays through a peer chip's NIC; the step still finishes.
    let failed = Faults {
        stragglers: vec![],
        links: vec![link("nic:0:0", "tor:0", None, true)],
    };
    let (f, _, faulty) = simulate_faulty(&p, &failed, Options::default()).unwrap();
    assert!(f.report.step_time_s >= healthy);
    let route = faulty.cluster.topology.route(0, 8).unwrap();
    let broken = faulty
        .cluster
        .topology
        .link_between("nic:0:0".parse().unwrap(), "tor:0".parse().unwrap())
        .unwrap();
    assert!(!route.contains(&broken), "the route avoids the failed link");
    // The spine is the only path between racks: failing a rack's uplink cannot be routed around.
    let wide = plan_on(
        "pangu-alpha-2.6b",
        Cluster::from_name("dgx-a100-40g:320").unwrap(),
        "tp = 8\ndp = 40\nmicro_batch_size = 1\nglobal_batch = 40",
    );
    let cut = Faults {
        stragglers: vec![],
        links: vec![link("tor:0", "spine", None, true)],
    };
    let e = simulate_faulty(&wide, &cut, Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Tor(0) -> Spine failed") && e.contains("no other path"),
        "{e}"
    );
}

#[test]
fn bad_faults_are_rejected_with_the_field() {
    let p = small();
    let cases = [
        (
            "[[straggler]]\ndevice = 99\nspeed = 0.5",
            "straggler[0].device = 99",
        ),
        (
            "[[straggler]]\ndevice = 1\nspeed = 1.5",
            "straggler[0].speed = 1.5",
        ),
        (
            "[[straggler]]\ndevice = 1\nspeed = 0.5\nslow = true",
            "unknown field `slow`",
        ),
        (
            "[[link]]\nfrom = \"chip:0\"\nto = \"tor:7\"\nfailed = true",
            "no link chip:0 -> tor:7",
        ),
        (
            "[[link]]\nfrom = \"gpu:0\"\nto = \"tor:0\"\nfailed = true",
            "link[0].from",
        ),
        (
            "[[link]]\nfrom = \"nic:0:0\"\nto = \"tor:0\"",
            "bandwidth_factor in (0, 1]",
        ),
        (
            "[[link]]\nfrom = \"nic:0:0\"\nto = \"tor:0\"\nbandwidth_factor = 0.0",
            "link[0].bandwidth_factor = 0",
        ),
    ];
    for (text, want) in cases {
        let e = Faults::from_toml(text, "f.toml")
            .and_then(|f| simulate_faulty(&p, &f, Options::default()).map(|_| ()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
}

#[test]
fn two_jobs_slow_each_other_only_where_they_share_links() {
    // DGX A100 servers, 2 per rack, the spine oversubscribed 4:1. Job A on servers 0-2 and
    // job B on servers 3-5: rack 1 holds A's server 2 and B's server 3, so both jobs'
    // gradient traffic climbs its uplink.
    let text = pangu_hardware::preset_toml("dgx-a100-40g")
        .unwrap()
        .replace("servers_per_rack = 20", "servers_per_rack = 2")
        .replace(
            "spine_oversubscription = 1.0",
            "spine_oversubscription = 4.0",
        );
    assert!(text.contains("servers_per_rack = 2\n") || text.contains("servers_per_rack = 2 "));
    let cluster = Cluster::from_toml(&text, "shared.toml", Some(48)).unwrap();
    let job = "devices = 24\ntp = 8\ndp = 3\nmicro_batch_size = 1\nglobal_batch = 3";
    let a = plan_on("pangu-alpha-2.6b", cluster.clone(), job);
    let b = plan_on("pangu-alpha-2.6b", cluster, job);
    let r = simulate_shared(&a, &b).unwrap();
    let (da, db) = r.slowdowns();
    assert_eq!(r.a_alone_s, r.b_alone_s);
    assert!(da > 0.01 && db > 0.01, "{r:?}");
    // A non-blocking spine and whole racks per job: nothing is shared, nothing slows.
    let text = pangu_hardware::preset_toml("dgx-a100-40g")
        .unwrap()
        .replace("servers_per_rack = 20", "servers_per_rack = 3");
    let cluster = Cluster::from_toml(&text, "apart.toml", Some(48)).unwrap();
    let a = plan_on("pangu-alpha-2.6b", cluster.clone(), job);
    let b = plan_on("pangu-alpha-2.6b", cluster, job);
    let r = simulate_shared(&a, &b).unwrap();
    assert_eq!(r.slowdowns(), (0.0, 0.0), "{r:?}");
    // Job A must fill whole servers.
    let odd = plan_on(
        "pangu-alpha-2.6b",
        Cluster::from_name("dgx-a100-40g:32").unwrap(),
        "devices = 4\ntp = 4\nmicro_batch_size = 1\nglobal_batch = 4",
    );
    let e = simulate_shared(&odd, &odd).unwrap_err().to_string();
    assert!(e.contains("not whole 8-chip servers"), "{e}");
}
