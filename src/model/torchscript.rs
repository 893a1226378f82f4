//! User models as TorchScript packages.
//!
//! A package is a folder with a `manifest.toml` and one TorchScript module per block:
//!
//! ```toml
//! name = "my_model"
//! labels = "labels.txt"          # optional: one class name per line
//! params = 3504872               # optional: parameter count, when the blocks hold
//!                                # their weights as constants (traced from frozen ones)
//!
//! [input]
//! shape = [3, 224, 224]          # channels, height, width of one input
//! resize = 256                   # optional: short side before the centre crop
//! mean = [0.485, 0.456, 0.406]   # optional, one per channel
//! std = [0.229, 0.224, 0.225]    # optional, one per channel
//!
//! [[blocks]]
//! name = "stem"
//! file = "000_stem.pt"
//! ```
//!
//! Each block takes exactly one tensor and returns exactly one tensor; the blocks run in
//! the listed order. `dyno models export` writes a built-in model in this format, and
//! `models/export_torchscript.py` does it for a PyTorch model.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{CModule, Kind, Tensor};

use super::{Block, InputSpec, Model, NamedBlock, WeightSource};
use crate::error::{Error, Result};

/// The parsed `manifest.toml` of a package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// Parameter count, for modules that hold their weights as constants (blocks traced
    /// from frozen weights, as `dyno models export` writes them); absent: counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<u64>,
    pub input: InputSpec,
    pub blocks: Vec<BlockEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockEntry {
    pub name: String,
    pub file: String,
}

/// A block run by libtorch's TorchScript interpreter.
struct ScriptBlock(CModule);

impl Block for ScriptBlock {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor, tch::TchError> {
        self.0.forward_ts(&[xs])
    }
}

impl Manifest {
    /// Reads and validates `dir/manifest.toml`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Manifest::parse(&text, &path)
    }

    /// Parses and validates a manifest; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let bad = |reason: String| Error::Manifest {
            path: path.to_path_buf(),
            reason,
        };
        let m: Manifest =
            toml::from_str(text).map_err(|e| bad(format!("invalid manifest: {e}")))?;
        if m.name.trim().is_empty() {
            return Err(bad("`name` is empty; give the model a name".into()));
        }
        if m.blocks.is_empty() {
            return Err(bad(
                "`blocks` is empty; list at least one [[blocks]] entry with name and file".into(),
            ));
        }
        let [c, h, w] = m.input.shape;
        if c < 1 || h < 1 || w < 1 {
            return Err(bad(format!(
                "input.shape must be three positive numbers [channels, height, width], got {:?}",
                m.input.shape
            )));
        }
        for (key, v) in [("mean", &m.input.mean), ("std", &m.input.std)] {
            if !v.is_empty() && v.len() as i64 != c {
                return Err(bad(format!(
                    "input.{key} has {} values but the input has {c} channels; give one per channel or none",
                    v.len()
                )));
            }
        }
        if m.input.std.iter().any(|s| !(*s > 0.0 && s.is_finite())) {
            return Err(bad(format!(
                "input.std must be positive, got {:?}",
                m.input.std
            )));
        }
        if let Some(r) = m.input.resize {
            if r < h.max(w) {
                return Err(bad(format!(
                    "input.resize ({r}) is smaller than the crop ({h}x{w}); it must be at least {}",
                    h.max(w)
                )));
            }
        }
        Ok(m)
    }
}

/// Loads a package folder as a [`Model`].
pub fn load_package(dir: &Path) -> Result<Model> {
    let manifest_path = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
    let m = Manifest::parse(&text, &manifest_path)?;
    let bad = |reason: String| Error::Manifest {
        path: manifest_path.clone(),
        reason,
    };
    let mut blocks = Vec::with_capacity(m.blocks.len());
    let mut params = 0u64;
    let mut hashed = text.clone().into_bytes();
    for entry in &m.blocks {
        let file = dir.join(&entry.file);
        if !file.is_file() {
            return Err(bad(format!(
                "block `{}` names file {}, which does not exist",
                entry.name,
                file.display()
            )));
        }
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        hashed.extend_from_slice(&super::zoo::hash64(&bytes).to_le_bytes());
        let mut module = CModule::load_data(&mut bytes.as_slice()).map_err(|e| {
            bad(format!(
                "block `{}`: {} is not a TorchScript module ({}); save it with torch.jit.save",
                entry.name,
                file.display(),
                first_line(&e.to_string())
            ))
        })?;
        module.set_eval();
        params += module
            .named_parameters()
            .map_err(Error::Torch)?
            .iter()
            .map(|(_, t)| t.numel() as u64)
            .sum::<u64>();
        blocks.push(NamedBlock {
            name: entry.name.clone(),
            block: Box::new(ScriptBlock(module)),
        });
    }
    let weights = WeightSource::TorchScript {
        path: dir.display().to_string(),
    };
    let params = m.params.unwrap_or(params);
    let mut model = Model::new(m.name.clone(), m.input.clone(), weights, blocks, params)
        .with_weights_hash(super::zoo::hash64(&hashed));
    if let Some(labels) = &m.labels {
        let p = dir.join(labels);
        let text = std::fs::read_to_string(&p)
            .map_err(|e| bad(format!("labels file {}: {e}", p.display())))?;
        model = model.with_labels(text.lines().map(str::to_string).collect());
    }
    // A package whose blocks do not chain fails here, with the block that broke.
    model.split_points().map_err(|e| {
        bad(format!(
            "the blocks do not run in order on a {:?} input: {}",
            m.input.shape,
            first_line(&e.to_string())
        ))
    })?;
    Ok(model)
}

/// Writes `model` as a package in `dir` (created if needed), tracing each block on the
/// activation that reaches it. Returns the manifest path.
pub fn export_package(model: &Model, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let _guard = tch::no_grad_guard();
    let mut dims = vec![1i64];
    dims.extend_from_slice(&model.input.shape);
    let mut x = Tensor::zeros(dims.as_slice(), (Kind::Float, tch::Device::Cpu));
    let mut entries = Vec::new();
    for (i, nb) in model.blocks.iter().enumerate() {
        let mut failure = None;
        let traced = CModule::create_by_tracing(
            &script_name(&nb.name),
            "forward",
            &[x.shallow_clone()],
            &mut |inputs| match nb.block.forward_t(&inputs[0], false) {
                Ok(y) => vec![y],
                Err(e) => {
                    failure = Some(e);
                    vec![inputs[0].shallow_clone()]
                }
            },
        )?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        let file = format!("{i:03}_{}.pt", nb.name.replace(['/', '\\', ' '], "_"));
        traced.save(dir.join(&file))?;
        x = nb.block.forward_t(&x, false)?;
        entries.push(BlockEntry {
            name: nb.name.clone(),
            file,
        });
    }
    let labels = match &model.labels {
        Some(l) => {
            let p = dir.join("labels.txt");
            std::fs::write(&p, l.join("\n")).map_err(|e| Error::io(&p, e))?;
            Some("labels.txt".to_string())
        }
        None => None,
    };
    let manifest = Manifest {
        name: model.name.clone(),
        labels,
        params: Some(model.params),
        input: model.input.clone(),
        blocks: entries,
    };
    let path = dir.join("manifest.toml");
    let text = toml::to_string(&manifest).expect("a manifest always serialises");
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// A TorchScript module name from a block name: `features.0` -> `block_features_0`
/// (a dot would make it a qualified name that libtorch cannot load back).
fn script_name(block: &str) -> String {
    let clean: String = block
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("block_{clean}")
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "m"
[input]
shape = [3, 32, 32]
resize = 40
mean = [0.5, 0.5, 0.5]
std = [0.2, 0.2, 0.2]
[[blocks]]
name = "a"
file = "a.pt"
"#;

    fn parse(text: &str) -> std::result::Result<Manifest, String> {
        Manifest::parse(text, Path::new("m/manifest.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_manifest_parses() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.input.shape, [3, 32, 32]);
        assert_eq!(
            m.blocks,
            vec![BlockEntry {
                name: "a".into(),
                file: "a.pt".into()
            }]
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (
                GOOD.replace("resize = 40", "resize = 20"),
                "input.resize (20)",
            ),
            (
                GOOD.replace("std = [0.2, 0.2, 0.2]", "std = [0.2, 0.0, 0.2]"),
                "input.std must be positive",
            ),
            (
                GOOD.replace("name = \"m\"", "name = \" \""),
                "`name` is empty",
            ),
            (
                GOOD.replace("shape = [3, 32, 32]", "shape = [3, 32]"),
                "invalid manifest",
            ),
            (
                GOOD.split("[[blocks]]").next().unwrap().to_string(),
                "missing field `blocks`",
            ),
            (
                GOOD.replace("file = \"a.pt\"", "file = \"a.pt\"\nweights = 1"),
                "unknown field `weights`",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text).unwrap_err();
            assert!(
                err.contains(needle) && err.contains("m/manifest.toml"),
                "`{needle}` not in {err}"
            );
        }
    }
}
