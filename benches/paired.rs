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

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pipe::{Pipe, Proto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

const LOCALHOST: &str = "127.0.0.1:0";
const ROUND_TRIPS: usize = 5_000;
const SMALL: usize = 64;
const BULK_TOTAL: usize = 64 << 20;
const BULK_CHUNK: usize = 64 << 10;
const LIMIT: Duration = Duration::from_secs(60);

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {LIMIT:?}"))
}

/// Something measured in rounds: one call runs one round and returns its time.
trait Side {
    async fn round(&mut self) -> Duration;
}

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

async fn compare(name: &str, rounds: usize, raw: &mut impl Side, pipe: &mut impl Side) {
    if std::env::var("P2PIPE_ONLY").is_ok_and(|only| !name.contains(&only)) {
        return;
    }
    // One warm-up round each.
    bounded(name, raw.round()).await;
    bounded(name, pipe.round()).await;
    let mut ratios = Vec::with_capacity(rounds);
    let (mut raws, mut pipes) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let (r, p) = if i % 2 == 0 {
            let r = bounded(name, raw.round()).await;
            (r, bounded(name, pipe.round()).await)
        } else {
            let p = bounded(name, pipe.round()).await;
            (bounded(name, raw.round()).await, p)
        };
        ratios.push(r.as_secs_f64() / p.as_secs_f64());
        raws.push(r.as_secs_f64());
        pipes.push(p.as_secs_f64());
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (lo, hi) = (
        ratios.iter().copied().fold(f64::MAX, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "{name:<22} pipe/raw median {:.2}x (rounds {lo:.2}-{hi:.2}); raw {:.2} ms, pipe {:.2} ms per round",
        med(&mut ratios),
        med(&mut raws) * 1e3,
        med(&mut pipes) * 1e3,
    );
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent; stay quick then.
    let benching = std::env::args().any(|a| a == "--bench");
    let rounds: usize = std::env::var("P2PIPE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 15 } else { 1 });
    // Two workers: as a server runs, but where the scheduler puts the two ends
    // of a connection changes the figures (bulk is bimodal on 2 cores, for raw
    // tokio as for the pipe). One thread: placement is fixed, so the ratio is
    // the cost of the code alone.
    let multi = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("== multi-thread runtime, 2 workers");
    // Measure on a worker thread, as servers run: the thread that calls
    // `block_on` is not a worker, and every wake-up of it is a cross-thread one.
    multi
        .block_on(multi.spawn(all(rounds)))
        .expect("the comparison panicked");
    drop(multi);
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("== current-thread runtime");
    single.block_on(all(rounds));
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
    compare("tcp_round_trip_64B", rounds, &mut raw, &mut pipe).await;

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
    compare("udp_round_trip_64B", rounds, &mut raw, &mut pipe).await;

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
    compare("tcp_bulk_64MiB", rounds, &mut raw, &mut pipe).await;
}
