//! Reading coturn's `turnutils_natdiscovery -m -f` output.
//!
//! The tool prints, per response, lines such as
//! `0: : IPv4. UDP reflexive addr: 198.51.100.1:44939`, a `No NAT!` line when
//! the reflexive address equals the local one (only when given `-L`), one
//! verdict per test (`NAT with Endpoint Independent Mapping!`, `... Address
//! Dependent Filtering!`, ...), and `STUN receive timeout..` for each request
//! that got no answer (it waits about 3 s for each).

use std::fmt;
use std::net::SocketAddr;

/// An RFC 5780 mapping or filtering behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// Endpoint-independent.
    EndpointIndependent,
    /// Address-dependent.
    AddressDependent,
    /// Address-and-port-dependent.
    AddressAndPortDependent,
}

impl Behaviour {
    /// The design's vocabulary: `endpoint-independent`, ...
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address-and-port-dependent",
        }
    }
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one natdiscovery run reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    /// The mapping verdict, `None` if the tool printed none.
    pub mapping: Option<Behaviour>,
    /// The filtering verdict, `None` if the tool printed none.
    pub filtering: Option<Behaviour>,
    /// True if some response showed the local address unchanged (`No NAT!`).
    pub no_nat: bool,
    /// Every reflexive (XOR-MAPPED) address, in order.
    pub reflexive: Vec<SocketAddr>,
    /// How many requests timed out.
    pub timeouts: usize,
    /// True if the tool saw MAPPED-ADDRESS and XOR-MAPPED-ADDRESS differ.
    pub alg: bool,
}

/// Parses natdiscovery's output (stdout and stderr together).
pub fn parse_natdiscovery(text: &str) -> Discovery {
    let mut d = Discovery::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.split("UDP reflexive addr:").nth(1) {
            if let Ok(a) = rest.trim().parse() {
                d.reflexive.push(a);
            }
        } else if line.starts_with("No NAT!") {
            d.no_nat = true;
        } else if line.starts_with("STUN receive timeout") {
            d.timeouts += 1;
        } else if line.contains("ALG detected") {
            d.alg = true;
        } else if let Some(v) = line
            .strip_prefix("NAT with ")
            .and_then(|r| r.strip_suffix('!'))
        {
            let (which, slot) = if let Some(b) = v.strip_suffix(" Mapping") {
                (b, &mut d.mapping)
            } else if let Some(b) = v.strip_suffix(" Filtering") {
                (b, &mut d.filtering)
            } else {
                continue;
            };
            *slot = match which {
                "Endpoint Independent" => Some(Behaviour::EndpointIndependent),
                "Address Dependent" => Some(Behaviour::AddressDependent),
                "Address and Port Dependent" => Some(Behaviour::AddressAndPortDependent),
                _ => None,
            };
        }
    }
    d
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    /// Captured from the lab behind a `Symmetric` router.
    const SYMMETRIC: &str = "
-= Mapping Behavior Discovery =-

========================================
RFC 5780 response 1
No ALG: Mapped == XOR-Mapped
0: : IPv4. Response origin: : 203.0.113.10:3478
0: : IPv4. Response origin: : 203.0.113.10:3478
0: : IPv4. Other addr: : 203.0.113.11:3479
0: : IPv4. UDP reflexive addr: 198.51.100.1:14951
0: : IPv4. Local addr: : 198.18.1.2:51512

========================================
RFC 5780 response 2
No ALG: Mapped == XOR-Mapped
0: : IPv4. Response origin: : 203.0.113.11:3478
0: : IPv4. Other addr: : 203.0.113.11:3479
0: : IPv4. UDP reflexive addr: 198.51.100.1:31588
0: : IPv4. Local addr: : 198.18.1.2:51512

========================================
RFC 5780 response 3
No ALG: Mapped == XOR-Mapped
0: : IPv4. Response origin: : 203.0.113.11:3479
0: : IPv4. Other addr: : 203.0.113.11:3479
0: : IPv4. UDP reflexive addr: 198.51.100.1:21905
0: : IPv4. Local addr: : 198.18.1.2:51512

========================================
NAT with Address and Port Dependent Mapping!
========================================

-= Filtering Behavior Discovery =-

========================================
RFC 5780 response 4
No ALG: Mapped == XOR-Mapped
0: : IPv4. Response origin: : 203.0.113.10:3478
0: : IPv4. Other addr: : 203.0.113.11:3479
0: : IPv4. UDP reflexive addr: 198.51.100.1:23468
0: : IPv4. Local addr: : 198.18.1.2:45000
STUN receive timeout..
STUN receive timeout..

========================================
NAT with Address and Port Dependent Filtering!
========================================
";

    /// Captured behind an `Open` router (with `-L 198.18.1.2`).
    const OPEN: &str = "
-= Mapping Behavior Discovery =-
RFC 5780 response 1
No ALG: Mapped == XOR-Mapped
0: : IPv4. UDP reflexive addr: 198.18.1.2:51512
0: : IPv4. Local addr: : 198.18.1.2:51512
No NAT! (Endpoint Independent Mapping)
RFC 5780 response 2
0: : IPv4. UDP reflexive addr: 198.18.1.2:51512
NAT with Endpoint Independent Mapping!
-= Filtering Behavior Discovery =-
RFC 5780 response 3
No NAT! (Endpoint Independent Mapping)
0: : IPv4. UDP reflexive addr: 198.18.1.2:54093
RFC 5780 response 4
3: : IPv4. UDP reflexive addr: 198.18.1.2:54093
NAT with Endpoint Independent Filtering!
";

    /// Captured behind a `UdpBlocked` router.
    const BLOCKED: &str = "
-= Mapping Behavior Discovery =-
STUN receive timeout..

-= Filtering Behavior Discovery =-
STUN receive timeout..
";

    #[test]
    fn parses_symmetric_run() {
        let d = parse_natdiscovery(SYMMETRIC);
        assert_eq!(d.mapping, Some(Behaviour::AddressAndPortDependent));
        assert_eq!(d.filtering, Some(Behaviour::AddressAndPortDependent));
        assert!(!d.no_nat);
        assert!(!d.alg);
        assert_eq!(d.timeouts, 2);
        let ports: Vec<u16> = d.reflexive.iter().map(|a| a.port()).collect();
        assert_eq!(ports, [14951, 31588, 21905, 23468]);
        assert!(d
            .reflexive
            .iter()
            .all(|a| a.ip().to_string() == "198.51.100.1"));
    }

    #[test]
    fn parses_open_run() {
        let d = parse_natdiscovery(OPEN);
        assert!(d.no_nat);
        assert_eq!(d.mapping, Some(Behaviour::EndpointIndependent));
        assert_eq!(d.filtering, Some(Behaviour::EndpointIndependent));
        assert_eq!(d.reflexive.len(), 4);
        assert_eq!(d.timeouts, 0);
    }

    #[test]
    fn parses_blocked_run() {
        let d = parse_natdiscovery(BLOCKED);
        assert_eq!(
            d,
            Discovery {
                timeouts: 2,
                ..Discovery::default()
            }
        );
    }

    #[test]
    fn address_dependent_and_alg() {
        let d = parse_natdiscovery(
            "-= ALG detected! Mapped and XOR-Mapped differ! =-\n\
             NAT with Address Dependent Mapping!\nNAT with Address Dependent Filtering!\n",
        );
        assert!(d.alg);
        assert_eq!(d.mapping, Some(Behaviour::AddressDependent));
        assert_eq!(d.filtering, Some(Behaviour::AddressDependent));
    }
}
