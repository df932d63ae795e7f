//! Which of two connections between the same pair of nodes survives, sans-IO.
//!
//! Each id has at most one connection. When a second one to an id that is already
//! connected finishes its handshake, [`admit`] decides from the two ids and the two
//! directions alone, so both nodes reach the same answer with no coordination: a second
//! connection opened by the same side is a duplicate, and when both sides opened one at
//! once, both keep the one the smaller id opened. The node carries the answer out.

use super::Direction;

/// What the node does with a connection that finished its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the node must carry the decision out"]
pub(crate) enum Admit {
    /// No other connection to the peer: take this one.
    Take,
    /// Take this one and close the one already in the table (it ends `Replaced`).
    Replace,
    /// Refuse this one as a duplicate; the one in the table stays.
    Duplicate,
}

/// Decides for a new connection to `peer`, opened in `new` direction, when the node
/// `local` has `existing` (the direction of its connection to `peer`, if any).
pub(crate) fn admit(local: &str, peer: &str, new: Direction, existing: Option<Direction>) -> Admit {
    let Some(old) = existing else {
        return Admit::Take;
    };
    let opener = |d: Direction| match d {
        Direction::Outbound => local,
        Direction::Inbound => peer,
    };
    let keep = local.min(peer);
    // Same opener twice: the second is a duplicate. Two openers (both nodes connected
    // at once): keep the one the smaller id opened.
    if opener(old) == opener(new) || opener(new) != keep {
        Admit::Duplicate
    } else {
        Admit::Replace
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Inbound, Outbound};

    #[test]
    fn a_first_connection_is_taken_either_way() {
        assert_eq!(admit("a", "b", Outbound, None), Admit::Take);
        assert_eq!(admit("b", "a", Inbound, None), Admit::Take);
    }

    #[test]
    fn a_second_connection_from_the_same_opener_is_a_duplicate() {
        for (local, peer) in [("a", "b"), ("b", "a")] {
            assert_eq!(
                admit(local, peer, Outbound, Some(Outbound)),
                Admit::Duplicate
            );
            assert_eq!(admit(local, peer, Inbound, Some(Inbound)), Admit::Duplicate);
        }
    }

    #[test]
    fn of_two_simultaneous_connections_the_one_the_smaller_id_opened_wins() {
        // On "a": its own outbound replaces b's inbound, and b's inbound never
        // replaces its outbound.
        assert_eq!(admit("a", "b", Outbound, Some(Inbound)), Admit::Replace);
        assert_eq!(admit("a", "b", Inbound, Some(Outbound)), Admit::Duplicate);
        // On "b": a's connection (inbound here) wins, b's own loses.
        assert_eq!(admit("b", "a", Inbound, Some(Outbound)), Admit::Replace);
        assert_eq!(admit("b", "a", Outbound, Some(Inbound)), Admit::Duplicate);
    }

    #[test]
    fn both_nodes_keep_the_same_connection_whichever_finishes_first() {
        // Connection "x" is opened by `lo`, "y" by `hi`; each node sees both, in either
        // order. What each node keeps, named by its opener, must agree.
        let kept = |me: &str, other: &str, first_opener: &str| {
            let dir = |opener: &str| if opener == me { Outbound } else { Inbound };
            let second_opener = if first_opener == me { other } else { me };
            match admit(me, other, dir(second_opener), Some(dir(first_opener))) {
                Admit::Replace => second_opener.to_owned(),
                Admit::Duplicate => first_opener.to_owned(),
                Admit::Take => unreachable!("a connection is already there"),
            }
        };
        for (lo, hi) in [("alice", "bob"), ("node-1", "node-10"), ("B", "a")] {
            for first_on_lo in [lo, hi] {
                for first_on_hi in [lo, hi] {
                    let on_lo = kept(lo, hi, first_on_lo);
                    let on_hi = kept(hi, lo, first_on_hi);
                    assert_eq!(on_lo, on_hi, "{lo} and {hi} disagree");
                    assert_eq!(on_lo, lo.min(hi));
                }
            }
        }
    }
}
