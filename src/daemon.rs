//! The Daemon: one handler served on many addresses, ports and protocols.
