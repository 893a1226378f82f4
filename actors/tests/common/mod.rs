//! Helpers shared by the integration tests that run the real `dyno` binary.
#![allow(dead_code)] // each test file uses some of them
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether a test that cannot run here (`why`) is skipped, with a message saying why.
/// Under `CI=true` it fails instead: a skip there would pass silently.
pub fn skipped(test: &str, why: Option<String>) -> bool {
    let Some(why) = why else { return false };
    assert!(
        std::env::var("CI").map_or(true, |v| v.is_empty() || v == "false"),
        "CI=true and {test} cannot run: {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
    true
}

/// Runs the real binary; returns (success, stdout, stderr).
pub fn dyno(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dyno"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts that `dyno args` fails without a panic and says every one of `needles`.
pub fn assert_clean_failure(args: &[&str], needles: &[&str]) {
    let (ok, _, err) = dyno(args);
    assert!(!ok, "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` not in: {err}");
    }
}

/// As [`assert_clean_failure`], with `env` set.
pub fn assert_clean_failure_env(args: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_dyno"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` not in: {err}");
    }
}

/// A port free on loopback a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One scrape of a `--metrics` endpoint: the exposition, or None while it is not up.
pub fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.starts_with("HTTP/1.1 200").then_some(text)
}

/// The sum of every sample of `name` (over its labels) in an exposition.
pub fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scrapes until `name` is above `above` (30 s at most); returns that scrape.
pub fn wait_for(port: u16, name: &str, above: f64) -> String {
    let t = Instant::now();
    loop {
        if let Some(text) = scrape(port) {
            if value(&text, name) > above {
                return text;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{name} never went above {above} on :{port}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process, killed when dropped (the runtime's own helper).
pub use dyno_actors::child::Proc;

/// Starts `dyno args` and returns it with the JSON line it prints when ready
/// (`--ready-json`).
pub fn spawn_ready(args: &[&str]) -> (Proc, serde_json::Value) {
    spawn_ready_with(args, &[])
}

/// [`spawn_ready`] with these environment variables set in the child.
pub fn spawn_ready_with(args: &[&str], env: &[(&str, &str)]) -> (Proc, serde_json::Value) {
    let mut p = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_dyno"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create("/tmp/coord.log").unwrap()),
    )
    .unwrap();
    let v = read_ready(p.child(), args);
    (p, v)
}

/// The JSON line a child started with `--ready-json` prints once ready.
fn read_ready(child: &mut Child, args: &[impl std::fmt::Debug]) -> serde_json::Value {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{args:?}: `{line}`: {e}"))
}

/// Writes `cfg` into `dir` and starts `dyno agent --config` on it: stdout piped for the
/// summary, the log in `dir/ID.log` (a pipe nobody reads until the end could fill).
pub fn spawn_agent(dir: &std::path::Path, cfg: &dyno_actors::config::AgentConfig) -> Proc {
    let path = dir.join(format!("{}.toml", cfg.id));
    std::fs::write(&path, toml::to_string(cfg).unwrap()).unwrap();
    let log = std::fs::File::create(dir.join(format!("{}.log", cfg.id))).unwrap();
    Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_dyno"))
            .args(["agent", "--config", path.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(log),
    )
    .unwrap()
}

/// Waits for an agent started by `spawn_agent` with a `results` file in the same
/// folder; asserts that it succeeded and
/// that every frame was answered exactly once with no error; returns its summary and
/// its frames.
pub fn answered_once(
    agent: Proc,
    cfg: &dyno_actors::config::AgentConfig,
) -> (
    dyno_actors::agent::AgentSummary,
    Vec<dyno_actors::agent::FrameResult>,
) {
    let (s, frames) = finished(agent, cfg);
    assert_answered_once(&s, &frames);
    (s, frames)
}

/// Every frame has exactly one result and no error, and no second answer arrived (the
/// agent counts those where they arrive, `AgentSummary::duplicates`).
pub fn assert_answered_once(
    s: &dyno_actors::agent::AgentSummary,
    frames: &[dyno_actors::agent::FrameResult],
) {
    assert_eq!(s.results + s.errors, s.frames, "{s:?}");
    assert_eq!((s.errors, s.duplicates), (0, 0), "{s:?}");
    assert_eq!(frames.len() as u64, s.frames);
    let mut ids: Vec<u64> = frames.iter().map(|f| f.request).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), frames.len(), "a request with two results");
}

/// Waits for an agent started by `spawn_agent` with a `results` file in the same
/// folder, asserts that it exited 0, and returns its summary and its frames.
pub fn finished(
    agent: Proc,
    cfg: &dyno_actors::config::AgentConfig,
) -> (
    dyno_actors::agent::AgentSummary,
    Vec<dyno_actors::agent::FrameResult>,
) {
    let results = cfg
        .results
        .as_deref()
        .expect("an agent with a results file");
    let out = agent.wait_with_output().unwrap();
    if !out.status.success() {
        let log = results.with_file_name(format!("{}.log", cfg.id));
        panic!(
            "agent {} failed: {}",
            cfg.id,
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    let s: dyno_actors::agent::AgentSummary = serde_json::from_slice(&out.stdout).unwrap();
    let frames: Vec<dyno_actors::agent::FrameResult> = std::fs::read_to_string(results)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (s, frames)
}

/// A `fashion_cnn` agent of class `gateway` on a 50 Mbit/s, 10 ms link that always
/// onloads, offering `rate_fps` for `duration_s`, its frames written to `results`.
pub fn cloud_only_agent(
    fleet: &str,
    id: &str,
    control: &str,
    rate_fps: f64,
    duration_s: f64,
    results: &std::path::Path,
) -> dyno_actors::config::AgentConfig {
    use dyno_actors::config::{AgentConfig, Fleet, LinkConfig, Source};
    AgentConfig {
        fleet: Fleet {
            id: fleet.into(),
            insecure: true,
            ..Fleet::default()
        },
        id: id.into(),
        coordinators: vec![control.into()],
        model: "fashion_cnn".into(),
        class: "slow5x".into(),
        link: LinkConfig {
            mbps: 50.0,
            rtt_ms: 10.0,
            ..LinkConfig::default()
        },
        source: Source::FashionMnist,
        rate_fps,
        duration_s,
        policy: dyno::sched::Policy::CloudOnly,
        results: Some(results.to_path_buf()),
        mdns: false,
        ..AgentConfig::default()
    }
}

/// The arguments of a `fashion_cnn` coordinator of `fleet` with `workers` embedded
/// workers, its control endpoint at `listen` (e.g. `127.0.0.1:0`) and its data endpoint
/// on any loopback port, no mDNS, announcing itself with `--ready-json`.
pub fn coordinator_args(fleet: &str, listen: &str, workers: usize) -> Vec<String> {
    [
        "coordinator",
        "--fleet",
        fleet,
        "--model",
        "fashion_cnn",
        "--listen",
        listen,
        "--data-listen",
        "127.0.0.1:0",
        "--workers",
        &workers.to_string(),
        "--ready-json",
        "--no-mdns",
    ]
    .map(String::from)
    .to_vec()
}

/// The arguments of an insecure `fashion_cnn` agent `id` on [`ONLOADING_DEVICE`],
/// joining the coordinator at `control` directly, for `frames` frames (0: until
/// stopped).
pub fn agent_args(fleet: &str, id: &str, control: &str, frames: u64) -> Vec<String> {
    [
        "agent",
        "--insecure",
        "--fleet",
        fleet,
        "--model",
        "fashion_cnn",
        "--id",
        id,
        "--coordinator",
        control,
        "--no-mdns",
        "--frames",
        &frames.to_string(),
    ]
    .into_iter()
    .chain(ONLOADING_DEVICE)
    .map(String::from)
    .collect()
}

/// An agent's device that onloads `fashion_cnn`: `slow10x` at 50 Mbit/s with a 1 ms
/// round trip (at 20 ms, device-only's 3.4 ms a frame beats two frames in flight per
/// round trip).
pub const ONLOADING_DEVICE: [&str; 6] = ["--class", "slow10x", "--mbps", "50", "--rtt-ms", "1"];

/// An insecure coordinator (`coordinator_args` and `extra`); returns it with its
/// control address.
pub fn spawn_coordinator(
    fleet: &str,
    listen: &str,
    workers: usize,
    extra: &[&str],
) -> (Proc, String) {
    let mut args = coordinator_args(fleet, listen, workers);
    args.push("--insecure".into());
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (p, ready) = spawn_ready(&args);
    (p, ready["control"].as_str().unwrap().to_string())
}

/// A `dyno` process whose stderr is collected while it runs.
pub struct Logged {
    pub proc: Proc,
    /// The JSON line it printed once ready (`--ready-json`).
    pub ready: serde_json::Value,
    log: std::thread::JoinHandle<String>,
}

impl Logged {
    /// Stops the process and returns everything it logged.
    pub fn log(self) -> String {
        drop(self.proc);
        self.log.join().unwrap()
    }
}

/// Starts `dyno args` with `env`, reads its ready line and collects its stderr.
pub fn spawn_logged(args: &[String], env: &[(&str, &str)]) -> Logged {
    let mut p = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_dyno"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let ready = read_ready(p.child(), args);
    let mut stderr = p.child().stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    Logged {
        proc: p,
        ready,
        log,
    }
}

/// An insecure `fashion_cnn` worker called `name` registered with `control`; returns it
/// with its data address.
pub fn spawn_worker(fleet: &str, name: &str, control: &str) -> (Proc, String) {
    spawn_worker_with(fleet, name, control, &[])
}

/// [`spawn_worker`] with these environment variables set in the worker.
pub fn spawn_worker_with(
    fleet: &str,
    name: &str,
    control: &str,
    env: &[(&str, &str)],
) -> (Proc, String) {
    let (p, ready) = spawn_ready_with(
        &[
            "worker",
            "--insecure",
            "--fleet",
            fleet,
            "--model",
            "fashion_cnn",
            "--name",
            name,
            "--coordinator",
            control,
            "--listen",
            "127.0.0.1:0",
            "--ready-json",
            "--no-mdns",
        ],
        env,
    );
    (p, ready["data"].as_str().unwrap().to_string())
}

/// The fleet as `dyno status --json` reports it.
/// (Three tries: on two busy cores a status call can miss its 5 s.)
pub fn status(control: &str, fleet: &str) -> serde_json::Value {
    let mut errors = Vec::new();
    for _ in 0..3 {
        let (ok, out, err) = dyno(&[
            "status",
            "--coordinator",
            control,
            "--fleet",
            fleet,
            "--insecure",
            "--json",
        ]);
        if ok {
            return serde_json::from_str(&out).unwrap();
        }
        errors.push(err);
    }
    panic!("dyno status failed three times: {errors:?}");
}
