//! The slot's WAL safety as metrics: `pg_replication_slots.wal_status`
//! and `safe_wal_size`, and `max_slot_wal_keep_size`. Lag alone cannot
//! tell how close a slot is to invalidation (that depends on the server's
//! keep size), so the alert rules compare `safe_wal_size` with the limit.
//!
//! One ordinary SQL connection per poll, closed at once: a connection held
//! between polls would keep a smart shutdown of the server waiting.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::names;
use crate::config::Secret;
use crate::pg;

/// How often the slot is read.
const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The values `wal_status` takes; each gets a 0/1 series.
const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// What one poll read.
#[derive(Debug, Clone, PartialEq)]
struct SlotWal {
    wal_status: Option<String>,
    safe_wal_bytes: Option<i64>,
    keep_limit_bytes: i64,
}

/// Reads the slot's WAL status every few seconds into the gauges, until
/// `shutdown`. Failures (server down, slot not created yet) leave the last
/// values and are logged at debug level: the source reports them.
pub(crate) fn spawn_slot_watch(
    url: Secret,
    slot: String,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match poll(url.expose(), &slot).await {
                Ok(Some(wal)) => record(&wal),
                Ok(None) => tracing::debug!(slot = %slot, "slot not there yet"),
                Err(err) => {
                    tracing::debug!(slot = %slot, error = %err, "reading the slot's WAL status failed")
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    })
}

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Connect(#[from] pg::ConnectError),
    #[error("querying pg_replication_slots: {}", pg::describe(.0))]
    Query(#[source] tokio_postgres::Error),
}

async fn poll(url: &str, slot: &str) -> Result<Option<SlotWal>, PollError> {
    let client = pg::connect(url, "walhook-slot-watch").await?;
    let row = client
        .query_opt(
            "SELECT s.wal_status::text, s.safe_wal_size, \
                    (SELECT CASE WHEN setting::bigint < 0 THEN -1 \
                                 ELSE setting::bigint * CASE unit WHEN 'kB' THEN 1024 \
                                      WHEN 'MB' THEN 1048576 WHEN 'GB' THEN 1073741824 ELSE 1 END END \
                     FROM pg_settings WHERE name = 'max_slot_wal_keep_size') \
             FROM pg_replication_slots s WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(PollError::Query)?;
    Ok(row.map(|row| SlotWal {
        wal_status: row.get(0),
        safe_wal_bytes: row.get(1),
        keep_limit_bytes: row.get::<_, Option<i64>>(2).unwrap_or(-1),
    }))
}

fn record(wal: &SlotWal) {
    for status in WAL_STATUSES {
        let on = wal.wal_status.as_deref() == Some(status);
        metrics::gauge!(names::SLOT_WAL_STATUS, "status" => status).set(if on { 1.0 } else { 0.0 });
    }
    if let Some(safe) = wal.safe_wal_bytes {
        metrics::gauge!(names::SLOT_SAFE_WAL_BYTES).set(safe as f64);
    }
    metrics::gauge!(names::SLOT_WAL_KEEP_LIMIT_BYTES).set(wal.keep_limit_bytes as f64);
}
