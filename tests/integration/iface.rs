//! Interfaces: the library's list, and `p2pipe interfaces --json` run as a user would.

use p2pipe::addr::AddrClass;
use p2pipe::iface::Interface;
use tokio::process::Command;

use crate::support::{ipv6_usable, spawn_guard, within};

#[test]
fn list_contains_loopback_with_an_index() {
    let nics = Interface::list().unwrap();
    let lo = nics
        .iter()
        .find(|n| n.flags.loopback)
        .unwrap_or_else(|| panic!("no loopback interface in {nics:?}"));
    assert!(lo.index.is_some_and(|i| i > 0), "{lo:?}");
    assert!(lo
        .v4
        .iter()
        .any(|a| a.ip.is_loopback() && a.class == AddrClass::Loopback));
    let names: std::collections::HashSet<&str> = nics.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names.len(), nics.len(), "one entry per interface: {nics:?}");
}

#[tokio::test]
async fn interfaces_command_prints_json_with_loopback() {
    let no_rebind = spawn_guard().await;
    let out = within(
        Command::new(env!("CARGO_BIN_EXE_p2pipe"))
            .args(["interfaces", "--json"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    drop(no_rebind);
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one json object");
    let nics = doc["interfaces"].as_array().expect("an interfaces array");
    let lo = nics
        .iter()
        .find(|n| n["flags"]["loopback"] == true)
        .unwrap_or_else(|| panic!("no loopback in {doc}"));
    assert!(lo["index"].as_u64().is_some_and(|i| i > 0), "{lo}");
    let has = |family: &str, ip: &str, prefix: u64| {
        lo[family]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["ip"] == ip && x["prefix"] == prefix))
    };
    assert!(has("v4", "127.0.0.1", 8), "{lo}");
    if ipv6_usable("interfaces_command") {
        assert!(has("v6", "::1", 128), "{lo}");
    }
    for family in ["ipv4", "ipv6"] {
        let d = &doc["default"][family];
        assert!(d.is_null() || d.is_string(), "{doc}");
        if let Some(name) = d.as_str() {
            assert!(nics.iter().any(|n| n["name"] == name), "{doc}");
        }
    }
}

/// A loopback route for family `af`, made by hand as a route loaded from JSON would be.
fn loopback_route(af: p2pipe::Af) -> p2pipe::iface::Route {
    use p2pipe::iface::{IpBlock, Route};
    let (ip, prefix): (std::net::IpAddr, u8) = match af {
        p2pipe::Af::V4 => ("127.0.0.1".parse().unwrap(), 8),
        p2pipe::Af::V6 => ("::1".parse().unwrap(), 128),
    };
    Route::new(af, "lo", None, vec![IpBlock::new(ip, prefix)], vec![]).unwrap()
}

/// A pipe sent through a route comes from the route's address, over TCP and UDP, v4
/// and v6; a daemon listens on a route pool's addresses.
#[tokio::test]
async fn pipes_and_daemons_use_routes() {
    use p2pipe::iface::RoutePool;
    use p2pipe::{Af, Daemon, Pipe, PipeConfig, Proto};
    let mut afs = vec![Af::V4];
    if ipv6_usable("pipes_and_daemons_use_routes") {
        afs.push(Af::V6);
    }
    let pool = RoutePool::from_routes(afs.iter().map(|af| loopback_route(*af))).unwrap();
    let daemon = within(
        Daemon::builder(|msg: p2pipe::Message, reply: Pipe| async move {
            let peer = msg.peer.to_string();
            reply.send(peer.as_bytes()).await
        })
        .listen_routes(&pool, [0], [Proto::Tcp, Proto::Udp])
        .start(),
    )
    .await
    .unwrap();
    assert_eq!(daemon.local_addrs().len(), 2 * afs.len());
    for &(proto, at) in daemon.local_addrs() {
        let route = pool.find_by_nic(at.ip()).expect("a listener per route");
        let cfg = PipeConfig::default().route(route);
        let pipe = within(Pipe::connect_with(proto, at, &cfg)).await.unwrap();
        assert_eq!(pipe.local_addr().ip(), route.local_ip());
        within(pipe.send(b"who am i")).await.unwrap();
        let msg = within(pipe.recv()).await.unwrap();
        let seen: std::net::SocketAddr = std::str::from_utf8(&msg.data).unwrap().parse().unwrap();
        assert_eq!(seen, pipe.local_addr(), "{proto:?} {at}");
    }
    within(daemon.shutdown(std::time::Duration::from_secs(2))).await;
}

/// Binding to a device by name: `lo` works for loopback; a missing device is a clear
/// error. (Needs CAP_NET_RAW; skipped with a reason without it, failing under CI=true.)
#[tokio::test]
async fn pipes_bind_to_a_device_by_name() {
    use p2pipe::{Pipe, PipeConfig, Proto};
    let server = within(Pipe::listen(Proto::Udp, "127.0.0.1:0"))
        .await
        .unwrap();
    let cfg = PipeConfig::default().device("lo");
    let pipe = match within(Pipe::connect_with(Proto::Udp, server.local_addr(), &cfg)).await {
        Ok(p) => p,
        Err(e) if e.to_string().contains("permitted") && !crate::support::in_ci() => {
            crate::support::skip(
                "pipes_bind_to_a_device_by_name",
                format!("no CAP_NET_RAW: {e}"),
            );
            return;
        }
        Err(e) => panic!("binding to lo failed: {e}"),
    };
    within(pipe.send(b"x")).await.unwrap();
    let peer = within(server.accept()).await.unwrap();
    let seen = peer.peer_addr().expect("a peer pipe has a peer");
    assert_eq!(seen.port(), pipe.local_addr().port());
    let bad = PipeConfig::default().device("p2pipe-no-such-nic");
    let err = within(Pipe::connect_with(Proto::Udp, server.local_addr(), &bad))
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("no such device"),
        "{err}"
    );
}
