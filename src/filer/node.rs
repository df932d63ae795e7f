//! The file-sharing node on the Daemon: the I/O shell around the protocol core
//! ([`core`](super::core)). The core decides every reply and step; the node carries
//! them out: it sends the replies, reads and streams files, asks other nodes (joining,
//! searching, the stabilizer) and runs the trusted operations.
//!
//! What it fixes in the original (see `docs/protocol.md`):
//!
//! - FGET, FINF and FRNG serve only regular files inside the shared folder
//!   ([`SharedDir`]); names learned from RESP are never served.
//! - A request frame is bounded ([`MAX_CONTROL`](super::frame::MAX_CONTROL)) before anything is
//!   allocated, and must arrive whole within the request timeout; files are streamed in
//!   64 KiB pieces; every peer operation has a time limit.
//! - Queries are de-duplicated ([`Seen`]); `QHST` carries its id and the nodes it
//!   visited, so it never loops; each node forwards a query once to each neighbour.
//! - JOIN and QUIT are accepted as the protocol says, but trusted operations (`TRST`)
//!   need the node's secret, proven by challenge-response, and by default come only from
//!   loopback.
//!
//! A node bound to `[::]` is dual-stack (IPv4 clients reach it too, and a loopback one is
//! still loopback). A node bound to a wildcard address needs an id others can use: by
//! default the LAN address of the default interface ([`NodeConfig::advertise_host`]).
//!
//! The node logs at info level what changes its view of the network and what it gives
//! away: peers joining, leaving (QUIT) and dropped by the stabilizer, searches answered,
//! files served, and trusted operations accepted or refused (never a secret or a MAC).
//! Names and keys other peers sent are logged escaped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::broadcast;

use super::answers::Answers;
use super::client::FilerClient;
use super::core::{self, Answer, Build, Core, Forward, Query, Step, Work};
use super::frame::{Frame, HEADER_LEN};
use super::msg::{reply, QueryId};
use super::peer::{PeerEntry, PeerId, PeerTable};
use super::shared::{sha256_file, SharedDir, SharedError, SharedFile, Skipped};
use super::Error;
use crate::addr::{AddrClass, Af};
use crate::daemon::{Daemon, Handler};
use crate::iface::Interface;
use crate::pipe::{Message, Pipe, PipeConfig, Proto};
use crate::Framing;

pub use super::core::Hit;

/// The most queries handled at once; more are dropped and counted (a flood cannot make
/// a task per query without bound, as the original made a thread per query).
pub const MAX_QUERIES_IN_FLIGHT: usize = 256;

/// The most searches a node runs at once for askers who wait on their connection
/// (`SRCH`); more are answered `ERRO Search: busy`.
pub const MAX_SEARCHES_FOR_OTHERS: usize = 8;

/// Bytes read from disk at a time when serving a file.
const CHUNK: usize = 64 * 1024;

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The shared folder (downloads land here too).
    pub dir: PathBuf,
    /// The most peers in the table.
    pub max_peers: usize,
    /// The secret that trusted operations must prove; `None` turns them off.
    pub secret: Option<Vec<u8>>,
    /// Accept trusted operations from any address, not only loopback.
    pub trusted_from_anywhere: bool,
    /// A request must arrive whole within this time of the connection (or it is closed).
    pub request_timeout: Duration,
    /// The time limit of every operation towards another peer, and of each piece of a
    /// file sent.
    pub peer_timeout: Duration,
    /// The time limit of every file-system check.
    pub fs_timeout: Duration,
    /// How often the stabilizer pings peers and drops the dead (`None`: never).
    pub stabilize_every: Option<Duration>,
    /// The host in the node's id. By default the address it listens on; for a wildcard
    /// address (`0.0.0.0`, `[::]`), the LAN address of the interface of the default
    /// route (IPv4 first, then IPv6 for `[::]`), else of the first interface that is up,
    /// else loopback.
    pub advertise_host: Option<String>,
    /// The most connections served at once.
    pub max_connections: usize,
    /// The TTL of the node's own searches.
    pub search_ttl: u32,
}

impl NodeConfig {
    /// Defaults for a node sharing `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            dir: dir.into(),
            max_peers: super::peer::DEFAULT_MAX_PEERS,
            secret: None,
            trusted_from_anywhere: false,
            request_timeout: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(5),
            fs_timeout: super::shared::DEFAULT_FS_TIMEOUT,
            stabilize_every: Some(Duration::from_secs(10)),
            advertise_host: None,
            max_connections: 1024,
            search_ttl: 8,
        }
    }
}

/// Counters of a node.
#[derive(Debug, Default)]
struct Counters {
    queries_received: AtomicU64,
    queries_handled: AtomicU64,
    queries_duplicate: AtomicU64,
    queries_sent: AtomicU64,
    resp_sent: AtomicU64,
    files_served: AtomicU64,
    bytes_served: AtomicU64,
    queries_shed: AtomicU64,
}

/// A snapshot of a node's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// QUER and QHST received.
    pub queries_received: u64,
    /// Of those, handled to the end: dropped as already seen, answered, or forwarded
    /// with every forward finished. Less than `queries_received` while some are being
    /// handled.
    pub queries_handled: u64,
    /// Of those, dropped as already seen.
    pub queries_duplicate: u64,
    /// QUER and QHST sent (forwarded, or the node's own searches).
    pub queries_sent: u64,
    /// RESP sent.
    pub resp_sent: u64,
    /// RESP received.
    pub resp_received: u64,
    /// FGET and FRNG answered with file bytes.
    pub files_served: u64,
    /// File bytes sent.
    pub bytes_served: u64,
    /// Trusted requests refused.
    pub trust_denied: u64,
    /// Queries dropped because 256 (the most at once) were being handled.
    pub queries_shed: u64,
}

/// The I/O shell around the protocol core: the folder, the sockets, the clock.
struct Inner {
    id: OnceLock<PeerId>,
    cfg: NodeConfig,
    shared: SharedDir,
    core: Mutex<Core>,
    results: broadcast::Sender<Hit>,
    hashes: Mutex<HashMap<FileKey, [u8; 32]>>,
    counters: Counters,
    query_slots: Arc<tokio::sync::Semaphore>,
    search_slots: Arc<tokio::sync::Semaphore>,
}

/// A running file-sharing node.
pub struct FilerNode {
    inner: Arc<Inner>,
    daemon: Option<Daemon>,
    addr: SocketAddr,
    stabilizer: Option<tokio::task::JoinHandle<()>>,
}

/// A file's identity for the hash cache: real path, size and modification time.
type FileKey = (PathBuf, u64, Option<SystemTime>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FilerNode {
    /// Starts a node sharing `cfg.dir`, listening on `bind` (TCP; port 0 picks one). On
    /// `[::]` it is dual-stack: IPv4 clients reach it too.
    ///
    /// # Errors
    ///
    /// The folder cannot be opened ([`Error::Folder`]), or the address cannot be bound
    /// ([`Error::Listen`], naming the address).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn start(bind: SocketAddr, cfg: NodeConfig) -> Result<FilerNode, Error> {
        let shared = SharedDir::open(&cfg.dir, cfg.fs_timeout)
            .await
            .map_err(|e| Error::Folder(e.to_string()))?;
        let placeholder = PeerId::new("0.0.0.0", 1).expect("a valid placeholder");
        let (results, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            id: OnceLock::new(),
            shared,
            core: Mutex::new(Core::new(
                placeholder,
                cfg.max_peers,
                cfg.secret.clone(),
                cfg.trusted_from_anywhere,
            )),
            results,
            hashes: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            query_slots: Arc::new(tokio::sync::Semaphore::new(MAX_QUERIES_IN_FLIGHT)),
            search_slots: Arc::new(tokio::sync::Semaphore::new(MAX_SEARCHES_FOR_OTHERS)),
            cfg,
        });
        let wildcard_v6 = matches!(bind.ip(), IpAddr::V6(ip) if ip.is_unspecified());
        let pipe_cfg = PipeConfig::default()
            .framing(Framing::Btpeer)
            .max_frame(super::frame::MAX_CONTROL)
            .dual_stack(wildcard_v6);
        let daemon = Daemon::builder(NodeHandler(inner.clone()))
            .config(pipe_cfg)
            .idle_timeout(inner.cfg.request_timeout)
            .max_connections(inner.cfg.max_connections)
            .listen(Proto::Tcp, bind)
            .start()
            .await
            .map_err(|e| listen_error(e, bind))?;
        let addr = daemon.local_addrs()[0].1;
        let host = match &inner.cfg.advertise_host {
            Some(h) => h.clone(),
            None => default_host(addr.ip()).await,
        };
        let id = PeerId::new(&host, addr.port())?;
        lock(&inner.core).set_id(id.clone());
        let _ = inner.id.set(id);
        let stabilizer = inner.cfg.stabilize_every.map(|every| {
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.stabilize().await;
                }
            })
        });
        Ok(FilerNode {
            inner,
            daemon: Some(daemon),
            addr,
            stabilizer,
        })
    }

    /// The node's id (`host:port`).
    pub fn id(&self) -> &PeerId {
        self.inner.id()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer table, in insertion order.
    pub fn peers(&self) -> Vec<PeerEntry> {
        lock(&self.inner.core).neighbours()
    }

    /// The files the node shares, as searches see them: from the folder's index, at most
    /// 2 s old. The same walk gives
    /// [`skipped`](Self::skipped).
    ///
    /// # Errors
    ///
    /// The folder cannot be read in time.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn files(&self) -> Result<Vec<SharedFile>, Error> {
        self.inner
            .shared
            .index()
            .await
            .map(|files| files.to_vec())
            .map_err(|e| Error::Folder(e.to_string()))
    }

    /// The files of the folder left out because the protocol cannot carry their names
    /// (whitespace, control characters...), from the walk searches use.
    ///
    /// # Errors
    ///
    /// The folder cannot be read in time.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn skipped(&self) -> Result<std::sync::Arc<Skipped>, Error> {
        self.inner
            .shared
            .skipped()
            .await
            .map_err(|e| Error::Folder(e.to_string()))
    }

    /// Names learned from search results, with their owners.
    pub fn remote_files(&self) -> Vec<Hit> {
        lock(&self.inner.core).remote_files()
    }

    /// Counters so far.
    pub fn stats(&self) -> NodeStats {
        self.inner.stats()
    }

    /// Joins the network through the node at `host:port`, as btfiler's buildpeers
    /// does: NAME, JOIN, add the contact, LIST, and recurse into the listed peers with
    /// one hop less, until the table is full or the hops run out. Returns how many peers
    /// were added.
    ///
    /// # Errors
    ///
    /// Only if the contact itself cannot be reached; later peers that fail are skipped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: peers added so far stay.
    pub async fn join(&self, host: &str, port: u16, hops: u32) -> Result<usize, Error> {
        self.inner.build_peers(host, port, hops).await
    }

    /// Searches the network for names containing `key`, and returns a receiver of the
    /// results as they arrive (RESP). Subscribe before the results come: the receiver is
    /// made before the query is sent.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn search(&self, key: &str) -> broadcast::Receiver<Hit> {
        self.inner.search(key).await
    }

    /// A receiver of every search result (RESP) this node gets from now on, whoever
    /// asked: for tools that send queries with this node as the return address.
    pub fn results(&self) -> broadcast::Receiver<Hit> {
        self.inner.results.subscribe()
    }

    /// Leaves the network: tells every peer (QUIT), then stops serving, letting
    /// requests in progress finish within `deadline`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled shutdown may leave the daemon running until drop.
    pub async fn shutdown(mut self, deadline: Duration) {
        if let Some(s) = self.stabilizer.take() {
            s.abort();
        }
        let me = self.id().clone();
        let peers = self.peers();
        let t = self.inner.cfg.peer_timeout;
        let quits = peers.iter().map(|p| {
            let me = me.clone();
            async move {
                let _ = client_for(p, t).quit(&me).await;
            }
        });
        futures::future::join_all(quits).await;
        if let Some(d) = self.daemon.take() {
            d.shutdown(deadline).await;
        }
    }
}

impl Drop for FilerNode {
    fn drop(&mut self) {
        if let Some(s) = self.stabilizer.take() {
            s.abort();
        }
    }
}

/// A fresh id for a search this node starts.
fn random_qid() -> QueryId {
    let mut id = [0u8; 8];
    let _ = getrandom::fill(&mut id);
    QueryId(u64::from_be_bytes(id))
}

struct NodeHandler(Arc<Inner>);

impl Handler for NodeHandler {
    fn on_message(
        &self,
        msg: Message,
        reply: Pipe,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send {
        let inner = self.0.clone();
        async move {
            let r = inner.handle(msg, &reply).await;
            // One request per connection: the close ends the replies.
            reply.close().await;
            r.map_err(|e| e.to_string())
        }
    }
}

fn client_for(entry: &PeerEntry, t: Duration) -> FilerClient {
    FilerClient::new(crate::addr::Target::Host {
        host: entry.host.clone(),
        port: entry.port,
    })
    .timeout(t)
}

/// The daemon's failure to listen, as this layer's error, naming the address.
fn listen_error(e: crate::daemon::Error, bind: SocketAddr) -> Error {
    use crate::daemon::Error as D;
    match e {
        D::Listen {
            addr,
            source: crate::pipe::Error::Bind { source, .. },
            ..
        } => {
            let kind = source.kind();
            let reason = match kind {
                std::io::ErrorKind::AddrInUse => "address in use".to_owned(),
                std::io::ErrorKind::AddrNotAvailable => "no such address on this machine".into(),
                std::io::ErrorKind::PermissionDenied if (1..1024).contains(&addr.port()) => {
                    "permission denied (ports below 1024 need privileges)".into()
                }
                _ => source.to_string().to_lowercase(),
            };
            Error::Listen { addr, kind, reason }
        }
        D::Listen { addr, source, .. } => Error::Listen {
            addr,
            kind: std::io::ErrorKind::Other,
            reason: source.to_string().to_lowercase(),
        },
        D::NoListeners => Error::Listen {
            addr: bind,
            kind: std::io::ErrorKind::Other,
            reason: e.to_string(),
        },
    }
}

/// The host of the id of a node listening on `bound` (see [`NodeConfig::advertise_host`]).
async fn default_host(bound: IpAddr) -> String {
    if !bound.is_unspecified() {
        return bound.to_string();
    }
    let families: &[Af] = if bound.is_ipv6() {
        &[Af::V4, Af::V6]
    } else {
        &[Af::V4]
    };
    for &af in families {
        if let Some(ip) = lan_address(af).await {
            return ip.to_string();
        }
    }
    tracing::warn!("no network interface is up: the node's id is a loopback address");
    "127.0.0.1".to_owned()
}

/// An address of family `af` that other machines of the network can reach this one at: the
/// default interface's (from the route table, or where the route table cannot be read, the
/// source address the OS picks towards a documentation address, which sends nothing), else
/// the first of an interface that is up. Never loopback or link-local.
async fn lan_address(af: Af) -> Option<IpAddr> {
    let usable = |ip: &IpAddr| {
        !ip.is_loopback()
            && !ip.is_unspecified()
            && crate::addr::classify(*ip) != AddrClass::LinkLocal
    };
    let default = tokio::task::spawn_blocking(move || Interface::default_for(af)).await;
    match default {
        Ok(Ok(Some(nic))) => {
            if let Some(ip) = nic.bind_addr(af).map(|a| a.ip()).filter(usable) {
                return Some(ip);
            }
        }
        Ok(Ok(None)) => {}
        _ => {
            let towards: SocketAddr = match af {
                Af::V4 => SocketAddr::from(([192, 0, 2, 1], 9)),
                Af::V6 => SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 9)),
            };
            if let Ok(ip) = crate::iface::bind::source_towards(towards, None).await {
                if usable(&ip) {
                    return Some(ip);
                }
            }
        }
    }
    let nics = tokio::task::spawn_blocking(Interface::list)
        .await
        .ok()?
        .ok()?;
    nics.iter()
        .filter(|n| n.flags.up && !n.flags.loopback)
        .find_map(|n| n.bind_addr(af).map(|a| a.ip()).filter(usable))
}

impl Inner {
    fn id(&self) -> &PeerId {
        self.id
            .get()
            .expect("set at start, before any request is read")
    }

    fn stats(&self) -> NodeStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let core = lock(&self.core);
        NodeStats {
            queries_received: l(&c.queries_received),
            queries_handled: l(&c.queries_handled),
            queries_duplicate: l(&c.queries_duplicate),
            queries_sent: l(&c.queries_sent),
            resp_sent: l(&c.resp_sent),
            resp_received: core.resp_received,
            files_served: l(&c.files_served),
            bytes_served: l(&c.bytes_served),
            trust_denied: core.trust_denied,
            queries_shed: l(&c.queries_shed),
        }
    }

    async fn send(&self, pipe: &Pipe, frame: &Frame) -> Result<(), Error> {
        let mut data = BytesMut::with_capacity(frame.emit_len());
        frame.emit(&mut data);
        tokio::time::timeout(self.cfg.peer_timeout, pipe.send_raw(&data))
            .await
            .map_err(|_| Error::Timeout("reply"))?
            .map_err(|e| Error::Reply(e.to_string()))
    }

    async fn send_all(&self, pipe: &Pipe, frames: &[Frame]) -> Result<(), Error> {
        for f in frames {
            self.send(pipe, f).await?;
        }
        Ok(())
    }

    /// One request: the core decides, the node carries the step out.
    async fn handle(self: &Arc<Self>, msg: Message, pipe: &Pipe) -> Result<(), Error> {
        let Some(frame) = Frame::from_pipe_message(msg.data) else {
            return Ok(());
        };
        let step = lock(&self.core).on_request(&frame, msg.peer, Instant::now());
        match step {
            Step::Reply(frames) => self.send_all(pipe, &frames).await,
            Step::Query { ack, query } => {
                self.send(pipe, &ack).await?;
                self.spawn_query(query);
                Ok(())
            }
            Step::Serve {
                name,
                offset,
                length,
            } => self.serve_file(pipe, msg.peer, &name, offset, length).await,
            Step::Info { name } => {
                let r = match self.file_hash(&name).await {
                    Ok((f, h)) => reply::file_info(f.size, &h),
                    Err(e) => core::refusal(&e),
                };
                self.send(pipe, &r).await
            }
            Step::Prefix { name, length } => self.serve_prefix_hash(pipe, &name, length).await,
            Step::Result(hit) => {
                let _ = self.results.send(hit);
                Ok(())
            }
            Step::Challenge => {
                let mut random = [0u8; 16];
                getrandom::fill(&mut random).map_err(|e| Error::Random(e.to_string()))?;
                let r = lock(&self.core).challenge(random, Instant::now());
                self.send(pipe, &r).await
            }
            Step::FileList => {
                let local = self.shared.index().await.unwrap_or_default();
                let frames = lock(&self.core).file_list(&local);
                self.send_all(pipe, &frames).await
            }
            Step::Trusted { accepted, work } => {
                self.send(pipe, &accepted).await?;
                let result = self.work(work).await;
                self.send(pipe, &core::outcome(result)).await
            }
            Step::Search {
                key,
                ttl,
                wait,
                quiet,
                max,
            } => {
                let answers = Answers::new(&key, Instant::now(), wait, quiet, max);
                self.search_for(pipe, msg.peer, ttl, answers).await
            }
        }
    }

    /// Answers `SRCH`: searches as for a query with this node as the return address,
    /// and sends the asker each answer as it comes, until `answers` is done. The
    /// forwards go on in the background when the asker's answers are complete.
    async fn search_for(
        self: &Arc<Self>,
        pipe: &Pipe,
        from: SocketAddr,
        ttl: u32,
        mut answers: Answers,
    ) -> Result<(), Error> {
        let Ok(_slot) = self.search_slots.clone().try_acquire_owned() else {
            self.counters.queries_shed.fetch_add(1, Ordering::Relaxed);
            return self.send(pipe, &reply::search_busy()).await;
        };
        let key = answers.key().to_owned();
        self.send(pipe, &reply::search_ack(&key)).await?;
        // Subscribed before any query leaves, so no result is missed.
        let mut results = self.results.subscribe();
        let local = self.shared.index().await.unwrap_or_default();
        let answer = lock(&self.core).search_for(&key, random_qid(), ttl, &local, Instant::now());
        match answer {
            // The node's own files, or names it learned: the whole answer, as a
            // return address would get it.
            Answer::Hits { hits, .. } => {
                for hit in hits {
                    self.offer(pipe, &mut answers, hit).await?;
                }
            }
            Answer::Forward(forwards) => {
                let me = self.clone();
                tokio::spawn(async move { me.forward(forwards).await });
                while !answers.is_done(Instant::now()) {
                    let until = tokio::time::Instant::from_std(answers.until());
                    let next = tokio::select! {
                        r = tokio::time::timeout_at(until, results.recv()) => r,
                        // An asker who left frees its slot at once.
                        _ = pipe.ended() => break,
                    };
                    match next {
                        Ok(Ok(hit)) => self.offer(pipe, &mut answers, hit).await?,
                        Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                        Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
                    }
                }
            }
            Answer::Stop => {}
        }
        tracing::info!(key = ?key, %from, answers = answers.hits().len(), "search for an asker answered");
        Ok(())
    }

    /// Sends the asker of a `SRCH` an answer that counts.
    async fn offer(&self, pipe: &Pipe, answers: &mut Answers, hit: Hit) -> Result<(), Error> {
        if !answers.offer(hit, Instant::now()) {
            return Ok(());
        }
        let (name, owner) = answers.hits().last().expect("the answer just taken");
        let frame = reply::search_hit(name, owner);
        self.send(pipe, &frame).await
    }

    async fn file_hash(&self, name: &str) -> Result<(SharedFile, [u8; 32]), SharedError> {
        let f = self.shared.resolve(name).await?;
        let key = (f.path.clone(), f.size, f.modified);
        if let Some(h) = lock(&self.hashes).get(&key) {
            return Ok((f, *h));
        }
        let (h, _) = sha256_file(&f.path)
            .await
            .map_err(|source| SharedError::Io {
                path: f.path.clone(),
                source,
            })?;
        let mut hashes = lock(&self.hashes);
        if hashes.len() > 10_000 {
            hashes.clear();
        }
        hashes.insert(key, h);
        Ok((f, h))
    }

    /// Answers `FPFX`: the SHA-256 of the first `length` bytes of a shared file.
    async fn serve_prefix_hash(&self, pipe: &Pipe, name: &str, length: u64) -> Result<(), Error> {
        let f = match self.shared.resolve(name).await {
            Ok(f) => f,
            Err(e) => return self.send(pipe, &core::refusal(&e)).await,
        };
        if let Err(r) = core::check_prefix(f.size, length) {
            return self.send(pipe, &r).await;
        }
        let r = match super::store::sha256_prefix(&f.path, length).await {
            Ok(Some(h)) => reply::prefix_hash(&h),
            // The file shrank since it was checked.
            Ok(None) => reply::range_out_of_bounds(),
            Err(_) => reply::file_read_error(),
        };
        self.send(pipe, &r).await
    }

    /// Streams `name` from `offset` (`length` bytes, or to the end) as one `REPL` to
    /// `peer`.
    async fn serve_file(
        &self,
        pipe: &Pipe,
        peer: SocketAddr,
        name: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<(), Error> {
        let f = match self.shared.resolve(name).await {
            Ok(f) => f,
            Err(e) => return self.send(pipe, &core::refusal(&e)).await,
        };
        let header = match core::range(f.size, offset, length) {
            Ok(h) => h,
            Err(r) => return self.send(pipe, &r).await,
        };
        let mut file = match tokio::fs::File::open(&f.path).await {
            Ok(file) => file,
            Err(_) => return self.send(pipe, &reply::file_read_error()).await,
        };
        if offset > 0 && file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
            return self.send(pipe, &reply::file_read_error()).await;
        }
        let len = u64::from(header.len);
        let mut head = BytesMut::with_capacity(HEADER_LEN);
        header.emit(&mut head);
        self.send_piece(pipe, &head).await?;
        self.send_body(pipe, &mut file, name, len).await?;
        self.counters.files_served.fetch_add(1, Ordering::Relaxed);
        tracing::info!(name = ?f.name, bytes = len, offset, %peer, "file served");
        Ok(())
    }

    /// Sends `len` bytes of `file` in pieces of [`CHUNK`].
    async fn send_body(
        &self,
        pipe: &Pipe,
        file: &mut tokio::fs::File,
        name: &str,
        len: u64,
    ) -> Result<(), Error> {
        let mut buf = vec![0u8; CHUNK];
        let mut left = len;
        while left > 0 {
            let want = (left as usize).min(CHUNK);
            let n = file
                .read(&mut buf[..want])
                .await
                .map_err(|e| Error::Local(e.to_string()))?;
            if n == 0 {
                // The file shrank: stop short; the client sees a truncated reply.
                return Err(Error::Local(format!("{name} shrank while being sent")));
            }
            self.send_piece(pipe, &buf[..n]).await?;
            left -= n as u64;
            self.counters
                .bytes_served
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sends a piece of a file reply as it is, under the peer time limit.
    async fn send_piece(&self, pipe: &Pipe, bytes: &[u8]) -> Result<(), Error> {
        tokio::time::timeout(self.cfg.peer_timeout, pipe.send_raw(bytes))
            .await
            .map_err(|_| Error::Timeout("sending a file"))?
            .map_err(|e| Error::Reply(e.to_string()))
    }

    /// Handles a query in the background, if a slot is free; otherwise drops it.
    fn spawn_query(self: &Arc<Self>, query: Query) {
        let Ok(permit) = self.query_slots.clone().try_acquire_owned() else {
            self.counters.queries_shed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            me.clone().handle_query(query).await;
            me.counters.queries_handled.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }

    /// A query, after its acknowledgement: the core decides whether it is answered or
    /// forwarded; the node sends.
    async fn handle_query(self: Arc<Self>, q: Query) {
        self.counters
            .queries_received
            .fetch_add(1, Ordering::Relaxed);
        if !lock(&self.core).first_time(&q, Instant::now()) {
            self.counters
                .queries_duplicate
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let local = self.shared.index().await.unwrap_or_default();
        let answer = lock(&self.core).answer(&q, &local);
        match answer {
            Answer::Hits { hits, learned } => self.send_hits(&q, hits, learned).await,
            Answer::Forward(forwards) => self.forward(forwards).await,
            Answer::Stop => {}
        }
    }

    /// Sends the results of a query to its return address.
    async fn send_hits(&self, q: &Query, hits: Vec<Hit>, learned: bool) {
        let back = FilerClient::for_peer(&q.ret).timeout(self.cfg.peer_timeout);
        let found = hits.len();
        let mut sent = 0;
        for (name, owner) in hits {
            if back.resp(&name, &owner).await.is_ok() {
                sent += 1;
                self.counters.resp_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        tracing::info!(
            key = ?q.key,
            hits = found,
            sent,
            asker = %q.ret,
            from_learned_names = learned,
            "search answered"
        );
    }

    /// Sends each forward, and its fallback to a neighbour that closes without a reply
    /// (an original node, on `QHST`).
    async fn forward(&self, forwards: Vec<Forward>) {
        let t = self.cfg.peer_timeout;
        let sends = forwards.into_iter().map(|f| async move {
            let c = client_for(&f.to, t);
            self.counters.queries_sent.fetch_add(1, Ordering::Relaxed);
            let r = c.ask(&f.request).await;
            if let (Err(Error::NoReply), Some(fallback)) = (r, f.fallback) {
                self.counters.queries_sent.fetch_add(1, Ordering::Relaxed);
                let _ = c.ask(&fallback).await;
            }
        });
        futures::future::join_all(sends).await;
    }

    async fn search(self: &Arc<Self>, key: &str) -> broadcast::Receiver<Hit> {
        let rx = self.results.subscribe();
        let forwards =
            lock(&self.core).search(key, random_qid(), self.cfg.search_ttl, Instant::now());
        self.forward(forwards).await;
        rx
    }

    async fn build_peers(&self, host: &str, port: u16, hops: u32) -> Result<usize, Error> {
        self.build_peers_into(Table::Own(&self.core), host, port, hops)
            .await
    }

    /// Runs a [`Build`] from `host:port` into `table`: the node's own, or a fresh one
    /// that a rebuild swaps in once it is built. The core decides; the node asks.
    async fn build_peers_into(
        &self,
        table: Table<'_>,
        host: &str,
        port: u16,
        hops: u32,
    ) -> Result<usize, Error> {
        let t = self.cfg.peer_timeout;
        let me = self.id().clone();
        let mut build = Build::new(me.clone(), host, port, hops);
        loop {
            let next = table.with(|tb| build.next(tb));
            let Some(c) = next else { break };
            let client = FilerClient::new(crate::addr::Target::Host {
                host: c.host.clone(),
                port: c.port,
            })
            .timeout(t);
            let name = client.name().await;
            let Some(pid) = table.with(|tb| build.on_name(name, tb))? else {
                continue;
            };
            let joined = client.join(&me, me.host(), me.port()).await;
            if !table.with(|tb| build.on_join(&c, pid, joined, tb)) {
                continue;
            }
            if let Ok(list) = client.list().await {
                table.with(|tb| build.on_list(&c, list, tb));
            }
        }
        Ok(build.added())
    }

    async fn stabilize(&self) {
        let t = self.cfg.peer_timeout;
        let neighbours = lock(&self.core).neighbours();
        let checks = neighbours.into_iter().map(|n| async move {
            let ok = client_for(&n, t).ping().await.is_ok();
            (n.pid, ok)
        });
        for (pid, ok) in futures::future::join_all(checks).await {
            if !ok {
                tracing::info!(%pid, "peer did not answer a ping; dropped");
                lock(&self.core).peers.remove(&pid);
            }
        }
    }

    /// Carries out an accepted trusted operation; its text, or why it failed.
    async fn work(self: &Arc<Self>, work: Work) -> Result<String, String> {
        match work {
            Work::Find { key } => self.find_and_fetch(&key).await,
            Work::Share { name } => core::share_text(self.file_hash(&name).await),
            Work::Rebuild { host, port, hops } => self.rebuild(&host, port, hops).await,
        }
    }

    /// Builds a fresh peer table from `host:port` and swaps it in whole: a rebuild that
    /// fails, or that no peer joins, leaves the table as it was.
    async fn rebuild(&self, host: &str, port: u16, hops: u32) -> Result<String, String> {
        let fresh = Mutex::new(lock(&self.core).fresh_table());
        let r = self
            .build_peers_into(Table::Aside(&fresh), host, port, hops)
            .await;
        if matches!(r, Ok(n) if n > 0) {
            lock(&self.core).peers = fresh.into_inner().unwrap_or_else(|p| p.into_inner());
        }
        core::rebuild_text(host, port, &r)
    }

    /// Searches for `key`, and downloads the first hit into the shared folder, verified.
    async fn find_and_fetch(self: &Arc<Self>, key: &str) -> Result<String, String> {
        let mut rx = self.search(key).await;
        let wait = self.cfg.peer_timeout;
        let hit = tokio::time::timeout(wait, async {
            loop {
                match rx.recv().await {
                    Ok((name, owner)) if name.contains(key) && owner != *self.id() => {
                        return Some((name, owner))
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten();
        let Some(hit) = hit else {
            return core::find_text(key, None);
        };
        let c = FilerClient::for_peer(&hit.1).timeout(self.cfg.peer_timeout);
        let fetched = c.fetch(&hit.0, self.shared.root(), |_, _| {}).await;
        // The folder changed (or may have): searches see it at once.
        self.shared.invalidate().await;
        core::find_text(key, Some((&hit, fetched.map(|f| f.size))))
    }
}

/// The peer table a build adds to.
enum Table<'a> {
    /// The node's own, in its core.
    Own(&'a Mutex<Core>),
    /// One built aside.
    Aside(&'a Mutex<PeerTable>),
}

impl Table<'_> {
    fn with<R>(&self, f: impl FnOnce(&mut PeerTable) -> R) -> R {
        match self {
            Table::Own(core) => f(&mut lock(core).peers),
            Table::Aside(table) => f(&mut lock(table)),
        }
    }
}
