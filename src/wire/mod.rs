//! The wire protocol and the session layer every process speaks.
//!
//! - [`message`]: every [`Message`] and its bincode 2 encoding (serde).
//! - [`frame`]: length-delimited frames with a size limit (tokio-util's codec), [`Conn`].
//! - [`handshake`]: the hello, then the Noise handshake under the fleet key.
//! - [`noise`]: the encrypted transport (Noise NNpsk0 through `snow`), records and their joining.
//! - [`session`]: dialling with a timeout, the writer pump, the accept loop.
use std::time::Duration;

pub mod frame;
pub mod handshake;
pub mod message;
pub mod noise;
pub mod session;

pub use frame::{codec, Conn, Receiver, Sender};
pub use handshake::{accept, connect, Identity, Key};
pub use message::{
    decode, encode, Assignment, DeviceBudget, DeviceInfo, DeviceStatus, FleetStatus, FrameReport,
    Message, Role, Stages, WorkerStatus,
};

/// Bumped on any incompatible change of [`Message`].
pub const PROTOCOL_VERSION: u16 = 6;
/// No frame may be larger, whatever a config says: the decoder refuses a length field
/// (of a string or a byte vector) claiming more than this before it allocates.
pub const FRAME_LIMIT: usize = 64 << 20;
/// Largest frame accepted by default, the limit itself (an fp32 ResNet-50 input is
/// 0.6 MB); `[fleet] max_frame` may lower it.
pub const DEFAULT_MAX_FRAME: usize = FRAME_LIMIT;
/// How long a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong on a connection; each names the peer's fault or ours.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("a frame that does not decode as a dyno message ({0}): not a dyno peer, or another protocol version")]
    Garbage(String),
    #[error(
        "protocol version {got} where {want} is spoken: run the same dyno release on both sides"
    )]
    Version { got: u16, want: u16 },
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("refused by the peer: {0}")]
    Refused(String),
    #[error("expected {want}, got {got}")]
    Unexpected {
        want: &'static str,
        got: &'static str,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}
