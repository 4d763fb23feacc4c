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
//! Per-strategy findings (expressions that do not compile, missing tables
//! or columns, tables missing from the publication, `old.*` reads without
//! REPLICA IDENTITY FULL) come from the strategy stage's own checks
//! ([`crate::strategy::check_expression`], [`crate::strategy::validate_schema`]),
//! so `check` and `run` judge a config the same way; they are reported at
//! the config path they concern (`strategies[0].on_update`).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

mod admin;

use super::tables;
use crate::config::{Config, TableName};
use crate::decode::ReplicaIdentity;
use crate::lsn::Lsn;
use crate::pg::slot::{self as pg_slot, SlotRow};
use crate::pg::{
    self, create_publication_sql, quote_ident, quote_literal, quote_table, readable_ident,
    readable_table, TextRows,
};
use crate::state::StateStore;

/// Lag above which the slot finding becomes a warning.
const LAG_WARN_BYTES: i64 = 1 << 30;
/// Upper bound for the endpoint TCP connect.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A catalog read that failed and ended the database checks.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("{}", pg::describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Slot(#[from] pg_slot::SlotReadError),
    #[error(transparent)]
    Malformed(#[from] pg_slot::MalformedSlot),
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Severity {
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
    fn as_str(self) -> &'static str {
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
pub(crate) struct Finding {
    /// Severity.
    severity: Severity,
    /// What was checked (`wal_level`, `slot`, `replica_identity`, ...).
    check: String,
    /// What was found.
    message: String,
    /// How to fix it (SQL where there is one).
    fix: Option<String>,
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
fn has_errors(findings: &[Finding]) -> bool {
    error_count(findings) > 0
}

/// How many findings are errors.
pub(crate) fn error_count(findings: &[Finding]) -> usize {
    findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count()
}

/// The findings as the `--json` document.
pub(crate) fn to_json(findings: &[Finding]) -> serde_json::Value {
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    serde_json::json!({
        "ok": !has_errors(findings),
        "errors": count(Severity::Error),
        "warnings": count(Severity::Warn),
        "findings": findings,
    })
}

/// Runs every check against the configured database and endpoints.
pub(crate) async fn run(config: &Config, opts: CheckOptions) -> Vec<Finding> {
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
    admin::admin(config, &mut findings).await;
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
) -> Result<(), CheckError> {
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

    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .try_get(0)?;
    if in_recovery {
        standby_findings(client, config, version, &version_text, out).await?;
    }
    if config.source.failover {
        failover_findings(client, config, version, &version_text, out).await?;
    }

    let slot = &config.source.slot;
    let slot_row = pg_slot::read(client, slot).await?;
    let max_slots: i64 = setting(client, "max_replication_slots")
        .await?
        .parse()
        .unwrap_or(0);
    let used_slots: i64 = TextRows::query(client, pg_slot::COUNT_SQL)
        .await?
        .get(0, "n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let needed = if slot_row.is_some() { 0 } else { 1 };
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
    // One walsender streams, one watches the slot (source::SlotWatcher).
    out.push(headroom(
        "max_wal_senders",
        max_senders,
        used_senders,
        2,
        "WAL senders",
    ));

    role(client, out).await?;
    let tables = tables(config);
    let mut existing = Vec::new();
    for table in &tables {
        if table_privileges(client, table, out).await? {
            existing.push(table.clone());
        }
    }
    let publishes = publication(client, config, &tables, out).await?;
    slot_findings(client, config, out).await?;
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
    for table in &existing {
        table_identity(client, config, table, publishes, out).await?;
    }
    strategy_findings(client, config, out).await;
    state_findings(config, out).await;
    Ok(())
}

/// The strategy stage's own checks: expressions compile, and the tables,
/// columns, publication and replica identity fit them.
/// `source.url` names a hot standby: decoding there needs PostgreSQL 16,
/// `hot_standby_feedback`, and state kept elsewhere (a standby is
/// read-only). Says what happens to the slot at a promotion.
async fn standby_findings(
    client: &Client,
    config: &Config,
    version: i32,
    version_text: &str,
    out: &mut Vec<Finding>,
) -> Result<(), tokio_postgres::Error> {
    if version < 160_000 {
        out.push(
            Finding::new(
                Severity::Error,
                "standby",
                format!(
                    "source.url names a standby (in recovery), and logical decoding on a standby \
                     needs PostgreSQL 16 or later; this one runs {version_text}"
                ),
            )
            .fix("point source.url at the primary, or upgrade to PostgreSQL 16"),
        );
        return Ok(());
    }
    let feedback = setting(client, "hot_standby_feedback").await?;
    if feedback != "on" {
        out.push(
            Finding::new(
                Severity::Error,
                "standby",
                "hot_standby_feedback is off on this standby: the primary may remove rows the \
                 slot still needs to decode, and the slot is then invalidated",
            )
            .fix("ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf(); -- on the standby (and wal_level = logical on the primary)"),
        );
    }
    if config.state.url.is_none() {
        out.push(
            Finding::new(
                Severity::Error,
                "standby",
                "source.url names a read-only standby, so the state schema cannot be written \
                 there",
            )
            .fix("[state] url = the primary's (or another database's) connection string"),
        );
    }
    out.push(Finding::new(
        Severity::Ok,
        "standby",
        "walhook decodes on this hot standby: the slot lives here (the primary needs \
         wal_level = logical; creating the slot waits for the primary's next running-transactions \
         record). If this standby is promoted, the slot stays and walhook goes on streaming from \
         it as a primary; if it is rebuilt or another standby is promoted, the slot is not there \
         and must be created again (walhook setup)",
    ));
    Ok(())
}

/// `source.failover = true`: the server can make failover slots, and each
/// standby among `source.url`'s hosts is set up to keep the slot.
async fn failover_findings(
    client: &Client,
    config: &Config,
    version: i32,
    version_text: &str,
    out: &mut Vec<Finding>,
) -> Result<(), CheckError> {
    let slot = &config.source.slot;
    if version < 170_000 {
        out.push(
            Finding::new(
                Severity::Error,
                "failover",
                format!(
                    "source.failover needs PostgreSQL 17 or later (failover slots); this server \
                     runs {version_text}"
                ),
            )
            .fix("set source.failover = false, or upgrade to PostgreSQL 17"),
        );
        return Ok(());
    }
    if let Some(row) = pg_slot::read(client, slot).await? {
        if row.failover != Some(true) {
            out.push(
                Finding::new(
                    Severity::Warn,
                    "failover",
                    format!("slot {slot} is not a failover slot yet"),
                )
                .fix(format!(
                    "walhook run turns it on (ALTER_REPLICATION_SLOT {} (FAILOVER))",
                    readable_ident(slot)
                )),
            );
        }
    }
    let physical = TextRows::query(client, pg_slot::PHYSICAL_NAMES_SQL).await?;
    let standby_slot = physical
        .get(0, "name")
        .unwrap_or("<the standby's physical slot>");
    if setting(client, "synchronized_standby_slots")
        .await?
        .is_empty()
    {
        out.push(
            Finding::new(
                Severity::Warn,
                "failover",
                "synchronized_standby_slots is empty on the primary: walhook may be sent changes \
                 the standby has not received, and after a failover they are gone from the new \
                 primary",
            )
            .fix(format!(
                "ALTER SYSTEM SET synchronized_standby_slots = '{standby_slot}'; SELECT pg_reload_conf(); -- on the primary"
            )),
        );
    }

    let hosts = match pg::connect_each(config.source.url.expose(), "walhook-check").await {
        Ok(hosts) => hosts,
        Err(err) => {
            out.push(Finding::new(Severity::Error, "failover", err.to_string()));
            return Ok(());
        }
    };
    let mut standbys = 0;
    for (host, conn) in hosts {
        let standby = match conn {
            Ok(standby) => standby,
            Err(err) => {
                out.push(Finding::new(
                    Severity::Warn,
                    "failover",
                    format!("cannot check host {host}: {err}"),
                ));
                continue;
            }
        };
        let row = standby
            .query_one(
                "SELECT pg_is_in_recovery(), current_setting('sync_replication_slots'), \
                        current_setting('hot_standby_feedback'), current_setting('primary_slot_name'), \
                        CASE WHEN has_parameter_privilege('primary_conninfo', 'SET') \
                               OR pg_has_role('pg_read_all_settings', 'MEMBER') \
                             THEN current_setting('primary_conninfo') END",
                &[],
            )
            .await?;
        if !row.try_get::<_, bool>(0)? {
            continue;
        }
        standbys += 1;
        let on = |i: usize| -> Result<bool, tokio_postgres::Error> {
            Ok(row.try_get::<_, String>(i)? == "on")
        };
        let primary_slot: String = row.try_get(3)?;
        let conninfo: Option<String> = row.try_get(4)?;
        let mut missing = 0;
        let mut need = |problem: String, fix: String| {
            missing += 1;
            out.push(
                Finding::new(
                    Severity::Error,
                    "failover",
                    format!("standby {host}: {problem}"),
                )
                .fix(fix),
            );
        };
        if !on(1)? {
            need(
                "sync_replication_slots is off, so it does not keep a copy of the slot".into(),
                "ALTER SYSTEM SET sync_replication_slots = on; SELECT pg_reload_conf(); -- on the standby".into(),
            );
        }
        if !on(2)? {
            need(
                "hot_standby_feedback is off, which slot synchronisation needs".into(),
                "ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf(); -- on the standby".into(),
            );
        }
        if primary_slot.is_empty() {
            need(
                "primary_slot_name is empty: slot synchronisation needs a physical slot on the primary".into(),
                format!(
                    "ALTER SYSTEM SET primary_slot_name = '{standby_slot}'; SELECT pg_reload_conf(); -- on the standby (SELECT pg_create_physical_replication_slot('…') on the primary first)"
                ),
            );
        }
        match &conninfo {
            Some(text) if !text.split_whitespace().any(|kv| kv.starts_with("dbname=")) => need(
                "primary_conninfo names no dbname, which slot synchronisation needs".into(),
                format!(
                    "ALTER SYSTEM SET primary_conninfo = '… dbname={}'; SELECT pg_reload_conf(); -- on the standby",
                    config_dbname(config)
                ),
            ),
            _ => {}
        }
        if missing == 0 {
            let dbname = if conninfo.is_some() {
                "dbname in primary_conninfo"
            } else {
                "primary_conninfo not readable by this role: make sure it names dbname"
            };
            out.push(Finding::new(
                Severity::Ok,
                "failover",
                format!(
                    "standby {host} keeps slot {slot}: sync_replication_slots and \
                     hot_standby_feedback on, primary_slot_name {primary_slot}, {dbname}"
                ),
            ));
        }
    }
    if standbys == 0 {
        out.push(
            Finding::new(
                Severity::Warn,
                "failover",
                "source.url names no standby, so walhook cannot follow the primary after a \
                 promotion",
            )
            .fix("list the primary and its standby in source.url (postgres://…@primary,standby/db?target_session_attrs=read-write)"),
        );
    }
    Ok(())
}

/// The database of `source.url`, for a fix's text.
fn config_dbname(config: &Config) -> String {
    pg::conninfo::parse(config.source.url.expose())
        .map(|info| info.dbname)
        .unwrap_or_else(|_| "<database>".to_string())
}

async fn strategy_findings(client: &Client, config: &Config, out: &mut Vec<Finding>) {
    let compile = config.check_expressions(crate::strategy::check_expression);
    for error in compile.iter() {
        out.push(
            Finding::new(Severity::Error, &error.path, &error.message)
                .fix("correct the expression (evalexpr syntax; names new.*, old.*, row.*, op, table, schema)"),
        );
    }
    match crate::strategy::validate_schema(client, config).await {
        Ok(problems) if problems.is_empty() && compile.is_empty() => out.push(Finding::new(
            Severity::Ok,
            "strategies",
            format!(
                "{} strateg{} fit the tables, columns, publication and replica identity",
                config.strategies.len(),
                if config.strategies.len() == 1 {
                    "y"
                } else {
                    "ies"
                }
            ),
        )),
        Ok(problems) => {
            for problem in problems {
                out.push(
                    Finding::new(Severity::Error, &problem.path, problem.problem).fix(problem.fix),
                );
            }
        }
        Err(err) => out.push(Finding::new(
            Severity::Error,
            "strategies",
            format!("checking the strategies against the catalog failed: {err}"),
        )),
    }
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
        .fix(format!(
            "ALTER ROLE {} WITH REPLICATION;",
            quote_ident(&name)
        ))
    });
    Ok(())
}

/// Whether the table exists; findings for existence and SELECT.
async fn table_privileges(
    client: &Client,
    table: &TableName,
    out: &mut Vec<Finding>,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT c.oid, has_table_privilege(c.oid, 'SELECT'), current_user::text \
             FROM (SELECT to_regclass($1) AS oid) r LEFT JOIN pg_class c ON c.oid = r.oid",
            &[&quote_table(table)],
        )
        .await?;
    let oid: Option<u32> = row.try_get(0)?;
    let select: Option<bool> = row.try_get(1)?;
    let role: String = row.try_get(2)?;
    if oid.is_none() {
        // Reported by the strategy checks, at the strategy's `table`.
        return Ok(false);
    }
    out.push(if select == Some(true) {
        Finding::new(Severity::Ok, "table", format!("{table}: SELECT granted"))
    } else {
        Finding::new(
            Severity::Error,
            "table",
            format!("{table}: role {role} has no SELECT on it (runs read the table)"),
        )
        .fix(format!(
            "GRANT SELECT ON {} TO {};",
            readable_table(table),
            readable_ident(&role)
        ))
    });
    Ok(true)
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
        let create = create_publication_sql(name, tables);
        let fix = if tables.is_empty() {
            format!("{create};")
        } else {
            format!("{create}; -- or run walhook setup")
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
    let publishes = Publishes {
        update: row.try_get(2)?,
        delete: row.try_get(3)?,
    };
    // Missing tables and operations are reported by the strategy checks.
    let mut covered = 0;
    for table in tables {
        let present: bool = client
            .query_one(
                &format!("SELECT {}", pg::publishes_table_sql("$1", "$2")),
                &[name, &quote_table(table)],
            )
            .await?
            .try_get(0)?;
        covered += usize::from(present);
    }
    let scope = if all { "FOR ALL TABLES, " } else { "" };
    out.push(Finding::new(
        if covered == tables.len() {
            Severity::Ok
        } else {
            Severity::Info
        },
        "publication",
        format!(
            "publication {name} exists ({scope}{covered} of {} strategy table(s) in it)",
            tables.len()
        ),
    ));
    Ok(publishes)
}

async fn slot_findings(
    client: &Client,
    config: &Config,
    out: &mut Vec<Finding>,
) -> Result<(), CheckError> {
    let slot = &config.source.slot;
    let rows = TextRows::query(client, &pg_slot::watch_sql(slot)).await?;
    let found = SlotRow::from_rows(&rows)?;
    let server_wal: Option<Lsn> = rows.get(0, "server_wal").and_then(|v| v.parse().ok());
    if let Some(loss) = recorded_loss(client, config, found.as_ref(), server_wal).await? {
        out.push(
            Finding::new(
                Severity::Error,
                SLOT_LOSS,
                format!("{loss}; walhook run refuses to stream (exit code 2)"),
            )
            .fix(pg_slot::LOSS_FIX),
        );
        return Ok(());
    }
    let Some(row) = found else {
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
                quote_literal(slot)
            )),
        );
        return Ok(());
    };
    let recreate = pg_slot::recreate_sql(slot);
    if row.slot_type != "logical" || row.plugin.as_deref() != Some("pgoutput") {
        out.push(
            Finding::new(
                Severity::Error,
                "slot",
                format!(
                    "slot {slot} is a {} slot with plugin {}; walhook needs a logical pgoutput slot",
                    row.slot_type,
                    row.plugin.as_deref().unwrap_or("none")
                ),
            )
            .fix(format!("{recreate} -- or set source.slot to another name")),
        );
        return Ok(());
    }
    let database = current_database(client).await?;
    if row.database.as_deref() != Some(database.as_str()) {
        out.push(
            Finding::new(
                Severity::Error,
                "slot",
                format!(
                    "slot {slot} belongs to database {}, not the one in source.url",
                    row.database.as_deref().unwrap_or("?")
                ),
            )
            .fix("point source.url at that database, or set source.slot to another name"),
        );
        return Ok(());
    }
    let safe = row.safe_wal_size;
    if let Some(invalidation) = row.invalidation() {
        out.push(
            Finding::new(
                Severity::Error,
                "slot",
                format!("slot {slot} is {invalidation}; changes since were never streamed"),
            )
            .fix(format!(
                "{recreate} -- then resynchronise the receivers (e.g. an on-demand run)"
            )),
        );
    } else {
        match row.wal_status.as_deref() {
            Some("unreserved") => out.push(Finding::new(
                Severity::Warn,
                "slot",
                format!(
                    "slot {slot} wal_status = unreserved: it is about to lose WAL it needs{}",
                    safe.map(|s| format!(" (safe_wal_size {s} bytes)"))
                        .unwrap_or_default()
                ),
            )),
            Some("extended") => out.push(Finding::new(
                Severity::Warn,
                "slot",
                format!("slot {slot} wal_status = extended: it holds more WAL than max_wal_size"),
            )),
            _ => {}
        }
    }
    let state = if row.active {
        format!("active (walsender pid {})", row.active_pid.unwrap_or(0))
    } else {
        "inactive (no walhook streaming from it now)".to_string()
    };
    let lag = server_wal
        .zip(row.confirmed_flush_lsn)
        .map(|(wal, confirmed)| wal.0.saturating_sub(confirmed.0) as i64);
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
            row.wal_status.as_deref().unwrap_or("n/a")
        ),
    ));
    Ok(())
}

/// The check name of a lost recorded slot (`walhook check` exits 2 on it).
const SLOT_LOSS: &str = "slot_loss";

/// True when a finding says the recorded slot is lost.
pub(crate) fn slot_lost(findings: &[Finding]) -> bool {
    findings
        .iter()
        .any(|f| f.check == SLOT_LOSS && f.severity == Severity::Error)
}

/// The slot found judged against walhook's record of it, as `run` judges
/// it at start; `None` when it is fine, or when there is no record to
/// judge by (the state findings report an unreadable state schema).
async fn recorded_loss(
    client: &Client,
    config: &Config,
    found: Option<&SlotRow>,
    server_wal: Option<Lsn>,
) -> Result<Option<pg_slot::SlotLoss>, CheckError> {
    let slot = &config.source.slot;
    let record = match StateStore::for_config(config, "walhook-check").await {
        Ok(store) => store.slot_record(slot).await.ok().flatten(),
        Err(_) => None,
    };
    let system_id: String = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await?
        .try_get(0)?;
    let pending = record
        .as_ref()
        .and_then(|r| r.loss.as_ref().map(|l| l.to_loss(slot)));
    let recorded = record.map(|r| r.identity);
    let server = pg_slot::ServerIdentity {
        system_id,
        timeline: recorded.as_ref().map_or(0, |r| r.timeline),
    };
    match pg_slot::judge(
        slot,
        recorded.as_ref(),
        found,
        &server,
        server_wal.unwrap_or(Lsn::ZERO),
        true,
    ) {
        pg_slot::Verdict::Lost(loss) => Ok(Some(loss)),
        // A repair begun and not finished (on_slot_lost = "resync").
        _ => Ok(pending),
    }
}

async fn current_database(client: &Client) -> Result<String, tokio_postgres::Error> {
    client
        .query_one("SELECT current_database()::text", &[])
        .await?
        .try_get(0)
}

fn bytes(n: i64) -> String {
    const MIB: i64 = 1 << 20;
    if n.abs() >= MIB {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    } else {
        format!("{n} bytes")
    }
}

/// Primary key and replica identity of one table (and of each of its
/// partitions). (What the strategies read from old rows is judged by the
/// strategy checks.)
async fn table_identity(
    client: &Client,
    config: &Config,
    table: &TableName,
    publishes: Publishes,
    out: &mut Vec<Finding>,
) -> Result<(), tokio_postgres::Error> {
    let Some(catalog) = pg::table_catalog(client, table).await? else {
        return Ok(());
    };
    let primary: Vec<String> = catalog
        .primary_key()
        .into_iter()
        .filter_map(|p| catalog.columns.get(p).map(|c| c.name.clone()))
        .collect();
    let primary = Some(primary).filter(|k| !k.is_empty());
    let index: Vec<String> = catalog
        .columns
        .iter()
        .filter(|c| c.identity_index)
        .map(|c| c.name.clone())
        .collect();
    let identity = catalog.replica_identity;
    let name = quote_table(table);
    let label = catalog.identity_label();
    // Without any identity, Postgres rejects UPDATE/DELETE on a table whose
    // publication carries them: the application's writes fail.
    let leaves = pg::leaves_without_identity(client, table).await?;
    if !leaves.is_empty() && (publishes.update || publishes.delete) {
        let (problem, fix) = pg::no_identity_problem(&leaves, &config.source.publication);
        out.push(Finding::new(Severity::Error, "replica_identity", problem).fix(fix));
        return Ok(());
    }
    if primary.is_none() {
        out.push(
            Finding::new(
                Severity::Warn,
                "primary_key",
                format!("{table} has no primary key: receivers cannot tell rows apart by key"),
            )
            .fix(format!("ALTER TABLE {name} ADD PRIMARY KEY (…);")),
        );
    }
    let key = match (&primary, identity) {
        (_, ReplicaIdentity::Full) => "every column".to_string(),
        (_, ReplicaIdentity::Index) => format!("index ({})", index.join(", ")),
        (Some(primary), _) => format!("primary key ({})", primary.join(", ")),
        (None, _) => "no column".to_string(),
    };
    out.push(Finding::new(
        Severity::Ok,
        "replica_identity",
        format!("{table}: REPLICA IDENTITY {label}: old rows carry {key}"),
    ));
    Ok(())
}

/// Whether the role walhook runs as can use the state schema (where
/// `[state]` puts it), judged as `walhook run` judges it at start.
async fn state_findings(config: &Config, out: &mut Vec<Finding>) {
    let store = match StateStore::for_config(config, "walhook-check").await {
        Ok(store) => store,
        Err(err) => {
            out.push(
                Finding::new(Severity::Error, "state", format!("{err}"))
                    .fix("check [state] url, that the server runs and that pg_hba.conf admits this host and role"),
            );
            return;
        }
    };
    let found = match store.inspect().await {
        Ok(found) => found,
        Err(err) => {
            out.push(Finding::new(Severity::Error, "state", err.to_string()));
            return;
        }
    };
    let problems = found.problems();
    let schema = readable_ident(&found.schema);
    let database = readable_ident(&found.database);
    let role = readable_ident(&found.role);
    if !problems.is_empty() {
        for problem in problems {
            out.push(
                Finding::new(
                    Severity::Error,
                    "state",
                    format!("{}: {}", problem.object, problem.problem),
                )
                .fix(problem.fix),
            );
        }
    } else if !found.schema_exists {
        out.push(Finding::new(
            Severity::Ok,
            "state",
            format!(
                "state schema {schema} does not exist yet in database {database}; walhook run \
                 creates it (role {role} may CREATE on the database)"
            ),
        ));
    } else if found.incomplete() {
        out.push(Finding::new(
            Severity::Ok,
            "state",
            format!(
                "state schema {schema} in database {database} lacks tables; walhook run \
                 creates them (role {role} may CREATE in the schema)"
            ),
        ));
    } else {
        out.push(Finding::new(
            Severity::Ok,
            "state",
            format!(
                "state schema {schema} in database {database}: role {role} may read and write \
                 its {} tables",
                found.table_count()
            ),
        ));
    }
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
