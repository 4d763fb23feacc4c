//! Endpoint security: credentials, OAuth2, TLS to endpoints, `walhook
//! receive`, secrets kept out of output, and all of it through `walhook
//! run`. Helpers: endpoint configs from TOML, attempts as the sender builds
//! them, and a tracing capture to prove secrets stay out of logs.

mod auth;
mod e2e;
mod hmac_format;
mod oauth2;
mod pki;
mod receive;
mod secrets;
mod sender;
mod tls;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use walhook::config::EndpointConfig;
use walhook::delivery::Attempt;

/// A 32-byte Standard Webhooks secret.
pub(crate) const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A second one (rotation).
pub(crate) const WHSEC_2: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// An endpoint config from the body of an `[endpoints.NAME]` table.
pub(crate) fn endpoint(toml_text: &str) -> EndpointConfig {
    toml::from_str(toml_text).unwrap_or_else(|err| panic!("bad endpoint toml: {err}"))
}

/// A batch body as the batcher writes it.
pub(crate) fn batch_body(id: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"strategy":"big_orders","batch":{{"id":"{id}","size":1,"first_lsn":"0/16B3748","last_lsn":"0/16B3748"}},"records":[{{"id":"0/16B3748:0","op":"insert","schema":"public","table":"orders","lsn":"0/16B3748","xid":750,"commit_time":"2026-11-22T07:04:00.123456Z","new":{{"id":1,"amount":150.5}},"old":null}}]}}"#
    ))
}

/// An attempt as the sender builds it, timestamped now.
pub(crate) fn attempt(batch_id: &str) -> Attempt {
    let now = chrono::Utc::now().timestamp();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("webhook-id", batch_id.parse().unwrap());
    headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
    Attempt {
        strategy: "big_orders".into(),
        batch_id: batch_id.into(),
        timestamp: now,
        headers,
        body: batch_body(batch_id),
    }
}

/// Everything logged through `tracing` while the guard lives (all levels).
#[derive(Clone, Default)]
pub(crate) struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Starts capturing for the current thread (use a current-thread runtime).
    pub(crate) fn start() -> (LogCapture, tracing::subscriber::DefaultGuard) {
        let capture = LogCapture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    /// What was logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends a prepared attempt the way the sender does.
pub(crate) async fn send(
    client: &reqwest::Client,
    url: &str,
    attempt: &Attempt,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(url)
        .headers(attempt.headers.clone())
        .body(attempt.body.clone())
        .send()
        .await
}
