//! `dyno testbed calibrate`: each device class's CPU quota, found by measurement. The
//! kernel's quota throttles in bursts (a block either runs at full speed or waits for
//! the next period), so a quota of `q` cores does not make compute `1/q` times slower:
//! the quota is adjusted until the mean time of whole forwards under it, over the
//! latency profile's time (what the planner multiplies by the class's slowdown), is
//! within 5 % of the class's slowdown.
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::Context;
use dyno::home::Home;
use serde::{Deserialize, Serialize};

use super::cgroup::{CpuGroup, Hierarchy, MIN_QUOTA_US};
use super::{period_us, Calibration, ClassQuota, MAX_PERIOD_US};

/// What one measurement gives: mean milliseconds of whole forwards and of the head to
/// `split`, one libtorch thread.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Measurement {
    pub full_ms: f64,
    pub head_ms: f64,
    pub split: usize,
    pub frames: usize,
}

/// Times `frames` whole forwards and heads to the middle split of `model` here (after
/// two of each to warm up), on a synthetic input.
pub fn measure(home: &Home, model: &str, frames: usize) -> anyhow::Result<Measurement> {
    let m = dyno::model::zoo::load(model, home)?;
    let mut shape = vec![1];
    shape.extend(m.input().shape.iter().copied());
    let x = tch::Tensor::randn(shape.as_slice(), (tch::Kind::Float, tch::Device::Cpu));
    let split = m.num_blocks() / 2;
    let time = |f: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        for _ in 0..2 {
            f()?;
        }
        let t = Instant::now();
        for _ in 0..frames {
            f()?;
        }
        Ok(t.elapsed().as_secs_f64() * 1e3 / frames as f64)
    };
    let _guard = tch::no_grad_guard();
    let full_ms = time(&|| {
        let _ = m.forward(&x)?;
        Ok(())
    })?;
    let head_ms = time(&|| {
        let _ = m.head(&x, split)?;
        Ok(())
    })?;
    Ok(Measurement {
        full_ms,
        head_ms,
        split,
        frames,
    })
}

/// Runs `dyno testbed measure` as a child (moved into `group` when given), one thread.
fn measure_in(
    exe: &Path,
    home: &Home,
    model: &str,
    frames: usize,
    group: Option<&CpuGroup>,
) -> anyhow::Result<Measurement> {
    let mut c = match group {
        Some(g) => super::limited_command(g, exe),
        None => std::process::Command::new(exe),
    };
    let out = c
        .arg("--home")
        .arg(home.root())
        .args(["--threads", "1", "testbed", "measure", "--model", model])
        .args(["--frames", &frames.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running `dyno testbed measure`")?;
    anyhow::ensure!(
        out.status.success(),
        "`dyno testbed measure` exited with {}",
        out.status
    );
    serde_json::from_slice(&out.stdout).context("`dyno testbed measure`'s answer")
}

/// The profile's times the planner scales: (whole model, head to `split`), ms.
fn profile_ms(profile: &Path, split: usize) -> anyhow::Result<(f64, f64)> {
    let p = dyno::profile::latency::LatencyProfile::load(profile)?;
    let full: f64 = p.blocks.iter().map(|b| b.seconds).sum();
    let head: f64 = p.blocks.iter().take(split).map(|b| b.seconds).sum();
    Ok((full * 1e3, head * 1e3))
}

/// Finds each class's quota against `profile` (the devices' latency profile the
/// planner scales); `progress` gets a line per measurement.
pub fn calibrate(
    exe: &Path,
    home: &Home,
    model: &str,
    profile: &Path,
    classes: &[(String, f64)],
    frames: usize,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Calibration> {
    let h = Hierarchy::detect()?;
    let free = measure_in(exe, home, model, frames, None)?;
    let (profile_full, profile_head) = profile_ms(profile, free.split)?;
    progress(&format!(
        "no quota: {:.1} ms a forward (profile {:.1} ms), head to split {} {:.1} ms (profile {:.1} ms)",
        free.full_ms, profile_full, free.split, free.head_ms, profile_head
    ));
    let least = MIN_QUOTA_US as f64 / MAX_PERIOD_US as f64;
    let mut out = std::collections::BTreeMap::new();
    for (class, nominal) in classes {
        // Linear first guess, then corrected by what each quota gave.
        let mut cores = (free.full_ms / (nominal * profile_full)).clamp(least, 1.0);
        let mut best: Option<(f64, Measurement)> = None;
        for _ in 0..6 {
            let g = CpuGroup::create(&h, &format!("calibrate-{class}"), cores, period_us(cores))?;
            let m = measure_in(exe, home, model, frames, Some(&g))?;
            drop(g);
            let got = m.full_ms / profile_full;
            progress(&format!(
                "{class}: {cores:.3} cores -> {:.1} ms a forward, {got:.2}x (nominal {nominal}x)",
                m.full_ms
            ));
            let err = |x: f64| (x / nominal - 1.0).abs();
            if best
                .as_ref()
                .is_none_or(|(_, b)| err(got) < err(b.full_ms / profile_full))
            {
                best = Some((cores, m));
            }
            if err(got) <= 0.05 {
                break;
            }
            let next = (cores * got / nominal).clamp(least, 1.0);
            if next == cores {
                break;
            }
            cores = next;
        }
        let (cores, m) = best.expect("at least one measurement");
        out.insert(
            class.clone(),
            ClassQuota {
                cores: (cores * 1e4).round() / 1e4,
                period_us: period_us(cores),
                nominal: *nominal,
                measured: m.full_ms / profile_full,
                measured_free: m.full_ms / free.full_ms,
                measured_head: m.head_ms / profile_head,
            },
        );
    }
    Ok(Calibration {
        model: model.to_string(),
        profile: profile
            .strip_prefix(home.root())
            .unwrap_or(profile)
            .display()
            .to_string(),
        machine: cpu_model(),
        date: today(),
        free_full_ms: free.full_ms,
        profile_full_ms: profile_full,
        classes: out,
    })
}

fn cpu_model() -> String {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{name}, {} cores", super::cpus())
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
