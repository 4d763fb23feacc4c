//! `walhook teardown`: drops the replication slot, so the server may recycle
//! the WAL it holds, and with `--yes` also the publication and the state
//! schema that `walhook setup` created. `--print-sql` prints all three
//! drops for an administrator instead: the role walhook runs as owns
//! neither the publication nor (after the setup SQL) the state schema, and
//! each refusal names the owner.
//!
//! An active slot means a walhook (or another client) is streaming from it:
//! dropping it under a running instance loses whatever that instance has
//! not delivered, so teardown refuses unless `--force`, which first ends the
//! walsender holding it.

use std::time::Duration;

use tokio_postgres::Client;

use super::OpsError;
use crate::config::Config;
use crate::pg::slot as pg_slot;
use crate::pg::{quote_ident, readable_ident};

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

/// What `--print-sql` prints: the slot, the publication and the state
/// schema, for an administrator to run with psql.
pub fn script(config: &Config) -> Result<String, OpsError> {
    let slot = &config.source.slot;
    let publication = &config.source.publication;
    let schema = &config.state.schema;
    let mut out = format!(
        "-- walhook teardown: review, then run as an administrator with\n\
         --   psql -v ON_ERROR_STOP=1 -f <this file>\n\
         -- Stop walhook first: an active slot cannot be dropped. Changes not yet\n\
         -- delivered are then lost to walhook.\n\n\
         -- the logical replication slot {slot}: the server may recycle the WAL it holds\n\
         {}\n\n\
         -- the publication {publication}\n\
         DROP PUBLICATION IF EXISTS {};\n",
        pg_slot::drop_if_exists_sql(slot),
        quote_ident(publication)
    );
    if let Some(url) = &config.state.url {
        out.push_str(&format!(
            "\n-- The state schema lives in another database ([state] url): connect there,\n\
             -- keeping this session's user and password.\n{}\n",
            super::setup::connect_line(url.expose())?
        ));
    }
    out.push_str(&format!(
        "\n-- walhook's record of the slot (a slot dropped on purpose is not a lost one)\n{}\n",
        crate::state::forget_slot_script_sql(schema, slot)
    ));
    out.push_str(&format!(
        "\n-- the state schema {schema}: dead letters and run history go with it\n\
         DROP SCHEMA IF EXISTS {} CASCADE;\n",
        quote_ident(schema)
    ));
    Ok(out)
}

/// Refuses, naming the owner, when the current role may not drop an
/// object (`owner_sql` selects the owner's name and whether the current
/// role is, or acts as, that owner).
async fn may_drop(
    client: &Client,
    object: &str,
    owner_sql: &str,
    name: &str,
) -> Result<bool, OpsError> {
    let Some(row) = client
        .query_opt(owner_sql, &[&name])
        .await
        .map_err(OpsError::sql(format!("reading the owner of {object}")))?
    else {
        return Ok(false);
    };
    let owner: String = row
        .try_get(0)
        .map_err(OpsError::sql(format!("reading the owner of {object}")))?;
    let acts_as_owner: bool = row
        .try_get(1)
        .map_err(OpsError::sql(format!("reading the owner of {object}")))?;
    let me: String = row
        .try_get(2)
        .map_err(OpsError::sql(format!("reading the owner of {object}")))?;
    if !acts_as_owner {
        return Err(OpsError::Refused(format!(
            "{object} is owned by role {}, and role {} may not drop it: run \
             `walhook teardown --print-sql -c <config>` and have {} (or a superuser) run the SQL \
             with psql -v ON_ERROR_STOP=1 -f",
            readable_ident(&owner),
            readable_ident(&me),
            readable_ident(&owner),
        )));
    }
    Ok(true)
}

/// Runs teardown; returns one line per thing done or kept, for the user.
pub(crate) async fn run(
    client: &Client,
    state: &Client,
    config: &Config,
    opts: TeardownOptions,
) -> Result<Vec<String>, OpsError> {
    let slot = &config.source.slot;
    let mut report = Vec::new();
    let found = pg_slot::read(client, slot).await.map_err(OpsError::slot)?;
    match found {
        None => report.push(format!("slot {slot}: not found (nothing to drop)")),
        Some(row) => {
            let (active, pid) = (row.active, row.active_pid);
            let here: String = client
                .query_one("SELECT current_database()::text", &[])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(OpsError::sql("reading the current database"))?;
            if row.database.as_deref() != Some(here.as_str()) {
                return Err(OpsError::Refused(format!(
                    "slot {slot} belongs to database {}; run teardown with a source.url for that database",
                    row.database.as_deref().unwrap_or("?")
                )));
            }
            if active && !opts.force {
                return Err(OpsError::Refused(format!(
                    "slot {slot} is active (walsender pid {}): stop walhook first, \
                     or pass --force to end that connection and drop the slot anyway \
                     (undelivered changes are then lost)",
                    pid.unwrap_or(0)
                )));
            }
            for pid in drop_slot(client, slot, opts.force).await? {
                report.push(format!("slot {slot}: ended walsender pid {pid}"));
            }
            report.push(format!("slot {slot}: dropped"));
        }
    }

    // Dropped on purpose: the next start creates a slot afresh.
    match state
        .execute(
            &crate::state::forget_slot_sql(&config.state.schema, slot),
            &[],
        )
        .await
    {
        Ok(0) => {}
        Ok(_) => report.push(format!("slot {slot}: walhook's record of it forgotten")),
        Err(err)
            if err.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
                || err.code() == Some(&tokio_postgres::error::SqlState::INVALID_SCHEMA_NAME) => {}
        Err(err) => {
            return Err(OpsError::sql(format!(
                "forgetting slot {slot} in the state schema"
            ))(err))
        }
    }

    let publication = &config.source.publication;
    let schema = &config.state.schema;
    if opts.yes {
        let object = format!("publication {publication}");
        if may_drop(
            client,
            &object,
            "SELECT pubowner::regrole::text, pg_has_role(pubowner, 'USAGE'), current_user::text \
             FROM pg_publication WHERE pubname = $1",
            publication,
        )
        .await?
        {
            client
                .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(publication)))
                .await
                .map_err(OpsError::sql(format!("dropping {object}")))?;
            report.push(format!("{object}: dropped"));
        } else {
            report.push(format!("{object}: not found (nothing to drop)"));
        }
        let object = format!("state schema {schema}");
        if may_drop(
            state,
            &object,
            "SELECT nspowner::regrole::text, pg_has_role(nspowner, 'USAGE'), current_user::text \
             FROM pg_namespace WHERE nspname = $1",
            schema,
        )
        .await?
        {
            state
                .batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(schema)))
                .await
                .map_err(OpsError::sql(format!("dropping {object}")))?;
            report.push(format!(
                "{object}: dropped (dead letters and run history with it)"
            ));
        } else {
            report.push(format!("{object}: not found (nothing to drop)"));
        }
    } else {
        report.push(format!(
            "publication {publication} and state schema {schema}: kept; pass --yes to drop them too"
        ));
    }
    Ok(report)
}

/// Drops the slot, ending whichever walsender holds it first. A walhook
/// that reconnects at once may take the slot again between the two steps,
/// so both are retried until [`RELEASE_TIMEOUT`]. Without `force` a holder
/// is never ended. Returns the pids ended.
async fn drop_slot(client: &Client, slot: &str, force: bool) -> Result<Vec<i32>, OpsError> {
    let deadline = tokio::time::Instant::now() + RELEASE_TIMEOUT;
    let mut ended = Vec::new();
    loop {
        let holder = pg_slot::read(client, slot).await.map_err(OpsError::slot)?;
        let Some(holder) = holder else {
            // Gone already (dropped by someone else, or temporary).
            return Ok(ended);
        };
        let pid = holder.active_pid;
        if let Some(pid) = pid {
            if !force {
                return Err(OpsError::Refused(format!(
                    "slot {slot} became active (walsender pid {pid}); stop walhook first or pass --force"
                )));
            }
            client
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .map_err(OpsError::sql("ending the walsender holding the slot"))?;
            if !ended.contains(&pid) {
                ended.push(pid);
            }
            // The backend exits asynchronously; give it a moment.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
        {
            Ok(_) => return Ok(ended),
            Err(err)
                if err.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                    && tokio::time::Instant::now() < deadline =>
            {
                continue
            }
            Err(err)
                if err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                return Err(OpsError::NeedsAdmin {
                    what: format!(
                        "dropping slot {slot} (needs the REPLICATION attribute or superuser)"
                    ),
                    source: err,
                });
            }
            Err(err) => {
                return Err(OpsError::sql(format!("dropping slot {slot}"))(err));
            }
        }
    }
}
