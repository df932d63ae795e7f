//! The btfiler client: one request per connection, replies until the peer closes.
//!
//! [`FilerClient`] speaks every original message and every extension to one node. Control
//! replies are bounded ([`MAX_CONTROL`](super::frame::MAX_CONTROL) bytes each, at most
//! [`MAX_REPLIES`] of them); file bodies are streamed to disk and never held whole. Every
//! operation runs under a time limit; a download's limit is on silence (no byte for that
//! long), not on its whole length.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::answers::Answers;
use super::core::Hit;
use super::frame::{Decoder, Event, Frame, Kind};
use super::msg::{reply, Nonce, QueryId, Request, TrustedOp, MAX_SEARCH_HITS, MAX_SEARCH_WAIT_MS};
use super::peer::{Insert, PeerEntry, PeerId};
use super::store::{Begun, Destination, Download, Expected};
use super::Error;
use crate::addr::Target;
use crate::pipe::{EndReason, Error as PipeError, Pipe, PipeConfig, Proto};
use crate::Framing;

/// The most reply frames read for one request.
pub const MAX_REPLIES: usize = 100_000;

/// Bytes read from the node at a time.
const READ_BUFFER: usize = 256 * 1024;

/// The default time limit of one control exchange, and of silence during a download.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of one btfiler node.
#[derive(Debug, Clone)]
pub struct FilerClient {
    target: Target,
    timeout: Duration,
    bind: Option<SocketAddr>,
}

/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Where the file now is.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Bytes transferred by this call (less than `size` when it resumed).
    pub transferred: u64,
    /// Whether the bytes on disk were checked against the owner's SHA-256 (an original
    /// node cannot give one).
    pub verified: bool,
    /// Where this call started: the bytes already in a part file (or the whole size when
    /// the file was already in place).
    pub resumed_from: u64,
    /// The file was already in place with the right content; nothing was transferred.
    pub already_there: bool,
    /// A part file left by an earlier attempt did not match the node's copy and was
    /// started over.
    pub restarted: bool,
}

impl FilerClient {
    /// A client of the node at `target` (`host:port`, or a peer's address).
    pub fn new(target: impl Into<Target>) -> Self {
        FilerClient {
            target: target.into(),
            timeout: DEFAULT_TIMEOUT,
            bind: None,
        }
    }

    /// A client of the peer `pid`.
    pub fn for_peer(pid: &PeerId) -> Self {
        Self::new(pid.to_target())
    }

    /// Sets the time limit of control exchanges and of silence in downloads.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Binds connections to this local address first.
    pub fn bind(mut self, local: SocketAddr) -> Self {
        self.bind = Some(local);
        self
    }

    /// Connects to the node and sends `request`: a pipe without framing (the client cuts
    /// the replies into frames itself, streaming file bodies), bound first when asked.
    async fn open(&self, request: &Frame) -> Result<Pipe, Error> {
        let mut cfg = PipeConfig::default()
            .framing(Framing::Raw)
            .read_buffer(READ_BUFFER)
            .connect_timeout(self.timeout);
        if let Some(local) = self.bind {
            cfg = cfg.bind(local);
        }
        let pipe = Pipe::connect_with(Proto::Tcp, self.target.clone(), &cfg)
            .await
            .map_err(connect_error)?;
        let mut wire = BytesMut::with_capacity(request.emit_len());
        request.emit(&mut wire);
        pipe.send(wire).await.map_err(|e| pipe_error("send", e))?;
        Ok(pipe)
    }

    /// Sends `request` and reads every reply frame until the peer closes. Control
    /// replies only; the whole exchange runs under the time limit.
    ///
    /// # Errors
    ///
    /// Connecting, sending or reading fails, a reply is over the bound, the peer stops
    /// mid-frame, or the time limit passes.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the connection is dropped.
    pub async fn exchange(&self, request: &Frame) -> Result<Vec<Frame>, Error> {
        let mut out = Vec::new();
        self.replies(request, self.timeout, |f| {
            out.push(f);
            if out.len() > MAX_REPLIES {
                return Err(Error::TooLarge {
                    len: out.len() as u64,
                    max: MAX_REPLIES as u64,
                });
            }
            Ok(true)
        })
        .await?;
        Ok(out)
    }

    /// Sends `request` and hands `each` every reply frame until the peer closes or
    /// `each` says it has enough (false); the whole exchange runs under `limit`.
    async fn replies(
        &self,
        request: &Frame,
        limit: Duration,
        mut each: impl FnMut(Frame) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        let run = async {
            let pipe = self.open(request).await?;
            let mut dec = Decoder::default();
            let mut buf = BytesMut::new();
            loop {
                let eof = !read_more(&pipe, &mut buf).await?;
                loop {
                    match dec.decode_next(&mut buf, eof)? {
                        Some(Event::Frame(f)) => {
                            if !each(f)? {
                                return Ok(());
                            }
                        }
                        Some(_) => return Err(Error::BadReply("unexpected streamed reply")),
                        None => break,
                    }
                }
                if eof {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(limit, run)
            .await
            .map_err(|_| Error::Timeout("btfiler exchange"))?
    }

    /// `SRCH`: asks the node to search the network for names containing `key` and to
    /// answer on this connection; for a searcher no other node can connect to (behind
    /// a NAT, or through a tunnel). Returns the distinct answers that contain `key`, in
    /// the order they came: at most `max` (0: no limit), ending `quiet` after the last
    /// one or `wait` after the request, as the node ends them. The wait is capped at
    /// [`MAX_SEARCH_WAIT_MS`](super::wire::MAX_SEARCH_WAIT_MS) and `max` at
    /// [`MAX_SEARCH_HITS`](super::wire::MAX_SEARCH_HITS).
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange) (its limit is this client's timeout on top of
    /// `wait`); [`Error::NoReply`] from a node without the extension (an original one);
    /// [`Error::Refused`] when the node is busy; a malformed answer.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the connection is dropped, and the node's search ends on its own.
    pub async fn search(
        &self,
        key: &str,
        ttl: u32,
        wait: Duration,
        quiet: Duration,
        max: usize,
    ) -> Result<Vec<Hit>, Error> {
        let wait_ms = u32::try_from(wait.as_millis())
            .map_or(MAX_SEARCH_WAIT_MS, |w| w.min(MAX_SEARCH_WAIT_MS));
        let quiet_ms = u32::try_from(quiet.as_millis()).map_or(wait_ms, |q| q.min(wait_ms));
        let cap = MAX_SEARCH_HITS as usize;
        let max = if max == 0 { cap } else { max.min(cap) };
        let request = Request::Srch {
            key: key.to_owned(),
            ttl,
            wait_ms,
            quiet_ms,
            max: max as u32,
        };
        // The node times the search; this side only bounds it.
        let limit = Duration::from_millis(wait_ms.into()) + self.timeout;
        let mut answers = Answers::new(key, Instant::now(), limit, limit, max);
        let (mut acked, mut frames) = (false, 0);
        self.replies(&request.to_frame(), limit, |f| {
            if !acked {
                reply::expect_repl(&f)?;
                acked = true;
                return Ok(true);
            }
            frames += 1;
            if frames > MAX_REPLIES {
                return Err(Error::TooLarge {
                    len: frames as u64,
                    max: MAX_REPLIES as u64,
                });
            }
            let hit = reply::parse_search_hit(&f)?;
            answers.offer(hit, Instant::now());
            Ok(answers.hits().len() < max)
        })
        .await?;
        if !acked {
            return Err(Error::NoReply);
        }
        Ok(answers.into_hits())
    }

    /// Sends `request` and expects exactly one reply frame.
    async fn one(&self, request: &Request) -> Result<Frame, Error> {
        let mut replies = self.exchange(&request.to_frame()).await?;
        match replies.len() {
            0 => Err(Error::NoReply),
            _ => Ok(replies.swap_remove(0)),
        }
    }

    /// Sends a request whose one reply is `REPL` (a query, forwarded).
    pub(crate) async fn ask(&self, request: &Request) -> Result<(), Error> {
        reply::expect_repl(&self.one(request).await?).map(|_| ())
    }

    /// Sends a request that gets no reply (RESP, PING).
    async fn fire(&self, request: &Request) -> Result<(), Error> {
        let replies = self.exchange(&request.to_frame()).await?;
        match replies.first() {
            None => Ok(()),
            Some(f) => reply::expect_repl(f).map(|_| ()),
        }
    }

    /// `NAME`: the node's id.
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange), or a reply that is not an id.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn name(&self) -> Result<PeerId, Error> {
        reply::parse_name(&self.one(&Request::Name).await?)
    }

    /// `LIST`: the node's peer table.
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange), or malformed replies.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn list(&self) -> Result<Vec<PeerEntry>, Error> {
        let replies = self.exchange(&Request::List.to_frame()).await?;
        counted(&replies, reply::parse_list_entry)
    }

    /// `JOIN`: asks the node to add `me` (reachable at `host:port`) to its table, and
    /// tells what its table did ([`Insert`]).
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange), or the node refused.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn join(&self, me: &PeerId, host: &str, port: u16) -> Result<Insert, Error> {
        let r = self
            .one(&Request::Join {
                pid: me.clone(),
                host: host.to_owned(),
                port,
            })
            .await?;
        reply::parse_join(&r)
    }

    /// `QUER`: a search whose results go to `ret`. Waits for the acknowledgement.
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange), or the node refused.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn query(&self, ret: &PeerId, key: &str, ttl: u32) -> Result<(), Error> {
        let r = self
            .one(&Request::Quer {
                ret: ret.clone(),
                key: key.to_owned(),
                ttl,
            })
            .await?;
        reply::expect_repl(&r).map(|_| ())
    }

    /// `QHST`: a search that carries its id and the nodes it visited. An original node
    /// closes on it without a reply ([`Error::NoReply`]); send it `QUER` instead.
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange), [`Error::NoReply`], or the node refused.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn query_history(
        &self,
        ret: &PeerId,
        key: &str,
        ttl: u32,
        qid: QueryId,
        visited: &[PeerId],
    ) -> Result<(), Error> {
        let r = self
            .one(&Request::Qhst {
                ret: ret.clone(),
                key: key.to_owned(),
                ttl,
                qid,
                visited: visited.to_vec(),
            })
            .await?;
        reply::expect_repl(&r).map(|_| ())
    }

    /// `RESP`: tells the node that `owner` has `name` (the answer to its search).
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn resp(&self, name: &str, owner: &PeerId) -> Result<(), Error> {
        self.fire(&Request::Resp {
            name: name.to_owned(),
            owner: owner.clone(),
        })
        .await
    }

    /// `PING`: succeeds if the node accepts a connection and the request.
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn ping(&self) -> Result<(), Error> {
        self.fire(&Request::Ping).await
    }

    /// `QUIT`: asks the node to drop `pid`. True if it was removed.
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn quit(&self, pid: &PeerId) -> Result<bool, Error> {
        let r = self.one(&Request::Quit { pid: pid.clone() }).await?;
        Ok(r.kind == Kind::REPL)
    }

    /// `FLST`: the files the node knows: (name, owner, size when local to the owner).
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange), [`Error::NoReply`] from an original node.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn files(&self) -> Result<Vec<(String, PeerId, Option<u64>)>, Error> {
        let replies = self.exchange(&Request::Flst.to_frame()).await?;
        counted(&replies, reply::parse_file_entry)
    }

    /// `FINF`: a file's size and SHA-256.
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange), [`Error::NoReply`] from an original node, or the
    /// node refused.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn file_info(&self, name: &str) -> Result<reply::FileInfo, Error> {
        reply::parse_file_info(
            &self
                .one(&Request::Finf {
                    name: name.to_owned(),
                })
                .await?,
        )
    }

    /// Runs a trusted operation: asks for a challenge, proves the secret over it, and
    /// returns the node's replies (the first is `REPL Trust: accepted`).
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange); [`Error::Refused`] with `Trust: not authorized`
    /// for a wrong secret.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, but the operation may already have started on the node.
    pub async fn trusted(&self, secret: &[u8], op: TrustedOp) -> Result<Vec<Frame>, Error> {
        let nonce: Nonce = reply::parse_challenge(&self.one(&Request::Chal).await?)?;
        let mac = super::auth::mac(secret, &nonce, &op.to_string());
        let replies = self
            .exchange(&Request::Trst { nonce, mac, op }.to_frame())
            .await?;
        match replies.first() {
            None => Err(Error::NoReply),
            Some(f) => reply::expect_repl(f).map(|_| replies.clone()),
        }
    }

    /// Downloads `name` into `dir`, under its last name component; see
    /// [`fetch_to`](Self::fetch_to).
    ///
    /// # Errors
    ///
    /// As [`fetch_to`](Self::fetch_to), or a name that cannot be saved.
    ///
    /// # Cancel safety
    ///
    /// As [`fetch_to`](Self::fetch_to).
    pub async fn fetch(
        &self,
        name: &str,
        dir: &Path,
        progress: impl FnMut(u64, u64),
    ) -> Result<Fetched, Error> {
        self.fetch_to(name, &Destination::in_dir(dir, name)?, progress)
            .await
    }

    /// `FPFX`: the SHA-256 of the first `length` bytes of `name`.
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange), [`Error::NoReply`] from a node without the
    /// extension, or the node refused (no such file, or it is shorter).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn prefix_hash(&self, name: &str, length: u64) -> Result<[u8; 32], Error> {
        let r = self
            .one(&Request::Fpfx {
                name: name.to_owned(),
                length,
            })
            .await?;
        reply::parse_prefix_hash(&r)
    }

    /// Downloads `name` to `dest`, one writer per part file and verified on disk (see
    /// [`Destination`]). With a p2pipe node: asks its size and SHA-256 (`FINF`);
    /// a part file left by an earlier attempt is checked against the node's copy
    /// (`FPFX`) and resumed with a ranged get (`FRNG`), or started over if it differs.
    /// With an original node (no `FINF`): a whole `FGET`, put in place once its
    /// announced length is on disk, and not called verified. `progress` is told
    /// (bytes so far, total) as bytes arrive.
    ///
    /// # Errors
    ///
    /// The node refused, the transfer stalled longer than the time limit or ended
    /// short, another download holds the part file ([`StoreError::Busy`](super::store::StoreError::Busy)), a file of
    /// other content is in place, or the bytes on disk failed verification (the part
    /// file is then deleted).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled download leaves its part file (and releases its lock),
    /// which the next call checks and resumes; nothing unverified is ever at the final
    /// path.
    pub async fn fetch_to(
        &self,
        name: &str,
        dest: &Destination,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Fetched, Error> {
        let info = match self.file_info(name).await {
            Ok(info) => info,
            Err(Error::NoReply) => return self.fetch_whole(name, dest, progress).await,
            Err(e) => return Err(e),
        };
        let expected = Expected {
            size: info.size,
            sha256: info.sha256,
        };
        let mut dl = match Download::begin(dest, Some(expected)).await? {
            Begun::Complete(path) => {
                progress(info.size, info.size);
                return Ok(Fetched {
                    path,
                    size: info.size,
                    transferred: 0,
                    resumed_from: info.size,
                    verified: true,
                    already_there: true,
                    restarted: false,
                });
            }
            Begun::Resume(d) => d,
        };
        let restarted = self.check_part(name, &mut dl).await?;
        let start = dl.offset();
        progress(start, info.size);
        if start < info.size {
            let req = Request::Frng {
                name: name.to_owned(),
                offset: start,
                length: info.size - start,
            };
            let r = self
                .stream_body(&req.to_frame(), &mut dl, |done| {
                    progress(start + done, info.size)
                })
                .await;
            if let Err(e) = r {
                // Keep every byte that arrived, for the next attempt.
                let _ = dl.flush().await;
                return Err(e);
            }
        }
        let landed = dl.finish().await?;
        Ok(Fetched {
            path: landed.path,
            size: landed.size,
            transferred: info.size - start,
            resumed_from: start,
            verified: landed.verified,
            already_there: false,
            restarted,
        })
    }

    /// Compares the bytes a part file holds with the start of the node's copy, and
    /// empties it when they differ. True if it was emptied. A node without `FPFX` is
    /// trusted until the final check.
    async fn check_part(&self, name: &str, dl: &mut Download) -> Result<bool, Error> {
        if dl.offset() == 0 {
            return Ok(false);
        }
        let same = match self.prefix_hash(name, dl.offset()).await {
            Ok(h) => h == dl.prefix_sha256(),
            Err(Error::NoReply) => true,
            // The node's copy is shorter than the part file: it changed.
            Err(Error::Refused(_)) => false,
            Err(e) => return Err(e),
        };
        if !same {
            dl.restart().await?;
        }
        Ok(!same)
    }

    /// `FGET` from a node without `FINF`: the length comes from the reply's header, and
    /// the hash is computed on disk but cannot be checked.
    async fn fetch_whole(
        &self,
        name: &str,
        dest: &Destination,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Fetched, Error> {
        let mut dl = match Download::begin(dest, None).await? {
            Begun::Resume(d) => d,
            Begun::Complete(_) => return Err(Error::BadReply("unreachable: nothing expected")),
        };
        let req = Request::Fget {
            name: name.to_owned(),
        };
        let mut total = 0u64;
        let r = self
            .stream_body(&req.to_frame(), &mut dl, |done| {
                total = done;
                progress(done, done)
            })
            .await;
        if let Err(e) = r {
            drop(dl);
            // Nothing of an unhashed download can be resumed.
            let _ = tokio::fs::remove_file(dest.part_path()).await;
            return Err(e);
        }
        let landed = dl.finish().await?;
        progress(total, landed.size);
        Ok(Fetched {
            path: landed.path,
            size: landed.size,
            transferred: landed.size,
            resumed_from: 0,
            verified: false,
            already_there: false,
            restarted: false,
        })
    }

    /// Sends `request`, expects one streamed `REPL` whose length is what `dl` still
    /// wants (or sets it, for a download without a known size), and writes its pieces
    /// to `dl`. An `ERRO` becomes [`Error::Refused`]. The limit is on silence: each
    /// read must come within the time limit.
    async fn stream_body(
        &self,
        request: &Frame,
        dl: &mut Download,
        mut progress: impl FnMut(u64),
    ) -> Result<(), Error> {
        let limit = self.timeout;
        let pipe = tokio::time::timeout(limit, self.open(request))
            .await
            .map_err(|_| Error::Timeout("connect"))??;
        let mut dec = Decoder::default();
        dec.expect_body(true);
        let mut buf = BytesMut::new();
        let mut body_len = None;
        let mut done = 0u64;
        loop {
            let eof = !tokio::time::timeout(limit, read_more(&pipe, &mut buf))
                .await
                .map_err(|_| Error::Timeout("download"))??;
            loop {
                match dec.decode_next(&mut buf, eof)? {
                    Some(Event::BodyStart { kind, len }) => {
                        if kind != Kind::REPL {
                            return Err(Error::UnexpectedReply(kind));
                        }
                        dl.announce(len)?;
                        body_len = Some(len);
                    }
                    Some(Event::BodyChunk(chunk)) => {
                        done += chunk.len() as u64;
                        dl.write(&chunk).await?;
                        progress(done);
                    }
                    Some(Event::BodyEnd) => return Ok(()),
                    Some(Event::Frame(f)) => {
                        reply::expect_repl(&f)?;
                        return Err(Error::BadReply("a file reply that is not streamed"));
                    }
                    None => break,
                }
            }
            if eof {
                return match body_len {
                    None => Err(Error::NoReply),
                    Some(len) => Err(Error::Truncated {
                        got: done,
                        expected: len,
                    }),
                };
            }
        }
    }
}

/// Appends the next bytes from the node to `buf`; false once the node has closed.
async fn read_more(pipe: &Pipe, buf: &mut BytesMut) -> Result<bool, Error> {
    match pipe.recv().await {
        Ok(m) if buf.is_empty() => {
            // Taken over without a copy when the pipe no longer shares the chunk.
            *buf = BytesMut::from(m.data);
            Ok(true)
        }
        Ok(m) => {
            buf.extend_from_slice(&m.data);
            Ok(true)
        }
        Err(PipeError::Ended(EndReason::Fin)) => Ok(false),
        Err(e) => Err(pipe_error("receive", e)),
    }
}

/// A failure to reach the node, as this layer's error.
fn connect_error(e: PipeError) -> Error {
    match e {
        PipeError::Address(e) => Error::Io {
            op: "resolve",
            kind: std::io::ErrorKind::NotFound,
            message: e.to_string(),
        },
        PipeError::Connect { source, .. } | PipeError::Bind { source, .. } => {
            Error::io("connect", source)
        }
        PipeError::ConnectTimeout { .. } => Error::Timeout("connect"),
        e => pipe_error("connect", e),
    }
}

/// A pipe's failure while `op` was being done, as this layer's error.
fn pipe_error(op: &'static str, e: PipeError) -> Error {
    let kind = match e {
        PipeError::Io(io) => return Error::io(op, io),
        PipeError::Ended(EndReason::Reset) => std::io::ErrorKind::ConnectionReset,
        PipeError::Ended(EndReason::Io(kind)) => kind,
        _ => std::io::ErrorKind::Other,
    };
    Error::Io {
        op,
        kind,
        message: e.to_string().to_lowercase(),
    }
}

/// Reads a counted answer (LIST, FLST): `REPL <count>`, then that many entries.
fn counted<T>(
    replies: &[Frame],
    entry: impl Fn(&Frame) -> Result<T, Error>,
) -> Result<Vec<T>, Error> {
    let (first, rest) = replies.split_first().ok_or(Error::NoReply)?;
    let count = reply::parse_list_count(first)?;
    if rest.len() != count {
        return Err(Error::BadReply("count does not match its entries"));
    }
    rest.iter().map(entry).collect()
}
