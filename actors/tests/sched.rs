//! The scheduler on the shipped MobileNetV2 profiles, `dyno plan`, latency profiles,
//! the predicted-against-measured check, and bad SLO, profile and class files.
mod common;
use common::{assert_clean_failure, dyno};
use std::path::{Path, PathBuf};

use dyno::config::Devices;
use dyno::home::Home;
use dyno::model::zoo;
use dyno::pack::Precision;
use dyno::profile::latency::{self, LatencyOptions, LatencyProfile};
use dyno::profile::{validate, AccuracyProfile};
use dyno::sched::fleet::{self, FleetDevice, Status};
use dyno::sched::perf::{Conditions, Link, Tables};
use dyno::sched::slo::Slo;
use dyno::sched::{Policy, Scheduler};

fn shipped(name: &str) -> PathBuf {
    Home::discover().root().join("models/profiles").join(name)
}

fn config(name: &str) -> PathBuf {
    Home::discover().root().join("config").join(name)
}

fn mobilenet_tables() -> Tables {
    let acc = AccuracyProfile::load(&shipped("mobilenet_v2.accuracy.json")).unwrap();
    let lat = LatencyProfile::load(&shipped("mobilenet_v2.latency.json")).unwrap();
    Tables::new(&acc, &lat, &lat).unwrap()
}

const SWEEP: [f64; 12] = [
    1000.0, 500.0, 200.0, 100.0, 50.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.75, 0.5,
];

#[test]
fn a_slow_device_cuts_later_as_bandwidth_falls() {
    let t = mobilenet_tables();
    let slo = Slo::load(&config("slo/throughput.toml")).unwrap();
    let class = Devices::load(&config("devices.toml")).unwrap();
    let slowdown = class.class("slow10x").unwrap().slowdown;
    assert_eq!(slowdown, 10.0);
    let mut s = Scheduler::new();
    let mut splits = Vec::new();
    for mbps in SWEEP {
        let d = s.decide(
            &t,
            &Conditions::new(slowdown, Link::mbps(mbps, 20.0)),
            &slo,
            Policy::Dyno,
            None,
        );
        assert!(d.feasible, "{mbps} Mbit/s");
        assert!(d.prediction.drop_points <= 1.0);
        splits.push(d.candidate.split);
    }
    assert!(
        splits.windows(2).all(|w| w[0] <= w[1]),
        "splits over {SWEEP:?}: {splits:?}"
    );
    assert!(splits[0] < splits[splits.len() - 1], "{splits:?}");
    let gone = s.decide(
        &t,
        &Conditions::new(slowdown, Link::gone()),
        &slo,
        Policy::Dyno,
        None,
    );
    assert_eq!(gone.candidate.split as usize, t.blocks, "device-only");
}

#[test]
fn dyno_beats_or_equals_every_baseline_on_throughput() {
    let t = mobilenet_tables();
    let slo = Slo::load(&config("slo/throughput.toml")).unwrap();
    let mut s = Scheduler::new();
    for mbps in [100.0, 10.0, 1.0] {
        let c = Conditions::new(10.0, Link::mbps(mbps, 20.0));
        let thr = |s: &mut Scheduler, p| s.decide(&t, &c, &slo, p, None).prediction.throughput;
        let dyno = thr(&mut s, Policy::Dyno);
        for p in [
            Policy::DeviceOnly,
            Policy::CloudOnly,
            Policy::Neurosurgeon,
            Policy::Fixed8Bit,
        ] {
            let b = thr(&mut s, p);
            assert!(dyno >= b * 0.98, "{mbps} Mbit/s: dyno {dyno} < {p} {b}");
        }
    }
}

#[test]
fn fleet_planning_on_real_profiles() {
    let t = mobilenet_tables();
    let slo = Slo::load(&config("slo/throughput.toml")).unwrap();
    let devices: Vec<FleetDevice> = (0..60)
        .map(|i| FleetDevice {
            id: format!("cam-{i}"),
            conditions: Conditions::new(
                [2.0, 5.0, 10.0][i % 3],
                Link::mbps([100.0, 20.0, 5.0, 1.0][i % 4], 20.0),
            ),
            slo: slo.clone(),
            policy: Policy::Dyno,
            demand_fps: Some(30.0),
        })
        .collect();
    let ample = fleet::plan(&t, &devices, 1e9);
    assert_eq!(ample.strategy, dyno::sched::fleet::Strategy::Individual);
    let mut s = Scheduler::new();
    for (d, p) in devices.iter().zip(&ample.devices) {
        let own = s.decide(&t, &d.conditions, &d.slo, d.policy, None);
        assert_eq!(p.candidate, own.candidate);
    }
    for frac in [0.1, 0.3, 0.6] {
        let cap = frac * ample.load;
        let p = fleet::plan(&t, &devices, cap);
        assert!(p.load <= cap * (1.0 + 1e-9));
        assert_eq!(p.slo_unmet, 0);
        // An equal split of the pool: each device makes the best of capacity / N.
        let share = cap / devices.len() as f64;
        let equal: f64 = devices
            .iter()
            .map(|d| {
                t.rows
                    .iter()
                    .map(|r| r.predict(&d.conditions))
                    .filter(|p| slo.constraints.allows(p))
                    .map(|p| {
                        let r = p.throughput.min(30.0);
                        if p.cloud_s > 0.0 {
                            r.min(share / p.cloud_s)
                        } else {
                            r
                        }
                    })
                    .fold(0.0, f64::max)
            })
            .sum();
        eprintln!(
            "pool at {frac} of the fleet's demand: fleet-aware {:.1}/s, equal split {equal:.1}/s \
             ({:.2}x), {} devices moved",
            p.throughput,
            p.throughput / equal,
            p.devices
                .iter()
                .filter(|d| d.status == Status::Shared)
                .count()
        );
        assert!(
            p.throughput >= equal,
            "capacity {frac}: fleet {} < equal split {equal}",
            p.throughput
        );
        assert!(p.devices.iter().any(|d| d.status == Status::Shared));
        assert_eq!(
            p.strategy,
            dyno::sched::fleet::Strategy::Greedy,
            "capacity {frac}: the greedy plan itself wins"
        );
    }
}

#[test]
fn dyno_plan_prints_the_plan_and_the_runners_up() {
    let (ok, out, err) = dyno(&[
        "plan",
        "--model",
        "mobilenet_v2",
        "--device",
        "slow10x",
        "--bandwidth-mbps",
        "5",
        "--slo",
        config("slo/throughput.toml").to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"]["feasible"], true);
    assert!(v["decision"]["prediction"]["throughput"].as_f64().unwrap() > 0.0);
    let runners = v["runners_up"].as_array().unwrap();
    assert_eq!(runners.len(), 5);
    assert!(runners
        .iter()
        .all(|r| !r["reason"].as_str().unwrap().is_empty()));
    let (ok, text, _) = dyno(&[
        "plan",
        "--model",
        "mobilenet_v2",
        "--bandwidth-mbps",
        "0",
        "--policy",
        "cloud-only",
    ]);
    assert!(ok);
    assert!(
        text.contains("NO PLAN MEETS THE SLO") || text.contains("plan:"),
        "{text}"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn bad_slo_files_name_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[constraints]\nmax_latency = 100\n",
            vec!["max_latency", "max_latency_ms"],
        ),
        (
            "[constraints]\nmax_latency_ms = -5\n",
            vec!["constraints.max_latency_ms = -5", "> 0"],
        ),
        (
            "[constraints]\nmax_latency_ms = \"fast\"\n",
            vec!["max_latency_ms", "line 2"],
        ),
        (
            "[objectives]\norder = [\"max-speed\"]\n",
            vec!["max-speed", "max-throughput"],
        ),
        (
            "[objectives]\norder = []\n",
            vec!["objectives.order is empty"],
        ),
        (
            "[objectives]\norder = [\"min-bytes\", \"min-bytes\"]\n",
            vec!["min-bytes` twice"],
        ),
        (
            "[objectives]\norder = [\"min-bytes\"]\ntolerance = 1.5\n",
            vec!["objectives.tolerance = 1.5", "[0, 1)"],
        ),
        ("[limits]\nx = 1\n", vec!["limits", "constraints"]),
    ];
    for (i, (text, needles)) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("slo{i}.toml"), text);
        let mut all = needles.clone();
        all.push(&path);
        assert_clean_failure(
            &[
                "plan",
                "--model",
                "mobilenet_v2",
                "--bandwidth-mbps",
                "10",
                "--slo",
                &path,
            ],
            &all,
        );
    }
}

#[test]
fn bad_profiles_and_classes_name_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(shipped("mobilenet_v2.latency.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["blocks"][3]["seconds"] = serde_json::json!(-1.0);
    let negative = write(dir.path(), "neg.json", &v.to_string());
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v.as_object_mut().unwrap().remove("codecs");
    let missing = write(dir.path(), "missing.json", &v.to_string());
    let fashion = shipped("fashion_cnn.latency.json").display().to_string();
    let acc = std::fs::read_to_string(shipped("mobilenet_v2.accuracy.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&acc).unwrap();
    v["splits"][2]["entries"][5]["bytes"]["lz4"] = serde_json::json!(-7.0);
    let bad_bytes = write(dir.path(), "acc.json", &v.to_string());
    // A profile of other ranges than the agents pack with does not plan a fleet.
    let mut v: serde_json::Value = serde_json::from_str(&acc).unwrap();
    v["clip"] = serde_json::json!("mse");
    let clipped = write(dir.path(), "mse.json", &v.to_string());
    let mut v: serde_json::Value = serde_json::from_str(&acc).unwrap();
    v["granularity"] = serde_json::json!("per-channel");
    let per_channel = write(dir.path(), "pc.json", &v.to_string());
    v["granularity"] = serde_json::json!("per-pixel");
    let unknown = write(dir.path(), "pp.json", &v.to_string());
    let base = ["plan", "--model", "mobilenet_v2", "--bandwidth-mbps", "10"];
    let with = |extra: &[&str], needles: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        assert_clean_failure(&args, needles);
    };
    with(
        &["--latency-profile", &negative],
        &["blocks[3].seconds is -1", "dyno profile latency"],
    );
    with(
        &["--latency-profile", &missing],
        &["missing field `codecs`", "dyno profile latency"],
    );
    with(
        &["--accuracy-profile", &bad_bytes],
        &[
            "splits[2].entries[5].bytes.lz4 is -7",
            "dyno profile accuracy",
        ],
    );
    with(
        &["--accuracy-profile", &clipped],
        &[
            "measured with mse per-tensor ranges",
            "without --per-channel or --clip",
        ],
    );
    with(
        &["--accuracy-profile", &per_channel],
        &[
            "measured with minmax per-channel ranges",
            "dyno profile accuracy",
        ],
    );
    with(
        &["--accuracy-profile", &unknown],
        &["unknown variant `per-pixel`", "dyno profile accuracy"],
    );
    with(
        &["--latency-profile", &fashion],
        &["fashion_cnn", "same model"],
    );
    with(
        &["--latency-profile", "/nonexistent/x.json"],
        &[
            "/nonexistent/x.json: there is no latency profile",
            "dyno profile latency",
        ],
    );
    with(
        &["--device", "toaster"],
        &["unknown device class `toaster`", "slow10x"],
    );
    with(
        &["--policy", "fastest"],
        &["unknown policy `fastest`", "neurosurgeon"],
    );
    with(&["--rtt-ms=-3"], &["--rtt-ms must be"]);
    let classes = write(dir.path(), "classes.toml", "[classes.a]\nslowdown = 0\n");
    with(
        &["--devices", &classes, "--device", "a"],
        &["classes.a.slowdown = 0", "> 0", &classes],
    );
    let typo = write(dir.path(), "typo.toml", "[classes.a]\nslowdwn = 2\n");
    with(
        &["--devices", &typo, "--device", "a"],
        &["slowdwn", "slowdown"],
    );
}

#[test]
fn latency_profiles_cover_every_split_precision_and_codec() {
    let home = Home::discover();
    let model = zoo::load("fashion_cnn", &home).unwrap();
    let x = dyno::check::default_inputs(&model, &home)
        .unwrap()
        .xs
        .narrow(0, 0, 1);
    let p = latency::measure(
        &model,
        &x,
        "test",
        &LatencyOptions {
            runs: 3,
            ..LatencyOptions::default()
        },
    )
    .unwrap();
    assert_eq!(p.blocks.len(), 7);
    // Every split at every precision with each codec, and the input (a 1-channel
    // picture) as a JPEG at 4 qualities, with none.
    assert_eq!(p.codecs.len(), 7 * 18 * 3 + 4);
    let jpegs: Vec<_> = p.codecs.iter().filter(|c| c.precision.is_jpeg()).collect();
    assert!(jpegs
        .iter()
        .all(|c| c.split == 0 && c.codec == dyno::pack::Codec::None));
    p.validate().unwrap();
    assert!(p.blocks.iter().all(|b| b.seconds > 0.0));
    // Fewer bits, fewer bytes; and the round trip through a file is exact.
    let bytes = |prec| {
        p.codecs
            .iter()
            .find(|c| c.split == 1 && c.precision == prec && c.codec == dyno::pack::Codec::None)
            .unwrap()
            .bytes
    };
    assert!(bytes(Precision::Bits(2)) < bytes(Precision::Bits(8)));
    assert!(bytes(Precision::Bits(8)) < bytes(Precision::Fp32));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.json");
    p.save(&f).unwrap();
    assert_eq!(LatencyProfile::load(&f).unwrap(), p);
}

#[test]
fn predicted_and_measured_latency_come_from_a_real_loopback_pipeline() {
    let home = Home::discover();
    let model = zoo::load("fashion_cnn", &home).unwrap();
    let x = dyno::check::default_inputs(&model, &home)
        .unwrap()
        .xs
        .narrow(0, 0, 1);
    let v = validate::run(
        &home,
        &model,
        &x,
        Precision::Bits(8),
        dyno::pack::Codec::Lz4,
        5,
    )
    .unwrap();
    assert_eq!(v.splits.len(), 8);
    assert!(v.link.rtt_s > 0.0 && v.link.rtt_s < 0.1);
    for s in &v.splits {
        assert!(s.measured_ms > 0.0 && s.predicted_ms > 0.0, "{s:?}");
        assert_eq!(s.bytes > 0, s.split < 7);
    }
    assert!(v.correction.k_dev > 0.1 && v.correction.k_cloud > 0.1);
}
