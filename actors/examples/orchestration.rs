//! What the runtime costs, in one run: a coordinator with one embedded worker and one
//! agent, in one process, MobileNetV2 on the real images at a pinned plan.
//!
//! 1. Latency: one frame in flight; each frame's end-to-end latency against the sum of
//!    its own stages (head, pack, link, unpack, tail); what is left is what the actors,
//!    the queues and the protocol add.
//! 2. Throughput: frames pipelined; the rate reached against 1 / (slowest stage), the
//!    stages being the device (head + pack), the link (the bytes at its rate) and the
//!    cloud (unpack + tail), each the median observed in the same run.
//!
//! Run: `cargo run --release -p dyno-actors --example orchestration -- [SPLIT] [FRAMES]`.
use dyno::home::Home;
use dyno::pack::{Codec, Precision};
use dyno::sched::perf::Candidate;
use dyno_actors::agent::{self, FrameResult};
use dyno_actors::config::{AgentConfig, CoordinatorConfig, Fleet, LinkConfig, Source};
use dyno_actors::coordinator;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let split: u16 = args.get(1).map_or(Ok(8), |s| s.parse())?;
    let frames: u64 = args.get(2).map_or(Ok(200), |s| s.parse())?;
    let home = Home::discover();
    let fleet = Fleet {
        id: "bench".into(),
        insecure: true,
        ..Fleet::default()
    };
    let mbps = 100.0;
    actix::System::new().block_on(async move {
        let c = coordinator::start(
            &CoordinatorConfig {
                fleet: fleet.clone(),
                listen: "127.0.0.1:0".into(),
                data_listen: "127.0.0.1:0".into(),
                workers: 1,
                model: "mobilenet_v2".into(),
                mdns: false,
                ..CoordinatorConfig::default()
            },
            &home,
        )
        .await?;
        let agent = |in_flight, frames| AgentConfig {
            fleet: fleet.clone(),
            id: "bench".into(),
            coordinators: vec![c.control.to_string()],
            model: "mobilenet_v2".into(),
            class: "host".into(),
            threads: Some(1),
            slowdown: Some(1.0),
            link: LinkConfig {
                mbps,
                rtt_ms: 10.0,
                ..LinkConfig::default()
            },
            source: Source::Folder {
                path: home.imagenet_dir(),
            },
            frames,
            in_flight,
            policy: dyno::sched::Policy::CloudOnly, // any onloading plan: the pin overrides it
            pin: Some(Candidate {
                split,
                precision: Precision::Bits(8),
                codec: Codec::Lz4,
            }),
            mdns: false,
            ..AgentConfig::default()
        };
        // Warm up (and let the plan arrive), then measure.
        agent::run(agent(1, 20), home.clone()).await?;
        let (_, one) = agent::run_with_results(agent(1, frames), home.clone(), Default::default()).await?;
        let onloaded: Vec<&FrameResult> = one.iter().filter(|r| !r.fallback && r.bytes > 0).collect();
        anyhow::ensure!(onloaded.len() as u64 == frames, "only {} of {frames} frames onloaded", onloaded.len());
        let own = |r: &FrameResult| {
            let s = r.stages;
            s.head_s + s.pack_s + s.link_s + s.unpack_s + s.tail_s
        };
        let latency: f64 = onloaded.iter().map(|r| r.latency_s).sum::<f64>() / frames as f64;
        let stages: f64 = onloaded.iter().map(|r| own(r)).sum::<f64>() / frames as f64;
        let per_frame = median(onloaded.iter().map(|r| r.latency_s / own(r) - 1.0).collect());
        println!("mobilenet_v2, split {split}, 8 bits, lz4, {mbps} Mbit/s, RTT 10 ms, {frames} frames");
        println!(
            "latency: mean end to end {:.3} ms, mean sum of own stages {:.3} ms: overhead {:.2} % (per-frame median {:.2} %)",
            latency * 1e3,
            stages * 1e3,
            100.0 * (latency / stages - 1.0),
            100.0 * per_frame
        );
        let m = |f: &dyn Fn(&FrameResult) -> f64| median(onloaded.iter().map(|r| f(r)).collect());
        println!(
            "  medians: head {:.3} pack {:.3} link {:.3} queue {:.3} unpack {:.3} tail {:.3} ms",
            m(&|r| r.stages.head_s) * 1e3,
            m(&|r| r.stages.pack_s) * 1e3,
            m(&|r| r.stages.link_s) * 1e3,
            m(&|r| r.stages.queue_s) * 1e3,
            m(&|r| r.stages.unpack_s) * 1e3,
            m(&|r| r.stages.tail_s) * 1e3
        );
        let (s, many) = agent::run_with_results(agent(8, frames), home.clone(), Default::default()).await?;
        let device = median(many.iter().map(|r| r.stages.head_s + r.stages.pack_s).collect());
        let cloud = median(many.iter().map(|r| r.stages.unpack_s + r.stages.tail_s).collect());
        let link = median(many.iter().map(|r| 8.0 * r.bytes as f64 / (mbps * 1e6)).collect());
        let slowest = device.max(cloud).max(link);
        println!(
            "throughput: {:.1} frames/s against 1 / slowest stage = {:.1} (device {:.3}, link {:.3}, cloud {:.3} ms): {:.1} %",
            s.fps,
            1.0 / slowest,
            device * 1e3,
            link * 1e3,
            cloud * 1e3,
            100.0 * s.fps * slowest
        );
        Ok(())
    })
}
