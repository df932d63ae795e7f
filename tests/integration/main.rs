//! Integration tests, in one binary. Every await runs under a timeout; every
//! address is loopback: 127.0.0.1, ::1, and a dual-stack `[::]` listener
//! reached from both. Nothing waits by sleeping.

mod cli;
mod daemon;
mod iface;
mod pipe;
mod stun;
mod support;
