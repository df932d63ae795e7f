//! Tests of the lab itself: coturn's own natdiscovery tool sees each NAT kind
//! as intended, the filtering of each kind checked by hand, sockets made by
//! `run_in` live in their namespace, a second uplink is reached by binding
//! to its device, and loss drops packets without cutting the path; and the
//! harness's own checks: missing programs, bounded joins.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::{
    lab_or_skip, missing_program, netns_list, per_kind, spawn_bounded, Behaviour, Lab, NatKind,
    LAB_T,
};
use crate::support::SHORT;

/// natdiscovery behind a filtering NAT waits about 3 s for each missing
/// answer; a whole run takes at most about 7 s.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(40);

fn show(b: Option<Behaviour>) -> &'static str {
    b.map_or("-", Behaviour::name)
}

/// Each program a lab test runs, when missing, makes the lab unavailable (a skip, or a
/// failure under CI=true) rather than a panic in the middle of a test: `conntrack`
/// included, which `Lab::flush_conntrack` runs.
#[test]
fn a_missing_lab_program_makes_the_lab_unavailable() {
    assert_eq!(missing_program(|p| Some(p.into())), Ok(()));
    for gone in [
        "ip",
        "nft",
        "turnserver",
        "turnutils_natdiscovery",
        "conntrack",
    ] {
        let find = |p: &str| (p != gone).then(|| p.into());
        assert_eq!(
            missing_program(find),
            Err(format!("`{gone}` not found")),
            "without {gone}"
        );
    }
}

/// Joining a lab's thread (a server in a namespace, a lab of `per_kind`) is bounded: a
/// thread still running at the limit fails the test instead of hanging it, a panic in
/// the thread comes through, and so does its result.
#[test]
fn a_lab_thread_still_running_at_the_limit_fails_its_join() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let blocked = spawn_bounded("blocked".into(), move || {
        let _ = wait.recv_timeout(LAB_T);
    });
    let joined = catch_unwind(AssertUnwindSafe(|| blocked.join_within(SHORT)));
    let _ = release.send(());
    let why = joined.expect_err("joined a thread that was still running");
    let why = why.downcast_ref::<String>().map_or("", String::as_str);
    assert!(why.contains("did not end within"), "{why}");

    let panicking = spawn_bounded("panics".into(), || -> u32 { panic!("inside the thread") });
    let why = catch_unwind(AssertUnwindSafe(|| panicking.join_within(LAB_T)))
        .expect_err("the thread's panic");
    assert_eq!(why.downcast_ref::<&str>(), Some(&"inside the thread"));
    assert_eq!(spawn_bounded("returns".into(), || 7).join_within(LAB_T), 7);
}

#[test]
fn natdiscovery_sees_every_kind() {
    lab_or_skip!();
    // One lab per kind, all at once (each has its own namespaces).
    let results: Vec<_> = per_kind(&NatKind::ALL, None, |lab, _| {
        let (d, run) = lab.natdiscovery(DISCOVERY_LIMIT);
        (lab.wan_ip(1), d, run)
    })
    .into_iter()
    .map(|(kind, (wan, d, run))| (kind, wan, d, run))
    .collect();

    println!("| kind | natdiscovery mapping | natdiscovery filtering | no NAT seen | wall ms |");
    println!("|---|---|---|---|---|");
    for (kind, _, d, run) in &results {
        println!(
            "| {kind} | {} | {} | {} | {} |",
            show(d.mapping),
            show(d.filtering),
            if d.no_nat { "yes" } else { "no" },
            run.elapsed.as_millis()
        );
    }

    let mut failures = Vec::new();
    for (kind, wan, d, run) in &results {
        let (no_nat, _, filtering) = kind.expected();
        let reflexive_ok = d.reflexive.iter().all(|a| a.ip() == *wan);
        let ok = !run.timed_out
            && d.no_nat == no_nat
            && kind.mapping_matches(d.mapping)
            && d.filtering == filtering
            && reflexive_ok
            && !d.alg
            && (*kind == NatKind::UdpBlocked) == d.reflexive.is_empty();
        if !ok {
            failures.push(format!(
                "{kind}: expected {:?}, got {d:?} (timed out: {}, expected reflexive ip {wan})\n{}\n{}",
                kind.expected(),
                run.timed_out,
                run.stdout(),
                run.stderr()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Which unsolicited senders reach a host socket after it sent one datagram
/// to an endpoint on 203.0.113.10: the same address from
/// another port, and another address (203.0.113.11) from the same port.
/// Returns (same address other port got through, other address got through),
/// or `None` if the first datagram never reached the internet.
fn unsolicited_reach(lab: &Lab) -> Option<(bool, bool)> {
    // The internet's three endpoints: `a`, which the host talks to, and two
    // strangers, one on a's address with another port, one on the other
    // address with a's port.
    let inet = lab.ns_inet().to_owned();
    let (a, same_ip, other_ip) = lab.run_in(&inet, || {
        let a = UdpSocket::bind((Ipv4Addr::new(203, 0, 113, 10), 0)).unwrap();
        let port = a.local_addr().unwrap().port();
        let same_ip = UdpSocket::bind((Ipv4Addr::new(203, 0, 113, 10), 0)).unwrap();
        let other_ip = UdpSocket::bind((Ipv4Addr::new(203, 0, 113, 11), port)).unwrap();
        (a, same_ip, other_ip)
    });
    let to = a.local_addr().unwrap();
    let host = lab.run_in(lab.ns_host(), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap()
    });
    host.send_to(b"out", to).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    let mapped = match a.recv_from(&mut buf) {
        Ok((_, from)) => from,
        Err(_) => return None,
    };
    same_ip.send_to(b"same-ip", mapped).unwrap();
    other_ip.send_to(b"other-ip", mapped).unwrap();
    // The sentinel comes from the endpoint the host talked to, which every
    // kind lets through; the probes were sent before it on the same path.
    a.send_to(b"sentinel", mapped).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (mut same, mut other) = (false, false);
    loop {
        let (n, _) = host
            .recv_from(&mut buf)
            .expect("the sentinel from the contacted endpoint must arrive");
        match &buf[..n] {
            b"same-ip" => same = true,
            b"other-ip" => other = true,
            b"sentinel" => break,
            m => panic!("unexpected datagram {m:?}"),
        }
    }
    Some((same, other))
}

#[test]
fn filtering_by_hand_matches_each_kind() {
    lab_or_skip!();
    for (kind, got) in per_kind(&NatKind::ALL, None, |lab, _| unsolicited_reach(lab)) {
        let want = match kind {
            NatKind::Open | NatKind::FullCone => Some((true, true)),
            NatKind::RestrictedCone => Some((true, false)),
            NatKind::PortRestrictedCone | NatKind::Symmetric | NatKind::SymmetricUdpFirewall => {
                Some((false, false))
            }
            NatKind::UdpBlocked => None,
        };
        assert_eq!(
            got, want,
            "{kind}: (same address other port, other address) reached the host"
        );
    }
}

#[test]
fn run_in_sockets_live_in_their_namespace() {
    lab_or_skip!();
    let names;
    {
        let lab = Lab::builder().uplink(NatKind::Open, None).build();
        names = [lab.ns_host().to_owned(), lab.ns_inet().to_owned()];
        // 203.0.113.10 exists only inside the lab's internet.
        let outside = UdpSocket::bind((Ipv4Addr::new(203, 0, 113, 10), 0));
        assert!(outside.is_err(), "bound the lab's address outside the lab");

        let server = lab.whoami_server(lab.ns_inet(), (Ipv4Addr::new(203, 0, 113, 10), 0).into());
        let seen = lab
            .whoami(lab.ns_host(), None, server.addr(), 3)
            .expect("no reply through an open router");
        assert_eq!(seen.seen.ip(), lab.host_ip(1));
        assert_eq!(
            seen.seen,
            SocketAddr::new(lab.host_ip(1).into(), seen.local.port())
        );
        assert_eq!(server.seen(), vec![seen.seen]);
    }
    let list = netns_list();
    for n in names {
        assert!(!list.contains(&n), "namespace {n} left behind: {list:?}");
    }

    let lab = Lab::builder()
        .uplink(NatKind::PortRestrictedCone, None)
        .build();
    let server = lab.whoami_server(lab.ns_inet(), (Ipv4Addr::new(203, 0, 113, 10), 0).into());
    let seen = lab
        .whoami(lab.ns_host(), None, server.addr(), 3)
        .expect("no reply through a port-restricted cone");
    assert_eq!(seen.seen.ip(), lab.wan_ip(1));
    assert_eq!(lab.wan_ip(1), Ipv4Addr::new(198, 51, 100, 1));
    assert_eq!(
        seen.seen.port(),
        seen.local.port(),
        "SNAT keeps a free port"
    );
}

#[test]
fn second_uplink_is_reached_by_binding_its_device() {
    lab_or_skip!();
    let lab = Lab::builder()
        .uplink(NatKind::PortRestrictedCone, None)
        .uplink(NatKind::Symmetric, None)
        .build();
    assert_eq!(
        (lab.host_nic(1), lab.host_nic(2)),
        ("up1".into(), "up2".into())
    );
    let addrs = lab.exec(lab.ns_host(), "ip", &["-o", "-4", "addr", "show"]);
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    for n in 1..=2 {
        let want = format!("{} inet {}/24", lab.host_nic(n), lab.host_ip(n));
        assert!(
            addrs.lines().any(|l| l
                .split_whitespace()
                .skip(1)
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
                == want),
            "no `{want}` in:\n{addrs}"
        );
    }
    assert_eq!(lab.wan_ip(2), Ipv4Addr::new(198, 51, 100, 5));

    let server = lab.whoami_server(lab.ns_inet(), (Ipv4Addr::new(203, 0, 113, 10), 0).into());
    let unbound = lab
        .whoami(lab.ns_host(), None, server.addr(), 3)
        .expect("no reply over the default route");
    assert_eq!(unbound.seen.ip(), lab.wan_ip(1));
    let nic2 = lab.host_nic(2);
    let bound = lab
        .whoami(lab.ns_host(), Some(&nic2), server.addr(), 3)
        .expect("no reply over up2");
    assert_eq!(bound.seen.ip(), lab.wan_ip(2));
    assert_eq!(server.seen(), vec![unbound.seen, bound.seen]);
}

#[test]
fn loss_drops_some_but_not_all() {
    lab_or_skip!();
    let lab = Lab::builder()
        .uplink(NatKind::PortRestrictedCone, Some(20))
        .build();
    let server = lab.whoami_server(lab.ns_inet(), (Ipv4Addr::new(203, 0, 113, 10), 0).into());
    let to = server.addr();
    const BURST: usize = 100;
    // A burst from one socket, then retried requests from the same socket
    // until one is answered: by then the server has handled everything of
    // the burst that got through (one socket, in order).
    let (seen, sent) = lab.run_in(lab.ns_host(), move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        s.connect(to).unwrap();
        for _ in 0..BURST {
            s.send(b"burst").unwrap();
        }
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = BURST;
        while Instant::now() < deadline {
            s.send(b"who").unwrap();
            sent += 1;
            // Replies to the burst may arrive first; any reply will do.
            if let Ok(n) = s.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                return (Some(text), sent);
            }
        }
        (None, sent)
    });
    let seen = seen.expect("nothing got through 20% loss");
    assert!(seen.starts_with("198.51.100.1:"), "{seen}");
    let got = server.seen().len();
    assert!(
        got > 0 && got < sent,
        "server saw {got} of {sent} datagrams"
    );

    // The router counted its drops.
    let rules = lab.exec(
        lab.ns_router(1),
        "nft",
        &["list", "table", "inet", "lab_loss"],
    );
    let rules = String::from_utf8_lossy(&rules.stdout);
    let dropped: u64 = rules
        .split("packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in:\n{rules}"));
    assert!(dropped > 0, "{rules}");
}
