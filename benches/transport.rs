//! The transport on loopback: 100 kB frames (an `Infer` as a device sends one) through a
//! real TCP connection between two tasks, encrypted (the Noise transport under a fleet
//! key) against plain (`--insecure`), side by side in one run.
//!
//! - `transport/stream`: 32 frames sent back to back, then one answer: throughput.
//! - `transport/round_trip`: one frame and its small answer: latency (criterion's
//!   median is the p50).
//!
//! - `transport/cipher`: sealing one 100 kB message into records, and opening them, in
//!   memory: what the cipher costs each side, without the socket.
//!
//! Run: `cargo bench --bench transport`.
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dyno::wire::noise::{identity_key, Handshake, Open, Seal};
use dyno::wire::{accept, connect, encode, Conn, Identity, Key, Message, Role, DEFAULT_MAX_FRAME};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const FRAME: usize = 100_000;
const BURST: u64 = 32;

fn id(role: Role, key: &Key) -> Identity {
    Identity {
        fleet: "bench".into(),
        name: format!("{role:?}"),
        role,
        key: key.clone(),
    }
}

/// A connected client, and a server task that answers every `Probe` whose `seq` is
/// marked (the top bit) with a `ProbeAck`.
async fn connected(key: &Key) -> Conn {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = id(Role::Worker, key);
    tokio::spawn(async move {
        let (t, _) = l.accept().await.unwrap();
        let mut c = accept(t, &server, DEFAULT_MAX_FRAME, &[Role::Agent])
            .await
            .unwrap();
        while let Ok(m) = c.recv().await {
            if let Message::Infer { request, .. } = m {
                if request & (1 << 63) != 0 {
                    let ack = Message::ProbeAck { seq: request };
                    if c.send(&ack).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let t = TcpStream::connect(addr).await.unwrap();
    connect(t, &id(Role::Agent, key), DEFAULT_MAX_FRAME)
        .await
        .unwrap()
}

fn frame(request: u64) -> Message {
    Message::Infer {
        request,
        device: "cam".into(),
        packed: vec![0x5a; FRAME],
    }
}

async fn exchange(c: &mut Conn, frames: u64) {
    for i in 1..=frames {
        let last = if i == frames { 1 << 63 } else { 0 };
        c.send(black_box(&frame(i | last))).await.unwrap();
    }
    match c.recv().await.unwrap() {
        Message::ProbeAck { .. } => {}
        m => panic!("{}", m.kind()),
    }
}

fn transport(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let keys = [
        ("plain", Key::Insecure),
        ("encrypted", Key::Secret(b"bench fleet key".to_vec())),
    ];
    let mut conns: Vec<(&str, Conn)> = keys
        .iter()
        .map(|(name, k)| (*name, rt.block_on(connected(k))))
        .collect();
    let mut g = c.benchmark_group("transport/stream");
    g.throughput(Throughput::Bytes(BURST * FRAME as u64))
        .sample_size(30)
        .measurement_time(Duration::from_secs(3));
    for (name, conn) in conns.iter_mut() {
        g.bench_function(*name, |b| b.iter(|| rt.block_on(exchange(conn, BURST))));
    }
    g.finish();
    let mut g = c.benchmark_group("transport/round_trip");
    g.throughput(Throughput::Bytes(FRAME as u64))
        .sample_size(50)
        .measurement_time(Duration::from_secs(3));
    for (name, conn) in conns.iter_mut() {
        g.bench_function(*name, |b| b.iter(|| rt.block_on(exchange(conn, 1))));
    }
    g.finish();
}

/// A client's sending direction and the server's receiving one, after a handshake.
fn directions() -> (Seal, Open) {
    let hello = Message::Hello {
        version: dyno::wire::PROTOCOL_VERSION,
        role: Role::Agent,
        fleet: "bench".into(),
        name: "cam".into(),
        insecure: false,
    };
    let psk = identity_key(b"bench fleet key", Role::Agent, "cam");
    let mut client = Handshake::initiator(&psk, &hello).unwrap();
    let mut server = Handshake::responder(&psk, &hello).unwrap();
    server.read(&client.write(&[]).unwrap()).unwrap();
    client.read(&server.write(&[]).unwrap()).unwrap();
    let (seal, _) = client.finish(DEFAULT_MAX_FRAME).unwrap();
    let (_, open) = server.finish(DEFAULT_MAX_FRAME).unwrap();
    (seal, open)
}

/// The cipher on one 100 kB `Infer`, in memory: sealing it, and sealing then opening it.
fn cipher(c: &mut Criterion) {
    let message = encode(&frame(1));
    let mut g = c.benchmark_group("transport/cipher");
    g.throughput(Throughput::Bytes(message.len() as u64))
        .measurement_time(Duration::from_secs(3));
    let (mut seal, _) = directions();
    g.bench_function("seal", |b| {
        b.iter(|| seal.seal(black_box(&message)).unwrap())
    });
    // The receiver opens every record in order, so each sealed message is opened.
    let (mut seal, mut open) = directions();
    g.bench_function("seal_and_open", |b| {
        b.iter(|| {
            let mut whole = None;
            for record in seal.seal(black_box(&message)).unwrap() {
                whole = open.open(&record).unwrap();
            }
            whole.expect("the last record completes the message")
        })
    });
    g.finish();
}

criterion_group!(benches, transport, cipher);
criterion_main!(benches);
