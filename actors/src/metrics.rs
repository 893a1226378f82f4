//! Operations endpoint: with `--metrics ADDR`, a process serves `/metrics` (Prometheus's
//! text format, through `metrics-exporter-prometheus`, with this process's CPU, memory
//! and descriptors from `metrics-process`), `/healthz` (200 while the process runs) and
//! `/readyz` (200 once it is registered and serving, 503 before and while it is not);
//! any other path is 404.
//!
//! | name | kind | labels | from |
//! |---|---|---|---|
//! | `dyno_build_info` | gauge (1) | `version`, `protocol` | any |
//! | `dyno_frames_total` | counter | `device` | agent: every finished frame |
//! | `dyno_fallbacks_total` | counter | `device` | agent: frames finished on the device because the cloud failed |
//! | `dyno_frame_errors_total` | counter | `device` | agent |
//! | `dyno_duplicate_answers_total` | counter | `device` | agent: second answers to a frame already answered, counted where they arrive (must stay 0) |
//! | `dyno_late_answers_total` | counter | `device` | agent: answers that arrived after their frame gave up and finished on the device |
//! | `dyno_frames_over_budget_total` | counter | `device` | agent: frames run on the device because the plan's onload budget was spent |
//! | `dyno_phase_seconds` | histogram | `phase` = `device`, `pack`, `transfer`, `worker_queue`, `cloud`, `end_to_end` | agent |
//! | `dyno_plan_split`, `dyno_plan_precision` | gauge | `device` | agent (plan in force), coordinator (plan sent); bits 32 for fp32, 16 for fp16 |
//! | `dyno_bandwidth_estimate_bytes_per_second` | gauge | `device` | coordinator |
//! | `dyno_pool_utilization_ratio` | gauge | | coordinator: planned cloud load over the pool's capacity |
//! | `dyno_slo_violations_total` | counter | `device` | coordinator: reported frames over the SLO's `max_latency_ms` |
//! | `dyno_replan_seconds` | histogram | | coordinator: one plan of the whole fleet |
//! | `dyno_registrations_total` | counter | `role` = `agent`, `worker` | coordinator: accepted registrations |
//! | `dyno_refused_peers_total` | counter | `endpoint` = `control`, `data` | coordinator, worker |
//! | `dyno_worker_inferences_total` | counter | | worker |
//! | `dyno_worker_batch_frames` | histogram | | worker: frames per batch run |
//! | `dyno_worker_over_budget_total` | counter | `device` | worker: frames answered busy because their device was over its budget |
//! | `dyno_outbox_overflows_total` | counter | | any: connections closed because the peer read none of the messages queued for it |
//! | `process_*` | | | any: `metrics-process` (CPU seconds, resident memory, open descriptors, threads, start time) |
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Bucket bounds of the phase histograms, seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Whether this process is registered and serving (`/readyz`): the coordinator once it
/// listens, a worker while it is registered with a coordinator, an agent while it has
/// a plan from one.
static READY: AtomicBool = AtomicBool::new(false);

/// Says whether this process is ready (`/readyz`).
pub fn set_ready(ready: bool) {
    READY.store(ready, Ordering::Relaxed);
}

fn describe() {
    use describe_counter as c;
    use describe_gauge as g;
    use describe_histogram as h;
    g!(
        "dyno_build_info",
        "The dyno release and protocol version (always 1)."
    );
    c!("dyno_frames_total", "Frames the device finished.");
    c!(
        "dyno_fallbacks_total",
        "Frames finished on the device because the cloud failed."
    );
    c!("dyno_frame_errors_total", "Frames that ended in an error.");
    c!(
        "dyno_duplicate_answers_total",
        "Second answers to a frame already answered, counted where they arrive (must stay 0)."
    );
    c!(
        "dyno_late_answers_total",
        "Answers that arrived after their frame gave up waiting and finished on the device."
    );
    c!(
        "dyno_frames_over_budget_total",
        "Frames run on the device because the plan's onload budget was spent."
    );
    h!(
        "dyno_phase_seconds",
        Unit::Seconds,
        "Time of each phase of a frame."
    );
    g!("dyno_plan_split", "The split point of the plan in force.");
    g!(
        "dyno_plan_precision",
        "The precision of the plan in force, bits (32: fp32)."
    );
    g!(
        "dyno_bandwidth_estimate_bytes_per_second",
        Unit::Bytes,
        "The coordinator's estimate of a device's uplink."
    );
    g!(
        "dyno_pool_utilization_ratio",
        "Planned cloud load over the pool's capacity."
    );
    c!(
        "dyno_slo_violations_total",
        "Reported frames over their SLO's latency."
    );
    h!(
        "dyno_replan_seconds",
        Unit::Seconds,
        "Time of one plan of the whole fleet."
    );
    c!("dyno_registrations_total", "Accepted registrations.");
    c!(
        "dyno_refused_peers_total",
        "Peers refused at an endpoint (handshake, role or name)."
    );
    c!("dyno_worker_inferences_total", "Tails a worker ran.");
    h!("dyno_worker_batch_frames", "Frames per batch a worker ran.");
    c!(
        "dyno_worker_over_budget_total",
        "Frames answered busy because their device was over its onload budget."
    );
    c!(
        "dyno_outbox_overflows_total",
        "Connections closed because the peer read none of the messages queued for it."
    );
    metrics::gauge!(
        "dyno_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "protocol" => dyno::wire::PROTOCOL_VERSION.to_string()
    )
    .set(1.0);
}

/// A device's counters at zero from its start, so that a dashboard and a rate see them
/// before the first fallback or error.
pub fn init_device(device: &str) {
    for name in [
        "dyno_frames_total",
        "dyno_fallbacks_total",
        "dyno_frames_over_budget_total",
        "dyno_frame_errors_total",
        "dyno_duplicate_answers_total",
        "dyno_late_answers_total",
    ] {
        metrics::counter!(name, "device" => device.to_string()).increment(0);
    }
}

/// A coordinator's counters at zero from its start.
pub fn init_coordinator() {
    metrics::counter!("dyno_refused_peers_total", "endpoint" => "control").increment(0);
    metrics::counter!("dyno_outbox_overflows_total").increment(0);
    for role in ["agent", "worker"] {
        metrics::counter!("dyno_registrations_total", "role" => role).increment(0);
    }
}

/// A worker's counters at zero from its start (the coordinator's embedded pool too).
pub fn init_worker() {
    metrics::counter!("dyno_refused_peers_total", "endpoint" => "data").increment(0);
    metrics::counter!("dyno_worker_inferences_total").increment(0);
    metrics::counter!("dyno_outbox_overflows_total").increment(0);
}

fn answer(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn route(
    path: &str,
    handle: &PrometheusHandle,
    process: &metrics_process::Collector,
) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    match path {
        "/metrics" => {
            process.collect();
            answer(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                handle.render(),
            )
        }
        "/healthz" => answer(StatusCode::OK, text, "ok\n".into()),
        "/readyz" if READY.load(Ordering::Relaxed) => {
            answer(StatusCode::OK, text, "ready\n".into())
        }
        "/readyz" => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            "not ready: not registered and serving yet\n".into(),
        ),
        _ => answer(
            StatusCode::NOT_FOUND,
            text,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Installs the recorder and serves `/metrics`, `/healthz` and `/readyz` on `addr`
/// (from a thread of its own).
pub fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    let process = metrics_process::Collector::default();
    process.describe();
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("serving metrics on {addr}: is the address free and local?"))?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the metrics endpoint");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let upkeep = handle.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        tick.tick().await;
                        upkeep.run_upkeep();
                    }
                });
                let state = std::sync::Arc::new((handle, process));
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<_>| {
                            let state = state.clone();
                            async move {
                                Ok::<_, Infallible>(route(req.uri().path(), &state.0, &state.1))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        })
        .context("starting the metrics thread")?;
    Ok(())
}
