//! The runtime end to end: all actors in one process; real processes on loopback; bad
//! peers. `fashion_cnn` on its real test images keeps these fast.
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use dyno::home::Home;
use dyno_actors::agent::{self, AgentSummary};
use dyno_actors::config::{
    AgentConfig, CoordinatorConfig, Fleet, LinkConfig, Source, WorkerConfig,
};
use dyno_actors::{coordinator, worker};

mod common;
use common::Proc;

/// One lossless policy that always onloads, one that chooses, and DynO.
const POLICIES: [&str; 3] = ["cloud-only", "neurosurgeon", "dyno"];

fn insecure() -> Fleet {
    Fleet {
        id: "test-fleet".into(),
        insecure: true,
        ..Fleet::default()
    }
}

/// Three devices of different classes, links and policies.
fn agents(coordinator: &str, frames: u64, policies: [&str; 3]) -> Vec<AgentConfig> {
    [
        ("cam-fast", "host", 100.0),
        ("cam-mid", "slow5x", 5.0),
        ("cam-slow", "slow10x", 0.5),
    ]
    .iter()
    .zip(policies)
    .map(|(&(id, class, mbps), policy)| AgentConfig {
        fleet: insecure(),
        id: id.into(),
        coordinators: vec![coordinator.into()],
        model: "fashion_cnn".into(),
        class: class.into(),
        link: LinkConfig {
            mbps,
            rtt_ms: 10.0,
            ..LinkConfig::default()
        },
        source: Source::FashionMnist,
        frames,
        verify: true,
        policy: policy.parse().unwrap(),
        mdns: false,
        ..AgentConfig::default()
    })
    .collect()
}

/// Plans that send fp32 (or nothing) must answer exactly as the local model; cloud-only
/// sends a JPEG, as a camera would.
fn lossless(policy: &str) -> bool {
    matches!(policy, "neurosurgeon" | "device-only")
}

fn check(s: &AgentSummary, frames: u64, exact: bool) {
    assert_eq!(s.frames, frames, "{s:?}");
    assert_eq!(s.results + s.errors, frames, "every frame ends once: {s:?}");
    assert_eq!(s.errors, 0, "{s:?}");
    assert_eq!(s.duplicates, 0, "{s:?}");
    assert_eq!(s.verified, frames, "{s:?}");
    if exact {
        assert_eq!(
            s.mismatches, 0,
            "lossless plans answer as the local model: {s:?}"
        );
    } else {
        assert!(
            s.mismatches * 50 <= frames,
            "at most 2 % disagree within 1 point: {s:?}"
        );
    }
}

#[test]
fn all_actors_in_one_process() {
    let home = Home::discover();
    let summaries: Vec<(AgentSummary, &str)> = actix::System::new().block_on(async move {
        let cfg = CoordinatorConfig {
            fleet: insecure(),
            listen: "127.0.0.1:0".into(),
            data_listen: "127.0.0.1:0".into(),
            workers: 1,
            model: "fashion_cnn".into(),
            replan_ms: 200,
            mdns: false,
            ..CoordinatorConfig::default()
        };
        let c = coordinator::start(&cfg, &home).await.unwrap();
        let control = c.control.to_string();
        worker::start(
            &WorkerConfig {
                fleet: insecure(),
                name: "w2".into(),
                coordinators: vec![control.clone()],
                listen: "127.0.0.1:0".into(),
                model: "fashion_cnn".into(),
                mdns: false,
                ..WorkerConfig::default()
            },
            &home,
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        for policies in [POLICIES, ["dyno", "dyno", "dyno"]] {
            let runs = agents(&control, 150, policies)
                .into_iter()
                .map(|a| agent::run(a, home.clone()));
            for (s, p) in futures_util::future::join_all(runs)
                .await
                .into_iter()
                .zip(policies)
            {
                out.push((s.unwrap(), p));
            }
        }
        let status = c.scheduler.send(coordinator::GetStatus).await.unwrap();
        assert_eq!(status.workers.len(), 2, "{status:?}");
        out
    });
    let mut onloaded = 0;
    for (s, policy) in &summaries {
        check(s, 150, lossless(policy));
        onloaded += s.onloaded;
        eprintln!(
            "{} ({policy}): {} frames, splits {:?}, {:.1} fps, {} of {} differ from the local model",
            s.id, s.frames, s.splits, s.fps, s.mismatches, s.verified
        );
    }
    assert!(onloaded > 0, "some frames went to the cloud");
}

#[test]
fn real_processes_on_loopback() {
    let (_c, control) = common::spawn_coordinator("test-fleet", "127.0.0.1:0", 0, &[]);
    let _workers: Vec<Proc> = (1..=2)
        .map(|i| common::spawn_worker("test-fleet", &format!("w{i}"), &control).0)
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let dir = tempfile::tempdir().unwrap();
    let frames = 120;
    let children: Vec<(String, Proc)> = agents(&control, frames, POLICIES)
        .into_iter()
        .map(|a| (a.id.clone(), common::spawn_agent(dir.path(), &a)))
        .collect();
    let mut onloaded = 0;
    for ((id, child), policy) in children.into_iter().zip(POLICIES) {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{id} failed");
        let s: AgentSummary = serde_json::from_slice(&out.stdout).unwrap();
        check(&s, frames, lossless(policy));
        onloaded += s.onloaded;
        eprintln!(
            "{} ({policy}): {} frames, splits {:?}, {:.1} fps, {} of {} differ from the local model",
            s.id, s.frames, s.splits, s.fps, s.mismatches, s.verified
        );
    }
    assert!(onloaded > 0);
}

#[test]
fn bad_peers_are_refused_and_the_fleet_keeps_working() {
    let key = "0123456789abcdef-test";
    let metrics = common::free_port();
    let mut args = common::coordinator_args("test-peers", "127.0.0.1:0", 1);
    args.extend(["--metrics".into(), format!("127.0.0.1:{metrics}")]);
    let c = common::spawn_logged(&args, &[("DYNO_FLEET_KEY", key)]);
    let control = c.ready["control"].as_str().unwrap().to_string();
    // Garbage, an oversized frame, a wrong version, a wrong key.
    let mut g = TcpStream::connect(&control).unwrap();
    g.write_all(b"\x00\x00\x00\x0cGET / HTTP/1").unwrap();
    let mut o = TcpStream::connect(&control).unwrap();
    o.write_all(&(1u32 << 31).to_be_bytes()).unwrap();
    let hello = dyno::wire::encode(&dyno::wire::Message::Hello {
        version: 99,
        role: dyno::wire::Role::Agent,
        fleet: "test-peers".into(),
        name: "old".into(),
        insecure: false,
    });
    let mut v = TcpStream::connect(&control).unwrap();
    v.write_all(&(hello.len() as u32).to_be_bytes()).unwrap();
    v.write_all(&hello).unwrap();
    let wrong = Command::new(env!("CARGO_BIN_EXE_dyno"))
        .args([
            "agent",
            "--no-mdns",
            "--fleet",
            "test-peers",
            "--model",
            "fashion_cnn",
            "--coordinator",
            &control,
            "--frames",
            "5",
            "--id",
            "intruder",
        ])
        .env("DYNO_FLEET_KEY", "not-the-key-at-all-xx")
        .output()
        .unwrap();
    // An agent with the wrong key still answers its frames, on the device.
    assert!(wrong.status.success());
    let s: AgentSummary = serde_json::from_slice(&wrong.stdout).unwrap();
    assert_eq!((s.results, s.onloaded), (5, 0), "{s:?}");
    // The fleet keeps working: a good agent onloads.
    let good = Command::new(env!("CARGO_BIN_EXE_dyno"))
        .args([
            "agent",
            "--no-mdns",
            "--fleet",
            "test-peers",
            "--model",
            "fashion_cnn",
            "--coordinator",
            &control,
            "--frames",
            "60",
            "--id",
            "good",
            "--verify",
        ])
        .args(common::ONLOADING_DEVICE)
        .env("DYNO_FLEET_KEY", key)
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let s: AgentSummary = serde_json::from_slice(&good.stdout).unwrap();
    assert_eq!(s.results, 60);
    assert!(s.onloaded > 0, "{s:?}");
    drop((g, o, v));
    // Every refused peer is counted (the wrong-key agent retries, so at least four).
    let m = common::wait_for(metrics, "dyno_refused_peers_total", 3.0);
    eprintln!("refused: {}", common::value(&m, "dyno_refused_peers_total"));
    let log = c.log();
    for needle in [
        "does not decode",
        "frame size too big",
        "protocol version 99",
        "does not hold the fleet key",
    ] {
        assert!(log.contains(needle), "`{needle}` not logged:\n{log}");
    }
}

#[test]
fn an_experiment_runs_live_through_the_runtime() {
    live_experiment(&dyno_actors::experiment::Runner::InProcess);
}

#[test]
fn an_experiment_runs_live_as_real_processes() {
    live_experiment(&dyno_actors::experiment::Runner::Processes {
        exe: env!("CARGO_BIN_EXE_dyno").into(),
    });
}

fn live_experiment(runner: &dyno_actors::experiment::Runner) {
    let home = Home::discover();
    let e = dyno::experiment::Experiment::from_toml(
        r#"
name = "live-test"
model = "fashion_cnn"
duration_s = 3.0
policies = ["device-only", "cloud-only", "dyno-fleet"]
[cloud]
workers = 1
[[devices]]
class = "slow5x"
count = 2
mbps = 50.0
rtt_ms = 5.0
[[devices]]
class = "slow5x"
mbps = 50.0
rtt_ms = 5.0
source = "synthetic"
"#,
    )
    .unwrap();
    let out = dyno_actors::experiment::live_with(&e, &home, false, runner).unwrap();
    assert_eq!(out.rows.len(), 3);
    let row = |p: &str| out.rows.iter().find(|r| r.policy == p).unwrap();
    assert!(row("device-only").frames > 0 && row("cloud-only").frames > 0);
    assert_eq!(row("device-only").bytes_per_inference, 0.0);
    // Real processes say how fast this machine ran a forward, before and after, beside
    // the profile the simulator uses.
    match (runner, out.machine) {
        (dyno_actors::experiment::Runner::InProcess, m) => assert_eq!(m, None),
        (_, Some(m)) => assert!(
            m.before_ms > 0.0 && m.after_ms > 0.0 && m.profile_ms > 0.0,
            "{m:?}"
        ),
        (_, None) => panic!("no speed of the machine"),
    }
    // A time series per device and policy: the link's rate and the plan in force.
    for p in ["device-only", "cloud-only", "dyno-fleet"] {
        let ts: Vec<_> = out.ticks.iter().filter(|(q, _, _)| q == p).collect();
        assert!(ts.len() >= 3 * 3, "{p}: {} ticks", ts.len());
        assert!(ts.iter().all(|(_, _, t)| t.true_mbps == 50.0));
    }
    assert!(out
        .ticks
        .iter()
        .filter(|(q, _, _)| q == "device-only")
        .all(|(_, _, t)| t.split as usize == 7));
    // Cloud-only sent each frame as a JPEG, counted by the agents as they sent it: under
    // 1,000 bytes (the fp32 input and its header are 3,200).
    let cloud = row("cloud-only").bytes_per_inference;
    assert!(cloud > 0.0 && cloud < 1_000.0, "{cloud} bytes");
    assert!((row("device-only").device_share - 1.0).abs() < 1e-9);
    assert!(
        row("cloud-only").device_share < 0.5,
        "{:?}",
        row("cloud-only")
    );
    for r in &out.rows {
        eprintln!(
            "{}: {:.1} inf/s, p50 {:.1} ms, {:.0} bytes",
            r.policy, r.throughput, r.latency_p50_ms, r.bytes_per_inference
        );
    }
}
