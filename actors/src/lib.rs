//! # dyno-actors
//!
//! dyno's runtime (DESIGN.md section 3): the Device, CloudWorker, BandwidthMonitor and
//! Scheduler actors (actix), the processes built from them (`dyno coordinator`,
//! `dyno worker`, `dyno agent`) and the `dyno` binary. The actors hold no logic that the
//! `dyno` library's pure modules already have: scheduling is `dyno::sched`, packing
//! `dyno::pack`, the protocol `dyno::wire`, link emulation `dyno::link`.
