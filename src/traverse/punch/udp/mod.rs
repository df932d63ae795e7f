//! UDP hole punching: a sans-IO [`Session`] and the tokio driver around it.
//!
//! [`punch`] (the initiator) and [`answer`] (the responder, given the offer that
//! [`is_offer`] recognised) agree a [`Plan`](super::Plan) over a
//! [`Signaller`](crate::signal::Signaller), punch from the caller's socket, and hand the
//! socket over to an ordinary [`Pipe`](crate::Pipe) whose default peer is the confirmed
//! path. Keepalives go on while the pipe lives; punch packets (they start with
//! [`MAGIC`]) never reach the pipe's flow or subscriptions.

mod driver;
mod session;

pub use driver::{answer, is_offer, punch, Config};
pub use session::{
    Counters, Ignored, Kind, Probe, Session, Step, Timing, Transmit, MAGIC, MAX_OBSERVED, PROBE_LEN,
};
