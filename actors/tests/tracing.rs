//! One frame is one trace across processes: the agent and the worker that served it log
//! under a `frame` span with the same device and request id (`--log-json`), and
//! `RUST_LOG` filters what is logged.
use std::collections::BTreeSet;
use std::process::Command;

mod common;

/// Runs a coordinator (one embedded worker) and one agent of 120 frames with `rust_log`;
/// returns both JSON logs.
fn run(rust_log: &str) -> (String, String) {
    let mut args = common::coordinator_args("test-trace", "127.0.0.1:0", 1);
    args.extend(["--insecure".into(), "--log-json".into()]);
    let c = common::spawn_logged(&args, &[("RUST_LOG", rust_log)]);
    let control = c.ready["control"].as_str().unwrap().to_string();
    let agent = Command::new(env!("CARGO_BIN_EXE_dyno"))
        .args(common::agent_args("test-trace", "cam-7", &control, 120))
        .arg("--log-json")
        .env("RUST_LOG", rust_log)
        .output()
        .unwrap();
    assert!(agent.status.success());
    (String::from_utf8_lossy(&agent.stderr).into_owned(), c.log())
}

/// The (device, request) of every JSON log line with `message` inside a `frame` span.
fn frames(log: &str, message: &str) -> BTreeSet<(String, u64)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .filter_map(|v| {
            let span = &v["span"];
            (span["name"] == "frame").then(|| {
                (
                    span["device"].as_str().unwrap_or("").to_string(),
                    span["request"].as_u64().unwrap_or(u64::MAX),
                )
            })
        })
        .collect()
}

#[test]
fn a_frame_is_one_trace_across_processes() {
    let (agent, coordinator) = run("dyno_actors=debug");
    let done = frames(&agent, "frame done");
    let served = frames(&coordinator, "tail done");
    assert_eq!(done.len(), 120, "every frame has its span at the agent");
    assert!(!served.is_empty(), "no frame was served by the worker");
    // Every tail the worker ran belongs to a frame the agent finished, under the same ids.
    assert!(
        served.is_subset(&done),
        "worker spans not at the agent: {:?}",
        served.difference(&done).collect::<Vec<_>>()
    );
    assert!(served.iter().all(|(d, _)| d == "cam-7"));
    eprintln!(
        "{} frames at the agent, {} of them also at the worker",
        done.len(),
        served.len()
    );
    // RUST_LOG filters: at `warn` no frame is logged.
    let (agent, coordinator) = run("warn");
    assert!(frames(&agent, "frame done").is_empty());
    assert!(frames(&coordinator, "tail done").is_empty());
}
