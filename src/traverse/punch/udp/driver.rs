//! The tokio driver of the UDP punch: STUN for the candidates, the rendezvous over
//! signalling, the [`Session`] on the caller's socket, then the pipe and its keepalives.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::time::timeout_at;

use super::session::{Session, Step, Timing, MAGIC, PROBE_LEN};
use crate::identity::{NodeId, PublicKey};
use crate::pipe::Subscription;
use crate::signal::{DeliveredRequest, Incoming, Signaller};
use crate::traverse::punch::exchange::{self, nonce, Mine};
use crate::traverse::punch::rendezvous::{Agreement, Candidates, Offer};
use crate::traverse::punch::{Error, NatSummary};
use crate::{Pipe, PipeConfig, Proto};

/// The settings of a UDP punch.
#[derive(Debug, Clone)]
pub struct Config {
    /// STUN servers that tell the punching socket's mapped address (asked at once; the
    /// first answer wins). None: only the local address is offered.
    pub stun: Vec<SocketAddr>,
    /// This side's NAT, from [`nat::probe`](crate::nat::probe) (see
    /// [`NatSummary::from_report`]).
    pub nat: NatSummary,
    /// The STUN retransmission schedule.
    pub stun_config: crate::stun::Config,
    /// The pace of the probes and keepalives; [`Timing::limit`] is not used: the whole
    /// operation is bounded by `limit`.
    pub timing: Timing,
    /// The time limit of the whole operation: STUN, rendezvous and probes.
    pub limit: Duration,
    /// The settings of the pipe it ends as.
    pub pipe: PipeConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            stun: Vec::new(),
            nat: NatSummary::default(),
            stun_config: crate::stun::Config {
                initial_rto: Duration::from_millis(200),
                max_transmissions: 4,
                final_wait_multiplier: 4,
                ..crate::stun::Config::default()
            },
            timing: Timing::default(),
            limit: Duration::from_secs(10),
            pipe: PipeConfig::default(),
        }
    }
}

/// Whether a signalling message is a punch offer, for [`answer`].
pub fn is_offer(incoming: &Incoming) -> bool {
    exchange::is_offer(incoming, Proto::Udp)
}

/// Punches a UDP path to `peer` from `socket` and returns it as a pipe whose default
/// peer is the path; `peer` answers with [`answer`]. Where the two NATs cannot be
/// punched ([`udp_feasibility`](crate::traverse::punch::udp_feasibility)) it fails with
/// [`Error::Refused`] as soon as the answer arrives, before any probe is sent.
///
/// # Errors
///
/// [`Error::Refused`], [`Error::TimedOut`] past `cfg.limit`, [`Error::Signal`] when the
/// peer does not answer, and socket errors; each names the peer or the address.
///
/// # Cancel safety
///
/// Cancel safe: dropping the future drops the socket, and the peer's probes time out.
pub async fn punch(
    signaller: &Signaller,
    peer: &PublicKey,
    socket: UdpSocket,
    cfg: &Config,
) -> Result<Pipe, Error> {
    let deadline = tokio::time::Instant::now() + cfg.limit;
    let id = NodeId::from_key(peer);
    let local = local_addr(&socket)?;
    let timed_out = || timed_out(id, local, Vec::new(), cfg.limit);
    let candidates = timeout_at(deadline, gather(&socket, local, cfg))
        .await
        .map_err(|_| timed_out())?;
    let offer = Offer {
        nonce: nonce(),
        proto: Proto::Udp,
        nat: cfg.nat,
        tcp: None,
        candidates,
    };
    let agreement = exchange::initiate(signaller, peer, offer, deadline, &timed_out).await?;
    run(socket, id, &agreement, deadline, cfg).await
}

/// Answers a punch `offer` (a request [`is_offer`] recognised) from `socket`, and
/// returns the punched path as a pipe. Where the punch cannot work it answers anyway,
/// so that the initiator learns at once, and fails with [`Error::Refused`].
///
/// It takes the initiator's ready (about one signalling round trip later) through a
/// [`Signaller::watch`] on the initiator, so the caller may go on reading `signaller`'s
/// other messages meanwhile.
///
/// # Errors
///
/// As [`punch`].
///
/// # Cancel safety
///
/// As [`punch`].
pub async fn answer(
    signaller: &Signaller,
    offer: &DeliveredRequest,
    socket: UdpSocket,
    cfg: &Config,
) -> Result<Pipe, Error> {
    let deadline = tokio::time::Instant::now() + cfg.limit;
    let id = NodeId::from_key(&offer.from);
    let local = local_addr(&socket)?;
    let timed_out = || timed_out(id, local, Vec::new(), cfg.limit);
    let candidates = timeout_at(deadline, gather(&socket, local, cfg))
        .await
        .map_err(|_| timed_out())?;
    let mine = Mine {
        nat: cfg.nat,
        tcp: None,
        candidates,
    };
    let agreement = exchange::respond(signaller, offer, mine, deadline, &timed_out).await?;
    run(socket, id, &agreement, deadline, cfg).await
}

/// Probes until a path is confirmed, then makes the pipe and starts its keepalives.
async fn run(
    socket: UdpSocket,
    peer: NodeId,
    agreement: &Agreement,
    deadline: tokio::time::Instant,
    cfg: &Config,
) -> Result<Pipe, Error> {
    let local = local_addr(&socket)?;
    let mut session = Session::new(agreement, cfg.timing_until(deadline, agreement), local);
    if session.targets().is_empty() {
        return Err(Error::NoCandidates { peer, local });
    }
    let Some(path) = probe(&socket, &mut session).await else {
        let tried = session.targets().to_vec();
        return Err(timed_out(peer, local, tried, cfg.limit));
    };
    flush(&socket, &mut session, Instant::now()).await;
    let sender = duplicate(&socket, local)?;
    let pipe = Pipe::adopt_udp(socket, path, &cfg.pipe)?;
    let punch_packets =
        pipe.subscribe_with(PUNCH_PATTERN, None, 16, crate::pipe::Overflow::DropOldest)?;
    tokio::spawn(keep_alive(session, sender, punch_packets));
    tracing::debug!(%peer, %local, %path, "udp path punched");
    Ok(pipe)
}

/// Punch packets, by their first bytes (bytes, not Unicode).
const PUNCH_PATTERN: &str = r"(?-u)^\xFFp2punch";

impl Config {
    /// The session's timing: the probes stop at the operation's deadline.
    fn timing_until(&self, deadline: tokio::time::Instant, agreement: &Agreement) -> Timing {
        let deadline = deadline.into_std();
        Timing {
            limit: deadline.saturating_duration_since(agreement.plan.start),
            ..self.timing
        }
    }
}

/// Runs the session on `socket` until a path is confirmed (its address) or the session
/// times out (`None`). A datagram that is no punch packet is only peeked at: when it
/// confirms the path (the peer already sends data) it stays in the socket for the pipe.
async fn probe(socket: &UdpSocket, session: &mut Session) -> Option<SocketAddr> {
    let mut buf = [0u8; PROBE_LEN + 1];
    loop {
        let now = Instant::now();
        flush(socket, session, now).await;
        if session.timed_out(now) {
            return None;
        }
        let wake = session.poll_timeout()?;
        tokio::select! {
            got = socket.peek_from(&mut buf) => {
                // ICMP errors surface here on some systems: they end nothing.
                let Ok((n, from)) = got else {
                    let _ = socket.try_recv_from(&mut buf);
                    continue;
                };
                let step = if buf[..n].starts_with(&MAGIC) {
                    let _ = socket.try_recv_from(&mut buf);
                    session.on_datagram(&buf[..n.min(PROBE_LEN + 1)], from, Instant::now())
                } else {
                    match session.on_other(from, Instant::now()) {
                        step @ Step::Connected(_) => step,
                        step => {
                            let _ = socket.try_recv_from(&mut buf);
                            step
                        }
                    }
                };
                if let Step::Connected(path) = step {
                    return Some(path);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// Sends what the session has queued; a failed send is as good as a lost packet.
async fn flush(socket: &UdpSocket, session: &mut Session, now: Instant) {
    while let Some(t) = session.poll_transmit(now) {
        if let Err(e) = socket.send_to(&t.bytes, t.to).await {
            tracing::debug!(to = %t.to, error = %e, "punch packet not sent");
        }
    }
}

/// Keeps the path alive while the pipe lives, and acks the peer's late probes.
async fn keep_alive(mut session: Session, socket: UdpSocket, packets: Subscription) {
    loop {
        flush(&socket, &mut session, Instant::now()).await;
        let Some(wake) = session.poll_timeout() else {
            return;
        };
        tokio::select! {
            got = packets.recv() => match got {
                Ok(m) => {
                    let _ = session.on_datagram(&m.data, m.peer, Instant::now());
                }
                // The pipe ended.
                Err(_) => return,
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// The candidates of `socket`: its mapped address if a STUN server tells it, then its
/// local address. A side whose UDP is blocked asks no server: the rendezvous refuses at
/// once anyway.
async fn gather(socket: &UdpSocket, local: SocketAddr, cfg: &Config) -> Candidates {
    let blocked = cfg.nat.nat_type == Some(crate::nat::NatType::UdpBlocked);
    let servers: Vec<SocketAddr> = cfg
        .stun
        .iter()
        .filter(|s| s.is_ipv4() == local.is_ipv4() && !blocked)
        .copied()
        .collect();
    let mapped = match crate::stun::udp::first_answer(socket, &servers, cfg.stun_config).await {
        Ok((_, response)) => response.mapped,
        Err(e) => {
            tracing::debug!(%local, error = %e, "no mapped address for the punching socket");
            None
        }
    };
    Candidates::gather(local, mapped, &cfg.nat)
}

fn local_addr(socket: &UdpSocket) -> Result<SocketAddr, Error> {
    socket.local_addr().map_err(|source| Error::Io {
        op: "local address",
        local: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

/// A second handle on the same socket, for the keepalives: the pipe owns the first.
fn duplicate(socket: &UdpSocket, local: SocketAddr) -> Result<UdpSocket, Error> {
    let io = |source| Error::Io {
        op: "duplicate the socket",
        local,
        source,
    };
    let dup = socket2::SockRef::from(socket).try_clone().map_err(io)?;
    UdpSocket::from_std(dup.into()).map_err(io)
}

fn timed_out(
    peer: NodeId,
    local: SocketAddr,
    candidates: Vec<SocketAddr>,
    after: Duration,
) -> Error {
    Error::TimedOut {
        peer,
        local,
        candidates,
        after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traverse::punch::udp::{Kind, Probe, MAGIC};
    use crate::traverse::punch::SessionKey;

    #[test]
    fn the_pipe_routes_punch_packets_and_nothing_else_to_the_session() {
        let re = regex::bytes::Regex::new(PUNCH_PATTERN).unwrap();
        let mut probe = bytes::BytesMut::new();
        Probe {
            kind: Kind::Keepalive,
            from: crate::traverse::punch::Role::Initiator,
            session: [0; 8],
            seq: 1,
        }
        .emit(
            &SessionKey::derive(&[0; 16], &[1; 16], Proto::Udp),
            &mut probe,
        );
        assert!(re.is_match(&probe));
        assert!(re.is_match(&MAGIC));
        assert!(!re.is_match(b"p2punch"));
        assert!(!re.is_match("\u{ff}p2punch".as_bytes()));
        assert!(!re.is_match(b"hello \xffp2punch"));
    }

    #[test]
    fn an_offer_for_udp_is_told_apart_from_other_requests() {
        use crate::traverse::punch::exchange::offers;
        use crate::traverse::punch::rendezvous::{Message, NONCE_LEN};
        let offer = Message::Offer(Offer {
            nonce: [1; NONCE_LEN],
            proto: Proto::Udp,
            nat: NatSummary::default(),
            tcp: None,
            candidates: Candidates::default(),
        });
        assert!(offers(&offer.to_bytes(), Proto::Udp));
        assert!(!offers(b"p2pipe/1/record?", Proto::Udp));
        let Message::Offer(mut tcp) = offer else {
            unreachable!()
        };
        tcp.proto = Proto::Tcp;
        assert!(!offers(&Message::Offer(tcp.clone()).to_bytes(), Proto::Udp));
        assert!(offers(&Message::Offer(tcp).to_bytes(), Proto::Tcp));
    }
}
