//! TCP hole punching between two peers behind two NATs (docs/traversal.md).
//!
//! Each peer runs a signaller on the lab's mosquitto, binds a punch port in its own
//! namespace and calls `tcp::connect` (peer 1) or `tcp::answer` (peer 2): the driver
//! learns the port's mapping by STUN over TCP from coturn's two addresses, agrees the
//! plan over signalling (the candidates, the NAT summaries, the nonces that key the
//! hellos, the round trip that sets the start and the attempts' spacing), punches, and
//! hands over a pipe, through which the peers exchange one message each way. Each side
//! announces its NAT's TCP behaviour as the lab's rulesets define it per kind
//! ([`tcp_summary`]): whether inbound TCP is filtered cannot be measured today. The
//! outcome must match the block's theory, `tcp_feasibility`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use p2pipe::identity::Identity;
use p2pipe::nat::PortAllocation;
use p2pipe::signal::{Incoming, Signaller, SignallerConfig};
use p2pipe::traverse::punch::tcp::{
    self, tcp_feasibility, Error, Inbound, PunchPort, Side, TcpMapping, TcpNatSummary, TcpRefusal,
    TcpWay,
};
use p2pipe::Pipe;

use super::{lab_or_skip, pair_table, write_traversal_table, Lab, NatKind, LAB_T};

/// The time limit of the whole operation: STUN, rendezvous and punch.
const PUNCH_LIMIT: Duration = Duration::from_secs(8);
/// A refusal (after STUN over TCP and one signalling round trip) must come well under
/// the time limit.
const AT_ONCE: Duration = Duration::from_secs(1);

/// What the lab's routers do to TCP (docs/nat-lab.md): the cone kinds are
/// port-preserving SNAT with connection-tracking filtering (their DNAT and allow rules
/// are UDP-only), symmetric SNATs to random ports, symmetric-udp-firewall is no NAT
/// behind a stateful firewall, open and udp-blocked pass TCP freely.
pub(super) fn tcp_summary(kind: NatKind) -> TcpNatSummary {
    let (mapping, inbound) = match kind {
        NatKind::Open | NatKind::UdpBlocked => (TcpMapping::Direct, Inbound::Open),
        NatKind::SymmetricUdpFirewall => (TcpMapping::Direct, Inbound::Filtered),
        NatKind::FullCone | NatKind::RestrictedCone | NatKind::PortRestrictedCone => (
            TcpMapping::Translated(Some(PortAllocation::Preserving)),
            Inbound::Filtered,
        ),
        NatKind::Symmetric => (
            TcpMapping::Translated(Some(PortAllocation::Random)),
            Inbound::Filtered,
        ),
    };
    TcpNatSummary { mapping, inbound }
}

/// How one side's punch ended.
#[derive(Debug, Clone)]
enum Ended {
    /// Its pipe carried a message each way: how long the whole took, the pipe's two
    /// ends.
    Works {
        after: Duration,
        local: SocketAddr,
        peer: SocketAddr,
    },
    /// Refused by the rendezvous: the message, and how long the refusal took.
    Refused { why: String, took: Duration },
    /// Anything else.
    Failed(String),
}

#[derive(Debug)]
struct Pair {
    kinds: (NatKind, NatKind),
    theory: Result<TcpWay, TcpRefusal>,
    ended: [Ended; 2],
}

fn identity(n: usize) -> Identity {
    Identity::from_seed([0x70 + n as u8; 32])
}

/// One side, inside its namespace: signaller up, both ready, connect (peer 1) or
/// answer (peer 2), then one message each way through the pipe.
async fn side(n: usize, broker: String, cfg: tcp::Config, ready: Arc<Barrier>) -> Ended {
    let node = Signaller::start(identity(n), &[broker], SignallerConfig::default())
        .await
        .expect("signaller on the lab's broker");
    let port = PunchPort::bind((Ipv4Addr::UNSPECIFIED, 0).into(), None).expect("bind");
    ready.wait();
    let called = Instant::now();
    let got = punched(n, &node, port, &cfg).await;
    let took = called.elapsed();
    let ended = match got {
        Ok(pipe) => match exchange(n, &pipe).await {
            Ok(()) => Ended::Works {
                after: took,
                local: pipe.local_addr(),
                peer: pipe.peer_addr().expect("a tcp pipe has a peer"),
            },
            Err(e) => Ended::Failed(e),
        },
        Err(e @ Error::Rendezvous(p2pipe::traverse::punch::Error::TcpRefused { .. })) => {
            Ended::Refused {
                why: e.to_string(),
                took,
            }
        }
        Err(e) => Ended::Failed(e.to_string()),
    };
    node.stop().await;
    ended
}

/// Peer `n`'s part of the punch over `node`, whose identity is `ids(n)`: peer 1
/// connects to peer 2, peer 2 answers.
pub(super) async fn punched_as(
    n: usize,
    ids: fn(usize) -> Identity,
    node: &Signaller,
    port: PunchPort,
    cfg: &tcp::Config,
) -> Result<Pipe, Error> {
    if n == 1 {
        tcp::connect(node, &ids(2).public(), port, cfg).await
    } else {
        answer(node, port, cfg).await
    }
}

async fn punched(
    n: usize,
    node: &Signaller,
    port: PunchPort,
    cfg: &tcp::Config,
) -> Result<Pipe, Error> {
    punched_as(n, identity, node, port, cfg).await
}

async fn answer(node: &Signaller, port: PunchPort, cfg: &tcp::Config) -> Result<Pipe, Error> {
    let deadline = tokio::time::Instant::now() + cfg.limit;
    loop {
        let incoming = tokio::time::timeout_at(deadline, node.recv())
            .await
            .expect("an offer in time")
            .expect("signaller running");
        if let (true, Incoming::Request(offer)) = (tcp::is_offer(&incoming), &incoming) {
            return tcp::answer(node, offer, port, cfg).await;
        }
    }
}

/// Peer 1 sends first; peer 2 answers what it got.
async fn exchange(n: usize, pipe: &Pipe) -> Result<(), String> {
    let wait = Duration::from_secs(5);
    let recv = || async {
        (pipe.recv_timeout(wait).await)
            .map_err(|e| format!("peer {n}: nothing through the pipe: {e}"))
    };
    let send = |m: Vec<u8>| async move {
        (pipe.send(m).await).map_err(|e| format!("peer {n}: cannot send: {e}"))
    };
    if n == 1 {
        send(b"from peer 1".to_vec()).await?;
        let m = recv().await?;
        assert_eq!(&m.data[..], b"from peer 2 after from peer 1");
    } else {
        let m = recv().await?;
        send([&b"from peer 2 after "[..], &m.data[..]].concat()).await?;
    }
    Ok(())
}

/// Builds a lab for `a` (peer 1, the initiator) and `b` (peer 2) and punches.
fn punch_pair(a: NatKind, b: NatKind) -> Pair {
    punch_pair_claiming(a, b, [tcp_summary(a), tcp_summary(b)], PUNCH_LIMIT)
}

/// As [`punch_pair`], each side announcing `nats[n]` as its NAT's TCP behaviour (true
/// or not), within `limit`.
fn punch_pair_claiming(a: NatKind, b: NatKind, nats: [TcpNatSummary; 2], limit: Duration) -> Pair {
    let lab = Lab::builder().peers(a, b).build();
    let ready = Arc::new(Barrier::new(2));
    let sides = [1, 2].map(|n| {
        let cfg = tcp::Config {
            stun: vec![lab.stun_primary(), lab.stun_alternate()],
            limit,
            ..tcp::Config::new(nats[n - 1])
        };
        let broker = format!("mqtt://{}", lab.broker());
        let ready = ready.clone();
        lab.spawn_in(lab.ns_peer(n), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(side(n, broker, cfg, ready))
        })
    });
    let ended = sides.map(|s| s.join_within(limit + LAB_T));
    check_ends(&lab, &ended);
    Pair {
        kinds: (a, b),
        theory: tcp_feasibility(&nats[0], &nats[1]),
        ended,
    }
}

/// Where both sides' pipes work, each runs to the other's public side (the router's WAN
/// address, never the shared private one), and a NAT that preserves ports shows the
/// peer's own port.
fn check_ends(lab: &Lab, ended: &[Ended; 2]) {
    let [Ended::Works {
        local: l1,
        peer: p1,
        ..
    }, Ended::Works {
        local: l2,
        peer: p2,
        ..
    }] = ended
    else {
        return;
    };
    for (n, peer, other_local) in [(1, p1, l2), (2, p2, l1)] {
        let other = 3 - n;
        assert_eq!(peer.ip(), lab.wan_ip(other), "peer {n}: {ended:?}");
        if lab.kind(other) != NatKind::Symmetric {
            assert_eq!(peer.port(), other_local.port(), "peer {n}: {ended:?}");
        }
    }
}

/// Whether the outcome is the theory's: both sides connected where it works, both
/// refused at once where it cannot.
fn matches_theory(p: &Pair) -> Result<(), String> {
    let ok = match (&p.theory, &p.ended) {
        (Ok(_), [Ended::Works { .. }, Ended::Works { .. }]) => true,
        (Err(_), [Ended::Refused { took: t1, .. }, Ended::Refused { took: t2, .. }]) => {
            *t1 < AT_ONCE && *t2 < AT_ONCE
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} x {:?}: theory {:?}, but {:?}",
            p.kinds.0, p.kinds.1, p.theory, p.ended
        ))
    }
}

fn cell(p: &Pair) -> String {
    let slowest = |e: &[Ended; 2]| -> Option<Duration> {
        e.iter()
            .map(|e| match e {
                Ended::Works { after, .. } => Some(*after),
                Ended::Refused { took, .. } => Some(*took),
                Ended::Failed(_) => None,
            })
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max())
    };
    let ms = slowest(&p.ended).map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
    let verdict = match &p.theory {
        Ok(TcpWay::SimultaneousOpen) => "works (simultaneous open)".to_owned(),
        Ok(TcpWay::ConnectToPeer) => "works (A connects to B)".to_owned(),
        Ok(TcpWay::PeerConnects) => "works (B connects to A)".to_owned(),
        Err(TcpRefusal::Unpredictable { side }) => {
            let who = match side {
                Side::Local => "A",
                Side::Remote => "B",
                Side::Both => "A and B",
            };
            format!("cannot: unpredictable ports ({who}) behind filters")
        }
    };
    match matches_theory(p) {
        Ok(()) => format!("{verdict}, {ms}"),
        Err(_) => format!("**MISMATCH** {verdict}: {:?}", p.ended),
    }
}

#[test]
fn two_port_restricted_cone_peers_agree_over_signalling_and_open_one_tcp_pipe_simultaneously() {
    lab_or_skip!();
    let p = punch_pair(NatKind::PortRestrictedCone, NatKind::PortRestrictedCone);
    assert_eq!(p.theory, Ok(TcpWay::SimultaneousOpen));
    matches_theory(&p).unwrap();
    // check_ends: each side's pipe runs to the other's router, at the other's port.
    for (i, e) in p.ended.iter().enumerate() {
        let Ended::Works { after, .. } = e else {
            unreachable!()
        };
        assert!(*after < PUNCH_LIMIT / 2, "side {i} took {after:?}");
    }
}

#[test]
fn a_symmetric_peer_connects_to_an_open_peer_from_a_port_nobody_predicted() {
    lab_or_skip!();
    let p = punch_pair(NatKind::Symmetric, NatKind::Open);
    assert_eq!(p.theory, Ok(TcpWay::ConnectToPeer));
    matches_theory(&p).unwrap();
    let [Ended::Works { local, .. }, Ended::Works { peer, .. }] = &p.ended else {
        unreachable!()
    };
    assert_ne!(
        peer.port(),
        local.port(),
        "the open side was reached from a random port of the symmetric nat: {p:?}"
    );
}

#[test]
fn symmetric_peers_are_refused_at_once_as_unpredictable() {
    lab_or_skip!();
    let p = punch_pair(NatKind::Symmetric, NatKind::Symmetric);
    assert_eq!(
        p.theory,
        Err(TcpRefusal::Unpredictable { side: Side::Both })
    );
    matches_theory(&p).unwrap();
    for e in &p.ended {
        let Ended::Refused { why, .. } = e else {
            unreachable!()
        };
        assert!(why.contains("unpredictable"), "{why}");
    }
}

#[test]
fn a_punch_forced_past_the_refusal_between_symmetric_and_a_cone_gets_nothing() {
    lab_or_skip!();
    // The symmetric side claims its NAT preserves ports: the theory is bypassed, and
    // the lab shows why it refuses.
    let lie = TcpNatSummary {
        mapping: TcpMapping::Translated(Some(PortAllocation::Preserving)),
        inbound: Inbound::Filtered,
    };
    let limit = Duration::from_secs(2);
    let kinds = (NatKind::Symmetric, NatKind::PortRestrictedCone);
    let p = punch_pair_claiming(kinds.0, kinds.1, [lie, tcp_summary(kinds.1)], limit);
    assert_eq!(p.theory, Ok(TcpWay::SimultaneousOpen), "the lie");
    for e in &p.ended {
        let Ended::Failed(why) = e else {
            panic!("a punch the theory rules out got through: {p:?}");
        };
        assert!(why.contains("gave no connection within"), "{why}");
        assert!(why.contains("(no answer)"), "{why}");
    }
}

#[test]
#[ignore = "every pair of kinds: 49 labs; run by scripts/traversal-tables"]
fn every_pair_of_kinds_matches_the_table() {
    lab_or_skip!();
    let mut mismatches = Vec::new();
    let table = pair_table(|a, b| {
        let p = punch_pair(a, b);
        if let Err(e) = matches_theory(&p) {
            mismatches.push(e);
        }
        cell(&p)
    });
    write_traversal_table("tcppunch", &table);
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}
