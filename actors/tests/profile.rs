//! The precision-sensitivity profile on real data (a quick run on part of the test set).
mod common;
use common::assert_clean_failure;

use dyno::home::Home;
use dyno::model::zoo;
use dyno::pack::{Clip, Codec, Precision};
use dyno::plot;
use dyno::profile::accuracy::{self, AccuracyOptions};
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
        assert_eq!(s.entries.len(), 18, "1..=16 bits, fp16, fp32");
        let fp32 = s.entries.last().unwrap();
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
fn mobilenet_v2_profile_inputs_are_200_views_of_the_20_images() {
    let home = Home::discover();
    let model = zoo::load("mobilenet_v2", &home).unwrap();
    let inputs = accuracy::default_inputs(&model, &home).unwrap();
    assert_eq!(inputs.xs.size(), [200, 3, 224, 224]);
    assert_eq!(inputs.metric, Metric::Agreement);
    assert_eq!(inputs.labels.as_ref().unwrap().len(), 200);
    // The views differ from one another.
    let first = inputs.xs.get(0);
    for v in 1..10 {
        let d = (&first - inputs.xs.get(v)).abs().max().double_value(&[]);
        assert!(d > 0.01, "view {v} equals view 0");
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
