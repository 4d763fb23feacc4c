//! Signing secrets as configuration values: parsed here, so validation at
//! load, the signer and `walhook receive` read a secret the same way.
//! Standard Webhooks secrets are `whsec_` + base64 of at least 24 bytes (the
//! key is the decoded bytes); "hmac" secrets are any text, and the key is
//! its bytes as written (what GitHub, Shopify, Stripe and elastic.io
//! receivers key their HMAC with). Signing and verifying live in
//! `delivery::signing`.
//!
//! Key bytes live in a `secrecy` box and never reach `Debug` or an error.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use secrecy::{ExposeSecret, SecretSlice};

use super::endpoint::SigningFormat;

/// The prefix of a Standard Webhooks secret.
const SECRET_PREFIX: &str = "whsec_";
/// The fewest key bytes accepted (the specification asks for 24 to 64).
const MIN_KEY_BYTES: usize = 24;

/// Why a signing secret cannot be used. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// Empty text (often an unset environment variable).
    #[error("empty (is the environment variable set?)")]
    Empty,
    /// Not `whsec_…`.
    #[error(
        "must start with `whsec_` followed by base64 (Standard Webhooks format); \
         generate one with: echo whsec_$(openssl rand -base64 32)"
    )]
    MissingPrefix,
    /// The part after `whsec_` is not base64.
    #[error("a whsec_ secret must be base64 after the prefix; this one is not")]
    NotBase64,
    /// Too few key bytes.
    #[error(
        "a whsec_ secret must decode to at least {MIN_KEY_BYTES} bytes; this one has {0}; \
         generate one with: echo whsec_$(openssl rand -base64 32)"
    )]
    TooShort(usize),
    /// `signing.secret` is an empty list.
    #[error("give at least one secret")]
    NoKeys,
}

/// One HMAC key, parsed from a `whsec_…` secret.
#[derive(Clone)]
pub struct SigningKey(SecretSlice<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>` (padded or not) of at least 24 bytes.
    pub fn parse(text: &str) -> Result<SigningKey, SigningError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SigningError::Empty);
        }
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SigningError::MissingPrefix)?;
        let bytes = STANDARD
            .decode(encoded)
            .or_else(|_| STANDARD_NO_PAD.decode(encoded))
            .map_err(|_| SigningError::NotBase64)?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(SigningError::TooShort(bytes.len()));
        }
        Ok(SigningKey(SecretSlice::from(bytes)))
    }

    /// An "hmac" secret: its bytes as written (not trimmed); only empty
    /// text is refused.
    pub fn raw(text: &str) -> Result<SigningKey, SigningError> {
        if text.is_empty() {
            return Err(SigningError::Empty);
        }
        Ok(SigningKey(SecretSlice::from(text.as_bytes().to_vec())))
    }

    /// Parses a secret the way `format` reads it.
    pub fn parse_for(format: SigningFormat, text: &str) -> Result<SigningKey, SigningError> {
        match format {
            SigningFormat::StandardWebhooks => SigningKey::parse(text),
            SigningFormat::Hmac => SigningKey::raw(text),
        }
    }

    /// The raw key bytes (the HMAC key, also the HS256 key of the body token).
    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_secrets_are_named_without_their_value() {
        assert_eq!(SigningKey::parse("").unwrap_err(), SigningError::Empty);
        assert_eq!(
            SigningKey::parse("plain-secret-text").unwrap_err(),
            SigningError::MissingPrefix
        );
        assert_eq!(
            SigningKey::parse("whsec_!!not*base64!!").unwrap_err(),
            SigningError::NotBase64
        );
        let short = SigningKey::parse("whsec_c2hvcnQ=").unwrap_err();
        assert_eq!(short, SigningError::TooShort(5));
        for err in [SigningError::MissingPrefix, short] {
            let text = err.to_string();
            assert!(!text.contains("c2hvcnQ") && !text.contains("plain-secret"));
        }
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert!(!format!("{key:?}").contains("MfKQ"));
    }

    #[test]
    fn hmac_secrets_are_their_bytes_as_written() {
        let key = SigningKey::parse_for(SigningFormat::Hmac, "It's a Secret to Everybody").unwrap();
        assert_eq!(key.bytes(), b"It's a Secret to Everybody");
        let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = SigningKey::parse_for(SigningFormat::Hmac, whsec).unwrap();
        assert_eq!(
            key.bytes(),
            whsec.as_bytes(),
            "Stripe-style: the whole text"
        );
        assert_eq!(
            SigningKey::parse_for(SigningFormat::Hmac, "").unwrap_err(),
            SigningError::Empty
        );
        assert_eq!(
            SigningKey::parse_for(SigningFormat::StandardWebhooks, "plain").unwrap_err(),
            SigningError::MissingPrefix
        );
    }
}
