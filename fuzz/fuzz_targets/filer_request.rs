//! The btfiler request parser on an arbitrary type and payload.
//!
//! Input: byte 0 chooses the type (one of the known requests, REPL, ERRO, or bytes 1..5
//! as a raw type), the rest is the payload.
//!
//! Invariants: a parsed request has the frame's type, its `to_frame()` parses back to an
//! equal request (and a trusted operation's canonical text parses back to the same
//! operation); a refusal names the frame's type, and its reply, if any, is an ERRO frame
//! that encodes and decodes back to itself, of bounded length; unknown types never get a
//! reply.
#![no_main]

use std::str::FromStr;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use p2pipe::filer::wire::{Decoder, Event, Frame, Kind, Request, TrustedOp};

const KINDS: [Kind; 20] = [
    Kind::NAME,
    Kind::LIST,
    Kind::JOIN,
    Kind::QUER,
    Kind::RESP,
    Kind::FGET,
    Kind::QUIT,
    Kind::PING,
    Kind::REPL,
    Kind::ERRO,
    Kind::FINF,
    Kind::FRNG,
    Kind::QHST,
    Kind::CHAL,
    Kind::TRST,
    Kind::FLST,
    Kind::new(*b"quer"),
    Kind::new(*b"trst"),
    Kind::FPFX,
    Kind::SRCH,
];

/// Whether the type is one the node answers with a reply when the arguments are bad.
fn has_bad_args_reply(kind: Kind) -> bool {
    [
        Kind::JOIN,
        Kind::QUER,
        Kind::QHST,
        Kind::FGET,
        Kind::FINF,
        Kind::FRNG,
        Kind::CHAL,
        Kind::TRST,
        Kind::FPFX,
        Kind::SRCH,
    ]
    .contains(&kind)
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let (kind, payload) = match KINDS.get(usize::from(choice)) {
        Some(&k) => (k, rest),
        None if rest.len() >= 4 => (Kind::new(rest[..4].try_into().unwrap()), &rest[4..]),
        None => return,
    };
    let frame = Frame::new(kind, payload.to_vec()).expect("fuzz input is under 4 GiB");
    match Request::parse(&frame) {
        Ok(req) => {
            assert_eq!(req.kind(), kind);
            let again = req.to_frame();
            assert_eq!(again.kind, kind);
            assert_eq!(
                Request::parse(&again).as_ref(),
                Ok(&req),
                "round trip via {again:?}"
            );
            if let Request::Trst { op, .. } = &req {
                let text = op.to_string();
                assert_eq!(TrustedOp::from_str(&text).as_ref(), Ok(op));
            }
        }
        Err(e) => {
            assert_eq!(e.kind(), kind);
            assert!(!e.reason().is_empty());
            match e.reply() {
                Some(reply) => {
                    assert!(
                        has_bad_args_reply(kind) || kind == Kind::QUIT,
                        "{kind:?} got a reply"
                    );
                    assert_eq!(reply.kind, Kind::ERRO);
                    assert!(
                        reply.payload().len() <= 400,
                        "reply of {} bytes",
                        reply.payload().len()
                    );
                    assert!(std::str::from_utf8(reply.payload()).is_ok());
                    let mut buf = BytesMut::new();
                    reply.emit(&mut buf);
                    let mut d = Decoder::default();
                    assert_eq!(
                        d.decode_eof(&mut buf),
                        Ok(Some(Event::Frame(reply.clone())))
                    );
                    assert!(buf.is_empty());
                }
                None => assert!(
                    !has_bad_args_reply(kind),
                    "{kind:?} refused without a reply"
                ),
            }
        }
    }
});
