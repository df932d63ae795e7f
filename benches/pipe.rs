//! Pipe benchmarks, each beside a raw tokio baseline in the same group.
//!
//! Every group builds one multi-thread tokio runtime and uses it for both
//! sides, so the pipe/raw ratio holds on a noisy machine. Connections are set
//! up once per benchmark, outside the measurement; each measured batch runs as
//! a task on the runtime (as application code would) under a time limit, so a
//! bug panics with a message instead of hanging the bench.
//!
//! Run with `cargo bench --bench pipe`; `benches/report.sh` prints the ratios.
//! See docs/performance.md.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use futures::StreamExt;
use p2pipe::pipe::Overflow;
use p2pipe::{Framing, Pipe, PipeConfig, Proto, Subscription};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

mod support;
use support::{bounded, runtime};

/// The longest a setup step or one measured batch may take.
const LIMIT: Duration = Duration::from_secs(30);
/// Message size of the round-trip groups.
const SMALL: usize = 64;
/// Bytes per bulk iteration, and per write.
const BULK_TOTAL: usize = 64 << 20;
const BULK_CHUNK: usize = 64 << 10;
/// Messages per dispatch iteration, and the subscription that matches them.
const DISPATCH_N: usize = 10_000;
const DISPATCH_TOPIC: usize = 500;
const LOCALHOST: &str = "127.0.0.1:0";

/// Runs one measured batch as a task on `rt`. The state moves into the task
/// and comes back with the time the task measured, so it lives across batches.
fn batch<S, F, Fut>(rt: &Runtime, slot: &mut Option<S>, iters: u64, what: &str, f: F) -> Duration
where
    S: Send + 'static,
    F: FnOnce(S, u64) -> Fut,
    Fut: Future<Output = (S, Duration)> + Send + 'static,
{
    let state = slot.take().expect("state is back after every batch");
    let fut = f(state, iters);
    let (state, elapsed) = rt.block_on(async move {
        match tokio::time::timeout(LIMIT, tokio::spawn(fut)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("{what}: batch task failed: {e}"),
            Err(_) => panic!("{what}: a batch of {iters} took longer than {LIMIT:?}"),
        }
    });
    *slot = Some(state);
    elapsed
}

fn configure(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
}

// ---------------------------------------------------------------- TCP round trip

struct RawTcpClient {
    s: TcpStream,
    out: [u8; SMALL],
    back: [u8; SMALL],
}

/// A raw echo server: one task per connection, reading into a reused buffer.
async fn raw_tcp_echo_server() -> SocketAddr {
    let l = TcpListener::bind(LOCALHOST).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            s.set_nodelay(true).expect("nodelay");
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A pipe echo server: `listen` + `accept` + `on_message` echo.
async fn pipe_echo_server(proto: Proto) -> SocketAddr {
    let server = Pipe::listen(proto, LOCALHOST).await.expect("listen");
    let addr = server.local_addr();
    tokio::spawn(async move {
        while let Ok(peer) = server.accept().await {
            peer.on_message(|m, reply| async move { reply.send(&m.data).await })
                .expect("handler");
        }
    });
    addr
}

/// Sends 64 bytes and waits until all 64 have come back. Raw framing delivers
/// chunks as read, so a short chunk is followed by the rest.
async fn pipe_round_trip(pipe: &Pipe, out: &[u8]) {
    pipe.send(out).await.expect("pipe send");
    let mut got = 0;
    while got < out.len() {
        let m = pipe.recv().await.expect("pipe recv");
        assert_eq!(&m.data[..], &out[got..got + m.data.len()], "echo differs");
        got += m.data.len();
    }
}

fn tcp_round_trip(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("tcp_round_trip_64B");
    configure(&mut g);
    g.throughput(Throughput::Elements(1));

    let mut raw = Some(bounded(&rt, "raw tcp", async {
        let addr = raw_tcp_echo_server().await;
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        RawTcpClient {
            s,
            out: [0x61; SMALL],
            back: [0; SMALL],
        }
    }));
    g.bench_function("raw_tokio", |b| {
        b.iter_custom(|iters| {
            batch(&rt, &mut raw, iters, "raw tcp", |mut c, iters| async move {
                let start = Instant::now();
                for _ in 0..iters {
                    c.s.write_all(&c.out).await.expect("write");
                    c.s.read_exact(&mut c.back).await.expect("read");
                }
                let t = start.elapsed();
                assert_eq!(c.back, c.out, "echo differs");
                (c, t)
            })
        })
    });

    let mut pipe = Some(bounded(&rt, "pipe tcp", async {
        let addr = pipe_echo_server(Proto::Tcp).await;
        Pipe::connect(Proto::Tcp, addr).await.expect("connect")
    }));
    g.bench_function("pipe", |b| {
        b.iter_custom(|iters| {
            batch(&rt, &mut pipe, iters, "pipe tcp", |p, iters| async move {
                let out = [0x61u8; SMALL];
                let start = Instant::now();
                for _ in 0..iters {
                    pipe_round_trip(&p, &out).await;
                }
                (p, start.elapsed())
            })
        })
    });
    g.finish();
    drop((raw, pipe));
}

// ---------------------------------------------------------------- UDP round trip

struct RawUdpClient {
    s: UdpSocket,
    server: SocketAddr,
    out: [u8; SMALL],
    back: Vec<u8>,
}

async fn raw_udp_echo_server() -> SocketAddr {
    let s = UdpSocket::bind(LOCALHOST).await.expect("bind");
    let addr = s.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

fn udp_round_trip(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("udp_round_trip_64B");
    configure(&mut g);
    g.throughput(Throughput::Elements(1));

    let mut raw = Some(bounded(&rt, "raw udp", async {
        let server = raw_udp_echo_server().await;
        RawUdpClient {
            s: UdpSocket::bind(LOCALHOST).await.expect("bind"),
            server,
            out: [0x62; SMALL],
            back: vec![0; 65_536],
        }
    }));
    g.bench_function("raw_tokio", |b| {
        b.iter_custom(|iters| {
            batch(&rt, &mut raw, iters, "raw udp", |mut c, iters| async move {
                let start = Instant::now();
                for _ in 0..iters {
                    c.s.send_to(&c.out, c.server).await.expect("send");
                    let (n, from) = c.s.recv_from(&mut c.back).await.expect("recv");
                    assert!(n == SMALL && from == c.server, "bad echo");
                }
                let t = start.elapsed();
                assert_eq!(&c.back[..SMALL], &c.out[..], "echo differs");
                (c, t)
            })
        })
    });

    let mut pipe = Some(bounded(&rt, "pipe udp", async {
        let addr = pipe_echo_server(Proto::Udp).await;
        Pipe::connect(Proto::Udp, addr).await.expect("connect")
    }));
    g.bench_function("pipe", |b| {
        b.iter_custom(|iters| {
            batch(&rt, &mut pipe, iters, "pipe udp", |p, iters| async move {
                let out = [0x62u8; SMALL];
                let start = Instant::now();
                for _ in 0..iters {
                    p.send(out).await.expect("send");
                    let m = p.recv().await.expect("recv");
                    assert_eq!(m.data.len(), SMALL, "bad echo");
                }
                (p, start.elapsed())
            })
        })
    });
    g.finish();
    drop((raw, pipe));
}

// ---------------------------------------------------------------- TCP bulk

/// The sending side of a bulk benchmark; `done` says when the receiver has
/// counted another `BULK_TOTAL` bytes.
struct Bulk<W> {
    writer: W,
    chunk: Vec<u8>,
    done: mpsc::UnboundedReceiver<()>,
}

/// Counts `n` bytes into `got`, signalling each completed `BULK_TOTAL`.
fn count(got: &mut usize, n: usize, done: &mpsc::UnboundedSender<()>) {
    *got += n;
    while *got >= BULK_TOTAL {
        *got -= BULK_TOTAL;
        let _ = done.send(());
    }
}

async fn bulk_wait<W>(b: &mut Bulk<W>) {
    b.done.recv().await.expect("receiver gone");
}

fn tcp_bulk(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("tcp_bulk");
    configure(&mut g);
    // Tens of milliseconds an iteration: the same few iterations per sample,
    // for both sides.
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes(BULK_TOTAL as u64));

    let mut raw = Some(bounded(&rt, "raw bulk", async {
        let l = TcpListener::bind(LOCALHOST).await.expect("bind");
        let writer = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        writer.set_nodelay(true).expect("nodelay");
        let (mut r, _) = l.accept().await.expect("accept");
        r.set_nodelay(true).expect("nodelay");
        let (tx, done) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; BULK_CHUNK];
            let mut got = 0;
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => count(&mut got, n, &tx),
                }
            }
        });
        Bulk {
            writer,
            chunk: vec![0x63; BULK_CHUNK],
            done,
        }
    }));
    g.bench_function("raw_tokio", |b| {
        b.iter_custom(|iters| {
            batch(
                &rt,
                &mut raw,
                iters,
                "raw bulk",
                |mut b, iters| async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        for _ in 0..BULK_TOTAL / BULK_CHUNK {
                            b.writer.write_all(&b.chunk).await.expect("write");
                        }
                        bulk_wait(&mut b).await;
                    }
                    (b, start.elapsed())
                },
            )
        })
    });

    let mut pipe = Some(bounded(&rt, "pipe bulk", async {
        let server = Pipe::listen(Proto::Tcp, LOCALHOST).await.expect("listen");
        let writer = Pipe::connect(Proto::Tcp, server.local_addr())
            .await
            .expect("connect");
        let r = server.accept().await.expect("accept");
        let (tx, done) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _server = server;
            let mut got = 0;
            while let Ok(m) = r.recv().await {
                count(&mut got, m.data.len(), &tx);
            }
        });
        Bulk {
            writer,
            chunk: vec![0x63; BULK_CHUNK],
            done,
        }
    }));
    g.bench_function("pipe", |b| {
        b.iter_custom(|iters| {
            batch(
                &rt,
                &mut pipe,
                iters,
                "pipe bulk",
                |mut b, iters| async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        for _ in 0..BULK_TOTAL / BULK_CHUNK {
                            b.writer.send(&b.chunk).await.expect("send");
                        }
                        bulk_wait(&mut b).await;
                    }
                    (b, start.elapsed())
                },
            )
        })
    });
    g.finish();
    drop((raw, pipe));
}

// ---------------------------------------------------------------- dispatch

/// The payload every dispatch message carries: matches `^topic-500\b` only.
fn dispatch_payload() -> Vec<u8> {
    let mut p = format!("topic-{DISPATCH_TOPIC} ").into_bytes();
    p.resize(SMALL, b'x');
    p
}

/// Accepts the receiver's connection on `l` and starts a raw sender on it,
/// which writes `DISPATCH_N` length-prefixed messages in one `write_all` for
/// every signal on the returned channel.
async fn start_sender(l: TcpListener) -> mpsc::UnboundedSender<()> {
    let (mut s, _) = l.accept().await.expect("accept");
    s.set_nodelay(true).expect("nodelay");
    let payload = dispatch_payload();
    let mut frames = BytesMut::with_capacity(DISPATCH_N * (4 + SMALL));
    for _ in 0..DISPATCH_N {
        frames.put_u32(payload.len() as u32);
        frames.put_slice(&payload);
    }
    let (go, mut rx) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            if s.write_all(&frames).await.is_err() {
                return;
            }
        }
    });
    go
}

struct RawDispatch {
    framed: FramedRead<TcpStream, LengthDelimitedCodec>,
    go: mpsc::UnboundedSender<()>,
}

struct PipeDispatch {
    pipe: Pipe,
    /// The subscription that takes every message; `None` reads with `recv`.
    hit: Option<Subscription>,
    _others: Vec<Subscription>,
    go: mpsc::UnboundedSender<()>,
}

async fn pipe_dispatch(subs: usize) -> PipeDispatch {
    let l = TcpListener::bind(LOCALHOST).await.expect("bind");
    let cfg = PipeConfig::default().framing(Framing::LengthPrefixed);
    let connect = Pipe::connect_with(Proto::Tcp, l.local_addr().expect("addr"), &cfg);
    let (pipe, go) = tokio::join!(connect, start_sender(l));
    let pipe = pipe.expect("connect");
    // One subscription is the matching one; 1,000 are `^topic-0\b` ..
    // `^topic-999\b`, of which the message matches exactly one.
    let topics: Vec<usize> = match subs {
        1 => vec![DISPATCH_TOPIC],
        n => (0..n).collect(),
    };
    let mut hit = None;
    let mut others = Vec::new();
    for i in topics {
        // The queue holds a whole batch: a subscription never pushes back,
        // so a smaller one could drop messages.
        let s = pipe
            .subscribe_with(
                &format!(r"^topic-{i}\b"),
                None,
                DISPATCH_N,
                Overflow::DropNewest,
            )
            .expect("subscribe");
        if i == DISPATCH_TOPIC {
            hit = Some(s);
        } else {
            others.push(s);
        }
    }
    assert_eq!(hit.is_some(), subs > 0);
    PipeDispatch {
        pipe,
        hit,
        _others: others,
        go,
    }
}

async fn pipe_dispatch_batch(d: PipeDispatch, iters: u64) -> (PipeDispatch, Duration) {
    let start = Instant::now();
    for _ in 0..iters {
        d.go.send(()).expect("sender gone");
        for _ in 0..DISPATCH_N {
            let m = match &d.hit {
                Some(s) => s.recv().await.expect("subscription recv"),
                None => d.pipe.recv().await.expect("pipe recv"),
            };
            assert_eq!(m.data.len(), SMALL, "bad message");
        }
    }
    let t = start.elapsed();
    if let Some(s) = &d.hit {
        assert_eq!(s.dropped(), 0, "the subscription dropped messages");
    }
    (d, t)
}

fn subscription_dispatch(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("subscription_dispatch");
    configure(&mut g);
    g.throughput(Throughput::Elements(DISPATCH_N as u64));

    let mut raw = Some(bounded(&rt, "raw dispatch", async {
        let l = TcpListener::bind(LOCALHOST).await.expect("bind");
        let connect = TcpStream::connect(l.local_addr().expect("addr"));
        let (s, go) = tokio::join!(connect, start_sender(l));
        let s = s.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        RawDispatch {
            framed: FramedRead::new(s, LengthDelimitedCodec::new()),
            go,
        }
    }));
    g.bench_function("raw_tokio_framed", |b| {
        b.iter_custom(|iters| {
            batch(
                &rt,
                &mut raw,
                iters,
                "raw dispatch",
                |mut d, iters| async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        d.go.send(()).expect("sender gone");
                        for _ in 0..DISPATCH_N {
                            let m = d.framed.next().await.expect("open").expect("frame");
                            assert_eq!(m.len(), SMALL, "bad message");
                        }
                    }
                    (d, start.elapsed())
                },
            )
        })
    });

    for (name, subs) in [
        ("pipe_0_subs", 0),
        ("pipe_1_sub", 1),
        ("pipe_1000_subs", 1000),
    ] {
        let mut d = Some(bounded(&rt, name, pipe_dispatch(subs)));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| batch(&rt, &mut d, iters, name, pipe_dispatch_batch))
        });
    }
    g.finish();
    drop(raw);
}

criterion_group!(
    benches,
    tcp_round_trip,
    udp_round_trip,
    tcp_bulk,
    subscription_dispatch
);
criterion_main!(benches);
