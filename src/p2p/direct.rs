//! Connecting to addresses a peer's record names (its own, or ports mapped on its
//! router), happy-eyeballs style: IPv6 first, one attempt started every stagger, the
//! first path the peer's key authenticates wins.

use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use super::node::{raw_config, Inner};
use super::path::SecurePath;
use super::report::Strategy;
use super::request::Token;
use crate::addr::{classify, AddrClass};
use crate::identity::{PeerRecord, PublicKey};
use crate::pipe::Pipe;
use crate::{Af, Proto};

/// Most reasons a failure names.
const REASONS: usize = 4;

/// The addresses of `peer` this node can try directly, IPv6 first: its own addresses
/// (on a family this node listens on; loopback ones only when this node listens on
/// loopback) and, apart, its ports mapped for `proto` on its external addresses.
pub(crate) fn candidates(
    inner: &Inner,
    peer: &PeerRecord,
    proto: Proto,
) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let mut own = Vec::new();
    let mut mapped = Vec::new();
    for af in [Af::V6, Af::V4] {
        let Some(mine) = inner.listening_on(af) else {
            continue;
        };
        let loopback = classify(mine.ip()) == AddrClass::Loopback;
        for family in peer.interfaces().iter().flat_map(|i| &i.families) {
            if family.af != af {
                continue;
            }
            for l in &family.local {
                let usable = match l.class {
                    AddrClass::Loopback => loopback,
                    AddrClass::Unspecified | AddrClass::Multicast | AddrClass::LinkLocal => false,
                    _ => true,
                };
                if usable && l.addr.port() != 0 && !own.contains(&l.addr) {
                    own.push(l.addr);
                }
            }
            let Some(external) = family.external else {
                continue;
            };
            for m in family.port_mappings.iter().filter(|m| m.protocol == proto) {
                let a = SocketAddr::new(external.ip(), m.external_port);
                if !mapped.contains(&a) {
                    mapped.push(a);
                }
            }
        }
    }
    (own, mapped)
}

/// Dials `addrs` in order, one more every `stagger`, over `proto`, and authenticates
/// each connection as the initiator expecting `peer`, saying `strategy` and `token`;
/// the first path wins and the other attempts are dropped. The error names why each
/// address failed.
pub(crate) async fn dial(
    inner: &Inner,
    peer: &PublicKey,
    addrs: &[SocketAddr],
    proto: Proto,
    strategy: Strategy,
    token: Token,
) -> Result<SecurePath, String> {
    let stagger = inner.settings.limits.stagger;
    let mut attempts: FuturesUnordered<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, &to)| async move {
            tokio::time::sleep(stagger * i as u32).await;
            (to, attempt(inner, peer, to, proto, strategy, token).await)
        })
        .collect();
    let mut reasons = Vec::new();
    while let Some((to, result)) = attempts.next().await {
        match result {
            Ok(path) => return Ok(path),
            Err(reason) => reasons.push(format!("{to}: {reason}")),
        }
    }
    if reasons.is_empty() {
        return Err("no address to try".into());
    }
    let more = reasons.len().saturating_sub(REASONS);
    reasons.truncate(REASONS);
    if more > 0 {
        reasons.push(format!("and {more} more"));
    }
    Err(reasons.join(", "))
}

/// One address: connect from this node's listening address of its family (any port),
/// then the handshake.
async fn attempt(
    inner: &Inner,
    peer: &PublicKey,
    to: SocketAddr,
    proto: Proto,
    strategy: Strategy,
    token: Token,
) -> Result<SecurePath, String> {
    let limit = inner.settings.limits.path;
    let mut cfg = raw_config().connect_timeout(limit);
    if let Some(mine) = inner.listening_on(Af::of(&to.ip())) {
        cfg = cfg.bind(SocketAddr::new(mine.ip(), 0));
    }
    let raw = match tokio::time::timeout(limit, Pipe::connect_with(proto, to, &cfg)).await {
        Ok(Ok(raw)) => raw,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no connection within {}", secs(limit))),
    };
    inner.initiate(raw, peer, strategy, token).await
}

/// A duration for a reason: "2 s", "500 ms".
pub(crate) fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}
