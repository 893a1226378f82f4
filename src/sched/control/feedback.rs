//! What the running fleet tells the planner about its own speed: each device's and each
//! worker's measured stage times over the predicted ones (bounded, smoothed correction
//! factors, `perf::Correction`'s rule), each worker's queue wait, and when they have
//! drifted far enough from what the plans in force were made with to plan again.
//!
//! Hysteresis: a re-plan is asked for only when a factor moved by more than [`DRIFT`]
//! (or a queue wait by more than [`QUEUE_DRIFT_S`] and [`DRIFT`] of itself) since the
//! last plan, and the re-plan itself still goes through the planner's own hysteresis
//! (fleet-level `keep_current`, per-device `Scheduler::decide`), so a factor that
//! wobbles around its value changes nothing.
use crate::sched::perf::Correction;

/// A factor that moved by more than this share since the plans in force were made asks
/// for a re-plan.
pub const DRIFT: f64 = 0.2;

/// A queue wait that moved by more than this (and by more than [`DRIFT`] of itself)
/// asks for a re-plan, seconds.
pub const QUEUE_DRIFT_S: f64 = 0.010;

/// Weight of a new queue-wait sample in the running figure.
pub const QUEUE_GAIN: f64 = 0.2;

/// A measured-over-predicted factor: its running value and the value the plans in
/// force were made with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Factor {
    pub value: f64,
    planned: f64,
    /// Samples folded in.
    pub samples: u64,
}

impl Default for Factor {
    fn default() -> Factor {
        Factor {
            value: 1.0,
            planned: 1.0,
            samples: 0,
        }
    }
}

impl Factor {
    /// Folds in one stage's predicted (made with the current value) and observed
    /// seconds; true when the factor has drifted from the one planned with.
    pub fn observe(&mut self, predicted_s: f64, observed_s: f64) -> bool {
        let before = self.value;
        self.value = Correction::fold(self.value, predicted_s, observed_s);
        if self.value != before {
            self.samples += 1;
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

/// A worker's queue wait: smoothed from the waits frames report and the queue lengths
/// the worker reports, and the wait the plans in force were made with.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QueueWait {
    pub value_s: f64,
    planned_s: f64,
}

impl QueueWait {
    /// Folds in one measured wait, seconds; true when it drifted from the planned one.
    pub fn observe(&mut self, wait_s: f64) -> bool {
        if wait_s.is_finite() && wait_s >= 0.0 {
            self.value_s = (1.0 - QUEUE_GAIN) * self.value_s + QUEUE_GAIN * wait_s;
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
    fn a_factor_asks_for_a_replan_only_past_its_drift_and_then_rests() {
        let mut f = Factor::default();
        // The truth is 1.1x the profile: it converges there without asking.
        for _ in 0..50 {
            assert!(!f.observe(0.010 * f.value, 0.011));
        }
        assert!((f.value - 1.1).abs() < 0.01, "{}", f.value);
        // Twice the profile: it asks within a few frames...
        let asked = (1..=20).find(|_| f.observe(0.010 * f.value, 0.020));
        assert!(asked.is_some_and(|n| n <= 3), "{asked:?}");
        // ... a few times on its way there (each re-plan plans with the value so far) ...
        let mut asks = 0;
        for _ in 0..50 {
            if f.observe(0.010 * f.value, 0.020) {
                asks += 1;
                f.planned();
            }
        }
        assert!((1..=4).contains(&asks), "{asks}");
        assert!((f.value - 2.0).abs() < 0.01, "{}", f.value);
        // ... and once planned with, it rests: samples around the truth ask nothing.
        let again = (0..100)
            .filter(|i| f.observe(0.010 * f.value, if i % 2 == 0 { 0.018 } else { 0.022 }))
            .count();
        assert_eq!(again, 0, "value {}", f.value);
    }

    #[test]
    fn a_queue_wait_asks_past_ten_ms_and_a_fifth_of_itself() {
        let mut q = QueueWait::default();
        assert!(!q.observe(0.02)); // 4 ms
        assert!(q.observe(0.05)); // 13.2 ms
        q.planned();
        assert!(!q.observe(q.value_s));
        assert!(!q.observe(f64::NAN));
        assert_eq!(expected_wait(5, 2, 0.010), 0.015);
        assert_eq!(expected_wait(1, 2, 0.010), 0.0);
    }
}
