//! Trains `fashion_cnn` on the official Fashion-MNIST training set, with a fixed seed.
//!
//! `dyno models train fashion_cnn` writes `models/fashion_cnn.safetensors` and its
//! `.sha256`; the README gives the exact command that produced the committed file.
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tch::nn::OptimizerConfig;
use tch::{nn, Kind};

use crate::check::predict;
use crate::data;
use crate::error::{ModelError, Result};
use crate::home::Home;
use crate::model::zoo::{self, Init};

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch: i64,
    pub learning_rate: f64,
    pub seed: i64,
    pub out: PathBuf,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_accuracy: f64,
}

/// Trains from random weights (seed `opts.seed`) and saves the weights and checksum.
pub fn train_fashion_cnn(home: &Home, opts: &TrainOptions) -> Result<Vec<EpochReport>> {
    let d = data::fashion_mnist(&home.fashion_mnist_dir())?;
    let model = zoo::build("fashion_cnn", home, Init::Random(opts.seed))?;
    let test_labels = Vec::<i64>::try_from(&d.test_labels)?;
    let n_train = d.train_images.size()[0];
    let steps = (n_train + opts.batch - 1) / opts.batch;
    let vs = model.var_store().expect("built-in models own a var store");
    let mut opt = nn::Adam::default().build(vs, opts.learning_rate)?;
    let mut reports = Vec::new();
    for epoch in 1..=opts.epochs {
        let bar = if opts.progress {
            ProgressBar::new(steps as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} batches, {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_message(format!("{epoch}/{}", opts.epochs));
        // A fresh permutation each epoch, from the seeded libtorch generator.
        let order = tch::Tensor::randperm(n_train, (Kind::Int64, tch::Device::Cpu));
        let (mut loss_sum, mut batches) = (0.0, 0);
        for step in 0..steps {
            let idx = order.narrow(
                0,
                step * opts.batch,
                opts.batch.min(n_train - step * opts.batch),
            );
            let xs = d.train_images.index_select(0, &idx);
            let ys = d.train_labels.index_select(0, &idx);
            let loss = model.forward_t(&xs, true)?.cross_entropy_for_logits(&ys);
            opt.backward_step(&loss);
            loss_sum += loss.double_value(&[]);
            batches += 1;
            bar.inc(1);
        }
        bar.finish_and_clear();
        let preds = predict(&model, &d.test_images, 1000)?;
        let correct = preds
            .iter()
            .zip(&test_labels)
            .filter(|(p, l)| p == l)
            .count();
        let report = EpochReport {
            epoch,
            train_loss: loss_sum / batches as f64,
            test_accuracy: correct as f64 / test_labels.len() as f64,
        };
        if opts.progress {
            eprintln!(
                "epoch {}: train loss {:.4}, test accuracy {:.4}",
                report.epoch, report.train_loss, report.test_accuracy
            );
        }
        reports.push(report);
    }
    let vs = model.var_store().expect("built-in models own a var store");
    save_with_checksum(vs, &opts.out)?;
    Ok(reports)
}

fn save_with_checksum(vs: &nn::VarStore, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    }
    vs.save(out)?;
    let sum = zoo::sha256_file(out)?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sum_path = PathBuf::from(format!("{}.sha256", out.display()));
    std::fs::write(&sum_path, format!("{sum}  {name}\n")).map_err(|e| ModelError::io(&sum_path, e))
}
