//! UDP pipes whose datagrams travel through a relay (a TURN allocation), not a socket
//! of their own.
//!
//! The relay says how a datagram reaches a peer ([`DatagramLink`]: wrapped for the relay
//! server and written to its socket); the relay's driver hands in what peers send,
//! already unwrapped, through a bounded channel that the pipe's reader reads. Apart
//! from that the pipe is an ordinary UDP pipe: send, send_to, recv, subscribe, handlers
//! and link work unchanged. A relayed listener is an ordinary UDP listener (`udp.rs`)
//! whose reader is such a channel: it splits the datagrams into per-peer pipes that
//! send through the relay too.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::reader::Reader;
use super::shared::{Core, Io};
use super::udp::{self, Sender};
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

    /// A UDP listener on a relay: its local address is the relayed address `local`; it
    /// reads what `inbound` brings (it ends when `inbound` closes), and it and the peer
    /// pipes it accepts send through `link`.
    pub(crate) fn relayed_listener(
        link: Arc<dyn DatagramLink>,
        inbound: Inbound,
        local: SocketAddr,
        cfg: &PipeConfig,
    ) -> Pipe {
        let core = udp::listener(
            local,
            Arc::new(cfg.clone()),
            Sender::Relay(link),
            Reader::Relay(inbound),
        );
        Pipe::from_core(core)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::pipe::{EndReason, Error};

    const T: Duration = Duration::from_secs(5);

    /// A relay that records what it is asked to send.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(Vec<u8>, SocketAddr)>>);

    impl DatagramLink for Recorder {
        fn try_send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<bool> {
            self.0.lock().unwrap().push((data.to_vec(), to));
            Ok(true)
        }
        fn send_to<'a>(&'a self, data: &'a [u8], to: SocketAddr) -> BoxFuture<'a, io::Result<()>> {
            Box::pin(async move { self.try_send_to(data, to).map(|_| ()) })
        }
    }

    #[tokio::test]
    async fn a_relayed_listener_splits_peers_sends_through_the_relay_and_ends_with_it() {
        let link = Arc::new(Recorder::default());
        let (tx, rx) = mpsc::channel(8);
        let relayed: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        let (one, two): (SocketAddr, SocketAddr) = (
            "192.0.2.1:1".parse().unwrap(),
            "[2001:db8::2]:2".parse().unwrap(),
        );
        let listener = Pipe::relayed_listener(link.clone(), rx, relayed, &PipeConfig::default());
        assert!(listener.is_listener());
        assert_eq!(listener.local_addr(), relayed);

        for (data, from) in [(&b"a1"[..], one), (b"b1", two), (b"a2", one)] {
            tx.send((Bytes::from_static(data), from)).await.unwrap();
        }
        let (a, from) = tokio::time::timeout(T, listener.accept_from())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((from, a.local_addr()), (one, relayed));
        let (b, from) = tokio::time::timeout(T, listener.accept_from())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, two);
        for (pipe, want) in [(&a, &b"a1"[..]), (&a, b"a2"), (&b, b"b1")] {
            let m = pipe.recv_timeout(T).await.unwrap();
            assert_eq!((&m.data[..], m.local), (want, relayed));
        }

        a.send(b"to one").await.unwrap();
        listener.send_to(b"to two", two).await.unwrap();
        let sent = link.0.lock().unwrap().clone();
        assert_eq!(sent, [(b"to one".to_vec(), one), (b"to two".to_vec(), two)]);

        // The relay goes: the listener and its peers end, and send no more.
        drop(tx);
        assert_eq!(
            tokio::time::timeout(T, a.ended()).await.unwrap(),
            EndReason::Closed
        );
        assert_eq!(
            tokio::time::timeout(T, listener.ended()).await.unwrap(),
            EndReason::Closed
        );
        assert!(matches!(b.send(b"late").await, Err(Error::Ended(_))));
        assert_eq!(link.0.lock().unwrap().len(), 2);
    }
}
