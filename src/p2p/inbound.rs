//! What reaches a node: connections to its listeners (through the Daemon), and its
//! peers' signalling requests, each answered by the strategy it asks for.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::admit::{ticket, Admission};
use super::handshake::Expect;
use super::node::{raw_config, Inner};
use super::report::Strategy;
use super::request::{Answer, Request};
use super::{come, punch, relay, Error};
use crate::daemon::{self, Daemon};
use crate::identity::NodeId;
use crate::pipe::{Message, Pipe};
use crate::signal::{DeliveredRequest, Incoming};
use crate::Proto;

/// The listeners' handler, told the node once it exists.
pub(crate) struct Handler(Arc<OnceLock<Weak<Inner>>>);

impl Handler {
    /// From now on, connections are served by `inner`.
    pub(crate) fn serve(&self, inner: &Arc<Inner>) {
        let _ = self.0.set(Arc::downgrade(inner));
    }
}

/// Listens on every address in `ips`, TCP and UDP, on one `port` (0: one the system
/// picks, shared by all). Returns the handler, the daemon and the TCP listening
/// addresses (the UDP ones are the same).
pub(crate) async fn listen(
    ips: &[IpAddr],
    port: u16,
) -> Result<(Handler, Daemon, Vec<SocketAddr>), Error> {
    let cell = Arc::new(OnceLock::new());
    let daemon = Daemon::builder(Serve(cell.clone()))
        .config(raw_config())
        .listen_all(ips.iter().copied(), [port], [Proto::Tcp, Proto::Udp])
        .start()
        .await?;
    let listening: Vec<SocketAddr> = daemon
        .local_addrs()
        .iter()
        .filter(|(p, _)| *p == Proto::Tcp)
        .map(|(_, a)| *a)
        .collect();
    Ok((Handler(cell), daemon, listening))
}

/// The Daemon's handler: authenticates every connection from `on_connect` and serves
/// it until it ends.
struct Serve(Arc<OnceLock<Weak<Inner>>>);

impl daemon::Handler for Serve {
    async fn on_message(&self, _msg: Message, _reply: Pipe) -> Result<(), String> {
        // Never reached: `on_connect` holds the connection to its end.
        Ok(())
    }

    async fn on_connect(&self, pipe: &Pipe) {
        match self.0.get().and_then(Weak::upgrade) {
            Some(inner) => arrived(inner, pipe.clone()).await,
            None => pipe.close().await,
        }
    }
}

/// A connection to a listener: the path handshake (any node may connect), then the
/// path goes to the connect that asked for it (reverse, or to a mapped port) or to
/// [`Node::accept`](super::Node::accept) (direct, or to a mapped port unasked). Held
/// until it ends, or the node stops.
async fn arrived(inner: Arc<Inner>, raw: Pipe) {
    let from = raw.peer_addr();
    let proto = raw.proto();
    let path = match inner.respond(raw.clone(), Expect::Any).await {
        Ok(path) => path,
        Err(reason) => {
            tracing::debug!(?from, %reason, "inbound path refused");
            raw.close().await;
            return;
        }
    };
    let strategy = Strategy::from_code(path.hello.strategy);
    match strategy {
        Some(Strategy::Direct) => inner.deliver(path, Strategy::Direct, proto).await,
        Some(s @ (Strategy::Reverse | Strategy::Upnp)) => match inner.claim(path) {
            None => {}
            Some(path) if s == Strategy::Upnp => inner.deliver(path, s, proto).await,
            Some(path) => {
                tracing::debug!(?from, peer = %path.peer_id(), "a reverse path no connect asked for");
                raw.close().await;
                return;
            }
        },
        _ => {
            tracing::debug!(?from, "a path by another strategy at a listener");
            raw.close().await;
            return;
        }
    }
    // Watched, not read: the path reads the raw pipe.
    let mut end = raw.end_watch();
    tokio::select! {
        _ = async { end.wait_for(Option::is_some).await.map(drop) } => {}
        () = inner.stopping.cancelled() => raw.close().await,
    }
}

/// Reads the node's signalling and answers each request by the strategy it asks for,
/// in a task of its own, until the node stops; a request over the bounds of
/// [`admit`](super::admit) is dropped.
pub(crate) async fn signals(inner: Arc<Inner>) {
    let signaller = inner.signaller.as_ref().expect("started with signalling");
    let admission = Arc::new(Mutex::new(Admission::default()));
    loop {
        let incoming = tokio::select! {
            i = signaller.recv() => i,
            _ = inner.stopping.cancelled() => None,
        };
        let Some(incoming) = incoming else { break };
        let Incoming::Request(request) = incoming else {
            tracing::debug!(from = %incoming.node_id(), "a one-way signal nobody waits for");
            continue;
        };
        let Some(ticket) = ticket(&admission, &request.from) else {
            tracing::debug!(from = %NodeId::from_key(&request.from), "a signalling request dropped: too many being answered");
            continue;
        };
        let node = inner.clone();
        let stopping = inner.stopping.clone();
        inner.tasks.spawn(async move {
            let _ticket = ticket;
            tokio::select! {
                () = answer(node, request) => {}
                () = stopping.cancelled() => {}
            }
        });
    }
}

/// Answers one request.
async fn answer(inner: Arc<Inner>, request: DeliveredRequest) {
    if punch::is_offer(&request) {
        punch::answer(&inner, &request).await;
        return;
    }
    if !Request::is_request(&request.payload) {
        tracing::debug!(from = %NodeId::from_key(&request.from), "an unknown signalling request");
        return;
    }
    let signaller = inner.signaller.as_ref().expect("started with signalling");
    let parsed = match Request::parse(&request.payload) {
        // An upgrade names a token seen before: its relayed path's.
        Ok(Request::Upgrade { token, .. }) => {
            return super::upgrade::answer(&inner, &request, token).await;
        }
        Ok(r) if inner.fresh(r.token()) => r,
        Ok(_) => {
            tracing::info!(from = %NodeId::from_key(&request.from), "a connect request seen before, refused");
            let refusal = Answer::refused("a connect request seen before (a replay)");
            let _ = signaller.respond(&request, &refusal.to_bytes()).await;
            return;
        }
        Err(e) => {
            tracing::debug!(from = %NodeId::from_key(&request.from), error = %e, "a malformed connect request");
            return;
        }
    };
    match parsed {
        Request::Come { .. } => come::answer(&inner, &request, parsed).await,
        Request::Relay { .. } => relay::answer(&inner, &request, parsed).await,
        Request::Upgrade { .. } => {}
    }
}
