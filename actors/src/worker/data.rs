//! The data endpoint: each agent connection is handshaken, then every `Infer` is
//! answered with `InferOk` or `InferErr` (busy at once when its device is over its
//! onload budget, `admission`). A peer that fails the handshake or sends garbage is
//! dropped with a logged reason.
use std::net::SocketAddr;

use dyno::wire::session::{self, pump};
use dyno::wire::{self, Conn, Identity, Message};
use tokio::net::TcpListener;
use tracing::Instrument;

use super::admission::Admission;
use super::pool::{Pool, TailError};

/// Who may connect to the data endpoint: devices submit work; an observer, a worker or
/// a coordinator may not.
pub const DATA_ADMITS: &[wire::Role] = &[wire::Role::Agent];

/// Serves the data endpoint on `listener` until the process ends: each agent connection
/// is handshaken, then every `Infer` is answered with `InferOk` or `InferErr`. A peer that
/// fails the handshake or sends garbage is dropped with a logged reason.
pub async fn serve_data(
    listener: TcpListener,
    pool: Pool,
    admission: Admission,
    me: Identity,
    max_frame: usize,
) {
    let twice = answer_twice();
    session::serve(
        listener,
        me,
        max_frame,
        "data",
        DATA_ADMITS,
        move |conn, peer| data_session(conn, peer, pool.clone(), admission.clone(), twice),
    )
    .await
}

/// A test-only fault: with `DYNO_TEST_ANSWER_TWICE` set, the worker sends every
/// `InferOk` twice, so that a test can see the agents count the second answers.
fn answer_twice() -> bool {
    let on = std::env::var_os("DYNO_TEST_ANSWER_TWICE").is_some();
    if on {
        tracing::warn!("DYNO_TEST_ANSWER_TWICE is set: every answer is sent twice (a test fault)");
    }
    on
}

async fn data_session(conn: Conn, peer: SocketAddr, pool: Pool, admission: Admission, twice: bool) {
    let name = conn.peer.clone();
    let (tx, mut rx) = conn.split();
    let (out, writer) = pump(tx);
    loop {
        match rx.recv().await {
            Ok(Message::Infer {
                request, packed, ..
            }) => {
                // The budget is the authenticated peer's: the name it shook hands with.
                if let Err(rate) = admission.admit(&name) {
                    let _ = out.send(Message::InferErr {
                        request,
                        busy: true,
                        reason: format!(
                            "{name} is over its onload budget of {rate:.2} frames/s: \
                             finish the frame on the device"
                        ),
                    });
                    continue;
                }
                let (pool, out) = (pool.clone(), out.clone());
                // The frame's span, as the agent names it (device, request).
                let span = tracing::info_span!("frame", device = %name, request);
                tokio::spawn(
                    async move {
                        let m = match pool.run(packed).await {
                            Ok(d) => {
                                metrics::counter!("dyno_worker_inferences_total").increment(1);
                                metrics::histogram!("dyno_worker_batch_frames")
                                    .record(f64::from(d.batch));
                                tracing::debug!(
                                    queue_ms = d.queue_s * 1e3,
                                    tail_ms = (d.unpack_s + d.tail_s) * 1e3,
                                    "tail done"
                                );
                                Message::InferOk {
                                    request,
                                    top1: d.top1,
                                    queue_s: d.queue_s,
                                    unpack_s: d.unpack_s,
                                    tail_s: d.tail_s,
                                    batch: d.batch,
                                }
                            }
                            Err(e) => Message::InferErr {
                                request,
                                busy: matches!(e, TailError::Busy(_)),
                                reason: e.to_string(),
                            },
                        };
                        if twice && matches!(m, Message::InferOk { .. }) {
                            let _ = out.send(m.clone());
                        }
                        let _ = out.send(m);
                    }
                    .instrument(span),
                );
            }
            Ok(Message::Heartbeat { seq }) => {
                let _ = out.send(Message::HeartbeatAck { seq });
            }
            Ok(m) => {
                tracing::warn!(%peer, %name, "data endpoint: dropped a peer that sent {}", m.kind());
                break;
            }
            Err(wire::WireError::Closed) => break,
            Err(e) => {
                tracing::warn!(%peer, %name, "data endpoint: dropped a peer: {e}");
                break;
            }
        }
    }
    drop(out);
    let _ = writer.await;
}
