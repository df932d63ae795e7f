//! Ways through NATs, each a building block of its own (docs/traversal.md):
//!
//! - [`punch`]: UDP and TCP hole punching at a moment agreed over signalling, with port
//!   prediction;
//! - [`mapping`]: port mappings asked of the router (PCP, NAT-PMP, UPnP IGD);
//! - [`turn`]: relays through a TURN server (RFC 8656, RFC 6062 for TCP).
//!
//! Each block decides from the two sides' NAT behaviour whether it can work at all, and
//! refuses at once with a reason when it cannot. Each protocol has a sans-IO core (bytes
//! and `now` in, actions out) and a thin tokio driver.
//!
//! This layer sits above `signal`, `identity` and the layers below them, and imports
//! nothing above itself.

pub mod mapping;
pub mod punch;
pub mod turn;
