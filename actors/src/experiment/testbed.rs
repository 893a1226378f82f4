//! The fleet on the testbed: hosts in network namespaces under CPU quotas, links shaped
//! by tc and replayed from the traces, and a live table of the fleet while it runs.
use std::path::{Path, PathBuf};

use super::processes::processes;
use super::Host;
use crate::agent::{self, FrameResult};
use crate::config::{AgentConfig, CoordinatorConfig, Fleet};
use dyno::experiment::Experiment;
use dyno::home::Home;
use dyno::link::Trace;

/// The fleet on the testbed: the coordinator (with its workers) in the cloud namespace
/// under `workers x cloud_cores_per_worker` cores, each agent in its own namespace
/// under its class's calibrated quota with one libtorch thread and no stretching; each
/// device's link shaped by tc both ways at the trace's rate, changed on its schedule
/// (user space keeps only the RTT's delay and the loss). With `progress`, a table of
/// the fleet every 2 s. Returns the results and the qdiscs' samples (every 0.5 s).
#[allow(clippy::too_many_arguments)]
pub(super) fn on_testbed(
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
        a.keep_busy = e.testbed.keep_busy;
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

pub(super) type Results = (
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
