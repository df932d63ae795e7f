//! One NAT-PMP or PCP request and its answer, sans-IO: what to send, when to send it
//! again, and which datagram answers it. Nothing here owns a socket or reads a clock:
//! bytes and `now` go in, a [`Step`] comes out; a small tokio driver beside it (the
//! crate-private `mapping::udp`) moves the bytes.
//!
//! The request is sent at once and again after 250 ms, doubling each time (RFC 6886,
//! 3.1; this client uses the same schedule for PCP), until an answer or the deadline.
//! Datagrams from anyone but the gateway, or that do not answer this request (another
//! opcode, port, protocol or nonce), are ignored; a malformed one is remembered, so that
//! a gateway that only ever answers garbage is reported as such at the deadline.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{natpmp, pcp, Error, Method};

/// The first retransmission interval (RFC 6886, 3.1).
pub const FIRST_INTERVAL: Duration = Duration::from_millis(250);

/// What is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// A NAT-PMP request.
    NatPmp(natpmp::Request),
    /// A PCP MAP request.
    Pcp(pcp::MapRequest),
}

impl Ask {
    /// The method this request belongs to.
    pub fn method(&self) -> Method {
        match self {
            Ask::NatPmp(_) => Method::NatPmp,
            Ask::Pcp(_) => Method::Pcp,
        }
    }
}

/// A successful answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The gateway's external address (NAT-PMP).
    ExternalAddress {
        /// The address.
        ip: IpAddr,
        /// The gateway's epoch, in seconds.
        epoch: u32,
    },
    /// A mapping granted (or, for lifetime 0, deleted).
    Mapped {
        /// The external port.
        external_port: u16,
        /// The external address, when the protocol says it (PCP).
        external_ip: Option<IpAddr>,
        /// Seconds granted.
        lifetime: u32,
        /// The gateway's epoch, in seconds.
        epoch: u32,
    },
}

/// What the driver does next.
#[derive(Debug)]
#[must_use = "a step says what to send or how long to wait"]
pub enum Step {
    /// Send [`Exchange::request`] to the gateway now, then come back at
    /// [`Exchange::poll_timeout`].
    Send,
    /// Nothing to send: wait for a datagram or this moment.
    Wait(Instant),
    /// The gateway answered with success.
    Answered(Reply),
    /// The exchange failed: refused, unsupported, or no answer by the deadline.
    Failed(Error),
}

/// One request in flight.
#[derive(Debug)]
pub struct Exchange {
    gateway: SocketAddr,
    ask: Ask,
    request: BytesMut,
    started: Option<Instant>,
    limit: Duration,
    next_send: Option<Instant>,
    interval: Duration,
    sent: u32,
    malformed: Option<&'static str>,
}

impl Exchange {
    /// An exchange of `ask` with `gateway` that gives up `limit` after it starts.
    pub fn new(gateway: SocketAddr, ask: Ask, limit: Duration) -> Exchange {
        let mut request = BytesMut::new();
        match &ask {
            Ask::NatPmp(r) => r.emit(&mut request),
            Ask::Pcp(r) => r.emit(&mut request),
        }
        Exchange {
            gateway,
            ask,
            request,
            started: None,
            limit,
            next_send: None,
            interval: FIRST_INTERVAL,
            sent: 0,
            malformed: None,
        }
    }

    /// The bytes to send.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// The gateway's address.
    pub fn gateway(&self) -> SocketAddr {
        self.gateway
    }

    /// The method of the request.
    pub fn method(&self) -> Method {
        self.ask.method()
    }

    /// How many times the request was sent.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// When to call [`Exchange::on_timeout`] next (`None` before the start).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.started? + self.limit;
        Some(self.next_send.map_or(deadline, |n| n.min(deadline)))
    }

    /// Time passes: the first call starts the exchange ([`Step::Send`]); later calls
    /// retransmit when due and fail at the deadline.
    pub fn on_timeout(&mut self, now: Instant) -> Step {
        let started = *self.started.get_or_insert(now);
        if now >= started + self.limit {
            return Step::Failed(self.give_up());
        }
        match self.next_send {
            Some(due) if now < due => Step::Wait(due.min(started + self.limit)),
            Some(_) => {
                self.interval *= 2;
                self.sent += 1;
                self.next_send = Some(now + self.interval);
                Step::Send
            }
            None => {
                self.sent += 1;
                self.next_send = Some(now + self.interval);
                Step::Send
            }
        }
    }

    /// A datagram arrived from `from`.
    pub fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) -> Step {
        let wait = Step::Wait(self.poll_timeout().unwrap_or(now));
        if from.ip() != self.gateway.ip() {
            return wait;
        }
        let outcome = match self.ask {
            Ask::NatPmp(req) => self.natpmp_answer(req, bytes),
            Ask::Pcp(req) => self.pcp_answer(req, bytes),
        };
        match outcome {
            Ok(Some(step)) => step,
            Ok(None) => wait,
            Err(Error::Malformed { reason, .. }) => {
                self.malformed = Some(reason);
                wait
            }
            Err(e) => Step::Failed(e),
        }
    }

    fn give_up(&self) -> Error {
        let method = self.ask.method();
        match self.malformed {
            Some(reason) => Error::Malformed { method, reason },
            None => Error::NoAnswer {
                method,
                gateway: self.gateway.ip(),
                limit: self.limit,
            },
        }
    }

    fn refused(&self, code: u16, reason: &'static str) -> Step {
        Step::Failed(Error::Refused {
            method: self.ask.method(),
            gateway: self.gateway.ip(),
            code,
            reason,
        })
    }

    /// `Ok(None)`: not an answer to this request.
    fn natpmp_answer(&self, req: natpmp::Request, bytes: &[u8]) -> Result<Option<Step>, Error> {
        let r = natpmp::Response::parse(bytes)?;
        if r.opcode != req.opcode() {
            return Ok(None);
        }
        if r.result != 0 {
            return Ok(Some(self.refused(r.result, natpmp::describe(r.result))));
        }
        let reply = match (req, r.body) {
            (natpmp::Request::ExternalAddress, natpmp::Body::ExternalAddress(ip)) => {
                Reply::ExternalAddress {
                    ip: ip.into(),
                    epoch: r.epoch,
                }
            }
            (
                natpmp::Request::Map { internal_port, .. },
                natpmp::Body::Map {
                    internal_port: answered,
                    external_port,
                    lifetime,
                    ..
                },
            ) if answered == internal_port => Reply::Mapped {
                external_port,
                external_ip: None,
                lifetime,
                epoch: r.epoch,
            },
            _ => return Ok(None),
        };
        Ok(Some(Step::Answered(reply)))
    }

    fn pcp_answer(&self, req: pcp::MapRequest, bytes: &[u8]) -> Result<Option<Step>, Error> {
        let r = match pcp::Answer::parse(bytes)? {
            pcp::Answer::Pcp(r) => r,
            pcp::Answer::OtherVersion(version) => {
                return Err(Error::UnsupportedVersion {
                    method: Method::Pcp,
                    gateway: self.gateway.ip(),
                    version,
                })
            }
        };
        if r.opcode != pcp::OP_MAP {
            return Ok(None);
        }
        if let Some(m) = &r.map {
            let ours = m.nonce == req.nonce
                && m.protocol == pcp::iana(req.proto)
                && m.internal_port == req.internal_port;
            if !ours {
                return Ok(None);
            }
        }
        if r.result != 0 {
            return Ok(Some(self.refused(r.result.into(), pcp::describe(r.result))));
        }
        let m = r.map.ok_or(Error::Malformed {
            method: Method::Pcp,
            reason: "a map answer without its payload",
        })?;
        Ok(Some(Step::Answered(Reply::Mapped {
            external_port: m.external_port,
            external_ip: Some(m.external_ip),
            lifetime: r.lifetime,
            epoch: r.epoch,
        })))
    }
}

/// The gateway's epoch as seen over time, to notice that it restarted and lost its
/// mappings (RFC 6887, 8.5; RFC 6886, 3.6 is the same check, looser).
#[derive(Clone, Copy, Debug, Default)]
pub struct Epoch {
    last: Option<(u32, Instant)>,
}

impl Epoch {
    /// Records an answer's epoch `server` received at `now`; `true` when it shows that
    /// the gateway restarted since the previous answer.
    pub fn observe(&mut self, server: u32, now: Instant) -> bool {
        let restarted = match self.last {
            None => false,
            Some((prev, at)) => {
                let client_delta = now.saturating_duration_since(at).as_secs();
                let server_delta = u64::from(server.wrapping_sub(prev));
                server.wrapping_add(1) < prev
                    || client_delta + 2 < server_delta.saturating_sub(server_delta / 16)
                    || server_delta + 2 < client_delta.saturating_sub(client_delta / 16)
            }
        };
        self.last = Some((server, now));
        restarted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipe::Proto;
    use std::net::Ipv4Addr;

    const GW: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)), 5351);

    fn map_udp() -> Ask {
        Ask::NatPmp(natpmp::Request::Map {
            proto: Proto::Udp,
            internal_port: 5000,
            external_port: 5000,
            lifetime: 60,
        })
    }

    fn pcp_ask() -> pcp::MapRequest {
        pcp::tests::request()
    }

    fn pcp_answer(req: &pcp::MapRequest, result: u8) -> Vec<u8> {
        let mut b = BytesMut::new();
        req.emit(&mut b);
        b[1] |= 0x80;
        b[3] = result;
        b[8..24].fill(0);
        b[44..60].copy_from_slice(&Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped().octets());
        b.to_vec()
    }

    #[test]
    fn retransmissions_double_from_250_ms_until_the_deadline() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(GW, map_udp(), Duration::from_secs(2));
        assert!(matches!(ex.on_timeout(t0), Step::Send));
        let mut sends = vec![0u128];
        let end = loop {
            let now = ex.poll_timeout().unwrap();
            match ex.on_timeout(now) {
                Step::Send => sends.push((now - t0).as_millis()),
                Step::Wait(_) => panic!("woken when nothing was due"),
                Step::Answered(_) => panic!("answered by nothing"),
                Step::Failed(e) => {
                    assert!(matches!(e, Error::NoAnswer { .. }), "{e}");
                    break now;
                }
            }
        };
        assert_eq!(sends, [0, 250, 750, 1750]);
        assert_eq!(end - t0, Duration::from_secs(2));
        assert_eq!(ex.sent(), 4);
        let msg = ex.give_up().to_string();
        assert_eq!(msg, "nat-pmp at 198.18.1.1: no answer within 2s");
    }

    #[test]
    fn a_matching_answer_from_the_gateway_ends_the_exchange() {
        let now = Instant::now();
        let mut ex = Exchange::new(GW, map_udp(), Duration::from_secs(2));
        let _ = ex.on_timeout(now);
        let answer = [
            0, 129, 0, 0, 0, 0, 0, 9, 0x13, 0x88, 0x17, 0x70, 0, 0, 0, 60,
        ];
        let stranger = SocketAddr::from(([203, 0, 113, 66], 5351));
        assert!(matches!(
            ex.on_datagram(stranger, &answer, now),
            Step::Wait(_)
        ));
        let other_port = [
            0, 129, 0, 0, 0, 0, 0, 9, 0x13, 0x89, 0x17, 0x70, 0, 0, 0, 60,
        ];
        assert!(matches!(
            ex.on_datagram(GW, &other_port, now),
            Step::Wait(_)
        ));
        match ex.on_datagram(GW, &answer, now) {
            Step::Answered(Reply::Mapped {
                external_port: 6000,
                lifetime: 60,
                epoch: 9,
                external_ip: None,
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refusal_names_the_gateway_and_the_reason() {
        let now = Instant::now();
        let mut ex = Exchange::new(GW, map_udp(), Duration::from_secs(2));
        let _ = ex.on_timeout(now);
        match ex.on_datagram(GW, &[0, 129, 0, 2, 0, 0, 0, 1], now) {
            Step::Failed(e) => assert_eq!(
                e.to_string(),
                "nat-pmp at 198.18.1.1 refused: not authorized or refused (result code 2)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_alone_is_reported_as_malformed_at_the_deadline() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(GW, map_udp(), Duration::from_secs(1));
        let _ = ex.on_timeout(t0);
        assert!(matches!(ex.on_datagram(GW, b"garbage", t0), Step::Wait(_)));
        match ex.on_timeout(t0 + Duration::from_secs(1)) {
            Step::Failed(Error::Malformed { reason, .. }) => {
                assert_eq!(reason, "shorter than the 8-byte header")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pcp_answers_must_carry_the_requests_nonce() {
        let now = Instant::now();
        let req = pcp_ask();
        let mut ex = Exchange::new(GW, Ask::Pcp(req), Duration::from_secs(2));
        let _ = ex.on_timeout(now);
        let mut other_nonce = pcp_answer(&req, 0);
        other_nonce[24] ^= 1;
        assert!(matches!(
            ex.on_datagram(GW, &other_nonce, now),
            Step::Wait(_)
        ));
        match ex.on_datagram(GW, &pcp_answer(&req, 0), now) {
            Step::Answered(Reply::Mapped {
                external_port: 5000,
                external_ip: Some(ip),
                lifetime: 60,
                ..
            }) => assert_eq!(ip, IpAddr::from([203, 0, 113, 9])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_nat_pmp_only_gateway_answering_pcp_is_an_unsupported_version() {
        let now = Instant::now();
        let mut ex = Exchange::new(GW, Ask::Pcp(pcp_ask()), Duration::from_secs(2));
        let _ = ex.on_timeout(now);
        match ex.on_datagram(GW, &[0, 129, 0, 1, 0, 0, 0, 5], now) {
            Step::Failed(Error::UnsupportedVersion { version: 0, .. }) => {}
            other => panic!("{other:?}"),
        }
        let mut refused = Exchange::new(GW, Ask::Pcp(pcp_ask()), Duration::from_secs(2));
        let _ = refused.on_timeout(now);
        match refused.on_datagram(GW, &pcp_answer(&pcp_ask(), 2), now) {
            Step::Failed(Error::Refused {
                code: 2, reason, ..
            }) => {
                assert_eq!(reason, "not authorized")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_epoch_that_goes_back_or_lags_shows_a_restart() {
        let t0 = Instant::now();
        let mut e = Epoch::default();
        assert!(!e.observe(1000, t0));
        assert!(!e.observe(1030, t0 + Duration::from_secs(30)));
        // Went back: the gateway restarted.
        assert!(e.observe(5, t0 + Duration::from_secs(60)));
        // 100 s passed here, but the gateway counted 10: restarted again.
        assert!(e.observe(15, t0 + Duration::from_secs(160)));
        assert!(!e.observe(75, t0 + Duration::from_secs(220)));
    }
}
