//! The punch parsers: `traverse::punch::rendezvous::Message::parse` (offer, answer,
//! ready) and `traverse::punch::udp::Probe::parse` / `Probe::open`, and a punch
//! `Session` and rendezvous `Responder` fed the same bytes.
//!
//! Input: byte 0 = mode. Even: the rest is a rendezvous message. Odd: the rest is a
//! punch packet, checked with the key derived from nonces 0x01.. and 0x02.. for UDP.
//!
//! Invariants: no panic; a message that parses re-emits to the same bytes, of
//! `emit_len` bytes, within `MAX_MESSAGE`, with at most `MAX_CANDIDATES` candidates; a
//! packet that opens also parses, re-emits to the same bytes under the key, and a
//! session fed it (as if from the peer) queues at most one answer; arbitrary bytes never
//! confirm a path.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use p2pipe::identity::Identity;
use p2pipe::traverse::punch::rendezvous::{Message, Responder, Way, MAX_MESSAGE, NONCE_LEN};
use p2pipe::traverse::punch::udp::{Probe, Session, Step, Timing};
use p2pipe::traverse::punch::{
    Agreement, Approach, NatSummary, Plan, Role, SessionKey, MAX_CANDIDATES,
};
use p2pipe::Proto;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        message(rest);
    } else {
        packet(rest);
    }
});

fn message(bytes: &[u8]) {
    let peer = Identity::from_seed([3; 32]).node_id();
    let _ = Responder::new(
        peer,
        bytes,
        [4; NONCE_LEN],
        NatSummary::default(),
        None,
        Default::default(),
    );
    let Ok(m) = Message::parse(bytes) else {
        return;
    };
    assert!(bytes.len() <= MAX_MESSAGE);
    assert_eq!(m.emit_len(), bytes.len());
    assert_eq!(&m.to_bytes()[..], bytes);
    match &m {
        Message::Offer(o) => assert!(o.candidates.addrs().len() <= MAX_CANDIDATES),
        Message::Answer(a) => assert!(a.candidates.addrs().len() <= MAX_CANDIDATES),
        Message::Ready(_) => {}
    }
}

fn packet(bytes: &[u8]) {
    let key = SessionKey::derive(&[1; NONCE_LEN], &[2; NONCE_LEN], Proto::Udp);
    let parsed = Probe::parse(bytes);
    let opened = Probe::open(bytes, &key);
    if let Ok(p) = &opened {
        assert_eq!(parsed.as_ref().ok(), Some(p));
        let mut out = BytesMut::new();
        p.emit(&key, &mut out);
        assert_eq!(&out[..], bytes);
    }
    let now = Instant::now();
    let agreement = Agreement {
        plan: Plan {
            remote: vec![SocketAddr::from(([198, 51, 100, 5], 5000))],
            start: now + Duration::from_secs(1),
            rtt: Duration::from_millis(10),
            role: Role::Initiator,
        },
        way: Way::Udp(Approach::Direct),
        key,
        session: [1; NONCE_LEN],
    };
    let from = SocketAddr::from(([198, 51, 100, 5], 6000));
    let mut session = Session::new(&agreement, Timing::default(), from);
    let step = session.on_datagram(bytes, from, now);
    if opened.is_err() {
        assert!(matches!(step, Step::Ignored(_)), "{step:?}");
        assert_eq!(session.path(), None);
    }
    // Before the start only answers are due: at most one.
    let queued = std::iter::from_fn(|| session.poll_transmit(now)).count();
    assert!(queued <= 2, "{queued}");
}
