//! Predicted against measured: does the performance model hold on this machine?
//!
//! One process plays both sides. A "cloud" thread with its own copy of the model listens
//! on loopback TCP; the "device" runs the head, packs, sends the activation as the fleet
//! does (the session layer, `crate::wire::session`: the handshake, framed `Infer`
//! messages), and the cloud unpacks, runs the tail and answers `InferOk` with its stage
//! times. The link is measured first (heartbeats for the RTT, 1 MB probes for the
//! bandwidth, through [`crate::sched::bandwidth::Estimator`]), the latency profile is
//! measured on the same input, and the performance model's prediction at every split is
//! set against the median measured end-to-end time.
use std::time::Instant;

use serde::Serialize;
use tch::Tensor;

use super::latency::{self, LatencyOptions, LatencyProfile};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::model::{zoo, Model};
use crate::pack::tensor::{tensor_values, unpack_tensor};
use crate::pack::{Codec, DecodeLimits, PackOptions, Packer, Precision, TensorId};
use crate::sched::bandwidth::Estimator;
use crate::sched::perf::{Candidate, Conditions, Correction, Link, Row};
use crate::wire::session::dial;
use crate::wire::{accept, Conn, Identity, Key, Message, Role, WireError, FRAME_LIMIT};

/// One split's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SplitCheck {
    pub split: usize,
    pub predicted_ms: f64,
    pub measured_ms: f64,
    /// The stages, predicted from the profiles and observed (medians): device (head
    /// and pack) and cloud (unpack and tail).
    pub predicted_device_ms: f64,
    pub observed_device_ms: f64,
    pub predicted_cloud_ms: f64,
    pub observed_cloud_ms: f64,
    /// measured / predicted - 1.
    pub error: f64,
    /// Predicted with the run-time correction factors.
    pub corrected_ms: f64,
    pub corrected_error: f64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub model: String,
    pub precision: Precision,
    pub codec: Codec,
    pub runs: usize,
    pub link: Link,
    pub splits: Vec<SplitCheck>,
    /// Largest |error| over the splits.
    pub max_abs_error: f64,
    /// The correction factors fitted from the observed stage times.
    pub correction: Correction,
    pub max_abs_corrected_error: f64,
}

fn io_err(e: std::io::Error) -> Error {
    Error::io("loopback connection", e)
}

fn wire_err(e: WireError) -> Error {
    io_err(std::io::Error::other(e.to_string()))
}

/// Both sides of the loopback session, without a fleet key: nothing leaves the host.
fn identity(role: Role) -> Identity {
    Identity {
        fleet: "validate".into(),
        name: format!("validate-{role:?}").to_lowercase(),
        role,
        key: Key::Insecure,
    }
}

/// A runtime for one side of the session.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err)
}

/// The cloud side: one libtorch thread (two threads each running libtorch with a full
/// intra-op pool slow each other down several times over), its own copy of the model,
/// its own latency profile (sent back on `profiled`); then serves one session as a
/// worker does: heartbeats, probes, and `Infer` answered with `InferOk` and its own
/// stage times.
fn serve(
    listener: std::net::TcpListener,
    home: Home,
    model_name: String,
    x: Tensor,
    opts: LatencyOptions,
    profiled: std::sync::mpsc::Sender<Result<LatencyProfile>>,
) -> Result<()> {
    tch::set_num_threads(1);
    let model = match zoo::load(&model_name, &home) {
        Ok(m) => m,
        Err(e) => {
            let _ = profiled.send(Err(Error::Profile {
                path: home.root().to_path_buf(),
                reason: format!("the cloud thread could not load {model_name}: {e}"),
            }));
            return Err(e);
        }
    };
    let _ = profiled.send(latency::measure(
        &model,
        &x,
        "validation input (cloud)",
        &opts,
    ));
    let rt = runtime()?;
    rt.block_on(async {
        listener.set_nonblocking(true).map_err(io_err)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(io_err)?;
        let (stream, _) = listener.accept().await.map_err(io_err)?;
        let mut conn = accept(stream, &identity(Role::Worker), FRAME_LIMIT, &[Role::Agent])
            .await
            .map_err(wire_err)?;
        let mut packer = Packer::default();
        let limits = DecodeLimits::default();
        loop {
            let answer = match conn.recv().await {
                Err(WireError::Closed) => return Ok(()),
                Err(e) => return Err(wire_err(e)),
                Ok(Message::Heartbeat { seq }) => Message::HeartbeatAck { seq },
                Ok(Message::Probe { seq, .. }) => Message::ProbeAck { seq },
                Ok(Message::Infer {
                    request, packed, ..
                }) => {
                    let t = Instant::now();
                    let (h, a) = unpack_tensor(&mut packer, &packed, &limits)?;
                    let unpack_s = t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    let y = model.tail(&a, h.split as usize)?;
                    Message::InferOk {
                        request,
                        top1: y.argmax(-1, false).int64_value(&[0]),
                        queue_s: 0.0,
                        unpack_s,
                        tail_s: t.elapsed().as_secs_f64(),
                        batch: 1,
                    }
                }
                Ok(m) => {
                    return Err(io_err(std::io::Error::other(format!(
                        "the device sent {}",
                        m.kind()
                    ))))
                }
            };
            conn.send(&answer).await.map_err(wire_err)?;
        }
    })
}

/// One request and its answer on the session.
async fn ask(conn: &mut Conn, m: &Message) -> Result<Message> {
    conn.send(m).await.map_err(wire_err)?;
    conn.recv().await.map_err(wire_err)
}

/// The cloud's answer to one activation: its own stage time (unpack and tail).
async fn infer(conn: &mut Conn, request: u64, packed: &[u8]) -> Result<f64> {
    let m = Message::Infer {
        request,
        device: "validate".into(),
        packed: packed.to_vec(),
    };
    match ask(conn, &m).await? {
        Message::InferOk {
            unpack_s, tail_s, ..
        } => Ok(unpack_s + tail_s),
        m => Err(io_err(std::io::Error::other(format!(
            "the cloud answered {}",
            m.kind()
        )))),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures the link to the cloud thread with the bandwidth estimator: heartbeats for
/// the RTT, 1 MB probes for the bandwidth, as the fleet measures its links.
async fn measure_link(conn: &mut Conn, start: Instant) -> Result<Link> {
    let mut est = Estimator::default();
    for seq in 0..21 {
        let t = Instant::now();
        ask(conn, &Message::Heartbeat { seq }).await?;
        est.observe_rtt(start.elapsed().as_secs_f64(), t.elapsed().as_secs_f64());
    }
    let padding = vec![7u8; 1 << 20];
    for seq in 0..7 {
        let t = Instant::now();
        let probe = Message::Probe {
            seq,
            padding: padding.clone(),
        };
        ask(conn, &probe).await?;
        est.observe_transfer(
            start.elapsed().as_secs_f64(),
            padding.len() as u64,
            t.elapsed().as_secs_f64(),
        );
    }
    Ok(est.link().unwrap_or(Link {
        // Loopback faster than the timer can tell: the RTT is all there is.
        bandwidth_bps: f64::INFINITY,
        rtt_s: est.rtt_s().unwrap_or(0.0),
    }))
}

/// Runs the check for `model` on input `x` (`[1, C, H, W]`).
pub fn run(
    home: &Home,
    model: &Model,
    x: &Tensor,
    precision: Precision,
    codec: Codec,
    runs: usize,
) -> Result<Validation> {
    let runs = runs.max(1);
    let opts = LatencyOptions {
        runs,
        precisions: vec![precision],
        ..LatencyOptions::default()
    };
    let device = latency::measure(model, x, "validation input (device)", &opts)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err)?;
    let addr = listener.local_addr().map_err(io_err)?;
    let (h, name, xc) = (home.clone(), model.name().to_string(), x.copy());
    let (tx, rx) = std::sync::mpsc::channel();
    let cloud = std::thread::spawn(move || serve(listener, h, name, xc, opts, tx));
    let mut correction = Correction::default();
    let result = (|| {
        let cloud_profile = rx
            .recv()
            .map_err(|_| io_err(std::io::Error::other("the cloud thread ended early")))??;
        let rt = runtime()?;
        let me = identity(Role::Agent);
        let mut s = rt
            .block_on(dial(&addr.to_string(), &me, FRAME_LIMIT))
            .map_err(wire_err)?;
        let start = Instant::now();
        let link = rt.block_on(measure_link(&mut s, start))?;
        let n = model.num_blocks();
        let opts = PackOptions::new(precision, codec);
        let mut packer = Packer::default();
        let mut splits = Vec::with_capacity(n + 1);
        let cond = Conditions::new(1.0, link);
        let mut rows = Vec::with_capacity(n + 1);
        // Rounds over all splits, so that a burst of noise on this shared machine falls
        // on every split a little rather than on one split entirely.
        let mut times = vec![Vec::with_capacity(runs); n + 1];
        let mut stages = vec![(Vec::new(), Vec::new()); n + 1];
        let mut out = Vec::new();
        for round in 0..=runs {
            for (split, t) in times.iter_mut().enumerate() {
                let id = TensorId {
                    model: model.name(),
                    weights_hash: model.weights_hash(),
                    split: split as u16,
                };
                let start = Instant::now();
                let a = model.head(x, split)?;
                if split < n {
                    let (values, shape) = tensor_values(&a)?;
                    packer.pack_into(&values, &shape, &id, &opts, &mut out)?;
                    let device_s = start.elapsed().as_secs_f64();
                    let request = (round * (n + 1) + split) as u64;
                    let cloud_s = rt.block_on(infer(&mut s, request, &out))?;
                    if round > 0 {
                        stages[split].0.push(device_s);
                        stages[split].1.push(cloud_s);
                    }
                } else {
                    a.argmax(-1, false).int64_value(&[0]);
                }
                if round > 0 {
                    t.push(start.elapsed().as_secs_f64());
                }
            }
        }
        for (split, t) in times.into_iter().enumerate() {
            let (pack_s, unpack_s, bytes) = if split < n {
                let find = |p: &LatencyProfile| {
                    p.codecs
                        .iter()
                        .find(|c| c.split == split && c.codec == codec)
                        .cloned()
                        .expect("measured for every split")
                };
                let (d, c) = (find(&device), find(&cloud_profile));
                (d.pack_s, c.unpack_s, d.bytes)
            } else {
                (0.0, 0.0, 0)
            };
            let row = Row {
                candidate: Candidate {
                    split: split as u16,
                    precision,
                    codec,
                },
                head_s: device.blocks[..split].iter().map(|b| b.seconds).sum(),
                tail_s: cloud_profile.blocks[split..]
                    .iter()
                    .map(|b| b.seconds)
                    .sum(),
                pack_s,
                unpack_s,
                bytes: bytes as f64,
                drop_points: 0.0,
                batch: 1.0,
                batch_wait_s: 0.0,
            };
            let predicted = row.predict(&cond).latency_s;
            let measured = median(t);
            if split < n {
                let (dev, cloud) = std::mem::take(&mut stages[split]);
                rows.push((row, median(dev), median(cloud)));
            } else {
                rows.push((row, measured, 0.0));
            }
            let p = row.predict(&cond);
            let observed = rows.last().expect("just pushed");
            splits.push(SplitCheck {
                split,
                predicted_device_ms: (p.head_s + p.pack_s) * 1e3,
                observed_device_ms: observed.1 * 1e3,
                predicted_cloud_ms: (p.unpack_s + p.tail_s) * 1e3,
                observed_cloud_ms: observed.2 * 1e3,
                predicted_ms: predicted * 1e3,
                measured_ms: measured * 1e3,
                error: measured / predicted - 1.0,
                corrected_ms: 0.0,
                corrected_error: 0.0,
                bytes,
            });
        }
        // The run-time correction (DESIGN.md section 2): k_dev from the device stage
        // observed on device-only frames, k_cloud from the cloud stage observed on
        // cloud-only frames (split 0); the other splits are predicted, not fitted.
        let mut k = Correction::default();
        for _ in 0..40 {
            for (row, dev, cloud) in [&rows[0], &rows[n]] {
                let p = row.predict(&Conditions {
                    correction: k,
                    ..cond
                });
                if row.bytes > 0.0 {
                    k.observe_cloud(p.unpack_s + p.tail_s, *cloud);
                } else {
                    k.observe_device(p.head_s + p.pack_s, *dev);
                }
            }
        }
        for (c, (row, _, _)) in splits.iter_mut().zip(&rows) {
            let p = row.predict(&Conditions {
                correction: k,
                ..cond
            });
            c.corrected_ms = p.latency_s * 1e3;
            c.corrected_error = c.measured_ms / c.corrected_ms - 1.0;
        }
        correction = k;
        Ok::<_, Error>((link, splits))
    })();
    if result.is_err() {
        // The cloud thread may still wait in accept(): give it a connection to end on.
        let _ = std::net::TcpStream::connect(addr);
    }
    // Closing the connection ends the cloud thread; its error, if any, comes first.
    let served = cloud
        .join()
        .map_err(|_| io_err(std::io::Error::other("the cloud thread panicked")))?;
    let (link, splits) = match (result, served) {
        (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
        (Ok(r), Ok(())) => r,
    };
    Ok(Validation {
        model: model.name().to_string(),
        precision,
        codec,
        runs,
        link,
        max_abs_error: splits.iter().map(|s| s.error.abs()).fold(0.0, f64::max),
        max_abs_corrected_error: splits
            .iter()
            .map(|s| s.corrected_error.abs())
            .fold(0.0, f64::max),
        correction,
        splits,
    })
}
