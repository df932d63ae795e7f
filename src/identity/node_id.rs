//! The node id: 16 bytes of SHA-256 over the public key, a 2-byte checksum, base32.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::{Error, PublicKey};

/// RFC 4648 base32, lowercase.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The length of a node id's text: 18 bytes in base32 without padding.
const TEXT_LEN: usize = 29;

/// A node's id: the first 16 bytes of SHA-256 over its 32-byte ed25519 public key.
///
/// Its text is those 16 bytes and a 2-byte checksum (the first 2 bytes of SHA-256 over
/// the 16), in lowercase RFC 4648 base32 without padding: 29 characters. Parsing
/// ([`FromStr`]) takes either case and refuses a wrong length, a character outside the
/// alphabet and a checksum that does not match, each with its own [`Error`]. Serde
/// writes and reads the text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 16]);

impl NodeId {
    /// The id of a public key.
    pub fn from_key(key: &PublicKey) -> NodeId {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = [0; 16];
        id.copy_from_slice(&digest[..16]);
        NodeId(id)
    }

    /// The 16 id bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The 16 id bytes and their 2-byte checksum, as the text encodes them.
    pub fn to_checked_bytes(&self) -> [u8; 18] {
        let mut out = [0; 18];
        out[..16].copy_from_slice(&self.0);
        out[16..].copy_from_slice(&checksum(&self.0));
        out
    }

    /// The id from its 16 bytes and checksum.
    ///
    /// # Errors
    ///
    /// [`Error::NodeIdChecksum`] when the checksum does not match.
    pub fn from_checked_bytes(bytes: &[u8; 18]) -> Result<NodeId, Error> {
        let mut id = [0; 16];
        id.copy_from_slice(&bytes[..16]);
        if bytes[16..] != checksum(&id) {
            return Err(Error::NodeIdChecksum);
        }
        Ok(NodeId(id))
    }

    /// The node's signalling topic: `p2pipe/1/<node id>`.
    pub fn topic(&self) -> String {
        format!("p2pipe/1/{self}")
    }
}

fn checksum(id: &[u8; 16]) -> [u8; 2] {
    let d = Sha256::digest(id);
    [d[0], d[1]]
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_checked_bytes();
        let mut text = [0u8; TEXT_LEN];
        let (mut acc, mut bits, mut n) = (0u32, 0u32, 0);
        for b in bytes {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                text[n] = ALPHABET[((acc >> bits) & 31) as usize];
                n += 1;
            }
        }
        // 144 bits: the last character holds one bit and four zero bits.
        text[n] = ALPHABET[((acc << (5 - bits)) & 31) as usize];
        f.write_str(std::str::from_utf8(&text).expect("base32 is ascii"))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<NodeId, Error> {
        let n = s.chars().count();
        if n != TEXT_LEN {
            return Err(Error::NodeIdLength(n));
        }
        let mut bytes = [0u8; 18];
        let (mut acc, mut bits, mut out) = (0u32, 0u32, 0);
        for (at, ch) in s.chars().enumerate() {
            let lower = ch.to_ascii_lowercase() as u32;
            let value = ALPHABET
                .iter()
                .position(|&a| u32::from(a) == lower)
                .ok_or(Error::NodeIdChar { ch, at })? as u32;
            acc = (acc << 5) | value;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                bytes[out] = (acc >> bits) as u8;
                out += 1;
            }
            acc &= (1 << bits) - 1;
        }
        // The one bit left over is padding: zero in the only text that encodes the id.
        if acc != 0 {
            let last = s.chars().last().unwrap_or(' ');
            return Err(Error::NodeIdChar {
                ch: last,
                at: TEXT_LEN - 1,
            });
        }
        NodeId::from_checked_bytes(&bytes)
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn id(seed: u8) -> NodeId {
        NodeId::from_key(&SigningKey::from_bytes(&[seed; 32]).verifying_key())
    }

    #[test]
    fn the_text_is_29_lowercase_base32_characters_that_parse_back() {
        for seed in 0..=255 {
            let id = id(seed);
            let text = id.to_string();
            assert_eq!(text.len(), 29);
            assert!(text.bytes().all(|b| ALPHABET.contains(&b)), "{text}");
            assert_eq!(text.parse::<NodeId>().unwrap(), id);
            assert_eq!(text.to_uppercase().parse::<NodeId>().unwrap(), id);
        }
    }

    #[test]
    fn the_id_is_sha256_of_the_key_and_a_checksum_in_base32() {
        let key = SigningKey::from_bytes(&[1; 32]).verifying_key();
        let digest = Sha256::digest(key.as_bytes());
        let id = NodeId::from_key(&key);
        assert_eq!(id.as_bytes()[..], digest[..16]);
        let sum = Sha256::digest(&digest[..16]);
        assert_eq!(id.to_checked_bytes()[16..], sum[..2]);
        // The first character is the top five bits of the first byte.
        let first = ALPHABET[usize::from(digest[0] >> 3)] as char;
        assert!(id.to_string().starts_with(first));
    }

    #[test]
    fn a_mistyped_id_is_refused_with_its_own_error() {
        let text = id(3).to_string();
        // One character changed anywhere: the checksum (or the padding bit) catches it.
        for at in 0..text.len() {
            let mut typo = text.clone().into_bytes();
            typo[at] = if typo[at] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(typo).unwrap();
            let e = typo.parse::<NodeId>().unwrap_err();
            assert!(
                matches!(e, Error::NodeIdChecksum | Error::NodeIdChar { at: 28, .. }),
                "{typo}: {e}"
            );
        }
        let e = text[..28].parse::<NodeId>().unwrap_err();
        assert_eq!(e.to_string(), "node id has 28 characters, not 29");
        let e = format!("{}1", &text[..28]).parse::<NodeId>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "node id has a bad character '1' at position 28"
        );
        assert_eq!(
            Error::NodeIdChecksum.to_string(),
            "node id checksum does not match: mistyped?"
        );
    }

    #[test]
    fn serde_writes_and_reads_the_text() {
        let id = id(4);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<NodeId>("\"aaaa\"").is_err());
    }

    #[test]
    fn the_topic_names_the_id() {
        let id = id(5);
        assert_eq!(id.topic(), format!("p2pipe/1/{id}"));
    }
}
