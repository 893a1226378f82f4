//! The testbed (`dyno testbed run`): a run killed with SIGKILL leaves its namespaces,
//! cgroups and processes behind; the next run removes them at its start, runs every
//! device in its own namespace under its class's CPU quota with its link shaped by tc
//! (the kernel's rate following the trace's step), its agents finding the coordinator
//! over mDNS (an Avahi daemon per namespace), and leaves nothing behind; a run stopped
//! by SIGINT or SIGTERM removes its testbed and exits 130. Needs root
//! (namespaces, tc, cgroups); elsewhere it is skipped with the reason, and under
//! `CI=true` it fails instead.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dyno_actors::child::Proc;
use dyno_actors::testbed::{self, cgroup::Hierarchy, Calibration};

mod common;

/// One testbed per machine: a run removes every other's hosts, so the tests take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(testbed::net::PREFIX))
        .map(String::from)
        .collect()
}

fn cgroups(h: &Hierarchy) -> Vec<String> {
    std::fs::read_dir(h.parent())
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// No testbed namespace, no cgroup under it, and not its parent cgroup: what a run
/// (`when`) must leave.
fn assert_nothing_left(h: &Hierarchy, when: &str) {
    let left = (namespaces(), cgroups(h));
    eprintln!("{when}: left {left:?}");
    assert!(
        left.0.is_empty() && left.1.is_empty(),
        "{when}: left {left:?}"
    );
    assert!(
        !h.parent().exists(),
        "{when}: {} is still there",
        h.parent().display()
    );
}

/// An experiment of two slow10x devices whose links step from 20 to 5 Mbit/s at 5 s;
/// the agents find the coordinator by `discovery` (`static` or `mdns`).
fn experiment(dir: &Path, duration_s: f64, discovery: &str) -> std::path::PathBuf {
    let path = dir.join(format!("testbed-{discovery}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
name = "testbed-test"
model = "mobilenet_v2"
duration_s = {duration_s}
policies = ["dyno"]
devices_file = "config/testbed-devices.toml"
[cloud]
workers = 1
[[devices]]
class = "slow10x"
count = 2
steps = [[0.0, 20.0], [5.0, 5.0]]
rtt_ms = 10.0
in_flight = 2
source = "synthetic"
[testbed]
discovery = "{discovery}"
"#
        ),
    )
    .unwrap();
    path
}

fn dyno() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dyno"))
}

/// Starts `dyno testbed run` of [`experiment`] (output to `out`) and returns once its
/// three hosts are up and, 3 s later, its agents run inside their namespaces.
fn started(dir: &Path, out: &Path, duration_s: f64, h: &Hierarchy) -> Proc {
    let run = Proc::spawn(
        dyno()
            .args(["testbed", "run", "--json", "--out"])
            .arg(out)
            .arg(experiment(dir, duration_s, "static"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let t = Instant::now();
    while namespaces().len() < 3 || cgroups(h).len() < 3 {
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", namespaces());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    run
}

#[test]
fn a_killed_run_is_cleaned_by_the_next_which_runs_under_quotas_and_tc_and_leaves_nothing() {
    if common::skipped("the testbed test", testbed::why_not()) {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let h = Hierarchy::detect().unwrap();
    let home = dyno::home::Home::discover();
    let cal = Calibration::load(&testbed::default_calibration(&home)).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // A run killed with SIGKILL once its hosts are up: its leftovers stay.
    let mut killed = started(dir.path(), &dir.path().join("killed"), 60.0, &h);
    killed.child().kill().unwrap();
    killed.child().wait().unwrap();
    let left = (namespaces(), cgroups(&h));
    eprintln!(
        "after SIGKILL: namespaces {:?}, cgroups {:?}",
        left.0, left.1
    );
    assert_eq!(left.0.len(), 3, "{left:?}");
    assert!(left.1.len() >= 3, "{left:?}");

    // The next run: it removes them first, runs on the testbed, and removes its own.
    let out = dir.path().join("run");
    let run = Proc::spawn(
        dyno()
            .args(["testbed", "run", "--json", "--out"])
            .arg(&out)
            .arg(experiment(dir.path(), 10.0, "mdns"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .unwrap();
    // While it runs: device 0's cgroup has its class's quota.
    let quota_file = match &h {
        Hierarchy::V1(_) => "cpu.cfs_quota_us",
        Hierarchy::V2(_) => "cpu.max",
    };
    let cores = cal.cores("slow10x").unwrap();
    let want = (cores * testbed::period_us(cores) as f64).round() as u64;
    let t = Instant::now();
    let quota = loop {
        let q = std::fs::read_to_string(h.parent().join("d0").join(quota_file));
        if let Ok(q) = q {
            break q;
        }
        assert!(t.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(50));
    };
    let got: u64 = quota.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(got, want, "device 0's quota");
    // The cloud's group has the most weight the kernel takes, a device's the default.
    let (weight_file, most, default) = match &h {
        Hierarchy::V1(_) => ("cpu.shares", 262_144, 1024),
        Hierarchy::V2(_) => ("cpu.weight", 10_000, 100),
    };
    let weight = |group: &str| -> u64 {
        let w = std::fs::read_to_string(h.parent().join(group).join(weight_file)).unwrap();
        w.trim().parse().unwrap()
    };
    assert_eq!(weight("cloud"), most, "the cloud's weight");
    assert_eq!(weight("d0"), default, "device 0's weight");
    let o = run.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_nothing_left(&h, "after the run");

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["mode"], "testbed");
    let row = &summary["rows"][0];
    let fps = row["throughput"].as_f64().unwrap();
    eprintln!(
        "testbed: {fps:.1} inferences/s, mean {:.1} ms",
        row["latency_mean_ms"].as_f64().unwrap()
    );
    // Two devices ten times slower than the profile: at least their device-only rate.
    assert!(fps > 5.0, "{row}");
    // The kernel's uplink rate followed the trace: 20 Mbit/s before the step at 5 s,
    // 5 after (`tc -s qdisc`, every 0.5 s).
    let qdisc = std::fs::read_to_string(out.join("qdisc.csv")).unwrap();
    let mut before = Vec::new();
    let mut later = Vec::new();
    for l in qdisc.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        let (t, dev, dir, kernel): (f64, &str, &str, f64) =
            (f[2].parse().unwrap(), f[3], f[4], f[6].parse().unwrap());
        if dev == "0" && dir == "up" {
            if t < 4.8 {
                before.push(kernel);
            } else if t > 5.3 {
                later.push(kernel);
            }
        }
    }
    eprintln!("kernel uplink rate: {before:?} then {later:?}");
    assert!(before.len() >= 5 && later.len() >= 5, "{qdisc}");
    assert!(before.iter().all(|r| (r - 20.0).abs() < 0.5), "{before:?}");
    assert!(later.iter().all(|r| (r - 5.0).abs() < 0.2), "{later:?}");
}

/// Ctrl-C (SIGINT) and SIGTERM in the middle of a run: the handler removes the testbed
/// (namespaces, cgroups, and with them the qdiscs on their veths) and exits 130.
#[test]
fn a_run_stopped_by_sigint_or_sigterm_removes_its_testbed() {
    if common::skipped("the testbed signal test", testbed::why_not()) {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let h = Hierarchy::detect().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, signal) in [("SIGINT", libc::SIGINT), ("SIGTERM", libc::SIGTERM)] {
        let mut run = started(dir.path(), &dir.path().join(name), 60.0, &h);
        let pid = run.child().id() as i32;
        // SAFETY: kill has no memory preconditions; the child is ours and not reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let t = Instant::now();
        let status = loop {
            if let Some(s) = run.child().try_wait().unwrap() {
                break s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{name}: still running"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        eprintln!("after {name}: exit {status:?}");
        assert_eq!(status.code(), Some(130), "{name}");
        assert_nothing_left(&h, name);
    }
}
