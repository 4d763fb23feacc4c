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

/// The slot walhook streams from, as walhook recorded it (the state
/// store's `slots` table): the cluster, and the last position walhook let
/// Postgres confirm. Written before a standby status carries a position,
/// so Postgres never confirms more than `confirmed` for this slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotIdentity {
    pub(crate) slot: String,
    pub(crate) system_id: String,
    pub(crate) timeline: u32,
    pub(crate) confirmed: Lsn,
}

/// How a recorded slot was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossKind {
    /// The slot is gone (dropped).
    Missing,
    /// The server invalidated it (the reason, as [`SlotRow::invalidation`]).
    Invalidated(String),
    /// A slot of that name exists but has confirmed more than walhook ever
    /// let it: it was dropped and created again, not fed by walhook.
    Replaced,
    /// `source.url` reaches another cluster than the one recorded.
    OtherCluster { recorded: String, found: String },
}

impl LossKind {
    /// A label for metrics and `/status`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            LossKind::Missing => "missing",
            LossKind::Invalidated(_) => "invalidated",
            LossKind::Replaced => "replaced",
            LossKind::OtherCluster { .. } => "other_cluster",
        }
    }
}

/// A recorded slot that cannot be streamed from as it was: what happened
/// and which changes walhook can no longer stream (`after`, `through`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLoss {
    pub(crate) slot: String,
    pub(crate) kind: LossKind,
    /// The last position walhook recorded: everything up to it was delivered.
    pub(crate) after: Lsn,
    /// The end of what is lost, when known: a replacing slot's confirmed
    /// position, a new slot's consistent point, else the server's WAL
    /// position when the loss was found (it grows until a slot exists again).
    pub(crate) through: Lsn,
}

impl std::fmt::Display for SlotLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slot = &self.slot;
        let (after, through) = (self.after, self.through);
        match &self.kind {
            LossKind::Missing => write!(
                f,
                "replication slot \"{slot}\" no longer exists (it was dropped after walhook streamed from it): \
                 the changes committed after {after} (through at least {through}) can no longer be streamed"
            ),
            LossKind::Invalidated(reason) => write!(
                f,
                "replication slot \"{slot}\" is {reason}: the changes committed after {after} \
                 (through at least {through}) can no longer be streamed"
            ),
            LossKind::Replaced => write!(
                f,
                "replication slot \"{slot}\" is not the slot walhook streamed from: it has confirmed \
                 {through}, but walhook only ever acknowledged up to {after}, so it was dropped and \
                 created again; the changes committed in ({after}, {through}] are lost"
            ),
            LossKind::OtherCluster { recorded, found } => write!(
                f,
                "source.url reaches another PostgreSQL cluster (system identifier {found}) than the \
                 one walhook streamed slot \"{slot}\" from ({recorded}); none of its changes after \
                 {after} there can be streamed from here"
            ),
        }
    }
}

/// What to do about a [`SlotLoss`] (the fix its refusals name).
pub(crate) const LOSS_FIX: &str = "set [source] on_slot_lost = \"resync\" (walhook then \
     creates a new slot and backfills every strategy), or accept the loss: `walhook teardown -c \
     <config>` (drops the slot and walhook's record of it), start walhook again and re-sync the \
     receivers with runs";

impl LossKind {
    /// The kind [`LossKind::label`] names (a recorded loss).
    pub(crate) fn from_label(label: &str) -> LossKind {
        match label {
            "missing" => LossKind::Missing,
            "replaced" => LossKind::Replaced,
            "other_cluster" => LossKind::OtherCluster {
                recorded: "?".into(),
                found: "?".into(),
            },
            _ => LossKind::Invalidated("invalidated".into()),
        }
    }
}

/// What walhook may do with the slot it is about to stream from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing recorded and no slot: the first start; create it.
    Create,
    /// Nothing recorded, the slot exists (the setup SQL made it): use it.
    Adopt,
    /// The recorded slot, as recorded. `timeline` is the recorded one when
    /// the server's changed (a failover: logged, not refused).
    Recorded { timeline_was: Option<u32> },
    /// Lost: refuse (or, with `on_slot_lost = "resync"`, repair).
    Lost(SlotLoss),
}

/// Judges `found` (the slot's row, `None` when missing) on the server
/// `server` (its WAL at `server_wal`) against what walhook recorded.
/// `shared_record`: `recorded` is the state store's row, read after the
/// slot (every instance on the slot writes it before it acknowledges), so a
/// slot past its position was not fed by walhook. Without it (a process's
/// own memory, which another instance may have overtaken) only a missing
/// or invalidated slot counts as lost.
pub(crate) fn judge(
    slot: &str,
    recorded: Option<&SlotIdentity>,
    found: Option<&SlotRow>,
    server: &ServerIdentity,
    server_wal: Lsn,
    shared_record: bool,
) -> Verdict {
    let Some(recorded) = recorded else {
        return match found {
            None => Verdict::Create,
            Some(found) => match found.invalidation() {
                // Invalidated before walhook recorded it: lost all the same.
                Some(reason) => {
                    let after = found.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
                    Verdict::Lost(SlotLoss {
                        slot: slot.to_string(),
                        kind: LossKind::Invalidated(reason),
                        after,
                        through: server_wal.max(after),
                    })
                }
                None => Verdict::Adopt,
            },
        };
    };
    let lost = |kind, through: Lsn| {
        Verdict::Lost(SlotLoss {
            slot: slot.to_string(),
            kind,
            after: recorded.confirmed,
            through: through.max(recorded.confirmed),
        })
    };
    if recorded.system_id != server.system_id {
        return lost(
            LossKind::OtherCluster {
                recorded: recorded.system_id.clone(),
                found: server.system_id.clone(),
            },
            server_wal,
        );
    }
    let Some(found) = found else {
        return lost(LossKind::Missing, server_wal);
    };
    if let Some(reason) = found.invalidation() {
        return lost(LossKind::Invalidated(reason), server_wal);
    }
    match found.confirmed_flush_lsn {
        Some(confirmed) if shared_record && confirmed > recorded.confirmed => {
            lost(LossKind::Replaced, confirmed)
        }
        _ => Verdict::Recorded {
            timeline_was: (recorded.timeline != server.timeline).then_some(recorded.timeline),
        },
    }
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

/// `DROP_REPLICATION_SLOT "s"` (an invalidated slot, before a new one).
pub(crate) fn drop_command(slot: &str) -> String {
    format!("DROP_REPLICATION_SLOT {}", quote_ident(slot))
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

    fn slot_at(confirmed: &str) -> SlotRow {
        let json = PG15.replace("0/1516C68", confirmed);
        SlotRow::from_rows(&rows(&["slot"], &[Some(&json)]))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_recorded_slot_is_judged_against_what_walhook_recorded() {
        let server = ServerIdentity {
            system_id: "7".into(),
            timeline: 1,
        };
        let recorded = SlotIdentity {
            slot: "s".into(),
            system_id: "7".into(),
            timeline: 1,
            confirmed: Lsn(0x2000),
        };
        let wal = Lsn(0x9000);
        let judge = |found: Option<&SlotRow>, server: &ServerIdentity| {
            judge("s", Some(&recorded), found, server, wal, true)
        };
        // Nothing recorded: create, or adopt what the setup SQL made.
        assert_eq!(
            super::judge("s", None, None, &server, wal, true),
            Verdict::Create
        );
        assert_eq!(
            super::judge("s", None, Some(&slot_at("0/5000")), &server, wal, true),
            Verdict::Adopt
        );
        // Only this process's memory: another instance may have moved on.
        assert_eq!(
            super::judge(
                "s",
                Some(&recorded),
                Some(&slot_at("0/3000")),
                &server,
                wal,
                false
            ),
            Verdict::Recorded { timeline_was: None }
        );
        // Confirmed at or behind the record: the slot walhook fed.
        for confirmed in ["0/1000", "0/2000"] {
            assert_eq!(
                judge(Some(&slot_at(confirmed)), &server),
                Verdict::Recorded { timeline_was: None }
            );
        }
        // A failover: a new timeline is not a loss.
        let promoted = ServerIdentity {
            timeline: 2,
            ..server.clone()
        };
        assert_eq!(
            judge(Some(&slot_at("0/2000")), &promoted),
            Verdict::Recorded {
                timeline_was: Some(1)
            }
        );
        let Verdict::Lost(loss) = judge(Some(&slot_at("0/3000")), &server) else {
            panic!("a slot past the record was not fed by walhook");
        };
        assert_eq!(
            (loss.kind.clone(), loss.after, loss.through),
            (LossKind::Replaced, Lsn(0x2000), Lsn(0x3000))
        );
        let text = loss.to_string();
        assert!(text.contains("(0/2000, 0/3000]"), "{text}");
        let Verdict::Lost(loss) = judge(None, &server) else {
            panic!("missing");
        };
        assert_eq!((loss.kind, loss.through), (LossKind::Missing, wal));
        let lost = PG15.replace("\"reserved\"", "\"lost\"");
        let lost = SlotRow::from_rows(&rows(&["slot"], &[Some(&lost)]))
            .unwrap()
            .unwrap();
        assert!(matches!(
            judge(Some(&lost), &server),
            Verdict::Lost(SlotLoss {
                kind: LossKind::Invalidated(_),
                ..
            })
        ));
        let other = ServerIdentity {
            system_id: "8".into(),
            timeline: 1,
        };
        assert!(matches!(
            judge(Some(&slot_at("0/1000")), &other),
            Verdict::Lost(SlotLoss {
                kind: LossKind::OtherCluster { .. },
                ..
            })
        ));
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
