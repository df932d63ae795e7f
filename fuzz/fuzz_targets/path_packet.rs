//! The p2p layer's path handshake (a responder) and data-phase opener
//! (`p2p::handshake`, `p2p::secure`, through `p2pipe::__fuzz::p2p`) on arbitrary packets.
//! Byte 0: bit 0 TCP (else UDP), bit 1 the responder first takes a genuine msg1, bit 2
//! the genuine sealed packets are fed to the opener first. The rest is packets, each a
//! one-byte length and its bytes (the last takes what is left), fed to both.
//!
//! Invariants: no panic; no forged handshake completes (the fuzzer knows no key); the
//! opener takes a message only from a packet that was genuinely sealed; on TCP a
//! refused packet ends the core, which is then left alone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pipe::__fuzz::p2p::Harness;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let (tcp, msg1, genuine_first) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let mut h = Harness::new(tcp, msg1);
    let genuine = h.genuine.clone();
    if genuine_first {
        for p in &genuine {
            let _ = h.open(p);
        }
    }
    let (mut hs_alive, mut open_alive) = (true, true);
    while !rest.is_empty() {
        let len = usize::from(rest[0]);
        let take = len.min(rest.len() - 1);
        let packet = &rest[1..1 + take];
        rest = &rest[1 + take..];
        if hs_alive {
            match h.handshake(packet) {
                Ok(done) => assert!(!done, "a forged handshake completed"),
                Err(()) => hs_alive = !tcp,
            }
        }
        if open_alive {
            match h.open(packet) {
                Ok(Some(_)) => assert!(
                    genuine.iter().any(|g| g == packet),
                    "a message from a packet that was not sealed"
                ),
                Ok(None) => {}
                Err(()) => open_alive = !tcp,
            }
        }
    }
});
