//! One synthetic agent of `dyno load`: a task on the real protocol (handshake,
//! registration, heartbeats, plans, a report per frame) and the real data path (a
//! generated input packed at the plan's precision, answered by a worker's real tail).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dyno::pack::{PackOptions, Packer, TensorId};
use dyno::wire::session::{dial, pump};
use dyno::wire::{self, DeviceInfo, FrameReport, Identity, Key, Message, Role, Stages};
use tokio::sync::watch;

#[derive(Default)]
pub(super) struct Stats {
    pub(super) registered: AtomicU64,
    pub(super) planned: AtomicU64,
    pub(super) sent: AtomicU64,
    pub(super) answered: AtomicU64,
    pub(super) busy: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) lost: AtomicU64,
    /// Answers to a frame of this connection other than the one waiting: each load agent
    /// has one frame in flight, so these are second answers (must stay 0).
    pub(super) duplicates: AtomicU64,
    pub(super) not_onloading: AtomicU64,
    pub(super) reports: AtomicU64,
    pub(super) control_lost: AtomicU64,
    pub(super) control_rtt: Mutex<Vec<f64>>,
    pub(super) frame_rtt: Mutex<Vec<f64>>,
    pub(super) last_planned: Mutex<Option<Instant>>,
}

pub(super) struct Ctx {
    pub(super) coordinator: String,
    pub(super) fleet: String,
    pub(super) key: Key,
    pub(super) rate_fps: f64,
    pub(super) timeout: Duration,
    pub(super) stop_frames: Instant,
    pub(super) weights_hash: u64,
    pub(super) stats: Stats,
    /// Flips to true once the final status is taken: agents then hang up.
    pub(super) release: watch::Receiver<bool>,
}

/// The fashion_cnn input: one 28x28 grey image.
pub(super) const SHAPE: [usize; 4] = [1, 1, 28, 28];
pub(super) const MODEL: &str = "fashion_cnn";

/// One synthetic agent: connects, registers, heartbeats, and sends a frame to its worker
/// every 1/rate seconds while its plan onloads from the input.
pub(super) async fn agent(i: usize, ctx: Arc<Ctx>) {
    let me = Identity {
        fleet: ctx.fleet.clone(),
        name: format!("load-{i:04}"),
        role: Role::Agent,
        key: ctx.key.clone(),
    };
    let st = &ctx.stats;
    let connect_by = Instant::now() + Duration::from_secs(30);
    let conn = loop {
        match dial(&ctx.coordinator, &me, wire::DEFAULT_MAX_FRAME).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > connect_by => {
                tracing::warn!(agent = %me.name, "could not connect in 30 s: {e}");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let (tx, mut rx) = conn.split();
    let (out, writer) = pump(tx);
    let info = DeviceInfo {
        id: me.name.clone(),
        model: MODEL.into(),
        class: "load".into(),
        slowdown: 1.0,
        threads: 1,
        slo: dyno::sched::slo::Slo::default(),
        policy: dyno::sched::Policy::CloudOnly,
        in_flight: 1,
    };
    if out.send(Message::RegisterDevice(info)).is_err() {
        st.control_lost.fetch_add(1, Ordering::Relaxed);
        return;
    }
    st.registered.fetch_add(1, Ordering::Relaxed);
    let (plan_tx, plan) = watch::channel(None);
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let reader = {
        let (ctx, sent_at) = (ctx.clone(), sent_at.clone());
        tokio::spawn(async move {
            let st = &ctx.stats;
            let mut planned = false;
            loop {
                match rx.recv().await {
                    Ok(Message::Plan(a)) => {
                        if !planned && a.worker.is_some() {
                            planned = true;
                            st.planned.fetch_add(1, Ordering::Relaxed);
                            *st.last_planned.lock().expect("not poisoned") = Some(Instant::now());
                        }
                        let _ = plan_tx.send(Some(a));
                    }
                    Ok(Message::HeartbeatAck { seq }) => {
                        if let Some(t) = sent_at.lock().expect("not poisoned").remove(&seq) {
                            let ms = t.elapsed().as_secs_f64() * 1e3;
                            st.control_rtt.lock().expect("not poisoned").push(ms);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if !*ctx.release.borrow() {
                            st.control_lost.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = plan_tx.send(None);
                        break;
                    }
                }
            }
        })
    };
    let beats = {
        let (out, sent_at) = (out.clone(), sent_at.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(dyno::wire::session::BEAT);
            for seq in 1u64.. {
                tick.tick().await;
                sent_at
                    .lock()
                    .expect("not poisoned")
                    .insert(seq, Instant::now());
                if out.send(Message::Heartbeat { seq }).is_err() {
                    break;
                }
            }
        })
    };
    frames(i, &ctx, &me, &plan, &out).await;
    let mut release = ctx.release.clone();
    let _ = release.wait_for(|r| *r).await;
    beats.abort();
    reader.abort();
    drop(out);
    let _ = writer.await;
}

/// A worker's answer to one frame: its queue, unpack and tail seconds, or an error.
enum Answer {
    Ok(f64, f64, f64),
    Err { busy: bool },
}

/// The frame loop of agent `i`, until the run stops sending frames.
async fn frames(
    i: usize,
    ctx: &Ctx,
    me: &Identity,
    plan: &watch::Receiver<Option<wire::Assignment>>,
    out: &dyno::wire::session::Outbox,
) {
    let st = &ctx.stats;
    let period = Duration::from_secs_f64(1.0 / ctx.rate_fps);
    // Agents' ticks spread over the period (a golden-ratio sequence), not in step.
    let phase = period.mul_f64((i as f64 * 0.618_034).fract());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut data: Option<(String, wire::Conn)> = None;
    let mut packer = Packer::default();
    let mut packed = Vec::new();
    let mut values = vec![0f32; SHAPE.iter().product()];
    let mut request = 0u64;
    while Instant::now() < ctx.stop_frames {
        tick.tick().await;
        let Some(a) = plan.borrow().clone() else {
            st.not_onloading.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(worker) = a.worker.clone().filter(|_| a.candidate.split == 0) else {
            st.not_onloading.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if data.as_ref().is_none_or(|(addr, _)| *addr != worker) {
            match dial(&worker, me, wire::DEFAULT_MAX_FRAME).await {
                Ok(c) => data = Some((worker.clone(), c)),
                Err(e) => {
                    tracing::warn!(agent = %me.name, %worker, "data connection: {e}");
                    st.not_onloading.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some((_, conn)) = data.as_mut() else {
            continue;
        };
        request += 1;
        // A synthetic image: a gradient that moves with the agent and the frame.
        for (k, v) in values.iter_mut().enumerate() {
            *v = ((k + i * 7 + request as usize * 13) % 256) as f32 / 255.0;
        }
        let t = Instant::now();
        let id = TensorId {
            model: MODEL,
            weights_hash: ctx.weights_hash,
            split: 0,
        };
        let opts = PackOptions::new(a.candidate.precision, a.candidate.codec);
        if let Err(e) = packer.pack_into(&values, &SHAPE, &id, &opts, &mut packed) {
            tracing::warn!(agent = %me.name, "pack: {e}");
            continue;
        }
        let pack_s = t.elapsed().as_secs_f64();
        let bytes = packed.len() as u64;
        st.sent.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let infer = Message::Infer {
            request,
            device: me.name.clone(),
            packed: packed.clone(),
        };
        let answer = tokio::time::timeout(ctx.timeout, async {
            conn.send(&infer).await?;
            loop {
                match conn.recv().await? {
                    Message::InferOk {
                        request: r,
                        queue_s,
                        unpack_s,
                        tail_s,
                        ..
                    } if r == request => return Ok(Answer::Ok(queue_s, unpack_s, tail_s)),
                    Message::InferErr {
                        request: r, busy, ..
                    } if r == request => return Ok(Answer::Err { busy }),
                    Message::InferOk { .. } | Message::InferErr { .. } => {
                        st.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => continue,
                }
            }
        })
        .await;
        let rtt_s = sent.elapsed().as_secs_f64();
        let (stages, fallback) = match answer {
            Ok(Ok(Answer::Ok(queue_s, unpack_s, tail_s))) => {
                st.answered.fetch_add(1, Ordering::Relaxed);
                st.frame_rtt.lock().expect("not poisoned").push(rtt_s * 1e3);
                let stages = Stages {
                    pack_s,
                    wire_s: (rtt_s - queue_s - unpack_s - tail_s).max(0.0),
                    queue_s,
                    unpack_s,
                    tail_s,
                    ..Stages::default()
                };
                (stages, false)
            }
            Ok(Ok(Answer::Err { busy })) => {
                let counter = if busy { &st.busy } else { &st.failed };
                counter.fetch_add(1, Ordering::Relaxed);
                (Stages::default(), true)
            }
            Ok(Err::<_, wire::WireError>(e)) => {
                tracing::warn!(agent = %me.name, "data connection lost with a frame on it: {e}");
                st.lost.fetch_add(1, Ordering::Relaxed);
                data = None;
                continue;
            }
            Err(_) => {
                st.lost.fetch_add(1, Ordering::Relaxed);
                data = None;
                continue;
            }
        };
        // A real agent finishes a refused frame on the device and reports it as a fallback.
        let report = FrameReport {
            request,
            candidate: a.candidate,
            stages,
            bytes,
            transfer_s: stages.wire_s,
            fallback,
            // The load generator sends at its own rate: it keeps no budget.
            over_budget: false,
        };
        if out.send(Message::Report(report)).is_ok() {
            st.reports.fetch_add(1, Ordering::Relaxed);
        }
    }
}
