//! The live mode of `dyno experiment run`: the runtime's actors in one process (a
//! coordinator with the pool's workers, one agent per device), real compute, real
//! packing, real loopback TCP through each device's emulated uplink, the wall clock.
//! The same experiment file and the same summary as the simulated mode.
//!
//! With [`Runner::Processes`], the coordinator (with the pool's workers) and every agent
//! are separate processes of the `dyno` binary instead, started with config files and
//! talking TCP over loopback, as a fleet on one host would.
use std::path::{Path, PathBuf};
use std::process::Command;

use dyno::experiment::sim::{SimFrame, SimTick};
use dyno::experiment::{row, Experiment, Outcome};
use dyno::home::Home;
use dyno::link::Trace;
use dyno::sched::control::Sharing;

use crate::agent::{self, FrameResult};
use crate::config::{AgentConfig, CoordinatorConfig, Fleet, LinkConfig, Source};
use crate::coordinator;

mod processes;
mod testbed;
use processes::processes;
use testbed::on_testbed;

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

/// Whole forwards timed before and after the runs (about half a second each way).
const SPEED_FRAMES: usize = 10;

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
            let here = crate::testbed::calibrate::cpu_model();
            if c.machine != here {
                tracing::warn!(
                    "the testbed's quotas ({}) were measured on {}, and this is {here}: \
                     the classes may not be as slow as they say; run `dyno testbed \
                     calibrate` here",
                    path.display(),
                    c.machine
                );
            }
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
    // The machine's speed now, against the profile the simulator uses (real processes
    // only: the runner's executable measures it in a child).
    let exe = match runner {
        Runner::InProcess => None,
        Runner::Processes { exe } | Runner::Testbed { exe } => Some(exe.clone()),
    };
    let cloud_profile = devices.cloud_profile(home, &e.model);
    let speed = |when: &str| -> Option<f64> {
        let exe = exe.as_ref()?;
        crate::testbed::calibrate::forward_ms(exe, home, &e.model, SPEED_FRAMES)
            .map_err(|err| tracing::warn!("timing a forward {when} the runs: {err:#}"))
            .ok()
    };
    let before_ms = speed("before");
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
                batching: crate::config::BatchingConfig {
                    max_batch: e.cloud.max_batch,
                    max_queue_delay_ms: e.cloud.max_queue_delay_ms.round() as u64,
                    profile: None,
                },
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
                        device_wait_s: r.device_wait_s,
                        device_s: r.stages.head_s + r.stages.pack_s,
                        wire_s: if remote { r.stages.wire_s } else { 0.0 },
                        queue_s: if remote { r.stages.queue_s } else { 0.0 },
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
    let after_ms = speed("after");
    let profile_ms = crate::testbed::calibrate::profile_forward_ms(&cloud_profile);
    if let (Some(before_ms), Some(after_ms), Ok(profile_ms)) = (before_ms, after_ms, profile_ms) {
        out.machine = Some(dyno::experiment::MachineSpeed {
            profile_ms,
            before_ms,
            after_ms,
        });
    }
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
            agent::run_with_results(a, home.clone(), Default::default())
        });
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()
    })
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
