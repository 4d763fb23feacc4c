//! Errors of the replication source, each transient (reconnect), standby
//! (another walsender holds the slot: wait) or fatal (stop, tell the operator).

use crate::error_class::{Classify, ErrorClass};
use std::fmt;

use crate::decode::pgoutput::DecodeError;
use crate::lsn::Lsn;
use crate::pg::conninfo::UrlError;
use crate::pg::slot::{SlotLoss, LOSS_FIX};
use crate::pg::tls::TlsError;
use crate::state::StateError;

/// An ErrorResponse from the server, with the fields an operator needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbError {
    /// ERROR, FATAL, PANIC (the non-localised `V` field when present).
    pub(crate) severity: String,
    /// SQLSTATE, e.g. `28P01`.
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) detail: Option<String>,
    pub(crate) hint: Option<String>,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, "; detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

/// SQLSTATEs this module treats specially.
pub(crate) mod sqlstate {
    pub(crate) const INVALID_PASSWORD: &str = "28P01";
    pub(crate) const OBJECT_IN_USE: &str = "55006";
    pub(crate) const DUPLICATE_OBJECT: &str = "42710";
}

/// How a caller should react to an error.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Reconnect with backoff.
    Transient,
    /// Another walsender holds the slot: wait as a standby and retry.
    Standby,
    /// Stop and tell the operator.
    Fatal,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    InvalidUrl(#[from] UrlError),

    #[error("invalid source options: {0}")]
    InvalidOptions(String),

    #[error("could not connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },

    #[error("timed out after {secs}s connecting to {target}; check that the server is reachable, or raise connect_timeout in source.url")]
    ConnectTimeout { target: String, secs: u64 },

    #[error("{target} is a standby (in_hot_standby = on), and source.url asks for the primary (target_session_attrs=read-write)")]
    NotPrimary { target: String },

    #[error("connection to {target} lost: {source}")]
    Io {
        target: String,
        #[source]
        source: std::io::Error,
    },

    #[error("connection to {target} closed by the server")]
    Closed { target: String },

    #[error("{target} ended the replication stream (the server is shutting down or restarting)")]
    Ended { target: String },

    #[error("no message from {target} for {secs}s (not even a reply to a keepalive request); reconnecting")]
    Silent { target: String, secs: u64 },

    #[error("server {target} refused TLS, but sslmode={mode} requires it; enable ssl on the server or lower sslmode in source.url")]
    TlsRefused { target: String, mode: &'static str },

    #[error(transparent)]
    Tls(#[from] TlsError),

    #[error("password authentication failed for role \"{user}\" at {target}: {error}; check the user and password in source.url")]
    AuthFailed {
        user: String,
        target: String,
        error: Box<DbError>,
    },

    #[error("server {target} asks for a password for role \"{user}\", but source.url has none; add it to the URL")]
    PasswordMissing { user: String, target: String },

    #[error("server {target} asks for unsupported authentication ({method}) for role \"{user}\"; use md5, scram-sha-256, password or trust in pg_hba.conf")]
    UnsupportedAuth {
        user: String,
        target: String,
        method: String,
    },

    #[error("{context} failed on {target}: {error}")]
    Server {
        context: String,
        target: String,
        error: Box<DbError>,
    },

    #[error("replication slot \"{slot}\" is in use by another connection: {error}")]
    SlotActive { slot: String, error: Box<DbError> },

    #[error("replication slot \"{slot}\" does not exist; create it with `walhook setup`, or allow walhook to create it (create_slot)")]
    SlotNotFound { slot: String },

    /// The recorded slot is missing, invalidated, replaced or on another
    /// cluster: what was lost, and the fix.
    #[error("{0}. walhook never recreates a slot silently. Fix: {LOSS_FIX}")]
    SlotLost(Box<SlotLoss>),

    /// Reading walhook's record of the slot failed (retried).
    #[error("reading walhook's record of the slot: {0}")]
    Record(#[source] StateError),

    #[error("replication slot \"{slot}\" cannot be used: {reason}")]
    SlotUnusable { slot: String, reason: String },

    #[error("publication \"{publication}\" does not exist in database \"{database}\"; create it (walhook setup) or fix source.publication")]
    PublicationMissing {
        publication: String,
        database: String,
    },

    #[error("{target} is a different cluster (system identifier {found}, expected {expected}); walhook will not stream from it with the same slot")]
    SystemChanged {
        target: String,
        expected: String,
        found: String,
    },

    #[error("protocol error from {target}: {reason}")]
    Protocol { target: String, reason: String },

    #[error("transaction {commit_lsn} was interrupted by a reconnect and the server did not resend it (it sent {next} first)")]
    ResumeGap { commit_lsn: Lsn, next: Lsn },

    #[error("cannot decode the replication stream near {lsn}: {source}")]
    Decode {
        lsn: Lsn,
        #[source]
        source: DecodeError,
    },

    #[error("the downstream channel was closed")]
    DownstreamClosed,
}

impl SourceError {
    /// Whether to reconnect, wait as a standby, or stop.
    pub fn disposition(&self) -> Disposition {
        use SourceError::*;
        match self {
            Connect { .. }
            | ConnectTimeout { .. }
            | NotPrimary { .. }
            | Io { .. }
            | Closed { .. }
            | Ended { .. }
            | Silent { .. }
            | Record(_) => Disposition::Transient,
            SlotActive { .. } => Disposition::Standby,
            // The decoder lost track of a relation: a new session starts with an
            // empty cache and the server resends Relation messages.
            Decode {
                source: DecodeError::UnknownRelation(_) | DecodeError::ColumnCount { .. },
                ..
            } => Disposition::Transient,
            Server { error, .. } => classify_sqlstate(&error.code),
            InvalidUrl(_)
            | InvalidOptions(_)
            | TlsRefused { .. }
            | Tls(_)
            | AuthFailed { .. }
            | PasswordMissing { .. }
            | UnsupportedAuth { .. }
            | SlotNotFound { .. }
            | SlotLost(_)
            | SlotUnusable { .. }
            | PublicationMissing { .. }
            | SystemChanged { .. }
            | Protocol { .. }
            | ResumeGap { .. }
            | Decode { .. }
            | DownstreamClosed => Disposition::Fatal,
        }
    }
}

impl Classify for SourceError {
    /// From [`SourceError::disposition`]: what the source retries is
    /// transient; a lost slot needs the operator (restarting will not bring
    /// the changes back); the rest stops the process.
    fn class(&self) -> ErrorClass {
        match (self, self.disposition()) {
            (SourceError::SlotLost(_), _) => ErrorClass::NeedsOperator,
            (_, Disposition::Transient | Disposition::Standby) => ErrorClass::Transient,
            (_, Disposition::Fatal) => ErrorClass::Fatal,
        }
    }
}

/// Server errors by SQLSTATE class: connection problems, shutdowns,
/// resource limits and serialization failures pass; the rest needs a human.
fn classify_sqlstate(code: &str) -> Disposition {
    if code == sqlstate::OBJECT_IN_USE {
        return Disposition::Standby;
    }
    // Two instances racing to create the slot: the loser retries and finds it.
    if code == sqlstate::DUPLICATE_OBJECT {
        return Disposition::Transient;
    }
    match code.get(..2) {
        // connection exception, transaction rollback, insufficient resources,
        // operator intervention (57P01 admin shutdown, 57P03 starting up), system error
        Some("08" | "40" | "53" | "57" | "58") => Disposition::Transient,
        _ => Disposition::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> SourceError {
        SourceError::Server {
            context: "START_REPLICATION".into(),
            target: "h:5432".into(),
            error: Box::new(DbError {
                code: code.into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn sqlstates_are_classified() {
        assert_eq!(server("57P01").disposition(), Disposition::Transient);
        assert_eq!(server("57P03").disposition(), Disposition::Transient);
        assert_eq!(server("08006").disposition(), Disposition::Transient);
        assert_eq!(server("53300").disposition(), Disposition::Transient);
        assert_eq!(server("55006").disposition(), Disposition::Standby);
        assert_eq!(server("42710").disposition(), Disposition::Transient);
        assert_eq!(server("42501").disposition(), Disposition::Fatal);
        assert_eq!(server("55000").disposition(), Disposition::Fatal);
        assert_eq!(server("").disposition(), Disposition::Fatal);
        let loss = SlotLoss {
            slot: "s".into(),
            kind: crate::pg::slot::LossKind::Missing,
            after: Lsn(1),
            through: Lsn(2),
        };
        assert_eq!(
            SourceError::SlotLost(Box::new(loss)).disposition(),
            Disposition::Fatal
        );
        let tls = crate::pg::tls::client_config(
            crate::pg::conninfo::SslMode::VerifyFull,
            &crate::pg::conninfo::RootCerts::File("/nonexistent/root.crt".into()),
            "h:5432",
        )
        .unwrap_err();
        assert_eq!(SourceError::from(tls).disposition(), Disposition::Fatal);
    }

    #[test]
    fn decode_errors_a_new_session_cures_are_transient() {
        let decode = |source| SourceError::Decode {
            lsn: Lsn(0x100),
            source,
        };
        // A reconnect makes the server resend relations.
        assert_eq!(
            decode(DecodeError::UnknownRelation(16384)).disposition(),
            Disposition::Transient
        );
        let count = DecodeError::ColumnCount {
            relation: "public.orders".into(),
            expected: 3,
            got: 4,
        };
        assert_eq!(decode(count).disposition(), Disposition::Transient);
        // Input the decoder does not understand: a retry only repeats it.
        assert_eq!(
            decode(DecodeError::Unsupported('P')).disposition(),
            Disposition::Fatal
        );
    }

    #[test]
    fn db_error_display_keeps_every_field() {
        let e = DbError {
            severity: "ERROR".into(),
            code: "55006".into(),
            message: "replication slot \"s\" is active for PID 42".into(),
            detail: Some("d".into()),
            hint: Some("h".into()),
        };
        assert_eq!(
            e.to_string(),
            "replication slot \"s\" is active for PID 42 (SQLSTATE 55006); detail: d; hint: h"
        );
    }
}
