//! NAT behaviour: what a NIC's NAT does to UDP, learned from STUN servers.
//!
//! - [`classify`] is the sans-IO classifier: RFC 5780's mapping and filtering tests
//!   in ([`Observations`]), the behaviour out ([`Classification`]): the RFC 5780 mapping
//!   and filtering, the RFC 3489 type, and the port-allocation pattern.
//! - [`probe`] runs the tests over UDP against one or more STUN servers and returns a
//!   [`NatReport`].
//!
//! The vocabulary (and the JSON of [`NatReport`]) is the design's: `mapping` and
//! `filtering` are `endpoint-independent`, `address-dependent` or
//! `address-and-port-dependent`; `nat_type` is one of `open`, `full-cone`,
//! `restricted-cone`, `port-restricted-cone`, `symmetric`, `symmetric-udp-firewall`,
//! `udp-blocked`; anything the servers could not tell is `null`, and never a bare
//! `null`: beside each one, `<field>_reason` says why in words (`"mapping": null,
//! "mapping_reason": "203.0.113.10:3478 gave no usable other-address ..."`), see
//! [`Reasons`]. A known field has no `_reason`.

mod classify;
mod probe;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use classify::{
    classify, port_allocation, Binding, Classification, Observations, PortSample, TestOutcome,
    Unknown, MIN_PORT_SAMPLES,
};
pub use probe::{probe, resolve_servers, routes, ProbeConfig};

/// Errors of the NAT layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A STUN operation failed.
    #[error(transparent)]
    Stun(#[from] crate::stun::Error),
    /// No STUN server of this address family was given or resolved.
    #[error("no {} stun server to ask", .0.to_string().to_lowercase())]
    NoServer(crate::Af),
    /// No local address of this family to send from.
    #[error("no local {af} address to send from: {why}", af = .0.to_string().to_lowercase(), why = .1)]
    NoLocalAddress(crate::Af, String),
}

/// RFC 5780 mapping behaviour: what decides the external address a NAT gives a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// One external address for every destination.
    EndpointIndependent,
    /// A new external address per destination address.
    AddressDependent,
    /// A new external address per destination address and port.
    AddressAndPortDependent,
}

/// RFC 5780 filtering behaviour: who may send to a mapped address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Anyone.
    EndpointIndependent,
    /// Addresses the socket has sent to.
    AddressDependent,
    /// Addresses and ports the socket has sent to.
    AddressAndPortDependent,
}

/// The RFC 3489 NAT type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatType {
    /// No NAT and no filtering: the host's own address is reachable.
    Open,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestrictedCone,
    /// Mapping depends on the destination.
    Symmetric,
    /// No NAT, but a firewall filters inbound UDP.
    SymmetricUdpFirewall,
    /// No UDP gets through at all.
    UdpBlocked,
}

impl NatType {
    /// Every type, in a stable order (the wire codes of peer records and punch
    /// summaries are 1-based indices into it).
    pub const ALL: [NatType; 7] = [
        NatType::Open,
        NatType::FullCone,
        NatType::RestrictedCone,
        NatType::PortRestrictedCone,
        NatType::Symmetric,
        NatType::SymmetricUdpFirewall,
        NatType::UdpBlocked,
    ];
}

impl Mapping {
    /// Every behaviour, in a stable order (as [`NatType::ALL`]).
    pub const ALL: [Mapping; 3] = [
        Mapping::EndpointIndependent,
        Mapping::AddressDependent,
        Mapping::AddressAndPortDependent,
    ];
}

impl Filtering {
    /// Every behaviour, in a stable order (as [`NatType::ALL`]).
    pub const ALL: [Filtering; 3] = [
        Filtering::EndpointIndependent,
        Filtering::AddressDependent,
        Filtering::AddressAndPortDependent,
    ];
}

impl fmt::Display for NatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatType::Open => "open",
            NatType::FullCone => "full-cone",
            NatType::RestrictedCone => "restricted-cone",
            NatType::PortRestrictedCone => "port-restricted-cone",
            NatType::Symmetric => "symmetric",
            NatType::SymmetricUdpFirewall => "symmetric-udp-firewall",
            NatType::UdpBlocked => "udp-blocked",
        })
    }
}

/// `Display` for [`Mapping`] and [`Filtering`], which share RFC 5780's three names.
macro_rules! rfc5780_names {
    ($($t:ident),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    $t::EndpointIndependent => "endpoint-independent",
                    $t::AddressDependent => "address-dependent",
                    $t::AddressAndPortDependent => "address-and-port-dependent",
                })
            }
        }
    )*};
}

rfc5780_names!(Mapping, Filtering);

/// How a NAT picks external ports, for port prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "pattern", rename_all = "kebab-case")]
pub enum PortAllocation {
    /// The external port equals the local port.
    Preserving,
    /// Each new mapping's port is the previous one's plus `delta`.
    Sequential {
        /// The step between consecutive mappings.
        delta: i32,
    },
    /// No pattern.
    Random,
}

impl fmt::Display for PortAllocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortAllocation::Preserving => f.write_str("preserving"),
            PortAllocation::Sequential { delta } => write!(f, "sequential (delta {delta:+})"),
            PortAllocation::Random => f.write_str("random"),
        }
    }
}

/// Why each unknown part of an answer is unknown, in words: set for exactly the fields
/// that are `None`. In a [`NatReport`]'s JSON each sits beside its field as
/// `<field>_reason` (`nat_type_reason`, `mapping_reason`, `filtering_reason`,
/// `external_reason`, `port_allocation_reason`), and is left out when the field is known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reasons {
    /// Why the RFC 3489 type is unknown.
    #[serde(rename = "nat_type_reason", skip_serializing_if = "Option::is_none")]
    pub nat_type: Option<String>,
    /// Why the mapping behaviour is unknown.
    #[serde(rename = "mapping_reason", skip_serializing_if = "Option::is_none")]
    pub mapping: Option<String>,
    /// Why the filtering behaviour is unknown.
    #[serde(rename = "filtering_reason", skip_serializing_if = "Option::is_none")]
    pub filtering: Option<String>,
    /// Why the external address is unknown.
    #[serde(rename = "external_reason", skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
    /// Why the port-allocation pattern is unknown.
    #[serde(
        rename = "port_allocation_reason",
        skip_serializing_if = "Option::is_none"
    )]
    pub port_allocation: Option<String>,
}

/// The NAT behaviour of one address family of one NIC.
///
/// Every `None` among `nat_type`, `mapping`, `filtering`, `external` and
/// `port_allocation` has its reason in [`reasons`](NatReport::reasons); `local` and
/// `server` are always set by [`probe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatReport {
    /// The RFC 3489 type, or null when unknown.
    pub nat_type: Option<NatType>,
    /// The RFC 5780 mapping behaviour, or null.
    pub mapping: Option<Mapping>,
    /// The RFC 5780 filtering behaviour, or null.
    pub filtering: Option<Filtering>,
    /// The external address (test I's mapped address), or null.
    pub external: Option<SocketAddr>,
    /// The port-allocation pattern, or null.
    pub port_allocation: Option<PortAllocation>,
    /// The local address the tests were sent from.
    pub local: Option<SocketAddr>,
    /// The STUN server whose answers were used.
    pub server: Option<SocketAddr>,
    /// Why parts of the answer are unknown, as codes.
    pub unknown: Vec<Unknown>,
    /// Why parts of the answer are unknown, in words, one per unknown field; in JSON,
    /// flattened into `<field>_reason` entries.
    #[serde(flatten)]
    pub reasons: Reasons,
    /// STUN transactions started.
    pub transactions: u32,
    /// Datagrams sent, retransmissions included.
    pub requests: u32,
    /// Replies ignored: wrong source, wrong transaction, malformed, or late.
    pub ignored: u32,
    /// How long the tests took.
    #[serde(with = "millis")]
    pub elapsed: Duration,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl<'de> Deserialize<'de> for Unknown {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "no-other-address" => Ok(Unknown::NoOtherAddress),
            "change-ignored" => Ok(Unknown::ChangeIgnored),
            "no-reply" => Ok(Unknown::NoReply),
            other => Err(serde::de::Error::unknown_variant(
                other,
                &["no-other-address", "change-ignored", "no-reply"],
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_the_design_vocabulary() {
        let r = NatReport {
            nat_type: Some(NatType::PortRestrictedCone),
            mapping: Some(Mapping::EndpointIndependent),
            filtering: Some(Filtering::AddressAndPortDependent),
            external: Some("198.51.100.1:40000".parse().unwrap()),
            port_allocation: Some(PortAllocation::Sequential { delta: 2 }),
            local: None,
            server: None,
            unknown: vec![Unknown::ChangeIgnored],
            reasons: Reasons::default(),
            transactions: 7,
            requests: 18,
            ignored: 0,
            elapsed: Duration::from_millis(1050),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["nat_type"], "port-restricted-cone");
        assert_eq!(v["mapping"], "endpoint-independent");
        assert_eq!(v["filtering"], "address-and-port-dependent");
        assert_eq!(v["external"], "198.51.100.1:40000");
        assert_eq!(v["port_allocation"]["pattern"], "sequential");
        assert_eq!(v["port_allocation"]["delta"], 2);
        assert_eq!(v["unknown"][0], "change-ignored");
        assert_eq!(v["elapsed"], 1050);
        assert!(v["local"].is_null());
        assert!(
            v.as_object()
                .unwrap()
                .keys()
                .all(|k| !k.ends_with("_reason")),
            "known fields have no reason: {v}"
        );
        let back: NatReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        for (t, s) in [
            (NatType::Open, "open"),
            (NatType::FullCone, "full-cone"),
            (NatType::RestrictedCone, "restricted-cone"),
            (NatType::SymmetricUdpFirewall, "symmetric-udp-firewall"),
            (NatType::UdpBlocked, "udp-blocked"),
            (NatType::Symmetric, "symmetric"),
        ] {
            assert_eq!(serde_json::to_value(t).unwrap(), s);
            assert_eq!(t.to_string(), s);
        }
    }

    #[test]
    fn mapping_and_filtering_print_as_their_json_names() {
        let pairs = [
            (Mapping::EndpointIndependent, Filtering::EndpointIndependent),
            (Mapping::AddressDependent, Filtering::AddressDependent),
            (
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
            ),
        ];
        for (m, f) in pairs {
            assert_eq!(serde_json::to_value(m).unwrap(), m.to_string());
            assert_eq!(serde_json::to_value(f).unwrap(), f.to_string());
            assert_eq!(m.to_string(), f.to_string());
        }
    }

    #[test]
    fn an_unknown_field_has_its_reason_beside_it_in_json() {
        let r = NatReport {
            nat_type: None,
            mapping: Some(Mapping::EndpointIndependent),
            filtering: None,
            external: Some("198.51.100.1:40000".parse().unwrap()),
            port_allocation: Some(PortAllocation::Preserving),
            local: None,
            server: None,
            unknown: vec![Unknown::ChangeIgnored],
            reasons: Reasons {
                nat_type: Some("the filtering is unknown: x".into()),
                filtering: Some("x".into()),
                ..Reasons::default()
            },
            transactions: 3,
            requests: 3,
            ignored: 0,
            elapsed: Duration::from_millis(10),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["filtering"].is_null());
        assert_eq!(v["filtering_reason"], "x");
        assert!(v["nat_type"].is_null());
        assert_eq!(v["nat_type_reason"], "the filtering is unknown: x");
        let o = v.as_object().unwrap();
        for known in ["mapping", "external", "port_allocation"] {
            assert!(!o.contains_key(&format!("{known}_reason")), "{v}");
        }
        let back: NatReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
