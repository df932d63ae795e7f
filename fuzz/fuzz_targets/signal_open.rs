//! The opener of sealed signalling messages: `signal::Signalling::on_message` of a node
//! with a fixed key at a fixed time, fed arbitrary bytes or mutations of a valid envelope.
//!
//! Input: byte 0 = mode. Even: the rest is one message (fed again when it is
//! delivered). Odd: byte 1 = the kind (0 one-way, 1 request, 2 the response to a
//! request the node made), bytes 2-3 = the payload length (big-endian, cut to what is
//! there), the payload, then mutations of 4 bytes each, `op pos:u16 val`: op 0 xors
//! byte `pos` with `val`, op 1 truncates to `pos` bytes, op 2 appends `pos` bytes of
//! `val`, op 3 moves the arrival time by `val` (as i8) seconds. The envelope is sealed
//! by a second fixed key to the node.
//!
//! Invariants: no panic; each message moves exactly one counter by one; a message is
//! never delivered twice (the second feed is dropped); arbitrary bytes are never
//! delivered as a response (the node has no request pending); an unchanged envelope is
//! delivered exactly when its age is within the window, with the sealed payload, sender
//! and kind; a changed envelope is never delivered.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use p2pipe::signal::{
    seal, Config, Counters, Delivered, Dropped, Kind, Signalling, MAX_MESSAGE, RANDOM_LEN,
};

const NOW: u64 = 1_700_000_000_000;

/// The node's key and the sender's, made once.
static NODE: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[2; 32]));
static SENDER: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[1; 32]));

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let node = Signalling::new(NODE.clone(), Config::default(), 1);
    if mode & 1 == 0 {
        raw(node, rest);
    } else {
        structured(node, rest);
    }
});

/// Feeds one message and checks that exactly one counter moved by one.
fn feed(node: &mut Signalling, bytes: &[u8], now: u64) -> Result<Delivered, Dropped> {
    let before = total(&node.counters());
    let outcome = node.on_message(bytes, now);
    assert_eq!(total(&node.counters()), before + 1, "{outcome:?}");
    if bytes.len() > MAX_MESSAGE {
        assert_eq!(outcome, Err(Dropped::TooLarge));
    }
    outcome
}

fn total(c: &Counters) -> u64 {
    c.delivered + c.dropped()
}

fn raw(mut node: Signalling, bytes: &[u8]) {
    let first = feed(&mut node, bytes, NOW);
    assert!(
        !matches!(first, Ok(Delivered::Response { .. })),
        "a response without a request"
    );
    if first.is_ok() {
        assert!(feed(&mut node, bytes, NOW).is_err(), "delivered twice");
    }
}

fn structured(mut node: Signalling, data: &[u8]) {
    let &[kind, hi, lo, ref rest @ ..] = data else {
        return;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo])).min(rest.len());
    let (payload, ops) = rest.split_at(len);
    let sender = &*SENDER;
    let kind = match kind % 3 {
        0 => Kind::OneWay,
        1 => Kind::Request(p2pipe::signal::RequestId(7)),
        _ => {
            let to = sender.verifying_key();
            let timeout = Duration::from_secs(600);
            let (id, _) = node
                .request(&to, b"q", NOW, timeout, [8; RANDOM_LEN])
                .unwrap();
            Kind::Response(id)
        }
    };
    let to = node.public_key();
    let Ok(sealed) = seal(sender, &to, kind, payload, NOW, [9; RANDOM_LEN]) else {
        assert!(payload.len() > p2pipe::signal::MAX_PAYLOAD);
        return;
    };
    let (envelope, shift) = mutate(&sealed, ops);
    let now = NOW.wrapping_add_signed(shift * 1000);
    let outcome = feed(&mut node, &envelope, now);
    if envelope[..] != sealed[..] {
        assert!(outcome.is_err(), "a changed envelope was delivered");
        return;
    }
    let in_window = (-30..=60).contains(&shift);
    assert_eq!(outcome.is_ok(), in_window, "{outcome:?} at {shift} s");
    let Ok(delivered) = outcome else {
        return;
    };
    let from = sender.verifying_key();
    match (delivered, kind) {
        (
            Delivered::Message {
                from: f,
                payload: p,
            },
            Kind::OneWay,
        ) => {
            assert_eq!((f, &*p), (from, payload));
        }
        (Delivered::Request(r), Kind::Request(id)) => {
            assert_eq!((r.from, r.request_id, &*r.payload), (from, id, payload));
        }
        (
            Delivered::Response {
                request_id,
                from: f,
                payload: p,
            },
            Kind::Response(id),
        ) => {
            assert_eq!((f, request_id, &*p), (from, id, payload));
        }
        (d, k) => panic!("{k:?} delivered as {d:?}"),
    }
    assert!(feed(&mut node, &envelope, now).is_err(), "delivered twice");
}

/// Applies the mutations; returns the envelope and the arrival time's shift in seconds.
fn mutate(sealed: &[u8], ops: &[u8]) -> (Vec<u8>, i64) {
    let mut out = sealed.to_vec();
    let mut shift = 0i64;
    for op in ops.chunks_exact(4) {
        let pos = usize::from(u16::from_be_bytes([op[1], op[2]]));
        match op[0] % 4 {
            0 if !out.is_empty() => {
                let i = pos % out.len();
                out[i] ^= op[3];
            }
            1 => out.truncate(pos),
            2 if out.len() <= MAX_MESSAGE => out.resize(out.len() + pos.min(MAX_MESSAGE), op[3]),
            3 => shift += i64::from(op[3] as i8),
            _ => {}
        }
    }
    (out, shift)
}
