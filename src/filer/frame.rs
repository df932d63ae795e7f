//! btpeer frames: a 4-byte type, a u32 big-endian length, the payload.
//!
//! ```text
//!  0      4        8                8+N
//!  | TYPE | LEN    | PAYLOAD (N bytes) |
//! ```
//!
//! No magic, version, checksum or terminator. The receiver upper-cases the type; a short
//! header or payload (the peer closed early) means no message.
//!
//! [`Decoder`] reads frames from a byte stream without ever reserving more than its bound:
//! control frames up to `max_control` bytes arrive whole as [`Event::Frame`]; frames the
//! caller marked as bodies (file bytes) arrive as [`Event::BodyStart`], any number of
//! [`Event::BodyChunk`]s as the bytes come in, and [`Event::BodyEnd`]; any other frame
//! longer than the bound is refused with [`Error::TooLarge`] before anything is allocated.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::Error;
use crate::Framing;

/// The length of a frame header: 4 type bytes and a u32 length (the pipe's btpeer
/// framing, [`Framing::Btpeer`], defines it).
pub const HEADER_LEN: usize = Framing::BTPEER_HEADER;

/// The default bound on a control frame's payload (64 KiB).
pub const MAX_CONTROL: usize = 64 * 1024;

/// The largest payload a frame can carry: its length is a u32.
pub const MAX_PAYLOAD: u64 = u32::MAX as u64;

/// A frame's type: four bytes, upper case (ASCII letters only are changed).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind([u8; 4]);

impl Kind {
    /// `NAME`: ask a node for its id.
    pub const NAME: Kind = Kind(*b"NAME");
    /// `LIST`: ask a node for its peers.
    pub const LIST: Kind = Kind(*b"LIST");
    /// `JOIN`: ask a node to add a peer.
    pub const JOIN: Kind = Kind(*b"JOIN");
    /// `QUER`: a file search.
    pub const QUER: Kind = Kind(*b"QUER");
    /// `RESP`: a search result.
    pub const RESP: Kind = Kind(*b"RESP");
    /// `FGET`: fetch a whole file.
    pub const FGET: Kind = Kind(*b"FGET");
    /// `QUIT`: ask a node to drop a peer.
    pub const QUIT: Kind = Kind(*b"QUIT");
    /// `PING`: liveness.
    pub const PING: Kind = Kind(*b"PING");
    /// `REPL`: a reply.
    pub const REPL: Kind = Kind(*b"REPL");
    /// `ERRO`: an error reply.
    pub const ERRO: Kind = Kind(*b"ERRO");
    /// `FINF`: file size and digest (p2pipe extension).
    pub const FINF: Kind = Kind(*b"FINF");
    /// `FRNG`: fetch a byte range of a file (p2pipe extension).
    pub const FRNG: Kind = Kind(*b"FRNG");
    /// `QHST`: a search carrying its history (p2pipe extension).
    pub const QHST: Kind = Kind(*b"QHST");
    /// `CHAL`: ask for a nonce for a trusted request (p2pipe extension).
    pub const CHAL: Kind = Kind(*b"CHAL");
    /// `TRST`: a trusted request (p2pipe extension).
    pub const TRST: Kind = Kind(*b"TRST");
    /// `FLST`: the files a node knows (p2pipe extension).
    pub const FLST: Kind = Kind(*b"FLST");
    /// `FPFX`: the SHA-256 of the start of a file (p2pipe extension).
    pub const FPFX: Kind = Kind(*b"FPFX");
    /// `SRCH`: a search answered on the asker's own connection (p2pipe extension).
    pub const SRCH: Kind = Kind(*b"SRCH");

    /// A type from its four bytes, upper-cased as receivers do.
    pub const fn new(bytes: [u8; 4]) -> Kind {
        Kind([
            bytes[0].to_ascii_uppercase(),
            bytes[1].to_ascii_uppercase(),
            bytes[2].to_ascii_uppercase(),
            bytes[3].to_ascii_uppercase(),
        ])
    }

    /// The four bytes.
    pub const fn as_bytes(&self) -> &[u8; 4] {
        &self.0
    }

    /// The type as lower-case text (for error messages).
    pub fn to_lowercase(&self) -> String {
        self.to_string().to_lowercase()
    }
}

impl fmt::Display for Kind {
    /// Printable ASCII as it is, other bytes as `\xNN`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kind(\"{self}\")")
    }
}

/// A checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The type, upper-cased.
    pub kind: Kind,
    /// The payload length.
    pub len: u32,
}

impl Header {
    /// Reads a header from the first [`HEADER_LEN`] bytes of `bytes`.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] when fewer than [`HEADER_LEN`] bytes are given.
    pub fn parse(bytes: &[u8]) -> Result<Header, Error> {
        let (kind, len) = Framing::parse_btpeer_header(bytes).ok_or(Error::Truncated {
            got: bytes.len() as u64,
            expected: HEADER_LEN as u64,
        })?;
        Ok(Header {
            kind: Kind::new(kind),
            len,
        })
    }

    /// The header for a payload of `len` bytes, for a body sent in pieces.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] when `len` does not fit the u32 length field.
    pub fn for_payload(kind: Kind, len: u64) -> Result<Header, Error> {
        let len = u32::try_from(len).map_err(|_| Error::TooLarge {
            len,
            max: MAX_PAYLOAD,
        })?;
        Ok(Header { kind, len })
    }

    /// Appends the header's eight bytes to `out`.
    pub fn emit(&self, out: &mut BytesMut) {
        let mut head = [0u8; HEADER_LEN];
        Framing::emit_btpeer_header(self.kind.0, self.len, &mut head);
        out.put_slice(&head);
    }
}

/// One whole frame. Its payload fits the u32 length field: a longer one is refused when
/// the frame is built, so [`emit`](Frame::emit) cannot fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The type, upper-cased.
    pub kind: Kind,
    payload: Bytes,
}

impl Frame {
    /// A frame of this type and payload.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] when the payload does not fit the u32 length field.
    pub fn new(kind: Kind, payload: impl Into<Bytes>) -> Result<Frame, Error> {
        let payload = payload.into();
        Header::for_payload(kind, payload.len() as u64)?;
        Ok(Frame { kind, payload })
    }

    /// A frame whose payload is built from bounded fields (ids, names, keys, counts,
    /// short texts), far below the u32 limit: the replies and requests of `msg`.
    pub(crate) fn control(kind: Kind, payload: impl Into<Bytes>) -> Frame {
        let payload = payload.into();
        debug_assert!(payload.len() as u64 <= MAX_PAYLOAD);
        Frame { kind, payload }
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Reads the frame at the start of `bytes` (bytes after it are not looked at).
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] when `bytes` holds less than the header and the payload it
    /// announces; nothing is allocated (the payload is copied once it is all there).
    pub fn parse(bytes: &[u8]) -> Result<Frame, Error> {
        let header = Header::parse(bytes)?;
        let end = HEADER_LEN as u64 + u64::from(header.len);
        let payload = bytes
            .get(HEADER_LEN..)
            .and_then(|rest| rest.get(..header.len as usize))
            .ok_or(Error::Truncated {
                got: bytes.len() as u64,
                expected: end,
            })?;
        Ok(Frame {
            kind: header.kind,
            payload: Bytes::copy_from_slice(payload),
        })
    }

    /// The frame's header.
    pub fn header(&self) -> Header {
        Header {
            kind: self.kind,
            len: self.payload.len() as u32,
        }
    }

    /// The length of the frame on the wire.
    pub fn emit_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Appends the frame's bytes to `out`.
    pub fn emit(&self, out: &mut BytesMut) {
        out.reserve(self.emit_len());
        self.header().emit(out);
        out.put_slice(&self.payload);
    }

    /// The frame a message of the pipe's btpeer framing ([`Framing::Btpeer`]) holds: the
    /// type followed by the payload. `None` for fewer than 4 bytes.
    pub(crate) fn from_pipe_message(data: Bytes) -> Option<Frame> {
        let kind = Kind::new(data.get(..4)?.try_into().ok()?);
        Some(Frame {
            kind,
            payload: data.slice(4..),
        })
    }
}

/// What the decoder read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole control frame.
    Frame(Frame),
    /// A streamed frame begins; `len` payload bytes follow as [`Event::BodyChunk`]s.
    BodyStart {
        /// The type, upper-cased.
        kind: Kind,
        /// The payload length.
        len: u64,
    },
    /// The next bytes of a streamed payload (never empty).
    BodyChunk(Bytes),
    /// A streamed payload is complete.
    BodyEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Body { len: u64, remaining: u64 },
}

/// A streaming btpeer decoder with a bound on what it buffers.
///
/// Feed it a buffer the reads append to; each call to [`decode`](Decoder::decode) takes
/// what it can and returns at most one [`Event`]. A control frame is buffered until whole,
/// and only when its length is within `max_control`. A frame whose type the caller marked
/// as streamed ([`expect_body`](Decoder::expect_body), [`stream_if`](Decoder::stream_if))
/// is always streamed, whatever its length: its payload is handed out in the pieces it
/// arrived in, so the decoder never holds a whole body.
///
/// After an error the connection is unusable; the decoder keeps refusing the same header.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_control: usize,
    stream: Option<fn(Kind) -> bool>,
    state: State,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(MAX_CONTROL)
    }
}

fn is_repl(kind: Kind) -> bool {
    kind == Kind::REPL
}

impl Decoder {
    /// A decoder that accepts control frames of up to `max_control` payload bytes and
    /// streams nothing.
    pub fn new(max_control: usize) -> Decoder {
        Decoder {
            max_control,
            stream: None,
            state: State::Header,
        }
    }

    /// The bound on a control frame's payload.
    pub fn max_control(&self) -> usize {
        self.max_control
    }

    /// With `true`, `REPL` frames from the next header on are streamed as bodies (a reply
    /// that carries file bytes); `ERRO` and other frames still arrive whole. With
    /// `false`, nothing is streamed.
    pub fn expect_body(&mut self, on: bool) {
        self.stream = on.then_some(is_repl as fn(Kind) -> bool);
    }

    /// Streams the frames whose type `pred` accepts, from the next header on.
    pub fn stream_if(&mut self, pred: fn(Kind) -> bool) {
        self.stream = Some(pred);
    }

    /// Whether the decoder is inside a streamed body.
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::Body { .. })
    }

    /// Takes the next event from `buf`, or `None` if more bytes are needed.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] for a frame that is not streamed and whose length is over
    /// `max_control`; nothing is reserved for it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, Error> {
        match self.state {
            State::Body { remaining: 0, .. } => {
                self.state = State::Header;
                Ok(Some(Event::BodyEnd))
            }
            State::Body { len, remaining } => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = remaining.min(buf.len() as u64);
                self.state = State::Body {
                    len,
                    remaining: remaining - n,
                };
                Ok(Some(Event::BodyChunk(buf.split_to(n as usize).freeze())))
            }
            State::Header => {
                if buf.len() < HEADER_LEN {
                    return Ok(None);
                }
                let header = Header::parse(buf)?;
                let len = u64::from(header.len);
                if self.stream.is_some_and(|pred| pred(header.kind)) {
                    buf.advance(HEADER_LEN);
                    self.state = State::Body {
                        len,
                        remaining: len,
                    };
                    return Ok(Some(Event::BodyStart {
                        kind: header.kind,
                        len,
                    }));
                }
                if len > self.max_control as u64 {
                    return Err(Error::TooLarge {
                        len,
                        max: self.max_control as u64,
                    });
                }
                let total = HEADER_LEN + len as usize;
                if buf.len() < total {
                    // Bounded: total <= HEADER_LEN + max_control.
                    buf.reserve(total - buf.len());
                    return Ok(None);
                }
                buf.advance(HEADER_LEN);
                let payload = buf.split_to(len as usize).freeze();
                Ok(Some(Event::Frame(Frame {
                    kind: header.kind,
                    payload,
                })))
            }
        }
    }

    /// [`decode`](Self::decode), or [`decode_eof`](Self::decode_eof) once the stream
    /// has ended (`eof`): one call for a read loop.
    ///
    /// # Errors
    ///
    /// As those two.
    pub fn decode_next(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Option<Event>, Error> {
        if eof {
            self.decode_eof(buf)
        } else {
            self.decode(buf)
        }
    }

    /// Takes the next event once the stream has ended.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] when the stream ended inside a header, a control payload or a
    /// body: a short header or payload means no message. [`Error::TooLarge`] as for
    /// [`decode`](Decoder::decode).
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, Error> {
        if let Some(event) = self.decode(buf)? {
            return Ok(Some(event));
        }
        match self.state {
            State::Header if buf.is_empty() => Ok(None),
            State::Header => {
                let expected = match Header::parse(buf) {
                    Ok(h) => HEADER_LEN as u64 + u64::from(h.len),
                    Err(_) => HEADER_LEN as u64,
                };
                Err(Error::Truncated {
                    got: buf.len() as u64,
                    expected,
                })
            }
            State::Body { len, remaining } => Err(Error::Truncated {
                got: HEADER_LEN as u64 + (len - remaining),
                expected: HEADER_LEN as u64 + len,
            }),
        }
    }
}

impl tokio_util::codec::Decoder for Decoder {
    type Item = Event;
    type Error = Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, Error> {
        Decoder::decode(self, buf)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, Error> {
        Decoder::decode_eof(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` `step` bytes at a time, then ends the stream.
    fn run(d: &mut Decoder, input: &[u8], step: usize) -> (Vec<Event>, Option<Error>) {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&mut buf) {
                    Ok(Some(e)) => out.push(e),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        loop {
            match d.decode_eof(&mut buf) {
                Ok(Some(e)) => out.push(e),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    fn frame(kind: Kind, payload: &'static [u8]) -> Event {
        Event::Frame(Frame::new(kind, payload).unwrap())
    }

    fn put(kind: Kind, payload: &[u8], out: &mut BytesMut) {
        Frame::new(kind, Bytes::copy_from_slice(payload))
            .unwrap()
            .emit(out);
    }

    #[test]
    fn name_with_empty_payload_is_eight_bytes() {
        let mut bytes = BytesMut::new();
        let name = Frame::new(Kind::NAME, Bytes::new()).unwrap();
        name.emit(&mut bytes);
        assert_eq!(&bytes[..], b"NAME\0\0\0\0");
        assert_eq!(name.emit_len(), 8);
        assert_eq!(Frame::parse(&bytes), Ok(name));
        assert_eq!(
            Frame::parse(b"QUER\0\0\0\x09abc"),
            Err(Error::Truncated {
                got: 11,
                expected: 17
            })
        );
        let mut out = BytesMut::new();
        put(Kind::QUER, b"me k 5", &mut out);
        assert_eq!(&out[..], b"QUER\x00\x00\x00\x06me k 5");
    }

    #[test]
    fn header_round_trip_and_checks() {
        let h = Header::parse(b"REPL\x01\x02\x03\x04rest").unwrap();
        assert_eq!(h.kind, Kind::REPL);
        assert_eq!(h.len, 0x0102_0304);
        let mut out = BytesMut::new();
        h.emit(&mut out);
        assert_eq!(&out[..], b"REPL\x01\x02\x03\x04");
        assert_eq!(
            Header::parse(b"REP"),
            Err(Error::Truncated {
                got: 3,
                expected: 8
            })
        );
        assert_eq!(
            Header::for_payload(Kind::REPL, 1 << 32),
            Err(Error::TooLarge {
                len: 1 << 32,
                max: MAX_PAYLOAD
            })
        );
        assert_eq!(
            Header::for_payload(Kind::REPL, MAX_PAYLOAD).unwrap().len,
            u32::MAX
        );
    }

    #[test]
    fn lowercase_type_is_upper_cased() {
        let (events, err) = run(&mut Decoder::default(), b"join\0\0\0\x02abpInG\0\0\0\0", 64);
        assert_eq!(err, None);
        assert_eq!(
            events,
            vec![frame(Kind::JOIN, b"ab"), frame(Kind::PING, b"")]
        );
        assert_eq!(Kind::new(*b"quer"), Kind::QUER);
        assert_eq!(Kind::new(*b"a1\xe9z").as_bytes(), b"A1\xe9Z");
        assert_eq!(Kind::new(*b"a1\xe9z").to_string(), "A1\\xe9Z");
        assert_eq!(format!("{:?}", Kind::NAME), "Kind(\"NAME\")");
    }

    #[test]
    fn frames_split_one_byte_at_a_time() {
        let mut wire = BytesMut::new();
        put(Kind::QUER, b"10.0.0.1:5000 song 4", &mut wire);
        put(Kind::NAME, b"", &mut wire);
        put(Kind::REPL, b"x", &mut wire);
        for step in [1, 2, 3, 7, 8, 9, wire.len()] {
            let (events, err) = run(&mut Decoder::default(), &wire, step);
            assert_eq!(err, None, "step {step}");
            assert_eq!(
                events,
                vec![
                    frame(Kind::QUER, b"10.0.0.1:5000 song 4"),
                    frame(Kind::NAME, b""),
                    frame(Kind::REPL, b"x"),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn four_gib_claim_is_refused_without_allocation() {
        let mut d = Decoder::default();
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(b"FGET\xff\xff\xff\xffx");
        let cap = buf.capacity();
        let err = Error::TooLarge {
            len: 0xffff_ffff,
            max: MAX_CONTROL as u64,
        };
        assert_eq!(d.decode(&mut buf), Err(err.clone()));
        assert_eq!(buf.capacity(), cap, "nothing was reserved");
        assert!(buf.capacity() < 1024);
        // It keeps refusing, and the end of the stream does not turn it into a frame.
        assert_eq!(d.decode(&mut buf), Err(err.clone()));
        assert_eq!(d.decode_eof(&mut buf), Err(err));
        // One over a small bound is refused; exactly the bound is accepted.
        let mut d = Decoder::new(4);
        assert_eq!(
            run(&mut d, b"REPL\0\0\0\x05abcde", 3).1,
            Some(Error::TooLarge { len: 5, max: 4 })
        );
        let (events, err) = run(&mut Decoder::new(4), b"REPL\0\0\0\x04abcd", 3);
        assert_eq!((events, err), (vec![frame(Kind::REPL, b"abcd")], None));
    }

    #[test]
    fn control_frame_reserves_only_what_it_claims() {
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&b"REPL\0\0\x01\0"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(buf.capacity() >= 8 + 256);
        assert!(buf.capacity() < 8 * 1024);
    }

    #[test]
    fn bodies_stream_in_chunks() {
        let mut wire = BytesMut::new();
        let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        put(Kind::REPL, &body, &mut wire);
        let mut d = Decoder::new(16);
        d.expect_body(true);
        let (events, err) = run(&mut d, &wire, 4096);
        assert_eq!(err, None);
        assert_eq!(
            events[0],
            Event::BodyStart {
                kind: Kind::REPL,
                len: 100_000
            }
        );
        assert_eq!(events.last(), Some(&Event::BodyEnd));
        let chunks: Vec<&[u8]> = events[1..events.len() - 1]
            .iter()
            .map(|e| match e {
                Event::BodyChunk(c) => &c[..],
                other => panic!("not a chunk: {other:?}"),
            })
            .collect();
        assert!(chunks.len() > 20, "streamed in pieces, not held whole");
        assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= 4096));
        assert_eq!(chunks.concat(), body);
        assert!(!d.in_body());
    }

    #[test]
    fn errors_arrive_whole_while_expecting_a_body() {
        let mut wire = BytesMut::new();
        put(Kind::ERRO, b"File not found", &mut wire);
        put(Kind::REPL, b"", &mut wire);
        put(Kind::REPL, b"ab", &mut wire);
        let mut d = Decoder::default();
        d.expect_body(true);
        let (events, err) = run(&mut d, &wire, 1);
        assert_eq!(err, None);
        assert_eq!(
            events,
            vec![
                frame(Kind::ERRO, b"File not found"),
                Event::BodyStart {
                    kind: Kind::REPL,
                    len: 0
                },
                Event::BodyEnd,
                Event::BodyStart {
                    kind: Kind::REPL,
                    len: 2
                },
                Event::BodyChunk(Bytes::from_static(b"a")),
                Event::BodyChunk(Bytes::from_static(b"b")),
                Event::BodyEnd,
            ]
        );
        // A streamed frame's length is not bound by max_control: a 4 GiB claim is
        // announced, not buffered.
        let mut d = Decoder::new(4);
        d.stream_if(|k| k == Kind::FGET);
        let mut buf = BytesMut::from(&b"fget\xff\xff\xff\xff"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Ok(Some(Event::BodyStart {
                kind: Kind::FGET,
                len: 0xffff_ffff
            }))
        );
        assert!(d.in_body());
        // Turning streaming off: REPL is a control frame again.
        let mut d = Decoder::new(1);
        d.expect_body(true);
        d.expect_body(false);
        assert_eq!(
            run(&mut d, b"REPL\0\0\0\x02ab", 10).1,
            Some(Error::TooLarge { len: 2, max: 1 })
        );
    }

    #[test]
    fn truncation_at_eof_is_an_error() {
        let cases: [(&[u8], u64, u64); 4] = [
            (b"NAM", 3, 8),
            (b"NAME\0\0\0", 7, 8),
            (b"QUER\0\0\0\x09abc", 11, 17),
            (b"REPL\0\0\0\x01", 8, 9),
        ];
        for (input, got, expected) in cases {
            for step in [1, input.len()] {
                let (events, err) = run(&mut Decoder::default(), input, step);
                assert!(events.is_empty());
                assert_eq!(err, Some(Error::Truncated { got, expected }), "{input:?}");
            }
        }
        // A body cut short: the chunks that came are delivered, then the error.
        let mut d = Decoder::default();
        d.expect_body(true);
        let (events, err) = run(&mut d, b"REPL\0\0\0\x05abc", 2);
        assert_eq!(
            events,
            vec![
                Event::BodyStart {
                    kind: Kind::REPL,
                    len: 5
                },
                Event::BodyChunk(Bytes::from_static(b"ab")),
                Event::BodyChunk(Bytes::from_static(b"c")),
            ]
        );
        assert_eq!(
            err,
            Some(Error::Truncated {
                got: 11,
                expected: 13
            })
        );
        // A clean end between frames is no error.
        assert_eq!(run(&mut Decoder::default(), b"PING\0\0\0\0", 1).1, None);
        assert_eq!(run(&mut Decoder::default(), b"", 1), (vec![], None));
    }

    #[test]
    fn works_as_a_tokio_util_decoder() {
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&b"NAME\0\0\0\0NA"[..]);
        assert_eq!(
            tokio_util::codec::Decoder::decode(&mut d, &mut buf),
            Ok(Some(frame(Kind::NAME, b"")))
        );
        assert!(matches!(
            tokio_util::codec::Decoder::decode_eof(&mut d, &mut buf),
            Err(Error::Truncated { got: 2, .. })
        ));
    }
}
