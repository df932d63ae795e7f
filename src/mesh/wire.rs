//! The mesh wire format: length-framed frames, each a kind byte and its fields.
//!
//! ```text
//!  0        4      5
//!  | LEN    | KIND | FIELDS (LEN - 1 bytes) |
//! ```
//!
//! `LEN` is a u32 big-endian count of the bytes after it. [`FrameCodec`] bounds it before
//! anything is allocated: the first [`HANDSHAKE_FRAMES`] frames a side receives (the
//! handshake, before the peer is known) may be at most [`MAX_HANDSHAKE_FRAME`] bytes, every
//! later one at most the mesh's message limit plus [`DATA_OVERHEAD`].
//!
//! | kind | name | fields |
//! |---|---|---|
//! | `0x01` | HELLO | `"P2PM"`, version (1), flags (bit 0: signing), id length (1..=64), id (UTF-8), listen port (u16), nonce (32), and with signing the ed25519 public key (32) |
//! | `0x02` | AUTH | empty, or with signing an ed25519 signature (64) of the handshake transcript |
//! | `0x03` | REFUSE | code (u8), reason (UTF-8, at most 200 bytes) |
//! | `0x10` | DATA | flags (bit 0: zlib, bit 1: signed), with signing a sequence number (u64) and a signature (64), then the payload |
//! | `0x20` | PING | token (u64) |
//! | `0x21` | PONG | token (u64) |
//! | `0x30` | BYE | reason (UTF-8, at most 200 bytes) |
//!
//! Types here are checked when they are parsed or built (as smoltcp's are): a [`Frame`]
//! that exists has fields within their bounds ([`MeshId`] and [`Reason`] see to it), so
//! [`Frame::emit`] cannot fail.
//!
//! ```
//! use bytes::BytesMut;
//! use p2pipe::mesh::wire::{Frame, Reason, RefuseCode, LEN_PREFIX};
//!
//! let frame = Frame::Refuse(RefuseCode::Limit, Reason::new("full"));
//! let mut out = BytesMut::new();
//! frame.emit(&mut out);
//! assert_eq!(out.len(), frame.emit_len());
//! assert_eq!(Frame::parse(&out[LEN_PREFIX..]), Ok(frame));
//! ```

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The protocol version in HELLO.
pub const VERSION: u8 = 1;
/// HELLO's magic.
pub const MAGIC: &[u8; 4] = b"P2PM";
/// The longest node id, in bytes.
pub const MAX_ID: usize = 64;
/// The longest REFUSE or BYE reason, in bytes.
pub const MAX_REASON: usize = 200;
/// Frames a side receives before the handshake is over: HELLO and AUTH (or a REFUSE).
pub const HANDSHAKE_FRAMES: usize = 2;
/// The bound on a handshake frame.
pub const MAX_HANDSHAKE_FRAME: usize = 512;
/// The bytes a DATA frame adds to its payload at most: kind, flags, sequence, signature.
pub const DATA_OVERHEAD: usize = 1 + 1 + 8 + 64;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

const HELLO: u8 = 0x01;
const AUTH: u8 = 0x02;
const REFUSE: u8 = 0x03;
const DATA: u8 = 0x10;
const PING: u8 = 0x20;
const PONG: u8 = 0x21;
const BYE: u8 = 0x30;

/// DATA flag: the payload is zlib-compressed.
pub const FLAG_ZLIB: u8 = 0x01;
/// DATA flag: a sequence number and a signature precede the payload.
pub const FLAG_SIGNED: u8 = 0x02;
/// HELLO flag: the sender signs, and its key follows the nonce.
pub const HELLO_SIGNING: u8 = 0x01;

/// A frame that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame is empty.
    #[error("empty frame")]
    Empty,
    /// The kind byte is not one of the protocol's.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The frame ends before its fields do, or goes on after them.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// HELLO's magic is wrong.
    #[error("not a mesh peer (bad magic)")]
    BadMagic,
    /// HELLO's version is not ours.
    #[error("unsupported mesh version {0}")]
    Version(u8),
    /// A node id is empty, too long, not UTF-8, or holds control characters.
    #[error("invalid node id")]
    BadId,
    /// A reason is too long or not UTF-8.
    #[error("invalid reason text")]
    BadReason,
    /// DATA carries flags this version does not know.
    #[error("unknown data flags 0x{0:02x}")]
    BadFlags(u8),
    /// A length prefix is over its bound.
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// The claimed length.
        len: usize,
        /// The bound at that point.
        max: usize,
    },
    /// The stream failed under the codec.
    #[error("i/o error: {0}")]
    Io(std::io::ErrorKind),
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        WireError::Io(e.kind())
    }
}

/// Checks a node id: 1 to [`MAX_ID`] bytes of UTF-8 with no control characters or
/// whitespace.
pub fn check_id(id: &str) -> Result<(), WireError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && !id.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(WireError::BadId)
    }
}

/// A node id, checked by [`check_id`] when it is built.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeshId(String);

impl MeshId {
    /// Checks `id` ([`check_id`]).
    pub fn new(id: impl Into<String>) -> Result<MeshId, WireError> {
        let id = id.into();
        check_id(&id)?;
        Ok(MeshId(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id, as a `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::ops::Deref for MeshId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A REFUSE or BYE reason: UTF-8 of at most [`MAX_REASON`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Reason(String);

impl Reason {
    /// `s`, cut to [`MAX_REASON`] bytes on a character boundary.
    pub fn new(s: &str) -> Reason {
        let mut end = s.len().min(MAX_REASON);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Reason(s[..end].to_owned())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The text, as a `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A HELLO: who the sender is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's node id.
    pub id: MeshId,
    /// The port the sender listens on, or 0.
    pub listen_port: u16,
    /// A fresh random value, binding the signatures to this handshake.
    pub nonce: [u8; 32],
    /// The sender's ed25519 public key, when it signs.
    pub key: Option<[u8; 32]>,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefuseCode {
    /// The node already has a connection to this id.
    Duplicate,
    /// The node takes no more inbound connections.
    Limit,
    /// The HELLO or AUTH was not acceptable.
    Protocol,
    /// One side signs and the other does not.
    SigningMismatch,
    /// The key does not match the one this id is bound to, or a signature failed.
    BadKey,
    /// The peer has the node's own id.
    SelfConnection,
    /// The node is stopping.
    Stopping,
    /// A code this version does not know.
    Other(u8),
}

impl RefuseCode {
    fn to_u8(self) -> u8 {
        match self {
            RefuseCode::Duplicate => 1,
            RefuseCode::Limit => 2,
            RefuseCode::Protocol => 3,
            RefuseCode::SigningMismatch => 4,
            RefuseCode::BadKey => 5,
            RefuseCode::SelfConnection => 6,
            RefuseCode::Stopping => 7,
            RefuseCode::Other(c) => c,
        }
    }

    fn from_u8(c: u8) -> RefuseCode {
        match c {
            1 => RefuseCode::Duplicate,
            2 => RefuseCode::Limit,
            3 => RefuseCode::Protocol,
            4 => RefuseCode::SigningMismatch,
            5 => RefuseCode::BadKey,
            6 => RefuseCode::SelfConnection,
            7 => RefuseCode::Stopping,
            c => RefuseCode::Other(c),
        }
    }
}

impl fmt::Display for RefuseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseCode::Duplicate => f.write_str("duplicate connection"),
            RefuseCode::Limit => f.write_str("connection limit reached"),
            RefuseCode::Protocol => f.write_str("protocol error"),
            RefuseCode::SigningMismatch => f.write_str("signing mismatch"),
            RefuseCode::BadKey => f.write_str("key or signature not accepted"),
            RefuseCode::SelfConnection => f.write_str("connection to self"),
            RefuseCode::Stopping => f.write_str("node stopping"),
            RefuseCode::Other(c) => write!(f, "refused (code {c})"),
        }
    }
}

/// The signed part of a DATA frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    /// The sender's message counter on this connection, from 1.
    pub seq: u64,
    /// The ed25519 signature.
    pub sig: [u8; 64],
}

/// A frame. [`Frame::parse_bytes`] makes DATA's payload a slice of the frame, not a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// HELLO.
    Hello(Hello),
    /// AUTH: a signature, or none when the handshake is unsigned.
    Auth(Option<[u8; 64]>),
    /// REFUSE.
    Refuse(RefuseCode, Reason),
    /// DATA.
    Data {
        /// Flags ([`FLAG_ZLIB`], [`FLAG_SIGNED`]).
        flags: u8,
        /// Present iff [`FLAG_SIGNED`] is set.
        signed: Option<Signed>,
        /// The payload as sent (compressed when [`FLAG_ZLIB`] is set).
        payload: Bytes,
    },
    /// PING.
    Ping(u64),
    /// PONG.
    Pong(u64),
    /// BYE.
    Bye(Reason),
}

fn take<const N: usize>(b: &mut &[u8], what: &'static str) -> Result<[u8; N], WireError> {
    let Some((head, rest)) = b.split_first_chunk::<N>() else {
        return Err(WireError::Malformed(what));
    };
    *b = rest;
    Ok(*head)
}

fn text(b: &[u8]) -> Result<Reason, WireError> {
    if b.len() > MAX_REASON {
        return Err(WireError::BadReason);
    }
    std::str::from_utf8(b)
        .map(|s| Reason(s.to_owned()))
        .map_err(|_| WireError::BadReason)
}

fn done(b: &[u8], what: &'static str) -> Result<(), WireError> {
    if b.is_empty() {
        Ok(())
    } else {
        Err(WireError::Malformed(what))
    }
}

impl Frame {
    /// Parses one frame (without its length prefix). DATA's payload is copied; see
    /// [`Frame::parse_bytes`] for the receive path.
    pub fn parse(bytes: &[u8]) -> Result<Frame, WireError> {
        Self::parse_with(bytes, Bytes::copy_from_slice)
    }

    /// As [`Frame::parse`], with DATA's payload a slice of `frame`, not a copy.
    pub fn parse_bytes(frame: &Bytes) -> Result<Frame, WireError> {
        Self::parse_with(frame, |p| frame.slice_ref(p))
    }

    fn parse_with(mut b: &[u8], payload: impl FnOnce(&[u8]) -> Bytes) -> Result<Frame, WireError> {
        let [kind] = take::<1>(&mut b, "").map_err(|_| WireError::Empty)?;
        match kind {
            HELLO => {
                let [m0, m1, m2, m3, version, flags, id_len] = take::<7>(&mut b, "hello")?;
                if &[m0, m1, m2, m3] != MAGIC {
                    return Err(WireError::BadMagic);
                }
                if version != VERSION {
                    return Err(WireError::Version(version));
                }
                if flags & !HELLO_SIGNING != 0 {
                    return Err(WireError::Malformed("hello"));
                }
                let id_len = id_len as usize;
                if id_len == 0 || id_len > MAX_ID || b.len() < id_len {
                    return Err(WireError::BadId);
                }
                let (id, rest) = b.split_at(id_len);
                b = rest;
                let id = MeshId::new(std::str::from_utf8(id).map_err(|_| WireError::BadId)?)?;
                let listen_port = u16::from_be_bytes(take::<2>(&mut b, "hello")?);
                let nonce = take::<32>(&mut b, "hello")?;
                let key = if flags & HELLO_SIGNING != 0 {
                    Some(take::<32>(&mut b, "hello")?)
                } else {
                    None
                };
                done(b, "hello")?;
                Ok(Frame::Hello(Hello {
                    id,
                    listen_port,
                    nonce,
                    key,
                }))
            }
            AUTH => match b.len() {
                0 => Ok(Frame::Auth(None)),
                64 => Ok(Frame::Auth(Some(take::<64>(&mut b, "auth")?))),
                _ => Err(WireError::Malformed("auth")),
            },
            REFUSE => {
                let [code] = take::<1>(&mut b, "refuse")?;
                Ok(Frame::Refuse(RefuseCode::from_u8(code), text(b)?))
            }
            DATA => {
                let [flags] = take::<1>(&mut b, "data")?;
                if flags & !(FLAG_ZLIB | FLAG_SIGNED) != 0 {
                    return Err(WireError::BadFlags(flags));
                }
                let signed = if flags & FLAG_SIGNED != 0 {
                    let seq = u64::from_be_bytes(take::<8>(&mut b, "data")?);
                    let sig = take::<64>(&mut b, "data")?;
                    Some(Signed { seq, sig })
                } else {
                    None
                };
                Ok(Frame::Data {
                    flags,
                    signed,
                    payload: payload(b),
                })
            }
            PING | PONG => {
                let token = u64::from_be_bytes(take::<8>(&mut b, "ping")?);
                done(b, "ping")?;
                Ok(if kind == PING {
                    Frame::Ping(token)
                } else {
                    Frame::Pong(token)
                })
            }
            BYE => Ok(Frame::Bye(text(b)?)),
            k => Err(WireError::UnknownKind(k)),
        }
    }

    /// The bytes [`Frame::emit`] appends, length prefix included.
    pub fn emit_len(&self) -> usize {
        LEN_PREFIX
            + 1
            + match self {
                Frame::Hello(h) => {
                    4 + 3 + h.id.len() + 2 + 32 + if h.key.is_some() { 32 } else { 0 }
                }
                Frame::Auth(sig) => {
                    if sig.is_some() {
                        64
                    } else {
                        0
                    }
                }
                Frame::Refuse(_, why) => 1 + why.0.len(),
                Frame::Data {
                    signed, payload, ..
                } => 1 + if signed.is_some() { 72 } else { 0 } + payload.len(),
                Frame::Ping(_) | Frame::Pong(_) => 8,
                Frame::Bye(why) => why.0.len(),
            }
    }

    /// Appends the frame, with its length prefix, to `out`.
    ///
    /// # Panics
    ///
    /// Only for a DATA payload over 4 GiB, which no length prefix can carry (the mesh
    /// bounds its messages far below that; every other field is checked when it is built).
    pub fn emit(&self, out: &mut BytesMut) {
        let len = self.emit_len();
        out.reserve(len);
        out.put_u32(u32::try_from(len - LEN_PREFIX).expect("a DATA payload over 4 GiB"));
        match self {
            Frame::Hello(h) => {
                out.put_u8(HELLO);
                out.put_slice(MAGIC);
                out.put_u8(VERSION);
                out.put_u8(if h.key.is_some() { HELLO_SIGNING } else { 0 });
                // At most MAX_ID: checked when the id was built.
                out.put_u8(h.id.len() as u8);
                out.put_slice(h.id.as_bytes());
                out.put_u16(h.listen_port);
                out.put_slice(&h.nonce);
                if let Some(k) = &h.key {
                    out.put_slice(k);
                }
            }
            Frame::Auth(sig) => {
                out.put_u8(AUTH);
                if let Some(s) = sig {
                    out.put_slice(s);
                }
            }
            Frame::Refuse(code, why) => {
                out.put_u8(REFUSE);
                out.put_u8(code.to_u8());
                out.put_slice(why.0.as_bytes());
            }
            Frame::Ping(t) => {
                out.put_u8(PING);
                out.put_u64(*t);
            }
            Frame::Pong(t) => {
                out.put_u8(PONG);
                out.put_u64(*t);
            }
            Frame::Bye(why) => {
                out.put_u8(BYE);
                out.put_slice(why.0.as_bytes());
            }
            Frame::Data {
                flags,
                signed,
                payload,
            } => {
                let head = DataHeader::new(*flags, signed.as_ref(), payload.len());
                // Its length prefix is written above, as for every kind.
                out.put_slice(&head.as_bytes()[LEN_PREFIX..]);
                out.put_slice(payload);
            }
        }
    }
}

/// The bytes of a DATA frame before its payload: length prefix, kind, flags, and for a
/// signed frame the sequence number and signature. Built on the stack, so a message goes
/// out as this header and the caller's payload, with no buffer joining them.
#[derive(Debug, Clone, Copy)]
pub struct DataHeader {
    buf: [u8; LEN_PREFIX + DATA_OVERHEAD],
    len: usize,
}

impl DataHeader {
    /// The header of a DATA frame carrying `payload_len` bytes.
    ///
    /// # Panics
    ///
    /// If the frame would be over `u32::MAX` bytes.
    pub fn new(flags: u8, signed: Option<&Signed>, payload_len: usize) -> DataHeader {
        let mut buf = [0u8; LEN_PREFIX + DATA_OVERHEAD];
        let head = 2 + if signed.is_some() { 72 } else { 0 };
        let len = u32::try_from(head + payload_len).expect("payload over u32::MAX");
        buf[..4].copy_from_slice(&len.to_be_bytes());
        buf[4] = DATA;
        buf[5] = flags;
        if let Some(s) = signed {
            buf[6..14].copy_from_slice(&s.seq.to_be_bytes());
            buf[14..78].copy_from_slice(&s.sig);
        }
        DataHeader {
            buf,
            len: LEN_PREFIX + head,
        }
    }

    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Cuts a stream into frames (without their length prefix), bounding every length before
/// anything is reserved: [`MAX_HANDSHAKE_FRAME`] for the first [`HANDSHAKE_FRAMES`] frames,
/// `max_frame` after.
#[derive(Debug)]
pub struct FrameCodec {
    max_frame: usize,
    seen: usize,
}

impl FrameCodec {
    /// A codec whose frames after the handshake are at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> FrameCodec {
        FrameCodec { max_frame, seen: 0 }
    }

    /// The bound on the next frame.
    pub fn bound(&self) -> usize {
        if self.seen < HANDSHAKE_FRAMES {
            MAX_HANDSHAKE_FRAME
        } else {
            self.max_frame
        }
    }
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = Bytes;
    type Error = WireError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        if buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes(buf[..LEN_PREFIX].try_into().expect("4 bytes")) as usize;
        let max = self.bound();
        if len > max {
            return Err(WireError::TooLarge { len, max });
        }
        if buf.len() < LEN_PREFIX + len {
            // Bounded: len <= max.
            buf.reserve(LEN_PREFIX + len - buf.len());
            return Ok(None);
        }
        buf.advance(LEN_PREFIX);
        self.seen = self.seen.saturating_add(1);
        Ok(Some(buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio_util::codec::Decoder;

    fn hello(key: bool) -> Hello {
        Hello {
            id: MeshId::new("alice").unwrap(),
            listen_port: 4000,
            nonce: [7; 32],
            key: key.then_some([9; 32]),
        }
    }

    /// The frame's wire form, length prefix included.
    fn emitted(f: &Frame) -> Bytes {
        let mut out = BytesMut::new();
        f.emit(&mut out);
        assert_eq!(out.len(), f.emit_len());
        out.freeze()
    }

    /// A DATA frame's wire form.
    pub(crate) fn data(flags: u8, signed: Option<Signed>, payload: &[u8]) -> Bytes {
        emitted(&Frame::Data {
            flags,
            signed,
            payload: Bytes::copy_from_slice(payload),
        })
    }

    fn round_trip(f: Frame) {
        let bytes = emitted(&f);
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(Frame::parse(&bytes[4..]).unwrap(), f);
        assert_eq!(Frame::parse_bytes(&bytes.slice(4..)).unwrap(), f);
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(Frame::Hello(hello(false)));
        round_trip(Frame::Hello(hello(true)));
        round_trip(Frame::Auth(None));
        round_trip(Frame::Auth(Some([3; 64])));
        round_trip(Frame::Refuse(
            RefuseCode::Duplicate,
            Reason::new("already connected"),
        ));
        round_trip(Frame::Refuse(RefuseCode::Other(99), Reason::default()));
        round_trip(Frame::Data {
            flags: 0,
            signed: None,
            payload: Bytes::from_static(b"\x04\x00\xff"),
        });
        round_trip(Frame::Data {
            flags: FLAG_SIGNED | FLAG_ZLIB,
            signed: Some(Signed {
                seq: 5,
                sig: [1; 64],
            }),
            payload: Bytes::new(),
        });
        round_trip(Frame::Ping(u64::MAX));
        round_trip(Frame::Pong(0));
        round_trip(Frame::Bye(Reason::new("stopping")));
    }

    #[test]
    fn hello_bytes_are_the_documented_layout() {
        let b = emitted(&Frame::Hello(hello(false)));
        let mut want = vec![0, 0, 0, 47, 0x01, b'P', b'2', b'P', b'M', 1, 0, 5];
        want.extend_from_slice(b"alice");
        want.extend_from_slice(&4000u16.to_be_bytes());
        want.extend_from_slice(&[7; 32]);
        assert_eq!(&b[..], &want[..]);
        let d = data(0, None, b"hi");
        assert_eq!(&d[..], &[0, 0, 0, 4, 0x10, 0, b'h', b'i']);
    }

    #[test]
    fn bad_frames_are_refused() {
        let p = Frame::parse;
        assert_eq!(p(b""), Err(WireError::Empty));
        assert_eq!(p(b"\x7f"), Err(WireError::UnknownKind(0x7f)));
        assert_eq!(p(b"\x01XXXX"), Err(WireError::Malformed("hello")));
        assert_eq!(p(b"\x01XXXX\x01\x00\x01a"), Err(WireError::BadMagic));
        assert_eq!(p(b"\x01P2PM\x02\x00\x01a"), Err(WireError::Version(2)));
        assert_eq!(p(b"\x01P2PM\x01\x00\x00"), Err(WireError::BadId));
        assert_eq!(p(b"\x01P2PM\x01\x00\x05ab"), Err(WireError::BadId));
        assert_eq!(p(b"\x01P2PM\x01\x00\x02a b"), Err(WireError::BadId));
        assert_eq!(p(b"\x01P2PM\x01\x00\x02\xff\xfe"), Err(WireError::BadId));
        let mut long = emitted(&Frame::Hello(hello(false))).to_vec();
        long.push(0);
        assert_eq!(p(&long[4..]), Err(WireError::Malformed("hello")));
        assert_eq!(p(&[0x02; 10]), Err(WireError::Malformed("auth")));
        assert_eq!(p(b"\x10\x04"), Err(WireError::BadFlags(4)));
        assert_eq!(p(b"\x10\x02\x00"), Err(WireError::Malformed("data")));
        assert_eq!(p(b"\x20\x00"), Err(WireError::Malformed("ping")));
        assert_eq!(p(&[0x30; 202]), Err(WireError::BadReason));
        assert_eq!(p(b"\x30\xff"), Err(WireError::BadReason));
        assert!(check_id("node-1").is_ok());
        assert!(check_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn codec_bounds_the_handshake_then_the_messages() {
        let mut c = FrameCodec::new(1000);
        let mut buf = BytesMut::new();
        // A handshake frame claiming more than the handshake bound is refused at once.
        buf.put_u32(600);
        assert_eq!(
            c.decode(&mut buf),
            Err(WireError::TooLarge { len: 600, max: 512 })
        );
        assert!(buf.capacity() < 600);
        let mut c = FrameCodec::new(1000);
        let mut buf = BytesMut::new();
        for _ in 0..2 {
            buf.extend_from_slice(&emitted(&Frame::Auth(None)));
            assert_eq!(c.decode(&mut buf).unwrap().unwrap(), &[0x02][..]);
        }
        // Then the message bound applies, and a claim over it allocates nothing.
        buf.put_u32(600);
        assert_eq!(c.decode(&mut buf), Ok(None));
        buf.clear();
        buf.put_u32(u32::MAX);
        assert!(matches!(
            c.decode(&mut buf),
            Err(WireError::TooLarge { .. })
        ));
        assert!(buf.capacity() < 1 << 20);
    }

    #[test]
    fn data_payload_may_hold_any_bytes_and_be_empty() {
        let all: Vec<u8> = (0..=255).collect();
        for payload in [&all[..], b""] {
            let b = data(0, None, payload);
            match Frame::parse_bytes(&b.slice(4..)).unwrap() {
                Frame::Data { payload: p, .. } => assert_eq!(&p[..], payload),
                f => panic!("not data: {f:?}"),
            }
        }
        assert_eq!(Reason::new(&"é".repeat(150)).as_str().len(), 200);
    }
}
