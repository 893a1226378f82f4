//! The fleet's control step: the one place where plans are made.
//!
//! The coordinator's scheduler actor and the simulator both hold a [`Control`] and feed
//! it the same events (devices and workers joining and leaving, link samples, finished
//! frames, ticks); it answers with what to do ([`Reaction`]) and, on a re-plan, every
//! device's assignment ([`Step`]). Nothing else decides a plan. The pieces:
//!
//! - [`step`]: pure. From the devices (conditions, SLO, policy, current plan), the pool
//!   (workers and their slots) it returns every device's assignment (split, precision,
//!   codec, worker, onload rate): `fleet::plan` against the pool (infinite capacity when
//!   [`Sharing::PerDevice`]), fleet-level hysteresis (`fleet::keep_current`) when the pool
//!   is shared (not on the re-plan after a device left or a worker joined: the freed
//!   capacity is handed out afresh), per-device hysteresis (`Scheduler::decide` with the plan in force) when
//!   everyone fits, then workers filled greedily by cloud load (a device stays with its
//!   worker while it is there); a plan that onloads with no worker runs device-only.
//! - [`LinkState`]: one device's link as the planner sees it: the estimator, the
//!   [`STARTING_LINK`] before anything was measured, and the re-plan rule (an estimate
//!   that moved by more than 10 %, or its RTT by more than 20 %).
//! - [`ProbeRule`]: a link with no transfer for [`ProbeRule::idle_s`] is probed with
//!   [`ProbeRule::bytes`]; the coordinator asks the agent, the simulator sends them.
//! - [`ReplanGate`]: joins and link changes re-plan at most every `gap_s`.
//! - [`Budget`]: a plan's onload budget enforced frame by frame (the agent's and the
//!   simulator's).
//! - [`feedback`]: run-time correction, online: each device's measured head and pack
//!   over the predicted (`k_dev`), each worker's measured unpack and tail (`k_cloud`) and
//!   queue wait, bounded and smoothed; the plans use them, and a factor that drifted
//!   past [`feedback::DRIFT`] since the plans were made asks for a re-plan.
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::batch::Batching;
use super::perf::{Candidate, Conditions, Correction, Link, Prediction, Tables};
use super::slo::Slo;
use super::{Policy, Scheduler};
use feedback::{expected_wait, Factor, QueueWait};

mod budget;
pub mod feedback;
mod link;
mod step;

pub use budget::{has_room, Budget, ARRIVAL_SLACK_S, BURST_S, DEFAULT_QUEUE};
pub use link::{LinkState, ProbeRule, PROBE};
pub use step::{cloud_load, device_slots, step, Assigned, DeviceView, Expected, Step, WorkerView};

/// The link assumed for a device before anything was measured.
pub const STARTING_LINK: Link = Link {
    bandwidth_bps: 10e6,
    rtt_s: 0.02,
};

/// Joins and link changes re-plan at most this often (the coordinator's default
/// `replan_gap_ms`).
pub const REPLAN_GAP_S: f64 = 0.1;

/// A device keeps a new plan at least this long, while it still meets its SLO's
/// constraints, its worker is there, no device left and no worker joined, the plan was
/// made on a measured link, and the new plan is not expected to make more than
/// [`DWELL_GAIN`] times as many inferences: the anti-flap rule against estimates and
/// factors that wobble between two close plans.
pub const DWELL_S: f64 = 2.0;

/// A new plan expected to make more than this many times the plan in force replaces it
/// even while it dwells.
pub const DWELL_GAIN: f64 = 1.25;

/// The name of a coordinator's embedded worker pool (and of the simulator's pool).
pub const EMBEDDED_WORKER: &str = "embedded";

/// How the pool is shared between the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    /// Each device planned alone, as if the pool were its own.
    PerDevice,
    /// All devices planned together against the pool's slots.
    FleetAware,
}

/// A way to plan a fleet, as experiments and `dyno` name them: a policy per device, or
/// DynO fleet-aware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Planning {
    /// Every device alone, with this policy.
    PerDevice(Policy),
    /// DynO over the whole fleet against the pool's capacity.
    Fleet,
}

impl Planning {
    pub const FLEET_NAME: &'static str = "dyno-fleet";

    pub fn sharing(self) -> Sharing {
        match self {
            Planning::PerDevice(_) => Sharing::PerDevice,
            Planning::Fleet => Sharing::FleetAware,
        }
    }

    /// The policy each device plans with.
    pub fn policy(self) -> Policy {
        match self {
            Planning::PerDevice(p) => p,
            Planning::Fleet => Policy::Dyno,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Planning::PerDevice(p) => p.name(),
            Planning::Fleet => Self::FLEET_NAME,
        }
    }
}

impl fmt::Display for Planning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Planning {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == Self::FLEET_NAME {
            return Ok(Planning::Fleet);
        }
        s.parse::<Policy>()
            .map(Planning::PerDevice)
            .map_err(|e| format!("{e}, {}", Self::FLEET_NAME))
    }
}

impl Serialize for Planning {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Planning {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Joins and link changes re-plan at most every `gap_s`: with hundreds of devices each
/// sends its own, and a plan of the whole fleet takes milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct ReplanGate {
    pub gap_s: f64,
    last_s: f64,
    due: bool,
}

impl ReplanGate {
    pub fn new(gap_s: f64) -> ReplanGate {
        ReplanGate {
            gap_s,
            last_s: f64::NEG_INFINITY,
            due: false,
        }
    }

    /// A re-plan is wanted at `now_s`: when to run it, or `None` when one is already due.
    fn request(&mut self, now_s: f64) -> Option<f64> {
        if self.due {
            return None;
        }
        if now_s - self.last_s >= self.gap_s {
            Some(now_s)
        } else {
            self.due = true;
            Some(self.last_s + self.gap_s)
        }
    }

    fn ran(&mut self, now_s: f64) {
        self.last_s = now_s;
        self.due = false;
    }

    /// Whether a deferred re-plan is still due (none ran since it was asked for).
    pub fn due(&self) -> bool {
        self.due
    }
}

/// What the caller does after an event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reaction {
    /// Nothing to re-plan.
    None,
    /// Re-plan now.
    Now,
    /// Re-plan at this time, if [`Control::replan_due`] still holds then.
    At(f64),
}

impl Reaction {
    fn gated(gate: &mut ReplanGate, now_s: f64) -> Reaction {
        match gate.request(now_s) {
            None => Reaction::None,
            Some(t) if t <= now_s => Reaction::Now,
            Some(t) => Reaction::At(t),
        }
    }
}

/// What a device brings when it joins.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    /// Its class's compute time over the profile's.
    pub slowdown: f64,
    pub slo: Slo,
    pub policy: Policy,
    /// Frames it has out at once (its agent's `in_flight`).
    pub in_flight: u32,
}

/// A device's plan in force; on the wire, the coordinator's `Assignment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub candidate: Candidate,
    /// Its worker (`None`: device-only): the worker's name in the control state; on the
    /// wire, the address to send activations to.
    pub worker: Option<String>,
    pub prediction: Prediction,
    pub feasible: bool,
    /// The onload budget, frames per second (infinite: none, or it does not onload);
    /// see [`Assigned::rate_fps`].
    pub rate_fps: f64,
    /// What the device is expected to make on it, with its budget.
    pub expected: Expected,
    /// The correction factors and queue wait it was made with.
    pub feedback: Feedback,
    /// Increases with every new plan for this device.
    pub epoch: u64,
}

impl Plan {
    /// The pool's seconds per second this plan takes.
    pub fn cloud_load(&self) -> f64 {
        cloud_load(&self.prediction, self.rate_fps)
    }
}

#[derive(Debug, Clone)]
struct Device {
    spec: DeviceSpec,
    link: LinkState,
    /// Its measured head and pack over the predicted.
    k_dev: Factor,
    plan: Option<Plan>,
    /// When its plan last changed.
    since_s: f64,
    /// Whether its plan in force was made on a measured link.
    planned_measured: bool,
    /// What the device was last told of its plan: the expected throughput and its
    /// `k_dev` ([`REFRESH`]).
    told: (f64, f64),
}

#[derive(Debug, Clone)]
struct Worker {
    slots: u32,
    /// Its measured unpack and tail over the predicted.
    k_cloud: Factor,
    queue: QueueWait,
    /// Its seconds per frame (unpack and tail) as last corrected (0: none yet).
    service_s: f64,
    /// How it batches (off until it says).
    batching: Batching,
}

impl Worker {
    fn new(slots: u32) -> Worker {
        Worker {
            slots,
            k_cloud: Factor::default(),
            queue: QueueWait::default(),
            service_s: 0.0,
            batching: Batching::off(),
        }
    }
}

/// A finished frame's measured stages, as its device reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameSample {
    /// The plan it ran on.
    pub candidate: Candidate,
    /// Head and pack, seconds.
    pub device_s: f64,
    /// The tail the device ran itself after a busy answer, seconds (0: none). Device
    /// compute too, and long: under a CPU quota a short stage (a JPEG's encoding, a
    /// head to an early split) runs faster than the quota's average, a whole tail at it.
    pub device_tail_s: f64,
    /// When it onloaded: its wait in the worker's queue and the worker's unpack and
    /// tail, seconds.
    pub cloud: Option<CloudSample>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CloudSample {
    pub queue_s: f64,
    pub service_s: f64,
}

/// A device's correction factors and queue wait as the planner sees them
/// ([`Control::feedback`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Feedback {
    pub k_dev: f64,
    pub k_cloud: f64,
    pub queue_s: f64,
}

/// A plan kept is sent again (same epoch) when what it expects the device to make, or
/// the device's `k_dev`, moved by more than this since the device was last told: a
/// device that joins takes a share of the others' worker, a factor converges while the
/// plan holds. So what each device knows of its plan (what its frames report as
/// expected, what the agent shows) is what the control state holds, as the simulator
/// reads it, within this much.
pub const REFRESH: f64 = 0.10;

/// The devices whose plans a re-plan changed (split, precision, codec, worker, or an
/// onload rate moved by more than 10 %), with their new plans (in id order), and the
/// plans kept whose expectation moved ([`REFRESH`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replanned {
    pub changed: Vec<(String, Plan)>,
    /// Plans kept (same epoch) whose expectation or `k_dev` moved: sent again.
    pub refreshed: Vec<(String, Plan)>,
    /// Links to probe now, with the probe's bytes.
    pub probes: Vec<(String, u32)>,
}

/// Whether an onload rate moved by more than 10 % (a plan with it is sent again), as
/// what it lets the device onload: a budget at or above the plan's throughput
/// (`throughput_fps`), or none, lets it onload all it makes. So a budget that moves
/// between none and just under the throughput is not sent again and again.
fn rate_moved(sent: f64, now: f64, throughput_fps: f64) -> bool {
    let (sent, now) = (sent.min(throughput_fps), now.min(throughput_fps));
    if sent.is_infinite() || now.is_infinite() {
        return sent != now;
    }
    (now - sent).abs() > 0.1 * sent.abs()
}

/// The fleet's control state: one per coordinator, one per simulation.
#[derive(Debug, Clone)]
pub struct Control {
    sharing: Sharing,
    cloud_slowdown: f64,
    devices: BTreeMap<String, Device>,
    workers: BTreeMap<String, Worker>,
    planner: Scheduler,
    gate: ReplanGate,
    utilisation: f64,
    /// A device left or a worker joined since the last re-plan: the next one plans
    /// afresh, without fleet-level hysteresis.
    membership_changed: bool,
    /// The tables the plans in force were made with, when the pool batches: each split
    /// at the batch its frames expect (`Tables::batched`).
    batched: Option<Tables>,
}

impl Control {
    /// `replan_gap_s`: joins and link changes re-plan at most this often.
    pub fn new(sharing: Sharing, cloud_slowdown: f64, replan_gap_s: f64) -> Control {
        Control {
            sharing,
            cloud_slowdown,
            devices: BTreeMap::new(),
            workers: BTreeMap::new(),
            planner: Scheduler::new(),
            gate: ReplanGate::new(replan_gap_s),
            utilisation: 0.0,
            membership_changed: false,
            batched: None,
        }
    }

    /// A device joined (or joined again: its old state is replaced).
    pub fn join_device(&mut self, id: &str, spec: DeviceSpec, now_s: f64) -> Reaction {
        self.devices.insert(
            id.to_string(),
            Device {
                spec,
                link: LinkState::default(),
                k_dev: Factor::default(),
                plan: None,
                since_s: f64::NEG_INFINITY,
                planned_measured: false,
                told: (f64::NAN, f64::NAN),
            },
        );
        Reaction::gated(&mut self.gate, now_s)
    }

    pub fn leave_device(&mut self, id: &str) -> Reaction {
        match self.devices.remove(id) {
            Some(_) => {
                self.membership_changed = true;
                Reaction::Now
            }
            None => Reaction::None,
        }
    }

    /// A worker joined with `slots` threads, batching as `batching` (the pool is planned
    /// with what all its workers batch, [`Batching::common`]).
    pub fn join_worker(&mut self, name: &str, slots: u32, batching: Batching) -> Reaction {
        let mut w = Worker::new(slots);
        w.batching = batching;
        self.workers.insert(name.to_string(), w);
        self.membership_changed = true;
        Reaction::Now
    }

    pub fn leave_worker(&mut self, name: &str) -> Reaction {
        match self.workers.remove(name) {
            Some(_) => Reaction::Now,
            None => Reaction::None,
        }
    }

    /// A transfer on a device's uplink: `bytes` in `seconds` (one RTT included).
    pub fn observe_transfer(&mut self, id: &str, now_s: f64, bytes: u64, seconds: f64) -> Reaction {
        self.observe_link(id, now_s, |l| l.observe_transfer(now_s, bytes, seconds))
    }

    /// A round trip on a device's link.
    pub fn observe_rtt(&mut self, id: &str, now_s: f64, rtt_s: f64) -> Reaction {
        self.observe_link(id, now_s, |l| l.observe_rtt(now_s, rtt_s))
    }

    /// A sample of a device's link: a (gated) re-plan when its estimate moved.
    fn observe_link(
        &mut self,
        id: &str,
        now_s: f64,
        sample: impl FnOnce(&mut LinkState) -> bool,
    ) -> Reaction {
        if self
            .devices
            .get_mut(id)
            .is_some_and(|d| sample(&mut d.link))
        {
            Reaction::gated(&mut self.gate, now_s)
        } else {
            Reaction::None
        }
    }

    /// A frame a device finished: its measured device stage folds into the device's
    /// `k_dev`; when it onloaded, its cloud stage into its worker's `k_cloud` and its
    /// queue wait into the worker's. A (gated) re-plan when one drifted from what the
    /// plans in force were made with.
    pub fn observe_frame(
        &mut self,
        tables: &Tables,
        id: &str,
        now_s: f64,
        frame: &FrameSample,
    ) -> Reaction {
        let tables = self.batched.as_ref().unwrap_or(tables);
        let Some(row) = tables.row(&frame.candidate).copied() else {
            return Reaction::None;
        };
        let Some(d) = self.devices.get_mut(id) else {
            return Reaction::None;
        };
        let worker = d
            .plan
            .as_ref()
            .and_then(|p| p.worker.as_deref())
            .and_then(|w| self.workers.get_mut(w));
        let mut c = Conditions::new(d.spec.slowdown, d.link.link());
        c.cloud_slowdown = self.cloud_slowdown;
        c.correction = Correction {
            k_dev: d.k_dev.value,
            k_cloud: worker.as_ref().map_or(1.0, |w| w.k_cloud.value),
        };
        let p = row.predict(&c);
        let (mut predicted, mut observed) = (p.head_s + p.pack_s, frame.device_s);
        if frame.device_tail_s > 0.0 {
            predicted += tables.device_tail_s(&row, &c);
            observed += frame.device_tail_s;
        }
        let mut drifted = d.k_dev.observe(predicted, observed);
        if let (Some(w), Some(cloud), true) = (worker, frame.cloud, p.cloud_s > 0.0) {
            drifted |= w.k_cloud.observe(p.cloud_s, cloud.service_s);
            drifted |= w.queue.observe(cloud.queue_s);
            // Its seconds per frame: the profile's under the worker's factor.
            w.service_s = p.cloud_s / c.correction.k_cloud * w.k_cloud.value;
        }
        if drifted {
            Reaction::gated(&mut self.gate, now_s)
        } else {
            Reaction::None
        }
    }

    /// A worker's load: `queued` frames admitted (running or waiting). The wait a frame
    /// would see now folds into its queue wait (so a queue that drained is seen even when
    /// no frame goes there).
    pub fn observe_worker_load(&mut self, name: &str, now_s: f64, queued: u32) -> Reaction {
        let Some(w) = self.workers.get_mut(name) else {
            return Reaction::None;
        };
        if w.queue.observe(expected_wait(queued, w.slots, w.service_s)) {
            Reaction::gated(&mut self.gate, now_s)
        } else {
            Reaction::None
        }
    }

    /// A device's correction factors and queue wait as it is planned with.
    pub fn feedback(&self, id: &str) -> Option<Feedback> {
        let d = self.devices.get(id)?;
        let (k_cloud, queue_s) = self.cloud_view(d);
        Some(Feedback {
            k_dev: d.k_dev.value,
            k_cloud,
            queue_s,
        })
    }

    /// A worker's correction: its `k_cloud` and the queue wait planned with, seconds.
    pub fn worker_feedback(&self, name: &str) -> Option<(f64, f64)> {
        let w = self.workers.get(name)?;
        Some((w.k_cloud.value, w.queue.value_s))
    }

    /// The cloud a device is planned against: its worker's `k_cloud` and queue wait, or
    /// the pool's (weighted by slots) when it has none.
    fn cloud_view(&self, d: &Device) -> (f64, f64) {
        if let Some(w) = d
            .plan
            .as_ref()
            .and_then(|p| p.worker.as_deref())
            .and_then(|w| self.workers.get(w))
        {
            return (w.k_cloud.value, w.queue.value_s);
        }
        let slots: f64 = self.workers.values().map(|w| f64::from(w.slots)).sum();
        if slots <= 0.0 {
            return (1.0, 0.0);
        }
        let mean = |f: fn(&Worker) -> f64| {
            self.workers
                .values()
                .map(|w| f64::from(w.slots) * f(w))
                .sum::<f64>()
                / slots
        };
        (mean(|w| w.k_cloud.value), mean(|w| w.queue.value_s))
    }

    /// The links to probe at `now_s`, with the probe's bytes (each is then not asked
    /// again for the rule's idle time).
    pub fn probes(&mut self, now_s: f64) -> Vec<(String, u32)> {
        self.devices
            .iter_mut()
            .filter_map(|(id, d)| Some((id.clone(), d.link.probe_due(now_s, &PROBE)?)))
            .collect()
    }

    /// Whether a deferred re-plan (a [`Reaction::At`]) is still to run.
    pub fn replan_due(&self) -> bool {
        self.gate.due()
    }

    /// Plans the fleet at `now_s`: the devices whose plans changed, and the links to
    /// probe.
    pub fn replan(&mut self, tables: &Tables, now_s: f64) -> Replanned {
        self.gate.ran(now_s);
        // Kept, once planned with, for the frames' corrections (`observe_frame`).
        let batched = self.batched_tables(tables);
        let tables = batched.as_ref().unwrap_or(tables);
        let names: Vec<String> = self.workers.keys().cloned().collect();
        let workers: Vec<WorkerView> = self
            .workers
            .iter()
            .map(|(name, w)| WorkerView {
                name,
                slots: w.slots,
            })
            .collect();
        let views: Vec<DeviceView> = self
            .devices
            .iter()
            .map(|(id, d)| {
                let (k_cloud, queue_s) = self.cloud_view(d);
                (id, d, k_cloud, queue_s)
            })
            .map(|(id, d, k_cloud, cloud_queue_s)| DeviceView {
                id,
                slowdown: d.spec.slowdown,
                link: d.link.link(),
                correction: Correction {
                    k_dev: d.k_dev.value,
                    k_cloud,
                },
                cloud_queue_s,
                in_flight: d.spec.in_flight,
                slo: &d.spec.slo,
                policy: d.spec.policy,
                current: d.plan.as_ref().map(|p| {
                    let w = p
                        .worker
                        .as_deref()
                        .and_then(|w| names.iter().position(|n| n == w));
                    (p.candidate, w)
                }),
                budget_fps: d.plan.as_ref().map_or(f64::INFINITY, |p| p.rate_fps),
            })
            .collect();
        let s = step(
            tables,
            &mut self.planner,
            self.sharing,
            self.cloud_slowdown,
            &views,
            &workers,
            !self.membership_changed,
        );
        // Each plan in force under today's conditions: kept while it dwells.
        let slots = device_slots(&workers);
        let feedbacks: Vec<Feedback> = views
            .iter()
            .map(|v| Feedback {
                k_dev: v.correction.k_dev,
                k_cloud: v.correction.k_cloud,
                queue_s: v.cloud_queue_s,
            })
            .collect();
        let today: Vec<Option<(Prediction, bool, Expected)>> = views
            .iter()
            .map(|v| {
                let (c, _) = v.current?;
                let cond = v.conditions(self.cloud_slowdown, slots);
                let p = tables.row(&c)?.predict(&cond);
                let allowed = v.slo.constraints.allows(&p);
                Some((p, allowed, Expected::of(tables, &cond, &p, v.budget_fps)))
            })
            .collect();
        let conds: Vec<Conditions> = views
            .iter()
            .map(|v| v.conditions(self.cloud_slowdown, slots))
            .collect();
        drop(views);
        let membership_changed = std::mem::take(&mut self.membership_changed);
        // The plans are made with today's factors: drift is measured from here.
        for d in self.devices.values_mut() {
            d.k_dev.planned();
        }
        for w in self.workers.values_mut() {
            w.k_cloud.planned();
            w.queue.planned();
        }
        let mut out = Replanned::default();
        let planned = self
            .devices
            .iter_mut()
            .zip(s.devices)
            .zip(today)
            .zip(feedbacks);
        for ((((id, d), a), today), feedback) in planned {
            let worker = a.worker.map(|w| names[w].clone());
            if let Some(p) = d.plan.as_mut().filter(|p| {
                p.candidate == a.candidate
                    && p.worker == worker
                    && !rate_moved(p.rate_fps, a.rate_fps, a.prediction.throughput)
            }) {
                // The same plan: its prediction under today's conditions, the rate
                // as it was sent.
                p.prediction = a.prediction;
                p.feasible = a.feasible;
                p.expected = a.expected;
                p.feedback = feedback;
                continue;
            }
            // A plan still dwelling is kept while it holds.
            if let (Some(p), Some((prediction, true, expected))) = (d.plan.as_mut(), today) {
                let worker_there = p.worker.as_ref().is_none_or(|w| names.contains(w));
                let close = a.expected.fps <= DWELL_GAIN * expected.fps;
                if !membership_changed
                    && worker_there
                    && d.planned_measured
                    && close
                    && now_s - d.since_s < DWELL_S
                {
                    p.prediction = prediction;
                    p.expected = expected;
                    p.feedback = feedback;
                    continue;
                }
            }
            d.since_s = now_s;
            d.planned_measured = d.link.measured();
            let plan = Plan {
                candidate: a.candidate,
                worker,
                prediction: a.prediction,
                feasible: a.feasible,
                rate_fps: a.rate_fps,
                expected: a.expected,
                feedback,
                epoch: d.plan.as_ref().map_or(1, |p| p.epoch + 1),
            };
            d.plan = Some(plan.clone());
            out.changed.push((id.clone(), plan));
        }
        self.expect_shares(tables, &conds, &mut out);
        let sent: std::collections::BTreeSet<&str> =
            out.changed.iter().map(|(id, _)| id.as_str()).collect();
        for (id, d) in &mut self.devices {
            let Some(p) = &d.plan else { continue };
            let now = (p.expected.fps, p.feedback.k_dev);
            let moved = |told: f64, now: f64| (now - told).abs() > REFRESH * told.abs();
            if sent.contains(id.as_str()) {
                d.told = now;
            } else if moved(d.told.0, now.0) || moved(d.told.1, now.1) {
                out.refreshed.push((id.clone(), p.clone()));
                d.told = now;
            }
        }
        let slots: f64 = self.workers.values().map(|w| f64::from(w.slots)).sum();
        let load: f64 = self
            .devices
            .values()
            .filter_map(|d| d.plan.as_ref())
            .map(Plan::cloud_load)
            .sum();
        self.utilisation = if slots > 0.0 { load / slots } else { 0.0 };
        self.batched = batched;
        out.probes = self.probes(now_s);
        out
    }

    /// The tables at the batch each split's frames expect, when the pool batches: the
    /// frames the plans in force onload at each split, spread over the workers.
    fn batched_tables(&self, tables: &Tables) -> Option<Tables> {
        let pool = Batching::common(self.workers.values().map(|w| &w.batching));
        if !pool.is_on() {
            return None;
        }
        let workers = self.workers.len().max(1) as f64;
        let mut arrivals = vec![0.0; tables.blocks];
        for p in self.devices.values().filter_map(|d| d.plan.as_ref()) {
            if let (Some(_), Some(a)) = (&p.worker, arrivals.get_mut(p.candidate.split as usize)) {
                *a += p.rate_fps.min(p.prediction.throughput) / workers;
            }
        }
        Some(tables.batched(&pool, &arrivals))
    }

    /// What each device is expected to make, with its share of its worker: plans made
    /// each alone (per-device planning) can offer a worker more than its slots serve,
    /// and then each gets that worker's slots over its load ([`Expected::shared`]).
    /// `conds`: each device's conditions, in the devices' order.
    fn expect_shares(&mut self, tables: &Tables, conds: &[Conditions], out: &mut Replanned) {
        let mut load: BTreeMap<&str, f64> = BTreeMap::new();
        for p in self.devices.values().filter_map(|d| d.plan.as_ref()) {
            if let Some(w) = p.worker.as_deref() {
                *load.entry(w).or_default() += p.cloud_load();
            }
        }
        let shares: BTreeMap<String, f64> = load
            .into_iter()
            .filter_map(|(w, load)| {
                let slots = f64::from(self.workers.get(w)?.slots);
                Some((w.to_string(), (slots / load).min(1.0)))
            })
            .collect();
        for ((id, d), cond) in self.devices.iter_mut().zip(conds) {
            let Some(p) = d.plan.as_mut() else { continue };
            let share = p
                .worker
                .as_deref()
                .and_then(|w| shares.get(w))
                .copied()
                .unwrap_or(1.0);
            if share < 1.0 {
                p.expected = Expected::shared(tables, cond, &p.prediction, p.rate_fps, share);
                if let Some((_, sent)) = out.changed.iter_mut().find(|(c, _)| c == id) {
                    sent.expected = p.expected;
                }
            }
        }
    }

    /// The plan in force for a device.
    pub fn plan(&self, id: &str) -> Option<&Plan> {
        self.devices.get(id)?.plan.as_ref()
    }

    /// The link a device is planned with.
    pub fn link(&self, id: &str) -> Option<Link> {
        Some(self.devices.get(id)?.link.link())
    }

    /// The planned cloud load over the pool's slots, at the last re-plan.
    pub fn utilisation(&self) -> f64 {
        self.utilisation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planning_names_round_trip() {
        for p in Policy::ALL
            .map(Planning::PerDevice)
            .into_iter()
            .chain([Planning::Fleet])
        {
            assert_eq!(p.name().parse::<Planning>().unwrap(), p);
        }
        let e = "dyno-fleat".parse::<Planning>().unwrap_err();
        assert!(e.contains("dyno-fleet"), "{e}");
    }

    #[test]
    fn the_gate_defers_and_coalesces() {
        let mut g = ReplanGate::new(0.1);
        assert_eq!(Reaction::gated(&mut g, 0.0), Reaction::Now);
        g.ran(0.0);
        assert_eq!(Reaction::gated(&mut g, 0.05), Reaction::At(0.1));
        assert_eq!(Reaction::gated(&mut g, 0.06), Reaction::None);
        assert!(g.due());
        g.ran(0.1);
        assert!(!g.due());
        assert_eq!(Reaction::gated(&mut g, 0.3), Reaction::Now);
    }

    /// Under a CPU quota a short stage (here a split-0 frame's packing, as a JPEG's
    /// encoding) runs faster than the quota's average, and a whole tail the device ran
    /// after a busy answer runs at it. Both are device time; the tail, long, holds the
    /// correction near the truth, where the short stages alone pull it to 0.4.
    #[test]
    fn a_tail_the_device_ran_after_a_busy_answer_folds_into_its_correction() {
        let tables = crate::sched::tests::toy();
        let row = *tables
            .rows
            .iter()
            .find(|r| r.candidate.split == 0 && r.pack_s > 0.0)
            .unwrap();
        let slowdown = 10.0;
        let tail_s = slowdown * (tables.device_only().head_s - row.head_s);
        let k_dev = |every: Option<usize>| {
            let mut c = alone(slowdown, 20.0);
            c.replan(&tables, 0.0);
            for n in 0..40 {
                let fallback = every.is_some_and(|e| n % e == e - 1);
                let sample = FrameSample {
                    candidate: row.candidate,
                    device_s: 0.4 * slowdown * row.pack_s,
                    device_tail_s: if fallback { tail_s } else { 0.0 },
                    cloud: None,
                };
                c.observe_frame(&tables, "d", 0.1 * n as f64, &sample);
            }
            c.feedback("d").unwrap().k_dev
        };
        let short_only = k_dev(None);
        assert!((short_only - 0.4).abs() < 0.02, "{short_only}");
        let with_tails = k_dev(Some(4));
        assert!(with_tails > 0.9 && with_tails <= 1.0, "{with_tails}");
    }

    /// A device's planned share of the pool: its cloud seconds per second over the slots.
    fn share(c: &Control, id: &str, slots: f64) -> f64 {
        c.plan(id).map_or(0.0, |p| p.cloud_load() / slots)
    }

    /// A device alone on a roomy pool, its link measured at `mbps`.
    fn alone(slowdown: f64, mbps: f64) -> Control {
        let mut c = Control::new(Sharing::PerDevice, 1.0, 0.0);
        c.join_worker("w", 4, Batching::off());
        let spec = DeviceSpec {
            slowdown,
            slo: Slo::default(),
            policy: Policy::Dyno,
            in_flight: 2,
        };
        c.join_device("d", spec, 0.0);
        c.observe_rtt("d", 0.0, 0.01);
        c.observe_transfer("d", 0.0, 1_000_000, 0.01 + 8e6 / (mbps * 1e6));
        c
    }

    /// A bandwidth at which a device of slowdown `a` and one of `b` get different plans.
    fn where_plans_differ(a: f64, b: f64) -> f64 {
        let tables = crate::sched::tests::toy();
        [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
            .into_iter()
            .find(|&m| {
                let plan = |s| {
                    let mut c = alone(s, m);
                    c.replan(&tables, 0.0);
                    c.plan("d").unwrap().candidate
                };
                plan(a) != plan(b)
            })
            .expect("the toy tables plan slow and fast devices apart somewhere")
    }

    #[test]
    fn a_device_slower_than_its_class_is_found_and_its_plan_moves() {
        let tables = crate::sched::tests::toy();
        // It says slowdown 2; it runs at 4.
        let mbps = where_plans_differ(2.0, 4.0);
        let mut truth = alone(4.0, mbps);
        truth.replan(&tables, 0.0);
        let right = truth.plan("d").unwrap().candidate;
        let mut c = alone(2.0, mbps);
        c.replan(&tables, 0.0);
        let first = c.plan("d").unwrap().candidate;
        assert_ne!(first, right);
        let (mut t, mut asked) = (0.0, None);
        for n in 0..60 {
            t += 0.1;
            let p = c.plan("d").unwrap().clone();
            let sample = FrameSample {
                candidate: p.candidate,
                // Twice what its class predicts: the device is twice as slow.
                device_s: 2.0 * (p.prediction.head_s + p.prediction.pack_s) / p.feedback.k_dev,
                device_tail_s: 0.0,
                cloud: None,
            };
            if c.observe_frame(&tables, "d", t, &sample) != Reaction::None {
                asked.get_or_insert(n + 1);
                c.replan(&tables, t);
            }
            // The coordinator's periodic re-plan, every second.
            if n % 10 == 9 {
                c.replan(&tables, t);
            }
        }
        let k = c.feedback("d").unwrap().k_dev;
        assert!((k - 2.0).abs() < 0.05, "k_dev {k}");
        assert!(
            asked.is_some_and(|n| n <= feedback::FACTOR_WINDOW / 3),
            "asked after {asked:?} frames"
        );
        assert_eq!(
            c.plan("d").unwrap().candidate,
            right,
            "the plan did not move"
        );
    }

    /// A device planned at `from` Mbit/s at t = 10 s whose link is then measured at `to`.
    fn moved(from: f64, to: f64) -> (Control, Plan) {
        let tables = crate::sched::tests::toy();
        let mut c = alone(2.0, from);
        c.replan(&tables, 10.0);
        let first = c.plan("d").unwrap().clone();
        for t in [10.5, 10.6, 10.7] {
            c.observe_transfer("d", t, 1_000_000, 0.01 + 8e6 / (to * 1e6));
        }
        (c, first)
    }

    /// What the plan a device would get at `to` makes, over what `held` makes there.
    fn gain(held: &Plan, to: f64) -> f64 {
        let tables = crate::sched::tests::toy();
        let mut fresh = alone(2.0, to);
        fresh.replan(&tables, 0.0);
        let mut c = Conditions::new(2.0, Link::mbps(to, 10.0));
        c.cloud_slots = 4.0;
        c.in_flight = 2.0;
        let kept = tables.row(&held.candidate).unwrap().predict(&c).throughput;
        fresh.plan("d").unwrap().expected.fps / kept
    }

    #[test]
    fn a_plan_dwells_while_it_holds_then_follows_the_link() {
        let tables = crate::sched::tests::toy();
        let rates = [2.0, 5.0, 10.0, 20.0, 50.0, 100.0];
        // A move to a plan that is better, but by less than DWELL_GAIN.
        let (from, to) = rates
            .iter()
            .flat_map(|&a| rates.iter().map(move |&b| (a, b)))
            .find(|&(a, b)| {
                let (mut c, first) = moved(a, b);
                let g = gain(&first, b);
                g > 1.0 && g < DWELL_GAIN && {
                    c.replan(&tables, 10.0 + DWELL_S + 0.1);
                    c.plan("d").unwrap().candidate != first.candidate
                }
            })
            .expect("the toy tables have a close move");
        let (mut c, first) = moved(from, to);
        // Within the dwell the plan holds (it still meets the SLO)...
        assert!(
            c.replan(&tables, 11.0).changed.is_empty(),
            "{from} -> {to} Mbit/s"
        );
        assert_eq!(c.plan("d").unwrap().epoch, first.epoch);
        // ... and once it has dwelt, it follows.
        let moved_on = c.replan(&tables, 10.0 + DWELL_S + 0.1).changed;
        assert_eq!(moved_on.len(), 1, "{moved_on:?}");
        assert_ne!(moved_on[0].1.candidate, first.candidate);
        // A move that gains more than DWELL_GAIN does not wait.
        let (mut c, first) = moved(1.0, 100.0);
        assert!(gain(&first, 100.0) > DWELL_GAIN);
        let at_once = c.replan(&tables, 11.0).changed;
        assert_eq!(at_once.len(), 1, "{at_once:?}");
    }

    #[test]
    fn a_rate_is_sent_again_when_it_moved_by_more_than_ten_percent() {
        let inf = f64::INFINITY;
        assert!(!rate_moved(10.0, 10.9, 30.0));
        assert!(rate_moved(10.0, 11.1, 30.0));
        assert!(rate_moved(10.0, 8.9, 30.0));
        assert!(!rate_moved(inf, inf, 30.0));
        assert!(rate_moved(inf, 10.0, 30.0));
        assert!(rate_moved(10.0, inf, 30.0));
        // As what the device may onload: no budget and one just under what it makes
        // are the same; one well under it is not.
        assert!(!rate_moved(inf, 17.0, 18.0));
        assert!(!rate_moved(17.0, inf, 18.0));
        assert!(rate_moved(inf, 15.0, 18.0));
    }

    /// Devices `ids` (slowdown 2, two frames in flight, DynO), device `i` on a link of
    /// `mbps(i)`, sharing one worker of one slot as `sharing`; planned once at 1 s.
    fn one_slot(
        tables: &Tables,
        sharing: Sharing,
        ids: &[&str],
        mbps: impl Fn(usize) -> f64,
    ) -> Control {
        let mut c = Control::new(sharing, 1.0, 0.0);
        c.join_worker("w", 1, Batching::off());
        for (i, id) in ids.iter().enumerate() {
            let spec = DeviceSpec {
                slowdown: 2.0,
                slo: Slo::default(),
                policy: Policy::Dyno,
                in_flight: 2,
            };
            c.join_device(id, spec, 0.0);
            c.observe_rtt(id, 0.0, 0.01);
            c.observe_transfer(id, 0.0, 1_000_000, 0.01 + 8e6 / (mbps(i) * 1e6));
        }
        c.replan(tables, 1.0);
        c
    }

    #[test]
    fn a_leaving_device_hands_its_share_to_the_others_and_utilisation_is_what_is_planned() {
        let tables = crate::sched::tests::toy();
        let ids = ["a", "b", "c", "d", "e", "f", "g", "h"];
        // A scarce pool: one slot against eight devices.
        let mut c = one_slot(&tables, Sharing::FleetAware, &ids, |i| {
            20.0 + 10.0 * i as f64
        });
        let planned = |c: &Control| ids.iter().map(|id| share(c, id, 1.0)).sum::<f64>();
        assert!(c.utilisation() > 0.9, "{}", c.utilisation());
        assert!((c.utilisation() - planned(&c)).abs() < 1e-9);
        let victim = *ids
            .iter()
            .max_by(|a, b| share(&c, a, 1.0).total_cmp(&share(&c, b, 1.0)))
            .unwrap();
        let (victim_share, others_before) =
            (share(&c, victim, 1.0), planned(&c) - share(&c, victim, 1.0));
        assert!(victim_share > 0.1, "{victim_share}");
        assert_eq!(c.leave_device(victim), Reaction::Now);
        c.replan(&tables, 2.0);
        let others_after = planned(&c);
        assert!(
            others_after >= others_before + 0.5 * victim_share,
            "{others_before:.3} -> {others_after:.3} (victim {victim_share:.3})"
        );
        assert!(
            (c.utilisation() - planned(&c)).abs() < 1e-9,
            "{} against {}",
            c.utilisation(),
            planned(&c)
        );
        // With the membership unchanged, the next re-plan keeps every plan.
        let again = c.replan(&tables, 3.0).changed;
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn devices_planned_alone_on_one_slot_expect_their_share_of_it() {
        let tables = crate::sched::tests::toy();
        let ids = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let expected = |sharing: Sharing| {
            let c = one_slot(&tables, sharing, &ids, |_| 50.0);
            let offered: f64 = ids.iter().map(|id| c.plan(id).unwrap().cloud_load()).sum();
            let made: f64 = ids
                .iter()
                .map(|id| {
                    let p = c.plan(id).unwrap();
                    // The onloaded part of what it is expected to make.
                    p.expected.fps.min(p.rate_fps) * p.prediction.cloud_s
                })
                .sum();
            (offered, made)
        };
        // Eight devices planned each alone offer the one slot several times what it
        // serves: each is expected to have its share of its frames served (the slot
        // full, no more) and to finish the rest itself, so it expects more than that
        // share and less than its plan alone.
        let c = one_slot(&tables, Sharing::PerDevice, &ids, |_| 50.0);
        let offered: f64 = ids.iter().map(|id| c.plan(id).unwrap().cloud_load()).sum();
        assert!(offered > 2.0, "offered {offered}");
        let mut served_load = 0.0;
        for id in ids {
            let p = c.plan(id).unwrap();
            let served = p.rate_fps.min(p.prediction.throughput) / offered;
            served_load += served * p.prediction.cloud_s;
            assert!(
                served < p.expected.fps && p.expected.fps < p.prediction.throughput,
                "{id}: {served} served, {} expected, {} alone",
                p.expected.fps,
                p.prediction.throughput
            );
        }
        assert!(
            (served_load - 1.0).abs() < 1e-6,
            "{served_load} of one slot"
        );
        // Fleet-aware plans fit the slot already: their expectation is unchanged.
        let (offered, made) = expected(Sharing::FleetAware);
        assert!(offered <= 1.0 + 1e-9, "offered {offered}");
        assert!((made - offered).abs() < 1e-9, "{made} against {offered}");
    }

    /// Devices planned each alone on one slot: when more join, the first ones' plans
    /// are kept but their share of the slot falls, and they are told (sent again, the
    /// same epoch); with nothing moving, nothing is sent.
    #[test]
    fn a_kept_plan_whose_expectation_moved_is_sent_again_with_the_same_epoch() {
        let tables = crate::sched::tests::toy();
        let mut c = one_slot(&tables, Sharing::PerDevice, &["a"], |_| 50.0);
        let alone = c.plan("a").unwrap().clone();
        for (i, id) in ["b", "c", "d", "e", "f"].iter().enumerate() {
            let spec = c.devices["a"].spec.clone();
            c.join_device(id, spec, 1.0 + i as f64);
            c.observe_rtt(id, 1.0, 0.01);
            c.observe_transfer(id, 1.0, 1_000_000, 0.01 + 8e6 / 50e6);
        }
        let r = c.replan(&tables, 2.0);
        let (_, told) = r
            .refreshed
            .iter()
            .find(|(id, _)| id == "a")
            .expect("a's plan is sent again");
        assert_eq!(told.epoch, alone.epoch, "the same plan");
        assert_eq!(told.candidate, alone.candidate);
        assert!(
            told.expected.fps < (1.0 - REFRESH) * alone.expected.fps,
            "{} expected now, {} alone",
            told.expected.fps,
            alone.expected.fps
        );
        assert!(!r.changed.iter().any(|(id, _)| id == "a"));
        let again = c.replan(&tables, 3.0);
        assert!(again.refreshed.is_empty(), "{:?}", again.refreshed);
    }
}
