//! The answers of one search as they come in, and when to stop waiting for more: the
//! same rule for a searcher that takes results at its return address (`QUER`) and for a
//! node that searches on a searcher's behalf (`SRCH`). No clock of its own: `now` goes in.

use std::time::{Duration, Instant};

use super::core::Hit;

/// The distinct answers of one search for a key, and the time to stop waiting.
///
/// A search stops on its own, since the protocol has no end-of-results message: once
/// `max` answers have come, `quiet` after the last answer, or `wait` after the start,
/// whichever is first. An answer whose name does not contain the key, or one that came
/// before, is not taken.
#[derive(Debug, Clone)]
pub struct Answers {
    key: String,
    hits: Vec<Hit>,
    deadline: Instant,
    quiet: Duration,
    until: Instant,
    max: usize,
}

impl Answers {
    /// A search for `key` that starts at `now`; `max` 0 means no limit.
    pub fn new(key: &str, now: Instant, wait: Duration, quiet: Duration, max: usize) -> Answers {
        let deadline = now + wait;
        Answers {
            key: key.to_owned(),
            hits: Vec::new(),
            deadline,
            quiet,
            until: deadline,
            max: if max == 0 { usize::MAX } else { max },
        }
    }

    /// Takes an answer that came at `now`; returns whether it is new and names a file
    /// that contains the key (and so counts).
    pub fn offer(&mut self, hit: Hit, now: Instant) -> bool {
        if self.is_done(now) || !hit.0.contains(&self.key) || self.hits.contains(&hit) {
            return false;
        }
        self.hits.push(hit);
        self.until = self.deadline.min(now + self.quiet);
        true
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// When to stop waiting for a further answer.
    pub fn until(&self) -> Instant {
        self.until
    }

    /// Whether the search is over at `now`: enough answers, or the waiting is over.
    pub fn is_done(&self, now: Instant) -> bool {
        self.hits.len() >= self.max || now >= self.until
    }

    /// The answers so far, in the order they came.
    pub fn hits(&self) -> &[Hit] {
        &self.hits
    }

    /// The answers, in the order they came.
    pub fn into_hits(self) -> Vec<Hit> {
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filer::PeerId;

    fn hit(name: &str) -> Hit {
        (name.to_owned(), PeerId::parse("198.51.100.7:7000").unwrap())
    }

    #[test]
    fn an_answer_counts_once_and_only_when_it_contains_the_key() {
        let t = Instant::now();
        let mut a = Answers::new(
            "song",
            t,
            Duration::from_secs(3),
            Duration::from_millis(300),
            0,
        );
        assert!(a.offer(hit("song.mp3"), t));
        assert!(!a.offer(hit("song.mp3"), t), "the same answer again");
        assert!(!a.offer(hit("other.txt"), t), "no key in the name");
        assert!(!a.offer(hit("Song.mp3"), t), "the key is case-sensitive");
        assert!(a.offer(hit("a-song.ogg"), t));
        assert_eq!(a.into_hits(), vec![hit("song.mp3"), hit("a-song.ogg")]);
    }

    #[test]
    fn the_wait_ends_at_the_deadline_before_any_answer_and_a_quiet_time_after_one() {
        let t = Instant::now();
        let (wait, quiet) = (Duration::from_secs(3), Duration::from_millis(300));
        let mut a = Answers::new("k", t, wait, quiet, 0);
        assert_eq!(a.until(), t + wait);
        assert!(!a.is_done(t + Duration::from_secs(2)));
        let at = t + Duration::from_secs(1);
        assert!(a.offer(hit("k1"), at));
        assert_eq!(a.until(), at + quiet);
        assert!(a.is_done(at + quiet));
        assert!(!a.offer(hit("k2"), at + quiet), "an answer after the end");
        // The quiet time never runs past the deadline.
        let mut late = Answers::new("k", t, wait, quiet, 0);
        let near_end = t + wait - Duration::from_millis(100);
        assert!(late.offer(hit("k1"), near_end));
        assert_eq!(late.until(), t + wait);
    }

    #[test]
    fn the_search_is_over_once_max_answers_have_come() {
        let t = Instant::now();
        let mut a = Answers::new("k", t, Duration::from_secs(3), Duration::from_secs(1), 2);
        assert!(a.offer(hit("k1"), t));
        assert!(!a.is_done(t));
        assert!(a.offer(hit("k2"), t));
        assert!(a.is_done(t));
        assert!(!a.offer(hit("k3"), t));
        assert_eq!(a.hits().len(), 2);
    }
}
