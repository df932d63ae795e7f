//! btfiler requests and replies, parsed and built byte for byte.
//!
//! [`Request::parse`] reads a request frame the way an original node does: the payload is
//! split on ASCII whitespace (Python's `str.split()`: space, tab, LF, CR, VT, FF) and the
//! fields are checked and bounded. Every field must be UTF-8; ids must be [`PeerId`]s;
//! names and keys hold no whitespace or control characters and are at most
//! [`MAX_NAME_LEN`] bytes. A request that cannot be parsed gives a [`ParseError`] that
//! carries the reply to send, if any, so the node answers exactly as the protocol says
//! (`ERRO Join: incorrect arguments`, `ERRO Query: incorrect arguments`, ...).
//!
//! [`reply`] builds every reply frame and reads the replies a client gets.
//!
//! # Extensions
//!
//! | request | payload |
//! |---|---|
//! | `FINF` | `<name>` |
//! | `FRNG` | `<name> <offset> <length>` (decimal u64s; `offset + length` must not overflow) |
//! | `FPFX` | `<name> <length>` (decimal u64): the SHA-256 of the file's first `length` bytes |
//! | `QHST` | `<return-pid> <key> <ttl> <qid> <visited>`: `qid` is 16 lowercase hex digits, `visited` 1 to [`MAX_HISTORY`] peer ids joined by `,` (the senders so far) |
//! | `CHAL` | empty |
//! | `TRST` | `<nonce> <mac> <OP> <args...>`: `nonce` 32 and `mac` 64 lowercase hex digits; see [`TrustedOp`] and [`mac_input`] |
//! | `SRCH` | `<key> <ttl> <wait-ms> <quiet-ms> <max>`: `wait-ms` at most [`MAX_SEARCH_WAIT_MS`], `quiet-ms` at most `wait-ms`, `max` 1 to [`MAX_SEARCH_HITS`] |

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use super::frame::{Frame, Kind};
use super::peer::{self, PeerId, MAX_ID_LEN};

/// The largest time-to-live a query may carry.
pub const MAX_TTL: u32 = 64;

/// The largest hop count a trusted `RBLD` may ask for.
pub const MAX_HOPS: u32 = 64;

/// The most peer ids a `QHST` history may list.
pub const MAX_HISTORY: usize = 64;

/// The longest file name or search key, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// The longest a `SRCH` may ask the node to wait for answers, in milliseconds.
pub const MAX_SEARCH_WAIT_MS: u32 = 30_000;

/// The most answers one `SRCH` gets.
pub const MAX_SEARCH_HITS: u32 = 256;

/// Why a request frame could not be parsed, and what to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad {} request: {reason}", .kind.to_lowercase())]
pub struct ParseError {
    kind: Kind,
    reason: &'static str,
    reply: Option<Frame>,
}

impl ParseError {
    fn new(kind: Kind, reason: &'static str, payload: &[u8]) -> ParseError {
        let reply = match kind {
            Kind::JOIN => Some(reply::join_bad_args()),
            Kind::QUER | Kind::QHST => Some(reply::query_bad_args()),
            Kind::FGET => Some(reply::file_not_found()),
            Kind::QUIT => quit_echo(payload),
            Kind::FINF => Some(reply::info_bad_args()),
            Kind::FRNG | Kind::FPFX => Some(reply::range_bad_args()),
            Kind::CHAL => Some(reply::challenge_bad_args()),
            Kind::TRST => Some(reply::trust_bad_args()),
            Kind::SRCH => Some(reply::search_bad_args()),
            _ => None,
        };
        ParseError {
            kind,
            reason,
            reply,
        }
    }

    /// The request's type.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// The frame to answer with before closing, if the protocol has one.
    ///
    /// JOIN: `ERRO Join: incorrect arguments`. QUER and QHST: `ERRO Query: incorrect
    /// arguments`. FGET: `ERRO File not found` (an original node finds no such name).
    /// QUIT: `ERRO Quit: peer not found: <payload, trimmed>` as an original node answers,
    /// when that text is UTF-8 of at most 300 bytes (the longest peer id), else nothing. RESP: nothing.
    /// Extensions: `ERRO Info: ...`, `ERRO Range: ...`, `ERRO Challenge: ...`,
    /// `ERRO Trust: incorrect arguments`, `ERRO Search: incorrect arguments`.
    pub fn reply(&self) -> Option<&Frame> {
        self.reply.as_ref()
    }
}

/// An original node answers any QUIT it cannot match with the stripped payload.
fn quit_echo(payload: &[u8]) -> Option<Frame> {
    let text = std::str::from_utf8(payload).ok()?;
    let text = text.trim_matches(|c: char| c.is_ascii() && is_py_space(c as u8));
    (text.len() <= MAX_ID_LEN).then(|| erro(format!("Quit: peer not found: {text}")))
}

/// A 64-bit query id, written as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(pub u64);

/// A trusted request's nonce: 16 bytes, written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; 16]);

/// A trusted request's MAC: 32 bytes (HMAC-SHA256), written as 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 32]);

impl Mac {
    /// Compares in time that does not depend on where the MACs differ.
    pub fn ct_eq(&self, other: &Mac) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// Reads exactly `2 * N` lowercase hex digits.
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
    }
    Some(out)
}

impl fmt::Display for QueryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl QueryId {
    /// Reads 16 lowercase hex digits.
    pub fn parse(s: &str) -> Option<QueryId> {
        unhex::<8>(s).map(|b| QueryId(u64::from_be_bytes(b)))
    }
}

impl Nonce {
    /// Reads 32 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Nonce> {
        unhex(s).map(Nonce)
    }
}

impl Mac {
    /// Reads 64 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Mac> {
        unhex(s).map(Mac)
    }
}

/// The bytes a trusted request's MAC covers: the nonce's 32 hex digits, one space, and
/// the operation's text, e.g. `0123...cdef FIND song`.
///
/// Node and client compute HMAC-SHA256 keyed with the node's secret over these bytes;
/// `op_text` is the canonical text, [`TrustedOp`]'s `Display` (upper-case code, single
/// spaces), not the bytes as they came, so a request re-spaced on the way still checks.
pub fn mac_input(nonce: &Nonce, op_text: &str) -> Vec<u8> {
    format!("{nonce} {op_text}").into_bytes()
}

/// An operation only a trusted party (one who knows the node's secret) may ask for.
///
/// | text | meaning |
/// |---|---|
/// | `FIND <key>` | search the network for `key` and download the first hit into the node's directory |
/// | `SHAR <name>` | share the file `name` of the node's directory |
/// | `ADDP <pid> <host> <port>` | add a peer to the table |
/// | `DELP <pid>` | drop a peer from the table |
/// | `RBLD <host> <port> <hops>` | build the peer table from a contact (`hops` ≤ [`MAX_HOPS`]) |
///
/// Codes are read case-insensitively and written upper case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustedOp {
    /// `FIND <key>`.
    Find {
        /// The search key.
        key: String,
    },
    /// `SHAR <name>`.
    Share {
        /// The file name.
        name: String,
    },
    /// `ADDP <pid> <host> <port>`.
    AddPeer {
        /// The peer's id.
        pid: PeerId,
        /// Its host.
        host: String,
        /// Its port.
        port: u16,
    },
    /// `DELP <pid>`.
    DelPeer {
        /// The peer's id.
        pid: PeerId,
    },
    /// `RBLD <host> <port> <hops>`.
    Rebuild {
        /// The contact's host.
        host: String,
        /// The contact's port.
        port: u16,
        /// How many hops to recurse.
        hops: u32,
    },
}

impl TrustedOp {
    /// The operation's four-letter code.
    pub fn code(&self) -> &'static str {
        match self {
            TrustedOp::Find { .. } => "FIND",
            TrustedOp::Share { .. } => "SHAR",
            TrustedOp::AddPeer { .. } => "ADDP",
            TrustedOp::DelPeer { .. } => "DELP",
            TrustedOp::Rebuild { .. } => "RBLD",
        }
    }

    /// The bytes the MAC covers for this operation under `nonce` (see [`mac_input`]).
    pub fn mac_input(&self, nonce: &Nonce) -> Vec<u8> {
        mac_input(nonce, &self.to_string())
    }

    fn from_fields(fields: &[&str]) -> Option<TrustedOp> {
        let (code, args) = fields.split_first()?;
        Some(match (code.to_ascii_uppercase().as_str(), args) {
            ("FIND", [key]) => TrustedOp::Find { key: token(key)? },
            ("SHAR", [name]) => TrustedOp::Share { name: token(name)? },
            ("ADDP", [pid, host, port]) => TrustedOp::AddPeer {
                pid: PeerId::parse(pid).ok()?,
                host: peer::parse_host(host).ok()?,
                port: peer::parse_port(port)?,
            },
            ("DELP", [pid]) => TrustedOp::DelPeer {
                pid: PeerId::parse(pid).ok()?,
            },
            ("RBLD", [host, port, hops]) => TrustedOp::Rebuild {
                host: peer::parse_host(host).ok()?,
                port: peer::parse_port(port)?,
                hops: bounded(hops, MAX_HOPS)?,
            },
            _ => return None,
        })
    }
}

impl fmt::Display for TrustedOp {
    /// The canonical text: the code and the arguments, single spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code();
        match self {
            TrustedOp::Find { key } => write!(f, "{code} {key}"),
            TrustedOp::Share { name } => write!(f, "{code} {name}"),
            TrustedOp::AddPeer { pid, host, port } => write!(f, "{code} {pid} {host} {port}"),
            TrustedOp::DelPeer { pid } => write!(f, "{code} {pid}"),
            TrustedOp::Rebuild { host, port, hops } => write!(f, "{code} {host} {port} {hops}"),
        }
    }
}

impl FromStr for TrustedOp {
    type Err = ParseError;

    /// Reads an operation's text (as after the MAC in a `TRST` payload).
    fn from_str(s: &str) -> Result<TrustedOp, ParseError> {
        let fields: Vec<&str> = fields(s.as_bytes())
            .take(5)
            .map(std::str::from_utf8)
            .collect::<Result<_, _>>()
            .map_err(|_| ParseError::new(Kind::TRST, "not utf-8", b""))?;
        TrustedOp::from_fields(&fields)
            .ok_or_else(|| ParseError::new(Kind::TRST, "bad operation", b""))
    }
}

/// A request, as a node receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `NAME`: answer with the node's id. Any payload is ignored, as originally.
    Name,
    /// `LIST`: answer with the peer table. Any payload is ignored.
    List,
    /// `JOIN <pid> <host> <port>`: add a peer.
    Join {
        /// The peer's id.
        pid: PeerId,
        /// Its host.
        host: String,
        /// Its port.
        port: u16,
    },
    /// `QUER <return-pid> <key> <ttl>`: a search.
    Quer {
        /// Where results go.
        ret: PeerId,
        /// The key, matched as a case-sensitive substring of file names.
        key: String,
        /// How many more hops the query may travel (≤ [`MAX_TTL`]).
        ttl: u32,
    },
    /// `RESP <name> <owner-pid>`: a search result.
    Resp {
        /// The file name.
        name: String,
        /// Who has it.
        owner: PeerId,
    },
    /// `FGET <name>`: fetch a whole file. The whole payload is the name, as originally.
    Fget {
        /// The file name.
        name: String,
    },
    /// `QUIT <pid>`: drop a peer. The payload, trimmed, is the id.
    Quit {
        /// The peer's id.
        pid: PeerId,
    },
    /// `PING`: liveness; no reply. Any payload is ignored.
    Ping,
    /// `FINF <name>`: a file's size and SHA-256.
    Finf {
        /// The file name.
        name: String,
    },
    /// `FRNG <name> <offset> <length>`: a byte range of a file.
    Frng {
        /// The file name.
        name: String,
        /// The first byte.
        offset: u64,
        /// How many bytes.
        length: u64,
    },
    /// `FPFX <name> <length>`: the SHA-256 of a file's first `length` bytes, so that a
    /// client can check a part file before it resumes.
    Fpfx {
        /// The file name.
        name: String,
        /// How many bytes from the start.
        length: u64,
    },
    /// `QHST <return-pid> <key> <ttl> <qid> <visited>`: a search with its history.
    Qhst {
        /// Where results go.
        ret: PeerId,
        /// The key.
        key: String,
        /// How many more hops (≤ [`MAX_TTL`]).
        ttl: u32,
        /// The search's id, the same at every hop.
        qid: QueryId,
        /// The nodes it has visited (1 to [`MAX_HISTORY`]).
        visited: Vec<PeerId>,
    },
    /// `CHAL`: ask for a nonce.
    Chal,
    /// `TRST <nonce> <mac> <OP> <args...>`: a trusted operation.
    Trst {
        /// The nonce the node handed out.
        nonce: Nonce,
        /// HMAC-SHA256 over [`TrustedOp::mac_input`].
        mac: Mac,
        /// The operation.
        op: TrustedOp,
    },
    /// `FLST`: the files the node knows, its own and those learned from results: `REPL
    /// <count>`, then `count` × `REPL <name> <owner-pid> <size or ->`.
    Flst,
    /// `SRCH <key> <ttl> <wait-ms> <quiet-ms> <max>`: a search the node runs itself and
    /// answers on this connection: `REPL Search ACK: <key>`, then one `REPL <name>
    /// <owner-pid>` per answer as it comes, then the close. It ends after `max` answers,
    /// `quiet-ms` after the last one, or `wait-ms` after the request, whichever is
    /// first. For a searcher that no other node can connect to (behind a NAT, or
    /// through a tunnel), which `QUER`'s return address does not reach.
    Srch {
        /// The key.
        key: String,
        /// How many hops the node's query may travel (≤ [`MAX_TTL`]).
        ttl: u32,
        /// The longest to wait, in milliseconds (≤ [`MAX_SEARCH_WAIT_MS`]).
        wait_ms: u32,
        /// After an answer, how long to wait for a further one (≤ `wait_ms`).
        quiet_ms: u32,
        /// The most answers (1 to [`MAX_SEARCH_HITS`]).
        max: u32,
    },
    /// Any other type, stray `REPL` and `ERRO` included: the node closes without a reply.
    Unknown(Kind),
}

fn is_py_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The whitespace-separated fields of a payload, as Python's `str.split()` finds them.
fn fields(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    payload.split(|&b| is_py_space(b)).filter(|f| !f.is_empty())
}

/// Exactly `N` UTF-8 fields, or `None`.
fn exact<const N: usize>(payload: &[u8]) -> Option<[&str; N]> {
    let mut it = fields(payload);
    let mut out = [""; N];
    for slot in &mut out {
        *slot = std::str::from_utf8(it.next()?).ok()?;
    }
    it.next().is_none().then_some(out)
}

/// A file name or key: no whitespace or control characters, at most [`MAX_NAME_LEN`].
fn token(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then(|| s.to_owned())
}

/// Decimal digits only, at most `max`.
fn bounded(s: &str, max: u32) -> Option<u32> {
    number(s)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n <= max)
}

/// Decimal digits only, as a u64.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One request's payload being read: the checks every message shares.
struct Reader<'a> {
    kind: Kind,
    p: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bad(&self, reason: &'static str) -> ParseError {
        ParseError::new(self.kind, reason, self.p)
    }

    /// Exactly `N` UTF-8 fields.
    fn exact<const N: usize>(&self, reason: &'static str) -> Result<[&'a str; N], ParseError> {
        exact(self.p).ok_or_else(|| self.bad(reason))
    }

    fn pid(&self, s: &str) -> Result<PeerId, ParseError> {
        PeerId::parse(s).map_err(|_| self.bad("bad peer id"))
    }

    fn name(&self, s: &str) -> Result<String, ParseError> {
        token(s).ok_or_else(|| self.bad("bad file name or key"))
    }

    fn ttl(&self, s: &str) -> Result<u32, ParseError> {
        bounded(s, MAX_TTL).ok_or_else(|| self.bad("bad ttl"))
    }

    fn number(&self, s: &str, reason: &'static str) -> Result<u64, ParseError> {
        number(s).ok_or_else(|| self.bad(reason))
    }

    fn join(&self) -> Result<Request, ParseError> {
        let [id, host, port] = self.exact("expected 3 fields")?;
        Ok(Request::Join {
            pid: self.pid(id)?,
            host: peer::parse_host(host).map_err(|_| self.bad("bad host"))?,
            port: peer::parse_port(port).ok_or_else(|| self.bad("bad port"))?,
        })
    }

    fn quer(&self) -> Result<Request, ParseError> {
        let [ret, key, ttl] = self.exact("expected 3 fields")?;
        Ok(Request::Quer {
            ret: self.pid(ret)?,
            key: self.name(key)?,
            ttl: self.ttl(ttl)?,
        })
    }

    fn resp(&self) -> Result<Request, ParseError> {
        let [file, owner] = self.exact("expected 2 fields")?;
        Ok(Request::Resp {
            name: self.name(file)?,
            owner: self.pid(owner)?,
        })
    }

    fn fget(&self) -> Result<Request, ParseError> {
        // The original takes the whole payload as the name, spaces and all.
        let file = std::str::from_utf8(self.p).map_err(|_| self.bad("not utf-8"))?;
        if file.bytes().any(is_py_space) {
            return Err(self.bad("whitespace in file name"));
        }
        Ok(Request::Fget {
            name: self.name(file)?,
        })
    }

    fn quit(&self) -> Result<Request, ParseError> {
        let [id] = self.exact("expected 1 field")?;
        Ok(Request::Quit { pid: self.pid(id)? })
    }

    fn finf(&self) -> Result<Request, ParseError> {
        let [file] = self.exact("expected 1 field")?;
        Ok(Request::Finf {
            name: self.name(file)?,
        })
    }

    fn frng(&self) -> Result<Request, ParseError> {
        let [file, offset, length] = self.exact("expected 3 fields")?;
        let offset = self.number(offset, "bad offset")?;
        let length = self.number(length, "bad length")?;
        if offset.checked_add(length).is_none() {
            return Err(self.bad("range overflows"));
        }
        Ok(Request::Frng {
            name: self.name(file)?,
            offset,
            length,
        })
    }

    fn fpfx(&self) -> Result<Request, ParseError> {
        let [file, length] = self.exact("expected 2 fields")?;
        let length = self.number(length, "bad length")?;
        Ok(Request::Fpfx {
            name: self.name(file)?,
            length,
        })
    }

    fn qhst(&self) -> Result<Request, ParseError> {
        let [ret, key, ttl, qid, visited] = self.exact("expected 5 fields")?;
        let qid = QueryId::parse(qid).ok_or_else(|| self.bad("bad query id"))?;
        if visited.split(',').nth(MAX_HISTORY).is_some() {
            return Err(self.bad("history too long"));
        }
        let visited = visited
            .split(',')
            .map(|v| self.pid(v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Request::Qhst {
            ret: self.pid(ret)?,
            key: self.name(key)?,
            ttl: self.ttl(ttl)?,
            qid,
            visited,
        })
    }

    fn srch(&self) -> Result<Request, ParseError> {
        let [key, ttl, wait, quiet, max] = self.exact("expected 5 fields")?;
        let wait_ms = bounded(wait, MAX_SEARCH_WAIT_MS).ok_or_else(|| self.bad("bad wait"))?;
        let quiet_ms = bounded(quiet, wait_ms).ok_or_else(|| self.bad("bad quiet time"))?;
        let max = bounded(max, MAX_SEARCH_HITS)
            .filter(|&m| m > 0)
            .ok_or_else(|| self.bad("bad answer count"))?;
        Ok(Request::Srch {
            key: self.name(key)?,
            ttl: self.ttl(ttl)?,
            wait_ms,
            quiet_ms,
            max,
        })
    }

    fn chal(&self) -> Result<Request, ParseError> {
        if fields(self.p).next().is_some() {
            return Err(self.bad("expected no fields"));
        }
        Ok(Request::Chal)
    }

    fn trst(&self) -> Result<Request, ParseError> {
        let mut all = fields(self.p).map(std::str::from_utf8);
        let mut next = || all.next().and_then(Result::ok);
        let nonce = next()
            .and_then(Nonce::parse)
            .ok_or_else(|| self.bad("bad nonce"))?;
        let mac = next()
            .and_then(Mac::parse)
            .ok_or_else(|| self.bad("bad mac"))?;
        let mut rest = Vec::with_capacity(4);
        for field in all.by_ref().take(5) {
            rest.push(field.map_err(|_| self.bad("not utf-8"))?);
        }
        let op = TrustedOp::from_fields(&rest).ok_or_else(|| self.bad("bad operation"))?;
        Ok(Request::Trst { nonce, mac, op })
    }
}

impl Request {
    /// Parses a request frame (its type already upper-cased by the decoder): one step
    /// per message type.
    ///
    /// # Errors
    ///
    /// [`ParseError`] naming the request, the reason and the reply to send.
    pub fn parse(frame: &Frame) -> Result<Request, ParseError> {
        let r = Reader {
            kind: frame.kind,
            p: frame.payload(),
        };
        match r.kind {
            Kind::NAME => Ok(Request::Name),
            Kind::LIST => Ok(Request::List),
            Kind::PING => Ok(Request::Ping),
            Kind::FLST => Ok(Request::Flst),
            Kind::JOIN => r.join(),
            Kind::QUER => r.quer(),
            Kind::RESP => r.resp(),
            Kind::FGET => r.fget(),
            Kind::QUIT => r.quit(),
            Kind::FINF => r.finf(),
            Kind::FRNG => r.frng(),
            Kind::FPFX => r.fpfx(),
            Kind::QHST => r.qhst(),
            Kind::CHAL => r.chal(),
            Kind::TRST => r.trst(),
            Kind::SRCH => r.srch(),
            other => Ok(Request::Unknown(other)),
        }
    }

    /// The request's type.
    pub fn kind(&self) -> Kind {
        match self {
            Request::Name => Kind::NAME,
            Request::List => Kind::LIST,
            Request::Join { .. } => Kind::JOIN,
            Request::Quer { .. } => Kind::QUER,
            Request::Resp { .. } => Kind::RESP,
            Request::Fget { .. } => Kind::FGET,
            Request::Quit { .. } => Kind::QUIT,
            Request::Ping => Kind::PING,
            Request::Finf { .. } => Kind::FINF,
            Request::Frng { .. } => Kind::FRNG,
            Request::Fpfx { .. } => Kind::FPFX,
            Request::Qhst { .. } => Kind::QHST,
            Request::Chal => Kind::CHAL,
            Request::Trst { .. } => Kind::TRST,
            Request::Flst => Kind::FLST,
            Request::Srch { .. } => Kind::SRCH,
            Request::Unknown(kind) => *kind,
        }
    }

    /// The frame a client sends for this request (`Unknown` gets an empty payload).
    pub fn to_frame(&self) -> Frame {
        let text = match self {
            Request::Name
            | Request::List
            | Request::Ping
            | Request::Chal
            | Request::Flst
            | Request::Unknown(_) => String::new(),
            Request::Join { pid, host, port } => format!("{pid} {host} {port}"),
            Request::Quer { ret, key, ttl } => format!("{ret} {key} {ttl}"),
            Request::Resp { name, owner } => format!("{name} {owner}"),
            Request::Fget { name } | Request::Finf { name } => name.clone(),
            Request::Quit { pid } => pid.to_string(),
            Request::Frng {
                name,
                offset,
                length,
            } => format!("{name} {offset} {length}"),
            Request::Fpfx { name, length } => format!("{name} {length}"),
            Request::Qhst {
                ret,
                key,
                ttl,
                qid,
                visited,
            } => {
                let visited: Vec<String> = visited.iter().map(PeerId::to_string).collect();
                format!("{ret} {key} {ttl} {qid} {}", visited.join(","))
            }
            Request::Trst { nonce, mac, op } => format!("{nonce} {mac} {op}"),
            Request::Srch {
                key,
                ttl,
                wait_ms,
                quiet_ms,
                max,
            } => format!("{key} {ttl} {wait_ms} {quiet_ms} {max}"),
        };
        Frame::control(self.kind(), text)
    }
}

fn repl(text: impl Into<Bytes>) -> Frame {
    Frame::control(Kind::REPL, text)
}

fn erro(text: impl Into<Bytes>) -> Frame {
    Frame::control(Kind::ERRO, text)
}

/// Reply frames, built byte for byte, and the readers a client uses on them.
pub mod reply {
    use bytes::Bytes;

    use super::super::frame::{Frame, Header, Kind};
    use super::super::peer::{Insert, PeerEntry, PeerId};
    use super::super::Error;
    use super::{erro, exact, repl, Nonce};

    /// One entry of the answer to FLST: `REPL <name> <owner-pid> <size>`, with `-` for an
    /// unknown size.
    pub fn file_entry(name: &str, owner: &PeerId, size: Option<u64>) -> Frame {
        match size {
            Some(n) => repl(format!("{name} {owner} {n}")),
            None => repl(format!("{name} {owner} -")),
        }
    }

    /// Reads one entry of the answer to FLST.
    ///
    /// # Errors
    ///
    /// Not a `REPL` of three fields with a valid owner.
    pub fn parse_file_entry(frame: &Frame) -> Result<(String, PeerId, Option<u64>), Error> {
        let [name, owner, size] =
            exact(expect_repl(frame)?).ok_or(Error::BadReply("file entry"))?;
        let owner = PeerId::parse(owner).map_err(|_| Error::BadReply("file entry owner"))?;
        let size = if size == "-" {
            None
        } else {
            Some(
                size.parse()
                    .map_err(|_| Error::BadReply("file entry size"))?,
            )
        };
        Ok((name.to_owned(), owner, size))
    }

    /// `REPL <my-id>`, the answer to NAME.
    pub fn repl_name(id: &PeerId) -> Frame {
        repl(id.to_string())
    }

    /// `REPL <count>`, the first answer to LIST.
    pub fn list_count(n: usize) -> Frame {
        repl(n.to_string())
    }

    /// `REPL <pid> <host> <port>`, one per peer after [`list_count`].
    pub fn list_entry(pid: &PeerId, host: &str, port: u16) -> Frame {
        repl(format!("{pid} {host} {port}"))
    }

    /// `ERRO Join: incorrect arguments`.
    pub fn join_bad_args() -> Frame {
        erro("Join: incorrect arguments")
    }

    /// `ERRO Join: too many peers`.
    pub fn join_full() -> Frame {
        erro("Join: too many peers")
    }

    /// `REPL Join: peer added: <pid>`.
    pub fn join_added(pid: &PeerId) -> Frame {
        repl(format!("Join: peer added: {pid}"))
    }

    /// `ERRO Join: peer already inserted <pid>`.
    pub fn join_dup(pid: &PeerId) -> Frame {
        erro(format!("Join: peer already inserted {pid}"))
    }

    /// The JOIN answer for what [`PeerTable::insert`](super::super::PeerTable::insert) did.
    pub fn join_result(insert: Insert, pid: &PeerId) -> Frame {
        match insert {
            Insert::Added => join_added(pid),
            Insert::Full => join_full(),
            Insert::Duplicate => join_dup(pid),
        }
    }

    /// `REPL Query ACK: <key>`, the answer to QUER and QHST.
    pub fn query_ack(key: &str) -> Frame {
        repl(format!("Query ACK: {key}"))
    }

    /// `ERRO Query: incorrect arguments`.
    pub fn query_bad_args() -> Frame {
        erro("Query: incorrect arguments")
    }

    /// `REPL Search ACK: <key>`, the first answer to SRCH.
    pub fn search_ack(key: &str) -> Frame {
        repl(format!("Search ACK: {key}"))
    }

    /// `REPL <name> <owner-pid>`: one answer to SRCH.
    pub fn search_hit(name: &str, owner: &PeerId) -> Frame {
        repl(format!("{name} {owner}"))
    }

    /// Reads one answer to SRCH.
    ///
    /// # Errors
    ///
    /// Not a `REPL` of two fields with a valid owner.
    pub fn parse_search_hit(frame: &Frame) -> Result<(String, PeerId), Error> {
        let [name, owner] = exact(expect_repl(frame)?).ok_or(Error::BadReply("search answer"))?;
        let owner = PeerId::parse(owner).map_err(|_| Error::BadReply("search answer owner"))?;
        Ok((name.to_owned(), owner))
    }

    /// `ERRO Search: incorrect arguments`.
    pub fn search_bad_args() -> Frame {
        erro("Search: incorrect arguments")
    }

    /// `ERRO Search: busy`: the node runs as many searches for others as it takes.
    pub fn search_busy() -> Frame {
        erro("Search: busy")
    }

    #[cfg(test)]
    /// `RESP <name> <owner-pid>`, a search result sent to the query's return address.
    pub fn resp(name: &str, owner: &PeerId) -> Frame {
        super::Request::Resp {
            name: name.to_owned(),
            owner: owner.clone(),
        }
        .to_frame()
    }

    #[cfg(test)]
    /// `REPL <bytes>`: a whole file (FGET) or a range (FRNG) held in memory.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] when the bytes do not fit the u32 length field.
    pub fn file_data(bytes: impl Into<Bytes>) -> Result<Frame, Error> {
        Frame::new(Kind::REPL, bytes)
    }

    /// The header of a `REPL` whose `len` file bytes are sent after it in pieces.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] when `len` does not fit the u32 length field.
    pub fn file_header(len: u64) -> Result<Header, Error> {
        Header::for_payload(Kind::REPL, len)
    }

    /// `ERRO File not found`.
    pub fn file_not_found() -> Frame {
        erro("File not found")
    }

    /// `ERRO Error reading file`.
    pub fn file_read_error() -> Frame {
        erro("Error reading file")
    }

    /// `REPL Quit: peer removed: <pid>`.
    pub fn quit_removed(pid: &PeerId) -> Frame {
        repl(format!("Quit: peer removed: {pid}"))
    }

    /// `ERRO Quit: peer not found: <pid>`.
    pub fn quit_not_found(pid: &PeerId) -> Frame {
        erro(format!("Quit: peer not found: {pid}"))
    }

    /// `REPL <size> <sha256 as 64 lowercase hex digits>`, the answer to FINF.
    pub fn file_info(size: u64, sha256: &[u8; 32]) -> Frame {
        let mut text = size.to_string();
        text.push(' ');
        for b in sha256 {
            text.push_str(&format!("{b:02x}"));
        }
        repl(text)
    }

    /// `REPL <sha256 as 64 lowercase hex digits>`, the answer to FPFX.
    pub fn prefix_hash(sha256: &[u8; 32]) -> Frame {
        repl(super::hex(sha256))
    }

    /// `ERRO Info: incorrect arguments`.
    pub fn info_bad_args() -> Frame {
        erro("Info: incorrect arguments")
    }

    /// `ERRO Range: incorrect arguments`.
    pub fn range_bad_args() -> Frame {
        erro("Range: incorrect arguments")
    }

    /// `ERRO Range: out of bounds`: a range that starts past the end of the file (FRNG),
    /// or a prefix longer than the file (FPFX).
    pub fn range_out_of_bounds() -> Frame {
        erro("Range: out of bounds")
    }

    /// `REPL <nonce as 32 lowercase hex digits>`, the answer to CHAL.
    pub fn challenge(nonce: &Nonce) -> Frame {
        repl(nonce.to_string())
    }

    /// `ERRO Challenge: incorrect arguments`.
    pub fn challenge_bad_args() -> Frame {
        erro("Challenge: incorrect arguments")
    }

    /// `REPL Trust: accepted`: a trusted operation was checked and started.
    pub fn trust_accepted() -> Frame {
        repl("Trust: accepted")
    }

    /// `ERRO Trust: not authorized`: unknown or used nonce, or a wrong MAC.
    pub fn trust_denied() -> Frame {
        erro("Trust: not authorized")
    }

    /// `ERRO Trust: incorrect arguments`.
    pub fn trust_bad_args() -> Frame {
        erro("Trust: incorrect arguments")
    }

    /// A file's size and digest, as FINF answers them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FileInfo {
        /// The size in bytes.
        pub size: u64,
        /// The SHA-256 of the contents.
        pub sha256: [u8; 32],
    }

    /// The payload of a `REPL`.
    ///
    /// # Errors
    ///
    /// [`Error::Refused`] with the text of an `ERRO`, [`Error::UnexpectedReply`] for any
    /// other type.
    pub fn expect_repl(frame: &Frame) -> Result<&Bytes, Error> {
        match frame.kind {
            Kind::REPL => Ok(frame.payload()),
            Kind::ERRO => Err(Error::Refused(
                String::from_utf8_lossy(frame.payload()).into_owned(),
            )),
            other => Err(Error::UnexpectedReply(other)),
        }
    }

    fn one<'a, const N: usize>(
        frame: &'a Frame,
        what: &'static str,
    ) -> Result<[&'a str; N], Error> {
        exact(expect_repl(frame)?).ok_or(Error::BadReply(what))
    }

    /// Reads the answer to JOIN as what the node's table did: any `REPL` is
    /// [`Insert::Added`]; `ERRO Join: too many peers` is [`Insert::Full`], and `ERRO Join:
    /// peer already inserted <pid>` [`Insert::Duplicate`].
    ///
    /// # Errors
    ///
    /// Any other `ERRO` ([`Error::Refused`]) or type, as [`expect_repl`].
    pub fn parse_join(frame: &Frame) -> Result<Insert, Error> {
        match expect_repl(frame) {
            Ok(_) => Ok(Insert::Added),
            Err(Error::Refused(text)) if text == "Join: too many peers" => Ok(Insert::Full),
            Err(Error::Refused(text)) if text.starts_with("Join: peer already inserted") => {
                Ok(Insert::Duplicate)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the answer to NAME.
    ///
    /// # Errors
    ///
    /// As [`expect_repl`], or [`Error::BadReply`] when the text is no peer id.
    pub fn parse_name(frame: &Frame) -> Result<PeerId, Error> {
        let [id] = one(frame, "name reply is not one peer id")?;
        PeerId::parse(id).map_err(|_| Error::BadReply("name reply is not a peer id"))
    }

    /// Reads the count that starts a LIST answer.
    ///
    /// # Errors
    ///
    /// As [`expect_repl`], or [`Error::BadReply`] when the text is no count.
    pub fn parse_list_count(frame: &Frame) -> Result<usize, Error> {
        let [n] = one(frame, "list count is not one number")?;
        super::number(n)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(Error::BadReply("list count is not a number"))
    }

    /// Reads one entry of a LIST answer.
    ///
    /// # Errors
    ///
    /// As [`expect_repl`], or [`Error::BadReply`] when the entry is malformed.
    pub fn parse_list_entry(frame: &Frame) -> Result<PeerEntry, Error> {
        let [pid, host, port] = one(frame, "list entry is not <pid> <host> <port>")?;
        let bad = Error::BadReply("list entry is not <pid> <host> <port>");
        Ok(PeerEntry {
            pid: PeerId::parse(pid).map_err(|_| bad.clone())?,
            host: super::peer::parse_host(host).map_err(|_| bad.clone())?,
            port: super::peer::parse_port(port).ok_or(bad)?,
        })
    }

    /// Reads the answer to FINF.
    ///
    /// # Errors
    ///
    /// As [`expect_repl`], or [`Error::BadReply`] when it is not `<size> <sha256-hex>`.
    pub fn parse_file_info(frame: &Frame) -> Result<FileInfo, Error> {
        let bad = Error::BadReply("file info is not <size> <sha256-hex>");
        let [size, digest] = one(frame, "file info is not <size> <sha256-hex>")?;
        Ok(FileInfo {
            size: super::number(size).ok_or(bad.clone())?,
            sha256: super::unhex(digest).ok_or(bad)?,
        })
    }

    /// Reads the answer to FPFX.
    ///
    /// # Errors
    ///
    /// As [`expect_repl`], or [`Error::BadReply`] when it is not one SHA-256 in hex.
    pub fn parse_prefix_hash(frame: &Frame) -> Result<[u8; 32], Error> {
        let [digest] = one(frame, "prefix hash is not one sha256-hex")?;
        super::unhex(digest).ok_or(Error::BadReply("prefix hash is not one sha256-hex"))
    }

    /// Reads the answer to CHAL.
    ///
    /// # Errors
    ///
    /// As [`expect_repl`], or [`Error::BadReply`] when it is not 32 lowercase hex digits.
    pub fn parse_challenge(frame: &Frame) -> Result<Nonce, Error> {
        let [nonce] = one(frame, "challenge is not one nonce")?;
        Nonce::parse(nonce).ok_or(Error::BadReply("challenge is not 32 lowercase hex digits"))
    }
}

#[cfg(test)]
mod tests;
