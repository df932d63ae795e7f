//! The TURN client core, sans-IO: bytes and `now` in, bytes to send, events and the
//! next deadline out. It owns no socket, clock or task.
//!
//! One [`Client`] holds one allocation on one server: its login (RFC 5389 long-term
//! credentials: the first request goes without them, a 401 brings REALM and NONCE,
//! the request is sent again signed; a 438 brings a fresh nonce and one more try), its
//! refreshes, its permissions and channels and their refreshes, and RFC 6062's Connect.
//! Over UDP requests are retransmitted on the STUN schedule ([`stun::Config`]); over
//! TCP they are sent once and wait the schedule's whole span.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use stun_codec::rfc5389::attributes::{Nonce, Realm};
use stun_codec::MessageClass;

use super::attr::{self, MAX_REALM_OR_NONCE};
use super::data::{ChannelData, Indication, MAX_CHANNEL, MIN_CHANNEL};
use super::msg::{self, Challenge, Credentials, Kind, Reply};
use super::Error;
use crate::stun;

/// Permissions last 300 s (RFC 5766 section 8); they are refreshed after this.
pub(crate) const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// Channels last 600 s, but binding one also refreshes its peer's permission (300 s), so
/// channels are refreshed as often as permissions.
pub(crate) const CHANNEL_REFRESH: Duration = PERMISSION_REFRESH;
/// How long after a failed refresh it is tried again.
const RETRY: Duration = Duration::from_secs(30);
/// The lifetime asked of the server, in seconds (RFC 5766's default).
const LIFETIME: u32 = 600;
/// At most this many requests wait for answers at once.
pub(crate) const MAX_PENDING: usize = 32;
/// At most this many permissions (peer addresses) per allocation.
pub(crate) const MAX_PERMISSIONS: usize = 256;
/// At most this many channels per allocation.
pub(crate) const MAX_CHANNELS: usize = 256;

/// How a client is set up.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The server.
    pub(crate) server: SocketAddr,
    /// True over TCP: no retransmissions.
    pub(crate) reliable: bool,
    /// The long-term credentials.
    pub(crate) credentials: Credentials,
    /// The realm the server must name, if the caller knows it.
    pub(crate) realm: Option<String>,
    /// The retransmission schedule (over TCP, its whole span is the wait).
    pub(crate) schedule: stun::Config,
}

/// Where the allocation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Nothing asked yet.
    Idle,
    /// Allocate sent.
    Allocating,
    /// The server granted the allocation.
    Allocated,
    /// Refresh with lifetime 0 sent.
    Closing,
    /// The allocation is gone.
    Closed,
    /// Allocate failed, or the allocation was lost.
    Failed,
}

/// What happened, for the driver to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The server granted the allocation.
    Allocated {
        relayed: SocketAddr,
        mapped: Option<SocketAddr>,
        lifetime: Duration,
    },
    /// A permission for `peer`'s address is installed.
    Permitted(SocketAddr),
    /// A channel is bound to `peer`.
    ChannelBound { peer: SocketAddr, channel: u16 },
    /// Connect (RFC 6062) succeeded: bind a data connection with `id`.
    Connected { peer: SocketAddr, id: u32 },
    /// A peer connected to the relayed address (RFC 6062).
    ConnectionAttempt { peer: SocketAddr, id: u32 },
    /// A request failed.
    Failed { kind: Kind, error: Error },
    /// The allocation was deleted (Refresh with lifetime 0 answered).
    Closed,
}

/// What [`Client::handle_input`] made of a message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "input may be a peer's data"]
pub(crate) enum Input<'a> {
    /// Data from a peer (a Data indication or ChannelData).
    Data { peer: SocketAddr, data: &'a [u8] },
    /// A control message, taken in (see [`Client::poll_event`]).
    Handled,
    /// Ignored, and why.
    Ignored(&'static str),
}

/// One request waiting for its answer.
#[derive(Debug)]
struct Pending {
    txid: [u8; 12],
    kind: Kind,
    bytes: Vec<u8>,
    /// Whether it carried credentials.
    authed: bool,
    /// Whether it is already the retry after a 438.
    stale_retried: bool,
    transmissions: u32,
    rto: Duration,
    deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Permission {
    peer: SocketAddr,
    refresh_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    number: u16,
    refresh_at: Instant,
}

/// A TURN client's state: see the module documentation.
#[derive(Debug)]
pub(crate) struct Client {
    cfg: Config,
    phase: Phase,
    challenge: Option<Challenge>,
    pending: Vec<Pending>,
    relayed: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
    next_channel: u16,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    /// Send indications' transaction ids: a random start, then counted.
    indication_txid: [u8; 12],
}

impl Client {
    /// A client that has asked nothing yet.
    pub(crate) fn new(cfg: Config) -> Client {
        Client {
            cfg,
            phase: Phase::Idle,
            challenge: None,
            pending: Vec::new(),
            relayed: None,
            mapped: None,
            refresh_at: None,
            permissions: Vec::new(),
            channels: Vec::new(),
            next_channel: MIN_CHANNEL,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            indication_txid: random_txid(),
        }
    }

    /// The server.
    pub(crate) fn server(&self) -> SocketAddr {
        self.cfg.server
    }

    /// Where the allocation stands.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The relayed transport address, once allocated.
    pub(crate) fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// The client's address as the server saw it, once allocated.
    pub(crate) fn mapped(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// Asks for an allocation relaying UDP (`attr::PROTO_UDP`) or TCP
    /// (`attr::PROTO_TCP`, RFC 6062), with a relayed address of the server's family.
    pub(crate) fn allocate(&mut self, proto: u8, now: Instant) -> Result<(), Error> {
        self.phase = Phase::Allocating;
        let v6 = self.cfg.server.is_ipv6();
        self.send(Kind::Allocate { proto, v6 }, false, now)
    }

    /// Installs (and from then on refreshes) a permission for `peer`'s address.
    pub(crate) fn permit(&mut self, peer: SocketAddr, now: Instant) -> Result<(), Error> {
        self.check_allocated()?;
        let known = self.permissions.iter().any(|p| p.peer.ip() == peer.ip());
        if !known && self.permissions.len() >= MAX_PERMISSIONS {
            return Err(self.full("permissions", MAX_PERMISSIONS));
        }
        self.send(Kind::Permission { peer }, false, now)?;
        if !known {
            let refresh_at = now + PERMISSION_REFRESH;
            self.permissions.push(Permission { peer, refresh_at });
        }
        Ok(())
    }

    /// Binds a channel to `peer` (and from then on refreshes it); gives its number.
    pub(crate) fn bind_channel(&mut self, peer: SocketAddr, now: Instant) -> Result<u16, Error> {
        self.check_allocated()?;
        let known = self.channel_of(peer);
        if known.is_none()
            && (self.channels.len() >= MAX_CHANNELS || self.next_channel > MAX_CHANNEL)
        {
            return Err(self.full("channels", MAX_CHANNELS));
        }
        let channel = known.unwrap_or(self.next_channel);
        self.send(Kind::ChannelBind { peer, channel }, false, now)?;
        if known.is_none() {
            self.next_channel += 1;
            let refresh_at = now + CHANNEL_REFRESH;
            self.channels.push(Channel {
                peer,
                number: channel,
                refresh_at,
            });
        }
        Ok(channel)
    }

    /// Asks the server to open a TCP connection to `peer` (RFC 6062 Connect).
    pub(crate) fn connect(&mut self, peer: SocketAddr, now: Instant) -> Result<(), Error> {
        self.check_allocated()?;
        self.send(Kind::Connect { peer }, false, now)
    }

    /// Deletes the allocation: Refresh with lifetime 0.
    pub(crate) fn close(&mut self, now: Instant) -> Result<(), Error> {
        self.check_allocated()?;
        self.phase = Phase::Closing;
        self.send(Kind::Refresh { lifetime: 0 }, false, now)
    }

    /// A signed ConnectionBind request for a new data connection (RFC 6062), and its
    /// transaction id; the answer is read with [`check_connection_bind`].
    pub(crate) fn connection_bind(&self, id: u32) -> Result<([u8; 12], Vec<u8>), Error> {
        let Some(challenge) = &self.challenge else {
            return Err(Error::NoAllocation {
                server: self.cfg.server,
            });
        };
        let txid = random_txid();
        let bytes = msg::request(
            &Kind::ConnectionBind { id },
            txid,
            Some((&self.cfg.credentials, challenge)),
        );
        Ok((txid, bytes))
    }

    /// The channel bound to `peer`, if any.
    pub(crate) fn channel_of(&self, peer: SocketAddr) -> Option<u16> {
        self.channels
            .iter()
            .find(|c| c.peer == peer)
            .map(|c| c.number)
    }

    /// Appends the wire form of `data` for `peer`: ChannelData on its channel if it
    /// has one (padded over TCP), else a Send indication.
    pub(crate) fn emit_data(&mut self, peer: SocketAddr, data: &[u8], out: &mut BytesMut) {
        match self.channel_of(peer) {
            Some(channel) => ChannelData { channel, data }.emit(self.cfg.reliable, out),
            None => {
                let counter =
                    u64::from_be_bytes(self.indication_txid[4..].try_into().expect("8 bytes"));
                self.indication_txid[4..].copy_from_slice(&counter.wrapping_add(1).to_be_bytes());
                Indication {
                    txid: self.indication_txid,
                    peer,
                    data,
                }
                .emit_send(out)
            }
        }
    }

    /// Takes in one message from the server.
    pub(crate) fn handle_input<'a>(&mut self, bytes: &'a [u8], now: Instant) -> Input<'a> {
        let Some(first) = bytes.first() else {
            return Input::Ignored("empty message");
        };
        match first >> 6 {
            1 => match ChannelData::parse(bytes) {
                Ok(cd) => match self.channels.iter().find(|c| c.number == cd.channel) {
                    Some(c) => Input::Data {
                        peer: c.peer,
                        data: cd.data,
                    },
                    None => Input::Ignored("channel data on an unbound channel"),
                },
                Err(_) => Input::Ignored("malformed channel data"),
            },
            0 => self.handle_stun(bytes, now),
            _ => Input::Ignored("neither stun nor channel data"),
        }
    }

    fn handle_stun<'a>(&mut self, bytes: &'a [u8], now: Instant) -> Input<'a> {
        let kind = bytes
            .get(..2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        if kind == 0x0010 | attr::DATA {
            return match Indication::parse_data(bytes) {
                Ok(ind) => Input::Data {
                    peer: ind.peer,
                    data: ind.data,
                },
                Err(_) => Input::Ignored("malformed data indication"),
            };
        }
        let reply = match Reply::parse(bytes) {
            Ok(Ok(reply)) => reply,
            Ok(Err(too_long)) => return self.refuse_oversized(bytes, too_long.attr, too_long.len),
            Err(_) => return Input::Ignored("malformed stun message"),
        };
        match reply.class {
            MessageClass::Indication if reply.method == attr::CONNECTION_ATTEMPT => {
                match (reply.peer, reply.connection_id) {
                    (Some(peer), Some(id)) => {
                        self.events.push_back(Event::ConnectionAttempt { peer, id });
                        Input::Handled
                    }
                    _ => Input::Ignored("connection attempt without peer or connection id"),
                }
            }
            MessageClass::SuccessResponse | MessageClass::ErrorResponse => {
                self.on_reply(reply, now)
            }
            _ => Input::Ignored("unexpected request or indication"),
        }
    }

    /// A reply naming a REALM or NONCE too long to echo fails its request.
    fn refuse_oversized<'a>(&mut self, bytes: &[u8], attr: u16, len: usize) -> Input<'a> {
        let Some(i) = self.pending.iter().position(|p| bytes[8..20] == p.txid) else {
            return Input::Ignored("oversized attribute in a reply to no request");
        };
        let p = self.pending.remove(i);
        let error = Error::Oversized {
            server: self.cfg.server,
            attr,
            len,
            max: MAX_REALM_OR_NONCE,
        };
        self.fail(p.kind, error);
        Input::Handled
    }

    fn on_reply<'a>(&mut self, reply: Reply, now: Instant) -> Input<'a> {
        let Some(i) = self.pending.iter().position(|p| p.txid == reply.txid) else {
            return Input::Ignored("reply to no request");
        };
        if self.pending[i].authed {
            if let Some(ch) = &self.challenge {
                if !reply.integrity_ok(&self.cfg.credentials, ch) {
                    return Input::Ignored("reply with a wrong message-integrity");
                }
            }
        }
        let p = self.pending.remove(i);
        if reply.class == MessageClass::SuccessResponse {
            self.on_success(p.kind, reply, now);
        } else {
            self.on_error(p, reply, now);
        }
        Input::Handled
    }

    fn on_success(&mut self, kind: Kind, reply: Reply, now: Instant) {
        match kind {
            Kind::Allocate { .. } => {
                let Some(relayed) = reply.relayed else {
                    return self.fail(kind, self.missing("allocate", "xor-relayed-address"));
                };
                let lifetime = reply
                    .lifetime
                    .unwrap_or(Duration::from_secs(LIFETIME.into()));
                self.relayed = Some(relayed);
                self.mapped = reply.mapped;
                self.phase = Phase::Allocated;
                self.refresh_at = Some(now + refresh_after(lifetime));
                let mapped = reply.mapped;
                self.events.push_back(Event::Allocated {
                    relayed,
                    mapped,
                    lifetime,
                });
            }
            Kind::Refresh { lifetime: 0 } => {
                self.phase = Phase::Closed;
                self.events.push_back(Event::Closed);
            }
            Kind::Refresh { .. } => {
                let lifetime = reply
                    .lifetime
                    .unwrap_or(Duration::from_secs(LIFETIME.into()));
                self.refresh_at = Some(now + refresh_after(lifetime));
            }
            Kind::Permission { peer } => self.events.push_back(Event::Permitted(peer)),
            Kind::ChannelBind { peer, channel } => {
                self.events.push_back(Event::ChannelBound { peer, channel })
            }
            Kind::Connect { peer } => match reply.connection_id {
                Some(id) => self.events.push_back(Event::Connected { peer, id }),
                None => self.fail(kind, self.missing("connect", "connection-id")),
            },
            Kind::ConnectionBind { .. } => {}
        }
    }

    fn on_error(&mut self, p: Pending, reply: Reply, now: Instant) {
        let server = self.cfg.server;
        let (code, reason) = reply.error.clone().unwrap_or((0, "no error code".into()));
        let outcome = match code {
            401 if !p.authed => self.take_challenge(&reply, 401),
            401 => Err(Error::Unauthorized {
                server,
                username: self.cfg.credentials.username().to_owned(),
            }),
            438 if !p.stale_retried => self.take_challenge(&reply, 438),
            438 => Err(Error::StaleNonce {
                server,
                op: p.kind.name(),
            }),
            _ => Err(Error::Rejected {
                server,
                op: p.kind.name(),
                code,
                reason,
            }),
        };
        let retried = outcome.and_then(|()| self.send(p.kind.clone(), code == 438, now));
        if let Err(error) = retried {
            self.fail(p.kind, error);
        }
    }

    /// Takes the realm and nonce of a 401 or 438 answer.
    fn take_challenge(&mut self, reply: &Reply, code: u16) -> Result<(), Error> {
        let server = self.cfg.server;
        let (Some(realm), Some(nonce)) = (&reply.realm, &reply.nonce) else {
            return Err(Error::BadChallenge { server, code });
        };
        let known = self.challenge.as_ref().map(|c| c.realm.text().to_owned());
        if let Some(expected) = self.cfg.realm.clone().or(known) {
            if &expected != realm {
                return Err(Error::WrongRealm {
                    server,
                    expected,
                    got: realm.clone(),
                });
            }
        }
        let too_long = |attr, len| Error::Oversized {
            server,
            attr,
            len,
            max: 127,
        };
        let realm = Realm::new(realm.clone()).map_err(|_| too_long(attr::REALM, realm.len()))?;
        let nonce = Nonce::new(nonce.clone()).map_err(|_| too_long(attr::NONCE, nonce.len()))?;
        self.challenge = Some(Challenge { realm, nonce });
        Ok(())
    }

    fn fail(&mut self, kind: Kind, error: Error) {
        match kind {
            Kind::Allocate { .. } => self.phase = Phase::Failed,
            Kind::Refresh { lifetime: 0 } => self.phase = Phase::Closed,
            Kind::Refresh { .. } if matches!(error, Error::Rejected { code: 437, .. }) => {
                self.phase = Phase::Failed
            }
            _ => {}
        }
        self.events.push_back(Event::Failed { kind, error });
    }

    /// Sends a request, signed if a challenge is known.
    fn send(&mut self, kind: Kind, stale_retried: bool, now: Instant) -> Result<(), Error> {
        if self.pending.len() >= MAX_PENDING {
            return Err(self.full("requests", MAX_PENDING));
        }
        let txid = random_txid();
        let auth = self.challenge.as_ref().map(|c| (&self.cfg.credentials, c));
        let bytes = msg::request(&kind, txid, auth);
        let mut p = Pending {
            txid,
            kind,
            bytes,
            authed: auth.is_some(),
            stale_retried,
            transmissions: 0,
            rto: self.cfg.schedule.initial_rto,
            deadline: None,
        };
        transmit(&self.cfg, &mut self.transmits, &mut p, now);
        self.pending.push(p);
        Ok(())
    }

    /// Retransmits, gives up, and refreshes what is due at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.retransmit(now);
        if self.phase != Phase::Allocated {
            return;
        }
        if self.refresh_at.is_some_and(|t| t <= now) {
            self.refresh_at = Some(now + RETRY);
            self.renew(Kind::Refresh { lifetime: LIFETIME }, now);
        }
        for i in 0..self.permissions.len() {
            let p = self.permissions[i];
            if p.refresh_at <= now {
                self.permissions[i].refresh_at = now + PERMISSION_REFRESH;
                self.renew(Kind::Permission { peer: p.peer }, now);
            }
        }
        for i in 0..self.channels.len() {
            let c = self.channels[i];
            if c.refresh_at <= now {
                self.channels[i].refresh_at = now + CHANNEL_REFRESH;
                self.renew(
                    Kind::ChannelBind {
                        peer: c.peer,
                        channel: c.number,
                    },
                    now,
                );
            }
        }
    }

    /// Sends a refresh of some kind; if no room, it is tried at the next due time.
    fn renew(&mut self, kind: Kind, now: Instant) {
        if let Err(error) = self.send(kind.clone(), false, now) {
            self.events.push_back(Event::Failed { kind, error });
        }
    }

    fn retransmit(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.pending.len() {
            let due = self.pending[i].deadline.is_some_and(|d| d <= now);
            if !due {
                i += 1;
                continue;
            }
            let s = self.cfg.schedule;
            if self.cfg.reliable || self.pending[i].transmissions >= s.max_transmissions {
                let p = self.pending.remove(i);
                let error = Error::Timeout {
                    server: self.cfg.server,
                    op: p.kind.name(),
                    waited: s.give_up_after(),
                };
                self.fail(p.kind, error);
                continue;
            }
            transmit(&self.cfg, &mut self.transmits, &mut self.pending[i], now);
            i += 1;
        }
    }

    /// The next moment [`handle_timeout`](Self::handle_timeout) has work.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let pending = self.pending.iter().filter_map(|p| p.deadline).min();
        if self.phase != Phase::Allocated {
            return pending;
        }
        let refreshes = self
            .refresh_at
            .into_iter()
            .chain(self.permissions.iter().map(|p| p.refresh_at))
            .chain(self.channels.iter().map(|c| c.refresh_at));
        pending.into_iter().chain(refreshes).min()
    }

    /// The next message to send to the server.
    #[must_use = "a transmit does nothing until it is sent"]
    pub(crate) fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event.
    #[must_use = "an event may complete an operation someone waits for"]
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn check_allocated(&self) -> Result<(), Error> {
        match self.phase {
            Phase::Allocated => Ok(()),
            _ => Err(Error::NoAllocation {
                server: self.cfg.server,
            }),
        }
    }

    fn full(&self, what: &'static str, max: usize) -> Error {
        Error::Full {
            server: self.cfg.server,
            what,
            max,
        }
    }

    fn missing(&self, op: &'static str, missing: &'static str) -> Error {
        Error::Missing {
            server: self.cfg.server,
            op,
            missing,
        }
    }
}

/// When to refresh an allocation granted for `lifetime`: a minute before it ends, or
/// half way for short ones.
fn refresh_after(lifetime: Duration) -> Duration {
    if lifetime > Duration::from_secs(120) {
        lifetime - Duration::from_secs(60)
    } else {
        lifetime / 2
    }
}

/// Queues a (re)transmission of `p` and sets its next deadline: over UDP the STUN
/// schedule's, over TCP the schedule's whole span, once.
fn transmit(cfg: &Config, transmits: &mut VecDeque<Vec<u8>>, p: &mut Pending, now: Instant) {
    let s = cfg.schedule;
    p.transmissions += 1;
    let wait = if cfg.reliable {
        s.give_up_after()
    } else if p.transmissions >= s.max_transmissions {
        s.initial_rto.saturating_mul(s.final_wait_multiplier)
    } else {
        let wait = p.rto;
        p.rto = p.rto.saturating_mul(2).min(s.max_rto);
        wait
    };
    p.deadline = now.checked_add(wait);
    transmits.push_back(p.bytes.clone());
}

fn random_txid() -> [u8; 12] {
    *stun::udp::random_txid().as_bytes()
}

/// Reads the answer to a ConnectionBind request with `txid`.
pub(crate) fn check_connection_bind(
    server: SocketAddr,
    txid: [u8; 12],
    bytes: &[u8],
) -> Result<(), Error> {
    let reply = match Reply::parse(bytes)? {
        Ok(r) => r,
        Err(t) => {
            return Err(Error::Oversized {
                server,
                attr: t.attr,
                len: t.len,
                max: MAX_REALM_OR_NONCE,
            })
        }
    };
    if reply.txid != txid || reply.method != attr::CONNECTION_BIND {
        return Err(Error::Malformed(
            "connection-bind answered by another message".into(),
        ));
    }
    match (reply.class, reply.error) {
        (MessageClass::SuccessResponse, _) => Ok(()),
        (_, Some((code, reason))) => Err(Error::Rejected {
            server,
            op: "connection-bind",
            code,
            reason,
        }),
        _ => Err(Error::Malformed(
            "connection-bind answer without error code".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytecodec::{DecodeExt, EncodeExt};
    use stun_codec::rfc5389::attributes::{
        ErrorCode, MessageIntegrity, Username, XorMappedAddress,
    };
    use stun_codec::rfc5766::attributes::{Lifetime, XorPeerAddress, XorRelayAddress};
    use stun_codec::{Message, MessageDecoder, MessageEncoder, Method, TransactionId};

    use crate::traverse::turn::attr::{ConnectionId, TurnAttribute};

    const PASSWORD: &str = "s3cret-pw";

    fn server() -> SocketAddr {
        "203.0.113.10:3478".parse().unwrap()
    }

    fn peer() -> SocketAddr {
        "198.51.100.7:4000".parse().unwrap()
    }

    fn client(reliable: bool, realm: Option<&str>) -> Client {
        Client::new(Config {
            server: server(),
            reliable,
            credentials: Credentials::new("u", PASSWORD).unwrap(),
            realm: realm.map(str::to_owned),
            schedule: stun::Config::default(),
        })
    }

    fn decode(bytes: &[u8]) -> Message<TurnAttribute> {
        MessageDecoder::<TurnAttribute>::new()
            .decode_from_bytes(bytes)
            .unwrap()
            .unwrap()
    }

    /// A reply to `request` with `attrs`, signed with the test credentials in `realm`
    /// when `sign` is set.
    fn reply(
        request: &Message<TurnAttribute>,
        class: MessageClass,
        attrs: Vec<TurnAttribute>,
        sign: Option<&str>,
    ) -> Vec<u8> {
        let mut m =
            Message::<TurnAttribute>::new(class, request.method(), request.transaction_id());
        for a in attrs {
            m.add_attribute(a);
        }
        if let Some(realm) = sign {
            let mi = MessageIntegrity::new_long_term_credential(
                &m,
                &Username::new("u".into()).unwrap(),
                &Realm::new(realm.into()).unwrap(),
                PASSWORD,
            )
            .unwrap();
            m.add_attribute(mi);
        }
        MessageEncoder::new().encode_into_bytes(m).unwrap()
    }

    fn challenge(code: u16, realm: &str, nonce: &str) -> Vec<TurnAttribute> {
        vec![
            ErrorCode::new(code, "try again".into()).unwrap().into(),
            Realm::new(realm.into()).unwrap().into(),
            Nonce::new(nonce.into()).unwrap().into(),
        ]
    }

    /// An unsigned 401 or 438 answer to `request`.
    fn refuse(request: &Message<TurnAttribute>, code: u16, realm: &str, nonce: &str) -> Vec<u8> {
        let attrs = challenge(code, realm, nonce);
        reply(request, MessageClass::ErrorResponse, attrs, None)
    }

    /// The failure the client reported next.
    fn failure(c: &mut Client) -> Error {
        match c.poll_event() {
            Some(Event::Failed { error, .. }) => error,
            other => panic!("no failure: {other:?}"),
        }
    }

    fn granted() -> Vec<TurnAttribute> {
        vec![
            XorRelayAddress::new("203.0.113.10:50000".parse().unwrap()).into(),
            XorMappedAddress::new("198.51.100.2:40000".parse().unwrap()).into(),
            Lifetime::from_u32(600).into(),
        ]
    }

    fn next_request(c: &mut Client) -> Message<TurnAttribute> {
        decode(&c.poll_transmit().expect("a request is queued"))
    }

    /// Allocates through a 401 challenge in realm "r"; gives the time it ended.
    fn allocated(c: &mut Client, t0: Instant) {
        c.allocate(attr::PROTO_UDP, t0).unwrap();
        let first = next_request(c);
        assert!(first.get_attribute::<MessageIntegrity>().is_none());
        let r = refuse(&first, 401, "r", "n1");
        assert_eq!(c.handle_input(&r, t0), Input::Handled);
        let second = next_request(c);
        assert_ne!(second.transaction_id(), first.transaction_id());
        assert_eq!(second.get_attribute::<Username>().unwrap().name(), "u");
        assert_eq!(second.get_attribute::<Nonce>().unwrap().value(), "n1");
        let mi = second.get_attribute::<MessageIntegrity>().expect("signed");
        let key_ok = mi.check_long_term_credential(
            &Username::new("u".into()).unwrap(),
            &Realm::new("r".into()).unwrap(),
            PASSWORD,
        );
        assert!(
            key_ok.is_ok(),
            "the request is signed with the long-term key"
        );
        let ok = reply(&second, MessageClass::SuccessResponse, granted(), Some("r"));
        assert_eq!(c.handle_input(&ok, t0), Input::Handled);
        assert!(matches!(c.poll_event(), Some(Event::Allocated { .. })));
        assert_eq!(c.phase(), Phase::Allocated);
    }

    #[test]
    fn allocate_logs_in_after_a_401_and_refreshes_a_minute_before_the_lifetime_ends() {
        let t0 = Instant::now();
        let mut c = client(false, Some("r"));
        allocated(&mut c, t0);
        assert_eq!(c.relayed(), Some("203.0.113.10:50000".parse().unwrap()));
        assert_eq!(c.mapped(), Some("198.51.100.2:40000".parse().unwrap()));
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(540)));
        c.handle_timeout(t0 + Duration::from_secs(540));
        let refresh = next_request(&mut c);
        assert_eq!(refresh.method(), attr::REFRESH);
        assert_eq!(
            refresh
                .get_attribute::<Lifetime>()
                .unwrap()
                .lifetime()
                .as_secs(),
            600
        );
        assert!(refresh.get_attribute::<MessageIntegrity>().is_some());
    }

    #[test]
    fn a_second_401_is_a_clear_refusal_that_never_shows_the_password() {
        let t0 = Instant::now();
        let mut c = client(false, None);
        c.allocate(attr::PROTO_UDP, t0).unwrap();
        for _ in 0..2 {
            let req = next_request(&mut c);
            let r = refuse(&req, 401, "r", "n");
            assert_eq!(c.handle_input(&r, t0), Input::Handled);
        }
        assert!(c.poll_transmit().is_none(), "no third try");
        let error = failure(&mut c);
        assert!(matches!(error, Error::Unauthorized { .. }), "{error}");
        let shown = format!("{error} {error:?} {c:?}");
        assert!(shown.contains("203.0.113.10:3478"), "{shown}");
        assert!(!shown.contains(PASSWORD), "{shown}");
        assert_eq!(c.phase(), Phase::Failed);
    }

    #[test]
    fn a_stale_nonce_is_retried_once_with_the_new_nonce_then_refused() {
        let t0 = Instant::now();
        let mut c = client(false, None);
        allocated(&mut c, t0);
        c.permit(peer(), t0).unwrap();
        let req = next_request(&mut c);
        let r = refuse(&req, 438, "r", "n2");
        assert_eq!(c.handle_input(&r, t0), Input::Handled);
        let again = next_request(&mut c);
        assert_eq!(again.get_attribute::<Nonce>().unwrap().value(), "n2");
        let r = refuse(&again, 438, "r", "n3");
        assert_eq!(c.handle_input(&r, t0), Input::Handled);
        assert!(c.poll_transmit().is_none());
        let error = failure(&mut c);
        assert!(
            matches!(
                error,
                Error::StaleNonce {
                    op: "create-permission",
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(
            c.phase(),
            Phase::Allocated,
            "a permission failure keeps the allocation"
        );
    }

    #[test]
    fn a_wrong_realm_and_an_oversized_nonce_are_refused_without_a_retry() {
        let t0 = Instant::now();
        let mut c = client(false, Some("expected"));
        c.allocate(attr::PROTO_UDP, t0).unwrap();
        let req = next_request(&mut c);
        let r = refuse(&req, 401, "evil", "n");
        assert_eq!(c.handle_input(&r, t0), Input::Handled);
        assert!(c.poll_transmit().is_none());
        let error = failure(&mut c);
        assert!(matches!(error, Error::WrongRealm { .. }), "{error}");

        let mut c = client(false, None);
        c.allocate(attr::PROTO_UDP, t0).unwrap();
        let req = next_request(&mut c);
        let mut r = refuse(&req, 401, "r", "n");
        // Append a 1000-byte NONCE by hand (stun_codec refuses to build one).
        r.extend_from_slice(&[0x00, 0x15, 0x03, 0xe8]);
        r.extend_from_slice(&[b'x'; 1000]);
        let len = (r.len() - 20) as u16;
        r[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(c.handle_input(&r, t0), Input::Handled);
        let error = failure(&mut c);
        assert!(
            matches!(
                error,
                Error::Oversized {
                    attr: 0x0015,
                    len: 1000,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn udp_retransmits_on_the_stun_schedule_and_tcp_waits_once() {
        let t0 = Instant::now();
        let mut c = client(false, None);
        c.allocate(attr::PROTO_UDP, t0).unwrap();
        let first = c.poll_transmit().unwrap();
        for at in [500u64, 1500, 3500, 7500, 15500, 31500] {
            assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(at)));
            c.handle_timeout(t0 + Duration::from_millis(at));
            assert_eq!(c.poll_transmit().as_deref(), Some(&first[..]));
        }
        c.handle_timeout(t0 + Duration::from_millis(39500));
        assert!(c.poll_transmit().is_none());
        let error = failure(&mut c);
        assert!(
            matches!(error, Error::Timeout { op: "allocate", .. }),
            "{error}"
        );

        let mut c = client(true, None);
        c.allocate(attr::PROTO_TCP, t0).unwrap();
        let _first = c.poll_transmit().unwrap();
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(39500)));
        c.handle_timeout(t0 + Duration::from_millis(39500));
        assert!(c.poll_transmit().is_none(), "tcp never retransmits");
        assert!(matches!(c.poll_event(), Some(Event::Failed { .. })));
    }

    #[test]
    fn permissions_and_channels_are_refreshed_within_their_lifetimes() {
        let t0 = Instant::now();
        let mut c = client(false, None);
        allocated(&mut c, t0);
        c.permit(peer(), t0).unwrap();
        let perm = next_request(&mut c);
        assert_eq!(perm.method(), attr::CREATE_PERMISSION);
        assert_eq!(
            perm.get_attribute::<XorPeerAddress>().unwrap().address(),
            peer()
        );
        let ok = reply(&perm, MessageClass::SuccessResponse, vec![], Some("r"));
        assert_eq!(c.handle_input(&ok, t0), Input::Handled);
        assert_eq!(c.poll_event(), Some(Event::Permitted(peer())));
        let other: SocketAddr = "198.51.100.8:1".parse().unwrap();
        let channel = c.bind_channel(other, t0).unwrap();
        assert_eq!(channel, MIN_CHANNEL);
        let bind = next_request(&mut c);
        assert_eq!(bind.method(), attr::CHANNEL_BIND);
        let ok = reply(&bind, MessageClass::SuccessResponse, vec![], Some("r"));
        assert_eq!(c.handle_input(&ok, t0), Input::Handled);
        assert_eq!(
            c.poll_event(),
            Some(Event::ChannelBound {
                peer: other,
                channel
            })
        );
        assert_eq!(c.poll_timeout(), Some(t0 + PERMISSION_REFRESH));
        let at = t0 + PERMISSION_REFRESH;
        c.handle_timeout(at);
        let methods: Vec<Method> = std::iter::from_fn(|| c.poll_transmit())
            .map(|b| decode(&b).method())
            .collect();
        assert!(methods.contains(&attr::CREATE_PERMISSION), "{methods:?}");
        assert!(methods.contains(&attr::CHANNEL_BIND), "{methods:?}");
        assert!(PERMISSION_REFRESH < Duration::from_secs(300));
        assert!(CHANNEL_REFRESH < Duration::from_secs(600));
    }

    #[test]
    fn data_goes_by_channel_once_bound_and_by_send_indication_before() {
        let t0 = Instant::now();
        let mut c = client(true, None);
        allocated(&mut c, t0);
        let mut out = BytesMut::new();
        c.emit_data(peer(), b"hi", &mut out);
        assert_eq!(&out[..2], &[0x00, 0x16], "a send indication");
        let channel = c.bind_channel(peer(), t0).unwrap();
        out.clear();
        c.emit_data(peer(), b"hi", &mut out);
        assert_eq!(
            &out[..],
            &[0x40, 0x00, 0x00, 0x02, b'h', b'i', 0, 0],
            "padded over tcp"
        );
        let from_peer = [0x40, 0x00, 0x00, 0x03, b'a', b'b', b'c', 0];
        assert_eq!(
            c.handle_input(&from_peer, t0),
            Input::Data {
                peer: peer(),
                data: b"abc"
            }
        );
        assert_eq!(channel, 0x4000);
        let unbound = [0x40, 0x01, 0x00, 0x00];
        assert!(matches!(c.handle_input(&unbound, t0), Input::Ignored(_)));
        assert!(matches!(c.handle_input(b"\xff\xff", t0), Input::Ignored(_)));
    }

    #[test]
    fn connect_and_connection_attempts_carry_connection_ids() {
        let t0 = Instant::now();
        let mut c = client(true, None);
        allocated(&mut c, t0);
        c.connect(peer(), t0).unwrap();
        let req = next_request(&mut c);
        assert_eq!(req.method().as_u16(), attr::CONNECT);
        let ok = reply(
            &req,
            MessageClass::SuccessResponse,
            vec![ConnectionId(77).into()],
            Some("r"),
        );
        assert_eq!(c.handle_input(&ok, t0), Input::Handled);
        assert_eq!(
            c.poll_event(),
            Some(Event::Connected {
                peer: peer(),
                id: 77
            })
        );
        let (txid, bind) = c.connection_bind(77).unwrap();
        let bind = decode(&bind);
        assert_eq!(
            bind.get_attribute::<ConnectionId>(),
            Some(&ConnectionId(77))
        );
        let ok = reply(&bind, MessageClass::SuccessResponse, vec![], None);
        assert_eq!(check_connection_bind(server(), txid, &ok), Ok(()));

        let mut m = Message::<TurnAttribute>::new(
            MessageClass::Indication,
            Method::new(attr::CONNECTION_ATTEMPT).unwrap(),
            TransactionId::new([9; 12]),
        );
        m.add_attribute(ConnectionId(78));
        m.add_attribute(XorPeerAddress::new(peer()));
        let ind = MessageEncoder::new().encode_into_bytes(m).unwrap();
        assert_eq!(c.handle_input(&ind, t0), Input::Handled);
        assert_eq!(
            c.poll_event(),
            Some(Event::ConnectionAttempt {
                peer: peer(),
                id: 78
            })
        );
    }

    #[test]
    fn an_ipv6_server_is_asked_for_an_ipv6_relayed_address() {
        use stun_codec::rfc8656::attributes::{AddressFamily, RequestedAddressFamily};
        let mut c = Client::new(Config {
            server: "[2001:db8::10]:3478".parse().unwrap(),
            ..client(false, None).cfg
        });
        c.allocate(attr::PROTO_UDP, Instant::now()).unwrap();
        let req = next_request(&mut c);
        let family = req
            .get_attribute::<RequestedAddressFamily>()
            .map(|f| f.address_family());
        assert_eq!(family, Some(AddressFamily::V6));
        let mut v4 = client(false, None);
        v4.allocate(attr::PROTO_UDP, Instant::now()).unwrap();
        assert!(next_request(&mut v4)
            .get_attribute::<RequestedAddressFamily>()
            .is_none());
    }

    #[test]
    fn close_sends_lifetime_zero_and_ends_closed() {
        let t0 = Instant::now();
        let mut c = client(false, None);
        allocated(&mut c, t0);
        c.close(t0).unwrap();
        let req = next_request(&mut c);
        assert_eq!(
            req.get_attribute::<Lifetime>().unwrap().lifetime(),
            Duration::ZERO
        );
        let ok = reply(&req, MessageClass::SuccessResponse, vec![], Some("r"));
        assert_eq!(c.handle_input(&ok, t0), Input::Handled);
        assert_eq!(c.poll_event(), Some(Event::Closed));
        assert_eq!(c.phase(), Phase::Closed);
        assert!(c.permit(peer(), t0).is_err());
    }

    #[test]
    fn a_forged_success_without_the_key_is_ignored() {
        let t0 = Instant::now();
        let mut c = client(false, None);
        c.allocate(attr::PROTO_UDP, t0).unwrap();
        let req = next_request(&mut c);
        let r = refuse(&req, 401, "r", "n");
        let _ = c.handle_input(&r, t0);
        let signed = next_request(&mut c);
        let forged = reply(
            &signed,
            MessageClass::SuccessResponse,
            granted(),
            Some("other"),
        );
        assert!(matches!(c.handle_input(&forged, t0), Input::Ignored(_)));
        assert_eq!(c.phase(), Phase::Allocating);
    }
}
