//! The HTTP side of delivery: one reqwest client per endpoint, one POST per
//! attempt.
//!
//! The client keeps connections alive between batches, never follows
//! redirects (a 3xx is a failed attempt: following it could send signed data
//! to a place nobody configured), and bounds connecting and the whole request
//! by the endpoint's `connect_timeout` and `timeout`. A response body is read
//! only up to 64 KiB: enough to reuse the connection for small answers, never
//! a way for an endpoint to make walhook buffer without bound.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Client, ClientBuilder, StatusCode, Url};

use super::handles::{PauseHandle, PauseInner, PauseReason};
use super::prepare::{Attempt, Prepare};
use super::protect::{Admission, Guard};
use super::retry::{decide, parse_retry_after, Decision};
use super::stats::EndpointStats;
use super::DeliveryError;
use crate::batch::{Batch, Reply};
use crate::config::{EndpointConfig, OnClientError};

/// Most bytes of a response body walhook reads.
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// Bytes of the start of a response body kept with an attempt (the
/// delivery log shows them).
pub(crate) const EXCERPT_BYTES: usize = 4 * 1024;
/// Characters of the response body an error message quotes.
const ERROR_BODY_CHARS: usize = 200;

/// `walhook/<version>`.
const USER_AGENT: &str = concat!("walhook/", env!("CARGO_PKG_VERSION"));

/// One webhook endpoint: its URL, HTTP client and security ([`Prepare`]).
/// Shared (in an `Arc`) by every strategy sending to it.
pub struct Endpoint {
    name: Arc<str>,
    url: Url,
    client: Client,
    timeout: Duration,
    connect_timeout: Duration,
    prepare: Arc<dyn Prepare>,
    on_client_error: OnClientError,
    guard: Guard,
    /// The pause switches of the strategies sending here (a 410 pauses them all).
    pauses: Mutex<Vec<Weak<PauseInner>>>,
    /// Recent attempts, for the console.
    stats: EndpointStats,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// The HTTP status, if a response came.
    pub(crate) status: Option<u16>,
    /// The response's `Retry-After`, if any.
    pub(crate) retry_after: Option<Duration>,
    /// Why it failed, naming the endpoint and its host and quoting the
    /// start of the response body (no secret, no URL path or query); `None`
    /// when delivered.
    pub error: Option<String>,
    /// The start of the response body (at most [`EXCERPT_BYTES`], invalid
    /// UTF-8 replaced); `None` without a response.
    pub(crate) body: Option<String>,
    /// Time spent, preparation included.
    pub(crate) elapsed: Duration,
    /// A request went out (false: refused by the circuit breaker, or the
    /// request could not be built).
    pub(crate) sent: bool,
    /// Refused without a request: the circuit is open and a probe is out.
    pub(crate) refused: bool,
}

impl AttemptResult {
    /// A 2xx answer.
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// `2xx`, `3xx`, `4xx`, `5xx`, `error` (no response) or `circuit_open`
    /// (no request), for metrics.
    pub(crate) fn status_class(&self) -> &'static str {
        if self.refused {
            return "circuit_open";
        }
        match self.status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "other",
            None => "error",
        }
    }
}

impl Endpoint {
    /// An endpoint with its `[tls]` settings applied ([`super::tls::configure`]:
    /// system roots, `ca_file`, client certificate).
    pub fn new(
        name: &str,
        cfg: &EndpointConfig,
        prepare: Arc<dyn Prepare>,
    ) -> Result<Endpoint, DeliveryError> {
        Self::with_tls(name, cfg, prepare, |b| {
            super::tls::configure(b, &cfg.tls, name)
        })
    }

    /// An endpoint whose client builder is first passed through `tls`
    /// (what [`Endpoint::new`] does with [`super::tls::configure`]).
    pub fn with_tls<E: std::fmt::Display>(
        name: &str,
        cfg: &EndpointConfig,
        prepare: Arc<dyn Prepare>,
        tls: impl FnOnce(ClientBuilder) -> Result<ClientBuilder, E>,
    ) -> Result<Endpoint, DeliveryError> {
        let client_err = |reason: String| DeliveryError::Client {
            endpoint: name.to_string(),
            reason,
        };
        let builder = tls(Self::client_builder(cfg)).map_err(|e| client_err(e.to_string()))?;
        let client = builder
            .build()
            .map_err(|e| client_err(describe(&e.without_url())))?;
        Self::from_client(name, cfg, client, prepare)
    }

    /// The client settings walhook uses (timeouts, no redirects, keep-alive,
    /// user-agent), for callers that add TLS settings themselves.
    fn client_builder(cfg: &EndpointConfig) -> ClientBuilder {
        Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .user_agent(USER_AGENT)
            .tcp_keepalive(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(60))
    }

    /// An endpoint over a client built elsewhere (it should come from
    /// [`Endpoint::client_builder`]).
    fn from_client(
        name: &str,
        cfg: &EndpointConfig,
        client: Client,
        prepare: Arc<dyn Prepare>,
    ) -> Result<Endpoint, DeliveryError> {
        let url = Url::parse(&cfg.url).map_err(|e| DeliveryError::InvalidUrl {
            endpoint: name.to_string(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(DeliveryError::InvalidUrl {
                endpoint: name.to_string(),
                reason: format!("scheme {:?} is not http or https", url.scheme()),
            });
        }
        Ok(Endpoint {
            name: name.into(),
            url,
            client,
            timeout: cfg.timeout,
            connect_timeout: cfg.connect_timeout,
            prepare,
            on_client_error: cfg.on_client_error,
            guard: Guard::new(name, cfg),
            pauses: Mutex::new(Vec::new()),
            stats: EndpointStats::default(),
        })
    }

    /// The `[endpoints.NAME]` name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `host:port` of its URL (no credentials, path or query): what errors
    /// and logs name.
    pub(crate) fn host(&self) -> String {
        let host = self.url.host_str().unwrap_or("");
        match self.url.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        }
    }

    /// Its recent attempts (up, latency, last status).
    pub fn stats(&self) -> EndpointStats {
        self.stats.clone()
    }

    /// What a 4xx (other than 408, 410, 425, 429) does to a batch.
    pub(crate) fn on_client_error(&self) -> OnClientError {
        self.on_client_error
    }

    /// Changes each time the endpoint's circuit closes: batches waiting out
    /// a backoff go at once.
    pub(crate) fn recovered(&self) -> tokio::sync::watch::Receiver<u64> {
        self.guard.closed()
    }

    /// A strategy sending here: a 410 pauses it too.
    pub(crate) fn register(&self, pause: &PauseHandle) {
        let mut pauses = self.pauses.lock().unwrap_or_else(|e| e.into_inner());
        pauses.retain(|p| p.strong_count() > 0);
        pauses.push(pause.downgrade());
    }

    /// The endpoint answered 410 Gone: pauses every strategy sending here.
    pub(crate) fn gone(&self, strategy: &str) {
        tracing::warn!(
            endpoint = %self.name,
            strategy = %strategy,
            "endpoint answered 410 Gone: pausing every strategy that sends to it; \
             resume each with POST /strategies/NAME/resume once the endpoint is back"
        );
        let pauses: Vec<PauseHandle> = self
            .pauses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(PauseHandle::upgrade)
            .collect();
        for pause in pauses {
            pause.pause_for(PauseReason::EndpointGone);
        }
    }

    /// One attempt to POST `batch` (a 401 answered with a fresh credential
    /// is retried once at once, within this attempt), through the circuit
    /// breaker and the rate limit.
    pub async fn attempt(&self, batch: &Batch) -> AttemptResult {
        let admission = self.guard.admit().await;
        if let Admission::Refused = admission {
            return AttemptResult {
                status: None,
                retry_after: None,
                error: Some(format!(
                    "{}circuit open: it failed too often in a row; one probe request at a time",
                    self.prefix()
                )),
                body: None,
                elapsed: Duration::ZERO,
                sent: false,
                refused: true,
            };
        }
        let result = self.attempt_now(batch).await;
        let outcome = if !result.sent {
            None
        } else {
            match (decide(result.status, OnClientError::Retry), result.status) {
                (Decision::Delivered, _) => Some(true),
                // A 4xx other than 408/425/429 is an answer: the endpoint is up.
                (_, Some(status))
                    if (400..500).contains(&status) && !matches!(status, 408 | 425 | 429) =>
                {
                    None
                }
                _ => Some(false),
            }
        };
        self.guard.record(admission, outcome);
        self.stats.record(&result, self.guard.is_open());
        result
    }

    async fn attempt_now(&self, batch: &Batch) -> AttemptResult {
        let started = Instant::now();
        let mut result = self.try_once(batch).await;
        if result.status == Some(401) && self.prepare.unauthorized() {
            tracing::info!(
                endpoint = %self.name,
                strategy = %batch.strategy,
                "endpoint answered 401; retrying once with fresh credentials"
            );
            result = self.try_once(batch).await;
        }
        result.elapsed = started.elapsed();
        result
    }

    async fn try_once(&self, batch: &Batch) -> AttemptResult {
        let prefix = self.prefix();
        let fail = |error: String| AttemptResult {
            status: None,
            retry_after: None,
            error: Some(format!("{prefix}{error}")),
            body: None,
            elapsed: Duration::ZERO,
            sent: false,
            refused: false,
        };
        if let Some(err) = &batch.decorate_error {
            return fail(format!("evaluating the strategy's templates: {err}"));
        }
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let headers = match request_headers(batch, timestamp) {
            Ok(h) => h,
            Err(e) => return fail(e),
        };
        let mut attempt = Attempt {
            strategy: batch.strategy.to_string(),
            batch_id: batch.id.clone(),
            timestamp,
            headers,
            body: batch.body.clone(),
        };
        if let Err(e) = self.prepare.prepare(&mut attempt).await {
            return fail(format!("preparing the request: {e}"));
        }
        let mut url = self.url.clone();
        if !batch.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &batch.query {
                pairs.append_pair(k, v);
            }
        }
        let sent = self
            .client
            .post(url)
            .headers(attempt.headers)
            .body(attempt.body)
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                let error = self.describe_send_error(e);
                if let Some(log) = &batch.replies {
                    log.record(
                        Reply {
                            batch_id: batch.id.clone(),
                            status: None,
                            body: String::new(),
                            truncated: false,
                            error: Some(error.clone()),
                        },
                        &batch.keys,
                    );
                }
                return AttemptResult {
                    sent: true,
                    ..fail(error)
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // Read at most 64 KiB, so the connection can be reused; kept only
        // when the batch's answers are wanted (synchronous runs).
        let mut read = 0usize;
        let mut kept: Option<Vec<u8>> = batch
            .replies
            .as_ref()
            .filter(|log| log.keeps())
            .map(|_| Vec::new());
        let mut excerpt: Vec<u8> = Vec::new();
        let mut body_error = None;
        let mut truncated = false;
        while read < MAX_RESPONSE_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if let Some(kept) = &mut kept {
                        let room = MAX_RESPONSE_BODY - kept.len();
                        truncated |= chunk.len() > room;
                        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                    let room = EXCERPT_BYTES.saturating_sub(excerpt.len());
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    read += chunk.len();
                }
                Ok(None) => break,
                Err(e) => {
                    body_error = Some(self.describe_send_error(e));
                    break;
                }
            }
        }
        if kept.is_some() && read >= MAX_RESPONSE_BODY && !truncated {
            // Exactly 64 KiB so far: cut only if more follows.
            truncated = matches!(response.chunk().await, Ok(Some(c)) if !c.is_empty());
        }
        if let Some(log) = &batch.replies {
            log.record(
                Reply {
                    batch_id: batch.id.clone(),
                    status: Some(status.as_u16()),
                    body: kept
                        .map(|body| String::from_utf8_lossy(&body).into_owned())
                        .unwrap_or_default(),
                    truncated,
                    error: body_error.clone(),
                },
                &batch.keys,
            );
        }
        let body = String::from_utf8_lossy(&excerpt).into_owned();
        let error = if status.is_success() {
            None
        } else {
            let quoted = quote(&body);
            Some(if quoted.is_empty() {
                format!("{prefix}{}", status_text(status))
            } else {
                format!("{prefix}{}: {quoted}", status_text(status))
            })
        };
        if status.is_success() {
            if let Some(err) = body_error {
                tracing::debug!(endpoint = %self.name, error = %err, "reading a 2xx response body failed");
            }
        }
        AttemptResult {
            status: Some(status.as_u16()),
            retry_after,
            error,
            body: Some(body),
            elapsed: Duration::ZERO,
            sent: true,
            refused: false,
        }
    }

    /// `endpoint NAME (HOST:PORT): `, the start of every error message.
    fn prefix(&self) -> String {
        format!("endpoint {} ({}): ", self.name, self.host())
    }

    fn describe_send_error(&self, err: reqwest::Error) -> String {
        // A connect timeout is a timeout too: tell the two apart.
        if err.is_connect() && err.is_timeout() {
            return format!(
                "connect timed out after {:?} (connect_timeout)",
                self.connect_timeout
            );
        }
        if err.is_timeout() {
            return format!("timed out after {:?}", self.timeout);
        }
        super::tls::explain(&err.without_url())
    }
}

/// The start of a response body for an error message: one line, control
/// characters as spaces, at most [`ERROR_BODY_CHARS`] characters.
fn quote(body: &str) -> String {
    let mut out: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ERROR_BODY_CHARS + 1)
        .collect();
    if out.chars().count() > ERROR_BODY_CHARS {
        out = out.chars().take(ERROR_BODY_CHARS).collect();
        out.push('…');
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

fn request_headers(batch: &Batch, timestamp: i64) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::with_capacity(batch.headers.len() + 4);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in &batch.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header name {name:?} is not valid"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header {name} is not valid header text"))?;
        headers.insert(name, value);
    }
    let id = HeaderValue::from_str(&batch.id).map_err(|_| "invalid batch id".to_string())?;
    headers.insert(HeaderName::from_static("webhook-id"), id);
    headers.insert(
        HeaderName::from_static("webhook-timestamp"),
        HeaderValue::from(timestamp),
    );
    Ok(headers)
}

/// An error and its sources, joined by ": ", skipping repeats.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
