//! The theory the lab checks: whether a peer behind one kind of NAT reaches a port that
//! a router of another kind mapped for its host.

use std::fmt;

use crate::nat::NatType;
use crate::pipe::Proto;

/// Why a mapped port cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// A short reason.
    pub reason: &'static str,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

/// Whether a peer behind `a` reaches, over `proto`, a port mapped on a router of kind
/// `b` (the mapped host connects nowhere: the peer sends first, to the router's external
/// address and the mapped port).
///
/// - The peer's own network must let `proto` out: udp-blocked lets no UDP through.
/// - The mapping's router must let the new inbound flow in: a port mapping adds a
///   forwarding rule, but a firewall that drops every new inbound flow
///   (symmetric-udp-firewall, and udp-blocked for UDP) drops it first.
/// - Every NAT kind, symmetric included, lets an outbound flow out and its answers
///   back, so the peer's kind matters no further.
///
/// # Errors
///
/// A [`Refusal`] with the reason when it cannot work.
pub fn reachable(a: NatType, b: NatType, proto: Proto) -> Result<(), Refusal> {
    let refuse = |reason| Err(Refusal { reason });
    match (a, b, proto) {
        (NatType::UdpBlocked, _, Proto::Udp) => refuse("a's network blocks udp"),
        (_, NatType::UdpBlocked, Proto::Udp) => refuse("b's router drops all udp"),
        (_, NatType::SymmetricUdpFirewall, _) => {
            refuse("b's firewall drops new inbound flows, mapping or not")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_behind_a_cone_or_symmetric_nat_is_reachable_from_any_kind_over_tcp() {
        for a in [
            NatType::Open,
            NatType::FullCone,
            NatType::Symmetric,
            NatType::UdpBlocked,
            NatType::SymmetricUdpFirewall,
        ] {
            assert_eq!(reachable(a, NatType::Symmetric, Proto::Tcp), Ok(()));
            assert_eq!(
                reachable(a, NatType::PortRestrictedCone, Proto::Tcp),
                Ok(())
            );
        }
    }

    #[test]
    fn udp_blocking_and_inbound_firewalls_refuse_with_a_reason() {
        let r = reachable(NatType::UdpBlocked, NatType::FullCone, Proto::Udp);
        assert_eq!(r.unwrap_err().to_string(), "a's network blocks udp");
        assert!(reachable(NatType::Open, NatType::UdpBlocked, Proto::Udp).is_err());
        assert_eq!(
            reachable(NatType::Open, NatType::UdpBlocked, Proto::Tcp),
            Ok(())
        );
        assert!(reachable(NatType::Open, NatType::SymmetricUdpFirewall, Proto::Tcp).is_err());
    }
}
