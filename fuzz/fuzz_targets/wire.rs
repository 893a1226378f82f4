//! Fuzzes the frame decoder: any byte stream read from a socket (the 4-byte length
//! prefix, then each payload) must give messages or typed errors, never a panic, a hang
//! or an allocation past the frame limit; whatever decodes re-encodes to a frame that
//! decodes to the same bytes.
//! Run (see docs/SECURITY.md): `scripts/fuzz.sh 600 wire`.
#![no_main]
use bytes::BytesMut;
use dyno::wire::{codec, decode, encode};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX_FRAME: usize = 64 * 1024;

fn check(payload: &[u8]) {
    if let Ok(m) = decode(payload) {
        let again = encode(&m);
        let back = decode(&again).expect("a re-encoded message decodes");
        assert_eq!(encode(&back), again, "{} changed on a round trip", m.kind());
    }
}

fuzz_target!(|data: &[u8]| {
    // The payload alone, as `Conn::recv` hands it over.
    check(data);
    // The same bytes as a stream, through the length-delimited codec.
    let mut codec = codec(MAX_FRAME);
    let mut buf = BytesMut::from(data);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(frame.len() <= MAX_FRAME);
                check(&frame);
            }
            Ok(None) | Err(_) => break,
        }
    }
});
