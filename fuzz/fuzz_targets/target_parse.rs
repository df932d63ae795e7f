//! `Target::parse` on arbitrary strings, with and without a default port.
//!
//! Invariants: no panic; input over `MAX_TARGET_LEN` bytes is refused; empty input or
//! input with whitespace is refused; a parsed target's `Display` is at most
//! `MAX_TARGET_LEN` bytes and parses back (without a default port) to an equal target; a
//! target without a written port takes the default; `FromStr` is `parse(s, None)`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pipe::addr::MAX_TARGET_LEN;
use p2pipe::Target;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let default_port = match flag % 4 {
        0 => None,
        1 => Some(80),
        2 => Some(0),
        _ => Some(u16::from(flag) << 8 | 0x35),
    };
    let parsed = Target::parse(s, default_port);
    if default_port.is_none() {
        assert_eq!(format!("{parsed:?}"), format!("{:?}", s.parse::<Target>()));
    }
    let Ok(t) = parsed else {
        return;
    };
    assert!(s.len() <= MAX_TARGET_LEN, "{} bytes accepted", s.len());
    assert!(!s.is_empty() && !s.chars().any(char::is_whitespace));
    let shown = t.to_string();
    assert!(
        shown.len() <= MAX_TARGET_LEN,
        "{shown:?} is too long to parse back"
    );
    assert_eq!(
        Target::parse(&shown, None).ok().as_ref(),
        Some(&t),
        "{s:?} shown as {shown:?}"
    );
    assert_eq!(
        Target::parse(&shown, Some(1)).ok().as_ref(),
        Some(&t),
        "{s:?} shown as {shown:?}"
    );
    // With a port written, the default does not matter.
    if let Some(p) = default_port {
        if Target::parse(s, None).is_err() {
            assert_eq!(t.port(), p, "no port written, yet not the default");
        }
    }
    assert!(t.host_str().len() <= MAX_TARGET_LEN);
});
