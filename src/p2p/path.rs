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
//!   wait: a peer that does not read slows the sender down. On UDP a send that finds
//!   nothing queued seals into a reused packet and sends it itself when the socket
//!   has room, so the writer is only woken when datagrams queue up. A datagram the
//!   socket refuses (an ICMP error come back) is lost, as any datagram may be.
//! - A reader task reads the raw pipe, opens each packet, puts fragments together and
//!   hands messages to the secure pipe through a bounded channel, waiting when it is
//!   full: on TCP (whose flow blocks) a slow reader loses nothing, and the raw pipe
//!   stops being read, which pushes back on the peer.
//! - Closing or dropping the secure pipe sends a close packet after what is queued, then
//!   closes the raw pipe. The raw pipe's end ends the secure pipe once what arrived
//!   before is read: `Fin` after the peer's close packet, `Reset` when a TCP path ends
//!   without one (it was cut).
//!
//! On UDP, what the initiator sends before its msg3 has reached the responder is lost
//! if msg3 was (the responder has no keys yet): the responder's repeated msg2 gets msg3
//! again, and the path goes on from there.
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
    /// so at most the raw pipe's largest datagram less 25 bytes (the type byte, the
    /// counter and the tag).
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
/// On UDP a datagram the socket refuses (an ICMP error come back, say) is lost, as a
/// datagram may be; only the raw pipe's end is an error.
async fn send_records(raw: &Pipe, buf: &[u8]) -> crate::pipe::Result<()> {
    match raw.proto() {
        Proto::Tcp => raw.send_raw(buf).await,
        Proto::Udp => {
            for packet in records(buf) {
                udp_loss(raw.send(packet).await)?;
            }
            Ok(())
        }
    }
}

/// A UDP send's outcome, with a refused datagram counted as lost.
fn udp_loss(r: crate::pipe::Result<()>) -> crate::pipe::Result<()> {
    match r {
        Err(e @ crate::pipe::Error::Ended(_)) => Err(e),
        Err(e) => {
            tracing::trace!(error = %e, "secure path: a datagram lost on sending");
            Ok(())
        }
        ok => ok,
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
            raw: raw.clone(),
            writing: false,
            scratch: BytesMut::new(),
        }),
        wake: Notify::new(),
        room: Notify::new(),
        end: OnceLock::new(),
        proto,
        peer: addr,
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
    /// The peer's address, as the secure pipe has it.
    peer: SocketAddr,
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
    /// The raw path the writer sends on.
    raw: Pipe,
    /// Whether the writer is sending a buffer it took.
    writing: bool,
    /// (UDP) The packet a send seals and sends itself, reused.
    scratch: BytesMut,
}

/// The secure pipe's link: a send seals into the shared buffer.
struct Link(Arc<Shared>);

impl DatagramLink for Link {
    fn try_send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<bool> {
        if canonical(to) != self.0.peer {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a secure path sends to its peer only",
            ));
        }
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
        let sealing = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
        if self.0.proto == Proto::Udp && tx.buf.is_empty() && !tx.writing && tx.switch.is_none() {
            // Nothing is queued or being sent: the datagram goes out from here, in
            // order, without waking the writer.
            tx.scratch.clear();
            tx.sealer.seal(data, &mut tx.scratch).map_err(sealing)?;
            let packet = records(&tx.scratch).next().expect("one sealed packet");
            match tx.raw.try_send(packet) {
                Ok(true) => return Ok(true),
                // No room: the writer sends it.
                Ok(false) => tx.buf.extend_from_slice(&tx.scratch),
                Err(e @ crate::pipe::Error::Ended(_)) => {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, e))
                }
                // Refused (an ICMP error come back): lost, as a datagram may be.
                Err(_) => return Ok(true),
            }
        } else {
            tx.sealer.seal(data, &mut tx.buf).map_err(sealing)?;
        }
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
            let switch = tx.switch.take();
            if let Some((_, next, _)) = &switch {
                tx.raw = next.clone();
            }
            tx.writing = !spare.is_empty() || switch.is_some();
            (switch, tx.closing)
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
        shared.tx().writing = false;
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
    async fn run(mut self, cmds: mpsc::Receiver<Move>, writer: tokio::task::JoinHandle<()>) {
        // `None` once every `Mover` is gone: no migration can come any more.
        let mut cmds = Some(cmds);
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
    async fn step(&mut self, cmds: &mut Option<mpsc::Receiver<Move>>) -> Result<(), Stop> {
        let read_new = self
            .mig
            .as_ref()
            .filter(|m| !m.peer_moved && m.held.is_none())
            .map(|m| m.raw.clone());
        let wake = self.mig.as_ref().and_then(Migration::wake);
        // Biased, the rare events first: a busy path must not starve a probe, an
        // answer or a timer.
        tokio::select! {
            biased;
            () = ended(&mut self.secure_end) => Err(Stop::Closed),
            cmd = next_cmd(cmds), if self.mig.is_none() => match cmd {
                Some(cmd) => self.start(cmd).await,
                None => {
                    *cmds = None;
                    Ok(())
                }
            },
            m = recv_opt(read_new.as_ref()) => match m {
                Ok(m) => self.on_packet(m.data, true).await,
                Err(e) => self.new_path_failed("the new path ended", Some(e)),
            },
            () = until(wake) => self.on_timer().await,
            m = self.reading.recv() => match m {
                Ok(m) => self.on_packet(m.data, false).await,
                Err(e) => self.path_ended(e),
            },
        }
    }

    /// Starts a migration.
    async fn start(&mut self, cmd: Move) -> Result<(), Stop> {
        if self.shared.tx().switch.is_some() {
            let why = "the last migration's switch is still being written";
            let _ = cmd.done.send(Err(Error::Migrate(why)));
            return Ok(());
        }
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

    /// The new path failed: the migration fails, or, once either direction has moved
    /// to it, the secure path ends.
    fn new_path_failed(
        &mut self,
        why: &'static str,
        e: Option<crate::pipe::Error>,
    ) -> Result<(), Stop> {
        if self
            .mig
            .as_ref()
            .is_some_and(|m| m.peer_moved || m.verified)
        {
            tracing::debug!(why, "secure path: the new path failed after the switch");
            return match e {
                Some(e) => self.path_ended(e),
                None => Err(Stop::Ended(EndReason::BadFrame(why.into()))),
            };
        }
        self.fail_migration(why);
        Ok(())
    }

    /// The migration fails before either direction moved: the old path stays.
    fn fail_migration(&mut self, why: &'static str) {
        let Some(mut m) = self.mig.take() else {
            return;
        };
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
                return self.new_path_failed("a bad packet on the new path", None);
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
                    return self.new_path_failed("the new path failed", None);
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

/// The next migration command, `None` when the movers are gone; waits forever once
/// they are.
async fn next_cmd(cmds: &mut Option<mpsc::Receiver<Move>>) -> Option<Move> {
    match cmds {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Receives from `pipe`, or waits forever without one.
async fn recv_opt(pipe: Option<&Pipe>) -> crate::pipe::Result<crate::Message> {
    match pipe {
        Some(p) => p.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Mutex as StdMutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream, UdpSocket};

    use super::super::handshake::test_support::{id, HELLO};
    use super::*;
    use crate::pipe::Error as PipeError;

    const LIMIT: Duration = Duration::from_secs(10);
    const HOSTS: [&str; 2] = ["127.0.0.1", "::1"];

    /// Runs `fut`, failing the test if it takes longer than [`LIMIT`].
    async fn within<T>(fut: impl Future<Output = T>) -> T {
        tokio::time::timeout(LIMIT, fut)
            .await
            .expect("the test's time limit passed")
    }

    fn lp() -> PipeConfig {
        PipeConfig::default().framing(Framing::LengthPrefixed)
    }

    fn bind_addr(host: &str) -> SocketAddr {
        SocketAddr::new(host.parse().unwrap(), 0)
    }

    /// Two ends of a TCP connection with length-prefixed framing.
    async fn tcp_pair(host: &str) -> (Pipe, Pipe) {
        let server = Pipe::listen_with(Proto::Tcp, bind_addr(host), &lp())
            .await
            .unwrap();
        let client = Pipe::connect_with(Proto::Tcp, server.local_addr(), &lp())
            .await
            .unwrap();
        let accepted = within(server.accept()).await.unwrap();
        (client, accepted)
    }

    /// Two UDP pipes, each the other's default peer.
    async fn udp_pair(host: &str) -> (Pipe, Pipe) {
        let a = UdpSocket::bind(bind_addr(host)).await.unwrap();
        let b = UdpSocket::bind(bind_addr(host)).await.unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let cfg = PipeConfig::default();
        (
            Pipe::adopt_udp(a, ba, &cfg).unwrap(),
            Pipe::adopt_udp(b, aa, &cfg).unwrap(),
        )
    }

    async fn raw_pair(proto: Proto, host: &str) -> (Pipe, Pipe) {
        match proto {
            Proto::Tcp => tcp_pair(host).await,
            Proto::Udp => udp_pair(host).await,
        }
    }

    type Seen = Arc<StdMutex<Vec<u8>>>;

    /// A plain TCP relay in the middle of a pair, recording every byte either way.
    async fn tcp_tapped(host: &str) -> (Pipe, Pipe, Seen) {
        let server = Pipe::listen_with(Proto::Tcp, bind_addr(host), &lp())
            .await
            .unwrap();
        let tap = TcpListener::bind(bind_addr(host)).await.unwrap();
        let (tap_addr, to) = (tap.local_addr().unwrap(), server.local_addr());
        let seen: Seen = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            let (a, _) = tap.accept().await.unwrap();
            let b = TcpStream::connect(to).await.unwrap();
            let ((ar, aw), (br, bw)) = (a.into_split(), b.into_split());
            tokio::join!(copy(ar, bw, s.clone()), copy(br, aw, s));
        });
        let client = Pipe::connect_with(Proto::Tcp, tap_addr, &lp())
            .await
            .unwrap();
        let accepted = within(server.accept()).await.unwrap();
        (client, accepted, seen)
    }

    async fn copy(
        mut r: impl tokio::io::AsyncRead + Unpin,
        mut w: impl tokio::io::AsyncWrite + Unpin,
        seen: Seen,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                    if w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = w.shutdown().await;
    }

    /// A plain UDP relay between two pipes, recording every datagram.
    async fn udp_tapped(host: &str) -> (Pipe, Pipe, Seen) {
        udp_lossy(host, |_| false).await
    }

    /// A UDP relay between two pipes that drops what `drop` says, recording every
    /// datagram it passes on.
    async fn udp_lossy(
        host: &str,
        mut drop: impl FnMut(&[u8]) -> bool + Send + 'static,
    ) -> (Pipe, Pipe, Seen) {
        let relay = UdpSocket::bind(bind_addr(host)).await.unwrap();
        let a = UdpSocket::bind(bind_addr(host)).await.unwrap();
        let b = UdpSocket::bind(bind_addr(host)).await.unwrap();
        let r = relay.local_addr().unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = relay.recv_from(&mut buf).await {
                if drop(&buf[..n]) {
                    continue;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
                let to = if from == aa { ba } else { aa };
                let _ = relay.send_to(&buf[..n], to).await;
            }
        });
        let cfg = PipeConfig::default();
        (
            Pipe::adopt_udp(a, r, &cfg).unwrap(),
            Pipe::adopt_udp(b, r, &cfg).unwrap(),
            seen,
        )
    }

    /// Node 1 initiates to node 2, which takes `expect`.
    async fn secure(
        a: Pipe,
        b: Pipe,
        expect: Expect,
        opts: &PathOptions,
    ) -> (Result<SecurePath, Error>, Result<SecurePath, Error>) {
        let (i, r) = (id(1), id(2));
        let want = r.public();
        within(async {
            tokio::join!(
                initiate(a, &i, &want, HELLO, opts),
                respond(b, &r, expect, opts)
            )
        })
        .await
    }

    async fn secured(a: Pipe, b: Pipe) -> (SecurePath, SecurePath) {
        let (i, r) = secure(a, b, Expect::Any, &PathOptions::default()).await;
        (i.unwrap(), r.unwrap())
    }

    fn echo(pipe: &Pipe) {
        pipe.on_message(|m, reply| async move { reply.send(&m.data).await })
            .unwrap();
    }

    #[tokio::test]
    async fn a_secure_pipe_echoes_over_tcp_and_udp_on_v4_and_v6_and_the_listener_learns_who() {
        for proto in [Proto::Tcp, Proto::Udp] {
            for host in HOSTS {
                let (a, b) = raw_pair(proto, host).await;
                let (a_addrs, b_addrs) = (
                    (a.local_addr(), a.peer_addr()),
                    (b.local_addr(), b.peer_addr()),
                );
                let (i, r) = secured(a, b).await;
                assert_eq!((i.peer, r.peer), (id(2).public(), id(1).public()));
                assert_eq!((i.hello, r.hello), (HELLO, HELLO));
                assert_eq!(r.peer_id(), id(1).node_id());
                assert_eq!((i.pipe.local_addr(), i.pipe.peer_addr()), a_addrs);
                assert_eq!((r.pipe.local_addr(), r.pipe.peer_addr()), b_addrs);
                assert_eq!(i.pipe.proto(), proto);
                echo(&r.pipe);
                let pongs = i.pipe.subscribe("^pong", None).unwrap();
                for n in 0..50u32 {
                    let msg = format!("ping {n}");
                    i.pipe.send(&msg).await.unwrap();
                    let m = i.pipe.recv_timeout(LIMIT).await.unwrap();
                    assert_eq!((&m.data[..], m.proto), (msg.as_bytes(), proto));
                }
                i.pipe.send(b"pong!").await.unwrap();
                assert_eq!(&within(pongs.recv()).await.unwrap().data[..], b"pong!");
                let elsewhere = SocketAddr::new(a_addrs.0.ip(), 9);
                assert!(i.pipe.send_to(b"x", elsewhere).await.is_err(), "peer only");
                let big = vec![0x5a; if proto == Proto::Tcp { 300_000 } else { 60_000 }];
                i.pipe.send(&big).await.unwrap();
                assert_eq!(
                    i.pipe.recv_timeout(LIMIT).await.unwrap().data.len(),
                    big.len()
                );
            }
        }
    }

    #[tokio::test]
    async fn a_committed_secure_path_carries_messages_both_ways_after_the_commit() {
        for proto in [Proto::Tcp, Proto::Udp] {
            let (a, b) = raw_pair(proto, "127.0.0.1").await;
            let (i, r) = secured(a, b).await;
            // The node keeps only the pipes: the movers go, and the paths work on.
            let (i, r) = (
                SecurePath { mover: None, ..i },
                SecurePath { mover: None, ..r },
            );
            let token = [3u8; 16];
            let (made, kept) = within(async {
                tokio::join!(
                    super::super::commit::commit(&i.pipe, &token, LIMIT),
                    super::super::commit::committed(&r.pipe, &token, LIMIT)
                )
            })
            .await;
            assert_eq!((made, kept), (Ok(()), Ok(())), "{proto}");
            i.pipe.send(b"after").await.unwrap();
            let m = within(r.pipe.recv()).await.unwrap();
            assert_eq!(&m.data[..], b"after", "{proto}");
            r.pipe.send(b"back").await.unwrap();
            assert_eq!(&within(i.pipe.recv()).await.unwrap().data[..], b"back");
        }
    }

    #[tokio::test]
    async fn a_stranger_is_refused_by_either_side() {
        for proto in [Proto::Tcp, Proto::Udp] {
            // The initiator wants node 2 and reaches node 3.
            let (a, b) = raw_pair(proto, "127.0.0.1").await;
            let opts = PathOptions {
                limit: Duration::from_millis(500),
                ..PathOptions::default()
            };
            let (one, three, two) = (id(1), id(3), id(2).public());
            let (i, r) = within(async {
                tokio::join!(
                    initiate(a, &one, &two, HELLO, &opts),
                    respond(b, &three, Expect::Any, &opts)
                )
            })
            .await;
            match i {
                Err(Error::WrongPeer { expected, reached }) => {
                    assert_eq!((expected, reached), (id(2).node_id(), id(3).node_id()));
                }
                other => panic!("{proto}: {other:?}"),
            }
            assert!(r.is_err(), "{proto}: the responder gets no msg3");

            // The responder wants node 4 and hears node 1.
            let (a, b) = raw_pair(proto, "::1").await;
            let (i, r) = secure(a, b, Expect::Key(id(4).public()), &opts).await;
            assert!(matches!(r, Err(Error::WrongPeer { .. })), "{proto}: {r:?}");
            if let Ok(i) = i {
                // The initiator finished first. On TCP its path ends with the
                // responder's (cut: no close packet); on UDP nothing ever arrives.
                let got = i.pipe.recv_timeout(Duration::from_millis(300)).await;
                match proto {
                    Proto::Tcp => assert!(
                        matches!(got, Err(PipeError::Ended(EndReason::Reset))),
                        "{got:?}"
                    ),
                    Proto::Udp => assert!(matches!(got, Err(PipeError::Timeout(_)))),
                }
            }
        }
    }

    #[tokio::test]
    async fn plaintext_never_crosses_the_raw_path_unless_encryption_is_off() {
        const SECRET: &[u8] = b"a recognisable payload: 7c1ab9e0-secret";
        for proto in [Proto::Tcp, Proto::Udp] {
            for encrypt in [true, false] {
                let (a, b, seen) = match proto {
                    Proto::Tcp => tcp_tapped("127.0.0.1").await,
                    Proto::Udp => udp_tapped("::1").await,
                };
                let opts = PathOptions {
                    encrypt,
                    ..PathOptions::default()
                };
                let (i, r) = secure(a, b, Expect::Any, &opts).await;
                let (i, r) = (i.unwrap(), r.unwrap());
                i.pipe.send(SECRET).await.unwrap();
                let got = r.pipe.recv_timeout(LIMIT).await.unwrap();
                assert_eq!(&got.data[..], SECRET);
                let seen = seen.lock().unwrap().clone();
                let found = seen.windows(SECRET.len()).any(|w| w == SECRET);
                assert_eq!(found, !encrypt, "{proto} encrypt={encrypt}");
                for key in [id(1).public(), id(2).public()] {
                    assert!(!seen.windows(32).any(|w| w == key.as_bytes()));
                }
            }
        }
    }

    #[tokio::test]
    async fn udp_handshakes_survive_the_loss_of_each_message_once() {
        use super::super::handshake::{MSG1, MSG2, MSG3};
        for lost in [MSG1, MSG2, MSG3] {
            let mut dropped = false;
            let (a, b, _) = udp_lossy("127.0.0.1", move |d| {
                let hit = !dropped && d.first() == Some(&lost);
                dropped |= hit;
                hit
            })
            .await;
            let (i, r) = secured(a, b).await;
            // With msg3 lost, the responder is done only once its repeated msg2 got msg3
            // again from the initiator's secure path.
            r.pipe.send(b"from the responder").await.unwrap();
            let m = i.pipe.recv_timeout(LIMIT).await.unwrap();
            assert_eq!(&m.data[..], b"from the responder", "msg{lost} lost");
            i.pipe.send(b"and back").await.unwrap();
            assert_eq!(
                &r.pipe.recv_timeout(LIMIT).await.unwrap().data[..],
                b"and back"
            );
        }
    }

    #[tokio::test]
    async fn foreign_datagrams_on_a_udp_path_are_ignored() {
        for host in HOSTS {
            let (a, b) = udp_pair(host).await;
            let raw_b = b.clone();
            let (i, r) = secured(a, b).await;
            echo(&r.pipe);
            let stranger = UdpSocket::bind(bind_addr(host)).await.unwrap();
            let keepalive = b"\xffp2punch\x03\x00............................";
            for junk in [&keepalive[..], b"", &[0x10; 60], &[2; 129]] {
                stranger.send_to(junk, raw_b.local_addr()).await.unwrap();
            }
            i.pipe.send(b"still talking").await.unwrap();
            let m = i.pipe.recv_timeout(LIMIT).await.unwrap();
            assert_eq!(&m.data[..], b"still talking", "{host}");
            assert!(r.pipe.end_reason().is_none());
        }
    }

    #[tokio::test]
    async fn a_silent_peer_times_out_naming_the_node_and_the_address() {
        let (a, b) = udp_pair("127.0.0.1").await;
        let addr = b.local_addr();
        let opts = PathOptions {
            limit: Duration::from_millis(300),
            ..PathOptions::default()
        };
        let e = within(initiate(a, &id(1), &id(2).public(), HELLO, &opts))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "no path handshake with node {} at {addr} within 300ms",
                id(2).node_id()
            )
        );
        // msg1 was sent again meanwhile.
        let mut n = 0;
        while b.recv_timeout(Duration::from_millis(50)).await.is_ok() {
            n += 1;
        }
        assert!(n >= 2, "{n} copies of msg1");
    }

    #[tokio::test]
    async fn a_tcp_pipe_without_length_prefixes_or_a_listener_is_unfit() {
        let server = Pipe::listen(Proto::Tcp, "127.0.0.1:0").await.unwrap();
        let raw = Pipe::connect(Proto::Tcp, server.local_addr())
            .await
            .unwrap();
        let opts = PathOptions::default();
        let e = initiate(raw, &id(1), &id(2).public(), HELLO, &opts)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "raw pipe unfit for a path: a tcp path needs Framing::LengthPrefixed"
        );
        let e = respond(server, &id(2), Expect::Any, &opts)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Unfit(_)));
    }

    #[tokio::test]
    async fn closing_a_secure_pipe_closes_its_raw_path_and_ends_the_peers_with_fin() {
        for proto in [Proto::Tcp, Proto::Udp] {
            let (a, b) = raw_pair(proto, "127.0.0.1").await;
            let raw_a = a.clone();
            let (i, r) = secured(a, b).await;
            i.pipe.send(b"last words").await.unwrap();
            i.pipe.close().await;
            let m = r.pipe.recv_timeout(LIMIT).await.unwrap();
            assert_eq!(&m.data[..], b"last words");
            assert_eq!(within(r.pipe.ended()).await, EndReason::Fin, "{proto}");
            assert_eq!(within(raw_a.ended()).await, EndReason::Closed, "{proto}");
        }
    }

    #[tokio::test]
    async fn dropping_a_secure_pipe_closes_it_too() {
        let (a, b) = tcp_pair("::1").await;
        let raw_b = b.clone();
        let (i, r) = secured(a, b).await;
        drop(i);
        assert_eq!(within(r.pipe.ended()).await, EndReason::Fin);
        assert_eq!(within(raw_b.ended()).await, EndReason::Closed);
    }

    #[tokio::test]
    async fn a_tcp_path_cut_without_a_close_ends_the_secure_pipe_as_reset() {
        let (a, b) = tcp_pair("127.0.0.1").await;
        let raw_a = a.clone();
        let (_i, r) = secured(a, b).await;
        raw_a.close().await;
        assert_eq!(within(r.pipe.ended()).await, EndReason::Reset);
    }

    #[tokio::test]
    async fn a_slow_reader_on_tcp_holds_the_sender_up_and_loses_nothing() {
        const N: u32 = 2000;
        const SIZE: usize = 32 * 1024;
        let (a, b) = tcp_pair("127.0.0.1").await;
        let (i, r) = secured(a, b).await;
        let sent = Arc::new(AtomicUsize::new(0));
        let (pipe, count) = (i.pipe.clone(), sent.clone());
        let sender = tokio::spawn(async move {
            let mut msg = vec![0u8; SIZE];
            for n in 0..N {
                msg[..4].copy_from_slice(&n.to_be_bytes());
                pipe.send(&msg).await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Nobody reads: the sender must stop long before 64 MB are out.
        let held = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let before = sent.load(Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                if sent.load(Ordering::Relaxed) == before {
                    break;
                }
            }
        })
        .await;
        let at = sent.load(Ordering::Relaxed);
        assert!(held.is_ok() && (at as u32) < N, "the sender went on: {at}");
        assert!(at * SIZE < 32 << 20, "{at} messages buffered");
        for n in 0..N {
            let m = r.pipe.recv_timeout(LIMIT).await.unwrap();
            assert_eq!((m.data.len(), &m.data[..4]), (SIZE, &n.to_be_bytes()[..]));
            if n % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        within(sender).await.unwrap();
        assert_eq!(r.pipe.stats().dropped, 0);
    }

    /// One direction's numbered stream: what the receiver got so far, and where the
    /// sender stops.
    #[derive(Default)]
    struct Stream {
        /// One past the highest number received.
        progress: AtomicUsize,
        moved: Notify,
        /// The sender stops before this number (`usize::MAX`: not yet decided).
        stop: AtomicUsize,
    }

    const END: u32 = u32::MAX;

    /// Sends numbered messages on `pipe`, at most 64 ahead of what the receiver got
    /// (so that UDP buffers never overflow), until told where to stop; then `END`.
    fn sender(pipe: &Pipe, st: &Arc<Stream>) -> tokio::task::JoinHandle<usize> {
        let (pipe, st) = (pipe.clone(), st.clone());
        st.stop.store(usize::MAX, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut k = 0;
            while k < st.stop.load(Ordering::SeqCst) {
                pipe.send((k as u32).to_be_bytes()).await.unwrap();
                k += 1;
                loop {
                    let moved = st.moved.notified();
                    tokio::pin!(moved);
                    moved.as_mut().enable();
                    if k < st.progress.load(Ordering::SeqCst) + 64 {
                        break;
                    }
                    moved.await;
                }
            }
            for _ in 0..3 {
                pipe.send(END.to_be_bytes()).await.unwrap();
            }
            k
        })
    }

    /// Receives numbered messages until `END` (or 2 s of quiet), telling the sender.
    fn receiver(pipe: &Pipe, st: &Arc<Stream>) -> tokio::task::JoinHandle<Vec<u32>> {
        let (pipe, st) = (pipe.clone(), st.clone());
        tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(m) = pipe.recv_timeout(Duration::from_secs(2)).await {
                let k = u32::from_be_bytes(m.data[..].try_into().unwrap());
                if k == END {
                    break;
                }
                got.push(k);
                st.progress.store(k as usize + 1, Ordering::SeqCst);
                st.moved.notify_waiters();
            }
            got
        })
    }

    /// Waits until the receiver of `st` got past `n`.
    async fn past(st: &Stream, n: usize) {
        loop {
            let moved = st.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if st.progress.load(Ordering::SeqCst) > n {
                return;
            }
            moved.await;
        }
    }

    #[tokio::test]
    async fn migration_moves_streams_both_ways_with_no_loss_duplicate_or_reordering() {
        for proto in [Proto::Tcp, Proto::Udp] {
            for host in HOSTS {
                let (a1, b1) = raw_pair(proto, host).await;
                let (old_a, old_b) = (a1.clone(), b1.clone());
                let (i, r) = secured(a1, b1).await;
                let sub = r.pipe.subscribe("^never", None).unwrap();
                let (a2, b2) = raw_pair(proto, host).await;
                let (new_a, new_b) = (a2.clone(), b2.clone());
                let (to_r, to_i) = (Arc::new(Stream::default()), Arc::new(Stream::default()));
                let (send_r, send_i) = (sender(&i.pipe, &to_r), sender(&r.pipe, &to_i));
                let (recv_r, recv_i) = (receiver(&r.pipe, &to_r), receiver(&i.pipe, &to_i));
                // Both streams flow on the old path; then both sides move, mid-stream.
                within(async { tokio::join!(past(&to_r, 300), past(&to_i, 300)) }).await;
                let (mi, mr) = (i.mover.clone().unwrap(), r.mover.clone().unwrap());
                let (x, y) = within(async {
                    tokio::join!(migrate(&mi, a2, LIMIT), migrate(&mr, b2, LIMIT))
                })
                .await;
                x.unwrap();
                y.unwrap();
                for st in [&to_r, &to_i] {
                    let at = st.progress.load(Ordering::SeqCst);
                    st.stop.store(at + 500, Ordering::SeqCst);
                }
                for (send, recv) in [(send_r, recv_r), (send_i, recv_i)] {
                    let sent = within(send).await.unwrap();
                    let got = within(recv).await.unwrap();
                    assert!(got.windows(2).all(|w| w[0] < w[1]), "{proto} {host}: order");
                    match proto {
                        Proto::Tcp => assert_eq!(got, (0..sent as u32).collect::<Vec<_>>()),
                        // Nothing overflows here, but UDP may lose; never much.
                        Proto::Udp => assert!(got.len() + 5 >= sent, "{host}: {}", got.len()),
                    }
                }
                // Both paths carried the streams; the old ones are closed now.
                assert!(old_b.stats().received > 300 && new_b.stats().received > 300);
                assert!(old_a.stats().received > 300 && new_a.stats().received > 300);
                assert_eq!(within(old_a.ended()).await, EndReason::Closed);
                assert_eq!(within(old_b.ended()).await, EndReason::Closed);
                assert!(new_a.end_reason().is_none() && new_b.end_reason().is_none());
                i.pipe.send(b"after").await.unwrap();
                loop {
                    let m = r.pipe.recv_timeout(LIMIT).await.unwrap();
                    if m.data[..] != END.to_be_bytes() {
                        assert_eq!(&m.data[..], b"after");
                        break;
                    }
                }
                assert!(sub.is_empty());
                assert_eq!(r.pipe.peer_addr(), Some(old_b.peer_addr().unwrap()));
            }
        }
    }

    #[tokio::test]
    async fn a_migration_the_peer_does_not_answer_fails_and_keeps_the_old_path() {
        let (a1, b1) = udp_pair("127.0.0.1").await;
        let (i, r) = secured(a1, b1).await;
        let (a2, _silent) = udp_pair("127.0.0.1").await;
        let mover = i.mover.clone().unwrap();
        let e = within(migrate(&mover, a2.clone(), Duration::from_millis(400)))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "path migration failed: no answer on the new path"
        );
        assert_eq!(within(a2.ended()).await, EndReason::Closed);
        i.pipe.send(b"still here").await.unwrap();
        assert_eq!(
            &r.pipe.recv_timeout(LIMIT).await.unwrap().data[..],
            b"still here"
        );
        let (tcp, _) = tcp_pair("127.0.0.1").await;
        assert!(matches!(
            migrate(&mover, tcp, LIMIT).await,
            Err(Error::Unfit(_))
        ));
    }
}
