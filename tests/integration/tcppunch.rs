//! TCP hole punching on loopback: two punch ports open one connection by a plan the
//! test builds (no signalling), over 127.0.0.1 and ::1; refusals, a wrong host and a
//! silent candidate end in clear errors within the time limit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use p2pipe::nat::PortAllocation;
use p2pipe::traverse::punch::tcp::{
    Error, HelloKey, Inbound, PunchPort, TcpMapping, TcpNatSummary, TcpRefusal,
};
use p2pipe::traverse::punch::{Plan, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    HelloKey::from_nonces(b"loopback initiator", b"loopback responder")
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

#[tokio::test]
async fn two_firewalled_ports_open_one_connection_at_the_agreed_moment() {
    for ip in loopbacks("two_firewalled_ports_open_one_connection_at_the_agreed_moment") {
        let (a, b) = (port(ip), port(ip));
        let (at_a, at_b) = (a.local_addr(), b.local_addr());
        let start = Instant::now() + Duration::from_millis(50);
        let (ra, rb) = punch_both(firewalled(a, at_b), firewalled(b, at_a), start, LIMIT).await;
        let (mut sa, mut sb) = (ra.unwrap(), rb.unwrap());
        assert!(
            Instant::now() >= start,
            "{ip}: nothing connects before the start"
        );
        assert_eq!(
            sa.local_addr().unwrap(),
            at_a,
            "{ip}: from the punching port"
        );
        assert_eq!(sa.peer_addr().unwrap(), at_b, "{ip}");
        assert_eq!(sb.local_addr().unwrap(), at_b, "{ip}");
        assert_eq!(sb.peer_addr().unwrap(), at_a, "{ip}");
        ping_pong(&mut sa, &mut sb).await;
    }
}

#[tokio::test]
async fn the_mapping_is_learned_by_stun_over_tcp_from_the_punching_port() {
    let server = within(TestServer::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
    ))
    .await
    .unwrap();
    let mut a = port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mapped = within(a.learn(server.primary(), LIMIT)).await.unwrap();
    assert_eq!(mapped, a.local_addr(), "no nat on loopback");
    assert_eq!(a.mapped(), [mapped]);
    assert_eq!(
        a.candidates(Some(PortAllocation::Preserving)),
        Ok(vec![mapped])
    );
    // The STUN connection stays open on the shared port, and the punch still works.
    let b = port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let at_b = b.local_addr();
    let start = Instant::now() + Duration::from_millis(20);
    let (ra, rb) = punch_both(firewalled(a, at_b), firewalled(b, mapped), start, LIMIT).await;
    ping_pong(&mut ra.unwrap(), &mut rb.unwrap()).await;
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
