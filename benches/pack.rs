//! Pack and unpack throughput on real activations: MobileNetV2 on a real ImageNet image,
//! cut at several split points; bits {2, 4, 8, 16} x codecs {none, lz4, zstd}, one
//! thread, in GB/s of fp32 input. A plain copy of the same buffer is the reference.
//! `bN-mse/lz4` packs with clipped ranges (`Clip::Mse`: a histogram and a search more).
//! `input/`: the input (split 0) as a camera sends it, a JPEG of quality 75 and 95, beside
//! 8 bits with zstd, packed and unpacked.
//!
//! Run: `cargo bench --bench pack`; table: `scripts/bench_table.py pack`.
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dyno::data;
use dyno::home::Home;
use dyno::model::zoo;
use dyno::pack::tensor::tensor_values;
use dyno::pack::{Clip, Codec, DecodeLimits, PackOptions, Packer, Precision, TensorId};

const SPLITS: [usize; 4] = [1, 4, 8, 14];
const BITS: [u8; 4] = [2, 4, 8, 16];

/// MobileNetV2 and its input from the first ImageNet sample (`[1, 3, 224, 224]`).
fn model_and_input() -> (dyno::model::Model, tch::Tensor) {
    let home = Home::discover();
    let model = zoo::load("mobilenet_v2", &home).expect("run scripts/setup.sh first");
    let images = data::list_images(&home.imagenet_dir()).expect("run scripts/setup.sh first");
    let x = data::load_image(&images[0].path, model.input())
        .expect("a real image")
        .unsqueeze(0);
    (model, x)
}

fn pack_unpack(c: &mut Criterion) {
    let (model, x) = model_and_input();
    for split in SPLITS {
        let a = model.head(&x, split).expect("valid input");
        let (values, shape) = tensor_values(&a).expect("an fp32 activation");
        let id = TensorId {
            model: "mobilenet_v2",
            weights_hash: 0,
            split: split as u16,
        };
        let bytes = 4 * values.len() as u64;
        let mut g = c.benchmark_group(format!("pack/split{split}"));
        g.throughput(Throughput::Bytes(bytes))
            .sample_size(20)
            .warm_up_time(Duration::from_millis(400))
            .measurement_time(Duration::from_millis(1200));
        let mut copy = vec![0f32; values.len()];
        g.bench_function("copy", |b| {
            b.iter(|| copy.copy_from_slice(black_box(&values)))
        });
        let mut packer = Packer::default();
        let mut out = Vec::new();
        for bits in BITS {
            for codec in Codec::ALL {
                let opts = PackOptions::new(Precision::Bits(bits), codec);
                g.bench_function(BenchmarkId::new(format!("b{bits}"), codec), |b| {
                    b.iter(|| {
                        packer
                            .pack_into(black_box(&values), &shape, &id, &opts, &mut out)
                            .expect("finite")
                    })
                });
            }
            let opts = PackOptions {
                clip: Clip::Mse,
                ..PackOptions::new(Precision::Bits(bits), Codec::Lz4)
            };
            g.bench_function(BenchmarkId::new(format!("b{bits}-mse"), Codec::Lz4), |b| {
                b.iter(|| {
                    packer
                        .pack_into(black_box(&values), &shape, &id, &opts, &mut out)
                        .expect("finite")
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("unpack/split{split}"));
        g.throughput(Throughput::Bytes(bytes))
            .sample_size(20)
            .warm_up_time(Duration::from_millis(400))
            .measurement_time(Duration::from_millis(1200));
        g.bench_function("copy", |b| {
            b.iter(|| copy.copy_from_slice(black_box(&values)))
        });
        let mut back = Vec::new();
        let limits = DecodeLimits::default();
        for bits in BITS {
            for codec in Codec::ALL {
                let opts = PackOptions::new(Precision::Bits(bits), codec);
                let mut buf = Vec::new();
                packer
                    .pack_into(&values, &shape, &id, &opts, &mut buf)
                    .expect("finite");
                g.bench_function(BenchmarkId::new(format!("b{bits}"), codec), |b| {
                    b.iter(|| {
                        packer
                            .unpack_into(black_box(&buf), &limits, &mut back)
                            .expect("valid")
                    })
                });
            }
        }
        g.finish();
    }
}

fn input_as_jpeg(c: &mut Criterion) {
    let (_, x) = model_and_input();
    let (values, shape) = tensor_values(&x).expect("an fp32 input");
    let id = TensorId {
        model: "mobilenet_v2",
        weights_hash: 0,
        split: 0,
    };
    let mut g = c.benchmark_group("input");
    g.throughput(Throughput::Bytes(4 * values.len() as u64))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(400))
        .measurement_time(Duration::from_millis(1500));
    let mut packer = Packer::default();
    let limits = DecodeLimits::default();
    for (name, opts) in [
        ("jpeg75", PackOptions::new(Precision::Jpeg(75), Codec::None)),
        ("jpeg95", PackOptions::new(Precision::Jpeg(95), Codec::None)),
        ("b8-zstd", PackOptions::new(Precision::Bits(8), Codec::Zstd)),
    ] {
        let mut buf = Vec::new();
        g.bench_function(BenchmarkId::new("pack", name), |b| {
            b.iter(|| {
                packer
                    .pack_into(black_box(&values), &shape, &id, &opts, &mut buf)
                    .expect("finite")
            })
        });
        let mut back = Vec::new();
        g.bench_function(BenchmarkId::new("unpack", name), |b| {
            b.iter(|| {
                packer
                    .unpack_into(black_box(&buf), &limits, &mut back)
                    .expect("valid")
            })
        });
        eprintln!("input as {name}: {} bytes", buf.len());
    }
    g.finish();
}

criterion_group!(benches, pack_unpack, input_as_jpeg);
criterion_main!(benches);
