//! The precision-sensitivity profile on real data (a quick run on part of the test set).
mod common;
use common::assert_clean_failure;

use dyno::home::Home;
use dyno::model::zoo;
use dyno::pack::{Clip, Codec, Precision};
use dyno::plot;
use dyno::profile::accuracy::{self, AccuracyOptions, Half};
use dyno::profile::{AccuracyProfile, Metric};

#[test]
fn fashion_cnn_profile_has_every_split_and_precision() {
    let home = Home::discover();
    let model = zoo::load("fashion_cnn", &home).unwrap();
    let inputs = accuracy::default_inputs(&model, &home).unwrap();
    assert_eq!(inputs.metric, Metric::Accuracy);
    let opts = AccuracyOptions {
        limit: Some(300),
        ..AccuracyOptions::default()
    };
    let p = accuracy::profile(&model, &inputs, &opts).unwrap();
    assert_eq!(
        (p.inputs, p.metric, p.splits.len()),
        (300, Metric::Accuracy, 7)
    );
    assert!(p.baseline_accuracy.unwrap() > 0.85);
    for s in &p.splits {
        // The input, a 1-channel picture, may also be sent as a JPEG: the last 4 entries
        // of split 0, by quality, and fewer bytes at lower quality.
        let jpegs = if s.split == 0 { 4 } else { 0 };
        assert_eq!(
            s.entries.len(),
            18 + jpegs,
            "1..=16 bits, fp16, fp32 (and JPEG)"
        );
        let (s_entries, jpeg) = s.entries.split_at(18);
        assert_eq!(
            jpeg.iter().map(|e| e.precision).collect::<Vec<_>>(),
            [50, 75, 90, 95].map(Precision::Jpeg)[..jpegs]
        );
        for w in jpeg.windows(2) {
            assert!(w[0].bytes.none < w[1].bytes.none, "{w:?}");
            assert!(w[0].drop_points >= w[1].drop_points, "{w:?}");
        }
        let fp32 = s_entries.last().unwrap();
        assert_eq!(fp32.precision, Precision::Fp32);
        assert_eq!(
            (fp32.drop_points, fp32.agreement),
            (0.0, 1.0),
            "fp32 changes nothing"
        );
        let b16 = &s.entries[15];
        assert!(
            b16.agreement >= 0.99,
            "16 bits at split {}: {}",
            s.split,
            b16.agreement
        );
        // Fewer bits, fewer bytes (uncompressed: exactly bits/8 per value plus the header).
        for w in s.entries[..16].windows(2) {
            assert!(w[0].bytes.none < w[1].bytes.none);
        }
        // One bit is n/8 bytes of payload (fp32 is 4n) plus a header of 50 to 100 bytes.
        let header = s.entries[0].bytes.none - s.fp32_bytes as f64 / 32.0;
        assert!(
            (50.0..100.0).contains(&header),
            "split {}: header {header}",
            s.split
        );
    }
    // Round trip through the documented file format, then a heat map beside it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.json");
    p.save(&file).unwrap();
    assert_eq!(AccuracyProfile::load(&file).unwrap(), p);
    let png = accuracy::heatmap_path(&file);
    plot::accuracy_heatmap(&p, &png).unwrap();
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let choices = p.choices(1.0);
    assert!(!choices.is_empty());
    assert!(choices
        .iter()
        .all(|c| c.drop_points <= 1.0 && c.reduction > 1.0));
    assert!(choices.iter().any(|c| c.codec != Codec::None));
}

#[test]
fn clipped_ranges_cut_the_one_bit_loss_at_fashion_cnn_conv1() {
    let home = Home::discover();
    let model = zoo::load("fashion_cnn", &home).unwrap();
    let inputs = accuracy::default_inputs(&model, &home).unwrap();
    let run = |clip| {
        let opts = AccuracyOptions {
            limit: Some(300),
            clip,
            ..AccuracyOptions::default()
        };
        accuracy::profile(&model, &inputs, &opts).unwrap()
    };
    let (minmax, mse) = (run(Clip::MinMax), run(Clip::Mse));
    assert_eq!((minmax.clip, mse.clip), (Clip::MinMax, Clip::Mse));
    // Split 1 (after conv1) at 1 bit: min/max ranges lose most of the accuracy (73
    // points on the 10k test images), clipped ones about half as much (38).
    let one_bit = |p: &AccuracyProfile| p.splits[1].entries[0].drop_points;
    eprintln!(
        "1-bit drop at conv1, 300 inputs: min/max {:.2} points, mse {:.2}",
        one_bit(&minmax),
        one_bit(&mse)
    );
    assert!(
        one_bit(&minmax) > 50.0 && one_bit(&mse) < one_bit(&minmax) - 20.0,
        "1-bit drop at conv1: min/max {} points, mse {}",
        one_bit(&minmax),
        one_bit(&mse)
    );
    // The file says which rule it was measured with; a file from before the field was
    // added reads as min/max.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.json");
    mse.save(&file).unwrap();
    assert_eq!(AccuracyProfile::load(&file).unwrap().clip, Clip::Mse);
    let text = std::fs::read_to_string(&file).unwrap();
    let old = text.replace("\"clip\": \"mse\",", "");
    assert_ne!(old, text);
    std::fs::write(&file, old).unwrap();
    assert_eq!(AccuracyProfile::load(&file).unwrap().clip, Clip::MinMax);
}

#[test]
fn mobilenet_v2_profiles_on_one_half_of_the_1000_images_and_holds_out_the_other() {
    let home = Home::discover();
    let model = zoo::load("mobilenet_v2", &home).unwrap();
    let profiling = accuracy::default_inputs(&model, &home).unwrap();
    let held_out = accuracy::sample_inputs(&model, &home, Half::HeldOut).unwrap();
    for inputs in [&profiling, &held_out] {
        assert_eq!(inputs.xs.size(), [500, 3, 224, 224]);
        assert_eq!(inputs.metric, Metric::Accuracy);
    }
    // One image per class: the halves share no class, so no image.
    let classes = |i: &accuracy::ProfileInputs| {
        let mut l = i.labels.clone().unwrap();
        l.sort_unstable();
        l.dedup();
        l
    };
    let (a, b) = (classes(&profiling), classes(&held_out));
    assert_eq!((a.len(), b.len()), (500, 500));
    assert!(a.iter().all(|c| b.binary_search(c).is_err()));
}

#[test]
fn every_entry_has_an_interval_and_each_split_is_monotone_in_precision() {
    let home = Home::discover();
    let model = zoo::load("fashion_cnn", &home).unwrap();
    let inputs = accuracy::default_inputs(&model, &home).unwrap();
    let opts = AccuracyOptions {
        limit: Some(300),
        ..AccuracyOptions::default()
    };
    let p = accuracy::profile(&model, &inputs, &opts).unwrap();
    let mut raised = 0;
    for s in &p.splits {
        for e in &s.entries {
            let [lo, hi] = e.drop_ci95.unwrap();
            assert!(lo <= e.drop_points && e.drop_points <= hi, "{e:?}");
            assert!(hi > lo, "an interval has a width: {e:?}");
            let measured = e.measured_drop_points.unwrap();
            assert!(e.drop_points >= measured);
            raised += usize::from(e.drop_points > measured);
            assert_eq!(e.planning_drop(), hi);
        }
        // From fp32 to 1 bit, and from JPEG quality 95 to 50 (at split 0, the 1-channel
        // input), no drop, lower or upper end ever falls.
        let (bits, jpeg) = s.entries.split_at(18);
        assert_eq!(jpeg.len(), if s.split == 0 { 4 } else { 0 });
        for w in bits.windows(2).chain(jpeg.windows(2)) {
            let (coarse, fine) = (&w[0], &w[1]);
            assert!(coarse.precision < fine.precision);
            assert!(coarse.drop_points >= fine.drop_points, "split {}", s.split);
            let ([cl, ch], [fl, fh]) = (coarse.drop_ci95.unwrap(), fine.drop_ci95.unwrap());
            assert!(cl >= fl && ch >= fh, "split {}", s.split);
        }
    }
    eprintln!("{raised} entries raised to a finer precision's drop");
    // The choices hold the upper end of the interval against the budget.
    for c in p.choices(1.0) {
        assert!(c.drop_ci95.unwrap()[1] <= 1.0, "{c:?}");
    }
}

#[test]
fn a_bad_profile_file_or_argument_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.json");
    std::fs::write(&file, "{\"format\": 1}").unwrap();
    let err = AccuracyProfile::load(&file).unwrap_err().to_string();
    assert!(err.contains("not an accuracy profile"), "{err}");
    let profile = ["profile", "accuracy", "--model", "fashion_cnn"];
    let with = |extra: &[&str], needle: &str| {
        assert_clean_failure(&[&profile[..], extra].concat(), &[needle]);
    };
    with(&["--batch", "0"], "--batch must be at least 1");
    with(&["--clip", "p99"], "use \"minmax\" or \"mse\"");
}

#[test]
fn a_camera_picture_sent_as_jpeg_is_smaller_at_lower_quality_and_close_to_the_input() {
    let home = Home::discover();
    let model = zoo::load("mobilenet_v2", &home).unwrap();
    let spec = model.input();
    let img = &accuracy::Half::Profiling.images(&home).unwrap()[0];
    let exact = dyno::data::load_image(&img.path, spec)
        .unwrap()
        .unsqueeze(0);
    let (values, shape) = dyno::pack::tensor::tensor_values(&exact).unwrap();
    let id = dyno::pack::TensorId {
        model: model.name(),
        weights_hash: model.weights_hash(),
        split: 0,
    };
    let mut last = 0;
    for q in [50, 75, 95] {
        let o = dyno::pack::PackOptions::new(Precision::Jpeg(q), Codec::None);
        let buf = dyno::pack::pack(&values, &shape, &id, &o).unwrap();
        assert!(buf.len() > last, "quality {q}: {} bytes", buf.len());
        assert!(
            buf.len() * 10 < 4 * values.len(),
            "quality {q}: {} bytes",
            buf.len()
        );
        last = buf.len();
        let back = dyno::pack::unpack(&buf, &Default::default())
            .unwrap()
            .values;
        // Mean error in normalised units (one pixel step is about 0.017).
        let err = values
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / values.len() as f32;
        assert!(err < if q == 95 { 0.05 } else { 0.2 }, "quality {q}: {err}");
    }
}

/// A user's own model, end to end as a new user runs it: a TorchScript package of its
/// own name, profiled by the profile commands (`--images`, the flag `models check`
/// takes), then an experiment on the package's folder that finds every profile by the
/// manifest's name, with nothing copied by hand. Until each profile exists the
/// experiment's error names the command that makes it.
#[test]
fn a_users_own_package_is_profiled_and_planned_by_its_manifest_name() {
    let home = Home::discover();
    let name = format!("user_cnn_{}", std::process::id());
    let profiles = home.root().join("out").join("profiles");
    let clean = || {
        for kind in [
            "accuracy.json",
            "accuracy.png",
            "latency.json",
            "latency-1thread.json",
        ] {
            let _ = std::fs::remove_file(profiles.join(format!("{name}.{kind}")));
        }
    };
    clean();
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("my package");
    let pkg_arg = pkg.to_str().unwrap();
    let (ok, _, err) = common::dyno(&["models", "export", "fashion_cnn", "--out", pkg_arg]);
    assert!(ok, "{err}");
    let manifest = pkg.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("name = \"fashion_cnn\"", &format!("name = \"{name}\"")),
    )
    .unwrap();
    // 40 labeled pictures of the user's own, as PNG files named <n>_<class>.png.
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let fm = dyno::data::fashion_mnist(&home.fashion_mnist_dir()).unwrap();
    let labels = Vec::<i64>::try_from(&fm.test_labels.narrow(0, 0, 40)).unwrap();
    for (i, label) in labels.iter().enumerate() {
        let px = (fm.test_images.get(i as i64) * 255.0)
            .round()
            .to_kind(tch::Kind::Uint8);
        tch::vision::image::save(&px, images.join(format!("{i:03}_{label}.png"))).unwrap();
    }
    let images_arg = images.to_str().unwrap();
    let (ok, out, err) = common::dyno(&["models", "check", pkg_arg, "--images", images_arg]);
    assert!(ok && out.contains(&name), "{out}{err}");

    let file = dir.path().join("mine.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\nmodel = \"{pkg_arg}\"\nduration_s = 2.0\n\
             policies = [\"device-only\", \"cloud-only\", \"dyno\"]\n\
             [[devices]]\nclass = \"slow5x\"\nmbps = 10.0\n"
        ),
    )
    .unwrap();
    let exp_out = dir.path().join("results");
    let run = [
        "experiment",
        "run",
        file.to_str().unwrap(),
        "--out",
        exp_out.to_str().unwrap(),
    ];
    let steps: [(&[&str], &str); 3] = [
        (
            &[
                "profile", "accuracy", "--model", pkg_arg, "--images", images_arg,
            ],
            "accuracy",
        ),
        (
            &[
                "profile", "latency", "--model", pkg_arg, "--images", images_arg, "--runs", "1",
            ],
            "latency",
        ),
        (
            &[
                "--threads",
                "1",
                "profile",
                "latency",
                "--model",
                pkg_arg,
                "--images",
                images_arg,
                "--runs",
                "1",
            ],
            "latency-1thread",
        ),
    ];
    for (args, kind) in steps {
        // Missing: the error names the file, what it is for and the command.
        // (The package's folder has a space: the command quotes it.)
        let command = if kind == "latency-1thread" {
            format!("dyno --threads 1 profile latency --model '{pkg_arg}'")
        } else {
            format!("dyno profile {kind} --model '{pkg_arg}'")
        };
        assert_clean_failure(
            &run,
            &[&format!("{name}.{kind}.json"), "there is no", &command],
        );
        let (ok, out, err) = common::dyno(args);
        assert!(ok, "{args:?}: {out}{err}");
        assert!(
            profiles.join(format!("{name}.{kind}.json")).is_file(),
            "{kind}: {out}"
        );
    }
    // The 1-thread run wrote beside the default profile, not over it.
    let two = dyno::profile::latency::LatencyProfile::load(
        &profiles.join(format!("{name}.latency.json")),
    )
    .unwrap();
    let one = dyno::profile::latency::LatencyProfile::load(
        &profiles.join(format!("{name}.latency-1thread.json")),
    )
    .unwrap();
    assert_eq!(one.threads, 1);
    assert_eq!(two.threads, tch::get_num_threads().max(two.threads));
    let (ok, out, err) = common::dyno(&run);
    clean();
    assert!(ok, "{out}{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exp_out.join("summary.json")).unwrap())
            .unwrap();
    let rows = summary["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{summary}");
    assert!(
        rows.iter().all(|r| r["frames"].as_u64().unwrap() > 0),
        "{summary}"
    );
}
