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
use tokio_util::sync::CancellationToken;

use crate::delivery::signing::{SigningError, SigningKey, Verifier};

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
pub struct Totals {
    /// Batches accepted.
    pub batches: AtomicU64,
    /// Records in them.
    pub records: AtomicU64,
    /// Body bytes.
    pub bytes: AtomicU64,
    /// Requests refused (bad signature, not a batch).
    pub rejected: AtomicU64,
}

struct Shared {
    verifier: Option<Verifier>,
    records: bool,
    null: bool,
    totals: Totals,
}

/// The batch fields printed per batch.
#[derive(Deserialize)]
struct BatchLine {
    #[serde(default)]
    strategy: String,
    batch: BatchMeta,
    #[serde(default)]
    records: Vec<Box<serde_json::value::RawValue>>,
}

#[derive(Deserialize)]
struct BatchMeta {
    #[serde(default)]
    id: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    first_lsn: String,
    #[serde(default)]
    last_lsn: String,
}

/// Only the size, for `--null`.
#[derive(Deserialize)]
struct SizeOnly {
    batch: SizeMeta,
}

#[derive(Deserialize)]
struct SizeMeta {
    #[serde(default)]
    size: u64,
}

/// Runs the receiver until `shutdown` is cancelled.
pub async fn run(options: ReceiveOptions, shutdown: CancellationToken) -> Result<(), ReceiveError> {
    let verifier = if options.secrets.is_empty() {
        None
    } else {
        Verifier::new(options.secrets.clone()).ok()
    };
    let shared = Arc::new(Shared {
        verifier,
        records: options.records,
        null: options.null,
        totals: Totals::default(),
    });
    let app = Router::new()
        .route("/", post(receive))
        .route("/{*path}", post(receive))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ReceiveError::Bind {
            addr: options.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ReceiveError::Serve)?;
    print_line(&format!("listening on {addr}"));
    tracing::info!(%addr, verify = shared.verifier.is_some(), "receiver listening");
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(ReceiveError::Serve);
    let totals = &shared.totals;
    print_line(&format!(
        "total: {} batches, {} records, {} bytes, {} rejected",
        totals.batches.load(Ordering::Relaxed),
        totals.records.load(Ordering::Relaxed),
        totals.bytes.load(Ordering::Relaxed),
        totals.rejected.load(Ordering::Relaxed),
    ));
    result
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout only loses the printout, not the delivery.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    if let Some(verifier) = &shared.verifier {
        if let Err(err) = verifier.verify_headers(&headers, &body, now()) {
            shared.totals.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %err, "rejected a request");
            return (StatusCode::UNAUTHORIZED, format!("{err}\n"));
        }
    }
    if shared.null {
        let size = serde_json::from_slice::<SizeOnly>(&body)
            .map(|b| b.batch.size)
            .unwrap_or(0);
        count(&shared.totals, size, body.len());
        return (StatusCode::OK, String::new());
    }
    let batch: BatchLine = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(err) => {
            shared.totals.rejected.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::BAD_REQUEST,
                format!("not a walhook batch: {err}\n"),
            );
        }
    };
    count(&shared.totals, batch.batch.size, body.len());
    if shared.records {
        let mut out = std::io::stdout().lock();
        for record in &batch.records {
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
    (StatusCode::OK, String::new())
}

fn count(totals: &Totals, records: u64, bytes: usize) {
    totals.batches.fetch_add(1, Ordering::Relaxed);
    totals.records.fetch_add(records, Ordering::Relaxed);
    totals
        .bytes
        .fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
}
