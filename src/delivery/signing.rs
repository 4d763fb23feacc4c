//! Standard Webhooks v1 signing (<https://www.standardwebhooks.com>).
//!
//! Receivers trust a batch because its `webhook-signature` is an
//! HMAC-SHA256 of `"<webhook-id>.<webhook-timestamp>.<body>"` under a secret
//! only they and walhook hold. The id makes a replayed batch recognisable,
//! the timestamp (fresh on every attempt) bounds how long a captured request
//! stays valid. While a secret is rotated, every configured key signs, and
//! the header carries one `v1,<base64>` per key, space-separated, so a
//! receiver holding either key verifies.
//!
//! Secrets are `whsec_` + base64 of at least 24 random bytes: the format the
//! specification's libraries read, so the same string works on both sides
//! ([`SigningKey`], parsed by the configuration).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{Secret, Signing};

/// How far a receiver lets `webhook-timestamp` stray from its clock.
const TOLERANCE_SECONDS: i64 = 5 * 60;
/// The signature scheme this module writes and reads.
const VERSION: &str = "v1";

// A key's parsing (the `whsec_` format) is configuration's: validation at
// load and the signer read a secret the same way.
pub(crate) use crate::config::{SigningError, SigningKey};

impl SigningKey {
    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; the error arm cannot happen.
        let mut mac = match Hmac::<Sha256>::new_from_slice(self.bytes()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// `v1,<base64 HMAC-SHA256("id.timestamp.body")>`.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("{VERSION},{}", STANDARD.encode(tag))
    }

    /// True when `signature` (the base64 part of a `v1,` entry) is this
    /// key's signature of the message; compared in constant time.
    fn verifies(&self, id: &str, timestamp: i64, body: &[u8], signature: &str) -> bool {
        match STANDARD.decode(signature.trim()) {
            Ok(tag) => self.mac(id, timestamp, body).verify_slice(&tag).is_ok(),
            Err(_) => false,
        }
    }
}

/// Signs with every configured key (rotation).
#[derive(Debug, Clone)]
pub(crate) struct Signer {
    keys: Vec<SigningKey>,
}

impl Signer {
    /// A signer over `keys`; the first one also signs body tokens.
    pub(crate) fn new(keys: Vec<SigningKey>) -> Result<Signer, SigningError> {
        if keys.is_empty() {
            return Err(SigningError::NoKeys);
        }
        Ok(Signer { keys })
    }

    /// Parses every secret of an endpoint's `signing` section.
    pub(crate) fn from_config(signing: &Signing) -> Result<Signer, SigningError> {
        Signer::from_secrets(&signing.secret)
    }

    /// Parses `secrets` (each `whsec_…`).
    fn from_secrets(secrets: &[Secret]) -> Result<Signer, SigningError> {
        let keys = secrets
            .iter()
            .map(|s| SigningKey::parse(s.expose()))
            .collect::<Result<Vec<_>, _>>()?;
        Signer::new(keys)
    }

    /// The `webhook-signature` value: one `v1,…` per key, space-separated.
    pub(crate) fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        self.keys
            .iter()
            .map(|key| key.sign(id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The first key: the one body tokens are signed with.
    pub(crate) fn primary(&self) -> &SigningKey {
        // `new` refuses an empty list.
        &self.keys[0]
    }
}

/// Why a received request does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A `webhook-*` header is absent or not text.
    #[error("missing or unreadable {0} header")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not an integer.
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    /// The timestamp is more than five minutes from now.
    #[error("webhook-timestamp is {0} s away from now (more than {TOLERANCE_SECONDS} s): a replay or a wrong clock")]
    StaleTimestamp(i64),
    /// No `v1` signature matches any key.
    #[error("no signature matches (wrong secret or changed body)")]
    BadSignature,
}

/// Checks Standard Webhooks signatures with one or more keys (the receiver's
/// side, used by `walhook receive`).
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Vec<SigningKey>,
}

impl Verifier {
    /// A verifier accepting a signature by any of `keys`.
    pub fn new(keys: Vec<SigningKey>) -> Result<Verifier, SigningError> {
        if keys.is_empty() {
            return Err(SigningError::NoKeys);
        }
        Ok(Verifier { keys })
    }

    /// Verifies the three header values against `body` at unix time `now`.
    fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let timestamp: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::BadTimestamp)?;
        let skew = now.saturating_sub(timestamp);
        if skew.saturating_abs() > TOLERANCE_SECONDS {
            return Err(VerifyError::StaleTimestamp(skew));
        }
        let matched = signatures
            .split(' ')
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == VERSION)
            .any(|(_, sig)| {
                self.keys
                    .iter()
                    .any(|key| key.verifies(id, timestamp, body, sig))
            });
        if matched {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    /// Verifies an HTTP request's `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature` headers.
    pub fn verify_headers(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let get = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(VerifyError::MissingHeader(name))
        };
        self.verify(
            get("webhook-id")?,
            get("webhook-timestamp")?,
            get("webhook-signature")?,
            body,
            now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's published example (standard-webhooks spec and
    /// its reference libraries' tests).
    #[test]
    fn specification_test_vector() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    /// The vector in the `standardwebhooks` Rust crate's own tests.
    #[test]
    fn reference_library_test_vector() {
        let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            key.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn rotation_signs_with_every_key_and_either_verifies() {
        let a = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let signer = Signer::new(vec![a.clone(), b.clone()]).unwrap();
        let header = signer.signature("msg_1", 1000, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [a.sign("msg_1", 1000, b"{}"), b.sign("msg_1", 1000, b"{}")]
        );
        for key in [a, b] {
            let verifier = Verifier::new(vec![key]).unwrap();
            assert_eq!(
                verifier.verify("msg_1", "1000", &header, b"{}", 1010),
                Ok(())
            );
            assert_eq!(
                verifier.verify("msg_1", "1000", &header, b"{ }", 1010),
                Err(VerifyError::BadSignature)
            );
            assert_eq!(
                verifier.verify("msg_1", "1000", &header, b"{}", 1000 + 301),
                Err(VerifyError::StaleTimestamp(301))
            );
            assert_eq!(
                verifier.verify("msg_1", "1000", &header, b"{}", 1000 - 301),
                Err(VerifyError::StaleTimestamp(-301))
            );
        }
    }
}
