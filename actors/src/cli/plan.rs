//! `dyno plan` (one explained decision) and `dyno profile validate`.
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use super::{print_json, PlanArgs, ValidateArgs};
use dyno::check;
use dyno::config::{latency_profile_path, DeviceClass, Devices};
use dyno::home::Home;
use dyno::model::zoo;
use dyno::pack::{Codec, Precision};
use dyno::profile::latency::LatencyProfile;
use dyno::profile::{self, validate, AccuracyProfile};
use dyno::sched::perf::{Conditions, Link, Tables};
use dyno::sched::slo::Slo;
use dyno::sched::{Explanation, Policy, Scheduler};

/// Everything `dyno plan` reads, loaded and checked.
pub struct PlanInputs {
    pub tables: Tables,
    pub class: DeviceClass,
    pub conditions: Conditions,
    pub slo: Slo,
    pub policy: Policy,
    pub files: Vec<String>,
}

/// Loads the profiles, the device class and the SLO that `a` names.
pub fn inputs(home: &Home, a: &PlanArgs) -> anyhow::Result<PlanInputs> {
    anyhow::ensure!(
        a.bandwidth_mbps.is_finite() && a.bandwidth_mbps >= 0.0,
        "--bandwidth-mbps must be a number >= 0 (0: no link), got {}",
        a.bandwidth_mbps
    );
    anyhow::ensure!(
        a.rtt_ms.is_finite() && a.rtt_ms >= 0.0,
        "--rtt-ms must be a number >= 0, got {}",
        a.rtt_ms
    );
    let policy: Policy = a.policy.parse().map_err(anyhow::Error::msg)?;
    let devices_path = a
        .devices
        .clone()
        .unwrap_or_else(|| Devices::default_path(home));
    let devices = Devices::load(&devices_path)?;
    let class = devices.class(&a.device)?.clone();
    let slo = match &a.slo {
        Some(p) => Slo::load(p)?,
        None => Slo::default(),
    };
    let model = &a.model;
    let acc_path = a
        .accuracy_profile
        .clone()
        .unwrap_or_else(|| profile::find(home, model, "accuracy"));
    let dev_path = a
        .latency_profile
        .clone()
        .unwrap_or_else(|| match &class.profile {
            Some(t) => latency_profile_path(Some(t), home, model),
            None => devices.device_profile(home, model),
        });
    let cloud_path = a
        .cloud_profile
        .clone()
        .unwrap_or_else(|| devices.cloud_profile(home, model));
    let need = |p: &PathBuf, purpose: &str, kind: &str| -> anyhow::Result<()> {
        anyhow::ensure!(
            p.exists(),
            profile::missing(p, purpose, &profile::command_for(model, kind))
        );
        Ok(())
    };
    need(&acc_path, "accuracy profile", "accuracy")?;
    let kind = |t: Option<&str>| dyno::config::template_kind(t);
    need(
        &dev_path,
        "latency profile of the device",
        &kind(class.profile.as_deref().or(devices.profile.as_deref())),
    )?;
    need(
        &cloud_path,
        "latency profile of the cloud",
        &kind(devices.cloud.profile.as_deref()),
    )?;
    let accuracy = AccuracyProfile::load(&acc_path)?;
    let device = LatencyProfile::load(&dev_path)?;
    let cloud = if cloud_path == dev_path {
        device.clone()
    } else {
        LatencyProfile::load(&cloud_path)?
    };
    let tables = Tables::new(&accuracy, &device, &cloud).with_context(|| {
        format!(
            "combining {}, {} and {}",
            acc_path.display(),
            dev_path.display(),
            cloud_path.display()
        )
    })?;
    let mut conditions = Conditions::new(class.slowdown, Link::mbps(a.bandwidth_mbps, a.rtt_ms));
    conditions.cloud_slowdown = devices.cloud.slowdown;
    conditions.energy = class.energy;
    conditions.in_flight = f64::from(a.in_flight);
    Ok(PlanInputs {
        tables,
        class,
        conditions,
        slo,
        policy,
        files: vec![
            acc_path.display().to_string(),
            dev_path.display().to_string(),
            cloud_path.display().to_string(),
        ],
    })
}

#[derive(Serialize)]
struct PlanReport<'a> {
    model: &'a str,
    device: &'a str,
    slowdown: f64,
    bandwidth_mbps: f64,
    rtt_ms: f64,
    policy: Policy,
    slo: &'a Slo,
    profiles: &'a [String],
    #[serde(flatten)]
    explanation: &'a Explanation,
}

pub fn plan(home: &Home, a: PlanArgs) -> anyhow::Result<()> {
    let i = inputs(home, &a)?;
    let e = Scheduler::new().explain(&i.tables, &i.conditions, &i.slo, i.policy, a.runners_up);
    if a.json {
        return print_json(&PlanReport {
            model: &i.tables.model,
            device: &a.device,
            slowdown: i.class.slowdown,
            bandwidth_mbps: a.bandwidth_mbps,
            rtt_ms: a.rtt_ms,
            policy: i.policy,
            slo: &i.slo,
            profiles: &i.files,
            explanation: &e,
        });
    }
    let d = &e.decision;
    let p = &d.prediction;
    println!(
        "{} on `{}` (slowdown {}), {} Mbit/s, RTT {} ms, policy {}",
        i.tables.model, a.device, i.class.slowdown, a.bandwidth_mbps, a.rtt_ms, i.policy
    );
    let what = if d.candidate.split as usize == i.tables.blocks {
        "device-only".to_string()
    } else {
        d.candidate.to_string()
    };
    println!(
        "plan:        {what}{}",
        if d.feasible {
            String::new()
        } else {
            format!(
                "  [NO PLAN MEETS THE SLO; least violating, breaks {}]",
                d.violations
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    println!(
        "latency:     {:.2} ms = head {:.2} + pack {:.2} + network {:.2} + unpack {:.2} + tail {:.2}",
        p.latency_s * 1e3,
        p.head_s * 1e3,
        p.pack_s * 1e3,
        p.net_s * 1e3,
        p.unpack_s * 1e3,
        p.tail_s * 1e3
    );
    println!(
        "throughput:  {:.2} inferences/s; cloud {:.2} ms/inference; {:.0} bytes; drop {:.2} points; {:.1} mJ",
        p.throughput,
        p.cloud_s * 1e3,
        p.bytes,
        p.drop_points,
        p.energy_j * 1e3
    );
    println!(
        "\nrunners-up ({} candidates admitted by {}, {} feasible):",
        e.admitted, i.policy, e.feasible
    );
    for r in &e.runners_up {
        println!("  {:<32} {}", r.candidate.to_string(), r.reason);
    }
    Ok(())
}

pub fn validate(home: &Home, a: ValidateArgs) -> anyhow::Result<()> {
    let precision = Precision::bits(a.bits)?;
    let codec = match a.codec.as_str() {
        "none" => Codec::None,
        "lz4" => Codec::Lz4,
        "zstd" => Codec::Zstd,
        c => anyhow::bail!("unknown codec `{c}`: the codecs are none, lz4, zstd"),
    };
    anyhow::ensure!(
        a.device_threads >= 1,
        "--device-threads must be at least 1, got {}",
        a.device_threads
    );
    tch::set_num_threads(a.device_threads);
    let model = zoo::load(&a.model, home)?;
    let inputs = check::default_inputs(&model, home)?;
    let x = inputs.xs.narrow(0, 0, 1);
    let v = validate::run(home, &model, &x, precision, codec, a.runs)?;
    if a.json {
        return print_json(&v);
    }
    println!(
        "{}: {} bits with {}, median of {} frames per split; device {} thread(s), cloud 1; \
         loopback {:.0} Mbit/s, RTT {:.3} ms",
        v.model,
        a.bits,
        codec,
        v.runs,
        a.device_threads,
        v.link.bandwidth_bps / 1e6,
        v.link.rtt_s * 1e3
    );
    println!(
        "\n{:>5}  {:>10}  {:>15}  {:>15}  {:>12}  {:>12}  {:>8}  {:>12}  {:>8}",
        "split",
        "bytes",
        "device ms p/o",
        "cloud ms p/o",
        "measured ms",
        "predicted ms",
        "error",
        "corrected ms",
        "error"
    );
    for s in &v.splits {
        println!(
            "{:>5}  {:>10}  {:>7.2}/{:<7.2}  {:>7.2}/{:<7.2}  {:>12.3}  {:>12.3}  {:>+7.1}%  {:>12.3}  {:>+7.1}%",
            s.split,
            s.bytes,
            s.predicted_device_ms,
            s.observed_device_ms,
            s.predicted_cloud_ms,
            s.observed_cloud_ms,
            s.measured_ms,
            s.predicted_ms,
            100.0 * s.error,
            s.corrected_ms,
            100.0 * s.corrected_error
        );
    }
    println!(
        "\nlargest error: {:.1} % from the profiles alone; {:.1} % with the run-time \
         correction (k_dev {:.3}, k_cloud {:.3})",
        100.0 * v.max_abs_error,
        100.0 * v.max_abs_corrected_error,
        v.correction.k_dev,
        v.correction.k_cloud
    );
    Ok(())
}
