//! Frames: a 4-byte big-endian length, then one encoded [`Message`]; a length over the
//! limit is refused before the payload is buffered.
use std::fmt;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::message::{decode, encode, Message, Role};
use super::WireError;

/// A framed, handshaken connection.
pub struct Conn {
    pub(super) framed: Framed<TcpStream, LengthDelimitedCodec>,
    /// The peer's name and role, from its hello (clients see the server as `Observer`).
    pub peer: String,
    pub role: Role,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn").field("peer", &self.peer).finish()
    }
}

/// The length-delimited codec: a 4-byte big-endian length, checked against `max_frame`
/// before the payload is buffered.
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec()
}

fn frame_err(e: std::io::Error) -> WireError {
    // tokio-util reports an oversized frame as InvalidData before reading it.
    if e.kind() == std::io::ErrorKind::InvalidData {
        WireError::Garbage(e.to_string())
    } else {
        WireError::Io(e)
    }
}

impl Conn {
    pub async fn send(&mut self, m: &Message) -> Result<(), WireError> {
        self.framed.send(encode(m)).await.map_err(frame_err)
    }

    pub async fn recv(&mut self) -> Result<Message, WireError> {
        match self.framed.next().await {
            None => Err(WireError::Closed),
            Some(Err(e)) => Err(frame_err(e)),
            Some(Ok(buf)) => decode(&buf),
        }
    }

    /// Splits into a sending and a receiving half.
    pub fn split(self) -> (Sender, Receiver) {
        let (sink, stream) = self.framed.split();
        (Sender { sink }, Receiver { stream })
    }
}

type Sink = futures_util::stream::SplitSink<Framed<TcpStream, LengthDelimitedCodec>, bytes::Bytes>;
type Stream = futures_util::stream::SplitStream<Framed<TcpStream, LengthDelimitedCodec>>;

pub struct Sender {
    sink: Sink,
}

pub struct Receiver {
    stream: Stream,
}

impl Sender {
    pub async fn send(&mut self, m: &Message) -> Result<(), WireError> {
        self.sink.send(encode(m)).await.map_err(frame_err)
    }
}

impl Receiver {
    pub async fn recv(&mut self) -> Result<Message, WireError> {
        match self.stream.next().await {
            None => Err(WireError::Closed),
            Some(Err(e)) => Err(frame_err(e)),
            Some(Ok(buf)) => decode(&buf),
        }
    }
}
