//! The documented configuration: the README's reference covers every
//! config key (read from the parser itself: each section rejects an unknown
//! key by listing the keys it accepts, so a new field without a README row
//! fails here), and the shipped example config.toml is valid.

use super::Config;

const BASE: &str = r#"
[source]
url = "postgres://walhook@127.0.0.1:5432/shop"
__SOURCE__
[admin]
__ADMIN__
[state]
__STATE__
[endpoints.hook]
url = "http://127.0.0.1:9/hook"
__ENDPOINT__
retry = { __RETRY__ }
tls = { __TLS__ }
signing = { secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" __SIGNING__ }
auth = { type = "__AUTH__", __AUTHFIELD__ }

[[strategies]]
name = "orders"
table = "orders"
endpoint = "hook"
on_insert = "true"
on_demand = { __ONDEMAND__ }
schedules = [ { cron = "0 * * * *" __SCHEDULE__ } ]
backfill = { __BACKFILL__ }
__STRATEGY__
"#;

/// The keys a section accepts, from the parser's "unknown field" message.
fn accepted_keys(placeholder: &str, auth: &str) -> Vec<String> {
    let mut text = BASE.to_string();
    for p in [
        "__SOURCE__",
        "__ADMIN__",
        "__STATE__",
        "__ENDPOINT__",
        "__STRATEGY__",
        "__RETRY__",
        "__TLS__",
        "__ONDEMAND__",
        "__SIGNING__",
        "__SCHEDULE__",
        "__AUTHFIELD__",
        "__BACKFILL__",
    ] {
        let inline = matches!(
            p,
            "__RETRY__" | "__TLS__" | "__ONDEMAND__" | "__AUTHFIELD__" | "__BACKFILL__"
        );
        let comma = matches!(p, "__SIGNING__" | "__SCHEDULE__");
        let replacement = match (p == placeholder, inline, comma) {
            (false, _, _) => String::new(),
            (true, true, _) => "zz_unknown_key = 1".to_string(),
            (true, false, true) => ", zz_unknown_key = 1".to_string(),
            (true, false, false) => "zz_unknown_key = 1".to_string(),
        };
        text = text.replace(p, &replacement);
    }
    let text = text
        .replace("__AUTH__", auth)
        .replace("auth = { type = \"none\",  }", "auth = { type = \"none\" }");
    let errors = match Config::parse(&text, &|_| None) {
        Ok(_) => panic!("{placeholder}: an unknown key was accepted"),
        Err(errors) => errors.to_string(),
    };
    let line = errors
        .lines()
        .find(|l| l.contains("zz_unknown_key"))
        .unwrap_or_else(|| panic!("{placeholder}/{auth}: no unknown-key error in {errors}"));
    let list = line
        .split_once("allowed here: ")
        .unwrap_or_else(|| panic!("no key list in {line}"))
        .1
        .trim_end()
        .trim_end_matches(')');
    list.replace(" or ", ",")
        .split(',')
        .map(|k| k.trim().trim_matches('`').to_string())
        .filter(|k| !k.is_empty() && k != "type")
        .collect()
}

#[test]
fn every_config_key_is_in_the_readme_reference() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let reference = readme
        .split_once("## Configuration reference")
        .expect("README has a Configuration reference section")
        .1;
    let mut keys = Vec::new();
    for p in [
        "__SOURCE__",
        "__ADMIN__",
        "__STATE__",
        "__ENDPOINT__",
        "__STRATEGY__",
        "__RETRY__",
        "__TLS__",
        "__ONDEMAND__",
        "__SIGNING__",
        "__SCHEDULE__",
        "__BACKFILL__",
    ] {
        keys.extend(accepted_keys(p, "none"));
    }
    for auth in ["basic", "bearer", "api_key", "oauth2"] {
        keys.extend(accepted_keys("__AUTHFIELD__", auth));
    }
    assert!(keys.len() > 40, "found only {} keys: {keys:?}", keys.len());
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !reference.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "config keys missing from README's reference: {missing:?}"
    );
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let env = |name: &str| match name {
        "WALHOOK_DATABASE_URL" => Some("postgres://walhook@127.0.0.1:5432/shop".to_string()),
        "ORDERS_WHSEC" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string()),
        _ => None,
    };
    let config = Config::parse(&text, &env).unwrap_or_else(|errors| panic!("{errors}"));
    assert!(!config.strategies.is_empty());
}
