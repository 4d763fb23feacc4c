use std::time::Duration;

use super::*;

/// A 32-byte Standard Webhooks secret.
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn env(name: &str) -> Option<String> {
    match name {
        "WALHOOK_DATABASE_URL" => Some("postgres://walhook:db-pass-123@127.0.0.1:5432/shop".into()),
        "ORDERS_SECRET" => Some("oauth-secret-456".into()),
        "ORDERS_WHSEC" => Some(WHSEC.into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, &env)
}

/// The errors as "path: message" lines.
fn errs(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors, the config was accepted"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn has(errors: &[String], path: &str, needle: &str) -> bool {
    errors
        .iter()
        .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(needle))
}

#[track_caller]
fn assert_has(errors: &[String], path: &str, needle: &str) {
    assert!(
        has(errors, path, needle),
        "no error at `{path}` containing {needle:?}; got:\n{}",
        errors.join("\n")
    );
}

const MINIMAL: &str = r#"
[source]
url = "${WALHOOK_DATABASE_URL}"

[endpoints.hook]
url = "http://127.0.0.1:9000/hook"

[[strategies]]
name = "all_orders"
table = "orders"
endpoint = "hook"
on_insert = "true"
"#;

const DESIGN_EXAMPLE: &str = r#"
[source]
url = "${WALHOOK_DATABASE_URL}"
slot = "walhook"
publication = "walhook"

[admin]
listen = "127.0.0.1:9187"
token = "${WALHOOK_ADMIN_TOKEN:-}"

[endpoints.orders_api]
url = "https://orders.internal/hooks"
timeout = "15s"
headers = { "X-Env" = "prod", "X-Count" = { expr = "batch.size" } }
query   = { tenant = "acme" }
auth = { type = "oauth2", token_url = "https://auth.internal/token", client_id = "walhook", client_secret = "${ORDERS_SECRET}", scope = "orders.write" }
signing = { secret = "${ORDERS_WHSEC}" }
retry = { max_attempts = 0, initial = "1s", max = "5m", on_exhausted = "block" }

[[strategies]]
name = "big_orders"
table = "public.orders"
endpoint = "orders_api"
on_insert = "new.amount > 100"
on_update = "changed(\"status\")"
batch_size = 100
linger = "20ms"
run_as = "reporting"
headers = { "X-Strategy" = "big-orders" }
body   = { source = "erp", version = 2 }
record = { id = { expr = "row.id" }, total = { expr = "row.amount * 1.2" } }
on_demand = { sync = true, sync_limit = 1000, async = true }
schedules = [ { cron = "0 2 * * *", filter = "row.status == \"open\"" } ]
"#;

#[test]
fn design_example_parses_with_its_values() {
    let config = parse(DESIGN_EXAMPLE).unwrap();
    assert_eq!(
        config.source.url.expose(),
        "postgres://walhook:db-pass-123@127.0.0.1:5432/shop"
    );
    assert_eq!(config.source.slot, "walhook");
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9187");
    assert!(config.admin.token.is_none(), "an empty token means none");

    let endpoint = &config.endpoints["orders_api"];
    assert_eq!(endpoint.timeout, Duration::from_secs(15));
    assert_eq!(endpoint.connect_timeout, Duration::from_secs(10));
    assert_eq!(endpoint.headers["X-Env"], Template::Literal("prod".into()));
    assert_eq!(
        endpoint.headers["X-Count"],
        Template::Expr("batch.size".into())
    );
    assert_eq!(
        endpoint.query["tenant"].literal_text().as_deref(),
        Some("acme")
    );
    match &endpoint.auth {
        Auth::Oauth2 {
            client_secret,
            scope,
            audience,
            auth_method,
            ..
        } => {
            assert_eq!(client_secret.expose(), "oauth-secret-456");
            assert_eq!(scope.as_deref(), Some("orders.write"));
            assert_eq!(*audience, None);
            assert_eq!(*auth_method, OAuth2AuthMethod::Basic);
        }
        other => panic!("expected oauth2, got {other:?}"),
    }
    let signing = endpoint.signing.as_ref().unwrap();
    assert_eq!(signing.secret.len(), 1);
    assert_eq!(signing.secret[0].expose(), WHSEC);
    assert!(!signing.include_token);
    assert_eq!(endpoint.retry.max, Duration::from_secs(300));
    assert_eq!(endpoint.retry.on_exhausted, OnExhausted::Block);

    let strategy = &config.strategies[0];
    assert_eq!(
        strategy.table.as_ref().unwrap().to_string(),
        "public.orders"
    );
    assert_eq!(strategy.on_insert.as_deref(), Some("new.amount > 100"));
    assert_eq!(strategy.on_update.as_deref(), Some("changed(\"status\")"));
    assert_eq!(strategy.on_delete, None);
    assert_eq!(strategy.linger, Duration::from_millis(20));
    assert_eq!(strategy.max_batch_bytes, 1024 * 1024);
    assert_eq!(strategy.body["version"], Template::Literal(2.into()));
    assert_eq!(
        strategy.record.as_ref().unwrap()["total"],
        Template::Expr("row.amount * 1.2".into())
    );
    assert!(strategy.on_demand.sync && strategy.on_demand.r#async);
    assert_eq!(strategy.schedules[0].cron, "0 2 * * *");
    assert!(std::ptr::eq(
        config.endpoint_of(strategy).unwrap(),
        endpoint
    ));
}

#[test]
fn defaults_fill_what_is_not_written() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.source.slot, "walhook");
    assert_eq!(config.source.publication, "walhook");
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9187");
    let endpoint = &config.endpoints["hook"];
    assert_eq!(endpoint.timeout, Duration::from_secs(30));
    assert!(matches!(endpoint.auth, Auth::None));
    assert!(endpoint.signing.is_none());
    assert_eq!(endpoint.retry.max_attempts, 0);
    assert_eq!(endpoint.retry.initial, Duration::from_secs(1));
    let strategy = &config.strategies[0];
    assert_eq!(strategy.table.as_ref().unwrap().schema, "public");
    assert_eq!(strategy.table.as_ref().unwrap().name, "orders");
    assert_eq!(strategy.batch_size, 100);
    assert_eq!(strategy.linger, Duration::from_millis(20));
    assert!(strategy.record.is_none());
    assert!(!strategy.on_demand.sync && !strategy.on_demand.r#async);
    assert_eq!(strategy.on_demand.sync_limit, 1000);
}

#[test]
fn debug_output_hides_every_secret() {
    let text = DESIGN_EXAMPLE.replace(
        "token = \"${WALHOOK_ADMIN_TOKEN:-}\"",
        "token = \"admin-token-789\"",
    );
    let config = parse(&text).unwrap();
    let debug = format!("{config:?}");
    for secret in ["db-pass-123", "oauth-secret-456", WHSEC, "admin-token-789"] {
        assert!(
            !debug.contains(secret),
            "{secret} leaked into Debug: {debug}"
        );
    }
    assert!(debug.contains("[redacted]"));
}

#[test]
fn toml_syntax_errors_keep_line_and_column() {
    let errors = errs("[source]\nurl = \"x\"\nslot = walhook\n");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("line 3, column 8"), "{}", errors[0]);
}

#[test]
fn unknown_keys_are_reported_at_their_path() {
    let text = MINIMAL.replace(
        "on_insert = \"true\"",
        "on_insert = \"true\"\non_updat = \"true\"",
    );
    let errors = errs(&text);
    assert_has(
        &errors,
        "strategies[0].on_updat",
        "unknown key `on_updat`: did you mean `on_update`?",
    );

    let errors = errs(&format!("{MINIMAL}\n[sorce]\nurl = \"x\"\n"));
    assert_has(&errors, "sorce", "unknown section");

    let text = MINIMAL.replace(
        "url = \"http://127.0.0.1:9000/hook\"",
        "url = \"http://127.0.0.1:9000/hook\"\nretry = { max_attempt = 3 }",
    );
    assert_has(
        &errs(&text),
        "endpoints.hook.retry.max_attempt",
        "unknown key",
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = r#"
[source]
url = "${WALHOOK_DATABASE_URL}"
slot = "Bad-Slot"

[endpoints.a]
url = "http://127.0.0.1:9000/"
timeout = "soon"
retri = {}

[endpoints.b]
url = "ftp://example.com/"

[[strategies]]
name = "first"
table = "orders"
endpoint = "a"
on_insert = "true"
on_updat = "true"
batch_size = "ten"

[[strategies]]
name = "second"
table = "orders"
endpoint = "missing"
on_delete = "true"
batch_size = 0

[[strategies]]
name = "second"
table = "orders"
endpoint = "b"
on_insert = "${NOT_SET}"
"#;
    let errors = errs(text);
    assert_has(&errors, "source.slot", "invalid slot name");
    assert_has(&errors, "endpoints.a.timeout", "invalid duration \"soon\"");
    assert_has(&errors, "endpoints.a.retri", "unknown key");
    assert_has(&errors, "endpoints.b.url", "use http:// or https://");
    assert_has(&errors, "strategies[0].on_updat", "unknown key");
    assert_has(&errors, "strategies[0].batch_size", "expected ");
    assert_has(
        &errors,
        "strategies[1].endpoint",
        "no endpoint named \"missing\"",
    );
    assert_has(&errors, "strategies[1].batch_size", "at least 1");
    assert_has(
        &errors,
        "strategies[2].name",
        "duplicate strategy name \"second\"",
    );
    assert_has(&errors, "strategies[2].on_insert", "NOT_SET is not set");
    // endpoint `a` failed to parse: strategies[0] must not also claim it is missing.
    assert!(!has(&errors, "strategies[0].endpoint", ""), "{errors:#?}");
    assert_eq!(errors.len(), 10, "{errors:#?}");
}

#[test]
fn missing_required_fields_are_named() {
    let text = MINIMAL.replace("endpoint = \"hook\"\n", "");
    assert_has(&errs(&text), "strategies[0]", "missing field `endpoint`");
    assert_has(&errs("[admin]\n"), "source", "missing");
}

#[test]
fn a_bad_value_for_a_required_field_is_not_also_missing() {
    let text = MINIMAL.replace("table = \"orders\"", "table = \"a.b.c\"");
    let errors = errs(&text);
    assert_has(&errors, "strategies[0].table", "invalid table \"a.b.c\"");
    assert_eq!(errors.len(), 1, "{errors:#?}");
}

#[test]
fn unset_variables_fail_at_their_path_once() {
    let text = MINIMAL.replace("${WALHOOK_DATABASE_URL}", "${NO_SUCH_VAR}");
    let errors = errs(&text);
    assert_has(
        &errors,
        "source.url",
        "environment variable NO_SUCH_VAR is not set",
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");

    let text = MINIMAL.replace(
        "${WALHOOK_DATABASE_URL}",
        "${NO_SUCH_VAR:?export the database URL}",
    );
    assert_has(
        &errs(&text),
        "source.url",
        "NO_SUCH_VAR: export the database URL",
    );
}

#[test]
fn interpolation_applies_to_strings_only_with_escapes_and_defaults() {
    let text = MINIMAL
        .replace(
            "\"http://127.0.0.1:9000/hook\"",
            "\"http://${HOOK_HOST:-127.0.0.1}:9000/$$x\"",
        )
        .replace("# nothing", "")
        + "# a comment with ${NOT_SET} is ignored\n";
    let config = parse(&text).unwrap();
    assert_eq!(config.endpoints["hook"].url, "http://127.0.0.1:9000/$x");
}

#[test]
fn non_loopback_admin_needs_a_token() {
    let open = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9187\"\n");
    assert_has(&errs(&open), "admin.listen", "admin.token is not set");
    let empty = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9187\"\ntoken = \"${{EMPTY}}\"\n");
    assert_has(&errs(&empty), "admin.listen", "admin.token is not set");
    let guarded = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9187\"\ntoken = \"t0ken\"\n");
    let config = parse(&guarded).unwrap();
    assert_eq!(config.admin.token.unwrap().expose(), "t0ken");
    let ipv6_loopback = format!("{MINIMAL}\n[admin]\nlisten = \"[::1]:9187\"\n");
    parse(&ipv6_loopback).unwrap();
}

#[test]
fn a_strategy_needs_a_trigger_and_non_empty_filters() {
    let text = MINIMAL.replace("on_insert = \"true\"", "");
    assert_has(
        &errs(&text),
        "strategies[0]",
        "no on_insert, on_update, on_delete or on_truncate",
    );
    let text = MINIMAL.replace("on_insert = \"true\"", "on_insert = \" \"");
    assert_has(&errs(&text), "strategies[0].on_insert", "empty filter");
}

#[test]
fn signing_secrets_are_checked_without_showing_them() {
    let short = "whsec_c2hvcnQ="; // "short"
    let text = MINIMAL.replace(
        "url = \"http://127.0.0.1:9000/hook\"",
        &format!("url = \"http://127.0.0.1:9000/hook\"\nsigning = {{ secret = \"{short}\" }}"),
    );
    let errors = errs(&text);
    assert_has(
        &errors,
        "endpoints.hook.signing.secret",
        "at least 24 bytes; this one has 5",
    );
    assert!(!errors.iter().any(|e| e.contains("c2hvcnQ")), "{errors:?}");

    let text = MINIMAL.replace(
        "url = \"http://127.0.0.1:9000/hook\"",
        &format!(
            "url = \"http://127.0.0.1:9000/hook\"\nsigning = {{ secret = [\"{WHSEC}\", \"whsec_!!notbase64!!\"] }}"
        ),
    );
    let errors = errs(&text);
    assert_has(
        &errors,
        "endpoints.hook.signing.secret[1]",
        "must be base64",
    );
    assert!(
        !errors.iter().any(|e| e.contains("notbase64")),
        "{errors:?}"
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn hmac_signing_settings_are_checked_at_load() {
    let with_signing = |signing: &str| {
        MINIMAL.replace(
            "url = \"http://127.0.0.1:9000/hook\"",
            &format!(
                "url = \"http://127.0.0.1:9000/hook\"\nauth = {{ type = \"api_key\", header = \"X-Key\", value = \"k\" }}\nsigning = {signing}"
            ),
        )
    };
    let ok = parse(&with_signing(
        r#"{ format = "hmac", secret = ["a", "b"], header = "X-Sig", algorithm = "sha512", encoding = "base64", prefix = "sha512=", timestamp_header = "X-Ts" }"#,
    ))
    .unwrap();
    let signing = ok.endpoints["hook"].signing.as_ref().unwrap();
    assert_eq!(signing.format, SigningFormat::Hmac);
    assert_eq!(signing.algorithm, Some(HmacAlgorithm::Sha512));
    assert_eq!(signing.encoding, Some(SignatureEncoding::Base64));

    let no_header = errs(&with_signing(r#"{ format = "hmac", secret = "a" }"#));
    assert_has(&no_header, "endpoints.hook.signing.header", "missing");
    let standard_with_prefix = errs(&with_signing(&format!(
        "{{ secret = \"{WHSEC}\", prefix = \"sha256=\" }}"
    )));
    assert_has(
        &standard_with_prefix,
        "endpoints.hook.signing.prefix",
        "applies to format = \"hmac\" only",
    );
    let clash = errs(&with_signing(
        r#"{ format = "hmac", secret = "a", header = "x-key", timestamp_header = "Webhook-Id" }"#,
    ));
    assert_has(
        &clash,
        "endpoints.hook.signing.header",
        "auth sets this header",
    );
    assert_has(
        &clash,
        "endpoints.hook.signing.timestamp_header",
        "walhook sets this header itself",
    );
    let empty = errs(&with_signing(
        r#"{ format = "hmac", secret = ["a", ""], header = "X-Sig" }"#,
    ));
    assert_has(&empty, "endpoints.hook.signing.secret[1]", "empty");
    let bad_algorithm = errs(&with_signing(
        r#"{ format = "hmac", secret = "a", header = "X-Sig", algorithm = "md5" }"#,
    ));
    assert!(
        bad_algorithm
            .iter()
            .any(|e| e.contains("md5") && e.contains("sha512")),
        "{bad_algorithm:?}"
    );
}

#[test]
fn auth_variants_are_tagged_by_type() {
    let with_auth = |auth: &str| {
        MINIMAL.replace(
            "url = \"http://127.0.0.1:9000/hook\"",
            &format!("url = \"http://127.0.0.1:9000/hook\"\nauth = {auth}"),
        )
    };
    let config = parse(&with_auth(
        r#"{ type = "basic", username = "u", password = "p" }"#,
    ))
    .unwrap();
    assert!(
        matches!(&config.endpoints["hook"].auth, Auth::Basic { username, .. } if username == "u")
    );
    let config = parse(&with_auth(
        r#"{ type = "api_key", header = "X-Api-Key", value = "k" }"#,
    ))
    .unwrap();
    assert!(
        matches!(&config.endpoints["hook"].auth, Auth::ApiKey { header, .. } if header == "X-Api-Key")
    );
    let config = parse(&with_auth(r#"{ type = "bearer", token = "t" }"#)).unwrap();
    assert!(
        matches!(&config.endpoints["hook"].auth, Auth::Bearer { token } if token.expose() == "t")
    );

    let errors = errs(&with_auth(r#"{ type = "kerberos" }"#));
    assert_has(
        &errors,
        "endpoints.hook.auth.type",
        "unknown variant `kerberos`",
    );
    let errors = errs(&with_auth(
        r#"{ type = "bearer", token = "t", tokn = "x" }"#,
    ));
    assert_has(&errors, "endpoints.hook.auth.tokn", "unknown key");
    let errors = errs(&with_auth(r#"{ type = "bearer", token = "${EMPTY}" }"#));
    assert_has(&errors, "endpoints.hook.auth.token", "empty");
}

#[test]
fn endpoint_checks() {
    let with = |extra: &str| {
        MINIMAL.replace(
            "url = \"http://127.0.0.1:9000/hook\"",
            &format!("url = \"http://127.0.0.1:9000/hook\"\n{extra}"),
        )
    };
    let errors = errs(&with("retry = { initial = \"10s\", max = \"1s\" }"));
    assert_has(
        &errors,
        "endpoints.hook.retry.max",
        "shorter than retry.initial",
    );
    let errors = errs(&with("tls = { client_cert = \"/nonexistent/cert.pem\" }"));
    assert_has(&errors, "endpoints.hook.tls", "set both or neither");
    assert_has(
        &errors,
        "endpoints.hook.tls.client_cert",
        "cannot read /nonexistent/cert.pem",
    );
    let errors = errs(&with(
        "headers = { \"webhook-signature\" = \"x\", \"bad header\" = \"y\" }",
    ));
    assert_has(
        &errors,
        "endpoints.hook.headers.webhook-signature",
        "sets this header itself",
    );
    assert_has(
        &errors,
        "endpoints.hook.headers.bad header",
        "not a valid HTTP header name",
    );
    let errors = errs(&with("timeout = \"0s\""));
    assert_has(&errors, "endpoints.hook.timeout", "more than 0s");
    let errors = errs(&with("headers = { X = { exp = \"1\" } }"));
    assert_has(&errors, "endpoints.hook.headers.X", "unknown key `exp`");
}

#[test]
fn strategy_checks() {
    let with = |extra: &str| {
        MINIMAL.replace(
            "on_insert = \"true\"",
            &format!("on_insert = \"true\"\n{extra}"),
        )
    };
    let errors = errs(&with("name = \"x\""));
    assert!(errors[0].contains("duplicate key"), "{errors:?}");
    let errors = errs(&MINIMAL.replace("all_orders", "all orders"));
    assert_has(&errors, "strategies[0].name", "invalid name");
    let errors = errs(&with("schedules = [ { cron = \"* * *\" } ]"));
    assert_has(&errors, "strategies[0].schedules[0].cron", "has 3 fields");
    let errors = errs(&with(
        "schedules = [ { cron = \"*/2 * * * * *\" }, { cron = \"0 99 * * *\" }, \
         { cron = \"0 2 * * *\", timezone = \"Mars/Base\" } ]",
    ));
    assert!(
        !errors.iter().any(|e| e.contains("schedules[0]")),
        "six fields (seconds first) are fine: {errors:?}"
    );
    assert_has(
        &errors,
        "strategies[0].schedules[1].cron",
        "not a valid cron",
    );
    assert_has(
        &errors,
        "strategies[0].schedules[2].timezone",
        "unknown time zone",
    );
    let errors = errs(&with(
        "schedules = [ { name = \"nightly\", cron = \"0 2 * * *\" }, \
         { name = \"nightly\", cron = \"0 3 * * *\" }, { cron = \"0 4 * * *\" }, \
         { cron = \"0 4 * * *\", filter = \"row.id > 1\" }, { name = \" \", cron = \"0 5 * * *\" } ]",
    ));
    assert_has(
        &errors,
        "strategies[0].schedules[1].name",
        "\"nightly\" is already the name",
    );
    assert_has(
        &errors,
        "strategies[0].schedules[3].name",
        "\"0 4 * * *\" is already the name",
    );
    assert_has(&errors, "strategies[0].schedules[4].name", "is empty");
    assert_eq!(errors.len(), 3, "{errors:?}");
    let errors = errs(&with("record = {}"));
    assert_has(&errors, "strategies[0].record", "empty");
    let errors = errs(&with("linger = 5"));
    assert_has(&errors, "strategies[0].linger", "expected ");
}

#[test]
fn source_url_must_parse_without_echoing_it() {
    let text = MINIMAL.replace(
        "${WALHOOK_DATABASE_URL}",
        "postgres://u:pw-secret@h:notaport/db",
    );
    let errors = errs(&text);
    assert_has(
        &errors,
        "source.url",
        "not a valid PostgreSQL connection string",
    );
    assert!(
        !errors.iter().any(|e| e.contains("pw-secret")),
        "{errors:?}"
    );
}

#[test]
fn expressions_are_listed_with_their_paths_for_the_strategy_stage() {
    let config = parse(DESIGN_EXAMPLE).unwrap();
    let sites: Vec<(String, ExprRole)> = config
        .expressions()
        .into_iter()
        .map(|s| (s.path, s.role))
        .collect();
    assert_eq!(
        sites,
        vec![
            (
                "endpoints.orders_api.headers.X-Count".to_string(),
                ExprRole::Batch
            ),
            (
                "strategies[0].on_insert".to_string(),
                ExprRole::Filter(FilterOp::Insert)
            ),
            (
                "strategies[0].on_update".to_string(),
                ExprRole::Filter(FilterOp::Update)
            ),
            ("strategies[0].record.id".to_string(), ExprRole::Record),
            ("strategies[0].record.total".to_string(), ExprRole::Record),
            (
                "strategies[0].schedules[0].filter".to_string(),
                ExprRole::ScheduleFilter
            ),
        ]
    );
    let errors = config.check_expressions(|site| {
        if site.expr.contains("changed") {
            Err("unknown function".to_string())
        } else {
            Ok(())
        }
    });
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        vec!["strategies[0].on_update: unknown function".to_string()]
    );
}

#[test]
fn load_reads_a_file_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = Config::load(&missing).unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");
    assert!(err.to_string().contains("nope.toml"), "{err}");

    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        MINIMAL.replace("${WALHOOK_DATABASE_URL}", "postgres://u@h/db"),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.strategies[0].name, "all_orders");
}

#[test]
fn a_body_token_field_clashes_with_include_token() {
    let text = MINIMAL
        .replace(
            "url = \"http://127.0.0.1:9000/hook\"",
            &format!(
                "url = \"http://127.0.0.1:9000/hook\"\nsigning = {{ secret = \"{WHSEC}\", include_token = true }}"
            ),
        )
        .replace("on_insert = \"true\"", "on_insert = \"true\"\nbody = { token = \"x\" }");
    assert_has(&errs(&text), "strategies[0].body.token", "include_token");
}

#[test]
fn body_keys_the_payload_uses_are_refused_at_their_path() {
    let text = MINIMAL.replace(
        "on_insert = \"true\"",
        "on_insert = \"true\"\nbody = { records = \"x\", strategy = { expr = \"strategy\" }, batch = 1, source = \"erp\" }",
    );
    let errors = errs(&text);
    for key in ["records", "strategy", "batch"] {
        assert_has(&errors, &format!("strategies[0].body.{key}"), "rename it");
    }
    assert_eq!(errors.len(), 3, "{errors:?}");
}

#[test]
fn flat_records_need_a_record_mapping() {
    let text = MINIMAL.replace(
        "on_insert = \"true\"",
        "on_insert = \"true\"\nrecord_shape = \"flat\"",
    );
    assert_has(&errs(&text), "strategies[0].record_shape", "record = {");
    let text = MINIMAL.replace(
        "on_insert = \"true\"",
        "on_insert = \"true\"\nrecord_shape = \"flat\"\nrecord = { op = { expr = \"op\" } }",
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.strategies[0].record_shape, RecordShape::Flat);
    let text = MINIMAL.replace(
        "on_insert = \"true\"",
        "on_insert = \"true\"\nrecord_shape = \"nested\"",
    );
    assert_has(
        &errs(&text),
        "strategies[0].record_shape",
        "unknown variant",
    );
}

#[test]
fn a_strategy_needs_exactly_one_of_table_and_messages() {
    let neither = MINIMAL.replace("table = \"orders\"\n", "");
    let errors = errs(&neither);
    assert_has(&errors, "strategies[0].table", "or `messages`");
    let both = MINIMAL.replace(
        "table = \"orders\"\n",
        "table = \"orders\"\nmessages = \"outbox\"\n",
    );
    assert_has(
        &errs(&both),
        "strategies[0].messages",
        "remove `table` or `messages`",
    );
    let messages = MINIMAL.replace(
        "table = \"orders\"\n",
        "messages = \"outbox.\"\non_message = \"starts_with(message.prefix, \\\"outbox.order\\\")\"\n",
    );
    // on_insert is for table strategies.
    assert_has(
        &errs(&messages),
        "strategies[0].on_insert",
        "a `messages` strategy takes on_message",
    );
    let messages = messages.replace("on_insert = \"true\"\n", "");
    let config = parse(&messages).unwrap();
    assert_eq!(config.strategies[0].messages.as_deref(), Some("outbox."));
    assert!(config.strategies[0].table.is_none());
    let sites = std::cell::RefCell::new(Vec::new());
    let errors = config.check_expressions(|site| {
        sites.borrow_mut().push(site.path.clone());
        crate::strategy::check_expression(site)
    });
    assert!(errors.iter().next().is_none(), "{errors}");
    assert!(sites
        .borrow()
        .iter()
        .any(|s| s == "strategies[0].on_message"));
}

#[test]
fn on_message_sees_only_message_names() {
    let text = MINIMAL
        .replace("table = \"orders\"\n", "messages = \"outbox\"\n")
        .replace("on_insert = \"true\"", "on_message = \"new.id > 1\"");
    let config = parse(&text).unwrap();
    let errors: Vec<String> = config
        .check_expressions(crate::strategy::check_expression)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_has(
        &errors,
        "strategies[0].on_message",
        "on_message sees message.prefix",
    );
}
