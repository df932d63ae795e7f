//! Ways through NATs, each a building block of its own.

pub mod punch;
