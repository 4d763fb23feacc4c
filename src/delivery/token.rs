//! The body token (`include_token = true`): a compact HS256 JWT in the
//! payload's `token` field, for receivers that can read the body but not the
//! headers (some no-code tools and queues). It carries what the signature
//! headers carry: who sent it (`iss`), for which strategy (`sub`), when
//! (`iat`, valid for five minutes), and the batch (`jti` = `webhook-id`), so a
//! receiver verifies it with any JWT library and the signing secret's key
//! bytes (the base64 after `whsec_`, decoded).
//!
//! Hand-written because it is four lines of base64 and one HMAC; the tests
//! check it against the `jsonwebtoken` crate.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::signing::SigningKey;
use crate::batch::payload;

/// The token's issuer.
const ISSUER: &str = "walhook";
/// How long a token is valid after `iat`, in seconds.
const LIFETIME_SECONDS: i64 = 300;

/// Why the token cannot be placed in a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    /// The body does not end in `}` (it is not a JSON object).
    #[error("the batch body is not a JSON object, so it cannot carry a token")]
    NotAnObject,
}

/// A compact HS256 JWT: `{"iss":"walhook","sub":strategy,"iat":iat,
/// "exp":iat+300,"jti":jti}` signed with `key`'s bytes.
pub(crate) fn make_token(key: &SigningKey, strategy: &str, jti: &str, iat: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": strategy,
        "iat": iat,
        "exp": iat.saturating_add(LIFETIME_SECONDS),
        "jti": jti,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    let mut mac = match Hmac::<Sha256>::new_from_slice(key.bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Adds `"token":"<token>"` as the last field of the JSON object `body`
/// (see [`payload::with_token`]).
pub(crate) fn insert_token(body: &[u8], token: &str) -> Result<Bytes, TokenError> {
    payload::with_token(body, token).ok_or(TokenError::NotAnObject)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
    }

    #[test]
    fn token_is_a_compact_hs256_jwt_with_the_claims() {
        let token = make_token(&key(), "big_orders", "batch-1", 1_700_000_000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"iss": "walhook", "sub": "big_orders", "iat": 1_700_000_000,
                "exp": 1_700_000_300, "jti": "batch-1"})
        );
    }

    #[test]
    fn token_goes_last_in_the_object() {
        let body = insert_token(br#"{"strategy":"s","records":[]}"#, "a.b.c").unwrap();
        assert_eq!(
            &body[..],
            br#"{"strategy":"s","records":[],"token":"a.b.c"}"#
        );
        let body = insert_token(b"{ }\n", "a.b.c").unwrap();
        assert_eq!(&body[..], br#"{ "token":"a.b.c"}"#);
        assert_eq!(insert_token(b"[1]", "t"), Err(TokenError::NotAnObject));
        assert_eq!(insert_token(b"}", "t"), Err(TokenError::NotAnObject));
        assert_eq!(insert_token(b"", "t"), Err(TokenError::NotAnObject));
    }
}
