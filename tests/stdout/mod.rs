//! `walhook run --stdout` end to end through the built binary: real
//! PostgreSQL writes and the JSON lines a user reads.

mod e2e;
mod restart;

use serde_json::Value;

use crate::support::Walhook;

/// Starts `walhook run --stdout` on `url`'s database with this slot and
/// publication (no endpoints or strategies needed).
fn start(url: &str, slot: &str, publication: &str) -> Walhook {
    Walhook::run_stdout(&format!(
        "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{publication}\"\n"
    ))
    .spawn()
}

/// The ids of the rows in `records` of `table` (from new, or old for deletes).
fn ids_of(records: &[Value], table: &str) -> Vec<i64> {
    records
        .iter()
        .filter(|r| r["table"] == table)
        .filter_map(|r| {
            let row = if r["new"].is_null() {
                &r["old"]
            } else {
                &r["new"]
            };
            row["id"].as_i64()
        })
        .collect()
}
