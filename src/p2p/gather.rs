//! What a node says of itself in its address record: the interfaces and addresses it
//! listens on, what STUN saw of each family, and the ports mapped on its router.

use std::net::{IpAddr, SocketAddr};

use crate::addr::{classify, AddrClass};
use crate::identity::{FamilyEntry, InterfaceEntry, LocalAddr, PortMapping};
use crate::iface::Interface;
use crate::nat::NatReport;
use crate::Af;

/// Most interfaces a gathered record names, and addresses per interface and family: the
/// text form must stay within [`MAX_RECORD_TEXT`](crate::identity::MAX_RECORD_TEXT).
pub const MAX_INTERFACES: usize = 8;
/// Most addresses per interface and family in a gathered record.
pub const MAX_ADDRS: usize = 4;

/// Whether a node can offer `ip` to its peers: not loopback, unspecified, multicast or
/// IPv6 link-local (which needs a scope that a peer cannot know).
pub fn offerable(ip: IpAddr) -> bool {
    !matches!(
        classify(ip),
        AddrClass::Loopback | AddrClass::Unspecified | AddrClass::Multicast | AddrClass::LinkLocal
    )
}

/// The record's interface entries: one per interface that is up and not loopback, or
/// that holds an address in `listening`, with the addresses a peer can use (at most
/// [`MAX_ADDRS`] per family) and `port`. A NAT report goes to the interface that holds
/// its local address, and a port mapping to the family of its local address.
///
/// `listening`, when not empty, limits the addresses to those (a node bound to chosen
/// addresses offers only them; loopback ones too, for tests on one host).
pub fn interface_entries(
    nics: &[Interface],
    listening: &[IpAddr],
    reports: &[(Af, NatReport)],
    port: u16,
    mappings: &[(IpAddr, PortMapping)],
) -> Vec<InterfaceEntry> {
    let tested: Vec<IpAddr> = reports
        .iter()
        .filter_map(|(_, r)| r.local.map(|l| l.ip()))
        .collect();
    let usable = |ip: &IpAddr| {
        if listening.is_empty() {
            tested.contains(ip) || offerable(*ip)
        } else {
            listening.contains(ip)
        }
    };
    let mut entries = Vec::new();
    for nic in nics {
        let v4 = nic.v4.iter().map(|a| IpAddr::from(a.ip));
        let v6 = nic.v6.iter().map(|a| IpAddr::from(a.ip));
        let ips: Vec<IpAddr> = v4.chain(v6).filter(usable).collect();
        let wanted = (nic.flags.up && !nic.flags.loopback) || !listening.is_empty();
        if ips.is_empty() || !(wanted || ips.iter().any(|ip| tested.contains(ip))) {
            continue;
        }
        let families: Vec<FamilyEntry> = [Af::V4, Af::V6]
            .into_iter()
            .filter_map(|af| {
                let mine: Vec<IpAddr> = ips.iter().copied().filter(|ip| Af::of(ip) == af).collect();
                let report = reports
                    .iter()
                    .find(|(raf, r)| *raf == af && r.local.is_some_and(|l| mine.contains(&l.ip())));
                let mapped: Vec<PortMapping> = mappings
                    .iter()
                    .filter(|(ip, _)| mine.contains(ip))
                    .map(|(_, m)| *m)
                    .collect();
                (!mine.is_empty())
                    .then(|| family_entry(af, &mine, port, report.map(|(_, r)| r), mapped))
            })
            .collect();
        entries.push(InterfaceEntry {
            name: nic.name.clone(),
            families,
        });
    }
    entries.truncate(MAX_INTERFACES);
    entries
}

fn family_entry(
    af: Af,
    ips: &[IpAddr],
    port: u16,
    report: Option<&NatReport>,
    mut mapped: Vec<PortMapping>,
) -> FamilyEntry {
    let mut f = FamilyEntry::new(af);
    f.local = ips
        .iter()
        .take(MAX_ADDRS)
        .map(|ip| LocalAddr::new(SocketAddr::new(*ip, port)))
        .collect();
    if let Some(r) = report {
        f.external = r.external;
        f.nat_type = r.nat_type;
        f.mapping = r.mapping;
        f.filtering = r.filtering;
        f.port_allocation = r.port_allocation;
    }
    mapped.truncate(crate::identity::MAX_PORT_MAPPINGS);
    f.port_mappings = mapped;
    f
}
