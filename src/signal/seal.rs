//! Sealed envelopes: a message to one recipient that only that recipient can open and
//! that proves who sent it.
//!
//! Sans-IO: [`seal`] takes the keys, the payload, the time (unix ms) and the random bytes
//! it needs, and returns the envelope; opening belongs to [`Signalling`], which checks
//! size, address, age and replay before it spends a Diffie-Hellman on a message.
//!
//! The layout (all integers big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | magic and version, [`MAGIC`] |
//! | 1 | 1 | kind: 1 one-way, 2 request, 3 response |
//! | 2 | 32 | sender's ed25519 public key |
//! | 34 | 16 | recipient's fingerprint ([`fingerprint`]) |
//! | 50 | 8 | timestamp, unix ms |
//! | 58 | 16 | message id (random) |
//! | 74 | 8 | request id (0 for a one-way message) |
//! | 82 | 32 | sender's ephemeral X25519 public key |
//! | 114 | 24 | XChaCha20-Poly1305 nonce (random) |
//! | 138 | n | ciphertext of the payload |
//! | 138 + n | 16 | Poly1305 tag |
//!
//! The first [`HEADER_LEN`] bytes are the AEAD's associated data: in clear, authenticated.
//! The key is HKDF-SHA256 over two X25519 outputs, static-static (sender, recipient: it
//! proves the sender) and ephemeral-static (a fresh key per message, recipient: a sender
//! key that leaks later does not open what it sent), with [`KDF_LABEL`], both ed25519
//! public keys and the ephemeral key as `info`. The X25519 keys are the ed25519 keys'
//! Montgomery forms. `docs/p2p.md` ("Sealed messages") has the threat model.
//!
//! [`Signalling`]: super::Signalling

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use ed25519_dalek::{SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};

use super::Error;
use crate::identity::{x25519_public, x25519_secret};

/// The most bytes a sealed message has on the wire.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// The first byte of every envelope: a magic nibble (`0xB`) and the version (1).
pub const MAGIC: u8 = 0xB1;

/// The bytes of the cleartext header, which the AEAD authenticates.
pub const HEADER_LEN: usize = 138;

/// The bytes of the Poly1305 tag after the ciphertext.
pub const TAG_LEN: usize = 16;

/// The largest payload that fits in [`MAX_MESSAGE`].
pub const MAX_PAYLOAD: usize = MAX_MESSAGE - HEADER_LEN - TAG_LEN;

/// The random bytes one envelope needs: the ephemeral X25519 secret (32), the nonce (24)
/// and the message id (16), in that order.
pub const RANDOM_LEN: usize = 32 + 24 + 16;

/// The version label at the head of the key derivation's `info`.
pub const KDF_LABEL: &[u8] = b"p2pipe seal v1";

/// The first 16 bytes of SHA-256 over an ed25519 public key: what an envelope names its
/// recipient by (the same digest a node id is made of).
pub type Fingerprint = [u8; 16];

/// The fingerprint of `key`: the bytes of its [`NodeId`](crate::identity::NodeId).
pub fn fingerprint(key: &VerifyingKey) -> Fingerprint {
    *crate::identity::NodeId::from_key(key).as_bytes()
}

/// Lowercase hex of a fingerprint, for errors and logs.
pub(crate) fn hex(fp: &Fingerprint) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request's id, chosen by the requester and echoed by the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request {}", self.0)
    }
}

/// What an envelope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A message that expects no answer.
    OneWay,
    /// A request, answered by a [`Kind::Response`] with the same id.
    Request(RequestId),
    /// The answer to the request with this id.
    Response(RequestId),
}

impl Kind {
    fn code(self) -> (u8, u64) {
        match self {
            Kind::OneWay => (1, 0),
            Kind::Request(id) => (2, id.0),
            Kind::Response(id) => (3, id.0),
        }
    }

    fn from_code(code: u8, id: u64) -> Result<Kind, Error> {
        match (code, id) {
            (1, 0) => Ok(Kind::OneWay),
            (1, _) => Err(Error::Malformed("one-way message with a request id")),
            (2, id) => Ok(Kind::Request(RequestId(id))),
            (3, id) => Ok(Kind::Response(RequestId(id))),
            _ => Err(Error::Malformed("unknown message kind")),
        }
    }
}

/// The cleartext header of an envelope: enough to route it and to check it before the
/// costly part. Nothing in it is trusted until the envelope has been opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// One-way, request or response.
    pub kind: Kind,
    /// The sender's ed25519 public key, as the envelope claims it.
    pub sender: VerifyingKey,
    /// The recipient's fingerprint.
    pub recipient: Fingerprint,
    /// When it was sealed, unix ms.
    pub timestamp_ms: u64,
    /// A random id, by which copies and replays are recognised.
    pub message_id: [u8; 16],
    /// The sender's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// The AEAD nonce.
    pub nonce: [u8; 24],
}

impl Header {
    /// Parses the header of the whole envelope `bytes`, after checking that the envelope
    /// is no larger than [`MAX_MESSAGE`] and long enough for a header and a tag.
    pub fn parse(bytes: &[u8]) -> Result<Header, Error> {
        if bytes.len() > MAX_MESSAGE {
            return Err(Error::TooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE,
            });
        }
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(Error::Truncated {
                len: bytes.len(),
                min: HEADER_LEN + TAG_LEN,
            });
        }
        if bytes[0] != MAGIC {
            return Err(Error::Malformed("bad magic or version"));
        }
        let sender = VerifyingKey::from_bytes(&array(&bytes[2..34]))
            .map_err(|_| Error::Malformed("sender key is not a curve point"))?;
        let request_id = u64::from_be_bytes(array(&bytes[74..82]));
        Ok(Header {
            kind: Kind::from_code(bytes[1], request_id)?,
            sender,
            recipient: array(&bytes[34..50]),
            timestamp_ms: u64::from_be_bytes(array(&bytes[50..58])),
            message_id: array(&bytes[58..74]),
            ephemeral: array(&bytes[82..114]),
            nonce: array(&bytes[114..138]),
        })
    }

    /// Appends the [`HEADER_LEN`] bytes of the header.
    pub fn emit(&self, out: &mut BytesMut) {
        let (kind, request_id) = self.kind.code();
        out.reserve(HEADER_LEN);
        out.put_u8(MAGIC);
        out.put_u8(kind);
        out.put_slice(self.sender.as_bytes());
        out.put_slice(&self.recipient);
        out.put_u64(self.timestamp_ms);
        out.put_slice(&self.message_id);
        out.put_u64(request_id);
        out.put_slice(&self.ephemeral);
        out.put_slice(&self.nonce);
    }

    /// [`HEADER_LEN`].
    pub fn emit_len(&self) -> usize {
        HEADER_LEN
    }
}

/// Copies a slice of known length into an array.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    out
}

/// Seals `payload` from `sender` to `recipient` at `now_ms`, with `random` from a secure
/// source (see [`RANDOM_LEN`]; never reuse it).
///
/// Refuses a payload over [`MAX_PAYLOAD`] and a recipient key of low order (with which
/// no secret can be shared).
pub fn seal(
    sender: &SigningKey,
    recipient: &VerifyingKey,
    kind: Kind,
    payload: &[u8],
    now_ms: u64,
    random: [u8; RANDOM_LEN],
) -> Result<Bytes, Error> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Error::PayloadTooLarge {
            len: payload.len(),
            max: MAX_PAYLOAD,
        });
    }
    let ephemeral = StaticSecret::from(array::<32>(&random[..32]));
    let their = x25519_public(recipient);
    let header = Header {
        kind,
        sender: sender.verifying_key(),
        recipient: fingerprint(recipient),
        timestamp_ms: now_ms,
        message_id: array(&random[56..72]),
        ephemeral: PublicKey::from(&ephemeral).to_bytes(),
        nonce: array(&random[32..56]),
    };
    let cipher = Keys {
        static_static: x25519_secret(sender).diffie_hellman(&their),
        ephemeral_static: ephemeral.diffie_hellman(&their),
    }
    .cipher(&header, recipient)
    .ok_or_else(|| Error::LowOrderKey {
        fingerprint: hex(&header.recipient),
    })?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
    header.emit(&mut out);
    out.put_slice(payload);
    let (ad, body) = out.split_at_mut(HEADER_LEN);
    let tag = cipher
        .encrypt_inout_detached(&XNonce::from(header.nonce), ad, body.into())
        .map_err(|_| Error::PayloadTooLarge {
            len: payload.len(),
            max: MAX_PAYLOAD,
        })?;
    out.put_slice(&tag);
    Ok(out.freeze())
}

/// Opens `envelope`, whose parsed header is `header`, with the recipient's X25519
/// secret `mine` (of the ed25519 key `me`). `None` when it does not authenticate, or
/// when a key in it is of low order.
pub(crate) fn open(
    mine: &StaticSecret,
    me: &VerifyingKey,
    header: &Header,
    envelope: &[u8],
) -> Option<Bytes> {
    let sender = x25519_public(&header.sender);
    let cipher = Keys {
        static_static: mine.diffie_hellman(&sender),
        ephemeral_static: mine.diffie_hellman(&PublicKey::from(header.ephemeral)),
    }
    .cipher(header, me)?;
    let (sealed, tag) = envelope.split_at(envelope.len().checked_sub(TAG_LEN)?);
    let (ad, ciphertext) = sealed.split_at_checked(HEADER_LEN)?;
    let tag = Tag::try_from(tag).ok()?;
    let mut body = BytesMut::from(ciphertext);
    cipher
        .decrypt_inout_detached(
            &XNonce::from(header.nonce),
            ad,
            (&mut body[..]).into(),
            &tag,
        )
        .ok()?;
    Some(body.freeze())
}

/// The two Diffie-Hellman outputs of one envelope.
struct Keys {
    static_static: SharedSecret,
    ephemeral_static: SharedSecret,
}

impl Keys {
    /// The envelope's AEAD, or `None` if either output is all zero (a low-order key).
    fn cipher(&self, header: &Header, recipient: &VerifyingKey) -> Option<XChaCha20Poly1305> {
        if !self.static_static.was_contributory() || !self.ephemeral_static.was_contributory() {
            return None;
        }
        let mut ikm = [0u8; 64];
        ikm[..32].copy_from_slice(self.static_static.as_bytes());
        ikm[32..].copy_from_slice(self.ephemeral_static.as_bytes());
        let info: [&[u8]; 4] = [
            KDF_LABEL,
            header.sender.as_bytes(),
            recipient.as_bytes(),
            &header.ephemeral,
        ];
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(None, &ikm)
            .expand_multi_info(&info, &mut key)
            .ok()?;
        Some(XChaCha20Poly1305::new(&Key::from(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn alice() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    fn bob() -> VerifyingKey {
        SigningKey::from_bytes(&[2; 32]).verifying_key()
    }

    #[test]
    fn a_header_parses_back_to_what_was_sealed_and_reemits_the_same_bytes() {
        let kind = Kind::Request(RequestId(0x0102_0304_0506_0708));
        let sealed = seal(&alice(), &bob(), kind, b"hi", NOW, [5; RANDOM_LEN]).unwrap();
        assert_eq!(sealed.len(), HEADER_LEN + 2 + TAG_LEN);
        let header = Header::parse(&sealed).unwrap();
        assert_eq!(header.kind, kind);
        assert_eq!(header.sender, alice().verifying_key());
        assert_eq!(header.recipient, fingerprint(&bob()));
        assert_eq!(header.timestamp_ms, NOW);
        assert_eq!(header.message_id, [5; 16]);
        assert_eq!(header.nonce, [5; 24]);
        let mut again = BytesMut::new();
        header.emit(&mut again);
        assert_eq!(again.len(), header.emit_len());
        assert_eq!(&again[..], &sealed[..HEADER_LEN]);
    }

    #[test]
    fn the_payload_is_not_in_the_envelope_in_clear() {
        let payload = b"a payload that must not show";
        let sealed = seal(
            &alice(),
            &bob(),
            Kind::OneWay,
            payload,
            NOW,
            [5; RANDOM_LEN],
        )
        .unwrap();
        assert!(!sealed.windows(8).any(|w| w == &payload[..8]));
    }

    #[test]
    fn the_largest_payload_fills_the_bound_and_one_byte_more_is_refused() {
        let max = vec![0; MAX_PAYLOAD];
        let sealed = seal(&alice(), &bob(), Kind::OneWay, &max, NOW, [5; RANDOM_LEN]).unwrap();
        assert_eq!(sealed.len(), MAX_MESSAGE);
        let over = vec![0; MAX_PAYLOAD + 1];
        let err = seal(&alice(), &bob(), Kind::OneWay, &over, NOW, [5; RANDOM_LEN]).unwrap_err();
        assert_eq!(
            err,
            Error::PayloadTooLarge {
                len: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD
            }
        );
    }

    #[test]
    fn sealing_to_a_low_order_key_is_refused() {
        // The identity point: a valid encoding, of order 1.
        let mut identity = [0; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        let err = seal(&alice(), &weak, Kind::OneWay, b"x", NOW, [5; RANDOM_LEN]).unwrap_err();
        assert!(matches!(err, Error::LowOrderKey { .. }), "{err}");
    }

    #[test]
    fn parsing_refuses_oversized_truncated_and_unknown_kinds_each_with_its_error() {
        let sealed = seal(&alice(), &bob(), Kind::OneWay, b"", NOW, [5; RANDOM_LEN]).unwrap();
        let big = vec![0; MAX_MESSAGE + 1];
        assert!(matches!(Header::parse(&big), Err(Error::TooLarge { .. })));
        assert!(matches!(
            Header::parse(&sealed[..sealed.len() - 1]),
            Err(Error::Truncated { .. })
        ));
        let mut bad = sealed.to_vec();
        bad[1] = 9;
        assert_eq!(
            Header::parse(&bad),
            Err(Error::Malformed("unknown message kind"))
        );
        bad[1] = 1;
        bad[81] = 1;
        assert_eq!(
            Header::parse(&bad),
            Err(Error::Malformed("one-way message with a request id"))
        );
    }
}
