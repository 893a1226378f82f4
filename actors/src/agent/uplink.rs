//! The **Uplink** actor: the device's emulated uplink (`dyno::link::Shaper`: the trace's
//! rate, delay, loss) and its stall state. Whatever crosses the uplink (activations,
//! probes) asks it when the bytes arrive and waits until then.
use std::time::{Duration, Instant};

use actix::prelude::*;
use dyno::link::Shaper;

use super::control::Upward;

pub(super) struct Uplink {
    start: Instant,
    shaper: Shaper,
    /// After the uplink failed to carry a frame in time: device-only until then.
    stalled_until: Option<Instant>,
    /// To the coordinator: a stall is a (slow) link sample.
    upward: tokio::sync::mpsc::Sender<Upward>,
}

impl Uplink {
    pub fn new(
        start: Instant,
        shaper: Shaper,
        upward: tokio::sync::mpsc::Sender<Upward>,
    ) -> Uplink {
        Uplink {
            start,
            shaper,
            stalled_until: None,
            upward,
        }
    }
}

impl Actor for Uplink {
    type Context = Context<Self>;
}

/// Puts `bytes` on the link: when they arrive, and the seconds they wait behind this
/// device's earlier transfers.
#[derive(Message)]
#[rtype(result = "(Instant, f64)")]
struct Enqueue {
    bytes: usize,
}

impl Handler<Enqueue> for Uplink {
    type Result = MessageResult<Enqueue>;
    fn handle(&mut self, m: Enqueue, _: &mut Self::Context) -> Self::Result {
        let now = self.start.elapsed().as_secs_f64();
        let d = self.shaper.send(now, m.bytes);
        MessageResult((
            self.start + Duration::from_secs_f64(d.arrives),
            d.start - now,
        ))
    }
}

/// The uplink did not carry `bytes` within `waited`: tell the coordinator (a transfer at
/// least that slow, so that its estimate falls) and run device-only for as long again,
/// instead of queueing more frames behind a dead link.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Stalled {
    pub bytes: usize,
    pub waited: Duration,
}

impl Handler<Stalled> for Uplink {
    type Result = ();
    fn handle(&mut self, m: Stalled, _: &mut Self::Context) {
        tracing::info!(
            waited_ms = m.waited.as_millis() as u64,
            "the uplink stalled: device-only for a while"
        );
        let _ = self.upward.try_send(Upward::LinkSample {
            bytes: m.bytes as u64,
            seconds: m.waited.as_secs_f64(),
        });
        self.stalled_until = Some(Instant::now() + m.waited);
    }
}

/// Whether the uplink is in its device-only pause after a stall.
#[derive(Message)]
#[rtype(result = "bool")]
pub(super) struct IsStalled;

impl Handler<IsStalled> for Uplink {
    type Result = bool;
    fn handle(&mut self, _: IsStalled, _: &mut Self::Context) -> bool {
        self.stalled_until.is_some_and(|t| Instant::now() < t)
    }
}

/// Holds `bytes` back as the emulated uplink would: until they have crossed it. Returns
/// the seconds it held them (queueing on the link, serialisation, delay, loss, and the
/// timer's rounding) and, of those, the seconds they waited behind this device's earlier
/// transfers.
pub(super) async fn cross(uplink: &Addr<Uplink>, bytes: usize) -> Result<(f64, f64), String> {
    let t = Instant::now();
    let (at, queued) = uplink
        .send(Enqueue { bytes })
        .await
        .map_err(|e| format!("uplink: {e}"))?;
    tokio::time::sleep_until(at.into()).await;
    Ok((t.elapsed().as_secs_f64(), queued))
}
