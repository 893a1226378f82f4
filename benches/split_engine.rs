//! The split engine costs nothing: MobileNetV2's full forward through dyno's block list
//! against `tch::vision::mobilenet::v2` with the same weights, on the same real image,
//! in the same run. Also head + tail at a middle split (the shape checks included).
//!
//! Run: `cargo bench --bench split_engine`. Figures: docs/BENCHMARKS.md.
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dyno::data;
use dyno::home::Home;
use dyno::model::zoo;
use tch::nn::ModuleT;

fn mobilenet_v2_forward(c: &mut Criterion) {
    let home = Home::discover();
    let model = zoo::load("mobilenet_v2", &home).expect("run scripts/setup.sh first");
    let (_vs, reference) = zoo::tch_mobilenet_v2(&home).expect("run scripts/setup.sh first");
    let images = data::list_images(&home.imagenet_dir()).expect("run scripts/setup.sh first");
    let x = data::load_image(&images[0].path, model.input())
        .expect("a real image")
        .unsqueeze(0);

    let mut g = c.benchmark_group("mobilenet_v2_forward");
    g.sample_size(60).measurement_time(Duration::from_secs(8));
    g.bench_function("tch_vision_v2", |b| {
        b.iter(|| tch::no_grad(|| black_box(reference.forward_t(&x, false))))
    });
    g.bench_function("dyno_blocks", |b| {
        b.iter(|| black_box(model.forward(&x).expect("valid input")))
    });
    g.bench_function("dyno_head_tail_split_10", |b| {
        b.iter(|| {
            let a = model.head(&x, 10).expect("valid input");
            black_box(model.tail(&a, 10).expect("valid activation"))
        })
    });
    g.finish();
}

criterion_group!(benches, mobilenet_v2_forward);
criterion_main!(benches);
