//! The `dyno` command line, in one place: argument definitions, and what each subcommand
//! runs and prints. The binary (`main.rs`) parses and calls [`run`].
//!
//! - `models`, `profile`, `plan`, `experiment`: the library's offline work (and the
//!   live mode of experiments);
//! - `runtime`: `dyno coordinator`, `dyno worker`, `dyno agent`;
//! - `status`, `load`: the fleet seen from outside.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use dyno::home::Home;
use dyno::pack::Clip;

pub mod experiment;
mod load;
mod models;
mod plan;
mod profile;
pub mod runtime;
mod status;
mod testbed;

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Project folder holding models/ and data/ (default: the source folder dyno was built from).
    #[arg(long, global = true, env = "DYNO_HOME")]
    pub home: Option<PathBuf>,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long, global = true, env = "DYNO_THREADS")]
    pub threads: Option<i32>,
}

impl Global {
    /// Applies the thread count and finds the project folder.
    pub fn setup(&self) -> anyhow::Result<Home> {
        if let Some(n) = self.threads {
            anyhow::ensure!(n >= 1, "--threads must be at least 1, got {n}");
            tch::set_num_threads(n);
        }
        Ok(self
            .home
            .clone()
            .map(Home::at)
            .unwrap_or_else(Home::discover))
    }
}

/// How a runtime process's settings combine, as its `--help` says.
const PRECEDENCE: &str = "Settings: the --config file, then each DYNO_* variable shown \
above, then the flag: a flag wins over its variable, a variable over the file. The fleet \
key comes from DYNO_FLEET_KEY (or [fleet] key in the file); a device may hold only its own \
key (`dyno key`). Flags that are switches take true or false in their variable.";

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "dyno",
    version,
    about = "Dynamic onloading of CNN inference for a device fleet (DynO)"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The model zoo: list, check, export and train models.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Profiles the scheduler reads.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// One explained scheduling decision: the plan, its predicted figures, the runners-up.
    Plan(PlanArgs),
    /// TOML experiments: policies compared on a fleet, with a table, files and plots.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
    /// The fleet coordinator daemon: scheduler, bandwidth monitor, embedded workers.
    #[command(after_help = PRECEDENCE)]
    Coordinator(runtime::CoordinatorArgs),
    /// A cloud worker: registers with the coordinator and serves tails.
    #[command(after_help = PRECEDENCE)]
    Worker(runtime::WorkerArgs),
    /// One device: runs heads, packs, sends activations to its worker.
    #[command(after_help = PRECEDENCE)]
    Agent(runtime::AgentArgs),
    /// The live fleet from its coordinator: devices, plans, rates, latency, workers, pool.
    #[command(after_help = PRECEDENCE)]
    Status(status::StatusArgs),
    /// Load-test a coordinator: many synthetic agents over the real protocol.
    #[command(after_help = PRECEDENCE)]
    Load(load::LoadArgs),
    /// One identity's key, derived from the fleet key (DYNO_FLEET_KEY): give a device
    /// its own key instead of the fleet key, and it can shake hands as that device only.
    #[command(after_help = PRECEDENCE)]
    Key(KeyArgs),
    /// Real hosts on this machine: a network namespace, a CPU quota and tc-shaped links
    /// per device (needs root).
    #[command(subcommand)]
    Testbed(testbed::TestbedCommand),
}

impl Command {
    /// Whether it uses sockets: the runtime's processes, a live experiment, `profile
    /// validate` (over loopback TCP), `status` and `load`.
    pub fn uses_sockets(&self) -> bool {
        match self {
            Command::Models(_) | Command::Plan(_) => false,
            Command::Profile(p) => matches!(p, ProfileCommand::Validate(_)),
            Command::Experiment(ExperimentCommand::Run(a)) => a.mode != Mode::Simulated,
            _ => true,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Runs an experiment file, simulated or live.
    Run(ExperimentArgs),
}

/// How an experiment runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A discrete-event run on a virtual clock, from the profiles (seconds per sweep).
    Simulated,
    /// The runtime's actors (in one process, or in several with --processes), real
    /// compute and TCP, the wall clock.
    Live,
    /// Processes on the testbed (`dyno testbed run`): each device in its own network
    /// namespace and CPU quota, links shaped by tc. Needs root.
    Testbed,
}

#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// The experiment's TOML file.
    pub file: PathBuf,
    /// How to run (given twice, the last one counts).
    #[arg(long, value_enum, default_value_t = Mode::Simulated, overrides_with = "mode", env = "DYNO_EXPERIMENT_MODE")]
    pub mode: Mode,
    /// Output folder [default: out/experiments/<name> in the project folder].
    #[arg(long, env = "DYNO_EXPERIMENT_OUT")]
    pub out: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long, env = "DYNO_EXPERIMENT_JSON")]
    pub json: bool,
    /// Live mode: run the coordinator and each device's agent as separate processes of
    /// the `dyno` binary (default: the actors in one process).
    #[arg(long, env = "DYNO_EXPERIMENT_PROCESSES")]
    pub processes: bool,
}

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Precision sensitivity: accuracy and packed bytes for every (split, bits, codec).
    Accuracy(AccuracyArgs),
    /// Block times and pack/unpack times per (split, precision, codec) on this machine.
    Latency(LatencyArgs),
    /// Predicted against measured latency at every split: head, pack, loopback TCP,
    /// unpack and tail in one process.
    Validate(ValidateArgs),
    /// The drop of every plan DynO picks in experiment files (simulated), measured on the
    /// held-out half of the ImageNet sample the profile did not see.
    Heldout(HeldoutArgs),
    /// What a camera sends: the input as a JPEG at a few qualities, added to a model's
    /// accuracy and latency profiles as precisions of split 0 (the profile commands
    /// measure them too; this adds them to profiles made without them).
    Jpeg(JpegArgs),
}

#[derive(Debug, Args)]
pub struct JpegArgs {
    /// A built-in model name or the folder of a TorchScript package (1 or 3 channels).
    #[arg(long, env = "DYNO_JPEG_MODEL")]
    pub model: String,
    /// JPEG qualities to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50,75,90,95",
        env = "DYNO_JPEG_QUALITY"
    )]
    pub quality: Vec<u8>,
    /// Inputs per model run.
    #[arg(long, default_value_t = 100, env = "DYNO_JPEG_BATCH")]
    pub batch: usize,
    /// Accuracy profile to add to [default: out/profiles/<model>.accuracy.json, else
    /// models/profiles/]; measured on the model's default data, which must be the
    /// profile's.
    #[arg(long, env = "DYNO_JPEG_ACCURACY")]
    pub accuracy: Option<PathBuf>,
    /// Latency profiles to add to, each timed with its own thread count [default: the
    /// model's <model>.latency.json and <model>.latency-1thread.json, out/profiles/ else
    /// models/profiles/, those that exist].
    #[arg(long, value_delimiter = ',', env = "DYNO_JPEG_LATENCY")]
    pub latency: Vec<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long, env = "DYNO_JPEG_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HeldoutArgs {
    /// Experiment files whose DynO plans are checked [default: config/paper-*.toml].
    #[arg(env = "DYNO_HELDOUT_FILES", value_delimiter = ',')]
    pub files: Vec<PathBuf>,
    /// Inputs per tail run.
    #[arg(long, default_value_t = 100, env = "DYNO_HELDOUT_BATCH")]
    pub batch: usize,
    /// Print JSON for scripts.
    #[arg(long, env = "DYNO_HELDOUT_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// A built-in model name or the folder of a TorchScript package.
    #[arg(long, env = "DYNO_LATENCY_MODEL")]
    pub model: String,
    /// Image folder whose first image is timed (default: the model's data set); the same
    /// flag as `dyno models check --images`.
    #[arg(long, alias = "data", env = "DYNO_LATENCY_IMAGES")]
    pub images: Option<PathBuf>,
    /// Timed runs per figure (the median is kept, after one warm-up run).
    #[arg(long, default_value_t = 11, env = "DYNO_LATENCY_RUNS")]
    pub runs: usize,
    /// Also time every split's tail on batches of these sizes (e.g. 1,2,4,8): the curve
    /// a worker's dynamic batching follows.
    #[arg(long, value_delimiter = ',', env = "DYNO_LATENCY_BATCH")]
    pub batch: Vec<usize>,
    /// Profile file to write [default: out/profiles/<model>.latency.json in the project folder].
    #[arg(long, env = "DYNO_LATENCY_OUT")]
    pub out: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long, env = "DYNO_LATENCY_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// A built-in model name or the folder of a TorchScript package.
    #[arg(long, env = "DYNO_VALIDATE_MODEL")]
    pub model: String,
    /// Quantisation bits (1..=16).
    #[arg(long, default_value_t = 8, env = "DYNO_VALIDATE_BITS")]
    pub bits: u8,
    /// Codec: none, lz4 or zstd.
    #[arg(long, default_value = "lz4", env = "DYNO_VALIDATE_CODEC")]
    pub codec: String,
    /// Timed frames per split (the median is compared).
    #[arg(long, default_value_t = 31, env = "DYNO_VALIDATE_RUNS")]
    pub runs: usize,
    /// libtorch intra-op threads of the device side (the cloud thread has one): one
    /// core each, as two machines would have.
    #[arg(long, default_value_t = 1, env = "DYNO_VALIDATE_DEVICE_THREADS")]
    pub device_threads: i32,
    /// Print JSON for scripts.
    #[arg(long, env = "DYNO_VALIDATE_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A built-in model name or the folder of a TorchScript package.
    #[arg(long, env = "DYNO_PLAN_MODEL")]
    pub model: String,
    /// Device class (from --devices).
    #[arg(long, default_value = "host", env = "DYNO_PLAN_DEVICE")]
    pub device: String,
    /// Device classes file [default: config/devices.toml in the project folder].
    #[arg(long, env = "DYNO_PLAN_DEVICES")]
    pub devices: Option<PathBuf>,
    /// Uplink bandwidth in Mbit/s (0: no link).
    #[arg(long, env = "DYNO_PLAN_BANDWIDTH_MBPS")]
    pub bandwidth_mbps: f64,
    /// Round-trip time in ms.
    #[arg(long, default_value_t = 20.0, env = "DYNO_PLAN_RTT_MS")]
    pub rtt_ms: f64,
    /// Frames the device has out at once (an agent's `in_flight`): throughput is at
    /// most this many frames per latency.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..), env = "DYNO_PLAN_IN_FLIGHT")]
    pub in_flight: u32,
    /// SLO file (TOML) [default: within 1 point of accuracy, max throughput, then least cloud time].
    #[arg(long, env = "DYNO_PLAN_SLO")]
    pub slo: Option<PathBuf>,
    /// device-only, cloud-only, neurosurgeon, fixed-8bit or dyno.
    #[arg(long, default_value = "dyno", env = "DYNO_PLAN_POLICY")]
    pub policy: String,
    /// Accuracy profile [default: out/profiles/<model>.accuracy.json, else models/profiles/].
    #[arg(long, env = "DYNO_PLAN_ACCURACY_PROFILE")]
    pub accuracy_profile: Option<PathBuf>,
    /// Device latency profile [default: the class's, else the model's].
    #[arg(long, env = "DYNO_PLAN_LATENCY_PROFILE")]
    pub latency_profile: Option<PathBuf>,
    /// Cloud latency profile [default: the cloud's, else the model's].
    #[arg(long, env = "DYNO_PLAN_CLOUD_PROFILE")]
    pub cloud_profile: Option<PathBuf>,
    /// Runners-up to show.
    #[arg(long, default_value_t = 5, env = "DYNO_PLAN_RUNNERS_UP")]
    pub runners_up: usize,
    /// Print JSON for scripts.
    #[arg(long, env = "DYNO_PLAN_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AccuracyArgs {
    /// A built-in model name or the folder of a TorchScript package.
    #[arg(long, env = "DYNO_ACCURACY_MODEL")]
    pub model: String,
    /// Image folder (labels from names ending in _<class>); default: 1-channel models use
    /// the 10k Fashion-MNIST test images, 3-channel models the profiling half of the 1,000
    /// ImageNet images. The same flag as `dyno models check --images`.
    #[arg(long, alias = "data", env = "DYNO_ACCURACY_IMAGES")]
    pub images: Option<PathBuf>,
    /// Use only the first N inputs (a quick run).
    #[arg(long, env = "DYNO_ACCURACY_LIMIT")]
    pub limit: Option<usize>,
    /// Inputs per tail run.
    #[arg(long, default_value_t = 100, env = "DYNO_ACCURACY_BATCH")]
    pub batch: usize,
    /// One quantisation range per channel instead of per tensor.
    #[arg(long, env = "DYNO_ACCURACY_PER_CHANNEL")]
    pub per_channel: bool,
    /// How each quantisation range is taken: `minmax` (the values' extremes) or `mse`
    /// (clipped where that lowers the squared error).
    #[arg(long, default_value = "minmax", env = "DYNO_ACCURACY_CLIP")]
    pub clip: Clip,
    /// Accuracy budget for the summary, in points.
    #[arg(long, default_value_t = 1.0, env = "DYNO_ACCURACY_BUDGET")]
    pub budget: f64,
    /// Profile file to write (a .png heat map is written beside it)
    /// [default: out/profiles/<model>.accuracy.json in the project folder].
    #[arg(long, env = "DYNO_ACCURACY_OUT")]
    pub out: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long, env = "DYNO_ACCURACY_JSON")]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Lists the built-in models: blocks, split points, sizes, weight source.
    List(ListArgs),
    /// Runs a model on real data, checks head+tail == forward at every split, times blocks.
    Check(CheckArgs),
    /// Writes a model as a TorchScript package (manifest.toml + one module per block).
    Export(ExportArgs),
    /// Trains fashion_cnn on Fashion-MNIST with a fixed seed.
    Train(TrainArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON for scripts.
    #[arg(long, env = "DYNO_LIST_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A built-in model name or the folder of a TorchScript package.
    pub model: String,
    /// Image folder to classify (labels from names ending in _<class>); default: the model's data set.
    #[arg(long, env = "DYNO_CHECK_IMAGES")]
    pub images: Option<PathBuf>,
    /// Timed runs per block.
    #[arg(long, default_value_t = 5, env = "DYNO_CHECK_TIMING_RUNS")]
    pub timing_runs: usize,
    /// Print JSON for scripts.
    #[arg(long, env = "DYNO_CHECK_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A built-in model name or the folder of a TorchScript package.
    pub model: String,
    /// Folder to write the package into.
    #[arg(long, env = "DYNO_EXPORT_OUT")]
    pub out: PathBuf,
    /// Print JSON for scripts.
    #[arg(long, env = "DYNO_EXPORT_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The model to train (only fashion_cnn is trainable).
    pub model: String,
    /// Passes over the training set.
    #[arg(long, default_value_t = 6, env = "DYNO_TRAIN_EPOCHS")]
    pub epochs: usize,
    /// Images per training step.
    #[arg(long, default_value_t = 128, env = "DYNO_TRAIN_BATCH")]
    pub batch: i64,
    /// The optimiser's learning rate.
    #[arg(long, default_value_t = 1e-3, env = "DYNO_TRAIN_LEARNING_RATE")]
    pub learning_rate: f64,
    /// Seed of the initial weights and the data order (the same seed, the same weights).
    #[arg(long, default_value_t = 42, env = "DYNO_TRAIN_SEED")]
    pub seed: i64,
    /// Weight of an activation-sparsity term in the loss (mean |activation| at every split).
    #[arg(
        long,
        default_value_t = 0.0,
        allow_negative_numbers = true,
        env = "DYNO_TRAIN_ACTIVATION_L1"
    )]
    pub activation_l1: f64,
    /// Where to write the weights, a .sha256 file beside them [default: models/fashion_cnn.safetensors in the project folder].
    #[arg(long, env = "DYNO_TRAIN_OUT")]
    pub out: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long, env = "DYNO_TRAIN_JSON")]
    pub json: bool,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    match cli.command {
        Command::Coordinator(a) => return runtime::run_coordinator(global, a),
        Command::Worker(a) => return runtime::run_worker(global, a),
        Command::Agent(a) => return runtime::run_agent(global, a),
        Command::Status(a) => return status::run_status(a),
        Command::Load(a) => return load::run_load(global, a),
        Command::Key(a) => return key(a),
        _ => {}
    }
    let home = global.setup()?;
    match cli.command {
        Command::Models(cmd) => match cmd {
            ModelsCommand::List(a) => models::list(&home, a),
            ModelsCommand::Check(a) => models::check(&home, a),
            ModelsCommand::Export(a) => models::export(&home, a),
            ModelsCommand::Train(a) => models::train(&home, a),
        },
        Command::Profile(ProfileCommand::Accuracy(a)) => profile::accuracy(&home, a),
        Command::Profile(ProfileCommand::Latency(a)) => profile::latency(&home, a),
        Command::Profile(ProfileCommand::Validate(a)) => plan::validate(&home, a),
        Command::Profile(ProfileCommand::Heldout(a)) => profile::heldout(&home, a),
        Command::Profile(ProfileCommand::Jpeg(a)) => profile::jpeg(&home, a),
        Command::Plan(a) => plan::plan(&home, a),
        Command::Experiment(ExperimentCommand::Run(a)) => experiment::run(&home, a),
        Command::Testbed(cmd) => testbed::run(&home, cmd),
        Command::Coordinator(_)
        | Command::Worker(_)
        | Command::Agent(_)
        | Command::Status(_)
        | Command::Load(_)
        | Command::Key(_) => unreachable!("run above"),
    }
}

/// Whose key `dyno key` derives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyRole {
    Agent,
    Observer,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The device's id (`dyno agent --id`), or the observer's name (`status` for `dyno
    /// status`).
    #[arg(long, env = "DYNO_ID")]
    pub name: String,
    /// Whose key: a device's (agent) or a read-only client's (observer).
    #[arg(long, value_enum, default_value = "agent", env = "DYNO_KEY_ROLE")]
    pub role: KeyRole,
}

/// `dyno key`: prints one identity's key, derived from the fleet key.
fn key(a: KeyArgs) -> anyhow::Result<()> {
    let fleet = crate::config::Fleet::default();
    let dyno::wire::Key::Secret(k) = fleet.key()? else {
        anyhow::bail!("`dyno key` derives from the fleet key itself: set DYNO_FLEET_KEY to it")
    };
    let role = match a.role {
        KeyRole::Agent => dyno::wire::Role::Agent,
        KeyRole::Observer => dyno::wire::Role::Observer,
    };
    let own = dyno::wire::noise::identity_key(&k, role, &a.name);
    println!("{}", crate::config::format_own_key(&own));
    Ok(())
}

/// Prints `value` as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag of every command, with the command's path.
    fn flags(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for a in cmd.get_arguments() {
            if !matches!(a.get_id().as_str(), "help" | "version") && !a.is_positional() {
                out.push((path.to_string(), a.clone()));
            }
        }
        for sub in cmd.get_subcommands() {
            flags(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_flag_has_help_and_a_dyno_variable() {
        let mut all = Vec::new();
        flags(&Cli::command(), "dyno", &mut all);
        assert!(all.len() > 100, "{}", all.len());
        let mut missing = Vec::new();
        for (path, a) in &all {
            let name = a.get_long().unwrap_or(a.get_id().as_str());
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{path} --{name}: no help"));
            }
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            if !env.as_deref().is_some_and(|e| e.starts_with("DYNO_")) {
                missing.push(format!("{path} --{name}: no DYNO_* variable"));
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    #[test]
    fn a_flag_wins_over_its_variable() {
        // (The variable over the file is `configure`'s: a flag or variable set is applied
        // over the file's value.)
        let frames = |args: &[&str]| {
            let c = Cli::try_parse_from(args).unwrap();
            let Command::Agent(a) = c.command else {
                panic!("an agent")
            };
            a.frames
        };
        // (No other test in this binary parses an agent's flags.)
        std::env::set_var("DYNO_FRAMES", "3");
        let (from_env, from_flag) = (
            frames(&["dyno", "agent"]),
            frames(&["dyno", "agent", "--frames", "7"]),
        );
        std::env::remove_var("DYNO_FRAMES");
        assert_eq!((from_env, from_flag), (Some(3), Some(7)));
        assert_eq!(frames(&["dyno", "agent"]), None);
    }
}
