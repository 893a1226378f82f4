//! `dyno worker`: a pool of CloudWorker threads (`pool`) behind a data endpoint that
//! agents send activations to (`data`), registered with a coordinator and again whenever
//! the coordinator comes back (this file). A coordinator embeds the same pool and
//! endpoint.
use std::net::SocketAddr;

use dyno::home::Home;
use dyno::wire::{self, Identity, Message};
use tokio::net::TcpListener;

use crate::discovery;

mod admission;
mod data;
mod pool;

pub use admission::Admission;
pub use data::serve_data;
pub use pool::{resolve_batching, Batching, CloudWorker, Pool, RunTail, TailDone, TailError};

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
    let key = cfg.fleet.server_key("worker")?;
    crate::metrics::init_worker();
    let listen = crate::config::bind_address(&cfg.listen, &key);
    let me = Identity {
        fleet: cfg.fleet.id.clone(),
        name: cfg.name.clone(),
        role: wire::Role::Worker,
        key,
    };
    let l = TcpListener::bind(&listen)
        .await
        .map_err(|e| anyhow::anyhow!("data endpoint {listen}: {e}"))?;
    let data = l.local_addr()?;
    let batching = resolve_batching(&cfg.batching, home, &cfg.model, None)?;
    let pool = Pool::start(home, &cfg.model, cfg.workers, cfg.queue, batching.clone());
    let admission = Admission::default();
    actix_rt::spawn(serve_data(
        l,
        pool.clone(),
        admission.clone(),
        me.clone(),
        cfg.fleet.max_frame,
    ));
    let advertise = cfg.advertise.clone().unwrap_or_else(|| reachable(data));
    let register = Message::RegisterWorker {
        name: cfg.name.clone(),
        data_addr: advertise,
        slots: cfg.workers.max(1) as u32,
        models: vec![cfg.model.clone()],
        batching: batching.clone(),
    };
    let (coordinators, max_frame, mdns) = (cfg.coordinators.clone(), cfg.fleet.max_frame, cfg.mdns);
    actix_rt::spawn(async move {
        loop {
            let (addr, conn) =
                discovery::connect(&me, max_frame, mdns, &coordinators, "not registered yet").await;
            tracing::info!(coordinator = %addr, "connected");
            crate::metrics::set_ready(true);
            let why = session(conn, &register, &pool, &admission).await;
            crate::metrics::set_ready(false);
            tracing::info!("{why}: reconnecting");
            discovery::pause_before_redial().await;
        }
    });
    Ok(Worker { data })
}

/// One registration with the coordinator: the load and a heartbeat every 0.5 s, and
/// the budgets it sends taken in as they come; returns why it ended (the coordinator
/// gone, or silent for 3 s).
async fn session(
    conn: wire::Conn,
    register: &Message,
    pool: &Pool,
    admission: &Admission,
) -> String {
    use tokio::time::Instant;
    use wire::session::{BEAT, SILENCE};
    let (tx, mut rx) = conn.split();
    let (out, writer) = wire::session::pump(tx);
    // The pump ends with the session.
    let _writer = tokio_util::task::AbortOnDropHandle::new(writer);
    if out.send(register.clone()).is_err() {
        return "not registered".into();
    }
    let mut tick = tokio::time::interval(BEAT);
    let mut seq = 0;
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if heard.elapsed() > SILENCE {
                    return "the coordinator is silent".into();
                }
                seq += 1;
                let load = Message::WorkerLoad {
                    queued: pool.queued() as u32,
                    slots: pool.slots as u32,
                    over_budget: admission.refused(),
                };
                if out.send(load).is_err() || out.send(Message::Heartbeat { seq }).is_err() {
                    return "lost the coordinator".into();
                }
            }
            m = rx.recv() => match m {
                Ok(Message::HeartbeatAck { .. }) => heard = Instant::now(),
                Ok(Message::Budgets(b)) => {
                    tracing::debug!(devices = b.len(), "budgets");
                    admission.set(&b);
                }
                Ok(m) => return format!("the coordinator sent {}", m.kind()),
                Err(e) => return format!("lost the coordinator: {e}"),
            },
        }
    }
}
