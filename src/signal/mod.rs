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
//! use ed25519_dalek::SigningKey;
//! use p2pipe::signal::{Config, Delivered, Dropped, Signalling, RANDOM_LEN};
//!
//! let now = 1_700_000_000_000; // unix ms
//! let mut alice = Signalling::new(SigningKey::from_bytes(&[1; 32]), Config::default(), 7);
//! let mut bob = Signalling::new(SigningKey::from_bytes(&[2; 32]), Config::default(), 9);
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

mod core;
mod error;
pub mod seal;

pub use self::core::{Config, Counters, Delivered, DeliveredRequest, Dropped, Payload, Signalling};
pub use error::Error;
pub use seal::{
    fingerprint, peek, seal, Fingerprint, Header, Kind, RequestId, MAX_MESSAGE, MAX_PAYLOAD,
    RANDOM_LEN,
};
