//! The TURN client against a real coturn on loopback (tests/integration/coturn.rs), and
//! against hostile servers written here: UDP allocations carrying pipes both ways
//! (send, subscribe, link, a listener that accepts), over UDP and TCP to the server, 127.0.0.1 and ::1;
//! RFC 6062 TCP allocations carrying TCP pipes; refresh; refused logins; and servers
//! that lie, loop or send garbage.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use p2pipe::pipe::EndReason;
use p2pipe::traverse::turn::{Error, Relay, Transport, TurnServer};
use p2pipe::{Pipe, Proto};

use crate::coturn::{Coturn, PASSWORD};
use crate::support::{loopbacks, within, T};

/// The relay's time limit in these tests.
const LIMIT: Duration = Duration::from_secs(5);

/// A peer on `ip`: an ordinary UDP pipe.
async fn udp_peer(ip: IpAddr) -> Pipe {
    within(Pipe::listen(Proto::Udp, SocketAddr::new(ip, 0)))
        .await
        .unwrap()
}

/// Exchanges a datagram each way between a relayed pipe and a plain UDP peer: the
/// relayed side's subscription sees the answer.
async fn exchange(relay: &Relay, ip: IpAddr) {
    let peer = udp_peer(ip).await;
    let relayed = within(relay.pipe(peer.local_addr())).await.unwrap();
    assert_eq!(relayed.local_addr(), relay.relayed_addr());
    let answers = relayed.subscribe("^pong", None).unwrap();
    within(relayed.send(b"ping 1")).await.unwrap();
    let got = within(peer.accept()).await.unwrap();
    let first = within(got.recv()).await.unwrap();
    assert_eq!(&first.data[..], b"ping 1");
    assert_eq!(
        first.peer,
        relay.relayed_addr(),
        "the peer sees the relayed address"
    );
    within(got.send(b"pong 1")).await.unwrap();
    let answer = answers.recv_timeout(T).await.unwrap();
    assert_eq!(&answer.data[..], b"pong 1");
    assert_eq!(answer.peer, peer.local_addr());
}

#[tokio::test]
async fn a_udp_allocation_carries_a_pipe_both_ways_over_udp_and_tcp_to_the_server() {
    let test = "a_udp_allocation_carries_a_pipe_both_ways_over_udp_and_tcp_to_the_server";
    for ip in loopbacks(test) {
        let Some(coturn) = Coturn::start(test, ip).await else {
            return;
        };
        for transport in [Transport::Udp, Transport::Tcp] {
            let relay = within(Relay::allocate(&coturn.server(), transport, LIMIT)).await;
            let relay = relay.unwrap_or_else(|e| panic!("{ip} {transport}: {e}\n{}", coturn.log()));
            assert_eq!(relay.relayed_addr().ip(), ip);
            assert_eq!(relay.mapped_addr().map(|a| a.ip()), Some(ip));
            exchange(&relay, ip).await;
            within(relay.close()).await.unwrap();
        }
    }
}

/// A UDP allocation on `coturn`, or a panic that shows the server's log.
async fn allocate_udp(coturn: &Coturn, ip: IpAddr) -> Relay {
    let relay = within(Relay::allocate(&coturn.server(), Transport::Udp, LIMIT)).await;
    relay.unwrap_or_else(|e| panic!("{ip}: {e}\n{}", coturn.log()))
}

/// A plain UDP peer on `ip` that the relay permits, and that has sent `first` to the
/// relayed address.
async fn knocking_peer(relay: &Relay, ip: IpAddr, first: &[u8]) -> Pipe {
    let peer = udp_peer(ip).await;
    within(relay.permit(peer.local_addr())).await.unwrap();
    within(peer.send_to(first, relay.relayed_addr()))
        .await
        .unwrap();
    peer
}

/// Links `relayed` both ways to a plain pipe to a local echo server (a relay of the
/// relay), and gives the echo server.
async fn link_to_echo(relayed: &Pipe, ip: IpAddr) -> Pipe {
    let echo = udp_peer(ip).await;
    let to_echo = within(Pipe::connect(Proto::Udp, echo.local_addr()))
        .await
        .unwrap();
    relayed.link(&to_echo).unwrap();
    to_echo.link(relayed).unwrap();
    echo
}

/// The echo server's first peer sends `want`, and the echo answers `echoed`.
async fn echo_once(echo: &Pipe, want: &[u8]) {
    let at_echo = within(echo.accept()).await.unwrap();
    let m = within(at_echo.recv()).await.unwrap();
    assert_eq!(&m.data[..], want);
    within(at_echo.send(b"echoed")).await.unwrap();
}

#[tokio::test]
async fn a_relay_listener_accepts_two_peers_and_its_subscriptions_and_recv_see_them() {
    let test = "a_relay_listener_accepts_two_peers_and_its_subscriptions_and_recv_see_them";
    for ip in loopbacks(test) {
        let Some(coturn) = Coturn::start(test, ip).await else {
            return;
        };
        let relay = allocate_udp(&coturn, ip).await;
        let listener = relay.listen().unwrap();
        assert!(listener.is_listener());
        assert_eq!(listener.local_addr(), relay.relayed_addr());
        assert!(
            matches!(relay.listen(), Err(Error::Full { .. })),
            "one listener"
        );
        let hellos = listener.subscribe("^hello", None).unwrap();

        // Each permitted peer that sends first is accepted, its datagram first.
        let mut accepted = Vec::new();
        for (i, knock) in [&b"knock 1"[..], b"knock 2"].into_iter().enumerate() {
            let peer = knocking_peer(&relay, ip, knock).await;
            let (pipe, from) = within(listener.accept_from()).await.unwrap();
            assert_eq!(from, peer.local_addr(), "{ip}: peer {i}");
            let first = within(pipe.recv()).await.unwrap();
            assert_eq!(
                (&first.data[..], first.local),
                (knock, relay.relayed_addr())
            );
            accepted.push((peer, pipe));
        }

        // Answers go back through the relay, from the pipe or from the listener.
        let [(one, a), (two, _)] = &accepted[..] else {
            unreachable!()
        };
        within(a.send(b"welcome 1")).await.unwrap();
        within(listener.send_to(b"welcome 2", two.local_addr()))
            .await
            .unwrap();
        for (peer, want) in [(one, &b"welcome 1"[..]), (two, b"welcome 2")] {
            let m = within(peer.recv()).await.unwrap();
            assert_eq!((&m.data[..], m.peer), (want, relay.relayed_addr()));
        }

        // The listener's subscription sees what its accepted peers send.
        within(one.send_to(b"hello from 1", relay.relayed_addr()))
            .await
            .unwrap();
        within(two.send_to(b"hello from 2", relay.relayed_addr()))
            .await
            .unwrap();
        let mut from = Vec::new();
        for _ in 0..2 {
            from.push(hellos.recv_timeout(T).await.unwrap().peer);
        }
        from.sort();
        let mut want = vec![one.local_addr(), two.local_addr()];
        want.sort();
        assert_eq!(from, want, "{ip}");

        // recv on the listener: a peer nobody accepted.
        let three = knocking_peer(&relay, ip, b"unaccepted").await;
        let m = within(listener.recv()).await.unwrap();
        assert_eq!(
            (&m.data[..], m.peer),
            (&b"unaccepted"[..], three.local_addr())
        );
        assert_eq!(relay.dropped(), 0);

        // Closing the listener ends its peers, as on any UDP listener.
        within(listener.close()).await;
        assert_eq!(within(a.ended()).await, EndReason::Closed);
        within(relay.close()).await.unwrap();
    }
}

#[tokio::test]
async fn a_peer_accepted_on_a_relay_listener_links_to_a_plain_pipe() {
    let test = "a_peer_accepted_on_a_relay_listener_links_to_a_plain_pipe";
    for ip in loopbacks(test) {
        let Some(coturn) = Coturn::start(test, ip).await else {
            return;
        };
        let relay = allocate_udp(&coturn, ip).await;
        let listener = relay.listen().unwrap();
        // What the peer sends through the relay goes on to a local echo server (a
        // relay of the relay), and the echo comes back the same way.
        let peer = knocking_peer(&relay, ip, b"echo me").await;
        let accepted = within(listener.accept()).await.unwrap();
        let echo = link_to_echo(&accepted, ip).await;
        echo_once(&echo, b"echo me").await;
        let m = within(peer.recv()).await.unwrap();
        assert_eq!(
            (&m.data[..], m.peer),
            (&b"echoed"[..], relay.relayed_addr())
        );
        assert_eq!(relay.dropped(), 0);
    }
}

#[tokio::test]
async fn a_relayed_pipe_links_to_another_pipe() {
    let test = "a_relayed_pipe_links_to_another_pipe";
    let ip: IpAddr = [127, 0, 0, 1].into();
    let Some(coturn) = Coturn::start(test, ip).await else {
        return;
    };
    let relay = allocate_udp(&coturn, ip).await;

    // What the peer sends through the relay goes on to a local echo server (a relay
    // of the relay), and the echo comes back the same way.
    let peer = udp_peer(ip).await;
    let relayed = within(relay.pipe(peer.local_addr())).await.unwrap();
    let echo = link_to_echo(&relayed, ip).await;
    within(relayed.send(b"open")).await.unwrap();
    let from_relay = within(peer.accept()).await.unwrap();
    assert_eq!(&within(from_relay.recv()).await.unwrap().data[..], b"open");
    within(from_relay.send(b"echo me")).await.unwrap();
    echo_once(&echo, b"echo me").await;
    let m = within(from_relay.recv()).await.unwrap();
    assert_eq!(&m.data[..], b"echoed");
    assert_eq!(relay.dropped(), 0);
}

#[tokio::test]
async fn a_tcp_allocation_carries_tcp_pipes_both_ways() {
    let test = "a_tcp_allocation_carries_tcp_pipes_both_ways";
    for ip in loopbacks(test) {
        let Some(coturn) = Coturn::start(test, ip).await else {
            return;
        };
        let relay = within(Relay::allocate_tcp(&coturn.server(), LIMIT)).await;
        let relay = relay.unwrap_or_else(|e| panic!("{ip}: {e}\n{}", coturn.log()));

        // Outgoing: Connect, then a data connection, as a TCP pipe.
        let listener = within(Pipe::listen(Proto::Tcp, SocketAddr::new(ip, 0)))
            .await
            .unwrap();
        let pipe = within(relay.connect_tcp(listener.local_addr())).await;
        let pipe = pipe.unwrap_or_else(|e| panic!("{ip}: {e}\n{}", coturn.log()));
        let theirs = within(listener.accept()).await.unwrap();
        within(pipe.send(b"over tcp")).await.unwrap();
        assert_eq!(&within(theirs.recv()).await.unwrap().data[..], b"over tcp");
        let big = vec![7u8; 200_000];
        within(theirs.send_raw(&big)).await.unwrap();
        let mut got = 0;
        while got < big.len() {
            got += within(pipe.recv()).await.unwrap().data.len();
        }
        assert_eq!(got, big.len());

        // Incoming: a permitted peer connects to the relayed address.
        let dialer_ip = ip;
        within(relay.permit(SocketAddr::new(dialer_ip, 1)))
            .await
            .unwrap();
        let relayed = relay.relayed_addr();
        let dial = tokio::spawn(async move { Pipe::connect(Proto::Tcp, relayed).await });
        let (accepted, from) = within(relay.accept_tcp()).await.unwrap();
        let dialer = within(dial).await.unwrap().unwrap();
        assert_eq!(from, dialer.local_addr());
        within(dialer.send(b"knock")).await.unwrap();
        assert_eq!(&within(accepted.recv()).await.unwrap().data[..], b"knock");
        within(accepted.send(b"come in")).await.unwrap();
        assert_eq!(&within(dialer.recv()).await.unwrap().data[..], b"come in");
    }
}

#[tokio::test]
async fn the_allocation_is_refreshed_before_a_short_lifetime_ends() {
    let test = "the_allocation_is_refreshed_before_a_short_lifetime_ends";
    let ip: IpAddr = [127, 0, 0, 1].into();
    let extra = ["--max-allocate-lifetime", "2"];
    let Some(coturn) = Coturn::start_with(test, ip, &extra).await else {
        return;
    };
    let relay = within(Relay::allocate(&coturn.server(), Transport::Udp, LIMIT))
        .await
        .unwrap();
    // Granted 2 s, refreshed every second: three lifetimes later it still relays.
    // Waiting is the point here (the server's clock must pass), not synchronisation.
    tokio::time::sleep(Duration::from_secs(6)).await;
    exchange(&relay, ip).await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_clearly_without_showing_the_password() {
    let test = "a_wrong_password_is_refused_clearly_without_showing_the_password";
    let ip: IpAddr = [127, 0, 0, 1].into();
    let Some(coturn) = Coturn::start(test, ip).await else {
        return;
    };
    for transport in [Transport::Udp, Transport::Tcp] {
        let wrong = "not-the-password";
        let server = coturn.server_with("u", wrong);
        let started = Instant::now();
        let e = within(Relay::allocate(&server, transport, LIMIT))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Unauthorized { .. }), "{transport}: {e}");
        assert!(
            started.elapsed() < LIMIT / 2,
            "refused at once, not at the limit"
        );
        let shown = format!("{e} {e:?} {server:?}");
        assert!(shown.contains(&coturn.addr.to_string()), "{shown}");
        assert!(
            !shown.contains(wrong) && !shown.contains(PASSWORD),
            "{shown}"
        );
    }
}

/// A hostile server: answers every request on UDP with `answer(request)`.
async fn hostile_udp(answer: fn(&[u8]) -> Vec<u8>) -> (SocketAddr, tokio::task::JoinHandle<u32>) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut seen = 0;
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            seen += 1;
            let _ = sock.send_to(&answer(&buf[..n]), from).await;
            if seen == 50 {
                break;
            }
        }
        seen
    });
    (addr, task)
}

/// A 401 error response to `request` carrying `realm` and a nonce of `nonce_len` bytes.
fn challenge(request: &[u8], realm: &str, nonce_len: usize) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut put = |t: u16, v: &[u8]| {
        attrs.extend_from_slice(&t.to_be_bytes());
        attrs.extend_from_slice(&(v.len() as u16).to_be_bytes());
        attrs.extend_from_slice(v);
        attrs.resize(attrs.len().next_multiple_of(4), 0);
    };
    put(0x0009, b"\0\0\x04\x01Unauthorized");
    put(0x0014, realm.as_bytes());
    put(0x0015, &vec![b'n'; nonce_len]);
    let method = u16::from_be_bytes([request[0], request[1]]) & 0x3eef;
    let mut out = (method | 0x0110).to_be_bytes().to_vec();
    out.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&request[4..20]);
    out.extend_from_slice(&attrs);
    out
}

fn hostile_server(addr: SocketAddr) -> TurnServer {
    let mut s = TurnServer::new(
        addr,
        p2pipe::traverse::turn::Credentials::new("u", "pw").unwrap(),
    );
    s.realm = Some("r".into());
    s
}

#[tokio::test]
async fn a_hostile_server_ends_in_a_clear_error_within_the_limit() {
    type Case = (&'static str, fn(&[u8]) -> Vec<u8>, fn(&Error) -> bool);
    let cases: [Case; 4] = [
        (
            "wrong realm",
            |r| challenge(r, "evil", 8),
            |e| matches!(e, Error::WrongRealm { .. }),
        ),
        (
            "endless 401s",
            |r| challenge(r, "r", 8),
            |e| matches!(e, Error::Unauthorized { .. }),
        ),
        (
            "oversized nonce",
            |r| challenge(r, "r", 2000),
            |e| matches!(e, Error::Oversized { .. }),
        ),
        (
            "garbage",
            |_| b"\xde\xad\xbe\xef garbage".to_vec(),
            |e| matches!(e, Error::Timeout { .. }),
        ),
    ];
    let limit = Duration::from_secs(1);
    for (name, answer, expected) in cases {
        let (addr, task) = hostile_udp(answer).await;
        let started = Instant::now();
        let e = within(Relay::allocate(
            &hostile_server(addr),
            Transport::Udp,
            limit,
        ))
        .await
        .unwrap_err();
        assert!(expected(&e), "{name}: {e}");
        assert!(
            started.elapsed() < limit + Duration::from_millis(500),
            "{name}: {:?}",
            started.elapsed()
        );
        assert!(e.to_string().contains(&addr.to_string()), "{name}: {e}");
        task.abort();
        if name == "endless 401s" {
            // One unsigned request and one signed retry: no loop.
            let seen = task.await.unwrap_or(0);
            assert!(seen <= 2, "{name}: {seen} requests");
        }
    }
}

#[tokio::test]
async fn garbage_on_a_tcp_connection_to_the_server_breaks_the_relay_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"\xff\xff\xff\xff not stun").await;
        let _ = s.read(&mut buf).await;
    });
    let started = Instant::now();
    let e = within(Relay::allocate(
        &hostile_server(addr),
        Transport::Tcp,
        LIMIT,
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Stream { .. }), "{e}");
    assert!(started.elapsed() < LIMIT / 2);
    server.abort();
}

#[tokio::test]
async fn closing_a_relay_deletes_the_allocation_and_ends_its_pipes() {
    let test = "closing_a_relay_deletes_the_allocation_and_ends_its_pipes";
    let ip: IpAddr = [127, 0, 0, 1].into();
    let Some(coturn) = Coturn::start(test, ip).await else {
        return;
    };
    let relay = within(Relay::allocate(&coturn.server(), Transport::Udp, LIMIT))
        .await
        .unwrap();
    let peer = udp_peer(ip).await;
    let relayed = within(relay.pipe(peer.local_addr())).await.unwrap();
    within(relay.close()).await.unwrap();
    let ended = within(relayed.recv()).await;
    assert!(ended.is_err(), "a pipe of a closed relay ends: {ended:?}");
    let sent = within(relayed.send(b"after close")).await;
    assert!(sent.is_err(), "and cannot send: {sent:?}");
}
