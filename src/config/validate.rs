//! Checks serde cannot make: cross-references, ranges, secrets that must
//! decode, files that must exist. Messages name the field, never a secret.

use std::collections::{BTreeMap, BTreeSet};

use super::bounds;
use super::endpoint::{Auth, EndpointConfig, Signing, SigningFormat};
use super::error::ConfigErrors;
use super::secret::Secret;
use super::signing_key::SigningKey;
use super::strategy::{BackfillSettings, Ordering, RecordShape, StrategyConfig};

/// Most rows per backfill chunk.
const MAX_CHUNK_SIZE: usize = 1_000_000;
use super::template::Template;
use super::Config;

/// Headers walhook sets itself; configuring them would break signing or
/// de-duplication.
const RESERVED_HEADERS: [&str; 4] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
];

/// The smallest memory budget accepted (`source.max_buffer_bytes`).
const MIN_BUFFER_BYTES: usize = 1 << 20;

/// Top-level payload keys walhook writes itself: a `body` field of the same
/// name would collide with them.
const RESERVED_BODY_KEYS: [&str; 3] = ["strategy", "batch", "records"];

/// What [`validate`] checks besides the config itself.
pub(super) struct Checks<'a> {
    /// Endpoints that failed to parse: references to them are not reported again.
    pub(super) broken: &'a BTreeSet<String>,
    /// Strategy `i` is reported at `strategies[index[i]]`.
    pub(super) index: &'a [usize],
    /// `[source]` parsed (else it is a placeholder, not checked).
    pub(super) source: bool,
}

/// Validates `config`.
pub(super) fn validate(config: &Config, checks: &Checks<'_>) -> ConfigErrors {
    let (broken, index) = (checks.broken, checks.index);
    let mut errors = ConfigErrors::default();
    if checks.source {
        source(config, &mut errors);
    }
    admin(config, &mut errors);
    state(config, &mut errors);
    for (name, endpoint) in &config.endpoints {
        self::endpoint(name, endpoint, &mut errors);
        bounds::endpoint(&format!("endpoints.{name}"), endpoint, &mut errors);
    }
    let mut names = BTreeMap::new();
    for (i, strategy) in config.strategies.iter().enumerate() {
        let path = format!("strategies[{}]", index.get(i).copied().unwrap_or(i));
        if let Some(first) = names.insert(strategy.name.as_str(), path.clone()) {
            errors.push(
                format!("{path}.name"),
                format!(
                    "duplicate strategy name {:?} (also {first}); names must be unique",
                    strategy.name
                ),
            );
        }
        self::strategy(&path, strategy, config, broken, &mut errors);
        bounds::strategy(&path, strategy, &mut errors);
    }
    errors
}

/// A `messages` strategy: no row filters, mapping or runs.
fn message_strategy(
    path: &str,
    strategy: &StrategyConfig,
    filters: &[(&str, &Option<String>)],
    errors: &mut ConfigErrors,
) {
    let mut refuse = |field: &str| {
        errors.push(
            format!("{path}.{field}"),
            format!("`{field}` is for table strategies; a `messages` strategy takes on_message"),
        );
    };
    for (field, filter) in filters {
        if filter.is_some() {
            refuse(field);
        }
    }
    if strategy.record.is_some() {
        refuse("record");
    }
    if strategy.record_shape != RecordShape::Envelope {
        refuse("record_shape");
    }
    if strategy.group_by.is_some() {
        refuse("group_by");
    }
    if strategy.run_as.is_some() {
        refuse("run_as");
    }
    if strategy.on_demand.sync || strategy.on_demand.r#async {
        refuse("on_demand");
    }
    if !strategy.schedules.is_empty() {
        refuse("schedules");
    }
    if strategy.backfill != BackfillSettings::default() {
        refuse("backfill");
    }
    if strategy.messages.as_deref().is_some_and(str::is_empty) {
        errors.push(
            format!("{path}.messages"),
            "empty prefix: write the prefix the application passes to pg_logical_emit_message",
        );
    }
    if strategy
        .on_message
        .as_deref()
        .is_some_and(|f| f.trim().is_empty())
    {
        errors.push(
            format!("{path}.on_message"),
            "empty filter: write \"true\" or remove the key to send every message",
        );
    }
}

fn source(config: &Config, errors: &mut ConfigErrors) {
    let source = &config.source;
    database_url("source.url", source.url.expose(), errors);
    if !is_lower_name(&source.slot) {
        errors.push(
            "source.slot",
            format!(
                "invalid slot name {:?}: use 1 to 63 lower-case letters, digits or underscores",
                source.slot
            ),
        );
    }
    if source.max_buffer_bytes < MIN_BUFFER_BYTES {
        errors.push(
            "source.max_buffer_bytes",
            format!(
                "{} bytes is too small: give at least \"1MiB\" (the default is \"64MiB\")",
                source.max_buffer_bytes
            ),
        );
    }
    bounds::source(config, errors);
}

/// A connection string that tokio-postgres can parse.
fn database_url(path: &str, url: &str, errors: &mut ConfigErrors) {
    if url.trim().is_empty() {
        errors.push(
            path,
            "empty: set it to a PostgreSQL connection string, e.g. \"${WALHOOK_DATABASE_URL}\"",
        );
    } else if let Err(err) = url.parse::<tokio_postgres::Config>() {
        // tokio-postgres's messages name the option, never its value.
        errors.push(
            path,
            format!("not a valid PostgreSQL connection string: {err}"),
        );
    }
}

/// 1 to 63 lower-case letters, digits or underscores (slot and schema names).
fn is_lower_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn state(config: &Config, errors: &mut ConfigErrors) {
    if let Some(url) = &config.state.url {
        database_url("state.url", url.expose(), errors);
    }
    let schema = &config.state.schema;
    if !is_lower_name(schema) || schema.starts_with("pg_") {
        errors.push(
            "state.schema",
            format!(
                "invalid schema name {schema:?}: use 1 to 63 lower-case letters, digits or \
                 underscores, not starting with pg_"
            ),
        );
    }
}

fn admin(config: &Config, errors: &mut ConfigErrors) {
    let listen = config.admin.listen;
    if !listen.ip().is_loopback() && config.admin.token.is_none() {
        errors.push(
            "admin.listen",
            format!(
                "{listen} is reachable from other hosts but admin.token is not set; \
                 set admin.token (e.g. \"${{WALHOOK_ADMIN_TOKEN}}\") or listen on 127.0.0.1"
            ),
        );
    }
}

fn endpoint(name: &str, endpoint: &EndpointConfig, errors: &mut ConfigErrors) {
    let path = format!("endpoints.{name}");
    if !is_name(name) {
        errors.push(
            path.clone(),
            "invalid endpoint name: use letters, digits, `_` and `-`",
        );
    }
    http_url(&format!("{path}.url"), &endpoint.url, errors);
    if endpoint.timeout.is_zero() {
        errors.push(format!("{path}.timeout"), "must be more than 0s");
    }
    if endpoint.connect_timeout.is_zero() {
        errors.push(format!("{path}.connect_timeout"), "must be more than 0s");
    }
    headers(&format!("{path}.headers"), &endpoint.headers, errors);
    query(&format!("{path}.query"), &endpoint.query, errors);

    let auth = format!("{path}.auth");
    match &endpoint.auth {
        Auth::None => {}
        Auth::Basic { username, password } => {
            if username.is_empty() {
                errors.push(format!("{auth}.username"), "empty");
            }
            if username.contains(':') {
                errors.push(
                    format!("{auth}.username"),
                    "must not contain `:` (HTTP Basic)",
                );
            }
            not_empty(&format!("{auth}.password"), password, errors);
        }
        Auth::Bearer { token } => not_empty(&format!("{auth}.token"), token, errors),
        Auth::ApiKey { header, value } => {
            if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                errors.push(
                    format!("{auth}.header"),
                    format!("{header:?} is not a valid header name"),
                );
            }
            not_empty(&format!("{auth}.value"), value, errors);
        }
        Auth::Oauth2 {
            token_url,
            client_id,
            client_secret,
            ..
        } => {
            http_url(&format!("{auth}.token_url"), token_url, errors);
            if client_id.is_empty() {
                errors.push(format!("{auth}.client_id"), "empty");
            }
            not_empty(&format!("{auth}.client_secret"), client_secret, errors);
        }
    }

    if let Some(signing) = &endpoint.signing {
        self::signing(&path, endpoint, signing, errors);
    }

    let tls = &endpoint.tls;
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        errors.push(
            format!("{path}.tls"),
            "client_cert and client_key go together: set both or neither",
        );
    }
    let files = [
        ("ca_file", &tls.ca_file),
        ("client_cert", &tls.client_cert),
        ("client_key", &tls.client_key),
    ];
    for (field, file) in files {
        if let Some(file) = file {
            if let Err(err) = std::fs::metadata(file) {
                errors.push(
                    format!("{path}.tls.{field}"),
                    format!("cannot read {}: {err}", file.display()),
                );
            }
        }
    }

    if let Some(rate) = endpoint.rate_limit {
        if !(rate.is_finite() && rate > 0.0) {
            errors.push(
                format!("{path}.rate_limit"),
                "must be more than 0 (requests per second); remove it for no limit",
            );
        }
    }
    let retry = &endpoint.retry;
    if retry.initial.is_zero() {
        errors.push(format!("{path}.retry.initial"), "must be more than 0s");
    }
    if retry.initial > retry.max {
        errors.push(
            format!("{path}.retry.max"),
            format!(
                "{} is shorter than retry.initial ({})",
                humantime::format_duration(retry.max),
                humantime::format_duration(retry.initial)
            ),
        );
    }
}

fn signing(path: &str, endpoint: &EndpointConfig, signing: &Signing, errors: &mut ConfigErrors) {
    let base = format!("{path}.signing");
    if signing.secret.is_empty() {
        errors.push(format!("{base}.secret"), "give at least one secret");
    }
    let many = signing.secret.len() > 1;
    for (i, secret) in signing.secret.iter().enumerate() {
        let field = if many {
            format!("{base}.secret[{i}]")
        } else {
            format!("{base}.secret")
        };
        if let Err(err) = SigningKey::parse_for(signing.format, secret.expose()) {
            errors.push(field, err.to_string());
        }
    }
    let hmac_only = [
        ("header", signing.header.is_some()),
        ("algorithm", signing.algorithm.is_some()),
        ("encoding", signing.encoding.is_some()),
        ("prefix", signing.prefix.is_some()),
        ("timestamp_header", signing.timestamp_header.is_some()),
    ];
    if signing.format == SigningFormat::StandardWebhooks {
        for (key, set) in hmac_only {
            if set {
                errors.push(
                    format!("{base}.{key}"),
                    "applies to format = \"hmac\" only; Standard Webhooks signs with \
                     webhook-signature (HMAC-SHA256 of id.timestamp.body, base64): add \
                     format = \"hmac\" or remove this key",
                );
            }
        }
        return;
    }
    // The header auth sets, which a signature header must not replace.
    let auth_header = match &endpoint.auth {
        Auth::None => None,
        Auth::Basic { .. } | Auth::Bearer { .. } | Auth::Oauth2 { .. } => {
            Some("authorization".to_string())
        }
        Auth::ApiKey { header, .. } => Some(header.to_ascii_lowercase()),
    };
    let mut signature_headers = Vec::new();
    for (key, name) in [
        ("header", &signing.header),
        ("timestamp_header", &signing.timestamp_header),
    ] {
        let Some(name) = name else { continue };
        let field = format!("{base}.{key}");
        let lower = name.to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(field, format!("{name:?} is not a valid header name"));
        } else if RESERVED_HEADERS.contains(&lower.as_str()) {
            errors.push(
                field,
                "walhook sets this header itself; choose another name",
            );
        } else if auth_header.as_deref() == Some(lower.as_str()) {
            errors.push(
                field,
                "the endpoint's auth sets this header; choose another name",
            );
        } else if signature_headers.contains(&lower) {
            errors.push(
                field,
                "the same header as signing.header; choose another name",
            );
        } else {
            signature_headers.push(lower);
        }
    }
    if signing.header.is_none() {
        errors.push(
            format!("{base}.header"),
            "missing: name the header the receiver reads the signature from, e.g. \
             header = \"X-Signature\"",
        );
    }
    if let Some(prefix) = &signing.prefix {
        if prefix.contains(',') || reqwest::header::HeaderValue::from_str(prefix).is_err() {
            errors.push(
                format!("{base}.prefix"),
                "must be header text without `,` (several signatures are separated by commas \
                 while secrets rotate)",
            );
        }
    }
    for name in endpoint.headers.keys() {
        if signature_headers.contains(&name.to_ascii_lowercase()) {
            errors.push(
                format!("{path}.headers.{name}"),
                "the endpoint's signing sets this header; remove it",
            );
        }
    }
}

fn strategy(
    path: &str,
    strategy: &StrategyConfig,
    config: &Config,
    broken: &BTreeSet<String>,
    errors: &mut ConfigErrors,
) {
    if !is_name(&strategy.name) {
        errors.push(
            format!("{path}.name"),
            format!(
                "invalid name {:?}: use letters, digits, `_` and `-`",
                strategy.name
            ),
        );
    }
    if !config.endpoints.contains_key(&strategy.endpoint) && !broken.contains(&strategy.endpoint) {
        let known: Vec<&str> = config.endpoints.keys().map(String::as_str).collect();
        let hint = if known.is_empty() {
            "there are none; add an [endpoints.NAME] section".to_string()
        } else {
            format!("known endpoints: {}", known.join(", "))
        };
        errors.push(
            format!("{path}.endpoint"),
            format!("no endpoint named {:?} ({hint})", strategy.endpoint),
        );
    }
    let filters = [
        ("on_insert", &strategy.on_insert),
        ("on_update", &strategy.on_update),
        ("on_delete", &strategy.on_delete),
        ("on_truncate", &strategy.on_truncate),
    ];
    // A strategy only for on-demand or scheduled runs needs no live filter.
    let runs_only =
        strategy.on_demand.sync || strategy.on_demand.r#async || !strategy.schedules.is_empty();
    match (&strategy.table, &strategy.messages) {
        (None, None) => errors.push(
            format!("{path}.table"),
            "missing: set `table` (\"schema.table\") to send row changes, or `messages` \
             (a prefix) to send logical messages",
        ),
        (Some(_), Some(_)) => errors.push(
            format!("{path}.messages"),
            "a strategy follows either a table or messages: remove `table` or `messages` \
             (use two strategies for both)",
        ),
        (None, Some(_)) => message_strategy(path, strategy, &filters, errors),
        (Some(_), None) => {
            if strategy.on_message.is_some() {
                errors.push(
                    format!("{path}.on_message"),
                    "on_message needs `messages` (a prefix) instead of `table`",
                );
            }
        }
    }
    if strategy.messages.is_some() {
        // Checked by message_strategy.
    } else if filters.iter().all(|(_, f)| f.is_none()) && !runs_only {
        errors.push(
            path,
            "no on_insert, on_update, on_delete or on_truncate: the strategy would never send anything; \
             add one (\"true\" sends every change of that kind)",
        );
    }
    for (field, filter) in filters {
        if filter.as_deref().is_some_and(|f| f.trim().is_empty()) {
            errors.push(
                format!("{path}.{field}"),
                "empty filter: write \"true\" to send every change, or remove the key to send none",
            );
        }
    }
    let adds_token = config
        .endpoints
        .get(&strategy.endpoint)
        .and_then(|e| e.signing.as_ref())
        .is_some_and(|s| s.include_token);
    if adds_token && strategy.body.contains_key("token") {
        errors.push(
            format!("{path}.body.token"),
            format!(
                "endpoint {:?} has signing.include_token = true, which sets the body's \
                 `token` itself; rename this field",
                strategy.endpoint
            ),
        );
    }
    for key in strategy.body.keys() {
        if RESERVED_BODY_KEYS.contains(&key.as_str()) {
            errors.push(
                format!("{path}.body.{key}"),
                format!(
                    "`{key}` is part of every payload (strategy, batch, records), so a body \
                     field cannot have that name; rename it"
                ),
            );
        }
    }
    if strategy.record_shape == RecordShape::Flat && strategy.record.is_none() {
        errors.push(
            format!("{path}.record_shape"),
            "\"flat\" records are exactly the `record` mapping: add record = { … } \
             (map op, the record id or the LSN in with { expr = \"op\" }, { expr = \"id\" }, \
             { expr = \"lsn\" }), or remove record_shape for the envelope",
        );
    }
    if strategy.batch_size == 0 {
        errors.push(format!("{path}.batch_size"), "must be at least 1");
    }
    if strategy.max_batch_bytes == 0 {
        errors.push(format!("{path}.max_batch_bytes"), "must be at least 1");
    }
    if strategy.max_in_flight == 0 {
        errors.push(format!("{path}.max_in_flight"), "must be at least 1");
    }
    if strategy.max_in_flight > 1 && strategy.ordering == Ordering::Commit {
        errors.push(
            format!("{path}.max_in_flight"),
            "more than 1 batch in flight needs ordering = \"key\" (order per group key); \
             under ordering = \"commit\" one batch is in flight at a time",
        );
    }
    if strategy.group_by.is_some() && strategy.ordering != Ordering::Key {
        errors.push(
            format!("{path}.group_by"),
            "only used with ordering = \"key\"; set that or remove group_by",
        );
    }
    if strategy
        .group_by
        .as_deref()
        .is_some_and(|g| g.trim().is_empty())
    {
        errors.push(
            format!("{path}.group_by"),
            "empty: write an expression such as \"row.customer_id\", or remove it to group by the key",
        );
    }
    if strategy.run_as.as_deref().is_some_and(str::is_empty) {
        errors.push(
            format!("{path}.run_as"),
            "empty: name a role or remove the key",
        );
    }
    headers(&format!("{path}.headers"), &strategy.headers, errors);
    let signing = config
        .endpoints
        .get(&strategy.endpoint)
        .and_then(|e| e.signing.as_ref())
        .filter(|s| s.format == SigningFormat::Hmac);
    if let Some(signing) = signing {
        for name in strategy.headers.keys() {
            let signs = [&signing.header, &signing.timestamp_header]
                .into_iter()
                .flatten()
                .any(|h| h.eq_ignore_ascii_case(name));
            if signs {
                errors.push(
                    format!("{path}.headers.{name}"),
                    format!(
                        "endpoint {:?}'s signing sets this header; remove it",
                        strategy.endpoint
                    ),
                );
            }
        }
    }
    query(&format!("{path}.query"), &strategy.query, errors);
    if strategy.record.as_ref().is_some_and(BTreeMap::is_empty) {
        errors.push(
            format!("{path}.record"),
            "empty: list the fields to send, or remove `record` to send whole rows",
        );
    }
    if strategy.on_demand.sync && strategy.on_demand.sync_limit == 0 {
        errors.push(format!("{path}.on_demand.sync_limit"), "must be at least 1");
    }
    if !(1..=MAX_CHUNK_SIZE).contains(&strategy.backfill.chunk_size) {
        errors.push(
            format!("{path}.backfill.chunk_size"),
            format!(
                "must be between 1 and {MAX_CHUNK_SIZE} rows (each chunk is read in one \
                 transaction and held in memory until it goes)"
            ),
        );
    }
    let mut schedule_names = BTreeSet::new();
    for (i, schedule) in strategy.schedules.iter().enumerate() {
        if schedule
            .name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            errors.push(
                format!("{path}.schedules[{i}].name"),
                "is empty: give a name, or leave it out to use the cron text",
            );
        } else if !schedule_names.insert(schedule.name()) {
            errors.push(
                format!("{path}.schedules[{i}].name"),
                format!(
                    "{:?} is already the name of another schedule of this strategy; names \
                     (the cron text when unnamed) must be unique per strategy",
                    schedule.name()
                ),
            );
        }
        if let Err(message) = schedule.parse_cron() {
            errors.push(format!("{path}.schedules[{i}].cron"), message);
        }
        if let Err(message) = schedule.time_zone() {
            errors.push(format!("{path}.schedules[{i}].timezone"), message);
        }
    }
}

fn headers(path: &str, headers: &BTreeMap<String, Template>, errors: &mut ConfigErrors) {
    for (name, value) in headers {
        let field = format!("{path}.{name}");
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(field, "not a valid HTTP header name");
        } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            errors.push(field, "walhook sets this header itself; remove it");
        } else if let Some(text) = value.literal_text() {
            if reqwest::header::HeaderValue::from_str(&text).is_err() {
                errors.push(field, "not a valid HTTP header value (control characters?)");
            }
        }
    }
}

fn query(path: &str, query: &BTreeMap<String, Template>, errors: &mut ConfigErrors) {
    for name in query.keys() {
        if name.is_empty() {
            errors.push(path, "empty parameter name");
        }
    }
}

fn http_url(path: &str, url: &str, errors: &mut ConfigErrors) {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
        Ok(parsed) => errors.push(
            path,
            format!(
                "scheme {:?} is not supported: use http:// or https://",
                parsed.scheme()
            ),
        ),
        Err(err) => errors.push(path, format!("not a valid URL: {err}")),
    }
}

fn not_empty(path: &str, secret: &Secret, errors: &mut ConfigErrors) {
    if secret.is_empty() {
        errors.push(path, "empty (is the environment variable set?)");
    }
}

/// Names in metrics, URLs and logs: letters, digits, `_`, `-`; 1 to 63.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
