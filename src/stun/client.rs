//! One STUN transaction as a sans-IO state machine (RFC 5389 section 7.2.1).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{check_frame, peek_txid, Error, Request, Response};

/// Where a reply must come from to be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectFrom {
    /// The address the request was sent to (the usual case).
    Server,
    /// Any address (for change requests when the server's other address is unknown).
    Any,
    /// Exactly this address (for change requests: the server's other address, or its
    /// other port, as the request asks).
    Exactly(SocketAddr),
    /// Either of two addresses: for change requests, the address the server should
    /// answer from, or the server itself. A reply from the server itself shows that it
    /// ignored CHANGE-REQUEST, which the caller must be able to tell from silence.
    Either(SocketAddr, SocketAddr),
}

/// Retransmission and acceptance settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The initial retransmission timeout, RTO (RFC 5389: 500 ms).
    pub initial_rto: Duration,
    /// The largest retransmission timeout: the doubling stops here (RFC 5389 has no
    /// cap; [`Duration::MAX`] means none).
    pub max_rto: Duration,
    /// Rc: how many times the request is sent in all (RFC 5389: 7).
    pub max_transmissions: u32,
    /// Rm: after the last transmission, wait this many initial RTOs (RFC 5389: 16).
    pub final_wait_multiplier: u32,
    /// Where a reply must come from.
    pub expect_from: ExpectFrom,
}

impl Config {
    /// The longest a transaction with this configuration can wait before it gives up:
    /// the sum of every retransmission timeout and the final wait.
    pub fn give_up_after(&self) -> Duration {
        let mut total = Duration::ZERO;
        let mut rto = self.initial_rto;
        for _ in 1..self.max_transmissions.max(1) {
            total = total.saturating_add(rto);
            rto = rto.saturating_mul(2).min(self.max_rto);
        }
        total.saturating_add(self.initial_rto.saturating_mul(self.final_wait_multiplier))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            initial_rto: Duration::from_millis(500),
            max_rto: Duration::MAX,
            max_transmissions: 7,
            final_wait_multiplier: 16,
            expect_from: ExpectFrom::Server,
        }
    }
}

/// Bytes to send, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a transmit does nothing until its bytes are sent"]
pub struct Transmit {
    /// The destination.
    pub to: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// Why an incoming datagram was ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// It came from an address the reply should not come from.
    WrongSource(SocketAddr),
    /// It was not a valid Binding response.
    Malformed(Error),
    /// It answers another transaction.
    WrongTxid,
    /// The transaction had already finished (answered or timed out) or not started.
    NotWaiting,
}

/// What [`Transaction::handle_input`] made of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "an outcome may be the answer the transaction waited for"]
pub enum Outcome {
    /// The awaited response (success or error class): the transaction is done.
    Answered(Response),
    /// The datagram was ignored; the transaction goes on.
    Ignored(Ignored),
}

/// Where a transaction stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Built, not started.
    Idle,
    /// Sent, waiting for a reply.
    Waiting,
    /// A reply was accepted.
    Answered(Response),
    /// The retransmission schedule ran out without a reply.
    TimedOut,
}

/// Counters of one transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams sent, the first one included.
    pub transmissions: u32,
    /// Replies ignored for answering another transaction.
    pub ignored_wrong_txid: u32,
    /// Replies ignored for coming from the wrong address.
    pub ignored_wrong_source: u32,
    /// Replies ignored for not being a valid Binding response.
    pub ignored_malformed: u32,
    /// Replies ignored because the transaction was not waiting.
    pub ignored_not_waiting: u32,
}

/// One STUN Binding transaction over UDP: the request, its retransmissions, and the
/// acceptance of its reply. Sans-IO: the caller sends the [`Transmit`]s, feeds in what
/// arrives and calls [`handle_timeout`](Self::handle_timeout) at
/// [`poll_timeout`](Self::poll_timeout).
#[derive(Debug, Clone)]
pub struct Transaction {
    server: SocketAddr,
    request: Request,
    bytes: Vec<u8>,
    config: Config,
    state: State,
    /// When the next retransmission (or the final give-up) is due.
    deadline: Option<Instant>,
    /// The wait after the latest transmission.
    rto: Duration,
    stats: Stats,
    /// When the first transmission went out.
    started: Option<Instant>,
    /// How long after the first transmission the reply came.
    answered_in: Option<Duration>,
    /// Where the accepted reply came from.
    answered_from: Option<SocketAddr>,
}

impl Transaction {
    /// Builds a transaction sending `request` to `server`.
    pub fn new(server: SocketAddr, request: Request, config: Config) -> Self {
        let mut wire = BytesMut::with_capacity(request.emit_len());
        request.emit(&mut wire);
        Transaction {
            started: None,
            answered_in: None,
            answered_from: None,
            server,
            request,
            bytes: wire.to_vec(),
            config,
            state: State::Idle,
            deadline: None,
            rto: config.initial_rto,
            stats: Stats::default(),
        }
    }

    /// The request this transaction sends.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The server the request goes to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Where the transaction stands.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The accepted response, once there is one.
    pub fn response(&self) -> Option<&Response> {
        match &self.state {
            State::Answered(r) => Some(r),
            _ => None,
        }
    }

    /// True once answered or timed out.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Answered(_) | State::TimedOut)
    }

    /// How long after the first transmission the reply came; `None` until answered.
    /// With retransmissions this is an upper bound on the round trip, not a sample of it.
    pub fn answered_in(&self) -> Option<Duration> {
        self.answered_in
    }

    /// The address the accepted reply came from; `None` until answered.
    pub fn answered_from(&self) -> Option<SocketAddr> {
        self.answered_from
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Sends the request for the first time. Calling it again restarts the schedule.
    pub fn start(&mut self, now: Instant) -> Transmit {
        self.state = State::Waiting;
        self.rto = self.config.initial_rto;
        self.stats.transmissions = 0;
        self.started = Some(now);
        self.answered_in = None;
        self.answered_from = None;
        self.transmit(now)
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called; `None` when
    /// not waiting, or when the wait is too long for an [`Instant`] to express (then the
    /// transaction waits for a reply with no deadline).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Waiting => self.deadline,
            _ => None,
        }
    }

    /// Moves time on: retransmits when due, or gives up when the final wait is over
    /// (the state becomes [`State::TimedOut`]). Returns what to send, if anything.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Transmit> {
        let deadline = self.poll_timeout()?;
        if now < deadline {
            return None;
        }
        if self.stats.transmissions >= self.config.max_transmissions.max(1) {
            self.state = State::TimedOut;
            self.deadline = None;
            return None;
        }
        self.rto = self.rto.saturating_mul(2).min(self.config.max_rto);
        Some(self.transmit(now))
    }

    /// Handles a datagram that arrived from `from`. Only a valid Binding response with
    /// this transaction's id, from the expected address, while waiting, is accepted.
    pub fn handle_input(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) -> Outcome {
        let ignored = |stats: &mut Stats, why: Ignored| {
            match why {
                Ignored::WrongSource(_) => stats.ignored_wrong_source += 1,
                Ignored::Malformed(_) => stats.ignored_malformed += 1,
                Ignored::WrongTxid => stats.ignored_wrong_txid += 1,
                Ignored::NotWaiting => stats.ignored_not_waiting += 1,
            }
            Outcome::Ignored(why)
        };
        if self.state != State::Waiting {
            return ignored(&mut self.stats, Ignored::NotWaiting);
        }
        let source_ok = match self.config.expect_from {
            ExpectFrom::Server => from == self.server,
            ExpectFrom::Any => true,
            ExpectFrom::Exactly(addr) => from == addr,
            ExpectFrom::Either(a, b) => from == a || from == b,
        };
        if !source_ok {
            return ignored(&mut self.stats, Ignored::WrongSource(from));
        }
        // A well-framed message for another transaction is a wrong txid, whatever
        // else is wrong with it; anything else that fails to parse is malformed.
        if check_frame(bytes).is_ok() && peek_txid(bytes) != Some(self.request.txid) {
            return ignored(&mut self.stats, Ignored::WrongTxid);
        }
        match Response::parse(bytes) {
            Err(e) => ignored(&mut self.stats, Ignored::Malformed(e)),
            Ok(r) if r.txid != self.request.txid => ignored(&mut self.stats, Ignored::WrongTxid),
            Ok(r) => {
                self.state = State::Answered(r.clone());
                self.deadline = None;
                self.answered_in = self.started.map(|t| now.saturating_duration_since(t));
                self.answered_from = Some(from);
                Outcome::Answered(r)
            }
        }
    }

    fn transmit(&mut self, now: Instant) -> Transmit {
        self.stats.transmissions += 1;
        let wait = if self.stats.transmissions >= self.config.max_transmissions {
            self.config
                .initial_rto
                .saturating_mul(self.config.final_wait_multiplier)
        } else {
            self.rto
        };
        // A wait past what Instant can hold (say, a Duration::MAX timeout) is no deadline.
        self.deadline = now.checked_add(wait);
        Transmit {
            to: self.server,
            bytes: self.bytes.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::tests::{plain_v4, response, RFC5769_TXID, RFC5769_V4, SUCCESS};
    use crate::stun::TransactionId;

    fn server() -> SocketAddr {
        "198.51.100.1:3478".parse().unwrap()
    }

    fn transaction(config: Config) -> Transaction {
        let request = Request::binding(TransactionId(RFC5769_TXID));
        Transaction::new(server(), request, config)
    }

    #[test]
    fn retransmission_schedule_and_give_up() {
        let t0 = Instant::now();
        let mut t = transaction(Config::default());
        assert_eq!(t.poll_timeout(), None);
        let first = t.start(t0);
        assert_eq!(first.to, server());
        assert_eq!(&first.bytes[8..20], &RFC5769_TXID);
        // Sends at 0, 500, 1500, 3500, 7500, 15500, 31500 ms; gives up at 31500 + 16 * 500.
        let sends = [500u64, 1500, 3500, 7500, 15500, 31500];
        for at in sends {
            let due = t.poll_timeout().unwrap();
            assert_eq!(due - t0, Duration::from_millis(at));
            assert_eq!(t.handle_timeout(due - Duration::from_millis(1)), None);
            let again = t.handle_timeout(due).expect("a retransmission is due");
            assert_eq!(again, first);
        }
        assert_eq!(t.stats().transmissions, 7);
        let end = t.poll_timeout().unwrap();
        assert_eq!(end - t0, Duration::from_millis(39500));
        assert_eq!(t.handle_timeout(end - Duration::from_millis(1)), None);
        assert_eq!(*t.state(), State::Waiting);
        assert_eq!(t.handle_timeout(end), None);
        assert_eq!(*t.state(), State::TimedOut);
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(t.stats().transmissions, 7);
        assert!(matches!(
            t.handle_input(server(), RFC5769_V4, end),
            Outcome::Ignored(Ignored::NotWaiting)
        ));
    }

    #[test]
    fn schedule_is_configurable() {
        let t0 = Instant::now();
        let mut t = transaction(Config {
            initial_rto: Duration::from_millis(100),
            max_transmissions: 2,
            final_wait_multiplier: 4,
            ..Config::default()
        });
        let _first = t.start(t0);
        assert_eq!(t.poll_timeout().unwrap() - t0, Duration::from_millis(100));
        assert!(t.handle_timeout(t0 + Duration::from_millis(100)).is_some());
        assert_eq!(t.poll_timeout().unwrap() - t0, Duration::from_millis(500));
        assert!(t.handle_timeout(t0 + Duration::from_millis(500)).is_none());
        assert!(t.is_finished());
        assert_eq!(*t.state(), State::TimedOut);
    }

    #[test]
    fn capped_schedule_and_its_give_up_time() {
        let config = Config {
            initial_rto: Duration::from_millis(100),
            max_rto: Duration::from_millis(150),
            max_transmissions: 5,
            final_wait_multiplier: 2,
            ..Config::default()
        };
        // Sends at 0, 100, 250, 400, 550; gives up at 550 + 200.
        assert_eq!(config.give_up_after(), Duration::from_millis(750));
        assert_eq!(
            Config::default().give_up_after(),
            Duration::from_millis(39500)
        );
        let t0 = Instant::now();
        let mut t = transaction(config);
        let _first = t.start(t0);
        for at in [100u64, 250, 400, 550] {
            let due = t.poll_timeout().unwrap();
            assert_eq!(due - t0, Duration::from_millis(at));
            assert!(t.handle_timeout(due).is_some());
        }
        let end = t.poll_timeout().unwrap();
        assert_eq!(end - t0, config.give_up_after());
        assert!(t.handle_timeout(end).is_none());
        assert_eq!(*t.state(), State::TimedOut);
        assert_eq!(t.answered_in(), None);
    }

    #[test]
    fn answered_in_counts_from_the_first_transmission() {
        let t0 = Instant::now();
        let mut t = transaction(Config::default());
        let _first = t.start(t0);
        let due = t.poll_timeout().unwrap();
        t.handle_timeout(due);
        let answer = t.handle_input(server(), RFC5769_V4, due + Duration::from_millis(7));
        assert!(matches!(answer, Outcome::Answered(_)), "{answer:?}");
        assert_eq!(t.answered_in(), Some(Duration::from_millis(507)));
        assert_eq!(t.answered_from(), Some(server()));
    }

    #[test]
    fn the_right_reply_is_accepted() {
        let t0 = Instant::now();
        let mut t = transaction(Config::default());
        let _first = t.start(t0);
        let out = t.handle_input(server(), RFC5769_V4, t0);
        let Outcome::Answered(r) = out else {
            panic!("not answered: {out:?}")
        };
        assert_eq!(r.mapped, Some("192.0.2.1:32853".parse().unwrap()));
        assert_eq!(t.response(), Some(&r));
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(t.handle_timeout(t0 + Duration::from_secs(60)), None);
        assert_eq!(t.stats().transmissions, 1);
    }

    #[test]
    fn wrong_replies_are_ignored_and_counted() {
        let t0 = Instant::now();
        let mut t = transaction(Config::default());
        let _first = t.start(t0);
        let other: SocketAddr = "198.51.100.2:3478".parse().unwrap();
        let mut wrong_txid = RFC5769_V4.to_vec();
        wrong_txid[19] ^= 1;
        let mut oversized = RFC5769_V4.to_vec();
        oversized.resize(2000, 0);
        let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let mut request = BytesMut::new();
        t.request().emit(&mut request);

        let cases: Vec<(SocketAddr, &[u8])> = vec![
            (other, RFC5769_V4),
            (server(), &wrong_txid),
            (server(), &RFC5769_V4[..40]),
            (server(), &oversized),
            (server(), &garbage),
            (server(), &[]),
            (server(), &request),
        ];
        for (from, bytes) in cases {
            assert!(matches!(
                t.handle_input(from, bytes, t0),
                Outcome::Ignored(_)
            ));
            assert_eq!(*t.state(), State::Waiting);
        }
        let s = t.stats();
        assert_eq!(s.ignored_wrong_source, 1);
        assert_eq!(s.ignored_wrong_txid, 1);
        assert_eq!(s.ignored_malformed, 5);
        // The real answer still gets through, and later ones change nothing.
        assert!(matches!(
            t.handle_input(server(), RFC5769_V4, t0),
            Outcome::Answered(_)
        ));
        let late = response(
            SUCCESS,
            RFC5769_TXID,
            &[(0x0001, plain_v4([1, 1, 1, 1], 1))],
        );
        assert!(matches!(
            t.handle_input(server(), &late, t0),
            Outcome::Ignored(Ignored::NotWaiting)
        ));
        assert_eq!(
            t.response().unwrap().mapped,
            Some("192.0.2.1:32853".parse().unwrap())
        );
        assert_eq!(t.stats().ignored_not_waiting, 1);
    }

    #[test]
    fn expect_from_any_and_exactly() {
        let t0 = Instant::now();
        let changed: SocketAddr = "198.51.100.2:3479".parse().unwrap();
        let mut exact = transaction(Config {
            expect_from: ExpectFrom::Exactly(changed),
            ..Config::default()
        });
        let _first = exact.start(t0);
        assert!(matches!(
            exact.handle_input(server(), RFC5769_V4, t0),
            Outcome::Ignored(Ignored::WrongSource(_))
        ));
        assert!(matches!(
            exact.handle_input(changed, RFC5769_V4, t0),
            Outcome::Answered(_)
        ));

        let mut either = transaction(Config {
            expect_from: ExpectFrom::Either(changed, server()),
            ..Config::default()
        });
        let _first = either.start(t0);
        assert!(matches!(
            either.handle_input("203.0.113.9:1".parse().unwrap(), RFC5769_V4, t0),
            Outcome::Ignored(Ignored::WrongSource(_))
        ));
        assert!(matches!(
            either.handle_input(server(), RFC5769_V4, t0),
            Outcome::Answered(_)
        ));

        let mut any = transaction(Config {
            expect_from: ExpectFrom::Any,
            ..Config::default()
        });
        let _first = any.start(t0);
        assert!(matches!(
            any.handle_input("203.0.113.9:1".parse().unwrap(), RFC5769_V4, t0),
            Outcome::Answered(_)
        ));
    }

    #[test]
    fn a_timeout_too_long_for_an_instant_is_no_deadline() {
        // Found by the stun_client fuzz target: start() used to panic adding the wait.
        // The first wait itself, or only the final wait (1 transmission, 64 RTOs).
        for (initial_rto, max_transmissions) in
            [(Duration::MAX, 2), (Duration::from_secs(u64::MAX / 64), 1)]
        {
            let mut t = transaction(Config {
                initial_rto,
                max_transmissions,
                final_wait_multiplier: 64,
                ..Config::default()
            });
            let t0 = Instant::now();
            let _first = t.start(t0);
            assert_eq!(t.poll_timeout(), None);
            assert_eq!(t.handle_timeout(t0 + Duration::from_secs(3600)), None);
            assert_eq!(*t.state(), State::Waiting);
            assert!(matches!(
                t.handle_input(server(), RFC5769_V4, t0),
                Outcome::Answered(_)
            ));
        }
    }

    #[test]
    fn input_before_start_is_ignored() {
        let mut t = transaction(Config::default());
        assert!(matches!(
            t.handle_input(server(), RFC5769_V4, Instant::now()),
            Outcome::Ignored(Ignored::NotWaiting)
        ));
        assert_eq!(*t.state(), State::Idle);
    }
}
