//! One device's link as the planner sees it, and when it is probed.
use super::STARTING_LINK;
use crate::sched::bandwidth::Estimator;
use crate::sched::perf::Link;

/// When links are probed: the agents' heartbeat period, the time without a measured
/// rate after which a link is probed, and the probe's size: enough bytes to last
/// `rtts` round trips at the rate the link is believed to have (a transfer that is
/// mostly RTT says nothing of the rate), within `min_bytes..=max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeRule {
    pub beat_s: f64,
    pub idle_s: f64,
    pub rtts: f64,
    pub min_bytes: u32,
    pub max_bytes: u32,
}

/// The rule the fleet runs by.
pub const PROBE: ProbeRule = ProbeRule {
    beat_s: 0.5,
    idle_s: 2.0,
    rtts: 2.0,
    min_bytes: 32 << 10,
    max_bytes: 1 << 20,
};

impl ProbeRule {
    /// The probe's size for a link believed to be `link`.
    pub fn bytes(&self, link: Link) -> u32 {
        let want = self.rtts * link.bandwidth_bps * link.rtt_s.max(0.001) / 8.0;
        want.clamp(f64::from(self.min_bytes), f64::from(self.max_bytes)) as u32
    }
}

/// One device's link as the planner sees it.
#[derive(Debug, Clone, Default)]
pub struct LinkState {
    estimator: Estimator,
    /// The estimate the last plan used (`None`: nothing measured yet).
    planned: Option<Link>,
    /// When a probe was last asked for, and its size.
    probed: Option<(f64, u32)>,
}

impl LinkState {
    /// Whether the link was measured (not the starting link's assumption).
    pub fn measured(&self) -> bool {
        self.planned.is_some()
    }

    /// The link to plan with.
    pub fn link(&self) -> Link {
        self.planned.unwrap_or(STARTING_LINK)
    }

    /// A transfer of `bytes` in `seconds` (one RTT included); true when the estimate
    /// moved enough to re-plan for.
    pub fn observe_transfer(&mut self, now_s: f64, bytes: u64, seconds: f64) -> bool {
        self.estimator.observe_transfer(now_s, bytes, seconds);
        self.update()
    }

    /// A round trip; true when the estimate moved enough to re-plan for.
    pub fn observe_rtt(&mut self, now_s: f64, rtt_s: f64) -> bool {
        self.estimator.observe_rtt(now_s, rtt_s);
        self.update()
    }

    fn update(&mut self) -> bool {
        let Some(mut link) = self.estimator.link() else {
            return false;
        };
        if self.estimator.rtt_s().is_none() {
            link.rtt_s = STARTING_LINK.rtt_s;
        }
        if moved(self.planned, link) {
            self.planned = Some(link);
            true
        } else {
            false
        }
    }

    /// The probe to send now, in bytes (and, if any, that it was asked for): when no
    /// rate was measured for the rule's idle time, nor a probe asked for within it. A
    /// probe that measured no rate (it was mostly RTT, or lost) is followed by one twice
    /// its size; a rate far above the estimate is confirmed by a probe at the next beat.
    pub fn probe_due(&mut self, now_s: f64, rule: &ProbeRule) -> Option<u32> {
        // A rate far above the estimate is confirmed at the next beat, not in idle_s.
        if self.estimator.unconfirmed() {
            if self
                .probed
                .is_some_and(|(t, _)| now_s - t < 0.5 * rule.beat_s)
            {
                return None;
            }
            let bytes = rule.bytes(self.link());
            self.probed = Some((now_s, bytes));
            return Some(bytes);
        }
        if !self.estimator.needs_probe(now_s) {
            return None;
        }
        let bytes = match self.probed {
            Some((t, _)) if now_s - t < rule.idle_s => return None,
            // Asked before, and no rate since.
            Some((t, b)) if self.estimator.needs_probe(t + rule.idle_s) => {
                b.saturating_mul(2).min(rule.max_bytes)
            }
            _ => rule.bytes(self.link()),
        };
        self.probed = Some((now_s, bytes));
        Some(bytes)
    }
}

/// An estimate moved enough to re-plan for.
fn moved(old: Option<Link>, new: Link) -> bool {
    match old {
        None => true,
        Some(o) => {
            (new.bandwidth_bps / o.bandwidth_bps - 1.0).abs() > 0.1
                || (new.rtt_s - o.rtt_s).abs() > 0.2 * o.rtt_s.max(0.005)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_starts_assumed_moves_by_ten_percent_and_is_probed_when_idle() {
        let mut l = LinkState::default();
        assert_eq!(l.link(), STARTING_LINK);
        // Two round trips at 10 Mbit/s and 20 ms: 50 kB.
        assert_eq!(l.probe_due(0.0, &PROBE), Some(50_000));
        // Asked once: not again within the idle time.
        assert_eq!(l.probe_due(1.0, &PROBE), None);
        assert!(l.observe_transfer(1.0, 1_000_000, 0.8));
        assert!((l.link().bandwidth_bps / 10e6 - 1.0).abs() < 1e-9);
        // 2.5 % (the median of 10 and 10.5) is not a move; a step is followed after
        // three samples.
        assert!(!l.observe_transfer(1.1, 1_000_000, 0.8 / 1.05));
        for t in [1.2, 1.3, 1.4] {
            l.observe_transfer(t, 1_000_000, 1.6);
        }
        assert!((l.link().bandwidth_bps / 5e6 - 1.0).abs() < 1e-9);
        assert_eq!(l.probe_due(3.0, &PROBE), None);
        // At 5 Mbit/s the probe would be smaller than the floor.
        assert_eq!(l.probe_due(3.5, &PROBE), Some(32 << 10));
        // That probe measured nothing: the next one is twice as large.
        assert_eq!(l.probe_due(5.5, &PROBE), Some(64 << 10));
        // The link comes back at 50 Mbit/s: the first fast rate is checked by a probe at
        // the next beat, and the second one is believed.
        assert!(!l.observe_transfer(6.0, 1_000_000, 0.16));
        assert_eq!(l.probe_due(6.0, &PROBE), Some(32 << 10));
        assert_eq!(l.probe_due(6.1, &PROBE), None);
        assert!(l.observe_transfer(6.4, 1_000_000, 0.16));
        assert!((l.link().bandwidth_bps / 50e6 - 1.0).abs() < 1e-9);
        let fast = Link::mbps(1000.0, 40.0);
        assert_eq!(PROBE.bytes(fast), 1 << 20);
    }
}
