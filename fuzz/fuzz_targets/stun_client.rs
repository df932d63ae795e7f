//! The STUN client core: `Response::parse` on arbitrary bytes, and a `Transaction`
//! (started at a fixed instant) fed arbitrary datagrams from arbitrary sources, with
//! arbitrary waits and an arbitrary retransmission schedule.
//!
//! Input: 6 bytes of configuration (expected source, initial RTO, max RTO, transmissions,
//! final wait, change flags), then steps: `0 flags len:u16 bytes` a datagram (flags: bits
//! 0-1 the source, bit 2 writes the request's txid, bit 3 the right length field), `1
//! ms:u16 shift:u8` a wait, `2` a restart. Every datagram is also parsed on its own.
//!
//! Invariants: no panic; a parsed response is a response with a mapped address when it is
//! a success, an error code in 300..=699 when it is an error, and parsing is
//! deterministic; the transaction is answered only while waiting, only by a datagram that
//! `Response::parse` accepts, whose txid is the request's and whose source the
//! configuration accepts; every ignored datagram is ignored for a reason that holds; every
//! datagram moves exactly one counter (answered or one ignored counter) by one; the
//! transmissions never exceed the configured count and every retransmission is the same
//! request to the server.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use p2pipe::stun::{
    peek_txid, Class, Config, ExpectFrom, Ignored, Outcome, Request, Response, State, Stats,
    Transaction, TransactionId, HEADER_LEN, MAX_MESSAGE_LEN,
};

/// The transaction id of the RFC 5769 vectors, which the seeds carry.
const TXID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

#[path = "common/cursor.rs"]
mod cursor;
use cursor::Cursor;

/// A retransmission timeout from one byte: small, huge, or the largest there is.
fn rto(sel: u8) -> Duration {
    match sel & 3 {
        0 => Duration::from_millis(u64::from(sel >> 2) * 50),
        1 => Duration::from_secs(u64::MAX >> (sel >> 2)),
        2 => Duration::MAX,
        _ => Duration::from_millis(1),
    }
}

fn check_response(bytes: &[u8]) -> Option<Response> {
    let parsed = Response::parse(bytes);
    assert_eq!(parsed, Response::parse(bytes), "parsing is deterministic");
    let r = parsed.ok()?;
    assert!(bytes.len() <= MAX_MESSAGE_LEN && bytes.len() >= HEADER_LEN);
    assert_eq!(Some(r.txid), peek_txid(bytes));
    match &r.class {
        Class::Success => assert!(r.mapped.is_some(), "success without a mapped address"),
        Class::Error { code, .. } => assert!((300..=699).contains(code), "error code {code}"),
    }
    assert_eq!(r.mapped.is_some(), r.mapped_from.is_some());
    Some(r)
}

fn total(s: &Stats) -> u32 {
    s.ignored_wrong_txid + s.ignored_wrong_source + s.ignored_malformed + s.ignored_not_waiting
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let (expect, initial_rto, max_rto) = (input.u8(), input.u8(), input.u8());
    let (max_transmissions, final_wait_multiplier, change) = (input.u8(), input.u8(), input.u8());

    let server: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let other: SocketAddr = "198.51.100.2:3479".parse().unwrap();
    let other_port: SocketAddr = "198.51.100.1:3479".parse().unwrap();
    let stranger: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
    let sources = [server, other, other_port, stranger];
    let expect_from = match expect % 4 {
        0 => ExpectFrom::Server,
        1 => ExpectFrom::Any,
        2 => ExpectFrom::Exactly(other),
        _ => ExpectFrom::Either(other, server),
    };
    let acceptable = |from: SocketAddr| match expect_from {
        ExpectFrom::Server => from == server,
        ExpectFrom::Any => true,
        ExpectFrom::Exactly(a) => from == a,
        ExpectFrom::Either(a, b) => from == a || from == b,
    };
    let config = Config {
        initial_rto: rto(initial_rto),
        max_rto: rto(max_rto),
        max_transmissions: u32::from(max_transmissions % 16),
        final_wait_multiplier: u32::from(final_wait_multiplier % 64),
        expect_from,
    };
    let mut request = Request::binding(TransactionId(TXID));
    if change & 1 != 0 {
        request = request.with_change(change & 2 != 0, change & 4 != 0);
    }
    let mut t = Transaction::new(server, request, config);
    let mut wire = BytesMut::new();
    t.request().emit(&mut wire);
    assert_eq!(Request::parse(&wire).as_ref(), Ok(t.request()));
    let wire = wire.to_vec();

    let t0 = Instant::now();
    let mut now = t0;
    let mut started = now;
    let first = t.start(now);
    assert_eq!((first.to, &first.bytes), (server, &wire));
    assert_eq!(t.state(), &State::Waiting);
    let max_tx = config.max_transmissions.max(1);
    let mut inputs = 0u32;
    let mut answered = 0u32;

    let mut steps = 0;
    while !input.is_empty() && steps < 64 {
        steps += 1;
        match input.u8() % 3 {
            0 => {
                let flags = input.u8();
                let from = sources[usize::from(flags & 3)];
                let len = usize::from(input.u16());
                let mut bytes = input.bytes(len).to_vec();
                if bytes.len() >= HEADER_LEN {
                    if flags & 4 != 0 {
                        bytes[8..20].copy_from_slice(&TXID);
                    }
                    if flags & 8 != 0 {
                        let n = (bytes.len() - HEADER_LEN) as u16;
                        bytes[2..4].copy_from_slice(&n.to_be_bytes());
                    }
                }
                let parsed = check_response(&bytes);
                let was_waiting = t.state() == &State::Waiting;
                let before = t.stats();
                let outcome = t.handle_input(from, &bytes, now);
                let after = t.stats();
                inputs += 1;
                assert_eq!(before.transmissions, after.transmissions);
                match outcome {
                    Outcome::Answered(r) => {
                        answered += 1;
                        assert!(was_waiting, "answered while not waiting");
                        assert!(acceptable(from), "answered from {from}");
                        assert_eq!(r.txid, TransactionId(TXID), "answered by another txid");
                        assert_eq!(Some(&r), parsed.as_ref());
                        assert_eq!(t.state(), &State::Answered(r.clone()));
                        assert_eq!(t.response(), Some(&r));
                        assert_eq!(t.answered_from(), Some(from));
                        assert_eq!(t.answered_in(), Some(now - started));
                        assert_eq!(t.poll_timeout(), None);
                        assert_eq!(after, before, "an answer is no ignored datagram");
                    }
                    Outcome::Ignored(why) => {
                        assert_eq!(total(&after), total(&before) + 1, "one counter moved");
                        match why {
                            Ignored::NotWaiting => {
                                assert!(!was_waiting);
                                assert_eq!(
                                    after.ignored_not_waiting,
                                    before.ignored_not_waiting + 1
                                );
                            }
                            Ignored::WrongSource(a) => {
                                assert!(was_waiting && a == from && !acceptable(from));
                                assert_eq!(
                                    after.ignored_wrong_source,
                                    before.ignored_wrong_source + 1
                                );
                            }
                            Ignored::WrongTxid => {
                                assert!(was_waiting && acceptable(from));
                                assert_ne!(peek_txid(&bytes), Some(TransactionId(TXID)));
                                assert_eq!(after.ignored_wrong_txid, before.ignored_wrong_txid + 1);
                            }
                            Ignored::Malformed(e) => {
                                assert!(was_waiting && acceptable(from));
                                assert_eq!(Err(e), Response::parse(&bytes));
                                assert_eq!(after.ignored_malformed, before.ignored_malformed + 1);
                            }
                        }
                        if was_waiting {
                            assert_eq!(t.state(), &State::Waiting);
                        }
                    }
                }
            }
            1 => {
                let ms = u32::from(input.u16()) << (input.u8() & 15);
                let Some(later) = now.checked_add(Duration::from_millis(u64::from(ms))) else {
                    continue;
                };
                now = later;
                for _ in 0..32 {
                    let due = t.poll_timeout();
                    let before = t.stats();
                    match t.handle_timeout(now) {
                        Some(tx) => {
                            assert!(due.is_some_and(|d| d <= now));
                            assert_eq!((tx.to, &tx.bytes), (server, &wire));
                            assert_eq!(t.stats().transmissions, before.transmissions + 1);
                        }
                        None => {
                            assert_eq!(t.stats().transmissions, before.transmissions);
                            break;
                        }
                    }
                }
                if t.state() == &State::TimedOut {
                    assert_eq!(t.poll_timeout(), None);
                    assert!(t.is_finished());
                }
            }
            _ => {
                let tx = t.start(now);
                started = now;
                assert_eq!((tx.to, &tx.bytes), (server, &wire));
                assert_eq!(t.stats().transmissions, 1);
                assert_eq!(t.state(), &State::Waiting);
            }
        }
        let s = t.stats();
        assert!(s.transmissions >= 1 && s.transmissions <= max_tx, "{s:?}");
        assert_eq!(
            total(&s) + answered,
            inputs,
            "every datagram is counted once"
        );
    }
});
