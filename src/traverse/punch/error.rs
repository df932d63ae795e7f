//! The error type of UDP hole punching and its rendezvous.
//!
//! No variant carries the session key: probes are named by their peer address.

use std::net::SocketAddr;
use std::time::Duration;

use super::Refusal;
use crate::identity::NodeId;

/// Errors of [`punch`](super): parsing rendezvous messages and probes, refusals, and the
/// driver's I/O.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes that are not a punch message.
    #[error("not a punch message: {0}")]
    Malformed(&'static str),
    /// More candidates than a message may carry.
    #[error("{len} candidates exceed the limit of {max}")]
    TooManyCandidates {
        /// How many were given.
        len: usize,
        /// [`MAX_CANDIDATES`](super::MAX_CANDIDATES).
        max: usize,
    },
    /// The answer or ready does not belong to this rendezvous (another nonce).
    #[error("the message from {peer} answers another rendezvous")]
    WrongNonce {
        /// The peer.
        peer: NodeId,
    },
    /// The theory says punching cannot work between the two sides.
    #[error("udp hole punching to {peer} refused: {refusal}")]
    Refused {
        /// The peer.
        peer: NodeId,
        /// Why.
        refusal: Refusal,
    },
    /// The theory says TCP punching cannot work between the two sides.
    #[error("tcp hole punching to {peer} refused: {refusal}")]
    TcpRefused {
        /// The peer.
        peer: NodeId,
        /// Why.
        refusal: crate::traverse::punch::tcp::TcpRefusal,
    },
    /// The peer has no candidate this socket's family can reach.
    #[error("{peer} offered no candidate reachable from {local}")]
    NoCandidates {
        /// The peer.
        peer: NodeId,
        /// The punching socket's address.
        local: SocketAddr,
    },
    /// No path was confirmed within the time limit.
    #[error(
        "no udp path to {peer} confirmed from {local} after {after:?} (candidates {candidates:?})"
    )]
    TimedOut {
        /// The peer.
        peer: NodeId,
        /// The punching socket's address.
        local: SocketAddr,
        /// The candidates probed.
        candidates: Vec<SocketAddr>,
        /// The time limit.
        after: Duration,
    },
    /// The signalling exchange failed.
    #[error("rendezvous with {peer}: {source}")]
    Signal {
        /// The peer.
        peer: NodeId,
        /// What failed.
        source: crate::signal::Error,
    },
    /// The STUN server(s) gave no mapped address for the punching socket.
    #[error("no mapped address for {local}: {source}")]
    Stun {
        /// The punching socket's address.
        local: SocketAddr,
        /// What failed.
        source: crate::stun::Error,
    },
    /// A socket operation failed.
    #[error("{op} on {local}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The punching socket's address (unspecified if unknown).
        local: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Making the pipe failed.
    #[error(transparent)]
    Pipe(#[from] crate::pipe::Error),
}
