//! The node's protocol core: what a node answers and decides, owning no socket, clock or
//! file.
//!
//! Frames, the time (`now`) and what the I/O shell found out (the shared files, a file's
//! size, random bytes, other nodes' answers) go in; reply frames and `#[must_use]` steps
//! come out, and the node ([`node`](super::node)) carries them out: it sends, reads
//! files and asks other nodes. [`Core::on_request`] answers one request ([`Step`]),
//! [`Core::answer`] decides what becomes of a query ([`Answer`]), [`Core::trusted`]
//! checks a trusted operation, and [`Build`] is btfiler's buildpeers as a state machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::auth::Challenges;
use super::frame::{Frame, Header, Kind};
use super::msg::{reply, Mac, Nonce, QueryId, Request, TrustedOp, MAX_HISTORY};
use super::peer::{Insert, PeerEntry, PeerId, PeerTable};
use super::seen::Seen;
use super::shared::{SharedError, SharedFile};
use super::Error;

/// The most names learned from RESP that a node remembers.
pub const MAX_REMOTE_NAMES: usize = 10_000;

/// The most RESP a node sends for one query.
pub const MAX_HITS: usize = 16;

/// A search result: a file name and who has it.
pub type Hit = (String, PeerId);

/// A search to handle: where results go, the key, the hops left and, for `QHST`, the
/// search's id and the nodes it visited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    pub(crate) ret: PeerId,
    pub(crate) key: String,
    pub(crate) ttl: u32,
    pub(crate) history: Option<(QueryId, Vec<PeerId>)>,
}

impl Query {
    /// What the query is remembered by: its id, or for `QUER` its return address and key.
    fn seen_key(&self) -> String {
        match &self.history {
            Some((qid, _)) => format!("q {qid}"),
            None => format!("r {} {}", self.ret, self.key),
        }
    }
}

/// What the node does for one request, after which it closes the connection.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send these frames (none: close without a reply).
    Reply(Vec<Frame>),
    /// Send `ack`, then handle the query in the background.
    Query {
        /// `REPL Query ACK: <key>`.
        ack: Frame,
        /// The query.
        query: Query,
    },
    /// Send `length` bytes (or to the end) of the shared file `name` from `offset`
    /// ([`range`] decides the header).
    Serve {
        name: String,
        offset: u64,
        length: Option<u64>,
    },
    /// Answer `FINF` with the file's size and SHA-256 ([`reply::file_info`]).
    Info { name: String },
    /// Answer `FPFX` ([`check_prefix`], then [`reply::prefix_hash`]).
    Prefix { name: String, length: u64 },
    /// Hand a search result (RESP, already remembered) to the node's searches; no reply.
    Result(Hit),
    /// Draw 16 random bytes and answer with [`Core::challenge`].
    Challenge,
    /// Read the folder's index and answer with [`Core::file_list`].
    FileList,
    /// Send `accepted`, carry out `work`, and send [`outcome`] of it.
    Trusted { accepted: Frame, work: Work },
    /// Search for the asker and answer on its connection (SRCH): [`Core::search_for`]
    /// with a fresh query id, then the hits as they come, gathered by
    /// [`Answers`](super::Answers).
    Search {
        key: String,
        ttl: u32,
        wait: Duration,
        quiet: Duration,
        max: usize,
    },
}

/// A trusted operation that the node carries out after accepting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Work {
    /// Search for `key` and download the first hit ([`find_text`]).
    Find { key: String },
    /// Hash the shared file `name` ([`share_text`]).
    Share { name: String },
    /// Build a fresh peer table from a contact ([`rebuild_text`]).
    Rebuild { host: String, port: u16, hops: u32 },
}

/// What becomes of a query at this node.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Send these results (RESP) to the query's return address; `learned` when they come
    /// from names learned from results, not from the node's own files.
    Hits { hits: Vec<Hit>, learned: bool },
    /// Pass the query on to these neighbours.
    Forward(Vec<Forward>),
    /// No hit and no hops left.
    Stop,
}

/// A query for one neighbour: `request`, and `fallback` if the neighbour closes without a
/// reply (an original node does on `QHST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Forward {
    pub(crate) to: PeerEntry,
    pub(crate) request: Request,
    pub(crate) fallback: Option<Request>,
}

/// A node's protocol state: its id, the peer table, names learned from results, the
/// queries seen and the challenges handed out.
#[derive(Debug)]
pub(crate) struct Core {
    id: PeerId,
    max_peers: usize,
    pub(crate) peers: PeerTable,
    remote: HashMap<String, PeerId>,
    seen: Seen,
    challenges: Challenges,
    trusted_from_anywhere: bool,
    /// RESP received.
    pub(crate) resp_received: u64,
    /// Trusted requests refused.
    pub(crate) trust_denied: u64,
}

impl Core {
    /// A core for the node `id`.
    pub(crate) fn new(
        id: PeerId,
        max_peers: usize,
        secret: Option<Vec<u8>>,
        trusted_from_anywhere: bool,
    ) -> Core {
        Core {
            peers: PeerTable::new(id.clone(), max_peers),
            id,
            max_peers,
            remote: HashMap::new(),
            seen: Seen::new(),
            challenges: Challenges::new(secret),
            trusted_from_anywhere,
            resp_received: 0,
            trust_denied: 0,
        }
    }

    /// Takes the node's id once its address is known (the peer table starts empty).
    pub(crate) fn set_id(&mut self, id: PeerId) {
        self.peers = PeerTable::new(id.clone(), self.max_peers);
        self.id = id;
    }

    /// An empty peer table for this node (a rebuild fills it aside).
    pub(crate) fn fresh_table(&self) -> PeerTable {
        PeerTable::new(self.id.clone(), self.max_peers)
    }

    /// The peer table, in insertion order.
    pub(crate) fn neighbours(&self) -> Vec<PeerEntry> {
        self.peers.iter().cloned().collect()
    }

    /// Names learned from results, with their owners, sorted.
    pub(crate) fn remote_files(&self) -> Vec<Hit> {
        let mut v: Vec<Hit> = self
            .remote
            .iter()
            .map(|(n, o)| (n.clone(), o.clone()))
            .collect();
        v.sort();
        v
    }

    /// Answers the request `frame` from `from`.
    pub(crate) fn on_request(&mut self, frame: &Frame, from: SocketAddr, now: Instant) -> Step {
        let req = match Request::parse(frame) {
            Ok(r) => r,
            Err(e) => return Step::Reply(e.reply().cloned().into_iter().collect()),
        };
        let one = |f: Frame| Step::Reply(vec![f]);
        match req {
            Request::Name => one(reply::repl_name(&self.id)),
            Request::List => Step::Reply(self.list()),
            Request::Join { pid, host, port } => one(self.join(pid, host, port, from)),
            Request::Quit { pid } => one(self.quit(&pid, from)),
            Request::Quer { ret, key, ttl } => query(ret, key, ttl, None),
            Request::Qhst {
                ret,
                key,
                ttl,
                qid,
                visited: seen,
            } => query(ret, key, ttl, Some((qid, seen))),
            Request::Resp { name, owner } => {
                self.learn(name.clone(), owner.clone());
                Step::Result((name, owner))
            }
            Request::Fget { name } => Step::Serve {
                name,
                offset: 0,
                length: None,
            },
            Request::Frng {
                name,
                offset,
                length,
            } => Step::Serve {
                name,
                offset,
                length: Some(length),
            },
            Request::Finf { name } => Step::Info { name },
            Request::Fpfx { name, length } => Step::Prefix { name, length },
            Request::Chal => Step::Challenge,
            Request::Trst { nonce, mac, op } => self.trusted(from, nonce, mac, op, now),
            Request::Flst => Step::FileList,
            Request::Srch {
                key,
                ttl,
                wait_ms,
                quiet_ms,
                max,
            } => Step::Search {
                key,
                ttl,
                wait: Duration::from_millis(wait_ms.into()),
                quiet: Duration::from_millis(quiet_ms.into()),
                max: max as usize,
            },
            Request::Ping | Request::Unknown(_) => Step::Reply(Vec::new()),
        }
    }

    /// The answer to LIST: the count, then one entry per peer.
    fn list(&self) -> Vec<Frame> {
        let mut out = vec![reply::list_count(self.peers.len())];
        out.extend(
            self.peers
                .iter()
                .map(|p| reply::list_entry(&p.pid, &p.host, p.port)),
        );
        out
    }

    /// Adds a peer (JOIN, or the trusted ADDP) and gives the answer.
    fn join(&mut self, pid: PeerId, host: String, port: u16, from: SocketAddr) -> Frame {
        let r = self.peers.insert(pid.clone(), host, port);
        match r {
            Insert::Added => tracing::info!(%pid, %from, "peer joined"),
            Insert::Full => tracing::info!(
                %pid,
                %from,
                max_peers = self.max_peers,
                "peer refused: the peer table is full"
            ),
            Insert::Duplicate => tracing::debug!(%pid, "peer joined again"),
        }
        reply::join_result(r, &pid)
    }

    /// Drops a peer (QUIT, or the trusted DELP) and gives the answer.
    fn quit(&mut self, pid: &PeerId, from: SocketAddr) -> Frame {
        if self.peers.remove(pid).is_some() {
            tracing::info!(%pid, %from, "peer left (quit)");
            reply::quit_removed(pid)
        } else {
            reply::quit_not_found(pid)
        }
    }

    /// Remembers a search result (RESP), up to [`MAX_REMOTE_NAMES`] names.
    fn learn(&mut self, name: String, owner: PeerId) {
        self.resp_received += 1;
        if self.remote.len() < MAX_REMOTE_NAMES || self.remote.contains_key(&name) {
            self.remote.insert(name, owner);
        }
    }

    /// The answer to CHAL, with a nonce made of `random`.
    pub(crate) fn challenge(&mut self, random: [u8; 16], now: Instant) -> Frame {
        reply::challenge(&self.challenges.issue(random, now))
    }

    /// The answer to FLST: the count, the node's own files (`local`), then the names
    /// learned from results.
    pub(crate) fn file_list(&self, local: &[SharedFile]) -> Vec<Frame> {
        let remote = self.remote_files();
        let mut out = vec![reply::list_count(local.len() + remote.len())];
        out.extend(
            local
                .iter()
                .map(|f| reply::file_entry(&f.name, &self.id, Some(f.size))),
        );
        out.extend(
            remote
                .iter()
                .map(|(name, owner)| reply::file_entry(name, owner, None)),
        );
        out
    }

    /// Whether the query is new (a query seen before is dropped).
    pub(crate) fn first_time(&mut self, q: &Query, now: Instant) -> bool {
        self.seen.first_time(&q.seen_key(), now)
    }

    /// What becomes of a new query: the node's files (`local`) that match, else the
    /// learned names that match, else forwards while hops are left.
    pub(crate) fn answer(&self, q: &Query, local: &[SharedFile]) -> Answer {
        let mine: Vec<Hit> = local
            .iter()
            .filter(|f| f.name.contains(&q.key))
            .take(MAX_HITS)
            .map(|f| (f.name.clone(), self.id.clone()))
            .collect();
        if !mine.is_empty() {
            return Answer::Hits {
                hits: mine,
                learned: false,
            };
        }
        let learned: Vec<Hit> = self
            .remote
            .iter()
            .filter(|(n, _)| n.contains(&q.key))
            .take(MAX_HITS)
            .map(|(n, o)| (n.clone(), o.clone()))
            .collect();
        if !learned.is_empty() {
            return Answer::Hits {
                hits: learned,
                learned: true,
            };
        }
        match q.ttl {
            0 => Answer::Stop,
            ttl => Answer::Forward(self.forwards(&q.ret, &q.key, ttl - 1, q.history.as_ref())),
        }
    }

    /// Starts the node's own search for `key` under the id `qid`: it is remembered, and
    /// sent to every neighbour.
    pub(crate) fn search(
        &mut self,
        key: &str,
        qid: QueryId,
        ttl: u32,
        now: Instant,
    ) -> Vec<Forward> {
        let me = self.id.clone();
        let q = Query {
            ret: me.clone(),
            key: key.to_owned(),
            ttl,
            history: Some((qid, vec![me.clone()])),
        };
        let _ = self.first_time(&q, now);
        self.forwards(&me, key, ttl, q.history.as_ref())
    }

    /// What becomes of a search this node runs for an asker who waits on its connection
    /// (SRCH): a query under `qid` with this node as the return address, remembered and
    /// answered as any new query ([`answer`](Self::answer)): hits to hand to the asker,
    /// or forwards whose results come back to this node.
    pub(crate) fn search_for(
        &mut self,
        key: &str,
        qid: QueryId,
        ttl: u32,
        local: &[SharedFile],
        now: Instant,
    ) -> Answer {
        let q = Query {
            ret: self.id.clone(),
            key: key.to_owned(),
            ttl,
            history: Some((qid, Vec::new())),
        };
        let _ = self.first_time(&q, now);
        self.answer(&q, local)
    }

    /// The query for every neighbour not already visited and not the asker: `QHST` with
    /// this node added to the history (falling back to `QUER`), or `QUER`.
    fn forwards(
        &self,
        ret: &PeerId,
        key: &str,
        ttl: u32,
        history: Option<&(QueryId, Vec<PeerId>)>,
    ) -> Vec<Forward> {
        let quer = Request::Quer {
            ret: ret.clone(),
            key: key.to_owned(),
            ttl,
        };
        let qhst = history.map(|(qid, visited)| {
            let mut visited = visited.clone();
            if !visited.contains(&self.id) {
                if visited.len() >= MAX_HISTORY {
                    visited.remove(0);
                }
                visited.push(self.id.clone());
            }
            Request::Qhst {
                ret: ret.clone(),
                key: key.to_owned(),
                ttl,
                qid: *qid,
                visited,
            }
        });
        let visited: &[PeerId] = history.map_or(&[], |(_, v)| v);
        self.peers
            .iter()
            .filter(|n| !visited.contains(&n.pid) && n.pid != *ret)
            .map(|n| Forward {
                to: n.clone(),
                request: qhst.clone().unwrap_or_else(|| quer.clone()),
                fallback: qhst.is_some().then(|| quer.clone()),
            })
            .collect()
    }

    /// Checks a trusted request from `from`: refused unless it comes from loopback (or
    /// trusted operations are allowed from anywhere) and proves the secret over a nonce
    /// handed out. Peer table changes are done here; the rest is [`Work`].
    pub(crate) fn trusted(
        &mut self,
        from: SocketAddr,
        nonce: Nonce,
        mac: Mac,
        op: TrustedOp,
        now: Instant,
    ) -> Step {
        let local = crate::addr::canonical(from).ip().is_loopback();
        if !(local || self.trusted_from_anywhere) {
            return self.refuse(&op, from, "not from loopback (see trusted_from_anywhere)");
        }
        if let Err(why) = self.challenges.verify(&nonce, &mac, &op.to_string(), now) {
            return self.refuse(&op, from, &why.to_string());
        }
        tracing::info!(?op, %from, "trusted operation accepted");
        let accepted = reply::trust_accepted();
        let work = match op {
            TrustedOp::AddPeer { pid, host, port } => {
                return Step::Reply(vec![accepted, self.join(pid, host, port, from)])
            }
            TrustedOp::DelPeer { pid } => {
                return Step::Reply(vec![accepted, self.quit(&pid, from)])
            }
            TrustedOp::Find { key } => Work::Find { key },
            TrustedOp::Share { name } => Work::Share { name },
            TrustedOp::Rebuild { host, port, hops } => Work::Rebuild { host, port, hops },
        };
        Step::Trusted { accepted, work }
    }

    fn refuse(&mut self, op: &TrustedOp, from: SocketAddr, why: &str) -> Step {
        self.trust_denied += 1;
        // The operation's code only: its arguments come from whoever asked.
        tracing::info!(op = op.code(), %from, %why, "trusted operation refused");
        Step::Reply(vec![reply::trust_denied()])
    }
}

/// The acknowledgement and the query of a `QUER` or `QHST`.
fn query(ret: PeerId, key: String, ttl: u32, history: Option<(QueryId, Vec<PeerId>)>) -> Step {
    Step::Query {
        ack: reply::query_ack(&key),
        query: Query {
            ret,
            key,
            ttl,
            history,
        },
    }
}

/// The reply that refuses a file request: an unknown or unservable name is "not found",
/// anything else a read error.
pub(crate) fn refusal(e: &SharedError) -> Frame {
    match e {
        SharedError::BadName { .. } | SharedError::NotFound(_) => reply::file_not_found(),
        _ => reply::file_read_error(),
    }
}

/// The header of the reply that carries `length` bytes (or to the end) from `offset` of a
/// file of `size` bytes, or the refusal: a range that starts past the end is out of
/// bounds, and one that runs past it is cut at the end.
pub(crate) fn range(size: u64, offset: u64, length: Option<u64>) -> Result<Header, Frame> {
    if offset > size {
        return Err(reply::range_out_of_bounds());
    }
    let len = length.unwrap_or(size - offset).min(size - offset);
    reply::file_header(len).map_err(|_| reply::file_read_error())
}

/// The refusal of an `FPFX` longer than the file, if it is.
pub(crate) fn check_prefix(size: u64, length: u64) -> Result<(), Frame> {
    match length > size {
        true => Err(reply::range_out_of_bounds()),
        false => Ok(()),
    }
}

/// The last reply of a trusted operation: `REPL` with its text, or `ERRO` with why not.
pub(crate) fn outcome(result: Result<String, String>) -> Frame {
    match result {
        Ok(text) => Frame::control(Kind::REPL, text),
        Err(text) => Frame::control(Kind::ERRO, text),
    }
}

/// The outcome of `SHAR`: the file's name, size and SHA-256.
pub(crate) fn share_text(r: Result<(SharedFile, [u8; 32]), SharedError>) -> Result<String, String> {
    match r {
        Ok((f, h)) => Ok(format!(
            "Share: {} {} {}",
            f.name,
            f.size,
            super::msg::hex(&h)
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The outcome of `RBLD` from `host:port`: how many peers joined (`Ok(0)` keeps the old
/// table, as an error does).
pub(crate) fn rebuild_text(
    host: &str,
    port: u16,
    r: &Result<usize, Error>,
) -> Result<String, String> {
    let contact = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    match r {
        Ok(n) if *n > 0 => Ok(format!(
            "Rebuild: {n} peer{}",
            if *n == 1 { "" } else { "s" }
        )),
        Ok(_) => Err(format!(
            "Rebuild: no peer joined from {contact}; the peer table was kept"
        )),
        Err(e) => Err(format!("Rebuild: {contact}: {e}; the peer table was kept")),
    }
}

/// What a `FIND` came to: no hit, or the download's result.
pub(crate) fn find_text(
    key: &str,
    hit: Option<(&Hit, Result<u64, Error>)>,
) -> Result<String, String> {
    match hit {
        None => Err(format!("Find: no peer has {key}")),
        Some(((name, owner), Ok(size))) => {
            Ok(format!("Find: fetched {name} {size} bytes from {owner}"))
        }
        Some((_, Err(e))) => Err(format!("Find: {e}")),
    }
}

/// One contact of a [`Build`]: ask its NAME, JOIN it, and, with hops left, its LIST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Contact {
    pub(crate) host: String,
    pub(crate) port: u16,
    hops: u32,
}

/// Building a peer table from a contact, as btfiler's buildpeers: NAME, JOIN, add the
/// contact, LIST, and the listed peers with one hop less, until the table is full or the
/// hops run out. The node asks the contacts; this decides on their typed answers.
#[derive(Debug)]
pub(crate) struct Build {
    me: PeerId,
    todo: Vec<Contact>,
    first: bool,
    added: usize,
}

impl Build {
    /// A build for the node `me` from the contact `host:port`.
    pub(crate) fn new(me: PeerId, host: &str, port: u16, hops: u32) -> Build {
        Build {
            me,
            todo: vec![Contact {
                host: host.to_owned(),
                port,
                hops,
            }],
            first: true,
            added: 0,
        }
    }

    /// How many peers were added.
    pub(crate) fn added(&self) -> usize {
        self.added
    }

    /// The next contact to ask, or `None` when the build is over.
    #[must_use]
    pub(crate) fn next(&mut self, table: &PeerTable) -> Option<Contact> {
        if table.is_full() {
            return None;
        }
        self.todo.pop()
    }

    /// The contact's answer to NAME: its id when it is to be joined, `None` to skip it.
    ///
    /// # Errors
    ///
    /// The first contact could not be asked: the build fails.
    pub(crate) fn on_name(
        &mut self,
        answer: Result<PeerId, Error>,
        table: &PeerTable,
    ) -> Result<Option<PeerId>, Error> {
        let first = std::mem::replace(&mut self.first, false);
        let pid = match answer {
            Ok(pid) => pid,
            Err(e) if first => return Err(e),
            Err(_) => return Ok(None),
        };
        Ok((pid != self.me && !table.contains(&pid)).then_some(pid))
    }

    /// The contact's answer to JOIN: adds it when it took this node (or already had it);
    /// a contact whose table is full is not added, but its peers may take this node.
    /// True when its LIST is to be asked.
    #[must_use]
    pub(crate) fn on_join(
        &mut self,
        c: &Contact,
        pid: PeerId,
        answer: Result<Insert, Error>,
        table: &mut PeerTable,
    ) -> bool {
        let accepted = match answer {
            Ok(Insert::Added | Insert::Duplicate) => true,
            Ok(Insert::Full) => false,
            Err(_) => return false,
        };
        if accepted && table.insert(pid, c.host.clone(), c.port) == Insert::Added {
            self.added += 1;
        }
        c.hops > 0
    }

    /// The contact's LIST: its peers not yet known are asked next, with one hop less.
    pub(crate) fn on_list(&mut self, c: &Contact, list: Vec<PeerEntry>, table: &PeerTable) {
        for p in list {
            if p.pid != self.me && !table.contains(&p.pid) {
                self.todo.push(Contact {
                    host: p.host,
                    port: p.port,
                    hops: c.hops - 1,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PeerId {
        PeerId::parse(s).unwrap()
    }

    fn core() -> Core {
        Core::new(pid("10.0.0.1:7000"), 2, Some(b"s3cret".to_vec()), false)
    }

    fn ask(c: &mut Core, req: Request, from: &str) -> Step {
        c.on_request(&req.to_frame(), from.parse().unwrap(), Instant::now())
    }

    fn file(name: &str) -> SharedFile {
        SharedFile {
            name: name.into(),
            path: name.into(),
            size: 3,
            modified: None,
        }
    }

    fn join(p: &str) -> Request {
        let id = pid(p);
        Request::Join {
            host: id.host().to_owned(),
            port: id.port(),
            pid: id,
        }
    }

    #[test]
    fn join_and_the_trusted_addp_give_the_same_replies() {
        let mut c = core();
        let from = "10.0.0.9:1";
        let a = pid("10.0.0.2:7000");
        assert_eq!(
            ask(&mut c, join("10.0.0.2:7000"), from),
            Step::Reply(vec![reply::join_added(&a)])
        );
        assert_eq!(
            ask(&mut c, join("10.0.0.2:7000"), from),
            Step::Reply(vec![reply::join_dup(&a)])
        );
        let nonce = c.challenges.issue([7; 16], Instant::now());
        let op = TrustedOp::AddPeer {
            pid: pid("10.0.0.3:7000"),
            host: "10.0.0.3".into(),
            port: 7000,
        };
        let mac = super::super::auth::mac(b"s3cret", &nonce, &op.to_string());
        let step = c.trusted(
            "127.0.0.1:5".parse().unwrap(),
            nonce,
            mac,
            op,
            Instant::now(),
        );
        assert_eq!(
            step,
            Step::Reply(vec![
                reply::trust_accepted(),
                reply::join_added(&pid("10.0.0.3:7000"))
            ])
        );
        assert_eq!(
            ask(&mut c, join("10.0.0.4:7000"), from),
            Step::Reply(vec![reply::join_full()])
        );
        let quit = Request::Quit { pid: a.clone() };
        assert_eq!(
            ask(&mut c, quit.clone(), from),
            Step::Reply(vec![reply::quit_removed(&a)])
        );
        assert_eq!(
            ask(&mut c, quit, from),
            Step::Reply(vec![reply::quit_not_found(&a)])
        );
    }

    #[test]
    fn trusted_operations_from_afar_or_with_a_wrong_mac_are_refused_and_counted() {
        let mut c = core();
        let op = TrustedOp::DelPeer {
            pid: pid("10.0.0.2:7000"),
        };
        let nonce = c.challenges.issue([1; 16], Instant::now());
        let mac = super::super::auth::mac(b"s3cret", &nonce, &op.to_string());
        let denied = Step::Reply(vec![reply::trust_denied()]);
        let afar = "192.0.2.1:5".parse().unwrap();
        assert_eq!(
            c.trusted(afar, nonce, mac, op.clone(), Instant::now()),
            denied
        );
        let wrong = super::super::auth::mac(b"guess", &nonce, &op.to_string());
        let here = "127.0.0.1:5".parse().unwrap();
        assert_eq!(
            c.trusted(here, nonce, wrong, op.clone(), Instant::now()),
            denied
        );
        assert_eq!(c.trust_denied, 2);
        let nonce = c.challenges.issue([2; 16], Instant::now());
        let mac = super::super::auth::mac(b"s3cret", &nonce, &op.to_string());
        let find = TrustedOp::Find { key: "song".into() };
        let mac_find = super::super::auth::mac(b"s3cret", &nonce, &find.to_string());
        assert_eq!(
            c.trusted(here, nonce, mac_find, find, Instant::now()),
            Step::Trusted {
                accepted: reply::trust_accepted(),
                work: Work::Find { key: "song".into() }
            }
        );
        assert_ne!(mac_find, mac);
    }

    #[test]
    fn a_query_is_acknowledged_answered_once_and_forwarded_with_its_history() {
        let mut c = core();
        for p in ["10.0.0.2:7000", "10.0.0.3:7000"] {
            let _ = ask(&mut c, join(p), "10.0.0.9:1");
        }
        let asker = pid("10.0.0.2:7000");
        let step = ask(
            &mut c,
            Request::Qhst {
                ret: asker.clone(),
                key: "song".into(),
                ttl: 2,
                qid: QueryId(9),
                visited: vec![asker.clone()],
            },
            "10.0.0.2:1",
        );
        let Step::Query { ack, query } = step else {
            panic!("not a query: {step:?}");
        };
        assert_eq!(ack, reply::query_ack("song"));
        assert!(c.first_time(&query, Instant::now()));
        assert!(!c.first_time(&query, Instant::now()), "seen once");
        assert_eq!(
            c.answer(&query, &[file("a-song.mp3"), file("other")]),
            Answer::Hits {
                hits: vec![("a-song.mp3".into(), pid("10.0.0.1:7000"))],
                learned: false
            }
        );
        let Answer::Forward(fw) = c.answer(&query, &[]) else {
            panic!("not forwarded");
        };
        assert_eq!(fw.len(), 1, "not back to the asker: {fw:?}");
        assert_eq!(fw[0].to.pid, pid("10.0.0.3:7000"));
        let Request::Qhst { ttl, visited, .. } = &fw[0].request else {
            panic!("not a qhst");
        };
        assert_eq!((*ttl, visited.len()), (1, 2));
        assert!(matches!(fw[0].fallback, Some(Request::Quer { ttl: 1, .. })));
        let spent = Query { ttl: 0, ..query };
        assert_eq!(c.answer(&spent, &[]), Answer::Stop);
        // A result is remembered and answers later searches.
        let step = ask(
            &mut c,
            Request::Resp {
                name: "b-song".into(),
                owner: asker.clone(),
            },
            "10.0.0.2:1",
        );
        assert_eq!(step, Step::Result(("b-song".into(), asker.clone())));
        assert!(matches!(
            c.answer(&spent, &[]),
            Answer::Hits { learned: true, .. }
        ));
    }

    #[test]
    fn a_search_for_an_asker_is_answered_here_or_forwarded_with_this_node_as_return() {
        let mut c = core();
        for p in ["10.0.0.2:7000", "10.0.0.3:7000"] {
            let _ = ask(&mut c, join(p), "10.0.0.9:1");
        }
        let srch = Request::Srch {
            key: "song".into(),
            ttl: 4,
            wait_ms: 2000,
            quiet_ms: 200,
            max: 5,
        };
        assert_eq!(
            ask(&mut c, srch, "127.0.0.1:1"),
            Step::Search {
                key: "song".into(),
                ttl: 4,
                wait: Duration::from_secs(2),
                quiet: Duration::from_millis(200),
                max: 5,
            }
        );
        let now = Instant::now();
        let here = c.search_for("song", QueryId(1), 4, &[file("a-song.mp3")], now);
        assert_eq!(
            here,
            Answer::Hits {
                hits: vec![("a-song.mp3".into(), pid("10.0.0.1:7000"))],
                learned: false
            }
        );
        let Answer::Forward(fw) = c.search_for("song", QueryId(2), 4, &[], now) else {
            panic!("not forwarded");
        };
        assert_eq!(fw.len(), 2, "to every neighbour: {fw:?}");
        let Request::Qhst {
            ret, ttl, visited, ..
        } = &fw[0].request
        else {
            panic!("not a qhst");
        };
        assert_eq!(*ret, pid("10.0.0.1:7000"), "results come back to this node");
        assert_eq!((*ttl, visited.clone()), (3, vec![pid("10.0.0.1:7000")]));
        // The query is remembered: the same id coming back is a duplicate.
        let back = Query {
            ret: ret.clone(),
            key: "song".into(),
            ttl: 2,
            history: Some((QueryId(2), visited.clone())),
        };
        assert!(!c.first_time(&back, now));
        assert_eq!(c.search_for("song", QueryId(3), 0, &[], now), Answer::Stop);
    }

    #[test]
    fn ranges_and_prefixes_past_the_end_are_refused() {
        assert_eq!(range(10, 11, None), Err(reply::range_out_of_bounds()));
        assert_eq!(range(10, 4, Some(100)).unwrap().len, 6);
        assert_eq!(range(10, 0, None).unwrap().len, 10);
        assert_eq!(check_prefix(10, 11), Err(reply::range_out_of_bounds()));
        assert_eq!(check_prefix(10, 10), Ok(()));
    }

    #[test]
    fn a_build_follows_the_lists_of_contacts_that_cannot_take_the_node() {
        let me = pid("10.0.0.1:7000");
        let mut table = PeerTable::new(me.clone(), 4);
        let mut b = Build::new(me.clone(), "10.0.0.2", 7000, 1);
        let c = b.next(&table).unwrap();
        let full = pid("10.0.0.2:7000");
        assert_eq!(
            b.on_name(Ok(full.clone()), &table).unwrap(),
            Some(full.clone())
        );
        assert!(b.on_join(&c, full.clone(), Ok(Insert::Full), &mut table));
        assert!(table.is_empty(), "a full contact is not added");
        let entry = |p: &str| {
            let id = pid(p);
            PeerEntry {
                host: id.host().into(),
                port: id.port(),
                pid: id,
            }
        };
        b.on_list(
            &c,
            vec![entry("10.0.0.3:7000"), entry("10.0.0.1:7000")],
            &table,
        );
        let c = b.next(&table).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.hops), ("10.0.0.3", 7000, 0));
        let dup = pid("10.0.0.3:7000");
        assert_eq!(
            b.on_name(Ok(dup.clone()), &table).unwrap(),
            Some(dup.clone())
        );
        assert!(
            !b.on_join(&c, dup, Ok(Insert::Duplicate), &mut table),
            "no hops left"
        );
        assert_eq!((b.added(), table.len()), (1, 1));
        assert_eq!(b.next(&table), None);
        // Only the first contact's failure fails the build.
        let mut b = Build::new(me, "10.0.0.2", 7000, 0);
        let _ = b.next(&table);
        assert!(b.on_name(Err(Error::NoReply), &table).is_err());
    }
}
