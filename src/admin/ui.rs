//! The web console at `/ui`: one HTML page, a script and a stylesheet,
//! embedded in the binary (no CDN, no build step), that polls the JSON
//! routes and calls the token routes the operator would call with curl.
//!
//! ```text
//!  GET /ui, /ui/console.js, /ui/console.css    the page (open)
//!  GET /config                                 the loaded file, secrets masked (open)
//!  GET /endpoints                              each endpoint: up, latency, last status (open)
//!  GET /runs?strategy=&limit=                  the latest runs (token)
//! ```
//!
//! The token never reaches the page's source or a URL: the operator types
//! it into the page once, the script keeps it in `sessionStorage` (this tab
//! only) and sends it in the `Authorization` header. Without a configured
//! token the page shows no buttons (and the API refuses them with 403).
//! The page's Content-Security-Policy allows scripts and styles from this
//! origin only (no inline code), and nothing the admin server answers may
//! be cached.

use std::time::{Duration, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{
    control, rfc3339, text, text_param, AdminState, Reply, StrategyStatus, MAX_NAME_BYTES,
};
use crate::config::Config;
use crate::delivery::{EndpointSnapshot, EndpointStats};
use crate::lsn::Lsn;
use crate::source::SourceStatus;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/console.js");
const STYLE: &str = include_str!("ui/console.css");

/// Scripts, styles and requests from this origin only; no inline code, no
/// frames, no forms posting elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// What the console shows beyond `/status`: the masked configuration and
/// the endpoints' recent attempts. Implemented by [`Console`] for
/// `walhook run`; tests may bring their own.
pub trait ConsoleSource: Send + Sync + 'static {
    /// The loaded configuration with every secret masked.
    fn config(&self) -> Value;
    /// Each endpoint's name and recent attempts, by name.
    fn endpoints(&self) -> Vec<(String, EndpointSnapshot)>;
}

/// The running pipeline's [`ConsoleSource`]; a configuration reload
/// replaces what it shows ([`Console::reconfigure`]).
pub(crate) struct Console(std::sync::Mutex<(Value, Vec<(String, EndpointStats)>)>);

impl Console {
    /// The masked `config` and the `endpoints`' stats handles.
    pub(crate) fn new(config: &Config, endpoints: Vec<(String, EndpointStats)>) -> Console {
        Console(std::sync::Mutex::new((config.masked().clone(), endpoints)))
    }

    /// A reload applied `config`, with these endpoints.
    pub(crate) fn reconfigure(&self, config: &Config, endpoints: Vec<(String, EndpointStats)>) {
        *self.lock() = (config.masked().clone(), endpoints);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Value, Vec<(String, EndpointStats)>)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ConsoleSource for Console {
    fn config(&self) -> Value {
        self.lock().0.clone()
    }

    fn endpoints(&self) -> Vec<(String, EndpointSnapshot)> {
        self.lock()
            .1
            .iter()
            .map(|(name, stats)| (name.clone(), stats.snapshot()))
            .collect()
    }
}

/// A strategy's delivery counters and position, behind the console's
/// rates and lag.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeliveryProgress {
    /// Records in delivered batches.
    pub delivered_records: u64,
    /// Records in dead-lettered batches.
    pub dead_lettered_records: u64,
    /// Commit to delivery of the last delivered batch.
    pub last_lag: Option<Duration>,
    /// Every change of the strategy up to here is delivered.
    pub delivered_lsn: Lsn,
}

/// A strategy's lag: bytes of WAL and seconds behind, both 0 while
/// nothing waits. Bytes count from what the strategy delivered (or what
/// Postgres was told, if later) to the server's WAL end; seconds are the
/// last delivered batch's commit-to-delivery time, or the time since the
/// last delivery when that is longer (nothing went out for a while).
/// Seconds are `None` while records wait and none was ever delivered.
pub(super) fn lag(
    s: &StrategyStatus,
    source: &SourceStatus,
    now: SystemTime,
) -> (u64, Option<f64>) {
    if s.queue_records == 0 && s.in_flight == 0 {
        return (0, Some(0.0));
    }
    let from = s.progress.delivered_lsn.0.max(source.acked_lsn.0);
    let bytes = source.server_wal_end.0.saturating_sub(from);
    let since = s
        .last_success
        .and_then(|at| now.duration_since(at).ok())
        .map(|d| d.as_secs_f64());
    let last = s.progress.last_lag.map(|d| d.as_secs_f64());
    let seconds = match (last, since) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    (bytes, seconds)
}

/// The console's routes (merged into the admin router).
pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/console.js", get(script))
        .route("/ui/console.css", get(style))
        .route("/config", get(config))
        .route("/endpoints", get(endpoints))
}

/// Every admin answer: never cached (status, dead letters and runs change
/// and may need the token), never sniffed, no referrer.
pub(super) async fn no_store(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `{"commands": bool, "config": {…}}`: whether the token routes are on,
/// and the masked file (`null` when this process has none).
async fn config(State(state): State<AdminState>) -> Json<Value> {
    Json(json!({
        "commands": state.token.is_some(),
        "config": state.console.as_ref().map(|c| c.config()),
    }))
}

async fn endpoints(State(state): State<AdminState>) -> Json<Value> {
    let endpoints = state
        .console
        .as_ref()
        .map(|c| c.endpoints())
        .unwrap_or_default();
    Json(
        json!({ "endpoints": endpoints.iter().map(|(n, s)| endpoint_json(n, s)).collect::<Vec<_>>() }),
    )
}

/// Runs `GET /runs` returns when no limit is given, and at most.
const DEFAULT_RUNS: i64 = 20;
const MAX_RUNS: i64 = 100;

/// `?strategy=&limit=` of `GET /runs`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct RunListParams {
    strategy: Option<String>,
    limit: Option<i64>,
}

/// `GET /runs`: `{"runs": [...]}`, the latest first, each as `GET
/// /runs/{id}` shows it (scheduled runs and runs started elsewhere too).
pub(super) async fn list_runs(
    State(state): State<AdminState>,
    headers: HeaderMap,
    params: Result<Query<RunListParams>, QueryRejection>,
) -> Reply {
    let control = control(&state, &headers)?;
    let Query(params) = params.map_err(|err| {
        text(
            StatusCode::BAD_REQUEST,
            format!("{err}; use ?strategy=NAME&limit=N"),
        )
    })?;
    if let Some(strategy) = &params.strategy {
        text_param("strategy", strategy, MAX_NAME_BYTES)?;
    }
    if params.limit.is_some_and(|l| !(1..=MAX_RUNS).contains(&l)) {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("bad limit: use 1 to {MAX_RUNS}"),
        ));
    }
    let runs = control
        .runs(
            params.strategy.as_deref(),
            params.limit.unwrap_or(DEFAULT_RUNS),
        )
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Json(json!({ "runs": runs })).into_response())
}

fn millis(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0)
}

fn endpoint_json(name: &str, s: &EndpointSnapshot) -> Value {
    json!({
        "name": name,
        "up": s.up(),
        "circuit_open": s.circuit_open,
        "attempts": s.attempts,
        "failures": s.failures,
        "consecutive_failures": s.consecutive_failures,
        "last_status": s.last_status,
        "last_error": s.last_error,
        "last_latency_ms": millis(s.last_latency),
        "avg_latency_ms": millis(s.avg_latency),
        "last_attempt": s.last_attempt.map(rfc3339),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::StrategyState;

    fn strategy(queue: u64, in_flight: u64) -> StrategyStatus {
        StrategyStatus {
            name: "orders".into(),
            state: StrategyState::Running,
            queue_records: queue,
            last_success: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100)),
            last_error: None,
            attempts: 0,
            in_flight,
            pause_reason: None,
            progress: DeliveryProgress {
                delivered_records: 5,
                dead_lettered_records: 0,
                last_lag: Some(Duration::from_millis(1500)),
                delivered_lsn: Lsn(0x200),
            },
            ..Default::default()
        }
    }

    #[test]
    fn lag_is_zero_when_nothing_waits_and_counts_from_the_delivered_position() {
        let source = SourceStatus {
            acked_lsn: Lsn(0x100),
            server_wal_end: Lsn(0x1000),
            ..SourceStatus::default()
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(101);
        assert_eq!(lag(&strategy(0, 0), &source, now), (0, Some(0.0)));
        // Waiting: from the strategy's delivered position, and the longer of
        // the last batch's lag (1.5 s) and the time since it (1 s).
        assert_eq!(lag(&strategy(3, 1), &source, now), (0xE00, Some(1.5)));
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(110);
        assert_eq!(lag(&strategy(3, 0), &source, later).1, Some(10.0));
        // Postgres was told more than the strategy delivered: from there.
        let ahead = SourceStatus {
            acked_lsn: Lsn(0x800),
            ..source.clone()
        };
        assert_eq!(lag(&strategy(3, 0), &ahead, now).0, 0x800);
    }
}
