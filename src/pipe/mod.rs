//! The Pipe: one type for TCP and UDP, IPv4 and IPv6, client and server.
//!
//! ```no_run
//! use p2pipe::{Pipe, Proto};
//! # async fn demo() -> Result<(), p2pipe::pipe::Error> {
//! // A server: every client arrives as its own pipe.
//! let server = Pipe::listen(Proto::Tcp, "127.0.0.1:0").await?;
//! let addr = server.local_addr();
//! tokio::spawn(async move {
//!     while let Ok(client) = server.accept().await {
//!         client.on_message(|msg, reply| async move { reply.send(&msg.data).await });
//!     }
//! });
//!
//! // A client: subscribe before sending so that no reply is missed.
//! let pipe = Pipe::connect(Proto::Tcp, addr).await?;
//! let pongs = pipe.subscribe("^pong", None)?;
//! pipe.send(b"pong 1").await?;
//! let reply = pongs.recv_timeout(std::time::Duration::from_secs(2)).await?;
//! assert_eq!(&reply.data[..], b"pong 1");
//! # Ok(()) }
//! ```
//!
//! # Where a message goes
//!
//! Every message first meets the pipe's subscriptions (and, for a pipe accepted
//! from a listener, the listener's subscriptions). It is delivered to every
//! subscription whose pattern and peer filter match; the subscriptions share
//! the message's bytes. A message that no subscription took goes to the
//! pipe's *flow*, which has exactly one consumer: [`Pipe::recv`] and
//! [`Pipe::stream`] by default, or the handler given to [`Pipe::on_message`],
//! or the pipe given to [`Pipe::link`]. Messages that arrive before a handler
//! is attached wait in the flow and reach the handler first.
//!
//! On TCP the flow pushes back: when it is full the pipe stops reading and the
//! peer's sends slow down, so nothing is lost. A UDP flow that is full drops
//! the datagram and counts it ([`PipeStats::dropped`]). Subscriptions keep
//! their own bounded queues with an explicit [`Overflow`] policy, counted per
//! subscription.
//!
//! # Who reads the socket
//!
//! A connection is read by its consumer, in the consumer's own task: the
//! caller of `recv`, or the task of a handler or link. A message goes from the
//! socket to the code that uses it with no task in between, as in hand-written
//! tokio code. A pipe that is not read this way but must still be read (it has
//! subscriptions, an end handler, or someone awaiting [`Pipe::ended`]) gets a
//! background reader that feeds the flow. Until something reads, data waits
//! in the socket, so an end (FIN or reset) is noticed by reading: `recv`,
//! a handler, or [`Pipe::ended`] and [`Pipe::on_end`], which start the
//! background reader.
//!
//! # Lifetime
//!
//! A pipe stays open while any handle to it, or any handler or link on it,
//! exists. It ends when the peer ends it, when [`Pipe::close`] is called, or
//! when the last handle and handler are gone.

mod adopt;
mod config;
mod end;
mod error;
mod flow;
mod framing;
mod inline;
mod io;
mod queue;
mod reader;
pub(crate) mod relay;
mod shared;
pub(crate) mod subscribe;
mod tcp;
mod udp;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream};
use futures::FutureExt;

use crate::addr::{canonical, ToTarget};

pub use config::PipeConfig;
pub use error::{Error, Result};
pub use framing::{CustomFraming, Framing};
pub use io::PipeIo;
pub use queue::Overflow;
pub(crate) use reader::MAX_DATAGRAM;

use config::never_block;
use end::Close;
use flow::{HANDLER, PULL};
use queue::Queue;
use reader::consume;
use shared::{guarded, Core, EndFn, Guard, Io, UpFn};

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP: a byte stream, cut into messages by the pipe's [`Framing`].
    Tcp,
    /// UDP: every datagram is one message.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One message: its bytes and where it came from.
///
/// Cloning a message shares its bytes; nothing is copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The payload, as the pipe's framing defines it.
    pub data: Bytes,
    /// The address it came from.
    pub peer: SocketAddr,
    /// The local address it arrived on.
    pub local: SocketAddr,
    /// The protocol it arrived over.
    pub proto: Proto,
}

/// Why a pipe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The peer closed its side (TCP FIN).
    Fin,
    /// The peer reset the connection.
    Reset,
    /// This side closed the pipe.
    Closed,
    /// A frame was larger than the limit.
    TooLarge {
        /// The declared or buffered length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    Truncated {
        /// Bytes received of the frame.
        have: usize,
        /// Bytes the frame needed.
        want: usize,
    },
    /// The bytes were not valid for the framing.
    BadFrame(String),
    /// The idle limit passed with nothing received.
    Idle,
    /// Another I/O failure.
    Io(std::io::ErrorKind),
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Fin => f.write_str("closed by peer"),
            EndReason::Reset => f.write_str("reset by peer"),
            EndReason::Closed => f.write_str("closed"),
            EndReason::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            EndReason::Truncated { have, want } => {
                write!(f, "stream ended inside a frame ({have} of {want} bytes)")
            }
            EndReason::BadFrame(e) => write!(f, "invalid frame: {e}"),
            EndReason::Idle => f.write_str("idle for too long"),
            EndReason::Io(kind) => write!(f, "i/o error: {kind}"),
        }
    }
}

impl From<Error> for EndReason {
    fn from(e: Error) -> Self {
        match e {
            Error::TooLarge { len, max } => EndReason::TooLarge { len, max },
            Error::Truncated { have, want } => EndReason::Truncated { have, want },
            Error::BadFrame(s) => EndReason::BadFrame(s),
            Error::Io(e) => EndReason::from(e),
            other => EndReason::BadFrame(other.to_string()),
        }
    }
}

impl From<std::io::Error> for EndReason {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe => EndReason::Reset,
            UnexpectedEof => EndReason::Fin,
            kind => EndReason::Io(kind),
        }
    }
}

/// What an end handler learns about the pipe that ended.
#[derive(Debug, Clone)]
pub struct EndEvent {
    /// The protocol.
    pub proto: Proto,
    /// The local address.
    pub local: SocketAddr,
    /// The peer, for a connection or a UDP peer pipe.
    pub peer: Option<SocketAddr>,
    /// Why it ended.
    pub reason: EndReason,
}

/// Counters of one pipe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipeStats {
    /// Messages received.
    pub received: u64,
    /// Successful send calls: `send`, `send_to`, `send_raw` and `send_raw_parts`
    /// count one each.
    pub sent: u64,
    /// Messages dropped: a full UDP flow, a full accept backlog, too many peers.
    pub dropped: u64,
    /// Messages waiting in the flow.
    pub queued: usize,
}

/// The output of a message handler: `()` or a `Result` whose error is
/// reported (logged by a pipe, counted and logged by a daemon).
pub trait HandlerOutput {
    /// The failure, if there was one, as text.
    fn into_result(self) -> std::result::Result<(), String>;

    /// Logs a failure, if there was one.
    fn report(self)
    where
        Self: Sized,
    {
        if let Err(e) = self.into_result() {
            tracing::warn!(error = %e, "message handler failed");
        }
    }
}

impl HandlerOutput for () {
    fn into_result(self) -> std::result::Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> HandlerOutput for std::result::Result<(), E> {
    fn into_result(self) -> std::result::Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// A pipe: a TCP connection, a UDP socket with a default peer, a listener of
/// either kind, or a peer accepted from a listener. Cloning shares the pipe.
#[derive(Clone)]
pub struct Pipe(Arc<Guard>);

impl fmt::Debug for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipe")
            .field("proto", &self.core().proto)
            .field("local", &self.core().local)
            .field("peer", &self.core().peer)
            .field("listener", &self.core().is_listener())
            .finish()
    }
}

impl Pipe {
    fn from_core(core: Arc<Core>) -> Pipe {
        Pipe(Arc::new(Guard(core)))
    }

    fn core(&self) -> &Arc<Core> {
        &self.0 .0
    }

    /// Connects to `target` with the default config. For UDP this binds a
    /// local socket whose default peer is the target.
    ///
    /// A name is resolved for the config's family (from its bind address, or
    /// [`PipeConfig::family`]); each address is tried in turn.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, and fit for `tokio::time::timeout`: if the future is dropped,
    /// nothing is left behind (the socket of a connect in progress is closed).
    pub async fn connect(proto: Proto, target: impl ToTarget) -> Result<Pipe> {
        Self::connect_with(proto, target, &PipeConfig::default()).await
    }

    /// Connects with the given config. See [`Pipe::connect`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, and fit for `tokio::time::timeout`: if the future is dropped,
    /// nothing is left behind (the socket of a connect in progress is closed).
    pub async fn connect_with(
        proto: Proto,
        target: impl ToTarget,
        cfg: &PipeConfig,
    ) -> Result<Pipe> {
        let target = target.to_target()?;
        let addrs = crate::dns::default_resolver()
            .resolve(&target, cfg.family_for_connect(), cfg.resolve_timeout)
            .await?;
        let cfg = Arc::new(cfg.clone());
        let core = match proto {
            Proto::Tcp => tcp::connect(&target.to_string(), &addrs, cfg).await?,
            Proto::Udp => udp::connect(addrs[0], cfg).await?,
        };
        Ok(Pipe::from_core(core))
    }

    /// Listens on `addr` (port 0 picks a free port) with the default config.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, and fit for `tokio::time::timeout`: if the future is dropped
    /// before it returns, no socket is left bound.
    pub async fn listen(proto: Proto, addr: impl ToTarget) -> Result<Pipe> {
        Self::listen_with(proto, addr, &PipeConfig::default()).await
    }

    /// Listens with the given config. See [`Pipe::listen`].
    ///
    /// # Cancel safety
    ///
    /// As [`Pipe::listen`].
    pub async fn listen_with(proto: Proto, addr: impl ToTarget, cfg: &PipeConfig) -> Result<Pipe> {
        let target = addr.to_target()?;
        let addr = crate::dns::default_resolver()
            .resolve(&target, cfg.family, cfg.resolve_timeout)
            .await?[0];
        let cfg = Arc::new(cfg.clone());
        let core = match proto {
            Proto::Tcp => tcp::listen(addr, cfg)?,
            Proto::Udp => udp::listen(addr, cfg)?,
        };
        Ok(Pipe::from_core(core))
    }

    /// The protocol.
    pub fn proto(&self) -> Proto {
        self.core().proto
    }

    /// The local address (with the port actually bound).
    pub fn local_addr(&self) -> SocketAddr {
        self.core().local
    }

    /// The peer: the connected address, or the UDP default peer. `None` for a
    /// listener.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.core().peer
    }

    /// Whether this pipe is a listener.
    pub fn is_listener(&self) -> bool {
        self.core().is_listener()
    }

    /// The pipe's framing.
    pub fn framing(&self) -> &Framing {
        &self.core().cfg.framing
    }

    /// Counters.
    pub fn stats(&self) -> PipeStats {
        let c = self.core();
        PipeStats {
            received: c.received.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed) + c.flow.dropped(),
            queued: c.flow.len(),
        }
    }

    /// Sends one message to the pipe's peer, framed by the pipe's framing.
    ///
    /// On TCP this returns when the bytes are written to the socket, so a slow
    /// peer slows the sender down. Concurrent sends do not interleave.
    ///
    /// # Cancel safety
    ///
    /// It may be wrapped in `tokio::time::timeout` or raced in `select!`. What a dropped send leaves
    /// depends on where it stopped, and it is not counted in [`PipeStats::sent`]:
    ///
    /// - On UDP, nothing: a datagram goes out whole or not at all.
    /// - On TCP, a send dropped while it waits for its turn behind other sends has
    ///   written nothing. One dropped while its bytes are being written (the peer
    ///   does not read and the socket's buffer is full) may have written the first
    ///   part of the framed message, and the rest never follows, so the peer would
    ///   see a broken frame: close the connection after cancelling such a send.
    pub async fn send(&self, data: impl AsRef<[u8]>) -> Result<()> {
        let c = self.core();
        let data = data.as_ref();
        let r = match &c.io {
            Io::Tcp(w) => w.send(c, data, false).await,
            Io::Udp(s) => match c.peer {
                Some(peer) => s.send_to(c, data, peer).await,
                None => Err(Error::NoPeer),
            },
            Io::TcpListener(_) | Io::UdpListener(..) => Err(Error::NoPeer),
        };
        c.count_sent(r)
    }

    /// Writes `data` as it is, without the pipe's framing: for protocols that
    /// stream a body after a header they wrote themselves (a btpeer reply carrying a
    /// file, say). The frame limit does not apply. On UDP it sends one datagram, as
    /// [`send`](Self::send) does.
    ///
    /// # Cancel safety
    ///
    /// As [`Pipe::send`]: on TCP, a send dropped while writing may have written
    /// the first part of `data`.
    pub async fn send_raw(&self, data: impl AsRef<[u8]>) -> Result<()> {
        let c = self.core();
        match &c.io {
            Io::Tcp(w) => c.count_sent(w.send(c, data.as_ref(), true).await),
            _ => self.send(data).await,
        }
    }

    /// Writes `parts` back to back, without the pipe's framing and with no other send
    /// between them: a header built on the stack and a payload the caller already holds
    /// go out as one message without being copied together first. On TCP, parts of up to
    /// 16 KiB in all are written in one call. On UDP the parts are joined into one
    /// datagram.
    ///
    /// # Cancel safety
    ///
    /// As [`Pipe::send`]: on TCP, a send dropped while writing may have written
    /// the first part of the parts.
    pub async fn send_raw_parts(&self, parts: &[&[u8]]) -> Result<()> {
        let c = self.core();
        match &c.io {
            Io::Tcp(w) => c.count_sent(w.write(c, parts).await),
            _ => self.send(parts.concat()).await,
        }
    }

    /// Sends one message to `to`. On UDP any address may be given; on a
    /// listener it goes to that peer's connection or peer pipe; on a TCP
    /// connection only its peer is accepted.
    ///
    /// # Cancel safety
    ///
    /// As [`Pipe::send`].
    pub async fn send_to(&self, data: impl AsRef<[u8]>, to: SocketAddr) -> Result<()> {
        let c = self.core();
        let data = data.as_ref();
        // Peers are known by canonical address: an IPv4-mapped form names
        // the same IPv4 peer.
        let to = canonical(to);
        let r = match &c.io {
            Io::Udp(s) => s.send_to(c, data, to).await,
            Io::UdpListener(_, s) => s.send_to(c, data, to).await,
            Io::Tcp(w) if c.peer == Some(to) => w.send(c, data, false).await,
            Io::Tcp(_) => Err(Error::UnknownPeer(to)),
            Io::TcpListener(children) => match children.get(&to) {
                Some(child) => match &child.io {
                    Io::Tcp(w) => w.send(&child, data, false).await,
                    _ => Err(Error::UnknownPeer(to)),
                },
                None => Err(Error::UnknownPeer(to)),
            },
        };
        c.count_sent(r)
    }

    /// Waits for the next message of the pipe's flow (see the module docs).
    /// On a listener, this is the next message from any of its peers; reply
    /// with [`Pipe::send_to`] and the message's `peer`.
    ///
    /// Returns [`Error::Ended`] once the pipe has ended and every message that
    /// arrived before has been received.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, and fit for `tokio::time::timeout` or `select!`: a message
    /// is removed from the flow only in the poll that returns it, so if the
    /// future is dropped nothing is lost, and the next `recv` gets that message.
    pub async fn recv(&self) -> Result<Message> {
        let c = self.core();
        if c.is_listener() {
            self.merge_flows()?;
        } else {
            if c.consumer.load(Ordering::Acquire) != PULL {
                return Err(Error::HandlerAttached);
            }
            // Only a background reader queues on a connection's flow.
            if c.background.load(Ordering::Acquire) {
                if let Ok(m) = c.flow.try_pop() {
                    return Ok(m);
                }
            }
            // Read the socket here, unless a background task owns it.
            if let Some(r) = c.recv_inline().await {
                return r.map_err(Error::Ended);
            }
        }
        match c.flow.pop().await {
            Some(m) => Ok(m),
            None => Err(Error::Ended(c.end_or_closed())),
        }
    }

    /// As [`Pipe::recv`], giving up after `limit` with [`Error::Timeout`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Pipe::recv`]: a message is lost neither to the time
    /// limit nor to dropping the future.
    pub async fn recv_timeout(&self, limit: Duration) -> Result<Message> {
        match tokio::time::timeout(limit, self.recv()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(limit)),
        }
    }

    /// The pipe's flow as a [`Stream`], ending when the pipe ends. Takes the
    /// same messages as [`Pipe::recv`].
    pub fn stream(&self) -> MessageStream {
        let pipe = self.clone();
        MessageStream(Box::pin(futures::stream::unfold(pipe, |p| async move {
            match p.recv().await {
                Ok(m) => Some((m, p)),
                Err(_) => None,
            }
        })))
    }

    /// Subscribes to messages whose bytes match `pattern` (a regular
    /// expression over bytes, unanchored unless it says `^`), and, if `peer`
    /// is given, that come from that address (an IPv4-mapped IPv6 address
    /// means its IPv4 address, as peers are reported). Uses the config's subscription
    /// queue size and overflow policy. Dropping the subscription unsubscribes.
    pub fn subscribe(&self, pattern: &str, peer: Option<SocketAddr>) -> Result<Subscription> {
        let cfg = &self.core().cfg;
        self.subscribe_with(pattern, peer, cfg.sub_capacity, cfg.sub_overflow)
    }

    /// Subscribes with a queue of `capacity` messages and the given overflow
    /// policy ([`Overflow::Block`] is treated as [`Overflow::DropNewest`]:
    /// a subscription never holds up its pipe).
    pub fn subscribe_with(
        &self,
        pattern: &str,
        peer: Option<SocketAddr>,
        capacity: usize,
        overflow: Overflow,
    ) -> Result<Subscription> {
        subscribe::validate(pattern)?;
        let overflow = never_block(overflow);
        let c = self.core();
        // Messages carry canonical peers; match an IPv4-mapped filter too.
        let peer = peer.map(canonical);
        let (id, queue) = c.subs.add(pattern, peer, capacity, overflow);
        if c.end_reason().is_some() {
            queue.close();
        }
        // A subscriber may never call `recv`: make sure something reads.
        c.read_in_background();
        Ok(Subscription {
            core: c.clone(),
            id,
            queue,
        })
    }

    /// Sends every message of the pipe's flow to `handler`, with a handle to
    /// reply on. Messages already waiting come first, in order; the handler
    /// runs for one message at a time. On a listener, the handler serves every
    /// peer, each with its own reply pipe, and the listener stays open until
    /// it is closed.
    ///
    /// A handler that returns an error is logged and goes on; one that panics
    /// is logged and goes on with the next message. A pipe has one flow
    /// consumer: this fails with [`Error::HandlerAttached`] if a handler or link
    /// is already attached.
    ///
    /// The handler runs in the task that reads the socket: for a connection,
    /// a task of the pipe's own; for a peer of a UDP listener, the listener's
    /// task, as long as the handler finishes without waiting. A handler that
    /// waits moves to a task of its own until it and the messages that queued
    /// behind it are done, so it holds up only its own peer.
    pub fn on_message<F, Fut>(&self, handler: F) -> Result<()>
    where
        F: Fn(Message, Pipe) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        self.attach(Arc::new(handler))
    }

    /// Relays: every message of this pipe's flow is sent down `to`. Two calls
    /// make a two-way relay. The link ends when either pipe ends; when this
    /// pipe ends, `to` is closed too.
    pub fn link(&self, to: &Pipe) -> Result<()> {
        let c = self.core();
        if c.is_listener() {
            return Err(Error::Unsupported(
                "link needs a connection, not a listener",
            ));
        }
        self.take_flow(HANDLER)?;
        let from = self.clone();
        let to = to.clone();
        tokio::spawn(async move {
            let sink = to.clone();
            consume(from.core().clone(), move |m| {
                let sink = sink.clone();
                async move { sink.send(&m.data).await.is_ok() }
            })
            .await;
            if from.end_reason().is_some() {
                to.close().await;
            } else {
                // `to` failed: nothing more can be relayed.
                from.core().shutdown();
            }
        });
        Ok(())
    }

    /// Calls `handler` when a peer comes up: on a listener, with every new
    /// peer's pipe (TCP connection or UDP peer); on a connection, once, now.
    pub fn on_up<F, Fut>(&self, handler: F)
    where
        F: Fn(Pipe) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let h: UpFn = Arc::new(move |p| handler(p).boxed());
        if self.is_listener() {
            self.core().handlers().up.push(h);
        } else {
            tokio::spawn(guarded(h(self.clone())));
        }
    }

    /// Calls `handler` when the pipe ends, with the reason: FIN, reset, a bad
    /// frame, or a local close. On a listener it is called for the end of
    /// each of its peers, and for the listener's own. If the pipe has already
    /// ended, it is called at once.
    pub fn on_end<F, Fut>(&self, handler: F)
    where
        F: Fn(EndEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let h: EndFn = Arc::new(move |ev| handler(ev).boxed());
        let c = self.core();
        c.handlers().end.push(h.clone());
        if let Some(reason) = c.end_reason() {
            tokio::spawn(guarded(h(c.event(reason))));
        }
        // An end is only seen by reading: make sure something reads.
        c.read_in_background();
    }

    /// Why the pipe ended, if it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.core().end_reason()
    }

    /// Sends one datagram to a UDP pipe's default peer if it can go without waiting:
    /// `Ok(false)`, with nothing sent, when the socket has no room or the pipe is not a
    /// UDP pipe with a peer (use [`send`](Self::send) then). Allocates nothing; counted
    /// in `sent` as `send` is.
    pub(crate) fn try_send(&self, data: &[u8]) -> Result<bool> {
        let c = self.core();
        match (&c.io, c.peer) {
            (Io::Udp(s), Some(peer)) => {
                let r = s.try_send_to(c, data, peer);
                if matches!(r, Ok(true)) {
                    c.sent.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
            _ => Ok(false),
        }
    }

    /// Watches the pipe's end without holding it open (the layers above, that must
    /// learn when a pipe they feed is closed or dropped): the value turns `Some` when
    /// the pipe ends, and the watch closes when the pipe is gone. Starts no reader.
    pub(crate) fn end_watch(&self) -> tokio::sync::watch::Receiver<Option<EndReason>> {
        self.core().end.subscribe()
    }

    /// The frame limit of the pipe's config: the largest message it sends or takes.
    pub(crate) fn max_frame(&self) -> usize {
        self.core().cfg.max_frame
    }

    /// Waits until the pipe ends, and says why.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, and fit for `tokio::time::timeout`: dropping the future
    /// loses nothing; the reason stays for the next call.
    pub async fn ended(&self) -> EndReason {
        self.core().read_in_background();
        let mut rx = self.core().end.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        reason.unwrap_or(EndReason::Closed)
    }

    /// Waits for the next peer of a listener: a TCP connection, or a UDP peer
    /// address seen for the first time, as its own pipe. Peers come in the
    /// order they arrived, each exactly once. What a peer sent before it was
    /// accepted waits in its pipe.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, and fit for `tokio::time::timeout` or `select!`: a peer is
    /// taken from the backlog only in the poll that returns it, so if the
    /// future is dropped nothing is lost, and the next `accept` gets that peer.
    pub async fn accept(&self) -> Result<Pipe> {
        let c = self.core();
        let Some(ch) = c.children() else {
            return Err(Error::Unsupported("accept needs a listener"));
        };
        if c.consumer.load(Ordering::Acquire) != PULL {
            return Err(Error::HandlerAttached);
        }
        match ch.backlog.pop().await {
            Some(p) => Ok(p),
            None => Err(Error::Ended(c.end_or_closed())),
        }
    }

    /// As [`Pipe::accept`], and also gives the peer's address, as tokio's
    /// `TcpListener::accept` does.
    ///
    /// # Cancel safety
    ///
    /// As [`Pipe::accept`]: nothing is lost if the future is dropped.
    pub async fn accept_from(&self) -> Result<(Pipe, SocketAddr)> {
        let pipe = self.accept().await?;
        let peer = pipe
            .core()
            .peer
            .expect("a peer of a listener has an address");
        Ok((pipe, peer))
    }

    /// Closes the pipe: a TCP connection is shut down (FIN) and released; a
    /// listener stops and its port is free for an immediate rebind when this
    /// returns. Peers of a UDP listener end with it; accepted TCP connections
    /// go on. Closing twice is harmless.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, and fit for `tokio::time::timeout`: the pipe has ended
    /// (`Closed`) from the first poll on, and if the future is dropped before
    /// it completes, the socket is released all the same; only the wait for
    /// the pipe's tasks to be gone is skipped.
    pub async fn close(&self) {
        self.core().close(Close::Fin).await;
    }

    /// Aborts the pipe: a TCP connection is reset (RST, SO_LINGER 0) instead of shut
    /// down, and data not yet sent is discarded; for everything else it is
    /// [`close`](Self::close). For tests of what peers do when a connection breaks.
    ///
    /// # Cancel safety
    ///
    /// As [`close`](Self::close).
    pub async fn abort(&self) {
        self.core().close(Close::Reset).await;
    }
}

/// A pipe's flow as a [`Stream`] of messages. Made by [`Pipe::stream`].
pub struct MessageStream(BoxStream<'static, Message>);

impl Stream for MessageStream {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for MessageStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MessageStream")
    }
}

/// A subscription: the messages of one pipe that match a pattern (and a peer),
/// in a bounded queue of their own. Dropping it unsubscribes.
pub struct Subscription {
    core: Arc<Core>,
    id: u64,
    queue: Arc<Queue<Message>>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("queued", &self.queue.len())
            .field("dropped", &self.queue.dropped())
            .finish()
    }
}

impl Subscription {
    /// Waits for the next matching message. Returns [`Error::Ended`] once the
    /// pipe has ended and the queue is drained.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken only when it is returned.
    pub async fn recv(&self) -> Result<Message> {
        match self.queue.pop().await {
            Some(m) => Ok(m),
            None => Err(Error::Ended(self.core.end_or_closed())),
        }
    }

    /// As [`Subscription::recv`], giving up after `limit` with [`Error::Timeout`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn recv_timeout(&self, limit: Duration) -> Result<Message> {
        match tokio::time::timeout(limit, self.recv()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(limit)),
        }
    }

    /// Takes a waiting message, if there is one.
    pub fn try_recv(&self) -> Option<Message> {
        self.queue.try_pop().ok()
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages the overflow policy dropped.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Messages handed out so far.
    pub fn delivered(&self) -> u64 {
        self.queue.delivered()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.core.subs.remove(self.id);
    }
}
