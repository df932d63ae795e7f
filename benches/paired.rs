//! Paired, interleaved comparison of the pipe with raw tokio.
//!
//! Criterion measures all of a baseline's samples, then all of the pipe's; on
//! a small shared machine the state of the scheduler can drift between the
//! two. Here every round measures raw tokio and the pipe back to back, in
//! alternating order, over the same connections, and the ratio is taken per
//! round. The median of those ratios is the figure to quote.
//!
//! Run with `cargo bench --bench paired`; `P2PIPE_ROUNDS` sets the rounds
//! (default 15), and `P2PIPE_ONLY=udp` runs only the comparisons whose name
//! contains `udp`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pipe::{Pipe, Proto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

mod interleave;
use interleave::{compare, Side};

const LOCALHOST: &str = "127.0.0.1:0";
const ROUND_TRIPS: usize = 5_000;
const SMALL: usize = 64;
const BULK_TOTAL: usize = 64 << 20;
const BULK_CHUNK: usize = 64 << 10;

struct RawTcpRtt(TcpStream, Vec<u8>);
impl Side for RawTcpRtt {
    async fn round(&mut self) -> Duration {
        let t = Instant::now();
        for _ in 0..ROUND_TRIPS {
            self.0.write_all(&self.1[..SMALL]).await.expect("write");
            self.0.read_exact(&mut self.1[..SMALL]).await.expect("read");
        }
        t.elapsed()
    }
}

struct PipeRtt(Pipe, Vec<u8>);
impl Side for PipeRtt {
    async fn round(&mut self) -> Duration {
        let t = Instant::now();
        for _ in 0..ROUND_TRIPS {
            self.0.send(&self.1).await.expect("send");
            let mut got = 0;
            while got < SMALL {
                got += self.0.recv().await.expect("recv").data.len();
            }
        }
        t.elapsed()
    }
}

struct RawUdpRtt(UdpSocket, SocketAddr, Vec<u8>);
impl Side for RawUdpRtt {
    async fn round(&mut self) -> Duration {
        let t = Instant::now();
        for _ in 0..ROUND_TRIPS {
            self.0
                .send_to(&self.2[..SMALL], self.1)
                .await
                .expect("send");
            self.0.recv_from(&mut self.2).await.expect("recv");
        }
        t.elapsed()
    }
}

struct RawBulk(TcpStream, Vec<u8>, mpsc::UnboundedReceiver<()>);
impl Side for RawBulk {
    async fn round(&mut self) -> Duration {
        let t = Instant::now();
        for _ in 0..BULK_TOTAL / BULK_CHUNK {
            self.0.write_all(&self.1).await.expect("write");
        }
        self.2.recv().await.expect("receiver");
        t.elapsed()
    }
}

struct PipeBulk(Pipe, Vec<u8>, mpsc::UnboundedReceiver<()>);
impl Side for PipeBulk {
    async fn round(&mut self) -> Duration {
        let t = Instant::now();
        for _ in 0..BULK_TOTAL / BULK_CHUNK {
            self.0.send(&self.1).await.expect("send");
        }
        self.2.recv().await.expect("receiver");
        t.elapsed()
    }
}

/// Counts bytes and signals every `BULK_TOTAL`.
fn counted(total: &mut usize, n: usize, done: &mpsc::UnboundedSender<()>) {
    *total += n;
    if *total >= BULK_TOTAL {
        *total -= BULK_TOTAL;
        let _ = done.send(());
    }
}

async fn raw_tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind(LOCALHOST).await.expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (b, _) = l.accept().await.expect("accept");
    a.set_nodelay(true).expect("nodelay");
    b.set_nodelay(true).expect("nodelay");
    (a, b)
}

/// A pipe server that echoes every message, and a client of it.
async fn pipe_echo(proto: Proto) -> Pipe {
    let server = Pipe::listen(proto, LOCALHOST).await.expect("listen");
    let addr = server.local_addr();
    tokio::spawn(async move {
        while let Ok(peer) = server.accept().await {
            let _ = peer.on_message(|m, reply| async move { reply.send(&m.data).await });
        }
    });
    Pipe::connect(proto, addr).await.expect("connect")
}

fn main() {
    interleave::on_both_runtimes(all);
}

async fn all(rounds: usize) {
    // TCP round trips of 64 bytes.
    let (a, mut b) = raw_tcp_pair().await;
    tokio::spawn(async move {
        let mut buf = [0u8; SMALL];
        while b.read_exact(&mut buf).await.is_ok() {
            if b.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    let mut raw = RawTcpRtt(a, vec![1; SMALL]);
    let mut pipe = PipeRtt(pipe_echo(Proto::Tcp).await, vec![1; SMALL]);
    compare("tcp_round_trip_64B", "pipe", rounds, &mut raw, &mut pipe).await;

    // UDP round trips of 64 bytes.
    let echo = UdpSocket::bind(LOCALHOST).await.expect("bind");
    let to = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let client = UdpSocket::bind(LOCALHOST).await.expect("bind");
    let mut raw = RawUdpRtt(client, to, vec![1; 2048]);
    let mut pipe = PipeRtt(pipe_echo(Proto::Udp).await, vec![1; SMALL]);
    compare("udp_round_trip_64B", "pipe", rounds, &mut raw, &mut pipe).await;

    // TCP bulk: 64 MiB in 64 KiB writes.
    let (w, mut r) = raw_tcp_pair().await;
    let (tx, done) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; BULK_CHUNK];
        let mut total = 0;
        while let Ok(n @ 1..) = r.read(&mut buf).await {
            counted(&mut total, n, &tx);
        }
    });
    let mut raw = RawBulk(w, vec![0x63; BULK_CHUNK], done);
    let server = Pipe::listen(Proto::Tcp, LOCALHOST).await.expect("listen");
    let writer = Pipe::connect(Proto::Tcp, server.local_addr())
        .await
        .expect("connect");
    let reader = server.accept().await.expect("accept");
    let (tx, done) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _server = server;
        let mut total = 0;
        while let Ok(m) = reader.recv().await {
            counted(&mut total, m.data.len(), &tx);
        }
    });
    let mut pipe = PipeBulk(writer, vec![0x63; BULK_CHUNK], done);
    compare("tcp_bulk_64MiB", "pipe", rounds, &mut raw, &mut pipe).await;
}
