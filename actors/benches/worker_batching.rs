//! A cloud worker's throughput with dynamic batching against one frame at a time:
//! MobileNetV2 tails at splits 0, 4, 8 and 14 (8-bit, lz4 activations of a real image),
//! 8 senders at once, one worker thread (one libtorch intra-op thread), in one run.
//! Criterion's time is per frame (inferences/s = 1 / it); each group also prints the
//! frames' p95 latency, and runs batch 1 again after batching (the machine's spread). Batching follows the batch curve of the model's latency profile
//! (`dyno profile latency --batch 1,2,4,8`): a split is batched only up to the size
//! that pays there.
//!
//! Run: `cargo bench -p dyno-actors --bench worker_batching`. Figures: docs/BENCHMARKS.md.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use dyno::data;
use dyno::home::Home;
use dyno::model::zoo;
use dyno::pack::tensor::pack_tensor;
use dyno::pack::{Codec, PackOptions, Packer, Precision, TensorId};
use dyno::stats::percentile;
use dyno_actors::config::BatchingConfig;
use dyno_actors::worker::{resolve_batching, Batching, Pool};

const SENDERS: usize = 8;
const SPLITS: [usize; 4] = [0, 4, 8, 14];

/// Runs `frames` frames of `packed` through `pool` from `SENDERS` senders at once; the
/// wall time, and each frame's latency into `latencies`.
async fn drive(pool: &Pool, packed: &[u8], frames: u64, latencies: &Mutex<Vec<f64>>) -> Duration {
    let start = Instant::now();
    let per = frames.div_ceil(SENDERS as u64);
    let senders = (0..SENDERS).map(|_| {
        let (pool, packed) = (pool.clone(), packed.to_vec());
        async move {
            let mut mine = Vec::with_capacity(per as usize);
            for _ in 0..per {
                let t = Instant::now();
                pool.run(packed.clone()).await.expect("a tail");
                mine.push(t.elapsed().as_secs_f64());
            }
            mine
        }
    });
    let all = futures_util::future::join_all(senders).await;
    let elapsed = start.elapsed();
    let mut l = latencies.lock().expect("not poisoned");
    l.extend(all.into_iter().flatten());
    // Time per frame as criterion counts it: the frames it asked for.
    elapsed.mul_f64(frames as f64 / (per * SENDERS as u64) as f64)
}

fn worker_batching(c: &mut Criterion) {
    tch::set_num_threads(1);
    let home = Home::discover();
    let model = zoo::load("mobilenet_v2", &home).expect("run scripts/setup.sh first");
    let images = data::list_images(&home.imagenet_dir()).expect("run scripts/setup.sh first");
    let x = data::load_image(&images[0].path, model.input())
        .expect("a real image")
        .unsqueeze(0);
    let cfg = BatchingConfig {
        max_batch: 8,
        ..BatchingConfig::default()
    };
    let batching = resolve_batching(&cfg, &home, "mobilenet_v2", None)
        .expect("the model's latency profile has its batch curve");
    let sys = actix_rt::System::new();
    let (alone, batched) = sys.block_on(async {
        (
            Pool::start(&home, "mobilenet_v2", 1, 64, Batching::off()),
            Pool::start(&home, "mobilenet_v2", 1, 64, batching.clone()),
        )
    });
    let mut packer = Packer::default();
    for split in SPLITS {
        let a = model.head(&x, split).expect("a valid split");
        let id = TensorId {
            model: model.name(),
            weights_hash: model.weights_hash(),
            split: split as u16,
        };
        let o = PackOptions::new(Precision::Bits(8), Codec::Lz4);
        let packed = pack_tensor(&mut packer, &a, &id, &o).expect("packs");
        let mut g = c.benchmark_group(format!("worker_split_{split}"));
        g.sample_size(10).measurement_time(Duration::from_secs(6));
        // Batch 1 again after batching: the spread of this shared machine, in the run.
        let order = [
            ("batch_1", &alone),
            ("dynamic_batching", &batched),
            ("batch_1_again", &alone),
        ];
        for (name, pool) in order {
            let latencies = Arc::new(Mutex::new(Vec::new()));
            g.bench_function(name, |b| {
                b.iter_custom(|frames| sys.block_on(drive(pool, &packed, frames, &latencies)))
            });
            let mut l = latencies.lock().expect("not poisoned").clone();
            if l.is_empty() {
                continue; // filtered out
            }
            l.sort_by(f64::total_cmp);
            eprintln!(
                "worker_split_{split}/{name}: p95 {:.1} ms over {} frames (batched up to {} here)",
                1e3 * percentile(&l, 0.95),
                l.len(),
                if name == "dynamic_batching" {
                    batching.limit(split)
                } else {
                    1
                }
            );
        }
        g.finish();
    }
}

criterion_group!(benches, worker_batching);
criterion_main!(benches);
