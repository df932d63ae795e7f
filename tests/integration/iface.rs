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
