//! `dyno models check`: does a model classify real inputs, and does cutting it change
//! anything? Runs the model on real data, runs head-then-tail at every split point
//! against the full forward, and times each block.
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use tch::Tensor;

use crate::data;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::model::{zoo, Model, SplitPoint};

/// Which inputs to check a model on.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// An image folder; default: the model's own data set (see [`default_inputs`]).
    pub images: Option<PathBuf>,
    /// Timed runs per block (after one warm-up run).
    pub timing_runs: usize,
}

/// What `dyno models check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub model: String,
    pub weights: String,
    /// What the inputs were (an image folder or a named data set).
    pub data: String,
    /// Inputs whose top-1 equals their label.
    pub correct: usize,
    /// Labeled inputs.
    pub total: usize,
    pub accuracy: Option<f64>,
    /// Top-1 class index of each input, in input order.
    pub predictions: Vec<i64>,
    /// Input file of each prediction (empty for a data set).
    pub files: Vec<String>,
    /// Largest |tail(head(x, s), s) - forward(x)| over all split points `s`.
    pub max_split_abs_err: f64,
    /// The same, per split point.
    pub split_abs_err: Vec<f64>,
    pub split_points: Vec<SplitPoint>,
    /// Median time of each block on one input, in milliseconds.
    pub block_ms: Vec<BlockTime>,
    /// For `mobilenet_v2`: largest difference from `tch::vision::mobilenet::v2` with the
    /// same weights, an implementation independent of dyno's block list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_max_abs_err: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlockTime {
    pub block: String,
    pub ms: f64,
}

/// Inputs for a check: a batch, its labels (-1 where unknown) and file names.
pub struct Inputs {
    pub description: String,
    pub xs: Tensor,
    pub labels: Vec<i64>,
    pub files: Vec<String>,
}

/// The default data of a model: the Fashion-MNIST test set for `fashion_cnn`, the 20
/// labeled ImageNet images for 3-channel models.
pub fn default_inputs(model: &Model, home: &Home) -> Result<Inputs> {
    if model.name() == "fashion_cnn" {
        let dir = home.fashion_mnist_dir();
        let d = data::fashion_mnist(&dir)?;
        return Ok(Inputs {
            description: format!("Fashion-MNIST official test set ({})", dir.display()),
            labels: Vec::<i64>::try_from(&d.test_labels).map_err(Error::Torch)?,
            xs: d.test_images,
            files: vec![],
        });
    }
    if model.input().shape[0] == 3 {
        let dir = home.imagenet_dir();
        if !dir.is_dir() {
            return Err(Error::Dataset {
                path: dir,
                reason: "the ImageNet sample images are not there".into(),
            });
        }
        return image_inputs(model, dir);
    }
    Err(Error::Dataset {
        path: home.root().to_path_buf(),
        reason: format!(
            "`{}` has no default data set; give an image folder with --images DIR",
            model.name()
        ),
    })
}

/// Every image of a folder, preprocessed for `model`.
pub fn image_inputs(model: &Model, dir: PathBuf) -> Result<Inputs> {
    let images = data::list_images(&dir)?;
    let xs = data::load_batch(&images, model.input())?;
    Ok(Inputs {
        description: format!("{} images in {}", images.len(), dir.display()),
        xs,
        labels: images.iter().map(|i| i.label.unwrap_or(-1)).collect(),
        files: images
            .iter()
            .map(|i| i.path.display().to_string())
            .collect(),
    })
}

/// Top-1 class of each row of logits, computed in batches of `batch`.
pub fn predict(model: &Model, xs: &Tensor, batch: i64) -> Result<Vec<i64>> {
    let n = xs.size()[0];
    let mut out = Vec::with_capacity(n as usize);
    let mut start = 0;
    while start < n {
        let len = batch.min(n - start);
        let logits = model.forward(&xs.narrow(0, start, len))?;
        out.extend(Vec::<i64>::try_from(&logits.argmax(-1, false)).map_err(Error::Torch)?);
        start += len;
    }
    Ok(out)
}

/// Largest |a - b| over all elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// |tail(head(x, s), s) - forward(x)| for every split point `s`, on `xs`.
pub fn split_errors(model: &Model, xs: &Tensor) -> Result<Vec<f64>> {
    let full = model.forward(xs)?;
    (0..=model.num_blocks())
        .map(|s| {
            let a = model.head(xs, s)?;
            let y = model.tail(&a, s)?;
            Ok(max_abs_diff(&y, &full))
        })
        .collect()
}

/// Median time of each block on `x` (one input), after a warm-up run.
pub fn block_times(model: &Model, x: &Tensor, runs: usize) -> Result<Vec<BlockTime>> {
    let mut out = Vec::with_capacity(model.num_blocks());
    let mut a = x.shallow_clone();
    for (i, name) in model.block_names().enumerate() {
        let mut next = model.run_block(i, &a)?; // warm-up
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            next = model.run_block(i, &a)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        out.push(BlockTime {
            block: name.to_string(),
            ms: times[times.len() / 2],
        });
        a = next;
    }
    Ok(out)
}

/// Runs the whole check on `model`.
pub fn check(model: &Model, home: &Home, opts: &CheckOptions) -> Result<CheckReport> {
    let inputs = match &opts.images {
        Some(dir) => image_inputs(model, dir.clone())?,
        None => default_inputs(model, home)?,
    };
    let predictions = predict(model, &inputs.xs, 500)?;
    let labeled: Vec<(i64, i64)> = inputs
        .labels
        .iter()
        .zip(&predictions)
        .filter(|(l, _)| **l >= 0)
        .map(|(l, p)| (*l, *p))
        .collect();
    let correct = labeled.iter().filter(|(l, p)| l == p).count();
    let total = labeled.len();
    // Head-then-tail at every split, on a batch of up to 8 inputs.
    let probe = inputs.xs.narrow(0, 0, inputs.xs.size()[0].min(8));
    let split_abs_err = split_errors(model, &probe)?;
    let reference_max_abs_err = if model.name() == "mobilenet_v2" {
        let (_vs, reference) = zoo::tch_mobilenet_v2(home)?;
        let _guard = tch::no_grad_guard();
        let ours = model.forward(&probe)?;
        let theirs = tch::nn::ModuleT::forward_t(&reference, &probe, false);
        Some(max_abs_diff(&ours, &theirs))
    } else {
        None
    };
    let block_ms = block_times(model, &inputs.xs.narrow(0, 0, 1), opts.timing_runs)?;
    Ok(CheckReport {
        model: model.name().to_string(),
        weights: model.weights().to_string(),
        data: inputs.description,
        correct,
        total,
        accuracy: (total > 0).then(|| correct as f64 / total as f64),
        predictions,
        files: inputs.files,
        max_split_abs_err: split_abs_err.iter().copied().fold(0.0, f64::max),
        split_abs_err,
        split_points: model.split_points()?,
        block_ms,
        reference_max_abs_err,
    })
}
