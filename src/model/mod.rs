//! Models as ordered lists of blocks, cut at any split point.
//!
//! A [`Model`] is `N` blocks run in order. Split point `s` (0..=N) is the boundary
//! before block `s`: the device runs the *head* (blocks `0..s`), the cloud runs the
//! *tail* (blocks `s..N`). `s = 0` is cloud-only, `s = N` device-only. Exactly one
//! tensor crosses every boundary, so `tail(head(x, s), s) == forward(x)` for every `s`.
//!
//! Built-in architectures live in the submodules (torchvision parameter names, so
//! torchvision weights load unchanged); user models come in as TorchScript packages
//! ([`torchscript`]). Both are the same [`Model`] to the rest of dyno.
use std::cell::OnceCell;
use std::fmt;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::error::{Error, Result};

pub mod fashion_cnn;
pub mod inception_v3;
pub mod layers;
pub mod mobilenet_v2;
pub mod resnet;
pub mod torchscript;
pub mod vgg;
pub mod zoo;

/// One stage of a model: one tensor in, one tensor out.
pub trait Block {
    /// Runs the block; `train` selects training behaviour (batch-norm statistics, dropout).
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor, tch::TchError>;
}

/// A built-in block: any tch module (its shape checks happen before it runs).
pub struct NnBlock<M: nn::ModuleT>(pub M);

impl<M: nn::ModuleT> Block for NnBlock<M> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor, tch::TchError> {
        Ok(self.0.forward_t(xs, train))
    }
}

/// A block with the name a user sees in listings and profiles.
pub struct NamedBlock {
    pub name: String,
    pub block: Box<dyn Block>,
}

impl NamedBlock {
    pub fn new(name: impl Into<String>, block: impl Block + 'static) -> Self {
        NamedBlock {
            name: name.into(),
            block: Box::new(block),
        }
    }
}

/// How raw images become the model's input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// `[channels, height, width]` of one input.
    pub shape: [i64; 3],
    /// Resize the short side to this many pixels before the centre crop (bilinear,
    /// antialiased). Absent: resize the whole image to `height x width`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<i64>,
    /// Per-channel mean subtracted after scaling pixels to [0, 1] (empty: none).
    #[serde(default)]
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by (empty: none).
    #[serde(default)]
    pub std: Vec<f64>,
}

impl InputSpec {
    /// The ImageNet preprocessing of torchvision's reference scripts.
    pub fn imagenet(crop: i64, resize: i64) -> Self {
        InputSpec {
            shape: [3, crop, crop],
            resize: Some(resize),
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }
}

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WeightSource {
    /// Real pretrained weights (for example torchvision's ImageNet weights).
    Real { source: String },
    /// Trained by this project (see the README), committed with a checksum.
    Trained { source: String },
    /// Random, from a fixed seed: for latency and size work only, not for accuracy.
    Seeded { seed: i64 },
    /// A user TorchScript package.
    TorchScript { path: String },
}

impl WeightSource {
    /// Whether accuracy figures of this model mean anything.
    pub fn is_meaningful(&self) -> bool {
        !matches!(self, WeightSource::Seeded { .. })
    }
}

impl fmt::Display for WeightSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightSource::Real { source } => write!(f, "real ({source})"),
            WeightSource::Trained { source } => write!(f, "trained ({source})"),
            WeightSource::Seeded { seed } => {
                write!(
                    f,
                    "seeded (random, seed {seed}; latency and size work only)"
                )
            }
            WeightSource::TorchScript { path } => write!(f, "torchscript ({path})"),
        }
    }
}

/// The boundary before block `index`: what crosses it, and how big it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitPoint {
    pub index: usize,
    /// The block whose output crosses (None at split 0: the input itself).
    pub after_block: Option<String>,
    /// Shape of one activation (batch dimension excluded).
    pub shape: Vec<i64>,
    /// Size of one activation in fp32.
    pub fp32_bytes: u64,
}

/// A CNN as an ordered list of blocks.
pub struct Model {
    name: String,
    input: InputSpec,
    weights: WeightSource,
    labels: Option<Vec<String>>,
    /// A hash of the weights: packed activations and profiles carry it.
    weights_hash: u64,
    blocks: Vec<NamedBlock>,
    params: u64,
    /// Holds the parameters of built-in models (for training and saving).
    vs: Option<nn::VarStore>,
    /// Per-item activation shape at each split point, from one dry run, on first use.
    shapes: OnceCell<Vec<Vec<i64>>>,
}

impl Model {
    pub fn new(
        name: impl Into<String>,
        input: InputSpec,
        weights: WeightSource,
        blocks: Vec<NamedBlock>,
        params: u64,
    ) -> Self {
        Model {
            name: name.into(),
            input,
            weights,
            labels: None,
            weights_hash: 0,
            blocks,
            params,
            vs: None,
            shapes: OnceCell::new(),
        }
    }

    pub(crate) fn with_var_store(mut self, vs: nn::VarStore) -> Self {
        self.vs = Some(vs);
        self
    }

    pub fn with_weights_hash(mut self, hash: u64) -> Self {
        self.weights_hash = hash;
        self
    }

    pub fn weights_hash(&self) -> u64 {
        self.weights_hash
    }

    pub fn with_labels(mut self, labels: Vec<String>) -> Self {
        self.labels = Some(labels);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn input(&self) -> &InputSpec {
        &self.input
    }
    pub fn weights(&self) -> &WeightSource {
        &self.weights
    }
    pub fn labels(&self) -> Option<&[String]> {
        self.labels.as_deref()
    }
    pub fn param_count(&self) -> u64 {
        self.params
    }
    pub fn var_store(&self) -> Option<&nn::VarStore> {
        self.vs.as_ref()
    }
    /// Number of blocks `N`; split points are `0..=N`.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn block_names(&self) -> impl Iterator<Item = &str> {
        self.blocks.iter().map(|b| b.name.as_str())
    }

    /// Every split point with the shape and fp32 size of what crosses it.
    pub fn split_points(&self) -> Result<Vec<SplitPoint>> {
        let shapes = self.shapes()?;
        Ok(shapes
            .iter()
            .enumerate()
            .map(|(index, shape)| SplitPoint {
                index,
                after_block: index.checked_sub(1).map(|i| self.blocks[i].name.clone()),
                shape: shape.clone(),
                fp32_bytes: 4 * shape.iter().product::<i64>().max(0) as u64,
            })
            .collect())
    }

    /// Per-item shape of the tensor that crosses split `split`.
    pub fn activation_shape(&self, split: usize) -> Result<&[i64]> {
        self.check_split(split)?;
        Ok(&self.shapes()?[split])
    }

    /// The device's part: blocks `0..split` on an input batch `[batch, C, H, W]`.
    pub fn head(&self, xs: &Tensor, split: usize) -> Result<Tensor> {
        self.check_split(split)?;
        self.check_input(xs, 0)?;
        self.run(xs, 0..split, false)
    }

    /// The cloud's part: blocks `split..N` on the activation that crossed split `split`.
    pub fn tail(&self, activation: &Tensor, split: usize) -> Result<Tensor> {
        self.check_split(split)?;
        self.check_input(activation, split)?;
        self.run(activation, split..self.blocks.len(), false)
    }

    /// The whole model, in inference mode.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.check_input(xs, 0)?;
        self.run(xs, 0..self.blocks.len(), false)
    }

    /// The whole model, in training mode when `train` (used by the trainer).
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(xs, 0)?;
        self.run(xs, 0..self.blocks.len(), train)
    }

    /// The whole model in training mode when `train`, also returning the activation at
    /// every interior split point (1..N), for a loss on the activations themselves.
    pub fn forward_t_with_splits(&self, xs: &Tensor, train: bool) -> Result<(Tensor, Vec<Tensor>)> {
        self.check_input(xs, 0)?;
        let mut cuts = Vec::with_capacity(self.blocks.len().saturating_sub(1));
        let out = self.run_seeing(xs, 0..self.blocks.len(), train, |split, x| {
            if split > 0 {
                cuts.push(x.shallow_clone());
            }
        })?;
        Ok((out, cuts))
    }

    /// Block `index` alone, on the activation that crosses split `index` (the profiler
    /// times blocks one by one).
    pub fn run_block(&self, index: usize, xs: &Tensor) -> Result<Tensor> {
        if index >= self.blocks.len() {
            return Err(Error::SplitOutOfRange {
                model: self.name.clone(),
                split: index,
                blocks: self.blocks.len(),
            });
        }
        self.check_input(xs, index)?;
        self.run(xs, index..index + 1, false)
    }

    fn run(&self, xs: &Tensor, range: std::ops::Range<usize>, train: bool) -> Result<Tensor> {
        self.run_seeing(xs, range, train, |_, _| ())
    }

    /// Blocks `range` on `xs`; `at_split(s, x)` sees the activation `x` that enters block
    /// `s`, before it runs.
    fn run_seeing(
        &self,
        xs: &Tensor,
        range: std::ops::Range<usize>,
        train: bool,
        mut at_split: impl FnMut(usize, &Tensor),
    ) -> Result<Tensor> {
        let _guard = (!train).then(tch::no_grad_guard);
        let mut x = xs.shallow_clone();
        for (split, b) in range.clone().zip(&self.blocks[range]) {
            at_split(split, &x);
            x = b.block.forward_t(&x, train)?;
        }
        Ok(x)
    }

    fn check_split(&self, split: usize) -> Result<()> {
        if split > self.blocks.len() {
            return Err(Error::SplitOutOfRange {
                model: self.name.clone(),
                split,
                blocks: self.blocks.len(),
            });
        }
        Ok(())
    }

    fn check_input(&self, xs: &Tensor, split: usize) -> Result<()> {
        let expected: Vec<i64> = if split == 0 {
            self.input.shape.to_vec()
        } else {
            self.shapes()?[split].clone()
        };
        let got = xs.size();
        let hint = if split == 0 {
            "preprocess the input as the model's input spec says (`dyno models list`)"
        } else {
            "send the activation the head produced at this same split"
        };
        let kind_ok = matches!(xs.kind(), Kind::Float);
        if !kind_ok || got.len() != expected.len() + 1 || got[1..] != expected[..] || got[0] < 1 {
            return Err(Error::WrongShape {
                model: self.name.clone(),
                split,
                expected: format!(
                    "{}{}",
                    expected
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    if kind_ok { "" } else { " (fp32)" }
                ),
                got,
                hint,
            });
        }
        Ok(())
    }

    /// Runs one zero input through all blocks to learn the shape at each split point.
    fn shapes(&self) -> Result<&Vec<Vec<i64>>> {
        if let Some(s) = self.shapes.get() {
            return Ok(s);
        }
        let _guard = tch::no_grad_guard();
        let mut dims = vec![1];
        dims.extend_from_slice(&self.input.shape);
        let mut x = Tensor::zeros(dims.as_slice(), (Kind::Float, tch::Device::Cpu));
        let mut shapes = vec![self.input.shape.to_vec()];
        for b in &self.blocks {
            x = b.block.forward_t(&x, false)?;
            shapes.push(x.size()[1..].to_vec());
        }
        Ok(self.shapes.get_or_init(|| shapes))
    }
}

/// Number of scalar parameters in a var store.
pub(crate) fn count_params(vs: &nn::VarStore) -> u64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as u64)
        .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-block toy model: double, then sum over the last axis.
    fn toy() -> Model {
        let blocks = vec![
            NamedBlock::new("double", NnBlock(nn::func(|x| x * 2))),
            NamedBlock::new(
                "sum",
                NnBlock(nn::func(|x| x.sum_dim_intlist(-1, false, Kind::Float))),
            ),
        ];
        let input = InputSpec {
            shape: [1, 2, 3],
            resize: None,
            mean: vec![],
            std: vec![],
        };
        Model::new("toy", input, WeightSource::Seeded { seed: 0 }, blocks, 0)
    }

    #[test]
    fn split_points_record_what_crosses() {
        let m = toy();
        let sp = m.split_points().unwrap();
        let shapes: Vec<_> = sp.iter().map(|s| s.shape.clone()).collect();
        assert_eq!(shapes, vec![vec![1, 2, 3], vec![1, 2, 3], vec![1, 2]]);
        assert_eq!(
            sp.iter().map(|s| s.fp32_bytes).collect::<Vec<_>>(),
            [24, 24, 8]
        );
        assert_eq!(sp[1].after_block.as_deref(), Some("double"));
        assert_eq!(sp[0].after_block, None);
    }

    #[test]
    fn head_and_tail_compose_to_forward() {
        let m = toy();
        let x = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).view([2, 1, 2, 3]);
        let full = m.forward(&x).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(full.flatten(0, -1)).unwrap(),
            [6., 24., 42., 60.]
        );
        for s in 0..=2 {
            let y = m.tail(&m.head(&x, s).unwrap(), s).unwrap();
            assert!(y.equal(&full), "split {s}");
        }
        assert!(matches!(
            m.head(&x, 3),
            Err(Error::SplitOutOfRange {
                split: 3,
                blocks: 2,
                ..
            })
        ));
        assert!(matches!(
            m.tail(&x, 2),
            Err(Error::WrongShape { split: 2, .. })
        ));
    }
}
