//! The dead-letter endpoints' view of `walhook.dead_letters`: pages for
//! `GET /dead-letters` and one letter with its payload for `GET
//! /dead-letters/{id}`, read through the [`StateStore`]. Replaying goes
//! through [`super::Control`], because it must deliver with the strategy's
//! endpoint.

use serde_json::value::RawValue;
use serde_json::Value;

use crate::state::{DeadLetterInfo, StateError, StateStore};

/// Most rows one list request returns.
pub(super) const MAX_PAGE: i64 = 1000;
/// Rows one list request returns when no limit is given.
const DEFAULT_PAGE: i64 = 100;

/// Which dead letters to list: by strategy, after an id, at most `limit`.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeadLetterQuery {
    /// Only this strategy's.
    pub(crate) strategy: Option<String>,
    /// Only ids above this one (the previous page's `next_after`).
    pub(crate) after: Option<i64>,
    /// Page size, 1 to [`MAX_PAGE`]; default [`DEFAULT_PAGE`].
    pub(crate) limit: Option<i64>,
}

/// One page of dead letters (without payloads).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct DeadLetterPage {
    /// The rows, by id.
    dead_letters: Vec<Value>,
    /// Pass as `after` for the next page; `None` when this was the last.
    next_after: Option<i64>,
}

/// A page of dead letters, oldest first, without payloads.
pub(crate) async fn page(
    store: &StateStore,
    query: &DeadLetterQuery,
) -> Result<DeadLetterPage, StateError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let rows = store
        .list_dead_letters(query.strategy.as_deref(), query.after.unwrap_or(0), limit)
        .await?;
    let next_after = if rows.len() as i64 == limit {
        rows.last().map(|row| row.id)
    } else {
        None
    };
    let dead_letters = rows.iter().map(info_json).collect::<Result<_, _>>()?;
    Ok(DeadLetterPage {
        dead_letters,
        next_after,
    })
}

/// One dead letter with its payload.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Letter {
    #[serde(flatten)]
    info: DeadLetterInfo,
    /// The body exactly as it was sent (key order, number forms, escapes),
    /// embedded as JSON without being parsed and written again.
    payload: Box<RawValue>,
}

/// One dead letter with its payload; `None` when there is no such id.
pub(crate) async fn letter(store: &StateStore, id: i64) -> Result<Option<Letter>, StateError> {
    let Some(letter) = store.get_dead_letter(id).await? else {
        return Ok(None);
    };
    let payload = RawValue::from_string(letter.payload).map_err(malformed)?;
    Ok(Some(Letter {
        info: letter.info,
        payload,
    }))
}

fn info_json(info: &DeadLetterInfo) -> Result<Value, StateError> {
    serde_json::to_value(info).map_err(malformed)
}

fn malformed(err: serde_json::Error) -> StateError {
    StateError::Malformed {
        what: "reading walhook.dead_letters",
        source: err.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_dead_letter_has_the_api_fields() {
        let info = DeadLetterInfo {
            id: 7,
            strategy: "orders".into(),
            batch_id: "msg_1".into(),
            first_lsn: "0/16B3748".into(),
            last_lsn: "0/16B3A10".into(),
            last_status: Some(500),
            last_error: None,
            attempts: 3,
            created_at: "2025-01-02T03:04:05.678901+00:00".into(),
            payload_bytes: 42,
        };
        let json = info_json(&info).expect("json");
        let keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "attempts",
                "batch_id",
                "created_at",
                "first_lsn",
                "id",
                "last_error",
                "last_lsn",
                "last_status",
                "payload_bytes",
                "strategy"
            ]
        );
        assert_eq!(json["last_status"], 500);
        assert_eq!(json["last_error"], Value::Null);
    }
}
