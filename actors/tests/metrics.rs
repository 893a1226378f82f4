//! `--metrics ADDR` and `dyno status`: a running fleet (a coordinator process with an
//! embedded worker, an agent process) serves Prometheus metrics whose figures move while
//! it runs, and its coordinator reports the fleet's state.
use std::process::{Command, Stdio};

mod common;
use common::{free_port, value, wait_for, Proc};

#[test]
fn a_running_fleet_serves_metrics_that_move_and_its_status() {
    let (cm, am) = (free_port(), free_port());
    let metrics = format!("127.0.0.1:{cm}");
    let (_c, control) =
        common::spawn_coordinator("test-metrics", "127.0.0.1:0", 1, &["--metrics", &metrics]);
    let _a = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_dyno"))
            .args(common::agent_args("test-metrics", "cam-1", &control, 0))
            .args(["--metrics", &format!("127.0.0.1:{am}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    // The agent's frames and phases move from one scrape to the next.
    let first = wait_for(am, "dyno_frames_total", 5.0);
    let second = wait_for(
        am,
        "dyno_frames_total",
        value(&first, "dyno_frames_total") + 5.0,
    );
    eprintln!("agent scrape:\n{second}");
    for phase in ["device", "pack", "end_to_end"] {
        let n = value(
            &second,
            &format!("dyno_phase_seconds_count{{phase=\"{phase}\"}}"),
        );
        assert!(n > 0.0, "no {phase} samples");
    }
    assert!(second.contains("dyno_plan_split{device=\"cam-1\"}"));
    // The coordinator: the link estimate, the plan, the pool, the worker's inferences
    // once the plan onloads (slow10x at 50 Mbit/s, 1 ms RTT).
    let c = wait_for(cm, "dyno_worker_inferences_total", 0.0);
    eprintln!("coordinator scrape:\n{c}");
    let est = value(&c, "dyno_bandwidth_estimate_bytes_per_second") * 8.0 / 1e6;
    // (fashion_cnn's frames are about 1 KB: on a 50 Mbit/s link with a 20 ms RTT their
    // transfers are all round trip, and the estimate from them is far below the link.)
    assert!(est > 0.0 && est < 500.0, "bandwidth estimate {est}");
    for name in [
        "dyno_plan_split",
        "dyno_plan_precision",
        "dyno_pool_utilization_ratio",
    ] {
        assert!(c.contains(name), "{name} missing");
    }
    // `dyno status` reads the same fleet from the coordinator.
    let st = common::status(&control, "test-metrics");
    let d = &st["devices"][0];
    assert_eq!(d["id"], "cam-1");
    assert_eq!(d["class"], "slow10x");
    assert!(d["frames"].as_u64().unwrap() > 0, "{d}");
    assert!(d["fps"].as_f64().unwrap() > 0.0, "{d}");
    assert!(d["latency_p95_ms"].as_f64().unwrap() >= d["latency_p50_ms"].as_f64().unwrap());
    assert!(d["plan"]["candidate"].is_object(), "{d}");
    assert_eq!(st["workers"].as_array().unwrap().len(), 1);
    let (ok, table, _) = common::dyno(&[
        "status",
        "--coordinator",
        &control,
        "--fleet",
        "test-metrics",
        "--insecure",
    ]);
    assert!(
        ok && table.contains("cam-1") && table.contains("embedded"),
        "{table}"
    );
    // The wrong fleet, and nobody there: clean errors.
    common::assert_clean_failure(
        &[
            "status",
            "--coordinator",
            &control,
            "--fleet",
            "other",
            "--insecure",
        ],
        &["fleet"],
    );
    let closed = format!("127.0.0.1:{}", free_port());
    common::assert_clean_failure(
        &["status", "--coordinator", &closed, "--insecure"],
        &["is it running there"],
    );
    let c2 = wait_for(
        cm,
        "dyno_worker_inferences_total",
        value(&c, "dyno_worker_inferences_total") + 1.0,
    );
    assert!(value(&c2, "dyno_worker_inferences_total") > value(&c, "dyno_worker_inferences_total"));
}
