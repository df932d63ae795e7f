//! The tokio driver of the TCP punch over signalling: STUN over TCP from the punch
//! port, the rendezvous (shared with the UDP punch), the simultaneous open, the pipe.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::timeout_at;

use super::{Error, HelloKey, PunchPort, TcpMapping, TcpNatSummary};
use crate::identity::{NodeId, PublicKey};
use crate::nat::PortAllocation;
use crate::signal::{DeliveredRequest, Incoming, Signaller};
use crate::traverse::punch::exchange::{self, nonce, Mine};
use crate::traverse::punch::rendezvous::{Agreement, Candidates, Offer, Way};
use crate::traverse::punch::{NatSummary, MAX_CANDIDATES};
use crate::{Pipe, PipeConfig, Proto};

/// The settings of a TCP punch over signalling.
#[derive(Debug, Clone)]
pub struct Config {
    /// STUN servers asked over TCP, one after another, for the punch port's mapping;
    /// each connection stays open while the punch runs, holding its mapping. None: only
    /// the port's own address is offered (when it is a specific one).
    pub stun: Vec<SocketAddr>,
    /// The time limit of one STUN server's answer.
    pub stun_limit: Duration,
    /// What this side's NAT does to TCP. The port allocation can be measured (the nat
    /// layer's [`PortAllocation`], found over UDP, from [`nat::probe`](crate::nat::probe));
    /// whether inbound TCP is filtered cannot be measured today: it is configured.
    pub nat: TcpNatSummary,
    /// The time limit of the whole operation: STUN, rendezvous and punch.
    pub limit: Duration,
    /// The settings of the pipe it ends as.
    pub pipe: PipeConfig,
}

impl Config {
    /// The default settings for a side whose NAT does `nat` to TCP: no STUN server, 3 s
    /// per STUN answer, 10 s in all, the default pipe.
    pub fn new(nat: TcpNatSummary) -> Config {
        Config {
            stun: Vec::new(),
            stun_limit: Duration::from_secs(3),
            nat,
            limit: Duration::from_secs(10),
            pipe: PipeConfig::default(),
        }
    }
}

/// Whether a signalling message is a TCP punch offer, for [`answer`].
pub fn is_offer(incoming: &Incoming) -> bool {
    exchange::is_offer(incoming, Proto::Tcp)
}

/// Punches a TCP connection to `peer` from `port` and returns it as a pipe; `peer`
/// answers with [`answer`]. Where the two sides' NAT behaviour rules the punch out
/// ([`tcp_feasibility`](super::tcp_feasibility)) it fails with the refusal as soon as
/// the answer arrives, before any connection is attempted.
///
/// # Errors
///
/// [`Error::Rendezvous`] (the refusal, the signalling failing or timing out, naming the
/// peer), [`Error::NoCandidates`], [`Error::TimedOut`] (naming every candidate),
/// [`Error::Pipe`].
///
/// # Cancel safety
///
/// Cancel safe: dropping the future drops the port and every attempt; the peer's punch
/// times out.
pub async fn connect(
    signaller: &Signaller,
    peer: &PublicKey,
    mut port: PunchPort,
    cfg: &Config,
) -> Result<Pipe, Error> {
    let deadline = tokio::time::Instant::now() + cfg.limit;
    let id = NodeId::from_key(peer);
    let timed_out = || rendezvous_timed_out(id, cfg.limit);
    let candidates = timeout_at(deadline, gather(&mut port, cfg))
        .await
        .map_err(|_| Error::from(timed_out()))?;
    let offer = Offer {
        nonce: nonce(),
        proto: Proto::Tcp,
        nat: NatSummary::default(),
        tcp: Some(cfg.nat),
        candidates,
    };
    let agreement = exchange::initiate(signaller, peer, offer, deadline, &timed_out).await?;
    finish(port, &agreement, deadline, cfg).await
}

/// Answers a TCP punch `offer` (a request [`is_offer`] recognised) from `port`, and
/// returns the punched connection as a pipe. Where the punch cannot work it answers
/// anyway, so that the initiator learns at once, and fails with the refusal.
///
/// It takes the initiator's ready (about one signalling round trip later) through a
/// [`Signaller::watch`] on the initiator, so the caller may go on reading `signaller`'s
/// other messages meanwhile.
///
/// # Errors
///
/// As [`connect`].
///
/// # Cancel safety
///
/// As [`connect`].
pub async fn answer(
    signaller: &Signaller,
    offer: &DeliveredRequest,
    mut port: PunchPort,
    cfg: &Config,
) -> Result<Pipe, Error> {
    let deadline = tokio::time::Instant::now() + cfg.limit;
    let id = NodeId::from_key(&offer.from);
    let timed_out = || rendezvous_timed_out(id, cfg.limit);
    let candidates = timeout_at(deadline, gather(&mut port, cfg))
        .await
        .map_err(|_| Error::from(timed_out()))?;
    let mine = Mine {
        nat: NatSummary::default(),
        tcp: Some(cfg.nat),
        candidates,
    };
    let agreement = exchange::respond(signaller, offer, mine, deadline, &timed_out).await?;
    finish(port, &agreement, deadline, cfg).await
}

/// Punches by the agreement until the deadline, and makes the pipe.
async fn finish(
    port: PunchPort,
    agreement: &Agreement,
    deadline: tokio::time::Instant,
    cfg: &Config,
) -> Result<Pipe, Error> {
    let Way::Tcp(way) = agreement.way else {
        let not_tcp = crate::traverse::punch::Error::Malformed("a udp offer to a tcp punch");
        return Err(not_tcp.into());
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let key = HelloKey::from(&agreement.key);
    let stream = port.punch_by(&agreement.plan, way, &key, left).await?;
    tracing::debug!(local = ?stream.local_addr().ok(), peer = ?stream.peer_addr().ok(), "tcp connection punched");
    Ok(Pipe::adopt_tcp(stream, &cfg.pipe)?)
}

/// The port's candidates: its mappings learned by STUN over TCP and the ports predicted
/// from them where the NAT allows (else the mappings alone), or the port's own address
/// when nothing was learned. A STUN server that fails is skipped.
async fn gather(port: &mut PunchPort, cfg: &Config) -> Candidates {
    let local = port.local_addr();
    for &server in cfg.stun.iter().filter(|s| s.is_ipv4() == local.is_ipv4()) {
        if let Err(e) = port.learn(server, cfg.stun_limit).await {
            tracing::debug!(%local, %server, error = %e, "no tcp mapping from this stun server");
        }
    }
    let addrs = port
        .candidates(allocation(&cfg.nat))
        .unwrap_or_else(|_| port.mapped().to_vec());
    let own = (addrs.is_empty() && !local.ip().is_unspecified()).then_some(local);
    let all = addrs.into_iter().chain(own).take(MAX_CANDIDATES);
    Candidates::new(all).expect("candidates within the bound")
}

/// How the NAT allocates the punch port's mappings: an untranslated port keeps its own.
fn allocation(nat: &TcpNatSummary) -> Option<PortAllocation> {
    match nat.mapping {
        TcpMapping::Direct => Some(PortAllocation::Preserving),
        TcpMapping::Translated(a) => a,
    }
}

/// The rendezvous did not end by the deadline.
fn rendezvous_timed_out(peer: NodeId, after: Duration) -> crate::traverse::punch::Error {
    let source = crate::signal::Error::TimedOut { peer, after };
    crate::traverse::punch::Error::Signal { peer, source }
}
