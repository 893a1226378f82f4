//! The live mode of `dyno experiment run`: the runtime's actors in one process (a
//! coordinator with the pool's workers, one agent per device), real compute, real
//! packing, real loopback TCP through each device's emulated uplink, the wall clock.
//! The same experiment file and the same summary as the simulated mode.
use dyno::experiment::sim::{Planning, SimFrame};
use dyno::experiment::{planning, row, Experiment, Outcome};
use dyno::home::Home;

use crate::agent::{self, FrameResult};
use crate::config::{AgentConfig, CoordinatorConfig, Fleet, LinkConfig, Source};
use crate::coordinator;

/// Runs every (sweep point, policy) of `e` live, one after the other.
pub fn live(e: &Experiment, home: &Home, progress: bool) -> anyhow::Result<Outcome> {
    let tables = dyno::config::Devices::load_or_default(e.devices_file.as_deref(), home)?
        .tables(home, &e.model)?;
    let total_ref = tables.device_only().head_s.max(1e-12);
    let points = e.points();
    let mut out = Outcome::empty(e, "live");
    let bar = if progress {
        indicatif::ProgressBar::new((points.len() * e.policies.len()) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let slo = e.slo.as_ref().map(|p| home.root().join(p));
    // Real inputs, as the profiles' packed bytes come from real inputs.
    let source = if e.model == "fashion_cnn" {
        Source::FashionMnist
    } else {
        Source::Folder {
            path: home.imagenet_dir(),
        }
    };
    for point in &points {
        for name in &e.policies {
            bar.set_message(name.clone());
            let plan = planning(name).map_err(anyhow::Error::msg)?;
            let (policy, fleet_aware) = match plan {
                Planning::Fleet => ("dyno".to_string(), true),
                Planning::PerDevice(p) => (p.name().to_string(), false),
            };
            let fleet = Fleet {
                id: format!("exp-{}", e.name),
                insecure: true,
                ..Fleet::default()
            };
            let mut agents = Vec::new();
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
                    agents.push(AgentConfig {
                        fleet: fleet.clone(),
                        id: format!("{}-{k}-{c}", spec.class),
                        coordinators: Vec::new(),
                        model: e.model.clone(),
                        class: spec.class.clone(),
                        devices: e.devices_file.as_ref().map(|p| home.root().join(p)),
                        link,
                        source: source.clone(),
                        duration_s: e.duration_s,
                        in_flight: spec.in_flight,
                        slo: slo.clone(),
                        policy: policy.clone(),
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
            let home2 = home.clone();
            let results: Vec<(agent::AgentSummary, Vec<FrameResult>)> = actix::System::new()
                .block_on(async move {
                    let c = coordinator::start(&cfg, &home2).await?;
                    let control = c.control.to_string();
                    let runs = agents.into_iter().map(|mut a| {
                        a.coordinators = vec![control.clone()];
                        agent::run_with_results(a, home2.clone())
                    });
                    futures_util::future::join_all(runs)
                        .await
                        .into_iter()
                        .collect::<anyhow::Result<Vec<_>>>()
                })?;
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
                    });
                }
            }
            out.rows
                .push(row(name, *point, &frames, e.duration_s, plan_changes));
            out.frames
                .extend(frames.into_iter().map(|f| (name.clone(), *point, f)));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(out)
}
