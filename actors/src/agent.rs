//! `dyno agent`: one device. The Device runs heads and packs on its own device thread
//! (a `SyncArbiter` of one), sends activations straight to its assigned worker through
//! the emulated uplink, and finishes a frame on the device whenever the cloud cannot:
//! every frame ends with exactly one result (or one explicit error).
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::Context as _;
use dyno::config::Devices;
use dyno::data;
use dyno::home::Home;
use dyno::link::Shaper;
use dyno::model::{zoo, Model};
use dyno::pack::tensor::tensor_values;
use dyno::pack::{Codec, PackOptions, Packer, Precision, TensorId};
use dyno::sched::perf::Candidate;
use dyno::wire::{self, Assignment, DeviceInfo, FrameReport, Identity, Message, Role, Stages};
use serde::Serialize;
use tch::{Kind, Tensor};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;

use crate::config::{AgentConfig, Source};
use crate::discovery;

/// One frame's input.
#[derive(Message)]
#[rtype(result = "Result<Tensor, String>")]
struct NextInput;

/// Runs the head to `split` and packs the activation (nothing to pack at device-only).
#[derive(Message)]
#[rtype(result = "Result<HeadOut, String>")]
struct Head {
    x: Tensor,
    candidate: Candidate,
}

struct HeadOut {
    activation: Tensor,
    packed: Vec<u8>,
    /// At device-only, the answer.
    top1: Option<i64>,
    head_s: f64,
    pack_s: f64,
}

/// Finishes a frame on the device.
#[derive(Message)]
#[rtype(result = "Result<(i64, f64), String>")]
struct Tail {
    activation: Tensor,
    split: u16,
}

/// The whole model, for `verify`.
#[derive(Message)]
#[rtype(result = "Result<i64, String>")]
struct Full {
    x: Tensor,
}

/// The Device actor: its own thread (a SyncArbiter of one) with its model, its packer and
/// its input source; runs heads, packing, and tails when the cloud cannot.
struct Device {
    model: Result<Model, String>,
    packer: Packer,
    slowdown: f64,
    source: Inputs,
    /// This machine's profile of the model: a stage is made to last `slowdown` times its
    /// profiled time, whatever else runs on this machine meanwhile (without one, `slowdown`
    /// times what the work took).
    reference: Option<dyno::profile::latency::LatencyProfile>,
}

enum Inputs {
    Images(Vec<Tensor>, usize),
    Synthetic(u64, u64, Vec<i64>),
}

impl Inputs {
    fn next(&mut self) -> Tensor {
        match self {
            Inputs::Images(v, i) => {
                let x = v[*i % v.len()].shallow_clone();
                *i += 1;
                x
            }
            Inputs::Synthetic(seed, i, shape) => {
                let n: i64 = shape.iter().product();
                let phase = (*seed as f64) * 0.37 + (*i as f64) * 0.11;
                *i += 1;
                (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.013 + phase)
                    .sin()
                    .view(shape.as_slice())
            }
        }
    }
}

impl Actor for Device {
    type Context = SyncContext<Self>;
}

impl Device {
    /// Makes a stage that took `took` last `slowdown` times its reference time (its
    /// profiled time, or what it took); returns how long it lasted.
    fn emulate(&self, took: Duration, reference: Option<f64>) -> f64 {
        let took_s = took.as_secs_f64();
        let target = self.slowdown * reference.unwrap_or(took_s);
        if target > took_s {
            std::thread::sleep(Duration::from_secs_f64(target - took_s));
        }
        target.max(took_s)
    }

    fn head_ref(&self, split: usize) -> Option<f64> {
        let p = self.reference.as_ref()?;
        Some(p.blocks.get(..split)?.iter().map(|b| b.seconds).sum())
    }

    fn tail_ref(&self, split: usize) -> Option<f64> {
        let p = self.reference.as_ref()?;
        Some(p.blocks.get(split..)?.iter().map(|b| b.seconds).sum())
    }

    fn pack_ref(&self, c: &Candidate) -> Option<f64> {
        let p = self.reference.as_ref()?;
        p.codecs
            .iter()
            .find(|r| {
                r.split == c.split as usize && r.precision == c.precision && r.codec == c.codec
            })
            .map(|r| r.pack_s)
    }
}

impl Handler<NextInput> for Device {
    type Result = Result<Tensor, String>;
    fn handle(&mut self, _: NextInput, _: &mut Self::Context) -> Self::Result {
        Ok(self.source.next())
    }
}

impl Handler<Head> for Device {
    type Result = Result<HeadOut, String>;
    fn handle(&mut self, m: Head, _: &mut Self::Context) -> Self::Result {
        let c = m.candidate;
        let model = self.model.as_ref().map_err(|e| e.clone())?;
        let t = Instant::now();
        let a = model
            .head(&m.x, c.split as usize)
            .map_err(|e| e.to_string())?;
        let head_s = self.emulate(t.elapsed(), self.head_ref(c.split as usize));
        if c.split as usize == model.num_blocks() {
            let top1 = a.argmax(-1, false).int64_value(&[0]);
            return Ok(HeadOut {
                activation: a,
                packed: Vec::new(),
                top1: Some(top1),
                head_s,
                pack_s: 0.0,
            });
        }
        let t = Instant::now();
        let (values, shape) = tensor_values(&a).map_err(|e| e.to_string())?;
        let id = TensorId {
            model: model.name(),
            weights_hash: model.weights_hash(),
            split: c.split,
        };
        let mut packed = Vec::new();
        self.packer
            .pack_into(
                &values,
                &shape,
                &id,
                &PackOptions::new(c.precision, c.codec),
                &mut packed,
            )
            .map_err(|e| e.to_string())?;
        let pack_s = self.emulate(t.elapsed(), self.pack_ref(&c));
        Ok(HeadOut {
            activation: a,
            packed,
            top1: None,
            head_s,
            pack_s,
        })
    }
}

impl Handler<Tail> for Device {
    type Result = Result<(i64, f64), String>;
    fn handle(&mut self, m: Tail, _: &mut Self::Context) -> Self::Result {
        let model = self.model.as_ref().map_err(|e| e.clone())?;
        let t = Instant::now();
        let y = model
            .tail(&m.activation, m.split as usize)
            .map_err(|e| e.to_string())?;
        let top1 = y.argmax(-1, false).int64_value(&[0]);
        Ok((
            top1,
            self.emulate(t.elapsed(), self.tail_ref(m.split as usize)),
        ))
    }
}

impl Handler<Full> for Device {
    type Result = Result<i64, String>;
    fn handle(&mut self, m: Full, _: &mut Self::Context) -> Self::Result {
        let model = self.model.as_ref().map_err(|e| e.clone())?;
        let y = model.forward(&m.x).map_err(|e| e.to_string())?;
        Ok(y.argmax(-1, false).int64_value(&[0]))
    }
}

/// One frame's record.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FrameResult {
    pub request: u64,
    /// When the frame started, seconds since the agent did.
    pub start_s: f64,
    pub candidate: Candidate,
    pub top1: Option<i64>,
    pub local_top1: Option<i64>,
    /// Finished on the device because the cloud could not.
    pub fallback: bool,
    pub error: Option<String>,
    pub stages: Stages,
    pub latency_s: f64,
    /// Bytes sent to the worker.
    pub bytes: u64,
}

/// What an agent did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct AgentSummary {
    pub id: String,
    pub frames: u64,
    pub results: u64,
    pub errors: u64,
    pub fallbacks: u64,
    pub onloaded: u64,
    pub device_only: u64,
    pub verified: u64,
    pub mismatches: u64,
    /// Requests answered more than once (must be 0).
    pub duplicates: u64,
    pub plans_received: u64,
    pub splits: BTreeMap<u16, u64>,
    pub mean_latency_ms: f64,
    pub seconds: f64,
    pub fps: f64,
}

/// A connection to one worker's data endpoint.
#[derive(Clone)]
struct DataConn {
    tx: mpsc::UnboundedSender<Message>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Message>>>>,
    alive: Arc<AtomicBool>,
}

struct Shared {
    start: Instant,
    plan: Mutex<Option<Assignment>>,
    control: Mutex<Option<mpsc::UnboundedSender<Message>>>,
    shaper: Mutex<Shaper>,
    one_way: Duration,
    conns: tokio::sync::Mutex<HashMap<String, DataConn>>,
    me: Identity,
    max_frame: usize,
    plans: AtomicU64,
    last_sent: Mutex<Instant>,
    /// After the uplink failed to carry a frame in time: device-only until then.
    stalled_until: Mutex<Option<Instant>>,
}

impl Shared {
    /// The uplink did not carry `bytes` within `waited`: tell the coordinator (a transfer
    /// at least that slow, so that its estimate falls) and run device-only for as long
    /// again, instead of queueing more frames behind a dead link.
    fn link_stalled(&self, bytes: usize, waited: Duration) {
        tracing::info!(
            waited_ms = waited.as_millis() as u64,
            "the uplink stalled: device-only for a while"
        );
        if let Some(c) = self.control.lock().expect("not poisoned").as_ref() {
            let _ = c.send(Message::LinkSample {
                bytes: bytes as u64,
                seconds: waited.as_secs_f64(),
            });
        }
        *self.stalled_until.lock().expect("not poisoned") = Some(Instant::now() + waited);
    }

    /// Whether the uplink is in its device-only pause after a stall.
    fn stalled(&self) -> bool {
        self.stalled_until
            .lock()
            .expect("not poisoned")
            .is_some_and(|t| Instant::now() < t)
    }

    /// Holds `bytes` back as the emulated uplink would: until they have crossed it.
    /// Returns the seconds it held them (queueing on the link, serialisation, delay,
    /// loss, and the timer's rounding) and, of those, the seconds they waited behind
    /// this device's earlier frames.
    async fn cross_uplink(&self, bytes: usize) -> (f64, f64) {
        let t = Instant::now();
        let now = self.start.elapsed().as_secs_f64();
        let d = self.shaper.lock().expect("not poisoned").send(now, bytes);
        *self.last_sent.lock().expect("not poisoned") = Instant::now();
        let at = self.start + Duration::from_secs_f64(d.arrives);
        tokio::time::sleep_until(at.into()).await;
        (t.elapsed().as_secs_f64(), d.start - now)
    }

    async fn data_conn(&self, addr: &str) -> Result<DataConn, String> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(addr) {
            if c.alive.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .map_err(|_| format!("worker {addr}: connect timed out"))?
            .map_err(|e| format!("worker {addr}: {e}"))?;
        let conn = wire::connect(stream, &self.me, self.max_frame)
            .await
            .map_err(|e| format!("worker {addr}: {e}"))?;
        let (mut tx, mut rx) = conn.split();
        let (out, mut outq) = mpsc::unbounded_channel::<Message>();
        let c = DataConn {
            tx: out,
            pending: Arc::new(Mutex::new(HashMap::new())),
            alive: Arc::new(AtomicBool::new(true)),
        };
        let alive = c.alive.clone();
        actix_rt::spawn(async move {
            while let Some(m) = outq.recv().await {
                if tx.send(&m).await.is_err() {
                    break;
                }
            }
            alive.store(false, Ordering::Release);
        });
        let (pending, alive) = (c.pending.clone(), c.alive.clone());
        let addr_owned = addr.to_string();
        actix_rt::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(m @ (Message::InferOk { .. } | Message::InferErr { .. })) => {
                        let request = match &m {
                            Message::InferOk { request, .. }
                            | Message::InferErr { request, .. } => *request,
                            _ => unreachable!("matched above"),
                        };
                        let waiter = pending.lock().expect("not poisoned").remove(&request);
                        match waiter {
                            Some(w) => {
                                let _ = w.send(m);
                            }
                            None => {
                                tracing::warn!(worker = %addr_owned, request, "an answer nobody waits for: ignored")
                            }
                        }
                    }
                    Ok(Message::HeartbeatAck { .. }) => {}
                    Ok(m) => {
                        tracing::warn!(worker = %addr_owned, "worker sent {}: dropping the connection", m.kind());
                        break;
                    }
                    Err(e) => {
                        tracing::info!(worker = %addr_owned, "data connection ended: {e}");
                        break;
                    }
                }
            }
            alive.store(false, Ordering::Release);
            // Waiters see their sender dropped: their frames finish on the device.
            pending.lock().expect("not poisoned").clear();
        });
        conns.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

/// The link configuration, the device class and the model, checked before anything runs.
struct Setup {
    model: Model,
    reference: Option<dyno::profile::latency::LatencyProfile>,
    slowdown: f64,
    threads: u32,
    class: String,
    shaper: Shaper,
    slo: String,
    source: Inputs,
}

fn setup(cfg: &AgentConfig, home: &Home) -> anyhow::Result<Setup> {
    cfg.check()?;
    let devices_path = cfg
        .devices
        .clone()
        .unwrap_or_else(|| Devices::default_path(home));
    let (mut slowdown, mut threads) = (1.0, 1);
    if cfg.slowdown.is_none() || cfg.threads.is_none() {
        let devices = Devices::load(&devices_path)?;
        let c = devices.class(&cfg.class)?;
        (slowdown, threads) = (c.slowdown, c.threads);
    }
    let slowdown = cfg.slowdown.unwrap_or(slowdown);
    let threads = cfg.threads.unwrap_or(threads);
    anyhow::ensure!(
        slowdown.is_finite() && slowdown >= 1.0,
        "slowdown = {slowdown}: an agent emulates a device at least as slow as this machine (>= 1)"
    );
    anyhow::ensure!(threads >= 1, "threads = 0: give at least 1");
    let model = zoo::load(&cfg.model, home)?;
    let reference_path = match Devices::load(&devices_path)
        .ok()
        .and_then(|d| d.classes.get(&cfg.class).and_then(|c| c.profile.clone()))
    {
        Some(t) => dyno::config::latency_profile_path(Some(&t), home, &cfg.model),
        None => dyno::profile::find(home, &cfg.model, "latency"),
    };
    let reference = match dyno::profile::latency::LatencyProfile::load(&reference_path) {
        Ok(p) if p.model == model.name() && p.blocks.len() == model.num_blocks() => Some(p),
        Ok(_) | Err(_) => {
            tracing::warn!(
                profile = %reference_path.display(),
                "no usable latency profile: the device's slowdown applies to what each stage takes"
            );
            None
        }
    };
    let shaper = Shaper::new(
        cfg.link.trace()?,
        cfg.link.rtt_ms / 1e3,
        cfg.link.loss,
        cfg.link.seed,
    )?;
    let slo = match &cfg.slo {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("SLO file {}", p.display()))?;
            dyno::sched::slo::Slo::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("SLO file {}: {}", p.display(), e.0))?;
            text
        }
        None => String::new(),
    };
    cfg.policy
        .parse::<dyno::sched::Policy>()
        .map_err(anyhow::Error::msg)?;
    let source = match &cfg.source {
        Source::Folder { path } => {
            let images = data::list_images(path)?;
            anyhow::ensure!(!images.is_empty(), "no images in {}", path.display());
            let xs = images
                .iter()
                .map(|i| data::load_image(&i.path, model.input()).map(|x| x.unsqueeze(0)))
                .collect::<Result<Vec<_>, _>>()?;
            Inputs::Images(xs, 0)
        }
        Source::FashionMnist => {
            let d = data::fashion_mnist(&home.fashion_mnist_dir())?;
            let n = d.test_images.size()[0].min(2000);
            let xs = (0..n).map(|i| d.test_images.narrow(0, i, 1)).collect();
            Inputs::Images(xs, 0)
        }
        Source::Synthetic { seed } => {
            let mut shape = vec![1];
            shape.extend(model.input().shape.iter().copied());
            Inputs::Synthetic(*seed, 0, shape)
        }
    };
    Ok(Setup {
        model,
        reference,
        slowdown,
        threads,
        class: cfg.class.clone(),
        shaper,
        slo,
        source,
    })
}

/// Runs an agent inside the current actix system until its frames are done (forever
/// with `frames = 0`).
pub async fn run(cfg: AgentConfig, home: Home) -> anyhow::Result<AgentSummary> {
    Ok(run_with_results(cfg, home).await?.0)
}

/// Like [`run`], with every frame's record.
pub async fn run_with_results(
    cfg: AgentConfig,
    home: Home,
) -> anyhow::Result<(AgentSummary, Vec<FrameResult>)> {
    let key = cfg.fleet.key()?;
    let s = setup(&cfg, &home)?;
    let blocks = s.model.num_blocks();
    let info = DeviceInfo {
        id: cfg.id.clone(),
        model: s.model.name().to_string(),
        class: s.class.clone(),
        slowdown: s.slowdown,
        threads: s.threads,
        slo: s.slo.clone(),
        policy: cfg.policy.clone(),
    };
    let (slowdown, threads) = (s.slowdown, s.threads);
    // A model is not Send: the device thread loads its own copy (this one was checked).
    let model_name = cfg.model.clone();
    drop(s.model);
    let cell = Mutex::new(Some((s.source, home.clone(), s.reference)));
    let compute = SyncArbiter::start(1, move || {
        tch::set_num_threads(threads as i32);
        let (source, home, reference) = cell
            .lock()
            .expect("not poisoned")
            .take()
            .expect("one device thread");
        Device {
            model: zoo::load(&model_name, &home).map_err(|e| e.to_string()),
            packer: Packer::default(),
            slowdown,
            source,
            reference,
        }
    });
    let shared = Arc::new(Shared {
        start: Instant::now(),
        plan: Mutex::new(None),
        control: Mutex::new(None),
        one_way: Duration::from_secs_f64(cfg.link.rtt_ms / 2e3),
        shaper: Mutex::new(s.shaper),
        conns: tokio::sync::Mutex::new(HashMap::new()),
        me: Identity {
            fleet: cfg.fleet.id.clone(),
            name: cfg.id.clone(),
            role: Role::Agent,
            key,
        },
        max_frame: cfg.fleet.max_frame,
        plans: AtomicU64::new(0),
        last_sent: Mutex::new(Instant::now()),
        stalled_until: Mutex::new(None),
    });
    let control = actix_rt::spawn(control_loop(
        shared.clone(),
        cfg.coordinators.clone(),
        info,
        cfg.mdns,
    ));
    let results = Arc::new(Mutex::new(Vec::<FrameResult>::new()));
    let gate = Arc::new(Semaphore::new(cfg.in_flight.max(1)));
    let device_only = Candidate {
        split: blocks as u16,
        precision: Precision::Fp32,
        codec: Codec::None,
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut request = 0u64;
    loop {
        if cfg.frames > 0 && request >= cfg.frames {
            break;
        }
        if cfg.duration_s > 0.0 && started.elapsed().as_secs_f64() >= cfg.duration_s {
            break;
        }
        if cfg.rate_fps > 0.0 {
            let at = started + Duration::from_secs_f64(request as f64 / cfg.rate_fps);
            tokio::time::sleep_until(at.into()).await;
        }
        let permit = gate.clone().acquire_owned().await.expect("never closed");
        request += 1;
        let x = compute
            .send(NextInput)
            .await
            .map_err(|e| anyhow::anyhow!("device thread: {e}"))?
            .map_err(anyhow::Error::msg)?;
        let (shared, compute, results) = (shared.clone(), compute.clone(), results.clone());
        let rules = FrameRules {
            device_only,
            pin: cfg.pin,
            verify: cfg.verify,
            timeout: Duration::from_secs_f64(cfg.timeout_s.max(0.01)),
        };
        // One span per frame: the worker opens one with the same device and request, so
        // that a frame is one trace across the processes' logs.
        let span = tracing::info_span!("frame", device = %shared.me.name, request);
        tasks.push(actix_rt::spawn(
            async move {
                let r = frame(&shared, &compute, request, x, rules).await;
                tracing::debug!(
                    plan = %r.candidate,
                    bytes = r.bytes,
                    fallback = r.result.fallback,
                    latency_ms = r.result.latency_s * 1e3,
                    "frame done"
                );
                if let Some(c) = shared.control.lock().expect("not poisoned").as_ref() {
                    let _ = c.send(Message::Report(FrameReport {
                        request,
                        candidate: r.candidate,
                        stages: r.stages,
                        bytes: r.bytes,
                        transfer_s: r.stages.wire_s,
                        fallback: r.result.fallback,
                    }));
                }
                record(&shared.me.name, &r);
                results.lock().expect("not poisoned").push(r.result);
                drop(permit);
            }
            .instrument(span),
        ));
    }
    for t in tasks {
        let _ = t.await;
    }
    control.abort();
    let seconds = started.elapsed().as_secs_f64();
    let results = std::mem::take(&mut *results.lock().expect("not poisoned"));
    if let Some(path) = &cfg.results {
        let mut text = String::new();
        for r in &results {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("results file {}", path.display()))?;
    }
    let summary = summarize(
        &cfg.id,
        &results,
        request,
        seconds,
        shared.plans.load(Ordering::Relaxed),
        blocks,
    );
    Ok((summary, results))
}

fn summarize(
    id: &str,
    results: &[FrameResult],
    frames: u64,
    seconds: f64,
    plans: u64,
    blocks: usize,
) -> AgentSummary {
    let mut s = AgentSummary {
        id: id.to_string(),
        frames,
        plans_received: plans,
        seconds,
        ..AgentSummary::default()
    };
    let mut seen = std::collections::HashSet::new();
    let mut latency = 0.0;
    for r in results {
        if !seen.insert(r.request) {
            s.duplicates += 1;
        }
        if r.error.is_some() {
            s.errors += 1;
            continue;
        }
        s.results += 1;
        latency += r.latency_s;
        if r.fallback {
            s.fallbacks += 1;
        }
        if r.candidate.split as usize == blocks {
            s.device_only += 1;
        } else if !r.fallback {
            s.onloaded += 1;
        }
        *s.splits.entry(r.candidate.split).or_default() += 1;
        if let (Some(a), Some(b)) = (r.top1, r.local_top1) {
            s.verified += 1;
            if a != b {
                s.mismatches += 1;
            }
        }
    }
    s.mean_latency_ms = if s.results > 0 {
        1e3 * latency / s.results as f64
    } else {
        0.0
    };
    s.fps = if seconds > 0.0 {
        s.results as f64 / seconds
    } else {
        0.0
    };
    s
}

/// One finished frame in the metrics (`crate::metrics`).
fn record(device: &str, d: &Done) {
    let device = device.to_string();
    metrics::counter!("dyno_frames_total", "device" => device.clone()).increment(1);
    if d.result.fallback {
        metrics::counter!("dyno_fallbacks_total", "device" => device.clone()).increment(1);
    }
    if d.result.error.is_some() {
        metrics::counter!("dyno_frame_errors_total", "device" => device).increment(1);
        return;
    }
    let s = &d.stages;
    let remote = d.bytes > 0 && !d.result.fallback;
    let mut phases = vec![
        ("device", s.head_s),
        ("pack", s.pack_s),
        ("end_to_end", d.result.latency_s),
    ];
    if remote {
        phases.extend([
            ("transfer", s.wire_s),
            ("worker_queue", s.queue_s),
            ("cloud", s.unpack_s + s.tail_s),
        ]);
    }
    for (phase, secs) in phases {
        metrics::histogram!("dyno_phase_seconds", "phase" => phase).record(secs);
    }
}

struct Done {
    result: FrameResult,
    candidate: Candidate,
    stages: Stages,
    bytes: u64,
}

/// How every frame of an agent is run.
#[derive(Clone, Copy)]
struct FrameRules {
    device_only: Candidate,
    pin: Option<Candidate>,
    verify: bool,
    timeout: Duration,
}

/// One frame, start to end: exactly one result or one error.
async fn frame(
    shared: &Shared,
    compute: &Addr<Device>,
    request: u64,
    x: Tensor,
    rules: FrameRules,
) -> Done {
    let FrameRules {
        device_only,
        pin,
        verify,
        timeout,
    } = rules;
    let t0 = Instant::now();
    let plan = shared.plan.lock().expect("not poisoned").clone();
    let (mut candidate, worker) = match &plan {
        Some(a) if a.worker.is_some() && !shared.stalled() => (a.candidate, a.worker.clone()),
        _ => (device_only, None),
    };
    if let (Some(p), Some(_)) = (pin, &worker) {
        candidate = p;
    }
    let local_top1 = if verify {
        compute
            .send(Full {
                x: x.shallow_clone(),
            })
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    let fail = |candidate, error: String| Done {
        result: FrameResult {
            request,
            start_s: t0.duration_since(shared.start).as_secs_f64(),
            candidate,
            top1: None,
            local_top1,
            fallback: false,
            error: Some(error),
            stages: Stages::default(),
            latency_s: t0.elapsed().as_secs_f64(),
            bytes: 0,
        },
        candidate,
        stages: Stages::default(),
        bytes: 0,
    };
    let head = match compute.send(Head { x, candidate }).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return fail(candidate, format!("head: {e}")),
        Err(e) => return fail(candidate, format!("device thread: {e}")),
    };
    let mut stages = Stages {
        head_s: head.head_s,
        pack_s: head.pack_s,
        ..Stages::default()
    };
    let done = |top1, fallback, stages: Stages, bytes| Done {
        result: FrameResult {
            request,
            start_s: t0.duration_since(shared.start).as_secs_f64(),
            candidate,
            top1: Some(top1),
            local_top1,
            fallback,
            error: None,
            stages,
            latency_s: t0.elapsed().as_secs_f64(),
            bytes,
        },
        candidate,
        stages,
        bytes,
    };
    if let Some(top1) = head.top1 {
        return done(top1, false, stages, 0);
    }
    let bytes = head.packed.len() as u64;
    let answer = match worker {
        Some(addr) => send_to_worker(shared, &addr, request, head.packed, timeout).await,
        None => Err("no worker assigned".to_string()),
    };
    match answer {
        Ok((top1, worker_stages, wire_s)) => {
            stages.queue_s = worker_stages.queue_s;
            stages.unpack_s = worker_stages.unpack_s;
            stages.tail_s = worker_stages.tail_s;
            stages.link_s = worker_stages.link_s;
            stages.wire_s = wire_s;
            done(top1, false, stages, bytes)
        }
        Err(why) => {
            tracing::debug!(request, "finishing on the device: {why}");
            match compute
                .send(Tail {
                    activation: head.activation,
                    split: candidate.split,
                })
                .await
            {
                Ok(Ok((top1, tail_s))) => {
                    stages.tail_s = tail_s;
                    done(top1, true, stages, bytes)
                }
                Ok(Err(e)) => fail(
                    candidate,
                    format!("cloud failed ({why}), device tail failed: {e}"),
                ),
                Err(e) => fail(
                    candidate,
                    format!("cloud failed ({why}), device thread: {e}"),
                ),
            }
        }
    }
}

/// Sends one activation and waits for its answer: (top1, the worker's stages, wire seconds).
async fn send_to_worker(
    shared: &Shared,
    addr: &str,
    request: u64,
    packed: Vec<u8>,
    timeout: Duration,
) -> Result<(i64, Stages, f64), String> {
    let conn = shared.data_conn(addr).await?;
    let (tx, rx) = oneshot::channel();
    conn.pending
        .lock()
        .expect("not poisoned")
        .insert(request, tx);
    let t = Instant::now();
    // The timeout covers the uplink as well as the answer: a link that carries nothing
    // must not hold the frame (and those behind it) for longer.
    let deadline = tokio::time::Instant::now() + timeout;
    let bytes = packed.len();
    let (uplink_s, queued_s) =
        match tokio::time::timeout_at(deadline, shared.cross_uplink(bytes)).await {
            Ok(x) => x,
            Err(_) => {
                conn.pending.lock().expect("not poisoned").remove(&request);
                shared.link_stalled(bytes, t.elapsed());
                return Err(format!(
                    "the uplink did not carry the frame within {timeout:?}"
                ));
            }
        };
    let sent = conn.tx.send(Message::Infer {
        request,
        device: shared.me.name.clone(),
        packed,
    });
    if sent.is_err() {
        conn.pending.lock().expect("not poisoned").remove(&request);
        return Err("the data connection is closed".into());
    }
    let answer = tokio::time::timeout_at(deadline, rx).await;
    conn.pending.lock().expect("not poisoned").remove(&request);
    let m = match answer {
        Err(_) => return Err(format!("no answer within {timeout:?}")),
        Ok(Err(_)) => return Err("the data connection broke".into()),
        Ok(Ok(m)) => m,
    };
    // The answer comes back over the downlink's delay.
    let down = Instant::now();
    tokio::time::sleep(shared.one_way).await;
    let downlink_s = down.elapsed().as_secs_f64();
    match m {
        Message::InferOk {
            top1,
            queue_s,
            unpack_s,
            tail_s,
            ..
        } => {
            let worker = queue_s + unpack_s + tail_s;
            // Timed from the first bit out: waiting behind its own earlier frames says
            // nothing about the link's rate.
            let wire_s = (t.elapsed().as_secs_f64() - worker - queued_s).max(0.0);
            Ok((
                top1,
                Stages {
                    queue_s,
                    unpack_s,
                    tail_s,
                    link_s: uplink_s + downlink_s,
                    ..Stages::default()
                },
                wire_s,
            ))
        }
        Message::InferErr { busy, reason, .. } => Err(if busy {
            format!("worker busy: {reason}")
        } else {
            format!("worker error: {reason}")
        }),
        m => Err(format!("unexpected {}", m.kind())),
    }
}

/// Connects and shakes hands, within 2 s for the connection.
pub(crate) async fn dial(
    addr: &str,
    me: &Identity,
    max_frame: usize,
) -> Result<wire::Conn, String> {
    match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
        Ok(Ok(s)) => wire::connect(s, me, max_frame)
            .await
            .map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

/// Keeps a control connection to a coordinator: registers, takes plans, sends reports,
/// heartbeats (which measure the RTT) and probes the uplink when it is idle. Without a
/// coordinator the device runs device-only and keeps trying.
async fn control_loop(
    shared: Arc<Shared>,
    coordinators: Vec<String>,
    info: DeviceInfo,
    mdns: bool,
) {
    loop {
        let addrs = discovery::candidates(&shared.me.fleet, mdns, &coordinators).await;
        let mut found = None;
        for addr in addrs {
            match dial(&addr, &shared.me, shared.max_frame).await {
                Ok(c) => {
                    found = Some((addr, c));
                    break;
                }
                Err(e) => {
                    tracing::info!(coordinator = %addr, "not connected ({e}); device-only for now")
                }
            }
        }
        let Some((addr, conn)) = found else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        tracing::info!(coordinator = %addr, "connected");
        let (mut tx, mut rx) = conn.split();
        if tx
            .send(&Message::RegisterDevice(info.clone()))
            .await
            .is_err()
        {
            continue;
        }
        let (out, mut outq) = mpsc::unbounded_channel::<Message>();
        *shared.control.lock().expect("not poisoned") = Some(out.clone());
        let writer = actix_rt::spawn(async move {
            while let Some(m) = outq.recv().await {
                if tx.send(&m).await.is_err() {
                    break;
                }
            }
        });
        let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
        let beats = {
            let (out, shared, sent_at) = (out.clone(), shared.clone(), sent_at.clone());
            actix_rt::spawn(async move {
                let mut seq = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    seq += 1;
                    sent_at
                        .lock()
                        .expect("not poisoned")
                        .insert(seq, Instant::now());
                    let idle = shared.last_sent.lock().expect("not poisoned").elapsed();
                    if idle > Duration::from_secs(2) {
                        // An active probe: 32 KB through the uplink.
                        let t = Instant::now();
                        let _ = shared.cross_uplink(32 << 10).await;
                        sent_at
                            .lock()
                            .expect("not poisoned")
                            .insert(u64::MAX - seq, t);
                        if out
                            .send(Message::Probe {
                                seq,
                                padding: vec![0; 32 << 10],
                            })
                            .is_err()
                        {
                            break;
                        }
                    }
                    if out.send(Message::Heartbeat { seq }).is_err() {
                        break;
                    }
                }
            })
        };
        loop {
            // Heartbeats are answered every 500 ms: three seconds of silence is a
            // coordinator that hangs, not one that is slow.
            let m = match tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    tracing::info!("the coordinator is silent; device-only until it answers");
                    break;
                }
            };
            match m {
                Ok(Message::Plan(a)) => {
                    tracing::info!(plan = %a.candidate, worker = ?a.worker, "plan");
                    shared.plans.fetch_add(1, Ordering::Relaxed);
                    let device = shared.me.name.clone();
                    metrics::gauge!("dyno_plan_split", "device" => device.clone())
                        .set(f64::from(a.candidate.split));
                    metrics::gauge!("dyno_plan_bits", "device" => device)
                        .set(f64::from(a.candidate.precision.bits_per_value()));
                    *shared.plan.lock().expect("not poisoned") = Some(a);
                }
                Ok(Message::HeartbeatAck { seq }) => {
                    if let Some(t) = sent_at.lock().expect("not poisoned").remove(&seq) {
                        // The emulated link's round trip on top of the real one.
                        let rtt = t.elapsed() + 2 * shared.one_way;
                        let _ = out.send(Message::LinkSample {
                            bytes: 0,
                            seconds: rtt.as_secs_f64(),
                        });
                    }
                }
                Ok(Message::ProbeAck { seq }) => {
                    if let Some(t) = sent_at
                        .lock()
                        .expect("not poisoned")
                        .remove(&(u64::MAX - seq))
                    {
                        let secs = t.elapsed() + shared.one_way;
                        let _ = out.send(Message::LinkSample {
                            bytes: 32 << 10,
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
        beats.abort();
        writer.abort();
        *shared.control.lock().expect("not poisoned") = None;
        *shared.plan.lock().expect("not poisoned") = None;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
