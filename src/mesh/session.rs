//! The mesh's protocol logic, sans-IO: the handshake, then a session's messages.
//!
//! Nothing here owns a socket or reads a clock; frames go in as bytes and frames to send
//! come out. The I/O layer ([`super::Mesh`]) puts the handshake under a timeout.
//!
//! # The handshake
//!
//! ```text
//!  initiator                         acceptor
//!  HELLO(id, port, nonce[, key])  ->
//!                                 <- HELLO(id, port, nonce[, key])   or REFUSE
//!  AUTH([sig_i])                  ->
//!                                 <- AUTH([sig_a])                   or REFUSE
//! ```
//!
//! Each side checks the other's HELLO (version, id, not its own id, both sign or neither
//! does). With signing, `sig_i` and `sig_a` are ed25519 signatures, by the key each HELLO
//! carries, of the transcript hash `T = SHA-256("p2pipe-mesh/1" ‖ len ‖ HELLO_i ‖ len ‖
//! HELLO_a)` under a role label. Both HELLOs hold fresh nonces, so a signature proves the
//! key's holder is on this connection now, and binds the key to the id in its HELLO. Before
//! the acceptor's AUTH, the I/O layer decides whether it takes the peer at all (limits,
//! duplicates, a key already bound to that id): [`Step::Decide`].
//!
//! # Messages
//!
//! A signed DATA frame carries a sequence number and a signature of
//! `SHA-256("p2pipe-mesh/1 msg" ‖ T ‖ sender role ‖ seq ‖ flags ‖ payload)`, verified
//! against the key bound to the peer's id at the handshake, never a key the message
//! brings. A sequence number must be higher than the last one accepted, so a message
//! cannot be replayed on this connection, and `T` keeps it from being replayed on another.

use bytes::Bytes;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::identity::Identity;
use sha2::{Digest, Sha256};

use super::wire::{
    self, Frame, Hello, MeshId, Reason, RefuseCode, Signed, WireError, FLAG_SIGNED, FLAG_ZLIB,
};

const LABEL: &[u8] = b"p2pipe-mesh/1";
const AUTH_I: &[u8] = b"p2pipe-mesh/1 auth initiator";
const AUTH_A: &[u8] = b"p2pipe-mesh/1 auth acceptor";
const MSG: &[u8] = b"p2pipe-mesh/1 msg";

/// Which end of the connection a side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It connected out.
    Initiator,
    /// It accepted.
    Acceptor,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Initiator => b'i',
            Role::Acceptor => b'a',
        }
    }
    fn other(self) -> Role {
        match self {
            Role::Initiator => Role::Acceptor,
            Role::Acceptor => Role::Initiator,
        }
    }
}

/// This node, as the handshake presents it.
#[derive(Clone)]
pub struct Local {
    /// The node id.
    pub id: MeshId,
    /// The port the node listens on, or 0.
    pub listen_port: u16,
    /// The node identity whose key signs, if the node signs.
    pub key: Option<Identity>,
}

/// The peer, as the handshake proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHello {
    /// Its node id.
    pub id: String,
    /// The port it says it listens on (0: none).
    pub listen_port: u16,
    /// Its public key, when the session is signed.
    pub key: Option<VerifyingKey>,
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer refused.
    #[error("refused by peer: {code}{}", if .reason.is_empty() { String::new() } else { format!(" ({})", .reason) })]
    Refused {
        /// Its code.
        code: RefuseCode,
        /// Its text.
        reason: String,
    },
    /// A frame did not parse.
    #[error("bad handshake frame: {0}")]
    Wire(#[from] WireError),
    /// A frame came out of turn.
    #[error("unexpected frame during the handshake")]
    Unexpected,
    /// One side signs and the other does not.
    #[error("signing mismatch: this node {}, the peer {}", if *.local { "signs" } else { "does not sign" }, if *.local { "does not" } else { "does" })]
    SigningMismatch {
        /// Whether this node signs.
        local: bool,
    },
    /// The peer's key is not a valid ed25519 key, or its AUTH does not verify.
    #[error("the peer's key or handshake signature does not verify")]
    BadSignature,
    /// The peer has this node's id.
    #[error("the peer has this node's own id")]
    SelfConnection,
}

impl HandshakeError {
    /// The REFUSE code to send the peer for this error, or `None` when the peer refused.
    pub fn refuse_code(&self) -> Option<RefuseCode> {
        Some(match self {
            HandshakeError::Refused { .. } => return None,
            HandshakeError::Wire(_) | HandshakeError::Unexpected => RefuseCode::Protocol,
            HandshakeError::SigningMismatch { .. } => RefuseCode::SigningMismatch,
            HandshakeError::BadSignature => RefuseCode::BadKey,
            HandshakeError::SelfConnection => RefuseCode::SelfConnection,
        })
    }
}

/// What to do after a handshake frame.
#[derive(Debug)]
#[must_use = "a step says what to send or decide next"]
pub enum Step {
    /// Send this frame and wait for the next.
    Send(Bytes),
    /// The peer is proven: take it with [`Handshake::accept`] or turn it away with
    /// [`Handshake::refuse`].
    Decide(PeerHello),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    WaitHello,
    WaitAuth,
    Decide,
}

/// One side of a handshake.
pub struct Handshake {
    role: Role,
    key: Option<Identity>,
    local_id: MeshId,
    /// This side's HELLO, with its length prefix.
    mine: Bytes,
    theirs: Option<(PeerHello, Bytes)>,
    state: State,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A frame's wire form, length prefix included, to hand out in a [`Step`].
fn emitted(f: &Frame) -> Bytes {
    let mut out = bytes::BytesMut::with_capacity(f.emit_len());
    f.emit(&mut out);
    out.freeze()
}

fn hello_frame(local: &Local, nonce: [u8; 32]) -> Bytes {
    emitted(&Frame::Hello(Hello {
        id: local.id.clone(),
        listen_port: local.listen_port,
        nonce,
        key: local.key.as_ref().map(|k| k.public().to_bytes()),
    }))
}

impl Handshake {
    /// The connecting side, and the HELLO it sends first. `nonce` must be fresh and random.
    pub fn initiator(local: &Local, nonce: [u8; 32]) -> (Handshake, Bytes) {
        let hs = Handshake::new(Role::Initiator, local, nonce);
        let hello = hs.mine.clone();
        (hs, hello)
    }

    /// The accepting side. `nonce` must be fresh and random.
    pub fn acceptor(local: &Local, nonce: [u8; 32]) -> Handshake {
        Handshake::new(Role::Acceptor, local, nonce)
    }

    fn new(role: Role, local: &Local, nonce: [u8; 32]) -> Handshake {
        Handshake {
            role,
            key: local.key.clone(),
            local_id: local.id.clone(),
            mine: hello_frame(local, nonce),
            theirs: None,
            state: State::WaitHello,
        }
    }

    /// Takes the next frame (without its length prefix).
    pub fn on_frame(&mut self, frame: Bytes) -> Result<Step, HandshakeError> {
        let parsed = Frame::parse(&frame)?;
        match (self.state, parsed) {
            (_, Frame::Refuse(code, reason)) => Err(HandshakeError::Refused {
                code,
                reason: reason.into_string(),
            }),
            (State::WaitHello, Frame::Hello(h)) => {
                let peer = self.check_hello(h)?;
                self.theirs = Some((peer, frame));
                self.state = State::WaitAuth;
                Ok(Step::Send(match self.role {
                    // The acceptor answers with its HELLO; the initiator, now that the
                    // transcript is whole, proves its key.
                    Role::Acceptor => self.mine.clone(),
                    Role::Initiator => self.auth_frame(),
                }))
            }
            (State::WaitAuth, Frame::Auth(sig)) => {
                let (peer, _) = self.theirs.as_ref().expect("hello before auth");
                let label = match self.role {
                    Role::Initiator => AUTH_A,
                    Role::Acceptor => AUTH_I,
                };
                match (&peer.key, sig) {
                    (None, None) => {}
                    (Some(k), Some(sig)) => {
                        let msg = [label, &self.transcript()].concat();
                        k.verify_strict(&msg, &Signature::from_bytes(&sig))
                            .map_err(|_| HandshakeError::BadSignature)?;
                    }
                    _ => return Err(HandshakeError::BadSignature),
                }
                self.state = State::Decide;
                Ok(Step::Decide(peer.clone()))
            }
            _ => Err(HandshakeError::Unexpected),
        }
    }

    fn check_hello(&self, h: Hello) -> Result<PeerHello, HandshakeError> {
        if h.key.is_some() != self.key.is_some() {
            return Err(HandshakeError::SigningMismatch {
                local: self.key.is_some(),
            });
        }
        if h.id == self.local_id {
            return Err(HandshakeError::SelfConnection);
        }
        let key = match h.key {
            Some(k) => {
                Some(VerifyingKey::from_bytes(&k).map_err(|_| HandshakeError::BadSignature)?)
            }
            None => None,
        };
        Ok(PeerHello {
            id: h.id.into_string(),
            listen_port: h.listen_port,
            key,
        })
    }

    fn transcript(&self) -> [u8; 32] {
        let (_, theirs) = self.theirs.as_ref().expect("transcript after both hellos");
        let mine = &self.mine[wire::LEN_PREFIX..];
        let (hi, ha) = match self.role {
            Role::Initiator => (mine, &theirs[..]),
            Role::Acceptor => (&theirs[..], mine),
        };
        let mut h = Sha256::new();
        h.update(LABEL);
        h.update((hi.len() as u32).to_be_bytes());
        h.update(hi);
        h.update((ha.len() as u32).to_be_bytes());
        h.update(ha);
        h.finalize().into()
    }

    fn auth_frame(&self) -> Bytes {
        let label = match self.role {
            Role::Initiator => AUTH_I,
            Role::Acceptor => AUTH_A,
        };
        let sig = self
            .key
            .as_ref()
            .map(|k| k.sign(&[label, &self.transcript()].concat()).to_bytes());
        emitted(&Frame::Auth(sig))
    }

    /// Takes the proven peer: the session, and for the acceptor the AUTH to send.
    ///
    /// # Panics
    ///
    /// If called before [`Step::Decide`].
    pub fn accept(self, max_decompressed: usize) -> (Session, Option<Bytes>) {
        assert_eq!(
            self.state,
            State::Decide,
            "accept before the peer is proven"
        );
        let reply = (self.role == Role::Acceptor).then(|| self.auth_frame());
        let th = self.transcript();
        let (peer, _) = self.theirs.expect("proven peer");
        let session = Session {
            tx: Sender {
                key: self.key,
                th,
                role: self.role,
                seq: 0,
            },
            rx: Receiver {
                key: peer.key,
                th,
                role: self.role.other(),
                seq: 0,
                max_decompressed,
            },
            peer,
        };
        (session, reply)
    }

    /// A REFUSE frame to send before closing.
    pub fn refuse(code: RefuseCode, reason: &str) -> Bytes {
        emitted(&Frame::Refuse(code, Reason::new(reason)))
    }
}

/// An established session: the peer, and a sending and a receiving half, which may be
/// used from different tasks.
#[derive(Debug)]
pub struct Session {
    /// The proven peer.
    pub peer: PeerHello,
    /// Builds frames to send.
    pub tx: Sender,
    /// Checks frames received.
    pub rx: Receiver,
}

/// The sending half of a session.
pub struct Sender {
    key: Option<Identity>,
    th: [u8; 32],
    role: Role,
    seq: u64,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("signed", &self.key.is_some())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

fn msg_digest(th: &[u8; 32], role: Role, seq: u64, flags: u8, payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(MSG);
    h.update(th);
    h.update([role.byte()]);
    h.update(seq.to_be_bytes());
    h.update([flags]);
    h.update(payload);
    h.finalize().into()
}

impl Sender {
    /// Whether every message is signed (and so must be built per session).
    pub fn is_signed(&self) -> bool {
        self.key.is_some()
    }

    /// The header of a DATA frame for `payload` (already compressed if `zlib`); the
    /// frame is the header followed by the payload. Signed sessions sign it and take the
    /// next sequence number.
    pub fn header(&mut self, payload: &[u8], zlib: bool) -> wire::DataHeader {
        let mut flags = if zlib { FLAG_ZLIB } else { 0 };
        let Some(key) = &self.key else {
            return wire::DataHeader::new(flags, None, payload.len());
        };
        flags |= FLAG_SIGNED;
        self.seq += 1;
        let d = msg_digest(&self.th, self.role, self.seq, flags, payload);
        let signed = Signed {
            seq: self.seq,
            sig: key.sign(&d).to_bytes(),
        };
        wire::DataHeader::new(flags, Some(&signed), payload.len())
    }

    /// A whole DATA frame, with its length prefix, in one buffer (see [`Self::header`]).
    pub fn data(&mut self, payload: &[u8], zlib: bool) -> Bytes {
        let h = self.header(payload, zlib);
        [h.as_bytes(), payload].concat().into()
    }
}

/// A frame received on a session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a received frame must be delivered or answered"]
pub enum Incoming {
    /// A message: its payload, decompressed, and whether it came compressed.
    Message {
        /// The payload.
        payload: Bytes,
        /// Whether it came zlib-compressed.
        compressed: bool,
    },
    /// A keepalive to answer.
    Ping(u64),
    /// A keepalive's answer.
    Pong(u64),
    /// The peer is leaving, or (a REFUSE after the acceptor took the connection) turned
    /// it away; the reason.
    Bye(String),
}

/// A frame the session will not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// It did not parse: the stream cannot be trusted, so the connection ends.
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    /// A handshake frame after the handshake: the connection ends.
    #[error("handshake frame after the handshake")]
    Unexpected,
    /// A signed session got a message without a signature, or the other way round.
    #[error("message signing does not match the session")]
    SigningMismatch,
    /// The signature does not verify against the key bound to the peer's id.
    #[error("bad message signature")]
    BadSignature,
    /// A sequence number not above the last one accepted.
    #[error("replayed message (sequence {got}, last {last})")]
    Replay {
        /// The one received.
        got: u64,
        /// The last accepted.
        last: u64,
    },
    /// The payload decompresses to more than the bound.
    #[error("compressed message expands past {max} bytes")]
    TooLarge {
        /// The bound.
        max: usize,
    },
    /// The payload is not valid zlib.
    #[error("corrupt compressed message")]
    BadCompression,
}

impl Reject {
    /// Whether the connection must end (the stream itself is broken), rather than the
    /// message be dropped and counted.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Reject::Wire(_) | Reject::Unexpected)
    }
}

/// The receiving half of a session.
#[derive(Debug)]
pub struct Receiver {
    key: Option<VerifyingKey>,
    th: [u8; 32],
    role: Role,
    seq: u64,
    max_decompressed: usize,
}

impl Receiver {
    /// Takes one frame (without its length prefix).
    pub fn on_frame(&mut self, frame: Bytes) -> Result<Incoming, Reject> {
        match Frame::parse_bytes(&frame)? {
            Frame::Data {
                flags,
                signed,
                payload,
            } => {
                match (&self.key, signed) {
                    (None, None) => {}
                    (Some(k), Some(s)) => {
                        let d = msg_digest(&self.th, self.role, s.seq, flags, &payload);
                        k.verify_strict(&d, &Signature::from_bytes(&s.sig))
                            .map_err(|_| Reject::BadSignature)?;
                        if s.seq <= self.seq {
                            return Err(Reject::Replay {
                                got: s.seq,
                                last: self.seq,
                            });
                        }
                        self.seq = s.seq;
                    }
                    _ => return Err(Reject::SigningMismatch),
                }
                let compressed = flags & FLAG_ZLIB != 0;
                let payload = if compressed {
                    decompress(&payload, self.max_decompressed)?
                } else {
                    payload
                };
                Ok(Incoming::Message {
                    payload,
                    compressed,
                })
            }
            Frame::Ping(t) => Ok(Incoming::Ping(t)),
            Frame::Pong(t) => Ok(Incoming::Pong(t)),
            Frame::Bye(r) => Ok(Incoming::Bye(r.into_string())),
            // The initiator turned the connection away after the acceptor took it (a
            // duplicate, say): a goodbye with the reason.
            Frame::Refuse(code, r) if r.is_empty() => Ok(Incoming::Bye(code.to_string())),
            Frame::Refuse(code, r) => Ok(Incoming::Bye(format!("{code}: {r}"))),
            Frame::Hello(_) | Frame::Auth(_) => Err(Reject::Unexpected),
        }
    }
}

/// zlib-compresses `data` (default level).
pub fn compress(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(data.len() / 2 + 64),
        flate2::Compression::default(),
    );
    e.write_all(data).expect("writing to a Vec");
    e.finish().expect("writing to a Vec")
}

/// Inflates zlib `data`, refusing output over `max` bytes: it stops reading as soon as
/// the output passes the bound, so a bomb costs at most `max + 1` bytes.
pub fn decompress(data: &[u8], max: usize) -> Result<Bytes, Reject> {
    use std::io::Read;
    let mut out = Vec::with_capacity(data.len().saturating_mul(2).min(max).min(1 << 20));
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::ZlibDecoder::new(data)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|_| Reject::BadCompression)?;
    if out.len() > max {
        return Err(Reject::TooLarge { max });
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::wire::tests::data;

    fn local(id: &str, signs: bool, seed: u8) -> Local {
        Local {
            id: MeshId::new(id).unwrap(),
            listen_port: 7000,
            key: signs.then(|| Identity::from_seed([seed; 32])),
        }
    }

    fn strip(f: Bytes) -> Bytes {
        f.slice(wire::LEN_PREFIX..)
    }

    /// Runs a whole handshake; returns both sessions.
    fn pair(a: &Local, b: &Local) -> Result<(Session, Session), HandshakeError> {
        let (mut i, hello) = Handshake::initiator(a, [1; 32]);
        let mut r = Handshake::acceptor(b, [2; 32]);
        let Step::Send(hello_a) = r.on_frame(strip(hello))? else {
            panic!("acceptor answers hello")
        };
        let Step::Send(auth_i) = i.on_frame(strip(hello_a))? else {
            panic!("initiator sends auth")
        };
        let Step::Decide(pi) = r.on_frame(strip(auth_i))? else {
            panic!("acceptor decides")
        };
        assert_eq!(pi.id, a.id.as_str());
        let (sr, auth_a) = r.accept(1 << 20);
        let Step::Decide(pa) = i.on_frame(strip(auth_a.unwrap()))? else {
            panic!("initiator decides")
        };
        assert_eq!(pa.id, b.id.as_str());
        let (si, none) = i.accept(1 << 20);
        assert!(none.is_none());
        Ok((si, sr))
    }

    #[test]
    fn unsigned_and_signed_handshakes_complete() {
        let (si, sr) = pair(&local("a", false, 0), &local("b", false, 0)).unwrap();
        assert_eq!((si.peer.id.as_str(), sr.peer.id.as_str()), ("b", "a"));
        assert_eq!(sr.peer.listen_port, 7000);
        let (si, sr) = pair(&local("a", true, 1), &local("b", true, 2)).unwrap();
        assert_eq!(si.peer.key.unwrap(), Identity::from_seed([2; 32]).public());
        assert_eq!(sr.peer.key.unwrap(), Identity::from_seed([1; 32]).public());
    }

    #[test]
    fn mismatches_and_self_connections_are_refused() {
        let e = pair(&local("a", true, 1), &local("b", false, 0)).unwrap_err();
        assert_eq!(e, HandshakeError::SigningMismatch { local: false });
        assert_eq!(e.refuse_code(), Some(RefuseCode::SigningMismatch));
        let e = pair(&local("a", false, 1), &local("a", false, 0)).unwrap_err();
        assert_eq!(e, HandshakeError::SelfConnection);
    }

    #[test]
    fn a_refuse_ends_the_handshake_with_its_reason() {
        let (mut i, _) = Handshake::initiator(&local("a", false, 0), [1; 32]);
        let f = Handshake::refuse(RefuseCode::Limit, "full");
        let e = i.on_frame(strip(f)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "refused by peer: connection limit reached (full)"
        );
        assert_eq!(e.refuse_code(), None);
    }

    #[test]
    fn a_forged_auth_is_refused() {
        // The initiator claims a key it does not hold: its AUTH is signed by another.
        let a = local("a", true, 1);
        let (mut i, hello) = Handshake::initiator(&a, [1; 32]);
        let mut r = Handshake::acceptor(&local("b", true, 2), [2; 32]);
        let Ok(Step::Send(hello_a)) = r.on_frame(strip(hello)) else {
            panic!()
        };
        let Ok(Step::Send(_)) = i.on_frame(strip(hello_a)) else {
            panic!()
        };
        let forged = Frame::Auth(Some(Identity::from_seed([3; 32]).sign(b"x").to_bytes()));
        assert_eq!(
            r.on_frame(strip(emitted(&forged))).unwrap_err(),
            HandshakeError::BadSignature
        );
        // An AUTH replayed from another handshake (other nonces) fails too.
        let mut r2 = Handshake::acceptor(&local("b", true, 2), [9; 32]);
        let (mut i2, hello2) = Handshake::initiator(&a, [8; 32]);
        let Ok(Step::Send(h)) = r2.on_frame(strip(hello2)) else {
            panic!()
        };
        let Ok(Step::Send(auth_other)) = i2.on_frame(strip(h)) else {
            panic!()
        };
        let mut r3 = Handshake::acceptor(&local("b", true, 2), [7; 32]);
        let (_, hello3) = Handshake::initiator(&a, [6; 32]);
        let Ok(Step::Send(_)) = r3.on_frame(strip(hello3)) else {
            panic!()
        };
        assert_eq!(
            r3.on_frame(strip(auth_other)).unwrap_err(),
            HandshakeError::BadSignature
        );
    }

    #[test]
    fn frames_out_of_turn_are_refused() {
        let mut r = Handshake::acceptor(&local("b", false, 0), [2; 32]);
        assert_eq!(
            r.on_frame(strip(emitted(&Frame::Auth(None)))).unwrap_err(),
            HandshakeError::Unexpected
        );
        let mut r = Handshake::acceptor(&local("b", false, 0), [2; 32]);
        assert_eq!(
            r.on_frame(strip(data(0, None, b"early"))).unwrap_err(),
            HandshakeError::Unexpected
        );
    }

    #[test]
    fn signed_messages_verify_and_forgeries_and_replays_do_not() {
        let (mut si, mut sr) = pair(&local("a", true, 1), &local("b", true, 2)).unwrap();
        let f1 = si.tx.data(b"one", false);
        let f2 = si.tx.data(b"two", false);
        assert_eq!(
            sr.rx.on_frame(strip(f1.clone())).unwrap(),
            Incoming::Message {
                payload: Bytes::from_static(b"one"),
                compressed: false
            }
        );
        // Replayed.
        assert_eq!(
            sr.rx.on_frame(strip(f1)).unwrap_err(),
            Reject::Replay { got: 1, last: 1 }
        );
        // Tampered payload.
        let mut bad = f2.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            sr.rx.on_frame(strip(Bytes::from(bad))).unwrap_err(),
            Reject::BadSignature
        );
        // Signed by a key that is not the one bound to "a" (the SecureNode flaw was to
        // trust a key the message brought).
        let mallory = Identity::from_seed([66; 32]);
        let d = msg_digest(&si.tx.th, Role::Initiator, 9, FLAG_SIGNED, b"forged");
        let forged = data(
            FLAG_SIGNED,
            Some(Signed {
                seq: 9,
                sig: mallory.sign(&d).to_bytes(),
            }),
            b"forged",
        );
        assert_eq!(
            sr.rx.on_frame(strip(forged)).unwrap_err(),
            Reject::BadSignature
        );
        // Unsigned on a signed session.
        assert_eq!(
            sr.rx.on_frame(strip(data(0, None, b"x"))).unwrap_err(),
            Reject::SigningMismatch
        );
        // The genuine next message still goes through after all that.
        assert!(sr.rx.on_frame(strip(f2)).is_ok());
        // And the acceptor's own messages verify the other way.
        let back = sr.tx.data(&compress(b"back"), true);
        assert!(matches!(
            si.rx.on_frame(strip(back)).unwrap(),
            Incoming::Message {
                compressed: true,
                ..
            }
        ));
    }

    #[test]
    fn a_message_signed_for_one_direction_is_refused_in_the_other() {
        let (mut si, mut sr) = pair(&local("a", true, 1), &local("b", true, 2)).unwrap();
        let from_a = si.tx.data(b"x", false);
        // Reflected back to its sender: the role in the digest differs.
        assert_eq!(
            si.rx.on_frame(strip(from_a.clone())).unwrap_err(),
            Reject::BadSignature
        );
        assert!(sr.rx.on_frame(strip(from_a)).is_ok());
    }

    #[test]
    fn compression_round_trips_and_bombs_are_refused() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let z = compress(&data);
        assert_eq!(&decompress(&z, data.len()).unwrap()[..], &data[..]);
        assert_eq!(
            decompress(&z, data.len() - 1),
            Err(Reject::TooLarge {
                max: data.len() - 1
            })
        );
        // 64 MiB of zeros in about 64 KiB.
        let bomb = compress(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        assert_eq!(
            decompress(&bomb, 1 << 20),
            Err(Reject::TooLarge { max: 1 << 20 })
        );
        assert_eq!(decompress(b"not zlib", 100), Err(Reject::BadCompression));
        assert_eq!(&decompress(&compress(b""), 0).unwrap()[..], b"");
    }

    #[test]
    fn control_frames_after_the_handshake() {
        let (_, mut sr) = pair(&local("a", false, 1), &local("b", false, 2)).unwrap();
        assert_eq!(
            sr.rx.on_frame(strip(emitted(&Frame::Ping(5)))).unwrap(),
            Incoming::Ping(5)
        );
        assert_eq!(
            sr.rx
                .on_frame(strip(emitted(&Frame::Bye(Reason::new("bye")))))
                .unwrap(),
            Incoming::Bye("bye".into())
        );
        assert_eq!(
            sr.rx
                .on_frame(strip(Handshake::refuse(RefuseCode::Duplicate, "")))
                .unwrap(),
            Incoming::Bye("duplicate connection".into())
        );
        let e = sr
            .rx
            .on_frame(strip(emitted(&Frame::Auth(None))))
            .unwrap_err();
        assert!(e.is_fatal());
        assert!(!Reject::BadSignature.is_fatal());
    }
}
