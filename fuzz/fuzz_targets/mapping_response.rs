//! The port mapping clients' answer parsers and their sans-IO exchange:
//! `natpmp::Response::parse` and `pcp::Answer::parse` on arbitrary bytes, and an
//! `Exchange` (NAT-PMP external address, NAT-PMP MAP, or PCP MAP) fed arbitrary
//! datagrams from the gateway or a stranger, with arbitrary waits.
//!
//! Input: byte 0 picks the request (`% 3`: NAT-PMP external address, NAT-PMP MAP of UDP
//! port 5000, PCP MAP of TCP port 7000 with nonce `[3; 12]`), then steps: `0 flags
//! len:u16 bytes` a datagram (flags bit 0: from a stranger; bit 1: for PCP, write the
//! request's nonce, protocol and port into the answer), `1 ms:u16` a wait. Every
//! datagram is also parsed on its own by both parsers.
//!
//! Invariants: no panic; parsing is deterministic and refuses anything longer than the
//! protocol's largest answer; the exchange is answered only by a datagram from the
//! gateway that its parser accepts, with result code 0; a refusal carries a non-zero
//! code; a PCP answer always carries an external address; once finished, nothing more
//! happens; every send is before the deadline and retransmissions are at least 250 ms
//! apart.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use p2pipe::pipe::Proto;
use p2pipe::traverse::mapping::exchange::{Ask, Exchange, Reply, Step, FIRST_INTERVAL};
use p2pipe::traverse::mapping::{natpmp, pcp, Error};

#[path = "common/cursor.rs"]
mod cursor;
use cursor::Cursor;

const LIMIT: Duration = Duration::from_secs(8);

fn ask(sel: u8) -> Ask {
    match sel % 3 {
        0 => Ask::NatPmp(natpmp::Request::ExternalAddress),
        1 => Ask::NatPmp(natpmp::Request::Map {
            proto: Proto::Udp,
            internal_port: 5000,
            external_port: 0,
            lifetime: 60,
        }),
        _ => Ask::Pcp(pcp::MapRequest {
            lifetime: 60,
            client: IpAddr::from([198, 18, 1, 2]),
            nonce: [3; 12],
            proto: Proto::Tcp,
            internal_port: 7000,
            external_port: 0,
            external_ip: IpAddr::from([0u8; 4]),
        }),
    }
}

fn parse_both(bytes: &[u8]) {
    let n = natpmp::Response::parse(bytes);
    assert_eq!(format!("{n:?}"), format!("{:?}", natpmp::Response::parse(bytes)));
    if n.is_ok() {
        assert!((8..=natpmp::MAX_RESPONSE_LEN).contains(&bytes.len()));
    }
    let p = pcp::Answer::parse(bytes);
    assert_eq!(format!("{p:?}"), format!("{:?}", pcp::Answer::parse(bytes)));
    if let Ok(pcp::Answer::Pcp(r)) = p {
        assert!(bytes.len() <= pcp::MAX_MESSAGE_LEN && bytes.len().is_multiple_of(4));
        assert!(r.result != 0 || r.map.is_some() || r.opcode != pcp::OP_MAP);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let ask = ask(input.u8());
    let gateway: SocketAddr = "198.18.1.1:5351".parse().unwrap();
    let stranger: SocketAddr = "203.0.113.66:5351".parse().unwrap();
    let mut ex = Exchange::new(gateway, ask, LIMIT);
    let t0 = Instant::now();
    let mut now = t0;
    assert!(matches!(ex.on_timeout(now), Step::Send));
    let mut last_send = now;
    let mut finished = false;
    let mut steps = 0;
    while !input.is_empty() && steps < 64 && !finished {
        steps += 1;
        let step = if input.u8() % 2 == 0 {
            let flags = input.u8();
            let len = usize::from(input.u16());
            let mut bytes = input.bytes(len).to_vec();
            if flags & 2 != 0 && bytes.len() >= pcp::MAP_LEN {
                bytes[24..36].copy_from_slice(&[3; 12]);
                bytes[36] = 6;
                bytes[40..42].copy_from_slice(&7000u16.to_be_bytes());
            }
            parse_both(&bytes);
            let from = if flags & 1 != 0 { stranger } else { gateway };
            let step = ex.on_datagram(from, &bytes, now);
            check_datagram_step(&step, ask, from == gateway, &bytes);
            step
        } else {
            now += Duration::from_millis(u64::from(input.u16()));
            ex.on_timeout(now)
        };
        match step {
            Step::Send => {
                assert!(now < t0 + LIMIT, "sent after the deadline");
                assert!(now - last_send >= FIRST_INTERVAL, "retransmitted too soon");
                last_send = now;
            }
            Step::Wait(until) => assert!(until <= t0 + LIMIT),
            Step::Answered(_) | Step::Failed(_) => finished = true,
        }
    }
});

fn check_datagram_step(step: &Step, ask: Ask, from_gateway: bool, bytes: &[u8]) {
    match step {
        Step::Send => panic!("a datagram made a send"),
        Step::Wait(_) => {}
        Step::Answered(reply) => {
            assert!(from_gateway, "answered by a stranger");
            match ask {
                Ask::NatPmp(_) => {
                    let r = natpmp::Response::parse(bytes).expect("answered by garbage");
                    assert_eq!(r.result, 0);
                }
                Ask::Pcp(_) => {
                    let Ok(pcp::Answer::Pcp(r)) = pcp::Answer::parse(bytes) else {
                        panic!("answered by garbage")
                    };
                    assert_eq!(r.result, 0);
                    assert!(matches!(reply, Reply::Mapped { external_ip: Some(_), .. }));
                }
            }
        }
        Step::Failed(e) => {
            assert!(from_gateway, "failed by a stranger");
            if let Error::Refused { code, .. } = e {
                assert_ne!(*code, 0);
            }
        }
    }
}
