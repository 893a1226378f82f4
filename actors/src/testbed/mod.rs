//! The testbed: real hosts on one machine, as Mininet makes them. Every device agent runs
//! in its own network namespace and its own cgroup with a CPU quota (its class's
//! speed, found by [`calibrate`]); the coordinator and its workers run in a cloud
//! namespace with a quota of their own; the namespaces meet on a bridge, and each
//! device's link is shaped by `tc tbf` both ways, its rate changed on a trace's
//! schedule. Nothing sleeps to emulate compute: a head runs as fast as its quota lets it.
//!
//! Everything it makes (namespaces, veths, qdiscs, cgroups, the daemons inside) is
//! removed when the [`Testbed`] is dropped (at the end, on a panic), on Ctrl-C and
//! SIGTERM ([`on_signal_clean_up`]), and, after a run killed with SIGKILL, by the next
//! start ([`clean_up`]).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub mod calibrate;
pub mod cgroup;
pub mod net;

use cgroup::{CpuGroup, Hierarchy};
use net::Net;

/// The shortest and longest period of a quota, microseconds.
pub const MIN_PERIOD_US: u64 = 5_000;
pub const MAX_PERIOD_US: u64 = 20_000;

/// The period of a quota of `cores`: as short as the kernel's least quota (1 ms) lets
/// it be, within [`MIN_PERIOD_US`, `MAX_PERIOD_US`]. The kernel throttles in whole
/// periods: a thread that starts a period runs its quota at full speed, then waits for
/// the next one. So a short task that waits between runs (a head, while its frames are
/// in flight) is slowed less than the quota says, by less the shorter the period: 4 ms
/// of work every 30 ms under 0.16 of a core took 4.7 ms (median) with a 20 ms period
/// and 24.8 ms with 6.25 ms, against 30 ms back to back.
pub fn period_us(cores: f64) -> u64 {
    let p = (cgroup::MIN_QUOTA_US as f64 / cores.max(1e-6)).ceil();
    (p.min(MAX_PERIOD_US as f64) as u64).clamp(MIN_PERIOD_US, MAX_PERIOD_US)
}

/// Cores kept free for the coordinator's own work and the kernel.
pub const HEADROOM_CORES: f64 = 0.25;

/// The CPU quotas of the device classes on this machine: `dyno testbed calibrate`
/// writes it (by default `config/testbed.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// The model timed.
    pub model: String,
    /// The latency profile the slowdowns are measured against (the devices' profile
    /// of the device-classes file).
    pub profile: String,
    /// The machine it was measured on (its CPU model) and when.
    pub machine: String,
    pub date: String,
    /// Full forward of the model, one thread, no quota, milliseconds.
    pub free_full_ms: f64,
    /// The same time in the latency profile the planner scales, milliseconds.
    pub profile_full_ms: f64,
    pub classes: BTreeMap<String, ClassQuota>,
}

/// One class's quota and what it gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassQuota {
    /// Cores (0.1: a tenth of one core).
    pub cores: f64,
    /// The quota's period ([`period_us`] of the cores).
    pub period_us: u64,
    /// The class's slowdown in `config/devices.toml`.
    pub nominal: f64,
    /// Full forward under the quota over the profile's.
    pub measured: f64,
    /// Full forward under the quota over the same without a quota.
    pub measured_free: f64,
    /// The head to the middle split under the quota over the profile's.
    pub measured_head: f64,
    /// The same head, each started after a wait (`calibrate::WAIT`), over the profile's.
    #[serde(default)]
    pub measured_head_after_wait: f64,
}

impl Calibration {
    pub fn load(path: &Path) -> anyhow::Result<Calibration> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "the testbed's CPU quotas {}: run `dyno testbed calibrate` to measure them",
                path.display()
            )
        })?;
        toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "the testbed's CPU quotas {}: {}; `dyno testbed calibrate` writes this file",
                path.display(),
                e.to_string().trim_end()
            )
        })
    }

    /// The quota of `class`, or an error naming the calibrated ones and the fix.
    pub fn cores(&self, class: &str) -> anyhow::Result<f64> {
        match self.classes.get(class) {
            Some(q) => Ok(q.cores),
            None => anyhow::bail!(
                "device class `{class}` has no CPU quota on the testbed (calibrated: {}): give \
                 it a slowdown above 1 in the devices file and run `dyno testbed calibrate \
                 --class {class}`, or use a calibrated class",
                self.classes.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// Where `dyno testbed calibrate` writes this machine's quotas: out/testbed.toml, beside
/// the profiles measured here (out/profiles/).
pub fn measured_calibration(home: &dyno::home::Home) -> PathBuf {
    home.root().join("out").join("testbed.toml")
}

/// The quotas the testbed reads: this machine's (out/testbed.toml) when measured, else
/// the shipped config/testbed.toml (measured on the machine it names).
pub fn default_calibration(home: &dyno::home::Home) -> PathBuf {
    let measured = measured_calibration(home);
    if measured.exists() {
        measured
    } else {
        home.root().join("config").join("testbed.toml")
    }
}

/// Whether the machine can hold the quotas: device quotas, the cloud's and the
/// headroom within its cores; the error has the arithmetic and the fixes.
pub fn fits(devices: &[(String, f64)], cloud_cores: f64, cpus: f64) -> anyhow::Result<()> {
    let mut by_class: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for (class, cores) in devices {
        let e = by_class.entry(class).or_insert((0, *cores));
        e.0 += 1;
    }
    let device_sum: f64 = devices.iter().map(|d| d.1).sum();
    let need = device_sum + cloud_cores + HEADROOM_CORES;
    if need <= cpus + 1e-9 {
        return Ok(());
    }
    let terms: Vec<String> = by_class
        .iter()
        .map(|(c, (n, cores))| format!("{n} x {cores:.3} ({c})"))
        .collect();
    anyhow::bail!(
        "the testbed does not fit this machine: {} + {cloud_cores:.2} (cloud) + \
         {HEADROOM_CORES:.2} (headroom for the coordinator and the kernel) = {need:.2} cores, \
         and it has {cpus}. Fix: fewer devices, slower classes, or fewer cloud workers (each \
         takes a core)",
        terms.join(" + ")
    )
}

/// This machine's cores.
pub fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Why the testbed cannot run here, if it cannot: root, the tools, the `cpu` controller.
pub fn why_not() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "the testbed needs root: network namespaces, tc and cgroups are root's; run it \
             with sudo"
                .into(),
        );
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("nsenter", "util-linux"),
    ] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!(
                "`{tool}` is missing: install {package} (scripts/setup.sh installs iproute2; \
                 util-linux is part of every Debian)"
            ));
        }
    }
    Hierarchy::detect().err().map(|e| e.to_string())
}

/// Removes whatever a testbed left (namespaces, their daemons, veths and qdiscs,
/// cgroups); returns what it removed, for the log.
pub fn clean_up() -> Vec<String> {
    let mut removed = net::remove_all();
    if let Ok(h) = Hierarchy::detect() {
        removed.extend(
            cgroup::remove_all(&h)
                .into_iter()
                .map(|p| p.display().to_string()),
        );
    }
    removed
}

/// Set when a signal's handler has begun removing the testbed.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// On Ctrl-C or SIGTERM: remove the testbed and exit (130). Set once per process.
pub fn on_signal_clean_up() {
    let _ = ctrlc::set_handler(|| {
        STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
        eprintln!("dyno testbed: stopped; removing the testbed");
        clean_up();
        std::process::exit(130);
    });
}

/// When a signal's handler is removing the testbed, waits for it to exit the process
/// (130): the run it stopped fails meanwhile (its hosts vanish), and that failure must
/// not end the process first, with 1 (a SIGTERM in `actors/tests/testbed.rs` did, one
/// run in several).
pub fn wait_for_a_stopping_handler() {
    if STOPPING.load(std::sync::atomic::Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

/// A running testbed: the cloud and `devices.len()` device hosts.
pub struct Testbed {
    pub net: Net,
    pub cloud: CpuGroup,
    pub devices: Vec<CpuGroup>,
}

impl Testbed {
    /// Builds it: leftovers removed, the fit checked, namespaces, links, quotas.
    /// `devices`: each device's (class, cores); `avahi`: `scripts/avahi.sh` to give
    /// each namespace its own mDNS daemon, or none for static addresses.
    pub fn start(
        devices: &[(String, f64)],
        cloud_cores: f64,
        avahi: Option<&Path>,
    ) -> anyhow::Result<Testbed> {
        if let Some(why) = why_not() {
            anyhow::bail!("{why}");
        }
        let left = clean_up();
        if !left.is_empty() {
            tracing::warn!(removed = ?left, "a previous testbed's leftovers were removed");
        }
        fits(devices, cloud_cores, cpus())?;
        let h = Hierarchy::detect()?;
        // The coordinator shares the cloud's group with its workers: the headroom is its,
        // so that its own work (plans, sessions, sockets) does not come out of theirs.
        let cloud_group = cloud_cores + HEADROOM_CORES;
        let cloud = CpuGroup::create(&h, "cloud", cloud_group, period_us(cloud_group))?;
        cloud.take_cores_first()?;
        let groups = devices
            .iter()
            .enumerate()
            .map(|(i, (_, cores))| {
                CpuGroup::create(&h, &format!("d{i}"), *cores, period_us(*cores))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let net = Net::create(devices.len(), avahi)?;
        Ok(Testbed {
            net,
            cloud,
            devices: groups,
        })
    }

    /// `exe args` as a process of the cloud host.
    pub fn cloud_command(&self, exe: &Path) -> Command {
        host_command(&self.cloud, net::CLOUD_NS, self.net.bus(net::CLOUD_NS), exe)
    }

    /// `exe args` as a process of device `i`'s host: an agent whose compute thread runs
    /// under the host's quota (where the hierarchy places threads; else the whole
    /// process).
    pub fn device_command(&self, i: usize, exe: &Path) -> Command {
        let ns = net::device_ns(i);
        let group = &self.devices[i];
        match group.threads() {
            Some(tasks) => {
                let mut c = in_netns(Command::new("nsenter"), &ns, self.net.bus(&ns), exe);
                c.env(cgroup::COMPUTE_CGROUP, tasks);
                c
            }
            None => host_command(group, &ns, self.net.bus(&ns), exe),
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Everything, the processes inside first; the fields' own drops find nothing.
        clean_up();
    }
}

/// A command that moves itself into `group`, enters namespace `ns` and becomes `exe`
/// (with the namespace's D-Bus, when it has one; nsenter execs, so the process's id is
/// the one spawned).
pub fn host_command(group: &CpuGroup, ns: &str, bus: Option<&str>, exe: &Path) -> Command {
    in_netns(limited_command(group, Path::new("nsenter")), ns, bus, exe)
}

/// `c` (nsenter) running `exe` in namespace `ns` with its D-Bus. nsenter, not `ip netns
/// exec`: that one mounts a fresh /sys, without the cgroup hierarchy a device's compute
/// thread must find.
fn in_netns(mut c: Command, ns: &str, bus: Option<&str>, exe: &Path) -> Command {
    c.arg(format!("--net=/run/netns/{ns}")).arg(exe);
    if let Some(bus) = bus {
        c.env("DBUS_SYSTEM_BUS_ADDRESS", bus);
    }
    c
}

/// A command that moves itself into `group` and becomes `exe`, in this namespace.
pub fn limited_command(group: &CpuGroup, exe: &Path) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
        .arg(group.procs())
        .arg(exe);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_that_does_not_fit_is_refused_with_the_arithmetic() {
        let six: Vec<(String, f64)> = (0..6).map(|_| ("slow10x".to_string(), 0.12)).collect();
        fits(&six, 1.0, 2.0).unwrap();
        let e = fits(&six, 2.0, 2.0).unwrap_err().to_string();
        assert!(
            e.contains("6 x 0.120 (slow10x) + 2.00 (cloud) + 0.25") && e.contains("= 2.97 cores"),
            "{e}"
        );
        assert!(e.contains("Fix:"), "{e}");
    }
}
