//! The signalling transport: a channel that publishes opaque bytes to a node's topic and
//! delivers what arrives on this node's own topic.
//!
//! A transport is a handle to a task of its own that keeps the channel up. Publishing
//! goes through [`Transport::publish`]; arrivals go to the [`Inbox`] the transport was
//! started with, so that several transports can share one inbox (see
//! [`Brokers`](super::Brokers)). The trait is dyn-compatible (its futures are boxed), so
//! transports of different kinds can be held together as `Box<dyn Transport>`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{Error, MAX_MESSAGE};

/// One signalling channel: MQTT ([`MqttTransport`](super::MqttTransport)) is the first.
///
/// `publish` and `stop` finish under timeouts of the transport's own; `subscribed` waits
/// as long as it takes (never, for a transport that cannot connect), so callers bound it.
pub trait Transport: Send + Sync {
    /// The channel's name in logs, errors and stats, e.g. `mqtt://127.0.0.1:1883`.
    fn name(&self) -> &str;

    /// Publishes `payload` (at most [`MAX_MESSAGE`] bytes) to `topic` and resolves once
    /// the channel has accepted it, or with an error: not connected, timed out, too
    /// large. Cancel safety: dropping the future abandons the wait, not the publish,
    /// which may still go out.
    fn publish<'a>(&'a self, topic: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), Error>>;

    /// Resolves once the transport receives on its topic (connected and subscribed), at
    /// once if it does now. Cancel safe.
    fn subscribed(&self) -> BoxFuture<'_, ()>;

    /// This transport's counters now.
    fn stats(&self) -> TransportStats;

    /// Closes the channel cleanly and waits, under a timeout, for the transport's task to
    /// end. Cancel safe: the transport stops either way.
    fn stop(&self) -> BoxFuture<'_, ()>;
}

/// What arrived on a node's topic, and through which transport.
#[derive(Clone, PartialEq, Eq)]
pub struct Arrival {
    /// The index of the transport it came through (the [`Inbox::source`] it was given).
    pub source: usize,
    /// The bytes as published.
    pub payload: Bytes,
}

impl std::fmt::Debug for Arrival {
    // The payload is a sealed message or, before sealing, a plaintext: only its length.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arrival")
            .field("source", &self.source)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// Where a transport delivers arrivals: the sending half of a bounded channel, tagged
/// with the transport's index. A transport never waits on a full inbox: it drops the
/// arrival and counts it (a slow reader must not stall the channel's keep-alives).
#[derive(Clone, Debug)]
pub struct Inbox {
    tx: mpsc::Sender<Arrival>,
    source: usize,
}

impl Inbox {
    /// A new inbox holding up to `capacity` arrivals, for source 0, and its receiver.
    pub fn new(capacity: usize) -> (Inbox, mpsc::Receiver<Arrival>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Inbox { tx, source: 0 }, rx)
    }

    /// The same inbox for transport number `source`.
    pub fn source(&self, source: usize) -> Inbox {
        Inbox {
            tx: self.tx.clone(),
            source,
        }
    }

    /// Hands `payload` over without waiting; false if the inbox is full or closed.
    pub fn deliver(&self, payload: Bytes) -> bool {
        let source = self.source;
        self.tx.try_send(Arrival { source, payload }).is_ok()
    }
}

/// A transport's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Publishes the channel accepted (for MQTT: the broker's PUBACK), also those whose
    /// caller had stopped waiting.
    pub published: u64,
    /// Publishes that failed: not connected, timed out, refused.
    pub publish_failed: u64,
    /// Messages delivered to the inbox.
    pub received: u64,
    /// Arrivals dropped: on another topic, oversized, malformed, or the inbox was full.
    pub dropped: u64,
    /// Connections re-established after one was lost.
    pub reconnects: u64,
    /// Whether the transport is connected and subscribed now.
    pub connected: bool,
}

/// The live counters behind [`TransportStats`], shared by a transport and its task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) publish_failed: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) connected: AtomicBool,
}

impl Counters {
    pub(crate) fn bump(n: &AtomicU64) {
        n.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> TransportStats {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        TransportStats {
            published: get(&self.published),
            publish_failed: get(&self.publish_failed),
            received: get(&self.received),
            dropped: get(&self.dropped),
            reconnects: get(&self.reconnects),
            connected: self.connected.load(Ordering::Relaxed),
        }
    }
}

/// The longest topic a transport publishes to, in bytes (a node topic is 38).
pub const MAX_TOPIC: usize = 128;

/// Checks a topic to publish to: not empty, at most [`MAX_TOPIC`] bytes, no wildcard.
pub(crate) fn check_topic(topic: &str) -> Result<(), Error> {
    let reason = if topic.is_empty() {
        "empty"
    } else if topic.len() > MAX_TOPIC {
        "longer than 128 bytes"
    } else if topic.contains(['+', '#', '\0']) {
        "contains a wildcard or NUL"
    } else {
        return Ok(());
    };
    Err(Error::Topic {
        topic: topic.chars().take(MAX_TOPIC).collect(),
        reason,
    })
}

/// Checks a payload's size against [`MAX_MESSAGE`].
pub(crate) fn check_size(len: usize) -> Result<(), Error> {
    if len > MAX_MESSAGE {
        return Err(Error::TooLarge {
            len,
            max: MAX_MESSAGE,
        });
    }
    Ok(())
}
