//! A device's onload budget, enforced: a token bucket on the frames it onloads. The
//! control step gives each plan a rate (`Plan::rate_fps`, infinite when the pool does
//! not hold the device back); a frame that finds no token runs device-only. The agent
//! and the simulator hold one each and ask it for every frame whose plan onloads.

/// Seconds of the budget a device may spend at once (at least one frame).
pub const BURST_S: f64 = 0.5;

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
        if rate_fps == f64::INFINITY {
            self.last_s = Some(now_s);
            self.tokens = 1.0;
            return true;
        }
        if !(rate_fps >= 0.0) || !now_s.is_finite() {
            return false;
        }
        let cap = (rate_fps * BURST_S).max(1.0);
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
}
