//! MobileNetV2 (Sandler et al. 2018) as 20 blocks: the stem, 17 inverted-residual
//! blocks, the last 1x1 convolution and the classifier. Parameter names are
//! torchvision's (`features.N...`, `classifier.1`), so its ImageNet weights load as is.
use tch::{nn, Tensor};

use super::layers::{global_avg_pool, Act, ConvBn, ConvSpec};
use super::{NamedBlock, NnBlock};

/// (expansion, output channels, repeats, first stride), as in the paper's table 2.
const SETTINGS: [(i64, i64, i64, i64); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

const BN_EPS: f64 = 1e-5;

fn cbr(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, groups: i64) -> ConvBn {
    let spec = ConvSpec::square(k, stride, (k - 1) / 2).groups(groups);
    ConvBn::new(&p / 0, &p / 1, c_in, c_out, spec, BN_EPS, Act::Relu6)
}

/// The inverted-residual block: expand (1x1), depthwise (3x3), project (1x1, linear).
struct InvertedResidual {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl InvertedResidual {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64, expansion: i64) -> Self {
        let hidden = expansion * c_in;
        let p = &p / "conv";
        let mut id = 0;
        let expand = (expansion != 1).then(|| {
            id += 1;
            cbr(&p / 0, c_in, hidden, 1, 1, 1)
        });
        let depthwise = cbr(&p / id, hidden, hidden, 3, stride, hidden);
        let project = ConvBn::new(
            &p / (id + 1),
            &p / (id + 2),
            hidden,
            c_out,
            ConvSpec::square(1, 1, 0),
            BN_EPS,
            Act::None,
        );
        InvertedResidual {
            expand,
            depthwise,
            project,
            residual: stride == 1 && c_in == c_out,
        }
    }
}

impl std::fmt::Debug for InvertedResidual {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InvertedResidual")
    }
}

impl nn::ModuleT for InvertedResidual {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.shallow_clone();
        if let Some(e) = &self.expand {
            ys = ys.apply_t(e, train);
        }
        let ys = ys
            .apply_t(&self.depthwise, train)
            .apply_t(&self.project, train);
        if self.residual {
            ys + xs
        } else {
            ys
        }
    }
}

/// The blocks of MobileNetV2 for `classes` outputs, with parameters under `p`.
pub fn blocks(p: &nn::Path, classes: i64) -> Vec<NamedBlock> {
    let f = p / "features";
    let mut out = Vec::new();
    let mut c_in = 32;
    out.push(NamedBlock::new(
        "features.0",
        NnBlock(cbr(&f / 0, 3, c_in, 3, 2, 1)),
    ));
    let mut id = 1;
    for (expansion, c_out, repeats, stride) in SETTINGS {
        for i in 0..repeats {
            let s = if i == 0 { stride } else { 1 };
            let block = InvertedResidual::new(&f / id, c_in, c_out, s, expansion);
            out.push(NamedBlock::new(format!("features.{id}"), NnBlock(block)));
            c_in = c_out;
            id += 1;
        }
    }
    out.push(NamedBlock::new(
        format!("features.{id}"),
        NnBlock(cbr(&f / id, c_in, 1280, 1, 1, 1)),
    ));
    let fc = nn::linear(p / "classifier" / 1, 1280, classes, Default::default());
    out.push(NamedBlock::new(
        "classifier",
        NnBlock(nn::func_t(move |xs, train| {
            global_avg_pool(xs).dropout(0.2, train).apply(&fc)
        })),
    ));
    out
}
