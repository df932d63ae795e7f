//! When relaying works, from the two sides' NAT types alone: the theory the lab's
//! every-pair table is checked against (docs/traversal.md).
//!
//! A relay needs only that each side reach the server; the relayed addresses are the
//! server's own, so the sides' NATs never meet. Outbound TCP to the server passes every
//! kind of NAT; outbound UDP passes every kind but one that blocks UDP.

use super::Transport;
use crate::nat::NatType;

/// Why two sides cannot relay to each other over a transport to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A side's NAT blocks UDP, so it cannot reach the server over UDP.
    #[error("side {side} blocks udp")]
    UdpBlocked {
        /// "a" or "b".
        side: &'static str,
    },
}

/// The transport a side behind `nat` reaches the server with: UDP, unless its NAT
/// blocks UDP, then TCP.
pub fn transport_for(nat: NatType) -> Transport {
    match nat {
        NatType::UdpBlocked => Transport::Tcp,
        _ => Transport::Udp,
    }
}

/// Whether sides behind `a` and `b` relay to each other, both reaching the server over
/// `transport`.
///
/// # Errors
///
/// [`Refusal::UdpBlocked`] for UDP when either side blocks UDP.
pub fn relay_feasibility(a: NatType, b: NatType, transport: Transport) -> Result<(), Refusal> {
    if transport == Transport::Tcp {
        return Ok(());
    }
    for (side, nat) in [("a", a), ("b", b)] {
        if transport_for(nat) == Transport::Tcp {
            return Err(Refusal::UdpBlocked { side });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaying_over_udp_fails_only_where_a_side_blocks_udp_and_tcp_always_works() {
        let all = NatType::ALL;
        for a in all {
            for b in all {
                assert_eq!(relay_feasibility(a, b, Transport::Tcp), Ok(()));
                let blocked = a == NatType::UdpBlocked || b == NatType::UdpBlocked;
                assert_eq!(relay_feasibility(a, b, Transport::Udp).is_err(), blocked);
                // Each side on its own best transport: a tcp side counts as tcp.
                let both_udp =
                    transport_for(a) == Transport::Udp && transport_for(b) == Transport::Udp;
                let t = if both_udp {
                    Transport::Udp
                } else {
                    Transport::Tcp
                };
                assert_eq!(relay_feasibility(a, b, t), Ok(()));
            }
        }
        assert_eq!(
            relay_feasibility(NatType::Symmetric, NatType::UdpBlocked, Transport::Udp),
            Err(Refusal::UdpBlocked { side: "b" })
        );
    }
}
