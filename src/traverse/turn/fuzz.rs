//! A handle on the TURN client core and its parsers for the fuzz targets in `fuzz/`
//! (feature `fuzzing`). Not part of the API.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;

pub use super::data::{ChannelData, Frame, Indication, MAX_WIRE};

use super::attr::PROTO_UDP;
use super::client::{check_connection_bind, Client, Config, Input, MAX_PENDING};
use super::msg::Credentials;

/// A client that has sent Allocate, fed by the fuzzer.
pub struct Harness {
    client: Client,
    now: Instant,
    last_txid: [u8; 12],
    /// Messages the client queued so far.
    pub transmits: usize,
    /// Events the client raised so far.
    pub events: usize,
}

impl Harness {
    /// A client over TCP (`reliable`) or UDP, to an IPv4 or IPv6 server, with Allocate
    /// sent.
    pub fn new(reliable: bool, v6: bool) -> Harness {
        let server: SocketAddr = if v6 {
            "[2001:db8::1]:3478"
        } else {
            "203.0.113.1:3478"
        }
        .parse()
        .expect("an address");
        let mut client = Client::new(Config {
            server,
            reliable,
            credentials: Credentials::new("u", "p").expect("short"),
            realm: None,
            schedule: crate::stun::Config::default(),
        });
        let now = Instant::now();
        client
            .allocate(PROTO_UDP, now)
            .expect("a new client has room");
        let mut h = Harness {
            client,
            now,
            last_txid: [0; 12],
            transmits: 0,
            events: 0,
        };
        h.drain();
        h
    }

    /// The transaction id of the last request sent.
    pub fn last_txid(&self) -> [u8; 12] {
        self.last_txid
    }

    /// Feeds one message; gives a peer's data as (peer, bytes), which must lie inside
    /// `bytes`.
    pub fn feed<'a>(&mut self, bytes: &'a [u8]) -> Option<(SocketAddr, &'a [u8])> {
        let out = match self.client.handle_input(bytes, self.now) {
            Input::Data { peer, data } => Some((peer, data)),
            Input::Handled | Input::Ignored(_) => None,
        };
        self.drain();
        out
    }

    /// Lets `ms` milliseconds pass.
    pub fn tick(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        self.client.handle_timeout(self.now);
        self.drain();
    }

    /// Permits and binds a channel to `peer` when allocated (so data paths are reached).
    pub fn bind(&mut self, peer: SocketAddr) {
        let _ = self.client.permit(peer, self.now);
        let _ = self.client.bind_channel(peer, self.now);
        self.drain();
    }

    /// The wire form of `data` for `peer`.
    pub fn emit_data(&mut self, peer: SocketAddr, data: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        self.client.emit_data(peer, data, &mut out);
        out
    }

    /// The bound on requests waiting at once.
    pub fn max_pending() -> usize {
        MAX_PENDING
    }

    fn drain(&mut self) {
        while let Some(t) = self.client.poll_transmit() {
            self.last_txid.copy_from_slice(&t[8..20]);
            self.transmits += 1;
        }
        while self.client.poll_event().is_some() {
            self.events += 1;
        }
    }
}

/// Reads a ConnectionBind answer for `txid`: true if it is a success.
pub fn connection_bind_ok(txid: [u8; 12], bytes: &[u8]) -> bool {
    let server = "203.0.113.1:3478".parse().expect("an address");
    check_connection_bind(server, txid, bytes).is_ok()
}
