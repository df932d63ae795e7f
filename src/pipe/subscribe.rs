//! Subscriptions: regular expressions over message bytes, each with its own
//! bounded queue.
//!
//! All of a pipe's patterns live in one multi-pattern regex (the meta engine
//! that `regex::bytes::RegexSet` is built on, configured exactly as
//! `RegexSet` configures it). One pass over a message finds every pattern
//! that matches it. The engine is used directly, rather than through
//! `RegexSet::matches`, so that the set of matches is a buffer kept between
//! messages instead of one allocated for every message. Identical patterns
//! share one slot in the set, and the set is rebuilt lazily, once, after any
//! number of subscribes and unsubscribes.
//!
//! The pass itself runs on the set's lazy DFA, which yields the ids of the
//! patterns that match and nothing else: with 1,000 patterns, reading a
//! 1,000-slot match table per message would cost more than the search. When
//! the lazy DFA gives up (a Unicode word boundary next to a non-ASCII byte,
//! or a cache that thrashes), the meta engine answers instead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use regex_automata::hybrid::dfa::{Cache, OverlappingState, DFA};
use regex_automata::meta;
use regex_automata::nfa::thompson;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};

use super::queue::{Overflow, Queue};
use super::Message;

struct Entry {
    id: u64,
    pattern: Arc<str>,
    peer: Option<SocketAddr>,
    queue: Arc<Queue<Message>>,
}

struct Compiled {
    /// The fast path: the set as a lazy DFA, with its cache.
    fast: Option<(DFA, Cache)>,
    /// The fallback, and its match table.
    set: meta::Regex,
    matches: PatternSet,
    /// Patterns found in the current message, and a mark per pattern.
    hits: Vec<usize>,
    seen: Vec<bool>,
    /// For each pattern in the set, the entries (indices) that use it.
    users: Vec<Vec<usize>>,
}

impl Compiled {
    /// Fills `hits` with the patterns that match `hay`.
    fn find(&mut self, hay: &[u8]) {
        self.hits.clear();
        let input = Input::new(hay);
        if let Some((dfa, cache)) = &mut self.fast {
            let mut state = OverlappingState::start();
            let mut complete = true;
            loop {
                match dfa.try_search_overlapping_fwd(cache, &input, &mut state) {
                    Ok(()) => match state.get_match() {
                        Some(m) => {
                            let p = m.pattern().as_usize();
                            if !self.seen[p] {
                                self.seen[p] = true;
                                self.hits.push(p);
                            }
                        }
                        None => break,
                    },
                    Err(_) => {
                        complete = false;
                        break;
                    }
                }
            }
            for &p in &self.hits {
                self.seen[p] = false;
            }
            if complete {
                return;
            }
            self.hits.clear();
        }
        self.matches.clear();
        self.set
            .which_overlapping_matches(&input, &mut self.matches);
        self.hits.extend(self.matches.iter().map(|p| p.as_usize()));
    }
}

#[derive(Default)]
struct Table {
    entries: Vec<Entry>,
    compiled: Option<Compiled>,
    next_id: u64,
}

/// The subscriptions of one pipe.
#[derive(Default)]
pub(crate) struct Subscriptions {
    table: Mutex<Table>,
    /// Number of live subscriptions, read without the lock on the hot path.
    count: AtomicUsize,
}

/// The set's lazy DFA, configured as the meta engine configures its own.
fn build_fast(patterns: &[&str]) -> Option<(DFA, Cache)> {
    let dfa = DFA::builder()
        .configure(
            DFA::config()
                .match_kind(MatchKind::All)
                .unicode_word_boundary(true)
                .cache_capacity(2 * (1 << 20))
                .minimum_cache_clear_count(Some(3))
                .minimum_bytes_per_state(Some(10)),
        )
        .thompson(
            thompson::Config::new()
                .nfa_size_limit(Some(10 * (1 << 20)))
                .utf8(false)
                .which_captures(thompson::WhichCaptures::None),
        )
        .syntax(syntax::Config::new().utf8(false))
        .build_many(patterns)
        .ok()?;
    let cache = dfa.create_cache();
    Some((dfa, cache))
}

fn build(patterns: &[&str]) -> Result<meta::Regex, Box<meta::BuildError>> {
    // The configuration regex::bytes::RegexSet uses.
    let metac = meta::Config::new()
        .nfa_size_limit(Some(10 * (1 << 20)))
        .hybrid_cache_capacity(2 * (1 << 20))
        .match_kind(MatchKind::All)
        .utf8_empty(false)
        .which_captures(regex_automata::nfa::thompson::WhichCaptures::None);
    meta::Builder::new()
        .configure(metac)
        .syntax(syntax::Config::new().utf8(false))
        .build_many(patterns)
        .map_err(Box::new)
}

impl Table {
    fn lock(m: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn compile(&mut self) {
        if self.compiled.is_none() {
            let mut index: HashMap<&str, usize> = HashMap::new();
            let mut patterns: Vec<&str> = Vec::new();
            let mut users: Vec<Vec<usize>> = Vec::new();
            for (i, e) in self.entries.iter().enumerate() {
                let slot = *index.entry(&e.pattern).or_insert_with(|| {
                    patterns.push(&e.pattern);
                    users.push(Vec::new());
                    patterns.len() - 1
                });
                users[slot].push(i);
            }
            // Every pattern was compiled on its own when it was subscribed, and
            // a set of valid patterns only fails past the size limit; in that
            // case fall back to an empty set and say so.
            let set = build(&patterns).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "subscription set too large; matching nothing");
                users.clear();
                build(&[]).expect("empty set builds")
            });
            let fast = if users.is_empty() {
                None
            } else {
                build_fast(&patterns)
            };
            let n = set.pattern_len();
            self.compiled = Some(Compiled {
                fast,
                matches: PatternSet::new(n),
                hits: Vec::with_capacity(n.min(64)),
                seen: vec![false; n],
                set,
                users,
            });
        }
    }
}

impl Subscriptions {
    /// Adds a subscription. The pattern has been validated by the caller.
    pub(crate) fn add(
        &self,
        pattern: &str,
        peer: Option<SocketAddr>,
        capacity: usize,
        overflow: Overflow,
    ) -> (u64, Arc<Queue<Message>>) {
        let queue = Arc::new(Queue::new(capacity, overflow));
        let mut t = Table::lock(&self.table);
        t.next_id += 1;
        let id = t.next_id;
        t.entries.push(Entry {
            id,
            pattern: Arc::from(pattern),
            peer,
            queue: queue.clone(),
        });
        t.compiled = None;
        self.count.store(t.entries.len(), Ordering::Release);
        (id, queue)
    }

    /// Removes a subscription and closes its queue.
    pub(crate) fn remove(&self, id: u64) {
        let mut t = Table::lock(&self.table);
        if let Some(i) = t.entries.iter().position(|e| e.id == id) {
            let e = t.entries.swap_remove(i);
            e.queue.close();
            t.compiled = None;
        }
        self.count.store(t.entries.len(), Ordering::Release);
    }

    /// Closes every subscription queue (the pipe ended).
    pub(crate) fn close_all(&self) {
        let t = Table::lock(&self.table);
        for e in &t.entries {
            e.queue.close();
        }
    }

    /// Number of live subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Delivers `msg` to every subscription whose pattern and peer filter
    /// match. Returns whether any did. Never waits.
    pub(crate) fn dispatch(&self, msg: &Message) -> bool {
        if self.len() == 0 {
            return false;
        }
        let mut t = Table::lock(&self.table);
        t.compile();
        let Table {
            entries, compiled, ..
        } = &mut *t;
        let c = compiled.as_mut().expect("compiled above");
        c.find(&msg.data);
        let mut delivered = false;
        for &pid in &c.hits {
            for &i in &c.users[pid] {
                let e = &entries[i];
                if e.peer.is_none_or(|p| p == msg.peer) {
                    e.queue.try_push(msg.clone());
                    delivered = true;
                }
            }
        }
        delivered
    }
}

/// Checks one pattern on its own, for a precise error at subscribe time.
pub(crate) fn validate(pattern: &str) -> Result<(), regex::Error> {
    regex::bytes::RegexBuilder::new(pattern)
        .size_limit(10 * (1 << 20))
        .build()
        .map(|_| ())
}

/// A handle on the subscription set for the fuzz targets in `fuzz/` (feature `fuzzing`).
/// Not part of the API.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use bytes::Bytes;

    use super::{validate, Subscriptions};
    use crate::pipe::queue::{Overflow, Queue};
    use crate::pipe::{Message, Proto};

    /// Subscriptions without a pipe: subscribe, unsubscribe, dispatch.
    #[derive(Default)]
    pub struct SubscriptionSet {
        subs: Subscriptions,
        live: Vec<Option<(u64, Arc<Queue<Message>>)>>,
    }

    impl SubscriptionSet {
        /// An empty set.
        pub fn new() -> SubscriptionSet {
            SubscriptionSet::default()
        }

        /// Validates `pattern` and subscribes with it, as `Pipe::subscribe_with` does.
        /// Returns the subscription's index (indices are never reused).
        pub fn subscribe(
            &mut self,
            pattern: &str,
            peer: Option<SocketAddr>,
        ) -> Result<usize, regex::Error> {
            validate(pattern)?;
            let (id, queue) = self.subs.add(pattern, peer, 4, Overflow::DropNewest);
            self.live.push(Some((id, queue)));
            Ok(self.live.len() - 1)
        }

        /// Drops the subscription at `index`, if it is live.
        pub fn unsubscribe(&mut self, index: usize) {
            if let Some((id, _)) = self.live.get_mut(index).and_then(Option::take) {
                self.subs.remove(id);
            }
        }

        /// Dispatches a message from `peer`; returns what `dispatch` said, and for every
        /// index whether that subscription received the message (`false` for dropped ones).
        /// The queues are drained afterwards.
        pub fn dispatch(&mut self, data: &[u8], peer: SocketAddr) -> (bool, Vec<bool>) {
            let msg = Message {
                data: Bytes::copy_from_slice(data),
                peer,
                local: peer,
                proto: Proto::Udp,
            };
            let any = self.subs.dispatch(&msg);
            let got = self
                .live
                .iter()
                .map(|s| {
                    s.as_ref().is_some_and(|(_, q)| {
                        let mut n = 0;
                        while q.try_pop().is_ok() {
                            n += 1;
                        }
                        n > 0
                    })
                })
                .collect();
            (any, got)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipe::Proto;
    use bytes::Bytes;

    fn msg(data: &'static [u8], port: u16) -> Message {
        Message {
            data: Bytes::from_static(data),
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
            local: SocketAddr::from(([127, 0, 0, 1], 1)),
            proto: Proto::Udp,
        }
    }

    #[test]
    fn fan_out_to_every_match_sharing_bytes() {
        let s = Subscriptions::default();
        let (_, a) = s.add("^GET", None, 8, Overflow::DropNewest);
        let (_, b) = s.add("GET|PUT", None, 8, Overflow::DropNewest);
        let (_, c) = s.add("^PUT", None, 8, Overflow::DropNewest);
        assert!(s.dispatch(&msg(b"GET /", 1)));
        let (ma, mb) = (a.try_pop().unwrap(), b.try_pop().unwrap());
        assert_eq!(
            ma.data.as_ptr(),
            mb.data.as_ptr(),
            "bytes are shared, not copied"
        );
        assert!(c.try_pop().is_err());
        assert!(!s.dispatch(&msg(b"DELETE", 1)));
    }

    #[test]
    fn peer_filter_and_identical_patterns() {
        let s = Subscriptions::default();
        let (_, any) = s.add("x", None, 8, Overflow::DropNewest);
        let (_, only2) = s.add(
            "x",
            Some(SocketAddr::from(([127, 0, 0, 1], 2))),
            8,
            Overflow::DropNewest,
        );
        s.dispatch(&msg(b"x", 1));
        s.dispatch(&msg(b"x", 2));
        assert_eq!(any.len(), 2);
        assert_eq!(only2.len(), 1);
        assert_eq!(only2.try_pop().unwrap().peer.port(), 2);
    }

    #[test]
    fn remove_rebuilds_and_closes() {
        let s = Subscriptions::default();
        let (id, q) = s.add("a", None, 8, Overflow::DropNewest);
        let (_, q2) = s.add("b", None, 8, Overflow::DropNewest);
        s.remove(id);
        assert!(q.is_closed());
        assert!(!s.dispatch(&msg(b"a", 1)));
        assert!(s.dispatch(&msg(b"b", 1)));
        assert_eq!(q2.len(), 1);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn overflow_is_counted() {
        let s = Subscriptions::default();
        let (_, q) = s.add("", None, 2, Overflow::DropOldest);
        for _ in 0..5 {
            s.dispatch(&msg(b"m", 1));
        }
        assert_eq!(q.len(), 2);
        assert_eq!(q.dropped(), 3);
    }

    #[test]
    fn unicode_word_boundary_over_non_ascii_falls_back_and_still_matches() {
        let s = Subscriptions::default();
        let (_, q) = s.add(r"\bcaf\w\b", None, 8, Overflow::DropNewest);
        let (_, other) = s.add(r"^never", None, 8, Overflow::DropNewest);
        // 'é' is two bytes: the lazy DFA quits on it, the meta engine answers.
        let m = Message {
            data: Bytes::from_static("un café noir".as_bytes()),
            ..msg(b"", 1)
        };
        assert!(s.dispatch(&m));
        assert_eq!(q.len(), 1);
        assert_eq!(other.len(), 0);
        assert!(
            !s.dispatch(&msg(b"cafes", 1)),
            "no word boundary after 'cafe'"
        );
    }

    #[test]
    fn many_patterns_each_get_their_own_message() {
        let s = Subscriptions::default();
        let qs: Vec<_> = (0..1000)
            .map(|i| {
                s.add(&format!(r"^topic-{i}\b"), None, 4, Overflow::DropNewest)
                    .1
            })
            .collect();
        for i in [0usize, 7, 500, 999] {
            let data = Bytes::from(format!("topic-{i} payload"));
            assert!(s.dispatch(&Message {
                data,
                ..msg(b"", 1)
            }));
        }
        for (i, q) in qs.iter().enumerate() {
            let want = usize::from([0, 7, 500, 999].contains(&i));
            assert_eq!(q.len(), want, "pattern {i}");
        }
    }

    #[test]
    fn validate_reports_bad_patterns() {
        assert!(validate("(unclosed").is_err());
        assert!(validate(r"^\x00\xff").is_ok());
    }
}
