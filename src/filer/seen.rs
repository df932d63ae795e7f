//! Queries seen recently, sans-IO: so that a node floods each query once, however many
//! paths bring it back.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a query is remembered.
pub const SEEN_TTL: Duration = Duration::from_secs(60);

/// The most queries remembered; the oldest are forgotten first.
pub const MAX_SEEN: usize = 10_000;

/// Recently seen queries, by key: for plain `QUER`, the return peer and the search key
/// (the original protocol has no query id); for `QHST`, its query id.
#[derive(Debug, Default)]
pub struct Seen {
    at: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
}

impl Seen {
    /// An empty memory.
    pub fn new() -> Self {
        Seen::default()
    }

    /// Records `key` at `now`; true if it was not seen within [`SEEN_TTL`] (the query
    /// should be handled), false if it was (drop it).
    pub fn first_time(&mut self, key: &str, now: Instant) -> bool {
        while let Some((k, t)) = self.order.front() {
            let expired = now.saturating_duration_since(*t) >= SEEN_TTL;
            if !expired && self.order.len() < MAX_SEEN {
                break;
            }
            if self.at.get(k) == Some(t) {
                self.at.remove(k);
            }
            self.order.pop_front();
        }
        if self.at.contains_key(key) {
            return false;
        }
        self.at.insert(key.to_owned(), now);
        self.order.push_back((key.to_owned(), now));
        true
    }

    #[cfg(test)]
    /// How many queries are remembered.
    pub fn len(&self) -> usize {
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_handled_once_until_it_is_forgotten() {
        let mut s = Seen::new();
        let t0 = Instant::now();
        assert!(s.first_time("a", t0));
        assert!(!s.first_time("a", t0 + Duration::from_secs(1)));
        assert!(s.first_time("b", t0));
        assert!(s.first_time("a", t0 + SEEN_TTL));
    }

    #[test]
    fn memory_is_bounded() {
        let mut s = Seen::new();
        let t0 = Instant::now();
        for i in 0..(MAX_SEEN + 50) {
            s.first_time(&i.to_string(), t0);
        }
        assert!(s.len() <= MAX_SEEN);
        // The newest are still remembered.
        assert!(!s.first_time(&(MAX_SEEN + 49).to_string(), t0));
    }
}
