//! Ordinary SQL connections (state schema, schema checks, setup, runs),
//! opened from the same `source.url` as the replication connection and with
//! the same sslmode semantics, so a DBA configures TLS once.

use secrecy::ExposeSecret;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{Client, NoTls};

use super::conninfo::{self, SslMode, Target, UrlError};
use super::tls::{self, TlsError};
use crate::error_class::{Classify, ErrorClass};

/// Why a SQL connection could not be opened. Never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection string is wrong.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The TLS settings cannot be used (e.g. an unreadable sslrootcert).
    #[error("cannot connect to PostgreSQL at {target} as {user}: {source}")]
    Tls {
        target: String,
        user: String,
        #[source]
        source: TlsError,
    },
    /// The server could not be reached, refused TLS or the login.
    #[error("cannot connect to PostgreSQL at {target} as {user}: {}", super::describe(.source))]
    Connect {
        target: String,
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl Classify for ConnectError {
    /// Transient while the server is not reachable yet (refused, timed out,
    /// unknown host while DNS catches up) or is starting up or shutting
    /// down (SQLSTATE classes 08, 53 and 57). A bad URL needs the operator;
    /// a refused login, a missing database or unusable TLS settings stop
    /// the process (exit 1: the secret or the server may be fixed without a
    /// change to the file).
    fn class(&self) -> ErrorClass {
        match self {
            ConnectError::Url(_) => ErrorClass::NeedsOperator,
            ConnectError::Tls { .. } => ErrorClass::Fatal,
            ConnectError::Connect { .. } if self.reachable_later() => ErrorClass::Transient,
            ConnectError::Connect { .. } => ErrorClass::Fatal,
        }
    }
}

impl ConnectError {
    fn reachable_later(&self) -> bool {
        let ConnectError::Connect { source, .. } = self else {
            return false;
        };
        if let Some(db) = source.as_db_error() {
            return matches!(db.code().code().get(..2), Some("08" | "53" | "57"));
        }
        let mut cause = std::error::Error::source(source);
        while let Some(err) = cause {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                return !matches!(io.kind(), InvalidData | InvalidInput | PermissionDenied);
            }
            cause = err.source();
        }
        false
    }
}

/// Opens a SQL connection for `url` (a libpq URL or key=value string) and
/// drives it on a background task. `application_name` defaults to the URL's
/// or `walhook`.
pub async fn connect(url: &str, application_name: &str) -> Result<Client, ConnectError> {
    let info = conninfo::parse(url)?;
    connect_info(&info, application_name).await
}

/// Each host of a multi-host `url` (`host=a,b`) with its connection, in
/// order, whatever its role (primary or standby): for `walhook check`,
/// which looks at the standbys too. A host that fails gives its error.
pub(crate) async fn connect_each(
    url: &str,
    application_name: &str,
) -> Result<Vec<(String, Result<Client, ConnectError>)>, ConnectError> {
    let info = conninfo::parse(url)?;
    let mut out = Vec::new();
    for target in &info.targets {
        let mut one = info.clone();
        one.targets = vec![target.clone()];
        one.read_write = false;
        out.push((
            target.to_string(),
            connect_info(&one, application_name).await,
        ));
    }
    Ok(out)
}

async fn connect_info(
    info: &conninfo::ConnInfo,
    application_name: &str,
) -> Result<Client, ConnectError> {
    let mut config = tokio_postgres::Config::new();
    for target in &info.targets {
        match target {
            Target::Tcp { host, addr, port } => {
                config.host(host).port(*port);
                if let Some(addr) = addr {
                    config.hostaddr(*addr);
                }
            }
            Target::Unix { dir, port } => {
                config.host_path(dir).port(*port);
            }
        }
    }
    config
        .user(&info.user)
        .dbname(&info.dbname)
        .connect_timeout(info.connect_timeout)
        .application_name(info.application_name.as_deref().unwrap_or(application_name));
    if let Some(password) = &info.password {
        config.password(password.expose_secret());
    }
    if info.read_write {
        config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
    }
    let where_ = info
        .targets
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let fail = |source: tokio_postgres::Error| ConnectError::Connect {
        target: where_.clone(),
        user: info.user.clone(),
        source,
    };
    let client = match info.ssl_mode {
        SslMode::Disable => {
            config.ssl_mode(PgSslMode::Disable);
            let (client, connection) = config.connect(NoTls).await.map_err(fail)?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "SQL connection closed");
                }
            });
            client
        }
        mode => {
            config.ssl_mode(if mode.requires_tls() {
                PgSslMode::Require
            } else {
                PgSslMode::Prefer
            });
            let tls_config =
                tls::client_config(mode, &info.root_certs, &where_).map_err(|source| {
                    ConnectError::Tls {
                        target: where_.clone(),
                        user: info.user.clone(),
                        source,
                    }
                })?;
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls_config).clone());
            let (client, connection) = config.connect(connector).await.map_err(fail)?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "SQL connection closed");
                }
            });
            client
        }
    };
    Ok(client)
}
