//! Addresses without I/O: address families, connection targets and address classes.
//!
//! - [`Af`] names an address family and gives its unspecified and loopback addresses.
//! - [`Target`] is what a user asks to reach: a socket address, or a host name and a port.
//!   [`Target::parse`] reads the usual textual forms (`1.2.3.4:80`, `[::1]:80`,
//!   `[fe80::1%2]:80`, `example.com:80`, bare addresses and names with a default port).
//! - [`ToTarget`] turns strings, socket addresses and `(host, port)` pairs into a [`Target`].
//! - [`classify`] sorts an IP address into an [`AddrClass`] (private, shared, global, ...).
//! - [`canonical`] turns an IPv4-mapped IPv6 socket address into the IPv4 one.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;

use crate::error::Error;

/// Longest text [`Target::parse`] looks at; longer input is refused before any other work.
///
/// A host name is at most 253 characters, plus a trailing dot, a colon and five port digits.
pub const MAX_TARGET_LEN: usize = 300;

/// Longest host name, without its trailing dot (RFC 1035 section 2.3.4, in text form).
const MAX_HOST_LEN: usize = 253;

/// Longest label of a host name (RFC 1035 section 2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// How much of a refused input an error message repeats.
const MAX_ECHO_LEN: usize = 64;

/// The reasons [`Error::InvalidTarget`] gives, one constant each so tests can tell them apart.
pub(crate) mod reason {
    pub const EMPTY: &str = "empty input";
    pub const TOO_LONG: &str = "input too long";
    pub const WHITESPACE: &str = "contains whitespace";
    pub const MISSING_PORT: &str = "missing port and no default port";
    pub const EMPTY_PORT: &str = "empty port after ':'";
    pub const BAD_PORT: &str = "port must be decimal digits only";
    pub const PORT_RANGE: &str = "port out of range 0..=65535";
    pub const MISSING_HOST: &str = "missing host before ':'";
    pub const BAD_IPV6: &str = "invalid ipv6 address";
    pub const UNCLOSED_BRACKET: &str = "'[' without matching ']'";
    pub const AFTER_BRACKET: &str = "expected ':port' after ']'";
    pub const BAD_SCOPE: &str = "ipv6 scope id must be a decimal number";
    pub const HOST_TOO_LONG: &str = "host name longer than 253 characters";
    pub const EMPTY_LABEL: &str = "host name has an empty label";
    pub const LABEL_TOO_LONG: &str = "host name label longer than 63 characters";
    pub const BAD_CHAR: &str = "host name has a character outside [A-Za-z0-9-_.]";
    pub const HYPHEN: &str = "host name label starts or ends with '-'";
    pub const NUMERIC: &str =
        "not a valid ipv4 address, and a host name cannot end in a numeric label";
}

fn invalid(input: &str, reason: &'static str) -> Error {
    let input = if input.len() > MAX_ECHO_LEN {
        // Cut on a character boundary at or before MAX_ECHO_LEN bytes.
        let mut end = MAX_ECHO_LEN;
        while !input.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &input[..end])
    } else {
        input.to_owned()
    };
    Error::InvalidTarget { input, reason }
}

// ---------------------------------------------------------------------------------------------
// Af
// ---------------------------------------------------------------------------------------------

/// An address family: IPv4 or IPv6.
///
/// Serialized as `"ipv4"` or `"ipv6"`, the names the command line's JSON uses.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Af {
    /// IPv4.
    #[serde(rename = "ipv4")]
    V4,
    /// IPv6.
    #[serde(rename = "ipv6")]
    V6,
}

impl Af {
    /// The family of an IP address.
    ///
    /// An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) is IPv6 here; use [`canonical`] or
    /// [`canonical_ip`] first to treat it as the IPv4 address it carries.
    pub fn of(ip: &IpAddr) -> Af {
        match ip {
            IpAddr::V4(_) => Af::V4,
            IpAddr::V6(_) => Af::V6,
        }
    }

    /// The family of a socket address (see [`Af::of`]).
    pub fn of_socket(addr: &SocketAddr) -> Af {
        Af::of(&addr.ip())
    }

    /// The unspecified ("any") address of the family: `0.0.0.0` or `::`.
    pub fn unspecified(self) -> IpAddr {
        match self {
            Af::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Af::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }

    /// The loopback address of the family: `127.0.0.1` or `::1`.
    pub fn loopback(self) -> IpAddr {
        match self {
            Af::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Af::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        }
    }
}

impl fmt::Display for Af {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Af::V4 => "IPv4",
            Af::V6 => "IPv6",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Target
// ---------------------------------------------------------------------------------------------

/// Something to connect to: a socket address, or a host name still to be resolved.
///
/// Parse one with [`Target::parse`] (or [`str::parse`], which wants an explicit port), or
/// build one from other types with [`ToTarget`]. [`Display`](fmt::Display) writes a form
/// that parses back to the same target: IPv6 addresses in brackets, with their scope id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A socket address; no resolution needed.
    Addr(SocketAddr),
    /// A host name and a port; the name is resolved later (see [`crate::dns`]).
    Host {
        /// A validated host name, as it was written (case kept, trailing dot kept).
        host: String,
        /// The port.
        port: u16,
    },
}

impl Target {
    /// Parses a target from text.
    ///
    /// Accepted forms:
    ///
    /// | form | example |
    /// |---|---|
    /// | IPv4 and port | `1.2.3.4:80` |
    /// | IPv6 in brackets and port | `[::1]:80` |
    /// | link-local IPv6 with a numeric scope id | `[fe80::1%2]:80` |
    /// | bare IPv4 | `1.2.3.4` (needs `default_port`) |
    /// | bare IPv6, with or without brackets | `::1`, `[::1]`, `fe80::1%2` (needs `default_port`) |
    /// | host name and port | `example.com:80`, `example.com.:80` |
    /// | bare host name | `example.com` (needs `default_port`) |
    ///
    /// Text with more than one `:` and no brackets is read as a bare IPv6 address, so
    /// `::1:80` is the address `::1:80`, not `::1` port 80: write `[::1]:80` for that.
    ///
    /// A port is 1 to 5 decimal digits with a value up to 65535 (no sign, no spaces).
    /// A host name is at most 253 characters (without a trailing dot) of labels separated by
    /// dots; a label is 1 to 63 characters of `A-Z a-z 0-9 - _` and neither starts nor ends
    /// with `-`. A single trailing dot is allowed. A name whose last label is all digits is
    /// refused, as no top-level domain is numeric (RFC 3696 section 2): this catches
    /// mistyped addresses such as `1.2.3` or `256.1.1.1` instead of looking them up.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTarget`] for empty input, input longer than [`MAX_TARGET_LEN`] bytes
    /// (checked first), any whitespace, a missing port without `default_port`, a bad port,
    /// a bad address, or a bad host name; the `reason` says which.
    pub fn parse(s: &str, default_port: Option<u16>) -> Result<Target, Error> {
        if s.len() > MAX_TARGET_LEN {
            return Err(invalid(s, reason::TOO_LONG));
        }
        if s.is_empty() {
            return Err(invalid(s, reason::EMPTY));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(invalid(s, reason::WHITESPACE));
        }

        let need_default = || default_port.ok_or_else(|| invalid(s, reason::MISSING_PORT));

        if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| invalid(s, reason::UNCLOSED_BRACKET))?;
            let port = if after.is_empty() {
                need_default()?
            } else if let Some(port) = after.strip_prefix(':') {
                parse_port(s, port)?
            } else {
                return Err(invalid(s, reason::AFTER_BRACKET));
            };
            let v6 = parse_v6_scoped(s, inside)?;
            return Ok(Target::Addr(SocketAddr::V6(SocketAddrV6::new(
                v6.0, port, 0, v6.1,
            ))));
        }

        match s.matches(':').count() {
            0 => {
                let port = need_default()?;
                host_part(s, s, port)
            }
            1 => {
                let (host, port) = s.split_once(':').expect("one colon");
                if host.is_empty() {
                    return Err(invalid(s, reason::MISSING_HOST));
                }
                let port = parse_port(s, port)?;
                host_part(s, host, port)
            }
            _ => {
                let (ip, scope) = parse_v6_scoped(s, s)?;
                let port = need_default()?;
                Ok(Target::Addr(SocketAddr::V6(SocketAddrV6::new(
                    ip, port, 0, scope,
                ))))
            }
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Target::Addr(a) => a.port(),
            Target::Host { port, .. } => *port,
        }
    }

    /// The host part as text: the host name, or the IP address (IPv6 without brackets and
    /// without scope id).
    pub fn host_str(&self) -> Cow<'_, str> {
        match self {
            Target::Addr(a) => Cow::Owned(a.ip().to_string()),
            Target::Host { host, .. } => Cow::Borrowed(host),
        }
    }

    /// The socket address, if this target needs no resolution.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Target::Addr(a) => Some(*a),
            Target::Host { .. } => None,
        }
    }

    /// The address family, if this target is an address (a name may have both).
    pub fn family(&self) -> Option<Af> {
        self.socket_addr().map(|a| Af::of_socket(&a))
    }
}

/// Parses a port: 1 to 5 ASCII digits, value at most 65535.
fn parse_port(input: &str, port: &str) -> Result<u16, Error> {
    if port.is_empty() {
        return Err(invalid(input, reason::EMPTY_PORT));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(input, reason::BAD_PORT));
    }
    // At most 5 digits (leading zeros included) keeps "000080" and huge numbers out.
    if port.len() > 5 {
        return Err(invalid(input, reason::PORT_RANGE));
    }
    let value: u32 = port.parse().map_err(|_| invalid(input, reason::BAD_PORT))?;
    u16::try_from(value).map_err(|_| invalid(input, reason::PORT_RANGE))
}

/// Parses `addr` or `addr%scope` as an IPv6 address with an optional numeric scope id.
fn parse_v6_scoped(input: &str, text: &str) -> Result<(Ipv6Addr, u32), Error> {
    let (addr, scope) = match text.split_once('%') {
        Some((addr, scope)) => {
            if scope.is_empty() || scope.len() > 10 || !scope.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(input, reason::BAD_SCOPE));
            }
            let scope = scope
                .parse::<u32>()
                .map_err(|_| invalid(input, reason::BAD_SCOPE))?;
            (addr, scope)
        }
        None => (text, 0),
    };
    let ip = Ipv6Addr::from_str(addr).map_err(|_| invalid(input, reason::BAD_IPV6))?;
    Ok((ip, scope))
}

/// Reads a host part that has no port and no brackets: an IPv4 address or a host name.
fn host_part(input: &str, host: &str, port: u16) -> Result<Target, Error> {
    if let Ok(v4) = Ipv4Addr::from_str(host) {
        return Ok(Target::Addr(SocketAddr::V4(SocketAddrV4::new(v4, port))));
    }
    validate_hostname_in(input, host)?;
    Ok(Target::Host {
        host: host.to_owned(),
        port,
    })
}

/// Parses a host with no port: IPv4, IPv6 (bare or in brackets, optional numeric scope id),
/// or a host name.
fn parse_host_only(host: &str, port: u16) -> Result<Target, Error> {
    if host.len() > MAX_TARGET_LEN {
        return Err(invalid(host, reason::TOO_LONG));
    }
    if host.is_empty() {
        return Err(invalid(host, reason::EMPTY));
    }
    if host.chars().any(char::is_whitespace) {
        return Err(invalid(host, reason::WHITESPACE));
    }
    let inner = match host.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .ok_or_else(|| invalid(host, reason::UNCLOSED_BRACKET))?,
        None => host,
    };
    if inner.contains(':') {
        let (ip, scope) = parse_v6_scoped(host, inner)?;
        return Ok(Target::Addr(SocketAddr::V6(SocketAddrV6::new(
            ip, port, 0, scope,
        ))));
    }
    if inner.len() != host.len() {
        // "[1.2.3.4]" or "[name]": brackets are for IPv6 only.
        return Err(invalid(host, reason::BAD_IPV6));
    }
    host_part(host, host, port)
}

/// Checks that `host` is a valid host name (see [`Target::parse`] for the rules).
///
/// # Errors
///
/// [`Error::InvalidTarget`] naming the broken rule.
pub fn validate_hostname(host: &str) -> Result<(), Error> {
    if host.is_empty() {
        return Err(invalid(host, reason::EMPTY));
    }
    if host.len() > MAX_TARGET_LEN {
        return Err(invalid(host, reason::TOO_LONG));
    }
    validate_hostname_in(host, host)
}

fn validate_hostname_in(input: &str, host: &str) -> Result<(), Error> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > MAX_HOST_LEN {
        return Err(invalid(input, reason::HOST_TOO_LONG));
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(invalid(input, reason::EMPTY_LABEL));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(invalid(input, reason::LABEL_TOO_LONG));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(input, reason::BAD_CHAR));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid(input, reason::HYPHEN));
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(input, reason::NUMERIC));
    }
    Ok(())
}

impl FromStr for Target {
    type Err = Error;

    /// Parses with no default port: a port must be written.
    fn from_str(s: &str) -> Result<Target, Error> {
        Target::parse(s, None)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // SocketAddrV6 displays as "[ip%scope]:port", which parse() reads back.
            Target::Addr(a) => write!(f, "{a}"),
            Target::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Target {
        Target::Addr(addr)
    }
}

/// Conversion into a [`Target`], for APIs that take "anything to connect to".
pub trait ToTarget {
    /// Converts to a [`Target`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTarget`] when text does not parse (see [`Target::parse`]).
    fn to_target(&self) -> Result<Target, Error>;
}

impl ToTarget for str {
    /// Parses with [`Target::parse`] and no default port.
    fn to_target(&self) -> Result<Target, Error> {
        Target::parse(self, None)
    }
}

impl ToTarget for String {
    /// Parses with [`Target::parse`] and no default port.
    fn to_target(&self) -> Result<Target, Error> {
        Target::parse(self, None)
    }
}

impl<T: ToTarget + ?Sized> ToTarget for &T {
    fn to_target(&self) -> Result<Target, Error> {
        (**self).to_target()
    }
}

impl ToTarget for Target {
    fn to_target(&self) -> Result<Target, Error> {
        Ok(self.clone())
    }
}

impl ToTarget for SocketAddr {
    fn to_target(&self) -> Result<Target, Error> {
        Ok(Target::Addr(*self))
    }
}

impl ToTarget for SocketAddrV4 {
    fn to_target(&self) -> Result<Target, Error> {
        Ok(Target::Addr(SocketAddr::V4(*self)))
    }
}

impl ToTarget for SocketAddrV6 {
    fn to_target(&self) -> Result<Target, Error> {
        Ok(Target::Addr(SocketAddr::V6(*self)))
    }
}

impl ToTarget for (IpAddr, u16) {
    fn to_target(&self) -> Result<Target, Error> {
        Ok(Target::Addr(SocketAddr::new(self.0, self.1)))
    }
}

impl ToTarget for (&str, u16) {
    /// The string is a host only: an IPv4 address, an IPv6 address (bare or in brackets,
    /// optionally with a numeric `%scope`), or a host name. A port inside the string is an
    /// error.
    fn to_target(&self) -> Result<Target, Error> {
        parse_host_only(self.0, self.1)
    }
}

impl ToTarget for (String, u16) {
    /// As for `(&str, u16)`.
    fn to_target(&self) -> Result<Target, Error> {
        parse_host_only(&self.0, self.1)
    }
}

// ---------------------------------------------------------------------------------------------
// Address classes
// ---------------------------------------------------------------------------------------------

/// What kind of address an IP address is, as far as reachability goes.
///
/// See [`classify`] for the exact blocks. Serialized as the names [`AddrClass::as_str`]
/// gives (`"link-local"`, `"global"`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddrClass {
    /// `0.0.0.0/8` ("this network", RFC 1122; `0.0.0.0` is the unspecified address) and `::`.
    Unspecified,
    /// `127.0.0.0/8` and `::1`.
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`) and IPv6 unique local `fc00::/7`.
    Private,
    /// `100.64.0.0/10`, shared address space for carrier-grade NAT (RFC 6598).
    Shared,
    /// `169.254.0.0/16` and `fe80::/10`.
    LinkLocal,
    /// `224.0.0.0/4` and `ff00::/8`.
    Multicast,
    /// Documentation (TEST-NET-1/2/3 `192.0.2/24`, `198.51.100/24`, `203.0.113/24`;
    /// `2001:db8::/32` and `3fff::/20`) and benchmarking (`198.18.0.0/15`, `2001:2::/48`).
    ///
    /// The benchmarking blocks are counted here because, like the documentation blocks, they
    /// are never routed on the internet; this project's NAT lab uses them.
    Documentation,
    /// Reserved, not usable as a unicast destination on the internet: `240.0.0.0/4`
    /// (including the broadcast address `255.255.255.255`), deprecated IPv6 site-local
    /// `fec0::/10`, IPv4-compatible IPv6 `::/96` (other than `::` and `::1`) and the IPv6
    /// discard prefix `100::/64`.
    Reserved,
    /// Anything else: presumed globally routable.
    Global,
}

impl AddrClass {
    /// Whether the address is presumed reachable across the internet ([`AddrClass::Global`]).
    pub fn is_public(self) -> bool {
        self == AddrClass::Global
    }

    /// Whether the address is a unicast address of a local network, not routed on the
    /// internet and typically behind NAT: [`Private`](AddrClass::Private),
    /// [`Shared`](AddrClass::Shared) or [`LinkLocal`](AddrClass::LinkLocal).
    /// Loopback is not included.
    pub fn is_private_like(self) -> bool {
        matches!(
            self,
            AddrClass::Private | AddrClass::Shared | AddrClass::LinkLocal
        )
    }

    /// Whether the address can be the destination of unicast traffic at all: anything but
    /// [`Unspecified`](AddrClass::Unspecified), [`Multicast`](AddrClass::Multicast) and
    /// [`Reserved`](AddrClass::Reserved).
    pub fn is_unicast(self) -> bool {
        !matches!(
            self,
            AddrClass::Unspecified | AddrClass::Multicast | AddrClass::Reserved
        )
    }

    /// A short lowercase name, as used in the command line's output and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrClass::Unspecified => "unspecified",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::Shared => "shared",
            AddrClass::LinkLocal => "link-local",
            AddrClass::Multicast => "multicast",
            AddrClass::Documentation => "documentation",
            AddrClass::Reserved => "reserved",
            AddrClass::Global => "global",
        }
    }
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `ip` lies in `net/len`.
fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

/// Whether `ip` lies in `net/len`.
fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    u128::from(ip) & mask == u128::from(net) & mask
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    use AddrClass::*;
    const TABLE: &[([u8; 4], u32, AddrClass)] = &[
        ([0, 0, 0, 0], 8, Unspecified),
        ([127, 0, 0, 0], 8, Loopback),
        ([10, 0, 0, 0], 8, Private),
        ([172, 16, 0, 0], 12, Private),
        ([192, 168, 0, 0], 16, Private),
        ([100, 64, 0, 0], 10, Shared),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([224, 0, 0, 0], 4, Multicast),
        ([192, 0, 2, 0], 24, Documentation),
        ([198, 51, 100, 0], 24, Documentation),
        ([203, 0, 113, 0], 24, Documentation),
        ([198, 18, 0, 0], 15, Documentation),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    TABLE
        .iter()
        .find(|(net, len, _)| in_v4(ip, *net, *len))
        .map_or(Global, |(_, _, class)| *class)
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    use AddrClass::*;
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if ip.is_unspecified() {
        return Unspecified;
    }
    if ip.is_loopback() {
        return Loopback;
    }
    const fn net(s: [u16; 8]) -> Ipv6Addr {
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7])
    }
    const TABLE: &[(Ipv6Addr, u32, AddrClass)] = &[
        (net([0xfe80, 0, 0, 0, 0, 0, 0, 0]), 10, LinkLocal),
        (net([0xfc00, 0, 0, 0, 0, 0, 0, 0]), 7, Private),
        (net([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8, Multicast),
        (net([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]), 32, Documentation),
        (net([0x3fff, 0, 0, 0, 0, 0, 0, 0]), 20, Documentation),
        (net([0x2001, 0x2, 0, 0, 0, 0, 0, 0]), 48, Documentation),
        (net([0xfec0, 0, 0, 0, 0, 0, 0, 0]), 10, Reserved),
        (net([0x100, 0, 0, 0, 0, 0, 0, 0]), 64, Reserved),
        (net([0, 0, 0, 0, 0, 0, 0, 0]), 96, Reserved),
    ];
    TABLE
        .iter()
        .find(|(net, len, _)| in_v6(ip, *net, *len))
        .map_or(Global, |(_, _, class)| *class)
}

/// Sorts an IP address into its [`AddrClass`].
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are classified as the IPv4 address they
/// carry. The blocks are listed on each [`AddrClass`] variant.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Turns an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) into the IPv4 address; leaves any
/// other address as it is.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Turns an IPv4-mapped IPv6 socket address (`[::ffff:a.b.c.d]:port`, as a dual-stack
/// socket reports IPv4 peers) into the IPv4 socket address; leaves any other as it is.
///
/// Any other address is returned unchanged, scope id and flow label included.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// A socket address on the wire, as the crate's binary forms write it: a family byte (4
/// or 6), the IP's 4 or 16 bytes, the port (big-endian). Scope ids are not carried.
pub(crate) mod wire {
    use std::net::{IpAddr, SocketAddr};

    use bytes::{Buf, BufMut, BytesMut};

    /// Bytes [`put`] writes for `a`.
    pub(crate) fn len(a: &SocketAddr) -> usize {
        if a.is_ipv4() {
            7
        } else {
            19
        }
    }

    /// Writes `a`.
    pub(crate) fn put(out: &mut BytesMut, a: &SocketAddr) {
        match a.ip() {
            IpAddr::V4(ip) => {
                out.put_u8(4);
                out.put_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.put_u8(6);
                out.put_slice(&ip.octets());
            }
        }
        out.put_u16(a.port());
    }

    /// Reads an address from the front of `buf`; `Err` names what is wrong: the bytes
    /// end too soon or the family byte is unknown.
    pub(crate) fn take(buf: &mut &[u8]) -> Result<SocketAddr, &'static str> {
        let ip = match buf.first() {
            Some(4) if buf.len() >= 7 => {
                let o: [u8; 4] = buf[1..5].try_into().expect("4 bytes");
                buf.advance(5);
                IpAddr::from(o)
            }
            Some(6) if buf.len() >= 19 => {
                let o: [u8; 16] = buf[1..17].try_into().expect("16 bytes");
                buf.advance(17);
                IpAddr::from(o)
            }
            Some(4 | 6) | None => return Err("an address cut short"),
            Some(_) => return Err("unknown address family"),
        };
        Ok(SocketAddr::new(ip, buf.get_u16()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn addresses_of_both_families_round_trip_and_short_or_unknown_ones_are_refused() {
            for a in ["198.51.100.7:4000", "[2001:db8::5]:65535"] {
                let a: SocketAddr = a.parse().unwrap();
                let mut out = BytesMut::new();
                put(&mut out, &a);
                assert_eq!(out.len(), len(&a));
                let mut buf = &out[..];
                assert_eq!(take(&mut buf), Ok(a));
                assert!(buf.is_empty());
                for cut in 0..out.len() {
                    assert_eq!(take(&mut &out[..cut]), Err("an address cut short"));
                }
            }
            assert_eq!(
                take(&mut &[5u8, 0, 0, 0, 0, 0, 0][..]),
                Err("unknown address family")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }
    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn host(h: &str, port: u16) -> Target {
        Target::Host {
            host: h.to_owned(),
            port,
        }
    }

    /// The reason of an `InvalidTarget` error; panics on any other outcome.
    fn refusal(s: &str, default_port: Option<u16>) -> &'static str {
        match Target::parse(s, default_port) {
            Err(Error::InvalidTarget { reason, .. }) => reason,
            other => {
                panic!("{s:?} (default {default_port:?}): expected InvalidTarget, got {other:?}")
            }
        }
    }

    // ---- Af -------------------------------------------------------------------------------

    #[test]
    fn af_basics() {
        assert_eq!(Af::of(&IpAddr::V4(v4("1.2.3.4"))), Af::V4);
        assert_eq!(Af::of(&IpAddr::V6(v6("::1"))), Af::V6);
        assert_eq!(Af::of(&IpAddr::V6(v6("::ffff:1.2.3.4"))), Af::V6);
        assert_eq!(Af::of_socket(&sa("1.2.3.4:5")), Af::V4);
        assert_eq!(Af::of_socket(&sa("[::1]:5")), Af::V6);
        assert_eq!(Af::V4.unspecified(), sa("0.0.0.0:0").ip());
        assert_eq!(Af::V6.unspecified(), sa("[::]:0").ip());
        assert_eq!(Af::V4.loopback(), sa("127.0.0.1:0").ip());
        assert_eq!(Af::V6.loopback(), sa("[::1]:0").ip());
        assert_eq!(Af::V4.to_string(), "IPv4");
        assert_eq!(Af::V6.to_string(), "IPv6");
    }

    #[test]
    fn af_serializes_as_ipv4_and_ipv6() {
        assert_eq!(serde_json::to_string(&Af::V4).unwrap(), "\"ipv4\"");
        assert_eq!(serde_json::to_string(&Af::V6).unwrap(), "\"ipv6\"");
        assert_eq!(serde_json::from_str::<Af>("\"ipv6\"").unwrap(), Af::V6);
        assert!(serde_json::from_str::<Af>("\"IPv4\"").is_err());
        assert!(serde_json::from_str::<Af>("\"v4\"").is_err());
    }

    // ---- Target: accepted forms -----------------------------------------------------------

    #[test]
    fn parse_accepts() {
        let cases: &[(&str, Option<u16>, Target)] = &[
            ("1.2.3.4:80", None, Target::Addr(sa("1.2.3.4:80"))),
            ("1.2.3.4:80", Some(9), Target::Addr(sa("1.2.3.4:80"))),
            ("0.0.0.0:0", None, Target::Addr(sa("0.0.0.0:0"))),
            (
                "255.255.255.255:65535",
                None,
                Target::Addr(sa("255.255.255.255:65535")),
            ),
            ("1.2.3.4:00080", None, Target::Addr(sa("1.2.3.4:80"))),
            ("[::1]:80", None, Target::Addr(sa("[::1]:80"))),
            ("[::]:0", None, Target::Addr(sa("[::]:0"))),
            (
                "[2001:db8::1]:443",
                None,
                Target::Addr(sa("[2001:db8::1]:443")),
            ),
            (
                "[::ffff:1.2.3.4]:80",
                None,
                Target::Addr(sa("[::ffff:1.2.3.4]:80")),
            ),
            ("[fe80::1%2]:80", None, Target::Addr(sa("[fe80::1%2]:80"))),
            (
                "[fe80::1%4294967295]:1",
                None,
                Target::Addr(sa("[fe80::1%4294967295]:1")),
            ),
            ("1.2.3.4", Some(80), Target::Addr(sa("1.2.3.4:80"))),
            ("::1", Some(80), Target::Addr(sa("[::1]:80"))),
            ("[::1]", Some(80), Target::Addr(sa("[::1]:80"))),
            ("::", Some(7), Target::Addr(sa("[::]:7"))),
            ("fe80::1%3", Some(80), Target::Addr(sa("[fe80::1%3]:80"))),
            ("[fe80::1%3]", Some(80), Target::Addr(sa("[fe80::1%3]:80"))),
            // More than one colon without brackets is a bare IPv6 address.
            ("::1:80", Some(5), Target::Addr(sa("[::1:80]:5"))),
            ("example.com:80", None, host("example.com", 80)),
            ("example.com.:80", None, host("example.com.", 80)),
            ("Example.COM:80", None, host("Example.COM", 80)),
            ("localhost:0", None, host("localhost", 0)),
            ("localhost:65535", None, host("localhost", 65535)),
            ("localhost", Some(80), host("localhost", 80)),
            ("my_host-1.example", Some(1), host("my_host-1.example", 1)),
            (
                "_srv._tcp.example.org:5",
                None,
                host("_srv._tcp.example.org", 5),
            ),
            ("a", Some(1), host("a", 1)),
            ("1.2.3.example", Some(1), host("1.2.3.example", 1)),
            ("123.example.com:1", None, host("123.example.com", 1)),
            (
                "xn--bcher-kva.example:1",
                None,
                host("xn--bcher-kva.example", 1),
            ),
            ("a1b2", Some(1), host("a1b2", 1)),
        ];
        for (s, dp, want) in cases {
            match Target::parse(s, *dp) {
                Ok(t) => assert_eq!(&t, want, "{s:?}"),
                Err(e) => panic!("{s:?}: {e}"),
            }
        }
    }

    #[test]
    fn parse_hostname_length_limits() {
        let label63 = "a".repeat(63);
        let ok = format!("{label63}.example");
        assert_eq!(Target::parse(&ok, Some(1)).unwrap(), host(&ok, 1));

        // Exactly 253 characters: 63+1+63+1+63+1+61.
        let name253 = format!("{l}.{l}.{l}.{}", "b".repeat(61), l = label63);
        assert_eq!(name253.len(), 253);
        assert_eq!(Target::parse(&name253, Some(1)).unwrap(), host(&name253, 1));
        let with_dot = format!("{name253}.");
        assert_eq!(
            Target::parse(&with_dot, Some(1)).unwrap(),
            host(&with_dot, 1)
        );
        let with_port = format!("{with_dot}:65535");
        assert_eq!(
            Target::parse(&with_port, None).unwrap(),
            host(&with_dot, 65535)
        );

        // One more character is too long.
        let name254 = format!("{l}.{l}.{l}.{}", "b".repeat(62), l = label63);
        assert_eq!(refusal(&name254, Some(1)), reason::HOST_TOO_LONG);
        assert_eq!(
            refusal(&format!("{name254}."), Some(1)),
            reason::HOST_TOO_LONG
        );

        let label64 = "a".repeat(64);
        assert_eq!(
            refusal(&format!("{label64}.example"), Some(1)),
            reason::LABEL_TOO_LONG
        );
        assert_eq!(refusal(&label64, Some(1)), reason::LABEL_TOO_LONG);
    }

    #[test]
    fn from_str_needs_port() {
        assert_eq!(
            "1.2.3.4:80".parse::<Target>().unwrap(),
            Target::Addr(sa("1.2.3.4:80"))
        );
        assert_eq!("host:1".parse::<Target>().unwrap(), host("host", 1));
        for s in ["1.2.3.4", "::1", "[::1]", "host"] {
            match s.parse::<Target>() {
                Err(Error::InvalidTarget { reason, .. }) => {
                    assert_eq!(reason, reason::MISSING_PORT)
                }
                other => panic!("{s:?}: {other:?}"),
            }
        }
    }

    // ---- Target: refusals -------------------------------------------------------------------

    #[test]
    fn parse_refuses() {
        use reason::*;
        let long = "a".repeat(MAX_TARGET_LEN + 1);
        let just_long = format!("{}:1", "a".repeat(MAX_TARGET_LEN - 1));
        let cases: &[(&str, Option<u16>, &str)] = &[
            ("", None, EMPTY),
            ("", Some(80), EMPTY),
            (&long, Some(80), TOO_LONG),
            (&just_long, None, TOO_LONG),
            (" ", Some(80), WHITESPACE),
            ("host :80", None, WHITESPACE),
            (" host:80", None, WHITESPACE),
            ("host:80 ", None, WHITESPACE),
            ("host:80\n", None, WHITESPACE),
            ("ho\tst", Some(1), WHITESPACE),
            ("1.2.3.4:\u{a0}80", None, WHITESPACE),
            ("1.2.3.4", None, MISSING_PORT),
            ("::1", None, MISSING_PORT),
            ("[::1]", None, MISSING_PORT),
            ("fe80::1%2", None, MISSING_PORT),
            ("host", None, MISSING_PORT),
            ("host.example.", None, MISSING_PORT),
            ("host:", None, EMPTY_PORT),
            ("host:", Some(80), EMPTY_PORT),
            ("[::1]:", None, EMPTY_PORT),
            ("1.2.3.4:", None, EMPTY_PORT),
            ("host:+80", None, BAD_PORT),
            ("host:-1", None, BAD_PORT),
            ("host:8a", None, BAD_PORT),
            ("host:0x50", None, BAD_PORT),
            ("host:８０", None, BAD_PORT),
            ("[::1]:http", None, BAD_PORT),
            ("host:65536", None, PORT_RANGE),
            ("host:99999", None, PORT_RANGE),
            ("host:000080", None, PORT_RANGE),
            ("host:18446744073709551616", None, PORT_RANGE),
            (":80", None, MISSING_HOST),
            (":80", Some(1), MISSING_HOST),
            ("[::1", Some(1), UNCLOSED_BRACKET),
            ("[::1:80", None, UNCLOSED_BRACKET),
            ("[::1]80", None, AFTER_BRACKET),
            ("[::1]]:80", None, AFTER_BRACKET),
            ("[::1]:80:90", None, BAD_PORT),
            ("[1.2.3.4]:80", None, BAD_IPV6),
            ("[host]:80", None, BAD_IPV6),
            ("[]:80", None, BAD_IPV6),
            ("[:::1]:80", None, BAD_IPV6),
            ("[2001:db8::g]:80", None, BAD_IPV6),
            ("1:2:3:4:5:6:7:8:9", Some(1), BAD_IPV6),
            ("host:80:90", None, BAD_IPV6),
            ("[fe80::1%eth0]:80", None, BAD_SCOPE),
            ("[fe80::1%]:80", None, BAD_SCOPE),
            ("[fe80::1%-1]:80", None, BAD_SCOPE),
            ("[fe80::1%4294967296]:80", None, BAD_SCOPE),
            ("fe80::1%eth0", Some(80), BAD_SCOPE),
            ("a..b:80", None, EMPTY_LABEL),
            (".example:80", None, EMPTY_LABEL),
            (".:80", None, EMPTY_LABEL),
            (".", Some(80), EMPTY_LABEL),
            ("example..:80", None, EMPTY_LABEL),
            ("ex!ample:80", None, BAD_CHAR),
            ("exa*mple.com:80", None, BAD_CHAR),
            ("bücher.example:80", None, BAD_CHAR),
            ("a/b:80", None, BAD_CHAR),
            ("user@host:80", None, BAD_CHAR),
            ("-host:80", None, HYPHEN),
            ("host-:80", None, HYPHEN),
            ("a.-b.c:80", None, HYPHEN),
            ("1.2.3:80", None, NUMERIC),
            ("256.1.1.1:80", None, NUMERIC),
            ("01.2.3.4:80", None, NUMERIC),
            ("1.2.3.4.5:80", None, NUMERIC),
            ("999", Some(80), NUMERIC),
            ("example.123.:80", None, NUMERIC),
        ];
        for (s, dp, want) in cases {
            assert_eq!(refusal(s, *dp), *want, "{s:?} (default {dp:?})");
        }
    }

    #[test]
    fn long_input_refused_before_work_and_echo_truncated() {
        // Whitespace and bad characters beyond the limit must not matter: length comes first.
        let s = format!("{} ", "!".repeat(MAX_TARGET_LEN + 10));
        assert_eq!(refusal(&s, None), reason::TOO_LONG);
        match Target::parse(&s, None) {
            Err(Error::InvalidTarget { input, .. }) => assert!(input.len() <= MAX_ECHO_LEN + 3),
            other => panic!("{other:?}"),
        }
        // Multi-byte characters are cut on a character boundary.
        let s = "é".repeat(200);
        match Target::parse(&s, None) {
            Err(Error::InvalidTarget { input, reason }) => {
                assert_eq!(reason, reason::TOO_LONG);
                assert!(input.ends_with("..."));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_messages_are_lowercase_and_name_input() {
        let e = Target::parse("host", None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("invalid target \"host\""), "{msg}");
        assert!(msg.contains(reason::MISSING_PORT), "{msg}");
    }

    // ---- Target: accessors, display, round trips ---------------------------------------------

    #[test]
    fn accessors() {
        let t = Target::parse("[fe80::1%2]:80", None).unwrap();
        assert_eq!(t.port(), 80);
        assert_eq!(t.host_str(), "fe80::1");
        assert_eq!(t.family(), Some(Af::V6));
        assert_eq!(t.socket_addr(), Some(sa("[fe80::1%2]:80")));

        let t = Target::parse("1.2.3.4:5", None).unwrap();
        assert_eq!((t.port(), t.host_str().as_ref()), (5, "1.2.3.4"));
        assert_eq!(t.family(), Some(Af::V4));

        let t = Target::parse("Example.com.", Some(7)).unwrap();
        assert_eq!((t.port(), t.host_str().as_ref()), (7, "Example.com."));
        assert_eq!(t.family(), None);
        assert_eq!(t.socket_addr(), None);
    }

    #[test]
    fn display_round_trips() {
        let cases = [
            ("1.2.3.4:80", "1.2.3.4:80"),
            ("[::1]:80", "[::1]:80"),
            ("::1", "[::1]:9"),
            ("[fe80::1%2]:80", "[fe80::1%2]:80"),
            ("fe80::1%2", "[fe80::1%2]:9"),
            ("[::ffff:1.2.3.4]:1", "[::ffff:1.2.3.4]:1"),
            ("example.com:443", "example.com:443"),
            ("example.com.", "example.com.:9"),
            ("1.2.3.4", "1.2.3.4:9"),
        ];
        for (input, shown) in cases {
            let t = Target::parse(input, Some(9)).unwrap();
            assert_eq!(t.to_string(), shown, "{input:?}");
            assert_eq!(shown.parse::<Target>().unwrap(), t, "{input:?}");
        }
    }

    // ---- ToTarget ------------------------------------------------------------------------------

    fn via<T: ToTarget + ?Sized>(x: &T) -> Result<Target, Error> {
        x.to_target()
    }

    #[test]
    fn to_target_impls() {
        let a = Target::Addr(sa("1.2.3.4:80"));
        assert_eq!(via("1.2.3.4:80").unwrap(), a);
        assert_eq!(via(&"1.2.3.4:80").unwrap(), a);
        assert_eq!(via(&String::from("1.2.3.4:80")).unwrap(), a);
        assert_eq!(via(&&String::from("1.2.3.4:80")).unwrap(), a);
        assert_eq!(via(&sa("1.2.3.4:80")).unwrap(), a);
        assert_eq!(via(&SocketAddrV4::new(v4("1.2.3.4"), 80)).unwrap(), a);
        assert_eq!(via(&(IpAddr::V4(v4("1.2.3.4")), 80)).unwrap(), a);
        assert_eq!(via(&("1.2.3.4", 80)).unwrap(), a);
        assert_eq!(via(&(String::from("1.2.3.4"), 80)).unwrap(), a);
        assert_eq!(via(&a).unwrap(), a);
        assert_eq!(via(&&a).unwrap(), a);

        let s6 = Target::Addr(sa("[fe80::1%2]:80"));
        assert_eq!(
            via(&SocketAddrV6::new(v6("fe80::1"), 80, 0, 2)).unwrap(),
            s6
        );
        assert_eq!(via(&("fe80::1%2", 80)).unwrap(), s6);
        assert_eq!(via(&("[fe80::1%2]", 80)).unwrap(), s6);
        assert_eq!(via(&("::1", 80)).unwrap(), Target::Addr(sa("[::1]:80")));

        assert_eq!(via(&("example.com", 80)).unwrap(), host("example.com", 80));
        assert_eq!(via("example.com:80").unwrap(), host("example.com", 80));

        // A string without a port has nowhere to get one from.
        match via("example.com") {
            Err(Error::InvalidTarget { reason, .. }) => assert_eq!(reason, reason::MISSING_PORT),
            other => panic!("{other:?}"),
        }
        // (&str, u16) takes a host only.
        let refused: &[(&str, &str)] = &[
            ("example.com:80", reason::BAD_IPV6),
            ("1.2.3.4:80", reason::BAD_IPV6),
            ("[1.2.3.4]", reason::BAD_IPV6),
            ("[example.com]", reason::BAD_IPV6),
            ("[::1", reason::UNCLOSED_BRACKET),
            ("[::1]:80", reason::UNCLOSED_BRACKET),
            ("", reason::EMPTY),
            (" x", reason::WHITESPACE),
            ("-x", reason::HYPHEN),
            ("1.2.3", reason::NUMERIC),
        ];
        for (h, want) in refused {
            match via(&(*h, 80)) {
                Err(Error::InvalidTarget { reason, .. }) => assert_eq!(reason, *want, "{h:?}"),
                other => panic!("{h:?}: {other:?}"),
            }
        }
        let long = "a".repeat(MAX_TARGET_LEN + 1);
        match via(&(long.as_str(), 1)) {
            Err(Error::InvalidTarget { reason, .. }) => assert_eq!(reason, reason::TOO_LONG),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validate_hostname_fn() {
        assert!(validate_hostname("example.com").is_ok());
        assert!(validate_hostname("localhost.").is_ok());
        for (h, want) in [
            ("", reason::EMPTY),
            ("a..b", reason::EMPTY_LABEL),
            ("a:b", reason::BAD_CHAR),
            ("1.2.3.4", reason::NUMERIC),
        ] {
            match validate_hostname(h) {
                Err(Error::InvalidTarget { reason, .. }) => assert_eq!(reason, want, "{h:?}"),
                other => panic!("{h:?}: {other:?}"),
            }
        }
    }

    // ---- classify ------------------------------------------------------------------------------

    #[test]
    fn classify_v4_boundaries() {
        use AddrClass::*;
        // (address, class): first and last of each block and the neighbours just outside.
        let cases: &[(&str, AddrClass)] = &[
            ("0.0.0.0", Unspecified),
            ("0.255.255.255", Unspecified),
            ("1.0.0.0", Global),
            ("9.255.255.255", Global),
            ("10.0.0.0", Private),
            ("10.255.255.255", Private),
            ("11.0.0.0", Global),
            ("100.63.255.255", Global),
            ("100.64.0.0", Shared),
            ("100.127.255.255", Shared),
            ("100.128.0.0", Global),
            ("126.255.255.255", Global),
            ("127.0.0.0", Loopback),
            ("127.0.0.1", Loopback),
            ("127.255.255.255", Loopback),
            ("128.0.0.0", Global),
            ("169.253.255.255", Global),
            ("169.254.0.0", LinkLocal),
            ("169.254.255.255", LinkLocal),
            ("169.255.0.0", Global),
            ("172.15.255.255", Global),
            ("172.16.0.0", Private),
            ("172.31.255.255", Private),
            ("172.32.0.0", Global),
            ("192.0.1.255", Global),
            ("192.0.2.0", Documentation),
            ("192.0.2.255", Documentation),
            ("192.0.3.0", Global),
            ("192.167.255.255", Global),
            ("192.168.0.0", Private),
            ("192.168.255.255", Private),
            ("192.169.0.0", Global),
            ("198.17.255.255", Global),
            ("198.18.0.0", Documentation),
            ("198.19.255.255", Documentation),
            ("198.20.0.0", Global),
            ("198.51.99.255", Global),
            ("198.51.100.0", Documentation),
            ("198.51.100.255", Documentation),
            ("198.51.101.0", Global),
            ("203.0.112.255", Global),
            ("203.0.113.0", Documentation),
            ("203.0.113.255", Documentation),
            ("203.0.114.0", Global),
            ("223.255.255.255", Global),
            ("224.0.0.0", Multicast),
            ("239.255.255.255", Multicast),
            ("240.0.0.0", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Reserved),
            ("8.8.8.8", Global),
        ];
        for (ip, want) in cases {
            let got = classify(IpAddr::V4(v4(ip)));
            assert_eq!(got, *want, "{ip}");
            // The same address mapped into IPv6 has the same class.
            let mapped = IpAddr::V6(v4(ip).to_ipv6_mapped());
            assert_eq!(classify(mapped), *want, "{mapped}");
        }
    }

    #[test]
    fn classify_v6_boundaries() {
        use AddrClass::*;
        let cases: &[(&str, AddrClass)] = &[
            ("::", Unspecified),
            ("::1", Loopback),
            ("::2", Reserved),
            ("::1.2.3.4", Reserved),
            ("::ffff:ffff", Reserved),
            ("::1:0:0", Global),
            ("::fffe:ffff:ffff", Global),
            ("::ffff:0:0", Unspecified),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:100.64.0.1", Shared),
            ("::ffff:8.8.8.8", Global),
            ("::1:0:0:0", Global),
            ("ff::", Global),
            ("100::", Reserved),
            ("100::ffff:ffff:ffff:ffff", Reserved),
            ("100:0:0:1::", Global),
            ("2001:1:ffff:ffff:ffff:ffff:ffff:ffff", Global),
            ("2001:2::", Documentation),
            ("2001:2:0:ffff:ffff:ffff:ffff:ffff", Documentation),
            ("2001:2:1::", Global),
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", Global),
            ("2001:db8::", Documentation),
            ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", Documentation),
            ("2001:db9::", Global),
            ("2606:4700::1111", Global),
            ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Global),
            ("3fff::", Documentation),
            ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", Documentation),
            ("3fff:1000::", Global),
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Global),
            ("fc00::", Private),
            ("fd12:3456::1", Private),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Private),
            ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Global),
            ("fe80::", LinkLocal),
            ("fe80::1", LinkLocal),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", LinkLocal),
            ("fec0::", Reserved),
            ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Reserved),
            ("ff00::", Multicast),
            ("ff02::1", Multicast),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Multicast),
        ];
        for (ip, want) in cases {
            assert_eq!(classify(IpAddr::V6(v6(ip))), *want, "{ip}");
        }
    }

    #[test]
    fn class_helpers() {
        use AddrClass::*;
        let all = [
            Unspecified,
            Loopback,
            Private,
            Shared,
            LinkLocal,
            Multicast,
            Documentation,
            Reserved,
            Global,
        ];
        for c in all {
            assert_eq!(c.is_public(), c == Global, "{c}");
            assert_eq!(
                c.is_private_like(),
                matches!(c, Private | Shared | LinkLocal),
                "{c}"
            );
            assert_eq!(
                c.is_unicast(),
                !matches!(c, Unspecified | Multicast | Reserved),
                "{c}"
            );
            assert_eq!(c.to_string(), c.as_str());
            assert_eq!(c.as_str(), c.as_str().to_lowercase());
        }
        assert_eq!(LinkLocal.to_string(), "link-local");
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical(sa("[::ffff:1.2.3.4]:80")), sa("1.2.3.4:80"));
        assert_eq!(canonical(sa("[::ffff:127.0.0.1]:0")), sa("127.0.0.1:0"));
        assert_eq!(canonical(sa("1.2.3.4:80")), sa("1.2.3.4:80"));
        assert_eq!(canonical(sa("[::1]:80")), sa("[::1]:80"));
        // IPv4-compatible (deprecated) addresses are not mapped ones.
        assert_eq!(canonical(sa("[::1.2.3.4]:80")), sa("[::1.2.3.4]:80"));
        let scoped = sa("[fe80::1%2]:80");
        assert_eq!(canonical(scoped), scoped);
        match canonical(scoped) {
            SocketAddr::V6(v6) => assert_eq!(v6.scope_id(), 2),
            other => panic!("{other}"),
        }
        let flow = SocketAddr::V6(SocketAddrV6::new(v6("2001:db8::1"), 5, 7, 0));
        match canonical(flow) {
            SocketAddr::V6(v6) => assert_eq!(v6.flowinfo(), 7),
            other => panic!("{other}"),
        }
        let mapped_scoped = SocketAddr::V6(SocketAddrV6::new(v6("::ffff:1.2.3.4"), 5, 7, 3));
        assert_eq!(canonical(mapped_scoped), sa("1.2.3.4:5"));
        assert_eq!(
            canonical_ip(IpAddr::V6(v6("::ffff:10.0.0.1"))),
            IpAddr::V4(v4("10.0.0.1"))
        );
        assert_eq!(
            canonical_ip(IpAddr::V6(v6("2001:db8::1"))),
            IpAddr::V6(v6("2001:db8::1"))
        );
    }
}
