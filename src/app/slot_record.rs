//! The slot record's writer: the other end of the source's record gate
//! (`source/gate.rs`). It writes what the source wants to acknowledge to
//! the state store's `slots` row (with the slot's cluster and any loss
//! being repaired) and then lets the source send it: at most one write in
//! flight, spaced by the gate's [`Cadence`]. A failed write is retried with
//! backoff; meanwhile the source keeps streaming and delivering, only the
//! confirmed position waits.
//!
//! Where the state lives in the source database (no `[state] url`), the
//! write goes over the slot watcher's long-lived connection: the position
//! is recorded every 10 s even while idle (it follows the server's WAL
//! end), and the state store, which closes its connection after 5 s
//! unused, would otherwise reconnect for each of those writes.

use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::pg::slot::SlotIdentity;
use crate::source::{Backoff, Cadence, CatalogQueryError, GateRecorder, Recorded, SlotWatchHandle};
use crate::state::{record_slot_sql, RecordedLoss, StateError, StateStore};

/// Where the record is written.
#[derive(Debug)]
pub(super) enum Sink {
    /// The state store (`[state] url` names another database).
    Store(StateStore),
    /// The slot watcher's connection to the source database, where the
    /// state schema `schema` lives.
    Watcher {
        watcher: SlotWatchHandle,
        schema: String,
    },
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Store(#[from] StateError),
    #[error(transparent)]
    Watcher(#[from] CatalogQueryError),
}

impl Sink {
    async fn write(
        &self,
        identity: &SlotIdentity,
        loss: Option<&RecordedLoss>,
    ) -> Result<(), WriteError> {
        match self {
            Sink::Store(store) => Ok(store.record_slot(identity, loss).await?),
            Sink::Watcher { watcher, schema } => {
                watcher
                    .query(record_slot_sql(schema, identity, loss))
                    .await?;
                Ok(())
            }
        }
    }
}

/// Writes until `stop` (after the source stopped: its last status waits
/// for the last write) or until the source is gone.
pub(super) fn spawn(sink: Sink, recorder: GateRecorder, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(run(sink, recorder, stop))
}

async fn run(sink: Sink, recorder: GateRecorder, stop: CancellationToken) {
    let GateRecorder {
        mut wanted,
        recorded,
    } = recorder;
    let mut cadence = Cadence::default();
    let mut written = Recorded::default();
    let mut backoff = Backoff::default();
    loop {
        let current = wanted.borrow_and_update().clone();
        let due = cadence.due(&current, &written);
        let Some(identity) = current.identity.clone().filter(|_| due.is_some()) else {
            // Nothing to write until the source wants more.
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                changed = wanted.changed() => if changed.is_err() { return },
            }
            continue;
        };
        if let Some(due) = due.filter(|d| *d > Instant::now()) {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                // What is wanted may become more urgent meanwhile.
                changed = wanted.changed() => if changed.is_err() { return },
                _ = sleep_until(due) => {}
            }
            continue;
        }
        cadence.started(Instant::now());
        let loss = current.loss.as_ref().map(RecordedLoss::of);
        match sink.write(&identity, loss.as_ref()).await {
            Ok(()) => {
                backoff.reset();
                recorded.send_if_modified(|r| {
                    let moved = identity.confirmed > *r;
                    if moved {
                        *r = identity.confirmed;
                    }
                    moved
                });
                written = Recorded {
                    identity: Some(identity),
                    loss: current.loss,
                };
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "cannot record the slot's position; the confirmed position waits for it");
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
