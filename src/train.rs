//! Trains `fashion_cnn` on the official Fashion-MNIST training set, with a fixed seed.
//!
//! `dyno models train fashion_cnn` writes `models/fashion_cnn.safetensors` and its
//! `.sha256`; the README gives the exact command that produced the committed file.
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tch::nn::OptimizerConfig;
use tch::{nn, Kind, Tensor};

use crate::check::predict;
use crate::data;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::model::zoo::{self, Init};
use crate::model::Model;

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch: i64,
    pub learning_rate: f64,
    pub seed: i64,
    /// Weight of the activation-sparsity term: the mean |activation| at every interior
    /// split, summed over the splits, is added to the loss times this. 0 turns it off.
    pub activation_l1: f64,
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
            let loss = training_loss(&model, &xs, &ys, opts.activation_l1)?;
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

/// Cross-entropy, plus `activation_l1` times the mean |activation| at each interior split
/// point summed over the splits. The second term drives activations to exactly 0 after
/// each ReLU, and a packed activation with more zero codes compresses to fewer bytes at
/// every split (docs/PACKING.md, "Weights trained for sparse activations").
pub fn training_loss(
    model: &Model,
    xs: &Tensor,
    ys: &Tensor,
    activation_l1: f64,
) -> Result<Tensor> {
    if activation_l1 == 0.0 {
        return Ok(model.forward_t(xs, true)?.cross_entropy_for_logits(ys));
    }
    let (ce, l1) = loss_terms(model, xs, ys, true)?;
    Ok(ce + l1 * activation_l1)
}

/// The two terms of [`training_loss`]: cross-entropy, and the mean |activation| summed
/// over the interior splits.
fn loss_terms(model: &Model, xs: &Tensor, ys: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
    let (logits, cuts) = model.forward_t_with_splits(xs, train)?;
    let l1 = cuts
        .iter()
        .map(|a| a.abs().mean(Kind::Float))
        .fold(Tensor::zeros([], (Kind::Float, xs.device())), |sum, m| {
            sum + m
        });
    Ok((logits.cross_entropy_for_logits(ys), l1))
}

fn save_with_checksum(vs: &nn::VarStore, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    vs.save(out)?;
    let sum = zoo::sha256_file(out)?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sum_path = PathBuf::from(format!("{}.sha256", out.display()));
    std::fs::write(&sum_path, format!("{sum}  {name}\n")).map_err(|e| Error::io(&sum_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded `fashion_cnn` and the first 64 Fashion-MNIST training images.
    fn batch() -> (Model, Tensor, Tensor) {
        let home = Home::discover();
        let model = zoo::build("fashion_cnn", &home, Init::Random(7)).unwrap();
        let d = data::fashion_mnist(&home.fashion_mnist_dir()).unwrap();
        let xs = d.train_images.narrow(0, 0, 64);
        let ys = d.train_labels.narrow(0, 0, 64);
        (model, xs, ys)
    }

    #[test]
    fn the_sparsity_term_is_the_mean_activation_at_every_split() {
        let (model, xs, ys) = batch();
        // In inference mode (no dropout draw), against the model's own head and forward.
        let (ce, l1) = loss_terms(&model, &xs, &ys, false).unwrap();
        let want_ce = model.forward(&xs).unwrap().cross_entropy_for_logits(&ys);
        let want_l1: f64 = (1..model.num_blocks())
            .map(|split| {
                let a = model.head(&xs, split).unwrap();
                a.abs().mean(Kind::Float).double_value(&[])
            })
            .sum();
        assert!((ce.double_value(&[]) - want_ce.double_value(&[])).abs() < 1e-5);
        assert!(
            want_l1 > 0.01,
            "a random fashion_cnn has live activations: {want_l1}"
        );
        assert!((l1.double_value(&[]) - want_l1).abs() < 1e-4 * want_l1);
        let (_, cuts) = model.forward_t_with_splits(&xs, false).unwrap();
        assert_eq!(cuts.len(), model.num_blocks() - 1);
        for (i, a) in cuts.iter().enumerate() {
            assert_eq!(a.size()[1..], *model.activation_shape(i + 1).unwrap());
        }
    }

    #[test]
    fn the_sparsity_term_drives_activations_to_zero() {
        // Twenty Adam steps on one batch, with and without the term, from the same start.
        let zeros = |activation_l1: f64| {
            let (model, xs, ys) = batch();
            let vs = model.var_store().unwrap();
            let mut opt = nn::Adam::default().build(vs, 1e-2).unwrap();
            for _ in 0..20 {
                opt.backward_step(&training_loss(&model, &xs, &ys, activation_l1).unwrap());
            }
            let (_, cuts) = model.forward_t_with_splits(&xs, false).unwrap();
            let a = &cuts[0];
            a.eq(0.0)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[])
        };
        let (plain, sparse) = (zeros(0.0), zeros(5.0));
        assert!(
            sparse > plain + 0.2,
            "zero fraction at conv1: {sparse:.3} with the term, {plain:.3} without"
        );
    }
}
