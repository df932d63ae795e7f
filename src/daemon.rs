//! The Daemon: one handler served on many addresses, ports and protocols.
//!
//! ```no_run
//! use std::time::Duration;
//! use p2pipe::{Daemon, Message, Pipe, Proto};
//! # async fn demo() -> Result<(), p2pipe::daemon::Error> {
//! let echo = |msg: Message, reply: Pipe| async move { reply.send(&msg.data).await };
//! let daemon = Daemon::builder(echo)
//!     .listen_all(
//!         ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
//!         [0],
//!         [Proto::Tcp, Proto::Udp],
//!     )
//!     .idle_timeout(Duration::from_secs(60))
//!     .max_connections(10_000)
//!     .start()
//!     .await?;
//! for (proto, addr) in daemon.local_addrs() {
//!     println!("serving {proto} on {addr}");
//! }
//! daemon.shutdown(Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! Every TCP connection, and every UDP peer address, is served by its own
//! task: the handler sees one message at a time from that peer, in order,
//! with a [`Pipe`] to reply on. (A UDP peer's handler is run by its listener's
//! task as each datagram is read, as [`Pipe::on_message`] runs it, and moves to
//! a task of its own only while it has to wait; the peer's task watches for its
//! end, its idle limit and the daemon's stop.) A handler that fails or panics is
//! counted and logged; the panicking peer's connection is closed and every other
//! peer is served on.

use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::pipe::{self, HandlerOutput, Message, Pipe, PipeConfig, Proto};

/// Errors from the daemon layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be started.
    #[error("cannot listen on {proto} {addr}: {source}")]
    Listen {
        /// The protocol.
        proto: Proto,
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: pipe::Error,
    },
    /// No listener was configured.
    #[error("no address to listen on")]
    NoListeners,
}

/// What a daemon serves: called for every message, one at a time per peer.
///
/// Any `Fn(Message, Pipe) -> impl Future` whose output is `()` or a
/// `Result<(), E: Display>` is a handler.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. `reply` is the peer's pipe.
    ///
    /// # Cancel safety
    ///
    /// The daemon drops the future if the peer's task is stopped at the
    /// shutdown deadline; otherwise it runs to completion.
    fn on_message(
        &self,
        msg: Message,
        reply: Pipe,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Called when a peer comes up, before its first message.
    ///
    /// A session protocol may serve the whole connection here (the mesh does): read
    /// the pipe to its end and close it, and the daemon's message loop then ends at
    /// once. Such a handler watches its own shutdown; the daemon's deadline still
    /// stops it.
    ///
    /// # Cancel safety
    ///
    /// As [`Handler::on_message`].
    fn on_connect(&self, _peer: &Pipe) -> impl Future<Output = ()> + Send {
        async {}
    }
}

impl<F, Fut> Handler for F
where
    F: Fn(Message, Pipe) -> Fut + Send + Sync + 'static,
    Fut: Future + Send,
    Fut::Output: HandlerOutput,
{
    fn on_message(
        &self,
        msg: Message,
        reply: Pipe,
    ) -> impl Future<Output = Result<(), String>> + Send {
        // `map`, not an async block awaiting `fut`: that would hold `fut` twice over.
        self(msg, reply).map(HandlerOutput::into_result)
    }
}

/// Counters of a running daemon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaemonStats {
    /// Peers served since start (TCP connections and UDP peers).
    pub accepted: u64,
    /// Peers turned away by the connection limit.
    pub rejected: u64,
    /// Peers being served now.
    pub active: u64,
    /// Messages handled.
    pub messages: u64,
    /// Handler calls that returned an error.
    pub handler_errors: u64,
    /// Handler calls that panicked.
    pub handler_panics: u64,
    /// Peers closed by the idle limit.
    pub idle_closed: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    messages: AtomicU64,
    handler_errors: AtomicU64,
    handler_panics: AtomicU64,
    idle_closed: AtomicU64,
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Peers that finished within the deadline.
    pub finished: usize,
    /// Peers still busy at the deadline, whose tasks were stopped.
    pub aborted: usize,
}

/// Sets up a [`Daemon`].
pub struct Builder<H> {
    handler: H,
    cfg: PipeConfig,
    binds: Vec<(Proto, SocketAddr)>,
    max_connections: usize,
    idle_timeout: Option<Duration>,
}

impl<H: Handler> Builder<H> {
    /// The pipe config of every listener (framing, frame limit, queues).
    pub fn config(mut self, cfg: PipeConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Adds one listener.
    pub fn listen(mut self, proto: Proto, addr: SocketAddr) -> Self {
        self.binds.push((proto, addr));
        self
    }

    /// Adds a listener for every address × port × protocol. Port 0 picks one
    /// free port, shared by all the listeners of that entry when the system
    /// allows it.
    pub fn listen_all(
        mut self,
        addrs: impl IntoIterator<Item = IpAddr>,
        ports: impl IntoIterator<Item = u16>,
        protos: impl IntoIterator<Item = Proto>,
    ) -> Self {
        let addrs: Vec<IpAddr> = addrs.into_iter().collect();
        let protos: Vec<Proto> = protos.into_iter().collect();
        for port in ports {
            for ip in &addrs {
                for proto in &protos {
                    self.binds.push((*proto, SocketAddr::new(*ip, port)));
                }
            }
        }
        self
    }

    /// Adds a listener for every route of `routes` (on its first NIC address) × port ×
    /// protocol, as [`listen_all`](Self::listen_all) does for addresses.
    pub fn listen_routes(
        self,
        routes: &crate::iface::RoutePool,
        ports: impl IntoIterator<Item = u16>,
        protos: impl IntoIterator<Item = Proto>,
    ) -> Self {
        let addrs: Vec<IpAddr> = routes.iter().map(|r| r.local_ip()).collect();
        self.listen_all(addrs, ports, protos)
    }

    /// Most peers served at once (default 10,000). Further TCP connections
    /// are closed at once and further UDP peers ignored; both are counted.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Closes a peer that sends nothing for this long (default: never).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = Some(d);
        self
    }

    /// Binds every listener and starts serving. Fails, releasing what it had
    /// bound, if any listener cannot be bound.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: listeners bound so far are closed when the future is dropped.
    pub async fn start(self) -> Result<Daemon, Error> {
        if self.binds.is_empty() {
            return Err(Error::NoListeners);
        }
        let listeners = bind_all(&self.binds, &self.cfg).await?;
        let shared = Arc::new(Shared {
            handler: self.handler,
            limit: Arc::new(Semaphore::new(self.max_connections)),
            max_connections: self.max_connections,
            idle: self.idle_timeout,
            counters: Counters::default(),
            graceful: Stop::default(),
            hard: Stop::default(),
            tracker: TaskTracker::new(),
        });
        let local: Vec<(Proto, SocketAddr)> = listeners
            .iter()
            .map(|l| (l.proto(), l.local_addr()))
            .collect();
        let accept_tasks = TaskTracker::new();
        for l in &listeners {
            accept_tasks.spawn(accept_loop(shared.clone(), l.clone()));
        }
        accept_tasks.close();
        for (proto, addr) in &local {
            tracing::info!(%proto, %addr, "daemon listening");
        }
        Ok(Daemon {
            shared,
            listeners,
            local,
            accept_tasks,
        })
    }
}

/// Binds the listeners, giving every port-0 entry one shared port if it can.
async fn bind_all(binds: &[(Proto, SocketAddr)], cfg: &PipeConfig) -> Result<Vec<Pipe>, Error> {
    let mut out = Vec::with_capacity(binds.len());
    let mut shared_port: Option<u16> = None;
    // A few tries: another program may take the port between two binds.
    'attempt: for attempt in 0..8 {
        for (i, &(proto, addr)) in binds.iter().enumerate() {
            let want = match (addr.port(), shared_port) {
                (0, Some(p)) => SocketAddr::new(addr.ip(), p),
                _ => addr,
            };
            match Pipe::listen_with(proto, want, cfg).await {
                Ok(l) => {
                    if addr.port() == 0 && shared_port.is_none() {
                        shared_port = Some(l.local_addr().port());
                    }
                    out.push(l);
                }
                Err(source) => {
                    let in_use = matches!(&source, pipe::Error::Bind { source, .. }
                        if source.kind() == std::io::ErrorKind::AddrInUse);
                    for l in out.drain(..) {
                        l.close().await;
                    }
                    if addr.port() == 0 && in_use && attempt < 7 && i > 0 {
                        shared_port = None;
                        continue 'attempt;
                    }
                    return Err(Error::Listen {
                        proto,
                        addr,
                        source,
                    });
                }
            }
        }
        break;
    }
    Ok(out)
}

struct Shared<H> {
    handler: H,
    limit: Arc<Semaphore>,
    max_connections: usize,
    idle: Option<Duration>,
    counters: Counters,
    /// Stop taking new peers and new messages.
    graceful: Stop,
    /// Stop everything now.
    hard: Stop,
    tracker: TaskTracker,
}

/// A stop signal that tasks check on every wake-up: a flag read without a lock,
/// and a token whose cancellation wakes the tasks waiting on it.
#[derive(Default)]
struct Stop {
    set: AtomicBool,
    token: CancellationToken,
}

impl Stop {
    fn fire(&self) {
        self.set.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// A watch of this signal for one task; `wait` is `self.token.cancelled()`.
    fn watch<'s, 'p>(&'s self, wait: Pin<&'p mut WaitForCancellationFuture<'s>>) -> Watch<'s, 'p> {
        Watch {
            stop: self,
            wait,
            armed: None,
        }
    }
}

/// One task's view of a [`Stop`]. A biased `select!` on `token.cancelled()` would
/// lock the token twice on every wake-up (and twice more for a fresh future per
/// message); a watch registers the task's waker with the token once, and then only
/// reads the flag, which is set before the token wakes anyone.
struct Watch<'s, 'p> {
    stop: &'s Stop,
    wait: Pin<&'p mut WaitForCancellationFuture<'s>>,
    /// The waker the token wakes.
    armed: Option<Waker>,
}

impl Watch<'_, '_> {
    fn poll_fired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.stop.set.load(Ordering::Acquire) {
            return true;
        }
        if self.armed.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return false;
        }
        if self.wait.as_mut().poll(cx).is_ready() {
            return true;
        }
        self.armed = Some(cx.waker().clone());
        false
    }

    /// Runs `fut` unless the signal fires first (checked before each poll of
    /// `fut`, as a biased `select!` does); `None` if it fired. The waker is
    /// registered only once `fut` has to wait: a future done at its first poll
    /// costs one atomic load.
    ///
    /// `fut` is pinned by the caller, so that it is stored once, not copied into
    /// this future (a handler's future can be large).
    async fn unless<F: Future>(&mut self, mut fut: Pin<&mut F>) -> Option<F::Output> {
        poll_fn(|cx| {
            if self.stop.set.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            match self.poll_fired(cx) {
                true => Poll::Ready(None),
                false => Poll::Pending,
            }
        })
        .await
    }
}

async fn accept_loop<H: Handler>(shared: Arc<Shared<H>>, listener: Pipe) {
    let wait = pin!(shared.graceful.token.cancelled());
    let mut graceful = shared.graceful.watch(wait);
    loop {
        let peer = match graceful.unless(pin!(listener.accept())).await {
            Some(Ok(p)) => p,
            Some(Err(_)) | None => return,
        };
        let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = ?peer.peer_addr(), "connection limit reached");
            drop(peer);
            continue;
        };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let s = shared.clone();
        shared.tracker.spawn(async move {
            let wait = pin!(s.hard.token.cancelled());
            let mut hard = s.hard.watch(wait);
            hard.unless(pin!(serve(&s, &peer))).await;
            peer.close().await;
            drop(permit);
        });
    }
}

/// Serves one peer until it ends, idles out, or the daemon stops.
async fn serve<H: Handler>(s: &Arc<Shared<H>>, peer: &Pipe) {
    s.handler.on_connect(peer).await;
    if serve_datagrams(s, peer).await {
        return;
    }
    let wait = pin!(s.graceful.token.cancelled());
    let mut graceful = s.graceful.watch(wait);
    loop {
        let Some(next) = graceful.unless(pin!(recv_within(peer, s.idle))).await else {
            return;
        };
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(_)) => return,
            None => {
                s.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if !handled(s, peer, s.handler.on_message(msg, peer.clone())).await {
            return;
        }
    }
}

/// Runs one message's handler and counts how it went; false if it panicked.
/// (Combinators, not an async fn, so that `fut` is held once.)
fn handled<'a, H: Handler>(
    s: &'a Shared<H>,
    peer: &'a Pipe,
    fut: impl Future<Output = Result<(), String>> + 'a,
) -> impl Future<Output = bool> + 'a {
    s.counters.messages.fetch_add(1, Ordering::Relaxed);
    AssertUnwindSafe(fut).catch_unwind().map(move |r| match r {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            s.counters.handler_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = ?peer.peer_addr(), error = %e, "handler failed");
            true
        }
        Err(_) => {
            s.counters.handler_panics.fetch_add(1, Ordering::Relaxed);
            tracing::error!(peer = ?peer.peer_addr(), "handler panicked; closing this peer");
            false
        }
    })
}

/// A UDP peer's handler, which its listener runs as each datagram is read (see
/// `serve_datagrams`), shares this with the peer's task.
struct Datagrams {
    /// `FREE`, `BUSY` while a message is handled, `STOPPED` once no message may start.
    state: AtomicU8,
    /// Notified when a message is done.
    done: Notify,
    /// Notified when a handler panicked.
    panicked: Notify,
    /// When the last message was done, in nanoseconds after `epoch` (kept with an
    /// idle limit only).
    last: AtomicU64,
    epoch: Instant,
}

const FREE: u8 = 0;
const BUSY: u8 = 1;
const STOPPED: u8 = 2;

impl Datagrams {
    fn touch(&self) {
        let since = self.epoch.elapsed().as_nanos();
        self.last
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// When the peer goes idle, unless a message comes first.
    fn idle_at(&self, idle: Duration) -> Instant {
        match self.state.load(Ordering::Acquire) {
            BUSY => Instant::now() + idle,
            _ => self.epoch + Duration::from_nanos(self.last.load(Ordering::Acquire)) + idle,
        }
    }

    /// Lets no further message start, once the one being handled is done.
    async fn stop(&self) {
        loop {
            let mut done = pin!(self.done.notified());
            done.as_mut().enable();
            match self
                .state
                .compare_exchange(FREE, STOPPED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) | Err(STOPPED) => return,
                Err(_) => done.await,
            }
        }
    }
}

/// Serves a UDP listener's peer: the listener's task runs the handler as soon as it
/// reads a datagram (see `pipe/inline.rs`), instead of queueing it for this task,
/// which only waits for the peer's end, the idle limit, a panic or the daemon's stop,
/// and then for the message in hand. False, having done nothing, for other pipes.
async fn serve_datagrams<H: Handler>(s: &Arc<Shared<H>>, peer: &Pipe) -> bool {
    let st = Arc::new(Datagrams {
        state: AtomicU8::new(FREE),
        done: Notify::new(),
        panicked: Notify::new(),
        last: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    let handler = {
        let (s, st) = (s.clone(), st.clone());
        move |msg: Message, reply: Pipe| {
            let (s, st) = (s.clone(), st.clone());
            async move { handle_datagram(&s, &st, msg, reply).await }
        }
    };
    if !peer.serve_inline(Arc::new(handler)) {
        return false;
    }
    let wait = pin!(s.graceful.token.cancelled());
    let mut graceful = s.graceful.watch(wait);
    let until = async {
        tokio::select! {
            _ = peer.ended() => {}
            _ = st.panicked.notified() => {}
            _ = idle_out(s.idle, &st) => {
                s.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    graceful.unless(pin!(until)).await;
    st.stop().await;
    true
}

/// Handles one datagram, unless the peer's task stopped handling or the daemon is
/// stopping.
async fn handle_datagram<H: Handler>(s: &Shared<H>, st: &Datagrams, msg: Message, reply: Pipe) {
    if st
        .state
        .compare_exchange(FREE, BUSY, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let mut next = FREE;
    if !s.graceful.set.load(Ordering::Acquire) {
        let wait = pin!(s.hard.token.cancelled());
        let mut hard = s.hard.watch(wait);
        // The handler is called inside the guard, so that a panic in the call
        // itself is caught too: it must not reach the listener's task.
        let fut = async { s.handler.on_message(msg, reply.clone()).await };
        if hard.unless(pin!(handled(s, &reply, fut))).await == Some(false) {
            next = STOPPED;
            st.panicked.notify_one();
        }
        if s.idle.is_some() {
            st.touch();
        }
    }
    st.state.store(next, Ordering::Release);
    st.done.notify_one();
}

/// Returns once the peer has been idle for `idle`; never without a limit.
async fn idle_out(idle: Option<Duration>, st: &Datagrams) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        let at = st.idle_at(idle);
        if at <= Instant::now() {
            return;
        }
        tokio::time::sleep_until(at).await;
    }
}

/// The next message, or `None` if the idle limit passed first.
pub(crate) async fn recv_within(
    peer: &Pipe,
    idle: Option<Duration>,
) -> Option<pipe::Result<Message>> {
    match idle {
        Some(d) => tokio::time::timeout(d, peer.recv()).await.ok(),
        None => Some(peer.recv().await),
    }
}

/// A running daemon. Dropping it stops it at once; [`Daemon::shutdown`] stops
/// it gracefully.
pub struct Daemon {
    shared: Arc<dyn Control>,
    listeners: Vec<Pipe>,
    local: Vec<(Proto, SocketAddr)>,
    accept_tasks: TaskTracker,
}

/// The parts of the shared state that do not depend on the handler type.
trait Control: Send + Sync {
    fn graceful(&self) -> &Stop;
    fn hard(&self) -> &Stop;
    fn tracker(&self) -> &TaskTracker;
    fn stats(&self) -> DaemonStats;
}

impl<H: Handler> Control for Shared<H> {
    fn graceful(&self) -> &Stop {
        &self.graceful
    }
    fn hard(&self) -> &Stop {
        &self.hard
    }
    fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }
    fn stats(&self) -> DaemonStats {
        let c = &self.counters;
        DaemonStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            active: (self.max_connections - self.limit.available_permits()) as u64,
            messages: c.messages.load(Ordering::Relaxed),
            handler_errors: c.handler_errors.load(Ordering::Relaxed),
            handler_panics: c.handler_panics.load(Ordering::Relaxed),
            idle_closed: c.idle_closed.load(Ordering::Relaxed),
        }
    }
}

impl Daemon {
    /// Starts setting up a daemon that serves `handler`.
    pub fn builder<H: Handler>(handler: H) -> Builder<H> {
        Builder {
            handler,
            cfg: PipeConfig::default(),
            binds: Vec::new(),
            max_connections: 10_000,
            idle_timeout: None,
        }
    }

    /// The addresses actually bound, with their protocols, in the order given.
    pub fn local_addrs(&self) -> &[(Proto, SocketAddr)] {
        &self.local
    }

    /// Counters.
    pub fn stats(&self) -> DaemonStats {
        self.shared.stats()
    }

    /// Stops gracefully: closes every listener at once (its port is free for
    /// a rebind when this returns), lets each peer finish the message it is
    /// handling, and stops whatever is still running at `deadline`.
    ///
    /// # Cancel safety
    ///
    /// If cancelled, the daemon has stopped taking peers; dropping it then
    /// stops the rest at once.
    pub async fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        self.stop(deadline).await
    }

    async fn stop(&mut self, deadline: Duration) -> ShutdownReport {
        let s = &self.shared;
        let busy = s.tracker().len();
        s.graceful().fire();
        for l in self.listeners.drain(..) {
            l.close().await;
        }
        self.accept_tasks.wait().await;
        s.tracker().close();
        if tokio::time::timeout(deadline, s.tracker().wait())
            .await
            .is_ok()
        {
            return ShutdownReport {
                finished: busy,
                aborted: 0,
            };
        }
        let left = s.tracker().len();
        s.hard().fire();
        s.tracker().wait().await;
        ShutdownReport {
            finished: busy - left,
            aborted: left,
        }
    }

    /// Serves until `signal` completes, then shuts down with `deadline`.
    ///
    /// # Cancel safety
    ///
    /// As [`Daemon::shutdown`].
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()>,
        deadline: Duration,
    ) -> ShutdownReport {
        signal.await;
        self.shutdown(deadline).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shared.graceful().fire();
        self.shared.hard().fire();
    }
}
