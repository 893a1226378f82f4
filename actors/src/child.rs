//! Child processes of the `dyno` binary (`dyno load`'s coordinator, live experiments
//! with `--processes`, the tests): killed and reaped when dropped, so that no
//! coordinator outlives the run that started it; and the ready line a process started
//! with `--ready-json` prints once it listens.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use anyhow::Context as _;

/// A running child, killed and reaped when dropped.
#[derive(Debug)]
pub struct Proc(Option<Child>);

impl Proc {
    /// Starts `cmd` (its stdin closed).
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Proc> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        Ok(Proc(Some(child)))
    }

    /// Starts `cmd` with its stdout piped and reads the JSON line it prints once ready
    /// (`--ready-json`). `log` is the file its stderr goes to: its last lines are the
    /// error when it ends first.
    pub fn spawn_ready(cmd: &mut Command, log: &Path) -> anyhow::Result<(Proc, serde_json::Value)> {
        let mut p = Proc::spawn(cmd.stdout(Stdio::piped()))?;
        let mut line = String::new();
        if let Some(out) = p.child().stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let ready = serde_json::from_str(&line).with_context(|| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!(
                "{:?} did not report that it is ready (`{}`); the end of its log {}:\n{}",
                cmd.get_program(),
                line.trim(),
                log.display(),
                tail.join("\n")
            )
        })?;
        Ok((p, ready))
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("present until waited for")
    }

    /// Waits for it to end, collecting its stdout and stderr (those piped).
    pub fn wait_with_output(mut self) -> std::io::Result<Output> {
        self.0
            .take()
            .expect("present until waited for")
            .wait_with_output()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `control` address of a coordinator's ready line.
pub fn control_addr(ready: &serde_json::Value) -> anyhow::Result<String> {
    Ok(ready["control"]
        .as_str()
        .context("the coordinator's ready line has no control address")?
        .to_string())
}

/// The variables a process started from its own config file still takes from this
/// one's environment: the fleet key, the project folder, the testbed's and the logs'.
const PASSED_ON: [&str; 4] = [
    "DYNO_FLEET_KEY",
    "DYNO_HOME",
    "DYNO_KEEP_LOGS",
    "DYNO_COMPUTE_CGROUP",
];

/// `cmd` without this process's other `DYNO_*` variables: they set flags, which would
/// override the file the child is started with (a variable wins over the file).
pub fn only_its_file(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("DYNO_") && !PASSED_ON.contains(&name.as_str()) {
            cmd.env_remove(&name);
        }
    }
    cmd
}
