//! Dynamic batching as the planner counts it. A worker that batches holds the frames of
//! one split until its batch is as large as that split allows (`Batching::limits`, the
//! largest size whose measured curve pays) or its first frame has waited
//! `max_queue_delay_s`, then runs them as one tail. So a batched frame costs the pool
//! less (its share of a batch's tail: the curve's time per image) and waits longer (for
//! its company, and for the whole batch's tail).
//!
//! The batch a frame can expect depends on how many frames of its split arrive within
//! the delay ([`Effect::of`]); the control step counts the frames the plans in force
//! send each split, so the pool's capacity and each plan's latency follow the curve.
//! The worker (`dyno_actors::worker::pool`), the simulator and the performance model all
//! take this one [`Batching`].
use crate::profile::latency::LatencyProfile;

/// A worker's dynamic batching: the largest batch that pays at each split (1, or a
/// split past the list: one frame at a time) and how long a batch's first frame waits.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Batching {
    pub limits: Vec<usize>,
    pub max_queue_delay_s: f64,
}

impl Batching {
    /// One frame at a time.
    pub fn off() -> Batching {
        Batching::default()
    }

    /// The limits from a latency profile's batch curve (`LatencyProfile::batch_limit`
    /// at every split, up to `max_batch`).
    pub fn from_profile(p: &LatencyProfile, max_batch: usize, max_queue_delay_s: f64) -> Batching {
        if max_batch <= 1 {
            return Batching::off();
        }
        Batching {
            limits: (0..p.blocks.len())
                .map(|s| p.batch_limit(s, max_batch))
                .collect(),
            max_queue_delay_s,
        }
    }

    /// The batching a pool asks for (`max_batch`, `max_queue_delay_s`), resolved with the
    /// batch curve of the cloud's latency profile at `path`; an error naming the command
    /// that measures the curve when it is asked for and not there.
    pub fn resolve(
        path: &std::path::Path,
        model: &str,
        max_batch: usize,
        max_queue_delay_s: f64,
    ) -> Result<Batching, String> {
        if max_batch == 0 {
            return Err("max_batch = 0 is not allowed: give 1 (no batching) or more".into());
        }
        if !(max_queue_delay_s.is_finite() && max_queue_delay_s >= 0.0) {
            return Err(format!(
                "max_queue_delay_ms must be a number of milliseconds >= 0, got {}",
                max_queue_delay_s * 1e3
            ));
        }
        if max_batch == 1 {
            return Ok(Batching::off());
        }
        let p = LatencyProfile::load(path)
            .map_err(|e| format!("batching: the latency profile {}: {e}", path.display()))?;
        if p.model != model || p.batches.is_empty() {
            return Err(format!(
                "max_batch = {max_batch} needs the batch curve of `{model}` and {} has {}: \
                 measure it with `dyno profile latency --model {model} --batch 1,2,4,8 --out \
                 {}` (or set max_batch = 1)",
                path.display(),
                if p.model == model {
                    "none".to_string()
                } else {
                    format!("the profile of `{}`", p.model)
                },
                path.display()
            ));
        }
        Ok(Batching::from_profile(&p, max_batch, max_queue_delay_s))
    }

    /// The largest batch at `split`.
    pub fn limit(&self, split: usize) -> usize {
        self.limits.get(split).copied().unwrap_or(1).max(1)
    }

    /// Whether any split is batched.
    pub fn is_on(&self) -> bool {
        self.limits.iter().any(|&l| l > 1)
    }

    /// What a pool of workers batching differently can count on: at each split the
    /// smallest limit, and the longest delay.
    pub fn common<'a>(all: impl IntoIterator<Item = &'a Batching>) -> Batching {
        let mut out: Option<Batching> = None;
        for b in all {
            out = Some(match out {
                None => b.clone(),
                Some(o) => Batching {
                    limits: (0..o.limits.len().max(b.limits.len()))
                        .map(|s| o.limit(s).min(b.limit(s)))
                        .collect(),
                    max_queue_delay_s: o.max_queue_delay_s.max(b.max_queue_delay_s),
                },
            });
        }
        out.unwrap_or_default()
    }
}

/// A split's batch curve as the planner uses it: (batch, time per image over batch
/// 1's), from the cloud profile, batch 1 first.
pub fn ratios(p: &LatencyProfile, split: usize) -> Vec<(usize, f64)> {
    let curve = p.batch_curve(split);
    let Some(&(1, one)) = curve.first() else {
        return Vec::new();
    };
    curve
        .iter()
        .map(|&(b, t)| (b, t / b as f64 / one))
        .collect()
}

/// Time per image at a batch of `b` frames (fractional: an expected size) over batch
/// 1's, interpolated along `ratios`; 1 at one frame or without a curve.
pub fn per_image(ratios: &[(usize, f64)], b: f64) -> f64 {
    if b <= 1.0 || ratios.is_empty() {
        return 1.0;
    }
    let mut prev = (1.0, 1.0);
    for &(n, r) in ratios {
        let n = n as f64;
        if b <= n {
            let (n0, r0) = prev;
            return if n > n0 {
                r0 + (r - r0) * (b - n0) / (n - n0)
            } else {
                r
            };
        }
        prev = (n, r);
    }
    prev.1
}

/// What batching does to one frame of a split: the batch it expects, its time per image
/// over batch 1's, and its wait for company, seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effect {
    pub frames: f64,
    pub per_image: f64,
    pub wait_s: f64,
}

impl Effect {
    /// No batching.
    pub const NONE: Effect = Effect {
        frames: 1.0,
        per_image: 1.0,
        wait_s: 0.0,
    };

    /// A split batched up to `limit` within `delay_s`, its frames arriving at a worker
    /// at `arrivals_fps`: a batch closes when full or `delay_s` after its first frame,
    /// so it holds `1 + arrivals x T` frames, `T` the shorter of the delay and the time
    /// to fill it; its frames wait on average for the rest of `T` after they came (a
    /// lone frame waits the whole delay).
    pub fn of(ratios: &[(usize, f64)], limit: usize, delay_s: f64, arrivals_fps: f64) -> Effect {
        if limit <= 1 || delay_s.is_nan() || delay_s <= 0.0 {
            return Effect::NONE;
        }
        let rate = arrivals_fps.max(0.0);
        let fill_s = if rate > 0.0 {
            (limit - 1) as f64 / rate
        } else {
            f64::INFINITY
        };
        let t = delay_s.min(fill_s);
        let frames = 1.0 + rate * t;
        // The first frame waits t; the others, arriving evenly over t, t/2 on average.
        let wait_s = (t + rate * t * t / 2.0) / frames;
        Effect {
            frames,
            per_image: per_image(ratios, frames),
            wait_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_frame_waits_the_delay_and_a_busy_split_fills_its_batch() {
        // Split 14's curve on this CPU: batch 8 takes 0.7 of batch 1's time per image.
        let r = [(1, 1.0), (2, 0.9), (4, 0.8), (8, 0.7)];
        assert_eq!(per_image(&r, 1.0), 1.0);
        assert!((per_image(&r, 3.0) - 0.85).abs() < 1e-12);
        assert_eq!(per_image(&r, 16.0), 0.7);
        // Nothing else arrives: alone, after the whole delay, at batch 1's cost.
        let e = Effect::of(&r, 8, 0.005, 0.0);
        assert_eq!((e.frames, e.per_image, e.wait_s), (1.0, 1.0, 0.005));
        // 200 frames/s within 5 ms: two frames a batch on average.
        let e = Effect::of(&r, 8, 0.005, 200.0);
        assert!((e.frames - 2.0).abs() < 1e-12 && (e.per_image - 0.9).abs() < 1e-12);
        assert!((e.wait_s - 0.00375).abs() < 1e-12, "{}", e.wait_s);
        // 10,000 frames/s: full batches, closed in 0.7 ms.
        let e = Effect::of(&r, 8, 0.005, 10_000.0);
        assert!((e.frames - 8.0).abs() < 1e-9 && e.per_image == 0.7 && e.wait_s < 0.0007);
        // A split that is not batched, or no delay: no effect.
        assert_eq!(Effect::of(&r, 1, 0.005, 1e4), Effect::NONE);
        assert_eq!(Effect::of(&r, 8, 0.0, 1e4), Effect::NONE);
    }

    #[test]
    fn a_pool_counts_on_what_every_worker_batches() {
        let a = Batching {
            limits: vec![1, 4, 8],
            max_queue_delay_s: 0.005,
        };
        let b = Batching {
            limits: vec![1, 8, 2, 4],
            max_queue_delay_s: 0.002,
        };
        let c = Batching::common([&a, &b]);
        assert_eq!(c.limits, vec![1, 4, 2, 1]);
        assert_eq!(c.max_queue_delay_s, 0.005);
        assert!(!Batching::common([&a, &Batching::off()]).is_on());
    }
}
