//! The built-in models on real data: accuracy, split exactness, TorchScript packages.
use dyno::check::{self, max_abs_diff, split_errors, CheckOptions};
use dyno::home::Home;
use dyno::model::{torchscript, zoo, Model};
use tch::{Kind, Tensor};

/// Top-1 of torchvision's MobileNetV2 on the 20 images with PyTorch's reference
/// preprocessing (PIL resize to 256, centre crop 224): the figures in FACTS.md.
const PYTORCH_TOP1: [i64; 20] = [
    243, 559, 438, 990, 949, 853, 609, 511, 915, 455, 541, 630, 741, 471, 127, 99, 251, 22, 317,
    305,
];

fn home() -> Home {
    Home::discover()
}

/// A deterministic input of the model's shape that does not touch libtorch's global
/// random generator (tests run on parallel threads; seeded builds use that generator).
fn random_input(model: &Model, batch: i64) -> Tensor {
    let mut dims = vec![batch];
    dims.extend_from_slice(&model.input().shape);
    let n: i64 = dims.iter().product();
    (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.7311)
        .sin()
        .view(dims.as_slice())
}

#[test]
fn mobilenet_v2_classifies_the_real_imagenet_images() {
    let home = home();
    let model = zoo::load("mobilenet_v2", &home).unwrap();
    let opts = CheckOptions {
        images: None,
        timing_runs: 1,
    };
    let r = check::check(&model, &home, &opts).unwrap();
    assert_eq!(r.total, 20);
    assert!(r.correct >= 17, "only {}/20 correct", r.correct);
    let agree = r
        .predictions
        .iter()
        .zip(PYTORCH_TOP1)
        .filter(|(a, b)| **a == *b)
        .count();
    assert!(
        agree >= 19,
        "agrees with PyTorch on {agree}/20: {:?}",
        r.predictions
    );
    assert!(
        r.max_split_abs_err <= 1e-4,
        "split error {}",
        r.max_split_abs_err
    );
    assert_eq!(r.split_abs_err.len(), 21);
    let reference = r.reference_max_abs_err.unwrap();
    assert!(
        reference <= 1e-4,
        "differs from tch::vision::mobilenet::v2 by {reference}"
    );
    assert_eq!(r.block_ms.len(), 20);
    assert!(r.block_ms.iter().all(|b| b.ms > 0.0));
}

#[test]
fn every_builtin_model_splits_exactly_at_every_split_point() {
    let home = home();
    for name in zoo::BUILTINS {
        let model = zoo::load(name, &home).unwrap();
        let xs = random_input(&model, 2);
        let errs = split_errors(&model, &xs).unwrap();
        assert_eq!(errs.len(), model.num_blocks() + 1, "{name}");
        let worst = errs.iter().copied().fold(0.0, f64::max);
        assert!(worst <= 1e-4, "{name}: split error {worst}");
        // The shape at each split is what the head really produces.
        for sp in model.split_points().unwrap() {
            let a = model.head(&xs, sp.index).unwrap();
            assert_eq!(
                &a.size()[1..],
                sp.shape.as_slice(),
                "{name} split {}",
                sp.index
            );
            assert_eq!(sp.fp32_bytes as i64, 4 * a.numel() as i64 / 2);
        }
    }
}

#[test]
fn split_point_counts_and_sizes_match_the_architectures() {
    let home = home();
    let expect = [
        ("mobilenet_v2", 20, vec![1280, 7, 7]),
        ("resnet50", 18, vec![2048, 7, 7]),
        ("vgg16", 8, vec![4096]),
        ("inception_v3", 13, vec![2048, 8, 8]),
        ("fashion_cnn", 7, vec![128]),
    ];
    for (name, blocks, before_last) in expect {
        let model = zoo::load(name, &home).unwrap();
        assert_eq!(model.num_blocks(), blocks, "{name}");
        assert!(
            model.num_blocks() > 6,
            "{name}: fewer than 6 interior split points"
        );
        assert_eq!(
            model.activation_shape(blocks - 1).unwrap(),
            before_last.as_slice(),
            "{name}"
        );
        let classes = if name == "fashion_cnn" { 10 } else { 1000 };
        assert_eq!(
            model.activation_shape(blocks).unwrap(),
            &[classes],
            "{name}"
        );
    }
}

#[test]
fn fashion_cnn_reaches_90_percent_on_the_official_test_set() {
    let home = home();
    let model = zoo::load("fashion_cnn", &home).unwrap();
    let inputs = check::default_inputs(&model, &home).unwrap();
    assert_eq!(inputs.labels.len(), 10_000);
    let preds = check::predict(&model, &inputs.xs, 1000).unwrap();
    let correct = preds
        .iter()
        .zip(&inputs.labels)
        .filter(|(p, l)| p == l)
        .count();
    let acc = correct as f64 / 10_000.0;
    assert!(acc >= 0.90, "fashion_cnn test accuracy {acc}");
}

/// Traces a built-in model into a TorchScript package, loads it back, compares.
fn torchscript_round_trip(name: &str) {
    let home = home();
    let model = zoo::load(name, &home).unwrap();
    let dir = tempfile::tempdir().unwrap();
    torchscript::export_package(&model, dir.path()).unwrap();
    let loaded = zoo::load(dir.path().to_str().unwrap(), &home).unwrap();
    assert_eq!(loaded.name(), name);
    assert_eq!(loaded.num_blocks(), model.num_blocks());
    assert_eq!(loaded.input(), model.input());
    assert_eq!(loaded.param_count(), model.param_count());
    assert_eq!(
        loaded.split_points().unwrap(),
        model.split_points().unwrap()
    );
    assert_eq!(loaded.labels(), model.labels());
    // A batch of 3 although tracing saw a batch of 1: nothing is baked in.
    let xs = random_input(&model, 3);
    let diff = max_abs_diff(&loaded.forward(&xs).unwrap(), &model.forward(&xs).unwrap());
    assert!(diff <= 1e-6, "{name}: TorchScript output differs by {diff}");
    // And the package splits like the built-in: the head of one feeds the tail of the other.
    for s in 0..=model.num_blocks() {
        let a = loaded.head(&xs, s).unwrap();
        let y = model.tail(&a, s).unwrap();
        assert!(
            max_abs_diff(&y, &model.forward(&xs).unwrap()) <= 1e-6,
            "{name} split {s}"
        );
    }
}

#[test]
fn fashion_cnn_survives_a_torchscript_round_trip() {
    torchscript_round_trip("fashion_cnn");
}

#[test]
fn mobilenet_v2_survives_a_torchscript_round_trip() {
    torchscript_round_trip("mobilenet_v2");
}

#[test]
fn seeded_models_are_the_same_on_every_build() {
    let home = home();
    let a = zoo::load("resnet50", &home).unwrap();
    let b = zoo::load("resnet50", &home).unwrap();
    let xs = random_input(&a, 1);
    assert_eq!(
        max_abs_diff(&a.forward(&xs).unwrap(), &b.forward(&xs).unwrap()),
        0.0
    );
}
