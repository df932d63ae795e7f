//! The btpeer frame decoder fed arbitrary bytes in arbitrary pieces.
//!
//! Input: byte 0 = flags (bit 0: expect_body; bits 1-3: max_control; bit 4: toggle
//! expect_body after every whole frame), byte 1 = how to split the rest (0: one piece;
//! else pieces of 1..=n bytes from a small PRNG), the rest = the stream.
//!
//! Invariants: every event is exactly the bytes it came from (a control frame re-encodes
//! to its input bytes, type upper-cased; chunks are the input bytes in order); a control
//! frame's payload is at most max_control; chunks are non-empty and sum to BodyStart's
//! len, then BodyEnd; TooLarge only for a non-streamed claim over max_control, and it
//! sticks; what the decoder leaves buffered is under one header + max_control, and the
//! buffer's capacity never follows a claimed length; the end of the stream is clean only
//! on a frame boundary.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use p2pipe::filer::wire::{Decoder, Event, Frame, Kind, HEADER_LEN, MAX_CONTROL};
use p2pipe::filer::Error;

const MAX_CONTROLS: [usize; 8] = [0, 1, 4, 16, 64, 1024, 4096, MAX_CONTROL];

struct Check<'a> {
    input: &'a [u8],
    max_control: usize,
    streaming: bool,
    /// Remaining bytes of the body being streamed.
    body: Option<u64>,
    /// Input offset of the first byte still in the buffer.
    pos: usize,
}

impl Check<'_> {
    fn event(&mut self, ev: &Event, consumed: usize) {
        let start = self.pos;
        let taken = &self.input[start..start + consumed];
        self.pos += consumed;
        match (ev, self.body) {
            (Event::Frame(f), None) => {
                assert!(
                    f.payload().len() <= self.max_control,
                    "control frame over the bound"
                );
                assert!(
                    !(self.streaming && f.kind == Kind::REPL),
                    "REPL not streamed"
                );
                let kind = Kind::new(taken[..4].try_into().unwrap());
                assert_eq!(f.kind, kind, "type upper-cased");
                let mut again = BytesMut::new();
                f.emit(&mut again);
                assert_eq!(f.emit_len(), again.len());
                assert_eq!(Frame::parse(taken).as_ref(), Ok(f), "parse gives the same frame");
                assert_eq!(again.len(), taken.len());
                assert_eq!(&again[4..], &taken[4..], "re-encoding gives the same bytes");
                assert!(!f.kind.as_bytes().iter().any(u8::is_ascii_lowercase));
            }
            (Event::BodyStart { kind, len }, None) => {
                assert_eq!(consumed, HEADER_LEN);
                assert!(
                    self.streaming && *kind == Kind::REPL,
                    "only REPL is streamed"
                );
                assert_eq!(*kind, Kind::new(taken[..4].try_into().unwrap()));
                assert_eq!(
                    *len,
                    u64::from(u32::from_be_bytes(taken[4..8].try_into().unwrap()))
                );
                self.body = Some(*len);
            }
            (Event::BodyChunk(c), Some(rem)) => {
                assert!(!c.is_empty(), "empty chunk");
                assert!(c.len() as u64 <= rem, "chunk past the body");
                assert_eq!(&c[..], taken);
                self.body = Some(rem - c.len() as u64);
            }
            (Event::BodyEnd, Some(0)) => {
                assert_eq!(consumed, 0);
                self.body = None;
            }
            (ev, body) => panic!("event {ev:?} out of order (body {body:?})"),
        }
    }

    fn too_large(&self, err: &Error, buf: &BytesMut) {
        let Error::TooLarge { len, max } = *err else {
            panic!("decode gave {err:?}");
        };
        assert!(self.body.is_none());
        assert_eq!(max, self.max_control as u64);
        assert!(len > max);
        let claimed = u32::from_be_bytes(buf[4..8].try_into().unwrap());
        assert_eq!(len, u64::from(claimed));
        let kind = Kind::new(buf[..4].try_into().unwrap());
        assert!(!(self.streaming && kind == Kind::REPL));
    }

    fn bounded(&self, buf: &BytesMut, fed: usize) {
        if self.body.is_some() {
            assert!(buf.is_empty(), "a body is handed out as it comes");
        } else {
            assert!(
                buf.len() < HEADER_LEN + self.max_control.max(1),
                "buffered {}",
                buf.len()
            );
        }
        // No allocation follows a claimed length beyond max_control.
        let bound = 4 * (HEADER_LEN + self.max_control) + 2 * fed + 64;
        assert!(
            buf.capacity() <= bound,
            "capacity {} over {bound}",
            buf.capacity()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (flags, split, input) = (data[0], data[1], &data[2..]);
    let max_control = MAX_CONTROLS[usize::from(flags >> 1) & 7];
    let toggle = flags & 0x10 != 0;
    let mut d = Decoder::new(max_control);
    let mut c = Check {
        input,
        max_control,
        streaming: flags & 1 != 0,
        body: None,
        pos: 0,
    };
    d.expect_body(c.streaming);

    let mut pieces = Vec::new();
    if split == 0 {
        pieces.push(input);
    } else {
        let mut rng = u32::from(split).wrapping_mul(2_654_435_761) | 1;
        let mut rest = input;
        while !rest.is_empty() {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            let n = (1 + rng as usize % usize::from(split)).min(rest.len());
            pieces.push(&rest[..n]);
            rest = &rest[n..];
        }
    }

    let mut buf = BytesMut::new();
    let mut fed = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            let before = buf.len();
            match d.decode(&mut buf) {
                Ok(Some(ev)) => {
                    c.event(&ev, before - buf.len());
                    assert_eq!(d.in_body(), c.body.is_some());
                    if toggle && matches!(ev, Event::Frame(_) | Event::BodyEnd) {
                        c.streaming = !c.streaming;
                        d.expect_body(c.streaming);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    c.too_large(&e, &buf);
                    assert_eq!(buf.len(), before, "nothing taken on error");
                    assert_eq!(d.decode(&mut buf), Err(e.clone()), "the error sticks");
                    assert_eq!(d.decode_eof(&mut buf), Err(e));
                    // The refused frame stays in the buffer (the caller closes), but
                    // nothing was reserved for it.
                    let bound = 4 * (HEADER_LEN + max_control) + 2 * fed + 64;
                    assert!(
                        buf.capacity() <= bound,
                        "capacity {} over {bound}",
                        buf.capacity()
                    );
                    return;
                }
            }
        }
        assert_eq!(c.pos + buf.len(), fed);
        c.bounded(&buf, fed);
    }
    loop {
        let before = buf.len();
        match d.decode_eof(&mut buf) {
            Ok(Some(ev)) => c.event(&ev, before - buf.len()),
            Ok(None) => {
                assert!(
                    buf.is_empty() && c.body.is_none(),
                    "clean end inside a frame"
                );
                assert_eq!(c.pos, input.len());
                return;
            }
            Err(Error::Truncated { got, expected }) => {
                assert!(got < expected);
                assert!(!buf.is_empty() || c.body.is_some());
                return;
            }
            Err(e) => {
                c.too_large(&e, &buf);
                return;
            }
        }
    }
});
