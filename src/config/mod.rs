//! `config.toml`: what to read, where to send it, and how.
//!
//! Loading goes in four steps, and every step keeps going after an error so
//! the user sees every problem at once, each with its dotted path
//! (`strategies[1].on_update: …`):
//!
//! 1. TOML syntax (an error here stops everything; it keeps toml's line and
//!    column).
//! 2. `${VAR}` interpolation of every string value (`interpolate`).
//! 3. Deserialization of each section, endpoint and strategy on its own, with
//!    `deny_unknown_fields`; a failing item is probed key by key so that all
//!    its unknown keys and bad values are reported, not just the first.
//! 4. Validation (`validate.rs`): cross-references and values serde cannot check.
//!
//! Filter and mapping expressions are compiled by the strategy stage, which
//! plugs in through [`Config::check_expressions`].

mod bounds;
mod de;
mod endpoint;
mod error;
mod interpolate;
mod masked;
mod messages;
mod secret;
mod signing_key;
mod strategy;
mod template;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use endpoint::{
    Auth, CircuitBreaker, EndpointConfig, HmacAlgorithm, OAuth2AuthMethod, OnClientError,
    OnExhausted, ParkAfter, Retry, SignatureEncoding, Signing, SigningFormat, Tls,
};
pub(crate) use error::ConfigError;
pub use error::ConfigErrors;
use secret::DatabaseUrl;
pub use secret::Secret;
pub use signing_key::{SigningError, SigningKey};
#[cfg(test)]
pub(crate) use strategy::Schedule;
pub(crate) use strategy::StrategyConfig;
pub use strategy::TableName;
pub use strategy::{Ordering, RecordShape};
pub use template::Template;

/// The whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[source]`: the database and its replication slot.
    pub(crate) source: SourceConfig,
    /// `[admin]`: the HTTP port for metrics, health, status and the API.
    pub(crate) admin: AdminConfig,
    /// `[state]`: where walhook keeps its state (dead letters, runs, batches).
    pub(crate) state: StateConfig,
    /// `[endpoints.NAME]`: webhook targets, by name.
    pub(crate) endpoints: BTreeMap<String, EndpointConfig>,
    /// `[[strategies]]`: what is sent where, in file order.
    pub(crate) strategies: Vec<StrategyConfig>,
    /// The file as parsed (variables interpolated), for comparing two
    /// configurations field by field (a reload's plan).
    pub(crate) raw: Raw,
    /// The file as loaded, secrets masked, for the console (`GET /config`).
    pub(crate) masked: masked::Masked,
}

/// A parsed file's TOML after interpolation. It holds secrets: compared,
/// never printed (its `Debug` shows nothing).
#[derive(Clone, Default, PartialEq)]
pub(crate) struct Raw(pub(crate) toml::Table);

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Raw(..)")
    }
}

/// `[source]`: where changes come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceConfig {
    /// PostgreSQL connection string (`postgres://user:password@host:5432/db`
    /// or `host=… user=…`); the role needs REPLICATION. Usually
    /// `"${WALHOOK_DATABASE_URL}"`.
    pub(crate) url: DatabaseUrl,
    /// The logical replication slot (lower-case letters, digits, `_`).
    /// Default "walhook".
    #[serde(default = "default_walhook")]
    pub(crate) slot: String,
    /// The publication the slot streams. Default "walhook".
    #[serde(default = "default_walhook")]
    pub(crate) publication: String,
    /// PostgreSQL 17+: create the slot with FAILOVER (and turn it on for an
    /// existing slot), so a physical standby with `sync_replication_slots`
    /// keeps it and walhook resumes there after a promotion. Give `url`
    /// both hosts and `target_session_attrs=read-write`. Default false.
    #[serde(default)]
    pub(crate) failover: bool,
    /// The process-wide memory budget for changes in flight: decoded
    /// changes waiting to be routed, queued records, batches being formed
    /// and request bodies being sent, together. When it is used up walhook
    /// stops reading the replication stream (standby status keeps flowing)
    /// until deliveries free memory; one change larger than the budget still
    /// goes through, alone. Bytes, or text with a unit. Default "64MiB".
    #[serde(default = "default_max_buffer_bytes", deserialize_with = "de::bytes")]
    pub(crate) max_buffer_bytes: usize,
    /// What walhook does when the slot it streamed from is lost: missing
    /// (dropped), invalidated (e.g. by `max_slot_wal_keep_size`), replaced
    /// by a slot it did not feed, or on another cluster. "stop" (the
    /// default): it says what happened, which changes are lost and the fix,
    /// and exits 2. "resync": it creates a new slot, backfills every
    /// strategy consistently and streams on. Default "stop".
    #[serde(default)]
    pub(crate) on_slot_lost: OnSlotLost,
}

/// `source.on_slot_lost`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnSlotLost {
    /// Refuse, name the loss and the fix, exit 2.
    #[default]
    Stop,
    /// Create a new slot and backfill every strategy.
    Resync,
}

impl SourceConfig {
    /// The defaults with an empty `url`, standing in for a `[source]` that
    /// failed to parse while the rest of the file is validated.
    fn placeholder() -> Option<SourceConfig> {
        let table = toml::Table::from_iter([("url".to_string(), toml::Value::from(""))]);
        SourceConfig::deserialize(toml::Value::Table(table)).ok()
    }
}

fn default_max_buffer_bytes() -> usize {
    64 << 20
}

fn default_walhook() -> String {
    "walhook".to_string()
}

/// `[state]`: where walhook keeps its own state (dead letters, batch
/// boundaries, runs): a schema in the source database unless `url` names
/// another database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateConfig {
    /// Connection string of the database holding the state schema; unset =
    /// the source database (`source.url`). For DBAs who allow walhook no
    /// writes on the source database.
    #[serde(default)]
    pub(crate) url: Option<DatabaseUrl>,
    /// The schema (lower-case letters, digits, `_`). Default "walhook".
    #[serde(default = "default_walhook")]
    pub(crate) schema: String,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            url: None,
            schema: default_walhook(),
        }
    }
}

/// `[admin]`: the admin HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminConfig {
    /// Address for `/metrics`, `/healthz`, `/readyz`, `/status` and the API.
    /// Default "127.0.0.1:9187". A non-loopback address needs `token`.
    #[serde(default = "default_listen")]
    pub(crate) listen: SocketAddr,
    /// Bearer token for the mutating endpoints; unset or empty = they are
    /// disabled.
    #[serde(default, deserialize_with = "empty_secret_is_none")]
    pub(crate) token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_listen(),
            token: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9187))
}

fn empty_secret_is_none<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Secret>, D::Error> {
    let secret = Option::<Secret>::deserialize(deserializer)?;
    Ok(secret.filter(|s| !s.is_empty()))
}

/// Where an expression sits and what it is evaluated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExprRole {
    /// An `on_insert`/`on_update`/`on_delete`/`on_truncate` filter.
    Filter(FilterOp),
    /// A `record` field, evaluated per record.
    Record,
    /// A `headers`, `query` or `body` value, evaluated per batch.
    Batch,
    /// A schedule's `filter`, evaluated per row.
    ScheduleFilter,
    /// An `on_message` filter, evaluated per logical message.
    Message,
}

/// The operation a filter applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOp {
    /// `on_insert`.
    Insert,
    /// `on_update`.
    Update,
    /// `on_delete`.
    Delete,
    /// `on_truncate`.
    Truncate,
}

/// One expression in the file, for the strategy stage to compile.
#[derive(Debug, Clone)]
pub struct ExprSite<'a> {
    /// Its dotted path, e.g. `strategies[0].on_update`.
    path: String,
    /// What it is evaluated against.
    pub(crate) role: ExprRole,
    /// The expression text.
    pub(crate) expr: &'a str,
}

impl Config {
    /// Reads, interpolates (from the process environment), parses and
    /// validates `path`. Every problem found is in the error.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|err| {
            let mut errors = ConfigErrors::default();
            errors.push("", format!("cannot read {}: {err}", path.display()));
            errors
        })?;
        Config::parse(&text, &|name| std::env::var(name).ok())
    }

    /// Like [`Config::load`], from text, with variables from `env`.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        Config::parse_checked(text, env, &|_| Ok(()))
    }

    /// [`Config::parse`], with every expression also run through `compile`
    /// (the strategy stage's hook, see [`Config::check_expressions`]). Every
    /// phase runs whatever the others found: an unset variable, a value of
    /// the wrong type or a missing section does not hide the problems of the
    /// rest of the file (the expressions of an item with a bad value are
    /// checked when the item parses without that value).
    pub fn parse_checked(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        compile: &dyn Fn(&ExprSite<'_>) -> Result<(), String>,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let mut table: toml::Table = match text.parse() {
            Ok(table) => table,
            Err(err) => {
                let err: toml::de::Error = err;
                errors.push("", err.to_string().trim_end());
                return Err(errors);
            }
        };
        let mut interpolation_failed = Vec::new();
        interpolate_table(&mut table, "", env, &mut errors, &mut interpolation_failed);
        let interpolation_errors = errors.0.len();
        let raw = Raw(table.clone());

        for key in table.keys() {
            if !["source", "admin", "state", "endpoints", "strategies"].contains(&key.as_str()) {
                errors.push(
                    key.as_str(),
                    "unknown section; expected [source], [admin], [state], [endpoints.NAME] or [[strategies]]",
                );
            }
        }
        let source = match table.remove("source") {
            Some(value) => item::<SourceConfig>(value, "source", &mut errors).ok(),
            None => {
                errors.push(
                    "source",
                    "missing: add a [source] section with url = \"postgres://…\"",
                );
                None
            }
        };
        let admin = match table.remove("admin") {
            Some(value) => item::<AdminConfig>(value, "admin", &mut errors).ok(),
            None => Some(AdminConfig::default()),
        };
        let state = match table.remove("state") {
            Some(value) => item::<StateConfig>(value, "state", &mut errors).ok(),
            None => Some(StateConfig::default()),
        };
        let mut endpoints = BTreeMap::new();
        let mut broken_endpoints = BTreeSet::new();
        // Items that failed but parse without their bad keys: their
        // expressions are still checked.
        let mut salvaged_endpoints = BTreeMap::new();
        let mut salvaged_strategies = Vec::new();
        match table.remove("endpoints") {
            Some(toml::Value::Table(entries)) => {
                for (name, value) in entries {
                    let path = format!("endpoints.{name}");
                    match item::<EndpointConfig>(value, &path, &mut errors) {
                        Ok(endpoint) => {
                            endpoints.insert(name, endpoint);
                        }
                        Err(salvaged) => {
                            if let Some(endpoint) = salvaged {
                                salvaged_endpoints.insert(name.clone(), endpoint);
                            }
                            broken_endpoints.insert(name);
                        }
                    }
                }
            }
            Some(_) => errors.push("endpoints", "expected tables: [endpoints.NAME]"),
            None => {}
        }
        let mut strategies = Vec::new();
        // The index of each parsed strategy in the file, for error paths.
        let mut strategy_index = Vec::new();
        match table.remove("strategies") {
            Some(toml::Value::Array(entries)) => {
                for (i, value) in entries.into_iter().enumerate() {
                    match item::<StrategyConfig>(value, &format!("strategies[{i}]"), &mut errors) {
                        Ok(strategy) => {
                            strategies.push(strategy);
                            strategy_index.push(i);
                        }
                        Err(Some(strategy)) => salvaged_strategies.push((i, strategy)),
                        Err(None) => {}
                    }
                }
            }
            Some(_) => errors.push("strategies", "expected an array of tables: [[strategies]]"),
            None => {}
        }

        // A section that failed is replaced by its defaults so that the rest
        // is validated; the file is refused anyway (its errors are in).
        let sections_parsed = source.is_some() && admin.is_some() && state.is_some();
        let source_parsed = source.is_some();
        let source = match source {
            Some(source) => source,
            None => match SourceConfig::placeholder() {
                Some(source) => source,
                None => return Err(dedup(errors, interpolation_errors, &interpolation_failed)),
            },
        };
        let mut config = Config {
            source,
            admin: admin.unwrap_or_default(),
            state: state.unwrap_or_default(),
            endpoints,
            strategies,
            raw,
            masked: masked::Masked::default(),
        };
        config.masked = masked::mask(&config.raw.0, &config);
        let checks = validate::Checks {
            broken: &broken_endpoints,
            index: &strategy_index,
            source: source_parsed,
        };
        errors.extend(validate::validate(&config, &checks).0);
        let mut all_endpoints: BTreeMap<&String, &EndpointConfig> =
            config.endpoints.iter().collect();
        all_endpoints.extend(salvaged_endpoints.iter());
        let mut all_strategies: Vec<(usize, &StrategyConfig)> = strategy_index
            .iter()
            .copied()
            .zip(config.strategies.iter())
            .chain(salvaged_strategies.iter().map(|(i, s)| (*i, s)))
            .collect();
        all_strategies.sort_by_key(|(i, _)| *i);
        for site in expression_sites(all_endpoints.into_iter(), all_strategies.into_iter()) {
            if let Err(message) = compile(&site) {
                errors.push(site.path.clone(), message);
            }
        }
        let errors = dedup(errors, interpolation_errors, &interpolation_failed);
        if !sections_parsed && errors.is_empty() {
            // Unreachable: a failed section records its error.
            let mut errors = errors;
            errors.push("", "the file does not parse");
            return Err(errors);
        }
        errors.into_result(config)
    }

    /// Every expression in the file with its path and role, in file order.
    fn expressions(&self) -> Vec<ExprSite<'_>> {
        expression_sites(self.endpoints.iter(), self.strategies.iter().enumerate())
    }

    /// Runs `compile` on every expression (the strategy stage's hook) and
    /// collects its failures at their paths.
    pub fn check_expressions(
        &self,
        compile: impl Fn(&ExprSite<'_>) -> Result<(), String>,
    ) -> ConfigErrors {
        let mut errors = ConfigErrors::default();
        for site in self.expressions() {
            if let Err(message) = compile(&site) {
                errors.push(site.path.clone(), message);
            }
        }
        errors
    }

    /// The connection string of the database holding the state schema:
    /// `[state] url`, else `source.url`.
    pub(crate) fn state_url(&self) -> &DatabaseUrl {
        self.state.url.as_ref().unwrap_or(&self.source.url)
    }

    /// The file as loaded (after `${VAR}` interpolation) with every secret
    /// replaced by `[redacted]`.
    pub(crate) fn masked(&self) -> &serde_json::Value {
        self.masked.value()
    }

    /// The endpoint a strategy sends to. `None` only for a config that did
    /// not pass [`Config::validate`].
    pub(crate) fn endpoint_of(&self, strategy: &StrategyConfig) -> Option<&EndpointConfig> {
        self.endpoints.get(&strategy.endpoint)
    }
}

/// The expressions of these endpoints and strategies (each with its index in
/// the file), with their paths and roles, in file order.
fn expression_sites<'a>(
    endpoints: impl Iterator<Item = (&'a String, &'a EndpointConfig)>,
    strategies: impl Iterator<Item = (usize, &'a StrategyConfig)>,
) -> Vec<ExprSite<'a>> {
    let mut sites = Vec::new();
    for (name, endpoint) in endpoints {
        for (field, map) in [("headers", &endpoint.headers), ("query", &endpoint.query)] {
            for (key, template) in map {
                if let Some(expr) = template.expr() {
                    sites.push(ExprSite {
                        path: format!("endpoints.{name}.{field}.{key}"),
                        role: ExprRole::Batch,
                        expr,
                    });
                }
            }
        }
    }
    for (i, strategy) in strategies {
        let base = format!("strategies[{i}]");
        let filters = [
            ("on_insert", &strategy.on_insert, FilterOp::Insert),
            ("on_update", &strategy.on_update, FilterOp::Update),
            ("on_delete", &strategy.on_delete, FilterOp::Delete),
            ("on_truncate", &strategy.on_truncate, FilterOp::Truncate),
        ];
        for (field, filter, op) in filters {
            if let Some(expr) = filter {
                sites.push(ExprSite {
                    path: format!("{base}.{field}"),
                    role: ExprRole::Filter(op),
                    expr,
                });
            }
        }
        let maps = [
            ("headers", Some(&strategy.headers), ExprRole::Batch),
            ("query", Some(&strategy.query), ExprRole::Batch),
            ("body", Some(&strategy.body), ExprRole::Batch),
            ("record", strategy.record.as_ref(), ExprRole::Record),
        ];
        for (field, map, role) in maps {
            let Some(map) = map else { continue };
            for (key, template) in map {
                if let Some(expr) = template.expr() {
                    sites.push(ExprSite {
                        path: format!("{base}.{field}.{key}"),
                        role,
                        expr,
                    });
                }
            }
        }
        if let Some(expr) = &strategy.on_message {
            sites.push(ExprSite {
                path: format!("{base}.on_message"),
                role: ExprRole::Message,
                expr,
            });
        }
        if let Some(expr) = &strategy.group_by {
            sites.push(ExprSite {
                path: format!("{base}.group_by"),
                role: ExprRole::Record,
                expr,
            });
        }
        for (j, schedule) in strategy.schedules.iter().enumerate() {
            if let Some(expr) = &schedule.filter {
                sites.push(ExprSite {
                    path: format!("{base}.schedules[{j}].filter"),
                    role: ExprRole::ScheduleFilter,
                    expr,
                });
            }
        }
    }
    sites
}

/// Interpolates every string in `table` in place; failures are recorded at
/// their path and the value is left as written.
fn interpolate_table(
    table: &mut toml::Table,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut ConfigErrors,
    failed: &mut Vec<String>,
) {
    for (key, value) in table.iter_mut() {
        interpolate_value(value, &error::join(path, key), env, errors, failed);
    }
}

fn interpolate_value(
    value: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut ConfigErrors,
    failed: &mut Vec<String>,
) {
    match value {
        toml::Value::String(text) => match interpolate::interpolate(text, env) {
            Ok(replaced) => *text = replaced,
            Err(message) => {
                errors.push(path, message);
                failed.push(path.to_string());
            }
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{path}[{i}]"), env, errors, failed);
            }
        }
        toml::Value::Table(table) => interpolate_table(table, path, env, errors, failed),
        _ => {}
    }
}

/// Drops later errors about values whose interpolation already failed: the
/// first message (the unset variable) is the one to fix.
fn dedup(errors: ConfigErrors, interpolation_errors: usize, failed: &[String]) -> ConfigErrors {
    let mut kept = ConfigErrors::default();
    let mut seen = BTreeSet::new();
    for (i, error) in errors.0.into_iter().enumerate() {
        let about_failed_value = i >= interpolation_errors
            && failed
                .iter()
                .any(|p| error.path == *p || error.path.starts_with(&format!("{p}.")));
        if !about_failed_value && seen.insert(error.to_string()) {
            kept.0.push(error);
        }
    }
    kept
}

/// The outcome of one deserialization attempt.
struct Attempt {
    error: ConfigError,
    /// `Some(field)` for "missing field `field`".
    missing: Option<String>,
}

/// Deserializes one item (a section, an endpoint, a strategy). When it fails,
/// each key is tried alone, so every bad key is reported, then the rest
/// together, for missing fields.
///
/// `Err(Some(item))`: the item parses without its bad keys (for checks that
/// should still see it); `Err(None)`: not even that.
fn item<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    errors: &mut ConfigErrors,
) -> Result<T, Option<T>> {
    let first = match attempt::<T>(value.clone(), path) {
        Ok(item) => return Ok(item),
        Err(first) => first,
    };
    let toml::Value::Table(table) = value else {
        errors.0.push(first.error);
        return Err(None);
    };
    let mut found = Vec::new();
    let mut bad_keys = BTreeSet::new();
    for (key, value) in &table {
        let probe = toml::Table::from_iter([(key.clone(), value.clone())]);
        if let Err(attempt) = attempt::<T>(toml::Value::Table(probe), path) {
            if attempt.missing.is_none() {
                found.push(attempt.error);
                bad_keys.insert(key.clone());
            }
        }
    }
    let rest: toml::Table = table
        .into_iter()
        .filter(|(key, _)| !bad_keys.contains(key))
        .collect();
    let salvaged = match attempt::<T>(toml::Value::Table(rest), path) {
        Ok(item) => Some(item),
        Err(attempt) => {
            let about_bad_key = attempt
                .missing
                .as_ref()
                .is_some_and(|f| bad_keys.contains(f));
            if !about_bad_key {
                found.push(attempt.error);
            }
            None
        }
    };
    if found.is_empty() {
        found.push(first.error);
    }
    errors.extend(found);
    Err(salvaged)
}

fn attempt<T: DeserializeOwned>(value: toml::Value, base: &str) -> Result<T, Attempt> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|err| {
        let mut path = base.to_string();
        for segment in err.path() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                serde_path_to_error::Segment::Map { key } => path = error::join(&path, key),
                serde_path_to_error::Segment::Enum { .. }
                | serde_path_to_error::Segment::Unknown => {}
            }
        }
        let raw = err.into_inner().message().to_string();
        let message = messages::humane(&raw);
        let quoted = |prefix: &str| {
            raw.strip_prefix(prefix)
                .and_then(|rest| rest.split('`').next())
                .map(str::to_string)
        };
        // serde_path_to_error stops at the struct for some formats and at
        // the key for others; make sure the path ends at the unknown key.
        if let Some(field) = quoted("unknown field `") {
            if !path.ends_with(&format!(".{field}")) {
                path = error::join(&path, &field);
            }
        }
        let missing = quoted("missing field `");
        Attempt {
            error: ConfigError::new(path, message),
            missing,
        }
    })
}

#[cfg(test)]
mod bounds_tests;
#[cfg(test)]
mod reference_tests;
#[cfg(test)]
mod tests;
