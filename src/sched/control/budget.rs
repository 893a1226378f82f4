//! A device's onload budget, enforced: a token bucket on the frames it onloads. The
//! control step gives each plan a rate (`Plan::rate_fps`, infinite when the pool does
//! not hold the device back); a frame that finds no token runs device-only. The agent
//! and the simulator hold one each and ask it for every frame whose plan onloads.
//!
//! The worker holds the same bucket per device, at the same rate, as its admission
//! ([`Budget::admit_at_worker`]): its burst is larger by [`ARRIVAL_SLACK_S`], so a device
//! that keeps its budget is never refused for the network bunching its frames, and a
//! device that does not keep it (an old agent, a stale plan, a client of its own) finds
//! its excess answered busy at once and finished on the device.

/// Frames a worker holds beyond its busy slots by default (`queue` of a worker or of the
/// coordinator's embedded pool).
pub const DEFAULT_QUEUE: usize = 4;

/// A worker's other admission: whether a frame arriving while `held` frames are
/// admitted and unanswered (running, queued, or waiting for a batch) may join them, with
/// `slots` threads and room for `queue` more. One that may not is answered busy at once
/// and finished on its device. The worker's `Pool` and the simulator's worker ask this.
pub fn has_room(held: usize, slots: usize, queue: usize) -> bool {
    held < slots.max(1) + queue
}

/// Seconds of the budget a device may spend at once (at least one frame).
pub const BURST_S: f64 = 0.5;

/// The worker's extra burst over the device's: how much the path may bunch the frames
/// a device sent within its budget.
pub const ARRIVAL_SLACK_S: f64 = 0.5;

/// One device's bucket.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    tokens: f64,
    /// When it was last asked (`None`: never; it starts full).
    last_s: Option<f64>,
}

impl Budget {
    /// Whether a frame may onload at `now_s` under a budget of `rate_fps` frames per
    /// second (infinite: no budget). The bucket fills at the rate in force, up to
    /// [`BURST_S`] of it; a rate that is not a number >= 0 admits nothing.
    pub fn admit(&mut self, now_s: f64, rate_fps: f64) -> bool {
        self.admit_within(now_s, rate_fps, BURST_S)
    }

    /// The worker's admission of a device's frame arriving at `now_s`: [`Budget::admit`]
    /// with [`ARRIVAL_SLACK_S`] more burst.
    pub fn admit_at_worker(&mut self, now_s: f64, rate_fps: f64) -> bool {
        self.admit_within(now_s, rate_fps, BURST_S + ARRIVAL_SLACK_S)
    }

    fn admit_within(&mut self, now_s: f64, rate_fps: f64, burst_s: f64) -> bool {
        if rate_fps == f64::INFINITY {
            self.last_s = Some(now_s);
            self.tokens = 1.0;
            return true;
        }
        if rate_fps.is_nan() || rate_fps < 0.0 || !now_s.is_finite() {
            return false;
        }
        let cap = (rate_fps * burst_s).max(1.0);
        let tokens = match self.last_s {
            None => cap,
            Some(last) => (self.tokens + (now_s - last).max(0.0) * rate_fps).min(cap),
        };
        self.last_s = Some(now_s);
        if tokens >= 1.0 {
            self.tokens = tokens - 1.0;
            true
        } else {
            self.tokens = tokens;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames offered at `offered_fps` for `seconds` under `rate_fps`: those admitted.
    fn admitted(rate_fps: f64, offered_fps: f64, seconds: f64) -> usize {
        let mut b = Budget::default();
        (0..(offered_fps * seconds) as usize)
            .filter(|&k| b.admit(k as f64 / offered_fps, rate_fps))
            .count()
    }

    #[test]
    fn onloads_at_the_budget_when_offered_more_and_all_when_offered_less() {
        // 30 s at 10 frames/s offered 30: 300 and the first half second's burst.
        let n = admitted(10.0, 30.0, 30.0);
        assert!((300..=306).contains(&n), "{n} admitted");
        // A budget above the offered rate admits everything.
        assert_eq!(admitted(40.0, 30.0, 30.0), 900);
        assert_eq!(admitted(f64::INFINITY, 30.0, 30.0), 900);
        // A slow budget still lets a frame through now and then.
        let n = admitted(0.5, 30.0, 30.0);
        assert!((15..=16).contains(&n), "{n} admitted");
    }

    #[test]
    fn follows_the_rate_in_force_and_refuses_a_bad_one() {
        let mut b = Budget::default();
        let mut n = 0;
        // 10 s at 5/s, then 10 s at 20/s, offered 100/s.
        for k in 0..2000 {
            let t = k as f64 / 100.0;
            let rate = if t < 10.0 { 5.0 } else { 20.0 };
            n += usize::from(b.admit(t, rate));
        }
        assert!((250..=265).contains(&n), "{n} admitted");
        for bad in [f64::NAN, -1.0] {
            assert!(!Budget::default().admit(0.0, bad));
        }
    }

    /// Frames a device's bucket admits at `sent` (seconds), arriving at the worker
    /// `delay(k)` later: those the worker refuses.
    fn refused_at_worker(rate: f64, sent: &[f64], delay: impl Fn(usize) -> f64) -> usize {
        let mut device = Budget::default();
        let mut arrivals: Vec<f64> = sent
            .iter()
            .filter(|&&t| device.admit(t, rate))
            .enumerate()
            .map(|(k, &t)| t + delay(k))
            .collect();
        arrivals.sort_by(f64::total_cmp);
        let mut worker = Budget::default();
        arrivals
            .iter()
            .filter(|&&t| !worker.admit_at_worker(t, rate))
            .count()
    }

    #[test]
    fn the_worker_admits_a_device_that_keeps_its_budget_and_refuses_its_excess() {
        // Offered 100/s for 30 s under 10/s; the device keeps the budget, and the path
        // delays its frames by 0 to 400 ms, bunching them: the worker refuses none.
        let sent: Vec<f64> = (0..3000).map(|k| k as f64 / 100.0).collect();
        let jitter = |k: usize| (k * 7919 % 401) as f64 / 1e3;
        assert_eq!(refused_at_worker(10.0, &sent, jitter), 0);
        // A device that ignores its budget (sending all 3000) is held to it: the worker
        // admits 10/s and its burst.
        let mut w = Budget::default();
        let admitted = sent.iter().filter(|&&t| w.admit_at_worker(t, 10.0)).count();
        assert!((300..=311).contains(&admitted), "{admitted} admitted");
    }
}
