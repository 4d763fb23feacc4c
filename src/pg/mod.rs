//! PostgreSQL helpers every part of walhook shares: the replication source,
//! the operator commands, runs, the strategy checks and the state store.
//!
//! - `conninfo`: `source.url` (libpq URL or key=value) → targets, user,
//!   sslmode, roots; the one parser, so every connection reads the URL alike.
//! - `tls`: rustls settings for libpq's sslmode semantics.
//! - [`connect`]: an ordinary SQL connection (tokio-postgres) from the URL.
//! - quoting (`quote_ident`, `quote_literal`), `describe` for errors,
//!   and the catalog queries several callers need (`table_catalog`,
//!   `create_publication_sql`).
//! - [`slot`]: the replication slot's row, its statements and what the
//!   one slot watcher publishes; [`TextRows`], the simple-query rows that
//!   ordinary and replication connections both return.
//!
//! Nothing here knows about pipelines or webhooks; the replication protocol
//! itself stays in `source/`.

mod catalog;
mod connect;
pub(crate) mod conninfo;
mod quote;
mod rows;
pub(crate) mod slot;
pub(crate) mod tls;

pub(crate) use catalog::{
    create_publication_sql, leaves_without_identity, no_identity_list_sql, no_identity_problem,
    publishes_table_sql, table_catalog, TableCatalog,
};
pub(crate) use connect::connect_each;
pub use connect::{connect, ConnectError};
pub use conninfo::UrlError;
pub(crate) use quote::{quote_ident, quote_literal, quote_table, readable_ident, readable_table};
pub(crate) use rows::TextRows;
pub use slot::{LossKind, MalformedSlot, SlotLoss, SlotReadError};
pub use tls::TlsError;

/// A Postgres error for a human: for a server error its message, detail,
/// hint and SQLSTATE; otherwise the error with its causes, each once.
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    let Some(db) = err.as_db_error() else {
        let mut out = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = cause.source();
        }
        return out;
    };
    let mut out = db.message().to_string();
    if let Some(detail) = db.detail() {
        out.push_str(&format!(" ({detail})"));
    }
    if let Some(hint) = db.hint() {
        out.push_str(&format!("; hint: {hint}"));
    }
    out.push_str(&format!(" [SQLSTATE {}]", db.code().code()));
    out
}
