//! The file-sharing node's trusted operations from real non-loopback addresses: a
//! node in the lab's internet namespace, clients in the host namespace (through an
//! open router) and in the node's own namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use p2pipe::filer::{Error, FilerClient, FilerNode, NodeConfig, NodeStats, PeerId, TrustedOp};

use super::{lab_or_skip, Lab, NatKind, LAB_T};
use crate::support::{within, within_for};

const SECRET: &[u8] = b"lab secret";

/// Asks the node at `to` to add the peer 127.0.0.1:`port`, proving [`SECRET`], from a
/// client in namespace `ns`; the node's answer to the operation, or the error.
fn add_peer(lab: &Lab, ns: &str, to: SocketAddr, port: u16) -> Result<String, Error> {
    lab.run_in(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let op = TrustedOp::AddPeer {
                pid: PeerId::parse(&format!("127.0.0.1:{port}")).unwrap(),
                host: "127.0.0.1".into(),
                port,
            };
            let replies = within(FilerClient::new(to).trusted(SECRET, op)).await?;
            let answer = replies.get(1).expect("an answer after `Trust: accepted`");
            Ok(String::from_utf8_lossy(answer.payload()).into_owned())
        })
    })
}

/// A node with [`SECRET`] on `[::]` (dual-stack) in the internet namespace refuses
/// trusted operations from the host's IPv4 and IPv6 addresses and from its own
/// namespace's non-loopback address, and accepts them from 127.0.0.1 and ::1 there; a
/// node with `trusted_from_anywhere` accepts them from the host too.
#[test]
fn trusted_operations_from_another_namespace_are_refused_unless_trusted_from_anywhere() {
    lab_or_skip!();
    let lab = Lab::builder().uplink(NatKind::Open, None).build();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let paths = dirs.each_ref().map(|d| d.path().to_owned());
    let (ports_tx, ports_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // (peers, stats) of the strict node, then of the one trusting any address.
    let nodes = lab.spawn_in(lab.ns_inet(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut nodes = Vec::new();
            for (path, anywhere) in paths.into_iter().zip([false, true]) {
                let mut cfg = NodeConfig::new(path);
                cfg.secret = Some(SECRET.to_vec());
                cfg.trusted_from_anywhere = anywhere;
                cfg.stabilize_every = None;
                cfg.advertise_host = Some("203.0.113.10".into());
                let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
                nodes.push(within(FilerNode::start(any, cfg)).await.unwrap());
            }
            ports_tx
                .send([nodes[0].local_addr().port(), nodes[1].local_addr().port()])
                .unwrap();
            // Stopped by the test, or by its end (the sender dropped).
            let _ = within_for(LAB_T, stop_rx).await;
            let mut seen = Vec::new();
            for node in nodes {
                seen.push((node.peers().len(), node.stats()));
                within(node.shutdown(Duration::from_secs(1))).await;
            }
            seen
        })
    });
    let [strict, open] = ports_rx.recv_timeout(LAB_T).expect("nodes up");

    let inet = lab.ns_inet().to_owned();
    let host = lab.ns_host().to_owned();
    let lab4: IpAddr = Ipv4Addr::new(203, 0, 113, 10).into();
    let lab6: IpAddr = "2001:db8:ffff::10".parse().unwrap();
    let loop4: IpAddr = Ipv4Addr::LOCALHOST.into();
    let loop6: IpAddr = Ipv6Addr::LOCALHOST.into();
    let denied = Err(Error::Refused("Trust: not authorized".into()));
    let added = |port: u16| Ok(format!("Join: peer added: 127.0.0.1:{port}"));
    // (client namespace, node address, peer port to add, want).
    let cases = [
        (&host, SocketAddr::new(lab4, strict), 9001, denied.clone()),
        (&host, SocketAddr::new(lab6, strict), 9002, denied.clone()),
        (&inet, SocketAddr::new(lab4, strict), 9003, denied.clone()),
        (&inet, SocketAddr::new(loop4, strict), 9004, added(9004)),
        (&inet, SocketAddr::new(loop6, strict), 9005, added(9005)),
        (&host, SocketAddr::new(lab4, open), 9006, added(9006)),
        (&host, SocketAddr::new(lab6, open), 9007, added(9007)),
    ];
    let mut failures = Vec::new();
    for (ns, to, port, want) in cases {
        let got = add_peer(&lab, ns, to, port);
        if got != want {
            failures.push(format!("from {ns} to {to}: {got:?}, want {want:?}"));
        }
    }
    let _ = stop_tx.send(());
    let seen = nodes.join_within(LAB_T);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        seen.iter()
            .map(|(peers, s): &(usize, NodeStats)| (*peers, s.trust_denied))
            .collect::<Vec<_>>(),
        [(2, 3), (2, 0)],
        "(peers added, trusted operations refused) of the strict node, then of the open one"
    );
}
