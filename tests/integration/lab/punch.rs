//! UDP hole punching between two peers behind two real kernel NATs: each peer signals
//! through the lab's mosquitto, learns its mapping from coturn, punches from its own
//! namespace, and talks to the other through the pipe the punch gives it.
//!
//! Both peers bind the same address and port when their routers translate
//! (198.18.1.2:40000 on both private LANs): the other's local candidate is then this
//! peer's own socket, and the tests assert that nobody connects to itself.
//! `every_pair_of_kinds_matches_the_table` (ignored; `scripts/traversal-tables punch`)
//! runs all 49 ordered pairs and writes `target/traversal/punch.md`.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use p2pipe::identity::Identity;
use p2pipe::nat;
use p2pipe::signal::{Incoming, Signaller, SignallerConfig};
use p2pipe::traverse::punch::{self, udp, udp_feasibility, NatSummary};
use p2pipe::Af;
use tokio::net::UdpSocket;

use super::{lab_or_skip, pair_table, write_traversal_table, Lab, NatKind, LAB_T};

/// The punching port of both peers.
pub(super) const PORT: u16 = 40_000;
/// The punch's time limit.
const LIMIT: Duration = Duration::from_secs(8);

/// The limit of a punch tried against the theory's refusal.
const TRY_LIMIT: Duration = Duration::from_secs(3);

/// What one peer saw.
#[derive(Debug)]
struct Seen {
    /// The punched pipe's peer, or the error.
    result: Result<SocketAddr, String>,
    /// How long the punch took.
    took: Duration,
}

pub(super) fn identity(n: usize) -> Identity {
    Identity::from_seed([n as u8; 32])
}

/// Punches between the lab's two peers (peer 1 initiates) within `limit`, each
/// announcing `nat(n)`;
/// on success they exchange one message each way through their pipes.
fn punch_between(lab: &Lab, limit: Duration, nat: impl Fn(usize) -> NatSummary) -> [Seen; 2] {
    let barrier = Arc::new(Barrier::new(2));
    let sides = [1, 2].map(|n| {
        let cfg = udp::Config {
            stun: vec![lab.stun_primary()],
            nat: nat(n),
            limit,
            ..udp::Config::default()
        };
        let bind = SocketAddr::from((lab.peer_ip(n), PORT));
        let broker = format!("mqtt://{}", lab.broker());
        let barrier = barrier.clone();
        lab.spawn_in(lab.ns_peer(n), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(side(n, broker, bind, cfg, barrier))
        })
    });
    sides.map(|s| s.join_within(LAB_T))
}

/// One peer: signaller up, both ready, punch (or answer), then one message each way.
async fn side(
    n: usize,
    broker: String,
    bind: SocketAddr,
    cfg: udp::Config,
    barrier: Arc<Barrier>,
) -> Seen {
    let node = Signaller::start(identity(n), &[broker], SignallerConfig::default())
        .await
        .expect("signaller on the lab's broker");
    let socket = UdpSocket::bind(bind).await.unwrap();
    barrier.wait();
    let started = Instant::now();
    let got = punched(n, &node, socket, &cfg).await;
    let took = started.elapsed();
    let result = match got {
        Ok(pipe) => {
            exchange(n, &pipe).await;
            Ok(pipe.peer_addr().expect("a punched pipe has a peer"))
        }
        Err(e) => Err(e.to_string()),
    };
    node.stop().await;
    Seen { result, took }
}

/// Peer `n`'s part of the punch over `node`: peer 1 punches to peer 2, peer 2 answers.
pub(super) async fn punched(
    n: usize,
    node: &Signaller,
    socket: UdpSocket,
    cfg: &udp::Config,
) -> Result<p2pipe::Pipe, punch::Error> {
    if n == 1 {
        udp::punch(node, &identity(2).public(), socket, cfg).await
    } else {
        answer(node, socket, cfg).await
    }
}

async fn answer(
    node: &Signaller,
    socket: UdpSocket,
    cfg: &udp::Config,
) -> Result<p2pipe::Pipe, punch::Error> {
    let deadline = tokio::time::Instant::now() + cfg.limit;
    loop {
        let incoming = tokio::time::timeout_at(deadline, node.recv())
            .await
            .expect("an offer in time")
            .expect("signaller running");
        if let (true, Incoming::Request(offer)) = (udp::is_offer(&incoming), &incoming) {
            return udp::answer(node, offer, socket, cfg).await;
        }
    }
}

/// Peer 1 sends first; peer 2 answers what it got.
async fn exchange(n: usize, pipe: &p2pipe::Pipe) {
    let wait = Duration::from_secs(5);
    if n == 1 {
        pipe.send(b"from peer 1").await.unwrap();
        let m = pipe.recv_timeout(wait).await.expect("peer 2's answer");
        assert_eq!(&m.data[..], b"from peer 2 after from peer 1");
    } else {
        let m = pipe.recv_timeout(wait).await.expect("peer 1's message");
        let reply = [&b"from peer 2 after "[..], &m.data[..]].concat();
        pipe.send(reply).await.unwrap();
    }
}

/// Builds a lab for `a` x `b` and punches with the kinds' own summaries.
fn punch_kinds(a: NatKind, b: NatKind) -> (Lab, [Seen; 2]) {
    let lab = Lab::builder().peers(a, b).build();
    let seen = punch_between(&lab, LIMIT, |n| NatSummary::of_type(lab.kind(n).nat_type()));
    (lab, seen)
}

/// Asserts that both peers punched, each to the other's public side (never to the
/// shared private address, which is itself).
fn assert_punched(lab: &Lab, seen: &[Seen; 2]) {
    for (i, s) in seen.iter().enumerate() {
        let (n, other) = (i + 1, 2 - i);
        let peer = s.result.as_ref().unwrap_or_else(|e| {
            panic!(
                "{} x {}: peer {n}: {e}",
                lab.kind(1).name(),
                lab.kind(2).name()
            )
        });
        assert_eq!(
            peer.ip(),
            lab.wan_ip(other),
            "peer {n} punched to peer {other}'s public side"
        );
        assert!(s.took < LIMIT, "{:?}", s.took);
    }
}

#[test]
fn full_cone_and_port_restricted_cone_peers_punch_a_udp_path_and_talk_both_ways() {
    lab_or_skip!();
    let (lab, seen) = punch_kinds(NatKind::FullCone, NatKind::PortRestrictedCone);
    assert_punched(&lab, &seen);
    assert_eq!(
        seen[0].result.as_ref().unwrap().port(),
        PORT,
        "a cone keeps the port"
    );
}

#[test]
fn two_port_restricted_peers_on_one_private_address_and_port_punch_to_each_other_never_to_themselves(
) {
    lab_or_skip!();
    let (lab, seen) = punch_kinds(NatKind::PortRestrictedCone, NatKind::PortRestrictedCone);
    assert_eq!(
        lab.peer_ip(1),
        lab.peer_ip(2),
        "one private address for both"
    );
    assert_punched(&lab, &seen);
}

#[test]
fn a_symmetric_peer_punches_to_a_restricted_cone_peer_which_answers_the_port_it_saw() {
    lab_or_skip!();
    let (lab, seen) = punch_kinds(NatKind::Symmetric, NatKind::RestrictedCone);
    assert_punched(&lab, &seen);
    let to_symmetric = seen[1].result.as_ref().unwrap();
    assert_ne!(
        to_symmetric.port(),
        PORT,
        "the symmetric NAT picked a random port"
    );
}

/// What `nat::probe` measures from peer `n`'s namespace, against the lab's coturn.
fn measure(lab: &Lab, n: usize) -> NatSummary {
    let ip = lab.peer_ip(n);
    let stun = lab.stun_primary();
    let report = lab.run_in(lab.ns_peer(n), move || {
        let quick = p2pipe::stun::Config {
            initial_rto: Duration::from_millis(100),
            max_transmissions: 3,
            final_wait_multiplier: 3,
            ..p2pipe::stun::Config::default()
        };
        let cfg = nat::ProbeConfig {
            stun: quick,
            filtering: quick,
            local_ip: Some(ip.into()),
            ..nat::ProbeConfig::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(nat::probe(Af::V4, &[stun], &cfg))
            .expect("a nat report")
    });
    NatSummary::from_report(&report)
}

#[test]
fn peers_that_measured_their_nats_with_the_nat_layer_punch_as_the_theory_says() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::Symmetric, NatKind::FullCone)
        .build();
    let measured = [measure(&lab, 1), measure(&lab, 2)];
    for (i, m) in measured.iter().enumerate() {
        let kind = lab.kind(i + 1);
        let theory = NatSummary::of_type(kind.nat_type());
        assert_eq!(
            (m.nat_type, m.mapping, m.filtering),
            (theory.nat_type, theory.mapping, theory.filtering),
            "peer {} behind {}",
            i + 1,
            kind.name()
        );
    }
    let seen = punch_between(&lab, LIMIT, |n| measured[n - 1]);
    assert_punched(&lab, &seen);
}

#[test]
fn two_symmetric_peers_are_refused_at_once_as_unpredictable() {
    lab_or_skip!();
    let (_lab, seen) = punch_kinds(NatKind::Symmetric, NatKind::Symmetric);
    for (n, s) in seen.iter().enumerate() {
        let e = s.result.as_ref().expect_err("refused");
        assert!(e.contains("unpredictable"), "peer {}: {e}", n + 1);
        assert!(s.took < LIMIT / 4, "refused in {:?}", s.took);
    }
}

/// One cell of the table: what the theory says, and what the lab did.
fn cell(a: NatKind, b: NatKind) -> String {
    let (sa, sb) = (
        NatSummary::of_type(a.nat_type()),
        NatSummary::of_type(b.nat_type()),
    );
    let theory = udp_feasibility(&sa, &sb);
    let (lab, seen) = punch_kinds(a, b);
    let pair = format!("{} x {}", a.name(), b.name());
    let took = seen[0].took.max(seen[1].took).as_secs_f64();
    match theory {
        Ok(_) => {
            assert_punched(&lab, &seen);
            format!("works ({took:.2} s)")
        }
        Err(refusal) => {
            for s in &seen {
                let e = s.result.as_ref().expect_err(&pair);
                assert!(e.contains(refusal.short()), "{pair}: {e}");
                assert!(s.took < LIMIT / 4, "{pair}: refused in {:?}", s.took);
            }
            // The theory, checked: told nothing of the NATs, the punch is tried and fails.
            drop(lab);
            let lab = Lab::builder().peers(a, b).build();
            let tried = punch_between(&lab, TRY_LIMIT, |_| NatSummary::default());
            for s in &tried {
                assert!(
                    s.result.is_err(),
                    "{pair}: punched though the theory says not"
                );
            }
            format!("cannot: {} ({took:.2} s)", refusal.short())
        }
    }
}

#[test]
#[ignore = "builds 49 labs and more (minutes): run by scripts/traversal-tables punch"]
fn every_pair_of_kinds_matches_the_table() {
    lab_or_skip!();
    let table = pair_table(cell);
    write_traversal_table("punch", &table);
}
