//! The TCP punch hello (`traverse::punch::tcp::Hello`) and its handshake on arbitrary
//! bytes. Byte 0: bit 0 picks the role that reads the hello, bit 1 whether the
//! responder has already answered; the rest is the hello's wire form.
//!
//! Invariants: no panic; only exactly `HELLO_LEN` bytes parse; a parsed hello emits back
//! to the very same bytes; a hello whose tag was not made with the key is refused by the
//! handshake, whatever its kind.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use p2pipe::traverse::punch::tcp::{Handshake, Hello, HelloKey, Step, HELLO_LEN};
use p2pipe::traverse::punch::{Role, SessionKey};
use p2pipe::Proto;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, wire)) = data.split_first() else {
        return;
    };
    let Ok(hello) = Hello::parse(wire) else {
        return;
    };
    assert_eq!(wire.len(), HELLO_LEN);
    let mut out = BytesMut::new();
    hello.emit(&mut out);
    assert_eq!(&out[..], wire);
    assert_eq!(out.len(), hello.emit_len());
    let key = HelloKey::from(&SessionKey::derive(&[1; 16], &[2; 16], Proto::Tcp));
    let role = if flags & 1 == 0 {
        Role::Initiator
    } else {
        Role::Responder
    };
    let mut hs = Handshake::new(key.clone(), role);
    if flags & 2 != 0 && role == Role::Responder {
        let offer = Handshake::new(key.clone(), Role::Initiator).start().unwrap();
        assert!(matches!(hs.on_hello(&offer), Step::Send(_)));
    }
    let step = hs.on_hello(&hello);
    if !hello.verify(&key) {
        assert!(matches!(step, Step::Refused(_)), "{step:?}");
    }
});
