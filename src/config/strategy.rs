//! `[[strategies]]`: which changes, filtered how, mapped how, sent where.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::de;
use super::template::Template;

/// One strategy: the changes of one table that pass its filters, batched and
/// sent to one endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StrategyConfig {
    /// A unique name (letters, digits, `_` and `-`): in payloads, metrics,
    /// logs and the admin API.
    pub(crate) name: String,
    /// The table, "schema.table" or "table" (schema `public`), spelled as
    /// in the catalog (case-sensitive, no quotes). Exactly one of `table`
    /// and `messages` is required.
    #[serde(default)]
    pub(crate) table: Option<TableName>,
    /// Instead of a table: the logical messages (`pg_logical_emit_message`)
    /// whose prefix starts with this text (the transactional outbox).
    #[serde(default)]
    pub(crate) messages: Option<String>,
    /// Filter for messages (`message.prefix`, `message.content`, `message.transactional`);
    /// absent = every message with the prefix is sent.
    #[serde(default)]
    pub(crate) on_message: Option<String>,
    /// The name of the `[endpoints.NAME]` to send to.
    pub(crate) endpoint: String,
    /// Filter for inserts; present = inserts are sent when it is true
    /// (`"true"` for all). Absent = inserts are not sent.
    #[serde(default)]
    pub(crate) on_insert: Option<String>,
    /// Filter for updates (`new.*`, `old.*`, `changed("col")`); absent = not sent.
    #[serde(default)]
    pub(crate) on_update: Option<String>,
    /// Filter for deletes (`old.*`, `row.*`); absent = not sent.
    #[serde(default)]
    pub(crate) on_delete: Option<String>,
    /// Filter for truncates (`table`, `schema`; no row); absent = not sent.
    #[serde(default)]
    pub(crate) on_truncate: Option<String>,
    /// Most records per request. Default 100.
    #[serde(default = "default_batch_size")]
    pub(crate) batch_size: usize,
    /// Most bytes of records per request (a single larger record still goes,
    /// alone). Default 1048576 (1 MiB).
    #[serde(default = "default_max_batch_bytes")]
    pub(crate) max_batch_bytes: usize,
    /// How long a batch that is not full waits for more records. Default "20ms".
    #[serde(default = "default_linger", deserialize_with = "de::duration")]
    pub(crate) linger: Duration,
    /// Batches in flight at once. Default 1: one at a time, in commit order.
    /// More than 1 needs `ordering = "key"`.
    #[serde(default = "default_max_in_flight")]
    pub(crate) max_in_flight: usize,
    /// What order is kept: "commit" (the default: every record in commit
    /// order, one batch in flight) or "key" (records with the same group key
    /// in commit order and never in two batches in flight at once; other
    /// keys flow past a slow or failing one).
    #[serde(default)]
    pub(crate) ordering: Ordering,
    /// Most bytes of this strategy's parked batches (see the endpoint's
    /// `retry.park_after`): once reached, a failing batch is no longer
    /// parked and holds the strategy and the slot as without parking, until
    /// parked work is delivered. Nothing is dropped. Bytes, or text with a
    /// unit ("256MiB"); 0 = never park this strategy. Default "256MiB".
    #[serde(default = "default_max_parked_bytes", deserialize_with = "de::bytes")]
    pub(crate) max_parked_bytes: usize,
    /// The group key under `ordering = "key"`: an expression over the row
    /// (`row.*`), e.g. "row.customer_id". Default: the table's replica
    /// identity key (its primary key, or the REPLICA IDENTITY index).
    #[serde(default)]
    pub(crate) group_by: Option<String>,
    /// The database role on-demand and scheduled runs read the table as
    /// (`SET ROLE`); absent = the source connection's role.
    #[serde(default)]
    pub(crate) run_as: Option<String>,
    /// Request headers, merged over the endpoint's key by key: text or `{ expr = "…" }`.
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, Template>,
    /// Query-string parameters, merged over the endpoint's key by key.
    #[serde(default)]
    pub(crate) query: BTreeMap<String, Template>,
    /// Extra top-level payload fields: text or `{ expr = "…" }`.
    #[serde(default)]
    pub(crate) body: BTreeMap<String, Template>,
    /// Per-record fields replacing the whole row in `new`/`old`; absent = the
    /// whole row.
    #[serde(default)]
    pub(crate) record: Option<BTreeMap<String, Template>>,
    /// How each record is shaped: "envelope" (the default: `id`, `op`,
    /// `table`, … with the row or the `record` fields in `new`/`old`) or
    /// "flat" (each record is exactly the `record` mapping's keys and values).
    #[serde(default)]
    pub(crate) record_shape: RecordShape,
    /// Which on-demand runs the admin API allows.
    #[serde(default)]
    pub(crate) on_demand: OnDemand,
    /// Scheduled runs over the table's current rows.
    #[serde(default)]
    pub(crate) schedules: Vec<Schedule>,
    /// How runs read the table, and the strategy's first backfill.
    #[serde(default)]
    pub(crate) backfill: BackfillSettings,
}

/// How runs (backfills) read the table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackfillSettings {
    /// Backfill the table the first time walhook runs this strategy (a new
    /// deployment, or a strategy a reload adds), merged into its live
    /// stream so that a receiver keeping a copy needs nothing else. Default false.
    #[serde(default)]
    pub(crate) initial: bool,
    /// Rows per chunk; each chunk is read in a short transaction of its own.
    /// Default 5000.
    #[serde(default = "default_chunk_size")]
    pub(crate) chunk_size: usize,
    /// Most rows a run reads per second; 0 = no limit. Default 0.
    #[serde(default)]
    pub(crate) max_rows_per_second: u64,
}

impl Default for BackfillSettings {
    fn default() -> Self {
        BackfillSettings {
            initial: false,
            chunk_size: default_chunk_size(),
            max_rows_per_second: 0,
        }
    }
}

fn default_chunk_size() -> usize {
    5000
}

/// How the records of a batch are shaped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordShape {
    /// `{"id", "op", "schema", "table", "lsn", "xid", "commit_time", "new",
    /// "old"}`, the row (or the `record` fields) in `new`/`old`.
    #[default]
    Envelope,
    /// Exactly the `record` mapping's keys and values, nothing around them.
    Flat,
}

fn default_batch_size() -> usize {
    100
}

fn default_max_batch_bytes() -> usize {
    1024 * 1024
}

fn default_max_in_flight() -> usize {
    1
}

fn default_max_parked_bytes() -> usize {
    256 * 1024 * 1024
}

/// What order a strategy keeps (`ordering`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Every record in commit order.
    #[default]
    Commit,
    /// Records with the same group key in commit order.
    Key,
}

fn default_linger() -> Duration {
    Duration::from_millis(20)
}

/// Which on-demand runs (`POST /strategies/NAME/runs`) are allowed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OnDemand {
    /// Allow `?mode=sync`: the request waits for the delivery. Default false.
    #[serde(default)]
    pub(crate) sync: bool,
    /// Most rows a sync run may send. Default 1000.
    #[serde(default = "default_sync_limit")]
    pub(crate) sync_limit: u64,
    /// Allow `?mode=async`: a run in the background, polled at `/runs/ID`. Default false.
    #[serde(default)]
    pub(crate) r#async: bool,
}

impl Default for OnDemand {
    fn default() -> Self {
        OnDemand {
            sync: false,
            sync_limit: default_sync_limit(),
            r#async: false,
        }
    }
}

fn default_sync_limit() -> u64 {
    1000
}

/// A scheduled run: at each `cron` time, the rows matching `filter` are sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Schedule {
    /// The name shown in `/status`, run records (`trigger =
    /// "schedule:<name>"`), logs and metrics; unique per strategy; default
    /// the cron text.
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// When: a 5-field cron expression ("minute hour day month weekday").
    pub(crate) cron: String,
    /// Which rows (`row.*`); absent = all.
    #[serde(default)]
    pub(crate) filter: Option<String>,
    /// The IANA time zone `cron` is read in; default UTC.
    #[serde(default)]
    pub(crate) timezone: Option<String>,
}

impl Schedule {
    /// `name`, or the cron text when it has none.
    pub(crate) fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.cron)
    }

    /// Parses `cron`: 5 fields ("minute hour day-of-month month
    /// day-of-week"), or 6 with seconds first.
    pub(crate) fn parse_cron(&self) -> Result<croner::Cron, String> {
        let fields = self.cron.split_whitespace().count();
        if fields != 5 && fields != 6 {
            return Err(format!(
                "{:?} has {fields} fields; write 5 (minute hour day-of-month month day-of-week) \
                 or 6 (seconds first)",
                self.cron
            ));
        }
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(&self.cron)
            .map_err(|err| format!("{:?} is not a valid cron expression: {err}", self.cron))
    }

    /// The time zone `cron` is read in: `timezone`, else UTC.
    pub(crate) fn time_zone(&self) -> Result<chrono_tz::Tz, String> {
        match &self.timezone {
            None => Ok(chrono_tz::UTC),
            Some(name) => name.parse::<chrono_tz::Tz>().map_err(|_| {
                format!("unknown time zone {name:?}: use an IANA name such as \"Europe/Berlin\"")
            }),
        }
    }
}

/// A table name with its schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// The schema (`public` when not written).
    pub(crate) schema: String,
    /// The table.
    pub(crate) name: String,
}

impl TableName {
    /// Parses "schema.table" or "table" (schema `public`).
    pub fn parse(text: &str) -> Result<TableName, String> {
        let (schema, name) = text.split_once('.').unwrap_or(("public", text));
        if schema.is_empty() || name.is_empty() || name.contains('.') {
            return Err(format!(
                "invalid table {text:?}: write \"schema.table\" or \"table\" (schema public)"
            ));
        }
        Ok(TableName {
            schema: schema.to_string(),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TableName::parse(&text).map_err(serde::de::Error::custom)
    }
}
