//! Dynamic batching in a cloud worker: frames of one split that arrive together run as
//! one batch, each answered with its own top-1 (the same as alone) and the batch's size;
//! a split whose curve does not pay, and a pool without batching, run frames one at a
//! time.

use dyno::data;
use dyno::home::Home;
use dyno::model::zoo;
use dyno::pack::tensor::pack_tensor;
use dyno::pack::{Codec, PackOptions, Packer, Precision, TensorId};
use dyno_actors::worker::{Batching, Pool};

#[test]
fn frames_of_one_split_run_as_one_batch_with_their_own_answers() {
    let home = Home::discover();
    let model = zoo::load("mobilenet_v2", &home).expect("run scripts/setup.sh first");
    let images = data::list_images(&home.imagenet_dir()).expect("run scripts/setup.sh first");
    // Four different images at split 8 (batched up to 8), one at split 4 (never).
    let mut packer = Packer::default();
    let o = PackOptions::new(Precision::Bits(8), Codec::Lz4);
    let packed = |split: usize, i: usize, packer: &mut Packer| {
        let x = data::load_image(&images[i].path, model.input())
            .expect("a real image")
            .unsqueeze(0);
        let a = model.head(&x, split).expect("a valid split");
        let id = TensorId {
            model: model.name(),
            weights_hash: model.weights_hash(),
            split: split as u16,
        };
        pack_tensor(packer, &a, &id, &o).expect("packs")
    };
    let frames: Vec<Vec<u8>> = (0..4).map(|i| packed(8, i, &mut packer)).collect();
    let lone = packed(4, 0, &mut packer);
    let mut limits = vec![1; model.num_blocks()];
    limits[8] = 8;
    let batching = Batching {
        limits,
        max_queue_delay_s: 0.2,
    };
    let (batched, alone, single) = actix::System::new().block_on(async move {
        let pool = Pool::start(&home, "mobilenet_v2", 1, 16, batching);
        let plain = Pool::start(&home, "mobilenet_v2", 1, 16, Batching::off());
        let together = frames.iter().map(|f| pool.run(f.clone()));
        let batched: Vec<_> = futures_util::future::join_all(together).await;
        let alone: Vec<_> =
            futures_util::future::join_all(frames.iter().map(|f| plain.run(f.clone()))).await;
        let single = pool.run(lone).await;
        (batched, alone, single)
    });
    for (i, (b, a)) in batched.iter().zip(&alone).enumerate() {
        let (b, a) = (b.as_ref().expect("served"), a.as_ref().expect("served"));
        assert_eq!(b.batch, 4, "frame {i} ran in a batch of {}", b.batch);
        assert_eq!(
            a.batch, 1,
            "without batching, frame {i} ran in a batch of {}",
            a.batch
        );
        assert_eq!(
            b.top1, a.top1,
            "frame {i}: batched top-1 {} against {} alone",
            b.top1, a.top1
        );
    }
    let tops: std::collections::BTreeSet<i64> =
        alone.iter().map(|a| a.as_ref().unwrap().top1).collect();
    assert!(tops.len() > 1, "four images, one answer: {tops:?}");
    // Split 4's curve does not pay: it runs alone, without waiting for company.
    let s = single.expect("served");
    assert_eq!(s.batch, 1);
    assert!(
        s.queue_s < 0.1,
        "a frame that is not batched waited {:.3} s",
        s.queue_s
    );
}
