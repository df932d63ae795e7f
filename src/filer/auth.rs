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
}
