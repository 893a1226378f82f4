//! VGG-16 (Simonyan & Zisserman 2015) as 8 blocks: the five convolution stages (each
//! ending with its max-pool) and the three fully connected layers. Parameter names are torchvision's
//! (`features.N`, `classifier.0/3/6`).
use tch::nn;

use super::{NamedBlock, NnBlock};

/// Channels of each 3x3 convolution, stage by stage (configuration "D").
const VGG16: [&[i64]; 5] = [
    &[64, 64],
    &[128, 128],
    &[256, 256, 256],
    &[512, 512, 512],
    &[512, 512, 512],
];

pub fn vgg16_blocks(p: &nn::Path, classes: i64) -> Vec<NamedBlock> {
    let f = p / "features";
    let mut out = Vec::new();
    let mut index = 0; // torchvision counts conv, relu and pool layers alike
    let mut c_in = 3;
    for (stage, convs) in VGG16.iter().enumerate() {
        let mut seq = nn::seq();
        for &c_out in convs.iter() {
            let cfg = nn::ConvConfig {
                padding: 1,
                ..Default::default()
            };
            seq = seq
                .add(nn::conv2d(&f / index, c_in, c_out, 3, cfg))
                .add_fn(|x| x.relu());
            index += 2;
            c_in = c_out;
        }
        seq = seq.add_fn(|x| x.max_pool2d_default(2));
        index += 1;
        out.push(NamedBlock::new(format!("stage{}", stage + 1), NnBlock(seq)));
    }
    // The classifier as its three fully connected layers: one tensor crosses each cut.
    let c = p / "classifier";
    let fc6 = nn::linear(&c / 0, 512 * 7 * 7, 4096, Default::default());
    let fc7 = nn::linear(&c / 3, 4096, 4096, Default::default());
    let fc8 = nn::linear(&c / 6, 4096, classes, Default::default());
    out.push(NamedBlock::new(
        "fc6",
        NnBlock(nn::func_t(move |xs, train| {
            xs.adaptive_avg_pool2d([7, 7])
                .flatten(1, -1)
                .apply(&fc6)
                .relu()
                .dropout(0.5, train)
        })),
    ));
    out.push(NamedBlock::new(
        "fc7",
        NnBlock(nn::func_t(move |xs, train| {
            xs.apply(&fc7).relu().dropout(0.5, train)
        })),
    ));
    out.push(NamedBlock::new("fc8", NnBlock(fc8)));
    out
}
