//! The mesh's frame codec, handshake and session fed an arbitrary byte stream.
//!
//! Input: byte 0 = flags (bit 0: this side signs; bit 1: this side is the acceptor;
//! bits 2-4: the message bound, from 0 to 1 MiB; bits 5-7: the inflation bound), byte 1 =
//! how to split the rest (0: one piece; else pieces of 1..=n bytes from a small PRNG),
//! the rest = what the peer sends.
//!
//! Invariants: the codec yields no frame over its bound (512 bytes for the first two,
//! the message bound after), and never reserves room for a claimed length over it; a
//! frame that parses re-emits to exactly its bytes, and parses the same without a copy;
//! the handshake reaches a decision only for a peer with another id and the same signing
//! choice, and, when this side signs, never (the fuzzer holds no key the transcript could be signed with); a session
//! yields messages no larger than the inflation bound, flagged compressed exactly when
//! the frame said so; an unsigned session refuses signed frames as a mismatch and never
//! sees a replay; only a bad frame or a handshake frame is fatal, and a fatal error ends
//! the input.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use p2pipe::identity::Identity;
use p2pipe::mesh::session::{Handshake, Incoming, Local, Reject, Step};
use p2pipe::mesh::wire::{Frame, FrameCodec, MeshId, WireError, FLAG_ZLIB, MAX_HANDSHAKE_FRAME};
use tokio_util::codec::Decoder;

const BOUNDS: [usize; 8] = [0, 1, 16, 100, 1024, 4096, 65536, 1 << 20];

fuzz_target!(|data: &[u8]| {
    let &[flags, split, ref stream @ ..] = data else {
        return;
    };
    let signs = flags & 1 != 0;
    let acceptor = flags & 2 != 0;
    let max_message = BOUNDS[usize::from((flags >> 2) & 7)];
    let max_inflate = BOUNDS[usize::from(flags >> 5)];
    let local = Local {
        id: MeshId::new("me").unwrap(),
        listen_port: 1,
        key: signs.then(|| Identity::from_seed([1; 32])),
    };
    let mut hs = if acceptor {
        Some(Handshake::acceptor(&local, [2; 32]))
    } else {
        Some(Handshake::initiator(&local, [2; 32]).0)
    };
    let mut session = None;
    let mut codec = FrameCodec::new(max_message + 74);
    let mut buf = BytesMut::new();
    let mut seed = u32::from(split) | 1;
    let mut rest = stream;
    let mut frames = 0usize;
    while !rest.is_empty() {
        let n = if split == 0 {
            rest.len()
        } else {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            1 + (seed as usize) % usize::from(split)
        };
        let (piece, r) = rest.split_at(n.min(rest.len()));
        rest = r;
        buf.extend_from_slice(piece);
        loop {
            let bound = codec.bound();
            let frame = match codec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    assert!(
                        buf.capacity() <= 2 * (stream.len() + bound + 4) + 64,
                        "reserve followed a claim"
                    );
                    break;
                }
                Err(WireError::TooLarge { len, max }) => {
                    assert!(len > max && max == bound);
                    return;
                }
                Err(e) => panic!("codec error {e}"),
            };
            assert!(frame.len() <= bound, "frame over its bound");
            if frames < 2 {
                assert_eq!(bound, MAX_HANDSHAKE_FRAME);
            }
            frames += 1;
            if let Ok(parsed) = Frame::parse(&frame) {
                let mut again = BytesMut::new();
                parsed.emit(&mut again);
                assert_eq!(again.len(), parsed.emit_len());
                assert_eq!(&again[4..], &frame[..], "re-emitting differs");
                assert_eq!(Frame::parse_bytes(&frame).as_ref(), Ok(&parsed));
            }
            if !step(&mut hs, &mut session, frame, signs, max_inflate) {
                return;
            }
        }
    }
});

/// Feeds one frame; false when the connection would end.
fn step(
    hs: &mut Option<Handshake>,
    session: &mut Option<p2pipe::mesh::session::Session>,
    frame: Bytes,
    signs: bool,
    max_inflate: usize,
) -> bool {
    if let Some(h) = hs.as_mut() {
        return match h.on_frame(frame) {
            Ok(Step::Send(_)) => true,
            Ok(Step::Decide(peer)) => {
                assert!(!signs, "decided on a signing handshake without a signature");
                assert_ne!(peer.id, "me");
                assert!(peer.key.is_none());
                let (s, _) = hs.take().unwrap().accept(max_inflate);
                *session = Some(s);
                true
            }
            Err(_) => false,
        };
    }
    let s = session.as_mut().expect("a session after the handshake");
    let parsed = Frame::parse(&frame);
    match s.rx.on_frame(frame) {
        Ok(Incoming::Message {
            payload,
            compressed,
        }) => {
            let Ok(Frame::Data { flags, .. }) = parsed else {
                panic!("a message from a frame that is not data")
            };
            assert_eq!(compressed, flags & FLAG_ZLIB != 0);
            if compressed {
                assert!(payload.len() <= max_inflate);
            }
            true
        }
        Ok(_) => true,
        Err(r) => {
            assert!(
                !matches!(r, Reject::Replay { .. } | Reject::BadSignature),
                "unsigned session: {r}"
            );
            if let Reject::SigningMismatch = r {
                assert!(matches!(
                    parsed,
                    Ok(Frame::Data {
                        signed: Some(_),
                        ..
                    })
                ));
            }
            assert_eq!(
                r.is_fatal(),
                matches!(r, Reject::Wire(_) | Reject::Unexpected)
            );
            !r.is_fatal()
        }
    }
}
