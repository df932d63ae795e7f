//! The data phase of a secure path, sans-IO: messages in, sealed packets out
//! ([`Sealer`]); packets in, messages and events out ([`Opener`]).
//!
//! A data packet is `[0x10]`, an 8-byte big-endian field, and the ChaCha20-Poly1305
//! ciphertext of the body under the keys of the handshake (Noise's stateless transport),
//! with the field as the nonce. The field's top four bits say what the packet is, the
//! other 60 are its counter:
//!
//! | top bits | packet |
//! |---|---|
//! | 0 | a whole message, or the last fragment of one |
//! | 1 | a fragment, more follow (TCP only) |
//! | 2 | the marker: the last packet on a path this side is leaving |
//! | 3 | close: this side closed the path |
//! | 8 | a control packet (migration), counted apart |
//!
//! As the whole field is the nonce, the kind is authenticated with the body; the data
//! kinds (0 to 3) share one counter, which is also the message sequence, and control
//! packets have a counter of their own, so no two packets of a direction share a
//! nonce. On TCP each data packet's counter must be the one after the last (a packet
//! cut out or repeated ends the path); on UDP a window of [`WINDOW`] counters refuses
//! copies and packets too old to tell, and a packet that does not decrypt is ignored.
//!
//! A message larger than a packet's body is sent as fragments on TCP and put back
//! together up to the configured maximum; on UDP a message must fit one packet.
//! Sealed packets are appended to the caller's buffer as records, each its u32
//! big-endian length and the packet: the wire form of `Framing::LengthPrefixed`, which
//! a TCP path writes as it is and a UDP path sends one datagram per record.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use snow::StatelessTransportState;

use super::handshake::{Answer, MSG1, MSG2, MSG3};
use super::Error;
use crate::Proto;

/// The type byte of every data-phase packet.
pub(crate) const DATA: u8 = 0x10;
/// The type byte and the field before the ciphertext.
const HEADER: usize = 1 + 8;
const TAG: usize = 16;
/// What a packet adds to its body.
pub(crate) const OVERHEAD: usize = HEADER + TAG;
/// Noise's largest message (ciphertext and tag).
const NOISE_MAX: usize = 65_535;
/// The largest packet.
pub(crate) const MAX_PACKET: usize = HEADER + NOISE_MAX;
/// The counters a UDP receiver remembers below the highest it took.
pub(crate) const WINDOW: u64 = 128;

const KIND_SHIFT: u32 = 60;
const COUNTER_MASK: u64 = (1 << KIND_SHIFT) - 1;
const END: u64 = 0;
const MORE: u64 = 1;
const MARKER: u64 = 2;
const CLOSE: u64 = 3;
const CONTROL: u64 = 8;
/// A control packet's body: its kind and a challenge.
const CONTROL_BODY: usize = 1 + 16;

/// A migration control message (see `path.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// "Answer me on this path": a fresh challenge.
    Probe([u8; 16]),
    /// The answer to a probe, with its challenge.
    Ack([u8; 16]),
}

/// The bounds of a path's data phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The largest message either way.
    pub(crate) max_message: usize,
    /// The largest packet (UDP: the largest datagram the raw pipe takes).
    pub(crate) max_packet: usize,
}

impl Limits {
    /// The bounds for `proto` over a raw pipe whose frames are at most `raw_max_frame`
    /// bytes, for messages of at most `max_message` (on UDP also at most one packet's
    /// body).
    pub(crate) fn new(
        proto: Proto,
        raw_max_frame: usize,
        max_message: usize,
    ) -> Result<Limits, Error> {
        let cap = match proto {
            Proto::Tcp => MAX_PACKET,
            Proto::Udp => crate::pipe::MAX_DATAGRAM,
        };
        let max_packet = raw_max_frame.min(cap);
        if max_packet <= OVERHEAD {
            return Err(Error::Unfit(
                "the raw pipe's frame limit leaves no room for a packet",
            ));
        }
        let max_message = match proto {
            Proto::Tcp => max_message,
            Proto::Udp => max_message.min(max_packet - OVERHEAD),
        };
        Ok(Limits {
            max_message,
            max_packet,
        })
    }

    /// The largest body of one packet.
    pub(crate) fn fragment(&self) -> usize {
        self.max_packet - OVERHEAD
    }
}

/// The sending half of a data phase.
pub(crate) struct Sealer {
    keys: Arc<StatelessTransportState>,
    proto: Proto,
    limits: Limits,
    next: u64,
    control: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("proto", &self.proto)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    pub(crate) fn new(keys: Arc<StatelessTransportState>, proto: Proto, limits: Limits) -> Sealer {
        Sealer {
            keys,
            proto,
            limits,
            next: 0,
            control: 0,
        }
    }

    /// Appends `plain` as records of sealed packets: one, or on TCP as many fragments
    /// as it takes. Nothing is appended if it fails.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] over the largest message (on UDP, one packet's body);
    /// [`Error::Exhausted`] when the counter has run out.
    pub(crate) fn seal(&mut self, plain: &[u8], out: &mut BytesMut) -> Result<(), Error> {
        if plain.len() > self.limits.max_message {
            return Err(Error::TooLarge {
                len: plain.len(),
                max: self.limits.max_message,
            });
        }
        let fragment = self.limits.fragment();
        let packets = plain.len().div_ceil(fragment).max(1) as u64;
        self.reserve(packets)?;
        out.reserve(plain.len() + packets as usize * (4 + OVERHEAD));
        let mut chunks = plain.chunks(fragment).peekable();
        if chunks.peek().is_none() {
            self.data(END, &[], out);
        }
        while let Some(chunk) = chunks.next() {
            let kind = if chunks.peek().is_some() { MORE } else { END };
            self.data(kind, chunk, out);
        }
        Ok(())
    }

    /// Appends the marker: the last packet this side sends on the path it is leaving.
    pub(crate) fn seal_marker(&mut self, out: &mut BytesMut) -> Result<(), Error> {
        self.reserve(1)?;
        self.data(MARKER, &[], out);
        Ok(())
    }

    /// Appends the close packet: this side closed the path.
    pub(crate) fn seal_close(&mut self, out: &mut BytesMut) -> Result<(), Error> {
        self.reserve(1)?;
        self.data(CLOSE, &[], out);
        Ok(())
    }

    /// Appends a control packet.
    pub(crate) fn seal_control(
        &mut self,
        control: Control,
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        if self.control >= COUNTER_MASK {
            return Err(Error::Exhausted);
        }
        let mut body = [0u8; CONTROL_BODY];
        let (kind, challenge) = match control {
            Control::Probe(c) => (1, c),
            Control::Ack(c) => (2, c),
        };
        body[0] = kind;
        body[1..].copy_from_slice(&challenge);
        let field = CONTROL << KIND_SHIFT | self.control;
        self.control += 1;
        self.packet(field, &body, out);
        Ok(())
    }

    fn reserve(&self, packets: u64) -> Result<(), Error> {
        if self.next + packets > COUNTER_MASK {
            return Err(Error::Exhausted);
        }
        Ok(())
    }

    fn data(&mut self, kind: u64, body: &[u8], out: &mut BytesMut) {
        let field = kind << KIND_SHIFT | self.next;
        self.next += 1;
        self.packet(field, body, out);
    }

    fn packet(&self, field: u64, body: &[u8], out: &mut BytesMut) {
        let len = HEADER + body.len() + TAG;
        out.reserve(4 + len);
        out.put_u32(len as u32);
        out.put_u8(DATA);
        out.put_u64(field);
        let start = out.len();
        out.resize(start + body.len() + TAG, 0);
        let n = self
            .keys
            .write_message(field, body, &mut out[start..])
            .expect("a body within noise's bound, and room for it");
        debug_assert_eq!(n, body.len() + TAG);
    }
}

/// The records of a buffer [`Sealer`] filled: each packet, without its length.
pub(crate) fn records(mut buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
        let (packet, rest) = buf.get(4..)?.split_at_checked(len)?;
        buf = rest;
        Some(packet)
    })
}

/// What a packet is, from its first bytes, before anything is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A data packet: a message, a fragment, a marker or a close.
    Data,
    /// A control packet.
    Control,
    /// Anything else.
    Other,
}

/// What `packet` claims to be (nothing is authenticated yet).
pub(crate) fn kind_of(packet: &[u8]) -> Kind {
    match packet.get(..HEADER) {
        Some([DATA, field @ ..]) => {
            let field = u64::from_be_bytes(field.try_into().expect("8 bytes"));
            if field >> KIND_SHIFT == CONTROL {
                Kind::Control
            } else {
                Kind::Data
            }
        }
        _ => Kind::Other,
    }
}

/// What a packet was.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    /// A whole message.
    Message(Bytes),
    /// A fragment, kept until its message is whole.
    Partial,
    /// The peer's last packet on the path it is leaving.
    Marker,
    /// The peer closed the path.
    Close,
    /// A control packet.
    Control(Control),
    /// (Initiator, UDP) the responder sent msg2 again: send it this msg3 again.
    Resend(Bytes),
    /// Nothing (UDP; on TCP each of these is an error).
    Ignored(Ignored),
}

/// Why a packet did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ignored {
    /// Not a packet of a path (a punch keepalive, a stray datagram), or a malformed one.
    Foreign,
    /// A late handshake message.
    Handshake,
    /// A copy, or too old to tell.
    Replay,
    /// It does not decrypt: not from the peer.
    Forged,
    /// A peer's packet this side does not take (a fragment on UDP).
    Refused,
}

/// Counters of an opener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Messages put together.
    pub(crate) messages: u64,
    /// Packets ignored.
    pub(crate) ignored: u64,
}

/// The counters a UDP receiver has taken: the highest and a window below it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Window {
    /// One past the highest counter taken (0: none yet).
    top: u64,
    /// Bit i: counter `top - 1 - i` was taken.
    seen: u128,
}

impl Window {
    fn fresh(&self, counter: u64) -> bool {
        if counter >= self.top {
            return true;
        }
        let back = self.top - 1 - counter;
        back < WINDOW && self.seen & (1 << back) == 0
    }

    fn take(&mut self, counter: u64) {
        if counter >= self.top {
            let shift = counter + 1 - self.top;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.top = counter + 1;
        } else {
            self.seen |= 1 << (self.top - 1 - counter);
        }
    }
}

/// The receiving half of a data phase.
pub(crate) struct Opener {
    keys: Arc<StatelessTransportState>,
    proto: Proto,
    limits: Limits,
    /// TCP: the counter the next data packet must have.
    next: u64,
    /// UDP: the counters taken.
    window: Window,
    partial: BytesMut,
    answer: Option<Answer>,
    counters: Counters,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("proto", &self.proto)
            .field("next", &self.next)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// An opener; `answer` is the initiator's msg3 for a repeated msg2 (UDP).
    pub(crate) fn new(
        keys: Arc<StatelessTransportState>,
        proto: Proto,
        limits: Limits,
        answer: Option<Answer>,
    ) -> Opener {
        Opener {
            keys,
            proto,
            limits,
            next: 0,
            window: Window::default(),
            partial: BytesMut::new(),
            answer,
            counters: Counters::default(),
        }
    }

    /// The counters.
    pub(crate) fn counters(&self) -> Counters {
        self.counters
    }

    /// Takes one packet of the raw path.
    ///
    /// # Errors
    ///
    /// On TCP any packet that cannot be taken ([`Error::BadPacket`]); on both, a
    /// message over the limit ([`Error::TooLarge`]).
    pub(crate) fn open(&mut self, packet: &[u8]) -> Result<Opened, Error> {
        let Some(&kind) = packet.first() else {
            return self.ignore(Ignored::Foreign, "an empty packet");
        };
        match kind {
            DATA => {}
            MSG2 => {
                if let Some(msg3) = self.answer.as_ref().and_then(|a| a.to(packet)) {
                    return Ok(Opened::Resend(msg3.clone()));
                }
                return self.ignore(
                    Ignored::Handshake,
                    "a handshake message after the handshake",
                );
            }
            MSG1 | MSG3 => {
                return self.ignore(
                    Ignored::Handshake,
                    "a handshake message after the handshake",
                )
            }
            _ => return self.ignore(Ignored::Foreign, "not a path packet"),
        }
        if packet.len() < OVERHEAD || packet.len() > self.limits.max_packet {
            return self.ignore(Ignored::Foreign, "a packet of an impossible length");
        }
        let field = u64::from_be_bytes(packet[1..HEADER].try_into().expect("8 bytes"));
        let (what, counter) = (field >> KIND_SHIFT, field & COUNTER_MASK);
        let sealed = &packet[HEADER..];
        let body = sealed.len() - TAG;
        match what {
            CONTROL => return self.control(field, sealed),
            END | MORE | MARKER | CLOSE => {}
            _ => return self.ignore(Ignored::Foreign, "an unknown packet kind"),
        }
        match self.proto {
            Proto::Tcp if counter != self.next => {
                return Err(Error::BadPacket("a packet out of sequence"))
            }
            Proto::Udp if !self.window.fresh(counter) => {
                return self.ignore(Ignored::Replay, "a packet seen before")
            }
            _ => {}
        }
        if matches!(what, MARKER | CLOSE) && body != 0 {
            return self.ignore(Ignored::Foreign, "a marker or close with a body");
        }
        if what == MORE && self.proto == Proto::Udp {
            return self.ignore(Ignored::Refused, "a fragment on udp");
        }
        let whole = self.partial.len() + body;
        if whole > self.limits.max_message {
            return Err(Error::TooLarge {
                len: whole,
                max: self.limits.max_message,
            });
        }
        let start = self.partial.len();
        self.partial.resize(whole, 0);
        if self
            .keys
            .read_message(field, sealed, &mut self.partial[start..])
            .is_err()
        {
            self.partial.truncate(start);
            return self.ignore(Ignored::Forged, "a packet that does not decrypt");
        }
        // Authentic: the peer has the keys, so it had msg3.
        self.answer = None;
        match self.proto {
            Proto::Tcp => self.next += 1,
            Proto::Udp => self.window.take(counter),
        }
        Ok(match what {
            MORE => Opened::Partial,
            MARKER => Opened::Marker,
            CLOSE => Opened::Close,
            _ => {
                self.counters.messages += 1;
                Opened::Message(self.partial.split().freeze())
            }
        })
    }

    fn control(&mut self, field: u64, sealed: &[u8]) -> Result<Opened, Error> {
        if sealed.len() != CONTROL_BODY + TAG {
            return self.ignore(Ignored::Foreign, "a control packet of the wrong length");
        }
        let mut body = [0u8; CONTROL_BODY];
        if self.keys.read_message(field, sealed, &mut body).is_err() {
            return self.ignore(Ignored::Forged, "a control packet that does not decrypt");
        }
        let challenge: [u8; 16] = body[1..].try_into().expect("16 bytes");
        match body[0] {
            1 => Ok(Opened::Control(Control::Probe(challenge))),
            2 => Ok(Opened::Control(Control::Ack(challenge))),
            _ => self.ignore(Ignored::Refused, "an unknown control packet"),
        }
    }

    fn ignore(&mut self, why: Ignored, error: &'static str) -> Result<Opened, Error> {
        match self.proto {
            Proto::Udp => {
                self.counters.ignored += 1;
                Ok(Opened::Ignored(why))
            }
            Proto::Tcp => Err(Error::BadPacket(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::handshake::test_support::pair;
    use super::*;

    const BIG: Limits = Limits {
        max_message: 1 << 20,
        max_packet: MAX_PACKET,
    };

    /// A sealer of the initiator and an opener of the responder, and the way back.
    fn ends(proto: Proto, limits: Limits) -> (Sealer, Opener, Sealer, Opener) {
        let (i, r) = pair(proto);
        let (ik, rk) = (Arc::new(i.transport), Arc::new(r.transport));
        (
            Sealer::new(ik.clone(), proto, limits),
            Opener::new(rk.clone(), proto, limits, None),
            Sealer::new(rk, proto, limits),
            Opener::new(ik, proto, limits, i.answer),
        )
    }

    fn udp_limits() -> Limits {
        Limits::new(Proto::Udp, 1 << 20, 1 << 20).unwrap()
    }

    fn sealed(s: &mut Sealer, plain: &[u8]) -> Vec<Vec<u8>> {
        let mut out = BytesMut::new();
        s.seal(plain, &mut out).unwrap();
        records(&out).map(<[u8]>::to_vec).collect()
    }

    fn message(o: &mut Opener, packets: &[Vec<u8>]) -> Bytes {
        let (last, init) = packets.split_last().unwrap();
        for p in init {
            assert_eq!(o.open(p).unwrap(), Opened::Partial);
        }
        match o.open(last).unwrap() {
            Opened::Message(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn messages_cross_both_ways_and_the_plaintext_is_not_on_the_wire() {
        for proto in [Proto::Tcp, Proto::Udp] {
            let (mut is, mut ro, mut rs, mut io) = ends(proto, udp_limits());
            for plain in [&b"a recognisable payload 0123456789"[..], b"", &[0u8; 1000]] {
                let packets = sealed(&mut is, plain);
                assert_eq!(packets.len(), 1);
                assert_eq!(packets[0].len(), plain.len() + OVERHEAD);
                if plain.len() > 8 {
                    assert!(!packets[0].windows(8).any(|w| w == &plain[..8]));
                }
                assert_eq!(&message(&mut ro, &packets)[..], plain);
                let back = sealed(&mut rs, plain);
                assert_eq!(&message(&mut io, &back)[..], plain);
            }
            assert_eq!(ro.counters().messages, 3);
        }
    }

    #[test]
    fn a_large_message_travels_in_fragments_on_tcp_and_is_refused_on_udp() {
        let (mut s, mut o, ..) = ends(Proto::Tcp, BIG);
        let plain: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let packets = sealed(&mut s, &plain);
        assert_eq!(packets.len(), 4, "65,519 bytes a fragment");
        assert_eq!(&message(&mut o, &packets)[..], &plain[..]);

        let limits = udp_limits();
        assert_eq!(limits.max_message, 65_507 - OVERHEAD);
        let (mut s, ..) = ends(Proto::Udp, limits);
        let mut out = BytesMut::new();
        match s.seal(&[0; 65_483], &mut out) {
            Err(Error::TooLarge { len, max }) => assert_eq!((len, max), (65_483, 65_482)),
            other => panic!("{other:?}"),
        }
        assert!(out.is_empty(), "nothing appended");
        s.seal(&[0; 65_482], &mut out).unwrap();
    }

    #[test]
    fn a_message_over_the_limit_is_refused_by_the_sender_and_by_the_receiver() {
        let small = Limits {
            max_message: 100_000,
            max_packet: MAX_PACKET,
        };
        let (mut s, _, _, _) = ends(Proto::Tcp, small);
        let mut out = BytesMut::new();
        assert!(matches!(
            s.seal(&[1; 100_001], &mut out),
            Err(Error::TooLarge {
                len: 100_001,
                max: 100_000
            })
        ));
        // A peer that sends more than this side takes ends the path, before its
        // fragments pile up past the limit.
        let (i, r) = pair(Proto::Tcp);
        let mut s = Sealer::new(Arc::new(i.transport), Proto::Tcp, BIG);
        let mut o = Opener::new(Arc::new(r.transport), Proto::Tcp, small, None);
        let packets = sealed(&mut s, &[1; 100_001]);
        assert_eq!(o.open(&packets[0]).unwrap(), Opened::Partial);
        assert!(matches!(
            o.open(&packets[1]),
            Err(Error::TooLarge {
                len: 100_001,
                max: 100_000
            })
        ));
    }

    #[test]
    fn udp_refuses_copies_and_packets_older_than_the_window_and_takes_reordered_ones() {
        let (mut s, mut o, ..) = ends(Proto::Udp, udp_limits());
        let packets: Vec<Vec<u8>> = (0..300u32)
            .map(|i| sealed(&mut s, &i.to_be_bytes()).remove(0))
            .collect();
        assert!(matches!(o.open(&packets[5]), Ok(Opened::Message(_))));
        assert_eq!(
            o.open(&packets[5]).unwrap(),
            Opened::Ignored(Ignored::Replay)
        );
        assert!(
            matches!(o.open(&packets[2]), Ok(Opened::Message(_))),
            "reordered"
        );
        assert!(matches!(o.open(&packets[200]), Ok(Opened::Message(_))));
        assert!(
            matches!(o.open(&packets[73]), Ok(Opened::Message(_))),
            "127 back"
        );
        assert_eq!(
            o.open(&packets[72]).unwrap(),
            Opened::Ignored(Ignored::Replay),
            "128 back: too old"
        );
        assert_eq!(
            o.open(&packets[2]).unwrap(),
            Opened::Ignored(Ignored::Replay)
        );
        assert!(matches!(o.open(&packets[299]), Ok(Opened::Message(_))));
        assert_eq!(
            o.open(&packets[200]).unwrap(),
            Opened::Ignored(Ignored::Replay)
        );
        assert_eq!(o.counters().ignored, 4);
    }

    #[test]
    fn tcp_takes_each_counter_once_in_order_and_nothing_else() {
        let (mut s, mut o, ..) = ends(Proto::Tcp, BIG);
        let a = sealed(&mut s, b"a");
        let b = sealed(&mut s, b"b");
        let c = sealed(&mut s, b"c");
        assert!(matches!(o.open(&a[0]), Ok(Opened::Message(_))));
        assert!(matches!(o.open(&a[0]), Err(Error::BadPacket(_))), "a copy");
        assert!(
            matches!(o.open(&c[0]), Err(Error::BadPacket(_))),
            "b was cut out"
        );
        assert!(matches!(o.open(&b[0]), Ok(Opened::Message(m)) if &m[..] == b"b"));
    }

    #[test]
    fn a_tampered_packet_does_not_open() {
        for proto in [Proto::Udp, Proto::Tcp] {
            let (mut s, mut o, ..) = ends(proto, udp_limits());
            let good = sealed(&mut s, b"payload").remove(0);
            for at in [1, 5, HEADER, good.len() - 1] {
                let mut bad = good.clone();
                bad[at] ^= 0x01;
                match (proto, o.open(&bad)) {
                    (Proto::Udp, Ok(Opened::Ignored(Ignored::Forged | Ignored::Replay)))
                    | (Proto::Tcp, Err(Error::BadPacket(_))) => {}
                    (_, other) => panic!("{proto} byte {at}: {other:?}"),
                }
            }
            // A flipped kind bit (a message made a fragment) is part of the nonce too.
            let mut kind = good.clone();
            kind[1] ^= 0x10;
            assert!(!matches!(
                o.open(&kind),
                Ok(Opened::Message(_) | Opened::Partial)
            ));
            assert!(matches!(o.open(&good), Ok(Opened::Message(_))), "{proto}");
        }
    }

    #[test]
    fn foreign_datagrams_and_late_handshake_messages_are_ignored_on_udp() {
        let (_, mut o, ..) = ends(Proto::Udp, udp_limits());
        let keepalive = b"\xffp2punch\x03\x00........................";
        for (p, why) in [
            (&keepalive[..], Ignored::Foreign),
            (b"", Ignored::Foreign),
            (&[DATA; 10], Ignored::Foreign),
            (&[MSG1; 33], Ignored::Handshake),
            (&[MSG3; 114], Ignored::Handshake),
        ] {
            assert_eq!(o.open(p).unwrap(), Opened::Ignored(why), "{p:?}");
        }
        let (_, mut o, ..) = ends(Proto::Tcp, BIG);
        assert!(matches!(o.open(keepalive), Err(Error::BadPacket(_))));
    }

    #[test]
    fn the_initiator_answers_a_repeated_msg2_until_the_responder_is_heard() {
        let (_, _, mut rs, mut io) = ends(Proto::Udp, udp_limits());
        let msg2 = io.answer.as_ref().unwrap().msg2.clone();
        assert!(matches!(io.open(&msg2), Ok(Opened::Resend(m)) if m.len() == 114));
        assert_eq!(
            io.open(&[MSG2; 129]).unwrap(),
            Opened::Ignored(Ignored::Handshake),
            "not the msg2 it took"
        );
        let data = sealed(&mut rs, b"the responder speaks").remove(0);
        assert!(matches!(io.open(&data), Ok(Opened::Message(_))));
        assert_eq!(
            io.open(&msg2).unwrap(),
            Opened::Ignored(Ignored::Handshake),
            "the responder had msg3"
        );
    }

    #[test]
    fn markers_closes_and_controls_open_as_what_they_are() {
        for proto in [Proto::Tcp, Proto::Udp] {
            let (mut s, mut o, ..) = ends(proto, udp_limits());
            let mut out = BytesMut::new();
            s.seal(b"before", &mut out).unwrap();
            s.seal_control(Control::Probe([1; 16]), &mut out).unwrap();
            s.seal_marker(&mut out).unwrap();
            s.seal_control(Control::Ack([2; 16]), &mut out).unwrap();
            s.seal(b"after", &mut out).unwrap();
            s.seal_close(&mut out).unwrap();
            let kinds: Vec<Kind> = records(&out).map(kind_of).collect();
            use Kind::{Control as C, Data as D};
            assert_eq!(kinds, [D, C, D, C, D, D]);
            let opened: Vec<Opened> = records(&out).map(|p| o.open(p).unwrap()).collect();
            assert_eq!(
                opened,
                [
                    Opened::Message(Bytes::from_static(b"before")),
                    Opened::Control(Control::Probe([1; 16])),
                    Opened::Marker,
                    Opened::Control(Control::Ack([2; 16])),
                    Opened::Message(Bytes::from_static(b"after")),
                    Opened::Close,
                ],
                "{proto}: control packets are counted apart, so tcp's sequence holds"
            );
        }
    }

    #[test]
    fn records_split_a_buffer_and_stop_at_a_cut_one() {
        let mut buf = BytesMut::new();
        for p in [&b"one"[..], b"", b"three"] {
            buf.put_u32(p.len() as u32);
            buf.put_slice(p);
        }
        let all: Vec<&[u8]> = records(&buf).collect();
        assert_eq!(all, [&b"one"[..], b"", b"three"]);
        assert_eq!(records(&buf[..buf.len() - 1]).count(), 2);
    }

    #[test]
    fn a_raw_pipe_too_small_for_a_packet_is_unfit() {
        assert!(matches!(
            Limits::new(Proto::Tcp, OVERHEAD, 1000),
            Err(Error::Unfit(_))
        ));
        let l = Limits::new(Proto::Tcp, 1 << 20, 5 << 20).unwrap();
        assert_eq!(
            (l.max_packet, l.max_message, l.fragment()),
            (65_544, 5 << 20, 65_519)
        );
        let l = Limits::new(Proto::Udp, 1200, 1 << 20).unwrap();
        assert_eq!((l.max_packet, l.max_message), (1200, 1175));
    }
}
