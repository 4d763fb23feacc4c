//! What Postgres has confirmed: the slot's `confirmed_flush_lsn`, read
//! from `pg_replication_slots` every few seconds.
//!
//! Why not walhook's own acked position: an acknowledgement walhook has
//! decided on may not have reached the server yet (standby status is sent
//! every 100 ms at most), and a process killed in between restarts from
//! what the server has. Stored batch boundaries must outlive every position
//! a restart could stream from again, so they are forgotten only behind
//! what the server reports.
//!
//! Each read opens its own short connection: a session held open between
//! reads would keep a smart shutdown of the server waiting for ever.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::lsn::Lsn;
use crate::pg;

/// How often the slot is read.
const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Reads the confirmed position of `slot` through `url` until `stop`; the
/// receiver starts at `Lsn::ZERO` (nothing known) and only moves forward.
/// Errors (the database restarting, the slot not there yet) are logged at
/// debug and retried at the next tick.
pub(crate) fn watch_confirmed(
    url: String,
    slot: String,
    stop: CancellationToken,
) -> (watch::Receiver<Lsn>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Lsn::ZERO);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let connected = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                c = pg::connect(&url, "walhook-checkpoint") => c,
            };
            let client = match connected {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the slot's confirmed position");
                    continue;
                }
            };
            let read = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                read = confirmed_flush(&client, &slot) => read,
            };
            drop(client);
            match read {
                Ok(Some(lsn)) => {
                    tx.send_if_modified(|current| {
                        let moved = lsn > *current;
                        if moved {
                            *current = lsn;
                        }
                        moved
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %pg::describe(&e), "cannot read the slot's confirmed position");
                }
            }
        }
    });
    (rx, task)
}

/// `confirmed_flush_lsn` of `slot`; `None` when there is no such slot (or
/// it has no confirmed position yet).
async fn confirmed_flush(
    client: &Client,
    slot: &str,
) -> Result<Option<Lsn>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|text| text.parse().ok()))
}
