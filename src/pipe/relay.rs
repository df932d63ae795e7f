//! UDP pipes whose datagrams travel through a relay (a TURN allocation), not a socket
//! of their own.
//!
//! The relay says how a datagram reaches a peer ([`DatagramLink`]: wrapped for the relay
//! server and written to its socket); the relay's driver hands in what peers send,
//! already unwrapped, through a bounded channel that the pipe's reader reads. Apart
//! from that the pipe is an ordinary UDP pipe: send, send_to, recv, subscribe, handlers
//! and link work unchanged.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::reader::Reader;
use super::shared::{Core, Io};
use super::udp::Sender;
use super::{Pipe, PipeConfig, Proto};

/// How a relay sends a datagram to a peer.
pub(crate) trait DatagramLink: Send + Sync + 'static {
    /// Sends `data` to `to` now if there is room: `Ok(true)` if sent, `Ok(false)` if
    /// the caller must wait with [`send_to`](Self::send_to). Allocates nothing.
    fn try_send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<bool>;

    /// Sends `data` to `to`, waiting for room.
    fn send_to<'a>(&'a self, data: &'a [u8], to: SocketAddr) -> BoxFuture<'a, io::Result<()>>;
}

/// What peers sent through the relay: each datagram and its sender.
pub(crate) type Inbound = mpsc::Receiver<(Bytes, SocketAddr)>;

impl Pipe {
    /// A UDP pipe on a relay: its local address is the relayed address `local`, its
    /// default peer `peer`; it sends through `link` and receives what `inbound` brings
    /// (it ends when `inbound` closes).
    pub(crate) fn relayed(
        link: Arc<dyn DatagramLink>,
        inbound: Inbound,
        local: SocketAddr,
        peer: SocketAddr,
        cfg: &PipeConfig,
    ) -> Pipe {
        let core = Core::new(
            Proto::Udp,
            local,
            Some(peer),
            Arc::new(cfg.clone()),
            Io::Udp(Sender::Relay(link)),
            None,
            Some(Reader::Relay(inbound)),
        );
        Pipe::from_core(core)
    }
}
