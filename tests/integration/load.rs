//! The Daemon under load on loopback: 10,000 concurrent TCP connections and 10,000 UDP
//! peers, all served; memory per connection (bounded where `/proc` can tell it, the
//! part skipped elsewhere) and echo latency beside an idle baseline (printed, not
//! asserted); and a flood of connect-and-drop clients that does not stop a well-behaved
//! client. Every loop is bounded in count and time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future;
use futures::stream::{self, StreamExt};
use p2pipe::daemon::DaemonStats;
use p2pipe::{Daemon, Message, Pipe, Proto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{skip, within, within_for, T};

const PEERS: usize = 10_000;
const LOAD_T: Duration = Duration::from_secs(120);

/// Raises the open-file limit so that 10,000 connections (both ends) fit.
fn raise_nofile(want: u64) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err("getrlimit failed".into());
        }
        if lim.rlim_cur >= want {
            return Ok(());
        }
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &new) != 0 {
            return Err(format!(
                "cannot raise the open-file limit to {want} (now {} / {}); run as root or raise it",
                lim.rlim_cur, lim.rlim_max
            ));
        }
    }
    Ok(())
}

/// This process's resident set in KiB, from `/proc/self/status`; `Err` says why it
/// cannot be read.
fn rss_kib() -> Result<u64, String> {
    const STATUS: &str = "/proc/self/status";
    let s = std::fs::read_to_string(STATUS).map_err(|e| format!("cannot read {STATUS}: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no VmRSS in {STATUS}"))
}

/// The resident set, once [`rss_kib`] has been seen to work.
fn rss_now() -> u64 {
    rss_kib().expect("the resident set was readable a moment ago")
}

/// Waits until the daemon's counters show `what` (`ok` says when), under [`LOAD_T`];
/// panics naming `what` and the last counters seen if they never do.
#[track_caller]
fn stats_until<'a>(
    d: &'a Daemon,
    what: &'a str,
    ok: impl Fn(&DaemonStats) -> bool + 'a,
) -> impl std::future::Future<Output = DaemonStats> + 'a {
    let at = std::panic::Location::caller();
    async move {
        let wait = async {
            loop {
                let s = d.stats();
                if ok(&s) {
                    return s;
                }
                tokio::task::yield_now().await;
            }
        };
        match tokio::time::timeout(LOAD_T, wait).await {
            Ok(s) => s,
            Err(_) => panic!(
                "the daemon's counters did not show {what} within {LOAD_T:?}, at {at}: {:?}",
                d.stats()
            ),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

async fn echo_daemon() -> Daemon {
    let echo = |msg: Message, reply: Pipe| async move { reply.send(&msg.data).await };
    within(
        Daemon::builder(echo)
            .listen_all(
                ["127.0.0.1".parse().unwrap()],
                [0],
                [Proto::Tcp, Proto::Udp],
            )
            .max_connections(3 * PEERS)
            .start(),
    )
    .await
    .unwrap()
}

fn addr_of(d: &Daemon, proto: Proto) -> SocketAddr {
    d.local_addrs()
        .iter()
        .find(|(p, _)| *p == proto)
        .map(|(_, a)| *a)
        .unwrap()
}

/// A well-behaved client: one connection, echo round trips of eight bytes.
struct Probe(TcpStream);

impl Probe {
    async fn connect(to: SocketAddr) -> Probe {
        let s = within(TcpStream::connect(to)).await.unwrap();
        s.set_nodelay(true).unwrap();
        Probe(s)
    }

    /// One round trip, checked: its latency.
    async fn round_trip(&mut self) -> Duration {
        let mut buf = [0u8; 8];
        let t = Instant::now();
        within(self.0.write_all(b"latency!")).await.unwrap();
        within(self.0.read_exact(&mut buf)).await.unwrap();
        let took = t.elapsed();
        assert_eq!(&buf, b"latency!");
        took
    }

    /// `n` round trips, each checked: their latencies, sorted.
    async fn round_trips(&mut self, n: usize) -> Vec<Duration> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.round_trip().await);
        }
        out.sort();
        out
    }
}

/// Echo round trips from one new client: sorted latencies.
async fn probe_latency(to: SocketAddr, n: usize) -> Vec<Duration> {
    Probe::connect(to).await.round_trips(n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tcp_connections_and_udp_peers() {
    const NAME: &str = "ten_thousand_tcp_connections_and_udp_peers";
    // The clients run in a process of their own: this one holds only the daemon's ends.
    if let Err(why) = raise_nofile(PEERS as u64 + 4096) {
        skip(NAME, why);
        return;
    }
    // Memory is measured only where /proc can say it; elsewhere that part is skipped.
    let memory = match rss_kib() {
        Ok(_) => true,
        Err(why) => {
            skip(NAME, format!("memory per connection and per peer: {why}"));
            false
        }
    };
    let d = echo_daemon().await;
    let tcp = addr_of(&d, Proto::Tcp);
    let udp = addr_of(&d, Proto::Udp);
    let idle = probe_latency(tcp, 2_000).await;
    let before = memory.then(rss_now);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/load/clients.py");
    let guard = crate::support::spawn_guard().await;
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .args([tcp.ip().to_string(), tcp.port().to_string()])
        .args([udp.ip().to_string(), udp.port().to_string()])
        .arg(PEERS.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 for the load clients");
    drop(guard);
    let mut input = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    within_for(LOAD_T, lines.read_line(&mut line))
        .await
        .unwrap();
    assert_eq!(line.trim(), format!("TCP READY {PEERS}"));
    let after = memory.then(rss_now);
    let stats = d.stats();
    assert!(stats.active >= PEERS as u64, "{stats:?}");
    let loaded = probe_latency(tcp, 2_000).await;
    println!(
        "10,000 tcp connections: echo latency p50/p99 idle {:?}/{:?}, under load {:?}/{:?}",
        percentile(&idle, 0.5),
        percentile(&idle, 0.99),
        percentile(&loaded, 0.5),
        percentile(&loaded, 0.99)
    );
    if let (Some(before), Some(after)) = (before, after) {
        let per_conn = (after.saturating_sub(before) * 1024) / PEERS as u64;
        println!("10,000 tcp connections: {per_conn} bytes of daemon RSS per connection");
        assert!(per_conn < 64 * 1024, "{per_conn} bytes per connection");
    }

    within(input.write_all(b"close-tcp\n")).await.unwrap();
    line.clear();
    within_for(LOAD_T, lines.read_line(&mut line))
        .await
        .unwrap();
    assert_eq!(line.trim(), "TCP CLOSED");
    // Every TCP connection is let go (the probes' too) before the UDP peers come, so
    // that what is active next can only be UDP peers.
    let reaped = stats_until(&d, "every TCP connection let go", |s| s.active == 0).await;
    let before = memory.then(rss_now);
    within(input.write_all(b"udp\n")).await.unwrap();
    line.clear();
    within_for(LOAD_T, lines.read_line(&mut line))
        .await
        .unwrap();
    assert_eq!(line.trim(), format!("UDP READY {PEERS}"));
    let after = memory.then(rss_now);
    let stats = d.stats();
    println!("10,000 udp peers: {stats:?}");
    assert_eq!(
        (stats.accepted - reaped.accepted, stats.active),
        (PEERS as u64, PEERS as u64),
        "every UDP peer accepted once and served at once: {stats:?}"
    );
    if let (Some(before), Some(after)) = (before, after) {
        let per_peer = (after.saturating_sub(before) * 1024) / PEERS as u64;
        println!("10,000 udp peers: {per_peer} bytes of daemon RSS per peer");
    }
    within(input.write_all(b"quit\n")).await.unwrap();
    assert!(within_for(LOAD_T, child.wait()).await.unwrap().success());
    within(d.shutdown(Duration::from_secs(5))).await;
}

/// A flood of clients that connect and drop at once does not stop the daemon from
/// serving a well-behaved client meanwhile: the daemon accepts flood connections
/// before, while and after it serves the client's round trips, nearly every flood
/// connect succeeds, and every connection is let go in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_and_drop_flood_does_not_stop_service() {
    /// Flood connects, at least.
    const FLOOD: u64 = 5_000;
    /// And at most, whatever happens.
    const FLOOD_MAX: u64 = 50_000;
    /// The daemon has accepted this many before the probe starts.
    const FIRST: u64 = 500;
    /// Connects the flood starts after the probe ends, at least (beyond the 64 it may
    /// have under way when told).
    const AFTER: u64 = 200;
    const CONCURRENT: usize = 64;
    /// The probe's round trips: as many as the flood lasts, within these bounds.
    const MIN_ROUNDS: usize = 20;
    const MAX_ROUNDS: usize = 5_000;

    #[derive(Default)]
    struct Flood {
        started: AtomicU64,
        connected: AtomicU64,
        failed: AtomicU64,
        /// No connect with this index or above is started.
        stop_at: AtomicU64,
    }

    let d = echo_daemon().await;
    let tcp = addr_of(&d, Proto::Tcp);
    let f = Arc::new(Flood {
        stop_at: AtomicU64::new(FLOOD_MAX),
        ..Flood::default()
    });
    let flood = tokio::spawn({
        let f = f.clone();
        async move {
            stream::iter(0..FLOOD_MAX)
                .take_while(|i| future::ready(*i < f.stop_at.load(SeqCst)))
                .for_each_concurrent(CONCURRENT, |_| {
                    let f = &f;
                    async move {
                        f.started.fetch_add(1, SeqCst);
                        // A connect that fails, or takes the whole time limit, counts.
                        match tokio::time::timeout(T, TcpStream::connect(tcp)).await {
                            Ok(Ok(s)) => {
                                f.connected.fetch_add(1, SeqCst);
                                drop(s);
                            }
                            Ok(Err(_)) | Err(_) => {
                                f.failed.fetch_add(1, SeqCst);
                            }
                        }
                    }
                })
                .await;
        }
    });

    // The flood is under way (or failing) before the probe starts.
    stats_until(&d, "the flood under way", |s| {
        s.accepted >= FIRST || f.failed.load(SeqCst) > FIRST / 10
    })
    .await;
    let mut probe = Probe::connect(tcp).await;
    // After one round trip the daemon serves the probe: what it accepts from here
    // until the last round trip, it accepts meanwhile.
    probe.round_trip().await;
    let at_start = d.stats();
    // Round trips until the flood is nearly through its connects: it ends after the
    // probe does.
    let mut good = Vec::new();
    while good.len() < MAX_ROUNDS
        && (good.len() < MIN_ROUNDS || f.started.load(SeqCst) < FLOOD - AFTER)
    {
        good.push(probe.round_trip().await);
    }
    good.sort();
    let at_end = d.stats();
    let started = f.started.load(SeqCst);
    f.stop_at.store(FLOOD.max(started + AFTER), SeqCst);
    drop(probe);
    assert!(
        at_start.accepted > FIRST,
        "flood accepted before the probe: {at_start:?}"
    );
    assert!(
        at_end.accepted > at_start.accepted,
        "no flood connection accepted while the probe was served: {at_start:?} {at_end:?}"
    );
    within_for(LOAD_T, flood).await.unwrap();
    let (connected, failed) = (f.connected.load(SeqCst), f.failed.load(SeqCst));
    println!(
        "during a {connected}-client connect-and-drop flood ({failed} connects failed): \
         {} echoes, p50 {:?}, p99 {:?}; the daemon accepted {} flood connections while \
         serving them",
        good.len(),
        percentile(&good, 0.5),
        percentile(&good, 0.99),
        at_end.accepted - at_start.accepted
    );
    assert!(connected + failed >= FLOOD, "{connected} + {failed}");
    assert!(
        failed * 100 <= connected + failed,
        "{failed} of {} flood connects failed",
        connected + failed
    );
    // Connects started after the probe ended are accepted too.
    stats_until(&d, "flood connections accepted after the probe", |s| {
        s.accepted >= at_end.accepted + AFTER / 2
    })
    .await;
    // The daemon still serves a newcomer, and lets go of every connection.
    probe_latency(tcp, 10).await;
    let end = stats_until(&d, "every connection let go", |s| s.active == 0).await;
    assert_eq!(end.rejected, 0, "{end:?}");
    within(d.shutdown(Duration::from_secs(5))).await;
}
