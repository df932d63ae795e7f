//! Mesh benchmarks, each beside a raw tokio baseline in the same group.
//!
//! The baseline speaks the same shape of protocol over a plain `TcpStream`: u32-length
//! frames read with tokio-util's `LengthDelimitedCodec`, echoed or counted by a task. The
//! mesh adds its frame header, the event channel and dispatcher, and (in the `signed`
//! rows) an ed25519 signature and check per message.
//!
//! - `mesh_rtt_64B`: a 64-byte message to a peer that echoes it, one at a time.
//! - `mesh_stream_64KiB`: 256 messages of 64 KiB one way, then one acknowledgement.
//!   `raw_tokio_channel` is the baseline with its frames handed to another task through
//!   a bounded channel, as the mesh hands messages to its dispatcher.
//!
//! Run with `cargo bench --bench mesh`. See docs/performance.md.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::{SinkExt, StreamExt};
use p2pipe::identity::Identity;
use p2pipe::mesh::{Event, Events, Mesh};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

mod support;
use support::{bounded, runtime};

const LIMIT: Duration = Duration::from_secs(30);
const SMALL: usize = 64;
const CHUNK: usize = 64 << 10;
const STREAM_N: usize = 256;

/// Runs one measured batch on `rt` with the state in `slot`, which the batch hands back
/// with the time it measured, so that connections live across batches.
fn timed<S, F, Fut>(rt: &Runtime, slot: &mut Option<S>, iters: u64, what: &str, f: F) -> Duration
where
    F: FnOnce(S, u64) -> Fut,
    Fut: Future<Output = (S, Duration)>,
{
    let state = slot.take().expect("state is back after every batch");
    let (state, d) = bounded(rt, what, f(state, iters));
    *slot = Some(state);
    d
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(1 << 20)
        .new_codec()
}

/// A raw peer: echoes every frame (`echo`), or acknowledges every `STREAM_N` frames.
async fn raw_pair(echo: bool) -> Framed<TcpStream, LengthDelimitedCodec> {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut f = Framed::new(s, codec());
        let mut n = 0;
        while let Some(Ok(frame)) = f.next().await {
            if echo {
                if f.send(frame.freeze()).await.is_err() {
                    return;
                }
            } else {
                n += 1;
                if n % STREAM_N == 0 && f.send(Bytes::from_static(b"done")).await.is_err() {
                    return;
                }
            }
        }
    });
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    Framed::new(s, codec())
}

/// A raw peer that hands every frame to another task through a bounded channel, as the
/// mesh hands messages to its event dispatcher; that task acknowledges every `STREAM_N`.
async fn raw_channel_pair() -> Framed<TcpStream, LengthDelimitedCodec> {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let (mut sink, mut stream) = Framed::new(s, codec()).split();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<BytesMut>(1024);
        tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
        });
        let mut n = 0;
        while let Some(frame) = rx.recv().await {
            drop(frame);
            n += 1;
            if n % STREAM_N == 0 && sink.send(Bytes::from_static(b"done")).await.is_err() {
                return;
            }
        }
    });
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    Framed::new(s, codec())
}

/// A mesh pair: `a` connects to `b`, whose handler echoes, or acknowledges every
/// `STREAM_N` messages. Returns `a` and its event stream.
async fn mesh_pair(echo: bool, signed: bool) -> (Mesh, Events, Mesh) {
    let seen = Arc::new(AtomicUsize::new(0));
    let mut b = Mesh::builder("b")
        .listen("127.0.0.1:0".parse().unwrap())
        .on_message(move |mesh, m| {
            let seen = seen.clone();
            async move {
                if echo {
                    let _ = mesh.send_to(&m.from, m.data).await;
                } else if seen.fetch_add(1, Ordering::Relaxed) % STREAM_N == STREAM_N - 1 {
                    let _ = mesh.send_to(&m.from, "done").await;
                }
            }
        });
    let mut a = Mesh::builder("a");
    if signed {
        b = b.identity(&Identity::from_seed([2; 32]));
        a = a.identity(&Identity::from_seed([1; 32]));
    }
    let (b, b_events) = b.start().await.unwrap();
    drop(b_events);
    let (a, a_events) = a.start().await.unwrap();
    a.connect(b.local_addrs()[0]).await.unwrap();
    (a, a_events, b)
}

async fn next_message(ev: &mut Events) -> Bytes {
    loop {
        match ev.recv().await {
            Some(Event::Message(m)) => return m.data,
            Some(_) => {}
            None => panic!("mesh stopped"),
        }
    }
}

fn payload(n: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(n);
    for i in 0..n {
        b.put_u8((i * 31) as u8);
    }
    b.freeze()
}

fn rtt(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("mesh_rtt_64B");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
    let msg = payload(SMALL);

    let mut raw = Some(bounded(&rt, "raw setup", raw_pair(true)));
    g.bench_function("raw_tokio", |b| {
        b.iter_custom(|iters| {
            timed(&rt, &mut raw, iters, "raw rtt", |mut f, iters| {
                let msg = msg.clone();
                async move {
                    let t = Instant::now();
                    for _ in 0..iters {
                        f.send(msg.clone()).await.unwrap();
                        let back = f.next().await.unwrap().unwrap();
                        assert_eq!(back.len(), SMALL);
                    }
                    (f, t.elapsed())
                }
            })
        })
    });
    for signed in [false, true] {
        let (a, ev, peer) = bounded(&rt, "mesh setup", mesh_pair(true, signed));
        let mut ev = Some(ev);
        g.bench_function(if signed { "mesh_signed" } else { "mesh" }, |b| {
            b.iter_custom(|iters| {
                timed(&rt, &mut ev, iters, "mesh rtt", |mut e, iters| {
                    let (a, msg) = (a.clone(), msg.clone());
                    async move {
                        let t = Instant::now();
                        for _ in 0..iters {
                            a.send_to("b", msg.clone()).await.unwrap();
                            assert_eq!(next_message(&mut e).await.len(), SMALL);
                        }
                        (e, t.elapsed())
                    }
                })
            })
        });
        bounded(&rt, "stop", async {
            a.stop(LIMIT).await;
            peer.stop(LIMIT).await;
        });
    }
    g.finish();
}

fn stream(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("mesh_stream_64KiB");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .sample_size(10)
        .throughput(Throughput::Bytes((CHUNK * STREAM_N) as u64));
    let msg = payload(CHUNK);

    for (name, channel) in [("raw_tokio", false), ("raw_tokio_channel", true)] {
        let f = if channel {
            bounded(&rt, "raw setup", raw_channel_pair())
        } else {
            bounded(&rt, "raw setup", raw_pair(false))
        };
        let mut raw = Some(f);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                timed(&rt, &mut raw, iters, "raw stream", |mut f, iters| {
                    let msg = msg.clone();
                    async move {
                        let t = Instant::now();
                        for _ in 0..iters {
                            for _ in 0..STREAM_N {
                                f.feed(msg.clone()).await.unwrap();
                            }
                            SinkExt::<Bytes>::flush(&mut f).await.unwrap();
                            assert_eq!(&f.next().await.unwrap().unwrap()[..], b"done");
                        }
                        (f, t.elapsed())
                    }
                })
            })
        });
    }
    for signed in [false, true] {
        let (a, ev, peer) = bounded(&rt, "mesh setup", mesh_pair(false, signed));
        let mut ev = Some(ev);
        g.bench_function(if signed { "mesh_signed" } else { "mesh" }, |b| {
            b.iter_custom(|iters| {
                timed(&rt, &mut ev, iters, "mesh stream", |mut e, iters| {
                    let (a, msg) = (a.clone(), msg.clone());
                    async move {
                        let t = Instant::now();
                        for _ in 0..iters {
                            for _ in 0..STREAM_N {
                                a.send_to("b", msg.clone()).await.unwrap();
                            }
                            assert_eq!(&next_message(&mut e).await[..], b"done");
                        }
                        (e, t.elapsed())
                    }
                })
            })
        });
        bounded(&rt, "stop", async {
            a.stop(LIMIT).await;
            peer.stop(LIMIT).await;
        });
    }
    g.finish();
}

criterion_group!(benches, rtt, stream);
criterion_main!(benches);
