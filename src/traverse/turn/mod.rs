//! TURN relays (RFC 5766/8656, and RFC 6062 for TCP): a way through any NAT that lets
//! its host reach a server, paid for by relaying every byte.
//!
//! A [`Relay`] is one allocation on a TURN server, reached over UDP or TCP
//! ([`Transport`]) with long-term credentials. A UDP allocation relays datagrams:
//! [`Relay::pipe`] gives an ordinary UDP [`Pipe`](crate::Pipe) to one peer (bound to a
//! channel, so data travels as ChannelData), and [`Relay::listen`] an ordinary UDP
//! listener on the relayed address that accepts each permitted peer that sends first.
//! A TCP allocation (RFC 6062,
//! [`Relay::allocate_tcp`]) relays TCP connections: [`Relay::connect_tcp`] and
//! [`Relay::accept_tcp`] give TCP pipes that carry the peer's bytes unchanged.
//!
//! The protocol lives in a sans-IO core (`client.rs`: bytes and `now` in, bytes to
//! send, events and the next deadline out; `msg.rs` and `data.rs` for the wire forms).
//! The tokio driver (`driver.rs`) only moves bytes between the server's socket and the
//! core, and sleeps until the core's next deadline.
//!
//! Credentials never appear in `Debug` output, logs or errors.
//!
//! ```no_run
//! use std::time::Duration;
//! use p2pipe::traverse::turn::{Credentials, Relay, Transport, TurnServer};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = TurnServer::new("203.0.113.10:3478".parse()?, Credentials::new("user", "pw")?);
//! let limit = Duration::from_secs(5);
//! let relay = Relay::allocate(&server, Transport::Udp, limit).await?;
//! println!("peers reach me at {}", relay.relayed_addr());
//! let pipe = relay.pipe("198.51.100.7:4000".parse()?).await?;
//! pipe.send(b"hello through the relay").await?;
//! let reply = pipe.recv_timeout(limit).await?;
//! # let _ = reply;
//! relay.close().await?;
//! # Ok(()) }
//! ```

mod attr;
mod client;
mod data;
mod driver;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
mod msg;
mod relay;
mod tcp;
mod theory;

use std::fmt;
use std::net::SocketAddr;

pub use error::Error;
pub use msg::Credentials;
pub use relay::Relay;
pub use theory::{relay_feasibility, transport_for, Refusal};

/// How the client reaches the TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP: requests are retransmitted on the STUN schedule.
    Udp,
    /// TCP: one connection carries requests and data; nothing is retransmitted. Works
    /// where UDP is blocked.
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
    }
}

/// A TURN server: where it listens and how to log in. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// Its UDP address.
    pub udp: SocketAddr,
    /// Its TCP address.
    pub tcp: SocketAddr,
    /// The long-term credentials.
    pub credentials: Credentials,
    /// The realm it must name; `None` takes the realm of its first challenge.
    pub realm: Option<String>,
}

impl TurnServer {
    /// A server listening on `addr` for both UDP and TCP (as coturn does by default).
    pub fn new(addr: SocketAddr, credentials: Credentials) -> TurnServer {
        TurnServer {
            udp: addr,
            tcp: addr,
            credentials,
            realm: None,
        }
    }

    /// The address for `transport`.
    pub fn addr(&self, transport: Transport) -> SocketAddr {
        match transport {
            Transport::Udp => self.udp,
            Transport::Tcp => self.tcp,
        }
    }
}

impl fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnServer")
            .field("udp", &self.udp)
            .field("tcp", &self.tcp)
            .field("credentials", &self.credentials)
            .field("realm", &self.realm)
            .finish()
    }
}
