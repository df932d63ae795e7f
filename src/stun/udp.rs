//! The STUN client over UDP: drives sans-IO [`Transaction`]s on a tokio socket.
//!
//! Several transactions share one socket, to one server or to many: replies are matched
//! to their transaction by transaction id, and everything that matches none is ignored
//! and counted. [`first_answer`] asks several servers at once and keeps the first answer.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::UdpSocket;

use super::{peek_txid, Config, Error, Outcome, Request, Response, Transaction, TransactionId};

/// Bigger than any message the client accepts, so that an oversized reply is seen as
/// oversized and not silently cut to size.
const RECV_BUF: usize = super::MAX_MESSAGE_LEN + 1;

/// What a run saw besides its transactions' own counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Datagrams sent, retransmissions included.
    pub sent: u32,
    /// Datagrams received.
    pub received: u32,
    /// Datagrams that matched no transaction of the run (no STUN header, or an unknown
    /// transaction id), ignored.
    pub unmatched: u32,
    /// Datagrams a transaction ignored: wrong source, malformed, or a late duplicate.
    pub ignored: u32,
    /// Transactions given up because a send failed, with the error.
    pub send_errors: Vec<(usize, Error)>,
}

/// Starts every transaction in `transactions` on `socket` and drives them until each is
/// answered or has timed out, or until `stop` returns true (it is asked after every
/// answer). Transactions whose first send fails are given up and reported in
/// [`RunStats::send_errors`].
///
/// # Cancel safety
///
/// Cancel safe: every transaction is left in a consistent state, and a run can be
/// resumed by calling this again (transactions already waiting are not restarted).
pub async fn run_until(
    socket: &UdpSocket,
    transactions: &mut [Transaction],
    mut stop: impl FnMut(&[Transaction]) -> bool,
) -> RunStats {
    let mut stats = RunStats::default();
    let mut failed = vec![false; transactions.len()];
    let now = Instant::now();
    for (i, t) in transactions.iter_mut().enumerate() {
        if !matches!(t.state(), super::State::Idle) {
            continue;
        }
        let tx = t.start(now);
        match socket.send_to(&tx.bytes, tx.to).await {
            Ok(_) => stats.sent += 1,
            Err(e) => {
                failed[i] = true;
                stats.send_errors.push((i, Error::io("send", e)));
            }
        }
    }
    let mut buf = [0u8; RECV_BUF];
    loop {
        // Due timeouts first, every time round: a flood of datagrams cannot hold
        // back retransmissions or the give-up.
        let now = Instant::now();
        for (i, t) in transactions.iter_mut().enumerate() {
            if failed[i] {
                continue;
            }
            if let Some(tx) = t.handle_timeout(now) {
                // A failed retransmission is as good as a lost one.
                if socket.send_to(&tx.bytes, tx.to).await.is_ok() {
                    stats.sent += 1;
                }
            }
        }
        let next = transactions
            .iter()
            .enumerate()
            .filter(|(i, _)| !failed[*i])
            .filter_map(|(_, t)| t.poll_timeout())
            .min();
        let Some(deadline) = next else {
            return stats;
        };
        tokio::select! {
            got = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = got else {
                    // ICMP errors surface here on some systems; the schedule goes on.
                    continue;
                };
                stats.received += 1;
                let bytes = &buf[..n];
                let Some(txid) = peek_txid(bytes) else {
                    stats.unmatched += 1;
                    continue;
                };
                let Some(t) = transactions
                    .iter_mut()
                    .find(|t| t.request().txid == txid)
                else {
                    stats.unmatched += 1;
                    continue;
                };
                match t.handle_input(from, bytes, Instant::now()) {
                    Outcome::Answered(_) => {
                        if stop(transactions) {
                            return stats;
                        }
                    }
                    Outcome::Ignored(_) => stats.ignored += 1,
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
}

/// As [`run_until`], never stopping early: every transaction ends answered or timed out.
///
/// # Cancel safety
///
/// As [`run_until`].
pub async fn run(socket: &UdpSocket, transactions: &mut [Transaction]) -> RunStats {
    run_until(socket, transactions, |_| false).await
}

/// A random transaction id, from the OS's randomness (RFC 5389 asks for ids that are
/// hard to guess).
pub fn random_txid() -> TransactionId {
    let mut id = [0u8; 12];
    if getrandom::fill(&mut id).is_err() {
        // No OS randomness: fall back to the clock and a counter, unique if guessable.
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        id[..8].copy_from_slice(&t.to_le_bytes());
        id[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    TransactionId(id)
}

/// Asks every server in `servers` at once from `socket`, and returns the index and the
/// response of the first to answer.
///
/// # Errors
///
/// [`Error::NoAnswer`] when none answered before the schedule of `config` ran out.
///
/// # Cancel safety
///
/// Cancel safe: nothing is lost but the outstanding requests.
pub async fn first_answer(
    socket: &UdpSocket,
    servers: &[SocketAddr],
    config: Config,
) -> Result<(usize, Response), Error> {
    let mut ts = servers
        .iter()
        .map(|s| Transaction::new(*s, Request::binding(random_txid()), config))
        .collect::<Vec<_>>();
    run_until(socket, &mut ts, |ts| {
        ts.iter().any(|t| t.response().is_some())
    })
    .await;
    ts.iter()
        .enumerate()
        .find_map(|(i, t)| t.response().map(|r| (i, r.clone())))
        .ok_or(Error::NoAnswer {
            what: "a binding request",
            waited: config.give_up_after(),
        })
}
