//! Whether a TCP punch can work between two sides, from their NAT behaviour alone: a
//! pure decision table, like `nat::classify`.
//!
//! | local \ remote | accepts (open) | predictable, filtered | unpredictable, filtered |
//! |---|---|---|---|
//! | accepts (open) | connect to the peer | connect to the peer | the peer connects |
//! | predictable, filtered | connect to the peer | simultaneous open | cannot: unpredictable |
//! | unpredictable, filtered | connect to the peer | cannot: unpredictable | cannot: unpredictable |
//!
//! A side *accepts* when unsolicited inbound connections reach it at a predictable
//! address (no NAT and no firewall): the other side connects out to it, from whatever
//! port its NAT picks. A side is *predictable* when it is not translated, or its NAT
//! allocates ports by a pattern ([`predict`](super::super::predict)). Two filtered
//! sides need a simultaneous open, which needs both addresses in advance: a side whose
//! NAT picks ports at random (or by an unknown pattern) cannot be reached through a
//! filter, and is refused as unpredictable before anything is sent.

use std::fmt;

use crate::nat::PortAllocation;

/// What a side's NAT does to TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpNatSummary {
    /// How its address is translated.
    pub mapping: TcpMapping,
    /// Whether unsolicited inbound connections reach it.
    pub inbound: Inbound,
}

/// How a side's TCP address is translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpMapping {
    /// Not at all: STUN over TCP sees the host's own address.
    Direct,
    /// By a NAT allocating ports by this pattern (`None`: unknown).
    Translated(Option<PortAllocation>),
}

/// Whether unsolicited inbound connections reach a side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Inbound {
    /// They do: no firewall, no NAT filter.
    Open,
    /// Only connections the side opened itself (and replies) pass.
    Filtered,
}

impl TcpNatSummary {
    /// Whether the ports of its next connections can be told in advance.
    pub fn predictable(&self) -> bool {
        match self.mapping {
            TcpMapping::Direct => true,
            TcpMapping::Translated(a) => matches!(
                a,
                Some(PortAllocation::Preserving | PortAllocation::Sequential { .. })
            ),
        }
    }

    /// Whether a peer can simply connect to it.
    pub fn accepts(&self) -> bool {
        self.inbound == Inbound::Open && self.predictable()
    }
}

/// How a feasible TCP punch gets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpWay {
    /// The remote side accepts: this side connects to it.
    ConnectToPeer,
    /// This side accepts: the remote side connects to it.
    PeerConnects,
    /// Both are filtered but predictable: both connect at once.
    SimultaneousOpen,
}

/// Which side makes a punch infeasible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// This side.
    Local,
    /// The other side.
    Remote,
    /// Both.
    Both,
}

/// Why a TCP punch cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TcpRefusal {
    /// Neither side accepts inbound connections, and the ports of `side` cannot be
    /// predicted.
    #[error("unpredictable: {side} nat allocates tcp ports without a pattern, and neither side accepts inbound connections")]
    Unpredictable {
        /// The unpredictable side.
        side: Side,
    },
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Local => "the local",
            Side::Remote => "the remote",
            Side::Both => "each side's",
        })
    }
}

/// How a TCP punch between `local` and `remote` gets through, or why it cannot.
///
/// # Errors
///
/// [`TcpRefusal::Unpredictable`] when neither side accepts and a side is unpredictable.
pub fn tcp_feasibility(
    local: &TcpNatSummary,
    remote: &TcpNatSummary,
) -> Result<TcpWay, TcpRefusal> {
    match (local.predictable(), remote.predictable()) {
        _ if remote.accepts() => Ok(TcpWay::ConnectToPeer),
        _ if local.accepts() => Ok(TcpWay::PeerConnects),
        (true, true) => Ok(TcpWay::SimultaneousOpen),
        (false, true) => Err(TcpRefusal::Unpredictable { side: Side::Local }),
        (true, false) => Err(TcpRefusal::Unpredictable { side: Side::Remote }),
        (false, false) => Err(TcpRefusal::Unpredictable { side: Side::Both }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: TcpNatSummary = TcpNatSummary {
        mapping: TcpMapping::Direct,
        inbound: Inbound::Open,
    };
    const FIREWALL: TcpNatSummary = TcpNatSummary {
        mapping: TcpMapping::Direct,
        inbound: Inbound::Filtered,
    };
    const fn nat(a: Option<PortAllocation>) -> TcpNatSummary {
        TcpNatSummary {
            mapping: TcpMapping::Translated(a),
            inbound: Inbound::Filtered,
        }
    }
    const PRESERVING: TcpNatSummary = nat(Some(PortAllocation::Preserving));
    const SEQUENTIAL: TcpNatSummary = nat(Some(PortAllocation::Sequential { delta: 1 }));
    const RANDOM: TcpNatSummary = nat(Some(PortAllocation::Random));
    const UNKNOWN: TcpNatSummary = nat(None);

    #[test]
    fn an_open_side_is_connected_to_from_anything() {
        for other in [OPEN, FIREWALL, PRESERVING, SEQUENTIAL, RANDOM, UNKNOWN] {
            assert_eq!(tcp_feasibility(&other, &OPEN), Ok(TcpWay::ConnectToPeer));
            let way = if other == OPEN {
                TcpWay::ConnectToPeer
            } else {
                TcpWay::PeerConnects
            };
            assert_eq!(tcp_feasibility(&OPEN, &other), Ok(way), "{other:?}");
        }
    }

    #[test]
    fn two_predictable_filtered_sides_open_simultaneously() {
        let predictable = [FIREWALL, PRESERVING, SEQUENTIAL];
        for a in predictable {
            for b in predictable {
                assert_eq!(tcp_feasibility(&a, &b), Ok(TcpWay::SimultaneousOpen));
            }
        }
    }

    #[test]
    fn an_unpredictable_side_behind_a_filter_is_refused_naming_the_side() {
        for filtered in [FIREWALL, PRESERVING, SEQUENTIAL] {
            for random in [RANDOM, UNKNOWN] {
                assert_eq!(
                    tcp_feasibility(&random, &filtered),
                    Err(TcpRefusal::Unpredictable { side: Side::Local })
                );
                assert_eq!(
                    tcp_feasibility(&filtered, &random),
                    Err(TcpRefusal::Unpredictable { side: Side::Remote })
                );
            }
        }
        let both = tcp_feasibility(&RANDOM, &UNKNOWN).unwrap_err();
        assert_eq!(both, TcpRefusal::Unpredictable { side: Side::Both });
        assert!(both
            .to_string()
            .starts_with("unpredictable: each side's nat"));
    }

    #[test]
    fn a_translated_side_with_open_inbound_accepts_only_when_predictable() {
        let forwarded = TcpNatSummary {
            inbound: Inbound::Open,
            ..PRESERVING
        };
        assert_eq!(
            tcp_feasibility(&RANDOM, &forwarded),
            Ok(TcpWay::ConnectToPeer)
        );
        let open_random = TcpNatSummary {
            inbound: Inbound::Open,
            ..RANDOM
        };
        assert!(!open_random.accepts());
        assert_eq!(
            tcp_feasibility(&open_random, &RANDOM),
            Err(TcpRefusal::Unpredictable { side: Side::Both })
        );
    }
}
