//! The tokio driver of a secure path: runs the handshake core (`handshake.rs`) on a raw
//! pipe, then the data phase (`secure.rs`) between the raw pipe and a secure one.
//!
//! # The raw pipe
//!
//! A TCP raw pipe must use [`Framing::LengthPrefixed`]: each packet is one frame (the
//! raw pipe's frame limit bounds what an unauthenticated peer can make this side hold;
//! 65,544 bytes, `secure::MAX_PACKET`, is the most a path needs). A UDP raw pipe must have a default peer (a
//! connected, punched, adopted or relayed pipe): handshake packets from any other
//! address are ignored, and everything is sent to it.
//!
//! # The secure pipe
//!
//! With [`PathOptions::encrypt`] (the default) the [`SecurePath`]'s pipe is a message
//! pipe over a link (`Pipe::over_link`), labelled with the raw pipe's protocol and
//! addresses:
//!
//! - A send seals the message into a buffer the path reuses and returns; a writer task
//!   sends what the buffer holds down the raw pipe (on TCP in one write, on UDP one
//!   datagram per packet). When the buffer holds more than [`QUEUED`] bytes, sends
//!   wait: a peer that does not read slows the sender down.
//! - A reader task reads the raw pipe, opens each packet, puts fragments together and
//!   hands messages to the secure pipe through a bounded channel, waiting when it is
//!   full: on TCP (whose flow blocks) a slow reader loses nothing, and the raw pipe
//!   stops being read, which pushes back on the peer.
//! - Closing or dropping the secure pipe sends a close packet after what is queued, then
//!   closes the raw pipe. The raw pipe's end ends the secure pipe once what arrived
//!   before is read: `Fin` after the peer's close packet, `Reset` when a TCP path ends
//!   without one (it was cut).
//!
//! Without `encrypt` the raw pipe itself is handed back once the peer has proven its
//! key: for interop and benchmarks. Nothing after the handshake is authenticated then,
//! and on UDP a lost msg3 shows up at the initiator's application as the responder's
//! repeated msg2.
//!
//! # Moving to another raw path
//!
//! [`migrate`] moves a secure path to a new raw pipe to the same peer (a relay replaced
//! by a direct path); both sides call it, each with its end of the new path, and the
//! secure pipe and its subscriptions carry on as they were:
//!
//! 1. The new path is proven with a keyed challenge bound to the session: each side
//!    sends a probe (a control packet sealed with the session's keys, carrying a fresh
//!    random challenge) on the new path and answers the other's probe with an ack
//!    carrying the same challenge. Only the peer holds the session's keys, so an ack
//!    that opens and echoes this side's challenge proves that the new path reaches the
//!    peer, now. A packet that this side sent and that came back does not open (each
//!    direction has its own key), and a packet copied from the old path is refused by
//!    its counter.
//! 2. Then this side seals a marker, the last packet it sends on the old path, and
//!    sends everything after it on the new one (on UDP the marker is sent twice; the
//!    copy is refused by the window).
//! 3. The reader keeps reading the old path until the peer's marker comes, holding the
//!    first data packet of the new path until then, so messages are delivered in the
//!    order they were sent. When both markers are through, the old path is closed.
//!
//! On TCP nothing is lost, duplicated or reordered across the switch (a TCP old path
//! that ends before the peer's marker ends the secure pipe, since what it carried
//! would be lost). On UDP loss remains possible as ever (a lost marker is waited for
//! [`HOLD`], then the old path is given up), but nothing is delivered twice, and
//! nothing from the old path is delivered after anything from the new one.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::handshake::{Done, Expect, Handshake, Hello, Step, Timing};
use super::secure::{self, records, Control, Limits, Opened, Opener, Sealer};
use super::Error;
use crate::addr::canonical;
use crate::identity::{Identity, NodeId, PublicKey};
use crate::pipe::relay::DatagramLink;
use crate::pipe::{EndReason, PipeConfig};
use crate::{Framing, Pipe, Proto};

/// Bytes of sealed packets a path holds for its writer before sends wait.
pub const QUEUED: usize = 256 * 1024;

/// Messages the reader hands on before it waits for the secure pipe to take them.
const INBOUND: usize = 64;

/// How long a UDP path waits for the peer's marker on the old path, holding the new
/// path's first data packet, before it gives the old path up (the marker was lost).
pub const HOLD: Duration = Duration::from_secs(1);

/// Options of a secure path.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PathOptions {
    /// Time limit for the handshake, and for the final flush and for a migration
    /// (default 10 s).
    pub limit: Duration,
    /// Encrypt the data phase (default `true`). `false` hands back the raw pipe once the
    /// peer has proven its key: nothing after the handshake is protected.
    pub encrypt: bool,
    /// The largest message either way (default 1 MiB). On UDP a message is one packet,
    /// so at most the raw pipe's largest datagram less [`OVERHEAD`](super::secure::OVERHEAD)
    /// (25 bytes).
    pub max_message: usize,
    pub(crate) timing: Timing,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            limit: Duration::from_secs(10),
            encrypt: true,
            max_message: 1 << 20,
            timing: Timing::default(),
        }
    }
}

/// A path to a peer whose node key is proven: the pipe to use, and who is at the other
/// end.
pub struct SecurePath {
    /// The pipe: secure (or, without encryption, the raw pipe). Its addresses are the
    /// raw pipe's.
    pub pipe: Pipe,
    /// The peer's node key.
    pub peer: PublicKey,
    /// The initiator's hello.
    pub(crate) hello: Hello,
    /// Moves the path to another raw pipe (`None` without encryption).
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "read by the node (p2p::node, written in parallel)"
        )
    )]
    pub(crate) mover: Option<Mover>,
}

impl std::fmt::Debug for SecurePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurePath")
            .field("pipe", &self.pipe)
            .field("peer", &NodeId::from_key(&self.peer))
            .field("hello", &self.hello)
            .finish_non_exhaustive()
    }
}

impl SecurePath {
    /// The peer's node id.
    pub fn peer_id(&self) -> NodeId {
        NodeId::from_key(&self.peer)
    }
}

/// Runs the initiator's handshake on `raw` with the node `peer`, carrying `hello`.
///
/// # Errors
///
/// [`Error::Unfit`] for a raw pipe that cannot carry a path; [`Error::ReachedSelf`],
/// [`Error::WrongPeer`], [`Error::Refused`] when the other end is not `peer`;
/// [`Error::Timeout`] after `opts.limit`; [`Error::Ended`] or [`Error::Pipe`] when the
/// raw pipe fails.
///
/// # Cancel safety
///
/// Nothing is left behind: the raw pipe is dropped (and so closed, unless the caller
/// holds another handle to it).
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "called by the node (p2p::node, written in parallel)"
    )
)]
pub(crate) async fn initiate(
    raw: Pipe,
    identity: &Identity,
    peer: &PublicKey,
    hello: Hello,
    opts: &PathOptions,
) -> Result<SecurePath, Error> {
    let (proto, addr) = fit(&raw)?;
    let hs = Handshake::initiator(identity, peer, hello, proto, opts.timing, Instant::now())?;
    let expected = Some(NodeId::from_key(peer));
    let done = limited(opts.limit, expected, addr, handshake(&raw, addr, hs)).await?;
    finish(raw, done, opts)
}

/// Runs the responder's handshake on `raw`, taking the nodes `expect` allows.
///
/// # Errors
///
/// As [`initiate`].
///
/// # Cancel safety
///
/// As [`initiate`].
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "called by the node (p2p::node, written in parallel)"
    )
)]
pub(crate) async fn respond(
    raw: Pipe,
    identity: &Identity,
    expect: Expect,
    opts: &PathOptions,
) -> Result<SecurePath, Error> {
    let (proto, addr) = fit(&raw)?;
    let hs = Handshake::responder(identity, expect, proto, opts.timing)?;
    let expected = match expect {
        Expect::Any => None,
        Expect::Key(k) => Some(NodeId::from_key(&k)),
    };
    let done = limited(opts.limit, expected, addr, handshake(&raw, addr, hs)).await?;
    finish(raw, done, opts)
}

/// Moves the secure path `mover` belongs to onto `new_raw`, a raw pipe to the same
/// peer (see the module docs); returns once this side sends on the new path. The old
/// path is closed once both sides have left it.
///
/// # Errors
///
/// [`Error::Unfit`] for an unfit pipe or one of another protocol;
/// [`Error::Migrate`] when a migration is under way, the path has ended, or the peer
/// did not answer on the new path within `limit` (the path stays on the old one).
///
/// # Cancel safety
///
/// Dropping the future leaves the migration to go on, or to fail, by itself.
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "called by the node (p2p::node, written in parallel)"
    )
)]
pub(crate) async fn migrate(mover: &Mover, new_raw: Pipe, limit: Duration) -> Result<(), Error> {
    let (proto, _) = fit(&new_raw)?;
    if proto != mover.proto {
        return Err(Error::Unfit("a new path of another protocol"));
    }
    let (done, rx) = oneshot::channel();
    let cmd = Move {
        raw: new_raw,
        done,
        limit,
    };
    if mover.cmds.send(cmd).await.is_err() {
        return Err(Error::Migrate("the secure path has ended"));
    }
    rx.await
        .unwrap_or(Err(Error::Migrate("the secure path has ended")))
}

/// Moves a secure path to another raw pipe (see [`migrate`]).
#[derive(Debug, Clone)]
pub(crate) struct Mover {
    cmds: mpsc::Sender<Move>,
    proto: Proto,
}

struct Move {
    raw: Pipe,
    done: oneshot::Sender<Result<(), Error>>,
    limit: Duration,
}

/// The protocol and peer address of a raw pipe fit for a path.
fn fit(raw: &Pipe) -> Result<(Proto, SocketAddr), Error> {
    if raw.is_listener() {
        return Err(Error::Unfit("a listener, not a connection"));
    }
    let Some(addr) = raw.peer_addr() else {
        return Err(Error::Unfit("a udp path needs a default peer"));
    };
    if raw.proto() == Proto::Tcp && !matches!(raw.framing(), Framing::LengthPrefixed) {
        return Err(Error::Unfit("a tcp path needs Framing::LengthPrefixed"));
    }
    Ok((raw.proto(), canonical(addr)))
}

async fn limited<T>(
    limit: Duration,
    expected: Option<NodeId>,
    addr: SocketAddr,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            expected,
            addr,
            limit,
        }),
    }
}

fn pipe_error(e: crate::pipe::Error) -> Error {
    match e {
        crate::pipe::Error::Ended(r) => Error::Ended(r),
        e => Error::Pipe(e),
    }
}

/// Sleeps until `at`, or forever.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Runs a handshake core on `raw` until it is done.
async fn handshake(raw: &Pipe, addr: SocketAddr, mut hs: Handshake) -> Result<Done, Error> {
    loop {
        while let Some(p) = hs.poll_transmit() {
            raw.send(&p).await.map_err(pipe_error)?;
        }
        let msg = tokio::select! {
            m = raw.recv() => m.map_err(pipe_error)?,
            () = until(hs.poll_timeout()) => {
                hs.on_timeout(Instant::now());
                continue;
            }
        };
        if raw.proto() == Proto::Udp && canonical(msg.peer) != addr {
            // Not the peer's address: a stray, never a step.
            continue;
        }
        match hs.on_packet(&msg.data, Instant::now())? {
            Step::Done(done) => {
                while let Some(p) = hs.poll_transmit() {
                    raw.send(&p).await.map_err(pipe_error)?;
                }
                let c = hs.counters();
                tracing::debug!(
                    peer = %NodeId::from_key(&done.peer), %addr, proto = %raw.proto(),
                    resent = c.resent, ignored = c.ignored, "path handshake done"
                );
                return Ok(*done);
            }
            Step::Ignored(why) => tracing::trace!(?why, %addr, "path handshake: a packet ignored"),
            Step::Continue => {}
        }
    }
}

/// Sends the records of `buf` down `raw`: as they are on TCP, one datagram each on UDP.
async fn send_records(raw: &Pipe, buf: &[u8]) -> crate::pipe::Result<()> {
    match raw.proto() {
        Proto::Tcp => raw.send_raw(buf).await,
        Proto::Udp => {
            for packet in records(buf) {
                raw.send(packet).await?;
            }
            Ok(())
        }
    }
}

/// Builds the secure path from a finished handshake.
fn finish(raw: Pipe, done: Done, opts: &PathOptions) -> Result<SecurePath, Error> {
    let Done {
        peer,
        hello,
        transport,
        answer,
        ..
    } = done;
    if !opts.encrypt {
        return Ok(SecurePath {
            pipe: raw,
            peer,
            hello,
            mover: None,
        });
    }
    let proto = raw.proto();
    let addr = raw.peer_addr().expect("a fit pipe has a peer");
    let limits = Limits::new(proto, raw.max_frame(), opts.max_message)?;
    let keys = Arc::new(transport);
    let shared = Arc::new(Shared {
        tx: Mutex::new(Tx {
            sealer: Sealer::new(keys.clone(), proto, limits),
            buf: BytesMut::new(),
            switch: None,
            closing: false,
        }),
        wake: Notify::new(),
        room: Notify::new(),
        end: OnceLock::new(),
        proto,
    });
    let (inbound_tx, inbound) = mpsc::channel(INBOUND);
    let cfg = PipeConfig::default().max_frame(limits.max_message);
    let link: Arc<dyn DatagramLink> = Arc::new(Link(shared.clone()));
    let pipe = Pipe::over_link(proto, link, inbound, raw.local_addr(), addr, &cfg);
    let (cmds, cmd_rx) = mpsc::channel(1);
    let writer = tokio::spawn(write_loop(shared.clone(), raw.clone()));
    let reader = Reader {
        shared,
        opener: Opener::new(keys, proto, limits, answer),
        reading: raw,
        mig: None,
        inbound: inbound_tx,
        peer: addr,
        secure_end: pipe.end_watch(),
        limit: opts.limit,
        timing: opts.timing,
    };
    tokio::spawn(reader.run(cmd_rx, writer));
    Ok(SecurePath {
        pipe,
        peer,
        hello,
        mover: Some(Mover { cmds, proto }),
    })
}

/// What the secure pipe's link, the writer and the reader share.
struct Shared {
    tx: Mutex<Tx>,
    /// Wakes the writer: records queued, a switch, or closing.
    wake: Notify,
    /// Wakes senders waiting for room.
    room: Notify,
    /// Why the raw path ended, for the secure pipe.
    end: OnceLock<EndReason>,
    proto: Proto,
}

impl Shared {
    fn tx(&self) -> std::sync::MutexGuard<'_, Tx> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seals a control packet and sends it on `raw` (migration only: it allocates).
    async fn control(&self, raw: &Pipe, control: Control) -> Result<(), Error> {
        let mut out = BytesMut::new();
        self.tx().sealer.seal_control(control, &mut out)?;
        send_records(raw, &out).await.map_err(pipe_error)
    }

    /// No more sends: the writer sends what is queued (and `close`, if asked) and ends.
    fn close(&self, with_close_packet: bool) {
        let mut tx = self.tx();
        if !tx.closing {
            tx.closing = true;
            if with_close_packet {
                let tx = &mut *tx;
                let _ = tx.sealer.seal_close(&mut tx.buf);
            }
        }
        drop(tx);
        self.wake.notify_one();
        self.room.notify_waiters();
    }
}

/// The sending side: the sealer and the buffer of sealed records.
struct Tx {
    sealer: Sealer,
    buf: BytesMut,
    /// Where in `buf` the records of the next path start, that path, and the old one.
    switch: Option<(usize, Pipe, Arc<Retire>)>,
    closing: bool,
}

/// The secure pipe's link: a send seals into the shared buffer.
struct Link(Arc<Shared>);

impl DatagramLink for Link {
    fn try_send_to(&self, data: &[u8], _to: SocketAddr) -> io::Result<bool> {
        let mut tx = self.0.tx();
        if tx.closing {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the secure path has ended",
            ));
        }
        if !tx.buf.is_empty() && tx.buf.len() + data.len() > QUEUED {
            return Ok(false);
        }
        let tx = &mut *tx;
        tx.sealer
            .seal(data, &mut tx.buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.0.wake.notify_one();
        Ok(true)
    }

    fn send_to<'a>(&'a self, data: &'a [u8], to: SocketAddr) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            loop {
                let room = self.0.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                if self.try_send_to(data, to)? {
                    return Ok(());
                }
                room.await;
            }
        })
    }

    fn end_reason(&self) -> Option<EndReason> {
        self.0.end.get().cloned()
    }
}

/// An old path: closed when both the writer and the reader have left it.
struct Retire {
    pipe: Pipe,
    left: AtomicUsize,
}

impl Retire {
    fn new(pipe: Pipe) -> Arc<Retire> {
        Arc::new(Retire {
            pipe,
            left: AtomicUsize::new(2),
        })
    }

    fn leave(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let pipe = self.pipe.clone();
            tokio::spawn(async move { pipe.close().await });
        }
    }
}

/// Sends what the buffer holds down the current raw path, switching paths where a
/// migration says, until closing; then closes the raw path.
async fn write_loop(shared: Arc<Shared>, mut raw: Pipe) {
    let mut spare = BytesMut::new();
    loop {
        let (switch, closing) = {
            let mut tx = shared.tx();
            std::mem::swap(&mut tx.buf, &mut spare);
            (tx.switch.take(), tx.closing)
        };
        if spare.is_empty() && switch.is_none() {
            if closing {
                break;
            }
            shared.wake.notified().await;
            continue;
        }
        shared.room.notify_waiters();
        let sent = match switch {
            Some((at, next, old)) => {
                let r = send_records(&raw, &spare[..at]).await;
                old.leave();
                raw = next;
                match r {
                    Ok(()) => send_records(&raw, &spare[at..]).await,
                    Err(e) => Err(e),
                }
            }
            None => send_records(&raw, &spare).await,
        };
        spare.clear();
        if let Err(e) = sent {
            tracing::debug!(error = %e, "secure path: the raw path failed to send");
            shared.close(false);
            break;
        }
    }
    raw.close().await;
}

/// A migration in progress.
struct Migration {
    raw: Pipe,
    challenge: [u8; 16],
    /// This side's probe was acked: it sends on the new path.
    verified: bool,
    /// The peer's marker came: data is read from the new path.
    peer_moved: bool,
    /// The new path's first data packet, waiting for the peer's marker.
    held: Option<(Bytes, Instant)>,
    done: Option<oneshot::Sender<Result<(), Error>>>,
    deadline: Instant,
    resend_at: Option<Instant>,
    gap: Duration,
    old: Arc<Retire>,
}

impl Migration {
    /// When the reader has something to do for it: send the probe again, give up
    /// waiting for an answer, or for the peer's marker.
    fn wake(&self) -> Option<Instant> {
        let waiting = !self.verified && !self.peer_moved;
        [
            self.resend_at,
            waiting.then_some(self.deadline),
            self.held.as_ref().map(|(_, since)| *since + HOLD),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The reader task's state.
struct Reader {
    shared: Arc<Shared>,
    opener: Opener,
    /// The path data is read from.
    reading: Pipe,
    mig: Option<Migration>,
    inbound: mpsc::Sender<(Bytes, SocketAddr)>,
    peer: SocketAddr,
    secure_end: watch::Receiver<Option<EndReason>>,
    limit: Duration,
    timing: Timing,
}

/// What ends the reader.
enum Stop {
    /// The secure pipe ended: close the path.
    Closed,
    /// The path ended, for this reason.
    Ended(EndReason),
}

impl Reader {
    async fn run(mut self, mut cmds: mpsc::Receiver<Move>, writer: tokio::task::JoinHandle<()>) {
        let stop = loop {
            match self.step(&mut cmds).await {
                Ok(()) => {}
                Err(stop) => break stop,
            }
        };
        if let Some(mut m) = self.mig.take() {
            if let Some(done) = m.done.take() {
                let _ = done.send(Err(Error::Migrate("the secure path has ended")));
            }
            m.raw.close().await;
        }
        match stop {
            Stop::Closed => {
                self.shared.close(true);
                let limit = self.limit;
                if tokio::time::timeout(limit, writer).await.is_err() {
                    // The peer does not read: give up the flush.
                    self.reading.abort().await;
                }
            }
            Stop::Ended(reason) => {
                let _ = self.shared.end.set(reason);
                self.shared.close(false);
                // Drop the channel: the secure pipe ends once what is queued is read.
            }
        }
        let c = self.opener.counters();
        tracing::debug!(
            peer = %self.peer, messages = c.messages, ignored = c.ignored,
            "secure path: the reader ended"
        );
        self.reading.close().await;
    }

    /// One event: a packet, a command, a timer, or the secure pipe's end.
    async fn step(&mut self, cmds: &mut mpsc::Receiver<Move>) -> Result<(), Stop> {
        let read_new = self
            .mig
            .as_ref()
            .filter(|m| !m.peer_moved && m.held.is_none())
            .map(|m| m.raw.clone());
        let wake = self.mig.as_ref().and_then(Migration::wake);
        tokio::select! {
            biased;
            () = ended(&mut self.secure_end) => Err(Stop::Closed),
            cmd = cmds.recv(), if self.mig.is_none() => match cmd {
                Some(cmd) => self.start(cmd).await,
                None => std::future::pending().await,
            },
            m = self.reading.recv() => match m {
                Ok(m) => self.on_packet(m.data, false).await,
                Err(e) => self.path_ended(e),
            },
            m = recv_opt(read_new.as_ref()) => match m {
                Ok(m) => self.on_packet(m.data, true).await,
                Err(_) => {
                    self.fail_migration("the new path ended");
                    Ok(())
                }
            },
            () = until(wake) => self.on_timer().await,
        }
    }

    /// Starts a migration.
    async fn start(&mut self, cmd: Move) -> Result<(), Stop> {
        let mut challenge = [0u8; 16];
        if getrandom::fill(&mut challenge).is_err() {
            let _ = cmd.done.send(Err(Error::Crypto("no random challenge")));
            return Ok(());
        }
        let now = Instant::now();
        let udp = self.shared.proto == Proto::Udp;
        let gap = self.timing.first;
        self.mig = Some(Migration {
            raw: cmd.raw.clone(),
            challenge,
            verified: false,
            peer_moved: false,
            held: None,
            done: Some(cmd.done),
            deadline: now + cmd.limit,
            resend_at: udp.then(|| now + gap),
            gap,
            old: Retire::new(self.reading.clone()),
        });
        if let Err(e) = self
            .shared
            .control(&cmd.raw, Control::Probe(challenge))
            .await
        {
            tracing::debug!(error = %e, "secure path: no probe on the new path");
            self.fail_migration("the new path failed");
        }
        Ok(())
    }

    fn fail_migration(&mut self, why: &'static str) {
        let Some(mut m) = self.mig.take() else {
            return;
        };
        if m.peer_moved || m.verified {
            // One direction already moved: the new path is the path now.
            tracing::debug!(why, "secure path: the new path failed after the switch");
            self.mig = Some(m);
            return;
        }
        if let Some(done) = m.done.take() {
            let _ = done.send(Err(Error::Migrate(why)));
        }
        let raw = m.raw;
        tokio::spawn(async move { raw.close().await });
    }

    async fn on_timer(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        let Some(m) = self.mig.as_mut() else {
            return Ok(());
        };
        if m.held
            .as_ref()
            .is_some_and(|(_, since)| now >= *since + HOLD)
        {
            // The marker was lost (UDP): give the old path up.
            return self.peer_moved().await;
        }
        if !m.verified && !m.peer_moved && now >= m.deadline {
            self.fail_migration("no answer on the new path");
            return Ok(());
        }
        if m.resend_at.is_some_and(|at| now >= at) {
            m.gap = (m.gap * 2).min(self.timing.max);
            m.resend_at = Some(now + m.gap);
            let (raw, challenge) = (m.raw.clone(), m.challenge);
            let _ = self.shared.control(&raw, Control::Probe(challenge)).await;
        }
        Ok(())
    }

    fn path_ended(&mut self, e: crate::pipe::Error) -> Result<(), Stop> {
        let reason = match e {
            crate::pipe::Error::Ended(r) => r,
            e => EndReason::BadFrame(e.to_string()),
        };
        // A TCP path that ends without the peer's close packet was cut.
        let reason = match (self.shared.proto, reason) {
            (Proto::Tcp, EndReason::Fin) => EndReason::Reset,
            (_, r) => r,
        };
        Err(Stop::Ended(reason))
    }

    /// Takes a packet of the path being read (`new`: of the new path, before the
    /// peer's marker).
    async fn on_packet(&mut self, packet: Bytes, new: bool) -> Result<(), Stop> {
        if new && secure::kind_of(&packet) == secure::Kind::Data {
            // The peer moved; its marker is still on its way on the old path.
            let m = self
                .mig
                .as_mut()
                .expect("reading a new path while migrating");
            m.held = Some((packet, Instant::now()));
            return Ok(());
        }
        let opened = match self.opener.open(&packet) {
            Ok(o) => o,
            Err(e) if new => {
                tracing::debug!(error = %e, "secure path: a bad packet on the new path");
                self.fail_migration("a bad packet on the new path");
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(error = %e, "secure path: a bad packet");
                return Err(Stop::Ended(EndReason::BadFrame(e.to_string())));
            }
        };
        match opened {
            Opened::Message(data) => self.deliver(data).await,
            Opened::Partial | Opened::Ignored(_) => Ok(()),
            Opened::Close => Err(Stop::Ended(EndReason::Fin)),
            Opened::Resend(msg3) => {
                let _ = self.reading.send(&msg3).await;
                Ok(())
            }
            Opened::Marker => match self.mig.as_ref() {
                Some(m) if !m.peer_moved && !new => self.peer_moved().await,
                _ if self.shared.proto == Proto::Udp => Ok(()),
                _ => Err(Stop::Ended(EndReason::BadFrame(
                    "a marker without a migration".into(),
                ))),
            },
            Opened::Control(c) => self.on_control(c).await,
        }
    }

    async fn on_control(&mut self, c: Control) -> Result<(), Stop> {
        let Some(m) = self.mig.as_mut() else {
            // A late probe after the migration: answer it on the path read now.
            if let Control::Probe(challenge) = c {
                let raw = self.reading.clone();
                let _ = self.shared.control(&raw, Control::Ack(challenge)).await;
            }
            return Ok(());
        };
        match c {
            Control::Probe(challenge) => {
                let raw = m.raw.clone();
                if self
                    .shared
                    .control(&raw, Control::Ack(challenge))
                    .await
                    .is_err()
                {
                    self.fail_migration("the new path failed");
                }
            }
            Control::Ack(challenge) if challenge == m.challenge && !m.verified => {
                m.verified = true;
                m.resend_at = None;
                self.switch_sending();
                self.maybe_done();
            }
            Control::Ack(_) => {}
        }
        Ok(())
    }

    /// This side's probe was answered: the marker goes on the old path, and what
    /// follows on the new one.
    fn switch_sending(&mut self) {
        let m = self.mig.as_mut().expect("migrating");
        let mut tx = self.shared.tx();
        let tx = &mut *tx;
        let start = tx.buf.len();
        if tx.sealer.seal_marker(&mut tx.buf).is_err() {
            if let Some(done) = m.done.take() {
                let _ = done.send(Err(Error::Exhausted));
            }
            return;
        }
        if self.shared.proto == Proto::Udp {
            // Twice: a lost marker would hold the peer up; the copy is refused.
            let copy = tx.buf[start..].to_vec();
            tx.buf.extend_from_slice(&copy);
        }
        tx.switch = Some((tx.buf.len(), m.raw.clone(), m.old.clone()));
        self.shared.wake.notify_one();
        if let Some(done) = m.done.take() {
            let _ = done.send(Ok(()));
        }
    }

    /// The peer's marker came (or, on UDP, was given up for lost): read the new path.
    async fn peer_moved(&mut self) -> Result<(), Stop> {
        let m = self.mig.as_mut().expect("migrating");
        m.peer_moved = true;
        let held = m.held.take();
        let next = m.raw.clone();
        m.old.leave();
        self.reading = next;
        self.maybe_done();
        if let Some((packet, _)) = held {
            return Box::pin(self.on_packet(packet, false)).await;
        }
        Ok(())
    }

    /// Ends the migration once both directions moved.
    fn maybe_done(&mut self) {
        if self
            .mig
            .as_ref()
            .is_some_and(|m| m.verified && m.peer_moved)
        {
            self.mig = None;
        }
    }

    /// Hands a message to the secure pipe, waiting for room unless the pipe ends.
    async fn deliver(&mut self, data: Bytes) -> Result<(), Stop> {
        tokio::select! {
            r = self.inbound.send((data, self.peer)) => r.map_err(|_| Stop::Closed),
            () = ended(&mut self.secure_end) => Err(Stop::Closed),
        }
    }
}

/// Waits until the secure pipe has ended or is gone.
async fn ended(end: &mut watch::Receiver<Option<EndReason>>) {
    let _ = end.wait_for(Option::is_some).await;
}

/// Receives from `pipe`, or waits forever without one.
async fn recv_opt(pipe: Option<&Pipe>) -> crate::pipe::Result<crate::Message> {
    match pipe {
        Some(p) => p.recv().await,
        None => std::future::pending().await,
    }
}
