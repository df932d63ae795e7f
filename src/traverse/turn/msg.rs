//! TURN control messages: requests written through stun_codec (with MESSAGE-INTEGRITY
//! under the long-term mechanism) and replies read back, each length checked before
//! anything is decoded.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{
    ErrorCode, MessageIntegrity, Nonce, Realm, Software, Username,
};
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Lifetime, RequestedTransport, XorPeerAddress,
};
use stun_codec::rfc8656::attributes::{AddressFamily, RequestedAddressFamily};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, Method, TransactionId};

use super::attr::{self, ConnectionId, TurnAttribute};
use super::data::{check_stun_frame, Attributes};
use super::Error;

/// A user name and password for the long-term credential mechanism (RFC 5389 section
/// 10.2). Its `Debug` shows the user name only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: Username,
    password: String,
}

impl Credentials {
    /// Credentials for `username` and `password`.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] when the user name is 513 bytes or longer (it would not fit
    /// USERNAME).
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Result<Self, Error> {
        let username = Username::new(username.into())
            .map_err(|_| Error::Malformed("user name of 513 bytes or more".into()))?;
        Ok(Credentials {
            username,
            password: password.into(),
        })
    }

    /// The user name.
    pub fn username(&self) -> &str {
        self.username.name()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username.name())
            .field("password", &"<hidden>")
            .finish()
    }
}

/// What the server's challenge gave: the realm and the current nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub(crate) realm: Realm,
    pub(crate) nonce: Nonce,
}

/// The requests a TURN client makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Allocate with REQUESTED-TRANSPORT UDP (17) or TCP (6); `v6` asks for an IPv6
    /// relayed address (REQUESTED-ADDRESS-FAMILY, RFC 8656).
    Allocate { proto: u8, v6: bool },
    /// Refresh with this LIFETIME (0 deletes the allocation).
    Refresh { lifetime: u32 },
    /// CreatePermission for one peer address.
    Permission { peer: SocketAddr },
    /// ChannelBind of a channel number to a peer.
    ChannelBind { peer: SocketAddr, channel: u16 },
    /// Connect to a peer over TCP (RFC 6062).
    Connect { peer: SocketAddr },
    /// ConnectionBind of a new data connection (RFC 6062).
    ConnectionBind { id: u32 },
}

impl Kind {
    /// The request's method.
    fn method(&self) -> Method {
        match self {
            Kind::Allocate { .. } => attr::ALLOCATE,
            Kind::Refresh { .. } => attr::REFRESH,
            Kind::Permission { .. } => attr::CREATE_PERMISSION,
            Kind::ChannelBind { .. } => attr::CHANNEL_BIND,
            Kind::Connect { .. } => Method::new(attr::CONNECT).expect("12-bit method"),
            Kind::ConnectionBind { .. } => {
                Method::new(attr::CONNECTION_BIND).expect("12-bit method")
            }
        }
    }

    /// The request's name, for errors.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Kind::Allocate { .. } => "allocate",
            Kind::Refresh { .. } => "refresh",
            Kind::Permission { .. } => "create-permission",
            Kind::ChannelBind { .. } => "channel-bind",
            Kind::Connect { .. } => "connect",
            Kind::ConnectionBind { .. } => "connection-bind",
        }
    }

    /// The request's own attributes.
    fn attributes(&self) -> Vec<TurnAttribute> {
        match *self {
            Kind::Allocate { proto, v6 } => {
                let mut attrs = vec![
                    RequestedTransport::new(proto).into(),
                    Lifetime::from_u32(600).into(),
                ];
                if v6 {
                    attrs.push(RequestedAddressFamily::new(AddressFamily::V6).into());
                }
                attrs
            }
            Kind::Refresh { lifetime } => vec![Lifetime::from_u32(lifetime).into()],
            Kind::Permission { peer } | Kind::Connect { peer } => {
                vec![XorPeerAddress::new(peer).into()]
            }
            Kind::ChannelBind { peer, channel } => vec![
                ChannelNumber::new(channel)
                    .expect("channel numbers are picked in range")
                    .into(),
                XorPeerAddress::new(peer).into(),
            ],
            Kind::ConnectionBind { id } => vec![ConnectionId(id).into()],
        }
    }
}

/// Writes a request: the kind's attributes, SOFTWARE, and under a challenge USERNAME,
/// REALM, NONCE and MESSAGE-INTEGRITY. Every value was checked when it was made, so
/// this cannot fail.
pub(crate) fn request(
    kind: &Kind,
    txid: [u8; 12],
    auth: Option<(&Credentials, &Challenge)>,
) -> Vec<u8> {
    let mut m = Message::<TurnAttribute>::new(
        MessageClass::Request,
        kind.method(),
        TransactionId::new(txid),
    );
    for a in kind.attributes() {
        m.add_attribute(a);
    }
    m.add_attribute(Software::new("p2pipe".to_owned()).expect("a short description"));
    if let Some((creds, ch)) = auth {
        m.add_attribute(creds.username.clone());
        m.add_attribute(ch.realm.clone());
        m.add_attribute(ch.nonce.clone());
        let mi = MessageIntegrity::new_long_term_credential(
            &m,
            &creds.username,
            &ch.realm,
            &creds.password,
        )
        .expect("a checked request encodes");
        m.add_attribute(mi);
    }
    MessageEncoder::new()
        .encode_into_bytes(m)
        .expect("a checked request encodes")
}

/// A server's reply or indication, read and checked.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) txid: [u8; 12],
    pub(crate) method: u16,
    pub(crate) class: MessageClass,
    pub(crate) error: Option<(u16, String)>,
    pub(crate) realm: Option<String>,
    pub(crate) nonce: Option<String>,
    pub(crate) relayed: Option<SocketAddr>,
    pub(crate) mapped: Option<SocketAddr>,
    pub(crate) lifetime: Option<Duration>,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) connection_id: Option<u32>,
    integrity: Option<MessageIntegrity>,
}

/// An attribute too long for this client, found before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLong {
    pub(crate) attr: u16,
    pub(crate) len: usize,
}

impl Reply {
    /// Reads a STUN message from the server. The frame and every attribute's length are
    /// checked first; a REALM or NONCE longer than RFC 5389 allows is reported as
    /// [`TooLong`] inside the `Ok` (so the client can name it) rather than decoded.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Result<Reply, TooLong>, Error> {
        let body = check_stun_frame(bytes)?;
        for (a, value) in Attributes(body) {
            if matches!(a, attr::REALM | attr::NONCE) && value.len() > attr::MAX_REALM_OR_NONCE {
                return Ok(Err(TooLong {
                    attr: a,
                    len: value.len(),
                }));
            }
        }
        let decoded = MessageDecoder::<TurnAttribute>::new()
            .decode_from_bytes(bytes)
            .map_err(|e| Error::Malformed(first_line(&e.to_string())))?
            .map_err(|b| Error::Malformed(first_line(&b.error().to_string())))?;
        Ok(Ok(Reply::from_message(&decoded)))
    }

    fn from_message(m: &Message<TurnAttribute>) -> Reply {
        let mut r = Reply {
            txid: *m.transaction_id().as_bytes(),
            method: m.method().as_u16(),
            class: m.class(),
            error: None,
            realm: None,
            nonce: None,
            relayed: None,
            mapped: None,
            lifetime: None,
            peer: None,
            connection_id: None,
            integrity: None,
        };
        for a in m.attributes() {
            r.take(a);
        }
        r
    }

    /// Keeps the first of each attribute.
    fn take(&mut self, a: &TurnAttribute) {
        match a {
            TurnAttribute::ErrorCode(e) => {
                self.error.get_or_insert_with(|| error_of(e));
            }
            TurnAttribute::Realm(x) => {
                self.realm.get_or_insert_with(|| x.text().to_owned());
            }
            TurnAttribute::Nonce(x) => {
                self.nonce.get_or_insert_with(|| x.value().to_owned());
            }
            TurnAttribute::XorRelayAddress(x) => {
                self.relayed.get_or_insert(x.address());
            }
            TurnAttribute::XorMappedAddress(x) => {
                self.mapped.get_or_insert(x.address());
            }
            TurnAttribute::XorPeerAddress(x) => {
                self.peer.get_or_insert(x.address());
            }
            TurnAttribute::Lifetime(x) => {
                self.lifetime.get_or_insert(x.lifetime());
            }
            TurnAttribute::ConnectionId(x) => {
                self.connection_id.get_or_insert(x.0);
            }
            TurnAttribute::MessageIntegrity(x) => {
                self.integrity.get_or_insert_with(|| x.clone());
            }
            _ => {}
        }
    }

    /// Whether MESSAGE-INTEGRITY, when the reply has one, matches the credentials.
    pub(crate) fn integrity_ok(&self, creds: &Credentials, ch: &Challenge) -> bool {
        match &self.integrity {
            None => true,
            Some(mi) => mi
                .check_long_term_credential(&creds.username, &ch.realm, &creds.password)
                .is_ok(),
        }
    }
}

fn error_of(e: &ErrorCode) -> (u16, String) {
    (e.code(), e.reason_phrase().chars().take(128).collect())
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}
