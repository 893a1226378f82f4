//! `dyno profile accuracy` and `dyno profile latency`.
use serde::Serialize;

use super::{print_json, AccuracyArgs, LatencyArgs};
use dyno::check;
use dyno::home::Home;
use dyno::model::zoo;
use dyno::pack::{Codec, Granularity, Precision};
use dyno::plot;
use dyno::profile::accuracy::{self, AccuracyOptions};
use dyno::profile::latency::{self, LatencyOptions, LatencyProfile};
use dyno::profile::{AccuracyProfile, SplitChoice};

#[derive(Serialize)]
struct Report<'a> {
    out: String,
    heatmap: String,
    budget_points: f64,
    /// Per split, the fewest bits within the budget, and the bytes saved there.
    choices: Vec<SplitChoice>,
    /// The largest fp32-to-packed reduction among the choices.
    max_reduction: Option<&'a SplitChoice>,
    profile: &'a AccuracyProfile,
}

pub fn accuracy(home: &Home, a: AccuracyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1, got {}", a.batch);
    anyhow::ensure!(
        a.budget.is_finite() && a.budget >= 0.0,
        "--budget must be a number of points >= 0, got {}",
        a.budget
    );
    let model = zoo::load(&a.model, home)?;
    let inputs = match a.data {
        Some(dir) => accuracy::folder_inputs(&model, dir)?,
        None => accuracy::default_inputs(&model, home)?,
    };
    let opts = AccuracyOptions {
        limit: a.limit,
        batch: a.batch,
        granularity: if a.per_channel {
            Granularity::PerChannel
        } else {
            Granularity::PerTensor
        },
        clip: a.clip,
        progress: !a.json,
    };
    let profile = accuracy::profile(&model, &inputs, &opts)?;
    let out = a
        .out
        .unwrap_or_else(|| accuracy::default_out(home, model.name(), &opts));
    profile.save(&out)?;
    let heatmap = accuracy::heatmap_path(&out);
    plot::accuracy_heatmap(&profile, &heatmap)?;
    let choices = profile.choices(a.budget);
    let max_reduction = choices
        .iter()
        .max_by(|x, y| x.reduction.total_cmp(&y.reduction));
    if a.json {
        return print_json(&Report {
            out: out.display().to_string(),
            heatmap: heatmap.display().to_string(),
            budget_points: a.budget,
            max_reduction,
            choices: choices.clone(),
            profile: &profile,
        });
    }
    println!(
        "model:    {} (weights {})",
        profile.model, profile.weights_hash
    );
    println!("data:     {} inputs of {}", profile.inputs, profile.data);
    if let Some(b) = profile.baseline_accuracy {
        println!("fp32:     top-1 accuracy {:.2} %", 100.0 * b);
    }
    println!(
        "metric:   drop in {:?} (points); budget {} point(s)",
        profile.metric, a.budget
    );
    println!("ranges:   {}, {}", profile.clip, profile.granularity);
    println!(
        "\n{:>5}  {:>12}  {:>8}  {:>8}  {:>5}  {:>12}  {:>9}",
        "split", "fp32 bytes", "min bits", "drop", "codec", "packed bytes", "reduction"
    );
    for c in &choices {
        println!(
            "{:>5}  {:>12}  {:>8}  {:>8.2}  {:>5}  {:>12.0}  {:>8.1}x",
            c.split,
            c.fp32_bytes,
            c.min_bits.map_or("fp16+".to_string(), |b| b.to_string()),
            c.drop_points,
            c.codec,
            c.bytes,
            c.reduction
        );
    }
    if let Some(m) = max_reduction {
        println!(
            "\nlargest reduction within {} point(s): split {} at {} bits with {}: {:.0} bytes, {:.1}x less than fp32",
            a.budget,
            m.split,
            m.min_bits.map_or("fp16".into(), |b| b.to_string()),
            m.codec,
            m.bytes,
            m.reduction
        );
    }
    println!("\nwrote {} and {}", out.display(), heatmap.display());
    Ok(())
}

#[derive(Serialize)]
struct LatencyReport<'a> {
    out: String,
    total_ms: f64,
    profile: &'a LatencyProfile,
}

pub fn latency(home: &Home, a: LatencyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.runs >= 1, "--runs must be at least 1, got {}", a.runs);
    let model = zoo::load(&a.model, home)?;
    let inputs = match a.data {
        Some(dir) => check::image_inputs(&model, dir)?,
        None => check::default_inputs(&model, home)?,
    };
    anyhow::ensure!(
        inputs.xs.size()[0] >= 1,
        "no input to time {} on; give an image folder with --data DIR",
        model.name()
    );
    let x = inputs.xs.narrow(0, 0, 1);
    anyhow::ensure!(
        a.batch.iter().all(|&b| (1..=256).contains(&b)),
        "--batch {:?}: give batch sizes from 1 to 256, e.g. --batch 1,2,4,8",
        a.batch
    );
    let mut batches = a.batch.clone();
    if !batches.is_empty() && !batches.contains(&1) {
        // Batch 1 is what every other size is judged against.
        batches.insert(0, 1);
    }
    batches.sort_unstable();
    batches.dedup();
    let opts = LatencyOptions {
        runs: a.runs,
        progress: !a.json,
        batches,
        ..LatencyOptions::default()
    };
    let what = format!("the first input of {}", inputs.description);
    let profile = latency::measure(&model, &x, &what, &opts)?;
    let out = a
        .out
        .unwrap_or_else(|| latency::default_out(home, model.name()));
    profile.save(&out)?;
    if a.json {
        return print_json(&LatencyReport {
            out: out.display().to_string(),
            total_ms: profile.total_seconds() * 1e3,
            profile: &profile,
        });
    }
    println!(
        "model:    {} (weights {}), {} libtorch thread(s), median of {} runs",
        profile.model, profile.weights_hash, profile.threads, profile.runs
    );
    println!("input:    {}", profile.input);
    println!(
        "\n{:>5}  {:<16}  {:>10}  {:>14}  {:>14}  {:>10}",
        "split", "block", "block ms", "pack ms 8/lz4", "unpack ms", "bytes"
    );
    for (i, b) in profile.blocks.iter().enumerate() {
        let c = profile
            .codecs
            .iter()
            .find(|c| c.split == i && c.precision == Precision::Bits(8) && c.codec == Codec::Lz4);
        println!(
            "{:>5}  {:<16}  {:>10.3}  {:>14}  {:>14}  {:>10}",
            i,
            b.name,
            b.seconds * 1e3,
            c.map_or("-".into(), |c| format!("{:.3}", c.pack_s * 1e3)),
            c.map_or("-".into(), |c| format!("{:.3}", c.unpack_s * 1e3)),
            c.map_or("-".into(), |c| c.bytes.to_string()),
        );
    }
    if !profile.batches.is_empty() {
        let sizes: Vec<usize> = profile.batch_curve(0).iter().map(|x| x.0).collect();
        println!("\ntail ms per image by batch size (batched up to: the largest that saves 15 %)");
        print!("{:>5}", "split");
        for b in &sizes {
            print!("  {:>9}", format!("b={b}"));
        }
        println!("  {:>8}", "batch to");
        for split in 0..profile.blocks.len() {
            let curve = profile.batch_curve(split);
            print!("{split:>5}");
            for (b, t) in &curve {
                print!("  {:>9.3}", t * 1e3 / *b as f64);
            }
            println!("  {:>8}", profile.batch_limit(split, usize::MAX));
        }
    }
    println!(
        "\nwhole model: {:.2} ms; wrote {}",
        profile.total_seconds() * 1e3,
        out.display()
    );
    Ok(())
}
