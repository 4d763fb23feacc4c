//! The configuration as the console shows it (`GET /config`): the file's
//! values after `${VAR}` interpolation, with every secret replaced by
//! `[redacted]`.
//!
//! It is built once, when the file is loaded, so the shown document never
//! holds a secret in memory. Two passes, so that a secret missed by one is
//! caught by the other:
//!
//! 1. By place: `admin.token`, `auth` passwords, tokens, API-key values and
//!    client secrets, `signing.secret`, any key or header whose name says
//!    it holds a credential, the password of a database connection string,
//!    and the password and credential query parameters of every URL.
//! 2. By value: every value the typed configuration holds as a [`Secret`]
//!    is replaced wherever it appears in any string (a token pasted into a
//!    header template or a URL as well).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::endpoint::Auth;
use super::secret::redact_conninfo;
use super::Config;

/// What a secret is replaced with.
pub(crate) const REDACTED: &str = "[redacted]";

/// The masked document, shared by every reader.
#[derive(Clone, Default)]
pub(crate) struct Masked(Arc<Value>);

impl Masked {
    /// The document (an object by section).
    pub(crate) fn value(&self) -> &Value {
        &self.0
    }
}

impl std::fmt::Debug for Masked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Masked(..)")
    }
}

/// `table` (the interpolated file) with every secret of `config` masked.
pub(crate) fn mask(table: &toml::Table, config: &Config) -> Masked {
    let mut doc = Value::Object(
        table
            .iter()
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect::<Map<_, _>>(),
    );
    by_place(&mut doc, "");
    let secrets = secrets(config);
    scrub(&mut doc, &secrets);
    Masked(Arc::new(doc))
}

fn to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect::<Map<_, _>>(),
        ),
    }
}

/// True for a key or header name that names a credential.
fn sensitive(name: &str) -> bool {
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    if name.ends_with("url")
        || name.ends_with("file")
        || name.ends_with("header")
        || name == "clientkey"
    {
        // `token_url`, `tls.client_key` (a path), `header = "X-Api-Key"`:
        // where, not what.
        return false;
    }
    [
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "apikey",
        "key",
        "auth",
        "cookie",
        "credential",
        "signature",
        "sig",
        "private",
        "session",
        "value",
        "assertion",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// Pass 1: masks values by where they are; `path` is the dotted path of
/// `value`.
fn by_place(value: &mut Value, path: &str) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                // Only leaves are masked whole: a table under a sensitive
                // name (`auth`, `signing`) is walked into, so its harmless
                // fields (`type`, `username`) stay readable.
                // `Authorization = { expr = "…" }` is masked whole: the
                // expression may hold the credential itself.
                if sensitive(key) && (!item.is_object() || is_expr_table(item)) {
                    mask_leaf(item);
                } else {
                    by_place(item, &child);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                by_place(item, &format!("{path}[{i}]"));
            }
        }
        Value::String(text) => {
            *text = if path == "source.url" || path == "state.url" {
                redact_conninfo(text)
            } else {
                redact_url(text)
            };
        }
        _ => {}
    }
}

fn is_expr_table(value: &Value) -> bool {
    value.as_object().is_some_and(|m| m.contains_key("expr"))
}

/// Replaces a text leaf (each text of an array, an expression table)
/// with [`REDACTED`]; numbers and switches stay.
fn mask_leaf(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(mask_leaf),
        Value::String(_) | Value::Object(_) => *value = Value::String(REDACTED.to_string()),
        _ => {}
    }
}

/// A URL with its password and credential-like query values masked; other
/// text unchanged.
fn redact_url(text: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(text) else {
        return text.to_string();
    };
    if url.cannot_be_a_base() {
        return text.to_string();
    }
    let mut changed = false;
    if url.password().is_some() {
        let _ = url.set_password(Some(REDACTED));
        changed = true;
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                if sensitive(&k) {
                    changed = true;
                    (k.into_owned(), REDACTED.to_string())
                } else {
                    (k.into_owned(), v.into_owned())
                }
            })
            .collect();
        if changed {
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
    }
    if changed {
        // Readable, and the same marker as everywhere else.
        url.to_string().replace("%5Bredacted%5D", REDACTED)
    } else {
        text.to_string()
    }
}

/// Every value the configuration holds as a secret (never empty strings).
fn secrets(config: &Config) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    if let Some(token) = &config.admin.token {
        found.push(token.expose().to_string());
    }
    for endpoint in config.endpoints.values() {
        match &endpoint.auth {
            Auth::None => {}
            Auth::Basic { password, .. } => found.push(password.expose().to_string()),
            Auth::Bearer { token } => found.push(token.expose().to_string()),
            Auth::ApiKey { value, .. } => found.push(value.expose().to_string()),
            Auth::Oauth2 { client_secret, .. } => found.push(client_secret.expose().to_string()),
        }
        if let Some(signing) = &endpoint.signing {
            found.extend(signing.secret.iter().map(|s| s.expose().to_string()));
        }
    }
    for url in std::iter::once(&config.source.url).chain(config.state.url.as_ref()) {
        if let Some(password) = conninfo_password(url.expose()) {
            found.push(password);
        }
    }
    found.retain(|s| !s.is_empty());
    // Longest first, so a secret containing another is replaced whole.
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found.dedup();
    found
}

/// The password of a connection string, URL or `key=value` form.
fn conninfo_password(conninfo: &str) -> Option<String> {
    if let Ok(url) = reqwest::Url::parse(conninfo) {
        if let Some(password) = url.password() {
            return Some(password.to_string());
        }
        return url
            .query_pairs()
            .find(|(k, _)| k.eq_ignore_ascii_case("password"))
            .map(|(_, v)| v.into_owned());
    }
    conninfo.split_whitespace().find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("password")
            .then(|| v.trim_matches('\'').to_string())
    })
}

/// Pass 2: replaces every occurrence of a secret in every string.
fn scrub(value: &mut Value, secrets: &[String]) {
    match value {
        Value::String(text) => {
            for secret in secrets {
                if text.contains(secret.as_str()) {
                    *text = text.replace(secret.as_str(), REDACTED);
                }
                // Percent-encoded in a URL.
                let encoded: String = url_encode(secret);
                if encoded != *secret && text.contains(encoded.as_str()) {
                    *text = text.replace(encoded.as_str(), REDACTED);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub(v, secrets)),
        Value::Object(map) => map.values_mut().for_each(|v| scrub(v, secrets)),
        _ => {}
    }
}

fn url_encode(text: &str) -> String {
    reqwest::Url::parse_with_params("x:", [("v", text)])
        .ok()
        .and_then(|u| u.query().map(|q| q.trim_start_matches("v=").to_string()))
        .unwrap_or_else(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of secret the file can hold, each a distinct marker.
    const FILE: &str = r#"
[source]
url = "postgres://walhook:pg-PASS-1@db.example:5432/app?sslmode=require"
slot = "walhook"

[state]
url = "host=state.example user=walhook password=st-PASS-2 dbname=state"

[admin]
listen = "127.0.0.1:9187"
token = "${ADMIN_TOKEN}"

[endpoints.basic]
url = "https://user:url-PASS-3@hooks.example/in?api_key=url-KEY-4&tenant=acme"
auth = { type = "basic", username = "acme", password = "basic-PASS-5" }
headers = { "X-Api-Key" = "hdr-KEY-6", "X-Tenant" = "acme", Authorization = { expr = "'Bearer hdr-TOKEN-7'" } }
query = { access_token = "q-TOKEN-8", region = "eu" }
signing = { secret = ["whsec_c2lnbi1TRUNSRVQtOS1sb25nLWVub3VnaC1mb3ItaG1hYw==", "whsec_b2xkLVNFQ1JFVC0xMC1sb25nLWVub3VnaC1mb3ItaG1hYw=="] }

[endpoints.bearer]
url = "https://hooks.example/bearer"
auth = { type = "bearer", token = "bearer-TOKEN-11" }

[endpoints.apikey]
url = "https://hooks.example/key"
auth = { type = "api_key", header = "X-Key", value = "apikey-VALUE-12" }
signing = { format = "hmac", header = "X-Sig", secret = "hmac-SECRET-13" }

[endpoints.oauth]
url = "https://hooks.example/oauth?note=see%20oauth-SECRET-14"
auth = { type = "oauth2", token_url = "https://idp.example/token", client_id = "walhook", client_secret = "oauth-SECRET-14", params = { resource = "hooks", client_assertion = "assert-SECRET-15" } }

[[strategies]]
name = "orders"
table = "orders"
endpoint = "basic"
on_insert = "new.total > 100"
headers = { "X-Echo" = "bearer-TOKEN-11" }

[[strategies]]
name = "o2"
table = "orders"
endpoint = "bearer"
on_insert = "true"

[[strategies]]
name = "o3"
table = "orders"
endpoint = "apikey"
on_insert = "true"

[[strategies]]
name = "o4"
table = "orders"
endpoint = "oauth"
on_insert = "true"
"#;

    const SECRETS: [&str; 15] = [
        "pg-PASS-1",
        "st-PASS-2",
        "adm-TOKEN-0",
        "url-PASS-3",
        "url-KEY-4",
        "basic-PASS-5",
        "hdr-KEY-6",
        "hdr-TOKEN-7",
        "q-TOKEN-8",
        "whsec_c2lnbi1TRUNSRVQtOS1sb25nLWVub3VnaC1mb3ItaG1hYw==",
        "whsec_b2xkLVNFQ1JFVC0xMC1sb25nLWVub3VnaC1mb3ItaG1hYw==",
        "bearer-TOKEN-11",
        "apikey-VALUE-12",
        "hmac-SECRET-13",
        "oauth-SECRET-14",
    ];

    fn shown() -> Value {
        let env = |name: &str| (name == "ADMIN_TOKEN").then(|| "adm-TOKEN-0".to_string());
        let config = Config::parse(FILE, &env).expect("the example is valid");
        config.masked.value().clone()
    }

    #[test]
    fn no_secret_of_any_kind_is_shown() {
        let text = shown().to_string();
        for secret in SECRETS.iter().chain(&["assert-SECRET-15"]) {
            assert!(!text.contains(secret), "{secret} shown in {text}");
        }
        // Nor a percent-encoded form.
        assert!(!text.contains("oauth-SECRET-14"), "{text}");
        assert!(text.contains(REDACTED));
    }

    #[test]
    fn what_is_not_secret_stays_readable() {
        let doc = shown();
        assert_eq!(
            doc["source"]["url"],
            "postgres://walhook:[redacted]@db.example:5432/app?sslmode=require"
        );
        assert_eq!(
            doc["state"]["url"],
            "host=state.example user=walhook password=[redacted] dbname=state"
        );
        assert_eq!(doc["admin"]["token"], REDACTED);
        assert_eq!(doc["admin"]["listen"], "127.0.0.1:9187");
        let basic = &doc["endpoints"]["basic"];
        assert_eq!(
            basic["url"],
            "https://user:[redacted]@hooks.example/in?api_key=[redacted]&tenant=acme"
        );
        assert_eq!(basic["auth"]["type"], "basic");
        assert_eq!(basic["auth"]["username"], "acme");
        assert_eq!(basic["auth"]["password"], REDACTED);
        assert_eq!(basic["headers"]["X-Tenant"], "acme");
        assert_eq!(basic["headers"]["X-Api-Key"], REDACTED);
        assert_eq!(basic["headers"]["Authorization"], REDACTED);
        assert_eq!(basic["query"]["region"], "eu");
        assert_eq!(basic["query"]["access_token"], REDACTED);
        assert_eq!(
            basic["signing"]["secret"],
            serde_json::json!([REDACTED, REDACTED])
        );
        let apikey = &doc["endpoints"]["apikey"];
        assert_eq!(apikey["auth"]["header"], "X-Key");
        assert_eq!(apikey["signing"]["header"], "X-Sig");
        let oauth = &doc["endpoints"]["oauth"]["auth"];
        assert_eq!(oauth["token_url"], "https://idp.example/token");
        assert_eq!(oauth["client_id"], "walhook");
        assert_eq!(oauth["params"]["resource"], "hooks");
        assert_eq!(doc["strategies"][0]["on_insert"], "new.total > 100");
        assert_eq!(doc["strategies"][0]["headers"]["X-Echo"], REDACTED);
        assert_eq!(doc["strategies"][3]["endpoint"], "oauth");
    }
}
