//! `dyno models list|check|export|train`.
use anyhow::Context;
use serde::Serialize;

use super::{print_json, CheckArgs, ExportArgs, ListArgs, TrainArgs};
use dyno::check::{self, CheckOptions};
use dyno::error::Error;
use dyno::home::{Home, SETUP_COMMAND};
use dyno::model::{torchscript, zoo, SplitPoint};
use dyno::train::{self, TrainOptions};

#[derive(Debug, Serialize)]
struct Listing {
    name: String,
    description: String,
    input: Vec<i64>,
    blocks: Vec<String>,
    split_points: Vec<SplitPoint>,
    params: u64,
    weights: String,
    /// False for seeded weights: accuracy figures of such a model mean nothing.
    weights_meaningful: bool,
}

pub fn list(home: &Home, args: ListArgs) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for name in zoo::BUILTINS {
        let info = zoo::builtin(name).expect("BUILTINS are built in");
        let (model, weights) = match zoo::build(name, home, zoo::Init::Default) {
            Ok(m) => {
                let w = m.weights().to_string();
                (m, w)
            }
            Err(Error::WeightsMissing { path, .. }) => (
                zoo::build(name, home, zoo::Init::Random(zoo::SEED))?,
                format!(
                    "missing ({} not found; run {SETUP_COMMAND})",
                    path.display()
                ),
            ),
            Err(e) => return Err(e.into()),
        };
        out.push(Listing {
            name: name.to_string(),
            description: info.description.to_string(),
            input: info.input.shape.to_vec(),
            blocks: model.block_names().map(str::to_string).collect(),
            split_points: model.split_points()?,
            params: model.param_count(),
            weights_meaningful: model.weights().is_meaningful(),
            weights,
        });
    }
    if args.json {
        return print_json(&out);
    }
    for m in &out {
        println!(
            "{}: {}, input {}, {} blocks, split points 0..={}, {:.2} M parameters\n  weights: {}",
            m.name,
            m.description,
            dims(&m.input),
            m.blocks.len(),
            m.blocks.len(),
            m.params as f64 / 1e6,
            m.weights
        );
        println!(
            "  {:>5}  {:<16} {:<16} {:>12}",
            "split", "after block", "activation", "fp32 bytes"
        );
        for s in &m.split_points {
            println!(
                "  {:>5}  {:<16} {:<16} {:>12}",
                s.index,
                s.after_block.as_deref().unwrap_or("(input)"),
                dims(&s.shape),
                s.fp32_bytes
            );
        }
        println!();
    }
    Ok(())
}

pub fn check(home: &Home, args: CheckArgs) -> anyhow::Result<()> {
    let model = zoo::load(&args.model, home)?;
    let opts = CheckOptions {
        images: args.images,
        timing_runs: args.timing_runs,
    };
    let report = check::check(&model, home, &opts)?;
    if args.json {
        return print_json(&report);
    }
    println!("model:    {}", report.model);
    println!("weights:  {}", report.weights);
    println!("data:     {}", report.data);
    match report.accuracy {
        Some(a) => println!(
            "correct:  {}/{} ({:.2} %){}",
            report.correct,
            report.total,
            100.0 * a,
            if model.weights().is_meaningful() {
                ""
            } else {
                " -- seeded random weights: this accuracy means nothing"
            }
        ),
        None => println!("correct:  no labeled inputs"),
    }
    if report.predictions.len() <= 50 {
        let p: Vec<String> = report.predictions.iter().map(i64::to_string).collect();
        println!("top-1:    {}", p.join(" "));
    }
    println!(
        "split:    head then tail equals the full forward at all {} split points; largest |difference| {:.3e}",
        report.split_points.len(),
        report.max_split_abs_err
    );
    if let Some(r) = report.reference_max_abs_err {
        println!("reference: largest |difference| from tch::vision::mobilenet::v2 with the same weights {r:.3e}");
    }
    println!(
        "per-block time (median of {}, one input):",
        opts.timing_runs
    );
    let total: f64 = report.block_ms.iter().map(|b| b.ms).sum();
    for b in &report.block_ms {
        println!("  {:<16} {:>9.3} ms", b.block, b.ms);
    }
    println!("  {:<16} {:>9.3} ms", "total", total);
    Ok(())
}

pub fn export(home: &Home, args: ExportArgs) -> anyhow::Result<()> {
    let model = zoo::load(&args.model, home)?;
    let manifest = torchscript::export_package(&model, &args.out)?;
    if args.json {
        return print_json(&serde_json::json!({
            "model": model.name(),
            "manifest": manifest.display().to_string(),
            "blocks": model.num_blocks(),
        }));
    }
    println!(
        "wrote {} ({} blocks as TorchScript); load it with `dyno models check {}`",
        manifest.display(),
        model.num_blocks(),
        args.out.display()
    );
    Ok(())
}

pub fn train(home: &Home, args: TrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.model == "fashion_cnn",
        "only fashion_cnn can be trained by dyno, got `{}`",
        args.model
    );
    anyhow::ensure!(
        args.epochs >= 1,
        "--epochs must be at least 1, got {}",
        args.epochs
    );
    anyhow::ensure!(
        args.batch >= 1,
        "--batch must be at least 1, got {}",
        args.batch
    );
    anyhow::ensure!(
        args.activation_l1.is_finite() && args.activation_l1 >= 0.0,
        "--activation-l1 must be a finite number at least 0 (0 turns the sparsity term off), got {}",
        args.activation_l1
    );
    let out = args
        .out
        .unwrap_or_else(|| home.models_dir().join("fashion_cnn.safetensors"));
    let opts = TrainOptions {
        epochs: args.epochs,
        batch: args.batch,
        learning_rate: args.learning_rate,
        seed: args.seed,
        activation_l1: args.activation_l1,
        out: out.clone(),
        progress: !args.json,
    };
    let reports = train::train_fashion_cnn(home, &opts).context("training fashion_cnn")?;
    if args.json {
        return print_json(&reports);
    }
    let last = reports.last().expect("at least one epoch");
    println!(
        "wrote {} (and .sha256): test accuracy {:.4} after {} epochs",
        out.display(),
        last.test_accuracy,
        last.epoch
    );
    Ok(())
}

fn dims(shape: &[i64]) -> String {
    shape
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join("x")
}
