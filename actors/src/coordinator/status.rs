//! The fleet's status: the Scheduler's snapshot (`GetStatus`), and the client that asks a
//! coordinator for it (`dyno status`, `dyno load`).
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dyno::stats::percentile;
use dyno::wire::session::dial;
use dyno::wire::{DeviceStatus, FleetStatus, Identity, Message, WorkerStatus};

use super::scheduler::{SchedulerActor, RECENT_S};

#[derive(Message)]
#[rtype(result = "FleetStatus")]
pub struct GetStatus;

/// The `q` quantile of the latencies (seconds) of `recent` reports; NaN when empty.
fn quantile(recent: &VecDeque<(Instant, f64, bool)>, q: f64) -> f64 {
    let mut v: Vec<f64> = recent.iter().map(|r| r.1).collect();
    v.sort_by(f64::total_cmp);
    percentile(&v, q)
}

impl Handler<GetStatus> for SchedulerActor {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        let mut devices: Vec<DeviceStatus> = self
            .devices
            .iter()
            .map(|(id, d)| {
                // The window the rates are over: since its oldest recent report.
                let span = d
                    .recent
                    .front()
                    .map_or(0.0, |f| f.0.elapsed().as_secs_f64())
                    .clamp(1.0, RECENT_S);
                let link = self
                    .control
                    .link(id)
                    .unwrap_or(dyno::sched::control::STARTING_LINK);
                DeviceStatus {
                    id: id.clone(),
                    class: d.info.class.clone(),
                    plan: self.control.plan(id).cloned().map(|p| self.on_the_wire(p)),
                    bandwidth_mbps: link.bandwidth_bps / 1e6,
                    rtt_ms: link.rtt_s * 1e3,
                    frames: d.frames,
                    fallbacks: d.fallbacks,
                    over_budget: d.over_budget,
                    fps: d.recent.len() as f64 / span,
                    onload_fps: d.recent.iter().filter(|r| r.2).count() as f64 / span,
                    k_dev: self.control.feedback(id).map_or(f64::NAN, |f| f.k_dev),
                    latency_p50_ms: quantile(&d.recent, 0.5) * 1e3,
                    latency_p95_ms: quantile(&d.recent, 0.95) * 1e3,
                    registrations: self.registrations.get(id).copied().unwrap_or(0),
                }
            })
            .collect();
        devices.sort_by(|a, b| a.id.cmp(&b.id));
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|(name, w)| {
                let (k_cloud, queue_s) = self
                    .control
                    .worker_feedback(name)
                    .unwrap_or((f64::NAN, f64::NAN));
                WorkerStatus {
                    name: name.clone(),
                    data_addr: w.data_addr.clone(),
                    slots: w.slots,
                    queued: w.queued,
                    k_cloud,
                    queue_ms: queue_s * 1e3,
                    over_budget: w.over_budget,
                }
            })
            .collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        MessageResult(FleetStatus {
            devices,
            workers,
            plans_sent: self.plans_sent,
            pool_utilisation: self.control.utilisation(),
        })
    }
}

/// The fleet's status from the coordinator at `addr`, as `me` (an observer): the dial's
/// timeout to connect, 5 s for the answer.
pub async fn fetch_status(
    addr: &str,
    me: &Identity,
    max_frame: usize,
) -> anyhow::Result<FleetStatus> {
    let wait = Duration::from_secs(5);
    let mut conn = dial(addr, me, max_frame).await.map_err(|e| match e {
        dyno::wire::WireError::Io(e) => {
            anyhow::anyhow!("coordinator {addr}: {e}: is it running there?")
        }
        e => anyhow::anyhow!("coordinator {addr}: {e}"),
    })?;
    conn.send(&Message::StatusRequest).await?;
    loop {
        match tokio::time::timeout(wait, conn.recv()).await {
            Err(_) => anyhow::bail!("coordinator {addr}: no status in 5 s"),
            Ok(Ok(Message::Status(st))) => return Ok(st),
            Ok(Ok(Message::HeartbeatAck { .. })) => continue,
            Ok(Ok(m)) => {
                anyhow::bail!("coordinator {addr} sent {} instead of its status", m.kind())
            }
            Ok(Err(e)) => anyhow::bail!("coordinator {addr}: {e}"),
        }
    }
}
