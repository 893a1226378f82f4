//! # dyno-actors
//!
//! dyno's runtime (DESIGN.md section 3): the Device, CloudWorker, BandwidthMonitor and
//! Scheduler actors (actix), the processes built from them (`dyno coordinator`,
//! `dyno worker`, `dyno agent`) and the `dyno` binary. The actors hold no logic that the
//! `dyno` library's pure modules already have: scheduling is `dyno::sched`, packing
//! `dyno::pack`, the protocol `dyno::wire`, link emulation `dyno::link`.
//!
//! - [`coordinator`]: the Scheduler and BandwidthMonitor actors, the control endpoint,
//!   an embedded worker pool.
//! - [`worker`]: the CloudWorker (tails on a `SyncArbiter`), the data endpoint, and the
//!   `dyno worker` process's registration.
//! - [`agent`]: the Device: heads and packing on its compute thread, the emulated uplink,
//!   the fallback to the device, the control connection.
//! - [`discovery`]: mDNS advertisement and browsing (`_dyno._tcp`, zeroconf on Avahi).
//! - [`experiment`]: the live mode of `dyno experiment run`.
//! - [`load`]: `dyno load`, many synthetic agents against one coordinator.
//! - [`testbed`]: real hosts on one machine: network namespaces, CPU quotas, tc links.
//! - [`config`]: the processes' TOML files.

pub mod agent;
pub mod child;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod discovery;
pub mod experiment;
pub mod load;
pub mod metrics;
pub mod testbed;
pub mod worker;
