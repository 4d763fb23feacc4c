//! The slot's WAL safety as metrics: `pg_replication_slots.wal_status`
//! and `safe_wal_size`, and `max_slot_wal_keep_size`. Lag alone cannot
//! tell how close a slot is to invalidation (that depends on the server's
//! keep size), so the alert rules compare `safe_wal_size` with the limit.
//!
//! The values come from the one slot watcher (`source::SlotWatcher`):
//! this task only turns each of its reads into gauges.

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::names;
use crate::pg::slot::{SlotRead, SlotWatch};
use crate::source::LossReport;

/// The values `wal_status` takes; each gets a 0/1 series.
const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// Sets the slot gauges from each read of `slot`, and counts each loss
/// the source reports, until `shutdown`. Reads without the slot (not
/// created yet) leave the last values.
pub(crate) fn spawn_slot_metrics(
    mut slot: watch::Receiver<SlotWatch>,
    mut losses: watch::Receiver<Option<LossReport>>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        count_loss(losses.borrow_and_update().as_ref());
        loop {
            if let Some(read) = slot.borrow_and_update().read.as_ref() {
                record(read);
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                changed = losses.changed() => match changed {
                    Ok(()) => count_loss(losses.borrow_and_update().as_ref()),
                    Err(_) => break,
                },
                changed = slot.changed() => if changed.is_err() { break },
            }
        }
    })
}

fn count_loss(report: Option<&LossReport>) {
    if let Some(report) = report {
        let outcome = if report.repaired {
            "resynced"
        } else {
            "refused"
        };
        metrics::counter!(names::SLOT_LOSSES_TOTAL, "kind" => report.loss.kind.label(), "outcome" => outcome)
            .increment(1);
    }
}

fn record(read: &SlotRead) {
    let Some(row) = &read.slot else {
        return;
    };
    for status in WAL_STATUSES {
        let on = row.wal_status.as_deref() == Some(status);
        metrics::gauge!(names::SLOT_WAL_STATUS, "status" => status).set(if on { 1.0 } else { 0.0 });
    }
    if let Some(safe) = row.safe_wal_size {
        metrics::gauge!(names::SLOT_SAFE_WAL_BYTES).set(safe as f64);
    }
    metrics::gauge!(names::SLOT_WAL_KEEP_LIMIT_BYTES).set(read.keep_limit_bytes as f64);
}
