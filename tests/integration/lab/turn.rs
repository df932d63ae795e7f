//! TURN relays between two peers behind two NATs (docs/traversal.md).
//!
//! Each peer allocates its own relay on the lab's coturn, from its own namespace, and
//! the two exchange datagrams relay to relay (each binds a channel to the other's
//! relayed address), or, for RFC 6062, one peer's TCP allocation accepts a plain TCP
//! connection from the other. The test hands each side the other's relayed address,
//! as signalling would. The outcome must match the block's theory,
//! `turn::relay_feasibility`, over each kind's NAT type.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use p2pipe::nat::NatType;
use p2pipe::traverse::turn::{
    relay_feasibility, transport_for, Credentials, Relay, Transport, TurnServer,
};
use p2pipe::{Pipe, Proto};
use tokio::sync::oneshot;

use super::{lab_or_skip, pair_table, write_traversal_table, Lab, NatKind, LAB_T};

/// The relay's time limit where the theory says it works.
pub(super) const LIMIT: Duration = Duration::from_secs(5);
/// The limit where it says a side cannot reach the server: the wait for the proof.
const BLOCKED_LIMIT: Duration = Duration::from_millis(1500);

/// The lab's coturn as the TURN client sees it.
pub(super) fn server(lab: &Lab) -> TurnServer {
    let t = lab.turn();
    TurnServer {
        udp: t.udp,
        tcp: t.tcp,
        credentials: Credentials::new(t.user, t.password).expect("lab credentials"),
        realm: Some(t.realm),
    }
}

pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// One side, inside its namespace: allocate, tell the relayed address, learn the
/// other's, bind a channel to it, and ping (the first side) or answer (the other)
/// until both know the path works. Gives how long that took.
fn side(
    server: TurnServer,
    transport: Transport,
    limit: Duration,
    first: bool,
    tell: mpsc::Sender<Result<SocketAddr, String>>,
    other: oneshot::Receiver<SocketAddr>,
) -> Result<Duration, String> {
    runtime().block_on(async move {
        let t0 = Instant::now();
        let relay = match Relay::allocate(&server, transport, limit).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tell.send(Err(e.to_string()));
                return Err(e.to_string());
            }
        };
        tell.send(Ok(relay.relayed_addr()))
            .map_err(|e| e.to_string())?;
        let other = tokio::time::timeout(LAB_T, other)
            .await
            .map_err(|_| "no word of the other side".to_owned())?
            .map_err(|_| "the other side failed".to_owned())?;
        let pipe = relay.pipe(other).await.map_err(|e| e.to_string())?;
        let talk = async {
            if first {
                ping(&pipe).await
            } else {
                answer(&pipe).await
            }
        };
        tokio::time::timeout(limit, talk)
            .await
            .map_err(|_| format!("no exchange with {other} within {limit:?}"))??;
        let took = t0.elapsed();
        relay.close().await.map_err(|e| e.to_string())?;
        Ok(took)
    })
}

/// Pings until a pong comes (the other side may not have bound its channel yet), then
/// says goodbye.
async fn ping(pipe: &Pipe) -> Result<(), String> {
    loop {
        pipe.send(b"ping").await.map_err(|e| e.to_string())?;
        if let Ok(m) = pipe.recv_timeout(Duration::from_millis(200)).await {
            if &m.data[..] == b"pong" {
                break;
            }
        }
    }
    for _ in 0..3 {
        pipe.send(b"bye").await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Answers pings until the goodbye.
async fn answer(pipe: &Pipe) -> Result<(), String> {
    loop {
        let m = pipe.recv().await.map_err(|e| e.to_string())?;
        match &m.data[..] {
            b"ping" => pipe.send(b"pong").await.map_err(|e| e.to_string())?,
            b"bye" => return Ok(()),
            _ => {}
        }
    }
}

/// Runs both sides in a fresh lab of `a` and `b`, over `transports`; each side's
/// result.
fn relay_pair(
    lab: &Lab,
    transports: [Transport; 2],
    limit: Duration,
) -> [Result<Duration, String>; 2] {
    let mut tells = Vec::new();
    let mut others = Vec::new();
    let mut handles = Vec::new();
    for (n, t) in transports.into_iter().enumerate() {
        let (tell, told) = mpsc::channel();
        let (other_tx, other_rx) = oneshot::channel();
        let server = server(lab);
        handles.push(lab.spawn_in(lab.ns_peer(n + 1), move || {
            side(server, t, limit, n == 0, tell, other_rx)
        }));
        tells.push(told);
        others.push(Some(other_tx));
    }
    let relayed: Vec<Option<SocketAddr>> = tells
        .iter()
        .map(|t| t.recv_timeout(LAB_T).ok().and_then(Result::ok))
        .collect();
    if let [Some(r0), Some(r1)] = relayed[..] {
        let _ = others[0].take().expect("once").send(r1);
        let _ = others[1].take().expect("once").send(r0);
    }
    // A side whose allocation failed drops its sender: the other learns it at once.
    drop(others);
    let ended: Vec<_> = handles
        .into_iter()
        .map(|h| h.join_within(LAB_T + limit))
        .collect();
    [ended[0].clone(), ended[1].clone()]
}

/// The cell of one pair: over UDP to the server, and, where that cannot work, over
/// each side's own transport (`transport_for`: TCP where UDP is blocked). Checks both
/// against the theory; a cell's time is the slower side's, from its allocate to the
/// end of the exchange.
fn pair_cell(a: NatKind, b: NatKind) -> (String, Vec<String>) {
    let lab = Lab::builder().peers(a, b).build();
    let (na, nb) = (a.nat_type(), b.nat_type());
    let mut mismatches = Vec::new();
    let theory = relay_feasibility(na, nb, Transport::Udp);
    let limit = if theory.is_ok() { LIMIT } else { BLOCKED_LIMIT };
    let udp = relay_pair(&lab, [Transport::Udp; 2], limit);
    let worked = udp.iter().all(Result::is_ok);
    if worked != theory.is_ok() {
        mismatches.push(format!(
            "{a} / {b} over udp: theory {theory:?}, got {udp:?}"
        ));
    }
    let cell = match theory {
        Ok(()) => format!("works ({} ms)", took(&udp)),
        Err(why) => {
            let best = [transport_for(na), transport_for(nb)];
            let fallback = relay_pair(&lab, best, LIMIT);
            if !fallback.iter().all(Result::is_ok) {
                mismatches.push(format!("{a} / {b} over {best:?}: {fallback:?}"));
            }
            format!("udp cannot: {why}; tcp works ({} ms)", took(&fallback))
        }
    };
    (cell, mismatches)
}

fn took(sides: &[Result<Duration, String>; 2]) -> u128 {
    sides
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(Duration::as_millis)
        .max()
        .unwrap_or(0)
}

#[test]
fn peers_behind_full_cone_and_symmetric_nats_relay_to_each_other_over_udp_and_tcp() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::FullCone, NatKind::Symmetric)
        .build();
    for transports in [[Transport::Udp; 2], [Transport::Tcp, Transport::Udp]] {
        let [a, b] = relay_pair(&lab, transports, LIMIT);
        assert!(
            a.is_ok() && b.is_ok(),
            "{transports:?}: {a:?} {b:?}\n{}",
            lab.coturn_log()
        );
    }
}

#[test]
fn a_udp_blocked_peer_cannot_relay_over_udp_but_does_over_tcp_to_the_server() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::UdpBlocked, NatKind::Symmetric)
        .build();
    let (na, nb) = (NatType::UdpBlocked, NatType::Symmetric);
    assert!(relay_feasibility(na, nb, Transport::Udp).is_err());
    let [a, b] = relay_pair(&lab, [Transport::Udp; 2], BLOCKED_LIMIT);
    let e = a.expect_err("a udp-blocked side gets no allocation over udp");
    assert!(
        e.contains("did not answer allocate") && e.contains("203.0.113.10:3478"),
        "{e}"
    );
    assert!(b.is_err(), "the other side learns that its peer failed");
    let best = [transport_for(na), transport_for(nb)];
    assert_eq!(best, [Transport::Tcp, Transport::Udp]);
    let [a, b] = relay_pair(&lab, best, LIMIT);
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}\n{}", lab.coturn_log());
}

#[test]
fn a_tcp_allocation_carries_a_tcp_pipe_between_peers_behind_nats() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::PortRestrictedCone, NatKind::Symmetric)
        .build();
    let server = server(&lab);
    // Peer 2 is seen at its router's WAN address; the permission is per address.
    let dialer_ip = lab.wan_ip(2);
    let (tell, told) = mpsc::channel();
    let acceptor = lab.spawn_in(lab.ns_peer(1), move || {
        runtime().block_on(async move {
            let relay = Relay::allocate_tcp(&server, LIMIT)
                .await
                .map_err(|e| e.to_string())?;
            relay
                .permit(SocketAddr::new(dialer_ip.into(), 1))
                .await
                .map_err(|e| e.to_string())?;
            tell.send(relay.relayed_addr()).map_err(|e| e.to_string())?;
            let (pipe, from) = relay.accept_tcp().await.map_err(|e| e.to_string())?;
            let m = pipe.recv_timeout(LIMIT).await.map_err(|e| e.to_string())?;
            pipe.send(&m.data).await.map_err(|e| e.to_string())?;
            // Keep the allocation until the dialer has its echo and hangs up: closing
            // it first would reset the dialer's connection.
            let end = pipe.recv_timeout(LIMIT).await;
            assert!(end.is_err(), "nothing after the echo: {end:?}");
            Ok::<_, String>((from, m.data.to_vec()))
        })
    });
    let relayed = told.recv_timeout(LAB_T).expect("the relayed address");
    let echoed = lab.run_in(lab.ns_peer(2), move || {
        runtime().block_on(async move {
            let pipe = Pipe::connect(Proto::Tcp, relayed)
                .await
                .map_err(|e| e.to_string())?;
            pipe.send(b"through two nats")
                .await
                .map_err(|e| e.to_string())?;
            let m = pipe.recv_timeout(LIMIT).await.map_err(|e| e.to_string())?;
            pipe.close().await;
            Ok::<_, String>(m.data.to_vec())
        })
    });
    assert_eq!(echoed.as_deref(), Ok(&b"through two nats"[..]));
    let (from, got) = acceptor.join_within(LAB_T).expect("the acceptor");
    assert_eq!(from.ip(), std::net::IpAddr::from(dialer_ip));
    assert_eq!(got, b"through two nats");
}

#[test]
#[ignore = "every ordered pair of kinds: 49 labs; run by scripts/traversal-tables"]
fn every_pair_of_kinds_matches_the_table() {
    lab_or_skip!();
    let mut mismatches = Vec::new();
    // Ordered: the sides play different parts (the first one pings).
    let table = pair_table(|a, b| {
        let (cell, bad) = pair_cell(a, b);
        mismatches.extend(bad);
        cell
    });
    write_traversal_table("turn", &table);
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}
