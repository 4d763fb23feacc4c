//! `POST /runs/{id}/pause` and `/resume`, and the `?from=` key of a new run.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;

use super::{control, parse_id, AdminState, Reply};

/// `?from=` as the key's column texts: a JSON array (`["eu", "42"]`, one
/// text per primary-key column, in key order) or, for a one-column key, the
/// text itself.
pub(super) fn parse_key(text: &str) -> Result<Vec<Option<String>>, String> {
    if !text.trim_start().starts_with('[') {
        return Ok(vec![Some(text.to_string())]);
    }
    let values: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| {
        format!("bad from: {e}; use a JSON array of the key's columns, e.g. [\"eu\", 42]")
    })?;
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(Some(s)),
            serde_json::Value::Number(n) => Ok(Some(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Some(b.to_string())),
            other => Err(format!(
                "bad from: {other} is not a key column's value (text, number or boolean)"
            )),
        })
        .collect()
}

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

#[cfg(test)]
mod tests {
    use super::parse_key;

    #[test]
    fn a_key_is_its_text_or_a_json_array_of_its_columns() {
        assert_eq!(parse_key("42"), Ok(vec![Some("42".into())]));
        assert_eq!(
            parse_key(r#"["eu", 42]"#),
            Ok(vec![Some("eu".into()), Some("42".into())])
        );
        assert!(parse_key("[null]").is_err());
        assert!(parse_key("[1,").is_err());
    }
}
