//! Several hosts: network namespaces made by this test, each with its own D-Bus and
//! avahi-daemon; the coordinator is found over mDNS (the agent has no static address);
//! the agent's uplink is shaped with `tc tbf`. When its bandwidth is cut from 50 to
//! 2 Mbit/s, its plan must move to a later split within a few seconds. Everything the
//! test made is removed afterwards. Needs root (and `ip`, `tc`, `avahi-daemon`);
//! elsewhere it is skipped with a message saying why (under `CI=true` it fails instead).
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const NS_C: &str = "dyno-t-coord";
const NS_A: &str = "dyno-t-agent";

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn why_not() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        return Some("not root: network namespaces and tc need it".into());
    }
    for tool in ["ip", "tc", "avahi-daemon", "dbus-daemon", "unshare"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!("`{tool}` is missing: run scripts/setup.sh"));
        }
    }
    None
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Removes the namespaces and their daemons, whatever happened.
struct Net;

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [NS_C, NS_A] {
            let dir = format!("/run/dyno-netns/{ns}");
            for pid in [format!("{dir}/avahi.pid"), format!("{dir}/bus.pid")] {
                if let Ok(p) = std::fs::read_to_string(&pid) {
                    let _ = Command::new("kill").arg(p.trim()).output();
                }
            }
            // Whatever else still runs in the namespace.
            let _ = Command::new("sh")
                .args(["-c", &format!("ip netns pids {ns} | xargs -r kill -9")])
                .output();
            let _ = sh(&["ip", "netns", "del", ns]);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn setup() -> Result<(Net, String, String), String> {
    let net = Net;
    drop(Net); // a previous run's leftovers
    for ns in [NS_C, NS_A] {
        sh(&["ip", "netns", "add", ns])?;
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    }
    sh(&[
        "ip", "link", "add", "dyt-c", "netns", NS_C, "type", "veth", "peer", "name", "dyt-a",
        "netns", NS_A,
    ])?;
    sh(&[
        "ip",
        "-n",
        NS_C,
        "addr",
        "add",
        "10.77.0.1/24",
        "dev",
        "dyt-c",
    ])?;
    sh(&[
        "ip",
        "-n",
        NS_A,
        "addr",
        "add",
        "10.77.0.2/24",
        "dev",
        "dyt-a",
    ])?;
    for (ns, dev) in [(NS_C, "dyt-c"), (NS_A, "dyt-a")] {
        sh(&["ip", "-n", ns, "link", "set", dev, "up", "multicast", "on"])?;
    }
    shape(50)?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/avahi.sh");
    let mut buses = Vec::new();
    for ns in [NS_C, NS_A] {
        let out = Command::new(script)
            .env("DYNO_NETNS", ns)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "avahi.sh {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        buses.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    Ok((net, buses[0].clone(), buses[1].clone()))
}

/// Shapes the agent's uplink (its egress) to `mbit` Mbit/s.
fn shape(mbit: u32) -> Result<(), String> {
    let rate = format!("{mbit}mbit");
    let verb = if mbit == 50 { "replace" } else { "change" };
    sh(&[
        "ip", "netns", "exec", NS_A, "tc", "qdisc", verb, "dev", "dyt-a", "root", "tbf", "rate",
        &rate, "burst", "64kb", "latency", "3s",
    ])
}

use dyno_actors::child::Proc;

fn in_ns(ns: &str, bus: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        ns,
        "env",
        &format!("DBUS_SYSTEM_BUS_ADDRESS={bus}"),
        env!("CARGO_BIN_EXE_dyno"),
    ]);
    c.args(args);
    c
}

#[test]
fn across_namespaces_found_over_mdns_and_following_a_shaped_link() {
    if let Some(why) = why_not() {
        // In CI a test that cannot run fails: a skip there would pass silently.
        assert!(
            std::env::var("CI").map_or(true, |v| v.is_empty() || v == "false"),
            "CI=true and the multi-host test cannot run: {why}"
        );
        eprintln!("SKIPPED across_namespaces_found_over_mdns_and_following_a_shaped_link: {why}");
        return;
    }
    let (_net, bus_c, bus_a) = setup().unwrap();
    let mut cmd = in_ns(
        NS_C,
        &bus_c,
        &[
            "coordinator",
            "--insecure",
            "--fleet",
            "netns-test",
            "--model",
            "mobilenet_v2",
            "--listen",
            "10.77.0.1:7700",
            "--data-listen",
            "10.77.0.1:7701",
            "--workers",
            "1",
            "--ready-json",
        ],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut coord = Proc::spawn(&mut cmd).unwrap();
    let mut line = String::new();
    BufReader::new(coord.child().stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("10.77.0.1:7700"), "{line}");
    let _coord = coord;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        r#"
id = "cam-ns"
model = "mobilenet_v2"
class = "slow10x"
coordinators = []          # only what mDNS finds
frames = 0
in_flight = 2
timeout_s = 5.0
[fleet]
id = "netns-test"
insecure = true
[link]                     # no user-space shaping: tc does it
mbps = 100000.0
rtt_ms = 0.0
[source]
kind = "synthetic"
seed = 3
"#,
    )
    .unwrap();
    let mut agent = Proc::spawn(
        in_ns(NS_A, &bus_a, &["agent", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let stderr = agent.child().stderr.take().unwrap();
    let _agent = agent;
    // Plans as the agent logs them: (when, split).
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), l));
        }
    });
    let split_of = |l: &str| -> Option<u16> {
        let i = l.find("plan=split ")? + "plan=split ".len();
        l[i..].split_whitespace().next()?.parse().ok()
    };
    let mut found_mdns = false;
    let wait = |rx: &mpsc::Receiver<(Instant, String)>,
                found: &mut bool,
                until: Instant,
                pred: &dyn Fn(u16) -> bool|
     -> Option<(Instant, u16)> {
        while let Ok((t, l)) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            if !l.contains("finishing on the device") {
                eprintln!("agent: {l}");
            }
            if l.contains("found over mDNS") && l.contains("10.77.0.1:7700") {
                *found = true;
            }
            if l.contains("dyno_actors::agent") {
                if let Some(s) = split_of(&l) {
                    if l.contains("worker=Some") && pred(s) {
                        return Some((t, s));
                    }
                }
            }
        }
        None
    };
    // At 50 Mbit/s a device 10x slower onloads early.
    let (_, mut early) = wait(
        &rx,
        &mut found_mdns,
        Instant::now() + Duration::from_secs(30),
        &|s| s < 20,
    )
    .expect("no onloading plan within 30 s at 50 Mbit/s");
    assert!(found_mdns, "the coordinator was not found over mDNS");
    // Let the estimate settle, then cut the link.
    std::thread::sleep(Duration::from_secs(3));
    // The plan in force at the cut: the last one logged.
    while let Ok((_, l)) = rx.try_recv() {
        if l.contains("dyno_actors::agent") && l.contains("worker=Some") {
            if let Some(s) = split_of(&l) {
                early = s;
            }
        }
    }
    eprintln!("plan in force at 50 Mbit/s: split {early}");
    let cut = Instant::now();
    shape(2).unwrap();
    let (t, late) = wait(&rx, &mut found_mdns, cut + Duration::from_secs(20), &|s| {
        s > early
    })
    .unwrap_or_else(|| {
        panic!("the plan stayed at split {early} or earlier for 20 s after the cut to 2 Mbit/s")
    });
    let took = t - cut;
    eprintln!(
        "plan moved from split {early} to split {late} {:.1} s after the cut from 50 to 2 Mbit/s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}
