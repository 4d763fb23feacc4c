//! Replaying a dead letter (`POST /dead-letters/{id}/replay`): one attempt
//! with the strategy's endpoint, outside the strategy's ordered stream, and
//! the dead letter deleted only after a 2xx.
//!
//! The request carries the stored batch id (`webhook-id`), so a receiver
//! that did get the batch after all can de-duplicate it; headers and query
//! parameters are evaluated again by the strategy's templates, and a fresh
//! timestamp and signature are added by the endpoint's security as usual.

use std::sync::Arc;

use super::sender::{AttemptResult, Endpoint};
use crate::batch::{Batch, Decorate};
use crate::lsn::Lsn;
use crate::state::{StateError, StateStore};

/// A strategy a dead letter can be replayed for: its name, endpoint and
/// templates.
pub type ReplayTarget = (String, Arc<Endpoint>, Arc<dyn Decorate>);

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplayOutcome {
    id: i64,
    batch_id: String,
    /// A 2xx came and the dead letter was deleted.
    pub delivered: bool,
    pub status: Option<u16>,
    /// Why the attempt failed (no secrets, no URL).
    pub(crate) error: Option<String>,
}

/// Why a replay could not be attempted.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no dead letter with id {0}")]
    NotFound(i64),
    #[error("dead letter {id} belongs to strategy {strategy:?}, which is not configured")]
    UnknownStrategy { id: i64, strategy: String },
    #[error("dead letter {id}: {reason}")]
    Invalid { id: i64, reason: String },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Sends dead letter `id` once to its strategy's endpoint (found in
/// `targets` by name), with headers and query from the strategy's
/// templates; deletes it on 2xx.
pub async fn replay_dead_letter(
    state: &StateStore,
    id: i64,
    targets: &[ReplayTarget],
) -> Result<ReplayOutcome, ReplayError> {
    let letter = state
        .get_dead_letter(id)
        .await?
        .ok_or(ReplayError::NotFound(id))?;
    let info = &letter.info;
    let (_, endpoint, decorate) = targets
        .iter()
        .find(|(name, _, _)| *name == info.strategy)
        .ok_or_else(|| ReplayError::UnknownStrategy {
            id,
            strategy: info.strategy.clone(),
        })?;
    let invalid = |reason: String| ReplayError::Invalid { id, reason };
    let first_lsn: Lsn = info
        .first_lsn
        .parse()
        .map_err(|e| invalid(format!("{e}")))?;
    let last_lsn: Lsn = info.last_lsn.parse().map_err(|e| invalid(format!("{e}")))?;
    let payload: serde_json::Value = serde_json::from_str(&letter.payload)
        .map_err(|e| invalid(format!("payload is not JSON: {e}")))?;
    let size = payload
        .get("records")
        .and_then(|r| r.as_array())
        .map_or(0, Vec::len);
    let batch = Batch::stored(
        &info.strategy,
        info.batch_id.clone(),
        size,
        first_lsn,
        last_lsn,
        Vec::new(),
        0,
        bytes::Bytes::from(letter.payload.clone().into_bytes()),
        decorate.as_ref(),
    );
    let AttemptResult { status, error, .. } = endpoint.attempt(&batch).await;
    let delivered = status.is_some_and(|s| (200..300).contains(&s));
    if delivered {
        state.delete_dead_letter(id).await?;
        tracing::info!(strategy = %info.strategy, batch_id = %info.batch_id, dead_letter_id = id, "dead letter replayed and deleted");
    } else {
        tracing::warn!(strategy = %info.strategy, batch_id = %info.batch_id, dead_letter_id = id, status, error = error.as_deref().unwrap_or(""), "dead letter replay failed; it stays stored");
    }
    Ok(ReplayOutcome {
        id,
        batch_id: info.batch_id.clone(),
        delivered,
        status,
        error,
    })
}
