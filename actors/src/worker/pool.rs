//! The **CloudWorker** actor (a `SyncArbiter`; one model copy and one libtorch intra-op
//! thread each) and the `Pool` in front of it with bounded admission: with `slots`
//! threads busy and `queue` frames waiting, the next frame is answered busy at once.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use dyno::home::Home;
use dyno::model::{zoo, Model};
use dyno::pack::tensor::unpack_tensor;
use dyno::pack::{DecodeLimits, Packer};

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
    pub tail_s: f64,
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

impl Handler<RunTail> for CloudWorker {
    type Result = Result<TailDone, TailError>;

    fn handle(&mut self, m: RunTail, _: &mut Self::Context) -> Self::Result {
        let queue_s = m.enqueued.elapsed().as_secs_f64();
        let model = self
            .model
            .as_ref()
            .map_err(|e| TailError::Failed(e.clone()))?;
        let t = Instant::now();
        let (header, a) = unpack_tensor(&mut self.packer, &m.packed, &self.limits)
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
        let unpack_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let y = model
            .tail(&a, header.split as usize)
            .map_err(|e| TailError::Failed(e.to_string()))?;
        let top1 = y.argmax(-1, false).int64_value(&[0]);
        Ok(TailDone {
            top1,
            queue_s,
            unpack_s,
            tail_s: t.elapsed().as_secs_f64(),
        })
    }
}

/// A pool of worker threads with bounded admission.
#[derive(Clone)]
pub struct Pool {
    addr: Addr<CloudWorker>,
    pub slots: usize,
    pub queue: usize,
    in_flight: Arc<AtomicUsize>,
}

impl Pool {
    pub fn start(home: &Home, model: &str, slots: usize, queue: usize) -> Pool {
        let (home, model) = (home.clone(), model.to_string());
        Pool {
            addr: SyncArbiter::start(slots.max(1), move || CloudWorker::new(&home, &model)),
            slots: slots.max(1),
            queue,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Frames admitted and not yet answered.
    pub fn queued(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Runs a tail, or says busy when the queue is full.
    pub async fn run(&self, packed: Vec<u8>) -> Result<TailDone, TailError> {
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if n >= self.slots + self.queue {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(TailError::Busy(n));
        }
        let r = self
            .addr
            .send(RunTail {
                packed,
                enqueued: Instant::now(),
            })
            .await;
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        match r {
            Ok(r) => r,
            Err(e) => Err(TailError::Failed(format!("worker thread gone: {e}"))),
        }
    }
}
