//! Bandwidth and RTT estimates from real transfers.
//!
//! Each transfer gives a sample `(bytes, seconds)`, timed by the sender from the first
//! byte out to the receiver's acknowledgement, so one RTT is inside it. Its rate is
//! `8 * bytes / (seconds - rtt)`; a transfer so small that the RTT is more than 90 % of
//! it says little about bandwidth and is used for the RTT only. The estimate is the **median of
//! the last `window` rates** no older than `max_age_s`: one outlier in a window of five
//! moves nothing, and after a step the estimate follows within `window / 2 + 1` samples;
//! two rates in a row more than `recover` times the estimate restart the window (a link
//! back from an outage is believed at once, and the transfers it then carries check it).
//! RTT is the **smallest** of the recent RTT samples (pings, heartbeats, small
//! transfers): the link's own round trip. A heartbeat that waited behind the device's
//! frames in a queue on the path measured that queue, not the link; subtracting it from
//! a transfer would credit the link with a rate it does not have (on a 2 Mbit/s tbf
//! link, median RTTs of half a second made estimates of tens of Mbit/s).
//! When no transfer gave a rate for `probe_after_s` (nothing was sent, or only transfers
//! too small to time against the RTT), [`Estimator::needs_probe`] asks for an active
//! probe.
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::perf::Link;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimatorConfig {
    /// Rates in the median.
    pub window: usize,
    /// Samples older than this (seconds) are dropped when newer ones exist.
    pub max_age_s: f64,
    /// Seconds without a sample after which a probe is due.
    pub probe_after_s: f64,
    /// Two rates in a row more than this many times the estimate restart the window.
    pub recover: f64,
}

impl Default for EstimatorConfig {
    fn default() -> Self {
        EstimatorConfig {
            window: 5,
            max_age_s: 10.0,
            probe_after_s: 2.0,
            recover: 4.0,
        }
    }
}

/// One link's estimator.
#[derive(Debug, Clone)]
pub struct Estimator {
    config: EstimatorConfig,
    /// (time, bits per second).
    rates: VecDeque<(f64, f64)>,
    /// (time, seconds).
    rtts: VecDeque<(f64, f64)>,
    /// When the last rate sample was taken.
    last_rate_s: Option<f64>,
    /// The last rate, when it was far above the estimate.
    high: Option<(f64, f64)>,
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    })
}

fn push(q: &mut VecDeque<(f64, f64)>, cap: usize, max_age: f64, now: f64, v: f64) {
    q.push_back((now, v));
    while q.len() > cap.max(1) {
        q.pop_front();
    }
    while q.len() > 1 && q.front().is_some_and(|&(t, _)| now - t > max_age) {
        q.pop_front();
    }
}

impl Estimator {
    pub fn new(config: EstimatorConfig) -> Estimator {
        Estimator {
            config,
            rates: VecDeque::new(),
            rtts: VecDeque::new(),
            last_rate_s: None,
            high: None,
        }
    }

    /// A transfer of `bytes` that took `seconds` (including one RTT), finished at `now_s`.
    /// Samples that are not finite and positive are ignored.
    pub fn observe_transfer(&mut self, now_s: f64, bytes: u64, seconds: f64) {
        if !(seconds.is_finite() && seconds > 0.0 && now_s.is_finite()) || bytes == 0 {
            return;
        }
        let rtt = self.rtt_s().unwrap_or(0.0);
        let wire = seconds - rtt;
        if wire < 0.1 * seconds {
            // RTT-dominated: its whole time bounds the RTT from above.
            if self.rtts.is_empty() || seconds < rtt {
                self.observe_rtt(now_s, seconds);
            }
            return;
        }
        self.last_rate_s = Some(now_s);
        let c = self.config;
        let rate = 8.0 * bytes as f64 / wire;
        let high = self.bandwidth_bps().is_some_and(|b| rate > c.recover * b);
        match (high, self.high.take()) {
            // A link back from an outage (or far faster than believed), seen twice:
            // believed at once; the transfers it brings check it.
            (true, Some(first)) => {
                self.rates.clear();
                self.rates.push_back(first);
            }
            (true, None) => self.high = Some((now_s, rate)),
            (false, _) => {}
        }
        push(&mut self.rates, c.window, c.max_age_s, now_s, rate);
    }

    /// A round-trip time sample (a ping, a heartbeat).
    pub fn observe_rtt(&mut self, now_s: f64, rtt_s: f64) {
        if !(rtt_s.is_finite() && rtt_s >= 0.0 && now_s.is_finite()) {
            return;
        }
        let c = self.config;
        push(&mut self.rtts, c.window, c.max_age_s, now_s, rtt_s);
    }

    /// Whether the last rate was far above the estimate and waits for a second one to
    /// restart the window (worth a probe now).
    pub fn unconfirmed(&self) -> bool {
        self.high.is_some()
    }

    /// Bits per second, once a transfer was seen.
    pub fn bandwidth_bps(&self) -> Option<f64> {
        median(self.rates.iter().map(|r| r.1))
    }

    /// The link's own round trip: the smallest recent sample.
    pub fn rtt_s(&self) -> Option<f64> {
        self.rtts.iter().map(|r| r.1).min_by(f64::total_cmp)
    }

    /// The link as estimated, when there is a bandwidth figure.
    pub fn link(&self) -> Option<Link> {
        Some(Link {
            bandwidth_bps: self.bandwidth_bps()?,
            rtt_s: self.rtt_s().unwrap_or(0.0),
        })
    }

    /// Whether an active probe is due at `now_s`: no rate was measured yet, or none for
    /// `probe_after_s`.
    pub fn needs_probe(&self, now_s: f64) -> bool {
        match self.last_rate_s {
            None => true,
            Some(t) => now_s - t >= self.config.probe_after_s,
        }
    }
}

impl Default for Estimator {
    fn default() -> Self {
        Estimator::new(EstimatorConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic noise source in [-1, 1).
    fn noise(i: u64) -> f64 {
        let x = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// Seconds to send `bytes` at `mbps` with `rtt`.
    fn secs(bytes: u64, mbps: f64, rtt: f64) -> f64 {
        8.0 * bytes as f64 / (mbps * 1e6) + rtt
    }

    #[test]
    fn follows_a_tenfold_drop_within_three_samples() {
        let mut e = Estimator::default();
        e.observe_rtt(0.0, 0.02);
        let mut t = 0.0;
        for _ in 0..10 {
            t += 0.1;
            e.observe_transfer(t, 100_000, secs(100_000, 50.0, 0.02));
        }
        assert!((e.bandwidth_bps().unwrap() / 50e6 - 1.0).abs() < 1e-9);
        let mut followed = None;
        for k in 1..=10 {
            t += 0.1;
            e.observe_transfer(t, 100_000, secs(100_000, 5.0, 0.02));
            let est = e.bandwidth_bps().unwrap() / 1e6;
            if (est / 5.0 - 1.0).abs() < 0.05 {
                followed = Some(k);
                break;
            }
        }
        assert_eq!(followed, Some(3), "samples to follow a 10x drop");
    }

    #[test]
    fn stable_under_noise_and_deaf_to_outliers() {
        let mut e = Estimator::default();
        e.observe_rtt(0.0, 0.01);
        let (mut worst_sample, mut worst_estimate) = (0.0f64, 0.0f64);
        for i in 0..500u64 {
            let t = 0.05 * i as f64;
            // +-30 % noise on the rate, and every 7th sample a 20x outlier either way.
            let mut mbps = 20.0 * (1.0 + 0.3 * noise(i));
            if i % 7 == 3 {
                mbps *= if i % 2 == 0 { 20.0 } else { 0.05 };
            }
            e.observe_transfer(t, 200_000, secs(200_000, mbps, 0.01));
            worst_sample = worst_sample.max((mbps / 20.0 - 1.0).abs());
            if i >= 5 {
                let err = (e.bandwidth_bps().unwrap() / 20e6 - 1.0).abs();
                worst_estimate = worst_estimate.max(err);
            }
        }
        assert!(worst_sample > 10.0);
        assert!(
            worst_estimate < 0.3,
            "worst estimate error {worst_estimate}"
        );
    }

    #[test]
    fn at_a_constant_rate_the_estimate_is_steadier_than_the_samples() {
        let mut e = Estimator::default();
        e.observe_rtt(0.0, 0.02);
        let (mut raw, mut est) = (Vec::new(), Vec::new());
        for i in 0..2000u64 {
            let mbps = 10.0 * (1.0 + 0.1 * noise(i));
            e.observe_transfer(0.05 * i as f64, 250_000, secs(250_000, mbps, 0.02));
            if i >= 5 {
                raw.push(mbps / 10.0 - 1.0);
                est.push(e.bandwidth_bps().unwrap() / 10e6 - 1.0);
            }
        }
        let rms = |v: &[f64]| (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
        let (r, m) = (rms(&raw), rms(&est));
        eprintln!("constant 10 Mbit/s, +-10 % noise: samples rms {r:.4}, estimate rms {m:.4}");
        assert!(m < 0.6 * r, "estimate rms {m} against samples {r}");
        // A tenfold rise is followed as fast as a drop.
        let mut t = 100.0;
        let mut k = 0;
        while (e.bandwidth_bps().unwrap() / 100e6 - 1.0).abs() > 0.15 {
            t += 0.05;
            k += 1;
            e.observe_transfer(t, 250_000, secs(250_000, 100.0, 0.02));
            assert!(k <= 3, "more than 3 samples to follow a 10x rise");
        }
    }

    #[test]
    fn heartbeats_queued_behind_frames_do_not_inflate_the_rate() {
        // A 2 Mbit/s link with a 20 ms round trip; the device's frames (175 kB) keep a
        // queue on it, and most heartbeats wait in that queue for up to 0.7 s.
        let mut e = Estimator::default();
        let mut t = 0.0;
        for i in 0..40u64 {
            t += 0.5;
            let queued = if i % 4 == 0 {
                0.0
            } else {
                0.7 * (0.5 + 0.5 * noise(i))
            };
            e.observe_rtt(t, 0.02 + queued);
            e.observe_transfer(t + 0.1, 175_000, secs(175_000, 2.0, 0.02));
        }
        let l = e.link().unwrap();
        assert!(
            (l.bandwidth_bps / 2e6 - 1.0).abs() < 0.05,
            "{} bit/s",
            l.bandwidth_bps
        );
        assert!((l.rtt_s - 0.02).abs() < 1e-9, "rtt {}", l.rtt_s);
    }

    #[test]
    fn small_transfers_inform_the_rtt_not_the_bandwidth() {
        let mut e = Estimator::default();
        e.observe_rtt(0.0, 0.05);
        e.observe_transfer(0.1, 100, 0.051);
        assert_eq!(e.bandwidth_bps(), None);
        e.observe_transfer(0.2, 1_000_000, secs(1_000_000, 10.0, 0.05));
        let l = e.link().unwrap();
        assert!((l.bandwidth_bps / 10e6 - 1.0).abs() < 1e-6);
        assert!((l.rtt_s - 0.05).abs() < 1e-9);
        for bad in [f64::NAN, -1.0, 0.0, f64::INFINITY] {
            e.observe_transfer(0.3, 1000, bad);
            e.observe_rtt(0.3, bad.min(-1.0));
        }
        assert!((e.link().unwrap().bandwidth_bps / 10e6 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn probes_only_when_idle_and_old_samples_expire() {
        let mut e = Estimator::default();
        assert!(e.needs_probe(0.0));
        e.observe_transfer(1.0, 1_000_000, 0.8);
        assert!(!e.needs_probe(2.5));
        assert!(e.needs_probe(3.0));
        // Round trips and transfers too small to time against them do not measure a
        // rate: the probe stays due.
        let mut small = e.clone();
        small.observe_rtt(3.0, 0.05);
        small.observe_transfer(3.1, 1000, 0.051);
        assert!(small.needs_probe(3.2));
        for i in 0..4 {
            e.observe_transfer(1.1 + 0.1 * i as f64, 1_000_000, 0.8);
        }
        // A link back from an outage: one rate far above the estimate restarts the window.
        let mut back = e.clone();
        for i in 0..3 {
            back.observe_transfer(3.0 + 0.1 * i as f64, 1000, 8.0);
        }
        assert!(back.bandwidth_bps().unwrap() < 2e4);
        back.observe_transfer(4.0, 1_000_000, 0.8);
        assert!(back.bandwidth_bps().unwrap() < 2e4, "one is an outlier");
        back.observe_transfer(4.1, 1_000_000, 0.8);
        assert!((back.bandwidth_bps().unwrap() / 10e6 - 1.0).abs() < 1e-9);
        // Twenty seconds later one new sample replaces the whole stale window.
        e.observe_transfer(30.0, 1_000_000, 8.0);
        assert!((e.bandwidth_bps().unwrap() / 1e6 - 1.0).abs() < 1e-9);
    }
}
