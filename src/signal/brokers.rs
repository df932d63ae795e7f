//! [`Brokers`]: several transports at once, as P2PD uses three brokers.
//!
//! A publish goes out through every transport concurrently and succeeds when at least
//! one accepts it. Arrivals from all of them come through one [`Arrivals`] receiver,
//! de-duplicated: the same bytes arrive once per broker, and are delivered once.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{Arrival, Error, Inbox, MqttSettings, MqttTransport, Transport, TransportStats};

/// How long a de-duplication entry lasts by default.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// How many entries the de-duplication window holds at most by default.
pub const DEDUP_CAPACITY: usize = 4096;
/// How long a publish waits for the other transports once one has accepted.
pub const STRAGGLER_GRACE: Duration = Duration::from_millis(250);
/// How many arrivals the shared inbox holds.
const INBOX: usize = 256;

/// The publishing side of several transports. Cheap to clone.
#[derive(Clone)]
pub struct Brokers {
    transports: Arc<[Box<dyn Transport>]>,
    duplicates: Arc<[AtomicU64]>,
}

impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.transports.iter().map(|t| t.name()).collect();
        f.debug_struct("Brokers")
            .field("transports", &names)
            .finish()
    }
}

/// The receiving side: arrivals from every transport, each payload delivered once.
pub struct Arrivals {
    rx: mpsc::Receiver<Arrival>,
    dedup: Dedup,
    duplicates: Arc<[AtomicU64]>,
}

impl std::fmt::Debug for Arrivals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arrivals")
            .field("remembered", &self.dedup.order.len())
            .finish()
    }
}

/// What happened to a publish at one transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The transport accepted it (for MQTT: the broker's PUBACK).
    Accepted,
    /// It failed there.
    Failed(Error),
    /// No answer yet when [`Brokers::publish`] returned (another transport had accepted
    /// it and [`STRAGGLER_GRACE`] had passed); the publish may still go out.
    Pending,
}

/// The per-transport outcomes of one [`Brokers::publish`], in the transports' order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Each transport's name and outcome.
    pub outcomes: Vec<(String, Outcome)>,
}

impl Delivery {
    /// How many transports accepted the publish.
    pub fn accepted(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Accepted))
            .count()
    }
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, o)) in self.outcomes.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            match o {
                Outcome::Accepted => write!(f, "{sep}{name}: accepted")?,
                Outcome::Failed(e) => write!(f, "{sep}{e}")?,
                Outcome::Pending => write!(f, "{sep}{name}: no answer yet")?,
            }
        }
        Ok(())
    }
}

/// One transport's counters, with the duplicates that came through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStats {
    /// The transport's name.
    pub broker: String,
    /// Its own counters.
    pub transport: TransportStats,
    /// Arrivals through it that an earlier arrival had already delivered.
    pub duplicates: u64,
}

/// Counters of a [`Brokers`]: per transport, and summed (`connected`: any is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokersStats {
    /// Per transport, in order.
    pub brokers: Vec<BrokerStats>,
    /// Sums over all transports.
    pub total: TransportStats,
    /// Duplicates over all transports.
    pub duplicates: u64,
}

impl Brokers {
    /// Starts an [`MqttTransport`] per URL, all receiving on `topic` into one inbox.
    /// Returns at once (see [`Brokers::subscribed`]); fails only on a URL or topic that
    /// cannot be used.
    pub fn mqtt<S: AsRef<str>>(
        urls: &[S],
        topic: &str,
        settings: MqttSettings,
    ) -> Result<(Brokers, Arrivals), Error> {
        let (inbox, rx) = Inbox::new(INBOX);
        let transports = urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                MqttTransport::start(url.as_ref(), topic, inbox.source(i), settings)
                    .map(|t| Box::new(t) as Box<dyn Transport>)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Brokers::new(transports, rx))
    }

    /// Joins transports that deliver into one inbox (each started with
    /// `inbox.source(i)`, `i` its index here) and that inbox's receiver.
    pub fn new(
        transports: Vec<Box<dyn Transport>>,
        rx: mpsc::Receiver<Arrival>,
    ) -> (Brokers, Arrivals) {
        let duplicates: Arc<[AtomicU64]> = transports.iter().map(|_| AtomicU64::new(0)).collect();
        let brokers = Brokers {
            transports: transports.into(),
            duplicates: duplicates.clone(),
        };
        let arrivals = Arrivals {
            rx,
            dedup: Dedup::new(DEDUP_WINDOW, DEDUP_CAPACITY),
            duplicates,
        };
        (brokers, arrivals)
    }

    /// The transports, in order.
    pub fn transports(&self) -> &[Box<dyn Transport>] {
        &self.transports
    }

    /// Resolves once at least `n` transports have been subscribed (all of them if `n` is
    /// larger). Cancel safe; never resolves if fewer than `n` can connect, so callers put
    /// it under a timeout.
    pub async fn subscribed(&self, n: usize) {
        let mut waits: FuturesUnordered<_> =
            self.transports.iter().map(|t| t.subscribed()).collect();
        let n = n.min(self.transports.len());
        for _ in 0..n {
            waits.next().await;
        }
    }

    /// Publishes `payload` to `topic` through every transport at once. Succeeds when at
    /// least one accepted it, with every transport's outcome; otherwise
    /// [`Error::NotDelivered`]. A transport that is down fails at once, and one
    /// that is slow holds the call up for at most [`STRAGGLER_GRACE`] once another has
    /// accepted (and never beyond its own timeout). Cancel safety: dropping the future
    /// abandons the waits; publishes already handed to a transport may still go out.
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<Delivery, Error> {
        let mut outcomes: Vec<Outcome> = self.transports.iter().map(|_| Outcome::Pending).collect();
        let mut pending: FuturesUnordered<_> = self
            .transports
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let p = t.publish(topic, payload.clone());
                async move { (i, p.await) }
            })
            .collect();
        let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let next = match grace.as_mut() {
                Some(g) => tokio::select! {
                    n = pending.next() => n,
                    _ = g => None,
                },
                None => pending.next().await,
            };
            let Some((i, r)) = next else { break };
            outcomes[i] = match r {
                Ok(()) => Outcome::Accepted,
                Err(e) => Outcome::Failed(e),
            };
            if grace.is_none() && matches!(outcomes[i], Outcome::Accepted) {
                grace = Some(Box::pin(tokio::time::sleep(STRAGGLER_GRACE)));
            }
        }
        let delivery = Delivery {
            outcomes: self
                .transports
                .iter()
                .map(|t| t.name().to_owned())
                .zip(outcomes)
                .collect(),
        };
        if delivery.accepted() == 0 {
            return Err(Error::NotDelivered(Box::new(delivery)));
        }
        Ok(delivery)
    }

    /// The counters now, per transport and summed.
    pub fn stats(&self) -> BrokersStats {
        let brokers: Vec<BrokerStats> = self
            .transports
            .iter()
            .zip(self.duplicates.iter())
            .map(|(t, d)| BrokerStats {
                broker: t.name().to_owned(),
                transport: t.stats(),
                duplicates: d.load(Ordering::Relaxed),
            })
            .collect();
        let mut total = TransportStats::default();
        for b in &brokers {
            let s = &b.transport;
            total.published += s.published;
            total.publish_failed += s.publish_failed;
            total.received += s.received;
            total.dropped += s.dropped;
            total.reconnects += s.reconnects;
            total.connected |= s.connected;
        }
        let duplicates = brokers.iter().map(|b| b.duplicates).sum();
        BrokersStats {
            brokers,
            total,
            duplicates,
        }
    }

    /// Stops every transport at once (see [`Transport::stop`]). Cancel safe.
    pub async fn stop(&self) {
        futures::future::join_all(self.transports.iter().map(|t| t.stop())).await;
    }
}

impl Arrivals {
    /// The next arrival whose bytes have not been delivered within the window; `None`
    /// once every transport has stopped. Cancel safe.
    pub async fn recv(&mut self) -> Option<Arrival> {
        loop {
            let a = self.rx.recv().await?;
            if self.dedup.first(&a.payload, Instant::now()) {
                return Some(a);
            }
            if let Some(d) = self.duplicates.get(a.source) {
                d.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Which payloads have been seen lately: SHA-256 digests (collision resistant, so a
/// message cannot be suppressed by another made to collide with it), each kept for a
/// window and at most `capacity` of them, the oldest forgotten first. Sans-IO: the
/// caller gives `now`.
#[derive(Debug)]
pub struct Dedup {
    window: Duration,
    capacity: usize,
    seen: HashSet<[u8; 32]>,
    order: VecDeque<([u8; 32], Instant)>,
}

impl Dedup {
    /// Remembers digests for `window`, at most `capacity` (at least 1) of them.
    pub fn new(window: Duration, capacity: usize) -> Dedup {
        Dedup {
            window,
            capacity: capacity.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `payload` is new at `now` (and remembers it); false for bytes seen within
    /// the window.
    #[must_use]
    pub fn first(&mut self, payload: &[u8], now: Instant) -> bool {
        while let Some(&(h, at)) = self.order.front() {
            if now.saturating_duration_since(at) < self.window && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&h);
        }
        let h: [u8; 32] = Sha256::digest(payload).into();
        if !self.seen.insert(h) {
            return false;
        }
        self.order.push_back((h, now));
        true
    }

    /// How many digests are remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_are_new_once_within_the_window() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(60), 16);
        assert!(d.first(b"sealed 1", t0));
        assert!(!d.first(b"sealed 1", t0 + Duration::from_secs(1)));
        assert!(d.first(b"sealed 2", t0 + Duration::from_secs(1)));
        assert!(!d.first(b"sealed 2", t0 + Duration::from_secs(59)));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn bytes_seen_before_the_window_are_new_again() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(60), 16);
        assert!(d.first(b"m", t0));
        assert!(d.first(b"m", t0 + Duration::from_secs(61)));
        assert_eq!(
            d.len(),
            1,
            "the expired entry was replaced, not kept beside"
        );
    }

    #[test]
    fn the_window_holds_at_most_its_capacity_forgetting_the_oldest() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(60), 3);
        for m in [b"a", b"b", b"c", b"d"] {
            assert!(d.first(m, t0));
        }
        assert_eq!(d.len(), 3);
        assert!(!d.first(b"d", t0), "the newest is remembered");
        assert!(d.first(b"a", t0), "the oldest was forgotten");
    }

    #[test]
    fn a_delivery_reports_each_transport_and_counts_acceptances() {
        let d = Delivery {
            outcomes: vec![
                ("mqtt://a:1".into(), Outcome::Accepted),
                (
                    "mqtt://b:1".into(),
                    Outcome::Failed(Error::NotConnected {
                        broker: "mqtt://b:1".into(),
                    }),
                ),
                ("mqtt://c:1".into(), Outcome::Pending),
            ],
        };
        assert_eq!(d.accepted(), 1);
        assert_eq!(
            d.to_string(),
            "mqtt://a:1: accepted; mqtt://b:1: not connected; mqtt://c:1: no answer yet"
        );
    }
}
