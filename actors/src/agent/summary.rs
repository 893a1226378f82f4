//! What an agent did: each frame's record, the summary, and the frame metrics.
use std::collections::BTreeMap;

use dyno::sched::perf::Candidate;
use dyno::wire::Stages;
use serde::Serialize;

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
    /// Its plan onloads, and it ran device-only: the onload budget was spent.
    #[serde(default)]
    pub over_budget: bool,
    pub error: Option<String>,
    pub stages: Stages,
    /// Seconds it waited for the device's compute thread (busy with other frames) before
    /// its head ran.
    #[serde(default)]
    pub device_wait_s: f64,
    pub latency_s: f64,
    /// Bytes sent to the worker.
    pub bytes: u64,
    /// What the plan in force when it started expected the device to make (none before
    /// the first plan).
    #[serde(default)]
    pub expected: Option<dyno::sched::control::Expected>,
    /// The device's correction factor (`k_dev`) that plan was made with.
    #[serde(default)]
    pub planned_k_dev: Option<f64>,
    /// That plan's onload budget, frames per second (infinite: none).
    #[serde(default)]
    pub budget_fps: Option<f64>,
}

/// What an agent did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct AgentSummary {
    pub id: String,
    pub frames: u64,
    pub results: u64,
    pub errors: u64,
    pub fallbacks: u64,
    /// Frames run device-only because the onload budget was spent.
    #[serde(default)]
    pub over_budget: u64,
    pub onloaded: u64,
    pub device_only: u64,
    pub verified: u64,
    pub mismatches: u64,
    /// Second answers to frames already answered, counted where they arrive (must be 0).
    pub duplicates: u64,
    /// Answers that arrived after their frame gave up waiting and finished on the device.
    #[serde(default)]
    pub late_answers: u64,
    pub plans_received: u64,
    pub splits: BTreeMap<u16, u64>,
    pub mean_latency_ms: f64,
    pub seconds: f64,
    pub fps: f64,
}

pub(super) fn summarize(
    id: &str,
    results: &[FrameResult],
    frames: u64,
    seconds: f64,
    plans: u64,
    blocks: usize,
    (duplicates, late_answers): (u64, u64),
) -> AgentSummary {
    let mut s = AgentSummary {
        id: id.to_string(),
        frames,
        plans_received: plans,
        seconds,
        duplicates,
        late_answers,
        ..AgentSummary::default()
    };
    let mut latency = 0.0;
    for r in results {
        if r.error.is_some() {
            s.errors += 1;
            continue;
        }
        s.results += 1;
        latency += r.latency_s;
        if r.fallback {
            s.fallbacks += 1;
        }
        if r.over_budget {
            s.over_budget += 1;
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
pub(super) fn record(device: &str, d: &Done) {
    let device = device.to_string();
    metrics::counter!("dyno_frames_total", "device" => device.clone()).increment(1);
    if d.result.fallback {
        metrics::counter!("dyno_fallbacks_total", "device" => device.clone()).increment(1);
    }
    if d.result.over_budget {
        metrics::counter!("dyno_frames_over_budget_total", "device" => device.clone()).increment(1);
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

/// A finished frame: its record and what the coordinator is told of it.
pub(super) struct Done {
    pub result: FrameResult,
    pub candidate: Candidate,
    pub stages: Stages,
    pub bytes: u64,
}
