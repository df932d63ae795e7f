//! Routes: which addresses of an interface to bind from, and which external addresses peers
//! see for them, per address family. Sans-IO: nothing here touches the network.
//!
//! A [`Route`] maps some addresses of one interface (the NIC side, [`Route::nic`]) to the
//! external addresses STUN sees for them ([`Route::ext`]). Routes are made in two steps:
//!
//! 1. [`plan_routes`] (or [`Interface::route_plans`]) sorts an interface's addresses of
//!    one family into [`RoutePlan`]s. All private, shared (carrier-grade NAT,
//!    `100.64.0.0/10`) and unique local (`fc00::/7`) addresses make ONE plan: they are
//!    presumed to sit behind the same NAT, whose external address is unknown until STUN is
//!    asked from the first of them. Each public block (a public address with its prefix)
//!    makes a plan of its own, whose external address is expected to be itself. Loopback,
//!    link-local, multicast, unspecified and reserved addresses make no plan.
//! 2. The caller asks STUN from [`RoutePlan::probe_from`] and gives what it saw to
//!    [`RoutePlan::complete`], which makes the [`Route`].
//!
//! A [`RoutePool`] is an ordered collection of routes. It serialises to JSON and loads back
//! ([`RoutePool::to_json`], [`RoutePool::from_json`]) with no network I/O; loading checks
//! every route (see [`Route::new`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use serde::{Deserialize, Serialize};

use super::{Error, Interface};
use crate::addr::{canonical_ip, classify, AddrClass, Af};

/// The longest prefix length of a family: 32 or 128.
fn max_prefix(af: Af) -> u8 {
    match af {
        Af::V4 => 32,
        Af::V6 => 128,
    }
}

/// An address with the prefix length of its network, as an interface holds it
/// (`192.168.1.5/24`). The address keeps its host bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpBlock {
    /// The address.
    pub ip: IpAddr,
    /// The prefix length of its network: at most 32 for IPv4, 128 for IPv6.
    pub prefix: u8,
}

impl IpBlock {
    /// A block of `ip` with prefix length `prefix`.
    pub fn new(ip: IpAddr, prefix: u8) -> IpBlock {
        IpBlock { ip, prefix }
    }

    /// A block holding one address: prefix length 32 or 128.
    pub fn host(ip: IpAddr) -> IpBlock {
        IpBlock {
            ip,
            prefix: max_prefix(Af::of(&ip)),
        }
    }

    /// The address family of the address.
    pub fn af(&self) -> Af {
        Af::of(&self.ip)
    }

    /// The network address: the address with its host bits cleared. A prefix length
    /// longer than the family allows counts as the full length.
    pub fn network(&self) -> IpAddr {
        match self.ip {
            IpAddr::V4(ip) => {
                let len = u32::from(self.prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                IpAddr::V4((u32::from(ip) & mask).into())
            }
            IpAddr::V6(ip) => {
                let len = u32::from(self.prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                IpAddr::V6((u128::from(ip) & mask).into())
            }
        }
    }

    /// Whether `ip` lies in this block's network (same family, same network bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        Af::of(&ip) == self.af() && IpBlock::new(ip, self.prefix).network() == self.network()
    }
}

impl fmt::Display for IpBlock {
    /// `ip/prefix`, such as `192.168.1.5/24` or `2001:db8::5/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// Whether an address of `class` makes a route, and of which kind. Private, shared and
/// unique local addresses go behind a NAT; global addresses are public, and so are the
/// documentation and benchmarking blocks, which the NAT lab uses as its internet.
fn plan_kind(class: AddrClass) -> Option<PlanKind> {
    match class {
        AddrClass::Private | AddrClass::Shared => Some(PlanKind::Private),
        AddrClass::Global | AddrClass::Documentation => Some(PlanKind::Public),
        AddrClass::Unspecified
        | AddrClass::Loopback
        | AddrClass::LinkLocal
        | AddrClass::Multicast
        | AddrClass::Reserved => None,
    }
}

/// What kind of addresses a [`RoutePlan`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanKind {
    /// Every private, shared (`100.64.0.0/10`) and unique local (`fc00::/7`) address of
    /// the family on the interface: the external address is unknown until STUN is asked.
    Private,
    /// One public block: the external address is expected to be the block's own address.
    Public,
}

/// A route still to be checked by STUN: the interface addresses it will bind from, and
/// what their external address is expected to be. Made by [`plan_routes`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoutePlan {
    af: Af,
    interface: String,
    index: Option<u32>,
    kind: PlanKind,
    nic: Vec<IpBlock>,
}

impl RoutePlan {
    /// The address family.
    pub fn af(&self) -> Af {
        self.af
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's OS index, if known.
    pub fn index(&self) -> Option<u32> {
        self.index
    }

    /// Whether this is the private group or a public block.
    pub fn kind(&self) -> PlanKind {
        self.kind
    }

    /// The interface addresses of the plan, in the interface's order; never empty.
    pub fn nic(&self) -> &[IpBlock] {
        &self.nic
    }

    /// The local address to ask STUN from: the plan's first address.
    pub fn probe_from(&self) -> IpAddr {
        self.nic[0].ip
    }

    /// The external address STUN should see from [`probe_from`](Self::probe_from): the
    /// address itself for a public block, `None` (unknown) for the private group.
    pub fn expected_ext(&self) -> Option<IpAddr> {
        match self.kind {
            PlanKind::Public => Some(self.probe_from()),
            PlanKind::Private => None,
        }
    }

    /// Makes the route from what STUN saw from [`probe_from`](Self::probe_from).
    ///
    /// - A public block whose external address STUN saw as itself: the external addresses
    ///   are the block's addresses (with their prefixes), as on the NIC.
    /// - Any other address seen (the private group, or a public block behind a NAT): the
    ///   external address is that address alone.
    /// - `None`, STUN gave no answer: no external address; the route is still usable
    ///   locally.
    ///
    /// An IPv4-mapped IPv6 address is read as the IPv4 address it carries. An observed
    /// address that cannot be an external address of this route (of the other family,
    /// loopback, link-local, or not unicast) is treated as no answer, and logged.
    pub fn complete(self, observed_external: Option<IpAddr>) -> Route {
        let observed = observed_external.map(canonical_ip).filter(|ip| {
            // A plan never holds loopback addresses, so STUN cannot truly see one.
            let class = classify(*ip);
            let ok = Af::of(ip) == self.af && ext_class_ok(class) && class != AddrClass::Loopback;
            if !ok {
                tracing::warn!(
                    interface = %self.interface,
                    af = %self.af,
                    observed = %ip,
                    "stun saw an address that cannot be this route's external address; ignored"
                );
            }
            ok
        });
        let ext = match observed {
            None => Vec::new(),
            Some(ip) if self.kind == PlanKind::Public && ip == self.probe_from() => {
                self.nic.clone()
            }
            Some(ip) => vec![IpBlock::host(ip)],
        };
        Route {
            af: self.af,
            interface: self.interface,
            index: self.index,
            nic: self.nic,
            ext,
        }
    }
}

/// Sorts the addresses of family `af` on `nic` into route plans, with no I/O.
///
/// - Every private, shared (`100.64.0.0/10`) and unique local (`fc00::/7`) address joins
///   one [`PlanKind::Private`] plan.
/// - Public addresses (global, and the documentation and benchmarking blocks the NAT lab
///   uses as its internet) make one [`PlanKind::Public`] plan per block; addresses that
///   share a network (such as IPv6 temporary addresses in one `/64`) share a plan.
/// - Loopback, link-local, multicast, unspecified and reserved addresses, and
///   IPv4-mapped IPv6 addresses, are left out.
///
/// Plans come in the order their first address appears on the interface; within a plan,
/// addresses keep the interface's order. The interface's flags are not looked at: a plan
/// for an interface that is down is still made.
pub fn plan_routes(nic: &Interface, af: Af) -> Vec<RoutePlan> {
    let addrs: Vec<IpBlock> = match af {
        Af::V4 => nic
            .v4
            .iter()
            .map(|a| IpBlock::new(a.ip.into(), a.prefix))
            .collect(),
        Af::V6 => nic
            .v6
            .iter()
            .filter(|a| a.ip.to_ipv4_mapped().is_none())
            .map(|a| IpBlock::new(a.ip.into(), a.prefix))
            .collect(),
    };
    let mut plans: Vec<RoutePlan> = Vec::new();
    for block in addrs {
        if block.prefix > max_prefix(af) {
            tracing::debug!(%block, "interface address with a bad prefix length skipped");
            continue;
        }
        let Some(kind) = plan_kind(classify(block.ip)) else {
            continue;
        };
        let joins = |p: &RoutePlan| match kind {
            PlanKind::Private => p.kind == PlanKind::Private,
            PlanKind::Public => {
                p.kind == PlanKind::Public
                    && p.nic[0].prefix == block.prefix
                    && p.nic[0].contains(block.ip)
            }
        };
        match plans.iter_mut().find(|p| joins(p)) {
            Some(plan) => {
                if !plan.nic.iter().any(|b| b.ip == block.ip) {
                    plan.nic.push(block);
                }
            }
            None => plans.push(RoutePlan {
                af,
                interface: nic.name.clone(),
                index: nic.index,
                kind,
                nic: vec![block],
            }),
        }
    }
    plans
}

impl Interface {
    /// This interface's route plans for `af`; see [`plan_routes`].
    pub fn route_plans(&self, af: Af) -> Vec<RoutePlan> {
        plan_routes(self, af)
    }
}

/// Whether an address of `class` may be a route's NIC address: a unicast address that is
/// not link-local. Loopback is allowed, so that routes can be made by hand for tests on
/// loopback ([`plan_routes`] never plans one).
fn nic_class_ok(class: AddrClass) -> bool {
    class.is_unicast() && class != AddrClass::LinkLocal
}

/// Whether an address of `class` may be a route's external address (as for NIC addresses).
fn ext_class_ok(class: AddrClass) -> bool {
    nic_class_ok(class)
}

/// Addresses of one interface and the external addresses peers see for them, for one
/// address family.
///
/// Made by [`RoutePlan::complete`], by [`Route::new`], or loaded with a [`RoutePool`]. A
/// route always has at least one NIC address, and every address in it is of the route's
/// family; no NIC address is link-local, so binding needs no scope id.
///
/// In JSON: `{"af": "ipv4", "interface": "eth0", "index": 2, "nic": [{"ip": ..,
/// "prefix": ..}], "ext": [..]}`; loading checks the route as [`Route::new`] does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RouteRepr")]
pub struct Route {
    af: Af,
    interface: String,
    index: Option<u32>,
    nic: Vec<IpBlock>,
    ext: Vec<IpBlock>,
}

/// A route as read from JSON, before it is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteRepr {
    af: Af,
    interface: String,
    index: Option<u32>,
    nic: Vec<IpBlock>,
    ext: Vec<IpBlock>,
}

impl TryFrom<RouteRepr> for Route {
    type Error = Error;

    fn try_from(r: RouteRepr) -> Result<Route, Error> {
        Route::new(r.af, r.interface, r.index, r.nic, r.ext)
    }
}

/// Checks one list of a route's blocks.
fn check_blocks(
    af: Af,
    what: &str,
    blocks: &[IpBlock],
    class_ok: fn(AddrClass) -> bool,
) -> Result<(), String> {
    for (i, b) in blocks.iter().enumerate() {
        if b.af() != af {
            return Err(format!(
                "{what} address {} is not {}",
                b.ip,
                af.to_string().to_lowercase()
            ));
        }
        if b.prefix > max_prefix(af) {
            return Err(format!(
                "{what} address {} has prefix length {} (most is {})",
                b.ip,
                b.prefix,
                max_prefix(af)
            ));
        }
        if let IpAddr::V6(v6) = b.ip {
            if v6.to_ipv4_mapped().is_some() {
                return Err(format!("{what} address {} is ipv4-mapped", b.ip));
            }
        }
        let class = classify(b.ip);
        if !class_ok(class) {
            return Err(format!(
                "{what} address {} is {class}, which a route cannot hold",
                b.ip
            ));
        }
        if blocks[..i].iter().any(|o| o.ip == b.ip) {
            return Err(format!("{what} address {} is listed twice", b.ip));
        }
    }
    Ok(())
}

impl Route {
    /// A route from its parts, checked.
    ///
    /// `interface` is the interface's name and `index` its OS index, if known; `nic` are
    /// the interface addresses to bind from (the first is the one [`bind_addr`](Self::bind_addr)
    /// uses), `ext` the external addresses peers see (empty: unknown).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRoute`] when the interface name is empty, `nic` is empty, an
    /// address is not of family `af`, a prefix length is too long for the family, an
    /// address is IPv4-mapped, link-local, multicast, unspecified or reserved, or an
    /// address is listed twice in `nic` or in `ext`.
    pub fn new(
        af: Af,
        interface: impl Into<String>,
        index: Option<u32>,
        nic: Vec<IpBlock>,
        ext: Vec<IpBlock>,
    ) -> Result<Route, Error> {
        let interface = interface.into();
        let check = || -> Result<(), String> {
            if interface.is_empty() {
                return Err("the interface name is empty".into());
            }
            if nic.is_empty() {
                return Err("it has no nic address".into());
            }
            check_blocks(af, "nic", &nic, nic_class_ok)?;
            check_blocks(af, "external", &ext, ext_class_ok)
        };
        check().map_err(Error::InvalidRoute)?;
        Ok(Route {
            af,
            interface,
            index,
            nic,
            ext,
        })
    }

    /// The address family.
    pub fn af(&self) -> Af {
        self.af
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's OS index, if known (for binding by device).
    pub fn index(&self) -> Option<u32> {
        self.index
    }

    /// The interface addresses to bind from, with their prefixes; never empty.
    pub fn nic(&self) -> &[IpBlock] {
        &self.nic
    }

    /// The external addresses peers see, with their prefixes; empty when unknown.
    pub fn ext(&self) -> &[IpBlock] {
        &self.ext
    }

    /// The local address sockets of this route bind to: the first NIC address.
    pub fn local_ip(&self) -> IpAddr {
        self.nic[0].ip
    }

    /// The first external address, if any is known.
    pub fn ext_ip(&self) -> Option<IpAddr> {
        self.ext.first().map(|b| b.ip)
    }

    /// Whether peers reach the NIC addresses as they are: an external address is one of
    /// the route's NIC addresses (a public block not behind a NAT).
    pub fn is_direct(&self) -> bool {
        self.ext
            .iter()
            .any(|e| self.nic.iter().any(|n| n.ip == e.ip))
    }

    /// The socket address to bind to for this route: its first NIC address and `port`.
    ///
    /// For IPv6 the scope id is 0, which is right because a route never holds a
    /// link-local address.
    pub fn bind_addr(&self, port: u16) -> SocketAddr {
        match self.local_ip() {
            IpAddr::V4(ip) => SocketAddr::new(ip.into(), port),
            IpAddr::V6(ip) => SocketAddrV6::new(ip, port, 0, 0).into(),
        }
    }
}

/// An ordered collection of [`Route`]s, of one or both address families.
///
/// No NIC address is in two routes of a pool. In JSON: `{"routes": [route, ...]}`;
/// [`from_json`](Self::from_json) (and any serde deserialiser) checks every route and the
/// pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "PoolRepr")]
pub struct RoutePool {
    routes: Vec<Route>,
}

/// A pool as read from JSON, before its routes are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolRepr {
    routes: Vec<RouteRepr>,
}

impl TryFrom<PoolRepr> for RoutePool {
    type Error = Error;

    fn try_from(p: PoolRepr) -> Result<RoutePool, Error> {
        let mut pool = RoutePool::new();
        for (i, r) in p.routes.into_iter().enumerate() {
            let name = r.interface.clone();
            let at = |e: Error| match e {
                Error::InvalidRoute(reason) => {
                    Error::InvalidRoute(format!("route {i} ({name}): {reason}"))
                }
                e => e,
            };
            let route = Route::try_from(r).map_err(at)?;
            pool.push(route).map_err(at)?;
        }
        Ok(pool)
    }
}

impl RoutePool {
    /// An empty pool.
    pub fn new() -> RoutePool {
        RoutePool::default()
    }

    /// A pool of `routes`, in their order.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRoute`] when a NIC address is in two routes.
    pub fn from_routes(routes: impl IntoIterator<Item = Route>) -> Result<RoutePool, Error> {
        let mut pool = RoutePool::new();
        for r in routes {
            pool.push(r)?;
        }
        Ok(pool)
    }

    /// Adds a route at the end.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRoute`] when one of its NIC addresses is already in the pool; the
    /// pool is unchanged.
    pub fn push(&mut self, route: Route) -> Result<(), Error> {
        if let Some(dup) = route.nic.iter().find(|b| self.find_by_nic(b.ip).is_some()) {
            return Err(Error::InvalidRoute(format!(
                "nic address {} is already in another route",
                dup.ip
            )));
        }
        self.routes.push(route);
        Ok(())
    }

    /// The routes of family `af`, in order.
    pub fn routes(&self, af: Af) -> impl Iterator<Item = &Route> + '_ {
        self.routes.iter().filter(move |r| r.af == af)
    }

    /// Every route, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Route> {
        self.routes.iter()
    }

    /// The first route of family `af`.
    pub fn first(&self, af: Af) -> Option<&Route> {
        self.routes(af).next()
    }

    /// The first route with `ip` among its external addresses (exact address, not any
    /// address of the block). An IPv4-mapped IPv6 address is looked up as IPv4.
    pub fn find_by_ext(&self, ip: IpAddr) -> Option<&Route> {
        let ip = canonical_ip(ip);
        self.routes
            .iter()
            .find(|r| r.ext.iter().any(|b| b.ip == ip))
    }

    /// The route with `ip` among its NIC addresses (exact address). An IPv4-mapped IPv6
    /// address is looked up as IPv4.
    pub fn find_by_nic(&self, ip: IpAddr) -> Option<&Route> {
        let ip = canonical_ip(ip);
        self.routes
            .iter()
            .find(|r| r.nic.iter().any(|b| b.ip == ip))
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the pool has no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The pool as JSON, one line: `{"routes":[...]}`. [`from_json`](Self::from_json)
    /// reads it back to an equal pool.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a route pool serialises to json")
    }

    /// Loads a pool from JSON written by [`to_json`](Self::to_json), with no network I/O.
    ///
    /// # Errors
    ///
    /// [`Error::RouteJson`] when the text is not JSON of the right shape (unknown fields
    /// included); [`Error::InvalidRoute`] naming the route and the reason when a route
    /// fails the checks of [`Route::new`] or a NIC address is in two routes.
    pub fn from_json(json: &str) -> Result<RoutePool, Error> {
        let repr: PoolRepr = serde_json::from_str(json).map_err(Error::RouteJson)?;
        RoutePool::try_from(repr)
    }
}

impl<'a> IntoIterator for &'a RoutePool {
    type Item = &'a Route;
    type IntoIter = std::slice::Iter<'a, Route>;

    fn into_iter(self) -> Self::IntoIter {
        self.routes.iter()
    }
}

impl IntoIterator for RoutePool {
    type Item = Route;
    type IntoIter = std::vec::IntoIter<Route>;

    fn into_iter(self) -> Self::IntoIter {
        self.routes.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iface::{IfAddr4, IfAddr6, IfFlags};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn blk(s: &str) -> IpBlock {
        let (a, p) = s.split_once('/').unwrap();
        IpBlock::new(ip(a), p.parse().unwrap())
    }

    /// A fixture interface `eth0` (index 2) with addresses written as `ip/prefix`.
    fn nic(addrs: &[&str]) -> Interface {
        let mut n = Interface {
            name: "eth0".into(),
            index: Some(2),
            flags: IfFlags {
                up: true,
                ..IfFlags::default()
            },
            v4: Vec::new(),
            v6: Vec::new(),
        };
        for a in addrs {
            let b = blk(a);
            match b.ip {
                IpAddr::V4(v4) => n.v4.push(IfAddr4 {
                    ip: v4,
                    prefix: b.prefix,
                    class: classify(b.ip),
                }),
                IpAddr::V6(v6) => {
                    let class = classify(b.ip);
                    n.v6.push(IfAddr6 {
                        ip: v6,
                        prefix: b.prefix,
                        scope_id: if class == AddrClass::LinkLocal { 2 } else { 0 },
                        class,
                    })
                }
            }
        }
        n
    }

    fn plan_nics(plans: &[RoutePlan]) -> Vec<(PlanKind, Vec<String>)> {
        plans
            .iter()
            .map(|p| (p.kind(), p.nic().iter().map(|b| b.to_string()).collect()))
            .collect()
    }

    #[test]
    fn private_shared_and_unique_local_addresses_make_one_plan() {
        let n = nic(&[
            "192.168.1.5/24",
            "10.1.2.3/8",
            "100.64.0.7/10",
            "172.16.9.9/12",
            "fd00::5/64",
            "fc12::1/48",
        ]);
        let v4 = n.route_plans(Af::V4);
        assert_eq!(
            plan_nics(&v4),
            [(
                PlanKind::Private,
                vec![
                    "192.168.1.5/24".to_string(),
                    "10.1.2.3/8".into(),
                    "100.64.0.7/10".into(),
                    "172.16.9.9/12".into()
                ]
            )]
        );
        let p = &v4[0];
        assert_eq!(p.probe_from(), ip("192.168.1.5"));
        assert_eq!(p.expected_ext(), None);
        assert_eq!(
            (p.af(), p.interface(), p.index()),
            (Af::V4, "eth0", Some(2))
        );
        let v6 = plan_routes(&n, Af::V6);
        assert_eq!(
            plan_nics(&v6),
            [(
                PlanKind::Private,
                vec!["fd00::5/64".to_string(), "fc12::1/48".into()]
            )]
        );
        assert_eq!(v6[0].af(), Af::V6);
    }

    #[test]
    fn each_public_block_makes_its_own_plan() {
        let n = nic(&["8.8.4.4/24", "203.0.113.7/24", "2606:4700::1111/64"]);
        let v4 = plan_routes(&n, Af::V4);
        assert_eq!(
            plan_nics(&v4),
            [
                (PlanKind::Public, vec!["8.8.4.4/24".to_string()]),
                (PlanKind::Public, vec!["203.0.113.7/24".to_string()]),
            ]
        );
        assert_eq!(v4[1].probe_from(), ip("203.0.113.7"));
        assert_eq!(v4[1].expected_ext(), Some(ip("203.0.113.7")));
        let v6 = plan_routes(&n, Af::V6);
        assert_eq!(
            plan_nics(&v6),
            [(PlanKind::Public, vec!["2606:4700::1111/64".to_string()])]
        );
    }

    #[test]
    fn addresses_of_one_public_network_share_a_plan() {
        // A stable and a temporary address in one /64, and one in another /64.
        let n = nic(&[
            "2001:db8:1::5/64",
            "2001:db8:2::5/64",
            "2001:db8:1::abcd/64",
        ]);
        assert_eq!(
            plan_nics(&plan_routes(&n, Af::V6)),
            [
                (
                    PlanKind::Public,
                    vec!["2001:db8:1::5/64".to_string(), "2001:db8:1::abcd/64".into()]
                ),
                (PlanKind::Public, vec!["2001:db8:2::5/64".to_string()]),
            ]
        );
    }

    #[test]
    fn mixed_plans_keep_the_interface_order() {
        let n = nic(&[
            "198.51.100.9/24",
            "192.168.1.5/24",
            "198.18.0.2/15",
            "10.0.0.2/8",
        ]);
        assert_eq!(
            plan_nics(&plan_routes(&n, Af::V4)),
            [
                (PlanKind::Public, vec!["198.51.100.9/24".to_string()]),
                (
                    PlanKind::Private,
                    vec!["192.168.1.5/24".to_string(), "10.0.0.2/8".into()]
                ),
                (PlanKind::Public, vec!["198.18.0.2/15".to_string()]),
            ]
        );
    }

    #[test]
    fn loopback_link_local_and_other_unusable_addresses_make_no_plan() {
        let n = nic(&[
            "127.0.0.1/8",
            "169.254.3.4/16",
            "0.0.0.0/8",
            "224.0.0.1/4",
            "240.0.0.1/4",
            "::1/128",
            "fe80::1/64",
            "fec0::1/10",
            "ff02::1/16",
            "::ffff:192.168.1.5/96",
        ]);
        assert_eq!(plan_routes(&n, Af::V4), []);
        assert_eq!(plan_routes(&n, Af::V6), []);
        let with_one = nic(&["fe80::1/64", "2001:db8::5/64", "127.0.0.1/8", "10.0.0.1/8"]);
        assert_eq!(
            plan_nics(&plan_routes(&with_one, Af::V6)),
            [(PlanKind::Public, vec!["2001:db8::5/64".to_string()])]
        );
        assert_eq!(
            plan_nics(&plan_routes(&with_one, Af::V4)),
            [(PlanKind::Private, vec!["10.0.0.1/8".to_string()])]
        );
    }

    #[test]
    fn completing_a_public_block_seen_as_itself_gives_the_block() {
        let n = nic(&["2001:db8:1::5/64", "2001:db8:1::abcd/64"]);
        let plan = plan_routes(&n, Af::V6).remove(0);
        let r = plan.complete(Some(ip("2001:db8:1::5")));
        assert_eq!(
            r.ext(),
            [blk("2001:db8:1::5/64"), blk("2001:db8:1::abcd/64")]
        );
        assert_eq!(r.nic(), r.ext());
        assert!(r.is_direct());
        assert_eq!(r.ext_ip(), Some(ip("2001:db8:1::5")));
        assert_eq!(r.bind_addr(443), "[2001:db8:1::5]:443".parse().unwrap());
        assert_eq!(r.index(), Some(2));
    }

    #[test]
    fn completing_a_public_block_seen_as_another_address_means_nat() {
        let plan = plan_routes(&nic(&["203.0.113.7/24"]), Af::V4).remove(0);
        let r = plan.complete(Some(ip("198.51.100.1")));
        assert_eq!(r.nic(), [blk("203.0.113.7/24")]);
        assert_eq!(r.ext(), [blk("198.51.100.1/32")]);
        assert!(!r.is_direct());
        assert_eq!(r.bind_addr(0), "203.0.113.7:0".parse().unwrap());
    }

    #[test]
    fn completing_the_private_group() {
        let n = nic(&["192.168.1.5/24", "10.0.0.2/8"]);
        let plan = plan_routes(&n, Af::V4).remove(0);
        let r = plan.clone().complete(Some(ip("203.0.113.50")));
        assert_eq!(r.ext(), [blk("203.0.113.50/32")]);
        assert_eq!(r.nic(), [blk("192.168.1.5/24"), blk("10.0.0.2/8")]);
        assert_eq!(r.local_ip(), ip("192.168.1.5"));
        // An IPv4-mapped answer is the IPv4 address.
        let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 50).to_ipv6_mapped());
        assert_eq!(plan.clone().complete(Some(mapped)), r);
    }

    #[test]
    fn completing_with_no_answer_leaves_the_external_address_unknown() {
        for addrs in [&["192.168.1.5/24"][..], &["203.0.113.7/24"][..]] {
            let plan = plan_routes(&nic(addrs), Af::V4).remove(0);
            let r = plan.complete(None);
            assert_eq!(r.ext(), []);
            assert_eq!(r.ext_ip(), None);
            assert!(!r.is_direct());
            assert_eq!(r.nic(), [blk(addrs[0])]);
            assert_eq!(r.bind_addr(7).port(), 7);
        }
    }

    #[test]
    fn completing_with_an_impossible_answer_is_no_answer() {
        let plan = plan_routes(&nic(&["192.168.1.5/24"]), Af::V4).remove(0);
        for seen in [
            "2001:db8::1",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "0.0.0.0",
        ] {
            assert_eq!(plan.clone().complete(Some(ip(seen))).ext(), [], "{seen}");
        }
    }

    #[test]
    fn ipv6_bind_addr_has_no_scope_id() {
        let plan = plan_routes(&nic(&["fe80::1/64", "fd00::5/64"]), Af::V6).remove(0);
        match plan.complete(None).bind_addr(80) {
            SocketAddr::V6(a) => {
                assert_eq!(*a.ip(), "fd00::5".parse::<Ipv6Addr>().unwrap());
                assert_eq!((a.port(), a.scope_id()), (80, 0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ip_block_network_and_contains() {
        let b = blk("192.168.1.5/24");
        assert_eq!(b.network(), ip("192.168.1.0"));
        assert!(b.contains(ip("192.168.1.255")));
        assert!(!b.contains(ip("192.168.2.1")));
        assert!(!b.contains(ip("::ffff:192.168.1.1")));
        assert_eq!(blk("10.0.0.1/0").network(), ip("0.0.0.0"));
        assert_eq!(blk("2001:db8::1:5/112").network(), ip("2001:db8::1:0"));
        assert!(blk("2001:db8::5/128").contains(ip("2001:db8::5")));
        assert!(!blk("2001:db8::5/128").contains(ip("2001:db8::6")));
        assert_eq!(IpBlock::host(ip("::1")).prefix, 128);
        assert_eq!(IpBlock::host(ip("1.2.3.4")).to_string(), "1.2.3.4/32");
    }

    /// Two v4 routes and one v6 route.
    fn pool() -> RoutePool {
        let n = nic(&[
            "192.168.1.5/24",
            "203.0.113.7/24",
            "10.0.0.2/8",
            "2001:db8::5/64",
            "fe80::1/64",
        ]);
        let mut v4 = plan_routes(&n, Af::V4).into_iter();
        let private = v4.next().unwrap().complete(Some(ip("198.51.100.1")));
        let public = v4.next().unwrap().complete(Some(ip("203.0.113.7")));
        assert!(v4.next().is_none());
        let v6 = plan_routes(&n, Af::V6).remove(0).complete(None);
        RoutePool::from_routes([private, v6, public]).unwrap()
    }

    #[test]
    fn pool_lookups() {
        let p = pool();
        assert_eq!((p.len(), p.is_empty()), (3, false));
        assert!(RoutePool::new().is_empty());
        let v4: Vec<IpAddr> = p.routes(Af::V4).map(Route::local_ip).collect();
        assert_eq!(v4, [ip("192.168.1.5"), ip("203.0.113.7")]);
        assert_eq!(p.first(Af::V6).unwrap().local_ip(), ip("2001:db8::5"));
        assert_eq!(p.iter().count(), 3);
        assert_eq!((&p).into_iter().nth(1).unwrap().af(), Af::V6);

        let by_ext = p.find_by_ext(ip("198.51.100.1")).unwrap();
        assert_eq!(by_ext.local_ip(), ip("192.168.1.5"));
        let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped());
        assert_eq!(p.find_by_ext(mapped).unwrap().local_ip(), ip("203.0.113.7"));
        // Exact addresses only: another address of the block is not the route's.
        assert!(p.find_by_ext(ip("203.0.113.8")).is_none());
        assert!(p.find_by_ext(ip("2001:db8::5")).is_none(), "v6 ext unknown");

        assert_eq!(
            p.find_by_nic(ip("10.0.0.2")).unwrap().local_ip(),
            ip("192.168.1.5")
        );
        assert_eq!(p.find_by_nic(ip("2001:db8::5")).unwrap().af(), Af::V6);
        assert!(p.find_by_nic(ip("198.51.100.1")).is_none());
        assert!(p.find_by_nic(ip("fe80::1")).is_none());
        assert!(RoutePool::new().first(Af::V4).is_none());
    }

    #[test]
    fn pool_refuses_a_nic_address_in_two_routes() {
        let mut p = pool();
        let again = Route::new(Af::V4, "eth1", None, vec![blk("10.0.0.2/8")], vec![]).unwrap();
        match p.push(again) {
            Err(Error::InvalidRoute(m)) => assert!(m.contains("10.0.0.2"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(p, pool(), "unchanged");
    }

    #[test]
    fn pool_round_trips_through_json() {
        let p = pool();
        let json = p.to_json();
        assert!(json.starts_with("{\"routes\":[{\"af\":\"ipv4\""), "{json}");
        assert!(json.contains("\"interface\":\"eth0\""), "{json}");
        assert!(
            json.contains("\"ext\":[{\"ip\":\"198.51.100.1\",\"prefix\":32}]"),
            "{json}"
        );
        let back = RoutePool::from_json(&json).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.to_json(), json);
        // Through serde as well, with the same checks.
        assert_eq!(serde_json::from_str::<RoutePool>(&json).unwrap(), p);
        assert_eq!(
            RoutePool::from_json(&RoutePool::new().to_json()).unwrap(),
            RoutePool::new()
        );
    }

    fn route_json(af: &str, nic: &str, ext: &str) -> String {
        format!(
            r#"{{"routes":[{{"af":"ipv4","interface":"eth0","index":2,"nic":[{{"ip":"10.0.0.2","prefix":8}}],"ext":[]}},{{"af":"{af}","interface":"eth1","index":null,"nic":[{nic}],"ext":[{ext}]}}]}}"#
        )
    }

    fn refusal(json: &str) -> String {
        match RoutePool::from_json(json) {
            Err(Error::InvalidRoute(m)) => m,
            other => panic!("{json}: expected InvalidRoute, got {other:?}"),
        }
    }

    #[test]
    fn json_with_a_bad_route_is_refused_with_a_clear_reason() {
        let ok = route_json("ipv6", r#"{"ip":"2001:db8::5","prefix":64}"#, "");
        assert_eq!(RoutePool::from_json(&ok).unwrap().len(), 2);

        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "ipv6",
                r#"{"ip":"192.168.1.5","prefix":24}"#,
                "",
                "route 1 (eth1): nic address 192.168.1.5 is not ipv6",
            ),
            (
                "ipv4",
                r#"{"ip":"192.168.1.5","prefix":24}"#,
                r#"{"ip":"2001:db8::1","prefix":128}"#,
                "route 1 (eth1): external address 2001:db8::1 is not ipv4",
            ),
            (
                "ipv4",
                r#"{"ip":"192.168.1.5","prefix":33}"#,
                "",
                "route 1 (eth1): nic address 192.168.1.5 has prefix length 33 (most is 32)",
            ),
            (
                "ipv6",
                r#"{"ip":"fe80::1","prefix":64}"#,
                "",
                "route 1 (eth1): nic address fe80::1 is link-local, which a route cannot hold",
            ),
            (
                "ipv6",
                r#"{"ip":"::ffff:10.0.0.9","prefix":128}"#,
                "",
                "route 1 (eth1): nic address ::ffff:10.0.0.9 is ipv4-mapped",
            ),
            ("ipv4", "", "", "route 1 (eth1): it has no nic address"),
            (
                "ipv4",
                r#"{"ip":"10.0.0.9","prefix":8},{"ip":"10.0.0.9","prefix":8}"#,
                "",
                "route 1 (eth1): nic address 10.0.0.9 is listed twice",
            ),
            (
                "ipv4",
                r#"{"ip":"10.0.0.2","prefix":8}"#,
                "",
                "route 1 (eth1): nic address 10.0.0.2 is already in another route",
            ),
        ];
        for (af, nic, ext, want) in cases {
            let json = route_json(af, nic, ext);
            assert_eq!(refusal(&json), *want, "{json}");
            // The serde path refuses it too.
            assert!(serde_json::from_str::<RoutePool>(&json).is_err(), "{json}");
        }
        let err = RoutePool::from_json(&route_json("ipv6", "", "")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid route: route 1 (eth1): it has no nic address"
        );
    }

    #[test]
    fn malformed_json_is_refused() {
        for json in [
            "",
            "[]",
            "{\"routes\":[{\"af\":\"ipv4\"}]}",
            "{\"routes\":[],\"extra\":1}",
            r#"{"routes":[{"af":"ipv5","interface":"e","index":null,"nic":[],"ext":[]}]}"#,
            r#"{"routes":[{"af":"ipv4","interface":"e","index":null,"nic":[{"ip":"10.0.0.300","prefix":8}],"ext":[]}]}"#,
            r#"{"routes":[{"af":"ipv4","interface":"e","index":null,"nic":[{"ip":"10.0.0.3","prefix":8}],"ext":[],"more":true}]}"#,
        ] {
            match RoutePool::from_json(json) {
                Err(e @ Error::RouteJson(_)) => {
                    assert!(
                        e.to_string().starts_with("cannot read routes from json: "),
                        "{e}"
                    );
                }
                other => panic!("{json}: expected RouteJson, got {other:?}"),
            }
        }
    }

    #[test]
    fn route_new_checks_and_allows_loopback_for_tests() {
        let lo = Route::new(Af::V4, "lo", Some(1), vec![blk("127.0.0.1/8")], vec![]).unwrap();
        assert_eq!(lo.bind_addr(9), "127.0.0.1:9".parse().unwrap());
        assert!(matches!(
            Route::new(Af::V4, "", None, vec![blk("10.0.0.1/8")], vec![]),
            Err(Error::InvalidRoute(m)) if m == "the interface name is empty"
        ));
        assert!(matches!(
            Route::new(Af::V4, "e", None, vec![blk("10.0.0.1/8")], vec![blk("224.0.0.1/32")]),
            Err(Error::InvalidRoute(m)) if m.contains("224.0.0.1 is multicast")
        ));
        // A single route loads through serde with the same checks.
        let json = serde_json::to_string(&lo).unwrap();
        assert_eq!(serde_json::from_str::<Route>(&json).unwrap(), lo);
        let bad = json.replace("127.0.0.1", "169.254.0.1");
        assert!(serde_json::from_str::<Route>(&bad).is_err(), "{bad}");
    }
}
