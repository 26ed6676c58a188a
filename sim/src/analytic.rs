//! The analytic cost model: a closed-form step time for ranking many strategies fast.
//!
//! Same op costs as the simulator (the roofline of [`crate::cost`]), communication by the
//! alpha-beta model of each collective algorithm on the narrowest link of its group
//! (Thakur et al. 2005; bus-bandwidth factors `2(n-1)/n` for all-reduce, `(n-1)/n` for
//! gathers and scatters) with the latency terms of the group's own program as the simulator
//! prices them (the library's start-up and per-step cost, [`crate::protocol`]; pipeline sends
//! pay the wire only, as the simulator's), and a pipeline of `m` micro-batches through `p` stages:
//! `(m - 1)·max_s T_s + Σ_s T_s` for 1F1B and GPipe (fill and drain through every stage once),
//! the fill and drain divided by `v` with interleaving (Narayanan et al. 2021). Data-parallel
//! reduction overlaps the last micro-batch's backward; what exceeds it is exposed. No
//! contention between concurrent transfers: that is what the discrete-event model adds.

use pangu_model::ops::OpKind;
use pangu_strategies::search::CostModel;
use pangu_strategies::strategy::{Axis, CpComm};
use pangu_strategies::{memory, BackwardPrefetch, CollectiveKind, OptShard, Plan, Remat};

use crate::cost::{Calibration, CostModel as OpCost};
use std::rc::Rc;

use crate::collective::Programs;
use crate::protocol::{Shape, StepCosts};
use pangu_strategies::collective::CollectiveGroup;

/// The analytic model.
#[derive(Debug, Clone, Copy, Default)]
pub struct Analytic;

/// The discrete-event model (folded), for refining the best candidates.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscreteEvent;

impl CostModel for DiscreteEvent {
    fn name(&self) -> &'static str {
        "discrete-event"
    }
    fn step_time(&self, plan: &Plan) -> Result<f64, String> {
        crate::simulate(plan)
            .map(|r| r.report.step_time_s)
            .map_err(|e| e.to_string())
    }
}

/// Seconds for a collective of `bytes` over `n` ranks whose narrowest link runs at `bw`
/// bytes/s, with `steps` latency terms of `alpha` seconds.
fn collective_time(kind: CollectiveKind, n: u32, bytes: f64, link: &GroupLink) -> f64 {
    if n <= 1 || bytes <= 0.0 {
        return 0.0;
    }
    let nf = f64::from(n);
    let (factor, steps) = match kind {
        CollectiveKind::AllReduce => (2.0 * (nf - 1.0) / nf, 2.0 * (nf - 1.0)),
        _ => ((nf - 1.0) / nf, nf - 1.0),
    };
    let wire = factor * bytes / link.bw;
    let Some(shape) = link.shape(kind) else {
        // No program for the group: the alpha-beta model's steps at the narrowest hop.
        return wire + steps * link.lat;
    };
    // The latency terms of the group's own program, as the simulator runs it: the library's
    // start-up, and per step the wire plus what the library adds to it.
    let p = link.costs.price(&shape.steps, bytes);
    let hops: f64 = shape
        .steps
        .iter()
        .map(|s| s.latency + secs(p.step(s)))
        .sum();
    secs(p.base) + wire * p.scale + hops
}

fn secs(ns: u64) -> f64 {
    ns as f64 * 1e-9
}

thread_local! {
    /// The programs' shapes of the last cluster priced (its spec, and the shapes by group): a
    /// search prices tens of thousands of candidates whose groups repeat, and building a
    /// program of a large group is far dearer than the rest of the closed form.
    static SHAPES: std::cell::RefCell<(Option<pangu_hardware::ClusterSpec>, Programs)> =
        std::cell::RefCell::new((None, Programs::default()));
}

/// A group's narrowest link as the alpha-beta model sees it, and its programs.
struct GroupLink {
    /// Effective bandwidth, bytes/s.
    bw: f64,
    /// One hop's wire latency, seconds.
    lat: f64,
    /// The shapes of the group's programs (its `[collectives]` algorithm), by collective.
    shapes: Vec<(CollectiveKind, Rc<Shape>)>,
    /// What the collective library adds.
    costs: StepCosts,
}

impl GroupLink {
    fn shape(&self, kind: CollectiveKind) -> Option<&Shape> {
        self.shapes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| s.as_ref())
    }
}

impl Analytic {
    /// Narrowest effective bandwidth (bytes/s) and one-hop latency between consecutive
    /// members of the first group along `axis`.
    fn group_link(plan: &Plan, axis: Axis, cal: &Calibration) -> Result<GroupLink, String> {
        let topo = &plan.cluster.topology;
        let g = plan.mesh.group_of(axis, 0);
        let key = match axis {
            Axis::Tp => CollectiveGroup::Tp,
            Axis::Dp => CollectiveGroup::Dp,
            Axis::Pp => CollectiveGroup::Pp,
            Axis::Cp => CollectiveGroup::Cp,
        };
        let algo = plan.algorithm(key, &g);
        let shapes = SHAPES.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.0.as_ref() != Some(&plan.cluster.spec) {
                *cache = (Some(plan.cluster.spec.clone()), Programs::default());
            }
            [
                CollectiveKind::AllReduce,
                CollectiveKind::AllGather,
                CollectiveKind::ReduceScatter,
            ]
            .into_iter()
            .map(|kind| {
                let s = cache.1.shape(kind, algo, &g, topo);
                s.map(|s| (kind, s)).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()
        })?;
        let mut bw = f64::INFINITY;
        let mut lat: f64 = 0.0;
        for w in g
            .windows(2)
            .chain(std::iter::once([g[g.len() - 1], g[0]].as_slice()))
        {
            if w[0] == w[1] {
                continue;
            }
            if let Ok((b, l)) = topo.path_summary(w[0], w[1]) {
                bw = bw.min(b.0);
                lat = lat.max(l.0);
            }
        }
        Ok(GroupLink {
            bw: bw * cal.link_efficiency,
            lat,
            shapes,
            costs: StepCosts::new(cal),
        })
    }
}

/// Exposed seconds of one layer's K/V exchange under context parallelism, given the
/// attention core's forward and backward seconds, over a cp group whose narrowest link runs
/// `link`: the ring's steps as the simulator runs them (each
/// hidden behind its attention block, what outlasts it exposed; backward carries K/V and
/// dK/dV and ends with one unhidden dK/dV hop), the all-gather variant's collectives whole.
fn cp_exposed(plan: &Plan, attn_f: f64, attn_b: f64, recompute: bool, link: &GroupLink) -> f64 {
    let s = &plan.strategy;
    let n = s.cp.max(1);
    if n <= 1 {
        return 0.0;
    }
    let x = plan.kv_block_bytes().as_f64();
    let passes = if recompute { 2.0 } else { 1.0 };
    match s.cp_comm {
        CpComm::AllGather => {
            let ag = collective_time(CollectiveKind::AllGather, n, x * f64::from(n), link);
            let rs = collective_time(CollectiveKind::ReduceScatter, n, x * f64::from(n), link);
            passes * ag + ag + rs
        }
        CpComm::Ring => {
            // Each ring step is a one-step collective of its own (the library's start-up, one
            // hop: the first step of the group's ring), priced for its blocks as the simulator
            // prices each instance (a buffer of `blocks · cp` blocks).
            let first = link
                .shape(CollectiveKind::AllGather)
                .and_then(|s| s.steps.first().copied())
                .unwrap_or_default();
            let step = |blocks: f64, hide: f64| {
                let p = link.costs.price(&[first], blocks * x * f64::from(n));
                let alpha = secs(p.base) + first.latency + secs(p.step(&first));
                (blocks * x * p.scale / link.bw + alpha - hide).max(0.0)
            };
            let (bf, bb) = (attn_f / f64::from(n), attn_b / f64::from(n));
            let fwd = f64::from(n - 1) * step(1.0, bf);
            let mut bwd = step(1.0, 0.0);
            for k in 0..n {
                let blocks = f64::from(u8::from(k + 1 < n)) + f64::from(u8::from(k >= 1));
                bwd += step(blocks, bb);
            }
            passes * fwd + bwd
        }
    }
}

impl CostModel for Analytic {
    fn name(&self) -> &'static str {
        "analytic"
    }

    fn step_time(&self, plan: &Plan) -> Result<f64, String> {
        let cal = Calibration::for_chip(&plan.cluster.spec.chip).map_err(|e| e.to_string())?;
        let cost = OpCost::for_plan(plan, cal.clone()).map_err(|e| e.to_string())?;
        let s = &plan.strategy;
        let tp_link = Self::group_link(plan, Axis::Tp, &cal)?;
        let dp_link = Self::group_link(plan, Axis::Dp, &cal)?;
        let pp_link = Self::group_link(plan, Axis::Pp, &cal)?;
        let cp_link = Self::group_link(plan, Axis::Cp, &cal)?;
        let recompute_fwd = matches!(s.remat, Remat::Full | Remat::Every(_));
        let overlap = s.tp_comm_overlap && s.tp > 1;
        // Devices sharing a host's cores (`server.shared_cores`): with every device of a
        // server busy, as in a pipeline's steady state, each gets `cores / devices` of a core
        // (the simulator shares them event by event, bubbles included).
        let slow = plan.cluster.spec.server.shared_cores.map_or(1.0, |cores| {
            let busy = plan.cluster.topology.chips_per_server().min(s.devices);
            (f64::from(busy) / cores).max(1.0)
        });
        // Per-micro-batch time of each stage: compute (forward, backward, recompute), the
        // tensor-parallel collectives it waits for, and its pipeline sends.
        let mut stage_t = Vec::with_capacity(plan.stages.len());
        let mut last_bwd = Vec::with_capacity(plan.stages.len());
        for st in &plan.stages {
            let mut t = 0.0;
            let mut bwd = 0.0;
            for c in &st.chunks {
                let mut parts: Vec<(&[pangu_model::ops::Op], bool)> = c
                    .layers
                    .iter()
                    .map(|&l| (plan.ops.layer(l), true))
                    .collect();
                if c.embedding {
                    parts.push((&plan.ops.embedding, false));
                }
                if c.head {
                    parts.push((&plan.ops.head, false));
                }
                for (ops, is_layer) in parts {
                    let (mut attn_f, mut attn_b) = (0.0, 0.0);
                    // Overlapped tensor-parallel collectives (forward, backward) and the
                    // GEMM time they hide under, per part.
                    let (mut hid_f, mut hid_b, mut gemm_f, mut gemm_b) = (0.0, 0.0, 0.0, 0.0);
                    for o in ops {
                        // Each op at least its host time (per op here; per segment in the
                        // task graph).
                        let f = cost.forward(o).max(cost.host(o, false));
                        let b = cost.backward(o).max(cost.host(o, true));
                        if overlap && o.kind == OpKind::Matmul {
                            gemm_f += f * slow;
                            gemm_b += b * slow;
                        }
                        if o.attention_core {
                            attn_f += f * slow;
                            attn_b += b * slow;
                        }
                        let re = match s.remat {
                            Remat::Full | Remat::Every(_) if is_layer => f,
                            Remat::Selective if is_layer && o.selective => f,
                            _ => 0.0,
                        };
                        t += (f + b + re) * slow;
                        bwd += (b + re) * slow;
                        if let Some(tc) = o.comm {
                            let x = tc.bytes.as_f64();
                            let n = s.tp;
                            let time = |k: Option<CollectiveKind>| {
                                k.map_or(0.0, |k| collective_time(k, n, x, &tp_link))
                            };
                            let hidden = |k: Option<CollectiveKind>| {
                                overlap
                                    && matches!(
                                        k,
                                        Some(
                                            CollectiveKind::AllGather
                                                | CollectiveKind::ReduceScatter
                                        )
                                    )
                            };
                            let (fwd_c, bwd_c) = (time(tc.fwd), time(tc.bwd));
                            let (fwd_c, bwd_c) = (
                                if hidden(tc.fwd) {
                                    hid_f += fwd_c;
                                    0.0
                                } else {
                                    fwd_c
                                },
                                if hidden(tc.bwd) {
                                    hid_b += bwd_c;
                                    0.0
                                } else {
                                    bwd_c
                                },
                            );
                            let again = if recompute_fwd && is_layer {
                                fwd_c
                            } else {
                                0.0
                            };
                            t += fwd_c + bwd_c + again;
                            bwd += bwd_c + again;
                        }
                    }
                    if overlap {
                        // What the GEMMs cannot hide: each overlapped collective runs beside
                        // (tp - 1)/tp of its GEMM (the workload's split, summed per part).
                        let share = (f64::from(s.tp) - 1.0) / f64::from(s.tp);
                        let xf = (hid_f - gemm_f * share).max(0.0);
                        let xb = (hid_b - gemm_b * share).max(0.0);
                        let again = if recompute_fwd && is_layer { xf } else { 0.0 };
                        t += xf + xb + again;
                        bwd += xb + again;
                    }
                    if is_layer && s.cp > 1 {
                        let recompute = s.recomputes_attention();
                        let x = cp_exposed(plan, attn_f, attn_b, recompute, &cp_link);
                        t += x;
                        bwd += x;
                    }
                }
            }
            if s.pp > 1 {
                // A send, not a collective: the wire only (as the simulator's sends).
                let p2p = plan.p2p_bytes().as_f64() / pp_link.bw + pp_link.lat;
                t += 2.0 * p2p * f64::from(s.schedule.chunks());
            }
            stage_t.push(t);
            last_bwd.push(bwd);
        }
        let m = f64::from(s.micro_batches);
        let v = f64::from(s.schedule.chunks());
        let max_t = stage_t.iter().copied().fold(0.0, f64::max);
        let sum_t: f64 = stage_t.iter().sum();
        let pipeline = (m - 1.0) * max_t + max_t + (sum_t - max_t) / v;
        // Data-parallel gradient reduction, overlapped with the last micro-batch's backward.
        let (wb, gb, ob) = memory::bytes_per_param(s.precision, s.micro_batches > 1);
        let params = plan.stages.iter().map(|st| st.params).max().unwrap_or(0) as f64;
        let grad_kind = if s.opt_shard == OptShard::None {
            CollectiveKind::AllReduce
        } else {
            CollectiveKind::ReduceScatter
        };
        let dp_t = collective_time(grad_kind, s.dp_cp(), params * gb as f64, &dp_link);
        let overlap = last_bwd.iter().copied().fold(0.0, f64::max);
        let mut exposed = (dp_t - overlap).max(0.0);
        let gather = collective_time(
            CollectiveKind::AllGather,
            s.dp_cp(),
            params * s.gather_bytes() as f64,
            &dp_link,
        );
        exposed += match s.opt_shard {
            OptShard::None => 0.0,
            OptShard::Zero1 | OptShard::Zero2 => gather,
            // Gathered ahead of the forward; what the first micro-batch cannot hide shows.
            OptShard::Mindspore => (gather - max_t / 2.0).max(0.0),
            // Gathered for every micro-batch's forward and backward, one layer ahead; with
            // `post` backward prefetch the backward gathers wait for the computation before
            // them and show in full.
            OptShard::Zero3 => match s.zero3_prefetch {
                BackwardPrefetch::Pre => (2.0 * m * gather - pipeline).max(0.0),
                BackwardPrefetch::Post => m * gather + (m * gather - pipeline).max(0.0),
            },
        };
        let sharded = s.opt_shard != OptShard::None && s.dp_cp() > 1;
        let opt_params = if sharded {
            params / f64::from(s.dp_cp())
        } else {
            params
        };
        let cast = (0..s.pp)
            .map(|st| cost.fp8_weight_cast(plan.fp8_cast_weights(st)))
            .fold(0.0, f64::max);
        let optimizer = (cost.stream(opt_params * (gb + 2 * ob + wb) as f64) + cast) * slow;
        Ok(pipeline + exposed + optimizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pangu_model::ModelConfig;
    use pangu_strategies::{resolve_inputs, StrategySpec};

    #[test]
    fn analytic_is_close_to_the_simulator_on_the_default_plan() {
        let m = ModelConfig::preset("pangu-alpha-200b").unwrap();
        let r = resolve_inputs(&m, None, &StrategySpec::default()).unwrap();
        let plan = Plan::new(&r.model, &r.cluster, &r.strategy).unwrap();
        let a = Analytic.step_time(&plan).unwrap();
        let d = DiscreteEvent.step_time(&plan).unwrap();
        assert!((a - d).abs() / d < 0.25, "analytic {a} vs simulated {d}");
    }

    #[test]
    fn alpha_beta_matches_the_ring_lower_bound() {
        // 14 ring steps (an all-reduce over 8), each `lat` of wire, no library cost.
        let link = |lat: f64| GroupLink {
            bw: 1e9,
            lat,
            shapes: vec![(
                CollectiveKind::AllReduce,
                Rc::new(Shape {
                    steps: vec![
                        crate::protocol::StepShape {
                            crosses: false,
                            per_byte: 1.0,
                            latency: lat,
                        };
                        14
                    ],
                }),
            )],
            costs: StepCosts::Flat(pangu_hardware::Seconds(0.0)),
        };
        let t = collective_time(CollectiveKind::AllReduce, 8, 8e9, &link(0.0));
        assert!((t - 14.0).abs() < 1e-9);
        assert_eq!(
            collective_time(CollectiveKind::AllGather, 1, 8e9, &link(1.0)),
            0.0
        );
        // 14 steps of 1 s each on top of the wire.
        let t = collective_time(CollectiveKind::AllReduce, 8, 8e9, &link(1.0));
        assert!((t - 28.0).abs() < 1e-9);
    }
}
