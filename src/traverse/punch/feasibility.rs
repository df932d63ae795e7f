//! Whether UDP hole punching can work between two NATs, decided from their behaviour
//! before anything is sent: a pure decision table, as [`nat::classify`](crate::nat::classify).
//!
//! A punched path needs one first packet that gets in. Both sides send to each other's
//! candidates at the agreed moment; a side whose mapping is endpoint-independent is
//! reached at the address STUN showed it, and a side whose mapping depends on the
//! destination is reached only where the other's filtering lets an unknown port in
//! (endpoint-independent or address-dependent filtering), or where its next port can be
//! predicted. The side that hears a probe first answers to the source it observed, so
//! one open direction is enough.

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::Error;
use crate::nat::{Filtering, Mapping, NatReport, NatType, PortAllocation};

/// What one side knows of its NAT, as the rendezvous exchanges it. `None` is unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NatSummary {
    /// The RFC 3489 type; only [`NatType::UdpBlocked`] changes the decision beyond
    /// mapping and filtering.
    pub nat_type: Option<NatType>,
    /// The RFC 5780 mapping behaviour.
    pub mapping: Option<Mapping>,
    /// The RFC 5780 filtering behaviour.
    pub filtering: Option<Filtering>,
    /// How the NAT picks external ports.
    pub port_allocation: Option<PortAllocation>,
}

/// Which side of the two a reason is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// This node.
    Local,
    /// The peer.
    Remote,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Local => Side::Remote,
            Side::Remote => Side::Local,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Local => "this side",
            Side::Remote => "the peer",
        })
    }
}

/// How a punch that can work gets its first packet in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Approach {
    /// Both sides map endpoint-independently: each is reached at its STUN-learned address.
    Direct,
    /// One side maps per destination; the other's filtering lets that side's first probe
    /// in from an unknown port, and the answer goes to the source observed.
    Reflexive,
    /// A side that maps per destination allocates ports in a pattern: its next port is
    /// predicted and offered as a candidate.
    Predicted,
    /// Some behaviour is unknown: the punch is tried, for this reason.
    Uncertain(String),
}

/// Why UDP hole punching cannot work between two sides.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// No UDP gets through on this side.
    #[error("udp blocked: {0} has no udp path to the internet")]
    UdpBlocked(Side),
    /// This side maps each destination to an unpredictable port, and the other side's
    /// filtering only lets in ports it has sent to.
    #[error("unpredictable: {0} maps each destination to a random port, and {other} only lets in ports it has sent to", other = .0.other())]
    Unpredictable(Side),
    /// Both sides map each destination to an unpredictable port.
    #[error("unpredictable: both sides map each destination to a random port")]
    BothUnpredictable,
}

impl Refusal {
    /// The reason in two words, for tables: `udp blocked` or `unpredictable`.
    pub fn short(&self) -> &'static str {
        match self {
            Refusal::UdpBlocked(_) => "udp blocked",
            Refusal::Unpredictable(_) | Refusal::BothUnpredictable => "unpredictable",
        }
    }
}

impl NatSummary {
    /// The bytes of the wire form.
    pub const LEN: usize = 8;

    /// The summary of a [`NatReport`] from [`nat::probe`](crate::nat::probe).
    pub fn from_report(report: &NatReport) -> NatSummary {
        NatSummary {
            nat_type: report.nat_type,
            mapping: report.mapping,
            filtering: report.filtering,
            port_allocation: report.port_allocation,
        }
    }

    /// The behaviour a NAT of this RFC 3489 type has, by definition (cone and
    /// firewall kinds preserve ports; a symmetric NAT is taken to allocate at random).
    pub fn of_type(nat_type: NatType) -> NatSummary {
        use Filtering as F;
        use Mapping as M;
        let (m, f) = match nat_type {
            NatType::Open | NatType::FullCone => (M::EndpointIndependent, F::EndpointIndependent),
            NatType::RestrictedCone => (M::EndpointIndependent, F::AddressDependent),
            NatType::PortRestrictedCone | NatType::SymmetricUdpFirewall => {
                (M::EndpointIndependent, F::AddressAndPortDependent)
            }
            NatType::Symmetric => (M::AddressAndPortDependent, F::AddressAndPortDependent),
            NatType::UdpBlocked => {
                return NatSummary {
                    nat_type: Some(nat_type),
                    ..NatSummary::default()
                }
            }
        };
        let port_allocation = match nat_type {
            NatType::Symmetric => PortAllocation::Random,
            _ => PortAllocation::Preserving,
        };
        NatSummary {
            nat_type: Some(nat_type),
            mapping: Some(m),
            filtering: Some(f),
            port_allocation: Some(port_allocation),
        }
    }

    /// Whether the external port of a new mapping can be predicted.
    pub fn predictable(&self) -> bool {
        matches!(
            self.port_allocation,
            Some(PortAllocation::Preserving | PortAllocation::Sequential { .. })
        )
    }

    /// Parses the 8-byte wire form: type, mapping, filtering, allocation (0 is unknown),
    /// then the sequential delta (i32, big-endian, 0 unless sequential).
    pub fn parse(bytes: &[u8]) -> Result<NatSummary, Error> {
        let b: &[u8; Self::LEN] = bytes
            .get(..Self::LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::Malformed("nat summary cut short"))?;
        let delta = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        if b[3] != 2 && delta != 0 {
            return Err(Error::Malformed(
                "a port delta without sequential allocation",
            ));
        }
        Ok(NatSummary {
            nat_type: decode(b[0], &NatType::ALL)?,
            mapping: decode(b[1], &Mapping::ALL)?,
            filtering: decode(b[2], &Filtering::ALL)?,
            port_allocation: match b[3] {
                0 => None,
                1 => Some(PortAllocation::Preserving),
                2 => Some(PortAllocation::Sequential { delta }),
                3 => Some(PortAllocation::Random),
                _ => return Err(Error::Malformed("unknown port allocation")),
            },
        })
    }

    /// Appends the wire form ([`NatSummary::LEN`] bytes).
    pub fn emit(&self, out: &mut BytesMut) {
        out.put_u8(encode(self.nat_type, &NatType::ALL));
        out.put_u8(encode(self.mapping, &Mapping::ALL));
        out.put_u8(encode(self.filtering, &Filtering::ALL));
        let (tag, delta) = match self.port_allocation {
            None => (0, 0),
            Some(PortAllocation::Preserving) => (1, 0),
            Some(PortAllocation::Sequential { delta }) => (2, delta),
            Some(PortAllocation::Random) => (3, 0),
        };
        out.put_u8(tag);
        out.put_i32(delta);
    }
}

/// 0 for unknown, else the 1-based index in `all`.
fn encode<T: PartialEq>(v: Option<T>, all: &[T]) -> u8 {
    v.and_then(|v| all.iter().position(|a| *a == v))
        .map_or(0, |i| i as u8 + 1)
}

fn decode<T: Copy>(b: u8, all: &[T]) -> Result<Option<T>, Error> {
    match b {
        0 => Ok(None),
        n => all
            .get(usize::from(n) - 1)
            .copied()
            .map(Some)
            .ok_or(Error::Malformed("unknown nat behaviour")),
    }
}

/// Whether UDP hole punching can work between `local` and `remote`, and how; or why it
/// cannot. The answer is the same from either side (only the sides in a reason swap).
///
/// | mapping of the two sides | works when | else |
/// |---|---|---|
/// | both endpoint-independent | always ([`Approach::Direct`]) | |
/// | one per destination (symmetric) | the other filters endpoint-independently or by address ([`Approach::Reflexive`]), or the symmetric side's ports are predictable ([`Approach::Predicted`]) | [`Refusal::Unpredictable`] |
/// | both per destination | both sides' ports are predictable ([`Approach::Predicted`]) | [`Refusal::BothUnpredictable`] |
///
/// A side with UDP blocked refuses first ([`Refusal::UdpBlocked`]); an unknown mapping,
/// or an unknown filtering where it matters, is tried ([`Approach::Uncertain`], reason
/// starting with `unknown`).
pub fn udp_feasibility(local: &NatSummary, remote: &NatSummary) -> Result<Approach, Refusal> {
    for (side, s) in [(Side::Local, local), (Side::Remote, remote)] {
        if s.nat_type == Some(NatType::UdpBlocked) {
            return Err(Refusal::UdpBlocked(side));
        }
    }
    let independent = |s: &NatSummary| s.mapping.map(|m| m == Mapping::EndpointIndependent);
    match (independent(local), independent(remote)) {
        (Some(true), Some(true)) => Ok(Approach::Direct),
        (Some(true), Some(false)) => one_symmetric(Side::Remote, remote, local),
        (Some(false), Some(true)) => one_symmetric(Side::Local, local, remote),
        (Some(false), Some(false)) if local.predictable() && remote.predictable() => {
            Ok(Approach::Predicted)
        }
        (Some(false), Some(false)) => Err(Refusal::BothUnpredictable),
        (None, _) => Ok(unknown(Side::Local, "mapping")),
        (_, None) => Ok(unknown(Side::Remote, "mapping")),
    }
}

/// `symmetric` maps per destination, `cone` endpoint-independently.
fn one_symmetric(
    side: Side,
    symmetric: &NatSummary,
    cone: &NatSummary,
) -> Result<Approach, Refusal> {
    match cone.filtering {
        Some(Filtering::EndpointIndependent | Filtering::AddressDependent) => {
            Ok(Approach::Reflexive)
        }
        Some(Filtering::AddressAndPortDependent) if symmetric.predictable() => {
            Ok(Approach::Predicted)
        }
        Some(Filtering::AddressAndPortDependent) => Err(Refusal::Unpredictable(side)),
        None => Ok(unknown(side.other(), "filtering")),
    }
}

fn unknown(side: Side, what: &str) -> Approach {
    Approach::Uncertain(format!("unknown: the {what} of {side} is unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use NatType::*;

    const ALL: [NatType; 7] = NatType::ALL;

    /// The expected outcome for every ordered pair of kinds: `None` works.
    fn expected(a: NatType, b: NatType) -> Option<&'static str> {
        let cone_filter_open = |t| matches!(t, Open | FullCone | RestrictedCone);
        match (a, b) {
            (UdpBlocked, _) | (_, UdpBlocked) => Some("udp blocked"),
            (Symmetric, Symmetric) => Some("unpredictable"),
            (Symmetric, t) | (t, Symmetric) if !cone_filter_open(t) => Some("unpredictable"),
            _ => None,
        }
    }

    #[test]
    fn every_pair_of_kinds_follows_the_table() {
        for a in ALL {
            for b in ALL {
                let got = udp_feasibility(&NatSummary::of_type(a), &NatSummary::of_type(b));
                match (expected(a, b), &got) {
                    (None, Ok(_)) => {}
                    (Some(why), Err(r)) => assert_eq!(r.short(), why, "{a} x {b}"),
                    (want, got) => panic!("{a} x {b}: want {want:?}, got {got:?}"),
                }
            }
        }
    }

    #[test]
    fn the_answer_is_the_same_from_either_side() {
        for a in ALL {
            for b in ALL {
                let ab = udp_feasibility(&NatSummary::of_type(a), &NatSummary::of_type(b));
                let ba = udp_feasibility(&NatSummary::of_type(b), &NatSummary::of_type(a));
                assert_eq!(
                    ab.as_ref().map_err(Refusal::short),
                    ba.as_ref().map_err(Refusal::short),
                    "{a} x {b}"
                );
            }
        }
    }

    #[test]
    fn symmetric_against_full_and_restricted_cone_answers_the_observed_source() {
        for cone in [FullCone, RestrictedCone, Open] {
            let got = udp_feasibility(&NatSummary::of_type(Symmetric), &NatSummary::of_type(cone));
            assert_eq!(got, Ok(Approach::Reflexive), "{cone}");
        }
        let got = udp_feasibility(
            &NatSummary::of_type(FullCone),
            &NatSummary::of_type(PortRestrictedCone),
        );
        assert_eq!(got, Ok(Approach::Direct));
    }

    #[test]
    fn symmetric_against_port_restricted_names_the_unpredictable_side() {
        let got = udp_feasibility(
            &NatSummary::of_type(PortRestrictedCone),
            &NatSummary::of_type(Symmetric),
        );
        let refusal = got.unwrap_err();
        assert_eq!(refusal, Refusal::Unpredictable(Side::Remote));
        assert!(
            refusal
                .to_string()
                .starts_with("unpredictable: the peer maps"),
            "{refusal}"
        );
        let both = udp_feasibility(
            &NatSummary::of_type(Symmetric),
            &NatSummary::of_type(Symmetric),
        );
        assert_eq!(both, Err(Refusal::BothUnpredictable));
        let blocked = udp_feasibility(&NatSummary::of_type(Open), &NatSummary::of_type(UdpBlocked));
        assert_eq!(
            blocked.unwrap_err().to_string(),
            "udp blocked: the peer has no udp path to the internet"
        );
    }

    #[test]
    fn a_predictable_symmetric_side_is_punched_at_its_predicted_port() {
        let mut seq = NatSummary::of_type(Symmetric);
        seq.port_allocation = Some(PortAllocation::Sequential { delta: 1 });
        let prc = NatSummary::of_type(PortRestrictedCone);
        assert_eq!(udp_feasibility(&seq, &prc), Ok(Approach::Predicted));
        assert_eq!(udp_feasibility(&seq, &seq), Ok(Approach::Predicted));
        let random = NatSummary::of_type(Symmetric);
        assert_eq!(
            udp_feasibility(&seq, &random),
            Err(Refusal::BothUnpredictable)
        );
    }

    #[test]
    fn unknown_behaviour_is_tried_with_the_reason_unknown() {
        let unknown = NatSummary::default();
        let got = udp_feasibility(&unknown, &NatSummary::of_type(Symmetric));
        let Ok(Approach::Uncertain(why)) = got else {
            panic!("{got:?}");
        };
        assert!(
            why.starts_with("unknown: the mapping of this side"),
            "{why}"
        );
        let mut cone = NatSummary::of_type(FullCone);
        cone.filtering = None;
        let got = udp_feasibility(&NatSummary::of_type(Symmetric), &cone);
        let Ok(Approach::Uncertain(why)) = got else {
            panic!("{got:?}");
        };
        assert_eq!(why, "unknown: the filtering of the peer is unknown");
        // An unknown filtering does not matter when both map independently.
        assert_eq!(
            udp_feasibility(&cone, &NatSummary::of_type(FullCone)),
            Ok(Approach::Direct)
        );
    }

    #[test]
    fn a_summary_survives_its_wire_form_and_bad_bytes_are_refused() {
        let mut all: Vec<NatSummary> = ALL.iter().map(|t| NatSummary::of_type(*t)).collect();
        all.push(NatSummary::default());
        all.push(NatSummary {
            port_allocation: Some(PortAllocation::Sequential { delta: -2 }),
            ..NatSummary::of_type(Symmetric)
        });
        for s in all {
            let mut out = BytesMut::new();
            s.emit(&mut out);
            assert_eq!(out.len(), NatSummary::LEN);
            assert_eq!(NatSummary::parse(&out).unwrap(), s);
        }
        assert!(NatSummary::parse(&[0; 7]).is_err());
        assert!(NatSummary::parse(&[8, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(NatSummary::parse(&[0, 4, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(NatSummary::parse(&[0, 0, 0, 4, 0, 0, 0, 0]).is_err());
        assert!(
            NatSummary::parse(&[0, 0, 0, 1, 0, 0, 0, 3]).is_err(),
            "one wire form each"
        );
    }
}
