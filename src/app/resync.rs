//! THE integration point where the backfills that repair a lost slot are
//! started (`[source] on_slot_lost = "resync"`, issue 24 scope 5).
//!
//! What happens before this point (the slot half, done): the source found
//! the recorded slot missing, invalidated, replaced or on another cluster,
//! created (or adopted) a new slot, reported the loss — `(loss.after,
//! loss.through]` is what the old slot can no longer stream — and streams
//! on from `loss.through`; the loss is recorded in the state store's
//! `slots` row (`lost_*`) with the new slot, so a restart before the
//! backfills are under way comes back here.
//!
//! What must happen here (the lead's consistent backfills, issue 24 scope
//! 1): start one consistent backfill per strategy, merged into the live
//! stream from the new slot, and once they are durably registered (their
//! progress in the state store) clear the recorded loss with
//! [`StateStore::clear_slot_loss`]. Until that exists this refuses, so a
//! loss is never hidden: walhook stops with exit code 2 and the message.

use crate::pg::SlotLoss;
use crate::runs::RunManager;
use crate::state::StateStore;

/// Why the repair could not start.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// This build cannot backfill the strategies consistently yet.
    #[error(
        "{loss}\non_slot_lost = \"resync\": walhook streams from a new slot, but this build \
         cannot yet backfill the strategies consistently, so the changes in ({}, {}] would \
         stay missing; walhook stops instead. Fix: `walhook teardown -c <config>` (forgets \
         the lost slot), start walhook again and re-sync the receivers with runs",
        .loss.after,
        .loss.through
    )]
    Unavailable { loss: Box<SlotLoss> },
}

/// Starts the backfills that repair `loss` (see the module doc).
pub(super) async fn start_resync_backfills(
    loss: &SlotLoss,
    _runs: &RunManager,
    _state: &StateStore,
) -> Result<(), ResyncError> {
    Err(ResyncError::Unavailable {
        loss: Box::new(loss.clone()),
    })
}
