//! `walhook receive`: a real webhook receiver for people writing one, and a
//! sink for benchmarks.
//!
//! It checks what a receiver would: credentials (HTTP Basic, a bearer
//! token, an API key header) and signatures in either format walhook
//! writes (Standard Webhooks, or "hmac" with the same header, hash,
//! encoding, prefix and timestamp header settings as the endpoint's
//! `signing`). A request failing a check gets 401 (a signature also fails
//! with a timestamp more than five minutes off). It prints one line per
//! batch (`--records`: each record's JSON, one per line).
//! `--null` prints nothing per batch and only counts, so the receiver costs
//! as little as possible; the totals are printed when it stops.
//!
//! Its first stdout line is `listening on <addr>`, so scripts and tests can
//! start it on port 0 and read the port.
//!
//! The receiver itself (`Receiver`: HTTP, signature checks, answers,
//! totals) is shared with `walhook demo`, which plugs in its own printer:
//! what happens to a request that passed is a `Sink`'s business.

use crate::error_class::{Classify, ErrorClass};
use std::io::Write;

use base64::Engine as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::config::{HmacAlgorithm, Secret, SignatureEncoding, Signing, SigningFormat};
use crate::delivery::signing::{Format, SignerError, SigningError, Verifier, VerifyError};

/// The largest body accepted.
const BODY_LIMIT: usize = 256 * 1024 * 1024;

/// What `walhook receive` was asked to do.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// The address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// What a request must carry to be accepted.
    pub checks: Checks,
    /// One line per record instead of per batch.
    pub records: bool,
    /// Count only; print totals at the end.
    pub null: bool,
}

/// A credential a request must carry. `Debug` never shows the secret.
#[derive(Debug, Clone)]
pub enum Credential {
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `<header>: <value>`.
    ApiKey {
        /// The header name.
        header: String,
        /// The expected value.
        value: Secret,
    },
}

impl Credential {
    /// `--basic USER:PASSWORD`.
    pub fn basic(text: &str) -> Result<Credential, ReceiveError> {
        let (username, password) = text
            .split_once(':')
            .filter(|(u, p)| !u.is_empty() && !p.is_empty())
            .ok_or(ReceiveError::Flag {
                flag: "--basic",
                expected: "USER:PASSWORD",
            })?;
        Ok(Credential::Basic {
            username: username.to_string(),
            password: Secret::new(password),
        })
    }

    /// `--bearer TOKEN`.
    pub fn bearer(text: &str) -> Result<Credential, ReceiveError> {
        if text.is_empty() {
            return Err(ReceiveError::Flag {
                flag: "--bearer",
                expected: "a token",
            });
        }
        Ok(Credential::Bearer(Secret::new(text)))
    }

    /// `--api-key HEADER:VALUE`.
    pub fn api_key(text: &str) -> Result<Credential, ReceiveError> {
        let bad = || ReceiveError::Flag {
            flag: "--api-key",
            expected: "HEADER:VALUE with a valid header name",
        };
        let (header, value) = text.split_once(':').ok_or_else(bad)?;
        let header = header.trim();
        if value.is_empty() || axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(bad());
        }
        Ok(Credential::ApiKey {
            header: header.to_string(),
            value: Secret::new(value),
        })
    }

    /// Whether `headers` carry this credential (compared in constant time).
    fn accepts(&self, headers: &HeaderMap) -> bool {
        let got = |name: &str| {
            headers
                .get(name)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default()
        };
        match self {
            Credential::Basic { username, password } => {
                let expected = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{}", password.expose()))
                );
                same(expected.as_bytes(), &got("authorization"))
            }
            Credential::Bearer(token) => {
                let expected = format!("Bearer {}", token.expose());
                same(expected.as_bytes(), &got("authorization"))
            }
            Credential::ApiKey { header, value } => same(value.expose().as_bytes(), &got(header)),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Credential::Basic { .. } => "basic",
            Credential::Bearer(_) => "bearer",
            Credential::ApiKey { .. } => "api key",
        }
    }
}

/// Equal, in time independent of where the bytes differ.
fn same(expected: &[u8], got: &[u8]) -> bool {
    expected.len() == got.len()
        && expected
            .iter()
            .zip(got)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// What a request must carry to be accepted: every credential, and a
/// signature by one of the verifier's keys.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    /// Signatures to verify; `None` = not checked.
    pub verifier: Option<Verifier>,
    /// Credentials to require.
    pub credentials: Vec<Credential>,
}

/// `walhook receive`'s signature flags: the same settings as an endpoint's
/// `signing` section.
#[derive(Debug, Clone, Default)]
pub struct SignatureFlags {
    /// `--format`.
    pub format: SigningFormat,
    /// `--secret`, repeated while rotating; none = signatures are not checked.
    pub secrets: Vec<String>,
    /// `--header` ("hmac").
    pub header: Option<String>,
    /// `--algorithm` ("hmac").
    pub algorithm: Option<HmacAlgorithm>,
    /// `--encoding` ("hmac").
    pub encoding: Option<SignatureEncoding>,
    /// `--prefix` ("hmac").
    pub prefix: Option<String>,
    /// `--timestamp-header` ("hmac").
    pub timestamp_header: Option<String>,
}

impl Checks {
    /// The verifier `flags` describe (no secret = signatures are not
    /// checked); a bad secret is named by its `--secret` position.
    pub fn signatures(flags: SignatureFlags) -> Result<Option<Verifier>, ReceiveError> {
        let hmac_only = [
            ("--header", flags.header.is_some()),
            ("--algorithm", flags.algorithm.is_some()),
            ("--encoding", flags.encoding.is_some()),
            ("--prefix", flags.prefix.is_some()),
            ("--timestamp-header", flags.timestamp_header.is_some()),
        ];
        if flags.format == SigningFormat::StandardWebhooks {
            if let Some((flag, _)) = hmac_only.iter().find(|(_, set)| *set) {
                return Err(ReceiveError::Flag {
                    flag,
                    expected: "--format hmac (Standard Webhooks has fixed headers)",
                });
            }
        }
        if flags.secrets.is_empty() {
            if let Some((flag, _)) = hmac_only.iter().find(|(_, set)| *set) {
                return Err(ReceiveError::Flag {
                    flag,
                    expected: "at least one --secret to verify with",
                });
            }
            return Ok(None);
        }
        let signing = Signing {
            format: flags.format,
            secret: Vec::new(),
            include_token: false,
            header: flags.header,
            algorithm: flags.algorithm,
            encoding: flags.encoding,
            prefix: flags.prefix,
            timestamp_header: flags.timestamp_header,
        };
        let format = Format::from_config(&signing).map_err(ReceiveError::Signing)?;
        let keys = Verifier::parse_secrets(&format, &flags.secrets).map_err(|(i, source)| {
            ReceiveError::Secret {
                index: i + 1,
                source,
            }
        })?;
        Verifier::with_format(format, keys)
            .map(Some)
            .map_err(|source| ReceiveError::Secret { index: 1, source })
    }

    /// Why `headers` and `body` are refused, if they are.
    fn refusal(&self, headers: &HeaderMap, body: &[u8]) -> Option<Refused> {
        if let Some(missing) = self.credentials.iter().find(|c| !c.accepts(headers)) {
            return Some(Refused::Credentials(missing.kind()));
        }
        let verifier = self.verifier.as_ref()?;
        verifier
            .verify_headers(headers, body, chrono::Utc::now().timestamp())
            .err()
            .map(Refused::Signature)
    }
}

/// Why a request was answered 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// A required credential is missing or wrong.
    #[error("missing or wrong {0} credentials")]
    Credentials(&'static str),
    /// The signature does not verify.
    #[error(transparent)]
    Signature(VerifyError),
}

/// Why the receiver cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// A flag that does not parse or does not fit the others (its value
    /// is not shown).
    #[error("{flag}: expected {expected}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// What it takes.
        expected: &'static str,
    },
    /// The signature flags do not describe a format (a bad header name,
    /// `--format hmac` without `--header`).
    #[error("--{0}")]
    Signing(#[source] SignerError),
    /// A `--secret` does not parse for the format (the value is not shown).
    #[error("--secret #{index}: {source}")]
    Secret {
        /// 1-based position among the `--secret` flags.
        index: usize,
        /// What is wrong.
        source: SigningError,
    },
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("receiver failed: {0}")]
    Serve(std::io::Error),
}

impl Classify for ReceiveError {
    fn class(&self) -> ErrorClass {
        match self {
            ReceiveError::Flag { .. } | ReceiveError::Signing(_) | ReceiveError::Secret { .. } => {
                ErrorClass::NeedsOperator
            }
            ReceiveError::Bind { .. } | ReceiveError::Serve(_) => ErrorClass::Fatal,
        }
    }
}

/// Counters of what arrived.
#[derive(Debug, Default)]
struct Totals {
    /// Batches accepted.
    batches: AtomicU64,
    /// Records in them.
    records: AtomicU64,
    /// Body bytes.
    bytes: AtomicU64,
    /// Requests refused (bad signature, not a batch).
    rejected: AtomicU64,
}

/// What becomes of the requests a [`Receiver`] lets through.
pub(crate) trait Sink: Send + Sync + 'static {
    /// A request whose signature verified (or that needed none): the number
    /// of records it carried, or why its body is not a walhook batch (the
    /// request is then answered 400).
    fn batch(&self, body: &[u8]) -> Result<u64, serde_json::Error>;

    /// A request answered 401: a credential or its signature did not verify.
    fn refused(&self, _why: &Refused) {}
}

/// A batch as a receiver reads it: the envelope, and each record's JSON
/// exactly as it was sent.
#[derive(Debug, Deserialize)]
pub(crate) struct ReceivedBatch<'a> {
    #[serde(default)]
    pub(crate) strategy: String,
    batch: BatchInfo,
    #[serde(default, borrow)]
    pub(crate) records: Vec<&'a RawValue>,
}

impl<'a> ReceivedBatch<'a> {
    /// Reads a payload; an error says why it is not a walhook batch.
    pub(crate) fn parse(body: &'a [u8]) -> Result<ReceivedBatch<'a>, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// The payload's `batch` object.
#[derive(Debug, Deserialize)]
struct BatchInfo {
    #[serde(default)]
    id: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    first_lsn: String,
    #[serde(default)]
    last_lsn: String,
}

/// A bound receiver: applies its [`Checks`] (401 when one fails), hands
/// the rest to its [`Sink`] (400 when that finds no batch, else 200) and
/// keeps [`Totals`].
pub(crate) struct Receiver {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    checks: Checks,
    sink: Arc<dyn Sink>,
    totals: Arc<Totals>,
}

impl Receiver {
    /// Binds `listen` (port 0 picks a free port).
    pub(crate) async fn bind(
        listen: SocketAddr,
        checks: Checks,
        sink: Arc<dyn Sink>,
    ) -> Result<Receiver, ReceiveError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ReceiveError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(ReceiveError::Serve)?;
        Ok(Receiver {
            listener,
            addr,
            shared: Arc::new(Shared {
                checks,
                sink,
                totals: Arc::default(),
            }),
        })
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it checks signatures.
    fn verifies(&self) -> bool {
        self.shared.checks.verifier.is_some()
    }

    /// What it has received so far (live).
    fn totals(&self) -> Arc<Totals> {
        self.shared.totals.clone()
    }

    /// Answers requests until `shutdown` is cancelled.
    pub(crate) async fn serve(self, shutdown: CancellationToken) -> Result<(), ReceiveError> {
        let app = Router::new()
            .route("/", post(receive))
            .route("/{*path}", post(receive))
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(self.shared);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(ReceiveError::Serve)
    }
}

/// Runs `walhook receive` until `shutdown` is cancelled.
pub async fn run(options: ReceiveOptions, shutdown: CancellationToken) -> Result<(), ReceiveError> {
    let sink: Arc<dyn Sink> = if options.null {
        Arc::new(Count)
    } else {
        Arc::new(Print {
            records: options.records,
        })
    };
    let credentials = options.checks.credentials.len();
    let receiver = Receiver::bind(options.listen, options.checks, sink).await?;
    let addr = receiver.local_addr();
    print_line(&format!("listening on {addr}"));
    tracing::info!(%addr, verify = receiver.verifies(), credentials, "receiver listening");
    let totals = receiver.totals();
    let result = receiver.serve(shutdown).await;
    print_line(&format!(
        "total: {} batches, {} records, {} bytes, {} rejected",
        totals.batches.load(Ordering::Relaxed),
        totals.records.load(Ordering::Relaxed),
        totals.bytes.load(Ordering::Relaxed),
        totals.rejected.load(Ordering::Relaxed),
    ));
    result
}

/// `walhook receive`: one line per batch, or (`--records`) each record's JSON.
struct Print {
    records: bool,
}

impl Sink for Print {
    fn batch(&self, body: &[u8]) -> Result<u64, serde_json::Error> {
        let batch = ReceivedBatch::parse(body)?;
        if self.records {
            let mut out = std::io::stdout().lock();
            for record in &batch.records {
                // A closed stdout only loses the printout, not the delivery.
                let _ = writeln!(out, "{}", record.get());
            }
            let _ = out.flush();
        } else {
            print_line(&format!(
                "strategy={} batch={} size={} first_lsn={} last_lsn={}",
                batch.strategy,
                batch.batch.id,
                batch.batch.size,
                batch.batch.first_lsn,
                batch.batch.last_lsn
            ));
        }
        Ok(batch.batch.size)
    }
}

/// `walhook receive --null`: reads only `batch.size`; anything else counts
/// as a batch of no records.
struct Count;

impl Sink for Count {
    fn batch(&self, body: &[u8]) -> Result<u64, serde_json::Error> {
        Ok(head_size(body).unwrap_or(0))
    }
}

/// `batch.size` of a body, read from its head: the records after it are
/// not parsed, so a megabyte batch is answered at once, as an instant
/// receiver (pg_recvlogical writing to /dev/null, in the benchmarks)
/// would. `None` when the body does not start like a walhook batch.
fn head_size(body: &[u8]) -> Option<u64> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    use std::cell::Cell;

    #[derive(Deserialize)]
    struct SizeMeta {
        size: u64,
    }
    struct Head<'a>(&'a Cell<Option<u64>>);
    impl<'de> Visitor<'de> for Head<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a walhook batch")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "batch" {
                    self.0.set(Some(map.next_value::<SizeMeta>()?.size));
                    // Stop here: the rest of the body is not read.
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for Head<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    let size = Cell::new(None);
    // Stopping early leaves the object unfinished, which the deserializer
    // reports as an error: what counts is whether `batch` was read.
    let _ = Head(&size).deserialize(&mut serde_json::Deserializer::from_slice(body));
    size.get()
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout only loses the printout, not the delivery.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let totals = &shared.totals;
    if let Some(why) = shared.checks.refusal(&headers, &body) {
        totals.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %why, "rejected a request");
        shared.sink.refused(&why);
        return (StatusCode::UNAUTHORIZED, format!("{why}\n"));
    }
    match shared.sink.batch(&body) {
        Ok(records) => {
            totals.batches.fetch_add(1, Ordering::Relaxed);
            totals.records.fetch_add(records, Ordering::Relaxed);
            totals.bytes.fetch_add(
                u64::try_from(body.len()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            (StatusCode::OK, String::new())
        }
        Err(err) => {
            totals.rejected.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::BAD_REQUEST,
                format!("not a walhook batch: {err}\n"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::batch::payload::build;
    use crate::batch::{NoDecoration, QueuedRecord};
    use crate::delivery::signing::SigningKey;
    use crate::lsn::Lsn;

    /// Keeps what it is handed, as the demo's printer does.
    #[derive(Default)]
    struct Keep {
        batches: Mutex<Vec<(String, Vec<String>)>>,
        refused: Mutex<Vec<Refused>>,
    }

    impl Sink for Keep {
        fn batch(&self, body: &[u8]) -> Result<u64, serde_json::Error> {
            let batch = ReceivedBatch::parse(body)?;
            let records = batch.records.iter().map(|r| r.get().to_string()).collect();
            self.batches.lock().unwrap().push((batch.batch.id, records));
            Ok(batch.batch.size)
        }

        fn refused(&self, why: &Refused) {
            self.refused.lock().unwrap().push(why.clone());
        }
    }

    #[tokio::test]
    async fn verifies_then_hands_batches_to_its_sink_and_counts() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sink = Arc::new(Keep::default());
        let checks = Checks {
            verifier: Some(Verifier::new(vec![key.clone()]).unwrap()),
            credentials: vec![],
        };
        let receiver = Receiver::bind(([127, 0, 0, 1], 0).into(), checks, sink.clone())
            .await
            .unwrap();
        assert!(receiver.verifies());
        let url = format!("http://{}/hooks/orders", receiver.local_addr());
        let totals = receiver.totals();
        let stop = CancellationToken::new();
        let served = tokio::spawn(receiver.serve(stop.clone()));

        let record = br#"{"id":"0/16B3748:0","op":"insert","new":{"amount":150.50}}"#;
        let batch = build(
            &Arc::from("s"),
            vec![QueuedRecord::new(Lsn(0x16B_3748), 0, 0, record.to_vec())],
            &NoDecoration,
        );
        let http = reqwest::Client::new();
        let post = |body: Vec<u8>, signed_body: &[u8]| {
            let now = chrono::Utc::now().timestamp();
            http.post(&url)
                .header("webhook-id", batch.id.as_str())
                .header("webhook-timestamp", now.to_string())
                .header("webhook-signature", key.sign(&batch.id, now, signed_body))
                .body(body)
                .send()
        };
        let ok = post(batch.body.to_vec(), &batch.body).await.unwrap();
        assert_eq!(ok.status(), 200);
        // Signed, but changed in transit.
        let changed = post(b"{}".to_vec(), &batch.body).await.unwrap();
        assert_eq!(changed.status(), 401);
        assert!(changed
            .text()
            .await
            .unwrap()
            .contains("no signature matches"));
        // Signed, but not a batch.
        let not_a_batch = post(b"[1]".to_vec(), b"[1]").await.unwrap();
        assert_eq!(not_a_batch.status(), 400);

        stop.cancel();
        served.await.unwrap().unwrap();
        let batches = sink.batches.lock().unwrap();
        assert_eq!(
            *batches,
            vec![(
                batch.id.clone(),
                vec![String::from_utf8(record.to_vec()).unwrap()]
            )],
            "records arrive exactly as sent"
        );
        assert_eq!(sink.refused.lock().unwrap().len(), 1);
        assert_eq!(totals.batches.load(Ordering::Relaxed), 1);
        assert_eq!(totals.records.load(Ordering::Relaxed), 1);
        assert_eq!(
            totals.bytes.load(Ordering::Relaxed),
            batch.body.len() as u64
        );
        assert_eq!(totals.rejected.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn null_counts_batch_size_from_the_head_of_a_body() {
        let record = RawValue::from_string(r#"{"id":"0/1:0"}"#.into()).unwrap();
        let body = serde_json::json!({
            "strategy": "s \"batch\" {",
            "batch": {"id": "x", "size": 3, "first_lsn": "0/1", "last_lsn": "0/1"},
            "records": [record],
        });
        let body = serde_json::to_vec(&body).unwrap();
        assert_eq!(head_size(&body), Some(3));
        // The records are not read: a cut body still counts.
        assert_eq!(head_size(&body[..body.len() - 5]), Some(3));
        for other in [&b"[1]"[..], b"{}", b"{\"batch\":{}}", b"nonsense", b""] {
            assert_eq!(head_size(other), None, "{}", String::from_utf8_lossy(other));
        }
        assert_eq!(Count.batch(b"[1]").unwrap(), 0);
    }
}
