//! `POST /runs/{id}/pause` and `/resume`.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;

use super::{control, parse_id, AdminState, Reply};

pub(super) async fn pause_run(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let control = control(&state, &headers)?;
    let id = parse_id(&id)?;
    let run = control
        .pause_run(id)
        .await
        .map_err(IntoResponse::into_response)?;
    tracing::info!(run = id, "run paused by the admin API");
    Ok(Json(run).into_response())
}

pub(super) async fn resume_run(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let control = control(&state, &headers)?;
    let id = parse_id(&id)?;
    let run = control
        .resume_run(id)
        .await
        .map_err(IntoResponse::into_response)?;
    tracing::info!(run = id, "run resumed by the admin API");
    Ok(Json(run).into_response())
}
