//! The performance model (DESIGN.md section 2): what a plan costs on a given device, link
//! and cloud, predicted from the profiles.
//!
//! For device `d`, split `s`, precision `b`, codec `c`:
//!
//! - `T_dev(s)     = k_dev * slowdown_d * sum of the profile's block times for blocks < s`
//! - `T_pack`      = `k_dev * slowdown_d *` the profile's pack time at `(s, b, c)`
//! - `T_net        = 8 * S(s, b, c) / bandwidth + rtt` (`S` from the accuracy profile)
//! - `T_unpack`    = `k_cloud * slowdown_cloud *` the profile's unpack time
//! - `T_cloud(s)   = k_cloud * slowdown_cloud * sum of block times for blocks >= s`
//! - latency = the sum (plus the cloud's queueing delay); throughput = 1 / the slowest of
//!   the three pipelined stages (device: head and pack; network: the bytes at the
//!   link's rate; cloud: unpack and tail, over the worker's slots that serve frames at
//!   once), and at most `in_flight / latency` (a device with `in_flight` frames out at
//!   once starts the next only when one ends: Little's law); when the slowest stage is
//!   the link or the cloud, a full window's frames wait for it, and latency is
//!   `in_flight * slowest` (a device starts a frame only when its own stage is free, so
//!   nothing waits for the device); cloud cost = cloud seconds per inference;
//!   energy = `compute_watts * (T_dev + T_pack) + radio_joules_per_mb * S / 1e6`.
//!
//! [`Tables`] holds everything that depends only on the model and its profiles, laid out
//! for the scheduler's inner loop: one [`Row`] per candidate.
use serde::{Deserialize, Serialize};

use super::batch::{self, Batching};
use crate::pack::{Clip, Codec, Granularity, Precision};
use crate::profile::latency::LatencyProfile;
use crate::profile::AccuracyProfile;

/// One plan: where to cut, how precisely to send, how to compress. `split == blocks` is
/// device-only (nothing is sent; precision and codec are then `fp32`/`none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    pub split: u16,
    pub precision: Precision,
    pub codec: Codec,
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.precision {
            Precision::Bits(b) => write!(f, "split {} at {b} bits with {}", self.split, self.codec),
            Precision::Jpeg(q) => write!(f, "split {} as a JPEG of quality {q}", self.split),
            p => write!(f, "split {} at {p} with {}", self.split, self.codec),
        }
    }
}

/// A link between a device and the cloud, as estimated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Bits per second (0: no link).
    pub bandwidth_bps: f64,
    /// Round-trip time, seconds.
    pub rtt_s: f64,
}

impl Link {
    pub fn mbps(mbps: f64, rtt_ms: f64) -> Link {
        Link {
            bandwidth_bps: mbps * 1e6,
            rtt_s: rtt_ms / 1e3,
        }
    }

    /// No connection: only device-only plans work.
    pub fn gone() -> Link {
        Link {
            bandwidth_bps: 0.0,
            rtt_s: 0.0,
        }
    }
}

/// A device's energy, linear in its compute time and in the bytes it sends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyModel {
    /// Watts drawn while computing (head and pack).
    pub compute_watts: f64,
    /// Joules per megabyte sent.
    pub radio_joules_per_mb: f64,
}

impl Default for EnergyModel {
    fn default() -> Self {
        // A phone-class SoC: a few watts busy, about a joule per MB over Wi-Fi/LTE.
        EnergyModel {
            compute_watts: 3.0,
            radio_joules_per_mb: 1.0,
        }
    }
}

/// What varies per device and over time: its speed, its link, the cloud's state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditions {
    /// Device compute time over the profile's (a class's slowdown).
    pub device_slowdown: f64,
    /// Cloud compute time over the cloud profile's.
    pub cloud_slowdown: f64,
    pub link: Link,
    pub energy: EnergyModel,
    /// Run-time corrections (measured over predicted).
    pub correction: Correction,
    /// Expected wait in a cloud worker's queue, seconds.
    pub cloud_queue_s: f64,
    /// Inferences the device's cloud worker runs at once (its slots): the cloud stage
    /// limits throughput to `cloud_slots / cloud_s`.
    pub cloud_slots: f64,
    /// Frames the device has out at once (its agent's `in_flight`): throughput is at
    /// most `in_flight / latency`. Infinite: no window.
    pub in_flight: f64,
}

impl Conditions {
    pub fn new(device_slowdown: f64, link: Link) -> Conditions {
        Conditions {
            device_slowdown,
            cloud_slowdown: 1.0,
            link,
            energy: EnergyModel::default(),
            correction: Correction::default(),
            cloud_queue_s: 0.0,
            cloud_slots: 1.0,
            in_flight: f64::INFINITY,
        }
    }
}

/// `k_dev`, `k_cloud`: how far observed stage times are from the predicted ones.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Correction {
    pub k_dev: f64,
    pub k_cloud: f64,
}

impl Default for Correction {
    fn default() -> Self {
        Correction {
            k_dev: 1.0,
            k_cloud: 1.0,
        }
    }
}

impl Correction {
    /// Weight of a new observation in the running factors.
    pub const GAIN: f64 = 0.2;
    /// Factors are kept within `[1/LIMIT, LIMIT]`: one absurd sample cannot wreck a plan.
    pub const LIMIT: f64 = 10.0;

    /// `k` with one stage's predicted (made with `k`) and observed seconds folded in.
    pub fn fold(k: f64, predicted: f64, observed: f64) -> f64 {
        if !(predicted > 0.0 && observed.is_finite() && observed >= 0.0) {
            return k;
        }
        // The prediction already includes k: the ratio corrects it multiplicatively.
        let target = (k * observed / predicted).clamp(1.0 / Self::LIMIT, Self::LIMIT);
        (1.0 - Self::GAIN) * k + Self::GAIN * target
    }

    /// Folds in one frame's device stage (head and pack), predicted and observed.
    pub fn observe_device(&mut self, predicted_s: f64, observed_s: f64) {
        self.k_dev = Self::fold(self.k_dev, predicted_s, observed_s);
    }

    /// Folds in one frame's cloud stage (unpack and tail), predicted and observed.
    pub fn observe_cloud(&mut self, predicted_s: f64, observed_s: f64) {
        self.k_cloud = Self::fold(self.k_cloud, predicted_s, observed_s);
    }
}

/// The predicted figures of one plan.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Prediction {
    /// End to end, seconds.
    pub latency_s: f64,
    /// Inferences per second with the three stages pipelined.
    pub throughput: f64,
    /// Cloud seconds per inference (unpack and tail).
    pub cloud_s: f64,
    /// Bytes sent per inference.
    pub bytes: f64,
    /// Accuracy (or agreement) points lost to packing.
    pub drop_points: f64,
    /// Device joules per inference.
    pub energy_j: f64,
    /// Stages, seconds: head, pack, network (with the RTT), unpack, tail.
    pub head_s: f64,
    pub pack_s: f64,
    pub net_s: f64,
    pub unpack_s: f64,
    pub tail_s: f64,
}

/// One candidate with its model-dependent figures, at slowdown 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub candidate: Candidate,
    /// Device seconds of blocks before the split.
    pub head_s: f64,
    /// Cloud seconds of blocks from the split on.
    pub tail_s: f64,
    pub pack_s: f64,
    pub unpack_s: f64,
    pub bytes: f64,
    pub drop_points: f64,
    /// The batch a frame of this split expects at a worker that batches (1: alone);
    /// `tail_s` is then its share, the curve's time per image.
    pub batch: f64,
    /// Its wait for the batch's other frames, seconds (not scaled by the cloud's
    /// slowdown: a delay of the clock).
    pub batch_wait_s: f64,
}

impl Row {
    /// The prediction of this row under `c`.
    #[inline]
    pub fn predict(&self, c: &Conditions) -> Prediction {
        let dev = c.device_slowdown * c.correction.k_dev;
        let cloud = c.cloud_slowdown * c.correction.k_cloud;
        let head_s = dev * self.head_s;
        let pack_s = dev * self.pack_s;
        let unpack_s = cloud * self.unpack_s;
        let tail_s = cloud * self.tail_s;
        let (net_s, wire_s) = if self.bytes > 0.0 {
            let wire = 8.0 * self.bytes / c.link.bandwidth_bps; // inf with no link
            (wire + c.link.rtt_s, wire)
        } else {
            (0.0, 0.0)
        };
        let cloud_s = unpack_s + tail_s;
        let queue = if cloud_s > 0.0 { c.cloud_queue_s } else { 0.0 };
        // After the device, frames can pile up: at the link, or at the cloud.
        let after = wire_s.max(cloud_s / c.cloud_slots.max(1.0));
        let slowest = (head_s + pack_s).max(after);
        // A batched frame waits for its company and for the whole batch's tail; the pool
        // pays only its share (`cloud_s`).
        let batch_s = if cloud_s > 0.0 {
            self.batch_wait_s + tail_s * (self.batch - 1.0).max(0.0)
        } else {
            0.0
        };
        let mut latency_s = head_s + pack_s + net_s + queue + cloud_s + batch_s;
        // The pipeline's rate, or the window's: `in_flight` frames per latency. When the
        // link or the cloud is the slowest stage, the window's frames wait for it
        // (Little's law: latency = in_flight / throughput).
        let window = if c.in_flight.is_finite() {
            let w = c.in_flight.max(1.0);
            if after >= head_s + pack_s {
                latency_s = latency_s.max(w * after);
            }
            w / latency_s
        } else {
            f64::INFINITY
        };
        Prediction {
            latency_s,
            throughput: if slowest > 0.0 {
                (1.0 / slowest).min(window)
            } else {
                0.0
            },
            cloud_s,
            bytes: self.bytes,
            drop_points: self.drop_points,
            energy_j: c.energy.compute_watts * (head_s + pack_s)
                + c.energy.radio_joules_per_mb * self.bytes / 1e6,
            head_s,
            pack_s,
            net_s,
            unpack_s,
            tail_s,
        }
    }
}

/// Everything the scheduler needs about one model, from its three profiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Tables {
    pub model: String,
    pub blocks: usize,
    /// Every candidate: each split `0..blocks` with each precision and codec that the
    /// accuracy profile and the latency profile both cover, then device-only last.
    pub rows: Vec<Row>,
    /// Each split's batch curve in the cloud profile (`batch::ratios`; empty: none).
    pub batch_ratios: Vec<Vec<(usize, f64)>>,
    /// Whether split 0 can be sent as a JPEG (the profiles have its rows): then
    /// cloud-only sends what a camera sends.
    pub jpeg: bool,
}

/// Why profiles cannot be combined into [`Tables`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TablesError(pub String);

impl Tables {
    /// Combines the accuracy profile with the device's and the cloud's latency profiles
    /// (they may be the same file).
    pub fn new(
        accuracy: &AccuracyProfile,
        device: &LatencyProfile,
        cloud: &LatencyProfile,
    ) -> Result<Tables, TablesError> {
        for (what, p) in [("device", device), ("cloud", cloud)] {
            if p.model != accuracy.model || p.weights_hash != accuracy.weights_hash {
                return Err(TablesError(format!(
                    "the {what} latency profile is of `{}` (weights {}), the accuracy profile \
                     of `{}` (weights {}); give profiles of the same model and weights",
                    p.model, p.weights_hash, accuracy.model, accuracy.weights_hash
                )));
            }
        }
        if accuracy.granularity != Granularity::PerTensor || accuracy.clip != Clip::MinMax {
            return Err(TablesError(format!(
                "the accuracy profile of `{}` was measured with {} {} ranges, but agents \
                 pack with min/max ranges per tensor, so its accuracy figures would not \
                 hold; plan with a profile from `dyno profile accuracy --model {}` (without \
                 --per-channel or --clip)",
                accuracy.model, accuracy.clip, accuracy.granularity, accuracy.model
            )));
        }
        let n = device.blocks.len();
        if cloud.blocks.len() != n {
            return Err(TablesError(format!(
                "the device latency profile has {n} blocks, the cloud's {}; measure both \
                 with the same dyno",
                cloud.blocks.len()
            )));
        }
        let mut head = vec![0.0; n + 1];
        for (i, b) in device.blocks.iter().enumerate() {
            head[i + 1] = head[i] + b.seconds;
        }
        let mut tail = vec![0.0; n + 1];
        for i in (0..n).rev() {
            tail[i] = tail[i + 1] + cloud.blocks[i].seconds;
        }
        let codec_time = |p: &LatencyProfile, s: usize, prec: Precision, codec: Codec| {
            p.codecs
                .iter()
                .find(|r| r.split == s && r.precision == prec && r.codec == codec)
                .map(|r| (r.pack_s, r.unpack_s))
        };
        let mut rows = Vec::new();
        for sp in &accuracy.splits {
            if sp.split >= n {
                return Err(TablesError(format!(
                    "the accuracy profile has split {} but the model has {n} blocks \
                     (splits that send are 0..{n}); re-run `dyno profile accuracy`",
                    sp.split
                )));
            }
            for e in &sp.entries {
                for codec in Codec::ALL {
                    let (Some((pack_s, _)), Some((_, unpack_s))) = (
                        codec_time(device, sp.split, e.precision, codec),
                        codec_time(cloud, sp.split, e.precision, codec),
                    ) else {
                        continue;
                    };
                    rows.push(Row {
                        candidate: Candidate {
                            split: sp.split as u16,
                            precision: e.precision,
                            codec,
                        },
                        head_s: head[sp.split],
                        tail_s: tail[sp.split],
                        pack_s,
                        unpack_s,
                        bytes: e.bytes.get(codec),
                        drop_points: e.planning_drop(),
                        batch: 1.0,
                        batch_wait_s: 0.0,
                    });
                }
            }
        }
        if rows.is_empty() {
            return Err(TablesError(
                "the accuracy and latency profiles share no (split, precision, codec); \
                 measure them for the same model"
                    .into(),
            ));
        }
        rows.push(Row {
            candidate: Candidate {
                split: n as u16,
                precision: Precision::Fp32,
                codec: Codec::None,
            },
            head_s: head[n],
            tail_s: 0.0,
            pack_s: 0.0,
            unpack_s: 0.0,
            bytes: 0.0,
            drop_points: 0.0,
            batch: 1.0,
            batch_wait_s: 0.0,
        });
        Ok(Tables {
            model: accuracy.model.clone(),
            blocks: n,
            jpeg: rows.iter().any(|r| r.candidate.precision.is_jpeg()),
            rows,
            batch_ratios: (0..n).map(|s| batch::ratios(cloud, s)).collect(),
        })
    }

    /// The device-only row.
    pub fn device_only(&self) -> &Row {
        self.rows.last().expect("tables always hold device-only")
    }

    /// The tail of `row`'s split on the device under `c`, seconds: what a device runs
    /// when the cloud cannot take a frame (a busy answer).
    pub fn device_tail_s(&self, row: &Row, c: &Conditions) -> f64 {
        let dev = c.device_slowdown * c.correction.k_dev;
        (dev * (self.device_only().head_s - row.head_s)).max(0.0)
    }

    /// The row of a candidate, if it is in the tables.
    pub fn row(&self, c: &Candidate) -> Option<&Row> {
        self.rows.iter().find(|r| r.candidate == *c)
    }

    /// These tables at a pool that batches as `b`, each split's frames arriving at a
    /// worker at `arrivals_fps[split]`: every row that onloads costs its share of the
    /// batch it expects and waits for it ([`batch::Effect`]).
    pub fn batched(&self, b: &Batching, arrivals_fps: &[f64]) -> Tables {
        let mut t = self.clone();
        for r in t
            .rows
            .iter_mut()
            .filter(|r| (r.candidate.split as usize) < self.blocks)
        {
            let s = r.candidate.split as usize;
            let e = batch::Effect::of(
                self.batch_ratios.get(s).map_or(&[][..], Vec::as_slice),
                b.limit(s),
                b.max_queue_delay_s,
                arrivals_fps.get(s).copied().unwrap_or(0.0),
            );
            r.tail_s *= e.per_image;
            r.batch = e.frames;
            r.batch_wait_s = e.wait_s;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(split: u16, head: f64, tail: f64, bytes: f64) -> Row {
        Row {
            candidate: Candidate {
                split,
                precision: Precision::Bits(8),
                codec: Codec::Lz4,
            },
            head_s: head,
            tail_s: tail,
            pack_s: 0.001,
            unpack_s: 0.002,
            bytes,
            drop_points: 0.5,
            batch: 1.0,
            batch_wait_s: 0.0,
        }
    }

    #[test]
    fn stages_scale_and_the_slowest_sets_throughput() {
        let r = row(3, 0.010, 0.020, 125_000.0); // 1 Mbit
        let mut c = Conditions::new(10.0, Link::mbps(10.0, 20.0));
        c.cloud_slowdown = 0.5;
        let p = r.predict(&c);
        assert!((p.head_s - 0.1).abs() < 1e-12);
        assert!((p.pack_s - 0.01).abs() < 1e-12);
        assert!((p.net_s - 0.12).abs() < 1e-12, "{}", p.net_s);
        assert!((p.cloud_s - 0.011).abs() < 1e-12);
        assert!((p.latency_s - (0.1 + 0.01 + 0.12 + 0.011)).abs() < 1e-12);
        // Network wire time 0.1 s vs device 0.11 s: the device is the bottleneck.
        assert!((p.throughput - 1.0 / 0.11).abs() < 1e-9);
        let e = 3.0 * 0.11 + 0.125;
        assert!((p.energy_j - e).abs() < 1e-12);
    }

    #[test]
    fn a_window_of_frames_in_flight_bounds_throughput_by_latency() {
        // Device 0.011 s, wire 0.1 s and 0.12 s of RTT, cloud 0.011 s: latency 0.242 s.
        let r = row(3, 0.010, 0.020, 125_000.0);
        let mut c = Conditions::new(1.0, Link::mbps(10.0, 120.0));
        c.cloud_slowdown = 0.5;
        let free = r.predict(&c);
        assert!((free.throughput - 10.0).abs() < 1e-9, "{}", free.throughput);
        c.in_flight = 2.0;
        let p = r.predict(&c);
        assert!((p.latency_s - 0.242).abs() < 1e-9, "{}", p.latency_s);
        // Two frames per 0.242 s, below the link's 10 per second.
        assert!(
            (p.throughput - 2.0 / 0.242).abs() < 1e-9,
            "{}",
            p.throughput
        );
        // A wide window leaves the pipeline's rate, and its frames wait for the link:
        // 8 frames out at 10 per second take 0.8 s each.
        c.in_flight = 8.0;
        let wide = r.predict(&c);
        assert!((wide.throughput - 10.0).abs() < 1e-9, "{}", wide.throughput);
        assert!((wide.latency_s - 0.8).abs() < 1e-9, "{}", wide.latency_s);
    }

    #[test]
    fn no_link_means_no_throughput_except_device_only() {
        let c = Conditions::new(1.0, Link::gone());
        let p = row(2, 0.01, 0.01, 1000.0).predict(&c);
        assert_eq!(p.throughput, 0.0);
        assert!(p.latency_s.is_infinite());
        let device_only = Row {
            pack_s: 0.0,
            unpack_s: 0.0,
            ..row(5, 0.05, 0.0, 0.0)
        };
        let d = device_only.predict(&c);
        assert!((d.throughput - 20.0).abs() < 1e-9);
        assert_eq!(d.net_s, 0.0);
    }

    #[test]
    fn corrections_follow_observations_and_ignore_nonsense() {
        let mut k = Correction::default();
        for _ in 0..40 {
            // Predictions are made with the current k; the truth is twice the profile.
            let predicted = 0.010 * k.k_dev;
            k.observe_device(predicted, 0.020);
        }
        assert!((k.k_dev - 2.0).abs() < 0.01, "{}", k.k_dev);
        let before = k;
        k.observe_device(0.0, 1.0);
        k.observe_device(0.01, f64::NAN);
        assert_eq!(k, before);
        for _ in 0..100 {
            k.observe_cloud(0.01 * k.k_cloud, 1e9);
        }
        assert!(k.k_cloud <= Correction::LIMIT + 1e-9);
    }

    #[test]
    fn a_batched_split_costs_the_pool_its_share_and_waits_for_its_batch() {
        let mut t = crate::sched::tests::toy();
        // Split 2's curve: batch 4 at 0.75 of batch 1's time per image.
        t.batch_ratios = vec![vec![], vec![], vec![(1, 1.0), (2, 0.9), (4, 0.75)], vec![]];
        let b = Batching {
            limits: vec![1, 1, 4, 1],
            max_queue_delay_s: 0.010,
        };
        let c = Conditions::new(1.0, Link::mbps(100.0, 0.01));
        let split2 = |t: &Tables| *t.rows.iter().find(|r| r.candidate.split == 2).unwrap();
        let alone = split2(&t).predict(&c);
        // 300 frames/s of split 2 at the worker: 4 within 10 ms, a full batch.
        let batched = t.batched(&b, &[0.0, 0.0, 300.0, 0.0]);
        let r = split2(&batched);
        assert!((r.batch - 4.0).abs() < 1e-9, "{}", r.batch);
        let p = r.predict(&c);
        // The pool pays 0.75 of the tail; the frame waits for its company and for the
        // batch's whole tail (4 x 0.75).
        assert!((p.tail_s - 0.75 * alone.tail_s).abs() < 1e-12);
        assert!(p.cloud_s < alone.cloud_s);
        let extra = r.batch_wait_s + 3.0 * p.tail_s;
        assert!(
            (p.latency_s - (alone.latency_s - alone.tail_s + p.tail_s + extra)).abs() < 1e-9,
            "{} against {}",
            p.latency_s,
            alone.latency_s
        );
        // Other splits, and no batching, are untouched.
        let other = batched
            .rows
            .iter()
            .find(|r| r.candidate.split == 1)
            .unwrap();
        assert_eq!(other.batch, 1.0);
        assert_eq!(t.batched(&Batching::off(), &[300.0; 4]).rows, t.rows);
    }
}
