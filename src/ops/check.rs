//! `walhook check`: a preflight a DBA can read. Each finding names what was
//! checked, what was found and, where there is one, the fix (SQL to run).
//!
//! The checks run in order over one SQL connection: server version and
//! settings, the role's attributes and privileges, the publication, the
//! slot, WAL retention, each table's primary key and replica identity
//! against what the strategies' expressions read, and finally (unless
//! `--no-network`) a TCP connect to each endpoint. A failed connection is an
//! error finding of its own and ends the database checks.
//!
//! What the expressions read is found by a scan for `old.<column>`,
//! `row.<column>` and `changed("<column>")` ([`old_columns`]), which is all
//! the replica-identity check needs.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use super::{ident, literal, qualified, tables};
use crate::config::{Config, ExprRole, FilterOp, StrategyConfig, TableName};

/// Lag above which the slot finding becomes a warning.
const LAG_WARN_BYTES: i64 = 1 << 30;
/// Upper bound for the endpoint TCP connect.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// walhook will not work (or breaks the application) until fixed.
    Error,
    /// Works, but risky or degraded.
    Warn,
    /// Checked and fine.
    Ok,
    /// For information.
    Info,
}

impl Severity {
    /// The lower-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warn => "warn",
            Severity::Ok => "ok",
            Severity::Info => "info",
        }
    }
}

/// One result of `check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Severity.
    pub severity: Severity,
    /// What was checked (`wal_level`, `slot`, `replica_identity`, ...).
    pub check: String,
    /// What was found.
    pub message: String,
    /// How to fix it (SQL where there is one).
    pub fix: Option<String>,
}

impl Finding {
    fn new(severity: Severity, check: &str, message: impl Into<String>) -> Self {
        Finding {
            severity,
            check: check.to_string(),
            message: message.into(),
            fix: None,
        }
    }
    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

impl fmt::Display for Finding {
    /// One line: `error wal_level: … — fix: …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        write!(
            f,
            "{:<5} {}: {}",
            self.severity.as_str(),
            self.check,
            one_line(&self.message)
        )?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {}", one_line(fix))?;
        }
        Ok(())
    }
}

/// Check options.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Try a TCP connect to each endpoint.
    pub network: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { network: true }
    }
}

/// True when any finding is an error (`check` then exits 1).
pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Error)
}

/// The findings as the `--json` document.
pub fn to_json(findings: &[Finding]) -> serde_json::Value {
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    serde_json::json!({
        "ok": !has_errors(findings),
        "errors": count(Severity::Error),
        "warnings": count(Severity::Warn),
        "findings": findings,
    })
}

/// Runs every check against the configured database and endpoints.
pub async fn run(config: &Config, opts: CheckOptions) -> Vec<Finding> {
    let mut findings = Vec::new();
    match super::connect(config).await {
        Ok(client) => {
            if let Err(err) = database(&client, config, &mut findings).await {
                findings.push(Finding::new(
                    Severity::Error,
                    "query",
                    format!("a catalog query failed: {err}"),
                ));
            }
        }
        Err(err) => findings.push(
            Finding::new(
                Severity::Error,
                "connect",
                format!("{err} (url {})", config.source.url.redacted()),
            )
            .fix("check source.url, that the server runs and that pg_hba.conf admits this host and role"),
        ),
    }
    if opts.network {
        endpoints(config, &mut findings).await;
    } else {
        findings.push(Finding::new(
            Severity::Info,
            "endpoints",
            "not contacted (--no-network)",
        ));
    }
    findings
}

async fn setting(client: &Client, name: &str) -> Result<String, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT current_setting($1)", &[&name])
        .await?;
    row.try_get(0)
}

async fn database(
    client: &Client,
    config: &Config,
    out: &mut Vec<Finding>,
) -> Result<(), tokio_postgres::Error> {
    let version: i32 = setting(client, "server_version_num")
        .await?
        .parse()
        .unwrap_or(0);
    let version_text = setting(client, "server_version").await?;
    out.push(if version < 100_000 {
        Finding::new(
            Severity::Error,
            "server_version",
            format!("PostgreSQL {version_text}: walhook needs 10 or later (pgoutput)"),
        )
        .fix("upgrade PostgreSQL (14 or later recommended)")
    } else if version < 140_000 {
        Finding::new(
            Severity::Warn,
            "server_version",
            format!("PostgreSQL {version_text} works; 14 or later is recommended (streaming of large transactions, better slot monitoring)"),
        )
    } else {
        Finding::new(Severity::Ok, "server_version", format!("PostgreSQL {version_text}"))
    });

    let wal_level = setting(client, "wal_level").await?;
    out.push(if wal_level == "logical" {
        Finding::new(Severity::Ok, "wal_level", "wal_level = logical")
    } else {
        Finding::new(
            Severity::Error,
            "wal_level",
            format!("wal_level is {wal_level}; walhook needs logical"),
        )
        .fix("ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL")
    });

    let slot = &config.source.slot;
    let slot_exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[slot],
        )
        .await?
        .try_get(0)?;
    let max_slots: i64 = setting(client, "max_replication_slots")
        .await?
        .parse()
        .unwrap_or(0);
    let used_slots: i64 = client
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await?
        .try_get(0)?;
    let needed = if slot_exists { 0 } else { 1 };
    out.push(headroom(
        "max_replication_slots",
        max_slots,
        used_slots,
        needed,
        "slots",
    ));
    let max_senders: i64 = setting(client, "max_wal_senders")
        .await?
        .parse()
        .unwrap_or(0);
    let used_senders: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'",
            &[],
        )
        .await?
        .try_get(0)?;
    out.push(headroom(
        "max_wal_senders",
        max_senders,
        used_senders,
        1,
        "WAL senders",
    ));

    role(client, out).await?;
    let tables = tables(config);
    let mut existing = Vec::new();
    for table in &tables {
        if let Some(oid) = table_privileges(client, table, out).await? {
            existing.push((table.clone(), oid));
        }
    }
    let publishes = publication(client, config, &tables, out).await?;
    slot_findings(client, config, version, out).await?;
    if version >= 130_000 {
        let keep = setting(client, "max_slot_wal_keep_size").await?;
        out.push(if keep == "-1" {
            Finding::new(
                Severity::Warn,
                "max_slot_wal_keep_size",
                "-1 (unbounded): if walhook stops or falls behind, the slot keeps WAL until the disk fills",
            )
            .fix("ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf(); -- pick a size the disk can spare")
        } else {
            Finding::new(
                Severity::Ok,
                "max_slot_wal_keep_size",
                format!("{keep}: WAL kept for the slot is bounded (past it the slot is lost)"),
            )
        });
    }
    for (table, oid) in &existing {
        table_identity(client, config, table, *oid, publishes, out).await?;
    }
    Ok(())
}

fn headroom(name: &str, max: i64, used: i64, needed: i64, what: &str) -> Finding {
    let spare = max - used;
    if spare >= needed {
        Finding::new(Severity::Ok, name, format!("{used} of {max} {what} in use"))
    } else {
        Finding::new(
            Severity::Error,
            name,
            format!("{used} of {max} {what} in use; walhook needs {needed} free"),
        )
        .fix(format!(
            "ALTER SYSTEM SET {name} = {}; -- then restart PostgreSQL (room for a standby walhook too)",
            used.max(max) + needed + 1
        ))
    }
}

async fn role(client: &Client, out: &mut Vec<Finding>) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let name: String = row.try_get(0)?;
    let replication: bool = row.try_get(1)?;
    let superuser: bool = row.try_get(2)?;
    out.push(if replication || superuser {
        let how = if superuser {
            "superuser"
        } else {
            "REPLICATION"
        };
        Finding::new(Severity::Ok, "role", format!("role {name} has {how}"))
    } else {
        Finding::new(
            Severity::Error,
            "role",
            format!("role {name} lacks the REPLICATION attribute needed to stream from a slot"),
        )
        .fix(format!("ALTER ROLE {} WITH REPLICATION;", ident(&name)))
    });
    Ok(())
}

/// The table's oid when it exists; findings for existence and SELECT.
async fn table_privileges(
    client: &Client,
    table: &TableName,
    out: &mut Vec<Finding>,
) -> Result<Option<u32>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT c.oid, has_table_privilege(c.oid, 'SELECT') \
             FROM (SELECT to_regclass($1) AS oid) r LEFT JOIN pg_class c ON c.oid = r.oid",
            &[&qualified(table)],
        )
        .await?;
    let oid: Option<u32> = row.try_get(0)?;
    let select: Option<bool> = row.try_get(1)?;
    let Some(oid) = oid else {
        out.push(
            Finding::new(
                Severity::Error,
                "table",
                format!("table {table} does not exist (or this role cannot see its schema)"),
            )
            .fix("create it, or correct the strategy's table"),
        );
        return Ok(None);
    };
    out.push(if select == Some(true) {
        Finding::new(Severity::Ok, "table", format!("{table}: SELECT granted"))
    } else {
        Finding::new(
            Severity::Error,
            "table",
            format!("{table}: this role has no SELECT on it"),
        )
        .fix(format!(
            "GRANT SELECT ON {} TO CURRENT_USER;",
            qualified(table)
        ))
    });
    Ok(Some(oid))
}

/// Which operations the publication carries.
#[derive(Debug, Clone, Copy, Default)]
struct Publishes {
    update: bool,
    delete: bool,
}

async fn publication(
    client: &Client,
    config: &Config,
    tables: &[TableName],
    out: &mut Vec<Finding>,
) -> Result<Publishes, tokio_postgres::Error> {
    let name = &config.source.publication;
    let row = client
        .query_opt(
            "SELECT puballtables, pubinsert, pubupdate, pubdelete FROM pg_publication WHERE pubname = $1",
            &[name],
        )
        .await?;
    let Some(row) = row else {
        let list: Vec<String> = tables.iter().map(qualified).collect();
        let fix = if list.is_empty() {
            format!("CREATE PUBLICATION {};", ident(name))
        } else {
            format!(
                "CREATE PUBLICATION {} FOR TABLE {}; -- or run walhook setup",
                ident(name),
                list.join(", ")
            )
        };
        out.push(
            Finding::new(
                Severity::Error,
                "publication",
                format!("publication {name} does not exist"),
            )
            .fix(fix),
        );
        // Postgres's default for a new publication.
        return Ok(Publishes {
            update: true,
            delete: true,
        });
    };
    let all: bool = row.try_get(0)?;
    let ops = [
        ("insert", row.try_get::<_, bool>(1)?, FilterOp::Insert),
        ("update", row.try_get::<_, bool>(2)?, FilterOp::Update),
        ("delete", row.try_get::<_, bool>(3)?, FilterOp::Delete),
    ];
    let publishes = Publishes {
        update: ops[1].1,
        delete: ops[2].1,
    };
    let mut missing_tables = Vec::new();
    for table in tables {
        let present: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication_tables \
                 WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
                &[name, &table.schema, &table.name],
            )
            .await?
            .try_get(0)?;
        if !present {
            missing_tables.push(table);
            out.push(
                Finding::new(
                    Severity::Error,
                    "publication",
                    format!("publication {name} does not include {table}; its changes never reach walhook"),
                )
                .fix(format!(
                    "ALTER PUBLICATION {} ADD TABLE {};",
                    ident(name),
                    qualified(table)
                )),
            );
        }
    }
    let mut missing_ops = BTreeSet::new();
    for strategy in &config.strategies {
        for (op_name, published, op) in ops {
            if !published && filter(strategy, op).is_some() {
                missing_ops.insert(op_name);
            }
        }
    }
    if !missing_ops.is_empty() {
        let publish: Vec<&str> = ops
            .iter()
            .filter(|(n, p, _)| *p || missing_ops.contains(n))
            .map(|(n, _, _)| *n)
            .collect();
        out.push(
            Finding::new(
                Severity::Error,
                "publication",
                format!(
                    "publication {name} does not publish {} but strategies filter on them",
                    missing_ops.into_iter().collect::<Vec<_>>().join(", ")
                ),
            )
            .fix(format!(
                "ALTER PUBLICATION {} SET (publish = {});",
                ident(name),
                literal(&publish.join(", "))
            )),
        );
    }
    if missing_tables.is_empty() {
        let scope = if all {
            "all tables".to_string()
        } else {
            format!("{} strategy table(s)", tables.len())
        };
        out.push(Finding::new(
            Severity::Ok,
            "publication",
            format!("publication {name} covers {scope}"),
        ));
    }
    Ok(publishes)
}

fn filter(strategy: &StrategyConfig, op: FilterOp) -> Option<&str> {
    match op {
        FilterOp::Insert => strategy.on_insert.as_deref(),
        FilterOp::Update => strategy.on_update.as_deref(),
        FilterOp::Delete => strategy.on_delete.as_deref(),
        FilterOp::Truncate => strategy.on_truncate.as_deref(),
    }
}

async fn slot_findings(
    client: &Client,
    config: &Config,
    version: i32,
    out: &mut Vec<Finding>,
) -> Result<(), tokio_postgres::Error> {
    let slot = &config.source.slot;
    // wal_status and safe_wal_size exist from PostgreSQL 13.
    let extra = if version >= 130_000 {
        "wal_status::text, safe_wal_size"
    } else {
        "NULL::text, NULL::bigint"
    };
    let sql = format!(
        "SELECT plugin::text, slot_type::text, database::text, database = current_database(), \
         active, active_pid, {extra}, \
         CASE WHEN pg_is_in_recovery() THEN NULL \
              ELSE (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint END \
         FROM pg_replication_slots WHERE slot_name = $1"
    );
    let Some(row) = client.query_opt(&sql, &[slot]).await? else {
        out.push(
            Finding::new(
                Severity::Warn,
                "slot",
                format!(
                    "slot {slot} does not exist yet; walhook run creates it (or walhook setup)"
                ),
            )
            .fix(format!(
                "SELECT pg_create_logical_replication_slot({}, 'pgoutput');",
                literal(slot)
            )),
        );
        return Ok(());
    };
    let plugin: Option<String> = row.try_get(0)?;
    let kind: Option<String> = row.try_get(1)?;
    let database: Option<String> = row.try_get(2)?;
    let here: Option<bool> = row.try_get(3)?;
    let active: bool = row.try_get(4)?;
    let pid: Option<i32> = row.try_get(5)?;
    let wal_status: Option<String> = row.try_get(6)?;
    let safe: Option<i64> = row.try_get(7)?;
    let lag: Option<i64> = row.try_get(8)?;
    let recreate = format!(
        "SELECT pg_drop_replication_slot({0}); SELECT pg_create_logical_replication_slot({0}, 'pgoutput');",
        literal(slot)
    );
    if kind.as_deref() != Some("logical") || plugin.as_deref() != Some("pgoutput") {
        out.push(
            Finding::new(
                Severity::Error,
                "slot",
                format!(
                    "slot {slot} is a {} slot with plugin {}; walhook needs a logical pgoutput slot",
                    kind.as_deref().unwrap_or("?"),
                    plugin.as_deref().unwrap_or("none")
                ),
            )
            .fix(format!("{recreate} -- or set source.slot to another name")),
        );
        return Ok(());
    }
    if here != Some(true) {
        out.push(
            Finding::new(
                Severity::Error,
                "slot",
                format!(
                    "slot {slot} belongs to database {}, not the one in source.url",
                    database.as_deref().unwrap_or("?")
                ),
            )
            .fix("point source.url at that database, or set source.slot to another name"),
        );
        return Ok(());
    }
    match wal_status.as_deref() {
        Some("lost") => out.push(
            Finding::new(
                Severity::Error,
                "slot",
                format!("slot {slot} is lost: the WAL it needed was removed (max_slot_wal_keep_size); changes since were never streamed"),
            )
            .fix(format!("{recreate} -- then resynchronise the receivers (e.g. an on-demand run)")),
        ),
        Some("unreserved") => out.push(Finding::new(
            Severity::Warn,
            "slot",
            format!(
                "slot {slot} wal_status = unreserved: it is about to lose WAL it needs{}",
                safe.map(|s| format!(" (safe_wal_size {s} bytes)")).unwrap_or_default()
            ),
        )),
        Some("extended") => out.push(Finding::new(
            Severity::Warn,
            "slot",
            format!("slot {slot} wal_status = extended: it holds more WAL than max_wal_size"),
        )),
        _ => {}
    }
    let state = if active {
        format!("active (walsender pid {})", pid.unwrap_or(0))
    } else {
        "inactive (no walhook streaming from it now)".to_string()
    };
    let lag_text = lag
        .map(|b| format!(", {} behind the server's WAL", bytes(b)))
        .unwrap_or_default();
    let safe_text = safe
        .map(|s| format!(", safe_wal_size {}", bytes(s)))
        .unwrap_or_default();
    let severity = if lag.is_some_and(|b| b > LAG_WARN_BYTES) {
        Severity::Warn
    } else {
        Severity::Ok
    };
    out.push(Finding::new(
        severity,
        "slot",
        format!(
            "slot {slot}: {state}, wal_status {}{lag_text}{safe_text}",
            wal_status.as_deref().unwrap_or("n/a")
        ),
    ));
    Ok(())
}

fn bytes(n: i64) -> String {
    const MIB: i64 = 1 << 20;
    if n.abs() >= MIB {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    } else {
        format!("{n} bytes")
    }
}

/// Primary key and replica identity of one table against what the
/// strategies on it read from the old row.
async fn table_identity(
    client: &Client,
    config: &Config,
    table: &TableName,
    oid: u32,
    publishes: Publishes,
    out: &mut Vec<Finding>,
) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT relreplident::text, \
             (SELECT array_agg(a.attname::text) FROM pg_index i \
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
              WHERE i.indrelid = c.oid AND i.indisprimary), \
             (SELECT array_agg(a.attname::text) FROM pg_index i \
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
              WHERE i.indrelid = c.oid AND i.indisreplident) \
             FROM pg_class c WHERE c.oid = $1",
            &[&oid],
        )
        .await?;
    let identity: String = row.try_get(0)?;
    let primary: Option<Vec<String>> = row.try_get(1)?;
    let index: Option<Vec<String>> = row.try_get(2)?;
    let name = qualified(table);
    let (label, key): (&str, Option<BTreeSet<String>>) = match identity.as_str() {
        "f" => ("FULL", None),
        "i" => (
            "USING INDEX",
            Some(index.unwrap_or_default().into_iter().collect()),
        ),
        "n" => ("NOTHING", Some(BTreeSet::new())),
        _ => (
            "DEFAULT",
            Some(primary.clone().unwrap_or_default().into_iter().collect()),
        ),
    };
    let strategies: Vec<&StrategyConfig> = config
        .strategies
        .iter()
        .filter(|s| &s.table == table)
        .collect();

    // Without any identity, Postgres rejects UPDATE/DELETE on a table whose
    // publication carries them: the application's writes fail.
    let no_identity = identity == "n" || (identity == "d" && primary.is_none());
    let mut problems = 0;
    if no_identity && (publishes.update || publishes.delete) {
        problems += 1;
        out.push(
            Finding::new(
                Severity::Error,
                "replica_identity",
                format!(
                    "{table} has no primary key and REPLICA IDENTITY {label}: once published, \
                     its UPDATEs and DELETEs fail with \"cannot update table … because it does not have a replica identity\""
                ),
            )
            .fix(format!(
                "ALTER TABLE {name} ADD PRIMARY KEY (…); -- or ALTER TABLE {name} REPLICA IDENTITY FULL;"
            )),
        );
    } else if primary.is_none() {
        out.push(
            Finding::new(
                Severity::Warn,
                "primary_key",
                format!("{table} has no primary key: receivers cannot tell rows apart by key"),
            )
            .fix(format!("ALTER TABLE {name} ADD PRIMARY KEY (…);")),
        );
    }

    if let Some(key) = key {
        for site in config.expressions() {
            let Some(strategy) = site.strategy else {
                continue;
            };
            if !strategies.iter().any(|s| std::ptr::eq(*s, strategy)) {
                continue;
            }
            // `row.` is the old row for deletes: a delete filter, or a
            // record mapping of a strategy that sends deletes.
            let row_is_old = match site.role {
                ExprRole::Filter(FilterOp::Delete) => true,
                ExprRole::Record => strategy.on_delete.is_some(),
                _ => false,
            };
            for column in old_columns(site.expr, row_is_old) {
                if key.contains(&column) {
                    continue;
                }
                problems += 1;
                out.push(
                    Finding::new(
                        Severity::Error,
                        "replica_identity",
                        format!(
                            "{}: table {table} has REPLICA IDENTITY {label}, so the old value of {column:?} \
                             is not sent for updates and deletes, but the expression reads it",
                            site.path
                        ),
                    )
                    .fix(format!(
                        "ALTER TABLE {name} REPLICA IDENTITY FULL; -- or read new.* only"
                    )),
                );
            }
        }
    }
    if problems == 0 {
        out.push(Finding::new(
            Severity::Ok,
            "replica_identity",
            format!(
                "{table}: REPLICA IDENTITY {label} gives every old.* column the strategies read"
            ),
        ));
    }
    Ok(())
}

/// Columns an expression reads from the old row: `old.<col>`,
/// `changed("<col>")` (compares old and new) and, when `row_is_old`,
/// `row.<col>`. A lexical scan: string literals are skipped.
pub fn old_columns(expr: &str, row_is_old: bool) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let c = chars.get(i).copied().unwrap_or(' ');
        if c == '"' {
            // Skip a string literal.
            i += 1;
            while i < chars.len() && chars.get(i) != Some(&'"') {
                if chars.get(i) == Some(&'\\') {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if is_ident(c) && (i == 0 || !chars.get(i - 1).copied().is_some_and(is_ident)) {
            let start = i;
            while chars.get(i).copied().is_some_and(is_ident) {
                i += 1;
            }
            let word: String = chars.get(start..i).unwrap_or_default().iter().collect();
            let accessor = word == "old" || (row_is_old && word == "row");
            if accessor && chars.get(i) == Some(&'.') {
                let begin = i + 1;
                let mut end = begin;
                while chars.get(end).copied().is_some_and(is_ident) {
                    end += 1;
                }
                if end > begin {
                    found.insert(chars.get(begin..end).unwrap_or_default().iter().collect());
                }
                i = end;
            } else if word == "changed" {
                // changed ( "col" )
                let mut j = i;
                while chars.get(j).is_some_and(|c| c.is_whitespace()) {
                    j += 1;
                }
                if chars.get(j) == Some(&'(') {
                    j += 1;
                    while chars.get(j).is_some_and(|c| c.is_whitespace()) {
                        j += 1;
                    }
                    if chars.get(j) == Some(&'"') {
                        let begin = j + 1;
                        let mut end = begin;
                        while end < chars.len() && chars.get(end) != Some(&'"') {
                            end += 1;
                        }
                        if end < chars.len() {
                            found
                                .insert(chars.get(begin..end).unwrap_or_default().iter().collect());
                        }
                        i = end + 1;
                    }
                }
            }
            continue;
        }
        i += 1;
    }
    found
}

async fn endpoints(config: &Config, out: &mut Vec<Finding>) {
    for (name, endpoint) in &config.endpoints {
        let check = format!("endpoint {name}");
        let url = match reqwest::Url::parse(&endpoint.url) {
            Ok(url) => url,
            Err(err) => {
                out.push(Finding::new(
                    Severity::Error,
                    &check,
                    format!("bad url: {err}"),
                ));
                continue;
            }
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            out.push(Finding::new(Severity::Error, &check, "url has no host"));
            continue;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let target = format!("{host}:{port}");
        let timeout = endpoint.connect_timeout.min(MAX_CONNECT_TIMEOUT);
        let result = tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await;
        out.push(match result {
            Ok(Ok(_)) => Finding::new(
                Severity::Ok,
                &check,
                format!("{target} accepts TCP connections"),
            ),
            Ok(Err(err)) => Finding::new(
                Severity::Error,
                &check,
                format!("cannot connect to {target}: {err}"),
            )
            .fix("check the endpoint's url, DNS and firewalls from this host"),
            Err(_) => Finding::new(
                Severity::Error,
                &check,
                format!("no TCP connection to {target} within {timeout:?}"),
            )
            .fix("check the endpoint's url, DNS and firewalls from this host"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(expr: &str, row_is_old: bool) -> Vec<String> {
        old_columns(expr, row_is_old).into_iter().collect()
    }

    #[test]
    fn finds_old_columns() {
        assert_eq!(cols("old.status != new.status", false), ["status"]);
        assert_eq!(
            cols("changed(\"status\") && new.amount > 1", false),
            ["status"]
        );
        assert_eq!(cols("changed ( \"a b\" )", false), ["a b"]);
        assert_eq!(cols("row.amount > 1 && old.id == 1", false), ["id"]);
        assert_eq!(cols("row.amount > 1", true), ["amount"]);
        assert_eq!(
            cols("bold.status == \"old.x\"", false),
            Vec::<String>::new()
        );
        assert_eq!(cols("old.", false), Vec::<String>::new());
        assert_eq!(cols("changed(\"unterminated", false), Vec::<String>::new());
    }

    #[test]
    fn finding_is_one_line_with_fix() {
        let f = Finding::new(Severity::Error, "wal_level", "wal_level is replica")
            .fix("ALTER SYSTEM SET wal_level = logical;\n-- then restart");
        assert_eq!(
            f.to_string(),
            "error wal_level: wal_level is replica — fix: ALTER SYSTEM SET wal_level = logical; -- then restart"
        );
    }
}
