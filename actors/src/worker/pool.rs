//! The **CloudWorker** actor (a `SyncArbiter`; one model copy and one libtorch intra-op
//! thread each) and the `Pool` in front of it with bounded admission: with `slots`
//! threads busy and `queue` frames waiting, the next frame is answered busy at once.
//! With dynamic batching (`Batching`), frames for the same split wait up to
//! `max_queue_delay` in the `batcher` task to run as one batch, up to the size that pays
//! at their split (the cloud profile's batch curve); batch 1 is the path without it.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dyno::config::Devices;
use dyno::home::Home;
use dyno::model::{zoo, Model};
use dyno::pack::tensor::unpack_tensor;
use dyno::pack::{DecodeLimits, Header, Packer};
use tch::Tensor;
use tokio::sync::{mpsc, oneshot};

use crate::config::BatchingConfig;
pub use dyno::sched::batch::Batching;

/// Runs one tail.
#[derive(Message)]
#[rtype(result = "Result<TailDone, TailError>")]
pub struct RunTail {
    pub packed: Vec<u8>,
    pub enqueued: Instant,
}

/// Why a tail did not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TailError {
    /// Every slot busy and the queue full: the agent finishes the frame itself.
    #[error("queue full ({0} frames)")]
    Busy(usize),
    /// The frame itself, the model or the thread failed.
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Clone, Copy)]
pub struct TailDone {
    pub top1: i64,
    pub queue_s: f64,
    pub unpack_s: f64,
    /// The tail of the whole batch the frame ran in.
    pub tail_s: f64,
    /// Frames in that batch.
    pub batch: u32,
}

/// Runs the tails of frames of one split as one batch: one answer per frame, in order.
#[derive(Message)]
#[rtype(result = "Vec<Result<TailDone, TailError>>")]
pub struct RunBatch {
    pub frames: Vec<(Vec<u8>, Instant)>,
}

/// One worker thread with its own copy of the model.
pub struct CloudWorker {
    model: Result<Model, String>,
    packer: Packer,
    limits: DecodeLimits,
}

impl CloudWorker {
    pub fn new(home: &Home, model: &str) -> CloudWorker {
        // Several threads that each run libtorch with a full intra-op pool slow each
        // other several times over (docs/SCHEDULER.md): one each.
        tch::set_num_threads(1);
        CloudWorker {
            model: zoo::load(model, home).map_err(|e| e.to_string()),
            packer: Packer::default(),
            limits: DecodeLimits::default(),
        }
    }
}

impl Actor for CloudWorker {
    type Context = SyncContext<Self>;
}

impl CloudWorker {
    /// One frame's activation, checked against the model this worker serves, with its
    /// split and the seconds its unpacking took. The header is checked first (model,
    /// weights, and the activation's size at its split), so nothing larger than the
    /// model's own activation is ever decoded.
    fn unpack(&mut self, packed: &[u8]) -> Result<(Tensor, usize, f64), TailError> {
        let model = self
            .model
            .as_ref()
            .map_err(|e| TailError::Failed(e.clone()))?;
        let t = Instant::now();
        let (header, _) = Header::decode(packed, self.limits.max_elements)
            .map_err(|e| TailError::Failed(format!("unpacking: {e}")))?;
        if header.model != model.name() || header.weights_hash != model.weights_hash() {
            return Err(TailError::Failed(format!(
                "the activation is of `{}` (weights {:016x}); this worker serves `{}` \
                 (weights {:016x})",
                header.model,
                header.weights_hash,
                model.name(),
                model.weights_hash()
            )));
        }
        let split = header.split as usize;
        let want: u64 = model
            .activation_shape(split)
            .map_err(|e| TailError::Failed(format!("split {split}: {e}")))?
            .iter()
            .map(|&d| d.max(0) as u64)
            .product();
        if header.elements() != want {
            return Err(TailError::Failed(format!(
                "the activation at split {split} holds {} elements; `{}` has {want} there",
                header.elements(),
                model.name()
            )));
        }
        let limits = DecodeLimits { max_elements: want };
        let (_, a) = unpack_tensor(&mut self.packer, packed, &limits)
            .map_err(|e| TailError::Failed(format!("unpacking: {e}")))?;
        Ok((a, split, t.elapsed().as_secs_f64()))
    }
}

impl Handler<RunTail> for CloudWorker {
    type Result = Result<TailDone, TailError>;

    fn handle(&mut self, m: RunTail, ctx: &mut Self::Context) -> Self::Result {
        let batch = RunBatch {
            frames: vec![(m.packed, m.enqueued)],
        };
        self.handle(batch, ctx)
            .pop()
            .unwrap_or_else(|| Err(TailError::Failed("no answer".into())))
    }
}

impl Handler<RunBatch> for CloudWorker {
    type Result = Vec<Result<TailDone, TailError>>;

    fn handle(&mut self, m: RunBatch, _: &mut Self::Context) -> Self::Result {
        let started = Instant::now();
        let mut out: Vec<Result<TailDone, TailError>> = Vec::with_capacity(m.frames.len());
        // Frames that unpacked and belong to the batch's split (the first good one's).
        let mut good: Vec<(usize, Tensor, f64)> = Vec::new();
        let mut split = None;
        for (i, (packed, enqueued)) in m.frames.iter().enumerate() {
            let queue_s = started.saturating_duration_since(*enqueued).as_secs_f64();
            out.push(Ok(TailDone {
                top1: -1,
                queue_s,
                unpack_s: 0.0,
                tail_s: 0.0,
                batch: 0,
            }));
            match self.unpack(packed) {
                Ok((a, s, unpack_s)) if split.is_none_or(|x| x == s) => {
                    split = Some(s);
                    good.push((i, a, unpack_s));
                }
                Ok((_, s, _)) => {
                    out[i] = Err(TailError::Failed(format!(
                        "a batch of split {split:?} was given a frame of split {s}"
                    )))
                }
                Err(e) => out[i] = Err(e),
            }
        }
        let (Some(split), Ok(model)) = (split, self.model.as_ref()) else {
            return out;
        };
        let t = Instant::now();
        let xs: Vec<&Tensor> = good.iter().map(|g| &g.1).collect();
        let y = if xs.len() == 1 {
            model.tail(xs[0], split)
        } else {
            model.tail(&Tensor::cat(&xs, 0), split)
        };
        let tail_s = t.elapsed().as_secs_f64();
        match y {
            Ok(y) => {
                let top1 = y.argmax(-1, false);
                for (row, (i, _, unpack_s)) in good.iter().enumerate() {
                    if let Ok(d) = out[*i].as_mut() {
                        d.top1 = top1.int64_value(&[row as i64]);
                        d.unpack_s = *unpack_s;
                        d.tail_s = tail_s;
                        d.batch = good.len() as u32;
                    }
                }
            }
            Err(e) => {
                for (i, _, _) in &good {
                    out[*i] = Err(TailError::Failed(e.to_string()));
                }
            }
        }
        out
    }
}

/// The batching a worker's file asks for (`[batching]`), resolved with the batch curve
/// of the latency profile it names, or the cloud's in the device-classes file `devices`
/// (default: config/devices.toml's: models/profiles/<model>.latency-1thread.json); an
/// error naming the fix when batching is asked for and no curve was measured.
pub fn resolve_batching(
    cfg: &BatchingConfig,
    home: &Home,
    model: &str,
    devices: Option<&std::path::Path>,
) -> anyhow::Result<Batching> {
    let path = match &cfg.profile {
        Some(p) => home.root().join(p),
        None => {
            let classes = Devices::load_or_default(devices, home)?;
            classes.cloud_profile(home, model)
        }
    };
    let b = Batching::resolve(
        &path,
        model,
        cfg.max_batch,
        cfg.max_queue_delay_ms as f64 / 1e3,
    )
    .map_err(|e| anyhow::anyhow!("batching.{e}"))?;
    if b.is_on() {
        tracing::info!(limits = ?b.limits, "dynamic batching: the largest batch that pays at each split");
    }
    Ok(b)
}

/// A frame waiting in the batcher.
struct Waiting {
    packed: Vec<u8>,
    split: usize,
    enqueued: Instant,
    answer: oneshot::Sender<Result<TailDone, TailError>>,
}

/// Collects frames by split and sends each batch to the workers when it is as large as
/// its split allows or its first frame has waited `max_queue_delay`.
async fn batcher(
    mut rx: mpsc::UnboundedReceiver<Waiting>,
    addr: Addr<CloudWorker>,
    batching: Batching,
) {
    let mut pending: BTreeMap<usize, (Instant, Vec<Waiting>)> = BTreeMap::new();
    let dispatch = |frames: Vec<Waiting>| {
        let addr = addr.clone();
        actix_rt::spawn(async move {
            let (answers, batch): (Vec<_>, Vec<_>) = frames
                .into_iter()
                .map(|w| (w.answer, (w.packed, w.enqueued)))
                .unzip();
            let results = addr.send(RunBatch { frames: batch }).await;
            for (i, a) in answers.into_iter().enumerate() {
                let r = match &results {
                    Ok(r) => r
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| Err(TailError::Failed("no answer".into()))),
                    Err(e) => Err(TailError::Failed(format!("worker thread gone: {e}"))),
                };
                let _ = a.send(r);
            }
        });
    };
    let delay = Duration::from_secs_f64(batching.max_queue_delay_s);
    loop {
        let due = pending.values().map(|(first, _)| *first + delay).min();
        let next = match due {
            Some(at) => tokio::select! {
                w = rx.recv() => Some(w),
                _ = tokio::time::sleep_until(at.into()) => None,
            },
            None => Some(rx.recv().await),
        };
        match next {
            Some(Some(w)) => {
                let split = w.split;
                let entry = pending
                    .entry(split)
                    .or_insert_with(|| (Instant::now(), Vec::new()));
                entry.1.push(w);
                if entry.1.len() >= batching.limit(split) {
                    let (_, frames) = pending.remove(&split).expect("just filled");
                    dispatch(frames);
                }
            }
            Some(None) => {
                for (_, (_, frames)) in std::mem::take(&mut pending) {
                    dispatch(frames);
                }
                return;
            }
            None => {
                let now = Instant::now();
                let ready: Vec<usize> = pending
                    .iter()
                    .filter(|(_, (first, _))| *first + delay <= now)
                    .map(|(s, _)| *s)
                    .collect();
                for s in ready {
                    let (_, frames) = pending.remove(&s).expect("listed");
                    dispatch(frames);
                }
            }
        }
    }
}

/// A pool of worker threads with bounded admission.
#[derive(Clone)]
pub struct Pool {
    addr: Addr<CloudWorker>,
    pub slots: usize,
    pub queue: usize,
    in_flight: Arc<AtomicUsize>,
    batching: Arc<Batching>,
    /// The batcher's inbox (none without batching).
    batcher: Option<mpsc::UnboundedSender<Waiting>>,
}

impl Pool {
    /// `slots` worker threads; `queue` frames waiting beyond them; `batching`
    /// ([`Batching::off`]: one frame at a time). Within an actix system.
    pub fn start(home: &Home, model: &str, slots: usize, queue: usize, batching: Batching) -> Pool {
        let (home, model) = (home.clone(), model.to_string());
        let addr = SyncArbiter::start(slots.max(1), move || CloudWorker::new(&home, &model));
        let batcher = batching.limits.iter().any(|&l| l > 1).then(|| {
            // Bounded by admission: at most `slots + queue` frames are ever in it.
            let (tx, rx) = mpsc::unbounded_channel();
            actix_rt::spawn(batcher(rx, addr.clone(), batching.clone()));
            tx
        });
        Pool {
            addr,
            slots: slots.max(1),
            queue,
            in_flight: Arc::new(AtomicUsize::new(0)),
            batching: Arc::new(batching),
            batcher,
        }
    }

    /// Frames admitted and not yet answered.
    pub fn queued(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Runs a tail, or says busy when the queue is full.
    pub async fn run(&self, packed: Vec<u8>) -> Result<TailDone, TailError> {
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if !dyno::sched::control::has_room(n, self.slots, self.queue) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(TailError::Busy(n));
        }
        let enqueued = Instant::now();
        // Its split, from the header alone (a frame whose header does not decode goes
        // on alone and is refused by the worker with the reason).
        let split = Header::decode(&packed, DecodeLimits::default().max_elements)
            .map(|(h, _)| h.split as usize)
            .ok();
        let r = match (&self.batcher, split) {
            (Some(tx), Some(split)) if self.batching.limit(split) > 1 => {
                let (answer, rx) = oneshot::channel();
                let w = Waiting {
                    packed,
                    split,
                    enqueued,
                    answer,
                };
                match tx.send(w) {
                    Ok(()) => rx
                        .await
                        .unwrap_or_else(|_| Err(TailError::Failed("the batcher is gone".into()))),
                    Err(_) => Err(TailError::Failed("the batcher is gone".into())),
                }
            }
            _ => self
                .addr
                .send(RunTail { packed, enqueued })
                .await
                .unwrap_or_else(|e| Err(TailError::Failed(format!("worker thread gone: {e}")))),
        };
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        r
    }
}
