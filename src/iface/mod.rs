//! The machine's network interfaces: enumeration, the default interface per address
//! family, and addresses to bind to.
//!
//! - [`Interface::list`] lists every interface that has an IP address, with its index,
//!   [`IfFlags`], and IPv4 and IPv6 addresses ([`IfAddr4`], [`IfAddr6`]) with their prefix
//!   lengths and [`AddrClass`]; link-local addresses included, with their scope id.
//! - [`Interface::default_for`] is the interface the OS routes the internet through, read
//!   from the OS route table ([`table`] parses it; Linux only for now).
//! - [`Interface::bind_addr`] is an address of the interface to bind a socket to.
//! - [`Route`]s map an interface's addresses to the external addresses peers see, per
//!   family; [`plan_routes`] plans them without I/O (STUN fills in the external side), and
//!   a [`RoutePool`] holds them and round-trips through JSON ([`route`]).

pub mod bind;
pub mod route;
mod sys;
pub mod table;

pub use route::{plan_routes, IpBlock, PlanKind, Route, RoutePlan, RoutePool};

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use serde::{Deserialize, Serialize};

use crate::addr::{classify, AddrClass, Af};

/// Errors from listing interfaces, reading the OS route table, and making or loading
/// [`Route`]s.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OS would not list the interfaces.
    #[error("cannot list network interfaces: {0}")]
    List(#[source] std::io::Error),
    /// The route table could not be read.
    #[error("cannot read the route table {path}: {source}")]
    ReadRoutes {
        /// The file that was read.
        path: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Not implemented on this operating system.
    #[error("unsupported on this system: {0}")]
    Unsupported(&'static str),
    /// Routes could not be read from JSON: not JSON, or not of the right shape.
    #[error("cannot read routes from json: {0}")]
    RouteJson(#[source] serde_json::Error),
    /// A route, or a pool of routes, fails a check; the text says which route and why.
    #[error("invalid route: {0}")]
    InvalidRoute(String),
}

/// What is known about an interface's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IfFlags {
    /// Operationally up: `IFF_RUNNING` on Unix, oper status "up" on Windows.
    pub up: bool,
    /// A loopback interface (it has a loopback address).
    pub loopback: bool,
    /// A point-to-point link (`IFF_POINTOPOINT` on Unix), such as many VPN tunnels.
    pub point_to_point: bool,
}

/// An IPv4 address of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IfAddr4 {
    /// The address.
    pub ip: Ipv4Addr,
    /// The prefix length of its network.
    pub prefix: u8,
    /// What kind of address it is.
    pub class: AddrClass,
}

/// An IPv6 address of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IfAddr6 {
    /// The address.
    pub ip: Ipv6Addr,
    /// The prefix length of its network.
    pub prefix: u8,
    /// The scope id to use with the address: the interface index for a link-local address,
    /// 0 otherwise.
    pub scope_id: u32,
    /// What kind of address it is.
    pub class: AddrClass,
}

/// A network interface and its addresses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Interface {
    /// The OS name, such as `eth0` or `lo`.
    pub name: String,
    /// The OS index (`if_nametoindex`), if the OS gave one.
    pub index: Option<u32>,
    /// The interface's state.
    pub flags: IfFlags,
    /// IPv4 addresses, in the order the OS lists them.
    pub v4: Vec<IfAddr4>,
    /// IPv6 addresses, in the order the OS lists them.
    pub v6: Vec<IfAddr6>,
}

impl Interface {
    /// Every interface that has at least one IP address, one entry per interface name,
    /// ordered by index (interfaces without an index last), then by name.
    ///
    /// Interfaces without any IP address are not listed: the OS call used
    /// (`getifaddrs`, `GetAdaptersAddresses`) reports addresses, not devices.
    pub fn list() -> Result<Vec<Interface>, Error> {
        let entries = if_addrs::get_if_addrs().map_err(Error::List)?;
        Ok(group(entries))
    }

    /// The interface the OS routes the internet through for `af`: the interface of the
    /// default route (`0.0.0.0/0` or `::/0`) with the lowest metric that has an address.
    ///
    /// `Ok(None)` when there is no default route of that family. Reads the route table
    /// (`/proc/net/route`, `/proc/net/ipv6_route`) on Linux; elsewhere
    /// [`Error::Unsupported`].
    pub fn default_for(af: Af) -> Result<Option<Interface>, Error> {
        let table = sys::route_table(af)?;
        for bad in &table.bad {
            tracing::debug!(%af, line = bad.line, reason = bad.reason, "route table line skipped");
        }
        let defaults = table.defaults();
        if defaults.is_empty() {
            return Ok(None);
        }
        let mut all = Interface::list()?;
        for route in defaults {
            if let Some(i) = all.iter().position(|n| n.name == route.iface) {
                return Ok(Some(all.swap_remove(i)));
            }
        }
        Ok(None)
    }

    /// The best default route of `af` that goes through a gateway: its interface and the
    /// gateway's address (the router a port mapping is asked of). `Ok(None)` when there
    /// is none. Reads the route table as [`Interface::default_for`] does.
    pub fn default_gateway(af: Af) -> Result<Option<table::OsRoute>, Error> {
        let table = sys::route_table(af)?;
        Ok(table.default_gateway().cloned())
    }

    /// Whether the interface has an address of the family.
    pub fn has(&self, af: Af) -> bool {
        match af {
            Af::V4 => !self.v4.is_empty(),
            Af::V6 => !self.v6.is_empty(),
        }
    }

    /// An address of this interface to bind a socket of family `af` to, with port 0.
    ///
    /// The first unicast address of the family; for IPv6, a global, unique local (or any
    /// other non-link-local) address is preferred over a link-local one, which comes with
    /// the interface's scope id. `None` if the interface has no such address.
    pub fn bind_addr(&self, af: Af) -> Option<SocketAddr> {
        match af {
            Af::V4 => self
                .v4
                .iter()
                .find(|a| a.class.is_unicast())
                .map(|a| SocketAddrV4::new(a.ip, 0).into()),
            Af::V6 => {
                let unicast = || self.v6.iter().filter(|a| a.class.is_unicast());
                unicast()
                    .find(|a| a.class != AddrClass::LinkLocal)
                    .or_else(|| unicast().next())
                    .map(|a| SocketAddrV6::new(a.ip, 0, 0, a.scope_id).into())
            }
        }
    }
}

/// Groups if-addrs' entries, one per address, into one [`Interface`] per name.
fn group(entries: Vec<if_addrs::Interface>) -> Vec<Interface> {
    let mut out: Vec<Interface> = Vec::new();
    for e in entries {
        let i = match out.iter().position(|n| n.name == e.name) {
            Some(i) => i,
            None => {
                out.push(Interface {
                    name: e.name.clone(),
                    index: e.index,
                    flags: IfFlags::default(),
                    v4: Vec::new(),
                    v6: Vec::new(),
                });
                out.len() - 1
            }
        };
        let nic = &mut out[i];
        nic.index = nic.index.or(e.index);
        nic.flags.up |= e.is_oper_up();
        nic.flags.loopback |= e.is_loopback();
        nic.flags.point_to_point |= e.is_p2p();
        match &e.addr {
            if_addrs::IfAddr::V4(a) => {
                let addr = IfAddr4 {
                    ip: a.ip,
                    prefix: a.prefixlen,
                    class: classify(a.ip.into()),
                };
                if !nic.v4.contains(&addr) {
                    nic.v4.push(addr);
                }
            }
            if_addrs::IfAddr::V6(a) => {
                let class = classify(a.ip.into());
                let scope_id = if class == AddrClass::LinkLocal {
                    e.index.unwrap_or(0)
                } else {
                    0
                };
                let addr = IfAddr6 {
                    ip: a.ip,
                    prefix: a.prefixlen,
                    scope_id,
                    class,
                };
                if !nic.v6.contains(&addr) {
                    nic.v6.push(addr);
                }
            }
        }
    }
    out.sort_by(|a, b| {
        (a.index.is_none(), a.index, &a.name).cmp(&(b.index.is_none(), b.index, &b.name))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(ip: &str, prefix: u8, scope_id: u32) -> IfAddr6 {
        let ip: Ipv6Addr = ip.parse().unwrap();
        IfAddr6 {
            ip,
            prefix,
            scope_id,
            class: classify(ip.into()),
        }
    }

    fn v4(ip: [u8; 4], prefix: u8) -> IfAddr4 {
        IfAddr4 {
            ip: ip.into(),
            prefix,
            class: classify(Ipv4Addr::from(ip).into()),
        }
    }

    fn nic(v4s: Vec<IfAddr4>, v6s: Vec<IfAddr6>) -> Interface {
        Interface {
            name: "eth0".into(),
            index: Some(2),
            flags: IfFlags {
                up: true,
                ..IfFlags::default()
            },
            v4: v4s,
            v6: v6s,
        }
    }

    #[test]
    fn bind_addr_prefers_global_ipv6_over_link_local() {
        let n = nic(
            vec![v4([224, 0, 0, 1], 4), v4([192, 168, 1, 5], 24)],
            vec![v6("fe80::1", 64, 2), v6("2001:db8::5", 64, 0)],
        );
        assert_eq!(
            n.bind_addr(Af::V4),
            Some("192.168.1.5:0".parse().unwrap()),
            "multicast skipped"
        );
        assert_eq!(
            n.bind_addr(Af::V6),
            Some("[2001:db8::5]:0".parse().unwrap())
        );
        let ula = nic(vec![], vec![v6("fe80::1", 64, 2), v6("fd00::5", 64, 0)]);
        assert_eq!(ula.bind_addr(Af::V6), Some("[fd00::5]:0".parse().unwrap()));
    }

    #[test]
    fn bind_addr_gives_link_local_its_scope_id() {
        let n = nic(vec![], vec![v6("fe80::1", 64, 2)]);
        match n.bind_addr(Af::V6) {
            Some(SocketAddr::V6(a)) => {
                assert_eq!(*a.ip(), "fe80::1".parse::<Ipv6Addr>().unwrap());
                assert_eq!(a.scope_id(), 2);
                assert_eq!(a.port(), 0);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(n.bind_addr(Af::V4), None);
        assert!(!n.has(Af::V4));
        assert!(n.has(Af::V6));
    }

    fn entry(name: &str, index: Option<u32>, addr: if_addrs::IfAddr) -> if_addrs::Interface {
        if_addrs::Interface {
            name: name.into(),
            addr,
            index,
            oper_status: if_addrs::IfOperStatus::Up,
            is_p2p: false,
            #[cfg(windows)]
            adapter_name: String::new(),
        }
    }

    fn e4(ip: [u8; 4], prefixlen: u8) -> if_addrs::IfAddr {
        if_addrs::IfAddr::V4(if_addrs::Ifv4Addr {
            ip: ip.into(),
            netmask: Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefixlen)).unwrap_or(0)),
            prefixlen,
            broadcast: None,
        })
    }

    fn e6(ip: &str, prefixlen: u8) -> if_addrs::IfAddr {
        if_addrs::IfAddr::V6(if_addrs::Ifv6Addr {
            ip: ip.parse().unwrap(),
            netmask: Ipv6Addr::UNSPECIFIED,
            prefixlen,
            broadcast: None,
        })
    }

    #[test]
    fn group_merges_entries_per_name_in_index_order() {
        let nics = group(vec![
            entry("eth0", Some(2), e4([10, 0, 0, 2], 8)),
            entry("lo", Some(1), e4([127, 0, 0, 1], 8)),
            entry("eth0", Some(2), e6("fe80::2", 64)),
            entry("lo", Some(1), e6("::1", 128)),
            entry("eth0", Some(2), e6("2001:db8::2", 64)),
            entry("ghost", None, e4([10, 9, 9, 9], 8)),
        ]);
        let names: Vec<&str> = nics.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["lo", "eth0", "ghost"]);
        let lo = &nics[0];
        assert!(lo.flags.loopback && lo.flags.up);
        assert_eq!(lo.v4, [v4([127, 0, 0, 1], 8)]);
        assert_eq!(lo.v6, [v6("::1", 128, 0)]);
        let eth = &nics[1];
        assert!(!eth.flags.loopback);
        assert_eq!(eth.v4, [v4([10, 0, 0, 2], 8)]);
        assert_eq!(eth.v6, [v6("fe80::2", 64, 2), v6("2001:db8::2", 64, 0)]);
        assert_eq!(eth.v6[0].class, AddrClass::LinkLocal);
        assert_eq!(nics[2].index, None);
    }

    #[test]
    fn interface_round_trips_through_json() {
        let n = nic(
            vec![v4([192, 168, 1, 5], 24)],
            vec![v6("fe80::1", 64, 2), v6("2001:db8::5", 64, 0)],
        );
        let json = serde_json::to_string(&n).unwrap();
        assert!(json.contains("\"ip\":\"192.168.1.5\""), "{json}");
        assert!(json.contains("\"class\":\"link-local\""), "{json}");
        assert!(json.contains("\"scope_id\":2"), "{json}");
        assert_eq!(serde_json::from_str::<Interface>(&json).unwrap(), n);
    }

    #[test]
    fn list_has_loopback_with_an_index() {
        let nics = Interface::list().unwrap();
        let lo = nics
            .iter()
            .find(|n| n.flags.loopback)
            .unwrap_or_else(|| panic!("no loopback in {nics:?}"));
        assert!(lo.index.is_some_and(|i| i > 0), "{lo:?}");
        assert!(
            lo.v4
                .iter()
                .any(|a| a.ip == Ipv4Addr::LOCALHOST && a.class == AddrClass::Loopback),
            "{lo:?}"
        );
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    #[test]
    fn default_for_is_unsupported_here() {
        assert!(matches!(
            Interface::default_for(Af::V4),
            Err(Error::Unsupported(_))
        ));
    }
}
