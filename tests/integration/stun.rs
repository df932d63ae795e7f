//! The STUN client and the NAT probe on loopback, against a test server on the crate's
//! server core (127.0.0.1 and 127.0.0.2 as its two addresses) and against hostile fakes.

pub(crate) mod server;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use p2pipe::nat::{self, Filtering, Mapping, NatType, PortAllocation, ProbeConfig, Unknown};
use p2pipe::stun::server::{ServerConfig, ServerCore};
use p2pipe::stun::{self, tcp, udp, Config, ExpectFrom, Request, Transaction};
use p2pipe::Af;
use tokio::net::UdpSocket;

use crate::support::{ipv6_usable, within};
use server::TestServer;

const A1: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const A2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A quick schedule for loopback: a lost reply here is a bug, not the network.
fn quick() -> Config {
    Config {
        initial_rto: Duration::from_millis(50),
        max_rto: Duration::from_millis(50),
        max_transmissions: 3,
        final_wait_multiplier: 2,
        expect_from: ExpectFrom::Server,
    }
}

fn quick_probe() -> ProbeConfig {
    ProbeConfig {
        stun: quick(),
        filtering: quick(),
        ..ProbeConfig::default()
    }
}

#[tokio::test]
async fn udp_binding_sees_the_client_address() {
    let server = within(TestServer::start(A1, A2)).await.unwrap();
    let sock = within(UdpSocket::bind("127.0.0.1:0")).await.unwrap();
    let (i, r) = within(udp::first_answer(&sock, &[server.primary()], quick()))
        .await
        .unwrap();
    assert_eq!(i, 0);
    assert_eq!(r.mapped, Some(sock.local_addr().unwrap()));
    assert_eq!(r.other_address, Some(server.alternate()));
    assert_eq!(r.response_origin, Some(server.primary()));
}

#[tokio::test]
async fn change_requests_come_back_from_the_other_addresses() {
    let server = within(TestServer::start(A1, A2)).await.unwrap();
    let sock = within(UdpSocket::bind("127.0.0.1:0")).await.unwrap();
    let [a1p1, a1p2, a2p1, a2p2] = server.addresses();
    let cases = [
        ((false, false), a1p1),
        ((true, true), a2p2),
        ((false, true), a1p2),
        ((true, false), a2p1),
    ];
    let mut ts: Vec<Transaction> = cases
        .iter()
        .map(|&((ip, port), from)| {
            let config = Config {
                expect_from: ExpectFrom::Exactly(from),
                ..quick()
            };
            let req = Request::binding(udp::random_txid()).with_change(ip, port);
            Transaction::new(a1p1, req, config)
        })
        .collect();
    let run = within(udp::run(&sock, &mut ts)).await;
    for (t, (_, from)) in ts.iter().zip(cases) {
        assert_eq!(t.answered_from(), Some(from), "{:?}", t.request().change);
    }
    assert_eq!(run.sent, 4, "one datagram each, none lost on loopback");
    assert!(run.send_errors.is_empty());
}

#[tokio::test]
async fn several_servers_are_asked_at_once() {
    let server = within(TestServer::start(A1, A2)).await.unwrap();
    // A silent "server": bound, never answers.
    let silent = within(UdpSocket::bind("127.0.0.1:0")).await.unwrap();
    let sock = within(UdpSocket::bind("127.0.0.1:0")).await.unwrap();
    let servers = [silent.local_addr().unwrap(), server.primary()];
    let started = std::time::Instant::now();
    let (i, r) = within(udp::first_answer(&sock, &servers, quick()))
        .await
        .unwrap();
    assert_eq!(i, 1);
    assert_eq!(r.mapped, Some(sock.local_addr().unwrap()));
    // The answer did not wait for the silent server's schedule to run out.
    assert!(started.elapsed() < quick().give_up_after());
    // With only the silent one, the answer is a clear error after the schedule.
    let err = within(udp::first_answer(&sock, &servers[..1], quick()))
        .await
        .unwrap_err();
    assert!(matches!(err, stun::Error::NoAnswer { .. }), "{err}");
    assert!(err.to_string().starts_with("no stun server answered"));
}

#[tokio::test]
async fn tcp_binding_v4() {
    let server = within(TestServer::start(A1, A2)).await.unwrap();
    let a = within(tcp::binding(
        server.primary(),
        None,
        None,
        Duration::from_secs(5),
    ))
    .await
    .unwrap();
    assert_eq!(a.response.mapped, Some(a.local));
}

/// A one-address server on `::1`, answering with the sans-IO core: IPv6 over UDP and
/// TCP. Its alternate address is never bound, so only plain requests are made.
#[tokio::test]
async fn udp_and_tcp_binding_v6() {
    if !ipv6_usable("udp_and_tcp_binding_v6") {
        return;
    }
    let sock = within(UdpSocket::bind("[::1]:0")).await.unwrap();
    let addr = sock.local_addr().unwrap();
    let core = ServerCore::new(ServerConfig::new(
        addr,
        SocketAddr::new("2001:db8::1".parse().unwrap(), addr.port() + 1),
    ))
    .unwrap();
    let served = core.clone();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = sock.recv_from(&mut buf).await.unwrap();
            if let Ok(reply) = served.handle(addr, from, &buf[..n], false) {
                sock.send_to(&reply.bytes, reply.to).await.unwrap();
            }
        }
    });
    let client = within(UdpSocket::bind("[::1]:0")).await.unwrap();
    let (_, r) = within(udp::first_answer(&client, &[addr], quick()))
        .await
        .unwrap();
    assert_eq!(r.mapped, Some(client.local_addr().unwrap()));
    task.abort();

    let listener = within(tokio::net::TcpListener::bind("[::1]:0"))
        .await
        .unwrap();
    let at = listener.local_addr().unwrap();
    let tcp_core = ServerCore::new(ServerConfig::new(
        at,
        SocketAddr::new("2001:db8::1".parse().unwrap(), at.port() + 1),
    ))
    .unwrap();
    let task = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, from) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1500];
        s.read_exact(&mut buf[..20]).await.unwrap();
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        s.read_exact(&mut buf[20..20 + len]).await.unwrap();
        let reply = tcp_core.handle(at, from, &buf[..20 + len], true).unwrap();
        s.write_all(&reply.bytes).await.unwrap();
    });
    let a = within(tcp::binding(at, None, None, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(a.response.mapped, Some(a.local));
    assert!(a.local.is_ipv6());
    within(task).await.unwrap();
}

/// A hostile "server" sends garbage, truncated and oversized replies, replies with the
/// wrong transaction id, and a right reply from an unexpected address, before the real
/// one. None of it is accepted, all of it is counted, and the answer is the real one.
#[tokio::test]
async fn bad_replies_are_ignored_and_counted() {
    let fake = within(UdpSocket::bind("127.0.0.1:0")).await.unwrap();
    let stranger = within(UdpSocket::bind("127.0.0.2:0")).await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let core = ServerCore::new(ServerConfig::new(
        fake_addr,
        SocketAddr::new(A2, fake_addr.port() + 1),
    ))
    .unwrap();
    let client = within(UdpSocket::bind("127.0.0.1:0")).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        let (n, from) = fake.recv_from(&mut buf).await.unwrap();
        let good = core
            .handle(fake_addr, from, &buf[..n], false)
            .unwrap()
            .bytes;
        let mut wrong_txid = good.clone();
        wrong_txid[10] ^= 0xff;
        let mut oversized = good.clone();
        oversized.resize(3000, 0);
        let bad: Vec<Vec<u8>> = vec![
            b"garbage that is not stun".to_vec(),
            good[..24].to_vec(),
            oversized,
            wrong_txid,
            vec![],
        ];
        for b in &bad {
            fake.send_to(b, from).await.unwrap();
        }
        stranger.send_to(&good, from).await.unwrap();
        fake.send_to(&good, from).await.unwrap();
    });
    let mut ts = vec![Transaction::new(
        fake_addr,
        Request::binding(udp::random_txid()),
        Config {
            initial_rto: Duration::from_secs(2),
            ..quick()
        },
    )];
    let run = within(udp::run(&client, &mut ts)).await;
    within(task).await.unwrap();
    let r = ts[0].response().expect("the real reply is accepted");
    assert_eq!(r.mapped, Some(client_addr));
    assert_eq!(ts[0].answered_from(), Some(fake_addr));
    let s = ts[0].stats();
    assert_eq!(run.received, 7);
    // Garbage, empty and the truncated reply carry no usable id, or a wrong one.
    assert_eq!(run.unmatched + run.ignored, 6, "{run:?} {s:?}");
    assert_eq!(s.ignored_wrong_source, 1);
    assert_eq!(run.sent, 1, "no retransmission was needed");
}

#[tokio::test]
async fn nat_probe_on_loopback_is_open() {
    let server = within(TestServer::start(A1, A2)).await.unwrap();
    let cfg = ProbeConfig {
        local_ip: Some(A1),
        ..quick_probe()
    };
    let r = within(nat::probe(Af::V4, &[server.primary()], &cfg))
        .await
        .unwrap();
    assert_eq!(r.nat_type, Some(NatType::Open), "{r:?}");
    assert_eq!(r.mapping, Some(Mapping::EndpointIndependent));
    assert_eq!(r.filtering, Some(Filtering::EndpointIndependent));
    assert_eq!(r.external, r.local);
    assert_eq!(r.port_allocation, Some(PortAllocation::Preserving));
    assert!(r.unknown.is_empty());
    // Test I and the two filtering tests: no NAT, so no mapping or port tests.
    assert_eq!(r.transactions, 3);
    assert_eq!(r.requests, 3);
}

/// The NAT probe against a test server configured by `adjust`.
async fn probe_against(adjust: impl FnOnce(&mut ServerConfig)) -> nat::NatReport {
    let server = within(TestServer::start_with(A1, A2, adjust))
        .await
        .unwrap();
    within(nat::probe(Af::V4, &[server.primary()], &quick_probe()))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_server_ignoring_change_requests_gives_unknown() {
    let r = probe_against(|c| c.ignore_change = true).await;
    assert_eq!(r.nat_type, None, "{r:?}");
    assert_eq!(r.filtering, None);
    assert!(r.unknown.contains(&Unknown::ChangeIgnored));
    assert!(r.external.is_some());
}

#[tokio::test]
async fn a_server_without_other_address_gives_unknown() {
    let r = probe_against(|c| c.other_address = false).await;
    assert_eq!(r.nat_type, None, "{r:?}");
    assert_eq!(r.filtering, None);
    assert!(r.unknown.contains(&Unknown::NoOtherAddress));
    assert_eq!(
        r.transactions, 1,
        "nothing to test without an other address"
    );
}

#[tokio::test]
async fn the_rfc5780_server_is_preferred() {
    let plain = within(TestServer::start_with(A1, A2, |c| c.other_address = false))
        .await
        .unwrap();
    let full = within(TestServer::start(A1, A2)).await.unwrap();
    let r = within(nat::probe(
        Af::V4,
        &[plain.primary(), full.primary()],
        &quick_probe(),
    ))
    .await
    .unwrap();
    assert_eq!(r.server, Some(full.primary()), "{r:?}");
    assert_eq!(r.nat_type, Some(NatType::Open));
}

#[tokio::test]
async fn no_answer_is_udp_blocked_and_no_server_is_an_error() {
    let silent = within(UdpSocket::bind("127.0.0.1:0")).await.unwrap();
    let r = within(nat::probe(
        Af::V4,
        &[silent.local_addr().unwrap()],
        &quick_probe(),
    ))
    .await
    .unwrap();
    assert_eq!(r.nat_type, Some(NatType::UdpBlocked));
    assert_eq!(r.external, None);
    let err = within(nat::probe(
        Af::V6,
        &[silent.local_addr().unwrap()],
        &quick_probe(),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "no ipv6 stun server to ask");
}

/// A flood of garbage at the client's socket does not hold back the retransmissions or
/// the give-up: the transaction sends its whole schedule and ends on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_does_not_stall_the_schedule() {
    let silent = within(UdpSocket::bind("127.0.0.1:0")).await.unwrap();
    let client = within(UdpSocket::bind("127.0.0.1:0")).await.unwrap();
    let target = client.local_addr().unwrap();
    let flooder = within(UdpSocket::bind("127.0.0.1:0")).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = flooder
                    .send_to(b"not stun, not stun, not stun", target)
                    .await;
            }
        })
    };
    let mut ts = vec![Transaction::new(
        silent.local_addr().unwrap(),
        Request::binding(udp::random_txid()),
        quick(),
    )];
    let run = within(udp::run(&client, &mut ts)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    within(flood).await.unwrap();
    assert_eq!(*ts[0].state(), stun::State::TimedOut);
    assert_eq!(run.sent, quick().max_transmissions);
    assert!(run.unmatched > 0, "{run:?}");
}
