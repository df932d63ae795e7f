//! Message pipes whose I/O is a link and a channel, not a socket of their own: UDP
//! pipes whose datagrams travel through a relay (a TURN allocation), and pipes of
//! either protocol that another layer builds on top of a pipe (the p2p layer's secure
//! paths, which seal what is sent and open what arrives).
//!
//! The link says how a message reaches a peer ([`DatagramLink`]: wrapped for the relay
//! server and written to its socket, or sealed and sent down the raw path); the link's
//! driver hands in what peers send, already unwrapped, through a bounded channel that
//! the pipe's reader reads. Apart from that the pipe is an ordinary pipe: send,
//! send_to, recv, subscribe, handlers and link work unchanged. A relayed listener is an
//! ordinary UDP listener (`udp.rs`) whose reader is such a channel: it splits the
//! datagrams into per-peer pipes that send through the relay too.
//!
//! The [`Proto`] of such a pipe is a label with one consequence: a [`Proto::Tcp`] pipe's
//! flow blocks when full (see `Core::new`), so a reader that stops reading stops the
//! pipe's reader, which stops taking from the channel, whose driver then waits: the
//! back-pressure reaches the feeding task. A [`Proto::Udp`] pipe drops and counts.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::reader::Reader;
use super::shared::{Core, Io};
use super::udp::{self, Sender};
use super::{EndReason, Pipe, PipeConfig, Proto};

/// How a relay sends a datagram to a peer.
pub(crate) trait DatagramLink: Send + Sync + 'static {
    /// Sends `data` to `to` now if there is room: `Ok(true)` if sent, `Ok(false)` if
    /// the caller must wait with [`send_to`](Self::send_to). Allocates nothing.
    fn try_send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<bool>;

    /// Sends `data` to `to`, waiting for room.
    fn send_to<'a>(&'a self, data: &'a [u8], to: SocketAddr) -> BoxFuture<'a, io::Result<()>>;

    /// Why the link ended, once it has: the pipe reports it when its channel closes
    /// (`None`: [`EndReason::Closed`]).
    fn end_reason(&self) -> Option<EndReason> {
        None
    }
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
        Pipe::over_link(Proto::Udp, link, inbound, local, peer, cfg)
    }

    /// A message pipe labelled `proto` whose I/O is `link` and `inbound`: it sends
    /// through `link` (to `peer` unless `send_to` says otherwise) and receives what
    /// `inbound` brings, each message as one message (the config's framing plays no
    /// part). It ends when `inbound` closes, with the link's
    /// [`end_reason`](DatagramLink::end_reason). `cfg.max_frame` bounds what is sent
    /// (and, for [`Proto::Udp`], the largest datagram too). With [`Proto::Tcp`] its
    /// flow blocks when full rather than dropping, as a TCP pipe's does.
    pub(crate) fn over_link(
        proto: Proto,
        link: Arc<dyn DatagramLink>,
        inbound: Inbound,
        local: SocketAddr,
        peer: SocketAddr,
        cfg: &PipeConfig,
    ) -> Pipe {
        let core = Core::new(
            proto,
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

    /// A link whose sends go nowhere, ending with `why` when its channel closes.
    struct Sink(Option<EndReason>);

    impl DatagramLink for Sink {
        fn try_send_to(&self, _: &[u8], _: SocketAddr) -> io::Result<bool> {
            Ok(true)
        }
        fn send_to<'a>(&'a self, _: &'a [u8], _: SocketAddr) -> BoxFuture<'a, io::Result<()>> {
            Box::pin(async { Ok(()) })
        }
        fn end_reason(&self) -> Option<EndReason> {
            self.0.clone()
        }
    }

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "127.0.0.1:1000".parse().unwrap(),
            "[::1]:2000".parse().unwrap(),
        )
    }

    /// How many of `n` messages the channel takes before its sender waits (up to 200 ms
    /// for each), with a background reader feeding a flow of 2.
    async fn taken_before_waiting(proto: Proto, n: usize) -> (Pipe, usize) {
        let (tx, rx) = mpsc::channel(2);
        let (local, peer) = addrs();
        let cfg = PipeConfig::default().queue_capacity(2);
        let pipe = Pipe::over_link(proto, Arc::new(Sink(None)), rx, local, peer, &cfg);
        pipe.on_end(|_| async {}); // a background reader feeds the flow
        let mut taken = 0;
        for i in 0..n {
            let m = (Bytes::from(vec![i as u8]), peer);
            match tokio::time::timeout(Duration::from_millis(200), tx.send(m)).await {
                Ok(r) => r.unwrap(),
                Err(_) => break,
            }
            taken += 1;
        }
        (pipe, taken)
    }

    #[tokio::test]
    async fn a_tcp_pipe_over_a_link_pushes_back_on_its_feeder_and_loses_nothing() {
        let (pipe, taken) = taken_before_waiting(Proto::Tcp, 64).await;
        // The flow (2), the message the reader holds (1), the channel (2).
        assert!(taken < 64, "the feeder never waited");
        assert!(taken <= 5, "took {taken}");
        for i in 0..taken {
            let m = pipe.recv_timeout(T).await.unwrap();
            assert_eq!((&m.data[..], m.proto), (&[i as u8][..], Proto::Tcp));
        }
        assert_eq!(pipe.stats().dropped, 0);
    }

    #[tokio::test]
    async fn a_udp_pipe_over_a_link_drops_when_full_and_never_holds_its_feeder_up() {
        let (pipe, taken) = taken_before_waiting(Proto::Udp, 64).await;
        assert_eq!(taken, 64);
        let m = pipe.recv_timeout(T).await.unwrap();
        assert_eq!(m.proto, Proto::Udp);
        assert!(pipe.stats().dropped > 0);
    }

    #[tokio::test]
    async fn a_pipe_over_a_link_ends_with_the_links_reason_after_what_was_queued() {
        let (tx, rx) = mpsc::channel(4);
        let (local, peer) = addrs();
        let link = Arc::new(Sink(Some(EndReason::Fin)));
        let pipe = Pipe::over_link(Proto::Tcp, link, rx, local, peer, &PipeConfig::default());
        tx.send((Bytes::from_static(b"last"), peer)).await.unwrap();
        drop(tx);
        let m = pipe.recv_timeout(T).await.unwrap();
        assert_eq!((&m.data[..], m.peer, m.local), (&b"last"[..], peer, local));
        assert!(matches!(
            pipe.recv_timeout(T).await,
            Err(Error::Ended(EndReason::Fin))
        ));
        assert_eq!(pipe.end_reason(), Some(EndReason::Fin));
    }

    #[tokio::test]
    async fn a_tcp_pipe_over_a_link_sends_messages_past_the_datagram_bound() {
        let (_tx, rx) = mpsc::channel(1);
        let (local, peer) = addrs();
        let link = Arc::new(Recorder::default());
        let cfg = PipeConfig::default().max_frame(100_000);
        let tcp = Pipe::over_link(Proto::Tcp, link.clone(), rx, local, peer, &cfg);
        tcp.send(vec![7u8; 70_000]).await.unwrap();
        assert!(matches!(
            tcp.send(vec![7u8; 100_001]).await,
            Err(Error::TooLarge { max: 100_000, .. })
        ));
        let (_tx, rx) = mpsc::channel(1);
        let udp = Pipe::over_link(Proto::Udp, link.clone(), rx, local, peer, &cfg);
        assert!(matches!(
            udp.send(vec![7u8; 70_000]).await,
            Err(Error::TooLarge { max: 65_507, .. })
        ));
        assert_eq!(link.0.lock().unwrap().len(), 1);
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
