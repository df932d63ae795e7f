//! What a connect tried, and why it went the way it did.
//!
//! Every [`connect`](super::Node::connect) returns a [`Report`], whether it succeeded or
//! not: each strategy, what became of it and when. A failed connect's error carries the
//! report, and its message says why in words a user can act on.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::identity::NodeId;
use crate::Proto;

/// A way to reach a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// Connect to one of the peer's addresses.
    Direct,
    /// Ask the peer, over signalling, to connect to this node.
    Reverse,
    /// Hole punching, agreed over signalling.
    Punch,
    /// A port mapped on a router (UPnP IGD, NAT-PMP or PCP): connect to the peer's
    /// mapping, or ask the peer to connect to this node's.
    Upnp,
    /// Through a TURN relay.
    Relay,
}

impl Strategy {
    /// Every strategy, in the order a connect starts them.
    pub const ALL: [Strategy; 5] = [
        Strategy::Direct,
        Strategy::Reverse,
        Strategy::Upnp,
        Strategy::Punch,
        Strategy::Relay,
    ];

    /// The name: `direct`, `reverse`, `punch`, `upnp` or `relay`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Direct => "direct",
            Strategy::Reverse => "reverse",
            Strategy::Punch => "punch",
            Strategy::Upnp => "upnp",
            Strategy::Relay => "relay",
        }
    }

    /// The byte that names it in a path handshake.
    pub(crate) fn code(self) -> u8 {
        match self {
            Strategy::Direct => 1,
            Strategy::Reverse => 2,
            Strategy::Punch => 3,
            Strategy::Upnp => 4,
            Strategy::Relay => 5,
        }
    }

    /// The strategy a path handshake names, if any.
    pub(crate) fn from_code(code: u8) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.code() == code)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Strategy, String> {
        Strategy::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!("unknown strategy {s:?}: use direct, reverse, punch, upnp or relay")
            })
    }
}

/// What became of one strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It gave the path.
    Connected,
    /// It was tried and failed, for this reason.
    Failed(String),
    /// It was not tried, for this reason (it cannot work between these two nodes, or
    /// it is not configured).
    Skipped(String),
    /// Another strategy won first, and this one was stopped.
    Cancelled,
}

impl Outcome {
    /// Whether this outcome explains a failure (failed or skipped).
    fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Failed(r) | Outcome::Skipped(r) => Some(r),
            Outcome::Connected | Outcome::Cancelled => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Connected => f.write_str("connected"),
            Outcome::Failed(r) => write!(f, "failed: {r}"),
            Outcome::Skipped(r) => write!(f, "skipped: {r}"),
            Outcome::Cancelled => f.write_str("cancelled: another path won"),
        }
    }
}

/// One strategy of a connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The strategy.
    pub strategy: Strategy,
    /// What became of it.
    pub outcome: Outcome,
    /// When it ended, from the start of the connect.
    pub elapsed: Duration,
}

/// What a connect tried, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The peer.
    pub peer: NodeId,
    /// TCP or UDP.
    pub proto: Proto,
    /// Every strategy, in the order they ended.
    pub tried: Vec<Attempt>,
    /// The strategy that gave the path, if one did.
    pub winner: Option<Strategy>,
    /// The path's local and remote addresses, if one was made.
    pub path: Option<(SocketAddr, SocketAddr)>,
    /// The time the connect took.
    pub elapsed: Duration,
}

impl Report {
    /// A report with nothing tried yet.
    pub(crate) fn new(peer: NodeId, proto: Proto) -> Report {
        Report {
            peer,
            proto,
            tried: Vec::new(),
            winner: None,
            path: None,
            elapsed: Duration::ZERO,
        }
    }

    /// Records what became of `strategy`.
    pub(crate) fn record(&mut self, strategy: Strategy, outcome: Outcome, elapsed: Duration) {
        if outcome == Outcome::Connected {
            self.winner = Some(strategy);
        }
        self.tried.push(Attempt {
            strategy,
            outcome,
            elapsed,
        });
    }

    /// The attempt of `strategy`, if it was recorded.
    pub fn attempt(&self, strategy: Strategy) -> Option<&Attempt> {
        self.tried.iter().find(|a| a.strategy == strategy)
    }

    /// Why the connect failed, one clause per strategy, with what to change where it
    /// is clear; empty for a connect that succeeded.
    pub fn why(&self) -> String {
        if self.winner.is_some() {
            return String::new();
        }
        let mut clauses: Vec<String> = self
            .tried
            .iter()
            .filter_map(|a| a.outcome.reason().map(|r| format!("{}: {r}", a.strategy)))
            .collect();
        if clauses.is_empty() {
            clauses.push("no strategy was allowed".into());
        }
        clauses.join("; ")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.winner, self.path) {
            (Some(w), Some((local, remote))) => write!(
                f,
                "connected to {} over {} by {w} from {local} to {remote} in {} ms",
                self.peer,
                self.proto,
                self.elapsed.as_millis()
            )?,
            _ => write!(
                f,
                "cannot reach {} over {}: {}",
                self.peer,
                self.proto,
                self.why()
            )?,
        }
        for a in &self.tried {
            write!(
                f,
                "\n  {:<7} {:>6} ms  {}",
                a.strategy.as_str(),
                a.elapsed.as_millis(),
                a.outcome
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn strategies_parse_from_their_names_and_codes_and_refuse_others() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
            assert_eq!(Strategy::from_code(s.code()), Some(s));
        }
        let err = "stun".parse::<Strategy>().unwrap_err();
        assert!(
            err.contains("direct, reverse, punch, upnp or relay"),
            "{err}"
        );
        assert_eq!(Strategy::from_code(0), None);
    }

    #[test]
    fn a_failed_report_says_why_per_strategy_and_a_won_one_names_the_path() {
        let peer = Identity::from_seed([5; 32]).node_id();
        let mut r = Report::new(peer, Proto::Udp);
        r.record(
            Strategy::Punch,
            Outcome::Skipped("the peer's NAT is symmetric with random ports".into()),
            Duration::from_millis(3),
        );
        r.record(
            Strategy::Relay,
            Outcome::Skipped("no relay is configured".into()),
            Duration::ZERO,
        );
        r.record(
            Strategy::Direct,
            Outcome::Failed("timed out".into()),
            Duration::from_secs(2),
        );
        assert_eq!(
            r.why(),
            "punch: the peer's NAT is symmetric with random ports; relay: no relay is \
             configured; direct: timed out"
        );
        let text = r.to_string();
        assert!(
            text.starts_with(&format!("cannot reach {peer} over udp: punch:")),
            "{text}"
        );
        assert!(
            text.contains("relay        0 ms  skipped: no relay is configured"),
            "{text}"
        );

        r.record(
            Strategy::Reverse,
            Outcome::Connected,
            Duration::from_millis(40),
        );
        r.path = Some((
            "198.18.1.2:4000".parse().unwrap(),
            "198.51.100.2:5000".parse().unwrap(),
        ));
        r.elapsed = Duration::from_millis(41);
        assert_eq!(r.winner, Some(Strategy::Reverse));
        assert_eq!(r.why(), "");
        assert!(r.to_string().starts_with(&format!(
            "connected to {peer} over udp by reverse from 198.18.1.2:4000 to 198.51.100.2:5000 in 41 ms"
        )));
    }
}
