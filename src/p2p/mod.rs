//! Peers behind NATs: a [`Node`] that reaches any peer whose signed address it holds,
//! whatever NATs lie between them, and is reached the same way. This layer turns the
//! ways through NATs (`traverse`), the messages before a connection (`signal`) and the
//! node key (`identity`) into pipes between two nodes.
//!
//! ```no_run
//! use p2pipe::identity::Identity;
//! use p2pipe::p2p::Node;
//! use p2pipe::Proto;
//! # async fn demo(peer: p2pipe::identity::PeerRecord) -> Result<(), p2pipe::p2p::Error> {
//! let node = Node::builder(Identity::generate())
//!     .signal("mqtt://203.0.113.20:1883")
//!     .stun("203.0.113.10:3478".parse().unwrap())
//!     .start()
//!     .await?;
//! println!("reach me at {}", node.record().to_text());
//! let conn = node.connect(&peer, Proto::Udp).await?;
//! println!("{}", conn.report);
//! conn.pipe.send(b"hello").await.ok();
//! node.stop(std::time::Duration::from_secs(2)).await;
//! # Ok(()) }
//! ```
//!
//! # Connecting
//!
//! A connect races the strategies ([`Strategy`]): direct, reverse, port mapping, hole
//! punching and the relay. The first path authenticated by the peer's key wins; the
//! connecting node commits it, and only a committed path reaches the other node's
//! [`Node::accept`]. Each connect returns a [`Report`] of what each strategy did.
//! `docs/connect.md` describes it all.
//!
//! # Path security
//!
//! Every path a connect produces (a direct TCP connection or UDP socket, a punched one,
//! a relay through a TURN server) is a raw [`Pipe`](crate::Pipe). Before it is handed on
//! it is authenticated both ways by the node keys and, by default, encrypted:
//!
//! - The handshake is Noise XX (`Noise_XX_25519_ChaChaPoly_BLAKE2s`) whose static keys
//!   are the X25519 forms of the two node keys, so a node proves its ed25519 key by
//!   completing it; each side also sends its ed25519 key, which must be the one the
//!   Noise static key is the Montgomery form of. The prologue binds the version
//!   (`p2pipe path v1`) and the protocol. A path that reaches this node itself (a
//!   peer's private address that is also one of ours) or another node than the one
//!   expected is refused.
//! - The data phase seals every packet with ChaCha20-Poly1305 under the keys of that
//!   handshake, with an explicit 8-byte counter as the nonce and message sequence: a
//!   sliding window refuses replays on UDP, and on TCP the counters must follow each
//!   other, so a packet cut out of the stream is noticed. Large messages travel in
//!   fragments on TCP; on UDP a message is one packet.
//! - A secure path can move to another raw path with the same peer (a relay replaced by
//!   a direct path) without the application noticing.
//!
//! # Byte streams
//!
//! A [`Tunnel`] carries many TCP connections over one TCP-proto pipe of a node, as
//! `ssh -L` does: an entrance listening on 127.0.0.1, an exit connecting to one target
//! (see [`tunnel`]). `p2pipe share` and `p2pipe fetch` run the file protocol through it.
//!
//! `handshake` and `secure` are sans-IO cores; `path` is their tokio driver, whose
//! `initiate`, `respond` and `migrate` the node calls.

mod admit;
mod come;
mod commit;
mod connect;
mod direct;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
mod gather;
mod handshake;
mod inbound;
mod node;
mod path;
mod punch;
mod relay;
mod report;
mod request;
mod secure;
pub mod tunnel;
mod upgrade;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::identity::NodeId;
use crate::pipe::EndReason;

pub use connect::{ConnectOptions, Connection};
pub use gather::{interface_entries, offerable, MAX_ADDRS, MAX_INTERFACES};
pub use node::{Arrival, Builder, Node, StopReport};
pub use report::{Attempt, Outcome, Report, Strategy};
pub use tunnel::{Tunnel, TunnelError, TunnelOptions};

/// Errors of the p2p layer. Messages name nodes and addresses, never key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node could not start: no address to listen on, a record that cannot be
    /// signed.
    #[error("{0}")]
    Setup(String),
    /// Signalling failed (no broker subscribed at start).
    #[error(transparent)]
    Signal(#[from] crate::signal::Error),
    /// A listener could not be bound.
    #[error(transparent)]
    Daemon(#[from] crate::daemon::Error),
    /// No strategy made a path within the connect's limit; the report says why, per
    /// strategy.
    #[error("{0}")]
    Unreachable(Box<Report>),
    /// The address is this node's own.
    #[error("that address is this node's own")]
    NotAPeer,
    /// The peer's address record has expired.
    #[error("the address of {peer} has expired: ask it for a fresh one")]
    Expired {
        /// The peer.
        peer: NodeId,
    },
    /// A connect request or answer that does not parse.
    #[error("malformed connect message: {0}")]
    Malformed(&'static str),
    /// A pipe under the path failed.
    #[error(transparent)]
    Pipe(#[from] crate::pipe::Error),
    /// The path reached this node itself: a peer's private address that is also one of
    /// this host's, or a socket that hears its own packets.
    #[error(
        "the path reached this node itself (an address of the peer's that is also this host's?)"
    )]
    ReachedSelf,
    /// The path reached another node than the one expected.
    #[error("expected node {expected}, reached node {reached}")]
    WrongPeer {
        /// The node asked for.
        expected: NodeId,
        /// The node that answered.
        reached: NodeId,
    },
    /// A handshake message that is not a valid step: malformed, not authentic, out of
    /// turn, or with a key that does not match its Noise key.
    #[error("path handshake refused: {0}")]
    Refused(&'static str),
    /// A packet of the data phase that cannot be taken (on TCP this ends the path).
    #[error("bad packet on a secure path: {0}")]
    BadPacket(&'static str),
    /// No handshake within the limit.
    #[error("no path handshake with {} at {addr} within {limit:?}", Who(.expected))]
    Timeout {
        /// The node expected, if one is.
        expected: Option<NodeId>,
        /// The raw path's peer address.
        addr: SocketAddr,
        /// The limit.
        limit: Duration,
    },
    /// A message over the limit of the path.
    #[error("message of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A raw pipe that cannot carry a path.
    #[error("raw pipe unfit for a path: {0}")]
    Unfit(&'static str),
    /// The raw path ended before the handshake did.
    #[error("the path ended during the handshake: {0}")]
    Ended(EndReason),
    /// The session's counter reached its end: connect again.
    #[error("the secure path used up its counter: connect again")]
    Exhausted,
    /// Moving a secure path to another raw path failed; the old path is kept.
    #[error("path migration failed: {0}")]
    Migrate(&'static str),
    /// The cryptography failed (the system's random source).
    #[error("path cryptography failed: {0}")]
    Crypto(&'static str),
}

/// "node X", or "any node".
struct Who<'a>(&'a Option<NodeId>);

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "node {id}"),
            None => f.write_str("any node"),
        }
    }
}
