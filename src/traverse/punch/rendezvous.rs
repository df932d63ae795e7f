//! The rendezvous, sans-IO: how two nodes agree a punch over signalling.
//!
//! The initiator sends an [`Offer`] as a signalling request: a fresh nonce, the protocol,
//! its [`NatSummary`], for TCP its [`TcpNatSummary`], and its candidates (the mapped
//! address STUN saw for the punching socket or port, predicted ones where the NAT
//! allows, its local address last). The responder answers with an [`Answer`]: the
//! offer's nonce, a nonce of its own, its summaries and candidates. Both sides then
//! decide the same way ([`udp_feasibility`] for UDP, [`tcp_feasibility`] for TCP); where
//! the theory says the punch cannot work, both refuse at once, before anything is sent
//! to the peer's candidates. Otherwise
//! the initiator, which measured the round trip from offer to answer, sends a one-way
//! [`Ready`] carrying it and starts half a round trip later, about when the Ready
//! arrives; the responder starts when the Ready arrives. No wall clock is compared.
//!
//! The two nonces bind the messages together and key the probes and the TCP hellos
//! ([`SessionKey`], one derivation for both): signalling is sealed, so only the two
//! nodes know them. A candidate
//! may be a private address shared by both LANs (trying it reaches yourself): the probes'
//! keys and directions make such an echo harmless.
//!
//! Every message is bounded: at most [`MAX_CANDIDATES`] candidates, [`MAX_MESSAGE`]
//! bytes in all.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::tcp::{
    tcp_feasibility, HelloKey, Inbound, TcpMapping, TcpNatSummary, TcpRefusal, TcpWay,
};
use super::{udp_feasibility, Approach, Error, NatSummary, Plan, Refusal, Role};
use crate::addr::wire;
use crate::identity::NodeId;
use crate::nat::{Mapping, PortAllocation};
use crate::Proto;

/// The most candidates a side offers.
pub const MAX_CANDIDATES: usize = 8;
/// The bytes of a nonce.
pub const NONCE_LEN: usize = 16;
/// The largest rendezvous message: an answer with a TCP summary and [`MAX_CANDIDATES`]
/// IPv6 candidates.
pub const MAX_MESSAGE: usize =
    HEADER + 2 * NONCE_LEN + NatSummary::LEN + TCP_LEN + 1 + MAX_CANDIDATES * 19;

/// A rendezvous nonce: 16 random bytes.
pub type Nonce = [u8; NONCE_LEN];

const MAGIC: [u8; 2] = *b"PR";
const VERSION: u8 = 2;
const HEADER: usize = 4;
const OFFER: u8 = 1;
const ANSWER: u8 = 2;
const READY: u8 = 3;
/// The bytes of the optional TCP summary: presence, mapping, inbound, delta (i32).
const TCP_LEN: usize = 7;

/// A side's candidates, best first: at most [`MAX_CANDIDATES`], no duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidates(Vec<SocketAddr>);

impl Candidates {
    /// Checks the bound and drops duplicates, keeping the first of each.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Result<Candidates, Error> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in addrs {
            if out.contains(&a) {
                continue;
            }
            if out.len() == MAX_CANDIDATES {
                return Err(Error::TooManyCandidates {
                    len: MAX_CANDIDATES + 1,
                    max: MAX_CANDIDATES,
                });
            }
            out.push(a);
        }
        Ok(Candidates(out))
    }

    /// The candidates, best first.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.0
    }

    /// A node's candidates for a punching socket bound to `local`, whose mapped address
    /// STUN saw as `mapped`: the mapped address; the port a new mapping will likely get,
    /// where the NAT maps per destination in a pattern; then `local` when it is a
    /// specific address (on a shared private LAN it may be the peer's own host: the
    /// probes' keys make that harmless).
    pub fn gather(local: SocketAddr, mapped: Option<SocketAddr>, nat: &NatSummary) -> Candidates {
        let predicted = mapped.and_then(|m| predicted(local, m, nat));
        let local = (!local.ip().is_unspecified()).then_some(local);
        let all = [mapped, predicted, local].into_iter().flatten();
        Candidates::new(all).expect("three candidates are within the bound")
    }

    fn parse(buf: &mut &[u8]) -> Result<Candidates, Error> {
        let n = usize::from(take_u8(buf)?);
        if n > MAX_CANDIDATES {
            return Err(Error::TooManyCandidates {
                len: n,
                max: MAX_CANDIDATES,
            });
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(parse_addr(buf)?);
        }
        Ok(Candidates(out))
    }

    fn emit(&self, out: &mut BytesMut) {
        out.put_u8(self.0.len() as u8);
        for a in &self.0 {
            wire::put(out, a);
        }
    }

    fn emit_len(&self) -> usize {
        1 + self.0.iter().map(wire::len).sum::<usize>()
    }
}

/// Where a NAT that maps per destination will likely map the punching socket next.
fn predicted(local: SocketAddr, mapped: SocketAddr, nat: &NatSummary) -> Option<SocketAddr> {
    if nat.mapping == Some(Mapping::EndpointIndependent) {
        return None;
    }
    let port = match nat.port_allocation? {
        PortAllocation::Preserving => local.port(),
        PortAllocation::Sequential { delta } => {
            u16::try_from(i32::from(mapped.port()) + delta).ok()?
        }
        PortAllocation::Random => return None,
    };
    Some(SocketAddr::new(mapped.ip(), port))
}

/// The initiator's opening message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The initiator's nonce.
    pub nonce: Nonce,
    /// The protocol to punch.
    pub proto: Proto,
    /// The initiator's NAT.
    pub nat: NatSummary,
    /// What the initiator's NAT does to TCP: required in a TCP offer.
    pub tcp: Option<TcpNatSummary>,
    /// The initiator's candidates.
    pub candidates: Candidates,
}

/// The responder's answer to an [`Offer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The offer's nonce.
    pub offer: Nonce,
    /// The responder's nonce.
    pub nonce: Nonce,
    /// The responder's NAT.
    pub nat: NatSummary,
    /// What the responder's NAT does to TCP: required in the answer to a TCP offer.
    pub tcp: Option<TcpNatSummary>,
    /// The responder's candidates.
    pub candidates: Candidates,
}

/// The initiator's last word: start now; the round trip it measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// The offer's nonce.
    pub offer: Nonce,
    /// The round trip from offer to answer, in microseconds.
    pub rtt_us: u32,
}

/// A rendezvous message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Offer`].
    Offer(Offer),
    /// See [`Answer`].
    Answer(Answer),
    /// See [`Ready`].
    Ready(Ready),
}

impl Message {
    /// Parses a message of at most [`MAX_MESSAGE`] bytes.
    pub fn parse(bytes: &[u8]) -> Result<Message, Error> {
        if bytes.len() > MAX_MESSAGE {
            return Err(Error::Malformed("rendezvous message too long"));
        }
        let mut buf = bytes;
        let head = take::<HEADER>(&mut buf)?;
        if head[..2] != MAGIC || head[2] != VERSION {
            return Err(Error::Malformed("not a rendezvous message"));
        }
        let msg = match head[3] {
            OFFER => Message::Offer(Offer {
                nonce: take(&mut buf)?,
                proto: match take_u8(&mut buf)? {
                    0 => Proto::Udp,
                    1 => Proto::Tcp,
                    _ => return Err(Error::Malformed("unknown protocol")),
                },
                nat: parse_nat(&mut buf)?,
                tcp: parse_tcp(&mut buf)?,
                candidates: Candidates::parse(&mut buf)?,
            }),
            ANSWER => Message::Answer(Answer {
                offer: take(&mut buf)?,
                nonce: take(&mut buf)?,
                nat: parse_nat(&mut buf)?,
                tcp: parse_tcp(&mut buf)?,
                candidates: Candidates::parse(&mut buf)?,
            }),
            READY => Message::Ready(Ready {
                offer: take(&mut buf)?,
                rtt_us: u32::from_be_bytes(take(&mut buf)?),
            }),
            _ => return Err(Error::Malformed("unknown rendezvous message")),
        };
        if !buf.is_empty() {
            return Err(Error::Malformed(
                "trailing bytes after a rendezvous message",
            ));
        }
        Ok(msg)
    }

    /// Appends the wire form.
    pub fn emit(&self, out: &mut BytesMut) {
        out.reserve(self.emit_len());
        out.put_slice(&MAGIC);
        out.put_u8(VERSION);
        match self {
            Message::Offer(o) => {
                out.put_u8(OFFER);
                out.put_slice(&o.nonce);
                out.put_u8(match o.proto {
                    Proto::Udp => 0,
                    Proto::Tcp => 1,
                });
                o.nat.emit(out);
                emit_tcp(o.tcp.as_ref(), out);
                o.candidates.emit(out);
            }
            Message::Answer(a) => {
                out.put_u8(ANSWER);
                out.put_slice(&a.offer);
                out.put_slice(&a.nonce);
                a.nat.emit(out);
                emit_tcp(a.tcp.as_ref(), out);
                a.candidates.emit(out);
            }
            Message::Ready(r) => {
                out.put_u8(READY);
                out.put_slice(&r.offer);
                out.put_u32(r.rtt_us);
            }
        }
    }

    /// The length of the wire form.
    pub fn emit_len(&self) -> usize {
        HEADER
            + match self {
                Message::Offer(o) => {
                    NONCE_LEN + 1 + NatSummary::LEN + tcp_len(&o.tcp) + o.candidates.emit_len()
                }
                Message::Answer(a) => {
                    2 * NONCE_LEN + NatSummary::LEN + tcp_len(&a.tcp) + a.candidates.emit_len()
                }
                Message::Ready(_) => NONCE_LEN + 4,
            }
    }

    /// The wire form in a fresh buffer.
    pub fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(self.emit_len());
        self.emit(&mut out);
        out
    }
}

fn take<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], Error> {
    if buf.len() < N {
        return Err(Error::Malformed("rendezvous message cut short"));
    }
    let mut out = [0u8; N];
    buf.copy_to_slice(&mut out);
    Ok(out)
}

fn take_u8(buf: &mut &[u8]) -> Result<u8, Error> {
    Ok(take::<1>(buf)?[0])
}

fn parse_nat(buf: &mut &[u8]) -> Result<NatSummary, Error> {
    let nat = NatSummary::parse(buf)?;
    buf.advance(NatSummary::LEN);
    Ok(nat)
}

/// The optional TCP summary: `0`, or `1`, the mapping (`0` direct, `1` translated by an
/// unknown pattern, `2` preserving, `3` sequential, `4` random), inbound (`0` open, `1`
/// filtered), and the sequential delta (i32, big-endian, 0 unless sequential).
fn parse_tcp(buf: &mut &[u8]) -> Result<Option<TcpNatSummary>, Error> {
    match take_u8(buf)? {
        0 => return Ok(None),
        1 => {}
        _ => return Err(Error::Malformed("unknown tcp summary presence")),
    }
    let [mapping, inbound] = take::<2>(buf)?;
    let delta = i32::from_be_bytes(take(buf)?);
    if mapping != 3 && delta != 0 {
        return Err(Error::Malformed(
            "a port delta without sequential allocation",
        ));
    }
    let translated = |a| Ok(TcpMapping::Translated(a));
    let mapping = match mapping {
        0 => Ok(TcpMapping::Direct),
        1 => translated(None),
        2 => translated(Some(PortAllocation::Preserving)),
        3 => translated(Some(PortAllocation::Sequential { delta })),
        4 => translated(Some(PortAllocation::Random)),
        _ => Err(Error::Malformed("unknown tcp mapping")),
    }?;
    let inbound = match inbound {
        0 => Inbound::Open,
        1 => Inbound::Filtered,
        _ => return Err(Error::Malformed("unknown tcp inbound")),
    };
    Ok(Some(TcpNatSummary { mapping, inbound }))
}

fn emit_tcp(tcp: Option<&TcpNatSummary>, out: &mut BytesMut) {
    let Some(t) = tcp else {
        out.put_u8(0);
        return;
    };
    let (mapping, delta) = match t.mapping {
        TcpMapping::Direct => (0, 0),
        TcpMapping::Translated(None) => (1, 0),
        TcpMapping::Translated(Some(PortAllocation::Preserving)) => (2, 0),
        TcpMapping::Translated(Some(PortAllocation::Sequential { delta })) => (3, delta),
        TcpMapping::Translated(Some(PortAllocation::Random)) => (4, 0),
    };
    out.put_u8(1);
    out.put_u8(mapping);
    out.put_u8(match t.inbound {
        Inbound::Open => 0,
        Inbound::Filtered => 1,
    });
    out.put_i32(delta);
}

fn tcp_len(tcp: &Option<TcpNatSummary>) -> usize {
    if tcp.is_some() {
        TCP_LEN
    } else {
        1
    }
}

fn parse_addr(buf: &mut &[u8]) -> Result<SocketAddr, Error> {
    let a = wire::take(buf).map_err(Error::Malformed)?;
    if a.port() == 0 || a.ip().is_unspecified() {
        return Err(Error::Malformed("a candidate without address or port"));
    }
    Ok(a)
}

/// The key both sides derive from the two nonces; it authenticates the probes.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// HMAC-SHA256 over a label and the protocol, keyed with both nonces.
    pub fn derive(offer: &Nonce, answer: &Nonce, proto: Proto) -> SessionKey {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&[&offer[..], &answer[..]].concat())
                .expect("hmac takes any key length");
        mac.update(b"p2pipe/punch/1 ");
        mac.update(proto.to_string().as_bytes());
        SessionKey(mac.finalize().into_bytes().into())
    }

    /// The key's bytes, for the probe MAC.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<&SessionKey> for HelloKey {
    /// The TCP hellos' key is the session key of a TCP rendezvous.
    fn from(key: &SessionKey) -> HelloKey {
        HelloKey::new(key.0)
    }
}

/// How an agreed punch gets its first packet or connection through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Way {
    /// A UDP punch, by [`udp_feasibility`].
    Udp(Approach),
    /// A TCP punch, by [`tcp_feasibility`].
    Tcp(TcpWay),
}

/// Why the theory rules a punch out, for either protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ruled {
    Udp(Refusal),
    Tcp(TcpRefusal),
}

impl Ruled {
    fn error(&self, peer: NodeId) -> Error {
        match self {
            Ruled::Udp(r) => Error::Refused {
                peer,
                refusal: r.clone(),
            },
            Ruled::Tcp(r) => Error::TcpRefused { peer, refusal: *r },
        }
    }
}

/// One side's NAT, as a rendezvous message carries it.
type Nats<'a> = (&'a NatSummary, Option<&'a TcpNatSummary>);

/// The theory's decision for `proto` between this side and the peer; a TCP rendezvous
/// whose messages lack a TCP summary is malformed.
fn decide(proto: Proto, mine: Nats<'_>, theirs: Nats<'_>) -> Result<Result<Way, Ruled>, Error> {
    Ok(match proto {
        Proto::Udp => udp_feasibility(mine.0, theirs.0)
            .map(Way::Udp)
            .map_err(Ruled::Udp),
        Proto::Tcp => {
            let (Some(m), Some(t)) = (mine.1, theirs.1) else {
                return Err(Error::Malformed(
                    "a tcp rendezvous without a tcp nat summary",
                ));
            };
            tcp_feasibility(m, t).map(Way::Tcp).map_err(Ruled::Tcp)
        }
    })
}

/// What the rendezvous agreed, on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// Where to send, from when.
    pub plan: Plan,
    /// How the first packet or connection is expected to get in.
    pub way: Way,
    /// The probes' key (for TCP, the hellos' key: see [`HelloKey`]'s `From`).
    pub key: SessionKey,
    /// The offer's nonce, which names the session.
    pub session: Nonce,
}

/// The initiator's side of a rendezvous.
#[derive(Debug, Clone)]
pub struct Initiator {
    peer: NodeId,
    offer: Offer,
    sent: Instant,
}

impl Initiator {
    /// Starts a rendezvous with `peer`: the offer to send as a signalling request now.
    pub fn new(peer: NodeId, offer: Offer, now: Instant) -> Initiator {
        Initiator {
            peer,
            offer,
            sent: now,
        }
    }

    /// The offer, to send as a request.
    pub fn offer(&self) -> Message {
        Message::Offer(self.offer.clone())
    }

    /// Takes the answer: the agreement and the [`Ready`] to send, or the refusal, at
    /// once, when the theory says the punch cannot work.
    pub fn on_answer(&self, bytes: &[u8], now: Instant) -> Result<(Agreement, Message), Error> {
        let Message::Answer(answer) = Message::parse(bytes)? else {
            return Err(Error::Malformed("expected an answer"));
        };
        if answer.offer != self.offer.nonce {
            return Err(Error::WrongNonce { peer: self.peer });
        }
        let mine = (&self.offer.nat, self.offer.tcp.as_ref());
        let way = decide(self.offer.proto, mine, (&answer.nat, answer.tcp.as_ref()))?
            .map_err(|r| r.error(self.peer))?;
        let rtt = now.saturating_duration_since(self.sent);
        let ready = Ready {
            offer: self.offer.nonce,
            rtt_us: u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX),
        };
        let agreement = Agreement {
            plan: Plan {
                remote: answer.candidates.0,
                start: now + rtt / 2,
                rtt,
                role: Role::Initiator,
            },
            way,
            key: SessionKey::derive(&self.offer.nonce, &answer.nonce, self.offer.proto),
            session: self.offer.nonce,
        };
        Ok((agreement, Message::Ready(ready)))
    }
}

/// The responder's side of a rendezvous.
#[derive(Debug, Clone)]
pub struct Responder {
    peer: NodeId,
    offer: Offer,
    answer: Answer,
    feasible: Result<Way, Ruled>,
}

impl Responder {
    /// Takes an offer from `peer` and builds the answer from this side's nonce, NAT
    /// summaries (`tcp` is required for a TCP offer) and candidates. The answer is sent
    /// even when the punch cannot work, so that the initiator refuses at once too: see
    /// [`Responder::refusal`].
    pub fn new(
        peer: NodeId,
        offer_bytes: &[u8],
        nonce: Nonce,
        nat: NatSummary,
        tcp: Option<TcpNatSummary>,
        candidates: Candidates,
    ) -> Result<Responder, Error> {
        let Message::Offer(offer) = Message::parse(offer_bytes)? else {
            return Err(Error::Malformed("expected an offer"));
        };
        let theirs = (&offer.nat, offer.tcp.as_ref());
        let feasible = decide(offer.proto, (&nat, tcp.as_ref()), theirs)?;
        let answer = Answer {
            offer: offer.nonce,
            nonce,
            nat,
            tcp,
            candidates,
        };
        Ok(Responder {
            peer,
            offer,
            answer,
            feasible,
        })
    }

    /// The offer taken.
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// The answer, to send as the response.
    pub fn answer(&self) -> Message {
        Message::Answer(self.answer.clone())
    }

    /// Why the punch cannot work, when the theory says so: no [`Ready`] will come.
    pub fn refusal(&self) -> Option<Error> {
        self.feasible.as_ref().err().map(|r| r.error(self.peer))
    }

    /// Takes the initiator's [`Ready`]: start now.
    pub fn on_ready(&self, bytes: &[u8], now: Instant) -> Result<Agreement, Error> {
        let Message::Ready(ready) = Message::parse(bytes)? else {
            return Err(Error::Malformed("expected a ready"));
        };
        if ready.offer != self.offer.nonce {
            return Err(Error::WrongNonce { peer: self.peer });
        }
        if let Some(refused) = self.refusal() {
            return Err(refused);
        }
        Ok(Agreement {
            plan: Plan {
                remote: self.offer.candidates.0.clone(),
                start: now,
                rtt: Duration::from_micros(u64::from(ready.rtt_us)),
                role: Role::Responder,
            },
            way: self.feasible.clone().expect("refusals returned above"),
            key: SessionKey::derive(&self.offer.nonce, &self.answer.nonce, self.offer.proto),
            session: self.offer.nonce,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::NatType;

    fn peer() -> NodeId {
        crate::identity::Identity::from_seed([9; 32]).node_id()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn offer(nat: NatType) -> Offer {
        Offer {
            nonce: [1; NONCE_LEN],
            proto: Proto::Udp,
            nat: NatSummary::of_type(nat),
            tcp: None,
            candidates: Candidates::new([addr("198.51.100.1:4000"), addr("[2001:db8::2]:5000")])
                .unwrap(),
        }
    }

    #[test]
    fn every_message_survives_its_wire_form() {
        let msgs = [
            Message::Offer(offer(NatType::FullCone)),
            Message::Answer(Answer {
                offer: [1; NONCE_LEN],
                nonce: [2; NONCE_LEN],
                nat: NatSummary::default(),
                tcp: Some(TcpNatSummary {
                    mapping: TcpMapping::Translated(Some(PortAllocation::Sequential { delta: -2 })),
                    inbound: Inbound::Filtered,
                }),
                candidates: Candidates::default(),
            }),
            Message::Ready(Ready {
                offer: [3; NONCE_LEN],
                rtt_us: 12_345,
            }),
        ];
        for m in msgs {
            let bytes = m.to_bytes();
            assert_eq!(bytes.len(), m.emit_len());
            assert_eq!(Message::parse(&bytes).unwrap(), m);
            for cut in 0..bytes.len() {
                assert!(Message::parse(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut long = bytes.to_vec();
            long.push(0);
            assert!(Message::parse(&long).is_err());
        }
    }

    #[test]
    fn a_message_with_too_many_candidates_is_refused_before_reading_them() {
        let mut bytes = Message::Offer(offer(NatType::Open)).to_bytes().to_vec();
        let count_at = HEADER + NONCE_LEN + 1 + NatSummary::LEN + 1;
        bytes[count_at] = 200;
        assert!(matches!(
            Message::parse(&bytes),
            Err(Error::TooManyCandidates { len: 200, .. })
        ));
        let nine = (0..9).map(|i| SocketAddr::from(([198, 51, 100, 1], 4000 + i)));
        assert!(Candidates::new(nine).is_err());
        let max = Candidates::new((0..8).map(|i| SocketAddr::from(([0x20; 16], 1 + i)))).unwrap();
        let m = Message::Answer(Answer {
            offer: [0; NONCE_LEN],
            nonce: [0; NONCE_LEN],
            nat: NatSummary::default(),
            tcp: Some(TcpNatSummary {
                mapping: TcpMapping::Direct,
                inbound: Inbound::Open,
            }),
            candidates: max,
        });
        assert_eq!(m.emit_len(), MAX_MESSAGE);
        assert!(Message::parse(&m.to_bytes()).is_ok());
    }

    #[test]
    fn candidates_are_mapped_then_predicted_then_local() {
        let local = addr("198.18.1.2:40000");
        let mapped = addr("198.51.100.1:50000");
        let cone = Candidates::gather(local, Some(mapped), &NatSummary::of_type(NatType::FullCone));
        assert_eq!(cone.addrs(), &[mapped, local]);
        let mut seq = NatSummary::of_type(NatType::Symmetric);
        seq.port_allocation = Some(PortAllocation::Sequential { delta: 2 });
        let got = Candidates::gather(local, Some(mapped), &seq);
        assert_eq!(got.addrs(), &[mapped, addr("198.51.100.1:50002"), local]);
        seq.port_allocation = Some(PortAllocation::Preserving);
        let got = Candidates::gather(local, Some(mapped), &seq);
        assert_eq!(got.addrs()[1], addr("198.51.100.1:40000"));
        let random = NatSummary::of_type(NatType::Symmetric);
        let wildcard = addr("0.0.0.0:40000");
        assert_eq!(
            Candidates::gather(wildcard, Some(mapped), &random).addrs(),
            &[mapped]
        );
        let open = Candidates::gather(local, Some(local), &NatSummary::of_type(NatType::Open));
        assert_eq!(open.addrs(), &[local], "duplicates are dropped");
    }

    #[test]
    fn both_sides_agree_one_key_and_start_half_a_round_trip_apart() {
        let t0 = Instant::now();
        let initiator = Initiator::new(peer(), offer(NatType::FullCone), t0);
        let offer_bytes = initiator.offer().to_bytes();
        let theirs = Candidates::new([addr("198.51.100.5:6000")]).unwrap();
        let responder = Responder::new(
            peer(),
            &offer_bytes,
            [7; NONCE_LEN],
            NatSummary::of_type(NatType::PortRestrictedCone),
            None,
            theirs.clone(),
        )
        .unwrap();
        assert!(responder.refusal().is_none());
        let answer = responder.answer().to_bytes();
        let t1 = t0 + Duration::from_millis(80);
        let (mine, ready) = initiator.on_answer(&answer, t1).unwrap();
        assert_eq!(mine.plan.rtt, Duration::from_millis(80));
        assert_eq!(mine.plan.start, t1 + Duration::from_millis(40));
        assert_eq!(mine.plan.remote, theirs.addrs());
        assert_eq!(mine.plan.role, Role::Initiator);
        assert_eq!(mine.way, Way::Udp(Approach::Direct));
        let t2 = t1 + Duration::from_millis(40);
        let yours = responder.on_ready(&ready.to_bytes(), t2).unwrap();
        assert_eq!(yours.key, mine.key);
        assert_eq!(yours.session, mine.session);
        assert_eq!(yours.plan.start, t2);
        assert_eq!(yours.plan.rtt, Duration::from_millis(80));
        assert_eq!(yours.plan.role, Role::Responder);
        assert_eq!(
            yours.plan.remote,
            offer(NatType::FullCone).candidates.addrs()
        );
        assert_eq!(format!("{:?}", yours.key), "SessionKey(..)");
    }

    #[test]
    fn an_answer_to_another_offer_is_refused() {
        let t0 = Instant::now();
        let initiator = Initiator::new(peer(), offer(NatType::FullCone), t0);
        let stray = Message::Answer(Answer {
            offer: [5; NONCE_LEN],
            nonce: [6; NONCE_LEN],
            nat: NatSummary::of_type(NatType::FullCone),
            tcp: None,
            candidates: Candidates::default(),
        });
        let got = initiator.on_answer(&stray.to_bytes(), t0);
        assert!(matches!(got, Err(Error::WrongNonce { .. })), "{got:?}");
        let ready = Message::Ready(Ready {
            offer: [5; NONCE_LEN],
            rtt_us: 1,
        });
        let responder = Responder::new(
            peer(),
            &initiator.offer().to_bytes(),
            [7; NONCE_LEN],
            NatSummary::of_type(NatType::FullCone),
            None,
            Candidates::default(),
        )
        .unwrap();
        let got = responder.on_ready(&ready.to_bytes(), t0);
        assert!(matches!(got, Err(Error::WrongNonce { .. })), "{got:?}");
    }

    #[test]
    fn both_sides_refuse_at_once_between_two_random_symmetric_nats() {
        let t0 = Instant::now();
        let initiator = Initiator::new(peer(), offer(NatType::Symmetric), t0);
        let responder = Responder::new(
            peer(),
            &initiator.offer().to_bytes(),
            [7; NONCE_LEN],
            NatSummary::of_type(NatType::Symmetric),
            None,
            Candidates::default(),
        )
        .unwrap();
        let refused = responder.refusal().expect("refused").to_string();
        assert!(refused.contains("unpredictable"), "{refused}");
        let got = initiator.on_answer(&responder.answer().to_bytes(), t0);
        let Err(Error::Refused { refusal, .. }) = got else {
            panic!("{got:?}");
        };
        assert_eq!(refusal, Refusal::BothUnpredictable);
    }

    fn tcp(mapping: TcpMapping) -> Option<TcpNatSummary> {
        Some(TcpNatSummary {
            mapping,
            inbound: Inbound::Filtered,
        })
    }

    fn tcp_offer(mine: Option<TcpNatSummary>) -> Offer {
        Offer {
            proto: Proto::Tcp,
            tcp: mine,
            // A udp-blocked side can still punch tcp: the udp summary plays no part.
            ..offer(NatType::UdpBlocked)
        }
    }

    #[test]
    fn a_tcp_rendezvous_decides_by_the_tcp_summaries_and_keys_the_hellos() {
        let t0 = Instant::now();
        let preserving = tcp(TcpMapping::Translated(Some(PortAllocation::Preserving)));
        let initiator = Initiator::new(peer(), tcp_offer(preserving), t0);
        let responder = Responder::new(
            peer(),
            &initiator.offer().to_bytes(),
            [7; NONCE_LEN],
            NatSummary::of_type(NatType::UdpBlocked),
            tcp(TcpMapping::Direct),
            Candidates::new([addr("198.51.100.5:6000")]).unwrap(),
        )
        .unwrap();
        assert!(responder.refusal().is_none());
        let t1 = t0 + Duration::from_millis(30);
        let (mine, ready) = initiator
            .on_answer(&responder.answer().to_bytes(), t1)
            .unwrap();
        assert_eq!(mine.way, Way::Tcp(TcpWay::SimultaneousOpen));
        assert_eq!(mine.plan.start, t1 + Duration::from_millis(15));
        let yours = responder.on_ready(&ready.to_bytes(), t1).unwrap();
        assert_eq!(yours.way, Way::Tcp(TcpWay::SimultaneousOpen));
        assert_eq!(HelloKey::from(&yours.key), HelloKey::from(&mine.key));
        let udp = SessionKey::derive(&[1; NONCE_LEN], &[7; NONCE_LEN], Proto::Udp);
        assert_ne!(mine.key, udp, "the protocol is part of the key");
    }

    #[test]
    fn a_tcp_rendezvous_refuses_two_random_nats_at_once_on_both_sides() {
        let t0 = Instant::now();
        let random = tcp(TcpMapping::Translated(Some(PortAllocation::Random)));
        let initiator = Initiator::new(peer(), tcp_offer(random), t0);
        let responder = Responder::new(
            peer(),
            &initiator.offer().to_bytes(),
            [7; NONCE_LEN],
            NatSummary::default(),
            random,
            Candidates::default(),
        )
        .unwrap();
        let refused = responder.refusal().expect("refused").to_string();
        assert!(refused.starts_with("tcp hole punching to"), "{refused}");
        assert!(refused.contains("unpredictable"), "{refused}");
        let got = initiator.on_answer(&responder.answer().to_bytes(), t0);
        let Err(Error::TcpRefused { refusal, .. }) = got else {
            panic!("{got:?}");
        };
        assert_eq!(
            refusal,
            TcpRefusal::Unpredictable {
                side: super::super::tcp::Side::Both
            }
        );
    }

    #[test]
    fn a_tcp_offer_or_answer_without_a_tcp_summary_is_malformed() {
        let t0 = Instant::now();
        let bare = Initiator::new(peer(), tcp_offer(None), t0)
            .offer()
            .to_bytes();
        let got = Responder::new(
            peer(),
            &bare,
            [7; NONCE_LEN],
            NatSummary::default(),
            tcp(TcpMapping::Direct),
            Candidates::default(),
        );
        assert!(matches!(got, Err(Error::Malformed(_))), "{got:?}");
        let initiator = Initiator::new(peer(), tcp_offer(tcp(TcpMapping::Direct)), t0);
        let answer = Message::Answer(Answer {
            offer: [1; NONCE_LEN],
            nonce: [2; NONCE_LEN],
            nat: NatSummary::default(),
            tcp: None,
            candidates: Candidates::default(),
        });
        let got = initiator.on_answer(&answer.to_bytes(), t0);
        assert!(matches!(got, Err(Error::Malformed(_))), "{got:?}");
    }

    #[test]
    fn a_tcp_summary_with_a_stray_delta_or_unknown_tags_does_not_parse() {
        let m = Message::Offer(tcp_offer(tcp(TcpMapping::Translated(Some(
            PortAllocation::Preserving,
        )))));
        let bytes = m.to_bytes().to_vec();
        let at = HEADER + NONCE_LEN + 1 + NatSummary::LEN;
        assert_eq!(&bytes[at..at + 3], &[1, 2, 1]);
        for (offset, value) in [(0, 2), (1, 9), (2, 2), (6, 1)] {
            let mut bad = bytes.clone();
            bad[at + offset] = value;
            assert!(Message::parse(&bad).is_err(), "byte {offset} = {value}");
        }
    }
}
