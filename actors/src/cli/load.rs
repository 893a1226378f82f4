//! `dyno load`: many synthetic agents against one coordinator.
use std::path::PathBuf;

use clap::Args;

use super::Global;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Synthetic agents (one connection each to the coordinator and to their worker).
    #[arg(long, default_value_t = 500, env = "DYNO_LOAD_AGENTS")]
    pub agents: usize,
    /// Seconds of frames.
    #[arg(long, default_value_t = 600.0, env = "DYNO_LOAD_DURATION_S")]
    pub duration_s: f64,
    /// Frames per second per agent.
    #[arg(long, default_value_t = 1.0, env = "DYNO_LOAD_RATE_FPS")]
    pub rate_fps: f64,
    /// A running coordinator (its fleet key from DYNO_FLEET_KEY); without one, a
    /// coordinator is started with `--workers` embedded workers and sampled from /proc.
    #[arg(long, env = "DYNO_LOAD_COORDINATOR")]
    pub coordinator: Option<String>,
    /// The given coordinator runs without a fleet key.
    #[arg(long, env = "DYNO_LOAD_INSECURE")]
    pub insecure: bool,
    /// Fleet id.
    #[arg(long, default_value = "dyno-load", env = "DYNO_LOAD_FLEET")]
    pub fleet: String,
    /// Embedded workers of the coordinator it starts.
    #[arg(long, default_value_t = 2, env = "DYNO_LOAD_WORKERS")]
    pub workers: usize,
    /// Seconds without an answer before a frame counts as lost.
    #[arg(long, default_value_t = 5.0, env = "DYNO_LOAD_TIMEOUT_S")]
    pub timeout_s: f64,
    /// The started coordinator's `replan_gap_ms` (0: re-plan on every join and link
    /// change).
    #[arg(long, default_value_t = 100, env = "DYNO_LOAD_REPLAN_GAP_MS")]
    pub replan_gap_ms: u64,
    /// Also write the report as JSON here.
    #[arg(long, env = "DYNO_LOAD_OUT")]
    pub out: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long, env = "DYNO_LOAD_JSON")]
    pub json: bool,
}

pub fn run_load(global: &Global, a: LoadArgs) -> anyhow::Result<()> {
    let home = global.setup()?;
    super::runtime::init_logs(false);
    let o = crate::load::LoadOptions {
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
    let r = crate::load::run(&o, &home, progress)?;
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
        print!("{}", crate::load::table(&r));
    }
    Ok(())
}
