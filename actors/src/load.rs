//! `dyno load`: hundreds of synthetic agents against one coordinator, to see what it
//! holds up under. Each agent is a task speaking the real protocol over real TCP: the
//! keyed handshake, registration, a heartbeat every 500 ms (whose round trip is the
//! control latency measured), plans, and a report per frame. The compute is synthetic on
//! the device side only: an agent packs a generated `fashion_cnn` input at the plan's
//! precision and sends it to the worker the plan names, whose real tail answers it. The
//! coordinator is a real `dyno coordinator` process (started here unless one is given),
//! whose memory and CPU time are sampled from /proc.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use dyno::pack::{PackOptions, Packer, TensorId};
use dyno::wire::session::{dial, pump};
use dyno::wire::{self, DeviceInfo, FrameReport, Identity, Key, Message, Role, Stages};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::config::{CoordinatorConfig, Fleet};
use crate::coordinator::FleetStatus;

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

#[derive(Default)]
struct Stats {
    registered: AtomicU64,
    planned: AtomicU64,
    sent: AtomicU64,
    answered: AtomicU64,
    busy: AtomicU64,
    failed: AtomicU64,
    lost: AtomicU64,
    not_onloading: AtomicU64,
    reports: AtomicU64,
    control_lost: AtomicU64,
    control_rtt: Mutex<Vec<f64>>,
    frame_rtt: Mutex<Vec<f64>>,
    last_planned: Mutex<Option<Instant>>,
}

struct Ctx {
    coordinator: String,
    fleet: String,
    key: Key,
    rate_fps: f64,
    timeout: Duration,
    stop_frames: Instant,
    weights_hash: u64,
    stats: Stats,
    /// Flips to true once the final status is taken: agents then hang up.
    release: watch::Receiver<bool>,
}

/// The fashion_cnn input: one 28x28 grey image.
const SHAPE: [usize; 4] = [1, 1, 28, 28];
const MODEL: &str = "fashion_cnn";

/// A key for a coordinator started here (its child gets it through DYNO_FLEET_KEY).
fn fresh_key() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("load-{:x}-{:x}", t.as_nanos(), std::process::id())
}

/// A coordinator process started for the run; killed when dropped.
struct Child {
    child: std::process::Child,
    /// Its Prometheus endpoint.
    metrics: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_coordinator(o: &LoadOptions, key: &str) -> anyhow::Result<(Child, String)> {
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
    let log = std::fs::File::create(dir.path().join("coordinator.log"))?;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut child = std::process::Command::new(&o.exe)
        .args(["coordinator", "--ready-json", "--config"])
        .arg(&path)
        .arg("--metrics")
        .arg(metrics.to_string())
        .env("DYNO_FLEET_KEY", key)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} coordinator", o.exe.display()))?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped")),
        &mut line,
    )?;
    let ready: serde_json::Value = serde_json::from_str(&line).with_context(|| {
        format!(
            "the coordinator did not start (its log: {})",
            std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap_or_default()
        )
    })?;
    let control = ready["control"]
        .as_str()
        .context("the coordinator's ready line has no control address")?
        .to_string();
    Ok((
        Child {
            child,
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
    let pid = child.as_ref().map(|c| c.child.id());
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

/// One synthetic agent: connects, registers, heartbeats, and sends a frame to its worker
/// every 1/rate seconds while its plan onloads from the input.
async fn agent(i: usize, ctx: Arc<Ctx>) {
    let me = Identity {
        fleet: ctx.fleet.clone(),
        name: format!("load-{i:04}"),
        role: Role::Agent,
        key: ctx.key.clone(),
    };
    let st = &ctx.stats;
    let connect_by = Instant::now() + Duration::from_secs(30);
    let conn = loop {
        match dial(&ctx.coordinator, &me, wire::DEFAULT_MAX_FRAME).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > connect_by => {
                tracing::warn!(agent = %me.name, "could not connect in 30 s: {e}");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let (tx, mut rx) = conn.split();
    let (out, writer) = pump(tx);
    let info = DeviceInfo {
        id: me.name.clone(),
        model: MODEL.into(),
        class: "load".into(),
        slowdown: 1.0,
        threads: 1,
        slo: dyno::sched::slo::Slo::default(),
        policy: dyno::sched::Policy::CloudOnly,
    };
    if out.send(Message::RegisterDevice(info)).is_err() {
        st.control_lost.fetch_add(1, Ordering::Relaxed);
        return;
    }
    st.registered.fetch_add(1, Ordering::Relaxed);
    let (plan_tx, plan) = watch::channel(None);
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let reader = {
        let (ctx, sent_at) = (ctx.clone(), sent_at.clone());
        tokio::spawn(async move {
            let st = &ctx.stats;
            let mut planned = false;
            loop {
                match rx.recv().await {
                    Ok(Message::Plan(a)) => {
                        if !planned && a.worker.is_some() {
                            planned = true;
                            st.planned.fetch_add(1, Ordering::Relaxed);
                            *st.last_planned.lock().expect("not poisoned") = Some(Instant::now());
                        }
                        let _ = plan_tx.send(Some(a));
                    }
                    Ok(Message::HeartbeatAck { seq }) => {
                        if let Some(t) = sent_at.lock().expect("not poisoned").remove(&seq) {
                            let ms = t.elapsed().as_secs_f64() * 1e3;
                            st.control_rtt.lock().expect("not poisoned").push(ms);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if !*ctx.release.borrow() {
                            st.control_lost.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = plan_tx.send(None);
                        break;
                    }
                }
            }
        })
    };
    let beats = {
        let (out, sent_at) = (out.clone(), sent_at.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            for seq in 1u64.. {
                tick.tick().await;
                sent_at
                    .lock()
                    .expect("not poisoned")
                    .insert(seq, Instant::now());
                if out.send(Message::Heartbeat { seq }).is_err() {
                    break;
                }
            }
        })
    };
    frames(i, &ctx, &me, &plan, &out).await;
    let mut release = ctx.release.clone();
    let _ = release.wait_for(|r| *r).await;
    beats.abort();
    reader.abort();
    drop(out);
    let _ = writer.await;
}

/// A worker's answer to one frame: its queue, unpack and tail seconds, or an error.
enum Answer {
    Ok(f64, f64, f64),
    Err { busy: bool },
}

/// The frame loop of agent `i`, until the run stops sending frames.
async fn frames(
    i: usize,
    ctx: &Ctx,
    me: &Identity,
    plan: &watch::Receiver<Option<wire::Assignment>>,
    out: &mpsc::UnboundedSender<Message>,
) {
    let st = &ctx.stats;
    let period = Duration::from_secs_f64(1.0 / ctx.rate_fps);
    // Agents' ticks spread over the period (a golden-ratio sequence), not in step.
    let phase = period.mul_f64((i as f64 * 0.618_034).fract());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut data: Option<(String, wire::Conn)> = None;
    let mut packer = Packer::default();
    let mut packed = Vec::new();
    let mut values = vec![0f32; SHAPE.iter().product()];
    let mut request = 0u64;
    while Instant::now() < ctx.stop_frames {
        tick.tick().await;
        let Some(a) = plan.borrow().clone() else {
            st.not_onloading.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(worker) = a.worker.clone().filter(|_| a.candidate.split == 0) else {
            st.not_onloading.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if data.as_ref().is_none_or(|(addr, _)| *addr != worker) {
            match dial(&worker, me, wire::DEFAULT_MAX_FRAME).await {
                Ok(c) => data = Some((worker.clone(), c)),
                Err(e) => {
                    tracing::warn!(agent = %me.name, %worker, "data connection: {e}");
                    st.not_onloading.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some((_, conn)) = data.as_mut() else {
            continue;
        };
        request += 1;
        // A synthetic image: a gradient that moves with the agent and the frame.
        for (k, v) in values.iter_mut().enumerate() {
            *v = ((k + i * 7 + request as usize * 13) % 256) as f32 / 255.0;
        }
        let t = Instant::now();
        let id = TensorId {
            model: MODEL,
            weights_hash: ctx.weights_hash,
            split: 0,
        };
        let opts = PackOptions::new(a.candidate.precision, a.candidate.codec);
        if let Err(e) = packer.pack_into(&values, &SHAPE, &id, &opts, &mut packed) {
            tracing::warn!(agent = %me.name, "pack: {e}");
            continue;
        }
        let pack_s = t.elapsed().as_secs_f64();
        let bytes = packed.len() as u64;
        st.sent.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let infer = Message::Infer {
            request,
            device: me.name.clone(),
            packed: packed.clone(),
        };
        let answer = tokio::time::timeout(ctx.timeout, async {
            conn.send(&infer).await?;
            loop {
                match conn.recv().await? {
                    Message::InferOk {
                        request: r,
                        queue_s,
                        unpack_s,
                        tail_s,
                        ..
                    } if r == request => return Ok(Answer::Ok(queue_s, unpack_s, tail_s)),
                    Message::InferErr {
                        request: r, busy, ..
                    } if r == request => return Ok(Answer::Err { busy }),
                    _ => continue,
                }
            }
        })
        .await;
        let rtt_s = sent.elapsed().as_secs_f64();
        let (stages, fallback) = match answer {
            Ok(Ok(Answer::Ok(queue_s, unpack_s, tail_s))) => {
                st.answered.fetch_add(1, Ordering::Relaxed);
                st.frame_rtt.lock().expect("not poisoned").push(rtt_s * 1e3);
                let stages = Stages {
                    pack_s,
                    wire_s: (rtt_s - queue_s - unpack_s - tail_s).max(0.0),
                    queue_s,
                    unpack_s,
                    tail_s,
                    ..Stages::default()
                };
                (stages, false)
            }
            Ok(Ok(Answer::Err { busy })) => {
                let counter = if busy { &st.busy } else { &st.failed };
                counter.fetch_add(1, Ordering::Relaxed);
                (Stages::default(), true)
            }
            Ok(Err::<_, wire::WireError>(e)) => {
                tracing::warn!(agent = %me.name, "data connection lost with a frame on it: {e}");
                st.lost.fetch_add(1, Ordering::Relaxed);
                data = None;
                continue;
            }
            Err(_) => {
                st.lost.fetch_add(1, Ordering::Relaxed);
                data = None;
                continue;
            }
        };
        // A real agent finishes a refused frame on the device and reports it as a fallback.
        let report = FrameReport {
            request,
            candidate: a.candidate,
            stages,
            bytes,
            transfer_s: stages.wire_s,
            fallback,
        };
        if out.send(Message::Report(report)).is_ok() {
            st.reports.fetch_add(1, Ordering::Relaxed);
        }
    }
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
        "answered / busy / failed / **lost**",
        format!(
            "{} / {} / {} / **{}**",
            r.frames_answered, r.frames_busy, r.frames_failed, r.frames_lost
        ),
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
