//! Scheduled runs of a real `walhook run`: a 6-field cron every 2 s fires
//! repeatedly, never overlaps itself (a time that comes while the previous
//! run still delivers is skipped and counted), and a standby instance on the
//! same slot never fires; named schedules show their names in `/status`,
//! `walhook.runs` and the metrics.

use std::time::Duration;

use super::{runs_rows, start_streaming};
use crate::support::walhook::base_config;
use crate::support::{fresh_db, wait_until, Receiver, Walhook, WAIT};

fn listen_of(config: &str) -> String {
    let listen = config
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("listen line");
    format!("http://{listen}")
}

async fn get(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::test]
async fn a_cron_schedule_runs_repeatedly_without_overlap_and_a_standby_never_fires() {
    let db = fresh_db("runs_cron").await;
    let url = db.url();
    db.psql(
        "CREATE TABLE ticks (id int PRIMARY KEY, open bool NOT NULL); \
         INSERT INTO ticks SELECT i, i % 2 = 0 FROM generate_series(1, 10) i;",
    )
    .await;
    let receiver = Receiver::start().await;
    // Each run's one batch takes 3 s: longer than the 2 s period.
    receiver.set_delay(Duration::from_secs(3));
    let base = base_config(&url, "runs_cron", "runs_cron");
    let admin = listen_of(&base);
    let config = format!(
        "{base}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"tick\"\ntable = \"ticks\"\n\
         endpoint = \"hook\"\nschedules = [ {{ cron = \"*/2 * * * * *\", filter = \"row.open\" }} ]\n",
        receiver.url("/hook")
    );
    let active = start_streaming(&config, &db, "runs_cron").await;

    let standby_receiver = Receiver::start().await;
    let standby_base = base_config(&url, "runs_cron", "runs_cron");
    let standby_admin = listen_of(&standby_base);
    let standby_config = format!(
        "{standby_base}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"tick_standby\"\n\
         table = \"ticks\"\nendpoint = \"hook\"\n\
         schedules = [ {{ cron = \"* * * * * *\", timezone = \"Europe/Berlin\" }} ]\n",
        standby_receiver.url("/hook")
    );
    let mut standby = Walhook::run(&standby_config).spawn();
    wait_until(WAIT, "the second instance to be a standby", || async {
        get(&format!("{standby_admin}/status"))
            .await
            .contains("\"state\":\"standby\"")
    })
    .await;

    wait_until(WAIT, "two finished scheduled runs", || async {
        runs_rows(&db, "tick")
            .await
            .iter()
            .filter(|r| r.contains("|succeeded|"))
            .count()
            >= 2
    })
    .await;
    let rows = runs_rows(&db, "tick").await;
    for row in &rows {
        assert!(
            row.starts_with("schedule:*/2 * * * * *|"),
            "an unnamed schedule is named by its cron text: {rows:?}"
        );
        assert!(
            row.ends_with("|true") || row.ends_with("|first"),
            "a run started before the previous one finished: {rows:?}"
        );
    }
    let read = receiver.accepted_records();
    assert!(read.len() >= 10, "two runs of 5 open rows: {}", read.len());
    assert!(read
        .iter()
        .all(|r| r["op"] == "read" && r["new"]["open"] == true));
    let metrics = get(&format!("{admin}/metrics")).await;
    assert!(
        metrics.lines().any(|l| l.starts_with("walhook_runs_total")
            && l.contains("outcome=\"skipped\"")
            && l.contains("trigger=\"schedule\"")),
        "a time that came during a 3 s run was skipped and counted:\n{metrics}"
    );

    // The standby, firing every second in that time, never ran.
    assert!(standby.is_running(), "{}", standby.stderr());
    assert!(runs_rows(&db, "tick_standby").await.is_empty());
    assert_eq!(standby_receiver.arrivals(), 0);

    standby.stop().await;
    active.stop().await;
}

#[tokio::test]
async fn two_named_schedules_show_their_names_in_status_runs_and_metrics() {
    let db = fresh_db("runs_named").await;
    db.psql(
        "CREATE TABLE ticks (id int PRIMARY KEY, open bool NOT NULL); \
         INSERT INTO ticks SELECT i, i % 2 = 0 FROM generate_series(1, 4) i;",
    )
    .await;
    let receiver = Receiver::start().await;
    let base = base_config(&db.url(), "runs_named", "runs_named");
    let admin = listen_of(&base);
    let config = format!(
        "{base}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"tick\"\ntable = \"ticks\"\n\
         endpoint = \"hook\"\nschedules = [\n  {{ name = \"open_rows\", cron = \"* * * * * *\", filter = \"row.open\" }},\n  \
         {{ name = \"all rows\", cron = \"*/2 * * * * *\" }},\n]\n",
        receiver.url("/hook")
    );
    let walhook = start_streaming(&config, &db, "runs_named").await;
    wait_until(WAIT, "a finished run of each schedule", || async {
        let rows = runs_rows(&db, "tick").await;
        [
            "schedule:open_rows|succeeded|",
            "schedule:all rows|succeeded|",
        ]
        .iter()
        .all(|want| rows.iter().any(|r| r.starts_with(want)))
    })
    .await;

    let status: serde_json::Value =
        serde_json::from_str(&get(&format!("{admin}/status")).await).unwrap();
    let schedules = status["strategies"][0]["schedules"].as_array().unwrap();
    let names: Vec<&str> = schedules
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["open_rows", "all rows"], "{status}");
    for schedule in schedules {
        assert!(schedule["last_run"].is_i64(), "{status}");
        assert!(schedule["next"].is_string(), "{status}");
    }
    assert_eq!(schedules[1]["cron"], "*/2 * * * * *");

    let metrics = get(&format!("{admin}/metrics")).await;
    for name in ["open_rows", "all rows"] {
        assert!(
            metrics.lines().any(|l| l.starts_with("walhook_runs_total")
                && l.contains("trigger=\"schedule\"")
                && l.contains(&format!("schedule=\"{name}\""))
                && l.contains("outcome=\"succeeded\"")
                && !l.ends_with(" 0")),
            "{name}:\n{metrics}"
        );
    }
    walhook.stop().await;
}
