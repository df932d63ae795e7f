//! When to start each connect attempt of a TCP punch, sans-IO: candidates, the start
//! moment and the measured round trip in; [`Action`]s out.
//!
//! The first attempt starts at the plan's start; the next ones follow, one candidate at a
//! time, spaced by the round trip (clamped to [`MIN_SPACING`]..=[`MAX_SPACING`]). A
//! candidate has at most one attempt in flight (the local port and the candidate make one
//! TCP connection). An attempt that fails (reset, refused, unreachable) ends, and that
//! candidate is tried again no sooner than the spacing doubled per failure, up to
//! [`MAX_RETRY`]; a candidate whose connection turned out to be the wrong host is not
//! tried again. At the deadline the schedule gives up.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The most candidates one punch tries.
pub const MAX_CANDIDATES: usize = 16;
/// The least time between two attempts, whatever the round trip.
pub const MIN_SPACING: Duration = Duration::from_millis(10);
/// The most time between two attempts, whatever the round trip.
pub const MAX_SPACING: Duration = Duration::from_secs(1);
/// The longest wait before a failed candidate is tried again.
pub const MAX_RETRY: Duration = Duration::from_secs(1);

/// What the driver does next.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start a connect attempt to this candidate from the punching port.
    Connect(SocketAddr),
    /// Nothing to start before this moment (an attempt's result may come sooner).
    Wait(Instant),
    /// The deadline has passed.
    GiveUp,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempted {
    /// The connection is established (its hello is still to come).
    Connected,
    /// It failed; the candidate may be tried again.
    Failed(io::ErrorKind),
    /// The connection reached a host that is not the peer: never again.
    Rejected(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle { not_before: Instant },
    InFlight,
    Connected,
    Rejected,
}

#[derive(Debug, Clone)]
struct Slot {
    to: SocketAddr,
    state: State,
    failures: u32,
    last: Option<Attempted>,
}

/// The attempt schedule of one punch.
#[derive(Debug, Clone)]
pub struct Schedule {
    slots: Vec<Slot>,
    spacing: Duration,
    next_at: Instant,
    cursor: usize,
    deadline: Instant,
    inbound: Inbound,
}

/// The inbound connections a punch refused, and the last reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Inbound {
    refused: u32,
    last: Option<Attempted>,
}

impl Schedule {
    /// A schedule over `candidates` (duplicates dropped, at most [`MAX_CANDIDATES`]
    /// kept) starting at `start`, spaced by `rtt`, giving up at `deadline`.
    pub fn new(
        candidates: &[SocketAddr],
        start: Instant,
        rtt: Duration,
        deadline: Instant,
    ) -> Self {
        let mut slots: Vec<Slot> = Vec::with_capacity(candidates.len().min(MAX_CANDIDATES));
        for &to in candidates {
            if slots.len() < MAX_CANDIDATES && !slots.iter().any(|s| s.to == to) {
                slots.push(Slot {
                    to,
                    state: State::Idle { not_before: start },
                    failures: 0,
                    last: None,
                });
            }
        }
        Schedule {
            slots,
            spacing: rtt.clamp(MIN_SPACING, MAX_SPACING),
            next_at: start,
            cursor: 0,
            deadline,
            inbound: Inbound::default(),
        }
    }

    /// The time between attempts.
    pub fn spacing(&self) -> Duration {
        self.spacing
    }

    /// What to do at `now`: the next attempt when one is due, else when to ask again.
    pub fn next_attempt(&mut self, now: Instant) -> Action {
        if now >= self.deadline {
            return Action::GiveUp;
        }
        let n = self.slots.len();
        let due = (0..n).map(|k| (self.cursor + k) % n).find(
            |&i| matches!(self.slots[i].state, State::Idle { not_before } if not_before <= now),
        );
        match due {
            Some(i) if now >= self.next_at => {
                self.slots[i].state = State::InFlight;
                self.cursor = (i + 1) % n;
                self.next_at = now + self.spacing;
                Action::Connect(self.slots[i].to)
            }
            _ => {
                let earliest = (self.slots.iter())
                    .filter_map(|s| match s.state {
                        State::Idle { not_before } => Some(not_before),
                        _ => None,
                    })
                    .min()
                    .unwrap_or(self.deadline);
                Action::Wait(earliest.max(self.next_at).min(self.deadline))
            }
        }
    }

    /// Takes how the attempt to `to` ended at `now`. Results for unknown candidates are
    /// ignored.
    pub fn on_result(&mut self, to: SocketAddr, result: Attempted, now: Instant) {
        let spacing = self.spacing;
        let Some(slot) = self.slots.iter_mut().find(|s| s.to == to) else {
            return;
        };
        slot.last = Some(result);
        slot.state = match result {
            Attempted::Connected => State::Connected,
            Attempted::Rejected(_) => State::Rejected,
            Attempted::Failed(_) => {
                slot.failures = slot.failures.saturating_add(1);
                let backoff = spacing.saturating_mul(1 << slot.failures.min(8));
                self.next_at = self.next_at.max(now + spacing);
                State::Idle {
                    not_before: now + backoff.min(MAX_RETRY),
                }
            }
        };
    }

    /// Takes how an inbound connection (accepted, from any address) ended, when it was
    /// not the peer's.
    pub fn on_inbound_refused(&mut self, result: Attempted) {
        self.inbound.refused = self.inbound.refused.saturating_add(1);
        self.inbound.last = Some(result);
    }

    /// Every candidate and how its last attempt ended, and the inbound connections
    /// refused, for an error message.
    pub fn tried(&self) -> Tried {
        Tried {
            candidates: (self.slots.iter())
                .map(|s| (s.to, s.last, s.state == State::InFlight))
                .collect(),
            inbound: self.inbound,
        }
    }
}

/// The candidates of a punch and how each last attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    candidates: Vec<(SocketAddr, Option<Attempted>, bool)>,
    inbound: Inbound,
}

impl Tried {
    /// The candidates, in the plan's order.
    pub fn candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.candidates.iter().map(|(a, _, _)| *a)
    }
}

fn ended(f: &mut fmt::Formatter<'_>, last: &Attempted) -> fmt::Result {
    match last {
        Attempted::Failed(kind) => write!(f, "{}", kind.to_string().to_lowercase()),
        Attempted::Rejected(why) => write!(f, "wrong host: {why}"),
        Attempted::Connected => f.write_str("connected, no hello"),
    }
}

impl fmt::Display for Tried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.candidates.is_empty() {
            f.write_str("no candidates")?;
        }
        for (i, (to, last, in_flight)) in self.candidates.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{to} (")?;
            match (last, in_flight) {
                (_, true) => f.write_str("no answer")?,
                (None, false) => f.write_str("not tried")?,
                (Some(last), false) => ended(f, last)?,
            }
            f.write_str(")")?;
        }
        if let Some(last) = &self.inbound.last {
            write!(f, "; refused {} inbound (last: ", self.inbound.refused)?;
            ended(f, last)?;
            f.write_str(")")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(port: u16) -> SocketAddr {
        SocketAddr::new([198, 51, 100, 5].into(), port)
    }

    const RTT: Duration = Duration::from_millis(40);

    #[test]
    fn attempts_start_at_the_start_spaced_by_the_round_trip() {
        let t0 = Instant::now();
        let start = t0 + Duration::from_millis(100);
        let mut s = Schedule::new(
            &[to(1), to(2), to(1), to(3)],
            start,
            RTT,
            t0 + Duration::from_secs(5),
        );
        assert_eq!(s.next_attempt(t0), Action::Wait(start));
        assert_eq!(s.next_attempt(start), Action::Connect(to(1)));
        assert_eq!(s.next_attempt(start), Action::Wait(start + RTT));
        assert_eq!(s.next_attempt(start + RTT), Action::Connect(to(2)));
        assert_eq!(s.next_attempt(start + RTT * 2), Action::Connect(to(3)));
        // All three in flight: nothing to start until the deadline, unless a result comes.
        assert_eq!(
            s.next_attempt(start + RTT * 3),
            Action::Wait(t0 + Duration::from_secs(5))
        );
    }

    #[test]
    fn a_failed_attempt_is_retried_after_a_growing_wait() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[to(1)], t0, RTT, t0 + Duration::from_secs(5));
        assert_eq!(s.next_attempt(t0), Action::Connect(to(1)));
        let t1 = t0 + Duration::from_millis(5);
        s.on_result(
            to(1),
            Attempted::Failed(io::ErrorKind::ConnectionRefused),
            t1,
        );
        assert_eq!(s.next_attempt(t1), Action::Wait(t1 + RTT * 2));
        assert_eq!(s.next_attempt(t1 + RTT * 2), Action::Connect(to(1)));
        let t2 = t1 + RTT * 2;
        s.on_result(to(1), Attempted::Failed(io::ErrorKind::ConnectionReset), t2);
        assert_eq!(s.next_attempt(t2), Action::Wait(t2 + RTT * 4));
        for _ in 0..10 {
            s.on_result(to(1), Attempted::Failed(io::ErrorKind::ConnectionReset), t2);
        }
        assert_eq!(s.next_attempt(t2), Action::Wait(t2 + MAX_RETRY));
    }

    #[test]
    fn a_wrong_host_is_never_tried_again_and_the_deadline_gives_up() {
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(1);
        let mut s = Schedule::new(&[to(1)], t0, RTT, end);
        assert_eq!(s.next_attempt(t0), Action::Connect(to(1)));
        s.on_result(to(1), Attempted::Rejected("a hello from the same role"), t0);
        assert_eq!(s.next_attempt(t0 + RTT), Action::Wait(end));
        assert_eq!(s.next_attempt(end), Action::GiveUp);
        assert_eq!(
            s.tried().to_string(),
            "198.51.100.5:1 (wrong host: a hello from the same role)"
        );
    }

    #[test]
    fn the_spacing_is_the_round_trip_within_bounds_and_candidates_are_bounded() {
        let t0 = Instant::now();
        let many: Vec<SocketAddr> = (1..=100).map(to).collect();
        let s = Schedule::new(&many, t0, Duration::from_micros(50), t0);
        assert_eq!(s.spacing(), MIN_SPACING);
        assert_eq!(s.tried().candidates().count(), MAX_CANDIDATES);
        let slow = Schedule::new(&many, t0, Duration::from_secs(9), t0);
        assert_eq!(slow.spacing(), MAX_SPACING);
    }

    #[test]
    fn tried_names_every_candidate_and_its_end() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[to(1), to(2), to(3)], t0, RTT, t0 + Duration::from_secs(5));
        assert_eq!(s.next_attempt(t0), Action::Connect(to(1)));
        assert_eq!(s.next_attempt(t0 + RTT), Action::Connect(to(2)));
        s.on_result(
            to(2),
            Attempted::Failed(io::ErrorKind::ConnectionRefused),
            t0 + RTT,
        );
        assert_eq!(
            s.tried().to_string(),
            "198.51.100.5:1 (no answer), 198.51.100.5:2 (connection refused), 198.51.100.5:3 (not tried)"
        );
        s.on_inbound_refused(Attempted::Rejected("a hello under another key"));
        s.on_inbound_refused(Attempted::Failed(io::ErrorKind::UnexpectedEof));
        assert!(s
            .tried()
            .to_string()
            .ends_with("(not tried); refused 2 inbound (last: unexpected end of file)"));
    }
}
