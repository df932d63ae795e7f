//! P2P nodes on loopback, with a real mosquitto for signalling and a real coturn for
//! the relay: each strategy on its own, the race, what arrives at the other node, the
//! report, replayed requests, and stopping. The same across NATs is in `lab::p2p`.

use std::net::IpAddr;
use std::time::Duration;

use p2pipe::identity::Identity;
use p2pipe::p2p::{ConnectOptions, Error, Node, Outcome, Strategy};
use p2pipe::traverse::turn::TurnServer;
use p2pipe::{Pipe, Proto};

use crate::coturn::Coturn;
use crate::mosquitto::Mosquitto;
use crate::support::{loopbacks, within, T};

/// A node on `ip` signalling through `broker`, relaying through `turn` if given.
async fn node(seed: u8, ip: IpAddr, broker: &Mosquitto, turn: Option<TurnServer>) -> Node {
    let mut b = Node::builder(Identity::from_seed([seed; 32]))
        .bind(ip)
        .signal(broker.url());
    if let Some(t) = turn {
        b = b.turn(t);
    }
    within(b.start()).await.expect("the node starts")
}

/// Only `s`, with the relay started at once.
fn only(s: Strategy) -> ConnectOptions {
    ConnectOptions {
        strategies: vec![s],
        fast: true,
        ..ConnectOptions::default()
    }
}

/// A message each way: `a` sends, `b` echoes.
async fn echo_through(a: &Pipe, b: &Pipe, what: &str) {
    within(a.send(what.as_bytes())).await.expect("sent");
    let got = within(b.recv()).await.expect("arrived");
    assert_eq!(&got.data[..], what.as_bytes());
    within(b.send(&got.data)).await.expect("echoed");
    let back = within(a.recv()).await.expect("echo arrived");
    assert_eq!(&back.data[..], what.as_bytes());
}

#[tokio::test]
async fn two_nodes_connect_by_every_strategy_alone_over_tcp_and_udp_and_the_peer_learns_who_and_how(
) {
    const TEST: &str = "p2p::two_nodes_connect_by_every_strategy_alone";
    for ip in loopbacks(TEST) {
        let Some(broker) = Mosquitto::start(TEST, ip).await else {
            return;
        };
        let Some(coturn) = Coturn::start(TEST, ip).await else {
            return;
        };
        let a = node(1, ip, &broker, Some(coturn.server())).await;
        let b = node(2, ip, &broker, Some(coturn.server())).await;
        for strategy in [
            Strategy::Direct,
            Strategy::Reverse,
            Strategy::Punch,
            Strategy::Relay,
        ] {
            for proto in [Proto::Tcp, Proto::Udp] {
                let at = format!("{strategy} over {proto} on {ip}");
                let conn = within(a.connect_with(b.record(), proto, &only(strategy)))
                    .await
                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                assert_eq!(conn.report.winner, Some(strategy), "{at}: {}", conn.report);
                assert_eq!(conn.peer, b.record().public_key().to_owned(), "{at}");
                let arrival = within(b.accept()).await.expect("an arrival");
                assert_eq!(arrival.node_id(), a.node_id(), "{at}");
                assert_eq!((arrival.strategy, arrival.proto), (strategy, proto), "{at}");
                echo_through(&conn.pipe, &arrival.pipe, &format!("hello by {at}")).await;
                echo_through(&arrival.pipe, &conn.pipe, "and back").await;
                conn.pipe.close().await;
            }
        }
        let stopped = within(a.stop(T)).await;
        assert!(stopped.signalling_stopped);
        assert!(stopped.relays_closed >= 1, "{stopped:?}");
        within(b.stop(T)).await;
        assert!(
            within(b.accept()).await.is_none(),
            "b still accepts after stop"
        );
    }
}

#[tokio::test]
async fn the_race_takes_the_direct_path_on_one_host_and_cancels_the_rest() {
    const TEST: &str = "p2p::the_race_takes_the_direct_path";
    let ip = crate::support::V4;
    let Some(broker) = Mosquitto::start(TEST, ip).await else {
        return;
    };
    let a = node(3, ip, &broker, None).await;
    let b = node(4, ip, &broker, None).await;
    for proto in [Proto::Tcp, Proto::Udp] {
        let conn = within(a.connect(b.record(), proto))
            .await
            .expect("connected");
        let r = &conn.report;
        assert!(
            matches!(
                r.winner,
                Some(Strategy::Direct | Strategy::Reverse | Strategy::Punch)
            ),
            "{r}"
        );
        assert_eq!(
            r.attempt(Strategy::Relay).map(|a| &a.outcome),
            Some(&Outcome::Skipped("no relay is configured".into())),
            "{r}"
        );
        let connected = r
            .tried
            .iter()
            .filter(|a| a.outcome == Outcome::Connected)
            .count();
        assert_eq!(connected, 1, "{r}");
        assert!(r.path.is_some(), "{r}");
        let arrival = within(b.accept()).await.expect("an arrival");
        echo_through(&conn.pipe, &arrival.pipe, "raced").await;
    }
    within(a.stop(T)).await;
    within(b.stop(T)).await;
}

#[tokio::test]
async fn a_connect_with_no_way_fails_with_a_report_that_says_why_per_strategy() {
    const TEST: &str = "p2p::a_connect_with_no_way_fails";
    let ip = crate::support::V4;
    let Some(broker) = Mosquitto::start(TEST, ip).await else {
        return;
    };
    let b = node(6, ip, &broker, None).await;
    let record = b.record().clone();
    within(b.stop(T)).await;
    // A node without signalling, to a node that has gone.
    let a = within(Node::builder(Identity::from_seed([5; 32])).bind(ip).start())
        .await
        .expect("started");
    let opts = ConnectOptions {
        limit: Some(Duration::from_secs(2)),
        ..ConnectOptions::default()
    };
    let err = within(a.connect_with(&record, Proto::Tcp, &opts))
        .await
        .unwrap_err();
    let Error::Unreachable(report) = &err else {
        panic!("{err}");
    };
    assert_eq!(report.winner, None);
    let text = err.to_string();
    for clause in [
        "reverse: no signalling broker is configured",
        "punch: no signalling broker is configured",
        "relay: no relay is configured",
        "upnp: neither node has a port mapped on its router",
        "direct: ",
    ] {
        assert!(text.contains(clause), "{clause:?} missing from {text}");
    }
    assert_eq!(report.tried.len(), 5, "{report}");
    within(a.stop(T)).await;
}

#[tokio::test]
async fn a_node_refuses_to_connect_to_its_own_record() {
    const TEST: &str = "p2p::a_node_refuses_to_connect_to_its_own_record";
    let ip = crate::support::V4;
    let a = within(Node::builder(Identity::from_seed([7; 32])).bind(ip).start())
        .await
        .expect("started");
    let err = within(a.connect(a.record(), Proto::Tcp)).await.unwrap_err();
    assert!(matches!(err, Error::NotAPeer), "{TEST}: {err}");
    within(a.stop(T)).await;
}

/// A come request in its documented wire form (docs/connect.md): "PC" 1, kind 1, the
/// token, TCP, reverse, one IPv4 address.
fn come_request(token: [u8; 16], to: std::net::SocketAddrV4) -> Vec<u8> {
    let mut m = b"PC\x01\x01".to_vec();
    m.extend_from_slice(&token);
    m.extend_from_slice(&[2, 2, 1, 4]);
    m.extend_from_slice(&to.ip().octets());
    m.extend_from_slice(&to.port().to_be_bytes());
    m
}

#[tokio::test]
async fn a_connect_request_sent_again_is_refused_and_a_malformed_one_gets_no_answer() {
    const TEST: &str = "p2p::a_connect_request_sent_again_is_refused";
    let ip = crate::support::V4;
    let Some(broker) = Mosquitto::start(TEST, ip).await else {
        return;
    };
    let b = node(8, ip, &broker, None).await;
    let b_key = *b.record().public_key();
    // The asker is a bare signaller: it sends the requests by hand.
    let asker = within(p2pipe::signal::Signaller::start(
        Identity::from_seed([9; 32]),
        &[broker.url()],
        p2pipe::signal::SignallerConfig::default(),
    ))
    .await
    .expect("a signaller");
    let nobody = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9);
    let request = come_request([0x42; 16], nobody);
    let first = within(asker.request(&b_key, &request, T))
        .await
        .expect("answered");
    assert!(
        first.starts_with(b"PA\x01\x00"),
        "accepted first: {first:?}"
    );
    let again = within(asker.request(&b_key, &request, T))
        .await
        .expect("answered");
    assert!(again.starts_with(b"PA\x01\x01"), "refused again: {again:?}");
    assert!(
        String::from_utf8_lossy(&again).contains("seen before"),
        "{again:?}"
    );
    // A malformed request is dropped without an answer; the node serves on.
    let bad = within(asker.request(&b_key, b"PC\x01\x09", Duration::from_millis(300))).await;
    assert!(bad.is_err(), "{bad:?}");
    let fresh = come_request([0x43; 16], nobody);
    let third = within(asker.request(&b_key, &fresh, T))
        .await
        .expect("answered");
    assert!(third.starts_with(b"PA\x01\x00"), "{third:?}");
    within(asker.stop()).await;
    within(b.stop(T)).await;
}

#[tokio::test]
async fn a_mesh_connects_to_a_signed_address_and_the_path_lives_as_long_as_the_connection() {
    use p2pipe::mesh::{Event, Events, Mesh};
    const TEST: &str = "p2p::a_mesh_connects_to_a_signed_address";
    async fn message(events: &mut Events) -> (String, Vec<u8>) {
        loop {
            if let Event::Message(m) = within(events.recv()).await.expect("an event") {
                return (m.from.to_string(), m.data.to_vec());
            }
        }
    }
    for ip in loopbacks(TEST) {
        let Some(broker) = Mosquitto::start(TEST, ip).await else {
            return;
        };
        let node_a = node(10, ip, &broker, None).await;
        let node_b = node(11, ip, &broker, None).await;
        let b_record = node_b.record().clone();
        let listen = std::net::SocketAddr::new(ip, 0);
        let (alice, mut alice_events) = within(Mesh::builder("alice").listen(listen).start())
            .await
            .unwrap();
        let (bob, mut bob_events) = within(Mesh::builder("bob").listen(listen).start())
            .await
            .unwrap();
        // Bob's side: every path that reaches his node is a connection to his mesh.
        let (paths_tx, mut paths) = tokio::sync::mpsc::unbounded_channel();
        let serving = tokio::spawn({
            let bob = bob.clone();
            async move {
                while let Some(a) = node_b.accept().await {
                    let _ = paths_tx.send(a.pipe.clone());
                    bob.serve_arrival(a).expect("served");
                }
            }
        });
        let peer = within(alice.connect_via(&node_a, &b_record))
            .await
            .unwrap_or_else(|e| panic!("{ip}: {e}"));
        assert_eq!(&*peer.id, "bob", "{ip}");
        within(alice.send_to("bob", "hello across")).await.unwrap();
        assert_eq!(
            message(&mut bob_events).await,
            ("alice".into(), b"hello across".to_vec())
        );
        within(bob.send_to("alice", "and back")).await.unwrap();
        assert_eq!(
            message(&mut alice_events).await,
            ("bob".into(), b"and back".to_vec())
        );
        // Bob ends the connection: the tunnel and the path under it close with it, on
        // both sides, while both meshes run on.
        let path = within(paths.recv()).await.expect("bob's side of the path");
        assert!(within(bob.disconnect("alice")).await, "{ip}");
        within(path.ended()).await;
        within(alice.stop(T)).await;
        within(bob.stop(T)).await;
        within(node_a.stop(T)).await;
        serving.abort();
    }
}
