//! p2pipe: networking that knows which network it is on.
//!
//! The crate is built in layers, each importing only the layers below it:
//!
//! | layer | module | what it does |
//! |---|---|---|
//! | filer | [`filer`] | btfiler-compatible file sharing: a sans-IO protocol core (btpeer frames, messages, peer table) and the node and client around it |
//! | mesh | [`mesh`] | a long-lived peer mesh: id handshake, events, broadcast, signed and compressed messages |
//! | p2p | [`p2p`] | peers behind NATs: a `Node` whose connect races direct, reverse, port-mapped, punched and relayed paths, each authenticated by the node keys (Noise XX) and encrypted, with a report of what each strategy did; relayed paths move to punched ones without loss |
//! | traverse | [`traverse`] | ways through NATs: port mappings asked of the router (PCP, NAT-PMP, UPnP IGD) |
//! | signal | [`signal`] | messages between nodes before any connection exists: sealed envelopes (the sans-IO core: replay and age checks, request/response) carried by transports (MQTT brokers, several at once) |
//! | identity | [`identity`] | the node's ed25519 key and key file, the node id, the signed peer address record |
//! | daemon | [`daemon`] | one handler served on many addresses, ports and protocols |
//! | pipe | [`pipe`] | one [`Pipe`] type for TCP and UDP, IPv4 and IPv6, client and server |
//! | nat | [`nat`] | NAT behaviour: the sans-IO RFC 5780 and RFC 3489 classifier, probes, port allocation |
//! | stun | [`stun`] | sans-IO STUN client transactions (RFC 5389, 5780, 3489) |
//! | iface | [`iface`] | the machine's interfaces, their addresses, the default interface per family, routes to external addresses |
//! | base | [`addr`], [`dns`], [`error`] | target parsing, address classes, name resolution |
//!
//! See `docs/architecture.md` for the whole picture.
#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

pub mod addr;
pub mod daemon;
pub mod dns;
pub mod error;
pub mod filer;
pub mod identity;
pub mod iface;
pub mod mesh;
pub mod nat;
pub mod p2p;
pub mod pipe;
pub mod signal;
pub mod stun;
pub mod traverse;

/// Internals exposed for the fuzz targets in `fuzz/`, behind the `fuzzing` feature.
/// Not part of the API: no stability promise, and nothing else should use it.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::p2p::fuzz as p2p;
    pub use crate::pipe::subscribe::fuzz::SubscriptionSet;
    pub use crate::traverse::turn::fuzz as turn;
}

pub use addr::{Af, Target};
pub use daemon::Daemon;
pub use iface::Interface;
pub use pipe::{Framing, Message, Pipe, PipeConfig, Proto, Subscription};

/// The examples in README.md, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The examples in docs/architecture.md, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/architecture.md")]
pub struct ArchitectureDoctests;

/// The examples in docs/mesh.md, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/mesh.md")]
pub struct MeshDocDoctests;

/// The examples in docs/filer.md, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/filer.md")]
pub struct FilerDocDoctests;

/// The examples in docs/traversal.md, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/traversal.md")]
pub struct TraversalDoctests;

/// The examples in docs/connect.md, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/connect.md")]
pub struct ConnectDocDoctests;

/// The examples in docs/files-across-nats.md, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/files-across-nats.md")]
pub struct FilesAcrossNatsDoctests;

/// The examples in docs/p2p.md, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/p2p.md")]
pub struct P2pDocDoctests;
