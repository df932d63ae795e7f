use bytes::{Bytes, BytesMut};

use super::reply::{self, FileInfo};
use super::*;
use crate::filer::frame::{Decoder, Event};
use crate::filer::peer::{Insert, PeerEntry};
use crate::filer::Error;

fn pid(s: &str) -> PeerId {
    PeerId::parse(s).unwrap()
}

/// Decodes one whole frame from wire bytes.
fn decode(wire: &[u8]) -> Frame {
    let mut buf = BytesMut::from(wire);
    match Decoder::default().decode_eof(&mut buf) {
        Ok(Some(Event::Frame(f))) if buf.is_empty() => f,
        other => panic!("{wire:?}: {other:?}"),
    }
}

fn wire(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame.emit(&mut out);
    out.to_vec()
}

fn parse(wire: &[u8]) -> Result<Request, ParseError> {
    Request::parse(&decode(wire))
}

fn bad_reply(input: &[u8]) -> Option<Vec<u8>> {
    parse(input).unwrap_err().reply().map(wire)
}

#[test]
fn original_requests_both_ways() {
    let cases: Vec<(&[u8], Request)> = vec![
        (b"NAME\0\0\0\0", Request::Name),
        (b"LIST\0\0\0\0", Request::List),
        (b"PING\0\0\0\0", Request::Ping),
        (
            b"JOIN\0\0\0\x1b10.0.0.2:5000 10.0.0.2 5000",
            Request::Join {
                pid: pid("10.0.0.2:5000"),
                host: "10.0.0.2".into(),
                port: 5000,
            },
        ),
        (
            b"QUER\0\0\0\x1810.0.0.2:5000 song.mp3 4",
            Request::Quer {
                ret: pid("10.0.0.2:5000"),
                key: "song.mp3".into(),
                ttl: 4,
            },
        ),
        (
            b"RESP\0\0\0\x16song.mp3 10.0.0.3:5001",
            Request::Resp {
                name: "song.mp3".into(),
                owner: pid("10.0.0.3:5001"),
            },
        ),
        (
            b"FGET\0\0\0\x08song.mp3",
            Request::Fget {
                name: "song.mp3".into(),
            },
        ),
        (
            b"QUIT\0\0\0\x0d10.0.0.2:5000",
            Request::Quit {
                pid: pid("10.0.0.2:5000"),
            },
        ),
    ];
    for (bytes, request) in cases {
        assert_eq!(parse(bytes).as_ref(), Ok(&request), "{bytes:?}");
        assert_eq!(wire(&request.to_frame()), bytes, "{request:?}");
        assert_eq!(request.kind(), decode(bytes).kind);
    }
}

#[test]
fn extension_requests_both_ways() {
    let nonce = Nonce([0xab; 16]);
    let mac = Mac([0x01; 32]);
    let cases: Vec<(String, Request)> = vec![
        (
            "FINF song.mp3".into(),
            Request::Finf {
                name: "song.mp3".into(),
            },
        ),
        (
            "FRNG song.mp3 1048576 65536".into(),
            Request::Frng {
                name: "song.mp3".into(),
                offset: 1 << 20,
                length: 1 << 16,
            },
        ),
        (
            "FPFX song.mp3 4096".into(),
            Request::Fpfx {
                name: "song.mp3".into(),
                length: 4096,
            },
        ),
        (
            "QHST 10.0.0.2:5000 song 3 00000000deadbeef 10.0.0.2:5000,[2001:db8::1]:5000".into(),
            Request::Qhst {
                ret: pid("10.0.0.2:5000"),
                key: "song".into(),
                ttl: 3,
                qid: QueryId(0xdead_beef),
                visited: vec![pid("10.0.0.2:5000"), pid("[2001:db8::1]:5000")],
            },
        ),
        ("CHAL".into(), Request::Chal),
        (
            "SRCH song 8 3000 300 256".into(),
            Request::Srch {
                key: "song".into(),
                ttl: 8,
                wait_ms: 3000,
                quiet_ms: 300,
                max: 256,
            },
        ),
        (
            format!("TRST {nonce} {mac} FIND song"),
            Request::Trst {
                nonce,
                mac,
                op: TrustedOp::Find { key: "song".into() },
            },
        ),
        (
            format!("TRST {nonce} {mac} ADDP [::1]:7000 ::1 7000"),
            Request::Trst {
                nonce,
                mac,
                op: TrustedOp::AddPeer {
                    pid: pid("[::1]:7000"),
                    host: "::1".into(),
                    port: 7000,
                },
            },
        ),
    ];
    for (text, request) in cases {
        let (kind, payload) = text.split_at(4);
        let payload = payload.strip_prefix(' ').unwrap_or(payload);
        let frame = Frame::control(
            Kind::new(kind.as_bytes().try_into().unwrap()),
            payload.to_owned(),
        );
        assert_eq!(Request::parse(&frame).as_ref(), Ok(&request), "{text}");
        assert_eq!(request.to_frame(), frame, "{text}");
    }
}

#[test]
fn lowercase_types_and_python_whitespace() {
    assert_eq!(
        parse(b"join\0\0\0\x1f\t10.0.0.2:5000  10.0.0.2\x0b5000\r\n"),
        Ok(Request::Join {
            pid: pid("10.0.0.2:5000"),
            host: "10.0.0.2".into(),
            port: 5000,
        })
    );
    assert_eq!(
        parse(b"name\0\0\0\x03xyz"),
        Ok(Request::Name),
        "payload ignored"
    );
    assert_eq!(
        parse(b"quit\0\0\0\x0f 10.0.0.2:5000\n"),
        Ok(Request::Quit {
            pid: pid("10.0.0.2:5000")
        })
    );
}

#[test]
fn unknown_and_stray_types_get_no_reply() {
    assert_eq!(
        parse(b"ABCD\0\0\0\x01x"),
        Ok(Request::Unknown(Kind::new(*b"ABCD")))
    );
    assert_eq!(parse(b"repl\0\0\0\0"), Ok(Request::Unknown(Kind::REPL)));
    assert_eq!(parse(b"ERRO\0\0\0\0"), Ok(Request::Unknown(Kind::ERRO)));
    assert_eq!(
        Request::Unknown(Kind::ERRO).to_frame(),
        Frame::control(Kind::ERRO, "")
    );
}

#[test]
fn malformed_join_and_quer_get_the_exact_errors() {
    let join_bad: &[u8] = b"ERRO\0\0\0\x19Join: incorrect arguments";
    for payload in [
        &b""[..],
        b"10.0.0.2:5000 10.0.0.2",
        b"10.0.0.2:5000 10.0.0.2 5000 extra",
        b"10.0.0.2 10.0.0.2 5000",
        b"10.0.0.2:5000 10.0.0.2 0",
        b"10.0.0.2:5000 10.0.0.2 65536",
        b"10.0.0.2:5000 10.0.0.2 -1",
        b"10.0.0.2:5000 bad,host 5000",
        b"10.0.0.2:5000 10.0.0.2 5\xff",
    ] {
        let frame = Frame::control(Kind::JOIN, Bytes::copy_from_slice(payload));
        let err = Request::parse(&frame).unwrap_err();
        assert_eq!(err.kind(), Kind::JOIN);
        assert_eq!(wire(err.reply().unwrap()), join_bad, "{payload:?}");
    }
    let query_bad: &[u8] = b"ERRO\0\0\0\x1aQuery: incorrect arguments";
    for payload in [
        &b"10.0.0.2:5000 key"[..],
        b"10.0.0.2:5000 key 4 more",
        b"10.0.0.2:5000 key four",
        b"10.0.0.2:5000 key 65",
        b"10.0.0.2:5000 key +4",
        b"10.0.0.2:5000 key 99999999999999999999999",
        b"nocolon key 4",
        b"10.0.0.2:5000 k\x01y 4",
    ] {
        let frame = Frame::control(Kind::QUER, Bytes::copy_from_slice(payload));
        let err = Request::parse(&frame).unwrap_err();
        assert_eq!(wire(err.reply().unwrap()), query_bad, "{payload:?}");
    }
    assert_eq!(
        parse(b"QUER\0\0\0\x08a:1 k 64"),
        Ok(Request::Quer {
            ret: pid("a:1"),
            key: "k".into(),
            ttl: MAX_TTL
        })
    );
    let err = parse(b"JOIN\0\0\0\0").unwrap_err();
    assert_eq!(err.to_string(), "bad join request: expected 3 fields");
    assert_eq!(err.reason(), "expected 3 fields");
}

#[test]
fn other_malformed_requests() {
    // RESP: no reply, as originally.
    assert_eq!(bad_reply(b"RESP\0\0\0\x04name"), None);
    // FGET: the whole payload is the name, so spaces make it unknown.
    let not_found = b"ERRO\0\0\0\x0eFile not found".to_vec();
    assert_eq!(bad_reply(b"FGET\0\0\0\x03a b"), Some(not_found.clone()));
    assert_eq!(bad_reply(b"FGET\0\0\0\x05name\n"), Some(not_found.clone()));
    assert_eq!(bad_reply(b"FGET\0\0\0\0"), Some(not_found));
    // QUIT: the original echoes the stripped payload.
    assert_eq!(
        bad_reply(b"QUIT\0\0\0\x05 a b\n"),
        Some(b"ERRO\0\0\0\x19Quit: peer not found: a b".to_vec())
    );
    assert_eq!(
        bad_reply(b"QUIT\0\0\0\0"),
        Some(b"ERRO\0\0\0\x16Quit: peer not found: ".to_vec())
    );
    let long = Frame::control(Kind::QUIT, "x".repeat(MAX_ID_LEN + 1));
    assert_eq!(Request::parse(&long).unwrap_err().reply(), None);
    assert_eq!(bad_reply(b"QUIT\0\0\0\x01\xff"), None);
    // Extensions.
    assert_eq!(
        bad_reply(b"FINF\0\0\0\x03a b"),
        Some(b"ERRO\0\0\0\x19Info: incorrect arguments".to_vec())
    );
    let range_bad = Some(b"ERRO\0\0\0\x1aRange: incorrect arguments".to_vec());
    assert_eq!(bad_reply(b"FRNG\0\0\0\x05a 1 x"), range_bad);
    assert_eq!(bad_reply(b"FPFX\0\0\0\x03a x"), range_bad);
    assert_eq!(bad_reply(b"FPFX\0\0\0\x05a 1 2"), range_bad);
    let overflow = format!("a {} 2", u64::MAX);
    let frame = Frame::control(Kind::FRNG, overflow);
    assert_eq!(
        Request::parse(&frame).unwrap_err().reason(),
        "range overflows"
    );
    let max = format!("a {} 0", u64::MAX);
    assert!(Request::parse(&Frame::control(Kind::FRNG, max)).is_ok());
    let search_bad = Some(b"ERRO\0\0\0\x1bSearch: incorrect arguments".to_vec());
    for (payload, reason) in [
        ("song 8 3000 300", "expected 5 fields"),
        ("song 65 3000 300 1", "bad ttl"),
        ("song 8 30001 300 1", "bad wait"),
        ("song 8 3000 3001 1", "bad quiet time"),
        ("song 8 3000 300 0", "bad answer count"),
        ("song 8 3000 300 257", "bad answer count"),
        ("song 8 -1 300 1", "bad wait"),
    ] {
        let e = Request::parse(&Frame::control(Kind::SRCH, payload)).unwrap_err();
        assert_eq!(e.reason(), reason, "{payload}");
        assert_eq!(e.reply().map(wire), search_bad, "{payload}");
    }
    assert_eq!(
        bad_reply(b"CHAL\0\0\0\x01x"),
        Some(b"ERRO\0\0\0\x1eChallenge: incorrect arguments".to_vec())
    );
    assert_eq!(parse(b"CHAL\0\0\0\x01\n"), Ok(Request::Chal));
    // Names and keys are bounded.
    let long = Frame::control(Kind::FINF, "n".repeat(MAX_NAME_LEN + 1));
    assert!(Request::parse(&long).is_err());
    let ok = Frame::control(Kind::FINF, "n".repeat(MAX_NAME_LEN));
    assert!(Request::parse(&ok).is_ok());
}

fn qhst(visited: &str) -> Frame {
    Frame::control(Kind::QHST, format!("a:1 key 2 0123456789abcdef {visited}"))
}

#[test]
fn history_bounds() {
    let ids: Vec<String> = (1..=MAX_HISTORY + 1)
        .map(|i| format!("10.0.0.{i}:1"))
        .collect();
    let full = ids[..MAX_HISTORY].join(",");
    match Request::parse(&qhst(&full)) {
        Ok(Request::Qhst { visited, qid, .. }) => {
            assert_eq!(visited.len(), MAX_HISTORY);
            assert_eq!(qid, QueryId(0x0123_4567_89ab_cdef));
        }
        other => panic!("{other:?}"),
    }
    let query_bad = Some(&reply::query_bad_args());
    let over = Request::parse(&qhst(&ids.join(","))).unwrap_err();
    assert_eq!(over.reason(), "history too long");
    assert_eq!(over.reply(), query_bad);
    for bad in ["a:1,", ",a:1", "a:1,,b:2", "a:1,b", "a:1;b:2"] {
        let err = Request::parse(&qhst(bad)).unwrap_err();
        assert_eq!(err.reply(), query_bad, "{bad}");
    }
    for qid in [
        "0123456789ABCDEF",
        "0123456789abcde",
        "0123456789abcdef0",
        "g123456789abcdef",
    ] {
        let f = Frame::control(Kind::QHST, format!("a:1 key 2 {qid} a:1"));
        assert_eq!(
            Request::parse(&f).unwrap_err().reason(),
            "bad query id",
            "{qid}"
        );
    }
    assert_eq!(QueryId(1).to_string(), "0000000000000001");
}

#[test]
fn trusted_requests_and_mac_input() {
    let nonce = Nonce(*b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff");
    let hex = "00112233445566778899aabbccddeeff";
    assert_eq!(nonce.to_string(), hex);
    let mac_hex = "ab".repeat(32);
    let frame = Frame::control(
        Kind::TRST,
        format!("{hex}  {mac_hex} rbld\t10.0.0.9 5000 3"),
    );
    let Ok(Request::Trst { nonce: n, mac, op }) = Request::parse(&frame) else {
        panic!("{:?}", Request::parse(&frame));
    };
    assert_eq!(n, nonce);
    assert_eq!(mac, Mac([0xab; 32]));
    assert_eq!(
        op,
        TrustedOp::Rebuild {
            host: "10.0.0.9".into(),
            port: 5000,
            hops: 3
        }
    );
    // The MAC covers the canonical text, not the bytes as sent.
    assert_eq!(
        op.mac_input(&nonce),
        b"00112233445566778899aabbccddeeff RBLD 10.0.0.9 5000 3".to_vec()
    );
    assert_eq!(
        mac_input(&nonce, "SHAR a.txt"),
        format!("{hex} SHAR a.txt").into_bytes()
    );
    assert_eq!(
        *Request::Trst { nonce, mac, op }.to_frame().payload(),
        Bytes::from(format!("{hex} {mac_hex} RBLD 10.0.0.9 5000 3"))
    );
    for text in [
        "FIND k",
        "SHAR a.txt",
        "ADDP a:1 a 1",
        "DELP [::1]:9",
        "RBLD h 1 64",
    ] {
        let op: TrustedOp = text.parse().unwrap();
        assert_eq!(op.to_string(), text);
    }
    let trust_bad = Some(&reply::trust_bad_args());
    for payload in [
        format!("{hex} {mac_hex}"),
        format!("{hex} {mac_hex} NOPE x"),
        format!("{hex} {mac_hex} FIND"),
        format!("{hex} {mac_hex} FIND a b"),
        format!("{hex} {mac_hex} RBLD h 1 65"),
        format!("{hex} {mac_hex} ADDP a:1 a 1 x y z"),
        format!("{} {mac_hex} FIND k", hex.to_uppercase()),
        format!("{hex} {} FIND k", &mac_hex[2..]),
        format!("{mac_hex} {hex} FIND k"),
    ] {
        let err = Request::parse(&Frame::control(Kind::TRST, payload.clone())).unwrap_err();
        assert_eq!(err.reply(), trust_bad, "{payload}");
    }
    assert!(Mac([1; 32]).ct_eq(&Mac([1; 32])));
    let mut other = [1; 32];
    other[31] = 0;
    assert!(!Mac([1; 32]).ct_eq(&Mac(other)));
}

#[test]
fn every_reply_string_is_exact() {
    let me = pid("10.0.0.1:5000");
    let cases: Vec<(Frame, &[u8])> = vec![
        (reply::repl_name(&me), b"REPL\0\0\0\x0d10.0.0.1:5000"),
        (reply::list_count(2), b"REPL\0\0\0\x012"),
        (
            reply::list_entry(&me, "10.0.0.1", 5000),
            b"REPL\0\0\0\x1b10.0.0.1:5000 10.0.0.1 5000",
        ),
        (
            reply::join_bad_args(),
            b"ERRO\0\0\0\x19Join: incorrect arguments",
        ),
        (reply::join_full(), b"ERRO\0\0\0\x14Join: too many peers"),
        (
            reply::join_added(&me),
            b"REPL\0\0\0\x1fJoin: peer added: 10.0.0.1:5000",
        ),
        (
            reply::join_dup(&me),
            b"ERRO\0\0\0\x29Join: peer already inserted 10.0.0.1:5000",
        ),
        (reply::query_ack("song"), b"REPL\0\0\0\x0fQuery ACK: song"),
        (
            reply::query_bad_args(),
            b"ERRO\0\0\0\x1aQuery: incorrect arguments",
        ),
        (
            reply::resp("song.mp3", &me),
            b"RESP\0\0\0\x16song.mp3 10.0.0.1:5000",
        ),
        (reply::file_not_found(), b"ERRO\0\0\0\x0eFile not found"),
        (
            reply::file_read_error(),
            b"ERRO\0\0\0\x12Error reading file",
        ),
        (
            reply::file_data(&b"\0\x01"[..]).unwrap(),
            b"REPL\0\0\0\x02\0\x01",
        ),
        (
            reply::quit_removed(&me),
            b"REPL\0\0\0\x21Quit: peer removed: 10.0.0.1:5000",
        ),
        (
            reply::quit_not_found(&me),
            b"ERRO\0\0\0\x23Quit: peer not found: 10.0.0.1:5000",
        ),
        (
            reply::info_bad_args(),
            b"ERRO\0\0\0\x19Info: incorrect arguments",
        ),
        (
            reply::range_bad_args(),
            b"ERRO\0\0\0\x1aRange: incorrect arguments",
        ),
        (
            reply::range_out_of_bounds(),
            b"ERRO\0\0\0\x14Range: out of bounds",
        ),
        (
            reply::challenge_bad_args(),
            b"ERRO\0\0\0\x1eChallenge: incorrect arguments",
        ),
        (reply::trust_accepted(), b"REPL\0\0\0\x0fTrust: accepted"),
        (
            reply::trust_denied(),
            b"ERRO\0\0\0\x15Trust: not authorized",
        ),
        (
            reply::trust_bad_args(),
            b"ERRO\0\0\0\x1aTrust: incorrect arguments",
        ),
        (
            reply::challenge(&Nonce([0x0f; 16])),
            b"REPL\0\0\0\x200f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f",
        ),
    ];
    for (frame, bytes) in cases {
        assert_eq!(wire(&frame), bytes, "{:?}", String::from_utf8_lossy(bytes));
    }
    let info = reply::file_info(1234, &[0xa5; 32]);
    assert_eq!(
        *info.payload(),
        Bytes::from(format!("1234 {}", "a5".repeat(32)))
    );
    assert_eq!(
        reply::join_result(Insert::Added, &me),
        reply::join_added(&me)
    );
    assert_eq!(reply::join_result(Insert::Full, &me), reply::join_full());
    assert_eq!(
        reply::join_result(Insert::Duplicate, &me),
        reply::join_dup(&me)
    );
    assert_eq!(
        {
            let mut out = BytesMut::new();
            reply::file_header(3).unwrap().emit(&mut out);
            out
        },
        &b"REPL\0\0\0\x03"[..]
    );
    assert!(reply::file_header(1 << 32).is_err());
}

#[test]
fn client_reads_replies() {
    let me = pid("10.0.0.1:5000");
    assert_eq!(reply::parse_name(&reply::repl_name(&me)), Ok(me.clone()));
    assert_eq!(reply::parse_list_count(&reply::list_count(7)), Ok(7));
    assert_eq!(
        reply::parse_list_entry(&reply::list_entry(&me, "10.0.0.1", 5000)),
        Ok(PeerEntry {
            pid: me.clone(),
            host: "10.0.0.1".into(),
            port: 5000
        })
    );
    let digest = [7u8; 32];
    assert_eq!(
        reply::parse_file_info(&reply::file_info(u64::MAX, &digest)),
        Ok(FileInfo {
            size: u64::MAX,
            sha256: digest
        })
    );
    let nonce = Nonce([9; 16]);
    assert_eq!(reply::parse_challenge(&reply::challenge(&nonce)), Ok(nonce));
    assert_eq!(
        reply::parse_name(&reply::file_not_found()),
        Err(Error::Refused("File not found".into()))
    );
    assert_eq!(
        reply::expect_repl(&Frame::control(Kind::PING, "")),
        Err(Error::UnexpectedReply(Kind::PING))
    );
    assert!(matches!(
        reply::parse_list_count(&Frame::control(Kind::REPL, "-1")),
        Err(Error::BadReply(_))
    ));
    assert!(matches!(
        reply::parse_list_entry(&Frame::control(Kind::REPL, "a:1 a")),
        Err(Error::BadReply(_))
    ));
    assert!(matches!(
        reply::parse_file_info(&Frame::control(Kind::REPL, format!("1 {}", "A".repeat(64)))),
        Err(Error::BadReply(_))
    ));
    assert!(matches!(
        reply::parse_challenge(&Frame::control(Kind::REPL, "00")),
        Err(Error::BadReply(_))
    ));
}

#[test]
fn parse_errors_are_lowercase_and_convert() {
    let err = Request::parse(&Frame::control(Kind::QHST, "x")).unwrap_err();
    let s = err.to_string();
    assert_eq!(s, "bad qhst request: expected 5 fields");
    let layer: Error = err.clone().into();
    assert_eq!(layer.to_string(), s);
    assert_eq!(layer, Error::Parse(err));
}

#[test]
fn join_answers_read_as_what_the_table_did() {
    let me = PeerId::parse("10.0.0.1:5000").unwrap();
    assert_eq!(
        reply::parse_join(&reply::join_added(&me)),
        Ok(Insert::Added)
    );
    assert_eq!(reply::parse_join(&reply::join_full()), Ok(Insert::Full));
    assert_eq!(
        reply::parse_join(&reply::join_dup(&me)),
        Ok(Insert::Duplicate)
    );
    assert_eq!(
        reply::parse_join(&reply::join_bad_args()),
        Err(Error::Refused("Join: incorrect arguments".into()))
    );
}
