//! Hole punching: two peers behind NATs open a direct path at a moment agreed over
//! signalling. [`tcp`] is the TCP simultaneous open; [`predict`] the port prediction it
//! uses.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub mod predict;
pub mod tcp;

/// What the two sides agreed for one punch: where to send, when to start, and the round
/// trip measured between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The other side's candidate addresses, best first.
    pub remote: Vec<SocketAddr>,
    /// The moment to start.
    pub start: Instant,
    /// The round trip measured over signalling.
    pub rtt: Duration,
    /// This side's role.
    pub role: Role,
}

/// A side's role in a punch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that sent the offer.
    Initiator,
    /// The side that answered it.
    Responder,
}
