//! The trusted session, sans-IO: challenge and response over the node's secret.
//!
//! A caller asks for a challenge (`CHAL`) and gets a fresh random nonce. It then sends its
//! trusted request (`TRST <nonce> <mac> <op> <args>`) on a new connection, where `mac` is
//! HMAC-SHA256 over `nonce + " " + op-text` keyed with the secret. The node checks the MAC
//! in constant time and spends the nonce: each nonce serves once, for a short while. The
//! secret itself never crosses the wire.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac as _};
use sha2::Sha256;

use super::msg::{mac_input, Mac, Nonce};

type HmacSha256 = hmac::Hmac<Sha256>;

/// How long a challenge stays valid.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(30);

/// The most challenges outstanding at once; the oldest go first.
pub const MAX_CHALLENGES: usize = 1024;

/// Why a trusted request was refused. The node answers every case with the same `ERRO`,
/// so that a caller learns nothing about which part was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The node has no secret: nothing is trusted.
    #[error("this node has no secret; trusted operations are off")]
    NoSecret,
    /// The nonce was never issued, was already used, or expired.
    #[error("unknown or expired challenge")]
    BadNonce,
    /// The MAC does not match.
    #[error("the proof of the secret does not match")]
    BadMac,
}

fn hmac(secret: &[u8], nonce: &Nonce, op_text: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("hmac takes any key length");
    m.update(&mac_input(nonce, op_text));
    m
}

/// The MAC a caller sends: HMAC-SHA256 of [`mac_input`] under `secret`.
pub fn mac(secret: &[u8], nonce: &Nonce, op_text: &str) -> Mac {
    Mac(hmac(secret, nonce, op_text).finalize().into_bytes().into())
}

/// The node's side: issued challenges, and checking proofs.
#[derive(Debug)]
pub struct Challenges {
    secret: Option<Vec<u8>>,
    issued: HashMap<Nonce, Instant>,
}

impl Challenges {
    /// A store for a node with `secret` (none: every trusted request is refused).
    pub fn new(secret: Option<Vec<u8>>) -> Self {
        Challenges {
            secret: secret.filter(|s| !s.is_empty()),
            issued: HashMap::new(),
        }
    }

    #[cfg(test)]
    /// Whether trusted operations are possible at all.
    pub fn enabled(&self) -> bool {
        self.secret.is_some()
    }

    /// Issues a challenge from 16 random bytes (the caller brings the randomness) at
    /// `now`.
    pub fn issue(&mut self, random: [u8; 16], now: Instant) -> Nonce {
        self.issued
            .retain(|_, at| now.saturating_duration_since(*at) < CHALLENGE_TTL);
        if self.issued.len() >= MAX_CHALLENGES {
            if let Some(oldest) = self
                .issued
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| *k)
            {
                self.issued.remove(&oldest);
            }
        }
        let nonce = Nonce(random);
        self.issued.insert(nonce, now);
        nonce
    }

    /// Checks a trusted request's proof at `now`, spending the nonce whatever the
    /// outcome (a wrong guess burns it).
    ///
    /// # Errors
    ///
    /// No secret, an unknown or expired nonce, or a wrong MAC.
    pub fn verify(
        &mut self,
        nonce: &Nonce,
        mac: &Mac,
        op_text: &str,
        now: Instant,
    ) -> Result<(), AuthError> {
        let secret = self.secret.as_ref().ok_or(AuthError::NoSecret)?;
        let issued = self.issued.remove(nonce).ok_or(AuthError::BadNonce)?;
        if now.saturating_duration_since(issued) >= CHALLENGE_TTL {
            return Err(AuthError::BadNonce);
        }
        // Constant-time comparison.
        hmac(secret, nonce, op_text)
            .verify_slice(&mac.0)
            .map_err(|_| AuthError::BadMac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"correct horse battery staple";

    #[test]
    fn the_right_proof_passes_once() {
        let mut c = Challenges::new(Some(SECRET.to_vec()));
        let t0 = Instant::now();
        let nonce = c.issue([7; 16], t0);
        assert_eq!(nonce.to_string().len(), 32);
        let op = "ADDP p 127.0.0.1 4000";
        let mac = mac(SECRET, &nonce, op);
        assert!(
            !mac.to_string().contains("correct"),
            "the secret is not in the proof"
        );
        assert_eq!(c.verify(&nonce, &mac, op, t0), Ok(()));
        // Spent.
        assert_eq!(c.verify(&nonce, &mac, op, t0), Err(AuthError::BadNonce));
    }

    #[test]
    fn wrong_secret_op_nonce_or_age_fails() {
        let mut c = Challenges::new(Some(SECRET.to_vec()));
        let t0 = Instant::now();
        let op = "FIND key";
        let n = c.issue([1; 16], t0);
        assert_eq!(
            c.verify(&n, &mac(b"wrong", &n, op), op, t0),
            Err(AuthError::BadMac)
        );
        // The wrong guess burnt the nonce.
        assert_eq!(
            c.verify(&n, &mac(SECRET, &n, op), op, t0),
            Err(AuthError::BadNonce)
        );
        let n = c.issue([2; 16], t0);
        assert_eq!(
            c.verify(&n, &mac(SECRET, &n, "FIND other"), op, t0),
            Err(AuthError::BadMac)
        );
        let n = c.issue([3; 16], t0);
        assert_eq!(
            c.verify(&n, &mac(SECRET, &n, op), op, t0 + CHALLENGE_TTL),
            Err(AuthError::BadNonce)
        );
        let n = c.issue([4; 16], t0);
        // A malformed MAC never gets here (the request does not parse), and a wrong
        // one fails.
        assert_eq!(Mac::parse("not hex"), None);
        assert_eq!(c.verify(&n, &Mac([0; 32]), op, t0), Err(AuthError::BadMac));
        assert_eq!(
            c.verify(&Nonce([0; 16]), &mac(SECRET, &n, op), op, t0),
            Err(AuthError::BadNonce)
        );
    }

    #[test]
    fn no_secret_no_trust_and_the_store_is_bounded() {
        let mut c = Challenges::new(None);
        assert!(!c.enabled());
        let t0 = Instant::now();
        let n = c.issue([5; 16], t0);
        assert_eq!(
            c.verify(&n, &mac(b"", &n, "x"), "x", t0),
            Err(AuthError::NoSecret)
        );
        let mut c = Challenges::new(Some(SECRET.to_vec()));
        for i in 0..(MAX_CHALLENGES as u32 + 10) {
            let mut r = [0u8; 16];
            r[..4].copy_from_slice(&i.to_be_bytes());
            c.issue(r, t0);
        }
        assert!(c.issued.len() <= MAX_CHALLENGES);
    }

    /// The trusted session's MAC against values computed by Python's `hmac` module (the
    /// fixture of tests/btfiler/test_btfiler_node.py), not by the code under test:
    /// HMAC-SHA256 keyed with the node's secret over `<nonce> <op-text>`, in lower-case hex,
    /// as docs/protocol.md states. The node accepts a request carrying it.
    #[test]
    fn the_trusted_mac_matches_values_computed_by_python_hmac() {
        use crate::filer::frame::{Frame, Kind};
        use crate::filer::msg::{Mac, Request, TrustedOp};
        use crate::filer::PeerId;

        const SECRET: &[u8] = b"p2pipe known-answer secret";
        let nonce = Nonce(std::array::from_fn(|i| i as u8));
        assert_eq!(nonce.to_string(), "000102030405060708090a0b0c0d0e0f");
        let add = TrustedOp::AddPeer {
            pid: PeerId::parse("127.0.0.1:7").unwrap(),
            host: "127.0.0.1".into(),
            port: 7,
        };
        let find = TrustedOp::Find { key: "song".into() };
        assert_eq!(add.to_string(), "ADDP 127.0.0.1:7 127.0.0.1 7");
        assert_eq!(find.to_string(), "FIND song");
        let fixture = [
            (
                add.to_string(),
                "8996b4c7921d054a0452e66b32b9953aa04556bef203dc2b2ebfee96c993ddec",
            ),
            (
                find.to_string(),
                "5c4d06cc16d886e36d7c7087e9ec1246aabb17d74e1601cf1e6555e1c94ead3d",
            ),
            (
                "FIND ünïcode".to_string(),
                "c6c24e98b7ce39d9a703f659ee5268cc70e9119f7d908f382bd4e763e97922f7",
            ),
        ];
        for (op_text, want) in &fixture {
            assert_eq!(mac(SECRET, &nonce, op_text).to_string(), *want, "{op_text}");
            let mut node = Challenges::new(Some(SECRET.to_vec()));
            let now = std::time::Instant::now();
            assert_eq!(node.issue(nonce.0, now), nonce);
            let proof = Mac::parse(want).unwrap();
            assert_eq!(
                node.verify(&nonce, &proof, op_text, now),
                Ok(()),
                "{op_text}"
            );
        }
        // On the wire: `TRST <nonce> <mac> <op-text>`, read back to the same parts.
        let (op_text, want) = &fixture[0];
        let payload = format!("{nonce} {want} {op_text}");
        let req =
            Request::parse(&Frame::new(Kind::TRST, payload.clone().into_bytes()).unwrap()).unwrap();
        assert_eq!(
            req,
            Request::Trst {
                nonce,
                mac: Mac::parse(want).unwrap(),
                op: add,
            }
        );
        assert_eq!(req.to_frame().payload(), payload.as_bytes());
    }
}
