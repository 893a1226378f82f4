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
