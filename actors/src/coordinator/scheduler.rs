//! The **Scheduler** actor: the one owner of the fleet's control state
//! (`dyno::sched::control::Control`) and of every device's and worker's session on the
//! coordinator. It feeds the control state the events the endpoint receives, does what
//! it answers (re-plan now, later, or not), and pushes the plans that changed and the
//! probes it asks for.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use actix::prelude::*;
use dyno::sched::control::{
    CloudSample, Control, DeviceSpec, FrameSample, Reaction, Sharing, PROBE,
};
use dyno::sched::perf::Tables;
use dyno::wire::session::Outbox;
use dyno::wire::{Assignment, DeviceBudget, DeviceInfo, FrameReport, Message};

/// The window of reports behind a device's rate and latency figures, seconds.
pub const RECENT_S: f64 = 10.0;

/// A device's session and its figures.
pub(super) struct DeviceSession {
    pub info: DeviceInfo,
    pub tx: Outbox,
    pub frames: u64,
    pub fallbacks: u64,
    /// Frames run on the device over the onload budget.
    pub over_budget: u64,
    /// (when, end-to-end seconds, onloaded) of the reports of the last `RECENT_S`
    /// seconds.
    pub recent: VecDeque<(Instant, f64, bool)>,
}

pub(super) struct WorkerSession {
    pub data_addr: String,
    pub slots: u32,
    pub queued: u32,
    /// Frames it refused over a device's budget, as it last reported.
    pub over_budget: u64,
    pub admits: Admits,
}

/// Where a worker's admission takes the budgets: the coordinator's own pool's, or a
/// worker process's session.
pub enum Admits {
    Here(crate::worker::Admission),
    Remote(Outbox),
}

/// The Scheduler actor.
pub struct SchedulerActor {
    pub(super) tables: Tables,
    pub(super) control: Control,
    started: Instant,
    pub(super) devices: HashMap<String, DeviceSession>,
    pub(super) workers: HashMap<String, WorkerSession>,
    replan_every: Duration,
    pub(super) plans_sent: u64,
    /// Accepted registrations per device id since this coordinator started.
    pub(super) registrations: HashMap<String, u64>,
}

impl SchedulerActor {
    /// `replan_every`: the periodic re-plan; `replan_gap`: joins and link changes
    /// re-plan at most this often.
    pub fn new(
        tables: Tables,
        cloud_slowdown: f64,
        sharing: Sharing,
        replan_every: Duration,
        replan_gap: Duration,
    ) -> SchedulerActor {
        SchedulerActor {
            tables,
            control: Control::new(sharing, cloud_slowdown, replan_gap.as_secs_f64()),
            started: Instant::now(),
            devices: HashMap::new(),
            workers: HashMap::new(),
            replan_every,
            plans_sent: 0,
            registrations: HashMap::new(),
        }
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Does what the control state answered.
    fn react(&mut self, r: Reaction, ctx: &mut Context<Self>) {
        match r {
            Reaction::None => {}
            Reaction::Now => self.replan(),
            Reaction::At(at) => {
                let wait = Duration::from_secs_f64((at - self.now()).max(0.0));
                ctx.run_later(wait, |me, _| {
                    if me.control.replan_due() {
                        me.replan();
                    }
                });
            }
        }
    }

    /// A plan as the device gets it: its worker is where to send activations.
    pub(super) fn on_the_wire(&self, mut plan: Assignment) -> Assignment {
        plan.worker = plan
            .worker
            .as_ref()
            .and_then(|w| self.workers.get(w))
            .map(|w| w.data_addr.clone());
        plan
    }

    /// Plans the fleet and pushes the plans that changed and the probes asked for.
    fn replan(&mut self) {
        let timer = Instant::now();
        let r = self.control.replan(&self.tables, self.now());
        metrics::histogram!("dyno_replan_seconds").record(timer.elapsed().as_secs_f64());
        metrics::gauge!("dyno_pool_utilization_ratio").set(self.control.utilisation());
        // The workers learn the budgets before the devices their plans.
        if !r.changed.is_empty() {
            for name in self.workers.keys() {
                self.send_budgets(name);
            }
        }
        for (id, a) in r.changed {
            let Some(d) = self.devices.get(&id) else {
                continue;
            };
            let a = self.on_the_wire(a);
            tracing::info!(device = %id, plan = %a.candidate, worker = ?a.worker, budget_fps = a.rate_fps, expected_fps = a.expected.fps, "new plan");
            metrics::gauge!("dyno_plan_split", "device" => id.clone())
                .set(f64::from(a.candidate.split));
            metrics::gauge!("dyno_plan_precision", "device" => id.clone())
                .set(f64::from(a.candidate.precision.bits_per_value()));
            let _ = d.tx.send(Message::Plan(a));
            self.plans_sent += 1;
        }
        // Plans kept whose expectation moved: the same epoch, sent again.
        for (id, a) in r.refreshed {
            if let Some(d) = self.devices.get(&id) {
                let _ = d.tx.send(Message::Plan(self.on_the_wire(a)));
            }
        }
        self.probe(r.probes);
    }

    /// Tells worker `name` the budget of every device planned onto it.
    fn send_budgets(&self, name: &str) {
        let Some(w) = self.workers.get(name) else {
            return;
        };
        let budgets: Vec<DeviceBudget> = self
            .devices
            .keys()
            .filter_map(|id| {
                let p = self.control.plan(id)?;
                (p.worker.as_deref() == Some(name)).then(|| DeviceBudget {
                    device: id.clone(),
                    rate_fps: p.rate_fps,
                })
            })
            .collect();
        match &w.admits {
            Admits::Here(a) => a.set(&budgets),
            Admits::Remote(tx) => {
                let _ = tx.send(Message::Budgets(budgets));
            }
        }
    }

    fn probe(&self, ids: Vec<(String, u32)>) {
        for (id, bytes) in ids {
            if let Some(d) = self.devices.get(&id) {
                let _ = d.tx.send(Message::ProbeRequest { bytes });
            }
        }
    }
}

impl Actor for SchedulerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.replan_every, |me, _| me.replan());
        ctx.run_interval(Duration::from_secs_f64(PROBE.beat_s), |me, _| {
            let ids = me.control.probes(me.now());
            me.probe(ids);
        });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct DeviceJoined {
    pub info: DeviceInfo,
    pub tx: Outbox,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct DeviceLeft {
    pub id: String,
    /// The session's outbox: a device that re-registered meanwhile is not removed.
    pub tx: Outbox,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerJoined {
    pub name: String,
    pub data_addr: String,
    pub slots: u32,
    /// How it batches (the planner counts each split at the batch it expects).
    pub batching: dyno::sched::batch::Batching,
    pub admits: Admits,
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
    /// Frames it refused over a device's budget since it started.
    pub over_budget: u64,
}

/// A link sample of a device: `bytes` in `seconds` (one RTT included); 0 bytes is a
/// round-trip time.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkSample {
    pub id: String,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct FrameDone {
    pub id: String,
    pub report: FrameReport,
}

/// Re-plan now (the periodic tick, on demand).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Replan;

/// Why a device is refused at registration.
fn check(info: &DeviceInfo) -> Result<(), String> {
    if !(info.slowdown.is_finite() && info.slowdown > 0.0) {
        return Err(format!(
            "slowdown {} of class `{}`: give a number > 0 in the devices file",
            info.slowdown, info.class
        ));
    }
    info.slo.validate().map_err(|e| format!("SLO: {e}"))
}

impl Handler<DeviceJoined> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: DeviceJoined, ctx: &mut Self::Context) {
        if let Err(e) = check(&m.info) {
            tracing::warn!(device = %m.info.id, "refused a device: {e}");
            let _ = m.tx.send(Message::Refused { reason: e });
            return;
        }
        tracing::info!(device = %m.info.id, class = %m.info.class, "device joined");
        let id = m.info.id.clone();
        *self.registrations.entry(id.clone()).or_default() += 1;
        metrics::counter!("dyno_registrations_total", "role" => "agent").increment(1);
        metrics::counter!("dyno_slo_violations_total", "device" => m.info.id.clone()).increment(0);
        let spec = DeviceSpec {
            slowdown: m.info.slowdown,
            slo: m.info.slo.clone(),
            policy: m.info.policy,
            in_flight: m.info.in_flight,
        };
        let old = self.devices.insert(
            id.clone(),
            DeviceSession {
                info: m.info,
                tx: m.tx,
                frames: 0,
                fallbacks: 0,
                over_budget: 0,
                recent: VecDeque::new(),
            },
        );
        if old.is_some() {
            tracing::info!("a device re-registered: its old session is replaced");
        }
        let r = self.control.join_device(&id, spec, self.now());
        self.react(r, ctx);
    }
}

impl Handler<DeviceLeft> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: DeviceLeft, ctx: &mut Self::Context) {
        if self
            .devices
            .get(&m.id)
            .is_some_and(|d| d.tx.same_channel(&m.tx))
        {
            self.devices.remove(&m.id);
            tracing::info!(device = %m.id, "device left");
            let r = self.control.leave_device(&m.id);
            self.react(r, ctx);
        }
    }
}

impl Handler<WorkerJoined> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: WorkerJoined, ctx: &mut Self::Context) {
        tracing::info!(worker = %m.name, data = %m.data_addr, slots = m.slots, "worker joined");
        metrics::counter!("dyno_registrations_total", "role" => "worker").increment(1);
        let r = self.control.join_worker(&m.name, m.slots, m.batching);
        self.workers.insert(
            m.name.clone(),
            WorkerSession {
                data_addr: m.data_addr,
                slots: m.slots,
                queued: 0,
                over_budget: 0,
                admits: m.admits,
            },
        );
        // A worker that comes back learns the budgets it holds at once.
        self.send_budgets(&m.name);
        self.react(r, ctx);
    }
}

impl Handler<WorkerLeft> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: WorkerLeft, ctx: &mut Self::Context) {
        if self.workers.remove(&m.name).is_some() {
            tracing::info!(worker = %m.name, "worker left");
            let r = self.control.leave_worker(&m.name);
            self.react(r, ctx);
        }
    }
}

impl Handler<WorkerLoad> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: WorkerLoad, ctx: &mut Self::Context) {
        if let Some(w) = self.workers.get_mut(&m.name) {
            w.queued = m.queued;
            w.over_budget = m.over_budget;
            let r = self
                .control
                .observe_worker_load(&m.name, self.now(), m.queued);
            self.react(r, ctx);
        }
    }
}

impl Handler<LinkSample> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: LinkSample, ctx: &mut Self::Context) {
        let now = self.now();
        let before = self.control.link(&m.id);
        let r = if m.bytes == 0 {
            self.control.observe_rtt(&m.id, now, m.seconds)
        } else {
            self.control
                .observe_transfer(&m.id, now, m.bytes, m.seconds)
        };
        let after = self.control.link(&m.id);
        tracing::debug!(device = %m.id, bytes = m.bytes, seconds = m.seconds, link = ?after, "link sample");
        // The gauge moves with the estimate, not with every report.
        if let Some(link) = after.filter(|l| Some(*l) != before) {
            metrics::gauge!("dyno_bandwidth_estimate_bytes_per_second", "device" => m.id.clone())
                .set(link.bandwidth_bps / 8.0);
        }
        self.react(r, ctx);
    }
}

impl Handler<FrameDone> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, m: FrameDone, ctx: &mut Self::Context) {
        let Some(d) = self.devices.get_mut(&m.id) else {
            return;
        };
        d.frames += 1;
        let now = Instant::now();
        let total_s = m.report.stages.total();
        let onloaded = m.report.bytes > 0 && !m.report.fallback;
        d.recent.push_back((now, total_s, onloaded));
        while d
            .recent
            .front()
            .is_some_and(|f| now.duration_since(f.0).as_secs_f64() > RECENT_S)
        {
            d.recent.pop_front();
        }
        if d.info
            .slo
            .constraints
            .max_latency_ms
            .is_some_and(|max| total_s * 1e3 > max)
        {
            metrics::counter!("dyno_slo_violations_total", "device" => m.id.clone()).increment(1);
        }
        if m.report.fallback {
            d.fallbacks += 1;
        }
        if m.report.over_budget {
            d.over_budget += 1;
        }
        let s = m.report.stages;
        // A frame finished on the device after a busy answer: its tail is device time.
        let sample = FrameSample {
            candidate: m.report.candidate,
            device_s: s.head_s + s.pack_s,
            device_tail_s: if m.report.fallback { s.tail_s } else { 0.0 },
            cloud: (m.report.bytes > 0 && !m.report.fallback).then_some(CloudSample {
                queue_s: s.queue_s,
                // A batch's tail serves all its frames: one frame's share of it.
                service_s: s.unpack_s + s.tail_s / f64::from(s.batch.max(1)),
            }),
        };
        let r = self
            .control
            .observe_frame(&self.tables, &m.id, self.now(), &sample);
        self.react(r, ctx);
    }
}

impl Handler<Replan> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, _: Replan, _: &mut Self::Context) {
        self.replan();
    }
}
