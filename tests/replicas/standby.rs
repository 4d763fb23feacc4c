//! Decoding on a hot standby (PostgreSQL 16+): the slot lives on the
//! standby, the publication comes from the primary through replication, the
//! state goes to the primary (`[state] url`: a standby is read-only).

use walhook::cluster::ClusterOptions;

use super::Pair;
use crate::support::walhook::base_config;
use crate::support::{poll_until, Receiver, Walhook, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walhook_on_a_standby_delivers_every_row_written_on_the_primary() {
    let pair = Pair::start(16, ClusterOptions::default(), ClusterOptions::default()).await;
    let (primary, standby) = (pair.primary_db(), pair.standby_db());
    primary
        .psql(
            "CREATE TABLE orders (id int PRIMARY KEY, amount numeric);
             CREATE PUBLICATION on_standby FOR TABLE orders;",
        )
        .await;
    assert!(
        poll_until(WAIT, || async {
            standby
                .psql("SELECT count(*) FROM pg_publication WHERE pubname = 'on_standby'")
                .await
                == "1"
        })
        .await,
        "the publication reached the standby; its log:\n{}",
        std::fs::read_to_string(pair.standby.log_file()).unwrap_or_default()
    );
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()").await, "t");

    let hook = Receiver::start().await;
    let config = format!(
        "{}[state]\nurl = \"{}\"\n\n[endpoints.hook]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"orders\"\ntable = \"public.orders\"\nendpoint = \"hook\"\n\
         on_insert = \"true\"\non_update = \"true\"\nlinger = \"10ms\"\n",
        base_config(&standby.url(), "on_standby", "on_standby"),
        primary.url(),
        hook.url("/hook"),
    );
    let check = Walhook::command(&["check", "--no-network", "-c", "config.toml"])
        .config(&config)
        .output()
        .await;
    assert!(
        check
            .stdout
            .contains("ok    standby: walhook decodes on this hot standby"),
        "{}",
        check.stdout
    );
    assert!(
        !check.stdout.lines().any(|l| l.starts_with("error standby")),
        "{}",
        check.stdout
    );
    // Without [state] url, check says the state cannot live on the standby.
    let without_state = config.replace(&format!("[state]\nurl = \"{}\"\n", primary.url()), "");
    let check = Walhook::command(&["check", "--no-network", "-c", "config.toml"])
        .config(&without_state)
        .output()
        .await;
    assert!(
        check
            .stdout
            .contains("error standby: source.url names a read-only standby")
            && check.stdout.contains("— fix: [state] url = "),
        "{}",
        check.stdout
    );

    let walhook = Walhook::run(&config).spawn();
    // Creating a logical slot on a standby waits for the primary to log
    // the running transactions; ask it to, until the slot streams.
    assert!(
        poll_until(WAIT, || async {
            primary.psql("SELECT pg_log_standby_snapshot()").await;
            standby.is_streaming("on_standby").await
        })
        .await,
        "walhook streams from its slot on the standby:\n{}",
        walhook.stderr()
    );
    primary
        .psql(
            "INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 50) g;
             UPDATE orders SET amount = 0 WHERE id <= 5;
             INSERT INTO orders SELECT g, g FROM generate_series(51, 100) g;",
        )
        .await;
    hook.wait_accepted_records(105, WAIT).await;
    let mut ids: Vec<i64> = hook
        .accepted_records()
        .iter()
        .filter(|r| r["op"] == "insert")
        .filter_map(|r| r["new"]["id"].as_i64())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids, (1..=100).collect::<Vec<i64>>());
    assert_eq!(
        standby
            .psql("SELECT slot_type FROM pg_replication_slots WHERE slot_name = 'on_standby'")
            .await,
        "logical",
        "the slot lives on the standby"
    );
    walhook.stop().await;
    pair.destroy();
}
