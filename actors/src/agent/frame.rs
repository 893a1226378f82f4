//! One frame's path on the device: the plan in force, the head and packing on the
//! Device actor, the uplink and the worker (`data`), and the fallback: the Device
//! finishes the frame itself whenever the cloud cannot. Every frame ends with exactly
//! one result or one explicit error.
use std::time::{Duration, Instant};

use actix::prelude::*;
use dyno::sched::control::Budget;
use dyno::sched::perf::Candidate;
use dyno::wire::{Assignment, Stages};
use tch::Tensor;
use tokio::sync::watch;

use super::data::{CloudError, DataPath};
use super::device::{Device, Full, Head, Tail};
use super::summary::{Done, FrameResult};
use super::uplink::{IsStalled, Uplink};

/// What a frame runs through: the device's compute, its uplink and data path, and the
/// plan in force (the control connection's).
pub(super) struct FramePath {
    pub start: Instant,
    pub compute: Addr<Device>,
    pub uplink: Addr<Uplink>,
    pub data: DataPath,
    pub plan: watch::Receiver<Option<Assignment>>,
    /// The plan's onload budget, enforced frame by frame.
    pub budget: std::sync::Mutex<Budget>,
    /// The compute thread, one frame's work at a time: a frame starts when it is free
    /// and holds it for its head (and a fallback tail takes it again), as a simulated
    /// device does (`experiment::sim`): frames do not queue for the device.
    pub device: std::sync::Arc<tokio::sync::Semaphore>,
    /// Fallback tails waiting for the compute thread: they go before a new frame starts.
    pub tails_waiting: std::sync::atomic::AtomicUsize,
}

impl FramePath {
    /// The compute thread for a new frame: after every fallback tail waiting for it.
    pub async fn device_for_a_frame(&self) -> tokio::sync::OwnedSemaphorePermit {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            let p = self.take_device().await;
            if self.tails_waiting.load(SeqCst) == 0 {
                return p;
            }
            drop(p);
            tokio::task::yield_now().await;
        }
    }

    /// The compute thread for a fallback tail.
    async fn device_for_a_tail(&self) -> tokio::sync::OwnedSemaphorePermit {
        use std::sync::atomic::Ordering::SeqCst;
        self.tails_waiting.fetch_add(1, SeqCst);
        let p = self.take_device().await;
        self.tails_waiting.fetch_sub(1, SeqCst);
        p
    }

    async fn take_device(&self) -> tokio::sync::OwnedSemaphorePermit {
        let device = self.device.clone();
        device.acquire_owned().await.expect("never closed")
    }
}

/// How every frame of an agent is run.
#[derive(Clone, Copy)]
pub(super) struct FrameRules {
    pub device_only: Candidate,
    pub pin: Option<Candidate>,
    pub verify: bool,
    pub timeout: Duration,
}

/// One frame, start to end: exactly one result or one error. `device` is the compute
/// thread, taken for this frame; `x` its input, if it was read already.
pub(super) async fn frame(
    path: &FramePath,
    request: u64,
    x: Option<Tensor>,
    device: tokio::sync::OwnedSemaphorePermit,
    rules: FrameRules,
) -> Done {
    let FrameRules {
        device_only,
        pin,
        verify,
        timeout,
    } = rules;
    let t0 = Instant::now();
    let compute = &path.compute;
    let plan = path.plan.borrow().clone();
    let expected = plan.as_ref().map(|a| a.expected);
    let planned_k_dev = plan.as_ref().map(|a| a.feedback.k_dev);
    let budget_fps = plan.as_ref().map(|a| a.rate_fps);
    let stalled = path.uplink.send(IsStalled).await.unwrap_or(true);
    let (mut candidate, mut worker) = match &plan {
        Some(a) if a.worker.is_some() && !stalled => (a.candidate, a.worker.clone()),
        _ => (device_only, None),
    };
    // Over its budget, a frame the plan would onload runs on the device.
    let mut over_budget = false;
    if let (Some(a), Some(_)) = (&plan, &worker) {
        let now_s = path.start.elapsed().as_secs_f64();
        let mut budget = path.budget.lock().unwrap_or_else(|e| e.into_inner());
        if !budget.admit(now_s, a.rate_fps) {
            (candidate, worker, over_budget) = (device_only, None, true);
        }
    }
    if let (Some(p), Some(_)) = (pin, &worker) {
        candidate = p;
    }
    let local_top1 = match (&x, verify) {
        (Some(x), true) => compute
            .send(Full {
                x: x.shallow_clone(),
            })
            .await
            .ok()
            .and_then(Result::ok),
        _ => None,
    };
    let fail = |candidate, error: String| Done {
        result: FrameResult {
            request,
            start_s: t0.duration_since(path.start).as_secs_f64(),
            candidate,
            top1: None,
            local_top1,
            fallback: false,
            over_budget,
            error: Some(error),
            stages: Stages::default(),
            device_wait_s: 0.0,
            latency_s: t0.elapsed().as_secs_f64(),
            bytes: 0,
            expected,
            planned_k_dev,
            budget_fps,
        },
        candidate,
        stages: Stages::default(),
        bytes: 0,
    };
    let head = compute
        .send(Head {
            x,
            candidate,
            sent: Instant::now(),
        })
        .await;
    drop(device);
    let head = match head {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return fail(candidate, format!("head: {e}")),
        Err(e) => return fail(candidate, format!("device thread: {e}")),
    };
    let mut stages = Stages {
        head_s: head.head_s,
        pack_s: head.pack_s,
        ..Stages::default()
    };
    let device_wait_s = head.wait_s;
    let done = |top1, fallback, stages: Stages, bytes| Done {
        result: FrameResult {
            request,
            start_s: t0.duration_since(path.start).as_secs_f64(),
            candidate,
            top1: Some(top1),
            local_top1,
            fallback,
            over_budget,
            error: None,
            stages,
            device_wait_s,
            latency_s: t0.elapsed().as_secs_f64(),
            bytes,
            expected,
            planned_k_dev,
            budget_fps,
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
        Some(addr) => path.data.infer(&addr, request, head.packed, timeout).await,
        None => Err(CloudError::NoWorker),
    };
    match answer {
        Ok((top1, worker_stages, wire_s)) => {
            stages.queue_s = worker_stages.queue_s;
            stages.unpack_s = worker_stages.unpack_s;
            stages.tail_s = worker_stages.tail_s;
            stages.batch = worker_stages.batch;
            stages.link_s = worker_stages.link_s;
            stages.wire_s = wire_s;
            done(top1, false, stages, bytes)
        }
        Err(why) => {
            tracing::debug!(request, "finishing on the device: {why}");
            let _device = path.device_for_a_tail().await;
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
