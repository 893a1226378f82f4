//! Inception-v3 (Szegedy et al. 2016) as 13 blocks: the stem (to the second max-pool),
//! the 11 Inception modules `Mixed_5b`..`Mixed_7c`, and the classifier. Parameter names
//! are torchvision's (`Conv2d_1a_3x3.conv`, `Mixed_6b.branch7x7_2.bn`, `fc`); the
//! auxiliary classifier, used only in training, is left out. Input 3x299x299.
use tch::{nn, Tensor};

use super::layers::{global_avg_pool, Act, ConvBn, ConvSpec};
use super::{NamedBlock, NnBlock};

const BN_EPS: f64 = 1e-3;

/// torchvision's BasicConv2d: `{name}.conv` + `{name}.bn` + ReLU.
fn basic(p: &nn::Path, name: &str, c_in: i64, c_out: i64, spec: ConvSpec) -> ConvBn {
    let q = p / name;
    ConvBn::new(&q / "conv", &q / "bn", c_in, c_out, spec, BN_EPS, Act::Relu)
}

fn k1() -> ConvSpec {
    ConvSpec::square(1, 1, 0)
}
fn k3(stride: i64, padding: i64) -> ConvSpec {
    ConvSpec::square(3, stride, padding)
}
fn k1x7() -> ConvSpec {
    ConvSpec::rect(1, 7, 0, 3)
}
fn k7x1() -> ConvSpec {
    ConvSpec::rect(7, 1, 3, 0)
}

fn avg_pool_3x3(xs: &Tensor) -> Tensor {
    xs.avg_pool2d([3, 3], [1, 1], [1, 1], false, true, None::<i64>)
}
fn max_pool_3x3_s2(xs: &Tensor) -> Tensor {
    xs.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// A chain of BasicConv2d layers.
fn chain(convs: &[ConvBn], xs: &Tensor, train: bool) -> Tensor {
    convs
        .iter()
        .fold(xs.shallow_clone(), |x, c| x.apply_t(c, train))
}

/// Which of torchvision's five Inception module kinds, with its layers.
// Eleven of these live in one model, built once: their sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Mixed {
    /// InceptionA: 1x1, 5x5, double 3x3, pooled 1x1.
    A([Vec<ConvBn>; 4]),
    /// InceptionB: strided 3x3, strided double 3x3, max-pool.
    B([Vec<ConvBn>; 2]),
    /// InceptionC: 1x1, factorised 7x7, double factorised 7x7, pooled 1x1.
    C([Vec<ConvBn>; 4]),
    /// InceptionD: strided 3x3, factorised 7x7 then strided 3x3, max-pool.
    D([Vec<ConvBn>; 2]),
    /// InceptionE: 1x1, split 3x3, split double 3x3, pooled 1x1.
    E {
        b1x1: ConvBn,
        b3x3: (ConvBn, ConvBn, ConvBn),
        b3x3dbl: (ConvBn, ConvBn, ConvBn, ConvBn),
        pool: ConvBn,
    },
}

impl std::fmt::Debug for Mixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mixed")
    }
}

impl Mixed {
    fn a(p: &nn::Path, c_in: i64, pool_features: i64) -> Self {
        Mixed::A([
            vec![basic(p, "branch1x1", c_in, 64, k1())],
            vec![
                basic(p, "branch5x5_1", c_in, 48, k1()),
                basic(p, "branch5x5_2", 48, 64, ConvSpec::square(5, 1, 2)),
            ],
            vec![
                basic(p, "branch3x3dbl_1", c_in, 64, k1()),
                basic(p, "branch3x3dbl_2", 64, 96, k3(1, 1)),
                basic(p, "branch3x3dbl_3", 96, 96, k3(1, 1)),
            ],
            vec![basic(p, "branch_pool", c_in, pool_features, k1())],
        ])
    }

    fn b(p: &nn::Path, c_in: i64) -> Self {
        Mixed::B([
            vec![basic(p, "branch3x3", c_in, 384, k3(2, 0))],
            vec![
                basic(p, "branch3x3dbl_1", c_in, 64, k1()),
                basic(p, "branch3x3dbl_2", 64, 96, k3(1, 1)),
                basic(p, "branch3x3dbl_3", 96, 96, k3(2, 0)),
            ],
        ])
    }

    fn c(p: &nn::Path, c_in: i64, c7: i64) -> Self {
        Mixed::C([
            vec![basic(p, "branch1x1", c_in, 192, k1())],
            vec![
                basic(p, "branch7x7_1", c_in, c7, k1()),
                basic(p, "branch7x7_2", c7, c7, k1x7()),
                basic(p, "branch7x7_3", c7, 192, k7x1()),
            ],
            vec![
                basic(p, "branch7x7dbl_1", c_in, c7, k1()),
                basic(p, "branch7x7dbl_2", c7, c7, k7x1()),
                basic(p, "branch7x7dbl_3", c7, c7, k1x7()),
                basic(p, "branch7x7dbl_4", c7, c7, k7x1()),
                basic(p, "branch7x7dbl_5", c7, 192, k1x7()),
            ],
            vec![basic(p, "branch_pool", c_in, 192, k1())],
        ])
    }

    fn d(p: &nn::Path, c_in: i64) -> Self {
        Mixed::D([
            vec![
                basic(p, "branch3x3_1", c_in, 192, k1()),
                basic(p, "branch3x3_2", 192, 320, k3(2, 0)),
            ],
            vec![
                basic(p, "branch7x7x3_1", c_in, 192, k1()),
                basic(p, "branch7x7x3_2", 192, 192, k1x7()),
                basic(p, "branch7x7x3_3", 192, 192, k7x1()),
                basic(p, "branch7x7x3_4", 192, 192, k3(2, 0)),
            ],
        ])
    }

    fn e(p: &nn::Path, c_in: i64) -> Self {
        let k1x3 = ConvSpec::rect(1, 3, 0, 1);
        let k3x1 = ConvSpec::rect(3, 1, 1, 0);
        Mixed::E {
            b1x1: basic(p, "branch1x1", c_in, 320, k1()),
            b3x3: (
                basic(p, "branch3x3_1", c_in, 384, k1()),
                basic(p, "branch3x3_2a", 384, 384, k1x3),
                basic(p, "branch3x3_2b", 384, 384, k3x1),
            ),
            b3x3dbl: (
                basic(p, "branch3x3dbl_1", c_in, 448, k1()),
                basic(p, "branch3x3dbl_2", 448, 384, k3(1, 1)),
                basic(p, "branch3x3dbl_3a", 384, 384, k1x3),
                basic(p, "branch3x3dbl_3b", 384, 384, k3x1),
            ),
            pool: basic(p, "branch_pool", c_in, 192, k1()),
        }
    }
}

impl nn::ModuleT for Mixed {
    fn forward_t(&self, xs: &Tensor, t: bool) -> Tensor {
        let branches = match self {
            Mixed::A([b1, b5, b3, bp]) | Mixed::C([b1, b5, b3, bp]) => vec![
                chain(b1, xs, t),
                chain(b5, xs, t),
                chain(b3, xs, t),
                chain(bp, &avg_pool_3x3(xs), t),
            ],
            Mixed::B([b3, bd]) | Mixed::D([b3, bd]) => {
                vec![chain(b3, xs, t), chain(bd, xs, t), max_pool_3x3_s2(xs)]
            }
            Mixed::E {
                b1x1,
                b3x3,
                b3x3dbl,
                pool,
            } => {
                let y3 = xs.apply_t(&b3x3.0, t);
                let y3 = Tensor::cat(&[y3.apply_t(&b3x3.1, t), y3.apply_t(&b3x3.2, t)], 1);
                let yd = xs.apply_t(&b3x3dbl.0, t).apply_t(&b3x3dbl.1, t);
                let yd = Tensor::cat(&[yd.apply_t(&b3x3dbl.2, t), yd.apply_t(&b3x3dbl.3, t)], 1);
                vec![
                    xs.apply_t(b1x1, t),
                    y3,
                    yd,
                    avg_pool_3x3(xs).apply_t(pool, t),
                ]
            }
        };
        Tensor::cat(&branches, 1)
    }
}

pub fn inception_v3_blocks(p: &nn::Path, classes: i64) -> Vec<NamedBlock> {
    let stem = [
        basic(p, "Conv2d_1a_3x3", 3, 32, k3(2, 0)),
        basic(p, "Conv2d_2a_3x3", 32, 32, k3(1, 0)),
        basic(p, "Conv2d_2b_3x3", 32, 64, k3(1, 1)),
        basic(p, "Conv2d_3b_1x1", 64, 80, k1()),
        basic(p, "Conv2d_4a_3x3", 80, 192, k3(1, 0)),
    ];
    let mut out = vec![NamedBlock::new(
        "stem",
        NnBlock(nn::func_t(move |xs, t| {
            let x = chain(&stem[..3], xs, t);
            let x = max_pool_3x3_s2(&x);
            let x = chain(&stem[3..], &x, t);
            max_pool_3x3_s2(&x)
        })),
    )];
    let modules: [(&str, Mixed); 11] = [
        ("Mixed_5b", Mixed::a(&(p / "Mixed_5b"), 192, 32)),
        ("Mixed_5c", Mixed::a(&(p / "Mixed_5c"), 256, 64)),
        ("Mixed_5d", Mixed::a(&(p / "Mixed_5d"), 288, 64)),
        ("Mixed_6a", Mixed::b(&(p / "Mixed_6a"), 288)),
        ("Mixed_6b", Mixed::c(&(p / "Mixed_6b"), 768, 128)),
        ("Mixed_6c", Mixed::c(&(p / "Mixed_6c"), 768, 160)),
        ("Mixed_6d", Mixed::c(&(p / "Mixed_6d"), 768, 160)),
        ("Mixed_6e", Mixed::c(&(p / "Mixed_6e"), 768, 192)),
        ("Mixed_7a", Mixed::d(&(p / "Mixed_7a"), 768)),
        ("Mixed_7b", Mixed::e(&(p / "Mixed_7b"), 1280)),
        ("Mixed_7c", Mixed::e(&(p / "Mixed_7c"), 2048)),
    ];
    for (name, m) in modules {
        out.push(NamedBlock::new(name, NnBlock(m)));
    }
    let fc = nn::linear(p / "fc", 2048, classes, Default::default());
    out.push(NamedBlock::new(
        "fc",
        NnBlock(nn::func_t(move |xs, t| {
            global_avg_pool(xs).dropout(0.5, t).apply(&fc)
        })),
    ));
    out
}
