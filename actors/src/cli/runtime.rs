//! The runtime's processes on the command line: `dyno coordinator`, `dyno worker` and
//! `dyno agent` (flags over the TOML file, `--print-default-config`, logs, metrics,
//! signals).
use std::path::PathBuf;

use clap::Args;

use super::Global;
use crate::config::{self, AgentConfig, CoordinatorConfig, RoleConfig, WorkerConfig};
use crate::{agent, coordinator, worker};

/// Options every runtime process takes. Every setting comes from the `--config` file,
/// then its `DYNO_*` environment variable (shown beside each flag), then the flag: a
/// flag wins over the environment, which wins over the file. The fleet key is
/// DYNO_FLEET_KEY (or `[fleet] key` in the file).
#[derive(Debug, Args)]
pub struct Common {
    /// TOML configuration file (`--print-default-config` shows every key).
    #[arg(long, env = "DYNO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the default configuration and exit.
    #[arg(long, env = "DYNO_PRINT_DEFAULT_CONFIG")]
    pub print_default_config: bool,
    /// Run without a fleet key (no authentication): local experiments only.
    #[arg(long, env = "DYNO_INSECURE")]
    pub insecure: bool,
    /// Fleet id (over the file's).
    #[arg(long, env = "DYNO_FLEET")]
    pub fleet: Option<String>,
    /// Log lines as JSON.
    #[arg(long, env = "DYNO_LOG_JSON")]
    pub log_json: bool,
    /// No mDNS: neither advertise nor browse (static addresses only).
    #[arg(long, env = "DYNO_NO_MDNS")]
    pub no_mdns: bool,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address.
    #[arg(long, value_name = "ADDR", env = "DYNO_METRICS")]
    pub metrics: Option<std::net::SocketAddr>,
}

impl Common {
    /// Starts the metrics endpoint when asked for.
    fn serve_metrics(&self) -> anyhow::Result<()> {
        match self.metrics {
            Some(addr) => crate::metrics::serve(addr),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub common: Common,
    /// Control endpoint address (`:PORT`: every interface with a fleet key, loopback
    /// with --insecure).
    #[arg(long, env = "DYNO_LISTEN")]
    pub listen: Option<String>,
    /// Data endpoint of the embedded workers.
    #[arg(long, env = "DYNO_DATA_LISTEN")]
    pub data_listen: Option<String>,
    /// Embedded workers (0: only `dyno worker` processes serve tails).
    #[arg(long, env = "DYNO_WORKERS")]
    pub workers: Option<usize>,
    /// The model the fleet serves (`dyno models list`).
    #[arg(long, env = "DYNO_MODEL")]
    pub model: Option<String>,
    /// Print one JSON line with the bound addresses once listening.
    #[arg(long, env = "DYNO_READY_JSON")]
    pub ready_json: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub common: Common,
    /// The worker's name in the fleet (its registration and its identity).
    #[arg(long, env = "DYNO_NAME")]
    pub name: Option<String>,
    /// Coordinator control address (repeatable, or comma-separated; over the file's).
    #[arg(long, env = "DYNO_COORDINATOR", value_delimiter = ',')]
    pub coordinator: Vec<String>,
    /// Data endpoint address (`:PORT`: every interface with a fleet key, loopback with
    /// --insecure).
    #[arg(long, env = "DYNO_LISTEN")]
    pub listen: Option<String>,
    /// Worker threads (one tail at a time each).
    #[arg(long, env = "DYNO_WORKERS")]
    pub workers: Option<usize>,
    /// The model it serves (`dyno models list`).
    #[arg(long, env = "DYNO_MODEL")]
    pub model: Option<String>,
    /// Print one JSON line with the bound address once listening.
    #[arg(long, env = "DYNO_READY_JSON")]
    pub ready_json: bool,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub common: Common,
    /// The device's id in the fleet (its registration and its identity).
    #[arg(long, env = "DYNO_ID")]
    pub id: Option<String>,
    /// Coordinator control address, tried after mDNS (repeatable, or comma-separated;
    /// over the file's).
    #[arg(long, env = "DYNO_COORDINATOR", value_delimiter = ',')]
    pub coordinator: Vec<String>,
    /// The model it runs (`dyno models list`).
    #[arg(long, env = "DYNO_MODEL")]
    pub model: Option<String>,
    /// Device class (from the device-classes file).
    #[arg(long, env = "DYNO_CLASS")]
    pub class: Option<String>,
    /// Frames to run (0: until stopped).
    #[arg(long, env = "DYNO_FRAMES")]
    pub frames: Option<u64>,
    /// Uplink Mbit/s (a constant trace).
    #[arg(long, env = "DYNO_MBPS")]
    pub mbps: Option<f64>,
    /// Round-trip time of the emulated link, ms.
    #[arg(long, env = "DYNO_RTT_MS")]
    pub rtt_ms: Option<f64>,
    /// Compare each frame with the whole model run locally.
    #[arg(long, env = "DYNO_VERIFY")]
    pub verify: bool,
    /// JSON lines of every result.
    #[arg(long, env = "DYNO_RESULTS")]
    pub results: Option<PathBuf>,
}

pub(crate) fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// The process's configuration: its file (or the defaults), then the common flags over
/// it; `None` when it only printed the defaults (`--print-default-config`). Starts the
/// logs and, when asked, the metrics endpoint.
fn configure<T: RoleConfig>(c: &Common) -> anyhow::Result<Option<T>> {
    if c.print_default_config {
        print!("{}", config::print_default::<T>());
        return Ok(None);
    }
    let mut cfg: T = config::load(c.config.as_deref())?;
    init_logs(c.log_json);
    let fleet = cfg.fleet_mut();
    if c.insecure {
        fleet.insecure = true;
    }
    if let Some(f) = &c.fleet {
        fleet.id = f.clone();
    }
    fleet.check()?;
    if c.no_mdns {
        cfg.set_mdns(false);
    }
    c.serve_metrics()?;
    Ok(Some(cfg))
}

/// Runs a daemon in an actix system: `start` it, print its ready line when asked, then
/// serve until SIGINT or SIGTERM.
fn serve<T, F, Fut>(what: &str, ready_json: bool, start: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(T, serde_json::Value)>>,
{
    actix::System::new().block_on(async move {
        let (_running, ready) = start().await?;
        if ready_json {
            println!("{ready}");
        }
        shutdown_signal().await;
        tracing::info!("{what}: shutting down");
        Ok(())
    })
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub fn run_coordinator(global: &Global, a: CoordinatorArgs) -> anyhow::Result<()> {
    let Some(mut cfg) = configure::<CoordinatorConfig>(&a.common)? else {
        return Ok(());
    };
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.data_listen {
        cfg.data_listen = v;
    }
    if let Some(v) = a.workers {
        cfg.workers = v;
    }
    if let Some(v) = a.model {
        cfg.model = v;
    }
    let home = global.setup()?;
    serve("coordinator", a.ready_json, || async move {
        let c = coordinator::start(&cfg, &home).await?;
        let ready = serde_json::json!({
            "control": c.control.to_string(),
            "data": c.data.map(|d| d.to_string()),
        });
        Ok((c, ready))
    })
}

pub fn run_worker(global: &Global, a: WorkerArgs) -> anyhow::Result<()> {
    let Some(mut cfg) = configure::<WorkerConfig>(&a.common)? else {
        return Ok(());
    };
    if let Some(v) = a.name {
        cfg.name = v;
    }
    if !a.coordinator.is_empty() {
        cfg.coordinators = a.coordinator;
    }
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.workers {
        cfg.workers = v;
    }
    if let Some(v) = a.model {
        cfg.model = v;
    }
    let home = global.setup()?;
    serve("worker", a.ready_json, || async move {
        let w = worker::start(&cfg, &home).await?;
        let ready = serde_json::json!({"data": w.data.to_string()});
        Ok((w, ready))
    })
}

pub fn run_agent(global: &Global, a: AgentArgs) -> anyhow::Result<()> {
    let Some(mut cfg) = configure::<AgentConfig>(&a.common)? else {
        return Ok(());
    };
    if let Some(v) = a.id {
        cfg.id = v;
    }
    if !a.coordinator.is_empty() {
        cfg.coordinators = a.coordinator;
    }
    if let Some(v) = a.model {
        cfg.model = v;
    }
    if let Some(v) = a.class {
        cfg.class = v;
    }
    if let Some(v) = a.frames {
        cfg.frames = v;
    }
    if let Some(v) = a.mbps {
        cfg.link.mbps = v;
        cfg.link.steps.clear();
        cfg.link.trace = None;
    }
    if let Some(v) = a.rtt_ms {
        cfg.link.rtt_ms = v;
    }
    if a.verify {
        cfg.verify = true;
    }
    if let Some(v) = a.results {
        cfg.results = Some(v);
    }
    let home = global.setup()?;
    actix::System::new().block_on(async move {
        // SIGTERM or SIGINT: no new frame; the frames in flight finish, the summary is
        // printed and the agent exits 0, as a service manager expects of a clean stop.
        let stop = tokio_util::sync::CancellationToken::new();
        let on_signal = stop.clone();
        actix_rt::spawn(async move {
            shutdown_signal().await;
            tracing::info!("agent: stopping: finishing the frames in flight");
            on_signal.cancel();
        });
        let (summary, _) = agent::run_with_results(cfg, home, stop).await?;
        println!("{}", serde_json::to_string(&summary)?);
        Ok(())
    })
}
