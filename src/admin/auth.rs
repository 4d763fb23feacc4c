//! The bearer-token gate in front of the mutating endpoints.
//!
//! Both sides are hashed to a fixed length before a constant-time compare,
//! so neither the position of the first wrong byte nor the token's length
//! shows in the response time.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// Why a request to a mutating endpoint is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No `[admin].token` is configured: the endpoints are off (403).
    Disabled,
    /// The `Authorization` header is missing or holds the wrong token (401).
    Unauthorized,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Disabled => (
                StatusCode::FORBIDDEN,
                "disabled: set [admin].token to enable the admin API\n",
            )
                .into_response(),
            Denied::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "unauthorized: send Authorization: Bearer <admin token>\n",
            )
                .into_response(),
        }
    }
}

/// Checks `headers` against the configured token.
pub(crate) fn authorize(token: Option<&Secret>, headers: &HeaderMap) -> Result<(), Denied> {
    let Some(token) = token else {
        return Err(Denied::Disabled);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer)
        .ok_or(Denied::Unauthorized)?;
    if token_matches(token.expose().as_bytes(), given.as_bytes()) {
        Ok(())
    } else {
        Err(Denied::Unauthorized)
    }
}

/// The credentials of a `Bearer` authorization value (scheme case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|token| !token.is_empty())
}

/// Constant-time equality of two tokens of any length.
fn token_matches(expected: &[u8], given: &[u8]) -> bool {
    let expected = Sha256::digest(expected);
    let given = Sha256::digest(given);
    let mut diff = 0u8;
    for (a, b) in expected.iter().zip(given.iter()) {
        diff |= a ^ b;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let token = Secret::new("s3cret-token");
        assert_eq!(
            authorize(Some(&token), &headers("Bearer s3cret-token")),
            Ok(())
        );
        assert_eq!(
            authorize(Some(&token), &headers("bearer s3cret-token")),
            Ok(())
        );
        for wrong in [
            "Bearer s3cret-toke",
            "Bearer s3cret-token2",
            "Basic s3cret-token",
            "Bearer ",
            "s3cret-token",
        ] {
            assert_eq!(
                authorize(Some(&token), &headers(wrong)),
                Err(Denied::Unauthorized),
                "{wrong}"
            );
        }
        assert_eq!(
            authorize(Some(&token), &HeaderMap::new()),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            authorize(None, &headers("Bearer s3cret-token")),
            Err(Denied::Disabled)
        );
    }
}
