//! "Come to me": the peer is asked over signalling to connect to this node, at its own
//! addresses (reverse) or at ports mapped on its router (upnp). The path arrives at this
//! node's listener saying the request's token, and is handed to the connect waiting
//! for it.

use std::net::SocketAddr;

use super::direct::{dial, secs};
use super::node::Inner;
use super::path::SecurePath;
use super::report::Strategy;
use super::request::{Answer, Request};
use crate::identity::{NodeId, PublicKey};
use crate::signal::DeliveredRequest;
use crate::Proto;

/// Asks `peer` to connect to this node at `to` over `proto` (`strategy` is reverse or
/// upnp), and waits for the path, at most `limit`.
pub(crate) async fn connect(
    inner: &Inner,
    peer: &PublicKey,
    proto: Proto,
    strategy: Strategy,
    to: Vec<SocketAddr>,
    limit: std::time::Duration,
) -> Result<SecurePath, String> {
    inner.signalling()?;
    let token = Inner::token();
    let arrived = inner.expect(token);
    let request = Request::Come {
        token,
        proto,
        strategy,
        to,
    };
    let asked = async {
        inner.ask(peer, &request, limit).await?;
        arrived.await.map_err(|_| "the node stopped".to_string())
    };
    let result = tokio::time::timeout(limit, asked)
        .await
        .unwrap_or_else(|_| Err(format!("no path arrived within {}", secs(limit))));
    inner.forget(&token);
    result
}

/// Answers a come request from `request.from`: accepts it, dials the addresses it
/// names, and hands the path to [`Node::accept`](super::Node::accept).
pub(crate) async fn answer(inner: &Inner, request: &DeliveredRequest, parsed: Request) {
    let Request::Come {
        token,
        proto,
        strategy,
        to,
    } = parsed
    else {
        return;
    };
    let signaller = inner.signaller.as_ref().expect("started with signalling");
    let accepted = Answer::Accepted { relayed: None }.to_bytes();
    if let Err(e) = signaller.respond(request, &accepted).await {
        tracing::debug!(error = %e, "a come request not answered");
        return;
    }
    let from = NodeId::from_key(&request.from);
    let limit = inner.settings.limits.connect;
    let dialled = tokio::time::timeout(
        limit,
        dial(inner, &request.from, &to, proto, strategy, token),
    )
    .await;
    match dialled {
        Ok(Ok(path)) => inner.deliver(path, strategy, proto).await,
        Ok(Err(reason)) => {
            tracing::info!(peer = %from, %strategy, %reason, "could not come to the peer")
        }
        Err(_) => tracing::info!(peer = %from, %strategy, "could not come to the peer in time"),
    }
}
