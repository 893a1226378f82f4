//! `dyno coordinator`: the Scheduler actor (the fleet's control state, `scheduler`), the
//! control endpoint (`endpoint`), the fleet's status (`status`), and an embedded
//! CloudWorker pool with its data endpoint (`crate::worker`).
use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use dyno::config::Devices;
use dyno::home::Home;
use dyno::sched::control::{Sharing, EMBEDDED_WORKER};
use dyno::sched::perf::Tables;
use dyno::wire::{Identity, Role};
use tokio::net::TcpListener;

use crate::config::CoordinatorConfig;
use crate::worker::{self, reachable, Admission, Pool};

mod endpoint;
mod scheduler;
mod status;

pub use dyno::wire::{DeviceStatus, FleetStatus, WorkerStatus};
pub use scheduler::{
    Admits, DeviceJoined, DeviceLeft, FrameDone, LinkSample, Replan, SchedulerActor, WorkerJoined,
    WorkerLeft, WorkerLoad, RECENT_S,
};
pub use status::{fetch_status, GetStatus};

/// A running coordinator.
pub struct Coordinator {
    pub control: SocketAddr,
    pub data: Option<SocketAddr>,
    pub scheduler: Addr<SchedulerActor>,
    /// The mDNS advertisement, withdrawn when this is dropped.
    pub advert: Option<crate::discovery::Advert>,
}

/// Loads the model's tables from its profiles and the device-classes file; also the
/// cloud's slowdown.
pub fn tables(
    home: &Home,
    model: &str,
    devices: Option<&std::path::Path>,
) -> anyhow::Result<(Tables, f64)> {
    let classes =
        Devices::load(&devices.map_or_else(|| Devices::default_path(home), |p| p.to_path_buf()))?;
    Ok((classes.tables(home, model)?, classes.cloud.slowdown))
}

/// Starts a coordinator inside the current actix system.
pub async fn start(cfg: &CoordinatorConfig, home: &Home) -> anyhow::Result<Coordinator> {
    let key = cfg.fleet.server_key("coordinator")?;
    crate::metrics::init_coordinator();
    if cfg.workers > 0 {
        crate::metrics::init_worker();
    }
    let (listen, data_listen) = (
        crate::config::bind_address(&cfg.listen, &key),
        crate::config::bind_address(&cfg.data_listen, &key),
    );
    let (tables, cloud_slowdown) = tables(home, &cfg.model, cfg.devices.as_deref())?;
    let sharing = if cfg.fleet_aware {
        Sharing::FleetAware
    } else {
        Sharing::PerDevice
    };
    let scheduler = SchedulerActor::new(
        tables,
        cloud_slowdown,
        sharing,
        Duration::from_millis(cfg.replan_ms.max(50)),
        Duration::from_millis(cfg.replan_gap_ms),
    )
    .start();
    let me = Identity {
        fleet: cfg.fleet.id.clone(),
        name: "coordinator".into(),
        role: Role::Coordinator,
        key,
    };
    let mut data = None;
    if cfg.workers > 0 {
        let l = TcpListener::bind(&data_listen)
            .await
            .with_context(|| format!("data endpoint {data_listen}"))?;
        let addr = l.local_addr()?;
        let batching =
            worker::resolve_batching(&cfg.batching, home, &cfg.model, cfg.devices.as_deref())?;
        let pool = Pool::start(home, &cfg.model, cfg.workers, cfg.queue, batching.clone());
        let admission = Admission::default();
        actix_rt::spawn(worker::serve_data(
            l,
            pool.clone(),
            admission.clone(),
            me.clone(),
            cfg.fleet.max_frame,
        ));
        scheduler.do_send(WorkerJoined {
            name: EMBEDDED_WORKER.into(),
            data_addr: reachable(addr),
            slots: cfg.workers as u32,
            batching,
            admits: Admits::Here(admission.clone()),
        });
        data = Some(addr);
        let s = scheduler.clone();
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(dyno::wire::session::BEAT);
            loop {
                tick.tick().await;
                s.do_send(WorkerLoad {
                    name: EMBEDDED_WORKER.into(),
                    queued: pool.queued() as u32,
                    over_budget: admission.refused(),
                });
            }
        });
    }
    let l = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("control endpoint {listen}"))?;
    let control = l.local_addr()?;
    let timeout = Duration::from_millis(cfg.heartbeat_timeout_ms.max(100));
    actix_rt::spawn(endpoint::serve(
        l,
        me,
        cfg.fleet.max_frame,
        timeout,
        scheduler.clone(),
    ));
    let advert = if cfg.mdns && control.ip().is_loopback() {
        tracing::info!("not advertised over mDNS: the control endpoint listens on loopback only");
        None
    } else if cfg.mdns {
        let instance = format!("dyno-{}-{}", cfg.fleet.id, control.port());
        match crate::discovery::advertise(&cfg.fleet.id, &instance, control.port()) {
            Ok(a) => {
                tracing::info!(%instance, "advertised over mDNS");
                Some(a)
            }
            Err(e) => {
                tracing::warn!("not advertised: {e}");
                None
            }
        }
    } else {
        None
    };
    tracing::info!(%control, ?data, model = %cfg.model, "coordinator up");
    crate::metrics::set_ready(true);
    Ok(Coordinator {
        control,
        data,
        scheduler,
        advert,
    })
}
