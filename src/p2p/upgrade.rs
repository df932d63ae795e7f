//! Relay to direct. A connect won by the relay keeps trying to punch in the background;
//! when a punch succeeds, the secure path moves onto the punched path (the path
//! layer's migration: proven by the session's own keys, in order, nothing lost or
//! repeated on TCP), the application's pipe carries on, and the relay is released.
//!
//! The connecting node first sends an upgrade request naming the relayed path's token;
//! the other node then takes the next punch from it as that path's new path instead of
//! a new arrival. Both nodes then call the migration with their end of the punched path.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::node::Inner;
use super::path::{self, Mover};
use super::punch;
use super::report::Strategy;
use super::request::{Answer, Request, Token};
use crate::identity::{NodeId, PublicKey};
use crate::{Af, Proto};

/// The most punches an upgrade tries.
const TRIES: u32 = 8;
/// The longest wait between two tries.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Starts trying to move the relayed path `token` with `peer` to a punched path: the
/// first try after the node's upgrade delay, then waits doubling up to a minute, at
/// most [`TRIES`]; `via` says the path's strategy once it has moved. Stops when the
/// path ends (`via` is dropped) or the node stops.
pub(crate) fn start(
    inner: &Arc<Inner>,
    peer: PublicKey,
    proto: Proto,
    af: Af,
    token: Token,
    mover: Mover,
    via: watch::Sender<Strategy>,
) {
    let node = inner.clone();
    inner.tasks.spawn(async move {
        let mut wait = node.settings.limits.upgrade_delay;
        for attempt in 1..=TRIES {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = via.closed() => return,
                () = node.stopping.cancelled() => return,
            }
            let tried = tokio::select! {
                r = once(&node, &peer, proto, af, token, &mover) => r,
                () = via.closed() => return,
                () = node.stopping.cancelled() => return,
            };
            match tried {
                Ok(()) => {
                    tracing::info!(peer = %NodeId::from_key(&peer), %proto, attempt, "relayed path moved to a punched one");
                    let _ = via.send(Strategy::Punch);
                    return;
                }
                Err(reason) => {
                    tracing::debug!(peer = %NodeId::from_key(&peer), %proto, attempt, %reason, "no upgrade yet")
                }
            }
            wait = (wait * 2).min(MAX_WAIT);
        }
    });
}

/// One try: the request, the punch, the migration.
async fn once(
    inner: &Inner,
    peer: &PublicKey,
    proto: Proto,
    af: Af,
    token: Token,
    mover: &Mover,
) -> Result<(), String> {
    let limit = inner.settings.limits.connect;
    inner
        .ask(peer, &Request::Upgrade { token, proto }, limit)
        .await?;
    let raw = punch::punch_raw(inner, punch::End::Offer(peer), proto, af, limit).await?;
    path::migrate(mover, raw, limit)
        .await
        .map_err(|e| e.to_string())
}

/// The other node's half: moves the path `mover` belongs to onto `raw`, the punched
/// path an upgrade request announced.
pub(crate) async fn moved(mover: &Mover, raw: crate::Pipe, limit: Duration, peer: &NodeId) {
    match path::migrate(mover, raw, limit).await {
        Ok(()) => tracing::info!(%peer, "relayed path moved to a punched one"),
        Err(e) => {
            tracing::info!(%peer, error = %e, "relayed path not moved; it stays on the relay")
        }
    }
}

/// Answers an upgrade request: accepts it when this node holds the relayed path with
/// that token from that peer, and takes the peer's next punch for it.
pub(crate) async fn answer(inner: &Inner, request: &crate::signal::DeliveredRequest, token: Token) {
    let signaller = inner.signaller.as_ref().expect("started with signalling");
    let answer = match inner.expect_upgrade(&request.from, &token) {
        true => Answer::Accepted { relayed: None },
        false => Answer::refused("no relayed path of yours with that token"),
    };
    if let Err(e) = signaller.respond(request, &answer.to_bytes()).await {
        tracing::debug!(error = %e, "an upgrade request not answered");
    }
}
