//! NAT-PMP messages (RFC 6886), on bytes: the two requests this client sends and the
//! gateway's answers to them.
//!
//! A MAP request asks for a mapping of one internal port; its answer carries the external
//! port and the lifetime granted, but not the external address, which a separate
//! external-address request returns. Deleting is a MAP with lifetime 0 and suggested
//! external port 0 (RFC 6886, 3.4).

use std::net::Ipv4Addr;

use bytes::{BufMut, BytesMut};

use super::{Error, Method};
use crate::pipe::Proto;

/// The protocol version this module speaks.
pub const VERSION: u8 = 0;
/// The port a NAT-PMP (and PCP) server listens on.
pub const SERVER_PORT: u16 = 5351;
/// The largest answer accepted: a MAP answer is 16 bytes; RFC 6886 lets a client ignore
/// longer packets, and this one refuses them.
pub const MAX_RESPONSE_LEN: usize = 16;

const OP_EXTERNAL: u8 = 0;
const OP_MAP_UDP: u8 = 1;
const OP_MAP_TCP: u8 = 2;
const RESPONSE_BIT: u8 = 0x80;

/// A request to a NAT-PMP gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// What is your external address?
    ExternalAddress,
    /// Map `internal_port` for `proto`, preferably to `external_port`, for `lifetime`
    /// seconds (0 deletes).
    Map {
        /// UDP or TCP.
        proto: Proto,
        /// The port on this machine.
        internal_port: u16,
        /// The external port asked for (0: any).
        external_port: u16,
        /// Seconds; 0 deletes the mapping.
        lifetime: u32,
    },
}

impl Request {
    /// The opcode of this request.
    pub fn opcode(&self) -> u8 {
        match self {
            Request::ExternalAddress => OP_EXTERNAL,
            Request::Map {
                proto: Proto::Udp, ..
            } => OP_MAP_UDP,
            Request::Map {
                proto: Proto::Tcp, ..
            } => OP_MAP_TCP,
        }
    }

    /// The length of the wire form, in bytes.
    pub fn emit_len(&self) -> usize {
        match self {
            Request::ExternalAddress => 2,
            Request::Map { .. } => 12,
        }
    }

    /// Appends the wire form to `out`.
    pub fn emit(&self, out: &mut BytesMut) {
        out.reserve(self.emit_len());
        out.put_u8(VERSION);
        out.put_u8(self.opcode());
        if let Request::Map {
            internal_port,
            external_port,
            lifetime,
            ..
        } = *self
        {
            out.put_u16(0);
            out.put_u16(internal_port);
            out.put_u16(external_port);
            out.put_u32(lifetime);
        }
    }
}

/// What an answer says, past its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// The answer to [`Request::ExternalAddress`].
    ExternalAddress(Ipv4Addr),
    /// The answer to [`Request::Map`].
    Map {
        /// UDP or TCP.
        proto: Proto,
        /// The port on this machine.
        internal_port: u16,
        /// The external port granted.
        external_port: u16,
        /// Seconds granted.
        lifetime: u32,
    },
    /// An error answer too short to carry the body (RFC 6886 lets a gateway send just
    /// the header of an answer with a non-zero result code).
    None,
}

/// A gateway's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The opcode of the request answered (without the response bit).
    pub opcode: u8,
    /// The result code: 0 is success.
    pub result: u16,
    /// Seconds since the gateway's mapping table was (re)initialised.
    pub epoch: u32,
    /// What it says.
    pub body: Body,
}

impl Response {
    /// Reads an answer. The version must be 0 and the response bit set; an answer with a
    /// non-zero result code may stop after its 8-byte header.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] for a datagram that is not a NAT-PMP answer.
    pub fn parse(bytes: &[u8]) -> Result<Response, Error> {
        let bad = |reason| Error::Malformed {
            method: Method::NatPmp,
            reason,
        };
        if bytes.len() > MAX_RESPONSE_LEN {
            return Err(bad("longer than any answer"));
        }
        if bytes.len() < 8 {
            return Err(bad("shorter than the 8-byte header"));
        }
        if bytes[0] != VERSION {
            return Err(bad("not version 0"));
        }
        if bytes[1] & RESPONSE_BIT == 0 {
            return Err(bad("a request, not an answer"));
        }
        let opcode = bytes[1] & !RESPONSE_BIT;
        let result = u16::from_be_bytes([bytes[2], bytes[3]]);
        let epoch = be32(&bytes[4..8]);
        let body = match (opcode, bytes.len()) {
            (_, 8) if result != 0 => Body::None,
            (OP_EXTERNAL, 12) => Body::ExternalAddress(Ipv4Addr::from(be32(&bytes[8..12]))),
            (OP_MAP_UDP | OP_MAP_TCP, 16) => Body::Map {
                proto: if opcode == OP_MAP_UDP {
                    Proto::Udp
                } else {
                    Proto::Tcp
                },
                internal_port: u16::from_be_bytes([bytes[8], bytes[9]]),
                external_port: u16::from_be_bytes([bytes[10], bytes[11]]),
                lifetime: be32(&bytes[12..16]),
            },
            (OP_EXTERNAL | OP_MAP_UDP | OP_MAP_TCP, _) => {
                return Err(bad("wrong length for its opcode"))
            }
            _ => return Err(bad("unknown opcode")),
        };
        Ok(Response {
            opcode,
            result,
            epoch,
            body,
        })
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// What a NAT-PMP result code means (RFC 6886, 3.5).
pub fn describe(code: u16) -> &'static str {
    match code {
        0 => "success",
        1 => "unsupported version",
        2 => "not authorized or refused",
        3 => "network failure",
        4 => "out of resources",
        5 => "unsupported opcode",
        _ => "unknown result code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(r: Request) -> Vec<u8> {
        let mut b = BytesMut::new();
        r.emit(&mut b);
        assert_eq!(b.len(), r.emit_len());
        b.to_vec()
    }

    #[test]
    fn requests_have_the_rfc_layout() {
        assert_eq!(emit(Request::ExternalAddress), [0, 0]);
        let map = Request::Map {
            proto: Proto::Tcp,
            internal_port: 5000,
            external_port: 6000,
            lifetime: 7200,
        };
        assert_eq!(
            emit(map),
            [0, 2, 0, 0, 0x13, 0x88, 0x17, 0x70, 0, 0, 0x1c, 0x20]
        );
    }

    #[test]
    fn answers_parse_to_their_bodies() {
        let ext = [0, 128, 0, 0, 0, 0, 1, 0, 203, 0, 113, 5];
        let r = Response::parse(&ext).unwrap();
        assert_eq!((r.opcode, r.result, r.epoch), (0, 0, 256));
        assert_eq!(r.body, Body::ExternalAddress(Ipv4Addr::new(203, 0, 113, 5)));
        let map = [
            0, 129, 0, 0, 0, 0, 0, 9, 0x13, 0x88, 0x17, 0x70, 0, 0, 0, 60,
        ];
        let r = Response::parse(&map).unwrap();
        assert_eq!(
            r.body,
            Body::Map {
                proto: Proto::Udp,
                internal_port: 5000,
                external_port: 6000,
                lifetime: 60
            }
        );
    }

    #[test]
    fn an_error_answer_may_be_just_a_header() {
        let r = Response::parse(&[0, 130, 0, 2, 0, 0, 0, 1]).unwrap();
        assert_eq!((r.result, r.body), (2, Body::None));
        assert_eq!(describe(r.result), "not authorized or refused");
    }

    #[test]
    fn malformed_answers_are_refused() {
        for bad in [
            &[][..],
            &[0, 128, 0, 0, 0, 0, 0][..],
            &[2, 128, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4][..],
            &[0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4][..],
            &[0, 129, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4][..],
            &[0, 128, 0, 0, 0, 0, 0, 0][..],
            &[0, 200, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4][..],
            &[0u8; 17][..],
        ] {
            assert!(
                matches!(Response::parse(bad), Err(Error::Malformed { .. })),
                "{bad:?}"
            );
        }
    }
}
