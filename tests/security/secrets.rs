//! Secret hygiene of the binary: at TRACE log level, through a config error
//! and a failing database login, no configured secret value appears on
//! stdout or stderr.

use crate::support::cluster::add_hba_lines;
use crate::support::walhook::Exited;
use crate::support::{cluster, fresh_db, Walhook};

const DB_PASSWORD: &str = "DbPass-Secret-777";
const ADMIN_TOKEN: &str = "AdminTok-Secret-888";
const BEARER: &str = "BearerTok-Secret-111";
const CLIENT_SECRET: &str = "ClientSec-Secret-222";
const BASIC_PASSWORD: &str = "BasicPw-Secret-333";
const API_KEY: &str = "ApiKey-Secret-444";
/// A valid signing secret, and one too short (a config error about a secret).
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SHORT_WHSEC: &str = "whsec_U2hvcnRTZWNyZXQ=";

const SECRETS: [&str; 8] = [
    DB_PASSWORD,
    ADMIN_TOKEN,
    BEARER,
    CLIENT_SECRET,
    BASIC_PASSWORD,
    API_KEY,
    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "U2hvcnRTZWNyZXQ",
];

/// A config with every kind of secret; `extra` is appended.
fn config(db_url: &str, extra: &str) -> String {
    format!(
        r#"
[source]
url = "{db_url}"
slot = "sec_slot"
publication = "sec_pub"

[admin]
listen = "127.0.0.1:0"
token = "${{SEC_ADMIN_TOKEN}}"

[endpoints.bearer]
url = "http://127.0.0.1:1/hook"
auth = {{ type = "bearer", token = "{BEARER}" }}
signing = {{ secret = "${{SEC_WHSEC}}", include_token = true }}

[endpoints.oauth]
url = "http://127.0.0.1:1/hook"
auth = {{ type = "oauth2", token_url = "http://127.0.0.1:1/token", client_id = "walhook", client_secret = "{CLIENT_SECRET}" }}

[endpoints.basic]
url = "http://127.0.0.1:1/hook"
auth = {{ type = "basic", username = "walhook", password = "{BASIC_PASSWORD}" }}

[endpoints.key]
url = "http://127.0.0.1:1/hook"
auth = {{ type = "api_key", header = "X-Api-Key", value = "{API_KEY}" }}

[[strategies]]
name = "all_orders"
table = "public.orders"
endpoint = "bearer"
on_insert = "true"
{extra}
"#
    )
}

/// Runs walhook with this config at TRACE with the secret environment,
/// until it exits by itself.
async fn run_walhook(args: &[&str], config: &str) -> Exited {
    Walhook::command(args)
        .config(config)
        .env("WALHOOK_LOG", "trace")
        .env("SEC_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SEC_WHSEC", WHSEC)
        .output()
        .await
}

fn assert_no_secret(output: &Exited) {
    let text = format!("{}\n{}", output.stdout, output.stderr);
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} was printed:\n{text}");
    }
}

#[tokio::test]
async fn config_errors_at_trace_level_show_no_secret() {
    let db_url = format!("postgres://walhook:{DB_PASSWORD}@127.0.0.1:1/shop");
    let extra = format!(
        r#"
[endpoints.short]
url = "http://127.0.0.1:1/hook"
signing = {{ secret = "{SHORT_WHSEC}" }}

[[strategies]]
name = "broken"
table = "public.orders"
endpoint = "nowhere"
on_insert = "true"
"#
    );
    let output = run_walhook(&["run", "-c", "config.toml"], &config(&db_url, &extra)).await;
    assert_eq!(output.code(), Some(2), "{output:?}");
    let stderr = &output.stderr;
    assert!(
        stderr.contains("endpoints.short.signing.secret") && stderr.contains("at least 24 bytes"),
        "{stderr}"
    );
    assert!(stderr.contains("strategies[1].endpoint"), "{stderr}");
    assert_no_secret(&output);
}

#[tokio::test]
async fn a_failing_database_login_at_trace_level_shows_no_secret() {
    let cluster = cluster();
    let fresh = fresh_db("security_secrets").await;
    let db = fresh.name();
    fresh
        .psql(&format!(
            "CREATE ROLE walhook_sec LOGIN REPLICATION PASSWORD '{DB_PASSWORD}';"
        ))
        .await;
    add_hba_lines(&[
        "host all walhook_sec 127.0.0.1/32 scram-sha-256",
        "host replication walhook_sec 127.0.0.1/32 scram-sha-256",
    ])
    .await;

    // The wrong password: the login fails at run time (exit 1).
    let wrong = "Wrong-Pw-Secret-999";
    let url = format!(
        "postgres://walhook_sec:{wrong}@127.0.0.1:{}/{db}",
        cluster.port()
    );
    let output = run_walhook(&["run", "--stdout", "-c", "config.toml"], &config(&url, "")).await;
    assert_eq!(output.code(), Some(1), "{output:?}");
    let stderr = &output.stderr;
    assert!(stderr.contains("walhook_sec"), "{stderr}");
    assert!(!stderr.contains(wrong), "{stderr}");
    assert_no_secret(&output);
}
