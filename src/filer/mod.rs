//! The file-sharing node: a sans-IO protocol core and a thin I/O shell around it.
//!
//! The core owns no socket, reads no clock and touches no file: bytes, `now` and what the
//! shell found out go in, frames and `#[must_use]` steps come out.
//!
//! - `frame`: btpeer frames (parse, emit, and a streaming decoder that never holds a file
//!   body); the header is the pipe's [`Framing::Btpeer`](crate::Framing::Btpeer) one.
//! - `msg`: btfiler requests and every reply, byte for byte, and the readers of replies.
//! - `peer`: peer ids and the bounded peer table.
//! - `seen` and `auth`: the query memory and the trusted session's challenges.
//! - `core`: what a node answers and decides: a request in, a step out (reply, serve a
//!   file, handle a query, carry out a trusted operation); where a query goes; building
//!   the peer table from the typed answers of other nodes.
//!
//! The I/O shell carries the steps out and only moves bytes:
//!
//! - `node`: the node on the Daemon: sends the replies, reads and streams files, asks
//!   other nodes, runs the stabilizer.
//! - `client`: one request per connection over a [`Pipe`](crate::Pipe), replies until
//!   the node closes, downloads streamed to disk.
//! - `shared` and `store`: the shared folder (names resolved inside it, its index) and
//!   verified downloads (part files, locks, hashes on disk).
//!
//! # The wire protocol (`docs/protocol.md`)
//!
//! A frame is `TYPE` (4 ASCII bytes, upper-cased by the receiver), `LEN` (u32 big-endian)
//! and `LEN` payload bytes; a short header or payload means no message. A requester opens
//! TCP and sends one request frame; the server answers with zero or more frames and closes,
//! and the close is the only end of the replies. Text fields are separated by spaces and
//! read by whitespace splitting, so ids, keys and file names hold no whitespace. A peer id
//! is `host:port` with one colon; IPv6 peers are written `[v6]:port` (see [`PeerId`]).
//!
//! | request | replies |
//! |---|---|
//! | `NAME` | `REPL <my-id>` |
//! | `LIST` | `REPL <count>`, then `count` × `REPL <pid> <host> <port>` |
//! | `JOIN <pid> <host> <port>` | `REPL Join: peer added: <pid>`, `ERRO Join: too many peers`, `ERRO Join: peer already inserted <pid>`, `ERRO Join: incorrect arguments` |
//! | `QUER <return-pid> <key> <ttl>` | `REPL Query ACK: <key>` or `ERRO Query: incorrect arguments`; a hit is sent later as `RESP <name> <owner-pid>` to return-pid |
//! | `RESP <name> <owner-pid>` | none |
//! | `FGET <name>` | `REPL <file bytes>`, `ERRO File not found`, `ERRO Error reading file` |
//! | `QUIT <pid>` | `REPL Quit: peer removed: <pid>` or `ERRO Quit: peer not found: <pid>` |
//! | `PING` | none |
//!
//! # p2pipe's extensions
//!
//! New four-letter types, which original nodes close on without a reply, so mixed
//! networks keep working. Bad arguments get `ERRO <Msg>: incorrect arguments`.
//!
//! | request | replies |
//! |---|---|
//! | `FINF <name>` | `REPL <size> <sha256: 64 lowercase hex>`, `ERRO File not found`, `ERRO Error reading file`, `ERRO Info: incorrect arguments` |
//! | `FRNG <name> <offset> <length>` | `REPL <the bytes>`, `ERRO File not found`, `ERRO Error reading file`, `ERRO Range: out of bounds`, `ERRO Range: incorrect arguments` |
//! | `QHST <return-pid> <key> <ttl> <qid> <visited>` | as `QUER`; `qid` is 16 lowercase hex digits, `visited` up to [`wire::MAX_HISTORY`] comma-separated peer ids |
//! | `FLST` | `REPL <count>`, then `count` × `REPL <name> <owner-pid> <size or ->`: the node's files and the names it learned from results |
//! | `CHAL` | `REPL <nonce: 32 lowercase hex>`, `ERRO Challenge: incorrect arguments` |
//! | `TRST <nonce> <mac: 64 lowercase hex> <OP> <args>` | `REPL Trust: accepted`, `ERRO Trust: not authorized`, `ERRO Trust: incorrect arguments` |
//! | `SRCH <key> <ttl> <wait-ms> <quiet-ms> <max>` | `REPL Search ACK: <key>`, then `REPL <name> <owner-pid>` per answer as it comes, then the close; `ERRO Search: busy`, `ERRO Search: incorrect arguments` |
//!
//! A trusted request's MAC covers [`wire::mac_input`]: the nonce's hex, one space, and the
//! operation's canonical text ([`TrustedOp`]'s `Display`), so the secret never
//! crosses the wire. The operations are `FIND <key>`, `SHAR <name>`,
//! `ADDP <pid> <host> <port>`, `DELP <pid>` and `RBLD <host> <port> <hops>`.

mod answers;
mod auth;
mod client;
mod core;
mod frame;
mod msg;
mod node;
mod peer;
mod seen;
mod shared;
mod store;

pub use answers::Answers;
pub use client::{Fetched, FilerClient};
pub use frame::{Frame, Kind};
pub use msg::reply::FileInfo;
pub use msg::{ParseError, QueryId, TrustedOp};
pub use node::{FilerNode, Hit, NodeConfig, NodeStats, MAX_SEARCHES_FOR_OTHERS};
pub use peer::{Insert, PeerEntry, PeerId};
pub use shared::{SharedFile, Skipped};
pub use store::{Destination, StoreError};

/// The btpeer/btfiler codec on its own, for tools and fuzzing: frames (parse, emit, a
/// streaming decoder) and requests (parse, and the frame a client sends).
pub mod wire {
    pub use super::frame::{
        Decoder, Event, Frame, Header, Kind, HEADER_LEN, MAX_CONTROL, MAX_PAYLOAD,
    };
    pub use super::msg::{
        mac_input, Mac, Nonce, ParseError, QueryId, Request, TrustedOp, MAX_HISTORY, MAX_HOPS,
        MAX_NAME_LEN, MAX_SEARCH_HITS, MAX_SEARCH_WAIT_MS, MAX_TTL,
    };
}

#[cfg(test)]
pub(crate) mod testing {
    //! What the filer's unit tests share.

    /// Runs `f` under a time limit, so that no await in a test can hang it.
    #[track_caller]
    pub(crate) fn within<F: std::future::Future>(
        f: F,
    ) -> impl std::future::Future<Output = F::Output> {
        let at = std::panic::Location::caller();
        async move {
            match tokio::time::timeout(std::time::Duration::from_secs(10), f).await {
                Ok(v) => v,
                Err(_) => panic!("timed out after 10 s waiting at {at}"),
            }
        }
    }
}

/// Errors of the file-sharing layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A frame is longer than allowed: one a peer claimed, or one to be sent.
    #[error("btpeer frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// The declared or requested payload length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The stream ended inside a frame: a short header or payload is no message.
    #[error("stream ended inside a btpeer frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes of the frame (header included) that arrived.
        got: u64,
        /// Bytes the frame needed (header included).
        expected: u64,
    },
    /// A peer id is malformed.
    #[error("bad peer id: {0}")]
    BadPeerId(&'static str),
    /// A host is malformed.
    #[error("bad host: {0}")]
    BadHost(&'static str),
    /// A request frame could not be parsed.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A reply frame has a type other than `REPL` or `ERRO`.
    #[error("unexpected reply type {}", .0.to_lowercase())]
    UnexpectedReply(Kind),
    /// A `REPL` frame does not hold what the request asked for.
    #[error("bad reply: {0}")]
    BadReply(&'static str),
    /// The peer answered `ERRO`; its text, lossily decoded.
    #[error("peer refused: {0}")]
    Refused(String),
    /// A peer operation did not finish in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The peer closed without any reply (an original node does this for types it does
    /// not know).
    #[error("peer closed without a reply")]
    NoReply,
    /// A download could not be written or verified.
    #[error(transparent)]
    Download(#[from] store::StoreError),
    /// A file of the shared folder could not be read while being served.
    #[error("local file: {0}")]
    Local(String),
    /// The shared folder could not be opened or walked.
    #[error("shared folder: {0}")]
    Folder(String),
    /// A reply could not be written to the peer.
    #[error("cannot reply: {0}")]
    Reply(String),
    /// The system gave no randomness (for a challenge).
    #[error("no randomness: {0}")]
    Random(String),
    /// The node cannot listen on its address.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The OS error's kind ([`std::io::ErrorKind::AddrInUse`] for a port taken).
        kind: std::io::ErrorKind,
        /// Why, in words.
        reason: String,
    },
    /// A read or write failed (for drivers built on the codec).
    #[error("btpeer {op} failed: {message}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error's kind.
        kind: std::io::ErrorKind,
        /// The OS error's message.
        message: String,
    },
}

impl Error {
    /// Wraps an OS error from a socket or file operation.
    pub fn io(op: &'static str, e: std::io::Error) -> Self {
        Error::Io {
            op,
            kind: e.kind(),
            message: e.to_string().to_lowercase(),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io("io", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_lowercase() {
        let errors = [
            Error::TooLarge { len: 5, max: 4 },
            Error::Truncated {
                got: 3,
                expected: 8,
            },
            Error::BadPeerId("empty"),
            Error::UnexpectedReply(Kind::NAME),
            Error::BadReply("not a number"),
            Error::io("read", std::io::Error::other("Boom")),
            Error::Listen {
                addr: "127.0.0.1:7000".parse().unwrap(),
                kind: std::io::ErrorKind::AddrInUse,
                reason: "address in use".into(),
            },
        ];
        for e in errors {
            let s = e.to_string();
            assert_eq!(s, s.to_lowercase(), "{s}");
        }
        assert_eq!(
            Error::UnexpectedReply(Kind::NAME).to_string(),
            "unexpected reply type name"
        );
    }
}
