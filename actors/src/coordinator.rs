//! `dyno coordinator`: the Scheduler and BandwidthMonitor actors, the control endpoint,
//! and an embedded CloudWorker pool with its data endpoint.
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::Context as _;
use dyno::config::Devices;
use dyno::home::Home;
use dyno::sched::bandwidth::Estimator;
use dyno::sched::fleet::{self, FleetDevice, Status};
use dyno::sched::perf::{Candidate, Conditions, Correction, Link, Tables};
use dyno::sched::slo::Slo;
use dyno::sched::{Policy, Scheduler as Planner};
use dyno::wire::{self, Assignment, DeviceInfo, FrameReport, Identity, Message, Role};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;

use crate::config::CoordinatorConfig;
use crate::worker::{self, Pool};

/// The link assumed for a device before anything was measured.
pub const DEFAULT_LINK: Link = Link {
    bandwidth_bps: 10e6,
    rtt_s: 0.02,
};

struct DeviceState {
    info: DeviceInfo,
    slo: Slo,
    policy: Policy,
    link: Link,
    correction: Correction,
    tx: UnboundedSender<Message>,
    plan: Option<Assignment>,
    frames: u64,
    fallbacks: u64,
    /// (when, end-to-end seconds) of the reports of the last `RECENT_S` seconds.
    recent: VecDeque<(Instant, f64)>,
}

struct WorkerState {
    data_addr: String,
    slots: u32,
    queued: u32,
}

/// The Scheduler actor: fleet state, profiles, SLOs; computes and pushes plans.
pub struct SchedulerActor {
    tables: Tables,
    cloud_slowdown: f64,
    devices: HashMap<String, DeviceState>,
    workers: HashMap<String, WorkerState>,
    planner: Planner,
    replan_every: Duration,
    plans_sent: u64,
    pool_utilisation: f64,
    fleet_aware: bool,
    /// Accepted registrations per device id since this coordinator started.
    registrations: HashMap<String, u64>,
    /// When the last plan was made, and whether one is due (see `replan_soon`).
    last_replan: Instant,
    replan_due: bool,
    /// Link updates and joins re-plan at most this often: with hundreds of devices
    /// each sends its own, and a plan of the whole fleet takes milliseconds.
    replan_gap: Duration,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct DeviceJoined {
    pub info: DeviceInfo,
    pub tx: UnboundedSender<Message>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct DeviceLeft {
    pub id: String,
    /// The session's channel: a device that re-registered meanwhile is not removed.
    pub tx: UnboundedSender<Message>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerJoined {
    pub name: String,
    pub data_addr: String,
    pub slots: u32,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerLeft {
    pub name: String,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerLoad {
    pub name: String,
    pub queued: u32,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkUpdate {
    pub id: String,
    pub link: Link,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct FrameDone {
    pub id: String,
    pub report: FrameReport,
}

/// A snapshot of the fleet (`dyno status`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FleetStatus {
    pub devices: Vec<DeviceStatus>,
    pub workers: Vec<WorkerStatus>,
    pub plans_sent: u64,
    /// The planned cloud load over the pool's slots.
    pub pool_utilisation: f64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DeviceStatus {
    pub id: String,
    pub class: String,
    pub plan: Option<Assignment>,
    pub bandwidth_mbps: f64,
    pub rtt_ms: f64,
    pub frames: u64,
    pub fallbacks: u64,
    /// Frames reported over the last `RECENT_S` seconds, per second.
    pub fps: f64,
    /// End-to-end latency of those frames, ms (NaN before any).
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    /// How often this id registered since the coordinator started (1 unless it
    /// reconnected).
    pub registrations: u64,
}

/// The window of reports behind a device's rate and latency figures, seconds.
const RECENT_S: f64 = 10.0;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct WorkerStatus {
    pub name: String,
    pub data_addr: String,
    pub slots: u32,
    pub queued: u32,
}

#[derive(Message)]
#[rtype(result = "FleetStatus")]
pub struct GetStatus;

impl Actor for SchedulerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.replan_every, |me, _| me.replan());
    }
}

impl SchedulerActor {
    /// Re-plans now if the last plan is older than `replan_gap`, else once when it is.
    fn replan_soon(&mut self, ctx: &mut Context<Self>) {
        if self.replan_due {
            return;
        }
        let since = self.last_replan.elapsed();
        if since >= self.replan_gap {
            self.replan();
        } else {
            self.replan_due = true;
            ctx.run_later(self.replan_gap - since, |me, _| {
                if me.replan_due {
                    me.replan();
                }
            });
        }
    }

    /// Plans every device together and pushes the plans that changed.
    fn replan(&mut self) {
        self.replan_due = false;
        self.last_replan = Instant::now();
        let _timer = ReplanTimer(Instant::now());
        let mut ids: Vec<String> = self.devices.keys().cloned().collect();
        ids.sort();
        if ids.is_empty() {
            return;
        }
        let slots = self
            .workers
            .values()
            .map(|w| f64::from(w.slots))
            .fold(1.0, f64::max);
        let fleet_devices: Vec<FleetDevice> = ids
            .iter()
            .map(|id| {
                let d = &self.devices[id];
                let mut c = Conditions::new(d.info.slowdown, d.link);
                c.cloud_slowdown = self.cloud_slowdown;
                c.correction = d.correction;
                // A device gets one worker; its slots serve the device's frames at once.
                c.cloud_slots = slots;
                FleetDevice {
                    id: id.clone(),
                    conditions: c,
                    slo: d.slo.clone(),
                    policy: d.policy,
                    demand_fps: None,
                }
            })
            .collect();
        let capacity: f64 = if self.fleet_aware {
            self.workers.values().map(|w| f64::from(w.slots)).sum()
        } else {
            f64::INFINITY // each device alone: its individual optimum
        };
        let plan = fleet::plan(&self.tables, &fleet_devices, capacity);
        let slots_total: f64 = self.workers.values().map(|w| f64::from(w.slots)).sum();
        self.pool_utilisation = if slots_total > 0.0 {
            plan.load / slots_total
        } else {
            0.0
        };
        metrics::gauge!("dyno_pool_utilisation").set(self.pool_utilisation);
        // Keep the fleet's plans while they hold, as long as every device's worker is
        // still there.
        let current: Vec<Option<Candidate>> = ids
            .iter()
            .map(|id| {
                let a = self.devices[id].plan.as_ref()?;
                let alive = a
                    .worker
                    .as_ref()
                    .is_none_or(|addr| self.workers.values().any(|w| &w.data_addr == addr));
                alive.then_some(a.candidate)
            })
            .collect();
        if fleet::keep_current(&self.tables, &fleet_devices, &current, capacity, &plan) {
            return;
        }
        // Workers by spare slots, filled greedily by each device's cloud load.
        let mut load: HashMap<&str, f64> = self.workers.keys().map(|k| (k.as_str(), 0.0)).collect();
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by(|&a, &b| {
            plan.devices[b]
                .cloud_load
                .total_cmp(&plan.devices[a].cloud_load)
        });
        let mut chosen: Vec<(
            Candidate,
            Option<String>,
            dyno::sched::perf::Prediction,
            bool,
        )> = vec![
            (
                plan.devices[0].candidate,
                None,
                plan.devices[0].prediction,
                true
            );
            ids.len()
        ];
        for i in order {
            let p = &plan.devices[i];
            let d = &self.devices[&ids[i]];
            let mut candidate = p.candidate;
            let mut prediction = p.prediction;
            // With room for everyone, hysteresis: keep a plan that is still good enough.
            if plan.strategy == "individual" {
                if let Some(cur) = &d.plan {
                    let dec = self.planner.decide(
                        &self.tables,
                        &fleet_devices[i].conditions,
                        &d.slo,
                        d.policy,
                        Some(cur.candidate),
                    );
                    candidate = dec.candidate;
                    prediction = dec.prediction;
                }
            }
            let onloads = (candidate.split as usize) < self.tables.blocks;
            let worker = if onloads && !self.workers.is_empty() {
                // Stay with the current worker if it is still there.
                let keep = d
                    .plan
                    .as_ref()
                    .and_then(|a| a.worker.clone())
                    .and_then(|addr| {
                        self.workers
                            .iter()
                            .find(|(_, w)| w.data_addr == addr)
                            .map(|(k, _)| k.clone())
                    });
                let name = keep.unwrap_or_else(|| {
                    self.workers
                        .iter()
                        .min_by(|a, b| {
                            let la = load[a.0.as_str()] / f64::from(a.1.slots.max(1));
                            let lb = load[b.0.as_str()] / f64::from(b.1.slots.max(1));
                            la.total_cmp(&lb).then(a.0.cmp(b.0))
                        })
                        .map(|(k, _)| k.clone())
                        .expect("workers is not empty")
                });
                *load.get_mut(name.as_str()).expect("a known worker") += p.cloud_load;
                Some(self.workers[&name].data_addr.clone())
            } else {
                None
            };
            let (candidate, prediction) = if onloads && worker.is_none() {
                let row = self.tables.device_only();
                (row.candidate, row.predict(&fleet_devices[i].conditions))
            } else {
                (candidate, prediction)
            };
            chosen[i] = (candidate, worker, prediction, p.status != Status::SloUnmet);
        }
        for (id, (candidate, worker, prediction, feasible)) in ids.iter().zip(chosen) {
            let d = self.devices.get_mut(id).expect("listed above");
            let changed = d
                .plan
                .as_ref()
                .is_none_or(|a| a.candidate != candidate || a.worker != worker);
            if !changed {
                continue;
            }
            let epoch = d.plan.as_ref().map_or(1, |a| a.epoch + 1);
            let a = Assignment {
                candidate,
                worker,
                prediction,
                feasible,
                epoch,
            };
            tracing::info!(device = %id, plan = %candidate, worker = ?a.worker, "new plan");
            metrics::gauge!("dyno_plan_split", "device" => id.clone())
                .set(f64::from(candidate.split));
            metrics::gauge!("dyno_plan_bits", "device" => id.clone())
                .set(f64::from(candidate.precision.bits_per_value()));
            let _ = d.tx.send(Message::Plan(a.clone()));
            d.plan = Some(a);
            self.plans_sent += 1;
        }
    }
}

impl Handler<DeviceJoined> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: DeviceJoined, ctx: &mut Self::Context) {
        let slo = if m.info.slo.trim().is_empty() {
            Ok(Slo::default())
        } else {
            Slo::from_toml(&m.info.slo).map_err(|e| e.0)
        };
        let policy = m.info.policy.parse::<Policy>();
        let (slo, policy) = match (slo, policy) {
            (Ok(s), Ok(p)) => (s, p),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(device = %m.info.id, "refused a device: {e}");
                let _ = m.tx.send(Message::Refused { reason: e });
                return;
            }
        };
        tracing::info!(device = %m.info.id, class = %m.info.class, "device joined");
        let id = m.info.id.clone();
        *self.registrations.entry(id.clone()).or_default() += 1;
        metrics::counter!("dyno_registrations_total", "role" => "agent").increment(1);
        let old = self.devices.insert(
            id,
            DeviceState {
                info: m.info,
                slo,
                policy,
                link: DEFAULT_LINK,
                correction: Correction::default(),
                tx: m.tx,
                plan: None,
                frames: 0,
                fallbacks: 0,
                recent: VecDeque::new(),
            },
        );
        if old.is_some() {
            tracing::info!("a device re-registered: its old session is replaced");
        }
        self.replan_soon(ctx);
    }
}

impl Handler<DeviceLeft> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: DeviceLeft, _: &mut Self::Context) {
        if self
            .devices
            .get(&m.id)
            .is_some_and(|d| d.tx.same_channel(&m.tx))
        {
            self.devices.remove(&m.id);
            tracing::info!(device = %m.id, "device left");
            self.replan();
        }
    }
}

impl Handler<WorkerJoined> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: WorkerJoined, _: &mut Self::Context) {
        tracing::info!(worker = %m.name, data = %m.data_addr, slots = m.slots, "worker joined");
        metrics::counter!("dyno_registrations_total", "role" => "worker").increment(1);
        self.workers.insert(
            m.name,
            WorkerState {
                data_addr: m.data_addr,
                slots: m.slots,
                queued: 0,
            },
        );
        self.replan();
    }
}

impl Handler<WorkerLeft> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: WorkerLeft, _: &mut Self::Context) {
        if self.workers.remove(&m.name).is_some() {
            tracing::info!(worker = %m.name, "worker left");
            self.replan();
        }
    }
}

impl Handler<WorkerLoad> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: WorkerLoad, _: &mut Self::Context) {
        if let Some(w) = self.workers.get_mut(&m.name) {
            w.queued = m.queued;
        }
    }
}

impl Handler<LinkUpdate> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: LinkUpdate, ctx: &mut Self::Context) {
        if let Some(d) = self.devices.get_mut(&m.id) {
            d.link = m.link;
            metrics::gauge!("dyno_bandwidth_estimate_mbps", "device" => m.id.clone())
                .set(m.link.bandwidth_bps / 1e6);
            self.replan_soon(ctx);
        }
    }
}

impl Handler<FrameDone> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: FrameDone, _: &mut Self::Context) {
        let Some(d) = self.devices.get_mut(&m.id) else {
            return;
        };
        d.frames += 1;
        let now = Instant::now();
        let total_s = m.report.stages.total();
        d.recent.push_back((now, total_s));
        while d
            .recent
            .front()
            .is_some_and(|f| now.duration_since(f.0).as_secs_f64() > RECENT_S)
        {
            d.recent.pop_front();
        }
        if d.slo
            .constraints
            .max_latency_ms
            .is_some_and(|max| total_s * 1e3 > max)
        {
            metrics::counter!("dyno_slo_violations_total", "device" => m.id.clone()).increment(1);
        }
        if m.report.fallback {
            d.fallbacks += 1;
            return;
        }
        let Some(row) = self.tables.row(&m.report.candidate) else {
            return;
        };
        let mut c = Conditions::new(d.info.slowdown, d.link);
        c.cloud_slowdown = self.cloud_slowdown;
        c.correction = d.correction;
        let p = row.predict(&c);
        let s = m.report.stages;
        d.correction
            .observe_device(p.head_s + p.pack_s, s.head_s + s.pack_s);
        if p.cloud_s > 0.0 {
            d.correction.observe_cloud(p.cloud_s, s.unpack_s + s.tail_s);
        }
    }
}

impl Handler<GetStatus> for SchedulerActor {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        let mut devices: Vec<DeviceStatus> = self
            .devices
            .iter()
            .map(|(id, d)| DeviceStatus {
                id: id.clone(),
                class: d.info.class.clone(),
                plan: d.plan.clone(),
                bandwidth_mbps: d.link.bandwidth_bps / 1e6,
                rtt_ms: d.link.rtt_s * 1e3,
                frames: d.frames,
                fallbacks: d.fallbacks,
                fps: {
                    let span = d
                        .recent
                        .front()
                        .map_or(0.0, |f| f.0.elapsed().as_secs_f64())
                        .clamp(1.0, RECENT_S);
                    d.recent.len() as f64 / span
                },
                latency_p50_ms: quantile(&d.recent, 0.5) * 1e3,
                latency_p95_ms: quantile(&d.recent, 0.95) * 1e3,
                registrations: self.registrations.get(id).copied().unwrap_or(0),
            })
            .collect();
        devices.sort_by(|a, b| a.id.cmp(&b.id));
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|(name, w)| WorkerStatus {
                name: name.clone(),
                data_addr: w.data_addr.clone(),
                slots: w.slots,
                queued: w.queued,
            })
            .collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        MessageResult(FleetStatus {
            devices,
            workers,
            plans_sent: self.plans_sent,
            pool_utilisation: self.pool_utilisation,
        })
    }
}

/// The BandwidthMonitor actor: one estimator per device, fed by real transfers; tells
/// the Scheduler when an estimate moves.
pub struct BandwidthMonitor {
    started: Instant,
    estimators: HashMap<String, (Estimator, Option<Link>)>,
    scheduler: Addr<SchedulerActor>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Sample {
    pub id: String,
    /// 0 for an RTT sample.
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Forget {
    pub id: String,
}

impl Actor for BandwidthMonitor {
    type Context = Context<Self>;
}

/// An estimate moved enough to re-plan for.
fn moved(old: Option<Link>, new: Link) -> bool {
    match old {
        None => true,
        Some(o) => {
            (new.bandwidth_bps / o.bandwidth_bps - 1.0).abs() > 0.1
                || (new.rtt_s - o.rtt_s).abs() > 0.2 * o.rtt_s.max(0.005)
        }
    }
}

impl Handler<Sample> for BandwidthMonitor {
    type Result = ();
    fn handle(&mut self, m: Sample, _: &mut Self::Context) {
        let now = self.started.elapsed().as_secs_f64();
        let (est, last) = self.estimators.entry(m.id.clone()).or_default();
        if m.bytes == 0 {
            est.observe_rtt(now, m.seconds);
        } else {
            est.observe_transfer(now, m.bytes, m.seconds);
        }
        let Some(mut link) = est.link() else { return };
        if est.rtt_s().is_none() {
            link.rtt_s = DEFAULT_LINK.rtt_s;
        }
        if moved(*last, link) {
            *last = Some(link);
            self.scheduler.do_send(LinkUpdate { id: m.id, link });
        }
    }
}

impl Handler<Forget> for BandwidthMonitor {
    type Result = ();
    fn handle(&mut self, m: Forget, _: &mut Self::Context) {
        self.estimators.remove(&m.id);
    }
}

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

/// The host part agents should dial for a listener bound to `bound`.
pub fn reachable(bound: SocketAddr) -> String {
    if bound.ip().is_unspecified() {
        format!("127.0.0.1:{}", bound.port())
    } else {
        bound.to_string()
    }
}

/// Starts a coordinator inside the current actix system.
pub async fn start(cfg: &CoordinatorConfig, home: &Home) -> anyhow::Result<Coordinator> {
    let key = cfg.fleet.key()?;
    let (tables, cloud_slowdown) = tables(home, &cfg.model, cfg.devices.as_deref())?;
    let scheduler = SchedulerActor {
        tables,
        cloud_slowdown,
        devices: HashMap::new(),
        workers: HashMap::new(),
        planner: Planner::new(),
        replan_every: Duration::from_millis(cfg.replan_ms.max(50)),
        plans_sent: 0,
        pool_utilisation: 0.0,
        fleet_aware: cfg.fleet_aware,
        registrations: HashMap::new(),
        last_replan: Instant::now(),
        replan_due: false,
        replan_gap: Duration::from_millis(cfg.replan_gap_ms),
    }
    .start();
    let monitor = BandwidthMonitor {
        started: Instant::now(),
        estimators: HashMap::new(),
        scheduler: scheduler.clone(),
    }
    .start();
    let me = Identity {
        fleet: cfg.fleet.id.clone(),
        name: "coordinator".into(),
        role: Role::Worker,
        key,
    };
    let mut data = None;
    if cfg.workers > 0 {
        let l = TcpListener::bind(&cfg.data_listen)
            .await
            .with_context(|| format!("data endpoint {}", cfg.data_listen))?;
        let addr = l.local_addr()?;
        let pool = Pool::start(home, &cfg.model, cfg.workers, cfg.queue);
        actix_rt::spawn(worker::serve_data(
            l,
            pool.clone(),
            me.clone(),
            cfg.fleet.max_frame,
        ));
        scheduler.do_send(WorkerJoined {
            name: "embedded".into(),
            data_addr: reachable(addr),
            slots: cfg.workers as u32,
        });
        data = Some(addr);
        let s = scheduler.clone();
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                s.do_send(WorkerLoad {
                    name: "embedded".into(),
                    queued: pool.queued() as u32,
                });
            }
        });
    }
    let l = TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("control endpoint {}", cfg.listen))?;
    let control = l.local_addr()?;
    let timeout = Duration::from_millis(cfg.heartbeat_timeout_ms.max(100));
    actix_rt::spawn(serve_control(
        l,
        me,
        cfg.fleet.max_frame,
        timeout,
        scheduler.clone(),
        monitor,
    ));
    let advert = if cfg.mdns {
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
    Ok(Coordinator {
        control,
        data,
        scheduler,
        advert,
    })
}

async fn serve_control(
    listener: TcpListener,
    me: Identity,
    max_frame: usize,
    timeout: Duration,
    scheduler: Addr<SchedulerActor>,
    monitor: Addr<BandwidthMonitor>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("control endpoint: accept failed: {e}");
                continue;
            }
        };
        let (me, scheduler, monitor) = (me.clone(), scheduler.clone(), monitor.clone());
        actix_rt::spawn(async move {
            let conn = match wire::accept(stream, &me, max_frame).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%peer, "control endpoint: refused a peer: {e}");
                    metrics::counter!("dyno_refused_peers_total", "endpoint" => "control")
                        .increment(1);
                    return;
                }
            };
            let role = conn.role;
            let name = conn.peer.clone();
            let (mut tx, mut rx) = conn.split();
            let (out, mut outq) = tokio::sync::mpsc::unbounded_channel::<Message>();
            let writer = actix_rt::spawn(async move {
                while let Some(m) = outq.recv().await {
                    if tx.send(&m).await.is_err() {
                        break;
                    }
                }
            });
            let mut device: Option<String> = None;
            let mut worker: Option<String> = None;
            loop {
                let m = match tokio::time::timeout(timeout, rx.recv()).await {
                    Err(_) => {
                        tracing::warn!(%peer, %name, "control endpoint: silent for {timeout:?}: gone");
                        break;
                    }
                    Ok(Err(wire::WireError::Closed)) => break,
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
                            monitor.do_send(Sample {
                                id: id.clone(),
                                bytes: report.bytes,
                                seconds: report.transfer_s,
                            });
                        }
                        scheduler.do_send(FrameDone { id, report });
                    }
                    (Role::Agent, Message::LinkSample { bytes, seconds }) => {
                        let Some(id) = device.clone() else { break };
                        monitor.do_send(Sample { id, bytes, seconds });
                    }
                    (Role::Agent, Message::Probe { seq, .. }) => {
                        let _ = out.send(Message::ProbeAck { seq });
                    }
                    (
                        Role::Worker,
                        Message::RegisterWorker {
                            name: wname,
                            data_addr,
                            slots,
                            ..
                        },
                    ) => {
                        worker = Some(wname.clone());
                        scheduler.do_send(WorkerJoined {
                            name: wname,
                            data_addr,
                            slots,
                        });
                    }
                    (Role::Observer, Message::StatusRequest) => {
                        let json = match scheduler.send(GetStatus).await {
                            Ok(st) => serde_json::to_string(&st).unwrap_or_default(),
                            Err(e) => {
                                tracing::warn!("status: the scheduler did not answer: {e}");
                                break;
                            }
                        };
                        let _ = out.send(Message::Status { json });
                    }
                    (Role::Worker, Message::WorkerLoad { queued, .. }) => {
                        if let Some(w) = &worker {
                            scheduler.do_send(WorkerLoad {
                                name: w.clone(),
                                queued,
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
                    id: id.clone(),
                    tx: out.clone(),
                });
                monitor.do_send(Forget { id });
            }
            if let Some(name) = worker {
                scheduler.do_send(WorkerLeft { name });
            }
            drop(out);
            writer.abort();
        });
    }
}

/// The `q` quantile of the latencies (seconds) of `recent` reports; NaN when empty.
fn quantile(recent: &VecDeque<(Instant, f64)>, q: f64) -> f64 {
    let mut v: Vec<f64> = recent.iter().map(|r| r.1).collect();
    v.sort_by(f64::total_cmp);
    dyno::experiment::percentile(&v, q)
}

/// The fleet's status from the coordinator at `addr`, as `me` (an observer): 5 s to
/// connect, 5 s for the answer.
pub async fn fetch_status(
    addr: &str,
    me: &Identity,
    max_frame: usize,
) -> anyhow::Result<FleetStatus> {
    let wait = Duration::from_secs(5);
    let stream = tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("coordinator {addr}: no answer in 5 s"))?
        .map_err(|e| anyhow::anyhow!("coordinator {addr}: {e}: is it running there?"))?;
    let mut conn = wire::connect(stream, me, max_frame)
        .await
        .map_err(|e| anyhow::anyhow!("coordinator {addr}: {e}"))?;
    conn.send(&Message::StatusRequest).await?;
    let json = loop {
        match tokio::time::timeout(wait, conn.recv()).await {
            Err(_) => anyhow::bail!("coordinator {addr}: no status in 5 s"),
            Ok(Ok(Message::Status { json })) => break json,
            Ok(Ok(Message::HeartbeatAck { .. })) => continue,
            Ok(Ok(m)) => {
                anyhow::bail!("coordinator {addr} sent {} instead of its status", m.kind())
            }
            Ok(Err(e)) => anyhow::bail!("coordinator {addr}: {e}"),
        }
    };
    serde_json::from_str(&json)
        .map_err(|e| anyhow::anyhow!("the coordinator's status does not parse: {e}"))
}

/// Records how long a plan of the fleet took, whichever way `replan` returns.
struct ReplanTimer(Instant);

impl Drop for ReplanTimer {
    fn drop(&mut self) {
        metrics::histogram!("dyno_replan_seconds").record(self.0.elapsed().as_secs_f64());
    }
}
