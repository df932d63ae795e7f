//! The errors of the TURN block.

use std::net::SocketAddr;
use std::time::Duration;

/// Errors of the TURN client: the server's answers, the wire, time limits and sockets.
///
/// Credentials never appear here: a refused login names the server and the user name,
/// never the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The server refused the credentials: a 401 came back to a request that carried
    /// them.
    #[error("turn server {server} refused the credentials of user {username:?}")]
    Unauthorized {
        /// The server.
        server: SocketAddr,
        /// The user name that was refused.
        username: String,
    },
    /// The server's realm is not the one the caller expected.
    #[error("turn server {server} names realm {got:?}, expected {expected:?}")]
    WrongRealm {
        /// The server.
        server: SocketAddr,
        /// The realm the caller expected.
        expected: String,
        /// The realm the server sent.
        got: String,
    },
    /// A 401 or 438 answer lacks its REALM or NONCE.
    #[error("turn server {server} sent a {code} without realm and nonce")]
    BadChallenge {
        /// The server.
        server: SocketAddr,
        /// 401 or 438.
        code: u16,
    },
    /// The server answered 438 (stale nonce) to a request already retried with a fresh
    /// nonce.
    #[error("turn server {server} answered stale nonce twice to one {op}")]
    StaleNonce {
        /// The server.
        server: SocketAddr,
        /// The request.
        op: &'static str,
    },
    /// An attribute is longer than the protocol allows or this client echoes.
    #[error(
        "turn server {server} sent attribute {attr:#06x} of {len} bytes, at most {max} accepted"
    )]
    Oversized {
        /// The server.
        server: SocketAddr,
        /// The attribute type.
        attr: u16,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The server refused a request with an error code other than 401 and 438.
    #[error("turn server {server} refused {op}: {code} {reason}")]
    Rejected {
        /// The server.
        server: SocketAddr,
        /// The request.
        op: &'static str,
        /// The error code.
        code: u16,
        /// The reason phrase.
        reason: String,
    },
    /// A success response lacks an attribute it must carry.
    #[error("turn server {server} answered {op} without {missing}")]
    Missing {
        /// The server.
        server: SocketAddr,
        /// The request.
        op: &'static str,
        /// The attribute.
        missing: &'static str,
    },
    /// No answer came within the time limit.
    #[error("turn server {server} did not answer {op} within {waited:?}")]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// The operation.
        op: &'static str,
        /// How long the client waited.
        waited: Duration,
    },
    /// A message is not valid TURN, STUN or ChannelData.
    #[error("bad turn message: {0}")]
    Malformed(String),
    /// The server broke the stream (bytes that frame no message, over TCP).
    #[error("turn server {server} broke the stream: {reason}")]
    Stream {
        /// The server.
        server: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// Too many requests, permissions or channels at once.
    #[error("turn client of {server} has too many {what} (at most {max})")]
    Full {
        /// The server.
        server: SocketAddr,
        /// Requests, permissions or channels.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// The allocation is not (or no longer) active.
    #[error("no active turn allocation on {server}")]
    NoAllocation {
        /// The server.
        server: SocketAddr,
    },
    /// The operation needs the other transport (RFC 6062 needs a TCP allocation).
    #[error("turn allocation on {server} cannot {op} over {transport}")]
    WrongTransport {
        /// The server.
        server: SocketAddr,
        /// The operation.
        op: &'static str,
        /// The allocation's transport.
        transport: &'static str,
    },
    /// A socket operation failed.
    #[error("turn {op} with {addr} failed: {message}")]
    Io {
        /// The address concerned (the server or a peer).
        addr: SocketAddr,
        /// What was being done.
        op: &'static str,
        /// The OS error's kind.
        kind: std::io::ErrorKind,
        /// The OS error's message.
        message: String,
    },
    /// The relay's driver has stopped (closed, or its allocation failed).
    #[error("turn relay on {server} has stopped")]
    Stopped {
        /// The server.
        server: SocketAddr,
    },
}

impl Error {
    /// Wraps an OS error from a socket operation with `addr`.
    pub(crate) fn io(addr: SocketAddr, op: &'static str, e: std::io::Error) -> Self {
        Error::Io {
            addr,
            op,
            kind: e.kind(),
            message: e.to_string().to_lowercase(),
        }
    }
}
