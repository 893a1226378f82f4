//! The worker's admission by the plans: each device's onload budget, as the coordinator
//! last sent it (`Message::Budgets`), held in the same token bucket the agent keeps
//! (`dyno::sched::control::Budget::admit_at_worker`). A frame over its device's budget
//! is answered busy at once, and the agent finishes it on the device. A device with no
//! budget here (none sent yet, or a plan that does not bound it) is admitted.
//!
//! One map shared by every data session's tasks and the task that receives the budgets:
//! a `DashMap` keyed by device.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use dyno::sched::control::Budget;
use dyno::wire::DeviceBudget;

#[derive(Debug)]
struct Entry {
    rate_fps: f64,
    bucket: Budget,
}

/// The devices' budgets on this worker.
#[derive(Debug, Clone)]
pub struct Admission {
    budgets: Arc<DashMap<String, Entry>>,
    start: Instant,
    refused: Arc<AtomicU64>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            budgets: Arc::new(DashMap::new()),
            start: Instant::now(),
            refused: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Admission {
    /// The coordinator's whole list for this worker: devices not in it have no budget
    /// here; a device whose rate is unchanged keeps its bucket.
    pub fn set(&self, budgets: &[DeviceBudget]) {
        let listed: std::collections::HashSet<&str> =
            budgets.iter().map(|b| b.device.as_str()).collect();
        self.budgets
            .retain(|device, _| listed.contains(device.as_str()));
        for b in budgets {
            self.budgets
                .entry(b.device.clone())
                .and_modify(|e| e.rate_fps = b.rate_fps)
                .or_insert_with(|| Entry {
                    rate_fps: b.rate_fps,
                    bucket: Budget::default(),
                });
        }
    }

    /// Whether a frame of `device` arriving now is within its budget; `Err` carries the
    /// budget it is over, frames per second.
    pub fn admit(&self, device: &str) -> Result<(), f64> {
        let now_s = self.start.elapsed().as_secs_f64();
        let Some(mut e) = self.budgets.get_mut(device) else {
            return Ok(());
        };
        let rate = e.rate_fps;
        if e.bucket.admit_at_worker(now_s, rate) {
            Ok(())
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("dyno_worker_over_budget_total", "device" => device.to_string())
                .increment(1);
            Err(rate)
        }
    }

    /// The budget `device` is held to here, frames per second (`None`: none).
    pub fn budget(&self, device: &str) -> Option<f64> {
        self.budgets.get(device).map(|e| e.rate_fps)
    }

    /// Frames refused over a budget since the worker started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_a_listed_device_to_its_budget_and_admits_the_others() {
        let a = Admission::default();
        a.set(&[DeviceBudget {
            device: "cam-1".into(),
            rate_fps: 2.0,
        }]);
        // The bucket starts full: 1 s of a 2/s budget, then nothing until it refills.
        let admitted = (0..20).filter(|_| a.admit("cam-1").is_ok()).count();
        assert_eq!(admitted, 2);
        assert_eq!(a.refused(), 18);
        assert_eq!(a.admit("cam-1"), Err(2.0));
        // Unlisted: no budget here.
        assert!((0..20).all(|_| a.admit("cam-2").is_ok()));
        // A new list without cam-1 lifts its budget.
        a.set(&[]);
        assert!(a.admit("cam-1").is_ok());
    }
}
