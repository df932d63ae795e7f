//! The path handshake, sans-IO: Noise XX over the node keys, packets and `now` in,
//! packets to send and the outcome out.
//!
//! ```text
//! initiator                                     responder
//!   msg1  [1] e                         ->
//!         <-  [2] e, ee, s, es, {responder's ed25519 key}       msg2
//!   msg3  [3] s, se, {initiator's ed25519 key, hello}  ->
//! ```
//!
//! The Noise static keys are the X25519 forms of the node keys (the secret scalar and
//! the Montgomery form, `identity::x25519_secret` and `x25519_public`); each side sends
//! its ed25519 key encrypted in its payload, and the other takes it only if its
//! Montgomery form is the static key Noise authenticated. The prologue is
//! [`DOMAIN`], `/` and the protocol (`tcp` or `udp`), so the two ends must agree on
//! both. The initiator always names the node it wants; the responder takes any node
//! ([`Expect::Any`], a listener learning who called) or one ([`Expect::Key`]). Both
//! refuse their own key ([`Error::ReachedSelf`]: a peer's private address that is also
//! one of this host's leads back here) and another node's ([`Error::WrongPeer`]).
//!
//! Every packet starts with its type: [`MSG1`], [`MSG2`], [`MSG3`], and the data
//! phase's (`secure.rs`). Each handshake message has one exact length, checked before
//! anything else. On UDP a packet that is not the expected step (a punch keepalive, a
//! stray datagram, a forgery that does not decrypt, a copy) is ignored and counted; on
//! TCP it ends the handshake.
//!
//! UDP loses packets, so on UDP the initiator sends msg1 again (from
//! [`Timing::first`], each gap twice the last, up to [`Timing::max`]) until msg2
//! comes; the responder sends its msg2 again when msg1 comes again and on its own
//! timer until msg3 comes; and the initiator, done, answers a repeated msg2 with its
//! msg3 again ([`Answer`], which the data phase keeps).

use std::time::{Duration, Instant};

use bytes::Bytes;
use snow::{HandshakeState, StatelessTransportState};

use super::Error;
use crate::identity::{x25519_public, Identity, NodeId, PublicKey};
use crate::Proto;

/// The Noise protocol of every path.
pub(crate) const PATTERN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// The version label at the head of the prologue.
pub(crate) const DOMAIN: &str = "p2pipe path v1";

/// The type of the initiator's first message.
pub(crate) const MSG1: u8 = 1;
/// The type of the responder's message.
pub(crate) const MSG2: u8 = 2;
/// The type of the initiator's second message.
pub(crate) const MSG3: u8 = 3;

const KEY: usize = 32;
const TAG: usize = 16;
/// msg2's payload: the responder's ed25519 key.
const MSG2_PAYLOAD: usize = KEY;
/// msg3's payload: the initiator's ed25519 key and the hello.
const MSG3_PAYLOAD: usize = KEY + HELLO_LEN;
/// The bytes of each message on the wire, type included.
pub(crate) const MSG1_LEN: usize = 1 + KEY;
pub(crate) const MSG2_LEN: usize = 1 + KEY + (KEY + TAG) + (MSG2_PAYLOAD + TAG);
pub(crate) const MSG3_LEN: usize = 1 + (KEY + TAG) + (MSG3_PAYLOAD + TAG);

/// The bytes of a [`Hello`] in msg3.
const HELLO_LEN: usize = 1 + 16;

/// What the initiator tells the responder in msg3, authenticated: how this path was
/// made and a token, so that a node can match a connection it was asked to make (a
/// reverse connect) to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Hello {
    /// How the path was made (the node's numbering).
    pub(crate) strategy: u8,
    /// The request's token.
    pub(crate) token: [u8; 16],
}

impl Hello {
    fn emit(&self, out: &mut [u8; HELLO_LEN]) {
        out[0] = self.strategy;
        out[1..].copy_from_slice(&self.token);
    }

    fn parse(bytes: &[u8; HELLO_LEN]) -> Hello {
        let mut token = [0u8; 16];
        token.copy_from_slice(&bytes[1..]);
        Hello {
            strategy: bytes[0],
            token,
        }
    }
}

/// Whom a responder takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Any node but this one (a listener: it learns who called).
    Any,
    /// This node only (a punch or a reverse connect, where the peer is known).
    Key(PublicKey),
}

/// The pace of UDP resends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// The first gap before a message is sent again.
    pub(crate) first: Duration,
    /// The longest gap.
    pub(crate) max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            first: Duration::from_millis(250),
            max: Duration::from_secs(2),
        }
    }
}

/// The initiator's msg3 for a repeated msg2: the responder did not get it the first
/// time. Kept by the data phase on UDP until the responder is heard from.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) msg2: Bytes,
    pub(crate) msg3: Bytes,
}

impl Answer {
    /// msg3 again if `packet` is the msg2 this side took.
    pub(crate) fn to(&self, packet: &[u8]) -> Option<&Bytes> {
        (packet == &self.msg2[..]).then_some(&self.msg3)
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Answer(..)")
    }
}

/// A finished handshake.
pub(crate) struct Done {
    /// The peer's node key, proven.
    pub(crate) peer: PublicKey,
    /// The initiator's hello (its own, on the initiator).
    pub(crate) hello: Hello,
    /// The keys of the data phase.
    pub(crate) transport: StatelessTransportState,
    /// Whether this side initiated.
    pub(crate) initiator: bool,
    /// (Initiator, UDP) msg3 for a repeated msg2.
    pub(crate) answer: Option<Answer>,
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Done")
            .field("peer", &NodeId::from_key(&self.peer))
            .field("hello", &self.hello)
            .field("initiator", &self.initiator)
            .finish_non_exhaustive()
    }
}

/// Why a packet did nothing (UDP only: on TCP each of these is an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ignored {
    /// Not a handshake packet at all (a punch keepalive, a stray datagram), or one of
    /// the wrong length.
    Foreign,
    /// A handshake message out of turn, or another attempt's.
    Unexpected,
    /// A copy of a message already taken (answered again where that helps).
    Repeat,
    /// A message of the right shape that does not decrypt: not from the peer.
    Forged,
}

/// What a packet did.
#[must_use]
#[derive(Debug)]
pub(crate) enum Step {
    /// Taken; the handshake goes on (drain [`Handshake::poll_transmit`]).
    Continue,
    /// The handshake is done (drain [`Handshake::poll_transmit`] first: msg3).
    Done(Box<Done>),
    /// Nothing (UDP).
    Ignored(Ignored),
}

/// Counters of a handshake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Messages sent again.
    pub(crate) resent: u32,
    /// Packets ignored.
    pub(crate) ignored: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// (Initiator) msg1 sent, waiting for msg2.
    SentFirst,
    /// (Responder) waiting for msg1.
    Waiting,
    /// (Responder) msg2 sent, waiting for msg3.
    Answered,
    /// Done or failed: nothing more.
    Over,
}

/// One side of a path handshake (see the module docs).
pub(crate) struct Handshake {
    noise: Option<HandshakeState>,
    initiator: bool,
    phase: Phase,
    proto: Proto,
    me: PublicKey,
    expect: Expect,
    hello: Hello,
    /// The initiator's msg1, sent or (responder) taken: its copies are recognised.
    first: Option<Bytes>,
    /// This side's last message, sent again on loss.
    last: Option<Bytes>,
    outbox: Option<Bytes>,
    timing: Timing,
    resend_at: Option<Instant>,
    gap: Duration,
    counters: Counters,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("phase", &self.phase)
            .field("proto", &self.proto)
            .field("me", &NodeId::from_key(&self.me))
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn prologue(proto: Proto) -> [u8; DOMAIN.len() + 4] {
    let mut p = [0u8; DOMAIN.len() + 4];
    p[..DOMAIN.len()].copy_from_slice(DOMAIN.as_bytes());
    p[DOMAIN.len()] = b'/';
    p[DOMAIN.len() + 1..].copy_from_slice(match proto {
        Proto::Tcp => b"tcp",
        Proto::Udp => b"udp",
    });
    p
}

fn builder_for(
    identity: &Identity,
    proto: Proto,
    initiator: bool,
) -> Result<HandshakeState, Error> {
    let params = PATTERN.parse().expect("a pattern snow knows");
    let secret = identity.x25519_secret();
    let prologue = prologue(proto);
    let builder = snow::Builder::new(params)
        .local_private_key(secret.as_bytes())
        .and_then(|b| b.prologue(&prologue))
        .map_err(|_| Error::Crypto("noise refused the node key"))?;
    let built = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    };
    built.map_err(|_| Error::Crypto("noise could not start a handshake"))
}

impl Handshake {
    /// The initiator's side of a handshake with the node `peer` over `proto`, carrying
    /// `hello`; msg1 is ready to send at once.
    pub(crate) fn initiator(
        identity: &Identity,
        peer: &PublicKey,
        hello: Hello,
        proto: Proto,
        timing: Timing,
        now: Instant,
    ) -> Result<Handshake, Error> {
        let mut noise = builder_for(identity, proto, true)?;
        // Snow asks for room for a tag even where there is none to write.
        let mut msg1 = [0u8; MSG1_LEN + TAG];
        msg1[0] = MSG1;
        let n = noise
            .write_message(&[], &mut msg1[1..])
            .map_err(|_| Error::Crypto("noise could not write msg1 (random source?)"))?;
        debug_assert_eq!(n + 1, MSG1_LEN);
        let msg1 = Bytes::copy_from_slice(&msg1[..MSG1_LEN]);
        let mut hs = Handshake::new(identity, Expect::Key(*peer), hello, proto, timing, noise);
        hs.phase = Phase::SentFirst;
        hs.first = Some(msg1.clone());
        hs.send(msg1, now);
        Ok(hs)
    }

    /// The responder's side over `proto`, taking the nodes `expect` allows; it waits for
    /// msg1.
    pub(crate) fn responder(
        identity: &Identity,
        expect: Expect,
        proto: Proto,
        timing: Timing,
    ) -> Result<Handshake, Error> {
        let noise = builder_for(identity, proto, false)?;
        let mut hs = Handshake::new(identity, expect, Hello::default(), proto, timing, noise);
        hs.phase = Phase::Waiting;
        Ok(hs)
    }

    fn new(
        identity: &Identity,
        expect: Expect,
        hello: Hello,
        proto: Proto,
        timing: Timing,
        noise: HandshakeState,
    ) -> Handshake {
        Handshake {
            initiator: noise.is_initiator(),
            noise: Some(noise),
            phase: Phase::Over,
            proto,
            me: identity.public(),
            expect,
            hello,
            first: None,
            last: None,
            outbox: None,
            timing,
            resend_at: None,
            gap: timing.first,
            counters: Counters::default(),
        }
    }

    /// The counters.
    pub(crate) fn counters(&self) -> Counters {
        self.counters
    }

    /// The next packet to send, if any.
    pub(crate) fn poll_transmit(&mut self) -> Option<Bytes> {
        self.outbox.take()
    }

    /// When [`Handshake::on_timeout`] has something to do (UDP only).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.resend_at
    }

    /// Sends the last message again if its time has come (UDP).
    pub(crate) fn on_timeout(&mut self, now: Instant) {
        let (Some(at), Some(last)) = (self.resend_at, &self.last) else {
            return;
        };
        if now < at {
            return;
        }
        self.outbox = Some(last.clone());
        self.counters.resent += 1;
        self.gap = (self.gap * 2).min(self.timing.max);
        self.resend_at = Some(now + self.gap);
    }

    /// Queues `msg` as this side's last message, resent on UDP until answered.
    fn send(&mut self, msg: Bytes, now: Instant) {
        if self.proto == Proto::Udp {
            self.gap = self.timing.first;
            self.resend_at = Some(now + self.gap);
            self.last = Some(msg.clone());
        }
        self.outbox = Some(msg);
    }

    /// Takes a packet from the raw path.
    ///
    /// # Errors
    ///
    /// The handshake is over, refused: [`Error::ReachedSelf`], [`Error::WrongPeer`],
    /// [`Error::Refused`] (on TCP, any packet that is not the next step).
    pub(crate) fn on_packet(&mut self, packet: &[u8], now: Instant) -> Result<Step, Error> {
        let r = self.take(packet, now);
        if r.is_err() {
            self.over();
        }
        r
    }

    fn take(&mut self, packet: &[u8], now: Instant) -> Result<Step, Error> {
        let Some(&kind) = packet.first() else {
            return self.ignore(Ignored::Foreign, "an empty packet");
        };
        let len = match kind {
            MSG1 => MSG1_LEN,
            MSG2 => MSG2_LEN,
            MSG3 => MSG3_LEN,
            _ => return self.ignore(Ignored::Foreign, "not a handshake message"),
        };
        if packet.len() != len {
            return self.ignore(Ignored::Foreign, "a handshake message of the wrong length");
        }
        match (self.phase, kind) {
            (Phase::SentFirst, MSG2) => self.on_msg2(packet),
            (Phase::SentFirst, MSG1) if self.first.as_deref() == Some(packet) => {
                Err(Error::ReachedSelf)
            }
            (Phase::Waiting, MSG1) => self.on_msg1(packet, now),
            (Phase::Answered, MSG1) if self.first.as_deref() == Some(packet) => {
                // The initiator did not get msg2.
                if let Some(last) = &self.last {
                    self.outbox = Some(last.clone());
                    self.counters.resent += 1;
                }
                self.ignore(Ignored::Repeat, "msg1 again")
            }
            (Phase::Answered, MSG2) if self.last.as_deref() == Some(packet) => {
                Err(Error::ReachedSelf)
            }
            (Phase::Answered, MSG3) => self.on_msg3(packet),
            _ => self.ignore(Ignored::Unexpected, "a handshake message out of turn"),
        }
    }

    /// Ignores a packet on UDP; refuses it on TCP.
    fn ignore(&mut self, why: Ignored, refusal: &'static str) -> Result<Step, Error> {
        match self.proto {
            Proto::Udp => {
                self.counters.ignored += 1;
                Ok(Step::Ignored(why))
            }
            Proto::Tcp => Err(Error::Refused(refusal)),
        }
    }

    fn noise(&mut self) -> &mut HandshakeState {
        self.noise
            .as_mut()
            .expect("a handshake in progress has its state")
    }

    fn on_msg1(&mut self, packet: &[u8], now: Instant) -> Result<Step, Error> {
        let mut none = [0u8; 0];
        if self.noise().read_message(&packet[1..], &mut none).is_err() {
            return self.ignore(Ignored::Forged, "a malformed msg1");
        }
        self.first = Some(Bytes::copy_from_slice(packet));
        let mut msg2 = [0u8; MSG2_LEN];
        msg2[0] = MSG2;
        let me = *self.me.as_bytes();
        self.noise()
            .write_message(&me, &mut msg2[1..])
            .map_err(|_| Error::Crypto("noise could not write msg2 (random source?)"))?;
        self.phase = Phase::Answered;
        self.send(Bytes::copy_from_slice(&msg2), now);
        Ok(Step::Continue)
    }

    fn on_msg2(&mut self, packet: &[u8]) -> Result<Step, Error> {
        let mut payload = [0u8; MSG2_PAYLOAD];
        match self.noise().read_message(&packet[1..], &mut payload) {
            Ok(MSG2_PAYLOAD) => {}
            Ok(_) => return Err(Error::Refused("msg2 with a payload of the wrong length")),
            Err(_) => return self.ignore(Ignored::Forged, "msg2 does not decrypt"),
        }
        let peer = self.proven(&payload)?;
        let mut body = [0u8; MSG3_PAYLOAD];
        body[..KEY].copy_from_slice(self.me.as_bytes());
        let mut hello = [0u8; HELLO_LEN];
        self.hello.emit(&mut hello);
        body[KEY..].copy_from_slice(&hello);
        let mut msg3 = [0u8; MSG3_LEN];
        msg3[0] = MSG3;
        self.noise()
            .write_message(&body, &mut msg3[1..])
            .map_err(|_| Error::Crypto("noise could not write msg3"))?;
        let msg3 = Bytes::copy_from_slice(&msg3);
        let answer = (self.proto == Proto::Udp).then(|| Answer {
            msg2: Bytes::copy_from_slice(packet),
            msg3: msg3.clone(),
        });
        self.outbox = Some(msg3);
        self.finish(peer, self.hello, answer)
    }

    fn on_msg3(&mut self, packet: &[u8]) -> Result<Step, Error> {
        let mut payload = [0u8; MSG3_PAYLOAD];
        match self.noise().read_message(&packet[1..], &mut payload) {
            Ok(MSG3_PAYLOAD) => {}
            Ok(_) => return Err(Error::Refused("msg3 with a payload of the wrong length")),
            Err(_) => return self.ignore(Ignored::Forged, "msg3 does not decrypt"),
        }
        let peer = self.proven(&payload[..KEY])?;
        let hello = Hello::parse(payload[KEY..].try_into().expect("the hello's length"));
        self.finish(peer, hello, None)
    }

    /// The ed25519 key the peer sent, if it is the one its Noise static key comes from,
    /// not this node's, and one this side takes.
    fn proven(&mut self, key: &[u8]) -> Result<PublicKey, Error> {
        let key: [u8; KEY] = key.try_into().expect("a key's length");
        let peer = PublicKey::from_bytes(&key)
            .map_err(|_| Error::Refused("the peer's key is not a curve point"))?;
        let noise_static = self.noise().get_remote_static();
        if noise_static != Some(x25519_public(&peer).as_bytes().as_slice()) {
            return Err(Error::Refused(
                "the peer's node key is not the one its noise key comes from",
            ));
        }
        if peer == self.me {
            return Err(Error::ReachedSelf);
        }
        match self.expect {
            Expect::Key(want) if want != peer => Err(Error::WrongPeer {
                expected: NodeId::from_key(&want),
                reached: NodeId::from_key(&peer),
            }),
            _ => Ok(peer),
        }
    }

    fn finish(
        &mut self,
        peer: PublicKey,
        hello: Hello,
        answer: Option<Answer>,
    ) -> Result<Step, Error> {
        let noise = self
            .noise
            .take()
            .expect("a handshake in progress has its state");
        self.over();
        let transport = noise
            .into_stateless_transport_mode()
            .map_err(|_| Error::Crypto("noise did not finish"))?;
        Ok(Step::Done(Box::new(Done {
            peer,
            hello,
            transport,
            initiator: self.initiator,
            answer,
        })))
    }

    fn over(&mut self) {
        self.phase = Phase::Over;
        self.resend_at = None;
        self.last = None;
    }
}

/// Handshakes run in memory, for the tests of this layer.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub(crate) fn id(n: u8) -> Identity {
        Identity::from_seed([n; 32])
    }

    pub(crate) const HELLO: Hello = Hello {
        strategy: 7,
        token: [0xa5; 16],
    };

    /// Feeds `packet` to `to`, expecting it to be taken.
    pub(crate) fn feed(to: &mut Handshake, packet: &[u8], now: Instant) -> Step {
        to.on_packet(packet, now).expect("taken")
    }

    /// A whole handshake between nodes 1 (initiator) and 2 (responder, taking any).
    pub(crate) fn pair(proto: Proto) -> (Done, Done) {
        let now = Instant::now();
        let t = Timing::default();
        let mut i = Handshake::initiator(&id(1), &id(2).public(), HELLO, proto, t, now).unwrap();
        let mut r = Handshake::responder(&id(2), Expect::Any, proto, t).unwrap();
        let msg1 = i.poll_transmit().unwrap();
        assert!(matches!(feed(&mut r, &msg1, now), Step::Continue));
        let msg2 = r.poll_transmit().unwrap();
        let Step::Done(di) = feed(&mut i, &msg2, now) else {
            panic!("the initiator is done at msg2");
        };
        let msg3 = i.poll_transmit().unwrap();
        let Step::Done(dr) = feed(&mut r, &msg3, now) else {
            panic!("the responder is done at msg3");
        };
        (*di, *dr)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    const T: Timing = Timing {
        first: Duration::from_millis(250),
        max: Duration::from_secs(2),
    };

    fn start(proto: Proto, expect: Expect, now: Instant) -> (Handshake, Handshake) {
        let i = Handshake::initiator(&id(1), &id(2).public(), HELLO, proto, T, now).unwrap();
        let r = Handshake::responder(&id(2), expect, proto, T).unwrap();
        (i, r)
    }

    /// Seals `plain` from `from` to `to` with the transports of a finished handshake.
    fn talks(from: &Done, to: &Done, plain: &[u8]) -> bool {
        let mut ct = vec![0u8; plain.len() + 16];
        let n = from.transport.write_message(9, plain, &mut ct).unwrap();
        let mut back = vec![0u8; plain.len()];
        to.transport.read_message(9, &ct[..n], &mut back).is_ok() && back == plain
    }

    #[test]
    fn both_sides_learn_each_others_key_and_the_hello_and_share_the_data_keys() {
        for proto in [Proto::Tcp, Proto::Udp] {
            let (i, r) = pair(proto);
            assert_eq!((i.peer, r.peer), (id(2).public(), id(1).public()));
            assert_eq!((i.hello, r.hello), (HELLO, HELLO));
            assert!(i.initiator && !r.initiator);
            assert!(talks(&i, &r, b"to the responder") && talks(&r, &i, b"back"));
            assert!(!talks(&i, &i, b"a side cannot open its own packets"));
            assert_eq!(i.answer.is_some(), proto == Proto::Udp, "{proto}");
        }
    }

    #[test]
    fn messages_have_their_fixed_lengths_and_types() {
        let now = Instant::now();
        let (mut i, mut r) = start(Proto::Tcp, Expect::Any, now);
        let msg1 = i.poll_transmit().unwrap();
        assert_eq!((msg1.len(), msg1[0]), (MSG1_LEN, MSG1));
        let _ = feed(&mut r, &msg1, now);
        let msg2 = r.poll_transmit().unwrap();
        assert_eq!((msg2.len(), msg2[0]), (MSG2_LEN, MSG2));
        let _ = feed(&mut i, &msg2, now);
        let msg3 = i.poll_transmit().unwrap();
        assert_eq!((msg3.len(), msg3[0]), (MSG3_LEN, MSG3));
        assert_eq!((MSG1_LEN, MSG2_LEN, MSG3_LEN), (33, 129, 114));
        // Nobody's key is in clear: the keys travel encrypted.
        for key in [id(1).public(), id(2).public()] {
            for m in [&msg1, &msg2, &msg3] {
                assert!(!m.windows(32).any(|w| w == key.as_bytes()));
            }
        }
    }

    #[test]
    fn a_responder_that_expects_a_key_takes_it_and_refuses_another_at_msg3() {
        let now = Instant::now();
        let (mut i, mut r) = start(Proto::Udp, Expect::Key(id(1).public()), now);
        let _ = feed(&mut r, &i.poll_transmit().unwrap(), now);
        let _ = feed(&mut i, &r.poll_transmit().unwrap(), now);
        assert!(matches!(
            feed(&mut r, &i.poll_transmit().unwrap(), now),
            Step::Done(d) if d.peer == id(1).public()
        ));

        let (mut i, mut r) = start(Proto::Udp, Expect::Key(id(3).public()), now);
        let _ = feed(&mut r, &i.poll_transmit().unwrap(), now);
        let _ = feed(&mut i, &r.poll_transmit().unwrap(), now);
        match r.on_packet(&i.poll_transmit().unwrap(), now) {
            Err(Error::WrongPeer { expected, reached }) => {
                assert_eq!((expected, reached), (id(3).node_id(), id(1).node_id()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.poll_timeout(), None, "a refused handshake sends no more");
    }

    #[test]
    fn an_initiator_that_reaches_another_node_refuses_it_naming_both() {
        let now = Instant::now();
        let mut i =
            Handshake::initiator(&id(1), &id(2).public(), HELLO, Proto::Tcp, T, now).unwrap();
        let mut stranger = Handshake::responder(&id(3), Expect::Any, Proto::Tcp, T).unwrap();
        let _ = feed(&mut stranger, &i.poll_transmit().unwrap(), now);
        let e = i
            .on_packet(&stranger.poll_transmit().unwrap(), now)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "expected node {}, reached node {}",
                id(2).node_id(),
                id(3).node_id()
            )
        );
        assert_eq!(i.poll_transmit(), None, "no msg3 for a stranger");
    }

    #[test]
    fn reaching_this_node_itself_is_refused() {
        let now = Instant::now();
        // A responder of this same node answers (a peer's LAN address is also ours).
        let mut i =
            Handshake::initiator(&id(1), &id(2).public(), HELLO, Proto::Tcp, T, now).unwrap();
        let mut me = Handshake::responder(&id(1), Expect::Any, Proto::Tcp, T).unwrap();
        let _ = feed(&mut me, &i.poll_transmit().unwrap(), now);
        let msg2 = me.poll_transmit().unwrap();
        assert!(matches!(i.on_packet(&msg2, now), Err(Error::ReachedSelf)));
        // A UDP socket that hears its own packets: the initiator its msg1, the
        // responder its msg2.
        let (mut i, mut r) = start(Proto::Udp, Expect::Any, now);
        let msg1 = i.poll_transmit().unwrap();
        assert!(matches!(i.on_packet(&msg1, now), Err(Error::ReachedSelf)));
        let _ = feed(&mut r, &msg1, now);
        let msg2 = r.poll_transmit().unwrap();
        assert!(matches!(r.on_packet(&msg2, now), Err(Error::ReachedSelf)));
        assert_eq!(
            Error::ReachedSelf.to_string(),
            "the path reached this node itself (an address of the peer's that is also this host's?)"
        );
    }

    #[test]
    fn a_node_key_that_is_not_the_noise_key_is_refused() {
        // A responder proves node 3's X25519 key but claims node 2's ed25519 key.
        let now = Instant::now();
        let mut i =
            Handshake::initiator(&id(1), &id(2).public(), HELLO, Proto::Udp, T, now).unwrap();
        let secret = id(3).x25519_secret();
        let mut liar = snow::Builder::new(PATTERN.parse().unwrap())
            .local_private_key(secret.as_bytes())
            .unwrap()
            .prologue(&prologue(Proto::Udp))
            .unwrap()
            .build_responder()
            .unwrap();
        let msg1 = i.poll_transmit().unwrap();
        liar.read_message(&msg1[1..], &mut []).unwrap();
        let mut msg2 = vec![MSG2; MSG2_LEN];
        liar.write_message(id(2).public().as_bytes(), &mut msg2[1..])
            .unwrap();
        assert!(matches!(
            i.on_packet(&msg2, now),
            Err(Error::Refused(why)) if why.contains("not the one its noise key")
        ));
    }

    #[test]
    fn a_tampered_message_is_ignored_on_udp_and_refused_on_tcp() {
        let now = Instant::now();
        for proto in [Proto::Udp, Proto::Tcp] {
            let (mut i, mut r) = start(proto, Expect::Any, now);
            let _ = feed(&mut r, &i.poll_transmit().unwrap(), now);
            let msg2 = r.poll_transmit().unwrap();
            let mut bad = msg2.to_vec();
            bad[60] ^= 1;
            match (proto, i.on_packet(&bad, now)) {
                (Proto::Udp, Ok(Step::Ignored(Ignored::Forged))) => {
                    // The genuine msg2 still completes the handshake.
                    assert!(matches!(feed(&mut i, &msg2, now), Step::Done(_)));
                    assert_eq!(i.counters().ignored, 1);
                }
                (Proto::Tcp, Err(Error::Refused(_))) => {}
                (_, other) => panic!("{proto}: {other:?}"),
            }
        }
    }

    #[test]
    fn both_ends_must_agree_on_the_protocol() {
        let now = Instant::now();
        let mut i =
            Handshake::initiator(&id(1), &id(2).public(), HELLO, Proto::Udp, T, now).unwrap();
        let mut r = Handshake::responder(&id(2), Expect::Any, Proto::Tcp, T).unwrap();
        let _ = feed(&mut r, &i.poll_transmit().unwrap(), now);
        let msg2 = r.poll_transmit().unwrap();
        assert!(matches!(
            i.on_packet(&msg2, now),
            Ok(Step::Ignored(Ignored::Forged))
        ));
    }

    #[test]
    fn stray_datagrams_are_counted_on_udp_and_end_a_tcp_handshake() {
        let now = Instant::now();
        let keepalive = b"\xffp2punch\x03\x00........................";
        let strays: [&[u8]; 5] = [b"", keepalive, &[MSG1; 10], &[MSG3; MSG3_LEN], &[0x10; 40]];
        let (mut i, mut r) = start(Proto::Udp, Expect::Any, now);
        for s in strays {
            assert!(matches!(feed(&mut r, s, now), Step::Ignored(_)), "{s:?}");
        }
        assert_eq!(r.counters().ignored, 5);
        let _ = feed(&mut r, &i.poll_transmit().unwrap(), now);
        assert!(r.poll_transmit().is_some(), "still answers the real msg1");

        let (_, mut r) = start(Proto::Tcp, Expect::Any, now);
        assert!(matches!(
            r.on_packet(keepalive, now),
            Err(Error::Refused(_))
        ));
    }

    #[test]
    fn tcp_never_resends() {
        let now = Instant::now();
        let (mut i, _) = start(Proto::Tcp, Expect::Any, now);
        let _ = i.poll_transmit();
        assert_eq!(i.poll_timeout(), None);
        i.on_timeout(now + Duration::from_secs(60));
        assert_eq!(i.poll_transmit(), None);
    }

    #[test]
    fn udp_resends_each_lost_message_on_a_doubling_schedule() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let (mut i, mut r) = start(Proto::Udp, Expect::Any, t0);
        let msg1 = i.poll_transmit().unwrap(); // lost
        assert_eq!(i.poll_timeout(), Some(ms(250)));
        i.on_timeout(ms(249));
        assert_eq!(i.poll_transmit(), None, "not yet");
        i.on_timeout(ms(250));
        assert_eq!(i.poll_transmit().as_ref(), Some(&msg1), "the same msg1");
        assert_eq!(i.poll_timeout(), Some(ms(750)));
        i.on_timeout(ms(750));
        assert_eq!(i.poll_transmit().as_ref(), Some(&msg1));
        assert_eq!(i.poll_timeout(), Some(ms(1750)));
        i.on_timeout(ms(1750));
        let _ = i.poll_transmit();
        i.on_timeout(ms(3750));
        let _ = i.poll_transmit();
        assert_eq!(i.poll_timeout(), Some(ms(5750)), "capped at 2 s");

        // msg1 arrives; msg2 is lost; the responder's timer sends it again.
        let _ = feed(&mut r, &msg1, ms(3800));
        let msg2 = r.poll_transmit().unwrap();
        assert_eq!(r.poll_timeout(), Some(ms(4050)));
        r.on_timeout(ms(4050));
        assert_eq!(r.poll_transmit().as_ref(), Some(&msg2));
        // A repeated msg1 gets the same msg2 at once.
        assert!(matches!(
            feed(&mut r, &msg1, ms(4100)),
            Step::Ignored(Ignored::Repeat)
        ));
        assert_eq!(r.poll_transmit().as_ref(), Some(&msg2));

        // msg3 is lost; the responder's repeated msg2 gets it again from the answer.
        let Step::Done(done) = feed(&mut i, &msg2, ms(4200)) else {
            panic!("done at msg2");
        };
        let msg3 = i.poll_transmit().unwrap();
        assert_eq!(i.poll_timeout(), None, "done: no more timers");
        let answer = done.answer.as_ref().unwrap();
        assert_eq!(answer.to(&msg2), Some(&msg3));
        assert_eq!(answer.to(&msg1), None);
        assert!(matches!(feed(&mut r, &msg3, ms(4300)), Step::Done(_)));
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.counters().resent, 2);
        assert_eq!(i.counters().resent, 4);
    }

    #[test]
    fn another_attempts_msg1_does_not_take_over_a_responder() {
        let now = Instant::now();
        let (mut i, mut r) = start(Proto::Udp, Expect::Any, now);
        let (mut other, _) = start(Proto::Udp, Expect::Any, now);
        let _ = feed(&mut r, &i.poll_transmit().unwrap(), now);
        let msg2 = r.poll_transmit().unwrap();
        assert!(matches!(
            feed(&mut r, &other.poll_transmit().unwrap(), now),
            Step::Ignored(Ignored::Unexpected)
        ));
        assert!(matches!(feed(&mut i, &msg2, now), Step::Done(_)));
        assert!(matches!(
            feed(&mut r, &i.poll_transmit().unwrap(), now),
            Step::Done(_)
        ));
    }

    #[test]
    fn debug_shows_node_ids_and_no_key_material() {
        let (i, _) = pair(Proto::Udp);
        let shown = format!("{i:?} {:?}", i.answer);
        assert!(shown.contains(&id(2).node_id().to_string()), "{shown}");
        assert!(shown.contains("Answer(..)"), "{shown}");
    }
}
