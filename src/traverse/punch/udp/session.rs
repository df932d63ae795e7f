//! The UDP punch, sans-IO: probes out, the path confirmed, then keepalives.
//!
//! From the [`Agreement`] of a rendezvous, both sides send [`Probe`]s to every candidate
//! of the other from the start moment on, paced (every [`Timing::first_interval`], each
//! gap half as long again, up to [`Timing::max_interval`]). A side that hears a valid
//! probe answers it with an ack to the source it observed, and probes that source from
//! then on too (it is where the other side's NAT mapped the other side for this path). A
//! side that hears a valid ack has a path both ways: [`Step::Connected`] names it. From
//! then on the session sends a keepalive to that address every [`Timing::keepalive`]
//! (under the NAT's UDP timeout) and still acks probes, for a peer whose ack was lost.
//!
//! Every packet carries the session (from the offer's nonce), the sender's role, a
//! sequence number and a MAC keyed with the [`SessionKey`]: a packet from anyone else,
//! or a side's own probe come back (a shared private LAN address reaches yourself), is
//! ignored.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::super::{Agreement, Error, Role, SessionKey, MAX_CANDIDATES};

/// The first bytes of every punch packet: a pipe routes packets that start with them to
/// the punch session.
pub const MAGIC: [u8; 8] = *b"\xffp2punch";
/// The bytes of a punch packet.
pub const PROBE_LEN: usize = MAGIC.len() + 2 + 8 + 4 + TAG_LEN;
const TAG_LEN: usize = 16;
/// The most source addresses learned from probes that a session also probes.
pub const MAX_OBSERVED: usize = 4;
/// The most peer addresses remembered from valid packets.
const MAX_HEARD: usize = MAX_CANDIDATES + MAX_OBSERVED;
/// The most packets waiting to be sent.
const MAX_QUEUED: usize = MAX_CANDIDATES + MAX_OBSERVED + 8;

/// What a punch packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Sent to a candidate: answer me.
    Probe,
    /// The answer to a probe, sent to where the probe came from.
    Ack,
    /// Keeps the NAT mappings of a confirmed path alive.
    Keepalive,
}

/// One punch packet, as [`Probe::open`] checked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// What it is.
    pub kind: Kind,
    /// The sender's role.
    pub from: Role,
    /// The session: the first 8 bytes of the offer's nonce.
    pub session: [u8; 8],
    /// The sender's sequence number.
    pub seq: u32,
}

impl Probe {
    /// Parses the layout of a [`PROBE_LEN`]-byte packet without checking its MAC (see
    /// [`Probe::open`]).
    pub fn parse(bytes: &[u8]) -> Result<Probe, Error> {
        if bytes.len() != PROBE_LEN || bytes[..MAGIC.len()] != MAGIC {
            return Err(Error::Malformed("not a punch packet"));
        }
        let b = &bytes[MAGIC.len()..];
        let kind = match b[0] {
            1 => Kind::Probe,
            2 => Kind::Ack,
            3 => Kind::Keepalive,
            _ => return Err(Error::Malformed("unknown punch packet kind")),
        };
        let from = match b[1] {
            0 => Role::Initiator,
            1 => Role::Responder,
            _ => return Err(Error::Malformed("unknown punch role")),
        };
        Ok(Probe {
            kind,
            from,
            session: b[2..10].try_into().expect("8 bytes"),
            seq: u32::from_be_bytes(b[10..14].try_into().expect("4 bytes")),
        })
    }

    /// Parses a packet and checks its MAC with `key`.
    pub fn open(bytes: &[u8], key: &SessionKey) -> Result<Probe, Error> {
        let probe = Probe::parse(bytes)?;
        let (body, tag) = bytes.split_at(PROBE_LEN - TAG_LEN);
        mac(key, body)
            .verify_truncated_left(tag)
            .map_err(|_| Error::Malformed("punch packet with a wrong mac"))?;
        Ok(probe)
    }

    /// Appends the packet, with its MAC keyed with `key` ([`PROBE_LEN`] bytes).
    pub fn emit(&self, key: &SessionKey, out: &mut BytesMut) {
        let start = out.len();
        out.reserve(PROBE_LEN);
        out.put_slice(&MAGIC);
        out.put_u8(match self.kind {
            Kind::Probe => 1,
            Kind::Ack => 2,
            Kind::Keepalive => 3,
        });
        out.put_u8(match self.from {
            Role::Initiator => 0,
            Role::Responder => 1,
        });
        out.put_slice(&self.session);
        out.put_u32(self.seq);
        let tag = mac(key, &out[start..]).finalize().into_bytes();
        out.put_slice(&tag[..TAG_LEN]);
    }
}

fn mac(key: &SessionKey, body: &[u8]) -> Hmac<Sha256> {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key.bytes()).expect("hmac takes any key length");
    m.update(body);
    m
}

/// The pace of a punch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The gap after the first round of probes.
    pub first_interval: Duration,
    /// The longest gap between rounds.
    pub max_interval: Duration,
    /// How long to probe before giving up, from the start moment.
    pub limit: Duration,
    /// The gap between keepalives on a confirmed path: under the NATs' UDP timeout
    /// (Linux conntrack forgets an unanswered UDP flow after 30 s).
    pub keepalive: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            first_interval: Duration::from_millis(20),
            max_interval: Duration::from_millis(200),
            limit: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
        }
    }
}

/// A packet to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// The packet.
    pub bytes: [u8; PROBE_LEN],
}

/// Why a datagram did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Not a punch packet, or a wrong MAC: not from the peer.
    NotOurs,
    /// Another session's packet.
    OtherSession,
    /// This side's own packet, come back (a shared private address reaches yourself).
    OwnEcho,
    /// A keepalive: nothing to do.
    Keepalive,
}

/// What a datagram did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// A valid probe: an ack to its source is queued.
    Answered(SocketAddr),
    /// The first valid ack: the path to this address works both ways.
    Connected(SocketAddr),
    /// A later ack, on a confirmed path.
    Acked,
    /// Nothing.
    Ignored(Ignored),
}

/// Counters of a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Probes sent.
    pub probes: u32,
    /// Acks sent.
    pub acks: u32,
    /// Keepalives sent.
    pub keepalives: u32,
    /// Datagrams ignored.
    pub ignored: u32,
}

/// One side of a UDP punch (see the module docs).
#[derive(Debug)]
pub struct Session {
    key: SessionKey,
    session: [u8; 8],
    role: Role,
    targets: Vec<SocketAddr>,
    observed: usize,
    heard: Vec<SocketAddr>,
    timing: Timing,
    deadline: Instant,
    next_round: Instant,
    interval: Duration,
    next_keepalive: Option<Instant>,
    path: Option<SocketAddr>,
    seq: u32,
    queue: VecDeque<Transmit>,
    counters: Counters,
}

impl Session {
    /// A session from an agreement; the first probes go at its start moment. Candidates
    /// of another family than `family_of` (the punching socket's address) are left out.
    pub fn new(agreement: &Agreement, timing: Timing, family_of: SocketAddr) -> Session {
        let plan = &agreement.plan;
        let targets = plan
            .remote
            .iter()
            .filter(|a| a.is_ipv4() == family_of.is_ipv4())
            .copied()
            .take(MAX_CANDIDATES)
            .collect();
        Session {
            key: agreement.key.clone(),
            session: agreement.session[..8].try_into().expect("8 bytes"),
            role: plan.role,
            targets,
            observed: 0,
            heard: Vec::new(),
            timing,
            deadline: plan.start + timing.limit,
            next_round: plan.start,
            interval: timing.first_interval,
            next_keepalive: None,
            path: None,
            seq: 0,
            queue: VecDeque::with_capacity(MAX_QUEUED),
            counters: Counters::default(),
        }
    }

    /// The addresses probed: the peer's candidates, then sources learned from its probes.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// The confirmed path, once there is one.
    pub fn path(&self) -> Option<SocketAddr> {
        self.path
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Whether the limit passed with no confirmed path: the punch failed.
    pub fn timed_out(&self, now: Instant) -> bool {
        self.path.is_none() && now >= self.deadline
    }

    /// Takes a datagram from `from`.
    pub fn on_datagram(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) -> Step {
        let probe = match Probe::open(bytes, &self.key) {
            Ok(p) if p.session != self.session => return self.ignore(Ignored::OtherSession),
            Ok(p) if p.from == self.role => return self.ignore(Ignored::OwnEcho),
            Ok(p) => p,
            Err(_) => return self.ignore(Ignored::NotOurs),
        };
        if probe.kind != Kind::Keepalive
            && !self.heard.contains(&from)
            && self.heard.len() < MAX_HEARD
        {
            self.heard.push(from);
        }
        match probe.kind {
            Kind::Probe => {
                self.push(Kind::Ack, from);
                self.counters.acks += 1;
                if self.path.is_none() {
                    self.learn(from);
                }
                Step::Answered(from)
            }
            Kind::Ack if self.path.is_none() => self.connect(from, now),
            Kind::Ack => Step::Acked,
            Kind::Keepalive => self.ignore(Ignored::Keepalive),
        }
    }

    /// Takes word that a datagram that is no punch packet came from `from`. The peer
    /// sends data only once it has a path, so data from an address whose valid probes
    /// this side has heard confirms that path: [`Step::Connected`]. The driver leaves
    /// such a datagram unread, for the pipe.
    pub fn on_other(&mut self, from: SocketAddr, now: Instant) -> Step {
        match self.path {
            Some(_) => Step::Acked,
            None if self.heard.contains(&from) => self.connect(from, now),
            None => self.ignore(Ignored::NotOurs),
        }
    }

    fn connect(&mut self, path: SocketAddr, now: Instant) -> Step {
        self.path = Some(path);
        self.queue.retain(|t| t.to == path);
        self.next_keepalive = Some(now + self.timing.keepalive);
        Step::Connected(path)
    }

    /// The next packet to send now, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.queue.is_empty() {
            self.due(now);
        }
        self.queue.pop_front()
    }

    /// When [`Session::poll_transmit`] will next have something, or the limit passes.
    /// Packets queued by [`Session::on_datagram`] are due at once: drain
    /// [`Session::poll_transmit`] before waiting.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.path, self.next_keepalive) {
            (Some(_), keepalive) => keepalive,
            (None, _) => Some(self.next_round.min(self.deadline)),
        }
    }

    /// Queues what is due at `now`: a round of probes, or a keepalive.
    fn due(&mut self, now: Instant) {
        if let (Some(path), Some(at)) = (self.path, self.next_keepalive) {
            if now >= at {
                self.push(Kind::Keepalive, path);
                self.counters.keepalives += 1;
                self.next_keepalive = Some(now + self.timing.keepalive);
            }
            return;
        }
        if now < self.next_round || now >= self.deadline {
            return;
        }
        for i in 0..self.targets.len() {
            self.push(Kind::Probe, self.targets[i]);
            self.counters.probes += 1;
        }
        self.next_round = now + self.interval;
        self.interval = (self.interval * 3 / 2).min(self.timing.max_interval);
    }

    /// Probes `from` too: the peer's NAT mapped it there for this path.
    fn learn(&mut self, from: SocketAddr) {
        if self.targets.contains(&from) || self.observed == MAX_OBSERVED {
            return;
        }
        self.targets.push(from);
        self.observed += 1;
        // Probe it at once: the peer's NAT expects an answer there.
        self.push(Kind::Probe, from);
        self.counters.probes += 1;
    }

    fn push(&mut self, kind: Kind, to: SocketAddr) {
        if self.queue.len() == MAX_QUEUED {
            return;
        }
        self.seq = self.seq.wrapping_add(1);
        let probe = Probe {
            kind,
            from: self.role,
            session: self.session,
            seq: self.seq,
        };
        let mut out = BytesMut::with_capacity(PROBE_LEN);
        probe.emit(&self.key, &mut out);
        self.queue.push_back(Transmit {
            to,
            bytes: out[..].try_into().expect("a probe's length"),
        });
    }

    fn ignore(&mut self, why: Ignored) -> Step {
        self.counters.ignored += 1;
        Step::Ignored(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traverse::punch::{Approach, Plan};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn agreement(role: Role, remote: &[&str], start: Instant) -> Agreement {
        Agreement {
            plan: Plan {
                remote: remote.iter().map(|s| addr(s)).collect(),
                start,
                rtt: Duration::from_millis(10),
                role,
            },
            way: crate::traverse::punch::rendezvous::Way::Udp(Approach::Direct),
            key: SessionKey::derive(&[1; 16], &[2; 16], crate::Proto::Udp),
            session: [1; 16],
        }
    }

    fn drain(s: &mut Session, now: Instant) -> Vec<(SocketAddr, Probe, [u8; PROBE_LEN])> {
        let key = SessionKey::derive(&[1; 16], &[2; 16], crate::Proto::Udp);
        std::iter::from_fn(|| s.poll_transmit(now))
            .map(|t| (t.to, Probe::open(&t.bytes, &key).unwrap(), t.bytes))
            .collect()
    }

    const A: &str = "198.51.100.1:4000";
    const B: &str = "198.51.100.5:5000";

    #[test]
    fn nothing_goes_before_the_start_and_rounds_back_off() {
        let t0 = Instant::now();
        let start = t0 + Duration::from_millis(50);
        let mut s = Session::new(
            &agreement(
                Role::Initiator,
                &[B, "198.18.1.2:5000", "[2001:db8::2]:5000"],
                start,
            ),
            Timing::default(),
            addr(A),
        );
        assert_eq!(s.targets().len(), 2, "the IPv6 candidate is left out");
        assert!(drain(&mut s, t0).is_empty());
        assert_eq!(s.poll_timeout(), Some(start));
        let first = drain(&mut s, start);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|(_, p, _)| p.kind == Kind::Probe));
        assert_eq!(s.poll_timeout(), Some(start + Duration::from_millis(20)));
        assert!(drain(&mut s, start + Duration::from_millis(19)).is_empty());
        let t = start + Duration::from_millis(20);
        assert_eq!(drain(&mut s, t).len(), 2);
        assert_eq!(s.poll_timeout(), Some(t + Duration::from_millis(30)));
        let mut t = t;
        for _ in 0..20 {
            t = s.poll_timeout().unwrap();
            let _ = drain(&mut s, t);
        }
        let gap = s.poll_timeout().unwrap() - t;
        assert!(gap <= Duration::from_millis(200), "{gap:?}");
        assert!(!s.timed_out(start + Duration::from_secs(9)));
        assert!(s.timed_out(start + Duration::from_secs(10)));
        assert!(drain(&mut s, start + Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn two_sides_confirm_a_path_and_keep_it_alive() {
        let t0 = Instant::now();
        let timing = Timing {
            keepalive: Duration::from_secs(5),
            ..Timing::default()
        };
        let mut a = Session::new(&agreement(Role::Initiator, &[B], t0), timing, addr(A));
        let mut b = Session::new(&agreement(Role::Responder, &[A], t0), timing, addr(B));
        // B's NAT maps per destination: A sees B's probe from another port.
        let b_seen = addr("198.51.100.5:61000");
        let from_b = drain(&mut b, t0);
        assert_eq!(
            a.on_datagram(&from_b[0].2, b_seen, t0),
            Step::Answered(b_seen)
        );
        assert_eq!(a.targets(), &[addr(B), b_seen]);
        let from_a = drain(&mut a, t0);
        let kinds: Vec<_> = from_a.iter().map(|(to, p, _)| (*to, p.kind)).collect();
        assert_eq!(kinds[..2], [(b_seen, Kind::Ack), (b_seen, Kind::Probe)]);
        // The ack reaches B: B has its path; B acks A's probe: A has its.
        assert_eq!(
            b.on_datagram(&from_a[0].2, addr(A), t0),
            Step::Connected(addr(A))
        );
        assert_eq!(
            b.on_datagram(&from_a[1].2, addr(A), t0),
            Step::Answered(addr(A))
        );
        let ack = drain(&mut b, t0);
        assert_eq!(ack.len(), 1);
        assert_eq!(
            a.on_datagram(&ack[0].2, b_seen, t0),
            Step::Connected(b_seen)
        );
        assert_eq!(a.path(), Some(b_seen));
        // Then keepalives only, every 5 s, to the path.
        let t = t0 + Duration::from_secs(1);
        assert!(drain(&mut a, t).is_empty(), "no more probes");
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        let t5 = t0 + Duration::from_secs(5);
        let ka = drain(&mut a, t5);
        assert_eq!(ka.len(), 1);
        assert_eq!((ka[0].0, ka[0].1.kind), (b_seen, Kind::Keepalive));
        assert_eq!(a.poll_timeout(), Some(t5 + Duration::from_secs(5)));
        assert_eq!(
            b.on_datagram(&ka[0].2, addr(A), t5),
            Step::Ignored(Ignored::Keepalive)
        );
        assert!(!a.timed_out(t0 + Duration::from_secs(60)));
        assert_eq!(a.counters().keepalives, 1);
    }

    #[test]
    fn an_own_probe_come_back_and_strangers_are_ignored() {
        let t0 = Instant::now();
        let lan = "198.18.1.2:40000";
        let mut a = Session::new(
            &agreement(Role::Initiator, &[lan], t0),
            Timing::default(),
            addr(lan),
        );
        let own = drain(&mut a, t0);
        assert_eq!(
            a.on_datagram(&own[0].2, addr(lan), t0),
            Step::Ignored(Ignored::OwnEcho)
        );
        let mut forged = own[0].2;
        forged[9] = 1; // claims to be the responder, but the mac no longer holds
        assert_eq!(
            a.on_datagram(&forged, addr(lan), t0),
            Step::Ignored(Ignored::NotOurs)
        );
        let other_key = SessionKey::derive(&[3; 16], &[2; 16], crate::Proto::Udp);
        let mut out = BytesMut::new();
        Probe {
            kind: Kind::Ack,
            from: Role::Responder,
            session: [1; 8],
            seq: 1,
        }
        .emit(&other_key, &mut out);
        assert_eq!(
            a.on_datagram(&out, addr(B), t0),
            Step::Ignored(Ignored::NotOurs)
        );
        assert_eq!(
            a.on_datagram(b"hello", addr(B), t0),
            Step::Ignored(Ignored::NotOurs)
        );
        assert_eq!(a.path(), None);
        assert_eq!(a.counters().ignored, 4);
    }

    #[test]
    fn data_from_a_source_that_probed_confirms_the_path_and_data_from_strangers_does_not() {
        let t0 = Instant::now();
        let mut a = Session::new(
            &agreement(Role::Initiator, &[B], t0),
            Timing::default(),
            addr(A),
        );
        let mut b = Session::new(
            &agreement(Role::Responder, &[A], t0),
            Timing::default(),
            addr(B),
        );
        let b_seen = addr("198.51.100.5:61000");
        assert_eq!(a.on_other(b_seen, t0), Step::Ignored(Ignored::NotOurs));
        let probe = drain(&mut b, t0).remove(0).2;
        assert_eq!(a.on_datagram(&probe, b_seen, t0), Step::Answered(b_seen));
        assert_eq!(
            a.on_other(addr("198.51.100.9:1"), t0),
            Step::Ignored(Ignored::NotOurs)
        );
        assert_eq!(a.on_other(b_seen, t0), Step::Connected(b_seen));
        assert_eq!(a.path(), Some(b_seen));
        assert_eq!(a.on_other(b_seen, t0), Step::Acked);
    }

    #[test]
    fn a_flood_of_probes_from_new_ports_stays_bounded() {
        let t0 = Instant::now();
        let mut a = Session::new(
            &agreement(Role::Initiator, &[B], t0),
            Timing::default(),
            addr(A),
        );
        let mut b = Session::new(
            &agreement(Role::Responder, &[A], t0),
            Timing::default(),
            addr(B),
        );
        let probe = drain(&mut b, t0).remove(0).2;
        for port in 1..1000u16 {
            let _ = a.on_datagram(&probe, SocketAddr::from(([198, 51, 100, 5], port)), t0);
        }
        assert_eq!(a.targets().len(), 1 + MAX_OBSERVED);
        assert!(drain(&mut a, t0).len() <= MAX_QUEUED + 1 + MAX_OBSERVED);
    }

    #[test]
    fn a_probe_survives_its_wire_form() {
        let key = SessionKey::derive(&[1; 16], &[2; 16], crate::Proto::Udp);
        let p = Probe {
            kind: Kind::Keepalive,
            from: Role::Responder,
            session: [4; 8],
            seq: 77,
        };
        let mut out = BytesMut::new();
        p.emit(&key, &mut out);
        assert_eq!(out.len(), PROBE_LEN);
        assert_eq!(Probe::open(&out, &key).unwrap(), p);
        assert_eq!(Probe::parse(&out).unwrap(), p);
        assert!(Probe::parse(&out[..PROBE_LEN - 1]).is_err());
        let mut bad = out.to_vec();
        bad[8] = 9;
        assert!(Probe::parse(&bad).is_err());
    }
}
