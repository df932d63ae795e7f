//! The hello both sides of a TCP punch exchange on every connection before trusting it,
//! and its sans-IO handshake.
//!
//! Both LANs of two peers may use the same private addresses, so a connection can reach
//! the wrong host, this host itself included. Each message proves knowledge of the
//! punch's [`HelloKey`] (the rendezvous's [`SessionKey`](crate::traverse::punch::SessionKey),
//! derived from the nonces the two sides exchanged over sealed signalling)
//! and names its step, so a connection to yourself (which hears its own offer) or to a
//! host running another punch is refused.
//!
//! Wire form, [`HELLO_LEN`] bytes: `"P2TH"`, version `1`, the kind (`1` offer, `2`
//! answer, `3` confirm), then the first 16 bytes of HMAC-SHA256 under the key over
//! `"p2pipe tcp punch hello"` and the kind byte.
//!
//! The initiator sends an offer; the responder checks it and answers; the initiator
//! checks the answer and confirms on the first connection that answered, and only on
//! that one; the responder takes the connection that was confirmed.

use std::fmt;

use bytes::{BufMut, BytesMut};
use hmac::{KeyInit, Mac as _};
use sha2::Sha256;

use super::super::Role;
use super::Error;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The length of every hello on the wire.
pub const HELLO_LEN: usize = 22;

const MAGIC: &[u8; 4] = b"P2TH";
const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
const LABEL: &[u8] = b"p2pipe tcp punch hello";

/// The secret both sides of one punch share: it proves a connection reached the right
/// peer. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct HelloKey([u8; 32]);

impl HelloKey {
    /// A key from 32 secret bytes; a rendezvous makes it from its session key
    /// (`HelloKey::from(&agreement.key)`).
    pub fn new(bytes: [u8; 32]) -> Self {
        HelloKey(bytes)
    }

    fn mac(&self, kind: HelloKind) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("hmac takes any key length");
        m.update(LABEL);
        m.update(&[kind as u8]);
        m
    }
}

impl fmt::Debug for HelloKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HelloKey(..)")
    }
}

/// The step a hello stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HelloKind {
    /// The initiator's first message.
    Offer = 1,
    /// The responder's reply to a valid offer.
    Answer = 2,
    /// The initiator's choice of this connection.
    Confirm = 3,
}

/// One hello message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Its step.
    pub kind: HelloKind,
    /// The truncated HMAC over the step.
    pub tag: [u8; TAG_LEN],
}

impl Hello {
    /// The hello of step `kind` under `key`.
    pub fn new(key: &HelloKey, kind: HelloKind) -> Self {
        let full = key.mac(kind).finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        Hello { kind, tag }
    }

    /// Whether its tag was made with `key` (compared in constant time).
    pub fn verify(&self, key: &HelloKey) -> bool {
        key.mac(self.kind).verify_truncated_left(&self.tag).is_ok()
    }

    /// Reads a hello from exactly [`HELLO_LEN`] bytes.
    ///
    /// # Errors
    ///
    /// [`Error::MalformedHello`]: another length, magic, version or kind.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let bytes: &[u8; HELLO_LEN] = bytes
            .try_into()
            .map_err(|_| Error::MalformedHello("not 22 bytes long"))?;
        if &bytes[..4] != MAGIC {
            return Err(Error::MalformedHello("no p2th magic"));
        }
        if bytes[4] != VERSION {
            return Err(Error::MalformedHello("an unknown version"));
        }
        let kind = match bytes[5] {
            1 => HelloKind::Offer,
            2 => HelloKind::Answer,
            3 => HelloKind::Confirm,
            _ => return Err(Error::MalformedHello("an unknown kind")),
        };
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&bytes[6..]);
        Ok(Hello { kind, tag })
    }

    /// Appends the wire form.
    pub fn emit(&self, out: &mut BytesMut) {
        out.reserve(HELLO_LEN);
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_u8(self.kind as u8);
        out.put_slice(&self.tag);
    }

    /// The length of the wire form: [`HELLO_LEN`].
    pub fn emit_len(&self) -> usize {
        HELLO_LEN
    }
}

/// What the driver does after a hello.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send this hello, then read the next.
    Send(Hello),
    /// (Initiator) the peer answered: this connection may be chosen, by sending
    /// [`Handshake::confirm`] on it.
    Verified,
    /// (Responder) the initiator chose this connection: use it.
    Chosen,
    /// Not the peer of this punch: drop the connection.
    Refused(&'static str),
}

/// One connection's handshake, sans-IO: hellos in, [`Step`]s out.
#[derive(Debug, Clone)]
pub struct Handshake {
    key: HelloKey,
    role: Role,
    answered: bool,
}

impl Handshake {
    /// The handshake of the side playing `role` in the punch keyed by `key`.
    pub fn new(key: HelloKey, role: Role) -> Self {
        Handshake {
            key,
            role,
            answered: false,
        }
    }

    /// What to send first: the initiator's offer; the responder waits.
    pub fn start(&self) -> Option<Hello> {
        (self.role == Role::Initiator).then(|| Hello::new(&self.key, HelloKind::Offer))
    }

    /// The initiator's confirmation, sent on the one connection it chose.
    pub fn confirm(&self) -> Hello {
        Hello::new(&self.key, HelloKind::Confirm)
    }

    /// Takes the peer's next hello.
    pub fn on_hello(&mut self, hello: &Hello) -> Step {
        if !hello.verify(&self.key) {
            return Step::Refused("a hello under another key (another host or punch)");
        }
        match (self.role, hello.kind, self.answered) {
            (Role::Initiator, HelloKind::Answer, _) => Step::Verified,
            (Role::Responder, HelloKind::Offer, false) => {
                self.answered = true;
                Step::Send(Hello::new(&self.key, HelloKind::Answer))
            }
            (Role::Responder, HelloKind::Confirm, true) => Step::Chosen,
            (_, HelloKind::Offer, _) | (Role::Initiator, HelloKind::Confirm, _) => {
                Step::Refused("a hello from the same role (a connection to this host itself?)")
            }
            _ => Step::Refused("a hello out of order"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::traverse::punch::SessionKey;
    use crate::Proto;

    fn key() -> HelloKey {
        HelloKey::from(&SessionKey::derive(&[1; 16], &[2; 16], Proto::Tcp))
    }

    fn wire(h: &Hello) -> BytesMut {
        let mut out = BytesMut::new();
        h.emit(&mut out);
        out
    }

    #[test]
    fn a_hello_survives_the_wire_and_verifies_only_under_its_key() {
        for kind in [HelloKind::Offer, HelloKind::Answer, HelloKind::Confirm] {
            let h = Hello::new(&key(), kind);
            let bytes = wire(&h);
            assert_eq!(bytes.len(), h.emit_len());
            let back = Hello::parse(&bytes).unwrap();
            assert_eq!(back, h);
            assert!(back.verify(&key()));
            let udp = SessionKey::derive(&[1; 16], &[2; 16], Proto::Udp);
            assert!(
                !back.verify(&HelloKey::from(&udp)),
                "another protocol's key"
            );
        }
    }

    #[test]
    fn an_offer_matches_the_fuzz_seed_written_by_fuzz_seed_py() {
        let wire = wire(&Hello::new(&key(), HelloKind::Offer));
        let hex: String = wire.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "50325448010167c808703f4c775b295ea56fb878fe71");
    }

    #[test]
    fn malformed_hellos_are_refused_with_a_reason() {
        let good = wire(&Hello::new(&key(), HelloKind::Offer));
        let cases: [(&[u8], &str); 4] = [
            (&good[..HELLO_LEN - 1], "not 22 bytes long"),
            (&[b"XXXX".as_slice(), &good[4..]].concat(), "no p2th magic"),
            (
                &[&good[..4], &[9], &good[5..]].concat(),
                "an unknown version",
            ),
            (&[&good[..5], &[0], &good[6..]].concat(), "an unknown kind"),
        ];
        for (bytes, why) in cases {
            match Hello::parse(bytes) {
                Err(Error::MalformedHello(got)) => assert_eq!(got, why),
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_initiator_offers_and_the_responder_takes_the_confirmed_connection() {
        let mut i = Handshake::new(key(), Role::Initiator);
        let mut r = Handshake::new(key(), Role::Responder);
        assert_eq!(r.start(), None);
        let offer = i.start().expect("the initiator speaks first");
        let Step::Send(answer) = r.on_hello(&offer) else {
            panic!("the responder answers a valid offer");
        };
        assert_eq!(i.on_hello(&answer), Step::Verified);
        assert_eq!(r.on_hello(&i.confirm()), Step::Chosen);
    }

    #[test]
    fn a_connection_to_this_host_itself_is_refused() {
        let mut i = Handshake::new(key(), Role::Initiator);
        let own = i.start().unwrap();
        assert!(matches!(i.on_hello(&own), Step::Refused(why) if why.contains("same role")));
        let mut r = Handshake::new(key(), Role::Responder);
        let _ = r.on_hello(&own);
        let Step::Send(own_answer) = Handshake::new(key(), Role::Responder).on_hello(&own) else {
            panic!("answers");
        };
        assert!(matches!(r.on_hello(&own_answer), Step::Refused(_)));
    }

    #[test]
    fn another_punch_or_an_unanswered_confirm_is_refused() {
        let other = HelloKey::new([7; 32]);
        let mut r = Handshake::new(key(), Role::Responder);
        let stranger = Hello::new(&other, HelloKind::Offer);
        assert!(matches!(r.on_hello(&stranger), Step::Refused(why) if why.contains("another key")));
        let mut fresh = Handshake::new(key(), Role::Responder);
        let early = Hello::new(&key(), HelloKind::Confirm);
        assert_eq!(
            fresh.on_hello(&early),
            Step::Refused("a hello out of order")
        );
    }

    #[test]
    fn a_hello_key_does_not_show_in_debug() {
        assert_eq!(format!("{:?}", HelloKey::new([0xab; 32])), "HelloKey(..)");
    }
}
