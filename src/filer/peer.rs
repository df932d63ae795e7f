//! Peer ids and the bounded peer table.
//!
//! A peer id is `host:port`, the form original btpeer nodes make with `'%s:%d' % (host,
//! port)` and take apart with `peerid.split(':')`. For IPv4 addresses and host names it has
//! exactly one colon, as they need.
//!
//! An IPv6 peer is written `[v6]:port` (RFC 3986 brackets, e.g. `[2001:db8::1]:5000`).
//! Original nodes cannot reach IPv6 peers at all, and their `split(':')` raises on any id
//! with more than one colon, so such an id fails cleanly there (the one search or fetch
//! that uses it is dropped) rather than being misread as some other host and port. The
//! brackets let p2pipe find the port without guessing, and `[` can appear in no host
//! name, so the two forms never overlap. Inside the brackets the address is kept in its
//! canonical (RFC 5952) text, so one peer has one id; scope ids are refused, as a
//! link-local address names no peer beyond one link.
//!
//! Ids compare as text, as original nodes compare them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use super::Error;
use crate::addr::Target;

/// The longest peer id accepted, in bytes.
pub const MAX_ID_LEN: usize = 300;

/// The default bound of a [`PeerTable`].
pub const DEFAULT_MAX_PEERS: usize = 64;

/// A checked peer id: a host and a port.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId {
    /// A host name, an IPv4 address, or a canonical IPv6 address without brackets.
    host: String,
    port: u16,
}

/// Reads a port: 1 to 5 decimal digits, no sign, no leading zero, 1..=65535.
///
/// Leading zeros are refused so that an id has one spelling (`h:080` and `h:80` would be
/// two ids for one peer).
pub(crate) fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

/// Checks a host as a JOIN, LIST entry or trusted operation carries it, and returns its
/// canonical text.
///
/// A host is an IPv4 address, an IPv6 address (bare or in brackets, written back bare and
/// canonical, without scope id), or a host name by the rules of
/// [`crate::addr::validate_hostname`] (letters, digits, `-`, `_`, dots; at most 253
/// characters; no all-digit last label).
///
/// # Errors
///
/// [`Error::BadHost`] naming what is wrong.
pub fn parse_host(s: &str) -> Result<String, Error> {
    if s.is_empty() {
        return Err(Error::BadHost("empty"));
    }
    if s.len() > MAX_ID_LEN {
        return Err(Error::BadHost("too long"));
    }
    let inner = s
        .strip_prefix('[')
        .map(|r| {
            r.strip_suffix(']')
                .ok_or(Error::BadHost("unclosed bracket"))
        })
        .transpose()?;
    if let Some(inner) = inner {
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| Error::BadHost("not an ipv6 address in brackets"));
    }
    if s.contains(':') {
        return s
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| Error::BadHost("not an ipv6 address"));
    }
    if s.parse::<Ipv4Addr>().is_ok() {
        return Ok(s.to_owned());
    }
    crate::addr::validate_hostname(s).map_err(|e| match e {
        crate::error::Error::InvalidTarget { reason, .. } => Error::BadHost(reason),
        _ => Error::BadHost("bad host name"),
    })?;
    Ok(s.to_owned())
}

impl PeerId {
    /// Parses a peer id: `host:port` with exactly one colon, or `[v6]:port`.
    ///
    /// # Errors
    ///
    /// [`Error::BadPeerId`] for ids over 300 bytes (checked first), empty ids,
    /// whitespace, a missing or empty host, a bad port (see the module docs), more than
    /// one colon outside brackets, or a bad host (as `JOIN` reads hosts; no commas, so ids can
    /// be listed with commas).
    pub fn parse(s: &str) -> Result<PeerId, Error> {
        if s.len() > MAX_ID_LEN {
            return Err(Error::BadPeerId("longer than 300 bytes"));
        }
        if s.is_empty() {
            return Err(Error::BadPeerId("empty"));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(Error::BadPeerId("whitespace"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or(Error::BadPeerId("unclosed bracket"))?;
            let port = after
                .strip_prefix(':')
                .ok_or(Error::BadPeerId("no port after the bracket"))?;
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| Error::BadPeerId("not an ipv6 address in brackets"))?;
            (ip.to_string(), port)
        } else {
            let (host, port) = s.split_once(':').ok_or(Error::BadPeerId("no port"))?;
            if port.contains(':') {
                return Err(Error::BadPeerId(
                    "more than one colon (write ipv6 ids as [v6]:port)",
                ));
            }
            if host.is_empty() {
                return Err(Error::BadPeerId("empty host"));
            }
            let host = parse_host(host).map_err(|e| match e {
                Error::BadHost(r) => Error::BadPeerId(r),
                other => other,
            })?;
            (host, port)
        };
        let port = parse_port(port).ok_or(Error::BadPeerId("bad port"))?;
        Ok(PeerId { host, port })
    }

    /// An id from a host (checked as `JOIN` reads hosts) and a port.
    ///
    /// # Errors
    ///
    /// [`Error::BadHost`] for a bad host, [`Error::BadPeerId`] for port 0.
    pub fn new(host: &str, port: u16) -> Result<PeerId, Error> {
        let host = parse_host(host)?;
        if port == 0 {
            return Err(Error::BadPeerId("bad port"));
        }
        Ok(PeerId { host, port })
    }

    /// The id of a socket address (IPv6 scope ids are dropped).
    ///
    /// # Errors
    ///
    /// [`Error::BadPeerId`] for port 0.
    pub fn from_socket_addr(addr: SocketAddr) -> Result<PeerId, Error> {
        if addr.port() == 0 {
            return Err(Error::BadPeerId("bad port"));
        }
        Ok(PeerId {
            host: addr.ip().to_string(),
            port: addr.port(),
        })
    }

    /// The host: a name, an IPv4 address, or an IPv6 address without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host's address, when the host is an IP address.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The socket address, when the host is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// Whether original btpeer nodes can parse this id (it is not IPv6).
    pub fn is_legacy(&self) -> bool {
        !self.host.contains(':')
    }

    /// Where to connect to reach this peer: its address, or its host name to resolve.
    pub fn to_target(&self) -> Target {
        match self.socket_addr() {
            Some(addr) => Target::Addr(addr),
            None => Target::Host {
                host: self.host.clone(),
                port: self.port,
            },
        }
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_legacy() {
            write!(f, "{}:{}", self.host, self.port)
        } else {
            write!(f, "[{}]:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl FromStr for PeerId {
    type Err = Error;

    fn from_str(s: &str) -> Result<PeerId, Error> {
        PeerId::parse(s)
    }
}

/// One known peer: its id and where to reach it, as JOIN and LIST carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// The peer's id.
    pub pid: PeerId,
    /// The host to connect to.
    pub host: String,
    /// The port to connect to.
    pub port: u16,
}

/// What adding a peer to a peer table did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// The peer was added.
    Added,
    /// The table is full; nothing changed.
    Full,
    /// The id is already known, or is the node's own; nothing changed.
    Duplicate,
}

/// The node's known peers: a bounded map from id to address, kept in insertion order.
///
/// Pure data: it never connects. Look-ups scan the table, which its bound keeps small.
#[derive(Debug, Clone)]
pub struct PeerTable {
    own: PeerId,
    max: usize,
    entries: Vec<PeerEntry>,
}

impl PeerTable {
    /// An empty table for the node `own` that holds at most `max` peers (with `max` 0,
    /// every insert finds it full).
    pub fn new(own: PeerId, max: usize) -> PeerTable {
        PeerTable {
            own,
            max,
            entries: Vec::new(),
        }
    }

    #[cfg(test)]
    /// The node's own id.
    pub fn own_id(&self) -> &PeerId {
        &self.own
    }

    #[cfg(test)]
    /// The most peers the table holds.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many peers it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether it holds `max` peers.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max
    }

    /// Whether `pid` is known.
    pub fn contains(&self, pid: &PeerId) -> bool {
        self.get(pid).is_some()
    }

    /// The entry of `pid`.
    pub fn get(&self, pid: &PeerId) -> Option<&PeerEntry> {
        self.entries.iter().find(|e| &e.pid == pid)
    }

    /// Adds a peer.
    ///
    /// The checks run in the original's order, which decides the JOIN reply: a full table
    /// answers [`Insert::Full`] even for a known id; then a known id or the node's own id
    /// is [`Insert::Duplicate`].
    pub fn insert(&mut self, pid: PeerId, host: impl Into<String>, port: u16) -> Insert {
        if self.is_full() {
            return Insert::Full;
        }
        if pid == self.own || self.contains(&pid) {
            return Insert::Duplicate;
        }
        self.entries.push(PeerEntry {
            pid,
            host: host.into(),
            port,
        });
        Insert::Added
    }

    /// Removes a peer, returning its entry if it was known.
    pub fn remove(&mut self, pid: &PeerId) -> Option<PeerEntry> {
        let i = self.entries.iter().position(|e| &e.pid == pid)?;
        Some(self.entries.remove(i))
    }

    /// The peers in the order they were added.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &PeerEntry> {
        self.entries.iter()
    }

    #[cfg(test)]
    /// The peers' ids in the order they were added.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = &PeerId> {
        self.entries.iter().map(|e| &e.pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PeerId {
        PeerId::parse(s).unwrap()
    }

    #[test]
    fn legacy_ids_round_trip() {
        for s in [
            "10.0.0.1:5000",
            "localhost:1",
            "my-pc.local:65535",
            "Host_Name.example:80",
        ] {
            let id = pid(s);
            assert_eq!(id.to_string(), s);
            assert!(id.is_legacy());
        }
        let id = pid("192.0.2.7:5000");
        assert_eq!(id.host(), "192.0.2.7");
        assert_eq!(id.port(), 5000);
        assert_eq!(id.socket_addr(), Some("192.0.2.7:5000".parse().unwrap()));
        assert_eq!(
            id.to_target(),
            Target::Addr("192.0.2.7:5000".parse().unwrap())
        );
        let named = pid("example.com:80");
        assert_eq!(named.ip(), None);
        assert_eq!(
            named.to_target(),
            Target::Host {
                host: "example.com".into(),
                port: 80
            }
        );
        assert_eq!("example.com:80".parse::<PeerId>(), Ok(named));
    }

    #[test]
    fn ipv6_ids_use_brackets_and_canonical_text() {
        let id = pid("[2001:DB8:0:0::1]:5000");
        assert_eq!(id.to_string(), "[2001:db8::1]:5000");
        assert_eq!(id.host(), "2001:db8::1");
        assert!(!id.is_legacy());
        assert_eq!(
            id.socket_addr(),
            Some("[2001:db8::1]:5000".parse().unwrap())
        );
        // What an original node does with it: split(':') yields more than two parts.
        assert!(id.to_string().split(':').count() > 2);
        let from_addr = PeerId::from_socket_addr("[::1]:7".parse().unwrap()).unwrap();
        assert_eq!(from_addr.to_string(), "[::1]:7");
        assert_eq!(PeerId::new("::1", 7), Ok(from_addr.clone()));
        assert_eq!(PeerId::new("[::1]", 7), Ok(from_addr));
        assert_eq!(
            PeerId::from_socket_addr("10.1.2.3:9".parse().unwrap())
                .unwrap()
                .to_string(),
            "10.1.2.3:9"
        );
    }

    #[test]
    fn bad_ids_are_refused() {
        let long = format!("{}:80", "a.".repeat(149));
        assert_eq!(long.len(), 301);
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("host", "no port"),
            (":80", "empty host"),
            ("host:", "bad port"),
            ("host:0", "bad port"),
            ("host:65536", "bad port"),
            ("host:080", "bad port"),
            ("host:+80", "bad port"),
            ("host:8 0", "whitespace"),
            ("a b:80", "whitespace"),
            ("host:80\n", "whitespace"),
            (
                "::1:80",
                "more than one colon (write ipv6 ids as [v6]:port)",
            ),
            ("h:1:2", "more than one colon (write ipv6 ids as [v6]:port)"),
            ("[::1]80", "no port after the bracket"),
            ("[::1:80", "unclosed bracket"),
            ("[::1]", "no port after the bracket"),
            ("[fe80::1%2]:80", "not an ipv6 address in brackets"),
            ("[10.0.0.1]:80", "not an ipv6 address in brackets"),
            ("a,b:80", "character outside"),
            ("1.2.3:80", "numeric label"),
            (long.as_str(), "longer than 300 bytes"),
        ];
        for (input, reason) in cases {
            match PeerId::parse(input) {
                Err(Error::BadPeerId(r)) => {
                    assert!(r.contains(reason) || reason.contains(r), "{input:?}: {r}")
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
        assert_eq!(PeerId::new("h", 0), Err(Error::BadPeerId("bad port")));
        assert!(PeerId::from_socket_addr("1.2.3.4:0".parse().unwrap()).is_err());
        // The longest host name (253 characters) fits.
        let host = format!("{}x", "a.".repeat(126));
        assert_eq!(host.len(), 253);
        assert!(PeerId::parse(&format!("{host}:65535")).is_ok());
        assert!(PeerId::parse(&format!("a{host}:65535")).is_err());
    }

    #[test]
    fn hosts_are_checked() {
        assert_eq!(parse_host("10.0.0.1"), Ok("10.0.0.1".into()));
        assert_eq!(parse_host("[2001:db8::01]"), Ok("2001:db8::1".into()));
        assert_eq!(parse_host("2001:db8::01"), Ok("2001:db8::1".into()));
        assert_eq!(parse_host("node-1.lan"), Ok("node-1.lan".into()));
        for bad in ["", "a b", "a,b", "-a", "[::1", "1.2.3", "x:y", "a/b"] {
            assert!(parse_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn table_is_bounded_ordered_and_refuses_duplicates() {
        let mut t = PeerTable::new(pid("10.0.0.1:5000"), 2);
        assert!(t.is_empty());
        assert_eq!(
            t.insert(pid("10.0.0.1:5000"), "10.0.0.1", 5000),
            Insert::Duplicate,
            "own id"
        );
        assert_eq!(
            t.insert(pid("10.0.0.3:5000"), "10.0.0.3", 5000),
            Insert::Added
        );
        assert_eq!(
            t.insert(pid("10.0.0.3:5000"), "elsewhere", 1),
            Insert::Duplicate
        );
        assert_eq!(
            t.insert(pid("10.0.0.2:5000"), "10.0.0.2", 5000),
            Insert::Added
        );
        assert!(t.is_full());
        // Full is answered before duplicate, as the original does.
        assert_eq!(t.insert(pid("10.0.0.2:5000"), "x", 1), Insert::Full);
        assert_eq!(t.insert(pid("10.0.0.9:5000"), "x", 1), Insert::Full);
        let ids: Vec<String> = t.ids().map(|p| p.to_string()).collect();
        assert_eq!(ids, ["10.0.0.3:5000", "10.0.0.2:5000"], "insertion order");
        assert_eq!(t.get(&pid("10.0.0.3:5000")).unwrap().host, "10.0.0.3");
        let gone = t.remove(&pid("10.0.0.3:5000")).unwrap();
        assert_eq!(gone.port, 5000);
        assert_eq!(t.remove(&pid("10.0.0.3:5000")), None);
        assert_eq!(t.len(), 1);
        assert!(!t.contains(&pid("10.0.0.3:5000")));
        assert_eq!(t.insert(pid("[::1]:5000"), "::1", 5000), Insert::Added);
        assert_eq!(t.iter().len(), 2);
        assert_eq!(t.own_id(), &pid("10.0.0.1:5000"));
        assert_eq!(t.max(), 2);
        let mut zero = PeerTable::new(pid("a:1"), 0);
        assert_eq!(zero.insert(pid("b:1"), "b", 1), Insert::Full);
    }
}
