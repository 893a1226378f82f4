//! Fuzzes the TOML loaders: device classes, SLOs (which also arrive from agents over
//! the wire), experiments, link traces, and the coordinator's, worker's and agent's
//! config files. Any text must give a value or an error naming the problem, never a
//! panic. Seeded with the shipped files (`scripts/fuzz.sh` passes config/ and traces/).
//! Run (see docs/SECURITY.md): `scripts/fuzz.sh 600 config`.
#![no_main]
use dyno::{config::Devices, experiment::Experiment, link::Trace, sched::slo::Slo};
use dyno_actors::config::{from_toml, AgentConfig, CoordinatorConfig, WorkerConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = Experiment::from_toml(text) {
        assert!(e.duration_s.is_finite() && e.duration_s > 0.0);
    }
    if let Ok(d) = Devices::from_toml(text) {
        assert!(!d.classes.is_empty());
    }
    let _ = Slo::from_toml(text);
    for repeat in [false, true] {
        if let Ok(t) = Trace::parse(text, repeat) {
            assert!(t.mean_mbps(10.0).is_finite());
        }
    }
    let _ = from_toml::<CoordinatorConfig>(text);
    let _ = from_toml::<WorkerConfig>(text);
    if let Ok(a) = from_toml::<AgentConfig>(text) {
        let _ = a.check();
        let _ = a.fleet.key();
        if a.link.trace.is_none() {
            let _ = a.link.trace();
        }
    }
});
