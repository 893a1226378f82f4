//! Prometheus metrics: with `--metrics ADDR`, a process serves its metrics to any GET on
//! ADDR (`curl http://ADDR/metrics`), through `metrics-exporter-prometheus`.
//!
//! | name | kind | labels | from |
//! |---|---|---|---|
//! | `dyno_frames_total` | counter | `device` | agent: every finished frame |
//! | `dyno_fallbacks_total` | counter | `device` | agent: frames finished on the device because the cloud failed |
//! | `dyno_frame_errors_total` | counter | `device` | agent |
//! | `dyno_frames_over_budget_total` | counter | `device` | agent: frames run on the device because the plan's onload budget was spent |
//! | `dyno_phase_seconds` | histogram | `phase` = `device`, `pack`, `transfer`, `worker_queue`, `cloud`, `end_to_end` | agent |
//! | `dyno_plan_split`, `dyno_plan_bits` | gauge | `device` | agent (plan in force), coordinator (plan sent); bits 32 for fp32, 16 for fp16 |
//! | `dyno_bandwidth_estimate_mbps` | gauge | `device` | coordinator |
//! | `dyno_pool_utilisation` | gauge | | coordinator: planned cloud load over the pool's capacity |
//! | `dyno_slo_violations_total` | counter | `device` | coordinator: reported frames over the SLO's `max_latency_ms` |
//! | `dyno_replan_seconds` | histogram | | coordinator: one plan of the whole fleet |
//! | `dyno_registrations_total` | counter | `role` = `agent`, `worker` | coordinator: accepted registrations |
//! | `dyno_refused_peers_total` | counter | `endpoint` = `control`, `data` | coordinator, worker |
//! | `dyno_worker_inferences_total` | counter | | worker |
//! | `dyno_outbox_overflows_total` | counter | | any: connections closed because the peer read none of the messages queued for it |
use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;

/// Bucket bounds of the phase histograms, seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Installs the recorder and serves it on `addr` (from a thread of its own).
pub fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&BUCKETS)
        .context("histogram buckets")?
        .install()
        .with_context(|| format!("serving metrics on {addr}: is the address free and local?"))
}
