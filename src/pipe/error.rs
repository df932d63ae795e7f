//! The error type of the pipe layer.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::EndReason;

/// Errors from pipes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target could not be parsed or resolved.
    #[error(transparent)]
    Address(#[from] crate::error::Error),
    /// No address of the target accepted the connection.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// The target as given.
        target: String,
        /// The last failure.
        #[source]
        source: io::Error,
    },
    /// The local address could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Connecting took longer than allowed.
    #[error("connecting to {target} timed out after {after:?}")]
    ConnectTimeout {
        /// The target as given.
        target: String,
        /// The time limit.
        after: Duration,
    },
    /// Nothing arrived in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The pipe has ended; nothing more will arrive or can be sent.
    #[error("pipe ended: {0}")]
    Ended(EndReason),
    /// A frame is larger than the limit: one the peer sent or claimed, or
    /// one this side was asked to send.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The declared or buffered length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes received of the frame.
        have: usize,
        /// Bytes the frame needed.
        want: usize,
    },
    /// The bytes are not valid for the framing (received or to be sent).
    #[error("invalid frame: {0}")]
    BadFrame(String),
    /// The pattern is not a valid regular expression.
    #[error("invalid pattern: {0}")]
    Pattern(#[from] regex::Error),
    /// `send` on a listener, which has no single peer.
    #[error("a listener has no peer: use send_to")]
    NoPeer,
    /// `send_to` an address that this pipe cannot reach.
    #[error("no connection to {0} on this pipe")]
    UnknownPeer(SocketAddr),
    /// The operation needs the other kind of pipe.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The pipe's messages already go to a handler, a link or a merged flow.
    #[error("this pipe's messages already go to a handler")]
    HandlerAttached,
    /// Any other I/O failure.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A result with the pipe layer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
