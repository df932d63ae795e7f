//! Attribute sets handed to `stun_codec`, and the raw attribute formats it gets wrong
//! or does not know.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use stun_codec::rfc5389::attributes::{
    ErrorCode, Fingerprint, MappedAddress, MessageIntegrity, Software, XorMappedAddress,
    XorMappedAddress2,
};
use stun_codec::rfc5780::attributes::{OtherAddress, ResponseOrigin};

use super::Error;

/// MAPPED-ADDRESS (RFC 5389).
pub(crate) const MAPPED_ADDRESS: u16 = 0x0001;
/// RESPONSE-ADDRESS (RFC 3489, deprecated).
pub(crate) const RESPONSE_ADDRESS: u16 = 0x0002;
/// CHANGE-REQUEST (RFC 5780 and RFC 3489).
pub(crate) const CHANGE_REQUEST: u16 = 0x0003;
/// SOURCE-ADDRESS (RFC 3489): where the response was sent from.
pub(crate) const SOURCE_ADDRESS: u16 = 0x0004;
/// CHANGED-ADDRESS (RFC 3489): the server's other IP and port.
pub(crate) const CHANGED_ADDRESS: u16 = 0x0005;
/// REFLECTED-FROM (RFC 3489).
pub(crate) const REFLECTED_FROM: u16 = 0x000b;
/// PADDING (RFC 5780).
pub(crate) const PADDING: u16 = 0x0026;
/// RESPONSE-PORT (RFC 5780).
pub(crate) const RESPONSE_PORT: u16 = 0x0027;

// The decoding set. CHANGE-REQUEST is left out on purpose: stun_codec 0.4 decodes its
// flags from the wrong bits, so it stays a raw attribute. SOURCE-ADDRESS and
// CHANGED-ADDRESS are unknown to stun_codec and are read raw too.
stun_codec::define_attribute_enums!(
    ResponseAttribute,
    ResponseAttributeDecoder,
    ResponseAttributeEncoder,
    [
        MappedAddress,
        XorMappedAddress,
        XorMappedAddress2,
        ErrorCode,
        Software,
        MessageIntegrity,
        Fingerprint,
        OtherAddress,
        ResponseOrigin
    ]
);

/// The comprehension-required attributes this client knows about but does not decode
/// with `stun_codec`: a response carrying one of them is still understood.
pub(crate) fn is_known_required(attr_type: u16) -> bool {
    matches!(
        attr_type,
        MAPPED_ADDRESS
            | RESPONSE_ADDRESS
            | CHANGE_REQUEST
            | SOURCE_ADDRESS
            | CHANGED_ADDRESS
            | REFLECTED_FROM
            | PADDING
            | RESPONSE_PORT
    )
}

/// Decodes the value of an address attribute in the MAPPED-ADDRESS format (RFC 5389
/// section 15.1), which RFC 3489's SOURCE-ADDRESS and CHANGED-ADDRESS share.
pub(crate) fn decode_plain_address(attr_type: u16, value: &[u8]) -> Result<SocketAddr, Error> {
    let bad = |reason| Error::BadAttribute { attr_type, reason };
    if value.len() < 4 {
        return Err(bad("address attribute shorter than 4 bytes"));
    }
    let port = u16::from_be_bytes([value[2], value[3]]);
    let ip = match (value[1], &value[4..]) {
        (0x01, b) if b.len() == 4 => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        (0x02, b) if b.len() == 16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(b);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        (0x01 | 0x02, _) => return Err(bad("address length does not match its family")),
        _ => return Err(bad("unknown address family")),
    };
    Ok(SocketAddr::new(ip, port))
}

// The decoding set of a Binding request. CHANGE-REQUEST stays raw, as in responses
// (stun_codec 0.4 decodes its flags from the wrong bits).
stun_codec::define_attribute_enums!(
    RequestAttribute,
    RequestAttributeDecoder,
    RequestAttributeEncoder,
    [Software]
);

// The encoding set of a Binding request (`Request::emit`). stun_codec's CHANGE-REQUEST
// *encoder* is right (change IP = 0x04, change port = 0x02); only its decoder is wrong.
stun_codec::define_attribute_enums!(
    EmitAttribute,
    EmitAttributeDecoder,
    EmitAttributeEncoder,
    [Software, ChangeRequest]
);

use stun_codec::rfc5780::attributes::ChangeRequest;
