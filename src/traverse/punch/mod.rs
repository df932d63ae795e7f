//! Hole punching: two nodes behind NATs open a direct path to each other.
//!
//! - [`feasibility`]: whether UDP punching can work between two NATs, decided from their
//!   behaviour ([`udp_feasibility`]), before anything is sent.
//! - [`rendezvous`]: the sans-IO agreement over signalling (offer, answer, ready) that
//!   ends in a [`Plan`], or in a refusal at once.
//! - [`udp`]: the UDP punch itself, sans-IO ([`udp::Session`]) and driven
//!   ([`udp::punch`], [`udp::answer`]), ending as an ordinary [`Pipe`](crate::Pipe).
//! - [`tcp`]: the TCP simultaneous open from one shared local port, with its own
//!   feasibility table ([`tcp::tcp_feasibility`]), driven over the same rendezvous
//!   ([`tcp::connect`], [`tcp::answer`]) and ending as an ordinary [`Pipe`](crate::Pipe);
//!   [`predict`]: the port prediction it uses.
//!
//! See `docs/traversal.md`.

mod error;
mod exchange;
pub mod feasibility;
pub mod predict;
pub mod rendezvous;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use error::Error;
pub use feasibility::{udp_feasibility, Approach, NatSummary, Refusal, Side};
pub use rendezvous::{Agreement, Candidates, SessionKey, Way, MAX_CANDIDATES};

/// Which end of a rendezvous a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// It sent the offer.
    Initiator,
    /// It answered the offer.
    Responder,
}

/// What the two sides agreed over signalling: where to send, and from when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The peer's candidates, best first.
    pub remote: Vec<SocketAddr>,
    /// The moment to start, on this node's monotonic clock.
    pub start: Instant,
    /// The round trip over signalling.
    pub rtt: Duration,
    /// This node's end.
    pub role: Role,
}
