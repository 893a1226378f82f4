//! Bad input gets a typed error that names the problem and the fix, never a panic.
mod common;
use common::{assert_clean_failure, dyno};
use std::path::Path;

use dyno::home::Home;
use dyno::model::{torchscript, zoo};
use dyno::{data, Error};
use tch::{Kind, Tensor};

fn zeros(dims: &[i64]) -> Tensor {
    Tensor::zeros(dims, (Kind::Float, tch::Device::Cpu))
}

#[test]
fn unknown_model_names_the_known_ones() {
    let err = zoo::load("mobilenet_v3", &Home::discover()).err().unwrap();
    assert!(matches!(err, Error::UnknownModel { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("mobilenet_v3") && msg.contains("mobilenet_v2, resnet50"),
        "{msg}"
    );
    assert_clean_failure(
        &["models", "check", "mobilenet_v3"],
        &["unknown model `mobilenet_v3`", "manifest.toml"],
    );
}

#[test]
fn missing_weights_name_the_setup_command() {
    let empty = tempfile::tempdir().unwrap();
    let home = Home::at(empty.path());
    for name in ["mobilenet_v2", "fashion_cnn"] {
        let err = zoo::load(name, &home).err().unwrap();
        assert!(matches!(err, Error::WeightsMissing { .. }), "{name}: {err}");
        assert!(err.to_string().contains("scripts/setup.sh"), "{err}");
    }
    let home_arg = empty.path().to_str().unwrap();
    assert_clean_failure(
        &["--home", home_arg, "models", "check", "mobilenet_v2"],
        &["weights for `mobilenet_v2` are missing", "scripts/setup.sh"],
    );
    // Seeded models need no file: they still load.
    assert!(zoo::load("resnet50", &home).is_ok());
}

#[test]
fn tampered_weights_fail_their_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let real = Home::discover().models_dir();
    std::fs::copy(
        real.join("fashion_cnn.safetensors"),
        models.join("fashion_cnn.safetensors"),
    )
    .unwrap();
    std::fs::write(
        models.join("fashion_cnn.safetensors.sha256"),
        "00ff  fashion_cnn.safetensors\n",
    )
    .unwrap();
    let err = zoo::load("fashion_cnn", &Home::at(dir.path()))
        .err()
        .unwrap();
    assert!(matches!(err, Error::WeightsInvalid { .. }), "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");
}

#[test]
fn a_file_that_is_not_an_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("cat_281.jpg");
    std::fs::write(&bogus, b"this is not a JPEG").unwrap();
    let spec = zoo::builtin("mobilenet_v2").unwrap().input;
    let err = data::load_image(&bogus, &spec).err().unwrap();
    assert!(matches!(err, Error::BadImage { .. }), "{err}");
    assert!(err.to_string().contains("cat_281.jpg") && err.to_string().contains("JPEG or PNG"));
    let images = dir.path().to_str().unwrap();
    assert_clean_failure(
        &["models", "check", "fashion_cnn", "--images", images],
        &["cat_281.jpg", "not a readable image"],
    );
    // A folder with no images at all.
    let empty = tempfile::tempdir().unwrap();
    let err = data::list_images(empty.path()).err().unwrap();
    assert!(err.to_string().contains("no .jpg"), "{err}");
}

#[test]
fn wrong_input_shapes_are_refused_before_running() {
    let model = zoo::load("fashion_cnn", &Home::discover()).unwrap();
    let cases = [
        (zeros(&[1, 3, 28, 28]), 0),  // wrong channels
        (zeros(&[1, 28, 28]), 0),     // no batch dimension
        (zeros(&[1, 16, 14, 14]), 1), // an activation of the wrong split
    ];
    for (xs, split) in cases {
        let err = if split == 0 {
            model.head(&xs, 3)
        } else {
            model.tail(&xs, split)
        };
        let err = err.err().unwrap();
        assert!(matches!(err, Error::WrongShape { .. }), "{err}");
        assert!(err.to_string().contains("expected [batch, "), "{err}");
    }
    let err = model
        .forward(&zeros(&[2, 1, 28, 28]).to_kind(Kind::Double))
        .err()
        .unwrap();
    assert!(err.to_string().contains("fp32"), "{err}");
}

#[test]
fn split_out_of_range_names_the_valid_range() {
    let model = zoo::load("fashion_cnn", &Home::discover()).unwrap();
    let err = model.head(&zeros(&[1, 1, 28, 28]), 8).err().unwrap();
    assert!(matches!(
        err,
        Error::SplitOutOfRange {
            split: 8,
            blocks: 7,
            ..
        }
    ));
    assert!(err.to_string().contains("0..=7"), "{err}");
    assert!(model.tail(&zeros(&[1, 10]), 99).is_err());
    assert!(model.activation_shape(8).is_err());
}

#[test]
fn training_options_that_would_not_train_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("w.safetensors");
    let out = out.to_str().unwrap();
    for (l1, shown) in [("-0.5", "got -0.5"), ("nan", "got NaN"), ("inf", "got inf")] {
        assert_clean_failure(
            &[
                "models",
                "train",
                "fashion_cnn",
                "--activation-l1",
                l1,
                "--out",
                out,
            ],
            &["--activation-l1 must be a finite number at least 0", shown],
        );
    }
    assert_clean_failure(
        &[
            "models",
            "train",
            "fashion_cnn",
            "--epochs",
            "0",
            "--out",
            out,
        ],
        &["--epochs must be at least 1"],
    );
    assert!(!Path::new(out).exists(), "a refused run wrote {out}");
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

#[test]
fn malformed_or_incomplete_manifests_are_refused() {
    let home = Home::discover();
    let model = zoo::load("fashion_cnn", &home).unwrap();
    let dir = tempfile::tempdir().unwrap();
    torchscript::export_package(&model, dir.path()).unwrap();
    let good = std::fs::read_to_string(dir.path().join("manifest.toml")).unwrap();
    let load = |text: &str| {
        write(dir.path(), "manifest.toml", text);
        zoo::load(dir.path().to_str().unwrap(), &home)
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(load(&good), None, "the exported manifest loads");
    let cases: Vec<(String, &str)> = vec![
        ("name = \"x\"\n[input\n".into(), "invalid manifest"),
        (
            good.replace("name = \"fashion_cnn\"\n", ""),
            "missing field `name`",
        ),
        (
            format!("colour = \"red\"\n{good}"),
            "unknown field `colour`",
        ),
        (
            good.replace("shape = [1, 28, 28]", "shape = [0, 28, 28]"),
            "input.shape",
        ),
        (
            good.replace("000_conv1.pt", "nowhere.pt"),
            "nowhere.pt, which does not exist",
        ),
        (
            good.replace("001_conv2.pt", "labels.txt"),
            "is not a TorchScript module",
        ),
        (
            good.replace("mean = []", "mean = [0.5, 0.5]"),
            "input.mean has 2 values",
        ),
        (cut_block(&good, "conv2"), "the blocks do not run in order"),
    ];
    for (text, needle) in cases {
        let err = load(&text).unwrap_or_else(|| panic!("accepted: {text}"));
        assert!(err.contains(needle), "`{needle}` not in: {err}");
        assert!(err.contains("manifest.toml"), "names the file: {err}");
    }
    // A folder without a manifest.
    let empty = tempfile::tempdir().unwrap();
    let err = zoo::load(empty.path().to_str().unwrap(), &home)
        .err()
        .unwrap();
    assert!(err.to_string().contains("no manifest.toml"), "{err}");
}

/// Removes one [[blocks]] entry, so the chain of shapes breaks.
fn cut_block(manifest: &str, name: &str) -> String {
    let start = manifest.find(&format!("name = \"{name}\"")).unwrap();
    let entry_start = manifest[..start].rfind("[[blocks]]").unwrap();
    let entry_end = manifest[start..]
        .find("[[blocks]]")
        .map(|i| start + i)
        .unwrap();
    format!("{}{}", &manifest[..entry_start], &manifest[entry_end..])
}

#[test]
fn cli_check_json_has_the_documented_fields() {
    let (ok, out, err) = dyno(&[
        "models",
        "check",
        "fashion_cnn",
        "--json",
        "--timing-runs",
        "1",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in [
        "model",
        "correct",
        "total",
        "predictions",
        "max_split_abs_err",
        "split_points",
    ] {
        assert!(v.get(key).is_some(), "missing `{key}` in {out:.200}");
    }
    assert_eq!(v["total"], 10_000);
    assert_eq!(v["predictions"].as_array().unwrap().len(), 10_000);
    assert!(v["max_split_abs_err"].as_f64().unwrap() <= 1e-4);
}

#[test]
fn a_closed_stdout_ends_an_offline_command_quietly() {
    // `dyno models list | head`: the reader is gone when dyno writes. The offline
    // commands let SIGPIPE end them; before, the write panicked ("failed printing to
    // stdout: Broken pipe"). The read end is closed before dyno has even started.
    use std::io::Read;
    for args in [
        &["models", "list"][..],
        &["experiment", "run", "config/quickstart.toml"][..],
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dyno"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(!stderr.contains("panicked"), "dyno {args:?}: {stderr}");
        assert!(
            !status.success(),
            "dyno {args:?} wrote to a closed pipe and succeeded"
        );
    }
}
