//! ResNet-50 (He et al. 2016, torchvision's v1.5: stride on the 3x3 convolution) as 18
//! blocks: the stem, the 16 bottleneck blocks, and the pooled classifier. Parameter
//! names are torchvision's (`conv1`, `layer2.3.bn2`, `layer1.0.downsample.0`, `fc`).
use tch::{nn, Tensor};

use super::layers::{global_avg_pool, Act, ConvBn, ConvSpec};
use super::{NamedBlock, NnBlock};

const BN_EPS: f64 = 1e-5;
const EXPANSION: i64 = 4;

struct Bottleneck {
    reduce: ConvBn,
    conv: ConvBn,
    expand: ConvBn,
    downsample: Option<ConvBn>,
}

impl std::fmt::Debug for Bottleneck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bottleneck")
    }
}

impl Bottleneck {
    fn new(p: nn::Path, c_in: i64, width: i64, stride: i64) -> Self {
        let c_out = width * EXPANSION;
        let cb = |i: usize, a: i64, b: i64, spec: ConvSpec, act: Act| {
            ConvBn::new(
                &p / format!("conv{i}"),
                &p / format!("bn{i}"),
                a,
                b,
                spec,
                BN_EPS,
                act,
            )
        };
        let reduce = cb(1, c_in, width, ConvSpec::square(1, 1, 0), Act::Relu);
        let conv = cb(2, width, width, ConvSpec::square(3, stride, 1), Act::Relu);
        let expand = cb(3, width, c_out, ConvSpec::square(1, 1, 0), Act::None);
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = &p / "downsample";
            ConvBn::new(
                &d / 0,
                &d / 1,
                c_in,
                c_out,
                ConvSpec::square(1, stride, 0),
                BN_EPS,
                Act::None,
            )
        });
        Bottleneck {
            reduce,
            conv,
            expand,
            downsample,
        }
    }
}

impl nn::ModuleT for Bottleneck {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs
            .apply_t(&self.reduce, train)
            .apply_t(&self.conv, train)
            .apply_t(&self.expand, train);
        let shortcut = match &self.downsample {
            Some(d) => xs.apply_t(d, train),
            None => xs.shallow_clone(),
        };
        (ys + shortcut).relu()
    }
}

/// The blocks of a bottleneck ResNet with `layers[i]` blocks in stage `i`.
pub fn blocks(p: &nn::Path, layers: [i64; 4], classes: i64) -> Vec<NamedBlock> {
    let stem = ConvBn::new(
        p / "conv1",
        p / "bn1",
        3,
        64,
        ConvSpec::square(7, 2, 3),
        BN_EPS,
        Act::Relu,
    );
    let mut out = vec![NamedBlock::new(
        "stem",
        NnBlock(nn::func_t(move |xs, train| {
            xs.apply_t(&stem, train)
                .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
        })),
    )];
    let mut c_in = 64;
    for (stage, &n) in layers.iter().enumerate() {
        let width = 64 << stage;
        for i in 0..n {
            let stride = if i == 0 && stage > 0 { 2 } else { 1 };
            let name = format!("layer{}.{i}", stage + 1);
            let block = Bottleneck::new(p / format!("layer{}", stage + 1) / i, c_in, width, stride);
            out.push(NamedBlock::new(name, NnBlock(block)));
            c_in = width * EXPANSION;
        }
    }
    let fc = nn::linear(p / "fc", c_in, classes, Default::default());
    out.push(NamedBlock::new(
        "fc",
        NnBlock(nn::func_t(move |xs, _| global_avg_pool(xs).apply(&fc))),
    ));
    out
}

/// ResNet-50: 3, 4, 6, 3 bottleneck blocks.
pub fn resnet50_blocks(p: &nn::Path, classes: i64) -> Vec<NamedBlock> {
    blocks(p, [3, 4, 6, 3], classes)
}
