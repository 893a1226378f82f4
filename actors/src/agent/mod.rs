//! `dyno agent`: one device. Each part is owned by one actor or one task:
//!
//! - `device`: the **Device** actor (its own thread: inputs, heads, packing, tails on
//!   fallback, the class's slowdown);
//! - `uplink`: the **Uplink** actor (the emulated uplink and its stall state);
//! - `data`: the connections to the workers, each frame waiting for its own answer;
//! - `frame`: one frame's path, which always ends with exactly one result (or one
//!   explicit error);
//! - `control`: the control connection's task (registration, plans, reports,
//!   heartbeats, probes);
//! - `setup`, `summary`: the checked set-up, and what the agent did.
//!
//! This file wires them and runs the frame loop.
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::Context as _;
use dyno::home::Home;
use dyno::model::zoo;
use dyno::pack::{Codec, Packer, Precision};
use dyno::sched::perf::Candidate;
use dyno::wire::{DeviceInfo, FrameReport, Identity, Role};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::Instrument;

use crate::config::AgentConfig;

mod control;
mod data;
mod device;
mod frame;
mod setup;
mod summary;
mod uplink;

pub use summary::{AgentSummary, FrameResult};

use control::{ControlLink, Upward};
use device::{Device, NextInput};
use frame::{FramePath, FrameRules};
use tokio_util::sync::CancellationToken;

/// Runs an agent inside the current actix system until its frames are done (forever
/// with `frames = 0`).
pub async fn run(cfg: AgentConfig, home: Home) -> anyhow::Result<AgentSummary> {
    Ok(run_with_results(cfg, home, CancellationToken::new())
        .await?
        .0)
}

/// Like [`run`], with every frame's record; once `stop` is cancelled (SIGTERM, say) no
/// new frame starts, the frames in flight finish, and the summary covers them all.
pub async fn run_with_results(
    cfg: AgentConfig,
    home: Home,
    stop: CancellationToken,
) -> anyhow::Result<(AgentSummary, Vec<FrameResult>)> {
    let key = cfg.fleet.key()?;
    let s = setup::setup(&cfg, &home)?;
    crate::metrics::init_device(&cfg.id);
    let blocks = s.model.num_blocks();
    let info = DeviceInfo {
        id: cfg.id.clone(),
        model: s.model.name().to_string(),
        class: s.class.clone(),
        slowdown: s.declared_slowdown,
        threads: s.threads,
        slo: s.slo.clone(),
        policy: cfg.policy,
        in_flight: cfg.in_flight.min(u32::MAX as usize) as u32,
    };
    let (slowdown, threads) = (s.slowdown, s.threads);
    // Without stretching, a stage lasts what it takes (the host's quota makes it slow).
    let (stretch_to, reference) = if cfg.stretch {
        (slowdown, s.reference)
    } else {
        (1.0, None)
    };
    // A model is not Send: the device thread loads its own copy (this one was checked).
    let model_name = cfg.model.clone();
    drop(s.model);
    let cell = Mutex::new(Some((s.source, home.clone(), reference)));
    // On the testbed only this thread runs under the device's CPU quota (the agent's
    // clock and network are not the device's compute): it moves itself there.
    let placement = std::env::var_os(crate::testbed::cgroup::COMPUTE_CGROUP);
    let placing = placement.is_some();
    let keep_busy = cfg.keep_busy;
    let (placed_tx, placed) = std::sync::mpsc::channel();
    let compute = SyncArbiter::start(1, move || {
        // The thread, and a spinner that keeps the quota spent while it waits.
        let busy = placement.as_ref().and_then(|tasks| {
            let tasks = Path::new(tasks);
            let placed = crate::testbed::cgroup::join_thread(tasks).and_then(|()| {
                keep_busy
                    .then(|| crate::testbed::cgroup::KeepBusy::start(Some(tasks)))
                    .transpose()
            });
            match placed {
                Ok(busy) => {
                    let _ = placed_tx.send(Ok(()));
                    busy
                }
                Err(e) => {
                    let _ = placed_tx.send(Err(e));
                    None
                }
            }
        });
        tch::set_num_threads(threads as i32);
        let (source, home, reference) = cell
            .lock()
            .expect("not poisoned")
            .take()
            .expect("one device thread");
        Device {
            model: zoo::load(&model_name, &home).map_err(|e| e.to_string()),
            packer: Packer::default(),
            slowdown: stretch_to,
            source,
            reference,
            busy,
        }
    });
    if placing {
        placed
            .recv_timeout(Duration::from_secs(10))
            .context("the device thread did not start")??;
    }
    let me = Identity {
        fleet: cfg.fleet.id.clone(),
        name: cfg.id.clone(),
        role: Role::Agent,
        key,
    };
    let start = Instant::now();
    if let Some(path) = &cfg.ready_file {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        std::fs::write(path, format!("{unix:.6}\n"))
            .with_context(|| format!("ready file {}", path.display()))?;
    }
    let one_way = Duration::from_secs_f64(cfg.link.rtt_ms / 2e3);
    let (upward, upward_rx) = mpsc::channel::<Upward>(control::UPWARD_CAPACITY);
    let uplink = uplink::Uplink::new(start, s.shaper, upward.clone()).start();
    let (plan_tx, plan_rx) = watch::channel(None);
    let plans = Arc::new(AtomicU64::new(0));
    let rtt = Arc::new(data::RoundTrip::default());
    let control = actix_rt::spawn(
        ControlLink {
            me: me.clone(),
            max_frame: cfg.fleet.max_frame,
            coordinators: cfg.coordinators.clone(),
            mdns: cfg.mdns,
            info,
            uplink: uplink.clone(),
            one_way,
            plan: plan_tx,
            plans: plans.clone(),
            rtt: rtt.clone(),
        }
        .run(upward_rx),
    );
    let path = Arc::new(FramePath {
        start,
        compute: compute.clone(),
        uplink: uplink.clone(),
        data: data::DataPath::new(me.clone(), cfg.fleet.max_frame, uplink, one_way, rtt),
        plan: plan_rx,
        budget: Default::default(),
        device: Arc::new(Semaphore::new(1)),
        tails_waiting: Default::default(),
    });
    let rules = FrameRules {
        device_only: Candidate {
            split: blocks as u16,
            precision: Precision::Fp32,
            codec: Codec::None,
        },
        pin: cfg.pin,
        verify: cfg.verify,
        timeout: Duration::from_secs_f64(cfg.timeout_s.max(0.01)),
    };
    let gate = Arc::new(Semaphore::new(cfg.in_flight.max(1)));
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
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = stop.cancelled() => break,
            }
        }
        let permit = tokio::select! {
            p = gate.clone().acquire_owned() => p.expect("never closed"),
            _ = stop.cancelled() => break,
        };
        // A frame starts when the compute thread is free, after any fallback tail (as a
        // simulated one does).
        let device = tokio::select! {
            p = path.device_for_a_frame() => p,
            _ = stop.cancelled() => break,
        };
        request += 1;
        let x = if cfg.verify {
            let x = compute
                .send(NextInput)
                .await
                .map_err(|e| anyhow::anyhow!("device thread: {e}"))?
                .map_err(anyhow::Error::msg)?;
            Some(x)
        } else {
            None
        };
        let (path, upward, name) = (path.clone(), upward.clone(), me.name.clone());
        // One span per frame: the worker opens one with the same device and request, so
        // that a frame is one trace across the processes' logs.
        let span = tracing::info_span!("frame", device = %me.name, request);
        tasks.push(actix_rt::spawn(
            async move {
                let r = frame::frame(&path, request, x, device, rules).await;
                tracing::debug!(
                    plan = %r.candidate,
                    bytes = r.bytes,
                    fallback = r.result.fallback,
                    latency_ms = r.result.latency_s * 1e3,
                    "frame done"
                );
                let _ = upward.try_send(Upward::Report(FrameReport {
                    request,
                    candidate: r.candidate,
                    stages: r.stages,
                    bytes: r.bytes,
                    transfer_s: r.stages.wire_s,
                    fallback: r.result.fallback,
                    over_budget: r.result.over_budget,
                }));
                summary::record(&name, &r);
                drop(permit);
                r.result
            }
            .instrument(span),
        ));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(r) = t.await {
            results.push(r);
        }
    }
    control.abort();
    let seconds = started.elapsed().as_secs_f64();
    if let Some(path) = &cfg.results {
        let mut text = String::new();
        for r in &results {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("results file {}", path.display()))?;
    }
    let summary = summary::summarize(
        &cfg.id,
        &results,
        request,
        seconds,
        plans.load(Ordering::Relaxed),
        blocks,
        path.data.answers().counts(),
    );
    Ok((summary, results))
}
