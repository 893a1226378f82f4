//! The handshake. The client says hello in the clear (its protocol version, role, name
//! and fleet, and whether it runs `--insecure`); the server checks the version, the fleet
//! and the mode. With a fleet key both then run the Noise handshake (`noise.rs`): the
//! client's first message proves it holds the key, and is bound to its hello (a hello
//! altered on the way fails); the server's answer proves the server holds it and carries
//! the server's own hello, encrypted. The client's first encrypted message, `Confirm`,
//! proves it holds this session's keys: a recorded handshake played again stops there.
//! From then on every message is encrypted and authenticated. The key never travels.
//! Without a key both sides must have said `--insecure`: a secured peer refuses an
//! insecure one, and nothing is encrypted.
use std::fmt;

use tokio::net::TcpStream;

use super::frame::Conn;
use super::message::{decode, encode, Message, Role};
use super::noise::{identity_key, Handshake};
use super::{WireError, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION};

/// The fleet's shared secret, or the explicit choice to run without one.
#[derive(Clone, PartialEq, Eq)]
pub enum Key {
    /// The fleet key: the cloud side's, and any client's that may take any name.
    Secret(Vec<u8>),
    /// One identity's key (a role and a name), derived from the fleet key by `dyno key`:
    /// it proves that identity and no other.
    Own([u8; 32]),
    /// `--insecure`: for local experiments only.
    Insecure,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Secret(_) => f.write_str("Key::Secret(..)"),
            Key::Own(_) => f.write_str("Key::Own(..)"),
            Key::Insecure => f.write_str("Key::Insecure"),
        }
    }
}

/// Who we are in a handshake.
#[derive(Debug, Clone)]
pub struct Identity {
    pub fleet: String,
    pub name: String,
    pub role: Role,
    pub key: Key,
}

impl Identity {
    /// What this side says first.
    pub fn hello(&self) -> Message {
        Message::Hello {
            version: PROTOCOL_VERSION,
            role: self.role,
            fleet: self.fleet.clone(),
            name: self.name.clone(),
            insecure: self.key == Key::Insecure,
        }
    }
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, WireError>>,
) -> Result<T, WireError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, f)
        .await
        .map_err(|_| WireError::Timeout(HANDSHAKE_TIMEOUT))?
}

/// The peer's answer, `want`ed, or why there is none.
fn expect(got: Message, want: &'static str) -> Result<Message, WireError> {
    match got {
        Message::Refused { reason } => Err(WireError::Refused(reason)),
        m if m.kind() == want => Ok(m),
        m => Err(WireError::Unexpected {
            want,
            got: m.kind(),
        }),
    }
}

/// The handshake, client side: connects `stream` as `me`. The returned connection names
/// the server (its role and name, authenticated when a key is used).
pub async fn connect(
    stream: TcpStream,
    me: &Identity,
    max_frame: usize,
) -> Result<Conn, WireError> {
    stream.set_nodelay(true)?;
    let mut c = Conn::new(stream, max_frame);
    let hello = me.hello();
    c.send(&hello).await?;
    let psk = match &me.key {
        Key::Secret(k) => Some(identity_key(k, me.role, &me.name)),
        Key::Own(k) => Some(*k),
        Key::Insecure => None,
    };
    if let Some(psk) = psk {
        let mut noise = Handshake::initiator(&psk, &hello)?;
        c.send(&Message::Handshake {
            noise: noise.write(&[])?,
        })
        .await?;
        let Message::Handshake { noise: answer } = expect(timed(c.recv()).await?, "Handshake")?
        else {
            unreachable!("expect checked the kind")
        };
        let theirs = noise.read(&answer).map_err(|_| {
            WireError::Auth(
                "the server does not know the fleet key (wrong key, or not our fleet)".into(),
            )
        })?;
        if let Message::Hello { role, name, .. } = decode(&theirs)? {
            c.peer = name;
            c.role = role;
        }
        c.encrypt(noise.finish(max_frame)?);
        c.send(&Message::Confirm).await?;
    }
    expect(timed(c.recv()).await?, "Welcome").map(|_| c)
}

/// Tells the peer why it is refused (if it still listens); returns the reason.
async fn refuse(c: &mut Conn, reason: String) -> String {
    let _ = c
        .send(&Message::Refused {
            reason: reason.clone(),
        })
        .await;
    reason
}

/// The handshake, server side: accepts `stream` for `me`; on failure the peer is told why
/// (when it can be) and the error says it for the log.
/// Only the roles in `admits` get past the hello.
pub async fn accept(
    stream: TcpStream,
    me: &Identity,
    max_frame: usize,
    admits: &[Role],
) -> Result<Conn, WireError> {
    stream.set_nodelay(true)?;
    let mut c = Conn::new(stream, max_frame);
    let hello = timed(c.recv()).await?;
    let Message::Hello {
        version,
        role,
        fleet,
        name,
        insecure,
    } = hello.clone()
    else {
        return Err(WireError::Unexpected {
            want: "Hello",
            got: hello.kind(),
        });
    };
    if version != PROTOCOL_VERSION {
        let e = WireError::Version {
            got: version,
            want: PROTOCOL_VERSION,
        };
        refuse(&mut c, e.to_string()).await;
        return Err(e);
    }
    if fleet != me.fleet {
        let r = format!("fleet `{fleet}` is not this fleet (`{}`)", me.fleet);
        return Err(WireError::Auth(refuse(&mut c, r).await));
    }
    if !admits.contains(&role) {
        let r =
            format!("`{name}` ({role:?}) may not connect here: this endpoint admits {admits:?}");
        return Err(WireError::Auth(refuse(&mut c, r).await));
    }
    let secured = me.key != Key::Insecure;
    if secured == insecure {
        let r = if secured {
            "this fleet requires the fleet key; the peer runs --insecure".to_string()
        } else {
            "this side runs --insecure; the peer has a fleet key: both must agree".to_string()
        };
        return Err(WireError::Auth(refuse(&mut c, r).await));
    }
    if me.key != Key::Insecure {
        let Key::Secret(k) = &me.key else {
            let r = "this server holds one identity's key, not the fleet key: a coordinator \
                     or a worker needs the fleet key";
            return Err(WireError::Auth(refuse(&mut c, r.into()).await));
        };
        let Message::Handshake { noise: first } = expect(timed(c.recv()).await?, "Handshake")?
        else {
            unreachable!("expect checked the kind")
        };
        let mut noise = Handshake::responder(&identity_key(k, role, &name), &hello)?;
        if noise.read(&first).is_err() {
            let r = format!(
                "`{name}` ({role:?}) does not hold the fleet key or its own identity's key, \
                 or its hello was altered on the way"
            );
            return Err(WireError::Auth(refuse(&mut c, r).await));
        }
        let answer = noise.write(&encode(&me.hello()))?;
        c.send(&Message::Handshake { noise: answer }).await?;
        c.encrypt(noise.finish(max_frame)?);
        match timed(c.recv()).await {
            Ok(Message::Confirm) => {}
            Ok(m) => {
                return Err(WireError::Unexpected {
                    want: "Confirm",
                    got: m.kind(),
                })
            }
            Err(WireError::Auth(_)) => {
                return Err(WireError::Auth(format!(
                    "`{name}` did not prove it holds this session's keys: a replayed or \
                     altered handshake"
                )))
            }
            Err(e) => return Err(e),
        }
    }
    c.send(&Message::Welcome).await?;
    c.peer = name;
    c.role = role;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::{decode, encode};
    use crate::wire::{DEFAULT_MAX_FRAME, FRAME_LIMIT};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    const ALL: &[Role] = &[Role::Agent, Role::Worker, Role::Coordinator, Role::Observer];

    fn id(role: Role, key: Key) -> Identity {
        Identity {
            fleet: "test".into(),
            name: format!("{role:?}"),
            role,
            key,
        }
    }

    async fn pair(
        server: Identity,
        client: Identity,
    ) -> (Result<Conn, WireError>, Result<Conn, WireError>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let s = tokio::spawn(async move {
            let (t, _) = l.accept().await.unwrap();
            accept(t, &server, DEFAULT_MAX_FRAME, ALL).await
        });
        let c = connect(
            TcpStream::connect(addr).await.unwrap(),
            &client,
            DEFAULT_MAX_FRAME,
        )
        .await;
        (s.await.unwrap(), c)
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let m = Message::Infer {
            request: 7,
            device: "cam".into(),
            packed: vec![1, 2, 3],
        };
        assert_eq!(decode(&encode(&m)).unwrap(), m);
        assert!(matches!(
            decode(b"\xff\xff\xff\xff garbage"),
            Err(WireError::Garbage(_))
        ));
        let mut extra = encode(&m).to_vec();
        extra.push(0);
        assert!(matches!(decode(&extra), Err(WireError::Garbage(_))));
        // A length prefix inside the payload that claims more than there is: an error,
        // not an allocation.
        let mut huge = encode(&m).to_vec();
        huge.truncate(4);
        huge.extend_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0x7f]);
        assert!(decode(&huge).is_err());
        // Found by fuzz/wire: a Plan whose precision's name claims 2^60 bytes panicked
        // (capacity overflow) before the limit; any claim past FRAME_LIMIT is refused.
        let crash = b"\x08\x00\xfd\x0a\x0e\x00\x00\x00\x00\xfd\xfd";
        let e = decode(crash).unwrap_err().to_string().to_lowercase();
        assert!(e.contains("limitexceeded"), "{e}");
        let mut claim = vec![0x08, 0x00, 0xfd];
        claim.extend_from_slice(&((FRAME_LIMIT as u64) + 1).to_le_bytes());
        let e = decode(&claim).unwrap_err().to_string().to_lowercase();
        assert!(e.contains("limitexceeded"), "{e}");
    }

    #[tokio::test]
    async fn a_peer_that_says_nothing_is_dropped_after_the_handshake_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (t, _) = l.accept().await.unwrap();
        let me = id(Role::Observer, Key::Insecure);
        let started = std::time::Instant::now();
        let r = accept(t, &me, DEFAULT_MAX_FRAME, ALL).await;
        assert!(matches!(r, Err(WireError::Timeout(d)) if d == HANDSHAKE_TIMEOUT));
        let waited = started.elapsed();
        assert!(
            waited >= HANDSHAKE_TIMEOUT && waited < HANDSHAKE_TIMEOUT * 2,
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn the_same_key_shakes_hands() {
        let k = Key::Secret(b"s3cret".to_vec());
        let (s, c) = pair(id(Role::Worker, k.clone()), id(Role::Agent, k)).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.role, Role::Agent);
        c.send(&Message::Heartbeat { seq: 3 }).await.unwrap();
        assert_eq!(s.recv().await.unwrap(), Message::Heartbeat { seq: 3 });
        let (i, o) = pair(
            id(Role::Worker, Key::Insecure),
            id(Role::Agent, Key::Insecure),
        )
        .await;
        assert!(i.is_ok() && o.is_ok());
    }

    #[tokio::test]
    async fn a_wrong_key_or_fleet_or_mode_is_refused_both_ways() {
        let good = Key::Secret(b"right".to_vec());
        let bad = Key::Secret(b"wrong".to_vec());
        let (s, c) = pair(id(Role::Worker, good.clone()), id(Role::Agent, bad.clone())).await;
        assert!(matches!(s, Err(WireError::Auth(_))), "{s:?}");
        assert!(
            matches!(&c, Err(WireError::Refused(r)) if r.contains("fleet key")),
            "{c:?}"
        );
        let (s, _) = pair(
            id(Role::Worker, good.clone()),
            id(Role::Agent, Key::Insecure),
        )
        .await;
        assert!(s
            .unwrap_err()
            .to_string()
            .contains("requires the fleet key"));
        let mut other = id(Role::Agent, good.clone());
        other.fleet = "other".into();
        let (s, c) = pair(id(Role::Worker, good), other).await;
        assert!(s.unwrap_err().to_string().contains("fleet `other`"));
        assert!(matches!(c, Err(WireError::Refused(_))));
    }

    /// A client's side of the connection, recorded on the way to the server.
    async fn recorded_session(key: &Key) -> (Vec<u8>, Conn) {
        use tokio::io::AsyncReadExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, via) = (l.local_addr().unwrap(), proxy.local_addr().unwrap());
        let server = id(Role::Worker, key.clone());
        let s = tokio::spawn(async move {
            let (t, _) = l.accept().await.unwrap();
            accept(t, &server, DEFAULT_MAX_FRAME, ALL).await
        });
        let tap = tokio::spawn(async move {
            let (client, _) = proxy.accept().await.unwrap();
            let upstream = TcpStream::connect(addr).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut ur, &mut cw).await });
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        seen.extend_from_slice(&buf[..n]);
                        if uw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            seen
        });
        let mut c = connect(
            TcpStream::connect(via).await.unwrap(),
            &id(Role::Agent, key.clone()),
            DEFAULT_MAX_FRAME,
        )
        .await
        .unwrap();
        let mut s = s.await.unwrap().unwrap();
        c.send(&Message::Heartbeat { seq: 1 }).await.unwrap();
        assert_eq!(s.recv().await.unwrap(), Message::Heartbeat { seq: 1 });
        drop(c);
        (tap.await.unwrap(), s)
    }

    #[tokio::test]
    async fn a_replayed_handshake_is_refused_and_nothing_after_the_hello_travels_in_the_clear() {
        let key = Key::Secret(b"s3cret".to_vec());
        let (seen, s) = recorded_session(&key).await;
        assert!(s.encrypted());
        // The heartbeat's encoding does not appear in what crossed the wire; the hello does.
        let beat = encode(&Message::Heartbeat { seq: 1 });
        assert!(!seen.windows(beat.len()).any(|w| w == &beat[..]));
        let hello = encode(&id(Role::Agent, key.clone()).hello());
        assert!(seen.windows(hello.len()).any(|w| w == &hello[..]));
        // Everything the client sent, played again to a fresh server.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = id(Role::Worker, key);
        let s = tokio::spawn(async move {
            let (t, _) = l.accept().await.unwrap();
            accept(t, &server, DEFAULT_MAX_FRAME, ALL).await
        });
        let mut replay = TcpStream::connect(addr).await.unwrap();
        replay.write_all(&seen).await.unwrap();
        let e = s.await.unwrap().unwrap_err().to_string();
        assert!(e.contains("replayed"), "{e}");
    }

    #[tokio::test]
    async fn a_byte_flipped_on_the_way_ends_the_connection() {
        let k = Key::Secret(b"s3cret".to_vec());
        let (s, c) = pair(id(Role::Worker, k.clone()), id(Role::Agent, k)).await;
        let (mut s, c) = (s.unwrap(), c.unwrap());
        // Write a sealed record by hand with one byte flipped after the length prefix.
        let Conn {
            mut framed,
            mut seal,
            ..
        } = c;
        let mut record = seal
            .as_mut()
            .unwrap()
            .seal(&encode(&Message::Heartbeat { seq: 9 }))
            .unwrap()
            .remove(0)
            .to_vec();
        record[10] ^= 0x20;
        use futures_util::SinkExt;
        framed.send(bytes::Bytes::from(record)).await.unwrap();
        let e = s.recv().await.unwrap_err();
        assert!(matches!(e, WireError::Auth(_)), "{e}");
    }

    #[tokio::test]
    async fn a_wrong_version_garbage_and_oversized_frames_are_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let me = id(Role::Worker, Key::Insecure);
            let mut out = Vec::new();
            for _ in 0..3 {
                let (t, _) = l.accept().await.unwrap();
                out.push(accept(t, &me, 1024, ALL).await.unwrap_err().to_string());
            }
            out
        });
        // A wrong version.
        let mut t = TcpStream::connect(addr).await.unwrap();
        let hello = encode(&Message::Hello {
            version: 99,
            role: Role::Agent,
            fleet: "test".into(),
            name: "old".into(),
            insecure: true,
        });
        t.write_all(&(hello.len() as u32).to_be_bytes())
            .await
            .unwrap();
        t.write_all(&hello).await.unwrap();
        // Garbage.
        let mut g = TcpStream::connect(addr).await.unwrap();
        g.write_all(b"\x00\x00\x00\x05hello").await.unwrap();
        // A frame claiming 1 GB.
        let mut o = TcpStream::connect(addr).await.unwrap();
        o.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        let errs = server.await.unwrap();
        assert!(errs[0].contains("protocol version 99"), "{}", errs[0]);
        assert!(errs[1].contains("does not decode"), "{}", errs[1]);
        assert!(
            errs[2].contains("frame size too big") || errs[2].contains("max"),
            "{}",
            errs[2]
        );
    }
}
