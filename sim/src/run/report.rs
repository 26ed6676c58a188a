//! The end of a simulated step: the report (per-device breakdown, link use, the critical
//! path) and the text that names a task.

use pangu_strategies::report::{Breakdown, DeviceReport, LinkUse, PathSegment};
use pangu_strategies::{Category, Plan, StepReport};

use super::{Run, Sim, NONE};
use crate::workload::{Label, Stream, Work, Workload};

impl Sim<'_> {
    pub(super) fn finish(mut self) -> Run {
        let plan = self.plan;
        let s = &plan.strategy;
        let simulated: Vec<usize> = self.w.devices.iter().map(|&d| d as usize).collect();
        // The step of this plan's devices (another job's tasks may share the graph).
        let mut mine = vec![false; self.w.streams.len()];
        for &d in &simulated {
            mine[d] = true;
        }
        let step_ns = self
            .w
            .tasks
            .iter()
            .zip(&self.end)
            .filter(|(t, _)| mine[t.device as usize])
            .map(|(_, &e)| e)
            .max()
            .unwrap_or(0);
        let step = step_ns as f64 * 1e-9;
        // The tail after each device's last compute.
        for &d in &simulated {
            let tail = step_ns.saturating_sub(self.free_since[d]) as f64 * 1e-9;
            if s.pp > 1 {
                self.breakdown[d].bubble += tail;
            } else {
                self.breakdown[d].idle += tail;
            }
        }
        let mut mean = Breakdown::default();
        for &d in &simulated {
            for c in Category::ALL {
                *mean.get_mut(c) += self.breakdown[d].get(c) / simulated.len() as f64;
            }
        }
        let tokens = f64::from(s.global_batch) * f64::from(plan.model.seq_len);
        let peak = cost_peak(plan);
        let n_dev = f64::from(s.devices);
        let mfu = plan.model.flops_per_token() * tokens / (step * n_dev * peak);
        // Folded: each simulated device stands for n_dev / simulated of them.
        let executed = self.w.flops.iter().sum::<f64>() * n_dev / simulated.len() as f64;
        let hfu = executed / (step * n_dev * peak);
        let device_reports = simulated
            .iter()
            .map(|&d| {
                let stage = plan.mesh.coords(d as u32).pp;
                DeviceReport {
                    rank: d as u32,
                    stage,
                    breakdown: self.breakdown[d],
                    peak_memory_bytes: plan.stages[stage as usize].memory.total.0,
                }
            })
            .collect();
        let links = self.link_use(step);
        let critical_path = self.critical_path();
        let report = StepReport {
            step_time_s: step,
            tokens_per_s: tokens / step,
            samples_per_s: f64::from(s.global_batch) / step,
            mfu,
            hfu,
            breakdown: mean,
            devices: device_reports,
            critical_path,
            links,
            peak_memory_bytes: plan.max_memory().total.0,
        };
        let times = self
            .start
            .iter()
            .copied()
            .zip(self.end.iter().copied())
            .collect();
        let folded = self.net.folding().map(|f| f.describe());
        Run {
            report,
            events: self.q.events(),
            times,
            recomputes: self.net.recomputes,
            flows: self.net.flows_started,
            folded,
        }
    }

    fn link_use(&self, step: f64) -> Vec<LinkUse> {
        let links = self.plan.cluster.topology.links();
        pangu_hardware::Level::ALL
            .iter()
            .filter_map(|&level| {
                let mut bytes = 0.0;
                let mut cap = 0.0;
                let mut max: f64 = 0.0;
                for (i, (l, carried)) in links.iter().zip(self.net.carried()).enumerate() {
                    if l.level == level {
                        // Folded: a canonical link's load repeats on every link of its orbit.
                        let orbit = self.net.folding().map_or(1, |f| f.orbit_size(i as u32));
                        let memo = self.memo_load[i];
                        bytes += carried * f64::from(orbit) + memo;
                        cap += l.bandwidth.0;
                        max = max.max(carried / (l.bandwidth.0 * step));
                        max = max.max(memo / self.memo_scale / (l.bandwidth.0 * step));
                    }
                }
                (cap > 0.0).then(|| LinkUse {
                    level: level.name().to_string(),
                    bytes,
                    mean_utilisation: bytes / (cap * step),
                    max_utilisation: max,
                })
            })
            .collect()
    }

    /// Walks back from the last task through whichever came last: a dependency or the
    /// previous task on the same stream. Consecutive pieces of one device and category merge.
    fn critical_path(&self) -> Vec<PathSegment> {
        let Some(mut t) = (0..self.end.len()).max_by_key(|&t| (self.end[t], std::cmp::Reverse(t)))
        else {
            return Vec::new();
        };
        let mut pos: Vec<[usize; 3]> = vec![[0; 3]; self.w.streams.len()];
        for (d, streams) in self.w.streams.iter().enumerate() {
            for (s, list) in streams.iter().enumerate() {
                pos[d][s] = list.len();
            }
        }
        let index = &self.stream_index;
        let mut out: Vec<PathSegment> = Vec::new();
        let mut guard = 0;
        loop {
            guard += 1;
            if guard > self.end.len() + 1 {
                break;
            }
            let task = &self.w.tasks[t];
            let dur = self.end[t] - self.start[t];
            if dur > 0 {
                let category = match task.work {
                    Work::Compute { cat, .. } => cat,
                    Work::Coll { inst } => self.w.colls[inst as usize].cat,
                    Work::Send { .. } | Work::Recv => Category::PpComm,
                };
                let label = describe(task.label, task.work, self.w);
                match out.last_mut() {
                    Some(last)
                        if last.rank == task.device
                            && last.category == category
                            && last.label == label =>
                    {
                        last.start = self.start[t] as f64 * 1e-9;
                        last.duration += dur as f64 * 1e-9;
                    }
                    _ => out.push(PathSegment {
                        rank: task.device,
                        category,
                        label,
                        start: self.start[t] as f64 * 1e-9,
                        duration: dur as f64 * 1e-9,
                    }),
                }
            }
            let (dep_time, dep) = self.last_dep[t];
            let prev_on_stream =
                if task.stream == Stream::Free || index[t] == 0 || index[t] == usize::MAX {
                    None
                } else {
                    Some(self.w.streams[task.device as usize][task.stream as usize][index[t] - 1])
                };
            let next = match (dep, prev_on_stream) {
                (NONE, None) => break,
                (NONE, Some(p)) => p as usize,
                (d, None) => d as usize,
                (d, Some(p)) => {
                    if dep_time >= self.end[p as usize] {
                        d as usize
                    } else {
                        p as usize
                    }
                }
            };
            t = next;
        }
        out.reverse();
        out
    }
}

/// Human-readable name of a task.
pub fn describe(label: Label, work: Work, w: &Workload) -> String {
    match (label, work) {
        (_, Work::Coll { inst }) => {
            let c = &w.colls[inst as usize];
            format!(
                "{} {:?} {:.1} MiB over {} ranks",
                c.group.name(),
                c.kind,
                c.bytes / 1048576.0,
                c.ranks.len()
            )
        }
        (Label::Forward(mb, vs), _) => format!("forward mb {mb} vstage {vs}"),
        (Label::Recompute(mb, vs), _) => format!("recompute mb {mb} vstage {vs}"),
        (Label::Backward(mb, vs), _) => format!("backward mb {mb} vstage {vs}"),
        (Label::Optimizer, _) => "optimizer".into(),
        (Label::StepEnd, _) => "step end".into(),
        (Label::Send(mb, c), _) => format!("send mb {mb} chunk {c}"),
        (Label::Recv(mb, c), _) => format!("recv mb {mb} chunk {c}"),
        (Label::Collective, _) => "collective".into(),
    }
}

/// The peak MFU divides by: the training precision's matrix rate; under fp8 the bf16 one, so
/// fp8's faster GEMMs show as a higher MFU (the chip's fp16 rate where a rate is missing).
fn cost_peak(plan: &Plan) -> f64 {
    let chip = &plan.cluster.spec.chip;
    pangu_strategies::fp8::Peaks::of(chip, plan.strategy.precision)
        .map_or(chip.fp16.0, |p| p.base.0)
}
