//! The transport: the Noise protocol (`Noise_NNpsk0_25519_AESGCM_SHA256`, through the
//! `snow` crate) keyed by the fleet key as the pre-shared key, as WireGuard and libp2p
//! key theirs. The handshake's prologue is the client's hello, so a hello altered on the
//! way (its role, name, fleet or protocol version) fails the handshake; the server's
//! answer carries its own hello, encrypted. After it, every message travels as one or
//! more records of at most 65,535 bytes, each encrypted and authenticated under its own
//! nonce: a record altered, dropped, reordered or replayed fails to open and ends the
//! connection.
//!
//! A message larger than one record is split: the first record's plaintext starts with
//! the message's length (checked against the connection's limit before anything more is
//! buffered), and the records that follow carry the rest.
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use snow::{HandshakeState, StatelessTransportState};

use super::message::{encode, Message, Role};
use super::WireError;

/// The Noise protocol name: NN (ephemeral keys on both sides, forward secrecy) with the
/// fleet key mixed in before the first message (psk0), X25519, AES-256-GCM, SHA-256.
pub const PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// The largest Noise message, and so the largest record on the wire.
pub const RECORD: usize = 65535;
/// The authentication tag of each record.
const TAG: usize = 16;
/// Plaintext per record.
const CHUNK: usize = RECORD - TAG;
/// The first record's plaintext starts with the message's length.
const LENGTH: usize = 4;

/// The pre-shared key of one identity: HMAC-SHA256 under the fleet key of a fixed label,
/// the role and the name. The cloud side (coordinator, workers) holds the fleet key and
/// derives each peer's key from its hello; a device may hold only its own key
/// (`dyno key`), which proves that name and role and no other.
pub fn identity_key(fleet_key: &[u8], role: Role, name: &str) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(fleet_key).expect("HMAC takes any key length");
    mac.update(b"dyno identity key v1\0");
    mac.update(format!("{role:?}").as_bytes());
    mac.update(b"\0");
    mac.update(name.as_bytes());
    mac.finalize().into_bytes().into()
}

/// What both sides mix into the handshake before its first message: the client's hello.
fn prologue(hello: &Message) -> Vec<u8> {
    let mut p = b"dyno/noise/1 ".to_vec();
    p.extend_from_slice(&encode(hello));
    p
}

fn failed(what: &str, e: snow::Error) -> WireError {
    WireError::Auth(format!("{what} ({e})"))
}

/// One side of the handshake in progress.
pub struct Handshake(HandshakeState);

impl Handshake {
    fn new(psk: &[u8; 32], hello: &Message, initiator: bool) -> Result<Handshake, WireError> {
        let params = PATTERN.parse().expect("a valid Noise pattern");
        let prologue = prologue(hello);
        let builder = snow::Builder::new(params)
            .psk(0, psk)
            .and_then(|b| b.prologue(&prologue))
            .map_err(|e| failed("the Noise handshake could not be set up", e))?;
        let state = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        };
        state
            .map(Handshake)
            .map_err(|e| failed("the Noise handshake could not be set up", e))
    }

    /// The client's side, under its identity's key, bound to the hello it sent.
    pub fn initiator(psk: &[u8; 32], hello: &Message) -> Result<Handshake, WireError> {
        Handshake::new(psk, hello, true)
    }

    /// The server's side, under the client's identity key, bound to the hello it
    /// received.
    pub fn responder(psk: &[u8; 32], hello: &Message) -> Result<Handshake, WireError> {
        Handshake::new(psk, hello, false)
    }

    /// The next handshake message, carrying `payload` (encrypted where the pattern can).
    pub fn write(&mut self, payload: &[u8]) -> Result<Vec<u8>, WireError> {
        let mut out = vec![0; RECORD];
        let n = self
            .0
            .write_message(payload, &mut out)
            .map_err(|e| failed("a handshake message could not be written", e))?;
        out.truncate(n);
        Ok(out)
    }

    /// Reads the peer's handshake message; its payload. Fails when the peer does not
    /// hold the fleet key or the hello was altered on the way.
    pub fn read(&mut self, message: &[u8]) -> Result<Vec<u8>, WireError> {
        let mut payload = vec![0; RECORD];
        let n = self.0.read_message(message, &mut payload).map_err(|e| {
            failed(
                "the peer does not know the fleet key, or the hello was altered on the way",
                e,
            )
        })?;
        payload.truncate(n);
        Ok(payload)
    }

    /// The transport's two directions, once the handshake is done.
    pub fn finish(self, max_message: usize) -> Result<(Seal, Open), WireError> {
        let state = Arc::new(
            self.0
                .into_stateless_transport_mode()
                .map_err(|e| failed("the handshake did not finish", e))?,
        );
        Ok((
            Seal {
                state: state.clone(),
                nonce: 0,
            },
            Open {
                state,
                nonce: 0,
                max_message,
                message: BytesMut::new(),
                want: None,
            },
        ))
    }
}

/// The sending direction: encrypts each message into records.
pub struct Seal {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Seal {
    /// `message` as records, in order, each at most [`RECORD`] bytes.
    pub fn seal(&mut self, message: &[u8]) -> Result<Vec<Bytes>, WireError> {
        let total = u32::try_from(message.len())
            .map_err(|_| WireError::Garbage(format!("a {}-byte message", message.len())))?;
        // The first record carries the length and the start of the message; the rest are
        // sealed straight from the message.
        let head = message.len().min(CHUNK - LENGTH);
        let mut first = Vec::with_capacity(LENGTH + head);
        first.extend_from_slice(&total.to_be_bytes());
        first.extend_from_slice(&message[..head]);
        let rest = message[head..].chunks(CHUNK);
        let records = 1 + rest.len();
        let mut out = BytesMut::zeroed(LENGTH + message.len() + records * TAG);
        let mut sealed = Vec::with_capacity(records);
        for chunk in std::iter::once(&first[..]).chain(rest) {
            let mut record = out.split_to(chunk.len() + TAG);
            self.state
                .write_message(self.nonce, chunk, &mut record)
                .map_err(|e| failed("a record could not be sealed", e))?;
            self.nonce += 1;
            sealed.push(record.freeze());
        }
        Ok(sealed)
    }
}

/// The receiving direction: opens records and joins them into messages.
pub struct Open {
    state: Arc<StatelessTransportState>,
    nonce: u64,
    max_message: usize,
    message: BytesMut,
    /// The length of the message being joined, once its first record is in.
    want: Option<usize>,
}

impl Open {
    /// Opens one record; the message, once its last record is in.
    pub fn open(&mut self, record: &[u8]) -> Result<Option<Bytes>, WireError> {
        if record.len() < TAG || record.len() > RECORD {
            return Err(WireError::Garbage(format!(
                "a {}-byte record (at least {TAG}, at most {RECORD})",
                record.len()
            )));
        }
        // Opened straight into the message being joined (its length prefix first).
        let start = self.message.len();
        self.message.resize(start + record.len() - TAG, 0);
        let n = self
            .state
            .read_message(self.nonce, record, &mut self.message[start..])
            .map_err(|e| {
                self.message.truncate(start);
                failed(
                    "a record failed authentication: altered, replayed or reordered on the \
                     way, or not from the peer that shook hands",
                    e,
                )
            })?;
        self.nonce += 1;
        self.message.truncate(start + n);
        let want = match self.want {
            Some(w) => w,
            None => {
                if self.message.len() < LENGTH {
                    return Err(WireError::Garbage(
                        "a first record without its length".into(),
                    ));
                }
                let w = u32::from_be_bytes(self.message[..LENGTH].try_into().expect("4 bytes"))
                    as usize;
                if w > self.max_message {
                    return Err(WireError::Garbage(format!(
                        "a {w}-byte message, over this connection's limit of {} bytes \
                         (`[fleet] max_frame`)",
                        self.max_message
                    )));
                }
                self.message
                    .reserve(LENGTH + w - self.message.len().min(LENGTH + w));
                self.want = Some(w);
                w
            }
        };
        match self.message.len().cmp(&(LENGTH + want)) {
            std::cmp::Ordering::Less => Ok(None),
            std::cmp::Ordering::Greater => Err(WireError::Garbage(format!(
                "records that carry more than their message's {want} bytes"
            ))),
            std::cmp::Ordering::Equal => {
                self.want = None;
                let mut m = self.message.split();
                let _ = m.split_to(LENGTH);
                Ok(Some(m.freeze()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Role;

    fn hello(name: &str) -> Message {
        Message::Hello {
            version: crate::wire::PROTOCOL_VERSION,
            role: Role::Agent,
            fleet: "f".into(),
            name: name.into(),
            insecure: false,
        }
    }

    type Directions = (Seal, Open);

    fn shake(
        client_key: &[u8],
        server_key: &[u8],
        sent: &Message,
        got: &Message,
    ) -> Result<(Directions, Directions), WireError> {
        let mut c = Handshake::initiator(&identity_key(client_key, Role::Agent, "cam"), sent)?;
        let mut s = Handshake::responder(&identity_key(server_key, Role::Agent, "cam"), got)?;
        let m1 = c.write(&[])?;
        s.read(&m1)?;
        let m2 = s.write(b"server hello")?;
        assert_eq!(c.read(&m2)?, b"server hello");
        Ok((c.finish(1 << 20)?, s.finish(1 << 20)?))
    }

    #[test]
    fn messages_of_any_size_cross_and_a_flipped_byte_or_a_replay_does_not() {
        let h = hello("cam");
        let ((mut cs, _), (_, mut so)) = shake(b"key", b"key", &h, &h).unwrap();
        for len in [
            1,
            CHUNK - LENGTH,
            CHUNK - LENGTH + 1,
            3 * CHUNK + 7,
            100_000,
        ] {
            let m: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let records = cs.seal(&m).unwrap();
            assert_eq!(records.len(), (len + LENGTH).div_ceil(CHUNK), "{len}");
            assert!(records.iter().all(|r| r.len() <= RECORD));
            let mut got = None;
            for (i, r) in records.iter().enumerate() {
                got = so.open(r).unwrap();
                assert_eq!(got.is_some(), i + 1 == records.len());
            }
            assert_eq!(got.unwrap(), m);
        }
        // A flipped byte.
        let mut r = cs.seal(b"frame").unwrap().remove(0).to_vec();
        r[3] ^= 1;
        assert!(matches!(so.open(&r), Err(WireError::Auth(_))));
        // A replayed record (its nonce is behind the receiver's).
        let ((mut cs, _), (_, mut so)) = shake(b"key", b"key", &h, &h).unwrap();
        let r = cs.seal(b"frame").unwrap().remove(0);
        assert!(so.open(&r).unwrap().is_some());
        assert!(matches!(so.open(&r), Err(WireError::Auth(_))));
        // A message claiming more than the limit is refused on its first record.
        let big = vec![0u8; (1 << 20) + 1];
        let first = cs.seal(&big).unwrap().remove(0);
        assert!(so
            .open(&first)
            .unwrap_err()
            .to_string()
            .contains("over this connection's limit"));
    }

    #[test]
    fn a_wrong_key_or_an_altered_hello_fails_the_handshake() {
        let h = hello("cam");
        assert!(matches!(
            shake(b"key", b"other", &h, &h),
            Err(WireError::Auth(_))
        ));
        assert!(matches!(
            shake(b"key", b"key", &h, &hello("cam2")),
            Err(WireError::Auth(_))
        ));
        assert!(shake(b"key", b"key", &h, &h).is_ok());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Any message crosses whole, in as many records as its size needs.
            #[test]
            fn any_message_crosses_whole(len in 0usize..200_000, seed in any::<u8>()) {
                let h = hello("cam");
                let ((mut cs, _), (_, mut so)) = shake(b"key", b"key", &h, &h).unwrap();
                let m: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
                let mut got = None;
                for r in cs.seal(&m).unwrap() {
                    prop_assert!(got.is_none(), "a message ended before its last record");
                    got = so.open(&r).unwrap();
                }
                prop_assert_eq!(got.unwrap(), m);
            }

            /// Bytes from outside, as records: an error, never a panic or a message.
            #[test]
            fn garbage_records_are_refused(records in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..70_000), 1..4)) {
                let h = hello("cam");
                let (_, (_, mut so)) = shake(b"key", b"key", &h, &h).unwrap();
                for r in &records {
                    prop_assert!(so.open(r).is_err());
                }
            }
        }
    }
}
