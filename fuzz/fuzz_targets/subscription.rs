//! Subscription dispatch with arbitrary patterns and payloads.
//!
//! Input: a count (mod 9) of patterns, each `flags len bytes` (flags mod 3: no peer filter
//! or one of two peers; bit 7: unsubscribe it again; len mod 49; the bytes read as UTF-8,
//! lossily), then up to 8 payloads, each `peer len:u16 bytes` (len mod 1024).
//!
//! Invariant: for every payload, the subscriptions that receive it are exactly those
//! whose pattern (valid, as `regex::bytes::Regex` builds it with the subscription's size
//! limit) matches by `Regex::is_match` and whose peer filter admits the sender; dispatch
//! says whether any did. The one documented exception: a set of valid patterns too large
//! to build together (checked with `regex::bytes::RegexSet` under the same limit) matches
//! nothing.
#![no_main]

use std::collections::BTreeSet;
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use p2pipe::__fuzz::SubscriptionSet;
use regex::bytes::{RegexBuilder, RegexSetBuilder};

const LIMIT: usize = 10 * (1 << 20);

#[path = "common/cursor.rs"]
mod cursor;
use cursor::Cursor;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let peers: [SocketAddr; 2] = ["127.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()];
    let mut set = SubscriptionSet::new();
    // (index in the set, reference regex, peer filter), for the live ones.
    let mut live = Vec::new();
    let mut n = 0;
    let count = input.u8() % 9;
    let mut patterns = Vec::new();
    for _ in 0..count {
        let flags = input.u8();
        let len = usize::from(input.u8() % 49);
        let pattern = String::from_utf8_lossy(input.bytes(len)).into_owned();
        patterns.push((flags, pattern));
    }
    for (flags, pattern) in &patterns {
        let peer = match flags % 3 {
            0 => None,
            p => Some(peers[usize::from(p - 1)]),
        };
        let reference = RegexBuilder::new(pattern).size_limit(LIMIT).build();
        match set.subscribe(pattern, peer) {
            Ok(i) => {
                assert_eq!(i, n);
                n += 1;
                let re = reference.expect("the set accepted a pattern Regex refuses");
                if flags & 0x80 != 0 {
                    set.unsubscribe(i);
                } else {
                    live.push((i, re, peer, pattern.as_str()));
                }
            }
            Err(_) => assert!(
                reference.is_err(),
                "the set refused a pattern Regex accepts"
            ),
        }
    }
    let distinct: BTreeSet<&str> = live.iter().map(|l| l.3).collect();
    let fits = RegexSetBuilder::new(&distinct)
        .size_limit(LIMIT)
        .build()
        .is_ok();

    for _ in 0..8 {
        if input.is_empty() {
            break;
        }
        let from = peers[usize::from(input.u8() & 1)];
        let len = usize::from(input.u16() % 1024);
        let payload = input.bytes(len);
        let (any, got) = set.dispatch(payload, from);
        assert_eq!(got.len(), n);
        let mut want = vec![false; n];
        if fits {
            for (i, re, peer, _) in &live {
                want[*i] = re.is_match(payload) && peer.is_none_or(|p| p == from);
            }
        }
        assert_eq!(
            got, want,
            "payload {payload:?} from {from}, patterns {live:?}"
        );
        assert_eq!(any, want.contains(&true));
    }
});
