//! Frames: a 4-byte big-endian length, then one encoded [`Message`]; a length over the
//! limit is refused before the payload is buffered. On a secured connection each frame
//! is a Noise record instead (`noise.rs`), and a message is one record or more.
use std::fmt;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::message::{decode, encode, Message, Role};
use super::noise::{Open, Seal, RECORD};
use super::WireError;

/// A framed, handshaken connection.
pub struct Conn {
    pub(super) framed: Framed<TcpStream, LengthDelimitedCodec>,
    /// The transport's two directions (none on an `--insecure` connection).
    pub(super) seal: Option<Seal>,
    pub(super) open: Option<Open>,
    /// The peer's name and role, from its authenticated hello.
    pub peer: String,
    pub role: Role,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("role", &self.role)
            .field("encrypted", &self.seal.is_some())
            .finish()
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

async fn send_on<S>(sink: &mut S, seal: &mut Option<Seal>, m: &Message) -> Result<(), WireError>
where
    S: Sink<Bytes, Error = std::io::Error> + Unpin,
{
    let plain = encode(m);
    match seal {
        None => sink.send(plain).await.map_err(frame_err),
        Some(seal) => {
            for record in seal.seal(&plain)? {
                sink.feed(record).await.map_err(frame_err)?;
            }
            sink.flush().await.map_err(frame_err)
        }
    }
}

async fn recv_on<S>(stream: &mut S, open: &mut Option<Open>) -> Result<Message, WireError>
where
    S: Stream<Item = Result<BytesMut, std::io::Error>> + Unpin,
{
    loop {
        let frame = match stream.next().await {
            None => return Err(WireError::Closed),
            Some(Err(e)) => return Err(frame_err(e)),
            Some(Ok(buf)) => buf,
        };
        match open {
            None => return decode(&frame),
            Some(open) => {
                if let Some(message) = open.open(&frame)? {
                    return decode(&message);
                }
            }
        }
    }
}

impl Conn {
    pub(super) fn new(stream: TcpStream, max_frame: usize) -> Conn {
        Conn {
            framed: Framed::new(stream, codec(max_frame)),
            seal: None,
            open: None,
            peer: String::new(),
            role: Role::Observer,
        }
    }

    /// From here on every message is sealed; each frame is one record.
    pub(super) fn encrypt(&mut self, (seal, open): (Seal, Open)) {
        self.framed.codec_mut().set_max_frame_length(RECORD);
        self.seal = Some(seal);
        self.open = Some(open);
    }

    /// Whether the connection is encrypted (not `--insecure`).
    pub fn encrypted(&self) -> bool {
        self.seal.is_some()
    }

    pub async fn send(&mut self, m: &Message) -> Result<(), WireError> {
        send_on(&mut self.framed, &mut self.seal, m).await
    }

    pub async fn recv(&mut self) -> Result<Message, WireError> {
        recv_on(&mut self.framed, &mut self.open).await
    }

    /// Splits into a sending and a receiving half.
    pub fn split(self) -> (Sender, Receiver) {
        let (sink, stream) = self.framed.split();
        (
            Sender {
                sink,
                seal: self.seal,
            },
            Receiver {
                stream,
                open: self.open,
            },
        )
    }
}

type FramedTcp = Framed<TcpStream, LengthDelimitedCodec>;

pub struct Sender {
    sink: futures_util::stream::SplitSink<FramedTcp, Bytes>,
    seal: Option<Seal>,
}

pub struct Receiver {
    stream: futures_util::stream::SplitStream<FramedTcp>,
    open: Option<Open>,
}

impl Sender {
    pub async fn send(&mut self, m: &Message) -> Result<(), WireError> {
        send_on(&mut self.sink, &mut self.seal, m).await
    }
}

impl Receiver {
    pub async fn recv(&mut self) -> Result<Message, WireError> {
        recv_on(&mut self.stream, &mut self.open).await
    }
}
