//! The replication slot as every part of walhook reads it: one row type
//! ([`SlotRow`]), the statements that read, create and drop a slot, and
//! [`SlotWatch`], what the one slot watcher publishes.
//!
//! Why one row type read as `to_jsonb(pg_replication_slots)`: the view
//! gains columns with each PostgreSQL version (14 and 15: `wal_status`,
//! `safe_wal_size`; 16: `conflicting`; 17: `invalidation_reason`,
//! `failover`, `synced`), and a JSON row lets one query and one parser
//! serve 14 to 18 (a column a server lacks is `None`). Every value arrives
//! as text, so the same statements run on an ordinary connection
//! ([`read`]) and on a walsender-mode replication connection, which
//! speaks only the simple query protocol.
//!
//! The slot watcher (`source::SlotWatcher`) reads [`watch_sql`] every few
//! seconds on ONE long-lived replication-mode connection and publishes a
//! [`SlotWatch`] on a `tokio::sync::watch` channel; the checkpoint's
//! confirmed position, the slot metrics, `/status` and the loss detection
//! read that channel instead of opening connections of their own. It lives
//! in `source/` because it uses the source's replication connection: a
//! walsender session does not hold up a smart shutdown of the server (an
//! ordinary session would, for as long as it stays open) and takes a
//! `max_wal_senders` entry rather than a client connection slot.
//!
//! Other periodic catalog reads belong on that same connection rather than
//! on a connection of their own: `SlotWatcher::query(sql)` runs one
//! statement there between two slot reads and returns its [`TextRows`]
//! (write the statement with [`super::quote_literal`]: no parameters in the
//! simple query protocol). A caller keeps its own interval and calls it;
//! while the watcher is reconnecting the call fails at once, so a reader
//! simply tries again at its next tick.

use std::time::SystemTime;

use serde::Deserialize;

use super::quote::{quote_ident, quote_literal};
use super::rows::TextRows;
use crate::lsn::Lsn;

/// One row of `pg_replication_slots`, on any PostgreSQL from 14 to 18.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct SlotRow {
    pub(crate) slot_name: String,
    pub(crate) plugin: Option<String>,
    pub(crate) slot_type: String,
    pub(crate) database: Option<String>,
    #[serde(default)]
    pub(crate) temporary: bool,
    pub(crate) active: bool,
    pub(crate) active_pid: Option<i32>,
    #[serde(default, deserialize_with = "lsn")]
    pub(crate) restart_lsn: Option<Lsn>,
    #[serde(default, deserialize_with = "lsn")]
    pub(crate) confirmed_flush_lsn: Option<Lsn>,
    /// reserved, extended, unreserved or lost.
    #[serde(default)]
    pub(crate) wal_status: Option<String>,
    /// Bytes of WAL the server may still write before the slot risks
    /// invalidation; `None` while `max_slot_wal_keep_size = -1`.
    #[serde(default)]
    pub(crate) safe_wal_size: Option<i64>,
    /// PostgreSQL 16+: invalidated by a conflict with recovery.
    #[serde(default)]
    pub(crate) conflicting: Option<bool>,
    /// PostgreSQL 17+: why the slot was invalidated (`wal_removed`,
    /// `rows_removed`, `wal_level_insufficient`; 18: `idle_timeout`).
    #[serde(default)]
    pub(crate) invalidation_reason: Option<String>,
    /// PostgreSQL 17+: a failover slot.
    #[serde(default)]
    pub(crate) failover: Option<bool>,
}

fn lsn<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Lsn>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| t.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// A slot row that does not parse (a server answering something else).
#[derive(Debug, thiserror::Error)]
#[error("pg_replication_slots returned a row walhook cannot read: {0}")]
pub struct MalformedSlot(String);

impl SlotRow {
    /// The row of [`row_sql`] or [`watch_sql`] (column `slot`): `None` when
    /// there is no such slot.
    pub(crate) fn from_rows(rows: &TextRows) -> Result<Option<SlotRow>, MalformedSlot> {
        let Some(json) = rows.get(0, "slot") else {
            return Ok(None);
        };
        serde_json::from_str(json)
            .map(Some)
            .map_err(|e| MalformedSlot(e.to_string()))
    }

    /// Why the server invalidated this slot, when it has: the WAL it
    /// needed was removed (`wal_status = lost`), or (16+) a conflict or
    /// (17+) any invalidation reason. Such a slot can never stream again.
    pub(crate) fn invalidation(&self) -> Option<String> {
        if let Some(reason) = &self.invalidation_reason {
            return Some(match reason.as_str() {
                "wal_removed" => "invalidated (wal_removed: the WAL it needed was removed, usually by max_slot_wal_keep_size)".into(),
                "rows_removed" => "invalidated (rows_removed: the primary removed catalog rows it needed; hot_standby_feedback off?)".into(),
                "wal_level_insufficient" => "invalidated (wal_level_insufficient: the primary's wal_level is no longer logical)".into(),
                "idle_timeout" => "invalidated (idle_timeout: unused longer than idle_replication_slot_timeout)".into(),
                other => format!("invalidated ({other})"),
            });
        }
        if self.wal_status.as_deref() == Some("lost") {
            return Some(
                "lost (wal_status = lost: the WAL it needed was removed, usually by max_slot_wal_keep_size)"
                    .into(),
            );
        }
        if self.conflicting == Some(true) {
            return Some("invalidated (conflicting = true: a conflict with recovery)".into());
        }
        None
    }

    /// Why this slot cannot feed walhook in `database`, if it cannot.
    pub(crate) fn unusable_reason(&self, database: &str) -> Option<String> {
        if self.slot_type != "logical" {
            return Some(format!(
                "it is a {} slot; walhook needs a logical slot with the pgoutput plugin",
                self.slot_type
            ));
        }
        if self.plugin.as_deref() != Some("pgoutput") {
            return Some(format!(
                "it uses the output plugin {:?}; walhook needs pgoutput (drop it and run walhook setup)",
                self.plugin.as_deref().unwrap_or("")
            ));
        }
        if self.database.as_deref() != Some(database) {
            return Some(format!(
                "it belongs to database {:?}, but source.url connects to {database:?}",
                self.database.as_deref().unwrap_or("")
            ));
        }
        None
    }
}

/// The cluster a connection reached, as `IDENTIFY_SYSTEM` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerIdentity {
    /// The system identifier: the same on a primary and its physical
    /// standbys, different for any other cluster.
    pub(crate) system_id: String,
    /// The timeline: it changes at each promotion.
    pub(crate) timeline: u32,
}

/// What the slot watcher last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRead {
    /// When.
    pub(crate) at: SystemTime,
    /// The slot's row; `None`: there is no such slot.
    pub(crate) slot: Option<SlotRow>,
    /// `max_slot_wal_keep_size` in bytes (-1 = unlimited).
    pub(crate) keep_limit_bytes: i64,
    /// The server's WAL position (the replay position on a standby).
    pub(crate) server_wal: Option<Lsn>,
    /// The cluster the watcher's connection reached.
    pub(crate) server: ServerIdentity,
}

/// What the slot watcher publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SlotWatch {
    /// The latest read; `None` before the first.
    pub(crate) read: Option<SlotRead>,
    /// Why the latest attempt failed (connecting or reading); cleared by
    /// the next read.
    pub(crate) error: Option<String>,
}

/// `max_slot_wal_keep_size` in bytes, -1 when unlimited (one expression
/// for the watcher and `check`).
const KEEP_LIMIT_BYTES: &str = "(SELECT CASE WHEN setting::bigint < 0 THEN -1 \
     ELSE setting::bigint * CASE unit WHEN 'kB' THEN 1024 WHEN 'MB' THEN 1048576 \
     WHEN 'GB' THEN 1073741824 ELSE 1 END END \
     FROM pg_settings WHERE name = 'max_slot_wal_keep_size')";

/// The server's WAL position: the insert position on a primary, the
/// replay position on a standby.
const SERVER_WAL: &str = "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
     ELSE pg_current_wal_lsn() END)";

/// `slot`'s row as JSON in column `slot`; no row when there is no such slot.
pub(crate) fn row_sql(slot: &str) -> String {
    format!(
        "SELECT to_jsonb(s)::text AS slot FROM pg_replication_slots s WHERE s.slot_name = {}",
        quote_literal(slot)
    )
}

/// One row: `slot` (the JSON row, NULL when there is no such slot),
/// `keep_limit_bytes` and `server_wal`: everything the watcher publishes
/// in one round trip.
pub(crate) fn watch_sql(slot: &str) -> String {
    format!(
        "SELECT (SELECT to_jsonb(s)::text FROM pg_replication_slots s WHERE s.slot_name = {}) AS slot, \
         {KEEP_LIMIT_BYTES}::text AS keep_limit_bytes, {SERVER_WAL}::text AS server_wal",
        quote_literal(slot)
    )
}

/// Parses the row of [`watch_sql`] (the identity comes from the connection).
pub(crate) fn parse_watch(
    rows: &TextRows,
    server: ServerIdentity,
    at: SystemTime,
) -> Result<SlotRead, MalformedSlot> {
    let slot = SlotRow::from_rows(rows)?;
    Ok(SlotRead {
        at,
        slot,
        keep_limit_bytes: rows
            .get(0, "keep_limit_bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1),
        server_wal: rows.get(0, "server_wal").and_then(|v| v.parse().ok()),
        server,
    })
}

/// How many slots the server has (`check`'s headroom).
pub(crate) const COUNT_SQL: &str = "SELECT count(*)::text AS n FROM pg_replication_slots";

/// The physical slots' names, sorted (`check`'s failover fix).
pub(crate) const PHYSICAL_NAMES_SQL: &str =
    "SELECT slot_name::text AS name FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1";

/// SQL that creates `slot` (pgoutput) unless it exists, returning its
/// name and consistent point (`walhook setup`).
pub(crate) fn create_sql(slot: &str) -> String {
    format!(
        "SELECT slot_name, lsn AS consistent_point\n\
         FROM pg_create_logical_replication_slot({0}, 'pgoutput')\n\
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {0});",
        quote_literal(slot)
    )
}

/// SQL that drops `slot` when it exists in the current database
/// (`teardown --print-sql`, `sql/teardown.sql`).
pub(crate) fn drop_if_exists_sql(slot: &str) -> String {
    format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots\n\
         WHERE slot_name = {} AND database = current_database();",
        quote_literal(slot)
    )
}

/// The fix that drops and recreates `slot` (for `check`'s findings).
pub(crate) fn recreate_sql(slot: &str) -> String {
    format!(
        "SELECT pg_drop_replication_slot({0}); SELECT pg_create_logical_replication_slot({0}, 'pgoutput');",
        quote_literal(slot)
    )
}

/// The replication command that creates a pgoutput slot without exporting
/// a snapshot: streaming starts at the slot's consistent point (the legacy
/// spelling works on 10 to 18; FAILOVER needs 17's option list).
pub(crate) fn create_command(slot: &str, failover: bool) -> String {
    if failover {
        return format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'nothing', FAILOVER)",
            quote_ident(slot)
        );
    }
    format!(
        "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
        quote_ident(slot)
    )
}

/// `ALTER_REPLICATION_SLOT "s" (FAILOVER)` (PostgreSQL 17+).
pub(crate) fn alter_failover_command(slot: &str) -> String {
    format!("ALTER_REPLICATION_SLOT {} (FAILOVER)", quote_ident(slot))
}

/// Why reading the slot on an ordinary connection failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotReadError {
    #[error("reading pg_replication_slots failed: {}", super::describe(.0))]
    Query(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Malformed(#[from] MalformedSlot),
}

/// `slot`'s row on an ordinary connection; `None` when there is no such slot.
pub(crate) async fn read(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<SlotRow>, SlotReadError> {
    let rows = TextRows::query(client, &row_sql(slot))
        .await
        .map_err(SlotReadError::Query)?;
    Ok(SlotRow::from_rows(&rows)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(columns: &[&str], values: &[Option<&str>]) -> TextRows {
        TextRows {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: vec![values.iter().map(|v| v.map(str::to_string)).collect()],
        }
    }

    const PG15: &str = r#"{"xmin": null, "active": false, "datoid": "5", "plugin": "pgoutput", "database": "app", "slot_name": "s", "slot_type": "logical", "temporary": false, "two_phase": false, "active_pid": null, "wal_status": "reserved", "restart_lsn": "0/1516C30", "catalog_xmin": "725", "safe_wal_size": null, "confirmed_flush_lsn": "0/1516C68"}"#;

    #[test]
    fn a_row_of_any_version_parses() {
        let slot = SlotRow::from_rows(&rows(&["slot"], &[Some(PG15)]))
            .unwrap()
            .unwrap();
        assert_eq!(slot.confirmed_flush_lsn, Some(Lsn(0x1516C68)));
        assert_eq!(slot.restart_lsn, Some(Lsn(0x1516C30)));
        assert_eq!(slot.unusable_reason("app"), None);
        assert!(slot.unusable_reason("other").unwrap().contains("other"));
        assert_eq!(slot.invalidation(), None);
        assert_eq!(slot.conflicting, None);

        // PostgreSQL 17: invalidation_reason says why.
        let pg17 = PG15.replace(
            "\"xmin\": null",
            "\"conflicting\": false, \"invalidation_reason\": \"wal_removed\", \"failover\": true, \"synced\": false",
        );
        let slot = SlotRow::from_rows(&rows(&["slot"], &[Some(&pg17)]))
            .unwrap()
            .unwrap();
        assert!(slot.invalidation().unwrap().contains("wal_removed"));
        assert_eq!(slot.failover, Some(true));

        // PostgreSQL 14-16: wal_status = lost.
        let lost = PG15.replace("\"reserved\"", "\"lost\"");
        let slot = SlotRow::from_rows(&rows(&["slot"], &[Some(&lost)]))
            .unwrap()
            .unwrap();
        assert!(slot.invalidation().unwrap().contains("lost"));

        let other = PG15.replace("pgoutput", "wal2json");
        let slot = SlotRow::from_rows(&rows(&["slot"], &[Some(&other)]))
            .unwrap()
            .unwrap();
        assert!(slot.unusable_reason("app").unwrap().contains("pgoutput"));

        assert_eq!(SlotRow::from_rows(&TextRows::default()).unwrap(), None);
        assert_eq!(SlotRow::from_rows(&rows(&["slot"], &[None])).unwrap(), None);
        assert!(SlotRow::from_rows(&rows(&["slot"], &[Some("{\"x\": 1}")])).is_err());
    }

    #[test]
    fn the_watch_row_carries_the_limit_and_the_server_position() {
        let server = ServerIdentity {
            system_id: "7".into(),
            timeline: 1,
        };
        let read = parse_watch(
            &rows(
                &["slot", "keep_limit_bytes", "server_wal"],
                &[None, Some("1048576"), Some("0/20")],
            ),
            server.clone(),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(read.slot, None);
        assert_eq!(read.keep_limit_bytes, 1 << 20);
        assert_eq!(read.server_wal, Some(Lsn(0x20)));
        assert_eq!(read.server, server);
    }

    #[test]
    fn statements_quote_the_name() {
        assert!(row_sql("o'k").ends_with("WHERE s.slot_name = 'o''k'"));
        assert!(watch_sql("walhook").contains("s.slot_name = 'walhook'"));
        assert_eq!(
            create_command("walhook", false),
            r#"CREATE_REPLICATION_SLOT "walhook" LOGICAL pgoutput NOEXPORT_SNAPSHOT"#
        );
        assert!(create_command("w", true).ends_with("(SNAPSHOT 'nothing', FAILOVER)"));
        assert_eq!(
            alter_failover_command("w"),
            r#"ALTER_REPLICATION_SLOT "w" (FAILOVER)"#
        );
        assert!(create_sql("w").contains("pg_create_logical_replication_slot('w', 'pgoutput')"));
        assert!(drop_if_exists_sql("w").contains("slot_name = 'w' AND database"));
    }
}
