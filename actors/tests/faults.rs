//! Faults with real processes: a cloud worker killed with SIGKILL in the middle of a
//! stream (no frame is lost or answered twice, and onloading resumes on the other
//! worker); an agent killed (it leaves the fleet within the heartbeat timeout, and its
//! share of a scarce pool goes to the others); the coordinator killed and restarted (the agents serve on
//! device-only, then register again once each).
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dyno_actors::config::{AgentConfig, Fleet, LinkConfig, Source};

mod common;
use common::{spawn_ready, Proc};

/// One fault at a time: each test times recovery on two cores, and the scarce-pool test
/// keeps one of them busy on purpose.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The data address of the worker the coordinator assigned to `device`, once it has.
fn assigned_worker(control: &str, fleet: &str, device: &str) -> String {
    let t = Instant::now();
    loop {
        let st = common::status(control, fleet);
        let found = st["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == device)
            .and_then(|d| d["plan"]["worker"].as_str().map(str::to_string));
        if let Some(w) = found {
            return w;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{device} never got a worker"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_worker_killed_mid_stream_loses_no_frame() {
    let _one = one_at_a_time();
    let fleet = "test-faults";
    let (_c, control) = common::spawn_coordinator(fleet, "127.0.0.1:0", 0, &[]);
    let mut workers: Vec<(String, Proc)> = (1..=2)
        .map(|i| {
            let (p, data) = common::spawn_worker(fleet, &format!("w{i}"), &control);
            (data, p)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    // One agent that always onloads (cloud-only), 8 s of frames at 100 a second.
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("cam.jsonl");
    let cfg = common::cloud_only_agent(fleet, "cam", &control, 100.0, 8.0, &results);
    let started = Instant::now();
    let agent = common::spawn_agent(dir.path(), &cfg);
    // Three seconds in, SIGKILL the worker the agent is using.
    let used = assigned_worker(&control, fleet, "cam");
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    let k = workers.iter().position(|(addr, _)| *addr == used).unwrap();
    let (_, mut victim) = workers.remove(k);
    victim.child().kill().unwrap(); // SIGKILL
    let killed_s = started.elapsed().as_secs_f64();
    // Every frame answered exactly once.
    let (s, frames) = common::answered_once(agent, &cfg);
    // Onloading resumes on the other worker: the longest stretch of the run in which no
    // frame was answered by the cloud is the outage the kill caused (at 100 frames a
    // second the stretch is 10 ms otherwise).
    let mut onloaded: Vec<f64> = frames
        .iter()
        .filter(|f| f.bytes > 0 && !f.fallback && f.error.is_none())
        .map(|f| f.start_s)
        .collect();
    onloaded.sort_by(f64::total_cmp);
    let recovery = onloaded.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    eprintln!(
        "worker killed at {killed_s:.2} s: {} frames sent, {} answered by the cloud, {} \
         finished on the device after the cloud failed, {} device-only; {} second answers \
         and {} late answers counted where they arrived; onloading again {recovery:.2} s \
         later",
        s.frames, s.onloaded, s.fallbacks, s.device_only, s.duplicates, s.late_answers
    );
    assert_eq!(s.onloaded + s.fallbacks + s.device_only, s.frames, "{s:?}");
    assert!(
        recovery <= 2.0,
        "onloading resumed {recovery:.2} s after the kill"
    );
    assert!(onloaded.len() as f64 > 0.8 * s.frames as f64, "{s:?}");
}

/// The check above can fail: a worker that answers every frame twice (a test-only
/// fault) has each second answer counted by the agent where it arrives, and the check
/// of `answered_once` fails on them.
#[test]
fn a_second_answer_is_counted_where_it_arrives_and_fails_the_check() {
    let _one = one_at_a_time();
    let fleet = "test-duplicates";
    let (_c, control) = common::spawn_coordinator(fleet, "127.0.0.1:0", 0, &[]);
    let (_w, _) =
        common::spawn_worker_with(fleet, "w1", &control, &[("DYNO_TEST_ANSWER_TWICE", "1")]);
    std::thread::sleep(Duration::from_millis(700));
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("cam.jsonl");
    let cfg = common::cloud_only_agent(fleet, "cam", &control, 50.0, 3.0, &results);
    let (s, frames) = common::finished(common::spawn_agent(dir.path(), &cfg), &cfg);
    eprintln!(
        "a worker answering twice: {} frames, {} answered by the cloud, {} second answers \
         counted where they arrived, {} late",
        s.frames, s.onloaded, s.duplicates, s.late_answers
    );
    assert!(s.onloaded > 50, "{s:?}");
    // Every cloud answer came twice; those of the last frames in flight may arrive
    // after the agent stopped listening.
    assert!(
        s.duplicates <= s.onloaded && s.duplicates + cfg.in_flight as u64 >= s.onloaded,
        "{s:?}"
    );
    let check = std::panic::catch_unwind(|| common::assert_answered_once(&s, &frames));
    assert!(
        check.is_err(),
        "the check passed with {} duplicates",
        s.duplicates
    );
}

#[test]
fn a_killed_agent_leaves_the_fleet_within_the_heartbeat_timeout() {
    let _one = one_at_a_time();
    let fleet = "test-agent-killed";
    let dir = tempfile::tempdir().unwrap();
    // A scarce pool: one worker slot (one thread) for MobileNetV2 against three devices
    // ten times slower than this machine, each of which would fill it alone.
    let coordinator = dyno_actors::config::CoordinatorConfig {
        fleet: Fleet {
            id: fleet.into(),
            insecure: true,
            ..Fleet::default()
        },
        listen: "127.0.0.1:0".into(),
        data_listen: "127.0.0.1:0".into(),
        workers: 1,
        model: "mobilenet_v2".into(),
        mdns: false,
        fleet_aware: true,
        ..dyno_actors::config::CoordinatorConfig::default()
    };
    let timeout_s = coordinator.heartbeat_timeout_ms as f64 / 1e3;
    let path = dir.path().join("coordinator.toml");
    std::fs::write(&path, toml::to_string(&coordinator).unwrap()).unwrap();
    let (_c, ready) = spawn_ready(&[
        "coordinator",
        "--config",
        path.to_str().unwrap(),
        "--ready-json",
    ]);
    let control = ready["control"].as_str().unwrap().to_string();
    let mut agents: Vec<Proc> = (1..=3)
        .map(|i| {
            let cfg = AgentConfig {
                fleet: Fleet {
                    id: fleet.into(),
                    insecure: true,
                    ..Fleet::default()
                },
                id: format!("cam-{i}"),
                coordinators: vec![control.clone()],
                model: "mobilenet_v2".into(),
                class: "slow10x".into(),
                link: LinkConfig {
                    mbps: 50.0,
                    rtt_ms: 10.0,
                    ..LinkConfig::default()
                },
                source: Source::Synthetic { seed: i },
                duration_s: 30.0,
                policy: dyno::sched::Policy::Dyno,
                mdns: false,
                ..AgentConfig::default()
            };
            let path = dir.path().join(format!("cam-{i}.toml"));
            std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
            Proc::spawn(
                Command::new(env!("CARGO_BIN_EXE_dyno"))
                    .args(["agent", "--config", path.to_str().unwrap()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .unwrap()
        })
        .collect();
    // A device's planned share of the pool: its cloud seconds per second over the slots,
    // at the rate planned (the prediction's, or the onload budget below it, `null`: no
    // budget) or, `budgeted` false, at the prediction's rate (what it could use).
    let load = |st: &serde_json::Value, id: &str, budgeted: bool| -> f64 {
        let slots: f64 = st["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["slots"].as_f64().unwrap())
            .sum();
        st["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["id"] == id)
            .map(|d| {
                let p = &d["plan"]["prediction"];
                let budget = d["plan"]["rate_fps"].as_f64().filter(|_| budgeted);
                let rate = p["throughput"]
                    .as_f64()
                    .unwrap()
                    .min(budget.unwrap_or(f64::INFINITY));
                rate * p["cloud_s"].as_f64().unwrap() / slots
            })
            .sum()
    };
    let share = |st: &serde_json::Value, id: &str| load(st, id, true);
    // All three planned and sending frames, the pool planned full.
    let t = Instant::now();
    let before = loop {
        let st = common::status(&control, fleet);
        let devices = st["devices"].as_array().unwrap();
        let running = devices
            .iter()
            .filter(|d| d["plan"].is_object() && d["frames"].as_u64() > Some(0))
            .count();
        if running == 3 && st["pool_utilisation"].as_f64() > Some(0.9) {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The victim: the device with the largest share (the plan may keep one on the device).
    let ids = ["cam-1", "cam-2", "cam-3"];
    let v = (0..3)
        .max_by(|&a, &b| share(&before, ids[a]).total_cmp(&share(&before, ids[b])))
        .unwrap();
    let (victim_id, others) = (
        ids[v],
        ids.iter()
            .filter(|id| **id != ids[v])
            .copied()
            .collect::<Vec<_>>(),
    );
    let load_before = before["pool_utilisation"].as_f64().unwrap();
    let victim_before = share(&before, victim_id);
    let others_before: f64 = others.iter().map(|id| share(&before, id)).sum();
    let plans_before = before["plans_sent"].as_u64().unwrap();
    // SIGKILL one agent: it is gone from the fleet, and its load from the pool's plan,
    // within the heartbeat timeout.
    let mut victim = agents.remove(v);
    victim.child().kill().unwrap();
    let killed = Instant::now();
    let after = loop {
        let st = common::status(&control, fleet);
        let gone = st["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["id"] != victim_id);
        if gone {
            break st;
        }
        assert!(
            killed.elapsed().as_secs_f64() < timeout_s + 1.0,
            "{victim_id} still in the fleet after {:?}",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let released = killed.elapsed().as_secs_f64();
    let load_after = after["pool_utilisation"].as_f64().unwrap();
    let others_after: f64 = others.iter().map(|id| share(&after, id)).sum();
    eprintln!(
        "agent {victim_id} killed: out of the fleet after {released:.2} s (timeout {timeout_s} s); \
         pool planned {load_before:.3} -> {load_after:.3}; the victim's share {victim_before:.3} \
         went to the others: {others_before:.3} -> {others_after:.3}; devices left {}",
        after["devices"].as_array().unwrap().len()
    );
    assert!(released <= timeout_s, "{released:.2} s");
    assert_eq!(after["devices"].as_array().unwrap().len(), 2);
    // The pool was full, and the two left now plan at least half of what was the
    // victim's on top of theirs, or as much as they can use: each device's own
    // throughput (its window and its stages) bounds what it takes from the pool.
    let usable: f64 = others.iter().map(|id| load(&after, id, false)).sum();
    let wanted = (others_before + 0.5 * victim_before).min(0.9 * usable);
    assert!(
        others_after >= wanted,
        "{others_before:.3} -> {others_after:.3} (victim {victim_before:.3}, they could use \
         {usable:.3}): {after}"
    );
    // The two left go on onloading on the pool, re-planned without the victim.
    let frames = |st: &serde_json::Value| -> u64 {
        st["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["frames"].as_u64().unwrap())
            .sum()
    };
    std::thread::sleep(Duration::from_millis(500));
    let later = common::status(&control, fleet);
    assert!(frames(&later) > frames(&after), "{later}");
    assert!(later["devices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["plan"]["worker"].is_string()));
    assert!(later["plans_sent"].as_u64().unwrap() >= plans_before);
}

#[test]
fn a_cut_link_falls_back_to_the_device_and_onloads_again_when_it_returns() {
    let _one = one_at_a_time();
    // MobileNetV2 on a slow10x device through the real runtime (actors in one process):
    // 50 Mbit/s, then nothing for 10 s, then 50 Mbit/s again.
    let home = dyno::home::Home::discover();
    let e = dyno::experiment::Experiment::from_toml(
        r#"
name = "link-cut-test"
model = "mobilenet_v2"
duration_s = 20.0
policies = ["dyno"]
slo = "config/slo/throughput.toml"
replan_s = 0.5
[cloud]
workers = 1
[[devices]]
class = "slow10x"
steps = [[0.0, 50.0], [4.0, 0.0], [14.0, 50.0]]
rtt_ms = 20.0
in_flight = 3
"#,
    )
    .unwrap();
    let out = dyno_actors::experiment::live(&e, &home, false).unwrap();
    let frames: Vec<_> = out.frames.iter().map(|(_, _, f)| f).collect();
    let blocks = 20;
    let onloaded = |f: &&&dyno::experiment::sim::SimFrame| {
        (f.split as usize) < blocks && f.bytes > 0.0 && f.end_s - f.start_s < 1.0
    };
    let during: Vec<_> = frames
        .iter()
        .filter(|f| f.start_s >= 5.0 && f.start_s < 14.0)
        .collect();
    let back = frames
        .iter()
        .filter(|f| f.start_s >= 14.0)
        .filter(onloaded)
        .map(|f| f.start_s - 14.0)
        .fold(f64::INFINITY, f64::min);
    eprintln!(
        "link cut 4-14 s: {} frames before, {} answered during the cut ({:.1}/s), \
         onloading again {back:.2} s after the link returned; {} frames in all",
        frames.iter().filter(|f| f.start_s < 4.0).count(),
        during.len(),
        during.len() as f64 / 9.0,
        frames.len()
    );
    // The device keeps answering (device-only runs 9.5 frames/s on this class).
    assert!(
        during.len() as f64 / 9.0 > 3.0,
        "{} frames during the cut",
        during.len()
    );
    assert!(
        back <= 2.0,
        "onloading again {back:.2} s after the link returned"
    );
}

#[test]
fn a_restarted_coordinator_gets_its_fleet_back_without_losing_a_frame() {
    let _one = one_at_a_time();
    let fleet = "test-coordinator-restart";
    let control = format!("127.0.0.1:{}", common::free_port());
    let coordinator = || common::spawn_coordinator(fleet, &control, 0, &[]).0;
    let mut c = coordinator();
    let (_w, _) = common::spawn_worker(fleet, "w1", &control);
    // Three agents that always onload, 16 s of frames at 40 a second each.
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let agents: Vec<_> = (1..=3)
        .map(|i| {
            let results = dir.path().join(format!("cam-{i}.jsonl"));
            let cfg = common::cloud_only_agent(
                fleet,
                &format!("cam-{i}"),
                &control,
                40.0,
                16.0,
                &results,
            );
            let child = common::spawn_agent(dir.path(), &cfg);
            (child, cfg)
        })
        .collect();
    for i in 1..=3 {
        assigned_worker(&control, fleet, &format!("cam-{i}"));
    }
    // Four seconds in, SIGKILL the coordinator; two seconds later start it again on the
    // same address.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(started.elapsed()));
    c.child().kill().unwrap();
    let killed_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let _c2 = coordinator();
    let restarted_s = started.elapsed().as_secs_f64();
    // Every agent and the worker register again, each device planned onto the worker.
    let back = loop {
        let st = common::status(&control, fleet);
        let planned = st["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["plan"]["worker"].is_string())
            .count();
        if planned == 3 && st["workers"].as_array().unwrap().len() == 1 {
            break started.elapsed().as_secs_f64() - restarted_s;
        }
        assert!(
            started.elapsed().as_secs_f64() - restarted_s < 10.0,
            "the fleet is not back: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Each device registered once with the new coordinator, the worker once, and no
    // more over the next three seconds.
    std::thread::sleep(Duration::from_secs(3));
    let st = common::status(&control, fleet);
    let registrations: Vec<u64> = st["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["registrations"].as_u64().unwrap())
        .collect();
    let mut answered_during = Vec::new();
    let mut onloading_again: f64 = 0.0;
    let (mut sent, mut cloud, mut fallbacks, mut device_only, mut second) = (0, 0, 0, 0, 0);
    for (child, cfg) in agents {
        // Every frame answered exactly once, through the restart.
        let (s, frames) = common::answered_once(child, &cfg);
        sent += s.frames;
        cloud += s.onloaded;
        fallbacks += s.fallbacks;
        device_only += s.device_only;
        second += s.duplicates;
        // The agent kept serving while no coordinator was up.
        answered_during.push(
            frames
                .iter()
                .filter(|f| f.start_s >= killed_s && f.start_s < restarted_s)
                .count(),
        );
        let first = frames
            .iter()
            .filter(|f| f.start_s >= restarted_s && f.bytes > 0 && !f.fallback)
            .map(|f| f.start_s - restarted_s)
            .fold(f64::INFINITY, f64::min);
        onloading_again = onloading_again.max(first);
    }
    eprintln!(
        "coordinator killed at {killed_s:.2} s, restarted at {restarted_s:.2} s: {sent} frames \
         sent: {cloud} answered by the cloud, {fallbacks} finished on the device after the \
         cloud failed, {device_only} device-only; {second} second answers counted where \
         answers arrive; answered while it was down: {answered_during:?}; \
         all re-registered {back:.2} s after the restart (registrations {registrations:?}); \
         every agent onloading again within {onloading_again:.2} s"
    );
    assert!(back <= 5.0, "re-registered after {back:.2} s");
    assert_eq!(registrations, vec![1, 1, 1], "{st}");
    assert!(
        answered_during.iter().all(|n| *n > 20),
        "{answered_during:?}"
    );
    assert!(onloading_again <= 5.0, "{onloading_again:.2} s");
}
