//! The processes' configuration: defaults that parse back, overrides, and bad files that
//! say which key is wrong.
mod common;
use common::{assert_clean_failure, dyno};

#[test]
fn default_configs_print_and_parse_back() {
    for process in ["coordinator", "worker", "agent"] {
        let (ok, out, err) = dyno(&[process, "--print-default-config"]);
        assert!(ok, "{process}: {err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &out).unwrap();
        match process {
            "coordinator" => {
                let c: dyno_actors::config::CoordinatorConfig =
                    dyno_actors::config::load(Some(&path)).unwrap();
                assert_eq!(c, Default::default());
            }
            "worker" => {
                let c: dyno_actors::config::WorkerConfig =
                    dyno_actors::config::load(Some(&path)).unwrap();
                assert_eq!(c, Default::default());
            }
            _ => {
                let c: dyno_actors::config::AgentConfig =
                    dyno_actors::config::load(Some(&path)).unwrap();
                assert_eq!(c, Default::default());
            }
        }
    }
}

#[test]
fn bad_configs_and_keys_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "workerz = 3\n").unwrap();
    assert_clean_failure(
        &["coordinator", "--config", typo.to_str().unwrap()],
        &["unknown field `workerz`", "--print-default-config"],
    );
    let trace = dir.path().join("agent.toml");
    std::fs::write(
        &trace,
        "[link]\nsteps = [[1.0, 5.0]]\n[fleet]\ninsecure = true\n",
    )
    .unwrap();
    assert_clean_failure(
        &["agent", "--config", trace.to_str().unwrap(), "--no-mdns"],
        &["link.steps", "time 0"],
    );
    // Numbers that would stall or panic a device: each refused by key, nothing run.
    for (text, want) in [
        ("timeout_s = inf\n", "timeout_s = inf"),
        ("timeout_s = 1e300\n", "timeout_s = 1e300"),
        ("rate_fps = -5.0\n", "rate_fps = -5"),
        ("duration_s = nan\n", "duration_s = NaN"),
        ("in_flight = 0\n", "in_flight = 0"),
        (
            "[fleet]\nmax_frame = 1000000000000\n",
            "fleet.max_frame = 1000000000000",
        ),
    ] {
        let path = dir.path().join("numbers.toml");
        let insecure = if text.contains("[fleet]") {
            "insecure = true\n"
        } else {
            "[fleet]\ninsecure = true\n"
        };
        std::fs::write(&path, format!("{text}{insecure}")).unwrap();
        assert_clean_failure(
            &["agent", "--config", path.to_str().unwrap(), "--no-mdns"],
            &[want, "is not allowed"],
        );
    }
    // An experiment's pool batching: a bad size, and a size whose curve was never
    // measured (fashion_cnn's profile has none), each refused with the fix.
    for (cloud, model, want) in [
        (
            "max_batch = 0",
            "mobilenet_v2",
            &["cloud.max_batch = 0", "give 1"][..],
        ),
        (
            "max_queue_delay_ms = -1.0",
            "mobilenet_v2",
            &["cloud.max_queue_delay_ms = -1", ">= 0"][..],
        ),
        (
            "max_batch = 8",
            "fashion_cnn",
            &[
                "max_batch = 8",
                "dyno profile latency --model fashion_cnn --batch",
            ][..],
        ),
    ] {
        let path = dir.path().join("batching.toml");
        std::fs::write(
            &path,
            format!(
                "name = \"b\"\nmodel = \"{model}\"\nduration_s = 1.0\npolicies = [\"dyno\"]\n\
                 [cloud]\nworkers = 1\n{cloud}\n[[devices]]\nclass = \"slow10x\"\ncount = 1\n\
                 mbps = 10.0\n"
            ),
        )
        .unwrap();
        assert_clean_failure(&["experiment", "run", path.to_str().unwrap()], want);
    }
    // No key and no --insecure: refused, naming both ways out.
    assert_clean_failure(
        &["coordinator", "--no-mdns", "--listen", "127.0.0.1:0"],
        &["DYNO_FLEET_KEY", "--insecure"],
    );
    let (ok, _, err) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dyno"))
            .args(["agent", "--no-mdns", "--frames", "1"])
            .env("DYNO_FLEET_KEY", "short")
            .output()
            .unwrap();
        (
            out.status.success(),
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(!ok && err.contains("at least 16"), "{err}");
}
