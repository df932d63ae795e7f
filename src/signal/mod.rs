//! Signalling: opaque messages between nodes through channels that both can reach
//! before any connection exists between them, MQTT brokers first.
//!
//! ```no_run
//! use p2pipe::signal::{Brokers, MqttSettings};
//! # async fn demo() -> Result<(), p2pipe::signal::TransportError> {
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
//! A [`Transport`] publishes bytes to a topic and delivers what arrives on its node's own
//! topic to an [`Inbox`]; [`MqttTransport`] is the first. [`Brokers`] holds several at
//! once: a publish goes through all of them, and [`Arrivals`] merges what they deliver,
//! each payload once. See docs/p2p.md, "Brokers".

mod brokers;
pub mod mqtt;
mod transport;

pub use brokers::{
    Arrivals, BrokerStats, Brokers, BrokersStats, Dedup, Delivery, Outcome, DEDUP_CAPACITY,
    DEDUP_WINDOW, STRAGGLER_GRACE,
};
pub use mqtt::{BrokerUrl, MqttSettings, MqttTransport};
pub use transport::{Arrival, Inbox, Transport, TransportError, TransportStats, MAX_TOPIC};

/// The most bytes a signalling message has on the wire (16 KiB); transports refuse
/// larger ones, in both directions.
pub const MAX_MESSAGE: usize = 16 * 1024;
