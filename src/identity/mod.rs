//! One node identity for the whole crate: an ed25519 key pair in a key file, the node id
//! derived from its public key, and the signed address record a node hands to others.
//!
//! ```
//! use p2pipe::identity::{Identity, NodeId, PeerRecord};
//! # fn demo() -> Result<(), p2pipe::identity::Error> {
//! let me = Identity::from_seed([7; 32]);
//! let id: NodeId = me.node_id().to_string().parse()?;
//! assert_eq!(id, me.node_id());
//! assert_eq!(id.topic(), format!("p2pipe/1/{id}"));
//!
//! let now = 1_800_000_000_000; // unix ms
//! let record = PeerRecord::builder()
//!     .broker("mqtt://127.0.0.1:1883")
//!     .sign(&me, now, std::time::Duration::from_secs(3600))?;
//! let text = record.to_text();
//! assert!(text.starts_with("p2pipe1:"));
//! assert_eq!(PeerRecord::parse(&text, now)?, record);
//! # Ok(()) }
//! # demo().unwrap();
//! ```
//!
//! - [`Identity`]: the key pair; [`Identity::load_or_create`] keeps it in a key file that
//!   is created with mode 0600 and refused when other users can read it.
//! - [`NodeId`]: 16 bytes of SHA-256 over the public key and a 2-byte checksum, printed
//!   as 29 characters of lowercase base32; a mistyped id is refused.
//! - [`PeerRecord`]: all another node needs to reach this one (addresses per interface
//!   and family, NAT behaviour, signalling brokers), signed, with an expiry, in a text
//!   form for pasting and a JSON form. Nothing in a record is trusted to reach the node
//!   until the node has proven its key on that path.
//!
//! `docs/p2p.md` describes the key file, the node id and the record formats.

mod key;
mod node_id;
mod record;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) use key::{x25519_public, x25519_secret};
pub use key::{Created, Identity};
pub use node_id::NodeId;
pub use record::{
    FamilyEntry, InterfaceEntry, LocalAddr, PeerRecord, PortMapping, RecordBuilder, Relay,
    Signalling, MAX_BROKERS, MAX_CLOCK_SKEW_MS, MAX_FAMILY_ADDRS, MAX_INTERFACES,
    MAX_PORT_MAPPINGS, MAX_RECORD_TEXT, TEXT_PREFIX,
};

/// A node's public key: the ed25519 verifying key, as `ed25519-dalek` has it.
pub type PublicKey = ed25519_dalek::VerifyingKey;

/// A signature by a node key.
pub type Signature = ed25519_dalek::Signature;

/// Errors of the identity layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key file or its folder could not be read or written.
    #[error("cannot {what} {}: {source}", .path.display())]
    Io {
        /// What was being done ("read", "create", ...).
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file can be read or changed by other users.
    #[error("{} is {what} by other users (mode {mode:04o}); run chmod 600 {}", .path.display(), .path.display())]
    KeyFileOpen {
        /// The key file.
        path: PathBuf,
        /// "readable" or "writable".
        what: &'static str,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a node key file.
    #[error("{} is not a p2pipe node key: {why}", .path.display())]
    NotAKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A node id text of the wrong length.
    #[error("node id has {0} characters, not 29")]
    NodeIdLength(usize),
    /// A node id text with a character outside lowercase base32.
    #[error("node id has a bad character {ch:?} at position {at}")]
    NodeIdChar {
        /// The character.
        ch: char,
        /// Its position, from 0.
        at: usize,
    },
    /// A node id whose checksum does not match.
    #[error("node id checksum does not match: mistyped?")]
    NodeIdChecksum,
    /// A record text or JSON over its bound.
    #[error("peer record of {len} bytes is over the limit of {max}")]
    RecordTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A record that does not parse.
    #[error("malformed peer record: {0}")]
    Malformed(String),
    /// A record without a signature.
    #[error("peer record is not signed")]
    Unsigned,
    /// A record whose signature does not verify.
    #[error("peer record signature does not verify: tampered with?")]
    BadSignature,
    /// A record whose node id is not its key's.
    #[error("peer record node id {claimed} does not match its key (which gives {actual})")]
    IdMismatch {
        /// The node id the record names.
        claimed: String,
        /// The node id of the key it carries.
        actual: NodeId,
    },
    /// A record past its expiry.
    #[error("peer record expired at {expires_ms} (now {now_ms}, unix ms)")]
    Expired {
        /// When it expired.
        expires_ms: u64,
        /// Now.
        now_ms: u64,
    },
    /// A record issued further in the future than the allowed clock skew.
    #[error(
        "peer record is issued at {issued_ms}, over {} ms after now ({now_ms}, unix ms)",
        MAX_CLOCK_SKEW_MS
    )]
    FromTheFuture {
        /// When it says it was issued.
        issued_ms: u64,
        /// Now.
        now_ms: u64,
    },
    /// A broker URL that is not `mqtt://HOST:PORT`.
    #[error("bad broker url {0:?}: expected mqtt://host:port")]
    BadBroker(String),
    /// A record that cannot be built: a field over its bound.
    #[error("peer record not built: {0}")]
    Invalid(String),
}

/// `t` as unix milliseconds, the time unit on the wire (0 before 1970).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// Checks that `url` is `mqtt://HOST:PORT`: a host name, an IPv4 address or an IPv6
/// address in brackets, and a port from 1.
///
/// # Errors
///
/// [`Error::BadBroker`] naming the URL.
pub fn check_broker_url(url: &str) -> Result<(), Error> {
    split_broker_url(url)
        .map(drop)
        .map_err(|_| Error::BadBroker(url.to_owned()))
}

/// Splits `mqtt://HOST:PORT` (as [`check_broker_url`] takes it) into its host (an IPv6
/// address keeps its brackets) and port; the one check of broker URLs in the crate, which
/// `signal::BrokerUrl` uses too.
///
/// # Errors
///
/// Why the URL cannot be used, in a few words.
pub fn split_broker_url(url: &str) -> Result<(&str, u16), &'static str> {
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or("expected mqtt://HOST:PORT")?;
    let (host, port) = rest.rsplit_once(':').ok_or("no port")?;
    let port = (port.parse::<u16>().ok())
        .filter(|&p| p != 0)
        .ok_or("bad port")?;
    if let Some(inner) = host.strip_prefix('[') {
        let v6 = inner.strip_suffix(']').ok_or("unclosed '['")?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "bad ipv6 address in brackets")?;
    } else if host.contains(':') {
        return Err("an ipv6 address needs brackets");
    } else if host.is_empty()
        || host.len() > 253
        || !(host.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err("no host, or a path, user, query or bad character in it");
    }
    Ok((host, port))
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Exactly `N` bytes from hex (either case), or `None`.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0; N];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_must_be_mqtt_host_port() {
        for good in [
            "mqtt://127.0.0.1:1883",
            "mqtt://[::1]:1883",
            "mqtt://test.mosquitto.org:1883",
        ] {
            check_broker_url(good).unwrap();
        }
        for bad in [
            "127.0.0.1:1883",
            "mqtts://h:8883",
            "mqtt://h",
            "mqtt://h:0",
            "mqtt://:1883",
            "mqtt://h:1883/x",
            "mqtt://[::1:1883",
            "mqtt://h b:1883",
        ] {
            let e = check_broker_url(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn hex_round_trips_and_refuses_bad_digits_and_lengths() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex::<3>("00ABff"), Some([0, 0xab, 0xff]));
        assert_eq!(unhex::<3>("00abf"), None);
        assert_eq!(unhex::<2>("0g00"), None);
    }
}
