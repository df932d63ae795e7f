//! Ways through NATs, each a building block of its own: hole punching ([`punch`]) and
//! TURN relays ([`turn`]).
//!
//! This layer sits above `signal`, `identity` and the layers below them, and imports
//! nothing above itself.

pub mod punch;
pub mod turn;
