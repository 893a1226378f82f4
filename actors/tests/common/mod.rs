//! Helpers shared by the integration tests that run the real `dyno` binary.
#![allow(dead_code)] // each test file uses some of them
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the real binary; returns (success, stdout, stderr).
pub fn dyno(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dyno"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts that `dyno args` fails without a panic and says every one of `needles`.
pub fn assert_clean_failure(args: &[&str], needles: &[&str]) {
    let (ok, _, err) = dyno(args);
    assert!(!ok, "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` not in: {err}");
    }
}

/// A port free on loopback a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One scrape of a `--metrics` endpoint: the exposition, or None while it is not up.
pub fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.starts_with("HTTP/1.1 200").then_some(text)
}

/// The sum of every sample of `name` (over its labels) in an exposition.
pub fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scrapes until `name` is above `above` (30 s at most); returns that scrape.
pub fn wait_for(port: u16, name: &str, above: f64) -> String {
    let t = Instant::now();
    loop {
        if let Some(text) = scrape(port) {
            if value(&text, name) > above {
                return text;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{name} never went above {above} on :{port}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `dyno args` and returns it with the JSON line it prints when ready
/// (`--ready-json`).
pub fn spawn_ready(args: &[&str]) -> (Proc, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dyno"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{args:?}: `{line}`: {e}"));
    (Proc(child), v)
}
