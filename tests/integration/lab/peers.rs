//! Tests of the two-peer lab itself: both translating peers share one private
//! address and are seen at their own routers, an open router's peer is
//! reachable at its routed address, routers drop unsolicited connections to
//! themselves without a reset, and both peers reach the broker and coturn's
//! TURN service.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use super::{lab_or_skip, Lab, NatKind};

/// Far longer than a reply within the lab takes (well under a millisecond).
const WAIT: Duration = Duration::from_millis(500);

fn inet_server() -> SocketAddr {
    (Ipv4Addr::new(203, 0, 113, 10), 0).into()
}

#[test]
fn two_translating_peers_share_one_private_address_and_are_seen_at_their_own_routers() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::FullCone, NatKind::PortRestrictedCone)
        .build();
    assert_eq!(lab.peer_ip(1), Ipv4Addr::new(198, 18, 1, 2));
    assert_eq!(lab.peer_ip(2), lab.peer_ip(1), "one private LAN for both");
    assert_ne!(lab.wan_ip(1), lab.wan_ip(2));
    let server = lab.whoami_server(lab.ns_inet(), inet_server());
    for n in 1..=2 {
        let seen = lab
            .whoami(lab.ns_peer(n), None, server.addr(), 3)
            .unwrap_or_else(|| panic!("peer {n} got no reply through its router"));
        assert_eq!(seen.local.ip(), lab.peer_ip(n));
        assert_eq!(
            seen.seen.ip(),
            lab.wan_ip(n),
            "peer {n} is seen at its router"
        );
    }
}

#[test]
fn a_peer_behind_an_open_router_is_reached_at_its_routed_address() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::Open, NatKind::Symmetric)
        .build();
    assert_eq!(lab.peer_ip(1), Ipv4Addr::new(198, 19, 1, 2));
    assert_eq!(lab.wan_ip(1), lab.peer_ip(1));
    let at_peer1 = lab.whoami_server(lab.ns_peer(1), (lab.peer_ip(1), 0).into());
    let seen = lab
        .whoami(lab.ns_peer(2), None, at_peer1.addr(), 3)
        .expect("peer 2 got no reply from the open peer");
    assert_eq!(
        seen.seen.ip(),
        lab.wan_ip(2),
        "peer 2 is seen at its router"
    );
}

#[test]
fn a_router_drops_unsolicited_connections_to_itself_without_a_reset() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::PortRestrictedCone, NatKind::PortRestrictedCone)
        .build();
    let router1 = SocketAddr::from((lab.wan_ip(1), 4000));
    let inet_closed = SocketAddr::from((Ipv4Addr::new(198, 51, 100, 2), 4000));
    let (to_router, to_inet) = lab.run_in(lab.ns_peer(2), move || {
        (
            TcpStream::connect_timeout(&router1, WAIT).map(drop),
            TcpStream::connect_timeout(&inet_closed, WAIT).map(drop),
        )
    });
    // A closed port elsewhere answers with a reset; the router says nothing.
    assert_eq!(
        to_inet.map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused)
    );
    assert_eq!(to_router.map_err(|e| e.kind()), Err(ErrorKind::TimedOut));
}

#[test]
fn both_peers_reach_the_broker_and_turn_asks_them_for_credentials() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::Symmetric, NatKind::UdpBlocked)
        .build();
    let turn = lab.turn();
    assert!(
        !format!("{turn:?}").contains(&turn.password),
        "the TURN password is printed"
    );
    let broker = lab.broker();
    for n in 1..=2 {
        let up = lab.run_in(lab.ns_peer(n), move || {
            TcpStream::connect_timeout(&broker, WAIT).map(drop)
        });
        up.unwrap_or_else(|e| panic!("peer {n} cannot reach the broker at {broker}: {e}"));
    }
    // An Allocate without credentials (REQUESTED-TRANSPORT UDP) is refused
    // with 401 and the lab's realm: coturn relays, with long-term credentials.
    let mut allocate = vec![0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
    allocate.extend_from_slice(&[7; 12]);
    allocate.extend_from_slice(&[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]);
    let server = turn.udp;
    let again = allocate.clone();
    let reply = lab.run_in(lab.ns_peer(1), move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        socket.set_read_timeout(Some(WAIT)).expect("timeout");
        socket.send_to(&allocate, server).expect("send");
        let mut buf = [0u8; 1500];
        socket.recv(&mut buf).map(|n| buf[..n].to_vec())
    });
    let reply = reply.expect("no answer from coturn to an Allocate");
    assert_eq!(reply[..2], [0x01, 0x13], "not an Allocate error response");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains(&turn.realm), "no realm in the 401");
    // Peer 2's router blocks UDP: its Allocate over UDP gets no answer.
    let lost = lab.run_in(lab.ns_peer(2), move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        socket.set_read_timeout(Some(WAIT)).expect("timeout");
        socket.send_to(&again, server).expect("send");
        socket.recv(&mut [0u8; 64]).map_err(|e| e.kind())
    });
    assert!(
        matches!(lost, Err(ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "UDP passed a udp-blocked router: {lost:?}"
    );
}
