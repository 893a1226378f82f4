//! CPU quotas: one cgroup per emulated host, under `dyno-testbed/` in the `cpu`
//! controller (cgroup v1: `cpu.cfs_period_us` and `cpu.cfs_quota_us`; cgroup v2:
//! `cpu.max`), as Mininet's `CPULimitedHost` does.
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The folder every testbed cgroup lives in, in the controller's hierarchy.
pub const PARENT: &str = "dyno-testbed";

/// Set for a device's agent on the testbed: the file its compute thread writes its
/// thread id into, so that only that thread runs under the device's quota (cgroup v1's
/// `tasks`). A device's CPU is slow, not its clock or its network: the whole agent under
/// a quota of a few ms per 20 ms period timed its transfers late by up to a period, and
/// its link estimates swung by a third on a steady link.
pub const COMPUTE_CGROUP: &str = "DYNO_COMPUTE_CGROUP";

/// Moves the calling thread into the cgroup whose thread list is `tasks`.
pub fn join_thread(tasks: &Path) -> anyhow::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    write(tasks, &tid.to_string()).context("placing the device's compute thread in its quota")
}

/// Keeps a host's quota spent while its compute waits, so that the quota is one speed.
///
/// The kernel throttles a group in whole periods: a thread that waited since its last
/// period starts the next one with the whole quota and runs that long at full speed.
/// A `slow10x` head of 2 ms that waits for frames in flight ran at 4-5x, not 10x, while
/// back-to-back forwards (as calibration times them) ran at 10x. A real slow device is
/// as slow after a wait as before it. So while the compute thread is idle a spinner in
/// the same group burns the quota (it parks the moment work starts, and spins again
/// when it ends): every period the group runs its quota and waits out the rest, busy
/// or not, and a head takes its share of the periods whenever it starts. The host uses
/// exactly its quota, which the fit check counts already.
#[derive(Debug)]
pub struct KeepBusy {
    shared: std::sync::Arc<Spin>,
    spinner: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Spin {
    working: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
}

/// While it lives, the compute thread works and the spinner waits.
#[must_use = "the spinner waits only while this lives"]
pub struct Working<'a>(&'a KeepBusy);

impl KeepBusy {
    /// Starts the spinner; it joins the group whose thread list is `tasks`, or stays in
    /// the process's group (a whole process under a quota).
    pub fn start(tasks: Option<&Path>) -> anyhow::Result<KeepBusy> {
        use std::sync::atomic::Ordering::Relaxed;
        let shared = std::sync::Arc::new(Spin::default());
        let (placed_tx, placed) = std::sync::mpsc::channel();
        let tasks = tasks.map(Path::to_path_buf);
        let spin = shared.clone();
        let spinner = std::thread::Builder::new()
            .name("keep-busy".into())
            .spawn(move || {
                let _ = placed_tx.send(tasks.as_deref().map_or(Ok(()), join_thread));
                // The idle class: the moment the compute thread is woken for work it
                // takes the group's CPU from the spinner, which could otherwise spend the
                // period's quota before the work has marked itself (on
                // `testbed-fleet.toml` a head and its answer waited 18-42 ms for the
                // compute thread with the spinner in the normal class, 15-34 in this one).
                let idle = libc::sched_param { sched_priority: 0 };
                // SAFETY: sets the calling thread's policy; `idle` outlives the call.
                if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) } != 0 {
                    tracing::warn!(
                        "the quota's spinner could not take the idle class: {}",
                        std::io::Error::last_os_error()
                    );
                }
                while !spin.stop.load(Relaxed) {
                    if spin.working.load(Relaxed) {
                        std::thread::park();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            })
            .context("starting the thread that keeps the quota spent")?;
        placed
            .recv()
            .context("the thread that keeps the quota spent did not start")??;
        Ok(KeepBusy {
            shared,
            spinner: Some(spinner),
        })
    }

    /// Marks the compute thread at work until the guard is dropped.
    pub fn work(&self) -> Working<'_> {
        self.shared
            .working
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Working(self)
    }

    fn wake(&self) {
        if let Some(s) = &self.spinner {
            s.thread().unpark();
        }
    }
}

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.0
            .shared
            .working
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.0.wake();
    }
}

impl Drop for KeepBusy {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake();
        if let Some(s) = self.spinner.take() {
            let _ = s.join();
        }
    }
}

/// The kernel's smallest quota, microseconds.
pub const MIN_QUOTA_US: u64 = 1000;

/// Where the `cpu` controller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: the controller's own mount (for example `/sys/fs/cgroup/cpu`).
    V1(PathBuf),
    /// cgroup v2: the unified mount with `cpu` among its controllers.
    V2(PathBuf),
}

impl Hierarchy {
    /// The `cpu` controller of this machine, v1 first (where both exist, v1 holds it).
    pub fn detect() -> anyhow::Result<Hierarchy> {
        for v1 in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"] {
            if Path::new(v1).join("cpu.cfs_quota_us").exists() {
                return Ok(Hierarchy::V1(PathBuf::from(v1)));
            }
        }
        for v2 in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            let controllers = std::fs::read_to_string(Path::new(v2).join("cgroup.controllers"))
                .unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "cpu") {
                return Ok(Hierarchy::V2(PathBuf::from(v2)));
            }
        }
        anyhow::bail!(
            "no cgroup `cpu` controller: looked for cgroup v1 at /sys/fs/cgroup/cpu \
             (cpu.cfs_quota_us) and cgroup v2 at /sys/fs/cgroup (`cpu` in \
             cgroup.controllers); the testbed needs one to set each host's CPU quota"
        )
    }

    /// `dyno-testbed/` in this hierarchy.
    pub fn parent(&self) -> PathBuf {
        match self {
            Hierarchy::V1(p) | Hierarchy::V2(p) => p.join(PARENT),
        }
    }
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing `{value}` to {}", path.display()))
}

/// One host's CPU quota: a cgroup its processes are moved into.
#[derive(Debug)]
pub struct CpuGroup {
    path: PathBuf,
}

impl CpuGroup {
    /// Makes `dyno-testbed/NAME` limited to `cores` of CPU time per `period_us`.
    pub fn create(h: &Hierarchy, name: &str, cores: f64, period_us: u64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cores.is_finite() && cores > 0.0,
            "the CPU quota of {name} is {cores} cores: give a number > 0"
        );
        let quota_us = (cores * period_us as f64).round() as u64;
        anyhow::ensure!(
            quota_us >= MIN_QUOTA_US,
            "the CPU quota of {name}, {cores} cores of a {period_us} us period, is {quota_us} us: \
             the kernel's least is {MIN_QUOTA_US} us; give a longer period (period_us)"
        );
        let parent = h.parent();
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("making the cgroup {}", parent.display()))?;
        let path = parent.join(name);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("making the cgroup {}", path.display()))?;
        match h {
            Hierarchy::V1(_) => {
                // The period first: a quota above the old period would be refused.
                write(&path.join("cpu.cfs_period_us"), &period_us.to_string())?;
                write(&path.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
            }
            Hierarchy::V2(root) => {
                for dir in [root.clone(), parent.clone()] {
                    write(&dir.join("cgroup.subtree_control"), "+cpu")?;
                }
                write(&path.join("cpu.max"), &format!("{quota_us} {period_us}"))?;
            }
        }
        Ok(CpuGroup { path })
    }

    /// Gives this group the CPU first wherever it and another testbed group want the
    /// same core (the most weight the kernel takes: cgroup v1 `cpu.shares`, v2
    /// `cpu.weight`). The cloud's group takes it: on real hardware the devices run on
    /// their own CPUs, while here their quotas' bursts land on the cores the worker runs
    /// on. At the default weight each device's group weighs as much as the whole cloud,
    /// and a device waking with fresh quota preempts the worker: on
    /// `config/testbed-fleet.toml` the worker's tails took 2.0x their profiled time
    /// (22.8 ms at split 5, profiled 11.4), and 1.2x with the weight (13.9 ms).
    pub fn take_cores_first(&self) -> anyhow::Result<()> {
        let (file, most) = if self.path.join("cpu.shares").exists() {
            ("cpu.shares", "262144")
        } else {
            ("cpu.weight", "10000")
        };
        write(&self.path.join(file), most)
    }

    /// The file a process's id is written to, to move it in (its children follow).
    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// The file that moves one thread into this group, where the hierarchy has one
    /// (cgroup v1's `tasks`; v2 would need a threaded subtree, not built: there a whole
    /// process is limited).
    pub fn threads(&self) -> Option<PathBuf> {
        Some(self.path.join("tasks")).filter(|t| t.exists())
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        remove(&self.path);
    }
}

/// Kills what still runs in a cgroup, then removes it.
fn remove(path: &Path) {
    for _ in 0..50 {
        let pids = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = pids.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill has no memory preconditions; a pid gone meanwhile is ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir(path);
}

/// Removes every testbed cgroup (a killed run's leftovers, or this run's at exit), and
/// returns the ones it removed.
pub fn remove_all(h: &Hierarchy) -> Vec<PathBuf> {
    let parent = h.parent();
    let mut removed = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove(&e.path());
                removed.push(e.path());
            }
        }
    }
    if parent.exists() {
        remove(&parent);
    }
    removed
}
