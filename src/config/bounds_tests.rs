//! Upper bounds, names PostgreSQL can hold, and every problem of a file at
//! once across its phases (issue 29, scope 7).

use super::*;

fn env(name: &str) -> Option<String> {
    (name == "WALHOOK_DATABASE_URL").then(|| "postgres://walhook@127.0.0.1:5432/shop".into())
}

/// The errors as "path: message" lines, expressions checked by `compile`.
fn errs_with(text: &str, compile: &dyn Fn(&ExprSite<'_>) -> Result<(), String>) -> Vec<String> {
    match Config::parse_checked(text, &env, compile) {
        Ok(_) => panic!("expected errors, the config was accepted"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn errs(text: &str) -> Vec<String> {
    errs_with(text, &|_| Ok(()))
}

#[track_caller]
fn assert_has(errors: &[String], path: &str, needle: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(needle)),
        "no error at `{path}` containing {needle:?}; got:\n{}",
        errors.join("\n")
    );
}

/// A stand-in for the strategy stage's compiler: refuses "BAD".
fn refuse_bad(site: &ExprSite<'_>) -> Result<(), String> {
    if site.expr.contains("BAD") {
        Err("does not compile".into())
    } else {
        Ok(())
    }
}

const HEAD: &str = r#"
[source]
url = "${WALHOOK_DATABASE_URL}"

[endpoints.hook]
url = "http://127.0.0.1:9000/hook"
"#;

fn strategy(extra: &str) -> String {
    format!(
        "{HEAD}\n[[strategies]]\nname = \"s\"\ntable = \"orders\"\nendpoint = \"hook\"\n\
         on_insert = \"true\"\n{extra}\n"
    )
}

#[test]
fn counts_durations_and_sizes_have_upper_bounds() {
    let errors = errs(&strategy(
        "batch_size = 9223372036854775807\nmax_in_flight = 9223372036854775807\n\
         ordering = \"key\"\nmax_batch_bytes = 1099511627776\nlinger = \"11years\"\n\
         on_demand = { sync = true, sync_limit = 9223372036854775807 }",
    ));
    assert_has(&errors, "strategies[0].batch_size", "at most 100000");
    assert_has(&errors, "strategies[0].max_in_flight", "at most 1024");
    assert_has(&errors, "strategies[0].max_batch_bytes", "at most");
    assert_has(
        &errors,
        "strategies[0].linger",
        "longer than the longest accepted, 1h",
    );
    assert_has(
        &errors,
        "strategies[0].on_demand.sync_limit",
        "at most 1000000",
    );

    let big = "x".repeat(10 << 20);
    let text = HEAD.replace(
        "url = \"http://127.0.0.1:9000/hook\"",
        &format!(
            "url = \"http://127.0.0.1:9000/hook\"\ntimeout = \"400days\"\n\
             connect_timeout = \"2h\"\nheaders = {{ \"X-Big\" = \"{big}\" }}\n\
             retry = {{ initial = \"2h\", max = \"30days\", max_attempts = 4000000000 }}\n\
             rate_limit = 1e12\ncircuit_breaker = {{ failures = 4000000000 }}"
        ),
    ) + "\n[[strategies]]\nname = \"s\"\ntable = \"orders\"\nendpoint = \"hook\"\non_insert = \"true\"\n";
    let errors = errs(&text);
    assert_has(
        &errors,
        "endpoints.hook.timeout",
        "longer than the longest accepted",
    );
    assert_has(&errors, "endpoints.hook.connect_timeout", "longer");
    assert_has(&errors, "endpoints.hook.retry.initial", "longer");
    assert_has(&errors, "endpoints.hook.retry.max", "longer");
    assert_has(&errors, "endpoints.hook.retry.max_attempts", "at most");
    assert_has(&errors, "endpoints.hook.rate_limit", "at most");
    assert_has(
        &errors,
        "endpoints.hook.circuit_breaker.failures",
        "at most",
    );
    assert_has(
        &errors,
        "endpoints.hook.headers.X-Big",
        "10485760 bytes long; at most 8192",
    );
    // The message names the size, never the value.
    assert!(errors.iter().all(|e| !e.contains("xxxx")), "{errors:#?}");

    let text = strategy("").replace(
        "url = \"${WALHOOK_DATABASE_URL}\"",
        "url = \"${WALHOOK_DATABASE_URL}\"\nmax_buffer_bytes = \"100GiB\"",
    );
    assert_has(&errs(&text), "source.max_buffer_bytes", "16GiB");

    // The defaults and generous settings pass.
    let fine = strategy(
        "batch_size = 100000\nmax_in_flight = 1024\nordering = \"key\"\nlinger = \"1h\"\n\
         max_batch_bytes = 268435456",
    );
    Config::parse(&fine, &env).expect("within the bounds");
}

#[test]
fn names_postgresql_cannot_hold_or_that_display_falsely_are_refused() {
    let cases = [
        ("public.ord\\u0000ers", "U+0000 (NUL"),
        (
            "public.orders\\u202E",
            "U+202E (an invisible or bidirectional control",
        ),
        ("pub\\u2066lic.orders", "U+2066"),
        ("public.ord\\u0007ers", "U+0007 (a control character"),
    ];
    for (table, needle) in cases {
        let text = strategy("").replace("table = \"orders\"", &format!("table = \"{table}\""));
        assert_has(&errs(&text), "strategies[0].table", needle);
    }
    let long = "t".repeat(64);
    let text = strategy("").replace("table = \"orders\"", &format!("table = \"{long}\""));
    assert_has(&errs(&text), "strategies[0].table", "64 bytes long");
    let text = strategy("run_as = \"rep\\u202Eorting\"");
    assert_has(&errs(&text), "strategies[0].run_as", "U+202E");
    let text = strategy("").replace(
        "url = \"${WALHOOK_DATABASE_URL}\"",
        "url = \"${WALHOOK_DATABASE_URL}\"\npublication = \"wal\\u0000hook\"",
    );
    assert_has(&errs(&text), "source.publication", "U+0000");
    // Quoted-identifier names with spaces, capitals and non-ASCII letters pass.
    let text = strategy("").replace(
        "table = \"orders\"",
        "table = \"Sales Data.Bestellungen_ü\"",
    );
    Config::parse(&text, &env).expect("ordinary names pass");
}

#[test]
fn a_type_error_or_an_unset_variable_does_not_hide_the_rest_of_the_file() {
    let text = r#"
[source]
url = "${NOT_SET}"

[endpoints.hook]
url = "http://127.0.0.1:9000/hook"
timeout = 15
headers = { "X-A" = { expr = "BAD header" } }

[[strategies]]
name = "first"
table = "orders"
endpoint = "hook"
batch_size = "ten"
on_insert = "BAD filter"

[[strategies]]
name = "second"
table = "orders"
endpoint = "hook"
on_update = "BAD update"
linger = "11years"
"#;
    let errors = errs_with(text, &refuse_bad);
    assert_has(&errors, "source.url", "NOT_SET is not set");
    assert_has(&errors, "endpoints.hook.timeout", "expected ");
    assert_has(&errors, "endpoints.hook.headers.X-A", "does not compile");
    assert_has(&errors, "strategies[0].batch_size", "expected ");
    assert_has(&errors, "strategies[0].on_insert", "does not compile");
    assert_has(&errors, "strategies[1].on_update", "does not compile");
    assert_has(&errors, "strategies[1].linger", "longer");
    assert_eq!(errors.len(), 7, "{errors:#?}");
}

#[test]
fn a_missing_or_broken_section_does_not_hide_the_rest_of_the_file() {
    let text = strategy("on_update = \"BAD\"\nbatch_size = 0")
        .replace("[source]\nurl = \"${WALHOOK_DATABASE_URL}\"\n", "");
    let errors = errs_with(&text, &refuse_bad);
    assert_has(&errors, "source", "missing");
    assert_has(&errors, "strategies[0].batch_size", "at least 1");
    assert_has(&errors, "strategies[0].on_update", "does not compile");
    assert_eq!(errors.len(), 3, "{errors:#?}");

    let text = strategy("on_update = \"BAD\"").replace(
        "url = \"${WALHOOK_DATABASE_URL}\"",
        "url = \"${WALHOOK_DATABASE_URL}\"\nslot = 5",
    );
    let errors = errs_with(&text, &refuse_bad);
    assert_has(&errors, "source.slot", "expected ");
    assert_has(&errors, "strategies[0].on_update", "does not compile");
}
