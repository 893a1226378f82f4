//! The simulated mode on the shipped quickstart: it runs, writes its files, and the
//! policies rank as they must.
use dyno::experiment::{self, plots, Experiment};
use dyno::home::Home;

#[test]
fn the_quickstart_runs_simulated_and_writes_its_files() {
    let home = Home::discover();
    let e = Experiment::load(&home.root().join("config/quickstart.toml")).unwrap();
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
    // Cloud-only degrades with the link; DynO's bytes fall as the link slows.
    assert!(thr("cloud-only", 1.0) < 0.1 * thr("cloud-only", 100.0));
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
