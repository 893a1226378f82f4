//! Link emulation in user space, for an agent's uplink: a token bucket drained at the rate
//! a bandwidth trace gives, a one-way delay, and packet loss (each lost packet costs one
//! more round trip, as a fast retransmit does), deterministic for a seed.
//!
//! Pure: [`Shaper::send`] takes the time now and a frame size and says when the frame
//! has crossed the link; the agent sleeps until then before it writes to the socket.
//! Traces are piecewise constant: `(time in seconds, Mbit/s)` steps, from a constant, a
//! list of steps, or a file ([`Trace::parse`]: `seconds Mbit/s` lines, or the one-per-second
//! `value,unit` lines of iPerf logs; `#` comments and blank lines ignored).
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Bytes per packet on the emulated link (an Ethernet MSS).
pub const PACKET_BYTES: usize = 1448;

/// A bandwidth trace: rate `mbps[i]` from `t[i]` on; the last rate holds for ever, or the
/// trace repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    steps: Vec<(f64, f64)>,
    repeat: bool,
}

/// A bad trace: where and what.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TraceError(pub String);

impl Trace {
    pub fn constant(mbps: f64) -> Result<Trace, TraceError> {
        Trace::steps(vec![(0.0, mbps)], false)
    }

    /// Steps `(from time s, Mbit/s)`: times start at 0 and increase; rates are >= 0.
    pub fn steps(steps: Vec<(f64, f64)>, repeat: bool) -> Result<Trace, TraceError> {
        if steps.first().map(|s| s.0) != Some(0.0) {
            return Err(TraceError(
                "a trace starts at time 0: give a first step (0, Mbit/s)".into(),
            ));
        }
        for (i, &(t, r)) in steps.iter().enumerate() {
            if !(t.is_finite() && r.is_finite() && r >= 0.0) {
                return Err(TraceError(format!(
                    "step {i}: ({t}, {r}): times and rates are finite, rates >= 0 Mbit/s"
                )));
            }
            if i > 0 && t <= steps[i - 1].0 {
                return Err(TraceError(format!(
                    "step {i}: time {t} s is not after {} s: times must increase",
                    steps[i - 1].0
                )));
            }
        }
        if repeat && steps.len() < 2 {
            return Err(TraceError(
                "a repeating trace needs at least two steps (the last one's time is the period)"
                    .into(),
            ));
        }
        if steps.iter().all(|s| s.1 == 0.0) {
            return Err(TraceError(
                "every rate is 0: nothing would ever be sent".into(),
            ));
        }
        Ok(Trace { steps, repeat })
    }

    /// Parses a trace file, in either of two formats (the first data line decides):
    /// - `seconds Mbit/s` per line (whitespace or comma), e.g. the Pensieve-cooked 3G
    ///   traces;
    /// - `value,unit` per line, one line per second, with an iPerf unit (`Mbits/sec`,
    ///   `Kbits/sec`, `bits/sec`), as the NYU-METS LTE traces are written.
    pub fn parse(text: &str, repeat: bool) -> Result<Trace, TraceError> {
        let mut steps = Vec::new();
        let mut per_second: Option<bool> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let cols: Vec<&str> = line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|c| !c.is_empty())
                .collect();
            let unit = match cols.as_slice() {
                [_, u] => iperf_unit(u),
                _ => None,
            };
            let this_per_second = unit.is_some();
            if *per_second.get_or_insert(this_per_second) != this_per_second {
                return Err(TraceError(format!(
                    "line {}: `{line}` mixes the two formats: every line is `seconds Mbit/s`, \
                     or every line is `value,unit` (one per second)",
                    n + 1
                )));
            }
            let step = match (unit, cols.as_slice()) {
                (Some(scale), [v, _]) => v
                    .parse::<f64>()
                    .ok()
                    .map(|v| (steps.len() as f64, v * scale)),
                (None, [t, r]) => t.parse().ok().zip(r.parse().ok()),
                _ => None,
            };
            match step {
                Some(s) => steps.push(s),
                None => {
                    return Err(TraceError(format!(
                        "line {}: `{line}` is neither `seconds Mbit/s` nor `value,unit` \
                         (units Mbits/sec, Kbits/sec, bits/sec)",
                        n + 1
                    )))
                }
            }
        }
        if steps.is_empty() {
            return Err(TraceError(
                "no steps: give lines of `seconds Mbit/s` or `value,Mbits/sec`".into(),
            ));
        }
        Trace::steps(steps, repeat)
    }

    /// The mean rate over `[0, until_s)`, Mbit/s.
    pub fn mean_mbps(&self, until_s: f64) -> f64 {
        if until_s <= 0.0 {
            return self.mbps_at(0.0);
        }
        let mut t = 0.0;
        let mut bits = 0.0;
        while t < until_s {
            let (rate, end) = self.segment(t);
            let end = end.min(until_s);
            bits += rate * (end - t);
            t = end;
        }
        bits / until_s
    }

    pub fn load(path: &Path, repeat: bool) -> Result<Trace, TraceError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TraceError(format!("trace {}: {e}", path.display())))?;
        Trace::parse(&text, repeat)
            .map_err(|e| TraceError(format!("trace {}: {}", path.display(), e.0)))
    }

    /// The step index in force at `t`, and the time the step ends (infinite for the last
    /// one of a non-repeating trace).
    fn segment(&self, at: f64) -> (f64, f64) {
        let (t, offset) = if self.repeat {
            let period = self.steps.last().expect("validated").0;
            let k = (at / period).floor();
            (at - k * period, k * period)
        } else {
            (at, 0.0)
        };
        let i = self.steps.partition_point(|s| s.0 <= t).saturating_sub(1);
        let end = match self.steps.get(i + 1) {
            Some(next) => next.0,
            None if self.repeat => self.steps.last().expect("validated").0,
            None => f64::INFINITY,
        };
        let rate = if self.repeat && i == self.steps.len() - 1 {
            self.steps[0].1
        } else {
            self.steps[i].1
        };
        // In a repeating trace `at - k * period` can round to just before the step `at`
        // starts: the end is then `at` itself; step past it so that callers move on.
        (rate, (end + offset).max(at + 1e-9))
    }

    /// Mbit/s at time `t` (seconds).
    pub fn mbps_at(&self, t: f64) -> f64 {
        self.segment(t.max(0.0)).0
    }

    /// When `bits` sent from `start` on have all crossed the link.
    pub fn finish(&self, start: f64, bits: f64) -> f64 {
        let (mut t, mut left) = (start.max(0.0), bits);
        // Each step either finishes the bits or moves to the next segment.
        for _ in 0..1_000_000 {
            let (mbps, end) = self.segment(t);
            let rate = mbps * 1e6;
            if rate > 0.0 {
                let need = left / rate;
                if t + need <= end {
                    return t + need;
                }
                left -= rate * (end - t);
            }
            if end.is_infinite() {
                return f64::INFINITY; // a last rate of 0 for ever
            }
            t = end;
        }
        f64::INFINITY
    }
}

/// Mbit/s per unit of an iPerf-style rate unit.
fn iperf_unit(unit: &str) -> Option<f64> {
    match unit {
        "Gbits/sec" => Some(1e3),
        "Mbits/sec" => Some(1.0),
        "Kbits/sec" => Some(1e-3),
        "bits/sec" => Some(1e-6),
        _ => None,
    }
}

/// An emulated uplink.
#[derive(Debug, Clone)]
pub struct Shaper {
    trace: Trace,
    /// Seconds of one-way delay (half the RTT).
    one_way_s: f64,
    rtt_s: f64,
    loss: f64,
    rng: StdRng,
    /// The link is busy sending earlier frames until then.
    busy_until: f64,
}

/// When a frame leaves and arrives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delivery {
    /// Its first bit goes on the wire (after the frames queued before it).
    pub start: f64,
    /// Its last bit is on the wire.
    pub sent: f64,
    /// It has arrived (propagation and retransmissions included).
    pub arrives: f64,
    pub lost_packets: u32,
}

impl Shaper {
    /// `loss` is a packet loss probability in [0, 1).
    pub fn new(trace: Trace, rtt_s: f64, loss: f64, seed: u64) -> Result<Shaper, TraceError> {
        if !(rtt_s.is_finite() && rtt_s >= 0.0) {
            return Err(TraceError(format!("rtt {rtt_s} s: give a number >= 0")));
        }
        if !(loss.is_finite() && (0.0..1.0).contains(&loss)) {
            return Err(TraceError(format!(
                "loss {loss}: give a probability in [0, 1)"
            )));
        }
        Ok(Shaper {
            trace,
            one_way_s: rtt_s / 2.0,
            rtt_s,
            loss,
            rng: StdRng::seed_from_u64(seed),
            busy_until: 0.0,
        })
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Sends `bytes` at time `now` (seconds since the link started).
    pub fn send(&mut self, now: f64, bytes: usize) -> Delivery {
        let start = now.max(self.busy_until);
        let sent = self.trace.finish(start, 8.0 * bytes as f64);
        self.busy_until = sent;
        let packets = bytes.div_ceil(PACKET_BYTES).max(1);
        let lost_packets = if self.loss > 0.0 {
            (0..packets)
                .filter(|_| self.rng.random::<f64>() < self.loss)
                .count() as u32
        } else {
            0
        };
        Delivery {
            start,
            sent,
            arrives: sent + self.one_way_s + lost_packets as f64 * self.rtt_s,
            lost_packets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_and_step_traces_time_a_transfer() {
        let c = Trace::constant(10.0).unwrap();
        assert!((c.finish(0.0, 1e6) - 0.1).abs() < 1e-12);
        // 50 Mbit/s for 5 s, then 2: 60 Mbit from t=4 is 50 Mbit by 5 s, 10 more by 10 s.
        let s = Trace::steps(vec![(0.0, 50.0), (5.0, 2.0)], false).unwrap();
        assert!((s.finish(4.0, 60e6) - 10.0).abs() < 1e-9);
        assert_eq!(s.mbps_at(4.9), 50.0);
        assert_eq!(s.mbps_at(5.0), 2.0);
        // A repeating trace comes back to its start.
        let r = Trace::steps(vec![(0.0, 10.0), (1.0, 0.0), (2.0, 0.0)], true).unwrap();
        assert_eq!(r.mbps_at(2.5), 10.0);
        assert_eq!(r.mbps_at(3.5), 0.0);
        assert!((r.finish(0.5, 10e6) - 2.5).abs() < 1e-9);
    }

    #[test]
    fn the_link_is_fifo_with_delay_and_deterministic_loss() {
        let mut a = Shaper::new(Trace::constant(8.0).unwrap(), 0.02, 0.0, 1).unwrap();
        let d1 = a.send(0.0, 100_000); // 0.1 s on the wire
        let d2 = a.send(0.0, 100_000); // queued behind the first
        assert!((d1.sent - 0.1).abs() < 1e-12 && (d1.arrives - 0.11).abs() < 1e-12);
        assert!((d2.sent - 0.2).abs() < 1e-12);
        let lossy = |seed| {
            let mut s = Shaper::new(Trace::constant(100.0).unwrap(), 0.01, 0.05, seed).unwrap();
            (0..200)
                .map(|i| s.send(i as f64, 100_000).lost_packets)
                .collect::<Vec<_>>()
        };
        assert_eq!(lossy(7), lossy(7));
        assert_ne!(lossy(7), lossy(8));
        let total: u32 = lossy(7).iter().sum();
        // 200 frames x 70 packets x 5 %: about 700.
        assert!((550..850).contains(&total), "{total}");
    }

    #[test]
    fn bad_traces_say_where() {
        let e = Trace::parse("0 10\n1 x\n", false).unwrap_err().0;
        assert!(e.contains("line 2") && e.contains("seconds Mbit/s"), "{e}");
        let e = Trace::parse("# comment\n0 5\n3 1\n2 4\n", false)
            .unwrap_err()
            .0;
        assert!(e.contains("not after"), "{e}");
        assert!(Trace::parse("1 5\n", false)
            .unwrap_err()
            .0
            .contains("time 0"));
        assert!(Trace::steps(vec![(0.0, -1.0)], false).is_err());
        assert!(Shaper::new(Trace::constant(1.0).unwrap(), 0.0, 1.5, 0).is_err());
        let t = Trace::parse("0, 50\n\n5, 2 # the cut\n", false).unwrap();
        assert_eq!(t.mbps_at(6.0), 2.0);
        let e = Trace::parse("1.5,Mbits/sec\n0 4\n", false).unwrap_err().0;
        assert!(e.contains("line 2") && e.contains("mixes"), "{e}");
        let e = Trace::parse("1.5,Mbytes/sec\n", false).unwrap_err().0;
        assert!(e.contains("Kbits/sec"), "{e}");
    }

    #[test]
    fn iperf_per_second_traces_parse_with_their_units() {
        let t = Trace::parse(
            "0.57,Mbits/sec\r\n192,Kbits/sec\r\n43,bits/sec\r\n2,Mbits/sec\r\n",
            false,
        )
        .unwrap();
        assert_eq!(t.mbps_at(0.5), 0.57);
        assert!((t.mbps_at(1.2) - 0.192).abs() < 1e-12);
        assert!((t.mbps_at(2.0) - 43e-6).abs() < 1e-15);
        assert_eq!(t.mbps_at(99.0), 2.0);
        let mean = t.mean_mbps(4.0);
        assert!(
            (mean - (0.57 + 0.192 + 43e-6 + 2.0) / 4.0).abs() < 1e-9,
            "{mean}"
        );
        // Repeating, with step times that do not add up exactly in floating point.
        let r = Trace::steps(vec![(0.0, 1.0), (0.1, 3.0), (0.3, 2.0)], true).unwrap();
        let mean = r.mean_mbps(3000.0);
        assert!(
            (mean - (0.1 * 1.0 + 0.2 * 3.0) / 0.3).abs() < 1e-6,
            "{mean}"
        );
        assert!(r.finish(1234.5, 8e6).is_finite());
    }
}
