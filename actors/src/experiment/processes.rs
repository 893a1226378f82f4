//! The fleet as processes of this binary, each configured by a file: on this host, or
//! (with the testbed's commands) on the testbed's hosts.
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::Context;

use super::Host;
use crate::agent::{self, FrameResult};
use crate::child::{control_addr, Proc};
use crate::config::{AgentConfig, CoordinatorConfig};
use dyno::home::Home;

/// The coordinator (with its embedded workers) and every agent as processes (`host`
/// makes each one's command: this binary, here or on a testbed host), configured by
/// files in a temporary folder; each agent's results come back as its summary on
/// stdout and its per-frame JSON lines.
pub(super) fn processes(
    cfg: &CoordinatorConfig,
    agents: Vec<AgentConfig>,
    home: &Home,
    host: &dyn Fn(Host) -> Command,
) -> anyhow::Result<Vec<(agent::AgentSummary, Vec<FrameResult>)>> {
    let mut dir = tempfile::Builder::new().prefix("dyno-live-").tempdir()?;
    // The processes' logs go with the run unless DYNO_KEEP_LOGS is set.
    if std::env::var_os("DYNO_KEEP_LOGS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("logs kept in {}", dir.path().display());
    }
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let log = |name: &str| -> anyhow::Result<Stdio> {
        Ok(std::fs::File::create(dir.path().join(name))?.into())
    };
    let coordinator_toml = write("coordinator.toml", toml::to_string(cfg)?)?;
    let (c, ready) = Proc::spawn_ready(
        crate::child::only_its_file(&mut host(Host::Cloud))
            .arg("--home")
            .arg(home.root())
            .args(["coordinator", "--ready-json", "--config"])
            .arg(&coordinator_toml)
            .stderr(log("coordinator.log")?),
        &dir.path().join("coordinator.log"),
    )?;
    let control = control_addr(&ready)?;
    let mut children = Vec::new();
    for (i, mut a) in agents.into_iter().enumerate() {
        // Agents that discover the coordinator over mDNS have none given.
        if !a.mdns {
            a.coordinators = vec![control.clone()];
        }
        let results = a
            .results
            .clone()
            .unwrap_or_else(|| dir.path().join(format!("{}.jsonl", a.id)));
        a.results = Some(results.clone());
        let path = write(&format!("{}.toml", a.id), toml::to_string(&a)?)?;
        let child = Proc::spawn(
            crate::child::only_its_file(&mut host(Host::Device(i)))
                .arg("--home")
                .arg(home.root())
                .args(["agent", "--config"])
                .arg(&path)
                .stdout(Stdio::piped())
                .stderr(log(&format!("{}.log", a.id))?),
        )
        .with_context(|| format!("starting agent {}", a.id))?;
        children.push((a.id, results, child));
    }
    let mut out = Vec::new();
    for (id, results, child) in children {
        let o = child.wait_with_output()?;
        anyhow::ensure!(
            o.status.success(),
            "agent {id} exited with {} (its log: {})",
            o.status,
            dir.path().join(format!("{id}.log")).display()
        );
        let summary: agent::AgentSummary =
            serde_json::from_slice(&o.stdout).with_context(|| format!("agent {id}'s summary"))?;
        let text = std::fs::read_to_string(&results)
            .with_context(|| format!("agent {id}'s results {}", results.display()))?;
        let frames = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<Vec<FrameResult>, _>>()
            .with_context(|| format!("agent {id}'s results {}", results.display()))?;
        out.push((summary, frames));
    }
    drop(c);
    Ok(out)
}
