//! `dyno worker`: a pool of CloudWorker threads (`pool`) behind a data endpoint that
//! agents send activations to (`data`), registered with a coordinator and again whenever
//! the coordinator comes back (this file). A coordinator embeds the same pool and
//! endpoint.
use std::net::SocketAddr;

use dyno::home::Home;
use dyno::wire::{self, Identity, Message};
use tokio::net::TcpListener;

use crate::discovery;

mod data;
mod pool;

pub use data::serve_data;
pub use pool::{Batching, CloudWorker, Pool, RunTail, TailDone, TailError};

/// The host part peers should dial for a listener bound to `bound`.
pub fn reachable(bound: SocketAddr) -> String {
    if bound.ip().is_unspecified() {
        format!("127.0.0.1:{}", bound.port())
    } else {
        bound.to_string()
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
    let batching = pool::Batching::resolve(&cfg.batching, home, &cfg.model, None)?;
    let pool = Pool::start(home, &cfg.model, cfg.workers, cfg.queue, batching);
    actix_rt::spawn(serve_data(l, pool.clone(), me.clone(), cfg.fleet.max_frame));
    let advertise = cfg.advertise.clone().unwrap_or_else(|| reachable(data));
    let register = Message::RegisterWorker {
        name: cfg.name.clone(),
        data_addr: advertise,
        slots: cfg.workers.max(1) as u32,
        models: vec![cfg.model.clone()],
    };
    let (coordinators, max_frame, mdns) = (cfg.coordinators.clone(), cfg.fleet.max_frame, cfg.mdns);
    actix_rt::spawn(async move {
        loop {
            let (addr, mut conn) =
                discovery::connect(&me, max_frame, mdns, &coordinators, "not registered yet").await;
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
