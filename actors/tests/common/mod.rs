//! Helpers shared by the integration tests that run the real `dyno` binary.
use std::process::Command;

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
