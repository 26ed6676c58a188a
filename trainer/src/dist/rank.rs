//! One rank of the distributed executor: its groups and their collective programs, its model
//! chunks' state, and a step as named phases (the action list, the gradient reduction, the
//! norm and loss, the update, the weight gathers).

use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

use pangu_strategies::schedule::Action;
use pangu_strategies::{Coords, Plan};

use super::buckets::BucketReducer;
use super::groups::Groups;
use super::report::RankReport;
use super::setup::{DistConfig, Io, Save};
use super::tp::TpReduce;
use crate::comm::{Communicator, Group};
use crate::data::{Order, Packed};
use crate::host::{self, BucketRanges};
use crate::model::{special, Acts, Batch, Layout, Model};
use crate::optim;
use crate::sharded;
use crate::train::Settings;
use crate::TrainError;

/// A rank's losses, its parts' final weights and its measurements.
pub(super) struct RankOutput {
    pub(super) losses: Vec<f64>,
    pub(super) parts: Vec<(Layout, Vec<f32>)>,
    pub(super) report: RankReport,
}

/// One model chunk of this rank: its part of the model, weights, gradients, Adam moments for
/// its optimizer shard, and activation buffers for the micro-batches in flight.
pub(super) struct ChunkState {
    pub(super) model: Model,
    pub(super) p: Vec<f32>,
    pub(super) g: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    decay: Vec<bool>,
    /// The ranges of the flat buffer this rank updates (its chunk of every bucket when
    /// sharded); the moments hold them concatenated.
    shard: Vec<Range<usize>>,
    pub(super) buckets: Vec<BucketRanges>,
    acts: Vec<Acts<f32>>,
    /// The one pass scratch of this chunk, lent to the micro-batch whose pass runs.
    scratch: crate::model::Scratch<f32>,
    free: Vec<usize>,
    slot_of: HashMap<u32, usize>,
    counted: Vec<Range<usize>>,
}

impl ChunkState {
    fn slot(&mut self, mb: u32) -> Result<usize, TrainError> {
        if let Some(&s) = self.slot_of.get(&mb) {
            return Ok(s);
        }
        let s = self.free.pop().ok_or_else(|| {
            TrainError::Config(format!(
                "schedule keeps more micro-batches in flight than counted (micro-batch {mb})"
            ))
        })?;
        self.slot_of.insert(mb, s);
        Ok(s)
    }

    fn release(&mut self, mb: u32) {
        if let Some(s) = self.slot_of.remove(&mb) {
            self.free.push(s);
        }
    }

    fn shard_len(&self) -> usize {
        self.shard.iter().map(Range::len).sum()
    }
}

/// Everything a rank holds across steps.
pub(super) struct Rank<'a> {
    plan: &'a Plan,
    settings: &'a Settings,
    rank: usize,
    stage: u32,
    /// Where this rank sits on the mesh.
    at: Coords,
    /// Its position in the dp·cp gradient-reduction group ([`host::reduction_index`]).
    red_index: usize,
    groups: Groups,
    chunks: Vec<ChunkState>,
    /// Per chunk, the micro-batch of its last backward in a step.
    last_backward: Vec<Option<u32>>,
    rep: RankReport,
}

/// Builds chunk `ci` of this rank's stage from the whole model's weights (and moments).
fn chunk_state(
    plan: &Plan,
    settings: &Settings,
    (ci, at): (usize, Coords),
    whole: &Layout,
    whole_p: &[f32],
    resume: Option<&sharded::WholeState>,
    slots: usize,
) -> Result<ChunkState, TrainError> {
    let stage = at.pp;
    let c = &plan.stages[stage as usize].chunks[ci];
    let layout = Layout::part(&plan.model, &host::chunk_part(plan, c, at))?;
    let p = layout.gather(whole, whole_p);
    let buckets = host::chunk_buckets(plan, stage, ci, &layout);
    let red_index = host::reduction_index(plan, at);
    let shard = host::shard_ranges(plan, &buckets, &layout, red_index);
    let (m, v) = match resume {
        Some(state) => {
            let (m, v) = (
                layout.gather(whole, &state.m),
                layout.gather(whole, &state.v),
            );
            let pick = |x: &[f32]| -> Vec<f32> {
                shard
                    .iter()
                    .flat_map(|r| x[r.clone()].iter().copied())
                    .collect()
            };
            (pick(&m), pick(&v))
        }
        None => {
            let n: usize = shard.iter().map(Range::len).sum();
            (vec![0.0; n], vec![0.0; n])
        }
    };
    let mut model = Model::new(&plan.model, settings.seed)?;
    model.dropout = settings.dropout;
    let decay = layout.decay_mask();
    let counted = layout.counted_ranges();
    let n = p.len();
    let per_rank = settings.batch / settings.micro_batches / plan.strategy.dp as usize;
    let mut acts: Vec<Acts<f32>> = (0..slots)
        .map(|_| {
            Acts::for_part(
                &layout,
                per_rank,
                settings.dropout > 0.0,
                plan.strategy.remat,
            )
        })
        .collect();
    model.layout = layout;
    // One pass runs at a time: keep one scratch (slot 0's), drop the others'.
    let mut scratch = crate::model::Scratch::default();
    for a in acts.iter_mut().rev() {
        scratch = crate::model::Scratch::default();
        a.swap_scratch(&mut scratch);
    }
    Ok(ChunkState {
        model,
        g: vec![0.0; n],
        m,
        v,
        p,
        decay,
        shard,
        buckets,
        acts,
        scratch,
        free: (0..slots).rev().collect(),
        slot_of: HashMap::new(),
        counted,
    })
}

impl<'a> Rank<'a> {
    /// This rank's groups and chunks, from the initial weights or a checkpoint's state.
    fn new(
        plan: &'a Plan,
        settings: &'a Settings,
        io: &Io<'_>,
        rank: usize,
    ) -> Result<Rank<'a>, TrainError> {
        let me = plan.mesh.coords(rank as u32);
        let stage = me.pp;
        let whole = Layout::new(&plan.model)?;
        let init;
        let whole_p: &[f32] = match io.resume {
            Some((_, state)) => &state.params,
            None => {
                init = whole.init::<f32>(settings.seed);
                &init
            }
        };
        let flight = plan.schedule.in_flight(stage);
        let chunks = (0..plan.stages[stage as usize].chunks.len())
            .map(|ci| {
                let resume = io.resume.map(|(_, s)| s);
                chunk_state(
                    plan,
                    settings,
                    (ci, me),
                    &whole,
                    whole_p,
                    resume,
                    flight[ci].max(1),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let allocated_bytes: u64 = chunks
            .iter()
            .map(|c| {
                4 * (2 * c.p.len() + 2 * c.shard_len()) as u64
                    + c.acts.iter().map(Acts::bytes).sum::<u64>()
                    + c.scratch.bytes()
            })
            .sum();
        Ok(Rank {
            plan,
            settings,
            rank,
            stage,
            at: me,
            red_index: host::reduction_index(plan, me),
            groups: Groups::new(plan, rank),
            chunks,
            last_backward: plan.schedule.last_backward(stage),
            rep: RankReport {
                rank,
                stage: stage as usize,
                allocated_bytes,
                ..RankReport::default()
            },
        })
    }

    /// The micro-batches of step `step` as this rank sees them (its replica's samples of each,
    /// and of those its context-parallel share of tokens), each weighted by the counted rows
    /// of the whole step.
    fn batches(&self, step: u64, data: &Packed, order: &mut Order) -> Vec<Batch> {
        let settings = self.settings;
        let s = self.plan.model.seq_len as usize;
        let micro = settings.batch / settings.micro_batches;
        let per_rank = micro / self.plan.strategy.dp as usize;
        let first = step * settings.batch as u64;
        let ks: Vec<u64> = (first..first + settings.batch as u64).collect();
        let idx: Vec<usize> = ks.iter().map(|&k| order.at(k)).collect();
        let total: usize = idx
            .iter()
            .map(|&i| {
                data.sample(i)[..s]
                    .iter()
                    .filter(|&&t| t != special::PAD)
                    .count()
            })
            .sum();
        let dp_index = self.at.dp as usize;
        let mine = dp_index * per_rank..(dp_index + 1) * per_rank;
        let (cp, cp_index) = (self.plan.strategy.cp.max(1) as usize, self.at.cp as usize);
        ks.chunks(micro)
            .zip(idx.chunks(micro))
            .map(|(mk, mi)| {
                let samples: Vec<&[u32]> =
                    mi[mine.clone()].iter().map(|&i| data.sample(i)).collect();
                let mut b = Batch::from_samples(&samples, &mk[mine.clone()], s);
                b.normalise(total);
                b.cp_share(cp, cp_index)
            })
            .collect()
    }

    /// Runs the stage's action list for one step; returns this rank's loss.
    fn run_actions(
        &mut self,
        step: u64,
        batches: &[Batch],
        world: &mut dyn Communicator,
        reducer: &mut BucketReducer,
    ) -> Result<f64, TrainError> {
        let plan = self.plan;
        let mut loss = 0.0f64;
        for a in &plan.schedule.stages[self.stage as usize] {
            match *a {
                Action::RecvActivation { mb, chunk, peer }
                | Action::RecvGradient { mb, chunk, peer } => {
                    let c = &mut self.chunks[chunk as usize];
                    let slot = c.slot(mb)?;
                    let (buf, op) = match a {
                        Action::RecvActivation { .. } => {
                            (c.acts[slot].input_mut(), "pipeline activation")
                        }
                        _ => (c.acts[slot].grad_mut(), "pipeline gradient"),
                    };
                    let t = Instant::now();
                    Group::new(world, &self.groups.pp.ranks)?.recv(peer as usize, buf, op)?;
                    self.rep.bubble_s += t.elapsed().as_secs_f64();
                }
                Action::SendActivation { mb, chunk, peer }
                | Action::SendGradient { mb, chunk, peer } => {
                    let fwd = matches!(a, Action::SendActivation { .. });
                    let c = &mut self.chunks[chunk as usize];
                    let slot = c.slot(mb)?;
                    let (buf, op) = if fwd {
                        (c.acts[slot].output(), "pipeline activation")
                    } else {
                        (c.acts[slot].grad(), "pipeline gradient")
                    };
                    let t = Instant::now();
                    Group::new(world, &self.groups.pp.ranks)?.send(peer as usize, buf, op)?;
                    self.rep.pp_comm_s += t.elapsed().as_secs_f64();
                    if !fwd {
                        c.release(mb);
                    }
                }
                Action::Forward { mb, chunk } => {
                    loss += self.forward(step, mb, chunk as usize, &batches[mb as usize], world)?;
                }
                Action::Backward { mb, chunk } => {
                    self.backward(
                        step,
                        mb,
                        chunk as usize,
                        &batches[mb as usize],
                        world,
                        reducer,
                    )?;
                }
                Action::OptimizerStep => {}
            }
        }
        Ok(loss)
    }

    fn forward(
        &mut self,
        step: u64,
        mb: u32,
        ci: usize,
        batch: &Batch,
        world: &mut dyn Communicator,
    ) -> Result<f64, TrainError> {
        let c = &mut self.chunks[ci];
        let slot = c.slot(mb)?;
        let t = Instant::now();
        let mut red = TpReduce::new(world, (&self.groups.tp, &self.groups.cp), None);
        c.acts[slot].swap_scratch(&mut c.scratch);
        let loss = c
            .model
            .forward_part(&c.p, &mut c.acts[slot], batch, step, true, &mut red);
        c.acts[slot].swap_scratch(&mut c.scratch);
        red.charge(t, &mut self.rep)?;
        Ok(loss)
    }

    fn backward(
        &mut self,
        step: u64,
        mb: u32,
        ci: usize,
        batch: &Batch,
        world: &mut dyn Communicator,
        reducer: &mut BucketReducer,
    ) -> Result<(), TrainError> {
        let last = self.last_backward[ci] == Some(mb);
        let c = &mut self.chunks[ci];
        let slot = c.slot(mb)?;
        let t = Instant::now();
        let buckets = last.then_some((&mut *reducer, ci));
        let mut red = TpReduce::new(world, (&self.groups.tp, &self.groups.cp), buckets);
        c.acts[slot].swap_scratch(&mut c.scratch);
        c.model.backward_part(
            &c.p,
            &mut crate::grads::Grads::whole(&mut c.g),
            &mut c.acts[slot],
            batch,
            step,
            true,
            &mut red,
        );
        c.acts[slot].swap_scratch(&mut c.scratch);
        red.charge(t, &mut self.rep)?;
        if c.model.layout.part.embedding {
            c.release(mb);
        }
        Ok(())
    }

    /// After the action list: the buckets' results, the sequence-parallel sums over tp, the
    /// tied table's sum between the first and last stage.
    fn reduce_gradients(
        &mut self,
        world: &mut dyn Communicator,
        reducer: &mut BucketReducer,
    ) -> Result<(), TrainError> {
        let t = Instant::now();
        let mut gs: Vec<&mut Vec<f32>> = self.chunks.iter_mut().map(|c| &mut c.g).collect();
        reducer.wait(&mut gs)?;
        self.rep.dp_comm_s += t.elapsed().as_secs_f64();
        // Under sequence parallelism each device's norm and bias gradients cover its own rows:
        // sum them over the tensor-parallel group (packed into one message per chunk).
        for c in &mut self.chunks {
            let ranges = c.model.layout.row_partial_ranges();
            if ranges.is_empty() {
                continue;
            }
            let t = Instant::now();
            let mut packed: Vec<f32> = ranges
                .iter()
                .flat_map(|r| c.g[r.clone()].to_vec())
                .collect();
            Group::new(world, &self.groups.tp.ranks)?
                .all_reduce(&mut packed, &self.groups.tp.programs)?;
            let mut at = 0;
            for r in ranges {
                c.g[r.clone()].copy_from_slice(&packed[at..at + r.len()]);
                at += r.len();
            }
            self.rep.tp_comm_s += t.elapsed().as_secs_f64();
        }
        let t = Instant::now();
        self.sum_tied_table(world)?;
        self.rep.dp_comm_s += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// The tied word table: its copies on the first and last virtual stage get the sum of
    /// both gradients (locally when one rank holds both chunks).
    fn sum_tied_table(&mut self, world: &mut dyn Communicator) -> Result<(), TrainError> {
        let pp = self.plan.strategy.pp;
        if !self.plan.model.tied_embeddings {
            // An untied head has its own table: nothing is shared between the stages.
            return Ok(());
        }
        let e = self
            .chunks
            .iter()
            .position(|c| c.model.layout.part.embedding);
        let h = self.chunks.iter().position(|c| c.model.layout.part.head);
        match (e, h) {
            (Some(e), Some(h)) if e != h => {
                let (re, rh) = (
                    self.chunks[e].model.layout.wte.clone(),
                    self.chunks[h].model.layout.wte.clone(),
                );
                let (lo, hi) = (e.min(h), e.max(h));
                let (x, y) = self.chunks.split_at_mut(hi);
                let (a, b) = if e < h {
                    (&mut x[lo], &mut y[0])
                } else {
                    (&mut y[0], &mut x[lo])
                };
                for (x, y) in a.g[re].iter_mut().zip(&mut b.g[rh]) {
                    *x += *y;
                    *y = *x;
                }
            }
            (Some(c), None) | (None, Some(c)) if pp > 1 => {
                let r = self.chunks[c].model.layout.wte.clone();
                let g = &self.groups.embedding;
                Group::new(world, &g.ranks)?.all_reduce(&mut self.chunks[c].g[r], &g.programs)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The global gradient norm's scale factor and the step's loss: partial sums over each
    /// axis (tp, then pp, then dp), as the simulator prices them.
    fn norm_and_loss(
        &mut self,
        world: &mut dyn Communicator,
        loss: f64,
    ) -> Result<(f32, f64), TrainError> {
        let t = Instant::now();
        let sharded = host::is_sharded(self.plan);
        let mut sq = 0.0f64;
        // This rank's share: its optimizer shard, or (when every replica holds everything)
        // the copy of the reduction group's first member; counted once across the
        // tensor-parallel group and the tied table.
        if sharded || self.red_index == 0 {
            for c in &self.chunks {
                for r in &c.counted {
                    for s in &c.shard {
                        let (lo, hi) = (r.start.max(s.start), r.end.min(s.end));
                        if lo < hi {
                            sq += optim::sum_squares(&c.g[lo..hi]);
                        }
                    }
                }
            }
        }
        let head = self.chunks.iter().any(|c| c.model.layout.part.head);
        // Every context-parallel rank's loss covers its own tokens: the sum over the dp·cp
        // group is the step's.
        let mine = if head && self.at.tp == 0 { loss } else { 0.0 };
        let mut sums = [sq as f32, mine as f32];
        for g in [&self.groups.tp, &self.groups.pp, &self.groups.dp] {
            if g.size() > 1 {
                Group::new(world, &g.ranks)?.all_reduce(&mut sums, &g.programs)?;
            }
        }
        self.rep.dp_comm_s += t.elapsed().as_secs_f64();
        let scale = optim::clip_scale(f64::from(sums[0]).sqrt(), self.settings.clip) as f32;
        Ok((scale, f64::from(sums[1])))
    }

    /// AdamW on this rank's shard of every chunk.
    fn update(&mut self, step: u64, scale: f32) {
        let t = Instant::now();
        let s = self.settings;
        let lr = optim::Schedule {
            peak: s.lr,
            end: s.lr_end,
            warmup: s.warmup,
            total: s.steps,
        }
        .lr(step + 1);
        for c in &mut self.chunks {
            let mut at = 0;
            for r in &c.shard {
                let n = r.len();
                s.adamw.update(
                    &mut c.p[r.clone()],
                    &mut c.m[at..at + n],
                    &mut c.v[at..at + n],
                    &c.g[r.clone()],
                    &c.decay[r.clone()],
                    scale,
                    lr,
                    step + 1,
                );
                at += n;
            }
        }
        self.rep.optimizer_s += t.elapsed().as_secs_f64();
    }

    /// With a sharded optimizer, every bucket's updated weights gathered over dp (through one
    /// of the reduction's fusion buffers).
    fn gather_weights(
        &mut self,
        world: &mut dyn Communicator,
        reducer: &mut BucketReducer,
    ) -> Result<(), TrainError> {
        if !host::is_sharded(self.plan) {
            return Ok(());
        }
        let t = Instant::now();
        let g = &self.groups.opt;
        let mut buf = reducer.lend();
        for c in &mut self.chunks {
            for b in &c.buckets {
                if let [r] = &b.ranges[..] {
                    // One contiguous range: gathered in place.
                    Group::new(world, &g.ranks)?.all_gather(&mut c.p[r.clone()], &g.programs)?;
                    continue;
                }
                buf.clear();
                for r in &b.ranges {
                    buf.extend_from_slice(&c.p[r.clone()]);
                }
                Group::new(world, &g.ranks)?.all_gather(&mut buf, &g.programs)?;
                let mut at = 0;
                for r in &b.ranges {
                    c.p[r.clone()].copy_from_slice(&buf[at..at + r.len()]);
                    at += r.len();
                }
            }
        }
        reducer.give_back(buf);
        self.rep.opt_comm_s += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// Every rank writes its file, then rank 0 completes the checkpoint (see [`sharded`]).
    fn save(&self, save: &Save, step: u64, world: &mut dyn Communicator) -> Result<(), TrainError> {
        let rank = world.rank();
        let tmp = sharded::temp_dir(&save.dir, step);
        if rank == 0 && tmp.exists() {
            // A partial folder of an earlier, interrupted run.
            std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        world.barrier()?;
        let parts: Vec<sharded::PartState<'_>> = self
            .chunks
            .iter()
            .map(|c| sharded::PartState {
                layout: &c.model.layout,
                params: &c.p,
                m: &c.m,
                v: &c.v,
                shard: &c.shard,
            })
            .collect();
        sharded::write_rank(&tmp, rank, &parts)?;
        world.barrier()?;
        if rank == 0 {
            let settings = serde_json::to_value(self.settings)
                .map_err(|e| TrainError::Config(format!("settings: {e}")))?;
            let manifest = sharded::ShardedManifest {
                format: sharded::FORMAT.into(),
                step,
                seed: self.settings.seed,
                model: self.plan.model.clone(),
                strategy: self.plan.strategy.clone(),
                tokenizer_hash: save.tokenizer_hash.clone(),
                settings,
                files: Default::default(),
            };
            sharded::finish(
                &save.dir,
                &tmp,
                manifest,
                world.size(),
                &save.tokenizer_json,
            )?;
        }
        world.barrier()?;
        Ok(())
    }
}

/// What every rank of a run is given.
#[derive(Clone, Copy)]
pub(super) struct Inputs<'a> {
    pub(super) plan: &'a Plan,
    pub(super) settings: &'a Settings,
    pub(super) dist: &'a DistConfig,
    pub(super) data: &'a Packed,
    /// Train until this step.
    pub(super) steps: u64,
    pub(super) io: Io<'a>,
}

/// One rank's training loop.
pub(super) fn rank_loop(
    inputs: Inputs<'_>,
    world: &mut dyn Communicator,
    aux: Option<Box<dyn Communicator + Send>>,
) -> Result<RankOutput, TrainError> {
    let Inputs {
        plan,
        settings,
        dist,
        data,
        steps,
        io,
    } = inputs;
    let mut r = Rank::new(plan, settings, &io, world.rank())?;
    let bucket_lists: Vec<Vec<BucketRanges>> = r.chunks.iter().map(|c| c.buckets.clone()).collect();
    let mut reducer = BucketReducer::new(plan, r.rank, &r.groups.dp, bucket_lists, aux);
    let mut order = Order::new(settings.seed, data.samples());
    let start = io.resume.map_or(0, |(s, _)| s);
    let mut losses = Vec::new();
    let loop_start = Instant::now();
    for step in start..steps {
        let step_start = Instant::now();
        let cpu_start = (r.rank == 0).then(crate::cpustat::sample);
        assert!(
            dist.fail != Some((r.rank, step)),
            "fault injected at step {step}"
        );
        let batches = r.batches(step, data, &mut order);
        for c in &mut r.chunks {
            crate::kernels::zero(&mut c.g);
        }
        let loss = r.run_actions(step, &batches, world, &mut reducer)?;
        r.reduce_gradients(world, &mut reducer)?;
        let (scale, loss) = r.norm_and_loss(world, loss)?;
        r.update(step, scale);
        r.gather_weights(world, &mut reducer)?;
        losses.push(loss);
        r.rep.step_s.push(step_start.elapsed().as_secs_f64());
        if let Some(a) = cpu_start {
            r.rep
                .step_cpu
                .push(crate::cpustat::window(&a, &crate::cpustat::sample()));
        }
        if let Some(save) = io.save {
            let done = step + 1;
            if done == steps || (save.every > 0 && done % save.every == 0) {
                r.save(save, done, world)?;
            }
        }
    }
    let mut rep = r.rep;
    rep.wall_s = loop_start.elapsed().as_secs_f64();
    rep.overlapped_buckets = reducer.overlapped();
    rep.bucket_log = reducer.log.clone();
    // The fusion buffers the reduction held.
    rep.allocated_bytes += reducer.buffer_bytes();
    Ok(RankOutput {
        losses,
        parts: r
            .chunks
            .into_iter()
            .map(|c| (c.model.layout, c.p))
            .collect(),
        report: rep,
    })
}
