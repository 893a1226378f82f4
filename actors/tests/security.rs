//! What a stranger and an attacker on the path can and cannot do to a keyed fleet of real
//! processes (docs/SECURITY.md names each claim's test here):
//! - a byte flipped on the way from a device to its worker ends that connection, and the
//!   frames in flight finish on the device: every frame answered once, none wrong;
//! - an observer cannot submit work to a worker, nor a coordinator join as a peer;
//! - a device cannot register under another's id: not with its own key (`dyno key`),
//!   and not under a name other than the one it shook hands with;
//! - a worker that cannot be reached is redialled with backoff, not by every frame;
//! - an `--insecure` coordinator is not reachable from another network namespace unless
//!   it is given an address (needs root; fails under `CI=true` when it cannot run).
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dyno::wire::session::dial;
use dyno::wire::{Conn, DeviceInfo, Identity, Key, Message, Role, WireError, DEFAULT_MAX_FRAME};
use dyno_actors::agent::AgentSummary;
use dyno_actors::config::WorkerConfig;

mod common;

const KEY: &str = "security-test-fleet-key-0123456789";

fn keyed(args: &[String]) -> common::Logged {
    common::spawn_logged(args, &[("DYNO_FLEET_KEY", KEY)])
}

/// `dyno agent` of `fashion_cnn` as `id` with `key`, `frames` frames, verified against
/// the local model; its summary and log.
fn agent(control: &str, id: &str, key: &str, frames: u64) -> (AgentSummary, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dyno"))
        .args([
            "agent",
            "--no-mdns",
            "--fleet",
            "sec",
            "--model",
            "fashion_cnn",
            "--coordinator",
            control,
            "--frames",
            &frames.to_string(),
            "--id",
            id,
            "--verify",
        ])
        .args(common::ONLOADING_DEVICE)
        .env("DYNO_FLEET_KEY", key)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the agent failed: {log}");
    (serde_json::from_slice(&out.stdout).unwrap(), log)
}

/// A TCP relay from a port of its own to `upstream` that flips one byte of the first
/// connection's client-to-server stream at `offset`; returns its port and whether it
/// has flipped it.
fn flipping_relay(upstream: String, offset: usize) -> (u16, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let flipped = Arc::new(AtomicBool::new(false));
    let f = flipped.clone();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut cr, mut sw) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut sr, mut cw) = (server, client);
            std::thread::spawn(move || std::io::copy(&mut sr, &mut cw));
            let f = f.clone();
            std::thread::spawn(move || {
                let mut seen = 0usize;
                let mut buf = [0u8; 8192];
                loop {
                    let n = match cr.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if !f.load(Ordering::SeqCst) && seen <= offset && offset < seen + n {
                        buf[offset - seen] ^= 0x01;
                        f.store(true, Ordering::SeqCst);
                    }
                    seen += n;
                    if sw.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = sw.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, flipped)
}

/// A keyed `fashion_cnn` worker listening on `listen` that tells the coordinator at
/// `control` to send its devices to `advertise` (a relay, or nothing that answers).
fn worker_behind(
    dir: &std::path::Path,
    control: &str,
    listen: &str,
    advertise: &str,
) -> common::Logged {
    let cfg = WorkerConfig {
        name: "w-behind".into(),
        coordinators: vec![control.into()],
        listen: listen.into(),
        advertise: Some(advertise.into()),
        model: "fashion_cnn".into(),
        mdns: false,
        fleet: dyno_actors::config::Fleet {
            id: "sec".into(),
            ..Default::default()
        },
        ..WorkerConfig::default()
    };
    let path = dir.join("worker.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    keyed(&[
        "worker".into(),
        "--config".into(),
        path.to_str().unwrap().into(),
        "--ready-json".into(),
    ])
}

/// A keyed agent `id` that onloads every frame, 100 a second for `seconds`.
fn keyed_cloud_only_agent(
    dir: &std::path::Path,
    id: &str,
    control: &str,
    seconds: f64,
) -> dyno_actors::config::AgentConfig {
    let mut a = common::cloud_only_agent(
        "sec",
        id,
        control,
        100.0,
        seconds,
        &dir.join(format!("{id}.jsonl")),
    );
    a.fleet.insecure = false;
    a.fleet.key = Some(KEY.into());
    a
}

#[test]
fn a_byte_flipped_on_the_way_to_the_worker_ends_the_connection_and_no_answer_is_wrong() {
    let c = keyed(&common::coordinator_args("sec", "127.0.0.1:0", 0));
    let control = c.ready["control"].as_str().unwrap().to_string();
    // A worker whose advertised data address is the relay's.
    let data_port = common::free_port();
    let (relay, flipped) = flipping_relay(format!("127.0.0.1:{data_port}"), 40_000);
    let dir = tempfile::tempdir().unwrap();
    let w = worker_behind(
        dir.path(),
        &control,
        &format!("127.0.0.1:{data_port}"),
        &format!("127.0.0.1:{relay}"),
    );
    // Every frame onloads, losslessly (the plan pinned to the input in fp32: cloud-only
    // itself sends a JPEG, which may change an answer): any answer that differs from the
    // local model's is a wrong one.
    let mut a = keyed_cloud_only_agent(dir.path(), "cam-flip", &control, 4.0);
    a.verify = true;
    a.pin = Some(dyno::sched::perf::Candidate {
        split: 0,
        precision: dyno::pack::Precision::Fp32,
        codec: dyno::pack::Codec::Lz4,
    });
    let (s, _) = common::answered_once(common::spawn_agent(dir.path(), &a), &a);
    let worker_log = w.log();
    drop(c);
    eprintln!("{s:?}");
    assert!(
        flipped.load(Ordering::SeqCst),
        "the relay never reached its offset"
    );
    assert!(s.results >= 100, "{s:?}");
    assert_eq!(s.mismatches, 0, "a wrong answer: {s:?}");
    assert_eq!(s.verified, s.results, "{s:?}");
    assert!(s.fallbacks >= 1, "no frame finished on the device: {s:?}");
    assert!(
        s.onloaded > 0,
        "nothing onloaded after the reconnection: {s:?}"
    );
    assert!(
        worker_log.contains("failed authentication"),
        "the worker did not say why it dropped the connection: {worker_log}"
    );
}

fn device_info(id: &str) -> DeviceInfo {
    DeviceInfo {
        id: id.into(),
        model: "fashion_cnn".into(),
        class: "slow10x".into(),
        slowdown: 10.0,
        threads: 1,
        slo: dyno::sched::slo::Slo::default(),
        policy: dyno::sched::Policy::Dyno,
        in_flight: 1,
    }
}

/// Dials `addr` as `name` in `role`, with the fleet key.
async fn shake(addr: &str, role: Role, name: &str) -> Result<Conn, WireError> {
    let me = Identity {
        fleet: "sec".into(),
        name: name.into(),
        role,
        key: Key::Secret(KEY.as_bytes().to_vec()),
    };
    dial(addr, &me, DEFAULT_MAX_FRAME).await
}

/// Registers device `id` on `conn`; the coordinator's first answer.
async fn register(conn: &mut Conn, id: &str) -> Message {
    conn.send(&Message::RegisterDevice(device_info(id)))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .unwrap()
        .unwrap()
}

#[test]
fn roles_and_names_are_held_to_what_the_handshake_proved() {
    let c = keyed(&common::coordinator_args("sec", "127.0.0.1:0", 1));
    let control = c.ready["control"].as_str().unwrap().to_string();
    let data = c.ready["data"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // An observer (with the fleet key, even) may not submit work to a worker.
        let e = shake(&data, Role::Observer, "status").await.unwrap_err();
        assert!(
            matches!(&e, WireError::Refused(r) if r.contains("(Observer) may not connect")),
            "{e}"
        );
        // Nor may a coordinator join the control endpoint as a peer.
        let e = shake(&control, Role::Coordinator, "rogue").await.unwrap_err();
        assert!(matches!(&e, WireError::Refused(_)), "{e}");
        // A device that shook hands as `cam-1` may not register as `cam-2`.
        let mut conn = shake(&control, Role::Agent, "cam-1").await.unwrap();
        assert_eq!(conn.role, Role::Coordinator, "the server's authenticated hello");
        let m = register(&mut conn, "cam-2").await;
        assert!(
            matches!(&m, Message::Refused { reason } if reason.contains("may not register as device `cam-2`")),
            "{m:?}"
        );
        // Under its own name it is planned.
        let mut conn = shake(&control, Role::Agent, "cam-1").await.unwrap();
        let m = register(&mut conn, "cam-1").await;
        assert!(matches!(m, Message::Plan(_)), "{m:?}");
    });
    // A device given its own key (`dyno key`) can shake hands as itself only.
    let out = Command::new(env!("CARGO_BIN_EXE_dyno"))
        .args(["key", "--name", "cam-own"])
        .env("DYNO_FLEET_KEY", KEY)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let own = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(own.starts_with("dyno-id1:") && own.len() == 9 + 64, "{own}");
    let (s, _) = agent(&control, "cam-own", &own, 40);
    assert!(s.onloaded > 0, "its own key did not admit it: {s:?}");
    let (s, log) = agent(&control, "cam-other", &own, 10);
    assert_eq!((s.results, s.onloaded), (10, 0), "{s:?}");
    let coordinator_log = c.log();
    assert!(
        coordinator_log.contains("`cam-other` (Agent) does not hold the fleet key or its own"),
        "{coordinator_log}\n{log}"
    );
    // And neither a coordinator nor a worker starts on one identity's key.
    common::assert_clean_failure_env(
        &["coordinator", "--no-mdns", "--listen", "127.0.0.1:0"],
        &[("DYNO_FLEET_KEY", &own)],
        &["needs the fleet key itself"],
    );
}

fn namespaces_why_not() -> Option<String> {
    dyno_actors::testbed::why_not()
}

/// Whether a TCP connection from inside namespace `ns` to `addr` succeeds.
fn reachable_from(ns: &str, ip: &str, port: u16) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn an_insecure_coordinator_is_not_reachable_from_another_namespace_unless_given_an_address() {
    use dyno_actors::testbed::net::{device_ns, Net, CLOUD_IP, CLOUD_NS};
    if common::skipped(
        "an_insecure_coordinator_is_not_reachable_from_another_namespace_unless_given_an_address",
        namespaces_why_not(),
    ) {
        return;
    }
    dyno_actors::testbed::clean_up();
    let net = Net::create(1, None).unwrap();
    let start = |listen: &str| {
        let mut p = common::Proc::spawn(
            Command::new("ip")
                .args(["netns", "exec", CLOUD_NS, env!("CARGO_BIN_EXE_dyno")])
                .args(["coordinator", "--insecure", "--no-mdns", "--workers", "0"])
                .args(["--model", "fashion_cnn", "--ready-json", "--listen", listen])
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
        .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(p.child().stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        (p, v["control"].as_str().unwrap().to_string())
    };
    // The default: a port alone, which --insecure binds on loopback.
    let (p, control) = start(":7731");
    assert!(control.starts_with("127.0.0.1:"), "{control}");
    let from_device = reachable_from(&device_ns(0), CLOUD_IP, 7731);
    drop(p);
    // Given an address, it is reachable.
    let (p, control) = start(&format!("{CLOUD_IP}:7732"));
    assert_eq!(control, format!("{CLOUD_IP}:7732"));
    let given = reachable_from(&device_ns(0), CLOUD_IP, 7732);
    drop(p);
    drop(net);
    assert!(
        !from_device,
        "an --insecure coordinator was reachable from another namespace"
    );
    assert!(given, "a coordinator given an address was not reachable");
}

/// A listener that accepts and at once closes every connection; how many it saw.
fn closing_listener() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            s.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    (port, seen)
}

#[test]
fn an_unreachable_worker_is_redialled_with_backoff_not_by_every_frame() {
    let c = keyed(&common::coordinator_args("sec", "127.0.0.1:0", 0));
    let control = c.ready["control"].as_str().unwrap().to_string();
    // A worker whose advertised data address shuts every connection at once.
    let (dead, dials) = closing_listener();
    let dir = tempfile::tempdir().unwrap();
    let _w = worker_behind(
        dir.path(),
        &control,
        "127.0.0.1:0",
        &format!("127.0.0.1:{dead}"),
    );
    // 100 frames/s for 6 s, every one planned onto that worker.
    let a = keyed_cloud_only_agent(dir.path(), "cam-unreachable", &control, 6.0);
    let (s, _) = common::answered_once(common::spawn_agent(dir.path(), &a), &a);
    let dials = dials.load(Ordering::SeqCst);
    eprintln!(
        "{} frames, {} fallbacks, {dials} dials of the unreachable worker",
        s.frames, s.fallbacks
    );
    assert!(s.fallbacks >= 100, "the frames did not fall back: {s:?}");
    // Pauses of 0.25, 0.5, 1, 2, 2 s and as much again of jitter: at most 7 in 6 s.
    assert!(
        (1..=8).contains(&dials),
        "{dials} dials for {} fallbacks: not backing off",
        s.fallbacks
    );
}
