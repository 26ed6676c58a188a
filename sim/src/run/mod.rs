//! Executes a workload on the event queue and the network, and writes the step report.
//!
//! Time accounting is per device and covers the whole step: the compute stream's busy time is
//! `compute` or `recompute`; every gap before a compute task is charged to what it waited for
//! (a tensor-parallel collective → `tp_comm`, a gradient bucket → `dp_comm`, an optimizer
//! gather or clipping norm → `opt_comm`, a pipeline receive → `bubble` until the peer started
//! sending and `pp_comm` after), and the time after the device's last task is `bubble` (a
//! pipeline that drains) or `idle`. The categories of a device sum to the step time.

use pangu_strategies::report::Breakdown;
use std::rc::Rc;

use pangu_strategies::{Category, CollectiveAlgorithm, CollectiveKind, Plan, StepReport};

use crate::collective::Step;
use crate::cores::Pool;
use crate::cost::Calibration;
use crate::engine::{Queue, Time};
use crate::fold::Folding;
use crate::isolated::Exclusive;
use crate::network::{FlowId, Network};
use crate::protocol::{Pricing, Shape, StepCosts};
use crate::workload::{Stream, Work, Workload};
use crate::SimError;

mod report;

pub use report::describe;

#[derive(Debug, Clone, Copy)]
enum Ev {
    TaskDone(u32),
    /// (flow, version): the flow's bandwidth phase ends now, if the version is current.
    FlowDone(FlowId, u32),
    Arrive(Owner),
    StepStart(u32),
    /// A memoised collective (see [`crate::isolated`]) ends.
    CollDone(u32),
    /// (pool, version): the next compute task on a shared host's cores ends, if current.
    PoolDone(u32, u32),
    /// The transfers of a collective's step that are still on their first rate and were due
    /// now end (one event per finish time instead of one per flow; see [`Sim::start_step`]).
    StepFlowsDone(u32),
}

#[derive(Debug, Clone, Copy)]
enum Owner {
    Send(u32),
    Coll(u32),
}

/// What one simulation produced besides the report.
#[derive(Debug, Clone)]
pub struct Run {
    /// The report.
    pub report: StepReport,
    /// Events handled.
    pub events: u64,
    /// Task start and end times (ns), for traces.
    pub times: Vec<(Time, Time)>,
    /// Flow-rate recomputations.
    pub recomputes: u64,
    /// Point-to-point transfers simulated on the network (memoised collectives excluded).
    pub flows: u64,
    /// The symmetry folding used, if any (e.g. "dp 16 (Xor) × tp 8 (Cyclic)").
    pub folded: Option<String>,
}

struct Sim<'a> {
    plan: &'a Plan,
    w: &'a Workload,
    q: Queue<Ev>,
    net: Network<'a>,
    deps: Vec<u32>,
    start: Vec<Time>,
    end: Vec<Time>,
    /// (time, task) of the dependency that completed last, per task.
    last_dep: Vec<(Time, u32)>,
    /// The task at the head of each device's streams (`NONE`: the stream is done), and the
    /// task after each one in its stream: the hot path reads these dense arrays instead of
    /// the per-stream lists.
    head: Vec<[u32; 3]>,
    next_in_stream: Vec<u32>,
    busy: Vec<[bool; 3]>,
    free_since: Vec<Time>,
    /// Per device, when its host has issued the compute tasks started so far: the host runs
    /// ahead of the chip and waits only at a pipeline receive (Megatron-LM synchronises the
    /// device after its point-to-point calls).
    host_clock: Vec<Time>,
    /// Compute tasks that follow a pipeline receive: the host issues them only once the
    /// device has drained its queue, i.e. when the task starts.
    after_sync: Vec<bool>,
    breakdown: Vec<Breakdown>,
    ready: Vec<u32>,
    step: Vec<u32>,
    pending: Vec<u32>,
    /// Each running collective's program: its unit steps (shared with every collective of
    /// the same kind, algorithm and group), scaled to its bytes step by step as they start.
    coll_steps: Vec<Scaled>,
    /// The transfers of the step being started (reused: no allocation per step).
    step_scratch: Step,
    /// Each distinct collective's program, built once.
    programs: crate::collective::Programs,
    /// Under folding: each distinct collective's unit steps, checked for symmetry and cut to
    /// the representatives' transfers.
    folded: pangu_hardware::fxhash::FxMap<Vec<u32>, FoldedPrograms>,
    owner: Vec<Owner>,
    /// What the collective library adds to each collective and step.
    costs: StepCosts,
    done_tasks: usize,
    /// Position of each task in its stream.
    stream_index: Vec<usize>,
    /// When every member of a collective had joined.
    coll_start: Vec<Time>,
    /// Latest arrival so far of the current step's transfers, per collective.
    arrive_max: Vec<Time>,
    done_scratch: Vec<FlowId>,
    /// Per collective: the (flow, version) pairs its current step's shared completion event
    /// stands for.
    step_flows: Vec<Vec<(FlowId, u32, Time)>>,
    exclusive: Exclusive<'a>,
    link_efficiency: f64,
    /// Bytes memoised collectives put on each link, and how many real groups one simulated
    /// group stands for.
    memo_load: Vec<f64>,
    memo_scale: f64,
    /// Shared cores per host, and each device's pool (`NONE`: a device of its own).
    pools: Vec<Pool>,
    pool_of: Vec<u32>,
    pool_scratch: Vec<u32>,
}

const NONE: u32 = u32::MAX;

/// A distinct collective: what, how, over which chips.
type FoldKey = (CollectiveKind, CollectiveAlgorithm);

/// A group's folded programs, by collective and algorithm.
type FoldedPrograms = Vec<(FoldKey, Rc<Vec<Step>>)>;

/// Simulates one step of `plan` given its workload (built for the folding's representatives
/// when `fold` is given).
pub fn simulate(
    plan: &Plan,
    w: &Workload,
    cal: &Calibration,
    fold: Option<Folding>,
    memo: bool,
    mut programs: crate::collective::Programs,
) -> Result<Run, SimError> {
    let n = w.tasks.len();
    let devices = w.streams.len();
    let costs = StepCosts::new(cal);
    let mut net = Network::new(&plan.cluster.topology, cal.link_efficiency)?;
    if let Some(f) = fold {
        net.set_folding(f);
    }
    let (pools, pool_of) = host_pools(plan, devices);
    let exclusive = if memo {
        Exclusive::analyse(plan, &mut programs)
    } else {
        Exclusive::none()
    };
    let mut sim = Sim {
        pools,
        pool_of,
        pool_scratch: Vec::new(),
        plan,
        w,
        q: Queue::new(),
        net,
        deps: w.tasks.iter().map(|t| t.deps).collect(),
        start: vec![0; n],
        end: vec![0; n],
        last_dep: vec![(0, NONE); n],
        head: w
            .streams
            .iter()
            .map(|s| std::array::from_fn(|i| s[i].first().copied().unwrap_or(NONE)))
            .collect(),
        next_in_stream: next_in_stream(w),
        busy: vec![[false; 3]; devices],
        free_since: vec![0; devices],
        host_clock: vec![0; devices],
        after_sync: vec![false; n],
        breakdown: vec![Breakdown::default(); devices],
        ready: vec![0; w.colls.len()],
        step: vec![0; w.colls.len()],
        pending: vec![0; w.colls.len()],
        coll_steps: vec![Scaled::default(); w.colls.len()],
        step_scratch: Vec::new(),
        programs,
        folded: Default::default(),
        owner: Vec::new(),
        costs,
        done_tasks: 0,
        stream_index: stream_positions(w),
        coll_start: vec![0; w.colls.len()],
        arrive_max: vec![0; w.colls.len()],
        done_scratch: Vec::new(),
        step_flows: vec![Vec::new(); w.colls.len()],
        exclusive,
        link_efficiency: cal.link_efficiency,
        memo_load: vec![0.0; plan.cluster.topology.links().len()],
        memo_scale: tp_group_scale(plan, w),
    };
    for t in 0..n as u32 {
        if sim.deps[t as usize] == 0 {
            sim.make_ready(t)?;
        }
    }
    while let Some((now, ev)) = sim.q.pop() {
        match ev {
            Ev::TaskDone(t) => sim.task_done(t, now)?,
            Ev::FlowDone(flow, version) => {
                // Every current completion at this instant ends together: one rate update.
                let mut done = std::mem::take(&mut sim.done_scratch);
                done.clear();
                if sim.net.is_current(flow, version) {
                    done.push(flow);
                }
                while let Some((t, &Ev::FlowDone(f, v))) = sim.q.peek() {
                    if t != now {
                        break;
                    }
                    sim.q.pop();
                    if sim.net.is_current(f, v) {
                        done.push(f);
                    }
                }
                sim.flows_done(now, done);
            }
            Ev::StepFlowsDone(i) => {
                let mut done = std::mem::take(&mut sim.done_scratch);
                done.clear();
                // A flow whose rate changed since has its own completion event.
                for &(f, v, at) in &sim.step_flows[i as usize] {
                    if at == now && sim.net.is_current(f, v) {
                        done.push(f);
                    }
                }
                sim.flows_done(now, done);
            }
            Ev::Arrive(Owner::Send(t)) => sim.task_done(t, now)?,
            Ev::Arrive(Owner::Coll(i)) => {
                sim.step[i as usize] += 1;
                sim.next_step(i, now)?;
            }
            Ev::StepStart(i) => sim.start_step(i)?,
            Ev::PoolDone(p, version) => {
                let pool = &mut sim.pools[p as usize];
                if pool.version != version {
                    continue;
                }
                let mut done = std::mem::take(&mut sim.pool_scratch);
                done.clear();
                if let Some((at, v)) = pool.complete(now, &mut done) {
                    sim.q.push(at, Ev::PoolDone(p, v));
                }
                for &t in &done {
                    let task = &sim.w.tasks[t as usize];
                    if let Work::Compute { cat, .. } = task.work {
                        let d = task.device as usize;
                        let ran = now - sim.start[t as usize];
                        *sim.breakdown[d].get_mut(cat) += ran as f64 * 1e-9;
                    }
                    sim.task_done(t, now)?;
                }
                sim.pool_scratch = done;
            }
            Ev::CollDone(i) => {
                let tasks = sim.w.colls[i as usize].tasks.clone();
                for t in tasks {
                    sim.task_done(t, now)?;
                }
            }
        }
    }
    if sim.done_tasks < n {
        let stuck = (0..n)
            .find(|&t| sim.end[t] == 0 && sim.deps[t] > 0)
            .unwrap_or(0);
        return Err(SimError::Stuck(format!(
            "{} of {n} tasks never ran (first: task {stuck} on device {}, {:?})",
            n - sim.done_tasks,
            w.tasks[stuck].device,
            w.tasks[stuck].label
        )));
    }
    Ok(sim.finish())
}

impl Sim<'_> {
    fn make_ready(&mut self, t: u32) -> Result<(), SimError> {
        let task = &self.w.tasks[t as usize];
        match task.stream {
            Stream::Free => self.start_free(t),
            s => self.try_stream(task.device, s),
        }
    }

    fn try_stream(&mut self, dev: u32, s: Stream) -> Result<(), SimError> {
        let (d, si) = (dev as usize, s as usize);
        if self.busy[d][si] {
            return Ok(());
        }
        let t = self.head[d][si];
        if t == NONE {
            return Ok(());
        }
        if self.deps[t as usize] > 0 {
            return Ok(());
        }
        self.busy[d][si] = true;
        let now = self.q.now();
        self.start[t as usize] = now;
        match self.w.tasks[t as usize].work {
            Work::Compute { ns, host, cat } => {
                self.charge_gap(d, t, now);
                let pool = self.pool_of[d];
                if pool == NONE {
                    // The task ends when the chip has run it and the host has issued it; time
                    // the chip waits for the host counts as the task's. After a receive the
                    // host has waited for the device, so it starts issuing now.
                    if self.after_sync[t as usize] {
                        self.host_clock[d] = self.host_clock[d].max(now);
                    }
                    self.host_clock[d] += host;
                    let end = (now + ns).max(self.host_clock[d]);
                    *self.breakdown[d].get_mut(cat) += (end - now) as f64 * 1e-9;
                    self.q.push(end, Ev::TaskDone(t));
                } else {
                    // Charged when it ends: its duration depends on the other devices.
                    let (at, v) = self.pools[pool as usize].start(now, t, ns);
                    self.q.push(at, Ev::PoolDone(pool, v));
                }
            }
            Work::Coll { inst } => {
                self.ready[inst as usize] += 1;
                if self.ready[inst as usize] as usize == self.w.colls[inst as usize].tasks.len() {
                    self.start_coll(inst, now)?;
                }
            }
            Work::Send { .. } | Work::Recv => {}
        }
        Ok(())
    }

    /// Charges the compute stream's idle time before task `t` to what `t` waited for.
    ///
    /// Waiting on a communication stream is split along that stream's timeline: the time each
    /// of its tasks ran inside the gap goes to that task's category, except the part before
    /// all members of a collective had joined (waiting for slower peers: `bubble` in a
    /// pipeline, `idle` otherwise).
    fn charge_gap(&mut self, d: usize, t: u32, now: Time) {
        let from = self.free_since[d];
        let gap = now.saturating_sub(from);
        if gap == 0 {
            return;
        }
        let (_, by) = self.last_dep[t as usize];
        let wait_cat = if self.plan.strategy.pp > 1 {
            Category::Bubble
        } else {
            Category::Idle
        };
        let secs = |ns: Time| ns as f64 * 1e-9;
        if by == NONE {
            self.breakdown[d].idle += secs(gap);
            return;
        }
        let dep = &self.w.tasks[by as usize];
        match dep.work {
            Work::Coll { .. } if dep.device as usize == d => {
                let list = &self.w.streams[d][dep.stream as usize];
                let mut charged = 0;
                let mut i = self.stream_index[by as usize];
                loop {
                    let y = list[i] as usize;
                    let (ys, ye) = (self.start[y].max(from), self.end[y].min(now));
                    if ye > ys {
                        if let Work::Coll { inst } = self.w.tasks[y].work {
                            let joined = self.coll_start[inst as usize].clamp(ys, ye);
                            *self.breakdown[d].get_mut(wait_cat) += secs(joined - ys);
                            *self.breakdown[d].get_mut(self.w.colls[inst as usize].cat) +=
                                secs(ye - joined);
                            charged += ye - ys;
                        }
                    }
                    if i == 0 || self.end[y] <= from {
                        break;
                    }
                    i -= 1;
                }
                self.breakdown[d].idle += secs(gap.saturating_sub(charged));
            }
            Work::Recv => {
                // Waiting for the peer to compute is bubble; for the data on the wire, pp_comm.
                let (_, send) = self.last_dep[by as usize];
                let send_start = if send == NONE {
                    now
                } else {
                    self.start[send as usize]
                };
                let bubble = send_start.saturating_sub(from).min(gap);
                self.breakdown[d].bubble += secs(bubble);
                self.breakdown[d].pp_comm += secs(gap - bubble);
            }
            _ => self.breakdown[d].idle += secs(gap),
        }
    }

    fn start_free(&mut self, t: u32) -> Result<(), SimError> {
        let now = self.q.now();
        self.start[t as usize] = now;
        let task = &self.w.tasks[t as usize];
        match task.work {
            Work::Send { dst, bytes } => {
                let (flow, changes) = self.net.start(now, task.device, dst, bytes)?;
                self.set_owner(flow, Owner::Send(t));
                for c in changes {
                    self.q.push(c.finish, Ev::FlowDone(c.flow, c.version));
                }
            }
            _ => self.task_done(t, now)?,
        }
        Ok(())
    }

    fn set_owner(&mut self, flow: FlowId, o: Owner) {
        let i = flow as usize;
        if self.owner.len() <= i {
            self.owner.resize(i + 1, o);
        }
        self.owner[i] = o;
    }

    /// Every member has joined: run the collective, memoised when its links are its own.
    fn start_coll(&mut self, inst: u32, now: Time) -> Result<(), SimError> {
        self.coll_start[inst as usize] = now;
        let c = &self.w.colls[inst as usize];
        let topo = &self.plan.cluster.topology;
        if c.step.is_none() && self.exclusive.is_exclusive(&c.ranks) {
            let timed = self.exclusive.timed(
                topo,
                self.link_efficiency,
                (&self.costs, &mut self.programs),
                (c.kind, c.algo, &c.ranks, c.bytes),
            )?;
            // Folded, one simulated group stands for several real ones.
            let scale = self.memo_scale;
            for &(l, b) in timed.load.iter() {
                self.memo_load[l as usize] += b * scale;
            }
            self.q.push(now + timed.duration, Ev::CollDone(inst));
            return Ok(());
        }
        let unit = match self.net.folding() {
            None => self.programs.unit(c.kind, c.algo, &c.ranks, topo),
            Some(f) => {
                // Symmetry depends on who sends to whom, not on the size: checked once per
                // distinct collective, on its unit steps, which keep the representatives'
                // transfers only.
                // Looked up by the group's slice: no allocation per collective.
                let key = (c.kind, c.algo);
                let known = self
                    .folded
                    .get(c.ranks.as_slice())
                    .and_then(|l| l.iter().find(|(k, _)| *k == key))
                    .map(|(_, u)| Rc::clone(u));
                match known {
                    Some(u) => u,
                    None => {
                        let mut steps: Vec<Step> =
                            (*self.programs.unit(c.kind, c.algo, &c.ranks, topo)).clone();
                        for step in &mut steps {
                            if !f.step_is_symmetric(&c.ranks, step) {
                                return Err(SimError::Fold(format!(
                                    "a {:?} {:?} step over {} ranks is not symmetric under {}",
                                    c.algo,
                                    c.kind,
                                    c.ranks.len(),
                                    f.describe()
                                )));
                            }
                            step.retain(|t| f.is_rep(t.0));
                        }
                        let u = Rc::new(steps);
                        self.folded
                            .entry(c.ranks.clone())
                            .or_default()
                            .push((key, Rc::clone(&u)));
                        u
                    }
                }
            }
        };
        let shape = self.programs.shape(c.kind, c.algo, &c.ranks, topo)?;
        let n = if c.bytes > 0.0 { shape.steps.len() } else { 0 };
        // One step of the program (a K/V ring step of context parallelism), or all of them.
        let (first, count) = match c.step {
            Some(k) => (usize::from(k).min(n), usize::from(usize::from(k) < n)),
            None => (0, n),
        };
        let price = self
            .costs
            .price(&shape.steps[first..first + count], c.bytes);
        self.coll_steps[inst as usize] = Scaled {
            unit,
            bytes: c.bytes * price.scale,
            first,
            count,
            shape,
            price,
        };
        self.next_step(inst, now)
    }

    fn next_step(&mut self, inst: u32, now: Time) -> Result<(), SimError> {
        let i = inst as usize;
        let (k, s) = (self.step[i] as usize, &self.coll_steps[i]);
        if k < s.count {
            let mut wait = s.price.step(&s.shape.steps[s.first + k]);
            if k == 0 {
                wait += s.price.base;
            }
            self.q.push(now + wait, Ev::StepStart(inst));
        } else {
            let tasks = self.w.colls[i].tasks.clone();
            for t in tasks {
                self.task_done(t, now)?;
            }
        }
        Ok(())
    }

    fn start_step(&mut self, inst: u32) -> Result<(), SimError> {
        let now = self.q.now();
        let i = inst as usize;
        let mut step = std::mem::take(&mut self.step_scratch);
        self.coll_steps[i].fill(self.step[i] as usize, &mut step);
        self.pending[i] = step.len() as u32;
        if step.is_empty() {
            self.q.push(now, Ev::Arrive(Owner::Coll(inst)));
        }
        let started = self.net.start_batch(now, &step);
        self.step_scratch = step;
        let (flows, changes) = started?;
        for &flow in &flows {
            self.set_owner(flow, Owner::Coll(inst));
        }
        // The common case: the step's transfers disturb no other flow (a ring step on links
        // of its own). One event per distinct finish time then stands for them; a flow slowed
        // down later gets its own completion event and is skipped by these.
        let own =
            changes.len() == flows.len() && changes.iter().zip(&flows).all(|(c, &f)| c.flow == f);
        if own && !changes.is_empty() {
            let mine = &mut self.step_flows[i];
            mine.clear();
            mine.extend(changes.iter().map(|c| (c.flow, c.version, c.finish)));
            // One event per distinct finish time, earliest first (the list's buffer is reused
            // from step to step: no allocation here).
            mine.sort_unstable_by_key(|&(_, _, at)| at);
            let mut last = None;
            for &(_, _, at) in mine.iter() {
                if last != Some(at) {
                    self.q.push(at, Ev::StepFlowsDone(inst));
                    last = Some(at);
                }
            }
        } else {
            for c in changes {
                self.q.push(c.finish, Ev::FlowDone(c.flow, c.version));
            }
        }
        Ok(())
    }

    /// Ends the bandwidth phase of `done` (flows whose completion is current at `now`) with
    /// one rate update, and schedules their arrivals.
    fn flows_done(&mut self, now: Time, done: Vec<FlowId>) {
        if done.is_empty() {
            self.done_scratch = done;
            return;
        }
        let (lats, changes) = self.net.finish_batch(now, &done);
        for (&flow, lat) in done.iter().zip(lats) {
            match self.owner[flow as usize] {
                Owner::Send(t) => self.q.push(now + lat, Ev::Arrive(Owner::Send(t))),
                // A collective step ends when its last transfer arrives: one event for
                // the step once its last flow has left, at the latest arrival.
                Owner::Coll(i) => {
                    let i = i as usize;
                    self.arrive_max[i] = self.arrive_max[i].max(now + lat);
                    self.pending[i] -= 1;
                    if self.pending[i] == 0 {
                        let at = std::mem::take(&mut self.arrive_max[i]);
                        self.q.push(at, Ev::Arrive(Owner::Coll(i as u32)));
                    }
                }
            }
        }
        for ch in changes {
            self.q.push(ch.finish, Ev::FlowDone(ch.flow, ch.version));
        }
        self.done_scratch = done;
    }

    fn task_done(&mut self, t: u32, now: Time) -> Result<(), SimError> {
        self.end[t as usize] = now;
        self.done_tasks += 1;
        let task = &self.w.tasks[t as usize];
        let (d, s) = (task.device as usize, task.stream);
        // The host waits for the device at a receive, and at a blocking send (whose only
        // successors on its device are the tasks that waited for it).
        if matches!(task.work, Work::Recv | Work::Send { .. }) {
            for &n in self.w.succ.of(t) {
                self.after_sync[n as usize] = true;
            }
        }
        if s != Stream::Free {
            self.busy[d][s as usize] = false;
            self.head[d][s as usize] = self.next_in_stream[t as usize];
            if s == Stream::Compute {
                self.free_since[d] = now;
            }
        }
        for &n in self.w.succ.of(t) {
            let ld = &mut self.last_dep[n as usize];
            if ld.1 == NONE || now >= ld.0 {
                *ld = (now, t);
            }
            self.deps[n as usize] -= 1;
            if self.deps[n as usize] == 0 {
                self.make_ready(n)?;
            }
        }
        if s != Stream::Free {
            self.try_stream(task.device, s)?;
        }
        Ok(())
    }
}

/// How many real tensor-parallel groups one simulated group stands for (memoised collectives
/// run over whole tensor-parallel groups).
fn tp_group_scale(plan: &Plan, w: &Workload) -> f64 {
    use pangu_strategies::strategy::Axis;
    let mut simulated: Vec<u32> = w
        .devices
        .iter()
        .map(|&d| plan.mesh.group_of(Axis::Tp, d)[0])
        .collect();
    simulated.sort_unstable();
    simulated.dedup();
    let real = plan.strategy.devices / plan.strategy.tp.max(1);
    f64::from(real) / simulated.len().max(1) as f64
}

/// One pool of cores per server whose chips share a host (`server.shared_cores`), and each
/// device's pool.
fn host_pools(plan: &Plan, devices: usize) -> (Vec<Pool>, Vec<u32>) {
    let topo = &plan.cluster.topology;
    let Some(cores) = plan.cluster.spec.server.shared_cores else {
        return (Vec::new(), vec![NONE; devices]);
    };
    let servers = topo.chips().div_ceil(topo.chips_per_server().max(1));
    let pools = (0..servers).map(|_| Pool::new(cores)).collect();
    let of = (0..devices as u32)
        .map(|d| {
            if d < topo.chips() {
                topo.position(d).server
            } else {
                NONE
            }
        })
        .collect();
    (pools, of)
}

/// Index of each task inside its stream (`usize::MAX` for free tasks).
/// The task after each task in its stream (`NONE` for the last and for free tasks).
fn next_in_stream(w: &Workload) -> Vec<u32> {
    let mut next = vec![NONE; w.tasks.len()];
    for streams in &w.streams {
        for list in streams {
            for pair in list.windows(2) {
                next[pair[0] as usize] = pair[1];
            }
        }
    }
    next
}

fn stream_positions(w: &Workload) -> Vec<usize> {
    let mut index = vec![usize::MAX; w.tasks.len()];
    for streams in &w.streams {
        for list in streams {
            for (i, &task) in list.iter().enumerate() {
                index[task as usize] = i;
            }
        }
    }
    index
}

/// A running collective's program: `count` steps of `unit` from `first`, each transfer's
/// unit bytes times `bytes` (the same products, bit for bit, as scaling the whole program).
#[derive(Clone, Default)]
struct Scaled {
    unit: Rc<Vec<Step>>,
    bytes: f64,
    first: usize,
    count: usize,
    /// The whole program's shape, and what the library adds to this instance.
    shape: Rc<Shape>,
    price: Pricing,
}

impl Scaled {
    /// Step `k`'s transfers into `out` (cleared first).
    fn fill(&self, k: usize, out: &mut Step) {
        out.clear();
        out.extend(
            self.unit[self.first + k]
                .iter()
                .map(|&(a, b, x)| (a, b, x * self.bytes)),
        );
    }
}
