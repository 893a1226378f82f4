//! Several hosts: the testbed's network (`dyno_actors::testbed::net`) with one device,
//! each namespace with its own D-Bus and avahi-daemon; the coordinator is found over
//! mDNS (the agent has no static address); the agent's uplink is shaped with `tc tbf`.
//! When its bandwidth is cut from 50 to 2 Mbit/s, its plan must move to a later split
//! within a few seconds. A second test cuts a saturated link and checks that the kernel
//! keeps sending. Everything the tests made is removed afterwards. Needs root (and
//! `ip`, `tc`, `avahi-daemon`); elsewhere it is skipped with a message saying why (under
//! `CI=true` it fails instead).
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dyno_actors::testbed::net::{self, Direction, Net, CLOUD_IP, CLOUD_NS};

mod common;

fn why_not() -> Option<String> {
    if let Some(why) = dyno_actors::testbed::why_not() {
        return Some(why);
    }
    for tool in ["avahi-daemon", "dbus-daemon", "unshare"] {
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

/// One testbed network at a time: the two tests here run in one binary.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn skip(test: &str) -> bool {
    common::skipped(test, why_not())
}

/// A link saturated at 50 Mbit/s, cut to 2: the kernel must go on sending at 2. (A tbf
/// whose queue holds a packet larger than its new bucket never sends again; the
/// testbed's interfaces hand it MTU-sized packets so that none is.)
#[test]
fn a_rate_cut_on_a_saturated_link_never_stalls_it() {
    if skip("a_rate_cut_on_a_saturated_link_never_stalls_it") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    dyno_actors::testbed::clean_up();
    let net = Net::create(1, None).unwrap();
    net.shape(0, Direction::Up, 50.0).unwrap();
    // A receiver in the cloud's namespace, a sender in the device's sending as fast as
    // the link takes it.
    let listener = std::thread::spawn(|| {
        net::enter(CLOUD_NS).unwrap();
        let l = std::net::TcpListener::bind((CLOUD_IP, 7790)).unwrap();
        let (mut s, _) = l.accept().unwrap();
        // Ends when the sender stops (or a stalled link carries nothing for 2 s).
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = std::io::copy(&mut s, &mut std::io::sink());
    });
    std::thread::sleep(Duration::from_millis(200));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            net::enter(&net::device_ns(0)).unwrap();
            let mut s = std::net::TcpStream::connect((CLOUD_IP, 7790)).unwrap();
            s.set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let block = vec![7u8; 1 << 16];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = s.write(&block);
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let (_, at_50) = net.qdisc_stats(0, Direction::Up).unwrap();
    net.shape(0, Direction::Up, 2.0).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (_, from) = net.qdisc_stats(0, Direction::Up).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (rate, to) = net.qdisc_stats(0, Direction::Up).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mbps = 8.0 * (to - from) as f64 / 2.0 / 1e6;
    eprintln!(
        "saturated: {:.1} MB sent at 50 Mbit/s; after the cut to {rate} Mbit/s, {mbps:.2} Mbit/s",
        at_50 as f64 / 1e6
    );
    drop(net);
    let _ = sender.join();
    let _ = listener.join();
    assert!(
        at_50 > 5_000_000,
        "the link carried {at_50} bytes in 2 s at 50 Mbit/s"
    );
    assert!(
        (1.6..2.4).contains(&mbps),
        "after the cut to 2 Mbit/s the tbf sent {mbps:.2} Mbit/s (0: it stalled)"
    );
}

/// The testbed's network with one device: the coordinator's namespace and the agent's,
/// each with its own D-Bus and avahi-daemon, the agent's uplink at 50 Mbit/s. Removed
/// (with whatever a previous run left) when dropped.
fn setup() -> anyhow::Result<Net> {
    dyno_actors::testbed::clean_up();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/avahi.sh");
    let net = Net::create(1, Some(std::path::Path::new(script)))?;
    net.shape(0, Direction::Up, 50.0)?;
    Ok(net)
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
    if skip("across_namespaces_found_over_mdns_and_following_a_shaped_link") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let net = setup().unwrap();
    let (ns_a, listen, data) = (
        net::device_ns(0),
        format!("{CLOUD_IP}:7700"),
        format!("{CLOUD_IP}:7701"),
    );
    let (bus_c, bus_a) = (
        net.bus(CLOUD_NS).unwrap().to_string(),
        net.bus(&ns_a).unwrap().to_string(),
    );
    let mut cmd = in_ns(
        CLOUD_NS,
        &bus_c,
        &[
            "coordinator",
            "--insecure",
            "--fleet",
            "netns-test",
            "--model",
            "mobilenet_v2",
            "--listen",
            &listen,
            "--data-listen",
            &data,
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
    assert!(line.contains(&listen), "{line}");
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
        in_ns(&ns_a, &bus_a, &["agent", "--config", cfg.to_str().unwrap()])
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
            if l.contains("found over mDNS") && l.contains(CLOUD_IP) {
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
    let (_, sent_at_cut) = net.qdisc_stats(0, Direction::Up).unwrap();
    net.shape(0, Direction::Up, 2.0).unwrap();
    let moved = wait(&rx, &mut found_mdns, cut + Duration::from_secs(20), &|s| {
        s > early
    });
    // The kernel's own count: a tbf that holds a packet larger than its (new) bucket
    // never sends again, and everything above it goes silent.
    let (_, sent) = net.qdisc_stats(0, Direction::Up).unwrap();
    let carried = sent - sent_at_cut;
    eprintln!("the shaped uplink carried {carried} bytes after the cut");
    assert!(
        carried > 20_000,
        "the uplink carried {carried} bytes after the cut to 2 Mbit/s: its tbf stalled"
    );
    let (t, late) = moved.unwrap_or_else(|| {
        panic!("the plan stayed at split {early} or earlier for 20 s after the cut to 2 Mbit/s")
    });
    let took = t - cut;
    eprintln!(
        "plan moved from split {early} to split {late} {:.1} s after the cut from 50 to 2 Mbit/s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}
