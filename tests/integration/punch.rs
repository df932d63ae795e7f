//! UDP hole punching over loopback: two nodes agree a punch through a real mosquitto,
//! punch from their own sockets, and talk through the pipes it gives them. The NAT
//! cases are in `lab/punch.rs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use p2pipe::identity::Identity;
use p2pipe::nat::NatType;
use p2pipe::signal::{Incoming, MqttSettings, Signaller, SignallerConfig};
use p2pipe::traverse::punch::rendezvous::{Responder, NONCE_LEN};
use p2pipe::traverse::punch::{self, udp, Candidates, NatSummary, Refusal};
use p2pipe::Pipe;
use tokio::net::UdpSocket;

use crate::mosquitto::Mosquitto;
use crate::stun::server::TestServer;
use crate::support::{loopbacks, within, SHORT, V4};

pub(crate) async fn signaller(seed: u8, broker: &Mosquitto) -> Signaller {
    let config = SignallerConfig {
        mqtt: MqttSettings {
            backoff_initial: Duration::from_millis(20),
            ..MqttSettings::default()
        },
        ..SignallerConfig::default()
    };
    within(Signaller::start(
        Identity::from_seed([seed; 32]),
        &[broker.url()],
        config,
    ))
    .await
    .expect("signaller started")
}

fn config(nat: NatType, stun: Option<SocketAddr>) -> udp::Config {
    udp::Config {
        stun: stun.into_iter().collect(),
        nat: NatSummary::of_type(nat),
        ..udp::Config::default()
    }
}

/// The responder: waits for an offer and answers it from a socket on `ip`.
async fn answer_one(node: &Signaller, ip: IpAddr, cfg: &udp::Config) -> Result<Pipe, punch::Error> {
    loop {
        let incoming = node.recv().await.expect("signaller running");
        if !udp::is_offer(&incoming) {
            continue;
        }
        let Incoming::Request(offer) = incoming else {
            unreachable!("an offer is a request")
        };
        let socket = UdpSocket::bind((ip, 0)).await.unwrap();
        return udp::answer(node, &offer, socket, cfg).await;
    }
}

/// Both sides of one punch, at once.
async fn punch_pair(
    alice: &Signaller,
    bob: &Signaller,
    ip: IpAddr,
    a: &udp::Config,
    b: &udp::Config,
) -> (Result<Pipe, punch::Error>, Result<Pipe, punch::Error>) {
    let socket = UdpSocket::bind((ip, 0)).await.unwrap();
    let bob_key = bob.identity().public();
    within(async {
        tokio::join!(
            udp::punch(alice, &bob_key, socket, a),
            answer_one(bob, ip, b)
        )
    })
    .await
}

#[tokio::test]
async fn two_nodes_punch_a_udp_path_over_loopback_and_talk_through_the_pipes_both_ways() {
    const TEST: &str = "punch::two_nodes_punch_a_udp_path_over_loopback";
    for ip in loopbacks(TEST) {
        let Some(broker) = Mosquitto::start(TEST, ip).await else {
            return;
        };
        // STUN over IPv4 (the test server needs two addresses); IPv6 offers its local
        // address only.
        let stun = match ip {
            IpAddr::V4(_) => Some(
                TestServer::start(V4, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
                    .await
                    .unwrap(),
            ),
            IpAddr::V6(_) => None,
        };
        let cfg = config(NatType::Open, stun.as_ref().map(TestServer::primary));
        let (alice, bob) = (signaller(1, &broker).await, signaller(2, &broker).await);
        let (a, b) = punch_pair(&alice, &bob, ip, &cfg, &cfg).await;
        let (a, b) = (a.expect("alice punched"), b.expect("bob answered"));
        if let Some(s) = &stun {
            assert!(s.requests() >= 2, "both sides asked stun for their mapping");
        }
        assert_eq!(a.peer_addr(), Some(b.local_addr()), "{ip}");
        assert_eq!(b.peer_addr(), Some(a.local_addr()), "{ip}");

        let greetings = b.subscribe("^hello", None).unwrap();
        a.send(b"hello bob").await.unwrap();
        let m = within(greetings.recv()).await.unwrap();
        assert_eq!((&m.data[..], m.peer), (&b"hello bob"[..], a.local_addr()));
        b.send(b"hello alice").await.unwrap();
        let m = within(a.recv()).await.unwrap();
        assert_eq!(&m.data[..], b"hello alice");
        within(alice.stop()).await;
        within(bob.stop()).await;
    }
}

#[tokio::test]
async fn keepalives_flow_on_a_punched_path_and_never_reach_the_pipes_messages() {
    const TEST: &str = "punch::keepalives_flow_on_a_punched_path";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let mut cfg = config(NatType::Open, None);
    cfg.timing.keepalive = Duration::from_millis(20);
    let (alice, bob) = (signaller(3, &broker).await, signaller(4, &broker).await);
    let (a, b) = punch_pair(&alice, &bob, V4, &cfg, &cfg).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    // Keepalives arrive every 20 ms; none is a message of the flow.
    assert!(a.recv_timeout(SHORT).await.is_err(), "nothing for the flow");
    let seen = a.stats().received;
    assert!(seen >= 2, "keepalives arrived: {seen}");
    b.send(b"after the keepalives").await.unwrap();
    let m = within(a.recv()).await.unwrap();
    assert_eq!(&m.data[..], b"after the keepalives");
    within(alice.stop()).await;
    within(bob.stop()).await;
}

#[tokio::test]
async fn two_random_symmetric_nats_refuse_at_once_on_both_sides_naming_the_reason() {
    const TEST: &str = "punch::two_random_symmetric_nats_refuse_at_once";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let cfg = config(NatType::Symmetric, None);
    let (alice, bob) = (signaller(5, &broker).await, signaller(6, &broker).await);
    let started = Instant::now();
    let (a, b) = punch_pair(&alice, &bob, V4, &cfg, &cfg).await;
    let took = started.elapsed();
    for (side, got) in [("alice", a), ("bob", b)] {
        match got {
            Err(punch::Error::Refused { refusal, .. }) => {
                assert_eq!(refusal, Refusal::BothUnpredictable, "{side}");
                assert!(refusal.to_string().starts_with("unpredictable"), "{side}");
            }
            other => panic!("{side}: {other:?}"),
        }
    }
    assert!(
        took < cfg.limit / 5,
        "refused in {took:?}, limit {:?}",
        cfg.limit
    );
    within(alice.stop()).await;
    within(bob.stop()).await;
}

#[tokio::test]
async fn a_peer_that_never_answers_probes_times_out_naming_the_candidates() {
    const TEST: &str = "punch::a_peer_that_never_answers_probes_times_out";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let (alice, bob) = (signaller(7, &broker).await, signaller(8, &broker).await);
    let mut cfg = config(NatType::Open, None);
    cfg.limit = Duration::from_secs(2);
    let socket = UdpSocket::bind((V4, 0)).await.unwrap();
    let local = socket.local_addr().unwrap();
    let bob_key = bob.identity().public();
    // Bob answers the offer over signalling with a socket he never reads: no probe is
    // answered.
    let deaf = UdpSocket::bind((V4, 0)).await.unwrap();
    let deaf_addr = deaf.local_addr().unwrap();
    let silent_bob = async {
        let Incoming::Request(offer) = bob.recv().await.unwrap() else {
            panic!("an offer")
        };
        let responder = Responder::new(
            alice.identity().node_id(),
            &offer.payload,
            [9; NONCE_LEN],
            NatSummary::of_type(NatType::Open),
            None,
            Candidates::new([deaf_addr]).unwrap(),
        )
        .unwrap();
        bob.respond(&offer, &responder.answer().to_bytes())
            .await
            .unwrap();
    };
    let started = Instant::now();
    let (got, ()) =
        within(async { tokio::join!(udp::punch(&alice, &bob_key, socket, &cfg), silent_bob) })
            .await;
    let took = started.elapsed();
    match got {
        Err(e @ punch::Error::TimedOut { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&local.to_string()), "{text}");
            assert!(text.contains(&deaf_addr.to_string()), "{text}");
            assert!(text.contains("after 2s"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
    within(alice.stop()).await;
    within(bob.stop()).await;
}

#[tokio::test]
async fn closing_a_punched_pipe_ends_its_keepalives_and_frees_its_port() {
    const TEST: &str = "punch::closing_a_punched_pipe_ends_its_keepalives";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let mut cfg = config(NatType::Open, None);
    cfg.timing.keepalive = Duration::from_millis(20);
    let (alice, bob) = (signaller(9, &broker).await, signaller(10, &broker).await);
    let (a, b) = punch_pair(&alice, &bob, V4, &cfg, &cfg).await;
    let (a, _b) = (a.unwrap(), b.unwrap());
    let addr = a.local_addr();
    within(a.close()).await;
    drop(a);
    // The keepalive task holds a second handle on the socket until it sees the end.
    within(async {
        while UdpSocket::bind(addr).await.is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    within(alice.stop()).await;
    within(bob.stop()).await;
}
