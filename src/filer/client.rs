//! The btfiler client: one request per connection, replies until the peer closes.
//!
//! [`FilerClient`] speaks every original message and every extension to one node. Control
//! replies are bounded ([`MAX_CONTROL`](super::MAX_CONTROL) bytes each, at most
//! [`MAX_REPLIES`] of them); file bodies are streamed to disk and never held whole. Every
//! operation runs under a time limit; a download's limit is on silence (no byte for that
//! long), not on its whole length.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frame::{Decoder, Event, Frame, Kind};
use super::msg::{reply, Nonce, QueryId, Request, TrustedOp};
use super::peer::{PeerEntry, PeerId};
use super::store::{Begun, Download};
use super::Error;
use crate::addr::Target;

/// The most reply frames read for one request.
pub const MAX_REPLIES: usize = 100_000;

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
    /// Whether the content was checked against the owner's SHA-256 (an original node
    /// cannot give one).
    pub verified: bool,
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

    async fn connect(&self) -> Result<TcpStream, Error> {
        let addrs = crate::dns::resolve(&self.target, None)
            .await
            .map_err(|e| Error::Io {
                op: "resolve",
                kind: std::io::ErrorKind::NotFound,
                message: e.to_string(),
            })?;
        let mut last = None;
        for addr in addrs {
            let socket = crate::iface::bind::tcp_socket(&addr, self.bind, None)
                .map_err(|e| Error::io("connect", e))?;
            match socket.connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = Some(Error::io("connect", e)),
            }
        }
        Err(last.unwrap_or(Error::Io {
            op: "connect",
            kind: std::io::ErrorKind::NotFound,
            message: "no address".into(),
        }))
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
        let run = async {
            let mut s = self.connect().await?;
            s.write_all(&request.to_bytes()?)
                .await
                .map_err(|e| Error::io("send", e))?;
            let mut dec = Decoder::default();
            let mut buf = BytesMut::with_capacity(4096);
            let mut out = Vec::new();
            loop {
                let n = s
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| Error::io("receive", e))?;
                loop {
                    match dec.decode_next(&mut buf, n == 0)? {
                        Some(Event::Frame(f)) => {
                            out.push(f);
                            if out.len() > MAX_REPLIES {
                                return Err(Error::TooLarge {
                                    len: out.len() as u64,
                                    max: MAX_REPLIES as u64,
                                });
                            }
                        }
                        Some(_) => return Err(Error::BadReply("unexpected streamed reply")),
                        None => break,
                    }
                }
                if n == 0 {
                    return Ok(out);
                }
            }
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| Error::Timeout("btfiler exchange"))?
    }

    /// Sends `request` and expects exactly one reply frame.
    async fn one(&self, request: &Request) -> Result<Frame, Error> {
        let mut replies = self.exchange(&request.to_frame()).await?;
        match replies.len() {
            0 => Err(Error::NoReply),
            _ => Ok(replies.swap_remove(0)),
        }
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

    /// `JOIN`: asks the node to add `me` (reachable at `host:port`) to its table. `Ok`
    /// with the reply text when added; [`Error::Refused`] with the `ERRO` text otherwise.
    ///
    /// # Errors
    ///
    /// As [`exchange`](Self::exchange), or the node refused.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn join(&self, me: &PeerId, host: &str, port: u16) -> Result<String, Error> {
        let r = self
            .one(&Request::Join {
                pid: me.clone(),
                host: host.to_owned(),
                port,
            })
            .await?;
        Ok(String::from_utf8_lossy(reply::expect_repl(&r)?).into_owned())
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

    /// Downloads `name` into `dir`. With a p2pipe node: asks its size and SHA-256
    /// (`FINF`), resumes a part file left by an earlier attempt with a ranged get
    /// (`FRNG`), verifies, and renames into place. With an original node (no `FINF`):
    /// a whole `FGET`, renamed into place once its announced length has arrived.
    /// `progress` is told (bytes so far, total) as bytes arrive.
    ///
    /// # Errors
    ///
    /// The node refused, the transfer stalled longer than the time limit, ended short,
    /// or failed verification (the part file is then deleted).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled download leaves its part file, which the next call
    /// resumes; nothing incomplete is ever at the final path.
    pub async fn fetch(
        &self,
        name: &str,
        dir: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Fetched, Error> {
        let dl_err = |e: super::store::StoreError| Error::Download(e.to_string());
        match self.file_info(name).await {
            Ok(info) => {
                let mut dl = match Download::begin(dir, name, info.size, info.sha256)
                    .await
                    .map_err(dl_err)?
                {
                    Begun::Complete(path) => {
                        progress(info.size, info.size);
                        return Ok(Fetched {
                            path,
                            size: info.size,
                            transferred: 0,
                            verified: true,
                        });
                    }
                    Begun::Resume(d) => d,
                };
                let start = dl.offset();
                progress(start, info.size);
                if start < info.size {
                    let req = Request::Frng {
                        name: name.to_owned(),
                        offset: start,
                        length: info.size - start,
                    };
                    let r = self
                        .stream_body(
                            &req.to_frame(),
                            info.size - start,
                            Sink::Download(&mut dl),
                            |done| progress(start + done, info.size),
                        )
                        .await;
                    if let Err(e) = r {
                        // Keep every byte that arrived, for the next attempt.
                        let _ = dl.flush().await;
                        return Err(e);
                    }
                }
                let path = dl.finish().await.map_err(dl_err)?;
                Ok(Fetched {
                    path,
                    size: info.size,
                    transferred: info.size - start,
                    verified: true,
                })
            }
            Err(Error::NoReply) => self.fetch_whole(name, dir, progress).await,
            Err(e) => Err(e),
        }
    }

    /// `FGET` from a node without `FINF`: the length comes from the reply's header, and
    /// the hash is computed but cannot be checked.
    async fn fetch_whole(
        &self,
        name: &str,
        dir: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Fetched, Error> {
        let (final_path, part_path) =
            super::store::paths(dir, name).map_err(|e| Error::Download(e.to_string()))?;
        if tokio::fs::try_exists(&final_path).await.unwrap_or(false) {
            return Err(Error::Download(format!(
                "{} already exists",
                final_path.display()
            )));
        }
        let mut file = tokio::fs::File::create(&part_path)
            .await
            .map_err(|e| Error::Download(format!("{}: {e}", part_path.display())))?;
        let req = Request::Fget {
            name: name.to_owned(),
        };
        let mut total = 0u64;
        let size = self
            .stream_body(&req.to_frame(), u64::MAX, Sink::File(&mut file), |done| {
                total = done;
                progress(done, done)
            })
            .await;
        let size = match size {
            Ok(s) => s,
            Err(e) => {
                drop(file);
                let _ = tokio::fs::remove_file(&part_path).await;
                return Err(e);
            }
        };
        file.sync_all()
            .await
            .map_err(|e| Error::Download(e.to_string()))?;
        drop(file);
        tokio::fs::rename(&part_path, &final_path)
            .await
            .map_err(|e| Error::Download(e.to_string()))?;
        progress(total, size);
        Ok(Fetched {
            path: final_path,
            size,
            transferred: size,
            verified: false,
        })
    }

    /// Sends `request`, expects one streamed `REPL` of at most `max` bytes, and hands its
    /// pieces to `sink`. Returns the body's length. An `ERRO` becomes
    /// [`Error::Refused`]. The limit is on silence: each read must come within the time
    /// limit.
    async fn stream_body(
        &self,
        request: &Frame,
        max: u64,
        mut sink: Sink<'_>,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, Error> {
        let limit = self.timeout;
        let mut s = tokio::time::timeout(limit, self.connect())
            .await
            .map_err(|_| Error::Timeout("connect"))??;
        s.write_all(&request.to_bytes()?)
            .await
            .map_err(|e| Error::io("send", e))?;
        let mut dec = Decoder::default();
        dec.expect_body(true);
        let mut buf = BytesMut::with_capacity(256 * 1024);
        let mut body_len = None;
        let mut done = 0u64;
        loop {
            if buf.capacity() - buf.len() < 64 * 1024 {
                buf.reserve(256 * 1024);
            }
            let n = tokio::time::timeout(limit, s.read_buf(&mut buf))
                .await
                .map_err(|_| Error::Timeout("download"))?
                .map_err(|e| Error::io("receive", e))?;
            loop {
                match dec.decode_next(&mut buf, n == 0)? {
                    Some(Event::BodyStart { kind, len }) => {
                        if kind != Kind::REPL {
                            return Err(Error::UnexpectedReply(kind));
                        }
                        if len > max {
                            return Err(Error::TooLarge { len, max });
                        }
                        body_len = Some(len);
                    }
                    Some(Event::BodyChunk(chunk)) => {
                        done += chunk.len() as u64;
                        sink.write(&chunk).await?;
                        progress(done);
                    }
                    Some(Event::BodyEnd) => return Ok(body_len.unwrap_or(done)),
                    Some(Event::Frame(f)) => {
                        reply::expect_repl(&f)?;
                        return Err(Error::BadReply("a file reply that is not streamed"));
                    }
                    None => break,
                }
            }
            if n == 0 {
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

/// Where a streamed body goes.
enum Sink<'a> {
    /// A verified download.
    Download(&'a mut Download),
    /// A plain part file (an original node's FGET).
    File(&'a mut tokio::fs::File),
}

impl Sink<'_> {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        match self {
            Sink::Download(d) => d
                .write(chunk)
                .await
                .map_err(|e| Error::Download(e.to_string())),
            Sink::File(f) => f
                .write_all(chunk)
                .await
                .map_err(|e| Error::Download(e.to_string())),
        }
    }
}
