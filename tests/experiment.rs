//! The simulated mode on the shipped configurations: they load, run, write their files,
//! and the policies rank as they must.
use dyno::experiment::{self, plots, Experiment, Row};
use dyno::home::Home;
use dyno::link::Trace;

const SHIPPED: [&str; 8] = [
    "quickstart",
    "live-vs-simulated",
    "paper-throughput",
    "paper-throughput-resnet50",
    "paper-offloading",
    "paper-data",
    "trace-adaptation",
    "fleet",
];

/// The shipped experiment `name` in a copy of the project without `out/`: these tests
/// assert figures of the shipped profiles, which a profile measured on this machine
/// (`out/profiles/`, read first) would replace (with one there, the quickstart's
/// cloud-only ranked otherwise). The copy is links to the project's own entries; it
/// lives as long as the returned folder.
fn load(name: &str) -> (Home, Experiment, tempfile::TempDir) {
    let root = Home::discover().root().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&root).unwrap() {
        let entry = entry.unwrap();
        if !["out", "target"].contains(&entry.file_name().to_str().unwrap_or("")) {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let home = Home::at(dir.path());
    let e = Experiment::load(&home.root().join(format!("config/{name}.toml")))
        .unwrap_or_else(|err| panic!("{err}"));
    (home, e, dir)
}

fn find<'a>(rows: &'a [Row], policy: &str, mbps: Option<f64>) -> &'a Row {
    rows.iter()
        .find(|r| r.policy == policy && r.mbps == mbps)
        .unwrap_or_else(|| panic!("no row {policy} at {mbps:?}"))
}

#[test]
fn every_shipped_experiment_loads_with_its_traces() {
    for name in SHIPPED {
        let (home, e, _shipped) = load(name);
        assert_eq!(e.name, name);
        for d in &e.devices {
            if let Some(t) = &d.trace {
                let trace = Trace::load(&home.root().join(t), d.repeat)
                    .unwrap_or_else(|err| panic!("{name}: {err}"));
                assert!(
                    trace.mean_mbps(e.duration_s) > 0.0,
                    "{name}: {}",
                    t.display()
                );
            }
        }
    }
}

#[test]
fn the_plan_follows_a_real_lte_trace() {
    let (home, mut e, _shipped) = load("trace-adaptation");
    e.policies = vec!["dyno".parse().unwrap()];
    let out = experiment::simulate(&e, &home, false).unwrap();
    assert!(out.rows[0].plan_changes > 5, "{:?}", out.rows[0]);
    // Device 0 rides the NYU-METS subway trace: where the link is slow it keeps more of
    // the network (a later split) than where it is fast, and the estimate follows the
    // link within a factor of two most of the time.
    let ticks: Vec<_> = out
        .ticks
        .iter()
        .map(|(_, _, t)| t)
        .filter(|t| t.device == 0)
        .collect();
    let mean_split = |keep: &dyn Fn(f64) -> bool| {
        let s: Vec<f64> = ticks
            .iter()
            .filter(|t| keep(t.true_mbps))
            .map(|t| t.split as f64)
            .collect();
        assert!(s.len() > 10, "too few ticks");
        s.iter().sum::<f64>() / s.len() as f64
    };
    let slow = mean_split(&|m| m < 3.0);
    let fast = mean_split(&|m| m > 15.0);
    assert!(
        slow > fast + 1.0,
        "mean split {slow:.1} when slow, {fast:.1} when fast"
    );
    let close = ticks
        .iter()
        .filter(|t| t.true_mbps > 0.5)
        .filter(|t| (t.estimated_mbps / t.true_mbps - 1.0).abs() < 1.0)
        .count() as f64
        / ticks.iter().filter(|t| t.true_mbps > 0.5).count() as f64;
    assert!(
        close > 0.7,
        "estimate within 2x of the link {:.0} % of the time",
        100.0 * close
    );
}

#[test]
fn dyno_onloads_a_jetson_class_device_within_the_budget() {
    let (home, e, _shipped) = load("paper-throughput");
    let out = experiment::simulate(&e, &home, false).unwrap();
    for &m in &e.sweep.mbps {
        let (d, alone) = (
            find(&out.rows, "dyno", Some(m)),
            find(&out.rows, "device-only", Some(m)),
        );
        assert!(d.throughput >= 0.99 * alone.throughput, "{m} Mbit/s");
        assert!(d.accuracy_drop_points <= 1.0 + 1e-9, "{m} Mbit/s");
    }
    let top = *e.sweep.mbps.last().unwrap();
    let gain = find(&out.rows, "dyno", Some(top)).throughput
        / find(&out.rows, "device-only", Some(top)).throughput;
    assert!(
        gain > 10.0,
        "DynO over device-only at {top} Mbit/s: {gain:.1}x"
    );
}

#[test]
fn the_quickstart_runs_simulated_and_writes_its_files() {
    let (home, e, _shipped) = load("quickstart");
    let out = experiment::simulate(&e, &home, false).unwrap();
    assert_eq!(out.rows.len(), e.policies.len() * e.sweep.mbps.len());
    let thr = |p: &str, m: f64| {
        out.rows
            .iter()
            .find(|r| r.policy == p && r.mbps == Some(m))
            .unwrap()
            .throughput
    };
    for &m in &e.sweep.mbps {
        // Fleet-aware DynO never loses to running everything on the device or in the
        // cloud, nor to DynO planning each device as if the one worker were its own.
        assert!(
            thr("dyno-fleet", m) >= 0.99 * thr("device-only", m),
            "{m} Mbit/s"
        );
        assert!(
            thr("dyno-fleet", m) >= 0.99 * thr("cloud-only", m),
            "{m} Mbit/s"
        );
        assert!(thr("dyno-fleet", m) >= 0.99 * thr("dyno", m), "{m} Mbit/s");
        let device_only = out
            .rows
            .iter()
            .find(|r| r.policy == "device-only" && r.mbps == Some(m))
            .unwrap();
        assert_eq!(device_only.bytes_per_inference, 0.0);
        assert!((device_only.device_share - 1.0).abs() < 1e-9);
    }
    // Cloud-only sends the input as a camera would, a JPEG (under 40 kB, not the 602 kB
    // of fp32), and degrades with the link.
    let (slowest, fastest) = (e.sweep.mbps[0], *e.sweep.mbps.last().unwrap());
    for r in out.rows.iter().filter(|r| r.policy == "cloud-only") {
        assert!(
            r.bytes_per_inference < 40_000.0,
            "{}",
            r.bytes_per_inference
        );
    }
    assert!(thr("cloud-only", slowest) < 0.6 * thr("cloud-only", fastest));
    let dir = tempfile::tempdir().unwrap();
    let mut files = experiment::write(&out, dir.path()).unwrap();
    files.extend(plots::write(&out, dir.path()).unwrap());
    for name in [
        "summary.json",
        "frames.csv",
        "ticks.csv",
        "throughput_vs_bandwidth.png",
        "throughput_vs_bandwidth.svg",
        "bytes_per_inference.png",
        "timeseries.svg",
    ] {
        let p = dir.path().join(name);
        assert!(
            std::fs::metadata(&p)
                .map(|m| m.len() > 100)
                .unwrap_or(false),
            "{name}"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["rows"].as_array().unwrap().len(), out.rows.len());
}

/// Six devices planned each alone on one worker: the simulated worker holds its slot
/// and `DEFAULT_QUEUE` frames more, as the real one does (`control::has_room`), and
/// answers the rest busy; those frames are finished on their devices, counted where
/// they end. Fleet-aware plans keep within the worker and are (almost) never refused.
#[test]
fn a_full_worker_answers_busy_and_the_device_finishes_the_frame() {
    let (home, e, _shipped) = load("testbed-fleet");
    let out = experiment::simulate(&e, &home, false).unwrap();
    let finished_on_device = |policy: &str| {
        let (mut refused, mut all) = (0usize, 0usize);
        for (p, _, f) in &out.frames {
            if p == policy {
                all += 1;
                // Sent (bytes) and yet all the compute on the device: answered busy.
                if f.bytes > 0.0 && f.device_share == 1.0 {
                    refused += 1;
                }
            }
        }
        refused as f64 / all.max(1) as f64
    };
    let alone = finished_on_device("dyno");
    assert!(
        (0.05..0.5).contains(&alone),
        "{:.1} % of per-device frames were answered busy",
        alone * 100.0
    );
    let fleet = finished_on_device("dyno-fleet");
    assert!(fleet < 0.01, "{:.1} % of fleet-aware frames", fleet * 100.0);
    // What a frame answered busy costs shows in the predictions: within 15 %.
    let row = find(&out.rows, "dyno", None);
    let err = (row.predicted_throughput / row.throughput - 1.0).abs();
    assert!(err < 0.15, "{err:.3}");
}
