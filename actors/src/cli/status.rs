//! `dyno status`: the live fleet from its coordinator, as a table or JSON.
use clap::Args;

use crate::{config, coordinator};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The coordinator's control address.
    #[arg(long, default_value = "127.0.0.1:7700", env = "DYNO_COORDINATOR")]
    pub coordinator: String,
    /// Fleet id.
    #[arg(long, default_value = "dyno", env = "DYNO_FLEET")]
    pub fleet: String,
    /// The coordinator runs without a fleet key (otherwise DYNO_FLEET_KEY is used).
    #[arg(long, env = "DYNO_INSECURE")]
    pub insecure: bool,
    /// Print the status as JSON.
    #[arg(long, env = "DYNO_JSON")]
    pub json: bool,
}

pub fn run_status(a: StatusArgs) -> anyhow::Result<()> {
    use dyno::wire::{Identity, Role};
    let fleet = config::Fleet {
        id: a.fleet.clone(),
        insecure: a.insecure,
        ..config::Fleet::default()
    };
    let me = Identity {
        fleet: fleet.id.clone(),
        name: "status".into(),
        role: Role::Observer,
        key: fleet.key()?,
    };
    let st = actix::System::new().block_on(coordinator::fetch_status(
        &a.coordinator,
        &me,
        fleet.max_frame,
    ))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    println!(
        "fleet {}: {} devices, {} workers, pool {:.0} % planned, {} plans sent",
        a.fleet,
        st.devices.len(),
        st.workers.len(),
        100.0 * st.pool_utilisation,
        st.plans_sent
    );
    println!(
        "\n{:<16} {:<10} {:<28} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>11} {:>6}",
        "device",
        "class",
        "plan",
        "Mbit/s",
        "rtt ms",
        "fps",
        "p50 ms",
        "p95 ms",
        "frames",
        "fallbacks",
        "budget",
        "onload",
        "over budget",
        "k_dev"
    );
    for d in &st.devices {
        let plan = d
            .plan
            .as_ref()
            .map_or("-".to_string(), |p| p.candidate.to_string());
        // The onload budget, frames/s ("-": none).
        let budget = d
            .plan
            .as_ref()
            .filter(|p| p.rate_fps.is_finite())
            .map_or("-".to_string(), |p| format!("{:.1}", p.rate_fps));
        println!(
            "{:<16} {:<10} {:<28} {:>8.2} {:>7.1} {:>7.1} {:>8.1} {:>8.1} {:>8} {:>9} {:>7} {:>7.1} {:>11} {:>6.2}",
            d.id,
            d.class,
            plan,
            d.bandwidth_mbps,
            d.rtt_ms,
            d.fps,
            d.latency_p50_ms,
            d.latency_p95_ms,
            d.frames,
            d.fallbacks,
            budget,
            d.onload_fps,
            d.over_budget,
            d.k_dev
        );
    }
    println!(
        "\n{:<16} {:<24} {:>6} {:>7} {:>8} {:>8} {:>11}",
        "worker", "data address", "slots", "queued", "k_cloud", "wait ms", "over budget"
    );
    for w in &st.workers {
        println!(
            "{:<16} {:<24} {:>6} {:>7} {:>8.2} {:>8.1} {:>11}",
            w.name, w.data_addr, w.slots, w.queued, w.k_cloud, w.queue_ms, w.over_budget
        );
    }
    println!(
        "\nbudget, onload: frames/s a device may onload, and does (over the last {:.0} s); \
         over budget: frames run on the device (device rows) or answered busy (worker rows) \
         over it; k_dev, k_cloud: measured time over profiled; wait: the queue wait planned with",
        coordinator::RECENT_S
    );
    Ok(())
}
