//! PCP messages (RFC 6887), on bytes: the MAP request this client sends and the
//! gateway's answer.
//!
//! Addresses travel as 16 bytes, IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`). A MAP
//! request names the client's own address (which the gateway checks against the
//! datagram's source), a random 96-bit nonce that renewals and the deletion repeat, the
//! protocol and internal port, and a suggested external port and address. Deleting is a
//! MAP with lifetime 0 and the same nonce. Options are not sent; options in an answer
//! are skipped.

use std::net::{IpAddr, Ipv6Addr};

use bytes::{BufMut, BytesMut};

use super::{Error, Method};
use crate::pipe::Proto;

/// The protocol version this module speaks.
pub const VERSION: u8 = 2;
/// The largest PCP message (RFC 6887, 7).
pub const MAX_MESSAGE_LEN: usize = 1100;
/// The MAP opcode.
pub const OP_MAP: u8 = 1;
/// The length of a MAP request or of a full MAP answer.
pub const MAP_LEN: usize = HEADER_LEN + MAP_PAYLOAD_LEN;

const HEADER_LEN: usize = 24;
const MAP_PAYLOAD_LEN: usize = 36;
const RESPONSE_BIT: u8 = 0x80;
const IANA_TCP: u8 = 6;
const IANA_UDP: u8 = 17;

/// A MAP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRequest {
    /// Seconds asked for; 0 deletes.
    pub lifetime: u32,
    /// This machine's address, as the gateway sees the request come from it.
    pub client: IpAddr,
    /// The nonce that ties renewals and the deletion to this mapping.
    pub nonce: [u8; 12],
    /// UDP or TCP.
    pub proto: Proto,
    /// The port on this machine (not 0: this client maps one port).
    pub internal_port: u16,
    /// The external port asked for (0: any).
    pub external_port: u16,
    /// The external address asked for (unspecified: any).
    pub external_ip: IpAddr,
}

impl MapRequest {
    /// The length of the wire form, in bytes.
    pub fn emit_len(&self) -> usize {
        MAP_LEN
    }

    /// Appends the wire form to `out`.
    pub fn emit(&self, out: &mut BytesMut) {
        out.reserve(MAP_LEN);
        out.put_u8(VERSION);
        out.put_u8(OP_MAP);
        out.put_u16(0);
        out.put_u32(self.lifetime);
        out.put_slice(&to_wire(self.client));
        out.put_slice(&self.nonce);
        out.put_u8(iana(self.proto));
        out.put_slice(&[0; 3]);
        out.put_u16(self.internal_port);
        out.put_u16(self.external_port);
        out.put_slice(&to_wire(self.external_ip));
    }
}

/// The MAP part of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapBody {
    /// The nonce of the request answered.
    pub nonce: [u8; 12],
    /// The IANA protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    /// The port on this machine.
    pub internal_port: u16,
    /// The external port granted.
    pub external_port: u16,
    /// The external address granted.
    pub external_ip: IpAddr,
}

/// A gateway's answer to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The opcode answered (without the response bit).
    pub opcode: u8,
    /// The result code: 0 is success.
    pub result: u8,
    /// Seconds granted (on an error: how long the error is likely to last).
    pub lifetime: u32,
    /// Seconds since the gateway's mapping table was (re)initialised.
    pub epoch: u32,
    /// The MAP part, when the answer is to a MAP and carries one.
    pub map: Option<MapBody>,
}

/// What a datagram from the PCP port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A PCP answer.
    Pcp(Response),
    /// An answer of another version: a NAT-PMP-only gateway answers a PCP request with a
    /// NAT-PMP "unsupported version" (version 0), RFC 6887, 9.
    OtherVersion(u8),
}

impl Answer {
    /// Reads an answer: version 2 with the response bit set, at most 1100 bytes and a
    /// multiple of 4; the MAP part is read when the opcode is MAP and it is present
    /// (an error answer may omit it). Anything after it (options) is skipped.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] for a datagram that is not a PCP answer.
    pub fn parse(bytes: &[u8]) -> Result<Answer, Error> {
        let bad = |reason| Error::Malformed {
            method: Method::Pcp,
            reason,
        };
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(bad("longer than 1100 bytes"));
        }
        if bytes.len() < 4 {
            return Err(bad("shorter than any answer"));
        }
        if bytes[0] != VERSION {
            return Ok(Answer::OtherVersion(bytes[0]));
        }
        if bytes.len() < HEADER_LEN {
            return Err(bad("shorter than the 24-byte header"));
        }
        if !bytes.len().is_multiple_of(4) {
            return Err(bad("not a multiple of 4 bytes"));
        }
        if bytes[1] & RESPONSE_BIT == 0 {
            return Err(bad("a request, not an answer"));
        }
        let opcode = bytes[1] & !RESPONSE_BIT;
        let result = bytes[3];
        let map = match (opcode, bytes.len() >= MAP_LEN) {
            (OP_MAP, true) => Some(map_body(&bytes[HEADER_LEN..MAP_LEN])),
            (OP_MAP, false) if result == 0 => return Err(bad("a map answer without its payload")),
            _ => None,
        };
        Ok(Answer::Pcp(Response {
            opcode,
            result,
            lifetime: be32(&bytes[4..8]),
            epoch: be32(&bytes[8..12]),
            map,
        }))
    }
}

fn map_body(p: &[u8]) -> MapBody {
    let mut nonce = [0; 12];
    nonce.copy_from_slice(&p[..12]);
    let mut ip = [0; 16];
    ip.copy_from_slice(&p[20..36]);
    MapBody {
        nonce,
        protocol: p[12],
        internal_port: u16::from_be_bytes([p[16], p[17]]),
        external_port: u16::from_be_bytes([p[18], p[19]]),
        external_ip: from_wire(ip),
    }
}

/// The IANA protocol number of `proto`.
pub fn iana(proto: Proto) -> u8 {
    match proto {
        Proto::Udp => IANA_UDP,
        Proto::Tcp => IANA_TCP,
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn to_wire(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn from_wire(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// What a PCP result code means (RFC 6887, 7.4).
pub fn describe(code: u8) -> &'static str {
    match code {
        0 => "success",
        1 => "unsupported version",
        2 => "not authorized",
        3 => "malformed request",
        4 => "unsupported opcode",
        5 => "unsupported option",
        6 => "malformed option",
        7 => "network failure",
        8 => "no resources",
        9 => "unsupported protocol",
        10 => "user exceeded quota",
        11 => "cannot provide external address",
        12 => "address mismatch",
        13 => "excessive remote peers",
        _ => "unknown result code",
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// A MAP of UDP port 5000 from 198.18.1.2, nonce `[7; 12]`, 60 s.
    pub(in super::super) fn request() -> MapRequest {
        MapRequest {
            lifetime: 60,
            client: Ipv4Addr::new(198, 18, 1, 2).into(),
            nonce: [7; 12],
            proto: Proto::Udp,
            internal_port: 5000,
            external_port: 5000,
            external_ip: Ipv4Addr::UNSPECIFIED.into(),
        }
    }

    /// The answer a gateway would send to `request()`, with `result`.
    fn answer(result: u8) -> Vec<u8> {
        let mut b = BytesMut::new();
        request().emit(&mut b);
        b[1] |= RESPONSE_BIT;
        b[3] = result;
        b[8..12].copy_from_slice(&99u32.to_be_bytes());
        b[12..24].fill(0);
        b[42..44].copy_from_slice(&6000u16.to_be_bytes());
        b[44..60].copy_from_slice(&to_wire(Ipv4Addr::new(203, 0, 113, 5).into()));
        b.to_vec()
    }

    #[test]
    fn a_map_request_has_the_rfc_layout() {
        let mut b = BytesMut::new();
        request().emit(&mut b);
        assert_eq!(b.len(), request().emit_len());
        assert_eq!(&b[..8], &[2, 1, 0, 0, 0, 0, 0, 60]);
        assert_eq!(&b[8..24], &to_wire(Ipv4Addr::new(198, 18, 1, 2).into()));
        assert_eq!(&b[18..20], &[0xff, 0xff]);
        assert_eq!(&b[24..36], &[7; 12]);
        assert_eq!(&b[36..40], &[17, 0, 0, 0]);
        assert_eq!(&b[40..44], &[0x13, 0x88, 0x13, 0x88]);
    }

    #[test]
    fn an_answer_parses_with_its_map_part() {
        let Answer::Pcp(r) = Answer::parse(&answer(0)).unwrap() else {
            panic!("not pcp")
        };
        assert_eq!(
            (r.opcode, r.result, r.lifetime, r.epoch),
            (OP_MAP, 0, 60, 99)
        );
        let m = r.map.unwrap();
        assert_eq!((m.nonce, m.protocol, m.internal_port), ([7; 12], 17, 5000));
        assert_eq!(m.external_port, 6000);
        assert_eq!(m.external_ip, IpAddr::from([203, 0, 113, 5]));
        // Options after the MAP part are skipped.
        let mut with_option = answer(0);
        with_option.extend_from_slice(&[0x80, 0, 0, 0]);
        assert!(matches!(Answer::parse(&with_option), Ok(Answer::Pcp(_))));
    }

    #[test]
    fn a_nat_pmp_answer_is_another_version() {
        let natpmp = [0, 129, 0, 1, 0, 0, 0, 5];
        assert_eq!(Answer::parse(&natpmp).unwrap(), Answer::OtherVersion(0));
    }

    #[test]
    fn an_error_answer_may_omit_the_map_part() {
        let short = &answer(8)[..HEADER_LEN];
        let Answer::Pcp(r) = Answer::parse(short).unwrap() else {
            panic!("not pcp")
        };
        assert_eq!((r.result, r.map), (8, None));
        assert_eq!(describe(r.result), "no resources");
    }

    #[test]
    fn malformed_answers_are_refused() {
        let full = answer(0);
        let mut request_bit_off = full.clone();
        request_bit_off[1] &= !RESPONSE_BIT;
        for bad in [
            &full[..3],
            &full[..20],
            &full[..HEADER_LEN],
            &full[..59],
            &request_bit_off[..],
            &[2u8; 1104][..],
        ] {
            assert!(
                matches!(Answer::parse(bad), Err(Error::Malformed { .. })),
                "{} bytes",
                bad.len()
            );
        }
    }
}
