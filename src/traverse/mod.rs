//! Ways through NATs, each a building block of its own.
//!
//! | block | module | what it does |
//! |---|---|---|
//! | TURN | [`turn`] | relays through a TURN server (RFC 5766/8656 over UDP and TCP, RFC 6062 TCP allocations) |

pub mod turn;
