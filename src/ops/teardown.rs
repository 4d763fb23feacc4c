//! `walhook teardown`: drops the replication slot, so the server may recycle
//! the WAL it holds, and with `--yes` also the publication and the state
//! schema that `walhook setup` created.
//!
//! An active slot means a walhook (or another client) is streaming from it:
//! dropping it under a running instance loses whatever that instance has
//! not delivered, so teardown refuses unless `--force`, which first ends the
//! walsender holding it.

use std::time::Duration;

use tokio_postgres::Client;

use super::{ident, OpsError};
use crate::config::Config;

/// How long `--force` waits for the terminated walsender to let go.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Teardown options.
#[derive(Debug, Clone, Copy, Default)]
pub struct TeardownOptions {
    /// Drop the slot even while it is active (ends the walsender holding it).
    pub force: bool,
    /// Also drop the publication and the state schema (dead letters, runs).
    pub yes: bool,
}

/// Runs teardown; returns one line per thing done or kept, for the user.
pub async fn run(
    client: &Client,
    config: &Config,
    opts: TeardownOptions,
) -> Result<Vec<String>, OpsError> {
    let slot = &config.source.slot;
    let mut report = Vec::new();
    let row = client
        .query_opt(
            "SELECT active, active_pid, database = current_database() AS here, database \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(OpsError::sql("reading pg_replication_slots"))?;
    match row {
        None => report.push(format!("slot {slot}: not found (nothing to drop)")),
        Some(row) => {
            let active: bool = row.try_get(0).map_err(OpsError::sql("reading the slot"))?;
            let pid: Option<i32> = row.try_get(1).map_err(OpsError::sql("reading the slot"))?;
            let here: Option<bool> = row.try_get(2).map_err(OpsError::sql("reading the slot"))?;
            let database: Option<String> =
                row.try_get(3).map_err(OpsError::sql("reading the slot"))?;
            if here != Some(true) {
                return Err(OpsError::Refused(format!(
                    "slot {slot} belongs to database {}; run teardown with a source.url for that database",
                    database.as_deref().unwrap_or("?")
                )));
            }
            if active {
                let pid = pid.unwrap_or(0);
                if !opts.force {
                    return Err(OpsError::Refused(format!(
                        "slot {slot} is active (walsender pid {pid}): stop walhook first, \
                         or pass --force to end that connection and drop the slot anyway \
                         (undelivered changes are then lost)"
                    )));
                }
                client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(OpsError::sql("ending the walsender holding the slot"))?;
                wait_released(client, slot).await?;
                report.push(format!("slot {slot}: ended walsender pid {pid}"));
            }
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[slot])
                .await
                .map_err(OpsError::sql(format!("dropping slot {slot}")))?;
            report.push(format!("slot {slot}: dropped"));
        }
    }

    let publication = &config.source.publication;
    if opts.yes {
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                ident(publication)
            ))
            .await
            .map_err(OpsError::sql(format!("dropping publication {publication}")))?;
        report.push(format!("publication {publication}: dropped"));
        client
            .batch_execute("DROP SCHEMA IF EXISTS walhook CASCADE")
            .await
            .map_err(OpsError::sql("dropping the state schema walhook"))?;
        report.push("state schema walhook: dropped (dead letters and run history with it)".into());
    } else {
        report.push(format!(
            "publication {publication} and state schema walhook: kept; pass --yes to drop them too"
        ));
    }
    Ok(report)
}

/// Waits until the slot is no longer active (after pg_terminate_backend).
async fn wait_released(client: &Client, slot: &str) -> Result<(), OpsError> {
    let deadline = tokio::time::Instant::now() + RELEASE_TIMEOUT;
    loop {
        let row = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(OpsError::sql("reading pg_replication_slots"))?;
        let active = match row {
            Some(row) => row.try_get::<_, bool>(0).unwrap_or(true),
            None => false,
        };
        if !active {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(OpsError::Refused(format!(
                "slot {slot} is still active {RELEASE_TIMEOUT:?} after ending its walsender; \
                 is a walhook reconnecting? stop it and try again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
