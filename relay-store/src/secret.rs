//! Connector credential secrets: generation, format and the keyed hash kept at rest.
//!
//! A secret reads `rsk_<credential id>_<43 base64url chars>`: 256 random bits, plus the id so the
//! relay finds the one credential to compare against without scanning. At rest only
//! HMAC-SHA-256(pepper, secret) is stored: a database dump without the relay's pepper file is
//! useless for impersonation, and verification is a constant-time compare of 32 bytes.

use aws_lc_rs::{constant_time, hmac, rand};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const PREFIX: &str = "rsk_";

/// Computes and checks credential hashes with the relay's pepper.
#[derive(Clone)]
pub struct SecretHasher {
    key: hmac::Key,
}

impl SecretHasher {
    /// A hasher keyed by `pepper` (at least 32 random bytes, kept outside the database).
    pub fn new(pepper: &[u8]) -> SecretHasher {
        SecretHasher {
            key: hmac::Key::new(hmac::HMAC_SHA256, pepper),
        }
    }

    /// The value stored for `secret`.
    pub fn hash(&self, secret: &str) -> Vec<u8> {
        hmac::sign(&self.key, secret.as_bytes()).as_ref().to_vec()
    }

    /// Whether `secret` matches `stored`, in constant time.
    pub fn verify(&self, secret: &str, stored: &[u8]) -> bool {
        let computed = self.hash(secret);
        constant_time::verify_slices_are_equal(&computed, stored).is_ok()
    }
}

impl std::fmt::Debug for SecretHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHasher(***)")
    }
}

/// The prefix of admin API tokens (same shape as credential secrets).
pub(crate) const TOKEN_PREFIX: &str = "rat_";

/// Makes a new secret for credential `id`.
pub(crate) fn generate(id: &str) -> String {
    generate_with(PREFIX, id)
}

/// Makes `{prefix}{id}_{256 random bits, base64url}`.
pub(crate) fn generate_with(prefix: &str, id: &str) -> String {
    let mut bytes = [0u8; 32];
    // The system RNG failing is not recoverable: we must never hand out a weak secret.
    rand::fill(&mut bytes).expect("system random number generator failed");
    format!("{prefix}{id}_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The credential id inside a well-formed secret; `None` for anything else.
pub fn parse_secret(secret: &str) -> Option<&str> {
    parse_with(PREFIX, secret)
}

/// The id inside a well-formed `{prefix}{id}_{random}` value.
pub(crate) fn parse_with<'a>(prefix: &str, secret: &'a str) -> Option<&'a str> {
    let rest = secret.strip_prefix(prefix)?;
    let (id, random) = rest.split_once('_')?;
    let id_ok = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let random_ok = random.len() == 43
        && random
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && random_ok).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_parse_and_verify() {
        let id = "0123456789abcdef0123456789abcdef";
        let secret = generate(id);
        assert_eq!(parse_secret(&secret), Some(id));
        let h = SecretHasher::new(b"pepper-pepper-pepper-pepper-pepp");
        let stored = h.hash(&secret);
        assert!(h.verify(&secret, &stored));
        assert!(!h.verify(&generate(id), &stored));
        assert!(!SecretHasher::new(b"other").verify(&secret, &stored));
        assert_ne!(generate(id), generate(id));
    }

    #[test]
    fn malformed_secrets_do_not_parse() {
        for bad in [
            "",
            "rsk_",
            "rsk_abc_def",
            "xyz_0123456789abcdef0123456789abcdef_aaaa",
        ] {
            assert_eq!(parse_secret(bad), None, "{bad}");
        }
    }
}
