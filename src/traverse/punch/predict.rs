//! Port prediction: from how a NAT allocates ports (the nat layer's [`PortAllocation`])
//! and the mapped addresses STUN over TCP saw for the punching port, the addresses the
//! NAT will use for that port's next connections. A pure function, no I/O.
//!
//! - preserving: the mapped address itself (the NAT keeps the local port);
//! - sequential by `delta`: the mapped addresses, then the next [`PREDICTED`] ports
//!   after the last one, `delta` apart (a NAT that maps per destination gives the
//!   punching connection the next port);
//! - random or unknown: [`Unpredictable`], with the reason. Never a blind spray of ports.

use std::net::SocketAddr;

use crate::nat::PortAllocation;

/// How many ports past the last mapped one a sequential NAT's prediction holds.
pub const PREDICTED: usize = 3;

/// Why no port can be predicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unpredictable {
    /// The NAT picks its ports at random.
    #[error("unpredictable: the nat behind {mapped} allocates ports at random")]
    Random {
        /// The last mapped address seen.
        mapped: SocketAddr,
    },
    /// The port-allocation pattern is not known.
    #[error("unpredictable: the port allocation of the nat behind {mapped} is unknown")]
    Unknown {
        /// The last mapped address seen.
        mapped: SocketAddr,
    },
    /// No mapped address was learned.
    #[error("unpredictable: no mapped address was learned")]
    NoMapping,
}

/// The candidate addresses of a punching port whose NAT allocates ports by `allocation`
/// (`None`: unknown) and mapped it to `mapped` (in the order seen, the last the newest),
/// best first, without duplicates.
///
/// # Errors
///
/// [`Unpredictable`] when `mapped` is empty, or the allocation is random or unknown.
pub fn candidates(
    allocation: Option<PortAllocation>,
    mapped: &[SocketAddr],
) -> Result<Vec<SocketAddr>, Unpredictable> {
    let Some(&last) = mapped.last() else {
        return Err(Unpredictable::NoMapping);
    };
    let delta = match allocation {
        Some(PortAllocation::Preserving) => None,
        Some(PortAllocation::Sequential { delta }) => Some(delta),
        Some(PortAllocation::Random) => return Err(Unpredictable::Random { mapped: last }),
        None => return Err(Unpredictable::Unknown { mapped: last }),
    };
    let mut out: Vec<SocketAddr> = Vec::with_capacity(mapped.len() + PREDICTED);
    let mut push = |a: SocketAddr| {
        if !out.contains(&a) {
            out.push(a);
        }
    };
    mapped.iter().copied().for_each(&mut push);
    if let Some(delta) = delta {
        (1..=PREDICTED as i32)
            .map_while(|k| {
                let port = i32::from(last.port()).checked_add(delta.checked_mul(k)?)?;
                u16::try_from(port).ok().filter(|p| *p != 0)
            })
            .for_each(|port| push(SocketAddr::new(last.ip(), port)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> SocketAddr {
        SocketAddr::new([198, 51, 100, 1].into(), port)
    }

    #[test]
    fn a_preserving_nat_is_predicted_at_its_mapped_port() {
        assert_eq!(
            candidates(Some(PortAllocation::Preserving), &[at(40000)]),
            Ok(vec![at(40000)])
        );
    }

    #[test]
    fn a_sequential_nat_is_predicted_at_the_next_ports_by_its_delta() {
        let got = candidates(
            Some(PortAllocation::Sequential { delta: 2 }),
            &[at(40000), at(40002)],
        );
        assert_eq!(
            got,
            Ok(vec![at(40000), at(40002), at(40004), at(40006), at(40008)])
        );
        let down = candidates(Some(PortAllocation::Sequential { delta: -1 }), &[at(5000)]);
        assert_eq!(down, Ok(vec![at(5000), at(4999), at(4998), at(4997)]));
    }

    #[test]
    fn a_sequential_prediction_stops_at_the_end_of_the_port_range() {
        let up = candidates(Some(PortAllocation::Sequential { delta: 3 }), &[at(65530)]);
        assert_eq!(up, Ok(vec![at(65530), at(65533)]));
        let down = candidates(Some(PortAllocation::Sequential { delta: -2 }), &[at(3)]);
        assert_eq!(down, Ok(vec![at(3), at(1)]));
    }

    #[test]
    fn repeated_mapped_addresses_appear_once() {
        let got = candidates(Some(PortAllocation::Preserving), &[at(7), at(7), at(8)]);
        assert_eq!(got, Ok(vec![at(7), at(8)]));
    }

    #[test]
    fn a_random_nat_is_unpredictable_and_says_so() {
        let err = candidates(Some(PortAllocation::Random), &[at(1), at(40000)]).unwrap_err();
        assert_eq!(err, Unpredictable::Random { mapped: at(40000) });
        assert_eq!(
            err.to_string(),
            "unpredictable: the nat behind 198.51.100.1:40000 allocates ports at random"
        );
    }

    #[test]
    fn an_unknown_allocation_or_no_mapping_is_unpredictable() {
        assert_eq!(
            candidates(None, &[at(40000)]),
            Err(Unpredictable::Unknown { mapped: at(40000) })
        );
        assert_eq!(
            candidates(Some(PortAllocation::Preserving), &[]),
            Err(Unpredictable::NoMapping)
        );
    }
}
