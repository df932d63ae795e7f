//! The signalling state of one node, owning no socket, clock or randomness source.
//!
//! Envelopes and the time (unix ms) go in; what to deliver, or why a message was
//! dropped, comes out. [`Signalling::on_message`] checks each arriving envelope
//! cheapest first: its size (before anything is parsed), its header, that it is
//! addressed to this node, its age, that it was not seen before, and only then opens
//! it. Every drop is counted by its reason ([`Counters`]). Requests wait for their
//! responses until a deadline the caller polls ([`Signalling::poll_timeouts`]).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::{SigningKey, VerifyingKey};
use x25519_dalek::StaticSecret;

use super::seal::{self, fingerprint, Fingerprint, Header, Kind, RequestId, MAX_MESSAGE};
use super::{Error, RANDOM_LEN};

/// The limits of a [`Signalling`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The oldest a message may be on arrival (default 60 s): older ones are dropped,
    /// and the replay memory forgets messages past it.
    pub max_age: Duration,
    /// How far ahead of this node's clock a message's timestamp may be (default 30 s).
    pub max_future: Duration,
    /// The most message ids remembered against replays (default 16384, at least 1).
    /// When it is full, the oldest is forgotten and anything no newer is dropped.
    pub max_remembered: usize,
    /// The most requests waiting for a response at once (default 1024).
    pub max_pending: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_age: Duration::from_secs(60),
            max_future: Duration::from_secs(30),
            max_remembered: 16_384,
            max_pending: 1024,
        }
    }
}

/// A decrypted payload. Its `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Bytes);

impl Payload {
    /// The payload's bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

/// A request that arrived, to be answered with [`Signalling::respond`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredRequest {
    /// The requester's id for it.
    pub request_id: RequestId,
    /// The requester's key, proven by the envelope.
    pub from: VerifyingKey,
    /// What it asks.
    pub payload: Payload,
}

/// A message that passed every check.
#[must_use = "a delivered message is to be handed on"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// A one-way message.
    Message {
        /// The sender's key, proven by the envelope.
        from: VerifyingKey,
        /// The payload.
        payload: Payload,
    },
    /// A request to answer.
    Request(DeliveredRequest),
    /// The response to a request of this node, which it completes.
    Response {
        /// The request it answers.
        request_id: RequestId,
        /// The responder, the key the request went to.
        from: VerifyingKey,
        /// The payload.
        payload: Payload,
    },
}

/// Why a message was dropped; each reason has its counter in [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// Over [`MAX_MESSAGE`], refused before parsing.
    TooLarge,
    /// Not a sealed message (truncated, bad magic, kind or sender key).
    Malformed,
    /// Addressed to another key.
    Misaddressed,
    /// Older than [`Config::max_age`].
    TooOld,
    /// Further ahead than [`Config::max_future`].
    FromFuture,
    /// Seen before: a replay, or the copy of a message sent through several brokers.
    Replayed,
    /// No newer than a message the replay memory had to forget (it was full, or the
    /// clock went back), so it cannot be told apart from a replay.
    Forgotten,
    /// It does not open: tampered with, forged, for another key, or with a key of low
    /// order.
    Forged,
    /// A response to no pending request (unknown, or past its deadline).
    UnexpectedResponse,
    /// A second response to a request already answered.
    DuplicateResponse,
    /// A response from a key other than the one the request went to.
    WrongResponder,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dropped::TooLarge => "message too large",
            Dropped::Malformed => "malformed message",
            Dropped::Misaddressed => "message for another node",
            Dropped::TooOld => "message too old",
            Dropped::FromFuture => "message from the future",
            Dropped::Replayed => "message seen before",
            Dropped::Forgotten => "message older than the replay memory",
            Dropped::Forged => "message does not open",
            Dropped::UnexpectedResponse => "response to no pending request",
            Dropped::DuplicateResponse => "second response to a request",
            Dropped::WrongResponder => "response from another key than the request's",
        })
    }
}

/// How many messages were delivered, and dropped for each reason ([`Dropped`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages delivered.
    pub delivered: u64,
    /// [`Dropped::TooLarge`].
    pub too_large: u64,
    /// [`Dropped::Malformed`].
    pub malformed: u64,
    /// [`Dropped::Misaddressed`].
    pub misaddressed: u64,
    /// [`Dropped::TooOld`].
    pub too_old: u64,
    /// [`Dropped::FromFuture`].
    pub from_future: u64,
    /// [`Dropped::Replayed`].
    pub replayed: u64,
    /// [`Dropped::Forgotten`].
    pub forgotten: u64,
    /// [`Dropped::Forged`].
    pub forged: u64,
    /// [`Dropped::UnexpectedResponse`].
    pub unexpected_response: u64,
    /// [`Dropped::DuplicateResponse`].
    pub duplicate_response: u64,
    /// [`Dropped::WrongResponder`].
    pub wrong_responder: u64,
    /// Requests that passed their deadline unanswered.
    pub timed_out: u64,
}

impl Counters {
    /// All messages dropped, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.too_large
            + self.malformed
            + self.misaddressed
            + self.too_old
            + self.from_future
            + self.replayed
            + self.forgotten
            + self.forged
            + self.unexpected_response
            + self.duplicate_response
            + self.wrong_responder
    }

    fn count(&mut self, outcome: &Result<Delivered, Dropped>) {
        let counter = match outcome {
            Ok(_) => &mut self.delivered,
            Err(Dropped::TooLarge) => &mut self.too_large,
            Err(Dropped::Malformed) => &mut self.malformed,
            Err(Dropped::Misaddressed) => &mut self.misaddressed,
            Err(Dropped::TooOld) => &mut self.too_old,
            Err(Dropped::FromFuture) => &mut self.from_future,
            Err(Dropped::Replayed) => &mut self.replayed,
            Err(Dropped::Forgotten) => &mut self.forgotten,
            Err(Dropped::Forged) => &mut self.forged,
            Err(Dropped::UnexpectedResponse) => &mut self.unexpected_response,
            Err(Dropped::DuplicateResponse) => &mut self.duplicate_response,
            Err(Dropped::WrongResponder) => &mut self.wrong_responder,
        };
        *counter += 1;
    }
}

/// What the replay memory knows a message by: its timestamp first, so that the oldest
/// are forgotten first, then its sender and id.
type SeenKey = (u64, [u8; 32], [u8; 16]);

/// Message ids seen within the window, bounded in count.
#[derive(Debug)]
struct ReplayMemory {
    seen: BTreeSet<SeenKey>,
    /// The newest timestamp forgotten; nothing at or before it is delivered.
    floor: Option<u64>,
    max: usize,
}

impl ReplayMemory {
    fn key(header: &Header) -> SeenKey {
        (
            header.timestamp_ms,
            header.sender.to_bytes(),
            header.message_id,
        )
    }

    fn check(&self, header: &Header) -> Result<(), Dropped> {
        if self.floor.is_some_and(|f| header.timestamp_ms <= f) {
            return Err(Dropped::Forgotten);
        }
        if self.seen.contains(&Self::key(header)) {
            return Err(Dropped::Replayed);
        }
        Ok(())
    }

    /// Remembers an opened message, forgetting first what is older than `horizon` (unix
    /// ms), then the oldest while full.
    fn insert(&mut self, header: &Header, horizon: u64) {
        while let Some(&(ts, ..)) = self.seen.first() {
            if ts >= horizon && self.seen.len() < self.max {
                break;
            }
            self.seen.pop_first();
            self.floor = Some(self.floor.map_or(ts, |f| f.max(ts)));
        }
        self.seen.insert(Self::key(header));
    }
}

/// A request waiting for its response.
#[derive(Debug)]
struct Pending {
    to: VerifyingKey,
    deadline_ms: u64,
}

/// Requests answered lately, to tell a second response from an unexpected one.
#[derive(Debug, Default)]
struct Answered {
    ids: HashSet<RequestId>,
    order: VecDeque<(RequestId, u64)>,
}

impl Answered {
    fn insert(&mut self, id: RequestId, now_ms: u64, max: usize) {
        self.ids.insert(id);
        self.order.push_back((id, now_ms));
        while self.order.len() > max {
            if let Some((old, _)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    fn expire(&mut self, horizon: u64) {
        while let Some(&(id, at)) = self.order.front() {
            if at >= horizon {
                break;
            }
            self.ids.remove(&id);
            self.order.pop_front();
        }
    }
}

/// The signalling state of one node: its key, the replay memory, the pending requests
/// and the counters. Its `Debug` shows the key's fingerprint, never the key.
pub struct Signalling {
    key: SigningKey,
    secret: StaticSecret,
    public: VerifyingKey,
    me: Fingerprint,
    config: Config,
    replay: ReplayMemory,
    pending: HashMap<RequestId, Pending>,
    answered: Answered,
    next_request: u64,
    counters: Counters,
}

impl fmt::Debug for Signalling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signalling")
            .field("fingerprint", &seal::hex(&self.me))
            .field("remembered", &self.replay.seen.len())
            .field("pending", &self.pending.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Signalling {
    /// The state of the node with `key`. Request ids count up from `first_request_id`:
    /// pass a random value, so that a response meant for a request before a restart is
    /// not taken for the answer to a new one.
    pub fn new(key: SigningKey, config: Config, first_request_id: u64) -> Signalling {
        let public = key.verifying_key();
        Signalling {
            secret: crate::identity::x25519_secret(&key),
            me: fingerprint(&public),
            public,
            key,
            replay: ReplayMemory {
                seen: BTreeSet::new(),
                floor: None,
                max: config.max_remembered.max(1),
            },
            config,
            pending: HashMap::new(),
            answered: Answered::default(),
            next_request: first_request_id,
            counters: Counters::default(),
        }
    }

    /// The state of the node `identity`, as [`Signalling::new`] with its key.
    pub fn for_identity(
        identity: &crate::identity::Identity,
        config: Config,
        first_request_id: u64,
    ) -> Signalling {
        Signalling::new(identity.signing_key().clone(), config, first_request_id)
    }

    /// This node's public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.public
    }

    /// This node's fingerprint, which envelopes to it carry.
    pub fn fingerprint(&self) -> Fingerprint {
        self.me
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// How many message ids the replay memory holds.
    pub fn remembered(&self) -> usize {
        self.replay.seen.len()
    }

    /// How many requests wait for a response.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Seals a one-way message to `to`.
    pub fn send(
        &self,
        to: &VerifyingKey,
        payload: &[u8],
        now_ms: u64,
        random: [u8; RANDOM_LEN],
    ) -> Result<Bytes, Error> {
        seal::seal(&self.key, to, Kind::OneWay, payload, now_ms, random)
    }

    /// Seals a request to `to` and waits for its response until `now_ms + timeout`.
    /// Refused when [`Config::max_pending`] requests already wait.
    pub fn request(
        &mut self,
        to: &VerifyingKey,
        payload: &[u8],
        now_ms: u64,
        timeout: Duration,
        random: [u8; RANDOM_LEN],
    ) -> Result<(RequestId, Bytes), Error> {
        if self.pending.len() >= self.config.max_pending {
            return Err(Error::TooManyPending {
                max: self.config.max_pending,
            });
        }
        let id = RequestId(self.next_request);
        let sealed = seal::seal(&self.key, to, Kind::Request(id), payload, now_ms, random)?;
        self.next_request = self.next_request.wrapping_add(1);
        let deadline_ms = now_ms.saturating_add(millis(timeout));
        self.pending.insert(
            id,
            Pending {
                to: *to,
                deadline_ms,
            },
        );
        Ok((id, sealed))
    }

    /// Seals the response to `request`.
    pub fn respond(
        &self,
        request: &DeliveredRequest,
        payload: &[u8],
        now_ms: u64,
        random: [u8; RANDOM_LEN],
    ) -> Result<Bytes, Error> {
        let kind = Kind::Response(request.request_id);
        seal::seal(&self.key, &request.from, kind, payload, now_ms, random)
    }

    /// The earliest deadline of a pending request, unix ms.
    pub fn next_deadline(&self) -> Option<u64> {
        self.pending.values().map(|p| p.deadline_ms).min()
    }

    /// Ends the requests whose deadline is at or before `now_ms` and returns their ids,
    /// in order; a response to one of them will be dropped.
    #[must_use = "the requests that timed out are to be failed"]
    pub fn poll_timeouts(&mut self, now_ms: u64) -> Vec<RequestId> {
        let mut expired: Vec<RequestId> = (self.pending.iter())
            .filter(|(_, p)| p.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        for id in &expired {
            self.pending.remove(id);
        }
        self.counters.timed_out += expired.len() as u64;
        expired
    }

    /// Checks and opens an envelope that arrived at `now_ms`, and counts the outcome.
    pub fn on_message(&mut self, envelope: &[u8], now_ms: u64) -> Result<Delivered, Dropped> {
        let outcome = self.check(envelope, now_ms);
        self.counters.count(&outcome);
        outcome
    }

    /// The checks of [`on_message`](Self::on_message), cheapest first.
    fn check(&mut self, envelope: &[u8], now_ms: u64) -> Result<Delivered, Dropped> {
        if envelope.len() > MAX_MESSAGE {
            return Err(Dropped::TooLarge);
        }
        let header = Header::parse(envelope).map_err(|_| Dropped::Malformed)?;
        if header.recipient != self.me {
            return Err(Dropped::Misaddressed);
        }
        self.check_time(header.timestamp_ms, now_ms)?;
        self.replay.check(&header)?;
        let payload =
            seal::open(&self.secret, &self.public, &header, envelope).ok_or(Dropped::Forged)?;
        let horizon = now_ms.saturating_sub(millis(self.config.max_age));
        self.replay.insert(&header, horizon);
        self.deliver(&header, Payload(payload), now_ms)
    }

    fn check_time(&self, timestamp_ms: u64, now_ms: u64) -> Result<(), Dropped> {
        if timestamp_ms < now_ms.saturating_sub(millis(self.config.max_age)) {
            return Err(Dropped::TooOld);
        }
        if timestamp_ms > now_ms.saturating_add(millis(self.config.max_future)) {
            return Err(Dropped::FromFuture);
        }
        Ok(())
    }

    /// What an opened message becomes; a response must complete a pending request.
    fn deliver(
        &mut self,
        header: &Header,
        payload: Payload,
        now_ms: u64,
    ) -> Result<Delivered, Dropped> {
        let from = header.sender;
        match header.kind {
            Kind::OneWay => Ok(Delivered::Message { from, payload }),
            Kind::Request(request_id) => Ok(Delivered::Request(DeliveredRequest {
                request_id,
                from,
                payload,
            })),
            Kind::Response(request_id) => {
                self.complete(request_id, &from, now_ms)?;
                Ok(Delivered::Response {
                    request_id,
                    from,
                    payload,
                })
            }
        }
    }

    fn complete(&mut self, id: RequestId, from: &VerifyingKey, now_ms: u64) -> Result<(), Dropped> {
        self.answered
            .expire(now_ms.saturating_sub(millis(self.config.max_age)));
        match self.pending.get(&id) {
            None if self.answered.ids.contains(&id) => Err(Dropped::DuplicateResponse),
            None => Err(Dropped::UnexpectedResponse),
            Some(p) if p.to != *from => Err(Dropped::WrongResponder),
            Some(p) if p.deadline_ms <= now_ms => Err(Dropped::UnexpectedResponse),
            Some(_) => {
                self.pending.remove(&id);
                self.answered.insert(id, now_ms, self.config.max_pending);
                Ok(())
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::seal::{HEADER_LEN, TAG_LEN};

    const NOW: u64 = 1_700_000_000_000;
    const SECOND: u64 = 1000;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn node(b: u8) -> Signalling {
        Signalling::new(key(b), Config::default(), u64::from(b) << 32)
    }

    fn rnd(i: u8) -> [u8; RANDOM_LEN] {
        [i; RANDOM_LEN]
    }

    /// Alice (1) and Bob (2), and a one-way message from Alice to Bob.
    fn pair() -> (Signalling, Signalling, Bytes) {
        let (alice, bob) = (node(1), node(2));
        let sealed = alice
            .send(&bob.public_key(), b"hello bob", NOW, rnd(9))
            .unwrap();
        (alice, bob, sealed)
    }

    fn payload(d: Result<Delivered, Dropped>) -> Vec<u8> {
        match d {
            Ok(Delivered::Message { payload, .. }) => payload.to_vec(),
            other => panic!("not a delivered message: {other:?}"),
        }
    }

    #[test]
    fn a_sealed_message_opens_at_its_recipient_with_its_sender_proven() {
        let (alice, mut bob, sealed) = pair();
        match bob.on_message(&sealed, NOW + 5) {
            Ok(Delivered::Message { from, payload }) => {
                assert_eq!(from, alice.public_key());
                assert_eq!(&*payload, b"hello bob");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(bob.counters().delivered, 1);
        assert_eq!(bob.counters().dropped(), 0);
    }

    #[test]
    fn a_third_key_finds_the_message_misaddressed() {
        let (_, _, sealed) = pair();
        let mut carol = node(3);
        assert_eq!(carol.on_message(&sealed, NOW), Err(Dropped::Misaddressed));
        assert_eq!(carol.counters().misaddressed, 1);
    }

    #[test]
    fn a_message_readdressed_to_another_fingerprint_does_not_open() {
        let (alice, bob, _) = pair();
        let mut carol = node(3);
        let mut sealed = alice
            .send(&bob.public_key(), b"for bob", NOW, rnd(4))
            .unwrap()
            .to_vec();
        sealed[34..50].copy_from_slice(&carol.fingerprint());
        assert_eq!(carol.on_message(&sealed, NOW), Err(Dropped::Forged));
        assert_eq!(carol.counters().forged, 1);
    }

    #[test]
    fn a_message_that_claims_another_sender_does_not_open() {
        let (alice, mut bob, _) = pair();
        let mallory = node(4);
        let mut sealed = mallory
            .send(&bob.public_key(), b"i am alice", NOW, rnd(4))
            .unwrap()
            .to_vec();
        sealed[2..34].copy_from_slice(alice.public_key().as_bytes());
        assert_eq!(bob.on_message(&sealed, NOW), Err(Dropped::Forged));
        assert_eq!(bob.counters().forged, 1);
    }

    #[test]
    fn every_single_byte_flip_is_dropped_and_counted() {
        let (_, mut bob, sealed) = pair();
        let mut flips = 0;
        for pos in 0..sealed.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = sealed.to_vec();
                bad[pos] ^= mask;
                let outcome = bob.on_message(&bad, NOW);
                let reason = outcome.expect_err("a flipped envelope was delivered");
                match pos {
                    // The magic, the kind, and the request id of a one-way message.
                    0 | 1 | 74..82 => assert_eq!(reason, Dropped::Malformed, "byte {pos}"),
                    34..50 => assert_eq!(reason, Dropped::Misaddressed, "byte {pos}"),
                    50..58 => assert!(
                        matches!(
                            reason,
                            Dropped::TooOld | Dropped::FromFuture | Dropped::Forged
                        ),
                        "byte {pos}: {reason}"
                    ),
                    2..34 => assert!(
                        matches!(reason, Dropped::Malformed | Dropped::Forged),
                        "byte {pos}: {reason}"
                    ),
                    _ => assert_eq!(reason, Dropped::Forged, "byte {pos}"),
                }
                flips += 1;
            }
        }
        let c = bob.counters();
        assert_eq!(c.delivered, 0);
        assert_eq!(c.dropped(), flips);
        // The untouched envelope still opens: no flip was remembered.
        assert_eq!(payload(bob.on_message(&sealed, NOW)), b"hello bob");
    }

    #[test]
    fn an_envelope_truncated_at_every_length_is_dropped() {
        let (_, mut bob, sealed) = pair();
        for len in 0..sealed.len() {
            let reason = bob.on_message(&sealed[..len], NOW).unwrap_err();
            let want = if len < HEADER_LEN + TAG_LEN {
                Dropped::Malformed
            } else {
                Dropped::Forged
            };
            assert_eq!(reason, want, "length {len}");
        }
        let c = bob.counters();
        assert_eq!(c.malformed + c.forged, sealed.len() as u64);
        assert_eq!(c.delivered, 0);
    }

    #[test]
    fn a_replay_or_a_copy_from_a_second_broker_is_dropped_and_counted() {
        let (_, mut bob, sealed) = pair();
        assert_eq!(payload(bob.on_message(&sealed, NOW)), b"hello bob");
        assert_eq!(bob.on_message(&sealed, NOW + 1), Err(Dropped::Replayed));
        assert_eq!(
            bob.on_message(&sealed, NOW + 50 * SECOND),
            Err(Dropped::Replayed)
        );
        assert_eq!(bob.counters().replayed, 2);
        assert_eq!(bob.counters().delivered, 1);
    }

    #[test]
    fn messages_too_old_or_from_the_future_are_dropped_at_the_window_edges() {
        let (alice, mut bob, _) = pair();
        let to = bob.public_key();
        let at = |ts: u64, r: u8| alice.send(&to, b"t", ts, rnd(r)).unwrap();
        assert!(bob.on_message(&at(NOW - 60 * SECOND, 1), NOW).is_ok());
        assert_eq!(
            bob.on_message(&at(NOW - 60 * SECOND - 1, 2), NOW),
            Err(Dropped::TooOld)
        );
        assert!(bob.on_message(&at(NOW + 30 * SECOND, 3), NOW).is_ok());
        assert_eq!(
            bob.on_message(&at(NOW + 30 * SECOND + 1, 4), NOW),
            Err(Dropped::FromFuture)
        );
        let c = bob.counters();
        assert_eq!((c.delivered, c.too_old, c.from_future), (2, 1, 1));
    }

    #[test]
    fn an_oversized_message_is_dropped_before_it_is_parsed() {
        let (_, mut bob, sealed) = pair();
        let mut big = sealed.to_vec();
        big.resize(MAX_MESSAGE + 1, 0);
        assert_eq!(bob.on_message(&big, NOW), Err(Dropped::TooLarge));
        assert_eq!(
            bob.on_message(&vec![0xff; 1 << 20], NOW),
            Err(Dropped::TooLarge)
        );
        let c = bob.counters();
        assert_eq!(c.too_large, 2);
        assert_eq!(c.dropped(), 2);
    }

    #[test]
    fn a_response_completes_its_request_once() {
        let (mut alice, mut bob, _) = pair();
        let to = bob.public_key();
        let (id, sealed) = alice
            .request(&to, b"addr?", NOW, Duration::from_secs(5), rnd(1))
            .unwrap();
        assert_eq!(alice.pending(), 1);
        assert_eq!(alice.next_deadline(), Some(NOW + 5 * SECOND));
        let Ok(Delivered::Request(req)) = bob.on_message(&sealed, NOW) else {
            panic!("request not delivered");
        };
        assert_eq!(req.request_id, id);
        let answer = bob.respond(&req, b"here", NOW + 1, rnd(2)).unwrap();
        match alice.on_message(&answer, NOW + 2) {
            Ok(Delivered::Response {
                request_id,
                from,
                payload,
            }) => {
                assert_eq!((request_id, from), (id, to));
                assert_eq!(&*payload, b"here");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(alice.pending(), 0);
        // The same response again is a replay; a second, distinct one is a duplicate.
        assert_eq!(alice.on_message(&answer, NOW + 3), Err(Dropped::Replayed));
        let again = bob.respond(&req, b"here too", NOW + 4, rnd(3)).unwrap();
        assert_eq!(
            alice.on_message(&again, NOW + 5),
            Err(Dropped::DuplicateResponse)
        );
        assert_eq!(alice.counters().duplicate_response, 1);
        assert!(alice.poll_timeouts(NOW + 10 * SECOND).is_empty());
    }

    #[test]
    fn a_request_times_out_and_its_late_response_is_dropped() {
        let (mut alice, mut bob, _) = pair();
        let to = bob.public_key();
        let timeout = Duration::from_secs(2);
        let (id, sealed) = alice.request(&to, b"addr?", NOW, timeout, rnd(1)).unwrap();
        let Ok(Delivered::Request(req)) = bob.on_message(&sealed, NOW) else {
            panic!("request not delivered");
        };
        assert!(alice.poll_timeouts(NOW + 2 * SECOND - 1).is_empty());
        assert_eq!(alice.poll_timeouts(NOW + 2 * SECOND), vec![id]);
        assert_eq!(alice.counters().timed_out, 1);
        let late = bob
            .respond(&req, b"late", NOW + 3 * SECOND, rnd(2))
            .unwrap();
        assert_eq!(
            alice.on_message(&late, NOW + 3 * SECOND),
            Err(Dropped::UnexpectedResponse)
        );
        assert_eq!(alice.counters().unexpected_response, 1);
        assert_eq!(alice.next_deadline(), None);
    }

    #[test]
    fn a_response_from_another_key_than_the_request_went_to_is_dropped() {
        let (mut alice, bob, _) = pair();
        let carol = node(3);
        let (id, _) = alice
            .request(
                &bob.public_key(),
                b"addr?",
                NOW,
                Duration::from_secs(5),
                rnd(1),
            )
            .unwrap();
        let forged_req = DeliveredRequest {
            request_id: id,
            from: alice.public_key(),
            payload: Payload(Bytes::new()),
        };
        let answer = carol
            .respond(&forged_req, b"me instead", NOW, rnd(2))
            .unwrap();
        assert_eq!(alice.on_message(&answer, NOW), Err(Dropped::WrongResponder));
        assert_eq!(alice.counters().wrong_responder, 1);
        assert_eq!(alice.pending(), 1, "the request still waits for bob");
    }

    #[test]
    fn a_response_to_an_unknown_request_is_dropped() {
        let (alice, mut bob, _) = pair();
        let req = DeliveredRequest {
            request_id: RequestId(12345),
            from: bob.public_key(),
            payload: Payload(Bytes::new()),
        };
        let answer = alice.respond(&req, b"?", NOW, rnd(2)).unwrap();
        assert_eq!(
            bob.on_message(&answer, NOW),
            Err(Dropped::UnexpectedResponse)
        );
        assert_eq!(bob.counters().unexpected_response, 1);
    }

    #[test]
    fn pending_requests_are_bounded() {
        let config = Config {
            max_pending: 2,
            ..Config::default()
        };
        let mut alice = Signalling::new(key(1), config, 0);
        let to = key(2).verifying_key();
        let t = Duration::from_secs(1);
        let (a, _) = alice.request(&to, b"1", NOW, t, rnd(1)).unwrap();
        let (b, _) = alice.request(&to, b"2", NOW, t, rnd(2)).unwrap();
        assert_ne!(a, b);
        let err = alice.request(&to, b"3", NOW, t, rnd(3)).unwrap_err();
        assert_eq!(err, Error::TooManyPending { max: 2 });
        assert_eq!(alice.pending(), 2);
    }

    /// A header with a given timestamp and id, as the replay memory sees it.
    fn header(sender: VerifyingKey, ts: u64, i: u32) -> Header {
        let mut message_id = [0; 16];
        message_id[..4].copy_from_slice(&i.to_be_bytes());
        Header {
            kind: Kind::OneWay,
            sender,
            recipient: [0; 16],
            timestamp_ms: ts,
            message_id,
            ephemeral: [0; 32],
            nonce: [0; 24],
        }
    }

    #[test]
    fn the_replay_memory_stays_bounded_under_100k_distinct_messages() {
        let mut memory = ReplayMemory {
            seen: BTreeSet::new(),
            floor: None,
            max: Config::default().max_remembered,
        };
        let sender = key(1).verifying_key();
        let header = |ts, i| header(sender, ts, i);
        for i in 0..100_000u32 {
            let h = header(NOW + u64::from(i / 10), i);
            assert_eq!(memory.check(&h), Ok(()), "message {i}");
            memory.insert(&h, NOW - 60 * SECOND);
            assert!(memory.seen.len() <= memory.max);
        }
        assert_eq!(memory.seen.len(), memory.max);
        // The newest are remembered; the forgotten ones cannot come back.
        assert_eq!(
            memory.check(&header(NOW + 9_999, 99_999)),
            Err(Dropped::Replayed)
        );
        assert_eq!(memory.check(&header(NOW, 0)), Err(Dropped::Forgotten));
        // And the whole window is forgotten once it has passed.
        memory.insert(&header(NOW + 100 * SECOND, 1), NOW + 70 * SECOND);
        assert_eq!(memory.seen.len(), 1);
    }

    #[test]
    fn a_full_replay_memory_drops_what_it_forgot_instead_of_delivering_it_again() {
        let config = Config {
            max_remembered: 4,
            ..Config::default()
        };
        let alice = node(1);
        let mut bob = Signalling::new(key(2), config, 0);
        let to = bob.public_key();
        let sealed: Vec<Bytes> = (0..10)
            .map(|i| alice.send(&to, b"m", NOW + u64::from(i), rnd(i)).unwrap())
            .collect();
        for s in &sealed {
            assert!(bob.on_message(s, NOW + 20).is_ok());
            assert!(bob.remembered() <= 4);
        }
        for s in &sealed {
            assert!(bob.on_message(s, NOW + 30).is_err());
        }
        let c = bob.counters();
        assert_eq!((c.delivered, c.forgotten, c.replayed), (10, 6, 4));
    }

    #[test]
    fn a_clock_that_goes_back_does_not_let_an_expired_replay_through() {
        let (alice, mut bob, sealed) = pair();
        assert!(bob.on_message(&sealed, NOW).is_ok());
        let later = alice
            .send(&bob.public_key(), b"later", NOW + 90 * SECOND, rnd(5))
            .unwrap();
        assert!(bob.on_message(&later, NOW + 90 * SECOND).is_ok());
        assert_eq!(bob.remembered(), 1);
        assert_eq!(bob.on_message(&sealed, NOW), Err(Dropped::Forgotten));
    }

    #[test]
    fn debug_output_shows_no_key_bytes_and_no_plaintext() {
        let secret = [0xab; 32];
        let me = Signalling::new(SigningKey::from_bytes(&secret), Config::default(), 0);
        let scalar = key(0xab).to_scalar_bytes();
        let shown = format!("{me:?} {me:#?}");
        for bytes in [&secret, &scalar] {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert!(!shown.contains(&hex[..8]), "{shown}");
            assert!(
                !shown.contains(&format!("{}, {}", bytes[0], bytes[1])),
                "{shown}"
            );
        }
        let (_, mut bob, sealed) = pair();
        let delivered = bob.on_message(&sealed, NOW);
        let shown = format!("{delivered:?}");
        assert!(!shown.contains("hello bob"), "{shown}");
        assert!(!shown.contains("104, 101"), "{shown}");
        assert!(shown.contains("9 bytes"), "{shown}");
    }
}
