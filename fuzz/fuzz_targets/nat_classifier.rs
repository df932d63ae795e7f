//! The NAT classifier fed arbitrary observations, built from raw parts: addresses (from a
//! small pool of the lab's addresses, so that equalities happen, or arbitrary ones),
//! probe outcomes and port samples.
//!
//! Input format: see `observations`.
//!
//! Invariants: a cone type means endpoint-independent mapping, a known filtering, and a
//! host behind a NAT; without a usable other address the filtering is unknown and the type
//! is neither a cone nor open; open means the mapped address is the local one; never full
//! cone (nor any filtering) when a change request was answered by the server itself;
//! symmetric means behind a NAT with a dependent mapping; test I decides external and
//! UDP-blocked; the port-allocation answer agrees with `port_allocation`; the reasons for
//! unknowns are listed once each.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use p2pipe::nat::{
    classify, Classification, Filtering, Mapping, NatType, Observations, PortSample, TestOutcome,
    Unknown,
};
use p2pipe::nat::{port_allocation, Binding};

const POOL: [&str; 12] = [
    "198.18.1.2:40000",      // local
    "203.0.113.10:3478",     // server A1:P1
    "203.0.113.11:3479",     // other A2:P2
    "203.0.113.10:3479",     // A1:P2
    "203.0.113.11:3478",     // A2:P1
    "198.51.100.1:40000",    // WAN
    "198.51.100.1:40001",    // WAN, another port
    "198.51.100.2:40000",    // another WAN address
    "[2001:db8::2]:40000",   // local v6
    "[2001:db8:1::10]:3478", // server v6
    "[2001:db8:1::11]:3479", // other v6
    "203.0.113.10:3478",     // the server again (weight)
];

#[path = "common/cursor.rs"]
mod cursor;
use cursor::Cursor;

impl Cursor<'_> {
    /// An address: one of the pool below 0xf0, else an arbitrary IPv4 or IPv6 one.
    fn addr(&mut self) -> SocketAddr {
        match self.u8() {
            b @ 0..0xf0 => POOL[usize::from(b) % POOL.len()].parse().unwrap(),
            0xf0..0xf8 => {
                let ip: [u8; 4] = self.bytes(4).try_into().unwrap_or([0; 4]);
                SocketAddr::new(IpAddr::from(ip), self.u16())
            }
            _ => {
                let ip: [u8; 16] = self.bytes(16).try_into().unwrap_or([0; 16]);
                SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), self.u16())
            }
        }
    }

    fn opt_addr(&mut self) -> Option<SocketAddr> {
        (self.u8() & 3 != 0).then(|| self.addr())
    }

    fn probe<T>(&mut self, mut f: impl FnMut(&mut Self) -> T) -> TestOutcome<T> {
        match self.u8() % 3 {
            0 => TestOutcome::NotRun,
            1 => TestOutcome::NoReply,
            _ => TestOutcome::Reply(f(self)),
        }
    }
}

/// Input: local and server (each: a byte, 0 mod 4 for none, then an address), test I
/// (probe byte, mapped, optional other), the four other probes, then port samples as
/// pairs of u16s. Past the end of the input every byte is 0.
fn observations(data: &[u8]) -> Observations {
    let mut c = Cursor(data);
    let local = c.opt_addr();
    let server = c.opt_addr();
    let test1 = c.probe(|c| Binding {
        mapped: c.addr(),
        other: c.opt_addr(),
    });
    let mapping2 = c.probe(Cursor::addr);
    let mapping3 = c.probe(Cursor::addr);
    let filtering2 = c.probe(Cursor::addr);
    let filtering3 = c.probe(Cursor::addr);
    let mut port_samples = Vec::new();
    while !c.is_empty() && port_samples.len() < 16 {
        port_samples.push(PortSample {
            local: c.u16(),
            mapped: c.u16(),
        });
    }
    Observations {
        local,
        server,
        test1,
        mapping2,
        mapping3,
        filtering2,
        filtering3,
        port_samples,
    }
}

fn is_cone(t: Option<NatType>) -> bool {
    matches!(
        t,
        Some(NatType::FullCone | NatType::RestrictedCone | NatType::PortRestrictedCone)
    )
}

fuzz_target!(|data: &[u8]| {
    let obs = observations(data);
    let c = classify(&obs);
    assert_eq!(c, classify(&obs), "deterministic");

    let test1 = match obs.test1 {
        TestOutcome::NotRun => {
            assert_eq!(c, Classification::default());
            return;
        }
        TestOutcome::NoReply => {
            assert_eq!(c.nat_type, Some(NatType::UdpBlocked));
            assert_eq!((c.mapping, c.filtering, c.external), (None, None, None));
            return;
        }
        TestOutcome::Reply(b) => b,
    };
    assert_eq!(c.external, Some(test1.mapped));
    assert_ne!(c.nat_type, Some(NatType::UdpBlocked));
    let behind = obs.behind_nat() == Some(true);
    assert_eq!(behind, obs.local != Some(test1.mapped));

    if is_cone(c.nat_type) {
        assert_eq!(c.mapping, Some(Mapping::EndpointIndependent), "{c:?}");
        assert!(c.filtering.is_some(), "{c:?}");
        assert!(behind, "cone without a NAT: {c:?}");
    }
    if obs.other().is_none() {
        assert_eq!(
            c.filtering, None,
            "filtering without another address: {c:?}"
        );
        assert!(
            !is_cone(c.nat_type) && c.nat_type != Some(NatType::Open),
            "{c:?}"
        );
        assert!(c.unknown.contains(&Unknown::NoOtherAddress));
        if behind {
            assert_eq!(c.mapping, None);
        }
    }
    if c.nat_type == Some(NatType::Open) {
        assert_eq!(obs.local, Some(test1.mapped), "open behind a NAT: {c:?}");
        assert_eq!(c.filtering, Some(Filtering::EndpointIndependent));
    }
    if c.nat_type == Some(NatType::SymmetricUdpFirewall) {
        assert!(!behind && c.filtering.is_some());
    }
    if c.nat_type == Some(NatType::Symmetric) {
        assert!(behind);
        assert!(matches!(
            c.mapping,
            Some(Mapping::AddressDependent | Mapping::AddressAndPortDependent)
        ));
    }
    let from_server =
        |p: &TestOutcome<SocketAddr>| matches!(p, TestOutcome::Reply(a) if Some(*a) == obs.server);
    if from_server(&obs.filtering2) || from_server(&obs.filtering3) {
        assert_ne!(
            c.nat_type,
            Some(NatType::FullCone),
            "change ignored, yet full cone"
        );
        assert_eq!(c.filtering, None, "change ignored, yet filtering known");
    }
    match c.filtering {
        Some(Filtering::EndpointIndependent) => {
            assert_eq!(
                obs.filtering2,
                TestOutcome::Reply(obs.filtering2_source().unwrap())
            );
        }
        Some(Filtering::AddressDependent) => {
            assert_eq!(obs.filtering2, TestOutcome::NoReply);
            assert_eq!(
                obs.filtering3,
                TestOutcome::Reply(obs.filtering3_source().unwrap())
            );
        }
        Some(Filtering::AddressAndPortDependent) => {
            assert_eq!(
                (obs.filtering2, obs.filtering3),
                (TestOutcome::NoReply, TestOutcome::NoReply)
            );
        }
        None => {}
    }
    if behind {
        match c.mapping {
            Some(Mapping::EndpointIndependent) => {
                assert_eq!(obs.mapping2, TestOutcome::Reply(test1.mapped))
            }
            Some(_) => assert!(matches!(
                (obs.mapping2, obs.mapping3),
                (TestOutcome::Reply(x2), TestOutcome::Reply(_)) if x2 != test1.mapped
            )),
            None => {}
        }
        assert_eq!(c.port_allocation, port_allocation(&obs.port_samples));
    } else {
        assert_eq!(c.mapping, Some(Mapping::EndpointIndependent));
        assert!(c.port_allocation.is_some());
    }
    for (i, u) in c.unknown.iter().enumerate() {
        assert!(!c.unknown[i + 1..].contains(u), "{u:?} listed twice");
    }
});
