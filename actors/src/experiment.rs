//! The live mode of `dyno experiment run`: the runtime's actors in one process (a
//! coordinator with the pool's workers, one agent per device), real compute, real
//! packing, real loopback TCP through each device's emulated uplink, the wall clock.
//! The same experiment file and the same summary as the simulated mode.
//!
//! With [`Runner::Processes`], the coordinator (with the pool's workers) and every agent
//! are separate processes of the `dyno` binary instead, started with config files and
//! talking TCP over loopback, as a fleet on one host would.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use dyno::experiment::sim::{SimFrame, SimTick};
use dyno::experiment::{row, Experiment, Outcome};
use dyno::home::Home;
use dyno::link::Trace;
use dyno::sched::control::Sharing;

use crate::agent::{self, FrameResult};
use crate::child::{control_addr, Proc};
use crate::config::{AgentConfig, CoordinatorConfig, Fleet, LinkConfig, Source};
use crate::coordinator;

/// How the live fleet runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    /// The actors in this process.
    InProcess,
    /// Each actor group in its own process of this `dyno` binary.
    Processes { exe: PathBuf },
    /// Processes of this binary on the testbed: each device in its own network
    /// namespace and CPU quota, its links shaped by tc (`crate::testbed`).
    Testbed { exe: PathBuf },
}

/// Where a process of the fleet runs.
#[derive(Debug, Clone, Copy)]
enum Host {
    Cloud,
    Device(usize),
}

/// Runs every (sweep point, policy) of `e` live, one after the other.
pub fn live(e: &Experiment, home: &Home, progress: bool) -> anyhow::Result<Outcome> {
    live_with(e, home, progress, &Runner::InProcess)
}

/// [`live`], with the runner given.
pub fn live_with(
    e: &Experiment,
    home: &Home,
    progress: bool,
    runner: &Runner,
) -> anyhow::Result<Outcome> {
    let devices = dyno::config::Devices::load_or_default(e.devices_file.as_deref(), home)?;
    let tables = devices.tables(home, &e.model)?;
    let total_ref = tables.device_only().head_s.max(1e-12);
    let points = e.points();
    let mode = match runner {
        Runner::InProcess => "live",
        Runner::Processes { .. } => "live (processes)",
        Runner::Testbed { .. } => "testbed",
    };
    let calibration = match runner {
        Runner::Testbed { .. } => {
            let path = e.testbed.quotas.as_ref().map_or_else(
                || crate::testbed::default_calibration(home),
                |p| home.root().join(p),
            );
            let c = crate::testbed::Calibration::load(&path)?;
            // The quotas give the classes' slowdowns against one profile: the one the
            // experiment's classes scale.
            let scaled = devices.device_profile(home, &c.model);
            let scaled = scaled.strip_prefix(home.root()).unwrap_or(&scaled);
            anyhow::ensure!(
                Path::new(&c.profile) == scaled,
                "{} was calibrated against {}, but the experiment's device classes scale {}: \
                 set devices_file = \"config/testbed-devices.toml\" in the experiment, or \
                 calibrate with --devices naming its devices file",
                path.display(),
                c.profile,
                scaled.display()
            );
            Some(c)
        }
        _ => None,
    };
    let mut out = Outcome::empty(e, mode);
    let bar = if progress {
        indicatif::ProgressBar::new((points.len() * e.policies.len()) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let slo = e.slo.as_ref().map(|p| home.root().join(p));
    let slo_rules = match &slo {
        Some(p) => dyno::sched::slo::Slo::load(p)?,
        None => dyno::sched::slo::Slo::default(),
    };
    let n_devices: usize = e.devices.iter().map(|d| d.count).sum();
    // Real inputs, as the profiles' packed bytes come from real inputs.
    let source = if e.model == "fashion_cnn" {
        Source::FashionMnist
    } else {
        Source::Folder {
            path: home.imagenet_dir(),
        }
    };
    for point in &points {
        for &plan in &e.policies {
            let name = &plan.name().to_string();
            bar.set_message(name.clone());
            let (policy, fleet_aware) = (plan.policy(), plan.sharing() == Sharing::FleetAware);
            let fleet = Fleet {
                id: format!("exp-{}", e.name),
                insecure: true,
                ..Fleet::default()
            };
            let mut agents = Vec::new();
            let mut traces = Vec::new();
            for (k, spec) in e.devices.iter().enumerate() {
                for c in 0..spec.count {
                    let mut link = LinkConfig {
                        rtt_ms: spec.rtt_ms,
                        loss: spec.loss,
                        seed: e.seed ^ ((k as u64) << 32) ^ c as u64,
                        repeat: spec.repeat,
                        ..LinkConfig::default()
                    };
                    match (point, spec.mbps, &spec.steps, &spec.trace) {
                        (Some(m), ..) => link.mbps = *m,
                        (None, Some(m), ..) => link.mbps = m,
                        (None, None, Some(s), _) => link.steps = s.clone(),
                        (None, None, None, Some(p)) => link.trace = Some(home.root().join(p)),
                        _ => anyhow::bail!("devices[{k}] has no link"),
                    }
                    traces.push(link.trace()?);
                    agents.push(AgentConfig {
                        fleet: fleet.clone(),
                        id: format!("{}-{k}-{c}", spec.class),
                        coordinators: Vec::new(),
                        model: e.model.clone(),
                        class: spec.class.clone(),
                        devices: e.devices_file.as_ref().map(|p| home.root().join(p)),
                        link,
                        source: match spec.source.as_deref() {
                            None | Some("dataset") => source.clone(),
                            Some("synthetic") => Source::Synthetic {
                                seed: e.seed ^ ((k as u64) << 32) ^ c as u64,
                            },
                            Some(folder) => Source::Folder {
                                path: home.root().join(folder),
                            },
                        },
                        declares: spec.declares.clone(),
                        duration_s: e.duration_s,
                        in_flight: spec.in_flight,
                        slo: slo.clone(),
                        policy,
                        mdns: false,
                        ..AgentConfig::default()
                    });
                }
            }
            let cfg = CoordinatorConfig {
                fleet: fleet.clone(),
                listen: "127.0.0.1:0".into(),
                data_listen: "127.0.0.1:0".into(),
                workers: e.cloud.workers,
                model: e.model.clone(),
                devices: e.devices_file.as_ref().map(|p| home.root().join(p)),
                replan_ms: (e.replan_s * 1e3) as u64,
                mdns: false,
                fleet_aware,
                ..CoordinatorConfig::default()
            };
            let mut qdisc = Vec::new();
            let results = match (runner, &calibration) {
                (Runner::InProcess, _) => in_process(cfg, agents, home)?,
                (Runner::Processes { exe }, _) => {
                    processes(&cfg, agents, home, &|_| Command::new(exe))?
                }
                (Runner::Testbed { exe }, Some(cal)) => {
                    let (r, q) = on_testbed(exe, cfg, agents, &traces, home, e, cal, progress)?;
                    qdisc = q;
                    r
                }
                (Runner::Testbed { .. }, None) => unreachable!("loaded above"),
            };
            let mut frames: Vec<SimFrame> = Vec::new();
            let mut plan_changes = 0;
            for (i, (s, rs)) in results.iter().enumerate() {
                plan_changes += s.plans_received.saturating_sub(1);
                for r in rs.iter().filter(|r| r.error.is_none()) {
                    let row = tables.row(&r.candidate);
                    let remote = r.bytes > 0 && !r.fallback;
                    frames.push(SimFrame {
                        device: i,
                        start_s: r.start_s,
                        end_s: r.start_s + r.latency_s,
                        split: r.candidate.split,
                        precision: r.candidate.precision.to_string(),
                        codec: r.candidate.codec.to_string(),
                        bytes: r.bytes as f64,
                        drop_points: row.map_or(0.0, |x| x.drop_points),
                        device_s: r.stages.head_s + r.stages.pack_s,
                        cloud_s: if remote {
                            r.stages.unpack_s + r.stages.tail_s
                        } else {
                            0.0
                        },
                        device_share: if r.fallback {
                            1.0
                        } else {
                            row.map_or(1.0, |x| x.head_s / total_ref)
                        },
                        expected_fps: r.expected.map_or(f64::NAN, |e| e.fps),
                        expected_latency_s: r.expected.map_or(f64::NAN, |e| e.latency_s),
                        budget_fps: r.budget_fps.unwrap_or(f64::NAN),
                    });
                }
            }
            let mut series = ticks(&results, &traces, e.duration_s, e.replan_s);
            // On the testbed, the uplink's rate as the kernel enforced it.
            for t in &mut series {
                t.kernel_mbps = qdisc
                    .iter()
                    .filter(|q| q.device == t.device && q.direction == "up")
                    .take_while(|q| q.time_s <= t.time_s + 1e-9)
                    .last()
                    .map_or(f64::NAN, |q| q.kernel_mbps);
            }
            out.ticks
                .extend(series.into_iter().map(|t| (name.clone(), *point, t)));
            out.qdisc
                .extend(qdisc.into_iter().map(|q| (name.clone(), *point, q)));
            out.rows.push(row(
                name,
                *point,
                &frames,
                n_devices,
                e.duration_s,
                plan_changes,
                &slo_rules,
            ));
            out.frames
                .extend(frames.into_iter().map(|f| (name.clone(), *point, f)));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The coordinator and the agents as actors of one actix system in this process.
fn in_process(
    cfg: CoordinatorConfig,
    agents: Vec<AgentConfig>,
    home: &Home,
) -> anyhow::Result<Vec<(agent::AgentSummary, Vec<FrameResult>)>> {
    let home = home.clone();
    actix::System::new().block_on(async move {
        let c = coordinator::start(&cfg, &home).await?;
        let control = c.control.to_string();
        let runs = agents.into_iter().map(|mut a| {
            a.coordinators = vec![control.clone()];
            agent::run_with_results(a, home.clone())
        });
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()
    })
}

/// The coordinator (with its embedded workers) and every agent as processes (`host`
/// makes each one's command: this binary, here or on a testbed host), configured by
/// files in a temporary folder; each agent's results come back as its summary on
/// stdout and its per-frame JSON lines.
fn processes(
    cfg: &CoordinatorConfig,
    agents: Vec<AgentConfig>,
    home: &Home,
    host: &dyn Fn(Host) -> Command,
) -> anyhow::Result<Vec<(agent::AgentSummary, Vec<FrameResult>)>> {
    let mut dir = tempfile::Builder::new().prefix("dyno-live-").tempdir()?;
    // The processes' logs go with the run unless DYNO_KEEP_LOGS is set.
    if std::env::var_os("DYNO_KEEP_LOGS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("logs kept in {}", dir.path().display());
    }
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let log = |name: &str| -> anyhow::Result<Stdio> {
        Ok(std::fs::File::create(dir.path().join(name))?.into())
    };
    let coordinator_toml = write("coordinator.toml", toml::to_string(cfg)?)?;
    let (c, ready) = Proc::spawn_ready(
        host(Host::Cloud)
            .arg("--home")
            .arg(home.root())
            .args(["coordinator", "--ready-json", "--config"])
            .arg(&coordinator_toml)
            .stderr(log("coordinator.log")?),
        &dir.path().join("coordinator.log"),
    )?;
    let control = control_addr(&ready)?;
    let mut children = Vec::new();
    for (i, mut a) in agents.into_iter().enumerate() {
        // Agents that discover the coordinator over mDNS have none given.
        if !a.mdns {
            a.coordinators = vec![control.clone()];
        }
        let results = a
            .results
            .clone()
            .unwrap_or_else(|| dir.path().join(format!("{}.jsonl", a.id)));
        a.results = Some(results.clone());
        let path = write(&format!("{}.toml", a.id), toml::to_string(&a)?)?;
        let child = Proc::spawn(
            host(Host::Device(i))
                .arg("--home")
                .arg(home.root())
                .args(["agent", "--config"])
                .arg(&path)
                .stdout(Stdio::piped())
                .stderr(log(&format!("{}.log", a.id))?),
        )
        .with_context(|| format!("starting agent {}", a.id))?;
        children.push((a.id, results, child));
    }
    let mut out = Vec::new();
    for (id, results, child) in children {
        let o = child.wait_with_output()?;
        anyhow::ensure!(
            o.status.success(),
            "agent {id} exited with {} (its log: {})",
            o.status,
            dir.path().join(format!("{id}.log")).display()
        );
        let summary: agent::AgentSummary =
            serde_json::from_slice(&o.stdout).with_context(|| format!("agent {id}'s summary"))?;
        let text = std::fs::read_to_string(&results)
            .with_context(|| format!("agent {id}'s results {}", results.display()))?;
        let frames = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<Vec<FrameResult>, _>>()
            .with_context(|| format!("agent {id}'s results {}", results.display()))?;
        out.push((summary, frames));
    }
    drop(c);
    Ok(out)
}

/// The fleet on the testbed: the coordinator (with its workers) in the cloud namespace
/// under `workers x cloud_cores_per_worker` cores, each agent in its own namespace
/// under its class's calibrated quota with one libtorch thread and no stretching; each
/// device's link shaped by tc both ways at the trace's rate, changed on its schedule
/// (user space keeps only the RTT's delay and the loss). With `progress`, a table of
/// the fleet every 2 s. Returns the results and the qdiscs' samples (every 0.5 s).
#[allow(clippy::too_many_arguments)]
fn on_testbed(
    exe: &Path,
    mut cfg: CoordinatorConfig,
    mut agents: Vec<AgentConfig>,
    traces: &[Trace],
    home: &Home,
    e: &Experiment,
    cal: &crate::testbed::Calibration,
    progress: bool,
) -> anyhow::Result<Results> {
    use crate::testbed::net::{Direction, CLOUD_IP};
    use dyno::experiment::Discovery;
    let quotas = agents
        .iter()
        .map(|a| Ok((a.class.clone(), cal.cores(&a.class)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cloud_cores = cfg.workers as f64 * e.testbed.cloud_cores_per_worker;
    let mdns = e.testbed.discovery == Discovery::Mdns;
    let avahi = home.root().join("scripts").join("avahi.sh");
    let tb = crate::testbed::Testbed::start(&quotas, cloud_cores, mdns.then_some(avahi.as_path()))?;
    for (i, trace) in traces.iter().enumerate() {
        for dir in [Direction::Up, Direction::Down] {
            tb.net.shape(i, dir, trace.mbps_at(0.0))?;
        }
    }
    cfg.listen = format!("{CLOUD_IP}:7700");
    cfg.data_listen = format!("{CLOUD_IP}:7701");
    cfg.mdns = mdns;
    // Each agent's clock start, on which the trace replay runs.
    let dir = tempfile::Builder::new().prefix("dyno-testbed-").tempdir()?;
    let mut ready = Vec::new();
    for a in &mut agents {
        let path = dir.path().join(format!("{}.ready", a.id));
        a.ready_file = Some(path.clone());
        ready.push(path);
        a.mdns = mdns;
        a.coordinators.clear();
        a.stretch = false;
        a.threads = Some(1);
        // The rate is the kernel's; user space keeps the delay and the loss.
        a.link.mbps = 1e5;
        a.link.trace = None;
        a.link.steps.clear();
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let replay = s.spawn(|| replay(&tb.net, traces, &ready, &stop));
        if progress {
            let (fleet, addr, stop) = (&cfg.fleet, &cfg.listen, &stop);
            s.spawn(move || {
                if let Err(e) = live_table(fleet, addr, stop) {
                    eprintln!("no live table: {e:#}");
                }
            });
        }
        let results = processes(&cfg, agents, home, &|h| match h {
            Host::Cloud => tb.cloud_command(exe),
            Host::Device(i) => tb.device_command(i, exe),
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = replay
            .join()
            .map_err(|_| anyhow::anyhow!("the trace replay panicked"))??;
        Ok((results?, samples))
    })
}

type Results = (
    Vec<(agent::AgentSummary, Vec<FrameResult>)>,
    Vec<dyno::experiment::QdiscSample>,
);

/// While the testbed runs: the fleet from the coordinator's status every 2 s, asked
/// from inside the cloud namespace (this thread enters it), on stderr.
fn live_table(
    fleet: &Fleet,
    addr: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    use dyno::wire::{Identity, Role};
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    crate::testbed::net::enter(crate::testbed::net::CLOUD_NS)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let me = Identity {
        fleet: fleet.id.clone(),
        name: "testbed".into(),
        role: Role::Observer,
        key: fleet.key()?,
    };
    let start = Instant::now();
    let mut next = Duration::from_secs(2);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() < next {
            continue;
        }
        next += Duration::from_secs(2);
        let Ok(st) = rt.block_on(crate::coordinator::fetch_status(addr, &me, fleet.max_frame))
        else {
            continue;
        };
        let mut table = format!(
            "[{:>4.0} s] pool {:.0} % planned, {} plans sent\n",
            start.elapsed().as_secs_f64(),
            (100.0 * st.pool_utilisation).max(0.0),
            st.plans_sent
        );
        for d in &st.devices {
            let plan = d
                .plan
                .as_ref()
                .map_or("no plan yet".to_string(), |p| p.candidate.to_string());
            table.push_str(&format!(
                "  {:<14} {:<28} {:>6.1} inf/s  p50 {:>6.1} ms  link {:>6.1} Mbit/s\n",
                d.id, plan, d.fps, d.latency_p50_ms, d.bandwidth_mbps
            ));
        }
        eprint!("{table}");
    }
    Ok(())
}

/// Replays each device's trace into its qdiscs on the agent's own clock (which starts
/// after its set-up, seconds later under a small quota; the agent writes its start to
/// its ready file, and until then the link stays at the trace's first rate). Checked
/// every 50 ms, a `tc qdisc change` when the rate moves; `tc -s qdisc` sampled every
/// 0.5 s of each agent's clock, until `stop`.
fn replay(
    net: &crate::testbed::net::Net,
    traces: &[Trace],
    ready: &[PathBuf],
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<Vec<dyno::experiment::QdiscSample>> {
    use crate::testbed::net::Direction;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let mut samples = Vec::new();
    let mut set: Vec<f64> = traces.iter().map(|t| t.mbps_at(0.0)).collect();
    let mut zero: Vec<Option<Instant>> = vec![None; traces.len()];
    let mut next_sample = vec![0.0; traces.len()];
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        for (i, trace) in traces.iter().enumerate() {
            let Some(t0) = zero[i].or_else(|| clock_start(&ready[i])) else {
                continue;
            };
            zero[i] = Some(t0);
            let t = t0.elapsed().as_secs_f64();
            let rate = trace.mbps_at(t);
            if rate != set[i] {
                for dir in [Direction::Up, Direction::Down] {
                    net.shape(i, dir, rate)?;
                }
                set[i] = rate;
            }
            if t >= next_sample[i] {
                next_sample[i] += 0.5;
                for (dir, name) in [(Direction::Up, "up"), (Direction::Down, "down")] {
                    let (kernel_mbps, sent_bytes) = net.qdisc_stats(i, dir)?;
                    samples.push(dyno::experiment::QdiscSample {
                        time_s: t,
                        device: i,
                        direction: name,
                        trace_mbps: rate,
                        kernel_mbps,
                        sent_bytes,
                    });
                }
            }
        }
    }
    Ok(samples)
}

/// When an agent's clock started, from its ready file (once written).
fn clock_start(ready: &Path) -> Option<std::time::Instant> {
    let text = std::fs::read_to_string(ready).ok()?;
    let unix: f64 = text.strip_suffix('\n')?.trim().parse().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    std::time::Instant::now().checked_sub(std::time::Duration::from_secs_f64((now - unix).max(0.0)))
}

/// A time series per device like the simulator's: every `step_s`, the link's rate and
/// the plan in force (the last frame started by then). The coordinator's estimate is
/// not known here (NaN).
fn ticks(
    results: &[(agent::AgentSummary, Vec<FrameResult>)],
    traces: &[Trace],
    duration_s: f64,
    step_s: f64,
) -> Vec<SimTick> {
    let mut out = Vec::new();
    for (i, ((_, frames), trace)) in results.iter().zip(traces).enumerate() {
        let mut by_start: Vec<&FrameResult> = frames.iter().collect();
        by_start.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        let steps = (duration_s / step_s).floor() as usize;
        for n in 0..=steps {
            let t = n as f64 * step_s;
            let k = by_start.partition_point(|f| f.start_s <= t);
            let Some(f) = by_start.get(k.saturating_sub(1)) else {
                continue;
            };
            out.push(SimTick {
                time_s: t,
                device: i,
                true_mbps: trace.mbps_at(t),
                estimated_mbps: f64::NAN,
                kernel_mbps: f64::NAN,
                split: f.candidate.split,
                precision: f.candidate.precision.to_string(),
                k_dev: f.planned_k_dev.unwrap_or(f64::NAN),
            });
        }
    }
    out
}
