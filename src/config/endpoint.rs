//! `[endpoints.NAME]`: where and how batches are sent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::de;
use super::secret::Secret;
use super::template::Template;

/// One webhook endpoint. Strategies refer to it by its name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// The URL batches are POSTed to (`http://` or `https://`).
    pub url: String,
    /// Time allowed for one whole request, from connecting to the last byte
    /// of the response. Default "30s".
    #[serde(default = "default_timeout", deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// Time allowed to establish the connection (TCP and TLS). Default "10s".
    #[serde(default = "default_connect_timeout", deserialize_with = "de::duration")]
    pub connect_timeout: Duration,
    /// Extra request headers for every strategy using this endpoint: text, or
    /// `{ expr = "…" }` evaluated per batch. A strategy's own `headers` win key by key.
    #[serde(default)]
    pub headers: BTreeMap<String, Template>,
    /// Query-string parameters added to `url`, text or `{ expr = "…" }`.
    #[serde(default)]
    pub query: BTreeMap<String, Template>,
    /// How to authenticate; default `{ type = "none" }`.
    #[serde(default)]
    pub auth: Auth,
    /// Request signing (Standard Webhooks, or an HMAC in a header of your
    /// choice); absent = unsigned.
    #[serde(default)]
    pub signing: Option<Signing>,
    /// TLS settings for `https://` URLs.
    #[serde(default)]
    pub tls: Tls,
    /// What to do when a delivery fails.
    #[serde(default)]
    pub retry: Retry,
    /// What a 4xx answer other than 408, 410, 425 and 429 means: "retry"
    /// (the default: the batch is retried like after a 5xx, and holds its
    /// strategy or its keys) or "dead_letter" (the batch is stored in
    /// walhook.dead_letters at once and later batches flow).
    #[serde(default)]
    pub on_client_error: OnClientError,
    /// Most requests per second to this endpoint, shared by every strategy
    /// using it; requests over it wait their turn. Unset = no limit.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// Protects an endpoint that is down: after `failures` failed attempts in
    /// a row, only one request at a time (a probe) reaches it until one
    /// succeeds; the other batches back off without sending.
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Authentication, chosen by `type`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// No authentication.
    #[default]
    None,
    /// HTTP Basic: `Authorization: Basic base64(username:password)`.
    Basic {
        /// The user name.
        username: String,
        /// The password (secret).
        password: Secret,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token (secret).
        token: Secret,
    },
    /// A key in a header of your choice, e.g. `X-Api-Key`.
    ApiKey {
        /// The header name.
        header: String,
        /// The header value (secret).
        value: Secret,
    },
    /// OAuth 2.0 client credentials: a token is fetched from `token_url`,
    /// cached until it expires, and sent as `Authorization: Bearer`.
    Oauth2 {
        /// The token endpoint.
        token_url: String,
        /// The client id.
        client_id: String,
        /// The client secret (secret).
        client_secret: Secret,
        /// The `scope` parameter, if the provider wants one.
        #[serde(default)]
        scope: Option<String>,
        /// The `audience` parameter, if the provider wants one.
        #[serde(default)]
        audience: Option<String>,
        /// Extra form parameters for the token request.
        #[serde(default)]
        params: BTreeMap<String, String>,
        /// How the client credentials are sent: "basic" (HTTP Basic header,
        /// the default) or "post" (form fields).
        #[serde(default)]
        auth_method: OAuth2AuthMethod,
    },
}

/// How OAuth 2.0 client credentials reach the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuth2AuthMethod {
    /// `Authorization: Basic` (client_secret_basic).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body (client_secret_post).
    Post,
}

/// Request signing: Standard Webhooks, or an HMAC of the body in a header
/// of the receiver's choosing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signing {
    /// "standard-webhooks" (the default: `webhook-signature`, HMAC-SHA256 of
    /// `id.timestamp.body`, `whsec_` secrets) or "hmac" (an HMAC of the body,
    /// or of `timestamp.body`, in `header`; the secret's bytes as written).
    #[serde(default)]
    pub format: SigningFormat,
    /// The signing secret, or a list of them while rotating (each one signs,
    /// so receivers holding either verify). Standard Webhooks secrets are
    /// `whsec_` + base64 of at least 24 bytes; "hmac" secrets are any text,
    /// used as its bytes.
    #[serde(deserialize_with = "one_or_many")]
    pub secret: Vec<Secret>,
    /// Also put a signed token in the payload (`"token"`), for receivers that
    /// cannot read headers. Default false.
    #[serde(default)]
    pub include_token: bool,
    /// "hmac": the header carrying the signature, e.g. `X-Hub-Signature-256`.
    #[serde(default)]
    pub header: Option<String>,
    /// "hmac": the hash, "sha256" (the default) or "sha512".
    #[serde(default)]
    pub algorithm: Option<HmacAlgorithm>,
    /// "hmac": how the signature is written, "hex" (the default, lower case)
    /// or "base64".
    #[serde(default)]
    pub encoding: Option<SignatureEncoding>,
    /// "hmac": text before the signature, e.g. `sha256=`. Default none.
    #[serde(default)]
    pub prefix: Option<String>,
    /// "hmac": a header for the attempt's Unix time in seconds; when set,
    /// the HMAC covers `<timestamp>.<body>` instead of the body alone.
    #[serde(default)]
    pub timestamp_header: Option<String>,
}

/// How requests are signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SigningFormat {
    /// Standard Webhooks v1: `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    #[default]
    StandardWebhooks,
    /// An HMAC of the raw body (or of `timestamp.body`) in a header of your
    /// choice, as GitHub, Shopify, Stripe-style and elastic.io receivers check.
    Hmac,
}

/// The hash of an "hmac" signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    /// HMAC-SHA256.
    #[default]
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// How an "hmac" signature is written in its header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// Lower-case hexadecimal.
    #[default]
    Hex,
    /// Standard base64 with padding.
    Base64,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Secret),
        Many(Vec<Secret>),
    }
    match OneOrMany::deserialize(deserializer) {
        Ok(OneOrMany::One(secret)) => Ok(vec![secret]),
        Ok(OneOrMany::Many(secrets)) => Ok(secrets),
        Err(_) => Err(serde::de::Error::custom(
            "expected a secret string or a list of secret strings",
        )),
    }
}

/// TLS settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// A PEM file of CA certificates to trust in addition to the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate (chain) for mutual TLS; needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate. Only for testing: it disables the
    /// protection TLS gives. Default false.
    #[serde(default)]
    pub danger_accept_invalid_certs: bool,
}

/// Retry policy: exponential backoff from `initial` up to `max`, with
/// jitter, honouring `Retry-After`. The wait after failed attempt n is
/// random between `initial * 2^(n-1)` and twice that, both capped at `max`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts per batch before `on_exhausted` applies; 0 (the default)
    /// retries forever.
    #[serde(default)]
    pub max_attempts: u32,
    /// The shortest wait before the first retry (it waits between `initial`
    /// and twice `initial`). Default "1s".
    #[serde(default = "default_initial", deserialize_with = "de::duration")]
    pub initial: Duration,
    /// The longest backoff. Default "5m".
    #[serde(default = "default_max", deserialize_with = "de::duration")]
    pub max: Duration,
    /// After `max_attempts`: "block" (the default: keep retrying; from the
    /// park once parked) or "dead_letter" (store the batch in
    /// walhook.dead_letters, move on).
    #[serde(default)]
    pub on_exhausted: OnExhausted,
    /// When a failing batch is parked: after this many failed attempts (a
    /// number), or this long after its first failure (a duration, "30s"),
    /// or "never". A parked batch is stored with what must wait behind it,
    /// the slot moves past it, and it is retried from the store with the
    /// same backoff and ids. Default "30s".
    #[serde(default, deserialize_with = "park_after")]
    pub park_after: ParkAfter,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: 0,
            initial: default_initial(),
            max: default_max(),
            on_exhausted: OnExhausted::default(),
            park_after: ParkAfter::default(),
        }
    }
}

/// `retry.park_after`: when a failing batch is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkAfter {
    /// After this many failed attempts (at least 1).
    Attempts(u32),
    /// This long after its first failed attempt.
    Time(Duration),
    /// Never: a failing batch holds its strategy and the slot.
    Never,
}

impl Default for ParkAfter {
    fn default() -> Self {
        ParkAfter::Time(Duration::from_secs(30))
    }
}

impl ParkAfter {
    /// True when a batch that failed `failures` times, the first
    /// `failing_for` ago, is to be parked.
    pub(crate) fn reached(self, failures: u32, failing_for: Duration) -> bool {
        match self {
            ParkAfter::Attempts(n) => failures >= n.max(1),
            ParkAfter::Time(t) => failing_for >= t,
            ParkAfter::Never => false,
        }
    }
}

fn park_after<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<ParkAfter, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Attempts(u32),
        Text(String),
    }
    let invalid = || {
        serde::de::Error::custom(
            "invalid park_after; write a number of attempts (3), a duration (\"30s\") or \"never\"",
        )
    };
    match Raw::deserialize(deserializer).map_err(|_| invalid())? {
        Raw::Attempts(0) => Err(invalid()),
        Raw::Attempts(n) => Ok(ParkAfter::Attempts(n)),
        Raw::Text(t) if t.trim() == "never" => Ok(ParkAfter::Never),
        Raw::Text(t) => humantime::parse_duration(t.trim())
            .map(ParkAfter::Time)
            .map_err(|_| invalid()),
    }
}

fn default_initial() -> Duration {
    Duration::from_secs(1)
}

fn default_max() -> Duration {
    Duration::from_secs(300)
}

/// What happens to a batch whose attempts are exhausted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// Keep retrying; the slot holds WAL until it is delivered.
    #[default]
    Block,
    /// Store it in `walhook.dead_letters` and go on with the next batch.
    DeadLetter,
}

/// What a 4xx answer (other than 408, 410, 425, 429) does to a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnClientError {
    /// Retry it with backoff, like a 5xx.
    #[default]
    Retry,
    /// Store it in `walhook.dead_letters` at once and go on.
    DeadLetter,
}

/// `circuit_breaker`: when an endpoint counts as down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Failed attempts in a row (timeouts, refused connections, 408, 425,
    /// 429, 5xx) that open the circuit; 0 = never. Default 5.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            failures: default_breaker_failures(),
        }
    }
}

fn default_breaker_failures() -> u32 {
    5
}
