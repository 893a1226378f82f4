//! Fleet planning: many devices, one cloud pool of finite capacity.
//!
//! Capacity is in cloud seconds per second (a pool of 4 single-inference workers is 4.0).
//! A device running plan `p` at rate `r` loads the pool with `r * cloud_s(p)`.
//!
//! 1. Every device gets its individual optimum ([`Scheduler::decide`]). A device whose
//!    SLO no plan meets is told so and runs device-only. If the total load fits, done:
//!    each device has exactly its own optimum.
//! 2. Otherwise, repeatedly, the device that loses the least throughput per unit of
//!    cloud load freed moves to a plan with less cloud work (a later split, or
//!    device-only), among the plans that keep its SLO, until the load fits.
//! 3. If it still does not fit, devices are throttled: each keeps its SLO's minimum
//!    rate, the cheapest first; those that do not fit are told their SLO cannot be met
//!    and run device-only. What capacity is left is shared in proportion to demand.
//! 4. Capacity left over after step 2 goes to the device that gains the most throughput
//!    per unit of it (possibly throttled), until none gains.
//! 5. As a safeguard, the plan is compared with an equal share of the pool per device;
//!    the one with fewer broken SLOs, then more throughput, is returned.
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::Serialize;

use super::perf::{Candidate, Conditions, Prediction, Tables};
use super::slo::{Slo, Violation};
use super::{Policy, Scheduler};

/// One device of the fleet.
#[derive(Debug, Clone)]
pub struct FleetDevice {
    pub id: String,
    pub conditions: Conditions,
    pub slo: Slo,
    pub policy: Policy,
    /// Frames per second the device wants (a camera's rate); `None`: as fast as it can.
    pub demand_fps: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Its individual optimum.
    Optimal,
    /// Moved to less cloud work (or throttled) to share the pool; its SLO is kept.
    Shared,
    /// Its SLO cannot be met: it runs device-only.
    SloUnmet,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DevicePlan {
    pub id: String,
    pub candidate: Candidate,
    /// Figures of the plan at its full rate.
    pub prediction: Prediction,
    /// The rate the device runs at (its throughput, the demand, or its pool share).
    pub rate_fps: f64,
    /// Cloud seconds per second it uses.
    pub cloud_load: f64,
    pub status: Status,
    /// For `slo-unmet`: what the best plan would break.
    pub violations: Vec<Violation>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetPlan {
    pub devices: Vec<DevicePlan>,
    pub capacity: f64,
    pub load: f64,
    /// Sum of the devices' rates.
    pub throughput: f64,
    pub slo_unmet: usize,
    pub strategy: Strategy,
}

/// How a fleet plan was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Everyone fits: each device its own optimum (step 1).
    Individual,
    /// Steps 2-4.
    Greedy,
    /// The equal share won (step 5).
    EqualShare,
}

/// Fleet-level hysteresis: whether the devices' current plans (all of them planned) are
/// still worth keeping against `new`, a plan for a shared pool (with room for everyone,
/// `new.strategy == Strategy::Individual`, each device's own hysteresis applies instead): every
/// one still meets its SLO's constraints, and
/// `new` is not better by more than the SLOs' hysteresis (their mean) in total predicted
/// throughput, the current plans' onloading rates scaled down to fit `capacity` where
/// their load exceeds it. Without it, a fleet plan that moves with every new link or
/// correction sample flaps. When they are kept, returns the scale their onloading rates
/// take to fit `capacity` (1 when they fit). `current`: each device's plan and its
/// onload budget (frames per second; infinite: none).
pub fn keep_current(
    tables: &Tables,
    devices: &[FleetDevice],
    current: &[Option<(Candidate, f64)>],
    capacity: f64,
    new: &FleetPlan,
) -> Option<f64> {
    if new.strategy == Strategy::Individual || devices.is_empty() || current.len() != devices.len()
    {
        return None;
    }
    let (mut load, mut local, mut onloading, mut hysteresis) = (0.0, 0.0, 0.0, 0.0);
    for (d, c) in devices.iter().zip(current) {
        let (c, budget) = c.as_ref()?;
        let p = tables.row(c)?.predict(&d.conditions);
        if !d.slo.constraints.allows(&p) {
            return None;
        }
        let rate = d
            .demand_fps
            .map_or(p.throughput, |f| f.min(p.throughput))
            .min(*budget);
        if p.cloud_s > 0.0 {
            load += rate * p.cloud_s;
            onloading += rate;
        } else {
            local += rate;
        }
        hysteresis += d.slo.objectives.hysteresis;
    }
    let hysteresis = hysteresis / devices.len() as f64;
    let scale = if load > capacity {
        capacity / load
    } else {
        1.0
    };
    (new.throughput <= (local + scale * onloading) * (1.0 + hysteresis)).then_some(scale)
}

/// A plan a device may take, at full rate.
#[derive(Debug, Clone, Copy)]
struct Opt {
    candidate: Candidate,
    prediction: Prediction,
    rate: f64,
    load: f64,
    /// Load needed to keep the SLO's minimum rate.
    needed: f64,
}

impl Opt {
    fn new(candidate: Candidate, prediction: Prediction, dev: &FleetDevice) -> Opt {
        let rate = dev
            .demand_fps
            .map_or(prediction.throughput, |d| d.min(prediction.throughput));
        let needed = dev
            .slo
            .constraints
            .min_throughput_fps
            .map_or(0.0, |m| m * prediction.cloud_s);
        Opt {
            candidate,
            prediction,
            rate,
            load: rate * prediction.cloud_s,
            needed,
        }
    }

    /// Rate with at most `alloc` cloud seconds per second.
    fn rate_with(&self, alloc: f64) -> f64 {
        if self.prediction.cloud_s > 0.0 {
            self.rate.min(alloc / self.prediction.cloud_s)
        } else {
            self.rate
        }
    }
}

/// Per device: its individual optimum and, per split, its best SLO-keeping plan.
struct Menu {
    optimum: Option<Opt>,
    /// SLO-keeping plans, one per split (the highest rate there), by decreasing load.
    opts: Vec<Opt>,
    /// Device-only, with what it breaks (for devices told their SLO cannot be met).
    device_only: Opt,
    device_only_violations: Vec<Violation>,
}

fn menu(tables: &Tables, dev: &FleetDevice, sched: &mut Scheduler) -> Menu {
    let d = sched.decide(tables, &dev.conditions, &dev.slo, dev.policy, None);
    let optimum = d.feasible.then(|| Opt::new(d.candidate, d.prediction, dev));
    let mut best: Vec<Option<Opt>> = vec![None; tables.blocks + 1];
    for (row, p) in tables.rows.iter().zip(&sched.preds) {
        let c = row.candidate;
        if !dev.policy.admits(&c, tables) || !dev.slo.constraints.allows(p) {
            continue;
        }
        let o = Opt::new(c, *p, dev);
        let slot = &mut best[c.split as usize];
        let better = match slot {
            None => true,
            Some(b) => o.rate > b.rate || (o.rate == b.rate && o.load < b.load),
        };
        if better {
            *slot = Some(o);
        }
    }
    let mut opts: Vec<Opt> = best.into_iter().flatten().collect();
    if let Some(o) = optimum {
        opts.push(o);
    }
    opts.sort_by(|a, b| b.load.total_cmp(&a.load));
    let row = tables.device_only();
    let p = row.predict(&dev.conditions);
    Menu {
        optimum,
        opts,
        device_only: Opt::new(row.candidate, p, dev),
        device_only_violations: dev.slo.constraints.violations(&p),
    }
}

/// Every device's menu, on all cores (each device's is independent of the others').
fn menus(tables: &Tables, devices: &[FleetDevice]) -> Vec<Menu> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = devices.len().div_ceil(threads).max(64);
    if devices.len() <= chunk {
        let mut sched = Scheduler::new();
        return devices
            .iter()
            .map(|d| menu(tables, d, &mut sched))
            .collect();
    }
    std::thread::scope(|scope| {
        let parts: Vec<_> = devices
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut sched = Scheduler::new();
                    part.iter()
                        .map(|d| menu(tables, d, &mut sched))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("menu building does not panic"))
            .collect()
    })
}

/// The state of one device during planning.
#[derive(Clone, Copy)]
struct Choice {
    opt: Opt,
    alloc: f64,
    status: Status,
}

/// A move in step 2: throughput lost per load freed (smaller is better).
#[derive(PartialEq)]
struct Move {
    cost: f64,
    device: usize,
    to: usize,
}

impl Eq for Move {}
impl PartialOrd for Move {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Move {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: the cheapest move first, then the lowest index.
        o.cost
            .total_cmp(&self.cost)
            .then(o.device.cmp(&self.device))
    }
}

fn next_move(menu: &Menu, cur: &Opt, device: usize) -> Option<Move> {
    menu.opts
        .iter()
        .enumerate()
        .filter(|(_, o)| o.load < cur.load)
        .map(|(i, o)| Move {
            cost: (cur.rate - o.rate) / (cur.load - o.load),
            device,
            to: i,
        })
        .min_by(|a, b| a.cost.total_cmp(&b.cost))
}

/// Plans the fleet against a pool of `capacity` cloud seconds per second (infinite: no
/// limit, each device its own optimum; NaN or negative: no pool).
pub fn plan(tables: &Tables, devices: &[FleetDevice], capacity: f64) -> FleetPlan {
    let capacity = if capacity.is_nan() {
        0.0
    } else {
        capacity.max(0.0)
    };
    let menus = menus(tables, devices);
    // 1. Individual optima.
    let mut choices: Vec<Choice> = menus
        .iter()
        .map(|m| match m.optimum {
            Some(o) => Choice {
                opt: o,
                alloc: o.load,
                status: Status::Optimal,
            },
            None => Choice {
                opt: m.device_only,
                alloc: 0.0,
                status: Status::SloUnmet,
            },
        })
        .collect();
    let mut load: f64 = choices.iter().map(|c| c.alloc).sum();
    if load <= capacity {
        return finish(devices, &menus, choices, capacity, Strategy::Individual);
    }
    // 2. Cheapest moves to less cloud work.
    let mut heap: BinaryHeap<Move> = choices
        .iter()
        .enumerate()
        .filter(|(_, c)| c.status != Status::SloUnmet)
        .filter_map(|(i, c)| next_move(&menus[i], &c.opt, i))
        .collect();
    while load > capacity {
        let Some(m) = heap.pop() else { break };
        let c = &mut choices[m.device];
        let to = menus[m.device].opts[m.to];
        load += to.load - c.opt.load;
        *c = Choice {
            opt: to,
            alloc: to.load,
            status: Status::Shared,
        };
        if let Some(next) = next_move(&menus[m.device], &to, m.device) {
            heap.push(next);
        }
    }
    if load > capacity {
        // 3. Throttle to the SLOs' minimum rates, the cheapest first.
        let mut order: Vec<usize> = (0..choices.len())
            .filter(|&i| choices[i].alloc > 0.0)
            .collect();
        order.sort_by(|&a, &b| choices[a].opt.needed.total_cmp(&choices[b].opt.needed));
        let mut used = 0.0;
        for &i in &order {
            let c = &mut choices[i];
            if used + c.opt.needed <= capacity {
                used += c.opt.needed;
                c.alloc = c.opt.needed;
                c.status = Status::Shared;
            } else {
                *c = Choice {
                    opt: menus[i].device_only,
                    alloc: 0.0,
                    status: Status::SloUnmet,
                };
            }
        }
        let spare = capacity - used;
        let want: f64 = order
            .iter()
            .map(|&i| (choices[i].opt.load - choices[i].alloc).max(0.0))
            .sum();
        if want > 0.0 {
            let share = (spare / want).min(1.0);
            for &i in &order {
                let c = &mut choices[i];
                if c.status == Status::Shared {
                    c.alloc += share * (c.opt.load - c.alloc).max(0.0);
                }
            }
        }
    } else {
        // 4. Fill the capacity left over.
        fill(devices, &menus, &mut choices, capacity);
    }
    let greedy = finish(devices, &menus, choices, capacity, Strategy::Greedy);
    // 5. The safeguard.
    let equal = equal_share(devices, &menus, capacity);
    let key = |p: &FleetPlan| (p.slo_unmet, -p.throughput);
    if key(&equal).0 < key(&greedy).0
        || (key(&equal).0 == key(&greedy).0 && equal.throughput > greedy.throughput * (1.0 + 1e-9))
    {
        equal
    } else {
        greedy
    }
}

fn fill(devices: &[FleetDevice], menus: &[Menu], choices: &mut [Choice], capacity: f64) {
    for _ in 0..4 * choices.len() {
        let used: f64 = choices.iter().map(|c| c.alloc).sum();
        let spare = capacity - used;
        if spare <= 1e-12 {
            return;
        }
        let mut best: Option<(f64, usize, Opt, f64)> = None;
        for (i, c) in choices.iter().enumerate() {
            if c.status == Status::SloUnmet {
                continue;
            }
            let cur_rate = c.opt.rate_with(c.alloc);
            for o in &menus[i].opts {
                let alloc = o.load.min(c.alloc + spare);
                let rate = o.rate_with(alloc);
                let min_rate = devices[i].slo.constraints.min_throughput_fps.unwrap_or(0.0);
                let extra = alloc - c.alloc;
                if rate <= cur_rate * (1.0 + 1e-9) || rate < min_rate || extra <= 0.0 {
                    continue;
                }
                let score = (rate - cur_rate) / extra;
                if best.is_none_or(|b| score > b.0) {
                    best = Some((score, i, *o, alloc));
                }
            }
        }
        let Some((_, i, o, alloc)) = best else { return };
        choices[i] = Choice {
            opt: o,
            alloc,
            status: if menus[i].optimum.map(|m| m.candidate) == Some(o.candidate) && alloc >= o.load
            {
                Status::Optimal
            } else {
                Status::Shared
            },
        };
    }
}

/// Every device gets `capacity / N` and makes the best of it.
fn equal_share(devices: &[FleetDevice], menus: &[Menu], capacity: f64) -> FleetPlan {
    let share = capacity / devices.len().max(1) as f64;
    let choices = menus
        .iter()
        .zip(devices)
        .map(|(m, d)| {
            let min_rate = d.slo.constraints.min_throughput_fps.unwrap_or(0.0);
            m.opts
                .iter()
                .map(|o| (o.rate_with(share), o))
                .filter(|(r, _)| *r >= min_rate && *r > 0.0)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, o)| Choice {
                    opt: *o,
                    alloc: o.load.min(share),
                    status: Status::Shared,
                })
                .unwrap_or(Choice {
                    opt: m.device_only,
                    alloc: 0.0,
                    status: Status::SloUnmet,
                })
        })
        .collect();
    finish(devices, menus, choices, capacity, Strategy::EqualShare)
}

/// Two devices whose predictions agree within this share, for each of two plans, are
/// alike: they may trade those plans.
pub const ALIKE: f64 = 0.05;

/// Gives each device back the plan it holds where a fresh plan handed it to another
/// device alike. Devices of one class on one kind of link differ only by the noise in
/// their measurements, and a fresh plan that gives three of them splits 3, 4 and 5 may
/// give them out in another order the next time: each then moves for no gain, and the
/// fleet's plans flap (on the testbed, 25 moves of six devices in 20 s). Two devices
/// trade their new plans when one of them gets back the plan it holds, and both plans
/// are alike on both devices (predicted throughput and cloud seconds within [`ALIKE`],
/// admitted by both policies and SLOs). A device keeps the share of the pool that came
/// with the plan. `current`: each device's plan in force, in the devices' order.
pub fn keep_places(
    tables: &Tables,
    devices: &[FleetDevice],
    current: &[Option<Candidate>],
    plan: &mut FleetPlan,
) {
    let n = plan.devices.len().min(devices.len()).min(current.len());
    let mut traded = false;
    for i in 0..n {
        let Some(held) = current[i] else { continue };
        if plan.devices[i].candidate == held {
            continue;
        }
        let other = (0..n).find(|&j| {
            j != i
                && plan.devices[j].candidate == held
                && current[j] != Some(held)
                && alike(tables, &devices[i], &devices[j], plan.devices[i].candidate)
                && alike(tables, &devices[i], &devices[j], held)
        });
        if let Some(j) = other {
            let (a, b) = (plan.devices[i].clone(), plan.devices[j].clone());
            plan.devices[i] = handed(tables, &devices[i], b);
            plan.devices[j] = handed(tables, &devices[j], a);
            traded = true;
        }
    }
    if traded {
        plan.load = plan.devices.iter().map(|p| p.cloud_load).sum();
        plan.throughput = plan.devices.iter().map(|p| p.rate_fps).sum();
    }
}

/// Whether `candidate` makes the same figures on devices `a` and `b`, and both may run it.
fn alike(tables: &Tables, a: &FleetDevice, b: &FleetDevice, candidate: Candidate) -> bool {
    let Some(row) = tables.row(&candidate) else {
        return false;
    };
    let (pa, pb) = (row.predict(&a.conditions), row.predict(&b.conditions));
    let close = |x: f64, y: f64| (x - y).abs() <= ALIKE * x.abs().max(y.abs());
    let device_only = candidate.split as usize >= tables.blocks;
    [(a, &pa), (b, &pb)].iter().all(|(d, p)| {
        device_only || (d.policy.admits(&candidate, tables) && d.slo.constraints.allows(p))
    }) && close(pa.throughput, pb.throughput)
        && close(pa.cloud_s, pb.cloud_s)
}

/// `plan`, made for another device, as `device`'s: its figures on `device`, with the
/// share of the pool it came with.
fn handed(tables: &Tables, device: &FleetDevice, plan: DevicePlan) -> DevicePlan {
    let Some(p) = tables
        .row(&plan.candidate)
        .map(|r| r.predict(&device.conditions))
    else {
        return plan;
    };
    let rate_fps = Opt::new(plan.candidate, p, device).rate_with(plan.cloud_load);
    DevicePlan {
        id: device.id.clone(),
        prediction: p,
        rate_fps,
        cloud_load: rate_fps * p.cloud_s,
        ..plan
    }
}

fn finish(
    devices: &[FleetDevice],
    menus: &[Menu],
    choices: Vec<Choice>,
    capacity: f64,
    strategy: Strategy,
) -> FleetPlan {
    let plans: Vec<DevicePlan> = choices
        .into_iter()
        .zip(devices)
        .zip(menus)
        .map(|((c, d), m)| DevicePlan {
            id: d.id.clone(),
            candidate: c.opt.candidate,
            prediction: c.opt.prediction,
            rate_fps: c.opt.rate_with(c.alloc),
            cloud_load: c.alloc,
            status: c.status,
            violations: if c.status == Status::SloUnmet {
                m.device_only_violations.clone()
            } else {
                Vec::new()
            },
        })
        .collect();
    FleetPlan {
        load: plans.iter().map(|p| p.cloud_load).sum(),
        throughput: plans.iter().map(|p| p.rate_fps).sum(),
        slo_unmet: plans
            .iter()
            .filter(|p| p.status == Status::SloUnmet)
            .count(),
        devices: plans,
        capacity,
        strategy,
    }
}

#[cfg(test)]
mod tests {
    use super::super::perf::Link;
    use super::super::tests::toy;
    use super::*;

    fn device(i: usize, slowdown: f64, mbps: f64, slo: &Slo) -> FleetDevice {
        FleetDevice {
            id: format!("d{i}"),
            conditions: Conditions::new(slowdown, Link::mbps(mbps, 10.0)),
            slo: slo.clone(),
            policy: Policy::Dyno,
            demand_fps: None,
        }
    }

    fn mixed(n: usize, slo: &Slo) -> Vec<FleetDevice> {
        (0..n)
            .map(|i| {
                device(
                    i,
                    [2.0, 5.0, 10.0, 20.0][i % 4],
                    [200.0, 50.0, 10.0, 2.0, 0.5][i % 5],
                    slo,
                )
            })
            .collect()
    }

    #[test]
    fn a_fleet_keeps_its_plans_unless_the_new_one_is_clearly_better() {
        let tables = toy();
        let slo = Slo::default();
        let devices = mixed(12, &slo);
        let capacity = 1.0;
        let new = plan(&tables, &devices, capacity);
        let current: Vec<Option<(Candidate, f64)>> = new
            .devices
            .iter()
            .map(|p| Some((p.candidate, f64::INFINITY)))
            .collect();
        // The plan itself is kept against itself...
        assert!(keep_current(&tables, &devices, &current, capacity, &new).is_some());
        // ...not when a device has no plan yet, when the pool shrank under the plans'
        // load, or when the alternative is more than the hysteresis better.
        let mut missing = current.clone();
        missing[3] = None;
        assert!(keep_current(&tables, &devices, &missing, capacity, &new).is_none());
        assert!(keep_current(&tables, &devices, &current, capacity * 0.2, &new).is_none());
        let mut better = new.clone();
        better.throughput *= 1.0 + slo.objectives.hysteresis + 0.05;
        assert!(keep_current(&tables, &devices, &current, capacity, &better).is_none());
        let mut slightly = new.clone();
        slightly.throughput *= 1.0 + slo.objectives.hysteresis / 2.0;
        assert!(keep_current(&tables, &devices, &current, capacity, &slightly).is_some());
    }

    /// Devices alike given the same plans in another order keep the ones they hold, at
    /// the same fleet throughput; a device unlike them does not trade.
    #[test]
    fn devices_alike_keep_the_plans_they_hold() {
        let t = toy();
        let slo = Slo::default();
        let alike: Vec<FleetDevice> = (0..3).map(|i| device(i, 10.0, 10.0, &slo)).collect();
        let full = plan(&t, &alike, 1e6).load;
        // A pool where the three get plans that are not all the same.
        let (fresh, cap) = (1..40)
            .map(|k| full * k as f64 / 40.0)
            .map(|cap| (plan(&t, &alike, cap), cap))
            .find(|(p, _)| p.devices[0].candidate != p.devices[1].candidate)
            .expect("some pool splits three devices alike over two plans");
        let given: Vec<Candidate> = fresh.devices.iter().map(|d| d.candidate).collect();
        // They hold the same plans, each another's.
        let held: Vec<Option<Candidate>> = (0..3).map(|i| Some(given[(i + 1) % 3])).collect();
        let mut traded = fresh.clone();
        keep_places(&t, &alike, &held, &mut traded);
        for (i, d) in traded.devices.iter().enumerate() {
            assert_eq!(Some(d.candidate), held[i], "device {i} (pool {cap})");
            assert_eq!(d.id, alike[i].id);
        }
        assert!((traded.throughput - fresh.throughput).abs() <= 1e-9 * fresh.throughput);
        assert!(traded.load <= fresh.load * (1.0 + 1e-9));
        // The first device twice as fast: it and the others are not alike.
        let mut unlike = alike.clone();
        unlike[0] = device(0, 5.0, 10.0, &slo);
        let fresh = plan(&t, &unlike, cap);
        let given: Vec<Candidate> = fresh.devices.iter().map(|d| d.candidate).collect();
        let held: Vec<Option<Candidate>> = (0..3).map(|i| Some(given[(i + 1) % 3])).collect();
        let mut kept = fresh.clone();
        keep_places(&t, &unlike, &held, &mut kept);
        assert_eq!(kept.devices[0].candidate, fresh.devices[0].candidate);
    }

    #[test]
    fn ample_capacity_gives_each_device_its_own_optimum() {
        let t = toy();
        let slo = Slo::default();
        let devs = mixed(12, &slo);
        let plan = plan(&t, &devs, 1e6);
        assert_eq!(plan.strategy, Strategy::Individual);
        let mut s = Scheduler::new();
        for (d, p) in devs.iter().zip(&plan.devices) {
            let own = s.decide(&t, &d.conditions, &d.slo, d.policy, None);
            assert_eq!(p.candidate, own.candidate, "{}", d.id);
            assert_eq!(p.status, Status::Optimal);
            assert!((p.rate_fps - own.prediction.throughput).abs() < 1e-9);
        }
    }

    #[test]
    fn scarce_capacity_beats_an_equal_split_and_fits() {
        let t = toy();
        let slo = Slo::default();
        let devs = mixed(40, &slo);
        let full = plan(&t, &devs, 1e6).load;
        for frac in [0.05, 0.1, 0.25, 0.5, 0.8] {
            let cap = frac * full;
            let p = plan(&t, &devs, cap);
            assert!(p.load <= cap * (1.0 + 1e-9), "{frac}: {} > {cap}", p.load);
            let eq = equal_share(&devs, &menus(&t, &devs), cap);
            assert!(p.throughput >= eq.throughput, "{frac}");
            assert_eq!(
                p.strategy,
                Strategy::Greedy,
                "{frac}: the greedy plan itself wins"
            );
            assert!(p.devices.iter().all(|d| d.prediction.drop_points <= 1.0));
        }
    }

    #[test]
    fn no_slo_is_broken_that_another_plan_would_keep() {
        // Three devices that each need the cloud to reach 60 fps (device-only is 25 fps at
        // slowdown 1 with 40 ms of blocks), against pools of several sizes: the planner
        // keeps as many SLOs as the best of every combination of per-split plans.
        let t = toy();
        let slo = Slo::from_toml("[constraints]\nmin_throughput_fps = 60\nmax_accuracy_drop = 1\n")
            .unwrap();
        let devs: Vec<FleetDevice> = [1.0, 1.0, 1.5]
            .iter()
            .enumerate()
            .map(|(i, &s)| device(i, s, 100.0, &slo))
            .collect();
        let menus: Vec<Menu> = devs
            .iter()
            .map(|d| menu(&t, d, &mut Scheduler::new()))
            .collect();
        for cap in [0.0, 0.3, 0.6, 1.0, 1.5, 2.5, 10.0] {
            let p = plan(&t, &devs, cap);
            // Brute force: each device either at one of its SLO-keeping plans with its
            // minimum load, or given up.
            let mut best_kept = 0;
            let n = menus.iter().map(|m| m.opts.len() + 1).product::<usize>();
            for mut k in 0..n {
                let (mut kept, mut used) = (0, 0.0);
                for m in &menus {
                    let pick = k % (m.opts.len() + 1);
                    k /= m.opts.len() + 1;
                    if pick < m.opts.len() {
                        kept += 1;
                        used += m.opts[pick].needed;
                    }
                }
                if used <= cap {
                    best_kept = best_kept.max(kept);
                }
            }
            assert_eq!(3 - p.slo_unmet, best_kept, "capacity {cap}");
            for d in &p.devices {
                if d.status == Status::SloUnmet {
                    assert_eq!(d.candidate.split, 4);
                    assert_eq!(d.violations[0].key, "min_throughput_fps");
                } else {
                    assert!(d.rate_fps >= 60.0 - 1e-9);
                }
            }
            assert!(p.load <= cap + 1e-9);
        }
    }
}
