//! The testbed's network: a cloud namespace with a bridge, one namespace per device
//! joined to it by a veth pair, and `tc tbf` on each end of a device's pair (uplink on
//! the device's side, downlink on the cloud's), as Mininet's `TCLink` does. This kernel
//! has no `netem`: rate is shaped in the kernel, delay and loss stay in user space.
use std::path::Path;
use std::process::Command;

use anyhow::Context;

/// Every namespace the testbed makes starts with this.
pub const PREFIX: &str = "dyno-tb-";
/// The cloud's namespace (coordinator and workers).
pub const CLOUD_NS: &str = "dyno-tb-cloud";
const BRIDGE: &str = "dytb-br";
/// The cloud's address on the bridge.
pub const CLOUD_IP: &str = "10.79.0.1";
/// The testbed's interfaces hand their qdiscs one segment at a time (GSO packets of at
/// most this many segments, each an MTU of 1,500 bytes), so that the link behaves as a
/// rate, as the performance model has it:
/// - A tbf never sends a packet larger than its bucket. After a rate cut shrank the
///   bucket, a 64 kB GSO packet queued at the old rate stalled the link for good (seen
///   here: an uplink cut from 50 to 2 Mbit/s sent nothing for 20 s, its backlog
///   growing).
/// - A bucket large enough for such packets (16 kB) carried an 8 kB activation at the
///   line's speed: the link measured 46 Mbit/s with small frames and 2 with large ones,
///   and the plan swung between them.
const GSO_MAX_SEGS: u32 = 1;
/// The smallest tbf bucket, in bytes: a few MTU-sized packets.
const MIN_BURST: u64 = 4 * 1024;
const _: () = assert!(GSO_MAX_SEGS as u64 * 1514 < MIN_BURST);
/// Devices at most (one /24).
pub const MAX_DEVICES: usize = 240;

/// Runs a command; the error has its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running `{}`: is it installed (scripts/setup.sh)?", args[0]))?;
    anyhow::ensure!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Device `i`'s namespace.
pub fn device_ns(i: usize) -> String {
    format!("{PREFIX}d{i}")
}

/// Device `i`'s address.
pub fn device_ip(i: usize) -> String {
    format!("10.79.0.{}", i + 10)
}

/// `ip -n NS ARGS`.
fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["ip", "-n", ns];
    all.extend_from_slice(args);
    sh(&all)
}

/// Device `i`'s veth: (its end in its namespace, the cloud's end on the bridge).
fn veth(i: usize) -> (String, String) {
    (format!("dytb{i}d"), format!("dytb{i}c"))
}

/// Moves the calling thread into namespace `ns` (sockets it opens then live there).
pub fn enter(ns: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("network namespace {ns}"))?;
    // SAFETY: setns with a valid descriptor of a network namespace; it changes only the
    // calling thread's namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    anyhow::ensure!(r == 0, "entering {ns}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Which way a device's link goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// The namespaces and links made; removed on drop.
#[derive(Debug)]
pub struct Net {
    /// Each namespace's D-Bus address, when each runs its own Avahi (mDNS discovery).
    pub buses: Option<Vec<(String, String)>>,
}

impl Net {
    /// Makes the cloud namespace, its bridge, and `devices` device namespaces on it;
    /// with `avahi` (the path of `scripts/avahi.sh`), a D-Bus and avahi-daemon in each.
    pub fn create(devices: usize, avahi: Option<&Path>) -> anyhow::Result<Net> {
        anyhow::ensure!(
            devices <= MAX_DEVICES,
            "{devices} devices: the testbed holds at most {MAX_DEVICES}"
        );
        let mut net = Net { buses: None };
        sh(&["ip", "netns", "add", CLOUD_NS])?;
        ip_in(CLOUD_NS, &["link", "set", "lo", "up"])?;
        let gso = GSO_MAX_SEGS.to_string();
        ip_in(CLOUD_NS, &["link", "add", BRIDGE, "type", "bridge"])?;
        ip_in(CLOUD_NS, &["link", "set", BRIDGE, "gso_max_segs", &gso])?;
        ip_in(
            CLOUD_NS,
            &["addr", "add", &format!("{CLOUD_IP}/24"), "dev", BRIDGE],
        )?;
        ip_in(CLOUD_NS, &["link", "set", BRIDGE, "up", "multicast", "on"])?;
        for i in 0..devices {
            let ns = device_ns(i);
            let (d, c) = veth(i);
            sh(&["ip", "netns", "add", &ns])?;
            ip_in(&ns, &["link", "set", "lo", "up"])?;
            sh(&[
                "ip", "link", "add", &d, "netns", &ns, "type", "veth", "peer", "name", &c, "netns",
                CLOUD_NS,
            ])?;
            ip_in(&ns, &["link", "set", &d, "gso_max_segs", &gso])?;
            ip_in(CLOUD_NS, &["link", "set", &c, "gso_max_segs", &gso])?;
            ip_in(CLOUD_NS, &["link", "set", &c, "master", BRIDGE])?;
            ip_in(CLOUD_NS, &["link", "set", &c, "up"])?;
            ip_in(
                &ns,
                &["addr", "add", &format!("{}/24", device_ip(i)), "dev", &d],
            )?;
            ip_in(&ns, &["link", "set", &d, "up", "multicast", "on"])?;
        }
        if let Some(script) = avahi {
            let mut buses = Vec::new();
            for ns in std::iter::once(CLOUD_NS.to_string()).chain((0..devices).map(device_ns)) {
                let out = Command::new(script)
                    .env("DYNO_NETNS", &ns)
                    .output()
                    .with_context(|| format!("running {}", script.display()))?;
                anyhow::ensure!(
                    out.status.success(),
                    "starting Avahi in {ns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                buses.push((ns, String::from_utf8_lossy(&out.stdout).trim().to_string()));
            }
            net.buses = Some(buses);
        }
        Ok(net)
    }

    /// The D-Bus address of namespace `ns`, when it runs its own Avahi.
    pub fn bus(&self, ns: &str) -> Option<&str> {
        self.buses
            .as_ref()?
            .iter()
            .find(|(n, _)| n == ns)
            .map(|(_, b)| b.as_str())
    }

    /// Shapes device `i`'s link one way to `mbps`: `tc qdisc change` (the rate changed in
    /// place, the qdisc's counters kept), or `replace` the first time. A tbf cannot be
    /// shut: an outage (0) is 8 kbit/s.
    pub fn shape(&self, i: usize, dir: Direction, mbps: f64) -> anyhow::Result<()> {
        anyhow::ensure!(
            mbps.is_finite() && mbps >= 0.0,
            "a link rate of {mbps} Mbit/s: give a number >= 0"
        );
        let (ns, dev) = qdisc_of(i, dir);
        let kbit = ((mbps * 1e3).round() as u64).max(8);
        // A bucket of 1 ms at the rate, at least a few packets (GSO_MAX_SEGS): what leaves
        // at the line's speed is a small part of any activation (10 ms, 25 kB at
        // 20 Mbit/s, made 56 kB frames measure 36 Mbit/s).
        let burst = ((mbps * 1e6 / 8.0 * 0.001) as u64).max(MIN_BURST);
        let (rate, burst) = (format!("{kbit}kbit"), burst.to_string());
        let tc = |verb: &str| {
            sh(&[
                "ip", "netns", "exec", &ns, "tc", "qdisc", verb, "dev", &dev, "root", "tbf",
                "rate", &rate, "burst", &burst, "latency", "1s",
            ])
        };
        tc("change").or_else(|_| tc("replace"))?;
        Ok(())
    }

    /// What the kernel says of device `i`'s qdisc one way: (rate in Mbit/s, bytes sent).
    pub fn qdisc_stats(&self, i: usize, dir: Direction) -> anyhow::Result<(f64, u64)> {
        let (ns, dev) = qdisc_of(i, dir);
        let text = sh(&[
            "ip", "netns", "exec", &ns, "tc", "-s", "qdisc", "show", "dev", &dev,
        ])?;
        parse_qdisc(&text).with_context(|| format!("`tc -s qdisc show dev {dev}`: {text}"))
    }
}

fn qdisc_of(i: usize, dir: Direction) -> (String, String) {
    let (d, c) = veth(i);
    match dir {
        Direction::Up => (device_ns(i), d),
        Direction::Down => (CLOUD_NS.to_string(), c),
    }
}

/// (rate in Mbit/s, bytes sent) from `tc -s qdisc show` of a tbf.
fn parse_qdisc(text: &str) -> Option<(f64, u64)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let rate = words
        .iter()
        .position(|w| *w == "rate")
        .and_then(|i| words.get(i + 1))
        .and_then(|r| parse_rate(r))?;
    let sent = words
        .iter()
        .position(|w| *w == "Sent")
        .and_then(|i| words.get(i + 1))
        .and_then(|b| b.parse().ok())?;
    Some((rate, sent))
}

/// `10Mbit`, `500Kbit`, `2Gbit`, `800bit` in Mbit/s.
fn parse_rate(r: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = r.strip_suffix("Gbit") {
        (n, 1e3)
    } else if let Some(n) = r.strip_suffix("Mbit") {
        (n, 1.0)
    } else if let Some(n) = r.strip_suffix("Kbit") {
        (n, 1e-3)
    } else if let Some(n) = r.strip_suffix("bit") {
        (n, 1e-6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_all();
    }
}

/// Removes every testbed namespace (with its veths and qdiscs) and what runs in it;
/// returns the namespaces removed.
pub fn remove_all() -> Vec<String> {
    let list = sh(&["ip", "netns", "list"]).unwrap_or_default();
    let mut removed = Vec::new();
    for ns in list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
    {
        let pids = sh(&["ip", "netns", "pids", ns]).unwrap_or_default();
        for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = sh(&["ip", "netns", "del", ns]);
        let _ = std::fs::remove_dir_all(format!("/run/dyno-netns/{ns}"));
        removed.push(ns.to_string());
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tc_statistics_parse() {
        let text = "qdisc tbf 8001: root refcnt 2 rate 20Mbit burst 25000b lat 1s \n \
                    Sent 123456 bytes 90 pkt (dropped 0, overlimits 3 requeues 0) \n";
        assert_eq!(parse_qdisc(text), Some((20.0, 123456)));
        assert_eq!(parse_rate("500Kbit"), Some(0.5));
        assert_eq!(parse_rate("2Gbit"), Some(2000.0));
        assert_eq!(parse_qdisc("qdisc noqueue 0: root"), None);
    }
}
