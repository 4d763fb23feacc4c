//! Runs of a strategy over a table's current rows: on demand through the
//! admin API of a real `walhook run`, `walhook run-strategy`, on a schedule,
//! and the snapshot reader. Helpers: a `walhook run` with an admin token,
//! its API, and the `walhook.runs` table.

mod api;
mod backfills;
mod cli;
mod controls;
mod copy;
mod reader;
mod schedule;

use serde_json::Value;

use crate::support::walhook::base_config;
use crate::support::{wait_until, Db, Walhook, WAIT};

/// The admin token the run tests configure.
pub(crate) const TOKEN: &str = "runs-test-token";

/// `[source]` and `[admin]` (with [`TOKEN`]) and the admin base URL.
pub(crate) fn config_with_token(url: &str, slot: &str) -> (String, String) {
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
pub(crate) fn encode(text: &str) -> String {
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
pub(crate) async fn call(method: &str, base: &str, path: &str) -> (u16, String) {
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

/// Waits until run `id` has ended (neither running nor paused); returns its record.
pub(crate) async fn wait_finished(base: &str, id: i64) -> Value {
    let run = std::cell::RefCell::new(Value::Null);
    wait_until(WAIT, &format!("run {id} to finish"), || async {
        let (status, body) = call("GET", base, &format!("/runs/{id}")).await;
        let now: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let finished = status == 200 && now["state"] != "running" && now["state"] != "paused";
        *run.borrow_mut() = now;
        finished
    })
    .await;
    run.into_inner()
}

/// Rows of `walhook.runs` as "strategy|trigger|state|ok" lines, by id, where
/// ok says the run started after the previous one of its strategy finished.
pub(crate) async fn runs_rows(db: &Db, strategy: &str) -> Vec<String> {
    let out = db
        .try_psql(&format!(
            "SELECT trigger || '|' || state || '|' || \
             coalesce((started_at >= lag(finished_at) OVER (ORDER BY id))::text, 'first') \
             FROM walhook.runs WHERE strategy = '{strategy}' ORDER BY id"
        ))
        .await
        .unwrap_or_default();
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Starts `walhook run` and waits until it streams; fails with its stderr
/// if it exits first.
pub(crate) async fn start_streaming(config: &str, db: &Db, slot: &str) -> Walhook {
    let mut walhook = Walhook::run(config).spawn();
    walhook.wait_streaming(db, slot).await;
    walhook
}
