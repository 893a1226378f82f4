//! `dyno testbed`: calibrate the device classes' CPU quotas, run an experiment on the
//! testbed, remove a killed run's leftovers.
use std::path::PathBuf;

use clap::{Args, Subcommand};
use dyno::config::Devices;
use dyno::home::Home;

use super::{print_json, ExperimentArgs};
use crate::testbed::{self, calibrate};

#[derive(Debug, Subcommand)]
pub enum TestbedCommand {
    /// Finds each device class's CPU quota on this machine: whole forwards under the
    /// quota against the latency profile, within 5 % of the class's slowdown.
    Calibrate(CalibrateArgs),
    /// Runs an experiment file on the testbed (the same as `dyno experiment run FILE
    /// --mode testbed`).
    Run(RunArgs),
    /// Removes what a testbed run left behind (namespaces, qdiscs, cgroups); a run does
    /// this itself at its start and end.
    Clean,
    /// Times the model here, one thread, as JSON (calibration runs it inside a quota).
    #[command(hide = true)]
    Measure(MeasureArgs),
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// The model timed.
    #[arg(long, default_value = "mobilenet_v2", env = "DYNO_CALIBRATE_MODEL")]
    pub model: String,
    /// Classes to calibrate (repeat the flag) [default: every class slower than this machine].
    #[arg(long = "class", env = "DYNO_CALIBRATE_CLASSES", value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Device classes file: its classes' slowdowns and the profile they scale
    /// [default: config/testbed-devices.toml in the project folder].
    #[arg(long, env = "DYNO_CALIBRATE_DEVICES")]
    pub devices: Option<PathBuf>,
    /// Timed forwards per measurement.
    #[arg(long, default_value_t = 20, env = "DYNO_CALIBRATE_FRAMES")]
    pub frames: usize,
    /// Where to write the quotas [default: out/testbed.toml in the project folder, which
    /// the testbed then reads before the shipped config/testbed.toml].
    #[arg(long, env = "DYNO_CALIBRATE_OUT")]
    pub out: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long, env = "DYNO_CALIBRATE_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The experiment's TOML file.
    pub file: PathBuf,
    /// Output folder [default: out/experiments/<name> in the project folder].
    #[arg(long, env = "DYNO_TESTBED_OUT")]
    pub out: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long, env = "DYNO_TESTBED_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// The model whose forwards are timed.
    #[arg(long, env = "DYNO_MEASURE_MODEL")]
    pub model: String,
    /// Whole forwards to time.
    #[arg(long, default_value_t = 20, env = "DYNO_MEASURE_FRAMES")]
    pub frames: usize,
    /// Keep this process's CPU quota spent between forwards, as an agent on the testbed
    /// does.
    #[arg(long, env = "DYNO_MEASURE_KEEP_BUSY")]
    pub keep_busy: bool,
}

pub fn run(home: &Home, cmd: TestbedCommand) -> anyhow::Result<()> {
    match cmd {
        TestbedCommand::Calibrate(a) => run_calibrate(home, a),
        TestbedCommand::Run(a) => super::experiment::run(
            home,
            ExperimentArgs {
                file: a.file,
                mode: super::Mode::Testbed,
                out: a.out,
                json: a.json,
                processes: false,
            },
        ),
        TestbedCommand::Clean => {
            if let Some(why) = testbed::why_not() {
                anyhow::bail!("{why}");
            }
            let removed = testbed::clean_up();
            if removed.is_empty() {
                println!("nothing to remove");
            }
            for r in removed {
                println!("removed {r}");
            }
            Ok(())
        }
        TestbedCommand::Measure(a) => {
            anyhow::ensure!(a.frames >= 1, "--frames 0: give at least 1");
            print_json(&calibrate::measure(home, &a.model, a.frames, a.keep_busy)?)
        }
    }
}

fn run_calibrate(home: &Home, a: CalibrateArgs) -> anyhow::Result<()> {
    if let Some(why) = testbed::why_not() {
        anyhow::bail!("{why}");
    }
    anyhow::ensure!(a.frames >= 1, "--frames 0: give at least 1");
    let devices = Devices::load(
        &a.devices
            .clone()
            .unwrap_or_else(|| home.root().join("config").join("testbed-devices.toml")),
    )?;
    let classes: Vec<(String, f64)> = if a.classes.is_empty() {
        devices
            .classes
            .iter()
            .filter(|(_, c)| c.slowdown > 1.0)
            .map(|(n, c)| (n.clone(), c.slowdown))
            .collect()
    } else {
        a.classes
            .iter()
            .map(|n| Ok((n.clone(), devices.class(n)?.slowdown)))
            .collect::<anyhow::Result<_>>()?
    };
    testbed::on_signal_clean_up();
    let exe = std::env::current_exe()?;
    let json = a.json;
    let profile = devices.device_profile(home, &a.model);
    let cal = calibrate::calibrate(
        &exe,
        home,
        &a.model,
        &profile,
        &classes,
        a.frames,
        &mut |l| {
            if !json {
                eprintln!("  {l}");
            }
        },
    )?;
    let out = a.out.unwrap_or_else(|| testbed::measured_calibration(home));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = format!(
        "# The device classes' CPU quotas on the testbed, written by `dyno testbed calibrate`\n\
         # (measured: whole forwards of {}, one thread, under each quota, over the latency\n\
         # profile's time). Re-run it on another machine.\n{}",
        cal.model,
        toml::to_string(&cal)?
    );
    std::fs::write(&out, text)?;
    if json {
        return print_json(&cal);
    }
    println!(
        "{} on {} ({}); no quota {:.1} ms a forward, profile {:.1} ms ({})\n",
        cal.model, cal.machine, cal.date, cal.free_full_ms, cal.profile_full_ms, cal.profile
    );
    println!(
        "{:<18} {:>8} {:>10} {:>9} {:>10} {:>10} {:>11} {:>10} {:>6}",
        "class", "cores", "period us", "nominal", "measured", "head", "after wait", "vs free", "ok"
    );
    for (name, q) in &cal.classes {
        println!(
            "{:<18} {:>8.4} {:>10} {:>8.1}x {:>9.2}x {:>9.2}x {:>10.2}x {:>9.2}x {:>6}",
            name,
            q.cores,
            q.period_us,
            q.nominal,
            q.measured,
            q.measured_head,
            q.measured_head_after_wait,
            q.measured_free,
            if (q.measured / q.nominal - 1.0).abs() <= 0.10 {
                "yes"
            } else {
                "NO"
            }
        );
    }
    println!(
        "\n(measured: a forward under the quota over the profile's; head: the head to the \
         middle split, the same way; after wait: that head started after {} ms idle, the \
         quota kept spent meanwhile; vs free: over a forward without a quota now)\nwrote {}",
        calibrate::WAIT.as_millis(),
        out.display()
    );
    Ok(())
}
