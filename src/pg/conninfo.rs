//! Connection strings: libpq URLs and `key=value` strings → [`ConnInfo`].
//!
//! `tokio_postgres::Config` parses both forms, but it rejects `replication=`
//! and knows only `sslmode` disable/prefer/require. walhook always opens its
//! replication connection with `replication=database` and supports the libpq
//! modes verify-ca and verify-full (plus `sslrootcert`), so this module takes
//! those parameters out of the string, hands the rest to tokio-postgres, and
//! keeps the TLS settings itself.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use tokio_postgres::config::Host;

/// A connection string walhook cannot use. Never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// A rule walhook checks itself (sslmode, user, ports, encoding).
    #[error("invalid source.url: {0}")]
    Invalid(String),
    /// tokio-postgres could not parse the rest of the string.
    #[error("invalid source.url: {0}")]
    Parse(#[source] tokio_postgres::Error),
}

/// libpq's `sslmode`, all six values.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Plaintext only.
    Disable,
    /// libpq tries plaintext first; walhook treats it as `prefer`.
    Allow,
    /// TLS when the server offers it (unverified), plaintext otherwise.
    Prefer,
    /// TLS, encrypted but the certificate is not verified.
    Require,
    /// TLS, the certificate chain must lead to a trusted root.
    VerifyCa,
    /// TLS, the chain must be trusted and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// True when a server that refuses TLS must not be used.
    pub(crate) fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl FromStr for SslMode {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(UrlError::Invalid(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )))
            }
        })
    }
}

/// Where trusted root certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RootCerts {
    /// The operating system's store (also `sslrootcert=system`).
    System,
    /// A PEM file (`sslrootcert=/path/root.crt`).
    File(PathBuf),
}

/// One address to try, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Tcp {
        /// The name used for TLS verification and error messages.
        host: String,
        /// `hostaddr`: connect here instead of resolving `host`.
        addr: Option<IpAddr>,
        port: u16,
    },
    Unix {
        /// The socket directory; the socket is `<dir>/.s.PGSQL.<port>`.
        dir: PathBuf,
        port: u16,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
            Target::Unix { dir, port } => write!(f, "{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

/// Everything needed to open the replication connection.
#[derive(Clone)]
pub(crate) struct ConnInfo {
    pub(crate) targets: Vec<Target>,
    pub(crate) user: String,
    pub(crate) password: Option<SecretString>,
    pub(crate) dbname: String,
    pub(crate) application_name: Option<String>,
    pub(crate) ssl_mode: SslMode,
    pub(crate) root_certs: RootCerts,
    pub(crate) connect_timeout: Duration,
    /// `target_session_attrs=read-write`: skip hosts that are standbys.
    pub(crate) read_write: bool,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("targets", &self.targets)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("ssl_mode", &self.ssl_mode)
            .field("root_certs", &self.root_certs)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Connect (TCP + TLS + startup) timeout when the string sets none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The parameters this module handles itself, taken out of the string.
#[derive(Debug, Default, PartialEq, Eq)]
struct Extracted {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Parses a libpq URL (`postgres://…`) or `key=value` string.
pub(crate) fn parse(url: &str) -> Result<ConnInfo, UrlError> {
    let (rest, extracted) = preprocess(url)?;
    let config = tokio_postgres::Config::from_str(&rest).map_err(UrlError::Parse)?;
    build(&config, extracted)
}

/// Splits off `sslmode`, `sslrootcert` and `replication`, returning the rest
/// in a form tokio-postgres accepts.
fn preprocess(url: &str) -> Result<(String, Extracted), UrlError> {
    let mut ex = Extracted::default();
    let mut take = |key: &str, value: String| -> bool {
        match key {
            "sslmode" => ex.sslmode = Some(value),
            "sslrootcert" => ex.sslrootcert = Some(value),
            "replication" => {}
            _ => return false,
        }
        true
    };
    let rest = if let Some((base, query)) = split_url(url) {
        let mut kept = Vec::new();
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = param.split_once('=').unwrap_or((param, ""));
            let key = percent_decode(k)?;
            if !take(&key, percent_decode(v)?) {
                kept.push(param);
            }
        }
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = Vec::new();
        for (k, v) in kv_pairs(url)? {
            if !take(&k, v.clone()) {
                kept.push(format!("{k}={}", kv_quote(&v)));
            }
        }
        kept.join(" ")
    };
    Ok((rest, ex))
}

fn build(config: &tokio_postgres::Config, ex: Extracted) -> Result<ConnInfo, UrlError> {
    let user = config
        .get_user()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            UrlError::Invalid(
                "no user: write it into the URL, e.g. postgres://walhook@db.example.com/app".into(),
            )
        })?
        .to_string();
    let password = config
        .get_password()
        .map(|p| {
            String::from_utf8(p.to_vec())
                .map(SecretString::from)
                .map_err(|_| UrlError::Invalid("the password is not valid UTF-8".into()))
        })
        .transpose()?;
    let dbname = config.get_dbname().unwrap_or(&user).to_string();

    let root_certs = match ex.sslrootcert.as_deref() {
        None | Some("") => RootCerts::System,
        Some("system") => RootCerts::System,
        Some(path) => RootCerts::File(PathBuf::from(path)),
    };
    let explicit_mode = ex.sslmode.as_deref().map(SslMode::from_str).transpose()?;
    let ssl_mode = match (explicit_mode, ex.sslrootcert.as_deref()) {
        // libpq: sslrootcert=system defaults to, and demands, verify-full.
        (None, Some("system")) => SslMode::VerifyFull,
        (Some(m), Some("system")) if m != SslMode::VerifyFull => {
            return Err(UrlError::Invalid(format!(
                "sslmode={} may not be used with sslrootcert=system; use sslmode=verify-full",
                m.as_str()
            )))
        }
        // libpq: with a root certificate file, require behaves like verify-ca.
        (Some(SslMode::Require), Some(path)) if !path.is_empty() => SslMode::VerifyCa,
        (Some(m), _) => m,
        (None, _) => SslMode::Prefer,
    };

    let hosts = config.get_hosts();
    let ports = config.get_ports();
    let addrs = config.get_hostaddrs();
    let count = hosts.len().max(addrs.len()).max(1);
    if ports.len() > 1 && ports.len() != count {
        return Err(UrlError::Invalid(format!(
            "{} ports for {count} hosts: give one port, or one per host",
            ports.len()
        )));
    }
    let port_at = |i: usize| match ports.len() {
        0 => 5432,
        1 => ports.first().copied().unwrap_or(5432),
        _ => ports.get(i).copied().unwrap_or(5432),
    };
    let mut targets = Vec::with_capacity(count);
    for i in 0..count {
        let port = port_at(i);
        let addr = addrs.get(i).copied();
        let target = match hosts.get(i) {
            Some(Host::Tcp(host)) => Target::Tcp {
                host: host.clone(),
                addr,
                port,
            },
            #[cfg(unix)]
            Some(Host::Unix(dir)) => Target::Unix {
                dir: dir.clone(),
                port,
            },
            None => Target::Tcp {
                host: addr.map_or_else(|| "localhost".to_string(), |a| a.to_string()),
                addr,
                port,
            },
        };
        targets.push(target);
    }

    Ok(ConnInfo {
        targets,
        user,
        password,
        dbname,
        application_name: config.get_application_name().map(str::to_string),
        ssl_mode,
        root_certs,
        connect_timeout: config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        read_write: config.get_target_session_attrs()
            == tokio_postgres::config::TargetSessionAttrs::ReadWrite,
    })
}

/// The connection string with any password replaced by `***`, for Debug
/// output and logs. Unparseable input is hidden entirely.
pub(crate) fn redact(url: &str) -> String {
    if let Some((base, query)) = split_url(url) {
        let (scheme, after) = base.split_once("://").unwrap_or(("", base));
        let auth_end = after.find('/').unwrap_or(after.len());
        let (authority, path) = after.split_at(auth_end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{hosts}"),
                None => authority.to_string(),
            },
            None => authority.to_string(),
        };
        let mut out = format!("{scheme}://{authority}{path}");
        if !query.is_empty() || url.contains('?') {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if percent_decode(k).is_ok_and(|k| k == "password") => {
                        format!("{k}=***")
                    }
                    _ => p.to_string(),
                })
                .collect();
            out.push('?');
            out.push_str(&params.join("&"));
        }
        out
    } else {
        match kv_pairs(url) {
            Ok(pairs) => pairs
                .into_iter()
                .map(|(k, v)| {
                    if k == "password" {
                        format!("{k}=***")
                    } else {
                        format!("{k}={}", kv_quote(&v))
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
            Err(_) => "<connection string redacted>".to_string(),
        }
    }
}

/// For the URL form: (everything before `?`, the query). None for key=value.
fn split_url(url: &str) -> Option<(&str, &str)> {
    let url = url.trim();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return None;
    }
    Some(url.split_once('?').unwrap_or((url, "")))
}

fn percent_decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    UrlError::Invalid("invalid percent-encoding in a URL parameter".into())
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| UrlError::Invalid("a URL parameter is not valid UTF-8".into()))
}

/// Tokenises a libpq `key=value` string (values optionally single-quoted,
/// backslash escapes `\\` and `\'`).
fn kv_pairs(s: &str) -> Result<Vec<(String, String)>, UrlError> {
    let mut pairs = Vec::new();
    let mut it = s.chars().peekable();
    let bad = |what: &str| UrlError::Invalid(format!("invalid connection string: {what}"));
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(bad(&format!("expected '=' after {key:?}")));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    None => return Err(bad("unterminated quoted value")),
                    Some('\\') => value.push(it.next().ok_or_else(|| bad("trailing backslash"))?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(it.next().ok_or_else(|| bad("trailing backslash"))?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn kv_quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn url_with_verify_full_and_root_cert() {
        let info = parse(
            "postgres://alice:s%40cret@db.example.com:6543/app?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=hook",
        )
        .unwrap();
        assert_eq!(info.user, "alice");
        assert_eq!(info.password.unwrap().expose_secret(), "s@cret");
        assert_eq!(info.dbname, "app");
        assert_eq!(info.ssl_mode, SslMode::VerifyFull);
        assert_eq!(info.root_certs, RootCerts::File("/etc/ca.pem".into()));
        assert_eq!(info.application_name.as_deref(), Some("hook"));
        assert_eq!(
            info.targets,
            vec![Target::Tcp {
                host: "db.example.com".into(),
                addr: None,
                port: 6543
            }]
        );
    }

    #[test]
    fn replication_parameter_is_accepted_and_dropped() {
        let info = parse("postgres://u@h/db?replication=database&sslmode=disable").unwrap();
        assert_eq!(info.ssl_mode, SslMode::Disable);
        let info = parse("host=h user=u dbname=db replication=database").unwrap();
        assert_eq!(info.dbname, "db");
        assert_eq!(info.ssl_mode, SslMode::Prefer);
    }

    #[test]
    fn key_value_form_with_quotes() {
        let info = parse(
            r"host=127.0.0.1 port = 5433 user=bob password='it\'s secret' dbname=shop sslmode=verify-ca sslrootcert='/tmp/my ca.pem'",
        )
        .unwrap();
        assert_eq!(info.password.unwrap().expose_secret(), "it's secret");
        assert_eq!(info.ssl_mode, SslMode::VerifyCa);
        assert_eq!(info.root_certs, RootCerts::File("/tmp/my ca.pem".into()));
        assert_eq!(info.targets[0].to_string(), "127.0.0.1:5433");
    }

    #[test]
    fn require_with_root_cert_means_verify_ca_like_libpq() {
        let info = parse("postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(info.ssl_mode, SslMode::VerifyCa);
        let info = parse("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(info.ssl_mode, SslMode::Require);
    }

    #[test]
    fn sslrootcert_system_demands_verify_full() {
        let info = parse("postgres://u@h/db?sslrootcert=system").unwrap();
        assert_eq!(info.ssl_mode, SslMode::VerifyFull);
        assert_eq!(info.root_certs, RootCerts::System);
        let err = parse("postgres://u@h/db?sslrootcert=system&sslmode=require").unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");
    }

    #[test]
    fn defaults_and_errors() {
        let info = parse("postgres://u@h").unwrap();
        assert_eq!(info.dbname, "u");
        assert_eq!(info.targets[0].to_string(), "h:5432");
        assert_eq!(info.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert!(parse("postgres://h/db")
            .unwrap_err()
            .to_string()
            .contains("no user"));
        assert!(parse("postgres://u@h/db?sslmode=bogus").is_err());
        assert!(parse("postgres://u@h/db?nonsense=1").is_err());
        assert!(parse("host=h user='unterminated").is_err());
        assert!(parse("postgres://u@h/db?sslmode=%zz").is_err());
    }

    #[test]
    fn multiple_hosts_and_unix_sockets() {
        let info = parse("postgres://u@a:1,b:2/db").unwrap();
        assert_eq!(info.targets.len(), 2);
        assert_eq!(info.targets[1].to_string(), "b:2");
        let info = parse("host=/var/run/postgresql user=u").unwrap();
        assert_eq!(
            info.targets[0],
            Target::Unix {
                dir: "/var/run/postgresql".into(),
                port: 5432
            }
        );
    }

    #[test]
    fn redaction_hides_passwords_in_every_form() {
        let r = redact("postgres://alice:hunter2@db:5432/app?sslmode=require&password=hunter3");
        assert_eq!(
            r,
            "postgres://alice:***@db:5432/app?sslmode=require&password=***"
        );
        let r = redact("host=db user=alice password='hunter 2' dbname=app");
        assert!(!r.contains("hunter"), "{r}");
        assert!(
            r.contains("password=***") && r.contains("user='alice'"),
            "{r}"
        );
        assert_eq!(redact("postgres://alice@db/app"), "postgres://alice@db/app");
        assert!(!redact("password='hunter2").contains("hunter2"));
        let info = parse("postgres://alice:hunter2@db/app").unwrap();
        assert!(!format!("{info:?}").contains("hunter2"));
    }
}
