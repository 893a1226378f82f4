//! The data path to the workers: one connection per worker, shared by every frame in
//! flight; each frame waits for its own answer, matched by request id.
//!
//! A frame's transfer is timed from its first bit out to its delivery (its answer less
//! the worker's time). Frames in flight together share the link: a frame that left
//! while the one before it was still on the wire started crossing only when that one
//! was delivered, and is timed from then (plus one round trip, as every sample
//! carries), or the link would be measured at a fraction of its rate.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use dashmap::DashMap;
use dyno::sched::bandwidth::{Estimator, EstimatorConfig};
use dyno::wire::session::{dial, pump, Outbox};
use dyno::wire::{Identity, Message, Stages};
use tokio::sync::oneshot;

use super::uplink::{self, Stalled, Uplink};

/// Why the cloud did not answer a frame (the Device then finishes it).
#[derive(Debug, thiserror::Error)]
pub(super) enum CloudError {
    #[error("worker {addr}: {source}")]
    Connect {
        addr: String,
        source: dyno::wire::WireError,
    },
    #[error("the uplink did not carry the frame within {0:?}")]
    Stalled(Duration),
    #[error("uplink: {0}")]
    Uplink(String),
    #[error("the data connection is closed")]
    Closed,
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    #[error("the data connection broke")]
    Broke,
    #[error("worker busy: {0}")]
    Busy(String),
    #[error("worker error: {0}")]
    Worker(String),
    #[error("unexpected {0}")]
    Unexpected(&'static str),
    #[error("no worker assigned")]
    NoWorker,
    #[error("worker {addr} was unreachable: the next attempt in {retry_in:?}")]
    BackingOff { addr: String, retry_in: Duration },
}

/// A worker address whose dial failed: frames fall back at once until `retry_at`
/// (`discovery::redial_backoff`'s pauses, one more with each failure), instead of every
/// frame of every agent dialling a worker that is down.
struct Down {
    failures: usize,
    retry_at: Instant,
}

/// A connection to one worker's data endpoint.
#[derive(Clone)]
struct DataConn {
    tx: Outbox,
    /// Frames waiting for their answer, by request id.
    pending: Arc<DashMap<u64, oneshot::Sender<Message>>>,
    alive: Arc<AtomicBool>,
    /// When the latest frame on this connection reached the worker.
    delivered: Arc<Mutex<Option<Instant>>>,
}

/// The device's round trip as its heartbeats measure it: the link estimator's RTT (the
/// smallest of the last few; a heartbeat that waited behind frames measured the queue).
pub(super) struct RoundTrip {
    start: Instant,
    estimator: Mutex<Estimator>,
}

impl Default for RoundTrip {
    fn default() -> Self {
        RoundTrip {
            start: Instant::now(),
            estimator: Mutex::new(Estimator::new(EstimatorConfig {
                window: 8,
                ..EstimatorConfig::default()
            })),
        }
    }
}

impl RoundTrip {
    pub fn observe(&self, rtt: Duration) {
        let now_s = self.start.elapsed().as_secs_f64();
        let mut e = self.estimator.lock().unwrap_or_else(|e| e.into_inner());
        e.observe_rtt(now_s, rtt.as_secs_f64());
    }

    pub fn floor(&self) -> Duration {
        let e = self.estimator.lock().unwrap_or_else(|e| e.into_inner());
        Duration::from_secs_f64(e.rtt_s().unwrap_or(0.0))
    }
}

/// How a frame's wait for the cloud ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Its answer arrived and was taken.
    Answered,
    /// It stopped waiting (timeout, uplink stall, closed connection) and finished on
    /// the device.
    GaveUp,
}

/// What arrives for frames that no longer wait, counted where it arrives: a second
/// answer to a frame already answered (a duplicate: must never happen), or an answer to
/// a frame that gave up waiting (late: expected after a stall). Shared by every
/// connection, as a duplicate may come from another worker.
#[derive(Default)]
pub(super) struct Answers {
    settled: DashMap<u64, Settled>,
    duplicates: AtomicU64,
    late: AtomicU64,
}

/// Settled frames remembered to tell a duplicate from a late answer: the latest this
/// many request ids.
const REMEMBERED: u64 = 1 << 16;

impl Answers {
    fn settle(&self, request: u64, how: Settled) {
        self.settled.insert(request, how);
        if request % 4096 == 0 {
            self.settled.retain(|&r, _| r + REMEMBERED > request);
        }
    }

    /// An answer came for `request` and nobody waits for it.
    fn unclaimed(&self, device: &str, worker: &str, request: u64) {
        let device = device.to_string();
        if self.settled.get(&request).as_deref() == Some(&Settled::Answered) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("dyno_duplicate_answers_total", "device" => device).increment(1);
            tracing::error!(
                worker,
                request,
                "a second answer to a frame already answered"
            );
        } else {
            self.late.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("dyno_late_answers_total", "device" => device).increment(1);
            tracing::info!(
                worker,
                request,
                "an answer after its frame gave up: ignored"
            );
        }
    }

    /// (duplicates, late answers) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.duplicates.load(Ordering::Relaxed),
            self.late.load(Ordering::Relaxed),
        )
    }
}

/// The agent's connections to workers, by address.
pub(super) struct DataPath {
    me: Identity,
    max_frame: usize,
    conns: DashMap<String, DataConn>,
    /// Workers whose last dial failed, by address.
    down: DashMap<String, Down>,
    uplink: Addr<Uplink>,
    /// The downlink's one-way delay.
    one_way: Duration,
    rtt: Arc<RoundTrip>,
    answers: Arc<Answers>,
}

impl DataPath {
    pub fn new(
        me: Identity,
        max_frame: usize,
        uplink: Addr<Uplink>,
        one_way: Duration,
        rtt: Arc<RoundTrip>,
    ) -> Self {
        DataPath {
            me,
            max_frame,
            conns: DashMap::new(),
            down: DashMap::new(),
            uplink,
            one_way,
            rtt,
            answers: Arc::default(),
        }
    }

    /// The frame stops waiting for its answer, if it still did.
    fn give_up(&self, conn: &DataConn, request: u64) {
        if conn.pending.remove(&request).is_some() {
            self.answers.settle(request, Settled::GaveUp);
        }
    }

    /// What arrived for frames that no longer waited.
    pub fn answers(&self) -> &Answers {
        &self.answers
    }

    async fn conn(&self, addr: &str) -> Result<DataConn, CloudError> {
        if let Some(c) = self.conns.get(addr) {
            if c.alive.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        if let Some(d) = self.down.get(addr) {
            let now = Instant::now();
            if now < d.retry_at {
                return Err(CloudError::BackingOff {
                    addr: addr.to_string(),
                    retry_in: d.retry_at - now,
                });
            }
        }
        let conn = match dial(addr, &self.me, self.max_frame).await {
            Ok(c) => {
                self.down.remove(addr);
                c
            }
            Err(source) => {
                let failures = self.down.get(addr).map_or(0, |d| d.failures) + 1;
                let pause = crate::discovery::redial_backoff()
                    .nth(failures - 1)
                    .unwrap_or(Duration::from_secs(2));
                self.down.insert(
                    addr.to_string(),
                    Down {
                        failures,
                        retry_at: Instant::now() + pause,
                    },
                );
                return Err(CloudError::Connect {
                    addr: addr.to_string(),
                    source,
                });
            }
        };
        let (tx, mut rx) = conn.split();
        let (out, writer) = pump(tx);
        let c = DataConn {
            tx: out,
            pending: Arc::new(DashMap::new()),
            alive: Arc::new(AtomicBool::new(true)),
            delivered: Arc::new(Mutex::new(None)),
        };
        let alive = c.alive.clone();
        actix_rt::spawn(async move {
            let _ = writer.await;
            alive.store(false, Ordering::Release);
        });
        let (pending, alive) = (c.pending.clone(), c.alive.clone());
        let (answers, device) = (self.answers.clone(), self.me.name.clone());
        let worker = addr.to_string();
        actix_rt::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(m @ (Message::InferOk { .. } | Message::InferErr { .. })) => {
                        let request = match &m {
                            Message::InferOk { request, .. }
                            | Message::InferErr { request, .. } => *request,
                            _ => unreachable!("matched above"),
                        };
                        match pending.remove(&request) {
                            Some((_, w)) => {
                                answers.settle(request, Settled::Answered);
                                let _ = w.send(m);
                            }
                            None => answers.unclaimed(&device, &worker, request),
                        }
                    }
                    Ok(Message::HeartbeatAck { .. }) => {}
                    Ok(m) => {
                        tracing::warn!(%worker, "worker sent {}: dropping the connection", m.kind());
                        break;
                    }
                    Err(e) => {
                        tracing::info!(%worker, "data connection ended: {e}");
                        break;
                    }
                }
            }
            alive.store(false, Ordering::Release);
            // Waiters see their sender dropped: their frames finish on the device.
            pending.clear();
        });
        self.conns.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Sends one activation through the uplink to the worker at `addr` and waits for its
    /// answer: (top1, the worker's stages, wire seconds).
    pub async fn infer(
        &self,
        addr: &str,
        request: u64,
        packed: Vec<u8>,
        timeout: Duration,
    ) -> Result<(i64, Stages, f64), CloudError> {
        let conn = self.conn(addr).await?;
        let (tx, rx) = oneshot::channel();
        conn.pending.insert(request, tx);
        let t = Instant::now();
        // The timeout covers the uplink as well as the answer: a link that carries
        // nothing must not hold the frame (and those behind it) for longer.
        let deadline = tokio::time::Instant::now() + timeout;
        let bytes = packed.len();
        let (uplink_s, queued_s) =
            match tokio::time::timeout_at(deadline, uplink::cross(&self.uplink, bytes)).await {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    self.give_up(&conn, request);
                    return Err(CloudError::Uplink(e));
                }
                Err(_) => {
                    self.give_up(&conn, request);
                    self.uplink.do_send(Stalled {
                        bytes,
                        waited: t.elapsed(),
                    });
                    return Err(CloudError::Stalled(timeout));
                }
            };
        let sent = conn.tx.send(Message::Infer {
            request,
            device: self.me.name.clone(),
            packed,
        });
        if sent.is_err() {
            self.give_up(&conn, request);
            return Err(CloudError::Closed);
        }
        let answer = tokio::time::timeout_at(deadline, rx).await;
        let answered = Instant::now();
        self.give_up(&conn, request);
        let m = match answer {
            Err(_) => return Err(CloudError::NoAnswer(timeout)),
            Ok(Err(_)) => return Err(CloudError::Broke),
            Ok(Ok(m)) => m,
        };
        // The answer comes back over the downlink's delay.
        let down = Instant::now();
        tokio::time::sleep(self.one_way).await;
        let downlink_s = down.elapsed().as_secs_f64();
        match m {
            Message::InferOk {
                top1,
                queue_s,
                unpack_s,
                tail_s,
                batch,
                ..
            } => {
                let worker = Duration::from_secs_f64((queue_s + unpack_s + tail_s).max(0.0));
                // Timed from the first bit out (waiting behind its own earlier frames in
                // the emulated link says nothing about the link's rate) or, if the frame
                // before it was still crossing, from that one's delivery.
                let first_bit = t + Duration::from_secs_f64(queued_s);
                let delivered = answered.checked_sub(worker).unwrap_or(first_bit);
                let rtt = self.rtt.floor();
                let before = {
                    let mut d = conn.delivered.lock().unwrap_or_else(|e| e.into_inner());
                    let before = *d;
                    *d = Some(before.map_or(delivered, |b| b.max(delivered)));
                    before
                };
                let wire_s = match before {
                    Some(b) if b > first_bit + rtt && b < delivered => {
                        (delivered - b + rtt).as_secs_f64()
                    }
                    // The answer has yet to cross the emulated downlink: a sample holds
                    // one whole round trip, as the estimator subtracts one (without it,
                    // 56 kB on a 20 Mbit/s link with a 20 ms RTT measured 36 Mbit/s).
                    _ => (delivered.saturating_duration_since(first_bit) + self.one_way)
                        .as_secs_f64(),
                };
                Ok((
                    top1,
                    Stages {
                        queue_s,
                        unpack_s,
                        tail_s,
                        batch,
                        link_s: uplink_s + downlink_s,
                        ..Stages::default()
                    },
                    wire_s,
                ))
            }
            Message::InferErr { busy, reason, .. } => Err(if busy {
                CloudError::Busy(reason)
            } else {
                CloudError::Worker(reason)
            }),
            m => Err(CloudError::Unexpected(m.kind())),
        }
    }
}
