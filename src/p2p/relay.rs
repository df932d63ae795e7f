//! Through a TURN relay. Over UDP both nodes allocate (each reaching the server over UDP,
//! or over TCP when its NAT blocks UDP) and send to each other's relayed address; over
//! TCP the answering node allocates a TCP relay (RFC 6062), lets the asking node's
//! public address in, and the asking node connects to the relayed address. Each
//! allocation lives as long as its path, and is deleted when the path ends or the node
//! stops.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::direct::secs;
use super::handshake::Expect;
use super::node::{raw_config, Inner};
use super::path::SecurePath;
use super::report::Strategy;
use super::request::{Answer, Request};
use crate::identity::{NodeId, PublicKey};
use crate::nat::NatType;
use crate::pipe::Pipe;
use crate::signal::DeliveredRequest;
use crate::traverse::turn::{transport_for, Relay, Transport, TurnServer};
use crate::{Af, PipeConfig, Proto};

/// The reason given when no TURN server is configured.
pub(crate) const NO_RELAY: &str = "no relay is configured";

/// How this node reaches the TURN server: over TCP if its NAT blocks UDP.
fn transport(inner: &Inner) -> Transport {
    transport_for(inner.v4.nat.nat_type.unwrap_or(NatType::Open))
}

/// Relays a path to `peer` over `proto` and authenticates it as the initiator; all
/// within `limit`.
pub(crate) async fn connect(
    inner: &Arc<Inner>,
    peer: &PublicKey,
    proto: Proto,
    limit: Duration,
) -> Result<SecurePath, String> {
    let server = inner.settings.turn.first().ok_or(NO_RELAY)?;
    inner.signalling()?;
    let token = Inner::token();
    let work = async {
        match proto {
            Proto::Udp => {
                let relay = allocate(inner, server, false, limit).await?;
                let request = Request::Relay {
                    token,
                    proto,
                    relayed: Some(relay.relayed_addr()),
                    public: Vec::new(),
                };
                let theirs = ask(inner, peer, &request, limit).await?;
                let raw = relay.pipe(theirs).await.map_err(|e| e.to_string())?;
                let path = inner
                    .initiate(raw.clone(), peer, Strategy::Relay, token)
                    .await?;
                keep(inner, relay, raw, None);
                Ok(path)
            }
            Proto::Tcp => {
                let public = public_addrs(inner, server, limit).await?;
                let request = Request::Relay {
                    token,
                    proto,
                    relayed: None,
                    public,
                };
                let theirs = ask(inner, peer, &request, limit).await?;
                let raw =
                    Pipe::connect_with(Proto::Tcp, theirs, &raw_config().connect_timeout(limit))
                        .await
                        .map_err(|e| e.to_string())?;
                inner.initiate(raw, peer, Strategy::Relay, token).await
            }
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(format!("no relayed path within {}", secs(limit))))
}

/// Sends a relay request and returns the peer's relayed address.
async fn ask(
    inner: &Inner,
    peer: &PublicKey,
    request: &Request,
    limit: Duration,
) -> Result<SocketAddr, String> {
    inner
        .ask(peer, request, limit)
        .await?
        .ok_or_else(|| "the peer accepted without a relayed address".into())
}

/// Allocates on `server`: a UDP relay reached by this node's transport, or a TCP relay
/// (RFC 6062, over TCP) whose pipes carry path frames.
async fn allocate(
    inner: &Inner,
    server: &TurnServer,
    tcp_relay: bool,
    limit: Duration,
) -> Result<Relay, String> {
    let (transport, cfg) = match tcp_relay {
        true => (Transport::Tcp, raw_config()),
        false => (transport(inner), PipeConfig::default()),
    };
    Relay::allocate_with(server, transport, tcp_relay, limit, &cfg)
        .await
        .map_err(|e| format!("cannot allocate a relay: {e}"))
}

/// The public IPv4 addresses this node connects from: what STUN saw, or else what the
/// TURN server sees over TCP.
async fn public_addrs(
    inner: &Inner,
    server: &TurnServer,
    limit: Duration,
) -> Result<Vec<SocketAddr>, String> {
    if let Some(ext) = inner.v4.external {
        return Ok(vec![SocketAddr::new(ext.ip(), 0)]);
    }
    let local = inner
        .listening_on(Af::V4)
        .map(|a| SocketAddr::new(a.ip(), 0));
    let answer = crate::stun::tcp::binding(server.tcp, local, None, limit)
        .await
        .map_err(|e| format!("this node's public address is unknown: {e}"))?;
    let mapped = answer
        .response
        .mapped
        .ok_or("this node's public address is unknown: the server did not say it")?;
    Ok(vec![SocketAddr::new(mapped.ip(), 0)])
}

/// Holds `relay` while `raw` lives; deletes the allocation when it ends (it also ends
/// when the path moves off the relay) or the node stops. `answered` is the token of a
/// relayed path this node answered, forgotten then.
fn keep(inner: &Arc<Inner>, relay: Relay, raw: Pipe, answered: Option<super::request::Token>) {
    let node = inner.clone();
    inner.tasks.spawn(async move {
        // Watched, not read: the path reads the raw pipe.
        let mut end = raw.end_watch();
        tokio::select! {
            _ = async { end.wait_for(Option::is_some).await.map(drop) } => {}
            () = node.stopping.cancelled() => {}
        }
        raw.close().await;
        if let Some(token) = answered {
            node.relayed_ended(&token);
        }
        match relay.close().await {
            Ok(()) => {
                node.relays_closed.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => tracing::info!(error = %e, "a relay allocation was not deleted; it expires"),
        }
    });
}

/// Answers a relay request from `request.from`: allocates, lets the peer in, answers
/// with the relayed address, and authenticates the path as the responder.
pub(crate) async fn answer(inner: &Arc<Inner>, request: &DeliveredRequest, parsed: Request) {
    let Request::Relay {
        token,
        proto,
        relayed,
        public,
    } = parsed
    else {
        return;
    };
    let signaller = inner.signaller.as_ref().expect("started with signalling");
    let peer = NodeId::from_key(&request.from);
    let (relay, udp_pipe) = match prepare(inner, proto, relayed, &public).await {
        Ok(x) => x,
        Err(reason) => {
            tracing::info!(%peer, %reason, "relay request refused");
            let refusal = Answer::refused(reason);
            let _ = signaller.respond(request, &refusal.to_bytes()).await;
            return;
        }
    };
    let accepted = Answer::Accepted {
        relayed: Some(relay.relayed_addr()),
    };
    if signaller
        .respond(request, &accepted.to_bytes())
        .await
        .is_err()
    {
        return;
    }
    let raw = match udp_pipe {
        Some(raw) => raw,
        None => match relay.accept_tcp().await {
            Ok((raw, _)) => raw,
            Err(e) => {
                tracing::info!(%peer, error = %e, "the peer did not connect to the relay");
                return;
            }
        },
    };
    match inner.respond(raw.clone(), Expect::Key(request.from)).await {
        Ok(mut path) => {
            if let Some(mover) = path.mover.take() {
                inner.relayed(token, request.from, mover);
            }
            keep(inner, relay, raw, Some(token));
            inner.deliver(path, Strategy::Relay, proto).await;
        }
        Err(reason) => tracing::info!(%peer, %reason, "relayed path refused"),
    }
}

/// The answering side's allocation: over UDP, with a channel to the asker's relayed
/// address (its pipe); over TCP, with the asker's public addresses let in.
async fn prepare(
    inner: &Inner,
    proto: Proto,
    relayed: Option<SocketAddr>,
    public: &[SocketAddr],
) -> Result<(Relay, Option<Pipe>), String> {
    let server = inner
        .settings
        .turn
        .first()
        .ok_or_else(|| format!("the peer has {NO_RELAY}"))?;
    let limit = inner.settings.limits.turn;
    let relay = allocate(inner, server, proto == Proto::Tcp, limit).await?;
    let udp_pipe = match (proto, relayed) {
        (Proto::Udp, Some(theirs)) => Some(relay.pipe(theirs).await.map_err(|e| e.to_string())?),
        (Proto::Udp, None) => return Err("a udp relay request without a relayed address".into()),
        (Proto::Tcp, _) => {
            for p in public {
                relay.permit(*p).await.map_err(|e| e.to_string())?;
            }
            None
        }
    };
    Ok((relay, udp_pipe))
}
