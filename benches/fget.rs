//! FGET throughput of the file-sharing node, beside raw tokio code that does the same
//! job, in the same criterion groups and on the same runtime.
//!
//! The raw tokio server reads the same btpeer request (an 8-byte header and the file
//! name), opens the file and copies it to the socket after a `REPL` header, in 64 KiB
//! reads and writes. Two pairs are measured, one 64 MiB file per iteration:
//!
//! - `fget_network`: the body is read to the end and thrown away. Raw: a raw client
//!   reading into a reused 256 KiB buffer. p2pipe: a [`FilerNode`] serving `FGET`, read
//!   through the client's [`Decoder`] as the client reads downloads.
//! - `fget_to_disk`: the body is written to a part file, the part file is synced,
//!   checked against the known SHA-256 and renamed into place. Two raw baselines:
//!   `raw_tokio` hashes the bytes in memory as they arrive (cheaper, and blind to what
//!   happens to the file), `raw_tokio_read_back` hashes the bytes read back from the
//!   synced file, which is the job p2pipe does. p2pipe: [`FilerClient::fetch`] (`FINF`,
//!   then `FRNG` streamed to a locked part file, read back and hashed, linked into
//!   place). Removing the fetched file afterwards is not timed.
//!
//! Files live in `/dev/shm` when it exists (tmpfs: the bench measures the code, not a
//! disk), else in the system's temporary folder; `P2PIPE_BENCH_DIR` overrides.
//!
//! Run with `cargo bench --bench fget`; see docs/performance.md.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use p2pipe::filer::wire::{Decoder, Event, Header, Kind, Request};
use p2pipe::filer::{FilerClient, FilerNode, NodeConfig};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

mod support;
use support::{bounded, runtime};

/// The longest a setup step or one measured batch may take.
const LIMIT: Duration = Duration::from_secs(60);
/// The file's size.
const FILE_SIZE: usize = 64 << 20;
/// The file's name in the shared folder.
const NAME: &str = "data.bin";
/// Bytes read from disk at a time by the raw server (the node's piece size).
const SERVER_CHUNK: usize = 64 << 10;
/// The raw clients' read buffer (the size the p2pipe client reserves).
const CLIENT_BUF: usize = 256 << 10;
const LOCALHOST: &str = "127.0.0.1:0";

/// Runs `iters` fetches as a task on `rt` under the time limit; `one` does a fetch and
/// returns the time it measured.
fn batch<F, Fut>(rt: &Runtime, iters: u64, what: &str, one: F) -> Duration
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Duration> + Send + 'static,
{
    let run = async move {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            total += one().await;
        }
        total
    };
    rt.block_on(async move {
        match tokio::time::timeout(LIMIT, tokio::spawn(run)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => panic!("{what}: batch task failed: {e}"),
            Err(_) => panic!("{what}: a batch of {iters} took longer than {LIMIT:?}"),
        }
    })
}

fn configure(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
        .sample_size(20)
        .throughput(Throughput::Bytes(FILE_SIZE as u64));
}

/// The folders and the file every benchmark uses.
struct Files {
    _root: tempfile::TempDir,
    /// The shared folder holding [`NAME`].
    shared: PathBuf,
    /// Where fetches land.
    dest: PathBuf,
    /// The file's SHA-256.
    sha256: [u8; 32],
}

fn files() -> Files {
    let base = std::env::var_os("P2PIPE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            }
        });
    let root = tempfile::tempdir_in(base).expect("temporary folder");
    let shared = root.path().join("shared");
    let dest = root.path().join("dest");
    std::fs::create_dir(&shared).expect("shared folder");
    std::fs::create_dir(&dest).expect("destination folder");
    // Bytes that do not repeat at any power of two, so a misplaced piece is caught.
    let data: Vec<u8> = (0..FILE_SIZE as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(shared.join(NAME), &data).expect("write the file");
    Files {
        sha256: Sha256::digest(&data).into(),
        _root: root,
        shared,
        dest,
    }
}

/// A raw tokio FGET server: per connection, the request header and name, then a `REPL`
/// header and the file in 64 KiB reads and writes.
async fn raw_server(dir: PathBuf) -> SocketAddr {
    let l = TcpListener::bind(LOCALHOST).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let dir = dir.clone();
            tokio::spawn(async move {
                let _ = raw_serve(s, &dir).await;
            });
        }
    });
    addr
}

async fn raw_serve(mut s: TcpStream, dir: &Path) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut head = [0u8; 8];
    s.read_exact(&mut head).await?;
    assert_eq!(&head[..4], b"FGET", "the raw server serves FGET only");
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    assert!(len <= 4096, "a name of {len} bytes");
    let mut name = vec![0u8; len];
    s.read_exact(&mut name).await?;
    let name = String::from_utf8(name).expect("a UTF-8 name");
    let mut file = tokio::fs::File::open(dir.join(name)).await?;
    let size = file.metadata().await?.len();
    let header = Header::for_payload(Kind::REPL, size).expect("a file under 4 GiB");
    let mut head = BytesMut::with_capacity(8);
    header.emit(&mut head);
    s.write_all(&head).await?;
    let mut buf = vec![0u8; SERVER_CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

/// Connects to `addr` and sends `FGET NAME`.
async fn request(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let frame = Request::Fget { name: NAME.into() }.to_frame();
    let mut wire = BytesMut::with_capacity(frame.emit_len());
    frame.emit(&mut wire);
    s.write_all(&wire).await.expect("send the request");
    s
}

/// Reads a raw `REPL` header and returns the body's length.
async fn raw_header(s: &mut TcpStream) -> u64 {
    let mut head = [0u8; 8];
    s.read_exact(&mut head).await.expect("reply header");
    let h = Header::parse(&head).expect("header");
    assert_eq!(h.kind, Kind::REPL, "the server refused");
    u64::from(h.len)
}

/// The raw client, network only: reads the body to the end into a reused buffer.
async fn raw_fetch_sink(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let mut s = request(addr).await;
    let len = raw_header(&mut s).await;
    let mut buf = vec![0u8; CLIENT_BUF];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let t = start.elapsed();
    assert_eq!(
        (got, len),
        (FILE_SIZE as u64, FILE_SIZE as u64),
        "short body"
    );
    t
}

/// The p2pipe client's reading, network only: the body read with `read_buf` into a
/// `BytesMut` and cut by the [`Decoder`], as `FilerClient` reads a download.
async fn decoder_fetch_sink(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let mut s = request(addr).await;
    let mut dec = Decoder::default();
    dec.expect_body(true);
    let mut buf = BytesMut::with_capacity(CLIENT_BUF);
    let mut got = 0u64;
    'read: loop {
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(CLIENT_BUF);
        }
        let n = s.read_buf(&mut buf).await.expect("read");
        loop {
            let ev = if n == 0 {
                dec.decode_eof(&mut buf)
            } else {
                dec.decode(&mut buf)
            };
            match ev.expect("a well-formed reply") {
                Some(Event::BodyStart { kind, len }) => {
                    assert_eq!((kind, len), (Kind::REPL, FILE_SIZE as u64), "bad reply");
                }
                Some(Event::BodyChunk(c)) => got += std::hint::black_box(c).len() as u64,
                Some(Event::BodyEnd) => break 'read,
                Some(Event::Frame(f)) => panic!("unexpected frame {:?}", f.kind),
                None => break,
            }
        }
        assert!(n > 0, "the node closed after {got} bytes");
    }
    let t = start.elapsed();
    assert_eq!(got, FILE_SIZE as u64, "short body");
    t
}

/// The raw client to disk: a part file written as the body arrives, synced, checked,
/// and renamed into place. With `read_back`, the check hashes the bytes read back from
/// the synced file (the job `FilerClient::fetch` does); without, the bytes hashed are
/// those in memory as they arrive.
async fn raw_fetch_disk(
    addr: SocketAddr,
    dest: &Path,
    sha256: [u8; 32],
    read_back: bool,
) -> Duration {
    let start = Instant::now();
    let mut s = request(addr).await;
    let len = raw_header(&mut s).await;
    let part = dest.join(format!(".{NAME}.part"));
    let mut file = tokio::fs::File::create(&part).await.expect("part file");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CLIENT_BUF];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).await.expect("write");
        if !read_back {
            hasher.update(&buf[..n]);
        }
        got += n as u64;
    }
    assert_eq!(got, len, "short body");
    file.flush().await.expect("flush");
    file.sync_all().await.expect("sync");
    drop(file);
    if read_back {
        let mut file = tokio::fs::File::open(&part).await.expect("reopen");
        loop {
            let n = file.read(&mut buf).await.expect("read back");
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    let h: [u8; 32] = hasher.finalize().into();
    assert_eq!(h, sha256, "the body does not hash to the file's SHA-256");
    tokio::fs::rename(&part, dest.join(NAME))
        .await
        .expect("rename");
    let t = start.elapsed();
    tokio::fs::remove_file(dest.join(NAME))
        .await
        .expect("remove");
    t
}

/// `FilerClient::fetch`: FINF, then FRNG into a part file, hashed, verified, renamed.
async fn p2pipe_fetch_disk(client: &FilerClient, dest: &Path) -> Duration {
    let start = Instant::now();
    let f = client
        .fetch(NAME, dest, |_, _| {})
        .await
        .expect("p2pipe fetch");
    let t = start.elapsed();
    assert!(f.verified && f.size == FILE_SIZE as u64 && f.transferred == f.size);
    tokio::fs::remove_file(&f.path).await.expect("remove");
    t
}

async fn node(shared: &Path) -> FilerNode {
    let mut cfg = NodeConfig::new(shared);
    cfg.stabilize_every = None;
    FilerNode::start("127.0.0.1:0".parse().expect("addr"), cfg)
        .await
        .expect("node")
}

fn fget(c: &mut Criterion) {
    let f = Arc::new(files());
    let rt = runtime();
    let raw = bounded(&rt, "raw server", raw_server(f.shared.clone()));
    let node = bounded(&rt, "node", node(&f.shared));
    let addr = node.local_addr();
    let client = FilerClient::new(addr).timeout(LIMIT);

    let mut g = c.benchmark_group("fget_network");
    configure(&mut g);
    g.bench_function("raw_tokio", |b| {
        b.iter_custom(|iters| batch(&rt, iters, "raw network", move || raw_fetch_sink(raw)))
    });
    g.bench_function("p2pipe", |b| {
        b.iter_custom(|iters| {
            batch(&rt, iters, "p2pipe network", move || {
                decoder_fetch_sink(addr)
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("fget_to_disk");
    configure(&mut g);
    g.bench_function("raw_tokio", |b| {
        b.iter_custom(|iters| {
            let f = f.clone();
            batch(&rt, iters, "raw to disk", move || {
                let f = f.clone();
                async move { raw_fetch_disk(raw, &f.dest, f.sha256, false).await }
            })
        })
    });
    g.bench_function("raw_tokio_read_back", |b| {
        b.iter_custom(|iters| {
            let f = f.clone();
            batch(&rt, iters, "raw to disk, read back", move || {
                let f = f.clone();
                async move { raw_fetch_disk(raw, &f.dest, f.sha256, true).await }
            })
        })
    });
    g.bench_function("p2pipe", |b| {
        b.iter_custom(|iters| {
            let (f, client) = (f.clone(), client.clone());
            batch(&rt, iters, "p2pipe to disk", move || {
                let (f, client) = (f.clone(), client.clone());
                async move { p2pipe_fetch_disk(&client, &f.dest).await }
            })
        })
    });
    g.finish();
    drop(node);
}

criterion_group!(benches, fget);
criterion_main!(benches);
