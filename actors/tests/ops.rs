//! What an operator's tools see of a running, keyed fleet (a coordinator, a worker and an
//! agent as processes), checked by the real tools: a Prometheus server scrapes every
//! endpoint (its targets up, a query returns the fleet's frame counter), `promtool check
//! metrics` passes on each endpoint and `promtool check rules` on the shipped alerts,
//! `/healthz` and `/readyz` answer, the Grafana dashboard asks only for metrics that
//! exist, `avahi-browse -rpt _dyno._tcp` finds the coordinator with its TXT record,
//! `systemd-analyze verify` passes on the unit files, and SIGTERM ends every role with
//! exit status 0 (the agent after printing its summary). The outside tools come from
//! `scripts/setup.sh`; without them the test says why it is skipped (under `CI=true` it
//! fails instead).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, Proc};

const KEY: &str = "ops-test-fleet-key-0123456789abcdef";

fn why_not() -> Option<String> {
    for tool in ["prometheus", "promtool", "avahi-browse", "systemd-analyze"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` is missing: run scripts/setup.sh"));
        }
    }
    let avahi = Command::new("avahi-browse")
        .args(["-at", "-p", "-t"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !avahi {
        return Some("avahi-daemon does not answer: run scripts/setup.sh as root".into());
    }
    None
}

/// One GET: the status code and the body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Waits until `GET path` answers `code`.
fn wait_status(port: u16, path: &str, code: u16) -> String {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match get(port, path) {
            Some((c, body)) if c == code => return body,
            other if Instant::now() > until => {
                panic!("{path} on :{port} never answered {code}: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn promtool_check_metrics(text: &str, who: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on the {who}'s /metrics: {said}"
    );
}

fn sigterm(p: &mut Proc) -> std::process::ExitStatus {
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(p.id() as i32, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = p.child().try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < until, "still running 20 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn keyed(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dyno"));
    c.args(args).env("DYNO_FLEET_KEY", KEY);
    c
}

/// The metric names (without a histogram's suffixes) a PromQL expression asks for.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("dyno_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_count")
            .trim_end_matches("_sum")
            .to_string();
        out.push(base);
    }
    out
}

#[test]
fn an_operators_tools_see_a_running_fleet() {
    if common::skipped("an_operators_tools_see_a_running_fleet", why_not()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cm, wm, am, pm) = (free_port(), free_port(), free_port(), free_port());
    // A worker whose coordinator is not up yet: alive, not ready.
    let control_port = free_port();
    let control = format!("127.0.0.1:{control_port}");
    let mut worker = Proc::spawn(
        keyed(&[
            "worker",
            "--fleet",
            "ops",
            "--model",
            "fashion_cnn",
            "--name",
            "w-ops",
        ])
        .args([
            "--coordinator",
            &control,
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
        ])
        .args(["--metrics", &format!("127.0.0.1:{wm}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null()),
    )
    .unwrap();
    wait_status(wm, "/healthz", 200);
    assert_eq!(get(wm, "/readyz").unwrap().0, 503);
    assert_eq!(get(wm, "/nowhere").unwrap().0, 404);
    // The coordinator, on every interface (so that it is advertised over mDNS).
    let mut coordinator = Proc::spawn(
        keyed(&["coordinator", "--fleet", "ops", "--model", "fashion_cnn"])
            .args([
                "--listen",
                &format!(":{control_port}"),
                "--data-listen",
                "127.0.0.1:0",
            ])
            .args(["--workers", "1", "--metrics", &format!("127.0.0.1:{cm}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    wait_status(cm, "/readyz", 200);
    wait_status(wm, "/readyz", 200);
    let mut agent = Proc::spawn(
        keyed(&[
            "agent",
            "--fleet",
            "ops",
            "--model",
            "fashion_cnn",
            "--id",
            "cam-ops",
        ])
        .args(["--coordinator", &control, "--no-mdns", "--frames", "0"])
        .args(common::ONLOADING_DEVICE)
        .args(["--metrics", &format!("127.0.0.1:{am}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null()),
    )
    .unwrap();
    wait_status(am, "/readyz", 200);
    common::wait_for(am, "dyno_frames_total", 10.0);
    common::wait_for(cm, "dyno_worker_inferences_total", 0.0);
    // promtool on each endpoint.
    let mut scraped = String::new();
    for (who, port) in [("coordinator", cm), ("worker", wm), ("agent", am)] {
        let text = wait_status(port, "/metrics", 200);
        assert!(text.contains("dyno_build_info{"), "{who}: no build info");
        assert!(
            text.contains("process_resident_memory_bytes"),
            "{who}: no process metrics"
        );
        promtool_check_metrics(&text, who);
        scraped.push_str(&text);
    }
    // The dashboard asks only for metrics the fleet serves.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dyno-fleet.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            for name in metric_names(t["expr"].as_str().unwrap()) {
                assert!(
                    scraped.contains(&format!("\n{name}"))
                        || scraped.contains(&format!("# TYPE {name} ")),
                    "the dashboard's panel `{}` asks for {name}, which no endpoint serves",
                    panel["title"]
                );
                asked += 1;
            }
        }
    }
    assert!(asked >= 8, "{asked}");
    // A real Prometheus server scrapes the three.
    let config = dir.path().join("prometheus.yml");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: dyno\n    static_configs:\n      - targets: ['127.0.0.1:{cm}', '127.0.0.1:{wm}', '127.0.0.1:{am}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let _prometheus = Proc::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{pm}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    let (targets, frames) = loop {
        let up = get(pm, "/api/v1/targets").and_then(|(_, b)| {
            let v: serde_json::Value = serde_json::from_str(&b).ok()?;
            let t = v["data"]["activeTargets"].as_array()?.clone();
            (t.len() == 3 && t.iter().all(|t| t["health"] == "up")).then_some(t.len())
        });
        let frames = get(pm, "/api/v1/query?query=sum(dyno_frames_total)").and_then(|(_, b)| {
            let v: serde_json::Value = serde_json::from_str(&b).ok()?;
            v["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()
        });
        match (up, frames) {
            (Some(n), Some(f)) if f > 0.0 => break (n, f),
            _ if Instant::now() > until => panic!("Prometheus: targets {up:?}, frames {frames:?}"),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    eprintln!("Prometheus: {targets} targets up, sum(dyno_frames_total) = {frames}");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!(
        "promtool check rules: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    // avahi-browse finds the coordinator with its TXT record.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("avahi-browse")
            .args(["-rpt", "_dyno._tcp"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let found = text.lines().find(|l| {
            l.starts_with('=')
                && l.contains(&format!(";{control_port};"))
                && l.contains("\"fleet=ops\"")
                && l.contains("\"version=")
        });
        if let Some(line) = found {
            eprintln!("avahi-browse: {line}");
            break;
        }
        assert!(
            Instant::now() < until,
            "avahi-browse did not find the coordinator: {text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // SIGTERM: each role exits 0; the agent prints its summary first.
    let status = sigterm(&mut agent);
    assert!(status.success(), "agent: {status}");
    let mut summary = String::new();
    agent
        .child()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    let s: dyno_actors::agent::AgentSummary = serde_json::from_str(summary.trim()).unwrap();
    assert!(s.frames > 0 && s.results == s.frames, "{s:?}");
    assert!(sigterm(&mut worker).success());
    assert!(sigterm(&mut coordinator).success());
}

#[test]
fn the_unit_files_verify_and_a_broken_one_does_not() {
    if common::skipped("the_unit_files_verify_and_a_broken_one_does_not", why_not()) {
        return;
    }
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for role in ["coordinator", "worker", "agent"] {
        let name = format!("dyno-{role}.service");
        let text = std::fs::read_to_string(units.join(&name)).unwrap();
        for needed in ["User=dyno", "NoNewPrivileges=yes", "Restart=on-failure"] {
            assert!(text.contains(needed), "{name}: no {needed}");
        }
        // Verified against the binary this test built.
        let text = text.replace("/usr/local/bin/dyno", env!("CARGO_BIN_EXE_dyno"));
        std::fs::write(dir.path().join(&name), text).unwrap();
        names.push(dir.path().join(&name));
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    let broken = dir.path().join("dyno-broken.service");
    let text = std::fs::read_to_string(&names[0])
        .unwrap()
        .replace("Restart=on-failure", "Restart=sometimes");
    std::fs::write(&broken, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&broken)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.to_lowercase().contains("restart"),
        "a broken unit passed: {said}"
    );
}
