//! Upper bounds and names PostgreSQL can hold: values a typo or a paste
//! accident can produce (an 11-year `linger`, a `batch_size` of 2^63, a
//! 10 MB header, a table name with U+202E in it) are refused at load with
//! the field's path, before anything runs. Each bound is far above any
//! setting that makes sense and far below what would overflow, exhaust
//! memory or never fire.

use std::collections::BTreeMap;
use std::time::Duration;

use super::endpoint::EndpointConfig;
use super::error::ConfigErrors;
use super::strategy::StrategyConfig;
use super::template::Template;
use super::Config;

/// Most records per request.
pub(crate) const MAX_BATCH_SIZE: usize = 100_000;
/// Most bytes of records per request.
pub(crate) const MAX_BATCH_BYTES: usize = 256 << 20;
/// Most batches in flight per strategy.
pub(crate) const MAX_IN_FLIGHT: usize = 1_024;
/// Longest a batch waits to fill.
pub(crate) const MAX_LINGER: Duration = Duration::from_secs(3_600);
/// Most rows a synchronous on-demand run sends in its answer.
pub(crate) const MAX_SYNC_LIMIT: u64 = 1_000_000;
/// Longest wait for an endpoint's answer.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Longest wait for a connection to an endpoint.
pub(crate) const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest first wait between attempts.
pub(crate) const MAX_RETRY_INITIAL: Duration = Duration::from_secs(3_600);
/// Longest wait between attempts.
pub(crate) const MAX_RETRY_MAX: Duration = Duration::from_secs(86_400);
/// Most attempts per batch (0 = forever stays allowed).
pub(crate) const MAX_ATTEMPTS: u32 = 1_000_000;
/// Most failures in a row before the circuit opens.
pub(crate) const MAX_BREAKER_FAILURES: u32 = 1_000_000;
/// Most requests per second.
pub(crate) const MAX_RATE_LIMIT: f64 = 1_000_000.0;
/// The largest process-wide memory budget.
pub(crate) const MAX_BUFFER_BYTES: usize = 16 << 30;
/// The longest header or query value written in the file (servers commonly
/// refuse request heads over 8 KiB).
pub(crate) const MAX_HEADER_VALUE_BYTES: usize = 8 << 10;
/// The longest header or query name.
pub(crate) const MAX_HEADER_NAME_BYTES: usize = 256;
/// PostgreSQL's longest identifier (NAMEDATALEN - 1): longer names are
/// truncated by the server, so they never match the catalog.
pub(crate) const MAX_IDENTIFIER_BYTES: usize = 63;

/// The bounds of `[source]`.
pub(super) fn source(config: &Config, errors: &mut ConfigErrors) {
    let source = &config.source;
    if source.max_buffer_bytes > MAX_BUFFER_BYTES {
        errors.push(
            "source.max_buffer_bytes",
            format!(
                "{} bytes is more than the largest budget, \"16GiB\" (the default is \"64MiB\")",
                source.max_buffer_bytes
            ),
        );
    }
    if let Err(message) = identifier(&source.publication) {
        errors.push("source.publication", message);
    }
}

/// The bounds of one endpoint at `path`.
pub(super) fn endpoint(path: &str, endpoint: &EndpointConfig, errors: &mut ConfigErrors) {
    at_most(path, "timeout", endpoint.timeout, MAX_TIMEOUT, errors);
    at_most(
        path,
        "connect_timeout",
        endpoint.connect_timeout,
        MAX_CONNECT_TIMEOUT,
        errors,
    );
    at_most(
        path,
        "retry.initial",
        endpoint.retry.initial,
        MAX_RETRY_INITIAL,
        errors,
    );
    at_most(path, "retry.max", endpoint.retry.max, MAX_RETRY_MAX, errors);
    if endpoint.retry.max_attempts > MAX_ATTEMPTS {
        errors.push(
            format!("{path}.retry.max_attempts"),
            format!("at most {MAX_ATTEMPTS}; 0 retries forever"),
        );
    }
    if endpoint.circuit_breaker.failures > MAX_BREAKER_FAILURES {
        errors.push(
            format!("{path}.circuit_breaker.failures"),
            format!("at most {MAX_BREAKER_FAILURES}; 0 never opens the circuit"),
        );
    }
    if endpoint.rate_limit.is_some_and(|r| r > MAX_RATE_LIMIT) {
        errors.push(
            format!("{path}.rate_limit"),
            "at most 1000000 requests per second; remove it for no limit",
        );
    }
    values(&format!("{path}.headers"), &endpoint.headers, errors);
    values(&format!("{path}.query"), &endpoint.query, errors);
}

/// The bounds of one strategy at `path`.
pub(super) fn strategy(path: &str, strategy: &StrategyConfig, errors: &mut ConfigErrors) {
    let counts = [
        ("batch_size", strategy.batch_size, MAX_BATCH_SIZE),
        ("max_batch_bytes", strategy.max_batch_bytes, MAX_BATCH_BYTES),
        ("max_in_flight", strategy.max_in_flight, MAX_IN_FLIGHT),
    ];
    for (field, value, max) in counts {
        if value > max {
            errors.push(format!("{path}.{field}"), format!("at most {max}"));
        }
    }
    at_most(path, "linger", strategy.linger, MAX_LINGER, errors);
    if strategy.on_demand.sync_limit > MAX_SYNC_LIMIT {
        errors.push(
            format!("{path}.on_demand.sync_limit"),
            format!("at most {MAX_SYNC_LIMIT}; larger runs are asynchronous (on_demand.async)"),
        );
    }
    if let Some(table) = &strategy.table {
        for (part, name) in [("schema", &table.schema), ("table", &table.name)] {
            if let Err(message) = identifier(name) {
                errors.push(
                    format!("{path}.table"),
                    format!("the {part} name {message}"),
                );
            }
        }
    }
    if let Some(role) = &strategy.run_as {
        if !role.is_empty() {
            if let Err(message) = identifier(role) {
                errors.push(format!("{path}.run_as"), format!("the role name {message}"));
            }
        }
    }
    if let Some(prefix) = &strategy.messages {
        if let Some(c) = prefix.chars().find(|c| hidden_or_control(*c)) {
            errors.push(format!("{path}.messages"), contains(c));
        }
    }
    values(&format!("{path}.headers"), &strategy.headers, errors);
    values(&format!("{path}.query"), &strategy.query, errors);
}

fn at_most(path: &str, field: &str, value: Duration, max: Duration, errors: &mut ConfigErrors) {
    if value > max {
        errors.push(
            format!("{path}.{field}"),
            format!(
                "{} is longer than the longest accepted, {}",
                humantime::format_duration(value),
                humantime::format_duration(max)
            ),
        );
    }
}

/// Header and query names and literal values within their bounds.
fn values(path: &str, map: &BTreeMap<String, Template>, errors: &mut ConfigErrors) {
    for (name, value) in map {
        if name.len() > MAX_HEADER_NAME_BYTES {
            errors.push(
                format!("{path}.{name}"),
                format!(
                    "the name is {} bytes long; at most {MAX_HEADER_NAME_BYTES}",
                    name.len()
                ),
            );
        }
        let length = value.literal_text().map_or(0, |text| text.len());
        if length > MAX_HEADER_VALUE_BYTES {
            errors.push(
                format!("{path}.{name}"),
                format!(
                    "the value is {length} bytes long; at most {MAX_HEADER_VALUE_BYTES} (8 KiB): \
                     send large values in the body"
                ),
            );
        }
    }
}

/// A name PostgreSQL can hold and an operator can read as it is: 1 to 63
/// bytes, no control characters (NUL cannot be in a PostgreSQL name at
/// all) and no bidirectional controls (U+202E shows a name differently from
/// what it is).
pub(crate) fn identifier(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!(
            "is {} bytes long; PostgreSQL names are at most {MAX_IDENTIFIER_BYTES} bytes \
             (longer ones are cut short, so they name something else)",
            name.len()
        ));
    }
    match name.chars().find(|c| hidden_or_control(*c)) {
        Some(c) => Err(contains(c)),
        None => Ok(()),
    }
}

/// Control characters, and the Unicode controls that reorder or hide text.
fn hidden_or_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

fn contains(c: char) -> String {
    let what = if c == '\0' {
        "NUL, which PostgreSQL names cannot contain".to_string()
    } else if c.is_control() {
        "a control character".to_string()
    } else {
        "an invisible or bidirectional control character, which shows the name differently \
         from what it is"
            .to_string()
    };
    format!("contains U+{:04X} ({what}); remove it", u32::from(c))
}
