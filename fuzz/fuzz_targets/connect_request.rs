//! The p2p layer's connect requests and answers (`p2p::request`, through
//! `p2pipe::__fuzz::p2p::connect_message`): the input is parsed as both.
//!
//! Invariants: no panic; what parses is within its bounds (addresses, reason length,
//! size) and re-emits to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    p2pipe::__fuzz::p2p::connect_message(data);
});
