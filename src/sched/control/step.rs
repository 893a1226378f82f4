//! The control step itself: pure, every device's assignment against the pool.
use crate::sched::fleet::{self, FleetDevice, Status};
use crate::sched::perf::{Candidate, Conditions, Correction, Link, Prediction, Tables};
use crate::sched::slo::Slo;
use crate::sched::{Policy, Scheduler};
use serde::Serialize;

use super::Sharing;

/// A device's view for the control step.
#[derive(Debug, Clone)]
pub struct DeviceView<'a> {
    pub id: &'a str,
    pub slowdown: f64,
    pub link: Link,
    pub correction: Correction,
    /// The expected wait in its worker's queue, seconds.
    pub cloud_queue_s: f64,
    /// Frames it has out at once.
    pub in_flight: u32,
    pub slo: &'a Slo,
    pub policy: Policy,
    /// The plan in force: its candidate, and its worker's index in the pool (`None`:
    /// device-only, or its worker is gone).
    pub current: Option<(Candidate, Option<usize>)>,
    /// The onload budget of the plan in force (infinite: none).
    pub budget_fps: f64,
}

impl DeviceView<'_> {
    /// The conditions it is planned under, its frames served by `slots` at once.
    pub fn conditions(&self, cloud_slowdown: f64, slots: f64) -> Conditions {
        let mut c = Conditions::new(self.slowdown, self.link);
        c.cloud_slowdown = cloud_slowdown;
        c.correction = self.correction;
        c.cloud_slots = slots;
        c.cloud_queue_s = self.cloud_queue_s;
        c.in_flight = f64::from(self.in_flight.max(1));
        c
    }
}

/// The slots that serve one device's frames at once: a device gets one worker.
pub fn device_slots(workers: &[WorkerView]) -> f64 {
    workers
        .iter()
        .map(|w| f64::from(w.slots))
        .fold(1.0, f64::max)
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
    /// The onload budget the plan sets, frames per second: infinite when the device
    /// may onload as fast as its plan goes (or does not onload), so that a budget
    /// changes, and is sent, only when the pool holds the device back.
    pub rate_fps: f64,
    /// What the device is expected to make on it: see [`Expected`].
    pub expected: Expected,
}

/// What a device is expected to make on a plan with its onload budget, as the agent
/// runs it: the budget's frames onloaded at the plan's latency, and in the device time
/// they leave, frames finished on the device at device-only's.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, serde::Deserialize)]
pub struct Expected {
    /// Inferences per second.
    pub fps: f64,
    /// Mean end-to-end latency, seconds.
    pub latency_s: f64,
}

impl Expected {
    pub fn of(tables: &Tables, c: &Conditions, p: &Prediction, rate_fps: f64) -> Expected {
        if rate_fps >= p.throughput {
            return Expected {
                fps: p.throughput,
                latency_s: p.latency_s,
            };
        }
        let alone = tables.device_only().predict(c);
        let onloaded = rate_fps.max(0.0);
        let busy = onloaded * (p.head_s + p.pack_s);
        let local = (1.0 - busy).max(0.0) * alone.throughput;
        let fps = onloaded + local;
        Expected {
            fps,
            latency_s: if fps > 0.0 {
                (onloaded * p.latency_s + local * alone.latency_s) / fps
            } else {
                alone.latency_s
            },
        }
    }
}

impl Expected {
    /// [`Expected::of`] on a worker offered more than its slots serve: the pool serves
    /// each device `share` of the frames it onloads (a FIFO queue serves them in the
    /// order they come), and answers the rest busy at once (its queue is bounded:
    /// `has_room`), which the device finishes itself, in the device time the served
    /// frames leave, as it does frames over a budget. The onloaded frames' latency is
    /// the plan's: it carries the queue wait the worker reports.
    pub fn shared(
        tables: &Tables,
        c: &Conditions,
        p: &Prediction,
        rate_fps: f64,
        share: f64,
    ) -> Expected {
        if share.is_nan() || share >= 1.0 {
            return Expected::of(tables, c, p, rate_fps);
        }
        Expected::of(tables, c, p, rate_fps.min(p.throughput) * share.max(0.0))
    }
}

/// A budget of `rate` frames per second against a plan that goes at `throughput`:
/// none (infinite) unless it holds the plan back.
fn budget(rate: f64, throughput: f64) -> f64 {
    if rate >= throughput * (1.0 - 1e-9) {
        f64::INFINITY
    } else {
        rate
    }
}

/// The step's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Every device's assignment, in the order given.
    pub devices: Vec<Assigned>,
    /// Whether these are the current plans, kept (fleet-level hysteresis), with their
    /// predictions under today's conditions.
    pub kept: bool,
}

/// A plan's cloud load: the pool's seconds per second it takes, at its predicted rate
/// or its onload budget below it.
pub fn cloud_load(prediction: &Prediction, rate_fps: f64) -> f64 {
    rate_fps.min(prediction.throughput) * prediction.cloud_s
}

/// The control step: every device's assignment against the pool. `keep`: the fleet may
/// keep its current plans while they hold (fleet-level hysteresis); off after the fleet's
/// membership changed, so that a leaving device's share goes to the others.
pub fn step(
    tables: &Tables,
    planner: &mut Scheduler,
    sharing: Sharing,
    cloud_slowdown: f64,
    devices: &[DeviceView],
    workers: &[WorkerView],
    keep: bool,
) -> Step {
    if devices.is_empty() {
        return Step {
            devices: Vec::new(),
            kept: false,
        };
    }
    let slots = device_slots(workers);
    let fleet_devices: Vec<FleetDevice> = devices
        .iter()
        .map(|d| FleetDevice {
            id: d.id.to_string(),
            conditions: d.conditions(cloud_slowdown, slots),
            slo: d.slo.clone(),
            policy: d.policy,
            demand_fps: None,
        })
        .collect();
    let capacity = match sharing {
        Sharing::FleetAware => workers.iter().map(|w| f64::from(w.slots)).sum(),
        Sharing::PerDevice => f64::INFINITY,
    };
    let mut plan = fleet::plan(tables, &fleet_devices, capacity);
    // Keep the fleet's plans while they hold, as long as every device's worker is
    // still there.
    let current: Vec<Option<(Candidate, f64)>> = devices
        .iter()
        .map(|d| {
            let (c, w) = d.current?;
            let onloads = (c.split as usize) < tables.blocks;
            (!onloads || w.is_some()).then_some((c, d.budget_fps))
        })
        .collect();
    if let Some(scale) = keep
        .then(|| fleet::keep_current(tables, &fleet_devices, &current, capacity, &plan))
        .flatten()
    {
        let kept = devices
            .iter()
            .zip(&fleet_devices)
            .map(|(d, f)| {
                let (candidate, worker) = d.current.expect("kept plans are all planned");
                let prediction = tables
                    .row(&candidate)
                    .expect("kept plans are in the tables")
                    .predict(&f.conditions);
                // A kept plan keeps its budget, scaled down when the pool shrank under
                // it (as `keep_current` scaled the rates).
                let rate_fps = match worker {
                    Some(_) => budget(
                        scale * d.budget_fps.min(prediction.throughput),
                        prediction.throughput,
                    ),
                    None => f64::INFINITY,
                };
                Assigned {
                    candidate,
                    worker,
                    prediction,
                    // Kept only while they meet their SLO's constraints.
                    feasible: true,
                    rate_fps,
                    expected: Expected::of(tables, &f.conditions, &prediction, rate_fps),
                }
            })
            .collect();
        return Step {
            devices: kept,
            kept: true,
        };
    }
    // A fresh plan for a shared pool: devices alike keep the plans they hold.
    if plan.strategy != fleet::Strategy::Individual {
        let held: Vec<Option<Candidate>> = devices.iter().map(|d| d.current.map(|c| c.0)).collect();
        fleet::keep_places(tables, &fleet_devices, &held, &mut plan);
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
            // The load of the plan it gets (per-device hysteresis may keep another).
            load[w] += cloud_load(&prediction, rate_fps);
            Some(w)
        } else {
            None
        };
        let feasible = p.status != Status::SloUnmet;
        // Only frames that onload are limited.
        let (candidate, prediction, rate_fps) = match (onloads, worker) {
            (true, Some(_)) => (
                candidate,
                prediction,
                budget(rate_fps, prediction.throughput),
            ),
            // No worker left: device-only.
            (true, None) => {
                let row = tables.device_only();
                let p = row.predict(&fleet_devices[i].conditions);
                (row.candidate, p, f64::INFINITY)
            }
            (false, _) => (candidate, prediction, f64::INFINITY),
        };
        out[i] = Some(Assigned {
            candidate,
            worker,
            prediction,
            feasible,
            rate_fps,
            expected: Expected::of(tables, &fleet_devices[i].conditions, &prediction, rate_fps),
        });
    }
    Step {
        devices: out
            .into_iter()
            .map(|a| a.expect("every device was assigned"))
            .collect(),
        kept: false,
    }
}
