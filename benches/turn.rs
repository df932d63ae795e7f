//! Round trips and bulk transfer through a TURN relay (a local coturn), beside the
//! direct path, interleaved round by round; the ratios are the relay's cost.
//!
//! - `udp_round_trip_100B`: a UDP pipe sends 100 B to an echo peer and waits for the
//!   echo, 200 times a round. Direct: a plain UDP pipe to the peer. Relay: a relayed
//!   pipe (`Relay::pipe`, ChannelData over UDP to coturn) to the same peer.
//! - `udp_bulk_1KB`: 64 windows of 16 datagrams of 1 KB, each window's echoes awaited
//!   (a lost datagram ends its window after 200 ms and is counted), both ways as above.
//! - `tcp_bulk_1MB`: 1 MiB written to a TCP peer that acknowledges the last byte.
//!   Direct: a TCP pipe. Relay: an RFC 6062 connection through coturn
//!   (`Relay::connect_tcp`).
//!
//! The bench starts its own coturn on a free loopback port (and says so and stops if
//! coturn is not installed). As in `benches/signal.rs`, the figure to quote is the
//! median of the per-round ratios (`relay/raw` is the relayed rate over the direct
//! rate: 0.50x means half as fast), on a 2-worker runtime and then on a current-thread
//! one.
//!
//! Run with `cargo bench --bench turn`; `P2PIPE_ROUNDS` sets the rounds (default 15).
//! See docs/traversal.md.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p2pipe::traverse::turn::{Credentials, Relay, Transport, TurnServer};
use p2pipe::{Pipe, Proto};

mod interleave;
use interleave::{compare, Side};

const ROUND_TRIPS: usize = 200;
const WINDOWS: usize = 64;
const WINDOW: usize = 16;
const BULK: usize = 1 << 20;

/// A coturn of the bench's own, killed on drop.
struct Coturn {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Coturn {
    /// Starts coturn on a free port of 127.0.0.1 (UDP and TCP) and waits until it
    /// accepts TCP connections; `None` if coturn is not installed.
    fn start() -> Option<Coturn> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let program = std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
            .map(|d| d.join("turnserver"))
            .find(|p| p.is_file())?;
        let dir = tempfile::tempdir().expect("temp dir");
        let port = loop {
            let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
            let port = l.local_addr().expect("addr").port();
            if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                break port;
            }
        };
        let d = |f: &str| dir.path().join(f).display().to_string();
        let child = Command::new(program)
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--lt-cred-mech"])
            .args(["--user", "u:p", "--realm", "r", "--allow-loopback-peers"])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args([
                "--log-file",
                &d("turn.log"),
                "--simple-log",
                "--no-stdout-log",
            ])
            .args(["--pidfile", &d("turn.pid"), "--db", &d("turndb")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnserver");
        let coturn = Coturn {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(coturn.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "coturn did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Some(coturn)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP echo peer on loopback.
async fn udp_echo() -> Pipe {
    let echo = Pipe::listen(Proto::Udp, "127.0.0.1:0")
        .await
        .expect("listen");
    let server = echo.clone();
    tokio::spawn(async move {
        while let Ok(peer) = server.accept().await {
            let _ = peer.on_message(|m, reply| async move { reply.send(&m.data).await });
        }
    });
    echo
}

/// Ping-pong of 100 B on a UDP pipe.
struct RoundTrip(Pipe);
impl Side for RoundTrip {
    async fn round(&mut self) -> Duration {
        let data = [7u8; 100];
        let t = Instant::now();
        for _ in 0..ROUND_TRIPS {
            self.0.send(data).await.expect("send");
            self.0.recv().await.expect("the echo");
        }
        t.elapsed()
    }
}

/// Windows of 1 KB datagrams on a UDP pipe; lost ones are counted.
struct Bulk(Pipe, u64);
impl Side for Bulk {
    async fn round(&mut self) -> Duration {
        let data = [7u8; 1024];
        let t = Instant::now();
        for _ in 0..WINDOWS {
            for _ in 0..WINDOW {
                self.0.send(data).await.expect("send");
            }
            for _ in 0..WINDOW {
                if self
                    .0
                    .recv_timeout(Duration::from_millis(200))
                    .await
                    .is_err()
                {
                    self.1 += 1;
                    break;
                }
            }
        }
        t.elapsed()
    }
}

/// 1 MiB on a TCP pipe (raw framing), acknowledged by the peer's one byte at the end.
struct TcpBulk(Pipe);
impl Side for TcpBulk {
    async fn round(&mut self) -> Duration {
        let chunk = vec![7u8; 64 << 10];
        let t = Instant::now();
        for _ in 0..BULK / chunk.len() {
            self.0.send_raw(&chunk).await.expect("send");
        }
        self.0.recv().await.expect("the acknowledgement");
        t.elapsed()
    }
}

/// A TCP peer that answers one byte per MiB received.
async fn tcp_sink() -> Pipe {
    let l = Pipe::listen(Proto::Tcp, "127.0.0.1:0")
        .await
        .expect("listen");
    let server = l.clone();
    tokio::spawn(async move {
        while let Ok(conn) = server.accept().await {
            tokio::spawn(async move {
                let mut got = 0;
                while let Ok(m) = conn.recv().await {
                    got += m.data.len();
                    if got >= BULK {
                        got -= BULK;
                        let _ = conn.send_raw(b"k").await;
                    }
                }
            });
        }
    });
    l
}

fn main() {
    let Some(coturn) = Coturn::start() else {
        println!("turn bench: coturn is not installed (apt-get install coturn); skipped");
        return;
    };
    let mut server = TurnServer::new(coturn.addr, Credentials::new("u", "p").expect("creds"));
    server.realm = Some("r".into());
    interleave::on_both_runtimes(move |rounds| {
        let server = server.clone();
        async move { all(&server, rounds).await }
    });
}

async fn all(server: &TurnServer, rounds: usize) {
    let limit = Duration::from_secs(5);
    let echo = udp_echo().await;
    let relay = Relay::allocate(server, Transport::Udp, limit)
        .await
        .expect("allocate");
    let direct = Pipe::connect(Proto::Udp, echo.local_addr())
        .await
        .expect("connect");
    let relayed = relay.pipe(echo.local_addr()).await.expect("relayed pipe");
    let (mut d, mut r) = (RoundTrip(direct.clone()), RoundTrip(relayed.clone()));
    compare("udp_round_trip_100B", "relay", rounds, &mut d, &mut r).await;
    let (mut d, mut r) = (Bulk(direct, 0), Bulk(relayed, 0));
    compare("udp_bulk_1KB", "relay", rounds, &mut d, &mut r).await;
    println!("windows cut short by a loss: direct {}, relay {}", d.1, r.1);

    let sink = tcp_sink().await;
    let tcp = Relay::allocate_tcp(server, limit)
        .await
        .expect("allocate tcp");
    let direct = Pipe::connect(Proto::Tcp, sink.local_addr())
        .await
        .expect("connect");
    let relayed = tcp
        .connect_tcp(sink.local_addr())
        .await
        .expect("relayed tcp");
    compare(
        "tcp_bulk_1MB",
        "relay",
        rounds,
        &mut TcpBulk(direct),
        &mut TcpBulk(relayed),
    )
    .await;
    let _ = relay.close().await;
}
