//! The P2P node: its settings, what it gathers at start, and what it releases at stop.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connect::{self, ConnectOptions, Connection};
use super::handshake::{Expect, Hello};
use super::inbound;
use super::path::{self, Mover, PathOptions, SecurePath};
use super::report::Strategy;
use super::request::{Answer, Request, Token, Tokens};
use super::{commit, gather, Error};
use crate::daemon::Daemon;
use crate::identity::{unix_ms, Identity, NodeId, PeerRecord, PortMapping, PublicKey};
use crate::iface::Interface;
use crate::nat::{self, NatReport, NatType, ProbeConfig};
use crate::pipe::{Framing, Pipe, PipeConfig};
use crate::signal::{Signaller, SignallerConfig};
use crate::traverse::mapping::{self, Mapping};
use crate::traverse::punch::tcp::{Inbound, TcpMapping, TcpNatSummary};
use crate::traverse::punch::NatSummary;
use crate::traverse::turn::TurnServer;
use crate::{Af, Proto};

/// The largest frame on a path's raw TCP pipe: one sealed packet and its header.
pub(crate) const MAX_RAW_FRAME: usize = 70 * 1024;

/// The settings of a raw pipe under a path: TCP frames carry one sealed packet each.
pub(crate) fn raw_config() -> PipeConfig {
    PipeConfig::default()
        .framing(Framing::LengthPrefixed)
        .max_frame(MAX_RAW_FRAME)
}

/// The reason a strategy that signals cannot run on a node without a broker.
pub(crate) const NO_SIGNALLING: &str = "no signalling broker is configured";

/// Arrivals waiting for [`Node::accept`].
const ARRIVALS: usize = 64;

/// The settings of a [`Node`], set through its [`Builder`].
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) brokers: Vec<String>,
    pub(crate) stun: Vec<SocketAddr>,
    pub(crate) turn: Vec<TurnServer>,
    pub(crate) port: u16,
    pub(crate) bind: Vec<IpAddr>,
    pub(crate) map_ports: bool,
    pub(crate) encrypt: bool,
    pub(crate) record_ttl: Duration,
    pub(crate) limits: Limits,
}

/// The time limits of a node's operations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// One path handshake.
    pub(crate) path: Duration,
    /// A whole connect.
    pub(crate) connect: Duration,
    /// Between two direct attempts (happy eyeballs).
    pub(crate) stagger: Duration,
    /// Before the relay starts, unless the caller asks for speed.
    pub(crate) relay_delay: Duration,
    /// Port mapping at start.
    pub(crate) mapping: Duration,
    /// A TURN server's answer.
    pub(crate) turn: Duration,
    /// Before a relayed path first tries to move to a punched one.
    pub(crate) upgrade_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            path: Duration::from_secs(3),
            connect: Duration::from_secs(10),
            stagger: Duration::from_millis(100),
            relay_delay: Duration::from_millis(500),
            mapping: Duration::from_secs(2),
            turn: Duration::from_secs(5),
            upgrade_delay: Duration::from_secs(2),
        }
    }
}

/// Sets up a [`Node`]; see [`Node::builder`].
#[derive(Debug)]
pub struct Builder {
    identity: Identity,
    settings: Settings,
}

impl Builder {
    /// Adds a signalling broker, `mqtt://HOST:PORT`. Without one the node reaches
    /// peers only directly, and only directly is reached.
    pub fn signal(mut self, url: impl Into<String>) -> Self {
        self.settings.brokers.push(url.into());
        self
    }

    /// Adds a STUN server: the node learns its external addresses and NAT behaviour
    /// from the STUN servers at start, and the punches ask them for their mappings.
    pub fn stun(mut self, server: SocketAddr) -> Self {
        self.settings.stun.push(server);
        self
    }

    /// Adds a TURN server, for the relay strategy (the first one is used).
    pub fn turn(mut self, server: TurnServer) -> Self {
        self.settings.turn.push(server);
        self
    }

    /// The port to listen on, TCP and UDP alike (default 0: one the system picks).
    pub fn port(mut self, port: u16) -> Self {
        self.settings.port = port;
        self
    }

    /// Listens on `ip` (repeatable). By default the node listens on every address of
    /// every interface that is up, except loopback and link-local ones.
    pub fn bind(mut self, ip: IpAddr) -> Self {
        self.settings.bind.push(ip);
        self
    }

    /// Whether to ask the router for port mappings at start (default: yes).
    pub fn map_ports(mut self, yes: bool) -> Self {
        self.settings.map_ports = yes;
        self
    }

    /// Whether the pipes of this node are encrypted (default: yes). Every path is
    /// authenticated by the node keys either way; without encryption the bytes travel
    /// in the clear, for interoperation and for benchmarks. Both nodes must agree.
    pub fn encrypt(mut self, yes: bool) -> Self {
        self.settings.encrypt = yes;
        self
    }

    /// The time limit of a whole connect (default 10 s).
    pub fn connect_limit(mut self, limit: Duration) -> Self {
        self.settings.limits.connect = limit;
        self
    }

    /// How long a connect waits before it starts the relay, unless asked for speed
    /// (default 500 ms).
    pub fn relay_delay(mut self, delay: Duration) -> Self {
        self.settings.limits.relay_delay = delay;
        self
    }

    /// How long a connect won by the relay waits before it first tries to move to a
    /// punched path (default 2 s; then waits doubling up to a minute, 8 tries).
    pub fn upgrade_delay(mut self, delay: Duration) -> Self {
        self.settings.limits.upgrade_delay = delay;
        self
    }

    /// How long a signed address record stays valid (default 1 hour).
    pub fn record_ttl(mut self, ttl: Duration) -> Self {
        self.settings.record_ttl = ttl;
        self
    }

    /// Starts the node: signalling, the NAT tests, port mappings, the listeners, the
    /// signed record. Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// No broker subscribed ([`Error::Signal`]), a listener that cannot be bound, no
    /// address to listen on, or a record that cannot be signed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: what was started is dropped; a port mapping made meanwhile expires
    /// with its lease.
    pub async fn start(self) -> Result<Node, Error> {
        Node::start(self.identity, self.settings).await
    }
}

/// A path that reached this node, from [`Node::accept`].
#[derive(Debug)]
pub struct Arrival {
    /// The path, authenticated (and encrypted unless the node is not).
    pub pipe: Pipe,
    /// The peer's key, proven on the path.
    pub peer: PublicKey,
    /// The strategy that brought it.
    pub strategy: Strategy,
    /// TCP or UDP.
    pub proto: Proto,
}

impl Arrival {
    /// The peer's node id.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_key(&self.peer)
    }
}

/// What [`Node::stop`] released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Port mappings deleted on the router.
    pub mappings_deleted: usize,
    /// Port mappings the router did not confirm deleted (they expire with their lease).
    pub mappings_failed: usize,
    /// Relay allocations deleted.
    pub relays_closed: usize,
    /// Whether signalling was stopped (false: the node had none).
    pub signalling_stopped: bool,
    /// Inbound peers whose serving had not ended at the deadline.
    pub aborted: usize,
}

/// What a node knows of one family of its own.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Family {
    /// The NAT, from the STUN tests (all unknown without them).
    pub(crate) nat: NatSummary,
    /// The external address STUN saw.
    pub(crate) external: Option<SocketAddr>,
}

impl Family {
    /// What this side's NAT is taken to do to TCP ([`assumed_tcp`]).
    pub(crate) fn tcp(&self) -> TcpNatSummary {
        assumed_tcp(&self.nat)
    }
}

/// What a NAT is taken to do to TCP, from what it does to UDP: TCP filtering cannot be
/// measured, so a NAT or firewall is taken to filter inbound connections, and to
/// allocate TCP ports as it does UDP ones. Without a NAT (open, or UDP blocked by a
/// firewall that passes TCP) inbound TCP is taken to pass.
pub(crate) fn assumed_tcp(nat: &NatSummary) -> TcpNatSummary {
    let (mapping, inbound) = match nat.nat_type {
        Some(NatType::Open | NatType::UdpBlocked) => (TcpMapping::Direct, Inbound::Open),
        Some(NatType::SymmetricUdpFirewall) => (TcpMapping::Direct, Inbound::Filtered),
        _ => (
            TcpMapping::Translated(nat.port_allocation),
            Inbound::Filtered,
        ),
    };
    TcpNatSummary { mapping, inbound }
}

/// What the node's parts share.
pub(crate) struct Inner {
    pub(crate) identity: Identity,
    pub(crate) settings: Settings,
    pub(crate) signaller: Option<Signaller>,
    /// The addresses the listeners are bound to.
    pub(crate) listening: Vec<SocketAddr>,
    pub(crate) v4: Family,
    pub(crate) v6: Family,
    /// The ports mapped on the router, per protocol: (local, external).
    pub(crate) mapped: Vec<(Proto, SocketAddr, SocketAddr)>,
    record: PeerRecord,
    /// Connects waiting for a path to arrive with their token.
    pending: Mutex<HashMap<Token, oneshot::Sender<SecurePath>>>,
    tokens: Mutex<Tokens>,
    /// Relayed paths this node answered, which the peer may move: by token.
    relayed: Mutex<HashMap<Token, (PublicKey, Mover)>>,
    /// Peers whose next punch moves one of those paths.
    upgrading: Mutex<Vec<(PublicKey, Mover)>>,
    pub(crate) arrivals: mpsc::Sender<Arrival>,
    pub(crate) tasks: TaskTracker,
    pub(crate) stopping: CancellationToken,
    pub(crate) relays_closed: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// What this node knows of `af`.
    pub(crate) fn family(&self, af: Af) -> &Family {
        match af {
            Af::V4 => &self.v4,
            Af::V6 => &self.v6,
        }
    }

    /// The family the NAT-dependent strategies (punch, relay to direct) use: IPv4 when
    /// this node has it, as NATs are IPv4's; else IPv6.
    pub(crate) fn nat_family(&self) -> Af {
        if self.listening_on(Af::V4).is_some() {
            Af::V4
        } else {
            Af::V6
        }
    }

    /// The listening address of family `af`, if any.
    pub(crate) fn listening_on(&self, af: Af) -> Option<SocketAddr> {
        self.listening
            .iter()
            .copied()
            .find(|a| Af::of(&a.ip()) == af)
    }

    /// The node's signaller, or the reason a strategy that needs one cannot run.
    pub(crate) fn signalling(&self) -> Result<&Signaller, String> {
        self.signaller
            .as_ref()
            .ok_or_else(|| NO_SIGNALLING.to_string())
    }

    /// Sends `request` to `peer` over signalling and takes its answer, at most `limit`:
    /// the relayed address an acceptance carries, if any; a refusal, or no answer, as
    /// the reason.
    pub(crate) async fn ask(
        &self,
        peer: &PublicKey,
        request: &Request,
        limit: Duration,
    ) -> Result<Option<SocketAddr>, String> {
        let answer = self
            .signalling()?
            .request(peer, &request.to_bytes(), limit)
            .await
            .map_err(|e| format!("the peer did not answer over signalling: {e}"))?;
        match Answer::parse(&answer).map_err(|e| e.to_string())? {
            Answer::Accepted { relayed } => Ok(relayed),
            Answer::Refused { reason } => Err(format!("the peer refused: {reason}")),
        }
    }

    /// Authenticates `raw` as the initiator, expecting `peer`, saying `strategy` and
    /// `token`; the error is a reason for the report.
    pub(crate) async fn initiate(
        &self,
        raw: Pipe,
        peer: &PublicKey,
        strategy: Strategy,
        token: Token,
    ) -> Result<SecurePath, String> {
        let hello = Hello {
            strategy: strategy.code(),
            token,
        };
        path::initiate(raw, &self.identity, peer, hello, &self.path_options())
            .await
            .map_err(|e| e.to_string())
    }

    /// Authenticates `raw` as the responder, accepting `expect`.
    pub(crate) async fn respond(&self, raw: Pipe, expect: Expect) -> Result<SecurePath, String> {
        path::respond(raw, &self.identity, expect, &self.path_options())
            .await
            .map_err(|e| e.to_string())
    }

    fn path_options(&self) -> PathOptions {
        PathOptions {
            limit: self.settings.limits.path,
            encrypt: self.settings.encrypt,
            ..PathOptions::default()
        }
    }

    /// Hands a path that reached this node to [`Node::accept`] once the connecting node
    /// commits it; closes it if it does not, or if the queue is full (the application
    /// does not accept).
    pub(crate) async fn deliver(&self, path: SecurePath, strategy: Strategy, proto: Proto) {
        let limit = self.settings.limits.connect;
        if let Err(reason) = commit::committed(&path.pipe, &path.hello.token, limit).await {
            tracing::debug!(peer = %path.peer_id(), %strategy, %reason, "a path not kept");
            path.pipe.close().await;
            return;
        }
        let arrival = Arrival {
            pipe: path.pipe,
            peer: path.peer,
            strategy,
            proto,
        };
        tracing::debug!(peer = %arrival.node_id(), %strategy, %proto, "a peer arrived");
        if let Err(e) = self.arrivals.try_send(arrival) {
            let arrival = match e {
                mpsc::error::TrySendError::Full(a) | mpsc::error::TrySendError::Closed(a) => a,
            };
            tracing::warn!(peer = %arrival.node_id(), "arrival dropped: nobody accepts");
            arrival.pipe.close().await;
        }
    }

    /// Registers a connect waiting for the path that says `token`.
    pub(crate) fn expect(&self, token: Token) -> oneshot::Receiver<SecurePath> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(token, tx);
        rx
    }

    /// Stops waiting for `token`.
    pub(crate) fn forget(&self, token: &Token) {
        lock(&self.pending).remove(token);
    }

    /// Hands `path` to the connect waiting for its token; gives it back if none waits.
    pub(crate) fn claim(&self, path: SecurePath) -> Option<SecurePath> {
        let waiter = lock(&self.pending).remove(&path.hello.token);
        match waiter {
            Some(tx) => tx.send(path).err(),
            None => Some(path),
        }
    }

    /// Keeps the mover of a relayed path this node answered, for an upgrade.
    pub(crate) fn relayed(&self, token: Token, peer: PublicKey, mover: Mover) {
        lock(&self.relayed).insert(token, (peer, mover));
    }

    /// Forgets the relayed path `token` (it ended).
    pub(crate) fn relayed_ended(&self, token: &Token) {
        lock(&self.relayed).remove(token);
    }

    /// Takes `peer`'s next punch for the relayed path `token`; false if this node holds
    /// no such path from `peer`.
    pub(crate) fn expect_upgrade(&self, peer: &PublicKey, token: &Token) -> bool {
        let mover = match lock(&self.relayed).get(token) {
            Some((p, m)) if p == peer => m.clone(),
            _ => return false,
        };
        let mut upgrading = lock(&self.upgrading);
        upgrading.retain(|(p, _)| p != peer);
        upgrading.push((*peer, mover));
        true
    }

    /// The relayed path `peer`'s punch is to move, if one was announced.
    pub(crate) fn upgrading(&self, peer: &PublicKey) -> Option<Mover> {
        let mut upgrading = lock(&self.upgrading);
        let i = upgrading.iter().position(|(p, _)| p == peer)?;
        Some(upgrading.swap_remove(i).1)
    }

    /// Whether `token` is new to this node (and remembers it).
    pub(crate) fn fresh(&self, token: &Token) -> bool {
        lock(&self.tokens).fresh(token)
    }

    /// The signed record.
    pub(crate) fn record(&self) -> &PeerRecord {
        &self.record
    }

    /// A fresh token.
    pub(crate) fn token() -> Token {
        let mut t = [0u8; super::request::TOKEN_LEN];
        getrandom::fill(&mut t).expect("the system random source");
        t
    }
}

/// A node that reaches its peers through whatever lies between them (see the module
/// docs of [`p2p`](super)).
pub struct Node {
    inner: Arc<Inner>,
    daemon: tokio::sync::Mutex<Option<Daemon>>,
    arrivals: tokio::sync::Mutex<mpsc::Receiver<Arrival>>,
    mappings: tokio::sync::Mutex<Vec<Mapping>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.identity.node_id())
            .field("listening", &self.inner.listening)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node with `identity` and the default settings: no broker, no STUN or TURN
    /// server, any port, every interface, port mapping on, encryption on.
    pub fn builder(identity: Identity) -> Builder {
        Builder {
            identity,
            settings: Settings {
                brokers: Vec::new(),
                stun: Vec::new(),
                turn: Vec::new(),
                port: 0,
                bind: Vec::new(),
                map_ports: true,
                encrypt: true,
                record_ttl: Duration::from_secs(3600),
                limits: Limits::default(),
            },
        }
    }

    async fn start(identity: Identity, settings: Settings) -> Result<Node, Error> {
        let ips = listen_ips(&settings)?;
        let signaller = match settings.brokers.is_empty() {
            true => None,
            false => Some(
                Signaller::start(
                    identity.clone(),
                    &settings.brokers,
                    SignallerConfig::default(),
                )
                .await?,
            ),
        };
        let (handler, daemon, listening) = inbound::listen(&ips, settings.port).await?;
        let mapped = async {
            match settings.map_ports {
                true => map_ports(&listening, settings.limits.mapping).await,
                false => Vec::new(),
            }
        };
        let (v4, v6, mappings) = tokio::join!(
            probe(Af::V4, &ips, &settings.stun),
            probe(Af::V6, &ips, &settings.stun),
            mapped
        );
        let reports: Vec<(Af, NatReport)> = [(Af::V4, &v4), (Af::V6, &v6)]
            .into_iter()
            .filter_map(|(af, r)| r.clone().map(|r| (af, r)))
            .collect();
        let families = [
            (Af::V4, known(v4.as_ref(), &listening, Af::V4)),
            (Af::V6, known(v6.as_ref(), &listening, Af::V6)),
        ];
        let record = sign_record(
            &identity, &settings, &listening, &reports, &families, &mappings,
        )?;
        if let Some(s) = &signaller {
            s.set_record(record.clone());
        }
        let (tx, rx) = mpsc::channel(ARRIVALS);
        let inner = Arc::new(Inner {
            identity,
            signaller,
            listening,
            v4: families[0].1,
            v6: families[1].1,
            mapped: mappings
                .iter()
                .map(|m| (m.lease().proto, m.lease().local, m.external()))
                .collect(),
            record,
            pending: Mutex::default(),
            tokens: Mutex::default(),
            relayed: Mutex::default(),
            upgrading: Mutex::default(),
            arrivals: tx,
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            relays_closed: Default::default(),
            settings,
        });
        handler.serve(&inner);
        if inner.signaller.is_some() {
            inner.tasks.spawn(inbound::signals(inner.clone()));
        }
        tracing::info!(node = %inner.identity.node_id(), listening = ?inner.listening, "p2p node started");
        Ok(Node {
            inner,
            daemon: tokio::sync::Mutex::new(Some(daemon)),
            arrivals: tokio::sync::Mutex::new(rx),
            mappings: tokio::sync::Mutex::new(mappings),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.identity.node_id()
    }

    /// This node's signed address record, which peers pass to [`Node::connect`].
    pub fn record(&self) -> &PeerRecord {
        self.inner.record()
    }

    /// The addresses the node listens on (TCP and UDP share each).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.inner.listening
    }

    /// Connects to the node whose signed record is `peer`, over `proto`, racing every
    /// strategy; see [`Node::connect_with`].
    ///
    /// # Errors
    ///
    /// As [`Node::connect_with`].
    ///
    /// # Cancel safety
    ///
    /// As [`Node::connect_with`].
    pub async fn connect(&self, peer: &PeerRecord, proto: Proto) -> Result<Connection, Error> {
        self.connect_with(peer, proto, &ConnectOptions::default())
            .await
    }

    /// Connects to the node whose signed record is `peer`, over `proto`, with the
    /// strategies `opts` allows, raced as happy eyeballs: direct attempts start at once
    /// (IPv6 first, staggered), the reverse, port-mapping and punch strategies at once
    /// over signalling, the relay after a short delay (at once with
    /// [`ConnectOptions::fast`]). The first path authenticated by the peer's key wins;
    /// the others are stopped. The [`Report`](super::Report) says what each strategy
    /// did.
    ///
    /// # Errors
    ///
    /// [`Error::Unreachable`] with the report when no strategy made a path within the
    /// connect limit; [`Error::NotAPeer`] for this node's own record.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future stops every strategy; relays it allocated are
    /// deleted, and the peer's halves time out.
    pub async fn connect_with(
        &self,
        peer: &PeerRecord,
        proto: Proto,
        opts: &ConnectOptions,
    ) -> Result<Connection, Error> {
        connect::run(&self.inner, peer, proto, opts).await
    }

    /// The next path that reached this node: a direct connection, a reverse one it was
    /// asked for, a punch or a relay the peer started. `None` once the node has
    /// stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn accept(&self) -> Option<Arrival> {
        self.arrivals.lock().await.recv().await
    }

    /// Stops the node and releases everything it holds: the listeners (inbound peers
    /// get until `deadline` to finish), the port mappings, the relay allocations, and
    /// the broker sessions.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a stop dropped midway leaves what it had not reached to expire.
    pub async fn stop(&self, deadline: Duration) -> StopReport {
        let mut report = StopReport::default();
        self.inner.stopping.cancel();
        if let Some(daemon) = self.daemon.lock().await.take() {
            report.aborted = daemon.shutdown(deadline).await.aborted;
        }
        for m in self.mappings.lock().await.drain(..) {
            match m.close(self.inner.settings.limits.mapping).await {
                Ok(()) => report.mappings_deleted += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "a port mapping was not deleted");
                    report.mappings_failed += 1;
                }
            }
        }
        self.inner.tasks.close();
        if tokio::time::timeout(deadline, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("p2p node tasks still running after the stop deadline");
        }
        report.relays_closed = self
            .inner
            .relays_closed
            .load(std::sync::atomic::Ordering::Acquire);
        if let Some(s) = &self.inner.signaller {
            s.stop().await;
            report.signalling_stopped = true;
        }
        self.arrivals.lock().await.close();
        report
    }
}

/// The addresses to listen on: those asked for, or every offerable address.
fn listen_ips(settings: &Settings) -> Result<Vec<IpAddr>, Error> {
    if !settings.bind.is_empty() {
        return Ok(settings.bind.clone());
    }
    let nics = Interface::list().map_err(|e| Error::Setup(e.to_string()))?;
    let ips: Vec<IpAddr> = nics
        .iter()
        .filter(|n| n.flags.up && !n.flags.loopback)
        .flat_map(|n| {
            let v4 = n.v4.iter().map(|a| IpAddr::from(a.ip));
            v4.chain(n.v6.iter().map(|a| IpAddr::from(a.ip)))
        })
        .filter(|ip| gather::offerable(*ip))
        .collect();
    if ips.is_empty() {
        return Err(Error::Setup(
            "no address to listen on: no interface is up with a usable address".into(),
        ));
    }
    Ok(ips)
}

/// The NAT report of `af` from the listening address of that family, if there is one
/// and a STUN server of the family answers.
async fn probe(af: Af, ips: &[IpAddr], stun: &[SocketAddr]) -> Option<NatReport> {
    let ip = ips.iter().copied().find(|ip| Af::of(ip) == af)?;
    if !stun.iter().any(|s| Af::of(&s.ip()) == af) {
        return None;
    }
    let cfg = ProbeConfig {
        local_ip: Some(ip),
        ..ProbeConfig::default()
    };
    match nat::probe(af, stun, &cfg).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::info!(%af, error = %e, "no nat report");
            None
        }
    }
}

/// What is known of family `af`: the NAT report's findings, or, without one, that a
/// node listening on loopback has no NAT (nothing translates loopback traffic); else
/// nothing.
fn known(report: Option<&NatReport>, listening: &[SocketAddr], af: Af) -> Family {
    if let Some(r) = report {
        return Family {
            nat: NatSummary::from_report(r),
            external: r.external,
        };
    }
    let on_loopback = listening
        .iter()
        .find(|a| Af::of(&a.ip()) == af)
        .filter(|a| a.ip().is_loopback());
    match on_loopback {
        Some(a) => Family {
            nat: NatSummary::of_type(NatType::Open),
            external: Some(*a),
        },
        None => Family::default(),
    }
}

/// Asks the router for a mapping of each listening port, TCP and UDP, on the first IPv4
/// address that is not routed on the internet (private, carrier-grade shared, or a
/// documentation or benchmarking block, as in the lab); what the router grants.
async fn map_ports(listening: &[SocketAddr], limit: Duration) -> Vec<Mapping> {
    use crate::addr::AddrClass;
    let private = |a: &&SocketAddr| {
        a.is_ipv4()
            && matches!(
                crate::addr::classify(a.ip()),
                AddrClass::Private | AddrClass::Shared | AddrClass::Documentation
            )
    };
    let Some(local) = listening.iter().find(private).copied() else {
        return Vec::new();
    };
    let opts = mapping::Options {
        limit,
        ..mapping::Options::default()
    };
    let (tcp, udp) = tokio::join!(
        Mapping::open(Proto::Tcp, local, &opts),
        Mapping::open(Proto::Udp, local, &opts)
    );
    let mut out = Vec::new();
    for (proto, got) in [(Proto::Tcp, tcp), (Proto::Udp, udp)] {
        match got {
            Ok(m) => {
                tracing::info!(%proto, %local, external = %m.external(), method = %m.method(), "port mapped");
                out.push(m);
            }
            Err(e) => tracing::info!(%proto, %local, error = %e, "no port mapping"),
        }
    }
    out
}

/// Signs the node's record: its listening addresses, NAT reports, mappings, brokers.
fn sign_record(
    identity: &Identity,
    settings: &Settings,
    listening: &[SocketAddr],
    reports: &[(Af, NatReport)],
    families: &[(Af, Family)],
    mappings: &[Mapping],
) -> Result<PeerRecord, Error> {
    let nics = Interface::list().map_err(|e| Error::Setup(e.to_string()))?;
    let ips: Vec<IpAddr> = listening.iter().map(|a| a.ip()).collect();
    let port = listening.first().map_or(0, |a| a.port());
    let now = unix_ms(SystemTime::now());
    let mapped: Vec<(IpAddr, PortMapping)> = mappings
        .iter()
        .map(|m| {
            let lease = m.lease();
            let left = lease
                .expires_at()
                .saturating_duration_since(std::time::Instant::now());
            let mapping = PortMapping {
                protocol: lease.proto,
                internal_port: lease.local.port(),
                external_port: lease.external.port(),
                lease_expires_ms: now.saturating_add(left.as_millis() as u64),
            };
            (lease.local.ip(), mapping)
        })
        .collect();
    let mut builder = PeerRecord::builder();
    for mut e in gather::interface_entries(&nics, &ips, reports, port, &mapped) {
        // What is known without a report (a loopback family has no NAT) goes in too.
        for f in e.families.iter_mut().filter(|f| f.nat_type.is_none()) {
            if let Some((_, known)) = families.iter().find(|(af, _)| *af == f.af) {
                f.nat_type = known.nat.nat_type;
                f.mapping = known.nat.mapping;
                f.filtering = known.nat.filtering;
                f.port_allocation = known.nat.port_allocation;
                f.external = f.external.or(known.external);
            }
        }
        builder = builder.interface(e);
    }
    for b in &settings.brokers {
        builder = builder.broker(b.clone());
    }
    builder
        .sign(identity, now, settings.record_ttl)
        .map_err(|e| Error::Setup(format!("cannot sign the address record: {e}")))
}
