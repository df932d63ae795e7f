//! TCP hole punching on loopback, over 127.0.0.1 and ::1: two nodes agree a punch
//! through a real mosquitto and talk through the pipes it gives them; refusals come at
//! once on both sides. The scheduler's own cases (a wrong host, another key, a refusing
//! candidate, nothing sent when refused) run on plans the test builds. The NAT cases
//! are in `lab/tcppunch.rs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use p2pipe::nat::PortAllocation;
use p2pipe::signal::{Incoming, Signaller};
use p2pipe::traverse::punch::tcp::{
    self, Error, HelloKey, Inbound, PunchPort, TcpMapping, TcpNatSummary, TcpRefusal,
};
use p2pipe::traverse::punch::{Plan, Role, SessionKey};
use p2pipe::{Pipe, Proto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::mosquitto::Mosquitto;
use crate::punch::signaller;
use crate::stun::server::TestServer;
use crate::support::{loopbacks, within, SHORT};

/// A host with no NAT behind a stateful firewall: a simultaneous open is needed.
const FIREWALLED: TcpNatSummary = TcpNatSummary {
    mapping: TcpMapping::Direct,
    inbound: Inbound::Filtered,
};
const OPEN: TcpNatSummary = TcpNatSummary {
    mapping: TcpMapping::Direct,
    inbound: Inbound::Open,
};
const RANDOM: TcpNatSummary = TcpNatSummary {
    mapping: TcpMapping::Translated(Some(PortAllocation::Random)),
    inbound: Inbound::Filtered,
};

const LIMIT: Duration = Duration::from_secs(5);
const RTT: Duration = Duration::from_millis(2);

fn key() -> HelloKey {
    HelloKey::from(&SessionKey::derive(&[1; 16], &[2; 16], Proto::Tcp))
}

fn plan(remote: Vec<SocketAddr>, role: Role, start: Instant) -> Plan {
    Plan {
        remote,
        start,
        rtt: RTT,
        role,
    }
}

fn port(ip: IpAddr) -> PunchPort {
    PunchPort::bind(SocketAddr::new(ip, 0), None).unwrap()
}

async fn ping_pong(a: &mut TcpStream, b: &mut TcpStream) {
    within(a.write_all(b"ping")).await.unwrap();
    let mut buf = [0u8; 4];
    within(b.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"ping");
    within(b.write_all(b"pong")).await.unwrap();
    within(a.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"pong");
}

/// One side of a loopback punch: its port, the peer's candidates, the NATs it is told
/// of (its own first) and its key.
struct Side {
    port: PunchPort,
    remote: Vec<SocketAddr>,
    nats: (TcpNatSummary, TcpNatSummary),
    key: HelloKey,
}

type Punched = Result<TcpStream, Error>;

/// Punches `a` (the initiator) and `b` (the responder) at once, both starting at
/// `start`, each within `limit`.
async fn punch_both(a: Side, b: Side, start: Instant, limit: Duration) -> (Punched, Punched) {
    let run = |s: Side, role| async move {
        let p = plan(s.remote, role, start);
        (s.port)
            .punch(&p, &s.nats.0, &s.nats.1, &s.key, limit)
            .await
    };
    within(async { tokio::join!(run(a, Role::Initiator), run(b, Role::Responder)) }).await
}

/// A firewalled side punching from `port` to `remote` with the test's key.
fn firewalled(port: PunchPort, remote: SocketAddr) -> Side {
    Side {
        port,
        remote: vec![remote],
        nats: (FIREWALLED, FIREWALLED),
        key: key(),
    }
}

type Piped = Result<Pipe, Error>;

/// The responder: waits for a TCP punch offer and answers it from a port on `ip`.
async fn answer_one(node: &Signaller, ip: IpAddr, cfg: &tcp::Config) -> Piped {
    loop {
        let incoming = node.recv().await.expect("signaller running");
        if !tcp::is_offer(&incoming) {
            continue;
        }
        let Incoming::Request(offer) = incoming else {
            unreachable!("an offer is a request")
        };
        return tcp::answer(node, &offer, port(ip), cfg).await;
    }
}

/// Both sides of one punch over signalling, at once: `alice` connects from `from`,
/// `bob` answers.
async fn punch_pair(
    (alice, from): (&Signaller, PunchPort),
    bob: &Signaller,
    a: &tcp::Config,
    b: &tcp::Config,
) -> (Piped, Piped) {
    let ip = from.local_addr().ip();
    let bob_key = bob.identity().public();
    within(async {
        tokio::join!(
            tcp::connect(alice, &bob_key, from, a),
            answer_one(bob, ip, b)
        )
    })
    .await
}

/// One message each way; the pipes are TCP pipes between the two ends.
async fn talk(a: &Pipe, b: &Pipe) {
    assert_eq!(a.peer_addr(), Some(b.local_addr()));
    assert_eq!(b.peer_addr(), Some(a.local_addr()));
    a.send(b"hello bob").await.unwrap();
    let m = within(b.recv()).await.unwrap();
    assert_eq!((&m.data[..], m.proto), (&b"hello bob"[..], Proto::Tcp));
    b.send(b"hello alice").await.unwrap();
    let m = within(a.recv()).await.unwrap();
    assert_eq!(&m.data[..], b"hello alice");
}

#[tokio::test]
async fn two_firewalled_nodes_punch_a_tcp_connection_over_signalling_and_talk_through_the_pipes() {
    const TEST: &str = "tcppunch::two_firewalled_nodes_punch_over_signalling";
    for ip in loopbacks(TEST) {
        let Some(broker) = Mosquitto::start(TEST, ip).await else {
            return;
        };
        let cfg = tcp::Config::new(FIREWALLED);
        let (alice, bob) = (signaller(1, &broker).await, signaller(2, &broker).await);
        let from = port(ip);
        let at = from.local_addr();
        let started = Instant::now();
        let (a, b) = punch_pair((&alice, from), &bob, &cfg, &cfg).await;
        let (a, b) = (a.expect("alice punched"), b.expect("bob answered"));
        assert!(
            started.elapsed() < cfg.limit / 2,
            "{ip}: {:?}",
            started.elapsed()
        );
        assert_eq!(a.local_addr(), at, "{ip}: from the punching port");
        talk(&a, &b).await;
        within(alice.stop()).await;
        within(bob.stop()).await;
    }
}

#[tokio::test]
async fn the_mapping_is_learned_by_stun_over_tcp_from_the_punching_port_and_offered() {
    const TEST: &str = "tcppunch::the_mapping_is_learned_by_stun_over_tcp";
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let Some(broker) = Mosquitto::start(TEST, ip).await else {
        return;
    };
    let server = within(TestServer::start(
        ip,
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
    ))
    .await
    .unwrap();
    // Bound to the wildcard address, a port has no address of its own to offer: only
    // the mapping STUN saw (no NAT on loopback: 127.0.0.1 and the port) reaches it.
    let wildcard = |_| PunchPort::bind((Ipv4Addr::UNSPECIFIED, 0).into(), None).unwrap();
    let cfg = tcp::Config {
        stun: vec![server.primary()],
        ..tcp::Config::new(FIREWALLED)
    };
    let (alice, bob) = (signaller(3, &broker).await, signaller(4, &broker).await);
    let from = wildcard(());
    let at = from.local_addr().port();
    let bob_key = bob.identity().public();
    let answer = async {
        loop {
            let incoming = bob.recv().await.expect("signaller running");
            if let (true, Incoming::Request(offer)) = (tcp::is_offer(&incoming), &incoming) {
                return tcp::answer(&bob, offer, wildcard(()), &cfg).await;
            }
        }
    };
    let (a, b) =
        within(async { tokio::join!(tcp::connect(&alice, &bob_key, from, &cfg), answer) }).await;
    let (a, b) = (a.expect("alice punched"), b.expect("bob answered"));
    assert!(server.requests() >= 2, "both sides asked stun over tcp");
    assert_eq!(a.local_addr(), SocketAddr::new(ip, at));
    talk(&a, &b).await;
    within(alice.stop()).await;
    within(bob.stop()).await;
}

#[tokio::test]
async fn two_random_nats_refuse_a_tcp_punch_at_once_on_both_sides_naming_the_reason() {
    const TEST: &str = "tcppunch::two_random_nats_refuse_at_once";
    for ip in loopbacks(TEST) {
        let Some(broker) = Mosquitto::start(TEST, ip).await else {
            return;
        };
        let cfg = tcp::Config::new(RANDOM);
        let (alice, bob) = (signaller(5, &broker).await, signaller(6, &broker).await);
        let started = Instant::now();
        let (a, b) = punch_pair((&alice, port(ip)), &bob, &cfg, &cfg).await;
        assert!(
            started.elapsed() < cfg.limit / 10,
            "{ip}: {:?}",
            started.elapsed()
        );
        for (who, got, other) in [("alice", a, &bob), ("bob", b, &alice)] {
            let err = got.expect_err(who);
            let text = err.to_string();
            assert!(
                matches!(
                    err,
                    Error::Rendezvous(p2pipe::traverse::punch::Error::TcpRefused {
                        refusal: TcpRefusal::Unpredictable { .. },
                        ..
                    })
                ),
                "{ip}: {who}: {text}"
            );
            let peer = other.identity().node_id().to_string();
            assert!(text.contains(&peer), "{ip}: {who}: {text}");
            assert!(text.contains("unpredictable"), "{ip}: {who}: {text}");
        }
        within(alice.stop()).await;
        within(bob.stop()).await;
    }
}

#[tokio::test]
async fn an_open_side_accepts_a_peer_connecting_from_any_port() {
    for ip in loopbacks("an_open_side_accepts_a_peer_connecting_from_any_port") {
        let (open, behind) = (port(ip), port(ip));
        let at_open = open.local_addr();
        let behind = Side {
            nats: (RANDOM, OPEN),
            ..firewalled(behind, at_open)
        };
        // The open side has nothing to connect to: the peer's ports are unpredictable.
        let open = Side {
            port: open,
            remote: vec![],
            nats: (OPEN, RANDOM),
            key: key(),
        };
        let (rb, ro) = punch_both(behind, open, Instant::now(), LIMIT).await;
        let (mut so, mut sb) = (ro.unwrap(), rb.unwrap());
        assert_eq!(so.local_addr().unwrap(), at_open, "{ip}");
        ping_pong(&mut sb, &mut so).await;
    }
}

#[tokio::test]
async fn two_unpredictable_sides_are_refused_at_once_and_nothing_is_sent() {
    for ip in loopbacks("two_unpredictable_sides_are_refused_at_once_and_nothing_is_sent") {
        let watcher = within(tokio::net::TcpListener::bind((ip, 0)))
            .await
            .unwrap();
        let a = port(ip);
        let local = a.local_addr();
        let p = plan(
            vec![watcher.local_addr().unwrap()],
            Role::Initiator,
            Instant::now(),
        );
        let started = Instant::now();
        let err = within(a.punch(&p, &RANDOM, &RANDOM, &key(), LIMIT))
            .await
            .unwrap_err();
        assert!(started.elapsed() < LIMIT / 10, "{ip}: refused at once");
        assert!(
            matches!(
                err,
                Error::Refused {
                    refusal: TcpRefusal::Unpredictable { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&local.to_string()), "{err}");
        assert!(err.to_string().contains("unpredictable"), "{err}");
        let nothing = tokio::time::timeout(SHORT, watcher.accept()).await;
        assert!(
            nothing.is_err(),
            "{ip}: the refused punch connected: {nothing:?}"
        );
    }
}

#[tokio::test]
async fn a_candidate_that_refuses_times_out_naming_it_and_its_error() {
    for ip in loopbacks("a_candidate_that_refuses_times_out_naming_it_and_its_error") {
        // A port that was just free: connecting to it is refused (RST).
        let closed = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let a = port(ip);
        let limit = Duration::from_millis(300);
        let p = plan(vec![closed], Role::Initiator, Instant::now());
        let started = Instant::now();
        let err = within(a.punch(&p, &FIREWALLED, &FIREWALLED, &key(), limit))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= limit && took < limit + Duration::from_secs(1),
            "{ip}: {took:?}"
        );
        let text = err.to_string();
        assert!(matches!(err, Error::TimedOut { .. }), "{text}");
        assert!(
            text.contains(&format!("{closed} (connection refused)")),
            "{text}"
        );
        assert!(text.contains(&a_local(&text)), "{text}");
    }
}

/// The punching port named first in a timeout message.
fn a_local(text: &str) -> String {
    text.trim_start_matches("tcp punch from ")
        .split(' ')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_connection_to_this_host_itself_is_refused_by_the_hello() {
    for ip in loopbacks("a_connection_to_this_host_itself_is_refused_by_the_hello") {
        let a = port(ip);
        let me = a.local_addr();
        // The peer's "candidate" is this very port: the connection reaches ourselves.
        let p = plan(vec![me], Role::Initiator, Instant::now());
        let err = within(a.punch(
            &p,
            &FIREWALLED,
            &FIREWALLED,
            &key(),
            Duration::from_millis(500),
        ))
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("{me} (wrong host")), "{ip}: {text}");
    }
}

#[tokio::test]
async fn a_peer_with_another_key_is_never_taken() {
    for ip in loopbacks("a_peer_with_another_key_is_never_taken") {
        let (a, b) = (port(ip), port(ip));
        let (at_a, at_b) = (a.local_addr(), b.local_addr());
        let limit = Duration::from_millis(500);
        let b = Side {
            key: HelloKey::new([9; 32]),
            ..firewalled(b, at_a)
        };
        let (ra, rb) = punch_both(firewalled(a, at_b), b, Instant::now(), limit).await;
        let (ea, eb) = (ra.unwrap_err(), rb.unwrap_err());
        assert!(matches!(ea, Error::TimedOut { .. }), "{ip}: {ea}");
        // The responder hears the offer under the wrong key, on the connection it made
        // or accepted, and names it.
        let eb = eb.to_string();
        assert!(
            eb.contains("wrong host: a hello under another key"),
            "{ip}: {eb}"
        );
    }
}
