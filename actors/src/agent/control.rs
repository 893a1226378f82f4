//! The agent's control connection: finds the coordinator, registers the device, takes
//! its plans (published to the frames through a watch channel), forwards the frames'
//! reports and link samples, heartbeats (which measure the RTT), and probes the uplink
//! when the coordinator asks (`dyno::sched::control::ProbeRule`). Without a coordinator
//! the device runs device-only and keeps trying.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dashmap::DashMap;
use dyno::wire::session::{pump, BEAT, SILENCE};
use dyno::wire::{Assignment, Conn, DeviceInfo, FrameReport, Identity, Message};
use tokio::sync::{mpsc, watch};

use super::data::RoundTrip;
use super::uplink::{self, Uplink};
use crate::discovery;

/// What the frames and the uplink tell the coordinator, at most this many waiting: the
/// frames' reports while no coordinator listens are dropped, not kept without a limit
/// (they are discarded at the next connection anyway).
pub(super) const UPWARD_CAPACITY: usize = 1024;

/// What the frames and the uplink tell the coordinator.
pub(super) enum Upward {
    Report(FrameReport),
    /// A transfer the device timed itself (a stalled uplink).
    LinkSample {
        bytes: u64,
        seconds: f64,
    },
}

/// The largest probe a coordinator may ask for.
const MAX_PROBE: u32 = dyno::sched::control::PROBE.max_bytes;

pub(super) struct ControlLink {
    pub me: Identity,
    pub max_frame: usize,
    pub coordinators: Vec<String>,
    pub mdns: bool,
    pub info: DeviceInfo,
    pub uplink: Addr<Uplink>,
    /// The emulated link's one-way delay.
    pub one_way: Duration,
    pub plan: watch::Sender<Option<Assignment>>,
    pub plans: Arc<AtomicU64>,
    /// Where the heartbeats' round trips go (the data path times frames with them).
    pub rtt: Arc<RoundTrip>,
}

impl ControlLink {
    /// Runs until the agent ends (the task is aborted).
    pub async fn run(self, mut upward: mpsc::Receiver<Upward>) {
        loop {
            // Reports of the frames that ran while no coordinator was there.
            while upward.try_recv().is_ok() {}
            let (addr, conn) = discovery::connect(
                &self.me,
                self.max_frame,
                self.mdns,
                &self.coordinators,
                "device-only for now",
            )
            .await;
            tracing::info!(coordinator = %addr, "connected");
            self.session(conn, &mut upward).await;
            self.plan.send_replace(None);
            crate::discovery::pause_before_redial().await;
        }
    }

    async fn session(&self, conn: Conn, upward: &mut mpsc::Receiver<Upward>) {
        let (tx, mut rx) = conn.split();
        let (out, writer) = pump(tx);
        if out
            .send(Message::RegisterDevice(self.info.clone()))
            .is_err()
        {
            return;
        }
        // Probes in flight, by sequence number: (when handed to the uplink, bytes).
        let probes: Arc<DashMap<u64, (Instant, u32)>> = Arc::new(DashMap::new());
        let mut beats: HashMap<u64, Instant> = HashMap::new();
        let (mut seq, mut probe_seq) = (0u64, 0u64);
        let mut tick = tokio::time::interval(BEAT);
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if heard.elapsed() > SILENCE {
                        tracing::info!("the coordinator is silent; device-only until it answers");
                        break;
                    }
                    seq += 1;
                    beats.insert(seq, Instant::now());
                    beats.retain(|&s, _| s + 16 > seq);
                    if out.send(Message::Heartbeat { seq }).is_err() {
                        break;
                    }
                }
                u = upward.recv() => {
                    let m = match u {
                        Some(Upward::Report(r)) => Message::Report(r),
                        Some(Upward::LinkSample { bytes, seconds }) => {
                            Message::LinkSample { bytes, seconds }
                        }
                        None => break,
                    };
                    if out.send(m).is_err() {
                        break;
                    }
                }
                m = rx.recv() => {
                    heard = Instant::now();
                    match m {
                        Ok(Message::Plan(a)) => {
                            // The plan in force sent again with a fresher expectation
                            // (`sched::control::REFRESH`) is not a new plan.
                            let new = self.plan.borrow().as_ref().is_none_or(|p| {
                                (p.epoch, p.candidate, &p.worker)
                                    != (a.epoch, a.candidate, &a.worker)
                            });
                            if new {
                                tracing::info!(plan = %a.candidate, worker = ?a.worker, "plan");
                                self.plans.fetch_add(1, Ordering::Relaxed);
                            }
                            crate::metrics::set_ready(true);
                            let device = self.me.name.clone();
                            metrics::gauge!("dyno_plan_split", "device" => device.clone())
                                .set(f64::from(a.candidate.split));
                            metrics::gauge!("dyno_plan_precision", "device" => device)
                                .set(f64::from(a.candidate.precision.bits_per_value()));
                            self.plan.send_replace(Some(a));
                        }
                        Ok(Message::HeartbeatAck { seq }) => {
                            if let Some(t) = beats.remove(&seq) {
                                // The emulated link's round trip on top of the real one.
                                let rtt = t.elapsed() + 2 * self.one_way;
                                self.rtt.observe(rtt);
                                let _ = out.send(Message::LinkSample {
                                    bytes: 0,
                                    seconds: rtt.as_secs_f64(),
                                });
                            }
                        }
                        // One probe at a time: a request while one is on its way is
                        // answered by that one.
                        Ok(Message::ProbeRequest { .. }) if !probes.is_empty() => {}
                        Ok(Message::ProbeRequest { bytes }) if bytes <= MAX_PROBE => {
                            probe_seq += 1;
                            let (seq, out, probes) = (probe_seq, out.clone(), probes.clone());
                            probes.insert(seq, (Instant::now(), bytes));
                            let uplink = self.uplink.clone();
                            actix_rt::spawn(async move {
                                let t = Instant::now();
                                match uplink::cross(&uplink, bytes as usize).await {
                                    Ok((_, queued_s)) => {
                                        // Timed from its first bit out, as frames are.
                                        let first_bit = t + Duration::from_secs_f64(queued_s);
                                        probes.insert(seq, (first_bit, bytes));
                                        let padding = vec![0; bytes as usize];
                                        let _ = out.send(Message::Probe { seq, padding });
                                    }
                                    Err(_) => {
                                        probes.remove(&seq);
                                    }
                                }
                            });
                        }
                        Ok(Message::ProbeRequest { bytes }) => {
                            tracing::warn!(bytes, "a probe larger than {MAX_PROBE} bytes asked for: ignored");
                        }
                        Ok(Message::ProbeAck { seq }) => {
                            if let Some((_, (t, bytes))) = probes.remove(&seq) {
                                let secs = t.elapsed() + self.one_way;
                                let _ = out.send(Message::LinkSample {
                                    bytes: u64::from(bytes),
                                    seconds: secs.as_secs_f64(),
                                });
                            }
                        }
                        Ok(Message::Refused { reason }) => {
                            tracing::error!("the coordinator refused this device: {reason}");
                            break;
                        }
                        Ok(m) => {
                            tracing::warn!("coordinator sent {}: reconnecting", m.kind());
                            break;
                        }
                        Err(e) => {
                            tracing::info!("lost the coordinator: {e}; device-only until it is back");
                            break;
                        }
                    }
                }
            }
        }
        crate::metrics::set_ready(false);
        writer.abort();
    }
}
