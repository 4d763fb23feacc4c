//! Helpers for run tests: a `walhook run` with an admin token, its API, and
//! the `walhook.runs` table.
#![allow(dead_code)]

use serde_json::Value;

use crate::pipeline_common::{base_config, WAIT};

/// The admin token the run tests configure.
pub const TOKEN: &str = "runs-test-token";

/// `[source]` and `[admin]` (with [`TOKEN`]) and the admin base URL.
pub fn config_with_token(url: &str, slot: &str) -> (String, String) {
    let base = base_config(url, slot, slot);
    let listen = base
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("listen line")
        .to_string();
    (
        format!("{base}token = \"{TOKEN}\"\n\n"),
        format!("http://{listen}"),
    )
}

/// Percent-encodes a query value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `method base+path` with the token: (status, body).
pub async fn call(method: &str, base: &str, path: &str) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let response = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Waits until run `id` is no longer running; returns its record.
pub async fn wait_finished(base: &str, id: i64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = call("GET", base, &format!("/runs/{id}")).await;
        let run: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if status == 200 && run["state"] != "running" {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {id} still running after {WAIT:?}: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Rows of `walhook.runs` as "strategy|trigger|state|ok" lines, by id, where
/// ok says the run started after the previous one of its strategy finished.
pub fn runs_rows(db: &str, strategy: &str) -> Vec<String> {
    let out = crate::common::cluster()
        .psql(
            db,
            &format!(
                "SELECT trigger || '|' || state || '|' || \
                 coalesce((started_at >= lag(finished_at) OVER (ORDER BY id))::text, 'first') \
                 FROM walhook.runs WHERE strategy = '{strategy}' ORDER BY id"
            ),
        )
        .unwrap_or_default();
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// `records[]` of every accepted request, in arrival order.
pub fn records(receiver: &crate::common::receiver::Receiver) -> Vec<Value> {
    receiver
        .accepted()
        .iter()
        .flat_map(|r| r.json()["records"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Starts `walhook run` and waits until it streams; fails with its stderr
/// if it exits first.
pub async fn start_streaming(
    config: &str,
    db: &str,
    slot: &str,
) -> crate::pipeline_common::Walhook {
    let mut walhook = crate::pipeline_common::Walhook::start(config, &[]);
    let sql = format!(
        "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
         WHERE s.slot_name = '{slot}' AND r.state IN ('catchup', 'streaming')"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let streaming = crate::common::cluster()
            .psql(db, &sql)
            .map(|out| out.trim() == "1")
            .unwrap_or(false);
        if streaming {
            return walhook;
        }
        if !walhook.is_running() {
            let status = walhook.wait_exit(WAIT).await;
            // The stderr reader may still be copying the last lines.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                while walhook.stderr().is_empty() {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            })
            .await;
            panic!(
                "walhook exited ({status}) before streaming:\n{}",
                walhook.stderr()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot {slot} not streaming after {WAIT:?}:\n{}",
            walhook.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
