//! The latency profile: per-block times and per-(split, precision, codec) pack and unpack
//! times, measured on this machine. The scheduler scales it by a device class's slowdown
//! (`sched::perf`). Its file format is [`LatencyProfile`] as JSON.
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::home::Home;
use crate::model::Model;
use crate::pack::tensor::tensor_values;
use crate::pack::{Codec, DecodeLimits, PackOptions, Packer, Precision, TensorId};

/// Version of the latency profile file format.
pub const LATENCY_FORMAT: u32 = 1;

/// What one machine takes to run a model's blocks and to pack its activations (batch 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyProfile {
    pub format: u32,
    pub model: String,
    /// Hex of the model's weights hash.
    pub weights_hash: String,
    /// libtorch intra-op threads during the measurement.
    pub threads: i32,
    /// Timed runs per figure (each figure is their median, after one warm-up run); block
    /// times come from whole forward passes.
    pub runs: usize,
    /// What the activations were computed from.
    pub input: String,
    /// Median seconds of each block, in order.
    pub blocks: Vec<BlockLatency>,
    /// Median pack and unpack seconds at each split `0..blocks.len()`, for every
    /// precision and codec.
    pub codecs: Vec<CodecLatency>,
    /// Median seconds of the tail from each split on a batch of activations, for the
    /// batch sizes measured (`--batch`; empty: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<BatchLatency>,
}

/// The tail from `split` on `batch` activations at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLatency {
    pub split: usize,
    pub batch: usize,
    pub seconds: f64,
}

/// A batch size pays at a split when its tail takes at most this share of batch 1's
/// time per image, and no size below it takes more than batch 1's (a batch may form at
/// any size up to the limit). The curve is one activation joined to itself; in service
/// a batch also waits for its frames and unpacks them one by one: at MobileNetV2's
/// split 4 a measured 12 % saving came out 5 % slower in the worker bench
/// (docs/BENCHMARKS.md), so a batch must save 15 %.
pub const BATCH_PAYS: f64 = 0.85;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockLatency {
    pub name: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodecLatency {
    pub split: usize,
    pub precision: Precision,
    pub codec: Codec,
    /// Tensor to packed bytes: the copy out of libtorch and `Packer::pack_into`.
    pub pack_s: f64,
    /// Packed bytes to tensor: `Packer::unpack_into` and the copy into libtorch.
    pub unpack_s: f64,
    /// Packed bytes of this activation (header included).
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Timed runs per figure.
    pub runs: usize,
    /// Precisions to time the codecs at, where a split can be sent at them (default:
    /// all 18, and the JPEG qualities at split 0).
    pub precisions: Vec<Precision>,
    /// Batch sizes to time every split's tail at (empty: none).
    pub batches: Vec<usize>,
    pub progress: bool,
}

impl Default for LatencyOptions {
    fn default() -> Self {
        LatencyOptions {
            runs: 11,
            precisions: Precision::all()
                .into_iter()
                .chain(crate::pack::jpeg::QUALITIES.map(Precision::Jpeg))
                .collect(),
            batches: Vec::new(),
            progress: false,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `runs` calls of `f`, after one warm-up call.
fn time<T>(runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut last = f()?;
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        last = f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((median(times), last))
}

/// Measures `model` on one input `x` (`[1, C, H, W]`).
pub fn measure(
    model: &Model,
    x: &Tensor,
    input: &str,
    opts: &LatencyOptions,
) -> Result<LatencyProfile> {
    let n = model.num_blocks();
    let names: Vec<String> = model.block_names().map(str::to_string).collect();
    let bar = if opts.progress {
        let b = ProgressBar::new((n * (1 + 3 * Precision::all().len()) + 4) as u64);
        b.set_style(
            ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} ({eta})")
                .expect("a fixed template")
                .progress_chars("=> "),
        );
        b.set_message(model.name().to_string());
        b
    } else {
        ProgressBar::hidden()
    };
    // Blocks are timed in whole forward passes, as they run in service (timed alone,
    // over and over, MobileNetV2's blocks summed to 15 % less than a whole pass).
    let mut activations = Vec::with_capacity(n);
    let mut times = vec![Vec::with_capacity(opts.runs); n];
    for run in 0..=opts.runs.max(1) {
        let mut a = x.shallow_clone();
        for (i, t) in times.iter_mut().enumerate() {
            if run == 0 {
                activations.push(a.shallow_clone());
            }
            let start = Instant::now();
            a = model.run_block(i, &a)?;
            if run > 0 {
                t.push(start.elapsed().as_secs_f64());
            }
        }
    }
    let blocks: Vec<BlockLatency> = names
        .iter()
        .zip(times)
        .map(|(name, t)| BlockLatency {
            name: name.clone(),
            seconds: median(t),
        })
        .collect();
    bar.inc(n as u64);
    let codecs = codec_rows(model, &activations, &opts.precisions, opts.runs, || {
        bar.inc(1)
    })?;
    // The tail from each split on batches of the same activation, joined as a worker
    // joins its frames (the copy into one tensor is part of the batch's cost).
    let mut batches = Vec::new();
    for (split, act) in activations.iter().enumerate() {
        for &batch in &opts.batches {
            let frames: Vec<Tensor> = (0..batch.max(1)).map(|_| act.copy()).collect();
            let (seconds, _) = time(opts.runs, || {
                if frames.len() == 1 {
                    model.tail(&frames[0], split)
                } else {
                    model.tail(&Tensor::cat(&frames, 0), split)
                }
            })?;
            batches.push(BatchLatency {
                split,
                batch: batch.max(1),
                seconds,
            });
        }
    }
    bar.finish_and_clear();
    Ok(LatencyProfile {
        format: LATENCY_FORMAT,
        model: model.name().to_string(),
        weights_hash: format!("{:016x}", model.weights_hash()),
        threads: tch::get_num_threads(),
        runs: opts.runs,
        input: input.to_string(),
        blocks,
        codecs,
        batches,
    })
}

/// Median pack and unpack seconds of `activations[split]` (batch 1) at each of
/// `precisions` the split can be sent at ([`Precision::at_split`]: JPEG only at split 0),
/// with each of its codecs; `tick` after each.
pub fn codec_rows(
    model: &Model,
    activations: &[Tensor],
    precisions: &[Precision],
    runs: usize,
    mut tick: impl FnMut(),
) -> Result<Vec<CodecLatency>> {
    let hash = model.weights_hash();
    let limits = DecodeLimits::default();
    let mut packer = Packer::default();
    let mut codecs = Vec::new();
    for (split, act) in activations.iter().enumerate() {
        let id = TensorId {
            model: model.name(),
            weights_hash: hash,
            split: split as u16,
        };
        let item: Vec<usize> = act.size()[1..].iter().map(|&d| d as usize).collect();
        for precision in Precision::at_split(split, &item)
            .into_iter()
            .filter(|p| precisions.contains(p))
        {
            for &codec in precision.codecs() {
                let o = PackOptions::new(precision, codec);
                let mut buf = Vec::new();
                let (pack_s, ()) = time(runs, || {
                    let (values, shape) = tensor_values(act)?;
                    packer.pack_into(&values, &shape, &id, &o, &mut buf)?;
                    Ok(())
                })?;
                let mut values = Vec::new();
                let (unpack_s, t) = time(runs, || {
                    let h = packer.unpack_into(&buf, &limits, &mut values)?;
                    let dims: Vec<i64> = h.shape.iter().map(|&d| i64::from(d)).collect();
                    Ok(Tensor::from_slice(&values).view(dims.as_slice()))
                })?;
                debug_assert_eq!(t.size(), act.size());
                codecs.push(CodecLatency {
                    split,
                    precision,
                    codec,
                    pack_s,
                    unpack_s,
                    bytes: buf.len() as u64,
                });
                tick();
            }
        }
    }
    Ok(codecs)
}

impl LatencyProfile {
    /// The measured tail seconds at `split` by batch size, smallest first.
    pub fn batch_curve(&self, split: usize) -> Vec<(usize, f64)> {
        let mut c: Vec<(usize, f64)> = self
            .batches
            .iter()
            .filter(|b| b.split == split && b.batch >= 1 && b.seconds > 0.0)
            .map(|b| (b.batch, b.seconds))
            .collect();
        c.sort_by_key(|x| x.0);
        c
    }

    /// The largest batch, up to `max_batch`, that pays at `split` ([`BATCH_PAYS`]: it
    /// takes at most 85 % of batch 1's time per image, and no measured size below it
    /// takes more than batch 1's); 1 where nothing was measured or nothing pays.
    pub fn batch_limit(&self, split: usize, max_batch: usize) -> usize {
        let curve = self.batch_curve(split);
        let Some(&(1, one)) = curve.first() else {
            return 1;
        };
        let mut limit = 1;
        for &(b, t) in curve.iter().skip(1).filter(|x| x.0 <= max_batch) {
            let per_image = t / b as f64;
            if per_image > one {
                break;
            }
            if per_image <= BATCH_PAYS * one {
                limit = b;
            }
        }
        limit
    }

    /// Median seconds of all blocks.
    pub fn total_seconds(&self) -> f64 {
        self.blocks.iter().map(|b| b.seconds).sum()
    }

    /// Checks every figure; the error names the field and the fix.
    pub fn validate(&self) -> std::result::Result<(), String> {
        const FIX: &str = "re-measure with `dyno profile latency`";
        if self.format != LATENCY_FORMAT {
            return Err(format!(
                "format is {}, this dyno reads {LATENCY_FORMAT}; {FIX}",
                self.format
            ));
        }
        if self.blocks.is_empty() {
            return Err(format!("blocks is empty: a model has at least one; {FIX}"));
        }
        for (i, b) in self.blocks.iter().enumerate() {
            if !(b.seconds.is_finite() && b.seconds >= 0.0) {
                return Err(format!(
                    "blocks[{i}].seconds is {}: block times are finite seconds >= 0; {FIX}",
                    b.seconds
                ));
            }
        }
        for (i, c) in self.codecs.iter().enumerate() {
            if c.split >= self.blocks.len() {
                return Err(format!(
                    "codecs[{i}].split is {}: splits that send something are 0..{}; {FIX}",
                    c.split,
                    self.blocks.len()
                ));
            }
            for (key, v) in [("pack_s", c.pack_s), ("unpack_s", c.unpack_s)] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(format!(
                        "codecs[{i}].{key} is {v}: codec times are finite seconds >= 0; {FIX}"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        super::save_json(self, path)
    }

    pub fn load(path: &Path) -> Result<LatencyProfile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |reason: String| Error::Profile {
            path: path.to_path_buf(),
            reason,
        };
        let p: LatencyProfile = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "not a latency profile ({e}); write one with `dyno profile latency`"
            ))
        })?;
        p.validate().map_err(bad)?;
        Ok(p)
    }
}

/// Where `dyno profile latency` writes by default: `out/profiles/<model>.latency.json`
/// with as many libtorch threads as the machine has cores, else
/// `<model>.latency-<N>thread.json` (`dyno --threads 1 profile latency`: what the shipped
/// device classes and cloud workers read), so that a run with fewer threads never writes
/// over the default profile.
pub fn default_out(home: &Home, model: &str) -> PathBuf {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
    let threads = tch::get_num_threads();
    if threads < cores {
        super::out_path(home, model, &format!("latency-{threads}thread"))
    } else {
        super::out_path(home, model, "latency")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_curve(curve: &[(usize, usize, f64)]) -> LatencyProfile {
        LatencyProfile {
            format: LATENCY_FORMAT,
            model: "m".into(),
            weights_hash: "0".into(),
            threads: 1,
            runs: 1,
            input: "x".into(),
            blocks: Vec::new(),
            codecs: Vec::new(),
            batches: curve
                .iter()
                .map(|&(split, batch, seconds)| BatchLatency {
                    split,
                    batch,
                    seconds,
                })
                .collect(),
        }
    }

    #[test]
    fn a_split_is_batched_only_up_to_the_size_that_pays() {
        let p = with_curve(&[
            // Split 0: batching costs (0.6-0.8x per image): never.
            (0, 1, 0.010),
            (0, 2, 0.030),
            (0, 4, 0.060),
            // Split 1: pays at 2 and 4, not at 8.
            (1, 1, 0.010),
            (1, 2, 0.016),
            (1, 4, 0.030),
            (1, 8, 0.080),
            // Split 2: within 15 % of batch 1: not enough.
            (2, 1, 0.010),
            (2, 2, 0.0196),
            // Split 4: 2 saves 2 % (no worse than alone), 4 saves 20 %: up to 4.
            (4, 1, 0.010),
            (4, 2, 0.0196),
            (4, 4, 0.032),
        ]);
        assert_eq!(p.batch_limit(0, 8), 1);
        assert_eq!(p.batch_limit(1, 8), 4);
        assert_eq!(p.batch_limit(1, 2), 2, "never above max_batch");
        assert_eq!(p.batch_limit(2, 8), 1);
        assert_eq!(p.batch_limit(3, 8), 1, "nothing measured: one at a time");
        assert_eq!(p.batch_limit(4, 8), 4);
    }
}
