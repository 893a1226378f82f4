//! The `dyno` binary: the library's subcommands (models, profile, plan) and the
//! runtime's (coordinator, worker, agent). Parses, runs, reports errors.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use dyno_actors::config::{self, AgentConfig, CoordinatorConfig, WorkerConfig};
use dyno_actors::{agent, coordinator, worker};

#[derive(Debug, Parser)]
#[command(
    name = "dyno",
    version,
    about = "Dynamic onloading of CNN inference for a device fleet (DynO)"
)]
struct Cli {
    #[command(flatten)]
    global: dyno::cli::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Base(dyno::cli::Command),
    /// The fleet coordinator daemon: scheduler, bandwidth monitor, embedded workers.
    Coordinator(CoordinatorArgs),
    /// A cloud worker: registers with the coordinator and serves tails.
    Worker(WorkerArgs),
    /// One device: runs heads, packs, sends activations to its worker.
    Agent(AgentArgs),
    /// The live fleet from its coordinator: devices, plans, rates, latency, workers, pool.
    Status(StatusArgs),
    /// Load-test a coordinator: many synthetic agents over the real protocol.
    Load(LoadArgs),
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Synthetic agents (one connection each to the coordinator and to their worker).
    #[arg(long, default_value_t = 500)]
    agents: usize,
    /// Seconds of frames.
    #[arg(long, default_value_t = 600.0)]
    duration_s: f64,
    /// Frames per second per agent.
    #[arg(long, default_value_t = 1.0)]
    rate_fps: f64,
    /// A running coordinator (its fleet key from DYNO_FLEET_KEY); without one, a
    /// coordinator is started with `--workers` embedded workers and sampled from /proc.
    #[arg(long)]
    coordinator: Option<String>,
    /// The given coordinator runs without a fleet key.
    #[arg(long)]
    insecure: bool,
    #[arg(long, default_value = "dyno-load")]
    fleet: String,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seconds without an answer before a frame counts as lost.
    #[arg(long, default_value_t = 5.0)]
    timeout_s: f64,
    /// The started coordinator's `replan_gap_ms` (0: re-plan on every join and link
    /// change).
    #[arg(long, default_value_t = 100)]
    replan_gap_ms: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The coordinator's control address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    coordinator: String,
    /// Fleet id.
    #[arg(long, default_value = "dyno")]
    fleet: String,
    /// The coordinator runs without a fleet key (otherwise DYNO_FLEET_KEY is used).
    #[arg(long)]
    insecure: bool,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

/// Options every runtime process takes.
#[derive(Debug, Args)]
struct Common {
    /// TOML configuration file (`--print-default-config` shows every key).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Run without a fleet key (no authentication): local experiments only.
    #[arg(long)]
    insecure: bool,
    /// Fleet id (over the file's).
    #[arg(long)]
    fleet: Option<String>,
    /// Log lines as JSON.
    #[arg(long)]
    log_json: bool,
    /// No mDNS: neither advertise nor browse (static addresses only).
    #[arg(long)]
    no_mdns: bool,
    /// Serve Prometheus metrics on this address (any GET path, e.g. /metrics).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

impl Common {
    /// Starts the metrics endpoint when asked for.
    fn serve_metrics(&self) -> anyhow::Result<()> {
        match self.metrics {
            Some(addr) => dyno_actors::metrics::serve(addr),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Args)]
struct CoordinatorArgs {
    #[command(flatten)]
    common: Common,
    /// Control endpoint address.
    #[arg(long)]
    listen: Option<String>,
    /// Data endpoint of the embedded workers.
    #[arg(long)]
    data_listen: Option<String>,
    /// Embedded workers (0: only `dyno worker` processes serve tails).
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long)]
    model: Option<String>,
    /// Print one JSON line with the bound addresses once listening.
    #[arg(long)]
    ready_json: bool,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    name: Option<String>,
    /// Coordinator control address (repeatable; over the file's).
    #[arg(long)]
    coordinator: Vec<String>,
    #[arg(long)]
    listen: Option<String>,
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    ready_json: bool,
}

#[derive(Debug, Args)]
struct AgentArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    coordinator: Vec<String>,
    #[arg(long)]
    model: Option<String>,
    /// Device class (from the device-classes file).
    #[arg(long)]
    class: Option<String>,
    /// Frames to run (0: until stopped).
    #[arg(long)]
    frames: Option<u64>,
    /// Uplink Mbit/s (a constant trace).
    #[arg(long)]
    mbps: Option<f64>,
    #[arg(long)]
    rtt_ms: Option<f64>,
    /// Compare each frame with the whole model run locally.
    #[arg(long)]
    verify: bool,
    /// JSON lines of every result.
    #[arg(long)]
    results: Option<PathBuf>,
}

fn init_logs(json: bool) {
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

fn common<T>(c: &Common, fleet: &mut config::Fleet) -> anyhow::Result<Option<T>>
where
    T: serde::Serialize + Default,
{
    if c.print_default_config {
        print!("{}", config::print_default::<T>());
        return Ok(None);
    }
    init_logs(c.log_json);
    if c.insecure {
        fleet.insecure = true;
    }
    if let Some(f) = &c.fleet {
        fleet.id = f.clone();
    }
    fleet.check()?;
    Ok(Some(T::default()))
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

fn run_coordinator(global: &dyno::cli::Global, a: CoordinatorArgs) -> anyhow::Result<()> {
    let mut cfg: CoordinatorConfig = config::load(a.common.config.as_deref())?;
    if common::<CoordinatorConfig>(&a.common, &mut cfg.fleet)?.is_none() {
        return Ok(());
    }
    if a.common.no_mdns {
        cfg.mdns = false;
    }
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
    a.common.serve_metrics()?;
    let home = global.setup()?;
    actix::System::new().block_on(async move {
        let c = coordinator::start(&cfg, &home).await?;
        if a.ready_json {
            println!(
                "{}",
                serde_json::json!({"control": c.control.to_string(), "data": c.data.map(|d| d.to_string())})
            );
        }
        shutdown_signal().await;
        tracing::info!("coordinator: shutting down");
        Ok(())
    })
}

fn run_worker(global: &dyno::cli::Global, a: WorkerArgs) -> anyhow::Result<()> {
    let mut cfg: WorkerConfig = config::load(a.common.config.as_deref())?;
    if common::<WorkerConfig>(&a.common, &mut cfg.fleet)?.is_none() {
        return Ok(());
    }
    if a.common.no_mdns {
        cfg.mdns = false;
    }
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
    a.common.serve_metrics()?;
    let home = global.setup()?;
    actix::System::new().block_on(async move {
        let w = worker::start(&cfg, &home).await?;
        if a.ready_json {
            println!("{}", serde_json::json!({"data": w.data.to_string()}));
        }
        shutdown_signal().await;
        tracing::info!("worker: shutting down");
        Ok(())
    })
}

fn run_agent(global: &dyno::cli::Global, a: AgentArgs) -> anyhow::Result<()> {
    let mut cfg: AgentConfig = config::load(a.common.config.as_deref())?;
    if common::<AgentConfig>(&a.common, &mut cfg.fleet)?.is_none() {
        return Ok(());
    }
    if a.common.no_mdns {
        cfg.mdns = false;
    }
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
    a.common.serve_metrics()?;
    let home = global.setup()?;
    actix::System::new().block_on(async move {
        let summary = tokio::select! {
            s = agent::run(cfg, home) => s?,
            _ = shutdown_signal() => anyhow::bail!("stopped by a signal"),
        };
        println!("{}", serde_json::to_string(&summary)?);
        Ok(())
    })
}

fn run_status(a: StatusArgs) -> anyhow::Result<()> {
    use dyno::wire::{Identity, Role};
    let fleet = config::Fleet {
        id: a.fleet.clone(),
        insecure: a.insecure,
        ..config::Fleet::default()
    };
    let me = Identity {
        fleet: fleet.id.clone(),
        name: "status".into(),
        role: Role::Observer,
        key: fleet.key()?,
    };
    let st = actix::System::new().block_on(coordinator::fetch_status(
        &a.coordinator,
        &me,
        fleet.max_frame,
    ))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    println!(
        "fleet {}: {} devices, {} workers, pool {:.0} % planned, {} plans sent",
        a.fleet,
        st.devices.len(),
        st.workers.len(),
        100.0 * st.pool_utilisation,
        st.plans_sent
    );
    println!(
        "\n{:<16} {:<10} {:<28} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9}",
        "device",
        "class",
        "plan",
        "Mbit/s",
        "rtt ms",
        "fps",
        "p50 ms",
        "p95 ms",
        "frames",
        "fallbacks"
    );
    for d in &st.devices {
        let plan = d
            .plan
            .as_ref()
            .map_or("-".to_string(), |p| p.candidate.to_string());
        println!(
            "{:<16} {:<10} {:<28} {:>8.2} {:>7.1} {:>7.1} {:>8.1} {:>8.1} {:>8} {:>9}",
            d.id,
            d.class,
            plan,
            d.bandwidth_mbps,
            d.rtt_ms,
            d.fps,
            d.latency_p50_ms,
            d.latency_p95_ms,
            d.frames,
            d.fallbacks
        );
    }
    println!(
        "\n{:<16} {:<24} {:>6} {:>7}",
        "worker", "data address", "slots", "queued"
    );
    for w in &st.workers {
        println!(
            "{:<16} {:<24} {:>6} {:>7}",
            w.name, w.data_addr, w.slots, w.queued
        );
    }
    Ok(())
}

fn run_load(global: &dyno::cli::Global, a: LoadArgs) -> anyhow::Result<()> {
    let home = global.setup()?;
    init_logs(false);
    let o = dyno_actors::load::LoadOptions {
        agents: a.agents,
        duration_s: a.duration_s,
        rate_fps: a.rate_fps,
        coordinator: a.coordinator,
        insecure: a.insecure,
        fleet: a.fleet,
        workers: a.workers,
        exe: std::env::current_exe()?,
        timeout_s: a.timeout_s,
        replan_gap_ms: a.replan_gap_ms,
    };
    let progress = if a.json {
        0.0
    } else {
        30f64.min(a.duration_s / 4.0)
    };
    let r = dyno_actors::load::run(&o, &home, progress)?;
    let json = serde_json::to_string_pretty(&r)?;
    if let Some(path) = &a.out {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, &json).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if a.json {
        println!("{json}");
    } else {
        print!("{}", dyno_actors::load::table(&r));
    }
    Ok(())
}

fn run_live(global: &dyno::cli::Global, a: dyno::cli::ExperimentArgs) -> anyhow::Result<()> {
    let home = global.setup()?;
    let e = dyno::experiment::Experiment::load(&a.file).map_err(anyhow::Error::msg)?;
    let runner = if a.processes {
        dyno_actors::experiment::Runner::Processes {
            exe: std::env::current_exe()?,
        }
    } else {
        dyno_actors::experiment::Runner::InProcess
    };
    let out = dyno_actors::experiment::live_with(&e, &home, !a.json, &runner)?;
    dyno::cli::experiment::report(&home, &a, &e, &out)
}

/// Whether the library command `c` uses sockets: a live experiment runs the runtime's
/// actors in this process, `profile validate` measures over loopback TCP.
fn uses_sockets(c: &dyno::cli::Command) -> bool {
    use dyno::cli::{Command as C, ExperimentCommand, Mode, ProfileCommand};
    match c {
        C::Experiment(ExperimentCommand::Run(a)) => a.mode == Mode::Live,
        C::Profile(ProfileCommand::Validate(_)) => true,
        _ => false,
    }
}

fn main() -> std::process::ExitCode {
    // SIGPIPE stays ignored (Rust's default) wherever there are sockets: a peer that
    // vanishes mid-write must give an error on that socket, not kill the process. The
    // offline commands (models, profiles, plan, simulated experiments) have none, and
    // there a closed stdout (`dyno models list | head`) ends the process quietly.
    let cli = Cli::parse();
    if let Command::Base(c) = &cli.command {
        if !uses_sockets(c) {
            // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
        }
    }
    let result = match cli.command {
        Command::Base(dyno::cli::Command::Experiment(dyno::cli::ExperimentCommand::Run(a)))
            if a.mode == dyno::cli::Mode::Live =>
        {
            run_live(&cli.global, a)
        }
        Command::Base(c) => dyno::cli::run(&cli.global, c),
        Command::Coordinator(a) => run_coordinator(&cli.global, a),
        Command::Worker(a) => run_worker(&cli.global, a),
        Command::Agent(a) => run_agent(&cli.global, a),
        Command::Status(a) => run_status(a),
        Command::Load(a) => run_load(&cli.global, a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
