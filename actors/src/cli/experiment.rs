//! `dyno experiment run`.
use super::{print_json, ExperimentArgs};
use dyno::experiment::{self, plots, Experiment};
use dyno::home::Home;

use crate::experiment::Runner;

/// Runs an experiment: simulated, or live (the runtime's actors in this process, or as
/// processes of this binary with `--processes`).
pub fn run(home: &Home, a: ExperimentArgs) -> anyhow::Result<()> {
    let e = Experiment::load(&a.file).map_err(anyhow::Error::msg)?;
    let out = match a.mode {
        super::Mode::Simulated => {
            anyhow::ensure!(
                !a.processes,
                "--processes is for --mode live: a simulated run has no processes"
            );
            experiment::simulate(&e, home, !a.json)?
        }
        super::Mode::Live => {
            let runner = if a.processes {
                Runner::Processes {
                    exe: std::env::current_exe()?,
                }
            } else {
                Runner::InProcess
            };
            crate::experiment::live_with(&e, home, !a.json, &runner)?
        }
        super::Mode::Testbed => {
            anyhow::ensure!(
                !a.processes,
                "--processes is for --mode live: the testbed always runs processes"
            );
            if let Some(why) = crate::testbed::why_not() {
                anyhow::bail!("{why}");
            }
            crate::testbed::on_signal_clean_up();
            let runner = Runner::Testbed {
                exe: std::env::current_exe()?,
            };
            crate::experiment::live_with(&e, home, !a.json, &runner)?
        }
    };
    report(home, &a, &e, &out)
}

/// How far the machine's speed may be from the profile's before the table says so.
const SPEED_TOLERANCE: f64 = 0.15;

/// Writes an outcome's files and plots, and prints its table (or JSON).
pub fn report(
    home: &Home,
    a: &ExperimentArgs,
    e: &Experiment,
    out: &experiment::Outcome,
) -> anyhow::Result<()> {
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| home.root().join("out").join("experiments").join(&e.name));
    let mut files = experiment::write(out, &dir)?;
    files.extend(plots::write(out, &dir)?);
    if a.json {
        return print_json(out);
    }
    println!(
        "{} ({} mode): {} on {} devices, {} cloud workers, {} s per run",
        out.name, out.mode, out.model, out.devices, out.workers, out.duration_s
    );
    println!(
        "\n{:<14} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>6} {:>8} {:>6} {:>7} {:>8} {:>5}",
        "policy",
        "Mbit/s",
        "inf/s",
        "(pred)",
        "mean ms",
        "(pred)",
        "p95 ms",
        "p99 ms",
        "bytes/inf",
        "drop",
        "cloud ms",
        "device",
        "changes",
        "SLO miss",
        "<fps"
    );
    for r in &out.rows {
        println!(
            "{:<14} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>10.0} {:>6.2} {:>8.2} {:>5.0}% {:>7} {:>7.1}% {:>5}",
            r.policy,
            r.mbps.map_or("-".into(), |m| format!("{m}")),
            r.throughput,
            r.predicted_throughput,
            r.latency_mean_ms,
            r.predicted_latency_mean_ms,
            r.latency_p95_ms,
            r.latency_p99_ms,
            r.bytes_per_inference,
            r.accuracy_drop_points,
            r.cloud_ms_per_inference,
            100.0 * r.device_share,
            r.plan_changes,
            100.0 * r.slo_violations,
            r.devices_below_min_fps
        );
    }
    if let Some(m) = &out.machine {
        println!(
            "\nthis machine: a forward (one thread, no quota) took {:.1} ms before the runs \
             and {:.1} ms after; the profile the simulator uses says {:.1} ms{}",
            m.before_ms,
            m.after_ms,
            m.profile_ms,
            if m.worst_off() > SPEED_TOLERANCE {
                format!(
                    " ({:.0} % off: compare with a simulation only after `dyno --threads 1 \
                     profile latency --model {}` here)",
                    100.0 * m.worst_off(),
                    out.model
                )
            } else {
                String::new()
            }
        );
    }
    if let Some(e) = experiment::prediction_errors(&out.rows) {
        println!(
            "\npredicted against measured, over {} rows: throughput median error {:.1} %, \
             worst {:.1} % ({}); mean latency median error {:.1} %, worst {:.1} % ({})",
            out.rows.len(),
            e.throughput.median_pct,
            e.throughput.worst_pct,
            e.throughput.worst_row,
            e.latency.median_pct,
            e.latency.worst_pct,
            e.latency.worst_row,
        );
    }
    println!(
        "\n((pred): what the plans expected, the performance model's prediction with each \
         device's onload budget;\n drop: accuracy points lost to packing; device: share of \
         the compute done on the devices;\n SLO miss: frames that broke a per-frame constraint of the SLO; <fps: devices \
         below its min_throughput_fps)"
    );
    println!("\nwrote:");
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}
