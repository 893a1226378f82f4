//! The precision-sensitivity profile: pack-then-unpack inserted at every split point,
//! for every precision, on real data.
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use tch::Tensor;

use super::{AccuracyProfile, CodecBytes, Entry, Metric, SplitProfile, ACCURACY_FORMAT};
use crate::check::{self, predict};
use crate::data;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::model::Model;
use crate::pack::tensor::tensor_values;
use crate::pack::{
    Clip, Codec, DecodeLimits, Granularity, PackOptions, Packer, Precision, TensorId,
};
use crate::stats;

/// The inputs of a profile run.
pub struct ProfileInputs {
    pub description: String,
    /// `[N, C, H, W]`.
    pub xs: Tensor,
    /// Labels, when every input has one.
    pub labels: Option<Vec<i64>>,
    pub metric: Metric,
}

#[derive(Debug, Clone)]
pub struct AccuracyOptions {
    /// Use only the first `limit` inputs.
    pub limit: Option<usize>,
    /// Inputs per tail run.
    pub batch: usize,
    pub granularity: Granularity,
    pub clip: Clip,
    pub progress: bool,
}

impl Default for AccuracyOptions {
    fn default() -> Self {
        AccuracyOptions {
            limit: None,
            batch: 100,
            granularity: Granularity::PerTensor,
            clip: Clip::MinMax,
            progress: false,
        }
    }
}

/// Which half of the ImageNet sample a run uses: the images at even places (sorted by
/// name, so one in two classes) profile, the ones at odd places are held out to check
/// the plans chosen on the first (`dyno profile heldout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    Profiling,
    HeldOut,
}

impl Half {
    fn keeps(self, index: usize) -> bool {
        match self {
            Half::Profiling => index % 2 == 0,
            Half::HeldOut => index % 2 == 1,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Half::Profiling => "profiling half (even places)",
            Half::HeldOut => "held-out half (odd places)",
        }
    }

    /// This half's images of the sample, each with its label.
    pub fn images(self, home: &Home) -> Result<Vec<data::LabeledImage>> {
        let dir = home.imagenet_1k_dir();
        let images: Vec<_> = data::list_images(&dir)?
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.keeps(*i))
            .map(|(_, img)| img)
            .collect();
        if let Some(img) = images.iter().find(|i| i.label.is_none()) {
            return Err(Error::Dataset {
                path: img.path.clone(),
                reason: "its name does not end in _<class>; the sample's files are \
                         NNNN_<wnid>_<class>.jpg (data/imagenet-1k-sample/README.md)"
                    .into(),
            });
        }
        Ok(images)
    }
}

/// The default data of a model: Fashion-MNIST's 10k test images for `fashion_cnn`; for
/// 3-channel models the profiling half of the project's 1,000 labeled ImageNet images
/// (`data/imagenet-1k-sample`, one per class), accuracy against their labels.
pub fn default_inputs(model: &Model, home: &Home) -> Result<ProfileInputs> {
    if model.input().shape[0] != 3 {
        let c = check::default_inputs(model, home)?;
        return Ok(ProfileInputs {
            description: c.description,
            xs: c.xs,
            labels: Some(c.labels),
            metric: Metric::Accuracy,
        });
    }
    sample_inputs(model, home, Half::Profiling)
}

/// One half of the 1,000-image ImageNet sample, preprocessed for `model` (one centre
/// crop each), with labels.
pub fn sample_inputs(model: &Model, home: &Home, half: Half) -> Result<ProfileInputs> {
    let dir = home.imagenet_1k_dir();
    let images = half.images(home)?;
    Ok(ProfileInputs {
        description: format!(
            "{} labeled ImageNet images, the {} of {}",
            images.len(),
            half.name(),
            dir.display()
        ),
        xs: data::load_batch(&images, model.input())?,
        labels: Some(images.iter().filter_map(|i| i.label).collect()),
        metric: Metric::Accuracy,
    })
}

/// The images of a folder; accuracy when all are labeled, agreement otherwise.
pub fn folder_inputs(model: &Model, dir: PathBuf) -> Result<ProfileInputs> {
    let c = check::image_inputs(model, dir)?;
    let labeled = c.labels.iter().all(|&l| l >= 0);
    Ok(ProfileInputs {
        description: c.description,
        xs: c.xs,
        labels: labeled.then_some(c.labels),
        metric: if labeled {
            Metric::Accuracy
        } else {
            Metric::Agreement
        },
    })
}

/// Sums over the inputs of one (split, precision).
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    correct: usize,
    agree: usize,
    /// Inputs right before packing and wrong after, and the reverse (with labels).
    lost: usize,
    gained: usize,
    bytes: [u64; 3],
}

/// Runs the profile.
pub fn profile(
    model: &Model,
    inputs: &ProfileInputs,
    opts: &AccuracyOptions,
) -> Result<AccuracyProfile> {
    let run = Run::new(model, inputs, opts)?;
    let splits = model.split_points()?;
    let sent = &splits[..model.num_blocks()]; // split N sends nothing
    let bar = if opts.progress {
        ProgressBar::new((sent.len() * run.chunks()) as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {elapsed}, {eta} left")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut out = Vec::with_capacity(sent.len());
    for sp in sent {
        bar.set_message(format!("split {}", sp.index));
        let shape: Vec<usize> = sp.shape.iter().map(|&d| d as usize).collect();
        let precisions = Precision::at_split(sp.index, &shape);
        let mut entries = run.entries(sp.index, &precisions, || bar.inc(1))?;
        super::make_monotone(&mut entries);
        out.push(SplitProfile {
            split: sp.index,
            after_block: sp.after_block.clone(),
            shape: sp.shape.clone(),
            fp32_bytes: sp.fp32_bytes,
            entries,
        });
    }
    bar.finish_and_clear();
    Ok(AccuracyProfile {
        format: ACCURACY_FORMAT,
        model: model.name().to_string(),
        weights_hash: format!("{:016x}", model.weights_hash()),
        metric: run.metric(),
        data: inputs.description.clone(),
        inputs: run.n,
        baseline_accuracy: run.baseline_correct.map(|c| c as f64 / run.n as f64),
        granularity: opts.granularity,
        clip: opts.clip,
        splits: out,
    })
}

/// The drop of chosen (split, precision) pairs on `inputs`, each with its interval, as
/// the profile would measure it (not made monotone: each stands alone).
pub fn measure(
    model: &Model,
    inputs: &ProfileInputs,
    opts: &AccuracyOptions,
    split: usize,
    precisions: &[Precision],
) -> Result<Vec<Entry>> {
    Run::new(model, inputs, opts)?.entries(split, precisions, || ())
}

/// One profile run's inputs and the unpacked model's answers on them.
struct Run<'a> {
    model: &'a Model,
    opts: &'a AccuracyOptions,
    metric: Metric,
    n: usize,
    xs: Tensor,
    labels: Option<&'a [i64]>,
    baseline: Vec<i64>,
    baseline_correct: Option<usize>,
}

impl<'a> Run<'a> {
    fn new(model: &'a Model, inputs: &'a ProfileInputs, opts: &'a AccuracyOptions) -> Result<Self> {
        let n_all = inputs.xs.size()[0] as usize;
        let n = opts.limit.unwrap_or(n_all).min(n_all);
        if n == 0 {
            return Err(Error::Dataset {
                path: PathBuf::from(&inputs.description),
                reason: "no inputs to profile".into(),
            });
        }
        let xs = inputs.xs.narrow(0, 0, n as i64);
        let labels = inputs.labels.as_ref().map(|l| &l[..n]);
        let baseline = predict(model, &xs, opts.batch.max(1) as i64)?;
        let baseline_correct = labels.map(|l| count_eq(&baseline, l));
        let metric = if labels.is_some() {
            inputs.metric
        } else {
            Metric::Agreement
        };
        Ok(Run {
            model,
            opts,
            metric,
            n,
            xs,
            labels,
            baseline,
            baseline_correct,
        })
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn chunks(&self) -> usize {
        self.n.div_ceil(self.opts.batch.max(1))
    }

    /// One entry per precision at `split`, measured on every input; `tick` after each
    /// batch of inputs.
    fn entries(
        &self,
        split: usize,
        precisions: &[Precision],
        mut tick: impl FnMut(),
    ) -> Result<Vec<Entry>> {
        let (model, opts, n) = (self.model, self.opts, self.n);
        let batch = opts.batch.max(1);
        let id = TensorId {
            model: model.name(),
            weights_hash: model.weights_hash(),
            split: split as u16,
        };
        let mut tallies = vec![Tally::default(); precisions.len()];
        for c in 0..self.chunks() {
            let start = c * batch;
            let len = batch.min(n - start);
            let a = model.head(&self.xs.narrow(0, start as i64, len as i64), split)?;
            let (values, shape) = tensor_values(&a)?;
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let base = &self.baseline[start..start + len];
            for (p, tally) in precisions.iter().zip(tallies.iter_mut()) {
                let (restored, bytes) = round_trip_items(&values, &shape, &id, *p, opts)?;
                let t = Tensor::from_slice(&restored).view(dims.as_slice());
                let logits = model.tail(&t, split)?;
                let preds =
                    Vec::<i64>::try_from(&logits.argmax(-1, false)).map_err(Error::Torch)?;
                tally.agree += count_eq(&preds, base);
                if let Some(l) = self.labels {
                    let l = &l[start..start + len];
                    tally.correct += count_eq(&preds, l);
                    for ((p, b), l) in preds.iter().zip(base).zip(l) {
                        match (b == l, p == l) {
                            (true, false) => tally.lost += 1,
                            (false, true) => tally.gained += 1,
                            _ => {}
                        }
                    }
                }
                for (t, b) in tally.bytes.iter_mut().zip(bytes) {
                    *t += b;
                }
            }
            tick();
        }
        Ok(precisions
            .iter()
            .zip(&tallies)
            .map(|(p, t)| self.entry(*p, t))
            .collect())
    }

    fn entry(&self, precision: Precision, t: &Tally) -> Entry {
        let n = self.n;
        // From the counts, so that 2 of 200 is exactly 1 point.
        let (drop_points, ci) = match (self.metric, self.baseline_correct) {
            (Metric::Accuracy, Some(base)) => (
                100.0 * (base as f64 - t.correct as f64) / n as f64,
                stats::paired_drop_ci95(t.lost, t.gained, n),
            ),
            _ => (
                100.0 * (n - t.agree) as f64 / n as f64,
                stats::wilson_ci95(n - t.agree, n),
            ),
        };
        let mean = |i: usize| t.bytes[i] as f64 / n as f64;
        Entry {
            precision,
            accuracy: self.labels.map(|_| t.correct as f64 / n as f64),
            agreement: t.agree as f64 / n as f64,
            drop_points,
            drop_ci95: Some(ci),
            measured_drop_points: None,
            bytes: CodecBytes {
                none: mean(0),
                lz4: mean(1),
                zstd: mean(2),
            },
        }
    }
}

fn count_eq(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

/// Packs every item of a batch on its own (as a device sends frames) with each codec,
/// unpacks it, and returns the restored batch and the packed bytes per codec (a JPEG's
/// one figure for all three: it is sent with none). The items are shared among the
/// machine's cores.
fn round_trip_items(
    values: &[f32],
    shape: &[usize],
    id: &TensorId,
    precision: Precision,
    opts: &AccuracyOptions,
) -> Result<(Vec<f32>, [u64; 3])> {
    let items = shape[0];
    let per_item = values.len() / items;
    let mut item_shape = shape.to_vec();
    item_shape[0] = 1;
    let mut restored = vec![0f32; values.len()];
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items)
        .max(1);
    let per_worker = items.div_ceil(workers);
    // Each precision's codecs (a JPEG's: none); the batch goes on restored from LZ4's copy,
    // or from the one codec there is.
    let codecs = precision.codecs();
    let restore_with = if codecs.contains(&Codec::Lz4) {
        Codec::Lz4
    } else {
        codecs[0]
    };
    let results: Vec<Result<[u64; 3]>> = std::thread::scope(|s| {
        let handles: Vec<_> = values
            .chunks(per_worker * per_item)
            .zip(restored.chunks_mut(per_worker * per_item))
            .map(|(vals, rest)| {
                let item_shape = &item_shape;
                s.spawn(move || -> Result<[u64; 3]> {
                    let mut packer = Packer::default();
                    let (mut buf, mut back) = (Vec::new(), Vec::new());
                    let mut bytes = [0u64; 3];
                    for (v, r) in vals.chunks(per_item).zip(rest.chunks_mut(per_item)) {
                        for &codec in codecs {
                            let opts = PackOptions {
                                granularity: opts.granularity,
                                clip: opts.clip,
                                ..PackOptions::new(precision, codec)
                            };
                            packer.pack_into(v, item_shape, id, &opts, &mut buf)?;
                            bytes[codec as usize] += buf.len() as u64;
                            if codec == restore_with {
                                packer.unpack_into(&buf, &DecodeLimits::default(), &mut back)?;
                                r.copy_from_slice(&back);
                            }
                        }
                    }
                    Ok(bytes)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a packing thread panicked"))
            .collect()
    });
    let mut total = [0u64; 3];
    for r in results {
        for (t, b) in total.iter_mut().zip(r?) {
            *t += b;
        }
    }
    // A codec the precision is not sent with counts what it is sent as (a JPEG: none).
    for c in Codec::ALL.into_iter().filter(|c| !codecs.contains(c)) {
        total[c as usize] = total[codecs[0] as usize];
    }
    Ok((restored, total))
}

/// Where `dyno profile accuracy` writes by default: `out/profiles/<model>.accuracy.json`,
/// the profile the scheduler reads. A profile of other ranges goes beside it, named for
/// them (`<model>.accuracy.per-channel.mse.json`), so that it does not replace that one.
pub fn default_out(home: &Home, model: &str, opts: &AccuracyOptions) -> PathBuf {
    let mut kind = String::from("accuracy");
    if opts.granularity != Granularity::PerTensor {
        kind.push_str(".per-channel");
    }
    if opts.clip != Clip::MinMax {
        kind.push('.');
        kind.push_str(opts.clip.name());
    }
    super::out_path(home, model, &kind)
}

/// The heat map's path beside a profile file.
pub fn heatmap_path(profile: &Path) -> PathBuf {
    profile.with_extension("png")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_ranges_are_written_beside_the_schedulers_profile() {
        let home = Home::at("/p");
        let name = |granularity, clip| {
            let opts = AccuracyOptions {
                granularity,
                clip,
                ..AccuracyOptions::default()
            };
            let path = default_out(&home, "fashion_cnn", &opts);
            assert_eq!(path.parent(), Some(Path::new("/p/out/profiles")));
            path.file_name().unwrap().to_string_lossy().into_owned()
        };
        use Granularity::*;
        assert_eq!(name(PerTensor, Clip::MinMax), "fashion_cnn.accuracy.json");
        assert_eq!(name(PerTensor, Clip::Mse), "fashion_cnn.accuracy.mse.json");
        assert_eq!(
            name(PerChannel, Clip::MinMax),
            "fashion_cnn.accuracy.per-channel.json"
        );
        assert_eq!(
            name(PerChannel, Clip::Mse),
            "fashion_cnn.accuracy.per-channel.mse.json"
        );
    }
}
