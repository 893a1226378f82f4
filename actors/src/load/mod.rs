//! `dyno load`: hundreds of synthetic agents against one coordinator, to see what it
//! holds up under. Each agent is a task speaking the real protocol over real TCP: the
//! keyed handshake, registration, a heartbeat every 500 ms (whose round trip is the
//! control latency measured), plans, and a report per frame. The compute is synthetic on
//! the device side only: an agent packs a generated `fashion_cnn` input at the plan's
//! precision and sends it to the worker the plan names, whose real tail answers it. The
//! coordinator is a real `dyno coordinator` process (started here unless one is given),
//! whose memory and CPU time are sampled from /proc.
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use dyno::wire::{self, Identity, Key, Role};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::child::{control_addr, Proc};
use crate::config::{CoordinatorConfig, Fleet};
use dyno::wire::FleetStatus;

mod agent;
use agent::{agent, Ctx, Stats, MODEL};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub agents: usize,
    pub duration_s: f64,
    /// Frames per second per agent.
    pub rate_fps: f64,
    /// A running coordinator's control address (fleet `fleet`, key from DYNO_FLEET_KEY);
    /// without one a coordinator is started from `exe` with `workers` embedded workers.
    pub coordinator: Option<String>,
    /// The given coordinator runs without a key.
    pub insecure: bool,
    pub fleet: String,
    pub workers: usize,
    /// The `dyno` binary.
    pub exe: PathBuf,
    /// Seconds to wait for an answer before a frame counts as lost.
    pub timeout_s: f64,
    /// The started coordinator's `replan_gap_ms`.
    pub replan_gap_ms: u64,
}

/// Quantiles of a set of samples, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Quantiles {
    pub samples: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    fn of(mut v: Vec<f64>) -> Quantiles {
        v.sort_by(f64::total_cmp);
        Quantiles {
            samples: v.len() as u64,
            p50: dyno::stats::percentile(&v, 0.5),
            p99: dyno::stats::percentile(&v, 0.99),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// One sample of the coordinator process.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ProcessSample {
    pub t_s: f64,
    pub rss_mb: f64,
    /// User and system CPU seconds so far.
    pub cpu_s: f64,
}

/// What a load run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    pub agents: usize,
    pub rate_fps: f64,
    pub duration_s: f64,
    /// Agents that connected and registered.
    pub registered: u64,
    /// Seconds from the first agent started to the last one holding a plan.
    pub all_planned_s: f64,
    /// Frames sent to a worker, and what became of them.
    pub frames_sent: u64,
    pub frames_answered: u64,
    /// Answered "busy" (a real agent finishes these on the device).
    pub frames_busy: u64,
    /// Answered with another error.
    pub frames_failed: u64,
    /// No answer within the timeout, or the connection lost with the frame on it.
    pub frames_lost: u64,
    /// Second answers, counted where they arrive (must be 0).
    #[serde(default)]
    pub duplicate_answers: u64,
    /// Ticks at which the plan was not onloading (no plan yet, device-only).
    pub ticks_not_onloading: u64,
    /// Frame reports sent to the coordinator, and the frames it counted for these agents.
    pub reports_sent: u64,
    pub reports_counted: u64,
    /// Control connections that dropped during the run.
    pub control_lost: u64,
    /// Heartbeat to acknowledgement, over the control connection.
    pub control_rtt_ms: Quantiles,
    /// Infer to answer, over the data connection.
    pub frame_rtt_ms: Quantiles,
    /// The coordinator process every few seconds (empty for a coordinator not started here).
    pub coordinator: Vec<ProcessSample>,
    /// Plans of the whole fleet the coordinator made, and their mean time (from its
    /// `dyno_replan_seconds`; a coordinator started here only).
    pub replans: u64,
    pub replan_mean_ms: f64,
}

/// A key for a coordinator started here (its child gets it through DYNO_FLEET_KEY).
fn fresh_key() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("load-{:x}-{:x}", t.as_nanos(), std::process::id())
}

/// A coordinator process started for the run; killed when dropped.
struct Started {
    proc: Proc,
    /// Its Prometheus endpoint.
    metrics: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

fn start_coordinator(o: &LoadOptions, key: &str) -> anyhow::Result<(Started, String)> {
    let dir = tempfile::tempdir()?;
    let cfg = CoordinatorConfig {
        fleet: Fleet {
            id: o.fleet.clone(),
            ..Fleet::default()
        },
        listen: "127.0.0.1:0".into(),
        data_listen: "127.0.0.1:0".into(),
        workers: o.workers,
        queue: 64,
        replan_gap_ms: o.replan_gap_ms,
        model: MODEL.into(),
        mdns: false,
        ..CoordinatorConfig::default()
    };
    let path = dir.path().join("coordinator.toml");
    std::fs::write(&path, toml::to_string(&cfg)?)?;
    let log_path = dir.path().join("coordinator.log");
    let log = std::fs::File::create(&log_path)?;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (proc, ready) = Proc::spawn_ready(
        std::process::Command::new(&o.exe)
            .args(["coordinator", "--ready-json", "--config"])
            .arg(&path)
            .arg("--metrics")
            .arg(metrics.to_string())
            .env("DYNO_FLEET_KEY", key)
            .env("RUST_LOG", "warn")
            .stderr(log),
        &log_path,
    )?;
    let control = control_addr(&ready)?;
    Ok((
        Started {
            proc,
            metrics,
            _dir: dir,
        },
        control,
    ))
}

/// Resident memory (MB) and CPU seconds of process `pid`, from /proc.
fn sample(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis: utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // /proc counts CPU time in USER_HZ, which Linux fixes at 100 for user space.
    Some((rss_kb / 1024.0, ticks / 100.0))
}

/// Runs the load; prints a line of progress every `progress_s` seconds when > 0.
pub fn run(
    o: &LoadOptions,
    home: &dyno::home::Home,
    progress_s: f64,
) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(o.agents >= 1, "--agents 0: give at least 1");
    anyhow::ensure!(
        o.rate_fps.is_finite() && o.rate_fps > 0.0 && o.rate_fps <= 1000.0,
        "--rate-fps {}: give a number in (0, 1000]",
        o.rate_fps
    );
    anyhow::ensure!(
        o.duration_s.is_finite() && o.duration_s > 0.0,
        "--duration-s {}: give a number > 0",
        o.duration_s
    );
    let model = dyno::model::zoo::load(MODEL, home)?;
    let weights_hash = model.weights_hash();
    drop(model);
    let (child, coordinator, key) = match &o.coordinator {
        Some(addr) => {
            let fleet = Fleet {
                id: o.fleet.clone(),
                insecure: o.insecure,
                ..Fleet::default()
            };
            (None, addr.clone(), fleet.key()?)
        }
        None => {
            let key = fresh_key();
            let (c, addr) = start_coordinator(o, &key)?;
            (Some(c), addr, Key::Secret(key.into_bytes()))
        }
    };
    let pid = child.as_ref().map(|c| c.proc.id());
    let metrics = child.as_ref().map(|c| c.metrics);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // One status request first: a wrong address or key fails here, not after the run.
    let observer = |key: Key| Identity {
        fleet: o.fleet.clone(),
        name: "load-observer".into(),
        role: Role::Observer,
        key,
    };
    rt.block_on(crate::coordinator::fetch_status(
        &coordinator,
        &observer(key.clone()),
        wire::DEFAULT_MAX_FRAME,
    ))?;
    let (release_tx, release) = watch::channel(false);
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        coordinator: coordinator.clone(),
        fleet: o.fleet.clone(),
        key,
        rate_fps: o.rate_fps,
        timeout: Duration::from_secs_f64(o.timeout_s.clamp(0.1, 60.0)),
        stop_frames: started + Duration::from_secs_f64(o.duration_s),
        weights_hash,
        stats: Stats::default(),
        release,
    });
    let (agents, duration_s) = (o.agents, o.duration_s);
    let shared = ctx.clone();
    let (samples, counted, replans) = rt.block_on(async move {
        let mut tasks = Vec::with_capacity(agents);
        for i in 0..agents {
            tasks.push(tokio::spawn(agent(i, ctx.clone())));
            // Spread the handshakes over the first second.
            tokio::time::sleep(Duration::from_secs_f64(1.0 / agents as f64)).await;
        }
        let mut samples = Vec::new();
        let mut next_progress = progress_s;
        while Instant::now() < ctx.stop_frames {
            let t_s = started.elapsed().as_secs_f64();
            if let Some((rss_mb, cpu_s)) = pid.and_then(sample) {
                samples.push(ProcessSample { t_s, rss_mb, cpu_s });
            }
            if progress_s > 0.0 && t_s >= next_progress {
                next_progress += progress_s;
                let s = &ctx.stats;
                eprintln!(
                    "load: {t_s:>5.0}/{duration_s:.0} s  agents planned {}/{agents}  frames sent {} \
                     answered {} lost {}  coordinator {}",
                    s.planned.load(Ordering::Relaxed),
                    s.sent.load(Ordering::Relaxed),
                    s.answered.load(Ordering::Relaxed),
                    s.lost.load(Ordering::Relaxed),
                    samples
                        .last()
                        .map_or("-".into(), |p| format!("{:.1} MB", p.rss_mb)),
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Frames stop; wait for the last answers and reports, then count what the
        // coordinator saw while every agent is still connected.
        tokio::time::sleep(ctx.timeout + Duration::from_secs(1)).await;
        let me = observer(ctx.key.clone());
        let counted =
            crate::coordinator::fetch_status(&ctx.coordinator, &me, wire::DEFAULT_MAX_FRAME)
                .await
                .map(|st| frames_of_load_agents(&st));
        if let Some((rss_mb, cpu_s)) = pid.and_then(sample) {
            samples.push(ProcessSample {
                t_s: started.elapsed().as_secs_f64(),
                rss_mb,
                cpu_s,
            });
        }
        let replans = metrics.and_then(replan_figures);
        let _ = release_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        (samples, counted, replans)
    });
    drop(child);
    let reports_counted = counted.context("the coordinator's status after the run")?;
    let s = &shared.stats;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let all_planned_s = match *s.last_planned.lock().expect("not poisoned") {
        Some(t) if n(&s.planned) == agents as u64 => t.duration_since(started).as_secs_f64(),
        _ => f64::NAN,
    };
    let take = |m: &Mutex<Vec<f64>>| std::mem::take(&mut *m.lock().expect("not poisoned"));
    Ok(LoadReport {
        agents,
        rate_fps: o.rate_fps,
        duration_s,
        registered: n(&s.registered),
        all_planned_s,
        frames_sent: n(&s.sent),
        frames_answered: n(&s.answered),
        frames_busy: n(&s.busy),
        frames_failed: n(&s.failed),
        frames_lost: n(&s.lost),
        duplicate_answers: n(&s.duplicates),
        ticks_not_onloading: n(&s.not_onloading),
        reports_sent: n(&s.reports),
        reports_counted,
        control_lost: n(&s.control_lost),
        control_rtt_ms: Quantiles::of(take(&s.control_rtt)),
        frame_rtt_ms: Quantiles::of(take(&s.frame_rtt)),
        coordinator: samples,
        replans: replans.map_or(0, |r| r.0),
        replan_mean_ms: replans.map_or(f64::NAN, |r| r.1),
    })
}

/// The count and mean milliseconds of `dyno_replan_seconds` at a metrics endpoint.
fn replan_figures(addr: std::net::SocketAddr) -> Option<(u64, f64)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    let count = value("dyno_replan_seconds_count")?;
    let sum = value("dyno_replan_seconds_sum")?;
    Some((
        count as u64,
        if count > 0.0 {
            1e3 * sum / count
        } else {
            f64::NAN
        },
    ))
}

fn frames_of_load_agents(st: &FleetStatus) -> u64 {
    st.devices
        .iter()
        .filter(|d| d.id.starts_with("load-"))
        .map(|d| d.frames)
        .sum()
}

/// The report as a table for the terminal (and docs/BENCHMARKS.md).
pub fn table(r: &LoadReport) -> String {
    let first = r.coordinator.first();
    let last = r.coordinator.last();
    let max_rss = r
        .coordinator
        .iter()
        .map(|p| p.rss_mb)
        .fold(f64::NAN, f64::max);
    let mut t = String::new();
    let mut row = |k: &str, v: String| t.push_str(&format!("| {k} | {v} |\n"));
    row(
        "agents (registered, planned within)",
        format!("{} ({}, {:.1} s)", r.agents, r.registered, r.all_planned_s),
    );
    row(
        "duration, rate per agent",
        format!("{:.0} s, {} frames/s", r.duration_s, r.rate_fps),
    );
    row("frames sent", r.frames_sent.to_string());
    row(
        "answered by the cloud / busy / failed (these two finish on the device) / **lost**",
        format!(
            "{} / {} / {} / **{}**",
            r.frames_answered, r.frames_busy, r.frames_failed, r.frames_lost
        ),
    );
    row(
        "second answers (counted where they arrive)",
        r.duplicate_answers.to_string(),
    );
    row(
        "reports sent / counted by the coordinator",
        format!("{} / {}", r.reports_sent, r.reports_counted),
    );
    row("control connections lost", r.control_lost.to_string());
    row(
        "fleet plans made, mean ms each",
        format!("{}, {:.2}", r.replans, r.replan_mean_ms),
    );
    let q = |q: &Quantiles| {
        format!(
            "p50 {:.2}, p99 {:.2}, max {:.1} ({} samples)",
            q.p50, q.p99, q.max, q.samples
        )
    };
    row("control round trip (heartbeat), ms", q(&r.control_rtt_ms));
    row("frame round trip (infer), ms", q(&r.frame_rtt_ms));
    if let (Some(a), Some(b)) = (first, last) {
        row(
            "coordinator RSS, MB (first, max, last)",
            format!("{:.1}, {:.1}, {:.1}", a.rss_mb, max_rss, b.rss_mb),
        );
        row(
            "coordinator CPU (mean over the run)",
            format!(
                "{:.0} % of one core",
                100.0 * (b.cpu_s - a.cpu_s) / (b.t_s - a.t_s).max(1e-9)
            ),
        );
    }
    format!("| load | figure |\n|---|---|\n{t}")
}
