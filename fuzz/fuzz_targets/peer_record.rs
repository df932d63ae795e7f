//! `identity::PeerRecord`'s parsers at a fixed `now`: the first byte picks the form
//! (0 text, 1 JSON, 2 binary, by its value mod 3), the rest is the input (text forms
//! must be UTF-8).
//!
//! Invariants: no panic; input over its bound is refused; a record that parses has
//! verified, and re-emits to its text, which parses back to an equal record with the same
//! text; its JSON parses back equal; the text form of a parsed text (trimmed) and the
//! binary of a parsed binary are the input itself (one encoding per record).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use p2pipe::identity::{PeerRecord, MAX_RECORD_TEXT};

/// 2027-01-15, unix ms; the seeds are valid then.
const NOW: u64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    let parsed = match form % 3 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let r = PeerRecord::parse(text, NOW);
            if text.trim().len() > MAX_RECORD_TEXT {
                assert!(r.is_err(), "an oversized text was taken");
            }
            if let Ok(r) = &r {
                assert_eq!(r.to_text(), text.trim(), "two texts for one record");
            }
            r
        }
        1 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            PeerRecord::from_json(text, NOW)
        }
        _ => {
            let r = PeerRecord::parse_binary(rest, NOW);
            if let Ok(r) = &r {
                let mut out = BytesMut::new();
                r.emit(&mut out);
                assert_eq!(&out[..], rest, "two encodings of one record");
                assert_eq!(r.emit_len(), rest.len());
            }
            r
        }
    };
    let Ok(record) = parsed else {
        return;
    };
    let text = record.to_text();
    assert!(text.len() <= MAX_RECORD_TEXT);
    let again = PeerRecord::parse(&text, NOW).expect("a parsed record's text parses");
    assert_eq!(again, record);
    assert_eq!(again.to_text(), text);
    let json = record.to_json().to_string();
    assert_eq!(PeerRecord::from_json(&json, NOW).expect("its json parses"), record);
});
