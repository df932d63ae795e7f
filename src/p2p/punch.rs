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

/// Punches a path to `peer` over `proto` from this node's address of family `af`, then
/// authenticates it as the initiator; all within `limit`.
pub(crate) async fn connect(
    inner: &Inner,
    peer: &PublicKey,
    proto: Proto,
    af: Af,
    limit: Duration,
) -> Result<SecurePath, String> {
    let raw = punch_raw(inner, peer, proto, af, limit).await?;
    inner
        .initiate(raw, peer, Strategy::Punch, Inner::token())
        .await
}

/// Punches a raw path to `peer` (not yet authenticated), within `limit`.
pub(crate) async fn punch_raw(
    inner: &Inner,
    peer: &PublicKey,
    proto: Proto,
    af: Af,
    limit: Duration,
) -> Result<crate::Pipe, String> {
    let signaller = inner
        .signaller
        .as_ref()
        .ok_or("no signalling broker is configured")?;
    let local = bind_addr(inner, af)?;
    let family = inner.family(af);
    match proto {
        Proto::Udp => {
            let socket = bind::udp_socket(local, None).map_err(|e| e.to_string())?;
            let cfg = udp::Config {
                stun: stun_of(inner, af),
                nat: family.nat,
                limit,
                pipe: PipeConfig::default(),
                ..udp::Config::default()
            };
            udp::punch(signaller, peer, socket, &cfg)
                .await
                .map_err(|e| e.to_string())
        }
        Proto::Tcp => {
            let port = PunchPort::bind(local, None).map_err(|e| e.to_string())?;
            let cfg = tcp::Config {
                stun: stun_of(inner, af),
                limit,
                pipe: raw_config(),
                ..tcp::Config::new(family.tcp())
            };
            tcp::connect(signaller, peer, port, &cfg)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

/// Answers a punch offer from `request.from`, authenticates the punched path as the
/// responder, and hands it to [`Node::accept`](super::Node::accept).
pub(crate) async fn answer(inner: &Inner, request: &DeliveredRequest) {
    let signaller = inner.signaller.as_ref().expect("started with signalling");
    let incoming = Incoming::Request(request.clone());
    let proto = if udp::is_offer(&incoming) {
        Proto::Udp
    } else {
        Proto::Tcp
    };
    // The family of the peer's candidates is not known here: punch from IPv4 when this
    // node has it.
    let af = if inner.listening_on(Af::V4).is_some() {
        Af::V4
    } else {
        Af::V6
    };
    let Ok(local) = bind_addr(inner, af) else {
        return;
    };
    let family = inner.family(af);
    let limit = inner.settings.limits.connect;
    let raw = match proto {
        Proto::Udp => {
            let Ok(socket) = bind::udp_socket(local, None) else {
                return;
            };
            let cfg = udp::Config {
                stun: stun_of(inner, af),
                nat: family.nat,
                limit,
                ..udp::Config::default()
            };
            udp::answer(signaller, request, socket, &cfg)
                .await
                .map_err(|e| e.to_string())
        }
        Proto::Tcp => {
            let Ok(port) = PunchPort::bind(local, None) else {
                return;
            };
            let cfg = tcp::Config {
                stun: stun_of(inner, af),
                limit,
                pipe: raw_config(),
                ..tcp::Config::new(family.tcp())
            };
            tcp::answer(signaller, request, port, &cfg)
                .await
                .map_err(|e| e.to_string())
        }
    };
    let peer = crate::identity::NodeId::from_key(&request.from);
    let raw = match raw {
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
