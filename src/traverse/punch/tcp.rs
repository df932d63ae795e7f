//! TCP hole punching: a simultaneous open from one shared local port.
//!
//! A [`PunchPort`] is a local TCP port shared (`SO_REUSEADDR` + `SO_REUSEPORT`) by a
//! listener, the STUN-over-TCP connection that learned its mapping (kept open: it holds
//! the mapping), and the punch's outgoing connect attempts. [`PunchPort::punch`] first
//! asks [`tcp_feasibility`] whether the two sides' NAT behaviour allows a punch at all,
//! and refuses at once, sending nothing, when it does not. Otherwise, from the plan's
//! start moment, it connects from that port to each candidate of the peer, the attempts
//! spaced by the measured round trip (the sans-IO [`Schedule`]), while the listener takes
//! whatever arrives. Every connection, connected or accepted, must pass the hello
//! handshake (the sans-IO [`Handshake`]) before it counts; the first that does wins, the
//! rest are dropped. The whole runs within one time limit.
//!
//! The sans-IO cores own no socket, clock or task; the driver here only connects,
//! accepts, reads, writes and sleeps until the schedule's next moment.
//!
//! [`connect`] (the initiator) and [`answer`] (the responder, given the offer that
//! [`is_offer`] recognised) learn the port's mapping by STUN over TCP, agree the
//! [`Plan`] over a [`Signaller`](crate::signal::Signaller) by the same rendezvous as the
//! UDP punch (the start moment and the attempts' spacing come from the round trip
//! measured there; the hellos' key is the rendezvous's session key), punch, and hand the
//! connection over to an ordinary [`Pipe`](crate::Pipe).

mod driver;
mod error;
mod feasibility;
mod hello;
mod schedule;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::predict::{self, Unpredictable};
use super::Plan;
use crate::iface::bind::{self, SocketOptions};
use crate::nat::PortAllocation;

pub use driver::{answer, connect, is_offer, Config};
pub use error::Error;
pub use feasibility::{
    tcp_feasibility, Inbound, Side, TcpMapping, TcpNatSummary, TcpRefusal, TcpWay,
};
pub use hello::{Handshake, Hello, HelloKey, HelloKind, Step, HELLO_LEN};
pub use schedule::{
    Action, Attempted, Schedule, Tried, MAX_CANDIDATES, MAX_RETRY, MAX_SPACING, MIN_SPACING,
};

/// The most hello handshakes in progress at once; connections past it are dropped.
pub const MAX_HANDSHAKES: usize = 8;

/// The time one connection's hello handshake may take, besides four round trips.
pub const HELLO_LIMIT: Duration = Duration::from_secs(2);

/// The listener's backlog.
const BACKLOG: i32 = 16;

/// A local TCP port ready to punch from: a listener on a shared port, and the mappings
/// STUN over TCP saw for it.
#[derive(Debug)]
pub struct PunchPort {
    listener: TcpListener,
    local: SocketAddr,
    device: Option<String>,
    mapped: Vec<SocketAddr>,
    stun: Vec<TcpStream>,
}

impl PunchPort {
    /// Listens on `local` (port 0: any free port) with the port shared, bound to
    /// `device` when given.
    ///
    /// # Errors
    ///
    /// [`Error::Bind`]: the port is taken without sharing, or sharing is unsupported.
    pub fn bind(local: SocketAddr, device: Option<&str>) -> Result<Self, Error> {
        let opts = SocketOptions::device(device).shared_port();
        let bound = bind::tcp_listener(local, BACKLOG, opts)
            .and_then(|l| Ok((l.local_addr()?, l)))
            .map_err(|source| Error::Bind { local, source })?;
        let (local, listener) = bound;
        Ok(PunchPort {
            listener,
            local,
            device: device.map(str::to_owned),
            mapped: Vec::new(),
            stun: Vec::new(),
        })
    }

    /// The local address and port punched from.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The mapped addresses learned so far, oldest first.
    pub fn mapped(&self) -> &[SocketAddr] {
        &self.mapped
    }

    /// Learns this port's mapping from the STUN server `server`, over TCP from this very
    /// port, within `limit`. The connection stays open while the port lives, holding
    /// the mapping.
    ///
    /// # Errors
    ///
    /// [`Error::Stun`] (connecting, the time limit, a bad answer) or
    /// [`Error::NoMapping`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the connection is dropped and nothing is learned.
    pub async fn learn(
        &mut self,
        server: SocketAddr,
        limit: Duration,
    ) -> Result<SocketAddr, Error> {
        let local = self.local;
        let stun_err = |source| Error::Stun {
            local,
            server,
            source,
        };
        let deadline = tokio::time::Instant::now() + limit;
        let opts = SocketOptions::device(self.device.as_deref()).shared_port();
        let socket = bind::tcp_socket_with(&server, Some(local), opts)
            .map_err(|e| stun_err(crate::stun::Error::io("bind", e)))?;
        let mut stream = match tokio::time::timeout_at(deadline, socket.connect(server)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(stun_err(crate::stun::Error::io("connect", e))),
            Err(_) => {
                return Err(stun_err(crate::stun::Error::NoAnswer {
                    what: "a tcp connection to the stun server",
                    waited: limit,
                }))
            }
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let response = crate::stun::tcp::binding_on(&mut stream, left)
            .await
            .map_err(stun_err)?;
        let mapped = response.mapped.ok_or(Error::NoMapping { local, server })?;
        self.mapped.push(mapped);
        self.stun.push(stream);
        Ok(mapped)
    }

    /// The candidates to send the peer: the mapped addresses and, where the NAT allocates
    /// ports by `allocation` (the nat layer's finding), the predicted next ones.
    ///
    /// # Errors
    ///
    /// [`Unpredictable`]: nothing learned yet, or random or unknown allocation.
    pub fn candidates(
        &self,
        allocation: Option<PortAllocation>,
    ) -> Result<Vec<SocketAddr>, Unpredictable> {
        predict::candidates(allocation, &self.mapped)
    }

    /// Punches a TCP connection to the peer by `plan`, where this side's NAT is `local`
    /// and the peer's `remote`, proving the peer by `key`, all within `limit`.
    ///
    /// Refuses at once, before anything is sent, when [`tcp_feasibility`] says the punch
    /// cannot work. Only candidates of this port's address family are tried.
    ///
    /// # Errors
    ///
    /// [`Error::Refused`]; [`Error::NoCandidates`] (when the peer does not simply connect
    /// to this side); [`Error::TimedOut`], naming every candidate and how it ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: every attempt and connection is dropped.
    pub async fn punch(
        self,
        plan: &Plan,
        local: &TcpNatSummary,
        remote: &TcpNatSummary,
        key: &HelloKey,
        limit: Duration,
    ) -> Result<TcpStream, Error> {
        let way = tcp_feasibility(local, remote).map_err(|refusal| Error::Refused {
            local: self.local,
            refusal,
        })?;
        self.punch_by(plan, way, key, limit).await
    }

    /// As [`PunchPort::punch`], the way through already decided (by the rendezvous).
    pub(crate) async fn punch_by(
        self,
        plan: &Plan,
        way: TcpWay,
        key: &HelloKey,
        limit: Duration,
    ) -> Result<TcpStream, Error> {
        let here = self.local;
        let candidates: Vec<SocketAddr> = (plan.remote.iter())
            .filter(|a| a.is_ipv4() == here.is_ipv4())
            .copied()
            .collect();
        if candidates.is_empty() && way != TcpWay::PeerConnects {
            return Err(Error::NoCandidates { local: here });
        }
        let deadline = Instant::now() + limit;
        let schedule = Schedule::new(&candidates, plan.start, plan.rtt, deadline);
        let hello_limit = HELLO_LIMIT + plan.rtt.saturating_mul(4);
        let run = Run::new(
            &self,
            schedule,
            Handshake::new(key.clone(), plan.role),
            hello_limit,
        );
        run.until_connected()
            .await
            .map_err(|tried| Error::TimedOut {
                local: here,
                limit,
                tried,
            })
    }
}

/// Where a connection came from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Candidate(SocketAddr),
    Accepted,
}

enum Event {
    Due,
    Connected(SocketAddr, io::Result<TcpStream>),
    Accepted(io::Result<TcpStream>),
    Hello(Origin, Result<TcpStream, Attempted>),
}

/// The driver of one punch.
struct Run<'a> {
    port: &'a PunchPort,
    schedule: Schedule,
    handshake: Handshake,
    hello_limit: Duration,
    accepting: bool,
    connects: JoinSet<(SocketAddr, io::Result<TcpStream>)>,
    hellos: JoinSet<(Origin, Result<TcpStream, Attempted>)>,
}

impl<'a> Run<'a> {
    fn new(
        port: &'a PunchPort,
        schedule: Schedule,
        handshake: Handshake,
        hello_limit: Duration,
    ) -> Self {
        Run {
            port,
            schedule,
            handshake,
            hello_limit,
            accepting: true,
            connects: JoinSet::new(),
            hellos: JoinSet::new(),
        }
    }

    /// Runs until a connection passes its hello (`Ok`) or the schedule gives up.
    async fn until_connected(mut self) -> Result<TcpStream, Tried> {
        loop {
            let Some(wake) = self.start_due_attempts() else {
                return Err(self.schedule.tried());
            };
            let event = self.next_event(wake).await;
            let now = Instant::now();
            match event {
                Event::Due => {}
                Event::Connected(to, Ok(stream)) => {
                    self.schedule.on_result(to, Attempted::Connected, now);
                    self.start_handshake(stream, Origin::Candidate(to));
                }
                Event::Connected(to, Err(e)) => {
                    tracing::debug!(%to, error = %e, "tcp punch attempt failed");
                    self.schedule
                        .on_result(to, Attempted::Failed(e.kind()), now);
                }
                Event::Accepted(Ok(stream)) => self.start_handshake(stream, Origin::Accepted),
                Event::Accepted(Err(e)) => {
                    tracing::debug!(local = %self.port.local, error = %e, "tcp punch stops accepting");
                    self.accepting = false;
                }
                Event::Hello(_, Ok(stream)) => {
                    if let Some(stream) = self.choose(stream).await {
                        return Ok(stream);
                    }
                }
                Event::Hello(Origin::Candidate(to), Err(ended)) => {
                    self.schedule.on_result(to, ended, now);
                }
                Event::Hello(Origin::Accepted, Err(ended)) => {
                    self.schedule.on_inbound_refused(ended);
                }
            }
        }
    }

    /// Starts every attempt that is due; returns when to look again, or `None` at the
    /// deadline.
    fn start_due_attempts(&mut self) -> Option<Instant> {
        loop {
            match self.schedule.next_attempt(Instant::now()) {
                Action::Connect(to) => {
                    let local = self.port.local;
                    let device = self.port.device.clone();
                    self.connects.spawn(connect_from(local, to, device));
                }
                Action::Wait(at) => return Some(at),
                Action::GiveUp => return None,
            }
        }
    }

    async fn next_event(&mut self, wake: Instant) -> Event {
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => Event::Due,
            Some(Ok((to, r))) = self.connects.join_next() => Event::Connected(to, r),
            Some(Ok((origin, r))) = self.hellos.join_next() => Event::Hello(origin, r),
            r = self.port.listener.accept(), if self.accepting => {
                Event::Accepted(r.map(|(s, _)| s))
            }
        }
    }

    fn start_handshake(&mut self, stream: TcpStream, origin: Origin) {
        if self.hellos.len() >= MAX_HANDSHAKES {
            if let Origin::Candidate(to) = origin {
                let busy = Attempted::Failed(io::ErrorKind::WouldBlock);
                self.schedule.on_result(to, busy, Instant::now());
            }
            return;
        }
        let handshake = self.handshake.clone();
        let limit = self.hello_limit;
        self.hellos.spawn(async move {
            let r = match tokio::time::timeout(limit, exchange_hellos(stream, handshake)).await {
                Ok(r) => r,
                Err(_) => Err(Attempted::Failed(io::ErrorKind::TimedOut)),
            };
            (origin, r)
        });
    }

    /// The initiator confirms its choice on the stream; the responder's stream was
    /// already chosen by the initiator.
    async fn choose(&mut self, mut stream: TcpStream) -> Option<TcpStream> {
        if self.handshake.start().is_none() {
            return Some(stream);
        }
        let confirm = self.handshake.confirm();
        match tokio::time::timeout(self.hello_limit, send(&mut stream, &confirm)).await {
            Ok(Ok(())) => Some(stream),
            _ => None,
        }
    }
}

/// One connect attempt from the shared local port.
async fn connect_from(
    local: SocketAddr,
    to: SocketAddr,
    device: Option<String>,
) -> (SocketAddr, io::Result<TcpStream>) {
    let opts = SocketOptions::device(device.as_deref()).shared_port();
    let r = match bind::tcp_socket_with(&to, Some(local), opts) {
        Ok(socket) => socket.connect(to).await,
        Err(e) => Err(e),
    };
    (to, r)
}

/// The hello handshake on one connection: at most two hellos are read.
async fn exchange_hellos(
    mut stream: TcpStream,
    mut handshake: Handshake,
) -> Result<TcpStream, Attempted> {
    let failed = |e: io::Error| Attempted::Failed(e.kind());
    if let Some(offer) = handshake.start() {
        send(&mut stream, &offer).await.map_err(failed)?;
    }
    for _ in 0..2 {
        let mut buf = [0u8; HELLO_LEN];
        stream.read_exact(&mut buf).await.map_err(failed)?;
        let hello = Hello::parse(&buf).map_err(|_| Attempted::Rejected("a malformed hello"))?;
        match handshake.on_hello(&hello) {
            Step::Send(reply) => send(&mut stream, &reply).await.map_err(failed)?,
            Step::Verified | Step::Chosen => return Ok(stream),
            Step::Refused(why) => return Err(Attempted::Rejected(why)),
        }
    }
    Err(Attempted::Rejected("a hello out of order"))
}

async fn send(stream: &mut TcpStream, hello: &Hello) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(hello.emit_len());
    hello.emit(&mut out);
    stream.write_all(&out).await
}
