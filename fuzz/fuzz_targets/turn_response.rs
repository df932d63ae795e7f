//! The TURN client core (`traverse::turn`, through `p2pipe::__fuzz::turn`): arbitrary
//! messages from the server fed to a client that has sent Allocate, with waits between
//! them, and every message also read on its own by the ChannelData, Data indication and
//! TCP framing parsers.
//!
//! Input: byte 0 = flags (bit 0: TCP to the server, bit 1: an IPv6 server), then steps:
//! `0 flags len:u16 bytes` a message (flag bit 0 writes the last request's transaction
//! id into it, bit 1 fixes its STUN length field), `1 ms:u16` a wait, `2` a channel bound
//! to the test peer, `3 len:u16 bytes` data sent to the test peer.
//!
//! Invariants: no panic; a peer's data handed out lies inside the message it came in;
//! a parsed ChannelData re-emits to the message's first bytes; a Data indication's data
//! lies inside the message; a frame's length is never over a header and a 16-bit
//! payload (padded); one message makes at most one new request (a retry after a
//! challenge); data sent to a peer reads back as the same data for the same peer.
#![no_main]

use std::net::SocketAddr;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use p2pipe::__fuzz::turn::{ChannelData, Frame, Harness, Indication, MAX_WIRE};

fn inside(part: &[u8], whole: &[u8]) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    part.is_empty() || (p >= w && p + part.len() <= w + whole.len())
}

fn parse_alone(msg: &[u8]) {
    if let Ok(cd) = ChannelData::parse(msg) {
        assert!(inside(cd.data, msg));
        let mut again = BytesMut::new();
        cd.emit(false, &mut again);
        assert_eq!(&again[..], &msg[..4 + cd.data.len()]);
    }
    if let Ok(ind) = Indication::parse_data(msg) {
        assert!(inside(ind.data, msg));
    }
    if let Ok(f) = Frame::parse(msg) {
        assert!(f.wire_len().is_none_or(|n| n <= MAX_WIRE + 3));
    }
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}

fn check_send(h: &mut Harness, peer: SocketAddr, payload: &[u8]) {
    let wire = h.emit_data(peer, payload);
    if wire[0] >> 6 == 1 {
        assert_eq!(ChannelData::parse(&wire).unwrap().data, payload);
    } else {
        let mut data = wire.to_vec();
        data[1] = 0x17; // a Send indication has a Data indication's layout
        let ind = Indication::parse_data(&data).unwrap();
        assert_eq!((ind.peer, ind.data), (peer, payload));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let mut h = Harness::new(flags & 1 != 0, flags & 2 != 0);
    let peer: SocketAddr = if flags & 2 != 0 { "[2001:db8::7]:4000" } else { "198.51.100.7:4000" }
        .parse()
        .unwrap();
    while let Some(step) = take(&mut rest, 1) {
        match step[0] % 4 {
            0 => {
                let Some(head) = take(&mut rest, 3) else { return };
                let len = usize::from(u16::from_be_bytes([head[1], head[2]])).min(4096);
                let Some(body) = take(&mut rest, len) else { return };
                let mut msg = body.to_vec();
                if head[0] & 1 != 0 && msg.len() >= 20 {
                    msg[8..20].copy_from_slice(&h.last_txid());
                }
                if head[0] & 2 != 0 && msg.len() >= 20 {
                    let n = (msg.len() - 20) as u16;
                    msg[2..4].copy_from_slice(&n.to_be_bytes());
                }
                parse_alone(&msg);
                let before = h.transmits;
                if let Some((_, got)) = h.feed(&msg) {
                    assert!(inside(got, &msg), "data outside its message");
                }
                assert!(h.transmits <= before + 1, "one message, at most one request");
            }
            1 => {
                let Some(ms) = take(&mut rest, 2) else { return };
                h.tick(u64::from(u16::from_be_bytes([ms[0], ms[1]])));
            }
            2 => h.bind(peer),
            _ => {
                let Some(len) = take(&mut rest, 2) else { return };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]])).min(2048);
                let Some(payload) = take(&mut rest, len) else { return };
                check_send(&mut h, peer, payload);
            }
        }
    }
    assert!(h.transmits <= 4096 * 8);
    let _ = Harness::max_pending();
});
