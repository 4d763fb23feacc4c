//! Endpoint authentication: the `Authorization` (or API-key) header each
//! attempt carries, per `auth.type`.
//!
//! Static credentials become a ready header value, built once and marked
//! sensitive (so `HeaderMap`'s `Debug` hides it); OAuth2 asks the endpoint's
//! [`TokenSource`] before every attempt.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use super::oauth2::{bearer_value, OAuth2Error, TokenSource};
use crate::config::Auth;

/// Why an auth setting cannot be used (config validation catches these
/// first). Never holds the credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The value cannot be an HTTP header value.
    #[error("auth.{field} cannot be sent in an HTTP header (control characters?)")]
    BadValue {
        /// The field, e.g. `token`.
        field: &'static str,
    },
    /// `api_key.header` is not a header name.
    #[error("auth.header is not a valid HTTP header name")]
    BadHeaderName,
    /// Getting an OAuth2 token failed.
    #[error(transparent)]
    OAuth2(#[from] OAuth2Error),
}

#[derive(Debug)]
enum Kind {
    None,
    Static(HeaderName, HeaderValue),
    OAuth2(Arc<TokenSource>),
}

/// Applies one endpoint's `auth` to requests.
#[derive(Debug)]
pub(crate) struct Authenticator {
    kind: Kind,
}

fn sensitive(text: &str, field: &'static str) -> Result<HeaderValue, AuthError> {
    let mut value = HeaderValue::from_str(text).map_err(|_| AuthError::BadValue { field })?;
    value.set_sensitive(true);
    Ok(value)
}

impl Authenticator {
    /// Builds the authenticator for `auth`. `http` and `timeout` serve OAuth2
    /// token requests; `endpoint` names the endpoint in logs.
    pub(crate) fn new(
        endpoint: &str,
        auth: &Auth,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<Authenticator, AuthError> {
        let kind = match auth {
            Auth::None => Kind::None,
            Auth::Basic { username, password } => {
                let credentials = format!("{username}:{}", password.expose());
                let value = format!("Basic {}", STANDARD.encode(credentials.as_bytes()));
                Kind::Static(AUTHORIZATION, sensitive(&value, "password")?)
            }
            Auth::Bearer { token } => Kind::Static(
                AUTHORIZATION,
                sensitive(&format!("Bearer {}", token.expose()), "token")?,
            ),
            Auth::ApiKey { header, value } => {
                let name = HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| AuthError::BadHeaderName)?;
                Kind::Static(name, sensitive(value.expose(), "value")?)
            }
            Auth::Oauth2 { .. } => {
                Kind::OAuth2(Arc::new(TokenSource::new(endpoint, auth, http, timeout)?))
            }
        };
        Ok(Authenticator { kind })
    }

    /// Sets the auth header on `headers` (fetching an OAuth2 token if needed).
    pub(crate) async fn apply(&self, headers: &mut HeaderMap) -> Result<(), AuthError> {
        match &self.kind {
            Kind::None => {}
            Kind::Static(name, value) => {
                headers.insert(name.clone(), value.clone());
            }
            Kind::OAuth2(source) => {
                let token = source.token().await?;
                let value = bearer_value(&token).ok_or(AuthError::BadValue {
                    field: "access_token",
                })?;
                headers.insert(AUTHORIZATION, value);
            }
        }
        Ok(())
    }

    /// The endpoint answered 401: drops an OAuth2 token and returns true (a
    /// retry with a new token may succeed); false for static credentials.
    pub(crate) fn unauthorized(&self) -> bool {
        match &self.kind {
            Kind::OAuth2(source) => {
                source.invalidate();
                true
            }
            _ => false,
        }
    }
}
