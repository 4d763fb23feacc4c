//! Ordinary SQL connections (state schema, schema checks, setup, runs),
//! opened from the same `source.url` as the replication connection and with
//! the same sslmode semantics, so a DBA configures TLS once.

use secrecy::ExposeSecret;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{Client, NoTls};

use crate::source::conninfo::{self, SslMode, Target};
use crate::source::tls;

/// Why a SQL connection could not be opened. Never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid source.url: {0}")]
    Url(String),
    #[error("cannot connect to PostgreSQL at {target} as {user}: {reason}")]
    Connect {
        target: String,
        user: String,
        reason: String,
    },
}

/// Opens a SQL connection for `url` (a libpq URL or key=value string) and
/// drives it on a background task. `application_name` defaults to the URL's
/// or `walhook`.
pub async fn connect(url: &str, application_name: &str) -> Result<Client, DbError> {
    let info = conninfo::parse(url).map_err(|e| DbError::Url(e.to_string()))?;
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
    let where_ = info
        .targets
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let fail = |reason: String| DbError::Connect {
        target: where_.clone(),
        user: info.user.clone(),
        reason,
    };
    let client = match info.ssl_mode {
        SslMode::Disable => {
            config.ssl_mode(PgSslMode::Disable);
            let (client, connection) = config
                .connect(NoTls)
                .await
                .map_err(|e| fail(e.to_string()))?;
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
            let tls_config = tls::client_config(mode, &info.root_certs, &where_)
                .map_err(|e| fail(e.to_string()))?;
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls_config).clone());
            let (client, connection) = config
                .connect(connector)
                .await
                .map_err(|e| fail(e.to_string()))?;
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
