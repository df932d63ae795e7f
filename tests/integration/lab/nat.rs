//! `p2pipe nat` in the lab, run as a user would: every RFC 3489 type on real kernel
//! NATs against coturn, beside coturn's own `turnutils_natdiscovery`; two uplinks behind
//! two NAT types; 20% loss; and a pipe bound to the second NIC.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use p2pipe::{Pipe, PipeConfig, Proto};

use super::{lab_or_skip, per_kind, Behaviour, Exec, Lab, NatKind};
use crate::support::within;

/// Generous: a loss-free report takes about a second, a lossy one a few.
const NAT_LIMIT: Duration = Duration::from_secs(30);

/// P2PD's test sends up to 20 requests for the type and 24 for the port pattern.
const P2PD_REQUESTS: u64 = 20 + 24;

/// Runs `p2pipe nat --json` in the lab's host namespace, with extra arguments.
fn p2pipe_nat(lab: &Lab, extra: &[&str]) -> (serde_json::Value, Exec) {
    let primary = lab.stun_primary().to_string();
    let primary6 = super::STUN6_PRIMARY.to_string();
    let mut args = vec!["nat", "--json", "--stun", &primary, "--stun", &primary6];
    args.extend_from_slice(extra);
    let run = lab.exec_for(
        lab.ns_host(),
        NAT_LIMIT,
        env!("CARGO_BIN_EXE_p2pipe"),
        &args,
    );
    let v: serde_json::Value = serde_json::from_str(run.stdout().trim()).unwrap_or_else(|e| {
        panic!(
            "not one json object ({e}, timed out: {}):\n{}\n{}",
            run.timed_out,
            run.stdout(),
            run.stderr()
        )
    });
    // The command fails, after its report, when no family got an external address.
    let answered = ["ipv4", "ipv6"].iter().any(|f| !v[f]["external"].is_null());
    assert!(
        !run.timed_out && run.success() == answered,
        "p2pipe nat exit status {:?} with external addresses {} (timed out: {}):\n{}\n{}",
        run.output.status,
        answered,
        run.timed_out,
        run.stdout(),
        run.stderr()
    );
    (v, run)
}

/// A report's mapping or filtering, read back into the lab's vocabulary.
fn behaviour(v: &serde_json::Value) -> Option<Behaviour> {
    [
        Behaviour::EndpointIndependent,
        Behaviour::AddressDependent,
        Behaviour::AddressAndPortDependent,
    ]
    .into_iter()
    .find(|b| v.as_str() == Some(b.name()))
}

fn name(b: Option<Behaviour>) -> serde_json::Value {
    b.map_or(serde_json::Value::Null, |b| b.name().into())
}

/// Checks one family's report against the lab's kind, and the external address
/// against the uplink's WAN address (or the host's own, without NAT).
fn check(
    kind: NatKind,
    v4: &serde_json::Value,
    external_ip: impl Into<std::net::IpAddr>,
) -> Result<(), String> {
    let external_ip: std::net::IpAddr = external_ip.into();
    let (_, mapping, filtering) = kind.expected();
    let mut wrong = Vec::new();
    if v4["nat_type"] != kind.name() {
        wrong.push(format!(
            "nat_type {} (want {})",
            v4["nat_type"],
            kind.name()
        ));
    }
    let got_mapping = behaviour(&v4["mapping"]);
    if !kind.mapping_matches(got_mapping) {
        wrong.push(format!(
            "mapping {} (want {})",
            v4["mapping"],
            name(mapping)
        ));
    }
    if v4["filtering"] != name(filtering) {
        wrong.push(format!(
            "filtering {} (want {})",
            v4["filtering"],
            name(filtering)
        ));
    }
    // Linux SNAT keeps free ports; `snat ... random` picks a random port each time.
    let pattern = match kind {
        NatKind::UdpBlocked => serde_json::Value::Null,
        NatKind::Symmetric => "random".into(),
        _ => "preserving".into(),
    };
    if v4["port_allocation"]["pattern"] != pattern {
        wrong.push(format!(
            "port_allocation {} (want {pattern})",
            v4["port_allocation"]
        ));
    }
    if kind == NatKind::UdpBlocked {
        if !v4["external"].is_null() {
            wrong.push(format!("external {} (want null)", v4["external"]));
        }
    } else {
        let ext: Option<SocketAddr> = v4["external"].as_str().and_then(|s| s.parse().ok());
        if ext.map(|e| e.ip()) != Some(external_ip) {
            wrong.push(format!(
                "external {} (want {external_ip}:*)",
                v4["external"]
            ));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{kind}: {}\n{v4}", wrong.join(", ")))
    }
}

fn external_of(lab: &Lab, n: usize, kind: NatKind) -> Ipv4Addr {
    if kind.translates() {
        lab.wan_ip(n)
    } else {
        lab.host_ip(n)
    }
}

/// Every kind, one fresh lab each (all at once): `p2pipe nat` gives the lab's type,
/// mapping, filtering and external address, with fewer requests than P2PD (counted by
/// the router, not by p2pipe); coturn's natdiscovery runs in the same lab, agrees on
/// mapping and filtering, and gives the comparison table in docs/nat.md.
#[test]
fn p2pipe_nat_classifies_every_kind() {
    lab_or_skip!();
    let results: Vec<_> = per_kind(&NatKind::ALL, None, |lab, kind| {
        let (v, run) = p2pipe_nat(lab, &[]);
        // What p2pipe sent to coturn, counted by the router before natdiscovery runs.
        let counted = lab.stun_datagrams(1);
        // A fresh conntrack table for natdiscovery, so p2pipe's mappings cannot change
        // its answer.
        lab.flush_conntrack().expect("flush conntrack");
        let (d, nd) = lab.natdiscovery(Duration::from_secs(40));
        (
            external_of(lab, 1, kind),
            lab.host_ip6(1),
            v,
            run,
            counted,
            d,
            nd,
        )
    })
    .into_iter()
    .map(|(kind, (ext, ext6, v, run, n, d, nd))| (kind, ext, ext6, v, run, n, d, nd))
    .collect();

    println!(
        "| lab kind | p2pipe nat_type | p2pipe mapping / filtering | requests counted by the router (reported; transactions) | p2pipe wall ms | natdiscovery mapping / filtering | natdiscovery wall ms | p2pipe ipv6 nat_type |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut failures = Vec::new();
    for (kind, ext, ext6, v, run, (sent4, sent6), d, nd) in &results {
        let v4 = &v["ipv4"];
        println!(
            "| {kind} | {} | {} / {} | {sent4} ({}; {}) | {} | {} / {} | {} | {} |",
            v4["nat_type"],
            v4["mapping"],
            v4["filtering"],
            v4["requests"],
            v4["transactions"],
            run.elapsed.as_millis(),
            d.mapping.map_or("-", Behaviour::name),
            d.filtering.map_or("-", Behaviour::name),
            nd.elapsed.as_millis(),
            v["ipv6"]["nat_type"]
        );
        if let Err(e) = check(*kind, v4, *ext) {
            failures.push(e);
        }
        // The router counted every datagram the host sent to coturn's ports (before
        // any filter drops it): fewer than P2PD sends, and exactly what p2pipe reports.
        if *sent4 >= P2PD_REQUESTS {
            failures.push(format!(
                "{kind}: the router counted {sent4} requests, P2PD's test sends {P2PD_REQUESTS}"
            ));
        }
        for (family, sent) in [("ipv4", sent4), ("ipv6", sent6)] {
            if v[family]["requests"].as_u64() != Some(*sent) {
                failures.push(format!(
                    "{kind}: {family} reports {} requests, the router counted {sent}",
                    v[family]["requests"]
                ));
            }
        }
        if v["interface"] != "up1" {
            failures.push(format!("{kind}: interface {} (want up1)", v["interface"]));
        }
        // The lab's IPv6 is routed, not translated: open, unless the router filters
        // or blocks UDP for both families.
        let kind6 = match kind {
            NatKind::SymmetricUdpFirewall | NatKind::UdpBlocked => *kind,
            _ => NatKind::Open,
        };
        if let Err(e) = check(kind6, &v["ipv6"], *ext6) {
            failures.push(format!("ipv6 behind {kind}: {e}"));
        }
        // natdiscovery gives a mapping and a filtering verdict behind every kind but
        // udp-blocked (docs/nat-lab.md): a missing one is a failure, and p2pipe says the
        // same (null where neither can tell). Behind the symmetric kind this is stricter
        // than `check`, which also takes address-dependent: both tools see the router's
        // `snat random` give another port per destination port.
        let (_, want_mapping, want_filtering) = kind.expected();
        let verdicts = [
            ("mapping", &v4["mapping"], d.mapping, want_mapping),
            ("filtering", &v4["filtering"], d.filtering, want_filtering),
        ];
        for (what, ours, theirs, want) in verdicts {
            if theirs.is_none() != want.is_none() {
                failures.push(format!(
                    "{kind}: natdiscovery {what} verdict {theirs:?}, want {want:?}\n{}\n{}",
                    nd.stdout(),
                    nd.stderr()
                ));
            } else if *ours != name(theirs) {
                failures.push(format!(
                    "{kind}: p2pipe {what} {ours} but natdiscovery {theirs:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Two uplinks behind two NAT types: `p2pipe interfaces` lists both, `p2pipe nat
/// --interface` gives each its own type and external address, and a pipe bound to the
/// second NIC (by address and device) is seen by an independent who-am-I server (not
/// p2pipe's) at the second NIC's external address, over UDP and TCP.
#[test]
fn two_uplinks_each_get_their_own_report() {
    lab_or_skip!();
    let lab = Lab::builder()
        .uplink(NatKind::PortRestrictedCone, None)
        .uplink(NatKind::Symmetric, None)
        .build();

    let run = lab.exec_for(
        lab.ns_host(),
        NAT_LIMIT,
        env!("CARGO_BIN_EXE_p2pipe"),
        &["interfaces", "--json"],
    );
    assert!(run.success(), "{}", run.stderr());
    let doc: serde_json::Value = serde_json::from_str(run.stdout().trim()).unwrap();
    for n in 1..=2 {
        let nic = doc["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == lab.host_nic(n).as_str())
            .unwrap_or_else(|| panic!("no {} in {doc}", lab.host_nic(n)));
        assert_eq!(nic["v4"][0]["ip"], lab.host_ip(n).to_string());
    }
    assert_eq!(doc["default"]["ipv4"], "up1");

    // With --routes, each NIC's route gets its own external address from STUN, each
    // asked through its own NIC.
    let primary = lab.stun_primary().to_string();
    let run = lab.exec_for(
        lab.ns_host(),
        NAT_LIMIT,
        env!("CARGO_BIN_EXE_p2pipe"),
        &["interfaces", "--json", "--routes", "--stun", &primary],
    );
    assert!(run.success(), "{}", run.stderr());
    let doc: serde_json::Value = serde_json::from_str(run.stdout().trim()).unwrap();
    let routes = doc["routes"]["routes"].as_array().expect("a routes array");
    for n in 1..=2 {
        let r = routes
            .iter()
            .find(|r| r["interface"] == lab.host_nic(n).as_str())
            .unwrap_or_else(|| panic!("no route for {} in {doc}", lab.host_nic(n)));
        assert_eq!(r["af"], "ipv4");
        assert_eq!(r["nic"][0]["ip"], lab.host_ip(n).to_string(), "{r}");
        assert_eq!(r["ext"][0]["ip"], lab.wan_ip(n).to_string(), "{r}");
    }

    for n in 1..=2 {
        let nic = lab.host_nic(n);
        let (v, _) = p2pipe_nat(&lab, &["--interface", &nic]);
        assert_eq!(v["interface"], nic.as_str());
        check(lab.kind(n), &v["ipv4"], lab.wan_ip(n)).unwrap_or_else(|e| panic!("{e}"));
        let local: SocketAddr = v["ipv4"]["local"].as_str().unwrap().parse().unwrap();
        assert_eq!(local.ip(), lab.host_ip(n));
    }

    // Independent who-am-I servers (plain std sockets) on the lab's internet side
    // record whom they see and send it back.
    let wan2 = lab.wan_ip(2);
    let server_ip = Ipv4Addr::new(203, 0, 113, 10);
    let udp = lab.whoami_server(lab.ns_inet(), (server_ip, 0).into());
    let tcp = lab.tcp_whoami_server(lab.ns_inet(), (server_ip, 0).into());
    let addrs = [(Proto::Udp, udp.addr()), (Proto::Tcp, tcp.addr())];
    let nic2 = lab.host_nic(2);
    let host2 = lab.host_ip(2);
    let replies = lab.run_in(lab.ns_host(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut replies = Vec::new();
            for (proto, at) in addrs {
                let cfg = PipeConfig::default()
                    .bind(SocketAddr::new(host2.into(), 0))
                    .device(nic2.clone());
                let ask = async {
                    let pipe = Pipe::connect_with(proto, at, &cfg).await?;
                    pipe.send(b"who am i").await?;
                    let msg = pipe.recv_timeout(Duration::from_secs(5)).await?;
                    Ok::<_, p2pipe::pipe::Error>(String::from_utf8_lossy(&msg.data).into_owned())
                };
                let text = within(ask)
                    .await
                    .unwrap_or_else(|e| panic!("{proto:?} pipe over up2: {e}"));
                replies.push((proto, text));
            }
            replies
        })
    });
    // A reply comes after the server recorded its sender: the records are complete.
    for ((proto, text), seen) in replies.iter().zip([udp.seen(), tcp.seen()]) {
        assert_eq!(seen.len(), 1, "{proto:?} server saw {seen:?}");
        assert_eq!(seen[0].ip(), std::net::IpAddr::from(wan2), "{proto:?}");
        assert_eq!(text, &seen[0].to_string(), "{proto:?}");
    }
}

/// With 20% of packets dropped at the router, both ways, the classification is still
/// the lab's, for the kinds whose answer needs replies to come through.
#[test]
fn classification_survives_20_percent_loss() {
    lab_or_skip!();
    let kinds = [
        NatKind::FullCone,
        NatKind::RestrictedCone,
        NatKind::PortRestrictedCone,
        NatKind::Symmetric,
    ];
    let results = per_kind(&kinds, Some(20), |lab, _| {
        let (v, run) = p2pipe_nat(lab, &[]);
        (lab.wan_ip(1), v, run)
    });
    let mut failures = Vec::new();
    for (kind, (wan, v, run)) in results {
        println!(
            "20% loss: {kind}: {} in {} ms, {} requests",
            v["ipv4"]["nat_type"],
            run.elapsed.as_millis(),
            v["ipv4"]["requests"]
        );
        if let Err(e) = check(kind, &v["ipv4"], wan) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// STUN over TCP through a NAT: coturn sees the router's address.
#[test]
fn stun_over_tcp_through_a_nat() {
    lab_or_skip!();
    let lab = Lab::builder()
        .uplink(NatKind::PortRestrictedCone, None)
        .build();
    let primary = lab.stun_primary();
    let answer = lab.run_in(lab.ns_host(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(p2pipe::stun::tcp::binding(
            primary,
            None,
            None,
            Duration::from_secs(10),
        ))
    });
    let answer = answer.expect("a binding over tcp");
    let mapped = answer.response.mapped.expect("a mapped address");
    assert_eq!(mapped.ip(), std::net::IpAddr::from(lab.wan_ip(1)));
    assert_eq!(answer.local.ip(), std::net::IpAddr::from(lab.host_ip(1)));
}

/// The loss levels of [`heavy_loss_gives_the_right_answer_or_unknown`], each with the
/// fewest whole right answers (type, mapping, filtering and external address) of its six
/// kinds. Measured in ten runs of the test: every answer right, 60 of 60 at each level.
/// Each request is sent up to 7 times, so a request is lost for good with probability
/// 0.19^7 ≈ 1e-5 at 10% loss both ways (one unknown allowed), and 0.51^7 < 1% at 30%.
/// At 30%, even if an unknown answer were as likely as 1 in 20 (the most that none in 60
/// leaves plausible), four unknowns among six kinds would come in about 1 run in
/// 10000. A build whose answers turn unknown under loss fails.
const RIGHT_UNDER_LOSS: [(u8, usize); 2] = [(10, 5), (30, 3)];

/// With 10% and 30% of packets dropped at the router, both ways, every answer is the
/// lab's or unknown (null), never a wrong type; and at each loss level most answers are
/// the lab's whole type (see [`RIGHT_UNDER_LOSS`]): unknown is not always an answer.
#[test]
fn heavy_loss_gives_the_right_answer_or_unknown() {
    lab_or_skip!();
    let kinds: Vec<NatKind> = NatKind::ALL
        .into_iter()
        .filter(|k| *k != NatKind::UdpBlocked)
        .collect();
    let mut wrong = Vec::new();
    let mut too_few = Vec::new();
    for (loss, floor) in RIGHT_UNDER_LOSS {
        let mut right = 0;
        let results = per_kind(&kinds, Some(loss), |lab, kind| {
            let (v, run) = p2pipe_nat(lab, &[]);
            (external_of(lab, 1, kind), v, run)
        });
        for (kind, (ext, v, run)) in results {
            let v4 = &v["ipv4"];
            println!(
                "{loss}% loss: {kind}: {} / {} / {} in {} ms, {} requests",
                v4["nat_type"],
                v4["mapping"],
                v4["filtering"],
                run.elapsed.as_millis(),
                v4["requests"]
            );
            let (_, mapping, filtering) = kind.expected();
            let ok_or_null =
                |got: &serde_json::Value, want: serde_json::Value| got.is_null() || *got == want;
            let mapping_ok =
                v4["mapping"].is_null() || kind.mapping_matches(behaviour(&v4["mapping"]));
            let ext_ok = v4["external"].as_str().is_none_or(|e| {
                e.parse::<SocketAddr>().map(|a| a.ip()) == Ok(std::net::IpAddr::from(ext))
            });
            if !(ok_or_null(&v4["nat_type"], kind.name().into())
                && mapping_ok
                && ok_or_null(&v4["filtering"], name(filtering))
                && ext_ok)
            {
                wrong.push(format!(
                    "{loss}% loss, {kind} (mapping {:?}): {v4}",
                    mapping
                ));
            } else if v4["nat_type"] == kind.name()
                && !v4["mapping"].is_null()
                && v4["filtering"] == name(filtering)
                && !v4["external"].is_null()
            {
                right += 1;
            }
        }
        println!("{loss}% loss: {right} of {} answers right", kinds.len());
        if right < floor {
            too_few.push(format!(
                "{loss}% loss: {right} of {} answers right, want at least {floor}",
                kinds.len()
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    assert!(too_few.is_empty(), "{}", too_few.join("\n"));
}
