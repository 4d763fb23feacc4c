//! Strategies: per-operation filters, record mapping, per-batch templates
//! and routing of committed changes to each strategy's queue.
//!
//! ```text
//!  SourceEvent ─▶ Router ─┬─ strategy A of public.orders: on_insert? ─▶ map ─▶ queue A
//!                         └─ strategy B of public.orders: on_update? ─▶ map ─▶ queue B
//!  Commit{end_lsn} ─▶ TxEnd to A and/or B (only if they got records) ─▶ checkpoint.seen
//! ```
//!
//! - `expr`: evalexpr expressions compiled once at load, evaluated through a
//!   context over the event itself (values converted only when read).
//! - [`CompiledStrategy`]: filters, `record` mapping and the [`crate::batch::Decorate`]
//!   implementation for `headers`, `query` and `body`.
//! - [`Router`]: events → filters → bounded queues; transaction ends → checkpoint.
//! - `schema`: startup checks against the live catalog, and creating the
//!   publication when there is none.
//!
//! # Filter semantics (README copies this section)
//!
//! A strategy sends an insert, update, delete or truncate only when it has
//! the matching `on_insert`, `on_update`, `on_delete` or `on_truncate`; the
//! value is an [evalexpr](https://docs.rs/evalexpr/11.3.1) expression that
//! must be `true` for the change to be sent (`"true"` sends all).
//!
//! Names: `new.<col>` (inserts, updates), `old.<col>` (updates, deletes),
//! `row.<col>` (new for inserts and updates, old for deletes), `op`
//! (`"insert"`, `"update"`, `"delete"`, `"truncate"`), `table`, `schema`,
//! and the record's `id`, `lsn` (commit LSN), `xid` and `commit_time`.
//! Functions: `changed("col")` (updates: the column's value differs between
//! the old and new row), `is_null(x)`, and evalexpr's built-ins (`min`,
//! `max`, `len`, `contains`, `str::to_lowercase`, `math::abs`, …). Values:
//! integers, floats (`numeric` becomes an integer when it has no fraction,
//! otherwise a float: exact in payloads, approximate in filters), booleans,
//! and text for every other type (timestamps, uuids, json as their text).
//!
//! NULL works like SQL's `WHERE`: a column that is NULL is the empty value
//! `()`, and any comparison or arithmetic with it (`new.amount > 100`,
//! `new.status == "open"`, `new.status != "open"`) is unknown, so the change
//! is **not sent**. Test for NULL with `is_null(new.col)`. `&&`, `||` and `!`
//! follow SQL's three-valued logic: `is_null(new.amount) || new.amount > 100`
//! is true for a NULL amount, `false && <unknown>` is false, `true ||
//! <unknown>` is true, and `!<unknown>` stays unknown. Each change a NULL
//! made unknown counts in `walhook_filter_nulls_total{strategy}`, and the
//! log summarises them at most once a minute per strategy (one info line
//! with the count): a filter on a nullable column is not a problem to
//! report row by row. Any other evaluation error (text compared with a
//! number, division by zero, a value the server did not send) is also "not
//! matched"; it counts in `walhook_filter_errors_total{strategy}` and is
//! logged at warn with the strategy, the field and the record id (never the
//! values), at most once every ten seconds per strategy, each line with the
//! number of failures it stands for. `==` compares integers and floats by
//! value (`new.amount == 100` matches a numeric `100.00`).
//!
//! `changed("col")`: an unchanged TOASTed value (large text the server did
//! not resend) counts as not changed. It needs the old value, so for a
//! non-key column the table needs `REPLICA IDENTITY FULL` (walhook checks at
//! start, like for `old.<non-key column>`); for a key column, an update that
//! did not change the key sends no old row and `changed` is false. Should
//! the identity be lowered while walhook runs, `changed` on a non-key column
//! is an evaluation error (not matched, counted), never a guess.
//!
//! A compile error, an unknown name or function, `old.*` in `on_insert`,
//! `new.*` in `on_delete`, a row in `on_truncate`, or `changed()` outside
//! `on_update`/`record` is a config error at load, with the field's path.
//!
//! # Mapping
//!
//! Without `record`, each record is the whole row ([`crate::decode::RecordEvent::write_json`]).
//! With it, the record keeps its envelope (`id`, `op`, `schema`, `table`,
//! `lsn`, `xid`, `commit_time`) and `new` (inserts, updates) or `old`
//! (deletes) holds the mapped fields: literals as written, expressions with
//! the filter names. A field that is exactly one column (`{ expr = "row.id" }`)
//! copies the column's exact payload value (numerics keep every digit, json
//! stays embedded); an unchanged TOASTed column is left out (and named in
//! `unchanged_toast`); a failing expression writes `null` and is counted and
//! logged like a filter error. `headers`, `query` and `body` are computed per
//! batch and see `batch.size`, `batch.first_lsn`, `batch.last_lsn`,
//! `batch.id`, `strategy` and `now()` (RFC 3339); an endpoint's `headers`
//! and `query` apply to every strategy using it, and a strategy's own
//! replace them key by key (header names case-insensitively).
//!
//! With `record_shape = "flat"` each record is exactly the mapped object;
//! the envelope's own values are names in row expressions (`id`, `op`,
//! `lsn`, `xid`, `commit_time`, `schema`, `table`), and a field that is
//! exactly one of them is written as the envelope writes it.

mod compiled;
pub(crate) mod expr;
mod router;
mod schema;
mod summary;

pub use compiled::CompiledStrategy;
pub(crate) use expr::referenced_columns;
pub use expr::{check_expression, Expr};
pub(crate) use router::Reroute;
pub use router::{Route, RouteError, Router};
pub(crate) use schema::group_columns;
pub use schema::{
    ensure_publication, validate_schema, PublicationOutcome, SchemaError, SchemaProblem,
};

/// Why a strategy could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    /// An expression does not compile (or names what its field cannot see).
    #[error("{path}: {message}")]
    Expression { path: String, message: String },
    /// No strategy at that index.
    #[error("no strategy at index {0}")]
    NoSuchStrategy(usize),
}

#[cfg(test)]
mod tests;
