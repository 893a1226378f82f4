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
//!   is shared, per-device hysteresis (`Scheduler::decide` with the plan in force) when
//!   everyone fits, then workers filled greedily by cloud load (a device stays with its
//!   worker while it is there); a plan that onloads with no worker runs device-only.
//! - [`LinkState`]: one device's link as the planner sees it: the estimator, the
//!   [`STARTING_LINK`] before anything was measured, and the re-plan rule (an estimate
//!   that moved by more than 10 %, or its RTT by more than 20 %).
//! - [`ProbeRule`]: a link with no transfer for [`ProbeRule::idle_s`] is probed with
//!   [`ProbeRule::bytes`]; the coordinator asks the agent, the simulator sends them.
//! - [`ReplanGate`]: joins and link changes re-plan at most every `gap_s`.
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::bandwidth::Estimator;
use super::fleet::{self, FleetDevice, Status};
use super::perf::{Candidate, Conditions, Correction, Link, Prediction, Tables};
use super::slo::Slo;
use super::{Policy, Scheduler};

/// The link assumed for a device before anything was measured.
pub const STARTING_LINK: Link = Link {
    bandwidth_bps: 10e6,
    rtt_s: 0.02,
};

/// Joins and link changes re-plan at most this often (the coordinator's default
/// `replan_gap_ms`).
pub const REPLAN_GAP_S: f64 = 0.1;

/// The name of a coordinator's embedded worker pool (and of the simulator's pool).
pub const EMBEDDED_WORKER: &str = "embedded";

/// When links are probed: the agents' heartbeat period, the time without a measured
/// rate after which a link is probed, and the probe's size: enough bytes to last
/// `rtts` round trips at the rate the link is believed to have (a transfer that is
/// mostly RTT says nothing of the rate), within `min_bytes..=max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeRule {
    pub beat_s: f64,
    pub idle_s: f64,
    pub rtts: f64,
    pub min_bytes: u32,
    pub max_bytes: u32,
}

/// The rule the fleet runs by.
pub const PROBE: ProbeRule = ProbeRule {
    beat_s: 0.5,
    idle_s: 2.0,
    rtts: 2.0,
    min_bytes: 32 << 10,
    max_bytes: 1 << 20,
};

impl ProbeRule {
    /// The probe's size for a link believed to be `link`.
    pub fn bytes(&self, link: Link) -> u32 {
        let want = self.rtts * link.bandwidth_bps * link.rtt_s.max(0.001) / 8.0;
        want.clamp(f64::from(self.min_bytes), f64::from(self.max_bytes)) as u32
    }
}

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

/// One device's link as the planner sees it.
#[derive(Debug, Clone, Default)]
pub struct LinkState {
    estimator: Estimator,
    /// The estimate the last plan used (`None`: nothing measured yet).
    planned: Option<Link>,
    /// When a probe was last asked for, and its size.
    probed: Option<(f64, u32)>,
}

impl LinkState {
    /// The link to plan with.
    pub fn link(&self) -> Link {
        self.planned.unwrap_or(STARTING_LINK)
    }

    /// Whether anything was measured yet.
    pub fn measured(&self) -> bool {
        self.planned.is_some()
    }

    /// A transfer of `bytes` in `seconds` (one RTT included); true when the estimate
    /// moved enough to re-plan for.
    pub fn observe_transfer(&mut self, now_s: f64, bytes: u64, seconds: f64) -> bool {
        self.estimator.observe_transfer(now_s, bytes, seconds);
        self.update()
    }

    /// A round trip; true when the estimate moved enough to re-plan for.
    pub fn observe_rtt(&mut self, now_s: f64, rtt_s: f64) -> bool {
        self.estimator.observe_rtt(now_s, rtt_s);
        self.update()
    }

    fn update(&mut self) -> bool {
        let Some(mut link) = self.estimator.link() else {
            return false;
        };
        if self.estimator.rtt_s().is_none() {
            link.rtt_s = STARTING_LINK.rtt_s;
        }
        if moved(self.planned, link) {
            self.planned = Some(link);
            true
        } else {
            false
        }
    }

    /// The probe to send now, in bytes (and, if any, that it was asked for): when no
    /// rate was measured for the rule's idle time, nor a probe asked for within it. A
    /// probe that measured no rate (it was mostly RTT, or lost) is followed by one twice
    /// its size; a rate far above the estimate is confirmed by a probe at the next beat.
    pub fn probe_due(&mut self, now_s: f64, rule: &ProbeRule) -> Option<u32> {
        // A rate far above the estimate is confirmed at the next beat, not in idle_s.
        if self.estimator.unconfirmed() {
            if self
                .probed
                .is_some_and(|(t, _)| now_s - t < 0.5 * rule.beat_s)
            {
                return None;
            }
            let bytes = rule.bytes(self.link());
            self.probed = Some((now_s, bytes));
            return Some(bytes);
        }
        if !self.estimator.needs_probe(now_s) {
            return None;
        }
        let bytes = match self.probed {
            Some((t, _)) if now_s - t < rule.idle_s => return None,
            // Asked before, and no rate since.
            Some((t, b)) if self.estimator.needs_probe(t + rule.idle_s) => {
                b.saturating_mul(2).min(rule.max_bytes)
            }
            _ => rule.bytes(self.link()),
        };
        self.probed = Some((now_s, bytes));
        Some(bytes)
    }
}

/// An estimate moved enough to re-plan for.
fn moved(old: Option<Link>, new: Link) -> bool {
    match old {
        None => true,
        Some(o) => {
            (new.bandwidth_bps / o.bandwidth_bps - 1.0).abs() > 0.1
                || (new.rtt_s - o.rtt_s).abs() > 0.2 * o.rtt_s.max(0.005)
        }
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

/// A device's view for the control step.
#[derive(Debug, Clone)]
pub struct DeviceView<'a> {
    pub id: &'a str,
    pub slowdown: f64,
    pub link: Link,
    pub correction: Correction,
    pub slo: &'a Slo,
    pub policy: Policy,
    /// The plan in force: its candidate, and its worker's index in the pool (`None`:
    /// device-only, or its worker is gone).
    pub current: Option<(Candidate, Option<usize>)>,
}

/// A worker's view for the control step.
#[derive(Debug, Clone, Copy)]
pub struct WorkerView<'a> {
    pub name: &'a str,
    pub slots: u32,
}

/// One device's assignment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Assigned {
    pub candidate: Candidate,
    /// Index of its worker in the pool; `None`: device-only.
    pub worker: Option<usize>,
    pub prediction: Prediction,
    /// Whether it meets the device's SLO.
    pub feasible: bool,
    /// The onload rate the plan allows, frames per second (infinite when the device
    /// does not onload).
    pub rate_fps: f64,
}

/// The step's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Every device's assignment, in the order given; `None` when the fleet keeps its
    /// current plans (fleet-level hysteresis).
    pub devices: Option<Vec<Assigned>>,
    /// Planned cloud load over the pool's slots.
    pub utilisation: f64,
}

/// The control step: every device's assignment against the pool.
pub fn step(
    tables: &Tables,
    planner: &mut Scheduler,
    sharing: Sharing,
    cloud_slowdown: f64,
    devices: &[DeviceView],
    workers: &[WorkerView],
) -> Step {
    if devices.is_empty() {
        return Step {
            devices: Some(Vec::new()),
            utilisation: 0.0,
        };
    }
    let slots_total: f64 = workers.iter().map(|w| f64::from(w.slots)).sum();
    // A device gets one worker; its slots serve the device's frames at once.
    let slots = workers
        .iter()
        .map(|w| f64::from(w.slots))
        .fold(1.0, f64::max);
    let fleet_devices: Vec<FleetDevice> = devices
        .iter()
        .map(|d| {
            let mut c = Conditions::new(d.slowdown, d.link);
            c.cloud_slowdown = cloud_slowdown;
            c.correction = d.correction;
            c.cloud_slots = slots;
            FleetDevice {
                id: d.id.to_string(),
                conditions: c,
                slo: d.slo.clone(),
                policy: d.policy,
                demand_fps: None,
            }
        })
        .collect();
    let capacity = match sharing {
        Sharing::FleetAware => slots_total,
        Sharing::PerDevice => f64::INFINITY,
    };
    let plan = fleet::plan(tables, &fleet_devices, capacity);
    let utilisation = if slots_total > 0.0 {
        plan.load / slots_total
    } else {
        0.0
    };
    // Keep the fleet's plans while they hold, as long as every device's worker is
    // still there.
    let current: Vec<Option<Candidate>> = devices
        .iter()
        .map(|d| {
            let (c, w) = d.current?;
            let onloads = (c.split as usize) < tables.blocks;
            (!onloads || w.is_some()).then_some(c)
        })
        .collect();
    if fleet::keep_current(tables, &fleet_devices, &current, capacity, &plan) {
        return Step {
            devices: None,
            utilisation,
        };
    }
    // Workers by spare slots, filled greedily by each device's cloud load.
    let mut load = vec![0.0f64; workers.len()];
    let mut order: Vec<usize> = (0..devices.len()).collect();
    order.sort_by(|&a, &b| {
        plan.devices[b]
            .cloud_load
            .total_cmp(&plan.devices[a].cloud_load)
    });
    let mut out: Vec<Option<Assigned>> = vec![None; devices.len()];
    for i in order {
        let p = &plan.devices[i];
        let d = &devices[i];
        let mut candidate = p.candidate;
        let mut prediction = p.prediction;
        let mut rate_fps = p.rate_fps;
        // With room for everyone, hysteresis: keep a plan that is still good enough.
        if plan.strategy == fleet::Strategy::Individual {
            if let Some((cur, _)) = d.current {
                let dec = planner.decide(
                    tables,
                    &fleet_devices[i].conditions,
                    d.slo,
                    d.policy,
                    Some(cur),
                );
                candidate = dec.candidate;
                prediction = dec.prediction;
                rate_fps = prediction.throughput;
            }
        }
        let onloads = (candidate.split as usize) < tables.blocks;
        let worker = if onloads && !workers.is_empty() {
            // Stay with the current worker if it is still there.
            let w = d.current.and_then(|c| c.1).unwrap_or_else(|| {
                (0..workers.len())
                    .min_by(|&a, &b| {
                        let la = load[a] / f64::from(workers[a].slots.max(1));
                        let lb = load[b] / f64::from(workers[b].slots.max(1));
                        la.total_cmp(&lb).then(workers[a].name.cmp(workers[b].name))
                    })
                    .expect("workers is not empty")
            });
            load[w] += p.cloud_load;
            Some(w)
        } else {
            None
        };
        let feasible = p.status != Status::SloUnmet;
        let (candidate, prediction, rate_fps) = if onloads && worker.is_none() {
            let row = tables.device_only();
            let p = row.predict(&fleet_devices[i].conditions);
            (row.candidate, p, p.throughput)
        } else {
            (candidate, prediction, rate_fps)
        };
        let rate_fps = if (candidate.split as usize) < tables.blocks {
            rate_fps
        } else {
            f64::INFINITY
        };
        out[i] = Some(Assigned {
            candidate,
            worker,
            prediction,
            feasible,
            rate_fps,
        });
    }
    Step {
        devices: Some(
            out.into_iter()
                .map(|a| a.expect("every device was assigned"))
                .collect(),
        ),
        utilisation,
    }
}

/// What a device brings when it joins.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    /// Its class's compute time over the profile's.
    pub slowdown: f64,
    pub slo: Slo,
    pub policy: Policy,
}

/// A device's plan in force.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub candidate: Candidate,
    /// Its worker's name (`None`: device-only).
    pub worker: Option<String>,
    pub prediction: Prediction,
    pub feasible: bool,
    /// The onload rate, frames per second (infinite when it does not onload).
    pub rate_fps: f64,
    /// Increases with every new plan for this device.
    pub epoch: u64,
}

#[derive(Debug, Clone)]
struct Device {
    spec: DeviceSpec,
    link: LinkState,
    correction: Correction,
    plan: Option<Plan>,
}

#[derive(Debug, Clone, Copy)]
struct Worker {
    slots: u32,
}

/// The devices whose plans a re-plan changed, with their new plans (in id order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replanned {
    pub changed: Vec<(String, Plan)>,
    /// Links to probe now, with the probe's bytes.
    pub probes: Vec<(String, u32)>,
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
        }
    }

    pub fn sharing(&self) -> Sharing {
        self.sharing
    }

    /// A device joined (or joined again: its old state is replaced).
    pub fn join_device(&mut self, id: &str, spec: DeviceSpec, now_s: f64) -> Reaction {
        self.devices.insert(
            id.to_string(),
            Device {
                spec,
                link: LinkState::default(),
                correction: Correction::default(),
                plan: None,
            },
        );
        Reaction::gated(&mut self.gate, now_s)
    }

    pub fn leave_device(&mut self, id: &str) -> Reaction {
        match self.devices.remove(id) {
            Some(_) => Reaction::Now,
            None => Reaction::None,
        }
    }

    pub fn join_worker(&mut self, name: &str, slots: u32) -> Reaction {
        self.workers.insert(name.to_string(), Worker { slots });
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
        let Some(d) = self.devices.get_mut(id) else {
            return Reaction::None;
        };
        if d.link.observe_transfer(now_s, bytes, seconds) {
            Reaction::gated(&mut self.gate, now_s)
        } else {
            Reaction::None
        }
    }

    /// A round trip on a device's link.
    pub fn observe_rtt(&mut self, id: &str, now_s: f64, rtt_s: f64) -> Reaction {
        let Some(d) = self.devices.get_mut(id) else {
            return Reaction::None;
        };
        if d.link.observe_rtt(now_s, rtt_s) {
            Reaction::gated(&mut self.gate, now_s)
        } else {
            Reaction::None
        }
    }

    /// A frame the device finished on its plan `candidate`, with its measured device
    /// stage (head and pack) and, when it onloaded, cloud stage (unpack and tail):
    /// folded into the device's correction factors.
    pub fn observe_frame(
        &mut self,
        tables: &Tables,
        id: &str,
        candidate: &Candidate,
        device_s: f64,
        cloud_s: Option<f64>,
    ) {
        let Some(d) = self.devices.get_mut(id) else {
            return;
        };
        let Some(row) = tables.row(candidate) else {
            return;
        };
        let mut c = Conditions::new(d.spec.slowdown, d.link.link());
        c.cloud_slowdown = self.cloud_slowdown;
        c.correction = d.correction;
        let p = row.predict(&c);
        d.correction.observe_device(p.head_s + p.pack_s, device_s);
        if let (true, Some(s)) = (p.cloud_s > 0.0, cloud_s) {
            d.correction.observe_cloud(p.cloud_s, s);
        }
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
        let names: Vec<&str> = self.workers.keys().map(String::as_str).collect();
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
            .map(|(id, d)| DeviceView {
                id,
                slowdown: d.spec.slowdown,
                link: d.link.link(),
                correction: d.correction,
                slo: &d.spec.slo,
                policy: d.spec.policy,
                current: d.plan.as_ref().map(|p| {
                    let w = p
                        .worker
                        .as_deref()
                        .and_then(|w| names.iter().position(|n| *n == w));
                    (p.candidate, w)
                }),
            })
            .collect();
        let s = step(
            tables,
            &mut self.planner,
            self.sharing,
            self.cloud_slowdown,
            &views,
            &workers,
        );
        let worker_names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        drop(views);
        self.utilisation = s.utilisation;
        let mut out = Replanned::default();
        if let Some(assigned) = s.devices {
            for ((id, d), a) in self.devices.iter_mut().zip(assigned) {
                let worker = a.worker.map(|w| worker_names[w].clone());
                let changed = d
                    .plan
                    .as_ref()
                    .is_none_or(|p| p.candidate != a.candidate || p.worker != worker);
                if !changed {
                    continue;
                }
                let plan = Plan {
                    candidate: a.candidate,
                    worker,
                    prediction: a.prediction,
                    feasible: a.feasible,
                    rate_fps: a.rate_fps,
                    epoch: d.plan.as_ref().map_or(1, |p| p.epoch + 1),
                };
                d.plan = Some(plan.clone());
                out.changed.push((id.clone(), plan));
            }
        }
        out.probes = self.probes(now_s);
        out
    }

    /// The plan in force for a device.
    pub fn plan(&self, id: &str) -> Option<&Plan> {
        self.devices.get(id)?.plan.as_ref()
    }

    /// The link a device is planned with.
    pub fn link(&self, id: &str) -> Option<Link> {
        Some(self.devices.get(id)?.link.link())
    }

    pub fn correction(&self, id: &str) -> Option<Correction> {
        Some(self.devices.get(id)?.correction)
    }

    pub fn spec(&self, id: &str) -> Option<&DeviceSpec> {
        Some(&self.devices.get(id)?.spec)
    }

    /// The planned cloud load over the pool's slots, at the last re-plan.
    pub fn utilisation(&self) -> f64 {
        self.utilisation
    }

    /// Device ids, in order.
    pub fn device_ids(&self) -> impl Iterator<Item = &str> {
        self.devices.keys().map(String::as_str)
    }

    /// Workers and their slots, in name order.
    pub fn workers(&self) -> impl Iterator<Item = (&str, u32)> {
        self.workers.iter().map(|(n, w)| (n.as_str(), w.slots))
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

    #[test]
    fn a_link_starts_assumed_moves_by_ten_percent_and_is_probed_when_idle() {
        let mut l = LinkState::default();
        assert_eq!(l.link(), STARTING_LINK);
        // Two round trips at 10 Mbit/s and 20 ms: 50 kB.
        assert_eq!(l.probe_due(0.0, &PROBE), Some(50_000));
        // Asked once: not again within the idle time.
        assert_eq!(l.probe_due(1.0, &PROBE), None);
        assert!(l.observe_transfer(1.0, 1_000_000, 0.8));
        assert!((l.link().bandwidth_bps / 10e6 - 1.0).abs() < 1e-9);
        // 2.5 % (the median of 10 and 10.5) is not a move; a step is followed after
        // three samples.
        assert!(!l.observe_transfer(1.1, 1_000_000, 0.8 / 1.05));
        for t in [1.2, 1.3, 1.4] {
            l.observe_transfer(t, 1_000_000, 1.6);
        }
        assert!((l.link().bandwidth_bps / 5e6 - 1.0).abs() < 1e-9);
        assert_eq!(l.probe_due(3.0, &PROBE), None);
        // At 5 Mbit/s the probe would be smaller than the floor.
        assert_eq!(l.probe_due(3.5, &PROBE), Some(32 << 10));
        // That probe measured nothing: the next one is twice as large.
        assert_eq!(l.probe_due(5.5, &PROBE), Some(64 << 10));
        // The link comes back at 50 Mbit/s: the first fast rate is checked by a probe at
        // the next beat, and the second one is believed.
        assert!(!l.observe_transfer(6.0, 1_000_000, 0.16));
        assert_eq!(l.probe_due(6.0, &PROBE), Some(32 << 10));
        assert_eq!(l.probe_due(6.1, &PROBE), None);
        assert!(l.observe_transfer(6.4, 1_000_000, 0.16));
        assert!((l.link().bandwidth_bps / 50e6 - 1.0).abs() < 1e-9);
        let fast = Link::mbps(1000.0, 40.0);
        assert_eq!(PROBE.bytes(fast), 1 << 20);
    }
}
