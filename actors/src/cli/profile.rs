//! `dyno profile accuracy` and `dyno profile latency`.
use serde::Serialize;

use super::{print_json, AccuracyArgs, HeldoutArgs, JpegArgs, LatencyArgs};
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
    let inputs = match a.images {
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
    let inputs = match a.images {
        Some(dir) => check::image_inputs(&model, dir)?,
        None => check::default_inputs(&model, home)?,
    };
    anyhow::ensure!(
        inputs.xs.size()[0] >= 1,
        "no input to time {} on; give an image folder with --images DIR",
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

/// One plan DynO picked, checked on the held-out half.
#[derive(Serialize)]
struct HeldoutRow {
    model: String,
    split: usize,
    precision: String,
    /// Where it was picked: `file@Mbit/s`, one per run point.
    picked_in: Vec<String>,
    /// The tightest accuracy budget among those files' SLOs, points.
    budget_points: f64,
    /// The profile's drop and interval (profiling half).
    profile_drop: f64,
    profile_ci95: Option<[f64; 2]>,
    /// `accuracy` or `agreement`, as the profile.
    metric: dyno::profile::Metric,
    /// Measured on the held-out half.
    heldout_drop: f64,
    heldout_ci95: [f64; 2],
    heldout_inputs: usize,
    within_budget: bool,
}

/// `dyno profile heldout`: every (split, precision) DynO's policies pick in the files,
/// simulated, measured on the held-out half of the 1,000-image sample.
pub fn heldout(home: &Home, a: HeldoutArgs) -> anyhow::Result<()> {
    use dyno::experiment::{self, Experiment};
    use dyno::profile::accuracy::Half;
    use dyno::sched::slo::Slo;
    use std::collections::BTreeMap;

    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1, got {}", a.batch);
    let files = if a.files.is_empty() {
        let dir = home.root().join("config");
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("paper-") && n.ends_with(".toml"))
            })
            .collect();
        v.sort();
        v
    } else {
        a.files.clone()
    };
    // (model, split, precision) -> (where, budget)
    let mut plans: BTreeMap<(String, u16, Precision), (Vec<String>, f64)> = BTreeMap::new();
    for f in &files {
        let e = Experiment::load(f).map_err(anyhow::Error::msg)?;
        let budget = match &e.slo {
            Some(p) => {
                Slo::load(&home.root().join(p))?
                    .constraints
                    .max_accuracy_drop
            }
            None => None,
        }
        .unwrap_or(f64::INFINITY);
        let blocks = zoo::load(&e.model, home)?.num_blocks();
        let out = experiment::simulate(&e, home, false)?;
        let stem = f
            .file_stem()
            .map_or("?".into(), |s| s.to_string_lossy().into_owned());
        for (policy, mbps, fr) in &out.frames {
            if !policy.starts_with("dyno") || fr.split as usize >= blocks {
                continue;
            }
            let precision: Precision = fr.precision.parse()?;
            let entry = plans
                .entry((e.model.clone(), fr.split, precision))
                .or_insert_with(|| (Vec::new(), f64::INFINITY));
            let at = format!("{stem}@{}", mbps.map_or("trace".into(), |m| format!("{m}")));
            if !entry.0.contains(&at) {
                entry.0.push(at);
            }
            entry.1 = entry.1.min(budget);
        }
    }
    let opts = AccuracyOptions {
        batch: a.batch,
        ..AccuracyOptions::default()
    };
    let mut rows = Vec::new();
    let mut models: Vec<String> = plans.keys().map(|k| k.0.clone()).collect();
    models.dedup();
    for name in models {
        let model = zoo::load(&name, home)?;
        let profile = AccuracyProfile::load(&dyno::profile::find(home, &name, "accuracy"))?;
        // Measured as the profile was: accuracy against the labels, or agreement with
        // the unpacked model (a model with seeded random weights, such as resnet50).
        let mut inputs = accuracy::sample_inputs(&model, home, Half::HeldOut)?;
        inputs.metric = profile.metric;
        let mut by_split: BTreeMap<u16, Vec<Precision>> = BTreeMap::new();
        for (m, split, p) in plans.keys() {
            if *m == name {
                by_split.entry(*split).or_default().push(*p);
            }
        }
        for (split, precisions) in by_split {
            if !a.json {
                eprintln!(
                    "{name}: split {split}, {} precision(s) on the held-out half",
                    precisions.len()
                );
            }
            let measured = accuracy::measure(&model, &inputs, &opts, split as usize, &precisions)?;
            for e in measured {
                let (picked_in, budget) = plans[&(name.clone(), split, e.precision)].clone();
                let in_profile = profile
                    .splits
                    .iter()
                    .find(|s| s.split == split as usize)
                    .and_then(|s| s.entries.iter().find(|x| x.precision == e.precision));
                let ci = e.drop_ci95.expect("measured with an interval");
                rows.push(HeldoutRow {
                    model: name.clone(),
                    split: split as usize,
                    precision: e.precision.to_string(),
                    picked_in,
                    budget_points: budget,
                    metric: inputs.metric,
                    profile_drop: in_profile.map_or(f64::NAN, |x| x.drop_points),
                    profile_ci95: in_profile.and_then(|x| x.drop_ci95),
                    heldout_drop: e.drop_points,
                    heldout_ci95: ci,
                    heldout_inputs: inputs.xs.size()[0] as usize,
                    within_budget: e.drop_points <= budget,
                });
            }
        }
    }
    if a.json {
        return print_json(&rows);
    }
    println!(
        "{:<13} {:>9} {:>5} {:>5} {:>22} {:>24} {:>7}  picked in",
        "model",
        "metric",
        "split",
        "bits",
        "profile drop [95% CI]",
        "held-out drop [95% CI]",
        "budget"
    );
    let ci = |c: Option<[f64; 2]>| c.map_or("-".into(), |[l, h]| format!("[{l:.2}, {h:.2}]"));
    for r in &rows {
        println!(
            "{:<13} {:>9} {:>5} {:>5} {:>7.2} {:>14} {:>7.2} {:>16} {:>7.2}  {}{}",
            r.model,
            format!("{:?}", r.metric).to_lowercase(),
            r.split,
            r.precision,
            r.profile_drop,
            ci(r.profile_ci95),
            r.heldout_drop,
            ci(Some(r.heldout_ci95)),
            r.budget_points,
            r.picked_in.join(" "),
            if r.within_budget {
                ""
            } else {
                "  **over budget**"
            }
        );
    }
    let misses = rows.iter().filter(|r| !r.within_budget).count();
    println!(
        "\n{} plan(s) checked on {} held-out images; {misses} over their budget",
        rows.len(),
        rows.first().map_or(0, |r| r.heldout_inputs)
    );
    Ok(())
}

#[derive(Serialize)]
struct JpegReport<'a> {
    accuracy: String,
    entries: &'a [dyno::profile::Entry],
    latency: Vec<(String, Vec<latency::CodecLatency>)>,
}

/// `dyno profile jpeg`: the JPEG qualities of split 0 added to a model's profiles. Each
/// profile is written to `out/profiles/` under its own file name.
pub fn jpeg(home: &Home, a: JpegArgs) -> anyhow::Result<()> {
    use dyno::profile::{find, jpeg};

    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1, got {}", a.batch);
    if let Some(q) = a.quality.iter().find(|q| !(1..=100).contains(*q)) {
        anyhow::bail!("--quality {q}: a JPEG quality is 1 to 100, e.g. --quality 50,75,90");
    }
    let model = zoo::load(&a.model, home)?;
    let out_dir = dyno::profile::out_dir(home);
    let written = |from: &std::path::Path| {
        out_dir.join(
            from.file_name()
                .unwrap_or(std::ffi::OsStr::new("profile.json")),
        )
    };

    let acc_path = a
        .accuracy
        .unwrap_or_else(|| find(home, model.name(), "accuracy"));
    let mut profile = AccuracyProfile::load(&acc_path)?;
    let inputs = accuracy::default_inputs(&model, home)?;
    let opts = AccuracyOptions {
        batch: a.batch,
        ..AccuracyOptions::default()
    };
    let entries = jpeg::add_to_accuracy(
        &model,
        &inputs,
        &opts,
        (&mut profile, &acc_path),
        &a.quality,
    )?;
    let acc_out = written(&acc_path);
    profile.save(&acc_out)?;
    plot::accuracy_heatmap(&profile, &accuracy::heatmap_path(&acc_out))?;

    let latency_paths = if a.latency.is_empty() {
        ["latency", "latency-1thread"]
            .map(|kind| find(home, model.name(), kind))
            .into_iter()
            .filter(|p| p.exists())
            .collect()
    } else {
        a.latency
    };
    let check = check::default_inputs(&model, home)?;
    let x = check.xs.narrow(0, 0, 1);
    let mut timed = Vec::new();
    for path in &latency_paths {
        let mut lp = LatencyProfile::load(path)?;
        let rows = jpeg::add_to_latency(&model, &x, (&mut lp, path), &a.quality)?;
        let out = written(path);
        lp.save(&out)?;
        timed.push((out.display().to_string(), rows));
    }
    if a.json {
        return print_json(&JpegReport {
            accuracy: acc_out.display().to_string(),
            entries: &entries,
            latency: timed,
        });
    }
    let fp32 = 4 * model.input().shape.iter().product::<i64>();
    println!(
        "model:    {} (weights {})",
        profile.model, profile.weights_hash
    );
    println!("data:     {} inputs of {}", profile.inputs, profile.data);
    println!(
        "\n{:>8}  {:>9}  {:>8}  {:>6}  {:>16}  {:>7}  {:>9}",
        "quality", "bytes", "vs fp32", "drop", "95% interval", "pack ms", "unpack ms"
    );
    for e in &entries {
        let t = timed
            .first()
            .and_then(|(_, rows)| rows.iter().find(|r| r.precision == e.precision));
        let ms = |f: fn(&latency::CodecLatency) -> f64| {
            t.map_or("-".to_string(), |r| format!("{:.2}", 1e3 * f(r)))
        };
        let [lo, hi] = e.drop_ci95.unwrap_or([f64::NAN; 2]);
        println!(
            "{:>8}  {:>9.0}  {:>7.1}x  {:>6.2}  [{:>6.2}, {:>5.2}]  {:>7}  {:>9}",
            e.precision.to_string(),
            e.bytes.none,
            fp32 as f64 / e.bytes.none,
            e.drop_points,
            lo,
            hi,
            ms(|r| r.pack_s),
            ms(|r| r.unpack_s)
        );
    }
    println!("\nwrote {}", acc_out.display());
    for (out, _) in &timed {
        println!("wrote {out}");
    }
    Ok(())
}
