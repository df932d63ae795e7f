//! A long-lived peer mesh: connections to a set of peers, each known by a node id, with
//! events and broadcast.
//!
//! ```no_run
//! use std::time::Duration;
//! use futures::StreamExt;
//! use p2pipe::mesh::{Event, Mesh, Outgoing};
//! # async fn demo() -> Result<(), p2pipe::mesh::Error> {
//! let (alice, mut events) = Mesh::builder("alice")
//!     .listen("127.0.0.1:0".parse().unwrap())
//!     .start()
//!     .await?;
//! let (bob, _) = Mesh::builder("bob").start().await?;
//! bob.connect(alice.local_addrs()[0]).await?;
//! bob.send_to("alice", "hello").await?;
//! bob.broadcast(Outgoing::json(&["any", "serde", "value"])?.compressed(), &[]).await;
//! while let Some(ev) = events.next().await {
//!     if let Event::Message(m) = ev {
//!         println!("{} says {:?}", m.from, m.data);
//!     }
//! }
//! alice.stop(Duration::from_secs(2)).await;
//! # Ok(()) }
//! ```
//!
//! A [`Mesh`] listens through a [`Daemon`](crate::Daemon) and connects out with
//! [`Pipe`](crate::Pipe)s. Every connection opens with a handshake under a timeout (a
//! silent peer is dropped when it passes and never holds anyone else up), in which both
//! sides give their ids and, when the mesh signs, prove their ed25519 keys. Inbound and
//! outbound connections have limits of their own, and a second connection to an id that
//! is already connected is refused (when two nodes connect to each other at once, both
//! keep the one opened by the smaller id).
//!
//! Messages are length-framed, so any byte and the empty message go through as they are.
//! [`Outgoing::json`] carries serde values and [`Outgoing::compressed`] zlib-compresses;
//! a receiver inflates at most [`MeshBuilder::max_decompressed`] bytes and drops, and
//! counts, anything larger. With a node [`Identity`](crate::identity::Identity)
//! ([`Mesh::with_identity`], whose mesh id is the node id, or [`MeshBuilder::identity`]),
//! every message is signed, and checked against the key bound to the sender's id at the
//! handshake; one that does not verify is dropped and counted. A peer whose id is a node
//! id must prove the key that id is derived from.
//!
//! Events come as a [`Stream`](futures::Stream) ([`Events`]) and, if set, to handlers
//! ([`MeshBuilder::on_message`] and the others), in the same order, with the same data.
//!
//! The protocol logic is sans-IO, in [`wire`] (the frames), [`session`] (the
//! handshake, signatures, compression) and a private `admit` (which of two connections
//! to one peer survives); `docs/mesh.md` describes the protocol.

mod admit;
mod node;
pub mod session;
mod via;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;

pub use node::{Backoff, Broadcast, Events, Mesh, MeshBuilder, MeshStats, StopReport};
pub use session::HandshakeError;
pub use wire::RefuseCode;

/// Errors from the mesh layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be started.
    #[error(transparent)]
    Listen(#[from] crate::daemon::Error),
    /// No P2P path reached the peer ([`Mesh::connect_via`]); the error carries the
    /// connect's report.
    #[error(transparent)]
    P2p(#[from] crate::p2p::Error),
    /// The tunnel over a P2P path failed.
    #[error(transparent)]
    Tunnel(#[from] crate::p2p::TunnelError),
    /// The node id is empty, over 64 bytes, or holds whitespace or control characters.
    #[error("invalid node id {0:?}")]
    BadId(String),
    /// Connecting failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: crate::pipe::Error,
    },
    /// The handshake did not finish in time.
    #[error("handshake with {addr} timed out")]
    HandshakeTimeout {
        /// The peer's address.
        addr: SocketAddr,
    },
    /// The handshake failed, or the peer refused.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: HandshakeError,
    },
    /// This node turned the peer away after the handshake (a duplicate, a key that does
    /// not match its id).
    #[error("connection to {peer} not taken: {code}")]
    NotTaken {
        /// The peer's id.
        peer: String,
        /// Why.
        code: RefuseCode,
    },
    /// The outbound limit is reached.
    #[error("outbound connection limit of {0} reached")]
    OutboundLimit(usize),
    /// No connected peer has this id.
    #[error("no connected peer {0:?}")]
    UnknownPeer(String),
    /// A message is over the size limit.
    #[error("message of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Sending did not finish within the send timeout; the connection is closed.
    #[error("send to {peer} timed out")]
    SendTimeout {
        /// The peer's id.
        peer: String,
    },
    /// Sending failed; the connection is closed.
    #[error("send to {peer} failed: {source}")]
    Send {
        /// The peer's id.
        peer: String,
        /// Why.
        #[source]
        source: crate::pipe::Error,
    },
    /// A value could not be encoded as JSON.
    #[error("cannot encode json: {0}")]
    Json(#[from] serde_json::Error),
    /// The mesh is stopping.
    #[error("the mesh is stopping")]
    Stopping,
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The peer connected to this node.
    Inbound,
    /// This node connected to the peer.
    Outbound,
}

/// A connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its node id.
    pub id: Arc<str>,
    /// Its address on this connection.
    pub addr: SocketAddr,
    /// Which side opened the connection.
    pub direction: Direction,
    /// The port it says it listens on (0: none); with `addr`'s IP, where to reach it.
    pub listen_port: u16,
    /// The ed25519 key bound to its id, when the mesh signs.
    pub key: Option<VerifyingKey>,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer closed or reset the connection.
    Closed,
    /// The peer said goodbye, with this reason.
    Bye(String),
    /// The stream broke (a bad frame, an I/O error, a send that failed).
    Error(String),
    /// The peer answered no keepalive.
    Keepalive,
    /// A connection to the same id was kept in its place.
    Replaced,
    /// This node disconnected it ([`Mesh::disconnect`]).
    Local,
    /// This node is stopping.
    Stopping,
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisconnectReason::Closed => f.write_str("closed by peer"),
            DisconnectReason::Bye(r) if r.is_empty() => f.write_str("peer left"),
            DisconnectReason::Bye(r) => write!(f, "peer left: {r}"),
            DisconnectReason::Error(e) => write!(f, "error: {e}"),
            DisconnectReason::Keepalive => f.write_str("no keepalive answer"),
            DisconnectReason::Replaced => f.write_str("replaced by another connection"),
            DisconnectReason::Local => f.write_str("disconnected"),
            DisconnectReason::Stopping => f.write_str("stopping"),
        }
    }
}

/// A connection that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnected {
    /// The peer it was with.
    pub peer: Peer,
    /// Why it ended.
    pub reason: DisconnectReason,
}

/// A message from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshMessage {
    /// The sender's id.
    pub from: Arc<str>,
    /// The payload (inflated, if it came compressed).
    pub data: Bytes,
    /// Whether it came compressed.
    pub compressed: bool,
    /// Whether its signature was verified (always, on a signing mesh).
    pub signed: bool,
}

impl MeshMessage {
    /// Parses the payload as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }
}

/// Something that happened on the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A peer connected to this node and finished the handshake.
    InboundConnected(Peer),
    /// This node connected to a peer and finished the handshake.
    OutboundConnected(Peer),
    /// An inbound connection ended.
    InboundDisconnected(Disconnected),
    /// An outbound connection ended.
    OutboundDisconnected(Disconnected),
    /// A message arrived.
    Message(MeshMessage),
    /// [`Mesh::stop`] was called: the disconnections follow, then the stream ends.
    Stopping,
}

/// A message to send: bytes, optionally compressed. Build one from bytes or strings, or
/// with [`Outgoing::json`].
#[derive(Debug, Clone)]
pub struct Outgoing {
    data: Bytes,
    zlib: bool,
    /// The size before compression.
    len: usize,
}

impl Outgoing {
    /// The bytes as they are.
    pub fn new(data: impl Into<Bytes>) -> Outgoing {
        let data = data.into();
        Outgoing {
            len: data.len(),
            data,
            zlib: false,
        }
    }

    /// A value as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Outgoing, Error> {
        Ok(Outgoing::new(serde_json::to_vec(value)?))
    }

    /// zlib-compresses the message now, once, however many peers it goes to.
    pub fn compressed(self) -> Outgoing {
        if self.zlib {
            return self;
        }
        Outgoing {
            data: session::compress(&self.data).into(),
            zlib: true,
            len: self.len,
        }
    }

    /// The size of the message before compression.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl From<Bytes> for Outgoing {
    fn from(b: Bytes) -> Self {
        Outgoing::new(b)
    }
}
impl From<Vec<u8>> for Outgoing {
    fn from(b: Vec<u8>) -> Self {
        Outgoing::new(b)
    }
}
impl From<&[u8]> for Outgoing {
    fn from(b: &[u8]) -> Self {
        Outgoing::new(Bytes::copy_from_slice(b))
    }
}
impl<const N: usize> From<&[u8; N]> for Outgoing {
    fn from(b: &[u8; N]) -> Self {
        Outgoing::new(Bytes::copy_from_slice(b))
    }
}
impl From<&str> for Outgoing {
    fn from(s: &str) -> Self {
        Outgoing::new(Bytes::copy_from_slice(s.as_bytes()))
    }
}
impl From<String> for Outgoing {
    fn from(s: String) -> Self {
        Outgoing::new(s)
    }
}
