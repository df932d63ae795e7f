//! The signed peer address record: its fields, builder, binary, text and JSON forms.
//!
//! The binary form (all integers big-endian; every count and length is checked against
//! its bound before anything is allocated):
//!
//! ```text
//! "P2R" 1                                  magic and version
//! node id (16 bytes + 2 checksum bytes)    public key (32)
//! issued ms (u64)                          expires ms (u64)
//! u8 interfaces (<= 16), each:
//!   u8 name length (1..=64), name
//!   u8 families (<= 2), each:
//!     u8 family (4 | 6)
//!     u8 local addresses (<= 16), each: ip (4 | 16), port (u16)
//!     u8 has external (0 | 1) [ip, port]
//!     u8 nat type (0 unknown, 1..=7)  u8 mapping (0..=3)  u8 filtering (0..=3)
//!     u8 port allocation (0 unknown, 1 preserving, 2 sequential + i32 delta, 3 random)
//!     u8 port mappings (<= 8), each: u8 protocol (1 udp, 2 tcp), u16 internal,
//!        u16 external, u64 lease expiry ms
//!     u8 has relay (0 | 1) [relayed: u8 family, ip, port; server: likewise]
//! u8 brokers (<= 8), each: u8 length (1..=255), url
//! u8 topic length (1..=128), topic
//! signature (64): ed25519 over "p2pipe peer record v1\0" and every byte above
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use super::{check_broker_url, hex, unhex, Error, Identity, NodeId, PublicKey, Signature};
use crate::addr::{classify, AddrClass};
use crate::nat::{Filtering, Mapping, NatType, PortAllocation};
use crate::{Af, Proto};

/// The text form's prefix.
pub const TEXT_PREFIX: &str = "p2pipe1:";
/// The largest text form, in bytes; longer input is refused before it is decoded, and a
/// record whose text would be longer is not built.
pub const MAX_RECORD_TEXT: usize = 4096;
/// The largest JSON form accepted, in bytes.
const MAX_RECORD_JSON: usize = 64 * 1024;
/// How far in the future a record's issue time may be (clock skew), in ms.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
/// Most interfaces in a record.
pub const MAX_INTERFACES: usize = 16;
/// Most local addresses per interface and family.
pub const MAX_FAMILY_ADDRS: usize = 16;
/// Most port mappings per interface and family.
pub const MAX_PORT_MAPPINGS: usize = 8;
/// Most signalling brokers.
pub const MAX_BROKERS: usize = 8;
const MAX_NAME: usize = 64;
const MAX_TOPIC: usize = 128;
const MAGIC: &[u8; 4] = b"P2R\x01";
const DOMAIN: &[u8] = b"p2pipe peer record v1\0";
const SIG_LEN: usize = 64;

/// A local address and listening port, with its address class (private, link-local,
/// global ...), which [`classify`] gives and the record does not store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LocalAddr {
    /// The address and port.
    pub addr: SocketAddr,
    /// Its class; [`LocalAddr::new`] sets it, and a record refuses one that is not
    /// `classify(addr.ip())`.
    pub class: AddrClass,
}

impl LocalAddr {
    /// The address with its class.
    pub fn new(addr: SocketAddr) -> LocalAddr {
        LocalAddr {
            addr,
            class: classify(addr.ip()),
        }
    }
}

/// A port mapping made on a gateway (UPnP, NAT-PMP, PCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// The protocol: `"udp"` or `"tcp"`.
    #[serde(with = "proto_name")]
    pub protocol: Proto,
    /// The port on this host.
    pub internal_port: u16,
    /// The port on the gateway's external address.
    pub external_port: u16,
    /// When the lease ends, unix ms.
    pub lease_expires_ms: u64,
}

/// A relay allocation (TURN): an address on a relay server that reaches this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Relay {
    /// The relayed address.
    pub relayed: SocketAddr,
    /// The relay server.
    pub server: SocketAddr,
}

/// What one address family of one interface offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyEntry {
    /// The family; every address but the relay's is of it.
    pub af: Af,
    /// Local addresses and listening ports.
    pub local: Vec<LocalAddr>,
    /// The external address a STUN server saw, or null.
    pub external: Option<SocketAddr>,
    /// The RFC 3489 NAT type, or null when unknown.
    pub nat_type: Option<NatType>,
    /// The RFC 5780 mapping behaviour, or null.
    pub mapping: Option<Mapping>,
    /// The RFC 5780 filtering behaviour, or null.
    pub filtering: Option<Filtering>,
    /// The port-allocation pattern, or null.
    pub port_allocation: Option<PortAllocation>,
    /// Port mappings on the gateway.
    pub port_mappings: Vec<PortMapping>,
    /// A relay allocation, or null.
    pub relay: Option<Relay>,
}

impl FamilyEntry {
    /// An entry of family `af` with nothing known.
    pub fn new(af: Af) -> FamilyEntry {
        FamilyEntry {
            af,
            local: Vec::new(),
            external: None,
            nat_type: None,
            mapping: None,
            filtering: None,
            port_allocation: None,
            port_mappings: Vec::new(),
            relay: None,
        }
    }
}

/// One interface: its name and what each family offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceEntry {
    /// The OS name (1 to 64 bytes).
    pub name: String,
    /// At most one entry per family.
    pub families: Vec<FamilyEntry>,
}

/// The signalling channels: where to send the node a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signalling {
    /// MQTT brokers, `mqtt://host:port`.
    pub brokers: Vec<String>,
    /// The node's topic on them ([`NodeId::topic`]).
    pub topic: String,
}

/// A node's signed address record: all another node needs to reach it.
///
/// It carries the node id and public key, when it was issued and when it expires (unix
/// ms), per interface and family the local addresses and the NAT's behaviour, and the
/// signalling brokers and topic, all signed by the node key. It is built and signed with
/// [`PeerRecord::builder`] and cannot change afterwards; [`PeerRecord::parse`] (text) and
/// [`PeerRecord::from_json`] check the size bound, the form, the signature, the node id
/// against the key, and the times, and give back only records that pass.
///
/// A record that verifies says what its node claims, nothing more: nothing in it is
/// trusted to reach the node until the node has proven its key on that path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    node_id: NodeId,
    key: PublicKey,
    issued_ms: u64,
    expires_ms: u64,
    interfaces: Vec<InterfaceEntry>,
    signalling: Signalling,
    signature: Signature,
}

/// Builds a [`PeerRecord`]; see [`PeerRecord::builder`].
#[derive(Debug, Clone, Default)]
pub struct RecordBuilder {
    interfaces: Vec<InterfaceEntry>,
    brokers: Vec<String>,
}

impl RecordBuilder {
    /// Adds an interface.
    pub fn interface(mut self, entry: InterfaceEntry) -> Self {
        self.interfaces.push(entry);
        self
    }

    /// Adds a signalling broker, `mqtt://host:port`.
    pub fn broker(mut self, url: impl Into<String>) -> Self {
        self.brokers.push(url.into());
        self
    }

    /// Signs the record with `identity`, issued at `now_ms` (unix ms) and expiring `ttl`
    /// later. The topic is the identity's [`NodeId::topic`].
    ///
    /// # Errors
    ///
    /// [`Error::BadBroker`] for a broker URL that is not `mqtt://host:port`, and
    /// [`Error::Invalid`] for a field over its bound (see the `MAX_` constants), an
    /// address of the wrong family, a zero `ttl`, or a record whose text form would be
    /// over [`MAX_RECORD_TEXT`].
    pub fn sign(
        self,
        identity: &Identity,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<PeerRecord, Error> {
        for b in &self.brokers {
            check_broker_url(b)?;
        }
        let ttl_ms: u64 = ttl.as_millis().try_into().unwrap_or(u64::MAX);
        if ttl_ms == 0 {
            return Err(Error::Invalid("the time to live is zero".into()));
        }
        let mut record = PeerRecord {
            node_id: identity.node_id(),
            key: identity.public(),
            issued_ms: now_ms,
            expires_ms: now_ms.saturating_add(ttl_ms),
            interfaces: self.interfaces,
            signalling: Signalling {
                brokers: self.brokers,
                topic: identity.node_id().topic(),
            },
            signature: Signature::from_bytes(&[0; SIG_LEN]),
        };
        record.check_bounds().map_err(Error::Invalid)?;
        let mut body = BytesMut::new();
        record.emit_body(&mut body);
        let text_len = TEXT_PREFIX.len() + (body.len() + SIG_LEN).div_ceil(3) * 4;
        if text_len > MAX_RECORD_TEXT {
            return Err(Error::Invalid(format!(
                "its text would be about {text_len} bytes, over the limit of {MAX_RECORD_TEXT}"
            )));
        }
        record.signature = identity.sign(&signed_bytes(&body));
        Ok(record)
    }
}

/// What the signature covers: the domain and the body.
fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(body);
    m
}

impl PeerRecord {
    /// A builder with no interfaces and no brokers.
    pub fn builder() -> RecordBuilder {
        RecordBuilder::default()
    }

    /// The node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The node's public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// When the record was issued, unix ms.
    pub fn issued_ms(&self) -> u64 {
        self.issued_ms
    }

    /// When the record expires, unix ms.
    pub fn expires_ms(&self) -> u64 {
        self.expires_ms
    }

    /// The interfaces.
    pub fn interfaces(&self) -> &[InterfaceEntry] {
        &self.interfaces
    }

    /// The signalling brokers and topic.
    pub fn signalling(&self) -> &Signalling {
        &self.signalling
    }

    /// The signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Parses and verifies the text form (`p2pipe1:` and URL-safe base64), at `now_ms`
    /// (unix ms). Surrounding whitespace is ignored.
    ///
    /// # Errors
    ///
    /// [`Error::RecordTooLarge`] (checked before decoding), [`Error::Malformed`],
    /// [`Error::Unsigned`], [`Error::BadSignature`], [`Error::IdMismatch`],
    /// [`Error::Expired`], [`Error::FromTheFuture`].
    pub fn parse(text: &str, now_ms: u64) -> Result<PeerRecord, Error> {
        let text = text.trim();
        if text.len() > MAX_RECORD_TEXT {
            return Err(Error::RecordTooLarge {
                len: text.len(),
                max: MAX_RECORD_TEXT,
            });
        }
        let b64 = text
            .strip_prefix(TEXT_PREFIX)
            .ok_or_else(|| Error::Malformed(format!("it does not start with {TEXT_PREFIX}")))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|e| Error::Malformed(format!("bad base64: {e}").to_lowercase()))?;
        PeerRecord::parse_binary(&bytes, now_ms)
    }

    /// Parses and verifies the binary form, at `now_ms` (unix ms).
    ///
    /// # Errors
    ///
    /// As [`PeerRecord::parse`].
    pub fn parse_binary(bytes: &[u8], now_ms: u64) -> Result<PeerRecord, Error> {
        let max = (MAX_RECORD_TEXT - TEXT_PREFIX.len()) / 4 * 3;
        if bytes.len() > max {
            return Err(Error::RecordTooLarge {
                len: bytes.len(),
                max,
            });
        }
        let mut r = Reader { buf: bytes, pos: 0 };
        let (node_id, key, mut record) = decode_body(&mut r)?;
        let body = &bytes[..r.pos];
        let sig = match r.rest() {
            [] => return Err(Error::Unsigned),
            s if s.len() == SIG_LEN => s,
            s => {
                return Err(Error::Malformed(format!(
                    "{} bytes after the body, not a {SIG_LEN}-byte signature",
                    s.len()
                )))
            }
        };
        record.signature = Signature::from_slice(sig).map_err(|_| Error::BadSignature)?;
        check_id(&node_id, &key)?;
        key.verify_strict(&signed_bytes(body), &record.signature)
            .map_err(|_| Error::BadSignature)?;
        record.check_times(now_ms)?;
        Ok(record)
    }

    /// Parses and verifies the JSON form, at `now_ms` (unix ms): the same signed bytes as
    /// the text form, so a record goes from one form to the other and still verifies.
    ///
    /// # Errors
    ///
    /// As [`PeerRecord::parse`]; a JSON value whose fields are not what the signed bytes
    /// say (an address class that is not the address's) is [`Error::Malformed`].
    pub fn from_json(json: &str, now_ms: u64) -> Result<PeerRecord, Error> {
        if json.len() > MAX_RECORD_JSON {
            return Err(Error::RecordTooLarge {
                len: json.len(),
                max: MAX_RECORD_JSON,
            });
        }
        let j: RecordJson = serde_json::from_str(json)
            .map_err(|e| Error::Malformed(format!("bad json: {e}").to_lowercase()))?;
        let sig = match j.signature.as_deref() {
            None | Some("") => return Err(Error::Unsigned),
            Some(s) => unhex::<SIG_LEN>(s)
                .ok_or_else(|| Error::Malformed("the signature is not 128 hex digits".into()))?,
        };
        let claimed = j.node_id.parse::<NodeId>()?;
        let key = unhex::<32>(&j.public_key)
            .and_then(|k| PublicKey::from_bytes(&k).ok())
            .ok_or_else(|| Error::Malformed("the public key is not an ed25519 key".into()))?;
        let record = PeerRecord {
            node_id: claimed,
            key,
            issued_ms: j.issued_ms,
            expires_ms: j.expires_ms,
            interfaces: j.interfaces,
            signalling: j.signalling,
            signature: Signature::from_bytes(&sig),
        };
        record.check_bounds().map_err(Error::Malformed)?;
        let mut bytes = BytesMut::with_capacity(record.emit_len());
        record.emit(&mut bytes);
        let parsed = PeerRecord::parse_binary(&bytes, now_ms)?;
        if parsed != record {
            return Err(Error::Malformed(
                "the json says more than the signed bytes (an address class that is not the address's?)"
                    .into(),
            ));
        }
        Ok(parsed)
    }

    /// The text form: `p2pipe1:` and the binary form in URL-safe base64 without padding,
    /// one line of at most [`MAX_RECORD_TEXT`] bytes.
    pub fn to_text(&self) -> String {
        let mut bytes = BytesMut::with_capacity(self.emit_len());
        self.emit(&mut bytes);
        let mut text = String::from(TEXT_PREFIX);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&bytes, &mut text);
        text
    }

    /// The JSON form: every field by name, the key and signature in hex.
    pub fn to_json(&self) -> serde_json::Value {
        let j = RecordJson {
            node_id: self.node_id.to_string(),
            public_key: hex(self.key.as_bytes()),
            issued_ms: self.issued_ms,
            expires_ms: self.expires_ms,
            interfaces: self.interfaces.clone(),
            signalling: self.signalling.clone(),
            signature: Some(hex(&self.signature.to_bytes())),
        };
        serde_json::to_value(j).expect("a record serializes")
    }

    /// Appends the binary form, signature included.
    pub fn emit(&self, out: &mut BytesMut) {
        self.emit_body(out);
        out.put_slice(&self.signature.to_bytes());
    }

    /// The size of the binary form.
    pub fn emit_len(&self) -> usize {
        let addr = |a: &SocketAddr| if a.is_ipv4() { 6 } else { 18 };
        let family = |f: &FamilyEntry| {
            let local: usize = f.local.iter().map(|l| addr(&l.addr)).sum();
            let ext = 1 + f.external.as_ref().map_or(0, addr);
            let alloc = 1 + usize::from(matches!(
                f.port_allocation,
                Some(PortAllocation::Sequential { .. })
            )) * 4;
            let relay = 1 + f
                .relay
                .as_ref()
                .map_or(0, |r| 2 + addr(&r.relayed) + addr(&r.server));
            2 + local + ext + 3 + alloc + 1 + f.port_mappings.len() * 13 + relay
        };
        let ifaces: usize = self
            .interfaces
            .iter()
            .map(|i| 2 + i.name.len() + i.families.iter().map(family).sum::<usize>())
            .sum();
        let brokers: usize = self.signalling.brokers.iter().map(|b| 1 + b.len()).sum();
        MAGIC.len()
            + 18
            + 32
            + 16
            + 1
            + ifaces
            + 1
            + brokers
            + 1
            + self.signalling.topic.len()
            + SIG_LEN
    }

    /// Refuses fields the binary form cannot carry, saying which.
    fn check_bounds(&self) -> Result<(), String> {
        let over = |what: &str, n: usize, max: usize| {
            (n > max).then(|| format!("{n} {what}, over the limit of {max}"))
        };
        let mut problems = vec![
            over("interfaces", self.interfaces.len(), MAX_INTERFACES),
            over("brokers", self.signalling.brokers.len(), MAX_BROKERS),
        ];
        let t = self.signalling.topic.len();
        if t == 0 || t > MAX_TOPIC {
            problems.push(Some(format!("a topic of {t} bytes (1 to {MAX_TOPIC})")));
        }
        for b in &self.signalling.brokers {
            if b.is_empty() || b.len() > 255 {
                problems.push(Some(format!("a broker url of {} bytes", b.len())));
            }
        }
        for i in &self.interfaces {
            problems.push(check_interface(i).err());
        }
        match problems.into_iter().flatten().next() {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }

    fn check_times(&self, now_ms: u64) -> Result<(), Error> {
        if self.expires_ms <= self.issued_ms {
            return Err(Error::Malformed("it expires before it is issued".into()));
        }
        if self.expires_ms <= now_ms {
            return Err(Error::Expired {
                expires_ms: self.expires_ms,
                now_ms,
            });
        }
        if self.issued_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(Error::FromTheFuture {
                issued_ms: self.issued_ms,
                now_ms,
            });
        }
        Ok(())
    }

    fn emit_body(&self, out: &mut BytesMut) {
        out.put_slice(MAGIC);
        out.put_slice(&self.node_id.to_checked_bytes());
        out.put_slice(self.key.as_bytes());
        out.put_u64(self.issued_ms);
        out.put_u64(self.expires_ms);
        out.put_u8(self.interfaces.len() as u8);
        for i in &self.interfaces {
            put_str(out, &i.name);
            out.put_u8(i.families.len() as u8);
            for f in &i.families {
                emit_family(out, f);
            }
        }
        out.put_u8(self.signalling.brokers.len() as u8);
        for b in &self.signalling.brokers {
            put_str(out, b);
        }
        put_str(out, &self.signalling.topic);
    }
}

fn check_id(node_id: &NodeId, key: &PublicKey) -> Result<(), Error> {
    let actual = NodeId::from_key(key);
    if *node_id != actual {
        return Err(Error::IdMismatch {
            claimed: node_id.to_string(),
            actual,
        });
    }
    Ok(())
}

fn check_interface(i: &InterfaceEntry) -> Result<(), String> {
    if i.name.is_empty() || i.name.len() > MAX_NAME {
        return Err(format!(
            "an interface name of {} bytes (1 to {MAX_NAME})",
            i.name.len()
        ));
    }
    if i.families.len() > 2 || (i.families.len() == 2 && i.families[0].af == i.families[1].af) {
        return Err(format!(
            "interface {}: more than one entry for a family",
            i.name
        ));
    }
    for f in &i.families {
        let name = &i.name;
        if f.local.len() > MAX_FAMILY_ADDRS {
            return Err(format!(
                "interface {name}: {} addresses, over {MAX_FAMILY_ADDRS}",
                f.local.len()
            ));
        }
        if f.port_mappings.len() > MAX_PORT_MAPPINGS {
            return Err(format!(
                "interface {name}: {} port mappings, over {MAX_PORT_MAPPINGS}",
                f.port_mappings.len()
            ));
        }
        let addrs = f.local.iter().map(|l| l.addr).chain(f.external);
        if let Some(a) = addrs.clone().find(|a| Af::of_socket(a) != f.af) {
            return Err(format!("interface {name}: {a} is not an {} address", f.af));
        }
        if let Some(l) = f.local.iter().find(|l| l.class != classify(l.addr.ip())) {
            return Err(format!("interface {name}: {} is not {:?}", l.addr, l.class));
        }
    }
    Ok(())
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

fn put_ip(out: &mut BytesMut, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => out.put_slice(&v4.octets()),
        IpAddr::V6(v6) => out.put_slice(&v6.octets()),
    }
}

fn put_addr(out: &mut BytesMut, a: &SocketAddr) {
    put_ip(out, a.ip());
    out.put_u16(a.port());
}

/// An address of either family, after its family byte.
fn put_tagged_addr(out: &mut BytesMut, a: &SocketAddr) {
    crate::addr::wire::put(out, a);
}

fn emit_family(out: &mut BytesMut, f: &FamilyEntry) {
    out.put_u8(match f.af {
        Af::V4 => 4,
        Af::V6 => 6,
    });
    out.put_u8(f.local.len() as u8);
    for l in &f.local {
        put_addr(out, &l.addr);
    }
    match &f.external {
        Some(a) => {
            out.put_u8(1);
            put_addr(out, a);
        }
        None => out.put_u8(0),
    }
    out.put_u8(f.nat_type.map_or(0, |t| {
        NatType::ALL.iter().position(|x| *x == t).unwrap() as u8 + 1
    }));
    out.put_u8(f.mapping.map_or(0, |m| {
        Mapping::ALL.iter().position(|x| *x == m).unwrap() as u8 + 1
    }));
    out.put_u8(f.filtering.map_or(0, |m| {
        Filtering::ALL.iter().position(|x| *x == m).unwrap() as u8 + 1
    }));
    match f.port_allocation {
        None => out.put_u8(0),
        Some(PortAllocation::Preserving) => out.put_u8(1),
        Some(PortAllocation::Sequential { delta }) => {
            out.put_u8(2);
            out.put_i32(delta);
        }
        Some(PortAllocation::Random) => out.put_u8(3),
    }
    out.put_u8(f.port_mappings.len() as u8);
    for m in &f.port_mappings {
        out.put_u8(if m.protocol == Proto::Udp { 1 } else { 2 });
        out.put_u16(m.internal_port);
        out.put_u16(m.external_port);
        out.put_u64(m.lease_expires_ms);
    }
    match &f.relay {
        Some(r) => {
            out.put_u8(1);
            put_tagged_addr(out, &r.relayed);
            put_tagged_addr(out, &r.server);
        }
        None => out.put_u8(0),
    }
}

/// Reads the binary form; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| {
            Error::Malformed(format!("truncated: {n} bytes wanted at byte {}", self.pos))
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// A count, refused above `max` before anything is allocated for it.
    fn count(&mut self, what: &str, max: usize) -> Result<usize, Error> {
        let n = usize::from(self.u8()?);
        if n > max {
            return Err(bad(format!("{n} {what}, over the limit of {max}")));
        }
        Ok(n)
    }
    fn string(&mut self, what: &str, max: usize) -> Result<String, Error> {
        let n = usize::from(self.u8()?);
        if n == 0 || n > max {
            return Err(bad(format!("{what} of {n} bytes (1 to {max})")));
        }
        let s =
            std::str::from_utf8(self.take(n)?).map_err(|_| bad(format!("{what} is not utf-8")))?;
        Ok(s.to_owned())
    }
    /// An enum code: 0 for none, else `table[code - 1]`.
    fn code<T: Copy>(&mut self, what: &str, table: &[T]) -> Result<Option<T>, Error> {
        match usize::from(self.u8()?) {
            0 => Ok(None),
            c if c <= table.len() => Ok(Some(table[c - 1])),
            c => Err(bad(format!("unknown {what} code {c}"))),
        }
    }
    fn flag(&mut self, what: &str) -> Result<bool, Error> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            f => Err(bad(format!("{what} flag {f}, not 0 or 1"))),
        }
    }
    fn af(&mut self) -> Result<Af, Error> {
        match self.u8()? {
            4 => Ok(Af::V4),
            6 => Ok(Af::V6),
            f => Err(bad(format!("unknown address family {f}"))),
        }
    }
    fn addr(&mut self, af: Af) -> Result<SocketAddr, Error> {
        let ip = match af {
            Af::V4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            Af::V6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
}

fn bad(why: String) -> Error {
    Error::Malformed(why)
}

/// The body: node id and key (not yet checked against each other), and the record with
/// a zero signature.
fn decode_body(r: &mut Reader<'_>) -> Result<(NodeId, PublicKey, PeerRecord), Error> {
    if r.take(MAGIC.len())? != MAGIC {
        return Err(bad("it does not start with the record magic".into()));
    }
    let node_id = NodeId::from_checked_bytes(&r.array()?)?;
    let key = PublicKey::from_bytes(&r.array()?)
        .map_err(|_| bad("the public key is not an ed25519 key".into()))?;
    let (issued_ms, expires_ms) = (r.u64()?, r.u64()?);
    let n = r.count("interfaces", MAX_INTERFACES)?;
    let mut interfaces = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.string("an interface name", MAX_NAME)?;
        let n = r.count("families", 2)?;
        let mut families = Vec::with_capacity(n);
        for _ in 0..n {
            families.push(decode_family(r)?);
        }
        let entry = InterfaceEntry { name, families };
        check_interface(&entry).map_err(bad)?;
        interfaces.push(entry);
    }
    let n = r.count("brokers", MAX_BROKERS)?;
    let mut brokers = Vec::with_capacity(n);
    for _ in 0..n {
        brokers.push(r.string("a broker url", 255)?);
    }
    let topic = r.string("the topic", MAX_TOPIC)?;
    let record = PeerRecord {
        node_id,
        key,
        issued_ms,
        expires_ms,
        interfaces,
        signalling: Signalling { brokers, topic },
        signature: Signature::from_bytes(&[0; SIG_LEN]),
    };
    Ok((node_id, key, record))
}

fn decode_family(r: &mut Reader<'_>) -> Result<FamilyEntry, Error> {
    let af = r.af()?;
    let mut f = FamilyEntry::new(af);
    let n = r.count("local addresses", MAX_FAMILY_ADDRS)?;
    f.local.reserve_exact(n);
    for _ in 0..n {
        f.local.push(LocalAddr::new(r.addr(af)?));
    }
    f.external = if r.flag("external")? {
        Some(r.addr(af)?)
    } else {
        None
    };
    f.nat_type = r.code("nat type", &NatType::ALL)?;
    f.mapping = r.code("mapping", &Mapping::ALL)?;
    f.filtering = r.code("filtering", &Filtering::ALL)?;
    f.port_allocation = match r.u8()? {
        0 => None,
        1 => Some(PortAllocation::Preserving),
        2 => Some(PortAllocation::Sequential {
            delta: i32::from_be_bytes(r.array()?),
        }),
        3 => Some(PortAllocation::Random),
        c => return Err(bad(format!("unknown port allocation code {c}"))),
    };
    let n = r.count("port mappings", MAX_PORT_MAPPINGS)?;
    f.port_mappings.reserve_exact(n);
    for _ in 0..n {
        let protocol = r
            .code("protocol", &[Proto::Udp, Proto::Tcp])?
            .ok_or_else(|| bad("port mapping protocol 0".into()))?;
        f.port_mappings.push(PortMapping {
            protocol,
            internal_port: r.u16()?,
            external_port: r.u16()?,
            lease_expires_ms: r.u64()?,
        });
    }
    if r.flag("relay")? {
        let relayed = {
            let af = r.af()?;
            r.addr(af)?
        };
        let server = {
            let af = r.af()?;
            r.addr(af)?
        };
        f.relay = Some(Relay { relayed, server });
    }
    Ok(f)
}

/// The JSON form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordJson {
    node_id: String,
    public_key: String,
    issued_ms: u64,
    expires_ms: u64,
    interfaces: Vec<InterfaceEntry>,
    signalling: Signalling,
    #[serde(default)]
    signature: Option<String>,
}

/// [`Proto`] as `"udp"` or `"tcp"`.
mod proto_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::Proto;

    pub fn serialize<S: Serializer>(p: &Proto, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(p)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Proto, D::Error> {
        match <std::borrow::Cow<'de, str>>::deserialize(d)?.as_ref() {
            "udp" => Ok(Proto::Udp),
            "tcp" => Ok(Proto::Tcp),
            other => Err(serde::de::Error::unknown_variant(other, &["udp", "tcp"])),
        }
    }
}

#[cfg(test)]
mod tests;
