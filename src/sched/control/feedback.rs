//! What the running fleet tells the planner about its own speed: each device's and each
//! worker's measured stage times over the profiled ones (bounded correction factors:
//! the recent frames' measured time over their profiled time), each worker's queue wait,
//! and when they have drifted far enough from what the plans in force were made with to
//! plan again.
//!
//! Hysteresis: a re-plan is asked for only when a factor moved by more than [`DRIFT`]
//! (or a queue wait by more than [`QUEUE_DRIFT_S`] and [`DRIFT`] of itself) since the
//! last plan, and the re-plan itself still goes through the planner's own hysteresis
//! (fleet-level `keep_current`, per-device `Scheduler::decide`), so a factor that
//! wobbles around its value changes nothing.
use std::collections::VecDeque;

use crate::sched::perf::Correction;
use crate::stats::percentile;

/// A factor that moved by more than this share since the plans in force were made asks
/// for a re-plan.
pub const DRIFT: f64 = 0.2;

/// A queue wait that moved by more than this (and by more than [`DRIFT`] of itself)
/// asks for a re-plan, seconds.
pub const QUEUE_DRIFT_S: f64 = 0.010;

/// The samples a queue wait is the median of.
pub const WINDOW: usize = 16;

/// The frames a factor is the time-weighted mean of. Under a CPU quota most stages run
/// at full speed and now and then one is throttled to the end of its period: the
/// median of the ratios saw only the fast ones (a `slow10x` testbed device measured
/// 0.35-0.67 of its class, and the planner expected 1.2-2x the frames it made), while
/// the sum of the times is what the device's throughput pays. 32 frames span several
/// quota periods, so one throttled stage moves the factor by less than [`DRIFT`].
pub const FACTOR_WINDOW: usize = 32;

/// The median of the last [`WINDOW`] samples.
#[derive(Debug, Clone, PartialEq, Default)]
struct Recent(VecDeque<f64>);

impl Recent {
    fn push(&mut self, v: f64) {
        if self.0.len() == WINDOW {
            self.0.pop_front();
        }
        self.0.push_back(v);
    }

    fn median(&self) -> Option<f64> {
        let mut v: Vec<f64> = self.0.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        Some(percentile(&v, 0.5)).filter(|_| !v.is_empty())
    }
}

/// A measured-over-predicted factor: the last [`FACTOR_WINDOW`] frames' observed time
/// over their profiled time (within `[1/LIMIT, LIMIT]`, `perf::Correction::LIMIT`), and
/// the value the plans in force were made with.
#[derive(Debug, Clone, PartialEq)]
pub struct Factor {
    pub value: f64,
    planned: f64,
    /// (profiled, observed) seconds of the recent frames.
    recent: VecDeque<(f64, f64)>,
    /// Samples folded in.
    pub samples: u64,
}

impl Default for Factor {
    fn default() -> Factor {
        Factor {
            value: 1.0,
            planned: 1.0,
            recent: VecDeque::new(),
            samples: 0,
        }
    }
}

impl Factor {
    /// Folds in one stage's predicted (made with the current value) and observed
    /// seconds; true when the factor has drifted from the one planned with.
    pub fn observe(&mut self, predicted_s: f64, observed_s: f64) -> bool {
        if predicted_s > 0.0 && observed_s.is_finite() && observed_s >= 0.0 {
            // The prediction includes the current value: the profiled time is without.
            let profiled_s = predicted_s / self.value;
            if self.recent.len() == FACTOR_WINDOW {
                self.recent.pop_front();
            }
            self.recent.push_back((profiled_s, observed_s));
            self.samples += 1;
            let (profiled, observed) = self
                .recent
                .iter()
                .fold((0.0, 0.0), |(p, o), (dp, dob)| (p + dp, o + dob));
            // Until the window is full, its empty places hold the profile (a factor of
            // 1): the first frames move it as much as any others, not more.
            let n = self.recent.len() as f64;
            let prior = (FACTOR_WINDOW as f64 - n) * profiled / n;
            let limit = Correction::LIMIT;
            self.value = ((observed + prior) / (profiled + prior)).clamp(1.0 / limit, limit);
        }
        self.drifted()
    }

    pub fn drifted(&self) -> bool {
        (self.value / self.planned - 1.0).abs() > DRIFT
    }

    /// The plans are now made with the current value.
    pub fn planned(&mut self) {
        self.planned = self.value;
    }
}

/// A worker's queue wait: the median of the recent waits frames report and of the waits
/// its queue lengths imply, and the wait the plans in force were made with.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueWait {
    pub value_s: f64,
    planned_s: f64,
    recent: Recent,
}

impl QueueWait {
    /// Folds in one measured wait, seconds; true when it drifted from the planned one.
    pub fn observe(&mut self, wait_s: f64) -> bool {
        if wait_s.is_finite() && wait_s >= 0.0 {
            self.recent.push(wait_s);
            self.value_s = self.recent.median().unwrap_or(0.0);
        }
        self.drifted()
    }

    pub fn drifted(&self) -> bool {
        let moved = (self.value_s - self.planned_s).abs();
        moved > QUEUE_DRIFT_S && moved > DRIFT * self.planned_s
    }

    pub fn planned(&mut self) {
        self.planned_s = self.value_s;
    }
}

/// The wait a frame arriving now would see at a worker with `queued` frames admitted
/// (running or waiting) on `slots` threads, each taking `service_s`.
pub fn expected_wait(queued: u32, slots: u32, service_s: f64) -> f64 {
    let slots = slots.max(1);
    let waiting = queued.saturating_sub(slots);
    f64::from(waiting) * service_s / f64::from(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_factor_follows_a_real_change_and_not_a_throttled_frame() {
        let mut f = Factor::default();
        // A quota: three frames in four at full speed, 0.4x the profile, and every
        // fourth throttled to 2.8x: on average the profile, as the device's throughput
        // pays it. No re-plan is asked, and the factor is 1 (the median of the ratios
        // said 0.4).
        for i in 0..64 {
            let observed = if i % 4 == 3 { 0.028 } else { 0.004 };
            assert!(
                !f.observe(0.010 * f.value, observed),
                "frame {i}: {}",
                f.value
            );
        }
        assert!((f.value - 1.0).abs() < 1e-9, "{}", f.value);
        // One stage throttled far more than usual moves it by less than DRIFT.
        assert!(!f.observe(0.010 * f.value, 0.060), "{}", f.value);
        // Twice the profile: it asks within a third of a window and lands there.
        let asked = (1..=FACTOR_WINDOW).find(|_| f.observe(0.010 * f.value, 0.020));
        assert!(asked.is_some_and(|n| n <= FACTOR_WINDOW / 3), "{asked:?}");
        for _ in 0..FACTOR_WINDOW {
            f.observe(0.010 * f.value, 0.020);
        }
        assert!((f.value - 2.0).abs() < 1e-9, "{}", f.value);
        // Planned with, it rests: samples around the truth ask nothing.
        f.planned();
        let again = (0..100)
            .filter(|i| f.observe(0.010 * f.value, if i % 2 == 0 { 0.018 } else { 0.022 }))
            .count();
        assert_eq!(again, 0, "value {}", f.value);
        // Bounded: absurd samples cannot take it past the limit; bad ones are ignored.
        for _ in 0..FACTOR_WINDOW {
            f.observe(0.010 * f.value, 1e9);
        }
        assert!(f.value <= Correction::LIMIT + 1e-9, "{}", f.value);
        let before = f.clone();
        f.observe(0.0, 1.0);
        f.observe(0.01, f64::NAN);
        assert_eq!(f, before);
    }

    #[test]
    fn a_queue_wait_asks_past_ten_ms_and_a_fifth_of_itself_and_rests_when_planned() {
        let mut q = QueueWait::default();
        assert!(!q.observe(0.008)); // 8 ms
        assert!(q.observe(0.05)); // 29 ms: the median of two
        q.planned();
        assert!(!q.observe(q.value_s));
        assert!(!q.observe(f64::NAN));
        assert_eq!(expected_wait(5, 2, 0.010), 0.015);
        assert_eq!(expected_wait(1, 2, 0.010), 0.0);
    }
}
