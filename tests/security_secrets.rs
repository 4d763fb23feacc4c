//! Secret hygiene of the binary: at TRACE log level, through a config error
//! and a failing database login, no configured secret value appears on
//! stdout or stderr.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs walhook at TRACE with the secret environment; kills it after 60 s.
fn run_walhook(args: &[&str]) -> Output {
    let mut child = Command::new(common::walhook_bin())
        .args(args)
        .env("WALHOOK_LOG", "trace")
        .env("SEC_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SEC_WHSEC", WHSEC)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn assert_no_secret(output: &Output) {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} was printed:\n{text}");
    }
}

#[test]
fn config_errors_at_trace_level_show_no_secret() {
    let dir = tempfile::tempdir().unwrap();
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
    let path = write_config(dir.path(), &config(&db_url, &extra));
    let output = run_walhook(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("endpoints.short.signing.secret") && stderr.contains("at least 24 bytes"),
        "{stderr}"
    );
    assert!(stderr.contains("strategies[1].endpoint"), "{stderr}");
    assert_no_secret(&output);
}

#[test]
fn a_failing_database_login_at_trace_level_shows_no_secret() {
    let cluster = common::cluster();
    let db_url = common::fresh_db("security_secrets");
    let db = db_url.rsplit('/').next().unwrap().to_string();
    cluster
        .psql(
            &db,
            &format!("CREATE ROLE walhook_sec LOGIN REPLICATION PASSWORD '{DB_PASSWORD}';"),
        )
        .unwrap();
    cluster
        .add_hba_line_first("host all walhook_sec 127.0.0.1/32 scram-sha-256")
        .unwrap();
    cluster
        .add_hba_line_first("host replication walhook_sec 127.0.0.1/32 scram-sha-256")
        .unwrap();
    cluster.reload().unwrap();

    // The wrong password: the login fails at run time (exit 1).
    let wrong = "Wrong-Pw-Secret-999";
    let url = format!(
        "postgres://walhook_sec:{wrong}@127.0.0.1:{}/{db}",
        cluster.port()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config(&url, ""));
    let output = run_walhook(&["run", "--stdout", "-c", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("walhook_sec"), "{stderr}");
    assert!(!stderr.contains(wrong), "{stderr}");
    assert_no_secret(&output);
}
