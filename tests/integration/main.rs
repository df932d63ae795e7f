//! Integration tests, in one binary. Every await runs under a timeout; every
//! address is loopback.

mod cli;
mod daemon;
mod util;
