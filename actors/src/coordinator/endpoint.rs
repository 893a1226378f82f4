//! The control endpoint: one session per peer. Agents register, report frames and link
//! samples, and answer probe requests; workers register and report their load;
//! observers ask for the fleet's status. Everything goes to the Scheduler actor; a peer
//! silent for the heartbeat timeout, or one that sends what its role may not, is dropped.
use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use dyno::wire::session::{self, pump};
use dyno::wire::{Conn, Identity, Message, Role, WireError};
use tokio::net::TcpListener;

use super::scheduler::{
    Admits, DeviceJoined, DeviceLeft, FrameDone, LinkSample, SchedulerActor, WorkerJoined,
    WorkerLeft, WorkerLoad,
};
use super::status::GetStatus;

/// Who may connect to the control endpoint: devices, workers and observers (`dyno
/// status`); not another coordinator.
pub const CONTROL_ADMITS: &[Role] = &[Role::Agent, Role::Worker, Role::Observer];

/// Serves the control endpoint on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    me: Identity,
    max_frame: usize,
    timeout: Duration,
    scheduler: Addr<SchedulerActor>,
) {
    session::serve(
        listener,
        me,
        max_frame,
        "control",
        CONTROL_ADMITS,
        move |conn, peer| control_session(conn, peer, timeout, scheduler.clone()),
    )
    .await
}

async fn control_session(
    conn: Conn,
    peer: SocketAddr,
    timeout: Duration,
    scheduler: Addr<SchedulerActor>,
) {
    let role = conn.role;
    let name = conn.peer.clone();
    let (tx, mut rx) = conn.split();
    let (out, mut writer) = pump(tx);
    let mut device: Option<String> = None;
    let mut worker: Option<String> = None;
    // Set when the peer is refused: its reason is written before the connection closes.
    let mut refused = false;
    loop {
        let m = match tokio::time::timeout(timeout, rx.recv()).await {
            Err(_) => {
                tracing::warn!(%peer, %name, "control endpoint: silent for {timeout:?}: gone");
                break;
            }
            Ok(Err(WireError::Closed)) => break,
            Ok(Err(e)) => {
                tracing::warn!(%peer, %name, "control endpoint: dropped a peer: {e}");
                break;
            }
            Ok(Ok(m)) => m,
        };
        match (role, m) {
            (_, Message::Heartbeat { seq }) => {
                let _ = out.send(Message::HeartbeatAck { seq });
            }
            (Role::Agent, Message::RegisterDevice(info)) if info.id != name => {
                let reason = format!(
                    "`{name}` may not register as device `{}`: a device registers under the \
                     name it shook hands with",
                    info.id
                );
                tracing::warn!(%peer, "control endpoint: {reason}");
                metrics::counter!("dyno_refused_peers_total", "endpoint" => "control").increment(1);
                let _ = out.send(Message::Refused { reason });
                refused = true;
                break;
            }
            (Role::Agent, Message::RegisterDevice(info)) => {
                device = Some(info.id.clone());
                scheduler.do_send(DeviceJoined {
                    info,
                    tx: out.clone(),
                });
            }
            (Role::Agent, Message::Report(report)) => {
                let Some(id) = device.clone() else { break };
                if report.bytes > 0 && !report.fallback {
                    scheduler.do_send(LinkSample {
                        id: id.clone(),
                        bytes: report.bytes,
                        seconds: report.transfer_s,
                    });
                }
                scheduler.do_send(FrameDone { id, report });
            }
            (Role::Agent, Message::LinkSample { bytes, seconds }) => {
                let Some(id) = device.clone() else { break };
                scheduler.do_send(LinkSample { id, bytes, seconds });
            }
            (Role::Agent, Message::Probe { seq, .. }) => {
                let _ = out.send(Message::ProbeAck { seq });
            }
            (Role::Worker, Message::RegisterWorker { name: wname, .. }) if wname != name => {
                let reason = format!(
                    "`{name}` may not register as worker `{wname}`: a worker registers under \
                     the name it shook hands with"
                );
                tracing::warn!(%peer, "control endpoint: {reason}");
                metrics::counter!("dyno_refused_peers_total", "endpoint" => "control").increment(1);
                let _ = out.send(Message::Refused { reason });
                refused = true;
                break;
            }
            (
                Role::Worker,
                Message::RegisterWorker {
                    name: wname,
                    data_addr,
                    slots,
                    batching,
                    ..
                },
            ) => {
                worker = Some(wname.clone());
                scheduler.do_send(WorkerJoined {
                    name: wname,
                    data_addr,
                    slots,
                    batching,
                    admits: Admits::Remote(out.clone()),
                });
            }
            (Role::Observer, Message::StatusRequest) => match scheduler.send(GetStatus).await {
                Ok(st) => {
                    let _ = out.send(Message::Status(st));
                }
                Err(e) => {
                    tracing::warn!("status: the scheduler did not answer: {e}");
                    break;
                }
            },
            (
                Role::Worker,
                Message::WorkerLoad {
                    queued,
                    over_budget,
                    ..
                },
            ) => {
                if let Some(w) = &worker {
                    scheduler.do_send(WorkerLoad {
                        name: w.clone(),
                        queued,
                        over_budget,
                    });
                }
            }
            (_, m) => {
                tracing::warn!(%peer, %name, "control endpoint: dropped a peer that sent {}", m.kind());
                break;
            }
        }
    }
    if let Some(id) = device {
        scheduler.do_send(DeviceLeft {
            id,
            tx: out.clone(),
        });
    }
    if let Some(name) = worker {
        scheduler.do_send(WorkerLeft { name });
    }
    drop(out);
    if refused {
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
    }
    writer.abort();
}
