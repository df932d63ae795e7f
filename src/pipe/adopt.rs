//! Pipes made from sockets that other layers opened: a punched UDP path or a TCP
//! connection found by a traversal becomes an ordinary [`Pipe`].

use std::sync::Arc;

use tokio::net::{TcpStream, UdpSocket};

use super::reader::Reader;
use super::shared::{Core, Io};
use super::udp::{Owned, Sender};
use super::{Pipe, PipeConfig, Proto, Result};
use crate::addr::canonical;
use std::net::SocketAddr;

impl Pipe {
    /// A UDP pipe on `socket`, whose default peer is `peer`, as [`Pipe::connect`] makes
    /// one: it receives from anyone, and the pipe owns the socket from now on.
    pub(crate) fn adopt_udp(socket: UdpSocket, peer: SocketAddr, cfg: &PipeConfig) -> Result<Pipe> {
        let sock = Arc::new(socket);
        let local = canonical(sock.local_addr()?);
        let core = Core::new(
            Proto::Udp,
            local,
            Some(canonical(peer)),
            Arc::new(cfg.clone()),
            Io::Udp(Sender::Own(Owned::new(sock.clone()))),
            None,
            Some(Reader::udp(sock)),
        );
        Ok(Pipe::from_core(core))
    }

    /// A TCP pipe on a connected `stream`, as [`Pipe::connect`] makes one.
    // For the TCP punch and RFC 6062 relayed connections.
    pub(crate) fn adopt_tcp(stream: TcpStream, cfg: &PipeConfig) -> Result<Pipe> {
        let core = super::tcp::start(stream, Arc::new(cfg.clone()), None)?;
        Ok(Pipe::from_core(core))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn an_adopted_udp_socket_sends_and_receives_as_a_pipe() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let pipe = Pipe::adopt_udp(a, b_addr, &PipeConfig::default()).unwrap();
        assert_eq!(pipe.local_addr(), a_addr);
        assert_eq!(pipe.peer_addr(), Some(b_addr));
        pipe.send(b"ping").await.unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), b.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&buf[..n], from), (&b"ping"[..], a_addr));
        b.send_to(b"pong", a_addr).await.unwrap();
        let m = pipe.recv_timeout(Duration::from_secs(5)).await.unwrap();
        assert_eq!((&m.data[..], m.peer), (&b"pong"[..], b_addr));
    }

    #[tokio::test]
    async fn an_adopted_tcp_stream_is_framed_as_a_pipe() {
        let l = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        let a = Pipe::adopt_tcp(client.unwrap(), &PipeConfig::default()).unwrap();
        let b = Pipe::adopt_tcp(server.unwrap().0, &PipeConfig::default()).unwrap();
        assert_eq!(a.peer_addr(), Some(b.local_addr()));
        a.send(b"over tcp").await.unwrap();
        let m = b.recv_timeout(Duration::from_secs(5)).await.unwrap();
        assert_eq!(&m.data[..], b"over tcp");
        assert_eq!(m.proto, Proto::Tcp);
    }
}
