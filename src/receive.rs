//! `walhook receive`: a real webhook receiver for people writing one, and a
//! sink for benchmarks.
//!
//! It verifies Standard Webhooks signatures when given secrets (a bad
//! signature, or a timestamp more than five minutes off, gets 401), and
//! prints one line per batch (`--records`: each record's JSON, one per line).
//! `--null` prints nothing per batch and only counts, so the receiver costs
//! as little as possible; the totals are printed when it stops.
//!
//! Its first stdout line is `listening on <addr>`, so scripts and tests can
//! start it on port 0 and read the port.
//!
//! The receiver itself (`Receiver`: HTTP, signature checks, answers,
//! totals) is shared with `walhook demo`, which plugs in its own printer:
//! what happens to a request that passed is a `Sink`'s business.

use std::io::Write;
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

use crate::delivery::signing::{SigningError, SigningKey, Verifier, VerifyError};

/// The largest body accepted.
const BODY_LIMIT: usize = 256 * 1024 * 1024;

/// What `walhook receive` was asked to do.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// The address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Signing secrets (`whsec_…`); empty = signatures are not checked.
    pub secrets: Vec<SigningKey>,
    /// One line per record instead of per batch.
    pub records: bool,
    /// Count only; print totals at the end.
    pub null: bool,
}

/// Why the receiver cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// A `--secret` is not a Standard Webhooks secret (the value is not shown).
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

/// Parses `--secret` values, naming a bad one by position only.
pub fn parse_secrets(secrets: &[String]) -> Result<Vec<SigningKey>, ReceiveError> {
    secrets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            SigningKey::parse(s).map_err(|source| ReceiveError::Secret {
                index: i + 1,
                source,
            })
        })
        .collect()
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

    /// A request answered 401: its signature or timestamp did not verify.
    fn refused(&self, _error: &VerifyError) {}
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

/// A bound receiver: verifies Standard Webhooks signatures when it has
/// secrets (401 otherwise), hands the rest to its [`Sink`] (400 when that
/// finds no batch, else 200) and keeps [`Totals`].
pub(crate) struct Receiver {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    verifier: Option<Verifier>,
    sink: Arc<dyn Sink>,
    totals: Arc<Totals>,
}

impl Receiver {
    /// Binds `listen` (port 0 picks a free port); `secrets` empty = no checks.
    pub(crate) async fn bind(
        listen: SocketAddr,
        secrets: Vec<SigningKey>,
        sink: Arc<dyn Sink>,
    ) -> Result<Receiver, ReceiveError> {
        // Only an empty list is refused, and that means "do not verify".
        let verifier = Verifier::new(secrets).ok();
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
                verifier,
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
        self.shared.verifier.is_some()
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
    let receiver = Receiver::bind(options.listen, options.secrets, sink).await?;
    let addr = receiver.local_addr();
    print_line(&format!("listening on {addr}"));
    tracing::info!(%addr, verify = receiver.verifies(), "receiver listening");
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
        #[derive(Deserialize)]
        struct SizeOnly {
            batch: SizeMeta,
        }
        #[derive(Deserialize)]
        struct SizeMeta {
            #[serde(default)]
            size: u64,
        }
        Ok(serde_json::from_slice::<SizeOnly>(body).map_or(0, |b| b.batch.size))
    }
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
    if let Some(verifier) = &shared.verifier {
        if let Err(err) = verifier.verify_headers(&headers, &body, chrono::Utc::now().timestamp()) {
            totals.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %err, "rejected a request");
            shared.sink.refused(&err);
            return (StatusCode::UNAUTHORIZED, format!("{err}\n"));
        }
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
    use crate::lsn::Lsn;

    /// Keeps what it is handed, as the demo's printer does.
    #[derive(Default)]
    struct Keep {
        batches: Mutex<Vec<(String, Vec<String>)>>,
        refused: Mutex<Vec<VerifyError>>,
    }

    impl Sink for Keep {
        fn batch(&self, body: &[u8]) -> Result<u64, serde_json::Error> {
            let batch = ReceivedBatch::parse(body)?;
            let records = batch.records.iter().map(|r| r.get().to_string()).collect();
            self.batches.lock().unwrap().push((batch.batch.id, records));
            Ok(batch.batch.size)
        }

        fn refused(&self, error: &VerifyError) {
            self.refused.lock().unwrap().push(error.clone());
        }
    }

    #[tokio::test]
    async fn verifies_then_hands_batches_to_its_sink_and_counts() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sink = Arc::new(Keep::default());
        let receiver = Receiver::bind(([127, 0, 0, 1], 0).into(), vec![key.clone()], sink.clone())
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
}
