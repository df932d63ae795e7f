//! Hole punching between two nodes (the traverse layer's UDP and TCP punches), with the
//! path handshake on the punched path.

use std::net::SocketAddr;
use std::time::Duration;

use super::handshake::Expect;
use super::node::{raw_config, Inner};
use super::path::SecurePath;
use super::report::Strategy;
use crate::identity::PublicKey;
use crate::iface::bind;
use crate::signal::{DeliveredRequest, Incoming};
use crate::traverse::punch::tcp::{self, PunchPort};
use crate::traverse::punch::udp;
use crate::{Af, PipeConfig, Proto};

/// Whether a request is a punch offer (UDP or TCP).
pub(crate) fn is_offer(request: &DeliveredRequest) -> bool {
    let incoming = Incoming::Request(request.clone());
    udp::is_offer(&incoming) || tcp::is_offer(&incoming)
}

/// The STUN servers of family `af`.
fn stun_of(inner: &Inner, af: Af) -> Vec<SocketAddr> {
    inner
        .settings
        .stun
        .iter()
        .copied()
        .filter(|s| Af::of(&s.ip()) == af)
        .collect()
}

/// Which end of a punch this node is.
#[derive(Clone, Copy)]
pub(crate) enum End<'a> {
    /// It offers the punch to this peer.
    Offer(&'a PublicKey),
    /// It answers this offer.
    Answer(&'a DeliveredRequest),
}

/// Punches a path to `peer` over `proto` from this node's address of family `af`, then
/// authenticates it as the initiator; all within `limit`.
pub(crate) async fn connect(
    inner: &Inner,
    peer: &PublicKey,
    proto: Proto,
    af: Af,
    limit: Duration,
) -> Result<SecurePath, String> {
    let raw = punch_raw(inner, End::Offer(peer), proto, af, limit).await?;
    inner
        .initiate(raw, peer, Strategy::Punch, Inner::token())
        .await
}

/// Punches a raw path (not yet authenticated) from this node's address of family `af`,
/// as `end`, within `limit`.
pub(crate) async fn punch_raw(
    inner: &Inner,
    end: End<'_>,
    proto: Proto,
    af: Af,
    limit: Duration,
) -> Result<crate::Pipe, String> {
    let signaller = inner.signalling()?;
    let local = bind_addr(inner, af)?;
    let family = inner.family(af);
    let failed = |e: &dyn std::fmt::Display| e.to_string();
    match proto {
        Proto::Udp => {
            let socket = bind::udp_socket(local, None).map_err(|e| failed(&e))?;
            let cfg = udp::Config {
                stun: stun_of(inner, af),
                nat: family.nat,
                limit,
                pipe: PipeConfig::default(),
                ..udp::Config::default()
            };
            match end {
                End::Offer(peer) => udp::punch(signaller, peer, socket, &cfg).await,
                End::Answer(offer) => udp::answer(signaller, offer, socket, &cfg).await,
            }
            .map_err(|e| failed(&e))
        }
        Proto::Tcp => {
            let port = PunchPort::bind(local, None).map_err(|e| failed(&e))?;
            let cfg = tcp::Config {
                stun: stun_of(inner, af),
                limit,
                pipe: raw_config(),
                ..tcp::Config::new(family.tcp())
            };
            match end {
                End::Offer(peer) => tcp::connect(signaller, peer, port, &cfg).await,
                End::Answer(offer) => tcp::answer(signaller, offer, port, &cfg).await,
            }
            .map_err(|e| failed(&e))
        }
    }
}

/// Answers a punch offer from `request.from`: the punched path becomes a relayed path's
/// new one when an upgrade announced it, else it is authenticated as the responder and
/// handed to [`Node::accept`](super::Node::accept).
pub(crate) async fn answer(inner: &Inner, request: &DeliveredRequest) {
    let proto = if udp::is_offer(&Incoming::Request(request.clone())) {
        Proto::Udp
    } else {
        Proto::Tcp
    };
    // Both sides choose the family by the same rule, so they punch on the same one.
    let af = inner.nat_family();
    let limit = inner.settings.limits.connect;
    let peer = crate::identity::NodeId::from_key(&request.from);
    let raw = match punch_raw(inner, End::Answer(request), proto, af, limit).await {
        Ok(raw) => raw,
        Err(reason) => {
            tracing::info!(%peer, %proto, %reason, "punch answered, no path");
            return;
        }
    };
    if let Some(mover) = inner.upgrading(&request.from) {
        super::upgrade::moved(&mover, raw, limit, &peer).await;
        return;
    }
    match inner.respond(raw, Expect::Key(request.from)).await {
        Ok(path) => inner.deliver(path, Strategy::Punch, proto).await,
        Err(reason) => tracing::info!(%peer, %proto, %reason, "punched path refused"),
    }
}

/// This node's address of family `af`, any port.
fn bind_addr(inner: &Inner, af: Af) -> Result<SocketAddr, String> {
    inner
        .listening_on(af)
        .map(|a| SocketAddr::new(a.ip(), 0))
        .ok_or_else(|| format!("this node has no {af} address"))
}
