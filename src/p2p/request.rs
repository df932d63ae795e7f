//! The connect requests, sans-IO: what one node asks another over signalling while it
//! connects, and the answer.
//!
//! A [`Request`] travels as a signalling request (sealed to the peer, replays dropped by
//! the signalling core) and carries a fresh [`Token`]. The path that the request brings
//! about says the same token in its handshake, which is how the asking node matches the
//! arriving path to its connect; a node refuses a token it has seen before
//! ([`Tokens`]). Every count and length is bounded before anything is allocated.
//!
//! ```text
//! request:  "PC" 1 kind(1) token(16) proto(1) body
//!   kind 1, come:  strategy(1) count(1, <= 16) addresses...
//!   kind 2, relay: has relayed(1) [address]  count(1, <= 4) public addresses...
//!   kind 3, upgrade: (nothing more: the token is the relayed path's)
//! answer:   "PA" 1 status(1)
//!   status 0, accepted: has relayed(1) [address]
//!   status 1, refused:  length(1, <= 200) reason (UTF-8)
//! address:  family(1: 4 | 6) ip(4 | 16) port(2)
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::{Buf, BufMut, BytesMut};

use super::report::Strategy;
use super::Error;
use crate::addr::wire;
use crate::Proto;

/// The bytes of a token.
pub(crate) const TOKEN_LEN: usize = 16;
/// A connect's token: 16 random bytes.
pub(crate) type Token = [u8; TOKEN_LEN];

/// The most addresses a come request names.
pub(crate) const MAX_COME: usize = 16;
/// The most public addresses a relay request names.
pub(crate) const MAX_PUBLIC: usize = 4;
/// The longest refusal reason, in bytes.
pub(crate) const MAX_REASON: usize = 200;
/// The largest request: a come request naming [`MAX_COME`] IPv6 addresses.
pub(crate) const MAX_REQUEST: usize = 3 + 1 + TOKEN_LEN + 1 + 2 + MAX_COME * 19;

const REQUEST_MAGIC: [u8; 3] = *b"PC\x01";
const ANSWER_MAGIC: [u8; 3] = *b"PA\x01";
const COME: u8 = 1;
const RELAY: u8 = 2;
const UPGRADE: u8 = 3;

/// What a node asks of the peer it connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Connect to me at one of `to` (a reverse connection, or to a port mapped on my
    /// router), over `proto`, saying `token`.
    Come {
        /// The connect's token.
        token: Token,
        /// TCP or UDP.
        proto: Proto,
        /// Why the peer is asked: [`Strategy::Reverse`] or [`Strategy::Upnp`].
        strategy: Strategy,
        /// Where to connect, in order of preference.
        to: Vec<SocketAddr>,
    },
    /// Meet me through a relay: allocate one, let my traffic in, and answer with your
    /// relayed address.
    Relay {
        /// The connect's token.
        token: Token,
        /// TCP or UDP.
        proto: Proto,
        /// My own relayed address, for UDP (the answerer's relay sends to it).
        relayed: Option<SocketAddr>,
        /// My public addresses, for TCP: I connect to your relayed address from one of
        /// them, and a permission is per address.
        public: Vec<SocketAddr>,
    },
    /// The relayed path that says `token` is to move to a direct path: take my next
    /// punch as its new path.
    Upgrade {
        /// The relayed path's token.
        token: Token,
        /// Its protocol.
        proto: Proto,
    },
}

impl Request {
    /// The request's token.
    pub(crate) fn token(&self) -> &Token {
        match self {
            Request::Come { token, .. }
            | Request::Relay { token, .. }
            | Request::Upgrade { token, .. } => token,
        }
    }

    /// Whether `payload` looks like a connect request (its magic), before parsing.
    pub(crate) fn is_request(payload: &[u8]) -> bool {
        payload.starts_with(&REQUEST_MAGIC)
    }

    /// Parses a request, checking every bound.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] naming what is wrong.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Request, Error> {
        if bytes.len() > MAX_REQUEST {
            return Err(Error::Malformed("a connect request over its size limit"));
        }
        let mut buf = bytes
            .strip_prefix(&REQUEST_MAGIC)
            .ok_or(Error::Malformed("not a connect request"))?;
        let kind = take_u8(&mut buf)?;
        let token: Token = take(&mut buf)?;
        let proto = match take_u8(&mut buf)? {
            1 => Proto::Udp,
            2 => Proto::Tcp,
            _ => return Err(Error::Malformed("unknown protocol")),
        };
        let request = match kind {
            COME => {
                let strategy = match take_u8(&mut buf)? {
                    2 => Strategy::Reverse,
                    4 => Strategy::Upnp,
                    _ => return Err(Error::Malformed("a come request for another strategy")),
                };
                let to = addrs(&mut buf, MAX_COME)?;
                if to.is_empty() {
                    return Err(Error::Malformed("a come request without an address"));
                }
                Request::Come {
                    token,
                    proto,
                    strategy,
                    to,
                }
            }
            RELAY => {
                let relayed = match take_u8(&mut buf)? {
                    0 => None,
                    1 => Some(addr(&mut buf)?),
                    _ => return Err(Error::Malformed("unknown relayed presence")),
                };
                let public = addrs(&mut buf, MAX_PUBLIC)?;
                Request::Relay {
                    token,
                    proto,
                    relayed,
                    public,
                }
            }
            UPGRADE => Request::Upgrade { token, proto },
            _ => return Err(Error::Malformed("unknown connect request")),
        };
        if !buf.is_empty() {
            return Err(Error::Malformed("bytes after a connect request"));
        }
        Ok(request)
    }

    /// The wire form.
    ///
    /// # Panics
    ///
    /// Over a bound ([`MAX_COME`], [`MAX_PUBLIC`]), or a come request for a strategy
    /// other than reverse or upnp: the node builds only valid requests.
    pub(crate) fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(MAX_REQUEST);
        out.put_slice(&REQUEST_MAGIC);
        let (kind, token, proto) = match self {
            Request::Come { token, proto, .. } => (COME, token, proto),
            Request::Relay { token, proto, .. } => (RELAY, token, proto),
            Request::Upgrade { token, proto } => (UPGRADE, token, proto),
        };
        out.put_u8(kind);
        out.put_slice(token);
        out.put_u8(match proto {
            Proto::Udp => 1,
            Proto::Tcp => 2,
        });
        match self {
            Request::Come { strategy, to, .. } => {
                out.put_u8(match strategy {
                    Strategy::Reverse => 2,
                    Strategy::Upnp => 4,
                    other => panic!("a come request for {other}"),
                });
                put_addrs(&mut out, to, MAX_COME);
            }
            Request::Relay {
                relayed, public, ..
            } => {
                match relayed {
                    Some(a) => {
                        out.put_u8(1);
                        wire::put(&mut out, a);
                    }
                    None => out.put_u8(0),
                }
                put_addrs(&mut out, public, MAX_PUBLIC);
            }
            Request::Upgrade { .. } => {}
        }
        out
    }
}

/// What the peer answers to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// It is on its way; for a relay request, the answerer's relayed address.
    Accepted {
        /// The answerer's relayed address (relay requests only).
        relayed: Option<SocketAddr>,
    },
    /// It will not, and why (at most [`MAX_REASON`] bytes; longer reasons are cut at a
    /// character boundary).
    Refused {
        /// Why, in words for the asking node's user.
        reason: String,
    },
}

impl Answer {
    /// A refusal, its reason cut to [`MAX_REASON`] bytes.
    pub(crate) fn refused(reason: impl Into<String>) -> Answer {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Answer::Refused { reason }
    }

    /// Parses an answer, checking every bound.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] naming what is wrong.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Answer, Error> {
        let mut buf = bytes
            .strip_prefix(&ANSWER_MAGIC)
            .ok_or(Error::Malformed("not a connect answer"))?;
        let answer = match take_u8(&mut buf)? {
            0 => Answer::Accepted {
                relayed: match take_u8(&mut buf)? {
                    0 => None,
                    1 => Some(addr(&mut buf)?),
                    _ => return Err(Error::Malformed("unknown relayed presence")),
                },
            },
            1 => {
                let len = usize::from(take_u8(&mut buf)?);
                if len > MAX_REASON || buf.len() < len {
                    return Err(Error::Malformed("a refusal's reason over its bound"));
                }
                let reason = std::str::from_utf8(&buf[..len])
                    .map_err(|_| Error::Malformed("a refusal's reason is not utf-8"))?
                    .to_owned();
                buf.advance(len);
                Answer::Refused { reason }
            }
            _ => return Err(Error::Malformed("unknown answer status")),
        };
        if !buf.is_empty() {
            return Err(Error::Malformed("bytes after a connect answer"));
        }
        Ok(answer)
    }

    /// The wire form.
    pub(crate) fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(4 + 1 + MAX_REASON);
        out.put_slice(&ANSWER_MAGIC);
        match self {
            Answer::Accepted { relayed } => {
                out.put_u8(0);
                match relayed {
                    Some(a) => {
                        out.put_u8(1);
                        wire::put(&mut out, a);
                    }
                    None => out.put_u8(0),
                }
            }
            Answer::Refused { reason } => {
                out.put_u8(1);
                let reason = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
                out.put_u8(reason.len() as u8);
                out.put_slice(reason);
            }
        }
        out
    }
}

/// The tokens a node has answered, so that a request seen again is refused: the last
/// [`Tokens::CAPACITY`] of them. The signalling core already drops a replayed envelope;
/// this refuses a token sent again in a fresh one.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    seen: VecDeque<Token>,
}

impl Tokens {
    /// How many tokens are remembered.
    pub(crate) const CAPACITY: usize = 4096;

    /// Records `token`; false if it was seen before.
    pub(crate) fn fresh(&mut self, token: &Token) -> bool {
        if self.seen.contains(token) {
            return false;
        }
        if self.seen.len() == Self::CAPACITY {
            self.seen.pop_front();
        }
        self.seen.push_back(*token);
        true
    }
}

fn take<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], Error> {
    if buf.len() < N {
        return Err(Error::Malformed("a connect message cut short"));
    }
    let mut out = [0u8; N];
    buf.copy_to_slice(&mut out);
    Ok(out)
}

fn take_u8(buf: &mut &[u8]) -> Result<u8, Error> {
    Ok(take::<1>(buf)?[0])
}

fn addr(buf: &mut &[u8]) -> Result<SocketAddr, Error> {
    wire::take(buf).map_err(Error::Malformed)
}

fn addrs(buf: &mut &[u8], max: usize) -> Result<Vec<SocketAddr>, Error> {
    let n = usize::from(take_u8(buf)?);
    if n > max {
        return Err(Error::Malformed("too many addresses"));
    }
    (0..n).map(|_| addr(buf)).collect()
}

fn put_addrs(out: &mut BytesMut, addrs: &[SocketAddr], max: usize) {
    assert!(addrs.len() <= max, "{} addresses, over {max}", addrs.len());
    out.put_u8(addrs.len() as u8);
    for a in addrs {
        wire::put(out, a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn examples() -> Vec<Request> {
        vec![
            Request::Come {
                token: [7; TOKEN_LEN],
                proto: Proto::Tcp,
                strategy: Strategy::Reverse,
                to: vec![sa("[2001:db8::2]:4000"), sa("198.51.100.2:4000")],
            },
            Request::Come {
                token: [8; TOKEN_LEN],
                proto: Proto::Udp,
                strategy: Strategy::Upnp,
                to: (0..MAX_COME as u16)
                    .map(|i| SocketAddr::new("2001:db8::9".parse().unwrap(), 1000 + i))
                    .collect(),
            },
            Request::Relay {
                token: [9; TOKEN_LEN],
                proto: Proto::Udp,
                relayed: Some(sa("203.0.113.10:50000")),
                public: vec![],
            },
            Request::Relay {
                token: [10; TOKEN_LEN],
                proto: Proto::Tcp,
                relayed: None,
                public: vec![sa("198.51.100.1:0"), sa("[2001:db8::1]:0")],
            },
            Request::Upgrade {
                token: [11; TOKEN_LEN],
                proto: Proto::Udp,
            },
        ]
    }

    #[test]
    fn every_request_round_trips_and_every_cut_or_extended_form_is_refused() {
        for r in examples() {
            let bytes = r.to_bytes();
            assert!(bytes.len() <= MAX_REQUEST);
            assert!(Request::is_request(&bytes));
            assert_eq!(Request::parse(&bytes).unwrap(), r);
            for cut in 0..bytes.len() {
                assert!(Request::parse(&bytes[..cut]).is_err(), "{r:?} cut at {cut}");
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert!(Request::parse(&longer).is_err());
        }
    }

    #[test]
    fn requests_over_a_bound_or_of_unknown_kinds_are_refused_with_a_reason() {
        let mut too_many = Request::Come {
            token: [1; TOKEN_LEN],
            proto: Proto::Tcp,
            strategy: Strategy::Reverse,
            to: vec![sa("198.51.100.2:1")],
        }
        .to_bytes();
        let count_at = 3 + 1 + TOKEN_LEN + 1 + 1;
        too_many[count_at] = (MAX_COME + 1) as u8;
        let err = Request::parse(&too_many).unwrap_err();
        assert!(err.to_string().contains("too many addresses"), "{err}");

        let mut unknown = too_many.clone();
        unknown[3] = 9;
        assert!(Request::parse(&unknown)
            .unwrap_err()
            .to_string()
            .contains("unknown"));
        let mut empty = Request::Come {
            token: [1; TOKEN_LEN],
            proto: Proto::Tcp,
            strategy: Strategy::Reverse,
            to: vec![sa("198.51.100.2:1")],
        }
        .to_bytes();
        empty[count_at] = 0;
        empty.truncate(count_at + 1);
        assert!(Request::parse(&empty).is_err());
        assert!(Request::parse(&[0u8; MAX_REQUEST + 1]).is_err());
    }

    #[test]
    fn answers_round_trip_and_a_long_reason_is_cut_at_a_character_boundary() {
        for a in [
            Answer::Accepted { relayed: None },
            Answer::Accepted {
                relayed: Some(sa("[2001:db8::7]:3478")),
            },
            Answer::refused("no relay is configured"),
        ] {
            let bytes = a.to_bytes();
            assert_eq!(Answer::parse(&bytes).unwrap(), a);
            for cut in 0..bytes.len() {
                assert!(Answer::parse(&bytes[..cut]).is_err());
            }
        }
        let long = Answer::refused("é".repeat(150));
        let Answer::Refused { reason } = &long else {
            unreachable!()
        };
        assert_eq!(reason.len(), MAX_REASON);
        assert_eq!(Answer::parse(&long.to_bytes()).unwrap(), long);
    }

    #[test]
    fn a_token_is_fresh_once_and_the_oldest_are_forgotten_past_the_capacity() {
        let mut tokens = Tokens::default();
        assert!(tokens.fresh(&[1; TOKEN_LEN]));
        assert!(!tokens.fresh(&[1; TOKEN_LEN]));
        for i in 0..Tokens::CAPACITY as u32 {
            let mut t = [0u8; TOKEN_LEN];
            t[..4].copy_from_slice(&i.to_be_bytes());
            t[15] = 0xee;
            assert!(tokens.fresh(&t));
        }
        assert!(tokens.fresh(&[1; TOKEN_LEN]), "the oldest is forgotten");
    }
}
