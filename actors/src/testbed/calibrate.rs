//! `dyno testbed calibrate`: each device class's CPU quota, found by measurement. The
//! kernel's quota throttles in bursts (a block either runs at full speed or waits for
//! the next period), so a quota of `q` cores does not make compute `1/q` times slower:
//! the quota is adjusted until the mean time of whole forwards under it, over the
//! latency profile's time (what the planner multiplies by the class's slowdown), is
//! within 5 % of the class's slowdown. Under the quota the measuring process keeps it
//! spent between forwards, as an agent's compute thread does on the testbed
//! ([`KeepBusy`]), and heads started after a wait are timed too: with the quota kept
//! spent they are as slow as heads back to back.
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::Context;
use dyno::home::Home;
use serde::{Deserialize, Serialize};

use super::cgroup::{CpuGroup, Hierarchy, KeepBusy, MIN_QUOTA_US};
use super::{period_us, Calibration, ClassQuota, MAX_PERIOD_US};

/// What one measurement gives: mean milliseconds of whole forwards and of the head to
/// `split` back to back, and of the head each started after [`WAIT`] idle (as a device
/// waits for its frames in flight), one libtorch thread.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Measurement {
    pub full_ms: f64,
    pub head_ms: f64,
    pub head_after_wait_ms: f64,
    pub split: usize,
    pub frames: usize,
}

/// The idle time before each head of `head_after_wait_ms`: longer than any quota's
/// period, so that each starts a period afresh.
pub const WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Times `frames` whole forwards and heads to the middle split of `model` here (after
/// two of each to warm up), on a synthetic input; with `keep_busy`, the quota is kept
/// spent between them as an agent's on the testbed is ([`KeepBusy`]).
pub fn measure(
    home: &Home,
    model: &str,
    frames: usize,
    keep_busy: bool,
) -> anyhow::Result<Measurement> {
    let busy = keep_busy.then(|| KeepBusy::start(None)).transpose()?;
    let m = dyno::model::zoo::load(model, home)?;
    let mut shape = vec![1];
    shape.extend(m.input().shape.iter().copied());
    let x = tch::Tensor::randn(shape.as_slice(), (tch::Kind::Float, tch::Device::Cpu));
    let split = m.num_blocks() / 2;
    let time = |f: &dyn Fn() -> anyhow::Result<()>, wait: bool| -> anyhow::Result<f64> {
        let mut took = 0.0;
        for i in 0..frames + 2 {
            if wait {
                std::thread::sleep(WAIT);
            }
            let _working = busy.as_ref().map(KeepBusy::work);
            let t = Instant::now();
            f()?;
            if i >= 2 {
                took += t.elapsed().as_secs_f64();
            }
        }
        Ok(took * 1e3 / frames as f64)
    };
    let _guard = tch::no_grad_guard();
    let forward = || {
        let _ = m.forward(&x)?;
        Ok(())
    };
    let head = || {
        let _ = m.head(&x, split)?;
        Ok(())
    };
    Ok(Measurement {
        full_ms: time(&forward, false)?,
        head_ms: time(&head, false)?,
        head_after_wait_ms: time(&head, true)?,
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
        .args(group.map(|_| "--keep-busy"))
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

/// A whole forward of `model` here, one thread and no quota, in a child (so that this
/// process's libtorch settings do not count): its mean over `frames`, ms.
pub fn forward_ms(exe: &Path, home: &Home, model: &str, frames: usize) -> anyhow::Result<f64> {
    Ok(measure_in(exe, home, model, frames, None)?.full_ms)
}

/// The whole model's time in the latency profile at `profile`, ms.
pub fn profile_forward_ms(profile: &Path) -> anyhow::Result<f64> {
    Ok(profile_ms(profile, 0)?.0)
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
    // The cloud on the testbed is this machine at full speed: planned and simulated with
    // the profile, it must be this machine's.
    let off = free.full_ms / profile_full;
    if !(1.0 / 1.15..=1.15).contains(&off) {
        progress(&format!(
            "warning: this machine runs a forward in {:.1} ms, {off:.2}x the profile's {:.1} ms \
             ({}): the testbed's cloud is this machine, so plans and simulations would count \
             it {off:.2}x too fast or slow. Profile it here first: dyno --threads 1 profile \
             latency --model {model} --batch 1,2,4,8 (written to out/profiles/, read before \
             the shipped profile)",
            free.full_ms,
            profile_full,
            profile.display()
        ));
    }
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
                measured_head_after_wait: m.head_after_wait_ms / profile_head,
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

/// This machine, as calibrations name it: its CPU and its cores.
pub fn cpu_model() -> String {
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
