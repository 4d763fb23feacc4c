//! Scheduled runs of a real `walhook run`: a 6-field cron every 2 s fires
//! repeatedly, never overlaps itself (a time that comes while the previous
//! run still delivers is skipped and counted), and a standby instance on the
//! same slot never fires.

mod common;
mod pipeline_common;
mod runs_common;

use std::time::Duration;

use common::receiver::Receiver;
use pipeline_common::{base_config, db_name, Walhook, WAIT};
use runs_common::{records, runs_rows, start_streaming};

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
    let url = common::fresh_db("runs_cron");
    let db = db_name(&url);
    common::cluster()
        .psql(
            &db,
            "CREATE TABLE ticks (id int PRIMARY KEY, open bool NOT NULL); \
             INSERT INTO ticks SELECT i, i % 2 = 0 FROM generate_series(1, 10) i;",
        )
        .unwrap();
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
    let mut active = start_streaming(&config, &db, "runs_cron").await;

    let standby_receiver = Receiver::start().await;
    let standby_base = base_config(&url, "runs_cron", "runs_cron");
    let standby_admin = listen_of(&standby_base);
    let standby_config = format!(
        "{standby_base}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"tick_standby\"\n\
         table = \"ticks\"\nendpoint = \"hook\"\n\
         schedules = [ {{ cron = \"* * * * * *\", timezone = \"Europe/Berlin\" }} ]\n",
        standby_receiver.url("/hook")
    );
    let mut standby = Walhook::start(&standby_config, &[]);
    common::wait_until(WAIT, "the second instance to be a standby", || async {
        get(&format!("{standby_admin}/status"))
            .await
            .contains("\"state\":\"standby\"")
    })
    .await;

    common::wait_until(WAIT, "two finished scheduled runs", || async {
        runs_rows(&db, "tick")
            .iter()
            .filter(|r| r.contains("|succeeded|"))
            .count()
            >= 2
    })
    .await;
    let rows = runs_rows(&db, "tick");
    for row in &rows {
        assert!(row.starts_with("schedule|"), "{rows:?}");
        assert!(
            row.ends_with("|true") || row.ends_with("|first"),
            "a run started before the previous one finished: {rows:?}"
        );
    }
    let read = records(&receiver);
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
    assert!(runs_rows(&db, "tick_standby").is_empty());
    assert_eq!(standby_receiver.arrivals(), 0);

    standby.signal(libc::SIGTERM);
    assert!(standby.wait_exit(WAIT).await.success());
    active.signal(libc::SIGTERM);
    let status = active.wait_exit(WAIT).await;
    assert!(status.success(), "{status:?}\n{}", active.stderr());
}
