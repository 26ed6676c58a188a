//! Every preset, at its default size and across several servers, and the per-chip facts each
//! preset file cites: the fp8 rate and the size of its NVLink / HCCS / UB domain.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::{
    preset_toml, presets, Bandwidth, Cluster, ClusterSpec, FlopRate, Level, Node, Topology,
};

/// Each preset: the chips in one NVLink / HCCS / UB domain (the island), the island link's
/// bandwidth per direction, and the dense fp8 rate in TFLOP/s (`None`: no fp8).
const EXPECTED: &[(&str, u32, f64, Option<f64>)] = &[
    ("ascend910", 4, 30e9, None),
    ("ascend910b", 8, 28e9, None),
    ("cloudmatrix384", 384, 392e9, None),
    ("dgx-a100-40g", 8, 300e9, None),
    ("dgx-a100-80g", 8, 300e9, None),
    ("dgx-h100", 8, 450e9, Some(1979.0)),
    ("dgx-h200", 8, 450e9, Some(1979.0)),
    ("dgx-b200", 8, 900e9, Some(4500.0)),
    ("gb200-nvl72", 72, 900e9, Some(5000.0)),
    ("dgx2-v100", 16, 150e9, None),
    ("cpu-host", 2, 10e9, None),
];

fn spec(name: &str) -> ClusterSpec {
    ClusterSpec::from_toml(preset_toml(name).unwrap(), name).unwrap()
}

/// Chips that share chip 0's island, found from the links of the graph (not from the spec).
fn domain_of_chip0(t: &Topology) -> u32 {
    let switch = Node::IslandSwitch(0, 0);
    let on_switch = t
        .links()
        .iter()
        .filter(|l| l.from == switch && matches!(l.to, Node::Chip(_)))
        .count() as u32;
    if on_switch > 0 {
        return on_switch;
    }
    // Full mesh: chip 0 and its direct island peers.
    1 + t
        .links()
        .iter()
        .filter(|l| l.from == Node::Chip(0) && matches!(l.to, Node::Chip(_)))
        .count() as u32
}

#[test]
fn the_expected_table_covers_every_preset() {
    let mut listed: Vec<&str> = presets().iter().map(|(n, _)| *n).collect();
    let mut expected: Vec<&str> = EXPECTED.iter().map(|e| e.0).collect();
    listed.sort_unstable();
    expected.sort_unstable();
    assert_eq!(listed, expected);
}

#[test]
fn every_preset_builds_at_its_default_size_and_across_servers() {
    for (name, _) in presets() {
        let s = spec(name);
        let c = Cluster::new(s.clone()).unwrap();
        assert_eq!(c.chips(), s.chips, "{name}");
        if s.network.nics_per_server == 0 {
            // A single machine (cpu-host): more than one server is refused, naming the NICs.
            let e = Cluster::from_name(&format!("{name}:{}", 2 * s.server.chips))
                .unwrap_err()
                .to_string();
            assert!(e.contains("nics_per_server"), "{name}: {e}");
            continue;
        }
        // Two servers, and two racks' worth of servers (so the spine is built too).
        let per_rack = s.server.chips * s.network.servers_per_rack;
        for n in [2 * s.server.chips, 2 * per_rack] {
            let c = Cluster::from_name(&format!("{name}:{n}")).unwrap();
            let t = &c.topology;
            assert_eq!(t.chips(), n, "{name}:{n}");
            let last = n - 1;
            for b in [1, s.server.chips, n / 2, last] {
                let r = t.route(0, b).unwrap();
                assert!(!r.is_empty(), "{name}:{n} 0 -> {b}");
                let (bw, _) = t.path_summary(0, b).unwrap();
                assert!(bw.0 > 0.0 && bw.0.is_finite(), "{name}:{n} 0 -> {b}");
            }
            let next_server = if s.network.servers_per_rack > 1 {
                Level::Rack
            } else {
                Level::Spine
            };
            assert_eq!(
                t.level_between(0, s.server.chips),
                next_server,
                "{name}:{n}"
            );
            let last_level = if n > per_rack {
                Level::Spine
            } else {
                Level::Rack
            };
            assert_eq!(t.level_between(0, last), last_level, "{name}:{n}");
        }
    }
}

#[test]
fn every_domain_has_the_cited_size_and_link() {
    for &(name, size, bw, _) in EXPECTED {
        let c = Cluster::from_name(name).unwrap();
        let t = &c.topology;
        assert_eq!(t.island_size(), size, "{name}");
        assert_eq!(
            domain_of_chip0(t),
            size,
            "{name}: chips on chip 0's island links"
        );
        let same_island = (0..c.chips())
            .filter(|&b| t.level_between(0, b) == Level::Island)
            .count() as u32;
        assert_eq!(same_island, size, "{name}");
        let first_hop = t.route(0, 1).unwrap()[0];
        assert_eq!(
            t.links()[first_hop as usize].bandwidth,
            Bandwidth(bw),
            "{name}"
        );
    }
}

#[test]
fn an_nvl72_rack_is_one_72_gpu_switch_domain() {
    let c = Cluster::from_name("gb200-nvl72:144").unwrap();
    let t = &c.topology;
    assert_eq!(t.chips_per_server(), 72);
    // Any two GPUs of a rack: one hop up to the NVLink switch, one down, at 900 GB/s.
    assert_eq!(t.level_between(0, 71), Level::Island);
    assert_eq!(t.span(&(0..72).collect::<Vec<_>>()), Level::Island);
    let r = t.route(5, 70).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(t.links()[r[0] as usize].to, Node::IslandSwitch(0, 0));
    assert_eq!(t.path_summary(5, 70).unwrap().0, Bandwidth(900e9));
    // The next rack is reached through the NICs, one per GPU, at 400 Gb/s.
    assert_eq!(t.level_between(71, 72), Level::Rack);
    assert_eq!(t.nic_of(71), Node::Nic(0, 71));
    assert_eq!(t.path_summary(0, 72).unwrap().0, Bandwidth(50e9));
    // A partial rack is one domain; a count that is not whole racks names the valid ones.
    let c = Cluster::from_name("gb200-nvl72:64").unwrap();
    assert_eq!(c.topology.span(&(0..64).collect::<Vec<_>>()), Level::Island);
    let e = Cluster::from_name("gb200-nvl72:100")
        .unwrap_err()
        .to_string();
    assert!(e.contains("72") && e.contains("144"), "{e}");
}

#[test]
fn a_cloudmatrix_supernode_is_one_384_npu_domain() {
    let c = Cluster::from_name("cloudmatrix384:768").unwrap();
    let t = &c.topology;
    assert_eq!(t.span(&(0..384).collect::<Vec<_>>()), Level::Island);
    assert_eq!(t.path_summary(0, 383).unwrap().0, Bandwidth(392e9));
    // Supernodes meet at the spine, over 400 Gb/s RoCE per NPU.
    assert_eq!(t.level_between(0, 384), Level::Spine);
    assert_eq!(t.path_summary(0, 384).unwrap().0, Bandwidth(50e9));
}

#[test]
fn fp8_is_the_cited_dense_rate_or_absent() {
    for &(name, _, _, fp8) in EXPECTED {
        let s = spec(name);
        assert_eq!(s.chip.fp8.map(FlopRate::tflops), fp8, "{name}");
        if let Some(r) = s.chip.fp8 {
            // Dense fp8 is twice the dense 16-bit rate on every chip listed here.
            let bf16 = s.chip.bf16.unwrap_or(s.chip.fp16);
            assert!((r.0 / bf16.0 - 2.0).abs() < 0.01, "{name}");
        }
    }
}

#[test]
fn fp8_round_trips_through_toml() {
    for (name, _) in presets() {
        let s = spec(name);
        let text = toml::to_string(&s).unwrap();
        assert_eq!(
            text.contains("fp8"),
            s.chip.fp8.is_some(),
            "{name}:\n{text}"
        );
        let back = ClusterSpec::from_toml(&text, name).unwrap();
        assert_eq!(back, s, "{name}");
    }
    // Written with a unit by a user, and absent by default.
    let text = preset_toml("dgx-a100-80g").unwrap();
    assert_eq!(spec("dgx-a100-80g").chip.fp8, None);
    let with = text.replace(
        "fp32 = \"19.5 TFLOP/s\"",
        "fp32 = \"19.5 TFLOP/s\"\nfp8 = \"0.5 PFLOP/s\"",
    );
    let s = ClusterSpec::from_toml(&with, "f.toml").unwrap();
    assert_eq!(s.chip.fp8, Some(FlopRate(0.5e15)));
    let again = ClusterSpec::from_toml(&toml::to_string(&s).unwrap(), "g.toml").unwrap();
    assert_eq!(again.chip.fp8, Some(FlopRate(0.5e15)));
}

#[test]
fn a_bad_fp8_names_the_field() {
    let text = preset_toml("dgx-h100").unwrap();
    for bad in ["\"0 TFLOP/s\"", "0"] {
        let t = text.replace("fp8 = \"1979 TFLOP/s\"", &format!("fp8 = {bad}"));
        let e = ClusterSpec::from_toml(&t, "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("chip.fp8") && e.contains("positive"), "{e}");
    }
    let t = text.replace("fp8 = \"1979 TFLOP/s\"", "fp8 = \"1979 TFLOPS\"");
    let e = ClusterSpec::from_toml(&t, "f.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("TFLOP/s"), "{e}");
    // bf16 and fp32, where given, are checked the same way.
    let t = text.replace("bf16 = \"989 TFLOP/s\"", "bf16 = 0");
    let e = ClusterSpec::from_toml(&t, "f.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("chip.bf16"), "{e}");
}

#[test]
fn compute_units_are_the_cited_counts_and_zero_is_refused() {
    for (name, units) in [
        ("dgx-a100-80g", Some(108)),
        ("dgx-a100-40g", Some(108)),
        ("dgx-h100", Some(132)),
        ("dgx-h200", Some(132)),
        ("dgx2-v100", Some(80)),
        ("ascend910", Some(32)),
        ("ascend910b", Some(24)),
        ("cpu-host", None),
    ] {
        assert_eq!(spec(name).chip.compute_units, units, "{name}");
    }
    let text = preset_toml("dgx-a100-80g").unwrap();
    let t = text.replace("compute_units = 108", "compute_units = 0");
    let e = ClusterSpec::from_toml(&t, "f.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("chip.compute_units") && e.contains("108"), "{e}");
}
