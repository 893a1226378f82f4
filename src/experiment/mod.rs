//! TOML-configured experiments: a fleet, its links, its SLO, the policies to compare and a
//! sweep; a table, `summary.json`, per-frame CSV and plots.
//!
//! ```toml
//! name = "quickstart"
//! model = "mobilenet_v2"
//! duration_s = 60.0          # virtual seconds per run
//! seed = 1
//! policies = ["device-only", "cloud-only", "neurosurgeon", "fixed-8bit", "dyno", "dyno-fleet"]
//! slo = "config/slo/throughput.toml"   # optional, relative to the project folder
//! replan_s = 1.0
//!
//! [cloud]
//! workers = 2
//! slowdown = 1.0
//! max_batch = 1              # dynamic batching: up to this many frames of one split,
//! max_queue_delay_ms = 5     # where the cloud profile's batch curve pays (whole ms)
//!
//! [[devices]]
//! class = "slow10x"          # from config/devices.toml
//! count = 2
//! mbps = 10.0                # or steps = [[0, 50], [30, 2]], or trace = "FILE"
//! rtt_ms = 20.0
//! in_flight = 2
//! declares = "slow5x"        # optional: the class it tells the coordinator, when its
//!                            # real speed is another's (the run-time correction's test)
//! source = "dataset"         # live mode: "dataset", "synthetic" or an image folder
//!
//! [sweep]
//! mbps = [1, 5, 10, 50]      # every device's bandwidth, one run per value
//!
//! [testbed]                  # --mode testbed only
//! discovery = "static"       # or "mdns": an Avahi daemon in every namespace
//! quotas = "out/testbed.toml"  # the classes' CPU quotas (default: dyno testbed calibrate's,
//!                             # else config/testbed.toml)
//! keep_busy = true            # each device's quota kept spent while it waits
//! cloud_cores_per_worker = 1.0
//! ```
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Devices;
use crate::home::Home;
use crate::link::{Shaper, Trace};
use crate::sched::slo::Slo;
use crate::stats::percentile;

pub mod plots;
pub mod sim;

use sim::{Planning, SimDevice, SimFrame, SimTick};

/// An experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    pub model: String,
    #[serde(default = "default_duration")]
    pub duration_s: f64,
    #[serde(default)]
    pub seed: u64,
    pub policies: Vec<Planning>,
    pub slo: Option<PathBuf>,
    #[serde(default = "default_replan")]
    pub replan_s: f64,
    /// Device classes file (default config/devices.toml).
    pub devices_file: Option<PathBuf>,
    #[serde(default)]
    pub cloud: CloudSpec,
    pub devices: Vec<DeviceSpec>,
    #[serde(default)]
    pub sweep: Sweep,
    /// How the testbed mode builds its hosts.
    #[serde(default)]
    pub testbed: TestbedSpec,
}

/// The `[testbed]` section: how `--mode testbed` builds its hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestbedSpec {
    /// How agents find the coordinator: `static` (its address on the testbed's bridge)
    /// or `mdns` (an Avahi daemon in every namespace).
    #[serde(default)]
    pub discovery: Discovery,
    /// The device classes' CPU quotas, from `dyno testbed calibrate` (default
    /// out/testbed.toml when measured here, else config/testbed.toml).
    pub quotas: Option<PathBuf>,
    /// Cores of CPU quota per cloud worker.
    #[serde(default = "one")]
    pub cloud_cores_per_worker: f64,
    /// Keep each device's CPU quota spent while its compute waits (default), so that a
    /// device is as slow after a wait as back to back, as a real slow CPU is; false lets
    /// a stage that starts a fresh period run at full speed until the quota is spent.
    #[serde(default = "yes")]
    pub keep_busy: bool,
}

impl Default for TestbedSpec {
    fn default() -> Self {
        TestbedSpec {
            discovery: Discovery::Static,
            quotas: None,
            cloud_cores_per_worker: 1.0,
            keep_busy: true,
        }
    }
}

/// How agents find their coordinator on the testbed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    #[default]
    Static,
    Mdns,
}

/// One sample of a device's qdisc on the testbed (`tc -s qdisc`).
#[derive(Debug, Clone, Serialize)]
pub struct QdiscSample {
    pub time_s: f64,
    pub device: usize,
    /// `up` or `down`.
    pub direction: &'static str,
    /// The trace's rate at that time.
    pub trace_mbps: f64,
    /// The rate the kernel's tbf enforces, read back.
    pub kernel_mbps: f64,
    /// Bytes the qdisc sent so far.
    pub sent_bytes: u64,
}

fn default_duration() -> f64 {
    60.0
}

fn default_replan() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudSpec {
    pub workers: usize,
    #[serde(default = "one")]
    pub slowdown: f64,
    /// Dynamic batching in the pool (1: none): frames of one split batched up to the
    /// size where the cloud profile's batch curve pays, within `max_queue_delay_ms`.
    #[serde(default = "one_frame")]
    pub max_batch: usize,
    #[serde(default = "five_ms")]
    pub max_queue_delay_ms: f64,
}

fn one_frame() -> usize {
    1
}

fn five_ms() -> f64 {
    5.0
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

impl Default for CloudSpec {
    fn default() -> Self {
        CloudSpec {
            workers: 1,
            slowdown: 1.0,
            max_batch: 1,
            max_queue_delay_ms: 5.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub class: String,
    #[serde(default = "one_count")]
    pub count: usize,
    pub mbps: Option<f64>,
    pub steps: Option<Vec<(f64, f64)>>,
    pub trace: Option<PathBuf>,
    #[serde(default)]
    pub repeat: bool,
    #[serde(default = "default_rtt")]
    pub rtt_ms: f64,
    #[serde(default)]
    pub loss: f64,
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
    /// The class the device tells the coordinator, when it is not the one it runs as
    /// (a wrong class in its file): the run-time correction has to find its speed.
    pub declares: Option<String>,
    /// Where the device's frames come from in live mode: `dataset` (the model's real
    /// images: the ImageNet images, or Fashion-MNIST for `fashion_cnn`; the default),
    /// `synthetic`, or a folder of images (relative to the project folder). The
    /// simulated mode takes its bytes from the profile, measured on the real images.
    pub source: Option<String>,
}

fn one_count() -> usize {
    1
}

fn default_rtt() -> f64 {
    20.0
}

fn default_in_flight() -> usize {
    2
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// Every device's bandwidth, one run per value.
    #[serde(default)]
    pub mbps: Vec<f64>,
}

/// A bad experiment file: the key, what is wrong, the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ExperimentError(pub String);

impl Experiment {
    /// Parses and checks an experiment; errors name the key and the allowed values.
    pub fn from_toml(text: &str) -> Result<Experiment, ExperimentError> {
        let e: Experiment = toml::from_str(text)
            .map_err(|e| ExperimentError(e.to_string().trim_end().to_string()))?;
        e.validate()?;
        Ok(e)
    }

    pub fn load(path: &Path) -> Result<Experiment, ExperimentError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ExperimentError(format!("{}: {e}", path.display())))?;
        Experiment::from_toml(&text)
            .map_err(|e| ExperimentError(format!("experiment {}: {e}", path.display())))
    }

    pub fn validate(&self) -> Result<(), ExperimentError> {
        self.check().map_err(ExperimentError)
    }

    fn check(&self) -> Result<(), String> {
        let pos = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{key} = {v}: give a number > 0"))
            }
        };
        pos("duration_s", self.duration_s)?;
        pos("replan_s", self.replan_s)?;
        pos("cloud.slowdown", self.cloud.slowdown)?;
        if self.cloud.max_batch == 0 {
            return Err("cloud.max_batch = 0: give 1 (no batching) or more".into());
        }
        if !(self.cloud.max_queue_delay_ms.is_finite() && self.cloud.max_queue_delay_ms >= 0.0) {
            return Err(format!(
                "cloud.max_queue_delay_ms = {}: give a number of milliseconds >= 0",
                self.cloud.max_queue_delay_ms
            ));
        }
        if self.policies.is_empty() {
            return Err(
                "policies is empty: name at least one of device-only, cloud-only, \
                        neurosurgeon, fixed-8bit, dyno, dyno-fleet"
                    .into(),
            );
        }
        if self.devices.is_empty() {
            return Err("no [[devices]]: describe at least one".into());
        }
        for (i, d) in self.devices.iter().enumerate() {
            if d.count == 0 {
                return Err(format!("devices[{i}].count = 0: give at least 1"));
            }
            if d.in_flight == 0 {
                return Err(format!("devices[{i}].in_flight = 0: give at least 1"));
            }
            let links = [d.mbps.is_some(), d.steps.is_some(), d.trace.is_some()]
                .iter()
                .filter(|x| **x)
                .count();
            if links != 1 && self.sweep.mbps.is_empty() {
                return Err(format!(
                    "devices[{i}]: give exactly one of mbps, steps, trace (or a [sweep] mbps)"
                ));
            }
            if d.source.as_deref().is_some_and(|s| s.trim().is_empty()) {
                return Err(format!(
                    "devices[{i}].source is empty: give \"dataset\", \"synthetic\" or an \
                     image folder"
                ));
            }
            if !(d.rtt_ms.is_finite() && d.rtt_ms >= 0.0) {
                return Err(format!(
                    "devices[{i}].rtt_ms = {}: give a number >= 0",
                    d.rtt_ms
                ));
            }
        }
        for (i, &m) in self.sweep.mbps.iter().enumerate() {
            pos(&format!("sweep.mbps[{i}]"), m)?;
        }
        Ok(())
    }
}

/// One (policy, sweep point) result.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub policy: String,
    /// The swept bandwidth (None without a sweep).
    pub mbps: Option<f64>,
    pub frames: usize,
    /// Inferences per second, the whole fleet.
    pub throughput: f64,
    /// What the plans expected of the fleet: each device's frames over the time its
    /// plans expected them to take (`1 / expected_fps` each), summed over the devices.
    pub predicted_throughput: f64,
    pub latency_mean_ms: f64,
    /// The mean of the frames' expected latencies.
    pub predicted_latency_mean_ms: f64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    pub bytes_per_inference: f64,
    /// Mean accuracy (or agreement) points lost to packing, from the profile.
    pub accuracy_drop_points: f64,
    pub cloud_ms_per_inference: f64,
    /// Share of the model's compute done on the devices.
    pub device_share: f64,
    pub plan_changes: u64,
    /// Share of frames that broke a per-frame constraint of the SLO (latency, accuracy
    /// drop, bytes, cloud time).
    pub slo_violations: f64,
    /// Devices whose own throughput fell below the SLO's `min_throughput_fps`.
    pub devices_below_min_fps: usize,
}

/// Everything an experiment produced.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub name: String,
    pub model: String,
    pub mode: &'static str,
    pub devices: usize,
    pub workers: usize,
    pub duration_s: f64,
    pub rows: Vec<Row>,
    #[serde(skip)]
    pub frames: Vec<(String, Option<f64>, SimFrame)>,
    #[serde(skip)]
    pub ticks: Vec<(String, Option<f64>, SimTick)>,
    /// The testbed's qdisc samples (empty in other modes).
    #[serde(skip)]
    pub qdisc: Vec<(String, Option<f64>, QdiscSample)>,
    /// How fast this machine was, against the profile the simulator uses (runs of real
    /// processes only: live with `--processes`, testbed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineSpeed>,
}

/// A whole forward of the model here (one thread, no quota), timed just before the runs
/// and just after, and the cloud's latency profile's (what the simulator and the planner
/// take it to be), milliseconds. On a shared machine its speed moves: one host of these
/// ran a forward in 17.8 ms and 28-30 ms ten minutes apart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MachineSpeed {
    pub profile_ms: f64,
    pub before_ms: f64,
    pub after_ms: f64,
}

impl MachineSpeed {
    /// How far the machine was from the profile, at worst: 0.15 is 15 % off.
    pub fn worst_off(&self) -> f64 {
        [self.before_ms, self.after_ms]
            .iter()
            .map(|m| (m / self.profile_ms - 1.0).abs())
            .fold(0.0, f64::max)
    }
}

impl Experiment {
    /// The pool's batching ([cloud] `max_batch`, `max_queue_delay_ms`) with the batch
    /// curve of the cloud's latency profile in the device-classes file.
    pub fn batching(
        &self,
        classes: &Devices,
        home: &Home,
    ) -> anyhow::Result<crate::sched::batch::Batching> {
        let path = classes.cloud_profile(home, &self.model);
        crate::sched::batch::Batching::resolve(
            &path,
            &self.model,
            self.cloud.max_batch,
            // Whole milliseconds, as the worker's file takes it.
            self.cloud.max_queue_delay_ms.round() / 1e3,
        )
        .map_err(|e| anyhow::anyhow!("[cloud] {e}"))
    }

    /// The sweep's bandwidths, or one run without a sweep.
    pub fn points(&self) -> Vec<Option<f64>> {
        if self.sweep.mbps.is_empty() {
            vec![None]
        } else {
            self.sweep.mbps.iter().map(|m| Some(*m)).collect()
        }
    }
}

impl Outcome {
    /// An outcome of `e` in `mode` with no rows yet.
    pub fn empty(e: &Experiment, mode: &'static str) -> Outcome {
        Outcome {
            name: e.name.clone(),
            model: e.model.clone(),
            mode,
            devices: e.devices.iter().map(|d| d.count).sum(),
            workers: e.cloud.workers,
            duration_s: e.duration_s,
            rows: Vec::new(),
            frames: Vec::new(),
            ticks: Vec::new(),
            qdisc: Vec::new(),
            machine: None,
        }
    }
}

/// Whether a finished frame broke one of `slo`'s per-frame constraints.
pub fn violates(slo: &Slo, f: &SimFrame) -> bool {
    let c = &slo.constraints;
    let over = |limit: Option<f64>, v: f64| limit.is_some_and(|l| v > l);
    over(c.max_latency_ms, (f.end_s - f.start_s) * 1e3)
        || over(c.max_accuracy_drop, f.drop_points)
        || over(c.max_bytes, f.bytes)
        || over(c.max_cloud_ms, f.cloud_s * 1e3)
}

/// One (policy, point) row from the frames of `devices` devices.
pub fn row(
    policy: &str,
    mbps: Option<f64>,
    frames: &[SimFrame],
    devices: usize,
    duration_s: f64,
    plan_changes: u64,
    slo: &Slo,
) -> Row {
    let mut per_device = vec![0usize; devices];
    for f in frames {
        if let Some(c) = per_device.get_mut(f.device) {
            *c += 1;
        }
    }
    let devices_below_min_fps = slo.constraints.min_throughput_fps.map_or(0, |min| {
        per_device
            .iter()
            .filter(|&&c| (c as f64 / duration_s) < min)
            .count()
    });
    let n = frames.len().max(1) as f64;
    let planned = |f: &&SimFrame| f.expected_fps.is_finite() && f.expected_fps > 0.0;
    let predicted_throughput = (0..devices)
        .map(|d| {
            let (count, time) = frames
                .iter()
                .filter(|f| f.device == d)
                .filter(planned)
                .fold((0.0, 0.0), |(c, t), f| (c + 1.0, t + 1.0 / f.expected_fps));
            if time > 0.0 {
                count / time
            } else {
                0.0
            }
        })
        .sum();
    let expected: Vec<f64> = frames
        .iter()
        .filter(planned)
        .map(|f| f.expected_latency_s * 1e3)
        .collect();
    let mut lat: Vec<f64> = frames.iter().map(|f| (f.end_s - f.start_s) * 1e3).collect();
    lat.sort_by(f64::total_cmp);
    Row {
        policy: policy.to_string(),
        mbps,
        frames: frames.len(),
        throughput: frames.len() as f64 / duration_s,
        predicted_throughput,
        latency_mean_ms: lat.iter().sum::<f64>() / n,
        predicted_latency_mean_ms: expected.iter().sum::<f64>() / expected.len().max(1) as f64,
        latency_p50_ms: percentile(&lat, 0.5),
        latency_p95_ms: percentile(&lat, 0.95),
        latency_p99_ms: percentile(&lat, 0.99),
        bytes_per_inference: frames.iter().map(|f| f.bytes).sum::<f64>() / n,
        accuracy_drop_points: frames.iter().map(|f| f.drop_points).sum::<f64>() / n,
        cloud_ms_per_inference: 1e3 * frames.iter().map(|f| f.cloud_s).sum::<f64>() / n,
        device_share: frames.iter().map(|f| f.device_share).sum::<f64>() / n,
        plan_changes,
        slo_violations: frames.iter().filter(|f| violates(slo, f)).count() as f64 / n,
        devices_below_min_fps,
    }
}

/// How far one figure's predictions were from the measurements, over rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorSpread {
    /// |predicted - measured| / measured, the median over the rows, percent.
    pub median_pct: f64,
    pub worst_pct: f64,
    /// The worst row: policy (and bandwidth).
    pub worst_row: String,
}

/// Predicted against measured throughput and mean latency over an experiment's rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictionErrors {
    pub throughput: ErrorSpread,
    pub latency: ErrorSpread,
}

/// The spread of the rows' prediction errors (`None` without rows that were planned).
pub fn prediction_errors(rows: &[Row]) -> Option<PredictionErrors> {
    let spread = |f: fn(&Row) -> (f64, f64)| {
        let mut e: Vec<(f64, String)> = rows
            .iter()
            .filter_map(|r| {
                let (pred, meas) = f(r);
                (pred > 0.0 && meas > 0.0).then(|| {
                    let name = match r.mbps {
                        Some(m) => format!("{} at {m} Mbit/s", r.policy),
                        None => r.policy.clone(),
                    };
                    (100.0 * (pred - meas).abs() / meas, name)
                })
            })
            .collect();
        e.sort_by(|a, b| a.0.total_cmp(&b.0));
        let pcts: Vec<f64> = e.iter().map(|x| x.0).collect();
        let (worst_pct, worst_row) = e.last().cloned()?;
        Some(ErrorSpread {
            median_pct: percentile(&pcts, 0.5),
            worst_pct,
            worst_row,
        })
    };
    Some(PredictionErrors {
        throughput: spread(|r| (r.predicted_throughput, r.throughput))?,
        latency: spread(|r| (r.predicted_latency_mean_ms, r.latency_mean_ms))?,
    })
}

/// Runs an experiment in simulated mode (a progress bar on stderr with `progress`).
pub fn simulate(e: &Experiment, home: &Home, progress: bool) -> anyhow::Result<Outcome> {
    let classes = Devices::load_or_default(e.devices_file.as_deref(), home)?;
    let tables = classes.tables(home, &e.model)?;
    let batching = e.batching(&classes, home)?;
    let slo = match &e.slo {
        Some(p) => Slo::load(&home.root().join(p))?,
        None => Slo::default(),
    };
    let points = e.points();
    let mut out = Outcome::empty(e, "simulated");
    let bar = if progress {
        let b = indicatif::ProgressBar::new((points.len() * e.policies.len()) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len}")
                .expect("a fixed template")
                .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    for point in &points {
        for &planning in &e.policies {
            let name = planning.name().to_string();
            bar.set_message(match point {
                Some(m) => format!("{name} at {m} Mbit/s"),
                None => name.clone(),
            });
            let mut devices = Vec::new();
            for (k, spec) in e.devices.iter().enumerate() {
                let class = classes.class(&spec.class)?;
                let declared = classes.class(spec.declares.as_ref().unwrap_or(&spec.class))?;
                for c in 0..spec.count {
                    let trace = match (point, &spec.mbps, &spec.steps, &spec.trace) {
                        (Some(m), ..) => Trace::constant(*m)?,
                        (None, Some(m), _, _) => Trace::constant(*m)?,
                        (None, None, Some(s), _) => Trace::steps(s.clone(), spec.repeat)?,
                        (None, None, None, Some(p)) => {
                            Trace::load(&home.root().join(p), spec.repeat)?
                        }
                        _ => anyhow::bail!("devices[{k}] has no link"),
                    };
                    let seed = e.seed ^ ((k as u64) << 32) ^ c as u64;
                    devices.push(SimDevice {
                        id: format!("{}-{k}-{c}", spec.class),
                        class: spec.class.clone(),
                        slowdown: class.slowdown,
                        declared_slowdown: declared.slowdown,
                        shaper: Shaper::new(trace, spec.rtt_ms / 1e3, spec.loss, seed)?,
                        rtt_s: spec.rtt_ms / 1e3,
                        in_flight: spec.in_flight,
                    });
                }
            }
            let run = sim::run(
                &tables,
                &mut devices,
                e.cloud.workers,
                e.cloud.slowdown,
                &batching,
                &slo,
                planning,
                e.duration_s,
                e.replan_s,
            );
            out.rows.push(row(
                &name,
                *point,
                &run.frames,
                devices.len(),
                e.duration_s,
                run.plan_changes,
                &slo,
            ));
            out.frames
                .extend(run.frames.into_iter().map(|f| (name.clone(), *point, f)));
            out.ticks
                .extend(run.ticks.into_iter().map(|t| (name.clone(), *point, t)));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Writes `summary.json`, `frames.csv` and `ticks.csv` into `dir`.
pub fn write(out: &Outcome, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let summary = dir.join("summary.json");
    std::fs::write(&summary, serde_json::to_string_pretty(out)?)?;
    let mut csv = String::from(
        "policy,mbps,device,start_s,end_s,latency_ms,split,precision,codec,bytes,drop_points,device_share,expected_fps,expected_latency_ms,budget_fps,device_wait_ms,device_ms,wire_ms,queue_ms,cloud_ms\n",
    );
    for (p, m, f) in &out.frames {
        csv.push_str(&format!(
            "{p},{},{},{:.6},{:.6},{:.3},{},{},{},{:.0},{:.3},{:.4},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3}\n",
            m.map_or(String::new(), |m| m.to_string()),
            f.device,
            f.start_s,
            f.end_s,
            (f.end_s - f.start_s) * 1e3,
            f.split,
            f.precision,
            f.codec,
            f.bytes,
            f.drop_points,
            f.device_share,
            f.expected_fps,
            f.expected_latency_s * 1e3,
            f.budget_fps,
            f.device_wait_s * 1e3,
            f.device_s * 1e3,
            f.wire_s * 1e3,
            f.queue_s * 1e3,
            f.cloud_s * 1e3
        ));
    }
    let frames = dir.join("frames.csv");
    std::fs::write(&frames, csv)?;
    let mut csv = String::from(
        "policy,mbps,time_s,device,true_mbps,estimated_mbps,kernel_mbps,split,precision,k_dev\n",
    );
    for (p, m, t) in &out.ticks {
        csv.push_str(&format!(
            "{p},{},{:.3},{},{:.4},{:.4},{:.4},{},{},{:.4}\n",
            m.map_or(String::new(), |m| m.to_string()),
            t.time_s,
            t.device,
            t.true_mbps,
            t.estimated_mbps,
            t.kernel_mbps,
            t.split,
            t.precision,
            t.k_dev
        ));
    }
    let ticks = dir.join("ticks.csv");
    std::fs::write(&ticks, csv)?;
    let mut extra = Vec::new();
    if !out.qdisc.is_empty() {
        let mut csv =
            String::from("policy,mbps,time_s,device,direction,trace_mbps,kernel_mbps,sent_bytes\n");
        for (p, m, q) in &out.qdisc {
            csv.push_str(&format!(
                "{p},{},{:.3},{},{},{:.4},{:.4},{}\n",
                m.map_or(String::new(), |m| m.to_string()),
                q.time_s,
                q.device,
                q.direction,
                q.trace_mbps,
                q.kernel_mbps,
                q.sent_bytes
            ));
        }
        let path = dir.join("qdisc.csv");
        std::fs::write(&path, csv)?;
        extra.push(path);
    }
    let mut files = vec![summary, frames, ticks];
    files.extend(extra);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
model = "fashion_cnn"
policies = ["dyno", "dyno-fleet"]
[[devices]]
class = "host"
mbps = 10.0
"#;

    #[test]
    fn experiments_parse_and_bad_values_name_the_key() {
        let e = Experiment::from_toml(GOOD).unwrap();
        assert_eq!(e.duration_s, 60.0);
        assert_eq!(e.devices[0].count, 1);
        let bad = GOOD.replace("\"dyno-fleet\"", "\"fastest\"");
        let err = Experiment::from_toml(&bad).unwrap_err().0;
        assert!(
            err.contains("fastest") && err.contains("dyno-fleet"),
            "{err}"
        );
        let bad = GOOD.replace("mbps = 10.0", "mbps = 10.0\nspeed = 3");
        let err = Experiment::from_toml(&bad).unwrap_err().0;
        assert!(err.contains("speed") && err.contains("line"), "{err}");
        let bad = GOOD.replace("mbps = 10.0", "");
        assert!(Experiment::from_toml(&bad)
            .unwrap_err()
            .0
            .contains("exactly one of mbps"));
        let bad = GOOD.replace("mbps = 10.0", "mbps = 10.0\nsource = \" \"");
        let err = Experiment::from_toml(&bad).unwrap_err().0;
        assert!(
            err.contains("devices[0].source") && err.contains("synthetic"),
            "{err}"
        );
        let bad = format!("{GOOD}\n[sweep]\nmbps = [1, -2]\n");
        assert!(Experiment::from_toml(&bad)
            .unwrap_err()
            .0
            .contains("sweep.mbps[1]"));
    }
}
