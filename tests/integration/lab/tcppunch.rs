//! TCP hole punching between two peers behind two NATs (docs/traversal-tcp.md).
//!
//! Each peer binds a punch port in its own namespace and learns its mapping by STUN
//! over TCP from coturn's two addresses, from that very port. The test plays the
//! rendezvous: it builds each side's plan from the other side's candidates (its mapped
//! addresses, and predicted ports where its NAT allows), an RTT it measures over TCP
//! through the internet namespace, and one start moment for both. The outcome must match
//! the block's theory, `tcp_feasibility`, over the lab's TCP behaviour per kind
//! ([`tcp_summary`]).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use p2pipe::nat::PortAllocation;
use p2pipe::traverse::punch::predict;
use p2pipe::traverse::punch::tcp::{
    tcp_feasibility, Error, HelloKey, Inbound, PunchPort, Side, TcpMapping, TcpNatSummary,
    TcpRefusal, TcpWay,
};
use p2pipe::traverse::punch::{Plan, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{lab_or_skip, Lab, NatKind, LAB_T};

/// The punch's time limit.
const PUNCH_LIMIT: Duration = Duration::from_secs(8);
/// The limit for learning one mapping by STUN over TCP.
const LEARN_LIMIT: Duration = Duration::from_secs(3);
/// How far ahead of the plans' hand-over the start moment lies.
const START_AFTER: Duration = Duration::from_millis(150);
/// A refusal must come well under the time limit.
const AT_ONCE: Duration = Duration::from_millis(100);

/// What the lab's routers do to TCP (docs/nat-lab.md): the cone kinds are
/// port-preserving SNAT with connection-tracking filtering (their DNAT and allow rules
/// are UDP-only), symmetric SNATs to random ports, symmetric-udp-firewall is no NAT
/// behind a stateful firewall, open and udp-blocked pass TCP freely.
fn tcp_summary(kind: NatKind) -> TcpNatSummary {
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

fn allocation(s: &TcpNatSummary) -> Option<PortAllocation> {
    match s.mapping {
        TcpMapping::Direct => Some(PortAllocation::Preserving),
        TcpMapping::Translated(a) => a,
    }
}

/// A side's punch port, as the other side hears of it.
#[derive(Debug, Clone)]
struct Learned {
    local: SocketAddr,
    mapped: Vec<SocketAddr>,
}

/// How one side's punch ended.
#[derive(Debug, Clone)]
enum Ended {
    /// Connected and exchanged data: when (after the start), and with whom.
    Works { after: Duration, peer: SocketAddr },
    /// Refused before sending anything: the message, and how long the refusal took.
    Refused { why: String, took: Duration },
    /// Anything else.
    Failed(String),
}

#[derive(Debug)]
struct Pair {
    kinds: (NatKind, NatKind),
    theory: Result<TcpWay, TcpRefusal>,
    learned: [Learned; 2],
    ended: [Ended; 2],
}

/// The round trip between the peers over TCP: one TCP connect from each peer to a
/// server in the internet namespace (a SYN and its SYN-ACK), added up.
fn rtt_through_inet(lab: &Lab) -> Duration {
    let server = lab.tcp_whoami_server(lab.ns_inet(), (Ipv4Addr::new(203, 0, 113, 10), 0).into());
    let to = server.addr();
    (1..=2)
        .map(|n| {
            lab.run_in(lab.ns_peer(n), move || {
                let t0 = Instant::now();
                std::net::TcpStream::connect_timeout(&to, LEARN_LIMIT)
                    .unwrap_or_else(|e| panic!("peer {n} cannot reach {to}: {e}"));
                t0.elapsed()
            })
        })
        .sum()
}

/// One side, inside its namespace: learn, hand over what it learned, take its plan,
/// punch, and prove the connection with a ping and a pong.
fn side(
    stun: [SocketAddr; 2],
    tell: mpsc::Sender<Learned>,
    plans: mpsc::Receiver<Plan>,
    nats: (TcpNatSummary, TcpNatSummary),
    limit: Duration,
) -> Ended {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let mut port = PunchPort::bind((Ipv4Addr::UNSPECIFIED, 0).into(), None).expect("bind");
        for server in stun {
            port.learn(server, LEARN_LIMIT)
                .await
                .expect("stun over tcp");
        }
        let learned = Learned {
            local: port.local_addr(),
            mapped: port.mapped().to_vec(),
        };
        tell.send(learned).expect("the test listens");
        let plan = plans.recv_timeout(LAB_T).expect("a plan");
        let key = HelloKey::from_nonces(b"lab initiator nonce", b"lab responder nonce");
        let called = Instant::now();
        match port.punch(&plan, &nats.0, &nats.1, &key, limit).await {
            Ok(mut stream) => {
                let after = plan.start.elapsed();
                let peer = stream.peer_addr().expect("peer address");
                let mut buf = [0u8; 4];
                let talk = async {
                    if plan.role == Role::Initiator {
                        stream.write_all(b"ping").await?;
                        stream.read_exact(&mut buf).await?;
                        assert_eq!(&buf, b"pong");
                    } else {
                        stream.read_exact(&mut buf).await?;
                        assert_eq!(&buf, b"ping");
                        stream.write_all(b"pong").await?;
                    }
                    std::io::Result::Ok(())
                };
                match tokio::time::timeout(LEARN_LIMIT, talk).await {
                    Ok(Ok(())) => Ended::Works { after, peer },
                    other => {
                        Ended::Failed(format!("no ping-pong on the punched connection: {other:?}"))
                    }
                }
            }
            Err(e @ Error::Refused { .. }) => Ended::Refused {
                why: e.to_string(),
                took: called.elapsed(),
            },
            Err(e) => Ended::Failed(e.to_string()),
        }
    })
}

/// Builds a lab for `a` (peer 1, the initiator) and `b` (peer 2) and punches.
fn punch_pair(a: NatKind, b: NatKind) -> Pair {
    punch_pair_claiming(a, b, [tcp_summary(a), tcp_summary(b)], PUNCH_LIMIT)
}

/// As [`punch_pair`], with each side told `nats` of the two NATs (true or not), and
/// the punch's time limit `limit`.
fn punch_pair_claiming(a: NatKind, b: NatKind, nats: [TcpNatSummary; 2], limit: Duration) -> Pair {
    let lab = Lab::builder().peers(a, b).build();
    let rtt = rtt_through_inet(&lab);
    let stun = [lab.stun_primary(), lab.stun_alternate()];
    let mut tells = Vec::new();
    let mut plan_txs = Vec::new();
    let mut handles = Vec::new();
    for n in 0..2 {
        let (tell, told) = mpsc::channel();
        let (plan_tx, plan_rx) = mpsc::channel();
        let nat_pair = (nats[n], nats[1 - n]);
        handles.push(lab.spawn_in(lab.ns_peer(n + 1), move || {
            side(stun, tell, plan_rx, nat_pair, limit)
        }));
        tells.push(told);
        plan_txs.push(plan_tx);
    }
    let learned: Vec<Learned> = tells
        .iter()
        .map(|t| t.recv_timeout(LAB_T).expect("a side learned its mapping"))
        .collect();
    let start = Instant::now() + START_AFTER;
    for n in 0..2 {
        let other = &learned[1 - n];
        // A side whose ports cannot be predicted still names what STUN saw.
        let remote = predict::candidates(allocation(&nats[1 - n]), &other.mapped)
            .unwrap_or_else(|_| other.mapped.clone());
        let role = if n == 0 {
            Role::Initiator
        } else {
            Role::Responder
        };
        let plan = Plan {
            remote,
            start,
            rtt,
            role,
        };
        plan_txs[n].send(plan).expect("the side waits for its plan");
    }
    let join_limit = START_AFTER + limit + LAB_T;
    let ended: Vec<Ended> = (handles.into_iter())
        .map(|h| h.join_within(join_limit))
        .collect();
    check_mappings(&lab, &learned);
    Pair {
        kinds: (a, b),
        theory: tcp_feasibility(&nats[0], &nats[1]),
        learned: [learned[0].clone(), learned[1].clone()],
        ended: [ended[0].clone(), ended[1].clone()],
    }
}

/// The mappings STUN over TCP saw are the lab's: the router's WAN address where it
/// translates (the same port towards both STUN addresses, but behind symmetric), the
/// peer's own address where it does not.
fn check_mappings(lab: &Lab, learned: &[Learned]) {
    for (i, l) in learned.iter().enumerate() {
        let n = i + 1;
        let kind = lab.kind(n);
        let [first, second] = l.mapped[..] else {
            panic!("peer {n}: two mappings expected: {l:?}");
        };
        assert_eq!(first.ip(), lab.wan_ip(n), "peer {n} ({kind}): {l:?}");
        assert_eq!(second.ip(), lab.wan_ip(n), "peer {n} ({kind}): {l:?}");
        if kind.translates() && kind != NatKind::Symmetric || !kind.translates() {
            assert_eq!(
                first.port(),
                l.local.port(),
                "peer {n} ({kind}) keeps its port: {l:?}"
            );
            assert_eq!(first, second, "peer {n} ({kind}): {l:?}");
        } else {
            assert_ne!(
                first, second,
                "peer {n} ({kind}) maps per destination: {l:?}"
            );
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
fn two_port_restricted_cone_peers_open_one_tcp_connection_simultaneously() {
    lab_or_skip!();
    let p = punch_pair(NatKind::PortRestrictedCone, NatKind::PortRestrictedCone);
    assert_eq!(p.theory, Ok(TcpWay::SimultaneousOpen));
    matches_theory(&p).unwrap();
    // Each side's connection runs to the other's mapped address: through both NATs.
    for i in 0..2 {
        let Ended::Works { peer, after } = &p.ended[i] else {
            unreachable!()
        };
        assert_eq!(*peer, p.learned[1 - i].mapped[0], "side {i}: {p:?}");
        assert!(*after < PUNCH_LIMIT / 2, "side {i} took {after:?}");
    }
}

#[test]
fn a_symmetric_peer_connects_to_an_open_peer_from_a_port_nobody_predicted() {
    lab_or_skip!();
    let p = punch_pair(NatKind::Symmetric, NatKind::Open);
    assert_eq!(p.theory, Ok(TcpWay::ConnectToPeer));
    matches_theory(&p).unwrap();
    let Ended::Works { peer, .. } = &p.ended[1] else {
        unreachable!()
    };
    assert!(
        !p.learned[0].mapped.contains(peer),
        "the open side was reached from a fresh random port, not {peer}: {p:?}"
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
    // Both sides are told the symmetric NAT preserves ports: the theory is bypassed,
    // and the lab shows why it refuses.
    let lie = TcpNatSummary {
        mapping: TcpMapping::Translated(Some(PortAllocation::Preserving)),
        inbound: Inbound::Filtered,
    };
    let limit = Duration::from_secs(2);
    let kinds = (NatKind::Symmetric, NatKind::PortRestrictedCone);
    let p = punch_pair_claiming(kinds.0, kinds.1, [lie, lie], limit);
    assert_eq!(p.theory, Ok(TcpWay::SimultaneousOpen), "the lie");
    for e in &p.ended {
        let Ended::Failed(why) = e else {
            panic!("a punch the theory rules out got through: {p:?}");
        };
        assert!(why.contains("gave no connection within 2s"), "{why}");
        assert!(why.contains("(no answer)"), "{why}");
    }
}

#[test]
#[ignore = "every pair of kinds: 49 labs; run by scripts/traversal-tables"]
fn every_pair_of_kinds_matches_the_table() {
    lab_or_skip!();
    let mut table = String::from("| A \\ B |");
    for b in NatKind::ALL {
        write!(table, " {} |", b.name()).unwrap();
    }
    table.push_str("\n|---|");
    table.push_str(&"---|".repeat(NatKind::ALL.len()));
    let mut mismatches = Vec::new();
    for a in NatKind::ALL {
        write!(table, "\n| {} |", a.name()).unwrap();
        for b in NatKind::ALL {
            let p = punch_pair(a, b);
            if let Err(e) = matches_theory(&p) {
                mismatches.push(e);
            }
            write!(table, " {} |", cell(&p)).unwrap();
        }
    }
    table.push('\n');
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("traversal");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tcppunch.md"), &table).unwrap();
    println!("{table}");
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}
