//! What a reload would change: two parsed configurations compared section by
//! section, strategy by strategy (by name) and endpoint by endpoint, field
//! by field. Pure: no database, no I/O. Values are never shown, only the
//! dotted names of the fields that differ (they may hold secrets).

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::config::Config;

/// A setting that a reload cannot change, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// Its dotted path, e.g. `source.slot`.
    pub path: String,
    /// Why it needs a restart, and what to do.
    pub reason: String,
}

/// A strategy or endpoint that differs, with the fields that do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    pub name: String,
    pub fields: Vec<String>,
}

/// What applying the new configuration would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Settings only read at start that differ: the reload is refused.
    pub refused: Vec<Refusal>,
    /// Strategies new in the file (they start at the reload's position).
    pub added: Vec<String>,
    /// Strategies gone from the file (they deliver what they were given, then stop).
    pub removed: Vec<String>,
    /// Strategies whose own fields differ.
    pub changed: Vec<Changed>,
    /// Endpoints that differ (added, removed or changed fields).
    pub endpoints: Vec<Changed>,
    /// Strategies not changed themselves whose endpoint changed: they
    /// restart like changed ones.
    pub endpoint_users: Vec<String>,
}

/// Sections read once at start: the replication connection, the admin
/// server, the state database.
const FIXED_SECTIONS: [(&str, &str); 3] = [
    (
        "source",
        "the replication connection is opened with it at start",
    ),
    ("admin", "the admin server is started with it"),
    ("state", "the state database is opened with it at start"),
];

impl Plan {
    /// What changes from `old` to `new`.
    pub fn between(old: &Config, new: &Config) -> Plan {
        let mut plan = Plan::default();
        for (section, why) in FIXED_SECTIONS {
            for field in differing(table(&old.raw.0, section), table(&new.raw.0, section)) {
                plan.refused.push(Refusal {
                    path: format!("{section}.{field}"),
                    reason: format!(
                        "needs a restart ({why}); restore the running value or restart walhook"
                    ),
                });
            }
        }
        let messages = |c: &Config| c.strategies.iter().any(|s| s.messages.is_some());
        if messages(new) && !messages(old) {
            plan.refused.push(Refusal {
                path: "strategies".into(),
                reason: "the first `messages` strategy needs a restart (the replication stream \
                         was started without logical messages); restart walhook to add it"
                    .into(),
            });
        }

        let old_endpoints = table(&old.raw.0, "endpoints");
        let new_endpoints = table(&new.raw.0, "endpoints");
        let names: BTreeSet<&String> = old_endpoints.keys().chain(new_endpoints.keys()).collect();
        for name in names {
            let fields = match (old_endpoints.get(name), new_endpoints.get(name)) {
                (Some(a), Some(b)) => differing(as_table(a), as_table(b)),
                (None, Some(_)) => vec!["(added)".into()],
                (Some(_), None) => vec!["(removed)".into()],
                (None, None) => Vec::new(),
            };
            if !fields.is_empty() {
                plan.endpoints.push(Changed {
                    name: name.clone(),
                    fields,
                });
            }
        }

        let old_strategies = strategies(old);
        let new_strategies = strategies(new);
        for (name, _) in &old_strategies {
            if !new_strategies.iter().any(|(n, _)| n == name) {
                plan.removed.push(name.clone());
            }
        }
        for (name, raw) in &new_strategies {
            let Some((_, before)) = old_strategies.iter().find(|(n, _)| n == name) else {
                plan.added.push(name.clone());
                continue;
            };
            let fields = differing(before, raw);
            if !fields.is_empty() {
                plan.changed.push(Changed {
                    name: name.clone(),
                    fields,
                });
            } else if let Some(endpoint) = raw.get("endpoint").and_then(toml::Value::as_str) {
                if plan.endpoints.iter().any(|e| e.name == endpoint) {
                    plan.endpoint_users.push(name.clone());
                }
            }
        }
        plan
    }

    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        self.refused.is_empty()
            && self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.endpoints.is_empty()
    }

    /// Strategies that need a new worker: changed ones and the users of a
    /// changed endpoint.
    pub(crate) fn restarted(&self) -> BTreeSet<&str> {
        self.changed
            .iter()
            .map(|c| c.name.as_str())
            .chain(self.endpoint_users.iter().map(String::as_str))
            .collect()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no changes");
        }
        for refusal in &self.refused {
            writeln!(f, "refused   {}: {}", refusal.path, refusal.reason)?;
        }
        for name in &self.added {
            writeln!(
                f,
                "add       strategy {name} (starts at the reload's position)"
            )?;
        }
        for name in &self.removed {
            writeln!(
                f,
                "remove    strategy {name} (delivers what it was given, then stops)"
            )?;
        }
        for changed in &self.changed {
            writeln!(
                f,
                "change    strategy {}: {}",
                changed.name,
                changed.fields.join(", ")
            )?;
        }
        for changed in &self.endpoints {
            writeln!(
                f,
                "change    endpoint {}: {}",
                changed.name,
                changed.fields.join(", ")
            )?;
        }
        for name in &self.endpoint_users {
            writeln!(f, "restart   strategy {name} (its endpoint changed)")?;
        }
        Ok(())
    }
}

static EMPTY: std::sync::LazyLock<toml::Table> = std::sync::LazyLock::new(toml::Table::new);

fn table<'a>(raw: &'a toml::Table, key: &str) -> &'a toml::Table {
    raw.get(key).map_or(&EMPTY, as_table)
}

fn as_table(value: &toml::Value) -> &toml::Table {
    value.as_table().unwrap_or(&EMPTY)
}

/// Each `[[strategies]]` table by its name, in file order.
fn strategies(config: &Config) -> Vec<(String, &toml::Table)> {
    config
        .raw
        .0
        .get("strategies")
        .and_then(toml::Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    let table = item.as_table()?;
                    let name = table.get("name")?.as_str()?.to_string();
                    Some((name, table))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The keys whose values differ between `a` and `b` (present in one only
/// counts), sorted.
fn differing(a: &toml::Table, b: &toml::Table) -> Vec<String> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, &|_| None).expect("valid config")
    }

    const BASE: &str = "[source]\nurl = \"postgres://u:secret@h/db\"\nslot = \"s\"\n\n\
        [endpoints.a]\nurl = \"http://127.0.0.1:1/a\"\n\n\
        [endpoints.b]\nurl = \"http://127.0.0.1:1/b\"\n\n";

    fn strategy(name: &str, endpoint: &str, filter: &str) -> String {
        format!(
            "[[strategies]]\nname = \"{name}\"\ntable = \"t\"\nendpoint = \"{endpoint}\"\non_insert = \"{filter}\"\n\n"
        )
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let text = format!("{BASE}{}", strategy("x", "a", "true"));
        let plan = Plan::between(&parse(&text), &parse(&text));
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(plan.to_string(), "no changes\n");
    }

    #[test]
    fn strategies_are_matched_by_name_and_fields_named() {
        let old = format!(
            "{BASE}{}{}",
            strategy("x", "a", "true"),
            strategy("y", "a", "true")
        );
        let new = format!(
            "{BASE}{}{}",
            strategy("z", "b", "true"),
            strategy("x", "a", "new.id > 1")
        );
        let plan = Plan::between(&parse(&old), &parse(&new));
        assert_eq!(plan.added, ["z"]);
        assert_eq!(plan.removed, ["y"]);
        assert_eq!(
            plan.changed,
            [Changed {
                name: "x".into(),
                fields: vec!["on_insert".into()]
            }]
        );
        assert!(plan.refused.is_empty());
        let text = plan.to_string();
        assert!(text.contains("change    strategy x: on_insert"), "{text}");
    }

    #[test]
    fn source_settings_are_refused_without_showing_values() {
        let old = format!("{BASE}{}", strategy("x", "a", "true"));
        let new = old
            .replace("slot = \"s\"", "slot = \"other\"")
            .replace("u:secret@", "u:hunter2@");
        let plan = Plan::between(&parse(&old), &parse(&new));
        let paths: Vec<&str> = plan.refused.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["source.slot", "source.url"]);
        let text = plan.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("secret"),
            "{text}"
        );
        assert!(text.contains("needs a restart"), "{text}");
    }

    #[test]
    fn an_endpoint_change_restarts_its_strategies() {
        let old = format!(
            "{BASE}{}{}",
            strategy("x", "a", "true"),
            strategy("y", "b", "true")
        );
        let new = old.replace("1/a\"", "1/a2\"");
        let plan = Plan::between(&parse(&old), &parse(&new));
        assert_eq!(
            plan.endpoints,
            [Changed {
                name: "a".into(),
                fields: vec!["url".into()]
            }]
        );
        assert_eq!(plan.endpoint_users, ["x"]);
        assert_eq!(plan.restarted().into_iter().collect::<Vec<_>>(), ["x"]);
    }
}
