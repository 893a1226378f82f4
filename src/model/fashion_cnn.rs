//! `fashion_cnn`: a small CNN for Fashion-MNIST (1x28x28, 10 classes), trained by the
//! project (`dyno models train fashion_cnn`, see the README) and shipped in
//! `models/fashion_cnn.safetensors`. Seven blocks, so six interior split points, with
//! activations from 12.5 KiB down to 512 bytes: small enough to profile exhaustively,
//! real enough that accuracy figures mean something.
use tch::nn;

use super::layers::{Act, ConvBn, ConvSpec};
use super::{NamedBlock, NnBlock};

/// The ten Fashion-MNIST classes, by label index.
pub const LABELS: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// (input channels, output channels, max-pool after) of the five convolution blocks.
const CONVS: [(i64, i64, bool); 5] = [
    (1, 16, false),
    (16, 32, true),
    (32, 32, false),
    (32, 64, true),
    (64, 64, true),
];

pub fn blocks(p: &nn::Path) -> Vec<NamedBlock> {
    let mut out = Vec::new();
    for (i, &(c_in, c_out, pool)) in CONVS.iter().enumerate() {
        let q = p / format!("conv{}", i + 1);
        let cb = ConvBn::new(
            &q / "conv",
            &q / "bn",
            c_in,
            c_out,
            ConvSpec::square(3, 1, 1),
            1e-5,
            Act::Relu,
        );
        let block = nn::func_t(move |xs, train| {
            let y = xs.apply_t(&cb, train);
            if pool {
                y.max_pool2d_default(2)
            } else {
                y
            }
        });
        out.push(NamedBlock::new(format!("conv{}", i + 1), NnBlock(block)));
    }
    let fc1 = nn::linear(p / "fc1", 64 * 3 * 3, 128, Default::default());
    out.push(NamedBlock::new(
        "fc1",
        NnBlock(nn::func_t(move |xs, train| {
            xs.flatten(1, -1).apply(&fc1).relu().dropout(0.3, train)
        })),
    ));
    let fc2 = nn::linear(p / "fc2", 128, 10, Default::default());
    out.push(NamedBlock::new("fc2", NnBlock(fc2)));
    out
}
