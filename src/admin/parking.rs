//! Parked work over HTTP (DESIGN.md "Parking"):
//!
//! ```text
//!  GET  /strategies/{name}/parked[?since=&until=&limit=]   the parked rows, oldest first
//!  POST /strategies/{name}/hold[?reason=]                  park everything it gets
//!  POST /strategies/{name}/release                         deliver the parked work, then go live
//!  POST /strategies/{name}/dead-letter-head                the oldest failing batch → a dead letter
//! ```
//!
//! All need the token. Rows are read from the state store; holds go to the
//! strategy's worker ([`crate::delivery::HoldHandle`]), which keeps them in
//! `walhook.holds`.

use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::{auth, state_error, store, text, text_param, AdminState, Reply, MAX_NAME_BYTES};
use crate::delivery::WorkerEntry;

/// Most rows one request lists.
const MAX_ROWS: i64 = 1000;
/// Longest hold reason the API takes.
const MAX_REASON_BYTES: usize = 1024;

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/strategies/{name}/parked", get(list))
        .route("/strategies/{name}/hold", post(hold))
        .route("/strategies/{name}/release", post(release))
        .route(
            "/strategies/{name}/dead-letter-head",
            post(dead_letter_head),
        )
}

/// Parses an RFC 3339 time of a query parameter.
// A ready response as the error keeps handlers short; it is cold-path.
#[allow(clippy::result_large_err)]
pub(super) fn time_param(name: &str, value: Option<&str>) -> Result<Option<SystemTime>, Response> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| Some(SystemTime::from(t)))
        .map_err(|_| {
            text(
                StatusCode::BAD_REQUEST,
                format!("bad {name}: use an RFC 3339 time, e.g. 2026-12-07T10:00:00Z"),
            )
        })
}

/// The strategy's worker entry (its live worker, or a removed one still draining).
// A ready response as the error keeps handlers short; it is cold-path.
#[allow(clippy::result_large_err)]
fn worker(state: &AdminState, headers: &HeaderMap, name: &str) -> Result<WorkerEntry, Response> {
    auth::authorize(state.token.as_ref(), headers).map_err(IntoResponse::into_response)?;
    text_param("strategy name", name, MAX_NAME_BYTES)?;
    let workers = state.workers.as_ref().ok_or_else(|| {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable: no live delivery in this process",
        )
    })?;
    workers
        .find(name)
        .ok_or_else(|| text(StatusCode::NOT_FOUND, format!("no strategy named {name:?}")))
}

#[derive(Debug, serde::Deserialize)]
struct ListParams {
    since: Option<String>,
    until: Option<String>,
    limit: Option<i64>,
}

async fn list(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let store = store(&state, &headers)?;
    text_param("strategy name", &name, MAX_NAME_BYTES)?;
    let Query(params) = params.map_err(|err| {
        text(
            StatusCode::BAD_REQUEST,
            format!("{err}; use ?since=RFC3339&until=RFC3339&limit=N"),
        )
    })?;
    let since = time_param("since", params.since.as_deref())?;
    let until = time_param("until", params.until.as_deref())?;
    if params.limit.is_some_and(|l| !(1..=MAX_ROWS).contains(&l)) {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("bad limit: use 1 to {MAX_ROWS}"),
        ));
    }
    let rows = store
        .list_parked(Some(&name), since, until, params.limit.unwrap_or(MAX_ROWS))
        .await
        .map_err(state_error)?;
    Ok(Json(json!({ "strategy": name, "parked": rows })).into_response())
}

#[derive(Debug, serde::Deserialize)]
struct HoldParams {
    reason: Option<String>,
}

async fn hold(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Result<Query<HoldParams>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let entry = worker(&state, &headers, &name)?;
    let Query(params) =
        params.map_err(|err| text(StatusCode::BAD_REQUEST, format!("{err}; use ?reason=TEXT")))?;
    let reason = params
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "held by the admin API".to_string());
    text_param("reason", &reason, MAX_REASON_BYTES)?;
    if entry.status.snapshot().park_limit_bytes == 0 {
        return Err(text(
            StatusCode::CONFLICT,
            format!("strategy {name} does not park (max_parked_bytes = 0): pause it instead"),
        ));
    }
    entry.hold.hold(&reason).await.map_err(state_error)?;
    tracing::info!(strategy = %name, reason = %reason, "strategy held by the admin API");
    Ok(Json(json!({ "strategy": name, "state": "held", "reason": reason })).into_response())
}

async fn release(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let entry = worker(&state, &headers, &name)?;
    entry.hold.release().await.map_err(state_error)?;
    tracing::info!(strategy = %name, "strategy released by the admin API");
    Ok(Json(json!({ "strategy": name, "state": "released" })).into_response())
}

/// The strategy's oldest failing batch (live, parked, or in a worker a
/// reload replaced) becomes a dead letter at once; 409 when none fails.
async fn dead_letter_head(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let entry = worker(&state, &headers, &name)?;
    match entry.retry.dead_letter_head() {
        Some(batch_id) => {
            tracing::warn!(strategy = %name, batch_id = %batch_id, "head batch dead-lettered by the admin API");
            Ok(Json(json!({ "strategy": name, "dead_lettering": batch_id })).into_response())
        }
        None => Err(text(
            StatusCode::CONFLICT,
            format!("no batch of strategy {name} is failing"),
        )),
    }
}
