//! The mesh's I/O: the listener on the Daemon, outbound pipes, the connection table,
//! the session tasks and the event dispatcher. The protocol is in `wire` and `session`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ed25519_dalek::VerifyingKey;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admit::{admit, Admit};
use super::session::{self, Handshake, Incoming, Local, PeerHello, Reject, Step};
use super::wire::{self, FrameCodec, RefuseCode};
use super::{Direction, DisconnectReason, Disconnected, Error, Event, MeshMessage, Outgoing, Peer};
use crate::daemon::{self, Daemon};
use crate::identity::{Identity, NodeId};
use crate::pipe::{Framing, Message, Pipe, PipeConfig, Proto};

type Handler<T> = Arc<dyn Fn(Mesh, T) -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Default, Clone)]
struct Handlers {
    inbound_connected: Option<Handler<Peer>>,
    outbound_connected: Option<Handler<Peer>>,
    inbound_disconnected: Option<Handler<Disconnected>>,
    outbound_disconnected: Option<Handler<Disconnected>>,
    message: Option<Handler<MeshMessage>>,
    stopping: Option<Handler<()>>,
}

fn boxed<T, F, Fut>(f: F) -> Handler<T>
where
    F: Fn(Mesh, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |m, t| f(m, t).boxed())
}

/// The builder's handler setters: one per event kind, all alike.
macro_rules! handler_setters {
    ($($(#[$doc:meta])* $name:ident, $field:ident, $arg:ty;)*) => {$(
        $(#[$doc])*
        pub fn $name<F, Fut>(mut self, f: F) -> Self
        where
            F: Fn(Mesh, $arg) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = ()> + Send + 'static,
        {
            self.handlers.$field = Some(boxed(f));
            self
        }
    )*};
}

/// Reconnection delays for [`Mesh::keep_connected`]: doubling from `initial` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

/// Sets up a [`Mesh`].
pub struct MeshBuilder {
    id: String,
    listen: Vec<SocketAddr>,
    cfg: PipeConfig,
    max_inbound: usize,
    max_outbound: usize,
    max_pending: usize,
    handshake_timeout: Duration,
    send_timeout: Duration,
    keepalive: Option<Duration>,
    max_message: usize,
    max_decompressed: usize,
    event_capacity: usize,
    key: Option<Identity>,
    trusted: HashMap<String, VerifyingKey>,
    handlers: Handlers,
}

impl MeshBuilder {
    /// Listens on `addr` (port 0 picks one). Any number of addresses; none makes an
    /// outbound-only node.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// The pipe config for outbound connections: bind address, device, connect timeout.
    /// Its framing and frame limit are the mesh's own.
    pub fn config(mut self, cfg: PipeConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Most inbound connections at once (default 64). Further peers are refused after
    /// their HELLO.
    pub fn max_inbound(mut self, n: usize) -> Self {
        self.max_inbound = n;
        self
    }

    /// Most outbound connections at once, counting those being opened (default 64).
    pub fn max_outbound(mut self, n: usize) -> Self {
        self.max_outbound = n;
        self
    }

    /// Most inbound connections still in their handshake (default 64); further ones are
    /// closed at once.
    pub fn max_pending(mut self, n: usize) -> Self {
        self.max_pending = n.max(1);
        self
    }

    /// How long a handshake may take (default 5 s). A peer that has not finished by then
    /// is dropped.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// How long one send may wait for a slow peer (default 10 s); a peer that does not
    /// take the message in time is disconnected.
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.send_timeout = d;
        self
    }

    /// Sends a PING after `interval` of silence, and drops a peer silent for three
    /// intervals (default 15 s). `None` turns keepalives off.
    pub fn keepalive(mut self, interval: Option<Duration>) -> Self {
        self.keepalive = interval;
        self
    }

    /// The largest message on the wire, compressed or not (default 4 MiB). Frames that
    /// claim more end the connection before anything is allocated.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes.min(u32::MAX as usize - wire::DATA_OVERHEAD);
        self
    }

    /// The largest size a compressed message may inflate to (default 4 MiB). Larger
    /// ones are dropped and counted.
    pub fn max_decompressed(mut self, bytes: usize) -> Self {
        self.max_decompressed = bytes;
        self
    }

    /// Events queued for the [`Events`] stream and the handlers (default 1024). When
    /// it is full, reading from peers waits: nothing is dropped, so read the stream, or
    /// drop it if you use only handlers.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n.max(1);
        self
    }

    /// Signs every message with `identity`'s key and requires peers to sign: their keys
    /// are bound to their ids at the handshake, and messages that do not verify are
    /// dropped. The mesh id stays the one given to [`Mesh::builder`];
    /// [`Mesh::with_identity`] makes it the identity's node id as well.
    pub fn identity(mut self, identity: &Identity) -> Self {
        self.key = Some(identity.clone());
        self
    }

    /// Binds `id` to `key` in advance: a peer claiming `id` with another key is refused.
    /// Without it, the first key an id proves is bound to it for the mesh's life.
    pub fn trust(mut self, id: impl Into<String>, key: VerifyingKey) -> Self {
        self.trusted.insert(id.into(), key);
        self
    }

    handler_setters! {
        /// Called when a peer connects in.
        on_inbound_connected, inbound_connected, Peer;
        /// Called when this node connects out.
        on_outbound_connected, outbound_connected, Peer;
        /// Called when an inbound connection ends.
        on_inbound_disconnected, inbound_disconnected, Disconnected;
        /// Called when an outbound connection ends.
        on_outbound_disconnected, outbound_disconnected, Disconnected;
        /// Called for every message.
        on_message, message, MeshMessage;
    }

    /// Called once when the mesh starts stopping.
    pub fn on_stopping<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Mesh) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let f = Arc::new(f);
        self.handlers.stopping = Some(Arc::new(move |m, ()| f(m).boxed()));
        self
    }

    /// Starts the mesh: binds the listeners, and returns the mesh and its event stream.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is left running if the future is dropped.
    pub async fn start(self) -> Result<(Mesh, Events), Error> {
        let id = wire::MeshId::new(self.id.clone()).map_err(|_| Error::BadId(self.id))?;
        let max_frame = self.max_message + wire::DATA_OVERHEAD;
        let cfg = self
            .cfg
            .framing(Framing::custom(move || FrameCodec::new(max_frame)))
            .max_frame(max_frame + wire::LEN_PREFIX);
        let (ev_tx, ev_rx) = mpsc::channel(self.event_capacity);
        let (user_tx, user_rx) = mpsc::channel(self.event_capacity);
        let inner = Arc::new(Inner {
            id,
            key: self.key,
            listen_port: AtomicU64::new(0),
            cfg,
            max_outbound: self.max_outbound,
            inbound: Arc::new(Semaphore::new(self.max_inbound)),
            outbound: Arc::new(Semaphore::new(self.max_outbound)),
            handshake_timeout: self.handshake_timeout,
            send_timeout: self.send_timeout,
            keepalive: self.keepalive,
            max_message: self.max_message,
            max_decompressed: self.max_decompressed,
            trusted: self.trusted,
            known: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            events: Mutex::new(Some(ev_tx)),
            counters: Counters::default(),
            serial: AtomicU64::new(0),
            stopping: CancellationToken::new(),
            hard: CancellationToken::new(),
            tracker: TaskTracker::new(),
            daemon: Mutex::new(None),
            local_addrs: Mutex::new(Vec::new()),
            stopped: tokio::sync::OnceCell::new(),
            dispatcher: Mutex::new(None),
        });
        let guard = Arc::new(Guard(inner.clone()));
        if !self.listen.is_empty() {
            let mut b = Daemon::builder(Inbound(Arc::downgrade(&inner)))
                .config(inner.cfg.clone())
                .max_connections(self.max_inbound + self.max_pending);
            for a in &self.listen {
                b = b.listen(Proto::Tcp, *a);
            }
            let d = b.start().await?;
            let addrs: Vec<SocketAddr> = d.local_addrs().iter().map(|(_, a)| *a).collect();
            // The port peers are told to reach this node on.
            let port = addrs.first().map_or(0, |a| a.port());
            inner.listen_port.store(u64::from(port), Ordering::Relaxed);
            *inner.local_addrs.lock().unwrap() = addrs;
            *inner.daemon.lock().unwrap() = Some(d);
        }
        let dispatcher = tokio::spawn(dispatch(
            ev_rx,
            user_tx,
            self.handlers,
            Arc::downgrade(&inner),
            Arc::downgrade(&guard),
        ));
        *inner.dispatcher.lock().unwrap() = Some(dispatcher);
        Ok((Mesh { guard }, Events { rx: user_rx }))
    }
}

#[derive(Default)]
struct Counters {
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    bad_signatures: AtomicU64,
    replays: AtomicU64,
    too_large: AtomicU64,
    bad_compression: AtomicU64,
    protocol_errors: AtomicU64,
    handshake_timeouts: AtomicU64,
    handshake_failures: AtomicU64,
    refused: AtomicU64,
    handler_panics: AtomicU64,
}

/// Counters of a running mesh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Inbound connections now.
    pub inbound: usize,
    /// Outbound connections now.
    pub outbound: usize,
    /// Messages received and delivered.
    pub messages_in: u64,
    /// Messages sent (one per peer of a broadcast).
    pub messages_out: u64,
    /// Messages dropped because their signature did not verify, or was missing.
    pub bad_signatures: u64,
    /// Signed messages dropped as replays.
    pub replays: u64,
    /// Compressed messages dropped because they inflate past the bound.
    pub too_large: u64,
    /// Compressed messages dropped because they are not valid zlib.
    pub bad_compression: u64,
    /// Connections ended by a malformed frame.
    pub protocol_errors: u64,
    /// Handshakes that did not finish in time.
    pub handshake_timeouts: u64,
    /// Handshakes that failed otherwise (bad frames, bad keys, refusals either way).
    pub handshake_failures: u64,
    /// Peers this node turned away after their handshake (limits, duplicates, keys).
    pub refused: u64,
    /// Handler calls that panicked.
    pub handler_panics: u64,
}

/// What [`Mesh::broadcast`] did.
#[derive(Debug, Default)]
pub struct Broadcast {
    /// The peers the message was sent to.
    pub sent: Vec<Arc<str>>,
    /// The peers it could not be sent to, and why; they are disconnected.
    pub failed: Vec<(Arc<str>, Error)>,
}

/// How [`Mesh::stop`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopReport {
    /// Connections closed.
    pub closed: usize,
    /// Whether every task, handler and the event stream finished within the deadline.
    pub clean: bool,
}

struct Conn {
    serial: u64,
    peer: Peer,
    pipe: Pipe,
    tx: Arc<tokio::sync::Mutex<session::Sender>>,
    /// The reason set by whoever ends the connection from this side.
    reason: Arc<Mutex<Option<DisconnectReason>>>,
    ended: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

struct Inner {
    id: wire::MeshId,
    key: Option<Identity>,
    listen_port: AtomicU64,
    cfg: PipeConfig,
    max_outbound: usize,
    inbound: Arc<Semaphore>,
    outbound: Arc<Semaphore>,
    handshake_timeout: Duration,
    send_timeout: Duration,
    keepalive: Option<Duration>,
    max_message: usize,
    max_decompressed: usize,
    trusted: HashMap<String, VerifyingKey>,
    /// Keys bound to ids by a handshake.
    known: Mutex<HashMap<String, VerifyingKey>>,
    conns: Mutex<HashMap<Arc<str>, Conn>>,
    /// Taken at the end of a stop, which ends the event stream.
    events: Mutex<Option<mpsc::Sender<Event>>>,
    counters: Counters,
    serial: AtomicU64,
    stopping: CancellationToken,
    hard: CancellationToken,
    tracker: TaskTracker,
    daemon: Mutex<Option<Daemon>>,
    local_addrs: Mutex<Vec<SocketAddr>>,
    stopped: tokio::sync::OnceCell<StopReport>,
    dispatcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Stops the mesh at once when the last [`Mesh`] handle goes.
struct Guard(Arc<Inner>);

impl Drop for Guard {
    fn drop(&mut self) {
        let i = &self.0;
        i.stopping.cancel();
        i.hard.cancel();
        // Breaks the cycle daemon -> handler -> inner, and stops the daemon's tasks.
        drop(i.daemon.lock().unwrap().take());
        i.events.lock().unwrap().take();
        for (_, c) in i.conns.lock().unwrap().drain() {
            c.ended.cancel();
        }
    }
}

/// A running mesh node. Clones share it; when the last clone is dropped the node stops
/// at once (use [`Mesh::stop`] to say goodbye to peers first).
#[derive(Clone)]
pub struct Mesh {
    guard: Arc<Guard>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("id", &self.inner().id.as_str())
            .finish_non_exhaustive()
    }
}

/// The mesh's events, in order. Ends after [`Event::Stopping`] and the disconnections
/// that follow it.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event, or `None` once the mesh has stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures::Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

impl Mesh {
    fn inner(&self) -> &Arc<Inner> {
        &self.guard.0
    }

    /// Starts setting up a signing node whose mesh id is `identity`'s node id (its text)
    /// and whose key is `identity`'s: see [`MeshBuilder::identity`].
    pub fn with_identity(identity: &Identity) -> MeshBuilder {
        Mesh::builder(identity.node_id().to_string()).identity(identity)
    }

    /// Starts setting up a node with id `id`: 1 to 64 bytes of UTF-8 without whitespace
    /// or control characters. The node does not sign unless given an identity
    /// ([`MeshBuilder::identity`]).
    pub fn builder(id: impl Into<String>) -> MeshBuilder {
        MeshBuilder {
            id: id.into(),
            listen: Vec::new(),
            cfg: PipeConfig::default(),
            max_inbound: 64,
            max_outbound: 64,
            max_pending: 64,
            handshake_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
            keepalive: Some(Duration::from_secs(15)),
            max_message: 4 << 20,
            max_decompressed: 4 << 20,
            event_capacity: 1024,
            key: None,
            trusted: HashMap::new(),
            handlers: Handlers::default(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.inner().id
    }

    /// The addresses the node listens on.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner().local_addrs.lock().unwrap().clone()
    }

    /// The connected peers.
    pub fn peers(&self) -> Vec<Peer> {
        let conns = self.inner().conns.lock().unwrap();
        let mut v: Vec<Peer> = conns.values().map(|c| c.peer.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The connected peer with this id.
    pub fn peer(&self, id: &str) -> Option<Peer> {
        self.inner()
            .conns
            .lock()
            .unwrap()
            .get(id)
            .map(|c| c.peer.clone())
    }

    /// Counters.
    pub fn stats(&self) -> MeshStats {
        let i = self.inner();
        let c = &i.counters;
        let (inbound, outbound) = {
            let conns = i.conns.lock().unwrap();
            let inb = conns
                .values()
                .filter(|c| c.peer.direction == Direction::Inbound)
                .count();
            (inb, conns.len() - inb)
        };
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MeshStats {
            inbound,
            outbound,
            messages_in: l(&c.messages_in),
            messages_out: l(&c.messages_out),
            bad_signatures: l(&c.bad_signatures),
            replays: l(&c.replays),
            too_large: l(&c.too_large),
            bad_compression: l(&c.bad_compression),
            protocol_errors: l(&c.protocol_errors),
            handshake_timeouts: l(&c.handshake_timeouts),
            handshake_failures: l(&c.handshake_failures),
            refused: l(&c.refused),
            handler_panics: l(&c.handler_panics),
        }
    }

    /// Connects to a node at `addr` and completes the handshake. Returns the peer once
    /// [`Event::OutboundConnected`] is queued.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. Dropped during the handshake, the connection is closed and never
    /// reported; dropped after it, the connection stays up and its events come as usual.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Peer, Error> {
        let i = self.inner();
        if i.stopping.is_cancelled() {
            return Err(Error::Stopping);
        }
        let permit = i
            .outbound
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::OutboundLimit(i.max_outbound))?;
        let pipe = Pipe::connect_with(Proto::Tcp, addr, &i.cfg)
            .await
            .map_err(|source| Error::Connect { addr, source })?;
        let (hs, hello) = Handshake::initiator(&i.local(), nonce());
        let (hs, peer) = i.handshake(&pipe, addr, hs, Some(hello)).await?;
        let (session, _) = hs.accept(i.max_decompressed);
        match i.register(
            &peer,
            Direction::Outbound,
            addr,
            pipe.clone(),
            session,
            Some(permit),
        ) {
            Ok(Registered { conn, rx, events }) => {
                let peer = conn.peer.clone();
                // The session task owns the connection from here, so dropping this
                // future cannot orphan it. `connect` returns once the event is queued:
                // the acceptor queued its own before it sent the AUTH this side has
                // read, so both sides' events are in.
                let (queued_tx, queued) = tokio::sync::oneshot::channel();
                let me = i.clone();
                i.tracker.spawn(async move {
                    let ev = Event::OutboundConnected(conn.peer.clone());
                    me.emit(&events, ev).await;
                    let _ = queued_tx.send(());
                    me.run_session(conn, rx, events).await
                });
                let _ = queued.await;
                Ok(peer)
            }
            Err(code) => {
                i.turn_away(&pipe, code).await;
                Err(Error::NotTaken {
                    peer: peer.id,
                    code,
                })
            }
        }
    }

    /// Keeps `tunnel` until it ends, until `done` fires (the mesh connection it carries
    /// ended), or until the mesh stops; in the last two cases it is closed.
    pub(super) fn hold(&self, tunnel: crate::p2p::Tunnel, done: Option<CancellationToken>) {
        let stopping = self.inner().stopping.clone();
        let done = done.unwrap_or_default();
        self.inner().tracker.spawn(async move {
            tokio::select! {
                _ = tunnel.closed() => {}
                () = stopping.cancelled() => tunnel.close(),
                () = done.cancelled() => tunnel.close(),
            }
        });
    }

    /// The token that fires when the connection to `id` ends, if there is one.
    pub(super) fn ended_token(&self, id: &str) -> Option<CancellationToken> {
        let conns = self.inner().conns.lock().unwrap();
        conns.get(id).map(|c| c.ended.clone())
    }

    /// Keeps a connection to `addr` open: connects now, and again after it drops or
    /// fails, with `backoff` between tries, until the mesh stops. The task ends early if
    /// `addr` turns out to be this node.
    pub fn keep_connected(&self, addr: SocketAddr, backoff: Backoff) {
        let weak = Arc::downgrade(&self.guard);
        let inner = self.inner().clone();
        let stopping = inner.stopping.clone();
        inner.tracker.spawn(async move {
            let mut delay = backoff.initial;
            loop {
                let Some(guard) = weak.upgrade() else { return };
                let mesh = Mesh { guard };
                let ended = match mesh.connect(addr).await {
                    Ok(p) => {
                        delay = backoff.initial;
                        mesh.inner()
                            .conns
                            .lock()
                            .unwrap()
                            .get(&*p.id)
                            .map(|c| c.ended.clone())
                    }
                    Err(Error::Handshake {
                        source:
                            session::HandshakeError::SelfConnection
                            | session::HandshakeError::Refused {
                                code: RefuseCode::SelfConnection,
                                ..
                            },
                        ..
                    }) => return,
                    Err(Error::Stopping) => return,
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "mesh reconnect failed");
                        None
                    }
                };
                drop(mesh);
                if let Some(ended) = ended {
                    tokio::select! {
                        _ = stopping.cancelled() => return,
                        _ = ended.cancelled() => {}
                    }
                }
                tokio::select! {
                    _ = stopping.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(backoff.max);
            }
        });
    }

    /// Sends one message to the peer `id`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a send dropped while its frame is being written may leave part
    /// of it on the wire, so the connection is then reset (and ends with
    /// [`DisconnectReason::Error`]). Dropped before that, nothing is sent. Sends are
    /// already bounded by [`MeshBuilder::send_timeout`].
    pub async fn send_to(&self, id: &str, msg: impl Into<Outgoing>) -> Result<(), Error> {
        let msg = msg.into();
        self.inner().check(&msg)?;
        let target = self.inner().target(id)?;
        self.inner().send_on(&target, &msg, None).await
    }

    /// Sends one message to every connected peer but those in `except`, concurrently.
    /// Unsigned messages are framed once for all peers.
    ///
    /// # Cancel safety
    ///
    /// As [`Mesh::send_to`].
    pub async fn broadcast(&self, msg: impl Into<Outgoing>, except: &[&str]) -> Broadcast {
        let msg = msg.into();
        let mut out = Broadcast::default();
        let targets: Vec<Target> = {
            let conns = self.inner().conns.lock().unwrap();
            conns
                .values()
                .filter(|c| !except.contains(&&*c.peer.id))
                .map(Target::of)
                .collect()
        };
        if self.inner().check(&msg).is_err() {
            // Every peer gets its own copy of the error: it is not `Clone`.
            out.failed = targets
                .into_iter()
                .map(|t| (t.id, self.inner().check(&msg).unwrap_err()))
                .collect();
            return out;
        }
        let shared = self.inner().key.is_none().then(|| {
            wire::DataHeader::new(
                if msg.zlib { wire::FLAG_ZLIB } else { 0 },
                None,
                msg.data.len(),
            )
        });
        let sends = targets
            .iter()
            .map(|t| self.inner().send_on(t, &msg, shared.as_ref()));
        let results = futures::future::join_all(sends).await;
        for (t, r) in targets.into_iter().zip(results) {
            match r {
                Ok(()) => out.sent.push(t.id),
                Err(e) => out.failed.push((t.id, e)),
            }
        }
        out
    }

    /// Closes the connection to `id` (after a BYE), which ends with
    /// [`DisconnectReason::Local`]. Returns whether there was one.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the connection is marked for closing at once.
    pub async fn disconnect(&self, id: &str) -> bool {
        let Ok(t) = self.inner().target(id) else {
            return false;
        };
        self.inner()
            .close_conn(&t, DisconnectReason::Local, "disconnect")
            .await;
        true
    }

    /// Stops the node: queues [`Event::Stopping`], says BYE to every peer and closes
    /// it, stops listening, and waits (up to `deadline`) for every task and handler; the
    /// event stream ends after the last disconnection. A second call waits for the
    /// first.
    ///
    /// Do not await it inside a handler, since it waits for the handlers: spawn it.
    ///
    /// # Cancel safety
    ///
    /// If cancelled, the node has stopped taking peers; dropping every handle then
    /// stops the rest at once.
    pub async fn stop(&self, deadline: Duration) -> StopReport {
        let i = self.inner().clone();
        *i.stopped.get_or_init(|| i.clone().stop_now(deadline)).await
    }
}

/// What a send needs of a connection, taken out of the table.
struct Target {
    id: Arc<str>,
    pipe: Pipe,
    tx: Arc<tokio::sync::Mutex<session::Sender>>,
    reason: Arc<Mutex<Option<DisconnectReason>>>,
}

impl Target {
    fn of(c: &Conn) -> Target {
        Target {
            id: c.peer.id.clone(),
            pipe: c.pipe.clone(),
            tx: c.tx.clone(),
            reason: c.reason.clone(),
        }
    }
}

impl Inner {
    fn local(&self) -> Local {
        Local {
            id: self.id.clone(),
            listen_port: self.listen_port.load(Ordering::Relaxed) as u16,
            key: self.key.clone(),
        }
    }

    fn check(&self, msg: &Outgoing) -> Result<(), Error> {
        if msg.data.len() > self.max_message {
            return Err(Error::TooLarge {
                len: msg.data.len(),
                max: self.max_message,
            });
        }
        Ok(())
    }

    fn target(&self, id: &str) -> Result<Target, Error> {
        self.conns
            .lock()
            .unwrap()
            .get(id)
            .map(Target::of)
            .ok_or_else(|| Error::UnknownPeer(id.to_owned()))
    }

    /// Takes connection `serial` to `id` out of the table, if it is still there.
    fn forget(&self, id: &str, serial: u64) {
        let mut conns = self.conns.lock().unwrap();
        if conns.get(id).is_some_and(|c| c.serial == serial) {
            conns.remove(id);
        }
    }

    /// Queues an event, waiting for room unless the mesh is stopped hard.
    async fn emit(&self, events: &mpsc::Sender<Event>, ev: Event) {
        tokio::select! {
            biased;
            _ = self.hard.cancelled() => {}
            _ = events.send(ev) => {}
        }
    }

    fn emitter(&self) -> Option<mpsc::Sender<Event>> {
        self.events.lock().unwrap().clone()
    }

    /// Writes a handshake frame, bounded by the send timeout.
    async fn send_bounded(&self, pipe: &Pipe, frame: &[u8]) -> Result<(), ()> {
        match tokio::time::timeout(self.send_timeout, pipe.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// Runs one side of a handshake under the handshake timeout. A failure is counted,
    /// the peer is refused when the fault is its own, and the connection is closed.
    async fn handshake(
        &self,
        pipe: &Pipe,
        addr: SocketAddr,
        hs: Handshake,
        first: Option<Bytes>,
    ) -> Result<(Handshake, PeerHello), Error> {
        let c = &self.counters;
        let driven = tokio::time::timeout(self.handshake_timeout, Self::drive(pipe, hs, first));
        let err = match driven.await {
            Ok(Ok(x)) => return Ok(x),
            Ok(Err(source)) => {
                c.handshake_failures.fetch_add(1, Ordering::Relaxed);
                if let Some(code) = source.refuse_code() {
                    let _ = self.send_bounded(pipe, &Handshake::refuse(code, "")).await;
                }
                Error::Handshake { addr, source }
            }
            Err(_) => {
                c.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                Error::HandshakeTimeout { addr }
            }
        };
        pipe.close().await;
        Err(err)
    }

    /// Refuses a proven peer the node does not take (counted; bounded), and closes.
    async fn turn_away(&self, pipe: &Pipe, code: RefuseCode) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        let _ = self.send_bounded(pipe, &Handshake::refuse(code, "")).await;
        pipe.close().await;
    }

    /// Runs a handshake up to the decision: sends `first` (the initiator's HELLO), then
    /// answers every frame until the peer is proven.
    async fn drive(
        pipe: &Pipe,
        mut hs: Handshake,
        first: Option<Bytes>,
    ) -> Result<(Handshake, PeerHello), session::HandshakeError> {
        let broken = |_| session::HandshakeError::Unexpected;
        if let Some(f) = first {
            pipe.send(&f).await.map_err(broken)?;
        }
        loop {
            let f = pipe.recv().await.map_err(broken)?.data;
            match hs.on_frame(f)? {
                Step::Send(out) => pipe.send(&out).await.map_err(broken)?,
                Step::Decide(peer) => return Ok((hs, peer)),
            }
        }
    }

    /// Takes a proven peer into the table, or says why not ([`Inner::turn_away`] then
    /// refuses it). The steps: open for peers, the key bound to the id, the duplicate
    /// rule ([`admit`]), a slot, then into the table.
    fn register(
        self: &Arc<Self>,
        hello: &PeerHello,
        direction: Direction,
        addr: SocketAddr,
        pipe: Pipe,
        session: session::Session,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Registered, RefuseCode> {
        let events = self.open_for_peers()?;
        let mut known = self.known.lock().unwrap();
        self.check_key(&known, hello)?;
        let mut conns = self.conns.lock().unwrap();
        let existing = conns.get(hello.id.as_str()).map(|c| c.peer.direction);
        let decision = admit(&self.id, &hello.id, direction, existing);
        if decision == Admit::Duplicate {
            return Err(RefuseCode::Duplicate);
        }
        let permit = self.slot(permit)?;
        if let Some(k) = hello.key {
            known.insert(hello.id.clone(), k);
        }
        if decision == Admit::Replace {
            if let Some(old) = conns.remove(hello.id.as_str()) {
                close_replaced(old);
            }
        }
        let peer = Peer {
            id: hello.id.as_str().into(),
            addr,
            direction,
            listen_port: hello.listen_port,
            key: hello.key,
        };
        let (conn, running) = self.new_conn(peer, pipe, session.tx, permit);
        conns.insert(conn.peer.id.clone(), conn);
        Ok(Registered {
            conn: running,
            rx: session.rx,
            events,
        })
    }

    /// The event sender, unless the node is stopping (then no peer is taken).
    fn open_for_peers(&self) -> Result<mpsc::Sender<Event>, RefuseCode> {
        if self.stopping.is_cancelled() {
            return Err(RefuseCode::Stopping);
        }
        self.emitter().ok_or(RefuseCode::Stopping)
    }

    /// Refuses a key other than the one trusted for, or already bound to, the id, and an
    /// id that is a node id ([`NodeId`]) but not the key's.
    fn check_key(
        &self,
        known: &HashMap<String, VerifyingKey>,
        hello: &PeerHello,
    ) -> Result<(), RefuseCode> {
        let Some(k) = &hello.key else { return Ok(()) };
        if let Ok(id) = hello.id.parse::<NodeId>() {
            if id != NodeId::from_key(k) {
                return Err(RefuseCode::BadKey);
            }
        }
        let bound = self.trusted.get(&hello.id).or_else(|| known.get(&hello.id));
        if bound.is_some_and(|b| b != k) {
            return Err(RefuseCode::BadKey);
        }
        Ok(())
    }

    /// The connection's slot: the outbound permit `connect` took, or an inbound one.
    fn slot(
        &self,
        outbound: Option<OwnedSemaphorePermit>,
    ) -> Result<OwnedSemaphorePermit, RefuseCode> {
        match outbound {
            Some(p) => Ok(p),
            None => self
                .inbound
                .clone()
                .try_acquire_owned()
                .map_err(|_| RefuseCode::Limit),
        }
    }

    /// A table entry for a new connection, and the session task's view of it.
    fn new_conn(
        self: &Arc<Self>,
        peer: Peer,
        pipe: Pipe,
        tx: session::Sender,
        permit: OwnedSemaphorePermit,
    ) -> (Conn, RunningConn) {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let reason = Arc::new(Mutex::new(None));
        let ended = CancellationToken::new();
        let conn = Conn {
            serial,
            peer: peer.clone(),
            pipe: pipe.clone(),
            tx: Arc::new(tokio::sync::Mutex::new(tx)),
            reason: reason.clone(),
            ended: ended.clone(),
            _permit: permit,
        };
        let running = RunningConn {
            serial,
            peer,
            pipe,
            reason,
            ended,
            table: Arc::downgrade(self),
        };
        (conn, running)
    }

    /// Reads the connection until it ends, then takes it out of the table and queues
    /// the disconnected event.
    async fn run_session(
        &self,
        conn: RunningConn,
        mut rx: session::Receiver,
        events: mpsc::Sender<Event>,
    ) {
        let why = self.read_until_end(&conn, &mut rx, &events).await;
        self.end_session(conn, why, &events).await;
    }

    /// Reads frames, answers keepalives and delivers messages until the connection ends
    /// from either side; returns why.
    async fn read_until_end(
        &self,
        conn: &RunningConn,
        rx: &mut session::Receiver,
        events: &mpsc::Sender<Event>,
    ) -> DisconnectReason {
        let mut misses = 0u32;
        loop {
            let next = tokio::select! {
                biased;
                _ = self.hard.cancelled() => return DisconnectReason::Stopping,
                _ = conn.ended.cancelled() => return DisconnectReason::Local,
                r = daemon::recv_within(&conn.pipe, self.keepalive) => r,
            };
            let step = match next {
                Some(Ok(m)) => {
                    misses = 0;
                    self.on_incoming(conn, rx.on_frame(m.data), events).await
                }
                Some(Err(e)) => ControlFlow::Break(ended_reason(e)),
                None => {
                    misses += 1;
                    self.on_silence(&conn.pipe, misses).await
                }
            };
            if let ControlFlow::Break(why) = step {
                return why;
            }
        }
    }

    /// A keepalive interval passed in silence, the `misses`th in a row: PING, or give up
    /// after three.
    async fn on_silence(&self, pipe: &Pipe, misses: u32) -> ControlFlow<DisconnectReason> {
        if misses >= 3 {
            return ControlFlow::Break(DisconnectReason::Keepalive);
        }
        let ping = control(wire::Frame::Ping(u64::from(misses)));
        if self.send_bounded(pipe, &ping).await.is_err() {
            return ControlFlow::Break(DisconnectReason::Error("keepalive send failed".into()));
        }
        ControlFlow::Continue(())
    }

    /// Carries out what the session made of one frame.
    async fn on_incoming(
        &self,
        conn: &RunningConn,
        incoming: Result<Incoming, Reject>,
        events: &mpsc::Sender<Event>,
    ) -> ControlFlow<DisconnectReason> {
        match incoming {
            Ok(Incoming::Message {
                payload,
                compressed,
            }) => {
                self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
                let m = MeshMessage {
                    from: conn.peer.id.clone(),
                    data: payload,
                    compressed,
                    signed: self.key.is_some(),
                };
                self.emit(events, Event::Message(m)).await;
            }
            Ok(Incoming::Ping(t)) => {
                let pong = control(wire::Frame::Pong(t));
                if self.send_bounded(&conn.pipe, &pong).await.is_err() {
                    let why = DisconnectReason::Error("keepalive answer failed".into());
                    return ControlFlow::Break(why);
                }
            }
            Ok(Incoming::Pong(_)) => {}
            Ok(Incoming::Bye(r)) => return ControlFlow::Break(DisconnectReason::Bye(r)),
            Err(r) => return self.rejected(&conn.peer.id, r),
        }
        ControlFlow::Continue(())
    }

    /// Counts a frame the session would not take; ends the connection if the stream
    /// itself is broken.
    fn rejected(&self, peer: &str, r: Reject) -> ControlFlow<DisconnectReason> {
        let c = &self.counters;
        let counter = match &r {
            Reject::Wire(_) | Reject::Unexpected => &c.protocol_errors,
            Reject::SigningMismatch | Reject::BadSignature => &c.bad_signatures,
            Reject::Replay { .. } => &c.replays,
            Reject::TooLarge { .. } => &c.too_large,
            Reject::BadCompression => &c.bad_compression,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer, reject = %r, "mesh message dropped");
        if r.is_fatal() {
            return ControlFlow::Break(DisconnectReason::Error(r.to_string()));
        }
        ControlFlow::Continue(())
    }

    /// Takes the connection out of the table, closes it, and queues its disconnected
    /// event. A reason set by this side (replaced, disconnected, stopping) wins over
    /// `why`, what the read loop saw of it.
    async fn end_session(
        &self,
        conn: RunningConn,
        why: DisconnectReason,
        events: &mpsc::Sender<Event>,
    ) {
        self.forget(&conn.peer.id, conn.serial);
        conn.ended.cancel();
        let reason = conn.reason.lock().unwrap().take().unwrap_or(why);
        conn.pipe.close().await;
        let d = Disconnected {
            peer: conn.peer.clone(),
            reason,
        };
        let ev = match conn.peer.direction {
            Direction::Inbound => Event::InboundDisconnected(d),
            Direction::Outbound => Event::OutboundDisconnected(d),
        };
        self.emit(events, ev).await;
    }

    /// Sends `msg` on one connection, under the send timeout. `shared` is the header a
    /// broadcast on an unsigned mesh built once for every connection; the payload is
    /// never copied.
    async fn send_on(
        &self,
        t: &Target,
        msg: &Outgoing,
        shared: Option<&wire::DataHeader>,
    ) -> Result<(), Error> {
        let sent = tokio::time::timeout(self.send_timeout, async {
            // The lock keeps the signing order the wire order.
            let mut tx = t.tx.lock().await;
            let head = match shared {
                Some(h) => *h,
                _ => tx.header(&msg.data, msg.zlib),
            };
            let armed = BreakIfDropped(Some(t));
            let r = t.pipe.send_raw_parts(&[head.as_bytes(), &msg.data]).await;
            std::mem::forget(armed);
            r
        })
        .await;
        let err = match sent {
            Ok(Ok(())) => {
                self.counters.messages_out.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Ok(Err(source)) => Error::Send {
                peer: t.id.to_string(),
                source,
            },
            Err(_) => Error::SendTimeout {
                peer: t.id.to_string(),
            },
        };
        // Part of a frame may be on the wire: the stream cannot go on.
        t.reason
            .lock()
            .unwrap()
            .get_or_insert_with(|| DisconnectReason::Error(err.to_string()));
        t.pipe.abort().await;
        Err(err)
    }

    /// Says BYE (bounded) and closes a connection with `reason`.
    async fn close_conn(&self, t: &Target, reason: DisconnectReason, bye: &str) {
        let first = {
            let mut r = t.reason.lock().unwrap();
            let first = r.is_none();
            r.get_or_insert(reason);
            first
        };
        if first {
            let frame = control(wire::Frame::Bye(wire::Reason::new(bye)));
            let _ = tokio::time::timeout(self.send_timeout.min(Duration::from_secs(1)), async {
                let _tx = t.tx.lock().await;
                t.pipe.send(&frame).await
            })
            .await;
        }
        t.pipe.close().await;
    }

    async fn stop_now(self: Arc<Self>, deadline: Duration) -> StopReport {
        let started = tokio::time::Instant::now();
        self.stopping.cancel();
        if let Some(ev) = self.emitter() {
            let _ = tokio::time::timeout(deadline, ev.send(Event::Stopping)).await;
        }
        let daemon = self.daemon.lock().unwrap().take();
        let targets: Vec<Target> = self
            .conns
            .lock()
            .unwrap()
            .values()
            .map(Target::of)
            .collect();
        let closed = targets.len();
        futures::future::join_all(
            targets
                .iter()
                .map(|t| self.close_conn(t, DisconnectReason::Stopping, "stopping")),
        )
        .await;
        let left = || deadline.saturating_sub(started.elapsed());
        let mut clean = true;
        if let Some(d) = daemon {
            clean &= d.shutdown(left()).await.aborted == 0;
        }
        self.tracker.close();
        if tokio::time::timeout(left(), self.tracker.wait())
            .await
            .is_err()
        {
            clean = false;
            self.hard.cancel();
            self.tracker.wait().await;
        }
        // The last sender goes: the dispatcher drains what is queued, then the stream ends.
        self.events.lock().unwrap().take();
        let handle = self.dispatcher.lock().unwrap().take();
        if let Some(h) = handle {
            let abort = h.abort_handle();
            if tokio::time::timeout(left(), h).await.is_err() {
                clean = false;
                abort.abort();
            }
        }
        StopReport { closed, clean }
    }
}

/// Armed while a frame is being written: if the send is dropped part-way (its caller
/// cancelled it), part of a frame may be on the wire and the stream cannot go on, so the
/// connection is reset.
struct BreakIfDropped<'a>(Option<&'a Target>);

impl Drop for BreakIfDropped<'_> {
    fn drop(&mut self) {
        let Some(t) = self.0.take() else { return };
        t.reason
            .lock()
            .unwrap()
            .get_or_insert_with(|| DisconnectReason::Error("send cancelled part-way".into()));
        let pipe = t.pipe.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { pipe.abort().await });
        }
    }
}

/// A registered connection, as its session task sees it.
struct RunningConn {
    serial: u64,
    peer: Peer,
    pipe: Pipe,
    reason: Arc<Mutex<Option<DisconnectReason>>>,
    ended: CancellationToken,
    table: Weak<Inner>,
}

impl Drop for RunningConn {
    /// Whatever path drops a registered connection (its session ending, or a task
    /// stopped before the session began), it leaves the table.
    fn drop(&mut self) {
        if let Some(i) = self.table.upgrade() {
            i.forget(&self.peer.id, self.serial);
        }
        self.ended.cancel();
    }
}

/// A connection [`Inner::register`] took: its task's view of it, the receiving half,
/// and the event sender the session uses.
struct Registered {
    conn: RunningConn,
    rx: session::Receiver,
    events: mpsc::Sender<Event>,
}

/// Ends a connection the duplicate rule replaced: it ends `Replaced`.
fn close_replaced(old: Conn) {
    *old.reason.lock().unwrap() = Some(DisconnectReason::Replaced);
    old.ended.cancel();
    let p = old.pipe.clone();
    tokio::spawn(async move { p.close().await });
}

/// A control frame's wire form (PING, PONG, BYE), to send as it is.
fn control(f: wire::Frame) -> BytesMut {
    let mut out = BytesMut::with_capacity(f.emit_len());
    f.emit(&mut out);
    out
}

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).expect("the system random source");
    n
}

fn ended_reason(e: crate::pipe::Error) -> DisconnectReason {
    use crate::pipe::{EndReason, Error as PE};
    match e {
        PE::Ended(EndReason::Fin | EndReason::Reset | EndReason::Closed) => {
            DisconnectReason::Closed
        }
        PE::Ended(r) => DisconnectReason::Error(r.to_string()),
        e => DisconnectReason::Error(e.to_string()),
    }
}

/// The Daemon's handler: serves a whole inbound connection from `on_connect`.
struct Inbound(Weak<Inner>);

impl daemon::Handler for Inbound {
    async fn on_message(&self, _msg: Message, _reply: Pipe) -> Result<(), String> {
        // Never reached: `on_connect` reads the connection to its end.
        Ok(())
    }

    async fn on_connect(&self, pipe: &Pipe) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        inner.serve_inbound(pipe.clone()).await;
    }
}

impl Inner {
    async fn serve_inbound(self: Arc<Self>, pipe: Pipe) {
        let addr = pipe.peer_addr().expect("a connection has a peer");
        let hs = Handshake::acceptor(&self.local(), nonce());
        let (hs, hello) = match self.handshake(&pipe, addr, hs, None).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "mesh handshake failed");
                return;
            }
        };
        let (session, auth) = hs.accept(self.max_decompressed);
        match self.register(
            &hello,
            Direction::Inbound,
            addr,
            pipe.clone(),
            session,
            None,
        ) {
            Ok(Registered { conn, rx, events }) => {
                // Queued before the AUTH goes out, so that once the initiator's
                // `connect` returns, this side's event is in too.
                let ev = Event::InboundConnected(conn.peer.clone());
                self.emit(&events, ev).await;
                let auth = auth.expect("the acceptor answers with its auth");
                if self.send_bounded(&pipe, &auth).await.is_err() {
                    *conn.reason.lock().unwrap() =
                        Some(DisconnectReason::Error("handshake send failed".into()));
                    pipe.close().await;
                }
                self.run_session(conn, rx, events).await;
            }
            Err(code) => self.turn_away(&pipe, code).await,
        }
    }
}

/// Delivers every event to its handler, then to the stream, in order.
async fn dispatch(
    mut rx: mpsc::Receiver<Event>,
    user: mpsc::Sender<Event>,
    h: Handlers,
    inner: Weak<Inner>,
    guard: Weak<Guard>,
) {
    let mut user = Some(user);
    while let Some(ev) = rx.recv().await {
        let call: Option<BoxFuture<'static, ()>> = guard.upgrade().and_then(|g| {
            let mesh = Mesh { guard: g };
            match &ev {
                Event::InboundConnected(p) => {
                    h.inbound_connected.as_ref().map(|f| f(mesh, p.clone()))
                }
                Event::OutboundConnected(p) => {
                    h.outbound_connected.as_ref().map(|f| f(mesh, p.clone()))
                }
                Event::InboundDisconnected(d) => {
                    h.inbound_disconnected.as_ref().map(|f| f(mesh, d.clone()))
                }
                Event::OutboundDisconnected(d) => {
                    h.outbound_disconnected.as_ref().map(|f| f(mesh, d.clone()))
                }
                Event::Message(m) => h.message.as_ref().map(|f| f(mesh, m.clone())),
                Event::Stopping => h.stopping.as_ref().map(|f| f(mesh, ())),
            }
        });
        if let Some(fut) = call {
            if AssertUnwindSafe(fut).catch_unwind().await.is_err() {
                if let Some(i) = inner.upgrade() {
                    i.counters.handler_panics.fetch_add(1, Ordering::Relaxed);
                }
                tracing::error!("mesh event handler panicked");
            }
        }
        if let Some(u) = &user {
            if u.send(ev).await.is_err() {
                // The stream was dropped: handlers only from now on.
                user = None;
            }
        }
    }
}
