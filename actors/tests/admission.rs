//! The worker's admission agrees with the plans: a device over the onload budget the
//! coordinator gave it is answered busy at once, counted, and named in the reason; a
//! device with no budget on that worker is served. Real TCP, the real handshake, the
//! real pool (fashion_cnn tails).
use dyno::home::Home;
use dyno::model::zoo;
use dyno::pack::tensor::pack_tensor;
use dyno::pack::{Codec, PackOptions, Packer, Precision, TensorId};
use dyno::wire::session::dial;
use dyno::wire::{DeviceBudget, Identity, Key, Message, Role, DEFAULT_MAX_FRAME};
use dyno_actors::worker::{serve_data, Admission, Batching, Pool};

/// `n` frames sent back to back as `device`: (answered, busy, a busy reason).
async fn send(addr: &str, device: &str, packed: &[u8], n: u64) -> (u64, u64, String) {
    let me = Identity {
        fleet: "admission".into(),
        name: device.into(),
        role: Role::Agent,
        key: Key::Insecure,
    };
    let mut conn = dial(addr, &me, DEFAULT_MAX_FRAME).await.expect("dials");
    for request in 0..n {
        let m = Message::Infer {
            request,
            device: device.into(),
            packed: packed.to_vec(),
        };
        conn.send(&m).await.expect("sends");
    }
    let (mut ok, mut busy, mut reason) = (0, 0, String::new());
    for _ in 0..n {
        match conn.recv().await.expect("an answer for every frame") {
            Message::InferOk { .. } => ok += 1,
            Message::InferErr {
                busy: true,
                reason: r,
                ..
            } => {
                busy += 1;
                reason = r;
            }
            m => panic!("unexpected {}", m.kind()),
        }
    }
    (ok, busy, reason)
}

#[test]
fn a_device_over_its_budget_is_answered_busy_and_one_without_is_served() {
    let home = Home::discover();
    let model = zoo::load("fashion_cnn", &home).expect("run scripts/setup.sh first");
    let x = tch::Tensor::rand([1, 1, 28, 28], (tch::Kind::Float, tch::Device::Cpu));
    let id = TensorId {
        model: model.name(),
        weights_hash: model.weights_hash(),
        split: 0,
    };
    let o = PackOptions::new(Precision::Bits(8), Codec::Lz4);
    let packed = pack_tensor(&mut Packer::default(), &x, &id, &o).expect("packs");
    let (held, free) = actix::System::new().block_on(async move {
        let pool = Pool::start(&home, "fashion_cnn", 1, 256, Batching::off());
        let admission = Admission::default();
        // As the coordinator sends it: cam-held may onload 4 frames/s on this worker.
        admission.set(&[DeviceBudget {
            device: "cam-held".into(),
            rate_fps: 4.0,
        }]);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let me = Identity {
            fleet: "admission".into(),
            name: "worker".into(),
            role: Role::Worker,
            key: Key::Insecure,
        };
        actix_rt::spawn(serve_data(
            l,
            pool,
            admission.clone(),
            me,
            DEFAULT_MAX_FRAME,
        ));
        let held = send(&addr, "cam-held", &packed, 40).await;
        let free = send(&addr, "cam-free", &packed, 40).await;
        assert_eq!(
            admission.refused(),
            held.1,
            "the worker counts what it refused"
        );
        (held, free)
    });
    eprintln!(
        "40 frames at once: cam-held (4 frames/s) {} served, {} busy (\"{}\"); cam-free {} served",
        held.0, held.1, held.2, free.0
    );
    // The worker's bucket: the device's half-second burst and its slack, 1 s of 4/s.
    assert!((4..=5).contains(&held.0), "{held:?}");
    assert_eq!(held.0 + held.1, 40);
    assert!(
        held.2.contains("cam-held") && held.2.contains("4.00 frames/s"),
        "{}",
        held.2
    );
    assert_eq!(free, (40, 0, String::new()));
}
