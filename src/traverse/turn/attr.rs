//! The attributes and methods of TURN messages: stun_codec's RFC 5389 and RFC 5766 sets,
//! plus RFC 6062's CONNECTION-ID and methods, which stun_codec does not have.

use bytecodec::fixnum::{U32beDecoder, U32beEncoder};
use bytecodec::{ByteCount, Decode, Encode, Eos, SizedEncode, TryTaggedDecode};
use stun_codec::rfc5389::attributes::{
    ErrorCode, Fingerprint, MessageIntegrity, Nonce, Realm, Software, Username, XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc8656::attributes::RequestedAddressFamily;
use stun_codec::{Attribute, AttributeType, Method};

/// Allocate (RFC 5766).
pub(crate) const ALLOCATE: Method = stun_codec::rfc5766::methods::ALLOCATE;
/// Refresh (RFC 5766).
pub(crate) const REFRESH: Method = stun_codec::rfc5766::methods::REFRESH;
/// Send indication (RFC 5766).
pub(crate) const SEND: u16 = 0x0006;
/// Data indication (RFC 5766).
pub(crate) const DATA: u16 = 0x0007;
/// CreatePermission (RFC 5766).
pub(crate) const CREATE_PERMISSION: Method = stun_codec::rfc5766::methods::CREATE_PERMISSION;
/// ChannelBind (RFC 5766).
pub(crate) const CHANNEL_BIND: Method = stun_codec::rfc5766::methods::CHANNEL_BIND;
/// Connect (RFC 6062 section 6.1).
pub(crate) const CONNECT: u16 = 0x000a;
/// ConnectionBind (RFC 6062 section 6.1).
pub(crate) const CONNECTION_BIND: u16 = 0x000b;
/// ConnectionAttempt indication (RFC 6062 section 6.1).
pub(crate) const CONNECTION_ATTEMPT: u16 = 0x000c;

/// XOR-PEER-ADDRESS (RFC 5766).
pub(crate) const XOR_PEER_ADDRESS: u16 = 0x0012;
/// DATA (RFC 5766).
pub(crate) const DATA_ATTR: u16 = 0x0013;
/// REALM (RFC 5389).
pub(crate) const REALM: u16 = 0x0014;
/// NONCE (RFC 5389).
pub(crate) const NONCE: u16 = 0x0015;

/// The longest REALM or NONCE value RFC 5389 allows (763 bytes); a longer one is refused
/// before it is decoded.
pub(crate) const MAX_REALM_OR_NONCE: usize = 763;

/// The IANA protocol number of UDP, for REQUESTED-TRANSPORT.
pub(crate) const PROTO_UDP: u8 = 17;
/// The IANA protocol number of TCP, for REQUESTED-TRANSPORT (RFC 6062).
pub(crate) const PROTO_TCP: u8 = 6;

/// CONNECTION-ID (RFC 6062 section 6.2.1): the server's 32-bit name for one TCP
/// connection to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u32);

impl ConnectionId {
    /// The attribute's type.
    pub(crate) const CODEPOINT: u16 = 0x002a;
}

impl Attribute for ConnectionId {
    type Decoder = ConnectionIdDecoder;
    type Encoder = ConnectionIdEncoder;

    fn get_type(&self) -> AttributeType {
        AttributeType::new(Self::CODEPOINT)
    }
}

/// Decodes [`ConnectionId`].
#[derive(Debug, Default)]
pub struct ConnectionIdDecoder(U32beDecoder);

impl Decode for ConnectionIdDecoder {
    type Item = ConnectionId;

    fn decode(&mut self, buf: &[u8], eos: Eos) -> bytecodec::Result<usize> {
        self.0.decode(buf, eos)
    }

    fn finish_decoding(&mut self) -> bytecodec::Result<Self::Item> {
        self.0.finish_decoding().map(ConnectionId)
    }

    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl TryTaggedDecode for ConnectionIdDecoder {
    type Tag = AttributeType;

    fn try_start_decoding(&mut self, attr_type: Self::Tag) -> bytecodec::Result<bool> {
        Ok(attr_type.as_u16() == ConnectionId::CODEPOINT)
    }
}

/// Encodes [`ConnectionId`].
#[derive(Debug, Default)]
pub struct ConnectionIdEncoder(U32beEncoder);

impl Encode for ConnectionIdEncoder {
    type Item = ConnectionId;

    fn encode(&mut self, buf: &mut [u8], eos: Eos) -> bytecodec::Result<usize> {
        self.0.encode(buf, eos)
    }

    fn start_encoding(&mut self, item: Self::Item) -> bytecodec::Result<()> {
        self.0.start_encoding(item.0)
    }

    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl SizedEncode for ConnectionIdEncoder {
    fn exact_requiring_bytes(&self) -> u64 {
        self.0.exact_requiring_bytes()
    }
}

// Every attribute a TURN client writes or reads through stun_codec.
stun_codec::define_attribute_enums!(
    TurnAttribute,
    TurnAttributeDecoder,
    TurnAttributeEncoder,
    [
        Username,
        Realm,
        Nonce,
        MessageIntegrity,
        Fingerprint,
        ErrorCode,
        Software,
        XorMappedAddress,
        XorRelayAddress,
        XorPeerAddress,
        Lifetime,
        RequestedTransport,
        ChannelNumber,
        RequestedAddressFamily,
        ConnectionId
    ]
);
