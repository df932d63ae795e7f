//! A handle on the path handshake and data-phase cores for the fuzz targets in `fuzz/`
//! (feature `fuzzing`). Not part of the API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::handshake::{Expect, Handshake, Hello, Step, Timing};
use super::secure::{records, Limits, Opened, Opener, Sealer};
use crate::identity::Identity;
use crate::Proto;

/// A responder's handshake and a finished pair's opener, fed by the fuzzer.
pub struct Harness {
    responder: Handshake,
    opener: Opener,
    now: Instant,
    /// Packets genuinely sealed by the peer of `opener`: only these may open.
    pub genuine: Vec<Vec<u8>>,
}

fn id(n: u8) -> Identity {
    Identity::from_seed([n; 32])
}

impl Harness {
    /// Cores over TCP (`tcp`) or UDP; with `msg1`, the responder has taken a genuine
    /// msg1, so the fuzzer's packets meet its msg3 parsing.
    pub fn new(tcp: bool, msg1: bool) -> Harness {
        let proto = if tcp { Proto::Tcp } else { Proto::Udp };
        let now = Instant::now();
        let t = Timing::default();
        let mut responder =
            Handshake::responder(&id(2), Expect::Any, proto, t).expect("a responder");
        if msg1 {
            let mut i =
                Handshake::initiator(&id(1), &id(2).public(), Hello::default(), proto, t, now)
                    .expect("an initiator");
            let m = i.poll_transmit().expect("msg1");
            let _ = responder.on_packet(&m, now).expect("a genuine msg1");
            let _ = responder.poll_transmit();
        }
        // A finished pair for the data phase.
        let mut i = Handshake::initiator(&id(1), &id(2).public(), Hello::default(), proto, t, now)
            .expect("an initiator");
        let mut r = Handshake::responder(&id(2), Expect::Any, proto, t).expect("a responder");
        let _ = r.on_packet(&i.poll_transmit().expect("msg1"), now);
        let Ok(Step::Done(di)) = i.on_packet(&r.poll_transmit().expect("msg2"), now) else {
            panic!("the initiator is done at msg2");
        };
        let Ok(Step::Done(dr)) = r.on_packet(&i.poll_transmit().expect("msg3"), now) else {
            panic!("the responder is done at msg3");
        };
        let limits = Limits::new(proto, 1 << 20, 200_000).expect("limits");
        let mut sealer = Sealer::new(Arc::new(di.transport), proto, limits);
        let mut out = BytesMut::new();
        for m in [
            &b"one"[..],
            b"",
            &[7; 70_000][..if tcp { 70_000 } else { 1000 }],
        ] {
            sealer.seal(m, &mut out).expect("sealed");
        }
        sealer.seal_marker(&mut out).expect("sealed");
        let genuine = records(&out).map(<[u8]>::to_vec).collect();
        Harness {
            responder,
            opener: Opener::new(Arc::new(dr.transport), proto, limits, None),
            now,
            genuine,
        }
    }

    /// Feeds the responder's handshake; `Err` once it refused. `Ok(true)`: done.
    #[allow(clippy::result_unit_err)]
    pub fn handshake(&mut self, packet: &[u8]) -> Result<bool, ()> {
        self.now += Duration::from_millis(100);
        self.responder.on_timeout(self.now);
        let _ = self.responder.poll_transmit();
        match self.responder.on_packet(packet, self.now) {
            Ok(Step::Done(_)) => Ok(true),
            Ok(_) => Ok(false),
            Err(_) => Err(()),
        }
    }

    /// Feeds the opener; `Ok(Some(len))` for a whole message of `len` bytes.
    #[allow(clippy::result_unit_err)]
    pub fn open(&mut self, packet: &[u8]) -> Result<Option<usize>, ()> {
        match self.opener.open(packet) {
            Ok(Opened::Message(m)) => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(_) => Err(()),
        }
    }
}

/// The connect requests' parsers on `bytes` (as a request and as an answer), with their
/// invariants: no panic, and what parses is within its bounds and re-emits to the same
/// bytes.
pub fn connect_message(bytes: &[u8]) {
    use super::request::{Answer, Request, MAX_COME, MAX_PUBLIC, MAX_REASON, MAX_REQUEST};
    if let Ok(r) = Request::parse(bytes) {
        assert!(bytes.len() <= MAX_REQUEST);
        assert_eq!(&r.to_bytes()[..], bytes);
        match &r {
            Request::Come { to, .. } => assert!(!to.is_empty() && to.len() <= MAX_COME),
            Request::Relay { public, .. } => assert!(public.len() <= MAX_PUBLIC),
            Request::Upgrade { .. } => {}
        }
    }
    if let Ok(a) = Answer::parse(bytes) {
        assert_eq!(&a.to_bytes()[..], bytes);
        if let Answer::Refused { reason } = &a {
            assert!(reason.len() <= MAX_REASON);
        }
    }
}
