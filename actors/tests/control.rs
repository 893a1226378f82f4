//! One control loop: a scripted sequence of worker joins and leaves, device joins and
//! leaves, link samples and ticks, driven through the coordinator's Scheduler actor and
//! through the simulator's control driver (`dyno::experiment::sim::Coordinator`, the one
//! `sim::run` uses), gives identical assignments at every step, for each policy. And an
//! agent starts a frame when its device is free, as a simulated device does.
use actix::prelude::*;
use dyno::config::Devices;
use dyno::experiment::sim;
use dyno::home::Home;
use dyno::sched::control::{DeviceSpec, Planning};
use dyno::sched::slo::Slo;
use dyno::sched::Policy;
use dyno::wire::{Assignment, DeviceInfo};
use dyno_actors::coordinator::{
    self, Admits, DeviceJoined, DeviceLeft, GetStatus, LinkSample, Replan, SchedulerActor,
    WorkerJoined, WorkerLeft,
};
use dyno_actors::worker::{Admission, Batching};
use std::collections::BTreeMap;
use std::time::Duration;

mod common;

/// One scripted event.
#[derive(Debug, Clone)]
enum Step {
    WorkerJoins(&'static str, u32),
    WorkerLeaves(&'static str),
    DeviceJoins(&'static str, &'static str),
    DeviceLeaves(&'static str),
    /// A transfer: bytes in seconds (an RTT included).
    Transfer(&'static str, u64, f64),
    Rtt(&'static str, f64),
    Tick,
}

fn script() -> Vec<Step> {
    use Step::*;
    let mut s = vec![
        WorkerJoins("w1", 2),
        DeviceJoins("phone-a", "slow2x"),
        DeviceJoins("gateway-b", "slow5x"),
        DeviceJoins("slow-c", "slow10x"),
        Rtt("phone-a", 0.02),
        Transfer("phone-a", 1_000_000, 0.22),
        Transfer("gateway-b", 100_000, 0.12),
        Rtt("slow-c", 0.04),
        Transfer("slow-c", 50_000, 0.44),
        Tick,
        WorkerJoins("w2", 1),
        DeviceJoins("phone-d", "slow2x"),
        Rtt("phone-d", 0.002),
        // 500 Mbit/s: even fp32 pays.
        Transfer("phone-d", 6_250_000, 0.102),
    ];
    // The phone's link falls from 40 to 2 Mbit/s, then the gateway's rises.
    for _ in 0..3 {
        s.push(Transfer("phone-a", 250_000, 1.02));
    }
    s.extend([Tick, WorkerLeaves("w1"), Tick]);
    for _ in 0..3 {
        s.push(Transfer("gateway-b", 1_000_000, 0.1));
    }
    s.extend([
        DeviceLeaves("slow-c"),
        WorkerJoins("w1", 2),
        Tick,
        DeviceJoins("slow-c", "slow10x"),
        Tick,
    ]);
    s
}

/// Every device's assignment, with workers named by their name.
type Plans = BTreeMap<String, Option<Assignment>>;

fn slowdown(classes: &Devices, class: &str) -> f64 {
    classes.class(class).unwrap().slowdown
}

/// The script through the Scheduler actor: the plans after every step.
/// Also counts, in `budgeted`, the (step, device) pairs whose worker held a finite
/// budget for it.
fn through_the_actor(
    planning: Planning,
    classes: &Devices,
    home: &Home,
    budgeted: &mut usize,
) -> Vec<Plans> {
    actix::System::new().block_on(async {
        let (tables, cloud_slowdown) = coordinator::tables(home, "mobilenet_v2", None).unwrap();
        let sharing = planning.sharing();
        // No periodic re-plan within the test; every join and link change re-plans.
        let actor = SchedulerActor::new(
            tables,
            cloud_slowdown,
            sharing,
            Duration::from_secs(3600),
            Duration::ZERO,
        )
        .start();
        let mut outboxes = BTreeMap::new();
        let mut admissions: BTreeMap<&str, Admission> = BTreeMap::new();
        let mut keep = Vec::new();
        let mut out = Vec::new();
        for step in script() {
            match step {
                Step::WorkerJoins(name, slots) => actor
                    .send(WorkerJoined {
                        name: name.into(),
                        data_addr: name.into(),
                        slots,
                        batching: Batching::off(),
                        admits: Admits::Here(admissions.entry(name).or_default().clone()),
                    })
                    .await
                    .unwrap(),
                Step::WorkerLeaves(name) => {
                    actor.send(WorkerLeft { name: name.into() }).await.unwrap()
                }
                Step::DeviceJoins(id, class) => {
                    let (tx, rx) = dyno::wire::session::Outbox::detached();
                    keep.push(rx);
                    outboxes.insert(id, tx.clone());
                    actor
                        .send(DeviceJoined {
                            info: DeviceInfo {
                                id: id.into(),
                                model: "mobilenet_v2".into(),
                                class: class.into(),
                                slowdown: slowdown(classes, class),
                                threads: 1,
                                slo: Slo::default(),
                                policy: planning.policy(),
                                in_flight: 2,
                            },
                            tx,
                        })
                        .await
                        .unwrap()
                }
                Step::DeviceLeaves(id) => actor
                    .send(DeviceLeft {
                        id: id.into(),
                        tx: outboxes[id].clone(),
                    })
                    .await
                    .unwrap(),
                Step::Transfer(id, bytes, seconds) => actor
                    .send(LinkSample {
                        id: id.into(),
                        bytes,
                        seconds,
                    })
                    .await
                    .unwrap(),
                Step::Rtt(id, seconds) => actor
                    .send(LinkSample {
                        id: id.into(),
                        bytes: 0,
                        seconds,
                    })
                    .await
                    .unwrap(),
                Step::Tick => actor.send(Replan).await.unwrap(),
            }
            let st = actor.send(GetStatus).await.unwrap();
            // Every worker's admission holds the budgets of the devices planned onto
            // it, and no other.
            for (&w, admission) in &admissions {
                let live = st.workers.iter().any(|x| x.name == w);
                for d in &st.devices {
                    let planned = d
                        .plan
                        .as_ref()
                        .filter(|p| live && p.worker.as_deref() == Some(w))
                        .map(|p| p.rate_fps);
                    if live {
                        assert_eq!(
                            admission.budget(&d.id),
                            planned,
                            "{planning}: worker {w}'s budget for {}",
                            d.id
                        );
                    }
                    if planned.is_some_and(f64::is_finite) {
                        *budgeted += 1;
                    }
                }
            }
            out.push(st.devices.into_iter().map(|d| (d.id, d.plan)).collect());
        }
        out
    })
}

/// The script through the simulator's control driver: the plans after every step.
fn through_the_simulator(planning: Planning, classes: &Devices, home: &Home) -> Vec<Plans> {
    let (tables, cloud_slowdown) = coordinator::tables(home, "mobilenet_v2", None).unwrap();
    let mut c = sim::Coordinator::new(&tables, planning, cloud_slowdown, 0.0);
    let mut devices: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for (i, step) in script().into_iter().enumerate() {
        let t = 0.1 * i as f64;
        let deferred = match step {
            Step::WorkerJoins(name, slots) => c.join_worker(name, slots, Batching::off(), t),
            Step::WorkerLeaves(name) => c.leave_worker(name, t),
            Step::DeviceJoins(id, class) => {
                devices.push(id);
                let spec = DeviceSpec {
                    slowdown: slowdown(classes, class),
                    slo: Slo::default(),
                    policy: planning.policy(),
                    in_flight: 2,
                };
                c.join_device(id, spec, t)
            }
            Step::DeviceLeaves(id) => {
                devices.retain(|d| *d != id);
                c.leave_device(id, t)
            }
            Step::Transfer(id, bytes, seconds) => c.observe_transfer(id, t, bytes, seconds),
            Step::Rtt(id, seconds) => c.observe_rtt(id, t, seconds),
            Step::Tick => {
                c.replan(t);
                None
            }
        };
        assert_eq!(deferred, None, "with no gap nothing is deferred");
        let mut plans = Plans::new();
        for id in &devices {
            let a = c.control().plan(id).cloned();
            plans.insert(id.to_string(), a);
        }
        out.push(plans);
    }
    out
}

#[test]
fn the_coordinator_and_the_simulator_assign_alike_at_every_step_for_every_policy() {
    let home = Home::discover();
    let classes = Devices::load(&Devices::default_path(&home)).unwrap();
    let plannings: Vec<Planning> = Policy::ALL
        .map(Planning::PerDevice)
        .into_iter()
        .chain([Planning::Fleet])
        .collect();
    let script = script();
    for planning in plannings {
        let mut budgeted = 0;
        let actor = through_the_actor(planning, &classes, &home, &mut budgeted);
        let simulated = through_the_simulator(planning, &classes, &home);
        assert_eq!(actor.len(), script.len());
        let mut distinct = std::collections::HashSet::new();
        for (i, (a, s)) in actor.iter().zip(&simulated).enumerate() {
            assert_eq!(
                a, s,
                "{planning}: step {i} ({:?}) differs: coordinator left, simulator right",
                script[i]
            );
            for p in a.values().flatten() {
                distinct.insert((p.candidate, p.worker.clone()));
            }
        }
        // The script exercises the planner: the plans move (the baselines have few
        // plans: one, or one per worker).
        let want = match planning {
            Planning::PerDevice(Policy::DeviceOnly) => 1,
            Planning::PerDevice(Policy::Neurosurgeon) => 1,
            Planning::PerDevice(Policy::CloudOnly) => 2,
            _ => 4,
        };
        assert!(
            distinct.len() >= want,
            "{planning}: only {} distinct assignments over the script: {distinct:?}",
            distinct.len()
        );
        eprintln!(
            "{planning}: {} steps, {} distinct (plan, worker) pairs, identical; {budgeted} \
             device-steps with a finite budget, held by their worker",
            script.len(),
            distinct.len()
        );
    }
}

/// An agent starts a frame when its compute thread is free, as a simulated device does
/// (`sim::run` starts one only then): with three frames in flight, frames do not queue
/// for the device. Before this, a frame waited for the heads of the frames before it
/// (on the testbed, 43-135 ms a frame in `testbed-fleet.toml`, where the simulator has
/// none). Device-only here (its coordinator unreachable), compute stretched 5x.
#[test]
fn an_agent_starts_a_frame_when_its_device_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("cam.jsonl");
    let mut cfg = common::cloud_only_agent("test-start", "cam", "127.0.0.1:9", 0.0, 3.0, &results);
    cfg.in_flight = 3;
    let (s, frames) = common::finished(common::spawn_agent(dir.path(), &cfg), &cfg);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let head = median(frames.iter().map(|f| f.stages.head_s).collect());
    let wait = median(frames.iter().map(|f| f.device_wait_s).collect());
    eprintln!(
        "{} frames device-only, 3 in flight: a head {:.2} ms, a frame's wait for the \
         device {:.3} ms (medians)",
        s.frames,
        head * 1e3,
        wait * 1e3
    );
    assert!(s.device_only > 20, "{s:?}");
    assert!(wait < 0.2 * head, "waited {wait} s for a head of {head} s");
}
