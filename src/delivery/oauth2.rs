//! OAuth 2.0 client credentials (RFC 6749 §4.4) for `auth.type = "oauth2"`.
//!
//! One [`TokenSource`] per endpoint, shared by every strategy sending there:
//! - the token is cached and refreshed shortly before `expires_in` runs out
//!   (10% of its lifetime early, at most 30 s), so a steady stream of
//!   batches costs one token request per lifetime;
//! - fetching holds an async mutex, so however many strategies need a token
//!   at once, one request goes out and the others take its result;
//! - after a 401 from the endpoint the sender calls [`TokenSource::invalidate`]
//!   and the next attempt fetches a fresh token;
//! - a token endpoint that fails is an ordinary failed attempt (the sender
//!   retries with backoff): nothing is lost.
//!
//! The client secret and the tokens are `secrecy` values; errors describe the
//! failure (status, the provider's `error` code) and never contain either.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::{Auth, OAuth2AuthMethod, Secret};

/// The lifetime assumed when the provider sends no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// The most a token is refreshed ahead of its expiry.
const MAX_EARLY: Duration = Duration::from_secs(30);
/// The most of a token endpoint's error body kept in a message.
const MAX_DETAIL: usize = 200;

/// Why no token could be had. Never holds the client secret or a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuth2Error {
    /// The request did not get an answer (connect error, timeout).
    #[error("oauth2 token request to {url} failed: {reason}")]
    Request {
        /// The token URL, userinfo removed.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The token endpoint answered with an error status.
    #[error("oauth2 token endpoint {url} answered {status}{detail}")]
    Status {
        /// The token URL, userinfo removed.
        url: String,
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// `: <error> (<error_description>)` from an RFC 6749 error body.
        detail: String,
    },
    /// A 2xx answer without a usable `access_token`.
    #[error("oauth2 token endpoint {url} answered without a usable access_token: {reason}")]
    BadResponse {
        /// The token URL, userinfo removed.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The endpoint's auth is not `oauth2`.
    #[error("auth is not oauth2")]
    NotOAuth2,
}

/// A cached access token.
struct Cached {
    token: SecretString,
    refresh_at: Instant,
    /// The invalidation epoch it was fetched in.
    epoch: u64,
}

/// Fetches, caches and refreshes one endpoint's client-credentials token.
pub(crate) struct TokenSource {
    http: reqwest::Client,
    endpoint: String,
    token_url: String,
    /// `token_url` without userinfo, for messages.
    shown_url: String,
    client_id: String,
    client_secret: Secret,
    form: Vec<(String, String)>,
    auth_method: OAuth2AuthMethod,
    timeout: Duration,
    /// Held while fetching: one request at a time.
    cache: Mutex<Option<Cached>>,
    /// Bumped by `invalidate`; a token from an older epoch is not used.
    epoch: AtomicU64,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("endpoint", &self.endpoint)
            .field("token_url", &self.shown_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

impl TokenSource {
    /// A token source for `auth` (which must be `Auth::Oauth2`), sending
    /// token requests with `http` and giving each `timeout`. `endpoint` is
    /// the endpoint's name, for logs.
    pub(crate) fn new(
        endpoint: &str,
        auth: &Auth,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<TokenSource, OAuth2Error> {
        let Auth::Oauth2 {
            token_url,
            client_id,
            client_secret,
            scope,
            audience,
            params,
            auth_method,
        } = auth
        else {
            return Err(OAuth2Error::NotOAuth2);
        };
        let mut form = vec![("grant_type".to_string(), "client_credentials".to_string())];
        if let Some(scope) = scope {
            form.push(("scope".into(), scope.clone()));
        }
        if let Some(audience) = audience {
            form.push(("audience".into(), audience.clone()));
        }
        let params: &BTreeMap<String, String> = params;
        form.extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(TokenSource {
            http,
            endpoint: endpoint.to_string(),
            token_url: token_url.clone(),
            shown_url: redact_url(token_url),
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            form,
            auth_method: *auth_method,
            timeout,
            cache: Mutex::new(None),
            epoch: AtomicU64::new(0),
        })
    }

    /// A valid access token: the cached one, or a new one fetched now (one
    /// fetch at a time; callers waiting meanwhile get its result).
    pub(crate) async fn token(&self) -> Result<SecretString, OAuth2Error> {
        let mut cache = self.cache.lock().await;
        let epoch = self.epoch.load(Ordering::Acquire);
        if let Some(cached) = cache.as_ref() {
            if cached.epoch == epoch && Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        let (token, lifetime) = self.fetch().await?;
        let refresh_at = Instant::now() + lifetime.saturating_sub(early(lifetime));
        *cache = Some(Cached {
            token: token.clone(),
            refresh_at,
            epoch,
        });
        Ok(token)
    }

    /// Drops the cached token (the endpoint answered 401): the next
    /// [`token`](Self::token) fetches a new one.
    pub(crate) fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(endpoint = %self.endpoint, "oauth2 token invalidated after a 401");
    }

    async fn fetch(&self) -> Result<(SecretString, Duration), OAuth2Error> {
        tracing::debug!(endpoint = %self.endpoint, token_url = %self.shown_url, "fetching an oauth2 token");
        let mut form = self.form.clone();
        let mut request = self
            .http
            .post(&self.token_url)
            .timeout(self.timeout)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        match self.auth_method {
            OAuth2AuthMethod::Basic => {
                // RFC 6749 §2.3.1: both parts form-encoded before base64.
                let credentials = format!(
                    "{}:{}",
                    form_escape(&self.client_id),
                    form_escape(self.client_secret.expose())
                );
                let mut value = HeaderValue::from_str(&format!(
                    "Basic {}",
                    STANDARD.encode(credentials.as_bytes())
                ))
                .map_err(|_| self.bad("cannot build the Basic header".into()))?;
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
            OAuth2AuthMethod::Post => {
                form.push(("client_id".into(), self.client_id.clone()));
                form.push((
                    "client_secret".into(),
                    self.client_secret.expose().to_string(),
                ));
            }
        }
        let response = request
            .body(form_encode(&form))
            .send()
            .await
            .map_err(|err| OAuth2Error::Request {
                url: self.shown_url.clone(),
                reason: describe(&err.without_url()),
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|err| OAuth2Error::Request {
            url: self.shown_url.clone(),
            reason: describe(&err.without_url()),
        })?;
        if !status.is_success() {
            let detail = match serde_json::from_slice::<ErrorResponse>(&body) {
                Ok(ErrorResponse {
                    error: Some(error),
                    error_description,
                }) => {
                    let mut text = format!(": {error}");
                    if let Some(description) = error_description {
                        text.push_str(&format!(" ({description})"));
                    }
                    self.scrub(&truncate(&text))
                }
                _ => String::new(),
            };
            tracing::warn!(endpoint = %self.endpoint, status = status.as_u16(), "oauth2 token request refused");
            return Err(OAuth2Error::Status {
                url: self.shown_url.clone(),
                status,
                detail,
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| self.bad("the answer is not a JSON token response".into()))?;
        let token = parsed
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.bad("access_token is missing or empty".into()))?;
        if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
            return Err(self.bad("access_token holds characters a header cannot".into()));
        }
        if let Some(kind) = parsed.token_type.as_deref() {
            if !kind.eq_ignore_ascii_case("bearer") {
                tracing::warn!(endpoint = %self.endpoint, token_type = kind, "oauth2 token_type is not Bearer; sending it as Bearer anyway");
            }
        }
        let lifetime = match parsed.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_f64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Duration::from_secs_f64(s.min(1e9)))
        .unwrap_or(DEFAULT_LIFETIME);
        tracing::debug!(endpoint = %self.endpoint, expires_in_s = lifetime.as_secs_f64(), "oauth2 token fetched");
        Ok((SecretString::from(token), lifetime))
    }

    fn bad(&self, reason: String) -> OAuth2Error {
        OAuth2Error::BadResponse {
            url: self.shown_url.clone(),
            reason,
        }
    }

    /// Removes the client secret should a provider echo it back.
    fn scrub(&self, text: &str) -> String {
        let secret = self.client_secret.expose();
        if secret.is_empty() {
            text.to_string()
        } else {
            text.replace(secret, "[redacted]")
        }
    }
}

/// How early a token of `lifetime` is refreshed: 10%, at most 30 s.
fn early(lifetime: Duration) -> Duration {
    (lifetime / 10).min(MAX_EARLY)
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_DETAIL {
        return text.to_string();
    }
    let mut end = MAX_DETAIL;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `application/x-www-form-urlencoded` serialisation of `pairs`.
fn form_encode(pairs: &[(String, String)]) -> String {
    let mut url = base_url();
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or_default().to_string()
}

/// One form-encoded value.
fn form_escape(value: &str) -> String {
    let mut url = base_url();
    url.query_pairs_mut().append_pair("v", value);
    url.query()
        .and_then(|q| q.strip_prefix("v="))
        .unwrap_or_default()
        .to_string()
}

fn base_url() -> reqwest::Url {
    match reqwest::Url::parse("http://form.invalid/") {
        Ok(url) => url,
        Err(_) => unreachable!("a constant, valid URL"),
    }
}

/// `url` without any `user:password@`.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            if !parsed.username().is_empty() || parsed.password().is_some() {
                let _ = parsed.set_username("");
                let _ = parsed.set_password(None);
            }
            parsed.to_string()
        }
        Err(_) => "[unparsable url]".to_string(),
    }
}

/// A reqwest error and its causes, without the URL.
fn describe(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "timed out".to_string()
    } else if err.is_connect() {
        "cannot connect".to_string()
    } else {
        err.to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Exposes a token for a header (kept here so the only reads of secrets in
/// delivery are easy to find).
pub(crate) fn bearer_value(token: &SecretString) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_margin_is_a_tenth_at_most_thirty_seconds() {
        assert_eq!(early(Duration::from_secs(3600)), Duration::from_secs(30));
        assert_eq!(early(Duration::from_secs(60)), Duration::from_secs(6));
        assert_eq!(early(Duration::from_secs(2)), Duration::from_millis(200));
    }

    #[test]
    fn form_encoding_follows_the_rfc() {
        assert_eq!(
            form_encode(&[
                ("grant_type".into(), "client_credentials".into()),
                ("scope".into(), "a b&c".into())
            ]),
            "grant_type=client_credentials&scope=a+b%26c"
        );
        assert_eq!(form_escape("id:x/y"), "id%3Ax%2Fy");
    }

    #[test]
    fn urls_lose_their_userinfo() {
        assert_eq!(
            redact_url("https://u:p@auth.example/token?x=1"),
            "https://auth.example/token?x=1"
        );
    }
}
