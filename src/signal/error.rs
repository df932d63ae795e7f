//! The error type of the signal layer.
//!
//! No variant carries key material or a payload: keys are named by their public
//! fingerprint, payloads by their length.

/// Errors of the signal layer: sealing and parsing messages, the transports and brokers,
/// and the [`Signaller`](super::Signaller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A payload too large to be sealed into [`MAX_MESSAGE`](super::MAX_MESSAGE) bytes.
    #[error("payload of {len} bytes exceeds the limit of {max} for a sealed message")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// [`MAX_PAYLOAD`](super::MAX_PAYLOAD).
        max: usize,
    },
    /// A message over [`MAX_MESSAGE`](super::MAX_MESSAGE).
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message shorter than a header and a tag.
    #[error("message of {len} bytes is shorter than the {min} of a sealed message")]
    Truncated {
        /// The message's length.
        len: usize,
        /// The shortest sealed message.
        min: usize,
    },
    /// Bytes that are not a sealed message.
    #[error("not a sealed message: {0}")]
    Malformed(&'static str),
    /// A recipient key of low order, with which no secret can be shared.
    #[error("the key with fingerprint {fingerprint} is of low order: nothing can be sealed to it")]
    LowOrderKey {
        /// The key's fingerprint, in hex.
        fingerprint: String,
    },
    /// As many requests as allowed are waiting for their responses.
    #[error("{max} requests are already waiting for a response")]
    TooManyPending {
        /// [`Config::max_pending`](super::Config::max_pending).
        max: usize,
    },
    /// A broker URL that cannot be used.
    #[error("invalid broker url {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A topic that cannot be published to or subscribed to.
    #[error("invalid topic {topic:?}: {reason}")]
    Topic {
        /// The topic (cut at [`MAX_TOPIC`](super::MAX_TOPIC) characters).
        topic: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The transport is not connected now (it is reconnecting).
    #[error("{broker}: not connected")]
    NotConnected {
        /// The transport's name.
        broker: String,
    },
    /// The connection was lost before the broker acknowledged the publish.
    #[error("{broker}: connection lost before the publish was acknowledged")]
    ConnectionLost {
        /// The transport's name.
        broker: String,
    },
    /// The transport's request queue is full.
    #[error("{broker}: too many publishes in flight")]
    Busy {
        /// The transport's name.
        broker: String,
    },
    /// No acknowledgement within the limit.
    #[error("{broker}: no acknowledgement within {after:?}")]
    Timeout {
        /// The transport's name.
        broker: String,
        /// The limit.
        after: std::time::Duration,
    },
    /// The transport has been stopped.
    #[error("{broker}: stopped")]
    Stopped {
        /// The transport's name.
        broker: String,
    },
    /// No transport accepted a publish; the outcomes say why, per transport.
    #[error("no broker accepted the message: {0}")]
    NotDelivered(Box<super::Delivery>),
    /// No broker subscribed this node's topic in time.
    #[error("no broker subscribed {topic} within {after:?}")]
    NotSubscribed {
        /// The node's topic.
        topic: String,
        /// The limit.
        after: std::time::Duration,
    },
    /// A request got no response in time.
    #[error("request to {peer} timed out after {after:?}")]
    TimedOut {
        /// The peer's node id.
        peer: crate::identity::NodeId,
        /// The limit.
        after: std::time::Duration,
    },
    /// The peer has no address record to give.
    #[error("{peer} has no address record to give")]
    NoRecord {
        /// The peer's node id.
        peer: crate::identity::NodeId,
    },
    /// The record the peer gave does not parse, or is another node's.
    #[error("address record from {peer} refused: {reason}")]
    BadRecord {
        /// The peer's node id.
        peer: crate::identity::NodeId,
        /// Why it was refused.
        reason: String,
    },
    /// The signaller has been stopped.
    #[error("signaller of {node} stopped")]
    Closed {
        /// This node's id.
        node: crate::identity::NodeId,
    },
}
