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
use super::message::Message;
use super::WireError;

/// How long a TCP connect may take before the peer counts as unreachable.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `addr` within [`DIAL_TIMEOUT`] and shakes hands as `me`.
pub async fn dial(addr: &str, me: &Identity, max_frame: usize) -> Result<Conn, WireError> {
    let stream = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| WireError::Timeout(DIAL_TIMEOUT))??;
    connect(stream, me, max_frame).await
}

/// Where a session's outgoing messages are queued; the pump writes them in order.
pub type Outbox = mpsc::UnboundedSender<Message>;

/// The writer pump: a task that owns `tx` and writes what is queued in the returned
/// [`Outbox`] until the connection fails or every outbox is dropped.
pub fn pump(mut tx: Sender) -> (Outbox, JoinHandle<()>) {
    let (out, mut queue) = mpsc::unbounded_channel::<Message>();
    let task = tokio::spawn(async move {
        while let Some(m) = queue.recv().await {
            if tx.send(&m).await.is_err() {
                break;
            }
        }
    });
    (out, task)
}

/// The accept loop of an endpoint named `endpoint` (for logs and
/// `dyno_refused_peers_total`): every peer is handshaken as `me`, then `session` runs
/// for it on its own task. Runs until the process ends.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    me: Identity,
    max_frame: usize,
    endpoint: &'static str,
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
            match accept(stream, &me, max_frame).await {
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
    use crate::wire::{Key, Role, DEFAULT_MAX_FRAME};

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
}
