//! The STUN client core, sans-IO (RFC 5389, with RFC 5780 and RFC 3489 attributes).
//!
//! Nothing here owns a socket or reads a clock. The wire forms speak the crate's two
//! verbs: [`Request::emit`] appends a Binding request (checked when it is built, so it
//! cannot fail) and [`Request::parse`] reads one back; [`Response::parse`] turns a
//! datagram into a checked [`Response`]. A [`Transaction`] takes bytes, addresses and
//! `now` in and returns what to send and when to wake up. The tokio drivers above it
//! only move bytes.
//!
//! Requests are written by hand (a header, SOFTWARE, CHANGE-REQUEST). Messages are
//! decoded through `stun_codec`, with a known fault of its 0.4 release worked around:
//! its CHANGE-REQUEST decoder reads the wrong bits, so CHANGE-REQUEST is read raw
//! ([`ChangeRequest::parse`]).
//!
//! MESSAGE-INTEGRITY is not checked: this client has no credentials, and RFC 5389 lets
//! a client without them ignore it. FINGERPRINT, when present, is checked by
//! `stun_codec`; a response whose fingerprint does not match is refused.

mod attr;
mod client;
pub mod server;
pub mod tcp;
pub mod udp;

use std::fmt;
use std::net::SocketAddr;

use bytecodec::{DecodeExt, EncodeExt};
use bytes::{BufMut, BytesMut};
use stun_codec::rfc5389::attributes::Software;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::{Attribute, Message, MessageClass, MessageDecoder, MessageEncoder, RawAttribute};

pub use client::{Config, ExpectFrom, Ignored, Outcome, State, Stats, Transaction, Transmit};

use attr::ResponseAttribute;

/// The largest STUN message this client accepts, in bytes.
pub const MAX_MESSAGE_LEN: usize = 1500;

/// The length of a STUN header, in bytes.
pub const HEADER_LEN: usize = 20;

/// The magic cookie every RFC 5389 message carries.
pub const MAGIC_COOKIE: u32 = 0x2112_a442;

/// Errors of the STUN layer: building requests, parsing messages, and the drivers' I/O.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The datagram is shorter than a STUN header.
    #[error("stun message truncated: {len} bytes, a header needs {HEADER_LEN}")]
    Truncated {
        /// How many bytes arrived.
        len: usize,
    },
    /// The datagram is longer than this client accepts.
    #[error("stun message too long: {len} bytes, at most {MAX_MESSAGE_LEN} accepted")]
    TooLong {
        /// How many bytes arrived.
        len: usize,
    },
    /// The header's length field disagrees with the datagram.
    #[error("stun message length {declared} does not match the {actual} bytes after the header")]
    LengthMismatch {
        /// The length the header declares.
        declared: usize,
        /// The bytes actually present after the header.
        actual: usize,
    },
    /// The bytes are not a STUN message (top bits or magic cookie wrong).
    #[error("not a stun message: {0}")]
    NotStun(&'static str),
    /// `stun_codec` refused the message.
    #[error("cannot decode stun message: {0}")]
    Decode(String),
    /// The message is a request or an indication, not a response.
    #[error("stun message is a {0}, not a response")]
    NotResponse(&'static str),
    /// The response is not for the Binding method.
    #[error("stun response has method {0:#05x}, not binding")]
    WrongMethod(u16),
    /// The response carries a comprehension-required attribute this client does not know.
    #[error("stun response carries unknown comprehension-required attribute {0:#06x}")]
    UnknownRequired(u16),
    /// An attribute is malformed.
    #[error("bad stun attribute {attr_type:#06x}: {reason}")]
    BadAttribute {
        /// The attribute's type.
        attr_type: u16,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A response lacks an attribute it must carry.
    #[error("stun {class} response has no {missing}")]
    MissingAttribute {
        /// "success" or "error".
        class: &'static str,
        /// The attribute that is missing.
        missing: &'static str,
    },
    /// A request or a response could not be built.
    #[error("cannot encode stun message: {0}")]
    Encode(String),
    /// A message a server received is not a Binding request.
    #[error("stun message is not a binding request")]
    NotRequest,
    /// The server core's configuration is unusable.
    #[error("bad stun server configuration: {0}")]
    ServerConfig(String),
    /// A socket operation failed.
    #[error("stun {op} failed: {message}")]
    Io {
        /// What was being done: "bind", "send", "receive", "connect".
        op: &'static str,
        /// The OS error's kind.
        kind: std::io::ErrorKind,
        /// The OS error's message.
        message: String,
    },
    /// No server answered in time.
    #[error("no stun server answered {what} within {waited:?}")]
    NoAnswer {
        /// What was asked.
        what: &'static str,
        /// How long the client waited.
        waited: std::time::Duration,
    },
    /// A server name could not be resolved.
    #[error("cannot resolve stun server {server}: {message}")]
    Resolve {
        /// The name as given.
        server: String,
        /// Why.
        message: String,
    },
}

impl Error {
    /// Wraps an OS error from a socket operation.
    pub fn io(op: &'static str, e: std::io::Error) -> Self {
        Error::Io {
            op,
            kind: e.kind(),
            message: e.to_string().to_lowercase(),
        }
    }
}

/// A 96-bit STUN transaction id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    /// Makes a transaction id from caller-supplied random bytes.
    pub fn new(bytes: [u8; 12]) -> Self {
        TransactionId(bytes)
    }

    /// Makes a transaction id by asking `fill` for 12 random bytes.
    pub fn from_rng(fill: impl FnOnce(&mut [u8; 12])) -> Self {
        let mut bytes = [0u8; 12];
        fill(&mut bytes);
        TransactionId(bytes)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransactionId(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// The flags of a CHANGE-REQUEST attribute (RFC 5780 section 7.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ChangeRequest {
    /// Ask the server to answer from its other IP address.
    pub change_ip: bool,
    /// Ask the server to answer from its other port.
    pub change_port: bool,
}

/// CHANGE-REQUEST flag (in the value's last byte): answer from the other IP address.
pub const CHANGE_IP_FLAG: u8 = 0x04;
/// CHANGE-REQUEST flag (in the value's last byte): answer from the other port.
pub const CHANGE_PORT_FLAG: u8 = 0x02;

impl ChangeRequest {
    /// The length of a CHANGE-REQUEST value, in bytes.
    pub const VALUE_LEN: usize = 4;

    /// Reads a CHANGE-REQUEST value (4 bytes) correctly, unlike `stun_codec` 0.4.
    pub fn parse(value: &[u8]) -> Result<Self, Error> {
        let value: [u8; Self::VALUE_LEN] = value.try_into().map_err(|_| Error::BadAttribute {
            attr_type: attr::CHANGE_REQUEST,
            reason: "change-request value is not 4 bytes",
        })?;
        Ok(ChangeRequest {
            change_ip: value[3] & CHANGE_IP_FLAG != 0,
            change_port: value[3] & CHANGE_PORT_FLAG != 0,
        })
    }

    /// Appends the 4-byte value of this CHANGE-REQUEST.
    pub fn emit(&self, out: &mut BytesMut) {
        let mut flags = 0;
        if self.change_ip {
            flags |= CHANGE_IP_FLAG;
        }
        if self.change_port {
            flags |= CHANGE_PORT_FLAG;
        }
        out.put_slice(&[0, 0, 0, flags]);
    }
}

/// The longest SOFTWARE description a request may carry, in characters (RFC 5389
/// section 15.10 allows fewer than 128).
pub const MAX_SOFTWARE_CHARS: usize = 127;

/// A STUN Binding request: built checked, so that [`emit`](Self::emit) cannot fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The transaction id.
    pub txid: TransactionId,
    /// The CHANGE-REQUEST attribute, if any.
    pub change: Option<ChangeRequest>,
    software: Option<String>,
}

impl Request {
    /// A plain Binding request with the given transaction id.
    pub fn binding(txid: TransactionId) -> Self {
        Request {
            txid,
            change: None,
            software: None,
        }
    }

    /// Adds a CHANGE-REQUEST attribute with these flags.
    pub fn with_change(mut self, change_ip: bool, change_port: bool) -> Self {
        self.change = Some(ChangeRequest {
            change_ip,
            change_port,
        });
        self
    }

    /// Adds a SOFTWARE attribute.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when `software` has more than [`MAX_SOFTWARE_CHARS`] characters.
    pub fn with_software(mut self, software: impl Into<String>) -> Result<Self, Error> {
        let software = software.into();
        let chars = software.chars().count();
        if chars > MAX_SOFTWARE_CHARS {
            return Err(Error::Encode(format!(
                "software is {chars} characters, at most {MAX_SOFTWARE_CHARS} fit"
            )));
        }
        self.software = Some(software);
        Ok(self)
    }

    /// The SOFTWARE attribute, if any.
    pub fn software(&self) -> Option<&str> {
        self.software.as_deref()
    }

    /// Parses a datagram as a Binding request, with the same checks as
    /// [`Response::parse`]. CHANGE-REQUEST is read raw (see [`ChangeRequest::parse`]);
    /// an unknown comprehension-required attribute makes the request invalid.
    pub fn parse(bytes: &[u8]) -> Result<Request, Error> {
        let message = decode::<attr::RequestAttribute>(bytes)?;
        if message.class() != MessageClass::Request {
            return Err(Error::NotRequest);
        }
        check_binding(&message)?;
        let mut request = Request::binding(TransactionId(*message.transaction_id().as_bytes()));
        // SOFTWARE is the only attribute decoded through stun_codec; the first counts.
        request.software = message.attributes().next().map(|a| match a {
            attr::RequestAttribute::Software(s) => s.description().to_owned(),
        });
        for raw in message.unknown_attributes() {
            let t = raw.get_type();
            if t.as_u16() == attr::CHANGE_REQUEST {
                request.change = Some(ChangeRequest::parse(raw.value())?);
            } else if t.is_comprehension_required() {
                return Err(Error::UnknownRequired(t.as_u16()));
            }
        }
        Ok(request)
    }

    /// The length of the request's wire form, in bytes.
    pub fn emit_len(&self) -> usize {
        HEADER_LEN + self.attributes_len()
    }

    fn attributes_len(&self) -> usize {
        let software = self.software.as_ref().map_or(0, |s| 4 + padded(s.len()));
        let change = self.change.map_or(0, |_| 4 + ChangeRequest::VALUE_LEN);
        software + change
    }

    /// Appends the request's wire form: the header, then SOFTWARE and CHANGE-REQUEST
    /// when set, encoded by `stun_codec`.
    pub fn emit(&self, out: &mut BytesMut) {
        let mut message = Message::<attr::EmitAttribute>::new(
            MessageClass::Request,
            BINDING,
            stun_codec::TransactionId::new(self.txid.0),
        );
        if let Some(software) = &self.software {
            // `with_software` admitted only what SOFTWARE can carry.
            let software = Software::new(software.clone()).expect("software checked when built");
            message.add_attribute(software);
        }
        if let Some(change) = self.change {
            message.add_attribute(stun_codec::rfc5780::attributes::ChangeRequest::new(
                change.change_ip,
                change.change_port,
            ));
        }
        let wire = MessageEncoder::new()
            .encode_into_bytes(message)
            .expect("a checked binding request encodes");
        debug_assert_eq!(wire.len(), self.emit_len());
        out.extend_from_slice(&wire);
    }
}

/// `len` rounded up to the 4-byte boundary attributes are padded to.
fn padded(len: usize) -> usize {
    len.next_multiple_of(4)
}

/// The class of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// A success response.
    Success,
    /// An error response, with its ERROR-CODE.
    Error {
        /// The error code (300..=699).
        code: u16,
        /// The reason phrase.
        reason: String,
    },
}

/// Which attribute a response's mapped address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappedFrom {
    /// XOR-MAPPED-ADDRESS (RFC 5389), or its pre-standard twin 0x8020.
    XorMappedAddress,
    /// MAPPED-ADDRESS (RFC 3489 servers, or RFC 5389 servers for old clients).
    MappedAddress,
}

/// A parsed, checked Binding response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The transaction id it answers.
    pub txid: TransactionId,
    /// Success or error.
    pub class: Class,
    /// The reflexive address: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS. Always present
    /// in a success response.
    pub mapped: Option<SocketAddr>,
    /// Which attribute `mapped` came from.
    pub mapped_from: Option<MappedFrom>,
    /// The server's other address: OTHER-ADDRESS (RFC 5780), else CHANGED-ADDRESS
    /// (RFC 3489).
    pub other_address: Option<SocketAddr>,
    /// Where the server says it sent the response from: RESPONSE-ORIGIN (RFC 5780),
    /// else SOURCE-ADDRESS (RFC 3489).
    pub response_origin: Option<SocketAddr>,
    /// The server's SOFTWARE attribute.
    pub software: Option<String>,
}

/// Reads the transaction id of anything that looks like a STUN message, without
/// decoding it.
pub fn peek_txid(bytes: &[u8]) -> Option<TransactionId> {
    let id: [u8; 12] = bytes.get(8..HEADER_LEN)?.try_into().ok()?;
    Some(TransactionId(id))
}

impl Response {
    /// Parses a datagram as a Binding response.
    ///
    /// The length is checked before anything is allocated: a message over
    /// [`MAX_MESSAGE_LEN`] bytes, shorter than a header, or whose length field
    /// disagrees with the datagram is refused. Unknown comprehension-optional attributes
    /// are ignored; unknown comprehension-required ones make the response invalid
    /// (RFC 5389 section 7.3.3).
    pub fn parse(bytes: &[u8]) -> Result<Response, Error> {
        let message = decode::<ResponseAttribute>(bytes)?;
        match message.class() {
            MessageClass::Request => return Err(Error::NotResponse("request")),
            MessageClass::Indication => return Err(Error::NotResponse("indication")),
            MessageClass::SuccessResponse | MessageClass::ErrorResponse => {}
        }
        check_binding(&message)?;
        let mut seen = Seen::default();
        for a in message.attributes() {
            seen.known(a);
        }
        for raw in message.unknown_attributes() {
            seen.raw(raw)?;
        }
        seen.into_response(&message)
    }
}

/// The attributes of a response as they are read: the first of each kind counts.
#[derive(Default)]
struct Seen {
    xor_mapped: Option<SocketAddr>,
    plain_mapped: Option<SocketAddr>,
    other: Option<SocketAddr>,
    changed: Option<SocketAddr>,
    origin: Option<SocketAddr>,
    source: Option<SocketAddr>,
    software: Option<String>,
    error_code: Option<(u16, String)>,
}

impl Seen {
    /// An attribute `stun_codec` decoded.
    fn known(&mut self, a: &ResponseAttribute) {
        match a {
            ResponseAttribute::XorMappedAddress(x) => {
                self.xor_mapped.get_or_insert(x.address());
            }
            ResponseAttribute::XorMappedAddress2(x) => {
                self.xor_mapped.get_or_insert(x.address());
            }
            ResponseAttribute::MappedAddress(m) => {
                self.plain_mapped.get_or_insert(m.address());
            }
            ResponseAttribute::OtherAddress(o) => {
                self.other.get_or_insert(o.address());
            }
            ResponseAttribute::ResponseOrigin(o) => {
                self.origin.get_or_insert(o.address());
            }
            ResponseAttribute::Software(s) => {
                self.software
                    .get_or_insert_with(|| s.description().to_owned());
            }
            ResponseAttribute::ErrorCode(e) => {
                self.error_code
                    .get_or_insert_with(|| (e.code(), e.reason_phrase().to_owned()));
            }
            ResponseAttribute::MessageIntegrity(_) | ResponseAttribute::Fingerprint(_) => {}
        }
    }

    /// An attribute `stun_codec` does not know: RFC 3489's are read, an unknown
    /// comprehension-required one refuses the response (RFC 5389 section 7.3.3).
    fn raw(&mut self, raw: &RawAttribute) -> Result<(), Error> {
        let t = raw.get_type();
        match t.as_u16() {
            attr::CHANGED_ADDRESS if self.changed.is_none() => {
                self.changed = Some(attr::decode_plain_address(t.as_u16(), raw.value())?);
            }
            attr::SOURCE_ADDRESS if self.source.is_none() => {
                self.source = Some(attr::decode_plain_address(t.as_u16(), raw.value())?);
            }
            code if t.is_comprehension_required() && !attr::is_known_required(code) => {
                return Err(Error::UnknownRequired(code));
            }
            _ => {}
        }
        Ok(())
    }

    /// The response: RFC 5780's attributes win over RFC 3489's, XOR-MAPPED-ADDRESS over
    /// MAPPED-ADDRESS; a success needs a mapped address, an error its ERROR-CODE.
    fn into_response(self, message: &Message<ResponseAttribute>) -> Result<Response, Error> {
        let class = match message.class() {
            MessageClass::ErrorResponse => {
                let (code, reason) = self.error_code.ok_or(Error::MissingAttribute {
                    class: "error",
                    missing: "error-code",
                })?;
                Class::Error { code, reason }
            }
            _ => Class::Success,
        };
        let (mapped, mapped_from) = match (self.xor_mapped, self.plain_mapped) {
            (Some(a), _) => (Some(a), Some(MappedFrom::XorMappedAddress)),
            (None, Some(a)) => (Some(a), Some(MappedFrom::MappedAddress)),
            (None, None) => (None, None),
        };
        if class == Class::Success && mapped.is_none() {
            return Err(Error::MissingAttribute {
                class: "success",
                missing: "xor-mapped-address or mapped-address",
            });
        }
        Ok(Response {
            txid: TransactionId(*message.transaction_id().as_bytes()),
            class,
            mapped,
            mapped_from,
            other_address: self.other.or(self.changed),
            response_origin: self.origin.or(self.source),
            software: self.software,
        })
    }
}

/// Checks the frame of `bytes`, then decodes it with `stun_codec` into a message whose
/// known attributes are `A`.
fn decode<A: Attribute>(bytes: &[u8]) -> Result<Message<A>, Error> {
    check_frame(bytes)?;
    let decoded = MessageDecoder::<A>::new()
        .decode_from_bytes(bytes)
        .map_err(|e| Error::Decode(first_line(&e.to_string())))?;
    decoded.map_err(|broken| Error::Decode(first_line(&broken.error().to_string())))
}

/// Refuses a message of another method than Binding.
fn check_binding<A: Attribute>(message: &Message<A>) -> Result<(), Error> {
    if message.method() != BINDING {
        return Err(Error::WrongMethod(message.method().as_u16()));
    }
    Ok(())
}

/// Checks the frame of a STUN message before anything is decoded or allocated.
fn check_frame(bytes: &[u8]) -> Result<(), Error> {
    check_frame_up_to(bytes, MAX_MESSAGE_LEN)
}

/// Checks a STUN message's framing (size at most `max`, header, length field, magic
/// cookie) before anything reads its attributes; larger messages than a binding
/// response (a TURN Data indication) pass a larger `max`.
pub(crate) fn check_frame_up_to(bytes: &[u8], max: usize) -> Result<(), Error> {
    if bytes.len() > max {
        return Err(Error::TooLong { len: bytes.len() });
    }
    if bytes.len() < HEADER_LEN {
        return Err(Error::Truncated { len: bytes.len() });
    }
    if bytes[0] & 0xc0 != 0 {
        return Err(Error::NotStun("the two top bits are not zero"));
    }
    let declared = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    let actual = bytes.len() - HEADER_LEN;
    if declared != actual || declared % 4 != 0 {
        return Err(Error::LengthMismatch { declared, actual });
    }
    if u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) != MAGIC_COOKIE {
        return Err(Error::NotStun("wrong magic cookie"));
    }
    Ok(())
}

/// trackable errors print a history after the first line; keep the message short.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_lowercase()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// RFC 5769 section 2.2, "Sample IPv4 Response".
    pub(crate) const RFC5769_V4: &[u8] = &[
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 section 2.3, "Sample IPv6 Response".
    pub(crate) const RFC5769_V6: &[u8] = &[
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    /// The transaction id of the RFC 5769 vectors.
    pub(crate) const RFC5769_TXID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    /// Builds a Binding response by hand: header plus (type, value) attributes.
    pub(crate) fn response(class_bits: u16, txid: [u8; 12], attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(0x0001 | class_bits).to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&txid);
        out.extend_from_slice(&body);
        out
    }

    /// The value of a MAPPED-ADDRESS-format attribute for an IPv4 address.
    pub(crate) fn plain_v4(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut v = vec![0, 1];
        v.extend_from_slice(&port.to_be_bytes());
        v.extend_from_slice(&ip);
        v
    }

    pub(crate) const SUCCESS: u16 = 0x0100;

    #[test]
    fn rfc5769_ipv4_response_decodes() {
        let r = Response::parse(RFC5769_V4).unwrap();
        assert_eq!(r.txid, TransactionId(RFC5769_TXID));
        assert_eq!(r.class, Class::Success);
        assert_eq!(
            r.mapped,
            Some(SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), 32853))
        );
        assert_eq!(r.mapped_from, Some(MappedFrom::XorMappedAddress));
        assert_eq!(r.software.as_deref(), Some("test vector"));
        assert_eq!(r.other_address, None);
    }

    #[test]
    fn rfc5769_ipv6_response_decodes() {
        let r = Response::parse(RFC5769_V6).unwrap();
        let ip: Ipv6Addr = "2001:db8:1234:5678:11:2233:4455:6677".parse().unwrap();
        assert_eq!(r.mapped, Some(SocketAddr::new(IpAddr::V6(ip), 32853)));
        assert_eq!(r.txid, TransactionId(RFC5769_TXID));
    }

    #[test]
    fn corrupted_fingerprint_is_refused() {
        let mut bytes = RFC5769_V4.to_vec();
        *bytes.last_mut().unwrap() ^= 1;
        assert!(matches!(Response::parse(&bytes), Err(Error::Decode(_))));
    }

    #[test]
    fn mapped_address_only_is_the_fallback() {
        let bytes = response(
            SUCCESS,
            [7; 12],
            &[(0x0001, plain_v4([203, 0, 113, 5], 4000))],
        );
        let r = Response::parse(&bytes).unwrap();
        assert_eq!(r.mapped, Some("203.0.113.5:4000".parse().unwrap()));
        assert_eq!(r.mapped_from, Some(MappedFrom::MappedAddress));
    }

    #[test]
    fn rfc3489_addresses_are_read_and_rfc5780_ones_win_over_them() {
        let rfc3489 = [
            (0x0001, plain_v4([203, 0, 113, 5], 4000)),
            (0x0004, plain_v4([198, 51, 100, 1], 3478)),
            (0x0005, plain_v4([198, 51, 100, 2], 3479)),
        ];
        let rfc5780 = [
            (0x802b, plain_v4([198, 51, 100, 9], 1111)),
            (0x802c, plain_v4([198, 51, 100, 10], 2222)),
        ];
        let cases = [
            (&rfc3489[..0], "198.51.100.1:3478", "198.51.100.2:3479"),
            (&rfc5780[..], "198.51.100.9:1111", "198.51.100.10:2222"),
        ];
        for (extra, origin, other) in cases {
            let attrs: Vec<_> = rfc3489.iter().chain(extra).cloned().collect();
            let r = Response::parse(&response(SUCCESS, [7; 12], &attrs)).unwrap();
            assert_eq!(r.response_origin, Some(origin.parse().unwrap()));
            assert_eq!(r.other_address, Some(other.parse().unwrap()));
        }
    }

    #[test]
    fn a_request_parses_back_and_an_oversized_software_is_refused_when_built() {
        let request = Request::binding(TransactionId([3; 12]))
            .with_software("p2pipe 0.1")
            .unwrap()
            .with_change(false, true);
        assert_eq!(Request::parse(&wire(&request)), Ok(request.clone()));
        let plain = Request::binding(TransactionId([4; 12]));
        assert_eq!(Request::parse(&wire(&plain)), Ok(plain));
        assert_eq!(
            Request::parse(RFC5769_V4),
            Err(Error::NotRequest),
            "a response is not a request"
        );
        let long = "x".repeat(MAX_SOFTWARE_CHARS + 1);
        assert!(matches!(
            request.clone().with_software(long),
            Err(Error::Encode(_))
        ));
        let longest = "é".repeat(MAX_SOFTWARE_CHARS);
        let request = request.with_software(longest.clone()).unwrap();
        assert_eq!(
            Request::parse(&wire(&request)).unwrap().software(),
            Some(&*longest)
        );
    }

    #[test]
    fn unknown_optional_ignored_unknown_required_refused() {
        let mapped = (0x0001, plain_v4([203, 0, 113, 5], 4000));
        let ok = response(SUCCESS, [7; 12], &[mapped.clone(), (0xc0de, vec![1, 2, 3])]);
        assert!(Response::parse(&ok).is_ok());
        let bad = response(SUCCESS, [7; 12], &[mapped, (0x7f01, vec![1, 2, 3, 4])]);
        assert_eq!(Response::parse(&bad), Err(Error::UnknownRequired(0x7f01)));
    }

    #[test]
    fn error_response_carries_its_code() {
        let mut v = vec![0, 0, 4, 20];
        v.extend_from_slice(b"Unknown Attribute");
        let bytes = response(0x0110, [7; 12], &[(0x0009, v)]);
        let r = Response::parse(&bytes).unwrap();
        assert_eq!(
            r.class,
            Class::Error {
                code: 420,
                reason: "Unknown Attribute".into()
            }
        );
        assert_eq!(r.mapped, None);
    }

    #[test]
    fn success_without_mapped_address_is_refused() {
        let bytes = response(SUCCESS, [7; 12], &[]);
        assert!(matches!(
            Response::parse(&bytes),
            Err(Error::MissingAttribute {
                class: "success",
                ..
            })
        ));
    }

    #[test]
    fn bad_frames_are_refused_without_panic() {
        assert_eq!(Response::parse(&[]), Err(Error::Truncated { len: 0 }));
        assert_eq!(
            Response::parse(&RFC5769_V4[..30]),
            Err(Error::LengthMismatch {
                declared: 60,
                actual: 10
            })
        );
        let mut big = RFC5769_V4.to_vec();
        big.resize(1501, 0);
        assert_eq!(Response::parse(&big), Err(Error::TooLong { len: 1501 }));
        let mut cookie = RFC5769_V4.to_vec();
        cookie[4] = 0;
        assert!(matches!(Response::parse(&cookie), Err(Error::NotStun(_))));
        // An attribute whose length runs past the end of the message.
        let mut overrun = response(SUCCESS, [7; 12], &[(0x0001, plain_v4([1, 2, 3, 4], 5))]);
        overrun[22..24].copy_from_slice(&40u16.to_be_bytes());
        assert!(matches!(Response::parse(&overrun), Err(Error::Decode(_))));
        // Every prefix and a run of byte flips of a valid message: errors, never panics.
        for n in 0..RFC5769_V6.len() {
            assert!(Response::parse(&RFC5769_V6[..n]).is_err());
        }
        for i in 20..RFC5769_V6.len() {
            let mut b = RFC5769_V6.to_vec();
            b[i] ^= 0xff;
            let _ = Response::parse(&b);
        }
    }

    /// The wire form of `request`, checked against its announced length.
    pub(crate) fn wire(request: &Request) -> BytesMut {
        let mut out = BytesMut::new();
        request.emit(&mut out);
        assert_eq!(out.len(), request.emit_len());
        out
    }

    #[test]
    fn a_request_is_not_a_response() {
        let bytes = wire(&Request::binding(TransactionId([1; 12])));
        assert_eq!(Response::parse(&bytes), Err(Error::NotResponse("request")));
    }

    #[test]
    fn binding_request_bytes() {
        let txid = TransactionId::from_rng(|b| b.copy_from_slice(&[9; 12]));
        let bytes = wire(&Request::binding(txid));
        assert_eq!(bytes.len(), 20);
        assert_eq!(&bytes[0..4], &[0x00, 0x01, 0x00, 0x00]);
        assert_eq!(&bytes[4..8], &MAGIC_COOKIE.to_be_bytes());
        assert_eq!(&bytes[8..20], &[9; 12]);
    }

    #[test]
    fn change_request_bits_on_the_wire() {
        let cases = [
            (true, false, 0x04),
            (false, true, 0x02),
            (true, true, 0x06),
            (false, false, 0x00),
        ];
        for (ip, port, flags) in cases {
            let bytes = wire(&Request::binding(TransactionId([1; 12])).with_change(ip, port));
            assert_eq!(&bytes[2..4], &[0x00, 0x08], "message length");
            assert_eq!(&bytes[20..], &[0x00, 0x03, 0x00, 0x04, 0, 0, 0, flags]);
            let decoded = ChangeRequest::parse(&bytes[24..28]).unwrap();
            assert_eq!((decoded.change_ip, decoded.change_port), (ip, port));
            let change = ChangeRequest {
                change_ip: ip,
                change_port: port,
            };
            let mut value = BytesMut::new();
            change.emit(&mut value);
            assert_eq!(&value[..], [0, 0, 0, flags]);
        }
        assert!(ChangeRequest::parse(&[0, 4]).is_err());
    }

    #[test]
    fn software_is_encoded() {
        let request = Request::binding(TransactionId([1; 12]))
            .with_software("p2pipe")
            .unwrap()
            .with_change(true, true);
        let bytes = wire(&request);
        assert_eq!(&bytes[20..24], &[0x80, 0x22, 0x00, 0x06]);
        assert_eq!(&bytes[24..30], b"p2pipe");
        assert_eq!(&bytes[32..40], &[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0x06]);
        assert_eq!(
            usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
            bytes.len() - 20
        );
    }

    #[test]
    fn errors_are_lowercase() {
        let e = Error::LengthMismatch {
            declared: 1,
            actual: 2,
        };
        let s = e.to_string();
        assert_eq!(s, s.to_lowercase());
    }
}
