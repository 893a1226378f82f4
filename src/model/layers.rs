//! Layer helpers shared by the built-in architectures (torchvision layouts).
use tch::{nn, Tensor};

/// The activation after a convolution + batch-norm pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
}

impl Act {
    pub fn apply(self, xs: Tensor) -> Tensor {
        match self {
            Act::None => xs,
            Act::Relu => xs.relu(),
            Act::Relu6 => xs.clamp(0.0, 6.0),
        }
    }
}

/// Geometry of a 2-d convolution (kernel, stride, padding per axis; groups).
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub kernel: [i64; 2],
    pub stride: [i64; 2],
    pub padding: [i64; 2],
    pub groups: i64,
}

impl ConvSpec {
    /// A square `k x k` kernel with the given stride and padding.
    pub fn square(k: i64, stride: i64, padding: i64) -> Self {
        ConvSpec {
            kernel: [k, k],
            stride: [stride, stride],
            padding: [padding, padding],
            groups: 1,
        }
    }

    /// A `kh x kw` kernel, stride 1, with the given padding.
    pub fn rect(kh: i64, kw: i64, ph: i64, pw: i64) -> Self {
        ConvSpec {
            kernel: [kh, kw],
            stride: [1, 1],
            padding: [ph, pw],
            groups: 1,
        }
    }

    pub fn groups(mut self, groups: i64) -> Self {
        self.groups = groups;
        self
    }
}

/// A bias-free convolution (`{p}/conv_name`) followed by batch norm (`{p}/bn_name`) and
/// an activation: torchvision's Conv-BN-ReLU building block.
pub struct ConvBn {
    conv: nn::Conv<[i64; 2]>,
    bn: nn::BatchNorm,
    act: Act,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        conv_path: nn::Path,
        bn_path: nn::Path,
        c_in: i64,
        c_out: i64,
        spec: ConvSpec,
        bn_eps: f64,
        act: Act,
    ) -> Self {
        let cfg = nn::ConvConfigND {
            stride: spec.stride,
            padding: spec.padding,
            dilation: [1, 1],
            groups: spec.groups,
            bias: false,
            ws_init: nn::Init::Kaiming {
                dist: nn::init::NormalOrUniform::Normal,
                fan: nn::init::FanInOut::FanOut,
                non_linearity: nn::init::NonLinearity::ReLU,
            },
            bs_init: nn::Init::Const(0.),
            padding_mode: nn::PaddingMode::Zeros,
        };
        let conv = nn::conv(conv_path, c_in, c_out, spec.kernel, cfg);
        let bn = nn::batch_norm2d(
            bn_path,
            c_out,
            nn::BatchNormConfig {
                eps: bn_eps,
                ..Default::default()
            },
        );
        ConvBn { conv, bn, act }
    }
}

impl std::fmt::Debug for ConvBn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvBn").field("act", &self.act).finish()
    }
}

impl nn::ModuleT for ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply(&self.conv).apply_t(&self.bn, train);
        self.act.apply(ys)
    }
}

/// Global average pooling to `[batch, channels]`.
pub fn global_avg_pool(xs: &Tensor) -> Tensor {
    xs.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
}
