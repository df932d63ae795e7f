//! What one message is on a byte stream.
//!
//! A UDP datagram is always one message. On TCP the pipe's [`Framing`] cuts the
//! stream into messages. Every decoder checks a length against the pipe's
//! `max_frame` before it reserves room for it, so a peer that claims a 4 GiB
//! frame costs nothing but the closed connection.

use std::fmt;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::Error;

/// The header size of a btpeer frame: 4 type bytes and a big-endian u32 length.
pub const BTPEER_HEADER: usize = 8;

/// The longest header a built-in framing writes before a payload: btpeer's, longer
/// than `LengthPrefixed`'s 4 bytes. Senders build headers in a stack buffer this long.
pub(crate) const MAX_HEADER: usize = 8;

/// How a TCP byte stream is cut into messages.
///
/// | framing | one message is | `send(data)` writes |
/// |---|---|---|
/// | `Raw` | whatever one read returned | `data` |
/// | `Lines` | a line, without its `\n` (and `\r`) | `data` and `\n` |
/// | `LengthPrefixed` | a payload after its u32 big-endian length | length, then `data` |
/// | `Btpeer` | type (4 bytes) followed by payload, without the length | type, length, payload |
/// | `Custom` | whatever your decoder yields | what your encoder writes for `data` (`data` as given without one) |
#[derive(Clone, Default)]
pub enum Framing {
    /// Chunks as they are read. The fastest; message boundaries are not kept.
    #[default]
    Raw,
    /// Newline-terminated lines.
    Lines,
    /// A u32 big-endian length before every payload.
    LengthPrefixed,
    /// btpeer frames: 4-byte type, u32 big-endian length, payload
    /// (see `docs/protocol.md`). A message is the type followed by the payload.
    Btpeer,
    /// Any tokio-util [`Decoder`], and optionally an [`Encoder`], made fresh for every
    /// connection: see [`Framing::custom`] and [`Framing::codec`].
    Custom(CustomFraming),
}

impl fmt::Debug for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::Raw => "Raw",
            Framing::Lines => "Lines",
            Framing::LengthPrefixed => "LengthPrefixed",
            Framing::Btpeer => "Btpeer",
            Framing::Custom(_) => "Custom",
        })
    }
}

/// Object-safe form of a user decoder.
trait DynDecoder: Send {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error>;
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error>;
}

struct Adapter<D>(D);

impl<D> DynDecoder for Adapter<D>
where
    D: Decoder + Send,
    D::Item: Into<Bytes>,
    D::Error: fmt::Display,
{
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        self.0
            .decode(buf)
            .map(|o| o.map(Into::into))
            .map_err(|e| Error::BadFrame(e.to_string()))
    }
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        self.0
            .decode_eof(buf)
            .map(|o| o.map(Into::into))
            .map_err(|e| Error::BadFrame(e.to_string()))
    }
}

/// Object-safe form of a user encoder.
pub(crate) trait DynEncoder: Send {
    /// Appends the wire form of the message `data` to `out`.
    fn encode(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), Error>;
}

impl<E> DynEncoder for Adapter<E>
where
    E: Encoder<Bytes> + Send,
    E::Error: fmt::Display,
{
    fn encode(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), Error> {
        self.0
            .encode(Bytes::copy_from_slice(data), out)
            .map_err(|e| Error::BadFrame(e.to_string()))
    }
}

type DecoderFactory = dyn Fn() -> Box<dyn DynDecoder> + Send + Sync;
type EncoderFactory = dyn Fn() -> Box<dyn DynEncoder> + Send + Sync;

/// A factory of user decoders (and encoders), one per connection. Build it with
/// [`Framing::custom`] or [`Framing::codec`].
#[derive(Clone)]
pub struct CustomFraming {
    decoder: Arc<DecoderFactory>,
    encoder: Option<Arc<EncoderFactory>>,
}

impl Framing {
    /// Frames the stream with any tokio-util decoder. `make` is called once per
    /// connection. The decoder is responsible for bounding its own lengths;
    /// the pipe still ends a connection whose unframed bytes exceed `max_frame`.
    /// A send writes its bytes as given: use [`Framing::codec`] to frame them too.
    pub fn custom<D, F>(make: F) -> Framing
    where
        F: Fn() -> D + Send + Sync + 'static,
        D: Decoder + Send + 'static,
        D::Item: Into<Bytes>,
        D::Error: fmt::Display,
    {
        Framing::Custom(CustomFraming {
            decoder: Arc::new(move || Box::new(Adapter(make())) as Box<dyn DynDecoder>),
            encoder: None,
        })
    }

    /// Frames the stream both ways with a tokio-util codec: its [`Decoder`] cuts what
    /// arrives into messages, as with [`Framing::custom`], and its [`Encoder`] writes
    /// what is sent: `send(data)` writes what `encode(data)` appends. `make` is called
    /// twice per connection, once for the reading side and once for the sending side,
    /// so that the two never wait for each other. The `max_frame` limit applies to
    /// the message given to `send`.
    ///
    /// ```
    /// use p2pipe::{Framing, PipeConfig};
    /// use tokio_util::codec::LengthDelimitedCodec;
    /// let cfg = PipeConfig::default().framing(Framing::codec(LengthDelimitedCodec::new));
    /// ```
    pub fn codec<C, F>(make: F) -> Framing
    where
        F: Fn() -> C + Send + Sync + 'static,
        C: Decoder + Encoder<Bytes> + Send + 'static,
        <C as Decoder>::Item: Into<Bytes>,
        <C as Decoder>::Error: fmt::Display,
        <C as Encoder<Bytes>>::Error: fmt::Display,
    {
        let make = Arc::new(make);
        let for_encoder = make.clone();
        Framing::Custom(CustomFraming {
            decoder: Arc::new(move || Box::new(Adapter(make())) as Box<dyn DynDecoder>),
            encoder: Some(Arc::new(move || {
                Box::new(Adapter(for_encoder())) as Box<dyn DynEncoder>
            })),
        })
    }

    /// A fresh encoder for one connection, if the framing has one of its own.
    pub(crate) fn encoder(&self) -> Option<Box<dyn DynEncoder>> {
        match self {
            Framing::Custom(CustomFraming {
                encoder: Some(make),
                ..
            }) => Some(make()),
            _ => None,
        }
    }

    pub(crate) fn decoder(&self, max_frame: usize, chunk: usize) -> FrameDecoder {
        let kind = match self {
            Framing::Raw => Kind::Raw,
            Framing::Lines => Kind::Lines { scanned: 0 },
            Framing::LengthPrefixed => Kind::Length,
            Framing::Btpeer => Kind::Btpeer,
            Framing::Custom(c) => Kind::Custom((c.decoder)()),
        };
        FrameDecoder {
            kind,
            max_frame,
            chunk,
        }
    }

    /// The size of a btpeer header (the one definition the file-sharing layer uses too).
    pub(crate) const BTPEER_HEADER: usize = BTPEER_HEADER;

    /// Reads a btpeer header from the first [`BTPEER_HEADER`] bytes of `bytes`: the type
    /// bytes as sent and the payload length. `None` when fewer bytes are given.
    pub(crate) fn parse_btpeer_header(bytes: &[u8]) -> Option<([u8; 4], u32)> {
        let head = bytes.get(..BTPEER_HEADER)?;
        Some((
            [head[0], head[1], head[2], head[3]],
            u32::from_be_bytes([head[4], head[5], head[6], head[7]]),
        ))
    }

    /// Writes the btpeer header of a `len`-byte payload of type `kind` into `head`.
    pub(crate) fn emit_btpeer_header(kind: [u8; 4], len: u32, head: &mut [u8; BTPEER_HEADER]) {
        head[..4].copy_from_slice(&kind);
        head[4..].copy_from_slice(&len.to_be_bytes());
    }

    /// Bytes written before the payload, and after it, for a message of `len`
    /// payload bytes. Checks what the framing forbids.
    pub(crate) fn frame_header(
        &self,
        data: &[u8],
        max_frame: usize,
        head: &mut [u8; MAX_HEADER],
    ) -> Result<(usize, usize, &'static [u8]), Error> {
        // Returns (header length, payload offset into data, trailer).
        let payload_len = match self {
            Framing::Btpeer => data.len().saturating_sub(4),
            _ => data.len(),
        };
        if payload_len > max_frame {
            return Err(Error::TooLarge {
                len: payload_len as u64,
                max: max_frame,
            });
        }
        match self {
            Framing::Raw | Framing::Custom(_) => Ok((0, 0, b"")),
            Framing::Lines => {
                if data.contains(&b'\n') {
                    return Err(Error::BadFrame("a line cannot contain a newline".into()));
                }
                Ok((0, 0, b"\n"))
            }
            Framing::LengthPrefixed => {
                head[..4].copy_from_slice(&(data.len() as u32).to_be_bytes());
                Ok((4, 0, b""))
            }
            Framing::Btpeer => {
                if data.len() < 4 {
                    return Err(Error::BadFrame(
                        "a btpeer message starts with its 4-byte type".into(),
                    ));
                }
                let kind = [data[0], data[1], data[2], data[3]];
                Framing::emit_btpeer_header(kind, payload_len as u32, head);
                Ok((8, 4, b""))
            }
        }
    }

    /// Appends one message to `out` as this framing puts it on the wire (a
    /// convenience for tests and tools). Fails where a send would: a message over
    /// `max_frame`, a line with a newline, a btpeer message shorter than its type
    /// (then nothing is appended), or an error of a codec's encoder.
    pub fn frame(&self, data: &[u8], max_frame: usize, out: &mut BytesMut) -> Result<(), Error> {
        let mut head = [0u8; MAX_HEADER];
        let (h, skip, trailer) = self.frame_header(data, max_frame, &mut head)?;
        if let Some(mut encoder) = self.encoder() {
            return encoder.encode(data, out);
        }
        out.reserve(h + data.len() - skip + trailer.len());
        out.put_slice(&head[..h]);
        out.put_slice(&data[skip..]);
        out.put_slice(trailer);
        Ok(())
    }
}

enum Kind {
    Raw,
    Lines { scanned: usize },
    Length,
    Btpeer,
    Custom(Box<dyn DynDecoder>),
}

/// The decoder a connection reads with.
pub(crate) struct FrameDecoder {
    kind: Kind,
    max_frame: usize,
    /// Bytes a raw read asks for.
    chunk: usize,
}

impl FrameDecoder {
    /// Bytes a frame needs in all, once its header is readable.
    fn need(&self, buf: &BytesMut) -> Result<Option<usize>, Error> {
        let (hdr, len) = match self.kind {
            Kind::Length if buf.len() >= 4 => (4, u32::from_be_bytes(buf[..4].try_into().unwrap())),
            Kind::Btpeer => match Framing::parse_btpeer_header(buf) {
                Some((_, len)) => (BTPEER_HEADER, len),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        if len as usize > self.max_frame {
            return Err(Error::TooLarge {
                len: len as u64,
                max: self.max_frame,
            });
        }
        Ok(Some(hdr + len as usize))
    }
}

impl Decoder for FrameDecoder {
    type Item = Bytes;
    type Error = Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        match &mut self.kind {
            Kind::Raw => {
                if buf.is_empty() {
                    // About to read: make room for a whole chunk, or the read
                    // gets whatever tail the buffer has. Done here, not after
                    // the split, because by now the consumer has usually
                    // dropped the last chunk, and the buffer it shared is
                    // reclaimed instead of a new one allocated.
                    buf.reserve(self.chunk);
                    return Ok(None);
                }
                Ok(Some(buf.split().freeze()))
            }
            Kind::Lines { scanned } => match buf[*scanned..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let end = *scanned + i;
                    *scanned = 0;
                    let mut line = buf.split_to(end + 1);
                    line.truncate(end);
                    if line.last() == Some(&b'\r') {
                        line.truncate(end - 1);
                    }
                    Ok(Some(line.freeze()))
                }
                None if buf.len() > self.max_frame => Err(Error::TooLarge {
                    len: buf.len() as u64,
                    max: self.max_frame,
                }),
                None => {
                    *scanned = buf.len();
                    Ok(None)
                }
            },
            Kind::Length | Kind::Btpeer => {
                let Some(total) = self.need(buf)? else {
                    return Ok(None);
                };
                if buf.len() < total {
                    // Bounded: total <= header + max_frame.
                    buf.reserve(total - buf.len());
                    return Ok(None);
                }
                let mut frame = buf.split_to(total);
                if matches!(self.kind, Kind::Btpeer) {
                    // Move the type next to the payload: type ++ payload.
                    frame.copy_within(0..4, 4);
                }
                // Both headers end 4 bytes before what the message keeps.
                frame.advance(4);
                Ok(Some(frame.freeze()))
            }
            Kind::Custom(d) => {
                let out = d.decode(buf)?;
                if out.is_none() && buf.len() > self.max_frame {
                    return Err(Error::TooLarge {
                        len: buf.len() as u64,
                        max: self.max_frame,
                    });
                }
                Ok(out)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        match &mut self.kind {
            Kind::Raw => Ok(None),
            Kind::Lines { scanned } => {
                // A last line without its newline is still a line.
                *scanned = 0;
                Ok(Some(buf.split().freeze()))
            }
            Kind::Length | Kind::Btpeer => {
                let want = match self.need(buf)? {
                    Some(total) => total,
                    None if matches!(self.kind, Kind::Length) => 4,
                    None => BTPEER_HEADER,
                };
                Err(Error::Truncated {
                    have: buf.len(),
                    want,
                })
            }
            Kind::Custom(d) => match d.decode_eof(buf)? {
                Some(frame) => Ok(Some(frame)),
                None if buf.is_empty() => Ok(None),
                None => Err(Error::Truncated {
                    have: buf.len(),
                    want: buf.len() + 1,
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: &Framing, max: usize, input: &[u8]) -> (Vec<Bytes>, Option<Error>) {
        let mut d = framing.decoder(max, 4096);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        match d.decode_eof(&mut buf) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => {}
            Err(e) => return (out, Some(e)),
        }
        (out, None)
    }

    #[test]
    fn lines_strip_terminators_and_keep_last_line() {
        let (msgs, err) = decode_all(&Framing::Lines, 64, b"one\r\ntwo\n\nthree");
        assert!(err.is_none());
        assert_eq!(msgs, vec![&b"one"[..], b"two", b"", b"three"]);
    }

    #[test]
    fn lines_over_limit_is_refused() {
        let (msgs, err) = decode_all(&Framing::Lines, 4, b"ok\nfarTooLong");
        assert_eq!(msgs, vec![&b"ok"[..]]);
        assert!(matches!(err, Some(Error::TooLarge { len: 10, max: 4 })));
    }

    #[test]
    fn length_prefixed_round_trip() {
        let mut wire = BytesMut::new();
        for m in [&b"alpha"[..], b"", b"\x00\xff"] {
            Framing::LengthPrefixed.frame(m, 16, &mut wire).unwrap();
        }
        assert_eq!(&wire[..9], b"\x00\x00\x00\x05alpha");
        let (msgs, err) = decode_all(&Framing::LengthPrefixed, 16, &wire);
        assert!(err.is_none());
        assert_eq!(msgs, vec![&b"alpha"[..], b"", b"\x00\xff"]);
    }

    #[test]
    fn huge_length_is_refused_before_allocation() {
        let mut d = Framing::LengthPrefixed.decoder(1024, 4096);
        let mut buf = BytesMut::from(&b"\xff\xff\xff\xff"[..]);
        let cap = buf.capacity();
        assert!(matches!(
            d.decode(&mut buf),
            Err(Error::TooLarge {
                len: 0xffff_ffff,
                max: 1024
            })
        ));
        assert_eq!(buf.capacity(), cap, "nothing was reserved");
    }

    #[test]
    fn btpeer_frames_carry_type_then_payload() {
        let mut wire = BytesMut::new();
        Framing::Btpeer.frame(b"QUERme k 5", 64, &mut wire).unwrap();
        Framing::Btpeer.frame(b"PING", 64, &mut wire).unwrap();
        assert_eq!(&wire[..], b"QUER\x00\x00\x00\x06me k 5PING\x00\x00\x00\x00");
        let (msgs, err) = decode_all(&Framing::Btpeer, 64, &wire);
        assert!(err.is_none());
        assert_eq!(msgs, vec![&b"QUERme k 5"[..], b"PING"]);
    }

    #[test]
    fn btpeer_claiming_4gib_is_refused() {
        let (msgs, err) = decode_all(&Framing::Btpeer, 65536, b"FGET\xff\xff\xff\xffx");
        assert!(msgs.is_empty());
        assert!(matches!(
            err,
            Some(Error::TooLarge {
                len: 0xffff_ffff,
                ..
            })
        ));
    }

    #[test]
    fn truncated_frames_are_reported() {
        let (_, err) = decode_all(&Framing::LengthPrefixed, 64, b"\x00\x00\x00\x09abc");
        assert!(matches!(err, Some(Error::Truncated { have: 7, want: 13 })));
        let (_, err) = decode_all(&Framing::Btpeer, 64, b"NAM");
        assert!(matches!(err, Some(Error::Truncated { have: 3, want: 8 })));
    }

    #[test]
    fn frame_refuses_what_the_framing_forbids() {
        let mut out = BytesMut::new();
        assert!(Framing::Lines.frame(b"a\nb", 64, &mut out).is_err());
        assert!(Framing::Btpeer.frame(b"AB", 64, &mut out).is_err());
        assert!(matches!(
            Framing::LengthPrefixed.frame(&[0; 65], 64, &mut out),
            Err(Error::TooLarge { len: 65, max: 64 })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn custom_decoder_is_used() {
        let framing = Framing::custom(tokio_util::codec::LinesCodec::new);
        let (msgs, err) = decode_all(&framing, 64, b"x\ny\n");
        assert!(err.is_none());
        assert_eq!(msgs, vec![&b"x"[..], b"y"]);
    }

    #[test]
    fn codec_framing_encodes_what_it_decodes() {
        let framing = Framing::codec(tokio_util::codec::LengthDelimitedCodec::new);
        let mut wire = BytesMut::new();
        framing.frame(b"alpha", 64, &mut wire).unwrap();
        framing.frame(b"", 64, &mut wire).unwrap();
        assert_eq!(&wire[..9], b"\x00\x00\x00\x05alpha");
        let (msgs, err) = decode_all(&framing, 64, &wire);
        assert!(err.is_none());
        assert_eq!(msgs, vec![&b"alpha"[..], b""]);
        assert!(matches!(
            framing.frame(&[0; 65], 64, &mut wire),
            Err(Error::TooLarge { len: 65, max: 64 })
        ));
    }
}
