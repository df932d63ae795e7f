//! Ways through NATs, each a building block of its own: port mappings asked of the
//! router ([`mapping`]).
//!
//! This layer sits above `signal`, `identity` and the layers below them, and imports
//! nothing above itself.

pub mod mapping;
