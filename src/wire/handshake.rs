//! The handshake: the client says hello (its protocol version, role, fleet and a random
//! nonce); the server answers with its own nonce and an HMAC-SHA256 proof over both nonces
//! under the fleet key; the client checks it and answers with its own proof; the server
//! checks that and welcomes it. The key never travels. Without a key both sides must
//! have said `--insecure`: a secured peer refuses an insecure one.
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::frame::{codec, Conn};
use super::message::{Message, Role};
use super::{WireError, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION};

/// The fleet's shared secret, or the explicit choice to run without one.
#[derive(Clone, PartialEq, Eq)]
pub enum Key {
    Secret(Vec<u8>),
    /// `--insecure`: for local experiments only.
    Insecure,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Secret(_) => f.write_str("Key::Secret(..)"),
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

fn proof(key: &[u8], label: &[u8], a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(label);
    mac.update(a);
    mac.update(b);
    mac.finalize().into_bytes().into()
}

fn verify(key: &[u8], label: &[u8], a: &[u8; 32], b: &[u8; 32], got: &[u8; 32]) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(label);
    mac.update(a);
    mac.update(b);
    mac.verify_slice(got).is_ok() // constant time
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, WireError>>,
) -> Result<T, WireError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, f)
        .await
        .map_err(|_| WireError::Timeout(HANDSHAKE_TIMEOUT))?
}

/// The handshake, client side: connects `stream` as `me`.
pub async fn connect(
    stream: TcpStream,
    me: &Identity,
    max_frame: usize,
) -> Result<Conn, WireError> {
    stream.set_nodelay(true)?;
    let mut c = Conn {
        framed: Framed::new(stream, codec(max_frame)),
        peer: String::new(),
        role: Role::Observer,
    };
    let mine: [u8; 32] = rand::random();
    c.send(&Message::Hello {
        version: PROTOCOL_VERSION,
        role: me.role,
        fleet: me.fleet.clone(),
        name: me.name.clone(),
        nonce: mine,
        insecure: me.key == Key::Insecure,
    })
    .await?;
    let (theirs, server_proof) = match timed(c.recv()).await? {
        Message::Challenge { nonce, proof } => (nonce, proof),
        Message::Refused { reason } => return Err(WireError::Refused(reason)),
        m => {
            return Err(WireError::Unexpected {
                want: "Challenge",
                got: m.kind(),
            })
        }
    };
    let my_proof = match &me.key {
        Key::Secret(k) => {
            if !verify(k, b"dyno server", &mine, &theirs, &server_proof) {
                let r = "the server does not know the fleet key (wrong key, or not our fleet)";
                return Err(WireError::Auth(refuse(&mut c, r.into()).await));
            }
            proof(k, b"dyno client", &theirs, &mine)
        }
        Key::Insecure => [0; 32],
    };
    c.send(&Message::Auth { proof: my_proof }).await?;
    match timed(c.recv()).await? {
        Message::Welcome => Ok(c),
        Message::Refused { reason } => Err(WireError::Refused(reason)),
        m => Err(WireError::Unexpected {
            want: "Welcome",
            got: m.kind(),
        }),
    }
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
pub async fn accept(stream: TcpStream, me: &Identity, max_frame: usize) -> Result<Conn, WireError> {
    stream.set_nodelay(true)?;
    let mut c = Conn {
        framed: Framed::new(stream, codec(max_frame)),
        peer: String::new(),
        role: Role::Observer,
    };
    let hello = timed(c.recv()).await?;
    let Message::Hello {
        version,
        role,
        fleet,
        name,
        nonce: theirs,
        insecure,
    } = hello
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
    let secured = matches!(me.key, Key::Secret(_));
    if secured == insecure {
        let r = if secured {
            "this fleet requires the fleet key; the peer runs --insecure".to_string()
        } else {
            "this side runs --insecure; the peer has a fleet key: both must agree".to_string()
        };
        return Err(WireError::Auth(refuse(&mut c, r).await));
    }
    let mine: [u8; 32] = rand::random();
    let server_proof = match &me.key {
        Key::Secret(k) => proof(k, b"dyno server", &theirs, &mine),
        Key::Insecure => [0; 32],
    };
    c.send(&Message::Challenge {
        nonce: mine,
        proof: server_proof,
    })
    .await?;
    let got = match timed(c.recv()).await? {
        Message::Auth { proof } => proof,
        Message::Refused { reason } => {
            return Err(WireError::Auth(format!("`{name}` hung up: {reason}")))
        }
        m => {
            return Err(WireError::Unexpected {
                want: "Auth",
                got: m.kind(),
            })
        }
    };
    if let Key::Secret(k) = &me.key {
        if !verify(k, b"dyno client", &mine, &theirs, &got) {
            let r = format!("`{name}` does not know the fleet key");
            return Err(WireError::Auth(refuse(&mut c, r).await));
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
            accept(t, &server, DEFAULT_MAX_FRAME).await
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
        let r = accept(t, &me, DEFAULT_MAX_FRAME).await;
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
        assert!(matches!(c, Err(WireError::Auth(_))), "{c:?}");
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

    #[tokio::test]
    async fn a_wrong_version_garbage_and_oversized_frames_are_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let me = id(Role::Worker, Key::Insecure);
            let mut out = Vec::new();
            for _ in 0..3 {
                let (t, _) = l.accept().await.unwrap();
                out.push(accept(t, &me, 1024).await.unwrap_err().to_string());
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
            nonce: [0; 32],
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
