//! The processes' TOML configuration: one file each (`--config`), every key with a
//! default (`--print-default-config` prints them), the fleet key from the file or the
//! `DYNO_FLEET_KEY` environment variable, flags over both.
use std::path::{Path, PathBuf};

use anyhow::Context;
use dyno::wire::Key;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// What every process shares: the fleet, its key, limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fleet {
    /// Fleet id: peers of other fleets are refused (and ignored in discovery).
    pub id: String,
    /// Shared secret (prefer the DYNO_FLEET_KEY environment variable).
    pub key: Option<String>,
    /// No key, no authentication: local experiments only. Must be said explicitly.
    pub insecure: bool,
    /// Largest frame accepted, bytes.
    pub max_frame: usize,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            id: "dyno".into(),
            key: None,
            insecure: false,
            max_frame: dyno::wire::DEFAULT_MAX_FRAME,
        }
    }
}

impl Fleet {
    /// Checks the limits; the error names the key and the allowed range.
    pub fn check(&self) -> anyhow::Result<()> {
        let (min, max) = (1024, dyno::wire::FRAME_LIMIT);
        anyhow::ensure!(
            (min..=max).contains(&self.max_frame),
            "fleet.max_frame = {} is not allowed: give {min} to {max} bytes",
            self.max_frame
        );
        Ok(())
    }

    /// The key: the environment's over the file's; an error without one unless insecure.
    /// A key written by `dyno key` (`dyno-id1:` and 64 hex digits) is one identity's.
    pub fn key(&self) -> anyhow::Result<Key> {
        let key = std::env::var("DYNO_FLEET_KEY")
            .ok()
            .filter(|k| !k.is_empty())
            .or_else(|| self.key.clone());
        match (key, self.insecure) {
            (Some(_), true) => anyhow::bail!(
                "a fleet key is set and --insecure too: drop one (insecure is for local \
                 experiments without a key)"
            ),
            (Some(k), false) => {
                if let Some(own) = parse_own_key(&k)? {
                    return Ok(Key::Own(own));
                }
                anyhow::ensure!(
                    k.len() >= 16,
                    "the fleet key is {} bytes: use at least 16 (e.g. `openssl rand -hex 16`)",
                    k.len()
                );
                Ok(Key::Secret(k.into_bytes()))
            }
            (None, true) => Ok(Key::Insecure),
            (None, false) => anyhow::bail!(
                "no fleet key: set DYNO_FLEET_KEY (or [fleet] key in the config), or run \
                 with --insecure for a local experiment"
            ),
        }
    }

    /// The key of a coordinator or a worker: the fleet key itself (it derives each
    /// peer's identity key), or none with --insecure.
    pub fn server_key(&self, role: &str) -> anyhow::Result<Key> {
        let key = self.key()?;
        anyhow::ensure!(
            !matches!(key, Key::Own(_)),
            "a {role} needs the fleet key itself: the key given is one identity's (`dyno key`), \
             which only a device or an observer uses"
        );
        Ok(key)
    }
}

/// The address to bind for `listen`: a host as given; for `:PORT` alone, every interface
/// when the fleet is keyed, loopback only when it runs --insecure (an unauthenticated
/// service is not put on the network unless an address says so).
pub fn bind_address(listen: &str, key: &Key) -> String {
    match listen.strip_prefix(':') {
        Some(port) if *key == Key::Insecure => format!("127.0.0.1:{port}"),
        Some(port) => format!("0.0.0.0:{port}"),
        None => listen.to_string(),
    }
}

/// The prefix of one identity's key as `dyno key` prints it.
pub const OWN_KEY_PREFIX: &str = "dyno-id1:";

/// One identity's key from `dyno-id1:` and 64 hex digits; `None` for any other key.
pub fn parse_own_key(k: &str) -> anyhow::Result<Option<[u8; 32]>> {
    let Some(hex) = k.strip_prefix(OWN_KEY_PREFIX) else {
        return Ok(None);
    };
    let bad = || {
        anyhow::anyhow!(
            "the key starts with `{OWN_KEY_PREFIX}` but is not followed by 64 hex digits: \
             copy it whole from `dyno key`"
        )
    };
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(Some(out))
}

/// One identity's key as `dyno key` prints it.
pub fn format_own_key(key: &[u8; 32]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("{OWN_KEY_PREFIX}{hex}")
}

/// `dyno coordinator`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    pub fleet: Fleet,
    /// Control endpoint (agents, workers, `dyno status`). `:PORT` binds every interface
    /// with a fleet key and loopback only with --insecure; give a host to choose.
    pub listen: String,
    /// Data endpoint of the embedded workers (`:PORT` as `listen`).
    pub data_listen: String,
    /// Embedded cloud workers (threads, one inference each at a time); 0 allowed.
    pub workers: usize,
    /// Frames a worker queues beyond its busy slots before it says busy.
    pub queue: usize,
    /// Dynamic batching of the embedded workers.
    pub batching: BatchingConfig,
    /// The model the fleet serves.
    pub model: String,
    /// Device classes and the cloud (default: config/devices.toml in the project).
    pub devices: Option<PathBuf>,
    /// Re-plan at least this often, milliseconds.
    pub replan_ms: u64,
    /// Joins and bandwidth changes re-plan at most this often, milliseconds (0: on
    /// every one; with hundreds of devices that keeps the coordinator busy planning).
    pub replan_gap_ms: u64,
    /// A peer silent this long is gone, milliseconds.
    pub heartbeat_timeout_ms: u64,
    /// Advertise `_dyno._tcp` over mDNS.
    pub mdns: bool,
    /// Plan the fleet together against the pool's capacity (false: each device alone,
    /// as DynO does for one device).
    pub fleet_aware: bool,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            fleet: Fleet::default(),
            listen: ":7700".into(),
            data_listen: ":7701".into(),
            workers: 1,
            queue: dyno::sched::control::DEFAULT_QUEUE,
            batching: BatchingConfig::default(),
            model: "mobilenet_v2".into(),
            devices: None,
            replan_ms: 1000,
            replan_gap_ms: 100,
            heartbeat_timeout_ms: 3000,
            mdns: true,
            fleet_aware: true,
        }
    }
}

/// `dyno worker`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    pub fleet: Fleet,
    pub name: String,
    /// Coordinator control addresses to try when mDNS finds none.
    pub coordinators: Vec<String>,
    /// Data endpoint. `:PORT` binds every interface with a fleet key and loopback only
    /// with --insecure; give a host to choose.
    pub listen: String,
    /// The address agents should use for the data endpoint (default: the listen address).
    pub advertise: Option<String>,
    pub workers: usize,
    pub queue: usize,
    /// Dynamic batching.
    pub batching: BatchingConfig,
    pub model: String,
    pub mdns: bool,
}

/// A worker's dynamic batching (as Triton's dynamic batcher): frames for the same tail
/// (model, split) wait at most `max_queue_delay_ms` to run together, up to `max_batch`
/// and only up to the size that pays at their split, as the batch curve of `profile`
/// measured (`dyno profile latency --batch 1,2,4,8`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Frames in one batch at most (1: one at a time, no batching).
    pub max_batch: usize,
    /// How long the first frame of a batch waits for others, milliseconds.
    pub max_queue_delay_ms: u64,
    /// The latency profile with the batch curve (default: the cloud's, from the
    /// device-classes file: models/profiles/<model>.latency-1thread.json).
    pub profile: Option<PathBuf>,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch: 1,
            max_queue_delay_ms: 5,
            profile: None,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            fleet: Fleet::default(),
            name: "worker".into(),
            coordinators: vec!["127.0.0.1:7700".into()],
            listen: ":7702".into(),
            advertise: None,
            workers: 1,
            queue: dyno::sched::control::DEFAULT_QUEUE,
            batching: BatchingConfig::default(),
            model: "mobilenet_v2".into(),
            mdns: true,
        }
    }
}

/// Where an agent's frames come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// The images of a folder, in order, over and over.
    Folder { path: PathBuf },
    /// The Fashion-MNIST test set (for `fashion_cnn`).
    FashionMnist,
    /// Deterministic synthetic frames.
    Synthetic { seed: u64 },
}

/// An agent's uplink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    /// Constant Mbit/s (used when no trace file is given).
    pub mbps: f64,
    /// Steps `[[seconds, Mbit/s], ...]` (over `mbps`).
    pub steps: Vec<(f64, f64)>,
    /// A two-column trace file (over both).
    pub trace: Option<PathBuf>,
    /// Repeat the trace from its start after its last step.
    pub repeat: bool,
    pub rtt_ms: f64,
    /// Packet loss probability.
    pub loss: f64,
    pub seed: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            mbps: 100.0,
            steps: Vec::new(),
            trace: None,
            repeat: false,
            rtt_ms: 10.0,
            loss: 0.0,
            seed: 1,
        }
    }
}

impl LinkConfig {
    pub fn trace(&self) -> anyhow::Result<dyno::link::Trace> {
        Ok(if let Some(p) = &self.trace {
            dyno::link::Trace::load(p, self.repeat)?
        } else if !self.steps.is_empty() {
            dyno::link::Trace::steps(self.steps.clone(), self.repeat).context("link.steps")?
        } else {
            dyno::link::Trace::constant(self.mbps).context("link.mbps")?
        })
    }
}

/// `dyno agent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub fleet: Fleet,
    /// This device's id (unique in the fleet).
    pub id: String,
    pub coordinators: Vec<String>,
    pub model: String,
    /// Device class name (from `devices`), or the slowdown and threads below.
    pub class: String,
    pub devices: Option<PathBuf>,
    /// Over the class's, when set.
    pub slowdown: Option<f64>,
    pub threads: Option<u32>,
    /// The class this device tells the coordinator, when it is not `class` (a device
    /// whose file names the wrong class: the run-time correction has to find its real
    /// speed). Default: `class`.
    pub declares: Option<String>,
    pub link: LinkConfig,
    pub source: Source,
    /// Frames per second to offer (0: as fast as the pipeline goes).
    pub rate_fps: f64,
    /// Stop after this many frames (0: run until stopped).
    pub frames: u64,
    /// Stop starting frames after this many seconds (0: no limit).
    pub duration_s: f64,
    /// Frames in flight at once.
    pub in_flight: usize,
    /// SLO file (default: within 1 point, max throughput).
    pub slo: Option<PathBuf>,
    pub policy: dyno::sched::Policy,
    /// Also run the whole model locally on each frame and count disagreements.
    pub verify: bool,
    /// Seconds to wait for a worker's answer before finishing the frame on the device.
    pub timeout_s: f64,
    /// JSON lines of every result.
    pub results: Option<PathBuf>,
    pub mdns: bool,
    /// Pin the plan (split, precision, codec) whatever the coordinator decides; its
    /// worker assignment still applies. For measurements.
    pub pin: Option<dyno::sched::perf::Candidate>,
    /// Make each stage last the class's slowdown times its profiled time, by sleeping
    /// (true), or run it as fast as the host lets it (false: on the testbed, where a CPU
    /// quota makes the device slow).
    pub stretch: bool,
    /// On the testbed, keep the device's CPU quota spent while its compute thread waits
    /// (`testbed::cgroup::KeepBusy`), so that a stage is as slow after a wait as back to
    /// back (`[testbed] keep_busy`).
    pub keep_busy: bool,
    /// Once set up, the agent writes its clock's start (Unix seconds, the time its
    /// results' `start_s` count from) to this file: the testbed replays traces on it.
    pub ready_file: Option<PathBuf>,
}

impl AgentConfig {
    /// Checks the numbers a file or a flag can set wrong (the link's are checked by its
    /// shaper, the class's by `setup`); the error names the key and what is allowed.
    pub fn check(&self) -> anyhow::Result<()> {
        let finite = |key: &str, v: f64, min: f64, max: f64| {
            anyhow::ensure!(
                v.is_finite() && (min..=max).contains(&v),
                "{key} = {v:?} is not allowed: give a number from {min} to {max}"
            );
            Ok(())
        };
        finite("rate_fps", self.rate_fps, 0.0, 1e6)?;
        finite("duration_s", self.duration_s, 0.0, 1e9)?;
        finite("timeout_s", self.timeout_s, 0.001, 86_400.0)?;
        anyhow::ensure!(
            self.in_flight >= 1,
            "in_flight = 0 is not allowed: give at least 1"
        );
        Ok(())
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            fleet: Fleet::default(),
            id: "agent".into(),
            coordinators: vec!["127.0.0.1:7700".into()],
            model: "mobilenet_v2".into(),
            class: "host".into(),
            devices: None,
            slowdown: None,
            threads: None,
            declares: None,
            link: LinkConfig::default(),
            source: Source::Synthetic { seed: 1 },
            rate_fps: 0.0,
            frames: 0,
            duration_s: 0.0,
            in_flight: 2,
            slo: None,
            policy: dyno::sched::Policy::Dyno,
            verify: false,
            timeout_s: 2.0,
            results: None,
            mdns: true,
            pin: None,
            stretch: true,
            keep_busy: false,
            ready_file: None,
        }
    }
}

/// Reads a config file (or the defaults without one).
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("config file {}", path.display()))?;
    from_toml(&text).with_context(|| format!("config file {}", path.display()))
}

/// Parses a config file's text; the error points at `--print-default-config`.
pub fn from_toml<T: DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    toml::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{}; `--print-default-config` shows every key",
            e.to_string().trim_end()
        )
    })
}

/// The defaults as TOML.
pub fn print_default<T: Serialize + Default>() -> String {
    toml::to_string_pretty(&T::default()).expect("defaults serialise")
}

/// What every process's file has: its fleet and whether it uses mDNS.
pub trait RoleConfig: Serialize + DeserializeOwned + Default {
    fn fleet_mut(&mut self) -> &mut Fleet;
    fn set_mdns(&mut self, on: bool);
}

macro_rules! role_config {
    ($($t:ty),*) => {$(
        impl RoleConfig for $t {
            fn fleet_mut(&mut self) -> &mut Fleet {
                &mut self.fleet
            }
            fn set_mdns(&mut self, on: bool) {
                self.mdns = on;
            }
        }
    )*};
}

role_config!(CoordinatorConfig, WorkerConfig, AgentConfig);
