//! The tokio driver of a TURN client: one task per allocation moves bytes between the
//! server's socket and the sans-IO [`Client`], sleeps until the client's next deadline,
//! and hands what the client makes of them to whoever waits: operations, relayed pipes,
//! the relay's listener and accepted connections.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, Notify};

use super::client::{Client, Event, Input, Phase};
use super::data::{Frame, MAX_WIRE};
use super::msg::Kind;
use super::Error;
use crate::pipe::relay::{DatagramLink, Inbound};
use crate::pipe::{Pipe, PipeConfig};

/// How many datagrams wait for a relayed pipe's reader (or the listener's) before new
/// ones are dropped.
const PIPE_QUEUE: usize = 1024;
/// How many RFC 6062 connection attempts wait to be accepted.
pub(crate) const ACCEPT_QUEUE: usize = 16;
/// At most this many relayed pipes at once.
const MAX_PIPES: usize = super::client::MAX_PERMISSIONS;

/// The socket to the server.
pub(crate) enum Link {
    /// UDP: every message is a datagram.
    Udp(Arc<UdpSocket>),
    /// TCP: messages back to back on one connection (writes serialised).
    Tcp(tokio::sync::Mutex<TcpOut>),
}

/// The sending half of a TCP connection to the server, and the bytes of whole messages
/// not yet written (a write that could not finish at once, or was cancelled): they go
/// out before anything else, so messages never interleave.
pub(crate) struct TcpOut {
    half: OwnedWriteHalf,
    tail: BytesMut,
}

impl TcpOut {
    pub(crate) fn new(half: OwnedWriteHalf) -> TcpOut {
        TcpOut {
            half,
            tail: BytesMut::new(),
        }
    }

    /// Writes what is left over, then `bytes`. Cancel safe: what is not written yet
    /// stays for the next writer (or the driver's next flush).
    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tail.extend_from_slice(bytes);
        while !self.tail.is_empty() {
            let n = self.half.write(&self.tail).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.tail.advance(n);
        }
        Ok(())
    }

    /// Writes `bytes` now if the socket takes at least part of them (the rest waits
    /// in the tail for the driver): true if taken, false if the caller must wait.
    fn try_write(&mut self, bytes: &[u8]) -> io::Result<bool> {
        if !self.tail.is_empty() {
            return Ok(false);
        }
        match self.half.try_write(bytes) {
            Ok(n) => {
                self.tail.extend_from_slice(&bytes[n..]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Reads messages from the server's socket.
pub(crate) enum LinkReader {
    Udp(Arc<UdpSocket>, Box<[u8]>),
    Tcp {
        half: OwnedReadHalf,
        buf: BytesMut,
        /// Bytes of the message returned last, dropped at the next read.
        taken: usize,
    },
}

impl LinkReader {
    /// The next message from `server`.
    ///
    /// Cancel safe: over UDP a datagram is taken whole; over TCP bytes read stay in the
    /// buffer.
    async fn next(&mut self, server: SocketAddr) -> Result<&[u8], Error> {
        match self {
            LinkReader::Udp(sock, buf) => loop {
                match sock.recv_from(buf).await {
                    Ok((n, from)) if from == server => return Ok(&buf[..n]),
                    // Datagrams from anyone else, and ICMP errors, end nothing.
                    Ok(_) | Err(_) => continue,
                }
            },
            LinkReader::Tcp { half, buf, taken } => {
                buf.advance(std::mem::take(taken));
                loop {
                    let frame = Frame::parse(buf).map_err(|e| Error::Stream {
                        server,
                        reason: e.to_string(),
                    })?;
                    match frame.wire_len() {
                        Some(n) if buf.len() >= n => {
                            *taken = n;
                            return Ok(&buf[..n]);
                        }
                        want => {
                            buf.reserve(want.unwrap_or(4).min(MAX_WIRE).saturating_sub(buf.len()))
                        }
                    }
                    let read = half
                        .read_buf(buf)
                        .await
                        .map_err(|e| Error::io(server, "receive", e))?;
                    if read == 0 {
                        let reason = "the server closed the connection".to_owned();
                        return Err(Error::Stream { server, reason });
                    }
                }
            }
        }
    }
}

impl Link {
    /// Sends one message to `server`. Over UDP a failed send is as good as a lost
    /// datagram (the schedule retransmits); over TCP it breaks the link.
    async fn send(&self, server: SocketAddr, bytes: &[u8]) -> Result<(), Error> {
        match self {
            Link::Udp(sock) => {
                let _ = sock.send_to(bytes, server).await;
                Ok(())
            }
            Link::Tcp(w) => w
                .lock()
                .await
                .write(bytes)
                .await
                .map_err(|e| Error::io(server, "send", e)),
        }
    }
}

/// What an operation waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Allocate,
    Permit(SocketAddr),
    Channel(SocketAddr),
    Connect(SocketAddr),
    Close,
}

impl Key {
    fn of_kind(kind: &Kind) -> Option<Key> {
        match *kind {
            Kind::Allocate { .. } => Some(Key::Allocate),
            Kind::Refresh { lifetime: 0 } => Some(Key::Close),
            Kind::Permission { peer } => Some(Key::Permit(peer)),
            Kind::ChannelBind { peer, .. } => Some(Key::Channel(peer)),
            Kind::Connect { peer } => Some(Key::Connect(peer)),
            Kind::Refresh { .. } | Kind::ConnectionBind { .. } => None,
        }
    }

    fn of_event(ev: &Event) -> Option<Key> {
        match ev {
            Event::Allocated { .. } => Some(Key::Allocate),
            Event::Permitted(p) => Some(Key::Permit(*p)),
            Event::ChannelBound { peer, .. } => Some(Key::Channel(*peer)),
            Event::Connected { peer, .. } => Some(Key::Connect(*peer)),
            Event::Closed => Some(Key::Close),
            Event::Failed { kind, .. } => Key::of_kind(kind),
            Event::ConnectionAttempt { .. } => None,
        }
    }
}

type Waiter = (Key, oneshot::Sender<Result<Event, Error>>);

/// The state the driver and the relay's users share.
pub(crate) struct State {
    pub(crate) client: Client,
    waiters: Vec<Waiter>,
    /// Where the datagrams of each peer with a pipe of its own go.
    inbound: HashMap<SocketAddr, mpsc::Sender<(Bytes, SocketAddr)>>,
    /// Where the datagrams of every other peer go: to the relay's listener, which makes
    /// them pipes; `None` once the relay is gone.
    listener: Option<mpsc::Sender<(Bytes, SocketAddr)>>,
    /// RFC 6062 connection attempts wait here.
    attempts: Option<mpsc::Sender<(SocketAddr, u32)>>,
    /// Why the driver stopped.
    stopped: Option<Error>,
    /// The wire form of the datagram being sent (reused: sends allocate nothing).
    scratch: BytesMut,
    /// Datagrams dropped: a full pipe or listener queue, or no listener.
    pub(crate) dropped: u64,
}

/// One allocation's shared part: the client, the link, the driver's wake-up.
pub(crate) struct Shared {
    pub(crate) server: SocketAddr,
    pub(crate) link: Link,
    state: Mutex<State>,
    wake: Notify,
    /// The config of the pipes the relay makes.
    pub(crate) pipe_cfg: PipeConfig,
}

impl Shared {
    pub(crate) fn new(
        client: Client,
        link: Link,
        pipe_cfg: PipeConfig,
    ) -> (Arc<Shared>, Inbound, mpsc::Receiver<(SocketAddr, u32)>) {
        let (listener, unheard) = mpsc::channel(PIPE_QUEUE);
        let (attempts, attempted) = mpsc::channel(ACCEPT_QUEUE);
        let state = State {
            client,
            waiters: Vec::new(),
            inbound: HashMap::new(),
            listener: Some(listener),
            attempts: Some(attempts),
            stopped: None,
            scratch: BytesMut::new(),
            dropped: 0,
        };
        let shared = Arc::new(Shared {
            server: state.client.server(),
            link,
            state: Mutex::new(state),
            wake: Notify::new(),
            pipe_cfg,
        });
        (shared, unheard, attempted)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts an operation on the client and registers who waits for its outcome.
    pub(crate) fn start<T>(
        &self,
        key: Key,
        op: impl FnOnce(&mut Client, Instant) -> Result<T, Error>,
    ) -> Result<(T, oneshot::Receiver<Result<Event, Error>>), Error> {
        let mut st = self.lock();
        if let Some(e) = &st.stopped {
            return Err(e.clone());
        }
        let t = op(&mut st.client, Instant::now())?;
        let (tx, rx) = oneshot::channel();
        st.waiters.retain(|(_, w)| !w.is_closed());
        st.waiters.push((key, tx));
        drop(st);
        self.wake.notify_one();
        Ok((t, rx))
    }

    /// Waits at most `limit` for an operation's outcome.
    pub(crate) async fn wait(
        &self,
        rx: oneshot::Receiver<Result<Event, Error>>,
        op: &'static str,
        limit: Duration,
    ) -> Result<Event, Error> {
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(Error::Timeout {
                server: self.server,
                op,
                waited: limit,
            }),
        }
    }

    /// Why the driver stopped (or that it did).
    pub(crate) fn stopped(&self) -> Error {
        let server = self.server;
        self.lock()
            .stopped
            .clone()
            .unwrap_or(Error::Stopped { server })
    }

    /// Routes the datagrams of `peer` to a new pipe's queue.
    pub(crate) fn route(&self, peer: SocketAddr) -> Result<crate::pipe::relay::Inbound, Error> {
        let mut st = self.lock();
        if let Some(e) = &st.stopped {
            return Err(e.clone());
        }
        st.inbound.retain(|_, tx| !tx.is_closed());
        if st.inbound.len() >= MAX_PIPES && !st.inbound.contains_key(&peer) {
            let (server, what) = (self.server, "relayed pipes");
            return Err(Error::Full {
                server,
                what,
                max: MAX_PIPES,
            });
        }
        let (tx, rx) = mpsc::channel(PIPE_QUEUE);
        st.inbound.insert(peer, tx);
        Ok(rx)
    }

    /// A pipe to `peer` on this relay (whose datagrams must already be routed to `rx`).
    pub(crate) fn pipe(
        self: &Arc<Self>,
        peer: SocketAddr,
        rx: crate::pipe::relay::Inbound,
    ) -> Pipe {
        Pipe::relayed(self.link(), rx, self.relayed(), peer, &self.pipe_cfg)
    }

    /// The relay's listener, reading what peers without a pipe of their own send to
    /// `unheard`.
    pub(crate) fn listener(self: &Arc<Self>, unheard: Inbound) -> Pipe {
        Pipe::relayed_listener(self.link(), unheard, self.relayed(), &self.pipe_cfg)
    }

    fn relayed(&self) -> SocketAddr {
        self.lock().client.relayed().unwrap_or(self.server)
    }

    fn link(self: &Arc<Self>) -> Arc<dyn DatagramLink> {
        Arc::new(RelayLink(Arc::downgrade(self)))
    }

    /// Stops everything: waiters learn `error`, pipes end, nothing more is accepted.
    pub(crate) fn stop(&self, error: Error) {
        let mut st = self.lock();
        st.stopped.get_or_insert(error.clone());
        for (_, w) in st.waiters.drain(..) {
            let _ = w.send(Err(error.clone()));
        }
        st.inbound.clear();
        st.listener = None;
        st.attempts = None;
    }
}

/// Runs the driver of `shared` until the link breaks or the allocation ends.
///
/// Cancel safety: dropping the task stops the driver; pending operations learn it
/// (their waiters are dropped).
pub(crate) async fn run(shared: Arc<Shared>, mut reader: LinkReader) {
    let server = shared.server;
    loop {
        if let Err(e) = flush(&shared).await {
            return shared.stop(e);
        }
        let deadline = shared.lock().client.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.wake.notified() => {}
            got = reader.next(server) => match got {
                Ok(bytes) => take_input(&shared, bytes),
                Err(e) => return shared.stop(e),
            },
            _ = sleep => shared.lock().client.handle_timeout(Instant::now()),
        }
        if let Some(end) = dispatch(&shared) {
            return shared.stop(end);
        }
    }
}

/// Sends everything the client queued, after what a relayed send left over.
async fn flush(shared: &Shared) -> Result<(), Error> {
    if let Link::Tcp(w) = &shared.link {
        let mut out = w.lock().await;
        if !out.tail.is_empty() {
            let server = shared.server;
            out.write(&[])
                .await
                .map_err(|e| Error::io(server, "send", e))?;
        }
    }
    loop {
        let Some(bytes) = shared.lock().client.poll_transmit() else {
            return Ok(());
        };
        shared.link.send(shared.server, &bytes).await?;
    }
}

/// Hands a message to the client; a peer's data goes to its pipe, or to the listener.
fn take_input(shared: &Shared, bytes: &[u8]) {
    let mut st = shared.lock();
    let (peer, data) = match st.client.handle_input(bytes, Instant::now()) {
        Input::Data { peer, data } => (peer, data),
        Input::Handled => return,
        Input::Ignored(why) => {
            tracing::debug!(server = %shared.server, why, "turn message ignored");
            return;
        }
    };
    let st = &mut *st;
    let tx = match (st.inbound.get(&peer), &st.listener) {
        (Some(tx), _) | (None, Some(tx)) => tx,
        (None, None) => {
            st.dropped += 1;
            return;
        }
    };
    match tx.try_send((Bytes::copy_from_slice(data), peer)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => st.dropped += 1,
        Err(mpsc::error::TrySendError::Closed(_)) => {
            // A closed pipe's peer goes to the listener from now on.
            st.dropped += 1;
            st.inbound.remove(&peer);
        }
    }
}

/// Hands the client's events to their waiters; gives the reason to stop, if any.
fn dispatch(shared: &Shared) -> Option<Error> {
    let mut st = shared.lock();
    while let Some(ev) = st.client.poll_event() {
        if let Event::ConnectionAttempt { peer, id } = ev {
            if let Some(a) = &st.attempts {
                let _ = a.try_send((peer, id));
            }
            continue;
        }
        if let Event::Failed { kind, error } = &ev {
            tracing::warn!(server = %shared.server, op = kind.name(), %error, "turn request failed");
        }
        let Some(key) = Key::of_event(&ev) else {
            continue;
        };
        if let Some(i) = st
            .waiters
            .iter()
            .position(|(k, w)| *k == key && !w.is_closed())
        {
            let (_, w) = st.waiters.remove(i);
            let _ = w.send(match ev {
                Event::Failed { error, .. } => Err(error),
                ev => Ok(ev),
            });
        }
    }
    let server = shared.server;
    match st.client.phase() {
        Phase::Closed => Some(Error::Stopped { server }),
        Phase::Failed => Some(Error::NoAllocation { server }),
        _ => None,
    }
}

/// How a relayed pipe sends: wrapped by the client, written to the server's socket.
struct RelayLink(Weak<Shared>);

impl RelayLink {
    fn shared(&self) -> io::Result<Arc<Shared>> {
        self.0
            .upgrade()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the turn relay is closed"))
    }
}

impl DatagramLink for RelayLink {
    fn try_send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<bool> {
        let shared = self.shared()?;
        match &shared.link {
            Link::Udp(sock) => {
                let mut st = shared.lock();
                let st = &mut *st;
                st.scratch.clear();
                st.client.emit_data(to, data, &mut st.scratch);
                match sock.try_send_to(&st.scratch, shared.server) {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Link::Tcp(w) => {
                let Ok(mut out) = w.try_lock() else {
                    return Ok(false);
                };
                let left_over = {
                    let mut st = shared.lock();
                    let st = &mut *st;
                    st.scratch.clear();
                    st.client.emit_data(to, data, &mut st.scratch);
                    let taken = out.try_write(&st.scratch)?;
                    if !taken {
                        return Ok(false);
                    }
                    !out.tail.is_empty()
                };
                if left_over {
                    // The driver writes the rest.
                    shared.wake.notify_one();
                }
                Ok(true)
            }
        }
    }

    fn send_to<'a>(&'a self, data: &'a [u8], to: SocketAddr) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let shared = self.shared()?;
            let mut frame = BytesMut::new();
            shared.lock().client.emit_data(to, data, &mut frame);
            match &shared.link {
                Link::Udp(sock) => sock.send_to(&frame, shared.server).await.map(|_| ()),
                Link::Tcp(w) => w.lock().await.write(&frame).await,
            }
        })
    }
}
