//! The scheduler's cost: one device's full decision for MobileNetV2 (every split x
//! precision x codec, 1081 candidates), planning a fleet of 1000 devices against one
//! cloud pool, and the coordinator's whole control step for those 1000 devices on four
//! workers (the fleet plan, hysteresis, worker assignment), all on the shipped profiles.
//!
//! Run: `cargo bench --bench scheduler`.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use dyno::home::Home;
use dyno::profile::latency::LatencyProfile;
use dyno::profile::AccuracyProfile;
use dyno::sched::control::{Control, DeviceSpec, Sharing};
use dyno::sched::fleet::{self, FleetDevice};
use dyno::sched::perf::{Conditions, Link, Tables};
use dyno::sched::slo::Slo;
use dyno::sched::{Policy, Scheduler};

fn tables() -> Tables {
    let dir = Home::discover().root().join("models/profiles");
    let acc = AccuracyProfile::load(&dir.join("mobilenet_v2.accuracy.json")).expect("shipped");
    let lat = LatencyProfile::load(&dir.join("mobilenet_v2.latency.json")).expect("shipped");
    Tables::new(&acc, &lat, &lat).expect("consistent shipped profiles")
}

fn fleet_of(n: usize, slo: &Slo) -> Vec<FleetDevice> {
    (0..n)
        .map(|i| FleetDevice {
            id: format!("d{i}"),
            // Every device its own link: no two decisions are the same.
            conditions: Conditions::new(
                [1.5, 3.0, 6.0, 12.0][i % 4],
                Link::mbps(0.5 + (i as f64 * 7.3) % 200.0, 5.0 + (i % 40) as f64),
            ),
            slo: slo.clone(),
            policy: Policy::Dyno,
            demand_fps: Some(15.0),
        })
        .collect()
}

fn scheduler(c: &mut Criterion) {
    let t = tables();
    let slo = Slo::default();
    let mut s = Scheduler::new();
    let cond = Conditions::new(10.0, Link::mbps(8.0, 20.0));
    let mut g = c.benchmark_group("scheduler");
    g.bench_function("decide_mobilenet_v2", |b| {
        b.iter(|| s.decide(black_box(&t), black_box(&cond), &slo, Policy::Dyno, None))
    });
    let current = s.decide(&t, &cond, &slo, Policy::Dyno, None).candidate;
    g.bench_function("decide_mobilenet_v2_with_hysteresis", |b| {
        b.iter(|| {
            s.decide(
                black_box(&t),
                black_box(&cond),
                &slo,
                Policy::Dyno,
                Some(current),
            )
        })
    });
    let devices = fleet_of(1000, &slo);
    let full = fleet::plan(&t, &devices, 1e9).load;
    g.sample_size(20);
    g.bench_function("fleet_1000_ample", |b| {
        b.iter(|| fleet::plan(black_box(&t), black_box(&devices), 1e9))
    });
    g.bench_function("fleet_1000_scarce", |b| {
        b.iter(|| fleet::plan(black_box(&t), black_box(&devices), 0.3 * full))
    });
    // The coordinator's (and the simulator's) whole step, each device on its own
    // measured link and with a plan in force.
    for (name, sharing) in [
        ("control_1000_per_device", Sharing::PerDevice),
        ("control_1000_fleet_aware", Sharing::FleetAware),
    ] {
        let mut ctl = Control::new(sharing, 1.0, 0.0);
        for w in 0..4 {
            ctl.join_worker(&format!("w{w}"), 8, dyno::sched::batch::Batching::off());
        }
        for d in &devices {
            let spec = DeviceSpec {
                slowdown: d.conditions.device_slowdown,
                slo: slo.clone(),
                policy: Policy::Dyno,
                in_flight: 2,
            };
            ctl.join_device(&d.id, spec, 0.0);
            let l = d.conditions.link;
            ctl.observe_rtt(&d.id, 0.0, l.rtt_s);
            ctl.observe_transfer(&d.id, 0.0, 1_000_000, 8e6 / l.bandwidth_bps + l.rtt_s);
        }
        ctl.replan(&t, 0.0);
        g.bench_function(name, |b| b.iter(|| ctl.replan(black_box(&t), 1.0)));
    }
    g.finish();
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
