//! The session layer: what every process does with a connection around the messages it
//! exchanges. Dialling (connect within [`DIAL_TIMEOUT`], then the handshake), the writer
//! pump (one task owns the sending half; everyone else queues messages for it), and the
//! accept loop (handshake each peer, log and count the refused ones, run a session per
//! peer). Finding the coordinator (mDNS or static addresses) is `dyno_actors::discovery`,
//! on top of [`dial`].
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::frame::{Conn, Sender};
use super::handshake::{accept, connect, Identity};
use super::message::{Message, Role};
use super::WireError;

/// Heartbeats (and a worker's load report) go out this often: the control step's beat
/// (`sched::control::PROBE`), which the simulator's agents keep too.
pub const BEAT: Duration =
    Duration::from_millis((crate::sched::control::PROBE.beat_s * 1e3) as u64);

/// A peer silent this long hangs; it is not merely slow.
pub const SILENCE: Duration = Duration::from_secs(3);

/// How long a TCP connect may take before the peer counts as unreachable.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `addr` within [`DIAL_TIMEOUT`] and shakes hands as `me`.
pub async fn dial(addr: &str, me: &Identity, max_frame: usize) -> Result<Conn, WireError> {
    let stream = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| WireError::Timeout(DIAL_TIMEOUT))??;
    connect(stream, me, max_frame).await
}

/// The most messages a session queues for its peer. A peer that reads nothing while
/// this many wait is cut off (its connection is closed, and it reconnects) instead of
/// the queue growing without a limit.
pub const OUTBOX_CAPACITY: usize = 256;

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Undelivered {
    #[error("the connection is closed")]
    Closed,
    #[error(
        "{OUTBOX_CAPACITY} messages already wait for a peer that reads none: the connection \
         is closed"
    )]
    Full,
}

/// Where a session's outgoing messages are queued, at most [`OUTBOX_CAPACITY`]; the pump
/// writes them in order.
#[derive(Debug, Clone)]
pub struct Outbox {
    queue: mpsc::Sender<Message>,
    /// Ends the pump (and so the connection) when the queue overflows.
    cut: std::sync::Arc<tokio::sync::Notify>,
}

impl Outbox {
    /// An outbox and its queue without a connection (an in-process peer, a test).
    pub fn detached() -> (Outbox, mpsc::Receiver<Message>) {
        let (queue, rx) = mpsc::channel(OUTBOX_CAPACITY);
        let cut = std::sync::Arc::new(tokio::sync::Notify::new());
        (Outbox { queue, cut }, rx)
    }

    /// Whether both queue to the same connection.
    pub fn same_channel(&self, other: &Outbox) -> bool {
        self.queue.same_channel(&other.queue)
    }

    /// Queues `m` without waiting. When the queue is full the connection is closed: the
    /// message, and the peer's session, are lost at once and visibly, not after
    /// memory ran out.
    pub fn send(&self, m: Message) -> Result<(), Undelivered> {
        self.queue.try_send(m).map_err(|e| match e {
            mpsc::error::TrySendError::Closed(_) => Undelivered::Closed,
            mpsc::error::TrySendError::Full(_) => {
                metrics::counter!("dyno_outbox_overflows_total").increment(1);
                self.cut.notify_one();
                Undelivered::Full
            }
        })
    }
}

/// The writer pump: a task that owns `tx` and writes what is queued in the returned
/// [`Outbox`] until the connection fails, the outbox overflows, or every outbox is
/// dropped.
pub fn pump(mut tx: Sender) -> (Outbox, JoinHandle<()>) {
    let (out, mut rx) = Outbox::detached();
    let cut = out.cut.clone();
    let task = tokio::spawn(async move {
        let overflowed = || tracing::warn!("{}", Undelivered::Full);
        loop {
            // An overflow ends the pump even while a write waits on a peer that does not
            // read (a half-written message does not matter: the connection closes).
            let m = tokio::select! {
                m = rx.recv() => m,
                _ = cut.notified() => { overflowed(); None }
            };
            let Some(m) = m else { break };
            let sent = tokio::select! {
                r = tx.send(&m) => r.is_ok(),
                _ = cut.notified() => { overflowed(); false }
            };
            if !sent {
                break;
            }
        }
        // Later sends fail as Closed; dropping the sending half closes our side.
        rx.close();
    });
    (out, task)
}

/// The accept loop of an endpoint named `endpoint` (for logs and
/// `dyno_refused_peers_total`): every peer is handshaken as `me` (only the roles in
/// `admits`), then `session` runs for it on its own task. Runs until the process ends.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    me: Identity,
    max_frame: usize,
    endpoint: &'static str,
    admits: &'static [Role],
    session: F,
) where
    F: Fn(Conn, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let session = std::sync::Arc::new(session);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("{endpoint} endpoint: accept failed: {e}");
                // Out of descriptors, say: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (me, session) = (me.clone(), session.clone());
        tokio::spawn(async move {
            match accept(stream, &me, max_frame, admits).await {
                Ok(conn) => session(conn, peer).await,
                Err(e) => {
                    tracing::warn!(%peer, "{endpoint} endpoint: refused a peer: {e}");
                    metrics::counter!("dyno_refused_peers_total", "endpoint" => endpoint)
                        .increment(1);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Key, DEFAULT_MAX_FRAME};

    fn id(role: Role) -> Identity {
        Identity {
            fleet: "test".into(),
            name: format!("{role:?}"),
            role,
            key: Key::Secret(b"k".to_vec()),
        }
    }

    #[tokio::test]
    async fn a_served_session_echoes_through_the_pump_and_a_dead_port_fails_the_dial() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(serve(
            l,
            id(Role::Worker),
            DEFAULT_MAX_FRAME,
            "test",
            &[Role::Agent],
            |conn, _| async move {
                let (tx, mut rx) = conn.split();
                let (out, _pump) = pump(tx);
                while let Ok(Message::Heartbeat { seq }) = rx.recv().await {
                    let _ = out.send(Message::HeartbeatAck { seq });
                }
            },
        ));
        let mut c = dial(&addr, &id(Role::Agent), DEFAULT_MAX_FRAME)
            .await
            .unwrap();
        for seq in 0..3 {
            c.send(&Message::Heartbeat { seq }).await.unwrap();
            assert_eq!(c.recv().await.unwrap(), Message::HeartbeatAck { seq });
        }
        // Nothing listens on a port just freed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = dial(
            &format!("127.0.0.1:{port}"),
            &id(Role::Agent),
            DEFAULT_MAX_FRAME,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, WireError::Io(_)), "{e}");
    }

    #[tokio::test]
    async fn a_peer_that_reads_nothing_overflows_the_outbox_and_is_cut_off() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (report, outcome) = tokio::sync::oneshot::channel();
        let report = std::sync::Mutex::new(Some(report));
        tokio::spawn(serve(
            l,
            id(Role::Worker),
            DEFAULT_MAX_FRAME,
            "test",
            &[Role::Agent],
            move |conn, _| {
                let report = report.lock().unwrap().take();
                async move {
                    let (tx, _rx) = conn.split();
                    let (out, pump) = pump(tx);
                    // 64 kB messages, far more than the socket buffers and the outbox
                    // hold together.
                    let mut queued = 0usize;
                    let first_error = loop {
                        let m = Message::Probe {
                            seq: queued as u64,
                            padding: vec![0; 64 << 10],
                        };
                        match out.send(m) {
                            Ok(()) => queued += 1,
                            Err(e) => break e,
                        }
                        if queued > 100 * OUTBOX_CAPACITY {
                            break Undelivered::Closed;
                        }
                        tokio::task::yield_now().await;
                    };
                    let ended = tokio::time::timeout(Duration::from_secs(2), pump)
                        .await
                        .is_ok();
                    let after = out.send(Message::Heartbeat { seq: 0 });
                    let _ = report.unwrap().send((queued, first_error, ended, after));
                }
            },
        ));
        // Connected, and never reading.
        let _c = dial(&addr, &id(Role::Agent), DEFAULT_MAX_FRAME)
            .await
            .unwrap();
        let (queued, first_error, ended, after) =
            tokio::time::timeout(Duration::from_secs(10), outcome)
                .await
                .expect("the server's session reports")
                .unwrap();
        assert_eq!(first_error, Undelivered::Full, "after {queued} messages");
        assert!(
            (OUTBOX_CAPACITY..4 * OUTBOX_CAPACITY).contains(&queued),
            "{queued} messages queued before the outbox said full"
        );
        assert!(ended, "the pump still runs after the overflow");
        assert_eq!(after, Err(Undelivered::Closed));
    }
}
