//! The CloudWorker: tails on dedicated threads (a `SyncArbiter`, one libtorch intra-op
//! thread each), behind a data endpoint that agents send activations to.
//!
//! Admission is bounded: with `slots` threads busy and `queue` frames waiting, the next
//! frame is answered `busy` at once, and the agent finishes it on the device.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use dyno::home::Home;
use dyno::model::{zoo, Model};
use dyno::pack::tensor::unpack_tensor;
use dyno::pack::{DecodeLimits, Packer};
use dyno::wire::{self, Identity, Message};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::Instrument;

/// Runs one tail.
#[derive(Message)]
#[rtype(result = "Result<TailDone, String>")]
pub struct RunTail {
    pub packed: Vec<u8>,
    pub enqueued: Instant,
}

#[derive(Debug, Clone, Copy)]
pub struct TailDone {
    pub top1: i64,
    pub queue_s: f64,
    pub unpack_s: f64,
    pub tail_s: f64,
}

/// One worker thread with its own copy of the model.
pub struct CloudWorker {
    model: Result<Model, String>,
    packer: Packer,
    limits: DecodeLimits,
}

impl CloudWorker {
    pub fn new(home: &Home, model: &str) -> CloudWorker {
        // Several threads that each run libtorch with a full intra-op pool slow each
        // other several times over (docs/SCHEDULER.md): one each.
        tch::set_num_threads(1);
        CloudWorker {
            model: zoo::load(model, home).map_err(|e| e.to_string()),
            packer: Packer::default(),
            limits: DecodeLimits::default(),
        }
    }
}

impl Actor for CloudWorker {
    type Context = SyncContext<Self>;
}

impl Handler<RunTail> for CloudWorker {
    type Result = Result<TailDone, String>;

    fn handle(&mut self, m: RunTail, _: &mut Self::Context) -> Self::Result {
        let queue_s = m.enqueued.elapsed().as_secs_f64();
        let model = self.model.as_ref().map_err(|e| e.clone())?;
        let t = Instant::now();
        let (header, a) = unpack_tensor(&mut self.packer, &m.packed, &self.limits)
            .map_err(|e| format!("unpacking: {e}"))?;
        if header.model != model.name() || header.weights_hash != model.weights_hash() {
            return Err(format!(
                "the activation is of `{}` (weights {:016x}); this worker serves `{}` \
                 (weights {:016x})",
                header.model,
                header.weights_hash,
                model.name(),
                model.weights_hash()
            ));
        }
        let unpack_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let y = model
            .tail(&a, header.split as usize)
            .map_err(|e| e.to_string())?;
        let top1 = y.argmax(-1, false).int64_value(&[0]);
        Ok(TailDone {
            top1,
            queue_s,
            unpack_s,
            tail_s: t.elapsed().as_secs_f64(),
        })
    }
}

/// A pool of worker threads with bounded admission.
#[derive(Clone)]
pub struct Pool {
    addr: Addr<CloudWorker>,
    pub slots: usize,
    pub queue: usize,
    in_flight: Arc<AtomicUsize>,
}

impl Pool {
    pub fn start(home: &Home, model: &str, slots: usize, queue: usize) -> Pool {
        let (home, model) = (home.clone(), model.to_string());
        Pool {
            addr: SyncArbiter::start(slots.max(1), move || CloudWorker::new(&home, &model)),
            slots: slots.max(1),
            queue,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Frames admitted and not yet answered.
    pub fn queued(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Runs a tail, or says busy when the queue is full.
    pub async fn run(&self, packed: Vec<u8>) -> Result<TailDone, (bool, String)> {
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if n >= self.slots + self.queue {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err((true, format!("queue full ({n} frames)")));
        }
        let r = self
            .addr
            .send(RunTail {
                packed,
                enqueued: Instant::now(),
            })
            .await;
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        match r {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err((false, e)),
            Err(e) => Err((false, format!("worker thread gone: {e}"))),
        }
    }
}

/// Serves the data endpoint on `listener` until the process ends: each agent connection
/// is handshaken, then every `Infer` is answered with `InferOk` or `InferErr`. A peer that
/// fails the handshake or sends garbage is dropped with a logged reason.
pub async fn serve_data(listener: TcpListener, pool: Pool, me: Identity, max_frame: usize) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("data endpoint: accept failed: {e}");
                continue;
            }
        };
        let (pool, me) = (pool.clone(), me.clone());
        actix_rt::spawn(async move {
            let conn = match wire::accept(stream, &me, max_frame).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%peer, "data endpoint: refused a peer: {e}");
                    metrics::counter!("dyno_refused_peers_total", "endpoint" => "data")
                        .increment(1);
                    return;
                }
            };
            let name = conn.peer.clone();
            let (mut tx, mut rx) = conn.split();
            let (out, mut outq) = mpsc::unbounded_channel::<Message>();
            let writer = actix_rt::spawn(async move {
                while let Some(m) = outq.recv().await {
                    if tx.send(&m).await.is_err() {
                        break;
                    }
                }
            });
            loop {
                match rx.recv().await {
                    Ok(Message::Infer {
                        request, packed, ..
                    }) => {
                        let (pool, out) = (pool.clone(), out.clone());
                        // The frame's span, as the agent names it (device, request).
                        let span = tracing::info_span!("frame", device = %name, request);
                        actix_rt::spawn(
                            async move {
                                let m = match pool.run(packed).await {
                                    Ok(d) => {
                                        metrics::counter!("dyno_worker_inferences_total")
                                            .increment(1);
                                        tracing::debug!(
                                            queue_ms = d.queue_s * 1e3,
                                            tail_ms = (d.unpack_s + d.tail_s) * 1e3,
                                            "tail done"
                                        );
                                        Message::InferOk {
                                            request,
                                            top1: d.top1,
                                            queue_s: d.queue_s,
                                            unpack_s: d.unpack_s,
                                            tail_s: d.tail_s,
                                        }
                                    }
                                    Err((busy, reason)) => Message::InferErr {
                                        request,
                                        busy,
                                        reason,
                                    },
                                };
                                let _ = out.send(m);
                            }
                            .instrument(span),
                        );
                    }
                    Ok(Message::Heartbeat { seq }) => {
                        let _ = out.send(Message::HeartbeatAck { seq });
                    }
                    Ok(m) => {
                        tracing::warn!(%peer, %name, "data endpoint: dropped a peer that sent {}", m.kind());
                        break;
                    }
                    Err(wire::WireError::Closed) => break,
                    Err(e) => {
                        tracing::warn!(%peer, %name, "data endpoint: dropped a peer: {e}");
                        break;
                    }
                }
            }
            drop(out);
            let _ = writer.await;
        });
    }
}

/// A running `dyno worker`: its data endpoint, registered with a coordinator (and again
/// whenever the coordinator comes back).
pub struct Worker {
    pub data: std::net::SocketAddr,
}

/// Starts a worker process's parts inside the current actix system.
pub async fn start(cfg: &crate::config::WorkerConfig, home: &Home) -> anyhow::Result<Worker> {
    let key = cfg.fleet.key()?;
    let me = Identity {
        fleet: cfg.fleet.id.clone(),
        name: cfg.name.clone(),
        role: wire::Role::Worker,
        key,
    };
    let l = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("data endpoint {}: {e}", cfg.listen))?;
    let data = l.local_addr()?;
    let pool = Pool::start(home, &cfg.model, cfg.workers, cfg.queue);
    actix_rt::spawn(serve_data(l, pool.clone(), me.clone(), cfg.fleet.max_frame));
    let advertise = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| crate::coordinator::reachable(data));
    let register = Message::RegisterWorker {
        name: cfg.name.clone(),
        data_addr: advertise,
        slots: cfg.workers.max(1) as u32,
        models: vec![cfg.model.clone()],
    };
    let (coordinators, max_frame, mdns) = (cfg.coordinators.clone(), cfg.fleet.max_frame, cfg.mdns);
    actix_rt::spawn(async move {
        loop {
            let addrs = crate::discovery::candidates(&me.fleet, mdns, &coordinators).await;
            let mut found = None;
            for addr in addrs {
                match crate::agent::dial(&addr, &me, max_frame).await {
                    Ok(c) => {
                        found = Some((addr, c));
                        break;
                    }
                    Err(e) => tracing::info!(coordinator = %addr, "not registered ({e}); retrying"),
                }
            }
            let Some((addr, mut conn)) = found else {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            };
            if conn.send(&register).await.is_err() {
                continue;
            }
            tracing::info!(coordinator = %addr, "registered");
            let mut seq = 0;
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                tick.tick().await;
                seq += 1;
                let load = Message::WorkerLoad {
                    queued: pool.queued() as u32,
                    slots: pool.slots as u32,
                };
                if conn.send(&load).await.is_err()
                    || conn.send(&Message::Heartbeat { seq }).await.is_err()
                {
                    break;
                }
                match tokio::time::timeout(std::time::Duration::from_secs(3), conn.recv()).await {
                    Ok(Ok(Message::HeartbeatAck { .. })) => {}
                    Ok(Ok(m)) => {
                        tracing::warn!("coordinator sent {}: reconnecting", m.kind());
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::info!("lost the coordinator: {e}");
                        break;
                    }
                    Err(_) => {
                        tracing::info!("the coordinator is silent: reconnecting");
                        break;
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    });
    Ok(Worker { data })
}
