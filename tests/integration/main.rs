//! Integration tests, in one binary. Every await runs under a timeout; every
//! address is loopback: 127.0.0.1, ::1, and a dual-stack `[::]` listener
//! reached from both. Nothing waits by sleeping. The `lab` module is the
//! exception to loopback: it builds network namespaces with NAT routers and
//! coturn (see docs/nat-lab.md), and its tests skip when that is impossible.

mod cli;
mod coturn;
mod daemon;
mod faults;
mod fetch;
mod filer;
mod files_via;
mod identity;
mod iface;
mod lab;
mod load;
mod mesh;
mod mosquitto;
mod p2p;
mod pipe;
mod punch;
mod signal;
mod skips;
mod stun;
mod support;
mod tcppunch;
mod tunnel;
mod turn;
