//! The simulated mode: a discrete-event run on a virtual clock. Stage times come from the
//! profiles (the performance model's predictions for each device class), bytes from the
//! accuracy profile's real packed activations, links from `link::Shaper` on the devices'
//! traces; the plans come from the coordinator's own control state
//! (`sched::control::Control`), fed with the same events the coordinator sees: joins,
//! the pool's workers, link samples from the transfers and probes the simulation makes,
//! frame reports, and ticks.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

use serde::Serialize;

use crate::link::Shaper;
use crate::sched::batch::Batching;
pub use crate::sched::control::Planning;
use crate::sched::control::{
    CloudSample, Control, DeviceSpec, FrameSample, Reaction, EMBEDDED_WORKER, PROBE, REPLAN_GAP_S,
};
use crate::sched::perf::{Candidate, Conditions, Link, Tables};
use crate::sched::slo::Slo;

/// One simulated device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub id: String,
    pub class: String,
    /// Its real speed: compute time over the profile's.
    pub slowdown: f64,
    /// The slowdown it tells the coordinator (its class's, unless its file is wrong).
    pub declared_slowdown: f64,
    pub shaper: Shaper,
    pub rtt_s: f64,
    pub in_flight: usize,
}

/// One finished frame.
#[derive(Debug, Clone, Serialize)]
pub struct SimFrame {
    pub device: usize,
    pub start_s: f64,
    pub end_s: f64,
    pub split: u16,
    pub precision: String,
    pub codec: String,
    pub bytes: f64,
    pub drop_points: f64,
    /// Its stages, seconds: head and pack on the device; the transfer, first byte out to
    /// the answer less the worker's time; the wait in the worker's queue; unpack and
    /// tail there. And its wait for the device's compute thread before its head (none
    /// simulated: a simulated frame starts when the device is free). What the latency
    /// holds beyond them waited for the link or for a device tail after a busy answer.
    pub device_wait_s: f64,
    pub device_s: f64,
    pub wire_s: f64,
    pub queue_s: f64,
    pub cloud_s: f64,
    /// Share of the model's profiled compute done on the device.
    pub device_share: f64,
    /// What the plan in force when it started expected its device to make
    /// (`control::Expected`): inferences per second and latency, seconds (NaN before the
    /// first plan).
    pub expected_fps: f64,
    pub expected_latency_s: f64,
    /// The onload budget of that plan, frames per second (infinite: none; NaN: no plan).
    pub budget_fps: f64,
}

/// A sample of one device's state over time.
#[derive(Debug, Clone, Serialize)]
pub struct SimTick {
    pub time_s: f64,
    pub device: usize,
    pub true_mbps: f64,
    pub estimated_mbps: f64,
    /// The rate the kernel's qdisc enforced on the uplink (`tc -s qdisc`), on the
    /// testbed; NaN elsewhere.
    pub kernel_mbps: f64,
    pub split: u16,
    pub precision: String,
    /// The device's correction factor (`k_dev`) its plan was made with (NaN: none).
    pub k_dev: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SimRun {
    pub frames: Vec<SimFrame>,
    pub ticks: Vec<SimTick>,
    pub plan_changes: u64,
}

/// The coordinator's side of the simulation: the fleet's control state, driven as the
/// coordinator's scheduler actor drives it (a re-plan at once when the control state
/// says so, or at the time it gives), and the plans it made.
pub struct Coordinator<'t> {
    tables: &'t Tables,
    control: Control,
    /// Plans that replaced an earlier one.
    pub plan_changes: u64,
}

impl<'t> Coordinator<'t> {
    /// `replan_gap_s`: joins and link changes re-plan at most this often.
    pub fn new(
        tables: &'t Tables,
        planning: Planning,
        cloud_slowdown: f64,
        replan_gap_s: f64,
    ) -> Coordinator<'t> {
        Coordinator {
            tables,
            control: Control::new(planning.sharing(), cloud_slowdown, replan_gap_s),
            plan_changes: 0,
        }
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Follows a reaction: re-plans now, or returns when to look again.
    fn react(&mut self, r: Reaction, t: f64) -> Option<f64> {
        match r {
            Reaction::None => None,
            Reaction::Now => {
                self.replan(t);
                None
            }
            Reaction::At(at) => Some(at),
        }
    }

    pub fn join_device(&mut self, id: &str, spec: DeviceSpec, t: f64) -> Option<f64> {
        let r = self.control.join_device(id, spec, t);
        self.react(r, t)
    }

    pub fn leave_device(&mut self, id: &str, t: f64) -> Option<f64> {
        let r = self.control.leave_device(id);
        self.react(r, t)
    }

    pub fn join_worker(&mut self, name: &str, slots: u32, b: Batching, t: f64) -> Option<f64> {
        let r = self.control.join_worker(name, slots, b);
        self.react(r, t)
    }

    pub fn leave_worker(&mut self, name: &str, t: f64) -> Option<f64> {
        let r = self.control.leave_worker(name);
        self.react(r, t)
    }

    pub fn observe_transfer(&mut self, id: &str, t: f64, bytes: u64, seconds: f64) -> Option<f64> {
        let r = self.control.observe_transfer(id, t, bytes, seconds);
        self.react(r, t)
    }

    pub fn observe_rtt(&mut self, id: &str, t: f64, rtt_s: f64) -> Option<f64> {
        let r = self.control.observe_rtt(id, t, rtt_s);
        self.react(r, t)
    }

    pub fn observe_frame(&mut self, id: &str, t: f64, frame: &FrameSample) -> Option<f64> {
        let r = self.control.observe_frame(self.tables, id, t, frame);
        self.react(r, t)
    }

    pub fn observe_worker_load(&mut self, name: &str, t: f64, queued: u32) -> Option<f64> {
        let r = self.control.observe_worker_load(name, t, queued);
        self.react(r, t)
    }

    /// A deferred re-plan's time came: it runs if still due.
    pub fn deferred(&mut self, t: f64) {
        if self.control.replan_due() {
            self.replan(t);
        }
    }

    /// A re-plan (the periodic tick, or one an event asked for); returns the links to
    /// probe, with the probes' bytes.
    pub fn replan(&mut self, t: f64) -> Vec<(String, u32)> {
        let r = self.control.replan(self.tables, t);
        self.plan_changes += r.changed.iter().filter(|(_, p)| p.epoch > 1).count() as u64;
        r.probes
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Replan,
    /// A re-plan the control state deferred.
    Deferred,
    /// The agents' heartbeat: links the control state wants probed get a probe.
    Beat,
    ProbeDone(usize),
    Answer(usize),
    /// A job (a batch of flights) finished at its worker.
    CloudDone(usize),
    /// A split's batch at a worker reached its delay (`batch_due`'s entry).
    BatchDue(usize),
    Arrive(usize),
    /// A worker's busy answer reached the device: it finishes the frame itself.
    Busy(usize),
    /// A frame the device finished itself (its tail after a busy answer).
    FallbackDone(usize),
    DeviceDone(usize),
    Start(usize),
}

struct Flight {
    device: usize,
    candidate: Candidate,
    worker: Option<String>,
    start: f64,
    device_s: f64,
    sent: f64,
    arrives: f64,
    /// Its wait in the worker's queue (and its batcher).
    queue_s: f64,
    /// Its cloud seconds: unpack and tail alone, then, once served, its share of its
    /// batch's.
    cloud_s: f64,
    unpack_s: f64,
    tail_s: f64,
    bytes: f64,
    drop: f64,
    share: f64,
    expected: Option<crate::sched::control::Expected>,
    budget_fps: f64,
    /// Answered busy: the device ran its tail.
    fallback: bool,
    /// Its tail on the device, were it answered busy.
    device_tail_s: f64,
}

/// A worker of the pool: free slots, its FIFO queue of jobs (each a batch of flights,
/// one flight when it does not batch), and its batcher: per split, the flights held for
/// company, since when, and the generation that tells a batch's due event its own.
struct SimWorker {
    slots: u32,
    free: u32,
    queue: VecDeque<usize>,
    batching: Batching,
    pending: BTreeMap<usize, (Vec<usize>, u64)>,
    waiting: u32,
    /// Frames it holds beyond its slots before it answers busy, as a worker's `queue`.
    room: usize,
}

impl SimWorker {
    /// Frames admitted, running or waiting (what a worker reports).
    /// Job `j` takes a free slot (true: it starts now) or joins the queue.
    fn admit(&mut self, j: usize) -> bool {
        if self.free > 0 {
            self.free -= 1;
            true
        } else {
            self.queue.push_back(j);
            false
        }
    }

    fn queued(&self, jobs: &[Vec<usize>]) -> u32 {
        let queued: usize = self.queue.iter().map(|&j| jobs[j].len()).sum();
        self.slots - self.free + queued as u32 + self.waiting
    }
}

/// Runs `devices` for `duration_s` virtual seconds against a pool of one worker with
/// `workers` slots (as the live mode's coordinator runs its embedded pool).
#[allow(clippy::too_many_arguments)]
pub fn run(
    tables: &Tables,
    devices: &mut [SimDevice],
    workers: usize,
    cloud_slowdown: f64,
    batching: &Batching,
    slo: &Slo,
    planning: Planning,
    duration_s: f64,
    replan_s: f64,
) -> SimRun {
    let n = devices.len();
    let mut heap: BinaryHeap<Reverse<(u64, u64, Kind)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let key = |t: f64| (t * 1e9) as u64; // nanosecond ticks keep the heap total
    let mut push = |heap: &mut BinaryHeap<Reverse<(u64, u64, Kind)>>, t: f64, k: Kind| {
        seq += 1;
        heap.push(Reverse((key(t), seq, k)));
    };
    let index: HashMap<String, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.clone(), i))
        .collect();
    let mut coord = Coordinator::new(tables, planning, cloud_slowdown, REPLAN_GAP_S);
    let mut pool: BTreeMap<String, SimWorker> = BTreeMap::new();
    if workers > 0 {
        pool.insert(
            EMBEDDED_WORKER.to_string(),
            SimWorker {
                slots: workers as u32,
                free: workers as u32,
                queue: VecDeque::new(),
                batching: batching.clone(),
                pending: BTreeMap::new(),
                waiting: 0,
                room: crate::sched::control::DEFAULT_QUEUE,
            },
        );
        if let Some(at) = coord.join_worker(EMBEDDED_WORKER, workers as u32, batching.clone(), 0.0)
        {
            push(&mut heap, at, Kind::Deferred);
        }
    }
    for d in devices.iter() {
        let spec = DeviceSpec {
            slowdown: d.declared_slowdown,
            slo: slo.clone(),
            policy: planning.policy(),
            in_flight: d.in_flight as u32,
        };
        if let Some(at) = coord.join_device(&d.id, spec, 0.0) {
            push(&mut heap, at, Kind::Deferred);
        }
    }
    // Stage times: the performance model's, without the link (the shapers carry it).
    let cond = |d: &SimDevice| {
        let mut c = Conditions::new(d.slowdown, Link::mbps(1.0, 0.0));
        c.cloud_slowdown = cloud_slowdown;
        c.cloud_slots = workers.max(1) as f64;
        c
    };
    let mut out = SimRun::default();
    let total_ref = tables.device_only().head_s.max(1e-12);
    let tick = |coord: &mut Coordinator, devices: &[SimDevice], out: &mut SimRun, t: f64| {
        let probes = coord.replan(t);
        for (i, d) in devices.iter().enumerate() {
            let c = coord.control();
            let (Some(p), Some(l)) = (c.plan(&d.id), c.link(&d.id)) else {
                continue;
            };
            out.ticks.push(SimTick {
                time_s: t,
                device: i,
                true_mbps: d.shaper.trace().mbps_at(t),
                kernel_mbps: f64::NAN,
                estimated_mbps: l.bandwidth_bps / 1e6,
                split: p.candidate.split,
                precision: p.candidate.precision.to_string(),
                k_dev: p.feedback.k_dev,
            });
        }
        probes
    };
    // Probes on their way: (device, first bit out, arrives, bytes).
    let mut probing = vec![false; n];
    let mut probes: Vec<(usize, f64, f64, u32)> = Vec::new();
    let send_probes = |ids: Vec<(String, u32)>,
                       probing: &mut [bool],
                       devices: &mut [SimDevice],
                       probes: &mut Vec<(usize, f64, f64, u32)>,
                       t: f64|
     -> Vec<(f64, usize)> {
        ids.iter()
            .filter_map(|(id, bytes)| Some((index.get(id).copied()?, *bytes)))
            .filter_map(|(i, bytes)| {
                // As an agent does: one probe at a time.
                if std::mem::replace(&mut probing[i], true) {
                    return None;
                }
                let delivery = devices[i].shaper.send(t, bytes as usize);
                // Timed from its first bit out, as the agent times it.
                probes.push((i, delivery.start, delivery.arrives, bytes));
                Some((delivery.arrives, probes.len() - 1))
            })
            .collect()
    };
    let ids = tick(&mut coord, devices, &mut out, 0.0);
    for (at, p) in send_probes(ids, &mut probing, devices, &mut probes, 0.0) {
        push(&mut heap, at, Kind::ProbeDone(p));
    }
    push(&mut heap, replan_s, Kind::Replan);
    // An agent heartbeats as soon as it is connected, then every beat.
    push(&mut heap, 0.0, Kind::Beat);
    for i in 0..n {
        push(&mut heap, 0.0, Kind::Start(i));
    }
    let mut flights: Vec<Flight> = Vec::new();
    // Jobs at the workers (batches of flights), and batches waiting for their delay:
    // (worker, split, generation).
    let mut jobs: Vec<Vec<usize>> = Vec::new();
    let mut batch_due: Vec<(String, usize, u64)> = Vec::new();
    let mut generation = 0u64;
    // A job's service: each frame's unpack, and one tail for the batch at the curve's
    // time per image; it starts now on a free slot of worker `w`.
    let serve = |job: &[usize], flights: &mut [Flight], t: f64| -> f64 {
        let n = job.len();
        let split = flights[job[0]].candidate.split as usize;
        let ratios = tables
            .batch_ratios
            .get(split)
            .map_or(&[][..], Vec::as_slice);
        let tail =
            flights[job[0]].tail_s * n as f64 * crate::sched::batch::per_image(ratios, n as f64);
        let unpack: f64 = job.iter().map(|&f| flights[f].unpack_s).sum();
        let service = unpack + tail;
        for &f in job {
            flights[f].queue_s = t - flights[f].arrives;
            // One frame's share, as the coordinator folds a batch's tail.
            flights[f].cloud_s = flights[f].unpack_s + tail / n as f64;
        }
        service
    };
    let mut in_flight = vec![0usize; n];
    // Each device's onload budget, enforced as the agent does.
    let mut budgets = vec![crate::sched::control::Budget::default(); n];
    let mut device_free = vec![0.0f64; n];
    let mut device_busy = vec![false; n];
    // Frames answered busy, waiting for their device to run their tails; and a
    // device's whole model at its speed.
    let mut fallbacks: Vec<VecDeque<usize>> = vec![VecDeque::new(); n];
    // Device `i` is free at `t`: it runs the tail of the next frame answered busy, if
    // any (when it ends, and which).
    let free_up = |i: usize,
                   t: f64,
                   fallbacks: &mut [VecDeque<usize>],
                   flights: &[Flight],
                   device_busy: &mut [bool],
                   device_free: &mut [f64]|
     -> Option<(f64, usize)> {
        device_busy[i] = false;
        let f = fallbacks[i].pop_front()?;
        device_busy[i] = true;
        device_free[i] = t + flights[f].device_tail_s;
        Some((device_free[i], f))
    };
    while let Some(Reverse((tk, _, kind))) = heap.pop() {
        let t = tk as f64 / 1e9;
        if t > duration_s {
            break;
        }
        match kind {
            Kind::Replan => {
                let ids = tick(&mut coord, devices, &mut out, t);
                for (at, p) in send_probes(ids, &mut probing, devices, &mut probes, t) {
                    push(&mut heap, at, Kind::ProbeDone(p));
                }
                push(&mut heap, t + replan_s, Kind::Replan);
            }
            Kind::Deferred => coord.deferred(t),
            Kind::Beat => {
                // Each agent's heartbeat is answered one RTT later: an RTT sample (the
                // answer's trip is not simulated; its figure is the link's RTT).
                for d in devices.iter() {
                    if let Some(at) = coord.observe_rtt(&d.id, t, d.rtt_s) {
                        push(&mut heap, at, Kind::Deferred);
                    }
                }
                let ids = coord.control.probes(t);
                for (at, p) in send_probes(ids, &mut probing, devices, &mut probes, t) {
                    push(&mut heap, at, Kind::ProbeDone(p));
                }
                // The workers' load reports, on the same beat.
                for (name, w) in &pool {
                    if let Some(at) = coord.observe_worker_load(name, t, w.queued(&jobs)) {
                        push(&mut heap, at, Kind::Deferred);
                    }
                }
                push(&mut heap, t + PROBE.beat_s, Kind::Beat);
            }
            Kind::ProbeDone(p) => {
                // As the agent times it: from handing it to the link to the answer.
                let (i, sent, arrives, bytes) = probes[p];
                probing[i] = false;
                let one_way = devices[i].rtt_s / 2.0;
                let id = devices[i].id.clone();
                let secs = arrives - sent + one_way;
                if let Some(at) = coord.observe_transfer(&id, t, u64::from(bytes), secs) {
                    push(&mut heap, at, Kind::Deferred);
                }
            }
            Kind::Start(i) => {
                if device_busy[i] || in_flight[i] >= devices[i].in_flight.max(1) {
                    continue;
                }
                let plan = coord.control().plan(&devices[i].id);
                let expected = plan.map(|p| p.expected);
                let budget_fps = plan.map_or(f64::NAN, |p| p.rate_fps);
                // Before its first plan a device runs device-only, as an agent does.
                let (c, worker) = match plan {
                    // Over its budget, a frame the plan would onload runs on the device.
                    Some(p) if p.worker.is_some() && !budgets[i].admit(t, p.rate_fps) => {
                        (tables.device_only().candidate, None)
                    }
                    Some(p) => (p.candidate, p.worker.clone()),
                    None => (tables.device_only().candidate, None),
                };
                let row = tables.row(&c).expect("plans come from the tables");
                let p = row.predict(&cond(&devices[i]));
                let device_s = p.head_s + p.pack_s;
                let device_tail_s = tables.device_tail_s(row, &cond(&devices[i]));
                device_busy[i] = true;
                in_flight[i] += 1;
                device_free[i] = t + device_s;
                flights.push(Flight {
                    device: i,
                    candidate: c,
                    worker,
                    start: t,
                    device_s,
                    sent: 0.0,
                    arrives: 0.0,
                    queue_s: 0.0,
                    cloud_s: p.unpack_s + p.tail_s,
                    unpack_s: p.unpack_s,
                    tail_s: p.tail_s,
                    bytes: p.bytes,
                    drop: p.drop_points,
                    share: row.head_s / total_ref,
                    expected,
                    budget_fps,
                    fallback: false,
                    device_tail_s,
                });
                push(&mut heap, t + device_s, Kind::DeviceDone(flights.len() - 1));
            }
            Kind::DeviceDone(f) => {
                let i = flights[f].device;
                let next = (&mut fallbacks, &mut device_busy, &mut device_free);
                if let Some((at, g)) = free_up(i, t, next.0, &flights, next.1, next.2) {
                    push(&mut heap, at, Kind::FallbackDone(g));
                }
                push(&mut heap, t, Kind::Start(i));
                if flights[f].bytes <= 0.0 || flights[f].worker.is_none() {
                    push(&mut heap, t, Kind::Answer(f));
                } else {
                    let d = devices[i].shaper.send(t, flights[f].bytes as usize);
                    // The transfer is timed from when its first bit leaves, not from when
                    // it joined the device's own queue (as the agent does).
                    flights[f].sent = d.start;
                    flights[f].arrives = d.arrives;
                    push(&mut heap, d.arrives, Kind::Arrive(f));
                }
            }
            Kind::Arrive(f) => {
                let name = flights[f].worker.clone();
                let Some(w) = name.as_deref().and_then(|w| pool.get_mut(w)) else {
                    // Its worker is gone: the device finishes the frame itself.
                    flights[f].bytes = 0.0;
                    push(&mut heap, t, Kind::Answer(f));
                    continue;
                };
                // As the worker's pool: full, it answers busy at once.
                let held = w.queued(&jobs) as usize;
                if !crate::sched::control::has_room(held, w.slots as usize, w.room) {
                    let one_way = devices[flights[f].device].rtt_s / 2.0;
                    push(&mut heap, t + one_way, Kind::Busy(f));
                    continue;
                }
                let split = flights[f].candidate.split as usize;
                let limit = w.batching.limit(split);
                // As the worker's batcher: a split that batches waits for company.
                let job = if limit > 1 {
                    let (held, gen) = w.pending.entry(split).or_insert_with(|| {
                        generation += 1;
                        (Vec::new(), generation)
                    });
                    held.push(f);
                    w.waiting += 1;
                    if held.len() == 1 {
                        batch_due.push((name.clone().unwrap_or_default(), split, *gen));
                        push(
                            &mut heap,
                            t + w.batching.max_queue_delay_s,
                            Kind::BatchDue(batch_due.len() - 1),
                        );
                    }
                    if held.len() < limit {
                        continue;
                    }
                    let (held, _) = w.pending.remove(&split).expect("just filled");
                    w.waiting -= held.len() as u32;
                    held
                } else {
                    vec![f]
                };
                jobs.push(job);
                let j = jobs.len() - 1;
                if w.admit(j) {
                    let service = serve(&jobs[j], &mut flights, t);
                    push(&mut heap, t + service, Kind::CloudDone(j));
                }
            }
            Kind::BatchDue(b) => {
                let (name, split, gen) = batch_due[b].clone();
                let Some(w) = pool.get_mut(&name) else {
                    continue;
                };
                if w.pending.get(&split).is_none_or(|p| p.1 != gen) {
                    continue; // it filled and went before its delay
                }
                let (held, _) = w.pending.remove(&split).expect("checked");
                w.waiting -= held.len() as u32;
                jobs.push(held);
                let j = jobs.len() - 1;
                if w.admit(j) {
                    let service = serve(&jobs[j], &mut flights, t);
                    push(&mut heap, t + service, Kind::CloudDone(j));
                }
            }
            Kind::CloudDone(j) => {
                let first = jobs[j][0];
                if let Some(w) = flights[first]
                    .worker
                    .as_deref()
                    .and_then(|w| pool.get_mut(w))
                {
                    match w.queue.pop_front() {
                        Some(next) => {
                            let service = serve(&jobs[next], &mut flights, t);
                            push(&mut heap, t + service, Kind::CloudDone(next))
                        }
                        None => w.free += 1,
                    }
                }
                for &f in &jobs[j] {
                    let one_way = devices[flights[f].device].rtt_s / 2.0;
                    push(&mut heap, t + one_way, Kind::Answer(f));
                }
            }
            Kind::Busy(f) => {
                let i = flights[f].device;
                flights[f].fallback = true;
                fallbacks[i].push_back(f);
                if !device_busy[i] {
                    let next = (&mut fallbacks, &mut device_busy, &mut device_free);
                    if let Some((at, g)) = free_up(i, t, next.0, &flights, next.1, next.2) {
                        push(&mut heap, at, Kind::FallbackDone(g));
                    }
                }
            }
            Kind::FallbackDone(f) => {
                let i = flights[f].device;
                let next = (&mut fallbacks, &mut device_busy, &mut device_free);
                if let Some((at, g)) = free_up(i, t, next.0, &flights, next.1, next.2) {
                    push(&mut heap, at, Kind::FallbackDone(g));
                }
                push(&mut heap, t, Kind::Answer(f));
                push(&mut heap, t, Kind::Start(i));
            }
            Kind::Answer(f) => {
                let fl = &flights[f];
                let i = fl.device;
                in_flight[i] -= 1;
                let remote = fl.bytes > 0.0 && !fl.fallback;
                // Its transfer, first bit out to the answer less the worker's time: one
                // round trip in it, as the agent times it (its stage and its link sample).
                let wire = (fl.arrives - fl.sent) + devices[i].rtt_s / 2.0;
                out.frames.push(SimFrame {
                    device: i,
                    start_s: fl.start,
                    end_s: t,
                    split: fl.candidate.split,
                    precision: fl.candidate.precision.to_string(),
                    codec: fl.candidate.codec.to_string(),
                    bytes: fl.bytes,
                    drop_points: fl.drop,
                    device_wait_s: 0.0,
                    device_s: fl.device_s,
                    wire_s: if remote { wire } else { 0.0 },
                    queue_s: if remote { fl.queue_s } else { 0.0 },
                    cloud_s: if remote { fl.cloud_s } else { 0.0 },
                    device_share: if fl.fallback { 1.0 } else { fl.share },
                    expected_fps: fl.expected.map_or(f64::NAN, |e| e.fps),
                    expected_latency_s: fl.expected.map_or(f64::NAN, |e| e.latency_s),
                    budget_fps: fl.budget_fps,
                });
                // The agent's report: its stages fold into the corrections, and an
                // onloaded frame's transfer (first byte out to the answer, less the
                // worker's time) is a link sample.
                let id = devices[i].id.clone();
                let sample = FrameSample {
                    candidate: fl.candidate,
                    device_s: fl.device_s,
                    device_tail_s: if fl.fallback { fl.device_tail_s } else { 0.0 },
                    cloud: remote.then_some(CloudSample {
                        queue_s: fl.queue_s,
                        service_s: fl.cloud_s,
                    }),
                };
                let bytes = fl.bytes as u64;
                // A frame finished on the device after a busy answer: its tail folds into
                // the device's correction (as the coordinator does with its report).
                if let Some(at) = coord.observe_frame(&id, t, &sample) {
                    push(&mut heap, at, Kind::Deferred);
                }
                if remote {
                    if let Some(at) = coord.observe_transfer(&id, t, bytes, wire) {
                        push(&mut heap, at, Kind::Deferred);
                    }
                }
                push(&mut heap, t.max(device_free[i]), Kind::Start(i));
            }
        }
    }
    out.plan_changes = coord.plan_changes;
    out
}
