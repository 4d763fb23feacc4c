//! Secret strings: kept out of logs, errors and `Debug` output.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// A secret configuration value (password, token, signing secret). Its
/// `Debug` prints `[redacted]`; `Secret::expose` is the only way to read it.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The secret itself; use it, never log it.
    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// True for the empty string.
    pub(crate) fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// A PostgreSQL connection string (URL or `key=value` form). It may hold a
/// password, so `Debug` and [`DatabaseUrl::redacted`] hide it.
#[derive(Clone)]
pub(crate) struct DatabaseUrl(Secret);

impl DatabaseUrl {
    /// Wraps a connection string.
    fn new(value: impl Into<String>) -> Self {
        DatabaseUrl(Secret::new(value))
    }

    /// The full connection string, password included; pass it to the driver.
    pub(crate) fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The connection string with any password replaced by `[redacted]`, for
    /// logs and messages.
    pub(crate) fn redacted(&self) -> String {
        redact_conninfo(self.expose())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(DatabaseUrl::new)
    }
}

/// Hides the password of a `postgres://user:password@host` URL, the value of
/// a `password=…` parameter in either form, and nothing else.
pub(super) fn redact_conninfo(s: &str) -> String {
    const R: &str = "[redacted]";
    if let Some(scheme_end) = s.find("://") {
        let rest = &s[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let mut out = s[..scheme_end + 3].to_string();
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => out.push_str(&format!("{}:{R}", &userinfo[..colon])),
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        let tail = &rest[authority_end..];
        match tail.split_once('?') {
            Some((path, query)) => {
                let params: Vec<String> = query
                    .split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={R}"),
                        _ => kv.to_string(),
                    })
                    .collect();
                out.push_str(&format!("{path}?{}", params.join("&")));
            }
            None => out.push_str(tail),
        }
        out
    } else {
        // key=value form; values may be quoted, but a password value is
        // dropped whole, so quoting only matters up to the next space.
        s.split_whitespace()
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.trim().eq_ignore_ascii_case("password") => format!("{k}={R}"),
                _ => kv.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn database_url_hides_passwords_only() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/orders?sslmode=require",
                "postgres://app:[redacted]@db:5432/orders?sslmode=require",
            ),
            ("postgres://app@db/orders", "postgres://app@db/orders"),
            (
                "postgresql://db/orders?user=app&password=s3cret",
                "postgresql://db/orders?user=app&password=[redacted]",
            ),
            (
                "host=db user=app password=s3cret dbname=orders",
                "host=db user=app password=[redacted] dbname=orders",
            ),
        ];
        for (input, redacted) in cases {
            let url = DatabaseUrl::new(input);
            assert_eq!(url.redacted(), redacted);
            assert!(!format!("{url:?}").contains("s3cret"));
            assert_eq!(url.expose(), input);
        }
    }
}
