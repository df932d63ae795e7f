//! The Daemon beside a raw tokio server doing the same job, interleaved round by round.
//!
//! The client is the same raw tokio code for both servers, so only the server differs:
//!
//! - `tcp_round_trip_64B`: one `TcpStream`, `write_all` 64 B then `read_exact` 64 B,
//!   5,000 times a round. Raw: a `TcpListener` accept loop that spawns an echo task per
//!   connection. Daemon: a TCP listener of a `Daemon` whose handler echoes each message.
//! - `udp_round_trip_64B`: one `UdpSocket`, `send_to` 64 B then `recv_from`, 5,000 times
//!   a round. Raw: a `UdpSocket` echo loop. Daemon: a UDP listener of the same `Daemon`.
//! - `tcp_accept_64B`: per iteration a new `TcpStream`: connect, one 64 B round trip,
//!   close; 200 a round. Raw and Daemon as for `tcp_round_trip_64B`.
//!
//! Criterion measures all of one side's samples, then all of the other's; on a small
//! shared machine the scheduler's state can drift in between. As in `benches/paired.rs`,
//! every round here measures raw tokio and the Daemon back to back, in alternating order,
//! and the figure to quote is the median of the per-round ratios, on a 2-worker runtime
//! and then on a current-thread one.
//!
//! Run with `cargo bench --bench daemon`; `P2PIPE_ROUNDS` sets the rounds (default 15),
//! and `P2PIPE_ONLY=udp` runs only the comparisons whose name contains `udp`. See
//! docs/performance.md.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pipe::{Daemon, Message, Pipe, Proto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

mod interleave;
use interleave::{compare, Side};

const LOCALHOST: &str = "127.0.0.1:0";
const ROUND_TRIPS: usize = 5_000;
const CONNECTIONS: usize = 200;
const SMALL: usize = 64;

/// 64 B round trips on one TCP connection.
struct TcpRtt(TcpStream, [u8; SMALL]);
impl Side for TcpRtt {
    async fn round(&mut self) -> Duration {
        let t = Instant::now();
        for _ in 0..ROUND_TRIPS {
            self.0.write_all(&self.1).await.expect("write");
            self.0.read_exact(&mut self.1).await.expect("read");
        }
        t.elapsed()
    }
}

/// 64 B round trips from one UDP socket.
struct UdpRtt(UdpSocket, SocketAddr, [u8; 2048]);
impl Side for UdpRtt {
    async fn round(&mut self) -> Duration {
        let t = Instant::now();
        for _ in 0..ROUND_TRIPS {
            self.0
                .send_to(&self.2[..SMALL], self.1)
                .await
                .expect("send");
            let (n, _) = self.0.recv_from(&mut self.2).await.expect("recv");
            assert_eq!(n, SMALL, "the echo is whole");
        }
        t.elapsed()
    }
}

/// New connections: connect, one 64 B round trip, close.
struct Accept(SocketAddr, [u8; SMALL]);
impl Side for Accept {
    async fn round(&mut self) -> Duration {
        let t = Instant::now();
        for _ in 0..CONNECTIONS {
            let mut s = TcpStream::connect(self.0).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s.write_all(&self.1).await.expect("write");
            s.read_exact(&mut self.1).await.expect("read");
        }
        t.elapsed()
    }
}

async fn tcp_client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

async fn udp_client(to: SocketAddr) -> UdpRtt {
    let s = UdpSocket::bind(LOCALHOST).await.expect("bind");
    UdpRtt(s, to, [1; 2048])
}

/// The raw TCP server: an accept loop spawning an echo task per connection, each
/// reading into its own buffer and writing back what it read (TCP_NODELAY, as the
/// Daemon's pipes set it).
async fn raw_tcp_server() -> SocketAddr {
    let l = TcpListener::bind(LOCALHOST).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                s.set_nodelay(true).expect("nodelay");
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The raw UDP server: one socket echoing every datagram to its sender.
async fn raw_udp_server() -> SocketAddr {
    let s = UdpSocket::bind(LOCALHOST).await.expect("bind");
    let addr = s.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// The Daemon: one echo handler on TCP and UDP, on one port of 127.0.0.1.
async fn daemon() -> (Daemon, SocketAddr, SocketAddr) {
    let echo = |m: Message, reply: Pipe| async move { reply.send(&m.data).await };
    let d = Daemon::builder(echo)
        .listen_all(
            ["127.0.0.1".parse().expect("an address")],
            [0],
            [Proto::Tcp, Proto::Udp],
        )
        .start()
        .await
        .expect("the daemon starts");
    let find = |p: Proto| {
        d.local_addrs()
            .iter()
            .find(|(proto, _)| *proto == p)
            .map(|(_, a)| *a)
            .expect("a listener of each protocol")
    };
    let (tcp, udp) = (find(Proto::Tcp), find(Proto::Udp));
    (d, tcp, udp)
}

fn main() {
    interleave::on_both_runtimes(all);
}

async fn all(rounds: usize) {
    let (d, d_tcp, d_udp) = daemon().await;
    let (raw_tcp, raw_udp) = (raw_tcp_server().await, raw_udp_server().await);

    let mut raw = TcpRtt(tcp_client(raw_tcp).await, [1; SMALL]);
    let mut dmn = TcpRtt(tcp_client(d_tcp).await, [1; SMALL]);
    compare("tcp_round_trip_64B", "daemon", rounds, &mut raw, &mut dmn).await;

    let mut raw = udp_client(raw_udp).await;
    let mut dmn = udp_client(d_udp).await;
    compare("udp_round_trip_64B", "daemon", rounds, &mut raw, &mut dmn).await;

    let mut raw = Accept(raw_tcp, [1; SMALL]);
    let mut dmn = Accept(d_tcp, [1; SMALL]);
    compare("tcp_accept_64B", "daemon", rounds, &mut raw, &mut dmn).await;

    // What the Daemon saw, and that it stops cleanly with the round-trip clients still
    // connected.
    let stats = d.stats();
    let report = d.shutdown(Duration::from_secs(5)).await;
    println!("daemon: {stats:?}; shutdown: {report:?}");
}
