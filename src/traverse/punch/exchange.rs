//! The rendezvous over signalling, as both punch drivers ([`udp`](super::udp) and
//! [`tcp`](super::tcp)) run it: the offer as a request, the answer as its response, the
//! ready one way; each side ends with the [`Agreement`], or with the refusal at once.

use std::time::Instant;

use tokio::time::timeout_at;

use super::rendezvous::{
    Agreement, Candidates, Initiator, Message, Nonce, Offer, Responder, NONCE_LEN,
};
use super::tcp::TcpNatSummary;
use super::{Error, NatSummary};
use crate::identity::{NodeId, PublicKey};
use crate::signal::{DeliveredRequest, Incoming, Signaller, Watch};
use crate::Proto;

/// What this side says of itself in an answer.
pub(crate) struct Mine {
    /// Its NAT.
    pub nat: NatSummary,
    /// What its NAT does to TCP (required to answer a TCP offer).
    pub tcp: Option<TcpNatSummary>,
    /// Its candidates.
    pub candidates: Candidates,
}

/// Whether a signalling message is a punch offer for `proto`.
pub(crate) fn is_offer(incoming: &Incoming, proto: Proto) -> bool {
    matches!(incoming, Incoming::Request(r) if offers(&r.payload, proto))
}

/// Whether `payload` is a punch offer for `proto`.
pub(crate) fn offers(payload: &[u8], proto: Proto) -> bool {
    matches!(Message::parse(payload), Ok(Message::Offer(o)) if o.proto == proto)
}

/// A fresh rendezvous nonce.
pub(crate) fn nonce() -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).expect("the system random source");
    n
}

/// The initiator's side: sends `offer` to `peer`, takes the answer (the round trip is
/// measured here), and sends the ready, all by `deadline`; `timed_out` is the error when
/// it passes. Where the theory refuses, no ready is sent.
pub(crate) async fn initiate(
    signaller: &Signaller,
    peer: &PublicKey,
    offer: Offer,
    deadline: tokio::time::Instant,
    timed_out: &(dyn Fn() -> Error + Sync),
) -> Result<Agreement, Error> {
    let id = NodeId::from_key(peer);
    let initiator = Initiator::new(id, offer, Instant::now());
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let answer = signaller
        .request(peer, &initiator.offer().to_bytes(), left)
        .await
        .map_err(|source| match source {
            crate::signal::Error::TimedOut { .. } => timed_out(),
            source => Error::Signal { peer: id, source },
        })?;
    let (agreement, ready) = initiator.on_answer(&answer, Instant::now())?;
    timeout_at(deadline, signaller.send(peer, &ready.to_bytes()))
        .await
        .map_err(|_| timed_out())?
        .map_err(|source| Error::Signal { peer: id, source })?;
    Ok(agreement)
}

/// The responder's side: answers `offer` with `mine` (even when the theory refuses, so
/// that the initiator learns at once, and then fails with the refusal), and waits for
/// the ready, all by `deadline`.
///
/// It watches `offer`'s sender ([`Signaller::watch`]) from before the answer goes out,
/// so the ready reaches it however the node reads its other messages.
pub(crate) async fn respond(
    signaller: &Signaller,
    offer: &DeliveredRequest,
    mine: Mine,
    deadline: tokio::time::Instant,
    timed_out: &(dyn Fn() -> Error + Sync),
) -> Result<Agreement, Error> {
    let id = NodeId::from_key(&offer.from);
    let responder = Responder::new(
        id,
        &offer.payload,
        nonce(),
        mine.nat,
        mine.tcp,
        mine.candidates,
    )?;
    let mut watch = signaller.watch(&offer.from);
    timeout_at(
        deadline,
        signaller.respond(offer, &responder.answer().to_bytes()),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(|source| Error::Signal { peer: id, source })?;
    if let Some(refused) = responder.refusal() {
        return Err(refused);
    }
    wait_ready(&mut watch, &responder, deadline)
        .await
        .ok_or_else(timed_out)?
}

/// Reads the sender's messages until its ready for this rendezvous arrives; others
/// (another rendezvous's ready) are passed over.
async fn wait_ready(
    watch: &mut Watch,
    responder: &Responder,
    deadline: tokio::time::Instant,
) -> Option<Result<Agreement, Error>> {
    loop {
        let payload = timeout_at(deadline, watch.recv()).await.ok()??;
        match responder.on_ready(&payload, Instant::now()) {
            Err(Error::Malformed(_) | Error::WrongNonce { .. }) => {}
            done => return Some(done),
        }
    }
}
