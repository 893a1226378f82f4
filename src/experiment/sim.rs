//! The simulated mode: a discrete-event run on a virtual clock. Stage times come from the
//! profiles (the performance model's predictions for each device class), bytes from the
//! accuracy profile's real packed activations, links from `link::Shaper` on the devices'
//! traces; the plans come from the same scheduler, fed by the same bandwidth estimator
//! with the transfers the simulation makes.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use serde::Serialize;

use crate::link::Shaper;
use crate::sched::bandwidth::Estimator;
use crate::sched::fleet::{self, FleetDevice};
use crate::sched::perf::{Candidate, Conditions, Link, Tables};
use crate::sched::slo::Slo;
use crate::sched::{Policy, Scheduler};

/// The agents' heartbeat period, the idle time after which they probe, and the probe's
/// size (`dyno_actors::agent`'s control loop).
const BEAT_S: f64 = 0.5;
const PROBE_IDLE_S: f64 = 2.0;
const PROBE_BYTES: usize = 32 << 10;

/// One simulated device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub id: String,
    pub class: String,
    pub slowdown: f64,
    pub shaper: Shaper,
    pub rtt_s: f64,
    pub in_flight: usize,
}

/// How plans are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Planning {
    /// Each device alone, with this policy.
    PerDevice(Policy),
    /// DynO over the whole fleet against the pool's capacity.
    Fleet,
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
    pub device_s: f64,
    pub cloud_s: f64,
    /// Share of the model's profiled compute done on the device.
    pub device_share: f64,
}

/// A sample of one device's state over time.
#[derive(Debug, Clone, Serialize)]
pub struct SimTick {
    pub time_s: f64,
    pub device: usize,
    pub true_mbps: f64,
    pub estimated_mbps: f64,
    pub split: u16,
    pub precision: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SimRun {
    pub frames: Vec<SimFrame>,
    pub ticks: Vec<SimTick>,
    pub plan_changes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Replan,
    /// The agents' half-second heartbeat: an idle uplink gets a probe.
    Beat,
    ProbeDone(usize),
    Answer(usize),
    CloudDone(usize),
    Arrive(usize),
    DeviceDone(usize),
    Start(usize),
}

struct Flight {
    device: usize,
    candidate: Candidate,
    start: f64,
    device_s: f64,
    sent: f64,
    arrives: f64,
    cloud_s: f64,
    bytes: f64,
    drop: f64,
    share: f64,
}

/// Runs `devices` for `duration_s` virtual seconds against `workers` cloud workers.
#[allow(clippy::too_many_arguments)]
pub fn run(
    tables: &Tables,
    devices: &mut [SimDevice],
    workers: usize,
    cloud_slowdown: f64,
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
    let mut estimators: Vec<Estimator> = vec![Estimator::default(); n];
    // A first probe of every link at time 0, as an agent's first transfer would.
    for (e, d) in estimators.iter_mut().zip(devices.iter()) {
        let mbps = d.shaper.trace().mbps_at(0.0).max(0.01);
        e.observe_rtt(0.0, d.rtt_s);
        e.observe_transfer(0.0, 1_000_000, 8e6 / (mbps * 1e6) + d.rtt_s);
    }
    let cond = |d: &SimDevice, link: Link| {
        let mut c = Conditions::new(d.slowdown, link);
        c.cloud_slowdown = cloud_slowdown;
        // The pool serves any device's frames on any of its workers.
        c.cloud_slots = workers.max(1) as f64;
        c
    };
    let mut sched = Scheduler::new();
    let mut plans: Vec<Option<Candidate>> = vec![None; n];
    let mut out = SimRun::default();
    let total_ref = tables.device_only().head_s.max(1e-12);
    let replan = |plans: &mut Vec<Option<Candidate>>,
                  sched: &mut Scheduler,
                  estimators: &[Estimator],
                  devices: &[SimDevice],
                  out: &mut SimRun,
                  t: f64| {
        let links: Vec<Link> = estimators
            .iter()
            .zip(devices)
            .map(|(e, d)| {
                e.link().unwrap_or(Link {
                    bandwidth_bps: 1e6,
                    rtt_s: d.rtt_s,
                })
            })
            .collect();
        let new: Vec<Candidate> = match planning {
            Planning::PerDevice(p) => devices
                .iter()
                .zip(&links)
                .enumerate()
                .map(|(i, (d, l))| {
                    sched
                        .decide(tables, &cond(d, *l), slo, p, plans[i])
                        .candidate
                })
                .collect(),
            Planning::Fleet => {
                let fd: Vec<FleetDevice> = devices
                    .iter()
                    .zip(&links)
                    .map(|(d, l)| FleetDevice {
                        id: d.id.clone(),
                        conditions: cond(d, *l),
                        slo: slo.clone(),
                        policy: Policy::Dyno,
                        demand_fps: None,
                    })
                    .collect();
                let new = fleet::plan(tables, &fd, workers as f64);
                if fleet::keep_current(tables, &fd, plans, workers as f64, &new) {
                    plans.iter().map(|p| p.expect("kept plans exist")).collect()
                } else {
                    new.devices.into_iter().map(|p| p.candidate).collect()
                }
            }
        };
        for (i, c) in new.into_iter().enumerate() {
            if plans[i].is_some_and(|p| p != c) {
                out.plan_changes += 1;
            }
            plans[i] = Some(c);
            out.ticks.push(SimTick {
                time_s: t,
                device: i,
                true_mbps: devices[i].shaper.trace().mbps_at(t),
                estimated_mbps: links[i].bandwidth_bps / 1e6,
                split: c.split,
                precision: c.precision.to_string(),
            });
        }
    };
    replan(&mut plans, &mut sched, &estimators, devices, &mut out, 0.0);
    push(&mut heap, replan_s, Kind::Replan);
    push(&mut heap, BEAT_S, Kind::Beat);
    // When each uplink last started a transfer, and the probes on their way.
    let mut last_sent = vec![0.0f64; n];
    let mut probes: Vec<(usize, f64, f64)> = Vec::new();
    for i in 0..n {
        push(&mut heap, 0.0, Kind::Start(i));
    }
    let mut flights: Vec<Flight> = Vec::new();
    let mut in_flight = vec![0usize; n];
    let mut device_free = vec![0.0f64; n];
    let mut device_busy = vec![false; n];
    let mut free_workers = workers;
    let mut queue: VecDeque<usize> = VecDeque::new();
    while let Some(Reverse((tk, _, kind))) = heap.pop() {
        let t = tk as f64 / 1e9;
        if t > duration_s {
            break;
        }
        match kind {
            Kind::Replan => {
                replan(&mut plans, &mut sched, &estimators, devices, &mut out, t);
                push(&mut heap, t + replan_s, Kind::Replan);
            }
            Kind::Beat => {
                // As the agent does: 32 KB through an uplink idle for 2 s, timed from when
                // it was handed to the link until its acknowledgement.
                for (i, d) in devices.iter_mut().enumerate() {
                    if t - last_sent[i] >= PROBE_IDLE_S {
                        let delivery = d.shaper.send(t, PROBE_BYTES);
                        last_sent[i] = t;
                        probes.push((i, t, delivery.arrives));
                        push(
                            &mut heap,
                            delivery.arrives,
                            Kind::ProbeDone(probes.len() - 1),
                        );
                    }
                }
                push(&mut heap, t + BEAT_S, Kind::Beat);
            }
            Kind::ProbeDone(p) => {
                let (i, sent, arrives) = probes[p];
                let one_way = devices[i].rtt_s / 2.0;
                estimators[i].observe_transfer(t, PROBE_BYTES as u64, arrives - sent + one_way);
            }
            Kind::Start(i) => {
                if device_busy[i] || in_flight[i] >= devices[i].in_flight.max(1) {
                    continue;
                }
                let c = plans[i].expect("planned at time 0");
                let row = tables.row(&c).expect("plans come from the tables");
                let p = row.predict(&cond(&devices[i], Link::mbps(1.0, 0.0)));
                let device_s = p.head_s + p.pack_s;
                device_busy[i] = true;
                in_flight[i] += 1;
                device_free[i] = t + device_s;
                flights.push(Flight {
                    device: i,
                    candidate: c,
                    start: t,
                    device_s,
                    sent: 0.0,
                    arrives: 0.0,
                    cloud_s: p.unpack_s + p.tail_s,
                    bytes: p.bytes,
                    drop: p.drop_points,
                    share: row.head_s / total_ref,
                });
                push(&mut heap, t + device_s, Kind::DeviceDone(flights.len() - 1));
            }
            Kind::DeviceDone(f) => {
                let i = flights[f].device;
                device_busy[i] = false;
                push(&mut heap, t, Kind::Start(i));
                if flights[f].bytes <= 0.0 {
                    push(&mut heap, t, Kind::Answer(f));
                } else {
                    let d = devices[i].shaper.send(t, flights[f].bytes as usize);
                    last_sent[i] = t;
                    // The transfer is timed from when its first bit leaves, not from when
                    // it joined the device's own queue (as the agent does).
                    flights[f].sent = d.start;
                    flights[f].arrives = d.arrives;
                    push(&mut heap, d.arrives, Kind::Arrive(f));
                }
            }
            Kind::Arrive(f) => {
                if free_workers > 0 {
                    free_workers -= 1;
                    push(&mut heap, t + flights[f].cloud_s, Kind::CloudDone(f));
                } else {
                    queue.push_back(f);
                }
            }
            Kind::CloudDone(f) => {
                match queue.pop_front() {
                    Some(next) => push(&mut heap, t + flights[next].cloud_s, Kind::CloudDone(next)),
                    None => free_workers += 1,
                }
                let i = flights[f].device;
                let one_way = devices[i].rtt_s / 2.0;
                // The agent's sample: first byte out to the answer, less the worker's time.
                let wire = (flights[f].arrives - flights[f].sent) + one_way;
                estimators[i].observe_transfer(t, flights[f].bytes as u64, wire);
                push(&mut heap, t + one_way, Kind::Answer(f));
            }
            Kind::Answer(f) => {
                let fl = &flights[f];
                let i = fl.device;
                in_flight[i] -= 1;
                out.frames.push(SimFrame {
                    device: i,
                    start_s: fl.start,
                    end_s: t,
                    split: fl.candidate.split,
                    precision: fl.candidate.precision.to_string(),
                    codec: fl.candidate.codec.to_string(),
                    bytes: fl.bytes,
                    drop_points: fl.drop,
                    device_s: fl.device_s,
                    cloud_s: if fl.bytes > 0.0 { fl.cloud_s } else { 0.0 },
                    device_share: fl.share,
                });
                push(&mut heap, t.max(device_free[i]), Kind::Start(i));
            }
        }
    }
    out
}
