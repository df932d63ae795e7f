//! Sealed messages between nodes, for signalling before any connection exists.
//!
//! A message to a peer is sealed to the peer's ed25519 key ([`seal()`]): only the peer
//! can open it, and opening it proves who sent it. [`Signalling`] is the sans-IO state
//! of one node: envelopes and the time (unix ms) go in, and what to deliver comes out;
//! it drops, and counts, messages that are too large, malformed, for another node, too
//! old, from the future, seen before (a replay, or the copy of a message sent through
//! several brokers) or that do not open, and it matches responses to requests. Nothing
//! in this module owns a socket, a clock or a randomness source: callers pass the time
//! and the random bytes ([`RANDOM_LEN`] per envelope). The layout, the key derivation
//! and the threat model are in `docs/p2p.md` ("Sealed messages").
//!
//! ```
//! use std::time::Duration;
//! use p2pipe::identity::Identity;
//! use p2pipe::signal::{Config, Delivered, Dropped, Signalling, RANDOM_LEN};
//!
//! let now = 1_700_000_000_000; // unix ms
//! let mut alice = Signalling::for_identity(&Identity::from_seed([1; 32]), Config::default(), 7);
//! let mut bob = Signalling::for_identity(&Identity::from_seed([2; 32]), Config::default(), 9);
//!
//! // Random bytes come from the caller (the tokio layer draws them with getrandom).
//! let (id, sealed) = alice.request(&bob.public_key(), b"your address?", now,
//!                                  Duration::from_secs(5), [3; RANDOM_LEN])?;
//! let Ok(Delivered::Request(request)) = bob.on_message(&sealed, now + 40) else {
//!     panic!("not delivered");
//! };
//! assert_eq!(&*request.payload, b"your address?");
//! assert_eq!(bob.on_message(&sealed, now + 50), Err(Dropped::Replayed));
//!
//! let answer = bob.respond(&request, b"192.0.2.7:4000", now + 60, [4; RANDOM_LEN])?;
//! match alice.on_message(&answer, now + 100) {
//!     Ok(Delivered::Response { request_id, payload, .. }) => {
//!         assert_eq!(request_id, id);
//!         assert_eq!(&*payload, b"192.0.2.7:4000");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(alice.pending(), 0);
//! assert_eq!(bob.counters().replayed, 1);
//! # Ok::<(), p2pipe::signal::Error>(())
//! ```
//!
//! Sealed envelopes travel through transports. A [`Transport`] publishes bytes to a topic
//! and delivers what arrives on its node's own topic to an [`Inbox`]; [`MqttTransport`]
//! is the first. [`Brokers`] holds several at once: a publish goes through all of them,
//! and [`Arrivals`] merges what they deliver, each payload once. See docs/p2p.md,
//! "Brokers".
//!
//! ```no_run
//! use p2pipe::signal::{Brokers, MqttSettings};
//! # async fn demo() -> Result<(), p2pipe::signal::Error> {
//! let urls = ["mqtt://127.0.0.1:1883", "mqtt://[::1]:1883"];
//! let (brokers, mut arrivals) = Brokers::mqtt(&urls, "p2pipe/1/me", MqttSettings::default())?;
//! brokers.subscribed(1).await;
//! let delivery = brokers.publish("p2pipe/1/peer", "hello".into()).await?;
//! println!("accepted by {} of {}", delivery.accepted(), urls.len());
//! while let Some(a) = arrivals.recv().await {
//!     println!("{} bytes through {}", a.payload.len(), brokers.transports()[a.source].name());
//! }
//! # Ok(()) }
//! ```
//!
//! [`Signaller`] joins the two for a node: it owns its [`Identity`](crate::identity::Identity),
//! its [`Brokers`] and a [`Signalling`], reads the clock and draws the random bytes, and
//! offers `send`, `recv`, `request`, `respond` and `fetch_record` (docs/p2p.md,
//! "Signalling in use").

mod brokers;
mod core;
mod error;
pub mod mqtt;
pub mod seal;
mod signaller;
mod transport;

pub use self::core::{Config, Counters, Delivered, DeliveredRequest, Dropped, Payload, Signalling};
pub use brokers::{
    Arrivals, BrokerStats, Brokers, BrokersStats, Dedup, Delivery, Outcome, DEDUP_CAPACITY,
    DEDUP_WINDOW, STRAGGLER_GRACE,
};
pub use error::Error;
pub use mqtt::{BrokerUrl, MqttSettings, MqttTransport};
pub use seal::{
    fingerprint, seal, Fingerprint, Header, Kind, RequestId, MAX_MESSAGE, MAX_PAYLOAD, RANDOM_LEN,
};
pub use signaller::{Incoming, Signaller, SignallerConfig, SignallerCounters, Watch};
pub use transport::{Arrival, Inbox, Transport, TransportStats, MAX_TOPIC};
