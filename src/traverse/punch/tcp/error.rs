//! The errors of TCP hole punching.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::{TcpRefusal, Tried};

/// Errors of TCP hole punching.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The punching port could not be bound (shared) or listened on.
    #[error("cannot listen on the shared tcp port {local}: {source}")]
    Bind {
        /// The address asked for.
        local: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// STUN over TCP from the punching port failed.
    #[error("stun over tcp from {local} to {server} failed: {source}")]
    Stun {
        /// The punching port.
        local: SocketAddr,
        /// The STUN server.
        server: SocketAddr,
        /// What failed.
        source: crate::stun::Error,
    },
    /// The STUN server's answer held no mapped address.
    #[error("stun server {server} gave no mapped address for {local}")]
    NoMapping {
        /// The punching port.
        local: SocketAddr,
        /// The STUN server.
        server: SocketAddr,
    },
    /// The two sides' NAT behaviour rules the punch out; nothing was sent.
    #[error("tcp punch from {local} refused: {refusal}")]
    Refused {
        /// The punching port.
        local: SocketAddr,
        /// Why.
        refusal: TcpRefusal,
    },
    /// The plan has no candidate of the punching port's address family.
    #[error("tcp punch from {local}: no candidate of its address family in the plan")]
    NoCandidates {
        /// The punching port.
        local: SocketAddr,
    },
    /// No candidate gave a connection with a valid hello in time.
    #[error("tcp punch from {local} gave no connection within {limit:?}; tried {tried}")]
    TimedOut {
        /// The punching port.
        local: SocketAddr,
        /// The time limit.
        limit: Duration,
        /// Every candidate and how its last attempt ended.
        tried: Tried,
    },
    /// The rendezvous over signalling failed or refused (see
    /// [`punch::Error`](crate::traverse::punch::Error)).
    #[error(transparent)]
    Rendezvous(#[from] crate::traverse::punch::Error),
    /// Making the pipe failed.
    #[error(transparent)]
    Pipe(#[from] crate::pipe::Error),
    /// A hello that is not one (wire form).
    #[error("malformed tcp punch hello: {0}")]
    MalformedHello(&'static str),
}
