//! The TURN relay beside the direct path between two peers behind two NATs, in one lab
//! run (docs/traversal.md, "TURN relays", "Bench").
//!
//! Both routers are port-restricted cones, so a punched direct path exists (the
//! realistic case). Each peer, in its own namespace, opens four pipes to the other:
//! a punched UDP pipe (`punch::udp`) and a punched TCP pipe (`punch::tcp`), agreed over
//! the lab's mosquitto; a relayed UDP pipe (both peers allocate on the lab's coturn and
//! send relay to relay, as lab/turn.rs does); and an RFC 6062 relayed TCP pipe (peer
//! 2's TCP allocation accepts a connection that peer 1 opens to its relayed address).
//! Peer 2 echoes the UDP pipes and checks and acknowledges every MiB on the TCP ones;
//! peer 1 measures, direct and relay alternating round by round as
//! `benches/interleave` does, and reports the median of the per-round rate ratios
//! (relay/direct) and their range:
//!
//! - UDP round trips: 100 B sent and its echo awaited, 200 times a round;
//! - UDP bulk: 64 windows of 16 datagrams of 1 KB, each window's echoes awaited;
//! - TCP bulk: 1 MiB written, the peer's acknowledgement of the last byte awaited.
//!
//! It asserts only that every byte arrived and every echo matched; the times are
//! figures, printed and written to `target/traversal/turn-bench.md`. Run with
//! `cargo test --release --test integration lab::bench -- --ignored --nocapture`;
//! `P2PIPE_ROUNDS` sets the rounds (default 15).

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use p2pipe::signal::{Signaller, SignallerConfig};
use p2pipe::traverse::punch::tcp::{self, PunchPort};
use p2pipe::traverse::punch::{udp, NatSummary};
use p2pipe::traverse::turn::{Relay, Transport, TurnServer};
use p2pipe::{Pipe, Proto};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use super::{lab_or_skip, punch, tcppunch, turn, write_traversal_table, Lab, NatKind, LAB_T};

#[allow(dead_code)] // The benches' runtime helpers are not used here.
#[path = "../../../benches/interleave/mod.rs"]
mod interleave;
use interleave::{compare, Compared, Side};

const ROUND_TRIPS: usize = 200;
const WINDOWS: usize = 64;
const WINDOW: usize = 16;
const BULK: usize = 1 << 20;
/// The limit of each punch.
const PUNCH_LIMIT: Duration = Duration::from_secs(8);
/// How long an echo or an acknowledgement may take before the run fails.
const ECHO_T: Duration = Duration::from_secs(2);
/// The limit of the whole run, setup and measurement, on either side.
const RUN_T: Duration = Duration::from_secs(240);

/// The rounds of each comparison: `P2PIPE_ROUNDS`, or 15.
fn rounds() -> usize {
    std::env::var("P2PIPE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

/// The byte at `offset` of the TCP bulk stream.
fn pattern(offset: usize) -> u8 {
    (offset % 251) as u8
}

/// What one side tells the other (as signalling would) and when.
struct Told {
    /// Its UDP relayed address.
    relayed: oneshot::Sender<SocketAddr>,
    /// The other's UDP relayed address.
    other: oneshot::Receiver<SocketAddr>,
}

/// The four pipes of one side, and the relays that carry two of them.
struct Pipes {
    udp: Pipe,
    tcp: Pipe,
    relayed_udp: Pipe,
    relayed_tcp: Pipe,
    relays: Vec<Relay>,
}

/// Within the run's limit, or a panic naming what did not finish.
async fn within<F: std::future::Future>(what: &str, limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// Peer `n`'s two punched pipes, UDP then TCP, over one signaller.
async fn punched(n: usize, lab: &Peer, node: &Signaller) -> (Pipe, Pipe) {
    let socket = UdpSocket::bind(lab.bind)
        .await
        .expect("the punching socket");
    let cfg = udp::Config {
        stun: vec![lab.stun[0]],
        nat: NatSummary::of_type(NatKind::PortRestrictedCone.nat_type()),
        limit: PUNCH_LIMIT,
        ..udp::Config::default()
    };
    let udp = (punch::punched(n, node, socket, &cfg).await)
        .unwrap_or_else(|e| panic!("peer {n}: udp punch: {e}"));
    let port = PunchPort::bind((lab.bind.ip(), 0).into(), None).expect("the tcp punch port");
    let cfg = tcp::Config {
        stun: lab.stun.to_vec(),
        limit: PUNCH_LIMIT,
        ..tcp::Config::new(tcppunch::tcp_summary(NatKind::PortRestrictedCone))
    };
    let tcp = (tcppunch::punched_as(n, punch::identity, node, port, &cfg).await)
        .unwrap_or_else(|e| panic!("peer {n}: tcp punch: {e}"));
    (udp, tcp)
}

/// Peer `n`'s relayed UDP pipe: allocate, tell the relayed address, learn the other's.
async fn relayed_udp(n: usize, server: &TurnServer, told: Told) -> (Relay, Pipe) {
    let relay = (Relay::allocate(server, Transport::Udp, turn::LIMIT).await)
        .unwrap_or_else(|e| panic!("peer {n}: allocate: {e}"));
    let _ = told.relayed.send(relay.relayed_addr());
    let other = within("the other's relayed address", LAB_T, told.other)
        .await
        .expect("the other side failed");
    let pipe =
        (relay.pipe(other).await).unwrap_or_else(|e| panic!("peer {n}: relay to {other}: {e}"));
    (relay, pipe)
}

/// What a peer needs from the lab, outside its namespace.
struct Peer {
    bind: SocketAddr,
    stun: [SocketAddr; 2],
    broker: String,
    server: TurnServer,
}

impl Peer {
    fn of(lab: &Lab, n: usize) -> Peer {
        Peer {
            bind: (lab.peer_ip(n), punch::PORT).into(),
            stun: [lab.stun_primary(), lab.stun_alternate()],
            broker: format!("mqtt://{}", lab.broker()),
            server: turn::server(lab),
        }
    }
}

/// Peer `n`'s signaller on the lab's broker.
async fn signaller(n: usize, peer: &Peer) -> Signaller {
    let brokers = std::slice::from_ref(&peer.broker);
    (Signaller::start(punch::identity(n), brokers, SignallerConfig::default()).await)
        .expect("signaller on the lab's broker")
}

/// What both peers open alike: the signaller, once both have one, the punched UDP and
/// TCP pipes, and the relayed UDP pipe with its relay.
async fn opened(
    n: usize,
    peer: &Peer,
    ready: &Barrier,
    told: Told,
) -> (Signaller, Pipe, Pipe, Relay, Pipe) {
    let node = signaller(n, peer).await;
    ready.wait();
    let (udp, tcp) = punched(n, peer, &node).await;
    let (relay, relayed_udp) = relayed_udp(n, &peer.server, told).await;
    (node, udp, tcp, relay, relayed_udp)
}

/// Peer 1: opens the four pipes, waits until peer 2's relayed pipe is up, measures,
/// then tells peer 2 it is done.
async fn measurer(
    peer: Peer,
    ready: Arc<Barrier>,
    told: Told,
    tcp_relayed: oneshot::Receiver<SocketAddr>,
    relay_up: oneshot::Receiver<()>,
    done: oneshot::Sender<()>,
) -> [Compared; 3] {
    let (node, udp, tcp, relay, relayed_udp) = opened(1, &peer, &ready, told).await;
    let at = within("peer 2's relayed tcp address", LAB_T, tcp_relayed)
        .await
        .expect("peer 2 failed");
    let relayed_tcp = (Pipe::connect(Proto::Tcp, at).await)
        .unwrap_or_else(|e| panic!("peer 1: tcp to the relayed {at}: {e}"));
    within("peer 2's relayed pipe", LAB_T, relay_up)
        .await
        .expect("peer 2 failed");
    let pipes = Pipes {
        udp,
        tcp,
        relayed_udp,
        relayed_tcp,
        relays: vec![relay],
    };
    let figures = measure(&pipes).await;
    let _ = done.send(());
    hang_up(pipes).await;
    node.stop().await;
    figures
}

/// The three comparisons, direct (as "raw") beside relay.
async fn measure(p: &Pipes) -> [Compared; 3] {
    let rounds = rounds();
    let (mut d, mut r) = (
        RoundTrip(p.udp.clone(), 0),
        RoundTrip(p.relayed_udp.clone(), 0),
    );
    let rt = compare("udp_round_trip_100B", "relay", rounds, &mut d, &mut r).await;
    let (mut d, mut r) = (Bulk(p.udp.clone()), Bulk(p.relayed_udp.clone()));
    let bulk = compare("udp_bulk_1KB", "relay", rounds, &mut d, &mut r).await;
    let mib: Arc<[u8]> = (0..BULK).map(pattern).collect();
    let (mut d, mut r) = (
        TcpBulk(p.tcp.clone(), mib.clone()),
        TcpBulk(p.relayed_tcp.clone(), mib),
    );
    let tcp = compare("tcp_bulk_1MB", "relay", rounds, &mut d, &mut r).await;
    [rt, bulk, tcp].map(|c| c.expect("P2PIPE_ONLY is not set for this run"))
}

async fn hang_up(p: Pipes) {
    for pipe in [p.udp, p.tcp, p.relayed_udp, p.relayed_tcp] {
        pipe.close().await;
    }
    for relay in p.relays {
        let _ = relay.close().await;
    }
}

/// 100 B round trips; each echo must be the datagram sent.
struct RoundTrip(Pipe, u32);
impl Side for RoundTrip {
    async fn round(&mut self) -> Duration {
        let mut data = [7u8; 100];
        let t = Instant::now();
        for _ in 0..ROUND_TRIPS {
            self.1 += 1;
            data[..4].copy_from_slice(&self.1.to_le_bytes());
            self.0.send(data).await.expect("send");
            let m = self.0.recv_timeout(ECHO_T).await.expect("the echo");
            assert_eq!(&m.data[..], &data[..], "the echo of round trip {}", self.1);
        }
        t.elapsed()
    }
}

/// Windows of 1 KB datagrams; every one of a window must come back, intact.
struct Bulk(Pipe);
impl Side for Bulk {
    async fn round(&mut self) -> Duration {
        let mut data = [7u8; 1024];
        let t = Instant::now();
        for w in 0..WINDOWS {
            for i in 0..WINDOW {
                data[0] = i as u8;
                data[1] = w as u8;
                self.0.send(data).await.expect("send");
            }
            let mut seen = 0u32;
            for _ in 0..WINDOW {
                let m = (self.0.recv_timeout(ECHO_T).await)
                    .unwrap_or_else(|e| panic!("window {w}: an echo lost: {e}"));
                let i = usize::from(m.data[0]);
                data[0] = m.data[0];
                assert_eq!(&m.data[..], &data[..], "window {w}: echo {i}");
                seen |= 1 << i;
            }
            assert_eq!(
                seen,
                (1 << WINDOW) - 1,
                "window {w}: each datagram echoed once"
            );
        }
        t.elapsed()
    }
}

/// 1 MiB of the pattern (built once) in 64 KiB writes, acknowledged by the peer after
/// it checked every byte.
struct TcpBulk(Pipe, Arc<[u8]>);
impl Side for TcpBulk {
    async fn round(&mut self) -> Duration {
        let t = Instant::now();
        for chunk in self.1.chunks(64 << 10) {
            self.0.send_raw(chunk).await.expect("send");
        }
        let ack = self
            .0
            .recv_timeout(ECHO_T)
            .await
            .expect("the acknowledgement");
        assert_eq!(&ack.data[..], b"k", "the peer got 1 MiB of the pattern");
        t.elapsed()
    }
}

/// Peer 2: opens the four pipes, echoes the UDP ones and checks the TCP ones until
/// peer 1 is done; gives the MiBs each TCP pipe delivered intact.
async fn echoer(
    peer: Peer,
    ready: Arc<Barrier>,
    told: Told,
    tcp_relayed: oneshot::Sender<SocketAddr>,
    relay_up: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
    dialer: std::net::Ipv4Addr,
) -> [usize; 2] {
    let (node, udp, tcp, relay, relayed_udp) = opened(2, &peer, &ready, told).await;
    let tcp_relay = (Relay::allocate_tcp(&peer.server, turn::LIMIT).await)
        .unwrap_or_else(|e| panic!("peer 2: allocate tcp: {e}"));
    // Peer 1 is seen at its router's WAN address; the permission is per address.
    (tcp_relay.permit((dialer, 1).into()).await).expect("peer 2: permit peer 1");
    let _ = tcp_relayed.send(tcp_relay.relayed_addr());
    let (relayed_tcp, _) = within("peer 1's relayed tcp", LAB_T, tcp_relay.accept_tcp())
        .await
        .expect("peer 2: accept tcp");
    let _ = relay_up.send(());
    for pipe in [&udp, &relayed_udp] {
        pipe.on_message(|m, reply| async move { reply.send(&m.data).await })
            .expect("an echo");
    }
    let sinks = [tcp.clone(), relayed_tcp.clone()].map(|p| tokio::spawn(check_mibs(p)));
    within("peer 1's measurement", RUN_T, done)
        .await
        .expect("peer 1 failed");
    let pipes = Pipes {
        udp,
        tcp,
        relayed_udp,
        relayed_tcp,
        relays: vec![relay, tcp_relay],
    };
    hang_up(pipes).await;
    node.stop().await;
    let mut mibs = [0; 2];
    for (m, sink) in mibs.iter_mut().zip(sinks) {
        *m = within("a tcp check", ECHO_T, sink)
            .await
            .expect("the check");
    }
    mibs
}

/// Checks every byte that `pipe` brings against the pattern and answers `k` after each
/// whole MiB (`x` if one byte of it was wrong); the MiBs that were whole, when the
/// pipe ends.
async fn check_mibs(pipe: Pipe) -> usize {
    let (mut at, mut wrong, mut whole) = (0, false, 0);
    while let Ok(m) = pipe.recv().await {
        for &b in &m.data[..] {
            wrong |= b != pattern(at);
            at += 1;
            if at == BULK {
                let _ = pipe.send_raw(if wrong { b"x" } else { b"k" }).await;
                whole += usize::from(!wrong);
                (at, wrong) = (0, false);
            }
        }
    }
    whole
}

/// A row of the table: what is measured, each side's median round as a rate, the
/// ratio and its range.
fn row(what: &str, c: &Compared, rate: impl Fn(Duration) -> String) -> String {
    format!(
        "| {what} | {} | {} | {:.2}x | {:.2}-{:.2}x |\n",
        rate(c.raw),
        rate(c.ours),
        c.median,
        c.lo,
        c.hi
    )
}

/// The table (only the table: `scripts/traversal-tables` copies it into
/// docs/traversal.md). UDP bulk counts the bytes both ways, sent and echoed.
fn table([rt, bulk, tcp]: &[Compared; 3]) -> String {
    let per_rt = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6 / ROUND_TRIPS as f64);
    let mbps = |bytes: usize| {
        move |d: Duration| format!("{:.1} MB/s", bytes as f64 / d.as_secs_f64() / 1e6)
    };
    format!(
        "| measured | direct | relay | relay/direct | range |\n\
         |---|---|---|---|---|\n{}{}{}",
        row("UDP round trip, 100 B", rt, per_rt),
        row(
            "UDP bulk, windows of 16 x 1 KB echoed",
            bulk,
            mbps(2 * WINDOWS * WINDOW * 1024)
        ),
        row("TCP bulk, 1 MiB", tcp, mbps(BULK)),
    )
}

#[test]
#[ignore = "a measurement (a minute): cargo test --release --test integration lab::bench -- --ignored --nocapture"]
fn relay_beside_direct() {
    lab_or_skip!();
    let kind = NatKind::PortRestrictedCone;
    let lab = Lab::builder().peers(kind, kind).build();
    let ready = Arc::new(Barrier::new(2));
    let (relayed1, other2) = oneshot::channel();
    let (relayed2, other1) = oneshot::channel();
    let (tcp_tell, tcp_told) = oneshot::channel();
    let (up_tell, up_told) = oneshot::channel();
    let (done_tell, done_told) = oneshot::channel();
    let told1 = Told {
        relayed: relayed1,
        other: other1,
    };
    let told2 = Told {
        relayed: relayed2,
        other: other2,
    };
    let (p1, p2) = (Peer::of(&lab, 1), Peer::of(&lab, 2));
    let r = ready.clone();
    let one = lab.spawn_in(lab.ns_peer(1), move || {
        turn::runtime().block_on(measurer(p1, r, told1, tcp_told, up_told, done_tell))
    });
    let dialer = lab.wan_ip(1);
    let two = lab.spawn_in(lab.ns_peer(2), move || {
        turn::runtime().block_on(echoer(
            p2, ready, told2, tcp_tell, up_tell, done_told, dialer,
        ))
    });
    let figures = one.join_within(RUN_T);
    let mibs = two.join_within(LAB_T);
    // Each TCP pipe carried a warm-up MiB and one per round, all intact.
    assert_eq!(mibs, [rounds() + 1; 2], "MiBs intact: direct, relay");
    println!(
        "Peers behind {} and {} routers; relay/direct is the relayed rate over the direct \
         one (the median of the per-round ratios, and their range):",
        lab.kind(1),
        lab.kind(2)
    );
    write_traversal_table("turn-bench", &table(&figures));
}
